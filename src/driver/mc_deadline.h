/*
 * mc_deadline: the one answer to "how long may I wait now" (LuaSocket's
 * timeout.c is the model). Every wait of the drivers (a connect, a poll
 * over a batch, a blocking send or receive, a probe) asks a deadline; no
 * other file adds or subtracts times.
 *
 * The clock is CLOCK_MONOTONIC (a vDSO read, ~20 ns with the tsc clock
 * source): the coarse clock ticks every jiffy (4 ms at HZ=250), which made
 * a 1 ms timeout take up to 14 ms.
 *
 * Kernel waits (SO_RCVTIMEO/SO_SNDTIMEO) are counted in jiffies and their
 * timers are rounded up, by up to 1/8 of the wait past 64 jiffies (the
 * timer wheel's levels). A blocking recv saves two syscalls per request
 * (recv(EAGAIN) + poll + recv), so the drivers keep it, but set it short
 * enough (mc_kernel_block) that even rounded up it ends before the I/O
 * timeout; what is left is then waited for in ppoll(), whose hrtimer is
 * precise to tens of microseconds.
 */
#ifndef MC_DEADLINE_H
#define MC_DEADLINE_H

#include <poll.h>

/* Monotonic time in seconds, to a microsecond or better. */
double mc_now(void);

typedef struct mc_deadline {
    double end; /* mc_now() time at which waiting is over */
} mc_deadline;

/* A deadline `seconds` after `now` (a clock read the caller already has). */
static inline void mc_deadline_in(mc_deadline *d, double now, double seconds)
{
    d->end = now + seconds;
}

/* Moves the deadline to `seconds` after now when that is later (a batch
 * connection replaced midway gets a whole budget). */
static inline void mc_deadline_extend(mc_deadline *d, double now,
                                      double seconds)
{
    if (d->end < now + seconds)
        d->end = now + seconds;
}

/* The earlier of two deadlines. */
static inline mc_deadline mc_deadline_min(mc_deadline a, mc_deadline b)
{
    return a.end < b.end ? a : b;
}

/* Seconds left at `now`; <= 0 means the time is up. */
static inline double mc_deadline_left(const mc_deadline *d, double now)
{
    return d->end - now;
}

static inline int mc_deadline_over(const mc_deadline *d, double now)
{
    return now >= d->end;
}

/* poll() until the deadline, to the microsecond (ppoll): the default wait
 * point (mc_wait.h), which the drivers call through mc_wait. Returns poll's
 * count (> 0), 0 when the deadline passed first (also when it had passed
 * already: a poll with no wait then reports what is ready), or -1 with
 * errno (EINTR is retried inside). */
int mc_deadline_poll(struct pollfd *fds, nfds_t n, const mc_deadline *d);

/* For an I/O timeout t: the SO_RCVTIMEO/SO_SNDTIMEO value to set (0: none
 * worth setting, t is too short to trust the kernel's rounding) and in
 * *worst the longest the kernel may then wait (its jiffy and timer-wheel
 * rounding included), always below t. A blocking call is made only while
 * at least *worst is left of the deadline. */
double mc_kernel_block(double t, double *worst);

#endif
