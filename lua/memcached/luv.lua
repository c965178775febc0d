-- memcached.luv: clients wired to a libuv loop (luv). memcached.luv.new
-- takes memcached.new's arguments and gives an async client
-- (memcached.async) that waits with uv poll and timer handles and yields
-- the calling coroutine; the handle's callback resumes it. Call the
-- client's methods from coroutines (coroutine.wrap(fn)() from any luv
-- callback or before uv.run()).
local uv = require "luv"
local memcached = require "memcached"

local running, yield, resume, next = coroutine.running, coroutine.yield, coroutine.resume, next
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
-- coroutine -> its timer while it sleeps with a timeout (weak: a
-- coroutine its loop dropped can be collected). A sleep with no timeout
-- keeps nothing: the client wakes only a coroutine that it parked in
-- sleep, once (memcached.async.conn), so wakeup needs no record of it.
-- (That record cost 5-10% of a get: four lookups by coroutine, and a
-- weak table the collector clears again and again.)
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

-- A poll handle per descriptor number, made at its first wait and kept:
-- between waits it is stopped, and a stopped handle watches nothing
-- (libuv takes its descriptor out of epoll), so when the number is
-- closed (with the cancel hook or not: a client collected unclosed) and
-- reused, the handle serves the new descriptor and never watches a closed
-- one. (Making and closing a handle per wait cost 7 syscalls per wait;
-- closing one when its descriptor closes would leave a close pending
-- after uv.run has returned, which luv does not survive at exit.)
-- Coroutines woken by wakeup run from an idle handle, not from inside the
-- waker: no coroutine is resumed from another one.
local polls = {}
local ready, nready, idle = {}, 0, nil
local function run_ready()
  local list, n = ready, nready
  ready, nready = {}, 0
  idle:stop()
  for i = 1, n do
    local co = list[i]
    local ok, err = resume(co) -- (go, inlined: once per get)
    if not ok then error(traceback(co, tostring(err)), 0) end
  end
end

-- The ready coroutines run at the loop's next turn.
local function run_soon()
  if not idle then idle = uv.new_idle() end
  idle:start(run_ready)
end

-- co, woken: its sleep's timer, if it slept with a timeout, is stopped.
local function untime(co)
  local t = sleeping[co]
  if t then
    sleeping[co] = nil
    t:stop()
  end
end

M.hooks = {
  wait = function(fd, events, timeout)
    local co = running()
    local h = polls[fd]
    if not h then
      h = uv.new_poll(fd)
      polls[fd] = h
    end
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
    if not fired then h:stop() end -- (resumed by something else)
    if t then give_timer(t) end
  end,
  -- fd is about to be closed: its handle stops watching it (a wait on it
  -- still under way ends by its timeout, as it would on a closed one)
  cancel = function(fd)
    local h = polls[fd]
    if h then h:stop() end
  end,
  -- timeout nil: until wakeup, with no timer at all
  sleep = function(timeout, co)
    if not timeout then
      yield()
      return
    end
    co = co or running() -- (the client passes it)
    local t = take_timer()
    sleeping[co], sleep_of[t] = t, co
    t:start(ms(timeout), 0, sleep_cb[t])
    yield()
    sleeping[co], sleep_of[t] = nil, nil
    give_timer(t)
  end,
  wakeup = function(co)
    untime(co)
    local n = nready + 1
    ready[n], nready = co, n
    if n == 1 then run_soon() end
  end,
  -- wakeup of each of list[1..n], clearing them (a call per read, not
  -- one per caller)
  wakeup_all = function(list, n)
    local m = nready
    -- (no coroutine sleeps with a timeout, mostly: then no lookup at all)
    local timed = next(sleeping) ~= nil
    for i = 1, n do
      local co = list[i]
      list[i] = nil
      if timed then untime(co) end
      ready[m + i] = co
    end
    nready = m + n
    if m == 0 and n > 0 then run_soon() end
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
