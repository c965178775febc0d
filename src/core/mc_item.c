/* mc_item: the per-operation meaning of statuses; the lock marker. */
#include <string.h>

#include "mc_error.h"
#include "mc_item.h"
#include "mc_proto.h"

int mc_status_err(enum mc_op_kind k, uint16_t status)
{
    switch (status) {
    case MC_STATUS_KEY_ENOENT:
        return k == MC_KIND_GET     ? MC_ERR_CACHE_MISS
               : k == MC_KIND_OTHER ? MC_ERR_SERVER_ERROR
                                    : MC_ERR_NOT_STORED;
    case MC_STATUS_KEY_EEXISTS:
        return k == MC_KIND_ADD ? MC_ERR_NOT_STORED : MC_ERR_CAS_CONFLICT;
    case MC_STATUS_NOT_STORED: return MC_ERR_NOT_STORED;
    case MC_STATUS_E2BIG: return MC_ERR_TOO_LARGE;
    case MC_STATUS_DELTA_BADVAL: return MC_ERR_NON_NUMERIC;
    case MC_STATUS_AUTH_ERROR:
    case MC_STATUS_AUTH_CONTINUE: return MC_ERR_AUTH;
    default: return MC_ERR_SERVER_ERROR;
    }
}

/* NUL-framed so that no text value a program writes by accident matches */
const char mc_lock_value[] = "\0memcached.lua delete_lock\0";
const size_t mc_lock_len = sizeof(mc_lock_value) - 1;

int mc_is_lock_value(const char *value, size_t len)
{
    size_t i;
    if (len < mc_lock_len)
        return 0;
    for (i = 0; i + mc_lock_len <= len; i++)
        if (value[i] == '\0' &&
            memcmp(value + i, mc_lock_value, mc_lock_len) == 0)
            return 1;
    return 0;
}

/* One request frame (at least a header) that is safe to send twice. */
static int frame_resend_safe(const char *p)
{
    switch ((uint8_t)p[1]) {
    case MC_OP_GET: case MC_OP_GETQ: case MC_OP_GETK: case MC_OP_GETKQ:
    case MC_OP_GAT: case MC_OP_GATQ: case MC_OP_GATK: case MC_OP_GATKQ:
    case MC_OP_TOUCH: case MC_OP_NOOP: case MC_OP_VERSION: case MC_OP_STAT:
    case MC_OP_FLUSH: case MC_OP_FLUSHQ:
        return 1;
    case MC_OP_SET: case MC_OP_SETQ:
        return mc_load64(p + 16) == 0;
    default:
        return 0;
    }
}

int mc_resend_safe(const char *p, size_t n)
{
    while (n >= MC_HEADER_LEN) {
        size_t len = MC_HEADER_LEN + (size_t)mc_load32(p + 8);
        if (len > n || !frame_resend_safe(p))
            return 0;
        p += len;
        n -= len;
    }
    return n == 0;
}

int mc_first_resend_safe(const char *p, size_t n)
{
    return n >= MC_HEADER_LEN && frame_resend_safe(p);
}
