/*
 * lmc_batch: calls to every server (ping, flush, version, stats) and the
 * multi-key batches (get_multi, set_multi, delete_multi).
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

/* Grows the per-call scratch arrays (keys, servers) to n entries. */
static int grow_keys(lmc_client *u, size_t n)
{
    struct bkey *k;
    int *s;
    if (u->capkeys >= n)
        return 0;
    if (n < 2 * u->capkeys)
        n = 2 * u->capkeys;
    k = realloc(u->keys, n * sizeof(*k));
    if (!k)
        return -1;
    u->keys = k;
    s = realloc(u->srv, n * sizeof(*s));
    if (!s)
        return -1;
    u->srv = s;
    u->capkeys = n;
    return 0;
}

/* Runs one pipelined batch of n requests over the servers in u->srv.
 * MC_OK, or MC_ERR_NOMEM. */
static int run_batch(lmc_client *u, size_t n, int every_reply,
                     int (*encode)(void *, size_t, mc_buf *, uint32_t),
                     int (*reply)(void *, size_t, const mc_resp *),
                     void (*failed)(void *, size_t, int, const char *),
                     void (*revoke)(void *, size_t, int, const char *),
                     void *ud)
{
    mc_batch b;
    if (n == 0)
        return MC_OK;
    b.n = n;
    b.server = u->srv;
    b.encode = encode;
    b.reply = reply;
    b.fail = failed;
    b.revoke = revoke;
    b.every_reply = every_reply;
    b.ud = ud;
    return mc_client_batch(u->c, &b);
}

/* ---- every server ----
 * ping, flush and version send one request to every server in one batch:
 * all servers are written before any is read, so a slow server costs one
 * timeout, not one per server. stats stays one server at a time: its reply
 * is a stream of packets under one opaque. */

typedef struct each {
    lua_State *L;
    lmc_client *u;
    uint8_t opcode;
    uint32_t delay;    /* flush */
    int values;        /* stack index of {addr = version}, or 0 */
    int failures;      /* stack index of {addr = detail} */
    const char *first; /* first error constant */
} each;

static int each_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    each *e = ud;
    (void)i;
    if (e->opcode == MC_OP_FLUSH)
        return mc_enc_flush(out, MC_OP_FLUSH, opaque, e->delay);
    return mc_enc_simple(out, e->opcode, opaque);
}

static void each_failed(each *e, size_t i, const char *err,
                        const char *detail)
{
    if (!e->first)
        e->first = err;
    lua_pushstring(e->L, detail);
    lua_setfield(e->L, e->failures, e->u->c->servers[i]->name);
}

static int each_reply(void *ud, size_t i, const mc_resp *r)
{
    each *e = ud;
    const char *name = e->u->c->servers[i]->name;
    if (r->opcode != e->opcode)
        return -1;
    if (r->status != MC_STATUS_OK) {
        char d[200];
        snprintf(d, sizeof(d), "%s: %s", name, mc_status_str(r->status));
        each_failed(e, i, status_name(MC_KIND_OTHER, r->status), d);
    } else if (e->values) {
        lua_pushlstring(e->L, r->value, r->vallen);
        lua_setfield(e->L, e->values, name);
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
    if (e->values) {
        lua_pushnil(e->L);
        lua_setfield(e->L, e->values, e->u->c->servers[i]->name);
    }
    each_failed(e, i, mc_err_str(err), msg);
}

/* Runs the batch; leaves the failures table at the top of the stack and
 * returns how many servers failed, or -1 when out of memory. */
static int each_server(lua_State *L, lmc_client *u, each *e)
{
    size_t i, n = u->c->nservers;
    lua_newtable(L);
    e->L = L;
    e->u = u;
    e->failures = lua_gettop(L);
    e->first = NULL;
    if (grow_keys(u, n + 1) != 0)
        return -1;
    for (i = 0; i < n; i++)
        u->srv[i] = (int)i;
    if (run_batch(u, n, 1, each_enc, each_reply, each_fail, each_revoke, e) !=
        MC_OK)
        return -1;
    return e->first != NULL;
}

/* ping/flush: true, or nil, err, {addr = detail}. */
static int all_simple(lua_State *L, lmc_client *u, uint8_t opcode,
                      uint32_t delay)
{
    each e;
    int rc;
    CLOSED_CHECK(L, u);
    if (u->c->nservers == 0)
        return fail(L, ERR(NO_SERVERS), "no servers configured");
    memset(&e, 0, sizeof(e));
    e.opcode = opcode;
    e.delay = delay;
    rc = each_server(L, u, &e);
    if (rc < 0)
        return fail(L, ERR(NOMEM), "out of memory");
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    lua_pushnil(L);
    lua_insert(L, -2);
    lua_pushstring(L, e.first);
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
    int rc;
    CLOSED_CHECK(L, u);
    if (u->c->nservers == 0)
        return fail(L, ERR(NO_SERVERS), "no servers configured");
    memset(&e, 0, sizeof(e));
    e.opcode = MC_OP_VERSION;
    lua_newtable(L);
    e.values = lua_gettop(L);
    rc = each_server(L, u, &e);
    if (rc < 0)
        return fail(L, ERR(NOMEM), "out of memory");
    lua_pop(L, 1); /* failures */
    if (rc == 0)
        return 1;
    lua_pushnil(L);
    if (lua_next(L, e.values) == 0) { /* nobody answered */
        lua_pushnil(L);
        lua_pushstring(L, e.first);
        lua_pushstring(L, u->c->errmsg);
        return 3;
    }
    lua_pop(L, 2);
    lua_pushstring(L, e.first);
    return 2;
}

/* One request to one server, for stats. Returns MC_OK with o->r filled
 * (the connection still held), or an error (message in errmsg). */
static int server_call(lmc_client *u, int i, op *o, const char *group,
                       size_t glen)
{
    int err = MC_OK;
    o->u = u;
    o->srv = i;
    o->out = mc_client_begin(u->c, i, &o->opaque, &err);
    if (!o->out)
        return err;
    if (mc_enc_stat(o->out, o->opaque, group, glen) != 0) {
        mc_client_abort(u->c);
        snprintf(u->c->errmsg, sizeof(u->c->errmsg), "out of memory");
        return MC_ERR_NOMEM;
    }
    return mc_client_exec(u->c, &o->r);
}

/* The most entries one server's stats reply may hold: memcached sends a
 * few hundred ("stats items" on a full server ~1,400; "stats conns" 4 per
 * open connection). */
#define MAX_STAT_ENTRIES 100000

/* stats([group]) -> {addr = {name = value}}; a server that fails is left
 * out and the first error is the second result; nil, ERR_NO_STATS when no
 * server answered. */
int m_stats(lua_State *L)
{
    lmc_client *u = self(L);
    const char *group = NULL;
    size_t glen = 0, i, ok = 0;
    const char *first = NULL;
    if (!lua_isnoneornil(L, 2))
        group = luaL_checklstring(L, 2, &glen);
    /* the group travels as the request's key: 16 bits of length */
    if (glen > 65535)
        luaL_error(L, "bad argument #1 (group): longer than 65535 bytes");
    CLOSED_CHECK(L, u);
    if (u->c->nservers == 0)
        return fail(L, ERR(NO_SERVERS), "no servers configured");
    u->c->errmsg[0] = '\0';
    lua_newtable(L);
    for (i = 0; i < u->c->nservers; i++) {
        op o;
        long nent;
        int rc = server_call(u, (int)i, &o, group, glen);
        if (rc != MC_OK) {
            if (!first)
                first = mc_err_str(rc);
            continue;
        }
        if (o.r.status != MC_STATUS_OK) {
            if (!first)
                first = status_name(MC_KIND_OTHER, o.r.status);
            snprintf(u->c->errmsg, sizeof(u->c->errmsg), "%s: %s",
                     u->c->servers[i]->name, mc_status_str(o.r.status));
            mc_client_end(u->c);
            continue;
        }
        lua_newtable(L);
        nent = 0;
        while (o.r.keylen > 0) {
            if (++nent > MAX_STAT_ENTRIES) {
                /* a server that streams entries forever must not grow the
                 * table forever: the rest is not read, the connection goes */
                mc_client_abort(u->c);
                snprintf(u->c->errmsg, sizeof(u->c->errmsg),
                         "%s: more than %d stat entries in one reply",
                         u->c->servers[i]->name, MAX_STAT_ENTRIES);
                rc = MC_ERR_PROTOCOL;
                break;
            }
            lua_pushlstring(L, o.r.key, o.r.keylen);
            lua_pushlstring(L, o.r.value, o.r.vallen);
            lua_rawset(L, -3);
            rc = mc_client_next(u->c, &o.r);
            if (rc != MC_OK)
                break;
        }
        if (rc != MC_OK) {
            lua_pop(L, 1);
            if (!first)
                first = mc_err_str(rc);
            continue;
        }
        lua_setfield(L, -2, u->c->servers[i]->name);
        mc_client_end(u->c);
        ok++;
    }
    if (!ok) {
        lua_pop(L, 1);
        return fail(L, ERR(NO_STATS), u->c->errmsg);
    }
    if (first) {
        lua_pushstring(L, first);
        return 2;
    }
    return 1;
}

/* ---- get_multi ---- */

typedef struct multi {
    lua_State *L;
    lmc_client *u;
    int kbase;   /* stack index of key 0's string (anchored keys) */
    int ktab;    /* or of a private table holding them, 1-based */
    int result;  /* stack index of the results table */
    int failed;  /* stack index of the failures table (or nil) */
    const char *first;
    uint32_t exptime; /* set_multi */
} multi;


/* The strings a batch points into (u->keys) must live until it ends, even
 * if a finalizer run by an allocation during the call rewrites the
 * caller's table. anchor_begin makes room for n of them on the stack, or,
 * when the stack cannot grow that far, a private table; anchor_add then
 * anchors the string on top of the stack (left in place, or moved into
 * the table), in key order; anchor_push pushes key i's string again. */
static void anchor_begin(lua_State *L, multi *m, size_t n)
{
    m->kbase = m->ktab = 0;
    if (n < 100000 && lua_checkstack(L, (int)n + 40)) {
        m->kbase = lua_gettop(L) + 1;
    } else {
        lua_createtable(L, n < 100000000 ? (int)n : 0, 0);
        m->ktab = lua_gettop(L);
    }
}

static void anchor_add(lua_State *L, multi *m, size_t i)
{
    if (m->ktab)
        lmc_rawseti(L, m->ktab, (lua_Integer)i + 1);
}

static void anchor_push(lua_State *L, multi *m, size_t i)
{
    if (m->ktab)
        lmc_rawgeti(L, m->ktab, (lua_Integer)i + 1);
    else
        lua_pushvalue(L, m->kbase + (int)i);
}

static void multi_failed(multi *m, size_t i, const char *err)
{
    lua_State *L = m->L;
    if (!m->first)
        m->first = err;
    if (lua_isnil(L, m->failed)) {
        lua_newtable(L);
        lua_replace(L, m->failed);
    }
    anchor_push(L, m, i); /* the caller's string: no copy, no new hash */
    lua_pushstring(L, err);
    lua_rawset(L, m->failed);
}

static int multi_get_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    multi *m = ud;
    return mc_enc_get(out, MC_OP_GETK, opaque, m->u->keys[i].key,
                      m->u->keys[i].len);
}

static int multi_get_reply(void *ud, size_t i, const mc_resp *r)
{
    multi *m = ud;
    lua_State *L = m->L;
    char err[200];
    const struct bkey *k = &m->u->keys[i];
    /* GETK, not GETKQ: every key gets a reply, hits and misses naming
     * their key, in order. A reply under another pending request's opaque,
     * or a value that swallowed the replies after it, then breaks the
     * batch instead of handing one key's value to another. */
    if (!mc_reply_key_ok(r->status, r->key, r->keylen, k->key, k->len))
        return -1;
    if (r->status != MC_STATUS_OK) {
        if (r->status != MC_STATUS_KEY_ENOENT)
            multi_failed(m, i, status_name(MC_KIND_GET, r->status));
        return 0;
    }
    if (is_lock(r))
        return 0;
    anchor_push(L, m, i); /* the caller's string */
    if (!push_value(L, m->u, r, err, sizeof(err))) {
        lua_pop(L, 1);
        multi_failed(m, i, ERR(UNDECODABLE));
        return 0;
    }
    lua_rawset(L, m->result);
    return 0;
}

static void multi_fail(void *ud, size_t i, int err, const char *msg)
{
    (void)msg;
    multi_failed(ud, i, mc_err_str(err));
}

/* A hit from a server whose stream then broke: drop it, report the key. */
static void multi_revoke(void *ud, size_t i, int err, const char *msg)
{
    multi *m = ud;
    (void)msg;
    anchor_push(m->L, m, i);
    lua_pushnil(m->L);
    lua_rawset(m->L, m->result);
    multi_failed(m, i, mc_err_str(err));
}

/* Checks the keys table and fills the key scratch. Returns the count, or
 * pushes a failure and returns -(values pushed). Keys go to servers as the
 * selector says; a key whose server cannot be picked is a failure of its
 * own. */
static long multi_keys(lua_State *L, lmc_client *u, int t, multi *m)
{
    size_t n = lua_rawlen(L, t), i;
    if (grow_keys(u, n + 1) != 0)
        return -fail(L, ERR(NOMEM), "out of memory");
    anchor_begin(L, m, n);
    for (i = 0; i < n; i++) {
        if (lmc_rawgeti(L, t, (lua_Integer)i + 1) != LUA_TSTRING) {
            luaL_error(L, "bad argument #1 (keys): key #%d is a %s, not a "
                          "string", (int)i + 1, luaL_typename(L, -1));
        }
        u->keys[i].key = lua_tolstring(L, -1, &u->keys[i].len);
        if (!mc_key_ok(u->keys[i].key, u->keys[i].len)) {
            char d[80];
            snprintf(d, sizeof(d), "key #%d is malformed; nothing was sent",
                     (int)i + 1);
            return -fail(L, ERR(MALFORMED_KEY), d);
        }
        anchor_add(L, m, i);
    }
    if (u->sel_mode == SEL_BUILTIN && mc_client_single(u->c) >= 0) {
        /* one live server: every key goes there, no per-key pick */
        int only = mc_client_single(u->c);
        for (i = 0; i < n; i++)
            u->srv[i] = only;
        return (long)n;
    }
    for (i = 0; i < n; i++) {
        const char *ename = NULL;
        u->srv[i] = pick(L, u, u->keys[i].key, u->keys[i].len, &ename, 1);
        if (u->srv[i] < 0)
            multi_failed(m, i, ename);
    }
    return (long)n;
}

/* get_multi(keys) -> {key = value}; on partial failure also err and
 * {key = err} for the keys that got no answer. */
int m_get_multi(lua_State *L)
{
    lmc_client *u = self(L);
    multi m;
    long n;

    luaL_checktype(L, 2, LUA_TTABLE);
    CLOSED_CHECK(L, u);
    lua_settop(L, 2);
    /* sized for all hits: growing it costs more than a miss wastes */
    lua_createtable(L, 0, (int)lua_rawlen(L, 2)); /* 3: results */
    lua_pushnil(L);  /* 4: failures, created on first use */
    m.L = L;
    m.u = u;
    m.result = 3;
    m.failed = 4;
    m.first = NULL;
    n = multi_keys(L, u, 2, &m);
    if (n < 0)
        return (int)-n;
    if (run_batch(u, (size_t)n, 1, multi_get_enc, multi_get_reply, multi_fail,
                  multi_revoke, &m) != MC_OK)
        return fail(L, ERR(NOMEM), "out of memory");
    if (!m.first) {
        lua_settop(L, 3);
        return 1;
    }
    lua_settop(L, 4);
    lua_pushstring(L, m.first);
    lua_insert(L, 4); /* results, err, failures */
    return 3;
}

/* ---- set_multi / delete_multi ----
 * Quiet opcodes closed by one NOOP per server: only failures answer. The
 * results table starts with true for every key sent, and failures
 * overwrite their key's entry. */

static void result_set(multi *m, size_t i, const char *err)
{
    lua_State *L = m->L;
    if (!m->first)
        m->first = err;
    lua_pushlstring(L, m->u->keys[i].key, m->u->keys[i].len);
    lua_pushstring(L, err);
    lua_rawset(L, m->result);
}

static int setq_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    multi *m = ud;
    const struct bkey *k = &m->u->keys[i];
    return mc_enc_store2(out, MC_OP_SETQ, opaque, 0, k->key, k->len,
                         m->u->mp_flag, m->exptime, k->hdr, k->hlen,
                         k->vptr ? k->vptr : m->u->val.data + k->voff,
                         k->vlen);
}

static int deleteq_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    multi *m = ud;
    const struct bkey *k = &m->u->keys[i];
    return mc_enc_delete(out, MC_OP_DELETEQ, opaque, 0, k->key, k->len);
}

static int quiet_reply_set(void *ud, size_t i, const mc_resp *r)
{
    if (r->status != MC_STATUS_OK)
        result_set(ud, i, status_name(MC_KIND_SET, r->status));
    return 0;
}

static int quiet_reply_delete(void *ud, size_t i, const mc_resp *r)
{
    if (r->status != MC_STATUS_OK)
        result_set(ud, i, status_name(MC_KIND_GET, r->status));
    return 0;
}

static void quiet_fail(void *ud, size_t i, int err, const char *msg)
{
    (void)msg;
    result_set(ud, i, mc_err_str(err));
}

/* Sends key i (its key string at stack index kidx) to its server and
 * marks it true in the results, or records why it cannot be sent. */
static void quiet_place(lua_State *L, lmc_client *u, multi *m, size_t i,
                        int kidx)
{
    const char *ename = NULL;
    u->srv[i] = pick(L, u, u->keys[i].key, u->keys[i].len, &ename, 1);
    if (u->srv[i] < 0) {
        u->srv[i] = -1;
        result_set(m, i, ename);
        return;
    }
    lua_pushvalue(L, kidx); /* the caller's string: no re-interning */
    lua_pushboolean(L, 1);
    lua_rawset(L, m->result);
}

static int quiet_finish(lua_State *L, lmc_client *u, multi *m, size_t n,
                        int (*enc)(void *, size_t, mc_buf *, uint32_t),
                        int (*reply)(void *, size_t, const mc_resp *))
{
    if (run_batch(u, n, 0, enc, reply, quiet_fail, quiet_fail, m) != MC_OK)
        return fail(L, ERR(NOMEM), "out of memory");
    mc_buf_clear(&u->val, 1 << 20);
    lua_settop(L, m->result);
    if (!m->first)
        return 1;
    lua_pushstring(L, m->first);
    return 2;
}

/* set_multi(items [, exptime]) -> {key = true | err}[, first err].
 * items maps keys to values (msgpack-encoded like set). A bad key, an
 * unencodable or too large value fails that key alone. */
int m_set_multi(lua_State *L)
{
    lmc_client *u = self(L);
    multi m;
    size_t i = 0;
    char err[200];

    luaL_checktype(L, 2, LUA_TTABLE);
    memset(&m, 0, sizeof(m));
    m.exptime = check_exptime(L, opt_integer(L, 3, "expiration", 0),
                              "expiration");
    CLOSED_CHECK(L, u);
    lua_settop(L, 2);
    lua_createtable(L, 0, 0); /* 3: results */
    /* 4: the string values sent in place (vptr), kept alive whatever a
     * finalizer does to items; keys sent are kept by the results */
    lua_createtable(L, 0, 0);
    m.L = L;
    m.u = u;
    m.result = 3;
    u->val.len = 0;
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        struct bkey *k;
        const char *bad = NULL;
        if (lua_type(L, -2) != LUA_TSTRING) {
            luaL_error(L, "bad argument #1 (items): keys must be strings, "
                          "got %s", luaL_typename(L, -2));
        }
        if (grow_keys(u, i + 1) != 0)
            return fail(L, ERR(NOMEM), "out of memory");
        k = &u->keys[i];
        k->key = lua_tolstring(L, -2, &k->len); /* kept alive by items */
        k->vptr = NULL;
        k->hlen = 0;
        u->srv[i] = -1;
        if (!mc_key_ok(k->key, k->len)) {
            bad = ERR(MALFORMED_KEY);
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            k->vptr = lua_tolstring(L, -1, &k->vlen);
            k->hlen = (unsigned char)str_header(k->hdr, k->vlen);
            lua_pushvalue(L, -1);
            lmc_rawseti(L, 4, (lua_Integer)i + 1);
        } else {
            k->voff = u->val.len;
            if (lmc_value_encode(L, u->vctx, -1, &u->val, err,
                                 sizeof(err)) != 0)
                bad = ERR(UNENCODABLE);
            else
                k->vlen = u->val.len - k->voff;
        }
        if (!bad && k->vlen + k->hlen > u->max_value)
            bad = ERR(TOO_LARGE);
        if (bad)
            result_set(&m, i, bad);
        else
            quiet_place(L, u, &m, i, lua_gettop(L) - 1);
        lua_pop(L, 1);
        i++;
    }
    return quiet_finish(L, u, &m, i, setq_enc, quiet_reply_set);
}

/* delete_multi(keys) -> {key = true | err}[, first err] */
int m_delete_multi(lua_State *L)
{
    lmc_client *u = self(L);
    multi m;
    size_t n, i;

    luaL_checktype(L, 2, LUA_TTABLE);
    CLOSED_CHECK(L, u);
    memset(&m, 0, sizeof(m));
    lua_settop(L, 2);
    n = lua_rawlen(L, 2);
    lua_createtable(L, 0, (int)n); /* 3: results */
    m.L = L;
    m.u = u;
    m.result = 3;
    if (grow_keys(u, n + 1) != 0)
        return fail(L, ERR(NOMEM), "out of memory");
    anchor_begin(L, &m, n);
    for (i = 0; i < n; i++) {
        struct bkey *k = &u->keys[i];
        if (lmc_rawgeti(L, 2, (lua_Integer)i + 1) != LUA_TSTRING) {
            luaL_error(L, "bad argument #1 (keys): key #%d is a %s, not a "
                          "string", (int)i + 1, luaL_typename(L, -1));
        }
        k->key = lua_tolstring(L, -1, &k->len); /* anchored below */
        u->srv[i] = -1;
        lua_pushvalue(L, -1);
        lua_rawget(L, m.result);
        if (!lua_isnil(L, -1)) {
            /* a repeated key is deleted once: a second DELETEQ would
             * turn its success into a miss */
        } else if (!mc_key_ok(k->key, k->len)) {
            result_set(&m, i, ERR(MALFORMED_KEY));
        } else {
            quiet_place(L, u, &m, i, lua_gettop(L) - 1);
        }
        lua_pop(L, 1); /* the key stays on top */
        anchor_add(L, &m, i);
    }
    return quiet_finish(L, u, &m, n, deleteq_enc, quiet_reply_delete);
}
