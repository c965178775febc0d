-- A single get is as strict as get_multi: the item it returns is the one
-- the server sent for its key, in answer to its request (GETK/GATK: the
-- reply names the key, which is checked; a new connection's opaques start
-- at a random value, so a reply nobody asked for cannot guess them). And a
-- server's text error line (memcached at its connection limit) is reported
-- as the server's error, with its words.
--
-- Fault servers (spec/fault_server.lua) only for what a real memcached
-- cannot be made to send: replies before any request, another key's item.
local H = require "spec.helper"
local socket = require "socket"
local memcached = H.memcached
local codec = memcached.codec

-- failure_limit high and retry_timeout 0: each refusal is counted, and the
-- server is never ejected or skipped between the calls of one spec.
local function client(addr)
  return assert(memcached.new { servers = { addr }, timeout = 0.5,
                                failure_limit = 1000, retry_timeout = 0 })
end

-- A refused reply: no value, ERR_PROTOCOL with the server and the reason,
-- the connection closed, the server counted as failing.
local function refused(mc, addr, failures, why, v, err, detail)
  assert.is_nil(v)
  assert.are.equal(memcached.ERR_PROTOCOL, err)
  assert.are.equal("string", type(detail))
  assert.are.equal(addr .. ": ", detail:sub(1, #addr + 2))
  if why then assert.is_truthy(detail:find(why, 1, true), detail) end
  local s = mc:servers()[1]
  assert.are.equal(0, s.connections)
  assert.are.equal(failures, s.failures)
end

describe("strict get", function()
  after_each(function() H.stop_all() end)

  describe("a reply sent before any request", function()
    it("(GET-shaped, opaque 1: what get used to send first) is refused, not a hit", function()
      local f = H.start_fault("stray", "get")
      local mc = client(f.addr)
      -- get(key) (the fast entry) and get{key=} (the general one), each on
      -- a new connection that receives the stray reply first
      refused(mc, f.addr, 1, nil, mc:get("k"))
      refused(mc, f.addr, 2, nil, mc:get { key = "k" })
      mc:close()
    end)

    it("(GETK-shaped, naming the key, opaque 1) is refused by its opaque", function()
      local f = H.start_fault("stray", "getk")
      local mc = client(f.addr)
      refused(mc, f.addr, 1, "opaque", mc:get("k"))
      refused(mc, f.addr, 2, "opaque", mc:get { key = "k" })
      mc:close()
    end)
  end)

  it("new connections start at unpredictable opaques", function()
    local f = H.start_fault("opaque")
    local seen, n = {}, 0
    for _ = 1, 6 do
      local mc = client(f.addr) -- a new client: a new connection
      local v = mc:get("k")
      mc:close()
      local o = assert(H.tointeger(tonumber(v)), tostring(v))
      assert.is_nil(seen[o], "opaque " .. o .. " again")
      seen[o] = true
      n = n + 1
    end
    assert.are.equal(6, n)
    assert.is_nil(seen[0])
    assert.is_nil(seen[1])
  end)

  describe("another key's item", function()
    it("is refused by get and get_and_touch, fast and general entries", function()
      local f = H.start_fault("other_key")
      local mc = client(f.addr)
      refused(mc, f.addr, 1, "another key", mc:get("k"))
      refused(mc, f.addr, 2, "another key", mc:get { key = "k" })
      refused(mc, f.addr, 3, "another key", mc:get_and_touch("k", 60))
      refused(mc, f.addr, 4, "another key", mc:get_and_touch { key = "k", expiration = 60 })
      -- get_multi always refused it
      local r, err, failures = mc:get_multi { "k" }
      assert.are.same({}, r)
      assert.are.equal(memcached.ERR_PROTOCOL, err)
      assert.are.same({ k = memcached.ERR_PROTOCOL }, failures)
      mc:close()
    end)
  end)

  it("real memcached: hits and misses of get and get_and_touch still pass the checks", function()
    local s = H.start_memcached()
    local mc = client(s.addr)
    assert.is_truthy(mc:set("k", "v"))
    assert.are.equal("v", (mc:get("k")))
    assert.are.equal("v", (mc:get { key = "k" }))
    assert.are.equal("v", (mc:get_and_touch("k", 60)))
    local v, err = mc:get("absent")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_CACHE_MISS, err)
    v, err = mc:get_and_touch("absent", 60)
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_CACHE_MISS, err)
    assert.are.equal(0, mc:servers()[1].failures)
    assert.are.equal(1, mc:servers()[1].connections) -- pooled throughout
    mc:close()
  end)
end)

describe("a server's text error line", function()
  after_each(function() H.stop_all() end)

  -- memcached -c 16 (its reserved descriptors leave room for 3 clients)
  -- answers every further connection "ERROR Too many open connections"
  -- and closes it (maxconns_fast, the default). Fills it with plain sockets
  -- until one gets that line; returns the ones it keeps open.
  local function fill(s)
    local held = {}
    for _ = 1, 64 do
      local c = socket.tcp()
      c:settimeout(1)
      assert(c:connect("127.0.0.1", s.port))
      c:send("version\r\n")
      local line = c:receive("*l")
      if line == "ERROR Too many open connections" then
        c:close()
        return held
      end
      assert.are.equal("VERSION", (line or ""):sub(1, 7))
      held[#held + 1] = c
    end
    error("memcached -c 16 never refused a connection")
  end

  it("from memcached at its connection limit is ERR_SERVER_ERROR with the line", function()
    local s = H.start_memcached { args = "-c 16" }
    local held = fill(s)
    local mc = client(s.addr)
    local line = s.addr .. ": ERROR Too many open connections"
    for i = 1, 3 do
      local v, err, detail = mc:get("k")
      assert.is_nil(v)
      assert.are.equal(memcached.ERR_SERVER_ERROR, err)
      assert.are.equal(line, detail)
      assert.are.equal(i, mc:servers()[1].failures)
    end
    local v, err, detail = mc:get { key = "k" }
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_SERVER_ERROR, err)
    assert.are.equal(line, detail)
    v, err, detail = mc:set("k", "v")
    assert.is_nil(v)
    assert.are.equal(memcached.ERR_SERVER_ERROR, err)
    assert.are.equal(line, detail)
    local r, failures
    r, err, failures = mc:get_multi { "a", "b" }
    assert.are.same({}, r)
    assert.are.equal(memcached.ERR_SERVER_ERROR, err)
    assert.are.same({ a = memcached.ERR_SERVER_ERROR, b = memcached.ERR_SERVER_ERROR }, failures)
    assert.are.equal(0, mc:servers()[1].connections)
    -- room again: served again
    for _, c in ipairs(held) do c:close() end
    local ok
    for _ = 1, 50 do
      ok = mc:set("k", "v")
      if ok then break end
      socket.sleep(0.02)
    end
    assert.is_truthy(ok)
    assert.are.equal("v", (mc:get("k")))
    mc:close()
  end)

  describe("in the codec's reader", function()
    local function each_split(bytes, fn)
      for cut = 0, #bytes do fn(bytes:sub(1, cut), bytes:sub(cut + 1)) end
    end

    for _, line in ipairs { "ERROR Too many open connections", "ERROR",
                            "SERVER_ERROR out of memory storing object",
                            "CLIENT_ERROR bad data chunk" } do
      it("'" .. line .. "' is the server's error, fed in any two pieces", function()
        each_split(line .. "\r\n", function(a, b)
          local r = codec.reader()
          r:feed(a)
          if #b > 0 then
            assert.are.equal(false, r:get()) -- could still become the line
            r:feed(b)
          end
          local res, msg, kind = r:get()
          assert.is_nil(res)
          assert.are.equal(line, msg)
          assert.are.equal("server_error", kind)
        end)
      end)
    end

    for name, bytes in pairs {
      ["another word"] = "ERRORS\r\n",
      ["a bare LF"] = "ERROR x\n",
      ["a control byte"] = "SERVER_ERROR a\0b\r\n",
      ["a line too long"] = "ERROR " .. ("x"):rep(300) .. "\r\n",
      ["not a line"] = "HTTP/1.0 400 Bad Request\r\n",
    } do
      it("(" .. name .. ") stays a protocol error", function()
        local r = codec.reader()
        r:feed(bytes)
        local res, msg, kind = r:get()
        assert.is_nil(res)
        assert.are.equal("protocol", kind)
        assert.is_truthy(msg:find("bad magic byte", 1, true), msg)
      end)
    end
  end)
end)
