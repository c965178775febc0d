/*
 * mc_place: where a key goes, dead servers considered. No I/O, no clock:
 * the driver asks the key's server (mc_place_key); when that server is
 * dead it asks mc_health whether a probe is due (time passed in), runs
 * the probe, and, when the server stays unusable, asks where the key goes
 * instead (mc_place_around: the next live entry, as the selector's own
 * order says, or none when eject is off).
 */
#ifndef MC_PLACE_H
#define MC_PLACE_H

#include <stddef.h>

#include "mc_health.h"
#include "mc_select.h"

typedef struct mc_place {
    const mc_selector *sel;
    const int *entry_server;  /* selector entry -> server index */
    size_t nentries;
    unsigned char *alive;     /* nentries bytes of scratch */
    int eject;                /* move a dead server's keys (1) or fail (0) */
    /* server i's health */
    const mc_health *(*health)(const void *ud, int srv);
    const void *ud;
} mc_place;

/* The key's server as the selector says, health aside; -1 when there are
 * no entries. */
int mc_place_key(const mc_place *p, const char *key, size_t keylen);

/* For a key whose server cannot be used: the server of the next live
 * entry (eject on), or -1 with *err (MC_ERR_SERVER_DEAD with eject off,
 * MC_ERR_NO_SERVERS when every entry is dead). */
int mc_place_around(const mc_place *p, const char *key, size_t keylen,
                    int *err);

#endif
