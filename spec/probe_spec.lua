-- A dead server is probed by the client, never with a caller's request: a
-- probe is a connect and a NOOP within probe_timeout. Once a server is
-- marked dead, calls spanning many retry periods all succeed (eject) or
-- fail fast with ERR_SERVER_DEAD (no eject), none waits more than about
-- probe_timeout, and a server that comes back gets its keys again. The old
-- build sent one caller's request to the dead server per retry period: it
-- failed (refused) or waited the whole timeout (stopped).
local H = require "spec.helper"
local memcached = H.memcached

local TIMEOUT = 0.5        -- what a call sent to a stopped server would wait
local PROBE = 0.02         -- probe_timeout
local RETRY = 0.05         -- retry_timeout
local BOUND = PROBE + 0.13 -- the longest call allowed (a loaded 2-CPU VM)

-- keys of `mc` whose static server is addr, and the others
local function split_keys(mc, addr, n)
  local mine, others = {}, {}
  local i = 0
  while #mine < n or #others < n do
    i = i + 1
    local k = "key:" .. i
    if mc:pick_server(k) == addr then
      if #mine < n then mine[#mine + 1] = k end
    elseif #others < n then
      others[#others + 1] = k
    end
  end
  return mine, others
end

local function client(servers, opts)
  local o = { servers = servers, timeout = TIMEOUT, failure_limit = 1,
              retry_timeout = RETRY, probe_timeout = PROBE }
  for k, v in pairs(opts or {}) do o[k] = v end
  return memcached.new(o)
end

-- Calls fn(i) for `seconds`; returns the number of calls, the failures
-- (a list of errors) and the longest call in seconds.
local function hammer(seconds, fn)
  local t_end, n, fails, worst = H.now() + seconds, 0, {}, 0
  repeat
    n = n + 1
    local dt, ok, err = H.timed(function() return fn(n) end)
    if not ok then fails[#fails + 1] = tostring(err) end
    if dt > worst then worst = dt end
  until H.now() > t_end
  return n, fails, worst
end

-- The server at addr alone holds key with value v.
local function holds(addr, key, v)
  local direct = memcached.new { servers = { addr }, timeout = 1 }
  local got = direct:get(key)
  direct:close()
  return got == v
end

local function server_info(mc, addr)
  for _, s in ipairs(mc:servers()) do
    if s.addr == addr then return s end
  end
end

describe("probing a dead server", function()
  after_each(function() H.stop_all() end)

  -- how: "kill9" (refused) or "sigstop" (accepts in the kernel, never
  -- answers)
  local function eject_case(how)
    local a, b, c = H.start_memcached(), H.start_memcached(), H.start_memcached()
    local mc = client { a.addr, b.addr, c.addr }
    local events = {}
    mc:set_server_error_callback(function(addr, _, state)
      events[#events + 1] = addr .. " " .. state
    end)
    local mine, others = split_keys(mc, b.addr, 20)
    for _, k in ipairs(mine) do assert.truthy(mc:set(k, "old")) end
    for _, k in ipairs(others) do assert.truthy(mc:set(k, "x")) end

    if how == "kill9" then b.kill9() else b.sigstop() end
    -- the call that finds out fails (failure_limit = 1) and marks it dead
    local _, err = mc:get(mine[1])
    assert.is_not_nil(err)
    assert.is_false(server_info(mc, b.addr).alive)

    -- 0.5 s: ten retry periods, each one's first call for b's keys probes
    local n, fails, worst = hammer(0.5, function(i)
      local k = (i % 2 == 0) and mine[i % #mine + 1] or others[i % #others + 1]
      if i % 3 == 0 then return mc:set(k, "new") end
      local v, e = mc:get(k)
      if e == memcached.ERR_CACHE_MISS then return true end
      return v ~= nil, e
    end)
    assert.same({}, fails)
    assert.is_true(n > 50)
    assert.is_true(worst < BOUND, ("a call took %.3f s"):format(worst))
    assert.is_false(server_info(mc, b.addr).alive)
    -- a stopped memcached's kernel still completes the handshake: its
    -- probes connect and then get no answer to their NOOP
    assert.matches(how == "kill9" and "refused" or "probe: no answer",
                   server_info(mc, b.addr).last_error)

    if how == "kill9" then b.restart() else b.sigcont() end
    -- within a retry period or two b answers a probe and takes its keys
    local back
    for _ = 1, 100 do
      H.sleep(RETRY / 2)
      assert.truthy(mc:set(mine[2], "back"))
      if holds(b.addr, mine[2], "back") then back = true break end
    end
    assert.is_true(back)
    assert.is_true(server_info(mc, b.addr).alive)
    assert.truthy(mc:set(mine[3], "again"))
    assert.is_true(holds(b.addr, mine[3], "again"))
    assert.same({ b.addr .. " down", b.addr .. " up" }, events)
    mc:close()
  end

  it("refused (kill -9): no call fails, none waits; it gets its keys back", function()
    eject_case("kill9")
  end)

  it("stopped (SIGSTOP): no call fails, none waits past the probe bound; it gets its keys back after SIGCONT", function()
    eject_case("sigstop")
  end)

  it("that accepts and never answers (silent): no call fails or waits", function()
    local a = H.start_memcached()
    local s = H.start_fault("silent")
    local mc = client { a.addr, s.addr }
    local mine, others = split_keys(mc, s.addr, 10)
    local _, err = mc:get(mine[1])
    assert.equal(memcached.ERR_TIMEOUT, err)
    local _, fails, worst = hammer(0.4, function(i)
      local k = (i % 2 == 0) and mine[i % #mine + 1] or others[i % #others + 1]
      return mc:set(k, "v")
    end)
    assert.same({}, fails)
    assert.is_true(worst < BOUND, ("a call took %.3f s"):format(worst))
    mc:close()
  end)

  it("whose connects never complete (a black hole): no call fails or waits", function()
    local a = H.start_memcached()
    local hole = H.start_blackhole()
    local mc = client { a.addr, hole.addr }
    local mine, others = split_keys(mc, hole.addr, 10)
    local _, err, detail = mc:get(mine[1])
    assert.equal(memcached.ERR_TIMEOUT, err)
    assert.matches("connect timed out", detail)
    local _, fails, worst = hammer(0.4, function(i)
      local k = (i % 2 == 0) and mine[i % #mine + 1] or others[i % #others + 1]
      return mc:set(k, "v")
    end)
    assert.same({}, fails)
    assert.is_true(worst < BOUND, ("a call took %.3f s"):format(worst))
    assert.matches("probe: connect timed out", server_info(mc, hole.addr).last_error)
    mc:close()
    hole.stop()
  end)

  it("with eject = false: its keys fail fast with ERR_SERVER_DEAD, never wait", function()
    local a, b = H.start_memcached(), H.start_memcached()
    local mc = client({ a.addr, b.addr }, { eject = false })
    local mine, others = split_keys(mc, b.addr, 10)
    b.sigstop()
    local _, err = mc:get(mine[1])
    assert.equal(memcached.ERR_TIMEOUT, err)
    local wrong = {}
    local _, _, worst = hammer(0.4, function(i)
      local k = (i % 2 == 0) and mine[i % #mine + 1] or others[i % #others + 1]
      local ok, e = mc:set(k, "v")
      if (i % 2 == 0) ~= (e == memcached.ERR_SERVER_DEAD) then
        wrong[#wrong + 1] = k .. ": " .. tostring(e)
      end
      return ok, e
    end)
    assert.same({}, wrong)
    assert.is_true(worst < BOUND, ("a call took %.3f s"):format(worst))
    b.sigcont()
    local back
    for _ = 1, 100 do
      H.sleep(RETRY / 2)
      if mc:set(mine[2], "back") then back = true break end
    end
    assert.is_true(back)
    assert.is_true(holds(b.addr, mine[2], "back"))
    mc:close()
  end)

  it("get_multi: every key comes back and no batch waits while one of two is stopped", function()
    local a, b = H.start_memcached(), H.start_memcached()
    local mc = client { a.addr, b.addr }
    local mine, others = split_keys(mc, b.addr, 25)
    local keys = {}
    for _, k in ipairs(mine) do keys[#keys + 1] = k end
    for _, k in ipairs(others) do keys[#keys + 1] = k end
    b.sigstop()
    local _, err = mc:get(mine[1])
    assert.equal(memcached.ERR_TIMEOUT, err)
    -- b's keys now live on a
    for _, k in ipairs(keys) do assert.truthy(mc:set(k, "v:" .. k)) end
    local _, fails, worst = hammer(0.5, function()
      local vals, e = mc:get_multi(keys)
      if e then return nil, e end
      for _, k in ipairs(keys) do
        if vals[k] ~= "v:" .. k then return nil, "missing " .. k end
      end
      return true
    end)
    assert.same({}, fails)
    assert.is_true(worst < BOUND, ("a get_multi took %.3f s"):format(worst))
    b.sigcont()
    local back
    for _ = 1, 100 do
      H.sleep(RETRY / 2)
      mc:get_multi(keys)
      if server_info(mc, b.addr).alive then back = true break end
    end
    assert.is_true(back)
    assert.truthy(mc:set(mine[2], "back"))
    assert.is_true(holds(b.addr, mine[2], "back"))
    mc:close()
  end)

  it("probe_timeout is an option (0.001..3600)", function()
    assert.has_error(function() memcached.new { servers = { "127.0.0.1:1" }, probe_timeout = 0 } end)
    assert.truthy(memcached.new { servers = { "127.0.0.1:1" }, probe_timeout = 0.005 })
  end)
end)
