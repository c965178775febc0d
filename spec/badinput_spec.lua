-- Bad input: a clear error, nothing sent, nothing lost.
local H = require "spec.helper"
local memcached = H.memcached

describe("bad input", function()
  local srv, mc

  setup(function()
    srv = H.start_memcached { args = "-I 1m" }
    mc = assert(memcached.new { servers = { srv.addr }, timeout = 1 })
  end)

  teardown(function()
    mc:close()
    srv.kill9()
  end)

  -- The server's request counters: unchanged means nothing was sent.
  local counters = { "cmd_get", "cmd_set", "cmd_touch", "get_misses", "delete_misses",
                     "delete_hits", "incr_misses", "decr_misses", "cas_misses", "touch_misses" }
  local function snapshot()
    local st = assert(mc:stats())[srv.addr]
    local t = {}
    for _, name in ipairs(counters) do t[name] = assert(st[name], name) end
    return t
  end

  describe("malformed keys", function()
    local bad = {
      empty = "",
      ["251 bytes"] = string.rep("k", 251),
      space = "a b",
      newline = "a\nb",
      nul = "a\0b",
      del = "a\127b",
      tab = "a\tb",
    }
    -- every method that takes a key, with valid other arguments
    local calls = {
      get = {}, set = { 1 }, add = { 1 }, replace = { 1 }, set_raw_data = { "v" },
      add_raw_data = { "v" }, replace_raw_data = { "v" }, append = { "v" }, prepend = { "v" },
      compare_and_swap = { 1, 5 }, delete = {}, delete_lock = { 5 }, increment = { 1, 0 },
      decrement = { 1, 0 }, touch_atomic_value = {}, touch = { 5 }, get_and_touch = { 5 },
    }

    for what, k in pairs(bad) do
      it("(" .. what .. ") are ERR_MALFORMED_KEY everywhere, nothing sent", function()
        local before = snapshot()
        for name, a in pairs(calls) do
          local r = H.pack(mc[name](mc, k, H.unpack(a)))
          assert.are.equal(nil, r[1], name)
          assert.are.equal(memcached.ERR_MALFORMED_KEY, r[2], name)
          -- the table form too
          local t = { key = k, value = a[1], cas = 5, delta = 1, seconds = 5, expiration = 1 }
          if name == "set_raw_data" or name == "add_raw_data" or name == "replace_raw_data"
              or name == "append" or name == "prepend" then
            t.value = "v"
          end
          r = H.pack(mc[name](mc, t))
          assert.are.equal(nil, r[1], name .. "{}")
          assert.are.equal(memcached.ERR_MALFORMED_KEY, r[2], name .. "{}")
        end
        local r, err = mc:get_multi { "fine", k }
        assert.is_nil(r)
        assert.are.equal(memcached.ERR_MALFORMED_KEY, err)
        assert.are.equal(memcached.ERR_MALFORMED_KEY, select(2, mc:pick_server(k)))
        assert.are.same(before, snapshot())
      end)
    end

    it("250 bytes is fine", function()
      local k = string.rep("k", 250)
      assert.are.equal("integer", H.mtype(mc:set(k, "long")))
      assert.are.equal("long", (mc:get(k)))
      assert.are.same({ [k] = "long" }, (mc:get_multi { k }))
    end)

    it("non-ASCII bytes (UTF-8) are fine", function()
      local k = "cl\195\169-\226\130\172"
      assert.are.equal("integer", H.mtype(mc:set(k, "utf8")))
      assert.are.equal("utf8", (mc:get(k)))
    end)
  end)

  describe("wrong argument types raise, naming the argument", function()
    it("a non-string key", function()
      for _, k in ipairs { 42, true, {}, print } do
        assert.has_error(function() mc:get(k) end)
        local ok, msg = pcall(mc.get, mc, k)
        assert.is_false(ok)
        assert.is_truthy(msg:match("key"), msg)
        ok, msg = pcall(mc.set, mc, k, 1)
        assert.is_false(ok)
        assert.is_truthy(msg:match("key"), msg)
        ok, msg = pcall(mc.delete, mc, k)
        assert.is_false(ok)
        assert.is_truthy(msg:match("key"), msg)
      end
      local ok, msg = pcall(mc.get, mc)
      assert.is_false(ok)
      assert.is_truthy(msg:match("key"), msg)
      ok, msg = pcall(mc.set, mc, { key = 5, value = 1 })
      assert.is_false(ok)
      assert.is_truthy(msg:match("key"), msg)
      ok, msg = pcall(mc.get_multi, mc, { "a", 7 })
      assert.is_false(ok)
      assert.is_truthy(msg:match("key"), msg)
      ok, msg = pcall(mc.get_multi, mc, "a")
      assert.is_false(ok)
      assert.is_truthy(msg:match("table expected"), msg)
    end)

    it("a negative expiration", function()
      local ok, msg = pcall(mc.set, mc, "k", 1, -1)
      assert.is_false(ok)
      assert.is_truthy(msg:match("expiration"), msg)
      ok, msg = pcall(mc.touch, mc, "k", -5)
      assert.is_false(ok)
      assert.is_truthy(msg:match("expiration"), msg)
      ok, msg = pcall(mc.get_and_touch, mc, { key = "k", expiration = -5 })
      assert.is_false(ok)
      assert.is_truthy(msg:match("expiration"), msg)
      ok, msg = pcall(mc.increment, mc, "k", 1, 0, -1)
      assert.is_false(ok)
      assert.is_truthy(msg:match("expiration"), msg)
    end)

    it("a negative delta or initial value", function()
      local ok, msg = pcall(mc.increment, mc, "k", -1)
      assert.is_false(ok)
      assert.is_truthy(msg:match("delta"), msg)
      ok, msg = pcall(mc.decrement, mc, { key = "k", delta = -3 })
      assert.is_false(ok)
      assert.is_truthy(msg:match("delta"), msg)
      ok, msg = pcall(mc.increment, mc, "k", 1, -1)
      assert.is_false(ok)
      assert.is_truthy(msg:match("initial"), msg)
    end)

    it("a non-integer number", function()
      local ok, msg = pcall(mc.set, mc, "k", 1, 1.5)
      assert.is_false(ok)
      assert.is_truthy(msg:match("expiration"), msg)
      ok, msg = pcall(mc.increment, mc, "k", "1")
      assert.is_false(ok)
      assert.is_truthy(msg:match("delta"), msg)
    end)

    it("a missing value or seconds", function()
      local ok, msg = pcall(mc.set, mc, "k")
      assert.is_false(ok)
      assert.is_truthy(msg:match("value"), msg)
      ok, msg = pcall(mc.delete_lock, mc, "k")
      assert.is_false(ok)
      assert.is_truthy(msg:match("seconds"), msg)
      ok, msg = pcall(mc.delete_lock, mc, "k", -1)
      assert.is_false(ok)
      assert.is_truthy(msg:match("seconds"), msg)
    end)

    it("raising left the client usable", function()
      pcall(mc.set, mc, 1, 1)
      pcall(mc.set, mc, "k", 1, -1)
      assert.are.equal("integer", H.mtype(mc:set("after-raise", "ok")))
      assert.are.equal("ok", (mc:get("after-raise")))
    end)
  end)

  describe("a value over the server's item size", function()
    it("is ERR_VALUE_TOO_LARGE and the client keeps working", function()
      mc:set("neighbour", "untouched")
      mc:set("big", "previous")
      local big = string.rep("x", 2 * 1024 * 1024)
      local v, err = mc:set("big", big)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_VALUE_TOO_LARGE, err)
      v, err = mc:set_raw_data("big2", big)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_VALUE_TOO_LARGE, err)
      -- the same client, right after
      assert.are.equal("integer", H.mtype(mc:set("small", "fits")))
      assert.are.equal("fits", (mc:get("small")))
      assert.are.equal("untouched", (mc:get("neighbour")))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("big2")))
      assert.is_true(mc:ping())
    end)

    it("drops the previous value under that key, as memcached does", function()
      -- memcached unlinks the old item when a too-large set replaces it
      -- (no stale data); the client must report that, not a corrupt value.
      local v, err = mc:get("big")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
    end)
  end)

  describe("an item over the client's max_value_size", function()
    -- The reader refuses the oversized reply (right); but the item is data,
    -- not a server fault: it must not take the healthy server down for
    -- every other key.
    it("is an error for that key only; the server keeps serving", function()
      local c = assert(memcached.new { servers = { srv.addr }, timeout = 1, max_value_size = 1024 })
      assert.are.equal("integer", H.mtype(mc:set_raw_data("over-cap", string.rep("x", 4000))))
      for _ = 1, 3 do
        local v, err = c:get("over-cap")
        assert.is_nil(v)
        assert.is_truthy(err == memcached.ERR_VALUE_TOO_LARGE or err == memcached.ERR_PROTOCOL, err)
      end
      local r, err = c:get_multi { "over-cap" }
      assert.are.same({}, r)
      assert.is_truthy(err)
      assert.are.equal("integer", H.mtype(c:set("under-cap", "small")))
      assert.are.equal("small", (c:get("under-cap")))
      c:close()
    end)
  end)

  describe("unencodable values", function()
    local deep = {}
    local t = deep
    for _ = 1, 100 do t[1] = {}; t = t[1] end
    local cyclic = { a = {} }
    cyclic.a.back = cyclic
    local cases = {
      ["a function"] = print,
      ["a coroutine"] = coroutine.create(function() end),
      ["userdata"] = io.stdout,
      ["a cyclic table"] = cyclic,
      ["100 levels of nesting"] = deep,
      ["a function inside a table"] = { ok = 1, f = function() end },
      ["a function as a table key"] = { [print] = 1 },
    }

    for what, value in pairs(cases) do
      it("(" .. what .. ") is ERR_UNENCODABLE, nothing stored", function()
        local before = snapshot()
        for _, name in ipairs { "set", "add", "replace" } do
          local r, err, detail = mc[name](mc, "unenc-new", value)
          assert.is_nil(r, name)
          assert.are.equal(memcached.ERR_UNENCODABLE, err, name)
          assert.are.equal("string", type(detail), name)
          assert.is_true(#detail > 0)
        end
        -- nothing of the three reached the server
        assert.are.equal(tonumber(before.cmd_set), tonumber(snapshot().cmd_set))
        mc:set("unenc-old", "old value")
        before = snapshot()
        local r, err = mc:set("unenc-old", value)
        assert.is_nil(r)
        assert.are.equal(memcached.ERR_UNENCODABLE, err)
        local _, cas = mc:get("unenc-old")
        r, err = mc:compare_and_swap("unenc-old", value, cas)
        assert.is_nil(r)
        assert.are.equal(memcached.ERR_UNENCODABLE, err)
        -- one get above, nothing else reached the server
        local after = snapshot()
        assert.are.equal(tonumber(before.cmd_set), tonumber(after.cmd_set))
        assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("unenc-new")))
        assert.are.equal("old value", (mc:get("unenc-old")))
      end)
    end
  end)

  describe("a closed client", function()
    it("answers ERR_CLIENT_CLOSED and sends nothing", function()
      local c = assert(memcached.new(srv.addr))
      c:close()
      local before = snapshot()
      for _, call in ipairs {
        function() return c:get("k") end,
        function() return c:set("k", 1) end,
        function() return c:get_multi { "k" } end,
        function() return c:delete("k") end,
        function() return c:increment("k", 1, 0) end,
        function() return c:ping() end,
        function() return c:stats() end,
      } do
        local r, err = call()
        assert.is_nil(r)
        assert.are.equal(memcached.ERR_CLIENT_CLOSED, err)
      end
      assert.are.same(before, snapshot())
    end)
  end)
end)

describe("the key rule", function()
  -- pick_server applies the same check as every method, without a server
  local mc = memcached.new("127.0.0.1:1")
  local function accepted(k) return select(2, mc:pick_server(k)) ~= memcached.ERR_MALFORMED_KEY end

  it("refuses every control byte, space and DEL at every position, and nothing else", function()
    for len = 1, 20 do
      for pos = 1, len do
        for b = 0, 255 do
          local k = ("a"):rep(pos - 1) .. string.char(b) .. ("a"):rep(len - pos)
          assert.are.equal(not (b <= 0x20 or b == 0x7f), accepted(k))
        end
      end
    end
  end)

  it("agrees with the byte-by-byte rule on random keys mixing high bytes", function()
    math.randomseed(7)
    local pool = { 0x00, 0x01, 0x1f, 0x20, 0x21, 0x41, 0x7e, 0x7f, 0x80, 0x81, 0xa0, 0xfe, 0xff }
    for _ = 1, 20000 do
      local len, bytes, ok = math.random(1, 40), {}, true
      for i = 1, len do
        local b = (math.random(3) == 1) and pool[math.random(#pool)] or math.random(0, 255)
        if b <= 0x20 or b == 0x7f then ok = false end
        bytes[i] = string.char(b)
      end
      assert.are.equal(ok, accepted(table.concat(bytes)))
    end
  end)
end)
