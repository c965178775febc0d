/*
 * libFuzzer target for the value round trip: a Lua value built from the
 * fuzz input (scalars, strings, maps, arrays with holes and trailing nils,
 * lengths set as memcached.array does) must encode, decode to an equal
 * value (every element, every recorded length), and encode again to the
 * same bytes (see input.inexact for when they may differ) or else to bytes
 * that decode to an equal value.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lmc_value.h"

static lua_State *L;
static lmc_vctx *ctx;
static int mod; /* stack index of the module table */

typedef struct {
    const uint8_t *p;
    size_t n;
    /* Bytes may differ after a decode: a map has two or more keys (Lua
     * does not keep their order) or a positive integer key (a decoded map
     * has no map_mt: keys 1..n come back as an array, README Values). */
    int inexact;
} input;

static unsigned take(input *in)
{
    unsigned b;
    if (in->n == 0)
        return 0;
    b = *in->p++;
    in->n--;
    return b;
}

/* Pushes one value (nil included); depth counts enclosing tables. */
static void build(input *in, int depth);

static void build_key(input *in)
{
    unsigned k = take(in);
    if (k & 1) {
        char s[4] = {'k', (char)('a' + k % 26), (char)('0' + k % 10), 0};
        lua_pushstring(L, s);
    } else {
        lua_pushinteger(L, (lua_Integer)(k >> 1) - 40);
    }
}

static void build(input *in, int depth)
{
    unsigned op = take(in), i, n;
    luaL_checkstack(L, 8, "fuzz_roundtrip");
    switch (op % 8) {
    case 0:
        lua_pushnil(L);
        break;
    case 1:
        lua_pushboolean(L, op & 8);
        break;
    case 2: {
        int64_t v = 0;
        for (i = 0; i < 1 + op / 32; i++)
            v = (int64_t)((uint64_t)v << 8 | take(in));
        lua_pushinteger(L, (op & 8) ? (lua_Integer)(0 - (uint64_t)v) : v);
        break;
    }
    case 3: {
        double d = (double)(int)take(in) / 8.0 - 10.0;
        lua_pushnumber(L, d == (double)(int64_t)d ? d + 0.5 : d);
        break;
    }
    case 4: {
        char s[64];
        n = take(in) % sizeof s;
        for (i = 0; i < n; i++)
            s[i] = (char)take(in);
        lua_pushlstring(L, s, n);
        break;
    }
    case 5:
    case 6: { /* array, maybe with holes and a length */
        n = depth < LMC_MAX_DEPTH - 1 ? take(in) % 18 : 0;
        lua_createtable(L, (int)n, 0);
        for (i = 1; i <= n; i++) {
            build(in, depth + 1);
            /* unmarked, a table with holes is a map (see inexact) */
            if (lua_isnil(L, -1) && !(op & 16))
                in->inexact = 1;
            lua_rawseti(L, -2, (lua_Integer)i);
        }
        if (op & 16) { /* memcached.array(t, n) */
            lua_getfield(L, mod, "array");
            lua_pushvalue(L, -2);
            lua_pushinteger(L, (lua_Integer)n);
            lua_call(L, 2, 1);
            lua_pop(L, 1);
        } else if (n == 0 && (op & 32)) {
            lua_getfield(L, mod, "empty_array");
            lua_replace(L, -2);
        }
        break;
    }
    default: { /* map */
        int count = 0;
        n = depth < LMC_MAX_DEPTH - 1 ? take(in) % 6 : 0;
        lua_createtable(L, 0, (int)n);
        for (i = 0; i < n; i++) {
            build_key(in);
            build(in, depth + 1);
            if (lua_isnil(L, -1)) {
                lua_pop(L, 2);
                continue;
            }
            lua_rawset(L, -3);
        }
        lua_pushnil(L);
        while (lua_next(L, -2)) {
            lua_pop(L, 1);
            count++;
            if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0)
                in->inexact = 1;
        }
        if (count > 1)
            in->inexact = 1;
        if (count == 0 || (op & 64)) { /* an empty one must stay a map */
            lua_getfield(L, mod, "map_mt");
            lua_setmetatable(L, -2);
        }
        break;
    }
    }
}

static int is_array(int idx)
{
    int r = 0;
    if (lua_getmetatable(L, idx)) {
        lua_getfield(L, mod, "array_mt");
        r = lua_rawequal(L, -1, -2);
        lua_pop(L, 2);
    }
    return r;
}

/* The length an array_mt table encodes: max(recorded, largest key); for
 * another table its largest positive integer key. */
static lua_Integer eff_length(int idx)
{
    lua_Integer n = 0;
    idx = lua_absindex(L, idx);
    lua_getfield(L, mod, "array_length");
    lua_pushvalue(L, idx);
    lua_call(L, 1, 1);
    if (lua_isinteger(L, -1))
        n = lua_tointeger(L, -1);
    lua_pop(L, 1);
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        lua_pop(L, 1);
        if (lua_isinteger(L, -1) && lua_tointeger(L, -1) > n)
            n = lua_tointeger(L, -1);
    }
    return n;
}

/* Are the values at a and b equal (tables by content)? */
static int same(int a, int b, int depth)
{
    int ta = lua_type(L, a), r = 1;
    luaL_checkstack(L, 8, "fuzz_roundtrip");
    a = lua_absindex(L, a);
    b = lua_absindex(L, b);
    if (ta != lua_type(L, b) || depth > LMC_MAX_DEPTH + 1)
        return 0;
    if (ta != LUA_TTABLE)
        return lua_rawequal(L, a, b) ||
               (ta == LUA_TNUMBER && lua_tonumber(L, a) != lua_tonumber(L, a) &&
                lua_tonumber(L, b) != lua_tonumber(L, b));
    /* A decoded array without holes has no array_mt (an automatic
     * array), but the same length. */
    if ((is_array(a) || is_array(b)) && eff_length(a) != eff_length(b))
        return 0;
    /* every key of a in b with an equal value, and no other key in b */
    lua_pushnil(L);
    while (r && lua_next(L, a)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, b);
        r = same(-2, -1, depth + 1);
        lua_pop(L, 2);
    }
    if (!r) {
        lua_pop(L, 1);
        return 0;
    }
    lua_pushnil(L);
    while (r && lua_next(L, b)) {
        lua_pushvalue(L, -2);
        lua_rawget(L, a);
        r = !lua_isnil(L, -1);
        lua_pop(L, 2);
    }
    if (!r)
        lua_pop(L, 1);
    return r;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[256];
    mc_buf e1 = {0}, e2 = {0};
    input in = {data, size, 0};
    int top;

    if (!L) {
        L = luaL_newstate();
        lua_newtable(L);
        lmc_value_open(L);
        mod = lua_gettop(L);
        ctx = lmc_vctx_new();
    }
    top = lua_gettop(L);
    build(&in, 0);
    if (lmc_value_encode(L, ctx, -1, &e1, err, sizeof err) != 0)
        abort(); /* everything built is encodable */
    if (lmc_value_decode(L, ctx, e1.data, e1.len, err, sizeof err) != 0)
        abort(); /* and what we encode decodes */
    if (!same(-2, -1, 0))
        abort();
    if (lmc_value_encode(L, ctx, -1, &e2, err, sizeof err) != 0)
        abort();
    if (!in.inexact) {
        if (e1.len != e2.len || memcmp(e1.data, e2.data, e1.len) != 0)
            abort();
    } else {
        if (lmc_value_decode(L, ctx, e2.data, e2.len, err, sizeof err) != 0)
            abort();
        if (!same(-2, -1, 0))
            abort();
    }
    mc_buf_free(&e1);
    mc_buf_free(&e2);
    lua_settop(L, top);
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
