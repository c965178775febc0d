/*
 * memcached.core's sockets (lmc_core.c has the rules): the few primitives
 * a Lua-level driver needs on plain descriptors, none of which ever waits,
 * and TLS and SASL on a new connection.
 *
 * Socket errors come back as the core's error numbers (enum mc_err) with
 * a message; "would block" is an answer, not an error (false).
 *
 * TLS and SASL (the tls, username and password options): secure() reads
 * the options as the blocking client does (lmc_read_secure) and builds
 * its TLS context (mc_tls_ctx_new); tls_start puts the driver's TLS
 * transport (src/driver/mc_tls.c) on a connected descriptor, whose
 * handshake the Lua driver steps (t:handshake: "r"/"w" to wait for, or
 * done) through its own wait hook. send and recv take such a connection
 * in place of a descriptor. SASL PLAIN is the core's frames and verdicts
 * (mc_abi_sasl_frame, mc_abi_sasl_check); the driver moves the bytes.
 */
#define _GNU_SOURCE /* SOCK_NONBLOCK, SOCK_CLOEXEC, MSG_NOSIGNAL */
#include <errno.h>
#include <poll.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

#include "lmc_client.h"
#include "lmc_compat.h"
#include "lmc_core.h"
#include "lmc_secure.h"
#include "mc_abi.h"
#include "mc_codec.h"
#include "mc_conn.h"
#include "mc_error.h"
#include "mc_proto.h"
#include "mc_tls.h"

#define TLS_CTX_MT "memcached.core.tls_ctx"
#define TLS_MT "memcached.core.tls"
#define SLOT_MT "memcached.core.tls_slot"
#define MUX_MT "memcached.core.mux"
/* registry: descriptor -> its TLS state (weak values), so that close(fd)
 * ends the TLS state too, at once rather than at the next collection */
#define TLS_BY_FD "memcached.core.tls_by_fd"

/* ---- sockets on plain descriptors; nothing here waits ---- */

static int sock_err(int e)
{
    switch (e) {
    case ECONNREFUSED:
    case ENOENT:
        return MC_ERR_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ENOTCONN:
        return MC_ERR_CLOSED;
    case ETIMEDOUT:
        return MC_ERR_TIMEOUT;
    case ENOMEM:
    case ENOBUFS:
        return MC_ERR_NOMEM;
    default:
        return MC_ERR_IO;
    }
}

/* nil, err, "what: strerror" */
static int push_fail(lua_State *L, const char *what, int e)
{
    lua_pushnil(L);
    lua_pushinteger(L, sock_err(e));
    lua_pushfstring(L, "%s: %s", what, strerror(e));
    return 3;
}

/* ---- TLS and SASL on a new connection ---- */

typedef struct { mc_tls_ctx *t; } ltls_ctx;

/* A server's TLS session slot (mc_tls_start's slot): shared by every
 * connection to the server, which OpenSSL may fill at any read, so it is
 * counted, and freed once neither the driver nor a connection holds it. */
typedef struct { struct ssl_session_st *sess; int refs; } tls_slot;
typedef struct { tls_slot *s; } lslot;

/* A connection's TLS state: mc_tls's transport on an mc_conn that holds
 * only the descriptor, the transport and the codec (the codec's cut keeps
 * records at request boundaries, mc_tls.c). The descriptor stays the
 * driver's: freeing this never closes it. */
typedef struct { mc_conn *c; tls_slot *slot; } ltls;

static void slot_release(tls_slot *s)
{
    if (s && --s->refs == 0) {
        mc_tls_session_free(s->sess);
        free(s);
    }
}

static void tls_free(ltls *u)
{
    if (u->c) {
        u->c->fd = -1; /* the driver closes the descriptor */
        u->c->tp->close(u->c);
        free(u->c);
        u->c = NULL;
    }
    slot_release(u->slot);
    u->slot = NULL;
}

/* secure(opts) -> tls context or false, username or nil, password or nil;
 * or nil, err, msg (a file that cannot be loaded, credentials that PLAIN
 * cannot carry). Raises on wrong option types, as the blocking client's
 * new does. */
static int c_secure(lua_State *L)
{
    mc_tls_opts o;
    struct lmc_cred cred = {NULL, NULL, 0, 0};
    char err[256];
    int tls;
    luaL_checktype(L, 1, LUA_TTABLE);
    tls = lmc_read_secure(L, 1, &o, &cred); /* its strings stay on the stack */
    if (cred.user) {
        char frame[24 + 2 * 255 + 7];
        /* what the blocking client refuses (mc_client_secure), by the same
         * rule: a step that cannot be framed */
        if (mc_abi_sasl_frame(frame, sizeof frame, 1, 0, cred.user, cred.ulen,
                              cred.pass, cred.plen) <= 0) {
            lua_pushnil(L);
            lua_pushinteger(L, MC_ERR_AUTH);
            lua_pushliteral(L, "username and password must be at most 255 "
                               "bytes, with no NUL byte");
            return 3;
        }
    }
    if (tls) {
        ltls_ctx *x = lua_newuserdata(L, sizeof *x);
        x->t = NULL;
        luaL_setmetatable(L, TLS_CTX_MT);
        x->t = mc_tls_ctx_new(&o, err, sizeof err);
        if (!x->t) {
            lua_pushnil(L);
            lua_pushinteger(L, MC_ERR_TLS);
            lua_pushstring(L, err);
            return 3;
        }
    } else {
        lua_pushboolean(L, 0);
    }
    if (cred.user) {
        lua_pushlstring(L, cred.user, cred.ulen);
        lua_pushlstring(L, cred.pass, cred.plen);
    } else {
        lua_pushnil(L);
        lua_pushnil(L);
    }
    return 3;
}

static int x_gc(lua_State *L)
{
    ltls_ctx *x = luaL_checkudata(L, 1, TLS_CTX_MT);
    /* connections made from it keep what they need (SSL_new holds the
     * SSL_CTX) */
    mc_tls_ctx_free(x->t);
    x->t = NULL;
    return 0;
}

/* tls_slot() -> a server's session slot */
static int c_tls_slot(lua_State *L)
{
    lslot *u = lua_newuserdata(L, sizeof *u);
    u->s = NULL;
    luaL_setmetatable(L, SLOT_MT);
    u->s = calloc(1, sizeof *u->s);
    if (!u->s)
        return luaL_error(L, "out of memory");
    u->s->refs = 1;
    return 1;
}

static int sl_gc(lua_State *L)
{
    lslot *u = luaL_checkudata(L, 1, SLOT_MT);
    slot_release(u->s);
    u->s = NULL;
    return 0;
}

/* tls_start(ctx, fd, host, slot) -> TLS connection; or nil, err, msg.
 * host: the server's host as configured (a name or an IP address to
 * verify, a name to send as SNI), nil for a unix socket. The handshake
 * is t:handshake's. */
static int c_tls_start(lua_State *L)
{
    ltls_ctx *x = luaL_checkudata(L, 1, TLS_CTX_MT);
    int fd = (int)luaL_checkinteger(L, 2);
    const char *host = luaL_optstring(L, 3, NULL);
    lslot *sl = luaL_checkudata(L, 4, SLOT_MT);
    char msg[256];
    ltls *u;
    int rc;
    if (!x->t || !sl->s)
        return luaL_error(L, "TLS context or slot already freed");
    u = lua_newuserdata(L, sizeof *u);
    u->c = NULL;
    u->slot = NULL;
    luaL_setmetatable(L, TLS_MT);
    u->c = calloc(1, sizeof *u->c);
    if (!u->c)
        return luaL_error(L, "out of memory");
    u->c->fd = fd;
    u->c->tp = &mc_transport_plain;
    u->c->codec = &mc_codec_binary;
    u->slot = sl->s;
    u->slot->refs++;
    msg[0] = '\0';
    rc = mc_tls_start(u->c, x->t, host, &u->slot->sess, msg, sizeof msg);
    if (rc != MC_OK) {
        tls_free(u);
        lua_pushnil(L);
        lua_pushinteger(L, rc);
        lua_pushstring(L, msg);
        return 3;
    }
    lua_getfield(L, LUA_REGISTRYINDEX, TLS_BY_FD);
    lua_pushvalue(L, -2);
    lmc_rawseti(L, -2, fd);
    lua_pop(L, 1);
    return 1;
}

static ltls *check_tls(lua_State *L, int i)
{
    return luaL_checkudata(L, i, TLS_MT);
}

/* t:handshake() -> true (done), "r" or "w" (wait for that, then call
 * again), or nil, err, msg */
static int t_handshake(lua_State *L)
{
    ltls *u = check_tls(L, 1);
    char msg[256];
    short want = 0;
    int rc;
    if (!u->c) {
        lua_pushnil(L);
        lua_pushinteger(L, MC_ERR_CLOSED);
        lua_pushliteral(L, "TLS handshake: connection closed");
        return 3;
    }
    msg[0] = '\0';
    rc = mc_tls_handshake_step(u->c, &want, msg, sizeof msg);
    if (rc == MC_OK) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (rc == MC_TLS_AGAIN) {
        lua_pushstring(L, want == POLLOUT ? "w" : "r");
        return 1;
    }
    lua_pushnil(L);
    lua_pushinteger(L, rc);
    lua_pushstring(L, msg);
    return 3;
}

/* t:resumed() -> true when the handshake resumed the server's session */
static int t_resumed(lua_State *L)
{
    ltls *u = check_tls(L, 1);
    lua_pushboolean(L, u->c && mc_tls_resumed(u->c));
    return 1;
}

static int t_gc(lua_State *L)
{
    tls_free(check_tls(L, 1));
    return 0;
}

/* A TLS send or recv failed with errno e: nil, err, "what: why" (EPROTO
 * is the transport's own failure, MC_ERR_TLS in OpenSSL's words) */
static int tls_fail(lua_State *L, ltls *u, const char *what, int e)
{
    const char *why = e == EPROTO && u->c->tp->why ? u->c->tp->why(u->c) : NULL;
    if (!why)
        return push_fail(L, what, e);
    lua_pushnil(L);
    lua_pushinteger(L, MC_ERR_TLS);
    lua_pushfstring(L, "%s: %s", what, why);
    return 3;
}

static int tls_closed(lua_State *L, const char *what)
{
    lua_pushnil(L);
    lua_pushinteger(L, MC_ERR_CLOSED);
    lua_pushfstring(L, "%s: connection closed", what);
    return 3;
}

/* connect(addr) -> fd, in_progress; or nil, err, msg. addr: a server
 * address whose host is numeric (names are resolved at new) or a unix
 * socket; the socket is non-blocking from the start. */
static int c_connect(lua_State *L)
{
    mc_addr a;
    char host[256], err[256];
    unsigned port = 0;
    int fd, one = 1;
    if (mc_addr_parse(luaL_checkstring(L, 1), &a, host, sizeof host, &port,
                      err, sizeof err) != 0) {
        lua_pushnil(L);
        lua_pushinteger(L, MC_ERR_BAD_SERVER);
        lua_pushstring(L, err);
        return 3;
    }
    fd = socket(a.sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return push_fail(L, "socket", errno);
    if (a.sa.ss_family != AF_UNIX)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&a.sa, a.salen) == 0) {
        lua_pushinteger(L, fd);
        lua_pushboolean(L, 0);
        return 2;
    }
    if (errno == EINPROGRESS || errno == EAGAIN) {
        /* EAGAIN: a unix socket whose backlog is full */
        lua_pushinteger(L, fd);
        lua_pushboolean(L, 1);
        return 2;
    }
    {
        int e = errno;
        close(fd);
        return push_fail(L, "connect", e);
    }
}

/* connected(fd) -> true; or nil, err, msg: the outcome of a connect in
 * progress, once the descriptor is writable */
static int c_connected(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1), e = 0;
    socklen_t n = sizeof e;
    if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &e, &n) != 0)
        e = errno;
    if (e != 0)
        return push_fail(L, "connect", e);
    lua_pushboolean(L, 1);
    return 1;
}

/* Moves bytes on the descriptor or TLS connection at index i, never
 * waiting: the count (> 0), 0 when it would block, or -1 with nil, err,
 * msg pushed (for a receive, the peer's close too: MC_ERR_CLOSED). A TLS
 * connection may hold decrypted bytes the descriptor no longer shows:
 * receive before waiting. */
long lmc_io_send(lua_State *L, int i, const char *p, size_t len)
{
    ssize_t n;
    if (lua_type(L, i) != LUA_TNUMBER) {
        ltls *u = check_tls(L, i);
        if (!u->c) {
            tls_closed(L, "send");
            return -1;
        }
        if (len == 0)
            return 0;
        n = u->c->tp->send(u->c, p, len, MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            tls_fail(L, u, "send", errno);
            return -1;
        }
        return (long)n;
    }
    do
        n = send((int)lua_tointeger(L, i), p, len, MSG_NOSIGNAL | MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        push_fail(L, "send", errno);
        return -1;
    }
    return (long)n;
}

long lmc_io_recv(lua_State *L, int i, char *p, size_t max)
{
    ssize_t n;
    if (lua_type(L, i) != LUA_TNUMBER) {
        ltls *u = check_tls(L, i);
        if (!u->c) {
            tls_closed(L, "receive");
            return -1;
        }
        n = u->c->tp->recv(u->c, p, max, MSG_DONTWAIT);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            tls_fail(L, u, "receive", errno);
            return -1;
        }
    } else {
        int fd = (int)lua_tointeger(L, i);
        do
            n = recv(fd, p, max, MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            push_fail(L, "receive", errno);
            return -1;
        }
    }
    if (n == 0) {
        lua_pushnil(L);
        lua_pushinteger(L, MC_ERR_CLOSED);
        lua_pushliteral(L, "receive: closed by the server");
        return -1;
    }
    return n > 0 ? (long)n : 0;
}

/* send(fd or tls, data [, from]) -> bytes sent (0: would block); or nil,
 * err, msg */
static int c_send(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 2, &len);
    lua_Integer from = luaL_optinteger(L, 3, 1);
    long n;
    if (from < 1 || (size_t)from > len + 1)
        return luaL_argerror(L, 3, "position outside the data");
    n = lmc_io_send(L, 1, p + from - 1, len - (size_t)(from - 1));
    if (n < 0)
        return 3;
    lua_pushinteger(L, n);
    return 1;
}

/* recv(fd or tls [, max]) -> bytes; false (would block); or nil, err, msg
 * (the peer's close is MC_ERR_CLOSED). A TLS connection may hold
 * decrypted bytes the descriptor no longer shows: call recv before
 * waiting, as the driver always does. */
static int c_recv(lua_State *L)
{
    size_t max = (size_t)luaL_optinteger(L, 2, 65536);
    char p[65536]; /* on the C stack: every Lua can push it from there */
    long n;
    if (max > sizeof p || max == 0)
        max = sizeof p;
    n = lmc_io_recv(L, 1, p, max);
    if (n < 0)
        return 3;
    if (n == 0) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushlstring(L, p, (size_t)n);
    return 1;
}

/* close(fd): closes the descriptor, and ends its TLS state if it has
 * one (tls_start) */
static int c_close(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    if (fd < 0)
        return 0;
    lua_getfield(L, LUA_REGISTRYINDEX, TLS_BY_FD);
    lmc_rawgeti(L, -1, fd);
    if (lua_type(L, -1) == LUA_TUSERDATA) {
        tls_free(check_tls(L, -1));
        lua_pushnil(L);
        lmc_rawseti(L, -3, fd);
    }
    lua_pop(L, 2);
    close(fd);
    return 0;
}

/* sasl_frame(step, opaque, user, pass) -> the request of SASL step 0 (the
 * mechanisms) or 1 (PLAIN's credentials); nil when they cannot be framed */
static int c_sasl_frame(lua_State *L)
{
    size_t ulen, plen;
    int step = (int)luaL_checkinteger(L, 1);
    uint32_t opaque = (uint32_t)luaL_checkinteger(L, 2);
    const char *user = luaL_checklstring(L, 3, &ulen);
    const char *pass = luaL_checklstring(L, 4, &plen);
    char out[24 + 2 * 255 + 7];
    int n = mc_abi_sasl_frame(out, sizeof out, step, opaque, user, ulen, pass,
                              plen);
    if (n <= 0)
        return 0;
    lua_pushlstring(L, out, (size_t)n);
    return 1;
}

/* sasl_check(bytes, step, opaque) -> true (the step passed); false, need
 * (the reply is not whole: need bytes in all); or nil, err, msg */
static int c_sasl_check(lua_State *L)
{
    size_t len;
    const char *p = luaL_checklstring(L, 1, &len);
    int step = (int)luaL_checkinteger(L, 2);
    uint32_t opaque = (uint32_t)luaL_checkinteger(L, 3);
    uint32_t need = 0;
    char msg[256];
    int rc;
    msg[0] = '\0';
    rc = mc_abi_sasl_check(p, len, step, opaque, &need, msg, sizeof msg);
    if (rc == 0) {
        lua_pushboolean(L, 1);
        return 1;
    }
    if (rc < 0) {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, need);
        return 2;
    }
    lua_pushnil(L);
    lua_pushinteger(L, rc);
    lua_pushstring(L, msg);
    return 3;
}

/* An eventfd: a descriptor a coroutine can wait on (through the wait
 * hook) until another one signals it; for loops that give no way to wake
 * a coroutine. efd_new() -> fd; efd_signal(fd); efd_drain(fd) */
static int c_efd_new(lua_State *L)
{
    int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        return push_fail(L, "eventfd", errno);
    lua_pushinteger(L, fd);
    return 1;
}

static int c_efd_signal(lua_State *L)
{
    uint64_t one = 1;
    ssize_t n = write((int)luaL_checkinteger(L, 1), &one, sizeof one);
    lua_pushboolean(L, n == (ssize_t)sizeof one);
    return 1;
}

static int c_efd_drain(lua_State *L)
{
    uint64_t v = 0;
    ssize_t n = read((int)luaL_checkinteger(L, 1), &v, sizeof v);
    lua_pushboolean(L, n == (ssize_t)sizeof v && v > 0);
    return 1;
}

/* A mux: one descriptor (an epoll instance) that is readable when any of
 * the descriptors set in it is ready, so that a driver whose wait hook
 * watches one descriptor can wait on several at once (a batch over many
 * servers). mux_new() -> mux; mux:fd(); mux:set(fd, "r" | "w" | "rw");
 * mux:del(fd); mux:ready(out) -> n, out[1..n] the ready descriptors (never
 * waits); mux:close(); mux:keep(flag): while flag is true the collector
 * leaves the descriptor open (its owner closes it, with the loop's cancel
 * hook first: memcached.async.conn's bury). */
typedef struct {
    int fd;
    int keep;
} lmux;

static lmux *check_mux(lua_State *L)
{
    lmux *m = (lmux *)luaL_checkudata(L, 1, MUX_MT);
    if (m->fd < 0)
        luaL_error(L, "mux is closed");
    return m;
}

static int c_mux_new(lua_State *L)
{
    lmux *m = (lmux *)lua_newuserdata(L, sizeof *m);
    m->fd = -1;
    m->keep = 0;
    luaL_setmetatable(L, MUX_MT);
    m->fd = epoll_create1(EPOLL_CLOEXEC);
    if (m->fd < 0)
        return push_fail(L, "epoll_create1", errno);
    return 1;
}

static int m_fd(lua_State *L)
{
    lua_pushinteger(L, check_mux(L)->fd);
    return 1;
}

static int m_set(lua_State *L)
{
    lmux *m = check_mux(L);
    int fd = (int)luaL_checkinteger(L, 2);
    const char *ev = luaL_checkstring(L, 3);
    struct epoll_event e;
    memset(&e, 0, sizeof e);
    e.events = (strchr(ev, 'r') ? EPOLLIN : 0) | (strchr(ev, 'w') ? EPOLLOUT : 0);
    if (e.events == 0)
        return luaL_argerror(L, 3, "\"r\", \"w\" or \"rw\" expected");
    e.data.fd = fd;
    if (epoll_ctl(m->fd, EPOLL_CTL_MOD, fd, &e) != 0 &&
        (errno != ENOENT || epoll_ctl(m->fd, EPOLL_CTL_ADD, fd, &e) != 0))
        return push_fail(L, "epoll_ctl", errno);
    lua_pushboolean(L, 1);
    return 1;
}

static int m_del(lua_State *L)
{
    lmux *m = check_mux(L);
    struct epoll_event e; /* kernels before 2.6.9 want one */
    memset(&e, 0, sizeof e);
    lua_pushboolean(L, epoll_ctl(m->fd, EPOLL_CTL_DEL,
                                 (int)luaL_checkinteger(L, 2), &e) == 0);
    return 1;
}

static int m_ready(lua_State *L)
{
    lmux *m = check_mux(L);
    struct epoll_event evs[64];
    int i, n;
    luaL_checktype(L, 2, LUA_TTABLE);
    do
        n = epoll_wait(m->fd, evs, 64, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0)
        return push_fail(L, "epoll_wait", errno);
    for (i = 0; i < n; i++) {
        lua_pushinteger(L, evs[i].data.fd);
        lua_rawseti(L, 2, i + 1);
    }
    lua_pushinteger(L, n);
    return 1;
}

static int m_close(lua_State *L)
{
    lmux *m = (lmux *)luaL_checkudata(L, 1, MUX_MT);
    if (m->fd >= 0) {
        close(m->fd);
        m->fd = -1;
    }
    return 0;
}

static int m_keep(lua_State *L)
{
    check_mux(L)->keep = lua_toboolean(L, 2);
    return 0;
}

static int m_gc(lua_State *L)
{
    lmux *m = (lmux *)luaL_checkudata(L, 1, MUX_MT);
    if (!m->keep)
        return m_close(L);
    return 0;
}

static const luaL_Reg mux_methods[] = {
    {"fd", m_fd},     {"set", m_set},     {"del", m_del},
    {"ready", m_ready}, {"close", m_close}, {"keep", m_keep}, {NULL, NULL}};

static const luaL_Reg tls_methods[] = {
    {"handshake", t_handshake}, {"resumed", t_resumed}, {"free", t_gc},
    {NULL, NULL}};

static const luaL_Reg no_methods[] = {{NULL, NULL}};

static const luaL_Reg io_funcs[] = {
    {"connect", c_connect},
    {"connected", c_connected},
    {"send", c_send},
    {"recv", c_recv},
    {"close", c_close},
    {"efd_new", c_efd_new},
    {"efd_signal", c_efd_signal},
    {"efd_drain", c_efd_drain},
    {"mux_new", c_mux_new},
    {"secure", c_secure},
    {"tls_slot", c_tls_slot},
    {"tls_start", c_tls_start},
    {"sasl_frame", c_sasl_frame},
    {"sasl_check", c_sasl_check},
    {NULL, NULL}};

void lmc_core_io_open(lua_State *L)
{
    lmc_core_class(L, TLS_MT, tls_methods, t_gc);
    lmc_core_class(L, TLS_CTX_MT, no_methods, x_gc);
    lmc_core_class(L, SLOT_MT, no_methods, sl_gc);
    lmc_core_class(L, MUX_MT, mux_methods, m_gc);
    lua_getfield(L, LUA_REGISTRYINDEX, TLS_BY_FD);
    if (lua_isnil(L, -1)) {
        lua_newtable(L);
        lua_newtable(L);
        lua_pushliteral(L, "v");
        lua_setfield(L, -2, "__mode");
        lua_setmetatable(L, -2);
        lua_setfield(L, LUA_REGISTRYINDEX, TLS_BY_FD);
    }
    lua_pop(L, 1);
    luaL_setfuncs(L, io_funcs, 0);
}
