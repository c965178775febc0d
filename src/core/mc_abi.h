/*
 * mc_abi: the core's rules through a plain C ABI (no Lua types, no structs),
 * exported from memcached.so so that LuaJIT's FFI can bind them: the
 * OpenResty driver asks these instead of keeping copies of the rules in
 * Lua. The `cdef` in lua/memcached/resty.lua mirrors this file.
 */
#ifndef MC_ABI_H
#define MC_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifndef MC_ABI
#define MC_ABI __attribute__((visibility("default")))
/* ---- framing and reading, for a driver that moves its own bytes ----
 * mc_abi_enc frames one request into out (cap bytes): extras 1 sends
 * flags and exptime (the stores), 0 none. Returns its length, or minus
 * the length it needs when cap is too small (nothing written). cas is a
 * double, as LuaJIT's numbers are. */
MC_ABI int mc_abi_enc(char *out, size_t cap, int opcode, uint32_t opaque,
                      double cas, const char *key, size_t keylen, int extras,
                      uint32_t flags, uint32_t exptime, const char *value,
                      size_t vallen);
/* A reply's header: checked (mc_head_check) and split. 0, or -1 with why
 * in err. */
typedef struct mc_abi_head {
    int opcode, status, extlen, keylen;
    uint32_t bodylen, opaque;
    double cas;
} mc_abi_head;
MC_ABI int mc_abi_read_head(const char *h, size_t max_body, mc_abi_head *out,
                            char *err, size_t errlen);
/* 1 when a reply of this opcode and status has the shape it must have
 * (mc_resp_shape_ok). */
MC_ABI int mc_abi_shape_ok(int opcode, int status, int extlen, int keylen,
                           size_t vallen);

/* ---- a server list with placement and health (mc_ring.h) ----
 * For a driver that moves its own bytes: it places keys as the C client
 * does and routes around dead servers. Time is the caller's (seconds,
 * any monotonic origin). selector: 0 modulo, 1 ketama, 2 gomemcached. */
typedef struct mc_ring mc_ring;
MC_ABI mc_ring *mc_abi_ring_new(int selector, const char *const *addrs,
                                const unsigned *weights, size_t n,
                                unsigned failure_limit, double retry_timeout,
                                int eject, char *err, size_t errlen);
MC_ABI void mc_abi_ring_free(mc_ring *r);
MC_ABI int mc_abi_ring_nservers(const mc_ring *r);
MC_ABI const char *mc_abi_ring_name(const mc_ring *r, int srv);
/* 1 when alive; *failures (consecutive) and the last failure's text */
MC_ABI int mc_abi_ring_alive(const mc_ring *r, int srv, unsigned *failures,
                             const char **last_error);
MC_ABI int mc_abi_ring_intern(mc_ring *r, const char *addr, char *err,
                              size_t errlen);
MC_ABI int mc_abi_ring_static(const mc_ring *r, const char *key, size_t len);
MC_ABI int mc_abi_ring_pick(mc_ring *r, const char *key, size_t len,
                            double now, int *probe, int *err);
MC_ABI int mc_abi_ring_around(mc_ring *r, const char *key, size_t len,
                              int *err);
MC_ABI int mc_abi_ring_usable(mc_ring *r, int srv, double now, int *probe);
MC_ABI int mc_abi_ring_failed(mc_ring *r, int srv, double now,
                              const char *why);
MC_ABI int mc_abi_ring_ok(mc_ring *r, int srv);
/* Shared health: found dead elsewhere until `until` (1: it was alive
 * here), and when a dead server's next probe is due (0: alive). */
MC_ABI int mc_abi_ring_dead_until(mc_ring *r, int srv, double until,
                                  const char *why);
MC_ABI double mc_abi_ring_retry_at(const mc_ring *r, int srv);

#endif

/* 1 when the n bytes at k make a valid key (mc_key.h). */
MC_ABI int mc_abi_key_ok(const char *k, size_t n);
/* The error (enum mc_err) that a non-OK status means for an operation of
 * this kind (enum mc_op_kind, mc_item.h). */
MC_ABI int mc_abi_status_err(int kind, int status);
/* The error's stable string, as memcached.ERR_* holds it; errors are
 * numbered 1 .. mc_abi_err_count() - 1. */
MC_ABI const char *mc_abi_err_str(int err);
MC_ABI int mc_abi_err_count(void);
/* 1 when an item with these flags and value is delete_lock's marker. */
MC_ABI int mc_abi_is_lock(uint32_t flags, const char *value, size_t len);
/* delete_lock's marker (mc_item.h), as a driver writes it: its value
 * (*len bytes, holding NULs) and *flags. */
MC_ABI const char *mc_abi_lock_marker(uint32_t *flags, size_t *len);
/* 1 for an authentication status (the server closes the connection; it is
 * no failure of the server). */
MC_ABI int mc_abi_status_is_auth(int status);
/* 1 when a reply (its status and key) may answer a request for key. */
MC_ABI int mc_abi_reply_key_ok(int status, const char *rkey, size_t rlen,
                               const char *key, size_t keylen);
/* 1 when every request framed in the n bytes at p may be sent twice. */
MC_ABI int mc_abi_resend_safe(const char *p, size_t n);
/* A counter reply's value (mc_counter_value): 0 with *v, or -1. */
MC_ABI int mc_abi_counter_value(const char *value, size_t len, uint64_t *v);
/* A server address split as every driver must (mc_addr.h): 0 with *kind
 * (0 TCP, 1 unix path, 2 abstract), the host or path (NUL-terminated, at
 * most hostlen bytes) and *port (0 for unix sockets); -1 with why in
 * err. Nothing is resolved. */
MC_ABI int mc_abi_addr_split(const char *spec, int *kind, char *host,
                             size_t hostlen, unsigned *port, char *err,
                             size_t errlen);

#endif
