/*
 * memcached.core.pipe: the core's pipelined connection (src/core/mc_pipe.h)
 * for the async driver (lua/memcached/async/conn.lua). Requests are
 * framed into the pipe's buffer, sent with one send, and their replies
 * judged in C as they come; each request's slot (the caller's Lua table)
 * gets its reply's fields and is listed for the driver to wake. No Lua
 * string is made per request, and one call takes every reply a read
 * brought.
 *
 *   p = core.pipe(max_body [, mp_flag])
 *   p:push(s, kind, op, opaque, key|nil, stream, frame)   a framed request
 *   p:get(s, op, opaque, key)         a keyed get, framed here
 *   p:write(bytes)                    bytes of no request (a batch's)
 *   p:flush(io) -> true (all sent) | false (would block) | nil, err, msg
 *   p:read(io, done [, parked]) -> false (would block)
 *                     | nil, err, msg (transport)
 *                     | n [, ERR_*, why | true (a text line: p:rest())]
 *   p:rest(), p:drain(list), p:slot(i), p:clean(), p:count(),
 *   p:unsent(), p:sends(), p:free()
 *   p:lane(deadline | false)          core.lanes may queue gets here
 *
 * io is a descriptor or a TLS connection, as core.send takes. A slot that
 * gets its reply: s.queued = false and, unless s.done (its caller gave
 * up), s.err (the core's error number, 0 for success), s.status (only
 * when s.err is not 0: what was there stays otherwise), s.flags,
 * s.cas, s.value, s.done = true; it is then listed in done[1..n] (with a
 * table parked: its coroutine s.co is, when s.parked or parked[s.co] was
 * set, which is cleared; the driver wakes those; one listed for s.parked
 * also gets s.ok = true when s.err is 0 and s.flags is not mp_flag: its
 * caller may return the value as it is). A STAT stream's slot
 * (stream true) gets each entry through
 * s.stream(s, err, status, key, value), which returns true at its end,
 * false before it, or nil, ERR_*, why to fail the connection; one that
 * raises, or that uses the pipe, fails it too (ERR_PROTOCOL).
 *
 * The slots are the pipe's user value (a table, ref -> slot), not the
 * registry's: a pipe, its slots, their coroutines and the client that
 * holds the pipe are collected together when a loop drops them all.
 *
 * core.lanes (below) is get's own path into these pipes.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <lauxlib.h>
#include <lua.h>

#include "lmc_compat.h"
#include "lmc_core.h"
#include "mc_abi.h"
#include "mc_error.h"
#include "mc_pipe.h"
#include "mc_proto.h"

#define PIPE_MT "memcached.core.pipe"

typedef struct {
    mc_pipe p;
    int *free_refs;  /* refs given back */
    size_t nfree, capfree;
    int top;         /* refs handed out so far: 1 .. top */
    lua_Integer sends;
    int live;
    int lane;             /* p:lane: gets may queue here (core.lanes) */
    double lane_deadline; /* ... when their deadline is no earlier */
    lua_Integer mp_flag;  /* core.pipe's: s.ok is false for these flags */
} lpipe;

static lpipe *check_pipe(lua_State *L)
{
    lpipe *u = lmc_check_self(L, PIPE_MT);
    if (!u->live)
        luaL_error(L, "pipe already freed");
    return u;
}

static int c_pipe(lua_State *L)
{
    size_t max_body = (size_t)luaL_checkinteger(L, 1);
    lua_Integer mp_flag = luaL_optinteger(L, 2, -1);
    lpipe *u = lua_newuserdatauv(L, sizeof *u, 1);
    memset(u, 0, sizeof *u);
    u->mp_flag = mp_flag;
    luaL_setmetatable(L, PIPE_MT);
    lua_newtable(L);
    lmc_setuv(L, -2);
    mc_pipe_init(&u->p, max_body);
    u->live = 1;
    return 1;
}

static int p_gc(lua_State *L)
{
    lpipe *u = luaL_checkudata(L, 1, PIPE_MT);
    if (u->live) {
        mc_pipe_free(&u->p);
        free(u->free_refs);
        u->free_refs = NULL;
        u->live = 0;
    }
    return 0;
}

/* A ref for the slot at index i, which is stored under it in the slots
 * table (the user value of the pipe u, at index pi). */
static int ref_slot_at(lua_State *L, lpipe *u, int pi, int i)
{
    int ref;
    if (u->nfree)
        ref = u->free_refs[--u->nfree];
    else
        ref = ++u->top;
    lmc_getuv(L, pi);
    lua_pushvalue(L, i);
    lmc_rawseti(L, -2, ref);
    lua_pop(L, 1);
    return ref;
}

#define ref_slot(L, u, i) ref_slot_at((L), (u), 1, (i))

/* Gives ref back; the slots table is at index t. */
static void unref_slot(lua_State *L, lpipe *u, int t, int ref)
{
    lua_pushnil(L);
    lmc_rawseti(L, t, ref);
    if (u->nfree == u->capfree) {
        size_t cap = u->capfree ? u->capfree * 2 : 16;
        int *f = realloc(u->free_refs, cap * sizeof *f);
        if (!f)
            return; /* the ref is not reused; nothing else is lost */
        u->free_refs = f;
        u->capfree = cap;
    }
    u->free_refs[u->nfree++] = ref;
}

static void drop_ref_at(lua_State *L, lpipe *u, int pi, int ref)
{
    lmc_getuv(L, pi);
    unref_slot(L, u, lua_gettop(L), ref);
    lua_pop(L, 1);
}

/* After the push of the slot under ref (rc: mc_pipe's) into the pipe at
 * index pi: nothing, or the ref given back and an error raised (out of
 * memory). */
static int pushed_at(lua_State *L, lpipe *u, int pi, int ref, int rc)
{
    if (rc == 0)
        return 0;
    drop_ref_at(L, u, pi, ref);
    return luaL_error(L, "out of memory");
}
#define pushed(L, u, ref, rc) pushed_at((L), (u), 1, (ref), (rc))

/* p:push(s, kind, op, opaque, key|nil, stream, frame) */
static int p_push(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t klen = 0, len;
    int kind = (int)luaL_checkinteger(L, 3);
    int op = (int)luaL_checkinteger(L, 4);
    uint32_t opaque = (uint32_t)luaL_checkinteger(L, 5);
    const char *key = luaL_optlstring(L, 6, NULL, &klen);
    int stream = lua_toboolean(L, 7);
    const char *frame = luaL_checklstring(L, 8, &len);
    int ref;
    luaL_checktype(L, 2, LUA_TTABLE);
    ref = ref_slot(L, u, 2);
    return pushed(L, u, ref,
                  mc_pipe_push(&u->p, frame, len, op, kind, opaque, key, klen,
                               stream, ref));
}

/* p:get(s, op, opaque, key): a keyed get (GETK) framed into the pipe */
static int p_get(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t klen;
    int op = (int)luaL_checkinteger(L, 3);
    uint32_t opaque = (uint32_t)luaL_checkinteger(L, 4);
    const char *key = luaL_checklstring(L, 5, &klen);
    int ref;
    luaL_checktype(L, 2, LUA_TTABLE);
    ref = ref_slot(L, u, 2);
    return pushed(L, u, ref,
                  mc_pipe_push_enc(&u->p, op, 0, opaque, 0, key, klen, 0, 0, 0,
                                   NULL, 0, 1, 0, ref));
}

/* p:write(bytes): bytes that answer to no request of the pipe's */
static int p_write(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t len;
    const char *b = luaL_checklstring(L, 2, &len);
    if (mc_pipe_write(&u->p, b, len) != 0)
        return luaL_error(L, "out of memory");
    return 0;
}

/* p:flush(io) -> true (all sent), false (would block), or nil, err, msg */
static int p_flush(lua_State *L)
{
    lpipe *u = check_pipe(L);
    for (;;) {
        size_t len;
        const char *out = mc_pipe_out(&u->p, &len);
        long n;
        if (len == 0) {
            lua_pushboolean(L, 1);
            return 1;
        }
        n = lmc_io_send(L, 2, out, len);
        u->sends++;
        if (n < 0)
            return 3;
        if (n == 0) {
            lua_pushboolean(L, 0);
            return 1;
        }
        mc_pipe_sent(&u->p, (size_t)n);
    }
}

/* The slot fields p:read reads and writes, interned once: its upvalues
 * 2.. (upvalue 1 is the class's metatable, lmc_check_self's). A field is
 * set and read raw through them: no lookup of the name per reply. */
static const char *const slot_keys[] = {"queued", "done",  "err",
                                        "status", "flags", "cas",
                                        "value",  "stream", "co",
                                        "parked", "ok"};
enum {
    K_QUEUED = 2, K_DONE, K_ERR, K_STATUS, K_FLAGS, K_CAS, K_VALUE, K_STREAM,
    K_CO, K_PARKED, K_OK
};
#define NKEYS ((int)(sizeof slot_keys / sizeof slot_keys[0]))

/* s.k = what push leaves on top; the slot is at index s */
#define SETK(L, s, k, push)                                                  \
    do {                                                                     \
        lua_pushvalue((L), lua_upvalueindex(k));                             \
        push;                                                                \
        lua_rawset((L), (s));                                                \
    } while (0)
/* pushes s.k */
#define GETK(L, s, k) (lua_pushvalue((L), lua_upvalueindex(k)), lua_rawget((L), (s)))

/* A STAT entry's handler failed (raised, or used the pipe): n, ERR_*,
 * why, the connection to be failed. */
static int stream_failed(lua_State *L, int n, const char *why)
{
    lua_pushinteger(L, n);
    lua_pushstring(L, mc_abi_err_str(MC_ERR_PROTOCOL));
    lua_pushfstring(L, "a STAT entry's handler failed: %s", why);
    return 3;
}

/* Lists the slot at index s, just done, in the table at index done (its
 * k-th entry). With the table parked (index, else 0), its coroutine s.co
 * is listed instead, and only when it is parked: s.parked (true, or the
 * coroutine itself), or parked[s.co] (either is then cleared); ok: the
 * reply is a hit to hand over as it is (s.ok, for one of s.parked). The
 * caller wakes the coroutines listed. */
static void list_done(lua_State *L, int s, int done, int parked, int ok,
                      int *k)
{
    int p;
    if (!parked) {
        lua_pushvalue(L, s);
        lmc_rawseti(L, done, ++*k);
        return;
    }
    GETK(L, s, K_PARKED);
    p = lua_toboolean(L, -1);
    if (p) {
        /* (s.parked holds the coroutine: async.lua's get sets it so) */
        if (lua_type(L, -1) != LUA_TTHREAD) {
            lua_pop(L, 1);
            GETK(L, s, K_CO);
        }
        SETK(L, s, K_PARKED, lua_pushboolean(L, 0));
        if (ok)
            SETK(L, s, K_OK, lua_pushboolean(L, 1));
        lmc_rawseti(L, done, ++*k);
        return;
    }
    lua_pop(L, 1);
    GETK(L, s, K_CO);
    lua_pushvalue(L, -1);
    lua_rawget(L, parked);
    if (lua_toboolean(L, -1)) {
        lua_pop(L, 1);
        lua_pushvalue(L, -1);
        lua_pushnil(L);
        lua_rawset(L, parked);
        lmc_rawseti(L, done, ++*k);
        return;
    }
    lua_pop(L, 2);
}

/* Every reply the bytes read hold, handed to its slot (see the top). */
static int deliver(lua_State *L, lpipe *u, int done, int parked)
{
    int k = 0, t;
    mc_pipe_ev ev;
    lmc_getuv(L, 1);
    t = lua_gettop(L);
    for (;;) {
        int rc = mc_pipe_next(&u->p, &ev);
        int s;
        if (rc == MC_PIPE_NEED) {
            lua_pushinteger(L, k);
            return 1;
        }
        if (rc == MC_PIPE_FAIL) {
            lua_pushinteger(L, k);
            lua_pushstring(L, mc_abi_err_str(ev.err));
            lua_pushstring(L, ev.msg);
            return 3;
        }
        if (rc == MC_PIPE_TEXT) {
            lua_pushinteger(L, k);
            lua_pushboolean(L, 1);
            return 2;
        }
        lmc_rawgeti(L, t, ev.ref);
        s = lua_gettop(L);
        if (rc == MC_PIPE_ENTRY) {
            int fin;
            GETK(L, s, K_STREAM);
            lua_pushvalue(L, s);
            lua_pushinteger(L, ev.err);
            lua_pushinteger(L, ev.status);
            lua_pushlstring(L, ev.key, ev.klen);
            lua_pushlstring(L, ev.value, ev.vlen);
            if (lua_pcall(L, 5, 3, 0) != 0) {
                const char *why = lua_tostring(L, -1);
                return stream_failed(L, k, why ? why : "an error");
            }
            if (!u->live || u->p.n == 0 || mc_pipe_ref(&u->p, 0) != ev.ref)
                return stream_failed(L, k, "it used the pipe");
            if (lua_isnil(L, -3)) {
                lua_pushinteger(L, k);
                lua_replace(L, -4);
                return 3;
            }
            fin = lua_toboolean(L, -3);
            lua_pop(L, 3);
            if (!fin) {
                lua_pop(L, 1);
                continue;
            }
            mc_pipe_pop(&u->p);
            unref_slot(L, u, t, ev.ref);
            SETK(L, s, K_QUEUED, lua_pushboolean(L, 0));
            SETK(L, s, K_DONE, lua_pushboolean(L, 1));
            list_done(L, s, done, parked, 0, &k);
            lua_pop(L, 1);
            continue;
        }
        unref_slot(L, u, t, ev.ref);
        SETK(L, s, K_QUEUED, lua_pushboolean(L, 0));
        GETK(L, s, K_DONE);
        if (!lua_toboolean(L, -1)) {
            /* else its caller gave up waiting: the reply is dropped */
            SETK(L, s, K_ERR, lua_pushinteger(L, ev.err));
            if (ev.err != 0) /* (read only then: one field less a hit) */
                SETK(L, s, K_STATUS, lua_pushinteger(L, ev.status));
            SETK(L, s, K_FLAGS, lmc_pushint(L, ev.flags));
            SETK(L, s, K_CAS, lmc_pushu64(L, (uint64_t)ev.cas));
            SETK(L, s, K_VALUE, lua_pushlstring(L, ev.value, ev.vlen));
            SETK(L, s, K_DONE, lua_pushboolean(L, 1));
            list_done(L, s, done, parked,
                      ev.err == 0 && (lua_Integer)ev.flags != u->mp_flag, &k);
        }
        lua_pop(L, 2);
    }
}

/* p:read(io, done [, parked]) (see the top) */
static int p_read(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t room;
    char *b;
    long n;
    int parked = lua_istable(L, 4) ? 4 : 0;
    luaL_checktype(L, 3, LUA_TTABLE);
    lua_settop(L, 4);
    b = mc_pipe_in(&u->p, 16384, &room);
    if (!b)
        return luaL_error(L, "out of memory");
    n = lmc_io_recv(L, 2, b, room);
    if (n < 0)
        return 3;
    if (n == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    mc_pipe_got(&u->p, (size_t)n);
    return deliver(L, u, 3, parked);
}

/* p:rest() -> the bytes read and not taken, taken */
static int p_rest(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t len;
    const char *r = mc_pipe_rest(&u->p, &len);
    lua_pushlstring(L, r, len);
    return 1;
}

/* p:slot(i) -> the i-th slot in flight, oldest first (1-based), or nil */
static int p_slot(lua_State *L)
{
    lpipe *u = check_pipe(L);
    lua_Integer i = luaL_checkinteger(L, 2);
    if (i < 1 || (size_t)i > u->p.n)
        return 0;
    lmc_getuv(L, 1);
    lmc_rawgeti(L, -1, mc_pipe_ref(&u->p, (size_t)i - 1));
    return 1;
}

/* p:drain(list) -> n: the slots in flight into list[1..n], oldest first,
 * and the pipe forgets them and every byte either way (the connection
 * failed) */
static int p_drain(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t i, n = u->p.n;
    int t;
    luaL_checktype(L, 2, LUA_TTABLE);
    lmc_getuv(L, 1);
    t = lua_gettop(L);
    for (i = 0; i < n; i++) {
        int ref = mc_pipe_ref(&u->p, i);
        lmc_rawgeti(L, t, ref);
        lmc_rawseti(L, 2, (lua_Integer)i + 1);
        unref_slot(L, u, t, ref);
    }
    mc_pipe_reset(&u->p);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* p:clean() -> true when nothing is in flight, unsent or unread */
static int p_clean(lua_State *L)
{
    lua_pushboolean(L, mc_pipe_clean(&check_pipe(L)->p));
    return 1;
}

/* p:count() -> the requests in flight */
static int p_count(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_pipe(L)->p.n);
    return 1;
}

/* p:lane(deadline | false): gets whose deadline is no earlier than
 * deadline may now be queued here by core.lanes (the connection is being
 * read by a reader with that deadline), or no longer (false) */
static int p_lane(lua_State *L)
{
    lpipe *u = check_pipe(L);
    double deadline = lua_toboolean(L, 2) ? luaL_checknumber(L, 2) : 0;
    u->lane = lua_toboolean(L, 2);
    u->lane_deadline = deadline;
    return 0;
}

/* p:unsent() -> true when bytes wait to be sent */
static int p_unsent(lua_State *L)
{
    size_t len;
    mc_pipe_out(&check_pipe(L)->p, &len);
    lua_pushboolean(L, len > 0);
    return 1;
}

/* p:sends() -> the send calls made so far */
static int p_sends(lua_State *L)
{
    lua_pushinteger(L, check_pipe(L)->sends);
    return 1;
}

/* (read is made again with upvalues in lmc_pipe_open) */
static const luaL_Reg pipe_methods[] = {
    {"push", p_push},   {"get", p_get},       {"write", p_write},
    {"flush", p_flush}, {"read", p_read},     {"rest", p_rest},
    {"drain", p_drain}, {"clean", p_clean},   {"sends", p_sends},
    {"count", p_count}, {"free", p_gc},       {"lane", p_lane},
    {"unsent", p_unsent}, {"slot", p_slot},   {NULL, NULL}};

/* ---- lanes: get's own path, in one call ----
 *
 *   l = core.lanes(ring, io_timeout, on, opaque)
 *   l:set(srv, c, ring)  c (a connection: c.p its pipe) is srv's lane
 *                   (false: ring, srv's, is not l's, or l's ring had no
 *                   server srv when l was made)
 *   l:get(key, s) -> c, deadline, srv | nil
 *   l:opaque()      the next request's opaque (every request of the
 *                   client takes its opaque here, so that no two in
 *                   flight on a connection share one)
 *   l:on(), l:off() whether l:get may queue; l:get queues no more
 *
 * l:get is what memcached.async's get does for nearly every call: the
 * key's server by ring (mc_ring_route: a good key, a live server), that
 * server's lane (a connection being read, p:lane), and the keyed get
 * framed into its pipe with slot s, all without a Lua table lookup. nil:
 * nothing done (no lane, a bad key, a dead server; the caller takes the
 * general way). The connection tables and pipes are kept in the user
 * value, [2*srv+1] = c and [2*srv+2] = c.p, with the ring at [0]. */

#define LANES_MT "memcached.core.lanes"

typedef struct {
    struct mc_ring *ring;
    lpipe **pipe; /* per server: its lane's pipe, or NULL */
    int n;
    int on;
    double io_timeout;
    uint32_t seq; /* the next opaque: counts up, 0 skipped */
} llanes;

static uint32_t next_opaque(llanes *l)
{
    uint32_t o = l->seq;
    l->seq = o == UINT32_MAX ? 1 : o + 1;
    return o;
}

static int l_gc(lua_State *L)
{
    llanes *l = luaL_checkudata(L, 1, LANES_MT);
    free(l->pipe);
    l->pipe = NULL;
    l->n = 0;
    return 0;
}

/* core.lanes(ring, io_timeout, on, opaque) */
static int c_lanes(lua_State *L)
{
    struct mc_ring *r = lmc_check_ring(L, 1);
    double t = luaL_checknumber(L, 2);
    int on = lua_toboolean(L, 3);
    uint32_t seq = (uint32_t)luaL_checkinteger(L, 4);
    int n = mc_abi_ring_nservers(r);
    llanes *l = lua_newuserdatauv(L, sizeof *l, 1);
    memset(l, 0, sizeof *l);
    luaL_setmetatable(L, LANES_MT);
    l->pipe = calloc(n > 0 ? (size_t)n : 1, sizeof *l->pipe);
    if (!l->pipe)
        return luaL_error(L, "out of memory");
    l->ring = r;
    l->n = n;
    l->io_timeout = t;
    l->on = on;
    l->seq = seq ? seq : 1;
    lua_newtable(L);
    lua_pushvalue(L, 1);
    lmc_rawseti(L, -2, 0); /* the ring outlives the lanes */
    lmc_setuv(L, -2);
    return 1;
}

/* l:set(srv, c, ring) -> true; or false when ring, the ring srv is an
 * index of, is not l's (replaced since), or for a server l's ring had not
 * when l was made (a custom selector's, interned later: it has no lane) */
static int l_set(lua_State *L)
{
    llanes *l = lmc_check_self(L, LANES_MT);
    lua_Integer srv = luaL_checkinteger(L, 2);
    lpipe *u;
    luaL_checktype(L, 3, LUA_TTABLE);
    if (lmc_check_ring(L, 4) != l->ring || srv < 0 || srv >= l->n) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_getfield(L, 3, "p");
    u = luaL_checkudata(L, -1, PIPE_MT);
    lmc_getuv(L, 1);
    lua_pushvalue(L, 3);
    lmc_rawseti(L, -2, 2 * srv + 1);
    lua_pushvalue(L, -2);
    lmc_rawseti(L, -2, 2 * srv + 2);
    l->pipe[srv] = u;
    lua_pushboolean(L, 1);
    return 1;
}

static double mono_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* l:get(key, s) for l (the lanes at index li), key at ki, s at ki + 1 */
static int lanes_get(lua_State *L, llanes *l, int li, int ki)
{
    size_t klen;
    const char *key;
    lpipe *u;
    double deadline;
    int srv, ref, t;
    luaL_checktype(L, ki + 1, LUA_TTABLE);
    if (lua_type(L, ki) != LUA_TSTRING || !l->pipe || !l->on)
        return 0;
    key = lua_tolstring(L, ki, &klen);
    srv = mc_abi_ring_route(l->ring, key, klen);
    if (srv < 0 || srv >= l->n || !(u = l->pipe[srv]) || !u->live || !u->lane)
        return 0;
    deadline = mono_now() + l->io_timeout;
    if (deadline < u->lane_deadline)
        return 0;
    lua_settop(L, ki + 1);
    lmc_getuv(L, li);                  /* t */
    t = lua_gettop(L);
    lmc_rawgeti(L, t, 2 * srv + 2);    /* t + 1: the pipe */
    ref = ref_slot_at(L, u, t + 1, ki + 1);
    pushed_at(L, u, t + 1, ref,
              mc_pipe_push_enc(&u->p, MC_OP_GETK, 0, next_opaque(l), 0, key,
                               klen, 0, 0, 0, NULL, 0, 1, 0, ref));
    lmc_rawgeti(L, t, 2 * srv + 1);
    lua_pushnumber(L, deadline);
    lua_pushinteger(L, srv);
    return 3;
}

/* l:get(key, s) -> c, deadline, srv | nil (see above) */
static int l_get(lua_State *L)
{
    return lanes_get(L, lmc_check_self(L, LANES_MT), 1, 2);
}

/* The getter's closure: l:get(key, s) as get(key, s), l its upvalue. */
static int l_bound_get(lua_State *L)
{
    return lanes_get(L, lua_touserdata(L, lua_upvalueindex(1)),
                     lua_upvalueindex(1), 1);
}

/* l:getter() -> get: l:get bound to l, called as get(key, s) (no check
 * of l nor lookup of the method per call) */
static int l_getter(lua_State *L)
{
    lmc_check_self(L, LANES_MT);
    lua_settop(L, 1);
    lua_pushcclosure(L, l_bound_get, 1);
    return 1;
}

/* l:opaque() -> the next opaque */
static int l_opaque(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)next_opaque(lmc_check_self(L, LANES_MT)));
    return 1;
}

/* l:on() -> whether l:get may queue */
static int l_on(lua_State *L)
{
    lua_pushboolean(L, ((llanes *)lmc_check_self(L, LANES_MT))->on);
    return 1;
}

/* l:off(): l:get queues nothing more (the client closed) */
static int l_off(lua_State *L)
{
    ((llanes *)lmc_check_self(L, LANES_MT))->on = 0;
    return 0;
}

static const luaL_Reg lanes_methods[] = {
    {"set", l_set}, {"get", l_get}, {"getter", l_getter}, {"opaque", l_opaque},
    {"on", l_on},   {"off", l_off}, {NULL, NULL}};

void lmc_pipe_open(lua_State *L)
{
    int i;
    lmc_core_class(L, PIPE_MT, pipe_methods, p_gc);
    /* read, with the slot fields' names as upvalues (SETK) */
    luaL_getmetatable(L, PIPE_MT);
    lua_getfield(L, -1, "__index");
    lua_pushvalue(L, -2);
    for (i = 0; i < NKEYS; i++)
        lua_pushstring(L, slot_keys[i]);
    lua_pushcclosure(L, p_read, 1 + NKEYS);
    lua_setfield(L, -2, "read");
    lua_pop(L, 2);
    lua_pushcfunction(L, c_pipe);
    lua_setfield(L, -2, "pipe");
    lmc_core_class(L, LANES_MT, lanes_methods, l_gc);
    lua_pushcfunction(L, c_lanes);
    lua_setfield(L, -2, "lanes");
}
