/*
 * mc_transport: how a connection's bytes cross its socket. mc_conn makes
 * the socket (socket, connect, blocking mode, kernel timeouts) and decides
 * when to wait; every send, recv and close of a connected mc_conn goes
 * through its transport, so that TLS (OpenSSL, later) can sit between the
 * reader and the socket per connection without the driver changing.
 *
 * The calls mirror send(2)/recv(2), so the driver keeps one way of
 * handling results: the byte count (> 0); 0 from recv at the end of the
 * stream; or -1 with errno, where EAGAIN/EWOULDBLOCK means "nothing now"
 * (would block, or a kernel wait ran out), EINTR "call again", anything
 * else a failure (mapped by the driver: ECONNRESET/EPIPE are "closed").
 *
 * flags is what the driver asks for, nothing more: MSG_DONTWAIT (do not
 * wait, whatever the socket's mode) and, for recv, MSG_PEEK (look without
 * consuming: the idle check, mc_conn_stale). What the transport itself
 * needs it adds: the plain one adds MSG_NOSIGNAL, so that a peer that
 * went away is an EPIPE, never a SIGPIPE.
 *
 * The one-request path makes one send and one blocking recv per request;
 * an indirect call is all a transport adds to it. A transport must not
 * add syscalls or allocations per call on its usual path.
 *
 * TLS (mc_tls.c) needs two things more, both off the usual path and NULL
 * for the plain socket: which readiness to wait for (a TLS read may need
 * to write first, and OpenSSL holds received bytes that poll cannot see:
 * then nothing is to be waited for), and its own words for a failure
 * (OpenSSL's reason, where errno says only EPROTO). The handshake is not
 * the transport's business: mc_tls_handshake runs it after the connect,
 * at the connection's wait point. Its state goes in c->tp_data; its close
 * frees it.
 */
#ifndef MC_TRANSPORT_H
#define MC_TRANSPORT_H

#include <stddef.h>
#include <sys/types.h>

struct mc_conn;

typedef struct mc_transport {
    const char *name; /* for messages: "plain", "tls" */
    ssize_t (*send)(struct mc_conn *c, const void *p, size_t n, int flags);
    ssize_t (*recv)(struct mc_conn *c, void *p, size_t n, int flags);
    /* Releases what the transport holds and closes c->fd (sets it to -1).
     * Called once, from mc_conn_close; the connection's buffers are the
     * driver's to free. */
    void (*close)(struct mc_conn *c);
    /* Before a wait for `events` (POLLIN/POLLOUT): what to poll for
     * instead, or 0 when the next call can go ahead without waiting
     * (bytes already buffered). NULL: `events` as they are. */
    short (*events)(struct mc_conn *c, short events);
    /* The last failure in words, or NULL (then strerror(errno)). A
     * failure reported as EPROTO is the transport's own (MC_ERR_TLS). */
    const char *(*why)(struct mc_conn *c);
} mc_transport;

/* The socket as it is: send/recv/close on c->fd. The default of every
 * connection (mc_conn_start). */
extern const mc_transport mc_transport_plain;

#endif
