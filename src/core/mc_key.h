/*
 * mc_key: the key rule (gomemcache's): 1 to 250 bytes, none of them a
 * space, a control character or DEL. Bytes >= 0x80 are allowed. A key that
 * fails is ERR_MALFORMED_KEY before anything is sent. No I/O, no Lua.
 *
 * Inline: it runs on every request, and a word at a time.
 */
#ifndef MC_KEY_H
#define MC_KEY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define MC_KEY_MAX 250

/* Nonzero when one of the eight bytes at p is below 0x21 (and not >= 0x80)
 * or is 0x7f. */
static inline int mc_key_word_bad(const unsigned char *p)
{
    const uint64_t ones = 0x0101010101010101ull, highs = 0x8080808080808080ull;
    uint64_t w, del;
    memcpy(&w, p, 8);
    del = w ^ (0x7f * ones);
    /* a byte below 0x21 (that is not >= 0x80), or a 0x7f, sets its high
     * bit here */
    return (((w - 0x21 * ones) & ~w & highs) | ((del - ones) & ~del & highs))
           != 0;
}

/* 1 when the n bytes at k make a valid key. */
static inline int mc_key_ok(const char *k, size_t n)
{
    const unsigned char *p = (const unsigned char *)k, *end = p + n;
    if (n == 0 || n > MC_KEY_MAX)
        return 0;
    if (n >= 8) {
        /* eight bytes at a time; the last word overlaps the one before */
        for (; end - p > 8; p += 8)
            if (mc_key_word_bad(p))
                return 0;
        return !mc_key_word_bad(end - 8);
    }
    for (; p < end; p++)
        if ((unsigned char)(*p - 0x21) >= 0x5e && *p < 0x80)
            return 0;
    return 1;
}

#endif
