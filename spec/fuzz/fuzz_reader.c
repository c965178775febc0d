/*
 * libFuzzer target for the response reader: arbitrary bytes, fed in chunks
 * whose sizes come from the input itself, must give replies, "need more" or
 * a protocol error, never a crash, an overread or a runaway allocation.
 *
 *   make fuzz   (clang, -fsanitize=fuzzer,address,undefined)
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "mc_proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    mc_reader r;
    mc_resp resp;
    size_t pos = 0;
    /* a small cap, so that "declared body too large" is reachable */
    mc_reader_init(&r, size ? 64 + data[0] * 16 : 64);
    while (pos < size) {
        size_t n = 1 + (data[pos] % 64), i;
        volatile unsigned char sink = 0;
        if (n > size - pos)
            n = size - pos;
        if (mc_reader_feed(&r, (const char *)data + pos, n) != 0)
            break;
        pos += n;
        for (;;) {
            int rc = mc_reader_get(&r, &resp);
            if (rc != MC_READ_ONE)
                break;
            /* touch every byte the reply claims, so ASan checks the spans */
            for (i = 0; i < resp.extlen; i++)
                sink ^= (unsigned char)resp.extras[i];
            for (i = 0; i < resp.keylen; i++)
                sink ^= (unsigned char)resp.key[i];
            for (i = 0; i < resp.vallen; i++)
                sink ^= (unsigned char)resp.value[i];
        }
        (void)sink;
    }
    mc_reader_free(&r);
    return 0;
}
