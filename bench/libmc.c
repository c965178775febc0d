/*
 * The peer from C: libmemcached with the binary protocol and TCP_NODELAY.
 *
 * usage: libmc.bin WORKLOAD NOPS HOST:PORT [HOST:PORT HOST:PORT]
 *   get          memcached_get
 *   set          memcached_set
 *   get_multi    memcached_mget of 100 keys + memcached_fetch_result loop
 *   set_multi    100 x memcached_set, each a round trip
 *   delete_multi 100 x memcached_delete, each a round trip
 * Why not BUFFER_REQUESTS for the multi writes: it sends quiet requests and
 * memcached_flush_buffers returns once they are written, not once they are
 * done; a delete on the next call could overtake them (we saw NOT FOUND).
 * Nothing then tells the caller that every item was stored, which is what
 * the other systems' set_multi waits for.
 * Prints the mean time per operation in nanoseconds on stdout.
 */
#define _GNU_SOURCE
#include <libmemcached/memcached.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NKEYS 100
#define VLEN 100

static char value[VLEN];
static char keys[NKEYS][32];
static size_t klens[NKEYS];
static const char *kptrs[NKEYS];

static void check(memcached_st *m, memcached_return_t rc, const char *what)
{
    if (rc != MEMCACHED_SUCCESS && rc != MEMCACHED_BUFFERED) {
        fprintf(stderr, "%s: %s\n", what, memcached_strerror(m, rc));
        exit(2);
    }
}

static memcached_st *handle(int argc, char **argv)
{
    memcached_st *m = memcached_create(NULL);
    int i;
    check(m, memcached_behavior_set(m, MEMCACHED_BEHAVIOR_BINARY_PROTOCOL, 1), "binary");
    check(m, memcached_behavior_set(m, MEMCACHED_BEHAVIOR_TCP_NODELAY, 1), "nodelay");
    for (i = 3; i < argc; i++) {
        char host[64];
        const char *colon = strrchr(argv[i], ':');
        size_t hl = (size_t)(colon - argv[i]);
        if (!colon || hl >= sizeof(host))
            exit(2);
        memcpy(host, argv[i], hl);
        host[hl] = 0;
        check(m, memcached_server_add(m, host, (in_port_t)atoi(colon + 1)), "server_add");
    }
    return m;
}

static void one_get(memcached_st *m)
{
    size_t len;
    uint32_t flags;
    memcached_return_t rc;
    char *v = memcached_get(m, keys[0], klens[0], &len, &flags, &rc);
    check(m, rc, "get");
    free(v);
}

static void one_set(memcached_st *m)
{
    check(m, memcached_set(m, keys[0], klens[0], value, VLEN, 0, 0), "set");
}

static void set_multi(memcached_st *m)
{
    int i;
    for (i = 0; i < NKEYS; i++)
        check(m, memcached_set(m, keys[i], klens[i], value, VLEN, 0, 0), "set_multi");
}

static int get_multi(memcached_st *m, memcached_result_st *res)
{
    memcached_return_t rc;
    int got = 0;
    check(m, memcached_mget(m, kptrs, klens, NKEYS), "mget");
    while (memcached_fetch_result(m, res, &rc) != NULL)
        got++;
    if (rc != MEMCACHED_END && rc != MEMCACHED_SUCCESS && rc != MEMCACHED_NOTFOUND)
        check(m, rc, "fetch_result");
    return got;
}

static void delete_multi(memcached_st *m)
{
    int i;
    for (i = 0; i < NKEYS; i++)
        check(m, memcached_delete(m, keys[i], klens[i], 0), "delete");
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
    memcached_st *m;
    memcached_result_st res;
    const char *w;
    long nops, i, warm;
    int wl;
    double t0 = 0, total = 0;
    if (argc < 4) {
        fprintf(stderr, "usage: %s WORKLOAD NOPS HOST:PORT...\n", argv[0]);
        return 2;
    }
    w = argv[1];
    nops = atol(argv[2]);
    m = handle(argc, argv);
    memcached_result_create(m, &res);
    memset(value, 'v', VLEN);
    for (i = 0; i < NKEYS; i++) {
        klens[i] = (size_t)snprintf(keys[i], sizeof(keys[i]), "bench:libmc:%ld", i);
        kptrs[i] = keys[i];
    }
    if (!strcmp(w, "get")) wl = 0;
    else if (!strcmp(w, "set")) wl = 1;
    else if (!strcmp(w, "get_multi")) wl = 2;
    else if (!strcmp(w, "set_multi")) wl = 3;
    else if (!strcmp(w, "delete_multi")) wl = 4;
    else {
        fprintf(stderr, "unknown workload %s\n", w);
        return 2;
    }

    set_multi(m);

    /* A fixed warm-up, the same as the Lua clients': the syscall counter
     * subtracts a short run from a long one and needs the extras to cancel. */
    warm = (!strcmp(w, "get") || !strcmp(w, "set")) ? 2000 : 200;
    for (i = 0; i < warm + nops; i++) {
        if (i == warm)
            t0 = now_ns(), total = 0;
        switch (wl) {
        case 0: one_get(m); break;
        case 1: one_set(m); break;
        case 2:
            if (get_multi(m, &res) != NKEYS) {
                fprintf(stderr, "get_multi: missing keys\n");
                return 2;
            }
            break;
        case 3: set_multi(m); break;
        case 4: {
            double d0;
            set_multi(m);
            d0 = now_ns();
            delete_multi(m);
            total += now_ns() - d0;
            break;
        }
        }
    }
    if (wl != 4)
        total = now_ns() - t0;
    printf("%.0f\n", total / (double)nops);
    memcached_result_free(&res);
    memcached_free(m);
    return 0;
}
