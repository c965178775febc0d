#define _GNU_SOURCE /* MSG_NOSIGNAL, SOCK_NONBLOCK, SOCK_CLOEXEC */
#include "mc_conn.h"
#include "mc_addr.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* splitmix64 over a shared counter: one atomic add per number, so threads
 * never draw the same one. rng_pid is the process that seeded it: a forked
 * child reseeds instead of repeating its parent's numbers. */
static uint64_t rng_state;
static pid_t rng_pid;

static uint64_t rng_seed(void)
{
    uint64_t s = 0;
    struct timespec ts;
    int fd;

    if (getrandom(&s, sizeof s, GRND_NONBLOCK) == (ssize_t)sizeof s)
        return s;
    fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        ssize_t n = read(fd, &s, sizeof s);
        close(fd);
        if (n == (ssize_t)sizeof s)
            return s;
    }
    /* no entropy at all (early boot, a sandbox): still differs from
     * process to process and from run to run */
    clock_gettime(CLOCK_REALTIME, &ts);
    return ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
           ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)&s;
}

uint32_t mc_random32(void)
{
    pid_t pid = getpid();
    uint64_t z;

    if (__atomic_load_n(&rng_pid, __ATOMIC_ACQUIRE) != pid) {
        /* two threads seeding at once both store a seed: either will do */
        __atomic_store_n(&rng_state, rng_seed(), __ATOMIC_RELAXED);
        __atomic_store_n(&rng_pid, pid, __ATOMIC_RELEASE);
    }
    z = __atomic_add_fetch(&rng_state, 0x9e3779b97f4a7c15ull, __ATOMIC_RELAXED);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (uint32_t)((z ^ (z >> 31)) >> 32);
}

/* "what" or "what: strerror(e)" into msg. */
static void say(char *msg, size_t msglen, const char *what, int e)
{
    if (!msg || !msglen)
        return;
    if (e)
        snprintf(msg, msglen, "%s: %s", what, strerror(e));
    else
        snprintf(msg, msglen, "%s", what);
}

int mc_addr_parse(const char *spec, mc_addr *a, char *host, size_t hostlen,
                  unsigned *port, char *err, size_t errlen)
{
    mc_addr_spec sp;
    struct addrinfo hints, *res = NULL;
    char pbuf[8];
    int rc;

    memset(a, 0, sizeof(*a));
    if (mc_addr_split(spec, &sp, err, errlen) != 0)
        return -1;
    if (strlen(sp.host) >= hostlen) {
        snprintf(err, errlen, "bad server address: %s", spec);
        return -1;
    }
    if (sp.kind != MC_ADDR_TCP) {
        struct sockaddr_un *un = (struct sockaddr_un *)&a->sa;
        size_t n = strlen(sp.host);
        if (n >= sizeof(un->sun_path)) {
            snprintf(err, errlen, "unix socket path too long: %s", spec);
            return -1;
        }
        un->sun_family = AF_UNIX;
        memcpy(un->sun_path, sp.host, n);
        if (sp.kind == MC_ADDR_ABSTRACT) {
            un->sun_path[0] = '\0'; /* abstract namespace */
            a->salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        } else {
            a->salen = sizeof(*un);
        }
        memcpy(host, sp.host, n + 1);
        *port = 0;
        return 0;
    }
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV;
    snprintf(pbuf, sizeof(pbuf), "%u", sp.port);
    rc = getaddrinfo(sp.host, pbuf, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(err, errlen, "cannot resolve %s: %s", spec,
                 rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    memcpy(&a->sa, res->ai_addr, res->ai_addrlen);
    a->salen = res->ai_addrlen;
    freeaddrinfo(res);
    snprintf(host, hostlen, "%s", sp.host);
    *port = sp.port;
    return 0;
}

int mc_resolve_host(const char *host, char *out, size_t outlen)
{
    struct addrinfo hints, *res = NULL;
    int rc;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        snprintf(out, outlen, "cannot resolve %s: %s", host,
                 rc ? gai_strerror(rc) : "no address");
        if (res)
            freeaddrinfo(res);
        return -1;
    }
    rc = getnameinfo(res->ai_addr, res->ai_addrlen, out, (socklen_t)outlen,
                     NULL, 0, NI_NUMERICHOST);
    freeaddrinfo(res);
    if (rc != 0) {
        snprintf(out, outlen, "cannot resolve %s: %s", host,
                 gai_strerror(rc));
        return -1;
    }
    return 0;
}

int mc_conn_wait(mc_conn *c, short events, const mc_deadline *d, char *msg,
                 size_t msglen)
{
    struct pollfd pfd;
    int rc;
    if (c->tp->events) {
        /* TLS: bytes it already holds need no wait; a read may have to
         * wait for room to write first */
        events = c->tp->events(c, events);
        if (!events)
            return MC_OK;
    }
    pfd.fd = c->fd;
    pfd.events = events;
    pfd.revents = 0;
    rc = mc_wait(&c->wait, &pfd, 1, d);
    if (rc > 0)
        return MC_OK;
    if (rc == 0) {
        say(msg, msglen, "timed out", 0);
        return MC_ERR_TIMEOUT;
    }
    say(msg, msglen, "poll", errno);
    return MC_ERR_IO;
}

static int errno_to_err(int e)
{
    switch (e) {
    case ECONNREFUSED: return MC_ERR_REFUSED;
    case ECONNRESET:
    case EPIPE:
    case ECONNABORTED:
    case ENOTCONN: return MC_ERR_CLOSED;
    case ETIMEDOUT: return MC_ERR_TIMEOUT;
    case ENOMEM:
    case ENOBUFS: return MC_ERR_NOMEM;
    case EPROTO: return MC_ERR_TLS; /* the transport's (mc_transport.h) */
    default: return MC_ERR_IO;
    }
}

/* A send or recv of c's transport failed with errno e: "what: why" into
 * msg, in the transport's words when it has some (OpenSSL's reason), and
 * the error it stands for. */
static int io_failed(mc_conn *c, const char *what, int e, char *msg,
                     size_t msglen)
{
    const char *why = e == EPROTO && c->tp->why ? c->tp->why(c) : NULL;
    if (why && msg && msglen)
        snprintf(msg, msglen, "%s: %s", what, why);
    else
        say(msg, msglen, what, e);
    return errno_to_err(e);
}

static void set_timeout(int fd, int opt, double seconds)
{
    struct timeval tv;
    tv.tv_sec = (time_t)seconds;
    tv.tv_usec = (suseconds_t)((seconds - (double)tv.tv_sec) * 1e6);
    if (tv.tv_sec == 0 && tv.tv_usec == 0)
        tv.tv_usec = 1000;
    setsockopt(fd, SOL_SOCKET, opt, &tv, sizeof(tv));
}

mc_conn *mc_conn_start(const mc_addr *a, double io_timeout, size_t max_body,
                       const mc_waiter *w, int *err, char *msg,
                       size_t msglen)
{
    mc_conn *c;
    int fd, rc;

    fd = socket(a->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err = errno_to_err(errno);
        say(msg, msglen, "socket", errno);
        return NULL;
    }
    if (a->sa.ss_family != AF_UNIX) {
        int one = 1;
        /* Requests are written whole; Nagle would only add latency. */
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    rc = connect(fd, (const struct sockaddr *)&a->sa, a->salen);
    /* EAGAIN is not "in progress": on a unix socket it means the server's
     * listen queue is full and nothing is connecting. */
    if (rc < 0 && errno != EINPROGRESS) {
        int e = errno;
        close(fd);
        *err = errno_to_err(e);
        say(msg, msglen, "connect", e);
        return NULL;
    }
    c = calloc(1, sizeof(*c));
    if (!c) {
        close(fd);
        *err = MC_ERR_NOMEM;
        say(msg, msglen, "out of memory", 0);
        return NULL;
    }
    c->fd = fd;
    c->tp = &mc_transport_plain;
    c->codec = &mc_codec_binary;
    if (w)
        c->wait = *w;
    /* Opaques are not restarted at a guessable value: a reply that was not
     * meant for this connection's requests (sent before any request, or
     * left over from someone else's) then cannot pass for the answer to
     * the first one. */
    c->opaque = mc_random32();
    c->io_timeout = io_timeout;
    c->connecting = rc < 0;
    mc_reader_init(&c->in, max_body);
    if (!c->connecting)
        mc_conn_finish(c, err, msg, msglen);
    *err = MC_OK;
    return c;
}

int mc_conn_finish(mc_conn *c, int *err, char *msg, size_t msglen)
{
    int e = 0;
    socklen_t elen = sizeof(e);
    if (c->connecting) {
        if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &e, &elen) < 0)
            e = errno;
        if (e) {
            *err = errno_to_err(e);
            say(msg, msglen, "connect", e);
            return -1;
        }
        c->connecting = 0;
    }
    /* Connected: from now on the kernel may wait, for at most kblock (a
     * little under the I/O timeout, see mc_deadline.h); the non-blocking
     * primitives pass MSG_DONTWAIT. A timeout too short for the kernel's
     * rounding gets no kernel waits (kworst 0): ppoll waits instead. A
     * wait hook (an event loop) must never find the thread blocked in the
     * kernel: the socket stays non-blocking and the hook does every wait
     * (mc_wait.h). */
    if (c->wait.fn) {
        c->kworst = 0;
    } else {
        double kblock = mc_kernel_block(c->io_timeout, &c->kworst);
        fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) & ~O_NONBLOCK);
        set_timeout(c->fd, SO_RCVTIMEO, kblock > 0 ? kblock : c->io_timeout);
        set_timeout(c->fd, SO_SNDTIMEO, kblock > 0 ? kblock : c->io_timeout);
    }
    *err = MC_OK;
    return 0;
}

mc_conn *mc_conn_open(const mc_addr *a, const mc_deadline *d, double io_timeout,
                      size_t max_body, const mc_waiter *w, int *err, char *msg,
                      size_t msglen)
{
    mc_conn *c = mc_conn_start(a, io_timeout, max_body, w, err, msg, msglen);
    if (!c || !c->connecting)
        return c;
    *err = mc_conn_wait(c, POLLOUT, d, msg, msglen);
    if (*err == MC_ERR_TIMEOUT)
        say(msg, msglen, "connect timed out", 0);
    if (*err != MC_OK || mc_conn_finish(c, err, msg, msglen) != 0) {
        mc_conn_close(c);
        return NULL;
    }
    return c;
}

void mc_conn_close(mc_conn *c)
{
    if (!c)
        return;
    c->tp->close(c);
    mc_buf_free(&c->out);
    mc_reader_free(&c->in);
    free(c);
}

int mc_conn_write_some(mc_conn *c, char *msg, size_t msglen)
{
    while (c->out_pos < c->out.len) {
        ssize_t n = c->tp->send(c, c->out.data + c->out_pos,
                                c->out.len - c->out_pos, MSG_DONTWAIT);
        if (n > 0) {
            c->out_pos += (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        return -io_failed(c, "send", errno, msg, msglen);
    }
    /* all sent (out_pos == out.len); the bytes stay until the connection
     * goes back to the pool, which drops a large buffer */
    return 1;
}


/* One recv into the reader. wait: block (bounded by SO_RCVTIMEO); else
 * MSG_DONTWAIT. Returns > 0 bytes, 0 for nothing yet (EAGAIN: would block,
 * or the kernel's wait ended; the caller asks its deadline), or -err. */
static int read_once(mc_conn *c, int wait, char *msg, size_t msglen)
{
    for (;;) {
        size_t avail;
        ssize_t n;
        char *p = mc_reader_space(&c->in, 16384, &avail);
        if (!p) {
            say(msg, msglen, "out of memory", 0);
            return -MC_ERR_NOMEM;
        }
        n = c->tp->recv(c, p, avail, wait ? 0 : MSG_DONTWAIT);
        if (n > 0) {
            mc_reader_commit(&c->in, (size_t)n);
            return (int)(n > 0x7fffffff ? 0x7fffffff : n);
        }
        if (n == 0) {
            say(msg, msglen, "server closed the connection", 0);
            return -MC_ERR_CLOSED;
        }
        if (errno == EINTR)
            continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            return 0;
        return -io_failed(c, "recv", errno, msg, msglen);
    }
}

int mc_conn_read_some(mc_conn *c, char *msg, size_t msglen)
{
    return read_once(c, 0, msg, msglen);
}

/* Before a blocking transfer: while the deadline leaves room for the
 * kernel's longest wait, let the kernel wait (one syscall, not poll +
 * recv); else wait at the wait point for exactly what is left (always,
 * with a wait hook: kworst is 0). Returns 1 to go ahead with a blocking
 * call, 0 after the wait said ready (use a non-waiting call), or -err. */
static int budget(mc_conn *c, short events, const mc_deadline *d, char *msg,
                  size_t msglen)
{
    double left = mc_deadline_left(d, mc_now());
    int rc;
    if (left <= 0) {
        say(msg, msglen, "timed out", 0);
        return -MC_ERR_TIMEOUT;
    }
    if (c->kworst > 0 && left >= c->kworst)
        return 1;
    rc = mc_conn_wait(c, events, d, msg, msglen);
    return rc == MC_OK ? 0 : -rc;
}

/* A blocking send that failed with errno e (not EINTR). */
static int send_failed(mc_conn *c, int e, char *msg, size_t msglen)
{
    if (e == EAGAIN || e == EWOULDBLOCK) { /* SO_SNDTIMEO ran out */
        say(msg, msglen, "timed out", 0);
        return MC_ERR_TIMEOUT;
    }
    return io_failed(c, "send", e, msg, msglen);
}

int mc_conn_flush(mc_conn *c, const mc_deadline *d, char *msg,
                  size_t msglen)
{
    while (c->out_pos < c->out.len) {
        ssize_t n;
        int b = budget(c, POLLOUT, d, msg, msglen);
        if (b < 0)
            return -b;
        n = c->tp->send(c, c->out.data + c->out_pos, c->out.len - c->out_pos,
                        b == 0 ? MSG_DONTWAIT : 0);
        if (n > 0) {
            c->out_pos += (size_t)n;
            continue;
        }
        if (n < 0 && (errno == EINTR || errno == EAGAIN ||
                      errno == EWOULDBLOCK))
            continue; /* the kernel's wait ended, or poll said ready: the
                         deadline bounds this */
        return send_failed(c, errno, msg, msglen);
    }
    return MC_OK; /* out_pos == out.len: all sent, the bytes kept */
}

int mc_conn_read_budget(mc_conn *c, const mc_deadline *d, char *msg,
                        size_t msglen)
{
    int b = budget(c, POLLIN, d, msg, msglen);
    if (b < 0)
        return b;
    return read_once(c, b, msg, msglen);
}

/* mc_conn_recv, told whether bytes arrived since the last reply (partial):
 * then the reader is asked before reading more. */
static int recv_loop(mc_conn *c, mc_resp *r, const mc_deadline *d,
                     char *msg, size_t msglen, int partial)
{
    int rc;
    for (;;) {
        /* nothing buffered (the usual case right after a send): read first */
        if (mc_reader_pending(&c->in) || c->in.failed || partial) {
            rc = c->codec->read(&c->in, r);
            if (rc == MC_READ_ONE)
                return MC_OK;
            if (rc == MC_READ_ERROR) {
                say(msg, msglen, c->in.errstr, 0);
                return mc_reader_error(&c->in);
            }
        }
        /* what is left of the budget, whatever used it (a long send, a
         * reply trickling in) */
        rc = mc_conn_read_budget(c, d, msg, msglen);
        if (rc < 0)
            return -rc;
        partial = rc > 0;
    }
}

int mc_conn_recv(mc_conn *c, mc_resp *r, const mc_deadline *d, char *msg,
                 size_t msglen)
{
    return recv_loop(c, r, d, msg, msglen, 0);
}

int mc_conn_roundtrip(mc_conn *c, mc_resp *r, const mc_deadline *d,
                      char *msg, size_t msglen)
{
    int rc;
    /* The usual case: nothing sent or buffered yet, and one send that
     * does not wait takes the whole request. Then the receive asks the
     * deadline once (a vDSO clock read) and, with room for the kernel's
     * longest wait, waits in the kernel: one recv. Anything else goes
     * through mc_conn_flush and its budget. */
    if (c->out_pos == 0 && c->out.len && c->in.len == 0 && !c->in.failed) {
        ssize_t n = c->tp->send(c, c->out.data, c->out.len, MSG_DONTWAIT);
        if (n == (ssize_t)c->out.len) {
            c->out_pos = c->out.len;
            return recv_loop(c, r, d, msg, msglen, 0);
        }
        if (n > 0)
            c->out_pos = (size_t)n;
        else if (n < 0 && errno != EINTR && errno != EAGAIN &&
                 errno != EWOULDBLOCK)
            return send_failed(c, errno, msg, msglen);
    }
    rc = mc_conn_flush(c, d, msg, msglen);
    if (rc != MC_OK)
        return rc;
    return recv_loop(c, r, d, msg, msglen, 0);
}

int mc_conn_stale(mc_conn *c)
{
    char b;
    ssize_t n = c->tp->recv(c, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return 0;
    return 1; /* EOF, error, or unsolicited bytes */
}
