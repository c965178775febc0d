/*
 * lmc_value_int: what the value codec's files share (lmc_value.c: the
 * context and the Lua face; lmc_encode.c: Lua -> msgpack; lmc_decode.c:
 * msgpack -> Lua). Not exported.
 */
#ifndef LMC_VALUE_INT_H
#define LMC_VALUE_INT_H

#include "lmc_value.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>
#include <msgpack/unpack_define.h> /* MSGPACK_EMBED_STACK_SIZE */

#include "lmc_compat.h"

#define LMC_PATH_MAX 200
#define LMC_VCTX_MT "memcached.value_ctx"
/* A fresh zone or output buffer for a call that finds the context's lent. */
#define LMC_TMPZONE_MT "memcached.value_zone"
#define LMC_TMPBUF_MT "memcached.value_buf"
/* encode()'s output buffer gives back memory above this after each call. */
#define LMC_OUT_KEEP (64 * 1024)

struct lmc_vctx {
    mc_buf out; /* encode()'s output, reused by the Lua-facing functions */
    /* Identity of the exported metatables, cached per Lua state so that the
     * per-table check is a pointer compare rather than a registry lookup. */
    const void *registry;
    const void *array_mt;
    const void *map_mt;
    /* Tables on the current encoding path, outermost first: a table found
     * among its own ancestors is a cycle. */
    const void *seen[LMC_MAX_DEPTH];
    /* Encoding error: the reason, and the path built while unwinding, filled
     * from the end of the buffer backwards so each level prepends cheaply. */
    char reason[128];
    char path[LMC_PATH_MAX];
    size_t pathstart;
    int pathcut;
    /* Decoding: msgpack-c's objects for the value being decoded, and the
     * type of a refused ext. */
    msgpack_zone zone;
    int ext;
    /* A call is using zone / out: a nested call (from a finalizer) must
     * not. A Lua error that unwinds the call leaves the flag set; later
     * calls are then served by fresh ones (a malloc each), never wrongly. */
    int zone_lent;
    int out_lent;
};

/* Registry key of the weak-keyed table {array = length}: its address. */
extern const char lmc_v_arraylen_key;

int lmc_v_array_length(lua_State *L, lmc_vctx *c, int idx, size_t *n);
size_t lmc_v_largest_index(lua_State *L, int idx, size_t *count);
int lmc_v_push_lengths(lua_State *L);
void *lmc_v_push_owned(lua_State *L, size_t n, const char *name, lua_CFunction gc);
int lmc_v_tmp_buf_gc(lua_State *L);
int lmc_v_tmp_zone_gc(lua_State *L);

#endif
