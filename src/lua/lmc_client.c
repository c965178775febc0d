/*
 * lmc_client: the Lua face of mc_client. Argument checks, the per-operation
 * meaning of the server's status codes, msgpack values, the userdata.
 *
 * Conventions (DESIGN.md): a wrong argument type raises, naming the
 * argument; every runtime failure returns nil, ERR_*, detail. Arguments are
 * checked and values encoded before a connection is taken, so a raised
 * error never strands a connection; anything that can still raise later
 * (out of memory) is cleaned up by mc_client_abort at the next call or at
 * __gc.
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

/* Every client carries a cookie, its own address mixed with a secret
 * drawn once per process; a full userdata of the client's size whose first
 * word is that cookie is a client. Checked in that order (the size first,
 * so a smaller or light userdata is never read), it costs two API calls
 * instead of luaL_checkudata's metatable fetch and registry lookup (~160
 * instructions of a ~2,200-instruction get). Anything else goes through
 * luaL_checkudata, which raises the usual error. */
uintptr_t client_secret;

static void init_secret(lua_State *L)
{
    uintptr_t x = (uintptr_t)&client_secret ^ (uintptr_t)L ^
                  ((uintptr_t)time(NULL) << 20) ^ (uintptr_t)clock();
    if (client_secret)
        return;
    x ^= x >> 29;
    x *= (uintptr_t)0x9e3779b97f4a7c15ull;
    client_secret = x ? x : 1;
}


int fail(lua_State *L, const char *err, const char *detail)
{
    lua_pushnil(L);
    lua_pushstring(L, err);
    if (detail) {
        lua_pushstring(L, detail);
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
    while (u->c && u->c->nevents) {
        mc_event e = u->c->events[0];
        u->c->nevents--;
        memmove(u->c->events, u->c->events + 1,
                u->c->nevents * sizeof(mc_event));
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
    t = lua_type(L, 2);
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
        snprintf(u->c->errmsg, sizeof(u->c->errmsg),
                 "selector gave no server for key '%.*s': %s",
                 (int)(len > 60 ? 60 : len), key, why ? why : "no address");
        lua_pop(L, err ? 1 : 2);
        *ename = ERR(NO_SERVERS);
        return -1;
    }
    {
        size_t alen;
        const char *addr = lua_tolstring(L, -2, &alen);
        if (strlen(addr) != alen) {
            snprintf(u->c->errmsg, sizeof(u->c->errmsg),
                     "selector gave an address holding a NUL byte for key "
                     "'%.*s'", (int)(len > 60 ? 60 : len), key);
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

/* ---- life cycle ---- */

/* One idempotent destroy for close, exit, __close and __gc. */
void destroy(lua_State *L, lmc_client *u)
{
    if (u->c) {
        mc_client_free(u->c);
        u->c = NULL;
    }
    if (u->vctx) {
        lmc_vctx_free(u->vctx);
        u->vctx = NULL;
    }
    mc_buf_free(&u->val);
    free(u->keys);
    free(u->srv);
    u->keys = NULL;
    u->srv = NULL;
    u->capkeys = 0;
    luaL_unref(L, LUA_REGISTRYINDEX, u->cb_ref);
    luaL_unref(L, LUA_REGISTRYINDEX, u->sel_ref);
    u->cb_ref = u->sel_ref = LUA_NOREF;
}

/* close/exit. Called from inside one of the client's own calls (a
 * selector, a finalizer), it waits for that call to end. */
static int m_close(lua_State *L)
{
    lmc_client *u = check_client(L);
    if (u->busy)
        u->close_pending = 1;
    else
        destroy(L, u);
    lua_pushboolean(L, 1);
    return 1;
}

/* Every method runs through here. Lua code can run in the middle of a
 * method: a custom selector, or a __gc finalizer started by any allocation
 * the method makes. If that code calls the client again while the outer
 * call holds a connection, a batch or the scratch buffers, the inner call
 * would free or overwrite them under the outer one; so it fails with
 * ERR_IN_USE instead. busy is set by CLOSED_CHECK, once the arguments are
 * checked, and cleared here by the call that set it, also when the method
 * raised (it runs under lua_pcall and the error is raised again after):
 * an error can never leave the client locked. Server events are reported
 * after that, so the error callback may use the client. */
int guarded(lua_State *L)
{
    lmc_client *u = check_client(L);
    unsigned token;
    int status;

    if (u->busy)
        return fail(L, ERR(IN_USE),
                    "the client was called from inside one of its own calls "
                    "(a selector or a __gc finalizer)");
    token = u->lock_token;
    lua_pushvalue(L, lua_upvalueindex(1)); /* the method */
    lua_insert(L, 1);
    status = lua_pcall(L, lua_gettop(L) - 1, LUA_MULTRET, 0);
    if (u->lock_token != token)
        u->busy = 0;
    if (u->close_pending && !u->busy) {
        u->close_pending = 0;
        destroy(L, u);
    }
    if (u->c && u->c->nevents)
        report_events(L, u); /* above the results; they stay in place */
    if (status != 0)
        return lua_error(L); /* the method's own error, unchanged */
    return lua_gettop(L);
}

static int m_gc(lua_State *L)
{
    lmc_client *u = check_client(L);
    destroy(L, u);
    u->cookie = 0; /* freed memory must not pass for a client (a
                      resurrected one is still found by its metatable) */
    return 0;
}

static int m_tostring(lua_State *L)
{
    lmc_client *u = check_client(L);
    if (!u->c)
        lua_pushfstring(L, "memcached.client (closed): %p", (void *)u);
    else
        lua_pushfstring(L, "memcached.client (%d servers): %p",
                        (int)u->c->nservers, (void *)u);
    return 1;
}

static int l_test_idle_buffer_bytes(lua_State *L)
{
    lmc_client *u = check_client(L);
    lua_pushinteger(L, u->c ? (lua_Integer)mc_client_idle_bytes(u->c) : 0);
    return 1;
}

static const luaL_Reg methods[] = {
    {"get", m_get},
    {"get_multi", m_get_multi},
    {"set_multi", m_set_multi},
    {"delete_multi", m_delete_multi},
    {"set", m_set},
    {"add", m_add},
    {"replace", m_replace},
    {"set_raw_data", m_set_raw},
    {"add_raw_data", m_add_raw},
    {"replace_raw_data", m_replace_raw},
    {"append", m_append},
    {"prepend", m_prepend},
    {"compare_and_swap", m_cas},
    {"delete", m_delete},
    {"delete_lock", m_delete_lock},
    {"increment", m_increment},
    {"decrement", m_decrement},
    {"touch_atomic_value", m_touch_atomic},
    {"touch", m_touch},
    {"get_and_touch", m_get_and_touch},
    {"flush", m_flush},
    {"flush_all", m_flush_all},
    {"delete_all", m_flush_all},
    {"ping", m_ping},
    {"stats", m_stats},
    {"version", m_version},
    {"add_server", m_add_server},
    {"set_servers", m_set_servers},
    {"pick_server", m_pick_server},
    {"servers", m_servers},
    {"set_server_error_callback", m_set_callback},
    {NULL, NULL}};

LMC_EXPORT int luaopen_memcached(lua_State *L)
{
    int i;
    init_secret(L);
    if (luaL_newmetatable(L, CLIENT_MT)) {
        const luaL_Reg *r;
        luaL_newlibtable(L, methods);
        for (r = methods; r->name; r++) {
            /* upvalue: the method itself, which guarded() calls */
            lua_pushcfunction(L, r->func);
            lua_pushcclosure(L, r->func == m_get ? f_get
                                : r->func == m_set ? f_set : guarded, 1);
            lua_setfield(L, -2, r->name);
        }
        lua_pushcfunction(L, m_close);
        lua_setfield(L, -2, "close");
        lua_pushcfunction(L, m_close);
        lua_setfield(L, -2, "exit");
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, m_gc);
        lua_setfield(L, -2, "__gc");
        /* a to-be-closed client closes like close(): deferred while one of
         * its calls runs (a <close> variable in a selector or finalizer) */
        lua_pushcfunction(L, m_close);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, m_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);

    lua_newtable(L);
    lua_pushcfunction(L, l_new);
    lua_setfield(L, -2, "new");
    lua_pushcfunction(L, l_new_from_selector);
    lua_setfield(L, -2, "new_from_selector");
    lua_pushcfunction(L, l_test_idle_buffer_bytes);
    lua_setfield(L, -2, "_test_idle_buffer_bytes");
    for (i = 1; i < MC_ERR_COUNT; i++) {
        lua_pushfstring(L, "ERR_%s", mc_err_const((int)i));
        lua_pushstring(L, mc_err_str((int)i));
        lua_rawset(L, -3);
    }
    lua_pushnumber(L, 0.1);
    lua_setfield(L, -2, "DEFAULT_TIMEOUT");
    lua_pushliteral(L, "0.1.0");
    lua_setfield(L, -2, "_VERSION");
    lmc_value_open(L);
    lmc_codec_open(L);
    return 1;
}
