/*
 * lmc_every: the calls to every server: ping, flush, version (one
 * pipelined batch over all servers) and stats (one server at a time).
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

/* ---- every server ----
 * ping, flush and version send one request to every server in one batch:
 * all servers are written before any is read, so a slow server costs one
 * timeout, not one per server. stats stays one server at a time: its reply
 * is a stream of packets under one opaque. Key i of the scratch is server
 * i: its name (at koff), its failure (err, with the detail at voff) or its
 * value (version, at voff). */

typedef struct each {
    lmc_client *u;
    lmc_scratch *sc;
    const mc_codec *codec; /* frames the requests */
    uint8_t opcode;
    uint32_t delay;    /* flush */
} each;

static int each_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    each *e = ud;
    (void)i;
    if (e->opcode == MC_OP_FLUSH)
        return e->codec->flush(out, MC_OP_FLUSH, opaque, e->delay);
    return e->codec->simple(out, e->opcode, opaque);
}

static void each_failed(each *e, size_t i, const char *err,
                        const char *detail)
{
    struct bkey *k = &e->sc->keys[i];
    k->err = err;
    k->vlen = 0;
    if (arena_add(e->sc, detail, strlen(detail), &k->voff) == 0)
        k->vlen = strlen(detail);
}

static int each_reply(void *ud, size_t i, const mc_resp *r)
{
    each *e = ud;
    struct bkey *k = &e->sc->keys[i];
    if (r->opcode != e->opcode)
        return -1;
    if (r->status != MC_STATUS_OK) {
        char d[300];
        snprintf(d, sizeof(d), "%s: %s", mc_client_server_name(e->u->c, i),
                 mc_status_str(r->status));
        each_failed(e, i, status_name(MC_KIND_OTHER, r->status), d);
    } else if (arena_add(e->sc, r->value, r->vallen, &k->voff) == 0) {
        k->vlen = r->vallen;
        k->got = 1;
    } else {
        each_failed(e, i, ERR(NOMEM), "out of memory");
    }
    return 0;
}

static void each_fail(void *ud, size_t i, int err, const char *msg)
{
    each_failed(ud, i, mc_err_str(err), msg);
}

/* A server whose stream broke after it answered: drop its answer too. */
static void each_revoke(void *ud, size_t i, int err, const char *msg)
{
    each *e = ud;
    e->sc->keys[i].got = 0;
    each_failed(e, i, mc_err_str(err), msg);
}

/* Runs the batch over every server; then pushes {addr = detail} of the
 * servers that failed and, when values is a stack index, stores the
 * answers there. Returns how many servers failed (the first error in
 * *first, the last detail in detail), or -1 when out of memory. */
static int each_server(lua_State *L, lmc_client *u, each *e, int values,
                       const char **first, char *detail, size_t dlen)
{
    size_t i, n = mc_client_nservers(u->c);
    int nfailed = 0, failures;
    lmc_scratch *sc = scratch_lend(L, u);
    e->u = u;
    e->sc = sc;
    e->codec = mc_client_codec(u->c);
    sc->bytes.len = 0;
    if (scratch_grow(sc, n + 1) != 0) {
        scratch_return(u, sc);
        return -1;
    }
    for (i = 0; i < n; i++) {
        struct bkey *k = &sc->keys[i];
        memset(k, 0, sizeof(*k));
        sc->srv[i] = (int)i;
        const char *name = mc_client_server_name(u->c, i);
        if (arena_add(sc, name, strlen(name) + 1, &k->voff) != 0) {
            scratch_return(u, sc);
            return -1;
        }
        k->koff = k->voff; /* the name, NUL-terminated */
        k->voff = 0;
    }
    if (run_batch(u, sc, n, mc_client_gen(u->c), 0, 1, each_enc, each_reply, each_fail,
                  each_revoke, e) != MC_OK) {
        scratch_return(u, sc);
        return -1;
    }
    /* results: Lua runs from here on, from the call's scratch alone */
    lua_newtable(L);
    failures = lua_gettop(L);
    *first = NULL;
    for (i = 0; i < n; i++) {
        const struct bkey *k = &sc->keys[i];
        const char *name = sc->bytes.data + k->koff;
        if (k->err) {
            if (!*first)
                *first = k->err;
            nfailed++;
            snprintf(detail, dlen, "%.*s", (int)k->vlen,
                     sc->bytes.data + k->voff);
            lua_pushlstring(L, sc->bytes.data + k->voff, k->vlen);
            lua_setfield(L, failures, name);
        } else if (values && k->got) {
            lua_pushlstring(L, sc->bytes.data + k->voff, k->vlen);
            lua_setfield(L, values, name);
        }
    }
    scratch_return(u, sc);
    lua_remove(L, failures - 1); /* the scratch slot */
    return nfailed;
}

/* What every call to all servers checks first: 0, or the values pushed. */
static int each_start(lua_State *L, lmc_client *u, each *e, uint8_t opcode)
{
    CLOSED_CHECK(L, u);
    if (mc_client_nservers(u->c) == 0)
        return fail(L, ERR(NO_SERVERS), "no servers configured");
    memset(e, 0, sizeof(*e));
    e->opcode = opcode;
    return 0;
}

/* ping/flush: true, or nil, err, {addr = detail}. */
static int all_simple(lua_State *L, lmc_client *u, uint8_t opcode,
                      uint32_t delay)
{
    each e;
    int rc;
    const char *first;
    char detail[256];
    if ((rc = each_start(L, u, &e, opcode)) != 0)
        return rc;
    e.delay = delay;
    rc = each_server(L, u, &e, 0, &first, detail, sizeof(detail));
    if (rc < 0)
        return fail(L, ERR(NOMEM), "out of memory");
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushstring(L, first);
    lua_insert(L, -2); /* nil, err, failures */
    return 3;
}

int m_ping(lua_State *L)
{
    return all_simple(L, self(L), MC_OP_NOOP, 0);
}

int m_flush(lua_State *L)
{
    lmc_client *u = self(L);
    lua_Integer d;
    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_getfield(L, 2, "expiration");
        lua_replace(L, 2);
    }
    d = opt_integer(L, 2, "delay", 0);
    return all_simple(L, u, MC_OP_FLUSH, check_exptime(L, d, "delay"));
}

int m_flush_all(lua_State *L)
{
    return all_simple(L, self(L), MC_OP_FLUSH, 0);
}

/* version() -> {addr = version}[, first err]; nil, err, detail when no
 * server answered. */
int m_version(lua_State *L)
{
    lmc_client *u = self(L);
    each e;
    int rc, values;
    const char *first;
    char detail[256];
    if ((rc = each_start(L, u, &e, MC_OP_VERSION)) != 0)
        return rc;
    lua_newtable(L);
    values = lua_gettop(L);
    rc = each_server(L, u, &e, values, &first, detail, sizeof(detail));
    if (rc < 0)
        return fail(L, ERR(NOMEM), "out of memory");
    lua_pop(L, 1); /* failures */
    if (rc == 0)
        return 1;
    lua_pushnil(L);
    if (lua_next(L, values) == 0) /* nobody answered */
        return fail(L, first, detail);
    lua_pop(L, 2);
    lua_pushstring(L, first);
    return 2;
}

/* One request to one server, for stats. Returns MC_OK with o->r filled
 * (the connection still held), or an error (message in o->q.err). */
static int server_call(lmc_client *u, int i, op *o, const char *group,
                       size_t glen)
{
    int err = MC_OK;
    o->u = u;
    o->srv = i;
    o->out = mc_client_begin(u->c, &o->q, i, &err);
    if (!o->out)
        return err;
    if (o->q.codec->stat(o->out, o->q.opaque, group, glen) != 0) {
        mc_client_end_broken(u->c, &o->q);
        snprintf(o->q.err, sizeof(o->q.err), "out of memory");
        return MC_ERR_NOMEM;
    }
    return mc_client_exec(u->c, &o->q, &o->r);
}

/* Appends one length-prefixed string to the arena. */
static int arena_put(mc_buf *b, const char *p, size_t n)
{
    return mc_buf_append(b, &n, sizeof(n)) == 0 && mc_buf_append(b, p, n) == 0
               ? 0 : -1;
}

/* Reads one server's stats reply (the first entry in o->r) into the arena
 * as name/value pairs, and ends the request: no Lua runs meanwhile. MC_OK,
 * or the error with its message in detail. */
static int stats_read(lmc_client *u, op *o, mc_buf *arena, char *detail,
                      size_t dlen)
{
    long nent = 0;
    int rc = MC_OK;
    while (o->r.keylen > 0) {
        if (++nent > MC_MAX_STAT_ENTRIES) {
            /* a server that streams entries forever must not grow the
             * table forever: the rest is not read, the connection goes */
            snprintf(detail, dlen, "%s: more than %d stat entries in one "
                                   "reply", mc_req_server(&o->q), MC_MAX_STAT_ENTRIES);
            mc_client_end_broken(u->c, &o->q);
            return MC_ERR_PROTOCOL;
        }
        if (arena_put(arena, o->r.key, o->r.keylen) != 0 ||
            arena_put(arena, o->r.value, o->r.vallen) != 0) {
            snprintf(detail, dlen, "out of memory");
            mc_client_end_broken(u->c, &o->q);
            return MC_ERR_NOMEM;
        }
        rc = mc_client_next(u->c, &o->q, &o->r);
        if (rc != MC_OK) {
            snprintf(detail, dlen, "%s", o->q.err);
            return rc;
        }
    }
    mc_client_end(u->c, &o->q);
    return MC_OK;
}

/* Pushes a table of the arena's name/value pairs. */
static void stats_push(lua_State *L, const mc_buf *arena)
{
    size_t pos = 0, n;
    lua_newtable(L);
    while (pos < arena->len) {
        memcpy(&n, arena->data + pos, sizeof(n));
        lua_pushlstring(L, arena->data + pos + sizeof(n), n);
        pos += sizeof(n) + n;
        memcpy(&n, arena->data + pos, sizeof(n));
        lua_pushlstring(L, arena->data + pos + sizeof(n), n);
        pos += sizeof(n) + n;
        lua_rawset(L, -3);
    }
}

/* stats([group]) -> {addr = {name = value}}; a server that fails is left
 * out and the first error is the second result; nil, ERR_NO_STATS when no
 * server answered. Each server's reply is read whole into the call's
 * arena before any of it becomes Lua values. */
int m_stats(lua_State *L)
{
    lmc_client *u = self(L);
    const char *group = NULL;
    size_t glen = 0, i, ok = 0;
    const char *first = NULL;
    char detail[256] = "";
    lmc_scratch *sc;
    if (!lua_isnoneornil(L, 2))
        group = luaL_checklstring(L, 2, &glen);
    /* the group travels as the request's key: 16 bits of length */
    if (glen > 65535)
        luaL_error(L, "bad argument #1 (group): longer than 65535 bytes");
    CLOSED_CHECK(L, u);
    if (mc_client_nservers(u->c) == 0)
        return fail(L, ERR(NO_SERVERS), "no servers configured");
    lua_settop(L, 2);
    sc = scratch_lend(L, u); /* 3 */
    lua_newtable(L);         /* 4: results */
    for (i = 0; u->c && i < mc_client_nservers(u->c); i++) {
        op o;
        char name[256];
        int rc = server_call(u, (int)i, &o, group, glen);
        if (rc != MC_OK) {
            snprintf(detail, sizeof(detail), "%s", o.q.err);
            if (!first)
                first = mc_err_str(rc);
            continue;
        }
        snprintf(name, sizeof(name), "%s", mc_req_server(&o.q));
        if (o.r.status != MC_STATUS_OK) {
            if (!first)
                first = status_name(MC_KIND_OTHER, o.r.status);
            snprintf(detail, sizeof(detail), "%.200s: %s", name,
                     mc_status_str(o.r.status));
            mc_client_end(u->c, &o.q);
            continue;
        }
        sc->bytes.len = 0;
        rc = stats_read(u, &o, &sc->bytes, detail, sizeof(detail));
        if (rc != MC_OK) {
            if (!first)
                first = mc_err_str(rc);
            continue;
        }
        stats_push(L, &sc->bytes); /* Lua may run: the list may change */
        lua_setfield(L, 4, name);
        ok++;
    }
    scratch_return(u, sc);
    if (!ok)
        return fail(L, ERR(NO_STATS), detail);
    lua_settop(L, 4);
    if (first) {
        lua_pushstring(L, first);
        return 2;
    }
    return 1;
}

