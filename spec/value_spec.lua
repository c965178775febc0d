-- Lua values <-> msgpack (src/lua/lmc_value.c): round trips, the exact wire
-- format other msgpack writers (Go's) produce, and every refusal.
local H = require "spec.helper"
local memcached = require "memcached"

local encode, decode = memcached.encode, memcached.decode

local function hex(s)
  return (s:gsub(".", function(ch) return string.format("%02x ", ch:byte()) end))
end

local function roundtrip(v)
  local bytes, err = encode(v)
  assert(bytes, err)
  local back, derr = decode(bytes)
  assert(derr == nil, derr)
  return back, bytes
end

-- A value made of d nested tables: nest(1) == {1}.
local function nest(d)
  local t = { 1 }
  for _ = 2, d do t = { t } end
  return t
end

local function refused(v, pattern)
  local bytes, err = encode(v)
  assert.is_nil(bytes)
  assert.is_string(err)
  assert.matches(pattern, err)
  return err
end

local function undecodable(bytes, pattern)
  local v, err = decode(bytes)
  assert.is_nil(v)
  assert.is_string(err)
  assert.matches(pattern, err, 1, true)
  return err
end

describe("memcached value codec", function()
  describe("exports", function()
    it("has encode, decode and the metatables", function()
      assert.is_function(encode)
      assert.is_function(decode)
      assert.is_table(memcached.array_mt)
      assert.is_table(memcached.map_mt)
      assert.equal(memcached.array_mt, getmetatable(memcached.empty_array))
      assert.equal("memcached.array_mt", memcached.array_mt.__name)
      assert.equal("memcached.map_mt", memcached.map_mt.__name)
    end)

    it("raises on a missing or non-string argument", function()
      assert.has_error(function() encode() end)
      assert.has_error(function() decode() end)
      assert.has_error(function() decode({}) end)
    end)
  end)

  describe("wire format", function()
    local cases = {
      { nil, "\192" },
      { false, "\194" },
      { true, "\195" },
      { 0, "\000" },
      { 1, "\001" },
      { 127, "\127" },
      { 128, "\204\128" },
      { 255, "\204\255" },
      { 256, "\205\001\000" },
      { 65535, "\205\255\255" },
      { 65536, "\206\000\001\000\000" },
      { 4294967295, "\206\255\255\255\255" },
      { 4294967296, "\207\000\000\000\001\000\000\000\000" },
      { -1, "\255" },
      { -32, "\224" },
      { -33, "\208\223" },
      { -128, "\208\128" },
      { -129, "\209\255\127" },
      { -32769, "\210\255\255\127\255" },
      -- 5.3+: math.mininteger; before, the double -2^63, integral and exact
      { H.integers and math.mininteger or -2 ^ 63, "\211\128\000\000\000\000\000\000\000" },
      { 0.5, "\203\063\224\000\000\000\000\000\000" },
      { "", "\160" },
      { "a", "\161a" },
      { string.rep("x", 31), "\191" .. string.rep("x", 31) },
      { string.rep("x", 32), "\217\032" .. string.rep("x", 32) },
      { string.rep("x", 256), "\218\001\000" .. string.rep("x", 256) },
      { { 1, 2 }, "\146\001\002" },
      { {}, "\128" },
      { { a = 1 }, "\129\161a\001" },
    }
    if H.integers then
      cases[#cases + 1] = { math.maxinteger, "\207\127\255\255\255\255\255\255\255" }
      cases[#cases + 1] = { 2.0, "\203\064\000\000\000\000\000\000\000" }
    else
      -- no integer subtype: an integral double in the int64 range is
      -- written as a msgpack integer, anything else as a float 64
      cases[#cases + 1] = { 2.0, "\002" }
      cases[#cases + 1] = { 2 ^ 63, "\203\067\224\000\000\000\000\000\000" }
    end
    for i, case in ipairs(cases) do
      it("encodes case " .. i .. " (" .. hex(case[2]):sub(1, 30) .. ") exactly", function()
        local bytes, err = encode(case[1])
        assert.is_nil(err)
        assert.equal(hex(case[2]), hex(bytes))
      end)
    end

    it("uses str 32 and array 16 for long values", function()
      local s = string.rep("y", 65536)
      assert.equal("\219\000\001\000\000", encode(s):sub(1, 5))
      local a = {}
      for i = 1, 16 do a[i] = i end
      assert.equal("\220\000\016", encode(a):sub(1, 3))
    end)
  end)

  describe("round trips", function()
    it("keeps integers integers at every boundary", function()
      local ints = {
        0, 1, -1, 127, 128, 255, 256, 65535, 65536, -32, -33, -128, -129,
        -32768, -32769, 2147483647, 2147483648, -2147483648, -2147483649,
        4294967295, 4294967296, 9007199254740992, -9007199254740992,
      }
      if H.integers then -- past 2^53: exact as integers only
        ints[#ints + 1] = 9007199254740993
        ints[#ints + 1] = math.maxinteger
        ints[#ints + 1] = math.mininteger
      else
        ints[#ints + 1] = -2 ^ 63 -- a power of two, exact in a double
      end
      for _, n in ipairs(ints) do
        local back = roundtrip(n)
        assert.equal("integer", H.mtype(back))
        assert.equal(n, back)
      end
    end)

    it("keeps floats floats", function()
      for _, f in ipairs({ 0.5, -1.25, 1e300, 5e-324, 2 ^ 70, math.huge, -math.huge, math.pi }) do
        local back = roundtrip(f)
        assert.equal("float", H.mtype(back))
        assert.equal(f, back)
      end
    end)

    if H.integers then
      it("keeps integral floats floats", function()
        for _, f in ipairs({ 2.0, 0.0, -0.0, 2 ^ 53 }) do
          local back = roundtrip(f)
          assert.equal("float", H.mtype(back))
          assert.equal(f, back)
        end
        assert.equal(1 / -0.0, 1 / roundtrip(-0.0))
      end)
    else
      it("sends integral doubles as integers (no integer subtype before 5.3)", function()
        assert.equal("\002", encode(2.0))
        assert.equal("\000", encode(-0.0))
        assert.equal("\207\000\032\000\000\000\000\000\000", encode(2 ^ 53))
        assert.equal(2 ^ 53, roundtrip(2 ^ 53))
        -- msgpack integers past 2^53 (another writer's) decode to the
        -- nearest double
        assert.equal(2 ^ 53, decode("\207\000\032\000\000\000\000\000\001"))
      end)
    end

    it("decodes NaN as NaN", function()
      local back = roundtrip(0 / 0)
      assert.equal("float", H.mtype(back))
      assert.is_true(back ~= back)
    end)

    it("keeps strings byte for byte", function()
      local bin = "\0\1\255\254a\0b"
      assert.equal("", roundtrip(""))
      assert.equal(bin, roundtrip(bin))
      local all = {}
      for i = 0, 255 do all[#all + 1] = string.char(i) end
      all = table.concat(all)
      assert.equal(all, roundtrip(all))
      local big = string.rep("0123456789abcdef", 65536) -- 1 MB
      assert.equal(big, roundtrip(big))
    end)

    it("keeps booleans and nil", function()
      assert.is_true(roundtrip(true))
      assert.is_false(roundtrip(false))
      assert.is_nil((roundtrip(nil)))
    end)

    it("keeps nested tables", function()
      local v = {
        name = "x", list = { 1, 2.5, "three", { four = 4 } },
        deep = { a = { b = { c = { true, false } } } },
        [1.5] = "float key", [true] = "bool key", [-7] = "int key",
      }
      assert.same(v, roundtrip(v))
    end)

    it("tells arrays from maps", function()
      local _, bytes = roundtrip({ 10, 20, 30 })
      assert.equal(0x93, bytes:byte(1))
      local mixed = { 1, 2, x = 3 }
      local back
      back, bytes = roundtrip(mixed)
      assert.equal(0x83, bytes:byte(1))
      assert.same(mixed, back)
      back, bytes = roundtrip({ [2] = "b", [3] = "c" })
      assert.equal(0x82, bytes:byte(1))
      assert.same({ [2] = "b", [3] = "c" }, back)
      back, bytes = roundtrip({ [1] = "a", [3] = "c" })
      assert.equal(0x82, bytes:byte(1))
      assert.same({ [1] = "a", [3] = "c" }, back)
      back, bytes = roundtrip({ [0] = "z", "a" })
      assert.equal(0x82, bytes:byte(1))
      assert.same({ [0] = "z", "a" }, back)
    end)

    it("honours array_mt, map_mt and empty_array", function()
      assert.equal("\144", encode(memcached.empty_array))
      assert.equal("\144", encode(setmetatable({}, memcached.array_mt)))
      assert.equal("\128", encode(setmetatable({}, memcached.map_mt)))
      assert.equal("\130\001\001\002\002", encode(setmetatable({ 1, 2 }, memcached.map_mt)))
      -- array_mt uses 1..#t and writes holes as nil
      assert.equal("\147\001\192\003", encode(setmetatable({ 1, nil, 3 }, memcached.array_mt)))
      assert.equal("\145\144", encode({ memcached.empty_array }))
    end)

    it("marks decoded empty arrays and arrays with holes so they stay arrays", function()
      local e = decode("\144")
      assert.same({}, e)
      assert.equal(memcached.array_mt, getmetatable(e))
      assert.equal("\144", encode(e))
      local h = decode("\147\001\192\003")
      assert.equal(memcached.array_mt, getmetatable(h))
      assert.equal("\147\001\192\003", encode(h))
      assert.is_nil(getmetatable(decode("\146\001\002")))
      local m = decode("\128")
      assert.same({}, m)
      assert.is_nil(getmetatable(m))
      assert.equal("\128", encode(m))
    end)

    it("accepts shared subtables that are not cycles", function()
      local s = { 1, 2 }
      local v = { a = s, b = s, c = { s, { s } } }
      assert.same(v, roundtrip(v))
    end)

    it("ignores metamethods of ordinary metatables", function()
      local t = setmetatable({ 1 }, {
        __index = function() error("no __index please") end,
        __pairs = function() error("no __pairs please") end,
        __len = function() return 99 end,
      })
      assert.equal("\145\001", encode(t))
    end)

    it("nests 32 tables deep", function()
      local back = roundtrip(nest(32))
      for _ = 1, 31 do back = back[1] end
      assert.same({ 1 }, back)
      local m = { v = 1 }
      for _ = 2, 32 do m = { m = m } end
      assert.same(m, roundtrip(m))
    end)
  end)

  describe("refusals", function()
    it("refuses functions, naming the path", function()
      assert.equal("cannot encode a function value", refused(print, "function"))
      local err = refused({ a = { b = { 1, 2, print } } }, "function")
      assert.equal("cannot encode a function value at value.a.b[3]", err)
      err = refused({ ["not an ident"] = { [2.5] = { [true] = print } } }, "function")
      assert.equal('cannot encode a function value at value["not an ident"][2.5][true]', err)
    end)

    it("refuses threads, userdata and light userdata", function()
      local co = coroutine.create(function() end)
      refused(co, "cannot encode a thread value")
      refused({ co = co }, "thread value at value%.co")
      refused(io.stdout, "cannot encode a userdata value")
      refused({ 1, { f = io.stdout } }, "userdata value at value%[2%]%.f")
    end)

    it("refuses unencodable map keys", function()
      refused({ [print] = 1 }, "cannot encode a function as a map key")
      refused({ x = { [{}] = 1 } }, "cannot encode a table as a map key at value%.x")
    end)

    it("refuses cycles", function()
      local t = {}
      t[1] = t
      refused(t, "table cycle at value%[1%]")
      local a = { b = {} }
      a.b.c = { a }
      refused(a, "table cycle at value%.b%.c%[1%]")
      local self = {}
      self.me = self
      refused({ self }, "table cycle")
    end)

    it("refuses nesting past 32 tables", function()
      assert.is_string(encode(nest(32)))
      assert.equal("tables nested deeper than 32 levels at value" .. string.rep("[1]", 32),
                   refused(nest(33), "nested deeper than 32"))
      refused({ x = nest(32) }, "nested deeper than 32")
      -- an empty table is a level too
      local e = {}
      for _ = 1, 32 do e = { e } end
      refused(e, "nested deeper than 32")
    end)

    it("leaves nothing half-written", function()
      -- the failure comes after a long prefix was written
      local v = { string.rep("z", 100000), print }
      refused(v, "function")
      assert.equal("\145\001", encode({ 1 }))
    end)
  end)

  describe("decoding bad input", function()
    it("refuses malformed, truncated and trailing bytes", function()
      undecodable("\193", "malformed msgpack value")
      undecodable("", "truncated msgpack value")
      undecodable("\146\001", "truncated msgpack value")
      undecodable("\165abc", "truncated msgpack value")
      undecodable("\205\001", "truncated msgpack value")
      undecodable("\203\000\000", "truncated msgpack value")
      undecodable("\219\255\255\255\255", "truncated msgpack value")
      undecodable("\001\002", "trailing bytes after msgpack value")
      undecodable("\145\001\001", "trailing bytes after msgpack value")
      undecodable("\146\001\193", "malformed msgpack value")
      undecodable("\129\161k\146\001", "truncated msgpack value")
      undecodable("\129\212\002\000\001", "msgpack ext type 2 is not supported")
    end)

    it("refuses huge declared counts without allocating them", function()
      undecodable("\221\255\255\255\255", "truncated msgpack value")
      undecodable("\223\255\255\255\255", "truncated msgpack value")
      -- msgpack-c alone would malloc 512 MB for these 5 bytes
      undecodable("\221\001\000\000\000", "truncated msgpack value")
      undecodable("\146\001\222\255\255", "truncated msgpack value")
      -- one byte short of what the counts need, at each level
      undecodable("\146\146\001", "truncated msgpack value")
      undecodable("\130\001\002\003", "truncated msgpack value")
      -- exactly enough is fine
      local want, bytes = {}, {}
      for i = 1, 4096 do
        want[i] = i % 100
        bytes[i] = string.char(i % 100)
      end
      assert.same(want, decode("\221\000\000\016\000" .. table.concat(bytes)))
      -- each level claims the same remaining bytes
      undecodable(string.rep("\221\000\000\016\000", 60) .. string.rep("\001", 4096),
                  "truncated msgpack value")
    end)

    it("reads 32 levels and refuses 33, as msgpack-c's unpacker does", function()
      local deep = "msgpack value nested deeper than 32 levels"
      assert.same(nest(32), decode(string.rep("\145", 31) .. "\145\001"))
      undecodable(string.rep("\145", 33) .. "\001", deep)
      -- an empty container counts as a level, as in the encoder
      local e = decode(string.rep("\145", 31) .. "\144")
      for _ = 1, 31 do e = e[1] end
      assert.equal(memcached.array_mt, getmetatable(e))
      undecodable(string.rep("\145", 32) .. "\144", deep)
      undecodable(string.rep("\129\001", 32) .. "\128", deep)
      assert.is_table(decode(string.rep("\129\001", 31) .. "\128"))
    end)

    it("refuses depth bombs", function()
      local deep = "msgpack value nested deeper than 32 levels"
      undecodable(string.rep("\145", 10000), deep)
      undecodable(string.rep("\129\001", 10000), deep)
      -- deep in a map key, behind a long string
      undecodable("\146\218\001\000" .. string.rep("s", 256) .. "\129" .. string.rep("\145", 40) .. "\001\001", deep)
    end)

    it("refuses ext types, naming the type", function()
      undecodable("\212\001\000", "msgpack ext type 1 is not supported")
      undecodable("\214\255\000\000\000\000", "msgpack ext type -1 is not supported")
      undecodable("\199\002\005\000\000", "msgpack ext type 5 is not supported")
      undecodable("\145\216\127" .. string.rep("\0", 16), "msgpack ext type 127 is not supported")
    end)

    it("refuses nil and NaN map keys", function()
      undecodable("\129\192\001", "msgpack map key cannot be nil/NaN")
      undecodable("\129\203\127\248\000\000\000\000\000\000\001", "msgpack map key cannot be nil/NaN")
      undecodable("\129\202\127\192\000\000\001", "msgpack map key cannot be nil/NaN")
    end)

    it("returns exactly nil and a message", function()
      assert.equal(2, select("#", decode("\193")))
      assert.equal(2, select("#", encode(print)))
      assert.equal(1, select("#", decode("\001")))
    end)
  end)

  describe("decoding what other writers produce", function()
    it("reads every integer and float form", function()
      assert.equal(200, decode("\204\200"))
      assert.equal(-100, decode("\208\156"))
      assert.equal(-1, decode("\209\255\255"))
      assert.equal(-1, decode("\210\255\255\255\255"))
      assert.equal(1, decode("\211\000\000\000\000\000\000\000\001"))
      assert.equal(H.integers and math.mininteger or -2 ^ 63, decode("\211\128\000\000\000\000\000\000\000"))
      -- 2^63 - 1: exact on 5.3+, the nearest double (2^63) before
      assert.equal(H.integers and math.maxinteger or 2 ^ 63, decode("\207\127\255\255\255\255\255\255\255"))
      local big = decode("\207\255\255\255\255\255\255\255\255")
      assert.equal("float", H.mtype(big))
      assert.equal(18446744073709551615.0, big)
      local f32 = decode("\202\063\128\000\000")
      if H.integers then assert.equal("float", H.mtype(f32)) end
      assert.equal(1.0, f32)
      assert.equal(-1.5, decode("\202\191\192\000\000"))
    end)

    it("reads bin and long str/array/map forms as Lua values", function()
      assert.equal("\0\255", decode("\196\002\000\255"))
      assert.equal("ab", decode("\197\000\002ab"))
      assert.equal("ab", decode("\198\000\000\000\002ab"))
      assert.equal("ab", decode("\218\000\002ab"))
      assert.same({ 1, 2 }, decode("\220\000\002\001\002"))
      assert.same({ 1, 2 }, decode("\221\000\000\000\002\001\002"))
      assert.same({ a = 1 }, decode("\222\000\001\161a\001"))
      assert.same({ a = 1 }, decode("\223\000\000\000\001\161a\001"))
      assert.same({ [1] = "x", [true] = 2.5 }, decode("\130\001\161x\195\203\064\004\000\000\000\000\000\000"))
    end)
  end)

  describe("memory", function()
    it("does not grow over 10,000 failed calls", function()
      local bomb = string.rep("\145", 10000)
      local bad = { "\193", "\146\001", "\001\002", bomb, "\129\192\001",
                    "\147\001\002\212\001\000", "\130\161a\146\001\002\161b" }
      local cyc = {}
      cyc.x = { cyc }
      local fn = { 1, 2, { a = print } }
      local function churn()
        for i = 1, 10000 do
          local v, err = decode(bad[i % #bad + 1])
          assert(v == nil and err)
          v, err = encode(i % 2 == 0 and cyc or fn)
          assert(v == nil and err)
        end
      end
      churn() -- warm up: interned strings, buffers
      collectgarbage()
      collectgarbage()
      local before = collectgarbage("count")
      churn()
      collectgarbage()
      collectgarbage()
      local grown = collectgarbage("count") - before
      assert.is_true(grown < 16, "grew by " .. grown .. " KB")
    end)
  end)
end)
