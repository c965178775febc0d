#include "mc_pool.h"
#include "mc_sasl.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

mc_server *mc_server_new(const char *name, const mc_addr *a,
                         const char *host, unsigned port, unsigned weight)
{
    mc_server *s = calloc(1, sizeof(*s));
    size_t n = strlen(name);
    if (!s)
        return NULL;
    s->name = malloc(n + 1);
    if (!s->name) {
        free(s);
        return NULL;
    }
    memcpy(s->name, name, n + 1);
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->port = port;
    s->weight = weight ? weight : 1;
    s->addr = *a;
    return s;
}

void mc_pool_drain(mc_server *s)
{
    while (s->idle) {
        mc_conn *c = s->idle;
        s->idle = c->next;
        mc_conn_close(c);
        s->nidle--;
        s->nopen--;
    }
}

void mc_server_free(mc_server *s)
{
    if (!s)
        return;
    mc_pool_drain(s);
    mc_tls_session_free(s->tls_session);
    free(s->name);
    free(s);
}

/* One SASL request (framed into c->out by the caller) and its reply,
 * judged by the core (mc_sasl_check). */
static int sasl_step(mc_conn *c, uint8_t opcode, uint32_t opaque,
                     const mc_deadline *d, char *msg, size_t msglen)
{
    mc_resp r;
    int rc = mc_conn_flush(c, d, msg, msglen);
    if (rc == MC_OK)
        rc = mc_conn_recv(c, &r, d, msg, msglen);
    if (rc == MC_OK)
        rc = mc_sasl_check(opcode, opaque, &r,
                           mc_reader_pending(&c->in) != 0, msg, msglen);
    else if (rc == MC_ERR_TIMEOUT)
        snprintf(msg, msglen, "SASL authentication timed out");
    c->out.len = 0;
    c->out_pos = 0;
    return rc;
}

/* SASL PLAIN on a new connection: the mechanisms, then the credentials
 * (mc_sasl.h). */
static int sasl_auth(mc_conn *c, const mc_pool_opts *o, const mc_deadline *d,
                     char *msg, size_t msglen)
{
    uint32_t opaque = c->opaque++;
    int rc;

    c->out.len = 0;
    c->out_pos = 0;
    if (mc_sasl_enc_list(&c->out, opaque) != 0)
        goto nomem;
    rc = sasl_step(c, MC_OP_SASL_LIST_MECHS, opaque, d, msg, msglen);
    if (rc != MC_OK)
        return rc;
    opaque = c->opaque++;
    if (mc_sasl_enc_plain(&c->out, opaque, o->user, o->ulen, o->pass,
                          o->plen) != 0)
        goto nomem;
    return sasl_step(c, MC_OP_SASL_AUTH, opaque, d, msg, msglen);
nomem:
    snprintf(msg, msglen, "out of memory");
    return MC_ERR_NOMEM;
}

/* What a connected connection does before its first request: the TLS
 * handshake, then SASL, both by the deadline d. MC_OK, or the error (the
 * connection is the caller's to close). */
static int conn_secure(mc_server *s, const mc_pool_opts *o, mc_conn *c,
                       const mc_deadline *d, char *msg, size_t msglen)
{
    int rc;
    if (o->tls) {
        rc = mc_tls_start(c, o->tls, s->port ? s->host : NULL,
                          &s->tls_session, msg, msglen);
        if (rc == MC_OK)
            rc = mc_tls_handshake(c, d, msg, msglen);
        if (rc != MC_OK)
            return rc;
        s->tls_resumed = mc_tls_resumed(c);
    }
    return o->user ? sasl_auth(c, o, d, msg, msglen) : MC_OK;
}

static mc_conn *pool_take(mc_server *s, const mc_pool_opts *o, double now,
                          int wait, int *err, char *msg, size_t msglen);

mc_conn *mc_pool_get_slow(mc_server *s, const mc_pool_opts *o, double now,
                          int *err, char *msg, size_t msglen)
{
    return pool_take(s, o, now, 1, err, msg, msglen);
}

mc_conn *mc_pool_get_started(mc_server *s, const mc_pool_opts *o, double now,
                             int *err, char *msg, size_t msglen)
{
    return pool_take(s, o, now, 0, err, msg, msglen);
}

static mc_conn *pool_take(mc_server *s, const mc_pool_opts *o, double now,
                          int wait, int *err, char *msg, size_t msglen)
{
    mc_conn *c;
    unsigned limit;

    while ((c = s->idle) != NULL) {
        s->idle = c->next;
        s->nidle--;
        c->next = NULL;
        /* A connection idle for a while may have been closed by a server
         * that restarted; checking costs a syscall, so only old ones. */
        if (now - c->idle_since < 1.0 || !mc_conn_stale(c)) {
            *err = MC_OK;
            return c;
        }
        mc_conn_close(c);
        s->nopen--;
    }
    limit = s->max_conns ? s->max_conns : o->max_conns;
    if (limit && s->nopen >= limit) {
        *err = MC_ERR_BUSY;
        snprintf(msg, msglen, "all %u connections to %s are in use", limit,
                 s->name);
        return NULL;
    }
    if (wait || o->tls || o->user) {
        mc_deadline d;
        mc_deadline_in(&d, now, o->connect_timeout);
        c = mc_conn_open(&s->addr, &d, o->io_timeout, o->max_body, &o->wait,
                         err, msg, msglen);
        if (c && (o->tls || o->user)) {
            if (o->codec)
                c->codec = o->codec;
            *err = conn_secure(s, o, c, &d, msg, msglen);
            if (*err != MC_OK) {
                mc_conn_close(c);
                return NULL;
            }
        }
    } else {
        c = mc_conn_start(&s->addr, o->io_timeout, o->max_body, &o->wait, err,
                          msg, msglen);
    }
    if (c) {
        s->nopen++;
        if (o->codec)
            c->codec = o->codec;
    }
    return c;
}

void mc_pool_put(mc_server *s, const mc_pool_opts *o, mc_conn *c, int broken,
                 double now)
{
    if (!c)
        return;
    if (broken || s->nidle >= o->max_idle || mc_reader_pending(&c->in) ||
        c->out_pos != c->out.len) {
        mc_conn_close(c);
        s->nopen--;
        return;
    }
    c->out.len = 0;
    c->out_pos = 0;
    /* An idle connection holds small buffers only: one large value must
     * not pin its memory until the connection is closed. The checks are
     * two compares on the usual path; the reader has nothing unread here. */
    if (c->out.cap > MC_CONN_KEEP)
        mc_buf_release(&c->out);
    if (c->in.cap > MC_READER_KEEP)
        mc_reader_reset(&c->in);
    c->idle_since = now;
    c->next = s->idle;
    s->idle = c;
    s->nidle++;
}

size_t mc_server_idle_bytes(const mc_server *s)
{
    size_t n = 0;
    const mc_conn *c;
    for (c = s->idle; c; c = c->next)
        n += c->out.cap + c->in.cap;
    return n;
}

int mc_server_failed(mc_server *s, const mc_pool_opts *o, const char *why)
{
    mc_pool_drain(s);
    return mc_health_failed(&s->h, &o->health, mc_now(), why);
}

int mc_server_succeeded(mc_server *s)
{
    return mc_health_succeeded(&s->h);
}

int mc_server_probe_due(mc_server *s, const mc_pool_opts *o, double now)
{
    return mc_health_probe_due(&s->h, &o->health, now);
}

int mc_server_probe(mc_server *s, const mc_pool_opts *o, char *msg,
                    size_t msglen)
{
    mc_deadline d;
    mc_conn *c;
    mc_resp r;
    uint32_t opaque;
    int err;

    mc_deadline_in(&d, mc_now(), o->probe_timeout);
    c = mc_conn_start(&s->addr, o->io_timeout, o->max_body, &o->wait, &err,
                      msg, msglen);
    if (!c)
        return err;
    if (o->codec)
        c->codec = o->codec;
    if (c->connecting) {
        err = mc_conn_wait(c, POLLOUT, &d, msg, msglen);
        if (err == MC_ERR_TIMEOUT)
            snprintf(msg, msglen, "probe: connect timed out");
        if (err != MC_OK || mc_conn_finish(c, &err, msg, msglen) != 0) {
            mc_conn_close(c);
            return err;
        }
    }
    if (o->tls || o->user) {
        err = conn_secure(s, o, c, &d, msg, msglen);
        if (err != MC_OK) {
            mc_conn_close(c);
            if (err == MC_ERR_TIMEOUT)
                snprintf(msg, msglen, "probe: no answer within %g s",
                         o->probe_timeout);
            /* refused credentials or certificates: it answered */
            return err == MC_ERR_AUTH || err == MC_ERR_TLS ? MC_OK : err;
        }
    }
    opaque = c->opaque++;
    if (c->codec->simple(&c->out, MC_OP_NOOP, opaque) != 0) {
        mc_conn_close(c);
        snprintf(msg, msglen, "out of memory");
        return MC_ERR_NOMEM;
    }
    err = mc_conn_flush(c, &d, msg, msglen);
    if (err == MC_OK)
        err = mc_conn_recv(c, &r, &d, msg, msglen);
    if (err == MC_OK && (r.opcode != MC_OP_NOOP || r.opaque != opaque ||
                         mc_reader_pending(&c->in))) {
        err = MC_ERR_PROTOCOL;
        snprintf(msg, msglen, "probe: the reply to NOOP was wrong");
    }
    if (err == MC_OK && r.status != MC_STATUS_OK) {
        /* a server that wants authentication (memcached -S) answers and
         * then closes the connection: it is up, the connection unusable */
        mc_conn_close(c);
        return MC_OK;
    }
    if (err != MC_OK) {
        if (err == MC_ERR_TIMEOUT)
            snprintf(msg, msglen, "probe: no answer within %g s",
                     o->probe_timeout);
        mc_conn_close(c);
        return err;
    }
    /* it answered: the connection is the server's first warm one */
    s->nopen++;
    mc_pool_put(s, o, c, 0, mc_now());
    return MC_OK;
}
