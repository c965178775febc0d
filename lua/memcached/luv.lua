-- memcached.luv: clients wired to a libuv loop (luv). memcached.luv.new
-- takes memcached.new's arguments and gives an async client
-- (memcached.async) that waits with uv poll and timer handles and yields
-- the calling coroutine; the handle's callback resumes it. Call the
-- client's methods from coroutines (coroutine.wrap(fn)() from any luv
-- callback or before uv.run()).
local uv = require "luv"
local memcached = require "memcached"

local running, yield, resume = coroutine.running, coroutine.yield, coroutine.resume
local ceil, traceback = math.ceil, debug.traceback

local M = {}

-- Resumes co; an error inside it is raised here, in the loop's callback,
-- with the coroutine's traceback.
local function go(co)
  local ok, err = resume(co)
  if not ok then error(traceback(co, tostring(err)), 0) end
end

-- Timers are reused: a handle costs a close (a loop iteration) to free.
-- Each keeps one callback for sleeps (no closure per sleep): it resumes
-- the coroutine sleep_of[t] names.
local timers, sleep_of, sleep_cb = {}, {}, {}
-- coroutine -> its timer (true: none) while it sleeps; weak, so that a
-- coroutine its loop dropped while it slept untimed can be collected
local sleeping = setmetatable({}, { __mode = "k" })
local function take_timer()
  local t = timers[#timers]
  if t then timers[#timers] = nil return t end
  t = uv.new_timer()
  sleep_cb[t] = function()
    local co = sleep_of[t]
    if co and sleeping[co] == t then
      sleeping[co], sleep_of[t] = nil, nil
      go(co)
    end
  end
  return t
end
local function give_timer(t)
  t:stop()
  timers[#timers + 1] = t
end

local function ms(timeout) return ceil(timeout * 1000) end

-- A poll handle per wait, closed when the wait ends: a handle kept per
-- descriptor would outlive a descriptor closed without the cancel hook
-- (a client collected unclosed) and watch whatever reuses its number.
-- Coroutines woken by wakeup run from an idle handle, not from inside the
-- waker: no coroutine is resumed from another one.
local ready, nready, idle = {}, 0, nil
local function run_ready()
  local list, n = ready, nready
  ready, nready = {}, 0
  idle:stop()
  for i = 1, n do go(list[i]) end
end

M.hooks = {
  wait = function(fd, events, timeout)
    local co = running()
    local h = uv.new_poll(fd)
    local t = timeout and take_timer()
    local fired = false
    local function done()
      if fired then return end
      fired = true
      h:stop()
      if t then t:stop() end
      go(co)
    end
    h:start(events, done)
    if t then t:start(ms(timeout), 0, done) end
    yield()
    h:close()
    if t then give_timer(t) end
  end,
  -- timeout nil: until wakeup, with no timer at all
  sleep = function(timeout)
    local co = running()
    if not timeout then
      sleeping[co] = true
      yield()
      sleeping[co] = nil
      return
    end
    local t = take_timer()
    sleeping[co], sleep_of[t] = t, co
    t:start(ms(timeout), 0, sleep_cb[t])
    yield()
    sleeping[co], sleep_of[t] = nil, nil
    give_timer(t)
  end,
  wakeup = function(co)
    local t = sleeping[co]
    if not t then return end
    sleeping[co] = nil
    if t ~= true then t:stop() end
    local n = nready + 1
    ready[n], nready = co, n
    if n == 1 then
      if not idle then idle = uv.new_idle() end
      idle:start(run_ready)
    end
  end,
}

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
