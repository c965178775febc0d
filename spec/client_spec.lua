-- The client's documented interface against real memcached servers:
-- success and failure paths of every method, both argument forms, values.
local H = require "spec.helper"
local memcached = H.memcached

local seq = 0
local function key(prefix)
  seq = seq + 1
  return (prefix or "k") .. "-" .. seq
end

-- Bytes as stored, read through a client whose msgpack flag nobody uses.
local function raw_client(addr)
  return assert(memcached.new { servers = { addr }, msgpack_flag = 424242 })
end

describe("client", function()
  local srv, other, mc

  setup(function()
    srv = H.start_memcached()
    other = H.start_memcached() -- a second server; flushed at will
    mc = assert(memcached.new(srv.addr))
  end)

  teardown(function()
    mc:close()
    -- SIGKILL: memcached takes up to a second to act on SIGTERM
    srv.kill9()
    other.kill9()
  end)

  describe("new", function()
    it("takes servers as varargs", function()
      local c = assert(memcached.new(srv.addr, other.addr))
      local seen = {}
      for i = 1, 40 do seen[c:pick_server("spread" .. i)] = true end
      assert.are.same({ [srv.addr] = true, [other.addr] = true }, seen)
      c:close()
    end)

    it("takes an options table", function()
      local c = assert(memcached.new { servers = { srv.addr }, timeout = 0.5, max_idle = 1,
                                       failure_limit = 3, retry_timeout = 0.5 })
      local k = key()
      assert.is_true(H.mtype(c:set(k, "opt")) == "integer")
      assert.are.equal("opt", (c:get(k)))
      c:close()
    end)

    it("raises on an unknown option, naming it", function()
      assert.has_error(function() memcached.new { servers = { srv.addr }, timout = 1 } end,
        "unknown option 'timout'")
    end)

    it("returns nil, ERR_BAD_SERVER for a bad address", function()
      local c, err, detail = memcached.new("127.0.0.1:99999")
      assert.is_nil(c)
      assert.are.equal(memcached.ERR_BAD_SERVER, err)
      assert.are.equal("string", type(detail))
      c, err = memcached.new { servers = { srv.addr, "[::1" } }
      assert.is_nil(c)
      assert.are.equal(memcached.ERR_BAD_SERVER, err)
    end)

    it("without servers answers ERR_NO_SERVERS", function()
      local c = assert(memcached.new())
      local v, err = c:get("x")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NO_SERVERS, err)
      c:close()
    end)
  end)

  describe("get", function()
    it("returns value, cas and flags", function()
      local k = key()
      local cas = mc:set(k, "hello")
      local v, cas2, flags = mc:get(k)
      assert.are.equal("hello", v)
      assert.are.equal(cas, cas2)
      assert.are.equal("integer", H.mtype(cas2))
      assert.are.equal(1, flags)
    end)

    it("returns nil, ERR_CACHE_MISS on a miss", function()
      local v, err = mc:get(key("missing"))
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
    end)

    it("takes the table form", function()
      local k = key()
      mc:set(k, 17)
      assert.are.equal(17, (mc:get { key = k }))
    end)
  end)

  describe("get_multi", function()
    it("returns hits, leaves misses out", function()
      local a, b, c = key(), key(), key()
      mc:set(a, "A")
      mc:set(b, { 1, 2 })
      local r, err = mc:get_multi { a, b, c }
      assert.is_nil(err)
      assert.are.same({ [a] = "A", [b] = { 1, 2 } }, r)
    end)

    it("handles duplicate keys", function()
      local a, b = key(), key()
      mc:set(a, 1)
      mc:set(b, 2)
      local r = mc:get_multi { a, a, b, a }
      assert.are.same({ [a] = 1, [b] = 2 }, r)
    end)

    it("returns an empty table for an empty list", function()
      local r, err = mc:get_multi {}
      assert.are.same({}, r)
      assert.is_nil(err)
    end)

    it("reports an undecodable value in the failures table, returns the rest", function()
      local good, bad = key(), key()
      mc:set(good, "fine")
      mc:set_raw_data(bad, "\193", 0, 0, 1)
      local r, err, failures = mc:get_multi { good, bad }
      assert.are.same({ [good] = "fine" }, r)
      assert.are.equal(memcached.ERR_UNDECODABLE, err)
      assert.are.same({ [bad] = memcached.ERR_UNDECODABLE }, failures)
    end)
  end)

  describe("set/add/replace", function()
    it("set returns the new cas, a stale cas is ERR_CAS_CONFLICT", function()
      local k = key()
      local cas1 = mc:set(k, "v1")
      local cas2 = mc:set(k, "v2", 0, cas1)
      assert.are.equal("integer", H.mtype(cas2))
      assert.are_not.equal(cas1, cas2)
      local v, err = mc:set(k, "v3", 0, cas1)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CAS_CONFLICT, err)
      assert.are.equal("v2", (mc:get(k)))
    end)

    it("set with a cas on a missing key is ERR_NOT_STORED", function()
      local v, err = mc:set(key(), "x", 0, 12345)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, err)
    end)

    it("add stores a new key, ERR_NOT_STORED on an existing one", function()
      local k = key()
      assert.are.equal("integer", H.mtype(mc:add(k, "first")))
      local v, err = mc:add(k, "second")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, err)
      assert.are.equal("first", (mc:get(k)))
    end)

    it("replace changes an existing key, ERR_NOT_STORED on a missing one", function()
      local k = key()
      local v, err = mc:replace(k, "x")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, err)
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
      mc:set(k, "old")
      assert.are.equal("integer", H.mtype(mc:replace(k, "new")))
      assert.are.equal("new", (mc:get(k)))
    end)

    it("take the table form", function()
      local k1, k2 = key(), key()
      local cas = mc:set { key = k1, value = { a = 1 }, expiration = 0 }
      assert.are.same({ a = 1 }, (mc:get(k1)))
      assert.are.equal("integer", H.mtype(mc:set { key = k1, value = "c", cas = cas }))
      local v, err = mc:set { key = k1, value = "d", cas = cas }
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CAS_CONFLICT, err)
      assert.are.equal("integer", H.mtype(mc:add { key = k2, value = true }))
      assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:add { key = k2, value = 1 }))
      assert.are.equal("integer", H.mtype(mc:replace { key = k2, value = false }))
      assert.are.equal(false, (mc:get(k2)))
      assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:replace { key = key(), value = 1 }))
    end)

    it("a flags field other than the msgpack flag stores the value raw", function()
      local k = key()
      mc:set { key = k, value = "raw bytes", flags = 5 }
      local v, _, flags = mc:get(k)
      assert.are.equal("raw bytes", v)
      assert.are.equal(5, flags)
      mc:add { key = key(), value = "a", flags = 6 }
      mc:replace { key = k, value = "r", flags = 9 }
      v, _, flags = mc:get(k)
      assert.are.equal("r", v)
      assert.are.equal(9, flags)
      -- positional flags too
      mc:set(k, "p", 0, 0, 3)
      assert.are.same({ "p", 3 }, { (mc:get(k)), select(3, mc:get(k)) })
      -- the msgpack flag itself means msgpack
      mc:set { key = k, value = { 1 }, flags = 1 }
      assert.are.same({ 1 }, (mc:get(k)))
    end)

    it("a raw flags value must be a string", function()
      assert.has_error(function() mc:set { key = key(), value = { 1 }, flags = 5 } end,
        "bad argument #2 (value): string expected for raw data, got table")
    end)
  end)

  describe("*_raw_data", function()
    it("store bytes untouched with their flags", function()
      local k = key()
      local bytes = "\0\1\255 raw\r\n"
      assert.are.equal("integer", H.mtype(mc:set_raw_data(k, bytes, 0, 0, 77)))
      local v, _, flags = mc:get(k)
      assert.are.equal(bytes, v)
      assert.are.equal(77, flags)
      assert.are.equal(bytes, (raw_client(srv.addr):get(k)))
    end)

    it("without flags store flags 0", function()
      local k = key()
      mc:set_raw_data(k, "plain")
      assert.are.same({ "plain", 0 }, { (mc:get(k)), select(3, mc:get(k)) })
    end)

    it("add_raw_data and replace_raw_data follow add/replace", function()
      local k = key()
      assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:replace_raw_data(k, "x")))
      assert.are.equal("integer", H.mtype(mc:add_raw_data(k, "one", 0, 0, 2)))
      assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:add_raw_data(k, "two")))
      assert.are.equal("integer", H.mtype(mc:replace_raw_data(k, "three", 0, 0, 4)))
      local v, _, flags = mc:get(k)
      assert.are.equal("three", v)
      assert.are.equal(4, flags)
    end)

    it("take the table form", function()
      local k = key()
      mc:set_raw_data { key = k, value = "t", flags = 8 }
      assert.are.same({ "t", 8 }, { (mc:get(k)), select(3, mc:get(k)) })
      mc:replace_raw_data { key = k, value = "u", flags = 9 }
      assert.are.same({ "u", 9 }, { (mc:get(k)), select(3, mc:get(k)) })
      local k2 = key()
      mc:add_raw_data { key = k2, value = "w" }
      assert.are.same({ "w", 0 }, { (mc:get(k2)), select(3, mc:get(k2)) })
    end)

    it("raise when the value is not a string", function()
      assert.has_error(function() mc:set_raw_data(key(), 42) end,
        "bad argument #2 (value): string expected for raw data, got number")
      assert.has_error(function() mc:add_raw_data(key(), {}) end)
      assert.has_error(function() mc:replace_raw_data(key(), true) end)
    end)
  end)

  describe("append/prepend", function()
    it("add raw bytes around the value", function()
      local k = key()
      mc:set_raw_data(k, "mid", 0, 0, 3)
      assert.are.equal("integer", H.mtype(mc:append(k, "\0end")))
      assert.are.equal("integer", H.mtype(mc:prepend(k, "start\255")))
      local v, _, flags = mc:get(k)
      assert.are.equal("start\255mid\0end", v)
      assert.are.equal(3, flags)
    end)

    it("on a missing key are ERR_NOT_STORED", function()
      local v, err = mc:append(key(), "x")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, err)
      v, err = mc:prepend(key(), "x")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, err)
    end)

    it("take the table form", function()
      local k = key()
      mc:set_raw_data(k, "b")
      mc:append { key = k, value = "c" }
      mc:prepend { key = k, value = "a" }
      assert.are.equal("abc", (mc:get(k)))
    end)

    it("raise on a non-string value", function()
      assert.has_error(function() mc:append(key(), 1) end,
        "bad argument #2 (bytes): string expected, got number")
    end)
  end)

  describe("compare_and_swap", function()
    it("swaps when the cas matches", function()
      local k = key()
      mc:set(k, "a")
      local _, cas = mc:get(k)
      local ncas = mc:compare_and_swap(k, "b", cas)
      assert.are.equal("integer", H.mtype(ncas))
      local v, cas2 = mc:get(k)
      assert.are.equal("b", v)
      assert.are.equal(ncas, cas2)
    end)

    it("is ERR_CAS_CONFLICT when the item changed", function()
      local k = key()
      mc:set(k, "a")
      local _, cas = mc:get(k)
      mc:set(k, "changed")
      local v, err = mc:compare_and_swap(k, "b", cas)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CAS_CONFLICT, err)
      assert.are.equal("changed", (mc:get(k)))
    end)

    it("is ERR_NOT_STORED when the item vanished", function()
      local k = key()
      mc:set(k, "a")
      local _, cas = mc:get(k)
      mc:delete(k)
      local v, err = mc:compare_and_swap(k, "b", cas)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, err)
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
    end)

    it("takes the table form", function()
      local k = key()
      mc:set(k, 1)
      local _, cas = mc:get(k)
      assert.are.equal("integer", H.mtype(mc:compare_and_swap { key = k, value = 2, cas = cas }))
      assert.are.equal(2, (mc:get(k)))
      assert.are.equal(memcached.ERR_CAS_CONFLICT,
        select(2, mc:compare_and_swap { key = k, value = 3, cas = cas }))
    end)

    it("raises without a cas", function()
      assert.has_error(function() mc:compare_and_swap(key(), 1, 0) end)
      assert.has_error(function() mc:compare_and_swap { key = key(), value = 1 } end)
    end)
  end)

  describe("delete", function()
    it("returns true, then a miss", function()
      local k = key()
      mc:set(k, 1)
      assert.is_true(mc:delete(k))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
      local v, err = mc:delete(k)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
    end)

    it("takes the table form", function()
      local k = key()
      mc:set(k, 1)
      assert.is_true(mc:delete { key = k })
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:delete { key = k }))
    end)
  end)

  describe("delete_lock", function()
    it("hides the key and blocks add while the lock lives", function()
      local k, other = key(), key()
      mc:set(k, "v")
      mc:set(other, "o")
      assert.is_true(mc:delete_lock(k, 30))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
      local r, err = mc:get_multi { k, other }
      assert.is_nil(err)
      assert.are.same({ [other] = "o" }, r)
      local v, aerr = mc:add(k, "new")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NOT_STORED, aerr)
    end)

    it("on a missing key is ERR_CACHE_MISS", function()
      local v, err = mc:delete_lock(key(), 10)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
    end)

    it("with 0 seconds is a plain delete", function()
      local k = key()
      mc:set(k, "v")
      assert.is_true(mc:delete_lock(k, 0))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
      assert.are.equal("integer", H.mtype(mc:add(k, "again")))
    end)

    it("takes the table form", function()
      local k = key()
      mc:set(k, "v")
      assert.is_true(mc:delete_lock { key = k, seconds = 30 })
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
      assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:add(k, 1)))
    end)
  end)

  -- The lock is an item only this client recognises (README: delete_lock).
  -- Guaranteed: get/get_multi miss and add fails while it lives; counters
  -- see a miss. Not guaranteed (documented): replace/set overwrite it,
  -- append/prepend keep it (still hidden), touch moves its expiry.
  describe("delete_lock while the lock lives", function()
    local function locked()
      local k = key("locked")
      mc:set(k, "v")
      assert.is_true(mc:delete_lock(k, 30))
      return k
    end

    it("lets replace overwrite the lock, as documented", function()
      local k = locked()
      assert.are.equal("integer", H.mtype(mc:replace(k, "new")))
      assert.are.equal("new", (mc:get(k)))
    end)

    it("never exposes the lock's bytes after append/prepend", function()
      local k = locked()
      assert.are.equal("integer", H.mtype(mc:append(k, "tail")))
      assert.are.equal("integer", H.mtype(mc:prepend(k, "head")))
      local v, err = mc:get(k)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
      local got = mc:get_multi { k }
      assert.is_nil(got[k])
      assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:add(k, 1)))
    end)

    it("increment, decrement and touch_atomic_value see a miss", function()
      local k = locked()
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:increment(k, 1)))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:decrement(k, 1)))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:touch_atomic_value(k)))
      -- a real non-numeric item is still ERR_NON_NUMERIC
      local plain = key("plain")
      mc:set_raw_data(plain, "abc")
      assert.are.equal(memcached.ERR_NON_NUMERIC, select(2, mc:increment(plain, 1)))
    end)

    it("set still works (only add and replace are refused)", function()
      local k = locked()
      assert.are.equal("integer", H.mtype(mc:set(k, "set over lock")))
      assert.are.equal("set over lock", (mc:get(k)))
    end)
  end)

  describe("increment/decrement", function()
    it("count a raw decimal value", function()
      local k = key()
      mc:set_raw_data(k, "10")
      local v, cas = mc:increment(k, 5)
      assert.are.equal(15, v)
      assert.are.equal("integer", H.mtype(cas))
      assert.are.equal(12, (mc:decrement(k, 3)))
      assert.are.equal("12", (mc:get(k)))
    end)

    it("with an initial value create a missing key", function()
      local k, k2 = key(), key()
      assert.are.equal(100, (mc:increment(k, 5, 100)))
      assert.are.equal(105, (mc:increment(k, 5, 100)))
      assert.are.equal(7, (mc:decrement(k2, 1, 7)))
      assert.are.equal(6, (mc:decrement(k2, 1, 7)))
    end)

    it("without an initial value miss on a missing key", function()
      local k = key()
      local v, err = mc:increment(k, 1)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
      v, err = mc:decrement(k, 1)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
    end)

    it("refuse a non-numeric value with ERR_NON_NUMERIC", function()
      local k, k2 = key(), key()
      mc:set_raw_data(k, "abc")
      local v, err = mc:increment(k, 1)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_NON_NUMERIC, err)
      mc:set(k2, 5) -- msgpack bytes are not a decimal number
      assert.are.equal(memcached.ERR_NON_NUMERIC, select(2, mc:decrement(k2, 1)))
      assert.are.equal("abc", (mc:get(k)))
    end)

    it("decrement floors at 0", function()
      local k = key()
      mc:set_raw_data(k, "5")
      assert.are.equal(0, (mc:decrement(k, 10)))
      assert.are.equal(0, (mc:decrement(k, 1)))
    end)

    it("take the table form", function()
      local k = key()
      assert.are.equal(3, (mc:increment { key = k, delta = 1, initial = 3, expiration = 0 }))
      assert.are.equal(4, (mc:increment { key = k, delta = 1 }))
      assert.are.equal(2, (mc:decrement { key = k, delta = 2 }))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:decrement { key = key(), delta = 2 }))
    end)
  end)

  describe("touch_atomic_value", function()
    it("returns the counter without changing it", function()
      local k = key()
      mc:set_raw_data(k, "41")
      assert.are.equal(41, mc:touch_atomic_value(k))
      assert.are.equal(41, mc:touch_atomic_value { key = k })
      assert.are.equal("41", (mc:get(k)))
    end)

    it("misses on a missing key", function()
      local v, err = mc:touch_atomic_value(key())
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CACHE_MISS, err)
    end)
  end)

  describe("touch/get_and_touch", function()
    it("miss on a missing key", function()
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:touch(key(), 10)))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get_and_touch(key(), 10)))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:touch { key = key(), expiration = 10 }))
    end)

    it("get_and_touch returns value, cas, flags", function()
      local k = key()
      local cas = mc:set(k, { x = 1 })
      local v, cas2, flags = mc:get_and_touch(k, 100)
      assert.are.same({ x = 1 }, v)
      assert.are.equal(cas, cas2)
      assert.are.equal(1, flags)
      assert.are.same({ x = 1 }, (mc:get_and_touch { key = k, expiration = 100 }))
    end)

    it("really apply the expiry (with delete_lock's and flush's delays)", function()
      local t1, t2, t3, keep = key(), key(), key(), key()
      local lk, fk = key(), key()
      mc:set(t1, "a")
      mc:set(t2, "b")
      mc:set(t3, "c")
      mc:set(keep, "d")
      mc:set(lk, "l")
      assert.is_true(mc:touch(t1, 1))
      assert.is_true(mc:touch { key = t3, expiration = 1 })
      assert.are.equal("b", (mc:get_and_touch(t2, 1)))
      assert.is_true(mc:touch(keep, 100))
      assert.is_true(mc:delete_lock(lk, 1))
      -- flush with a delay, on a server of its own
      local fc = assert(memcached.new(other.addr))
      fc:set(fk, "f")
      assert.is_true(fc:flush(2))
      assert.are.equal("f", (fc:get(fk)))
      assert.are.equal("a", (mc:get(t1)))
      H.sleep(2.1)
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(t1)))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(t2)))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(t3)))
      assert.are.equal("d", (mc:get(keep)))
      assert.are.equal("integer", H.mtype(mc:add(lk, "after lock")))
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, fc:get(fk)))
      fc:close()
    end)
  end)

  describe("flush/flush_all/delete_all", function()
    local fc
    setup(function() fc = assert(memcached.new(other.addr)) end)
    teardown(function() fc:close() end)

    it("flush() empties the server", function()
      fc:set("a", 1)
      assert.is_true(fc:flush())
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, fc:get("a")))
    end)

    it("flush_all and delete_all empty the server", function()
      fc:set("a", 1)
      assert.is_true(fc:flush_all())
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, fc:get("a")))
      fc:set("b", 1)
      assert.is_true(fc:delete_all())
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, fc:get("b")))
    end)

    it("flush raises on a negative delay", function()
      assert.has_error(function() fc:flush(-1) end)
    end)
  end)

  describe("ping/stats/version", function()
    it("ping returns true", function()
      assert.is_true(mc:ping())
    end)

    it("ping reports a dead server", function()
      local dead = "127.0.0.1:" .. H.free_port()
      local c = assert(memcached.new { servers = { srv.addr, dead }, timeout = 0.2 })
      local ok, err, failures = c:ping()
      assert.is_nil(ok)
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, err)
      assert.are.same({ dead }, (function()
        local t = {}
        for a in pairs(failures) do t[#t + 1] = a end
        return t
      end)())
      c:close()
    end)

    it("stats returns addr -> table with the server's pid", function()
      local st = assert(mc:stats())
      assert.are.equal(tostring(srv.pid), st[srv.addr].pid)
      assert.is_truthy(st[srv.addr].cmd_get:match("^%d+$"))
    end)

    it("stats takes a group", function()
      local st = assert(mc:stats("settings"))
      assert.are.equal("256", st[srv.addr].maxconns)
      assert.is_nil(st[srv.addr].pid)
    end)

    it("stats of an unknown group is ERR_NO_STATS", function()
      local st, err = mc:stats("no-such-group")
      assert.is_nil(st)
      assert.are.equal(memcached.ERR_NO_STATS, err)
    end)

    it("version returns addr -> version string", function()
      local v = assert(mc:version())
      assert.are.equal(mc:stats()[srv.addr].version, v[srv.addr])
      assert.is_truthy(v[srv.addr]:match("^%d+%.%d+%.%d+"))
    end)
  end)

  describe("servers", function()
    it("add_server adds a server to an empty client", function()
      local c = assert(memcached.new())
      assert.is_true(c:add_server(srv.addr))
      local k = key()
      assert.are.equal("integer", H.mtype(c:set(k, "via add_server")))
      assert.are.equal("via add_server", (mc:get(k)))
      assert.are.equal(srv.addr, c:pick_server(k))
      c:close()
    end)

    it("add_server refuses a bad address", function()
      local c = assert(memcached.new(srv.addr))
      local ok, err = c:add_server("127.0.0.1:0")
      assert.is_nil(ok)
      assert.are.equal(memcached.ERR_BAD_SERVER, err)
      assert.are.equal(srv.addr, c:pick_server("x"))
      assert.has_error(function() c:add_server(42) end)
      c:close()
    end)

    it("set_servers with a bad address changes nothing", function()
      local c = assert(memcached.new(srv.addr))
      local ok, err = c:set_servers("127.0.0.1:" .. H.free_port(), "127.0.0.1:99999")
      assert.is_nil(ok)
      assert.are.equal(memcached.ERR_BAD_SERVER, err)
      for i = 1, 20 do assert.are.equal(srv.addr, c:pick_server("key" .. i)) end
      local k = key()
      assert.are.equal("integer", H.mtype(c:set(k, 1)))
      c:close()
    end)

    it("set_servers replaces the list", function()
      local c = assert(memcached.new(srv.addr))
      assert.is_true(c:set_servers { other.addr })
      for i = 1, 20 do assert.are.equal(other.addr, c:pick_server("key" .. i)) end
      local k = key()
      c:set(k, "on other")
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
      assert.are.equal("on other", (c:get(k)))
      assert.is_true(c:set_servers(srv.addr, other.addr))
      local seen = {}
      for i = 1, 40 do seen[c:pick_server("key" .. i)] = true end
      assert.are.same({ [srv.addr] = true, [other.addr] = true }, seen)
      c:close()
    end)

    it("pick_server refuses a malformed key and an empty list", function()
      assert.are.equal(memcached.ERR_MALFORMED_KEY, select(2, mc:pick_server("a b")))
      local c = assert(memcached.new())
      assert.are.equal(memcached.ERR_NO_SERVERS, select(2, c:pick_server("a")))
      c:close()
    end)
  end)

  describe("set_server_error_callback", function()
    it("hears about a server going down", function()
      local dead = "127.0.0.1:" .. H.free_port()
      local c = assert(memcached.new { servers = { dead }, failure_limit = 1, timeout = 0.2 })
      local calls = {}
      assert.is_true(c:set_server_error_callback(function(addr, why, state)
        calls[#calls + 1] = { addr, type(why), state }
      end))
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, select(2, c:get("k")))
      assert.are.same({ { dead, "string", "down" } }, calls)
      c:close()
    end)

    -- The binding says the callback may use the client; a call made from
    -- the callback must not deliver the same event again.
    it("delivers each event once when the callback uses the client", function()
      local dead = "127.0.0.1:" .. H.free_port()
      local c = assert(memcached.new { servers = { dead }, failure_limit = 1, timeout = 0.2 })
      local calls, inner = 0, {}
      c:set_server_error_callback(function(addr, _, state)
        calls = calls + 1
        if calls <= 3 then -- bounded, so a re-delivery cannot recurse for long
          inner[#inner + 1] = select(2, c:get("from-callback"))
        end
      end)
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, select(2, c:get("k")))
      assert.are.equal(1, calls)
      assert.are.equal(1, #inner)
      assert.is_truthy(inner[1])
      c:close()
    end)

    it("a raising callback does not break the client", function()
      local dead = "127.0.0.1:" .. H.free_port()
      local c = assert(memcached.new { servers = { dead }, failure_limit = 1, timeout = 0.2 })
      c:set_server_error_callback(function() error("boom") end)
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, select(2, c:get("k")))
      assert.is_true(c:set_servers(srv.addr))
      assert.are.equal("integer", H.mtype(c:set(key(), 1)))
      assert.is_true(c:set_server_error_callback(nil))
      c:close()
    end)

    it("raises on a non-function", function()
      assert.has_error(function() mc:set_server_error_callback(42) end)
    end)
  end)

  describe("life cycle", function()
    local function curr_connections()
      return tonumber(mc:stats()[srv.addr].curr_connections)
    end
    local function wait_connections(n)
      for _ = 1, 100 do
        if curr_connections() == n then break end
        H.sleep(0.01)
      end
      return curr_connections()
    end

    it("close and exit return true, twice is fine", function()
      local c = assert(memcached.new(srv.addr))
      assert.is_true(c:close())
      assert.is_true(c:close())
      local d = assert(memcached.new(srv.addr))
      assert.is_true(d:exit())
      assert.are.equal(memcached.ERR_CLIENT_CLOSED, select(2, d:get("x")))
    end)

    it("close releases the connections", function()
      local base = curr_connections()
      local c = assert(memcached.new(srv.addr))
      c:get("x")
      assert.are.equal(base + 1, wait_connections(base + 1))
      c:close()
      assert.are.equal(base, wait_connections(base))
    end)

    -- to-be-closed variables are Lua 5.4's: the chunk is compiled there only
    if _VERSION == "Lua 5.4" then
      it("__close closes at the end of the scope", function()
        local ref, cas = assert(load([[
          local memcached, addr, k = ...
          local ref, cas
          do
            local c <close> = assert(memcached.new(addr))
            ref, cas = c, c:set(k, 1)
          end
          return ref, cas
        ]]))(memcached, srv.addr, key())
        assert.are.equal("integer", H.mtype(cas))
        assert.are.equal(memcached.ERR_CLIENT_CLOSED, select(2, ref:get("x")))
        assert.is_truthy(tostring(ref):match("closed"))
      end)
    end

    it("__gc releases the connections", function()
      -- clients dropped by earlier tests must be gone before counting
      collectgarbage()
      collectgarbage()
      H.sleep(0.05)
      local base = curr_connections()
      local c = assert(memcached.new(srv.addr))
      c:get("x")
      assert.are.equal(base + 1, wait_connections(base + 1))
      c = nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      assert.are.equal(base, wait_connections(base))
    end)

    it("every method after close returns nil, ERR_CLIENT_CLOSED", function()
      local c = assert(memcached.new(srv.addr))
      c:close()
      local calls = {
        get = { "k" }, get_multi = { { "k" } }, set = { "k", 1 }, add = { "k", 1 },
        replace = { "k", 1 }, set_raw_data = { "k", "v" }, add_raw_data = { "k", "v" },
        replace_raw_data = { "k", "v" }, append = { "k", "v" }, prepend = { "k", "v" },
        compare_and_swap = { "k", 1, 5 }, delete = { "k" }, delete_lock = { "k", 5 },
        increment = { "k", 1 }, decrement = { "k", 1 }, touch_atomic_value = { "k" },
        touch = { "k", 1 }, get_and_touch = { "k", 1 }, flush = { 0 }, flush_all = {},
        delete_all = {}, ping = {}, stats = {}, version = {}, add_server = { srv.addr },
        set_servers = { srv.addr }, pick_server = { "k" }, servers = {},
        set_server_error_callback = { print },
      }
      for name, a in pairs(calls) do
        local r = H.pack(c[name](c, H.unpack(a)))
        assert.are.same({ n = 3, nil, memcached.ERR_CLIENT_CLOSED, r[3] }, r, name)
        assert.are.equal("string", type(r[3]), name)
      end
    end)
  end)

  describe("values", function()
    local function roundtrip(v)
      local k = key("v")
      assert.are.equal("integer", H.mtype(mc:set(k, v)))
      local got, cas, flags = mc:get(k)
      assert.are.equal("integer", H.mtype(cas))
      assert.are.equal(1, flags)
      return got
    end

    it("stores strings with exactly the bytes msgpack-c writes (str8/16/32 boundaries)", function()
      local raw = raw_client(srv.addr)
      for _, n in ipairs { 0, 1, 31, 32, 255, 256, 65535, 65536, 200000 } do
        local k = key("s")
        local s = ("\255a\0"):rep(math.floor(n / 3) + 1):sub(1, n)
        assert.are.equal("integer", H.mtype(mc:set(k, s)))
        assert.are.equal(memcached.encode(s), (raw:get(k)))
        assert.are.equal(s, (mc:get(k)))
      end
      raw:close()
    end)

    it("nil and booleans", function()
      assert.is_nil(roundtrip(nil))
      assert.are.equal(true, roundtrip(true))
      assert.are.equal(false, roundtrip(false))
    end)

    -- Before 5.3 every number is a double: integral ones (exact to 2^53)
    -- travel as msgpack integers, 2.0 among them.
    it("integers stay integers, floats stay floats", function()
      local ints = { 0, 1, -1, 127, 128, -33, 65536, 1099511627776, 9007199254740992, -9007199254740992 }
      local floats = { 0.5, -1.25, 1e300, math.huge, -math.huge }
      if H.integers then
        ints[#ints + 1], ints[#ints + 2] = math.maxinteger, math.mininteger
        floats[#floats + 1] = 2.0
      end
      for _, n in ipairs(ints) do
        local got = roundtrip(n)
        assert.are.equal(n, got)
        assert.are.equal("integer", H.mtype(got))
      end
      for _, f in ipairs(floats) do
        local got = roundtrip(f)
        assert.are.equal(f, got)
        assert.are.equal("float", H.mtype(got))
      end
    end)

    it("binary strings", function()
      local s = "a\0b\255\r\n" .. string.rep("\0", 10)
      assert.are.equal(s, roundtrip(s))
      assert.are.equal("", roundtrip(""))
      local big = string.rep("0123456789abcdef", 32 * 1024) -- 512 KiB
      assert.are.equal(big, roundtrip(big))
    end)

    it("nested tables", function()
      local t = { 1, "two", { three = 3, list = { true, false, 1.5 } }, map = { a = { b = { c = "d" } } } }
      assert.are.same(t, roundtrip(t))
    end)

    it("array_mt and empty_array force arrays, map_mt a map", function()
      local rc = raw_client(srv.addr)
      local k1, k2, k3, k4 = key(), key(), key(), key()
      mc:set(k1, setmetatable({}, memcached.array_mt))
      mc:set(k2, memcached.empty_array)
      mc:set(k3, {})
      mc:set(k4, setmetatable({ 1, 2 }, memcached.map_mt))
      assert.are.equal("\144", (rc:get(k1)))
      assert.are.equal("\144", (rc:get(k2)))
      assert.are.equal("\128", (rc:get(k3)))
      assert.are.equal("\130\001\001\002\002", (rc:get(k4)))
      local got = mc:get(k1)
      assert.are.same({}, got)
      assert.are.equal(memcached.array_mt, getmetatable(got))
      rc:close()
    end)

    it("msgpack_flag changes the flag", function()
      local c7 = assert(memcached.new { servers = { srv.addr }, msgpack_flag = 7 })
      local k, k1 = key(), key()
      c7:set(k, { 1, 2 })
      local v, _, flags = c7:get(k)
      assert.are.same({ 1, 2 }, v)
      assert.are.equal(7, flags)
      -- the default client sees msgpack bytes it does not decode
      assert.are.same({ "\146\001\002", 7 }, { (mc:get(k)), select(3, mc:get(k)) })
      -- an item with flags 1 from another client is just bytes for c7
      mc:set(k1, "x")
      assert.are.same({ "\161x", 1 }, { (c7:get(k1)), select(3, c7:get(k1)) })
      c7:close()
    end)

    it("an undecodable msgpack item is ERR_UNDECODABLE and the client keeps working", function()
      local bad, good = key(), key()
      mc:set_raw_data(bad, "\193", 0, 0, 1)
      local v, err, detail = mc:get(bad)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_UNDECODABLE, err)
      assert.are.equal("string", type(detail))
      mc:set(good, "next")
      assert.are.equal("next", (mc:get(good)))
      -- truncated msgpack too
      mc:set_raw_data(bad, "\146\001", 0, 0, 1)
      assert.are.equal(memcached.ERR_UNDECODABLE, select(2, mc:get(bad)))
      assert.are.equal("next", (mc:get(good)))
    end)
  end)

  describe("transports", function()
    it("a unix socket server", function()
      local path = "/tmp/lmc-client-spec-" .. H.free_port() .. ".sock"
      local usrv = H.start_memcached { unix = path }
      local c = assert(memcached.new(path))
      assert.are.equal("integer", H.mtype(c:set("u", { unix = true })))
      assert.are.same({ unix = true }, (c:get("u")))
      assert.are.equal(path, c:pick_server("u"))
      c:close()
      usrv.kill9()
      os.remove(path)
    end)

    it("an IPv6 loopback server", function()
      local ok, s6 = pcall(H.start_memcached, { args = "-l [::1]" })
      if not ok then
        print("note: IPv6 loopback unavailable, skipped: " .. tostring(s6))
        return
      end
      local addr = "[::1]:" .. s6.port
      local c = assert(memcached.new(addr))
      assert.are.equal("integer", H.mtype(c:set("six", 6)))
      assert.are.equal(6, (c:get("six")))
      c:close()
      s6.kill9()
    end)
  end)
end)
