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
/* ---- SASL PLAIN on a new connection (mc_sasl.h) ----
 * For a driver that moves its own bytes: step 0 asks for the server's
 * mechanisms, step 1 sends the credentials; each step's reply is judged
 * before the next step is sent, and the connection serves requests only
 * once step 1 passed. mc_abi_sasl_frame frames a step into out (cap
 * bytes; 24 + 2 * MC_SASL_MAX + 7 always suffice): its length; 0 when the
 * credentials cannot be framed (a field over 255 bytes or holding a NUL),
 * or an unknown step; minus the length needed when cap is too small. */
MC_ABI int mc_abi_sasl_frame(char *out, size_t cap, int step, uint32_t opaque,
                             const char *user, size_t ulen, const char *pass,
                             size_t plen);
/* Judges the reply to a step sent with opaque, in the len bytes received
 * at p: -1 when more bytes are needed (*need: the bytes the reply takes in
 * all, as far as known); else 0 (the exchange goes on, or the connection
 * is authenticated) or the error (MC_ERR_AUTH: refused, no PLAIN, no SASL;
 * MC_ERR_PROTOCOL: not an answer to the step, a text line, bytes after it)
 * with why in msg. */
MC_ABI int mc_abi_sasl_check(const char *p, size_t len, int step,
                             uint32_t opaque, uint32_t *need, char *msg,
                             size_t msglen);

#endif

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
/* A well-formed key's own server when it is alive, else -1 (then pick);
 * no side effect. */
MC_ABI int mc_abi_ring_route(const mc_ring *r, const char *key, size_t len);
MC_ABI int mc_abi_ring_usable(mc_ring *r, int srv, double now, int *probe);
MC_ABI int mc_abi_ring_failed(mc_ring *r, int srv, double now,
                              const char *why);
MC_ABI int mc_abi_ring_ok(mc_ring *r, int srv);
/* Shared health: found dead elsewhere until `until` (1: it was alive
 * here), and when a dead server's next probe is due (0: alive). */
MC_ABI int mc_abi_ring_dead_until(mc_ring *r, int srv, double until,
                                  const char *why);
MC_ABI double mc_abi_ring_retry_at(const mc_ring *r, int srv);

/* ---- the reply to one request in flight ----
 * mc_abi_take_one looks at the len bytes at p, where the reply to the one
 * request in flight (opcode, opaque; key for a keyed get, else NULL)
 * starts. 0: more bytes are needed (out->need: the bytes the reply takes
 * in all, as far as known). 1: the reply is whole and answers the request
 * (mc_reply_check: its opcode and opaque, its shape, nothing after it but
 * for STAT streams, a hit naming the key); out holds it: err 0 for
 * success, else the error its status means for kind (an auth status is
 * MC_ERR_AUTH; delete_lock's marker reads as MC_ERR_CACHE_MISS); used: the
 * bytes it took; the value and key as offsets from p. -1: the stream is
 * framed wrongly (out->err, why in msg; MC_ERR_TOO_LARGE for a plausible
 * body over max_body). -2: a text line starts at p
 * (memcached's "ERROR ..." at its connection limit), for the driver's text
 * reader. */
typedef struct mc_abi_reply {
    int err, status;
    uint32_t flags;
    double cas;
    uint32_t koff, klen, voff, vlen;
    uint32_t used, need;
} mc_abi_reply;
MC_ABI int mc_abi_take_one(const char *p, size_t len, size_t max_body,
                           int kind, int opcode, uint32_t opaque,
                           const char *key, size_t keylen,
                           mc_abi_reply *out, char *msg, size_t msglen);

/* ---- one server's pipelined stream (mc_feed.h) ----
 * For a driver that moves its own bytes. A batch frames requests under
 * opaques base, base + 1, ... and a closing NOOP (base + n), then takes
 * the server's replies in whatever pieces they come. Every reply is
 * checked by mc_feed (in request order, every request answered when
 * every_reply, framed as its opcode requires, the stream ends with the
 * NOOP and nothing after it) and against its request (its opcode; a hit
 * of a keyed get names the request's key); an authentication status
 * fails the stream (MC_ERR_AUTH). Each reply becomes an entry: err 0 for
 * a hit (value, flags, cas), else the error its status means for the
 * batch's kind (enum mc_op_kind); delete_lock's marker reads as
 * MC_ERR_CACHE_MISS. A stream that fails may have framed an earlier reply
 * wrongly: the driver drops the entries it took from it. */
typedef struct mc_abi_entry {
    uint32_t idx;      /* the request, in the order added, from 0 */
    int err;
    int status;        /* the reply's, for messages */
    uint32_t flags;
    uint32_t vlen;
    double cas;
    const char *value; /* valid until the next feed or begin */
} mc_abi_entry;
typedef struct mc_abi_batch mc_abi_batch;
MC_ABI mc_abi_batch *mc_abi_batch_new(size_t max_body);
MC_ABI void mc_abi_batch_free(mc_abi_batch *ab);
/* Starts an empty batch; 0, or -1 for an unknown kind. */
MC_ABI int mc_abi_batch_begin(mc_abi_batch *ab, uint32_t base, int kind,
                              int every_reply);
/* Frames one request: extras 0 none, 1 flags and exptime (the stores), 2
 * exptime alone (touch, gat, flush with a delay). Its index, or -1 (out
 * of memory, a key over 65535 bytes). */
MC_ABI int mc_abi_batch_add(mc_abi_batch *ab, int opcode, double cas,
                            const char *key, size_t keylen, int extras,
                            uint32_t flags, uint32_t exptime,
                            const char *value, size_t vallen);
/* Closes the stream with its NOOP: the bytes to send (*len of them,
 * valid until begin), or NULL when out of memory. */
MC_ABI const char *mc_abi_batch_seal(mc_abi_batch *ab, size_t *len);
/* Takes the replies in the len bytes at data (any piece of the stream):
 * 0 the stream goes on, 1 it ended with its NOOP, -1 it failed (*err,
 * why in msg; nothing more is taken). *out and *nout: the entries of the
 * replies this call took, valid until the next feed. */
MC_ABI int mc_abi_batch_feed(mc_abi_batch *ab, const char *data, size_t len,
                             mc_abi_entry **out, int *nout, int *err,
                             char *msg, size_t msglen);

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
/* The most entries one server's stats reply may hold (mc_item.h). */
MC_ABI int mc_abi_max_stat_entries(void);
/* What a failed request's error says of its server (mc_health_verdict):
 * 0 a failure, 1 it answered (a success), 2 no effect. */
MC_ABI int mc_abi_health_verdict(int err);
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

/* ---- SASL PLAIN on a new connection (mc_sasl.h) ----
 * For a driver that moves its own bytes: step 0 asks for the server's
 * mechanisms, step 1 sends the credentials; each step's reply is judged
 * before the next step is sent, and the connection serves requests only
 * once step 1 passed. mc_abi_sasl_frame frames a step into out (cap
 * bytes; 24 + 2 * MC_SASL_MAX + 7 always suffice): its length; 0 when the
 * credentials cannot be framed (a field over 255 bytes or holding a NUL),
 * or an unknown step; minus the length needed when cap is too small. */
MC_ABI int mc_abi_sasl_frame(char *out, size_t cap, int step, uint32_t opaque,
                             const char *user, size_t ulen, const char *pass,
                             size_t plen);
/* Judges the reply to a step sent with opaque, in the len bytes received
 * at p: -1 when more bytes are needed (*need: the bytes the reply takes in
 * all, as far as known); else 0 (the exchange goes on, or the connection
 * is authenticated) or the error (MC_ERR_AUTH: refused, no PLAIN, no SASL;
 * MC_ERR_PROTOCOL: not an answer to the step, a text line, bytes after it)
 * with why in msg. */
MC_ABI int mc_abi_sasl_check(const char *p, size_t len, int step,
                             uint32_t opaque, uint32_t *need, char *msg,
                             size_t msglen);

#endif
