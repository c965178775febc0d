-- Lua values <-> msgpack (src/lua/lmc_value.c): round trips, the exact wire
-- format other msgpack writers (Go's) produce, and every refusal.
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
      { nil, "\xc0" },
      { false, "\xc2" },
      { true, "\xc3" },
      { 0, "\x00" },
      { 1, "\x01" },
      { 127, "\x7f" },
      { 128, "\xcc\x80" },
      { 255, "\xcc\xff" },
      { 256, "\xcd\x01\x00" },
      { 65535, "\xcd\xff\xff" },
      { 65536, "\xce\x00\x01\x00\x00" },
      { 4294967295, "\xce\xff\xff\xff\xff" },
      { 4294967296, "\xcf\x00\x00\x00\x01\x00\x00\x00\x00" },
      { -1, "\xff" },
      { -32, "\xe0" },
      { -33, "\xd0\xdf" },
      { -128, "\xd0\x80" },
      { -129, "\xd1\xff\x7f" },
      { -32769, "\xd2\xff\xff\x7f\xff" },
      { math.maxinteger, "\xcf\x7f\xff\xff\xff\xff\xff\xff\xff" },
      { math.mininteger, "\xd3\x80\x00\x00\x00\x00\x00\x00\x00" },
      { 0.5, "\xcb\x3f\xe0\x00\x00\x00\x00\x00\x00" },
      { 2.0, "\xcb\x40\x00\x00\x00\x00\x00\x00\x00" },
      { "", "\xa0" },
      { "a", "\xa1a" },
      { string.rep("x", 31), "\xbf" .. string.rep("x", 31) },
      { string.rep("x", 32), "\xd9\x20" .. string.rep("x", 32) },
      { string.rep("x", 256), "\xda\x01\x00" .. string.rep("x", 256) },
      { { 1, 2 }, "\x92\x01\x02" },
      { {}, "\x80" },
      { { a = 1 }, "\x81\xa1a\x01" },
    }
    for i, case in ipairs(cases) do
      it("encodes case " .. i .. " (" .. hex(case[2]):sub(1, 30) .. ") exactly", function()
        local bytes, err = encode(case[1])
        assert.is_nil(err)
        assert.equal(hex(case[2]), hex(bytes))
      end)
    end

    it("uses str 32 and array 16 for long values", function()
      local s = string.rep("y", 65536)
      assert.equal("\xdb\x00\x01\x00\x00", encode(s):sub(1, 5))
      local a = {}
      for i = 1, 16 do a[i] = i end
      assert.equal("\xdc\x00\x10", encode(a):sub(1, 3))
    end)
  end)

  describe("round trips", function()
    it("keeps integers integers at every boundary", function()
      local ints = {
        0, 1, -1, 127, 128, 255, 256, 65535, 65536, -32, -33, -128, -129,
        -32768, -32769, 2147483647, 2147483648, -2147483648, -2147483649,
        4294967295, 4294967296, 1 << 53, (1 << 53) + 1, math.maxinteger,
        math.mininteger,
      }
      for _, n in ipairs(ints) do
        local back = roundtrip(n)
        assert.equal("integer", math.type(back))
        assert.equal(n, back)
      end
    end)

    it("keeps floats floats, even integral ones", function()
      for _, f in ipairs({ 0.5, 2.0, 0.0, -0.0, 2 ^ 53, -1.25, 1e300, 5e-324,
                           math.huge, -math.huge, math.pi }) do
        local back = roundtrip(f)
        assert.equal("float", math.type(back))
        assert.equal(f, back)
      end
      assert.equal(1 / -0.0, 1 / roundtrip(-0.0))
    end)

    it("decodes NaN as NaN", function()
      local back = roundtrip(0 / 0)
      assert.equal("float", math.type(back))
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
      assert.equal("\x90", encode(memcached.empty_array))
      assert.equal("\x90", encode(setmetatable({}, memcached.array_mt)))
      assert.equal("\x80", encode(setmetatable({}, memcached.map_mt)))
      assert.equal("\x82\x01\x01\x02\x02", encode(setmetatable({ 1, 2 }, memcached.map_mt)))
      -- array_mt uses 1..#t and writes holes as nil
      assert.equal("\x93\x01\xc0\x03", encode(setmetatable({ 1, nil, 3 }, memcached.array_mt)))
      assert.equal("\x91\x90", encode({ memcached.empty_array }))
    end)

    it("marks decoded empty arrays and arrays with holes so they stay arrays", function()
      local e = decode("\x90")
      assert.same({}, e)
      assert.equal(memcached.array_mt, getmetatable(e))
      assert.equal("\x90", encode(e))
      local h = decode("\x93\x01\xc0\x03")
      assert.equal(memcached.array_mt, getmetatable(h))
      assert.equal("\x93\x01\xc0\x03", encode(h))
      assert.is_nil(getmetatable(decode("\x92\x01\x02")))
      local m = decode("\x80")
      assert.same({}, m)
      assert.is_nil(getmetatable(m))
      assert.equal("\x80", encode(m))
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
      assert.equal("\x91\x01", encode(t))
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
      refused(coroutine.create(print), "cannot encode a thread value")
      refused({ co = coroutine.create(print) }, "thread value at value%.co")
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
      assert.equal("\x91\x01", encode({ 1 }))
    end)
  end)

  describe("decoding bad input", function()
    it("refuses malformed, truncated and trailing bytes", function()
      undecodable("\xc1", "malformed msgpack value")
      undecodable("", "truncated msgpack value")
      undecodable("\x92\x01", "truncated msgpack value")
      undecodable("\xa5abc", "truncated msgpack value")
      undecodable("\xcd\x01", "truncated msgpack value")
      undecodable("\xcb\x00\x00", "truncated msgpack value")
      undecodable("\xdb\xff\xff\xff\xff", "truncated msgpack value")
      undecodable("\x01\x02", "trailing bytes after msgpack value")
      undecodable("\x91\x01\x01", "trailing bytes after msgpack value")
      undecodable("\x92\x01\xc1", "malformed msgpack value")
      undecodable("\x81\xa1k\x92\x01", "truncated msgpack value")
      undecodable("\x81\xd4\x02\x00\x01", "msgpack ext type 2 is not supported")
    end)

    it("refuses huge declared counts without allocating them", function()
      undecodable("\xdd\xff\xff\xff\xff", "truncated msgpack value")
      undecodable("\xdf\xff\xff\xff\xff", "truncated msgpack value")
      -- msgpack-c alone would malloc 512 MB for these 5 bytes
      undecodable("\xdd\x01\x00\x00\x00", "truncated msgpack value")
      undecodable("\x92\x01\xde\xff\xff", "truncated msgpack value")
      -- one byte short of what the counts need, at each level
      undecodable("\x92\x92\x01", "truncated msgpack value")
      undecodable("\x82\x01\x02\x03", "truncated msgpack value")
      -- exactly enough is fine
      local want, bytes = {}, {}
      for i = 1, 4096 do
        want[i] = i % 100
        bytes[i] = string.char(i % 100)
      end
      assert.same(want, decode("\xdd\x00\x00\x10\x00" .. table.concat(bytes)))
      -- each level claims the same remaining bytes
      undecodable(string.rep("\xdd\x00\x00\x10\x00", 60) .. string.rep("\x01", 4096),
                  "truncated msgpack value")
    end)

    it("reads 32 levels and refuses 33, as msgpack-c's unpacker does", function()
      local deep = "msgpack value nested deeper than 32 levels"
      assert.same(nest(32), decode(string.rep("\x91", 31) .. "\x91\x01"))
      undecodable(string.rep("\x91", 33) .. "\x01", deep)
      -- an empty container counts as a level, as in the encoder
      local e = decode(string.rep("\x91", 31) .. "\x90")
      for _ = 1, 31 do e = e[1] end
      assert.equal(memcached.array_mt, getmetatable(e))
      undecodable(string.rep("\x91", 32) .. "\x90", deep)
      undecodable(string.rep("\x81\x01", 32) .. "\x80", deep)
      assert.is_table(decode(string.rep("\x81\x01", 31) .. "\x80"))
    end)

    it("refuses depth bombs", function()
      local deep = "msgpack value nested deeper than 32 levels"
      undecodable(string.rep("\x91", 10000), deep)
      undecodable(string.rep("\x81\x01", 10000), deep)
      -- deep in a map key, behind a long string
      undecodable("\x92\xda\x01\x00" .. string.rep("s", 256) .. "\x81" .. string.rep("\x91", 40) .. "\x01\x01", deep)
    end)

    it("refuses ext types, naming the type", function()
      undecodable("\xd4\x01\x00", "msgpack ext type 1 is not supported")
      undecodable("\xd6\xff\x00\x00\x00\x00", "msgpack ext type -1 is not supported")
      undecodable("\xc7\x02\x05\x00\x00", "msgpack ext type 5 is not supported")
      undecodable("\x91\xd8\x7f" .. string.rep("\0", 16), "msgpack ext type 127 is not supported")
    end)

    it("refuses nil and NaN map keys", function()
      undecodable("\x81\xc0\x01", "msgpack map key cannot be nil/NaN")
      undecodable("\x81\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x01", "msgpack map key cannot be nil/NaN")
      undecodable("\x81\xca\x7f\xc0\x00\x00\x01", "msgpack map key cannot be nil/NaN")
    end)

    it("returns exactly nil and a message", function()
      assert.equal(2, select("#", decode("\xc1")))
      assert.equal(2, select("#", encode(print)))
      assert.equal(1, select("#", decode("\x01")))
    end)
  end)

  describe("decoding what other writers produce", function()
    it("reads every integer and float form", function()
      assert.equal(200, decode("\xcc\xc8"))
      assert.equal(-100, decode("\xd0\x9c"))
      assert.equal(-1, decode("\xd1\xff\xff"))
      assert.equal(-1, decode("\xd2\xff\xff\xff\xff"))
      assert.equal(1, decode("\xd3\x00\x00\x00\x00\x00\x00\x00\x01"))
      assert.equal(math.mininteger, decode("\xd3\x80\x00\x00\x00\x00\x00\x00\x00"))
      assert.equal(math.maxinteger, decode("\xcf\x7f\xff\xff\xff\xff\xff\xff\xff"))
      local big = decode("\xcf\xff\xff\xff\xff\xff\xff\xff\xff")
      assert.equal("float", math.type(big))
      assert.equal(18446744073709551615.0, big)
      local f32 = decode("\xca\x3f\x80\x00\x00")
      assert.equal("float", math.type(f32))
      assert.equal(1.0, f32)
      assert.equal(-1.5, decode("\xca\xbf\xc0\x00\x00"))
    end)

    it("reads bin and long str/array/map forms as Lua values", function()
      assert.equal("\0\255", decode("\xc4\x02\x00\xff"))
      assert.equal("ab", decode("\xc5\x00\x02ab"))
      assert.equal("ab", decode("\xc6\x00\x00\x00\x02ab"))
      assert.equal("ab", decode("\xda\x00\x02ab"))
      assert.same({ 1, 2 }, decode("\xdc\x00\x02\x01\x02"))
      assert.same({ 1, 2 }, decode("\xdd\x00\x00\x00\x02\x01\x02"))
      assert.same({ a = 1 }, decode("\xde\x00\x01\xa1a\x01"))
      assert.same({ a = 1 }, decode("\xdf\x00\x00\x00\x01\xa1a\x01"))
      assert.same({ [1] = "x", [true] = 2.5 }, decode("\x82\x01\xa1x\xc3\xcb\x40\x04\x00\x00\x00\x00\x00\x00"))
    end)
  end)

  describe("memory", function()
    it("does not grow over 10,000 failed calls", function()
      local bomb = string.rep("\x91", 10000)
      local bad = { "\xc1", "\x92\x01", "\x01\x02", bomb, "\x81\xc0\x01",
                    "\x93\x01\x02\xd4\x01\x00", "\x82\xa1a\x92\x01\x02\xa1b" }
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
