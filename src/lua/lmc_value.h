/*
 * lmc_value: Lua values <-> msgpack (msgpack-c).
 *
 * Neither function raises a Lua error for bad data: they return -1 and write
 * a message to err (callers turn it into `nil, err`). Only running out of
 * memory inside the Lua API itself can raise; the scratch state they use is
 * owned by an lmc_vctx, so an unwinding error leaks nothing.
 */
#ifndef LMC_VALUE_H
#define LMC_VALUE_H

#include <stddef.h>

#include <lua.h>

#include "mc_buf.h"

/* Maximum nesting of tables, in both directions: msgpack-c 4.0's unpacker
 * holds at most 32 open containers, and the encoder refuses what could not
 * be read back. */
#define LMC_MAX_DEPTH 32

/* The decoded-size budget: a value of n bytes is refused before msgpack-c
 * unpacks it when the Lua memory it would take, estimated from its
 * headers, passes LMC_BUDGET_RATIO * n + LMC_BUDGET_BASE bytes. The
 * estimate (Lua 5.4, 64-bit): a table LMC_COST_TABLE, an array slot
 * LMC_COST_SLOT, a map entry LMC_COST_ENTRY (node arrays are rounded up to a
 * power of two), a string of 2 or more bytes LMC_COST_STR plus its length.
 * Nested empty arrays cost 72 bytes per byte; arrays of small integers 16,
 * maps of short strings 10-20, arrays of one-element arrays 44 (the densest
 * usual shape: refused above about 85 KiB of it). */
#define LMC_BUDGET_RATIO 48
#define LMC_BUDGET_BASE ((size_t)1 << 20)
#define LMC_COST_TABLE 56
#define LMC_COST_SLOT 16
#define LMC_COST_ENTRY 32
#define LMC_COST_STR 24

static inline size_t lmc_decode_budget(size_t n)
{
    size_t max = (size_t)-1;
    if (n > (max - LMC_BUDGET_BASE) / LMC_BUDGET_RATIO)
        return max;
    return n * LMC_BUDGET_RATIO + LMC_BUDGET_BASE;
}

/* Registry names of the exported metatables (lua-cjson's model): a table
 * carrying array_mt encodes as a msgpack array (even when empty), one
 * carrying map_mt as a msgpack map. */
#define LMC_ARRAY_MT "memcached.array_mt"
#define LMC_MAP_MT "memcached.map_mt"

/* Reusable scratch state: the encoder's bookkeeping and the decoder's
 * msgpack zone. One per Lua state (or per client); not thread-safe. */
typedef struct lmc_vctx lmc_vctx;

/* Returns NULL when out of memory. */
lmc_vctx *lmc_vctx_new(void);
void lmc_vctx_free(lmc_vctx *c);

/* Appends the msgpack encoding of the value at stack index idx to out.
 * Returns 0, or -1 with a message in err (out is then left as it was; the
 * Lua stack is always left as it was). Refuses functions, userdata, threads,
 * light userdata, cycles, nesting deeper than LMC_MAX_DEPTH, NaN/invalid map
 * keys. */
int lmc_value_encode(lua_State *L, lmc_vctx *c, int idx, mc_buf *out,
                     char *err, size_t errlen);

/* Decodes exactly one msgpack object spanning all n bytes and pushes it.
 * Returns 0 (one value pushed), or -1 with a message in err (nothing pushed)
 * for malformed, truncated or trailing bytes, nesting deeper than
 * LMC_MAX_DEPTH, ext types, nil/NaN map keys, a value over the decoded-size
 * budget (the message says "decoded size budget"). p need only live during
 * the call; no allocation is sized by a count the bytes declare before the
 * bytes are known to hold that many elements. Arrays holding nil get
 * LMC_ARRAY_MT and their length recorded (see lmc_value_open).
 * Re-entrant: a __gc finalizer run while the value is pushed may decode or
 * encode with the same context. */
int lmc_value_decode(lua_State *L, lmc_vctx *c, const char *p, size_t n,
                     char *err, size_t errlen);

/* Creates the metatables in the registry and sets, in the table at the top
 * of the stack: array_mt, map_mt, empty_array (a shared empty table with
 * array_mt), encode(value) -> bytes | nil, err, decode(bytes) -> value |
 * nil, err, array(t [, n]) -> t (gives t array_mt and records length n,
 * default its largest positive integer key) and array_length(t) -> n | nil
 * (the recorded length). Recorded lengths live in a weak-keyed registry
 * table; a table with array_mt encodes max(recorded length, largest
 * positive integer key) elements, nil for the missing ones. */
void lmc_value_open(lua_State *L);

#endif
