/*
 * mc_error: the one table of the client's errors. Every failure, whether
 * the transport's (timeout, closed), the server's (a status read for one
 * kind of operation) or the caller's (a malformed key), is one enum value
 * with one stable short string, which the Lua face returns and exports as
 * memcached.ERR_<name>. No I/O, no Lua.
 */
#ifndef MC_ERROR_H
#define MC_ERROR_H

enum mc_err {
    MC_OK = 0,
    /* the server's answers, read per operation (mc_item) */
    MC_ERR_CACHE_MISS,
    MC_ERR_CAS_CONFLICT,
    MC_ERR_NOT_STORED,
    MC_ERR_SERVER_ERROR, /* a status with no other meaning, or a text error
                            line (ERROR, SERVER_ERROR, CLIENT_ERROR: e.g.
                            memcached at its connection limit) */
    MC_ERR_NON_NUMERIC,
    MC_ERR_AUTH,         /* the server demands authentication (it closes the
                            connection; the server is healthy) */
    MC_ERR_NO_STATS,
    /* the caller's */
    MC_ERR_MALFORMED_KEY,
    MC_ERR_UNENCODABLE,
    MC_ERR_BAD_SERVER,
    MC_ERR_CLIENT_CLOSED,
    /* the transport's and the servers' health */
    MC_ERR_TIMEOUT,      /* deadline passed */
    MC_ERR_CLOSED,       /* peer closed or reset the connection */
    MC_ERR_REFUSED,      /* connect refused */
    MC_ERR_IO,           /* any other socket error */
    MC_ERR_PROTOCOL,     /* the byte stream is not a valid reply to us */
    MC_ERR_NOMEM,        /* out of memory */
    MC_ERR_NO_SERVERS,   /* nothing to send to */
    MC_ERR_SERVER_DEAD,  /* the server is marked dead and ejection is off */
    MC_ERR_BUSY,         /* all max_conns connections are in use */
    MC_ERR_TOO_LARGE,    /* a value or reply over the configured cap (a
                            reply's connection is closed; the server is
                            healthy) */
    MC_ERR_UNDECODABLE,
    MC_ERR_TLS,          /* TLS was asked for and did not hold: the handshake
                            or the server's certificate failed (unknown CA,
                            wrong name, expired, no client certificate), or
                            the server does not speak TLS; the detail has
                            OpenSSL's reason. Like MC_ERR_AUTH, the two ends
                            disagree: no failure of the server */
    MC_ERR_COUNT
};

/* The error's stable short string ("cache miss"); "ok" for MC_OK. */
const char *mc_err_str(int err);
/* The name it is exported under, without the ERR_ prefix ("CACHE_MISS");
 * NULL for MC_OK and for values outside the table. */
const char *mc_err_const(int err);

#endif
