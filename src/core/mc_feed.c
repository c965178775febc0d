/* mc_feed: a pipelined batch without I/O (see mc_feed.h). */
#include "mc_feed.h"

#include <stdio.h>

#include "mc_error.h"
#include "mc_item.h"

void mc_feed_init(mc_feed *f, const mc_batch *b, int srv, uint32_t base,
                  unsigned char *replied)
{
    f->b = b;
    f->srv = srv;
    f->base = base;
    f->next = 0;
    f->got = 0;
    f->replied = replied;
}

static const mc_codec *codec_of(const mc_batch *b)
{
    return b->codec ? b->codec : &mc_codec_binary;
}

int mc_feed_plan(const mc_feed *f, mc_buf *out)
{
    const mc_batch *b = f->b;
    size_t k;
    for (k = 0; k < b->n; k++)
        if (b->server[k] == f->srv &&
            b->encode(b->ud, k, out, f->base + (uint32_t)k) != 0)
            return -1;
    return codec_of(b)->simple(out, MC_OP_NOOP, f->base + (uint32_t)b->n);
}

static int failed(int *err, int e, char *msg, size_t msglen, const char *why)
{
    *err = e;
    snprintf(msg, msglen, "%s", why);
    return MC_FEED_FAILED;
}

int mc_feed_take(mc_feed *f, mc_reader *in, int *err, char *msg,
                 size_t msglen)
{
    const mc_batch *b = f->b;
    mc_resp r;
    char why[200];

    for (;;) {
        int rc = codec_of(b)->read(in, &r);
        uint32_t off;
        if (rc == MC_READ_MORE)
            return MC_FEED_MORE;
        if (rc == MC_READ_ERROR)
            return failed(err, mc_reader_error(in), msg, msglen, in->errstr);
        f->got = 1;
        if (mc_status_is_auth(r.status)) {
            /* the server refuses this connection (and closes it): none of
             * its requests will be served, whichever one it answered */
            snprintf(why, sizeof(why), "%s: %.*s", mc_status_str(r.status),
                     (int)(r.vallen > 100 ? 100 : r.vallen), r.value);
            return failed(err, MC_ERR_AUTH, msg, msglen, why);
        }
        off = r.opaque - f->base;
        if (b->every_reply) /* the next request of this server's, in order */
            while (f->next < b->n && b->server[f->next] != f->srv)
                f->next++;
        if (r.opcode == MC_OP_NOOP && off == b->n) {
            if (b->every_reply && f->next < b->n)
                return failed(err, MC_ERR_PROTOCOL, msg, msglen,
                              "the batch ended with requests unanswered");
            if (mc_reader_pending(in))
                return failed(err, MC_ERR_PROTOCOL, msg, msglen,
                              "bytes after the batch's last reply");
            return MC_FEED_DONE;
        }
        if (!mc_resp_shape_ok(&r))
            return failed(err, MC_ERR_PROTOCOL, msg, msglen,
                          "reply framed wrongly for its opcode");
        if (off >= b->n || off < f->next || b->server[off] != f->srv ||
            (b->every_reply && off != f->next)) {
            snprintf(why, sizeof(why),
                     "reply with opaque %u answers no pending request",
                     r.opaque);
            return failed(err, MC_ERR_PROTOCOL, msg, msglen, why);
        }
        if (b->reply(b->ud, off, &r) != 0) {
            snprintf(why, sizeof(why),
                     "reply with opaque %u does not match its request",
                     r.opaque);
            return failed(err, MC_ERR_PROTOCOL, msg, msglen, why);
        }
        f->replied[off] = 1;
        f->next = off + 1;
    }
}
