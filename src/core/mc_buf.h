/*
 * mc_buf: a growable byte buffer. Owned by whoever embeds it; mc_buf_free
 * releases the storage and leaves an empty, reusable buffer.
 */
#ifndef MC_BUF_H
#define MC_BUF_H

#include <stddef.h>
#include <string.h>

typedef struct mc_buf {
    char *data;
    size_t len; /* bytes in use */
    size_t cap; /* bytes allocated */
} mc_buf;

/* Makes room for `extra` more bytes. Returns 0, or -1 when memory ran out
 * (the buffer is then unchanged). */
int mc_buf_reserve(mc_buf *b, size_t extra);

/* Appends n bytes. Returns 0 or -1 (out of memory, buffer unchanged). */
static inline int mc_buf_append(mc_buf *b, const void *p, size_t n)
{
    if (b->cap - b->len < n && mc_buf_reserve(b, n) != 0)
        return -1;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    return 0;
}

/* Drops the contents; keeps the storage unless it grew past `keep` bytes,
 * so that one huge value does not pin memory for the life of a connection. */
void mc_buf_release(mc_buf *b);
static inline void mc_buf_clear(mc_buf *b, size_t keep)
{
    b->len = 0;
    if (b->cap > keep)
        mc_buf_release(b);
}

void mc_buf_free(mc_buf *b);

#endif
