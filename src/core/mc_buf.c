#include "mc_buf.h"

#include <stdlib.h>

int mc_buf_reserve(mc_buf *b, size_t extra)
{
    size_t need, cap;
    char *p;

    if (b->cap - b->len >= extra)
        return 0;
    if (extra > (size_t)-1 - b->len)
        return -1;
    need = b->len + extra;
    cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap = cap > (size_t)-1 / 2 ? need : cap * 2;
    p = realloc(b->data, cap);
    if (!p)
        return -1;
    b->data = p;
    b->cap = cap;
    return 0;
}

void mc_buf_release(mc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->cap = 0;
    b->len = 0;
}

void mc_buf_free(mc_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
