#include "mc_ring.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mc_addr.h"
#include "mc_error.h"
#include "mc_key.h"

typedef struct ring_server {
    char *name;
    mc_addr_spec at;
    mc_health h;
} ring_server;

struct mc_ring {
    mc_selector *sel;
    ring_server *srv;
    size_t nsrv, capsrv;
    int *entry_server;
    size_t nentries;
    unsigned char *alive;
    mc_health_opts ho;
    int eject;
};

static const mc_health *ring_health(const void *ud, int srv)
{
    return &((const mc_ring *)ud)->srv[srv].h;
}

static mc_place placement(const mc_ring *r)
{
    mc_place p;
    p.sel = r->sel;
    p.entry_server = r->entry_server;
    p.nentries = r->nentries;
    p.alive = r->alive;
    p.eject = r->eject;
    p.health = ring_health;
    p.ud = r;
    return p;
}

/* The server of an address, added when new. -1 with err. */
static int add_server(mc_ring *r, const char *addr, char *err, size_t errlen)
{
    size_t i;
    ring_server *s;
    for (i = 0; i < r->nsrv; i++)
        if (strcmp(r->srv[i].name, addr) == 0)
            return (int)i;
    if (r->nsrv == r->capsrv) {
        size_t cap = r->capsrv ? 2 * r->capsrv : 4;
        ring_server *p = realloc(r->srv, cap * sizeof(*p));
        if (!p)
            goto nomem;
        r->srv = p;
        r->capsrv = cap;
    }
    s = &r->srv[r->nsrv];
    memset(s, 0, sizeof(*s));
    if (mc_addr_split(addr, &s->at, err, errlen) != 0)
        return -1;
    s->name = malloc(strlen(addr) + 1);
    if (!s->name)
        goto nomem;
    memcpy(s->name, addr, strlen(addr) + 1);
    return (int)r->nsrv++;
nomem:
    snprintf(err, errlen, "out of memory");
    return -1;
}

mc_ring *mc_ring_new(enum mc_sel_kind kind, const char *const *addrs,
                     const unsigned *weights, size_t n,
                     const mc_health_opts *health, int eject, char *err,
                     size_t errlen)
{
    mc_ring *r = calloc(1, sizeof(*r));
    mc_sel_entry *se = calloc(n + 1, sizeof(*se));
    size_t i;
    if (!r || !se)
        goto nomem;
    r->ho = *health;
    r->eject = eject;
    r->entry_server = calloc(n + 1, sizeof(*r->entry_server));
    r->alive = calloc(n + 1, 1);
    if (!r->entry_server || !r->alive)
        goto nomem;
    for (i = 0; i < n; i++) {
        int s = add_server(r, addrs[i], err, errlen);
        if (s < 0)
            goto fail;
        r->entry_server[i] = s;
    }
    r->nentries = n;
    for (i = 0; i < n; i++) { /* names stay put from here on */
        const ring_server *s = &r->srv[r->entry_server[i]];
        se[i].host = s->at.host;
        se[i].port = s->at.port;
        se[i].weight = weights && weights[i] ? weights[i] : 1;
    }
    r->sel = mc_selector_new(kind, se, n);
    if (!r->sel)
        goto nomem;
    free(se);
    return r;
nomem:
    snprintf(err, errlen, "out of memory");
fail:
    free(se);
    mc_ring_free(r);
    return NULL;
}

void mc_ring_free(mc_ring *r)
{
    size_t i;
    if (!r)
        return;
    for (i = 0; i < r->nsrv; i++)
        free(r->srv[i].name);
    free(r->srv);
    free(r->entry_server);
    free(r->alive);
    mc_selector_free(r->sel);
    free(r);
}

size_t mc_ring_nservers(const mc_ring *r)
{
    return r->nsrv;
}

const char *mc_ring_name(const mc_ring *r, size_t srv)
{
    return srv < r->nsrv ? r->srv[srv].name : NULL;
}

const mc_health *mc_ring_health(const mc_ring *r, size_t srv)
{
    return srv < r->nsrv ? &r->srv[srv].h : NULL;
}

int mc_ring_intern(mc_ring *r, const char *addr, char *err, size_t errlen)
{
    return add_server(r, addr, err, errlen);
}

int mc_ring_static(const mc_ring *r, const char *key, size_t len)
{
    mc_place p = placement(r);
    return mc_place_key(&p, key, len);
}

int mc_ring_usable(mc_ring *r, int srv, double now, int *probe)
{
    mc_health *h = &r->srv[srv].h;
    *probe = 0;
    if (!h->dead)
        return 1;
    *probe = mc_health_probe_due(h, &r->ho, now);
    return 0;
}

int mc_ring_pick(mc_ring *r, const char *key, size_t len, double now,
                 int *probe, int *err)
{
    mc_place p = placement(r);
    int s;
    *probe = 0;
    if (r->nentries == 1 && !r->srv[r->entry_server[0]].h.dead)
        return r->entry_server[0]; /* nothing to choose: no hashing */
    s = mc_place_key(&p, key, len);
    if (s < 0) {
        *err = MC_ERR_NO_SERVERS;
        return -1;
    }
    if (mc_ring_usable(r, s, now, probe) || *probe)
        return s;
    return mc_place_around(&p, key, len, err);
}

int mc_ring_route(const mc_ring *r, const char *key, size_t len)
{
    mc_place p;
    int s;
    if (!mc_key_ok(key, len) || r->nentries == 0)
        return -1;
    if (r->nentries == 1)
        s = r->entry_server[0];
    else {
        p = placement(r);
        s = mc_place_key(&p, key, len);
    }
    return s >= 0 && !r->srv[s].h.dead ? s : -1;
}

int mc_ring_around(mc_ring *r, const char *key, size_t len, int *err)
{
    mc_place p = placement(r);
    return mc_place_around(&p, key, len, err);
}

int mc_ring_failed(mc_ring *r, int srv, double now, const char *why)
{
    if (srv < 0 || (size_t)srv >= r->nsrv)
        return 0;
    return mc_health_failed(&r->srv[srv].h, &r->ho, now, why);
}

int mc_ring_ok(mc_ring *r, int srv)
{
    mc_health *h;
    if (srv < 0 || (size_t)srv >= r->nsrv)
        return 0;
    h = &r->srv[srv].h;
    if (h->failures == 0 && !h->dead)
        return 0;
    return mc_health_succeeded(h);
}

int mc_ring_dead_until(mc_ring *r, int srv, double until, const char *why)
{
    if (srv < 0 || (size_t)srv >= r->nsrv)
        return 0;
    return mc_health_dead_until(&r->srv[srv].h, &r->ho, until, why);
}

double mc_ring_retry_at(const mc_ring *r, int srv)
{
    if (srv < 0 || (size_t)srv >= r->nsrv || !r->srv[srv].h.dead)
        return 0;
    return r->srv[srv].h.retry_at;
}
