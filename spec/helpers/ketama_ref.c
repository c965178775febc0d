/*
 * ketama_ref: the reference for MC_SEL_KETAMA. Builds libmemcached's
 * continuum with MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED and prints, for each key
 * read from stdin (one per line, '\n' stripped), the index of the server
 * libmemcached picks. Never connects: hashing needs no server.
 *
 *   ketama_ref host:port[:weight] ... < keys
 *   servers: "host:port[:weight]", "[v6addr]:port[:weight]",
 *            "/unix/path[:weight]"
 *
 * Exit status: 0 on success, 2 on a bad argument or a libmemcached error.
 * Test-only; links -lmemcached.
 */
#define _POSIX_C_SOURCE 200809L
#include <libmemcached/memcached.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct srv {
    char host[1024];
    unsigned port;
    unsigned weight;
};

/* Returns 0, or -1 when the argument is not of a known form. */
static int parse_server(const char *arg, struct srv *s)
{
    const char *p, *colon;
    size_t hl;
    char *end;

    s->weight = 0;
    s->port = 0;
    if (arg[0] == '/') {
        colon = strrchr(arg, ':');
        hl = colon ? (size_t)(colon - arg) : strlen(arg);
        if (colon)
            s->weight = (unsigned)strtoul(colon + 1, NULL, 10);
        if (hl >= sizeof s->host)
            return -1;
        memcpy(s->host, arg, hl);
        s->host[hl] = 0;
        return 0;
    }
    if (arg[0] == '[') {
        p = strchr(arg, ']');
        if (!p || p[1] != ':')
            return -1;
        hl = (size_t)(p - arg - 1);
        if (hl >= sizeof s->host)
            return -1;
        memcpy(s->host, arg + 1, hl);
        s->host[hl] = 0;
        p += 2;
    } else {
        colon = strchr(arg, ':');
        if (!colon)
            return -1;
        hl = (size_t)(colon - arg);
        if (hl >= sizeof s->host)
            return -1;
        memcpy(s->host, arg, hl);
        s->host[hl] = 0;
        p = colon + 1;
    }
    s->port = (unsigned)strtoul(p, &end, 10);
    if (*end == ':')
        s->weight = (unsigned)strtoul(end + 1, &end, 10);
    return *end ? -1 : 0;
}

int main(int argc, char **argv)
{
    memcached_st *m;
    struct srv *srv;
    int i, n = argc - 1;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;

    if (n < 1) {
        fprintf(stderr, "usage: ketama_ref host:port[:weight] ... < keys\n");
        return 2;
    }
    srv = calloc((size_t)n, sizeof *srv);
    m = memcached_create(NULL);
    if (!srv || !m)
        return 2;
    if (memcached_behavior_set(m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED, 1) !=
        MEMCACHED_SUCCESS) {
        fprintf(stderr, "ketama_ref: cannot set KETAMA_WEIGHTED\n");
        return 2;
    }
    for (i = 0; i < n; i++) {
        memcached_return_t rc;
        if (parse_server(argv[i + 1], &srv[i]) != 0) {
            fprintf(stderr, "ketama_ref: bad server %s\n", argv[i + 1]);
            return 2;
        }
        if (srv[i].host[0] == '/')
            rc = memcached_server_add_unix_socket_with_weight(
                m, srv[i].host, srv[i].weight);
        else
            rc = memcached_server_add_with_weight(
                m, srv[i].host, (in_port_t)srv[i].port, srv[i].weight);
        if (rc != MEMCACHED_SUCCESS) {
            fprintf(stderr, "ketama_ref: add %s: %s\n", argv[i + 1],
                    memcached_strerror(m, rc));
            return 2;
        }
    }
    /* Adding servers may have reset the distribution; insist again. */
    if (memcached_behavior_get(m, MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED) != 1 ||
        memcached_behavior_get(m, MEMCACHED_BEHAVIOR_DISTRIBUTION) !=
            MEMCACHED_DISTRIBUTION_CONSISTENT_WEIGHTED) {
        fprintf(stderr, "ketama_ref: distribution is not weighted ketama\n");
        return 2;
    }

    while ((len = getline(&line, &cap, stdin)) >= 0) {
        uint32_t idx;
        memcached_return_t rc;
        const memcached_instance_st *inst;
        int by_name = -1;

        if (len > 0 && line[len - 1] == '\n')
            line[--len] = 0;
        idx = memcached_generate_hash(m, line, (size_t)len);
        /* Cross-check through the public lookup: the same instance must
         * come back, named as we added it. It refuses an empty key. */
        if (len == 0) {
            printf("%u\n", idx);
            continue;
        }
        inst = memcached_server_by_key(m, line, (size_t)len, &rc);
        if (inst) {
            const char *h = memcached_server_name(inst);
            in_port_t pt = memcached_server_port(inst);
            for (i = 0; i < n; i++) {
                unsigned want = srv[i].host[0] == '/' ? 0
                                : srv[i].port ? srv[i].port : 11211;
                if (strcmp(h, srv[i].host) == 0 && pt == want) {
                    by_name = i;
                    break;
                }
            }
        }
        if (by_name < 0 || strcmp(memcached_server_name(inst),
                                  srv[idx].host) != 0) {
            fprintf(stderr, "ketama_ref: index %u and by-key lookup disagree "
                            "for key %s\n", idx, line);
            return 2;
        }
        printf("%u\n", idx);
    }
    free(line);
    free(srv);
    memcached_free(m);
    return 0;
}
