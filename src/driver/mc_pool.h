/*
 * mc_pool: one server's connections and health.
 *
 * A server owns its idle connections (at most max_idle) and counts the ones
 * handed out (at most max_conns in all, 0 = no limit). A connection that
 * timed out, failed, or still holds unread bytes must be given back with
 * mc_pool_put(..., broken = 1): it is closed, never pooled, so the next
 * caller can never read someone else's reply.
 *
 * Health: after failure_limit consecutive failures the server is dead until
 * retry_at; then the first caller to want it claims a probe
 * (mc_server_probe_due) and runs it (mc_server_probe: a connect and a NOOP
 * within probe_timeout, never the caller's request); its outcome brings
 * the server back or keeps it dead for another interval.
 */
#ifndef MC_POOL_H
#define MC_POOL_H

#include "mc_conn.h"
#include "mc_health.h"
#include "mc_tls.h"

typedef struct mc_server {
    char *name;      /* the address as the user wrote it */
    char host[256];  /* bare host or unix path, for selectors */
    unsigned port;   /* 0 for unix sockets */
    unsigned weight;
    unsigned max_conns; /* 0: the client's max_conns */
    mc_addr addr;

    mc_conn *idle;   /* LIFO list: the warmest connection first */
    unsigned nidle;
    unsigned nopen;  /* idle + handed out */

    mc_health h;     /* the core's rule (mc_health.h) */
    struct ssl_session_st *tls_session; /* TLS: the last session the server
                                           gave, offered on reconnect */
    int tls_resumed; /* the last handshake resumed that session */
} mc_server;

typedef struct mc_pool_opts {
    double connect_timeout;
    double io_timeout;
    unsigned max_conns;  /* 0: no limit */
    unsigned max_idle;
    size_t max_body;
    mc_health_opts health; /* failure_limit, retry_timeout */
    double probe_timeout; /* bound of one probe of a dead server */
    mc_waiter wait;       /* every wait of the servers' connections, of
                             their probes and of the client's batches
                             (mc_wait.h); zero: ppoll, kernel waits on */
    const mc_codec *codec; /* the protocol its connections speak (NULL:
                              binary) */
    /* What a new connection does before its first request, within
     * connect_timeout (a probe: probe_timeout): the TLS handshake, then
     * SASL PLAIN. */
    const mc_tls_ctx *tls; /* NULL: no TLS */
    const char *user;      /* NULL: no SASL */
    const char *pass;
    size_t ulen, plen;
} mc_pool_opts;

/* Allocates a server for an already parsed address. NULL on ENOMEM. */
mc_server *mc_server_new(const char *name, const mc_addr *a,
                         const char *host, unsigned port, unsigned weight);
/* Closes every idle connection and frees the server. Connections handed
 * out must have been given back first. */
void mc_server_free(mc_server *s);

/* Takes an idle connection or opens a new one (now: mc_now(), passed in
 * so that one operation reads the clock once). Returns it, or NULL with
 * *err set and a message in msg; MC_ERR_BUSY when max_conns connections
 * are all handed out (not a failure of the server). A new connection has
 * done its TLS handshake and SASL authentication (o->tls, o->user) within
 * connect_timeout: MC_ERR_TLS or MC_ERR_AUTH when they failed (the
 * connection is closed; neither is a failure of the server). */
mc_conn *mc_pool_get_slow(mc_server *s, const mc_pool_opts *o, double now,
                          int *err, char *msg, size_t msglen);
static inline mc_conn *mc_pool_get(mc_server *s, const mc_pool_opts *o,
                                   double now, int *err, char *msg,
                                   size_t msglen)
{
    mc_conn *c = s->idle;
    /* the usual case: a warm idle connection, too recent to check */
    if (c && now - c->idle_since < 1.0) {
        s->idle = c->next;
        s->nidle--;
        c->next = NULL;
        *err = MC_OK;
        return c;
    }
    return mc_pool_get_slow(s, o, now, err, msg, msglen);
}

/* The same, but a new connection is only started (c->connecting may be
 * set: wait for POLLOUT, then mc_conn_finish), so that a batch connects to
 * all its servers at once. With TLS or SASL a new connection is made
 * whole here, as mc_pool_get_slow does (its handshake waits at the wait
 * point, within connect_timeout). */
mc_conn *mc_pool_get_started(mc_server *s, const mc_pool_opts *o, double now,
                             int *err, char *msg, size_t msglen);

/* Gives a connection back: pooled when clean and there is room, else
 * closed. A pooled connection keeps at most MC_CONN_KEEP bytes of output
 * buffer and MC_READER_KEEP of reader buffer; larger ones are freed. */
void mc_pool_put(mc_server *s, const mc_pool_opts *o, mc_conn *c, int broken,
                 double now);

/* Bytes of buffer storage the idle connections hold (for tests). */
size_t mc_server_idle_bytes(const mc_server *s);

/* Closes all idle connections (e.g. after a failure, since they are likely
 * dead too). */
void mc_pool_drain(mc_server *s);

/* Health bookkeeping (mc_health, with the time read here; a failure also
 * closes the idle connections). Each returns 1 when the server changed
 * state (alive -> dead, or dead -> alive), else 0. */
int mc_server_failed(mc_server *s, const mc_pool_opts *o, const char *why);
int mc_server_succeeded(mc_server *s);

/* For a dead server whose retry time has come: claims the probe (pushes
 * retry_at forward so only one caller probes) and returns 1. */
int mc_server_probe_due(mc_server *s, const mc_pool_opts *o, double now);

/* Probes a server: connects (TLS and SASL included) and sends a NOOP,
 * within probe_timeout in all. A server that refuses the credentials or
 * the TLS handshake answered: MC_OK, the connection closed.
 * MC_OK when it answered (the connection is pooled, warm for the caller),
 * else the error with a message in msg. Health is the caller's to update
 * (mc_server_succeeded / mc_server_failed). */
int mc_server_probe(mc_server *s, const mc_pool_opts *o, char *msg,
                    size_t msglen);

#endif
