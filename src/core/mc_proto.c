#include "mc_proto.h"
#include "mc_error.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A reader's first allocation: one typical socket read, and room for many
 * small responses, so steady state never reallocates. */
#define MC_READER_INITIAL (16u * 1024)

/* ---- requests ----------------------------------------------------------- */

/* All encoders end here: one reservation, the header written in place, the
 * pieces copied once. Only memory (or a length too large for its header
 * field) can fail, and then b is left as it was. */
/* One frame; the value is prefix + value (the prefix lets a caller add a
 * few bytes, such as a msgpack header, without first copying the value). */
static int enc_frame2(mc_buf *b, uint8_t opcode, uint32_t opaque,
                      uint64_t cas, const void *extras, uint8_t extlen,
                      const char *key, size_t keylen, const void *prefix,
                      size_t plen, const void *value, size_t vallen)
{
    unsigned char *h;
    size_t body;

    if (keylen > 0xffffu || plen > 0xffffu ||
        vallen > 0xffffffffu - extlen - keylen - plen)
        return -1;
    body = (size_t)extlen + keylen + plen + vallen;
    if (body > SIZE_MAX - MC_HEADER_LEN)
        return -1;
    if (b->cap - b->len < MC_HEADER_LEN + body &&
        mc_buf_reserve(b, MC_HEADER_LEN + body) != 0)
        return -1;

    h = (unsigned char *)b->data + b->len;
    h[0] = MC_MAGIC_REQUEST;
    h[1] = opcode;
    mc_store16(h + 2, (uint16_t)keylen);
    h[4] = extlen;
    h[5] = 0; /* datatype: raw bytes */
    h[6] = 0; /* vbucket */
    h[7] = 0;
    mc_store32(h + 8, (uint32_t)body);
    mc_store32(h + 12, opaque);
    mc_store64(h + 16, cas);
    h += MC_HEADER_LEN;
    if (extlen) {
        memcpy(h, extras, extlen);
        h += extlen;
    }
    if (keylen) {
        memcpy(h, key, keylen);
        h += keylen;
    }
    if (plen) {
        memcpy(h, prefix, plen);
        h += plen;
    }
    if (vallen)
        memcpy(h, value, vallen);
    b->len += MC_HEADER_LEN + body;
    return 0;
}

static int enc_frame(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                     const void *extras, uint8_t extlen,
                     const char *key, size_t keylen,
                     const void *value, size_t vallen)
{
    return enc_frame2(b, opcode, opaque, cas, extras, extlen, key, keylen,
                      NULL, 0, value, vallen);
}

int mc_enc_request(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                   const void *extras, uint8_t extlen,
                   const char *key, size_t keylen,
                   const void *value, size_t vallen)
{
    return enc_frame(b, opcode, opaque, cas, extras, extlen, key, keylen,
                     value, vallen);
}

/* The hot one in get_multi: header and key only, written directly. */
int mc_enc_get(mc_buf *b, uint8_t opcode, uint32_t opaque,
               const char *key, size_t keylen)
{
    unsigned char *h;
    if (keylen > 0xffffu)
        return -1;
    if (b->cap - b->len < MC_HEADER_LEN + keylen &&
        mc_buf_reserve(b, MC_HEADER_LEN + keylen) != 0)
        return -1;
    h = (unsigned char *)b->data + b->len;
    memset(h, 0, MC_HEADER_LEN); /* datatype, vbucket, cas: 0 */
    h[0] = MC_MAGIC_REQUEST;
    h[1] = opcode;
    mc_store16(h + 2, (uint16_t)keylen);
    mc_store32(h + 8, (uint32_t)keylen);
    mc_store32(h + 12, opaque);
    memcpy(h + MC_HEADER_LEN, key, keylen);
    b->len += MC_HEADER_LEN + keylen;
    return 0;
}

int mc_enc_store(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                 const char *key, size_t keylen, uint32_t flags,
                 uint32_t exptime, const void *value, size_t vallen)
{
    unsigned char ext[8];

    mc_store32(ext, flags);
    mc_store32(ext + 4, exptime);
    return enc_frame(b, opcode, opaque, cas, ext, sizeof ext, key, keylen,
                     value, vallen);
}

int mc_enc_store2(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen, uint32_t flags,
                  uint32_t exptime, const void *prefix, size_t plen,
                  const void *value, size_t vallen)
{
    unsigned char ext[8];

    mc_store32(ext, flags);
    mc_store32(ext + 4, exptime);
    return enc_frame2(b, opcode, opaque, cas, ext, sizeof ext, key, keylen,
                      prefix, plen, value, vallen);
}

int mc_enc_concat(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen,
                  const void *value, size_t vallen)
{
    return enc_frame(b, opcode, opaque, cas, NULL, 0, key, keylen,
                     value, vallen);
}

int mc_enc_delete(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen)
{
    return enc_frame(b, opcode, opaque, cas, NULL, 0, key, keylen, NULL, 0);
}

int mc_enc_arith(mc_buf *b, uint8_t opcode, uint32_t opaque,
                 const char *key, size_t keylen, uint64_t delta,
                 uint64_t initial, uint32_t exptime)
{
    unsigned char ext[20];

    mc_store64(ext, delta);
    mc_store64(ext + 8, initial);
    mc_store32(ext + 16, exptime);
    return enc_frame(b, opcode, opaque, 0, ext, sizeof ext, key, keylen,
                     NULL, 0);
}

int mc_enc_touch(mc_buf *b, uint8_t opcode, uint32_t opaque,
                 const char *key, size_t keylen, uint32_t exptime)
{
    unsigned char ext[4];

    mc_store32(ext, exptime);
    return enc_frame(b, opcode, opaque, 0, ext, sizeof ext, key, keylen,
                     NULL, 0);
}

int mc_enc_flush(mc_buf *b, uint8_t opcode, uint32_t opaque, uint32_t delay)
{
    unsigned char ext[4];

    /* memcached reads "no extras" as "flush now"; sending a zero delay would
     * mean the same but costs bytes, and the spec shows it without. */
    if (delay == 0)
        return enc_frame(b, opcode, opaque, 0, NULL, 0, NULL, 0, NULL, 0);
    mc_store32(ext, delay);
    return enc_frame(b, opcode, opaque, 0, ext, sizeof ext, NULL, 0, NULL, 0);
}

int mc_enc_simple(mc_buf *b, uint8_t opcode, uint32_t opaque)
{
    return enc_frame(b, opcode, opaque, 0, NULL, 0, NULL, 0, NULL, 0);
}

int mc_enc_stat(mc_buf *b, uint32_t opaque, const char *group, size_t len)
{
    return enc_frame(b, MC_OP_STAT, opaque, 0, NULL, 0, group,
                     group ? len : 0, NULL, 0);
}

size_t mc_req_cut(const char *p, size_t n, size_t max)
{
    size_t cut = 0;
    while (n - cut >= MC_HEADER_LEN) {
        size_t len = MC_HEADER_LEN + (size_t)mc_load32(p + cut + 8);
        if (len > n - cut)
            break;
        if (cut + len > max)
            return cut ? cut : len;
        cut += len;
    }
    return cut ? cut : n;
}

/* ---- responses ---------------------------------------------------------- */

void mc_reader_init(mc_reader *r, size_t max_body)
{
    r->buf = NULL;
    r->cap = r->pos = r->len = 0;
    r->max_body = max_body ? max_body : MC_DEFAULT_MAX_BODY;
    /* Keeps header + body within size_t on 32-bit systems, so later sums
     * need no overflow checks. */
    if (r->max_body > SIZE_MAX - MC_HEADER_LEN)
        r->max_body = SIZE_MAX - MC_HEADER_LEN;
    r->failed = 0;
    r->oversize = 0;
    r->server_text = 0;
    r->errstr[0] = '\0';
}

void mc_reader_free(mc_reader *r)
{
    free(r->buf);
    r->buf = NULL;
    r->cap = r->pos = r->len = 0;
}

void mc_reader_reset(mc_reader *r)
{
    r->pos = r->len = 0;
    r->failed = 0;
    r->oversize = 0;
    r->server_text = 0;
    r->errstr[0] = '\0';
    if (r->cap > MC_READER_KEEP) {
        free(r->buf);
        r->buf = NULL;
        r->cap = 0;
    }
}

/* Length of the whole frame whose header starts at p, or 0 when the header
 * is one get will refuse (so nobody grows a buffer for it). */
static size_t frame_len(const mc_reader *r, const unsigned char *p)
{
    uint32_t body = mc_load32(p + 8);

    if (p[0] != MC_MAGIC_RESPONSE || body > r->max_body)
        return 0;
    return MC_HEADER_LEN + (size_t)body;
}

/* Makes at least `min` bytes writable at buf + len and, once the current
 * frame's header is in, room for the rest of that frame, so that a large
 * value arrives in as few reads as possible and is never copied piecewise
 * through a small buffer. Moves the unread tail to the front first: that
 * tail is usually a fraction of one frame, far cheaper than growing. */
static int reader_reserve(mc_reader *r, size_t min)
{
    size_t unread = r->len - r->pos;
    size_t want = min, need, cap;
    char *p;

    if (!r->failed && unread >= MC_HEADER_LEN) {
        size_t frame = frame_len(r, (const unsigned char *)r->buf + r->pos);
        if (frame > unread && frame - unread > want)
            want = frame - unread;
    }
    if (r->cap - r->len >= want)
        return 0;
    if (want > SIZE_MAX - unread)
        return -1;
    need = unread + want;

    if (r->pos) {
        if (unread)
            memmove(r->buf, r->buf + r->pos, unread);
        r->pos = 0;
        r->len = unread;
        if (r->cap >= need)
            return 0;
    }

    cap = r->cap ? r->cap : MC_READER_INITIAL;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    p = realloc(r->buf, cap);
    if (!p)
        return -1;
    r->buf = p;
    r->cap = cap;
    return 0;
}

int mc_reader_feed(mc_reader *r, const char *p, size_t n)
{
    /* A failed stream is dead: keeping its bytes would only grow memory. */
    if (r->failed || n == 0)
        return 0;
    if (r->cap - r->len < n && reader_reserve(r, n) != 0)
        return -1;
    memcpy(r->buf + r->len, p, n);
    r->len += n;
    return 0;
}

char *mc_reader_space_slow(mc_reader *r, size_t min, size_t *avail)
{
    if (min == 0)
        min = 1;
    if (reader_reserve(r, min) != 0) {
        *avail = 0;
        return NULL;
    }
    *avail = r->cap - r->len;
    return r->buf + r->len;
}

static int reader_fail(mc_reader *r)
{
    r->failed = 1;
    return MC_READ_ERROR;
}

/* Is p[0..n) (n >= 1, p[0] not the response magic) a text error line of
 * the server's? 1 when it is one, whole (its length without CRLF in *len);
 * 0 when it could still become one; -1 when it cannot. */
static int text_error_line(const unsigned char *p, size_t n, size_t *len)
{
    static const char *const words[] = {"ERROR", "SERVER_ERROR",
                                        "CLIENT_ERROR"};
    size_t i, w, wl;

    for (w = 0; w < sizeof words / sizeof words[0]; w++) {
        wl = strlen(words[w]);
        if (memcmp(p, words[w], n < wl ? n : wl) == 0)
            break;
    }
    if (w == sizeof words / sizeof words[0])
        return -1;
    if (n <= wl)
        return 0;
    if (p[wl] != ' ' && p[wl] != '\r') /* "ERRORS..." is no such line */
        return -1;
    for (i = wl; i < n && i <= MC_TEXT_LINE_MAX; i++) {
        if (p[i] == '\r') {
            if (i + 1 == n)
                return 0;
            if (p[i + 1] != '\n')
                return -1;
            *len = i;
            return 1;
        }
        if (p[i] < 0x20 || p[i] > 0x7e)
            return -1;
    }
    return i == n && i <= MC_TEXT_LINE_MAX ? 0 : -1; /* else too long */
}

int mc_head_check(const unsigned char *h, size_t max_body, char *err,
                  size_t errlen)
{
    uint16_t keylen = mc_load16(h + 2);
    uint8_t extlen = h[4];
    uint32_t body = mc_load32(h + 8);
    if (h[0] != MC_MAGIC_RESPONSE) {
        snprintf(err, errlen, "bad magic byte 0x%02x (expected 0x%02x)", h[0],
                 MC_MAGIC_RESPONSE);
        return -1;
    }
    if (body > max_body) {
        snprintf(err, errlen,
                 "declared body of %lu bytes exceeds the limit of %llu",
                 (unsigned long)body, (unsigned long long)max_body);
        return -1;
    }
    if ((uint32_t)extlen + keylen > body) {
        snprintf(err, errlen,
                 "extras (%u) + key (%u) exceed the body of %lu bytes",
                 (unsigned)extlen, (unsigned)keylen, (unsigned long)body);
        return -1;
    }
    return 0;
}

void mc_resp_split(const unsigned char *h, mc_resp *resp)
{
    uint16_t keylen = mc_load16(h + 2);
    uint8_t extlen = h[4];
    uint32_t body = mc_load32(h + 8);
    resp->opcode = h[1];
    resp->keylen = keylen;
    resp->extlen = extlen;
    resp->datatype = h[5];
    resp->status = mc_load16(h + 6);
    resp->bodylen = body;
    resp->opaque = mc_load32(h + 12);
    resp->cas = mc_load64(h + 16);
    resp->extras = (const char *)h + MC_HEADER_LEN;
    resp->key = resp->extras + extlen;
    resp->value = resp->key + keylen;
    resp->vallen = body - extlen - keylen;
    resp->flags = extlen >= 4 ? mc_load32(resp->extras) : 0;
}

int mc_reader_get(mc_reader *r, mc_resp *resp)
{
    const unsigned char *h;
    size_t unread, total;
    uint32_t body;

    if (r->failed)
        return MC_READ_ERROR;
    unread = r->len - r->pos;
    if (unread == 0)
        return MC_READ_MORE;

    /* Judge each part as soon as it is in: a stream out of step shows at its
     * first byte, and a hostile length must be refused on the header, not
     * after we have tried to buffer the body. */
    h = (const unsigned char *)r->buf + r->pos;
    if (h[0] != MC_MAGIC_RESPONSE) {
        size_t line;
        int t = text_error_line(h, unread, &line);
        if (t == 0)
            return MC_READ_MORE;
        if (t == 1) {
            r->server_text = 1;
            snprintf(r->errstr, sizeof r->errstr, "%.*s", (int)line,
                     (const char *)h);
            return reader_fail(r);
        }
        snprintf(r->errstr, sizeof r->errstr,
                 "bad magic byte 0x%02x (expected 0x%02x)", h[0],
                 MC_MAGIC_RESPONSE);
        return reader_fail(r);
    }
    if (unread < MC_HEADER_LEN)
        return MC_READ_MORE;
    body = mc_load32(h + 8);
    if (mc_head_check(h, r->max_body, r->errstr, sizeof r->errstr) != 0) {
        if (body > r->max_body)
            r->oversize = body;
        return reader_fail(r);
    }
    total = MC_HEADER_LEN + (size_t)body;
    if (unread < total)
        return MC_READ_MORE;

    mc_resp_split(h, resp);

    /* When everything is consumed, rewind for free instead of compacting
     * later; the bytes stay in place, so resp remains valid until the next
     * call as promised. */
    r->pos += total;
    if (r->pos == r->len)
        r->pos = r->len = 0;
    return MC_READ_ONE;
}

const char *mc_status_str(uint16_t status)
{
    switch (status) {
    case MC_STATUS_OK: return "ok";
    case MC_STATUS_KEY_ENOENT: return "key not found";
    case MC_STATUS_KEY_EEXISTS: return "key exists";
    case MC_STATUS_E2BIG: return "value too large";
    case MC_STATUS_EINVAL: return "invalid arguments";
    case MC_STATUS_NOT_STORED: return "item not stored";
    case MC_STATUS_DELTA_BADVAL: return "non-numeric value";
    case MC_STATUS_NOT_MY_VBUCKET: return "vbucket belongs to another server";
    case MC_STATUS_AUTH_ERROR: return "authentication error";
    case MC_STATUS_AUTH_CONTINUE: return "authentication continue";
    case MC_STATUS_UNKNOWN_COMMAND: return "unknown command";
    case MC_STATUS_ENOMEM: return "out of memory";
    case MC_STATUS_NOT_SUPPORTED: return "not supported";
    case MC_STATUS_EINTERNAL: return "internal error";
    case MC_STATUS_EBUSY: return "busy";
    case MC_STATUS_ETMPFAIL: return "temporary failure";
    default: return "unknown status";
    }
}

int mc_resp_shape_ok(const mc_resp *r)
{
    if (r->status != MC_STATUS_OK) {
        switch (r->opcode) {
        case MC_OP_GETK: /* a miss names its key */
        case MC_OP_GETKQ:
        case MC_OP_GATK:
        case MC_OP_GATKQ:
            return r->extlen == 0;
        default:
            return r->extlen == 0 && r->keylen == 0;
        }
    }
    switch (r->opcode) {
    case MC_OP_GET:
    case MC_OP_GETQ:
    case MC_OP_GAT:
    case MC_OP_GATQ:
        return r->extlen == 4 && r->keylen == 0;
    case MC_OP_GETK:
    case MC_OP_GETKQ:
    case MC_OP_GATK:
    case MC_OP_GATKQ:
        return r->extlen == 4 && r->keylen > 0;
    case MC_OP_INCREMENT:
    case MC_OP_DECREMENT:
    case MC_OP_INCREMENTQ:
    case MC_OP_DECREMENTQ:
        return r->extlen == 0 && r->keylen == 0 && r->vallen == 8;
    case MC_OP_STAT:
        return r->extlen == 0;
    case MC_OP_VERSION:
    case MC_OP_SASL_LIST_MECHS: /* the mechanisms, or a message, as text */
    case MC_OP_SASL_AUTH:
    case MC_OP_SASL_STEP:
        return r->extlen == 0 && r->keylen == 0;
    case MC_OP_TOUCH: /* memcached 1.6 sends the item's flags back */
        return (r->extlen == 0 || r->extlen == 4) && r->keylen == 0 &&
               r->vallen == 0;
    default: /* stores, deletes, touch, flush, noop, quit: nothing back */
        return r->extlen == 0 && r->keylen == 0 && r->vallen == 0;
    }
}

int mc_reader_error(const mc_reader *r)
{
    if (r->server_text)
        return MC_ERR_SERVER_ERROR;
    return r->oversize && r->oversize <= MC_PLAUSIBLE_BODY ? MC_ERR_TOO_LARGE
                                                          : MC_ERR_PROTOCOL;
}
