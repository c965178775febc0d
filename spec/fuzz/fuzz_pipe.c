/*
 * libFuzzer target for a pipelined connection's FIFO and judging
 * (src/core/mc_pipe.c): up to 16 gets (with, as the input says, a STAT
 * stream among them) pushed on one pipe, and a stream of replies made
 * from the input: either the input's own bytes, or the right replies
 * damaged as the input says (a byte changed, cut short, the head
 * repeated, two headers swapped, garbage in front), fed in pieces of
 * 1..64 bytes. Whatever the bytes, the pipe must not crash or overread,
 * and must never hand a reply to a request it does not answer: replies
 * come out in request order, each once; a hit names its request's key;
 * a stream's entries come only while the stream is the FIFO's head. A
 * failure always says why.
 *
 *   make fuzz   (clang, -fsanitize=fuzzer,address,undefined)
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mc_abi.h"
#include "mc_buf.h"
#include "mc_error.h"
#include "mc_item.h"
#include "mc_pipe.h"
#include "mc_proto.h"
#include "../c/reply.h"
#include "damage.h"

#define NMAX 16

static void check(int cond)
{
    if (!cond)
        __builtin_trap();
}

/* A STAT entry: no extras. */
static void put_stat(mc_buf *out, uint32_t opaque, const char *k, size_t kl)
{
    size_t at = out->len;
    put_reply(out, MC_OP_STAT, opaque, k, kl, "1", kl ? 1 : 0);
    memmove(out->data + at + 24, out->data + at + 28, kl + (kl ? 1 : 0));
    out->len -= 4;
    out->data[at + 4] = 0;
    mc_store32(out->data + at + 8, (uint32_t)(kl + (kl ? 1 : 0)));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mc_pipe p;
    mc_pipe_ev ev;
    mc_buf stream = {0};
    char keys[NMAX][8];
    size_t keylen[NMAX], n, i, pos, out_len;
    int is_stat[NMAX], next = 0, rc = MC_PIPE_NEED, built;
    uint32_t base;

    if (size < 4)
        return 0;
    n = 1 + data[0] % NMAX;
    built = data[1] & 1;
    base = (uint32_t)data[2] << 24 | (uint32_t)data[3] * 0x10101u;
    pos = 4;
    mc_pipe_init(&p, 1024);
    for (i = 0; i < n; i++) {
        is_stat[i] = pos < size && (data[pos++] & 7) == 7;
        keylen[i] = (size_t)snprintf(keys[i], sizeof keys[i], "key%zu", i);
        if (is_stat[i])
            check(mc_pipe_push_enc(&p, MC_OP_STAT, MC_KIND_OTHER,
                                   base + (uint32_t)i, 0, NULL, 0, 0, 0, 0,
                                   NULL, 0, 0, 1, (int)i) == 0);
        else
            check(mc_pipe_push_enc(&p, MC_OP_GETK, MC_KIND_GET,
                                   base + (uint32_t)i, 0, keys[i], keylen[i], 0,
                                   0, 0, NULL, 0, 1, 0, (int)i) == 0);
    }
    mc_pipe_out(&p, &out_len);
    mc_pipe_sent(&p, out_len);

    if (built) {
        for (i = 0; i < n; i++)
            if (is_stat[i]) {
                put_stat(&stream, base + (uint32_t)i, "pid", 3);
                put_stat(&stream, base + (uint32_t)i, "", 0);
            } else {
                put_reply(&stream, MC_OP_GETK, base + (uint32_t)i, keys[i],
                          keylen[i], "v", 1);
            }
        damage(&stream, data, size, &pos);
    } else {
        mc_buf_append(&stream, (const char *)data + pos, size - pos);
    }

    for (i = 0; i < stream.len && rc == MC_PIPE_NEED;) {
        size_t k = 1 + ((unsigned char)stream.data[i] * 7u) % 64, room;
        char *in;
        if (k > stream.len - i)
            k = stream.len - i;
        in = mc_pipe_in(&p, k, &room);
        check(in != NULL && room >= k);
        memcpy(in, stream.data + i, k);
        mc_pipe_got(&p, k);
        i += k;
        while ((rc = mc_pipe_next(&p, &ev)) == MC_PIPE_REPLY ||
               rc == MC_PIPE_ENTRY) {
            /* only the FIFO's head, in order, each once */
            check(ev.ref == next && (size_t)next < n);
            if (rc == MC_PIPE_ENTRY) {
                check(is_stat[next]);
                if (ev.klen == 0 || ev.err != 0) {
                    mc_pipe_pop(&p);
                    next++;
                }
                continue;
            }
            check(!is_stat[next]);
            if (ev.err == 0)
                check(ev.klen == keylen[next] &&
                      memcmp(ev.key, keys[next], ev.klen) == 0);
            next++;
        }
    }
    if (rc == MC_PIPE_FAIL)
        check(ev.err != 0 && ev.msg[0] != '\0');
    if (rc == MC_PIPE_NEED && (size_t)next == n)
        check(mc_pipe_clean(&p));
    mc_pipe_free(&p);
    mc_buf_free(&stream);
    return 0;
}
