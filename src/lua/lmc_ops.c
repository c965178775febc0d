/*
 * lmc_ops: the single-key methods (get, set and the other stores, delete,
 * delete_lock, counters, touch) and the fast entries of get and set.
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

/* ---- single-key operations ---- */


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
        return fail(L, ename, mc_client_errmsg(u->c));
    o->out = mc_client_begin(u->c, &o->q, o->srv, &err);
    if (!o->out)
        return fail(L, mc_err_str(err), o->q.err);
    return 0;
}

/* Sends the encoded request (enc_rc is the encoder's result) and reads the
 * reply. Returns 0 with o->r filled, or the number of values pushed. */
static int op_exec(lua_State *L, op *o, int enc_rc)
{
    int rc;
    if (enc_rc != 0) {
        mc_client_end_broken(o->u->c, &o->q);
        return fail(L, ERR(NOMEM), "out of memory encoding the request");
    }
    rc = mc_client_exec_key(o->u->c, &o->q, &o->r, o->key, o->keylen);
    if (rc != MC_OK)
        return fail(L, mc_err_str(rc), o->q.err);
    return 0;
}

static const char *server_name(op *o)
{
    return mc_req_server(&o->q);
}

/* A non-OK status: releases the connection and pushes the mapped error. */
static int op_status_fail(lua_State *L, op *o, enum mc_op_kind k)
{
    int n = status_fail(L, k, &o->r, server_name(o));
    mc_client_end(o->u->c, &o->q);
    return n;
}

static int op_done(op *o, int nret)
{
    mc_client_end(o->u->c, &o->q);
    return nret;
}

/* The marker, also when append/prepend added bytes around it. Only items
 * carrying the marker's flags are searched. */
int is_lock(const mc_resp *r)
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
int push_value(lua_State *L, lmc_client *u, const mc_resp *r,
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
        mc_client_end(o->u->c, &o->q);
        return fail(L, ERR(CACHE_MISS), NULL);
    }
    if (!push_value(L, o->u, &o->r, err, sizeof(err))) {
        mc_client_end(o->u->c, &o->q);
        return fail(L, ERR(UNDECODABLE), err);
    }
    lmc_pushu64(L, o->r.cas);
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
             ? o.q.codec->get(o.out, opcode, o.q.opaque, a.key, a.keylen)
             : o.q.codec->touch(o.out, opcode, o.q.opaque, a.key, a.keylen,
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

int m_get(lua_State *L) { return key_op(L, MC_OP_GETK, ""); }
int m_get_and_touch(lua_State *L) { return key_op(L, MC_OP_GATK, "e"); }
int m_touch(lua_State *L) { return key_op(L, MC_OP_TOUCH, "e"); }

/* The msgpack header of a string of n bytes (what msgpack-c writes for a
 * Lua string): 1, 2, 3 or 5 bytes into h. */
size_t str_header(unsigned char *h, size_t n)
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
 * value is encoded into scratch the call borrows (*sc, pushed on the stack;
 * NULL when none was needed). Returns 0, or pushes a failure and returns
 * the count. */
static int encode_value(lua_State *L, lmc_client *u, args *a, int raw,
                        const char **p, size_t *n, uint32_t *flags,
                        unsigned char *hdr, size_t *hlen, lmc_scratch **sc)
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
    *sc = scratch_lend(L, u);
    (*sc)->bytes.len = 0;
    if (lmc_value_encode(L, u->vctx, a->value, &(*sc)->bytes, err,
                         sizeof(err)) != 0) {
        scratch_return(u, *sc);
        *sc = NULL;
        return fail(L, ERR(UNENCODABLE), err);
    }
    *p = (*sc)->bytes.data;
    *n = (*sc)->bytes.len;
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
    lmc_scratch *sc = NULL;

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
    if ((n = encode_value(L, u, &a, raw, &p, &len, &flags, hdr, &hlen,
                          &sc)) != 0)
        return n;
    if (len + hlen > u->max_value) {
        char d[120];
        snprintf(d, sizeof(d), "%zu bytes exceed max_value_size (%zu)", len,
                 u->max_value);
        if (sc)
            scratch_return(u, sc);
        return fail(L, ERR(TOO_LARGE), d);
    }
    n = op_begin(L, u, &a, &o);
    if (n == 0)
        n = op_exec(L, &o, o.q.codec->store(o.out, opcode, o.q.opaque, a.cas,
                                         a.key, a.keylen, flags, a.exptime,
                                         hdr, hlen, p, len));
    if (sc)
        scratch_return(u, sc); /* the request holds its own copy */
    if (n)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, k);
    lmc_pushu64(L, o.r.cas);
    return op_done(&o, 1);
}

int m_set(lua_State *L) { return do_store(L, MC_OP_SET, MC_KIND_SET, 0, "ecf"); }
int m_add(lua_State *L) { return do_store(L, MC_OP_ADD, MC_KIND_ADD, 0, "ecf"); }
int m_replace(lua_State *L) { return do_store(L, MC_OP_REPLACE, MC_KIND_REPLACE, 0, "ecf"); }
int m_set_raw(lua_State *L) { return do_store(L, MC_OP_SET, MC_KIND_SET, 1, "ecf"); }
int m_add_raw(lua_State *L) { return do_store(L, MC_OP_ADD, MC_KIND_ADD, 1, "ecf"); }
int m_replace_raw(lua_State *L) { return do_store(L, MC_OP_REPLACE, MC_KIND_REPLACE, 1, "ecf"); }
int m_cas(lua_State *L) { return do_store(L, MC_OP_SET, MC_KIND_REPLACE, 0, "cef"); }

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
    if ((n = op_exec(L, &o, o.q.codec->concat(o.out, opcode, o.q.opaque, a.cas,
                                           a.key, a.keylen, p, len))) != 0)
        return n;
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, MC_KIND_REPLACE);
    lmc_pushu64(L, o.r.cas);
    return op_done(&o, 1);
}

int m_append(lua_State *L) { return do_concat(L, MC_OP_APPEND); }
int m_prepend(lua_State *L) { return do_concat(L, MC_OP_PREPEND); }

int m_delete(lua_State *L)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    get_args(L, &a, 0, "c");
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if ((n = op_exec(L, &o, o.q.codec->del(o.out, MC_OP_DELETE, o.q.opaque, a.cas,
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
int m_delete_lock(lua_State *L)
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
        n = op_exec(L, &o, o.q.codec->del(o.out, MC_OP_DELETE, o.q.opaque, 0,
                                         a.key, a.keylen));
    else
        n = op_exec(L, &o, o.q.codec->store(o.out, MC_OP_REPLACE,
                                            o.q.opaque, 0, a.key, a.keylen,
                                            MC_LOCK_FLAGS, (uint32_t)secs,
                                            NULL, 0, mc_lock_value,
                                            mc_lock_len));
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
    int err, locked = 0;
    mc_resp r;
    mc_req q;
    mc_buf *out = mc_client_begin(u->c, &q, srv, &err);
    if (!out)
        return 0;
    if (q.codec->get(out, MC_OP_GETK, q.opaque, a->key, a->keylen) != 0) {
        mc_client_end_broken(u->c, &q);
        return 0;
    }
    if (mc_client_exec_key(u->c, &q, &r, a->key, a->keylen) != MC_OK)
        return 0;
    locked = r.status == MC_STATUS_OK && is_lock(&r);
    mc_client_end(u->c, &q);
    return locked;
}

static int do_arith(lua_State *L, uint8_t opcode, int counter_only)
{
    lmc_client *u = self(L);
    args a;
    op o;
    int n;
    uint32_t exp;
    uint64_t count;

    if (counter_only)
        get_args(L, &a, 0, "");
    else
        get_args(L, &a, 0, "die");
    exp = a.has_initial ? a.exptime : MC_ARITH_NO_CREATE;
    CLOSED_CHECK(L, u);
    if ((n = op_begin(L, u, &a, &o)) != 0)
        return n;
    if ((n = op_exec(L, &o, o.q.codec->arith(o.out, opcode, o.q.opaque, a.key,
                                          a.keylen, a.delta, a.initial,
                                          exp))) != 0)
        return n;
    if (o.r.status == MC_STATUS_DELTA_BADVAL) {
        mc_client_end(u->c, &o.q);
        if (locked_on(u, o.srv, &a))
            return fail(L, ERR(CACHE_MISS), "the key is locked by delete_lock");
        return fail(L, ERR(NON_NUMERIC), "the item is not a decimal number");
    }
    if (o.r.status != MC_STATUS_OK)
        return op_status_fail(L, &o, MC_KIND_GET);
    if (mc_counter_value(o.r.value, o.r.vallen, &count) != 0) {
        char d[160];
        snprintf(d, sizeof(d), "%s: counter reply of %zu bytes, not 8",
                 server_name(&o), o.r.vallen);
        mc_client_end_broken(u->c, &o.q);
        return fail(L, ERR(PROTOCOL), d);
    }
    lmc_pushu64(L, count);
    if (counter_only)
        return op_done(&o, 1);
    lmc_pushu64(L, o.r.cas);
    return op_done(&o, 2);
}

int m_increment(lua_State *L) { return do_arith(L, MC_OP_INCREMENT, 0); }
int m_decrement(lua_State *L) { return do_arith(L, MC_OP_DECREMENT, 0); }
int m_touch_atomic(lua_State *L) { return do_arith(L, MC_OP_INCREMENT, 1); }
