/*
 * mc_feed: a pipelined batch without I/O. A batch (mc_batch) is a list of
 * requests, each for one server; for each server, mc_feed_plan writes the
 * bytes to send (its requests, then a NOOP that closes its stream), and
 * mc_feed_take takes the replies out of that server's reader and checks
 * them: each answers a request of this server's, in request order (every
 * reply for non-quiet opcodes), framed as its opcode requires, accepted by
 * the batch's reply callback; the stream ends with the NOOP and nothing
 * after it. The driver moves the bytes and decides what a failure costs.
 */
#ifndef MC_FEED_H
#define MC_FEED_H

#include <stddef.h>
#include <stdint.h>

#include "mc_buf.h"
#include "mc_codec.h"
#include "mc_proto.h"

/* Request i goes to server[i] (-1: skip it). */
typedef struct mc_batch {
    size_t n;
    const int *server;
    /* append request i with this opaque; 0, or -1 when out of memory */
    int (*encode)(void *ud, size_t i, mc_buf *out, uint32_t opaque);
    /* a response to request i; return -1 to reject it as not ours */
    int (*reply)(void *ud, size_t i, const mc_resp *r);
    /* request i got no answer because its server failed */
    void (*fail)(void *ud, size_t i, int err, const char *msg);
    /* request i was answered, but its server's stream then broke off: the
     * answer cannot be trusted (NULL: keep it) */
    void (*revoke)(void *ud, size_t i, int err, const char *msg);
    /* 1: every request gets a reply (non-quiet opcodes), so replies must
     * come one per request, in order; a skipped one breaks the batch.
     * 0: quiet opcodes, only some requests answer. */
    int every_reply;
    void *ud;
    const mc_codec *codec; /* the protocol; NULL: binary */
    double since;          /* the I/O budget counts from this clock
                              reading (the call's start, less time spent
                              probing), not from the batch's; 0: from the
                              batch's */
} mc_batch;

/* One server's stream of a batch. */
typedef struct mc_feed {
    const mc_batch *b;
    int srv;                /* the server this stream serves */
    uint32_t base;          /* opaque of request 0; the NOOP carries base + n */
    size_t next;            /* replies must come in increasing request order */
    int got;                /* some reply arrived */
    unsigned char *replied; /* per request of the batch: answered (shared by
                               the batch's streams) */
} mc_feed;

enum mc_feed_rc {
    MC_FEED_MORE,   /* every whole reply taken; the stream goes on */
    MC_FEED_DONE,   /* the closing NOOP came, everything checked */
    MC_FEED_FAILED  /* *err and msg say why; nothing more is taken */
};

/* Starts server srv's stream of batch b with opaques from base on. */
void mc_feed_init(mc_feed *f, const mc_batch *b, int srv, uint32_t base,
                  unsigned char *replied);
/* Appends the stream's requests and its closing NOOP to out. 0, or -1
 * when out of memory. */
int mc_feed_plan(const mc_feed *f, mc_buf *out);
/* Takes every whole reply out of in. MC_FEED_FAILED sets *err (mc_error.h)
 * and a message. */
int mc_feed_take(mc_feed *f, mc_reader *in, int *err, char *msg,
                 size_t msglen);

#endif
