/*
 * mc_item: what the server's answers mean for each kind of operation, and
 * delete_lock's marker item. No I/O, no Lua.
 */
#ifndef MC_ITEM_H
#define MC_ITEM_H

#include <stddef.h>
#include <stdint.h>

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
