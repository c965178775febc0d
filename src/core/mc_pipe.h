/*
 * mc_pipe: one connection's pipelined requests, without I/O. Requests of
 * many callers go out back to back; their replies come back in the same
 * order. The pipe holds the bytes to send, the bytes read and not yet
 * taken, and the FIFO of what each request in flight expects (opcode,
 * opaque, the kind of operation, a keyed get's key), and judges every
 * reply once against the request at the FIFO's head (mc_abi_take_one).
 *
 * A reply is handed over only once the stream after it is seen in step:
 * the next request's reply whole and judged good, or, for the last
 * request, nothing after it. Until then it is held. So a reply whose
 * declared length swallowed the start of the next one (cut short, or a
 * length byte damaged) fails the whole pipe instead of reaching its
 * caller with foreign bytes.
 *
 * A STAT stream's request takes every reply up to the one with an empty
 * key, each handed over as an entry; its caller says when it ended
 * (mc_pipe_pop).
 */
#ifndef MC_PIPE_H
#define MC_PIPE_H

#include <stddef.h>
#include <stdint.h>

#include "mc_buf.h"

#define MC_PIPE_KEY_MAX 250

typedef struct mc_pipe_req {
    uint32_t opaque;
    int op, kind;
    int ref;    /* the driver's handle on the caller */
    int stream; /* a STAT stream */
    int judged; /* its reply is judged (r), not yet taken */
    size_t klen; /* a keyed get's key (else 0 and no check) */
    char key[MC_PIPE_KEY_MAX];
    struct {
        int err, status;
        uint32_t flags;
        double cas;
        uint32_t koff, klen, voff, vlen, used;
    } r;
} mc_pipe_req;

typedef struct mc_pipe {
    mc_buf out;  /* framed, not yet sent from sent on */
    size_t sent;
    mc_buf in;   /* read, taken up to pos */
    size_t pos;
    size_t held; /* the held reply's start in `in` (when holding) */
    int holding; /* the head's reply is judged and waits for the next */
    mc_pipe_req *q; /* FIFO ring: head .. head + n - 1, mod cap */
    size_t cap, head, n;
    size_t max_body;
} mc_pipe;

/* What mc_pipe_next found. */
enum {
    MC_PIPE_NEED = 0,   /* more bytes must be read */
    MC_PIPE_REPLY = 1,  /* the head's reply, handed over (head popped) */
    MC_PIPE_ENTRY = 2,  /* an entry of the head's STAT stream */
    MC_PIPE_FAIL = -1,  /* the stream is wrong: fail the whole pipe */
    MC_PIPE_TEXT = -2   /* a text line where the head's reply should start */
};

typedef struct mc_pipe_ev {
    int ref, err, status;
    uint32_t flags;
    double cas;
    const char *key, *value; /* in the pipe's input: valid until it is fed */
    size_t klen, vlen;
    char msg[256]; /* MC_PIPE_FAIL: why; err: the enum mc_err number */
} mc_pipe_ev;

void mc_pipe_init(mc_pipe *p, size_t max_body);
void mc_pipe_free(mc_pipe *p);

/* A request in flight: its frame (len bytes) goes out after those before
 * it; its reply is judged as op/kind under opaque (key: a keyed get's,
 * else NULL). 0, or -1 when memory ran out (nothing changed). */
int mc_pipe_push(mc_pipe *p, const char *frame, size_t len, int op, int kind,
                 uint32_t opaque, const char *key, size_t klen, int stream,
                 int ref);
/* Frames the request itself (mc_abi_enc's arguments) and pushes it. 0, or
 * -1 (out of memory, or a request too large to frame). */
int mc_pipe_push_enc(mc_pipe *p, int op, int kind, uint32_t opaque,
                     double cas, const char *key, size_t klen, int extras,
                     uint32_t flags, uint32_t exptime, const char *value,
                     size_t vlen, int keyed, int stream, int ref);
/* Bytes that go out with no request of the pipe's (a batch on a
 * connection of its own). 0 or -1. */
int mc_pipe_write(mc_pipe *p, const char *bytes, size_t len);

/* The bytes to send next (*len of them, 0: none), and how many went. */
const char *mc_pipe_out(const mc_pipe *p, size_t *len);
void mc_pipe_sent(mc_pipe *p, size_t n);

/* Room for at least want bytes to read into (*room of them), or NULL when
 * memory ran out; then mc_pipe_got with how many came. Pointers an event
 * gave are void after mc_pipe_in. */
char *mc_pipe_in(mc_pipe *p, size_t want, size_t *room);
void mc_pipe_got(mc_pipe *p, size_t n);

/* The next thing the bytes read say (MC_PIPE_*), in ev. */
int mc_pipe_next(mc_pipe *p, mc_pipe_ev *ev);
/* Ends the head's STAT stream (its caller saw the last entry). */
void mc_pipe_pop(mc_pipe *p);

/* The bytes read and not taken (a text line's, MC_PIPE_TEXT), taken. */
const char *mc_pipe_rest(mc_pipe *p, size_t *len);

/* The ref of the i-th request in flight (0: the head). */
int mc_pipe_ref(const mc_pipe *p, size_t i);
/* Forgets everything: the requests, the bytes either way. */
void mc_pipe_reset(mc_pipe *p);
/* 1 when nothing is in flight, unsent or unread. */
int mc_pipe_clean(const mc_pipe *p);

#endif
