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
#include "lmc_value.h"
#include "mc_client.h"
#include "mc_error.h"
#include "mc_item.h"
#include "mc_key.h"

#define CLIENT_MT "memcached.client"

/* Error values: short, stable strings from the one table (mc_error.h),
 * exported as memcached.ERR_*. */
#define ERR(name) mc_err_str(MC_ERR_##name)


enum sel_mode { SEL_BUILTIN, SEL_FUNCTION, SEL_OBJECT };

typedef struct lmc_client {
    uintptr_t cookie;    /* its own address ^ client_secret (check_client) */
    mc_client *c;        /* NULL once closed */
    lmc_vctx *vctx;
    mc_buf val;          /* encoded value scratch */
    uint32_t mp_flag;    /* flags that mark msgpack values */
    size_t max_value;    /* larger values are refused before sending */
    int cb_ref;          /* server-error callback, LUA_NOREF when none */
    int sel_ref;         /* custom selector */
    enum sel_mode sel_mode;
    int busy;            /* a call holds connections/scratch (see guarded) */
    unsigned lock_token; /* bumped by each call that sets busy */
    int close_pending;   /* close() asked for during a call */
    /* batch scratch */
    struct bkey {
        const char *key;
        size_t len;
        size_t voff, vlen; /* set_multi: the value, at vptr (a Lua string
                              framed with hdr) or at val.data + voff */
        const char *vptr;
        unsigned char hdr[5], hlen;
    } *keys;
    int *srv;
    size_t capkeys;
} lmc_client;

/* ---- helpers ---- */

/* The client of a method that guarded() already checked. */
static lmc_client *self(lua_State *L)
{
    return lua_touserdata(L, 1);
}

/* Every client carries a cookie, its own address mixed with a secret
 * drawn once per process; a full userdata of the client's size whose first
 * word is that cookie is a client. Checked in that order (the size first,
 * so a smaller or light userdata is never read), it costs two API calls
 * instead of luaL_checkudata's metatable fetch and registry lookup (~160
 * instructions of a ~2,200-instruction get). Anything else goes through
 * luaL_checkudata, which raises the usual error. */
static uintptr_t client_secret;

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

static lmc_client *check_client(lua_State *L)
{
    lmc_client *u = lua_touserdata(L, 1);
    if (u && lua_rawlen(L, 1) == sizeof(*u) &&
        u->cookie == ((uintptr_t)u ^ client_secret))
        return u;
    return luaL_checkudata(L, 1, CLIENT_MT);
}

static int fail(lua_State *L, const char *err, const char *detail)
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
static const char *status_name(enum mc_op_kind k, uint16_t st)
{
    return mc_err_str(mc_status_err(k, st));
}

static int status_fail(lua_State *L, enum mc_op_kind k, const mc_resp *r,
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
static void report_events(lua_State *L, lmc_client *u)
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


/* Every method passes here once its arguments are checked: a closed client
 * fails, and from here on the call owns the client's connections and
 * scratch buffers (busy), until guarded() returns, by a return or a raise. */
#define CLOSED_CHECK(L, u)                                                   \
    do {                                                                     \
        if (!(u)->c)                                                         \
            return fail((L), ERR(CLIENT_CLOSED), "the client was closed");     \
        (u)->busy = 1;                                                       \
        (u)->lock_token++;                                                   \
    } while (0)



/* ---- arguments ---- */

typedef struct args {
    const char *key;
    size_t keylen;
    int value;          /* stack index of the value, 0 when none */
    uint32_t exptime;
    uint64_t cas;
    uint32_t flags;
    int has_flags;
    uint64_t delta;
    uint64_t initial;
    int has_initial;
} args;

/* gomemcache's rule: 1..250 bytes, none of them a space, a control
 * character or DEL (bytes >= 0x80 are fine). */

static lua_Integer opt_int_field(lua_State *L, int t, const char *name,
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

static uint32_t check_exptime(lua_State *L, lua_Integer v, const char *what)
{
    if (v < 0 || v > (lua_Integer)0xffffffffLL)
        luaL_error(L, "bad %s: must be 0..4294967295 seconds", what);
    return (uint32_t)v;
}

static lua_Integer check_integer(lua_State *L, int i, const char *name)
{
    if (!lua_isinteger(L, i))
        luaL_error(L, "bad argument #%d (%s): integer expected, got %s", i - 1,
                   name, luaL_typename(L, i));
    return (lua_Integer)lmc_toint(L, i);
}

static lua_Integer opt_integer(lua_State *L, int i, const char *name,
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

static void get_args(lua_State *L, args *a, int has_value, const char *order)
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
static int pick(lua_State *L, lmc_client *u, const char *key, size_t len,
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

/* ---- single-key operations ---- */

typedef struct op {
    lmc_client *u;
    int srv;
    uint32_t opaque;
    mc_buf *out;
    const char *key; /* the key the reply must name (GETK, GATK), or NULL */
    size_t keylen;
    mc_resp r;
} op;

/* Checks the key, picks and connects. Returns 0 with o->out ready, or the
 * number of failure values pushed. */
static int op_begin(lua_State *L, lmc_client *u, const args *a, op *o)
{
    const char *ename = NULL;
    int err = MC_OK;
    o->u = u;
    o->key = NULL;
    o->keylen = 0;
    if (!mc_key_ok(a->key, a->keylen))
        return fail(L, ERR(MALFORMED_KEY),
                    "keys are 1 to 250 bytes without spaces or control "
                    "characters");
    o->srv = pick(L, u, a->key, a->keylen, &ename, 1);
    if (o->srv < 0)
        return fail(L, ename, u->c->errmsg);
    o->out = mc_client_begin(u->c, o->srv, &o->opaque, &err);
    if (!o->out)
        return fail(L, mc_err_str(err), u->c->errmsg);
    return 0;
}

/* Sends the encoded request (enc_rc is the encoder's result) and reads the
 * reply. Returns 0 with o->r filled, or the number of values pushed. */
static int op_exec(lua_State *L, op *o, int enc_rc)
{
    int rc;
    if (enc_rc != 0) {
        mc_client_abort(o->u->c);
        return fail(L, ERR(NOMEM), "out of memory encoding the request");
    }
    rc = mc_client_exec_key(o->u->c, &o->r, o->key, o->keylen);
    if (rc != MC_OK)
        return fail(L, mc_err_str(rc), o->u->c->errmsg);
    return 0;
}

static const char *server_name(op *o)
{
    return o->u->c->servers[o->srv]->name;
}

/* A non-OK status: releases the connection and pushes the mapped error. */
static int op_status_fail(lua_State *L, op *o, enum mc_op_kind k)
{
    int n = status_fail(L, k, &o->r, server_name(o));
    mc_client_end(o->u->c);
    return n;
}

static int op_done(op *o, int nret)
{
    mc_client_end(o->u->c);
    return nret;
}

/* The marker, also when append/prepend added bytes around it. Only items
 * carrying the marker's flags are searched. */
static int is_lock(const mc_resp *r)
{
    return mc_is_lock(r->flags, r->value, r->vallen);
}

/* Is the reply's value one string as this client stores it: raw bytes, or
 * a msgpack str/bin whose header spans exactly the rest. Sets *hdr. */
static int plain_value(const lmc_client *u, const mc_resp *r, size_t *hdr)
{
    const unsigned char *p = (const unsigned char *)r->value;
    size_t n = r->vallen, len;
    *hdr = 0;
    if (r->flags != u->mp_flag)
        return 1;
    if (n >= 1 && (p[0] & 0xe0) == 0xa0) {
        *hdr = 1;
        len = p[0] & 0x1f;
    } else if (n >= 2 && (p[0] == 0xd9 || p[0] == 0xc4)) {
        *hdr = 2;
        len = p[1];
    } else if (n >= 3 && (p[0] == 0xda || p[0] == 0xc5)) {
        *hdr = 3;
        len = mc_load16(p + 1);
    } else if (n >= 5 && (p[0] == 0xdb || p[0] == 0xc6)) {
        *hdr = 5;
        len = mc_load32(p + 1);
    } else {
        return 0;
    }
    return n - *hdr == len;
}

/* Pushes an item's value: msgpack-decoded when it carries the msgpack flag,
 * else the bytes. Returns 1, or pushes nothing and returns 0 with the
 * reason in err. */
static int push_value(lua_State *L, lmc_client *u, const mc_resp *r,
                      char *err, size_t errlen)
{
    size_t hdr;
    /* most cached values are one string: pushed straight from the reply */
    if (plain_value(u, r, &hdr)) {
        lua_pushlstring(L, r->value + hdr, r->vallen - hdr);
        return 1;
    }
    return lmc_value_decode(L, u->vctx, r->value, r->vallen, err, errlen) == 0;
}

/* value, cas, flags of a GET-family reply */
static int op_push_item(lua_State *L, op *o)
{
    char err[200];
    if (is_lock(&o->r)) {
        mc_client_end(o->u->c);
        return fail(L, ERR(CACHE_MISS), NULL);
    }
    if (!push_value(L, o->u, &o->r, err, sizeof(err))) {
        mc_client_end(o->u->c);
        return fail(L, ERR(UNDECODABLE), err);
    }
    lmc_pushint(L, o->r.cas);
    lmc_pushint(L, o->r.flags);
    return op_done(o, 3);
}

/* get (GETK), get_and_touch (GATK) and touch: one key, a miss is
 * ERR_CACHE_MISS; the first two return the item, touch returns true. The
 * item's reply must name the key, as get_multi's do: GET's and GAT's name
 * none, and their opaque alone would let a stray reply, or another key's,
 * pass for this key's item. */
static int key_op(lua_State *L, uint8_t opcode, const char *order)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n, rc;
    get_args(L, &a, 0, order);
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if (opcode != MC_OP_TOUCH) {
        o.key = a.key;
        o.keylen = a.keylen;
    }
    rc = opcode == MC_OP_GETK
             ? mc_enc_get(o.out, opcode, o.opaque, a.key, a.keylen)
             : mc_enc_touch(o.out, opcode, o.opaque, a.key, a.keylen,
                            a.exptime);
    if ((n = op_exec(L, &o, rc)) != 0)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, MC_KIND_GET);
    if (opcode != MC_OP_TOUCH)
        return op_push_item(L, &o);
    lua_pushboolean(L, 1);
    return op_done(&o, 1);
}

static int m_get(lua_State *L) { return key_op(L, MC_OP_GETK, ""); }
static int m_get_and_touch(lua_State *L) { return key_op(L, MC_OP_GATK, "e"); }
static int m_touch(lua_State *L) { return key_op(L, MC_OP_TOUCH, "e"); }

/* The msgpack header of a string of n bytes (what msgpack-c writes for a
 * Lua string): 1, 2, 3 or 5 bytes into h. */
static size_t str_header(unsigned char *h, size_t n)
{
    if (n < 32) {
        h[0] = (unsigned char)(0xa0 | n);
        return 1;
    }
    if (n < 256) {
        h[0] = 0xd9;
        h[1] = (unsigned char)n;
        return 2;
    }
    if (n < 65536) {
        h[0] = 0xda;
        mc_store16(h + 1, (uint16_t)n);
        return 3;
    }
    h[0] = 0xdb;
    mc_store32(h + 1, (uint32_t)n);
    return 5;
}

/* Encodes the value for a store: raw bytes (raw, or flags given that are
 * not the msgpack flag, as gomemcache's Item.Flags) or msgpack. A string is
 * framed with its msgpack header in place (hdr), sparing a copy; any other
 * value is encoded into u->val. Returns 0, or pushes a failure and returns
 * the count. */
static int encode_value(lua_State *L, lmc_client *u, args *a, int raw,
                        const char **p, size_t *n, uint32_t *flags,
                        unsigned char *hdr, size_t *hlen)
{
    char err[200];
    *hlen = 0;
    if (raw || (a->has_flags && a->flags != u->mp_flag)) {
        *p = lua_tolstring(L, a->value, n); /* a string: checked earlier */
        *flags = a->has_flags ? a->flags : 0;
        return 0;
    }
    *flags = u->mp_flag;
    if (lua_type(L, a->value) == LUA_TSTRING) {
        *p = lua_tolstring(L, a->value, n);
        if (*n <= 0xffffffffu) {
            *hlen = str_header(hdr, *n);
            return 0;
        }
    }
    u->val.len = 0;
    if (lmc_value_encode(L, u->vctx, a->value, &u->val, err, sizeof(err)) != 0)
        return fail(L, ERR(UNENCODABLE), err);
    *p = u->val.data;
    *n = u->val.len;
    return 0;
}

static int do_store(lua_State *L, uint8_t opcode, enum mc_op_kind k, int raw,
                    const char *order)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    const char *p = NULL;
    size_t len = 0, hlen = 0;
    uint32_t flags = 0;
    unsigned char hdr[8];

    get_args(L, &a, 1, order);
    if (lua_isnone(L, 3))
        luaL_error(L, "bad argument #2 (value): value expected");
    if (opcode == MC_OP_SET && k == MC_KIND_REPLACE && a.cas == 0)
        luaL_error(L, "bad argument #3 (cas): compare_and_swap needs the cas "
                      "of a previous get");
    if ((raw || (a.has_flags && a.flags != u->mp_flag)) &&
        lua_type(L, a.value) != LUA_TSTRING)
        luaL_error(L, "bad argument #2 (value): string expected for raw "
                      "data, got %s", luaL_typename(L, a.value));
    CLOSED_CHECK(L, u);
    /* the key is checked by op_begin, before anything is sent */
    if ((n = encode_value(L, u, &a, raw, &p, &len, &flags, hdr, &hlen)) != 0)
        return n;
    if (len + hlen > u->max_value) {
        char d[120];
        snprintf(d, sizeof(d), "%zu bytes exceed max_value_size (%zu)", len,
                 u->max_value);
        mc_buf_clear(&u->val, 1 << 20);
        return fail(L, ERR(TOO_LARGE), d);
    }
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    n = op_exec(L, &o, mc_enc_store2(o.out, opcode, o.opaque, a.cas, a.key,
                                     a.keylen, flags, a.exptime, hdr, hlen,
                                     p, len));
    if (u->val.cap > (1 << 20))
        mc_buf_clear(&u->val, 1 << 20);
    if (n)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, k);
    lmc_pushint(L, o.r.cas);
    return op_done(&o, 1);
}

static int m_set(lua_State *L) { return do_store(L, MC_OP_SET, MC_KIND_SET, 0, "ecf"); }
static int m_add(lua_State *L) { return do_store(L, MC_OP_ADD, MC_KIND_ADD, 0, "ecf"); }
static int m_replace(lua_State *L) { return do_store(L, MC_OP_REPLACE, MC_KIND_REPLACE, 0, "ecf"); }
static int m_set_raw(lua_State *L) { return do_store(L, MC_OP_SET, MC_KIND_SET, 1, "ecf"); }
static int m_add_raw(lua_State *L) { return do_store(L, MC_OP_ADD, MC_KIND_ADD, 1, "ecf"); }
static int m_replace_raw(lua_State *L) { return do_store(L, MC_OP_REPLACE, MC_KIND_REPLACE, 1, "ecf"); }
static int m_cas(lua_State *L) { return do_store(L, MC_OP_SET, MC_KIND_REPLACE, 0, "cef"); }

static int do_concat(lua_State *L, uint8_t opcode)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    const char *p;
    size_t len;

    get_args(L, &a, 1, "c");
    if (lua_type(L, 3) != LUA_TSTRING)
        luaL_error(L, "bad argument #2 (bytes): string expected, got %s",
                   luaL_typename(L, 3));
    p = lua_tolstring(L, 3, &len);
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if ((n = op_exec(L, &o, mc_enc_concat(o.out, opcode, o.opaque, a.cas,
                                           a.key, a.keylen, p, len))) != 0)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, MC_KIND_REPLACE);
    lmc_pushint(L, o.r.cas);
    return op_done(&o, 1);
}

static int m_append(lua_State *L) { return do_concat(L, MC_OP_APPEND); }
static int m_prepend(lua_State *L) { return do_concat(L, MC_OP_PREPEND); }

static int m_delete(lua_State *L)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    get_args(L, &a, 0, "c");
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if ((n = op_exec(L, &o, mc_enc_delete(o.out, MC_OP_DELETE, o.opaque, a.cas,
                                           a.key, a.keylen))) != 0)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, a.cas ? MC_KIND_REPLACE : MC_KIND_GET);
    lua_pushboolean(L, 1);
    return op_done(&o, 1);
}

/* memcached 1.4 dropped delete's hold time. The lock is an item that only
 * this client recognises: REPLACE (so a missing key stays a miss, as
 * gomemcache's DeleteLock reports) with a marker that expires after
 * `seconds`. While it lives, get/get_multi report a miss and add fails. */
static int m_delete_lock(lua_State *L)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    lua_Integer secs;

    if (lua_type(L, 2) == LUA_TTABLE) {
        lua_settop(L, 2);
        lua_getfield(L, 2, "key");
        lua_getfield(L, 2, "seconds");
        if (lua_isnil(L, -1)) {
            lua_pop(L, 1);
            lua_getfield(L, 2, "expiration");
        }
        lua_remove(L, 2);
    }
    get_args(L, &a, 0, "");
    secs = check_integer(L, 3, "seconds");
    if (secs < 0 || secs > (lua_Integer)0xffffffffLL)
        luaL_error(L, "bad argument #2 (seconds): must be 0..4294967295");
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if (secs == 0)
        n = op_exec(L, &o, mc_enc_delete(o.out, MC_OP_DELETE, o.opaque, 0,
                                         a.key, a.keylen));
    else
        n = op_exec(L, &o, mc_enc_store(o.out, MC_OP_REPLACE, o.opaque, 0,
                                        a.key, a.keylen, MC_LOCK_FLAGS,
                                        (uint32_t)secs, mc_lock_value, mc_lock_len));
    if (n)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, MC_KIND_GET);
    lua_pushboolean(L, 1);
    return op_done(&o, 1);
}

/* After a counter op found a non-numeric item: 1 when that item is a
 * delete_lock marker (so the key must read as a miss). Error path only. */
static int locked_on(lmc_client *u, int srv, const args *a)
{
    uint32_t opaque;
    int err, locked = 0;
    mc_resp r;
    mc_buf *out = mc_client_begin(u->c, srv, &opaque, &err);
    if (!out)
        return 0;
    if (mc_enc_get(out, MC_OP_GETK, opaque, a->key, a->keylen) != 0) {
        mc_client_abort(u->c);
        return 0;
    }
    if (mc_client_exec_key(u->c, &r, a->key, a->keylen) != MC_OK)
        return 0;
    locked = r.status == MC_STATUS_OK && is_lock(&r);
    mc_client_end(u->c);
    return locked;
}

static int do_arith(lua_State *L, uint8_t opcode, int counter_only)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    uint32_t exp;

    if (counter_only)
        get_args(L, &a, 0, "");
    else
        get_args(L, &a, 0, "die");
    exp = a.has_initial ? a.exptime : MC_ARITH_NO_CREATE;
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if ((n = op_exec(L, &o, mc_enc_arith(o.out, opcode, o.opaque, a.key,
                                          a.keylen, a.delta, a.initial,
                                          exp))) != 0)
        return n;
    if (o.r.status == MC_STATUS_DELTA_BADVAL) {
        mc_client_end(u->c);
        if (locked_on(u, o.srv, &a))
            return fail(L, ERR(CACHE_MISS), "the key is locked by delete_lock");
        return fail(L, ERR(NON_NUMERIC), "the item is not a decimal number");
    }
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, MC_KIND_GET);
    if (o.r.vallen != 8) {
        char d[160];
        snprintf(d, sizeof(d), "%s: counter reply of %zu bytes, not 8",
                 server_name(&o), o.r.vallen);
        mc_client_abort(u->c);
        return fail(L, ERR(PROTOCOL), d);
    }
    lmc_pushint(L, mc_load64(o.r.value));
    if (counter_only)
        return op_done(&o, 1);
    lmc_pushint(L, o.r.cas);
    return op_done(&o, 2);
}

static int m_increment(lua_State *L) { return do_arith(L, MC_OP_INCREMENT, 0); }
static int m_decrement(lua_State *L) { return do_arith(L, MC_OP_DECREMENT, 0); }
static int m_touch_atomic(lua_State *L) { return do_arith(L, MC_OP_INCREMENT, 1); }

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

static int m_ping(lua_State *L)
{
    return all_simple(L, self(L), MC_OP_NOOP, 0);
}

static int m_flush(lua_State *L)
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

static int m_flush_all(lua_State *L)
{
    return all_simple(L, self(L), MC_OP_FLUSH, 0);
}

/* version() -> {addr = version}[, first err]; nil, err, detail when no
 * server answered. */
static int m_version(lua_State *L)
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
static int m_stats(lua_State *L)
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
        lua_rawseti(L, m->ktab, (lua_Integer)i + 1);
}

static void anchor_push(lua_State *L, multi *m, size_t i)
{
    if (m->ktab)
        lua_rawgeti(L, m->ktab, (lua_Integer)i + 1);
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
    lua_pushlstring(L, m->u->keys[i].key, m->u->keys[i].len);
    lua_pushstring(L, err);
    lua_rawset(L, m->failed);
}

/* memcmp(a, b, n) == 0 for short keys, without a library call */
static int same_bytes(const char *a, const char *b, size_t n)
{
    uint64_t x, y;
    size_t i;
    if (n < 8) {
        for (i = 0; i < n; i++)
            if (a[i] != b[i])
                return 0;
        return 1;
    }
    for (i = 0; i + 8 < n; i += 8) {
        memcpy(&x, a + i, 8);
        memcpy(&y, b + i, 8);
        if (x != y)
            return 0;
    }
    memcpy(&x, a + n - 8, 8); /* the last word, overlapping */
    memcpy(&y, b + n - 8, 8);
    return x == y;
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
    int key_differs = r->keylen != k->len || !same_bytes(r->key, k->key, k->len);
    /* GETK, not GETKQ: every key gets a reply, hits and misses naming
     * their key, in order. A reply under another pending request's opaque,
     * or a value that swallowed the replies after it, then breaks the
     * batch instead of handing one key's value to another. */
    if (r->status != MC_STATUS_OK) {
        /* error replies (out of memory, ...) carry no key */
        if (r->keylen && key_differs)
            return -1;
        if (r->status != MC_STATUS_KEY_ENOENT)
            multi_failed(m, i, status_name(MC_KIND_GET, r->status));
        return 0;
    }
    if (key_differs)
        return -1;
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
static int m_get_multi(lua_State *L)
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
static int m_set_multi(lua_State *L)
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
            lua_rawseti(L, 4, (lua_Integer)i + 1);
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
static int m_delete_multi(lua_State *L)
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
    lua_rawseti(L, priv, (lua_Integer)(2 * k + 1)); /* the address */
    lua_pushinteger(L, w);
    lua_rawseti(L, priv, (lua_Integer)(2 * k + 2));
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
                lua_rawgeti(L, i, (lua_Integer)j);
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
        lua_rawgeti(L, priv, (lua_Integer)(2 * j + 1));
        s[j].addr = lua_tolstring(L, -1, &alen); /* priv keeps it */
        if (strlen(s[j].addr) != alen && !*nul)
            *nul = j + 1;
        lua_rawgeti(L, priv, (lua_Integer)(2 * j + 2));
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

static int m_set_servers(lua_State *L)
{
    lmc_client *u = self(L);
    size_t n;
    size_t nul;
    mc_server_spec *s = collect_servers(L, 2, &n, &nul);
    CLOSED_CHECK(L, u);
    if (nul)
        return nul_fail(L, nul);
    if (mc_client_set_servers(u->c, s, n) != 0)
        return fail(L, ERR(BAD_SERVER), u->c->errmsg);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_add_server(lua_State *L)
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
        return fail(L, ERR(BAD_SERVER), u->c->errmsg);
    if (maxc > 0) {
        int i = mc_client_intern_server(u->c, s.addr);
        if (i >= 0)
            u->c->servers[i]->max_conns = (unsigned)maxc;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int m_pick_server(lua_State *L)
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
            return fail(L, ename, u->c->errmsg);
    }
    lua_pushstring(L, u->c->servers[srv]->name);
    return 1;
}

static int m_servers(lua_State *L)
{
    lmc_client *u = self(L);
    size_t i;
    CLOSED_CHECK(L, u);
    lua_createtable(L, (int)u->c->nservers, 0);
    for (i = 0; i < u->c->nservers; i++) {
        mc_server *s = u->c->servers[i];
        lua_createtable(L, 0, 4);
        lua_pushstring(L, s->name);
        lua_setfield(L, -2, "addr");
        lua_pushboolean(L, !s->dead);
        lua_setfield(L, -2, "alive");
        lmc_pushint(L, s->failures);
        lua_setfield(L, -2, "failures");
        lmc_pushint(L, s->nopen);
        lua_setfield(L, -2, "connections");
        if (s->last_error[0]) {
            lua_pushstring(L, s->last_error);
            lua_setfield(L, -2, "last_error");
        }
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int m_set_callback(lua_State *L)
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

/* ---- life cycle ---- */

/* One idempotent destroy for close, exit, __close and __gc. */
static void destroy(lua_State *L, lmc_client *u)
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
static int guarded(lua_State *L)
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

/* ---- fast entries: get and set ----
 * The common forms, get(key) and set(key, string [, exptime]) on the
 * built-in selector, skip guarded()'s lua_pcall (~15% of a get's own
 * instructions) and the generic argument and request layers. That is safe
 * because nothing here can raise, and no Lua code can run, while busy is
 * set: the key and value are checked first, the I/O is C, and busy is
 * cleared before anything is pushed. Pushing may then run a finalizer that
 * calls this client; Lua 5.4 copies a new string's bytes before it runs
 * any finalizer (lua_pushlstring collects after the copy), so the reply
 * bytes are taken before such a call could reuse the connection, and the
 * connection goes back to the pool only if no such call replaced it.
 * LuaJIT may collect before the copy, so there the fast entries are the
 * guarded ones. Any other form, and a value that needs the msgpack
 * decoder, takes the guarded path or runs under lua_pcall. */
#if LUA_VERSION_NUM >= 504

/* Ends the fast call (busy already cleared): a close asked for while the
 * call held the client (by a finalizer during a decode) happens now, then
 * events are reported. */
static int fast_done(lua_State *L, lmc_client *u, int nret)
{
    if (u->close_pending && !u->busy) {
        u->close_pending = 0;
        destroy(L, u);
    }
    if (u->c && u->c->nevents)
        report_events(L, u); /* leaves the stack as it found it */
    return nret;
}

/* A failure of the client layer: its message is copied before busy is
 * cleared (a finalizer run by the pushes could overwrite or free it). */
static int fast_fail(lua_State *L, lmc_client *u, const char *err)
{
    char msg[sizeof(((mc_client *)0)->errmsg)];
    snprintf(msg, sizeof(msg), "%s", u->c->errmsg);
    u->busy = 0;
    return fast_done(L, u, fail(L, err, msg));
}

/* Returns the connection of the request begun as number `seq` to the pool,
 * unless a call made while the results were pushed replaced it. */
static void fast_end(lmc_client *u, unsigned long seq)
{
    if (u->c && u->c->cur && u->c->nbegun == seq)
        mc_client_end(u->c);
}

/* Sends the request encoded by the caller and reads its reply, which must
 * name key when key is not NULL; on failure returns the values pushed (busy
 * cleared), else 0 with r filled. */
static int fast_exec(lua_State *L, lmc_client *u, int enc_rc, const char *key,
                     size_t klen, mc_resp *r)
{
    int rc;
    if (enc_rc != 0) {
        mc_client_abort(u->c);
        snprintf(u->c->errmsg, sizeof(u->c->errmsg),
                 "out of memory encoding the request");
        return fast_fail(L, u, ERR(NOMEM));
    }
    rc = mc_client_exec_key(u->c, r, key, klen);
    if (rc != MC_OK)
        return fast_fail(L, u, mc_err_str(rc));
    return 0;
}

/* Picks the key's server and begins a request there; NULL after pushing a
 * failure (into *nret). */
static mc_buf *fast_begin(lua_State *L, lmc_client *u, const char *key,
                          size_t klen, uint32_t *opaque, int *nret)
{
    int err = MC_OK, srv;
    mc_buf *out;
    u->busy = 1;
    u->lock_token++;
    srv = mc_client_pick(u->c, key, klen, &err);
    if (srv < 0) {
        *nret = fast_fail(L, u, mc_err_str(err));
        return NULL;
    }
    out = mc_client_begin(u->c, srv, opaque, &err);
    if (!out)
        *nret = fast_fail(L, u, mc_err_str(err));
    return out;
}

/* A non-OK status: the detail is built from the reply first. */
static int fast_status_fail(lua_State *L, lmc_client *u, const mc_resp *r,
                            enum mc_op_kind k)
{
    char detail[300];
    const char *err = status_name(k, r->status);
    snprintf(detail, sizeof(detail), "%s: %s%s%.*s",
             u->c->servers[u->c->cur_srv]->name, mc_status_str(r->status),
             r->vallen ? ": " : "", (int)(r->vallen > 120 ? 120 : r->vallen),
             r->value);
    mc_client_end(u->c);
    u->busy = 0;
    return fast_done(L, u, fail(L, err, detail));
}

typedef struct decode_job {
    lmc_client *u;
    const mc_resp *r;
    int ok;
    char err[200];
} decode_job;

static int decode_value(lua_State *L)
{
    decode_job *j = lua_touserdata(L, 1);
    j->ok = push_value(L, j->u, j->r, j->err, sizeof(j->err));
    return j->ok;
}

/* A value that is not one plain string: decoded under lua_pcall with the
 * client still busy (the decoder reads the reply in place and uses the
 * client's msgpack context). */
static int fast_decoded(lua_State *L, lmc_client *u, const mc_resp *r)
{
    decode_job j;
    int st;
    j.u = u;
    j.r = r;
    j.ok = 0;
    lua_pushcfunction(L, decode_value);
    lua_pushlightuserdata(L, &j);
    st = lua_pcall(L, 1, 1, 0);
    mc_client_end(u->c); /* still there: a close waits for busy */
    u->busy = 0;
    if (st != 0) {
        fast_done(L, u, 0);
        return lua_error(L); /* the decoder's error, unchanged */
    }
    if (!j.ok) {
        lua_pop(L, 1);
        return fast_done(L, u, fail(L, ERR(UNDECODABLE), j.err));
    }
    lmc_pushint(L, r->cas);
    lmc_pushint(L, r->flags);
    return fast_done(L, u, 3);
}

static int f_get(lua_State *L)
{
    lmc_client *u = check_client(L);
    const char *key;
    size_t klen, hdr;
    uint32_t opaque;
    unsigned long seq;
    mc_buf *out;
    mc_resp r;
    int n;

    if (lua_gettop(L) != 2 || lua_type(L, 2) != LUA_TSTRING || u->busy ||
        !u->c || u->sel_mode != SEL_BUILTIN)
        return guarded(L);
    key = lua_tolstring(L, 2, &klen);
    if (!mc_key_ok(key, klen))
        return guarded(L); /* it reports the bad key */
    if (!(out = fast_begin(L, u, key, klen, &opaque, &n)))
        return n;
    /* GETK: the reply names the key, checked as get_multi's are */
    if ((n = fast_exec(L, u, mc_enc_get(out, MC_OP_GETK, opaque, key, klen),
                       key, klen, &r)) != 0)
        return n;
    if (r.status != MC_STATUS_OK)
        return fast_status_fail(L, u, &r, MC_KIND_GET);
    if (is_lock(&r)) {
        mc_client_end(u->c);
        u->busy = 0;
        return fast_done(L, u, fail(L, ERR(CACHE_MISS), NULL));
    }
    if (!plain_value(u, &r, &hdr))
        return fast_decoded(L, u, &r);
    seq = u->c->nbegun;
    u->busy = 0;
    lua_pushlstring(L, r.value + hdr, r.vallen - hdr); /* copied, then GC */
    lmc_pushint(L, r.cas);
    lmc_pushint(L, r.flags);
    fast_end(u, seq);
    return fast_done(L, u, 3);
}

static int f_set(lua_State *L)
{
    lmc_client *u = check_client(L);
    int top = lua_gettop(L), n;
    const char *key, *val;
    size_t klen, vlen, hlen;
    lua_Integer exptime = 0;
    unsigned char hdr[8];
    uint32_t opaque;
    mc_buf *out;
    mc_resp r;

    if (top < 3 || top > 4 || lua_type(L, 2) != LUA_TSTRING ||
        lua_type(L, 3) != LUA_TSTRING || u->busy || !u->c ||
        u->sel_mode != SEL_BUILTIN)
        return guarded(L);
    if (top == 4) {
        if (!lua_isinteger(L, 4))
            return guarded(L);
        exptime = lua_tointeger(L, 4);
        if (exptime < 0 || exptime > (lua_Integer)0xffffffffLL)
            return guarded(L);
    }
    key = lua_tolstring(L, 2, &klen);
    val = lua_tolstring(L, 3, &vlen);
    if (!mc_key_ok(key, klen) || vlen > 0xffffffffu)
        return guarded(L);
    hlen = str_header(hdr, vlen);
    if (vlen + hlen > u->max_value)
        return guarded(L); /* it reports the size */
    if (!(out = fast_begin(L, u, key, klen, &opaque, &n)))
        return n;
    if ((n = fast_exec(L, u,
                       mc_enc_store2(out, MC_OP_SET, opaque, 0, key, klen,
                                     u->mp_flag, (uint32_t)exptime, hdr,
                                     hlen, val, vlen),
                       NULL, 0, &r)) != 0)
        return n;
    if (r.status != MC_STATUS_OK)
        return fast_status_fail(L, u, &r, MC_KIND_SET);
    mc_client_end(u->c);
    u->busy = 0;
    lmc_pushint(L, r.cas);
    return fast_done(L, u, 1);
}

#else
#define f_get guarded
#define f_set guarded
#endif

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
    "eject", "max_value_size", "probe_timeout", NULL};

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
    o->pool.failure_limit = (unsigned)v;
    o->pool.retry_timeout =
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
    int selidx = 0;
    size_t nul = 0;

    mc_client_opts_default(&o);
    if (t) {
        lua_getfield(L, t, "selector");
        selidx = lua_gettop(L);
        read_opts(L, t, &o, &mpf, selidx);
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
    u->cookie = (uintptr_t)u ^ client_secret;
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
        lua_pushstring(L, u->c->errmsg);
        destroy(L, u);
        return 3;
    }
    return 1;
}

/* memcached.new(server, ...) or memcached.new{servers = ..., ...} */
static int l_new(lua_State *L)
{
    if (lua_type(L, 1) == LUA_TTABLE && !is_weighted_entry(L, 1)) {
        lua_rawgeti(L, 1, 1);
        if (lua_isnil(L, -1)) { /* an options table */
            lua_pop(L, 1);
            return construct(L, 1, 0, 0);
        }
        lua_pop(L, 1);
    }
    return construct(L, 0, lua_gettop(L) ? 1 : 0, 0);
}

/* memcached.new_from_selector(sel [, opts]) */
static int l_new_from_selector(lua_State *L)
{
    int t = lua_type(L, 1);
    if (t != LUA_TFUNCTION && t != LUA_TTABLE && t != LUA_TUSERDATA)
        luaL_argerror(L, 1, "function or object with pick_server expected");
    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    return construct(L, lua_isnil(L, 2) ? 0 : 2, 0, 1);
}

/* memcached._test_idle_buffer_bytes(client): bytes of buffer storage its
 * pooled connections hold. For the specs only (memory checks that work
 * under ASan, where freed memory does not leave RSS); not an API. */
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
