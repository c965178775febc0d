#include "mc_addr.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int bad(char *err, size_t errlen, const char *what, const char *spec)
{
    snprintf(err, errlen, "%s: %s", what, spec);
    return -1;
}

/* The port after the host: digits only, 1..65535. */
static int split_port(const char *p, const char *spec, unsigned *port,
                      char *err, size_t errlen)
{
    char *end;
    unsigned long pn;
    errno = 0;
    pn = strtoul(p, &end, 10);
    if (*p < '0' || *p > '9' || *end || errno || pn == 0 || pn > 65535)
        return bad(err, errlen, "bad port in server address", spec);
    *port = (unsigned)pn;
    return 0;
}

int mc_addr_split(const char *spec, mc_addr_spec *out, char *err,
                  size_t errlen)
{
    const char *h, *p = NULL, *colon;
    size_t hl;

    memset(out, 0, sizeof(*out));
    if (!spec || !*spec) {
        snprintf(err, errlen, "empty server address");
        return -1;
    }
    if (spec[0] == '/' || spec[0] == '@') {
        size_t n = strlen(spec);
        if (n >= sizeof(out->host))
            return bad(err, errlen, "unix socket path too long", spec);
        out->kind = spec[0] == '@' ? MC_ADDR_ABSTRACT : MC_ADDR_UNIX;
        memcpy(out->host, spec, n + 1);
        return 0;
    }
    if (spec[0] == '[') {
        const char *close = strchr(spec, ']');
        if (!close)
            return bad(err, errlen, "bad server address (no ']')", spec);
        h = spec + 1;
        hl = (size_t)(close - h);
        if (close[1] == ':')
            p = close + 2;
        else if (close[1] != '\0')
            return bad(err, errlen, "bad server address", spec);
    } else {
        colon = strrchr(spec, ':');
        if (colon && strchr(spec, ':') != colon)
            colon = NULL; /* a bare IPv6 address: no brackets, no port */
        h = spec;
        hl = colon ? (size_t)(colon - spec) : strlen(spec);
        p = colon ? colon + 1 : NULL;
    }
    if (hl == 0 || hl >= sizeof(out->host))
        return bad(err, errlen, "bad server address", spec);
    out->kind = MC_ADDR_TCP;
    memcpy(out->host, h, hl);
    out->host[hl] = '\0';
    out->port = MC_DEFAULT_PORT;
    return p ? split_port(p, spec, &out->port, err, errlen) : 0;
}
