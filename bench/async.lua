-- Async mode's throughput (issue 11): 100 coroutines sharing one client,
-- each doing 1,000 gets of a 100-byte value from one server, inside
-- cqueues and inside luv, against the blocking client's serial loop of
-- the same 100,000 gets, in this one process. Prints a Markdown table
-- with gets/s, the ratio to the serial loop and the connections used,
-- and the floor of a Lua driver of this shape (below).
--   lua5.4 bench/async.lua ADDR [coroutines] [gets each] [max_conns]
local root = (arg[0]:match("^(.*/)bench/") or "./")
package.cpath = (os.getenv("MC_SO_DIR") or root) .. "/?.so;" .. package.cpath
package.path = root .. "lua/?.lua;" .. package.path
local memcached = require "memcached"
local core = require "memcached.core"

local ADDR = assert(arg[1], "usage: async.lua ADDR [coroutines] [gets] [max_conns]")
local NCO, NGET = tonumber(arg[2]) or 100, tonumber(arg[3]) or 1000
local MAXC = tonumber(arg[4]) or 2
local now = core.now
local VALUE = ("v"):rep(100)
local KEYS = {}
for i = 1, NCO do KEYS[i] = "async_bench_" .. i end

local blocking = assert(memcached.new { servers = { ADDR }, timeout = 2 })
for i = 1, NCO do assert(blocking:set_raw_data(KEYS[i], VALUE)) end

local function serial()
  local t = now()
  for _ = 1, NGET do
    for i = 1, NCO do
      if blocking:get(KEYS[i]) ~= VALUE then error("wrong value") end
    end
  end
  return now() - t
end

-- The coroutines' loop body: NGET gets of the coroutine's key.
local function worker(mc, key, bad)
  for _ = 1, NGET do
    if mc:get(key) ~= VALUE then bad[1] = bad[1] + 1 end
  end
end

local function in_cqueues()
  local cqueues = require "cqueues"
  local mc = assert(require("memcached.cqueues").new { servers = { ADDR }, timeout = 2,
    max_conns = MAXC })
  local cq, bad = cqueues.new(), { 0 }
  local t = now()
  for i = 1, NCO do cq:wrap(function() worker(mc, KEYS[i], bad) end) end
  assert(cq:loop())
  local dt = now() - t
  assert(bad[1] == 0, "wrong values")
  return dt, mc:servers()[1].connections
end

local function in_luv()
  local uv = require "luv"
  local mc = assert(require("memcached.luv").new { servers = { ADDR }, timeout = 2,
    max_conns = MAXC })
  local bad = { 0 }
  local t = now()
  for i = 1, NCO do coroutine.wrap(function() worker(mc, KEYS[i], bad) end)() end
  uv.run()
  local dt = now() - t
  assert(bad[1] == 0, "wrong values")
  return dt, mc:servers()[1].connections
end

-- The floor for any Lua driver of this shape: the same coroutines, each
-- get framed and judged by memcached.core (enc, take_one) and pipelined on
-- one connection, but no client around it and no loop: one plain Lua
-- loop sends everything queued in one send, reads (spinning on a
-- non-blocking recv) and resumes each reply's coroutine directly.
local function floor()
  local OP = memcached.codec.op
  local enc, take_one, send, recv = core.enc, core.take_one, core.send, core.recv
  -- a connect still in progress makes the first sends spin (0 bytes sent)
  local fd, _, msg = core.connect(ADDR)
  assert(fd, msg)
  local wq, wn, cos, keys, ops, head, tail, seq, bad = {}, 0, {}, {}, {}, 1, 0, 1, 0
  local function get(key)
    local o = seq
    seq = seq + 1
    wn = wn + 1
    wq[wn] = enc(OP.GETK, o, 0, key)
    tail = tail + 1
    cos[tail], keys[tail], ops[tail] = coroutine.running(), key, o
    return coroutine.yield()
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
  while done < NCO * NGET do
    if wn > 0 then
      local data, off = table.concat(wq, "", 1, wn), 1
      wn = 0
      while off <= #data do off = off + assert(send(fd, data, off)) end
    end
    local d = recv(fd, 65536)
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
        coroutine.resume(co, value)
      end
    end
  end
  local dt = now() - t
  core.close(fd)
  assert(bad == 0, "wrong values")
  return dt, 1
end

local total = NCO * NGET
local base = serial()
print(("| loop | %d coroutines x %d gets | gets/s | x serial | connections |"):format(NCO, NGET))
print("|---|---|---|---|---|")
print(("| blocking client, serial loop | %.2f s | %.0f | 1.00 | 1 |"):format(base, total / base))
for _, l in ipairs { { "cqueues", in_cqueues }, { "luv", in_luv } } do
  local dt, conns = l[2]()
  print(("| %s (max_conns %d) | %.2f s | %.0f | %.2f | %d |"):format(l[1], MAXC, dt, total / dt,
    base / dt, conns))
end
local dt = floor()
print(("| floor: core.enc/take_one, no client, no loop | %.2f s | %.0f | %.2f | 1 |"):format(dt,
  total / dt, base / dt))
