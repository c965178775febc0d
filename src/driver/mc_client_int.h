/*
 * mc_client_int: what mc_client.c (servers, health, placement),
 * mc_request.c (the one-request path) and mc_batch.c (pipelined batches)
 * share. Not exported.
 */
#ifndef MC_CLIENT_INT_H
#define MC_CLIENT_INT_H

#include "mc_client.h"
#include "mc_item.h"

typedef struct mc_batch_slot mc_batch_slot;


struct mc_client {
    mc_client_opts o;
    mc_server **servers;   /* distinct servers */
    size_t nservers;
    int *entry_server;     /* selector entry -> index in servers */
    unsigned *entry_weight;
    size_t nentries;
    mc_selector *sel;
    unsigned char *alive;  /* per entry; scratch for picks around the dead */

    double probe_seconds;  /* spent probing dead servers, ever: a caller
                              takes it off its own time budget */
    unsigned long gen;     /* bumped when the server list is rebuilt: a
                              server index taken before may be stale */
    mc_server **retired;   /* removed from the list while a request held
                              one of their connections; freed once none is
                              held (or with the client) */
    size_t nretired;
    mc_conn *held;         /* connections held by requests (mc_req), linked
                              through next: closed with the client if a
                              caller never ended its request (a raise) */
    int closed;            /* mc_client_close: held connections are closed
                              when their request ends */

    /* batch scratch, reused across calls */
    mc_batch_slot *slots;  /* nslots in use (checked out until the end) */
    size_t nslots, capslots;
    unsigned char *replied;
    size_t capreplied;
    struct pollfd *pfds;
    size_t cappfds;

    mc_event *events;
    size_t nevents, capevents;
    char errmsg[256];

    /* mc_client_secure: what o.pool.tls/user/pass point to */
    mc_tls_ctx *tls;
    char *user, *pass;
};

struct mc_batch_slot {
    int srv;          /* server index */
    mc_conn *conn;
    mc_feed feed;     /* its stream of the batch (the core's checks) */
    int state;        /* SLOT_* */
};

enum { SLOT_IDLE, SLOT_CONNECTING, SLOT_WRITING, SLOT_READING, SLOT_DONE };

mc_conn *client_renew(mc_client *c, mc_server *s, mc_conn *old, int wait, int *err, char *msg, size_t msglen);
void client_server_failed(mc_client *c, mc_server *s, int err, const char *msg);
void client_server_ok(mc_client *c, mc_server *s);
int client_usable(mc_client *c, mc_server *s);
/* Frees the retired servers no request holds any more. */
void client_reap_retired(mc_client *c);

#endif
