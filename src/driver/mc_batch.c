/*
 * mc_batch: a pipelined batch over several servers (mc_client_batch, see
 * mc_client.h): every server written before any is waited on, all read in
 * one poll loop, replies checked for order, opaque and shape.
 *
 * A run: batch_setup (the slots, the clock), batch_start_slots (connects
 * started, streams encoded, first writes), batch_write_phase (polls until
 * every request is sent), batch_read_phase (each slot read to its end);
 * a slot moved to a fresh connection while being read sends its requests
 * again, so the two phases repeat until nothing is left to write.
 */
#include "mc_client.h"
#include "mc_client_int.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* One run of mc_client_batch: its clock and its deadlines live on the
 * caller's stack, not in the client, which holds only the scratch arrays
 * reused from call to call. */
struct run {
    mc_client *c;
    const mc_batch *b;
    double start;         /* the clock read once for the batch */
    mc_deadline io;       /* the I/O budget (moved on by a replaced conn) */
    mc_deadline connect;  /* the bound of the connects started by the batch */
    int connecting;       /* connects still in progress */
};

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
        client_server_failed(c, s, err, why);
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

/* Takes every whole response out of the slot's reader (the core checks
 * them); a stream that ended well gives its connection back. */
static void slot_drain(struct run *r, mc_batch_slot *sl)
{
    mc_client *c = r->c;
    char msg[200];
    int err = MC_OK;

    switch (mc_feed_take(&sl->feed, &sl->conn->in, &err, msg, sizeof(msg))) {
    case MC_FEED_MORE:
        return;
    case MC_FEED_DONE: {
        mc_server *s = c->servers[sl->srv];
        mc_pool_put(s, &c->o.pool, sl->conn, 0, r->start);
        sl->conn = NULL;
        sl->state = SLOT_DONE;
        client_server_ok(c, s);
        return;
    }
    default:
        slot_failed(c, r->b, sl, err, msg);
    }
}

/* A slot's connection failed (err, msg). A reused connection that broke
 * before any reply, with requests safe to send twice, is replaced by a new
 * one (connected here, within connect_timeout) that gets the requests
 * again; only a failure of that one counts. Else the slot fails. */
static void slot_broke(struct run *r, mc_batch_slot *sl, int err,
                       const char *msg)
{
    mc_client *c = r->c;
    const mc_batch *b = r->b;
    mc_server *s = c->servers[sl->srv];
    char m[200];
    int w;

    if (err != MC_ERR_CLOSED || sl->feed.got || !sl->conn ||
        sl->conn->idle_since == 0 || sl->conn->in.len ||
        !mc_resend_safe(sl->conn->out.data, sl->conn->out.len)) {
        slot_failed(c, b, sl, err, msg);
        return;
    }
    sl->conn = client_renew(c, s, sl->conn, 1, &err, m, sizeof(m));
    if (!sl->conn) {
        client_server_failed(c, s, err, m);
        slot_failed(c, b, sl, err, m);
        return;
    }
    /* the new connection gets a whole I/O budget */
    mc_deadline_extend(&r->io, mc_now(), c->o.io_timeout);
    sl->state = SLOT_WRITING;
    w = mc_conn_write_some(sl->conn, m, sizeof(m));
    if (w < 0)
        slot_failed(c, b, sl, -w, m);
    else if (w == 1)
        sl->state = SLOT_READING;
}

/* One connect of a batch ended; once none is left, the batch's I/O budget
 * runs from now. */
static void connected_one(struct run *r)
{
    if (r->connecting > 0 && --r->connecting == 0)
        mc_deadline_in(&r->io, mc_now(), r->c->o.io_timeout);
}

/* Claims the scratch (one slot per server that has requests, in
 * first-use order) and starts the clock. 0, or -1 when out of memory. */
static int batch_setup(struct run *r, mc_client *c, const mc_batch *b)
{
    size_t i, nslots = 0;

    memset(r, 0, sizeof(*r));
    r->c = c;
    r->b = b;
    mc_client_abort(c);
    c->nslots = 0;
    if (grow((void **)&c->replied, &c->capreplied, b->n + 1, 1) != 0 ||
        grow((void **)&c->slots, &c->capslots, c->nservers + 1,
             sizeof(*c->slots)) != 0 ||
        grow((void **)&c->pfds, &c->cappfds, c->nservers + 1,
             sizeof(*c->pfds)) != 0)
        return -1;
    memset(c->replied, 0, b->n);
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
    r->start = mc_now();
    mc_deadline_in(&r->io,
                   b->since > 0 && b->since < r->start ? b->since : r->start,
                   c->o.io_timeout);
    return 0;
}

/* One server's part: takes a connection, encodes its stream and starts
 * sending it (the server works while the next one is encoded). */
static void slot_start(struct run *r, mc_batch_slot *sl)
{
    mc_client *c = r->c;
    mc_server *s = c->servers[sl->srv];
    char msg[200];
    int err, rc;

    /* new connections are only started here: all servers connect at
     * once, each within its own connect_timeout, in the poll loop */
    sl->conn = mc_pool_get_started(s, &c->o.pool, r->start, &err, msg,
                                   sizeof(msg));
    if (!sl->conn) {
        client_server_failed(c, s, err, msg);
        slot_failed(c, r->b, sl, err, msg);
        return;
    }
    mc_feed_init(&sl->feed, r->b, sl->srv, sl->conn->opaque, c->replied);
    sl->conn->opaque += (uint32_t)r->b->n + 1;
    sl->conn->out.len = 0;
    sl->conn->out_pos = 0;
    if (mc_feed_plan(&sl->feed, &sl->conn->out) != 0) {
        mc_pool_put(s, &c->o.pool, sl->conn, 1, 0);
        sl->conn = NULL;
        slot_failed(c, r->b, sl, MC_ERR_NOMEM, "out of memory");
        return;
    }
    if (sl->conn->idle_since != 0 &&
        !mc_first_resend_safe(sl->conn->out.data, sl->conn->out.len) &&
        mc_conn_stale(sl->conn)) {
        /* not to be sent twice: a closed pooled connection is replaced
         * before sending */
        sl->conn = client_renew(c, s, sl->conn, 0, &err, msg, sizeof(msg));
        if (!sl->conn) {
            client_server_failed(c, s, err, msg);
            slot_failed(c, r->b, sl, err, msg);
            return;
        }
    }
    if (sl->conn->connecting) {
        sl->state = SLOT_CONNECTING;
        r->connecting++;
        return;
    }
    sl->state = SLOT_WRITING;
    rc = mc_conn_write_some(sl->conn, msg, sizeof(msg));
    if (rc < 0)
        slot_broke(r, sl, -rc, msg);
    else if (rc == 1)
        sl->state = SLOT_READING;
}

/* Encodes everything and starts writing; the I/O budget starts once the
 * connections stand. */
static void batch_start_slots(struct run *r)
{
    mc_client *c = r->c;
    size_t i;

    for (i = 0; i < c->nslots; i++)
        slot_start(r, &c->slots[i]);
    mc_deadline_in(&r->connect, r->start, c->o.pool.connect_timeout);
    if (r->connecting)
        mc_deadline_in(&r->io, r->connect.end, c->o.io_timeout);
}

/* Phase 1's poll set, in slot order over the slots not done: POLLOUT for
 * a connect, and POLLIN while writing too (a server blocked on a full
 * output buffer would otherwise never drain our input). Returns its size;
 * 0 once no request is left unsent (phase 1 is over). */
static size_t batch_poll_set(struct run *r)
{
    mc_client *c = r->c;
    size_t i, np = 0, writing = 0;

    for (i = 0; i < c->nslots; i++)
        if (c->slots[i].state == SLOT_WRITING ||
            c->slots[i].state == SLOT_CONNECTING)
            writing++;
    if (!writing)
        return 0;
    for (i = 0; i < c->nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        if (sl->state == SLOT_DONE)
            continue;
        c->pfds[np].fd = sl->conn->fd;
        c->pfds[np].events =
            sl->state == SLOT_CONNECTING ? POLLOUT
            : (short)(POLLIN | (sl->state == SLOT_WRITING ? POLLOUT : 0));
        c->pfds[np].revents = 0;
        np++;
    }
    return np;
}

/* What poll reported for one slot of phase 1: a connect that ended, room
 * to write, bytes to read. */
static void slot_ready(struct run *r, mc_batch_slot *sl, short ev)
{
    char msg[200];

    if (sl->state == SLOT_CONNECTING) {
        int err;
        int ok = mc_conn_finish(sl->conn, &err, msg, sizeof(msg)) == 0;
        connected_one(r);
        if (!ok) {
            slot_failed(r->c, r->b, sl, err, msg);
            return;
        }
        sl->state = SLOT_WRITING;
        ev = POLLOUT; /* and start writing right away */
    }
    if (sl->state == SLOT_WRITING && (ev & (POLLOUT | POLLERR | POLLHUP))) {
        int w = mc_conn_write_some(sl->conn, msg, sizeof(msg));
        if (w < 0) {
            slot_broke(r, sl, -w, msg);
            return;
        }
        if (w == 1)
            sl->state = SLOT_READING;
    }
    if (ev & (POLLIN | POLLERR | POLLHUP)) {
        int n = mc_conn_read_some(sl->conn, msg, sizeof(msg));
        if (n < 0) {
            /* replies already buffered still count */
            slot_drain(r, sl);
            if (sl->state != SLOT_DONE)
                slot_broke(r, sl, -n, msg);
            return;
        }
        slot_drain(r, sl);
    }
}

/* Does the slot's connection hold received bytes that poll cannot see
 * (TLS: decrypted, or read ahead; mc_transport.events)? */
static int buffered(const mc_batch_slot *sl)
{
    mc_conn *conn = sl->conn;
    return conn && conn->tp->events && !conn->connecting &&
           conn->tp->events(conn, POLLIN) == 0;
}

/* Fails with a timeout every slot not done yet, or (connects_only) only
 * the slots still connecting. */
static void batch_time_out(struct run *r, int connects_only)
{
    mc_client *c = r->c;
    size_t i;

    for (i = 0; i < c->nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        if (connects_only ? sl->state != SLOT_CONNECTING
                          : sl->state == SLOT_DONE)
            continue;
        slot_failed(c, r->b, sl, MC_ERR_TIMEOUT,
                    connects_only ? "connect timed out" : "timed out");
        if (connects_only)
            connected_one(r);
    }
}

/* One round of phase 1: the deadlines, one poll over every socket, then
 * each slot's readiness. Returns 1 to go round again, 0 once phase 1 is
 * over (everything sent, or the I/O budget spent). */
static int batch_poll_step(struct run *r)
{
    mc_client *c = r->c;
    size_t i, np = batch_poll_set(r);
    mc_deadline until;
    double now;

    if (!np)
        return 0;
    now = mc_now();
    if (mc_deadline_over(&r->io, now)) {
        batch_time_out(r, 0);
        return 0;
    }
    if (r->connecting && mc_deadline_over(&r->connect, now)) {
        /* a connect that took its whole time fails alone */
        batch_time_out(r, 1);
        return 1; /* the poll set changed */
    }
    until = r->connecting ? mc_deadline_min(r->io, r->connect) : r->io;
    for (i = 0; i < c->nslots; i++)
        if (c->slots[i].state != SLOT_DONE && buffered(&c->slots[i]))
            until.end = now; /* bytes to take now: poll without waiting */
    if (mc_wait(&c->o.pool.wait, c->pfds, np, &until) < 0)
        return 1; /* EINTR; the deadline bounds the loop */
    /* the poll set holds the slots not done, in order; none of them is
     * done by another's events */
    np = 0;
    for (i = 0; i < c->nslots; i++) {
        mc_batch_slot *sl = &c->slots[i];
        short ev;
        if (sl->state == SLOT_DONE)
            continue;
        ev = c->pfds[np++].revents;
        if (buffered(sl))
            ev |= POLLIN;
        if (ev)
            slot_ready(r, sl, ev);
    }
    return 1;
}

/* Phase 1, while any request is still unsent: one poll loop over all
 * sockets, reading as well. */
static void batch_write_phase(struct run *r)
{
    while (batch_poll_step(r))
        ;
}

/* Reads one slot's stream to its end (or its failure). Once the deadline
 * has passed, what already arrived still counts. */
static void slot_read_all(struct run *r, mc_batch_slot *sl)
{
    char msg[200];

    while (sl->state == SLOT_READING) {
        int n;
        slot_drain(r, sl);
        if (sl->state != SLOT_READING)
            break;
        if (mc_deadline_over(&r->io, mc_now())) {
            n = mc_conn_read_some(sl->conn, msg, sizeof(msg));
            if (n == 0) {
                n = -MC_ERR_TIMEOUT;
                snprintf(msg, sizeof(msg), "timed out");
            }
        } else {
            n = mc_conn_read_budget(sl->conn, &r->io, msg, sizeof(msg));
        }
        if (n < 0) {
            slot_drain(r, sl);
            if (sl->state != SLOT_DONE)
                slot_broke(r, sl, -n, msg);
        }
    }
}

/* Phase 2, everything sent: every server has its whole batch and works on
 * it, so reading them one after the other costs no parallelism, and a
 * blocking read is one syscall where poll + read is two. Returns 1 when a
 * slot that moved to a fresh connection while being read still has
 * requests to write (back to phase 1), else 0. */
static int batch_read_phase(struct run *r)
{
    mc_client *c = r->c;
    size_t i;

    for (i = 0; i < c->nslots; i++)
        slot_read_all(r, &c->slots[i]);
    for (i = 0; i < c->nslots; i++)
        if (c->slots[i].state == SLOT_WRITING)
            return 1;
    return 0;
}

int mc_client_batch(mc_client *c, const mc_batch *b)
{
    struct run r;

    if (batch_setup(&r, c, b) != 0)
        return MC_ERR_NOMEM;
    batch_start_slots(&r);
    do
        batch_write_phase(&r);
    while (batch_read_phase(&r));
    c->nslots = 0;
    return MC_OK;
}
