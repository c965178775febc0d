-- SASL PLAIN (username, password): real memcached -S servers with a
-- password database made by saslpasswd2 at run time.
local H = require "helper"
local memcached = H.memcached

local function client(addr, user, pass, extra)
  local o = { servers = { addr }, username = user, password = pass, timeout = 0.5 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return assert(memcached.new(o))
end

describe("SASL", function()
  local srv
  setup(function()
    srv = H.start_memcached_sasl { users = { alice = "s3cret", bob = "other" } }
  end)
  teardown(function() H.stop_all() end)

  it("authenticates every new connection with the right credentials", function()
    local mc = client(srv.addr, "alice", "s3cret")
    assert.truthy(mc:set("s:k", { 1, 2, 3 }))
    assert.are.same({ 1, 2, 3 }, (mc:get("s:k")))
    assert.truthy(mc:add("s:add", "a"))
    assert.are.equal(memcached.ERR_NOT_STORED, select(2, mc:add("s:add", "b")))
    assert.is_nil(select(2, mc:set_multi { ["s:a"] = "1", ["s:b"] = "2" }))
    assert.are.same({ ["s:a"] = "1", ["s:b"] = "2" }, mc:get_multi { "s:a", "s:b", "s:c" })
    assert.are.equal(3, (mc:increment("s:n", 1, 3)))
    assert.is_true(mc:touch("s:a", 100))
    assert.is_nil(select(2, mc:delete_multi { "s:a", "s:b" }))
    assert.are.same({}, mc:get_multi { "s:a", "s:b" })
    assert.is_true(mc:ping())
    assert.truthy(mc:stats()[srv.addr].pid)
    assert.truthy(mc:version()[srv.addr])
  end)

  it("authenticates each reconnect, and probes of a server that came back", function()
    local mc = client(srv.addr, "bob", "other", { max_idle = 0 })
    for i = 1, 5 do
      assert.truthy(mc:set("s:re", i))
      assert.are.equal(i, (mc:get("s:re")))
    end
    local s2 = H.start_memcached_sasl { users = { alice = "s3cret" } }
    local events = {}
    local m2 = client(s2.addr, "alice", "s3cret", { failure_limit = 1, retry_timeout = 0.05 })
    m2:set_server_error_callback(function(addr, err) events[#events + 1] = err end)
    assert.truthy(m2:set("k", "v"))
    s2.stop()
    local _, e = m2:get("k")
    assert.are.equal(memcached.ERR_CONNECTION_REFUSED, e)
    assert.is_false(m2:servers()[1].alive)
    s2.restart() -- the same port, password database and -S
    H.sleep(0.1)
    -- the probe authenticates before its NOOP; the call goes through on
    -- the probe's connection
    assert.are.equal(1, (m2:increment("n", 1, 1)))
    assert.is_true(m2:servers()[1].alive)
    assert.are.equal(2, #events)
    s2.stop()
  end)

  it("gives ERR_AUTH on every call for wrong credentials, without ejecting the server", function()
    local events = {}
    for _, cred in ipairs { { "alice", "wrong" }, { "mallory", "s3cret" }, { "alice", "" } } do
      local mc = client(srv.addr, cred[1], cred[2], { failure_limit = 1 })
      mc:set_server_error_callback(function(addr, err) events[#events + 1] = err end)
      for _ = 1, 3 do
        local ok, err, detail = mc:get("s:k")
        assert.is_nil(ok)
        assert.are.equal(memcached.ERR_AUTH, err)
        assert.truthy(detail:find("authentication failed", 1, true), detail)
        local sok, serr = mc:set("s:k", "v")
        assert.is_nil(sok)
        assert.are.equal(memcached.ERR_AUTH, serr)
      end
      local r, gerr, failures = mc:get_multi { "x", "y" }
      assert.are.same({}, r)
      assert.are.equal(memcached.ERR_AUTH, gerr)
      assert.are.same({ x = memcached.ERR_AUTH, y = memcached.ERR_AUTH }, failures)
      local info = mc:servers()[1]
      assert.is_true(info.alive)
      assert.are.equal(0, info.failures)
      assert.are.equal(0, info.connections) -- each refused connection was closed
    end
    assert.are.same({}, events)
    -- nothing was stored by the refused clients
    assert.are.same({ 1, 2, 3 }, (client(srv.addr, "alice", "s3cret"):get("s:k")))
  end)

  it("fails closed against a server without SASL", function()
    local plain = H.start_memcached()
    local mc = client(plain.addr, "alice", "s3cret")
    local ok, err, detail = mc:set("k", "v")
    assert.is_nil(ok)
    assert.are.equal(memcached.ERR_AUTH, err)
    assert.truthy(detail:find("does not support SASL", 1, true), detail)
    assert.are.equal(memcached.ERR_CACHE_MISS, select(2, memcached.new(plain.addr):get("k")))
    plain.stop()
  end)

  it("refuses credentials given half, or that PLAIN cannot carry", function()
    assert.has_error(function() memcached.new { servers = { srv.addr }, username = "alice" } end,
      "options 'username' and 'password' go together")
    assert.has_error(function() memcached.new { servers = { srv.addr }, username = 1, password = "x" } end,
      "option 'username' must be a string, got number")
    local mc, err, detail = memcached.new { servers = { srv.addr }, username = "a\0b", password = "x" }
    assert.is_nil(mc)
    assert.are.equal(memcached.ERR_AUTH, err)
    assert.truthy(detail:find("NUL", 1, true), detail)
    mc, err = memcached.new { servers = { srv.addr }, username = "a", password = string.rep("x", 256) }
    assert.is_nil(mc)
    assert.are.equal(memcached.ERR_AUTH, err)
  end)
end)
