-- Key placement: the same server as libmemcached (ketama), gomemcache
-- (modulo) and gomemcached for the same keys. No server is contacted.
local H = require "spec.helper"
local memcached = H.memcached

local function keys(n)
  local t = {}
  for i = 1, n do
    t[i] = (i % 3 == 0) and ("user:" .. i) or ("k" .. (i * 7919) .. "-" .. string.rep("x", i % 17))
  end
  return t
end

-- Runs spec/helpers/ketama_ref.bin (libmemcached) over the keys.
local function libmemcached_picks(specs, ks)
  local tmp = os.tmpname()
  local f = assert(io.open(tmp, "w"))
  f:write(table.concat(ks, "\n"), "\n")
  f:close()
  local args = {}
  for i, s in ipairs(specs) do
    args[i] = type(s) == "table" and (s[1] .. ":" .. s.weight) or s
  end
  local out = H.sh(H.root .. "spec/helpers/ketama_ref.bin " .. table.concat(args, " ") .. " < " .. tmp)
  os.remove(tmp)
  local picks = {}
  for line in out:gmatch("[^\n]+") do picks[#picks + 1] = tonumber(line) end
  return picks
end

local function addr_of(s) return type(s) == "table" and s[1] or s end

local function compare_with_libmemcached(specs)
  local ks = keys(10000)
  local ref = libmemcached_picks(specs, ks)
  assert.are.equal(#ks, #ref)
  local mc = assert(memcached.new { servers = specs, selector = "ketama" })
  local diff = 0
  for i, k in ipairs(ks) do
    if mc:pick_server(k) ~= addr_of(specs[ref[i] + 1]) then diff = diff + 1 end
  end
  mc:close()
  return diff
end

describe("ketama selector", function()
  it("picks the same server as libmemcached (KETAMA_WEIGHTED) for 10,000 keys over 3 servers", function()
    assert.are.equal(0, compare_with_libmemcached { "10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11212" })
  end)

  it("picks the same server as libmemcached for 10,000 keys over 10 weighted servers", function()
    local specs = {}
    for i = 1, 10 do
      specs[i] = { "10.1.0." .. i .. ":" .. (11210 + i), weight = (i % 3) + 1 }
    end
    specs[4] = "10.1.0.4:11211"
    assert.are.equal(0, compare_with_libmemcached(specs))
  end)

  it("is the default selector", function()
    local a = memcached.new("10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11212")
    local b = memcached.new { servers = { "10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11212" }, selector = "ketama" }
    for _, k in ipairs(keys(500)) do assert.are.equal(b:pick_server(k), a:pick_server(k)) end
  end)

  it("moves at most 1/11 of the keys plus 2 points when an 11th server joins 10", function()
    local specs = {}
    for i = 1, 10 do specs[i] = "10.2.0." .. i .. ":11211" end
    local mc = memcached.new { servers = specs }
    local ks = keys(10000)
    local before = {}
    for i, k in ipairs(ks) do before[i] = mc:pick_server(k) end
    assert.is_true(mc:add_server("10.2.0.11:11211"))
    local moved, to_new = 0, 0
    for i, k in ipairs(ks) do
      local now = mc:pick_server(k)
      if now ~= before[i] then
        moved = moved + 1
        if now == "10.2.0.11:11211" then to_new = to_new + 1 end
      end
    end
    print(string.format("\n  ketama: adding an 11th server moved %.2f%% of 10000 keys (limit %.2f%%)",
      moved / 100, (1 / 11 + 0.02) * 100))
    assert.is_true(moved / #ks <= 1 / 11 + 0.02)
    assert.is_true(moved > 0)
    assert.are.equal(moved, to_new) -- no key moves between the old servers
  end)
end)

describe("modulo selector", function()
  -- An independent crc32 (IEEE), bit by bit, to check gomemcache's rule;
  -- in arithmetic, since 5.1 and 5.2 have no bitwise operators.
  local function xor32(a, b)
    local r, bit = 0, 1
    for _ = 1, 32 do
      if a % 2 ~= b % 2 then r = r + bit end
      a, b, bit = math.floor(a / 2), math.floor(b / 2), bit * 2
    end
    return r
  end
  local function crc32(s)
    local crc = 0xffffffff
    for i = 1, #s do
      crc = xor32(crc, s:byte(i))
      for _ = 1, 8 do
        if crc % 2 == 1 then crc = xor32(math.floor(crc / 2), 0xedb88320) else crc = math.floor(crc / 2) end
      end
    end
    return xor32(crc, 0xffffffff)
  end

  it("computes crc32 as Go's crc32.ChecksumIEEE", function()
    assert.are.equal(0xcbf43926, crc32("123456789"))
  end)

  it("is crc32(key) % n over the list, duplicates counting twice (gomemcache's ServerList)", function()
    local list = { "10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.1:11211", "10.0.0.3:11211" }
    local mc = memcached.new { servers = list, selector = "modulo" }
    for _, k in ipairs(keys(2000)) do
      assert.are.equal(list[crc32(k) % #list + 1], mc:pick_server(k))
    end
  end)

  it("honours weights as repeated entries", function()
    local a = memcached.new { servers = { { "10.0.0.1:1", weight = 2 }, "10.0.0.2:1" }, selector = "modulo" }
    local b = memcached.new { servers = { "10.0.0.1:1", "10.0.0.1:1", "10.0.0.2:1" }, selector = "modulo" }
    for _, k in ipairs(keys(1000)) do assert.are.equal(b:pick_server(k), a:pick_server(k)) end
  end)
end)

describe("gomemcached selector", function()
  it("pins keys as gomemcached's ring does", function()
    local mc = memcached.new { servers = { "127.0.0.1:11211", "127.0.0.1:11212", "127.0.0.1:11213" },
                               selector = "gomemcached" }
    local want = { foo = 11211, bar = 11212, hello = 11213, ["user:1"] = 11212, q630 = 11211, w2947 = 11213 }
    for k, port in pairs(want) do
      assert.are.equal("127.0.0.1:" .. port, mc:pick_server(k))
    end
  end)
end)

describe("custom selectors", function()
  it("takes a function (new_from_selector)", function()
    local mc = memcached.new_from_selector(function(key)
      return (#key % 2 == 0) and "10.0.0.1:11211" or "10.0.0.2:11211"
    end)
    assert.are.equal("10.0.0.1:11211", mc:pick_server("ab"))
    assert.are.equal("10.0.0.2:11211", mc:pick_server("abc"))
  end)

  it("takes an object with pick_server (gomemcache's ServerSelector)", function()
    local sel = { seen = 0 }
    function sel:pick_server(key) self.seen = self.seen + 1; return "10.0.0.9:11211" end
    local mc = memcached.new_from_selector(sel)
    assert.are.equal("10.0.0.9:11211", mc:pick_server("x"))
    assert.are.equal(1, sel.seen)
  end)

  it("reports a selector that fails as ERR_NO_SERVERS", function()
    local mc = memcached.new_from_selector(function() error("boom") end)
    local v, err, detail = mc:get("k")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_NO_SERVERS, err)
    assert.truthy(detail:find("boom", 1, true))
  end)

  it("passes the C selector's own checks (crc32, md5, pins, dead servers)", function()
    local out = H.sh(H.root .. "spec/c/test_select.bin " .. H.root .. "spec/helpers/ketama_ref.bin 2>&1")
    local passed = out:match("(%d+) passed, 0 failed%s*$")
    assert.truthy(passed, out)
    assert.is_true(tonumber(passed) > 100)
  end)
end)
