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
 * What a TLS transport will need besides (not done; noted so the seam is
 * read with them in mind): a handshake step after mc_conn_finish, which
 * waits through the connection's wait point like a connect; a way to say
 * which readiness it waits for when a send needs a read (WANT_READ) or the
 * reverse; and, since OpenSSL holds decrypted bytes the socket no longer
 * shows (SSL_pending), a test the driver asks before it waits for POLLIN.
 * Its state goes in c->tp_data; its close frees it.
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
} mc_transport;

/* The socket as it is: send/recv/close on c->fd. The default of every
 * connection (mc_conn_start). */
extern const mc_transport mc_transport_plain;

#endif
