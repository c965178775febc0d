/*
 * lmc_internal: what the binding's files share (lmc_client.c: helpers,
 * arguments, placement, life cycle and the module; lmc_ops.c: single-key
 * operations and the fast get/set; lmc_batch.c: every-server calls and
 * the multi-key batches; lmc_config.c: servers and options). Not exported.
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
    uint32_t opaque;
    mc_buf *out;
    const char *key; /* the key the reply must name (GETK, GATK), or NULL */
    size_t keylen;
    mc_resp r;
} op;


/* lmc_batch.c */
int m_delete_multi(lua_State *L);
int m_flush(lua_State *L);
int m_flush_all(lua_State *L);
int m_get_multi(lua_State *L);
int m_ping(lua_State *L);
int m_set_multi(lua_State *L);
int m_stats(lua_State *L);
int m_version(lua_State *L);

/* lmc_client.c */
uint32_t check_exptime(lua_State *L, lua_Integer v, const char *what);
lua_Integer check_integer(lua_State *L, int i, const char *name);
void destroy(lua_State *L, lmc_client *u);
int fail(lua_State *L, const char *err, const char *detail);
void get_args(lua_State *L, args *a, int has_value, const char *order);
int guarded(lua_State *L);
lua_Integer opt_int_field(lua_State *L, int t, const char *name, lua_Integer def);
lua_Integer opt_integer(lua_State *L, int i, const char *name, lua_Integer def);
int pick(lua_State *L, lmc_client *u, const char *key, size_t len, const char **ename, int claim);
void report_events(lua_State *L, lmc_client *u);
/* self in a method: argument 1, checked by the method's wrapper (guarded)
 * or by the fast entries' cookie check */
static inline lmc_client *self(lua_State *L)
{
    return lua_touserdata(L, 1);
}
/* mixed into each client's cookie (check_client) */
extern uintptr_t client_secret;

/* Argument 1 as a client: a full userdata of the client's size carrying
 * its cookie (see client_secret in lmc_client.c), else luaL_checkudata,
 * which raises the usual error. Inline: every call starts here. */
static inline lmc_client *check_client(lua_State *L)
{
    lmc_client *u = lua_touserdata(L, 1);
    if (u && lua_rawlen(L, 1) == sizeof(*u) &&
        u->cookie == ((uintptr_t)u ^ client_secret))
        return u;
    return luaL_checkudata(L, 1, CLIENT_MT);
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

#if LUA_VERSION_NUM >= 504
int f_get(lua_State *L);
int f_set(lua_State *L);
#else
/* LuaJIT and 5.1-5.3 collect before copying a new string: guarded only */
#define f_get guarded
#define f_set guarded
#endif

#endif
