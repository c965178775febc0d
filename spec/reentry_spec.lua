-- Lua code running inside a call (a custom selector, a __gc finalizer) must
-- never free or overwrite what the outer call is using; and the defects a
-- review found stay fixed.
local H = require "spec.helper"
local memcached = H.memcached

describe("re-entrant calls", function()
  local srv
  setup(function() srv = H.start_memcached() end)
  teardown(function() srv.kill9() end)

  it("a selector that closes the client: the call finishes, then the client is closed", function()
    local mc
    mc = memcached.new_from_selector(function() mc:close(); return srv.addr end)
    local v, err = mc:get("k")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_CACHE_MISS, err)
    assert.are.equal(memcached.ERR_CLIENT_CLOSED, select(2, mc:get("k")))
  end)

  it("a selector that calls the client is served, and the outer call is unharmed", function()
    local mc, inner
    local depth = 0
    mc = memcached.new_from_selector(function(key)
      if depth == 0 then -- the inner call picks through this selector too
        depth = 1
        inner = { mc:get_multi { "a", "x" .. key } }
        depth = 0
      end
      return srv.addr
    end)
    local res = assert(memcached.new(srv.addr))
    assert(res:set_multi { a = "A", b = "B" })
    local got = mc:get_multi { "a", "b" }
    assert.are.equal("A", got.a)
    assert.are.equal("B", got.b)
    assert.are.same({ a = "A" }, inner[1])
    assert.is_nil(inner[2])
    assert.are.equal("A", (mc:get("a"))) -- and the client works afterwards
  end)

  it("finalizers that use the client during get_multi are served", function()
    local mc = assert(memcached.new(srv.addr))
    local items, keys = {}, {}
    for i = 1, 200 do keys[i] = "gk" .. i; items[keys[i]] = ("v"):rep(100) .. i end
    assert(mc:set_multi(items))
    local inner = {}
    H.gc_incremental(1, 100) -- a GC step at nearly every allocation
    for round = 1, 2 do
      for _ = 1, 100 do
        H.finalizer(function() inner[#inner + 1] = { mc:get("gk1") } end)
      end
      local got = mc:get_multi(keys)
      for i = 1, 200 do assert.are.equal(("v"):rep(100) .. i, got["gk" .. i]) end
    end
    H.gc_incremental()
    collectgarbage()
    assert.are.equal(200, #inner)
    for _, r in ipairs(inner) do
      assert.are.equal(("v"):rep(100) .. "1", r[1], tostring(r[2]))
      assert.are.equal("integer", H.mtype(r[2]))
    end
    assert.are.equal(("v"):rep(100) .. "1", (mc:get("gk1")))
  end)

  it("finalizers that call the client while get and set run are served, never confused", function()
    local mc = assert(memcached.new(srv.addr))
    for i = 1, 50 do assert(mc:set("fk" .. i, ("w"):rep(100) .. i)) end
    local inner, bad = 0, {}
    H.gc_incremental(1, 100) -- a GC step at nearly every allocation
    for round = 1, 150 do
      local j = round % 50 + 1
      H.finalizer(function()
        local v, err = mc:get("fk" .. j)
        if v ~= ("w"):rep(100) .. j then bad[#bad + 1] = "fk" .. j .. ": " .. tostring(v or err) end
        local ok, serr = mc:set("fk" .. j, ("w"):rep(100) .. j)
        if not ok then bad[#bad + 1] = tostring(serr) end
        local t, terr = mc:get_multi { "fk" .. j }
        if not t or t["fk" .. j] ~= ("w"):rep(100) .. j then bad[#bad + 1] = "multi " .. tostring(terr) end
        inner = inner + 1
      end)
      local i = (round * 7) % 50 + 1
      local v, err = mc:get("fk" .. i)
      assert.are.equal(("w"):rep(100) .. i, v, err)
      assert.is_truthy(mc:set("fk" .. i, ("w"):rep(100) .. i))
      assert.is_truthy(mc:set("tk" .. i, { i, tostring(i), { i } }))
      local t = mc:get("tk" .. i)
      assert.are.same({ i, tostring(i), { i } }, t)
    end
    H.gc_incremental()
    collectgarbage()
    assert.are.same({}, bad)
    assert.are.equal(150, inner)
    assert.are.equal(("w"):rep(100) .. "1", (mc:get("fk1")))
  end)

  it("a finalizer that closes the client while get hands back its value: the value is whole, then the client is closed", function()
    local values = 0
    H.gc_incremental(1, 100) -- a GC step at nearly every allocation
    for _ = 1, 15 do
      local mc = assert(memcached.new(srv.addr))
      assert(mc:set("ck", ("c"):rep(200)))
      for _ = 1, 20 do H.finalizer(function() mc:close() end) end
      for _ = 1, 20 do
        local v, err = mc:get("ck")
        if v ~= nil then
          assert.are.equal(("c"):rep(200), v)
          values = values + 1
        else
          assert.are.equal(memcached.ERR_CLIENT_CLOSED, err)
        end
      end
      collectgarbage()
      assert.are.equal(memcached.ERR_CLIENT_CLOSED, select(2, mc:get("ck")))
    end
    H.gc_incremental()
    collectgarbage()
    assert.is_true(values > 0) -- some gets ran before their client closed
  end)

  it("a close asked for by a finalizer while get decodes a table happens when get returns", function()
    local t = {}
    for i = 1, 3000 do t[i] = { i, tostring(i) } end
    local values = 0
    H.gc_incremental(1, 100) -- a GC step at nearly every allocation
    for _ = 1, 30 do
      local mc = assert(memcached.new(srv.addr))
      assert(mc:set("tk", t))
      for _ = 1, 20 do H.finalizer(function() mc:close() end) end
      local v, err = mc:get("tk")
      if v ~= nil then
        assert.are.equal(3000, #v)
        assert.are.equal("3000", v[3000][2])
        values = values + 1
      else
        assert.are.equal(memcached.ERR_CLIENT_CLOSED, err)
      end
      collectgarbage() -- every finalizer has run: the client must be closed
      assert.are.equal(memcached.ERR_CLIENT_CLOSED, select(2, mc:get("tk")))
    end
    H.gc_incremental()
    collectgarbage()
    assert.is_true(values > 0)
  end)

  -- Run in a child Lua (a small heap, so the collector can run hard and
  -- fast); under make asan it inherits the sanitizer and the build.
  it("finalizers that rewrite the caller's tables during get_multi, delete_multi and set_multi free nothing the call uses", function()
    local out, ok = H.child_lua([=[
      local addr = ...
      local mc = assert(memcached.new(addr))
      local N = 300
      local function key(i) return ("K"):rep(60) .. i end
      local function val(i) return ("v"):rep(2000) .. i end
      gc_incremental(1, 1000)
      do -- a rewrite lands inside one of these calls (a review's reproducer)
        local items = {}
        for i = 1, N do items[key(i)] = val(i) end
        assert(mc:set_multi(items))
        local ks = {}
        for i = 1, N do ks[i] = key(i) end
        for _ = 1, 5 do finalizer(function()
          for i = 1, N do ks[i] = ("z"):rep(50) .. i end end) end
        for _ = 1, 200 do
          for k, v in pairs(mc:get_multi(ks)) do
            local i = tonumber(k:match("^K+(%d+)$"))
            assert(i and v == val(i), "get_multi " .. k)
          end
        end
      end
      for _ = 1, 40 do
        local items = {}
        for i = 1, N do items[key(i)] = val(i) end
        for _ = 1, 5 do finalizer(function()
          for k in pairs(items) do items[k] = ("w"):rep(50) end end) end
        local r = mc:set_multi(items)
        for i = 1, N do assert(r[key(i)] == true, "set_multi " .. i) end
        local ks = {}
        for i = 1, N do ks[i] = key(i) end
        for _ = 1, 5 do finalizer(function()
          for i = 1, N do ks[i] = ("z"):rep(50) .. i end end) end
        local n = 0
        for k, v in pairs(mc:get_multi(ks)) do
          local i = tonumber(k:match("^K+(%d+)$"))
          assert(i and (v == val(i) or v == ("w"):rep(50)), "get_multi " .. k)
          n = n + 1
        end
        assert(n == N or n == 0, "get_multi count " .. n)
        local dk = {}
        for i = 1, N do dk[i] = key(i) end
        for _ = 1, 5 do finalizer(function()
          for i = 1, N do dk[i] = ("y"):rep(50) .. i end end) end
        for k, v in pairs(mc:delete_multi(dk)) do
          assert(k:match("^K") and v == true or k:match("^y+%d+$") and v == memcached.ERR_CACHE_MISS,
            "delete_multi " .. k .. " -> " .. tostring(v))
        end
      end
      print("ok")
    ]=], srv.addr)
    assert.is_true(ok, out)
    assert.are.equal("ok\n", out)
  end)

  it("a finalizer that runs inside a call (forced by the selector) is served", function()
    local mc, inner
    local armed = true
    assert(memcached.new(srv.addr):set("x", "X"))
    mc = memcached.new_from_selector(function()
      if armed then
        armed = false
        H.finalizer(function() inner = { mc:get("x") } end)
        collectgarbage() -- runs that finalizer now, inside mc:get
      end
      return srv.addr
    end)
    local v, err = mc:get("k")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_CACHE_MISS, err)
    assert.are.equal("X", inner[1])
  end)

  it("a selector that replaces the server list while get_multi picks fails those keys cleanly", function()
    local other = H.start_memcached()
    local mc
    local n = 0
    mc = memcached.new_from_selector(function()
      n = n + 1
      if n == 2 then mc:set_servers(other.addr) end -- servers of the old list go
      return srv.addr
    end)
    assert(memcached.new(srv.addr):set_multi { p = "P", q = "Q", r = "R" })
    local got, err, failed = mc:get_multi { "p", "q", "r" }
    assert.are.same({}, got)
    assert.are.equal(memcached.ERR_NO_SERVERS, err)
    assert.are.same({ p = err, q = err, r = err }, failed)
    got = assert(mc:get_multi { "p", "q", "r" }) -- the next call is whole
    assert.are.same({ p = "P", q = "Q", r = "R" }, got)
    other.kill9()
  end)

  it("finalizers that replace the server list while calls hold connections free nothing in use", function()
    local a, b = H.start_memcached(), H.start_memcached()
    assert(memcached.new(a.addr):set("sk", ("s"):rep(300)))
    assert(memcached.new(b.addr):set("sk", ("s"):rep(300)))
    local mc = assert(memcached.new(a.addr))
    local flip = false
    H.gc_incremental(1, 100)
    for _ = 1, 300 do
      H.finalizer(function()
        flip = not flip
        mc:set_servers(flip and b.addr or a.addr)
      end)
      assert.are.equal(("s"):rep(300), (mc:get("sk")))
      local st = mc:stats()
      assert.truthy(st)
      assert.are.equal(("s"):rep(300), mc:get_multi({ "sk" }).sk)
    end
    H.gc_incremental()
    collectgarbage()
    mc:close()
    a.kill9(); b.kill9()
  end)

  -- to-be-closed variables are Lua 5.4's: the chunk is compiled there only
  if _VERSION == "Lua 5.4" then
    it("a to-be-closed client closed inside its own call closes after it", function()
      local mc
      local close_mc = assert(load("local mc = ... do local _ <close> = mc end"))
      mc = memcached.new_from_selector(function()
        close_mc(mc)
        return srv.addr
      end)
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("k")))
      assert.are.equal(memcached.ERR_CLIENT_CLOSED, select(2, mc:get("k")))
    end)
  end

  it("a selector object whose lookup raises is a failure of that call only", function()
    local broken = false
    local sel = setmetatable({}, { __index = function()
      if broken then error("no method") end
      return function() return srv.addr end
    end })
    local mc = memcached.new_from_selector(sel)
    broken = true
    local v, err, detail = mc:get("k")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_NO_SERVERS, err)
    assert.truthy(detail:find("no method", 1, true))
    assert.are.equal(memcached.ERR_NO_SERVERS, select(2, mc:get("k")))
  end)

  it("an argument error leaves the client whole", function()
    local mc = assert(memcached.new(srv.addr))
    assert.has_error(function() mc:get_multi { "a", 42 } end)
    assert.has_error(function() mc:set_multi { [1] = "v" } end)
    assert.has_error(function() mc:delete_multi { "a", {} } end)
    assert.truthy(mc:set("after", 1))
  end)

  it("the codec reader fills a caller's table without running its __newindex", function()
    local codec = memcached.codec
    local r = codec.reader()
    local called = false
    local t = setmetatable({}, { __newindex = function() called = true; r:reset() end })
    r:feed(H.pack_be(">BBHBBHI4I4I8", 0x81, 0, 0, 4, 0, 0, 4 + 5, 7, 1) .. "\0\0\0\0hello")
    local got = r:get(t)
    assert.are.equal(t, got)
    assert.are.equal("hello", rawget(t, "value"))
    assert.is_false(called)
  end)
end)

describe("review fixes", function()
  it("an error reply without a key in get_multi fails its keys, not the server", function()
    local f = H.start_fault("enomem")
    local events = 0
    local mc = memcached.new { servers = { f.addr }, failure_limit = 1 }
    mc:set_server_error_callback(function() events = events + 1 end)
    local got, err, failed = mc:get_multi { "k1", "k2" }
    assert.are.same({}, got)
    assert.are.equal(memcached.ERR_SERVER_ERROR, err)
    assert.are.equal(memcached.ERR_SERVER_ERROR, failed.k1)
    assert.are.equal(memcached.ERR_SERVER_ERROR, failed.k2)
    assert.is_true(mc:servers()[1].alive)
    assert.are.equal(0, events)
    f.stop()
  end)

  it("get_multi over a slow and a silent server ends by one timeout", function()
    local slow = H.start_fault("slow", "0.2")
    local silent = H.start_fault("silent")
    local map = { a = slow.addr, b = silent.addr }
    local mc = memcached.new_from_selector(function(k) return map[k] end,
      { io_timeout = 0.3, failure_limit = 100 })
    local dt, got, err, failed = H.timed(function() return mc:get_multi { "a", "b" } end)
    assert.are.equal("a", got.a)
    assert.are.equal(memcached.ERR_TIMEOUT, err)
    assert.are.equal(memcached.ERR_TIMEOUT, failed.b)
    assert.is_true(dt < 0.3 + 0.1, dt)
    slow.stop(); silent.stop()
  end)

  it("ping and flush wait for all servers at once: two silent servers cost one timeout", function()
    local a, b = H.start_fault("silent"), H.start_fault("silent")
    local mc = memcached.new { servers = { a.addr, b.addr }, timeout = 0.2, failure_limit = 100 }
    local dt, ok, err, failed = H.timed(function() return mc:ping() end)
    assert.is_nil(ok)
    assert.are.equal(memcached.ERR_TIMEOUT, err)
    assert.truthy(failed[a.addr] and failed[b.addr])
    assert.is_true(dt < 0.2 + 0.1, dt)
    dt = H.timed(function() return mc:flush_all() end)
    assert.is_true(dt < 0.2 + 0.1, dt)
    a.stop(); b.stop()
  end)

  it("pick_server does not use up a dead server's probe", function()
    local port = H.free_port()
    local addr = "127.0.0.1:" .. port
    local mc = memcached.new_from_selector(function() return addr end,
      { failure_limit = 1, retry_timeout = 0.2 })
    assert.are.equal(memcached.ERR_CONNECTION_REFUSED, select(2, mc:get("k")))
    H.sleep(0.3)
    local srv = H.start_memcached { port = port }
    assert.are.equal(addr, mc:pick_server("k"))
    -- the probe is still due: this get probes the server, which answers
    -- (a used-up probe would give ERR_SERVER_DEAD)
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("k")))
    srv.stop()
  end)

  it("add_server refuses a max_conns it would truncate", function()
    local mc = memcached.new()
    assert.has_error(function() mc:add_server("127.0.0.1:11211", 2 ^ 32) end)
    assert.has_error(function() mc:add_server("127.0.0.1:11211", -1) end)
    assert.is_true(mc:add_server("127.0.0.1:11211", 8))
  end)

  it("delete_multi deletes a repeated key once and reports success", function()
    local srv = H.start_memcached()
    local mc = memcached.new(srv.addr)
    assert(mc:set("dup", 1))
    local res, err = mc:delete_multi { "dup", "dup" }
    assert.is_nil(err)
    assert.is_true(res.dup)
    srv.kill9()
  end)

  it("stats names the server's own answer when a group is unknown", function()
    local srv = H.start_memcached()
    local mc = memcached.new(srv.addr)
    assert.is_nil(mc:set_servers("nonexistent.invalid:11211"))
    local v, err, detail = mc:stats("nosuchgroup")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_NO_STATS, err)
    assert.truthy(detail:find(srv.addr, 1, true), detail)
    srv.kill9()
  end)
end)
