/* mc_sasl: SASL PLAIN's frames and reply rules (see mc_sasl.h). */
#include "mc_sasl.h"

#include <stdio.h>
#include <string.h>

#include "mc_error.h"
#include "mc_item.h"

int mc_sasl_enc_list(mc_buf *b, uint32_t opaque)
{
    return mc_enc_simple(b, MC_OP_SASL_LIST_MECHS, opaque);
}

int mc_sasl_enc_plain(mc_buf *b, uint32_t opaque, const char *user,
                      size_t ulen, const char *pass, size_t plen)
{
    char v[2 * MC_SASL_MAX + 2];

    if (ulen > MC_SASL_MAX || plen > MC_SASL_MAX ||
        memchr(user, '\0', ulen) || memchr(pass, '\0', plen))
        return -1;
    v[0] = '\0'; /* no authorization identity: act as the user itself */
    memcpy(v + 1, user, ulen);
    v[1 + ulen] = '\0';
    memcpy(v + 2 + ulen, pass, plen);
    return mc_enc_request(b, MC_OP_SASL_AUTH, opaque, 0, NULL, 0, "PLAIN", 5,
                          v, ulen + plen + 2);
}

int mc_sasl_has_mech(const char *list, size_t len, const char *mech)
{
    size_t n = strlen(mech), i = 0;

    while (i < len) {
        size_t j = i;
        while (j < len && list[j] != ' ')
            j++;
        if (j - i == n && memcmp(list + i, mech, n) == 0)
            return 1;
        i = j + 1;
    }
    return 0;
}

/* The server's text (a message or the mechanisms), printable, for msg. */
static void text_of(const mc_resp *r, char *out, size_t outlen)
{
    size_t i, n = r->vallen < outlen - 1 ? r->vallen : outlen - 1;
    for (i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)r->value[i];
        out[i] = ch >= 0x20 && ch < 0x7f ? (char)ch : '?';
    }
    out[n] = '\0';
}

int mc_sasl_check(uint8_t opcode, uint32_t opaque, const mc_resp *r,
                  int pending, char *msg, size_t msglen)
{
    char text[80];
    int rc = mc_reply_check(opcode, opaque, r, pending, NULL, 0, msg, msglen);

    if (rc != MC_OK)
        return rc;
    text_of(r, text, sizeof(text));
    if (opcode == MC_OP_SASL_LIST_MECHS) {
        if (r->status == MC_STATUS_UNKNOWN_COMMAND ||
            r->status == MC_STATUS_NOT_SUPPORTED) {
            snprintf(msg, msglen, "credentials given, but the server does "
                                  "not support SASL authentication");
            return MC_ERR_AUTH;
        }
        if (r->status != MC_STATUS_OK) {
            snprintf(msg, msglen, "SASL mechanisms: %s%s%s",
                     mc_status_str(r->status), text[0] ? ": " : "", text);
            return MC_ERR_AUTH;
        }
        if (!mc_sasl_has_mech(r->value, r->vallen, "PLAIN")) {
            snprintf(msg, msglen, "the server does not offer SASL PLAIN "
                                  "(it offers: %s)", text);
            return MC_ERR_AUTH;
        }
        return MC_OK;
    }
    if (r->status == MC_STATUS_OK)
        return MC_OK;
    if (r->status == MC_STATUS_AUTH_ERROR)
        snprintf(msg, msglen, "authentication failed%s%s",
                 text[0] ? ": " : "", text);
    else if (r->status == MC_STATUS_AUTH_CONTINUE)
        snprintf(msg, msglen, "the server asked for another SASL step; "
                              "PLAIN has one");
    else
        snprintf(msg, msglen, "SASL authentication: %s%s%s",
                 mc_status_str(r->status), text[0] ? ": " : "", text);
    return MC_ERR_AUTH;
}
