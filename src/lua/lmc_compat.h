/*
 * One source for Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT 2.1: the few calls that
 * differ. Two axes, guarded by LUA_VERSION_NUM:
 *
 *   - the C API: 5.1 and LuaJIT (501) lack what 5.2 added (lua_rawlen,
 *     luaL_setfuncs, lua_absindex, luaL_testudata...);
 *   - numbers: before 5.3 (501, 502) there is no integer subtype, every
 *     number is a double, exact to 2^53.
 *
 * Everything here is static, so nothing leaks into the exported symbols.
 */
#ifndef LMC_COMPAT_H
#define LMC_COMPAT_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <lua.h>
#include <lauxlib.h>

/* full userdata with no user values: 5.4's call, plain before it */
#if LUA_VERSION_NUM < 504
#define lua_newuserdatauv(L, sz, nuv) lua_newuserdata((L), (sz))
#endif

/* the one user value of a full userdata (lua_newuserdatauv(L, sz, 1)): a
 * table, set from the top of the stack (popped) or pushed */
#if LUA_VERSION_NUM >= 504
#define lmc_setuv(L, i) lua_setiuservalue((L), (i), 1)
#define lmc_getuv(L, i) lua_getiuservalue((L), (i), 1)
#elif LUA_VERSION_NUM >= 502
#define lmc_setuv(L, i) lua_setuservalue((L), (i))
#define lmc_getuv(L, i) lua_getuservalue((L), (i))
#else
#define lmc_setuv(L, i) lua_setfenv((L), (i))
#define lmc_getuv(L, i) lua_getfenv((L), (i))
#endif

/* lua_rawgeti returning the type pushed, as in 5.3+ */
#if LUA_VERSION_NUM >= 503
#define lmc_rawgeti(L, t, i) lua_rawgeti((L), (t), (i))
#define lmc_rawseti(L, t, i) lua_rawseti((L), (t), (i))
#else
/* 5.1, 5.2 and LuaJIT index with an int */
#define lmc_rawseti(L, t, i) lua_rawseti((L), (t), (int)(i))
static inline int lmc_rawgeti(lua_State *L, int t, lua_Integer i)
{
    lua_rawgeti(L, t, (int)i);
    return lua_type(L, -1);
}
#endif

#if LUA_VERSION_NUM < 502
#define lua_rawlen(L, i) lua_objlen((L), (i))
#define luaL_setfuncs(L, l, n) lmc_compat_setfuncs((L), (l), (n))
static inline void lmc_compat_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
    luaL_checkstack(L, nup + 1, "too many upvalues");
    for (; l->name; l++) {
        int i;
        for (i = 0; i < nup; i++)
            lua_pushvalue(L, -nup);
        lua_pushcclosure(L, l->func, nup);
        lua_setfield(L, -(nup + 2), l->name);
    }
    lua_pop(L, nup);
}
#define lua_absindex(L, i)                                                   \
    ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)
#ifndef luaL_newlibtable /* LuaJIT 2.1 has these two */
#define luaL_newlibtable(L, l) lua_createtable((L), 0, sizeof(l) / sizeof((l)[0]) - 1)
#define luaL_newlib(L, l) (luaL_newlibtable((L), (l)), luaL_setfuncs((L), (l), 0))
#endif
#define luaL_setmetatable(L, name) (luaL_getmetatable((L), (name)), lua_setmetatable((L), -2))
static inline void *lmc_compat_testudata(lua_State *L, int i, const char *name)
{
    void *p = lua_touserdata(L, i);
    if (p && lua_getmetatable(L, i)) {
        luaL_getmetatable(L, name);
        if (!lua_rawequal(L, -1, -2))
            p = NULL;
        lua_pop(L, 2);
        return p;
    }
    return NULL;
}
#define luaL_testudata(L, i, n) lmc_compat_testudata((L), (i), (n))
#endif

/* Largest integer a double holds exactly with all smaller ones: 2^53. */
#define LMC_EXACT_U64 ((uint64_t)1 << 53)

#if LUA_VERSION_NUM < 503
/* No integer subtype: an integral double in int64 range counts. The range
 * is checked before the cast, which is undefined outside it. */
static inline int lmc_compat_isinteger(lua_State *L, int i)
{
    if (lua_type(L, i) == LUA_TNUMBER) {
        lua_Number n = lua_tonumber(L, i);
        return n >= -9223372036854775808.0 && n < 9223372036854775808.0 &&
               n == (lua_Number)(long long)n;
    }
    return 0;
}
#define lua_isinteger(L, i) lmc_compat_isinteger((L), (i))
#define lmc_pushint(L, v) lua_pushnumber((L), (lua_Number)(v))
#define lmc_toint(L, i) ((long long)lua_tonumber((L), (i)))

/* The protocol's 64-bit numbers (cas, counters) are never rounded: above
 * 2^53 they come back as a string of decimal digits, exact. */
static inline void lmc_pushu64(lua_State *L, uint64_t v)
{
    if (v <= LMC_EXACT_U64) {
        lua_pushnumber(L, (lua_Number)v);
    } else {
        char d[24];
        snprintf(d, sizeof(d), "%llu", (unsigned long long)v);
        lua_pushstring(L, d);
    }
}

/* ... and such a string is taken back where an integer argument is
 * expected: decimal digits whose value is past 2^53 (a double would do
 * below) and fits 64 bits, stored in *v as the two's complement
 * lua_Integer 5.3+ would hold. 0 when i is not one. */
static inline int lmc_u64_string(lua_State *L, int i, lua_Integer *v)
{
    size_t len, k;
    const char *s;
    uint64_t n = 0;

    if (lua_type(L, i) != LUA_TSTRING)
        return 0;
    s = lua_tolstring(L, i, &len);
    if (len == 0 || len > 20)
        return 0;
    for (k = 0; k < len; k++) {
        unsigned d = (unsigned)(unsigned char)s[k] - '0';
        if (d > 9 || n > (UINT64_MAX - d) / 10)
            return 0;
        n = n * 10 + d;
    }
    if (n <= LMC_EXACT_U64)
        return 0;
    *v = (lua_Integer)n;
    return 1;
}
#else
#define lmc_pushint(L, v) lua_pushinteger((L), (lua_Integer)(v))
#define lmc_toint(L, i) ((long long)lua_tointeger((L), (i)))
/* integers are 64 bits: above 2^63 - 1 they read negative, as in C */
#define lmc_pushu64(L, v) lua_pushinteger((L), (lua_Integer)(v))
#endif

#endif
