#define _GNU_SOURCE /* ppoll */
#include "mc_deadline.h"

#include <errno.h>
#include <time.h>

double mc_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int mc_deadline_poll(struct pollfd *fds, nfds_t n, const mc_deadline *d)
{
    for (;;) {
        struct timespec ts;
        double left = mc_deadline_left(d, mc_now());
        int rc;
        if (left < 0)
            left = 0;
        ts.tv_sec = (time_t)left;
        ts.tv_nsec = (long)((left - (double)ts.tv_sec) * 1e9);
        if (ts.tv_nsec > 999999999)
            ts.tv_nsec = 999999999;
        rc = ppoll(fds, n, &ts, NULL);
        if (rc >= 0 || errno != EINTR)
            return rc;
    }
}

/* The kernel's tick: the coarse clock advances once per jiffy, so its
 * resolution is 1/HZ. Read once. */
static double jiffy(void)
{
    static double j;
    if (j == 0) {
        struct timespec ts;
        double v = 0.01; /* HZ=100, the coarsest common setting */
        if (clock_getres(CLOCK_MONOTONIC_COARSE, &ts) == 0) {
            double r = (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
            if (r > 0 && r <= 0.01)
                v = r;
        }
        j = v;
    }
    return j;
}

double mc_kernel_block(double t, double *worst)
{
    double tick = jiffy();
    /* the kernel waits k rounded up to whole jiffies, plus up to a jiffy
     * until the tick, plus the timer wheel's granularity (at most k/8);
     * keep a further half millisecond for the syscalls around it */
    double k = (t - 2 * tick - 0.0005) * 8.0 / 9.0;
    if (k < tick) {
        *worst = 0;
        return 0;
    }
    *worst = k + k / 8.0 + 2 * tick;
    return k;
}
