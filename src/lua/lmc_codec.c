#include "lmc_codec.h"

#include <math.h>
#include <stdint.h>
#include <string.h>

#include "lmc_compat.h"
#include "mc_conn.h" /* mc_random32 */
#include "mc_proto.h"

#define LMC_READER_MT "memcached.reader"
#define LMC_SCRATCH_MT "memcached.codec_scratch"
/* The shared encode buffer keeps this much between calls; a request with a
 * large value must not pin its size for the life of the Lua state. */
#define LMC_SCRATCH_KEEP (64u * 1024)

typedef struct lmc_reader {
    mc_reader r;
    int lent; /* get() is copying a reply out of the buffer */
} lmc_reader;

/* ---- argument helpers ----------------------------------------------------
 * Lua 5.4 has integers; LuaJIT/5.1 only doubles, which must then be
 * integral. Either way a value out of range raises, naming the argument. */

static long long check_range(lua_State *L, int idx, long long lo,
                             long long hi, const char *range)
{
    long long v;
#if LUA_VERSION_NUM >= 503
    v = (long long)luaL_checkinteger(L, idx);
#else
    lua_Number n = luaL_checknumber(L, idx);
    if (n != floor(n) || n < -9223372036854775808.0 ||
        n >= 9223372036854775808.0)
        luaL_argerror(L, idx, lua_pushfstring(L, "out of range (%s)", range));
    v = (long long)n;
#endif
    if (v < lo || v > hi)
        luaL_argerror(L, idx, lua_pushfstring(L, "out of range (%s)", range));
    return v;
}

static uint32_t check_u32(lua_State *L, int idx)
{
    return (uint32_t)check_range(L, idx, 0, 0xffffffffLL, "0..4294967295");
}

static uint32_t opt_u32(lua_State *L, int idx)
{
    return lua_isnoneornil(L, idx) ? 0 : check_u32(L, idx);
}

/* 64-bit fields (cas, delta, initial) come back from get as Lua integers,
 * which wrap past 2^63; accepting negatives lets any such value round-trip. */
static uint64_t opt_u64(lua_State *L, int idx)
{
    if (lua_isnoneornil(L, idx))
        return 0;
#if LUA_VERSION_NUM >= 503
    return (uint64_t)luaL_checkinteger(L, idx);
#else
    {
        lua_Number n = luaL_checknumber(L, idx);
        if (n != floor(n) || n < -9223372036854775808.0 ||
            n >= 18446744073709551616.0)
            luaL_argerror(L, idx, "integer out of range");
        return n < 0 ? (uint64_t)(int64_t)n : (uint64_t)n;
    }
#endif
}

/* Opcode sets, one bit per opcode (all opcodes are below 64). */
#define OPBIT(op) ((uint64_t)1 << (op))
#define OPS_GET (OPBIT(MC_OP_GET) | OPBIT(MC_OP_GETQ) | OPBIT(MC_OP_GETK) | \
                 OPBIT(MC_OP_GETKQ))
#define OPS_STORE (OPBIT(MC_OP_SET) | OPBIT(MC_OP_ADD) | \
                   OPBIT(MC_OP_REPLACE) | OPBIT(MC_OP_SETQ) | \
                   OPBIT(MC_OP_ADDQ) | OPBIT(MC_OP_REPLACEQ))
#define OPS_CONCAT (OPBIT(MC_OP_APPEND) | OPBIT(MC_OP_PREPEND) | \
                    OPBIT(MC_OP_APPENDQ) | OPBIT(MC_OP_PREPENDQ))
#define OPS_DELETE (OPBIT(MC_OP_DELETE) | OPBIT(MC_OP_DELETEQ))
#define OPS_ARITH (OPBIT(MC_OP_INCREMENT) | OPBIT(MC_OP_DECREMENT) | \
                   OPBIT(MC_OP_INCREMENTQ) | OPBIT(MC_OP_DECREMENTQ))
#define OPS_TOUCH (OPBIT(MC_OP_TOUCH) | OPBIT(MC_OP_GAT) | OPBIT(MC_OP_GATQ) | \
                   OPBIT(MC_OP_GATK) | OPBIT(MC_OP_GATKQ))
#define OPS_FLUSH (OPBIT(MC_OP_FLUSH) | OPBIT(MC_OP_FLUSHQ))
#define OPS_SIMPLE (OPBIT(MC_OP_NOOP) | OPBIT(MC_OP_VERSION) | \
                    OPBIT(MC_OP_QUIT) | OPBIT(MC_OP_QUITQ))

/* A wrong opcode for a helper would frame extras the server misreads, so it
 * is refused here as the programmer's error it is. allowed 0: any. */
static uint8_t check_op(lua_State *L, int idx, uint64_t allowed,
                        const char *kind)
{
    long long op = check_range(L, idx, 0, 0xff, "0..255");

    if (allowed && (op >= 64 || !(allowed & OPBIT(op))))
        luaL_argerror(L, idx, lua_pushfstring(L, "opcode %d is not %s",
                                              (int)op, kind));
    return (uint8_t)op;
}

static const char *check_key(lua_State *L, int idx, size_t *len)
{
    const char *k = luaL_checklstring(L, idx, len);

    if (*len > 0xffff)
        luaL_argerror(L, idx, "key longer than 65535 bytes");
    return k;
}

static const char *opt_bytes(lua_State *L, int idx, size_t *len)
{
    if (lua_isnoneornil(L, idx)) {
        *len = 0;
        return NULL;
    }
    return luaL_checklstring(L, idx, len);
}

/* The body length field is 32 bits. */
static void check_body(lua_State *L, int idx, size_t fixed, size_t vallen)
{
    if (vallen > 0xffffffffu - fixed)
        luaL_argerror(L, idx, "value too large for one request");
}

/* ---- encoders ------------------------------------------------------------
 * Every encoder checks all its arguments first, then encodes into the
 * shared scratch buffer (upvalue 1), so that no Lua error can leave it
 * half-written; the scratch userdata's __gc owns the memory. */

static mc_buf *scratch(lua_State *L)
{
    mc_buf *b = lua_touserdata(L, lua_upvalueindex(1));

    b->len = 0;
    return b;
}

static int push_encoded(lua_State *L, mc_buf *b, int rc)
{
    if (rc != 0) {
        b->len = 0;
        return luaL_error(L, "not enough memory");
    }
    lua_pushlstring(L, b->data, b->len);
    mc_buf_clear(b, LMC_SCRATCH_KEEP);
    return 1;
}

static int lmc_codec_request(lua_State *L)
{
    size_t extlen, keylen, vallen;
    uint8_t op = check_op(L, 1, 0, "");
    uint32_t opaque = check_u32(L, 2);
    uint64_t cas = opt_u64(L, 3);
    const char *ext = opt_bytes(L, 4, &extlen);
    const char *key = opt_bytes(L, 5, &keylen);
    const char *val = opt_bytes(L, 6, &vallen);
    mc_buf *b;

    if (extlen > 0xff)
        luaL_argerror(L, 4, "extras longer than 255 bytes");
    if (keylen > 0xffff)
        luaL_argerror(L, 5, "key longer than 65535 bytes");
    check_body(L, 6, extlen + keylen, vallen);
    b = scratch(L);
    return push_encoded(L, b, mc_enc_request(b, op, opaque, cas, ext,
                                             (uint8_t)extlen, key, keylen,
                                             val, vallen));
}

static int lmc_codec_get(lua_State *L)
{
    size_t keylen;
    uint8_t op = check_op(L, 1, OPS_GET, "a get opcode");
    uint32_t opaque = check_u32(L, 2);
    const char *key = check_key(L, 3, &keylen);
    mc_buf *b = scratch(L);

    return push_encoded(L, b, mc_enc_get(b, op, opaque, key, keylen));
}

static int lmc_codec_store(lua_State *L)
{
    size_t keylen, vallen;
    uint8_t op = check_op(L, 1, OPS_STORE, "a store opcode");
    uint32_t opaque = check_u32(L, 2);
    uint64_t cas = opt_u64(L, 3);
    const char *key = check_key(L, 4, &keylen);
    uint32_t flags = opt_u32(L, 5);
    uint32_t exptime = opt_u32(L, 6);
    const char *val = luaL_checklstring(L, 7, &vallen);
    mc_buf *b;

    check_body(L, 7, 8 + keylen, vallen);
    b = scratch(L);
    return push_encoded(L, b, mc_enc_store(b, op, opaque, cas, key, keylen,
                                           flags, exptime, val, vallen));
}

static int lmc_codec_concat(lua_State *L)
{
    size_t keylen, vallen;
    uint8_t op = check_op(L, 1, OPS_CONCAT, "an append/prepend opcode");
    uint32_t opaque = check_u32(L, 2);
    uint64_t cas = opt_u64(L, 3);
    const char *key = check_key(L, 4, &keylen);
    const char *val = luaL_checklstring(L, 5, &vallen);
    mc_buf *b;

    check_body(L, 5, keylen, vallen);
    b = scratch(L);
    return push_encoded(L, b, mc_enc_concat(b, op, opaque, cas, key, keylen,
                                            val, vallen));
}

static int lmc_codec_delete(lua_State *L)
{
    size_t keylen;
    uint8_t op = check_op(L, 1, OPS_DELETE, "a delete opcode");
    uint32_t opaque = check_u32(L, 2);
    uint64_t cas = opt_u64(L, 3);
    const char *key = check_key(L, 4, &keylen);
    mc_buf *b = scratch(L);

    return push_encoded(L, b, mc_enc_delete(b, op, opaque, cas, key, keylen));
}

static int lmc_codec_arith(lua_State *L)
{
    size_t keylen;
    uint8_t op = check_op(L, 1, OPS_ARITH, "an increment/decrement opcode");
    uint32_t opaque = check_u32(L, 2);
    const char *key = check_key(L, 3, &keylen);
    uint64_t delta = opt_u64(L, 4);
    uint64_t initial = opt_u64(L, 5);
    uint32_t exptime = opt_u32(L, 6);
    mc_buf *b = scratch(L);

    return push_encoded(L, b, mc_enc_arith(b, op, opaque, key, keylen, delta,
                                           initial, exptime));
}

static int lmc_codec_touch(lua_State *L)
{
    size_t keylen;
    uint8_t op = check_op(L, 1, OPS_TOUCH, "a touch/gat opcode");
    uint32_t opaque = check_u32(L, 2);
    const char *key = check_key(L, 3, &keylen);
    uint32_t exptime = opt_u32(L, 4);
    mc_buf *b = scratch(L);

    return push_encoded(L, b, mc_enc_touch(b, op, opaque, key, keylen,
                                           exptime));
}

static int lmc_codec_flush(lua_State *L)
{
    uint8_t op = check_op(L, 1, OPS_FLUSH, "a flush opcode");
    uint32_t opaque = check_u32(L, 2);
    uint32_t delay = opt_u32(L, 3);
    mc_buf *b = scratch(L);

    return push_encoded(L, b, mc_enc_flush(b, op, opaque, delay));
}

static int lmc_codec_simple(lua_State *L)
{
    uint8_t op = check_op(L, 1, OPS_SIMPLE, "a noop/version/quit opcode");
    uint32_t opaque = check_u32(L, 2);
    mc_buf *b = scratch(L);

    return push_encoded(L, b, mc_enc_simple(b, op, opaque));
}

static int lmc_codec_stat(lua_State *L)
{
    size_t len;
    uint32_t opaque = check_u32(L, 1);
    const char *group = opt_bytes(L, 2, &len);
    mc_buf *b;

    if (len > 0xffff)
        luaL_argerror(L, 2, "group longer than 65535 bytes");
    b = scratch(L);
    return push_encoded(L, b, mc_enc_stat(b, opaque, group, len));
}

static int lmc_codec_status_str(lua_State *L)
{
    long long status = check_range(L, 1, 0, 0xffff, "0..65535");

    lua_pushstring(L, mc_status_str((uint16_t)status));
    return 1;
}

/* A random 32-bit number from the generator that seeds new connections'
 * opaques: for drivers that keep their own opaque counters. */
static int lmc_codec_random32(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)mc_random32());
    return 1;
}

static int lmc_scratch_gc(lua_State *L)
{
    mc_buf_free(lua_touserdata(L, 1));
    return 0;
}

/* ---- reader ------------------------------------------------------------- */

static void set_int(lua_State *L, const char *k, uint64_t v)
{
    lua_pushstring(L, k);
    lmc_pushint(L, v);
    lua_rawset(L, -3);
}

static void set_str(lua_State *L, const char *k, const char *p, size_t n)
{
    lua_pushstring(L, k);
    lua_pushlstring(L, p, n);
    lua_rawset(L, -3);
}

/* The reader, refused while get() copies a reply out of its buffer: an
 * allocation there can run a __gc finalizer, and a finalizer that fed or
 * reset this reader would free the bytes being copied. */
static lmc_reader *check_lreader(lua_State *L)
{
    lmc_reader *u = luaL_checkudata(L, 1, LMC_READER_MT);
    if (u->lent)
        luaL_error(L, "reader in use (called from a finalizer during get)");
    return u;
}

static mc_reader *check_reader(lua_State *L)
{
    return &check_lreader(L)->r;
}

static int lmc_codec_reader(lua_State *L)
{
    size_t max_body = 0;
    lmc_reader *u;

    if (!lua_isnoneornil(L, 1)) {
        long long v = check_range(L, 1, 0, 0x7fffffffffffffffLL,
                                  ">= 0");
        max_body = (uint64_t)v > SIZE_MAX ? SIZE_MAX : (size_t)v;
    }
    u = lua_newuserdata(L, sizeof *u);
    u->lent = 0;
    mc_reader_init(&u->r, max_body);
    luaL_setmetatable(L, LMC_READER_MT);
    return 1;
}

static int lmc_reader_feed(lua_State *L)
{
    mc_reader *r = check_reader(L);
    size_t n;
    const char *p = luaL_checklstring(L, 2, &n);

    if (mc_reader_feed(r, p, n) != 0)
        return luaL_error(L, "not enough memory");
    return 0;
}

static int lmc_reader_get(lua_State *L)
{
    lmc_reader *u = check_lreader(L);
    mc_reader *r = &u->r;
    mc_resp resp;
    int rc;

    if (!lua_isnoneornil(L, 2))
        luaL_checktype(L, 2, LUA_TTABLE);
    rc = mc_reader_get(r, &resp);
    if (rc == MC_READ_MORE) {
        lua_pushboolean(L, 0);
        return 1;
    }
    if (rc == MC_READ_ERROR) {
        /* nil, message, kind: "server_error" when the server sent a text
         * error line (the message is that line), else "protocol" */
        lua_pushnil(L);
        lua_pushstring(L, r->errstr);
        if (r->server_text)
            lua_pushliteral(L, "server_error");
        else
            lua_pushliteral(L, "protocol");
        return 3;
    }
    /* Raw sets: a __newindex of the caller's table must not run while
     * resp points into the buffer. */
    u->lent = 1;
    if (lua_istable(L, 2))
        lua_pushvalue(L, 2);
    else
        lua_createtable(L, 0, 9);
    set_int(L, "opcode", resp.opcode);
    set_int(L, "status", resp.status);
    set_int(L, "opaque", resp.opaque);
    set_int(L, "cas", resp.cas);
    set_int(L, "flags", resp.flags);
    set_int(L, "datatype", resp.datatype);
    set_str(L, "extras", resp.extras, resp.extlen);
    set_str(L, "key", resp.key, resp.keylen);
    set_str(L, "value", resp.value, resp.vallen);
    lua_pushliteral(L, "shape_ok");
    lua_pushboolean(L, mc_resp_shape_ok(&resp));
    lua_rawset(L, -3);
    u->lent = 0;
    return 1;
}

static int lmc_reader_pending(lua_State *L)
{
    lmc_pushint(L, mc_reader_pending(check_reader(L)));
    return 1;
}

static int lmc_reader_reset(lua_State *L)
{
    mc_reader_reset(check_reader(L));
    return 0;
}

static int lmc_reader_gc(lua_State *L)
{
    mc_reader_free(&((lmc_reader *)luaL_checkudata(L, 1, LMC_READER_MT))->r);
    return 0;
}

static const luaL_Reg reader_methods[] = {
    {"feed", lmc_reader_feed},
    {"get", lmc_reader_get},
    {"pending", lmc_reader_pending},
    {"reset", lmc_reader_reset},
    {NULL, NULL}
};

static const luaL_Reg codec_funcs[] = {
    {"reader", lmc_codec_reader},
    {"request", lmc_codec_request},
    {"get", lmc_codec_get},
    {"store", lmc_codec_store},
    {"concat", lmc_codec_concat},
    {"delete", lmc_codec_delete},
    {"arith", lmc_codec_arith},
    {"touch", lmc_codec_touch},
    {"flush", lmc_codec_flush},
    {"simple", lmc_codec_simple},
    {"stat", lmc_codec_stat},
    {"status_str", lmc_codec_status_str},
    {"random32", lmc_codec_random32},
    {NULL, NULL}
};

struct lmc_name {
    const char *name;
    unsigned code;
};

static const struct lmc_name op_names[] = {
    {"GET", MC_OP_GET}, {"SET", MC_OP_SET}, {"ADD", MC_OP_ADD},
    {"REPLACE", MC_OP_REPLACE}, {"DELETE", MC_OP_DELETE},
    {"INCREMENT", MC_OP_INCREMENT}, {"DECREMENT", MC_OP_DECREMENT},
    {"QUIT", MC_OP_QUIT}, {"FLUSH", MC_OP_FLUSH}, {"GETQ", MC_OP_GETQ},
    {"NOOP", MC_OP_NOOP}, {"VERSION", MC_OP_VERSION}, {"GETK", MC_OP_GETK},
    {"GETKQ", MC_OP_GETKQ}, {"APPEND", MC_OP_APPEND},
    {"PREPEND", MC_OP_PREPEND}, {"STAT", MC_OP_STAT}, {"SETQ", MC_OP_SETQ},
    {"ADDQ", MC_OP_ADDQ}, {"REPLACEQ", MC_OP_REPLACEQ},
    {"DELETEQ", MC_OP_DELETEQ}, {"INCREMENTQ", MC_OP_INCREMENTQ},
    {"DECREMENTQ", MC_OP_DECREMENTQ}, {"QUITQ", MC_OP_QUITQ},
    {"FLUSHQ", MC_OP_FLUSHQ}, {"APPENDQ", MC_OP_APPENDQ},
    {"PREPENDQ", MC_OP_PREPENDQ}, {"TOUCH", MC_OP_TOUCH}, {"GAT", MC_OP_GAT},
    {"GATQ", MC_OP_GATQ}, {"GATK", MC_OP_GATK}, {"GATKQ", MC_OP_GATKQ},
    {NULL, 0}
};

static const struct lmc_name status_names[] = {
    {"OK", MC_STATUS_OK}, {"KEY_ENOENT", MC_STATUS_KEY_ENOENT},
    {"KEY_EEXISTS", MC_STATUS_KEY_EEXISTS}, {"E2BIG", MC_STATUS_E2BIG},
    {"EINVAL", MC_STATUS_EINVAL}, {"NOT_STORED", MC_STATUS_NOT_STORED},
    {"DELTA_BADVAL", MC_STATUS_DELTA_BADVAL},
    {"NOT_MY_VBUCKET", MC_STATUS_NOT_MY_VBUCKET},
    {"AUTH_ERROR", MC_STATUS_AUTH_ERROR},
    {"AUTH_CONTINUE", MC_STATUS_AUTH_CONTINUE},
    {"UNKNOWN_COMMAND", MC_STATUS_UNKNOWN_COMMAND},
    {"ENOMEM", MC_STATUS_ENOMEM}, {"NOT_SUPPORTED", MC_STATUS_NOT_SUPPORTED},
    {"EINTERNAL", MC_STATUS_EINTERNAL}, {"EBUSY", MC_STATUS_EBUSY},
    {"ETMPFAIL", MC_STATUS_ETMPFAIL},
    {NULL, 0}
};

static void push_names(lua_State *L, const struct lmc_name *n)
{
    lua_newtable(L);
    for (; n->name; n++) {
        lmc_pushint(L, n->code);
        lua_setfield(L, -2, n->name);
    }
}

void lmc_codec_open(lua_State *L)
{
    mc_buf *b;

    if (luaL_newmetatable(L, LMC_READER_MT)) {
        lua_pushcfunction(L, lmc_reader_gc);
        lua_setfield(L, -2, "__gc");
        lua_newtable(L);
        luaL_setfuncs(L, reader_methods, 0);
        lua_setfield(L, -2, "__index");
    }
    lua_pop(L, 1);

    lua_createtable(L, 0, 20);
    b = lua_newuserdata(L, sizeof *b);
    memset(b, 0, sizeof *b);
    if (luaL_newmetatable(L, LMC_SCRATCH_MT)) {
        lua_pushcfunction(L, lmc_scratch_gc);
        lua_setfield(L, -2, "__gc");
    }
    lua_setmetatable(L, -2);
    luaL_setfuncs(L, codec_funcs, 1);

    push_names(L, op_names);
    lua_setfield(L, -2, "op");
    push_names(L, status_names);
    lua_setfield(L, -2, "status");
    lmc_pushint(L, MC_ARITH_NO_CREATE);
    lua_setfield(L, -2, "ARITH_NO_CREATE");
    lmc_pushint(L, MC_HEADER_LEN);
    lua_setfield(L, -2, "HEADER_LEN");
    lmc_pushint(L, MC_DEFAULT_MAX_BODY);
    lua_setfield(L, -2, "DEFAULT_MAX_BODY");

    lua_setfield(L, -2, "codec");
}
