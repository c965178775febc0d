/*
 * Lua values <-> msgpack, both ways through msgpack-c.
 *
 * Encoding runs msgpack-c's packer straight into the caller's mc_buf.
 * Decoding runs msgpack_unpack() into a zone the lmc_vctx keeps and clears
 * between calls, so a value whose object tree fits the zone's first chunk
 * (8 KB, some 340 elements at 24 bytes each) costs no malloc, then turns
 * the object tree into Lua values. It is the
 * obsolete-marked call, yet the only one in msgpack-c 4.0 that takes the
 * caller's zone: msgpack_unpack_next() frees and mallocs a zone per call.
 *
 * Re-entry: creating Lua tables and strings can run __gc finalizers, and a
 * finalizer may decode or encode with the same context while the outer
 * decode still reads its object tree from the zone. So the zone (and
 * encode()'s output buffer) is lent for the duration of a call; a call that
 * finds it lent uses a fresh one owned by a userdata on the Lua stack, which
 * frees it even when a Lua error unwinds the call.
 */
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

/* Registry key of the weak-keyed table {array = length} (see lmc_value.h):
 * its address is the key. */
static const char arraylen_key = 'n';

lmc_vctx *lmc_vctx_new(void)
{
    lmc_vctx *c = calloc(1, sizeof(lmc_vctx));
    if (c && !msgpack_zone_init(&c->zone, MSGPACK_ZONE_CHUNK_SIZE)) {
        free(c);
        return NULL;
    }
    return c;
}

void lmc_vctx_free(lmc_vctx *c)
{
    if (c) {
        mc_buf_free(&c->out);
        msgpack_zone_destroy(&c->zone);
        free(c);
    }
}

/* ---------------------------------------------------------------- encode */

enum { TBL_AUTO, TBL_ARRAY, TBL_MAP };

static int write_buf(void *data, const char *p, size_t n)
{
    return mc_buf_append((mc_buf *)data, p, n);
}

static int fail(lmc_vctx *c, const char *reason)
{
    snprintf(c->reason, sizeof c->reason, "%s", reason);
    return -1;
}

static int fail_type(lua_State *L, lmc_vctx *c, int idx, const char *what)
{
    int t = lua_type(L, idx);
    const char *name = t == LUA_TLIGHTUSERDATA ? "light userdata" : lua_typename(L, t);
    snprintf(c->reason, sizeof c->reason, "cannot encode a %s %s", name, what);
    return -1;
}

static void path_prepend(lmc_vctx *c, const char *seg, size_t n)
{
    if (c->pathcut)
        return;
    if (n > c->pathstart) {
        c->pathcut = 1; /* keep the innermost part, which says most */
        return;
    }
    c->pathstart -= n;
    memcpy(c->path + c->pathstart, seg, n);
}

static int is_ident(const char *s, size_t n)
{
    size_t i;
    if (n == 0 || n > 48 || (s[0] >= '0' && s[0] <= '9'))
        return 0;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!(ch == '_' || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9')))
            return 0;
    }
    return 1;
}

/* Records the key at idx as one step of the error path. */
static void path_key(lua_State *L, lmc_vctx *c, int idx)
{
    char seg[80];
    int n = 0;

    switch (lua_type(L, idx)) {
    case LUA_TSTRING: {
        size_t len, i, j = 0;
        const char *s = lua_tolstring(L, idx, &len);
        if (is_ident(s, len)) {
            n = snprintf(seg, sizeof seg, ".%.*s", (int)len, s);
            break;
        }
        seg[j++] = '[';
        seg[j++] = '"';
        for (i = 0; i < len && i < 32; i++) {
            unsigned char ch = (unsigned char)s[i];
            seg[j++] = (ch < 32 || ch > 126 || ch == '"' || ch == '\\') ? '?' : (char)ch;
        }
        if (i < len) {
            memcpy(seg + j, "...", 3);
            j += 3;
        }
        seg[j++] = '"';
        seg[j++] = ']';
        n = (int)j;
        break;
    }
    case LUA_TNUMBER:
        if (lua_isinteger(L, idx))
            n = snprintf(seg, sizeof seg, "[%lld]", lmc_toint(L, idx));
        else
            n = snprintf(seg, sizeof seg, "[%.17g]", (double)lua_tonumber(L, idx));
        break;
    case LUA_TBOOLEAN:
        n = snprintf(seg, sizeof seg, "[%s]", lua_toboolean(L, idx) ? "true" : "false");
        break;
    default:
        n = snprintf(seg, sizeof seg, "[?]");
        break;
    }
    if (n > 0)
        path_prepend(c, seg, (size_t)n < sizeof seg ? (size_t)n : sizeof seg - 1);
}

static void path_index(lmc_vctx *c, lua_Integer i)
{
    char seg[32];
    int n = snprintf(seg, sizeof seg, "[%lld]", (long long)i);
    if (n > 0)
        path_prepend(c, seg, (size_t)n);
}

static int enc_value(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx, int depth);

static int enc_number(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx)
{
    int r;
    if (lua_isinteger(L, idx))
        r = msgpack_pack_int64(pk, (int64_t)lmc_toint(L, idx));
    else
        r = msgpack_pack_double(pk, (double)lua_tonumber(L, idx));
    return r ? fail(c, "out of memory") : 0;
}

static int enc_string(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > UINT32_MAX)
        return fail(c, "string too long for msgpack");
    if (msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n))
        return fail(c, "out of memory");
    return 0;
}

/* Map keys: the scalar types other msgpack readers can use as keys. */
static int enc_key(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx)
{
    switch (lua_type(L, idx)) {
    case LUA_TSTRING:
        return enc_string(L, c, pk, idx);
    case LUA_TNUMBER:
        if (!lua_isinteger(L, idx) && isnan((double)lua_tonumber(L, idx)))
            return fail(c, "cannot encode NaN as a map key");
        return enc_number(L, c, pk, idx);
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk))
            return fail(c, "out of memory");
        return 0;
    default:
        return fail_type(L, c, idx, "as a map key");
    }
}

/* Pushes the weak-keyed length table, or nil when lmc_value_open has not
 * run in this Lua state. No allocation: a finalizer cannot run here. */
static int push_lengths(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&arraylen_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    return lua_istable(L, -1);
}

/* The length recorded for the table at idx (absolute), or 0. */
static size_t recorded_length(lua_State *L, int idx)
{
    size_t n = 0;
    if (push_lengths(L)) {
        lua_pushvalue(L, idx);
        lua_rawget(L, -2);
        if (lua_type(L, -1) == LUA_TNUMBER && lua_tonumber(L, -1) > 0)
            n = (size_t)lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return n;
}

/* The largest positive integer key of the table at idx (absolute), and how
 * many positive integer keys it has. Needs 2 stack slots. */
static size_t largest_index(lua_State *L, int idx, size_t *count)
{
    size_t max = 0;
    *count = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) == LUA_TNUMBER && lua_isinteger(L, -1) && lmc_toint(L, -1) >= 1) {
            unsigned long long k = (unsigned long long)lmc_toint(L, -1);
            (*count)++;
            if (k > max)
                max = k > SIZE_MAX ? SIZE_MAX : (size_t)k;
        }
    }
    return max;
}

/*
 * How many elements a table carrying array_mt encodes: its recorded length
 * (decoded arrays that held nil, memcached.array) or its largest positive
 * integer key, whichever is larger, so that neither an element nor a
 * trailing nil is lost (#t of a table with holes may be any border). A table
 * with no recorded length that is mostly holes is refused, as lua-cjson
 * refuses excessively sparse arrays (largest index > 10 and > 2x the
 * elements): {[1e9] = 1} would otherwise write a billion nils.
 */
static int array_length(lua_State *L, lmc_vctx *c, int idx, size_t *n)
{
    size_t count, rec = recorded_length(L, idx);
    size_t max = largest_index(L, idx, &count);

    if (max > rec && max > 10 && max / 2 > count) {
        snprintf(c->reason, sizeof c->reason,
                 "sparse array (largest index %zu, %zu elements; see memcached.array)",
                 max, count);
        return -1;
    }
    *n = max > rec ? max : rec;
    return 0;
}

static int enc_table(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx, int depth)
{
    const void *self = lua_topointer(L, idx);
    int kind = TBL_AUTO, i, base;
    size_t n, count = 0;

    for (i = 0; i < depth - 1; i++)
        if (c->seen[i] == self)
            return fail(c, "table cycle");
    if (depth > LMC_MAX_DEPTH) {
        snprintf(c->reason, sizeof c->reason, "tables nested deeper than %d levels",
                 LMC_MAX_DEPTH);
        return -1;
    }
    /* Room for key, value and a metatable, plus what a child may need. */
    if (!lua_checkstack(L, 4))
        return fail(c, "Lua stack overflow");
    c->seen[depth - 1] = self;

    if (lua_getmetatable(L, idx)) {
        const void *mt = lua_topointer(L, -1);
        lua_pop(L, 1);
        if (mt == c->array_mt)
            kind = TBL_ARRAY;
        else if (mt == c->map_mt)
            kind = TBL_MAP;
    }
    base = lua_gettop(L);
    if (kind == TBL_ARRAY) {
        if (array_length(L, c, idx, &n))
            return -1;
    } else {
        n = lua_rawlen(L, idx);
    }

    if (kind != TBL_ARRAY) {
        /* A map header needs the key count, and an array needs keys that
         * are exactly 1..n: one pass answers both. Distinct integer keys all
         * in 1..n, n of them, can only be 1..n. */
        int seq = 1;
        lua_pushnil(L);
        while (lua_next(L, idx)) {
            count++;
            if (seq && !(lua_type(L, -2) == LUA_TNUMBER && lua_isinteger(L, -2) &&
                         lmc_toint(L, -2) >= 1 && (unsigned long long)lmc_toint(L, -2) <= n))
                seq = 0;
            lua_pop(L, 1);
        }
        kind = (kind == TBL_AUTO && n > 0 && seq && count == n) ? TBL_ARRAY : TBL_MAP;
    }

    if (kind == TBL_ARRAY) {
        size_t k;
        if (n > UINT32_MAX)
            return fail(c, "table too large for msgpack");
        if (msgpack_pack_array(pk, n))
            return fail(c, "out of memory");
        for (k = 1; k <= n; k++) {
            lmc_rawgeti(L, idx, (lua_Integer)k);
            if (enc_value(L, c, pk, base + 1, depth)) {
                path_index(c, (lua_Integer)k);
                lua_settop(L, base);
                return -1;
            }
            lua_pop(L, 1);
        }
        return 0;
    }

    if (count > UINT32_MAX)
        return fail(c, "table too large for msgpack");
    if (msgpack_pack_map(pk, count))
        return fail(c, "out of memory");
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        /* A bad key is reported at the table holding it. */
        if (enc_key(L, c, pk, base + 1)) {
            lua_settop(L, base);
            return -1;
        }
        if (enc_value(L, c, pk, base + 2, depth)) {
            path_key(L, c, base + 1);
            lua_settop(L, base);
            return -1;
        }
        lua_pop(L, 1);
    }
    return 0;
}

/* idx must be absolute; depth counts the tables enclosing the value. */
static int enc_value(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx, int depth)
{
    switch (lua_type(L, idx)) {
    case LUA_TNIL:
        return msgpack_pack_nil(pk) ? fail(c, "out of memory") : 0;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk))
            return fail(c, "out of memory");
        return 0;
    case LUA_TNUMBER:
        return enc_number(L, c, pk, idx);
    case LUA_TSTRING:
        return enc_string(L, c, pk, idx);
    case LUA_TTABLE:
        return enc_table(L, c, pk, idx, depth + 1);
    default:
        return fail_type(L, c, idx, "value");
    }
}

static void refresh_metatables(lua_State *L, lmc_vctx *c, const void *registry)
{
    luaL_getmetatable(L, LMC_ARRAY_MT);
    c->array_mt = lua_istable(L, -1) ? lua_topointer(L, -1) : NULL;
    lua_pop(L, 1);
    luaL_getmetatable(L, LMC_MAP_MT);
    c->map_mt = lua_istable(L, -1) ? lua_topointer(L, -1) : NULL;
    lua_pop(L, 1);
    c->registry = registry;
}

int lmc_value_encode(lua_State *L, lmc_vctx *c, int idx, mc_buf *out,
                     char *err, size_t errlen)
{
    msgpack_packer pk;
    size_t saved = out->len;
    int top = lua_gettop(L);
    const void *registry;

    if (idx < 0 && idx > LUA_REGISTRYINDEX)
        idx = top + idx + 1;
    if (!lua_checkstack(L, 4)) {
        snprintf(err, errlen, "Lua stack overflow");
        return -1;
    }
    registry = lua_topointer(L, LUA_REGISTRYINDEX);
    /* Also retried while unknown: the metatables may be registered after
     * this context's first use. */
    if (registry != c->registry || c->array_mt == NULL)
        refresh_metatables(L, c, registry);

    c->reason[0] = '\0';
    c->pathstart = sizeof c->path - 1;
    c->path[c->pathstart] = '\0';
    c->pathcut = 0;

    msgpack_packer_init(&pk, out, write_buf);
    if (enc_value(L, c, &pk, idx, 0) == 0)
        return 0;

    out->len = saved;
    lua_settop(L, top);
    if (c->path[c->pathstart] != '\0')
        snprintf(err, errlen, "%s at value%s%s", c->reason, c->pathcut ? "..." : "",
                 c->path + c->pathstart);
    else
        snprintf(err, errlen, "%s", c->reason);
    return -1;
}

/* ---------------------------------------------------------------- decode */

/* msgpack-c's unpacker holds at most MSGPACK_EMBED_STACK_SIZE open
 * containers; LMC_MAX_DEPTH must fit in it, or values we encode could not
 * be read back. */
#if MSGPACK_EMBED_STACK_SIZE < LMC_MAX_DEPTH
#error "msgpack-c's unpacker cannot nest LMC_MAX_DEPTH containers"
#endif

enum {
    DEC_OK,
    DEC_TRUNC,
    DEC_BAD,
    DEC_TRAIL,
    DEC_DEEP,
    DEC_EXT,
    DEC_KEY,
    DEC_BIG,
    DEC_STACK,
    DEC_NOMEM,
    DEC_BUDGET
};

static uint16_t load_be16(const unsigned char *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* The guard's verdicts: SCAN_STOP means "let msgpack-c say what is wrong". */
enum { SCAN_DONE, SCAN_STOP, SCAN_DEEP, SCAN_HUGE, SCAN_BUDGET };

/*
 * Untrusted bytes reach msgpack_unpack() only after this walk over their
 * headers, because of two things msgpack-c 4.0 does:
 * - on a container header it takes count * sizeof(msgpack_object) from the
 *   zone at once, before reading any element: 5 bytes declaring 16M
 *   elements cost a 512 MB malloc, 4G elements a 96 GB one;
 * - past its 32-container stack it returns MSGPACK_UNPACK_NOMEM_ERROR, the
 *   same code as a failed malloc.
 * Every element takes at least one byte, so a container declaring more
 * elements than the bytes left (less one for each element its enclosing
 * containers still expect) cannot be complete: it is refused as truncated
 * before anything is allocated, which bounds the zone by 24 bytes per input
 * byte. The walk reads no values. Where the bytes are malformed or end
 * inside a scalar it stops and leaves the verdict to msgpack-c, which stops
 * at the same byte, after the same, already checked, headers.
 *
 * It also adds up what the value will cost in Lua memory (LMC_COST_*) and
 * refuses it (SCAN_BUDGET, *cost says how far it got) once that passes
 * lmc_decode_budget(n): one byte of nested empty arrays would otherwise
 * become a 56-byte table plus a 16-byte slot.
 */
static int scan(const unsigned char *p, size_t n, size_t *cost)
{
    const unsigned char *end = p + n;
    size_t open[LMC_MAX_DEPTH]; /* elements not yet started, per container */
    size_t pending = 0;         /* their sum */
    size_t budget = lmc_decode_budget(n);
    int top = 0;

    /* Each addition is at most LMC_COST_TABLE + LMC_COST_ENTRY * 2^32 or
     * LMC_COST_STR + the bytes left, checked against the budget at once,
     * so *cost cannot wrap. */
    *cost = 0;

    for (;;) {
        size_t left, skip = 0, lenbytes = 0, count = 0;
        int kind = 0; /* 1 array, 2 map */
        unsigned b;

        if (p >= end)
            return SCAN_STOP;
        b = *p++;
        left = (size_t)(end - p);
        if (b <= 0x7f || b >= 0xe0) {
            /* fixint */
        } else if (b <= 0x8f) {
            kind = 2;
            count = b & 0x0f;
        } else if (b <= 0x9f) {
            kind = 1;
            count = b & 0x0f;
        } else if (b <= 0xbf) {
            skip = b & 0x1f;
        } else {
            switch (b) {
            case 0xc0: case 0xc2: case 0xc3: break;
            case 0xc4: case 0xd9: lenbytes = 1; break; /* bin 8, str 8 */
            case 0xc5: case 0xda: lenbytes = 2; break;
            case 0xc6: case 0xdb: lenbytes = 4; break;
            case 0xc7: lenbytes = 1; skip = 1; break; /* ext: + type byte */
            case 0xc8: lenbytes = 2; skip = 1; break;
            case 0xc9: lenbytes = 4; skip = 1; break;
            case 0xcc: case 0xd0: skip = 1; break;
            case 0xcd: case 0xd1: skip = 2; break;
            case 0xca: case 0xce: case 0xd2: skip = 4; break;
            case 0xcb: case 0xcf: case 0xd3: skip = 8; break;
            case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext */
                skip = 1 + ((size_t)1 << (b - 0xd4));
                break;
            case 0xdc: kind = 1; lenbytes = 2; break;
            case 0xdd: kind = 1; lenbytes = 4; break;
            case 0xde: kind = 2; lenbytes = 2; break;
            case 0xdf: kind = 2; lenbytes = 4; break;
            default: return SCAN_STOP; /* 0xc1, never used */
            }
        }
        if (lenbytes) {
            size_t len;
            if (left < lenbytes)
                return SCAN_STOP;
            len = lenbytes == 1 ? p[0] : lenbytes == 2 ? load_be16(p) : load_be32(p);
            p += lenbytes;
            left -= lenbytes;
            if (kind)
                count = len;
            else
                skip += len;
        }
        if (kind) {
            if (top == LMC_MAX_DEPTH)
                return SCAN_DEEP;
            if (kind == 2) {
                if (count > left) /* also keeps 2 * count from wrapping */
                    return SCAN_HUGE;
                count *= 2;
            }
            if (pending > left || count > left - pending)
                return SCAN_HUGE;
            /* count is now within the bytes left */
            *cost += LMC_COST_TABLE + count * (kind == 2 ? LMC_COST_ENTRY / 2 : LMC_COST_SLOT);
            if (*cost > budget)
                return SCAN_BUDGET;
            if (count > 0) {
                open[top++] = count;
                pending += count;
            }
        } else {
            if (skip > left)
                return SCAN_STOP;
            p += skip;
            /* Lua interns short strings: the 257 of at most one byte cost
             * nothing per copy. */
            if (skip > 1 && (lenbytes || (b >= 0xa0 && b <= 0xbf)) && b != 0xc7 &&
                b != 0xc8 && b != 0xc9) {
                *cost += LMC_COST_STR + skip;
                if (*cost > budget)
                    return SCAN_BUDGET;
            }
        }
        /* On to the next element, past the containers it completed. */
        while (top > 0 && open[top - 1] == 0)
            top--;
        if (top == 0)
            return SCAN_DONE;
        open[top - 1]--;
        pending--;
    }
}

static int push_object(lua_State *L, lmc_vctx *c, const msgpack_object *o);

static int push_array(lua_State *L, lmc_vctx *c, const msgpack_object_array *a)
{
    int i, n, holes = 0, r;

    if (a->size > INT_MAX)
        return DEC_BIG;
    n = (int)a->size;
    lua_createtable(L, n, 0);
    for (i = 0; i < n; i++) {
        if (a->ptr[i].type == MSGPACK_OBJECT_NIL) {
            holes = 1;
            continue;
        }
        if ((r = push_object(L, c, &a->ptr[i])) != DEC_OK)
            return r;
        lua_rawseti(L, -2, i + 1);
    }
    /* Without the mark these would come back as a map (empty, or keys that
     * are not 1..n) when encoded again; without the length, an array ending
     * in nil would lose its trailing nils. */
    if (n == 0 || holes) {
        luaL_getmetatable(L, LMC_ARRAY_MT);
        lua_setmetatable(L, -2);
    }
    if (holes && push_lengths(L)) {
        lua_pushvalue(L, -2);
        lmc_pushint(L, n);
        lua_rawset(L, -3);
    }
    if (holes)
        lua_pop(L, 1);
    return DEC_OK;
}

static int push_map(lua_State *L, lmc_vctx *c, const msgpack_object_map *m)
{
    uint32_t i;
    int r;

    if (m->size > INT_MAX)
        return DEC_BIG;
    lua_createtable(L, 0, (int)m->size);
    for (i = 0; i < m->size; i++) {
        const msgpack_object *k = &m->ptr[i].key;
        /* lua_rawset() would raise on these. */
        if (k->type == MSGPACK_OBJECT_NIL ||
            ((k->type == MSGPACK_OBJECT_FLOAT64 || k->type == MSGPACK_OBJECT_FLOAT32) &&
             isnan(k->via.f64)))
            return DEC_KEY;
        if ((r = push_object(L, c, k)) != DEC_OK ||
            (r = push_object(L, c, &m->ptr[i].val)) != DEC_OK)
            return r;
        lua_rawset(L, -3);
    }
    return DEC_OK;
}

static int push_object(lua_State *L, lmc_vctx *c, const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL:
        lua_pushnil(L);
        return DEC_OK;
    case MSGPACK_OBJECT_BOOLEAN:
        lua_pushboolean(L, o->via.boolean);
        return DEC_OK;
    case MSGPACK_OBJECT_POSITIVE_INTEGER:
        if (o->via.u64 > (uint64_t)INT64_MAX)
            lua_pushnumber(L, (lua_Number)o->via.u64); /* keeps the magnitude */
        else
            lmc_pushint(L, (int64_t)o->via.u64);
        return DEC_OK;
    case MSGPACK_OBJECT_NEGATIVE_INTEGER:
        lmc_pushint(L, o->via.i64);
        return DEC_OK;
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64:
        lua_pushnumber(L, (lua_Number)o->via.f64);
        return DEC_OK;
    case MSGPACK_OBJECT_STR:
        lua_pushlstring(L, o->via.str.ptr, o->via.str.size);
        return DEC_OK;
    case MSGPACK_OBJECT_BIN:
        lua_pushlstring(L, o->via.bin.ptr, o->via.bin.size);
        return DEC_OK;
    case MSGPACK_OBJECT_ARRAY:
        return push_array(L, c, &o->via.array);
    case MSGPACK_OBJECT_MAP:
        return push_map(L, c, &o->via.map);
    default:
        c->ext = o->type == MSGPACK_OBJECT_EXT ? o->via.ext.type : -1;
        return DEC_EXT;
    }
}

typedef struct tmp_zone {
    msgpack_zone zone;
    int live;
} tmp_zone;

static int tmp_zone_gc(lua_State *L)
{
    tmp_zone *t = lua_touserdata(L, 1);
    if (t && t->live) {
        t->live = 0;
        msgpack_zone_destroy(&t->zone);
    }
    return 0;
}

static int tmp_buf_gc(lua_State *L)
{
    mc_buf *b = lua_touserdata(L, 1);
    if (b)
        mc_buf_free(b);
    return 0;
}

/* Pushes a userdata of size n whose metatable (name, with gc as __gc) frees
 * what it holds; zeroed before the metatable is set, so a failure later
 * leaks nothing. */
static void *push_owned(lua_State *L, size_t n, const char *name, lua_CFunction gc)
{
    void *p = lua_newuserdata(L, n);
    memset(p, 0, n);
    luaL_getmetatable(L, name);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        luaL_newmetatable(L, name);
        lua_pushcfunction(L, gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    return p;
}

int lmc_value_decode(lua_State *L, lmc_vctx *c, const char *p, size_t n,
                     char *err, size_t errlen)
{
    msgpack_object obj;
    msgpack_zone *zone = NULL;
    tmp_zone *tmp = NULL;
    size_t off = 0, cost = 0;
    int top = lua_gettop(L);
    int e;

    switch (n == 0 ? SCAN_STOP : scan((const unsigned char *)p, n, &cost)) { /* p may be NULL */
    case SCAN_DEEP:
        e = DEC_DEEP;
        break;
    case SCAN_HUGE:
        e = DEC_TRUNC;
        break;
    case SCAN_BUDGET:
        e = DEC_BUDGET;
        break;
    default:
        /* Each level holds a table and a key while its value is pushed, the
         * innermost array also the length table, a key and a value. */
        if (!lua_checkstack(L, 2 * LMC_MAX_DEPTH + 8)) {
            e = DEC_STACK;
            break;
        }
        if (!c->zone_lent) {
            zone = &c->zone;
            c->zone_lent = 1;
            /* Cleared before as well as after: a Lua error while pushing
             * unwinds past the clear below. */
            msgpack_zone_clear(zone);
        } else {
            /* Called from a finalizer while a decode that uses c->zone is
             * still pushing its value (or one was unwound by an error). */
            tmp = push_owned(L, sizeof *tmp, LMC_TMPZONE_MT, tmp_zone_gc);
            if (!msgpack_zone_init(&tmp->zone, MSGPACK_ZONE_CHUNK_SIZE)) {
                e = DEC_NOMEM;
                break;
            }
            tmp->live = 1;
            zone = &tmp->zone;
        }
        switch (msgpack_unpack(p, n, &off, zone, &obj)) {
        case MSGPACK_UNPACK_SUCCESS:
            e = push_object(L, c, &obj);
            break;
        case MSGPACK_UNPACK_EXTRA_BYTES:
            e = DEC_TRAIL;
            break;
        case MSGPACK_UNPACK_CONTINUE:
            e = DEC_TRUNC;
            break;
        case MSGPACK_UNPACK_NOMEM_ERROR: /* the scan took care of depth */
            e = DEC_NOMEM;
            break;
        default:
            e = DEC_BAD;
            break;
        }
        if (tmp) {
            tmp->live = 0;
            msgpack_zone_destroy(&tmp->zone);
            if (e == DEC_OK)
                lua_remove(L, top + 1);
        } else {
            /* Keeps only the first chunk: a big value's memory goes back
             * now. */
            msgpack_zone_clear(zone);
            c->zone_lent = 0;
        }
        break;
    }
    if (e == DEC_OK)
        return 0;

    lua_settop(L, top);
    switch (e) {
    case DEC_TRUNC:
        snprintf(err, errlen, "truncated msgpack value");
        break;
    case DEC_TRAIL:
        snprintf(err, errlen, "trailing bytes after msgpack value");
        break;
    case DEC_DEEP:
        snprintf(err, errlen, "msgpack value nested deeper than %d levels", LMC_MAX_DEPTH);
        break;
    case DEC_EXT:
        snprintf(err, errlen, "msgpack ext type %d is not supported", c->ext);
        break;
    case DEC_KEY:
        snprintf(err, errlen, "msgpack map key cannot be nil/NaN");
        break;
    case DEC_BIG:
        snprintf(err, errlen, "msgpack container too large");
        break;
    case DEC_STACK:
        snprintf(err, errlen, "Lua stack overflow while decoding msgpack value");
        break;
    case DEC_NOMEM:
        snprintf(err, errlen, "out of memory while decoding msgpack value");
        break;
    case DEC_BUDGET:
        snprintf(err, errlen,
                 "msgpack value over the decoded size budget: %zu bytes would take more "
                 "than %zu bytes of Lua memory (limit %dx + %zu KiB)",
                 n, cost, LMC_BUDGET_RATIO, (size_t)LMC_BUDGET_BASE / 1024);
        break;
    default:
        snprintf(err, errlen, "malformed msgpack value");
        break;
    }
    return -1;
}

/* ------------------------------------------------------------ Lua face */

static lmc_vctx *upvalue_ctx(lua_State *L)
{
    lmc_vctx **ud = (lmc_vctx **)lua_touserdata(L, lua_upvalueindex(1));
    return *ud;
}

/* The output buffer is lent while the result is copied out: LuaJIT runs
 * the collector (and so finalizers, which may encode) before it copies a
 * new string. */
static int l_encode(lua_State *L)
{
    lmc_vctx *c = upvalue_ctx(L);
    mc_buf *out;
    char err[256];
    int rc;

    luaL_checkany(L, 1);
    lua_settop(L, 1);
    if (c->out_lent) {
        out = push_owned(L, sizeof *out, LMC_TMPBUF_MT, tmp_buf_gc);
    } else {
        out = &c->out;
        c->out_lent = 1;
    }
    out->len = 0;
    rc = lmc_value_encode(L, c, 1, out, err, sizeof err);
    if (rc == 0)
        lua_pushlstring(L, out->data ? out->data : "", out->len);
    if (out == &c->out) {
        mc_buf_clear(out, LMC_OUT_KEEP);
        c->out_lent = 0;
    } else {
        mc_buf_free(out);
    }
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int l_decode(lua_State *L)
{
    lmc_vctx *c = upvalue_ctx(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    char err[256];

    if (lmc_value_decode(L, c, p, n, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/* memcached.array(t [, n]) -> t */
static int l_array(lua_State *L)
{
    size_t count, max;
    lua_Integer n;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, LMC_ARRAY_MT);
        luaL_getmetatable(L, LMC_MAP_MT);
        if (!lua_rawequal(L, -1, -3) && !lua_rawequal(L, -2, -3))
            return luaL_argerror(L, 1, "table has another metatable");
        lua_pop(L, 3);
    }
    max = largest_index(L, 1, &count);
    if (lua_isnil(L, 2)) {
        if (max > UINT32_MAX)
            return luaL_argerror(L, 1, "largest index too large for a msgpack array");
        n = (lua_Integer)max;
    } else {
        if (!lua_isinteger(L, 2))
            return luaL_argerror(L, 2, "integer expected");
        n = (lua_Integer)lmc_toint(L, 2);
        if (n < 0 || n > (lua_Integer)UINT32_MAX)
            return luaL_argerror(L, 2, "out of range (0..4294967295)");
        if ((size_t)n < max)
            return luaL_argerror(L, 2, "smaller than the table's largest index");
    }
    luaL_getmetatable(L, LMC_ARRAY_MT);
    lua_setmetatable(L, 1);
    if (push_lengths(L)) {
        lua_pushvalue(L, 1);
        lmc_pushint(L, n);
        lua_rawset(L, -3);
    }
    lua_settop(L, 1);
    return 1;
}

/* memcached.array_length(t) -> n | nil */
static int l_array_length(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (push_lengths(L)) {
        lua_pushvalue(L, 1);
        lua_rawget(L, -2);
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

static int l_ctx_gc(lua_State *L)
{
    lmc_vctx **ud = (lmc_vctx **)lua_touserdata(L, 1);
    if (ud && *ud) {
        lmc_vctx_free(*ud);
        *ud = NULL;
    }
    return 0;
}

static void new_metatable(lua_State *L, const char *name)
{
    luaL_newmetatable(L, name); /* an existing one is reused */
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
}

void lmc_value_open(lua_State *L)
{
    lmc_vctx **ud;
    int mod = lua_gettop(L);

    luaL_checkstack(L, 6, "lmc_value_open");
    new_metatable(L, LMC_ARRAY_MT);
    lua_pushvalue(L, -1);
    lua_setfield(L, mod, "array_mt");
    lua_newtable(L);
    lua_pushvalue(L, -2);
    lua_setmetatable(L, -2);
    lua_setfield(L, mod, "empty_array");
    lua_pop(L, 1);

    new_metatable(L, LMC_MAP_MT);
    lua_setfield(L, mod, "map_mt");

    /* Recorded array lengths, keyed weakly by the table: an entry goes
     * with its table. Kept if the module is opened again. */
    lua_pushlightuserdata(L, (void *)&arraylen_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_pushlightuserdata(L, (void *)&arraylen_key);
        lua_newtable(L);
        lua_newtable(L);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
    } else {
        lua_pop(L, 1);
    }
    lua_pushcfunction(L, l_array);
    lua_setfield(L, mod, "array");
    lua_pushcfunction(L, l_array_length);
    lua_setfield(L, mod, "array_length");

    /* Created now, so that a nested call does not have to. */
    luaL_newmetatable(L, LMC_TMPZONE_MT);
    lua_pushcfunction(L, tmp_zone_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LMC_TMPBUF_MT);
    lua_pushcfunction(L, tmp_buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    /* The context is born empty with its __gc in place, so a failure while
     * allocating it cannot leak. */
    ud = (lmc_vctx **)lua_newuserdata(L, sizeof *ud);
    *ud = NULL;
    new_metatable(L, LMC_VCTX_MT);
    lua_pushcfunction(L, l_ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    *ud = lmc_vctx_new();
    if (*ud == NULL)
        luaL_error(L, "out of memory");

    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_encode, 1);
    lua_setfield(L, mod, "encode");
    lua_pushcclosure(L, l_decode, 1);
    lua_setfield(L, mod, "decode");
}
