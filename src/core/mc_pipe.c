#include "mc_pipe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mc_abi.h"
#include "mc_error.h"
#include "mc_proto.h"

/* Beyond this a buffer gives its room back once what it holds fits again:
 * one huge value must not pin memory for the life of a connection. */
#define KEEP_BYTES 65536

void mc_pipe_init(mc_pipe *p, size_t max_body)
{
    memset(p, 0, sizeof *p);
    p->max_body = max_body;
}

void mc_pipe_free(mc_pipe *p)
{
    mc_buf_free(&p->out);
    mc_buf_free(&p->in);
    free(p->q);
    p->q = NULL;
    p->cap = p->head = p->n = 0;
}

static mc_pipe_req *req_at(const mc_pipe *p, size_t i)
{
    return &p->q[(p->head + i) % p->cap];
}

/* A free place at the FIFO's tail (NULL: out of memory). */
static mc_pipe_req *tail_place(mc_pipe *p)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16, i;
        mc_pipe_req *q = malloc(cap * sizeof *q);
        if (!q)
            return NULL;
        for (i = 0; i < p->n; i++)
            q[i] = *req_at(p, i);
        free(p->q);
        p->q = q;
        p->cap = cap;
        p->head = 0;
    }
    return &p->q[(p->head + p->n) % p->cap];
}

/* Drops the bytes sent from the front of the output once they are at
 * least half of it, so that a connection that never empties its output
 * (partial sends under steady load) does not grow it without end. */
static void drop_sent(mc_pipe *p)
{
    size_t left;
    if (p->sent == 0 || p->sent < p->out.len / 2)
        return;
    left = p->out.len - p->sent;
    memmove(p->out.data, p->out.data + p->sent, left);
    p->out.len = left;
    p->sent = 0;
}

static int enqueue(mc_pipe *p, mc_pipe_req *r, int op, int kind,
                   uint32_t opaque, const char *key, size_t klen, int stream,
                   int ref)
{
    r->opaque = opaque;
    r->op = op;
    r->kind = kind;
    r->ref = ref;
    r->stream = stream;
    r->judged = 0;
    /* (the key rule, checked before any request is made, allows no longer
     * key than MC_PIPE_KEY_MAX) */
    r->klen = key && klen <= MC_PIPE_KEY_MAX ? klen : 0;
    if (r->klen)
        memcpy(r->key, key, klen);
    p->n++;
    return 0;
}

int mc_pipe_push(mc_pipe *p, const char *frame, size_t len, int op, int kind,
                 uint32_t opaque, const char *key, size_t klen, int stream,
                 int ref)
{
    mc_pipe_req *r = tail_place(p);
    drop_sent(p);
    if (!r || mc_buf_append(&p->out, frame, len) != 0)
        return -1;
    return enqueue(p, r, op, kind, opaque, key, klen, stream, ref);
}

int mc_pipe_push_enc(mc_pipe *p, int op, int kind, uint32_t opaque,
                     double cas, const char *key, size_t klen, int extras,
                     uint32_t flags, uint32_t exptime, const char *value,
                     size_t vlen, int keyed, int stream, int ref)
{
    mc_pipe_req *r = tail_place(p);
    size_t need = MC_HEADER_LEN + 8 + klen + vlen; /* 8: the most extras */
    int n;
    drop_sent(p);
    if (!r || need < vlen || mc_buf_reserve(&p->out, need) != 0)
        return -1;
    n = mc_abi_enc(p->out.data + p->out.len, p->out.cap - p->out.len, op,
                   opaque, cas, key, klen, extras, flags, exptime, value,
                   vlen);
    if (n < 0)
        return -1;
    p->out.len += (size_t)n;
    return enqueue(p, r, op, kind, opaque, keyed ? key : NULL, klen, stream,
                   ref);
}

int mc_pipe_write(mc_pipe *p, const char *bytes, size_t len)
{
    drop_sent(p);
    return mc_buf_append(&p->out, bytes, len);
}

const char *mc_pipe_out(const mc_pipe *p, size_t *len)
{
    *len = p->out.len - p->sent;
    return p->out.data + p->sent;
}

void mc_pipe_sent(mc_pipe *p, size_t n)
{
    p->sent += n;
    if (p->sent >= p->out.len) {
        p->sent = 0;
        mc_buf_clear(&p->out, KEEP_BYTES);
    }
}

char *mc_pipe_in(mc_pipe *p, size_t want, size_t *room)
{
    /* what is taken goes: all before the held reply, else before pos */
    size_t keep = p->holding ? p->held : p->pos;
    if (keep > 0) {
        size_t left = p->in.len - keep;
        if (left)
            memmove(p->in.data, p->in.data + keep, left);
        p->in.len = left;
        p->pos -= keep;
        if (p->holding)
            p->held = 0;
    }
    if (p->in.cap > KEEP_BYTES && p->in.len + want <= KEEP_BYTES) {
        /* a large reply has gone: give its room back */
        char *small = realloc(p->in.data, KEEP_BYTES);
        if (small) {
            p->in.data = small;
            p->in.cap = KEEP_BYTES;
        }
    }
    if (mc_buf_reserve(&p->in, want) != 0)
        return NULL;
    *room = p->in.cap - p->in.len;
    return p->in.data + p->in.len;
}

void mc_pipe_got(mc_pipe *p, size_t n)
{
    p->in.len += n;
}

static int fail(mc_pipe_ev *ev, int err, const char *why)
{
    ev->err = err;
    snprintf(ev->msg, sizeof ev->msg, "%s", why);
    return MC_PIPE_FAIL;
}

/* Judges r's reply, which starts at pos: 1 (judged: r->r, r->judged), or
 * MC_PIPE_NEED, MC_PIPE_FAIL, MC_PIPE_TEXT. */
static int judge(mc_pipe *p, mc_pipe_req *r, mc_pipe_ev *ev)
{
    const char *b = p->in.data + p->pos;
    size_t len = p->in.len - p->pos;
    const char *key = r->klen ? r->key : NULL;
    mc_abi_reply a;
    int rc;
    if (len == 0)
        return MC_PIPE_NEED;
    ev->msg[0] = '\0';
    if (len > MC_HEADER_LEN) {
        /* the next request's reply may follow: the header tells this
         * reply's length (its body's, bytes 8-11), and the core is shown
         * exactly that much; one that is not whole yet, or claims a body
         * over max_body, is shown its header alone first (which fails
         * the second at once) */
        const unsigned char *h = (const unsigned char *)b;
        size_t body = (size_t)h[8] << 24 | (size_t)h[9] << 16 |
                      (size_t)h[10] << 8 | (size_t)h[11];
        if (body <= p->max_body && body <= len - MC_HEADER_LEN) {
            rc = mc_abi_take_one(b, MC_HEADER_LEN + body, p->max_body,
                                 r->kind, r->op, r->opaque, key, r->klen, &a,
                                 ev->msg, sizeof ev->msg);
        } else {
            rc = mc_abi_take_one(b, MC_HEADER_LEN, p->max_body, r->kind,
                                 r->op, r->opaque, key, r->klen, &a, ev->msg,
                                 sizeof ev->msg);
            if (rc == 0 && a.need > len)
                return MC_PIPE_NEED;
            if (rc == 0)
                rc = mc_abi_take_one(b, a.need, p->max_body, r->kind, r->op,
                                     r->opaque, key, r->klen, &a, ev->msg,
                                     sizeof ev->msg);
        }
    } else {
        rc = mc_abi_take_one(b, len, p->max_body, r->kind, r->op, r->opaque,
                             key, r->klen, &a, ev->msg, sizeof ev->msg);
    }
    if (rc == 0)
        return MC_PIPE_NEED;
    if (rc == -2)
        return MC_PIPE_TEXT;
    if (rc < 0) {
        ev->err = a.err;
        return MC_PIPE_FAIL;
    }
    r->r.err = a.err;
    r->r.status = a.status;
    r->r.flags = a.flags;
    r->r.cas = a.cas;
    r->r.koff = a.koff;
    r->r.klen = a.klen;
    r->r.voff = a.voff;
    r->r.vlen = a.vlen;
    r->r.used = a.used;
    r->judged = 1;
    return 1;
}

/* ev: r's reply, which starts at `at` in the input */
static void fill(const mc_pipe *p, const mc_pipe_req *r, size_t at,
                 mc_pipe_ev *ev)
{
    const char *b = p->in.data + at;
    ev->ref = r->ref;
    ev->err = r->r.err;
    ev->status = r->r.status;
    ev->flags = r->r.flags;
    ev->cas = r->r.cas;
    ev->key = b + r->r.koff;
    ev->klen = r->r.klen;
    ev->value = b + r->r.voff;
    ev->vlen = r->r.vlen;
}

static void pop(mc_pipe *p)
{
    p->head = (p->head + 1) % p->cap;
    p->n--;
    p->holding = 0;
}

static int hand_over(mc_pipe *p, mc_pipe_ev *ev)
{
    fill(p, req_at(p, 0), p->held, ev);
    pop(p);
    return MC_PIPE_REPLY;
}

int mc_pipe_next(mc_pipe *p, mc_pipe_ev *ev)
{
    for (;;) {
        mc_pipe_req *h;
        int rc;
        if (p->n == 0) {
            if (p->pos < p->in.len)
                return fail(ev, MC_ERR_PROTOCOL,
                            "bytes after the last reply nobody asked for");
            return MC_PIPE_NEED;
        }
        h = req_at(p, 0);
        if (p->holding) {
            mc_pipe_req *next;
            if (p->n == 1) {
                if (p->pos < p->in.len)
                    return fail(ev, MC_ERR_PROTOCOL,
                                "bytes after the last reply nobody asked for");
                return hand_over(p, ev);
            }
            /* the held reply ended where the next one starts: in step */
            next = req_at(p, 1);
            if (!next->judged) {
                rc = judge(p, next, ev);
                if (rc == MC_PIPE_TEXT)
                    return fail(ev, MC_ERR_PROTOCOL,
                                "a reply runs into bytes that start no reply");
                if (rc != 1)
                    return rc;
            }
            return hand_over(p, ev);
        }
        if (!h->judged) {
            rc = judge(p, h, ev);
            if (rc != 1)
                return rc;
        }
        /* take its bytes */
        h->judged = 0;
        if (h->stream) {
            fill(p, h, p->pos, ev);
            p->pos += h->r.used;
            return MC_PIPE_ENTRY;
        }
        p->holding = 1;
        p->held = p->pos;
        p->pos += h->r.used;
    }
}

void mc_pipe_pop(mc_pipe *p)
{
    if (p->n)
        pop(p);
}

const char *mc_pipe_rest(mc_pipe *p, size_t *len)
{
    const char *r = p->in.data + p->pos;
    *len = p->in.len - p->pos;
    p->pos = p->in.len;
    return r;
}

int mc_pipe_ref(const mc_pipe *p, size_t i)
{
    return i < p->n ? req_at(p, i)->ref : 0;
}

void mc_pipe_reset(mc_pipe *p)
{
    p->n = p->head = 0;
    p->holding = 0;
    p->pos = p->held = 0;
    p->sent = 0;
    mc_buf_clear(&p->out, KEEP_BYTES);
    mc_buf_clear(&p->in, KEEP_BYTES);
}

int mc_pipe_clean(const mc_pipe *p)
{
    return p->n == 0 && p->sent == p->out.len && p->pos == p->in.len;
}
