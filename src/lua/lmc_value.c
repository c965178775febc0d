/*
 * Lua values <-> msgpack, both ways through msgpack-c.
 *
 * Encoding runs msgpack-c's packer straight into the caller's mc_buf.
 * Decoding runs msgpack_unpack() into a zone the lmc_vctx keeps and clears
 * between calls, so a value whose object tree fits the zone's first chunk
 * (8 KB, some 340 elements at 24 bytes each) costs no malloc, then turns
 * the object tree into Lua values. It is the
 * obsolete-marked call, yet the only one in msgpack-c 4.0 that takes the
 * caller's zone: msgpack_unpack_next() frees and mallocs a zone per call.
 *
 * Re-entry: creating Lua tables and strings can run __gc finalizers, and a
 * finalizer may decode or encode with the same context while the outer
 * decode still reads its object tree from the zone. So the zone (and
 * encode()'s output buffer) is lent for the duration of a call; a call that
 * finds it lent uses a fresh one owned by a userdata on the Lua stack, which
 * frees it even when a Lua error unwinds the call.
 */
#include "lmc_value_int.h"

/* Registry key of the weak-keyed table {array = length} (see lmc_value.h):
 * its address is the key. */
const char lmc_v_arraylen_key = 'n';

lmc_vctx *lmc_vctx_new(void)
{
    lmc_vctx *c = calloc(1, sizeof(lmc_vctx));
    if (c && !msgpack_zone_init(&c->zone, MSGPACK_ZONE_CHUNK_SIZE)) {
        free(c);
        return NULL;
    }
    return c;
}

void lmc_vctx_free(lmc_vctx *c)
{
    if (c) {
        mc_buf_free(&c->out);
        msgpack_zone_destroy(&c->zone);
        free(c);
    }
}

/* ------------------------------------------------------------ Lua face */

static lmc_vctx *upvalue_ctx(lua_State *L)
{
    lmc_vctx **ud = (lmc_vctx **)lua_touserdata(L, lua_upvalueindex(1));
    return *ud;
}

/* The output buffer is lent while the result is copied out: LuaJIT runs
 * the collector (and so finalizers, which may encode) before it copies a
 * new string. */
static int l_encode(lua_State *L)
{
    lmc_vctx *c = upvalue_ctx(L);
    mc_buf *out;
    char err[256];
    int rc;

    luaL_checkany(L, 1);
    lua_settop(L, 1);
    if (c->out_lent) {
        out = lmc_v_push_owned(L, sizeof *out, LMC_TMPBUF_MT, lmc_v_tmp_buf_gc);
    } else {
        out = &c->out;
        c->out_lent = 1;
    }
    out->len = 0;
    rc = lmc_value_encode(L, c, 1, out, err, sizeof err);
    if (rc == 0)
        lua_pushlstring(L, out->data ? out->data : "", out->len);
    if (out == &c->out) {
        mc_buf_clear(out, LMC_OUT_KEEP);
        c->out_lent = 0;
    } else {
        mc_buf_free(out);
    }
    if (rc) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

static int l_decode(lua_State *L)
{
    lmc_vctx *c = upvalue_ctx(L);
    size_t n;
    const char *p = luaL_checklstring(L, 1, &n);
    char err[256];

    if (lmc_value_decode(L, c, p, n, err, sizeof err)) {
        lua_pushnil(L);
        lua_pushstring(L, err);
        return 2;
    }
    return 1;
}

/* memcached.array(t [, n]) -> t */
static int l_array(lua_State *L)
{
    size_t count, max;
    lua_Integer n;

    luaL_checktype(L, 1, LUA_TTABLE);
    lua_settop(L, 2);
    if (lua_getmetatable(L, 1)) {
        luaL_getmetatable(L, LMC_ARRAY_MT);
        luaL_getmetatable(L, LMC_MAP_MT);
        if (!lua_rawequal(L, -1, -3) && !lua_rawequal(L, -2, -3))
            return luaL_argerror(L, 1, "table has another metatable");
        lua_pop(L, 3);
    }
    max = lmc_v_largest_index(L, 1, &count);
    if (lua_isnil(L, 2)) {
        if (max > UINT32_MAX)
            return luaL_argerror(L, 1, "largest index too large for a msgpack array");
        n = (lua_Integer)max;
    } else {
        if (!lua_isinteger(L, 2))
            return luaL_argerror(L, 2, "integer expected");
        n = (lua_Integer)lmc_toint(L, 2);
        if (n < 0 || n > (lua_Integer)UINT32_MAX)
            return luaL_argerror(L, 2, "out of range (0..4294967295)");
        if ((size_t)n < max)
            return luaL_argerror(L, 2, "smaller than the table's largest index");
    }
    luaL_getmetatable(L, LMC_ARRAY_MT);
    lua_setmetatable(L, 1);
    if (lmc_v_push_lengths(L)) {
        lua_pushvalue(L, 1);
        lmc_pushint(L, n);
        lua_rawset(L, -3);
    }
    lua_settop(L, 1);
    return 1;
}

/* memcached.array_length(t) -> n | nil */
static int l_array_length(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    if (lmc_v_push_lengths(L)) {
        lua_pushvalue(L, 1);
        lua_rawget(L, -2);
        return 1;
    }
    lua_pushnil(L);
    return 1;
}

static int l_ctx_gc(lua_State *L)
{
    lmc_vctx **ud = (lmc_vctx **)lua_touserdata(L, 1);
    if (ud && *ud) {
        lmc_vctx_free(*ud);
        *ud = NULL;
    }
    return 0;
}

static void new_metatable(lua_State *L, const char *name)
{
    luaL_newmetatable(L, name); /* an existing one is reused */
    lua_pushstring(L, name);
    lua_setfield(L, -2, "__name");
}

void lmc_value_open(lua_State *L)
{
    lmc_vctx **ud;
    int mod = lua_gettop(L);

    luaL_checkstack(L, 6, "lmc_value_open");
    new_metatable(L, LMC_ARRAY_MT);
    lua_pushvalue(L, -1);
    lua_setfield(L, mod, "array_mt");
    lua_newtable(L);
    lua_pushvalue(L, -2);
    lua_setmetatable(L, -2);
    lua_setfield(L, mod, "empty_array");
    lua_pop(L, 1);

    new_metatable(L, LMC_MAP_MT);
    lua_setfield(L, mod, "map_mt");

    /* Recorded array lengths, keyed weakly by the table: an entry goes
     * with its table. Kept if the module is opened again. */
    lua_pushlightuserdata(L, (void *)&lmc_v_arraylen_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (!lua_istable(L, -1)) {
        lua_pop(L, 1);
        lua_pushlightuserdata(L, (void *)&lmc_v_arraylen_key);
        lua_newtable(L);
        lua_newtable(L);
        lua_pushliteral(L, "k");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_rawset(L, LUA_REGISTRYINDEX);
    } else {
        lua_pop(L, 1);
    }
    lua_pushcfunction(L, l_array);
    lua_setfield(L, mod, "array");
    lua_pushcfunction(L, l_array_length);
    lua_setfield(L, mod, "array_length");

    /* Created now, so that a nested call does not have to. */
    luaL_newmetatable(L, LMC_TMPZONE_MT);
    lua_pushcfunction(L, lmc_v_tmp_zone_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);
    luaL_newmetatable(L, LMC_TMPBUF_MT);
    lua_pushcfunction(L, lmc_v_tmp_buf_gc);
    lua_setfield(L, -2, "__gc");
    lua_pop(L, 1);

    /* The context is born empty with its __gc in place, so a failure while
     * allocating it cannot leak. */
    ud = (lmc_vctx **)lua_newuserdata(L, sizeof *ud);
    *ud = NULL;
    new_metatable(L, LMC_VCTX_MT);
    lua_pushcfunction(L, l_ctx_gc);
    lua_setfield(L, -2, "__gc");
    lua_setmetatable(L, -2);
    *ud = lmc_vctx_new();
    if (*ud == NULL)
        luaL_error(L, "out of memory");

    lua_pushvalue(L, -1);
    lua_pushcclosure(L, l_encode, 1);
    lua_setfield(L, mod, "encode");
    lua_pushcclosure(L, l_decode, 1);
    lua_setfield(L, mod, "decode");
}
