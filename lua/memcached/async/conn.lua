-- memcached.async.conn: connections of the async driver, and the one place
-- where it waits. Every wait goes through the client's hooks:
--   wait(fd, events, timeout)  until fd is ready ("r", "w", "rw") or the
--                              time is up; may yield; may return early
--   sleep(timeout, co), wakeup(co) optional: park the running coroutine
--                              (co) until another one wakes it or the
--                              time is up (timeout nil: until woken); else
--                              an eventfd per coroutine, waited on through
--                              wait
--   wakeup_all(list, n)        optional, with them: wakeup of list[1..n]
--                              in order, and clears those entries
--   cancel(fd)                 optional: fd is about to be closed
--
-- Per server, up to max_conns connections. Requests of many coroutines
-- share a connection: each caller frames its request, appends it to the
-- connection's output queue and its slot to the connection's FIFO, then
-- waits (a request on an idle connection nobody reads goes out at once).
-- A connection's bytes and FIFO are the core's (memcached.core.pipe,
-- src/core/mc_pipe.c): requests are framed into it, and each reply is
-- judged there once against the request at the head of the FIFO (its
-- opcode and opaque, its shape, its key) and handed to that request's
-- slot. The first waiter on a connection becomes its reader: it sends
-- the whole queue in one send (after the coroutines it woke have queued
-- theirs), reads, and wakes the callers whose replies came, until its own
-- came; then it names the oldest waiter left the reader. Replies are
-- matched by position and checked by opaque, so a reply can only ever
-- reach the caller whose request it answers; anything else breaks the
-- stream, and a broken, closed or timed-out connection fails every
-- request on it (conn_fail) and is closed. Only the reader closes a
-- connection, so no coroutine waits on a closed descriptor.
local core = require "memcached.core"
local memcached = require "memcached"
local codec = memcached.codec

local now, recv, send = core.now, core.recv, core.send
local running, setmetatable = coroutine.running, setmetatable
local costatus, pcall, error, tostring, next = coroutine.status, pcall, error, tostring, next
-- Lua 5.2+ and LuaJIT can yield across pcall, so a hook that raises can be
-- caught and the connection it left cleaned up; PUC 5.1 cannot.
local PROTECT = _VERSION ~= "Lua 5.1" or rawget(_G, "jit") ~= nil
local E = {}
for k, v in pairs(memcached) do
  if type(k) == "string" and k:sub(1, 4) == "ERR_" then E[k] = v end
end
local errs = core.errs
local E_TIMEOUT, E_PROTOCOL, E_SERVER = E.ERR_TIMEOUT, E.ERR_PROTOCOL, E.ERR_SERVER_ERROR
local MAX_BODY = codec.DEFAULT_MAX_BODY

local M = { E = E, MAX_BODY = MAX_BODY, PROTECT = PROTECT }

-- ---- parking a coroutine ----

-- The eventfd a coroutine waits on when the loop gives no way to wake it.
-- When the coroutine is collected its descriptor goes to a free list, not
-- closed: a loop may keep state per descriptor number (a poll handle),
-- which a closed and reused number would confuse, and no hook may run
-- from a finalizer.
local free_efds = {}
local efd_mt = { __gc = function(h)
  core.efd_drain(h.fd)
  free_efds[#free_efds + 1] = h.fd
end }
local efds = setmetatable({}, { __mode = "k" })
local function efd_of(co)
  local h = efds[co]
  if not h then
    local fd = free_efds[#free_efds]
    if fd then free_efds[#free_efds] = nil else fd = assert(core.efd_new()) end
    h = setmetatable({ fd = fd }, efd_mt)
    efds[co] = h
  end
  return h.fd
end

-- Parks the running coroutine until wake() or the deadline; may return
-- early (callers check their state again).
-- parked[co]: co sleeps in park, so one wakeup may resume it (a loop's
-- wakeup must never reach a coroutine waiting elsewhere, e.g. on a
-- descriptor). self.woken counts the coroutines woken and not yet run:
-- while there are some, a reader lets them run (and queue their next
-- requests) before it sends, so that one send carries them all.
-- untimed: the caller is sure to be woken by its deadline (it waits
-- behind a reader whose deadline is no later than its own, and which
-- fails the whole connection when that passes), so the loop needs no
-- timer for it.
-- routed[co]: the hooks of a coroutine the loop does not know (a stream
-- of a call over several servers, async/batch.lua's run_all, resumed by
-- the calling coroutine): {wait = fn(fd, events, timeout), park =
-- fn(timeout), wake = fn(co)}, used instead of the client's hooks.
local routed = setmetatable({}, { __mode = "k" })
M.routed = routed
local function hook_wait(self, fd, events, timeout)
  local r = routed[running()]
  if r then return r.wait(fd, events, timeout) end
  return self.wait(fd, events, timeout)
end

local parked = setmetatable({}, { __mode = "k" })
local function park(self, deadline, untimed, co)
  local left
  if not untimed then
    left = deadline - now()
    if left <= 0 then return end
  end
  co = co or running()
  parked[co] = true
  local r = routed[co]
  if r then
    r.park(left)
  elseif self.sleep then
    self.sleep(left, co)
  else
    local fd = efd_of(co)
    hook_wait(self, fd, "r", left)
    core.efd_drain(fd)
  end
  if parked[co] then parked[co] = nil
  else self.woken = self.woken - 1 end
end
M.park = park

-- Wakes co, taken off parked and counted in self.woken already.
local function wake_parked(self, co)
  local r = routed[co]
  if r then return r.wake(co) end
  if self.wakeup then return self.wakeup(co) end
  local h = efds[co]
  if h then core.efd_signal(h.fd) end
end

local function wake(self, co)
  if not parked[co] then return end
  parked[co] = nil
  self.woken = self.woken + 1
  return wake_parked(self, co)
end
M.wake = wake

-- Wakes the caller of slot s: parked by get's own path (s.parked, a
-- field of the slot, cheaper than a coroutine-keyed table) or by park.
local function wake_slot(self, s)
  if s.parked then
    s.parked = false
    self.woken = self.woken + 1
    return wake_parked(self, s.co)
  end
  return wake(self, s.co)
end

-- Waits until fd is ready for events or the deadline (true: time left).
local function wait_fd(self, fd, events, deadline)
  local left = deadline - now()
  if left <= 0 then return false end
  hook_wait(self, fd, events, left)
  return true
end
M.wait_fd = wait_fd

local function close_fd(self, fd)
  if self.cancel then self.cancel(fd) end
  core.close(fd)
end
M.close_fd = close_fd

-- Closes a mux of async/batch.lua's run_all ({mux, fd, efd}).
function M.close_mux(self, m)
  if self.cancel then self.cancel(m.fd) end
  m.mux:close()
  core.close(m.efd)
end

-- The descriptors of clients collected unclosed. A finalizer may run no
-- hook, and a descriptor closed without its cancel hook would leave the
-- loop watching its number (cqueues then fails the next descriptor that
-- reuses it); so they stay open, and the next connection any client opens
-- first cancels and closes them. (Lua 5.1 and LuaJIT run no finalizer
-- for a table: there they stay open.)
local orphans = {}
-- fd (or a mux, {mux, fd, efd}) of the client self, collected
function M.orphan(self, fd, mux)
  orphans[#orphans + 1] = { fd = fd, mux = mux, cancel = self.cancel }
end
local function bury()
  for i = #orphans, 1, -1 do
    local o = orphans[i]
    orphans[i] = nil
    if o.mux then
      -- (a pooled mux is kept open by its finalizer, mux:keep; one closed
      -- anyway may have given its number to another descriptor: no cancel)
      if pcall(o.mux.mux.fd, o.mux.mux) then
        if o.cancel then pcall(o.cancel, o.fd) end
        o.mux.mux:close()
      end
      core.close(o.mux.efd)
    else
      if o.cancel then pcall(o.cancel, o.fd) end
      core.close(o.fd)
    end
  end
end

-- ---- servers and their connections ----

-- What the client keeps per server address: its connections and the
-- coroutines waiting for one (a batch needs a connection of its own).
local function server_of(self, addr)
  local sv = self.by_addr[addr]
  if not sv then
    sv = { addr = addr, conns = {}, waiters = {} }
    self.by_addr[addr] = sv
  end
  return sv
end
M.server_of = server_of

local function wake_waiter(self, sv)
  local w = table.remove(sv.waiters, 1)
  if w then wake(self, w) end
end

local function drop(self, c)
  c.p:free()
  local conns = c.sv.conns
  for i = 1, #conns do
    if conns[i] == c then table.remove(conns, i) break end
  end
  wake_waiter(self, c.sv)
end

-- Opens a connection without waiting (the connect completes in the
-- reader's or the batch's wait). nil, err, detail when it failed at once.
local function open(self, sv)
  if orphans[1] then bury() end
  local fd, e, msg = core.connect(self.dial[sv.addr] or sv.addr)
  if not fd then return nil, errs[e], sv.addr .. ": " .. msg end
  -- a secure client's connection counts as connecting until finish_connect secured it
  -- p: the bytes and the FIFO (memcached.core.pipe); n: requests in
  -- flight (kept from p after each read; a lane's gets count from the
  -- next read on)
  local c = { fd = fd, sv = sv, addr = sv.addr, connecting = e or self.secure ~= nil,
    cdeadline = now() + self.connect_timeout, p = core.pipe(self.max_body, self.mp_flag), n = 0,
    reader = false, reading = false, done = {} }
  sv.conns[#sv.conns + 1] = c
  return c
end
M.open = open

-- Fails every request on c with err, detail and closes it.
local function conn_fail(self, c, err, detail)
  if c.dead then return end
  c.dead = true
  close_fd(self, c.fd)
  local list = c.done
  local n = c.p:drain(list)
  c.n = 0
  drop(self, c)
  for i = 1, n do
    local s = list[i]
    list[i] = nil
    s.queued = false
    if not s.done then
      s.done, s.failed, s.err, s.detail = true, true, err, detail
      wake_slot(self, s)
    end
  end
end
M.conn_fail = conn_fail

-- Sends what c has queued, without waiting (c.p:unsent() tells whether
-- some is left). false, err, detail on failure.
local function flush(self, c)
  local ok, e, msg = c.p:flush(c.tls or c.fd)
  if ok == nil then return false, errs[e], c.addr .. ": " .. msg end
  return true
end
M.flush = flush

-- Completes a connect in progress by deadline: true, or false, err, detail.
local function finish_connect(self, c, deadline)
  local dl = c.cdeadline < deadline and c.cdeadline or deadline
  while true do
    if not wait_fd(self, c.fd, "w", dl) then
      return false, E_TIMEOUT, c.addr .. ": connect: timed out"
    end
    local ok, e, msg = core.connected(c.fd)
    if not ok then return false, errs[e], c.addr .. ": " .. msg end
    -- writable means the connect finished; a spurious return of the hook
    -- reads as finished too, so make sure with a zero-length send
    local n = send(c.fd, "", 1)
    if n then
      if self.secure then -- TLS and SASL (async/secure.lua)
        local sok, serr, sdetail = self.secure(self, c, dl)
        if not sok then return false, serr, sdetail end
      end
      c.connecting = false
      return true
    end
  end
end
M.finish_connect = finish_connect

-- A text error line where a reply should start (memcached at its
-- connection limit: "ERROR Too many open connections"), read through the
-- codec's reader. Returns true when it is whole (the connection has
-- failed), false when more must come.
local function text_line(self, c, data)
  local t = c.text
  if not t then
    t = codec.reader()
    c.text = t
  end
  t:feed(data)
  local res, perr, kind = t:get()
  if res == false then return false end
  conn_fail(self, c, kind == "server_error" and E_SERVER or E_PROTOCOL,
    c.addr .. ": " .. tostring(perr or "short reply"))
  return true
end

local hand_reading

-- Once its server has max_conns connections, the connection being read
-- takes gets on its own (memcached.core.lanes: async.lua's get) from
-- those whose deadline is no earlier than its reader's, deadline.
local function open_lane(self, c, deadline)
  local max = self.max_conns
  if max ~= 0 and #c.sv.conns >= max then c.p:lane(deadline) end
end

-- Wakes the coroutines c.done lists: those p:read took off parked for a
-- reply it handed over, when something raised before deliver woke them
-- all (the read itself, or a wakeup hook part way: those it woke are off
-- the list; one that raises again here leaves the rest to their fate, as
-- it would anywhere).
local function wake_listed(self, c)
  local list = c.done
  for i, co in pairs(list) do
    list[i] = nil
    if type(co) == "thread" then
      self.woken = self.woken + 1
      pcall(wake_parked, self, co)
    end
  end
end

-- Reads what c's server sent: every whole reply goes to its slot
-- (memcached.core.pipe judges each once, and hands a reply over only once
-- the stream after it is seen in step), and its caller is woken. true
-- when something came, false when nothing did. me: the reader's slot.
local function deliver(self, c, me)
  local io = c.tls or c.fd
  if c.text then -- a text line has started: the rest of it
    local data, e, msg = recv(io, 65536)
    if data then text_line(self, c, data)
    elseif data == nil then conn_fail(self, c, errs[e], c.addr .. ": " .. msg) end
    return data ~= false
  end
  -- list: the coroutines of the replies read that were parked (the pipe
  -- takes them off parked)
  local list = c.done
  local n, e, msg = c.p:read(io, list, parked)
  if n == false then return false end
  if n == nil then
    conn_fail(self, c, errs[e], c.addr .. ": " .. msg)
    return true
  end
  c.n = c.p:count()
  -- the reader's own reply came: the next reader is named and woken
  -- before the callers of the other replies, so that it runs first, and
  -- reads (and keeps the lane) while they queue their next requests
  if me.done and c.reader == me then
    hand_reading(self, c)
    -- and keeps the lane open from now (at its own deadline): the loop
    -- may run the callers woken below before it (cqueues does), and they
    -- queue their gets here either way
    if c.reader then open_lane(self, c, c.reader.deadline) end
  end
  self.woken = self.woken + n
  -- (while a batch's stream is routed, each coroutine is checked for it)
  local wakeup = next(routed) == nil and self.wakeup
  if not wakeup then
    for i = 1, n do
      local co = list[i]
      list[i] = nil
      wake_parked(self, co)
    end
  elseif self.wakeup_all then
    if n > 0 then self.wakeup_all(list, n) end -- (which clears the list)
  else
    for i = 1, n do
      wakeup(list[i])
      list[i] = nil
    end
  end
  -- the callers woken here queue their next gets here, on the lane, while
  -- the reader named gathers them (sv.srv: set by async.lua's call, an
  -- index of sv.ring; lanes:set refuses one of a ring replaced since)
  local sv = c.sv
  if n > 0 and c.reader and sv.ring then self.lanes:set(sv.srv, c, sv.ring) end
  if e == true then text_line(self, c, c.p:rest())
  elseif e then conn_fail(self, c, e, msg and c.addr .. ": " .. msg)
  elseif c.n == 0 then
    wake_waiter(self, c.sv)
  end
  return true
end

-- Reads c for slot me until me's reply came or c failed; me's deadline
-- bounds the wait, and a reply that does not come by then fails every
-- request on c (it is hung or too slow to trust).
local function read_for(self, c, me)
  local yields = 0
  while not me.done and not c.dead do
    local ok, err, detail = true, nil, nil
    -- coroutines woken by the last replies have not run yet: let them
    -- queue their next requests first (a writable socket returns at the
    -- loop's next turn), a few turns at most
    -- (a coroutine its loop dropped after a wake keeps the count up for
    -- good: that costs each reader these few turns, nothing else; the
    -- count must not be cleared instead, since the woken coroutines that
    -- do run would then take it below zero and end the batching)
    while self.woken > 0 and yields < 4 and not c.connecting do
      yields = yields + 1
      if not wait_fd(self, c.fd, "w", me.deadline) then break end
    end
    if c.connecting then ok, err, detail = finish_connect(self, c, me.deadline) end
    if ok and c.werr then ok, err, detail = false, c.werr, c.wdetail end
    if ok then ok, err, detail = flush(self, c) end
    if not ok then conn_fail(self, c, err, detail) break end
    if not deliver(self, c, me) and not wait_fd(self, c.fd, c.p:unsent() and "rw" or "r", me.deadline) then
      -- one last look: the reply may have come with the deadline
      if not c.dead then deliver(self, c, me) end
      if not me.done then conn_fail(self, c, E_TIMEOUT, c.addr .. ": no reply within the timeout") end
    end
  end
end

-- The connection a request for sv goes on: an idle one, else a new one
-- while there are fewer than max_conns, else the one with the fewest
-- requests in flight (pipelined behind them). Connections a batch holds
-- are not shared. nil, err, detail.
local function pick(self, sv, deadline)
  while true do
    local best, bn
    local conns = sv.conns
    for i = 1, #conns do
      local c = conns[i]
      if not c.exclusive then
        local n = c.n
        if n == 0 then return c end
        if not bn or n < bn then best, bn = c, n end
      end
    end
    local max = self.max_conns
    if max == 0 or #conns < max then return open(self, sv) end
    if best then return best end
    -- every connection is held by a batch: wait for one
    if now() >= deadline then
      return nil, E.ERR_BUSY, sv.addr .. ": all " .. self.max_conns .. " connections are in use"
    end
    local co = running()
    sv.waiters[#sv.waiters + 1] = co
    park(self, deadline)
    for i, w in ipairs(sv.waiters) do
      if w == co then table.remove(sv.waiters, i) break end
    end
  end
end

-- A connection of its own for a batch: an idle one, or a new one under
-- max_conns; else it waits for one. Give it back with release.
function M.take(self, sv, deadline)
  while true do
    for _, c in ipairs(sv.conns) do
      if not c.exclusive and not c.reader and c.n == 0 and not c.dead then
        c.exclusive = true
        return c
      end
    end
    if self.max_conns == 0 or #sv.conns < self.max_conns then
      local c, err, detail = open(self, sv)
      if c then c.exclusive = true end
      return c, err, detail
    end
    if now() >= deadline then
      return nil, E.ERR_BUSY, sv.addr .. ": all " .. self.max_conns .. " connections are in use"
    end
    local co = running()
    sv.waiters[#sv.waiters + 1] = co
    park(self, deadline)
    for i, w in ipairs(sv.waiters) do
      if w == co then table.remove(sv.waiters, i) break end
    end
  end
end

-- Gives a batch's connection back: kept when clean, else closed (and
-- after close(): the client keeps nothing).
function M.release(self, c, clean)
  c.exclusive = nil
  if c.dead then return end
  if not clean or self.closed or not c.p:clean() then
    c.dead = true
    close_fd(self, c.fd)
    drop(self, c)
    return
  end
  wake_waiter(self, c.sv)
end

-- Closes every connection that no request is using (close()).
function M.close_idle(self)
  for _, sv in pairs(self.by_addr) do
    for i = #sv.conns, 1, -1 do
      local c = sv.conns[i]
      if not c.exclusive and not c.reader and c.n == 0 then
        c.dead = true
        close_fd(self, c.fd)
        c.p:free()
        table.remove(sv.conns, i)
      end
    end
  end
end

-- One request on a shared connection of sv: data framed under s.opaque
-- (nil: a keyed get of s.key, framed by the pipe), its reply judged as
-- s.kind/s.op (s.key: a keyed get's). s: the slot (kind, op, opaque, key,
-- stream); returns it done: s.err is the core's error number for the
-- reply's status (0 success); or s.failed, with s.err an ERR_* string and
-- s.detail (the transport failed, the reply was wrong, or it did not come
-- in time).
--
-- A request goes out at once only on a connection with nothing in flight
-- and nobody reading it; else it is queued, and the connection's reader
-- sends everything queued in one send before it next waits. The reader
-- always has a request of its own in flight when it waits, so it wakes
-- (a reply, or its deadline) and sends the queue within one round trip:
-- many coroutines' requests go out in one syscall, and the server reads
-- them in one.
function M.submit(self, sv, s, data, deadline)
  local c, err, detail = pick(self, sv, deadline)
  if not c then
    s.done, s.failed, s.err, s.detail = true, true, err, detail
    return nil
  end
  s.co, s.deadline = s.co or running(), deadline
  s.queued = true -- in c's FIFO until its reply or c's failure
  if data then c.p:push(s, s.kind, s.op, s.opaque, s.key, s.stream ~= nil, data)
  else c.p:get(s, s.op, s.opaque, s.key) end
  local n = c.n + 1
  c.n = n
  -- (nothing else in flight and no reader: nothing else is unsent either)
  if n == 1 and not c.reader and not c.connecting and self.woken == 0 then
    -- a failure waits for the reader, which fails the connection with it
    local ok, ferr, fdetail = flush(self, c)
    if not ok then c.werr, c.wdetail = ferr, fdetail end
  end
  return c
end

-- Hands c's reading to the oldest request on it whose caller still
-- waits (c.reader names it at once, so that requests queued meanwhile
-- wait for it instead of sending on their own).
function hand_reading(self, c)
  c.reader = nil
  if c.dead then return end
  local p, found = c.p, nil
  for i = 1, p:count() do
    local w = p:slot(i)
    -- (a coroutine that died waiting, its hook having raised, or that its
    -- loop dropped and the collector took, reads nothing)
    if not w.done and w.co and costatus(w.co) ~= "dead" then
      found = w
      break
    end
  end
  if found then
    c.reader = found
    wake_slot(self, found)
  end
end

-- Waits for the reply of s, submitted on c.
function M.await(self, c, s)
  local deadline = s.deadline
  while not s.done do
    if c.dead then break end
    local r = c.reader
    if not r or r == s then
      c.reader, c.reading = s, true
      -- once its server has max_conns connections, the one being read
      -- takes gets on its own (memcached.core.lanes: async.lua's get),
      -- even while another is idle: one connection read in turn carries
      -- a send per 100 gets of the bench where two took one per 30-50,
      -- each a wake-up of the server (max_conns 2 ran at 3.7x the serial
      -- loop that way, against 4.9x now, as max_conns 1)
      open_lane(self, c, deadline)
      if PROTECT then
        -- a wait hook that raises while this coroutine reads for the
        -- others (or the read itself, out of memory): the callers a read
        -- had listed are woken with their replies, the connection fails
        -- with every request left on it (nobody would read it again),
        -- then the error goes on
        local ok, e = pcall(read_for, self, c, s)
        if not ok then
          c.reading = false
          if not c.dead then c.p:lane(false) end
          wake_listed(self, c)
          conn_fail(self, c, E.ERR_CONNECTION_CLOSED, c.addr .. ": closed: an error while reading it: " .. tostring(e))
          c.reader = nil
          error(e, 0)
        end
      else
        read_for(self, c, s)
      end
      -- a next reader that deliver named, woken, keeps the connection
      -- read (and its lane open) until it runs
      local nr = c.reader
      if c.dead or not nr or nr == s then
        c.reading = false
        if not c.dead then c.p:lane(false) end
        if nr == s then hand_reading(self, c) end
      end
    else
      -- a reader at work (or named and woken by the last one, which
      -- left the connection reading; not one only named otherwise, which
      -- might never run) whose deadline is no later than this one's reads
      -- this reply by then or fails the connection: no timer needed
      park(self, deadline, c.reading and r.deadline <= deadline, s.co)
      if not s.done and now() >= deadline and c.reader ~= s then
        -- its reply will still come, behind the reader's: the slot stays
        -- in the FIFO, answered into nothing
        s.done, s.failed, s.err, s.detail = true, true, E_TIMEOUT, c.addr .. ": no reply within the timeout"
      end
    end
  end
  -- named reader but answered before it read: pass the reading on
  if c.reader == s then hand_reading(self, c) end
  -- after close(), a connection closes when its last request ended
  if self.closed and not c.dead and not c.exclusive and not c.reader and c.n == 0 then
    c.dead = true
    close_fd(self, c.fd)
    drop(self, c)
  end
  if not s.done then
    s.done, s.failed, s.err, s.detail = true, true, E.ERR_CONNECTION_CLOSED, c.addr .. ": connection closed"
  end
  return s
end

function M.request(self, sv, s, data, deadline)
  local c = M.submit(self, sv, s, data, deadline)
  if c then M.await(self, c, s) end
  return s
end

M.read_for = read_for

return M
