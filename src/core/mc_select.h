/*
 * mc_select: key -> server entry. No I/O.
 *
 * A selector is built from an ordered list of entries (host, port, weight).
 * The same address may be listed twice (gomemcache gives it twice the
 * weight); the selector answers entry indexes and the caller maps entries to
 * its servers.
 *
 *   MC_SEL_MODULO       gomemcache's ServerList: crc32 (IEEE) of the key
 *                       modulo the number of entries (weight w counts as w
 *                       consecutive entries).
 *   MC_SEL_KETAMA       libmemcached's continuum with
 *                       MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED (md5 key hash),
 *                       weights included.
 *   MC_SEL_GOMEMCACHED  shaoyuan1943/gomemcached's continuum.
 */
#ifndef MC_SELECT_H
#define MC_SELECT_H

#include <stddef.h>
#include <stdint.h>

enum mc_sel_kind {
    MC_SEL_MODULO = 0,
    MC_SEL_KETAMA = 1,
    MC_SEL_GOMEMCACHED = 2
};

typedef struct mc_sel_entry {
    const char *host; /* hostname/IP as the user wrote it (no brackets for
                         IPv6), or a unix socket path */
    unsigned port;    /* 0 for a unix socket */
    unsigned weight;  /* >= 1 */
} mc_sel_entry;

typedef struct mc_selector mc_selector;

/* Builds a selector over n entries (n may be 0). The entries are copied.
 * Returns NULL when memory ran out. */
mc_selector *mc_selector_new(enum mc_sel_kind kind, const mc_sel_entry *e,
                             size_t n);
void mc_selector_free(mc_selector *s);

/* Entry index for the key, or -1 when there is no eligible entry.
 * alive may be NULL (every entry eligible); otherwise only entries with
 * alive[i] != 0 are eligible, and a key whose entry is not eligible moves:
 * on a continuum to the next eligible point clockwise, under modulo to the
 * next eligible entry after it (wrapping). Keys of eligible entries never
 * move. */
int mc_selector_pick(const mc_selector *s, const char *key, size_t keylen,
                     const unsigned char *alive);

size_t mc_selector_count(const mc_selector *s);

/* Hashes, exposed for tests and for other layers. */
uint32_t mc_crc32(const void *p, size_t n);          /* IEEE, as Go's crc32.ChecksumIEEE */
void mc_md5(const void *p, size_t n, unsigned char out[16]);

#endif
