-- Numbers on each Lua (README, "Numbers"). Lua 5.3 and 5.4 have 64-bit
-- integers: counters and cas values are integers, and past 2^63 - 1 they
-- read negative (the same 64 bits, as math.ult compares them). Lua 5.1,
-- 5.2 and LuaJIT have doubles only, exact to 2^53: a counter or cas value
-- past 2^53 comes back as a string of its decimal digits, exact, and such
-- a string is taken back wherever a cas, delta or initial value goes.
local H = require "spec.helper"
local memcached = H.memcached

-- What the client returns for the 64-bit value written in decimal `digits`
-- (past 2^53): `int` on 5.3+, where the literal is an exact integer, the
-- digits themselves before.
local function past53(int, digits)
  if H.integers then return int end
  return digits
end

describe("numbers on " .. (jit and jit.version or _VERSION), function()
  local srv, mc
  setup(function()
    srv = H.start_memcached()
    mc = assert(memcached.new(srv.addr))
  end)
  teardown(function()
    mc:close()
    srv.kill9()
  end)

  it("counts with plain numbers up to 2^53 on every Lua", function()
    assert(mc:set_raw_data("n53", "9007199254740990"))
    assert.are.equal(9007199254740991, (mc:increment("n53", 1)))
    local v = mc:increment("n53", 1)
    assert.are.equal("number", type(v))
    assert.are.equal(9007199254740992, v)
    assert.are.equal("integer", H.mtype(v))
  end)

  it("returns counters past 2^53 exactly: integers on 5.3+, decimal strings before", function()
    assert(mc:set_raw_data("p53", "9007199254740992"))
    local v, cas = mc:increment("p53", 1)
    assert.are.equal(past53(9007199254740993, "9007199254740993"), v)
    assert.are.equal(H.integers and "number" or "string", type(v))
    assert.are.equal("number", type(cas)) -- memcached's cas values are small
    assert.are.equal("9007199254740993", (mc:get("p53"))) -- what the server holds
    assert.are.equal(past53(9007199254740993, "9007199254740993"), (mc:touch_atomic_value("p53")))
    -- back under 2^53: a number again
    assert.are.equal(9007199254740992, (mc:decrement("p53", 1)))
  end)

  it("takes such a value back as a delta or an initial value", function()
    local big = past53(9007199254740993, "9007199254740993")
    assert.are.equal(big, (mc:increment("init53", 1, big)))
    assert.are.equal("9007199254740993", (mc:get("init53")))
    assert(mc:set_raw_data("delta53", "0"))
    assert.are.equal(big, (mc:increment("delta53", big)))
    assert.are.equal("9007199254740993", (mc:get("delta53")))
    assert.are.equal(0, (mc:decrement("delta53", big)))
  end)

  it("wraps at 2^64 as memcached does: 2^64 - 1 is -1 on 5.3+, its digits before", function()
    assert(mc:set_raw_data("wrap", "18446744073709551614"))
    assert.are.equal(past53(-1, "18446744073709551615"), (mc:increment("wrap", 1)))
    assert.are.equal("18446744073709551615", (mc:get("wrap")))
    assert.are.equal(0, (mc:increment("wrap", 1)))
  end)

  it("still raises on a string within 2^53 and on digits past 2^64", function()
    assert.has_error(function() mc:increment("p53", "5") end)
    assert.has_error(function() mc:increment("p53", "18446744073709551616") end)
    assert.has_error(function() mc:compare_and_swap("p53", 1, "12x45678901234567890") end)
  end)
end)

describe("cas values past 2^53", function()
  local function against(digits, int)
    local f = H.start_fault("bigcas", digits)
    local c = assert(memcached.new { servers = { f.addr }, timeout = 1 })
    local v, cas = c:get("k")
    assert.are.equal("k", v)
    assert.are.equal(past53(int, digits), cas)
    -- the exact cas goes back: the server takes only its own
    assert.are.equal(past53(int, digits), (c:compare_and_swap("k", "v", cas)))
    assert.are.equal(past53(int, digits), (c:set { key = "k", value = "v", cas = cas }))
    -- any other cas is a conflict there
    assert.are.equal(memcached.ERR_CAS_CONFLICT, select(2, c:compare_and_swap("k", "v", 12345)))
    c:close()
    f.stop()
  end

  it("round-trip exactly at 2^53 + 1", function()
    against("9007199254740993", 9007199254740993)
  end)

  it("round-trip exactly at 2^64 - 1", function()
    against("18446744073709551615", -1)
  end)
end)
