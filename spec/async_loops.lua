-- The event loops the async specs run in (spec/async_spec.lua,
-- spec/async_tls_spec.lua): for each, mod (the memcached module wired to
-- it), run(fn) (fn(spawn) in a coroutine of a fresh loop until every
-- coroutine ended, raising the first error any of them raised; spawn(f)
-- starts another coroutine), sleep(s) inside the loop and ticker(spawn)
-- (below).
local cqueues = require "cqueues"
local uv = require "luv"

-- Lua 5.1 cannot yield across pcall (5.2+ and LuaJIT can): there a
-- coroutine's error is left to reach whoever resumed it (cqueues' loop
-- returns it; memcached.luv's resume raises it out of uv.run).
local YIELD_ACROSS_PCALL = _VERSION ~= "Lua 5.1" or jit ~= nil
local function guarded(f)
  if YIELD_ACROSS_PCALL then return pcall(f) end
  f()
  return true
end

local now = require("socket").gettime

local loops = {
  cqueues = {
    mod = require "memcached.cqueues",
    run = function(fn)
      local cq = cqueues.new()
      local first
      local function spawn(f)
        cq:wrap(function()
          local ok, err = guarded(f)
          if not ok then first = first or err end
        end)
      end
      spawn(function() fn(spawn) end)
      assert(cq:loop())
      if first then error(first, 0) end
    end,
    sleep = function(s) cqueues.sleep(s) end,
  },
  luv = {
    mod = require "memcached.luv",
    run = function(fn)
      local first
      local function spawn(f)
        local co = coroutine.create(function()
          local ok, err = guarded(f)
          if not ok then first = first or err end
        end)
        assert(coroutine.resume(co))
      end
      spawn(function() fn(spawn) end)
      uv.run()
      if first then error(first, 0) end
    end,
    sleep = function(s)
      local co, t = coroutine.running(), uv.new_timer()
      t:start(math.ceil(s * 1000), 0, function()
        t:close()
        assert(coroutine.resume(co))
      end)
      coroutine.yield()
    end,
  },
}

-- ticker(L, spawn): a coroutine that sleeps 10 ms at a time through L's
-- loop and records the ticks and the largest gap between them, until
-- stop(); the specs check that a waiting call never blocks the loop.
for _, L in pairs(loops) do
  function L.ticker(spawn)
    local t = { ticks = 0, max_gap = 0, done = false }
    function t.stop() t.done = true end
    spawn(function()
      local last = now()
      while not t.done do
        L.sleep(0.01)
        local n = now()
        if n - last > t.max_gap then t.max_gap = n - last end
        last = n
        t.ticks = t.ticks + 1
      end
    end)
    return t
  end
end

return loops
