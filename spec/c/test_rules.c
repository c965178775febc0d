/*
 * test_rules: the core's rules from C, with no socket and no Lua: the key
 * rule (mc_key.h), what each status means per kind of operation and the
 * lock marker (mc_item), the error table (mc_error), a server's health
 * with the time passed in (mc_health), placement around dead servers
 * (mc_place), SASL PLAIN's frames and replies (mc_sasl), a pipelined
 * connection's FIFO and judging (mc_pipe), and the C ABI (mc_abi). Exit status
 * 0 when every check passed; prints "N passed, M failed".
 */
#include <stdio.h>
#include <string.h>

#include "mc_abi.h"
#include "mc_addr.h"
#include "mc_codec.h"
#include "mc_error.h"
#include "mc_feed.h"
#include "mc_health.h"
#include "mc_item.h"
#include "mc_key.h"
#include "mc_pipe.h"
#include "mc_place.h"
#include "mc_select.h"
#include "mc_proto.h"
#include "mc_sasl.h"
#include "reply.h"

#include "check.h"

/* The rule byte by byte, as gomemcache writes it: the reference that the
 * word-at-a-time mc_key_ok must agree with. */
static int key_ok_ref(const unsigned char *k, size_t n)
{
    size_t i;
    if (n == 0 || n > 250)
        return 0;
    for (i = 0; i < n; i++)
        if (k[i] <= ' ' || k[i] == 0x7f)
            return 0;
    return 1;
}

/* Every byte value at positions from..n-1 of an n-byte key: mc_key_ok
 * agrees with the reference. */
static void sweep_key(size_t n, size_t from)
{
    unsigned char k[MC_KEY_MAX];
    size_t pos;
    int b;
    for (pos = from; pos < n; pos++)
        for (b = 0; b < 256; b++) {
            memset(k, 'a', n);
            k[pos] = (unsigned char)b;
            if (mc_key_ok((char *)k, n) != key_ok_ref(k, n))
                CHECK(0, "byte 0x%02x at %zu of %zu", b, pos, n);
        }
}

static void test_keys(void)
{
    unsigned char k[260];
    size_t n;

    CHECK(!mc_key_ok("", 0), "empty key");
    memset(k, 'k', sizeof(k));
    CHECK(mc_key_ok((char *)k, 250), "250 bytes");
    CHECK(!mc_key_ok((char *)k, 251), "251 bytes");
    /* every byte value at every position of keys of 1..20 bytes, and near
     * the end of a long one: the word tricks must miss nothing */
    for (n = 1; n <= 20; n++)
        sweep_key(n, 0);
    sweep_key(250, 230);
    CHECK(1, "byte sweep done");
}

static void test_statuses(void)
{
    CHECK(mc_status_err(MC_KIND_GET, MC_STATUS_KEY_ENOENT) == MC_ERR_CACHE_MISS,
          "get: absent is a miss");
    CHECK(mc_status_err(MC_KIND_REPLACE, MC_STATUS_KEY_ENOENT) ==
              MC_ERR_NOT_STORED,
          "replace/cas: absent is not stored");
    CHECK(mc_status_err(MC_KIND_SET, MC_STATUS_KEY_ENOENT) == MC_ERR_NOT_STORED,
          "set with a cas: absent is not stored");
    CHECK(mc_status_err(MC_KIND_OTHER, MC_STATUS_KEY_ENOENT) ==
              MC_ERR_SERVER_ERROR,
          "stats: absent is a server error");
    CHECK(mc_status_err(MC_KIND_ADD, MC_STATUS_KEY_EEXISTS) == MC_ERR_NOT_STORED,
          "add: exists is not stored");
    CHECK(mc_status_err(MC_KIND_SET, MC_STATUS_KEY_EEXISTS) ==
              MC_ERR_CAS_CONFLICT,
          "set with a cas: exists is a conflict");
    CHECK(mc_status_err(MC_KIND_GET, MC_STATUS_E2BIG) == MC_ERR_TOO_LARGE,
          "too large");
    CHECK(mc_status_err(MC_KIND_GET, MC_STATUS_DELTA_BADVAL) ==
              MC_ERR_NON_NUMERIC,
          "incr on text");
    CHECK(mc_status_err(MC_KIND_GET, MC_STATUS_AUTH_ERROR) == MC_ERR_AUTH &&
              mc_status_err(MC_KIND_SET, MC_STATUS_AUTH_CONTINUE) ==
                  MC_ERR_AUTH,
          "auth");
    CHECK(mc_status_err(MC_KIND_GET, 0x82) == MC_ERR_SERVER_ERROR,
          "out of memory status");
}

static void test_lock(void)
{
    char v[64];
    CHECK(mc_is_lock(MC_LOCK_FLAGS, mc_lock_value, mc_lock_len), "the marker");
    CHECK(!mc_is_lock(MC_LOCK_FLAGS + 1, mc_lock_value, mc_lock_len),
          "other flags");
    CHECK(!mc_is_lock(MC_LOCK_FLAGS, mc_lock_value, mc_lock_len - 1),
          "cut short");
    memcpy(v, mc_lock_value, mc_lock_len);
    v[5] ^= 1;
    CHECK(!mc_is_lock(MC_LOCK_FLAGS, v, mc_lock_len), "one byte off");
    CHECK(!mc_is_lock(MC_LOCK_FLAGS, "memcached.lua delete_lock", 25),
          "the text without its NUL frame");
}

static void test_errors(void)
{
    int i, j;
    CHECK(strcmp(mc_err_str(MC_OK), "ok") == 0 && !mc_err_const(MC_OK), "ok");
    CHECK(strcmp(mc_err_str(MC_ERR_COUNT), "unknown error") == 0 &&
              strcmp(mc_err_str(-1), "unknown error") == 0,
          "out of the table");
    for (i = 1; i < MC_ERR_COUNT; i++) {
        CHECK(mc_err_const(i) && mc_err_str(i) &&
                  strcmp(mc_err_str(i), "unknown error") != 0,
              "error %d has a name and a string", i);
        for (j = 1; j < i; j++)
            CHECK(strcmp(mc_err_const(i), mc_err_const(j)) != 0 &&
                      strcmp(mc_err_str(i), mc_err_str(j)) != 0,
                  "errors %d and %d share a name or a string", i, j);
    }
}

/* The C ABI the OpenResty driver binds through the FFI gives the same
 * answers, and refuses what is out of range. */
static void test_abi(void)
{
    CHECK(mc_abi_key_ok("k", 1) && !mc_abi_key_ok("a b", 3) &&
              !mc_abi_key_ok("", 0),
          "key rule");
    CHECK(mc_abi_status_err(MC_KIND_ADD, MC_STATUS_KEY_EEXISTS) ==
              MC_ERR_NOT_STORED,
          "add: exists");
    CHECK(mc_abi_status_err(99, MC_STATUS_KEY_ENOENT) == MC_ERR_SERVER_ERROR &&
              mc_abi_status_err(MC_KIND_GET, 0x10000) == MC_ERR_SERVER_ERROR &&
              mc_abi_status_err(-1, 1) == MC_ERR_SERVER_ERROR,
          "out of range");
    CHECK(mc_abi_err_count() == MC_ERR_COUNT &&
              strcmp(mc_abi_err_str(MC_ERR_CACHE_MISS), "cache miss") == 0,
          "error table");
    CHECK(mc_abi_is_lock(MC_LOCK_FLAGS, mc_lock_value, mc_lock_len) &&
              !mc_abi_is_lock(0, mc_lock_value, mc_lock_len),
          "lock marker");
    {
        uint32_t lf = 0;
        size_t ll = 0;
        const char *lv = mc_abi_lock_marker(&lf, &ll);
        CHECK(lf == MC_LOCK_FLAGS && ll == mc_lock_len && ll == 27 &&
                  memcmp(lv, mc_lock_value, ll) == 0 &&
                  mc_abi_is_lock(lf, lv, ll),
              "the lock marker through the ABI is the one is_lock knows");
    }
    CHECK(mc_abi_status_is_auth(MC_STATUS_AUTH_ERROR) &&
              mc_abi_status_is_auth(MC_STATUS_AUTH_CONTINUE) &&
              !mc_abi_status_is_auth(MC_STATUS_OK) &&
              !mc_abi_status_is_auth(-1),
          "auth statuses");
    CHECK(mc_abi_reply_key_ok(MC_STATUS_OK, "key1", 4, "key1", 4) &&
              !mc_abi_reply_key_ok(MC_STATUS_OK, "", 0, "key1", 4) &&
              !mc_abi_reply_key_ok(MC_STATUS_OK, "key2", 4, "key1", 4) &&
              mc_abi_reply_key_ok(0x82, "", 0, "key1", 4) &&
              !mc_abi_reply_key_ok(MC_STATUS_KEY_ENOENT, "other", 5, "key1", 4),
          "a reply's key: a hit names it, an error names it or none");
    {
        mc_buf b = {0};
        int ok = mc_enc_get(&b, MC_OP_GETK, 1, "k", 1) == 0 &&
                 mc_enc_simple(&b, MC_OP_NOOP, 2) == 0;
        CHECK(ok && mc_abi_resend_safe(b.data, b.len) &&
                  !mc_abi_resend_safe(b.data, b.len - 1),
              "a GETK and a NOOP may be sent twice; a cut frame may not");
        b.len = 0;
        ok = mc_enc_simple(&b, MC_OP_NOOP, 3) == 0 &&
             mc_enc_simple(&b, MC_OP_DELETE, 4) == 0;
        CHECK(ok && !mc_abi_resend_safe(b.data, b.len),
              "a DELETE may not");
        mc_buf_free(&b);
    }
}

/* Where the TLS transport may end a record: after whole requests, or
 * after one request longer than the limit. */
static void test_req_cut(void)
{
    mc_buf b = {0};
    char big[100];
    size_t a, g;
    int ok;
    memset(big, 'v', sizeof big);
    ok = mc_enc_get(&b, MC_OP_GETK, 1, "k", 1) == 0;
    a = b.len; /* 25 */
    ok = ok && mc_codec_binary.store(&b, MC_OP_SETQ, 2, 0, "key", 3, 0, 0,
                                     NULL, 0, big, sizeof big) == 0;
    g = b.len;
    ok = ok && mc_enc_simple(&b, MC_OP_NOOP, 3) == 0;
    CHECK(ok, "framed a GETK, a SETQ and a NOOP");
    CHECK(mc_req_cut(b.data, b.len, b.len) == b.len, "all fit: all");
    CHECK(mc_req_cut(b.data, b.len, g) == g &&
              mc_req_cut(b.data, b.len, g + MC_HEADER_LEN - 1) == g,
          "the longest run of whole requests within the limit");
    CHECK(mc_req_cut(b.data, b.len, a + 10) == a, "never into a request");
    CHECK(mc_req_cut(b.data + a, b.len - a, 10) == g - a,
          "a request longer than the limit alone");
    CHECK(mc_req_cut(b.data, a - 1, 10) == a - 1 &&
              mc_req_cut(b.data, 5, 3) == 5,
          "no whole frame: everything (never 0)");
    mc_buf_free(&b);
}

/* A server's health with the time passed in: dead after failure_limit
 * failures in a row, one probe claimed per retry interval, alive again on
 * a success. */
static void test_health(void)
{
    mc_health h = {0};
    mc_health_opts o = {2, 1.0};
    CHECK(mc_health_failed(&h, &o, 10.0, "refused") == 0 && !h.dead &&
              h.failures == 1 && strcmp(h.last_error, "refused") == 0,
          "one failure: alive");
    CHECK(mc_health_succeeded(&h) == 0 && h.failures == 0,
          "a success resets the count");
    mc_health_failed(&h, &o, 10.0, "a");
    CHECK(mc_health_failed(&h, &o, 10.5, "b") == 1 && h.dead &&
              h.retry_at == 11.5,
          "two in a row: dead until now + retry_timeout");
    CHECK(!mc_health_probe_due(&h, &o, 11.4), "no probe before retry_at");
    CHECK(mc_health_probe_due(&h, &o, 11.5) && h.retry_at == 12.5,
          "the first caller at retry_at claims the probe");
    CHECK(!mc_health_probe_due(&h, &o, 11.6), "and only one caller");
    CHECK(mc_health_failed(&h, &o, 11.7, "c") == 0 && h.dead &&
              h.retry_at == 12.7,
          "a failed probe: dead for another interval");
    CHECK(mc_health_succeeded(&h) == 1 && !h.dead && h.failures == 0,
          "a successful probe: alive again");
    CHECK(!mc_health_probe_due(&h, &o, 100.0), "no probe of a live server");
    o.failure_limit = 0;
    mc_health_failed(&h, &o, 1.0, NULL);
    mc_health_failed(&h, &o, 1.0, NULL);
    CHECK(!h.dead && h.last_error[0] == '\0', "failure_limit 0: never dead");
    CHECK(mc_health_verdict(MC_ERR_TIMEOUT) == MC_VERDICT_FAILED &&
              mc_health_verdict(MC_ERR_PROTOCOL) == MC_VERDICT_FAILED &&
              mc_health_verdict(MC_ERR_AUTH) == MC_VERDICT_ANSWERED &&
              mc_health_verdict(MC_ERR_TOO_LARGE) == MC_VERDICT_NONE &&
              mc_health_verdict(MC_ERR_NOMEM) == MC_VERDICT_NONE &&
              mc_health_verdict(MC_ERR_BUSY) == MC_VERDICT_NONE &&
              mc_abi_health_verdict(MC_ERR_AUTH) == 1,
          "what an error says of its server: failed, answered, nothing");
}

/* The batch feed with bytes alone: a plan for keys a, b, c (b on another
 * server), the replies server 0 should send, and ways they go wrong. */
static int feed_reply(void *ud, size_t i, const mc_resp *r)
{
    static const char *const keys[] = {"a", "b", "c"};
    int *got = ud;
    if (r->keylen != 1 || r->key[0] != keys[i][0])
        return -1;
    got[i]++;
    return 0;
}

static int feed_enc(void *ud, size_t i, mc_buf *out, uint32_t opaque)
{
    static const char *const keys[] = {"a", "b", "c"};
    (void)ud;
    return mc_enc_get(out, MC_OP_GETK, opaque, keys[i], 1);
}

/* a GETK hit for key k with opaque op, or a NOOP (k NULL) */
static void feed_put(mc_buf *out, const char *k, uint32_t op)
{
    if (k)
        put_reply(out, MC_OP_GETK, op, k, 1, "v", 1);
    else
        put_reply(out, MC_OP_NOOP, op, "", 0, "", 0);
}

/* Feeds the stream one byte at a time; returns the last result. */
/* A codec that counts its calls and otherwise is the binary one: the feed
 * must frame its NOOP and read its replies through the batch's codec. */
static int codec_simple_calls, codec_read_calls;

static int counting_simple(mc_buf *b, uint8_t opcode, uint32_t opaque)
{
    codec_simple_calls++;
    return mc_codec_binary.simple(b, opcode, opaque);
}

static int counting_read(mc_reader *r, mc_resp *resp)
{
    codec_read_calls++;
    return mc_codec_binary.read(r, resp);
}

static mc_codec counting_codec;

static int feed_run(const char *k1, uint32_t o1, const char *k2, uint32_t o2,
                    int noop, int *got, int *err)
{
    static const int server[] = {0, 1, 0};
    mc_batch b = {3,    server, feed_enc, feed_reply, NULL, NULL,
                  1,    got,    &counting_codec, 0};
    unsigned char replied[4] = {0};
    mc_feed f;
    mc_buf plan = {0}, s = {0};
    mc_reader in;
    char msg[200];
    size_t i;
    int rc = MC_FEED_MORE;

    mc_feed_init(&f, &b, 0, 1000, replied);
    /* server 0's bytes: GETK a, GETK c (a header and a 1-byte key each),
     * then the NOOP */
    if (mc_feed_plan(&f, &plan) != 0 || plan.len != 2 * (24 + 1) + 24)
        return -1;
    feed_put(&s, k1, o1);
    feed_put(&s, k2, o2);
    if (noop)
        feed_put(&s, NULL, 1003);
    mc_reader_init(&in, 1024);
    for (i = 0; i < s.len && rc == MC_FEED_MORE; i++) {
        mc_reader_feed(&in, s.data + i, 1);
        rc = mc_feed_take(&f, &in, err, msg, sizeof(msg));
    }
    mc_reader_free(&in);
    mc_buf_free(&plan);
    mc_buf_free(&s);
    return rc;
}

static void test_feed(void)
{
    int got[3] = {0}, err = 0;
    CHECK(feed_run("a", 1000, "c", 1002, 1, got, &err) == MC_FEED_DONE &&
              got[0] == 1 && got[2] == 1 && got[1] == 0,
          "the right stream: both replies, then done");
    memset(got, 0, sizeof(got));
    CHECK(feed_run("a", 1000, "c", 1002, 0, got, &err) == MC_FEED_MORE,
          "no NOOP yet: more");
    memset(got, 0, sizeof(got));
    CHECK(feed_run("c", 1002, "a", 1000, 1, got, &err) == MC_FEED_FAILED &&
              err == MC_ERR_PROTOCOL && got[0] == 0,
          "out of order: refused, the skipped one not taken");
    memset(got, 0, sizeof(got));
    CHECK(feed_run("a", 1000, "b", 1001, 1, got, &err) == MC_FEED_FAILED &&
              got[1] == 0,
          "a reply for another server's request: refused");
    memset(got, 0, sizeof(got));
    CHECK(feed_run("a", 1000, "a", 1002, 1, got, &err) == MC_FEED_FAILED &&
              got[2] == 0,
          "c's opaque naming key a: refused by the key check");
    memset(got, 0, sizeof(got));
    CHECK(feed_run("a", 1000, NULL, 1003, 0, got, &err) == MC_FEED_FAILED,
          "the NOOP before c's reply: requests unanswered");
}

static mc_health place_h[3];

static const mc_health *place_health(const void *ud, int srv)
{
    (void)ud;
    return &place_h[srv];
}

/* Placement: the selector's server while all live; around a dead one to
 * the next live entry (the selector's own choice with that entry masked),
 * SERVER_DEAD with eject off, NO_SERVERS when all are dead. */
static void test_place(void)
{
    mc_sel_entry e[3] = {{"10.0.0.1", 11211, 1}, {"10.0.0.2", 11211, 1},
                         {"10.0.0.3", 11211, 1}};
    int map[3] = {0, 1, 2}, err, i, moved = 0;
    unsigned char alive[3];
    mc_place p;
    char key[16];

    p.sel = mc_selector_new(MC_SEL_KETAMA, e, 3);
    p.entry_server = map;
    p.nentries = 3;
    p.alive = alive;
    p.eject = 1;
    p.health = place_health;
    p.ud = NULL;
    memset(place_h, 0, sizeof(place_h));
    for (i = 0; i < 300; i++) {
        int s, a;
        snprintf(key, sizeof(key), "key%d", i);
        s = mc_place_key(&p, key, strlen(key));
        CHECK(s == mc_selector_pick(p.sel, key, strlen(key), NULL),
              "%s: the selector's server", key);
        place_h[1].dead = 1;
        err = 0;
        a = mc_place_around(&p, key, strlen(key), &err);
        CHECK(a >= 0 && a != 1, "%s: around the dead server, got %d", key, a);
        if (s != 1)
            CHECK(a == s, "%s: a live server's keys stay (%d, %d)", key, s, a);
        else
            moved++;
        place_h[1].dead = 0;
    }
    CHECK(moved > 50 && moved < 150, "a third of the keys move (%d)", moved);
    p.eject = 0;
    err = 0;
    CHECK(mc_place_around(&p, "k", 1, &err) == -1 && err == MC_ERR_SERVER_DEAD,
          "eject off: SERVER_DEAD");
    p.eject = 1;
    for (i = 0; i < 3; i++)
        place_h[i].dead = 1;
    err = 0;
    CHECK(mc_place_around(&p, "k", 1, &err) == -1 && err == MC_ERR_NO_SERVERS,
          "all dead: NO_SERVERS");
    p.nentries = 0;
    CHECK(mc_place_key(&p, "k", 1) == -1, "no entries: -1");
    mc_selector_free((mc_selector *)p.sel);
}

/* The one-request reply rule: opcode and opaque must match, nothing may
 * follow (but STAT's stream), the shape must fit, a hit must name the
 * request's key. */
static void test_reply_check(void)
{
    mc_resp r;
    char msg[200];
    memset(&r, 0, sizeof(r));
    r.opcode = MC_OP_GETK;
    r.opaque = 7;
    r.key = "k1";
    r.keylen = 2;
    r.extlen = 4;
    r.value = "v";
    r.vallen = 1;
    CHECK(mc_reply_check(MC_OP_GETK, 7, &r, 0, "k1", 2, msg, sizeof(msg)) ==
              MC_OK, "a matching GETK hit");
    CHECK(mc_reply_check(MC_OP_GETK, 8, &r, 0, "k1", 2, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL && strstr(msg, "opaque"), "another opaque");
    CHECK(mc_reply_check(MC_OP_GET, 7, &r, 0, "k1", 2, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "another opcode");
    CHECK(mc_reply_check(MC_OP_GETK, 7, &r, 1, "k1", 2, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL && strstr(msg, "after"), "bytes after it");
    CHECK(mc_reply_check(MC_OP_GETK, 7, &r, 0, "k2", 2, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL && strstr(msg, "another key"), "another key");
    r.status = MC_STATUS_KEY_ENOENT;
    r.key = NULL;
    r.keylen = 0;
    r.extlen = 0;
    r.value = NULL;
    r.vallen = 0;
    CHECK(mc_reply_check(MC_OP_GETK, 7, &r, 0, "k1", 2, msg, sizeof(msg)) ==
              MC_OK, "a miss naming no key");
    r.opcode = MC_OP_STAT;
    r.status = 0;
    CHECK(mc_reply_check(MC_OP_STAT, 7, &r, 1, NULL, 0, msg, sizeof(msg)) ==
              MC_OK, "STAT streams: more may follow");
}

/* A SASL reply with a text value and no extras or key. */
static mc_resp sasl_reply(uint8_t opcode, uint32_t opaque, uint16_t status,
                          const char *text)
{
    mc_resp r;
    memset(&r, 0, sizeof(r));
    r.opcode = opcode;
    r.opaque = opaque;
    r.status = status;
    r.value = text;
    r.vallen = strlen(text);
    r.bodylen = (uint32_t)r.vallen;
    return r;
}

/* SASL PLAIN (mc_sasl): the exact bytes of both requests, the mechanism
 * list, and the verdict on every kind of reply. */
static void test_sasl(void)
{
    mc_buf b = {0};
    mc_resp r;
    char msg[200], nul[3] = {'a', '\0', 'b'};
    static const unsigned char plain_req[] = {
        0x80, 0x21, 0x00, 0x05, 0x00, 0x00, 0x00, 0x00, /* key length 5 */
        0x00, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x09, /* body 16, op 9 */
        0, 0, 0, 0, 0, 0, 0, 0,                         /* cas */
        'P', 'L', 'A', 'I', 'N', 0, 'u', 's', 'e', 'r', 0, 'p', 'w', 'd', '!', '?'};
    char big[MC_SASL_MAX + 1];

    CHECK(mc_sasl_enc_list(&b, 3) == 0 && b.len == 24 &&
              (unsigned char)b.data[0] == 0x80 && b.data[1] == 0x20 &&
              mc_load32(b.data + 8) == 0 && mc_load32(b.data + 12) == 3,
          "LIST_MECHS is a bare header");
    b.len = 0;
    CHECK(mc_sasl_enc_plain(&b, 9, "user", 4, "pwd!?", 5) == 0 &&
              b.len == sizeof(plain_req) &&
              memcmp(b.data, plain_req, sizeof(plain_req)) == 0,
          "AUTH PLAIN is key PLAIN, value \\0user\\0pass");
    b.len = 0;
    memset(big, 'x', sizeof(big));
    CHECK(mc_sasl_enc_plain(&b, 9, nul, 3, "p", 1) == -1 &&
              mc_sasl_enc_plain(&b, 9, "u", 1, nul, 3) == -1 &&
              mc_sasl_enc_plain(&b, 9, big, sizeof(big), "p", 1) == -1 &&
              b.len == 0,
          "a NUL byte or an overlong field is refused, nothing appended");
    CHECK(mc_sasl_enc_plain(&b, 9, "", 0, "", 0) == 0 && b.len == 24 + 7,
          "empty credentials still frame");
    mc_buf_free(&b);

    CHECK(mc_sasl_has_mech("PLAIN", 5, "PLAIN") &&
              mc_sasl_has_mech("CRAM-MD5 PLAIN", 14, "PLAIN") &&
              !mc_sasl_has_mech("PLAINX CRAM-MD5", 15, "PLAIN") &&
              !mc_sasl_has_mech("XPLAIN", 6, "PLAIN") &&
              !mc_sasl_has_mech("", 0, "PLAIN") &&
              !mc_sasl_has_mech("PLAIN", 4, "PLAIN"),
          "the mechanism list is matched word by word");

    r = sasl_reply(MC_OP_SASL_LIST_MECHS, 3, 0, "CRAM-MD5 PLAIN");
    CHECK(mc_sasl_check(MC_OP_SASL_LIST_MECHS, 3, &r, 0, msg, sizeof(msg)) ==
              MC_OK, "PLAIN offered");
    r = sasl_reply(MC_OP_SASL_LIST_MECHS, 3, 0, "CRAM-MD5");
    CHECK(mc_sasl_check(MC_OP_SASL_LIST_MECHS, 3, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_AUTH && strstr(msg, "CRAM-MD5"),
          "no PLAIN: refused, naming what is offered (%s)", msg);
    r = sasl_reply(MC_OP_SASL_LIST_MECHS, 3, MC_STATUS_UNKNOWN_COMMAND,
                   "Unknown command");
    CHECK(mc_sasl_check(MC_OP_SASL_LIST_MECHS, 3, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_AUTH && strstr(msg, "does not support SASL"),
          "a server without SASL fails closed (%s)", msg);
    r = sasl_reply(MC_OP_SASL_LIST_MECHS, 4, 0, "PLAIN");
    CHECK(mc_sasl_check(MC_OP_SASL_LIST_MECHS, 3, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "another opaque");
    r = sasl_reply(MC_OP_SASL_LIST_MECHS, 3, 0, "PLAIN");
    CHECK(mc_sasl_check(MC_OP_SASL_LIST_MECHS, 3, &r, 1, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "bytes after the reply");
    r.extlen = 4;
    CHECK(mc_sasl_check(MC_OP_SASL_LIST_MECHS, 3, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "extras in a SASL reply");

    r = sasl_reply(MC_OP_SASL_AUTH, 5, 0, "Authenticated");
    CHECK(mc_sasl_check(MC_OP_SASL_AUTH, 5, &r, 0, msg, sizeof(msg)) == MC_OK,
          "accepted");
    r = sasl_reply(MC_OP_SASL_AUTH, 5, MC_STATUS_AUTH_ERROR, "Auth failure");
    CHECK(mc_sasl_check(MC_OP_SASL_AUTH, 5, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_AUTH && strstr(msg, "authentication failed: Auth failure"),
          "refused credentials (%s)", msg);
    r = sasl_reply(MC_OP_SASL_AUTH, 5, MC_STATUS_AUTH_CONTINUE, "");
    CHECK(mc_sasl_check(MC_OP_SASL_AUTH, 5, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_AUTH && strstr(msg, "another SASL step"),
          "a further step is refused");
    r = sasl_reply(MC_OP_SASL_AUTH, 5, MC_STATUS_AUTH_ERROR, "a\nb\x01");
    CHECK(mc_sasl_check(MC_OP_SASL_AUTH, 5, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_AUTH && strstr(msg, "a?b?"),
          "the server's text is made printable (%s)", msg);
    r = sasl_reply(MC_OP_NOOP, 5, 0, "");
    CHECK(mc_sasl_check(MC_OP_SASL_AUTH, 5, &r, 0, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "a reply to another opcode");
}

/* The address rule every driver parses with (mc_addr), and the counter
 * reply; through the ABI too. */
static void test_addr(void)
{
    static const struct {
        const char *spec;
        int ok, kind;
        const char *host;
        unsigned port;
    } t[] = {
        {"127.0.0.1:11311", 1, MC_ADDR_TCP, "127.0.0.1", 11311},
        {"cache.example", 1, MC_ADDR_TCP, "cache.example", 11211},
        {"[::1]:11400", 1, MC_ADDR_TCP, "::1", 11400},
        {"[::1]", 1, MC_ADDR_TCP, "::1", 11211},
        {"::1", 1, MC_ADDR_TCP, "::1", 11211},
        {"fe80::1:2", 1, MC_ADDR_TCP, "fe80::1:2", 11211},
        {"/run/memcached.sock", 1, MC_ADDR_UNIX, "/run/memcached.sock", 0},
        {"@mc-abstract", 1, MC_ADDR_ABSTRACT, "@mc-abstract", 0},
        {"", 0, 0, "", 0},
        {"host:", 0, 0, "", 0},
        {"host:0", 0, 0, "", 0},
        {"host:65536", 0, 0, "", 0},
        {"host:+80", 0, 0, "", 0},
        {"host:80x", 0, 0, "", 0},
        {":80", 0, 0, "", 0},
        {"[::1", 0, 0, "", 0},
        {"[::1]x", 0, 0, "", 0},
    };
    size_t i;
    char err[200], host[256];
    uint64_t v;
    for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
        mc_addr_spec sp;
        int kind = -1;
        unsigned port = 99;
        int rc = mc_addr_split(t[i].spec, &sp, err, sizeof(err));
        CHECK((rc == 0) == t[i].ok, "'%s': %s", t[i].spec, rc ? err : "ok");
        if (rc == 0 && t[i].ok)
            CHECK((int)sp.kind == t[i].kind && !strcmp(sp.host, t[i].host) &&
                      sp.port == t[i].port,
                  "'%s' -> %d '%s' %u", t[i].spec, sp.kind, sp.host, sp.port);
        rc = mc_abi_addr_split(t[i].spec, &kind, host, sizeof(host), &port,
                               err, sizeof(err));
        CHECK((rc == 0) == t[i].ok && (!t[i].ok || (kind == t[i].kind &&
                                                     port == t[i].port)),
              "ABI '%s'", t[i].spec);
    }
    {
        int kind;
        unsigned port;
        CHECK(mc_abi_addr_split("127.0.0.1:1", &kind, host, 4, &port, err,
                                sizeof(err)) == -1,
              "a host longer than the caller's buffer is refused");
    }
    CHECK(mc_counter_value("\0\0\0\0\0\0\1\2", 8, &v) == 0 && v == 0x102,
          "a counter's 8 bytes");
    CHECK(mc_counter_value("\0\0\1", 3, &v) == -1, "a counter of 3 bytes");
    CHECK(mc_abi_counter_value("\0\0\0\0\0\0\0\7", 8, &v) == 0 && v == 7,
          "the counter through the ABI");
}

/* The ring (mc_ring, through the ABI): distinct servers in first-seen
 * order, health with the time passed in, a probe claimed once when due,
 * keys routed around a dead server and back after a good probe. */
static void test_ring(void)
{
    const char *addrs[] = {"10.0.0.1:11211", "10.0.0.2:11211",
                           "10.0.0.1:11211", "[::1]:11300"};
    char err[200], key[16];
    unsigned failures;
    const char *last;
    int e = 0, probe = 0, i, s, dead_keys = 0, moved = 0;
    mc_ring *r = mc_abi_ring_new(1, addrs, NULL, 4, 2, 1.0, 1, err,
                                 sizeof(err));
    CHECK(r != NULL, "ring: %s", r ? "" : err);
    if (!r)
        return;
    CHECK(mc_abi_ring_nservers(r) == 3, "three distinct servers");
    CHECK(!strcmp(mc_abi_ring_name(r, 2), "[::1]:11300"), "names kept");
    CHECK(mc_abi_ring_failed(r, 1, 10.0, "refused") == 0 &&
              mc_abi_ring_alive(r, 1, &failures, &last) && failures == 1,
          "one failure: alive");
    CHECK(mc_abi_ring_failed(r, 1, 10.1, "refused") == 1 &&
              !mc_abi_ring_alive(r, 1, &failures, &last) &&
              !strcmp(last, "refused"),
          "the second: dead");
    for (i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        s = mc_abi_ring_pick(r, key, strlen(key), 10.5, &probe, &e);
        CHECK(s >= 0 && s != 1 && !probe, "%s: around the dead one (%d)",
              key, s);
        if (mc_abi_ring_static(r, key, strlen(key)) == 1)
            dead_keys++;
    }
    CHECK(dead_keys > 10, "some keys belong to the dead server (%d)",
          dead_keys);
    /* its retry time: the first pick of one of its keys claims the probe */
    for (i = 0; i < 200; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        if (mc_abi_ring_static(r, key, strlen(key)) != 1)
            continue;
        s = mc_abi_ring_pick(r, key, strlen(key), 11.2, &probe, &e);
        if (moved++ == 0)
            CHECK(s == 1 && probe == 1, "the first claims the probe");
        else
            CHECK(s != 1 && probe == 0, "the others go around meanwhile");
    }
    CHECK(mc_abi_ring_ok(r, 1) == 1 && mc_abi_ring_alive(r, 1, &failures,
                                                         &last),
          "a good probe: alive again");
    snprintf(key, sizeof(key), "k0");
    CHECK(mc_abi_ring_pick(r, key, 2, 11.3, &probe, &e) ==
              mc_abi_ring_static(r, key, 2),
          "keys come back");
    CHECK(mc_abi_ring_dead_until(r, 0, 20.0, "elsewhere") == 1 &&
              !mc_abi_ring_alive(r, 0, &failures, &last) && failures == 2 &&
              mc_abi_ring_retry_at(r, 0) == 20.0 && mc_abi_ring_retry_at(r, 1) == 0,
          "dead until a time another party found");
    for (i = 0; i < 200; i++) { /* a key of server 0 */
        snprintf(key, sizeof(key), "k%d", i);
        if (mc_abi_ring_static(r, key, strlen(key)) == 0)
            break;
    }
    s = mc_abi_ring_pick(r, key, strlen(key), 19.0, &probe, &e);
    CHECK(s != 0 && s >= 0 && !probe, "not probed before that time (%d)", s);
    s = mc_abi_ring_pick(r, key, strlen(key), 20.5, &probe, &e);
    CHECK(s == 0 && probe, "probed after it");
    CHECK(mc_abi_ring_ok(r, 0) == 1, "and back");
    CHECK(mc_abi_ring_intern(r, "@abstract", err, sizeof(err)) == 3 &&
              mc_abi_ring_intern(r, "10.0.0.2:11211", err, sizeof(err)) == 1,
          "intern adds or finds");
    CHECK(mc_abi_ring_intern(r, "host:99999", err, sizeof(err)) == -1,
          "intern refuses a bad address");
    mc_abi_ring_free(r);
    r = mc_abi_ring_new(1, addrs, NULL, 0, 2, 1.0, 1, err, sizeof(err));
    CHECK(r != NULL && mc_abi_ring_pick(r, "k", 1, 0, &probe, &e) == -1 &&
              e == MC_ERR_NO_SERVERS,
          "an empty ring places nothing");
    mc_abi_ring_free(r);
}


/* One server's stream through the C ABI (mc_abi_batch): framed requests,
 * replies fed in pieces, entries out; the checks are mc_feed's and the
 * request's own (opcode, key). */
static void batch_reply(mc_buf *s, uint8_t op, uint32_t opaque,
                        const char *k, uint16_t status)
{
    size_t at = s->len;
    if (status)
        put_reply(s, op, opaque, "", 0, "Not found", 9);
    else
        put_reply(s, op, opaque, k, strlen(k), "val", 3);
    if (status) {
        s->data[at + 4] = 0; /* an error reply has no extras */
        mc_store32(s->data + at + 8, 9);
        memmove(s->data + at + 24, s->data + at + 28, 9);
        s->len -= 4;
        mc_store16(s->data + at + 6, status);
    }
}

/* Feeds s one byte at a time; counts the entries (hits in *hits, errors
 * in *errs); returns the last result. */
static int batch_feed_all(mc_abi_batch *ab, const mc_buf *s, int *hits,
                          int *errs, int *err)
{
    mc_abi_entry *e;
    int n, j, rc = 0;
    size_t i;
    char msg[200];
    *hits = *errs = 0;
    for (i = 0; i < s->len && rc == 0; i++) {
        rc = mc_abi_batch_feed(ab, s->data + i, 1, &e, &n, err, msg,
                               sizeof(msg));
        for (j = 0; j < n; j++) {
            if (e[j].err == 0 && e[j].vlen == 3 &&
                memcmp(e[j].value, "val", 3) == 0)
                (*hits)++;
            else if (e[j].err != 0)
                (*errs)++;
        }
    }
    return rc;
}

static void test_abi_batch(void)
{
    mc_abi_batch *ab = mc_abi_batch_new(1024);
    mc_buf s = {0};
    size_t len = 0;
    const char *bytes;
    int hits, errs, err = 0;

    CHECK(mc_abi_batch_begin(ab, 500, MC_KIND_GET, 1) == 0 &&
              mc_abi_batch_add(ab, MC_OP_GETK, 0, "a", 1, 0, 0, 0, NULL, 0) == 0 &&
              mc_abi_batch_add(ab, MC_OP_GETK, 0, "bb", 2, 0, 0, 0, NULL, 0) == 1,
          "requests get their indexes");
    bytes = mc_abi_batch_seal(ab, &len);
    CHECK(bytes && len == 25 + 26 + 24 && (uint8_t)bytes[1] == MC_OP_GETK &&
              mc_load32(bytes + 12) == 500 &&
              mc_load32(bytes + 25 + 12) == 501 &&
              (uint8_t)bytes[51 + 1] == MC_OP_NOOP &&
              mc_load32(bytes + 51 + 12) == 502,
          "two GETKs under base, base + 1, then the NOOP under base + 2");
    batch_reply(&s, MC_OP_GETK, 500, "a", 0);
    batch_reply(&s, MC_OP_GETK, 501, "", MC_STATUS_KEY_ENOENT);
    batch_reply(&s, MC_OP_NOOP, 502, "", 0);
    CHECK(batch_feed_all(ab, &s, &hits, &errs, &err) == 1 && hits == 1 &&
              errs == 1,
          "a hit and a miss, byte by byte, then done (%d hits %d errors)",
          hits, errs);

    /* the hit names another key: refused */
    mc_abi_batch_begin(ab, 500, MC_KIND_GET, 1);
    mc_abi_batch_add(ab, MC_OP_GETK, 0, "a", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_seal(ab, &len);
    s.len = 0;
    batch_reply(&s, MC_OP_GETK, 500, "b", 0);
    batch_reply(&s, MC_OP_NOOP, 501, "", 0);
    CHECK(batch_feed_all(ab, &s, &hits, &errs, &err) == -1 &&
              err == MC_ERR_PROTOCOL && hits == 0,
          "a hit naming another key fails the stream");

    /* the reply's opcode is not the request's */
    mc_abi_batch_begin(ab, 500, MC_KIND_GET, 1);
    mc_abi_batch_add(ab, MC_OP_GETK, 0, "a", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_seal(ab, &len);
    s.len = 0;
    batch_reply(&s, MC_OP_GATK, 500, "a", 0);
    CHECK(batch_feed_all(ab, &s, &hits, &errs, &err) == -1 &&
              err == MC_ERR_PROTOCOL,
          "a reply of another opcode fails the stream");

    /* quiet deletes: only failures answer, in order */
    mc_abi_batch_begin(ab, 7, MC_KIND_GET, 0);
    mc_abi_batch_add(ab, MC_OP_DELETEQ, 0, "a", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_add(ab, MC_OP_DELETEQ, 0, "b", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_add(ab, MC_OP_DELETEQ, 0, "c", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_seal(ab, &len);
    s.len = 0;
    batch_reply(&s, MC_OP_DELETEQ, 8, "", MC_STATUS_KEY_ENOENT);
    batch_reply(&s, MC_OP_NOOP, 10, "", 0);
    CHECK(batch_feed_all(ab, &s, &hits, &errs, &err) == 1 && errs == 1,
          "quiet: one failure reply, then done");
    s.len = 0;
    mc_abi_batch_begin(ab, 7, MC_KIND_GET, 0);
    mc_abi_batch_add(ab, MC_OP_DELETEQ, 0, "a", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_add(ab, MC_OP_DELETEQ, 0, "b", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_seal(ab, &len);
    batch_reply(&s, MC_OP_DELETEQ, 8, "", MC_STATUS_KEY_ENOENT);
    batch_reply(&s, MC_OP_DELETEQ, 7, "", MC_STATUS_KEY_ENOENT);
    CHECK(batch_feed_all(ab, &s, &hits, &errs, &err) == -1 &&
              err == MC_ERR_PROTOCOL,
          "quiet: a reply before an earlier one fails the stream");

    /* bytes after the NOOP; an auth status */
    s.len = 0;
    mc_abi_batch_begin(ab, 1, MC_KIND_GET, 1);
    mc_abi_batch_add(ab, MC_OP_GETK, 0, "a", 1, 0, 0, 0, NULL, 0);
    mc_abi_batch_seal(ab, &len);
    batch_reply(&s, MC_OP_GETK, 1, "a", 0);
    batch_reply(&s, MC_OP_NOOP, 2, "", 0);
    mc_buf_append(&s, "\x81", 1);
    {
        mc_abi_entry *e;
        int n;
        char msg[200];
        CHECK(mc_abi_batch_feed(ab, s.data, s.len, &e, &n, &err, msg,
                                sizeof(msg)) == -1 &&
                  err == MC_ERR_PROTOCOL,
              "bytes after the NOOP fail the stream");
        s.len = 0;
        mc_abi_batch_begin(ab, 1, MC_KIND_GET, 1);
        mc_abi_batch_add(ab, MC_OP_GETK, 0, "a", 1, 0, 0, 0, NULL, 0);
        mc_abi_batch_seal(ab, &len);
        batch_reply(&s, MC_OP_GETK, 1, "", MC_STATUS_AUTH_ERROR);
        CHECK(mc_abi_batch_feed(ab, s.data, s.len, &e, &n, &err, msg,
                                sizeof(msg)) == -1 &&
                  err == MC_ERR_AUTH,
              "an auth status fails the stream with MC_ERR_AUTH");
    }
    CHECK(mc_abi_batch_begin(ab, 1, 99, 1) == -1, "an unknown kind");
    mc_buf_free(&s);
    mc_abi_batch_free(ab);
}

/* The reply to one request through the C ABI (mc_abi_take_one). */
static void test_take_one(void)
{
    mc_abi_reply o;
    mc_buf s = {0};
    char msg[200];
    put_reply(&s, MC_OP_GETK, 9, "k", 1, "val", 3);
    CHECK(mc_abi_take_one(s.data, 10, 1024, MC_KIND_GET, MC_OP_GETK, 9, "k", 1,
                          &o, msg, sizeof(msg)) == 0 && o.need == 24,
          "a partial header: more, the header's length");
    CHECK(mc_abi_take_one(s.data, 30, 1024, MC_KIND_GET, MC_OP_GETK, 9, "k", 1,
                          &o, msg, sizeof(msg)) == 0 && o.need == s.len,
          "a partial body: more, the whole reply's length");
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GETK, 9, "k",
                          1, &o, msg, sizeof(msg)) == 1 &&
              o.err == 0 && o.used == s.len && o.vlen == 3 &&
              memcmp(s.data + o.voff, "val", 3) == 0 && o.klen == 1 &&
              s.data[o.koff] == 'k',
          "a whole hit: its value and key by offset");
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GETK, 8, "k",
                          1, &o, msg, sizeof(msg)) == -1 &&
              o.err == MC_ERR_PROTOCOL,
          "another opaque: the stream is out of step");
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GETK, 9, "x",
                          1, &o, msg, sizeof(msg)) == -1 &&
              o.err == MC_ERR_PROTOCOL,
          "a hit naming another key");
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GATK, 9, "k",
                          1, &o, msg, sizeof(msg)) == -1,
          "another opcode");
    mc_buf_append(&s, "\x81", 1);
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GETK, 9, "k",
                          1, &o, msg, sizeof(msg)) == -1 &&
              o.err == MC_ERR_PROTOCOL,
          "bytes after the reply");
    CHECK(mc_abi_take_one("ERROR Too many", 14, 1024, MC_KIND_GET, MC_OP_GETK,
                          9, "k", 1, &o, msg, sizeof(msg)) == -2,
          "a text line: for the driver's text reader");
    s.len = 0;
    put_reply(&s, MC_OP_GETK, 9, "k", 1, "val", 3);
    s.data[8] = 0x7f; /* a body over max_body */
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GETK, 9, "k",
                          1, &o, msg, sizeof(msg)) == -1,
          "a body over max_body is refused on the header");
    s.len = 0;
    put_reply(&s, MC_OP_STAT, 3, "pid", 3, "12", 2);
    put_reply(&s, MC_OP_STAT, 3, "", 0, "", 0);
    /* STAT replies carry no extras: take put_reply's 4 bytes out */
    memmove(s.data + 24, s.data + 28, s.len - 28);
    s.len -= 4;
    s.data[4] = 0;
    mc_store32(s.data + 8, 5);
    memmove(s.data + 29 + 24, s.data + 29 + 28, s.len - 29 - 28);
    s.len -= 4;
    s.data[29 + 4] = 0;
    mc_store32(s.data + 29 + 8, 0);
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_OTHER, MC_OP_STAT, 3,
                          NULL, 0, &o, msg, sizeof(msg)) == 1 &&
              o.used < s.len && o.klen == 3,
          "a STAT stream: one entry, the rest left for the next call");
    s.len = 0;
    put_reply(&s, MC_OP_GETK, 9, "k", 1, mc_lock_value, mc_lock_len);
    mc_store32(s.data + 24, MC_LOCK_FLAGS);
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_GET, MC_OP_GETK, 9, "k",
                          1, &o, msg, sizeof(msg)) == 1 &&
              o.err == MC_ERR_CACHE_MISS,
          "delete_lock's marker reads as a miss");
    s.len = 0;
    batch_reply(&s, MC_OP_SET, 4, "", MC_STATUS_AUTH_ERROR);
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_SET, MC_OP_SET, 4, NULL,
                          0, &o, msg, sizeof(msg)) == 1 &&
              o.err == MC_ERR_AUTH,
          "an auth status: MC_ERR_AUTH");
    s.len = 0;
    batch_reply(&s, MC_OP_ADD, 4, "", MC_STATUS_KEY_EEXISTS);
    CHECK(mc_abi_take_one(s.data, s.len, 1024, MC_KIND_ADD, MC_OP_ADD, 4, NULL,
                          0, &o, msg, sizeof(msg)) == 1 &&
              o.err == MC_ERR_NOT_STORED,
          "a status read for the kind: add's exists is not stored");
    mc_buf_free(&s);
}

/* A STAT entry as bytes: no extras. */
static void put_stat(mc_buf *out, uint32_t opaque, const char *k, const char *v)
{
    size_t at = out->len, kl = strlen(k), vl = strlen(v);
    put_reply(out, MC_OP_STAT, opaque, k, kl, v, vl);
    memmove(out->data + at + 24, out->data + at + 28, kl + vl);
    out->len -= 4;
    out->data[at + 4] = 0;
    mc_store32(out->data + at + 8, (uint32_t)(kl + vl));
}

/* Feeds bytes to p, step bytes at a time (0: all at once), and records
 * what mc_pipe_next says: refs of replies and entries in got[], the last
 * code that was not a reply or entry in *end. Returns how many. */
static int pipe_feed(mc_pipe *p, const char *b, size_t len, size_t step,
                     int *got, int max, int *end, mc_pipe_ev *last)
{
    size_t off = 0;
    int n = 0, rc = MC_PIPE_NEED;
    while (off < len) {
        size_t room, k = step && len - off > step ? step : len - off;
        char *in = mc_pipe_in(p, k, &room);
        memcpy(in, b + off, k);
        mc_pipe_got(p, k);
        off += k;
        while ((rc = mc_pipe_next(p, last)) == MC_PIPE_REPLY ||
               rc == MC_PIPE_ENTRY) {
            if (n < max)
                got[n] = rc == MC_PIPE_ENTRY ? -last->ref : last->ref;
            n++;
            if (rc == MC_PIPE_ENTRY && last->klen == 0)
                mc_pipe_pop(p);
        }
        if (rc != MC_PIPE_NEED)
            break;
    }
    *end = rc;
    return n;
}

/* Pushes a get of key under opaque for ref. */
static int pipe_get(mc_pipe *p, uint32_t opaque, const char *key, int ref)
{
    return mc_pipe_push_enc(p, MC_OP_GETK, MC_KIND_GET, opaque, 0, key,
                            strlen(key), 0, 0, 0, NULL, 0, 1, 0, ref);
}

static void test_pipe(void)
{
    mc_pipe p;
    mc_pipe_ev ev;
    mc_buf r = {0};
    int got[64], end, i, n;
    size_t len, step;
    const char *out;
    char key[16], val[16];

    /* three gets: framed back to back, each reply handed over only once
     * the next one is whole (or, for the last, nothing follows) */
    for (step = 0; step <= 7; step += 7) {
        mc_pipe_init(&p, 1024);
        CHECK(pipe_get(&p, 10, "a", 1) == 0 &&
                  pipe_get(&p, 11, "b", 2) == 0 &&
                  pipe_get(&p, 12, "c", 3) == 0,
              "three gets pushed");
        out = mc_pipe_out(&p, &len);
        CHECK(len == 3 * 25 && out[0] == (char)0x80 && out[25 + 1] == MC_OP_GETK,
              "their frames back to back (%zu bytes)", len);
        mc_pipe_sent(&p, len);
        r.len = 0;
        put_reply(&r, MC_OP_GETK, 10, "a", 1, "va", 2);
        put_reply(&r, MC_OP_GETK, 11, "b", 1, "vb", 2);
        n = pipe_feed(&p, r.data, r.len, step, got, 64, &end, &ev);
        CHECK(n == 1 && got[0] == 1 && end == MC_PIPE_NEED,
              "two replies (step %zu): the first handed over, the second held "
              "(%d)", step, n);
        r.len = 0;
        put_reply(&r, MC_OP_GETK, 12, "c", 1, "vc", 2);
        n = pipe_feed(&p, r.data, r.len, step, got, 64, &end, &ev);
        CHECK(n == 2 && got[0] == 2 && got[1] == 3 && ev.vlen == 2 &&
                  memcmp(ev.value, "vc", 2) == 0 && mc_pipe_clean(&p),
              "the last reply: both handed over in order, the pipe clean");
        mc_pipe_free(&p);
    }

    /* a length that swallows the start of the next reply: nothing of the
     * swallowed bytes reaches the first caller */
    mc_pipe_init(&p, 1024);
    pipe_get(&p, 1, "a", 1);
    pipe_get(&p, 2, "b", 2);
    r.len = 0;
    put_reply(&r, MC_OP_GETK, 1, "a", 1, "va", 2);
    put_reply(&r, MC_OP_GETK, 2, "b", 1, "vb", 2);
    mc_store32(r.data + 8, 4 + 1 + 2 + 10); /* the first swallows 10 bytes */
    n = pipe_feed(&p, r.data, r.len, 0, got, 64, &end, &ev);
    CHECK(n == 0 && end == MC_PIPE_FAIL && ev.err == MC_ERR_PROTOCOL,
          "a swallowing length fails the pipe; no reply handed over (%d, %d)",
          n, end);
    mc_pipe_free(&p);

    /* bytes after the last reply */
    mc_pipe_init(&p, 1024);
    pipe_get(&p, 1, "a", 1);
    r.len = 0;
    put_reply(&r, MC_OP_GETK, 1, "a", 1, "va", 2);
    mc_buf_append(&r, "\x81\x00", 2);
    n = pipe_feed(&p, r.data, r.len, 0, got, 64, &end, &ev);
    CHECK(n == 0 && end == MC_PIPE_FAIL &&
              strstr(ev.msg, "nobody asked for") != NULL,
          "bytes after the last reply fail it: %s", ev.msg);
    mc_pipe_free(&p);

    /* another opaque: out of step */
    mc_pipe_init(&p, 1024);
    pipe_get(&p, 1, "a", 1);
    pipe_get(&p, 2, "b", 2);
    r.len = 0;
    put_reply(&r, MC_OP_GETK, 2, "b", 1, "vb", 2);
    put_reply(&r, MC_OP_GETK, 1, "a", 1, "va", 2);
    n = pipe_feed(&p, r.data, r.len, 0, got, 64, &end, &ev);
    CHECK(n == 0 && end == MC_PIPE_FAIL, "replies out of order: it fails");
    mc_pipe_free(&p);

    /* a text line where the first reply starts */
    mc_pipe_init(&p, 1024);
    pipe_get(&p, 1, "a", 1);
    n = pipe_feed(&p, "ERROR Too many open connections\r\n", 33, 0, got, 64,
                  &end, &ev);
    out = mc_pipe_rest(&p, &len);
    CHECK(n == 0 && end == MC_PIPE_TEXT && len == 33 &&
              memcmp(out, "ERROR", 5) == 0,
          "a text line: for the driver's text reader, its bytes kept");
    mc_pipe_free(&p);

    /* a STAT stream, then a get behind it */
    mc_pipe_init(&p, 1024);
    mc_pipe_push_enc(&p, MC_OP_STAT, MC_KIND_OTHER, 5, 0, NULL, 0, 0, 0, 0, NULL,
                     0, 0, 1, 7);
    pipe_get(&p, 6, "k", 8);
    r.len = 0;
    put_stat(&r, 5, "pid", "12");
    put_stat(&r, 5, "uptime", "3");
    put_stat(&r, 5, "", "");
    put_reply(&r, MC_OP_GETK, 6, "k", 1, "v", 1);
    out = mc_pipe_out(&p, &len);
    CHECK(len > 0 && !mc_pipe_clean(&p), "unsent bytes: not clean");
    mc_pipe_sent(&p, len);
    n = pipe_feed(&p, r.data, r.len, 5, got, 64, &end, &ev);
    CHECK(n == 4 && got[0] == -7 && got[1] == -7 && got[2] == -7 &&
              got[3] == 8 && mc_pipe_clean(&p),
          "a STAT stream's entries, then the get's reply (%d)", n);
    mc_pipe_free(&p);

    /* more requests than the FIFO first holds, replies in pieces */
    mc_pipe_init(&p, 1024);
    r.len = 0;
    for (i = 0; i < 40; i++) {
        snprintf(key, sizeof key, "k%d", i);
        snprintf(val, sizeof val, "v%d", i);
        mc_pipe_push_enc(&p, MC_OP_GETK, MC_KIND_GET, (uint32_t)(100 + i), 0,
                         key, strlen(key), 0, 0, 0, NULL, 0, 1, 0, i + 1);
        put_reply(&r, MC_OP_GETK, (uint32_t)(100 + i), key, strlen(key), val,
                  strlen(val));
    }
    n = pipe_feed(&p, r.data, r.len, 13, got, 64, &end, &ev);
    for (i = 0; i < n && i < 40 && got[i] == i + 1; i++)
        ;
    CHECK(n == 40 && i == 40 && ev.vlen == 3 && memcmp(ev.value, "v39", 3) == 0,
          "40 requests: every reply to its own, in order (%d)", n);
    mc_pipe_free(&p);

    /* a hit naming another key than the request's */
    mc_pipe_init(&p, 1024);
    pipe_get(&p, 1, "a", 1);
    r.len = 0;
    put_reply(&r, MC_OP_GETK, 1, "z", 1, "vz", 2);
    n = pipe_feed(&p, r.data, r.len, 0, got, 64, &end, &ev);
    CHECK(n == 0 && end == MC_PIPE_FAIL, "a hit naming another key fails it");
    mc_pipe_reset(&p);
    CHECK(mc_pipe_clean(&p) && mc_pipe_ref(&p, 0) == 0,
          "reset: nothing in flight, unsent or unread");
    mc_pipe_free(&p);
    mc_buf_free(&r);
}

/* SASL through the ABI (mc_abi_sasl_*), as the OpenResty driver calls it:
 * the frames are mc_sasl's, and a reply is judged piece by piece. */
static void test_abi_sasl(void)
{
    char out[600], small[30], msg[200], reply[64];
    uint32_t need = 0;
    mc_buf b = {0};
    int n, i, rc = 0;
    static const char mechs[] = "CRAM-MD5 PLAIN";

    n = mc_abi_sasl_frame(out, sizeof(out), 0, 3, NULL, 0, NULL, 0);
    CHECK(n == 24 && out[1] == 0x20 && mc_load32(out + 12) == 3,
          "step 0 is LIST_MECHS (%d bytes)", n);
    n = mc_abi_sasl_frame(out, sizeof(out), 1, 9, "user", 4, "pwd!?", 5);
    CHECK(mc_sasl_enc_plain(&b, 9, "user", 4, "pwd!?", 5) == 0 &&
              n == (int)b.len && memcmp(out, b.data, b.len) == 0,
          "step 1 is mc_sasl's AUTH PLAIN frame (%d bytes)", n);
    mc_buf_free(&b);
    CHECK(mc_abi_sasl_frame(small, sizeof(small), 1, 9, "user", 4, "pwd!?", 5)
              == -n, "too small a buffer: the length needed");
    CHECK(mc_abi_sasl_frame(out, sizeof(out), 1, 9, "a\0b", 3, "p", 1) == 0 &&
              mc_abi_sasl_frame(out, sizeof(out), 2, 9, "u", 1, "p", 1) == 0,
          "a NUL in a credential, an unknown step: nothing framed");

    /* a LIST_MECHS reply, fed a byte more at a time */
    memset(reply, 0, sizeof(reply));
    reply[0] = (char)0x81;
    reply[1] = 0x20;
    mc_store32(reply + 8, (uint32_t)strlen(mechs));
    mc_store32(reply + 12, 3);
    memcpy(reply + 24, mechs, strlen(mechs));
    for (i = 0; i < 24 + (int)strlen(mechs); i++) {
        rc = mc_abi_sasl_check(reply, (size_t)i, 0, 3, &need, msg, sizeof(msg));
        if (rc != -1 || need != (i < 24 ? 24u : 24u + strlen(mechs)))
            break;
    }
    CHECK(i == 24 + (int)strlen(mechs), "need more until whole (at %d)", i);
    CHECK(mc_abi_sasl_check(reply, (size_t)i, 0, 3, &need, msg, sizeof(msg)) ==
              MC_OK, "PLAIN offered: go on");
    CHECK(mc_abi_sasl_check(reply, (size_t)i + 1, 0, 3, &need, msg,
                            sizeof(msg)) == MC_ERR_PROTOCOL,
          "bytes after the reply");
    CHECK(mc_abi_sasl_check(reply, (size_t)i, 0, 4, &need, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "another opaque");
    CHECK(mc_abi_sasl_check(reply, (size_t)i, 1, 3, &need, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "LIST_MECHS's reply to AUTH");
    CHECK(mc_abi_sasl_check("ERROR\r\n", 7, 0, 3, &need, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "a text line");
    /* AUTH refused */
    reply[1] = 0x21;
    mc_store16(reply + 6, MC_STATUS_AUTH_ERROR);
    mc_store32(reply + 8, 12);
    memcpy(reply + 24, "Auth failure", 12);
    CHECK(mc_abi_sasl_check(reply, 36, 1, 3, &need, msg, sizeof(msg)) ==
              MC_ERR_AUTH && strstr(msg, "Auth failure"),
          "refused credentials (%s)", msg);
    mc_store16(reply + 6, 0);
    CHECK(mc_abi_sasl_check(reply, 36, 1, 3, &need, msg, sizeof(msg)) == MC_OK,
          "accepted");
    mc_store32(reply + 8, 100000);
    CHECK(mc_abi_sasl_check(reply, 24, 1, 3, &need, msg, sizeof(msg)) ==
              MC_ERR_PROTOCOL, "a body past the cap, refused from its header");
}

int main(void)
{
    counting_codec = mc_codec_binary;
    counting_codec.simple = counting_simple;
    counting_codec.read = counting_read;
    test_keys();
    test_statuses();
    test_lock();
    test_errors();
    test_abi();
    test_health();
    test_feed();
    test_place();
    test_reply_check();
    test_sasl();
    test_abi_sasl();
    test_addr();
    test_ring();
    test_abi_batch();
    test_take_one();
    test_pipe();
    test_req_cut();
    CHECK(codec_simple_calls > 0 && codec_read_calls > 0,
          "the feed frames and reads through its codec (%d, %d calls)",
          codec_simple_calls, codec_read_calls);
    return CHECK_REPORT();
}
