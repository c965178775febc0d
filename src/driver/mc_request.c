/* mc_request: the one-request path of the blocking client (mc_client.h):
 * a request's connection held until its results are pushed, the reply
 * checked by the core, a request resent on a fresh connection when the
 * core says it may be. Servers, health and placement are mc_client.c's. */
#include "mc_client.h"
#include "mc_client_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- one request ----
 * A held connection is linked into c->held (through its next field, which
 * the pool uses only for idle ones), so that a request whose caller never
 * ended it is still closed with the client. */

static void hold(mc_client *c, mc_conn *conn)
{
    conn->next = c->held;
    c->held = conn;
}

static void unhold(mc_client *c, mc_conn *conn)
{
    mc_conn **p = &c->held;
    while (*p && *p != conn)
        p = &(*p)->next;
    if (*p)
        *p = conn->next;
    conn->next = NULL;
}

/* Gives q's connection back (closed when broken) and frees its server if
 * it left the list meanwhile. */
static void release(mc_client *c, mc_req *q, int broken)
{
    unhold(c, q->conn);
    mc_pool_put(q->srv, &c->o.pool, q->conn, broken || c->closed, q->start);
    q->conn = NULL;
    if (c->nretired)
        client_reap_retired(c);
}

mc_buf *mc_client_begin(mc_client *c, mc_req *q, int srv, int *err)
{
    mc_server *s;
    char msg[200];

    q->conn = NULL;
    if (srv < 0 || (size_t)srv >= c->nservers) {
        *err = MC_ERR_NO_SERVERS;
        snprintf(q->err, sizeof(q->err), "no such server");
        return NULL;
    }
    s = c->servers[srv];
    q->srv = s;
    q->start = mc_now();
    q->conn = mc_pool_get(s, &c->o.pool, q->start, err, msg, sizeof(msg));
    if (!q->conn) {
        snprintf(q->err, sizeof(q->err), "%s: %s", s->name, msg);
        client_server_failed(c, s, *err, msg);
        return NULL;
    }
    hold(c, q->conn);
    if (q->conn->idle_since == 0) /* just connected: I/O time starts now */
        q->start = mc_now();
    q->close = 0;
    q->codec = q->conn->codec;
    q->opaque = q->conn->opaque++;
    q->conn->out.len = 0;
    q->conn->out_pos = 0;
    return &q->conn->out;
}

static int req_failed(mc_client *c, mc_req *q, int err, const char *msg)
{
    snprintf(q->err, sizeof(q->err), "%s: %s", q->srv->name, msg);
    client_server_failed(c, q->srv, err, msg);
    if (q->conn)
        release(c, q, 1);
    return err;
}

/* The core's check that a reply answers the request in flight
 * (mc_reply_check); a reply that does not fails the request. */
static int reply_matches(mc_client *c, mc_req *q, mc_resp *r,
                         const char *key, size_t keylen)
{
    char msg[200];
    int rc = mc_reply_check(q->opcode, q->opaque, r,
                            mc_reader_pending(&q->conn->in) != 0, key, keylen,
                            msg, sizeof(msg));
    return rc == MC_OK ? MC_OK : req_failed(c, q, rc, msg);
}

/* The request in flight moves to a fresh connection (connected here); its
 * I/O budget starts again once connected, as for a new connection. */
static int req_renew(mc_client *c, mc_req *q, char *msg, size_t msglen)
{
    int err;
    /* the old connection is closed by renew, also when it fails */
    unhold(c, q->conn);
    q->conn = client_renew(c, q->srv, q->conn, 1, &err, msg, msglen);
    if (!q->conn)
        return err;
    hold(c, q->conn);
    q->start = mc_now();
    mc_deadline_in(&q->deadline, q->start, c->o.io_timeout);
    return MC_OK;
}

static inline int exec_one(mc_client *c, mc_req *q, mc_resp *r,
                           const char *key, size_t keylen)
{
    char msg[200];
    int rc, reused;
    mc_conn *conn = q->conn;

    if (!conn)
        return MC_ERR_IO;
    q->opcode = conn->out.len >= 2 ? (uint8_t)conn->out.data[1] : 0;
    mc_deadline_in(&q->deadline, q->start, c->o.io_timeout);
    reused = conn->idle_since != 0;
    if (reused && !mc_first_resend_safe(conn->out.data, conn->out.len) &&
        mc_conn_stale(conn)) {
        /* not to be sent twice: a closed pooled connection is replaced
         * before sending */
        if ((rc = req_renew(c, q, msg, sizeof(msg))) != MC_OK)
            return req_failed(c, q, rc, msg);
        reused = 0;
    }
    rc = mc_conn_roundtrip(q->conn, r, &q->deadline, msg, sizeof(msg));
    if (rc == MC_ERR_CLOSED && reused && q->conn->in.len == 0 &&
        mc_resend_safe(q->conn->out.data, q->conn->out.len)) {
        /* closed before any byte of the reply: once more, on a fresh
         * connection; only its failure counts */
        rc = req_renew(c, q, msg, sizeof(msg));
        if (rc == MC_OK)
            rc = mc_conn_roundtrip(q->conn, r, &q->deadline, msg,
                                   sizeof(msg));
    }
    if (rc != MC_OK)
        return req_failed(c, q, rc, msg);
    rc = reply_matches(c, q, r, key, keylen);
    if (rc == MC_OK) {
        /* memcached -S closes the connection after this reply: pooled, it
         * would fail the next call with "connection closed" */
        if (mc_status_is_auth(r->status))
            q->close = 1;
        client_server_ok(c, q->srv);
    }
    return rc;
}

int mc_client_exec(mc_client *c, mc_req *q, mc_resp *r)
{
    return exec_one(c, q, r, NULL, 0);
}

int mc_client_exec_key(mc_client *c, mc_req *q, mc_resp *r, const char *key,
                       size_t keylen)
{
    return exec_one(c, q, r, key, keylen);
}

int mc_client_next(mc_client *c, mc_req *q, mc_resp *r)
{
    char msg[200];
    int rc;
    if (!q->conn)
        return MC_ERR_IO;
    rc = mc_conn_recv(q->conn, r, &q->deadline, msg, sizeof(msg));
    if (rc != MC_OK)
        return req_failed(c, q, rc, msg);
    rc = reply_matches(c, q, r, NULL, 0);
    if (rc == MC_OK && mc_status_is_auth(r->status))
        q->close = 1;
    return rc;
}

void mc_client_end(mc_client *c, mc_req *q)
{
    if (q->conn)
        release(c, q, q->close);
}

void mc_client_end_broken(mc_client *c, mc_req *q)
{
    if (q->conn)
        release(c, q, 1);
}
