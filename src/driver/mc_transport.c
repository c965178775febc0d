#define _GNU_SOURCE /* MSG_NOSIGNAL */
#include "mc_conn.h"

#include <unistd.h>

static ssize_t plain_send(mc_conn *c, const void *p, size_t n, int flags)
{
    return send(c->fd, p, n, flags | MSG_NOSIGNAL);
}

static ssize_t plain_recv(mc_conn *c, void *p, size_t n, int flags)
{
    return recv(c->fd, p, n, flags);
}

static void plain_close(mc_conn *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
}

const mc_transport mc_transport_plain = {
    "plain", plain_send, plain_recv, plain_close, NULL, NULL
};
