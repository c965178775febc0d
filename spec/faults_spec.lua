-- Faults: every one is a clear error within the timeout plus a little, and
-- the client serves again once the server does. Real memcached where it can
-- produce the fault; spec/fault_server.lua only where it cannot.
local H = require "spec.helper"
local memcached = H.memcached

local TIMEOUT = 0.2
local BOUND = TIMEOUT + 0.3

-- failure_limit high and retry_timeout 0 isolate each fault from the
-- client's dead-server bookkeeping.
local function client(addrs, extra)
  local o = { servers = addrs, timeout = TIMEOUT, failure_limit = 1000, retry_timeout = 0 }
  for k, v in pairs(extra or {}) do o[k] = v end
  return assert(memcached.new(o))
end

local function keys_of(t)
  local r = {}
  for k in pairs(t or {}) do r[#r + 1] = k end
  table.sort(r)
  return r
end

describe("faults", function()
  describe("a refused port", function()
    it("is ERR_CONNECTION_REFUSED promptly", function()
      local mc = client { "127.0.0.1:" .. H.free_port() }
      local dt, v, err, detail = H.timed(function() return mc:get("k") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, err)
      assert.are.equal("string", type(detail))
      assert.is_true(dt < BOUND, dt)
      dt, v, err = H.timed(function() return mc:set("k", 1) end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, err)
      assert.is_true(dt < BOUND, dt)
      mc:close()
    end)
  end)

  describe("a server that never answers", function()
    local f, mc
    setup(function()
      f = H.start_fault("silent")
      mc = client { f.addr }
    end)
    teardown(function()
      mc:close()
      f.stop()
    end)

    it("get is ERR_TIMEOUT within the timeout, the connection is closed", function()
      local dt, v, err = H.timed(function() return mc:get("k") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.is_true(dt >= TIMEOUT - 0.05 and dt < BOUND, dt)
      assert.are.equal(0, mc:servers()[1].connections)
    end)

    it("set and delete are ERR_TIMEOUT too", function()
      local dt, v, err = H.timed(function() return mc:set("k", "v") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.is_true(dt < BOUND, dt)
      dt, v, err = H.timed(function() return mc:delete("k") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.is_true(dt < BOUND, dt)
    end)

    it("get_multi returns a table, ERR_TIMEOUT and each key's failure", function()
      local dt, r, err, failures = H.timed(function() return mc:get_multi { "a", "b", "c" } end)
      assert.are.same({}, r)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.are.same({ a = memcached.ERR_TIMEOUT, b = memcached.ERR_TIMEOUT,
                        c = memcached.ERR_TIMEOUT }, failures)
      assert.is_true(dt < BOUND, dt)
    end)

    it("ping is nil, ERR_TIMEOUT, {addr = detail}", function()
      local dt, ok, err, failures = H.timed(function() return mc:ping() end)
      assert.is_nil(ok)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.are.same({ f.addr }, keys_of(failures))
      assert.is_true(dt < BOUND, dt)
    end)
  end)

  describe("a server that closes every connection", function()
    it("is ERR_CONNECTION_CLOSED promptly", function()
      local f = H.start_fault("close")
      local mc = client { f.addr }
      local dt, v, err = H.timed(function() return mc:get("k") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CONNECTION_CLOSED, err)
      assert.is_true(dt < BOUND, dt)
      mc:close()
      f.stop()
    end)
  end)

  describe("a server killed between calls", function()
    it("is an error, and after a restart on the same port the client serves again", function()
      local srv = H.start_memcached()
      local mc = client { srv.addr }
      assert.are.equal("integer", H.mtype(mc:set("k", "before")))
      srv.kill9()
      local dt, v, err = H.timed(function() return mc:get("k") end)
      assert.is_nil(v)
      assert.is_true(err == memcached.ERR_CONNECTION_CLOSED or err == memcached.ERR_CONNECTION_REFUSED, err)
      assert.is_true(dt < BOUND, dt)
      v, err = mc:get("k")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_CONNECTION_REFUSED, err)

      srv.restart()
      local failures, worked = 0, false
      for i = 1, 3 do
        local cas = mc:set("k" .. i, "after")
        if cas and mc:get("k" .. i) == "after" then
          worked = true
          break
        end
        failures = failures + 1
      end
      assert.is_true(worked)
      assert.is_true(failures <= 1, failures)
      mc:close()
      srv.kill9()
    end)

    it("the error callback hears down, then up", function()
      local srv = H.start_memcached()
      local mc = client({ srv.addr }, { failure_limit = 1 })
      local events = {}
      mc:set_server_error_callback(function(addr, _, state)
        events[#events + 1] = addr .. " " .. state
      end)
      assert.are.equal("integer", H.mtype(mc:set("k", 1)))
      srv.kill9()
      assert.is_nil((mc:get("k")))
      assert.are.same({ srv.addr .. " down" }, events)
      srv.restart()
      local worked = false
      for _ = 1, 3 do
        if mc:set("k", 2) then worked = true break end
      end
      assert.is_true(worked)
      assert.are.same({ srv.addr .. " down", srv.addr .. " up" }, events)
      mc:close()
      srv.kill9()
    end)
  end)

  describe("a server that breaks the protocol", function()
    local cases = {
      garbage = { memcached.ERR_PROTOCOL },
      truncated = { memcached.ERR_TIMEOUT, memcached.ERR_PROTOCOL },
      wrong_opaque = { memcached.ERR_PROTOCOL },
      huge = { memcached.ERR_PROTOCOL },
    }
    for mode, allowed in pairs(cases) do
      it("(" .. mode .. ") is a clear error promptly, for get and get_multi", function()
        local f = H.start_fault(mode)
        local mc = client { f.addr }
        local function ok_err(err)
          for _, e in ipairs(allowed) do if e == err then return true end end
          return false
        end
        local dt, v, err = H.timed(function() return mc:get("k") end)
        assert.is_nil(v)
        assert.is_true(ok_err(err), err)
        assert.is_true(dt < BOUND, dt)
        -- again: a broken connection must not be reused
        dt, v, err = H.timed(function() return mc:get("k2") end)
        assert.is_nil(v)
        assert.is_true(ok_err(err), err)
        assert.is_true(dt < BOUND, dt)
        local r, failures
        dt, r, err, failures = H.timed(function() return mc:get_multi { "a", "b" } end)
        assert.are.same({}, r)
        assert.is_true(ok_err(err), err)
        assert.are.same({ "a", "b" }, keys_of(failures))
        assert.is_true(dt < BOUND, dt)
        mc:close()
        f.stop()
      end)
    end

    it("(huge) fails without trying to read the declared body", function()
      local f = H.start_fault("huge")
      local mc = client { f.addr }
      local dt, v, err, detail = H.timed(function() return mc:get("k") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_PROTOCOL, err)
      assert.are.equal("string", type(detail))
      -- the reply declared ~4 GiB; failing before the timeout could fire
      -- means it was refused at the header, not waited for
      assert.is_true(dt < TIMEOUT, dt)
      mc:close()
      f.stop()
    end)
  end)

  describe("a reply that comes after the timeout", function()
    it("times out, and never answers a later request", function()
      local f = H.start_fault("late_once", "0.4")
      local mc = client { f.addr }
      local dt, v, err = H.timed(function() return mc:get("first") end)
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.is_true(dt < BOUND, dt)
      -- right away, and once the late reply has certainly been sent
      assert.are.same({ "second", 0 }, { (mc:get("second")), select(3, mc:get("second")) })
      H.sleep(0.3)
      assert.are.equal("third", (mc:get("third")))
      assert.are.same({ fourth = "fourth", fifth = "fifth" }, (mc:get_multi { "fourth", "fifth" }))
      mc:close()
      f.stop()
    end)
  end)

  describe("one bad server among good ones", function()
    it("get_multi returns the good server's keys and names the others", function()
      local srv = H.start_memcached()
      local f = H.start_fault("silent")
      local mc = client { srv.addr, f.addr }
      local good, bad, all = {}, {}, {}
      for i = 1, 12 do
        local k = "key" .. i
        all[#all + 1] = k
        if mc:pick_server(k) == srv.addr then
          good[k] = "v" .. i
          assert.are.equal("integer", H.mtype(mc:set(k, good[k])))
        else
          bad[k] = memcached.ERR_TIMEOUT
        end
      end
      assert.is_true(next(good) ~= nil and next(bad) ~= nil)
      local dt, r, err, failures = H.timed(function() return mc:get_multi(all) end)
      assert.are.same(good, r)
      assert.are.equal(memcached.ERR_TIMEOUT, err)
      assert.are.same(bad, failures)
      assert.is_true(dt < BOUND, dt)
      mc:close()
      f.stop()
      srv.kill9()
    end)
  end)
end)

describe("a server that damages replies at random", function()
  -- Property: whatever comes back, a value is only ever the requested
  -- key's own (the fault server echoes keys as values), every failure is a
  -- documented error, and the client keeps serving. One damage cannot be
  -- caught by any client: a reply cut 3 bytes short followed by the 3
  -- garbage bytes the server may insert re-aligns the stream with the last
  -- 3 bytes of that value replaced (the protocol has no checksum). So a
  -- value must be its key, or its key with only the last 3 bytes changed;
  -- the keys of one batch differ in their first bytes, so another key's
  -- value can never pass.
  local function own(key, v)
    return v == key or (#v == #key and v:sub(1, -4) == key:sub(1, -4))
  end
  local documented = {}
  for k, v in pairs(memcached) do
    if type(k) == "string" and k:match("^ERR_") then documented[v] = true end
  end

  for _, seed in ipairs { 1, 2, 3 } do
    it("never returns another key's value (seed " .. seed .. ")", function()
      local f = H.start_fault("mutate", tostring(seed))
      local mc = memcached.new { servers = { f.addr }, timeout = 0.05, failure_limit = 1000000,
                                 msgpack_flag = 4242 } -- echo values are raw bytes
      local ok, failed, errs = 0, 0, {}
      for i = 1, 400 do
        if i % 4 == 0 then
          local keys = {}
          for j = 1, 5 do keys[j] = j .. "-batch-" .. i end
          local got, err, fails = mc:get_multi(keys)
          for k, v in pairs(got) do
            assert.is_true(own(k, v), ("%q is not the value of %q"):format(v, k))
            ok = ok + 1
          end
          if err then
            assert.is_true(documented[err], tostring(err))
            for _, e in pairs(fails) do assert.is_true(documented[e], tostring(e)) end
            failed = failed + 1
            errs[err] = true
          end
        else
          local key = "key-" .. i
          local v, err = mc:get(key)
          if v ~= nil then
            assert.is_true(own(key, v), ("%q is not the value of %q"):format(v, key))
            ok = ok + 1
          else
            assert.is_true(documented[err], tostring(err))
            failed = failed + 1
            errs[err] = true
          end
        end
      end
      assert.is_true(ok > 100, "ok=" .. ok)
      assert.is_true(failed > 10, "failed=" .. failed)
      assert.is_true(errs[memcached.ERR_PROTOCOL] or errs[memcached.ERR_TIMEOUT])
      mc:close()
      f.stop()
    end)
  end
end)

describe("a server whose first reply swallows the next", function()
  it("fails the batch instead of returning the swallowed bytes as a value", function()
    local f = H.start_fault("swallow")
    local mc = memcached.new { servers = { f.addr }, timeout = 0.2, failure_limit = 100,
                               msgpack_flag = 4242 }
    local got, err, failed = mc:get_multi { "a", "b" }
    assert.is_nil(got.a)
    assert.is_nil(got.b)
    assert.are.equal(memcached.ERR_PROTOCOL, err)
    assert.are.equal(memcached.ERR_PROTOCOL, failed.a)
    assert.are.equal(memcached.ERR_PROTOCOL, failed.b)
    f.stop()
  end)
end)
