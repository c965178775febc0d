/*
 * lmc_internal: what the binding's files share (lmc_client.c: helpers,
 * arguments, placement, scratch, life cycle and the module; lmc_ops.c:
 * single-key operations; lmc_batch.c: the multi-key batches; lmc_every.c:
 * calls to every server; lmc_config.c: servers and options). Not
 * exported.
 */
#ifndef LMC_INTERNAL_H
#define LMC_INTERNAL_H

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
#include "lmc_secure.h"
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

/* One key of a batch: the key (a string the call keeps on its stack),
 * the value to send (set_multi: vptr, a Lua string framed with hdr, or at
 * voff in the call's bytes) or the value received (get_multi: at voff,
 * got set), and the key's failure. */
struct bkey {
    const char *key;
    size_t len;
    size_t voff, vlen;
    size_t koff;          /* ping/flush/version: the server's name */
    const char *vptr;
    const char *err;      /* an ERR_* string, or NULL */
    uint32_t flags;       /* get_multi: the item's flags */
    unsigned char hdr[5], hlen;
    unsigned char got;    /* get_multi: a value arrived */
};

/* A call's scratch: the key list, the server of each key, and one byte
 * arena (encoded values on the way out; replies on the way back, read
 * whole before any becomes a Lua value). The client lends its own to one
 * call at a time (scratch_lend); a call made while it is lent (from a
 * selector or a __gc finalizer run by another call) gets a box of its
 * own, a userdata the collector frees. */
typedef struct lmc_scratch {
    struct bkey *keys;
    int *srv;
    size_t cap;
    mc_buf bytes;
    int lent;
} lmc_scratch;

typedef struct lmc_client {
    mc_client *c;
    int closed;          /* close() was called: calls fail, the memory
                            goes with the userdata (__gc) */
    lmc_vctx *vctx;
    uint32_t mp_flag;    /* flags that mark msgpack values */
    size_t max_value;    /* larger values are refused before sending */
    int cb_ref;          /* server-error callback, LUA_NOREF when none */
    int sel_ref;         /* custom selector */
    enum sel_mode sel_mode;
    lmc_scratch sc;      /* lent to one call at a time */
} lmc_client;

/* Every method passes here once its arguments are checked. */
#define CLOSED_CHECK(L, u)                                                   \
    do {                                                                     \
        if ((u)->closed)                                                     \
            return fail((L), ERR(CLIENT_CLOSED), "the client was closed");     \
    } while (0)

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

typedef struct op {
    lmc_client *u;
    int srv;
    mc_req q;        /* the request: its connection, opaque and error */
    mc_buf *out;
    const char *key; /* the key the reply must name (GETK, GATK), or NULL */
    size_t keylen;
    mc_resp r;
} op;


/* lmc_batch.c */
int arena_add(lmc_scratch *sc, const char *p, size_t n, size_t *off);
int m_delete_multi(lua_State *L);
int m_get_multi(lua_State *L);
int m_set_multi(lua_State *L);
int run_batch(lmc_client *u, lmc_scratch *sc, size_t n, unsigned long gen,
              double since, int every_reply,
              int (*encode)(void *, size_t, mc_buf *, uint32_t),
              int (*reply)(void *, size_t, const mc_resp *),
              void (*failed)(void *, size_t, int, const char *),
              void (*revoke)(void *, size_t, int, const char *), void *ud);

/* lmc_every.c */
int m_flush(lua_State *L);
int m_flush_all(lua_State *L);
int m_ping(lua_State *L);
int m_stats(lua_State *L);
int m_version(lua_State *L);

/* lmc_client.c */
uint32_t check_exptime(lua_State *L, lua_Integer v, const char *what);
lua_Integer check_integer(lua_State *L, int i, const char *name);
void destroy(lua_State *L, lmc_client *u);
int fail(lua_State *L, const char *err, const char *detail);
void get_args(lua_State *L, args *a, int has_value, const char *order);
lmc_scratch *scratch_lend(lua_State *L, lmc_client *u);
void scratch_return(lmc_client *u, lmc_scratch *sc);
int scratch_grow(lmc_scratch *sc, size_t n);
lua_Integer opt_int_field(lua_State *L, int t, const char *name, lua_Integer def);
lua_Integer opt_integer(lua_State *L, int i, const char *name, lua_Integer def);
int pick(lua_State *L, lmc_client *u, const char *key, size_t len, const char **ename, int claim);
void report_events(lua_State *L, lmc_client *u);
/* self in a method: argument 1, checked by the method's entry (method()
 * in lmc_client.c) */
static inline lmc_client *self(lua_State *L)
{
    return lua_touserdata(L, 1);
}
int status_fail(lua_State *L, enum mc_op_kind k, const mc_resp *r, const char *server);
const char *status_name(enum mc_op_kind k, uint16_t st);

/* lmc_config.c */
int l_new(lua_State *L);
int l_new_from_selector(lua_State *L);
int m_add_server(lua_State *L);
int m_pick_server(lua_State *L);
int m_servers(lua_State *L);
int m_set_callback(lua_State *L);
int m_set_servers(lua_State *L);

/* lmc_ops.c */
int is_lock(const mc_resp *r);
int m_add(lua_State *L);
int m_add_raw(lua_State *L);
int m_append(lua_State *L);
int m_cas(lua_State *L);
int m_decrement(lua_State *L);
int m_delete(lua_State *L);
int m_delete_lock(lua_State *L);
int m_get(lua_State *L);
int m_get_and_touch(lua_State *L);
int m_increment(lua_State *L);
int m_prepend(lua_State *L);
int m_replace(lua_State *L);
int m_replace_raw(lua_State *L);
int m_set(lua_State *L);
int m_set_raw(lua_State *L);
int m_touch(lua_State *L);
int m_touch_atomic(lua_State *L);
int push_value(lua_State *L, lmc_client *u, const mc_resp *r, char *err, size_t errlen);
size_t str_header(unsigned char *h, size_t n);

#endif
