/*
 * memcached.core: the core's rules (src/core/mc_abi.h) for a Lua-level
 * driver on Lua 5.4, through the Lua C API, plus the few socket
 * primitives such a driver needs on plain descriptors, none of which ever
 * waits. The async driver (lua/memcached/async.lua) moves its bytes with
 * these and asks these for every rule: framing, the judgement of one
 * reply, a batch's stream, placement and health, addresses, the key rule,
 * the ERR_* strings. Lua's all-in-one C searcher finds
 * luaopen_memcached_core in memcached.so, so `require "memcached.core"`
 * needs no second library.
 *
 * The sockets, TLS and SASL are lmc_core_io.c's.
 */
#define _GNU_SOURCE /* SOCK_NONBLOCK, SOCK_CLOEXEC, MSG_NOSIGNAL */
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lmc_client.h"
#include "lmc_compat.h"
#include "lmc_core.h"
#include "mc_abi.h"
#include "mc_codec.h"
#include "mc_conn.h"
#include "mc_error.h"
#include "mc_proto.h"
#include "mc_tls.h"

#define RING_MT "memcached.core.ring"
#define BATCH_MT "memcached.core.batch"

/* ---- framing and judging ---- */

/* enc(op, opaque, cas, key, extras, flags, exptime, value) -> bytes */
static int c_enc(lua_State *L)
{
    size_t klen = 0, vlen = 0;
    int op = (int)luaL_checkinteger(L, 1);
    uint32_t opaque = (uint32_t)luaL_checkinteger(L, 2);
    double cas = (double)luaL_optinteger(L, 3, 0);
    const char *key = luaL_optlstring(L, 4, NULL, &klen);
    int extras = (int)luaL_optinteger(L, 5, 0);
    uint32_t flags = (uint32_t)luaL_optinteger(L, 6, 0);
    uint32_t exptime = (uint32_t)luaL_optinteger(L, 7, 0);
    const char *value = luaL_optlstring(L, 8, NULL, &vlen);
    char small[512];
    int n = mc_abi_enc(small, sizeof small, op, opaque, cas, key, klen, extras,
                       flags, exptime, value, vlen);
    if (n >= 0) {
        lua_pushlstring(L, small, (size_t)n);
        return 1;
    }
    if (n == -2147483647 - 1)
        return luaL_error(L, "request too large to frame");
    {
        /* a scratch userdata (every Lua has lua_newuserdata; 5.1 has no
         * luaL_buffinitsize), left for the collector */
        size_t need = (size_t)-(long)n;
        char *p = lua_newuserdata(L, need);
        n = mc_abi_enc(p, need, op, opaque, cas, key, klen, extras, flags,
                       exptime, value, vlen);
        if (n < 0)
            return luaL_error(L, "request too large to frame");
        lua_pushlstring(L, p, (size_t)n);
    }
    return 1;
}

/* take_one(buf, pos, max_body, kind, op, opaque [, key [, pipelined]]):
 *   1, err, status, flags, cas, key, value, used  (a whole reply)
 *   0, need                                         (more bytes)
 *   -1, err, msg                                    (framed wrongly)
 *   -2                                              (a text line)
 * pos is 1-based; key and value are new strings; used counts bytes. */
static int c_take_one(lua_State *L)
{
    size_t len, klen = 0;
    const char *buf = luaL_checklstring(L, 1, &len);
    lua_Integer pos = luaL_checkinteger(L, 2);
    size_t max_body = (size_t)luaL_checkinteger(L, 3);
    int kind = (int)luaL_checkinteger(L, 4);
    int op = (int)luaL_checkinteger(L, 5);
    uint32_t opaque = (uint32_t)luaL_checkinteger(L, 6);
    const char *key = luaL_optlstring(L, 7, NULL, &klen);
    mc_abi_reply r;
    char msg[256];
    const char *p;
    int rc;
    if (pos < 1 || (size_t)pos > len + 1)
        return luaL_argerror(L, 2, "position outside the buffer");
    p = buf + pos - 1;
    msg[0] = '\0';
    len -= (size_t)(pos - 1);
    if (lua_toboolean(L, 8) && len > MC_HEADER_LEN) {
        /* pipelined: the next request's reply may follow this one, so the
         * core judges this reply alone (its rule that nothing follows a
         * single reply holds for the bytes it is shown) */
        rc = mc_abi_take_one(p, MC_HEADER_LEN, max_body, kind, op, opaque,
                             key, klen, &r, msg, sizeof msg);
        if (rc == 0 && r.need > len) {
            lua_pushinteger(L, 0);
            lua_pushinteger(L, r.need);
            return 2;
        }
        if (rc == 0)
            rc = mc_abi_take_one(p, r.need, max_body, kind, op, opaque, key,
                                 klen, &r, msg, sizeof msg);
    } else {
        rc = mc_abi_take_one(p, len, max_body, kind, op, opaque, key, klen,
                             &r, msg, sizeof msg);
    }
    lua_pushinteger(L, rc);
    if (rc == 0) {
        lua_pushinteger(L, r.need);
        return 2;
    }
    if (rc == -1) {
        lua_pushinteger(L, r.err);
        lua_pushstring(L, msg);
        return 3;
    }
    if (rc != 1)
        return 1;
    lua_pushinteger(L, r.err);
    lua_pushinteger(L, r.status);
    lua_pushinteger(L, r.flags);
    lua_pushinteger(L, (lua_Integer)(uint64_t)r.cas);
    /* a keyed get's reply key is the request's (the core compared them):
     * hand back the caller's string instead of making another */
    if (key != NULL && r.klen == klen)
        lua_pushvalue(L, 7);
    else
        lua_pushlstring(L, p + r.koff, r.klen);
    lua_pushlstring(L, p + r.voff, r.vlen);
    lua_pushinteger(L, r.used);
    return 8;
}

/* ---- a batch (one server's pipelined stream) ---- */

typedef struct { mc_abi_batch *ab; } lbatch;

static mc_abi_batch *check_batch(lua_State *L)
{
    lbatch *b = luaL_checkudata(L, 1, BATCH_MT);
    if (!b->ab)
        luaL_error(L, "batch already freed");
    return b->ab;
}

static int c_batch_new(lua_State *L)
{
    size_t max_body = (size_t)luaL_optinteger(L, 1, 0);
    lbatch *b = lua_newuserdata(L, sizeof *b);
    b->ab = NULL;
    luaL_setmetatable(L, BATCH_MT);
    b->ab = mc_abi_batch_new(max_body);
    if (!b->ab)
        return luaL_error(L, "out of memory");
    return 1;
}

static int b_gc(lua_State *L)
{
    lbatch *b = luaL_checkudata(L, 1, BATCH_MT);
    mc_abi_batch_free(b->ab);
    b->ab = NULL;
    return 0;
}

/* b:begin(base, kind, every_reply) */
static int b_begin(lua_State *L)
{
    mc_abi_batch *ab = check_batch(L);
    int rc = mc_abi_batch_begin(ab, (uint32_t)luaL_checkinteger(L, 2),
                                (int)luaL_checkinteger(L, 3),
                                lua_toboolean(L, 4));
    if (rc != 0)
        return luaL_error(L, "unknown kind");
    return 0;
}

/* b:add(op, cas, key, extras, flags, exptime [, value]) -> index or nil */
static int b_add(lua_State *L)
{
    mc_abi_batch *ab = check_batch(L);
    size_t klen, vlen = 0;
    int op = (int)luaL_checkinteger(L, 2);
    double cas = (double)luaL_optinteger(L, 3, 0);
    const char *key = luaL_checklstring(L, 4, &klen);
    int extras = (int)luaL_optinteger(L, 5, 0);
    uint32_t flags = (uint32_t)luaL_optinteger(L, 6, 0);
    uint32_t exptime = (uint32_t)luaL_optinteger(L, 7, 0);
    const char *value = luaL_optlstring(L, 8, NULL, &vlen);
    int i = mc_abi_batch_add(ab, op, cas, key, klen, extras, flags, exptime,
                             value, vlen);
    if (i < 0)
        return 0;
    lua_pushinteger(L, i);
    return 1;
}

static int b_seal(lua_State *L)
{
    size_t n;
    const char *p = mc_abi_batch_seal(check_batch(L), &n);
    if (!p)
        return luaL_error(L, "out of memory framing a batch");
    lua_pushlstring(L, p, n);
    return 1;
}

/* b:feed(data, out) -> rc, n [, err, msg]: the entries this piece of the
 * stream completed go into out as n groups of five (index from 0, err,
 * flags, cas, value or false). rc: 0 more to come, 1 the stream ended
 * with its NOOP, -1 it failed. */
static int b_feed(lua_State *L)
{
    mc_abi_batch *ab = check_batch(L);
    size_t len;
    const char *data = luaL_checklstring(L, 2, &len);
    mc_abi_entry *ents;
    int n = 0, err = 0, rc, i;
    char msg[256];
    luaL_checktype(L, 3, LUA_TTABLE);
    msg[0] = '\0';
    rc = mc_abi_batch_feed(ab, data, len, &ents, &n, &err, msg, sizeof msg);
    for (i = 0; i < n; i++) {
        const mc_abi_entry *e = &ents[i];
        lua_Integer at = (lua_Integer)i * 5;
        lua_pushinteger(L, e->idx);
        lmc_rawseti(L, 3, at + 1);
        lua_pushinteger(L, e->err);
        lmc_rawseti(L, 3, at + 2);
        lua_pushinteger(L, e->flags);
        lmc_rawseti(L, 3, at + 3);
        lua_pushinteger(L, (lua_Integer)(uint64_t)e->cas);
        lmc_rawseti(L, 3, at + 4);
        if (e->value)
            lua_pushlstring(L, e->value, e->vlen);
        else
            lua_pushboolean(L, 0);
        lmc_rawseti(L, 3, at + 5);
    }
    lua_pushinteger(L, rc);
    lua_pushinteger(L, n);
    if (rc < 0) {
        lua_pushinteger(L, err);
        lua_pushstring(L, msg);
        return 4;
    }
    return 2;
}

/* ---- the ring: placement and health ---- */

typedef struct { mc_ring *r; } lring;

static mc_ring *check_ring(lua_State *L)
{
    lring *u = lmc_check_self(L, RING_MT);
    if (!u->r)
        luaL_error(L, "ring already freed");
    return u->r;
}

mc_ring *lmc_check_ring(lua_State *L, int i)
{
    lring *u = luaL_checkudata(L, i, RING_MT);
    if (!u->r)
        luaL_error(L, "ring already freed");
    return u->r;
}

/* ring_new(selector, {addr...}, {weight...}, failure_limit, retry, eject)
 * -> ring, or nil, msg */
static int c_ring_new(lua_State *L)
{
    int sel = (int)luaL_checkinteger(L, 1);
    size_t n, i;
    const char **addrs;
    unsigned *weights;
    char err[256];
    lring *u;
    luaL_checktype(L, 2, LUA_TTABLE);
    luaL_checktype(L, 3, LUA_TTABLE);
    n = (size_t)lua_rawlen(L, 2);
    addrs = lua_newuserdata(L, (n + 1) * sizeof *addrs);
    weights = lua_newuserdata(L, (n + 1) * sizeof *weights);
    for (i = 0; i < n; i++) {
        lmc_rawgeti(L, 2, (lua_Integer)i + 1);
        addrs[i] = lua_tostring(L, -1); /* kept alive by the table */
        lua_pop(L, 1);
        if (!addrs[i])
            return luaL_error(L, "server #%d is not a string", (int)i + 1);
        lmc_rawgeti(L, 3, (lua_Integer)i + 1);
        weights[i] = (unsigned)luaL_optinteger(L, -1, 1);
        lua_pop(L, 1);
    }
    u = lua_newuserdata(L, sizeof *u);
    u->r = NULL;
    luaL_setmetatable(L, RING_MT);
    err[0] = '\0';
    u->r = mc_abi_ring_new(sel, addrs, weights, n,
                           (unsigned)luaL_checkinteger(L, 4),
                           luaL_checknumber(L, 5), lua_toboolean(L, 6), err,
                           sizeof err);
    if (!u->r) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int r_gc(lua_State *L)
{
    lring *u = luaL_checkudata(L, 1, RING_MT);
    mc_abi_ring_free(u->r);
    u->r = NULL;
    return 0;
}

static int r_nservers(lua_State *L)
{
    lua_pushinteger(L, mc_abi_ring_nservers(check_ring(L)));
    return 1;
}

static int srv_arg(lua_State *L, mc_ring *r, int i)
{
    lua_Integer s = luaL_checkinteger(L, i);
    if (s < 0 || s >= mc_abi_ring_nservers(r))
        luaL_argerror(L, i, "no such server");
    return (int)s;
}

static int r_name(lua_State *L)
{
    mc_ring *r = check_ring(L);
    lua_pushstring(L, mc_abi_ring_name(r, srv_arg(L, r, 2)));
    return 1;
}

/* r:alive(srv) -> alive, failures, last_error or nil */
static int r_alive(lua_State *L)
{
    mc_ring *r = check_ring(L);
    unsigned failures = 0;
    const char *last = NULL;
    int alive = mc_abi_ring_alive(r, srv_arg(L, r, 2), &failures, &last);
    lua_pushboolean(L, alive);
    lua_pushinteger(L, failures);
    if (last && *last)
        lua_pushstring(L, last);
    else
        lua_pushnil(L);
    return 3;
}

static int r_intern(lua_State *L)
{
    mc_ring *r = check_ring(L);
    char err[256];
    int s = mc_abi_ring_intern(r, luaL_checkstring(L, 2), err, sizeof err);
    if (s < 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, s);
    return 1;
}

static int r_static(lua_State *L)
{
    size_t n;
    mc_ring *r = check_ring(L);
    const char *k = luaL_checklstring(L, 2, &n);
    lua_pushinteger(L, mc_abi_ring_static(r, k, n));
    return 1;
}

/* r:pick(key, now) -> srv, probe, err */
static int r_pick(lua_State *L)
{
    size_t n;
    mc_ring *r = check_ring(L);
    const char *k = luaL_checklstring(L, 2, &n);
    int probe = 0, err = 0;
    int s = mc_abi_ring_pick(r, k, n, luaL_checknumber(L, 3), &probe, &err);
    lua_pushinteger(L, s);
    lua_pushboolean(L, probe);
    lua_pushinteger(L, err);
    return 3;
}

/* r:route(key) -> srv, or -1: the key is malformed or its server is
 * dead (then r:pick); no side effect */
static int r_route(lua_State *L)
{
    size_t n;
    mc_ring *r = check_ring(L);
    const char *k = luaL_checklstring(L, 2, &n);
    lua_pushinteger(L, mc_abi_ring_route(r, k, n));
    return 1;
}

/* r:around(key) -> srv, err */
static int r_around(lua_State *L)
{
    size_t n;
    mc_ring *r = check_ring(L);
    const char *k = luaL_checklstring(L, 2, &n);
    int err = 0;
    int s = mc_abi_ring_around(r, k, n, &err);
    lua_pushinteger(L, s);
    lua_pushinteger(L, err);
    return 2;
}

/* r:usable(srv, now) -> usable, probe */
static int r_usable(lua_State *L)
{
    mc_ring *r = check_ring(L);
    int probe = 0;
    int ok = mc_abi_ring_usable(r, srv_arg(L, r, 2), luaL_checknumber(L, 3),
                                &probe);
    lua_pushboolean(L, ok);
    lua_pushboolean(L, probe);
    return 2;
}

/* r:failed(srv, now, why) -> true when it just turned dead */
static int r_failed(lua_State *L)
{
    mc_ring *r = check_ring(L);
    int s = srv_arg(L, r, 2);
    lua_pushboolean(L, mc_abi_ring_failed(r, s, luaL_checknumber(L, 3),
                                          luaL_checkstring(L, 4)) == 1);
    return 1;
}

/* r:ok(srv) -> true when it was dead and is alive again */
static int r_ok(lua_State *L)
{
    mc_ring *r = check_ring(L);
    lua_pushboolean(L, mc_abi_ring_ok(r, srv_arg(L, r, 2)) == 1);
    return 1;
}

/* ---- rules ---- */

static int c_key_ok(lua_State *L)
{
    size_t n;
    const char *k = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, mc_abi_key_ok(k, n));
    return 1;
}

static int c_err_str(lua_State *L)
{
    lua_pushstring(L, mc_abi_err_str((int)luaL_checkinteger(L, 1)));
    return 1;
}

static int c_health_verdict(lua_State *L)
{
    lua_pushinteger(L, mc_abi_health_verdict((int)luaL_checkinteger(L, 1)));
    return 1;
}

static int c_status_err(lua_State *L)
{
    lua_pushinteger(L, mc_abi_status_err((int)luaL_checkinteger(L, 1),
                                         (int)luaL_checkinteger(L, 2)));
    return 1;
}

static int c_status_is_auth(lua_State *L)
{
    lua_pushboolean(L, mc_abi_status_is_auth((int)luaL_checkinteger(L, 1)));
    return 1;
}

static int c_is_lock(lua_State *L)
{
    size_t n;
    uint32_t flags = (uint32_t)luaL_checkinteger(L, 1);
    const char *v = luaL_checklstring(L, 2, &n);
    lua_pushboolean(L, mc_abi_is_lock(flags, v, n));
    return 1;
}

static int c_resend_safe(lua_State *L)
{
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    lua_pushboolean(L, mc_abi_resend_safe(p, n));
    return 1;
}

/* counter_value(bytes) -> integer or nil */
static int c_counter_value(lua_State *L)
{
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    uint64_t v;
    if (mc_abi_counter_value(p, n, &v) != 0)
        return 0;
    lua_pushinteger(L, (lua_Integer)v);
    return 1;
}

/* addr_split(spec) -> kind (0 tcp, 1 unix, 2 abstract), host, port; or
 * nil, msg */
static int c_addr_split(lua_State *L)
{
    int kind = 0;
    unsigned port = 0;
    char host[256], err[256];
    if (mc_abi_addr_split(luaL_checkstring(L, 1), &kind, host, sizeof host,
                          &port, err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    lua_pushinteger(L, kind);
    lua_pushstring(L, host);
    lua_pushinteger(L, port);
    return 3;
}

/* resolve(host) -> numeric address, or nil, msg (a blocking getaddrinfo:
 * the driver calls it from new, before any loop runs) */
static int c_resolve(lua_State *L)
{
    char out[256];
    if (mc_resolve_host(luaL_checkstring(L, 1), out, sizeof out) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, out);
        return 2;
    }
    lua_pushstring(L, out);
    return 1;
}

static int c_now(lua_State *L)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec * 1e-9);
    return 1;
}

static int c_random32(lua_State *L)
{
    lua_pushinteger(L, mc_random32());
    return 1;
}

static const luaL_Reg batch_methods[] = {
    {"begin", b_begin}, {"add", b_add}, {"seal", b_seal},
    {"feed", b_feed},   {"free", b_gc}, {NULL, NULL}};

static const luaL_Reg ring_methods[] = {
    {"nservers", r_nservers}, {"name", r_name},     {"alive", r_alive},
    {"intern", r_intern},     {"static", r_static}, {"pick", r_pick},
    {"around", r_around},     {"usable", r_usable}, {"failed", r_failed},
    {"ok", r_ok},             {"route", r_route}, {NULL, NULL}};

static const luaL_Reg funcs[] = {
    {"enc", c_enc},
    {"take_one", c_take_one},
    {"batch_new", c_batch_new},
    {"ring_new", c_ring_new},
    {"key_ok", c_key_ok},
    {"err_str", c_err_str},
    {"health_verdict", c_health_verdict},
    {"status_err", c_status_err},
    {"status_is_auth", c_status_is_auth},
    {"is_lock", c_is_lock},
    {"resend_safe", c_resend_safe},
    {"counter_value", c_counter_value},
    {"addr_split", c_addr_split},
    {"resolve", c_resolve},
    {"now", c_now},
    {"random32", c_random32},
    {NULL, NULL}};

void lmc_core_class(lua_State *L, const char *name, const luaL_Reg *m,
                    lua_CFunction gc)
{
    luaL_newmetatable(L, name);
    lua_newtable(L);
    lua_pushvalue(L, -2); /* each method's upvalue: lmc_check_self's */
    luaL_setfuncs(L, m, 1);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
}

void *lmc_check_self(lua_State *L, const char *name)
{
    void *p = lua_touserdata(L, 1);
    if (p && lua_getmetatable(L, 1)) {
        int same = lua_rawequal(L, -1, lua_upvalueindex(1));
        lua_pop(L, 1);
        if (same)
            return p;
    }
    return luaL_checkudata(L, 1, name); /* raises the usual error */
}

LMC_EXPORT int luaopen_memcached_core(lua_State *L);
LMC_EXPORT int luaopen_memcached_core(lua_State *L)
{
    int i;
    uint32_t lflags;
    size_t llen;
    const char *lv;
    lmc_core_class(L, BATCH_MT, batch_methods, b_gc);
    lmc_core_class(L, RING_MT, ring_methods, r_gc);
    luaL_newlib(L, funcs);
    lmc_core_io_open(L); /* sockets, TLS, SASL: lmc_core_io.c */
    lmc_pipe_open(L);    /* pipelined connections: lmc_pipe.c */
    /* the error numbers' strings, by number */
    lua_createtable(L, MC_ERR_COUNT, 0);
    for (i = 1; i < mc_abi_err_count(); i++) {
        lua_pushstring(L, mc_abi_err_str(i));
        lmc_rawseti(L, -2, i);
    }
    lua_setfield(L, -2, "errs");
    lv = mc_abi_lock_marker(&lflags, &llen);
    lua_pushlstring(L, lv, llen);
    lua_setfield(L, -2, "LOCK_VALUE");
    lua_pushinteger(L, lflags);
    lua_setfield(L, -2, "LOCK_FLAGS");
    lua_pushinteger(L, mc_abi_max_stat_entries());
    lua_setfield(L, -2, "MAX_STAT_ENTRIES");
    return 1;
}
