-- memcached.async.batch: the pipelined methods of the async driver.
-- get_multi, set_multi and delete_multi frame one stream per server into
-- the core's batch (memcached.core.batch_new: mc_abi_batch, which frames
-- the requests and their closing NOOP and checks every reply: order,
-- opaques, shapes, keys) and run it on a connection of its own, taken
-- from the server's (memcached.async.conn.take). Every server's stream is
-- sent first; then all are driven at once (connects, handshakes, sends,
-- reads) under the call's one deadline (run_all, below).
-- flush, ping, version and stats send one request per server on the
-- shared connections, all servers at once (run_all).
local core = require "memcached.core"
local memcached = require "memcached"
local conn = require "memcached.async.conn"

local codec = memcached.codec
local OP = codec.op
local status_str, mp_encode, mp_decode = codec.status_str, memcached.encode, memcached.decode
local now, errs, key_ok, enc = core.now, core.errs, core.key_ok, core.enc
local type, error, tostring, pairs, ipairs = type, error, tostring, pairs, ipairs
local E = conn.E
local A = require "memcached.args"
local set_items, delete_keys = A.set_items, A.delete_keys
local ARGS = { key_ok = key_ok, mp_encode = mp_encode, E = E } -- for set_items, delete_keys
local E_KEY, E_CLIENT_CLOSED, E_TIMEOUT = E.ERR_MALFORMED_KEY, E.ERR_CLIENT_CLOSED, E.ERR_TIMEOUT
local U32 = 4294967295
local MISS = 0
for i, s in ipairs(errs) do if s == E.ERR_CACHE_MISS then MISS = i end end

return function(H)
local place, name_in, server_ok, server_failed = H.place, H.name_in, H.server_ok,
  H.server_failed
local CLOSED_DETAIL = H.CLOSED_DETAIL

local M = {}

-- The core batches a client keeps between calls.
local function take_ab(self)
  local pool = self.abs
  if not pool then pool = {} self.abs = pool end
  local ab = pool[#pool]
  if ab then pool[#pool] = nil return ab end
  return core.batch_new(self.max_body)
end
local function give_ab(self, batches)
  for _, b in ipairs(batches) do
    if #self.abs < 8 then self.abs[#self.abs + 1] = b.ab end
  end
end

-- The batch of the server srv of ring (place's: a probe may wait, and
-- set_servers replace the ring meanwhile), one per address.
local function batch_of(self, by_addr, batches, srv, ring, base, kind, every)
  local addr = name_in(self, ring, srv)
  local b = by_addr[addr]
  if not b then
    local ab = take_ab(self)
    ab:begin(base, kind, every)
    b = { srv = srv, ring = ring, addr = addr, ab = ab, keys = {}, pending = {} }
    by_addr[addr] = b
    batches[#batches + 1] = b
  end
  return b
end

-- Reads batch b's stream to its NOOP on its connection by deadline:
-- on_entry(st, b, idx, err, flags, cas, value) per reply. true, or nil,
-- err, detail.
local entries = {}
local function read_stream(self, b, st, on_entry, deadline)
  local c = b.conn
  while true do
    local data, e, msg = core.recv(c.tls or c.fd, 65536)
    if data then
      local rc, n, ferr, fmsg = b.ab:feed(data, entries)
      for i = 0, n - 1 do
        local at = i * 5
        on_entry(st, b, entries[at + 1], entries[at + 2], entries[at + 3], entries[at + 4], entries[at + 5])
      end
      if rc == 1 then return true end
      if rc < 0 then return nil, errs[ferr], b.addr .. ": " .. fmsg end
    elseif data == nil then
      return nil, errs[e], b.addr .. ": " .. msg
    else
      local ok, err, detail = conn.flush(self, c) -- (true at once when nothing is left)
      if not ok then return nil, err, detail end
      if not conn.wait_fd(self, c.fd, c.p:unsent() and "rw" or "r", deadline) then
        -- what came by the deadline still counts
        data = core.recv(c.tls or c.fd, 65536)
        if not data then return nil, E_TIMEOUT, b.addr .. ": no reply within the timeout" end
        local rc, n, ferr, fmsg = b.ab:feed(data, entries)
        for i = 0, n - 1 do
          local at = i * 5
          on_entry(st, b, entries[at + 1], entries[at + 2], entries[at + 3], entries[at + 4], entries[at + 5])
        end
        if rc == 1 then return true end
        if rc < 0 then return nil, errs[ferr], b.addr .. ": " .. fmsg end
      end
    end
  end
end

-- Drives batch b's stream on its connection (connect, TLS and SASL when
-- new, send, read to the NOOP) by deadline; b.ok, or b.err and b.detail.
local function drive(self, b, st, on_entry, deadline)
  local c, ok, err, detail = b.conn, true, nil, nil
  if c.connecting then ok, err, detail = conn.finish_connect(self, c, deadline) end
  if ok then ok, err, detail = conn.flush(self, c) end
  if ok then ok, err, detail = read_stream(self, b, st, on_entry, deadline) end
  b.ok, b.err, b.detail = ok, err, detail
end

-- ---- several servers at once ----
-- The wait hook watches one descriptor, so a call over several servers
-- runs each server's part in a coroutine of its own (a stream) whose
-- waits go to a mux (memcached.core.mux_new: an epoll instance), and the
-- calling coroutine waits on the mux's descriptor through the hook. A
-- hung server then never holds up a healthy one's connect, handshake,
-- send or read: each gets the whole deadline, as in the blocking client.
-- The loop does not know the streams: conn.routed gives them hooks of
-- their own. A stream that parks (behind another coroutine reading its
-- connection) yields to the caller, and whoever wakes it signals the
-- mux's one eventfd; no descriptor is made per stream.
local create, resume, yield, costatus = coroutine.create, coroutine.resume, coroutine.yield,
  coroutine.status
local huge, traceback = math.huge, debug.traceback
local MUXWAIT, MUXPARK, ABORT = {}, {}, {}
-- resumed with ABORT (the caller's own wait raised), a stream raises too,
-- so that it unwinds the way a raising hook would (conn.await fails a
-- connection it was reading)
local function stream_wait(fd, events, timeout)
  if yield(MUXWAIT, fd, events, timeout) == ABORT then error("the caller's wait hook raised", 0) end
end
local function stream_park(timeout)
  if yield(MUXPARK, nil, nil, timeout) == ABORT then error("the caller's wait hook raised", 0) end
end

-- A mux and its eventfd (set in it), from the client's few kept ones; nil
-- when no descriptor is left for one.
local function take_mux(self)
  local pool = self.muxes
  local m = pool and pool[#pool]
  if m then
    pool[#pool] = nil
    m.mux:keep(false)
    return m
  end
  local mux = core.mux_new()
  if not mux then return nil end
  local efd = core.efd_new()
  if not efd then mux:close() return nil end
  mux:set(efd, "r")
  return { mux = mux, fd = mux:fd(), efd = efd }
end

local function give_mux(self, m)
  if not self.closed then
    local pool = self.muxes
    if not pool then pool = {} self.muxes = pool end
    if #pool < 4 then
      -- kept by the client: if it is collected unclosed, its finalizer
      -- hands the mux to conn.orphan, and the mux's own must not close
      -- it first without the cancel hook
      m.mux:keep(true)
      pool[#pool + 1] = m
      return
    end
  end
  conn.close_mux(self, m)
end

-- Runs fn(item) for every item of list at once, each in a stream; returns
-- when all have ended: nil, or the first error a stream raised (a bug;
-- the caller raises it once its connections are given back). Without a
-- mux (no descriptor left) they run one after the other here.
local ready = {}
local function run_all(self, list, fn)
  local m = take_mux(self)
  if not m then
    for _, item in ipairs(list) do fn(item) end
    return nil
  end
  local mux, efd = m.mux, m.efd
  local waiting, parked, woken, live, failure = {}, {}, {}, 0, nil
  local hooks = { wait = stream_wait, park = stream_park,
    wake = function(co) woken[co] = true core.efd_signal(efd) end }
  local function step(co, how)
    local ok, tag, fd, events, timeout = resume(co, how)
    if not ok then failure = failure or traceback(co, tostring(tag)) end
    if costatus(co) == "dead" then
      -- (out of conn.routed at once: while it holds any stream, the
      -- readers of every client wake each caller on its own)
      conn.routed[co] = nil
      live = live - 1
      return
    end
    local till = timeout and now() + timeout or huge
    if tag == MUXWAIT then
      mux:set(fd, events)
      waiting[fd] = { co = co, till = till }
    elseif tag == MUXPARK then
      parked[co] = till
    else -- it yielded past its hooks: a bug
      failure = failure or "memcached.async: a stream yielded outside its hooks"
      live = live - 1
    end
  end
  for _, item in ipairs(list) do
    local co = create(function() fn(item) end)
    conn.routed[co] = hooks
    live = live + 1
    step(co)
  end
  while live > 0 do
    local t, soonest = now(), huge
    for _, w in pairs(waiting) do if w.till < soonest then soonest = w.till end end
    for _, till in pairs(parked) do if till < soonest then soonest = till end end
    if soonest > t then
      local left = soonest < huge and soonest - t or nil
      if conn.PROTECT then
        local ok, e = pcall(self.wait, m.fd, "r", left)
        if not ok then
          -- the hook raised: every stream unwinds (its connections fail or
          -- go back marked unclean), then the caller raises the error
          local cos = {}
          for fd, w in pairs(waiting) do mux:del(fd) cos[#cos + 1] = w.co end
          for co in pairs(parked) do cos[#cos + 1] = co end
          for i = 1, #cos do step(cos[i], ABORT) end
          give_mux(self, m)
          return e
        end
      else
        self.wait(m.fd, "r", left)
      end
    end
    local n = mux:ready(ready)
    t = now()
    local due = {}
    for i = 1, n do
      local fd = ready[i]
      local w = waiting[fd]
      if fd == efd then core.efd_drain(efd)
      elseif w then
        waiting[fd] = nil
        mux:del(fd)
        due[#due + 1] = w.co
      end
    end
    for fd, w in pairs(waiting) do
      if w.till <= t then
        waiting[fd] = nil
        mux:del(fd)
        due[#due + 1] = w.co
      end
    end
    for co in pairs(woken) do
      woken[co] = nil
      if parked[co] then parked[co] = nil due[#due + 1] = co end
    end
    for co, till in pairs(parked) do
      if till <= t then parked[co] = nil due[#due + 1] = co end
    end
    for i = 1, #due do step(due[i]) end
  end
  give_mux(self, m)
  return failure
end

-- Runs each server's sealed stream (b.data) on a connection of its own;
-- on_fail(st, b, err) for a server that failed (its entries dropped).
local function run_batches(self, batches, on_entry, on_fail, st, deadline)
  local live = {}
  for _, b in ipairs(batches) do -- connect and send to all first
    local c, err, detail = conn.take(self, conn.server_of(self, b.addr), deadline)
    if not c then b.ok, b.err, b.detail = false, err, detail
    else
      b.conn = c
      c.p:write(b.data)
      local ok = true
      if not c.connecting then ok, err, detail = conn.flush(self, c) end
      if ok then live[#live + 1] = b else b.ok, b.err, b.detail = false, err, detail end
    end
  end
  local failure
  if #live > 1 then
    failure = run_all(self, live, function(b) drive(self, b, st, on_entry, deadline) end)
  elseif live[1] then drive(self, live[1], st, on_entry, deadline) end
  for _, b in ipairs(batches) do
    local c = b.conn
    if c then conn.release(self, c, b.ok) end
    if b.ok then
      server_ok(self, b.srv, b.ring)
      if st.commit then st.commit(st, b) end
    else
      server_failed(self, b.srv, b.err, b.detail, b.ring)
      on_fail(st, b, b.err, b.detail)
    end
  end
  give_ab(self, batches)
  if failure then error(failure, 0) end
end

local function seal(batches)
  for _, b in ipairs(batches) do b.data = b.ab:seal() end
end

-- get_multi's state: values, failed ({key = err}) and the first error.
local function gm_failed(st, k, err)
  st.first = st.first or err
  local f = st.failed
  if not f then f = {} st.failed = f end
  f[k] = err
end

-- a hit counts once its stream parsed through the NOOP (commit)
local function gm_entry(st, b, idx, err, flags, _, value)
  local k = b.keys[idx + 1]
  if err == 0 then
    local v = value
    if flags == st.mp_flag then
      local dv, derr = mp_decode(v)
      if dv == nil and derr ~= nil then gm_failed(st, k, E.ERR_UNDECODABLE) return end
      v = dv
    end
    b.pending[#b.pending + 1] = k
    b.pending[#b.pending + 1] = v
  elseif err ~= MISS then
    gm_failed(st, k, errs[err])
  end
end

local function gm_commit(st, b)
  local p = b.pending
  for i = 1, #p, 2 do st.values[p[i]] = p[i + 1] end
end

local function gm_fail(st, b, err)
  for _, k in ipairs(b.keys) do gm_failed(st, k, err) end
end

function M.get_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n = #keys
  for i = 1, n do -- nothing is sent before every key was checked
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not key_ok(k) then return nil, E_KEY, "key #" .. i .. " is malformed; nothing was sent" end
  end
  local deadline = now() + self.io_timeout
  local st = { values = {}, mp_flag = self.mp_flag, commit = gm_commit }
  local by_addr, batches = {}, {}
  local base = core.random32()
  for i = 1, n do
    local k = keys[i]
    local srv, err, ring = place(self, k)
    if not srv then gm_failed(st, k, err) else
      local b = batch_of(self, by_addr, batches, srv, ring, base, H.K_GET, true)
      if b.ab:add(OP.GETK, 0, k) then b.keys[#b.keys + 1] = k
      else gm_failed(st, k, E.ERR_NOMEM) end
    end
  end
  seal(batches)
  run_batches(self, batches, gm_entry, gm_fail, st, deadline)
  if st.first then return st.values, st.first, st.failed end
  return st.values
end

local function quiet_entry(st, b, idx, err)
  if err ~= 0 then st.results[b.keys[idx + 1]] = errs[err] end
end

local function quiet_fail(st, b, err)
  for _, k in ipairs(b.keys) do st.results[k] = err end
end

-- set_multi / delete_multi: quiet requests, one NOOP per server; only
-- failures answer.
local function quiet_batch(self, qop, kind, list, results, extras, flags, exptime)
  local by_addr, batches = {}, {}
  local base = core.random32()
  local deadline = now() + self.io_timeout
  for _, e in ipairs(list) do
    local k, v = e[1], e[2]
    if results[k] == nil then
      local srv, err, ring = place(self, k)
      if not srv then results[k] = err
      else
        results[k] = true
        local b = batch_of(self, by_addr, batches, srv, ring, base, kind, false)
        if b.ab:add(qop, 0, k, extras, flags, exptime, v) then b.keys[#b.keys + 1] = k
        else results[k] = E.ERR_NOMEM end
      end
    end
  end
  seal(batches)
  run_batches(self, batches, quiet_entry, quiet_fail, { results = results }, deadline)
  for _, e in ipairs(list) do
    local r = results[e[1]]
    if r ~= true then return results, r end
  end
  return results
end

function M.set_multi(self, items, exptime)
  local list, results, exp = set_items(self, items, exptime, ARGS)
  if not list then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  return quiet_batch(self, OP.SETQ, H.K_SET, list, results, 1, self.mp_flag, exp)
end

function M.delete_multi(self, keys)
  local list, results = delete_keys(self, keys, ARGS)
  if not list then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  return quiet_batch(self, OP.DELETEQ, H.K_GET, list, results, 0, 0, 0)
end

-- One request to each server on the shared connections, submitted to all
-- and then awaited. Returns {addr = slot}, the first error and {addr =
-- detail}; or nil, err, detail when none can be asked.
local function each_server(self, frame, op, arg, stream)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local ring = self.ring -- (health counted in it: see async.lua's server_ok)
  local n = ring:nservers()
  if n == 0 then return nil, E.ERR_NO_SERVERS, "no servers configured" end
  local deadline = now() + self.io_timeout
  local slots, values, failures, first = {}, {}, {}, nil
  for i = 1, n do
    local opaque = self.lanes:opaque() -- (unique among those in flight)
    slots[i] = { kind = H.K_OTHER, op = op, opaque = opaque, stream = stream, srv = i - 1,
      addr = name_in(self, ring, i - 1), data = frame(op, opaque, arg) }
  end
  local function one(s)
    local c = conn.submit(self, conn.server_of(self, s.addr), s, s.data, deadline)
    if c then conn.await(self, c, s) end
  end
  -- one server: here; several: each in a stream of its own (run_all)
  if n == 1 then one(slots[1])
  else
    local failure = run_all(self, slots, one)
    if failure then error(failure, 0) end
  end
  for i = 1, n do
    local s = slots[i]
    if s.failed then
      server_failed(self, s.srv, s.err, s.detail, ring)
      first = first or s.err
      failures[s.addr] = s.detail
    elseif s.err == H.AUTH or s.err ~= 0 then
      server_ok(self, s.srv, ring)
      first = first or errs[s.err]
      failures[s.addr] = s.addr .. ": " .. status_str(s.status)
    else
      server_ok(self, s.srv, ring)
      values[s.addr] = s
    end
  end
  return values, first, failures
end

local function f_flush(op, opaque, delay) return codec.flush(op, opaque, delay) end
local function f_simple(op, opaque) return enc(op, opaque) end

local function all_ok(values, err, failures)
  if values and not err then return true end
  return nil, err, failures
end

function M.flush(self, delay)
  if type(delay) == "table" then delay = delay.expiration end
  delay = H.opt_uint(1, "delay", delay, U32)
  return all_ok(each_server(self, f_flush, OP.FLUSH, delay))
end
function M.flush_all(self) return all_ok(each_server(self, f_flush, OP.FLUSH)) end
M.delete_all = M.flush_all
function M.ping(self) return all_ok(each_server(self, f_simple, OP.NOOP)) end

function M.version(self)
  local slots, err, failures = each_server(self, f_simple, OP.VERSION)
  if not slots then return nil, err, failures end
  local values = {}
  for addr, s in pairs(slots) do values[addr] = s.value end
  if not err then return values end
  if next(values) then return values, err end
  return nil, err, select(2, next(failures))
end

-- A STAT stream: entries until one with an empty key (true: it ended).
local MAX_STAT_ENTRIES = core.MAX_STAT_ENTRIES
local function stat_entry(s, err, status, key, value)
  if err ~= 0 then s.err, s.status = err, status return true end
  if key == "" then s.err = 0 return true end
  local t = s.table
  if not t then t = {} s.table = t s.n = 0 end
  s.n = s.n + 1
  if s.n > MAX_STAT_ENTRIES then
    -- (the connection's address is put in front of why by the driver)
    return nil, E.ERR_PROTOCOL, "more than " .. MAX_STAT_ENTRIES .. " stat entries in one reply"
  end
  t[key] = value
  return false
end

local function f_stat(_, opaque, group) return codec.stat(opaque, group) end

function M.stats(self, group)
  if type(group) == "number" then group = tostring(group)
  elseif group ~= nil and type(group) ~= "string" then
    error("bad argument #1 (group): string expected, got " .. type(group), 2)
  end
  if group and #group > 65535 then error("bad argument #1 (group): longer than 65535 bytes", 2) end
  local slots, err, failures = each_server(self, f_stat, OP.STAT, group, stat_entry)
  if not slots then return nil, err, failures end
  local out, answered = {}, false
  for addr, s in pairs(slots) do
    out[addr] = s.table or {}
    answered = true
  end
  if not answered then return nil, E.ERR_NO_STATS, select(2, next(failures)) end
  if err then return out, err end
  return out
end

return M
end
