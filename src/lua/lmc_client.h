/*
 * lmc_client: the `memcached` Lua module: the client userdata
 * ("memcached.client"), its constructors and the ERR_* constants.
 */
#ifndef LMC_CLIENT_H
#define LMC_CLIENT_H

#include <lua.h>

/* The release: memcached._VERSION. The Makefile reads it from here (make
 * dist); the release rockspec and CHANGELOG.md must say the same
 * (spec/release_spec.lua checks). */
#define LMC_VERSION "0.1.0"

#ifndef LMC_EXPORT
#define LMC_EXPORT __attribute__((visibility("default")))
#endif

LMC_EXPORT int luaopen_memcached(lua_State *L);

#endif
