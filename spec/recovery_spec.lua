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
