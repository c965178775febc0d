/*
 * mc_codec: the wire protocol behind one interface. The engine, the
 * drivers and the binding frame requests and read replies through a codec
 * (a table of functions) instead of naming the protocol, so that a second
 * one (memcached's meta protocol, which memcached recommends to new
 * clients) can be added without touching them.
 *
 * The vocabulary is the binary protocol's: a request is named by its
 * opcode (MC_OP_GETK, MC_OP_SETQ, ...: quiet forms included), a reply
 * comes back as an mc_resp with an opcode, opaque and status. A codec for
 * another protocol maps those to its own commands and back (meta: "mg"
 * with the k, v, f, c flags for GETK, O<opaque> for the opaque, "mn" for
 * NOOP, HD/NF/NS/EX for the statuses).
 *
 * mc_codec_binary is memcached's binary protocol (mc_proto.h).
 */
#ifndef MC_CODEC_H
#define MC_CODEC_H

#include <stddef.h>
#include <stdint.h>

#include "mc_buf.h"
#include "mc_proto.h"

typedef struct mc_codec {
    const char *name;
    /* GET, GETK, GETQ, GETKQ */
    int (*get)(mc_buf *b, uint8_t opcode, uint32_t opaque, const char *key,
               size_t keylen);
    /* SET, ADD, REPLACE and quiet forms; the value is prefix then value */
    int (*store)(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                 const char *key, size_t keylen, uint32_t flags,
                 uint32_t exptime, const void *prefix, size_t plen,
                 const void *value, size_t vallen);
    /* APPEND, PREPEND */
    int (*concat)(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen, const void *value,
                  size_t vallen);
    /* DELETE, DELETEQ */
    int (*del)(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
               const char *key, size_t keylen);
    /* INCREMENT, DECREMENT (exptime MC_ARITH_NO_CREATE: no create) */
    int (*arith)(mc_buf *b, uint8_t opcode, uint32_t opaque, const char *key,
                 size_t keylen, uint64_t delta, uint64_t initial,
                 uint32_t exptime);
    /* TOUCH, GAT, GATK */
    int (*touch)(mc_buf *b, uint8_t opcode, uint32_t opaque, const char *key,
                 size_t keylen, uint32_t exptime);
    /* FLUSH (delay 0: now) */
    int (*flush)(mc_buf *b, uint8_t opcode, uint32_t opaque, uint32_t delay);
    /* NOOP, VERSION, QUIT: no key, no value */
    int (*simple)(mc_buf *b, uint8_t opcode, uint32_t opaque);
    /* STAT with an optional group */
    int (*stat)(mc_buf *b, uint32_t opaque, const char *group, size_t len);
    /* Takes one whole reply out of the reader: MC_READ_ONE (resp filled,
     * pointing into the reader until its next call), MC_READ_MORE or
     * MC_READ_ERROR (mc_reader_get's contract) */
    int (*read)(mc_reader *r, mc_resp *resp);
    /* Where a write of at most max bytes of requests should end so that
     * it ends at a request's end (mc_req_cut's contract): the TLS
     * transport ends its records there (mc_tls.c) */
    size_t (*cut)(const char *p, size_t n, size_t max);
} mc_codec;

extern const mc_codec mc_codec_binary;

#endif
