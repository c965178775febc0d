/*
 * lmc_encode: Lua values -> msgpack (see lmc_value.c for the whole).
 */
#include "lmc_value_int.h"

enum { TBL_AUTO, TBL_ARRAY, TBL_MAP };

static int write_buf(void *data, const char *p, size_t n)
{
    return mc_buf_append((mc_buf *)data, p, n);
}

static int enc_fail(lmc_vctx *c, const char *reason)
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
    return r ? enc_fail(c, "out of memory") : 0;
}

static int enc_string(lua_State *L, lmc_vctx *c, msgpack_packer *pk, int idx)
{
    size_t n;
    const char *s = lua_tolstring(L, idx, &n);
    if (n > UINT32_MAX)
        return enc_fail(c, "string too long for msgpack");
    if (msgpack_pack_str(pk, n) || msgpack_pack_str_body(pk, s, n))
        return enc_fail(c, "out of memory");
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
            return enc_fail(c, "cannot encode NaN as a map key");
        return enc_number(L, c, pk, idx);
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk))
            return enc_fail(c, "out of memory");
        return 0;
    default:
        return fail_type(L, c, idx, "as a map key");
    }
}

/* Pushes the weak-keyed length table, or nil when lmc_value_open has not
 * run in this Lua state. No allocation: a finalizer cannot run here. */
int lmc_v_push_lengths(lua_State *L)
{
    lua_pushlightuserdata(L, (void *)&lmc_v_arraylen_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    return lua_istable(L, -1);
}

/* The length recorded for the table at idx (absolute), or 0. */
static size_t recorded_length(lua_State *L, int idx)
{
    size_t n = 0;
    if (lmc_v_push_lengths(L)) {
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
size_t lmc_v_largest_index(lua_State *L, int idx, size_t *count)
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
int lmc_v_array_length(lua_State *L, lmc_vctx *c, int idx, size_t *n)
{
    size_t count, rec = recorded_length(L, idx);
    size_t max = lmc_v_largest_index(L, idx, &count);

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
            return enc_fail(c, "table cycle");
    if (depth > LMC_MAX_DEPTH) {
        snprintf(c->reason, sizeof c->reason, "tables nested deeper than %d levels",
                 LMC_MAX_DEPTH);
        return -1;
    }
    /* Room for key, value and a metatable, plus what a child may need. */
    if (!lua_checkstack(L, 4))
        return enc_fail(c, "Lua stack overflow");
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
        if (lmc_v_array_length(L, c, idx, &n))
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
            return enc_fail(c, "table too large for msgpack");
        if (msgpack_pack_array(pk, n))
            return enc_fail(c, "out of memory");
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
        return enc_fail(c, "table too large for msgpack");
    if (msgpack_pack_map(pk, count))
        return enc_fail(c, "out of memory");
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
        return msgpack_pack_nil(pk) ? enc_fail(c, "out of memory") : 0;
    case LUA_TBOOLEAN:
        if (lua_toboolean(L, idx) ? msgpack_pack_true(pk) : msgpack_pack_false(pk))
            return enc_fail(c, "out of memory");
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

