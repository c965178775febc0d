/*
 * lmc_batch: the multi-key batches (get_multi, set_multi, delete_multi),
 * and the batch run that lmc_every.c's calls to every server share.
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

/* Runs one pipelined batch of n requests over the servers in sc->srv: the
 * I/O phase of a batch method, in which no Lua runs (the callbacks only
 * record into the call's scratch). Fails every request when the client
 * was closed or its server list rebuilt since the servers were picked
 * (gen: Lua code run while the call prepared did it). since: when the
 * I/O budget starts (mc_batch.since; 0: at the batch). MC_OK, or
 * MC_ERR_NOMEM. */
int run_batch(lmc_client *u, lmc_scratch *sc, size_t n,
                     unsigned long gen, double since, int every_reply,
                     int (*encode)(void *, size_t, mc_buf *, uint32_t),
                     int (*reply)(void *, size_t, const mc_resp *),
                     void (*failed)(void *, size_t, int, const char *),
                     void (*revoke)(void *, size_t, int, const char *),
                     void *ud)
{
    mc_batch b;
    size_t i;
    if (n == 0)
        return MC_OK;
    if (u->closed || mc_client_gen(u->c) != gen) {
        int err = u->closed ? MC_ERR_CLIENT_CLOSED : MC_ERR_NO_SERVERS;
        for (i = 0; i < n; i++)
            if (sc->srv[i] >= 0)
                failed(ud, i, err, u->closed
                                       ? "the client was closed"
                                       : "the server list changed while "
                                         "the call was being prepared");
        return MC_OK;
    }
    b.n = n;
    b.server = sc->srv;
    b.encode = encode;
    b.reply = reply;
    b.fail = failed;
    b.revoke = revoke;
    b.every_reply = every_reply;
    b.ud = ud;
    b.codec = mc_client_codec(u->c);
    b.since = since;
    return mc_client_batch(u->c, &b);
}

/* Copies bytes into the call's arena; their offset in *off. 0, or -1 when
 * out of memory. */
int arena_add(lmc_scratch *sc, const char *p, size_t n, size_t *off)
{
    *off = sc->bytes.len;
    return mc_buf_append(&sc->bytes, p, n);
}

/* ---- get_multi ---- */

typedef struct multi {
    lmc_client *u;
    lmc_scratch *sc;
    const mc_codec *codec; /* frames the requests */
    int kbase;   /* stack index of key 0's string (the call's keys) */
    int ktab;    /* or of a private table holding them, 1-based */
    uint32_t exptime; /* set_multi */
} multi;

/* The call keeps its key strings (the batch points into them) on its own
 * stack, or, when the stack cannot grow that far, in a private table:
 * whatever a finalizer does to the caller's table, they live until the
 * call ends. keys_begin makes room for n of them; keys_add keeps the
 * string on top of the stack (left in place, or moved into the table), in
 * key order; key_push pushes key i's string again. */
static void keys_begin(lua_State *L, multi *m, size_t n)
{
    m->kbase = m->ktab = 0;
    if (n < 100000 && lua_checkstack(L, (int)n + 40)) {
        m->kbase = lua_gettop(L) + 1;
    } else {
        lua_createtable(L, n < 100000000 ? (int)n : 0, 0);
        m->ktab = lua_gettop(L);
    }
}

static void keys_add(lua_State *L, multi *m, size_t i)
{
    if (m->ktab)
        lmc_rawseti(L, m->ktab, (lua_Integer)i + 1);
}

static void key_push(lua_State *L, const multi *m, size_t i)
{
    if (m->ktab)
        lmc_rawgeti(L, m->ktab, (lua_Integer)i + 1);
    else
        lua_pushvalue(L, m->kbase + (int)i);
}

/* A key's failure in the I/O phase: recorded, pushed afterwards. */
static void key_failed(void *ud, size_t i, int err, const char *msg)
{
    multi *m = ud;
    (void)msg;
    m->sc->keys[i].err = mc_err_str(err);
}

static int multi_get_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    multi *m = ud;
    return m->codec->get(out, MC_OP_GETK, opaque, m->sc->keys[i].key,
                      m->sc->keys[i].len);
}

/* A reply to key i: a hit's value is copied into the call's arena. */
static int multi_get_reply(void *ud, size_t i, const mc_resp *r)
{
    multi *m = ud;
    struct bkey *k = &m->sc->keys[i];
    /* GETK, not GETKQ: every key gets a reply, hits and misses naming
     * their key, in order. A reply under another pending request's opaque,
     * or a value that swallowed the replies after it, then breaks the
     * batch instead of handing one key's value to another. */
    if (!mc_reply_key_ok(r->status, r->key, r->keylen, k->key, k->len))
        return -1;
    if (r->status != MC_STATUS_OK) {
        if (r->status != MC_STATUS_KEY_ENOENT)
            k->err = status_name(MC_KIND_GET, r->status);
        return 0;
    }
    if (is_lock(r))
        return 0;
    if (arena_add(m->sc, r->value, r->vallen, &k->voff) != 0) {
        k->err = ERR(NOMEM);
        return 0;
    }
    k->vlen = r->vallen;
    k->flags = r->flags;
    k->got = 1;
    return 0;
}

/* A hit from a server whose stream broke: dropped, the key reported. */
static void multi_revoke(void *ud, size_t i, int err, const char *msg)
{
    multi *m = ud;
    m->sc->keys[i].got = 0;
    key_failed(ud, i, err, msg);
}

/* Checks the keys table and fills the call's key list and servers.
 * Returns the count, or pushes a failure and returns -(values pushed). A
 * key whose server cannot be picked is a failure of its own. */
static long multi_keys(lua_State *L, lmc_client *u, int t, multi *m)
{
    size_t n = lua_rawlen(L, t), i;
    lmc_scratch *sc = m->sc;
    if (scratch_grow(sc, n + 1) != 0)
        return -fail(L, ERR(NOMEM), "out of memory");
    keys_begin(L, m, n);
    for (i = 0; i < n; i++) {
        struct bkey *k = &sc->keys[i];
        if (lmc_rawgeti(L, t, (lua_Integer)i + 1) != LUA_TSTRING) {
            scratch_return(u, sc);
            luaL_error(L, "bad argument #1 (keys): key #%d is a %s, not a "
                          "string", (int)i + 1, luaL_typename(L, -1));
        }
        k->key = lua_tolstring(L, -1, &k->len);
        k->err = NULL;
        k->got = 0;
        if (!mc_key_ok(k->key, k->len)) {
            char d[80];
            snprintf(d, sizeof(d), "key #%d is malformed; nothing was sent",
                     (int)i + 1);
            return -fail(L, ERR(MALFORMED_KEY), d);
        }
        keys_add(L, m, i);
    }
    if (u->sel_mode == SEL_BUILTIN && mc_client_single(u->c) >= 0) {
        /* one live server: every key goes there, no per-key pick */
        int only = mc_client_single(u->c);
        for (i = 0; i < n; i++)
            sc->srv[i] = only;
        return (long)n;
    }
    for (i = 0; i < n; i++) {
        const char *ename = NULL;
        sc->srv[i] = pick(L, u, sc->keys[i].key, sc->keys[i].len, &ename, 1);
        if (sc->srv[i] < 0)
            sc->keys[i].err = ename;
    }
    return (long)n;
}

/* How many of keys from..n-1 failed (a hit may still fail to decode: not
 * counted; the table grows for those). */
static size_t count_failed(const multi *m, size_t from, size_t n)
{
    size_t i, k = 0;
    for (i = from; i < n; i++)
        k += m->sc->keys[i].err != NULL && !m->sc->keys[i].got;
    return k + 1;
}

/* Pushes the results of get_multi from the call's scratch: the values
 * into the table at `result`, failures into a table made at `failed` on
 * first use. Returns the first failure, or NULL. */
static const char *multi_results(lua_State *L, multi *m, size_t n,
                                 int result, int failed)
{
    const char *first = NULL;
    size_t i;
    char err[200];
    for (i = 0; i < n; i++) {
        const struct bkey *k = &m->sc->keys[i];
        const char *e = k->err;
        if (k->got) {
            mc_resp r;
            memset(&r, 0, sizeof(r));
            r.value = m->sc->bytes.data + k->voff;
            r.vallen = k->vlen;
            r.flags = k->flags;
            key_push(L, m, i); /* the caller's string: no copy, no hash */
            if (push_value(L, m->u, &r, err, sizeof(err))) {
                lua_rawset(L, result);
                continue;
            }
            lua_pop(L, 1);
            e = ERR(UNDECODABLE);
        }
        if (!e)
            continue;
        if (!first)
            first = e;
        if (lua_isnil(L, failed)) {
            /* sized once: a timed-out batch of 100k keys fails them all */
            lua_createtable(L, 0, (int)count_failed(m, i, n));
            lua_replace(L, failed);
        }
        key_push(L, m, i);
        lua_pushstring(L, e);
        lua_rawset(L, failed);
    }
    return first;
}

/* get_multi(keys) -> {key = value}; on partial failure also err and
 * {key = err} for the keys that got no answer. */
int m_get_multi(lua_State *L)
{
    lmc_client *u = self(L);
    multi m;
    long n;
    unsigned long gen;
    const char *first;
    double since, probes;

    luaL_checktype(L, 2, LUA_TTABLE);
    CLOSED_CHECK(L, u);
    since = mc_now();
    probes = mc_client_probe_seconds(u->c);
    lua_settop(L, 2);
    /* sized for all hits: growing it costs more than a miss wastes */
    lua_createtable(L, 0, (int)lua_rawlen(L, 2)); /* 3: results */
    lua_pushnil(L);  /* 4: failures, created on first use */
    m.u = u;
    m.codec = mc_client_codec(u->c);
    m.sc = scratch_lend(L, u); /* 5 */
    m.sc->bytes.len = 0;
    gen = mc_client_gen(u->c);
    n = multi_keys(L, u, 2, &m);
    if (n < 0) {
        scratch_return(u, m.sc);
        return (int)-n;
    }
    /* the budget counts from the call's start, less its probes: checking
     * and placing 100k keys takes 10-15 ms of it */
    since += mc_client_probe_seconds(u->c) - probes;
    if (run_batch(u, m.sc, (size_t)n, gen, since, 1, multi_get_enc,
                  multi_get_reply, key_failed, multi_revoke, &m) != MC_OK) {
        scratch_return(u, m.sc);
        return fail(L, ERR(NOMEM), "out of memory");
    }
    first = multi_results(L, &m, (size_t)n, 3, 4);
    scratch_return(u, m.sc);
    if (!first) {
        lua_settop(L, 3);
        return 1;
    }
    lua_settop(L, 4);
    lua_pushstring(L, first);
    lua_insert(L, 4); /* results, err, failures */
    return 3;
}

/* ---- set_multi / delete_multi ----
 * Quiet opcodes closed by one NOOP per server: only failures answer. The
 * results table starts with true for every key sent and the error of
 * every key that could not be (the caller's key string is the table's
 * key, which keeps it alive for the call); failures of the I/O phase
 * overwrite their key's entry afterwards. */

static int setq_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    multi *m = ud;
    const struct bkey *k = &m->sc->keys[i];
    return m->codec->store(out, MC_OP_SETQ, opaque, 0, k->key, k->len,
                         m->u->mp_flag, m->exptime, k->hdr, k->hlen,
                         k->vptr ? k->vptr : m->sc->bytes.data + k->voff,
                         k->vlen);
}

static int deleteq_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    multi *m = ud;
    const struct bkey *k = &m->sc->keys[i];
    return m->codec->del(out, MC_OP_DELETEQ, opaque, 0, k->key, k->len);
}

static int quiet_reply_set(void *ud, size_t i, const mc_resp *r)
{
    multi *m = ud;
    if (r->status != MC_STATUS_OK)
        m->sc->keys[i].err = status_name(MC_KIND_SET, r->status);
    return 0;
}

static int quiet_reply_delete(void *ud, size_t i, const mc_resp *r)
{
    multi *m = ud;
    if (r->status != MC_STATUS_OK)
        m->sc->keys[i].err = status_name(MC_KIND_GET, r->status);
    return 0;
}

/* Key i (its string at stack index kidx) goes to its server and reads true
 * in the results; or, when its server cannot be picked or err is given,
 * reads its error. */
static void quiet_place(lua_State *L, multi *m, size_t i, int kidx,
                        const char *err, int result)
{
    struct bkey *k = &m->sc->keys[i];
    m->sc->srv[i] = -1;
    if (!err) {
        m->sc->srv[i] = pick(L, m->u, k->key, k->len, &err, 1);
        if (m->sc->srv[i] < 0)
            m->sc->srv[i] = -1;
    }
    k->err = err;
    lua_pushvalue(L, kidx); /* the caller's string: no re-interning */
    if (err)
        lua_pushstring(L, err);
    else
        lua_pushboolean(L, 1);
    lua_rawset(L, result);
}

/* The I/O phase and the results of set_multi/delete_multi (results table
 * at 3). */
static int quiet_finish(lua_State *L, multi *m, size_t n, unsigned long gen,
                        int (*enc)(void *, size_t, mc_buf *, uint32_t),
                        int (*reply)(void *, size_t, const mc_resp *))
{
    const char *first = NULL;
    size_t i;
    lmc_client *u = m->u;
    if (run_batch(u, m->sc, n, gen, 0, 0, enc, reply, key_failed, key_failed,
                  m) != MC_OK) {
        scratch_return(u, m->sc);
        return fail(L, ERR(NOMEM), "out of memory");
    }
    for (i = 0; i < n; i++) {
        const struct bkey *k = &m->sc->keys[i];
        if (!k->err)
            continue;
        if (!first)
            first = k->err;
        if (m->sc->srv[i] < 0)
            continue; /* its error is in the results already */
        lua_pushlstring(L, k->key, k->len); /* kept by the results */
        lua_pushstring(L, k->err);
        lua_rawset(L, 3);
    }
    scratch_return(u, m->sc);
    lua_settop(L, 3);
    if (!first)
        return 1;
    lua_pushstring(L, first);
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
    unsigned long gen;
    char err[200];

    luaL_checktype(L, 2, LUA_TTABLE);
    memset(&m, 0, sizeof(m));
    m.exptime = check_exptime(L, opt_integer(L, 3, "expiration", 0),
                              "expiration");
    CLOSED_CHECK(L, u);
    lua_settop(L, 2);
    lua_createtable(L, 0, 0); /* 3: results */
    /* 4: the string values sent in place (vptr), kept alive whatever a
     * finalizer does to items; keys are kept by the results */
    lua_createtable(L, 0, 0);
    m.u = u;
    m.codec = mc_client_codec(u->c);
    m.sc = scratch_lend(L, u); /* 5 */
    m.sc->bytes.len = 0;
    gen = mc_client_gen(u->c);
    lua_pushnil(L);
    while (lua_next(L, 2)) {
        struct bkey *k;
        const char *bad = NULL;
        if (lua_type(L, -2) != LUA_TSTRING) {
            scratch_return(u, m.sc);
            luaL_error(L, "bad argument #1 (items): keys must be strings, "
                          "got %s", luaL_typename(L, -2));
        }
        if (scratch_grow(m.sc, i + 1) != 0) {
            scratch_return(u, m.sc);
            return fail(L, ERR(NOMEM), "out of memory");
        }
        k = &m.sc->keys[i];
        k->key = lua_tolstring(L, -2, &k->len);
        k->vptr = NULL;
        k->hlen = 0;
        k->vlen = 0;
        if (!mc_key_ok(k->key, k->len)) {
            bad = ERR(MALFORMED_KEY);
        } else if (lua_type(L, -1) == LUA_TSTRING) {
            k->vptr = lua_tolstring(L, -1, &k->vlen);
            k->hlen = (unsigned char)str_header(k->hdr, k->vlen);
            lua_pushvalue(L, -1);
            lmc_rawseti(L, 4, (lua_Integer)i + 1);
        } else {
            k->voff = m.sc->bytes.len;
            if (lmc_value_encode(L, u->vctx, -1, &m.sc->bytes, err,
                                 sizeof(err)) != 0)
                bad = ERR(UNENCODABLE);
            else
                k->vlen = m.sc->bytes.len - k->voff;
        }
        if (!bad && k->vlen + k->hlen > u->max_value)
            bad = ERR(TOO_LARGE);
        quiet_place(L, &m, i, lua_gettop(L) - 1, bad, 3);
        lua_pop(L, 1);
        i++;
    }
    return quiet_finish(L, &m, i, gen, setq_enc, quiet_reply_set);
}

/* delete_multi(keys) -> {key = true | err}[, first err] */
int m_delete_multi(lua_State *L)
{
    lmc_client *u = self(L);
    multi m;
    size_t n, i;
    unsigned long gen;

    luaL_checktype(L, 2, LUA_TTABLE);
    CLOSED_CHECK(L, u);
    memset(&m, 0, sizeof(m));
    lua_settop(L, 2);
    n = lua_rawlen(L, 2);
    lua_createtable(L, 0, (int)n); /* 3: results */
    lua_pushnil(L);                /* 4: (set_multi's values) */
    m.u = u;
    m.codec = mc_client_codec(u->c);
    m.sc = scratch_lend(L, u);     /* 5 */
    gen = mc_client_gen(u->c);
    if (scratch_grow(m.sc, n + 1) != 0) {
        scratch_return(u, m.sc);
        return fail(L, ERR(NOMEM), "out of memory");
    }
    keys_begin(L, &m, n);
    for (i = 0; i < n; i++) {
        struct bkey *k = &m.sc->keys[i];
        if (lmc_rawgeti(L, 2, (lua_Integer)i + 1) != LUA_TSTRING) {
            scratch_return(u, m.sc);
            luaL_error(L, "bad argument #1 (keys): key #%d is a %s, not a "
                          "string", (int)i + 1, luaL_typename(L, -1));
        }
        k->key = lua_tolstring(L, -1, &k->len); /* kept below */
        k->err = NULL;
        m.sc->srv[i] = -1;
        lua_pushvalue(L, -1);
        lua_rawget(L, 3);
        if (!lua_isnil(L, -1)) {
            /* a repeated key is deleted once: a second DELETEQ would
             * turn its success into a miss */
        } else {
            quiet_place(L, &m, i, lua_gettop(L) - 1,
                        mc_key_ok(k->key, k->len) ? NULL : ERR(MALFORMED_KEY),
                        3);
        }
        lua_pop(L, 1); /* the key stays on top */
        keys_add(L, &m, i);
    }
    return quiet_finish(L, &m, n, gen, deleteq_enc, quiet_reply_delete);
}
