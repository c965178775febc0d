/*
 * libFuzzer target for the engine's batch feed (src/core/mc_feed.c): a
 * planned batch of GETK (every reply) or GETKQ (quiet) requests over two
 * servers, and server 0's stream of replies made from the input: either
 * the input's own bytes, or the right replies damaged as the input says
 * (a byte changed, cut short, a reply repeated, two swapped, garbage in
 * front). Whatever the bytes, the feed must not crash or overread, and
 * must never hand a reply to a request it does not answer: each reply it
 * passes on is for the request its opaque names, of server 0, later than
 * the one before, never twice; the client's callback then accepts it only
 * if it names that request's key. A stream that ends well has
 * answered every request of server 0 when every reply is due.
 *
 *   make fuzz   (clang, -fsanitize=fuzzer,address,undefined)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mc_buf.h"
#include "mc_feed.h"
#include "mc_proto.h"
#include "../c/reply.h"
#include "damage.h"

#define NMAX 16

typedef struct state {
    size_t n;
    int server[NMAX];
    char keys[NMAX][8];
    size_t keylen[NMAX];
    int accepted[NMAX];
    long last; /* index of the last accepted reply, -1 */
    uint32_t base;
} state;

static void check(int cond)
{
    if (!cond)
        __builtin_trap();
}

static int enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    state *s = ud;
    return mc_enc_get(out, MC_OP_GETK, opaque, s->keys[i], s->keylen[i]);
}

static int enc_quiet(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    state *s = ud;
    return mc_enc_get(out, MC_OP_GETKQ, opaque, s->keys[i], s->keylen[i]);
}

/* The client's side of the rule: a reply must name its request's key.
 * Whatever the feed passes in must be a pending request of server 0. */
static int reply(void *ud, size_t i, const mc_resp *r)
{
    state *s = ud;
    check(i < s->n && s->server[i] == 0 && !s->accepted[i] &&
          (long)i > s->last && r->opaque == s->base + (uint32_t)i);
    if (r->keylen != s->keylen[i] || memcmp(r->key, s->keys[i], r->keylen))
        return -1;
    s->accepted[i] = 1;
    s->last = (long)i;
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    state s;
    mc_batch b;
    mc_feed f;
    mc_reader in;
    mc_buf stream = {0}, plan = {0};
    unsigned char replied[NMAX + 1] = {0};
    uint32_t base;
    size_t i, pos = 0;
    int quiet, built, rc = MC_FEED_MORE, err = 0;
    char msg[200];

    if (size < 4)
        return 0;
    memset(&s, 0, sizeof(s));
    s.n = 1 + data[0] % NMAX;
    quiet = data[1] & 1;
    built = data[1] & 2;
    base = (uint32_t)data[2] << 24 | (uint32_t)data[3] * 0x10101u;
    pos = 4;
    for (i = 0; i < s.n; i++) {
        s.server[i] = pos < size && (data[pos++] & 3) == 3 ? 1 : 0;
        s.keylen[i] = (size_t)snprintf(s.keys[i], sizeof(s.keys[i]), "key%zu", i);
    }
    s.last = -1;
    s.base = base;
    b.n = s.n;
    b.server = s.server;
    b.encode = quiet ? enc_quiet : enc;
    b.reply = reply;
    b.fail = NULL;
    b.revoke = NULL;
    b.every_reply = !quiet;
    b.ud = &s;
    b.codec = NULL; /* binary */
    b.since = 0;
    mc_feed_init(&f, &b, 0, base, replied);
    check(mc_feed_plan(&f, &plan) == 0);

    if (built) {
        /* the right stream, then damaged as the rest of the input says */
        for (i = 0; i < s.n; i++)
            if (s.server[i] == 0 && (!quiet || (i & 1)))
                put_reply(&stream, quiet ? MC_OP_GETKQ : MC_OP_GETK,
                          base + (uint32_t)i, s.keys[i], s.keylen[i], "v", 1);
        put_reply(&stream, MC_OP_NOOP, base + (uint32_t)s.n, "", 0, "", 0);
        damage(&stream, data, size, &pos);
    } else {
        mc_buf_append(&stream, (const char *)data + pos, size - pos);
    }

    /* fed in chunks of 1..64 bytes, as reads would bring them */
    mc_reader_init(&in, 1024);
    for (i = 0; i < stream.len && rc == MC_FEED_MORE;) {
        size_t n = 1 + ((unsigned char)stream.data[i] * 7u) % 64;
        if (n > stream.len - i)
            n = stream.len - i;
        if (mc_reader_feed(&in, stream.data + i, n) != 0)
            break;
        i += n;
        rc = mc_feed_take(&f, &in, &err, msg, sizeof(msg));
    }
    /* what was accepted is exactly what the feed marks as replied */
    for (i = 0; i < s.n; i++)
        check(!!replied[i] == !!s.accepted[i]);
    if (rc == MC_FEED_DONE && !quiet)
        for (i = 0; i < s.n; i++)
            check(s.server[i] != 0 || s.accepted[i]);
    if (rc == MC_FEED_FAILED)
        check(err != 0 && msg[0] != '\0');
    mc_reader_free(&in);
    mc_buf_free(&stream);
    mc_buf_free(&plan);
    return 0;
}
