/*
 * lmc_config: the server list (new, set_servers, add_server, servers,
 * pick_server, the callback) and the options of a new client.
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

/* ---- servers ---- */

/* A server list is read once, with raw access only: no __index runs, and
 * what Lua code may still run meanwhile (a finalizer started by an
 * allocation) can change the caller's tables without effect on what was
 * read. Entries are first copied into a private table (address, weight,
 * address, weight, ...), which also keeps the address strings alive; the
 * specs are built from that table alone. */

/* Is the table at index i one weighted entry ({addr, weight = n} or
 * {addr, n}) rather than a list of entries? */
static int is_weighted_entry(lua_State *L, int i)
{
    int r;
    i = lua_absindex(L, i);
    lua_pushliteral(L, "weight");
    lua_rawget(L, i);
    r = !lua_isnil(L, -1);
    lua_pop(L, 1);
    if (!r) {
        lua_rawgeti(L, i, 2);
        r = lua_type(L, -1) == LUA_TNUMBER;
        lua_pop(L, 1);
    }
    return r;
}

/* Copies the entry at index i (a string, or {addr, weight = n} /
 * {addr, n}) into the private table priv as entry number k (0-based).
 * Raises naming the entry when it is not one. */
static void copy_entry(lua_State *L, int i, int priv, size_t k)
{
    lua_Integer w = 1;
    i = lua_absindex(L, i);
    if (lua_type(L, i) == LUA_TSTRING) {
        lua_pushvalue(L, i);
    } else {
        if (lua_type(L, i) == LUA_TTABLE)
            lua_rawgeti(L, i, 1);
        else
            lua_pushnil(L);
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "bad server #%d: \"host:port\", a unix socket path "
                          "or {addr, weight = n} expected, got %s",
                       (int)k + 1, luaL_typename(L, i));
        lua_pushliteral(L, "weight");
        lua_rawget(L, i);
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_rawgeti(L, i, 2);
        }
        if (!lua_isnil(L, -1)) {
            w = lua_isinteger(L, -1) ? (lua_Integer)lmc_toint(L, -1) : 0;
            if (w < 1 || w > 65535)
                luaL_error(L, "server weight must be an integer 1..65535");
        }
        lua_pop(L, 1);
    }
    lmc_rawseti(L, priv, (lua_Integer)(2 * k + 1)); /* the address */
    lua_pushinteger(L, w);
    lmc_rawseti(L, priv, (lua_Integer)(2 * k + 2));
}

/* Collects the entries in arguments from..top: strings, weighted entries,
 * or arrays of those. Leaves the private table and the specs (a userdata,
 * so that a raised error frees them) on the stack. *nul is the 1-based
 * number of the first address holding a NUL byte (C would cut it there),
 * else 0. */
static mc_server_spec *collect_servers(lua_State *L, int from, size_t *n,
                                       size_t *nul)
{
    int top = lua_gettop(L), i, priv;
    size_t k = 0, j, alen;
    mc_server_spec *s;

    lua_newtable(L);
    priv = lua_gettop(L);
    for (i = from; i <= top; i++) {
        if (lua_type(L, i) == LUA_TTABLE && !is_weighted_entry(L, i)) {
            /* the length is read again on every step: a list that changes
             * meanwhile is read as it is then, never past its end */
            for (j = 1; j <= lua_rawlen(L, i); j++) {
                lmc_rawgeti(L, i, (lua_Integer)j);
                copy_entry(L, -1, priv, k++);
                lua_pop(L, 1);
            }
        } else {
            copy_entry(L, i, priv, k++);
        }
    }
    s = lua_newuserdata(L, (k + 1) * sizeof(*s));
    *nul = 0;
    for (j = 0; j < k; j++) {
        lmc_rawgeti(L, priv, (lua_Integer)(2 * j + 1));
        s[j].addr = lua_tolstring(L, -1, &alen); /* priv keeps it */
        if (strlen(s[j].addr) != alen && !*nul)
            *nul = j + 1;
        lmc_rawgeti(L, priv, (lua_Integer)(2 * j + 2));
        s[j].weight = (unsigned)lua_tointeger(L, -1);
        lua_pop(L, 2);
    }
    *n = k;
    return s;
}

static int nul_fail(lua_State *L, size_t i)
{
    char d[80];
    snprintf(d, sizeof(d), "server #%d: the address holds a NUL byte", (int)i);
    return fail(L, ERR(BAD_SERVER), d);
}

int m_set_servers(lua_State *L)
{
    lmc_client *u = self(L);
    size_t n;
    size_t nul;
    mc_server_spec *s = collect_servers(L, 2, &n, &nul);
    CLOSED_CHECK(L, u);
    if (nul)
        return nul_fail(L, nul);
    if (mc_client_set_servers(u->c, s, n) != 0)
        return fail(L, ERR(BAD_SERVER), mc_client_errmsg(u->c));
    lua_pushboolean(L, 1);
    return 1;
}

int m_add_server(lua_State *L)
{
    lmc_client *u = self(L);
    mc_server_spec s;
    size_t alen;
    lua_Integer maxc = opt_integer(L, 3, "max_conns", 0);
    if (lua_type(L, 2) != LUA_TSTRING && lua_type(L, 2) != LUA_TTABLE)
        luaL_error(L, "bad argument #1 (addr): \"host:port\", a unix socket "
                      "path or {addr, weight = n} expected, got %s",
                   luaL_typename(L, 2));
    lua_settop(L, 3);
    lua_newtable(L); /* 4: keeps the address */
    copy_entry(L, 2, 4, 0);
    lua_rawgeti(L, 4, 1);
    s.addr = lua_tolstring(L, -1, &alen);
    if (strlen(s.addr) != alen)
        return nul_fail(L, 1);
    lua_rawgeti(L, 4, 2);
    s.weight = (unsigned)lua_tointeger(L, -1);
    if (maxc < 0 || maxc > 1000000)
        luaL_error(L, "bad argument #2 (max_conns): must be 0..1000000");
    CLOSED_CHECK(L, u);
    if (mc_client_add_server(u->c, &s) != 0)
        return fail(L, ERR(BAD_SERVER), mc_client_errmsg(u->c));
    if (maxc > 0) {
        int i = mc_client_intern_server(u->c, s.addr);
        if (i >= 0)
            mc_client_set_max_conns(u->c, (size_t)i, (unsigned)maxc);
    }
    lua_pushboolean(L, 1);
    return 1;
}

int m_pick_server(lua_State *L)
{
    lmc_client *u = self(L);
    size_t len;
    const char *key;
    int srv;
    luaL_checktype(L, 2, LUA_TSTRING);
    key = lua_tolstring(L, 2, &len);
    CLOSED_CHECK(L, u);
    if (!mc_key_ok(key, len))
        return fail(L, ERR(MALFORMED_KEY), NULL);
    if (u->sel_mode == SEL_BUILTIN) {
        srv = mc_client_pick_static(u->c, key, len);
        if (srv < 0)
            return fail(L, ERR(NO_SERVERS), "no servers configured");
    } else {
        const char *ename = NULL;
        /* where the key goes; a dead server's probe stays unclaimed */
        srv = pick(L, u, key, len, &ename, 0);
        if (srv < 0)
            return fail(L, ename, mc_client_errmsg(u->c));
    }
    lua_pushstring(L, mc_client_server_name(u->c, (size_t)srv));
    return 1;
}

int m_servers(lua_State *L)
{
    lmc_client *u = self(L);
    size_t i;
    CLOSED_CHECK(L, u);
    lua_createtable(L, (int)mc_client_nservers(u->c), 0);
    /* the count is read again each turn: the pushes may run a finalizer
     * that changes the list */
    for (i = 0; i < mc_client_nservers(u->c); i++) {
        mc_server_info s;
        char name[256], last[160];
        mc_client_server_info(u->c, i, &s);
        snprintf(name, sizeof(name), "%s", s.name);
        snprintf(last, sizeof(last), "%s", s.last_error);
        lua_createtable(L, 0, 4);
        lua_pushstring(L, name);
        lua_setfield(L, -2, "addr");
        lua_pushboolean(L, s.alive);
        lua_setfield(L, -2, "alive");
        lmc_pushint(L, s.failures);
        lua_setfield(L, -2, "failures");
        lmc_pushint(L, s.connections);
        lua_setfield(L, -2, "connections");
        if (last[0]) {
            lua_pushstring(L, last);
            lua_setfield(L, -2, "last_error");
        }
        if (s.tls) {
            lua_pushboolean(L, s.tls_resumed);
            lua_setfield(L, -2, "tls_resumed");
        }
        lmc_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

int m_set_callback(lua_State *L)
{
    lmc_client *u = self(L);
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TFUNCTION);
    CLOSED_CHECK(L, u);
    luaL_unref(L, LUA_REGISTRYINDEX, u->cb_ref);
    lua_settop(L, 2);
    u->cb_ref = lua_isnil(L, 2) ? LUA_NOREF : luaL_ref(L, LUA_REGISTRYINDEX);
    lua_pushboolean(L, 1);
    return 1;
}

static double opt_number_field(lua_State *L, int t, const char *name,
                               double def, double lo, double hi)
{
    double v = def;
    lua_getfield(L, t, name);
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TNUMBER)
            luaL_error(L, "option '%s' must be a number, got %s", name,
                       luaL_typename(L, -1));
        v = lua_tonumber(L, -1);
        if (!(v >= lo && v <= hi))
            luaL_error(L, "option '%s' must be between %f and %f", name, lo,
                       hi);
    }
    lua_pop(L, 1);
    return v;
}

static const char *const known_opts[] = {
    "servers", "timeout", "connect_timeout", "io_timeout", "max_conns",
    "max_idle", "msgpack_flag", "selector", "failure_limit", "retry_timeout",
    "eject", "max_value_size", "probe_timeout", "tls", "username",
    "password", NULL};

/* Reads the options table at index t into o; the selector option, read
 * once by the caller, is at selidx and, if custom, left for the caller.
 * Each option is read once (an __index is honoured but asked only once).
 * Unknown options raise, so a typo is not silent. */
static void read_opts(lua_State *L, int t, mc_client_opts *o, uint32_t *mpf,
                      int selidx)
{
    double timeout;
    lua_Integer v;
    const char *sel;

    lua_pushnil(L);
    while (lua_next(L, t)) {
        int k, ok = 0;
        if (lua_type(L, -2) == LUA_TSTRING)
            for (k = 0; known_opts[k]; k++)
                if (strcmp(known_opts[k], lua_tostring(L, -2)) == 0)
                    ok = 1;
        if (!ok && lua_type(L, -2) != LUA_TNUMBER)
            luaL_error(L, "unknown option '%s'",
                       lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2)
                                                      : "?");
        lua_pop(L, 1);
    }
    timeout = opt_number_field(L, t, "timeout", 0.1, 0.001, 3600);
    o->pool.connect_timeout =
        opt_number_field(L, t, "connect_timeout", timeout, 0.001, 3600);
    o->io_timeout = opt_number_field(L, t, "io_timeout", timeout, 0.001, 3600);
    v = opt_int_field(L, t, "max_conns", 0);
    if (v < 0 || v > 1000000)
        luaL_error(L, "option 'max_conns' must be 0 (no limit) or more");
    o->pool.max_conns = (unsigned)v;
    v = opt_int_field(L, t, "max_idle", 2);
    if (v < 0 || v > 1000000)
        luaL_error(L, "option 'max_idle' must not be negative");
    o->pool.max_idle = (unsigned)v;
    v = opt_int_field(L, t, "msgpack_flag", 1);
    if (v < 0 || v > (lua_Integer)0xffffffffLL)
        luaL_error(L, "option 'msgpack_flag' must be 0..4294967295");
    *mpf = (uint32_t)v;
    v = opt_int_field(L, t, "failure_limit", 2);
    if (v < 1 || v > 1000000)
        luaL_error(L, "option 'failure_limit' must be 1 or more");
    o->pool.health.failure_limit = (unsigned)v;
    o->pool.health.retry_timeout =
        opt_number_field(L, t, "retry_timeout", 1.0, 0.0, 86400);
    o->pool.probe_timeout = /* at most connect_timeout (mc_client_new) */
        opt_number_field(L, t, "probe_timeout", 0.02, 0.001, 3600);
    v = opt_int_field(L, t, "max_value_size", MC_DEFAULT_MAX_BODY);
    if (v < 1024 || v > (lua_Integer)0x7fffffff)
        luaL_error(L, "option 'max_value_size' must be 1024..2147483647");
    o->pool.max_body = (size_t)v + 512; /* room for key and extras */
    lua_getfield(L, t, "eject");
    if (!lua_isnil(L, -1))
        o->eject = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_pushvalue(L, selidx); /* read once, by the caller */
    if (lua_type(L, -1) == LUA_TSTRING) {
        sel = lua_tostring(L, -1);
        if (strcmp(sel, "ketama") == 0)
            o->selector = MC_SEL_KETAMA;
        else if (strcmp(sel, "modulo") == 0)
            o->selector = MC_SEL_MODULO;
        else if (strcmp(sel, "gomemcached") == 0)
            o->selector = MC_SEL_GOMEMCACHED;
        else
            luaL_error(L, "option 'selector': unknown selector '%s' (ketama, "
                          "modulo, gomemcached, a function or an object with "
                          "pick_server)", sel);
    } else if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION &&
               lua_type(L, -1) != LUA_TTABLE &&
               lua_type(L, -1) != LUA_TUSERDATA) {
        luaL_error(L, "option 'selector' must be a name, a function or an "
                      "object with pick_server");
    }
    lua_pop(L, 1);
}

/* ---- TLS and SASL ---- */

static const char *const tls_fields[] = {
    "ca_file", "ca_path", "cert_file", "key_file", "server_name", "ciphers",
    "verify", "min_version", NULL};

/* A string option (NULL when absent), left on the stack so that the
 * pointer outlives the caller's table: a finalizer run meanwhile may
 * change it. */
static const char *keep_string(lua_State *L, int t, const char *name,
                               const char *what, size_t *len)
{
    size_t n;
    const char *p;
    lua_getfield(L, t, name);
    if (lua_isnil(L, -1))
        return NULL;
    if (lua_type(L, -1) != LUA_TSTRING)
        luaL_error(L, "option '%s%s' must be a string, got %s", what, name,
                   luaL_typename(L, -1));
    p = lua_tolstring(L, -1, &n);
    if (len)
        *len = n;
    else if (strlen(p) != n)
        luaL_error(L, "option '%s%s' holds a NUL byte", what, name);
    return p;
}

/* lmc_read_secure (lmc_secure.h): the blocking client's and async
 * mode's (memcached.core.secure) one reading of these options. */
int lmc_read_secure(lua_State *L, int t, mc_tls_opts *to,
                    struct lmc_cred *cred)
{
    int tls = 0, k;
    luaL_checkstack(L, 16, "options");
    memset(to, 0, sizeof(*to));
    to->verify = 1;
    to->min_version = 12;
    cred->user = keep_string(L, t, "username", "", &cred->ulen);
    cred->pass = keep_string(L, t, "password", "", &cred->plen);
    if (!cred->user != !cred->pass)
        luaL_error(L, "options 'username' and 'password' go together");
    lua_getfield(L, t, "tls");
    if (lua_type(L, -1) == LUA_TBOOLEAN) {
        tls = lua_toboolean(L, -1);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        int tt = lua_gettop(L);
        tls = 1;
        lua_pushnil(L);
        while (lua_next(L, tt)) {
            int ok = 0;
            if (lua_type(L, -2) == LUA_TSTRING)
                for (k = 0; tls_fields[k]; k++)
                    if (strcmp(tls_fields[k], lua_tostring(L, -2)) == 0)
                        ok = 1;
            if (!ok)
                luaL_error(L, "unknown option 'tls.%s'",
                           lua_type(L, -2) == LUA_TSTRING
                               ? lua_tostring(L, -2) : "?");
            lua_pop(L, 1);
        }
        to->ca_file = keep_string(L, tt, "ca_file", "tls.", NULL);
        to->ca_path = keep_string(L, tt, "ca_path", "tls.", NULL);
        to->cert_file = keep_string(L, tt, "cert_file", "tls.", NULL);
        to->key_file = keep_string(L, tt, "key_file", "tls.", NULL);
        to->server_name = keep_string(L, tt, "server_name", "tls.", NULL);
        to->ciphers = keep_string(L, tt, "ciphers", "tls.", NULL);
        lua_getfield(L, tt, "verify");
        if (!lua_isnil(L, -1)) {
            if (lua_type(L, -1) != LUA_TBOOLEAN)
                luaL_error(L, "option 'tls.verify' must be a boolean");
            to->verify = lua_toboolean(L, -1);
        }
        lua_pop(L, 1);
        lua_getfield(L, tt, "min_version");
        if (!lua_isnil(L, -1)) {
            const char *v = lua_type(L, -1) == LUA_TSTRING
                                ? lua_tostring(L, -1) : "";
            if (strcmp(v, "tlsv1.2") == 0)
                to->min_version = 12;
            else if (strcmp(v, "tlsv1.3") == 0)
                to->min_version = 13;
            else
                luaL_error(L, "option 'tls.min_version' must be \"tlsv1.2\" "
                              "or \"tlsv1.3\"");
        }
        lua_pop(L, 1);
    } else if (!lua_isnil(L, -1)) {
        luaL_error(L, "option 'tls' must be a boolean or a table, got %s",
                   luaL_typename(L, -1));
    }
    return tls;
}

/* Sets a custom selector (function or object) from the value at index i. */
static void set_custom_selector(lua_State *L, lmc_client *u, int i)
{
    i = lua_absindex(L, i);
    if (lua_type(L, i) == LUA_TFUNCTION) {
        u->sel_mode = SEL_FUNCTION;
    } else {
        lua_getfield(L, i, "pick_server");
        if (lua_isnil(L, -1))
            luaL_error(L, "selector object has no pick_server method");
        lua_pop(L, 1);
        u->sel_mode = SEL_OBJECT;
    }
    lua_pushvalue(L, i);
    u->sel_ref = luaL_ref(L, LUA_REGISTRYINDEX);
}

/* Builds a client from an options table at index t (0: defaults) and
 * servers in arguments from..to (when from > 0). */
static int construct(lua_State *L, int t, int from, int sel)
{
    mc_client_opts o;
    uint32_t mpf = 1;
    lmc_client *u;
    size_t n = 0;
    mc_server_spec *specs = NULL;
    int selidx = 0, tls = 0;
    size_t nul = 0;
    mc_tls_opts tlso;
    struct lmc_cred cred = {NULL, NULL, 0, 0};

    mc_client_opts_default(&o);
    if (t) {
        lua_getfield(L, t, "selector");
        selidx = lua_gettop(L);
        read_opts(L, t, &o, &mpf, selidx);
        tls = lmc_read_secure(L, t, &tlso, &cred);
    }
    /* everything that can raise happens before the client exists */
    if (t) {
        int top;
        lua_getfield(L, t, "servers");
        top = lua_gettop(L);
        if (!lua_isnil(L, top))
            specs = collect_servers(L, top, &n, &nul);
    } else if (from) {
        specs = collect_servers(L, from, &n, &nul);
    }
    if (nul)
        return nul_fail(L, nul);
    u = lua_newuserdata(L, sizeof(*u));
    memset(u, 0, sizeof(*u));
    u->cb_ref = u->sel_ref = LUA_NOREF;
    u->mp_flag = mpf;
    u->max_value = o.pool.max_body - 512;
    luaL_setmetatable(L, CLIENT_MT);
    u->vctx = lmc_vctx_new();
    u->c = mc_client_new(&o);
    if (!u->vctx || !u->c) {
        destroy(L, u);
        return luaL_error(L, "out of memory");
    }
    if (tls || cred.user) {
        char why[256];
        int rc = mc_client_secure(u->c, tls ? &tlso : NULL, cred.user,
                                  cred.ulen, cred.pass, cred.plen, why,
                                  sizeof(why));
        if (rc != MC_OK) {
            lua_pushnil(L);
            lua_pushstring(L, mc_err_str(rc));
            lua_pushstring(L, why);
            destroy(L, u);
            return 3;
        }
    }
    if (sel) {
        set_custom_selector(L, u, sel);
    } else if (t) {
        int st = lua_type(L, selidx);
        if (st == LUA_TFUNCTION || st == LUA_TTABLE || st == LUA_TUSERDATA)
            set_custom_selector(L, u, selidx);
    }
    if (n && mc_client_set_servers(u->c, specs, n) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, ERR(BAD_SERVER));
        lua_pushstring(L, mc_client_errmsg(u->c));
        destroy(L, u);
        return 3;
    }
    return 1;
}

/* True when the options table at t has a wait hook: the client is then
 * the async driver's (lua/memcached/async.lua), which yields where this
 * one would block. */
static int wants_async(lua_State *L, int t)
{
    int yes;
    if (lua_type(L, t) != LUA_TTABLE)
        return 0;
    lua_getfield(L, t, "wait");
    yes = !lua_isnil(L, -1);
    lua_pop(L, 1);
    return yes;
}

/* require("memcached.async")[fn](the call's arguments) */
static int async_new(lua_State *L, const char *fn)
{
    int n = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "memcached.async");
    lua_call(L, 1, 1);
    lua_getfield(L, -1, fn);
    lua_insert(L, 1);
    lua_pop(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* memcached.new(server, ...) or memcached.new{servers = ..., ...} */
int l_new(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TTABLE && !is_weighted_entry(L, 1)) {
        lua_rawgeti(L, 1, 1);
        if (lua_isnil(L, -1)) { /* an options table */
            lua_pop(L, 1);
            if (wants_async(L, 1))
                return async_new(L, "new");
            return construct(L, 1, 0, 0);
        }
        lua_pop(L, 1);
    }
    return construct(L, 0, lua_gettop(L) ? 1 : 0, 0);
}

/* memcached.new_from_selector(sel [, opts]) */
int l_new_from_selector(lua_State *L)
{
    int t = lua_type(L, 1);
    if (t != LUA_TFUNCTION && t != LUA_TTABLE && t != LUA_TUSERDATA)
        luaL_argerror(L, 1, "function or object with pick_server expected");
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    if (wants_async(L, 2))
        return async_new(L, "new_from_selector");
    return construct(L, lua_isnil(L, 2) ? 0 : 2, 0, 1);
}

/* memcached._test_idle_buffer_bytes(client): bytes of buffer storage its
 * pooled connections hold. For the specs only (memory checks that work
 * under ASan, where freed memory does not leave RSS); not an API. */
