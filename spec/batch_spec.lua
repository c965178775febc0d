-- set_multi / delete_multi: quiet opcodes closed by one NOOP per server, a
-- result per key, partial failures without losing the rest.
local H = require "spec.helper"
local memcached = H.memcached

describe("set_multi and delete_multi", function()
  local s = {}
  local mc
  before_each(function()
    for i = 1, 3 do s[i] = H.start_memcached() end
    -- a generous timeout: this spec is about results, not timing (a loaded
    -- machine can take over 0.1 s for 300 items)
    mc = memcached.new { servers = { s[1].addr, s[2].addr, s[3].addr }, failure_limit = 100, timeout = 1 }
  end)
  after_each(function()
    mc:close()
    for i = 1, 3 do s[i].stop() end
  end)

  it("stores every item over several servers and reports true per key", function()
    local items = {}
    for i = 1, 300 do items["sm" .. i] = { n = i, s = ("x"):rep(i) } end
    local res, err = mc:set_multi(items)
    assert.is_nil(err)
    local keys = {}
    for i = 1, 300 do
      assert.is_true(res["sm" .. i])
      keys[i] = "sm" .. i
    end
    local got = mc:get_multi(keys)
    for i = 1, 300 do
      assert.are.equal(i, got["sm" .. i].n)
      assert.are.equal(i, #got["sm" .. i].s)
    end
    -- spread over all three servers
    local per = {}
    for i = 1, 300 do local a = mc:pick_server("sm" .. i); per[a] = (per[a] or 0) + 1 end
    for i = 1, 3 do assert.is_true((per[s[i].addr] or 0) > 0) end
  end)

  it("applies the expiration to every item", function()
    local res = mc:set_multi({ e1 = 1, e2 = 2 }, 1)
    assert.is_true(res.e1 and res.e2)
    assert.are.equal(1, (mc:get("e1")))
    H.sleep(2.1)
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("e1")))
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("e2")))
  end)

  it("fails a bad key or an unencodable value alone and stores the rest", function()
    local res, err = mc:set_multi { good1 = "a", ["bad key"] = "b", fn = print, good2 = { 1, 2 } }
    assert.are.equal(true, res.good1)
    assert.are.equal(true, res.good2)
    assert.are.equal(memcached.ERR_MALFORMED_KEY, res["bad key"])
    assert.are.equal(memcached.ERR_UNENCODABLE, res.fn)
    assert.truthy(err == memcached.ERR_MALFORMED_KEY or err == memcached.ERR_UNENCODABLE)
    assert.are.equal("a", (mc:get("good1")))
    assert.are.same({ 1, 2 }, (mc:get("good2")))
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get("fn")))
  end)

  it("reports the keys of a dead server and stores the others", function()
    s[2].kill9()
    local items = {}
    for i = 1, 90 do items["d" .. i] = i end
    local res, err = mc:set_multi(items)
    assert.truthy(err)
    local failed = 0
    for i = 1, 90 do
      local k = "d" .. i
      if mc:pick_server(k) == s[2].addr then
        assert.truthy(res[k] == memcached.ERR_CONNECTION_REFUSED or res[k] == memcached.ERR_CONNECTION_CLOSED, res[k])
        failed = failed + 1
      else
        assert.is_true(res[k])
        assert.are.equal(i, (mc:get(k)))
      end
    end
    assert.is_true(failed > 0)
  end)

  it("reports a value too large for the server on its key only", function()
    local big = ("z"):rep(2 * 1024 * 1024)
    local res, err = mc:set_multi { small = "ok", huge = big }
    assert.are.equal(memcached.ERR_VALUE_TOO_LARGE, res.huge)
    assert.are.equal(memcached.ERR_VALUE_TOO_LARGE, err)
    assert.is_true(res.small)
    assert.are.equal("ok", (mc:get("small")))
  end)

  it("delete_multi deletes and reports misses per key", function()
    assert(mc:set_multi { x1 = 1, x2 = 2, x3 = 3 })
    local res, err = mc:delete_multi { "x1", "x2", "missing", "x3", "bad key" }
    assert.is_true(res.x1); assert.is_true(res.x2); assert.is_true(res.x3)
    assert.are.equal(memcached.ERR_CACHE_MISS, res.missing)
    assert.are.equal(memcached.ERR_MALFORMED_KEY, res["bad key"])
    assert.truthy(err)
    for _, k in ipairs { "x1", "x2", "x3" } do
      assert.are.equal(memcached.ERR_CACHE_MISS, select(2, mc:get(k)))
    end
  end)

  it("raises on non-string keys and returns an empty result for empty input", function()
    assert.has_error(function() mc:delete_multi { 1 } end)
    assert.has_error(function() mc:set_multi { [1] = "v" } end)
    local res, err = mc:set_multi {}
    assert.are.same({}, res)
    assert.is_nil(err)
  end)
end)
