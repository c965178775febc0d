#include "mc_client.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct mc_batch_slot {
    int srv;          /* server index */
    mc_conn *conn;
    uint32_t base;    /* opaque of request 0; the NOOP carries base + n */
    size_t next;      /* replies must come in increasing request order */
    int state;        /* SLOT_* */
    int got;          /* a reply arrived on this connection */
};

enum { SLOT_IDLE, SLOT_CONNECTING, SLOT_WRITING, SLOT_READING, SLOT_DONE };

void mc_client_opts_default(mc_client_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->pool.connect_timeout = 0.1;
    o->pool.max_conns = 0;
    o->pool.max_idle = 2;
    o->pool.max_body = MC_DEFAULT_MAX_BODY;
    o->pool.failure_limit = 2;
    o->pool.retry_timeout = 1.0;
    o->pool.probe_timeout = 0.02;
    o->io_timeout = 0.1;
    o->eject = 1;
    o->selector = MC_SEL_KETAMA;
}

mc_client *mc_client_new(const mc_client_opts *o)
{
    mc_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->o = *o;
    c->o.pool.io_timeout = o->io_timeout;
    if (!(c->o.pool.probe_timeout > 0))
        c->o.pool.probe_timeout = 0.02;
    if (c->o.pool.probe_timeout > c->o.pool.connect_timeout)
        c->o.pool.probe_timeout = c->o.pool.connect_timeout;
    c->cur_srv = -1;
    c->sel = mc_selector_new(o->selector, NULL, 0);
    if (!c->sel) {
        free(c);
        return NULL;
    }
    return c;
}

static void push_event(mc_client *c, mc_server *s, int up, const char *why)
{
    mc_event *e;
    if (c->nevents == c->capevents) {
        size_t cap = c->capevents ? c->capevents * 2 : 4;
        mc_event *p = realloc(c->events, cap * sizeof(*p));
        if (!p)
            return; /* losing a notification beats failing the call */
        c->events = p;
        c->capevents = cap;
    }
    e = &c->events[c->nevents++];
    snprintf(e->server, sizeof(e->server), "%s", s->name);
    e->up = up;
    snprintf(e->reason, sizeof(e->reason), "%s", why ? why : "");
}

static void server_ok(mc_client *c, mc_server *s);

/* An authentication status: the server is up and answers, but refuses this
 * connection and closes it after the reply. */
static int is_auth_status(uint16_t st)
{
    return st == MC_STATUS_AUTH_ERROR || st == MC_STATUS_AUTH_CONTINUE;
}

static void server_failed(mc_client *c, mc_server *s, int err, const char *msg)
{
    char why[200];
    if (err == MC_ERR_AUTH) {
        server_ok(c, s); /* it answered */
        return;
    }
    if (err == MC_ERR_TOO_LARGE || err == MC_ERR_NOMEM || err == MC_ERR_BUSY)
        return; /* the server did nothing wrong */
    snprintf(why, sizeof(why), "%s: %s", mc_err_str(err), msg);
    if (mc_server_failed(s, &c->o.pool, why))
        push_event(c, s, 0, why);
}

static void server_ok(mc_client *c, mc_server *s)
{
    if (s->failures == 0 && !s->dead)
        return;
    if (mc_server_succeeded(s))
        push_event(c, s, 1, "responding again");
}

/* ---- probing a dead server ----
 * Once a dead server's retry time comes, the first caller that wants it
 * probes it before anything is sent: a connect and a NOOP, bounded by
 * probe_timeout (mc_server_probe). A server that answers is alive again
 * and takes the caller's operation on the probe's warm connection; one
 * that refuses costs nothing, one that hangs (a black hole, a stopped
 * process) costs the caller probe_timeout at most, and the operation goes
 * where a dead server's keys go. The caller's own request is never what
 * finds out, so a failed probe fails no operation (mcrouter's TKO probes
 * work the same way, from a thread of their own). Returns 1 when s is
 * usable now. */
static int usable(mc_client *c, mc_server *s)
{
    char msg[200];
    int err;
    if (!s->dead)
        return 1;
    if (!mc_server_probe_due(s, &c->o.pool, mc_now()))
        return 0;
    err = mc_server_probe(s, &c->o.pool, msg, sizeof(msg));
    if (err == MC_OK) {
        server_ok(c, s);
        return 1;
    }
    server_failed(c, s, err, msg); /* dead until the next retry time */
    return !s->dead; /* (an error that is no failure of the server) */
}

/* ---- sending a request again ----
 * A pooled connection may have been closed by the server while it was idle
 * (a server restarted at once on the same port, an idle timeout). Checking
 * every reused connection would cost a syscall per request; instead a
 * request that fails on a reused connection before any byte of its reply
 * arrived (closed, reset, EPIPE) is sent once more on a fresh connection,
 * when sending it twice is harmless: reads (GET/GETK/GAT/TOUCH and their
 * quiet forms), a plain SET/SETQ (no cas: storing the same value again),
 * NOOP, VERSION, STAT, FLUSH. A request that may have been applied before
 * the connection broke must not run twice (ADD answers "not stored" the
 * second time, incr counts twice, append appends twice, a cas or a delete
 * reports a conflict or a miss): for those a reused connection is checked
 * (one recv(MSG_PEEK)) before sending, and a failure after that counts. */

/* One request frame (at least a header) that is safe to send twice. */
static int frame_resend_safe(const char *p)
{
    switch ((uint8_t)p[1]) {
    case MC_OP_GET: case MC_OP_GETQ: case MC_OP_GETK: case MC_OP_GETKQ:
    case MC_OP_GAT: case MC_OP_GATQ: case MC_OP_GATK: case MC_OP_GATKQ:
    case MC_OP_TOUCH: case MC_OP_NOOP: case MC_OP_VERSION: case MC_OP_STAT:
    case MC_OP_FLUSH: case MC_OP_FLUSHQ:
        return 1;
    case MC_OP_SET: case MC_OP_SETQ:
        return mc_load64(p + 16) == 0;
    default:
        return 0;
    }
}

/* Every request in the buffer is safe to send twice. */
static int resend_safe(const char *p, size_t n)
{
    while (n >= MC_HEADER_LEN) {
        size_t len = MC_HEADER_LEN + (size_t)mc_load32(p + 8);
        if (len > n || !frame_resend_safe(p))
            return 0;
        p += len;
        n -= len;
    }
    return n == 0;
}

/* The first request in the buffer is safe to send twice (the cheap test
 * for whether a reused connection needs checking first; batches here are
 * one kind of request plus a NOOP, and resend_safe decides any resend). */
static int first_resend_safe(const mc_buf *out)
{
    return out->len >= MC_HEADER_LEN && frame_resend_safe(out->data);
}

/* Moves the request(s) of a connection that broke, or was found closed,
 * to a new connection to the same server; `old` is closed, and so are the
 * server's idle connections (likely closed by the same restart). wait:
 * connect before returning, else only start connecting. Returns the new
 * connection, or NULL with *err and msg (nothing left open). */
static mc_conn *renew(mc_client *c, mc_server *s, mc_conn *old, int wait,
                      int *err, char *msg, size_t msglen)
{
    mc_buf req = old->out;
    uint32_t opaque = old->opaque;
    mc_conn *n;

    memset(&old->out, 0, sizeof(old->out));
    old->out_pos = 0;
    mc_pool_put(s, &c->o.pool, old, 1, 0);
    mc_pool_drain(s);
    n = wait ? mc_pool_get_slow(s, &c->o.pool, mc_now(), err, msg, msglen)
             : mc_pool_get_started(s, &c->o.pool, mc_now(), err, msg, msglen);
    if (!n) {
        mc_buf_free(&req);
        return NULL;
    }
    mc_buf_free(&n->out);
    n->out = req;
    n->out_pos = 0;
    n->opaque = opaque;
    return n;
}

void mc_client_abort(mc_client *c)
{
    size_t i;
    if (c->cur) {
        mc_pool_put(c->servers[c->cur_srv], &c->o.pool, c->cur, 1, 0);
        c->cur = NULL;
        c->cur_srv = -1;
    }
    for (i = 0; i < c->nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        if (sl->conn) {
            mc_pool_put(c->servers[sl->srv], &c->o.pool, sl->conn, 1, 0);
            sl->conn = NULL;
        }
    }
}

static void free_servers(mc_server **s, size_t n, mc_server **keep,
                         size_t nkeep)
{
    size_t i, j;
    for (i = 0; i < n; i++) {
        for (j = 0; j < nkeep; j++)
            if (keep[j] == s[i])
                break;
        if (j == nkeep)
            mc_server_free(s[i]);
    }
}

void mc_client_free(mc_client *c)
{
    if (!c)
        return;
    mc_client_abort(c);
    free_servers(c->servers, c->nservers, NULL, 0);
    free(c->servers);
    free(c->entry_server);
    free(c->entry_weight);
    free(c->alive);
    mc_selector_free(c->sel);
    free(c->slots);
    free(c->replied);
    free(c->pfds);
    free(c->events);
    free(c);
}

/* Builds a new server table + selector for the given entries, reusing the
 * servers of the current table that have the same address. All or
 * nothing. */
static int install(mc_client *c, const mc_server_spec *spec, size_t n,
                   mc_server **extra, size_t nextra)
{
    mc_server **srv = NULL;
    int *ent = NULL;
    unsigned char *alive = NULL;
    unsigned *wt = NULL;
    mc_sel_entry *se = NULL;
    mc_selector *sel = NULL;
    size_t ns = 0, i, j;

    srv = calloc(n + nextra + 1, sizeof(*srv));
    ent = calloc(n + 1, sizeof(*ent));
    alive = calloc(n + 1, 1);
    se = calloc(n + 1, sizeof(*se));
    wt = calloc(n + 1, sizeof(*wt));
    if (!srv || !ent || !alive || !se || !wt) {
        snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
        goto fail;
    }
    for (i = 0; i < n; i++) {
        mc_server *s = NULL;
        for (j = 0; j < ns; j++)
            if (strcmp(srv[j]->name, spec[i].addr) == 0)
                s = srv[j];
        if (!s) {
            for (j = 0; j < c->nservers; j++)
                if (strcmp(c->servers[j]->name, spec[i].addr) == 0)
                    s = c->servers[j];
            if (!s) {
                mc_addr a;
                char host[256];
                unsigned port;
                if (mc_addr_parse(spec[i].addr, &a, host, sizeof(host), &port,
                                  c->errmsg, sizeof(c->errmsg)) != 0)
                    goto fail;
                s = mc_server_new(spec[i].addr, &a, host, port, 1);
                if (!s) {
                    snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
                    goto fail;
                }
            }
            srv[ns++] = s;
        }
        for (j = 0; j < ns; j++)
            if (srv[j] == s)
                ent[i] = (int)j;
        se[i].host = s->host;
        se[i].port = s->port;
        se[i].weight = wt[i] = spec[i].weight ? spec[i].weight : 1;
    }
    for (i = 0; i < nextra; i++) {
        for (j = 0; j < ns; j++)
            if (srv[j] == extra[i])
                break;
        if (j == ns)
            srv[ns++] = extra[i];
    }
    sel = mc_selector_new(c->o.selector, se, n);
    if (!sel) {
        snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
        goto fail;
    }
    mc_client_abort(c);
    free_servers(c->servers, c->nservers, srv, ns);
    free(c->servers);
    free(c->entry_server);
    free(c->alive);
    free(c->entry_weight);
    mc_selector_free(c->sel);
    c->entry_weight = wt;
    c->servers = srv;
    c->nservers = ns;
    c->entry_server = ent;
    c->nentries = n;
    c->alive = alive;
    c->sel = sel;
    free(se);
    return 0;
fail:
    if (srv) {
        /* free only the servers created here */
        for (i = 0; i < ns; i++) {
            for (j = 0; j < c->nservers; j++)
                if (c->servers[j] == srv[i])
                    break;
            if (j == c->nservers)
                mc_server_free(srv[i]);
        }
    }
    free(srv);
    free(ent);
    free(alive);
    free(wt);
    free(se);
    return -1;
}

/* The current entries as specs (names point into the servers). */
static mc_server_spec *current_specs(mc_client *c, size_t extra)
{
    mc_server_spec *sp = calloc(c->nentries + extra + 1, sizeof(*sp));
    size_t i;
    if (!sp)
        return NULL;
    for (i = 0; i < c->nentries; i++) {
        mc_server *s = c->servers[c->entry_server[i]];
        sp[i].addr = s->name;
        sp[i].weight = c->entry_weight[i];
    }
    return sp;
}

/* Servers outside the selector (custom selectors) survive list changes. */
static size_t outside_servers(mc_client *c, mc_server **out)
{
    size_t i, j, n = 0;
    for (i = 0; i < c->nservers; i++) {
        for (j = 0; j < c->nentries; j++)
            if (c->entry_server[j] == (int)i)
                break;
        if (j == c->nentries)
            out[n++] = c->servers[i];
    }
    return n;
}

int mc_client_set_servers(mc_client *c, const mc_server_spec *s, size_t n)
{
    mc_server **extra = calloc(c->nservers + 1, sizeof(*extra));
    int rc;
    if (!extra) {
        snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
        return -1;
    }
    rc = install(c, s, n, extra, outside_servers(c, extra));
    free(extra);
    return rc;
}

int mc_client_add_server(mc_client *c, const mc_server_spec *s)
{
    mc_server_spec *sp = current_specs(c, 1);
    int rc;
    if (!sp) {
        snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
        return -1;
    }
    sp[c->nentries] = *s;
    rc = mc_client_set_servers(c, sp, c->nentries + 1);
    free(sp);
    return rc;
}

int mc_client_intern_server(mc_client *c, const char *addr)
{
    size_t i;
    mc_server **srv;
    mc_addr a;
    char host[256];
    unsigned port;
    mc_server *s;

    for (i = 0; i < c->nservers; i++)
        if (strcmp(c->servers[i]->name, addr) == 0)
            return (int)i;
    if (mc_addr_parse(addr, &a, host, sizeof(host), &port, c->errmsg,
                      sizeof(c->errmsg)) != 0)
        return -1;
    srv = realloc(c->servers, (c->nservers + 1) * sizeof(*srv));
    if (!srv) {
        snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
        return -1;
    }
    c->servers = srv;
    s = mc_server_new(addr, &a, host, port, 1);
    if (!s) {
        snprintf(c->errmsg, sizeof(c->errmsg), "out of memory");
        return -1;
    }
    c->servers[c->nservers] = s;
    return (int)c->nservers++;
}

int mc_client_pick_static(const mc_client *c, const char *key, size_t keylen)
{
    int e;
    if (c->nentries == 0)
        return -1;
    e = mc_selector_pick(c->sel, key, keylen, NULL);
    return e < 0 ? -1 : c->entry_server[e];
}

int mc_client_pick(mc_client *c, const char *key, size_t keylen, int *err)
{
    int e, si;
    size_t i;
    mc_server *s;

    if (mc_client_single(c) >= 0)
        return c->entry_server[0]; /* nothing to choose: no hashing */
    if (c->nentries == 0) {
        *err = MC_ERR_NO_SERVERS;
        snprintf(c->errmsg, sizeof(c->errmsg), "no servers configured");
        return -1;
    }
    e = mc_selector_pick(c->sel, key, keylen, NULL);
    si = c->entry_server[e];
    s = c->servers[si];
    if (usable(c, s))
        return si;
    if (!c->o.eject) {
        *err = MC_ERR_SERVER_DEAD;
        snprintf(c->errmsg, sizeof(c->errmsg), "%s: marked dead after: %s",
                 s->name, s->last_error);
        return -1;
    }
    for (i = 0; i < c->nentries; i++)
        c->alive[i] = !c->servers[c->entry_server[i]]->dead;
    e = mc_selector_pick(c->sel, key, keylen, c->alive);
    if (e < 0) {
        *err = MC_ERR_NO_SERVERS;
        snprintf(c->errmsg, sizeof(c->errmsg),
                 "no servers available: all are marked dead");
        return -1;
    }
    return c->entry_server[e];
}

/* ---- one request ---- */

mc_buf *mc_client_begin(mc_client *c, int srv, uint32_t *opaque, int *err)
{
    mc_server *s;
    char msg[200];

    if (c->cur || c->nslots)
        mc_client_abort(c);
    if (srv < 0 || (size_t)srv >= c->nservers) {
        *err = MC_ERR_NO_SERVERS;
        snprintf(c->errmsg, sizeof(c->errmsg), "no such server");
        return NULL;
    }
    s = c->servers[srv];
    c->op_start = mc_now();
    c->cur = mc_pool_get(s, &c->o.pool, c->op_start, err, msg, sizeof(msg));
    if (!c->cur) {
        snprintf(c->errmsg, sizeof(c->errmsg), "%s: %s", s->name, msg);
        server_failed(c, s, *err, msg);
        return NULL;
    }
    if (c->cur->idle_since == 0) /* just connected: I/O time starts now */
        c->op_start = mc_now();
    c->cur_srv = srv;
    c->cur_close = 0;
    c->nbegun++;
    c->cur_opaque = c->cur->opaque++;
    c->cur->out.len = 0;
    c->cur->out_pos = 0;
    *opaque = c->cur_opaque;
    return &c->cur->out;
}

static int cur_failed(mc_client *c, int err, const char *msg)
{
    mc_server *s = c->servers[c->cur_srv];
    snprintf(c->errmsg, sizeof(c->errmsg), "%s: %s", s->name, msg);
    mc_pool_put(s, &c->o.pool, c->cur, 1, 0);
    c->cur = NULL;
    server_failed(c, s, err, msg);
    c->cur_srv = -1;
    return err;
}

/* Checks that a reply answers the request in flight; key (NULL: the
 * request's reply names no key) is the key the reply must name. */
static int reply_matches(mc_client *c, mc_resp *r, const char *key,
                         size_t keylen)
{
    char msg[200];
    if (r->opaque != c->cur_opaque || r->opcode != c->cur_opcode) {
        snprintf(msg, sizeof(msg),
                 "reply (opcode 0x%02x, opaque %u) does not match the "
                 "request (opcode 0x%02x, opaque %u)",
                 r->opcode, r->opaque, c->cur_opcode, c->cur_opaque);
        return cur_failed(c, MC_ERR_PROTOCOL, msg);
    }
    /* One request, one reply (STAT streams several): anything after it,
     * or a reply of the wrong shape, means the server framed something
     * wrongly, and this reply may be cut short or shifted. */
    if (r->opcode != MC_OP_STAT && mc_reader_pending(&c->cur->in))
        return cur_failed(c, MC_ERR_PROTOCOL, "bytes after the reply");
    if (!mc_resp_shape_ok(r))
        return cur_failed(c, MC_ERR_PROTOCOL,
                          "reply framed wrongly for its opcode");
    /* A hit must name the requested key (its opaque alone could be a
     * server's or a proxy's mix-up); error replies may name none. */
    if (key && (r->keylen || r->status == MC_STATUS_OK) &&
        (r->keylen != keylen || memcmp(r->key, key, keylen) != 0))
        return cur_failed(c, MC_ERR_PROTOCOL,
                          "reply names another key than the request's");
    return MC_OK;
}

/* The request in flight moves to a fresh connection (connected here); its
 * I/O budget starts again once connected, as for a new connection. */
static int cur_renew(mc_client *c, char *msg, size_t msglen)
{
    int err;
    /* the old connection is closed by renew, also when it fails */
    c->cur = renew(c, c->servers[c->cur_srv], c->cur, 1, &err, msg, msglen);
    if (!c->cur)
        return err;
    c->op_start = mc_now();
    mc_deadline_in(&c->deadline, c->op_start, c->o.io_timeout);
    return MC_OK;
}

static inline int exec_one(mc_client *c, mc_resp *r, const char *key,
                           size_t keylen)
{
    char msg[200];
    int rc, reused;

    if (!c->cur)
        return MC_ERR_IO;
    c->cur_opcode = c->cur->out.len >= 2 ? (uint8_t)c->cur->out.data[1] : 0;
    mc_deadline_in(&c->deadline, c->op_start, c->o.io_timeout);
    reused = c->cur->idle_since != 0;
    if (reused && !first_resend_safe(&c->cur->out) && mc_conn_stale(c->cur)) {
        /* not to be sent twice: a closed pooled connection is replaced
         * before sending */
        if ((rc = cur_renew(c, msg, sizeof(msg))) != MC_OK)
            return cur_failed(c, rc, msg);
        reused = 0;
    }
    rc = mc_conn_roundtrip(c->cur, r, &c->deadline, msg, sizeof(msg));
    if (rc == MC_ERR_CLOSED && reused && c->cur->in.len == 0 &&
        resend_safe(c->cur->out.data, c->cur->out.len)) {
        /* closed before any byte of the reply: once more, on a fresh
         * connection; only its failure counts */
        rc = cur_renew(c, msg, sizeof(msg));
        if (rc == MC_OK)
            rc = mc_conn_roundtrip(c->cur, r, &c->deadline, msg, sizeof(msg));
    }
    if (rc != MC_OK)
        return cur_failed(c, rc, msg);
    rc = reply_matches(c, r, key, keylen);
    if (rc == MC_OK) {
        /* memcached -S closes the connection after this reply: pooled, it
         * would fail the next call with "connection closed" */
        if (is_auth_status(r->status))
            c->cur_close = 1;
        server_ok(c, c->servers[c->cur_srv]);
    }
    return rc;
}

int mc_client_exec(mc_client *c, mc_resp *r)
{
    return exec_one(c, r, NULL, 0);
}

int mc_client_exec_key(mc_client *c, mc_resp *r, const char *key,
                       size_t keylen)
{
    return exec_one(c, r, key, keylen);
}

int mc_client_next(mc_client *c, mc_resp *r)
{
    char msg[200];
    int rc;
    if (!c->cur)
        return MC_ERR_IO;
    rc = mc_conn_recv(c->cur, r, &c->deadline, msg, sizeof(msg));
    if (rc != MC_OK)
        return cur_failed(c, rc, msg);
    rc = reply_matches(c, r, NULL, 0);
    if (rc == MC_OK && is_auth_status(r->status))
        c->cur_close = 1;
    return rc;
}

void mc_client_end(mc_client *c)
{
    if (!c->cur)
        return;
    mc_pool_put(c->servers[c->cur_srv], &c->o.pool, c->cur, c->cur_close,
                c->op_start);
    c->cur = NULL;
    c->cur_srv = -1;
}

/* ---- batches ---- */

static int grow(void **p, size_t *cap, size_t want, size_t size)
{
    void *q;
    if (*cap >= want)
        return 0;
    q = realloc(*p, want * size);
    if (!q)
        return -1;
    *p = q;
    *cap = want;
    return 0;
}

static void slot_failed(mc_client *c, const mc_batch *b, mc_batch_slot *sl,
                        int err, const char *msg)
{
    mc_server *s = c->servers[sl->srv];
    size_t i;
    char full[256], why[200];

    /* msg may live in the connection (its reader's errstr): copy it before
     * the connection is closed */
    snprintf(why, sizeof(why), "%s", msg);
    snprintf(full, sizeof(full), "%s: %s", s->name, why);
    snprintf(c->errmsg, sizeof(c->errmsg), "%s", full);
    if (sl->conn) {
        mc_pool_put(s, &c->o.pool, sl->conn, 1, 0);
        sl->conn = NULL;
        server_failed(c, s, err, why);
    }
    /* A server's replies count only once its whole stream, through the
     * closing NOOP, has parsed: a stream that breaks off may have framed an
     * earlier reply wrongly (a truncated reply absorbs the next one's
     * bytes), so what it already delivered is taken back. */
    for (i = 0; i < b->n; i++) {
        if (b->server[i] != sl->srv)
            continue;
        if (!c->replied[i])
            b->fail(b->ud, i, err, full);
        else if (b->revoke)
            b->revoke(b->ud, i, err, full);
    }
    sl->state = SLOT_DONE;
}

/* Takes every whole response out of the slot's reader. */
static void slot_drain(mc_client *c, const mc_batch *b, mc_batch_slot *sl)
{
    mc_resp r;
    char msg[200];

    for (;;) {
        int rc = mc_reader_get(&sl->conn->in, &r);
        uint32_t off;
        if (rc == MC_READ_MORE)
            return;
        if (rc == MC_READ_ERROR) {
            slot_failed(c, b, sl, mc_conn_read_error(sl->conn),
                        sl->conn->in.errstr);
            return;
        }
        sl->got = 1;
        if (is_auth_status(r.status)) {
            /* the server refuses this connection (and closes it): none of
             * its requests will be served, whichever one it answered */
            snprintf(msg, sizeof(msg), "%s: %.*s", mc_status_str(r.status),
                     (int)(r.vallen > 100 ? 100 : r.vallen), r.value);
            slot_failed(c, b, sl, MC_ERR_AUTH, msg);
            return;
        }
        off = r.opaque - sl->base;
        if (b->every_reply) /* the next request of this server's, in order */
            while (sl->next < b->n && b->server[sl->next] != sl->srv)
                sl->next++;
        if (r.opcode == MC_OP_NOOP && off == b->n) {
            mc_server *s = c->servers[sl->srv];
            if (b->every_reply && sl->next < b->n) {
                slot_failed(c, b, sl, MC_ERR_PROTOCOL,
                            "the batch ended with requests unanswered");
                return;
            }
            if (mc_reader_pending(&sl->conn->in)) {
                slot_failed(c, b, sl, MC_ERR_PROTOCOL,
                            "bytes after the batch's last reply");
                return;
            }
            mc_pool_put(s, &c->o.pool, sl->conn, 0, c->op_start);
            sl->conn = NULL;
            sl->state = SLOT_DONE;
            server_ok(c, s);
            return;
        }
        if (!mc_resp_shape_ok(&r)) {
            slot_failed(c, b, sl, MC_ERR_PROTOCOL,
                        "reply framed wrongly for its opcode");
            return;
        }
        if (off >= b->n || off < sl->next || b->server[off] != sl->srv ||
            (b->every_reply && off != sl->next)) {
            snprintf(msg, sizeof(msg),
                     "reply with opaque %u answers no pending request",
                     r.opaque);
            slot_failed(c, b, sl, MC_ERR_PROTOCOL, msg);
            return;
        }
        if (b->reply(b->ud, off, &r) != 0) {
            snprintf(msg, sizeof(msg),
                     "reply with opaque %u does not match its request",
                     r.opaque);
            slot_failed(c, b, sl, MC_ERR_PROTOCOL, msg);
            return;
        }
        c->replied[off] = 1;
        sl->next = off + 1;
    }
}

/* A slot's connection failed (err, msg). A reused connection that broke
 * before any reply, with requests safe to send twice, is replaced by a new
 * one (connected here, within connect_timeout) that gets the requests
 * again; only a failure of that one counts. Else the slot fails. */
static void slot_broke(mc_client *c, const mc_batch *b, mc_batch_slot *sl,
                       int err, const char *msg)
{
    mc_server *s = c->servers[sl->srv];
    char m[200];
    int w;

    if (err != MC_ERR_CLOSED || sl->got || !sl->conn ||
        sl->conn->idle_since == 0 || sl->conn->in.len ||
        !resend_safe(sl->conn->out.data, sl->conn->out.len)) {
        slot_failed(c, b, sl, err, msg);
        return;
    }
    sl->conn = renew(c, s, sl->conn, 1, &err, m, sizeof(m));
    if (!sl->conn) {
        server_failed(c, s, err, m);
        slot_failed(c, b, sl, err, m);
        return;
    }
    /* the new connection gets a whole I/O budget */
    mc_deadline_extend(&c->deadline, mc_now(), c->o.io_timeout);
    sl->state = SLOT_WRITING;
    w = mc_conn_write_some(sl->conn, m, sizeof(m));
    if (w < 0)
        slot_failed(c, b, sl, -w, m);
    else if (w == 1)
        sl->state = SLOT_READING;
}

/* One connect of a batch ended; once none is left, the batch's I/O budget
 * runs from now. */
static void connected_one(mc_client *c, int *connecting)
{
    if (*connecting > 0 && --*connecting == 0)
        mc_deadline_in(&c->deadline, mc_now(), c->o.io_timeout);
}

int mc_client_batch(mc_client *c, const mc_batch *b)
{
    size_t i, nslots = 0, active;
    int connecting = 0;
    mc_deadline connect_deadline;
    double now;
    char msg[200];

    mc_client_abort(c);
    c->nslots = 0;
    if (grow((void **)&c->replied, &c->capreplied, b->n + 1, 1) != 0 ||
        grow((void **)&c->slots, &c->capslots, c->nservers + 1,
             sizeof(*c->slots)) != 0 ||
        grow((void **)&c->pfds, &c->cappfds, c->nservers + 1,
             sizeof(*c->pfds)) != 0)
        return MC_ERR_NOMEM;
    memset(c->replied, 0, b->n);

    /* one slot per server that has requests, in first-use order */
    for (i = 0; i < b->n; i++) {
        int s = b->server[i];
        size_t k;
        if (s < 0)
            continue;
        for (k = 0; k < nslots; k++)
            if (c->slots[k].srv == s)
                break;
        if (k == nslots) {
            memset(&c->slots[k], 0, sizeof(c->slots[k]));
            c->slots[k].srv = s;
            c->slots[k].state = SLOT_IDLE;
            nslots++;
        }
    }
    c->nslots = nslots;
    c->op_start = mc_now();
    mc_deadline_in(&c->deadline, c->op_start, c->o.io_timeout);

    /* encode everything, then start writing */
    for (i = 0; i < nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        mc_server *s = c->servers[sl->srv];
        int err;
        size_t k;
        /* new connections are only started here: all servers connect at
         * once, each within its own connect_timeout, in the poll loop */
        sl->conn = mc_pool_get_started(s, &c->o.pool, c->op_start, &err, msg,
                                       sizeof(msg));
        if (!sl->conn) {
            server_failed(c, s, err, msg);
            slot_failed(c, b, sl, err, msg);
            continue;
        }
        sl->base = sl->conn->opaque;
        sl->conn->opaque += (uint32_t)b->n + 1;
        sl->conn->out.len = 0;
        sl->conn->out_pos = 0;
        for (k = 0; k < b->n; k++) {
            if (b->server[k] != sl->srv)
                continue;
            if (b->encode(b->ud, k, &sl->conn->out, sl->base + (uint32_t)k) != 0)
                break;
        }
        if (k < b->n || mc_enc_simple(&sl->conn->out, MC_OP_NOOP,
                                      sl->base + (uint32_t)b->n) != 0) {
            mc_pool_put(s, &c->o.pool, sl->conn, 1, 0);
            sl->conn = NULL;
            slot_failed(c, b, sl, MC_ERR_NOMEM, "out of memory");
            continue;
        }
        if (sl->conn->idle_since != 0 && !first_resend_safe(&sl->conn->out) &&
            mc_conn_stale(sl->conn)) {
            /* not to be sent twice: a closed pooled connection is
             * replaced before sending */
            sl->conn = renew(c, s, sl->conn, 0, &err, msg, sizeof(msg));
            if (!sl->conn) {
                server_failed(c, s, err, msg);
                slot_failed(c, b, sl, err, msg);
                continue;
            }
        }
        if (sl->conn->connecting) {
            sl->state = SLOT_CONNECTING;
            connecting++;
            continue;
        }
        sl->state = SLOT_WRITING;
        /* Start sending now: the server works while we encode the next. */
        {
            int rc = mc_conn_write_some(sl->conn, msg, sizeof(msg));
            if (rc < 0)
                slot_broke(c, b, sl, -rc, msg);
            else if (rc == 1)
                sl->state = SLOT_READING;
        }
    }

    /* The I/O budget starts once the connections stand. */
    mc_deadline_in(&connect_deadline, c->op_start, c->o.pool.connect_timeout);
    if (connecting)
        mc_deadline_in(&c->deadline, connect_deadline.end, c->o.io_timeout);

again:
    /* Phase 1, while any request is still unsent: one poll loop over all
     * sockets, reading as well (a server blocked on a full output buffer
     * would otherwise never drain our input). */
    for (;;) {
        size_t np = 0, writing = 0;
        int rc;
        mc_deadline until;
        active = 0;
        for (i = 0; i < nslots; i++)
            if (c->slots[i].state == SLOT_WRITING ||
                c->slots[i].state == SLOT_CONNECTING)
                writing++;
        if (!writing)
            break;
        for (i = 0; i < nslots; i++) {
            mc_batch_slot *sl = &c->slots[i];
            if (sl->state == SLOT_DONE)
                continue;
            active++;
            c->pfds[np].fd = sl->conn->fd;
            /* Read while writing too: a server blocked on a full output
             * buffer would otherwise never drain our input. */
            c->pfds[np].events =
                sl->state == SLOT_CONNECTING ? POLLOUT
                : (short)(POLLIN | (sl->state == SLOT_WRITING ? POLLOUT : 0));
            c->pfds[np].revents = 0;
            np++;
        }
        if (!active)
            break;
        now = mc_now();
        if (mc_deadline_over(&c->deadline, now)) {
            for (i = 0; i < nslots; i++)
                if (c->slots[i].state != SLOT_DONE)
                    slot_failed(c, b, &c->slots[i], MC_ERR_TIMEOUT,
                                "timed out");
            break;
        }
        if (connecting) {
            if (mc_deadline_over(&connect_deadline, now)) {
                /* a connect that took its whole time fails alone */
                for (i = 0; i < nslots; i++)
                    if (c->slots[i].state == SLOT_CONNECTING) {
                        slot_failed(c, b, &c->slots[i], MC_ERR_TIMEOUT,
                                    "connect timed out");
                        connected_one(c, &connecting);
                    }
                continue; /* the poll set changed */
            }
        }
        until = connecting ? mc_deadline_min(c->deadline, connect_deadline)
                           : c->deadline;
        rc = mc_deadline_poll(c->pfds, np, &until);
        if (rc < 0)
            continue; /* EINTR; the deadline bounds the loop */
        np = 0;
        for (i = 0; i < nslots; i++) {
            mc_batch_slot *sl = &c->slots[i];
            short ev;
            if (sl->state == SLOT_DONE)
                continue;
            ev = c->pfds[np++].revents;
            if (!ev)
                continue;
            if (sl->state == SLOT_CONNECTING) {
                int err;
                int ok = mc_conn_finish(sl->conn, &err, msg, sizeof(msg)) == 0;
                connected_one(c, &connecting);
                if (!ok) {
                    slot_failed(c, b, sl, err, msg);
                    continue;
                }
                sl->state = SLOT_WRITING;
                ev = POLLOUT; /* and start writing right away */
            }
            if (sl->state == SLOT_WRITING && (ev & (POLLOUT | POLLERR | POLLHUP))) {
                int w = mc_conn_write_some(sl->conn, msg, sizeof(msg));
                if (w < 0) {
                    slot_broke(c, b, sl, -w, msg);
                    continue;
                }
                if (w == 1)
                    sl->state = SLOT_READING;
            }
            if (ev & (POLLIN | POLLERR | POLLHUP)) {
                int r = mc_conn_read_some(sl->conn, msg, sizeof(msg));
                if (r < 0) {
                    /* replies already buffered still count */
                    slot_drain(c, b, sl);
                    if (sl->state != SLOT_DONE)
                        slot_broke(c, b, sl, -r, msg);
                    continue;
                }
                slot_drain(c, b, sl);
            }
        }
    }

    /* Phase 2, everything sent: every server has its whole batch and works
     * on it, so reading them one after the other costs no parallelism, and
     * a blocking read is one syscall where poll + read is two. Once the
     * deadline has passed, the others still get what already arrived. */
    for (i = 0; i < nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        while (sl->state == SLOT_READING) {
            int r;
            slot_drain(c, b, sl);
            if (sl->state != SLOT_READING)
                break;
            if (mc_deadline_over(&c->deadline, mc_now())) {
                r = mc_conn_read_some(sl->conn, msg, sizeof(msg));
                if (r == 0) {
                    r = -MC_ERR_TIMEOUT;
                    snprintf(msg, sizeof(msg), "timed out");
                }
            } else {
                r = mc_conn_read_budget(sl->conn, &c->deadline, msg,
                                        sizeof(msg));
            }
            if (r < 0) {
                slot_drain(c, b, sl);
                if (sl->state != SLOT_DONE)
                    slot_broke(c, b, sl, -r, msg);
            }
        }
    }
    /* a slot that moved to a fresh connection while being read may still
     * have requests to write: back to the poll loop */
    for (i = 0; i < nslots; i++)
        if (c->slots[i].state == SLOT_WRITING)
            goto again;
    c->nslots = 0;
    return MC_OK;
}

size_t mc_client_idle_bytes(const mc_client *c)
{
    size_t i, n = 0;
    for (i = 0; i < c->nservers; i++)
        n += mc_server_idle_bytes(c->servers[i]);
    return n;
}

const mc_event *mc_client_events(mc_client *c, size_t *n)
{
    *n = c->nevents;
    return c->events;
}

void mc_client_clear_events(mc_client *c)
{
    c->nevents = 0;
}

int mc_client_usable(mc_client *c, int srv, int *err)
{
    mc_server *s = c->servers[srv];
    if (usable(c, s))
        return 1;
    *err = MC_ERR_SERVER_DEAD;
    snprintf(c->errmsg, sizeof(c->errmsg), "%s: marked dead after: %s",
             s->name, s->last_error);
    return 0;
}
