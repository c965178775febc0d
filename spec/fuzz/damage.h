/*
 * damage.h: the fuzz targets' way of making a right stream of replies
 * wrong as the input says. Each 3 input bytes from *pos damage it once:
 * the first byte picks how (a byte changed, cut short, the head repeated,
 * two headers swapped, 3 bytes of garbage in front), the next two where.
 */
#ifndef DAMAGE_H
#define DAMAGE_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "mc_buf.h"

static void damage(mc_buf *stream, const uint8_t *data, size_t size,
                   size_t *pos)
{
    while (*pos + 2 < size && stream->len) {
        const uint8_t *d = data + *pos;
        size_t at = ((size_t)d[1] << 8 | d[2]) % stream->len;
        switch (d[0] % 5) {
        case 0:
            stream->data[at] = (char)(stream->data[at] ^ (1 + d[1]));
            break;
        case 1:
            stream->len = at;
            break;
        case 2: { /* the head again (copied: appending may move it) */
            char *head = malloc(at + 1);
            if (head) {
                memcpy(head, stream->data, at);
                mc_buf_append(stream, head, at);
                free(head);
            }
            break;
        }
        case 3:
            if (at >= 48) {
                char t[24];
                memcpy(t, stream->data, 24);
                memcpy(stream->data, stream->data + at - 24, 24);
                memcpy(stream->data + at - 24, t, 24);
            }
            break;
        default: {
            mc_buf g = {0};
            mc_buf_append(&g, (const char *)d, 3);
            mc_buf_append(&g, stream->data, stream->len);
            mc_buf_free(stream);
            *stream = g;
        }
        }
        *pos += 3;
    }
}

#endif
