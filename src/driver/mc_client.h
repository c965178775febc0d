/*
 * mc_client: servers, key placement and pools put together. One operation
 * (or one pipelined batch across servers) at a time; no Lua.
 *
 * Transport failures are returned as mc_err codes with a message in
 * c->errmsg ("host:port: detail"); server status codes stay in the
 * responses, for the caller to interpret per operation.
 *
 * Server state changes (dead, alive again) are queued as events for the
 * caller to report (the Lua binding calls the user's callback).
 */
#ifndef MC_CLIENT_H
#define MC_CLIENT_H

#include "mc_feed.h"
#include "mc_pool.h"
#include "mc_select.h"

struct pollfd;

typedef struct mc_client_opts {
    mc_pool_opts pool;
    double io_timeout;
    int eject;               /* move a dead server's keys (1) or fail fast (0) */
    enum mc_sel_kind selector;
} mc_client_opts;

typedef struct mc_server_spec {
    const char *addr;
    unsigned weight;
} mc_server_spec;

typedef struct mc_event {
    char server[128];
    int up;               /* 1: back alive, 0: marked dead */
    char reason[160];
} mc_event;

/* The client: servers, placement, pools, health and the events of health
 * changes. Its struct is private to the driver (mc_client_int.h); the
 * binding reads it through the calls below. */
typedef struct mc_client mc_client;

/* Fills defaults: timeouts 0.1 s, max_idle 2, no max_conns, failure_limit
 * 2, retry_timeout 1 s, probe_timeout 0.02 s (at most connect_timeout),
 * eject on, ketama. */
void mc_client_opts_default(mc_client_opts *o);

mc_client *mc_client_new(const mc_client_opts *o);
void mc_client_free(mc_client *c);

/* Makes every new connection of the client (probes too) do a TLS
 * handshake (t non-NULL, mc_tls.h) and/or authenticate with SASL PLAIN
 * (user non-NULL; mc_sasl.h) before its first request. Call once, before
 * the client makes connections. MC_OK, or MC_ERR_TLS (a CA, certificate
 * or key that cannot be loaded), MC_ERR_AUTH (credentials that cannot be
 * framed: a NUL byte, over MC_SASL_MAX bytes) or MC_ERR_NOMEM, with why in
 * err. */
int mc_client_secure(mc_client *c, const mc_tls_opts *t, const char *user,
                     size_t ulen, const char *pass, size_t plen, char *err,
                     size_t errlen);



/* Replaces the server list atomically: on any bad address returns -1 with
 * c->errmsg set and changes nothing. Servers kept from the old list keep
 * their pools and health. */
int mc_client_set_servers(mc_client *c, const mc_server_spec *s, size_t n);
/* Appends one server (an entry in the selector). */
int mc_client_add_server(mc_client *c, const mc_server_spec *s);
/* Index of a server by address, adding it outside the selector (for custom
 * selectors) when unknown. -1 with errmsg on a bad address. */
int mc_client_intern_server(mc_client *c, const char *addr);

/* Server for a key, honouring dead servers: returns the index, or -1 with
 * *err (MC_ERR_NO_SERVERS, MC_ERR_SERVER_DEAD) and errmsg. A dead server
 * whose retry time has come is probed here first (a connect and a NOOP,
 * within probe_timeout): if it answers it is alive again and takes the
 * key; if not, the key goes where it would for any dead server (the next
 * live one with eject, else MC_ERR_SERVER_DEAD). The caller's request is
 * never the probe. */
int mc_client_pick(mc_client *c, const char *key, size_t keylen, int *err);
/* The one server every key goes to (a single live entry), or -1. */
int mc_client_single(const mc_client *c);
/* Where the key goes when every server is healthy (no side effects). */
int mc_client_pick_static(const mc_client *c, const char *key, size_t keylen);

/* For a server chosen outside the selector: 1 when it may be used now (alive,
 * or dead with a probe due that this call ran and that it answered), else
 * 0 with *err. */
int mc_client_usable(mc_client *c, int srv, int *err);

/* ---- one request, one server ----
 * A request is the caller's (mc_req, usually on its stack): any number may
 * be in flight on one client at once, each on its own connection, so a
 * call made while another is between its steps (from Lua code run by the
 * binding) is just another call.
 * begin: takes a connection to server srv and returns the buffer to append
 * exactly one request to, with the opaque it must carry in q->opaque (NULL
 * with *err and q->err on failure; nothing is held then).
 * exec: sends it and reads the matching response (valid until the next
 * call on q). next: reads a further response of the same request (STAT).
 * end: gives the connection back; end_broken closes it instead (the
 * caller gave up on it). Any failure closes the connection and counts
 * against the server; end is then a no-op. A reply with an authentication
 * status (0x20/0x21) is returned as a reply, for the caller to map; the
 * server closes such a connection, so end closes it too, and it is no
 * failure of the server.
 * A request that fails on a pooled connection before any reply byte
 * (closed, reset, EPIPE) is resent once on a fresh connection when it is
 * safe to send twice (see mc_client.c, "sending a request again"); other
 * requests check a pooled connection before they are sent on it. Only a
 * failure that remains counts against the server. Batches do the same per
 * server. */
typedef struct mc_req {
    mc_server *srv;        /* stays valid until end, even if the server
                              leaves the list meanwhile */
    mc_conn *conn;         /* NULL once ended or failed */
    const mc_codec *codec; /* frames the request (mc_codec.h) */
    uint32_t opaque;
    uint8_t opcode;
    int close;             /* not to be pooled (authentication refused) */
    double start;          /* the clock read once per request */
    mc_deadline deadline;  /* of its I/O */
    char err[256];         /* "host:port: detail" of a failure */
} mc_req;

mc_buf *mc_client_begin(mc_client *c, mc_req *q, int srv, int *err);
/* The protocol of the client's connections, for a caller that frames
 * batch requests. */
const mc_codec *mc_client_codec(const mc_client *c);

/* The address of a begun request's server. */
static inline const char *mc_req_server(const mc_req *q)
{
    return q->srv->name;
}
int mc_client_exec(mc_client *c, mc_req *q, mc_resp *r);
/* exec for a request whose reply names its key (GETK, GATK): a reply that
 * names another key, or a hit that names none, fails like a reply under
 * the wrong opaque (MC_ERR_PROTOCOL, the connection closed, the server
 * counted as failing). key (the request's) must stay valid for the call. */
int mc_client_exec_key(mc_client *c, mc_req *q, mc_resp *r, const char *key,
                       size_t keylen);
int mc_client_next(mc_client *c, mc_req *q, mc_resp *r);
void mc_client_end(mc_client *c, mc_req *q);
void mc_client_end_broken(mc_client *c, mc_req *q);

/* ---- a pipelined batch over several servers ----
 * Request i goes to server[i] (-1: skip it). For every server involved, all
 * its requests plus one NOOP are written; all servers are written before
 * any is waited on, and read in one poll loop. */
/* (mc_batch: see mc_feed.h) */

/* Returns MC_OK once every server finished or failed (per-request failures
 * go through fail), or MC_ERR_NOMEM. A server that answers with an
 * authentication status fails all its requests with MC_ERR_AUTH (its
 * connection is closed; the server is not counted as failing). */
int mc_client_batch(mc_client *c, const mc_batch *b);

/* Closes whatever an interrupted batch left checked out (batches run
 * without Lua and end before they return; this is for safety). Requests
 * (mc_req) are their callers'. */
void mc_client_abort(mc_client *c);

/* close(): closes every idle connection now, and each held one when its
 * request ends; the client stays valid (its memory is freed by
 * mc_client_free) but should not be given new work. */
void mc_client_close(mc_client *c);

/* Bytes of buffer storage held by idle (pooled) connections, for tests
 * that check a large reply is not pinned. */
size_t mc_client_idle_bytes(const mc_client *c);

/* Server events (dead, alive again), oldest first: take_event moves the
 * oldest into *e and returns 1, or returns 0 when none is queued. A call
 * made while events are reported may queue more. */
int mc_client_has_events(const mc_client *c);
int mc_client_take_event(mc_client *c, mc_event *e);

/* ---- reading the client ---- */

/* The message of the last failure of placement, set_servers, add_server
 * or intern_server ("host:port: detail"); a request's own failure is in
 * its mc_req. set_errmsg lets a caller's placement (a custom selector)
 * say why it gave no server. */
const char *mc_client_errmsg(const mc_client *c);
void mc_client_set_errmsg(mc_client *c, const char *msg);

/* Seconds spent probing dead servers since the client was made: a caller
 * that counts a batch's I/O budget from its own start (mc_batch.since)
 * takes the probes its preparation ran off it. */
double mc_client_probe_seconds(const mc_client *c);

/* Bumped each time the server list is rebuilt: a server index taken
 * before a change may name another server after it. */
unsigned long mc_client_gen(const mc_client *c);

size_t mc_client_nservers(const mc_client *c);
const char *mc_client_server_name(const mc_client *c, size_t i);

typedef struct mc_server_info {
    const char *name;       /* the address as the user wrote it */
    int alive;
    unsigned failures;      /* consecutive */
    unsigned connections;   /* open: idle + held */
    const char *last_error; /* "" when none */
    int tls;                /* the client speaks TLS to its servers */
    int tls_resumed;        /* its last TLS handshake resumed a session */
} mc_server_info;
void mc_client_server_info(const mc_client *c, size_t i, mc_server_info *out);
/* Caps one server's connections (0: the client's max_conns). */
void mc_client_set_max_conns(mc_client *c, size_t i, unsigned n);

#endif
