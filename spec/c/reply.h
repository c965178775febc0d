/*
 * reply.h: a server's reply as bytes, for the C tests and fuzz targets
 * that feed the client's reader: a GET-family reply carries 4 bytes of
 * flags (zero) as extras, a NOOP none.
 */
#ifndef REPLY_H
#define REPLY_H

#include <stddef.h>
#include <stdint.h>

#include "mc_buf.h"
#include "mc_proto.h"

static void put_reply(mc_buf *out, uint8_t opcode, uint32_t opaque,
                      const char *key, size_t keylen, const char *val,
                      size_t vallen)
{
    unsigned char h[24] = {0};
    uint32_t extlen = opcode == MC_OP_NOOP ? 0 : 4;
    uint32_t body = extlen + (uint32_t)keylen + (uint32_t)vallen;
    h[0] = 0x81;
    h[1] = opcode;
    h[2] = (unsigned char)(keylen >> 8);
    h[3] = (unsigned char)keylen;
    h[4] = (unsigned char)extlen;
    h[8] = (unsigned char)(body >> 24);
    h[9] = (unsigned char)(body >> 16);
    h[10] = (unsigned char)(body >> 8);
    h[11] = (unsigned char)body;
    h[12] = (unsigned char)(opaque >> 24);
    h[13] = (unsigned char)(opaque >> 16);
    h[14] = (unsigned char)(opaque >> 8);
    h[15] = (unsigned char)opaque;
    mc_buf_append(out, h, 24);
    if (extlen)
        mc_buf_append(out, "\0\0\0\0", 4);
    mc_buf_append(out, key, keylen);
    mc_buf_append(out, val, vallen);
}

#endif
