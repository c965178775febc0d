/*
 * The physical limit: the least work a client can do for each benchmark
 * workload over memcached's binary protocol. Blocking sockets, TCP_NODELAY,
 * one write per request or per batch, no error handling beyond aborting.
 * Every other system in bench/ is reported as a ratio to this one.
 *
 * usage: limit.bin WORKLOAD NOPS HOST:PORT [HOST:PORT HOST:PORT]
 *   WORKLOAD: get | set | get_multi | set_multi | delete_multi
 * Prints the mean time per operation in nanoseconds on stdout.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum {
    OP_GET = 0x00, OP_SET = 0x01, OP_NOOP = 0x0a, OP_GETKQ = 0x0d,
    OP_SETQ = 0x11, OP_DELETEQ = 0x14
};

#define HDR 24
#define NKEYS 100
#define VLEN 100
#define MAXSRV 3

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void store_be16(unsigned char *p, unsigned v)
{
    p[0] = (unsigned char)(v >> 8);
    p[1] = (unsigned char)v;
}

static void store_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t load_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}

/* Appends one request to out; returns the new end. */
static unsigned char *put_req(unsigned char *out, int op, const char *key,
                              size_t klen, const char *val, size_t vlen)
{
    size_t elen = (op == OP_SET || op == OP_SETQ) ? 8 : 0;
    memset(out, 0, HDR);
    out[0] = 0x80;
    out[1] = (unsigned char)op;
    store_be16(out + 2, (unsigned)klen);
    out[4] = (unsigned char)elen;
    store_be32(out + 8, (uint32_t)(elen + klen + vlen));
    out += HDR;
    if (elen) {
        memset(out, 0, elen); /* flags 0, no expiry */
        out += elen;
    }
    memcpy(out, key, klen);
    out += klen;
    if (vlen)
        memcpy(out, val, vlen);
    return out + vlen;
}

static int connect_to(const char *hostport)
{
    char host[64];
    const char *colon = strrchr(hostport, ':');
    struct sockaddr_in sa;
    int fd, one = 1;
    if (!colon || (size_t)(colon - hostport) >= sizeof(host))
        die("address");
    memcpy(host, hostport, (size_t)(colon - hostport));
    host[colon - hostport] = 0;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)atoi(colon + 1));
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        die("inet_pton");
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        die("socket");
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        die("connect");
    return fd;
}

static void write_all(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w <= 0)
            die("write");
        p += w;
        n -= (size_t)w;
    }
}

static unsigned char rbuf[1 << 16];

/*
 * Reads replies until one with opcode `until` arrives; returns how many
 * replies came before it. Replies never straddle more than rbuf, because the
 * biggest batch (100 values of 100 bytes) is ~15 KB.
 */
static int read_until(int fd, int until)
{
    size_t have = 0, pos = 0;
    int seen = 0;
    for (;;) {
        while (have - pos >= HDR) {
            const unsigned char *h = rbuf + pos;
            size_t total = HDR + load_be32(h + 8);
            if (h[0] != 0x81)
                die("bad magic");
            if (have - pos < total)
                break;
            pos += total;
            if (h[1] == until)
                return seen;
            seen++;
        }
        if (pos == have)
            have = pos = 0;
        ssize_t r = read(fd, rbuf + have, sizeof(rbuf) - have);
        if (r <= 0)
            die("read");
        have += (size_t)r;
    }
}

static double now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e9 + ts.tv_nsec;
}

static int nsrv;
static int fds[MAXSRV];
static char value[VLEN];
static char keys[NKEYS][32];
static size_t klens[NKEYS];
/* One batch request per server, built once: building is not the client's
 * cost here, only sending and reading are. */
static unsigned char getq[MAXSRV][NKEYS * 64 + HDR];
static size_t getq_len[MAXSRV];
static unsigned char setq[MAXSRV][NKEYS * (HDR + 8 + 32 + VLEN) + HDR];
static size_t setq_len[MAXSRV];
static unsigned char delq[MAXSRV][NKEYS * 64 + HDR];
static size_t delq_len[MAXSRV];

static void build_batches(void)
{
    int s, i;
    for (s = 0; s < nsrv; s++) {
        unsigned char *g = getq[s], *w = setq[s], *d = delq[s];
        /* key i lives on server i % nsrv */
        for (i = s; i < NKEYS; i += nsrv) {
            g = put_req(g, OP_GETKQ, keys[i], klens[i], NULL, 0);
            w = put_req(w, OP_SETQ, keys[i], klens[i], value, VLEN);
            d = put_req(d, OP_DELETEQ, keys[i], klens[i], NULL, 0);
        }
        g = put_req(g, OP_NOOP, "", 0, NULL, 0);
        w = put_req(w, OP_NOOP, "", 0, NULL, 0);
        d = put_req(d, OP_NOOP, "", 0, NULL, 0);
        getq_len[s] = (size_t)(g - getq[s]);
        setq_len[s] = (size_t)(w - setq[s]);
        delq_len[s] = (size_t)(d - delq[s]);
    }
}

/* Writes every server's batch first, then reads each: the servers work in
 * parallel with our reading. */
static int send_batches(unsigned char *base, size_t stride, const size_t *lens)
{
    int s, got = 0;
    for (s = 0; s < nsrv; s++)
        write_all(fds[s], base + stride * (size_t)s, lens[s]);
    for (s = 0; s < nsrv; s++)
        got += read_until(fds[s], OP_NOOP);
    return got;
}

static void one_get(void)
{
    unsigned char req[HDR + 32];
    size_t n = (size_t)(put_req(req, OP_GET, keys[0], klens[0], NULL, 0) - req);
    write_all(fds[0], req, n);
    read_until(fds[0], OP_GET);
}

static void one_set(void)
{
    unsigned char req[HDR + 8 + 32 + VLEN];
    size_t n = (size_t)(put_req(req, OP_SET, keys[0], klens[0], value, VLEN) - req);
    write_all(fds[0], req, n);
    read_until(fds[0], OP_SET);
}

static void run(const char *w)
{
    if (!strcmp(w, "get"))
        one_get();
    else if (!strcmp(w, "set"))
        one_set();
    else if (!strcmp(w, "get_multi")) {
        if (send_batches(&getq[0][0], sizeof(getq[0]), getq_len) != NKEYS)
            die("get_multi: missing keys");
    } else if (!strcmp(w, "set_multi"))
        send_batches(&setq[0][0], sizeof(setq[0]), setq_len);
    else if (!strcmp(w, "delete_multi"))
        send_batches(&delq[0][0], sizeof(delq[0]), delq_len);
    else {
        fprintf(stderr, "unknown workload %s\n", w);
        exit(2);
    }
}

int main(int argc, char **argv)
{
    const char *w;
    long nops, i, warm;
    double total = 0, t0;
    int del;
    if (argc < 4) {
        fprintf(stderr, "usage: %s WORKLOAD NOPS HOST:PORT...\n", argv[0]);
        return 2;
    }
    w = argv[1];
    nops = atol(argv[2]);
    for (nsrv = 0; nsrv < MAXSRV && 3 + nsrv < argc; nsrv++)
        fds[nsrv] = connect_to(argv[3 + nsrv]);
    memset(value, 'v', VLEN);
    for (i = 0; i < NKEYS; i++)
        klens[i] = (size_t)snprintf(keys[i], sizeof(keys[i]), "bench:limit:%ld", i);
    build_batches();
    del = !strcmp(w, "delete_multi");

    /* The keys must exist before get and get_multi, and before each
     * delete_multi (an absent key makes DELETEQ answer). */
    send_batches(&setq[0][0], sizeof(setq[0]), setq_len);
    /* A fixed warm-up, the same as the Lua clients': the syscall counter
     * subtracts a short run from a long one and needs the extras to cancel. */
    warm = (!strcmp(w, "get") || !strcmp(w, "set")) ? 2000 : 200;
    for (i = 0; i < warm; i++) {
        if (del)
            send_batches(&setq[0][0], sizeof(setq[0]), setq_len);
        run(w);
    }
    if (del) {
        for (i = 0; i < nops; i++) {
            send_batches(&setq[0][0], sizeof(setq[0]), setq_len);
            t0 = now_ns();
            run(w);
            total += now_ns() - t0;
        }
    } else {
        t0 = now_ns();
        for (i = 0; i < nops; i++)
            run(w);
        total = now_ns() - t0;
    }
    printf("%.0f\n", total / (double)nops);
    return 0;
}
