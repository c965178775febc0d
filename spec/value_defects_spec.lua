-- Defects a hostile review found in the value codec (src/lua/lmc_encode.c, lmc_decode.c), one
-- describe each: re-entry from finalizers, arrays holding nil, and the
-- decoded-size budget. Each fails against the code before its fix.
local memcached = require "memcached"
local H = require "spec.helper"

local encode, decode = memcached.encode, memcached.decode

-- msgpack bytes built by hand, so the specs do not trust our encoder.
local function mp_array_header(n)
  if n < 16 then return string.char(0x90 + n) end
  if n < 65536 then return H.pack_be(">BI2", 0xdc, n) end
  return H.pack_be(">BI4", 0xdd, n)
end

local function mp_str(s)
  assert(#s < 32)
  return string.char(0xa0 + #s) .. s
end

-- A big nested value: n arrays of 8 distinct strings and a map each, so
-- that decoding allocates many Lua objects (and runs many GC steps).
local function big_value(n)
  local parts = { mp_array_header(n) }
  for i = 1, n do
    parts[#parts + 1] = "\153" -- array of 9
    for j = 1, 8 do
      parts[#parts + 1] = mp_str(string.format("s%d_%d", i, j))
    end
    parts[#parts + 1] = "\129" .. mp_str("k") .. "\205" .. H.pack_be(">I2", i)
  end
  return table.concat(parts)
end

local function check_big(v, n)
  assert.equal(n, #v)
  for i = 1, n do
    local row = v[i]
    assert(type(row) == "table" and #row == 9, "row " .. i .. " damaged")
    for j = 1, 8 do
      assert(row[j] == string.format("s%d_%d", i, j), "row " .. i .. " element " .. j .. " damaged")
    end
    assert(row[9].k == i, "row " .. i .. " map damaged")
  end
end

describe("value codec defects", function()
  describe("re-entry from finalizers", function()
    local inner = "\147\163abc\146\001\002\129\161x\195"

    -- Makes garbage whose finalizers call decode and encode, then decodes a
    -- big value while the collector runs them. The finalizers fill the
    -- module's shared msgpack zone with their own objects.
    local function run(mode, n)
      local fin_runs, fin_bad = 0, 0
      local function fin()
        fin_runs = fin_runs + 1
        for _ = 1, 4 do
          local v = decode(inner)
          if not (v and v[1] == "abc" and v[2][2] == 2 and v[3].x == true) then
            fin_bad = fin_bad + 1
          end
          local b = encode({ "finalizer", { 1, 2, 3 }, k = "v" })
          if not b or not decode(b) then fin_bad = fin_bad + 1 end
        end
      end
      local bytes = big_value(n)
      if mode == "generational" then collectgarbage(mode) end
      -- a short pause: a new cycle (and its finalizers) starts at once
      if mode == "incremental" then H.gc_incremental(100, 100) end
      local ok, err = pcall(function()
        for round = 1, 6 do
          for _ = 1, 4000 do H.finalizer(fin) end
          local v, derr = decode(bytes)
          assert(v, derr)
          check_big(v, n)
          assert(round) -- keeps the loop variable used
        end
      end)
      if mode == "generational" then collectgarbage("incremental") end
      H.gc_incremental() -- the defaults
      collectgarbage()
      assert(ok, err)
      assert.equal(0, fin_bad)
      assert.is_true(fin_runs > 0, "no finalizer ran during the decodes")
    end

    -- the generational collector is Lua 5.4's
    if _VERSION == "Lua 5.4" then
      it("keeps the outer value intact when finalizers decode (generational)", function()
        run("generational", 3000)
      end)
    end

    it("keeps the outer value intact when finalizers decode (incremental)", function()
      run("incremental", 3000)
    end)
  end)

  describe("arrays holding nil", function()
    -- msgpack array of n elements, element i nil when bit i-1 of mask is set
    local function nil_pattern(n, mask)
      local parts = { mp_array_header(n) }
      for i = 1, n do
        parts[i + 1] = math.floor(mask / 2 ^ (i - 1)) % 2 == 1 and "\192" or mp_str("e" .. i)
      end
      return table.concat(parts)
    end

    it("re-encodes every nil pattern of arrays of length 2..15 byte for byte", function()
      local lost, checked = 0, 0
      for n = 2, 15 do
        for mask = 0, 2 ^ n - 1 do
          local bytes = nil_pattern(n, mask)
          local v = assert(decode(bytes))
          for i = 1, n do
            assert(v[i] == (math.floor(mask / 2 ^ (i - 1)) % 2 == 0 and ("e" .. i) or nil))
          end
          if encode(v) ~= bytes then lost = lost + 1 end
          checked = checked + 1
        end
      end
      assert.equal(65532, checked)
      assert.equal(0, lost)
    end)

    it("records the length of decoded arrays that hold nil, and only of those", function()
      local v = decode("\149\192\192\167keep me\192\192")
      assert.equal(5, memcached.array_length(v))
      assert.equal(memcached.array_mt, getmetatable(v))
      assert.equal("\149\192\192\167keep me\192\192", encode(v))
      assert.is_nil(memcached.array_length(decode("\146\001\002")))
      assert.is_nil(memcached.array_length(decode("\144")))
      -- nested: each inner array keeps its own length
      local nested = "\146\147\192\001\192\129\161k\148\192\192\192\192"
      assert.equal(nested, encode(decode(nested)))
    end)

    it("keeps elements added after decoding, and refuses excessively sparse arrays", function()
      local v = decode("\147\192\001\192")
      v[5] = "x"
      assert.equal("\149\192\001\192\192\161x", encode(v))
      -- a table marked array_mt by hand: every element, never a border of #t
      local t = setmetatable({}, memcached.array_mt)
      t[2], t[4] = "b", "d"
      assert.equal("\148\192\161b\192\161d", encode(t))
      local bytes, err = encode({ a = setmetatable({ [1000000] = 1 }, memcached.array_mt) })
      assert.is_nil(bytes)
      assert.matches("sparse array (largest index 1000000, 1 elements; see memcached.array) at value.a", err, 1, true)
      -- with a length given, it is what the user asked for
      assert.equal(1000000, #assert(decode(assert(encode(memcached.array({ [1000000] = 1 }))))))
    end)

    it("lets a user set the length: trailing nils and empty arrays", function()
      local t = { "a", nil, "c" }
      assert.equal(t, memcached.array(t, 5))
      assert.equal(memcached.array_mt, getmetatable(t))
      assert.equal(5, memcached.array_length(t))
      assert.equal("\149\161a\192\161c\192\192", encode(t))
      -- default: the largest positive integer key
      local u = memcached.array({ [3] = true, x = "ignored" })
      assert.equal(3, memcached.array_length(u))
      assert.equal("\147\192\192\195", encode(u))
      assert.equal("\144", encode(memcached.array({})))
      assert.equal("\146\192\192", encode(memcached.array({}, 2)))
      -- a map_mt table may be turned into an array
      assert.equal("\145\001", encode(memcached.array(setmetatable({ 1 }, memcached.map_mt))))
      -- the length never hides an element
      assert.has_error(function() memcached.array({ 1, 2, 3 }, 2) end)
      assert.has_error(function() memcached.array({}, -1) end)
      assert.has_error(function() memcached.array({}, 1.5) end)
      assert.has_error(function() memcached.array(setmetatable({}, {})) end)
      assert.has_error(function() memcached.array("x") end)
      assert.is_nil(memcached.array_length({}))
      -- a recorded length goes with its table
      local weak = setmetatable({}, { __mode = "k" })
      weak[memcached.array({}, 3)] = true
      collectgarbage()
      collectgarbage()
      assert.is_nil(next(weak))
    end)

    it("keeps every element through get and compare_and_swap", function()
      local srv = H.start_memcached()
      local mc = assert(memcached.new(srv.addr))
      -- reads items as bytes: its msgpack flag is one nobody uses
      local raw = assert(memcached.new { servers = { srv.addr }, msgpack_flag = 0x7777 })
      local ok, err = pcall(function()
        local patterns = 0
        for n = 2, 15 do
          -- every pattern of the short arrays, a spread of the long ones
          local step = n <= 8 and 1 or 97
          for mask = 0, 2 ^ n - 1, step do
            local bytes = nil_pattern(n, mask)
            assert(mc:set_raw_data("holes", bytes, 0, nil, 1))
            local v, cas = mc:get("holes")
            assert(type(v) == "table", cas)
            assert(mc:compare_and_swap("holes", v, cas))
            local back, _, flags = raw:get("holes")
            assert(flags == 1 and back == bytes, "pattern " .. n .. "/" .. mask .. " changed")
            patterns = patterns + 1
          end
        end
        assert(patterns > 1000)
      end)
      mc:close()
      raw:close()
      srv.kill9()
      assert(ok, err)
    end)
  end)
  describe("decoded size budget", function()
    -- n bytes of msgpack: an array holding n - 5 empty arrays, which cost
    -- a 56-byte table and a 16-byte slot each in Lua
    local function empty_arrays(n)
      return "\221" .. H.pack_be(">I4", n - 5) .. string.rep("\144", n - 5)
    end

    local function grown_kb(fn)
      collectgarbage()
      collectgarbage()
      local before = collectgarbage("count")
      local r = H.pack(fn())
      local grown = collectgarbage("count") - before
      return grown, H.unpack(r, 1, r.n)
    end

    it("refuses an 8 MB item of nested empty arrays before building it", function()
      local bomb = empty_arrays(8 * 1024 * 1024)
      local grown, v, err = grown_kb(function() return decode(bomb) end)
      -- plain asserts: busted would print the whole decoded table
      assert(v == nil, "the bomb decoded")
      assert(err and err:find("decoded size budget", 1, true), err)
      -- it would have taken ~576 MB
      assert.is_true(grown < 1024, "Lua memory grew by " .. grown .. " KB")
      -- arrays of empty maps, and arrays nested one inside the next (the
      -- msgpack-c depth limit aside: 30 levels of 0x91, then empty), too
      local maps = "\221" .. H.pack_be(">I4", 2 ^ 22) .. string.rep("\128", 2 ^ 22)
      local deep = "\221" .. H.pack_be(">I4", 2 ^ 17) .. string.rep(string.rep("\145", 30) .. "\144", 2 ^ 17)
      for _, b in ipairs({ maps, deep }) do
        local v2, err2 = decode(b)
        assert(v2 == nil and err2 and err2:find("decoded size budget", 1, true), err2 or "decoded")
      end
    end)

    it("still decodes legitimate values, large ones included", function()
      local ints = {}
      for i = 1, 500000 do ints[i] = i % 128 end
      local maps = {}
      for i = 1, 100000 do maps["k" .. i] = "v" .. i end
      local nested = {}
      for i = 1, 30000 do nested[i] = { i, { a = i, b = "x" .. i }, { "s", "t" } } end
      local strings = {}
      for i = 1, 50000 do strings[i] = string.format("%08d", i) end
      local bools = {}
      for i = 1, 300000 do bools[i] = i % 3 == 0 end
      for _, v in ipairs({ ints, maps, nested, strings, bools }) do
        local bytes = assert(encode(v))
        local back, err = decode(bytes)
        assert(back, err)
        assert.same(v, back)
      end
      -- the fixed allowance: small values of the densest shapes decode
      assert(decode(empty_arrays(14000)))
      -- and the limit is where the budget says
      local budget = 48 * 200000 + 1024 * 1024
      local ok_n = 200000 -- 200000 bytes of 72 bytes each is over budget
      assert.is_true(72 * ok_n > budget)
      assert(decode(empty_arrays(ok_n)) == nil, "over budget, yet decoded")
      -- lists of small tuples (one and two elements, 44x and 35x) are
      -- ordinary data: they decode at any size
      local pairs_, ones = {}, {}
      for i = 1, 200000 do pairs_[i] = { i % 100, i % 7 }; ones[i] = { i % 100 } end
      for _, v in ipairs { pairs_, ones } do
        local back = assert(decode(assert(encode(v))))
        assert.same(v[199999], back[199999])
        assert.are.equal(#v, #back)
      end
    end)

    it("refuses such an item from a server with ERR_UNDECODABLE and loses nothing", function()
      local srv = H.start_memcached()
      local mc = assert(memcached.new(srv.addr))
      local ok, err = pcall(function()
        -- under memcached's 1 MB item limit, yet ~64 MB in Lua
        local bomb = empty_arrays(900 * 1000)
        assert(mc:set("before", { 1, 2, "three" }))
        assert(mc:set_raw_data("bomb", bomb, 0, nil, 1))
        local grown, v, gerr, detail = grown_kb(function() return mc:get("bomb") end)
        assert(v == nil, "the bomb decoded")
        assert.equal(memcached.ERR_UNDECODABLE, gerr)
        assert.matches("decoded size budget", detail, 1, true)
        assert.is_true(grown < 1024, "Lua memory grew by " .. grown .. " KB")
        -- the connection and the other keys are fine
        assert.same({ 1, 2, "three" }, (mc:get("before")))
        local got, merr, failures = mc:get_multi({ "before", "bomb" })
        assert.same({ 1, 2, "three" }, got.before)
        assert(got.bomb == nil, "the bomb decoded")
        assert.is_string(merr)
        assert.equal(memcached.ERR_UNDECODABLE, failures.bomb)
        assert(mc:set("after", "x"))
        assert.equal("x", (mc:get("after")))
      end)
      mc:close()
      srv.kill9()
      assert(ok, err)
    end)
  end)
end)
