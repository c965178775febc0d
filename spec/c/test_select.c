/*
 * test_select: checks src/core/mc_select.c. Exit status 0 when every check
 * passed; prints "N passed, M failed".
 *
 *   test_select path/to/ketama_ref
 *
 * The ketama_ref helper (spec/helpers/ketama_ref.c, built against
 * libmemcached) is the reference for MC_SEL_KETAMA; without it those checks
 * fail rather than pass silently. Expected crc32/md5 values come from
 * python3 zlib.crc32 and md5sum; gomemcached pins from a line-by-line
 * python3 transcription of its Go code (consistency_hash.go, cluster.go).
 */
#define _POSIX_C_SOURCE 200809L
#include "mc_select.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "check.h"

#define NKEYS 10000
static char keys[NKEYS][48];
static size_t keylen[NKEYS];

/* Deterministic keys: half "key:N", half pseudo-random printable strings. */
static void make_keys(void)
{
    static const char al[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:.-";
    uint32_t r = 12345;
    int i;
    for (i = 0; i < NKEYS; i++) {
        if (i % 2 == 0) {
            keylen[i] = (size_t)sprintf(keys[i], "key:%d", i);
        } else {
            size_t n, j;
            r = r * 1103515245u + 12345u;
            n = 1 + (r >> 16) % 40;
            for (j = 0; j < n; j++) {
                r = r * 1103515245u + 12345u;
                keys[i][j] = al[(r >> 16) % (sizeof al - 1)];
            }
            keys[i][n] = 0;
            keylen[i] = n;
        }
    }
}

static int pick(const mc_selector *s, const char *k, const unsigned char *al)
{
    return mc_selector_pick(s, k, strlen(k), al);
}

/* ------------------------------------------------------------- hashes */

static void hex16(const unsigned char d[16], char out[33])
{
    int i;
    for (i = 0; i < 16; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void test_hashes(void)
{
    static const struct { const char *s; uint32_t crc; } cv[] = {
        { "", 0x00000000u },
        { "a", 0xe8b7be43u },
        { "abc", 0x352441c2u },
        { "123456789", 0xcbf43926u },
        { "The quick brown fox jumps over the lazy dog", 0x414fa339u },
        { "foo", 0x8c736521u },
    };
    static const struct { const char *s; const char *md5; } mv[] = {
        { "", "d41d8cd98f00b204e9800998ecf8427e" },
        { "a", "0cc175b9c0f1b6a831c399e269772661" },
        { "abc", "900150983cd24fb0d6963f7d28e17f72" },
        { "message digest", "f96b697d7cb7938d525a2f31aaf161d0" },
        { "abcdefghijklmnopqrstuvwxyz", "c3fcd3d76192e4007dfb496cca67e13b" },
    };
    /* bytes (i*31+7) & 0xff, i = 0..len-1, digests from md5sum */
    static const struct { size_t len; const char *md5; } lv[] = {
        { 0, "d41d8cd98f00b204e9800998ecf8427e" },
        { 1, "89e74e640b8c46257a29de0616794d5d" },
        { 55, "c9e512626618c9980ef21a96597af94c" },
        { 56, "ecde7caa08e9f5657c863df107cac60a" },
        { 57, "b17b1a018dd6a4d1edda8aca15f17846" },
        { 63, "2f0301069e1c40af7f6c8f843b1b13f2" },
        { 64, "b6bf87c24b1bc334e2541387a92b981b" },
        { 65, "f168246f08b6134d66bd2a10343fa9f1" },
        { 119, "d5dc3d8264de3aa24dee105910ee27fe" },
        { 120, "bcc139b3848923904860d1eefd6e5923" },
        { 127, "27670172396247fa5f68637f13f8933d" },
        { 128, "3e85b70ffc8df5c735ecf2a8f14f1bee" },
        { 129, "e45ecac9930fe93de302f98ba673ba36" },
        { 1000, "2b1e78d5765de9e10495a01412a1cf22" },
        { 1048576, "3f2c8bd9cfde6550fdff4b36617c3261" },
    };
    unsigned char buf256[256], d[16];
    unsigned char *big;
    char hex[33];
    size_t i;

    for (i = 0; i < sizeof cv / sizeof cv[0]; i++)
        CHECK(mc_crc32(cv[i].s, strlen(cv[i].s)) == cv[i].crc,
              "crc32(\"%s\") = %08x", cv[i].s,
              (unsigned)mc_crc32(cv[i].s, strlen(cv[i].s)));
    for (i = 0; i < 256; i++)
        buf256[i] = (unsigned char)i;
    CHECK(mc_crc32(buf256, 256) == 0x29058c73u, "crc32(0..255)");

    for (i = 0; i < sizeof mv / sizeof mv[0]; i++) {
        mc_md5(mv[i].s, strlen(mv[i].s), d);
        hex16(d, hex);
        CHECK(strcmp(hex, mv[i].md5) == 0, "md5(\"%s\") = %s", mv[i].s, hex);
    }
    big = malloc(1048576);
    if (!big) {
        CHECK(0, "out of memory");
        return;
    }
    for (i = 0; i < 1048576; i++)
        big[i] = (unsigned char)((i * 31 + 7) & 0xff);
    for (i = 0; i < sizeof lv / sizeof lv[0]; i++) {
        mc_md5(big, lv[i].len, d);
        hex16(d, hex);
        CHECK(strcmp(hex, lv[i].md5) == 0, "md5 of %zu bytes = %s",
              lv[i].len, hex);
    }
    free(big);
}

/* ------------------------------------------------------------- modulo */

static void test_modulo(void)
{
    static const mc_sel_entry three[] = {
        { "10.0.0.1", 11211, 1 }, { "10.0.0.2", 11211, 1 },
        { "10.0.0.3", 11211, 1 } };
    static const mc_sel_entry w123[] = {
        { "10.0.0.1", 11211, 1 }, { "10.0.0.2", 11211, 2 },
        { "10.0.0.3", 11211, 3 } };
    /* the same address twice = twice the weight, as in gomemcache */
    static const mc_sel_entry dup[] = {
        { "10.0.0.1", 11211, 1 }, { "10.0.0.2", 11211, 1 },
        { "10.0.0.2", 11211, 1 }, { "10.0.0.3", 11211, 1 },
        { "10.0.0.3", 11211, 1 }, { "10.0.0.3", 11211, 1 } };
    /* expected: zlib.crc32(key) % 3, and for weights 1,2,3 slot = crc % 6
     * with slots 0 | 1 2 | 3 4 5 */
    static const struct { const char *k; int m3, w; } pin[] = {
        { "foo", 2, 2 },    { "bar", 2, 1 },    { "baz", 0, 0 },
        { "hello", 1, 2 },  { "user:1", 0, 0 }, { "user:2", 1, 2 },
        { "session:abc", 1, 1 }, { "x", 0, 2 }, { "", 0, 0 },
    };
    static const int dup_of[] = { 0, 1, 1, 2, 2, 2 };
    mc_sel_entry one = { "10.0.0.9", 11211, 7 };
    char longkey[258];
    mc_selector *s3 = mc_selector_new(MC_SEL_MODULO, three, 3);
    mc_selector *sw = mc_selector_new(MC_SEL_MODULO, w123, 3);
    mc_selector *sd = mc_selector_new(MC_SEL_MODULO, dup, 6);
    mc_selector *s1 = mc_selector_new(MC_SEL_MODULO, &one, 1);
    mc_selector *s0 = mc_selector_new(MC_SEL_MODULO, NULL, 0);
    size_t i;
    int bad = 0;

    CHECK(s3 && sw && sd && s1 && s0, "mc_selector_new");
    if (!(s3 && sw && sd && s1 && s0))
        return;
    for (i = 0; i < sizeof pin / sizeof pin[0]; i++) {
        CHECK(pick(s3, pin[i].k, NULL) == pin[i].m3, "modulo3(%s) = %d",
              pin[i].k, pick(s3, pin[i].k, NULL));
        CHECK(pick(sw, pin[i].k, NULL) == pin[i].w, "w123(%s) = %d",
              pin[i].k, pick(sw, pin[i].k, NULL));
    }
    for (i = 0; i < NKEYS; i++) {
        int a = mc_selector_pick(sw, keys[i], keylen[i], NULL);
        int b = mc_selector_pick(sd, keys[i], keylen[i], NULL);
        if (b < 0 || dup_of[b] != a)
            bad++;
    }
    CHECK(bad == 0, "weight 1,2,3 vs listed 1,2,3 times: %d keys differ", bad);

    /* gomemcache hashes at most 256 bytes of the key: crc32('a'*256) % 3
     * is 0, crc32('a'*257) % 3 would be 1. */
    memset(longkey, 'a', 257);
    longkey[257] = 0;
    CHECK(pick(s3, longkey, NULL) == 0, "257-byte key uses 256 bytes");

    CHECK(pick(s1, "anything", NULL) == 0, "one entry -> 0");
    CHECK(mc_selector_pick(s1, NULL, 0, NULL) == 0, "one entry, no key");
    CHECK(pick(s0, "anything", NULL) == -1, "no entries -> -1");
    CHECK(mc_selector_count(s3) == 3 && mc_selector_count(s0) == 0, "count");

    mc_selector_free(s3);
    mc_selector_free(sw);
    mc_selector_free(sd);
    mc_selector_free(s1);
    mc_selector_free(s0);
}

/* ------------------------------------------------------------- ketama */

static const mc_sel_entry k3[] = {
    { "127.0.0.1", 11211, 1 }, { "127.0.0.1", 11212, 2 },
    { "10.0.0.5", 11211, 1 } };
static const char *const k3_args[] = {
    "127.0.0.1:11211:1", "127.0.0.1:11212:2", "10.0.0.5:11211:1" };

static const mc_sel_entry k10[] = {
    { "10.0.1.1", 11211, 1 }, { "10.0.1.2", 11211, 2 },
    { "10.0.1.3", 11212, 3 }, { "10.0.1.4", 11211, 1 },
    { "cache5.example.com", 11211, 1 }, { "10.0.1.6", 20000, 5 },
    { "10.0.1.7", 11211, 1 }, { "10.0.1.8", 11211, 2 },
    { "::1", 11211, 1 }, { "/tmp/mc.sock", 0, 1 } };
static const char *const k10_args[] = {
    "10.0.1.1:11211:1", "10.0.1.2:11211:2", "10.0.1.3:11212:3",
    "10.0.1.4:11211:1", "cache5.example.com:11211:1", "10.0.1.6:20000:5",
    "10.0.1.7:11211:1", "10.0.1.8:11211:2", "[::1]:11211:1",
    "/tmp/mc.sock:1" };

static const mc_sel_entry k3u[] = {
    { "10.0.0.1", 11211, 1 }, { "10.0.0.2", 11211, 1 },
    { "10.0.0.3", 11211, 1 } };
static const char *const k3u_args[] = {
    "10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211" };

/* Runs the reference over all keys; returns 0 and fills out[], or -1. */
static int run_ref(const char *ref, const char *const *args, int n,
                   int *out)
{
    char path[] = "/tmp/test_select_keysXXXXXX";
    char cmd[4096];
    size_t off;
    int fd, i, rc = 0;
    FILE *f, *p;

    fd = mkstemp(path);
    if (fd < 0)
        return -1;
    f = fdopen(fd, "w");
    if (!f) {
        close(fd);
        unlink(path);
        return -1;
    }
    for (i = 0; i < NKEYS; i++)
        fprintf(f, "%s\n", keys[i]);
    fclose(f);

    off = (size_t)snprintf(cmd, sizeof cmd, "'%s'", ref);
    for (i = 0; i < n; i++)
        off += (size_t)snprintf(cmd + off, sizeof cmd - off, " '%s'", args[i]);
    snprintf(cmd + off, sizeof cmd - off, " < '%s'", path);
    p = popen(cmd, "r");
    if (!p) {
        unlink(path);
        return -1;
    }
    for (i = 0; i < NKEYS; i++)
        if (fscanf(p, "%d", &out[i]) != 1) {
            rc = -1;
            break;
        }
    if (pclose(p) != 0)
        rc = -1;
    unlink(path);
    return rc;
}

static void compare_ref(const char *ref, const char *name,
                        const mc_sel_entry *e, const char *const *args, int n)
{
    static int want[NKEYS];
    mc_selector *s = mc_selector_new(MC_SEL_KETAMA, e, (size_t)n);
    int i, diff = 0, first = -1;

    if (!ref) {
        CHECK(0, "ketama vs libmemcached (%s): no ketama_ref given", name);
        mc_selector_free(s);
        return;
    }
    if (!s || run_ref(ref, args, n, want) != 0) {
        CHECK(0, "ketama vs libmemcached (%s): could not run %s", name, ref);
        mc_selector_free(s);
        return;
    }
    for (i = 0; i < NKEYS; i++)
        if (mc_selector_pick(s, keys[i], keylen[i], NULL) != want[i]) {
            if (first < 0)
                first = i;
            diff++;
        }
    printf("ketama vs libmemcached, %s: %d of %d keys differ\n", name, diff,
           NKEYS);
    CHECK(diff == 0, "ketama %s: %d differences, first key %s", name, diff,
          first >= 0 ? keys[first] : "");
    mc_selector_free(s);
}

static void test_ketama(const char *ref)
{
    /* pinned from ketama_ref (libmemcached 1.1.4) */
    static const struct { const char *k; int w, u; } pin[] = {
        { "foo", 0, 0 },    { "bar", 1, 1 },    { "baz", 2, 1 },
        { "hello", 0, 0 },  { "user:1", 1, 0 }, { "user:2", 0, 2 },
        { "session:abc", 0, 0 }, { "x", 2, 2 }, { "", 0, 2 },
    };
    static const mc_sel_entry k3plain[] = {
        { "127.0.0.1", 11211, 1 }, { "127.0.0.1", 11212, 1 },
        { "127.0.0.1", 11213, 1 } };
    mc_selector *sw = mc_selector_new(MC_SEL_KETAMA, k3, 3);
    mc_selector *su = mc_selector_new(MC_SEL_KETAMA, k3plain, 3);
    mc_sel_entry eleven[11];
    mc_selector *s10, *s11;
    char hosts[11][16];
    size_t i;
    int moved = 0, off = 0;
    double pct;

    CHECK(sw && su, "mc_selector_new ketama");
    if (!(sw && su))
        return;
    for (i = 0; i < sizeof pin / sizeof pin[0]; i++) {
        CHECK(pick(sw, pin[i].k, NULL) == pin[i].w, "ketama w(%s) = %d",
              pin[i].k, pick(sw, pin[i].k, NULL));
        CHECK(pick(su, pin[i].k, NULL) == pin[i].u, "ketama u(%s) = %d",
              pin[i].k, pick(su, pin[i].k, NULL));
    }
    mc_selector_free(sw);
    mc_selector_free(su);

    compare_ref(ref, "3 equal servers", k3u, k3u_args, 3);
    compare_ref(ref, "3 servers, weights 1,2,1, ports 11211/11212", k3,
                k3_args, 3);
    compare_ref(ref, "10 servers, weighted, v6, unix socket", k10, k10_args,
                10);
    /* libmemcached's float arithmetic gives 25 equal servers 156 points
     * each, not 160; a plain integer share would differ here. */
    {
        static char h25[25][16], a25[25][24];
        static const char *args25[25];
        static mc_sel_entry e25[25];
        for (i = 0; i < 25; i++) {
            sprintf(h25[i], "10.9.0.%u", (unsigned)i + 1);
            sprintf(a25[i], "%s:11211", h25[i]);
            args25[i] = a25[i];
            e25[i].host = h25[i];
            e25[i].port = 11211;
            e25[i].weight = 1;
        }
        compare_ref(ref, "25 equal servers", e25, args25, 25);
    }

    /* adding an 11th server moves about 1/11 of the keys */
    for (i = 0; i < 11; i++) {
        sprintf(hosts[i], "10.1.0.%u", (unsigned)i + 1);
        eleven[i].host = hosts[i];
        eleven[i].port = 11211;
        eleven[i].weight = 1;
    }
    s10 = mc_selector_new(MC_SEL_KETAMA, eleven, 10);
    s11 = mc_selector_new(MC_SEL_KETAMA, eleven, 11);
    CHECK(s10 && s11, "mc_selector_new 10/11");
    if (!(s10 && s11))
        return;
    for (i = 0; i < NKEYS; i++) {
        int a = mc_selector_pick(s10, keys[i], keylen[i], NULL);
        int b = mc_selector_pick(s11, keys[i], keylen[i], NULL);
        if (a != b) {
            moved++;
            if (b != 10)
                off++; /* moved, but not to the new server */
        }
    }
    pct = 100.0 * moved / NKEYS;
    printf("ketama 10 -> 11 servers: %.2f%% of keys moved (bound %.2f%%)\n",
           pct, 100.0 / 11 + 2.0);
    CHECK(pct <= 100.0 / 11 + 2.0, "moved %.2f%%", pct);
    CHECK(off == 0, "%d keys moved between old servers", off);
    mc_selector_free(s10);
    mc_selector_free(s11);
}

/* -------------------------------------------------------- gomemcached */

static void test_gomemcached(void)
{
    static const mc_sel_entry g3[] = {
        { "127.0.0.1", 11211, 1 }, { "127.0.0.1", 11212, 1 },
        { "127.0.0.1", 11213, 1 } };
    /* Pinned from a transcription of gomemcached's Go code (md5 of
     * "addr#i", i < 40, four LE words each; crc32 key hash). The ring's
     * first point is 0x00ac6a11 (127.0.0.1:11213), the second 0x01a3e684
     * (127.0.0.1:11211), the last 0xffd495cd (127.0.0.1:11211).
     * q630/q861/q886 hash below the first point: gomemcached's search
     * gives them the second point (entry 0), not the first (entry 2).
     * w2947/w3774 hash above the last point and wrap to the first. */
    static const struct { const char *k; int want; } pin[] = {
        { "foo", 0 },   { "bar", 1 },    { "baz", 0 },   { "hello", 2 },
        { "user:1", 1 }, { "user:2", 0 }, { "session:abc", 0 },
        { "x", 0 },     { "", 0 },
        { "q630", 0 },  { "q861", 0 },   { "q886", 0 },
        { "w2947", 2 }, { "w3774", 2 },
    };
    mc_selector *s = mc_selector_new(MC_SEL_GOMEMCACHED, g3, 3);
    size_t i;

    CHECK(s != NULL, "mc_selector_new gomemcached");
    if (!s)
        return;
    for (i = 0; i < sizeof pin / sizeof pin[0]; i++)
        CHECK(pick(s, pin[i].k, NULL) == pin[i].want, "gomemcached(%s) = %d",
              pin[i].k, pick(s, pin[i].k, NULL));
    mc_selector_free(s);
}

/* --------------------------------------------------------- dead hosts */

static void test_alive(void)
{
    static const enum mc_sel_kind kinds[] = {
        MC_SEL_MODULO, MC_SEL_KETAMA, MC_SEL_GOMEMCACHED };
    static const char *const kname[] = { "modulo", "ketama", "gomemcached" };
    mc_sel_entry e[10], live[7];
    char hosts[10][16];
    unsigned char alive[10], none[10];
    int map[7];
    size_t i, k;

    for (i = 0; i < 10; i++) {
        sprintf(hosts[i], "10.2.0.%u", (unsigned)i + 1);
        e[i].host = hosts[i];
        e[i].port = 11211;
        e[i].weight = 1;
        alive[i] = 1;
        none[i] = 0;
    }
    alive[2] = alive[3] = alive[7] = 0;
    for (i = 0, k = 0; i < 10; i++)
        if (alive[i]) {
            live[k] = e[i];
            map[k++] = (int)i;
        }

    for (k = 0; k < 3; k++) {
        mc_selector *s = mc_selector_new(kinds[k], e, 10);
        mc_selector *r = mc_selector_new(kinds[k], live, 7);
        int stay = 0, moved_ok = 0, bad = 0, asreduced = 0, ndead = 0;
        if (!s || !r) {
            CHECK(0, "mc_selector_new");
            return;
        }
        for (i = 0; i < NKEYS; i++) {
            int p0 = mc_selector_pick(s, keys[i], keylen[i], NULL);
            int p1 = mc_selector_pick(s, keys[i], keylen[i], alive);
            if (alive[p0]) {
                if (p1 == p0)
                    stay++;
                else
                    bad++;
                continue;
            }
            ndead++;
            if (p1 < 0 || !alive[p1]) {
                bad++;
                continue;
            }
            if (kinds[k] == MC_SEL_MODULO) {
                int j = (p0 + 1) % 10;
                while (!alive[j])
                    j = (j + 1) % 10;
                if (p1 == j)
                    moved_ok++;
                else
                    bad++;
            } else {
                moved_ok++;
                /* Equal weights: the other servers keep their points when
                 * one is removed, so walking clockwise past the dead ones
                 * must equal the continuum built without them. */
                if (map[mc_selector_pick(r, keys[i], keylen[i], NULL)] == p1)
                    asreduced++;
            }
        }
        printf("%s with 3 of 10 dead: %d keys stayed, %d moved", kname[k],
               stay, moved_ok);
        if (kinds[k] != MC_SEL_MODULO)
            printf(" (%d as in the ring without the dead)", asreduced);
        printf("\n");
        CHECK(bad == 0, "%s: %d keys broke the alive rules", kname[k], bad);
        if (kinds[k] == MC_SEL_KETAMA)
            CHECK(asreduced == ndead, "ketama walk vs reduced ring: %d of %d",
                  asreduced, ndead);
        /* gomemcached's search skips the first point of a ring, so a few
         * keys hashing below it may differ from the reduced ring. */
        if (kinds[k] == MC_SEL_GOMEMCACHED)
            CHECK(ndead - asreduced <= 3,
                  "gomemcached walk vs reduced ring: %d of %d", asreduced,
                  ndead);
        CHECK(mc_selector_pick(s, "k", 1, none) == -1, "%s: all dead",
              kname[k]);
        mc_selector_free(s);
        mc_selector_free(r);
    }

    for (k = 0; k < 3; k++) {
        mc_selector *s1 = mc_selector_new(kinds[k], e, 1);
        mc_selector *s0 = mc_selector_new(kinds[k], e, 0);
        CHECK(s1 && s0, "mc_selector_new small");
        if (!(s1 && s0))
            return;
        CHECK(pick(s1, "k", NULL) == 0 && pick(s1, "k", alive) == 0,
              "%s: one entry", kname[k]);
        CHECK(pick(s1, "k", none) == -1, "%s: one dead entry", kname[k]);
        CHECK(pick(s0, "k", NULL) == -1, "%s: no entries", kname[k]);
        mc_selector_free(s1);
        mc_selector_free(s0);
    }
}

/* ------------------------------------------------------ speed (info) */

static void bench(void)
{
    static const enum mc_sel_kind kinds[] = {
        MC_SEL_MODULO, MC_SEL_KETAMA, MC_SEL_GOMEMCACHED };
    static const char *const kname[] = { "modulo", "ketama", "gomemcached" };
    size_t k, i, r;

    for (k = 0; k < 3; k++) {
        mc_selector *s = mc_selector_new(kinds[k], k10, 10);
        struct timespec a, b;
        volatile int sink = 0;
        double ns;
        if (!s)
            return;
        clock_gettime(CLOCK_MONOTONIC, &a);
        for (r = 0; r < 20; r++)
            for (i = 0; i < NKEYS; i++)
                sink += mc_selector_pick(s, keys[i], keylen[i], NULL);
        clock_gettime(CLOCK_MONOTONIC, &b);
        ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 +
              (double)(b.tv_nsec - a.tv_nsec)) / (20.0 * NKEYS);
        printf("pick %s, 10 entries: %.0f ns\n", kname[k], ns);
        (void)sink;
        mc_selector_free(s);
    }
}

int main(int argc, char **argv)
{
    const char *ref = argc > 1 ? argv[1] : getenv("KETAMA_REF");

    make_keys();
    test_hashes();
    test_modulo();
    test_ketama(ref);
    test_gomemcached();
    test_alive();
    bench();
    return CHECK_REPORT();
}
