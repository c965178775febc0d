#include <stdio.h>
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

int mc_resend_safe(const char *p, size_t n)
{
    while (n >= MC_HEADER_LEN) {
        size_t len = MC_HEADER_LEN + (size_t)mc_load32(p + 8);
        if (len > n || !mc_frame_resend_safe(p))
            return 0;
        p += len;
        n -= len;
    }
    return n == 0;
}

int mc_reply_check(uint8_t opcode, uint32_t opaque, const mc_resp *r,
                   int pending, const char *key, size_t keylen, char *msg,
                   size_t msglen)
{
    if (r->opaque != opaque || r->opcode != opcode) {
        snprintf(msg, msglen,
                 "reply (opcode 0x%02x, opaque %u) does not match the "
                 "request (opcode 0x%02x, opaque %u)",
                 r->opcode, r->opaque, opcode, opaque);
        return MC_ERR_PROTOCOL;
    }
    if (r->opcode != MC_OP_STAT && pending) {
        snprintf(msg, msglen, "bytes after the reply");
        return MC_ERR_PROTOCOL;
    }
    if (!mc_resp_shape_ok(r)) {
        snprintf(msg, msglen, "reply framed wrongly for its opcode");
        return MC_ERR_PROTOCOL;
    }
    if (key && !mc_reply_key_ok(r->status, r->key, r->keylen, key, keylen)) {
        snprintf(msg, msglen, "reply names another key than the request's");
        return MC_ERR_PROTOCOL;
    }
    return MC_OK;
}

int mc_counter_value(const char *value, size_t len, uint64_t *v)
{
    if (len != 8)
        return -1;
    *v = mc_load64(value);
    return 0;
}
