/*
 * mc_client_int: what mc_client.c (servers, health, the one-request path)
 * and mc_batch.c (pipelined batches) share. Not exported.
 */
#ifndef MC_CLIENT_INT_H
#define MC_CLIENT_INT_H

#include "mc_client.h"
#include "mc_item.h"

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

#endif
