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

describe("a server killed (-9) and restarted at once on the same port", function()
  local srv, other
  before_each(function()
    srv = H.start_memcached()
    other = H.start_memcached()
  end)
  after_each(function()
    srv.stop()
    other.stop()
  end)

  -- failure_limit = 1: one counted failure would mark the server dead
  local function client(servers)
    local mc = assert(memcached.new { servers = servers, failure_limit = 1, retry_timeout = 30,
                                      timeout = 0.5 })
    local events = {}
    mc:set_server_error_callback(function(addr, reason, state)
      events[#events + 1] = addr .. " " .. state .. ": " .. reason
    end)
    return mc, events
  end

  local function healthy(mc, events)
    for _, info in ipairs(mc:servers()) do
      assert.is_true(info.alive, info.addr .. " marked dead: " .. tostring(info.last_error))
      assert.are.equal(0, info.failures, info.last_error)
    end
    assert.are.same({}, events)
  end

  -- Each case runs on a pooled connection younger than a second (no
  -- staleness check on the way out of the pool) whose server was restarted:
  -- the data is gone, the connection is closed, the call must not notice.
  local cases = {
    { "get", function(mc) return mc:get("k") end, nil, memcached.ERR_CACHE_MISS },
    { "get_and_touch", function(mc) return mc:get_and_touch("k", 100) end, nil, memcached.ERR_CACHE_MISS },
    { "touch", function(mc) return mc:touch("k", 100) end, nil, memcached.ERR_CACHE_MISS },
    { "set", function(mc) return H.mtype(mc:set("k", "v2")) end, "integer" },
    { "set_raw_data", function(mc) return H.mtype(mc:set_raw_data("k", "v2")) end, "integer" },
    -- not safe to send twice: a staleness check before reuse instead
    { "add", function(mc) return H.mtype(mc:add("k", "v2")) end, "integer" },
    { "increment", function(mc) return mc:increment("n", 1) end, nil, memcached.ERR_CACHE_MISS },
    { "delete", function(mc) return mc:delete("k") end, nil, memcached.ERR_CACHE_MISS },
    { "append", function(mc) return mc:append("k", "x") end, nil, memcached.ERR_NOT_STORED },
    { "compare_and_swap", function(mc) return mc:compare_and_swap("k", "v2", 12345) end, nil,
      memcached.ERR_NOT_STORED },
    { "stats", function(mc) return type((mc:stats() or {})[srv.addr]) end, "table" },
    -- more than the socket takes at once: the send itself meets the reset
    { "set of 900 KB", function(mc) return H.mtype(mc:set_raw_data("k", string.rep("v", 900000))) end,
      "integer" },
  }
  for _, case in ipairs(cases) do
    local name, call, want, want_err = case[1], case[2], case[3], case[4]
    it(name .. " succeeds, without a failure or a callback (failure_limit = 1)", function()
      local mc, events = client { srv.addr }
      assert(mc:set("k", "v1"))
      assert(mc:set_raw_data("n", "1"))
      assert.are.equal(1, mc:servers()[1].connections)
      srv.restart()
      local v, err, detail = call(mc)
      assert.are.equal(want, v, detail)
      assert.are.equal(want_err, err, detail)
      healthy(mc, events)
      -- and the client goes on normally
      assert(mc:set("k", "v3"))
      assert.are.equal("v3", (mc:get("k")))
      mc:close()
    end)
  end

  local batch_steps = {
    { "get_multi", function(mc, keys)
      local got, err, failed = mc:get_multi(keys)
      assert.are.same({}, got)
      assert.is_nil(err, failed and next(failed))
    end },
    { "set_multi", function(mc, keys, items)
      local res, first = mc:set_multi(items)
      assert.is_nil(first)
      for _, k in ipairs(keys) do assert.is_true(res[k]) end
      local got, n = mc:get_multi(keys), 0
      for k, v in pairs(got) do assert.are.equal(items[k], v); n = n + 1 end
      assert.are.equal(#keys, n)
    end },
    { "delete_multi", function(mc, keys)
      local res, first = mc:delete_multi(keys)
      assert.are.equal(memcached.ERR_CACHE_MISS, first) -- the restart lost them
      for _, k in ipairs(keys) do assert.are.equal(memcached.ERR_CACHE_MISS, res[k]) end
    end },
    { "ping", function(mc) assert.is_true(mc:ping()) end },
    -- 16 MB: still being written when the reset comes, and written again
    -- on the fresh connections from the poll loop
    { "set_multi of 16 MB", function(mc)
      local big = {}
      for i = 1, 40 do big["big" .. i] = string.rep(string.char(64 + i % 26), 400000) end
      local res, first = mc:set_multi(big)
      assert.is_nil(first)
      for k in pairs(big) do assert.is_true(res[k]) end
      local got = mc:get_multi { "big1", "big40" }
      assert.are.equal(big.big1, got.big1)
      assert.are.equal(big.big40, got.big40)
    end },
  }
  for _, step in ipairs(batch_steps) do
    it(step[1] .. " over two restarted servers succeeds, without a failure or a callback", function()
      local mc, events = client { srv.addr, other.addr }
      local keys, items = {}, {}
      for i = 1, 20 do keys[i] = "m" .. i; items[keys[i]] = i end
      local _, first = mc:set_multi(items)
      assert.is_nil(first)
      assert.is_true(mc:ping()) -- both connections warm and pooled
      srv.restart()
      other.restart()
      step[2](mc, keys, items)
      healthy(mc, events)
      mc:close()
    end)
  end

  it("still counts a failure when the fresh connection fails too", function()
    local mc, events = client { srv.addr }
    assert(mc:set("k", "v1"))
    srv.kill9()
    local v, err = mc:get("k")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_CONNECTION_REFUSED, err)
    assert.is_false(mc:servers()[1].alive)
    assert.are.equal(1, #events)
    mc:close()
  end)

  it("resends a get, never an add, when a pooled connection closes unanswered", function()
    -- the fault server answers a connection's first read, then closes it
    -- when more arrives: as if the server took the request and went away
    local f = H.start_fault("once")
    local mc, events = client { f.addr }
    assert.are.equal("a", (mc:get("a")))
    local v, err = mc:get("b") -- reused, closed unanswered, sent again
    assert.are.equal("b", v, err)
    healthy(mc, events)
    assert.are.equal("c", (mc:get("c")))
    local ok, aerr = mc:add("d", "v") -- reused, closed unanswered: may have been applied
    assert.is_nil(ok)
    assert.are.equal(memcached.ERR_CONNECTION_CLOSED, aerr)
    assert.is_false(mc:servers()[1].alive) -- that one counts
    mc:close()
    f.stop()
  end)
end)
