-- Clusters: pools, failover, health, the error callback, and a soak under
-- faults. Real memcached processes, killed and stopped for real.
local H = require "spec.helper"
local memcached = H.memcached

local function stat(mc, addr, name)
  local st = assert(mc:stats())
  return tonumber(st[addr][name])
end

-- A key that the client places on the given server.
local function key_on(mc, addr, prefix)
  for i = 1, 100000 do
    local k = (prefix or "key") .. i
    if mc:pick_server(k) == addr then return k end
  end
  error("no key for " .. addr)
end

describe("pools", function()
  local srv
  setup(function() srv = H.start_memcached() end)
  teardown(function() srv.stop() end)

  it("open connections lazily and reuse them", function()
    local mc = memcached.new(srv.addr)
    assert.are.equal(0, mc:servers()[1].connections)
    local probe = memcached.new(srv.addr)
    local before = stat(probe, srv.addr, "total_connections")
    for i = 1, 200 do assert(mc:set("p" .. i, i)) end
    for i = 1, 200 do assert.are.equal(i, (mc:get("p" .. i))) end
    assert.are.equal(1, mc:servers()[1].connections)
    -- only this client's one connection (and none of the probe's) was opened
    assert.are.equal(before + 1, stat(probe, srv.addr, "total_connections"))
    probe:close()
    mc:close()
  end)

  it("keeps at most max_idle idle connections (0: none kept)", function()
    local mc = memcached.new { servers = { srv.addr }, max_idle = 0 }
    local probe = memcached.new(srv.addr)
    local before = stat(probe, srv.addr, "total_connections")
    for i = 1, 5 do assert(mc:set("q" .. i, i)) end
    assert.are.equal(0, mc:servers()[1].connections)
    -- five operations, five connections (the probe's stats call adds one)
    assert.are.equal(before + 5, stat(probe, srv.addr, "total_connections"))
    probe:close()
    mc:close()
  end)

  it("closes, never pools, a connection whose reply came late", function()
    local f = H.start_fault("late_once", "0.4")
    local mc = memcached.new { servers = { f.addr }, timeout = 0.15, failure_limit = 100 }
    local v, err = mc:get("first")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_TIMEOUT, err)
    H.sleep(0.5) -- the late reply to "first" is now on the wire of the old connection
    for i = 1, 20 do
      local key = "second" .. i
      local got, e = mc:get(key)
      assert.are.equal(key, got, e)
    end
    mc:close()
    f.stop()
  end)
end)

describe("failover", function()
  local s = {}
  before_each(function()
    for i = 1, 3 do s[i] = H.start_memcached() end
  end)
  after_each(function()
    for i = 1, 3 do s[i].stop() end
  end)

  local function servers() return { s[1].addr, s[2].addr, s[3].addr } end

  it("ejects a killed server after failure_limit failures and calls the callback once per change", function()
    local events = {}
    local mc = memcached.new { servers = servers(), failure_limit = 2, retry_timeout = 0.5, timeout = 0.2 }
    mc:set_server_error_callback(function(addr, reason, state)
      events[#events + 1] = { addr = addr, reason = reason, state = state }
    end)
    local k = key_on(mc, s[2].addr)
    assert(mc:set(k, "v1"))
    s[2].kill9()
    local t0 = H.now()
    local v1, e1 = mc:set(k, "v2")
    local v2, e2 = mc:set(k, "v2")
    assert.is_nil(v1); assert.is_nil(v2)
    assert.truthy(e1 == memcached.ERR_CONNECTION_CLOSED or e1 == memcached.ERR_CONNECTION_REFUSED, e1)
    assert.truthy(e2 == memcached.ERR_CONNECTION_CLOSED or e2 == memcached.ERR_CONNECTION_REFUSED, e2)
    assert.are.equal(1, #events)
    assert.are.equal(s[2].addr, events[1].addr)
    assert.are.equal("down", events[1].state)
    assert.truthy(events[1].reason:find("refused") or events[1].reason:find("closed"), events[1].reason)
    -- ejected: the key now lives on another server
    assert.truthy(mc:set(k, "v3"))
    local elapsed = H.now() - t0
    print(string.format("\n  from kill -9 to the first ejected call: %.1f ms", elapsed * 1000))
    assert.are.equal("v3", (mc:get(k)))
    assert.is_false(mc:servers()[2].alive)
    -- come back: after retry_timeout one call probes, succeeds, keys return
    s[2].restart()
    H.sleep(0.6)
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k))) -- the probe, on the fresh server
    assert.are.equal(2, #events)
    assert.are.equal("up", events[2].state)
    assert.is_true(mc:servers()[2].alive)
    assert(mc:set(k, "back"))
    local direct = memcached.new(s[2].addr)
    assert.are.equal("back", (direct:get(k)))
    direct:close()
    mc:close()
  end)

  it("fails fast with ERR_SERVER_DEAD when eject is off", function()
    local mc = memcached.new { servers = servers(), failure_limit = 1, retry_timeout = 30, eject = false }
    local k = key_on(mc, s[3].addr)
    local other = key_on(mc, s[1].addr)
    s[3].kill9()
    assert.is_nil((mc:get(k)))
    local dt, v, err = H.timed(function() return mc:get(k) end)
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_SERVER_DEAD, err)
    assert.is_true(dt < 0.01)
    assert(mc:set(other, 1)) -- the others still serve
  end)

  it("survives a callback that raises", function()
    local calls = 0
    local mc = memcached.new { servers = servers(), failure_limit = 1 }
    mc:set_server_error_callback(function() calls = calls + 1; error("callback failure") end)
    local k = key_on(mc, s[1].addr)
    s[1].kill9()
    assert.is_nil((mc:get(k)))
    assert.are.equal(1, calls)
    assert(mc:set(k, "moved"))
    assert.are.equal("moved", (mc:get(k)))
  end)

  it("times out on a stopped server (SIGSTOP) and serves again after SIGCONT", function()
    local mc = memcached.new { servers = servers(), failure_limit = 2, retry_timeout = 0.3, timeout = 0.1 }
    local k = key_on(mc, s[1].addr)
    assert(mc:set(k, "before"))
    s[1].sigstop()
    local dt, v, err = H.timed(function() return mc:get(k) end)
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_TIMEOUT, err)
    assert.is_true(dt < 0.1 + 0.3, dt)
    assert.is_nil((mc:get(k)))
    local t0 = H.now()
    assert(mc:set(k, "ejected")) -- ejected to another server now
    print(string.format("\n  SIGSTOP: two timeouts (%.0f ms each), then the first ejected call took %.1f ms",
      dt * 1000, (H.now() - t0) * 1000))
    s[1].sigcont()
    H.sleep(0.4)
    assert.are.equal("before", (mc:get(k))) -- the probe finds the old item again
    assert.is_true(mc:servers()[1].alive)
  end)

  it("get_multi returns what healthy servers hold and names the failure", function()
    local mc = memcached.new { servers = servers(), failure_limit = 100, timeout = 0.2 }
    local keys = {}
    for i = 1, 60 do keys[i] = "m" .. i; assert(mc:set(keys[i], keys[i] .. "!")) end
    s[2].kill9()
    local got, err, failed = mc:get_multi(keys)
    assert.truthy(err == memcached.ERR_CONNECTION_CLOSED or err == memcached.ERR_CONNECTION_REFUSED, err)
    local nfailed = 0
    for _, k in ipairs(keys) do
      if mc:pick_server(k) == s[2].addr then
        assert.is_nil(got[k]); assert.truthy(failed[k]); nfailed = nfailed + 1
      else
        assert.are.equal(k .. "!", got[k]); assert.is_nil(failed[k])
      end
    end
    assert.is_true(nfailed > 0)
  end)

  it("ping says which server failed", function()
    local mc = memcached.new { servers = servers(), failure_limit = 100 }
    assert.is_true(mc:ping())
    s[3].kill9()
    local ok, err, failed = mc:ping()
    assert.is_nil(ok)
    assert.truthy(err)
    assert.truthy(failed[s[3].addr])
    assert.is_nil(failed[s[1].addr])
  end)

  it("changes servers at run time; set_servers with a bad address changes nothing", function()
    local mc = memcached.new(s[1].addr)
    assert.is_true(mc:add_server(s[2].addr))
    assert.is_true(mc:set_servers(s[1].addr, s[2].addr, s[3].addr))
    local before = mc:pick_server("some-key")
    local ok, err = mc:set_servers(s[1].addr, "not an address:xx")
    assert.is_nil(ok)
    assert.are.equal(memcached.ERR_BAD_SERVER, err)
    assert.are.equal(3, #mc:servers())
    assert.are.equal(before, mc:pick_server("some-key"))
  end)
end)

describe("hanging connects", function()
  local socket = require "socket"
  -- A listener whose accept queue is full: connects to it hang (SYNs are
  -- dropped) until the connect timeout.
  local function hanging()
    local port = H.free_port()
    local l = assert(socket.bind("127.0.0.1", port, 0))
    local fill = {}
    for i = 1, 8 do
      local c = socket.tcp()
      c:settimeout(0)
      c:connect("127.0.0.1", port)
      fill[i] = c
    end
    return { addr = "127.0.0.1:" .. port, close = function()
      for _, c in ipairs(fill) do c:close() end
      l:close()
    end }
  end

  it("cost one connect timeout for all servers of a batch, and never the live server's health", function()
    local hs = { hanging(), hanging(), hanging() }
    local live = H.start_memcached()
    local mc = memcached.new { servers = { hs[1].addr, hs[2].addr, hs[3].addr, live.addr },
                               timeout = 0.2, failure_limit = 2 }
    local keys = {}
    for i = 1, 40 do keys[i] = "hc" .. i end
    local dt, got, err, failed = H.timed(function() return mc:get_multi(keys) end)
    assert.is_true(dt < 0.2 + 0.15, dt) -- one connect timeout, not three
    assert.are.equal(memcached.ERR_TIMEOUT, err)
    assert.are.same({}, got) -- the live server's keys are misses
    local on_live = 0
    for _, k in ipairs(keys) do
      if mc:pick_server(k) == live.addr then
        on_live = on_live + 1
        assert.is_nil(failed[k]) -- a miss on the live server, not a failure
      else
        assert.are.equal(memcached.ERR_TIMEOUT, failed[k])
      end
    end
    assert.is_true(on_live > 0)
    for _, info in ipairs(mc:servers()) do
      -- each hanging server failed once; the live one not at all
      assert.are.equal(info.addr == live.addr and 0 or 1, info.failures, info.addr)
    end
    for _, h in ipairs(hs) do h.close() end
    live.stop()
  end)
end)

describe("soak", function()
  local s = {}
  setup(function() for i = 1, 3 do s[i] = H.start_memcached() end end)
  teardown(function() for i = 1, 3 do s[i].stop() end end)

  local documented = {}
  for k, v in pairs(memcached) do
    if type(k) == "string" and k:match("^ERR_") then documented[v] = true end
  end

  it("never returns a value that belongs to another key, under kill -9, SIGSTOP and restarts", function()
    local total = tonumber(os.getenv("SOAK_OPS")) or 100000
    local mc = memcached.new { servers = { s[1].addr, s[2].addr, s[3].addr },
                               timeout = 0.05, failure_limit = 2, retry_timeout = 0.2 }
    local rnd = 12345
    local function rand(n) rnd = (rnd * 1103515245 + 12345) % 2147483648; return rnd % n + 1 end
    local mismatches, failures, hits, faults = 0, 0, 0, 0
    local errs = {}
    local function check_failure(err)
      failures = failures + 1
      errs[err] = (errs[err] or 0) + 1
      assert(documented[err], "undocumented error: " .. tostring(err))
    end
    local t0 = H.now()
    for n = 1, total do
      -- a fault every 10,000 operations, repaired 3,000 later
      local phase = n % 10000
      if phase == 1 then
        local victim = s[math.floor(n / 10000) % 3 + 1]
        faults = faults + 1
        if math.floor(n / 10000) % 2 == 0 then victim.kill9() else victim.sigstop() end
      elseif phase == 3001 then
        for i = 1, 3 do
          if not s[i].pid then s[i].restart() else s[i].sigcont() end
        end
      end
      local key = "soak:" .. rand(5000)
      local op = rand(10)
      if op <= 5 then
        local v, err = mc:get(key)
        if v ~= nil then
          hits = hits + 1
          if v:sub(1, #key + 1) ~= key .. "=" then mismatches = mismatches + 1 end
        elseif err ~= memcached.ERR_CACHE_MISS then
          check_failure(err)
        end
      elseif op <= 6 then
        local ks = { key, "soak:" .. rand(5000), "soak:" .. rand(5000) }
        local got, err = mc:get_multi(ks)
        for k, v in pairs(got) do
          hits = hits + 1
          if v:sub(1, #k + 1) ~= k .. "=" then mismatches = mismatches + 1 end
        end
        if err then check_failure(err) end
      elseif op <= 9 then
        local ok, err = mc:set_raw_data(key, key .. "=" .. n)
        if not ok then check_failure(err) end
      else
        local ok, err = mc:delete(key)
        if not ok and err ~= memcached.ERR_CACHE_MISS then check_failure(err) end
      end
    end
    local elapsed = H.now() - t0
    for i = 1, 3 do if not s[i].pid then s[i].restart() else s[i].sigcont() end end
    local summary = {}
    for e, c in pairs(errs) do summary[#summary + 1] = e .. "=" .. c end
    table.sort(summary)
    print(string.format("\n  soak: %d ops in %.1f s, %d faults, %d hits, %d failures (%s), %d mismatches",
      total, elapsed, faults, hits, failures, table.concat(summary, ", "), mismatches))
    assert.are.equal(0, mismatches)
    assert.is_true(hits > 0)
    -- all servers back: after the retry interval everything serves again
    H.sleep(0.3)
    for i = 1, 300 do
      local key = "after:" .. i
      local ok = mc:set(key, i)
      if not ok then H.sleep(0.25); ok = mc:set(key, i) end
    end
    for i = 1, 300 do
      assert.is_true(mc:set("final:" .. i, i) ~= nil)
      assert.are.equal(i, (mc:get("final:" .. i)))
    end
    for _, info in ipairs(mc:servers()) do assert.is_true(info.alive) end
  end)
end)
