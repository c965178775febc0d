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

/* Maximum nesting of tables, in both directions. */
#define LMC_MAX_DEPTH 64

/* Registry names of the exported metatables (lua-cjson's model): a table
 * carrying array_mt encodes as a msgpack array (even when empty), one
 * carrying map_mt as a msgpack map. */
#define LMC_ARRAY_MT "memcached.array_mt"
#define LMC_MAP_MT "memcached.map_mt"

typedef struct lmc_vctx lmc_vctx; /* reusable scratch state (e.g. a zone) */

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
 * for malformed, truncated or trailing bytes, or nesting too deep. */
int lmc_value_decode(lua_State *L, lmc_vctx *c, const char *p, size_t n,
                     char *err, size_t errlen);

/* Creates the metatables in the registry and sets, in the table at the top
 * of the stack: array_mt, map_mt, empty_array (a shared empty table with
 * array_mt), encode(value) -> bytes | nil, err and decode(bytes) -> value |
 * nil, err. */
void lmc_value_open(lua_State *L);

#endif
