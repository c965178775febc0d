/*
 * libFuzzer target for the core's C ABI that the OpenResty driver reads
 * replies through (src/core/mc_abi_batch.c):
 *
 *  - mc_abi_take_one over the input as one request's reply: whatever the
 *    bytes, it must not crash or overread; a reply it accepts lies within
 *    the input (value and key offsets), answers the request's opaque, and
 *    names the request's key when it is a hit of a keyed get;
 *  - mc_abi_batch: a batch of GETK requests for known keys, fed the input
 *    in pieces whose sizes the input's first byte picks; every entry it
 *    hands out is for a request of the batch, later than the one before,
 *    its value within the bytes fed, and a hit's reply named its key.
 *
 *   make fuzz   (clang, -fsanitize=fuzzer,address,undefined)
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mc_abi.h"
#include "mc_error.h"
#include "mc_item.h"
#include "mc_proto.h"

#define NKEYS 4

static const char *const keys[NKEYS] = {"a", "bb", "ccc", "dddd"};

static void check(int cond)
{
    if (!cond)
        __builtin_trap();
}

static void one(const uint8_t *data, size_t size)
{
    mc_abi_reply o;
    char msg[200];
    int rc = mc_abi_take_one((const char *)data, size, 4096, MC_KIND_GET,
                             MC_OP_GETK, 7, "bb", 2, &o, msg, sizeof(msg));
    if (rc != 1)
        return;
    check(o.used >= MC_HEADER_LEN && o.used == size);
    check((size_t)o.voff + o.vlen <= o.used);
    check((size_t)o.koff + o.klen <= o.used);
    check(mc_load32(data + 12) == 7 && data[1] == MC_OP_GETK);
    if (mc_load16(data + 6) == MC_STATUS_OK)
        check(o.klen == 2 && memcmp(data + o.koff, "bb", 2) == 0);
}

static void batch(const uint8_t *data, size_t size)
{
    mc_abi_batch *ab = mc_abi_batch_new(4096);
    size_t i, len, at = 0, piece;
    long last = -1;
    int rc = 0;
    if (!ab || size == 0) {
        mc_abi_batch_free(ab);
        return;
    }
    piece = (size_t)(data[0] % 32) + 1;
    mc_abi_batch_begin(ab, 100, MC_KIND_GET, data[0] & 0x80);
    data++;
    size--;
    for (i = 0; i < NKEYS; i++)
        check(mc_abi_batch_add(ab, MC_OP_GETK, 0, keys[i], strlen(keys[i]), 0,
                               0, 0, NULL, 0) == (int)i);
    check(mc_abi_batch_seal(ab, &len) != NULL);
    while (at < size && rc == 0) {
        mc_abi_entry *e;
        int n, j, err;
        char msg[200];
        size_t take = size - at < piece ? size - at : piece;
        rc = mc_abi_batch_feed(ab, (const char *)data + at, take, &e, &n,
                               &err, msg, sizeof(msg));
        at += take;
        for (j = 0; j < n; j++) {
            check(e[j].idx < NKEYS && (long)e[j].idx > last);
            last = e[j].idx;
            if (e[j].err == 0)
                check(e[j].value != NULL);
        }
        if (rc < 0)
            check(err > 0 && err < MC_ERR_COUNT);
    }
    mc_abi_batch_free(ab);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(data, size);
    batch(data, size);
    return 0;
}
