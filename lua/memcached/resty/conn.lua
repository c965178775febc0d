-- memcached.resty.conn: cosockets. A connection from nginx's keepalive pool
-- per call (its cosocket object kept in the request's ngx.ctx for the next
-- call; hold keeps the connection itself), one request or batch sent
-- whole, replies read and judged by the core (mc_abi_take_one) as they
-- arrive; TLS and SASL on a new connection (secure).
local ffi = require "ffi"
local tostring, setmetatable, floor, max = tostring, setmetatable, math.floor, math.max
local sub, ngx_now, ngx_socket_tcp = string.sub, ngx.now, ngx.socket.tcp
local pairs, tonumber, type = pairs, tonumber, type
local C = require "memcached.resty.core"
local codec, HEADER_LEN, new_text_reader = C.codec, C.HEADER_LEN, C.new_text_reader
local E_SERVER, E_PROTOCOL, core, STALE = C.E_SERVER, C.E_PROTOCOL, C.core, C.STALE
local sock_fail, split_addr, err_str = C.sock_fail, C.split_addr, C.err_str
local E_TLS = C.E.ERR_TLS

-- What a client keeps per server address, made once: nginx's keepalive
-- pool options and the server's key in the shared dict.
-- A client with TLS or credentials (pool_tag, set by new) keeps its
-- connections in pools of their own: a plain connection never serves it,
-- and its connections never serve a client that asked for less (or for
-- other credentials, another server name or client certificate). rec.sni:
-- the name its TLS handshakes send and check; rec.session: the TLS
-- session offered by its next new connection.
local function server_record(self, addr)
  local rec = self.records[addr]
  if not rec then
    -- max_conns: nginx queues no connect beyond pool_size (backlog 0), it
    -- fails at once ("too many waiting connect operations": ERR_BUSY)
    rec = { popts = { pool = "memcached:" .. addr .. self.pool_tag, pool_size = self.pool_size,
                      backlog = self.max_conns > 0 and 0 or nil },
            dead_key = "memcached:dead:" .. addr, fail_key = "memcached:failures:" .. addr,
            probe_key = "memcached:probe:" .. addr }
    local tls = self.tls
    if tls then rec.sni = tls.server_name or C.tls_host(addr) end
    self.records[addr] = rec
  end
  return rec
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
  r.value, r.rkey = nil, nil -- an idle reader holds no value
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
  r.max_body = self.max_body
  return r
end
local function give_reader(self, r)
  r:reset()
  if #self.readers < 16 then self.readers[#self.readers + 1] = r end
end

-- io_timeout bounds the whole operation: each send and receive gets what
-- is left of it. A cosocket keeps its timeouts across reconnects (nginx
-- stores them in the object), so they are set only when they change
-- (mc_cms, mc_left: the values set last): a call whose clock has not moved
-- since the last call on the same object sets none.
local function set_left(sock, connect_ms, dl)
  local left = max(1, floor((dl - ngx_now()) * 1000))
  connect_ms = connect_ms or sock.mc_cms or left
  if sock.mc_left ~= left or sock.mc_cms ~= connect_ms then
    sock:settimeouts(connect_ms, left, left)
    sock.mc_left, sock.mc_cms = left, connect_ms
  end
end

-- Connects (or reuses a pooled connection) and sends data. Returns the
-- socket and whether it came from the pool; or nil, err, detail, stale
-- (stale: a pooled connection the server had closed, so nothing was sent).
-- fresh: a new connection, not a pooled one. The pooled ones taken on the
-- way are closed: after a pooled connection turned out closed they are
-- likely closed too (a restarted server), as the C client closes the
-- server's other idle connections then. Each pass removes one from the
-- pool without yielding, so the recursion ends.
-- The common path has no loop: a loop that runs once per call makes
-- LuaJIT abort the trace around it ("inner loop in root trace").
-- Cosocket objects, kept per server for the rest of the request in its
-- ngx.ctx: a cosocket belongs to its request, and one that went back to
-- the pool can connect again (to the pool) for less than half the cost
-- of a new object (0.57 us against 1.4 us a connect and setkeepalive,
-- measured in nginx). An object is taken while in use, so a nested call
-- or another light thread makes its own. (Neither the coroutine nor the
-- request's address tells requests apart: nginx reuses both.) Outside a
-- request (no request: init_worker) nothing is kept.
local get_request
do
  local ok, base = pcall(require, "resty.core.base")
  get_request = ok and base.get_request or function() return nil end
end

-- The request's cache of cosocket objects for client self: [addr] = an
-- idle object, or (held) a connection kept connected; live[addr]: that
-- object is still connected. nil outside a request.
local function request_cache(self, make)
  if not get_request() then return nil end
  local ctx = ngx.ctx
  local cache = ctx[self]
  if not cache and make then
    cache = { live = {} }
    ctx[self] = cache
  end
  return cache
end

-- A cosocket object for addr, and whether it is still connected (a
-- connection held for the request: see hold).
local function take_sock(self, addr)
  local cache = request_cache(self, false)
  local sock = cache and cache[addr]
  if not sock then return ngx_socket_tcp(), false end
  cache[addr] = nil
  local connected = cache.live[addr] == true
  cache.live[addr] = nil
  return sock, connected
end

-- Gives a connection whose reply was read whole back: to nginx's pool and
-- its object to the request's cache; or, while the request holds this
-- client's connections (hold), to the cache still connected. An object
-- that finds its place taken (a nested call's) goes to the pool alone.
local function release(self, addr, sock)
  local cache = request_cache(self, true)
  if cache and cache.held and not cache[addr] then
    cache[addr] = sock
    cache.live[addr] = true
    return
  end
  if not sock:setkeepalive(self.keepalive_ms, self.pool_size) or not cache then return end
  if not cache[addr] then cache[addr] = sock end
end

-- hold: this request's calls keep their connections (one per server) for
-- the next call instead of a pool round trip each; unhold gives them back
-- to nginx's pool. What is still held when the request ends is closed by
-- nginx, as an unreleased cosocket of lua-resty-memcached is.
local function hold(self)
  local cache = request_cache(self, true)
  if not cache then return nil end
  cache.held = true
  return true
end
local function unhold(self)
  local cache = request_cache(self, false)
  if not cache then return true end
  cache.held = nil
  for addr in pairs(cache.live) do
    local sock = cache[addr]
    cache.live[addr] = nil
    if sock then sock:setkeepalive(self.keepalive_ms, self.pool_size) end
  end
  return true
end

-- What a new connection of a client with TLS or credentials does before
-- its first request, with connect_ms for the handshake and until sdl for
-- SASL: the TLS handshake (nginx verifies the chain against
-- lua_ssl_trusted_certificate and the name), then SASL PLAIN, framed and
-- judged by the core (mc_abi_sasl_*): the mechanisms, then the
-- credentials. Returns true; or nil, err, detail with the socket closed. A
-- server that refuses the handshake, the certificate or the credentials
-- answered (ERR_TLS, ERR_AUTH: the core's mc_abi_health_verdict does not
-- count them); a timeout or a close does count.
local sasl_cap = 24 + 2 * 255 + 7
local sasl_buf, sasl_need, sasl_msg = ffi.new("char[?]", sasl_cap), ffi.new("uint32_t[1]"),
  ffi.new("char[256]")
local function sasl_step(self, sock, addr, step)
  local opaque = next_opaques(self, 1)
  local user, pass = self.user, self.pass
  local n = core.mc_abi_sasl_frame(sasl_buf, sasl_cap, step, opaque, user, #user, pass, #pass)
  if n <= 0 then -- new checked the credentials: not reached
    sock:close()
    return nil, C.E_AUTH, addr .. ": SASL: the credentials cannot be framed"
  end
  local ok, err = sock:send(ffi.string(sasl_buf, n))
  if not ok then return sock_fail(sock, addr, "SASL send", err) end
  local buf = ""
  while true do
    local rc = core.mc_abi_sasl_check(buf, #buf, step, opaque, sasl_need, sasl_msg, 256)
    if rc == 0 then return true end
    if rc > 0 then
      sock:close()
      return nil, err_str[rc], addr .. ": " .. ffi.string(sasl_msg)
    end
    local data, rerr = sock:receive(tonumber(sasl_need[0]) - #buf)
    if not data then return sock_fail(sock, addr, "SASL receive", rerr) end
    buf = buf .. data
  end
end

-- lua-resty-core 0.1.25 (with lua-nginx-module 0.10.23) raises
-- "assertion failed!" instead of returning the reason when a handshake
-- completes at once but nginx's own checks then fail it (a certificate
-- for another name, always; an unknown CA at times). The reason is still
-- where nginx left it: ask the same FFI function lua-resty-core asks.
local hs_sess, hs_err, hs_code
local function handshake_error(sock, raised)
  local ok, msg = pcall(function()
    if not hs_sess then
      hs_sess, hs_err, hs_code = ffi.new("void *[1]"), ffi.new("char *[1]"), ffi.new("int[1]")
    end
    hs_err[0], hs_code[0] = nil, 0
    ffi.C.ngx_http_lua_ffi_socket_tcp_get_sslhandshake_result(get_request(), sock[1], hs_sess,
      hs_err, hs_code)
    if hs_err[0] == nil then return nil end
    local m = ffi.string(hs_err[0])
    return hs_code[0] ~= 0 and hs_code[0] .. ": " .. m or m
  end)
  return ok and msg or "handshake failed (" .. tostring(raised) .. ")"
end

-- How a handshake's error reads: the transport's own failures as for any
-- connection, the rest (refused handshake, certificate, name) ERR_TLS.
local TRANSPORT = { timeout = true, closed = true, ["connection reset by peer"] = true,
  ["broken pipe"] = true }
local function secure(self, sock, addr, sdl)
  local tls = self.tls
  if tls then
    local rec = server_record(self, addr)
    if tls.cert then sock:setclientcert(tls.cert, tls.pkey) end
    local done, sess, err = pcall(sock.sslhandshake, sock, rec.session, rec.sni, tls.verify)
    if not done then sess, err = nil, handshake_error(sock, sess) end
    if not sess then
      if TRANSPORT[err] then return sock_fail(sock, addr, "TLS handshake", err) end
      sock:close()
      return nil, E_TLS, addr .. ": TLS handshake: " .. tostring(err)
    end
    -- the session to offer next time (a NULL when the server gave none)
    if type(sess) == "cdata" then rec.session = sess end
  end
  if self.user then
    set_left(sock, nil, sdl)
    local ok, err, detail = sasl_step(self, sock, addr, 0)
    if ok then ok, err, detail = sasl_step(self, sock, addr, 1) end
    if not ok then return nil, err, detail end
  end
  return true
end

local connect_secure -- below: it calls connect again
local function connect(self, addr, dl, fresh)
  local host, port = split_addr(addr)
  local sock, connected = take_sock(self, addr)
  if connected then
    if not fresh then
      set_left(sock, self.connect_ms, dl)
      return sock, true
    end
    sock:close() -- a fresh connection was asked for
  end
  set_left(sock, self.connect_ms, dl)
  local ok, err
  if port then ok, err = sock:connect(host, port, popts_of(self, addr))
  else ok, err = sock:connect(host, popts_of(self, addr)) end
  if not ok then return sock_fail(nil, addr, "connect", err) end
  if self.secure then return connect_secure(self, addr, sock, dl, fresh) end
  -- Whether the connection came from the pool matters only when it fails
  -- before any byte of its reply (a request safe to send twice then goes
  -- once more on a fresh connection), and asking nginx costs a call per
  -- request (getreusedtimes, ~400 instructions with LuaJIT's trace exit).
  -- So a connection counts as pooled unless it was made fresh: at worst a
  -- request safe to resend whose brand-new connection was closed at once
  -- gets one more fresh connection.
  if not fresh then return sock, true end
  if (sock:getreusedtimes() or 0) > 0 then
    sock:close()
    return connect(self, addr, dl, fresh)
  end
  return sock, false
end

-- connect for a client with TLS or credentials: a connection from the
-- pool was made secure when it was new; a new one is made so here. This
-- costs such clients one call per request (getreusedtimes) that plain
-- clients do not make.
connect_secure = function(self, addr, sock, dl, fresh)
  if (sock:getreusedtimes() or 0) > 0 then
    if not fresh then return sock, true end
    sock:close() -- a fresh connection was asked for
    return connect(self, addr, dl, fresh)
  end
  local ok, err, detail = secure(self, sock, addr,
    math.min(dl, ngx_now() + self.connect_ms / 1000))
  if not ok then return nil, err, detail end
  set_left(sock, self.connect_ms, dl) -- the request's own timeouts again
  return sock, false
end

local function send_to(self, addr, data, dl, fresh)
  local sock, reused, detail = connect(self, addr, dl, fresh)
  if not sock then return nil, reused, detail end
  local ok, err = sock:send(data)
  if not ok then
    local stale = reused and STALE[err] or nil
    local _, e, detail2 = sock_fail(sock, addr, "send", err)
    return nil, e, detail2, stale
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

local MAX_BODY = codec.DEFAULT_MAX_BODY

-- Takes the next reply from the bytes r holds: the reply to the request r
-- expects (r.kind, r.op, r.opaque, r.key: set by the caller), judged by
-- the core (mc_abi_take_one: its header as soon as it is in, then its
-- opcode, opaque, shape and key, and nothing after it but for STAT
-- streams). Returns r holding the reply (r.err: the core's error number
-- for its status, 0 for success; r.status, r.cas, r.flags, r.rkey,
-- r.value: no table per reply), valid until the next take; or false, need
-- (the bytes the reply needs in all: more must come); or nil, err, detail
-- with the socket closed.
local rep, rep_msg = ffi.new("mc_abi_reply"), ffi.new("char[256]")
local function take(sock, r, addr)
  local buf, pos = r.buf, r.pos
  local key = r.key
  local rc = core.mc_abi_take_one(ffi.cast("const char *", buf) + (pos - 1), #buf - pos + 1,
    r.max_body, r.kind, r.op, r.opaque, key, key and #key or 0, rep, rep_msg, 256)
  if rc == 0 then return false, rep.need end
  if rc == -2 then
    r.buf, r.pos = "", 1
    return read_text_error(sock, r, addr, sub(buf, pos))
  end
  if rc < 0 then
    sock:close() -- the stream is out of step: nothing in it can be trusted
    r.buf, r.pos = "", 1
    return nil, err_str[rep.err], addr .. ": " .. ffi.string(rep_msg)
  end
  local klen, vo = rep.klen, pos + rep.voff
  r.err, r.status, r.cas, r.flags = rep.err, rep.status, rep.cas, rep.flags
  -- the key of a keyed get was checked against the request's by the core;
  -- other replies' keys (STAT entries) are wanted
  if key then r.rkey = key
  else r.rkey = klen > 0 and sub(buf, pos + rep.koff, pos + rep.koff + klen - 1) or "" end
  r.value = sub(buf, vo, vo + rep.vlen - 1)
  pos = pos + rep.used
  if pos > #buf then r.buf, r.pos = "", 1 else r.pos = pos end
  return r
end

-- Receives more of a reply that needs `need` bytes in all: whatever comes
-- while no header is whole, then exactly what the reply still lacks.
-- Returns true; or nil, err, detail, stale with the socket closed (stale:
-- closed or reset before any byte came on it since the reader's reset).
local function fill(sock, r, addr, dl, need)
  local buf, pos = r.buf, r.pos
  local avail = #buf - pos + 1
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
  if avail > 0 then r.buf = sub(buf, pos) .. data else r.buf = data end
  r.pos = 1
  return true
end

-- The next reply on sock, judged by the core (take): its header as soon
-- as it is in, before its body is read (magic, a body within max_body,
-- extras and key within the body), the rest once whole. Reads what comes
-- while no header is whole, then what the reply still lacks. A reply costs
-- one receive when it arrives
-- at once. Returns the reply, or nil, err, detail, stale with the socket
-- closed (as fill). The common cases (the reply is buffered, or comes in
-- one receive) run without a loop, which LuaJIT's traces go through.
local function read_more(sock, r, addr, dl, need)
  while true do
    local ok, err, detail, stale = fill(sock, r, addr, dl, need)
    if not ok then return nil, err, detail, stale end
    local res
    res, need, detail = take(sock, r, addr)
    if res ~= false then return res, need, detail end
  end
end

local function read_reply(sock, r, addr, dl)
  local res, detail
  local need = HEADER_LEN
  if r.buf ~= "" then -- nothing held: nothing to take yet
    res, need, detail = take(sock, r, addr)
    if res ~= false then return res, need, detail end
  end
  local ok, err, stale
  ok, err, detail, stale = fill(sock, r, addr, dl, need)
  if not ok then return nil, err, detail, stale end
  res, need, detail = take(sock, r, addr)
  if res ~= false then return res, need, detail end
  return read_more(sock, r, addr, dl, need)
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


return {
  server_record = server_record,
  popts_of = popts_of,
  next_opaques = next_opaques,
  reader_mt = reader_mt,
  new_reader = new_reader,
  leftover = leftover,
  take_reader = take_reader,
  give_reader = give_reader,
  set_left = set_left,
  send_to = send_to,
  release = release,
  hold = hold,
  unhold = unhold,
  read_text_error = read_text_error,
  MAX_BODY = MAX_BODY,
  read_reply = read_reply,
  roundtrip = roundtrip,
  secure = secure,
}
