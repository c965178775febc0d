/*
 * select_dump: prints our selector's pick for each key read from stdin (one
 * per line, '\n' stripped), one entry index per line, so that a spec can
 * diff it against ketama_ref or pin it.
 *
 *   select_dump ketama|modulo|gomemcached [-d i,j,...] server ... < keys
 *   servers: "host:port[:weight]", "[v6addr]:port[:weight]",
 *            "/unix/path[:weight]"
 *   -d marks the listed entry indexes dead (prints -1 when none is left).
 *
 * Exit status: 0 on success, 2 on a bad argument or memory shortage.
 * Test-only; link with src/core/mc_select.c.
 */
#define _POSIX_C_SOURCE 200809L
#include "mc_select.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Splits arg into e; e->host points into *copyp, which the caller frees.
 * Returns 0, or -1 when the argument is not of a known form. */
static int parse_server(const char *arg, mc_sel_entry *e, char **copyp)
{
    char *copy = strdup(arg), *p, *end;

    *copyp = copy;
    if (!copy)
        return -1;
    e->weight = 1;
    e->port = 0;
    e->host = copy;
    if (copy[0] == '/') {
        p = strrchr(copy, ':');
        if (p) {
            *p = 0;
            e->weight = (unsigned)strtoul(p + 1, NULL, 10);
        }
        return 0;
    }
    if (copy[0] == '[') {
        p = strchr(copy, ']');
        if (!p || p[1] != ':')
            return -1;
        *p = 0;
        e->host = copy + 1;
        p += 2;
    } else {
        p = strchr(copy, ':');
        if (!p)
            return -1;
        *p++ = 0;
    }
    e->port = (unsigned)strtoul(p, &end, 10);
    if (*end == ':')
        e->weight = (unsigned)strtoul(end + 1, &end, 10);
    return *end ? -1 : 0;
}

int main(int argc, char **argv)
{
    enum mc_sel_kind kind;
    mc_sel_entry *e;
    char **copies;
    unsigned char *alive = NULL;
    const char *dead = NULL;
    mc_selector *s;
    int a = 2, i, n;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;

    if (argc < 3) {
        fprintf(stderr, "usage: select_dump ketama|modulo|gomemcached "
                        "[-d i,j] server ... < keys\n");
        return 2;
    }
    if (strcmp(argv[1], "ketama") == 0)
        kind = MC_SEL_KETAMA;
    else if (strcmp(argv[1], "modulo") == 0)
        kind = MC_SEL_MODULO;
    else if (strcmp(argv[1], "gomemcached") == 0)
        kind = MC_SEL_GOMEMCACHED;
    else {
        fprintf(stderr, "select_dump: unknown kind %s\n", argv[1]);
        return 2;
    }
    if (a + 1 < argc && strcmp(argv[a], "-d") == 0) {
        dead = argv[a + 1];
        a += 2;
    }
    n = argc - a;
    e = calloc(n > 0 ? (size_t)n : 1, sizeof *e);
    alive = malloc(n > 0 ? (size_t)n : 1);
    copies = calloc(n > 0 ? (size_t)n : 1, sizeof *copies);
    if (!e || !alive || !copies)
        return 2;
    for (i = 0; i < n; i++) {
        alive[i] = 1;
        if (parse_server(argv[a + i], &e[i], &copies[i]) != 0) {
            fprintf(stderr, "select_dump: bad server %s\n", argv[a + i]);
            return 2;
        }
    }
    while (dead && *dead) {
        char *end;
        long d = strtol(dead, &end, 10);
        if (end == dead || d < 0 || d >= n) {
            fprintf(stderr, "select_dump: bad -d list\n");
            return 2;
        }
        alive[d] = 0;
        dead = *end == ',' ? end + 1 : end;
    }
    s = mc_selector_new(kind, e, (size_t)n);
    if (!s)
        return 2;
    while ((len = getline(&line, &cap, stdin)) >= 0) {
        if (len > 0 && line[len - 1] == '\n')
            line[--len] = 0;
        printf("%d\n", mc_selector_pick(s, line, (size_t)len, alive));
    }
    free(line);
    mc_selector_free(s);
    for (i = 0; i < n; i++)
        free(copies[i]);
    free(copies);
    free(e);
    free(alive);
    return 0;
}
