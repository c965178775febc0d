-- The module's core behaviour in one file, as a first check of a new Lua
-- or build (the whole suite runs under every Lua: make test-all).
local H = require "spec.helper"
local memcached = H.memcached

describe("on this Lua (" .. (jit and jit.version or _VERSION) .. ")", function()
  local srv, mc
  setup(function()
    srv = H.start_memcached()
    mc = assert(memcached.new(srv.addr))
  end)
  teardown(function()
    mc:close()
    srv.kill9()
  end)

  it("stores and reads back strings, numbers, booleans and tables", function()
    local values = { "plain", "bin\0\255", 42, -7, 0.5, true, false,
                     { 1, 2, 3 }, { a = "b", n = { x = 1 } } }
    for i, v in ipairs(values) do
      local k = "p" .. i
      assert.truthy(mc:set(k, v))
      assert.are.same(v, (mc:get(k)))
    end
  end)

  it("keeps integral numbers exact up to 2^53 and returns cas and flags", function()
    assert.truthy(mc:set("big", 2 ^ 53))
    local v, cas, flags = mc:get("big")
    assert.are.equal(2 ^ 53, v)
    assert.is_true(cas > 0)
    assert.are.equal(1, flags)
  end)

  it("reports a miss, a cas conflict and a malformed key with the constants", function()
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("absent")))
    local _, cas = mc:get("p1")
    assert.truthy(mc:compare_and_swap("p1", "new", cas))
    assert.are.equal(memcached.ERR_CAS_CONFLICT, select(2, mc:compare_and_swap("p1", "again", cas)))
    assert.are.equal(memcached.ERR_MALFORMED_KEY, select(2, mc:get("has space")))
  end)

  it("pipelines get_multi, set_multi and delete_multi", function()
    local items, keys = {}, {}
    for i = 1, 50 do keys[i] = "m" .. i; items[keys[i]] = { i = i } end
    local res, err = mc:set_multi(items)
    assert.is_nil(err)
    assert.is_true(res.m1)
    local got = mc:get_multi(keys)
    for i = 1, 50 do assert.are.equal(i, got["m" .. i].i) end
    res = mc:delete_multi { "m1", "m2", "nope" }
    assert.is_true(res.m1)
    assert.are.equal(memcached.ERR_CACHE_MISS, res.nope)
  end)

  it("counts with increment and decrement", function()
    assert.are.equal(10, (mc:increment("ctr", 5, 10)))
    assert.are.equal(15, (mc:increment("ctr", 5)))
    assert.are.equal(12, (mc:decrement("ctr", 3)))
    assert.are.equal(12, (mc:touch_atomic_value("ctr")))
  end)

  it("raises on a wrong argument type and refuses a function value", function()
    assert.has_error(function() mc:get(42) end)
    local v, err = mc:set("f", print)
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_UNENCODABLE, err)
  end)

  it("times out on a silent server and keeps serving the others", function()
    local f = H.start_fault("silent")
    local c = memcached.new { servers = { f.addr }, timeout = 0.1 }
    local dt, v, err = H.timed(function() return c:get("k") end)
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_TIMEOUT, err)
    assert.is_true(dt < 0.5)
    c:close()
    f.stop()
    assert.are.equal("new", (mc:get("p1")))
  end)

  it("serves a call made from a selector or a finalizer inside another call", function()
    assert.truthy(mc:set("outer", "O"))
    assert.truthy(mc:set("inner", "I"))
    local c, from_selector, from_gc
    local armed = true
    c = memcached.new_from_selector(function()
      if armed then
        armed = false
        from_selector = { c:get("inner") }
        local fin = function() from_gc = { c:get_multi { "inner" } } end
        if newproxy then -- LuaJIT and 5.1: __gc on a userdata only
          getmetatable(newproxy(true)).__gc = fin
        else
          setmetatable({}, { __gc = fin })
        end
        collectgarbage() -- that finalizer runs now, inside the outer call
      end
      return srv.addr
    end)
    local got = c:get_multi { "outer", "inner" }
    assert.are.same({ outer = "O", inner = "I" }, got)
    assert.are.equal("I", from_selector[1])
    collectgarbage()
    assert.are.same({ inner = "I" }, from_gc[1])
    c:close()
  end)
end)
