-- memcached.resty: the memcached client for OpenResty/nginx workers.
--
-- The C client's methods, arguments, returns and ERR_* values (README), but
-- every byte travels over ngx.socket.tcp cosockets, so a request handler
-- yields instead of blocking the worker. Requests are framed and replies
-- parsed by the C codec (memcached.codec); keys are placed by a C client
-- that is only asked pick_server (it never connects), so both clients put a
-- key on the same server.
--
-- A connection goes back to nginx's keepalive pool only after a whole reply
-- was read; any error or timeout closes it, so no caller ever reads a reply
-- meant for another. An auth-status reply (memcached -S, which closes the
-- connection after it) closes it too. A request that is safe to send twice
-- and fails on a pooled connection before any byte of its reply (the
-- server closed it meanwhile: restarted, idle timeout) is sent once more on
-- a fresh connection, as the C client does. Every reply's opaque and
-- opcode are checked, and an item's reply must name its key (GETK, GATK).
-- A client's opaques start at a random value (pooled connections are
-- shared by clients), so a reply nobody asked for cannot guess them.
local memcached = require "memcached"
local ffi = require "ffi"

local codec = memcached.codec
local OP, ST = codec.op, codec.status
local HEADER_LEN, NO_CREATE = codec.HEADER_LEN, codec.ARITH_NO_CREATE
local c_get, c_store, c_concat, c_delete -- framed through the FFI (below)
local c_arith, c_touch, c_flush, c_simple = codec.arith, codec.touch, codec.flush, nil
local c_stat = codec.stat
local status_str, new_text_reader, random32 = codec.status_str, codec.reader, codec.random32
local mp_encode, mp_decode = memcached.encode, memcached.decode
local ngx_socket_tcp, ngx_now, ngx_update_time = ngx.socket.tcp, ngx.now, ngx.update_time
local ngx_thread_spawn, ngx_thread_wait = ngx.thread.spawn, ngx.thread.wait
local byte, find, sub, concat = string.byte, string.find, string.sub, table.concat
local type, error, tostring, pairs, ipairs, next = type, error, tostring, pairs, ipairs, next
local setmetatable, select, floor, max, tonumber = setmetatable, select, math.floor, math.max, tonumber

local _M = { _VERSION = "0.1" }
for k, v in pairs(memcached) do
  if type(k) == "string" and sub(k, 1, 4) == "ERR_" then _M[k] = v end
end
local mt = { __index = _M }

local E_MISS = _M.ERR_CACHE_MISS
local E_SERVER, E_KEY, E_PROTOCOL = _M.ERR_SERVER_ERROR, _M.ERR_MALFORMED_KEY, _M.ERR_PROTOCOL
local E_CLOSED, E_CLIENT_CLOSED = _M.ERR_CONNECTION_CLOSED, _M.ERR_CLIENT_CLOSED
local E_AUTH = _M.ERR_AUTH
local CLOSED_DETAIL = "the client was closed"
local KEY_DETAIL = "keys are 1 to 250 bytes without spaces or control characters"
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
int mc_abi_counter_value(const char *value, size_t len, uint64_t *v);
int mc_abi_addr_split(const char *spec, int *kind, char *host, size_t hostlen,
                      unsigned *port, char *err, size_t errlen);
int mc_resolve_host(const char *host, char *out, size_t outlen);
int mc_abi_enc(char *out, size_t cap, int opcode, uint32_t opaque, double cas, const char *key,
               size_t keylen, int extras, uint32_t flags, uint32_t exptime, const char *value,
               size_t vallen);
typedef struct mc_abi_head {
  int opcode, status, extlen, keylen;
  uint32_t bodylen, opaque;
  double cas;
} mc_abi_head;
int mc_abi_read_head(const char *h, size_t max_body, mc_abi_head *out, char *err, size_t errlen);
int mc_abi_shape_ok(int opcode, int status, int extlen, int keylen, size_t vallen);
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
double mc_abi_ring_retry_at(const mc_ring *r, int srv);
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
for e = 1, core.mc_abi_err_count() - 1 do err_str[e] = ffi.string(core.mc_abi_err_str(e)) end

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
  local e = _M.ERR_IO
  if err == "timeout" then e = _M.ERR_TIMEOUT
  elseif err == "closed" or err == "connection reset by peer" or err == "broken pipe" then e = E_CLOSED
  elseif err and find(err, "refused", 1, true) then e = _M.ERR_CONNECTION_REFUSED
  end
  return nil, e, addr .. ": " .. what .. ": " .. tostring(err)
end

local function key_ok(key)
  return c_key_ok(key, #key) ~= 0
end

local function check_key(key)
  if type(key) ~= "string" then
    error("bad argument #1 (key): string expected, got " .. type(key), 3)
  end
end

-- An optional integer argument in 0..hi.
local function opt_uint(n, name, v, hi)
  if v ~= nil and (type(v) ~= "number" or v ~= floor(v) or v < 0 or (hi and v > hi)) then
    error(("bad argument #%d (%s): integer 0..%s expected, got %s")
      :format(n, name, tostring(hi or "2^64"), tostring(v)), 3)
  end
  return v
end

-- The one-table form ({key =, value =, expiration =, ...}) as positional
-- values; `expiration` also answers to `exptime`.
local function field(t, name)
  if name == "expiration" then return t.expiration or t.exptime end
  return name and t[name]
end
local function fields(t, a, b, c, d, e)
  return field(t, a), field(t, b), field(t, c), field(t, d), field(t, e)
end

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
          return _M.ERR_BAD_SERVER, ffi.string(ab_host)
        end
        local ip = ffi.string(ab_host)
        addr_cache[addr] = { find(ip, ":", 1, true) and "[" .. ip .. "]" or ip, port }
      end
    end
  end
end

local OPTIONS = { servers = 1, timeout = 1, connect_timeout = 1, io_timeout = 1,
  pool_size = 1, keepalive_timeout = 1, msgpack_flag = 1, selector = 1,
  failure_limit = 1, retry_timeout = 1, eject = 1, probe_timeout = 1, resolver = 1,
  shared_dict = 1 }
local SELECTORS = { modulo = 0, ketama = 1, gomemcached = 2 }

-- The server list as the C client reads it: strings, {addr, weight = n},
-- {addr, n}, or lists of those.
local function server_list(list, out)
  out = out or {}
  for i = 1, #list do
    local e = list[i]
    if type(e) == "string" then out[#out + 1] = { e, 1 }
    elseif type(e) == "table" and type(e[1]) == "string" then
      local w = e.weight or e[2] or 1
      if type(w) ~= "number" or w ~= floor(w) or w < 1 or w > 65535 then
        error("server weight must be an integer 1..65535", 3)
      end
      out[#out + 1] = { e[1], w }
    elseif type(e) == "table" then server_list(e, out)
    else
      error("bad server #" .. i .. ": \"host:port\", a unix socket path or {addr, weight = n} expected, got "
        .. type(e), 3)
    end
  end
  return out
end

-- The core's server list with placement and health (mc_ring): the same
-- server for every key as the C client, dead servers routed around.
local ring_err = ffi.new("char[256]")
local function new_ring(self, list)
  local n = #list
  local addrs, weights = ffi.new("const char *[?]", n + 1), ffi.new("unsigned[?]", n + 1)
  for i, e in ipairs(list) do
    addrs[i - 1] = e[1] -- the strings live in list for the call
    weights[i - 1] = e[2]
  end
  local ring = core.mc_abi_ring_new(self.selector, addrs, weights, n, self.failure_limit,
    self.retry_timeout, self.eject and 1 or 0, ring_err, 256)
  if ring == nil then return nil, _M.ERR_BAD_SERVER, ffi.string(ring_err) end
  return ffi.gc(ring, core.mc_abi_ring_free)
end

local function opt_seconds(opts, name, def, lo)
  local v = opts[name]
  if v == nil then return def end
  if type(v) ~= "number" or v < lo then error("option '" .. name .. "' must be a number >= " .. lo, 3) end
  return v
end

-- new{servers =, timeout =, connect_timeout =, io_timeout =, pool_size =,
-- keepalive_timeout =, msgpack_flag =, selector =, failure_limit =,
-- retry_timeout =, eject =, probe_timeout =}, or new(server, ...).
function _M.new(opts, ...)
  if type(opts) ~= "table" or opts[1] ~= nil then opts = { servers = { opts, ... } } end
  for k in pairs(opts) do
    if not OPTIONS[k] then error("unknown option '" .. tostring(k) .. "'", 2) end
  end
  local timeout = opts.timeout or memcached.DEFAULT_TIMEOUT
  local sel = opts.selector or "ketama"
  local custom
  if type(sel) == "function" or type(sel) == "table" then custom, sel = sel, "ketama"
  elseif SELECTORS[sel] == nil then error("unknown selector '" .. tostring(sel) .. "'", 2) end
  local failure_limit = opts.failure_limit or 2
  if type(failure_limit) ~= "number" or failure_limit < 1 or failure_limit ~= floor(failure_limit) then
    error("option 'failure_limit' must be 1 or more", 2)
  end
  local connect = opt_seconds(opts, "connect_timeout", timeout, 0.001)
  local self = setmetatable({
    connect_ms = floor(connect * 1000 + 0.5),
    io_timeout = opt_seconds(opts, "io_timeout", timeout, 0.001),
    pool_size = opts.pool_size,
    keepalive_ms = floor((opts.keepalive_timeout or 60) * 1000 + 0.5),
    mp_flag = opts.msgpack_flag or 1,
    selector = SELECTORS[sel],
    custom = custom,
    failure_limit = failure_limit,
    retry_timeout = opt_seconds(opts, "retry_timeout", 1.0, 0),
    probe_ms = floor(math.min(opt_seconds(opts, "probe_timeout", 0.02, 0.001), connect) * 1000 + 0.5),
    eject = opts.eject ~= false,
    seq = random32(), -- next opaque
    readers = {}, -- idle codec readers
    records = {}, -- per server address (server_record)
  }, mt)
  if opts.shared_dict ~= nil then
    local dict = ngx.shared and ngx.shared[opts.shared_dict]
    if not dict then
      error("option 'shared_dict': no lua_shared_dict named '" .. tostring(opts.shared_dict) .. "'", 2)
    end
    self.dict = dict
  end
  local list = server_list(opts.servers or {})
  local ring, err, detail = new_ring(self, list)
  if not ring then return nil, err, detail end
  self.by_resolver = opts.resolver == true
  err, detail = resolve_names(list, self.by_resolver)
  if err then return nil, err, detail end
  self.ring, self.list, self.names = ring, list, {}
  return self
end

-- set_server_error_callback(fn(addr, reason, "down" | "up")): told of every
-- server that turns dead or comes back.
function _M.set_server_error_callback(self, fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("bad argument #1 (callback): function or nil expected, got " .. type(fn), 2)
  end
  self.callback = fn
  return true
end

local function event(self, srv, why, state)
  local fn = self.callback
  if fn then pcall(fn, ffi.string(core.mc_abi_ring_name(self.ring, srv)), why, state) end
end

-- What a failure costs the server: transport and protocol failures count
-- (failure_limit of them mark it dead); an auth refusal means it answered.
local NOT_THE_SERVERS = { [_M.ERR_VALUE_TOO_LARGE] = true, [_M.ERR_NO_MEMORY] = true }
-- What a client keeps per server address, made once: nginx's keepalive
-- pool options and the server's key in the shared dict.
local function server_record(self, addr)
  local rec = self.records[addr]
  if not rec then
    rec = { popts = { pool = "memcached:" .. addr, pool_size = self.pool_size },
            dead_key = "memcached:dead:" .. addr }
    self.records[addr] = rec
  end
  return rec
end

-- Shared health (option shared_dict): a server this worker finds dead is
-- written to the dict with the time of its next probe, so every worker
-- sharing the dict routes around it at once; a worker whose probe brings
-- it back removes the entry. Failures themselves are counted per worker.
local function dead_key(self, srv)
  return server_record(self, ffi.string(core.mc_abi_ring_name(self.ring, srv))).dead_key
end
local function share_dead(self, srv)
  local dict = self.dict
  if not dict then return end
  local at = core.mc_abi_ring_retry_at(self.ring, srv)
  if at > 0 then dict:set(dead_key(self, srv), at, self.retry_timeout + 1) end
end
local function share_alive(self, srv)
  if self.dict then self.dict:delete(dead_key(self, srv)) end
end

local function server_failed(self, srv, err, detail)
  if err == E_AUTH then
    if core.mc_abi_ring_ok(self.ring, srv) == 1 then
      share_alive(self, srv)
      event(self, srv, "responding again", "up")
    end
    return
  end
  if NOT_THE_SERVERS[err] then return end
  local why = tostring(err) .. ": " .. tostring(detail)
  if core.mc_abi_ring_failed(self.ring, srv, ngx_now(), why) == 1 then
    share_dead(self, srv)
    event(self, srv, why, "down")
  end
end
local function server_ok(self, srv)
  if core.mc_abi_ring_ok(self.ring, srv) == 1 then
    share_alive(self, srv)
    event(self, srv, "responding again", "up")
  end
end

-- A server alive here that another worker found dead: dead here too, until
-- the time that worker set. Returns true when it is.
local function dead_elsewhere(self, srv)
  local till = self.dict:get(dead_key(self, srv))
  if not till or till <= ngx_now() then return false end
  if core.mc_abi_ring_dead_until(self.ring, srv, till, "found dead by another worker") == 1 then
    event(self, srv, "found dead by another worker", "down")
  end
  return true
end

-- Server names by index, made once per ring (interned servers added as
-- they come): no string is made per operation.
local function server_name(self, srv)
  local names = self.names
  local n = names[srv]
  if not n then
    n = ffi.string(core.mc_abi_ring_name(self.ring, srv))
    names[srv] = n
  end
  return n
end

local function popts_of(self, addr)
  return server_record(self, addr).popts
end

-- n consecutive opaques. The counter is per client and taken without a
-- yield, so light threads sharing a client never get the same ones.
local function next_opaques(self, n)
  local first = self.seq
  self.seq = (first + n) % 4294967296
  return first
end

-- A reader of one socket's replies: the bytes received and not yet taken
-- (buf from pos), whether any came since the last reset, and the codec's
-- reader for the rare text error line.
local reader_mt = {}
reader_mt.__index = reader_mt
function reader_mt.reset(r)
  r.buf, r.pos, r.got = "", 1, false
  if r.text then r.text:reset() end
end
local function new_reader()
  return setmetatable({ buf = "", pos = 1, got = false }, reader_mt)
end
-- bytes received past the last reply taken
local function leftover(r)
  return r.pos <= #r.buf
end

-- One reader per operation in flight: operations of light threads sharing
-- the client interleave at every receive.
local function take_reader(self)
  local rs = self.readers
  local r = rs[#rs] or new_reader()
  rs[#rs] = nil
  return r
end
local function give_reader(self, r)
  r:reset()
  if #self.readers < 16 then self.readers[#self.readers + 1] = r end
end

-- io_timeout bounds the whole operation: each send and receive gets what
-- is left of it.
local function set_left(sock, connect_ms, dl)
  local left = max(1, floor((dl - ngx_now()) * 1000))
  sock:settimeouts(connect_ms or left, left, left)
end

-- Connects (or reuses a pooled connection) and sends data. Returns the
-- socket and whether it came from the pool; or nil, err, detail, stale
-- (stale: a pooled connection the server had closed, so nothing was sent).
-- fresh: a new connection, not a pooled one. The pooled ones taken on the
-- way are closed: after a pooled connection turned out closed they are
-- likely closed too (a restarted server), as the C client closes the
-- server's other idle connections then. Each pass removes one from the
-- pool without yielding, so the loop ends.
local function send_to(self, addr, data, dl, fresh)
  local host, port = split_addr(addr)
  local popts = popts_of(self, addr)
  local sock, reused, ok, err
  repeat
    sock = ngx_socket_tcp()
    set_left(sock, self.connect_ms, dl)
    if port then ok, err = sock:connect(host, port, popts) else ok, err = sock:connect(host, popts) end
    if not ok then return sock_fail(nil, addr, "connect", err) end
    reused = (sock:getreusedtimes() or 0) > 0
    if fresh and reused then sock:close() end
  until not (fresh and reused)
  ok, err = sock:send(data)
  if not ok then
    local stale = reused and STALE[err] or nil
    local _, e, detail = sock_fail(sock, addr, "send", err)
    return nil, e, detail, stale
  end
  return sock, reused
end

-- Reads a text error line that starts with the bytes in first to its end,
-- byte by byte (memcached at its connection limit says "ERROR Too many
-- open connections" and closes), through the codec's reader, which bounds
-- it.
local function read_text_error(sock, r, addr, first)
  local t = r.text or new_text_reader()
  r.text = t
  t:feed(first)
  local res, perr, kind = t:get()
  while res == false do
    local b, err = sock:receive(1)
    if not b then return sock_fail(sock, addr, "receive", err) end
    t:feed(b)
    res, perr, kind = t:get()
  end
  sock:close()
  return nil, kind == "server_error" and E_SERVER or E_PROTOCOL,
    addr .. ": " .. tostring(perr or "short reply")
end

-- The next reply on sock. A header is judged by the core
-- (mc_abi_read_head: magic, a body within max_body, extras and key within
-- the body) as soon as it is in, before its body is read, and the reply's
-- shape by the core once whole. Reads what comes (receiveany) while no
-- header is whole, then exactly what the reply still needs, so a reply
-- costs one receive when it arrives at once. Returns the reply, or nil,
-- err, detail, stale with the socket closed (stale: closed or reset before
-- any byte came on it since the reader's reset).
local head, head_err = ffi.new("mc_abi_head"), ffi.new("char[200]")
local MAX_BODY = codec.DEFAULT_MAX_BODY
local function read_reply(sock, r, addr, dl)
  local buf, pos = r.buf, r.pos
  while true do
    local avail = #buf - pos + 1
    if avail > 0 and byte(buf, pos) ~= 0x81 then
      r.buf, r.pos = "", 1
      return read_text_error(sock, r, addr, sub(buf, pos))
    end
    local need = HEADER_LEN
    if avail >= HEADER_LEN then
      if core.mc_abi_read_head(ffi.cast("const char *", buf) + (pos - 1), MAX_BODY, head,
          head_err, 200) ~= 0 then
        sock:close() -- the stream is out of step: nothing in it can be trusted
        r.buf, r.pos = "", 1
        return nil, E_PROTOCOL, addr .. ": " .. ffi.string(head_err)
      end
      need = HEADER_LEN + head.bodylen
      if avail >= need then
        local op, st, ext, klen = head.opcode, head.status, head.extlen, head.keylen
        local b0 = pos + HEADER_LEN -- the body's first byte
        if core.mc_abi_shape_ok(op, st, ext, klen, need - HEADER_LEN - ext - klen) == 0 then
          sock:close()
          r.buf, r.pos = "", 1
          return nil, E_PROTOCOL, addr .. ": reply framed wrongly for its opcode"
        end
        local flags = 0
        if ext >= 4 then
          local f1, f2, f3, f4 = byte(buf, b0, b0 + 3)
          flags = ((f1 * 256 + f2) * 256 + f3) * 256 + f4
        end
        local res = { opcode = op, status = st, opaque = head.opaque, cas = head.cas,
          flags = flags, key = klen > 0 and sub(buf, b0 + ext, b0 + ext + klen - 1) or "",
          value = sub(buf, b0 + ext + klen, pos + need - 1) }
        pos = pos + need
        if pos > #buf then buf, pos = "", 1 end
        r.buf, r.pos = buf, pos
        return res
      end
    end
    set_left(sock, nil, dl)
    local data, err
    if avail >= HEADER_LEN then data, err = sock:receive(need - avail)
    else data, err = sock:receiveany(65536) end
    if not data then
      local stale = avail == 0 and not r.got and STALE[err] or nil
      r.buf, r.pos = "", 1
      local _, e, detail = sock_fail(sock, addr, "receive", err)
      return nil, e, detail, stale
    end
    r.got = true
    if avail > 0 then buf = sub(buf, pos) .. data else buf = data end
    pos = 1
  end
end

-- Sends data and reads one reply. Returns the reply and the socket; or nil,
-- err, detail, stale (stale: a pooled connection that the server had
-- closed failed before any byte of the reply).
local function roundtrip(self, addr, data, r, dl, fresh)
  local sock, reused, detail, stale = send_to(self, addr, data, dl, fresh)
  if not sock then return nil, reused, detail, stale end
  local res, err
  res, err, detail, stale = read_reply(sock, r, addr, dl)
  if not res then return nil, err, detail, reused and stale or nil end
  return res, sock
end

-- Probes a dead server whose retry time came (claimed by this caller): a
-- connect and a NOOP within probe_timeout, never the caller's request. An
-- answer brings it back (its cosocket goes to the pool, warm for the
-- caller); no answer keeps it dead another retry interval. Returns true
-- when it is usable.
local function probe(self, srv)
  local addr = server_name(self, srv)
  local host, port = split_addr(addr)
  local sock = ngx_socket_tcp()
  sock:settimeouts(self.probe_ms, self.probe_ms, self.probe_ms)
  local ok, err
  if port then ok, err = sock:connect(host, port, popts_of(self, addr))
  else ok, err = sock:connect(host, popts_of(self, addr)) end
  local opaque = next_opaques(self, 1)
  if ok then ok, err = sock:send(c_simple(OP.NOOP, opaque)) end
  local hdr
  if ok then hdr, err = sock:receive(HEADER_LEN) end
  if hdr and byte(hdr, 1) == 0x81 and byte(hdr, 2) == OP.NOOP then
    local st = byte(hdr, 7) * 256 + byte(hdr, 8)
    local body = byte(hdr, 9) * 16777216 + byte(hdr, 10) * 65536 + byte(hdr, 11) * 256 + byte(hdr, 12)
    if body == 0 and not is_auth(st) then sock:setkeepalive(self.keepalive_ms, self.pool_size)
    else sock:close() end -- an auth refusal still says the server is up
    server_ok(self, srv)
    return true
  end
  sock:close()
  local why = "probe: " .. tostring(err or "no NOOP reply")
  if core.mc_abi_ring_failed(self.ring, srv, ngx_now(), why) == 1 then event(self, srv, why, "down") end
  share_dead(self, srv)
  return false
end

-- Where key goes, dead servers considered: the server's index, or nil,
-- err, detail. A dead server whose retry time came is probed first.
local pick_probe, pick_err = ffi.new("int[1]"), ffi.new("int[1]")
local function dead_detail(self, srv)
  local failures, last = ffi.new("unsigned[1]"), ffi.new("const char *[1]")
  core.mc_abi_ring_alive(self.ring, srv, failures, last)
  return server_name(self, srv) .. ": marked dead after: " .. ffi.string(last[0])
end
local function no_server(self, key, e, srv)
  local err = err_str[e]
  if err == _M.ERR_SERVER_DEAD then return nil, err, dead_detail(self, srv) end
  if core.mc_abi_ring_nservers(self.ring) == 0 then return nil, err, "no servers configured" end
  return nil, err, "no servers available: all are marked dead"
end
-- A custom selector's server for key (kept out of place: its closure would
-- stop LuaJIT from compiling place).
local function custom_addr(sel, key)
  if type(sel) == "function" then return pcall(sel, key) end
  return pcall(sel.pick_server, sel, key)
end
local function place_custom(self, key)
  local ring = self.ring
  local ok, addr = custom_addr(self.custom, key)
  if not ok or type(addr) ~= "string" then
    return nil, _M.ERR_NO_SERVERS, "selector gave no server for key '" .. sub(key, 1, 60) .. "': "
      .. tostring(addr or "no address")
  end
  local srv = core.mc_abi_ring_intern(ring, addr, ring_err, 256)
  if srv < 0 then return nil, _M.ERR_BAD_SERVER, ffi.string(ring_err) end
  if core.mc_abi_ring_usable(ring, srv, ngx_now(), pick_probe) ~= 0
      or (pick_probe[0] ~= 0 and probe(self, srv)) then
    return srv
  end
  return nil, _M.ERR_SERVER_DEAD, dead_detail(self, srv)
end

local function place(self, key)
  if self.custom then return place_custom(self, key) end
  local ring = self.ring
  local srv = core.mc_abi_ring_pick(ring, key, #key, ngx_now(), pick_probe, pick_err)
  if srv >= 0 and pick_probe[0] == 0 and self.dict and dead_elsewhere(self, srv) then
    srv = core.mc_abi_ring_pick(ring, key, #key, ngx_now(), pick_probe, pick_err)
  end
  if srv >= 0 and pick_probe[0] ~= 0 and not probe(self, srv) then
    local dead = srv
    srv = core.mc_abi_ring_around(ring, key, #key, pick_err)
    if srv < 0 then return no_server(self, key, pick_err[0], dead) end
  end
  if srv < 0 then return no_server(self, key, pick_err[0], core.mc_abi_ring_static(ring, key, #key)) end
  return srv
end

-- One request to the server of key, framed by enc(op, opaque, ...).
-- Returns the reply (status OK) and the address, or nil, err, detail with a
-- non-OK status mapped as `kind` says. A request that may be sent twice
-- (resend_safe) gets it once more on a fresh connection when a pooled one
-- turns out closed.
local function call(self, key, kind, enc, op, ...)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if not key_ok(key) then return nil, E_KEY, KEY_DETAIL end
  ngx_update_time()
  local srv, err, detail = place(self, key)
  if not srv then return nil, err, detail end
  local addr = server_name(self, srv)
  local dl = ngx_now() + self.io_timeout
  local opaque = next_opaques(self, 1)
  local data = enc(op, opaque, ...)
  local r = take_reader(self)
  local res, sock, stale
  res, sock, detail, stale = roundtrip(self, addr, data, r, dl)
  if not res and stale and resend_safe(data) then
    r:reset()
    res, sock, detail = roundtrip(self, addr, data, r, dl, true)
  end
  -- one request, one reply: bytes after it mean the server framed
  -- something wrongly (as the core's reply check says for the C client)
  if res and leftover(r) then
    sock:close()
    res, sock, detail = nil, E_PROTOCOL, addr .. ": bytes after the reply"
  end
  give_reader(self, r)
  if not res then
    server_failed(self, srv, sock, detail)
    return nil, sock, detail
  end
  if res.opcode ~= op or res.opaque ~= opaque then
    sock:close()
    detail = ("%s: reply opcode %d opaque %d to request opcode %d opaque %d")
      :format(addr, res.opcode, res.opaque, op, opaque)
    server_failed(self, srv, E_PROTOCOL, detail)
    return nil, E_PROTOCOL, detail
  end
  -- an item's reply names its key (error replies may name none)
  if (op == OP.GETK or op == OP.GATK) and not reply_key_ok(res, key) then
    sock:close()
    detail = addr .. ": reply names another key than the request's"
    server_failed(self, srv, E_PROTOCOL, detail)
    return nil, E_PROTOCOL, detail
  end
  server_ok(self, srv)
  local msg = res.status ~= ST.OK and res.value ~= "" and ": " .. sub(res.value, 1, 120) or ""
  if is_auth(res.status) then
    sock:close() -- the server closes it after this reply
    return nil, E_AUTH, addr .. ": " .. status_str(res.status) .. msg
  end
  sock:setkeepalive(self.keepalive_ms, self.pool_size)
  if res.status ~= ST.OK then
    return nil, status_err(kind, res.status), addr .. ": " .. status_str(res.status) .. msg
  end
  return res, addr
end

-- The item's value: msgpack-decoded when it carries the msgpack flag.
local function item_value(self, r)
  if r.flags ~= self.mp_flag then return true, r.value end
  local v, err = mp_decode(r.value)
  if v == nil and err ~= nil then return false, err end
  return true, v
end

-- get, get_and_touch, touch
local function key_op(self, op, key, exptime)
  if type(key) == "table" then key, exptime = fields(key, "key", "expiration") end
  check_key(key)
  opt_uint(2, "expiration", exptime, U32)
  local res, addr, detail
  if op == OP.GETK then res, addr, detail = call(self, key, K_GET, c_get, op, key)
  else res, addr, detail = call(self, key, K_GET, c_touch, op, key, exptime) end
  if not res then return nil, addr, detail end
  if op == OP.TOUCH then return true end
  if is_lock(res) then return nil, E_MISS end
  local ok, v = item_value(self, res)
  if not ok then return nil, _M.ERR_UNDECODABLE, addr .. ": " .. tostring(v) end
  return v, res.cas, res.flags
end

function _M.get(self, key) return key_op(self, OP.GETK, key) end
function _M.get_and_touch(self, key, exptime) return key_op(self, OP.GATK, key, exptime) end
function _M.touch(self, key, exptime) return key_op(self, OP.TOUCH, key, exptime) end

-- set/add/replace/compare_and_swap (msgpack) and *_raw_data (bytes).
local function store(self, op, kind, raw, is_cas, key, value, a3, a4, flags)
  local exptime, cas = a3, a4
  if type(key) == "table" then
    key, value, exptime, cas, flags = fields(key, "key", "value", "expiration", "cas", "flags")
  elseif is_cas then
    cas, exptime = a3, a4
  end
  check_key(key)
  opt_uint(3, "expiration", exptime, U32)
  opt_uint(5, "flags", flags, U32)
  opt_uint(4, "cas", cas)
  if is_cas and (cas or 0) == 0 then
    error("bad argument #3 (cas): compare_and_swap needs the cas of a previous get", 3)
  end
  if raw or (flags and flags ~= self.mp_flag) then
    if type(value) ~= "string" then
      error("bad argument #2 (value): string expected for raw data, got " .. type(value), 3)
    end
    flags = flags or 0
  else
    if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
    if not key_ok(key) then return nil, E_KEY, KEY_DETAIL end
    local err
    value, err = mp_encode(value)
    if not value then return nil, _M.ERR_UNENCODABLE, err end
    flags = self.mp_flag
  end
  -- only a plain set may run twice (add/replace/a cas could fail or win
  -- against the first try's effect)
  local res, addr, detail = call(self, key, kind, c_store, op, cas, key, flags, exptime, value)
  if not res then return nil, addr, detail end
  return res.cas
end

function _M.set(self, k, v, e, c, f) return store(self, OP.SET, K_SET, false, false, k, v, e, c, f) end
function _M.add(self, k, v, e, c, f) return store(self, OP.ADD, K_ADD, false, false, k, v, e, c, f) end
function _M.replace(self, k, v, e, c, f) return store(self, OP.REPLACE, K_REPLACE, false, false, k, v, e, c, f) end
function _M.compare_and_swap(self, k, v, c, e, f) return store(self, OP.SET, K_REPLACE, false, true, k, v, c, e, f) end
function _M.set_raw_data(self, k, v, e, c, f) return store(self, OP.SET, K_SET, true, false, k, v, e, c, f) end
function _M.add_raw_data(self, k, v, e, c, f) return store(self, OP.ADD, K_ADD, true, false, k, v, e, c, f) end
function _M.replace_raw_data(self, k, v, e, c, f) return store(self, OP.REPLACE, K_REPLACE, true, false, k, v, e, c, f) end

local function concat_op(self, op, key, bytes, cas)
  if type(key) == "table" then key, bytes, cas = fields(key, "key", "value", "cas") end
  check_key(key)
  if type(bytes) ~= "string" then
    error("bad argument #2 (bytes): string expected, got " .. type(bytes), 3)
  end
  opt_uint(3, "cas", cas)
  local res, addr, detail = call(self, key, K_REPLACE, c_concat, op, cas, key, bytes)
  if not res then return nil, addr, detail end
  return res.cas
end

function _M.append(self, key, bytes, cas) return concat_op(self, OP.APPEND, key, bytes, cas) end
function _M.prepend(self, key, bytes, cas) return concat_op(self, OP.PREPEND, key, bytes, cas) end

function _M.delete(self, key, cas)
  if type(key) == "table" then key, cas = fields(key, "key", "cas") end
  check_key(key)
  opt_uint(2, "cas", cas)
  local kind = (cas or 0) ~= 0 and K_REPLACE or K_GET
  local res, err, detail = call(self, key, kind, c_delete, OP.DELETE, cas, key)
  if not res then return nil, err, detail end
  return true
end

-- memcached 1.4 dropped delete's hold time: delete_lock(key, seconds)
-- REPLACEs the item with the core's marker (so a missing key stays a miss),
-- which expires after `seconds`; 0 is a plain delete. Table form: {key =,
-- seconds =} (or expiration =).
function _M.delete_lock(self, key, seconds)
  if type(key) == "table" then
    local t = key
    key, seconds = t.key, t.seconds
    if seconds == nil then seconds = t.expiration end
  end
  check_key(key)
  if type(seconds) ~= "number" or seconds ~= floor(seconds) then
    error("bad argument #2 (seconds): integer expected, got " .. type(seconds), 2)
  end
  if seconds < 0 or seconds > U32 then error("bad argument #2 (seconds): must be 0..4294967295", 2) end
  local res, err, detail
  if seconds == 0 then
    res, err, detail = call(self, key, K_GET, c_delete, OP.DELETE, nil, key)
  else
    res, err, detail = call(self, key, K_GET, c_store, OP.REPLACE, nil, key, LOCK_FLAGS, seconds,
      LOCK_VALUE)
  end
  if not res then return nil, err, detail end
  return true
end

-- A counter operation: value, cas; or nil, err, detail.
local function arith_call(self, op, key, delta, initial, exp)
  local res, addr, detail = call(self, key, K_GET, c_arith, op, key, delta, initial, exp)
  if not res then
    local err = addr
    if err == _M.ERR_NON_NUMERIC then
      -- a delete_lock marker is not a number either, but reads as a miss
      local g = call(self, key, K_GET, c_get, OP.GETK, key)
      if g and is_lock(g) then return nil, E_MISS, "the key is locked by delete_lock" end
      detail = "the item is not a decimal number"
    end
    return nil, err, detail
  end
  local n = counter_value(res.value)
  if not n then return nil, E_PROTOCOL, addr .. ": counter reply of " .. #res.value .. " bytes, not 8" end
  return n, res.cas
end

-- increment/decrement(key, delta [, initial [, expiration]]) -> value, cas
local function arith(self, op, key, delta, initial, exptime)
  if type(key) == "table" then
    key, delta, initial, exptime = fields(key, "key", "delta", "initial", "expiration")
  end
  check_key(key)
  if delta == nil then error("bad argument #2 (delta): integer expected, got nil", 3) end
  opt_uint(2, "delta", delta)
  opt_uint(3, "initial", initial)
  opt_uint(4, "expiration", exptime, U32)
  local exp = initial and (exptime or 0) or NO_CREATE
  return arith_call(self, op, key, delta, initial, exp)
end

function _M.increment(self, key, delta, initial, exptime) return arith(self, OP.INCREMENT, key, delta, initial, exptime) end
function _M.decrement(self, key, delta, initial, exptime) return arith(self, OP.DECREMENT, key, delta, initial, exptime) end

-- touch_atomic_value(key) -> value: the counter as it is (an increment by
-- 0 that never creates the key), as the C client's (further arguments are
-- ignored there too). Table form {key =}.
function _M.touch_atomic_value(self, key)
  if type(key) == "table" then key = key.key end
  check_key(key)
  local n, err, detail = arith_call(self, OP.INCREMENT, key, 0, nil, NO_CREATE)
  if n == nil then return nil, err, detail end
  return n
end

-- Sends batch b (sets b.sock, b.reused); a pooled connection found closed
-- gets it once more on a fresh one when resend_safe. Returns nil, or err, detail.
local function send_batch(self, b, dl)
  local sock, x, detail, stale = send_to(self, b.addr, b.data, dl)
  if not sock and stale and resend_safe(b.data) then
    b.resent = true
    sock, x, detail = send_to(self, b.addr, b.data, dl, true)
  end
  b.sock = sock
  if not sock then return x, detail end
  b.reused = x
end

-- Batches over several servers: each batch {addr =, data =, last =} is sent
-- whole, every server before any reply is read; then each server's replies
-- are read until the one whose opaque is `last`. on_reply(st, b, res)
-- returns true (keep reading), or nil, err, detail (a reply not ours, or an
-- auth status: the socket is closed). on_fail(st, b, err, detail) hears of
-- each server that failed. st is the caller's state: the callbacks are
-- plain functions, no closure per call (LuaJIT does not compile closure
-- creation). A batch whose requests may all be sent twice (resend_safe)
-- and whose pooled connection turns out closed before any byte of its
-- replies is sent once more on a fresh one.
-- A server's failure counts against it once per batch (as in the C
-- client); its stream parsed through the NOOP is a success.
local function batch_fail(self, on_fail, st, b, err, detail)
  server_failed(self, b.srv, err, detail)
  on_fail(st, b, err, detail)
end

local function run_batches(self, batches, on_reply_user, on_fail_user, st)
  ngx_update_time()
  local dl = ngx_now() + self.io_timeout
  if #batches == 1 then
    local b = batches[1]
    local err, detail = send_batch(self, b, dl)
    if err then batch_fail(self, on_fail_user, st, b, err, detail) end
  else
    -- connect to and write every server at once, one light thread each, so
    -- that servers that hang cost one connect timeout, not one each
    local threads = {}
    for i, b in ipairs(batches) do
      threads[i] = ngx_thread_spawn(send_batch, self, b, dl)
    end
    for i, b in ipairs(batches) do
      local ok, err, detail = ngx_thread_wait(threads[i])
      if not ok then
        if b.sock then b.sock:close() end
        b.sock, err, detail = nil, _M.ERR_IO, b.addr .. ": " .. tostring(err)
      end
      if err then batch_fail(self, on_fail_user, st, b, err, detail) end
    end
  end
  local r = take_reader(self)
  for _, b in ipairs(batches) do
    local sock, replied = b.sock, false
    r:reset()
    while sock do
      local res, err, detail, stale = read_reply(sock, r, b.addr, dl)
      if res then
        replied = true
        local mine
        mine, err, detail = on_reply_user(st, b, res)
        if not mine then sock:close()
        elseif res.opaque == b.last and leftover(r) then
          -- the stream ends with the NOOP and nothing after it
          sock:close()
          mine, err, detail = nil, E_PROTOCOL, b.addr .. ": bytes after the batch's NOOP"
        elseif res.opaque == b.last then
          sock:setkeepalive(self.keepalive_ms, self.pool_size)
          server_ok(self, b.srv)
          break
        end
      elseif stale and b.reused and not replied and not b.resent and resend_safe(b.data) then
        -- a pooled connection the server had closed: once more on a fresh one
        b.resent = true
        r:reset()
        sock, err, detail = send_to(self, b.addr, b.data, dl, true)
        if sock then err = nil end
      end
      if err then
        r:reset()
        batch_fail(self, on_fail_user, st, b, err, detail)
        break
      end
    end
  end
  give_reader(self, r)
end

-- get_multi's state (st): values, failed ({key = err}, made on first use)
-- and the first error.
local function gm_failed(st, k, err)
  st.first = st.first or err
  local f = st.failed
  if not f then f = {} st.failed = f end
  f[k] = err
end

local function gm_reply(st, b, res)
  if res.opaque == b.last and res.opcode == OP.NOOP then
    if b.pos <= #b.order then
      return nil, E_PROTOCOL, b.addr .. ": the batch ended with requests unanswered"
    end
    return true
  end
  local k = b.waiting[res.opaque]
  -- error replies may carry no key: their opaque says which request
  if not k or res.opaque ~= b.order[b.pos] or res.opcode ~= OP.GETK
      or not reply_key_ok(res, k) then
    return nil, E_PROTOCOL, b.addr .. ": a reply that answers no request of this batch, in order"
  end
  if is_auth(res.status) then
    -- memcached -S closes the connection after this reply: this key and
    -- every other key of the batch fail with ERR_AUTH (gm_fail)
    return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  b.waiting[res.opaque] = nil
  b.pos = b.pos + 1
  local e = res.status ~= ST.OK and status_err(K_GET, res.status)
  if e then
    if e ~= E_MISS then gm_failed(st, k, e) end
  elseif not is_lock(res) then
    local ok, v = item_value(st.self, res)
    if ok then
      st.values[k] = v
      local got = b.got
      if not got then got = {} b.got = got end
      got[#got + 1] = k
    else
      gm_failed(st, k, _M.ERR_UNDECODABLE)
    end
  end
  return true
end

local function gm_fail(st, b, err)
  for _, k in pairs(b.waiting) do gm_failed(st, k, err) end
  b.waiting = {}
  -- a server's hits count only if its stream parsed through the NOOP:
  -- a stream that broke off may have framed an earlier reply wrongly
  for _, k in ipairs(b.got or {}) do
    st.values[k] = nil
    gm_failed(st, k, err)
  end
  b.got = nil
end

-- get_multi(keys) -> {key = value}, or values, err, {key = err}
function _M.get_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n = #keys
  local st = { self = self, values = {} }
  local by_addr, batches = {}, {}
  local base = next_opaques(self, n)
  for i = 1, n do -- nothing is sent before every key was checked
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not key_ok(k) then return nil, E_KEY, "key #" .. i .. " is malformed; nothing was sent" end
    local srv, err = place(self, k)
    if not srv then gm_failed(st, k, err) else
      local b = by_addr[srv]
      if not b then -- waiting: opaque -> key, until its reply; order: opaques
        b = { addr = server_name(self, srv), srv = srv, parts = {}, waiting = {}, order = {}, pos = 1 }
        by_addr[srv] = b
        batches[#batches + 1] = b
      end
      local opaque = (base + i - 1) % 4294967296
      -- GETK, not GETKQ: every key gets its reply, in order, naming its key,
      -- so a value that swallowed the replies after it breaks the batch
      b.parts[#b.parts + 1] = c_get(OP.GETK, opaque, k)
      b.waiting[opaque] = k
      b.order[#b.order + 1] = opaque
    end
  end
  local noops = next_opaques(self, #batches)
  for j, b in ipairs(batches) do
    b.last = (noops + j - 1) % 4294967296
    b.parts[#b.parts + 1] = c_simple(OP.NOOP, b.last)
    b.data = concat(b.parts)
  end
  run_batches(self, batches, gm_reply, gm_fail, st)
  if st.first then return st.values, st.first, st.failed end
  return st.values
end

-- quiet_batch's callbacks; st: qop, kind, results
local function quiet_reply(st, b, res)
  if res.opaque == b.last and res.opcode == OP.NOOP then return true end
  -- an answer names a request of the batch, no earlier than the last one
  -- answered (replies come in order), and no other key
  local k, order, pos = b.waiting[res.opaque], b.order, b.pos
  while pos <= #order and order[pos] ~= res.opaque do pos = pos + 1 end
  if not k or pos > #order or res.opcode ~= st.qop or not reply_key_ok(res, k) then
    return nil, E_PROTOCOL, b.addr .. ": a reply that answers no request of this batch, in order"
  end
  b.pos = pos + 1
  if is_auth(res.status) then -- the server closes the connection after it
    return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  if res.status ~= ST.OK then st.results[k] = status_err(st.kind, res.status) end
  return true
end

local function quiet_fail(st, b, err)
  for _, k in pairs(b.waiting) do st.results[k] = err end
end

-- set_multi / delete_multi: quiet requests (SETQ / DELETEQ), one NOOP per
-- server; only failures answer. list holds {key, value}; results[key] is
-- true for every key sent and already holds the error of each key that
-- could not be. A failure reply is the status's meaning for `kind`; a
-- server that fails (transport, protocol, auth) fails every key sent to it
-- (any of them may or may not have been stored). Returns results, or
-- results and the first error in list order.
local function quiet_batch(self, qop, kind, list, results, enc)
  local by_srv, batches = {}, {}
  local base = next_opaques(self, #list)
  for i, e in ipairs(list) do
    local k = e[1]
    if results[k] == true then
      local b = by_srv[e.srv]
      if not b then -- waiting: opaque -> key; order: opaques, as sent
        b = { addr = server_name(self, e.srv), srv = e.srv, parts = {}, waiting = {}, order = {}, pos = 1 }
        by_srv[e.srv] = b
        batches[#batches + 1] = b
      end
      local opaque = (base + i - 1) % 4294967296
      b.parts[#b.parts + 1] = enc(qop, opaque, k, e[2])
      b.waiting[opaque] = k
      b.order[#b.order + 1] = opaque
    end
  end
  local noops = next_opaques(self, #batches)
  for j, b in ipairs(batches) do
    b.last = (noops + j - 1) % 4294967296
    b.parts[#b.parts + 1] = c_simple(OP.NOOP, b.last)
    b.data = concat(b.parts)
    b.parts = nil
  end
  run_batches(self, batches, quiet_reply, quiet_fail, { qop = qop, kind = kind, results = results })
  for _, e in ipairs(list) do
    local r = results[e[1]]
    if r ~= true then return results, r end
  end
  return results
end

-- Where each key of list goes (e.srv), or its error in results.
local function quiet_place(self, list, results)
  for _, e in ipairs(list) do
    local k = e[1]
    if results[k] == nil then
      local srv, err = place(self, k)
      e.srv = srv
      results[k] = srv and true or err
    end
  end
end

-- set_multi(items [, expiration]) -> {key = true | err}[, first err]. items
-- maps keys to values, msgpack-encoded as set does (mp_encode frames a
-- string as a msgpack str, as the C client does). A malformed key or an
-- unencodable value fails that key alone; so does a value the server
-- refuses as too large (its SETQ answers ERR_VALUE_TOO_LARGE).
function _M.set_multi(self, items, exptime)
  if type(items) ~= "table" then error("bad argument #1 (items): table expected, got " .. type(items), 2) end
  if exptime ~= nil and (type(exptime) ~= "number" or exptime ~= floor(exptime)
      or exptime < 0 or exptime > U32) then
    error("bad argument #2 (expiration): integer 0..4294967295 expected, got " .. tostring(exptime), 2)
  end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local list, results = {}, {}
  for k, v in pairs(items) do
    if type(k) ~= "string" then
      error("bad argument #1 (items): keys must be strings, got " .. type(k), 2)
    end
    local e = { k }
    list[#list + 1] = e
    if not key_ok(k) then results[k] = E_KEY
    else
      local bytes = mp_encode(v)
      if bytes then e[2] = bytes else results[k] = _M.ERR_UNENCODABLE end
    end
  end
  ngx_update_time()
  quiet_place(self, list, results)
  local mp_flag, exp = self.mp_flag, exptime or 0
  return quiet_batch(self, OP.SETQ, K_SET, list, results, function(op, opaque, key, value)
    return c_store(op, opaque, nil, key, mp_flag, exp, value)
  end)
end

-- delete_multi(keys) -> {key = true | err}[, first err]; a missing key is
-- ERR_CACHE_MISS. A repeated key is deleted once (a second DELETEQ would
-- turn its success into a miss).
function _M.delete_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local list, results, seen = {}, {}, {}
  for i = 1, #keys do
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not seen[k] then
      seen[k] = true
      list[#list + 1] = { k }
      if not key_ok(k) then results[k] = E_KEY end
    end
  end
  ngx_update_time()
  quiet_place(self, list, results)
  return quiet_batch(self, OP.DELETEQ, K_GET, list, results, function(op, opaque, key)
    return c_delete(op, opaque, nil, key)
  end)
end

-- each_server's callbacks; st: op, values, failures, first
local function each_failed(st, b, err, detail)
  st.first = st.first or err
  st.failures[b.addr] = detail
end
local function each_reply(st, b, res)
  if res.opaque ~= b.last or res.opcode ~= st.op then
    return nil, E_PROTOCOL, b.addr .. ": reply opcode " .. res.opcode .. " opaque " .. res.opaque
  end
  if is_auth(res.status) then -- the server closes the connection after it
    return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  if res.status == ST.OK then st.values[b.addr] = res.value
  else each_failed(st, b, status_err(K_OTHER, res.status), b.addr .. ": " .. status_str(res.status)) end
  return true
end

-- One request to each distinct server. Returns {addr = reply value}, the
-- first error and {addr = detail} for the servers that failed; or nil,
-- err, detail when none can be asked.
local function each_server(self, enc, op, arg)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n = core.mc_abi_ring_nservers(self.ring)
  if n == 0 then return nil, _M.ERR_NO_SERVERS, "no servers configured" end
  local base = next_opaques(self, n)
  local batches, values, failures = {}, {}, {}
  for i = 1, n do
    local opaque = (base + i - 1) % 4294967296
    batches[i] = { addr = server_name(self, i - 1), srv = i - 1, last = opaque,
      data = enc(op, opaque, arg) }
  end
  local st = { op = op, values = values, failures = failures }
  run_batches(self, batches, each_reply, each_failed, st)
  return values, st.first, failures
end

local function all_ok(values, err, failures)
  if values and not err then return true end
  return nil, err, failures
end

function _M.flush(self, delay)
  if type(delay) == "table" then delay = delay.expiration end
  opt_uint(1, "delay", delay, U32)
  return all_ok(each_server(self, c_flush, OP.FLUSH, delay))
end
function _M.flush_all(self) return all_ok(each_server(self, c_flush, OP.FLUSH)) end
_M.delete_all = _M.flush_all
function _M.ping(self) return all_ok(each_server(self, c_simple, OP.NOOP)) end

-- version() -> {addr = version}[, first err]; nil, err, detail when none answered
function _M.version(self)
  local values, err, failures = each_server(self, c_simple, OP.VERSION)
  if not values then return nil, err, failures end
  if not err then return values end
  if next(values) then return values, err end
  return nil, err, select(2, next(failures))
end

-- The most entries one server's stats reply may hold (the C client's
-- MAX_STAT_ENTRIES, lmc_every.c): memcached sends a few hundred; a server
-- streaming entries without end would grow the table until the timeout.
local MAX_STAT_ENTRIES = 100000

-- One server's stats: {name = value}; or nil, err, detail, answered
-- (answered: the server replied with an error status, no failure of it).
-- The reply is a stream of STAT packets under the request's opaque, ended
-- by one with an empty key. Its own I/O timeout, as in the C client.
local function server_stats(self, srv, group, r)
  local addr = server_name(self, srv)
  ngx_update_time()
  local dl = ngx_now() + self.io_timeout
  local opaque = next_opaques(self, 1)
  local data = c_stat(opaque, group)
  local res, sock, detail, stale = roundtrip(self, addr, data, r, dl)
  if not res and stale and resend_safe(data) then
    r:reset()
    res, sock, detail = roundtrip(self, addr, data, r, dl, true)
  end
  if not res then return nil, sock, detail end
  local t, nent, err = {}, 0, nil
  while true do
    if res.opcode ~= OP.STAT or res.opaque ~= opaque then
      sock:close()
      return nil, E_PROTOCOL, ("%s: reply opcode %d opaque %d to request opcode %d opaque %d")
        :format(addr, res.opcode, res.opaque, OP.STAT, opaque)
    end
    if is_auth(res.status) then -- the server closes the connection after it
      sock:close()
      return nil, E_AUTH, addr .. ": " .. status_str(res.status)
    end
    if res.status ~= ST.OK then
      if leftover(r) then sock:close() else sock:setkeepalive(self.keepalive_ms, self.pool_size) end
      return nil, status_err(K_OTHER, res.status), addr .. ": " .. status_str(res.status), true
    end
    if res.key == "" then
      if leftover(r) then sock:close() else sock:setkeepalive(self.keepalive_ms, self.pool_size) end
      return t
    end
    nent = nent + 1
    if nent > MAX_STAT_ENTRIES then
      sock:close() -- the rest is not read
      return nil, E_PROTOCOL, addr .. ": more than " .. MAX_STAT_ENTRIES .. " stat entries in one reply"
    end
    t[res.key] = res.value
    res, err, detail = read_reply(sock, r, addr, dl)
    if not res then return nil, err, detail end
  end
end

-- stats([group]) -> {addr = {name = value}}[, first err]; nil, ERR_NO_STATS,
-- detail when no server answered. One server after the other; a server
-- that fails is left out (and counts as failing, as in every call).
function _M.stats(self, group)
  if type(group) == "number" then group = tostring(group)
  elseif group ~= nil and type(group) ~= "string" then
    error("bad argument #1 (group): string expected, got " .. type(group), 2)
  end
  -- the group travels as the request's key: 16 bits of length
  if group and #group > 65535 then error("bad argument #1 (group): longer than 65535 bytes", 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if core.mc_abi_ring_nservers(self.ring) == 0 then
    return nil, _M.ERR_NO_SERVERS, "no servers configured"
  end
  local out, answered, first, detail = {}, false, nil, nil
  local srv = 0
  -- the list is read again after each server (set_servers may run while
  -- this call waits), as the C client does
  while srv < core.mc_abi_ring_nservers(self.ring) do
    local r = take_reader(self)
    local t, err, d, replied = server_stats(self, srv, group, r)
    give_reader(self, r)
    if t then
      server_ok(self, srv)
      out[server_name(self, srv)] = t
      answered = true
    else
      if replied then server_ok(self, srv) else server_failed(self, srv, err, d) end
      first, detail = first or err, d
    end
    srv = srv + 1
  end
  if not answered then return nil, _M.ERR_NO_STATS, detail end
  if first then return out, first end
  return out
end

function _M.pick_server(self, key)
  check_key(key)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if not key_ok(key) then return nil, E_KEY end
  if self.custom then
    local ok, addr = custom_addr(self.custom, key)
    if not ok or type(addr) ~= "string" then return nil, _M.ERR_NO_SERVERS, tostring(addr) end
    return addr
  end
  local srv = core.mc_abi_ring_static(self.ring, key, #key)
  if srv < 0 then return nil, _M.ERR_NO_SERVERS, "no servers configured" end
  return server_name(self, srv)
end

-- servers() -> {{addr =, alive =, failures =, last_error =}, ...}: this
-- worker's view of each server's health.
function _M.servers(self)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local out, failures, last = {}, ffi.new("unsigned[1]"), ffi.new("const char *[1]")
  for i = 0, core.mc_abi_ring_nservers(self.ring) - 1 do
    local alive = core.mc_abi_ring_alive(self.ring, i, failures, last) ~= 0
    local e = ffi.string(last[0])
    out[i + 1] = { addr = server_name(self, i), alive = alive, failures = tonumber(failures[0]),
      last_error = e ~= "" and e or nil }
  end
  return out
end

-- set_servers(addr, ...) / add_server(addr [, max_conns]): a new list (no
-- change on a bad address). Servers kept from the old list keep their
-- health; their keys stay where they were.
local function replace_ring(self, list)
  local old, ring, err, detail = self.ring, nil, nil, nil
  ring, err, detail = new_ring(self, list)
  if not ring then return nil, err, detail end
  err, detail = resolve_names(list, self.by_resolver)
  if err then return nil, err, detail end
  local failures, last = ffi.new("unsigned[1]"), ffi.new("const char *[1]")
  for i = 0, core.mc_abi_ring_nservers(old) - 1 do
    local name = ffi.string(core.mc_abi_ring_name(old, i))
    for j = 0, core.mc_abi_ring_nservers(ring) - 1 do
      if ffi.string(core.mc_abi_ring_name(ring, j)) == name then
        core.mc_abi_ring_alive(old, i, failures, last)
        -- replay the old health: its failures (and death) as of now
        for _ = 1, tonumber(failures[0]) do core.mc_abi_ring_failed(ring, j, ngx_now(), last[0]) end
      end
    end
  end
  self.ring, self.list, self.names = ring, list, {}
  return true
end

function _M.set_servers(self, ...)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  return replace_ring(self, server_list({ ... }))
end

function _M.add_server(self, addr, max_conns)
  if type(addr) ~= "string" and type(addr) ~= "table" then
    error("bad argument #1 (addr): \"host:port\", a unix socket path or {addr, weight = n} expected, got "
      .. type(addr), 2)
  end
  opt_uint(2, "max_conns", max_conns, 1000000)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local list = {}
  for i, e in ipairs(self.list) do list[i] = e end
  server_list({ addr }, list)
  return replace_ring(self, list)
end

-- Pooled connections belong to nginx: close only retires the client.
function _M.close(self)
  self.closed = true
  return true
end
_M.exit = _M.close

return _M
