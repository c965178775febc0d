/*
 * mc_ring: a server list with its placement and every server's health, as
 * one object with no I/O and no clock: what a driver that moves its own
 * bytes (the OpenResty driver, through the C ABI) needs to place keys the
 * way the C client does and to route around dead servers.
 *
 * Entries are the list as given (an address listed twice counts twice);
 * servers are its distinct addresses, numbered 0.. in first-seen order, as
 * mc_client numbers them, so both put a key on the same server. Servers
 * named by a custom selector are added with mc_ring_intern, outside the
 * selector.
 */
#ifndef MC_RING_H
#define MC_RING_H

#include <stddef.h>

#include "mc_health.h"
#include "mc_place.h"
#include "mc_select.h"

typedef struct mc_ring mc_ring;

/* n entries (addrs[i], weights[i]; a weight 0 counts as 1). NULL with err
 * on a bad address or out of memory. */
mc_ring *mc_ring_new(enum mc_sel_kind kind, const char *const *addrs,
                     const unsigned *weights, size_t n,
                     const mc_health_opts *health, int eject, char *err,
                     size_t errlen);
void mc_ring_free(mc_ring *r);

size_t mc_ring_nservers(const mc_ring *r);
const char *mc_ring_name(const mc_ring *r, size_t srv);
const mc_health *mc_ring_health(const mc_ring *r, size_t srv);

/* The server of an address (added outside the selector when new), or -1
 * with err. */
int mc_ring_intern(mc_ring *r, const char *addr, char *err, size_t errlen);

/* Where key goes, health aside (pick_server); -1 without entries. */
int mc_ring_static(const mc_ring *r, const char *key, size_t len);

/* Where key goes at time now: the server, with *probe = 1 when it is dead
 * and its probe came due (claimed by this caller, who probes it and
 * reports with mc_ring_ok/mc_ring_failed, then asks mc_ring_around when it
 * stays dead); a dead server whose probe is not due is routed around here.
 * -1 with *err (MC_ERR_NO_SERVERS, MC_ERR_SERVER_DEAD). */
int mc_ring_pick(mc_ring *r, const char *key, size_t len, double now,
                 int *probe, int *err);
/* The common case of mc_ring_pick, with no side effect: a well-formed
 * key whose own server is alive gives that server; anything else (a
 * malformed key, no servers, a dead server) gives -1, and the caller asks
 * mc_ring_pick. */
int mc_ring_route(const mc_ring *r, const char *key, size_t len);
/* For a server found unusable: where its key goes instead. */
int mc_ring_around(mc_ring *r, const char *key, size_t len, int *err);

/* A server may be used at time now (custom selectors): 1 alive; 0 dead,
 * with *probe = 1 when its probe came due (claimed). */
int mc_ring_usable(mc_ring *r, int srv, double now, int *probe);

/* Health reports: failed returns 1 when the server just turned dead, ok
 * returns 1 when it was dead and is alive again. */
int mc_ring_failed(mc_ring *r, int srv, double now, const char *why);
int mc_ring_ok(mc_ring *r, int srv);
/* Found dead elsewhere (shared health) until `until`: 1 when it was
 * alive here. */
int mc_ring_dead_until(mc_ring *r, int srv, double until, const char *why);
/* The time a dead server's next probe is due (0 when alive). */
double mc_ring_retry_at(const mc_ring *r, int srv);

#endif
