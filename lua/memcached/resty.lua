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
local c_get, c_store, c_concat, c_delete = codec.get, codec.store, codec.concat, codec.delete
local c_arith, c_touch, c_flush, c_simple = codec.arith, codec.touch, codec.flush, codec.simple
local status_str, new_reader, random32 = codec.status_str, codec.reader, codec.random32
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
int mc_abi_status_is_auth(int status);
int mc_abi_reply_key_ok(int status, const char *rkey, size_t rlen, const char *key, size_t keylen);
int mc_abi_resend_safe(const char *p, size_t n);
]]
local core = ffi.load(assert(package.searchpath("memcached", package.cpath),
  "memcached.so not found on package.cpath"))
local c_key_ok, c_status_err, c_is_lock = core.mc_abi_key_ok, core.mc_abi_status_err, core.mc_abi_is_lock
local c_is_auth, c_reply_key_ok, c_resend_safe = core.mc_abi_status_is_auth, core.mc_abi_reply_key_ok,
  core.mc_abi_resend_safe

-- error number -> its ERR_* string, once
local err_str = {}
for e = 1, core.mc_abi_err_count() - 1 do err_str[e] = ffi.string(core.mc_abi_err_str(e)) end

-- delete_lock's marker: such an item reads as a miss.
local function is_lock(r)
  return c_is_lock(r.flags, r.value, #r.value) ~= 0
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

-- "host:port", "[v6]:port", "host", "/unix/path" -> host, port
local function split_addr(addr)
  if sub(addr, 1, 1) == "/" then return "unix:" .. addr end
  local h, p = addr:match("^%[(.+)%]:(%d+)$")
  if not h then h, p = addr:match("^([^:]+):(%d+)$") end
  if h then return h, tonumber(p) end
  return addr:match("^%[(.+)%]$") or addr, 11211
end

local OPTIONS = { servers = 1, timeout = 1, connect_timeout = 1, io_timeout = 1,
  pool_size = 1, keepalive_timeout = 1, msgpack_flag = 1, selector = 1 }

-- new{servers =, timeout =, connect_timeout =, io_timeout =, pool_size =,
-- keepalive_timeout =, msgpack_flag =, selector =}, or new(server, ...).
function _M.new(opts, ...)
  if type(opts) ~= "table" or opts[1] ~= nil then opts = { servers = { opts, ... } } end
  for k in pairs(opts) do
    if not OPTIONS[k] then error("unknown option '" .. tostring(k) .. "'", 2) end
  end
  local placer, err, detail = memcached.new { servers = opts.servers or {}, selector = opts.selector }
  if not placer then return nil, err, detail end
  local timeout = opts.timeout or memcached.DEFAULT_TIMEOUT
  return setmetatable({
    placer = placer,
    connect_ms = floor((opts.connect_timeout or timeout) * 1000 + 0.5),
    io_timeout = opts.io_timeout or timeout,
    pool_size = opts.pool_size,
    keepalive_ms = floor((opts.keepalive_timeout or 60) * 1000 + 0.5),
    mp_flag = opts.msgpack_flag or 1,
    seq = random32(), -- next opaque
    readers = {}, -- idle codec readers
  }, mt)
end

-- n consecutive opaques. The counter is per client and taken without a
-- yield, so light threads sharing a client never get the same ones.
local function next_opaques(self, n)
  local first = self.seq
  self.seq = (first + n) % 4294967296
  return first
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
  local popts = { pool = "memcached:" .. addr, pool_size = self.pool_size }
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

-- Reads exactly one reply, the header and then exactly its body, so that
-- nothing past it is taken from the socket. Returns the reply, or nil, err,
-- detail, stale with the socket closed (stale: closed or reset before any
-- byte of the reply came).
local function read_reply(sock, r, addr, dl)
  set_left(sock, nil, dl)
  local hdr, err, partial = sock:receive(HEADER_LEN)
  if not hdr then
    -- a text error line shorter than a header, then the server closed
    if partial and partial ~= "" and byte(partial, 1) ~= 0x81 then
      r:feed(partial)
      local res, perr, kind = r:get()
      if res == nil and kind == "server_error" then
        sock:close()
        return nil, E_SERVER, addr .. ": " .. perr
      end
    end
    local _, e, detail = sock_fail(sock, addr, "receive", err)
    return nil, e, detail, (partial == nil or partial == "") and STALE[err] or nil
  end
  r:feed(hdr)
  local res, perr, kind = r:get()
  if res == false and byte(hdr, 1) ~= 0x81 then
    -- the start of a text error line (memcached at its connection limit
    -- says "ERROR Too many open connections" and closes): read it byte by
    -- byte to its end, which the reader bounds
    repeat
      local b
      b, err = sock:receive(1)
      if not b then return sock_fail(sock, addr, "receive", err) end
      r:feed(b)
      res, perr, kind = r:get()
    until res ~= false
  elseif res == false then
    local b1, b2, b3, b4 = byte(hdr, 9, 12)
    set_left(sock, nil, dl)
    local body
    body, err = sock:receive(((b1 * 256 + b2) * 256 + b3) * 256 + b4)
    if not body then return sock_fail(sock, addr, "receive", err) end
    r:feed(body)
    res, perr, kind = r:get()
  end
  if res and res.shape_ok then return res end
  sock:close()
  if res then -- the stream is framed wrongly: nothing in it can be trusted
    return nil, E_PROTOCOL, addr .. ": reply framed wrongly for its opcode"
  end
  return nil, kind == "server_error" and E_SERVER or E_PROTOCOL,
    addr .. ": " .. tostring(perr or "short reply")
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

-- One request to the server of key, framed by enc(op, opaque, ...).
-- Returns the reply (status OK) and the address, or nil, err, detail with a
-- non-OK status mapped as `kind` says. A request that may be sent twice
-- (resend_safe) gets it once more on a fresh connection when a pooled one
-- turns out closed.
local function call(self, key, kind, enc, op, ...)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if not key_ok(key) then return nil, E_KEY, KEY_DETAIL end
  local addr, err, detail = self.placer:pick_server(key)
  if not addr then return nil, err, detail end
  ngx_update_time()
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
  give_reader(self, r)
  if not res then return nil, sock, detail end
  if res.opcode ~= op or res.opaque ~= opaque then
    sock:close()
    return nil, E_PROTOCOL, ("%s: reply opcode %d opaque %d to request opcode %d opaque %d")
      :format(addr, res.opcode, res.opaque, op, opaque)
  end
  -- an item's reply names its key (error replies may name none)
  if (op == OP.GETK or op == OP.GATK) and not reply_key_ok(res, key) then
    sock:close()
    return nil, E_PROTOCOL, addr .. ": reply names another key than the request's"
  end
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
  local v = res.value
  if #v ~= 8 then return nil, E_PROTOCOL, addr .. ": counter reply of " .. #v .. " bytes, not 8" end
  local n = 0 -- exact up to 2^53: LuaJIT's numbers are doubles
  for i = 1, 8 do n = n * 256 + byte(v, i) end
  return n, res.cas
end

function _M.increment(self, key, delta, initial, exptime) return arith(self, OP.INCREMENT, key, delta, initial, exptime) end
function _M.decrement(self, key, delta, initial, exptime) return arith(self, OP.DECREMENT, key, delta, initial, exptime) end

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
-- are read until the one whose opaque is `last`. on_reply(b, res) returns
-- true (keep reading), or nil, err, detail (a reply not ours, or an auth
-- status: the socket is closed). on_fail(b, err, detail) hears of each
-- server that failed. A batch whose requests may all be sent twice
-- (resend_safe) and whose pooled connection turns out closed before any
-- byte of its replies is sent once more on a fresh one.
local function run_batches(self, batches, on_reply, on_fail)
  ngx_update_time()
  local dl = ngx_now() + self.io_timeout
  if #batches == 1 then
    local b = batches[1]
    local err, detail = send_batch(self, b, dl)
    if err then on_fail(b, err, detail) end
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
      if err then on_fail(b, err, detail) end
    end
  end
  local r = take_reader(self)
  for _, b in ipairs(batches) do
    local sock, replied = b.sock, false
    while sock do
      local res, err, detail, stale = read_reply(sock, r, b.addr, dl)
      if res then
        replied = true
        local mine
        mine, err, detail = on_reply(b, res)
        if not mine then sock:close()
        elseif res.opaque == b.last then
          sock:setkeepalive(self.keepalive_ms, self.pool_size)
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
        on_fail(b, err, detail)
        break
      end
    end
  end
  give_reader(self, r)
end

-- get_multi(keys) -> {key = value}, or values, err, {key = err}
function _M.get_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n, values, failed, first = #keys, {}, nil, nil
  local function key_failed(k, err)
    first = first or err
    failed = failed or {}
    failed[k] = err
  end
  local by_addr, batches = {}, {}
  local base = next_opaques(self, n)
  for i = 1, n do -- nothing is sent before every key was checked
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not key_ok(k) then return nil, E_KEY, "key #" .. i .. " is malformed; nothing was sent" end
    local addr, err = self.placer:pick_server(k)
    if not addr then key_failed(k, err) else
      local b = by_addr[addr]
      if not b then -- waiting: opaque -> key, until its reply; order: opaques
        b = { addr = addr, parts = {}, waiting = {}, order = {}, pos = 1 }
        by_addr[addr] = b
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
  run_batches(self, batches, function(b, res)
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
      -- every other key of the batch fail with ERR_AUTH (on_fail)
      return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
    end
    b.waiting[res.opaque] = nil
    b.pos = b.pos + 1
    local e = res.status ~= ST.OK and status_err(K_GET, res.status)
    if e then
      if e ~= E_MISS then key_failed(k, e) end
    elseif not is_lock(res) then
      local ok, v = item_value(self, res)
      if ok then
        values[k] = v
        b.got = b.got or {}
        b.got[#b.got + 1] = k
      else
        key_failed(k, _M.ERR_UNDECODABLE)
      end
    end
    return true
  end, function(b, err)
    for _, k in pairs(b.waiting) do key_failed(k, err) end
    b.waiting = {}
    -- a server's hits count only if its stream parsed through the NOOP:
    -- a stream that broke off may have framed an earlier reply wrongly
    for _, k in ipairs(b.got or {}) do
      values[k] = nil
      key_failed(k, err)
    end
    b.got = nil
  end)
  if first then return values, first, failed end
  return values
end

-- One request to each distinct server. Returns {addr = reply value}, the
-- first error and {addr = detail} for the servers that failed; or nil,
-- err, detail when none can be asked.
local function each_server(self, enc, op, arg)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local list = self.placer:servers()
  if #list == 0 then return nil, _M.ERR_NO_SERVERS, "no servers configured" end
  local base = next_opaques(self, #list)
  local batches, values, failures, first = {}, {}, {}, nil
  for i, s in ipairs(list) do
    local opaque = (base + i - 1) % 4294967296
    batches[i] = { addr = s.addr, last = opaque, data = enc(op, opaque, arg) }
  end
  local function failed(b, err, detail)
    first = first or err
    failures[b.addr] = detail
  end
  run_batches(self, batches, function(b, res)
    if res.opaque ~= b.last or res.opcode ~= op then
      return nil, E_PROTOCOL, b.addr .. ": reply opcode " .. res.opcode .. " opaque " .. res.opaque
    end
    if is_auth(res.status) then -- the server closes the connection after it
      return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
    end
    if res.status == ST.OK then values[b.addr] = res.value
    else failed(b, status_err(K_OTHER, res.status), b.addr .. ": " .. status_str(res.status)) end
    return true
  end, failed)
  return values, first, failures
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

function _M.pick_server(self, key)
  check_key(key)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  return self.placer:pick_server(key)
end

-- Pooled connections belong to nginx: close only retires the client.
function _M.close(self)
  if not self.closed then
    self.closed = true
    self.placer:close()
  end
  return true
end
_M.exit = _M.close

return _M
