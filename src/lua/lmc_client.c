/*
 * lmc_client: the Lua face of mc_client. Argument checks, the per-operation
 * meaning of the server's status codes, msgpack values, the userdata.
 *
 * Conventions (DESIGN.md): a wrong argument type raises, naming the
 * argument; every runtime failure returns nil, ERR_*, detail. Arguments are
 * checked before anything is taken, so a raised error never strands a
 * connection; what can still raise later (out of memory while results are
 * pushed) leaves its connection held until __gc (mc_client_free).
 *
 * One way a method runs: (1) prepare: arguments, placement (a custom
 * selector is Lua), encoding; (2) I/O in C: no Lua runs, nothing raises;
 * (3) results pushed from buffers the call owns (its request's connection,
 * held until the results are pushed, or its scratch). Lua code that runs
 * in (1) or (3) (a selector, a __gc finalizer started by an allocation)
 * may call the client: that is just another call, with a connection and
 * scratch of its own.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "lmc_client.h"
#include "lmc_codec.h"
#include "lmc_compat.h"
#include "lmc_internal.h"
#include "lmc_value.h"
#include "mc_client.h"
#include "mc_error.h"
#include "mc_item.h"
#include "mc_key.h"

/* ---- helpers ---- */

/* The detail is copied before anything is pushed: it may point into a
 * buffer that a call made from a finalizer (run by the push) rewrites. */
int fail(lua_State *L, const char *err, const char *detail)
{
    char d[512];
    if (detail)
        snprintf(d, sizeof(d), "%s", detail);
    lua_pushnil(L);
    lua_pushstring(L, err);
    if (detail) {
        lua_pushstring(L, d);
        return 3;
    }
    return 2;
}

/* The error a non-OK status means for this kind of operation. */
const char *status_name(enum mc_op_kind k, uint16_t st)
{
    return mc_err_str(mc_status_err(k, st));
}

int status_fail(lua_State *L, enum mc_op_kind k, const mc_resp *r,
                       const char *server)
{
    char detail[300];
    snprintf(detail, sizeof(detail), "%s: %s%s%.*s", server,
             mc_status_str(r->status), r->vallen ? ": " : "",
             (int)(r->vallen > 120 ? 120 : r->vallen), r->value);
    return fail(L, status_name(k, r->status), detail);
}

/* Calls the user's callback for each queued server event. Runs after the
 * operation finished, so the callback may use the client; its errors are
 * swallowed (they must not break the client). Each event leaves the queue
 * before its callback runs, so a callback that uses the client (and so
 * reports events itself) never sees an event twice. */
void report_events(lua_State *L, lmc_client *u)
{
    mc_event e;
    while (u->c && mc_client_take_event(u->c, &e)) {
        if (u->cb_ref == LUA_NOREF || u->cb_ref == LUA_REFNIL)
            continue;
        lua_rawgeti(L, LUA_REGISTRYINDEX, u->cb_ref);
        lua_pushstring(L, e.server);
        lua_pushstring(L, e.reason);
        lua_pushstring(L, e.up ? "up" : "down");
        if (lua_pcall(L, 3, 0, 0) != 0)
            lua_pop(L, 1);
    }
}





/* ---- arguments ---- */


/* gomemcache's rule: 1..250 bytes, none of them a space, a control
 * character or DEL (bytes >= 0x80 are fine). */

lua_Integer opt_int_field(lua_State *L, int t, const char *name,
                                 lua_Integer def)
{
    lua_Integer v = def;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) {
        if (!lua_isinteger(L, -1))
            luaL_error(L, "field '%s' must be an integer", name);
        v = (lua_Integer)lmc_toint(L, -1);
    }
    lua_pop(L, 1);
    return v;
}

uint32_t check_exptime(lua_State *L, lua_Integer v, const char *what)
{
    if (v < 0 || v > (lua_Integer)0xffffffffLL)
        luaL_error(L, "bad %s: must be 0..4294967295 seconds", what);
    return (uint32_t)v;
}

lua_Integer check_integer(lua_State *L, int i, const char *name)
{
#if LUA_VERSION_NUM < 503
    lua_Integer big;
    if (lmc_u64_string(L, i, &big)) /* a cas or counter past 2^53 */
        return big;
#endif
    if (!lua_isinteger(L, i))
        luaL_error(L, "bad argument #%d (%s): integer expected, got %s", i - 1,
                   name, luaL_typename(L, i));
    return (lua_Integer)lmc_toint(L, i);
}

lua_Integer opt_integer(lua_State *L, int i, const char *name,
                               lua_Integer def)
{
    if (lua_isnoneornil(L, i))
        return def;
    return check_integer(L, i, name);
}

/* Positional form: key at 2, then value (if has_value) at 3, then the
 * integers named in `order`; or one table at 2 with named fields. */
enum { A_EXP = 'e', A_CAS = 'c', A_FLAGS = 'f', A_DELTA = 'd', A_INIT = 'i' };

static const char *field_name(char o)
{
    switch (o) {
    case A_EXP: return "expiration";
    case A_CAS: return "cas";
    case A_FLAGS: return "flags";
    case A_DELTA: return "delta";
    default: return "initial";
    }
}

/* The one-table form (mc:set{key=, value=, expiration=, cas=, flags=}) is
 * turned into the positional one, so both share every check below. */
static void table_to_positional(lua_State *L, int has_value, const char *order)
{
    const char *o;
    lua_settop(L, 2);
    lua_getfield(L, 2, "key");
    if (has_value)
        lua_getfield(L, 2, "value");
    for (o = order; *o; o++) {
        lua_getfield(L, 2, field_name(*o));
        if (*o == A_EXP && lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_getfield(L, 2, "exptime");
        }
    }
    lua_remove(L, 2);
}

void get_args(lua_State *L, args *a, int has_value, const char *order)
{
    int i = 3, top, t;
    const char *o;
    memset(a, 0, sizeof(*a));
    top = lua_gettop(L);
    t = lua_type(L, 2);
    if (t == LUA_TSTRING && top == 2 && !has_value) {
        a->key = lua_tolstring(L, 2, &a->keylen); /* get(key): the usual */
        return;
    }
    if (t == LUA_TTABLE) {
        table_to_positional(L, has_value, order);
        t = lua_type(L, 2);
    }
    if (t != LUA_TSTRING)
        luaL_error(L, "bad argument #1 (key): string expected, got %s",
                   luaL_typename(L, 2));
    a->key = lua_tolstring(L, 2, &a->keylen);
    if (has_value) {
        a->value = 3;
        i = 4;
    }
    top = lua_gettop(L);
    for (o = order; *o; o++, i++) {
        lua_Integer v;
        if (i > top && *o != A_DELTA)
            continue; /* absent: the zero defaults stand */
        switch (*o) {
        case A_EXP:
            a->exptime = check_exptime(L, opt_integer(L, i, "expiration", 0),
                                       "expiration");
            break;
        case A_CAS:
            a->cas = (uint64_t)opt_integer(L, i, "cas", 0);
            break;
        case A_FLAGS:
            if (!lua_isnoneornil(L, i)) {
                v = check_integer(L, i, "flags");
                if (v < 0 || v > (lua_Integer)0xffffffffLL)
                    luaL_error(L, "bad flags: must be 0..4294967295");
                a->flags = (uint32_t)v;
                a->has_flags = 1;
            } else {
                a->has_flags = 0;
            }
            break;
        case A_DELTA:
            v = check_integer(L, i, "delta");
            if (v < 0)
                luaL_error(L, "bad delta: must not be negative");
            a->delta = (uint64_t)v;
            break;
        case A_INIT:
            if (!lua_isnoneornil(L, i)) {
                v = check_integer(L, i, "initial");
                if (v < 0)
                    luaL_error(L, "bad initial value: must not be negative");
                a->initial = (uint64_t)v;
                a->has_initial = 1;
            }
            break;
        }
    }
}

/* ---- picking a server ---- */

/* sel:pick_server(key), looked up and called under the caller's pcall */
static int call_pick_server(lua_State *L)
{
    lua_settop(L, 2);
    lua_getfield(L, 1, "pick_server");
    lua_insert(L, 1); /* method, self, key */
    lua_call(L, 2, 2);
    return 2;
}

/* Returns the server index, or -1 after storing the error name and detail
 * (detail points into the client's errmsg or a static string). */
int pick(lua_State *L, lmc_client *u, const char *key, size_t len,
                const char **ename, int claim)
{
    int err = MC_OK, srv;
    char msg[200];
    if (u->sel_mode == SEL_BUILTIN) {
        srv = mc_client_pick(u->c, key, len, &err);
        if (srv < 0)
            *ename = mc_err_str(err);
        return srv;
    }
    if (u->sel_mode == SEL_OBJECT)
        lua_pushcfunction(L, call_pick_server); /* the lookup may raise too */
    lua_rawgeti(L, LUA_REGISTRYINDEX, u->sel_ref);
    lua_pushlstring(L, key, len);
    err = lua_pcall(L, u->sel_mode == SEL_OBJECT ? 2 : 1, 2, 0);
    if (err != 0 || lua_type(L, -2) != LUA_TSTRING) {
        const char *why = err ? lua_tostring(L, -1) : lua_tostring(L, -1);
        snprintf(msg, sizeof(msg), "selector gave no server for key '%.*s': "
                 "%.100s", (int)(len > 60 ? 60 : len), key,
                 why ? why : "no address");
        mc_client_set_errmsg(u->c, msg);
        lua_pop(L, err ? 1 : 2);
        *ename = ERR(NO_SERVERS);
        return -1;
    }
    {
        size_t alen;
        const char *addr = lua_tolstring(L, -2, &alen);
        if (strlen(addr) != alen) {
            snprintf(msg, sizeof(msg), "selector gave an address holding a "
                     "NUL byte for key '%.*s'", (int)(len > 60 ? 60 : len),
                     key);
            mc_client_set_errmsg(u->c, msg);
            lua_pop(L, 2);
            *ename = ERR(BAD_SERVER);
            return -1;
        }
        srv = mc_client_intern_server(u->c, addr);
    }
    lua_pop(L, 2);
    if (srv < 0) {
        *ename = ERR(BAD_SERVER);
        return -1;
    }
    if (claim && !mc_client_usable(u->c, srv, &err)) {
        *ename = mc_err_str(err);
        return -1;
    }
    return srv;
}

/* ---- scratch ---- */

#define SCRATCH_MT "memcached.scratch"

int scratch_grow(lmc_scratch *sc, size_t n)
{
    struct bkey *k;
    int *s;
    if (sc->cap >= n)
        return 0;
    if (n < 2 * sc->cap)
        n = 2 * sc->cap;
    k = realloc(sc->keys, n * sizeof(*k));
    if (!k)
        return -1;
    sc->keys = k;
    s = realloc(sc->srv, n * sizeof(*s));
    if (!s)
        return -1;
    sc->srv = s;
    sc->cap = n;
    return 0;
}

static void scratch_free(lmc_scratch *sc)
{
    free(sc->keys);
    free(sc->srv);
    mc_buf_free(&sc->bytes);
    sc->keys = NULL;
    sc->srv = NULL;
    sc->cap = 0;
}

static int scratch_gc(lua_State *L)
{
    scratch_free(lua_touserdata(L, 1));
    return 0;
}

/* Pushes one value (nil, or the box when the client's scratch is lent)
 * and returns the scratch the call may use until scratch_return. A call
 * that raises while holding the client's (out of memory) leaves it lent:
 * later calls then use boxes, correct and a little slower. */
lmc_scratch *scratch_lend(lua_State *L, lmc_client *u)
{
    lmc_scratch *b;
    if (!u->sc.lent) {
        u->sc.lent = 1;
        lua_pushnil(L);
        return &u->sc;
    }
    b = lua_newuserdata(L, sizeof(*b));
    memset(b, 0, sizeof(*b));
    luaL_setmetatable(L, SCRATCH_MT);
    b->lent = 1;
    return b;
}

/* Ends the loan: the client's scratch keeps at most 1 MiB of bytes. */
void scratch_return(lmc_client *u, lmc_scratch *sc)
{
    mc_buf_clear(&sc->bytes, 1 << 20);
    if (sc == &u->sc)
        sc->lent = 0;
}

/* ---- life cycle ---- */

/* Frees everything; only __gc (and a failed new) call it, when no call of
 * this client can still be running. */
void destroy(lua_State *L, lmc_client *u)
{
    u->closed = 1;
    if (u->c) {
        mc_client_free(u->c);
        u->c = NULL;
    }
    if (u->vctx) {
        lmc_vctx_free(u->vctx);
        u->vctx = NULL;
    }
    scratch_free(&u->sc);
    luaL_unref(L, LUA_REGISTRYINDEX, u->cb_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, u->sel_ref);
    u->cb_ref = u->sel_ref = LUA_NOREF;
}

/* Argument 1 as a client: a userdata whose metatable is the client's
 * (upvalue 1 of every method; compared by address, which costs a third
 * of lua_rawequal), else luaL_checkudata's error. */
static lmc_client *check_client(lua_State *L)
{
    lmc_client *u = lua_touserdata(L, 1);
    if (u && lua_getmetatable(L, 1)) {
        const void *mt = lua_topointer(L, -1);
        lua_settop(L, -2);
        if (mt == lua_topointer(L, lua_upvalueindex(1)))
            return u;
    }
    return luaL_checkudata(L, 1, CLIENT_MT);
}

/* close/exit/__close: idle connections close now, those a running call
 * holds (close from a selector or a finalizer) when that call ends; the
 * client's memory goes with the userdata. */
static int m_close(lua_State *L)
{
    lmc_client *u = check_client(L);
    if (!u->closed && u->c)
        mc_client_close(u->c);
    u->closed = 1;
    luaL_unref(L, LUA_REGISTRYINDEX, u->cb_ref);
    u->cb_ref = LUA_NOREF;
    lua_pushboolean(L, 1);
    return 1;
}

/* Every method's entry: checks self, runs the method, then reports the
 * server events its call queued, above the results (the error callback
 * may call the client). No lua_pcall: a method that raises holds nothing
 * the next call needs. One entry per method (ENTRY), so that the method
 * is a direct call. */
static inline int run(lua_State *L, lua_CFunction f)
{
    lmc_client *u = check_client(L);
    int n = f(L);
    if (u->c && mc_client_has_events(u->c))
        report_events(L, u);
    return n;
}

static int m_gc(lua_State *L)
{
    lmc_client *u = check_client(L);
    destroy(L, u);
    return 0;
}

static int m_tostring(lua_State *L)
{
    lmc_client *u = check_client(L);
    if (u->closed || !u->c)
        lua_pushfstring(L, "memcached.client (closed): %p", (void *)u);
    else
        lua_pushfstring(L, "memcached.client (%d servers): %p",
                        (int)mc_client_nservers(u->c), (void *)u);
    return 1;
}

static int l_test_idle_buffer_bytes(lua_State *L)
{
    lmc_client *u = check_client(L);
    lua_pushinteger(L, u->c ? (lua_Integer)mc_client_idle_bytes(u->c) : 0);
    return 1;
}

#define ENTRY(m) \
    static int e_##m(lua_State *L) { return run(L, m); }
ENTRY(m_get)
ENTRY(m_get_multi)
ENTRY(m_set_multi)
ENTRY(m_delete_multi)
ENTRY(m_set)
ENTRY(m_add)
ENTRY(m_replace)
ENTRY(m_set_raw)
ENTRY(m_add_raw)
ENTRY(m_replace_raw)
ENTRY(m_append)
ENTRY(m_prepend)
ENTRY(m_cas)
ENTRY(m_delete)
ENTRY(m_delete_lock)
ENTRY(m_increment)
ENTRY(m_decrement)
ENTRY(m_touch_atomic)
ENTRY(m_touch)
ENTRY(m_get_and_touch)
ENTRY(m_flush)
ENTRY(m_flush_all)
ENTRY(m_ping)
ENTRY(m_stats)
ENTRY(m_version)
ENTRY(m_add_server)
ENTRY(m_set_servers)
ENTRY(m_pick_server)
ENTRY(m_servers)
ENTRY(m_set_callback)

static const luaL_Reg methods[] = {
    {"get", e_m_get},
    {"get_multi", e_m_get_multi},
    {"set_multi", e_m_set_multi},
    {"delete_multi", e_m_delete_multi},
    {"set", e_m_set},
    {"add", e_m_add},
    {"replace", e_m_replace},
    {"set_raw_data", e_m_set_raw},
    {"add_raw_data", e_m_add_raw},
    {"replace_raw_data", e_m_replace_raw},
    {"append", e_m_append},
    {"prepend", e_m_prepend},
    {"compare_and_swap", e_m_cas},
    {"delete", e_m_delete},
    {"delete_lock", e_m_delete_lock},
    {"increment", e_m_increment},
    {"decrement", e_m_decrement},
    {"touch_atomic_value", e_m_touch_atomic},
    {"touch", e_m_touch},
    {"get_and_touch", e_m_get_and_touch},
    {"flush", e_m_flush},
    {"flush_all", e_m_flush_all},
    {"delete_all", e_m_flush_all},
    {"ping", e_m_ping},
    {"stats", e_m_stats},
    {"version", e_m_version},
    {"add_server", e_m_add_server},
    {"set_servers", e_m_set_servers},
    {"pick_server", e_m_pick_server},
    {"servers", e_m_servers},
    {"set_server_error_callback", e_m_set_callback},
    {NULL, NULL}};

static const luaL_Reg plain[] = {
    {"close", m_close},
    {"exit", m_close},
    {NULL, NULL}};

static const luaL_Reg meta[] = {
    /* a to-be-closed client closes like close() */
    {"__close", m_close},
    {"__gc", m_gc},
    {"__tostring", m_tostring},
    {NULL, NULL}};

LMC_EXPORT int luaopen_memcached(lua_State *L)
{
    int i, mt;
    if (luaL_newmetatable(L, SCRATCH_MT)) {
        lua_pushcfunction(L, scratch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_pop(L, 1);
    if (luaL_newmetatable(L, CLIENT_MT)) {
        const luaL_Reg *r;
        mt = lua_gettop(L);
        luaL_newlibtable(L, methods);
        for (r = methods; r->name; r++) {
            /* upvalue: the metatable (check_client) */
            lua_pushvalue(L, mt);
            lua_pushcclosure(L, r->func, 1);
            lua_setfield(L, -2, r->name);
        }
        for (r = plain; r->name; r++) {
            lua_pushvalue(L, mt);
            lua_pushcclosure(L, r->func, 1);
            lua_setfield(L, -2, r->name);
        }
        lua_setfield(L, mt, "__index");
        for (r = meta; r->name; r++) {
            lua_pushvalue(L, mt);
            lua_pushcclosure(L, r->func, 1);
            lua_setfield(L, mt, r->name);
        }
        /* l_test_idle_buffer_bytes checks its argument the same way */
        lua_pushvalue(L, mt);
        lua_pushcclosure(L, l_test_idle_buffer_bytes, 1);
        lua_setfield(L, LUA_REGISTRYINDEX, "memcached.idle_bytes");
    }
    lua_pop(L, 1);

    lua_newtable(L);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    lua_pushcfunction(L, l_new_from_selector);
    lua_setfield(L, -2, "new_from_selector");
    lua_getfield(L, LUA_REGISTRYINDEX, "memcached.idle_bytes");
    lua_setfield(L, -2, "_test_idle_buffer_bytes");
    for (i = 1; i < MC_ERR_COUNT; i++) {
        lua_pushfstring(L, "ERR_%s", mc_err_const((int)i));
        lua_pushstring(L, mc_err_str((int)i));
        lua_rawset(L, -3);
    }
    lua_pushnumber(L, 0.1);
    lua_setfield(L, -2, "DEFAULT_TIMEOUT");
    lua_pushliteral(L, LMC_VERSION);
    lua_setfield(L, -2, "_VERSION");
    lmc_value_open(L);
    lmc_codec_open(L);
    return 1;
}
