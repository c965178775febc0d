/*
 * lmc_client: the `memcached` Lua module: the client userdata
 * ("memcached.client"), its constructors and the ERR_* constants.
 */
#ifndef LMC_CLIENT_H
#define LMC_CLIENT_H

#include <lua.h>

#ifndef LMC_EXPORT
#define LMC_EXPORT __attribute__((visibility("default")))
#endif

LMC_EXPORT int luaopen_memcached(lua_State *L);

#endif
