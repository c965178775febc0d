-- Async mode's throughput (issue 11): 100 coroutines sharing one client,
-- each doing 1,000 gets of a 100-byte value from one server, inside
-- cqueues and inside luv, against the blocking client's serial loop of
-- the same 100,000 gets, in this one process.
--   lua5.4 bench/async.lua ADDR [coroutines] [gets each] [max_conns,...] [rounds]
-- (max_conns: one or more counts, comma-separated, default "1,2": a row
-- per loop and count)
--
-- The rows, each the same gets of the same keys (every value is checked;
-- a wrong one fails the run):
--   blocking client, serial loop: one memcached.new client, one get after
--     the other from a plain loop; the ratio column divides by this.
--   cqueues, luv: the async client (memcached.cqueues, memcached.luv) that
--     all the coroutines share, up to max_conns connections.
--   floor, no loop: the least a Lua driver of this shape can do at all.
--     No client and no event loop: each get is framed by core.enc and
--     judged by core.take_one on one pipelined connection; one plain Lua
--     loop sends everything queued in one send, reads (spinning on a
--     non-blocking recv) and resumes each reply's coroutine directly.
--   luv ideal floor: the least any driver can do inside luv. The same
--     framing and judging, with one poll handle on the one connection: its
--     callback reads and judges, and puts each finished coroutine on a
--     ready list; one idle handle resumes them and sends what they queued
--     in one send.
--   luv pipe floor: the luv ideal floor over memcached.core.pipe (the C
--     pipe the client's connections use): no string per get, the replies
--     judged in C, one call per read.
--   cqueues ideal floor: the least any driver can do inside cqueues. A
--     reader thread waits with cqueues.poll on the connection, reads and
--     judges; the coroutines are cqueues threads, woken through a
--     condition (one per send, see cq_floor); the last of them to run
--     sends what they all queued in one send.
-- The distance between a client row and its loop's ideal floor is the
-- client's own cost; between the ideal floor and the bare floor, the
-- loop's.
--
-- Each round runs every row once, in the order above, so that drift on
-- the machine hits each row alike; the table gives each row's median time
-- over the rounds (default 5), gets/s from that median, the serial loop's
-- median over the row's, and the spread (the fastest and slowest round).
local root = (arg[0]:match("^(.*/)bench/") or "./")
package.cpath = (os.getenv("MC_SO_DIR") or root) .. "/?.so;" .. package.cpath
package.path = root .. "lua/?.lua;" .. package.path
local memcached = require "memcached"
local core = require "memcached.core"

local ADDR = assert(arg[1], "usage: async.lua ADDR [coroutines] [gets] [max_conns,...] [rounds]")
local NCO, NGET = tonumber(arg[2]) or 100, tonumber(arg[3]) or 1000
local MAXCS = {}
for m in (arg[4] or "1,2"):gmatch("%d+") do MAXCS[#MAXCS + 1] = tonumber(m) end
local ROUNDS = tonumber(arg[5]) or 5
local TOTAL = NCO * NGET
local now = core.now
local VALUE = ("v"):rep(100)
local KEYS = {}
for i = 1, NCO do KEYS[i] = "async_bench_" .. i end
local OP = memcached.codec.op
local enc, take_one, send, recv = core.enc, core.take_one, core.send, core.recv
local yield, resume, running = coroutine.yield, coroutine.resume, coroutine.running

local blocking = assert(memcached.new { servers = { ADDR }, timeout = 2 })
for i = 1, NCO do assert(blocking:set_raw_data(KEYS[i], VALUE)) end

local function serial()
  local t = now()
  for _ = 1, NGET do
    for i = 1, NCO do
      if blocking:get(KEYS[i]) ~= VALUE then error("wrong value") end
    end
  end
  return now() - t, 1
end

-- The coroutines' loop body: NGET gets of the coroutine's key; bad[2]
-- counts the coroutines that finished (a row whose loop ended before
-- every coroutine did fails the run).
local function worker(mc, key, bad)
  for _ = 1, NGET do
    if mc:get(key) ~= VALUE then bad[1] = bad[1] + 1 end
  end
  bad[2] = bad[2] + 1
end

local function in_cqueues(maxc)
  local cqueues = require "cqueues"
  local mc = assert(require("memcached.cqueues").new { servers = { ADDR }, timeout = 2,
    max_conns = maxc })
  local cq, bad = cqueues.new(), { 0, 0 }
  local t = now()
  for i = 1, NCO do cq:wrap(function() worker(mc, KEYS[i], bad) end) end
  assert(cq:loop())
  local dt = now() - t
  assert(bad[1] == 0, "wrong values")
  assert(bad[2] == NCO, bad[2] .. " of " .. NCO .. " coroutines finished")
  local conns = mc:servers()[1].connections
  mc:close()
  return dt, conns
end

local function in_luv(maxc)
  local uv = require "luv"
  local mc = assert(require("memcached.luv").new { servers = { ADDR }, timeout = 2,
    max_conns = maxc })
  local bad = { 0, 0 }
  local t = now()
  for i = 1, NCO do coroutine.wrap(function() worker(mc, KEYS[i], bad) end)() end
  uv.run()
  local dt = now() - t
  assert(bad[1] == 0, "wrong values")
  assert(bad[2] == NCO, bad[2] .. " of " .. NCO .. " coroutines finished")
  local conns = mc:servers()[1].connections
  mc:close()
  return dt, conns
end

-- A floor's one connection.
local function floor_connect()
  local fd, _, msg = core.connect(ADDR)
  assert(fd, msg)
  return fd
end

-- The end of a floor's run: its time since t, its connection closed, and
-- every value in and right (a wrong one fails the run).
local function floor_done(t, fd, done, bad)
  local dt = now() - t
  core.close(fd)
  assert(done == TOTAL and bad == 0, "wrong values")
  return dt, 1
end

-- Sends all of data on fd, spinning while the socket is full (or while a
-- connect is still in progress: 0 bytes sent).
local function send_all(fd, data)
  local off = 1
  while off <= #data do off = off + assert(send(fd, data, off)) end
end

-- The floor for any Lua driver of this shape: the same coroutines, each
-- get framed and judged by memcached.core (enc, take_one) and pipelined on
-- one connection, but no client around it and no loop: one plain Lua
-- loop sends everything queued in one send, reads (spinning on a
-- non-blocking recv) and resumes each reply's coroutine directly.
local function floor()
  local fd = floor_connect()
  local wq, wn, cos, keys, ops, head, tail, seq, bad = {}, 0, {}, {}, {}, 1, 0, 1, 0
  local function get(key)
    local o = seq
    seq = seq + 1
    wn = wn + 1
    wq[wn] = enc(OP.GETK, o, 0, key)
    tail = tail + 1
    cos[tail], keys[tail], ops[tail] = running(), key, o
    return yield()
  end
  local t = now()
  for i = 1, NCO do
    coroutine.wrap(function()
      for _ = 1, NGET do
        if get(KEYS[i]) ~= VALUE then bad = bad + 1 end
      end
    end)()
  end
  local buf, pos, done = "", 1, 0
  while done < TOTAL do
    if wn > 0 then
      local data = table.concat(wq, "", 1, wn)
      wn = 0
      send_all(fd, data)
    end
    local d, _, err = recv(fd, 65536)
    if d == nil then error(err) end
    if d then
      buf = pos <= #buf and buf:sub(pos) .. d or d
      pos = 1
      while head <= tail do
        local rc, _, _, _, _, _, value, used = take_one(buf, pos, 1048576, 0, OP.GETK, ops[head],
          keys[head], true)
        if rc ~= 1 then break end
        pos = pos + used
        local co = cos[head]
        cos[head], keys[head] = nil, nil
        head = head + 1
        done = done + 1
        resume(co, value)
      end
    end
  end
  return floor_done(t, fd, done, bad)
end

-- The ideal floor inside luv: the floor's framing and judging, with the
-- loop's cheapest wiring. One poll handle on the one connection for the
-- whole run; its callback reads, judges every whole reply in order and
-- puts (coroutine, value) on a ready list; one idle handle resumes the
-- ready coroutines (as memcached.luv runs the coroutines it wakes) and
-- then sends all that they queued in one send. Both handles close when
-- the last value is in, so uv.run returns.
local function luv_floor()
  local uv = require "luv"
  local fd = floor_connect()
  local wq, wn, cos, keys, ops, head, tail, seq, bad = {}, 0, {}, {}, {}, 1, 0, 1, 0
  local ready, nready, done = {}, 0, 0
  local function get(key)
    local o = seq
    seq = seq + 1
    wn = wn + 1
    wq[wn] = enc(OP.GETK, o, 0, key)
    tail = tail + 1
    cos[tail], keys[tail], ops[tail] = running(), key, o
    return yield()
  end
  local function flush()
    if wn > 0 then
      local data = table.concat(wq, "", 1, wn)
      wn = 0
      send_all(fd, data)
    end
  end
  local poll, idle = uv.new_poll(fd), uv.new_idle()
  local function run_ready()
    idle:stop()
    local list, n = ready, nready
    ready, nready = {}, 0
    for i = 1, n, 2 do
      local ok, err = resume(list[i], list[i + 1])
      if not ok then error(err) end
    end
    flush()
    if done == TOTAL then -- every coroutine has had its last value
      poll:close()
      idle:close()
    end
  end
  local buf, pos = "", 1
  poll:start("r", function(perr)
    assert(not perr, perr)
    local d, _, err = recv(fd, 65536)
    if d == nil then error(err) end
    if not d then return end
    buf = pos <= #buf and buf:sub(pos) .. d or d
    pos = 1
    local n0 = nready
    while head <= tail do
      local rc, _, _, _, _, _, value, used = take_one(buf, pos, 1048576, 0, OP.GETK, ops[head],
        keys[head], true)
      if rc ~= 1 then break end
      pos = pos + used
      ready[nready + 1], ready[nready + 2] = cos[head], value
      nready = nready + 2
      cos[head], keys[head] = nil, nil
      head = head + 1
      done = done + 1
    end
    if n0 == 0 and nready > 0 then idle:start(run_ready) end
  end)
  local t = now()
  for i = 1, NCO do
    coroutine.wrap(function()
      for _ = 1, NGET do
        if get(KEYS[i]) ~= VALUE then bad = bad + 1 end
      end
    end)()
  end
  flush()
  uv.run()
  return floor_done(t, fd, done, bad)
end

-- The luv ideal floor over memcached.core.pipe, the C pipe the client's
-- connections use: gets framed into the pipe's buffer (no string per
-- get), replies judged in C and handed to their slots in one call per
-- read; otherwise luv_floor's wiring (one poll handle, one idle handle).
-- The distance from it to the luv row is the client's Lua.
local function luv_pipe_floor()
  local uv = require "luv"
  local fd = floor_connect()
  local p = core.pipe(1048576)
  local GETK, seq, bad, done = OP.GETK, 1, 0, 0
  local slots, list, ready, nready, unsent = {}, {}, {}, 0, false
  local function get(key)
    local co = running()
    local s = slots[co]
    if not s then
      s = { co = co, done = false, queued = false, err = 0, status = 0, flags = 0, cas = 0,
        value = false }
      slots[co] = s
    end
    s.done = false
    p:get(s, GETK, seq, key)
    seq = seq + 1
    unsent = true
    yield()
    return s.value
  end
  local function flush()
    if unsent then
      unsent = false
      while not p:flush(fd) do end
    end
  end
  local poll, idle = uv.new_poll(fd), uv.new_idle()
  local function run_ready()
    idle:stop()
    local l, n = ready, nready
    ready, nready = {}, 0
    for i = 1, n do
      local ok, err = resume(l[i])
      if not ok then error(err) end
    end
    flush()
    if done == TOTAL then
      poll:close()
      idle:close()
    end
  end
  poll:start("r", function(perr)
    assert(not perr, perr)
    local n, e, m = p:read(fd, list)
    if n == nil or e then error(tostring(m or e)) end
    if not n then return end
    local n0 = nready
    for i = 1, n do
      nready = nready + 1
      ready[nready] = list[i].co
      list[i] = nil
    end
    done = done + n
    if n0 == 0 and nready > 0 then idle:start(run_ready) end
  end)
  local t = now()
  for i = 1, NCO do
    coroutine.wrap(function()
      for _ = 1, NGET do
        if get(KEYS[i]) ~= VALUE then bad = bad + 1 end
      end
    end)()
  end
  flush()
  uv.run()
  return floor_done(t, fd, done, bad)
end

-- The ideal floor inside cqueues: the floor's framing and judging, the
-- coroutines cqueues threads (cq:wrap), as a client's callers are. A
-- reader thread polls the connection ({pollfd, events = "r"}), reads and
-- judges every whole reply in order, and wakes the threads whose replies
-- are in. The threads wait on a condition of the send that carries their
-- get (one condition per send); the reader signals it once all of that
-- send's replies are in. Whoever of the woken threads runs last (a count
-- of the woken that have not yet run to their next get) sends what they
-- all queued, in one send: no extra step of the reader.
-- Tried as well, in a harness running the variants interleaved (medians
-- of 15, 15 and 25 rounds on this machine): one condition per thread,
-- signalled per reply (waited on with cqueues.poll(cond) or cond:wait()),
-- a signal per get instead of one per send: from 5% faster to 6% slower
-- than this, run by run, so within the noise; this keeps the fewer
-- signals (a thread whose reply is in waits for the rest of its send's,
-- which here mostly come in the same read). And the reader itself sending,
-- after cqueues.poll() with no arguments until the woken have run: no
-- different within the noise; this keeps the way with no extra step of
-- the reader.
-- cqueues.sleep(0) and cqueues.poll(0) will not do for that: they return
-- before the woken threads have run, so the send would miss their gets.
local function cq_floor()
  local cqueues = require "cqueues"
  local condition = require "cqueues.condition"
  local cpoll = cqueues.poll
  local fd = floor_connect()
  local wq, wn, keys, ops, head, tail, seq, bad = {}, 0, {}, {}, 1, 0, 1, 0
  local vals, who = {}, {} -- a thread's value by its number; a get's thread
  local cond = condition.new() -- the condition of the next send
  local sconds, sends, sh, st = {}, {}, 1, 0 -- sent, unanswered: condition, last get
  local towake = NCO -- woken threads that have not run to their next get yet
  local function flush()
    if wn > 0 then
      local data = table.concat(wq, "", 1, wn)
      wn = 0
      st = st + 1
      sconds[st], sends[st] = cond, tail
      cond = condition.new()
      send_all(fd, data)
    end
  end
  local function get(i)
    local o = seq
    seq = seq + 1
    wn = wn + 1
    wq[wn] = enc(OP.GETK, o, 0, KEYS[i])
    tail = tail + 1
    who[tail], keys[tail], ops[tail] = i, KEYS[i], o
    local c = cond -- the condition of the send that will carry this get
    towake = towake - 1
    if towake == 0 then flush() end
    cpoll(c)
    local v = vals[i]
    vals[i] = nil
    return v
  end
  local cq = cqueues.new()
  local t = now()
  for i = 1, NCO do
    cq:wrap(function()
      for _ = 1, NGET do
        if get(i) ~= VALUE then bad = bad + 1 end
      end
      towake = towake - 1
      if towake == 0 then flush() end
    end)
  end
  local done = 0
  cq:wrap(function()
    local pollable = { pollfd = fd, events = "r" }
    local buf, pos = "", 1
    while done < TOTAL do
      cpoll(pollable)
      local d, _, err = recv(fd, 65536)
      if d == nil then error(err) end
      if d then
        buf = pos <= #buf and buf:sub(pos) .. d or d
        pos = 1
        while head <= tail do
          local rc, _, _, _, _, _, value, used = take_one(buf, pos, 1048576, 0, OP.GETK,
            ops[head], keys[head], true)
          if rc ~= 1 then break end
          pos = pos + used
          vals[who[head]] = value
          who[head], keys[head] = nil, nil
          head = head + 1
          done = done + 1
        end
        -- wake the sends whose replies are all in
        while sh <= st and sends[sh] < head do
          towake = towake + sends[sh] - (sh > 1 and sends[sh - 1] or 0)
          sconds[sh]:signal()
          sconds[sh] = nil
          sh = sh + 1
        end
      end
    end
  end)
  assert(cq:loop())
  return floor_done(t, fd, done, bad)
end

-- The cqueues ideal floor over memcached.core.pipe, as luv_pipe_floor is
-- luv_floor's: gets framed into the pipe, replies judged in C, one call
-- per read; each thread waits on a condition of its own, which the reader
-- signals as its reply comes (one signal per get: the client's way, since
-- its callers' gets need not share a send). The reader thread, once the
-- woken have run (cqueues.poll() with no arguments, until none is left),
-- sends what they queued in one send. The distance from it to the cqueues
-- row is the client's Lua.
local function cq_pipe_floor()
  local cqueues = require "cqueues"
  local condition = require "cqueues.condition"
  local cpoll = cqueues.poll
  local fd = floor_connect()
  local p = core.pipe(1048576)
  -- woken: threads signalled (or not yet started) that have not queued
  -- their next get
  local GETK, seq, bad, done, woken = OP.GETK, 1, 0, 0, NCO
  local list = {}
  local cq = cqueues.new()
  local t = now()
  for i = 1, NCO do
    local s = { done = false, queued = false, err = 0, status = 0, flags = 0, cas = 0,
      value = false, cond = condition.new() }
    cq:wrap(function()
      local key, cond = KEYS[i], s.cond
      for _ = 1, NGET do
        s.done = false
        p:get(s, GETK, seq, key)
        seq = seq + 1
        woken = woken - 1
        cpoll(cond)
        if s.value ~= VALUE then bad = bad + 1 end
      end
      woken = woken - 1
    end)
  end
  cq:wrap(function()
    local pollable = { pollfd = fd, events = "r" }
    while done < TOTAL do
      while woken > 0 do cpoll() end
      if p:unsent() then while not p:flush(fd) do end end
      cpoll(pollable)
      local n, e, m = p:read(fd, list)
      if n == nil or e then error(tostring(m or e)) end
      if n then
        woken = woken + n
        done = done + n
        for i = 1, n do
          list[i].cond:signal()
          list[i] = nil
        end
      end
    end
  end)
  assert(cq:loop())
  return floor_done(t, fd, done, bad)
end

local ROWS = { { "blocking client, serial loop", serial } }
for _, m in ipairs(MAXCS) do
  ROWS[#ROWS + 1] = { ("cqueues (max_conns %d)"):format(m), function() return in_cqueues(m) end }
  ROWS[#ROWS + 1] = { ("luv (max_conns %d)"):format(m), function() return in_luv(m) end }
end
for _, row in ipairs {
  { "floor: core.enc/take_one, no client, no loop", floor },
  { "luv ideal floor: one poll + one idle handle, no client", luv_floor },
  { "luv pipe floor: the same over core.pipe, no client", luv_pipe_floor },
  { "cqueues ideal floor: reader thread + a condition per send, no client", cq_floor },
  { "cqueues pipe floor: over core.pipe, a condition per thread, no client", cq_pipe_floor },
} do ROWS[#ROWS + 1] = row end

local times, conns = {}, {}
for k = 1, #ROWS do times[k], conns[k] = {}, {} end
for r = 1, ROUNDS do
  for k, row in ipairs(ROWS) do
    times[k][r], conns[k][r] = row[2]()
  end
end

local function median(list)
  local s = {}
  for i, v in ipairs(list) do s[i] = v end
  table.sort(s)
  local n = #s
  if n % 2 == 1 then return s[math.floor((n + 1) / 2)], s[1], s[n] end
  return (s[n / 2] + s[n / 2 + 1]) / 2, s[1], s[n]
end

-- x serial: the serial loop's median time over the row's; paired: the
-- median over the rounds of each round's own ratio (the serial loop's
-- time in that round over the row's), which the machine's drift between
-- rounds does not move.
local base = median(times[1])
print(("| loop | %d coroutines x %d gets, median of %d | gets/s | x serial | x serial, paired | spread | connections |")
  :format(NCO, NGET, ROUNDS))
print("|---|---|---|---|---|---|---|")
for k, row in ipairs(ROWS) do
  local m, lo, hi = median(times[k])
  local _, clo, chi = median(conns[k])
  local cs = clo == chi and ("%d"):format(clo) or ("%d-%d"):format(clo, chi)
  local ratios = {}
  for r = 1, ROUNDS do ratios[r] = times[1][r] / times[k][r] end
  print(("| %s | %.2f s | %.0f | %.2f | %.2f | %.2f-%.2f s | %s |"):format(row[1], m, TOTAL / m,
    base / m, median(ratios), lo, hi, cs))
end
