/* mc_abi: the core's rules through a plain C ABI (see mc_abi.h). */
#include "mc_abi.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "mc_addr.h"
#include "mc_ring.h"
#include "mc_error.h"
#include "mc_health.h"
#include "mc_item.h"
#include "mc_key.h"
#include "mc_proto.h"
#include "mc_sasl.h"

int mc_abi_key_ok(const char *k, size_t n)
{
    return mc_key_ok(k, n);
}

int mc_abi_status_err(int kind, int status)
{
    if (kind < MC_KIND_GET || kind > MC_KIND_OTHER || status < 0 ||
        status > 0xffff)
        return MC_ERR_SERVER_ERROR;
    return mc_status_err((enum mc_op_kind)kind, (uint16_t)status);
}

const char *mc_abi_err_str(int err)
{
    return mc_err_str(err);
}

int mc_abi_err_count(void)
{
    return MC_ERR_COUNT;
}

int mc_abi_is_lock(uint32_t flags, const char *value, size_t len)
{
    return mc_is_lock(flags, value, len);
}

const char *mc_abi_lock_marker(uint32_t *flags, size_t *len)
{
    *flags = MC_LOCK_FLAGS;
    *len = mc_lock_len;
    return mc_lock_value;
}

int mc_abi_status_is_auth(int status)
{
    return status >= 0 && status <= 0xffff && mc_status_is_auth((uint16_t)status);
}

int mc_abi_reply_key_ok(int status, const char *rkey, size_t rlen,
                        const char *key, size_t keylen)
{
    if (status < 0 || status > 0xffff)
        return 0;
    return mc_reply_key_ok((uint16_t)status, rkey, rlen, key, keylen);
}

int mc_abi_max_stat_entries(void)
{
    return MC_MAX_STAT_ENTRIES;
}

int mc_abi_health_verdict(int err)
{
    return mc_health_verdict(err);
}

int mc_abi_resend_safe(const char *p, size_t n)
{
    return mc_resend_safe(p, n);
}

int mc_abi_counter_value(const char *value, size_t len, uint64_t *v)
{
    return mc_counter_value(value, len, v);
}

int mc_abi_addr_split(const char *spec, int *kind, char *host, size_t hostlen,
                      unsigned *port, char *err, size_t errlen)
{
    mc_addr_spec sp;
    if (mc_addr_split(spec, &sp, err, errlen) != 0)
        return -1;
    if (strlen(sp.host) >= hostlen) {
        snprintf(err, errlen, "bad server address: %s", spec);
        return -1;
    }
    *kind = (int)sp.kind;
    memcpy(host, sp.host, strlen(sp.host) + 1);
    *port = sp.port;
    return 0;
}

mc_ring *mc_abi_ring_new(int selector, const char *const *addrs,
                         const unsigned *weights, size_t n,
                         unsigned failure_limit, double retry_timeout,
                         int eject, char *err, size_t errlen)
{
    mc_health_opts ho;
    if (selector < MC_SEL_MODULO || selector > MC_SEL_GOMEMCACHED) {
        snprintf(err, errlen, "unknown selector %d", selector);
        return NULL;
    }
    ho.failure_limit = failure_limit;
    ho.retry_timeout = retry_timeout;
    return mc_ring_new((enum mc_sel_kind)selector, addrs, weights, n, &ho,
                       eject, err, errlen);
}

void mc_abi_ring_free(mc_ring *r)
{
    mc_ring_free(r);
}

int mc_abi_ring_nservers(const mc_ring *r)
{
    return (int)mc_ring_nservers(r);
}

const char *mc_abi_ring_name(const mc_ring *r, int srv)
{
    return srv < 0 ? NULL : mc_ring_name(r, (size_t)srv);
}

int mc_abi_ring_alive(const mc_ring *r, int srv, unsigned *failures,
                      const char **last_error)
{
    const mc_health *h = srv < 0 ? NULL : mc_ring_health(r, (size_t)srv);
    if (!h)
        return 0;
    *failures = h->failures;
    *last_error = h->last_error;
    return !h->dead;
}

int mc_abi_ring_intern(mc_ring *r, const char *addr, char *err, size_t errlen)
{
    return mc_ring_intern(r, addr, err, errlen);
}

int mc_abi_ring_static(const mc_ring *r, const char *key, size_t len)
{
    return mc_ring_static(r, key, len);
}

int mc_abi_ring_pick(mc_ring *r, const char *key, size_t len, double now,
                     int *probe, int *err)
{
    return mc_ring_pick(r, key, len, now, probe, err);
}

int mc_abi_ring_route(const mc_ring *r, const char *key, size_t len)
{
    return mc_ring_route(r, key, len);
}

int mc_abi_ring_around(mc_ring *r, const char *key, size_t len, int *err)
{
    return mc_ring_around(r, key, len, err);
}

int mc_abi_ring_usable(mc_ring *r, int srv, double now, int *probe)
{
    if (srv < 0 || (size_t)srv >= mc_ring_nservers(r)) {
        *probe = 0;
        return 0;
    }
    return mc_ring_usable(r, srv, now, probe);
}

int mc_abi_ring_failed(mc_ring *r, int srv, double now, const char *why)
{
    return mc_ring_failed(r, srv, now, why);
}

int mc_abi_ring_ok(mc_ring *r, int srv)
{
    return mc_ring_ok(r, srv);
}

int mc_abi_enc(char *out, size_t cap, int opcode, uint32_t opaque, double cas,
               const char *key, size_t keylen, int extras, uint32_t flags,
               uint32_t exptime, const char *value, size_t vallen)
{
    unsigned char ext[8];
    size_t need = MC_HEADER_LEN + (extras ? 8u : 0u) + keylen + vallen;
    mc_buf b;
    if (need > (size_t)INT32_MAX || opcode < 0 || opcode > 0xff)
        return INT32_MIN;
    if (need > cap)
        return -(int)need;
    b.data = out;
    b.len = 0;
    b.cap = cap;
    mc_store32(ext, flags);
    mc_store32(ext + 4, exptime);
    if (mc_enc_request(&b, (uint8_t)opcode, opaque,
                       cas > 0 ? (uint64_t)cas : 0, ext, extras ? 8u : 0u, key,
                       keylen, value, vallen) != 0)
        return INT32_MIN;
    return (int)b.len;
}

int mc_abi_read_head(const char *h, size_t max_body, mc_abi_head *out, char *err,
                size_t errlen)
{
    const unsigned char *p = (const unsigned char *)h;
    if (mc_head_check(p, max_body, err, errlen) != 0)
        return -1;
    out->opcode = p[1];
    out->keylen = mc_load16(p + 2);
    out->extlen = p[4];
    out->status = mc_load16(p + 6);
    out->bodylen = mc_load32(p + 8);
    out->opaque = mc_load32(p + 12);
    out->cas = (double)mc_load64(p + 16);
    return 0;
}

int mc_abi_shape_ok(int opcode, int status, int extlen, int keylen,
                    size_t vallen)
{
    mc_resp r;
    memset(&r, 0, sizeof(r));
    r.opcode = (uint8_t)opcode;
    r.status = (uint16_t)status;
    r.extlen = (uint8_t)extlen;
    r.keylen = (uint16_t)keylen;
    r.vallen = vallen;
    return mc_resp_shape_ok(&r);
}

int mc_abi_ring_dead_until(mc_ring *r, int srv, double until, const char *why)
{
    return mc_ring_dead_until(r, srv, until, why);
}

double mc_abi_ring_retry_at(const mc_ring *r, int srv)
{
    return mc_ring_retry_at(r, srv);
}

/* The longest SASL reply taken: a mechanism list or a short message. */
#define SASL_REPLY_MAX 4096

int mc_abi_sasl_frame(char *out, size_t cap, int step, uint32_t opaque,
                      const char *user, size_t ulen, const char *pass,
                      size_t plen)
{
    size_t need = MC_HEADER_LEN;
    mc_buf b;
    int rc;
    if (step == 1) {
        if (ulen > MC_SASL_MAX || plen > MC_SASL_MAX)
            return 0;
        need += 5 + 2 + ulen + plen; /* key "PLAIN", value \0user\0pass */
    } else if (step != 0) {
        return 0;
    }
    if (need > cap) /* checked first: b must never grow out of out */
        return -(int)need;
    b.data = out;
    b.len = 0;
    b.cap = cap;
    rc = step == 0 ? mc_sasl_enc_list(&b, opaque)
                   : mc_sasl_enc_plain(&b, opaque, user, ulen, pass, plen);
    return rc == 0 ? (int)b.len : 0;
}

int mc_abi_sasl_check(const char *p, size_t len, int step, uint32_t opaque,
                      uint32_t *need, char *msg, size_t msglen)
{
    const unsigned char *h = (const unsigned char *)p;
    mc_resp r;
    size_t total;
    if (step != 0 && step != 1) {
        snprintf(msg, msglen, "unknown SASL step %d", step);
        return MC_ERR_PROTOCOL;
    }
    if (len > 0 && h[0] != MC_MAGIC_RESPONSE) {
        snprintf(msg, msglen, "SASL: the server answered in text, not in "
                              "the binary protocol");
        return MC_ERR_PROTOCOL;
    }
    *need = MC_HEADER_LEN;
    if (len < MC_HEADER_LEN)
        return -1;
    if (mc_head_check(h, SASL_REPLY_MAX, msg, msglen) != 0)
        return MC_ERR_PROTOCOL;
    total = MC_HEADER_LEN + (size_t)mc_load32(h + 8);
    *need = (uint32_t)total;
    if (len < total)
        return -1;
    mc_resp_split(h, &r);
    return mc_sasl_check(step == 0 ? MC_OP_SASL_LIST_MECHS : MC_OP_SASL_AUTH,
                         opaque, &r, len > total, msg, msglen);
}
