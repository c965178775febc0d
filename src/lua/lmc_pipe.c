/*
 * memcached.core.pipe: the core's pipelined connection (src/core/mc_pipe.h)
 * for the async driver (lua/memcached/async/conn.lua). Requests are
 * framed into the pipe's buffer, sent with one send, and their replies
 * judged in C as they come; each request's slot (the caller's Lua table)
 * gets its reply's fields and is listed for the driver to wake. No Lua
 * string is made per request, and one call takes every reply a read
 * brought.
 *
 *   p = core.pipe(max_body)
 *   p:push(s, kind, op, opaque, key|nil, stream, frame)   a framed request
 *   p:get(s, op, opaque, key)         a keyed get, framed here
 *   p:write(bytes)                    bytes of no request (a batch's)
 *   p:flush(io) -> true (all sent) | false (would block) | nil, err, msg
 *   p:read(io, done) -> false (would block) | nil, err, msg (transport)
 *                     | n [, ERR_*, why | true (a text line: p:rest())]
 *   p:rest(), p:drain(list), p:slots(list), p:clean(), p:count(),
 *   p:sends(), p:free()
 *
 * io is a descriptor or a TLS connection, as core.send takes. A slot that
 * gets its reply: s.queued = false and, unless s.done (its caller gave
 * up), s.err (the core's error number, 0 for success), s.status, s.flags,
 * s.cas, s.value, s.done = true; it is then listed in done[1..n]. A STAT
 * stream's slot (stream true) gets each entry through
 * s.stream(s, err, status, key, value), which returns true at its end,
 * false before it, or nil, ERR_*, why to fail the connection; one that
 * raises, or that uses the pipe, fails it too (ERR_PROTOCOL).
 *
 * The slots are the pipe's user value (a table, ref -> slot), not the
 * registry's: a pipe, its slots, their coroutines and the client that
 * holds the pipe are collected together when a loop drops them all.
 */
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

#include "lmc_compat.h"
#include "lmc_core.h"
#include "mc_abi.h"
#include "mc_error.h"
#include "mc_pipe.h"

#define PIPE_MT "memcached.core.pipe"

typedef struct {
    mc_pipe p;
    int *free_refs;  /* refs given back */
    size_t nfree, capfree;
    int top;         /* refs handed out so far: 1 .. top */
    lua_Integer sends;
    int live;
} lpipe;

static lpipe *check_pipe(lua_State *L)
{
    lpipe *u = luaL_checkudata(L, 1, PIPE_MT);
    if (!u->live)
        luaL_error(L, "pipe already freed");
    return u;
}

static int c_pipe(lua_State *L)
{
    size_t max_body = (size_t)luaL_checkinteger(L, 1);
    lpipe *u = lua_newuserdatauv(L, sizeof *u, 1);
    memset(u, 0, sizeof *u);
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
 * table (the user value of the pipe at index 1). */
static int ref_slot(lua_State *L, lpipe *u, int i)
{
    int ref;
    if (u->nfree)
        ref = u->free_refs[--u->nfree];
    else
        ref = ++u->top;
    lmc_getuv(L, 1);
    lua_pushvalue(L, i);
    lmc_rawseti(L, -2, ref);
    lua_pop(L, 1);
    return ref;
}

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

static void drop_ref(lua_State *L, lpipe *u, int ref)
{
    lmc_getuv(L, 1);
    unref_slot(L, u, lua_gettop(L), ref);
    lua_pop(L, 1);
}

/* After the push of the slot under ref (rc: mc_pipe's): nothing, or the
 * ref given back and an error raised (out of memory). */
static int pushed(lua_State *L, lpipe *u, int ref, int rc)
{
    if (rc == 0)
        return 0;
    drop_ref(L, u, ref);
    return luaL_error(L, "out of memory");
}

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

/* Sets s.k = the value on top (popped); the slot is at index s. */
#define SETF(L, s, k) lua_setfield((L), (s), (k))

/* A STAT entry's handler failed (raised, or used the pipe): n, ERR_*,
 * why, the connection to be failed. */
static int stream_failed(lua_State *L, int n, const char *why)
{
    lua_pushinteger(L, n);
    lua_pushstring(L, mc_abi_err_str(MC_ERR_PROTOCOL));
    lua_pushfstring(L, "a STAT entry's handler failed: %s", why);
    return 3;
}

/* Every reply the bytes read hold, handed to its slot (see the top). */
static int deliver(lua_State *L, lpipe *u, int done)
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
            lua_getfield(L, s, "stream");
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
            lua_pushboolean(L, 0);
            SETF(L, s, "queued");
            lua_pushboolean(L, 1);
            SETF(L, s, "done");
            lua_pushvalue(L, s);
            lmc_rawseti(L, done, ++k);
            lua_pop(L, 1);
            continue;
        }
        unref_slot(L, u, t, ev.ref);
        lua_pushboolean(L, 0);
        SETF(L, s, "queued");
        lua_getfield(L, s, "done");
        if (!lua_toboolean(L, -1)) {
            /* else its caller gave up waiting: the reply is dropped */
            lua_pushinteger(L, ev.err);
            SETF(L, s, "err");
            lua_pushinteger(L, ev.status);
            SETF(L, s, "status");
            lmc_pushint(L, ev.flags);
            SETF(L, s, "flags");
            lmc_pushu64(L, (uint64_t)ev.cas);
            SETF(L, s, "cas");
            lua_pushlstring(L, ev.value, ev.vlen);
            SETF(L, s, "value");
            lua_pushboolean(L, 1);
            SETF(L, s, "done");
            lua_pushvalue(L, s);
            lmc_rawseti(L, done, ++k);
        }
        lua_pop(L, 2);
    }
}

/* p:read(io, done) (see the top) */
static int p_read(lua_State *L)
{
    lpipe *u = check_pipe(L);
    size_t room;
    char *b;
    long n;
    luaL_checktype(L, 3, LUA_TTABLE);
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
    return deliver(L, u, 3);
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

/* The slots in flight, oldest first, into the table at index 2; n. */
static int list_slots(lua_State *L, lpipe *u, int forget)
{
    size_t i, n = u->p.n;
    int t;
    luaL_checktype(L, 2, LUA_TTABLE);
    lmc_getuv(L, 1);
    t = lua_gettop(L);
    for (i = 0; i < n; i++) {
        int ref = mc_pipe_ref(&u->p, i);
        lmc_rawgeti(L, t, ref);
        lmc_rawseti(L, 2, (lua_Integer)i + 1);
        if (forget)
            unref_slot(L, u, t, ref);
    }
    if (forget)
        mc_pipe_reset(&u->p);
    lua_pushinteger(L, (lua_Integer)n);
    return 1;
}

/* p:drain(list) -> n: the slots in flight into list[1..n], and the pipe
 * forgets them and every byte either way (the connection failed) */
static int p_drain(lua_State *L)
{
    return list_slots(L, check_pipe(L), 1);
}

/* p:slots(list) -> n: the slots in flight into list[1..n] */
static int p_slots(lua_State *L)
{
    return list_slots(L, check_pipe(L), 0);
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

/* p:sends() -> the send calls made so far */
static int p_sends(lua_State *L)
{
    lua_pushinteger(L, check_pipe(L)->sends);
    return 1;
}

static const luaL_Reg pipe_methods[] = {
    {"push", p_push},   {"get", p_get},       {"write", p_write},
    {"flush", p_flush}, {"read", p_read},     {"rest", p_rest},
    {"drain", p_drain}, {"slots", p_slots},   {"clean", p_clean},
    {"sends", p_sends}, {"count", p_count},   {"free", p_gc},
    {NULL, NULL}};

void lmc_pipe_open(lua_State *L)
{
    lmc_core_class(L, PIPE_MT, pipe_methods, p_gc);
    lua_pushcfunction(L, c_pipe);
    lua_setfield(L, -2, "pipe");
}
