#include "mc_place.h"

#include "mc_error.h"

int mc_place_key(const mc_place *p, const char *key, size_t keylen)
{
    int e;
    if (p->nentries == 0)
        return -1;
    e = mc_selector_pick(p->sel, key, keylen, NULL);
    return e < 0 ? -1 : p->entry_server[e];
}

int mc_place_around(const mc_place *p, const char *key, size_t keylen,
                    int *err)
{
    size_t i;
    int e;
    if (!p->eject) {
        *err = MC_ERR_SERVER_DEAD;
        return -1;
    }
    for (i = 0; i < p->nentries; i++)
        p->alive[i] = !p->health(p->ud, p->entry_server[i])->dead;
    e = mc_selector_pick(p->sel, key, keylen, p->alive);
    if (e < 0) {
        *err = MC_ERR_NO_SERVERS;
        return -1;
    }
    return p->entry_server[e];
}
