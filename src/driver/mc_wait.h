/*
 * mc_wait: the one point where the drivers block waiting for descriptors.
 * A connect, a blocking send or receive that has to wait in poll, a batch's
 * poll loop and a probe all wait here, through a hook (mc_waiter) that the
 * client carries in its pool options (mc_pool_opts.wait) and hands down;
 * no global.
 *
 * The default (fn NULL) is mc_deadline_poll: ppoll until the deadline.
 * An event-loop driver (async mode, later) installs a hook that registers
 * the descriptors with its loop and yields the running coroutine until one
 * is ready or the deadline passes, then fills revents and returns as poll
 * would. Such a hook must never find the thread blocked in the kernel
 * instead, so a connection made while a hook is installed keeps its
 * socket non-blocking and never lets the kernel wait (kworst = 0, no
 * SO_RCVTIMEO/SO_SNDTIMEO): every wait of its sends and receives comes
 * here. That costs the one-request path a poll per request, which is the
 * event loop's business in that mode.
 *
 * A connection copies the hook when it is made (mc_conn_start) and keeps
 * it for its life: install it in the options before the client makes its
 * connections. ud belongs to whoever installs the hook and must outlive
 * them. While a hook yields, the client's call is still in progress: the
 * client must not be used by anyone else until the hook returns.
 */
#ifndef MC_WAIT_H
#define MC_WAIT_H

#include "mc_deadline.h"

/* Waits until one of fds is ready for its events or the deadline `until`
 * passes; the contract of mc_deadline_poll: fills revents, returns the
 * number of ready descriptors (> 0), 0 when the deadline passed first
 * (also when it had passed already), or -1 with errno (EINTR is the
 * hook's to retry). */
typedef int (*mc_wait_fn)(void *ud, struct pollfd *fds, nfds_t n,
                          const mc_deadline *until);

typedef struct mc_waiter {
    mc_wait_fn fn; /* NULL: mc_deadline_poll, with kernel waits allowed */
    void *ud;      /* passed to fn */
} mc_waiter;

/* Waits through w (NULL or w->fn NULL: mc_deadline_poll). */
static inline int mc_wait(const mc_waiter *w, struct pollfd *fds, nfds_t n,
                          const mc_deadline *until)
{
    if (w && w->fn)
        return w->fn(w->ud, fds, n, until);
    return mc_deadline_poll(fds, n, until);
}

#endif
