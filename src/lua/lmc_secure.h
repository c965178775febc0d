/*
 * lmc_secure: the tls, username and password options, read once for both
 * faces that take them: the blocking client (lmc_config.c) and async
 * mode's memcached.core.secure (lmc_core.c).
 */
#ifndef LMC_SECURE_H
#define LMC_SECURE_H

#include <stddef.h>

#include <lua.h>

#include "mc_tls.h"

/* SASL credentials as read from the options (pointers into Lua strings
 * kept on the stack). */
struct lmc_cred {
    const char *user, *pass;
    size_t ulen, plen;
};

/* Reads tls, username and password from the options table at t into *to
 * and *cred (strings left on the stack). Returns 1 when TLS is asked for.
 * Raises on a wrong type, an unknown tls field or credentials given
 * half. */
int lmc_read_secure(lua_State *L, int t, mc_tls_opts *to,
                    struct lmc_cred *cred);

#endif
