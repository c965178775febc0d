/*
 * mc_tls: TLS (OpenSSL) as a transport under the driver (mc_transport.h).
 *
 * A client that asks for TLS has one mc_tls_ctx: the trust store, its own
 * certificate if it has one, the protocol floor, the ciphers. A new
 * connection is connected as usual (mc_conn), then mc_tls_start puts an
 * SSL object on its socket and swaps its transport for TLS, and
 * mc_tls_handshake completes the handshake against a deadline, waiting
 * at the connection's wait point (mc_wait.h): it never blocks in the
 * kernel, so an event loop's hook sees every wait. From then on every
 * send, recv and close of the connection goes through OpenSSL; the plain
 * transport is untouched, so connections without TLS pay nothing for it.
 *
 * Verification is on unless the options turn it off: the chain must lead
 * to a trusted CA (the system's store unless ca_file/ca_path are given),
 * and the certificate must name the server: by DNS name (the server_name
 * option, else the host part of the address; sent as SNI too) or, for an
 * IP address, by an IP entry of the certificate. A unix socket has no host
 * to check: without server_name only the chain is verified.
 *
 * Sessions: each server keeps the last session ticket it gave (a slot in
 * mc_server), and a new connection to it offers that ticket, so a
 * reconnect costs an abbreviated handshake (no certificate exchange or
 * verification). TLS 1.3 tickets arrive after the handshake, with the
 * first reply; the slot is filled then.
 *
 * Errors: a handshake or certificate that fails is MC_ERR_TLS with
 * OpenSSL's reason ("certificate verify failed: certificate has expired",
 * "... Hostname mismatch", "wrong version number" for a server that does
 * not speak TLS, "tlsv13 alert certificate required" for a server that
 * wants a client certificate); a handshake that runs out of time is
 * MC_ERR_TIMEOUT, one the server cuts off MC_ERR_CLOSED. After the
 * handshake, a record that does not decrypt is MC_ERR_TLS (the transport
 * reports it as EPROTO, with its reason through mc_transport.why).
 */
#ifndef MC_TLS_H
#define MC_TLS_H

#include <stddef.h>

#include "mc_deadline.h"

struct mc_conn;
struct ssl_session_st; /* OpenSSL's SSL_SESSION */

typedef struct mc_tls_opts {
    const char *ca_file;     /* PEM bundle of trusted CAs (NULL: system) */
    const char *ca_path;     /* hashed directory of CAs (NULL: system) */
    const char *cert_file;   /* client certificate chain, PEM (NULL: none) */
    const char *key_file;    /* its key, PEM (NULL: in cert_file) */
    const char *server_name; /* the name to verify and send as SNI (NULL:
                                each server's host) */
    const char *ciphers;     /* OpenSSL cipher list for TLS 1.2 (NULL:
                                OpenSSL's default) */
    int verify;              /* check chain and name (1), or not (0) */
    int min_version;         /* 12 (TLS 1.2, the default) or 13 */
} mc_tls_opts;

typedef struct mc_tls_ctx mc_tls_ctx;

/* Builds the context: reads the CA store, the client certificate and key.
 * NULL with why in err (a file that cannot be read, a key that does not
 * match its certificate, an unknown cipher list, out of memory). */
mc_tls_ctx *mc_tls_ctx_new(const mc_tls_opts *o, char *err, size_t errlen);
void mc_tls_ctx_free(mc_tls_ctx *t);

/* Puts TLS on a connected connection: its transport becomes TLS. host:
 * the server's host (NULL for a unix socket) unless the context names
 * one. slot: where the server keeps its session (offered when set,
 * replaced when the server sends a new one); it must outlive the
 * connection. MC_OK, or an error with why in msg (the connection is
 * still the caller's to close). */
int mc_tls_start(struct mc_conn *c, const mc_tls_ctx *t, const char *host,
                 struct ssl_session_st **slot, char *msg, size_t msglen);

/* Runs the handshake until it completes or the deadline passes. MC_OK, or
 * MC_ERR_TLS / MC_ERR_TIMEOUT / MC_ERR_CLOSED / MC_ERR_IO with msg. */
int mc_tls_handshake(struct mc_conn *c, const mc_deadline *d, char *msg,
                     size_t msglen);

/* One step of the handshake, never waiting: MC_OK when it is complete;
 * MC_TLS_AGAIN when it must wait for the socket to be ready for *want
 * (POLLIN/POLLOUT), then be called again; else MC_ERR_TLS /
 * MC_ERR_CLOSED / MC_ERR_IO with msg. For a driver that does its own
 * waiting and keeps its own deadline (memcached.core, an event loop's
 * hook); mc_tls_handshake is this in a loop at the wait point. */
#define MC_TLS_AGAIN (-1)
int mc_tls_handshake_step(struct mc_conn *c, short *want, char *msg,
                          size_t msglen);

/* 1 when the connection's handshake resumed an earlier session. */
int mc_tls_resumed(const struct mc_conn *c);

/* Frees a server's session slot (NULL is fine). */
void mc_tls_session_free(struct ssl_session_st *s);

#endif
