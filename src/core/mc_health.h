/*
 * mc_health: one server's health, as a rule with the time passed in (no
 * clock, no I/O). After failure_limit consecutive failures the server is
 * dead until retry_at; then one caller claims a probe (the others keep
 * routing around it), and the probe's outcome brings the server back or
 * keeps it dead for another retry interval.
 */
#ifndef MC_HEALTH_H
#define MC_HEALTH_H

typedef struct mc_health {
    unsigned failures; /* consecutive */
    int dead;
    double retry_at;   /* when dead: the time of the next probe */
    char last_error[160];
} mc_health;

typedef struct mc_health_opts {
    unsigned failure_limit; /* 0: never dead */
    double retry_timeout;
} mc_health_opts;

/* A failure at time now (why: kept as last_error). Returns 1 when the
 * server just turned dead, else 0; a dead server's next probe moves to a
 * whole retry interval after now. */
int mc_health_failed(mc_health *h, const mc_health_opts *o, double now,
                     const char *why);
/* Another party (a worker sharing health through shared memory) found the
 * server dead until `until`: dead from now, probed after `until`. Returns
 * 1 when it was alive. */
int mc_health_dead_until(mc_health *h, const mc_health_opts *o, double until,
                         const char *why);
/* A success: failures reset. Returns 1 when the server was dead (it is
 * alive again), else 0. */
int mc_health_succeeded(mc_health *h);
/* For a dead server whose retry time has come: claims the probe (moves
 * retry_at a retry interval on, so that one caller probes) and returns 1;
 * else 0. */
int mc_health_probe_due(mc_health *h, const mc_health_opts *o, double now);

/* What a failed request's error (mc_error.h) says of its server. */
enum mc_health_verdict {
    MC_VERDICT_FAILED = 0,   /* transport or protocol: counts as a failure */
    MC_VERDICT_ANSWERED = 1, /* it answered (an auth refusal, a TLS
                                disagreement): a success */
    MC_VERDICT_NONE = 2      /* not the server's doing (a value over the
                                cap, out of memory here, every connection
                                busy): no effect */
};
int mc_health_verdict(int err);

#endif
