-- memcached.resty.core: what the OpenResty driver takes from the C core
-- (memcached.so's plain C ABI, src/core/mc_abi.h, through LuaJIT's FFI)
-- and from memcached.codec: framing, the meaning of statuses, the lock
-- marker, counters, addresses, the ERR_* values; and the argument helpers
-- every method shares. No I/O.
local memcached = require "memcached"
local ffi = require "ffi"

local codec = memcached.codec
local OP, ST = codec.op, codec.status
local HEADER_LEN, NO_CREATE = codec.HEADER_LEN, codec.ARITH_NO_CREATE
local c_get, c_store, c_concat, c_delete -- framed through the FFI (below)
local c_arith, c_touch, c_flush, c_simple = codec.arith, codec.touch, codec.flush
local c_stat = codec.stat
local status_str, new_text_reader, random32 = codec.status_str, codec.reader, codec.random32
local mp_encode, mp_decode = memcached.encode, memcached.decode
local find, sub = string.find, string.sub
local type, error, tostring, pairs, ipairs = type, error, tostring, pairs, ipairs
local tonumber = tonumber


local E = {} -- the ERR_* values
for k, v in pairs(memcached) do
  if type(k) == "string" and sub(k, 1, 4) == "ERR_" then E[k] = v end
end

local E_MISS = E.ERR_CACHE_MISS
local E_SERVER, E_KEY, E_PROTOCOL = E.ERR_SERVER_ERROR, E.ERR_MALFORMED_KEY, E.ERR_PROTOCOL
local E_CLOSED, E_CLIENT_CLOSED = E.ERR_CONNECTION_CLOSED, E.ERR_CLIENT_CLOSED
local E_AUTH = E.ERR_AUTH
local A = require "memcached.args"
local CLOSED_DETAIL, KEY_DETAIL = A.CLOSED_DETAIL, A.KEY_DETAIL
local U32 = 4294967295

-- The rules live once, in the C core; the same memcached.so exports them
-- through a plain C ABI (src/core/mc_abi.h), which LuaJIT's FFI calls (and
-- compiles) directly.
ffi.cdef [[
enum mc_op_kind { MC_KIND_GET, MC_KIND_SET, MC_KIND_ADD, MC_KIND_REPLACE, MC_KIND_OTHER };
int mc_abi_key_ok(const char *k, size_t n);
int mc_abi_status_err(int kind, int status);
const char *mc_abi_err_str(int err);
int mc_abi_err_count(void);
int mc_abi_is_lock(uint32_t flags, const char *value, size_t len);
const char *mc_abi_lock_marker(uint32_t *flags, size_t *len);
int mc_abi_status_is_auth(int status);
int mc_abi_reply_key_ok(int status, const char *rkey, size_t rlen, const char *key, size_t keylen);
int mc_abi_resend_safe(const char *p, size_t n);
int mc_abi_health_verdict(int err);
int mc_abi_max_stat_entries(void);
int mc_abi_counter_value(const char *value, size_t len, uint64_t *v);
int mc_abi_addr_split(const char *spec, int *kind, char *host, size_t hostlen,
                      unsigned *port, char *err, size_t errlen);
int mc_resolve_host(const char *host, char *out, size_t outlen);
int mc_abi_enc(char *out, size_t cap, int opcode, uint32_t opaque, double cas, const char *key,
               size_t keylen, int extras, uint32_t flags, uint32_t exptime, const char *value,
               size_t vallen);
typedef struct mc_ring mc_ring;
mc_ring *mc_abi_ring_new(int selector, const char *const *addrs, const unsigned *weights,
                         size_t n, unsigned failure_limit, double retry_timeout, int eject,
                         char *err, size_t errlen);
void mc_abi_ring_free(mc_ring *r);
int mc_abi_ring_nservers(const mc_ring *r);
const char *mc_abi_ring_name(const mc_ring *r, int srv);
int mc_abi_ring_alive(const mc_ring *r, int srv, unsigned *failures, const char **last_error);
int mc_abi_ring_intern(mc_ring *r, const char *addr, char *err, size_t errlen);
int mc_abi_ring_static(const mc_ring *r, const char *key, size_t len);
int mc_abi_ring_pick(mc_ring *r, const char *key, size_t len, double now, int *probe, int *err);
int mc_abi_ring_around(mc_ring *r, const char *key, size_t len, int *err);
int mc_abi_ring_usable(mc_ring *r, int srv, double now, int *probe);
int mc_abi_ring_failed(mc_ring *r, int srv, double now, const char *why);
int mc_abi_ring_ok(mc_ring *r, int srv);
int mc_abi_ring_dead_until(mc_ring *r, int srv, double until, const char *why);
typedef struct mc_abi_reply {
  int err, status;
  uint32_t flags;
  double cas;
  uint32_t koff, klen, voff, vlen;
  uint32_t used, need;
} mc_abi_reply;
int mc_abi_take_one(const char *p, size_t len, size_t max_body, int kind, int opcode,
                    uint32_t opaque, const char *key, size_t keylen, mc_abi_reply *out,
                    char *msg, size_t msglen);
double mc_abi_ring_retry_at(const mc_ring *r, int srv);
typedef struct mc_abi_entry {
  uint32_t idx;
  int err;
  int status;
  uint32_t flags;
  uint32_t vlen;
  double cas;
  const char *value;
} mc_abi_entry;
typedef struct mc_abi_batch mc_abi_batch;
mc_abi_batch *mc_abi_batch_new(size_t max_body);
void mc_abi_batch_free(mc_abi_batch *ab);
int mc_abi_batch_begin(mc_abi_batch *ab, uint32_t base, int kind, int every_reply);
int mc_abi_batch_add(mc_abi_batch *ab, int opcode, double cas, const char *key, size_t keylen,
                     int extras, uint32_t flags, uint32_t exptime, const char *value,
                     size_t vallen);
const char *mc_abi_batch_seal(mc_abi_batch *ab, size_t *len);
int mc_abi_batch_feed(mc_abi_batch *ab, const char *data, size_t len, mc_abi_entry **out,
                      int *nout, int *err, char *msg, size_t msglen);
int mc_abi_sasl_frame(char *out, size_t cap, int step, uint32_t opaque, const char *user,
                      size_t ulen, const char *pass, size_t plen);
int mc_abi_sasl_check(const char *p, size_t len, int step, uint32_t opaque, uint32_t *need,
                      char *msg, size_t msglen);
]]
local core = ffi.load(assert(package.searchpath("memcached", package.cpath),
  "memcached.so not found on package.cpath"))
local c_key_ok, c_status_err, c_is_lock = core.mc_abi_key_ok, core.mc_abi_status_err, core.mc_abi_is_lock
local c_is_auth, c_reply_key_ok, c_resend_safe = core.mc_abi_status_is_auth, core.mc_abi_reply_key_ok,
  core.mc_abi_resend_safe

-- Requests framed by the core (mc_abi_enc) into one buffer that grows as
-- needed; the FFI calls compile, where the Lua C API codec would end the
-- trace. The hot forms (get, stores, append/prepend, delete, NOOP,
-- VERSION) go this way; the rest through memcached.codec.
local enc_cap = 4096
local enc_buf = ffi.new("char[?]", enc_cap)
local function frame(op, opaque, cas, key, extras, flags, exptime, value)
  local klen, vlen = key and #key or 0, value and #value or 0
  local n = core.mc_abi_enc(enc_buf, enc_cap, op, opaque, cas or 0, key, klen, extras,
    flags or 0, exptime or 0, value, vlen)
  if n < 0 and n > -2147483648 then
    enc_cap = -n
    enc_buf = ffi.new("char[?]", enc_cap)
    n = core.mc_abi_enc(enc_buf, enc_cap, op, opaque, cas or 0, key, klen, extras,
      flags or 0, exptime or 0, value, vlen)
  end
  if n < 0 then error("request too large to frame", 3) end
  return ffi.string(enc_buf, n)
end
c_get = function(op, opaque, key) return frame(op, opaque, 0, key, 0, 0, 0, nil) end
c_store = function(op, opaque, cas, key, flags, exptime, value)
  return frame(op, opaque, cas, key, 1, flags, exptime, value)
end
c_concat = function(op, opaque, cas, key, value) return frame(op, opaque, cas, key, 0, 0, 0, value) end
c_delete = function(op, opaque, cas, key) return frame(op, opaque, cas, key, 0, 0, 0, nil) end
c_simple = function(op, opaque) return frame(op, opaque, 0, nil, 0, 0, 0, nil) end

-- error number -> its ERR_* string, once
local err_str = {}
local err_num = {} -- and back: the core's number of each ERR_* string
for e = 1, core.mc_abi_err_count() - 1 do
  err_str[e] = ffi.string(core.mc_abi_err_str(e))
  err_num[err_str[e]] = e
end

-- delete_lock's marker: such an item reads as a miss. The marker that
-- delete_lock writes (flags and value) is the core's too.
local function is_lock(r)
  return c_is_lock(r.flags, r.value, #r.value) ~= 0
end
local LOCK_FLAGS, LOCK_VALUE
do
  local f, n = ffi.new("uint32_t[1]"), ffi.new("size_t[1]")
  local v = core.mc_abi_lock_marker(f, n)
  LOCK_FLAGS, LOCK_VALUE = tonumber(f[0]), ffi.string(v, n[0])
end

-- A counter reply's value (the core's mc_counter_value), or nil. LuaJIT's
-- numbers are doubles: exact up to 2^53, as tonumber of the uint64 gives.
local counter_v = ffi.new("uint64_t[1]")
local function counter_value(v)
  if core.mc_abi_counter_value(v, #v, counter_v) ~= 0 then return nil end
  return tonumber(counter_v[0])
end

-- How an operation reads "not found" / "exists".
local K_GET, K_SET, K_ADD, K_REPLACE, K_OTHER = core.MC_KIND_GET, core.MC_KIND_SET,
  core.MC_KIND_ADD, core.MC_KIND_REPLACE, core.MC_KIND_OTHER
local function status_err(kind, st)
  return err_str[c_status_err(kind, st)]
end

-- memcached -S answers an unauthenticated request with an auth status and
-- closes the connection: such a cosocket must be closed, not pooled.
local function is_auth(st)
  return c_is_auth(st) ~= 0
end

-- A reply may answer a request for key: a hit names it, an error reply
-- names it or no key.
local function reply_key_ok(res, key)
  return c_reply_key_ok(res.status, res.key, #res.key, key, #key) ~= 0
end

-- Every request framed in data may be sent twice (README, Errors).
local function resend_safe(data)
  return c_resend_safe(data, #data) ~= 0
end

-- How a pooled cosocket whose server closed it meanwhile fails (send, or
-- the first read of the reply).
local STALE = { closed = true, ["connection reset by peer"] = true, ["broken pipe"] = true }

-- Cosocket errors -> ERR_*; a reset or a broken pipe is a closed connection,
-- as for the C client.
local function sock_fail(sock, addr, what, err)
  if sock then sock:close() end
  local e = E.ERR_IO
  if err == "timeout" then e = E.ERR_TIMEOUT
  elseif err == "closed" or err == "connection reset by peer" or err == "broken pipe" then e = E_CLOSED
  elseif err and find(err, "refused", 1, true) then e = E.ERR_CONNECTION_REFUSED
  elseif err and find(err, "too many waiting connect", 1, true) then
    e = E.ERR_BUSY -- max_conns connections are all in use (nginx's backlog 0)
  end
  return nil, e, addr .. ": " .. what .. ": " .. tostring(err)
end

local function key_ok(key)
  return c_key_ok(key, #key) ~= 0
end

-- The binding's argument rules, shared with memcached.async
local check_key, opt_uint, field, fields = A.check_key, A.opt_uint, A.field, A.fields

-- An address as a cosocket connects to it: host and port, or "unix:path"
-- (the core's address rule, mc_addr_split: "host:port", "[v6]:port",
-- "host", a bare v6 address, "/path", "@abstract"). Cached per address;
-- resolve_names (at new) puts a host name's address there first.
local addr_cache = {}
local ab_kind, ab_port = ffi.new("int[1]"), ffi.new("unsigned[1]")
local ab_host, ab_err = ffi.new("char[256]"), ffi.new("char[256]")
local function split_addr(addr)
  local a = addr_cache[addr]
  if not a then
    if core.mc_abi_addr_split(addr, ab_kind, ab_host, 256, ab_port, ab_err, 256) ~= 0 then
      return nil, ffi.string(ab_err)
    end
    local host = ffi.string(ab_host)
    if ab_kind[0] ~= 0 then a = { "unix:" .. host }
    elseif find(host, ":", 1, true) then a = { "[" .. host .. "]", tonumber(ab_port[0]) }
    else a = { host, tonumber(ab_port[0]) } end
    addr_cache[addr] = a
  end
  return a[1], a[2]
end

-- The name a TLS handshake sends (SNI) and checks the certificate
-- against: the host part of the address as written (not the address it
-- was resolved to), the core's split; nil for a unix socket.
local function tls_host(addr)
  if core.mc_abi_addr_split(addr, ab_kind, ab_host, 256, ab_port, ab_err, 256) ~= 0
      or ab_kind[0] ~= 0 then
    return nil
  end
  return ffi.string(ab_host)
end

-- Host names in the list are resolved once, here (a blocking getaddrinfo:
-- create clients in init_worker_by_lua*), and dialled by address, unless
-- the user says nginx's resolver (the `resolver` directive) should do it
-- at each connect (resolver = true). The name still places keys and
-- names the server. Returns nil, or err, detail.
local function resolve_names(list, by_nginx)
  if by_nginx then return end
  for _, e in ipairs(list) do
    local addr = e[1]
    if not addr_cache[addr] then
      local host, port = split_addr(addr)
      if host and port and not find(host, "^%d+%.%d+%.%d+%.%d+$") and not find(host, ":", 1, true) then
        if core.mc_resolve_host(host, ab_host, 256) ~= 0 then
          addr_cache[addr] = nil
          return E.ERR_BAD_SERVER, ffi.string(ab_host)
        end
        local ip = ffi.string(ab_host)
        addr_cache[addr] = { find(ip, ":", 1, true) and "[" .. ip .. "]" or ip, port }
      end
    end
  end
end



return {
  codec = codec,
  OP = OP,
  ST = ST,
  HEADER_LEN = HEADER_LEN,
  NO_CREATE = NO_CREATE,
  c_get = c_get,
  c_store = c_store,
  c_concat = c_concat,
  c_delete = c_delete,
  c_arith = c_arith,
  c_touch = c_touch,
  c_flush = c_flush,
  c_simple = c_simple,
  c_stat = c_stat,
  status_str = status_str,
  new_text_reader = new_text_reader,
  random32 = random32,
  mp_encode = mp_encode,
  mp_decode = mp_decode,
  E = E,
  E_MISS = E_MISS,
  E_SERVER = E_SERVER,
  E_KEY = E_KEY,
  E_PROTOCOL = E_PROTOCOL,
  E_CLOSED = E_CLOSED,
  E_CLIENT_CLOSED = E_CLIENT_CLOSED,
  E_AUTH = E_AUTH,
  CLOSED_DETAIL = CLOSED_DETAIL,
  KEY_DETAIL = KEY_DETAIL,
  U32 = U32,
  core = core,
  c_key_ok = c_key_ok,
  c_status_err = c_status_err,
  c_is_lock = c_is_lock,
  c_is_auth = c_is_auth,
  c_reply_key_ok = c_reply_key_ok,
  c_resend_safe = c_resend_safe,
  enc_cap = enc_cap,
  enc_buf = enc_buf,
  frame = frame,
  err_str = err_str,
  err_num = err_num,
  is_lock = is_lock,
  LOCK_FLAGS = LOCK_FLAGS,
  LOCK_VALUE = LOCK_VALUE,
  counter_v = counter_v,
  counter_value = counter_value,
  K_GET = K_GET,
  K_SET = K_SET,
  K_ADD = K_ADD,
  K_REPLACE = K_REPLACE,
  K_OTHER = K_OTHER,
  status_err = status_err,
  is_auth = is_auth,
  reply_key_ok = reply_key_ok,
  resend_safe = resend_safe,
  STALE = STALE,
  sock_fail = sock_fail,
  key_ok = key_ok,
  check_key = check_key,
  opt_uint = opt_uint,
  field = field,
  fields = fields,
  addr_cache = addr_cache,
  ab_kind = ab_kind,
  ab_port = ab_port,
  ab_host = ab_host,
  ab_err = ab_err,
  split_addr = split_addr,
  tls_host = tls_host,
  resolve_names = resolve_names,
}
