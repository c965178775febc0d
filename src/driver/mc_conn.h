/*
 * mc_conn: one socket to one server (TCP over IPv4/IPv6, or a unix socket).
 *
 * Every primitive has a non-blocking form (mc_conn_write_some,
 * mc_conn_read_some: MSG_DONTWAIT, never waiting) for poll loops and for an
 * event-loop driver that yields where this code waits. Connecting waits at
 * the wait point against a deadline. The one-request path (mc_conn_flush,
 * mc_conn_recv) lets the kernel do the waiting instead (SO_SNDTIMEO /
 * SO_RCVTIMEO, set by mc_kernel_block a little under the I/O timeout, so
 * that the kernel's rounding cannot carry a wait past it): a blocking recv
 * is one syscall where recv(EAGAIN) + poll + recv is three, which is a
 * measurable share of a 7 us round trip. When the kernel's wait ends
 * without data, or part of the budget is spent, what is left of the
 * deadline is waited for at the connection's wait point (mc_wait.h: ppoll
 * by default). A connection made with a wait hook installed never lets
 * the kernel wait: its socket stays non-blocking and every wait goes
 * through the hook.
 *
 * Bytes cross the socket through the connection's transport
 * (mc_transport.h: the plain socket today, TLS later); this file makes the
 * socket and decides when and how long to wait.
 *
 * A connection owns its output buffer and its response reader. It does not
 * interpret responses beyond what mc_reader_get returns.
 */
#ifndef MC_CONN_H
#define MC_CONN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

#include "mc_buf.h"
#include "mc_codec.h"
#include "mc_deadline.h"
#include "mc_error.h"
#include "mc_proto.h"
#include "mc_transport.h"
#include "mc_wait.h"

/* An idle connection keeps an output buffer up to this size (and its
 * reader up to MC_READER_KEEP); larger ones are freed when it is pooled. */
#define MC_CONN_KEEP (64u * 1024)



/* A resolved server address. */
typedef struct mc_addr {
    struct sockaddr_storage sa;
    socklen_t salen;
} mc_addr;

typedef struct mc_conn {
    int fd;
    const mc_transport *tp; /* every send, recv and close goes through it */
    const mc_codec *codec;  /* reads its replies (binary unless the pool
                               says otherwise) */
    uint32_t opaque;   /* next opaque to hand out */
    mc_buf out;        /* the request(s) in flight; out_pos of them sent.
                          Kept after sending (out_pos == out.len), so that
                          a request can be resent on another connection;
                          cleared when the connection is pooled. */
    size_t out_pos;
    double idle_since; /* when it went back to the pool */
    double io_timeout; /* the budget of one request's I/O */
    double kworst;     /* longest a blocking transfer may wait in the
                          kernel (mc_kernel_block); 0: never block */
    int connecting;    /* a non-blocking connect is in progress */
    struct mc_conn *next; /* idle-list link, owned by the pool */
    void *tp_data;     /* the transport's state (TLS: its SSL); plain: NULL */
    mc_waiter wait;    /* where its waits go (copied at mc_conn_start) */
    mc_reader in;      /* last: its error text would split the hot fields */
} mc_conn;

/* A random 32-bit number from a per-process generator, seeded once from
 * getrandom (or /dev/urandom, else the clock and pid) and again after a
 * fork; thread-safe, no syscall per call but a getpid. Not for secrets: it
 * makes a new connection's first opaque unguessable to a reply that was
 * not meant for it. */
uint32_t mc_random32(void);

/* Parses "host:port", "[v6addr]:port", "host" (port 11211) or a unix socket
 * path (anything starting with '/' or '@' for the abstract namespace) and
 * resolves it. On success fills *a, host (the bare host or path, NUL
 * terminated, at most hostlen bytes) and *port (0 for unix sockets) and
 * returns 0; on failure returns -1 with a message in err. */
int mc_addr_parse(const char *spec, mc_addr *a, char *host, size_t hostlen,
                  unsigned *port, char *err, size_t errlen);

/* Resolves a host name to its first address as text ("10.0.0.5",
 * "::1"), with a blocking getaddrinfo: for a driver that dials numeric
 * addresses only (the OpenResty driver without an nginx resolver, at
 * new()). Exported for LuaJIT's FFI. 0, or -1 with why in out. */
__attribute__((visibility("default")))
int mc_resolve_host(const char *host, char *out, size_t outlen);

/* Starts connecting without waiting: the connection is returned with
 * connecting set while the connect is in progress (wait for POLLOUT, then
 * call mc_conn_finish). w: the wait point its waits go through (NULL:
 * mc_deadline_poll), copied. NULL with *err when it failed at once. */
mc_conn *mc_conn_start(const mc_addr *a, double io_timeout, size_t max_body,
                       const mc_waiter *w, int *err, char *msg,
                       size_t msglen);
/* Completes a started connect (checks its outcome, then sets the blocking
 * mode and the I/O timeouts; with a wait hook, leaves the socket
 * non-blocking and kworst 0). 0, or -1 with *err and msg. */
int mc_conn_finish(mc_conn *c, int *err, char *msg, size_t msglen);

/* Allocates a connection and connects it before the deadline; io_timeout
 * bounds each later blocking send or receive. Returns the connection, or
 * NULL with *err set (and a message in msg). */
mc_conn *mc_conn_open(const mc_addr *a, const mc_deadline *d, double io_timeout,
                      size_t max_body, const mc_waiter *w, int *err, char *msg,
                      size_t msglen);

/* Closes the connection through its transport and frees it. NULL is
 * fine. */
void mc_conn_close(mc_conn *c);

/* Non-blocking halves for poll loops over several connections.
 * mc_conn_write_some: sends what it can. Returns 1 when everything is sent,
 * 0 when the socket would block, or -err.
 * mc_conn_read_some: reads what is available into the reader. Returns the
 * number of bytes read (> 0), 0 when the socket would block, or -err
 * (MC_ERR_CLOSED at end of stream). */
int mc_conn_write_some(mc_conn *c, char *msg, size_t msglen);
int mc_conn_read_some(mc_conn *c, char *msg, size_t msglen);

/* Blocking helpers: a kernel wait is made only while the deadline leaves
 * room for its worst case (kworst), else the wait point waits for what is
 * left. */
int mc_conn_flush(mc_conn *c, const mc_deadline *d, char *msg, size_t msglen);
/* Reads until one whole response is available. Returns MC_OK with *r
 * filled (valid until the next call on this connection), or an error. */
int mc_conn_recv(mc_conn *c, mc_resp *r, const mc_deadline *d, char *msg,
                 size_t msglen);
/* mc_conn_flush then mc_conn_recv, with the usual case (one send that
 * does not wait, one clock read, one blocking recv) in one step. */
int mc_conn_roundtrip(mc_conn *c, mc_resp *r, const mc_deadline *d,
                      char *msg, size_t msglen);
/* One read that ends by the deadline: a blocking read while the deadline
 * leaves room for the kernel's worst wait, else the wait point for what is
 * left,
 * then a non-waiting read. > 0 bytes, 0 (nothing yet; call again), or
 * -err (MC_ERR_TIMEOUT once the deadline passed). */
int mc_conn_read_budget(mc_conn *c, const mc_deadline *d, char *msg,
                        size_t msglen);

/* Waits at the connection's wait point until its socket is ready for
 * `events` (POLLIN/POLLOUT) or the deadline passes. Returns MC_OK or
 * MC_ERR_TIMEOUT/MC_ERR_IO. */
int mc_conn_wait(mc_conn *c, short events, const mc_deadline *d, char *msg,
                 size_t msglen);

/* True when an idle connection looks dead or dirty: the peer closed it,
 * reset it, or sent bytes nobody asked for. Costs one syscall. */
int mc_conn_stale(mc_conn *c);

#endif
