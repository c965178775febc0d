/*
 * mc_select: key -> entry index for the three distributions declared in
 * mc_select.h. Everything here is computed; nothing touches a socket.
 *
 * Compatibility notes (the reasons behind the odd-looking details):
 *  - MC_SEL_MODULO follows gomemcache's ServerList.PickServer, which hashes a
 *    copy of the key in a 256-byte scratch buffer, so only the first 256
 *    bytes of a longer key count.
 *  - MC_SEL_KETAMA follows libmemcached's update_continuum() with
 *    MEMCACHED_BEHAVIOR_KETAMA_WEIGHTED: points per server are computed in
 *    single-precision float exactly as libmemcached does, so that rounding
 *    matches (25 equal servers get 156 points each, 24 get 160).
 *  - MC_SEL_GOMEMCACHED follows gomemcached's Cluster.chooseServer, whose
 *    binary search can never land on the first point of the ring: keys that
 *    hash at or below it go to the second point. Reproduced on purpose.
 */
#include "mc_select.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---------------------------------------------------------------- crc32 */

/* Reflected IEEE polynomial 0xEDB88320, one byte per step. */
static const uint32_t crc_table[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau,
    0x076dc419u, 0x706af48fu, 0xe963a535u, 0x9e6495a3u,
    0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u,
    0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u,
    0x1db71064u, 0x6ab020f2u, 0xf3b97148u, 0x84be41deu,
    0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu,
    0x14015c4fu, 0x63066cd9u, 0xfa0f3d63u, 0x8d080df5u,
    0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u,
    0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu,
    0x35b5a8fau, 0x42b2986cu, 0xdbbbc9d6u, 0xacbcf940u,
    0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u,
    0x21b4f4b5u, 0x56b3c423u, 0xcfba9599u, 0xb8bda50fu,
    0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u,
    0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du,
    0x76dc4190u, 0x01db7106u, 0x98d220bcu, 0xefd5102au,
    0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u,
    0x7f6a0dbbu, 0x086d3d2du, 0x91646c97u, 0xe6635c01u,
    0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu,
    0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u,
    0x65b0d9c6u, 0x12b7e950u, 0x8bbeb8eau, 0xfcb9887cu,
    0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u,
    0x4adfa541u, 0x3dd895d7u, 0xa4d1c46du, 0xd3d6f4fbu,
    0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u,
    0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u,
    0x5005713cu, 0x270241aau, 0xbe0b1010u, 0xc90c2086u,
    0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u,
    0x59b33d17u, 0x2eb40d81u, 0xb7bd5c3bu, 0xc0ba6cadu,
    0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au,
    0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u,
    0xe3630b12u, 0x94643b84u, 0x0d6d6a3eu, 0x7a6a5aa8u,
    0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu,
    0xf762575du, 0x806567cbu, 0x196c3671u, 0x6e6b06e7u,
    0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu,
    0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u,
    0xd6d6a3e8u, 0xa1d1937eu, 0x38d8c2c4u, 0x4fdff252u,
    0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u,
    0xdf60efc3u, 0xa867df55u, 0x316e8eefu, 0x4669be79u,
    0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u,
    0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu,
    0xc5ba3bbeu, 0xb2bd0b28u, 0x2bb45a92u, 0x5cb36a04u,
    0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au,
    0x9c0906a9u, 0xeb0e363fu, 0x72076785u, 0x05005713u,
    0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u,
    0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u,
    0x86d3d2d4u, 0xf1d4e242u, 0x68ddb3f8u, 0x1fda836eu,
    0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu,
    0x8f659effu, 0xf862ae69u, 0x616bffd3u, 0x166ccf45u,
    0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u,
    0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu,
    0xaed16a4au, 0xd9d65adcu, 0x40df0b66u, 0x37d83bf0u,
    0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u,
    0xbad03605u, 0xcdd70693u, 0x54de5729u, 0x23d967bfu,
    0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u,
    0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du
};

uint32_t mc_crc32(const void *p, size_t n)
{
    const unsigned char *b = p;
    uint32_t c = 0xffffffffu;
    while (n--)
        c = crc_table[(c ^ *b++) & 0xffu] ^ (c >> 8);
    return c ^ 0xffffffffu;
}

/* ------------------------------------------------------------------ md5 */

/* RFC 1321: K[i] = floor(|sin(i + 1)| * 2^32). */
static const uint32_t md5_k[64] = {
    0xd76aa478u, 0xe8c7b756u, 0x242070dbu, 0xc1bdceeeu,
    0xf57c0fafu, 0x4787c62au, 0xa8304613u, 0xfd469501u,
    0x698098d8u, 0x8b44f7afu, 0xffff5bb1u, 0x895cd7beu,
    0x6b901122u, 0xfd987193u, 0xa679438eu, 0x49b40821u,
    0xf61e2562u, 0xc040b340u, 0x265e5a51u, 0xe9b6c7aau,
    0xd62f105du, 0x02441453u, 0xd8a1e681u, 0xe7d3fbc8u,
    0x21e1cde6u, 0xc33707d6u, 0xf4d50d87u, 0x455a14edu,
    0xa9e3e905u, 0xfcefa3f8u, 0x676f02d9u, 0x8d2a4c8au,
    0xfffa3942u, 0x8771f681u, 0x6d9d6122u, 0xfde5380cu,
    0xa4beea44u, 0x4bdecfa9u, 0xf6bb4b60u, 0xbebfbc70u,
    0x289b7ec6u, 0xeaa127fau, 0xd4ef3085u, 0x04881d05u,
    0xd9d4d039u, 0xe6db99e5u, 0x1fa27cf8u, 0xc4ac5665u,
    0xf4292244u, 0x432aff97u, 0xab9423a7u, 0xfc93a039u,
    0x655b59c3u, 0x8f0ccc92u, 0xffeff47du, 0x85845dd1u,
    0x6fa87e4fu, 0xfe2ce6e0u, 0xa3014314u, 0x4e0811a1u,
    0xf7537e82u, 0xbd3af235u, 0x2ad7d2bbu, 0xeb86d391u
};

static uint32_t load_le32(const unsigned char *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) |
           ((uint32_t)p[3] << 24);
}

static void store_le32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

#define MD5_ROTL(x, s) (((x) << (s)) | ((x) >> (32 - (s))))
#define MD5_F(x, y, z) ((z) ^ ((x) & ((y) ^ (z))))
#define MD5_G(x, y, z) ((y) ^ ((z) & ((x) ^ (y))))
#define MD5_H(x, y, z) ((x) ^ (y) ^ (z))
#define MD5_I(x, y, z) ((y) ^ ((x) | ~(z)))
#define MD5_STEP(f, a, b, c, d, mi, i, s)                                    \
    (a) += f((b), (c), (d)) + (mi) + md5_k[i];                               \
    (a) = MD5_ROTL((a), (s)) + (b)

/* Unrolled: pick() hashes every key with it under MC_SEL_KETAMA. */
static void md5_block(uint32_t st[4], const unsigned char *blk)
{
    uint32_t m[16];
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3];
    int i;

    for (i = 0; i < 16; i++)
        m[i] = load_le32(blk + 4 * i);

    MD5_STEP(MD5_F, a, b, c, d, m[0], 0, 7);
    MD5_STEP(MD5_F, d, a, b, c, m[1], 1, 12);
    MD5_STEP(MD5_F, c, d, a, b, m[2], 2, 17);
    MD5_STEP(MD5_F, b, c, d, a, m[3], 3, 22);
    MD5_STEP(MD5_F, a, b, c, d, m[4], 4, 7);
    MD5_STEP(MD5_F, d, a, b, c, m[5], 5, 12);
    MD5_STEP(MD5_F, c, d, a, b, m[6], 6, 17);
    MD5_STEP(MD5_F, b, c, d, a, m[7], 7, 22);
    MD5_STEP(MD5_F, a, b, c, d, m[8], 8, 7);
    MD5_STEP(MD5_F, d, a, b, c, m[9], 9, 12);
    MD5_STEP(MD5_F, c, d, a, b, m[10], 10, 17);
    MD5_STEP(MD5_F, b, c, d, a, m[11], 11, 22);
    MD5_STEP(MD5_F, a, b, c, d, m[12], 12, 7);
    MD5_STEP(MD5_F, d, a, b, c, m[13], 13, 12);
    MD5_STEP(MD5_F, c, d, a, b, m[14], 14, 17);
    MD5_STEP(MD5_F, b, c, d, a, m[15], 15, 22);

    MD5_STEP(MD5_G, a, b, c, d, m[1], 16, 5);
    MD5_STEP(MD5_G, d, a, b, c, m[6], 17, 9);
    MD5_STEP(MD5_G, c, d, a, b, m[11], 18, 14);
    MD5_STEP(MD5_G, b, c, d, a, m[0], 19, 20);
    MD5_STEP(MD5_G, a, b, c, d, m[5], 20, 5);
    MD5_STEP(MD5_G, d, a, b, c, m[10], 21, 9);
    MD5_STEP(MD5_G, c, d, a, b, m[15], 22, 14);
    MD5_STEP(MD5_G, b, c, d, a, m[4], 23, 20);
    MD5_STEP(MD5_G, a, b, c, d, m[9], 24, 5);
    MD5_STEP(MD5_G, d, a, b, c, m[14], 25, 9);
    MD5_STEP(MD5_G, c, d, a, b, m[3], 26, 14);
    MD5_STEP(MD5_G, b, c, d, a, m[8], 27, 20);
    MD5_STEP(MD5_G, a, b, c, d, m[13], 28, 5);
    MD5_STEP(MD5_G, d, a, b, c, m[2], 29, 9);
    MD5_STEP(MD5_G, c, d, a, b, m[7], 30, 14);
    MD5_STEP(MD5_G, b, c, d, a, m[12], 31, 20);

    MD5_STEP(MD5_H, a, b, c, d, m[5], 32, 4);
    MD5_STEP(MD5_H, d, a, b, c, m[8], 33, 11);
    MD5_STEP(MD5_H, c, d, a, b, m[11], 34, 16);
    MD5_STEP(MD5_H, b, c, d, a, m[14], 35, 23);
    MD5_STEP(MD5_H, a, b, c, d, m[1], 36, 4);
    MD5_STEP(MD5_H, d, a, b, c, m[4], 37, 11);
    MD5_STEP(MD5_H, c, d, a, b, m[7], 38, 16);
    MD5_STEP(MD5_H, b, c, d, a, m[10], 39, 23);
    MD5_STEP(MD5_H, a, b, c, d, m[13], 40, 4);
    MD5_STEP(MD5_H, d, a, b, c, m[0], 41, 11);
    MD5_STEP(MD5_H, c, d, a, b, m[3], 42, 16);
    MD5_STEP(MD5_H, b, c, d, a, m[6], 43, 23);
    MD5_STEP(MD5_H, a, b, c, d, m[9], 44, 4);
    MD5_STEP(MD5_H, d, a, b, c, m[12], 45, 11);
    MD5_STEP(MD5_H, c, d, a, b, m[15], 46, 16);
    MD5_STEP(MD5_H, b, c, d, a, m[2], 47, 23);

    MD5_STEP(MD5_I, a, b, c, d, m[0], 48, 6);
    MD5_STEP(MD5_I, d, a, b, c, m[7], 49, 10);
    MD5_STEP(MD5_I, c, d, a, b, m[14], 50, 15);
    MD5_STEP(MD5_I, b, c, d, a, m[5], 51, 21);
    MD5_STEP(MD5_I, a, b, c, d, m[12], 52, 6);
    MD5_STEP(MD5_I, d, a, b, c, m[3], 53, 10);
    MD5_STEP(MD5_I, c, d, a, b, m[10], 54, 15);
    MD5_STEP(MD5_I, b, c, d, a, m[1], 55, 21);
    MD5_STEP(MD5_I, a, b, c, d, m[8], 56, 6);
    MD5_STEP(MD5_I, d, a, b, c, m[15], 57, 10);
    MD5_STEP(MD5_I, c, d, a, b, m[6], 58, 15);
    MD5_STEP(MD5_I, b, c, d, a, m[13], 59, 21);
    MD5_STEP(MD5_I, a, b, c, d, m[4], 60, 6);
    MD5_STEP(MD5_I, d, a, b, c, m[11], 61, 10);
    MD5_STEP(MD5_I, c, d, a, b, m[2], 62, 15);
    MD5_STEP(MD5_I, b, c, d, a, m[9], 63, 21);

    st[0] += a;
    st[1] += b;
    st[2] += c;
    st[3] += d;
}

void mc_md5(const void *p, size_t n, unsigned char out[16])
{
    const unsigned char *b = p;
    uint32_t st[4] = { 0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u };
    unsigned char tail[128];
    uint64_t bits = (uint64_t)n * 8u;
    size_t rest, tlen, i;

    while (n >= 64) {
        md5_block(st, b);
        b += 64;
        n -= 64;
    }
    /* Padding: 0x80, zeros, then the bit length; one or two blocks. */
    rest = n;
    memcpy(tail, b, rest);
    tail[rest] = 0x80;
    tlen = rest < 56 ? 64 : 128;
    memset(tail + rest + 1, 0, tlen - rest - 1 - 8);
    for (i = 0; i < 8; i++)
        tail[tlen - 8 + i] = (unsigned char)(bits >> (8 * i));
    md5_block(st, tail);
    if (tlen == 128)
        md5_block(st, tail + 64);

    for (i = 0; i < 4; i++)
        store_le32(out + 4 * i, st[i]);
}

/* ------------------------------------------------------------- selector */

#define GOMEMCACHE_KEYBUF 256  /* gomemcache hashes at most this much */
#define KETAMA_POINTS 160      /* MEMCACHED_POINTS_PER_SERVER_KETAMA */
#define KETAMA_DEFAULT_PORT 11211u
#define GOMC_REPETITIONS 160   /* gomemcached's NodeRepetitions */

struct mc_selector {
    enum mc_sel_kind kind;
    size_t n;
    /* modulo: slot -> entry through cumulative weights; NULL when every
     * weight is 1 and slot == entry */
    uint64_t *cum;
    uint64_t slots;
    /* continuum: sorted point values and, in parallel, their entry */
    uint32_t *points;
    uint32_t *owner;
    size_t npoints;
};

struct point {
    uint32_t value;
    uint32_t entry;
};

static int point_cmp(const void *x, const void *y)
{
    const struct point *a = x, *b = y;
    if (a->value != b->value)
        return a->value < b->value ? -1 : 1;
    if (a->entry != b->entry)
        return a->entry < b->entry ? -1 : 1;
    return 0;
}

static unsigned eff_weight(unsigned w)
{
    return w ? w : 1;
}

/* Four little-endian words per digest, as both libmemcached's
 * ketama_server_hash and gomemcached's KetamaHash take them. */
static void digest_points(const char *name, size_t len, struct point *out,
                          uint32_t entry)
{
    unsigned char d[16];
    int k;
    mc_md5(name, len, d);
    for (k = 0; k < 4; k++) {
        out[k].value = load_le32(d + 4 * k);
        out[k].entry = entry;
    }
}

/* libmemcached's weighted share, with each step rounded to float as in
 * update_continuum(); volatile stops x87 excess precision and FMA
 * contraction from changing a floor() near an integer. */
static uint32_t ketama_points_for(unsigned w, uint64_t total, size_t live)
{
    volatile float pct, t;
    pct = (float)w / (float)total;
    t = pct * (float)KETAMA_POINTS;
    t = t / 4.0f;
    t = t * (float)live;
    t = t + 0.0000000001f;
    /* t >= 0, so truncation is libmemcached's floor() */
    return (uint32_t)t * 4;
}

static int build_continuum(mc_selector *s, const mc_sel_entry *e, size_t n)
{
    uint64_t total = 0;
    size_t i, cap = 0, np = 0, namecap = 0;
    struct point *pts;
    char *name;

    for (i = 0; i < n; i++) {
        size_t hl = strlen(e[i].host);
        total += eff_weight(e[i].weight);
        if (hl > namecap)
            namecap = hl;
    }
    for (i = 0; i < n; i++) {
        if (s->kind == MC_SEL_KETAMA)
            cap += ketama_points_for(eff_weight(e[i].weight), total, n);
        else
            cap += GOMC_REPETITIONS;
    }
    /* host, ':', port, '-' or '#', index, '[' ']', NUL */
    namecap += 1 + 10 + 1 + 10 + 2 + 1;

    pts = malloc((cap ? cap : 1) * sizeof *pts);
    name = malloc(namecap);
    if (!pts || !name) {
        free(pts);
        free(name);
        return -1;
    }

    for (i = 0; i < n; i++) {
        const char *h = e[i].host;
        unsigned port = e[i].port;
        uint32_t j, groups;
        int len;

        if (s->kind == MC_SEL_KETAMA) {
            groups = ketama_points_for(eff_weight(e[i].weight), total, n) / 4;
            for (j = 0; j < groups; j++) {
                /* libmemcached drops the port only when it is the default;
                 * a unix socket (port 0) still gets ":0". */
                if (port == KETAMA_DEFAULT_PORT)
                    len = snprintf(name, namecap, "%s-%u", h, (unsigned)j);
                else
                    len = snprintf(name, namecap, "%s:%u-%u", h, port,
                                   (unsigned)j);
                digest_points(name, (size_t)len, pts + np, (uint32_t)i);
                np += 4;
            }
        } else {
            groups = GOMC_REPETITIONS / 4;
            for (j = 0; j < groups; j++) {
                /* gomemcached hashes the address string it was given. */
                if (port == 0)
                    len = snprintf(name, namecap, "%s#%u", h, (unsigned)j);
                else if (strchr(h, ':'))
                    len = snprintf(name, namecap, "[%s]:%u#%u", h, port,
                                   (unsigned)j);
                else
                    len = snprintf(name, namecap, "%s:%u#%u", h, port,
                                   (unsigned)j);
                digest_points(name, (size_t)len, pts + np, (uint32_t)i);
                np += 4;
            }
        }
    }
    free(name);

    qsort(pts, np, sizeof *pts, point_cmp);

    /* gomemcached maps a point value to a server through a Go map that
     * the later server overwrites; libmemcached's lower bound takes the
     * lowest index, which the sort order already gives. */
    if (s->kind == MC_SEL_GOMEMCACHED) {
        size_t a = 0;
        while (a < np) {
            size_t z = a;
            while (z + 1 < np && pts[z + 1].value == pts[a].value)
                z++;
            for (i = a; i < z; i++)
                pts[i].entry = pts[z].entry;
            a = z + 1;
        }
    }

    s->points = malloc((np ? np : 1) * sizeof *s->points);
    s->owner = malloc((np ? np : 1) * sizeof *s->owner);
    if (!s->points || !s->owner) {
        free(pts);
        return -1;
    }
    for (i = 0; i < np; i++) {
        s->points[i] = pts[i].value;
        s->owner[i] = pts[i].entry;
    }
    s->npoints = np;
    free(pts);
    return 0;
}

static int build_modulo(mc_selector *s, const mc_sel_entry *e, size_t n)
{
    size_t i;
    int all_one = 1;
    uint64_t sum = 0;

    for (i = 0; i < n; i++)
        if (eff_weight(e[i].weight) != 1)
            all_one = 0;
    if (all_one) {
        s->slots = n;
        return 0;
    }
    s->cum = malloc(n * sizeof *s->cum);
    if (!s->cum)
        return -1;
    for (i = 0; i < n; i++) {
        sum += eff_weight(e[i].weight);
        s->cum[i] = sum;
    }
    s->slots = sum;
    return 0;
}

mc_selector *mc_selector_new(enum mc_sel_kind kind, const mc_sel_entry *e,
                             size_t n)
{
    mc_selector *s = calloc(1, sizeof *s);
    int rc = 0;

    if (!s)
        return NULL;
    s->kind = kind;
    s->n = n;
    if (n > 1) {
        if (kind == MC_SEL_MODULO)
            rc = build_modulo(s, e, n);
        else
            rc = build_continuum(s, e, n);
    }
    /* With n <= 1 the answer never depends on the key. */
    if (rc != 0) {
        mc_selector_free(s);
        return NULL;
    }
    return s;
}

void mc_selector_free(mc_selector *s)
{
    if (!s)
        return;
    free(s->cum);
    free(s->points);
    free(s->owner);
    free(s);
}

size_t mc_selector_count(const mc_selector *s)
{
    return s ? s->n : 0;
}

/* First index whose value is >= h, or np. */
static size_t lower_bound(const uint32_t *v, size_t np, uint32_t h)
{
    size_t lo = 0, hi = np;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (v[mid] < h)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static int walk_continuum(const mc_selector *s, size_t i,
                          const unsigned char *alive)
{
    size_t k;
    if (!alive)
        return (int)s->owner[i];
    for (k = 0; k < s->npoints; k++) {
        uint32_t who = s->owner[i];
        if (alive[who])
            return (int)who;
        if (++i == s->npoints)
            i = 0;
    }
    return -1;
}

int mc_selector_pick(const mc_selector *s, const char *key, size_t keylen,
                     const unsigned char *alive)
{
    size_t i;

    if (!s || s->n == 0)
        return -1;
    if (s->n == 1)
        return (!alive || alive[0]) ? 0 : -1;

    switch (s->kind) {
    case MC_SEL_MODULO: {
        uint32_t h = mc_crc32(key, keylen < GOMEMCACHE_KEYBUF
                                       ? keylen : GOMEMCACHE_KEYBUF);
        uint64_t slot = (uint64_t)h % s->slots;
        size_t e, k;
        if (s->cum) {
            size_t lo = 0, hi = s->n - 1;
            while (lo < hi) { /* first entry whose cumulative weight > slot */
                size_t mid = lo + (hi - lo) / 2;
                if (s->cum[mid] <= slot)
                    lo = mid + 1;
                else
                    hi = mid;
            }
            e = lo;
        } else {
            e = (size_t)slot;
        }
        if (!alive || alive[e])
            return (int)e;
        for (k = 1; k < s->n; k++) {
            size_t j = (e + k) % s->n;
            if (alive[j])
                return (int)j;
        }
        return -1;
    }
    case MC_SEL_KETAMA: {
        unsigned char d[16];
        if (s->npoints == 0)
            return -1;
        mc_md5(key, keylen, d);
        i = lower_bound(s->points, s->npoints, load_le32(d));
        if (i == s->npoints)
            i = 0;
        return walk_continuum(s, i, alive);
    }
    case MC_SEL_GOMEMCACHED: {
        uint32_t h;
        if (s->npoints == 0)
            return -1;
        h = mc_crc32(key, keylen);
        if (h > s->points[s->npoints - 1])
            i = 0;
        else {
            i = lower_bound(s->points, s->npoints, h);
            if (i == 0 && s->npoints > 1)
                i = 1;
        }
        return walk_continuum(s, i, alive);
    }
    }
    return -1;
}
