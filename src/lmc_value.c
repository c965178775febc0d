/*
 * Lua values <-> msgpack.
 *
 * Encoding goes through msgpack-c's packer, writing straight into the
 * caller's mc_buf. Decoding is done here rather than by msgpack_unpack():
 * msgpack-c 4.0's C unpacker keeps a fixed stack of 32 containers
 * (MSGPACK_EMBED_STACK_SIZE in unpack_template.h) and answers
 * MSGPACK_UNPACK_NOMEM_ERROR past it, so values we encode at depths 33..64
 * could not be read back. Decoding directly into Lua also skips building an
 * intermediate object tree, and needs no zone.
 */
#include "lmc_value.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <msgpack.h>

#include "lmc_compat.h"

#define LMC_PATH_MAX 200
#define LMC_VCTX_MT "memcached.value_ctx"
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
    char reason[96];
    char path[LMC_PATH_MAX];
    size_t pathstart;
    int pathcut;
};

lmc_vctx *lmc_vctx_new(void)
{
    return calloc(1, sizeof(lmc_vctx));
}

void lmc_vctx_free(lmc_vctx *c)
{
    if (c) {
        mc_buf_free(&c->out);
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
    n = lua_rawlen(L, idx);
    base = lua_gettop(L);

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
            lua_rawgeti(L, idx, (lua_Integer)k);
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

enum {
    DEC_TRUNC = 1,
    DEC_BAD,
    DEC_TRAIL,
    DEC_DEEP,
    DEC_EXT,
    DEC_KEY,
    DEC_BIG,
    DEC_STACK
};

/* What the last decoded value was, for the checks its container makes. */
enum { LAST_OTHER, LAST_NIL, LAST_FLOAT };

typedef struct dec {
    const unsigned char *p, *end;
    /* Elements that enclosing containers still expect; each needs at least a
     * byte, so a container whose count plus these exceeds what is left is
     * truncated. This also bounds the table slots preallocated from
     * untrusted counts by the input size. */
    size_t pending;
    int err;
    int ext;
    int last;
} dec;

static uint16_t load_be16(const unsigned char *p)
{
    return (uint16_t)((unsigned)p[0] << 8 | p[1]);
}

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static uint64_t load_be64(const unsigned char *p)
{
    return (uint64_t)load_be32(p) << 32 | load_be32(p + 4);
}

static int dec_err(dec *d, int e)
{
    d->err = e;
    return -1;
}

static int dec_value(lua_State *L, dec *d, int depth);

/* Reads an n-byte big-endian length; the header byte is already consumed. */
static int dec_len(dec *d, int n, size_t *len)
{
    if ((size_t)(d->end - d->p) < (size_t)n)
        return dec_err(d, DEC_TRUNC);
    *len = n == 1 ? d->p[0] : n == 2 ? load_be16(d->p) : load_be32(d->p);
    d->p += n;
    return 0;
}

static int dec_bytes(lua_State *L, dec *d, size_t n)
{
    if ((size_t)(d->end - d->p) < n)
        return dec_err(d, DEC_TRUNC);
    lua_pushlstring(L, (const char *)d->p, n);
    d->p += n;
    return 0;
}

/* Checks a container of n elements can fit, before any table exists. */
static int dec_open(lua_State *L, dec *d, size_t n, int depth)
{
    size_t left = (size_t)(d->end - d->p);
    if (d->pending > left || n > left - d->pending)
        return dec_err(d, DEC_TRUNC);
    if (depth >= LMC_MAX_DEPTH)
        return dec_err(d, DEC_DEEP);
    if (n > INT_MAX)
        return dec_err(d, DEC_BIG);
    if (!lua_checkstack(L, 4))
        return dec_err(d, DEC_STACK);
    return 0;
}

static int dec_array(lua_State *L, dec *d, size_t n, int depth)
{
    int i, holes = 0;
    if (dec_open(L, d, n, depth))
        return -1;
    lua_createtable(L, (int)n, 0);
    d->pending += n;
    for (i = 1; i <= (int)n; i++) {
        d->pending--;
        if (dec_value(L, d, depth + 1))
            return -1;
        if (d->last == LAST_NIL) {
            holes = 1;
            lua_pop(L, 1);
        } else {
            lua_rawseti(L, -2, i);
        }
    }
    /* Without the mark these would come back as a map (empty, or keys that
     * are not 1..n) when encoded again. */
    if (n == 0 || holes) {
        luaL_getmetatable(L, LMC_ARRAY_MT);
        lua_setmetatable(L, -2);
    }
    d->last = LAST_OTHER;
    return 0;
}

static int dec_map(lua_State *L, dec *d, size_t n, int depth)
{
    size_t i;
    if (n > SIZE_MAX / 2 || dec_open(L, d, 2 * n, depth))
        return -1;
    lua_createtable(L, 0, (int)n);
    d->pending += 2 * n;
    for (i = 0; i < n; i++) {
        d->pending--;
        if (dec_value(L, d, depth + 1))
            return -1;
        if (d->last == LAST_NIL ||
            (d->last == LAST_FLOAT && isnan((double)lua_tonumber(L, -1))))
            return dec_err(d, DEC_KEY);
        d->pending--;
        if (dec_value(L, d, depth + 1))
            return -1;
        lua_rawset(L, -3);
    }
    d->last = LAST_OTHER;
    return 0;
}

static int dec_ext(dec *d, size_t n)
{
    if (d->p >= d->end)
        return dec_err(d, DEC_TRUNC);
    (void)n;
    d->ext = (signed char)d->p[0];
    return dec_err(d, DEC_EXT);
}

static int dec_value(lua_State *L, dec *d, int depth)
{
    unsigned b;
    size_t n;
    size_t left;

    if (d->p >= d->end)
        return dec_err(d, DEC_TRUNC);
    b = *d->p++;
    d->last = LAST_OTHER;
    if (b <= 0x7f) {
        lmc_pushint(L, b);
        return 0;
    }
    if (b >= 0xe0) {
        lmc_pushint(L, (int)b - 256);
        return 0;
    }
    if (b >= 0xa0 && b <= 0xbf)
        return dec_bytes(L, d, b & 0x1f);
    if (b <= 0x8f)
        return dec_map(L, d, b & 0x0f, depth);
    if (b <= 0x9f)
        return dec_array(L, d, b & 0x0f, depth);

    left = (size_t)(d->end - d->p);
    switch (b) {
    case 0xc0:
        lua_pushnil(L);
        d->last = LAST_NIL;
        return 0;
    case 0xc2:
        lua_pushboolean(L, 0);
        return 0;
    case 0xc3:
        lua_pushboolean(L, 1);
        return 0;
    case 0xc4: case 0xd9: /* bin 8, str 8 */
        return dec_len(d, 1, &n) ? -1 : dec_bytes(L, d, n);
    case 0xc5: case 0xda:
        return dec_len(d, 2, &n) ? -1 : dec_bytes(L, d, n);
    case 0xc6: case 0xdb:
        return dec_len(d, 4, &n) ? -1 : dec_bytes(L, d, n);
    case 0xc7:
        return dec_len(d, 1, &n) ? -1 : dec_ext(d, n);
    case 0xc8:
        return dec_len(d, 2, &n) ? -1 : dec_ext(d, n);
    case 0xc9:
        return dec_len(d, 4, &n) ? -1 : dec_ext(d, n);
    case 0xd4: case 0xd5: case 0xd6: case 0xd7: case 0xd8: /* fixext */
        return dec_ext(d, 0);
    case 0xca: {
        uint32_t u;
        float f;
        if (left < 4)
            return dec_err(d, DEC_TRUNC);
        u = load_be32(d->p);
        memcpy(&f, &u, 4);
        d->p += 4;
        lua_pushnumber(L, (lua_Number)f);
        d->last = LAST_FLOAT;
        return 0;
    }
    case 0xcb: {
        uint64_t u;
        double f;
        if (left < 8)
            return dec_err(d, DEC_TRUNC);
        u = load_be64(d->p);
        memcpy(&f, &u, 8);
        d->p += 8;
        lua_pushnumber(L, (lua_Number)f);
        d->last = LAST_FLOAT;
        return 0;
    }
    case 0xcc:
        if (left < 1)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, d->p[0]);
        d->p += 1;
        return 0;
    case 0xcd:
        if (left < 2)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, load_be16(d->p));
        d->p += 2;
        return 0;
    case 0xce:
        if (left < 4)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, load_be32(d->p));
        d->p += 4;
        return 0;
    case 0xcf: {
        uint64_t u;
        if (left < 8)
            return dec_err(d, DEC_TRUNC);
        u = load_be64(d->p);
        d->p += 8;
        if (u > (uint64_t)INT64_MAX) {
            /* No integer holds it; a float keeps its magnitude. */
            lua_pushnumber(L, (lua_Number)u);
            d->last = LAST_FLOAT;
        } else {
            lmc_pushint(L, (int64_t)u);
        }
        return 0;
    }
    case 0xd0:
        if (left < 1)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, (int8_t)d->p[0]);
        d->p += 1;
        return 0;
    case 0xd1:
        if (left < 2)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, (int16_t)load_be16(d->p));
        d->p += 2;
        return 0;
    case 0xd2:
        if (left < 4)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, (int32_t)load_be32(d->p));
        d->p += 4;
        return 0;
    case 0xd3:
        if (left < 8)
            return dec_err(d, DEC_TRUNC);
        lmc_pushint(L, (int64_t)load_be64(d->p));
        d->p += 8;
        return 0;
    case 0xdc:
        return dec_len(d, 2, &n) ? -1 : dec_array(L, d, n, depth);
    case 0xdd:
        return dec_len(d, 4, &n) ? -1 : dec_array(L, d, n, depth);
    case 0xde:
        return dec_len(d, 2, &n) ? -1 : dec_map(L, d, n, depth);
    case 0xdf:
        return dec_len(d, 4, &n) ? -1 : dec_map(L, d, n, depth);
    default: /* 0xc1 is never used */
        return dec_err(d, DEC_BAD);
    }
}

int lmc_value_decode(lua_State *L, lmc_vctx *c, const char *p, size_t n,
                     char *err, size_t errlen)
{
    dec d;
    int top = lua_gettop(L);

    (void)c; /* decoding keeps no state between calls */
    d.p = (const unsigned char *)p;
    d.end = d.p + n;
    d.pending = 0;
    d.err = 0;
    d.ext = 0;
    d.last = LAST_OTHER;
    if (!lua_checkstack(L, 4)) {
        d.err = DEC_STACK;
    } else if (dec_value(L, &d, 0) == 0) {
        if (d.p == d.end)
            return 0;
        d.err = DEC_TRAIL;
    }
    lua_settop(L, top);
    switch (d.err) {
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
        snprintf(err, errlen, "msgpack ext type %d is not supported", d.ext);
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

static int l_encode(lua_State *L)
{
    lmc_vctx *c = upvalue_ctx(L);
    char err[256];

    luaL_checkany(L, 1);
    c->out.len = 0;
    if (lmc_value_encode(L, c, 1, &c->out, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushlstring(L, c->out.data ? c->out.data : "", c->out.len);
    mc_buf_clear(&c->out, LMC_OUT_KEEP);
    return 1;
}

static int l_decode(lua_State *L)
{
    lmc_vctx *c = upvalue_ctx(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    char err[128];

    if (lmc_value_decode(L, c, p, n, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
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
