/* mc_health: one server's health, time passed in (see mc_health.h). */
#include "mc_health.h"

#include <stdio.h>

#include "mc_error.h"

int mc_health_failed(mc_health *h, const mc_health_opts *o, double now,
                     const char *why)
{
    snprintf(h->last_error, sizeof(h->last_error), "%s", why ? why : "");
    h->failures++;
    if (h->dead) {
        h->retry_at = now + o->retry_timeout;
        return 0;
    }
    if (o->failure_limit && h->failures >= o->failure_limit) {
        h->dead = 1;
        h->retry_at = now + o->retry_timeout;
        return 1;
    }
    return 0;
}

int mc_health_succeeded(mc_health *h)
{
    h->failures = 0;
    if (h->dead) {
        h->dead = 0;
        return 1;
    }
    return 0;
}

int mc_health_probe_due(mc_health *h, const mc_health_opts *o, double now)
{
    if (!h->dead || now < h->retry_at)
        return 0;
    h->retry_at = now + o->retry_timeout;
    return 1;
}

int mc_health_dead_until(mc_health *h, const mc_health_opts *o, double until,
                         const char *why)
{
    int was_alive = !h->dead;
    snprintf(h->last_error, sizeof(h->last_error), "%s", why ? why : "");
    if (h->failures < o->failure_limit)
        h->failures = o->failure_limit;
    h->dead = 1;
    if (was_alive || until > h->retry_at)
        h->retry_at = until;
    return was_alive;
}

int mc_health_verdict(int err)
{
    switch (err) {
    case MC_ERR_AUTH:
    case MC_ERR_TLS:
        /* it answered; the two ends disagree (credentials, certificates):
         * every call says why, and ejecting it would hide that */
        return MC_VERDICT_ANSWERED;
    case MC_ERR_TOO_LARGE:
    case MC_ERR_NOMEM:
    case MC_ERR_BUSY:
        return MC_VERDICT_NONE;
    default:
        return MC_VERDICT_FAILED;
    }
}
