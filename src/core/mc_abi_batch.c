/* mc_abi_batch: the reply to one request, and one server's pipelined stream for a driver that moves its
 * own bytes (see mc_abi.h). The checks are mc_feed's; this file frames
 * the requests, keeps what each reply is checked against, and turns the
 * replies into entries. */
#include "mc_abi.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mc_buf.h"
#include "mc_error.h"
#include "mc_feed.h"
#include "mc_item.h"
#include "mc_proto.h"

/* What a reply is checked against: its request's opcode and where its
 * key lies in the framed requests. */
struct req {
    uint8_t opcode;
    uint16_t keylen;
    size_t keyoff;
};

struct mc_abi_batch {
    mc_batch b;
    mc_feed f;
    mc_reader in;
    mc_buf out;             /* the framed requests and the closing NOOP */
    enum mc_op_kind kind;
    uint32_t base;
    size_t n, cap;          /* requests added; room in reqs/server/replied */
    struct req *reqs;
    int *server;            /* all 0: mc_feed serves one server's stream */
    unsigned char *replied;
    mc_abi_entry *ents;     /* this feed's entries */
    size_t nents, entcap;
    int nomem;              /* an entry could not be stored */
};

static int has_key(uint8_t op)
{
    return op == MC_OP_GETK || op == MC_OP_GETKQ || op == MC_OP_GATK ||
           op == MC_OP_GATKQ;
}

static int reply_err(int kind, const mc_resp *r);

static int add_entry(mc_abi_batch *ab, size_t i, int err, const mc_resp *r)
{
    mc_abi_entry *e;
    if (ab->nents == ab->entcap) {
        size_t cap = ab->entcap ? ab->entcap * 2 : 64;
        mc_abi_entry *p = realloc(ab->ents, cap * sizeof(*p));
        if (!p)
            return -1;
        ab->ents = p;
        ab->entcap = cap;
    }
    e = &ab->ents[ab->nents++];
    e->idx = (uint32_t)i;
    e->err = err;
    e->status = r->status;
    e->flags = err ? 0 : r->flags;
    e->vlen = err ? 0 : (uint32_t)r->vallen;
    e->cas = (double)r->cas;
    e->value = err ? NULL : r->value;
    return 0;
}

/* mc_feed's reply callback: request i's reply, in order and framed as its
 * opcode requires. It must answer with i's opcode and, for a hit of a
 * keyed get, name i's key. */
static int on_reply(void *ud, size_t i, const mc_resp *r)
{
    mc_abi_batch *ab = ud;
    const struct req *q = &ab->reqs[i];
    int err = 0;
    if (r->opcode != q->opcode)
        return -1;
    if (has_key(q->opcode) &&
        !mc_reply_key_ok(r->status, r->key, r->keylen,
                         ab->out.data + q->keyoff, q->keylen))
        return -1;
    err = reply_err(ab->kind, r);
    if (add_entry(ab, i, err, r) != 0)
        ab->nomem = 1;
    return 0;
}

mc_abi_batch *mc_abi_batch_new(size_t max_body)
{
    mc_abi_batch *ab = calloc(1, sizeof(*ab));
    if (!ab)
        return NULL;
    mc_reader_init(&ab->in, max_body);
    ab->b.reply = on_reply;
    ab->b.ud = ab;
    return ab;
}

void mc_abi_batch_free(mc_abi_batch *ab)
{
    if (!ab)
        return;
    mc_reader_free(&ab->in);
    mc_buf_free(&ab->out);
    free(ab->reqs);
    free(ab->server);
    free(ab->replied);
    free(ab->ents);
    free(ab);
}

int mc_abi_batch_begin(mc_abi_batch *ab, uint32_t base, int kind,
                       int every_reply)
{
    if (kind < MC_KIND_GET || kind > MC_KIND_OTHER)
        return -1;
    ab->kind = (enum mc_op_kind)kind;
    ab->base = base;
    ab->n = 0;
    ab->nents = 0;
    ab->nomem = 0;
    ab->b.every_reply = every_reply ? 1 : 0;
    mc_buf_clear(&ab->out, MC_READER_KEEP);
    mc_reader_reset(&ab->in);
    return 0;
}

static int grow(mc_abi_batch *ab)
{
    size_t cap = ab->cap ? ab->cap * 2 : 16;
    struct req *q = realloc(ab->reqs, cap * sizeof(*q));
    int *s;
    unsigned char *rp;
    if (!q)
        return -1;
    ab->reqs = q;
    s = realloc(ab->server, cap * sizeof(*s));
    if (!s)
        return -1;
    ab->server = s;
    rp = realloc(ab->replied, cap);
    if (!rp)
        return -1;
    ab->replied = rp;
    memset(ab->server + ab->cap, 0, (cap - ab->cap) * sizeof(*s));
    ab->cap = cap;
    return 0;
}

int mc_abi_batch_add(mc_abi_batch *ab, int opcode, double cas,
                     const char *key, size_t keylen, int extras,
                     uint32_t flags, uint32_t exptime, const char *value,
                     size_t vallen)
{
    unsigned char ext[8];
    size_t at = ab->out.len;
    uint8_t extlen = extras == 1 ? 8u : extras == 2 ? 4u : 0u;
    struct req *q;
    if (opcode < 0 || opcode > 0xff || keylen > 0xffff ||
        (ab->n == ab->cap && grow(ab) != 0))
        return -1;
    if (extras == 2) {
        mc_store32(ext, exptime);
    } else {
        mc_store32(ext, flags);
        mc_store32(ext + 4, exptime);
    }
    if (mc_enc_request(&ab->out, (uint8_t)opcode, ab->base + (uint32_t)ab->n,
                       cas > 0 ? (uint64_t)cas : 0, ext, extlen, key, keylen,
                       value, vallen) != 0)
        return -1;
    q = &ab->reqs[ab->n];
    q->opcode = (uint8_t)opcode;
    q->keylen = (uint16_t)keylen;
    q->keyoff = at + MC_HEADER_LEN + extlen;
    return (int)ab->n++;
}

const char *mc_abi_batch_seal(mc_abi_batch *ab, size_t *len)
{
    if (mc_enc_simple(&ab->out, MC_OP_NOOP, ab->base + (uint32_t)ab->n) != 0)
        return NULL;
    ab->b.n = ab->n;
    ab->b.server = ab->server;
    if (ab->n)
        memset(ab->replied, 0, ab->n);
    mc_feed_init(&ab->f, &ab->b, 0, ab->base, ab->replied);
    *len = ab->out.len;
    return ab->out.data;
}

int mc_abi_batch_feed(mc_abi_batch *ab, const char *data, size_t len,
                      mc_abi_entry **out, int *nout, int *err, char *msg,
                      size_t msglen)
{
    int rc;
    ab->nents = 0;
    *out = NULL;
    *nout = 0;
    if (mc_reader_feed(&ab->in, data, len) != 0) {
        *err = MC_ERR_NOMEM;
        snprintf(msg, msglen, "out of memory reading the replies");
        return -1;
    }
    rc = mc_feed_take(&ab->f, &ab->in, err, msg, msglen);
    *out = ab->ents;
    *nout = (int)ab->nents;
    if (ab->nomem) {
        *err = MC_ERR_NOMEM;
        snprintf(msg, msglen, "out of memory reading the replies");
        return -1;
    }
    return rc == MC_FEED_DONE ? 1 : rc == MC_FEED_MORE ? 0 : -1;
}

/* An item's success, read for kind: delete_lock's marker is a miss. */
static int reply_err(int kind, const mc_resp *r)
{
    if (r->status != MC_STATUS_OK)
        return mc_status_err((enum mc_op_kind)kind, r->status);
    if (mc_is_lock(r->flags, r->value, r->vallen))
        return MC_ERR_CACHE_MISS;
    return 0;
}

int mc_abi_take_one(const char *p, size_t len, size_t max_body, int kind,
                    int opcode, uint32_t opaque, const char *key,
                    size_t keylen, mc_abi_reply *out, char *msg,
                    size_t msglen)
{
    const unsigned char *h = (const unsigned char *)p;
    mc_resp r;
    size_t total;
    if (len > 0 && h[0] != MC_MAGIC_RESPONSE)
        return -2;
    if (len < MC_HEADER_LEN) {
        out->need = MC_HEADER_LEN;
        return 0;
    }
    if (mc_head_check(h, max_body, msg, msglen) != 0) {
        /* a plausible body over the cap is an item too large for the
         * caller's max_value_size, as the reader says (mc_reader_error) */
        uint32_t body = mc_load32(h + 8);
        out->err = body > max_body && body <= MC_PLAUSIBLE_BODY
                       ? MC_ERR_TOO_LARGE
                       : MC_ERR_PROTOCOL;
        return -1;
    }
    total = MC_HEADER_LEN + (size_t)mc_load32(h + 8);
    out->need = (uint32_t)total;
    if (len < total)
        return 0;
    mc_resp_split(h, &r);
    if (kind < MC_KIND_GET || kind > MC_KIND_OTHER || opcode < 0 ||
        opcode > 0xff) {
        snprintf(msg, msglen, "unknown kind or opcode");
        out->err = MC_ERR_PROTOCOL;
        return -1;
    }
    out->err = mc_reply_check((uint8_t)opcode, opaque, &r, len > total, key,
                              keylen, msg, msglen);
    if (out->err != MC_OK)
        return -1;
    out->status = r.status;
    out->err = mc_status_is_auth(r.status) ? MC_ERR_AUTH : reply_err(kind, &r);
    out->flags = r.flags;
    out->cas = (double)r.cas;
    out->koff = (uint32_t)(r.key - p);
    out->klen = r.keylen;
    out->voff = (uint32_t)(r.value - p);
    out->vlen = (uint32_t)r.vallen;
    out->used = (uint32_t)total;
    return 1;
}
