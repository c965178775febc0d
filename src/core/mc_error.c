/* mc_error: the one table of errors (see mc_error.h). */
#include <stddef.h>

#include "mc_error.h"

static const struct {
    const char *name; /* memcached.ERR_<name> */
    const char *str;  /* its value */
} table[MC_ERR_COUNT] = {
    [MC_OK] = {NULL, "ok"},
    [MC_ERR_CACHE_MISS] = {"CACHE_MISS", "cache miss"},
    [MC_ERR_CAS_CONFLICT] = {"CAS_CONFLICT", "compare-and-swap conflict"},
    [MC_ERR_NOT_STORED] = {"NOT_STORED", "item not stored"},
    [MC_ERR_SERVER_ERROR] = {"SERVER_ERROR", "server error"},
    [MC_ERR_NON_NUMERIC] = {"NON_NUMERIC", "non-numeric value"},
    [MC_ERR_AUTH] = {"AUTH", "authentication error"},
    [MC_ERR_NO_STATS] = {"NO_STATS", "no statistics available"},
    [MC_ERR_MALFORMED_KEY] = {"MALFORMED_KEY", "malformed key"},
    [MC_ERR_UNENCODABLE] = {"UNENCODABLE", "unencodable value"},
    [MC_ERR_BAD_SERVER] = {"BAD_SERVER", "bad server address"},
    [MC_ERR_CLIENT_CLOSED] = {"CLIENT_CLOSED", "client closed"},
    [MC_ERR_TIMEOUT] = {"TIMEOUT", "timeout"},
    [MC_ERR_CLOSED] = {"CONNECTION_CLOSED", "connection closed"},
    [MC_ERR_REFUSED] = {"CONNECTION_REFUSED", "connection refused"},
    [MC_ERR_IO] = {"IO", "i/o error"},
    [MC_ERR_PROTOCOL] = {"PROTOCOL", "protocol error"},
    [MC_ERR_NOMEM] = {"NO_MEMORY", "out of memory"},
    [MC_ERR_NO_SERVERS] = {"NO_SERVERS", "no servers configured or available"},
    [MC_ERR_SERVER_DEAD] = {"SERVER_DEAD", "server marked dead"},
    [MC_ERR_BUSY] = {"BUSY", "too many connections"},
    [MC_ERR_TOO_LARGE] = {"VALUE_TOO_LARGE", "value too large"},
    [MC_ERR_UNDECODABLE] = {"UNDECODABLE", "undecodable value"},
    [MC_ERR_TLS] = {"TLS", "tls error"},
};

const char *mc_err_str(int err)
{
    return err >= 0 && err < MC_ERR_COUNT && table[err].str ? table[err].str
                                                            : "unknown error";
}

const char *mc_err_const(int err)
{
    return err > 0 && err < MC_ERR_COUNT ? table[err].name : NULL;
}
