/*
 * lmc_core: what the two halves of memcached.core share: lmc_core.c (the
 * core's rules, the module) and lmc_core_io.c (sockets, TLS, SASL).
 */
#ifndef LMC_CORE_H
#define LMC_CORE_H

#include <lauxlib.h>
#include <lua.h>

/* A metatable `name` whose __index holds methods m and whose __gc is gc. */
void lmc_core_class(lua_State *L, const char *name, const luaL_Reg *m,
                    lua_CFunction gc);
/* The userdata at index 1 of a method of a class made by lmc_core_class
 * (its metatable is the method's upvalue 1, so no registry lookup by
 * name is made); else raises luaL_checkudata's error. */
void *lmc_check_self(lua_State *L, const char *name);
/* The core's ring (memcached.core.ring_new) at index i, or an error. */
struct mc_ring;
struct mc_ring *lmc_check_ring(lua_State *L, int i);
/* Adds the socket, TLS and SASL functions to the module table on top of
 * the stack, and makes their classes. */
void lmc_core_io_open(lua_State *L);

/* Moves bytes on the descriptor or TLS connection at index i, never
 * waiting: the count (> 0), 0 when it would block, or -1 with nil, err,
 * msg pushed (a receive's peer close too). lmc_core_io.c. */
long lmc_io_send(lua_State *L, int i, const char *p, size_t len);
long lmc_io_recv(lua_State *L, int i, char *p, size_t max);
/* Adds memcached.core.pipe (lmc_pipe.c) to the module table on top of the
 * stack, and makes its class. */
void lmc_pipe_open(lua_State *L);

#endif
