/*
 * mc_item: what the server's answers mean for each kind of operation, and
 * delete_lock's marker item. No I/O, no Lua.
 */
#ifndef MC_ITEM_H
#define MC_ITEM_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mc_proto.h"

/* How an operation reads the server's "not found" / "exists" answers. */
enum mc_op_kind {
    MC_KIND_GET,     /* get, gat, touch, delete, incr/decr: absent = miss */
    MC_KIND_SET,     /* set: exists/absent only with a cas */
    MC_KIND_ADD,     /* add: exists = not stored */
    MC_KIND_REPLACE, /* replace, append, prepend, cas: absent = not stored */
    MC_KIND_OTHER    /* stats, version, flush, noop */
};

/* The error (mc_error.h) that a non-OK status means for this kind of
 * operation. */
int mc_status_err(enum mc_op_kind k, uint16_t status);

/* An authentication status: the server is up and answers, but refuses this
 * connection and closes it after the reply (memcached -S). It is not a
 * failure of the server. */
static inline int mc_status_is_auth(uint16_t st)
{
    return st == MC_STATUS_AUTH_ERROR || st == MC_STATUS_AUTH_CONTINUE;
}

/* n bytes at a and b are equal (keys: short, compared inline, no libc
 * call on the per-key path). */
static inline int mc_bytes_eq(const char *a, const char *b, size_t n)
{
    uint64_t x, y;
    size_t i;
    if (n < 8) {
        for (i = 0; i < n; i++)
            if (a[i] != b[i])
                return 0;
        return 1;
    }
    for (i = 0; i + 8 < n; i += 8) {
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return 0;
    }
    memcpy(&x, a + n - 8, 8); /* the last word, overlapping */
    memcpy(&y, b + n - 8, 8);
    return x == y;
}

/* A reply to a request for key may stand: a hit names that key; an error
 * reply names it or no key at all (memcached's out-of-memory replies name
 * none). A reply naming another key is someone else's. */
static inline int mc_reply_key_ok(uint16_t status, const char *rkey,
                                  size_t rlen, const char *key, size_t keylen)
{
    if (rlen == 0 && status != MC_STATUS_OK)
        return 1;
    return rlen == keylen && mc_bytes_eq(rkey, key, keylen);
}

/* Sending twice is harmless: reads (GET/GETK/GAT/TOUCH and their quiet
 * forms), a plain SET/SETQ (no cas: the same value stored again), NOOP,
 * VERSION, STAT, FLUSH. Not for a request that may have been applied
 * before its connection broke: ADD answers "not stored" the second time,
 * incr counts twice, append appends twice, a cas or a delete reports a
 * conflict or a miss. mc_resend_safe: every request framed in the n bytes
 * at p is; mc_first_resend_safe: the first one is (the cheap test of
 * whether a reused connection needs checking first). */
int mc_resend_safe(const char *p, size_t n);

/* One request frame (at least a header) that is safe to send twice.
 * Inline: the one-request path asks for every reused connection. */
static inline int mc_frame_resend_safe(const char *p)
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

static inline int mc_first_resend_safe(const char *p, size_t n)
{
    return n >= MC_HEADER_LEN && mc_frame_resend_safe(p);
}

/* Does r answer the one request in flight (its opcode and opaque)? A
 * reply of the wrong shape for its opcode, bytes after it (pending; STAT
 * streams several replies, so it may have more), or a hit naming another
 * key than key (when key is not NULL; error replies may name none) mean
 * the server framed something wrongly: MC_ERR_PROTOCOL with why in msg.
 * MC_OK otherwise. */
int mc_reply_check(uint8_t opcode, uint32_t opaque, const mc_resp *r,
                   int pending, const char *key, size_t keylen, char *msg,
                   size_t msglen);

/* The most entries one server's stats reply may hold: memcached sends a
 * few hundred ("stats items" on a full server ~1,400; "stats conns" 4 per
 * open connection); a server streaming entries without end is a protocol
 * error, not a table that grows until the timeout. */
#define MC_MAX_STAT_ENTRIES 100000

/* A counter's reply (INCREMENT, DECREMENT): its value is 8 bytes, the
 * new count in network order. 0 with *v, or -1 for any other length. */
int mc_counter_value(const char *value, size_t len, uint64_t *v);

/* delete_lock's marker: an item with these flags holding exactly these
 * bytes is a lock, which reads as a miss. */
#define MC_LOCK_FLAGS 0x6d634c4bu /* "mcLK" */
extern const char mc_lock_value[];
extern const size_t mc_lock_len;

int mc_is_lock_value(const char *value, size_t len);

/* 1 when an item with these flags and value is the lock marker. Inline:
 * every hit of a get asks, and the flags answer almost always. */
static inline int mc_is_lock(uint32_t flags, const char *value, size_t len)
{
    return flags == MC_LOCK_FLAGS && mc_is_lock_value(value, len);
}

#endif
