/*
 * mc_proto: memcached's binary protocol as a codec with no I/O.
 *
 * Requests are appended to an mc_buf. Responses come out of an mc_reader
 * that is fed bytes in chunks of any size; mc_reader_get answers "need more",
 * "one response" or "protocol error", never mixing them up. Nothing here
 * touches a socket, errno or Lua, and a reader in steady state does not
 * allocate per response (its buffer is reused).
 *
 * Reference: memcached's BinaryProtocolRevamped and protocol_binary.h.
 */
#ifndef MC_PROTO_H
#define MC_PROTO_H

#include <stddef.h>
#include <stdint.h>

#include "mc_buf.h"

#define MC_MAGIC_REQUEST 0x80
#define MC_MAGIC_RESPONSE 0x81
#define MC_HEADER_LEN 24
/* Default cap on a response body; a larger declared length is a protocol
 * error, not an allocation. */
#define MC_DEFAULT_MAX_BODY (64u * 1024 * 1024)
/* memcached refuses items over 1 GiB (-I); a longer declared body is not an
 * item at all but a stream out of step. */
#define MC_PLAUSIBLE_BODY ((1u << 30) + (1u << 20))
/* Expiration value of INCREMENT/DECREMENT meaning "do not create". */
#define MC_ARITH_NO_CREATE 0xffffffffu

enum mc_opcode {
    MC_OP_GET = 0x00,
    MC_OP_SET = 0x01,
    MC_OP_ADD = 0x02,
    MC_OP_REPLACE = 0x03,
    MC_OP_DELETE = 0x04,
    MC_OP_INCREMENT = 0x05,
    MC_OP_DECREMENT = 0x06,
    MC_OP_QUIT = 0x07,
    MC_OP_FLUSH = 0x08,
    MC_OP_GETQ = 0x09,
    MC_OP_NOOP = 0x0a,
    MC_OP_VERSION = 0x0b,
    MC_OP_GETK = 0x0c,
    MC_OP_GETKQ = 0x0d,
    MC_OP_APPEND = 0x0e,
    MC_OP_PREPEND = 0x0f,
    MC_OP_STAT = 0x10,
    MC_OP_SETQ = 0x11,
    MC_OP_ADDQ = 0x12,
    MC_OP_REPLACEQ = 0x13,
    MC_OP_DELETEQ = 0x14,
    MC_OP_INCREMENTQ = 0x15,
    MC_OP_DECREMENTQ = 0x16,
    MC_OP_QUITQ = 0x17,
    MC_OP_FLUSHQ = 0x18,
    MC_OP_APPENDQ = 0x19,
    MC_OP_PREPENDQ = 0x1a,
    MC_OP_TOUCH = 0x1c,
    MC_OP_SASL_LIST_MECHS = 0x20, /* SASL: see mc_sasl.h */
    MC_OP_SASL_AUTH = 0x21,
    MC_OP_SASL_STEP = 0x22,
    MC_OP_GAT = 0x1d,
    MC_OP_GATQ = 0x1e,
    MC_OP_GATK = 0x23,
    MC_OP_GATKQ = 0x24
};

enum mc_status {
    MC_STATUS_OK = 0x00,
    MC_STATUS_KEY_ENOENT = 0x01,
    MC_STATUS_KEY_EEXISTS = 0x02,
    MC_STATUS_E2BIG = 0x03,
    MC_STATUS_EINVAL = 0x04,
    MC_STATUS_NOT_STORED = 0x05,
    MC_STATUS_DELTA_BADVAL = 0x06,
    MC_STATUS_NOT_MY_VBUCKET = 0x07,
    MC_STATUS_AUTH_ERROR = 0x20,
    MC_STATUS_AUTH_CONTINUE = 0x21,
    MC_STATUS_UNKNOWN_COMMAND = 0x81,
    MC_STATUS_ENOMEM = 0x82,
    MC_STATUS_NOT_SUPPORTED = 0x83,
    MC_STATUS_EINTERNAL = 0x84,
    MC_STATUS_EBUSY = 0x85,
    MC_STATUS_ETMPFAIL = 0x86
};

/* ---- requests ------------------------------------------------------------
 * Each encoder appends one whole request to b and returns 0, or -1 when
 * memory ran out or the key (> 65535 bytes) or body (> 4 GiB) cannot be
 * framed (b is then left as it was). Key lengths are not checked
 * here beyond fitting the header field; the caller validates keys. */

/* The general form; the helpers below fill in the extras. */
int mc_enc_request(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                   const void *extras, uint8_t extlen,
                   const char *key, size_t keylen,
                   const void *value, size_t vallen);

/* GET, GETQ, GETK, GETKQ */
int mc_enc_get(mc_buf *b, uint8_t opcode, uint32_t opaque,
               const char *key, size_t keylen);

/* SET, ADD, REPLACE and their quiet forms: extras are flags + expiration. */
int mc_enc_store(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                 const char *key, size_t keylen, uint32_t flags,
                 uint32_t exptime, const void *value, size_t vallen);

/* The same with the value given as prefix + value (plen < 64 KiB). */
int mc_enc_store2(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen, uint32_t flags,
                  uint32_t exptime, const void *prefix, size_t plen,
                  const void *value, size_t vallen);

/* APPEND, PREPEND and their quiet forms: no extras. */
int mc_enc_concat(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen,
                  const void *value, size_t vallen);

/* DELETE, DELETEQ */
int mc_enc_delete(mc_buf *b, uint8_t opcode, uint32_t opaque, uint64_t cas,
                  const char *key, size_t keylen);

/* INCREMENT, DECREMENT and quiet forms. exptime MC_ARITH_NO_CREATE means a
 * missing key is not created. */
int mc_enc_arith(mc_buf *b, uint8_t opcode, uint32_t opaque,
                 const char *key, size_t keylen, uint64_t delta,
                 uint64_t initial, uint32_t exptime);

/* TOUCH, GAT, GATQ, GATK, GATKQ: extras are the new expiration. */
int mc_enc_touch(mc_buf *b, uint8_t opcode, uint32_t opaque,
                 const char *key, size_t keylen, uint32_t exptime);

/* FLUSH, FLUSHQ; delay 0 sends no extras (flush now). */
int mc_enc_flush(mc_buf *b, uint8_t opcode, uint32_t opaque, uint32_t delay);

/* NOOP, VERSION, QUIT, QUITQ: header only. */
int mc_enc_simple(mc_buf *b, uint8_t opcode, uint32_t opaque);

/* STAT with an optional group (NULL/0 for the general statistics). */
int mc_enc_stat(mc_buf *b, uint32_t opaque, const char *group, size_t len);

/* Where to end a write of at most max bytes of the n bytes at p, which
 * begin with whole framed requests, so that it ends where a request ends:
 * the length of the longest run of whole requests that fits in max; the
 * first request's length when it alone is longer (at most n); n when the
 * bytes do not begin with a whole frame. Never 0 for n > 0. */
size_t mc_req_cut(const char *p, size_t n, size_t max);

/* ---- responses ---------------------------------------------------------- */

/* One response. Pointers point into the reader's buffer and stay valid until
 * the next call on that reader (feed, space, get, reset). */
typedef struct mc_resp {
    uint8_t opcode;
    uint8_t datatype;
    uint16_t status;
    uint32_t opaque;
    uint64_t cas;
    uint8_t extlen;
    uint16_t keylen;
    uint32_t bodylen;
    const char *extras; /* extlen bytes */
    const char *key;    /* keylen bytes */
    const char *value;  /* vallen bytes = bodylen - extlen - keylen */
    size_t vallen;
    uint32_t flags;     /* first 4 bytes of extras when extlen >= 4, else 0 */
} mc_resp;

enum mc_read_result {
    MC_READ_ERROR = -1, /* protocol error: see reader->errstr; the stream is unusable */
    MC_READ_MORE = 0,   /* need more bytes */
    MC_READ_ONE = 1     /* *resp holds one response */
};

typedef struct mc_reader {
    char *buf;
    size_t cap;
    size_t pos;      /* first unconsumed byte */
    size_t len;      /* bytes held (consumed + unconsumed) */
    size_t max_body; /* larger declared bodies are protocol errors */
    int failed;      /* sticky: once an error is seen, get keeps failing */
    uint32_t oversize; /* when the error was a body over max_body: its
                          declared length (else 0) */
    int server_text;   /* when the error was a text error line from the
                          server (errstr holds the line), else 0 */
    char errstr[128];
} mc_reader;

/* mc_reader_reset keeps storage up to this size; a buffer that grew past it
 * for one large value is released instead of pinned for the connection's
 * life. */
#define MC_READER_KEEP (64u * 1024)

/* max_body 0 means MC_DEFAULT_MAX_BODY. */
void mc_reader_init(mc_reader *r, size_t max_body);
void mc_reader_free(mc_reader *r);
/* Forgets all bytes and any error; keeps (bounded) storage. */
void mc_reader_reset(mc_reader *r);

/* Copies n bytes in. Returns 0, or -1 when memory ran out. */
int mc_reader_feed(mc_reader *r, const char *p, size_t n);

/* Zero-copy feeding: returns a pointer to at least `min` writable bytes
 * (NULL when memory ran out) and stores the writable size in *avail; after
 * writing n bytes there, call mc_reader_commit(r, n). */
char *mc_reader_space_slow(mc_reader *r, size_t min, size_t *avail);
static inline char *mc_reader_space(mc_reader *r, size_t min, size_t *avail)
{
    /* empty (the usual case before a reply): no frame to make room for */
    if (r->len == 0 && r->cap >= min && min) {
        *avail = r->cap;
        return r->buf;
    }
    return mc_reader_space_slow(r, min, avail);
}
static inline void mc_reader_commit(mc_reader *r, size_t n)
{
    if (n > r->cap - r->len)
        n = r->cap - r->len;
    r->len += n;
}

/* Takes the next whole response out of the buffer. Checks the magic, that
 * extlen + keylen <= bodylen, and bodylen <= max_body.
 * memcached answers some failures with a text line even on a binary
 * connection (at its connection limit: "ERROR Too many open connections\r\n",
 * then it closes). Where a response should begin, a line starting with
 * ERROR, SERVER_ERROR or CLIENT_ERROR, printable and at most
 * MC_TEXT_LINE_MAX bytes up to its CRLF, is MC_READ_ERROR with server_text
 * set and the line (without CRLF, cut to fit) in errstr; what could still
 * become such a line is MC_READ_MORE. Any other byte there is a protocol
 * error. */
#define MC_TEXT_LINE_MAX 256
int mc_reader_get(mc_reader *r, mc_resp *resp);

/* The checks a reply's 24-byte header must pass before its body is read
 * (the reader's own, for a driver that reads the body itself): the
 * response magic, a body of at most max_body bytes, extras + key within
 * it. 0, or -1 with why in err. */
int mc_head_check(const unsigned char *h, size_t max_body, char *err,
                  size_t errlen);

/* Splits a whole reply frame at h, its header checked (mc_head_check),
 * into resp (pointing into the frame). */
void mc_resp_split(const unsigned char *h, mc_resp *resp);

/* Bytes received but not yet taken out by mc_reader_get. */
static inline size_t mc_reader_pending(const mc_reader *r)
{
    return r->len - r->pos;
}

/* True when the reply has the shape its opcode and status call for (a
 * successful GET carries 4 bytes of flags and no key, a counter 8 bytes of
 * value, an error reply no extras and no key, ...). A reply of the wrong
 * shape means the stream is framed wrongly, and its value is not to be
 * trusted. */
int mc_resp_shape_ok(const mc_resp *r);

/* Short stable name of a status ("key not found", ...), for messages. */
const char *mc_status_str(uint16_t status);

/* Big-endian helpers shared by the codec and its users. */
static inline uint16_t mc_load16(const void *p)
{
    const unsigned char *b = p;
    return (uint16_t)((b[0] << 8) | b[1]);
}
static inline uint32_t mc_load32(const void *p)
{
    const unsigned char *b = p;
    return ((uint32_t)b[0] << 24) | ((uint32_t)b[1] << 16) |
           ((uint32_t)b[2] << 8) | b[3];
}
static inline uint64_t mc_load64(const void *p)
{
    const unsigned char *b = p;
    return ((uint64_t)mc_load32(b) << 32) | mc_load32(b + 4);
}
static inline void mc_store16(void *p, uint16_t v)
{
    unsigned char *b = p;
    b[0] = (unsigned char)(v >> 8);
    b[1] = (unsigned char)v;
}
static inline void mc_store32(void *p, uint32_t v)
{
    unsigned char *b = p;
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}
static inline void mc_store64(void *p, uint64_t v)
{
    mc_store32(p, (uint32_t)(v >> 32));
    mc_store32((unsigned char *)p + 4, (uint32_t)v);
}

/* The error (mc_error.h) a failed reader stands for: MC_ERR_SERVER_ERROR
 * for a server's text error line, MC_ERR_TOO_LARGE for a plausible item
 * over the configured cap, else MC_ERR_PROTOCOL. */
int mc_reader_error(const mc_reader *r);

#endif
