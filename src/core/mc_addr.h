/*
 * mc_addr: the server address rule, without resolving anything. A server
 * is "host:port", "[v6addr]:port", "host" or a bare IPv6 address (port
 * 11211), a unix socket path ("/..."), or a name in the abstract
 * namespace ("@name"). Every driver parses with this and resolves with
 * its own means (getaddrinfo in the blocking driver, nginx's resolver or
 * a lookup at new() in the OpenResty one).
 */
#ifndef MC_ADDR_H
#define MC_ADDR_H

#include <stddef.h>

#define MC_DEFAULT_PORT 11211

enum mc_addr_kind { MC_ADDR_TCP, MC_ADDR_UNIX, MC_ADDR_ABSTRACT };

typedef struct mc_addr_spec {
    enum mc_addr_kind kind;
    char host[256]; /* bare host (IPv6 without brackets), or the path as
                       written ("@name" for the abstract namespace) */
    unsigned port;  /* 0 for unix sockets */
} mc_addr_spec;

/* 0 with *out filled, or -1 with why in err ("bad port in server address:
 * ...", ...). */
int mc_addr_split(const char *spec, mc_addr_spec *out, char *err,
                  size_t errlen);

#endif
