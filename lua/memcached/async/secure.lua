-- memcached.async.secure: TLS and SASL PLAIN for the async driver's new
-- connections, with the blocking client's options and errors.
--
-- A client made with tls, username or password gets self.secure, which
-- async/conn.lua calls once a connect has completed, before the
-- connection carries any request (requests queued meanwhile wait, since
-- the connection still counts as connecting). Within the deadline it is
-- given (connect_timeout, or less), it runs:
--   1. the TLS handshake: memcached.core.tls_start puts the C driver's
--      TLS transport (src/driver/mc_tls.c) on the descriptor, and each
--      t:handshake() step says which readiness to wait for; the wait goes
--      through the client's hook, so the loop never blocks. From then on
--      c.tls is the connection's send/recv handle (core.send/core.recv
--      take it in place of the descriptor), and core.close(fd) frees it.
--      Each server keeps the last session its server gave (a slot), which
--      a new connection offers: a reconnect resumes it.
--   2. SASL PLAIN: the mechanisms, then the credentials, each framed and
--      judged by the core (core.sasl_frame / core.sasl_check).
-- A refused handshake, certificate or credentials is ERR_TLS / ERR_AUTH
-- with the reason: the core's health verdict does not count them against
-- the server. A timeout or a close does count, as for any connect.
local core = require "memcached.core"
local memcached = require "memcached"

local send, recv, errs = core.send, core.recv, core.errs
local E_TIMEOUT = memcached.ERR_TIMEOUT

local M = {}

local wait_fd = require("memcached.async.conn").wait_fd

local function handshake(self, ctx, c, deadline)
  local sv = c.sv
  if sv.tls_host == nil then
    -- the host as configured (not what it resolved to): the name to
    -- verify and send as SNI, or the IP address to verify; none for a
    -- unix socket
    local kind, host = core.addr_split(c.addr)
    sv.tls_host = kind == 0 and host or false
    sv.tls_slot = core.tls_slot()
  end
  local t, e, msg = core.tls_start(ctx, c.fd, sv.tls_host or nil, sv.tls_slot)
  if not t then return false, errs[e], c.addr .. ": " .. msg end
  c.tls = t
  while true do
    local r
    r, e, msg = t:handshake()
    if r == true then break end
    if not r then return false, errs[e], c.addr .. ": " .. msg end
    if not wait_fd(self, c.fd, r, deadline) then
      return false, E_TIMEOUT, c.addr .. ": TLS handshake timed out"
    end
  end
  sv.tls_resumed = t:resumed()
  return true
end

-- One SASL step: its request sent whole, its reply read (no further: the
-- connection carries nothing else yet) and judged.
local function sasl_step(self, c, step, user, pass, deadline)
  local io = c.tls or c.fd
  local opaque = core.random32()
  local frame = core.sasl_frame(step, opaque, user, pass)
  local from = 1
  while from <= #frame do
    local n, e, msg = send(io, frame, from)
    if not n then return false, errs[e], c.addr .. ": SASL " .. msg end
    if n > 0 then from = from + n
    elseif not wait_fd(self, c.fd, "w", deadline) then
      return false, E_TIMEOUT, c.addr .. ": SASL authentication timed out"
    end
  end
  local buf = ""
  while true do
    local ok, need, msg = core.sasl_check(buf, step, opaque)
    if ok then return true end
    if ok == nil then return false, errs[need], c.addr .. ": " .. msg end
    local data, e, rmsg = recv(io, need > #buf and need - #buf or 1)
    if data then buf = buf .. data
    elseif data == nil then return false, errs[e], c.addr .. ": SASL " .. rmsg
    elseif not wait_fd(self, c.fd, "r", deadline) then
      return false, E_TIMEOUT, c.addr .. ": SASL authentication timed out"
    end
  end
end

-- Reads the tls, username and password options (raising on wrong types,
-- as the blocking client does). Returns false when none is asked for, the
-- function conn.lua calls, secure(self, c, deadline) -> true or false,
-- err, detail; or nil, err, detail (a file that cannot be loaded,
-- credentials PLAIN cannot carry).
function M.new(opts)
  if opts.tls == nil and opts.username == nil and opts.password == nil then return false end
  local ctx, user, pass = core.secure(opts)
  if ctx == nil then return nil, errs[user], pass end
  if not ctx and not user then return false end -- tls = false
  return function(self, c, deadline)
    if ctx then
      local ok, err, detail = handshake(self, ctx, c, deadline)
      if not ok then return false, err, detail end
    end
    if user then
      local ok, err, detail = sasl_step(self, c, 0, user, pass, deadline)
      if ok then ok, err, detail = sasl_step(self, c, 1, user, pass, deadline) end
      if not ok then return false, err, detail end
    end
    return true
  end
end

return M
