/*
 * mc_tls: the TLS transport (see mc_tls.h).
 *
 * OpenSSL reads and writes the socket through a BIO of our own rather
 * than its socket BIO, for two reasons: each call passes the driver's
 * flags down (MSG_DONTWAIT when the driver does not want to wait, none
 * when it lets the kernel wait under SO_RCVTIMEO, exactly as on the plain
 * socket), and every send carries MSG_NOSIGNAL (a peer that went away is
 * EPIPE, never SIGPIPE). The BIO keeps the errno of its last failed call,
 * since OpenSSL's own calls may overwrite errno before we read it.
 *
 * Reads use read-ahead: one recv takes whatever the socket has, so a
 * reply costs one syscall as on the plain socket. OpenSSL may then hold
 * decrypted bytes the socket no longer shows; the driver asks
 * tls_events before it waits, and reads them first.
 */
#define _GNU_SOURCE /* MSG_NOSIGNAL */
#include "mc_tls.h"
#include "mc_conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

struct mc_tls_ctx {
    SSL_CTX *ctx;
    char *server_name; /* NULL: each server's host */
    int verify;
};

/* One connection's TLS state (c->tp_data). */
typedef struct tls_conn {
    SSL *ssl;
    int fd;
    int flags;            /* MSG_DONTWAIT for the call in progress, or 0 */
    int err;              /* errno of the BIO's last failed call, or 0 */
    short want;           /* POLLIN/POLLOUT OpenSSL last waited for */
    int starved;          /* the last read wanted bytes from the socket:
                             what OpenSSL holds is an unfinished record */
    size_t req_left;      /* bytes still to send of the run tls_send
                             chose last (a request longer than a record) */
    SSL_SESSION **slot;   /* the server's session slot */
    char why[160];        /* the last failure, in OpenSSL's words */
} tls_conn;

/* ---- the BIO: send/recv on the connection's socket ---- */

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

static int bio_write(BIO *b, const char *p, int n)
{
    tls_conn *t = BIO_get_data(b);
    ssize_t r;
    BIO_clear_retry_flags(b);
    do
        r = send(t->fd, p, (size_t)n, t->flags | MSG_NOSIGNAL);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        t->err = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_write(b);
        return -1;
    }
    return (int)r;
}

static int bio_read(BIO *b, char *p, int n)
{
    tls_conn *t = BIO_get_data(b);
    ssize_t r;
    BIO_clear_retry_flags(b);
    do
        r = recv(t->fd, p, (size_t)n, t->flags);
    while (r < 0 && errno == EINTR);
    if (r < 0) {
        t->err = errno;
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            BIO_set_retry_read(b);
        return -1;
    }
    return (int)r;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)b;
    (void)num;
    (void)ptr;
    /* writes go straight to the socket: nothing to flush */
    return cmd == BIO_CTRL_FLUSH ? 1 : 0;
}

static int bio_create(BIO *b)
{
    BIO_set_init(b, 1);
    return 1;
}

static void bio_make(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK,
                                 "memcached socket");
    if (!m)
        return;
    BIO_meth_set_write(m, bio_write);
    BIO_meth_set_read(m, bio_read);
    BIO_meth_set_ctrl(m, bio_ctrl);
    BIO_meth_set_create(m, bio_create);
    bio_method = m; /* lives as long as the library is loaded */
}

/* Lua unloads the module at lua_close (dlclose): the method goes with it,
 * after every connection (and so every BIO) has been closed. */
__attribute__((destructor)) static void bio_free(void)
{
    if (bio_method)
        BIO_meth_free(bio_method);
    bio_method = NULL;
}

/* ---- errors ---- */

/* OpenSSL's reason for the failure just seen, into t->why: the
 * certificate's verdict when verification failed, else the last error
 * of the queue. Empties the queue. */
static void note_ssl_error(tls_conn *t)
{
    unsigned long e = ERR_peek_last_error();
    long v = SSL_get_verify_result(t->ssl);
    char buf[120];

    if (v != X509_V_OK && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED)
        snprintf(t->why, sizeof(t->why), "certificate verify failed: %s",
                 X509_verify_cert_error_string(v));
    else if (e) {
        const char *r = ERR_reason_error_string(e);
        if (!r) {
            ERR_error_string_n(e, buf, sizeof(buf));
            r = buf;
        }
        snprintf(t->why, sizeof(t->why), "%s", r);
    } else {
        snprintf(t->why, sizeof(t->why), "TLS failure");
    }
    ERR_clear_error();
}

/* A send or recv that OpenSSL ended with code rc: -1 with errno as the
 * driver expects (EAGAIN, EPIPE/ECONNRESET, EPROTO for TLS), or 0 for the
 * end of the stream (recv only). */
static ssize_t io_error(tls_conn *t, int rc, int is_recv)
{
    switch (SSL_get_error(t->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        t->want = POLLIN;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_WANT_WRITE:
        t->want = POLLOUT;
        errno = EAGAIN;
        return -1;
    case SSL_ERROR_ZERO_RETURN: /* close_notify, or EOF (see ctx_new) */
        ERR_clear_error();
        if (is_recv)
            return 0;
        errno = EPIPE;
        return -1;
    case SSL_ERROR_SYSCALL:
        ERR_clear_error();
        if (t->err) {
            errno = t->err;
            return -1;
        }
        if (is_recv)
            return 0;
        errno = EPIPE;
        return -1;
    default:
        note_ssl_error(t);
        errno = EPROTO;
        return -1;
    }
}

/* ---- the transport ---- */

/* A send the peer reset. A TLS 1.3 server that refuses the client (no
 * client certificate: it decides after our handshake has ended) sends an
 * alert and closes; our first request then meets the reset. The alert
 * may be waiting in the socket: read it, without waiting, so the error
 * says why (EPROTO with its reason) rather than only "broken pipe". */
static ssize_t send_refused(tls_conn *t)
{
    int e = t->err, rc;
    size_t got = 0;
    char b;
    ERR_clear_error();
    t->flags = MSG_DONTWAIT;
    t->err = 0;
    rc = SSL_peek_ex(t->ssl, &b, 1, &got);
    if (rc <= 0 && SSL_get_error(t->ssl, rc) == SSL_ERROR_SSL) {
        note_ssl_error(t);
        errno = EPROTO;
        return -1;
    }
    ERR_clear_error();
    errno = e;
    return -1;
}

/* Records end where requests end. memcached 1.6.18 reads a value's
 * remaining bytes with a read of exactly that length; the rest of the
 * record then stays decrypted inside its SSL object, where its event loop
 * never looks, and a pipelined batch (set_multi of large values) stalls
 * until the timeout. A record that ends with a request is always read
 * whole. So a write takes whole requests up to one record, or one
 * request longer than a record (OpenSSL cuts it into records, and the
 * last one ends with it). Up to one record (every single small request)
 * nothing is looked at; a batch costs a few records more at most, each
 * one send as before (partial-write mode: one record per call). */
static ssize_t tls_send(mc_conn *c, const void *p, size_t n, int flags)
{
    tls_conn *t = c->tp_data;
    size_t done = 0, len = n;
    int rc;
    t->flags = flags & MSG_DONTWAIT;
    t->err = 0;
    t->want = 0;
    if (t->req_left)
        len = t->req_left < n ? t->req_left : n;
    else if (n > SSL3_RT_MAX_PLAIN_LENGTH)
        len = c->codec->cut(p, n, SSL3_RT_MAX_PLAIN_LENGTH);
    rc = SSL_write_ex(t->ssl, p, len, &done);
    if (rc > 0) {
        /* what is left of the run chosen (a request longer than a
         * record, or records made smaller by the server): next, alone */
        t->req_left = t->req_left ? t->req_left - done : len - done;
        return (ssize_t)done;
    }
    if (SSL_get_error(t->ssl, rc) == SSL_ERROR_SYSCALL &&
        (t->err == EPIPE || t->err == ECONNRESET))
        return send_refused(t);
    return io_error(t, rc, 0);
}

static ssize_t tls_recv(mc_conn *c, void *p, size_t n, int flags)
{
    tls_conn *t = c->tp_data;
    size_t got = 0;
    int rc;
    t->flags = flags & MSG_DONTWAIT;
    t->err = 0;
    t->want = 0;
    if (flags & MSG_PEEK) {
        /* the idle check: never waits; handles records that are not data
         * (a session ticket) and says whether data, an alert or the end
         * of the stream is there */
        t->flags = MSG_DONTWAIT;
        rc = SSL_peek_ex(t->ssl, p, n, &got);
    } else {
        rc = SSL_read_ex(t->ssl, p, n, &got);
    }
    t->starved = rc <= 0 && SSL_get_error(t->ssl, rc) == SSL_ERROR_WANT_READ;
    if (rc > 0)
        return (ssize_t)got;
    return io_error(t, rc, 1);
}

static void tls_close(mc_conn *c)
{
    tls_conn *t = c->tp_data;
    if (t) {
        /* Marked as shut down, without sending close_notify (a syscall
         * and a possible wait at every close): OpenSSL would otherwise
         * take the session for a broken one and refuse to resume it. */
        SSL_set_shutdown(t->ssl, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
        SSL_free(t->ssl); /* frees the BIO too */
        free(t);
        c->tp_data = NULL;
    }
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

static short tls_events(mc_conn *c, short events)
{
    tls_conn *t = c->tp_data;
    /* buffered bytes need no wait, unless they are the start of a record
     * whose rest the last read found missing */
    if ((events & POLLIN) && !t->starved && SSL_has_pending(t->ssl))
        return 0;
    return t->want ? t->want : events;
}

static const char *tls_why(mc_conn *c)
{
    tls_conn *t = c->tp_data;
    return t && t->why[0] ? t->why : NULL;
}

static const mc_transport mc_transport_tls = {
    "tls", tls_send, tls_recv, tls_close, tls_events, tls_why
};

/* ---- sessions ---- */

/* OpenSSL hands over each new session (a TLS 1.3 ticket, or the session
 * of a TLS 1.2 handshake): it replaces the server's slot. Returning 1
 * keeps the reference OpenSSL gave. */
static int new_session(SSL *ssl, SSL_SESSION *sess)
{
    tls_conn *t = SSL_get_app_data(ssl);
    if (!t || !t->slot || !SSL_SESSION_is_resumable(sess))
        return 0;
    if (*t->slot)
        SSL_SESSION_free(*t->slot);
    *t->slot = sess;
    return 1;
}

void mc_tls_session_free(struct ssl_session_st *s)
{
    if (s)
        SSL_SESSION_free(s);
}

/* ---- the context ---- */

static void ctx_error(char *err, size_t errlen, const char *what,
                      const char *file)
{
    unsigned long e = ERR_peek_last_error();
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    snprintf(err, errlen, "%s%s%s: %s", what, file ? " " : "",
             file ? file : "", r ? r : "failed");
    ERR_clear_error();
}

mc_tls_ctx *mc_tls_ctx_new(const mc_tls_opts *o, char *err, size_t errlen)
{
    mc_tls_ctx *t = calloc(1, sizeof(*t));
    SSL_CTX *ctx;

    if (!t) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    ERR_clear_error();
    t->ctx = ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        ctx_error(err, errlen, "cannot make a TLS context", NULL);
        goto fail;
    }
    t->verify = o->verify;
    if (o->server_name && !(t->server_name = strdup(o->server_name))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(ctx, o->min_version == 13 ? TLS1_3_VERSION
                                                            : TLS1_2_VERSION);
    /* a server that closes without close_notify ends the stream as a
     * close does; replies are framed, so a cut one is still caught */
    SSL_CTX_set_options(ctx, SSL_OP_IGNORE_UNEXPECTED_EOF);
    /* No SSL_MODE_RELEASE_BUFFERS: it frees the read and write buffers
     * (about 17 kB each) whenever they empty, which on a request-reply
     * stream is after every record, and allocates them again at the next:
     * about 1.4k of the ~14k instructions a warm TLS get adds (callgrind).
     * The price is the two buffers kept per open TLS connection. */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
                              SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_read_ahead(ctx, 1);
    /* sessions are kept per server by us, not in OpenSSL's cache */
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_CLIENT |
                                            SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(ctx, new_session);
    if (o->ciphers && SSL_CTX_set_cipher_list(ctx, o->ciphers) != 1) {
        ctx_error(err, errlen, "ciphers", o->ciphers);
        goto fail;
    }
    if (o->verify) {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
        if (o->ca_file || o->ca_path) {
            if (SSL_CTX_load_verify_locations(ctx, o->ca_file, o->ca_path) !=
                1) {
                ctx_error(err, errlen, "cannot load the CA",
                          o->ca_file ? o->ca_file : o->ca_path);
                goto fail;
            }
        } else if (SSL_CTX_set_default_verify_paths(ctx) != 1) {
            ctx_error(err, errlen, "cannot load the system's CA store", NULL);
            goto fail;
        }
    } else {
        SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
    }
    if (o->cert_file) {
        const char *key = o->key_file ? o->key_file : o->cert_file;
        if (SSL_CTX_use_certificate_chain_file(ctx, o->cert_file) != 1) {
            ctx_error(err, errlen, "cannot load the certificate", o->cert_file);
            goto fail;
        }
        if (SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM) != 1) {
            ctx_error(err, errlen, "cannot load the key", key);
            goto fail;
        }
        if (SSL_CTX_check_private_key(ctx) != 1) {
            ctx_error(err, errlen, "the key does not match the certificate",
                      key);
            goto fail;
        }
    } else if (o->key_file) {
        snprintf(err, errlen, "key_file given without cert_file");
        goto fail;
    }
    return t;
fail:
    mc_tls_ctx_free(t);
    return NULL;
}

void mc_tls_ctx_free(mc_tls_ctx *t)
{
    if (!t)
        return;
    SSL_CTX_free(t->ctx);
    free(t->server_name);
    free(t);
}

/* ---- a connection ---- */

/* Is name an IP address (checked against the certificate's IP entries,
 * never sent as SNI)? */
static int is_ip(const char *name)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, name, buf) == 1 ||
           inet_pton(AF_INET6, name, buf) == 1;
}

int mc_tls_start(mc_conn *c, const mc_tls_ctx *ctx, const char *host,
                 struct ssl_session_st **slot, char *msg, size_t msglen)
{
    tls_conn *t;
    BIO *bio;
    const char *name = ctx->server_name ? ctx->server_name : host;

    pthread_once(&bio_once, bio_make);
    t = calloc(1, sizeof(*t));
    if (!t || !bio_method) {
        free(t);
        snprintf(msg, msglen, "out of memory");
        return MC_ERR_NOMEM;
    }
    ERR_clear_error();
    t->fd = c->fd;
    t->slot = slot;
    t->ssl = SSL_new(ctx->ctx);
    bio = t->ssl ? BIO_new(bio_method) : NULL;
    if (!bio) {
        if (t->ssl)
            SSL_free(t->ssl);
        free(t);
        ERR_clear_error();
        snprintf(msg, msglen, "out of memory");
        return MC_ERR_NOMEM;
    }
    BIO_set_data(bio, t);
    SSL_set_bio(t->ssl, bio, bio); /* the SSL owns the BIO now */
    SSL_set_app_data(t->ssl, t);
    /* from here on the connection's close frees t */
    c->tp_data = t;
    c->tp = &mc_transport_tls;
    if (name && *name) {
        int ok;
        if (is_ip(name)) {
            ok = !ctx->verify ||
                 X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(t->ssl), name);
        } else {
            /* SNI, and the name the certificate must carry */
            ok = SSL_set_tlsext_host_name(t->ssl, name) == 1;
            if (ok && ctx->verify) {
                SSL_set_hostflags(t->ssl,
                                  X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
                ok = SSL_set1_host(t->ssl, name) == 1;
            }
        }
        if (!ok) {
            ERR_clear_error();
            snprintf(msg, msglen, "bad TLS server name: %s", name);
            return MC_ERR_TLS;
        }
    }
    if (slot && *slot)
        SSL_set_session(t->ssl, *slot);
    SSL_set_connect_state(t->ssl);
    return MC_OK;
}

int mc_tls_handshake_step(mc_conn *c, short *want, char *msg, size_t msglen)
{
    tls_conn *t = c->tp_data;
    int rc, e;
    t->flags = MSG_DONTWAIT; /* waits are the caller's */
    t->err = 0;
    ERR_clear_error();
    rc = SSL_do_handshake(t->ssl);
    if (rc == 1)
        return MC_OK;
    e = SSL_get_error(t->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        /* what OpenSSL holds now is an unfinished record: wait for the
         * socket (tls_events) */
        t->starved = e == SSL_ERROR_WANT_READ;
        t->want = 0;
        *want = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT;
        return MC_TLS_AGAIN;
    }
    if (e == SSL_ERROR_SYSCALL || e == SSL_ERROR_ZERO_RETURN) {
        int err = t->err;
        ERR_clear_error();
        if (err && err != ECONNRESET && err != EPIPE) {
            snprintf(msg, msglen, "TLS handshake: %s", strerror(err));
            return MC_ERR_IO;
        }
        snprintf(msg, msglen, "TLS handshake: the server closed the "
                              "connection");
        return MC_ERR_CLOSED;
    }
    note_ssl_error(t);
    snprintf(msg, msglen, "TLS handshake: %s", t->why);
    return MC_ERR_TLS;
}

int mc_tls_handshake(mc_conn *c, const mc_deadline *d, char *msg,
                     size_t msglen)
{
    for (;;) {
        short want = 0;
        int rc = mc_tls_handshake_step(c, &want, msg, msglen), w;
        if (rc != MC_TLS_AGAIN)
            return rc;
        /* never past the deadline */
        w = mc_deadline_over(d, mc_now())
                ? MC_ERR_TIMEOUT
                : mc_conn_wait(c, want, d, msg, msglen);
        if (w == MC_ERR_TIMEOUT)
            snprintf(msg, msglen, "TLS handshake timed out");
        if (w != MC_OK)
            return w;
    }
}

int mc_tls_resumed(const mc_conn *c)
{
    const tls_conn *t = c->tp_data;
    return c->tp == &mc_transport_tls && SSL_session_reused(t->ssl);
}
