-- memcached.resty.conn: cosockets. A connection from nginx's keepalive pool
-- per call, one request or batch sent whole, replies read and judged by the
-- core (mc_abi_read_head, mc_abi_shape_ok) as they arrive.
local ffi = require "ffi"
local tostring, setmetatable, floor, max = tostring, setmetatable, math.floor, math.max
local byte, sub, ngx_now, ngx_socket_tcp = string.byte, string.sub, ngx.now, ngx.socket.tcp
local C = require "memcached.resty.core"
local codec, HEADER_LEN, new_text_reader = C.codec, C.HEADER_LEN, C.new_text_reader
local E_SERVER, E_PROTOCOL, core, STALE = C.E_SERVER, C.E_PROTOCOL, C.core, C.STALE
local sock_fail, split_addr = C.sock_fail, C.split_addr

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
  read_text_error = read_text_error,
  head = head,
  head_err = head_err,
  MAX_BODY = MAX_BODY,
  read_reply = read_reply,
  roundtrip = roundtrip,
}
