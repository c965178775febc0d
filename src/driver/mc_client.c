#include "mc_client.h"
#include "mc_client_int.h"
#include "mc_place.h"
#include "mc_sasl.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void mc_client_opts_default(mc_client_opts *o)
{
    memset(o, 0, sizeof(*o));
    o->pool.connect_timeout = 0.1;
    o->pool.max_conns = 0;
    o->pool.max_idle = 2;
    o->pool.max_body = MC_DEFAULT_MAX_BODY;
    o->pool.health.failure_limit = 2;
    o->pool.health.retry_timeout = 1.0;
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

void client_server_failed(mc_client *c, mc_server *s, int err, const char *msg)
{
    char why[200];
    switch (mc_health_verdict(err)) {
    case MC_VERDICT_ANSWERED:
        client_server_ok(c, s);
        return;
    case MC_VERDICT_NONE:
        return;
    default:
        break;
    }
    snprintf(why, sizeof(why), "%s: %s", mc_err_str(err), msg);
    if (mc_server_failed(s, &c->o.pool, why))
        push_event(c, s, 0, why);
}

void client_server_ok(mc_client *c, mc_server *s)
{
    if (s->h.failures == 0 && !s->h.dead)
        return;
    if (mc_server_succeeded(s))
        push_event(c, s, 1, "responding again");
}

/* ---- reading the client ---- */

int mc_client_has_events(const mc_client *c)
{
    return c->nevents != 0;
}

int mc_client_take_event(mc_client *c, mc_event *e)
{
    if (!c->nevents)
        return 0;
    *e = c->events[0];
    c->nevents--;
    memmove(c->events, c->events + 1, c->nevents * sizeof(*e));
    return 1;
}

const char *mc_client_errmsg(const mc_client *c)
{
    return c->errmsg;
}

void mc_client_set_errmsg(mc_client *c, const char *msg)
{
    snprintf(c->errmsg, sizeof(c->errmsg), "%s", msg);
}

const mc_codec *mc_client_codec(const mc_client *c)
{
    return c->o.pool.codec ? c->o.pool.codec : &mc_codec_binary;
}

double mc_client_probe_seconds(const mc_client *c)
{
    return c->probe_seconds;
}

unsigned long mc_client_gen(const mc_client *c)
{
    return c->gen;
}

size_t mc_client_nservers(const mc_client *c)
{
    return c->nservers;
}

const char *mc_client_server_name(const mc_client *c, size_t i)
{
    return c->servers[i]->name;
}

void mc_client_server_info(const mc_client *c, size_t i, mc_server_info *out)
{
    const mc_server *s = c->servers[i];
    out->name = s->name;
    out->alive = !s->h.dead;
    out->failures = s->h.failures;
    out->connections = s->nopen;
    out->last_error = s->h.last_error;
    out->tls = c->tls != NULL;
    out->tls_resumed = s->tls_resumed;
}

void mc_client_set_max_conns(mc_client *c, size_t i, unsigned n)
{
    c->servers[i]->max_conns = n;
}

int mc_client_single(const mc_client *c)
{
    return c->nentries == 1 && !c->servers[c->entry_server[0]]->h.dead
               ? c->entry_server[0] : -1;
}

size_t mc_client_idle_bytes(const mc_client *c)
{
    size_t i, n = 0;
    for (i = 0; i < c->nservers; i++)
        n += mc_server_idle_bytes(c->servers[i]);
    return n;
}

int mc_client_usable(mc_client *c, int srv, int *err)
{
    mc_server *s = c->servers[srv];
    if (client_usable(c, s))
        return 1;
    *err = MC_ERR_SERVER_DEAD;
    snprintf(c->errmsg, sizeof(c->errmsg), "%s: marked dead after: %s",
             s->name, s->h.last_error);
    return 0;
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
int client_usable(mc_client *c, mc_server *s)
{
    char msg[200];
    int err;
    double t0;
    if (!s->h.dead)
        return 1;
    if (!mc_server_probe_due(s, &c->o.pool, t0 = mc_now()))
        return 0;
    err = mc_server_probe(s, &c->o.pool, msg, sizeof(msg));
    c->probe_seconds += mc_now() - t0;
    if (err == MC_OK) {
        client_server_ok(c, s);
        return 1;
    }
    client_server_failed(c, s, err, msg); /* dead until the next retry time */
    return !s->h.dead; /* (an error that is no failure of the server) */
}

/* ---- sending a request again ----
 * A pooled connection may have been closed by the server while it was idle
 * (a server restarted at once on the same port, an idle timeout). Checking
 * every reused connection would cost a syscall per request; instead a
 * request that fails on a reused connection before any byte of its reply
 * arrived (closed, reset, EPIPE) is sent once more on a fresh connection
 * when the core says sending it twice is harmless (mc_resend_safe); for
 * the others a reused connection is checked (one recv(MSG_PEEK)) before
 * sending, and a failure after that counts. */

/* Moves the request(s) of a connection that broke, or was found closed,
 * to a new connection to the same server; `old` is closed, and so are the
 * server's idle connections (likely closed by the same restart). wait:
 * connect before returning, else only start connecting. Returns the new
 * connection, or NULL with *err and msg (nothing left open). */
mc_conn *client_renew(mc_client *c, mc_server *s, mc_conn *old, int wait,
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
    for (i = 0; i < c->nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        if (sl->conn) {
            mc_pool_put(c->servers[sl->srv], &c->o.pool, sl->conn, 1, 0);
            sl->conn = NULL;
        }
    }
}

/* A server that left the list while a request held one of its
 * connections waits in c->retired; freed once it holds none. */
static int server_in_use(const mc_server *s)
{
    return s->nopen > s->nidle;
}

void client_reap_retired(mc_client *c)
{
    size_t i = 0;
    while (i < c->nretired) {
        if (!server_in_use(c->retired[i])) {
            mc_server_free(c->retired[i]);
            c->retired[i] = c->retired[--c->nretired];
        } else {
            i++;
        }
    }
}

static void free_servers(mc_client *c, mc_server **s, size_t n,
                         mc_server **keep, size_t nkeep)
{
    size_t i, j;
    for (i = 0; i < n; i++) {
        for (j = 0; j < nkeep; j++)
            if (keep[j] == s[i])
                break;
        if (j < nkeep)
            continue;
        if (c && server_in_use(s[i])) {
            mc_server **r = realloc(c->retired,
                                    (c->nretired + 1) * sizeof(*r));
            if (r) {
                mc_pool_drain(s[i]);
                c->retired = r;
                c->retired[c->nretired++] = s[i];
                continue;
            }
            /* out of memory: its holder's end would touch freed memory;
             * leak it instead */
            mc_pool_drain(s[i]);
            continue;
        }
        mc_server_free(s[i]);
    }
}

void mc_client_close(mc_client *c)
{
    size_t i;
    mc_client_abort(c);
    c->closed = 1;
    for (i = 0; i < c->nservers; i++)
        mc_pool_drain(c->servers[i]);
}

void mc_client_free(mc_client *c)
{
    size_t i;
    if (!c)
        return;
    mc_client_abort(c);
    /* connections of requests that never ended (their caller raised) */
    while (c->held) {
        mc_conn *h = c->held;
        c->held = h->next;
        mc_conn_close(h);
    }
    free_servers(NULL, c->servers, c->nservers, NULL, 0);
    for (i = 0; i < c->nretired; i++)
        mc_server_free(c->retired[i]);
    free(c->retired);
    free(c->servers);
    free(c->entry_server);
    free(c->entry_weight);
    free(c->alive);
    mc_selector_free(c->sel);
    free(c->slots);
    free(c->replied);
    free(c->pfds);
    free(c->events);
    mc_tls_ctx_free(c->tls);
    if (c->pass) /* not left in freed memory */
        memset(c->pass, 0, c->o.pool.plen);
    free(c->user);
    free(c->pass);
    free(c);
}

static char *dup_bytes(const char *p, size_t n)
{
    char *d = malloc(n + 1);
    if (d) {
        memcpy(d, p, n);
        d[n] = '\0';
    }
    return d;
}

int mc_client_secure(mc_client *c, const mc_tls_opts *t, const char *user,
                     size_t ulen, const char *pass, size_t plen, char *err,
                     size_t errlen)
{
    if (user) {
        if (ulen > MC_SASL_MAX || plen > MC_SASL_MAX ||
            memchr(user, '\0', ulen) || memchr(pass, '\0', plen)) {
            snprintf(err, errlen, "username and password must be at most %d "
                                  "bytes, with no NUL byte", MC_SASL_MAX);
            return MC_ERR_AUTH;
        }
        c->user = dup_bytes(user, ulen);
        c->pass = dup_bytes(pass, plen);
        if (!c->user || !c->pass) {
            snprintf(err, errlen, "out of memory");
            return MC_ERR_NOMEM;
        }
        c->o.pool.user = c->user;
        c->o.pool.pass = c->pass;
        c->o.pool.ulen = ulen;
        c->o.pool.plen = plen;
    }
    if (t) {
        c->tls = mc_tls_ctx_new(t, err, errlen);
        if (!c->tls)
            return MC_ERR_TLS;
        c->o.pool.tls = c->tls;
    }
    return MC_OK;
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
    free_servers(c, c->servers, c->nservers, srv, ns);
    c->gen++;
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

static const mc_health *server_health(const void *ud, int srv)
{
    return &((const mc_client *)ud)->servers[srv]->h;
}

/* The core's placement over this client's list (mc_place.h). */
static mc_place placement(const mc_client *c)
{
    mc_place p;
    p.sel = c->sel;
    p.entry_server = c->entry_server;
    p.nentries = c->nentries;
    p.alive = c->alive;
    p.eject = c->o.eject;
    p.health = server_health;
    p.ud = c;
    return p;
}

int mc_client_pick_static(const mc_client *c, const char *key, size_t keylen)
{
    mc_place p = placement(c);
    return mc_place_key(&p, key, keylen);
}

int mc_client_pick(mc_client *c, const char *key, size_t keylen, int *err)
{
    mc_place p;
    int si;

    if (mc_client_single(c) >= 0)
        return c->entry_server[0]; /* nothing to choose: no hashing */
    p = placement(c);
    si = mc_place_key(&p, key, keylen);
    if (si < 0) {
        *err = MC_ERR_NO_SERVERS;
        snprintf(c->errmsg, sizeof(c->errmsg), "no servers configured");
        return -1;
    }
    if (client_usable(c, c->servers[si])) /* probes it when due */
        return si;
    si = mc_place_around(&p, key, keylen, err);
    if (si >= 0)
        return si;
    if (*err == MC_ERR_SERVER_DEAD) {
        mc_server *s = c->servers[mc_place_key(&p, key, keylen)];
        snprintf(c->errmsg, sizeof(c->errmsg), "%s: marked dead after: %s",
                 s->name, s->h.last_error);
    } else {
        snprintf(c->errmsg, sizeof(c->errmsg),
                 "no servers available: all are marked dead");
    }
    return -1;
}
