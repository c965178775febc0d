/*
 * mc_sasl: SASL PLAIN over the binary protocol, as frames and rules with
 * no I/O. A connection made with credentials authenticates before its
 * first request; the driver (mc_pool, at connect time) sends what these
 * functions frame and hands each reply back to be judged:
 *
 *   1. SASL_LIST_MECHS (0x20), no key, no value. The reply's value is the
 *      server's mechanisms, separated by spaces ("PLAIN CRAM-MD5").
 *   2. SASL_AUTH (0x21), key "PLAIN", value "\0user\0pass" (RFC 4616: an
 *      empty authorization identity, then the user and the password).
 *      Status 0 is success; 0x20 is refused credentials.
 *
 * Credentials are only sent to a server that offers PLAIN: one that does
 * not (no SASL at all, or other mechanisms only) fails the connection with
 * MC_ERR_AUTH rather than letting it be used unauthenticated. PLAIN sends
 * the password as it is; over a network that others can read, use it
 * with TLS.
 */
#ifndef MC_SASL_H
#define MC_SASL_H

#include <stddef.h>
#include <stdint.h>

#include "mc_buf.h"
#include "mc_proto.h"

/* The longest user name or password framed (memcached's own limit for a
 * whole SASL exchange is 1 KiB of data). */
#define MC_SASL_MAX 255

/* Appends a SASL_LIST_MECHS request. 0, or -1 out of memory. */
int mc_sasl_enc_list(mc_buf *b, uint32_t opaque);

/* Appends a SASL_AUTH request for PLAIN with these credentials. 0, or -1
 * out of memory, or when either is longer than MC_SASL_MAX or holds a NUL
 * byte (PLAIN separates its fields with NUL); b is then left as it was. */
int mc_sasl_enc_plain(mc_buf *b, uint32_t opaque, const char *user,
                      size_t ulen, const char *pass, size_t plen);

/* True when the space-separated list names the mechanism (exact,
 * case-sensitive: SASL names are upper case). */
int mc_sasl_has_mech(const char *list, size_t len, const char *mech);

/* Judges the reply r to the request (opcode MC_OP_SASL_LIST_MECHS or
 * MC_OP_SASL_AUTH) sent with `opaque`; pending: bytes after it were
 * already received. MC_OK when the exchange may go on (LIST_MECHS offers
 * PLAIN) or is done (AUTH succeeded). Else an error with why in msg:
 * MC_ERR_PROTOCOL for a reply that is not an answer to the request (wrong
 * opcode or opaque, bytes after it, wrong shape), MC_ERR_AUTH for a server
 * that refuses the credentials, offers no PLAIN, knows no SASL, or asks
 * for another step (PLAIN has one). */
int mc_sasl_check(uint8_t opcode, uint32_t opaque, const mc_resp *r,
                  int pending, char *msg, size_t msglen);

#endif
