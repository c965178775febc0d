-- memcached.cqueues: clients wired to a cqueues loop. memcached.cqueues.new
-- takes memcached.new's arguments and gives an async client
-- (memcached.async) whose every wait is a cqueues.poll, so its methods
-- yield the calling cqueues coroutine instead of blocking the loop. Call
-- the client's methods from coroutines the controller runs (cq:wrap).
local cqueues = require "cqueues"
local condition = require "cqueues.condition"
local memcached = require "memcached"

local running, setmetatable, poll = coroutine.running, setmetatable, cqueues.poll
-- cqueues.poll, inlined for sleep and wakeup (once per get each): inside
-- a thread of a controller it yields cqueues._POLL and its arguments;
-- elsewhere it runs a loop of its own, which sleep leaves to it
-- (a cqueues without _POLL: every sleep goes through cqueues.poll)
local yield, POLL = coroutine.yield, cqueues._POLL
local cq_running = POLL and cqueues.running or function() return false end
local signal = condition.new().signal

local M = {}

-- A pollable for each descriptor and events, made once (cqueues reads
-- pollfd and events from it).
local pollables = { r = {}, w = {}, rw = {} }
local function pollable(fd, events)
  local byfd = pollables[events]
  local p = byfd[fd]
  if not p then
    p = { pollfd = fd, events = events }
    byfd[fd] = p
  end
  return p
end

-- A condition per coroutine that ever sleeps, for wakeup; and the same
-- again for those that slept in a thread of a controller, which stay
-- in one (a controller never lets a thread go), so that they need not
-- ask cqueues.running() at every sleep.
local conds = setmetatable({}, { __mode = "k" })
local managed = setmetatable({}, { __mode = "k" })

-- The hooks memcached.async calls (README, async mode).
M.hooks = {
  wait = function(fd, events, timeout)
    poll(pollable(fd, events), timeout)
  end,
  sleep = function(timeout, co)
    co = co or running() -- (the client passes it)
    local c = managed[co]
    if not c then
      c = conds[co]
      if not c then
        c = condition.new()
        conds[co] = c
      end
      if not cq_running() then return poll(c, timeout) end
      managed[co] = c
    end
    -- (polled as it is: condition:wait adds two Lua calls around this)
    if timeout then yield(POLL, c, timeout) else yield(POLL, c) end
  end,
  wakeup = function(co)
    local c = conds[co]
    if c then signal(c) end
  end,
  -- wakeup of each of list[1..n], clearing them (a call per read, not
  -- one per caller)
  wakeup_all = function(list, n)
    for i = 1, n do
      local c = conds[list[i]]
      list[i] = nil
      if c then signal(c) end
    end
  end,
  cancel = function(fd)
    cqueues.cancel(fd)
    pollables.r[fd], pollables.w[fd], pollables.rw[fd] = nil, nil, nil
  end,
}

-- new(opts) or new(server, ...): memcached.new with the hooks above.
function M.new(opts, ...)
  local o = {}
  if type(opts) ~= "table" or opts[1] ~= nil then
    o.servers = { opts, ... }
  else
    for k, v in pairs(opts) do o[k] = v end
  end
  for k, v in pairs(M.hooks) do o[k] = v end
  return memcached.new(o)
end

return M
