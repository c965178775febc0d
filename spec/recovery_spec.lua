-- What a connection carries back into the pool, and how the client recovers
-- from what happened to it while it was there: a large reply's buffers, a
-- server restarted under it, a server that demands authentication. Real
-- memcached servers throughout.
local H = require "spec.helper"
local memcached = H.memcached

-- Under ASan freed memory waits in a quarantine instead of leaving RSS, so
-- an RSS drop cannot be seen there; the accessor spec runs in both builds.
local asan = (os.getenv("LD_PRELOAD") or ""):find("libasan", 1, true) ~= nil

local page = tonumber(H.sh("getconf PAGESIZE")) or 4096

local function rss()
  local f = assert(io.open("/proc/self/statm"))
  local resident = f:read("*l"):match("^%d+%s+(%d+)")
  f:close()
  return tonumber(resident) * page
end

local function full_gc()
  collectgarbage("collect")
  collectgarbage("collect")
end

describe("a pooled connection after a large reply", function()
  local srv
  local BIG = 60 * 1024 * 1024
  local SMALL = 128 * 1024 -- two buffers of at most 64 KiB each

  setup(function() srv = H.start_memcached { args = "-I 64m -m 512" } end)
  teardown(function() srv.stop() end)

  -- one 60 MB set and get, then 1,000 small gets on the same connection
  local function big_then_small(mc)
    assert(mc:set_raw_data("big", string.rep("x", BIG)))
    full_gc()
    local v, err = mc:get("big")
    assert.are.equal(BIG, v and #v, err)
    v = nil
    assert(mc:set("small", "s"))
    for _ = 1, 1000 do assert.are.equal("s", (mc:get("small"))) end
    full_gc()
  end

  it("holds no more than small buffers (C accessor, every build)", function()
    local mc = assert(memcached.new { servers = { srv.addr }, timeout = 5 })
    big_then_small(mc)
    assert.are.equal(1, mc:servers()[1].connections)
    local held = memcached._test_idle_buffer_bytes(mc)
    assert.is_true(held > 0, "the pooled connection is counted")
    assert.is_true(held <= SMALL, "idle connection holds " .. held .. " bytes")
    -- also after a large request alone (the output buffer)
    assert(mc:set_raw_data("big2", string.rep("y", BIG)))
    held = memcached._test_idle_buffer_bytes(mc)
    assert.is_true(held <= SMALL, "after a large set: " .. held .. " bytes")
    -- and after a batch that fetched the large value
    local got = mc:get_multi { "big", "small" }
    assert.are.equal(BIG, #got.big)
    got = nil
    held = memcached._test_idle_buffer_bytes(mc)
    assert.is_true(held <= SMALL, "after get_multi: " .. held .. " bytes")
    mc:close()
  end)

  local rss_it = asan and pending or it
  rss_it("gives the memory back to the system (RSS; plain build only: ASan quarantines freed memory)", function()
    local mc = assert(memcached.new { servers = { srv.addr }, timeout = 5 })
    assert(mc:set("small", "s"))
    assert.are.equal("s", (mc:get("small")))
    full_gc()
    local before = rss()
    big_then_small(mc)
    local grown = rss() - before
    print(string.format("\n  RSS after a 60 MB get, 1,000 small gets and a collection: %+.1f MB",
      grown / 1048576))
    assert.is_true(grown < 16 * 1048576, "RSS grew by " .. grown .. " bytes")
    mc:close()
  end)
end)

describe("a server that demands authentication (memcached -S), without credentials", function()
  local sasl, plain
  setup(function()
    sasl = H.start_memcached_sasl()
    plain = H.start_memcached()
  end)
  teardown(function()
    sasl.stop()
    plain.stop()
  end)

  -- a client with failure_limit = 1 whose error callback records events
  local function client(servers)
    local mc = assert(memcached.new { servers = servers, failure_limit = 1, retry_timeout = 30 })
    local events = {}
    mc:set_server_error_callback(function(addr, reason, state)
      events[#events + 1] = addr .. " " .. state .. ": " .. reason
    end)
    return mc, events
  end

  local function healthy(mc, addr, events)
    for _, info in ipairs(mc:servers()) do
      if info.addr == addr then
        assert.is_true(info.alive, addr .. " marked dead")
        assert.are.equal(0, info.failures)
        assert.are.equal(0, info.connections) -- refused connections are closed
      end
    end
    assert.are.same({}, events)
  end

  local function key_on(mc, addr, prefix)
    for i = 1, 100000 do
      local k = (prefix or "key") .. i
      if mc:pick_server(k) == addr then return k end
    end
    error("no key for " .. addr)
  end

  it("gives ERR_AUTH on every call and the server stays alive", function()
    local mc, events = client { sasl.addr }
    for _ = 1, 4 do
      local v, err, detail = mc:get("k")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_AUTH, err, detail)
      assert.are.equal(memcached.ERR_AUTH, select(2, mc:set("k", "v")))
      assert.are.equal(memcached.ERR_AUTH, select(2, mc:touch("k", 10)))
      assert.are.equal(memcached.ERR_AUTH, select(2, mc:add("k", "v")))
      assert.are.equal(memcached.ERR_AUTH, select(2, mc:increment("n", 1)))
      assert.are.equal(memcached.ERR_AUTH, select(2, mc:delete("k")))
    end
    healthy(mc, sasl.addr, events)
    mc:close()
  end)

  it("gives ERR_AUTH for every key of get_multi, set_multi, delete_multi, and in ping and stats", function()
    local mc, events = client { sasl.addr }
    for _ = 1, 3 do
      local got, err, failed = mc:get_multi { "a", "b", "c" }
      assert.are.same({}, got)
      assert.are.equal(memcached.ERR_AUTH, err)
      assert.are.same({ a = memcached.ERR_AUTH, b = memcached.ERR_AUTH, c = memcached.ERR_AUTH }, failed)
      local res, first = mc:set_multi { a = 1, b = "two", c = { 3 } }
      assert.are.equal(memcached.ERR_AUTH, first)
      assert.are.same({ a = memcached.ERR_AUTH, b = memcached.ERR_AUTH, c = memcached.ERR_AUTH }, res)
      res, first = mc:delete_multi { "a", "b" }
      assert.are.equal(memcached.ERR_AUTH, first)
      assert.are.same({ a = memcached.ERR_AUTH, b = memcached.ERR_AUTH }, res)
      local ok, perr, per_server = mc:ping()
      assert.is_nil(ok)
      assert.are.equal(memcached.ERR_AUTH, perr)
      assert.truthy(per_server[sasl.addr])
      -- stats with no server answering is ERR_NO_STATS; its detail says why
      local st, serr, sdetail = mc:stats()
      assert.is_nil(st)
      assert.are.equal(memcached.ERR_NO_STATS, serr)
      assert.truthy(sdetail:find("authentication", 1, true), sdetail)
    end
    healthy(mc, sasl.addr, events)
    mc:close()
  end)

  it("next to a healthy server: its keys fail with ERR_AUTH, the other server's are served", function()
    local mc, events = client { sasl.addr, plain.addr }
    local ks, kp = key_on(mc, sasl.addr, "s"), key_on(mc, plain.addr, "p")
    assert(mc:set(kp, "plain"))
    for _ = 1, 3 do
      local got, err, failed = mc:get_multi { ks, kp }
      assert.are.same({ [kp] = "plain" }, got)
      assert.are.equal(memcached.ERR_AUTH, err)
      assert.are.same({ [ks] = memcached.ERR_AUTH }, failed)
      local st, serr = mc:stats()
      assert.truthy(st[plain.addr])
      assert.is_nil(st[sasl.addr])
      assert.are.equal(memcached.ERR_AUTH, serr)
      assert.are.equal(memcached.ERR_AUTH, select(2, mc:get(ks)))
      assert.are.equal("plain", (mc:get(kp)))
    end
    healthy(mc, sasl.addr, events)
    assert.is_true(mc:servers()[2].alive)
    mc:close()
  end)
end)
