-- TLS and SASL in async mode (memcached.async, the tls, username and
-- password options), inside real cqueues and luv loops against real
-- memcached -Z / -S servers that the helper starts with certificates and a
-- password database it makes at run time: what must work, what must fail
-- closed (ERR_TLS, ERR_AUTH, without marking the server dead), and a
-- stalled handshake that must time out while the loop keeps running.
local H = require "spec.helper"
local memcached = H.memcached
local LOOPS = require "spec.async_loops"

-- nil, ERR_TLS and a detail holding `reason`
local function refused(reason, r)
  assert.is_nil(r[1])
  assert.are.equal(memcached.ERR_TLS, r[2])
  assert.truthy(r[3] and r[3]:find(reason, 1, true),
    ("detail %q lacks %q"):format(tostring(r[3]), reason))
end

local function pack(...) return { n = select("#", ...), ... } end

for _, name in ipairs { "cqueues", "luv" } do
  local L = LOOPS[name]
  local function new(o)
    o.timeout = o.timeout or 0.5
    return assert(L.mod.new(o))
  end

  describe("async TLS and SASL under " .. name, function()
    local certs, srv, sasl
    setup(function()
      certs = H.make_certs()
      srv = H.start_memcached_tls()
      sasl = H.start_memcached_sasl { users = { alice = "s3cret" } }
    end)
    teardown(function() H.stop_all() end)

    it("works with the right CA: get, set, get_multi, by IP address and by name", function()
      local got, prefixes = {}, {}
      L.run(function()
        for _, addr in ipairs { srv.addr, "localhost:" .. srv.port } do
          local mc = new { servers = { addr }, tls = { ca_file = certs.ca } }
          local p = name .. ":" .. addr .. ":"
          prefixes[#prefixes + 1] = p
          got[#got + 1] = pack(mc:set(p .. "k", { a = 1, b = "x" }))
          got[#got + 1] = pack(mc:get(p .. "k"))
          got[#got + 1] = pack(mc:set_multi { [p .. "a"] = "1", [p .. "b"] = "2" })
          got[#got + 1] = pack(mc:get_multi { p .. "a", p .. "b", p .. "none" })
          got[#got + 1] = pack(mc:ping())
          got[#got + 1] = mc:servers()[1]
        end
      end)
      for n, p in ipairs(prefixes) do
        local i = (n - 1) * 6
        assert.truthy(got[i + 1][1])
        assert.are.same({ a = 1, b = "x" }, got[i + 2][1])
        assert.is_nil(got[i + 3][2])
        assert.are.same({ [p .. "a"] = "1", [p .. "b"] = "2" }, got[i + 4][1])
        assert.is_true(got[i + 5][1])
        assert.is_true(got[i + 6].alive)
        assert.are.equal(false, got[i + 6].tls_resumed) -- the first handshake is a full one
      end
      assert.are.equal(2, #prefixes)
    end)

    -- a stopped TLS server takes the TCP connect (the kernel does) and then
    -- stalls the handshake: a get_multi of a new client still gets the
    -- other servers' keys (their handshakes run beside the stalled one)
    it("a get_multi over three TLS servers with one stopped serves the other two", function()
      local servers = { H.start_memcached_tls(), H.start_memcached_tls(), H.start_memcached_tls() }
      local addrs = { servers[1].addr, servers[2].addr, servers[3].addr }
      local tls = { ca_file = certs.ca }
      local blocking = assert(memcached.new { servers = addrs, tls = tls })
      local keys, where = {}, {}
      for i = 1, 30 do
        keys[i] = name .. ":tb:" .. i
        assert(blocking:set(keys[i], i))
        where[keys[i]] = blocking:pick_server(keys[i])
      end
      local victim = where[keys[1]]
      local vsrv
      for _, sv in ipairs(servers) do if sv.addr == victim then vsrv = sv end end
      vsrv.sigstop()
      local vals, err, failed, took
      L.run(function()
        local mc = new { servers = addrs, tls = tls, timeout = 0.3, retry_timeout = 30 }
        local t0 = H.now()
        vals, err, failed = mc:get_multi(keys)
        took = H.now() - t0
      end)
      vsrv.sigcont()
      for _, sv in ipairs(servers) do sv.kill9() end
      local served = 0
      for i, k in ipairs(keys) do
        if where[k] == victim then
          assert.is_nil(vals[k])
          assert.equal(memcached.ERR_TIMEOUT, failed[k])
        else
          assert.equal(i, vals[k])
          served = served + 1
        end
      end
      assert.is_true(served > 0 and served < 30)
      assert.equal(memcached.ERR_TIMEOUT, err)
      assert.is_true(took < 0.6, "get_multi took " .. took)
    end)

    it("carries large values and many coroutines' pipelined requests", function()
      local wrong, ok, big_back = 0, 0, nil
      local big = string.rep("0123456789abcdef", 20000) -- 320 kB: many records
      L.run(function(spawn)
        local mc = new { servers = { srv.addr }, tls = { ca_file = certs.ca }, max_conns = 2 }
        assert(mc:set_raw_data(name .. ":big", big))
        big_back = mc:get(name .. ":big")
        for i = 1, 20 do
          spawn(function()
            for j = 1, 10 do
              local k = name .. ":co:" .. i .. ":" .. j
              assert(mc:set(k, i * 100 + j))
              if mc:get(k) == i * 100 + j then ok = ok + 1 else wrong = wrong + 1 end
            end
          end)
        end
      end)
      assert.are.equal(big, big_back)
      assert.are.equal(0, wrong)
      assert.are.equal(200, ok)
    end)

    it("resumes the server's session when it reconnects (here: the probe after a timeout)", function()
      local s = H.start_memcached_tls()
      local before, timed_out, after, info
      L.run(function()
        local mc = new { servers = { s.addr }, tls = { ca_file = certs.ca }, io_timeout = 0.1,
          failure_limit = 1, retry_timeout = 0.05 }
        -- the first connection's reply brings the session (TLS 1.3: after
        -- the handshake)
        assert(mc:set(name .. ":r", "1"))
        before = mc:servers()[1]
        -- a timeout closes the connection and marks the server dead; the
        -- probe that follows its retry time makes a new connection
        s.sigstop()
        timed_out = pack(mc:get(name .. ":r"))
        s.sigcont()
        L.sleep(0.1)
        after = pack(mc:get(name .. ":r"))
        info = mc:servers()[1]
      end)
      s.stop()
      assert.are.equal(false, before.tls_resumed)
      assert.are.equal(memcached.ERR_TIMEOUT, timed_out[2])
      assert.are.equal("1", after[1])
      assert.is_true(info.alive)
      assert.are.equal(1, info.connections)
      assert.is_true(info.tls_resumed)
    end)

    describe("fails closed with ERR_TLS, the server staying alive", function()
      it("for an unknown CA, and for a certificate that names another host", function()
        local wrong = H.start_memcached_tls { cert = certs.wrong_name }
        local r, infos = {}, {}
        L.run(function()
          local mc = new { servers = { srv.addr }, tls = { ca_file = certs.other_ca }, failure_limit = 1 }
          r[1] = pack(mc:get("k"))
          r[2] = pack(mc:set("k", "v"))
          r[3] = pack(mc:get_multi { "a", "b" })
          infos[1] = mc:servers()[1]
          local byname = new { servers = { "localhost:" .. wrong.port }, tls = { ca_file = certs.ca },
            failure_limit = 1 }
          r[4] = pack(byname:get("k"))
          r[5] = pack(byname:get("k"))
          infos[2] = byname:servers()[1]
          local byip = new { servers = { wrong.addr }, tls = { ca_file = certs.ca } }
          r[6] = pack(byip:get("k"))
          -- server_name overrides the address's host
          local named = new { servers = { wrong.addr }, tls = { ca_file = certs.ca,
            server_name = "wrong.example" } }
          r[7] = pack(named:set("k", "v"))
        end)
        wrong.stop()
        refused("unable to get local issuer certificate", r[1])
        refused("unable to get local issuer certificate", r[2])
        assert.are.same({}, r[3][1])
        assert.are.equal(memcached.ERR_TLS, r[3][2])
        assert.are.same({ a = memcached.ERR_TLS, b = memcached.ERR_TLS }, r[3][3])
        refused("hostname mismatch", r[4])
        refused("hostname mismatch", r[5])
        refused("IP address mismatch", r[6])
        assert.truthy(r[7][1])
        for _, info in ipairs(infos) do
          assert.is_true(info.alive)
          assert.are.equal(0, info.failures)
          assert.are.equal(0, info.connections) -- each refused connection was closed
        end
      end)

      it("against a plain-text server, sending nothing in clear", function()
        local plain = H.start_memcached()
        local file = os.tmpname()
        local spy = H.start_tls_fault("record", plain.port, file)
        local r, info = {}, nil
        L.run(function()
          local mc = new { servers = { spy.addr }, tls = { ca_file = certs.ca }, failure_limit = 1 }
          r[1] = pack(mc:set("secret-key", "secret-value"))
          r[2] = pack(mc:get("secret-key"))
          info = mc:servers()[1]
          local check = new { servers = { plain.addr } }
          r[3] = pack(check:get("secret-key"))
        end)
        local f = assert(io.open(file, "rb"))
        local sent = f:read("*a")
        f:close()
        os.remove(file)
        spy.stop()
        plain.stop()
        refused("wrong version number", r[1])
        refused("wrong version number", r[2])
        assert.truthy(#sent > 0)
        assert.are.equal(22, sent:byte(1)) -- a TLS handshake record
        assert.is_nil(sent:find("secret", 1, true))
        assert.are.equal(memcached.ERR_CACHE_MISS, r[3][2])
        assert.is_true(info.alive)
        assert.are.equal(0, info.failures)
      end)
      it("when records after the handshake do not decrypt: ERR_TLS, again on the next call", function()
        local bad = H.start_tls_fault("garbage", srv.port)
        local r, info = {}, nil
        L.run(function()
          local mc = new { servers = { bad.addr }, tls = { ca_file = certs.ca }, failure_limit = 1 }
          r[1] = pack(mc:get("k"))
          r[2] = pack(mc:get("k"))
          info = mc:servers()[1]
        end)
        bad.stop()
        for i = 1, 2 do
          assert.is_nil(r[i][1])
          assert.are.equal(memcached.ERR_TLS, r[i][2])
          assert.truthy(r[i][3]:find("receive", 1, true), r[i][3])
        end
        assert.is_true(info.alive)
        assert.are.equal(0, info.connections)
      end)
    end)

    describe("SASL", function()
      it("authenticates every new connection with the right credentials", function()
        local r = {}
        L.run(function()
          local mc = new { servers = { sasl.addr }, username = "alice", password = "s3cret" }
          r[1] = pack(mc:set(name .. ":s", { 1, 2, 3 }))
          r[2] = pack(mc:get(name .. ":s"))
          r[3] = pack(mc:set_multi { [name .. ":a"] = "1", [name .. ":b"] = "2" })
          r[4] = pack(mc:get_multi { name .. ":a", name .. ":b", name .. ":c" })
          r[5] = pack(mc:increment(name .. ":n", 1, 3))
        end)
        assert.truthy(r[1][1])
        assert.are.same({ 1, 2, 3 }, r[2][1])
        assert.is_nil(r[3][2])
        assert.are.same({ [name .. ":a"] = "1", [name .. ":b"] = "2" }, r[4][1])
        assert.are.equal(3, r[5][1])
      end)

      it("gives ERR_AUTH on every call for wrong credentials, without ejecting the server", function()
        local r, infos, events, after = {}, {}, {}, nil
        L.run(function()
          for _, cred in ipairs { { "alice", "wrong" }, { "mallory", "s3cret" } } do
            local mc = new { servers = { sasl.addr }, username = cred[1], password = cred[2],
              failure_limit = 1 }
            mc:set_server_error_callback(function(_, err) events[#events + 1] = err end)
            for _ = 1, 3 do
              r[#r + 1] = pack(mc:get(name .. ":s"))
              r[#r + 1] = pack(mc:set(name .. ":s", "v"))
            end
            local gm = pack(mc:get_multi { "x", "y" })
            assert.are.same({}, gm[1])
            assert.are.same({ x = memcached.ERR_AUTH, y = memcached.ERR_AUTH }, gm[3])
            infos[#infos + 1] = mc:servers()[1]
          end
          -- nothing was stored by the refused clients
          local good = new { servers = { sasl.addr }, username = "alice", password = "s3cret" }
          after = pack(good:get(name .. ":s"))
        end)
        assert.are.equal(12, #r)
        for _, x in ipairs(r) do
          assert.is_nil(x[1])
          assert.are.equal(memcached.ERR_AUTH, x[2])
          assert.truthy(x[3]:find("authentication failed", 1, true), x[3])
        end
        for _, info in ipairs(infos) do
          assert.is_true(info.alive)
          assert.are.equal(0, info.failures)
          assert.are.equal(0, info.connections)
        end
        assert.are.same({}, events)
        assert.are.same({ 1, 2, 3 }, after[1])
      end)

      it("runs over TLS, and fails closed against a server without SASL", function()
        local both = H.start_memcached_tls { sasl = true, users = { tlsuser = "tlspass" } }
        local plain = H.start_memcached()
        local r = {}
        L.run(function()
          local mc = new { servers = { both.addr }, tls = { ca_file = certs.ca },
            username = "tlsuser", password = "tlspass" }
          r[1] = pack(mc:set("both", "yes"))
          r[2] = pack(mc:get("both"))
          local bad = new { servers = { both.addr }, tls = { ca_file = certs.ca },
            username = "tlsuser", password = "nope" }
          r[3] = pack(bad:get("both"))
          local nosasl = new { servers = { plain.addr }, username = "alice", password = "s3cret" }
          r[4] = pack(nosasl:set("k", "v"))
        end)
        both.stop()
        plain.stop()
        assert.truthy(r[1][1])
        assert.are.equal("yes", r[2][1])
        assert.is_nil(r[3][1])
        assert.are.equal(memcached.ERR_AUTH, r[3][2])
        assert.is_nil(r[4][1])
        assert.are.equal(memcached.ERR_AUTH, r[4][2])
        assert.truthy(r[4][3]:find("does not support SASL", 1, true), r[4][3])
      end)
    end)

    it("times out a stalled handshake within connect_timeout while a ticker keeps ticking", function()
      local stall = H.start_tls_fault("stall", srv.port, "60")
      local r, took, tick
      L.run(function(spawn)
        local mc = new { servers = { stall.addr }, tls = { ca_file = certs.ca },
          connect_timeout = 0.2, io_timeout = 1 }
        tick = L.ticker(spawn)
        local t0 = H.now()
        r = pack(mc:get("k"))
        took = H.now() - t0
        tick.stop()
      end)
      local ticks, max_gap = tick.ticks, tick.max_gap
      stall.stop()
      assert.is_nil(r[1])
      assert.are.equal(memcached.ERR_TIMEOUT, r[2])
      assert.truthy(r[3]:find("TLS handshake timed out", 1, true), r[3])
      assert.truthy(took >= 0.18 and took < 0.5, "took " .. took)
      assert.truthy(ticks >= 10, "ticks: " .. ticks)
      assert.truthy(max_gap < 0.15, ("a gap of %.1f ms: the loop was blocked"):format(max_gap * 1000))
    end)

    it("takes the blocking client's options, with its errors", function()
      local wait = L.mod.hooks.wait
      assert.has_error(function() memcached.new { servers = { srv.addr }, wait = wait, tls = 1 } end,
        "option 'tls' must be a boolean or a table, got number")
      assert.has_error(function() memcached.new { servers = { srv.addr }, wait = wait, tls = { ca = "x" } } end,
        "unknown option 'tls.ca'")
      assert.has_error(function() memcached.new { servers = { srv.addr }, wait = wait, username = "a" } end,
        "options 'username' and 'password' go together")
      local mc, err, detail = memcached.new { servers = { srv.addr }, wait = wait,
        tls = { ca_file = "/nonexistent.pem" } }
      assert.is_nil(mc)
      assert.are.equal(memcached.ERR_TLS, err)
      assert.truthy(detail:find("cannot load the CA /nonexistent.pem", 1, true), detail)
      mc, err, detail = memcached.new { servers = { srv.addr }, wait = wait, username = "a\0b",
        password = "x" }
      assert.is_nil(mc)
      assert.are.equal(memcached.ERR_AUTH, err)
      assert.truthy(detail:find("NUL", 1, true), detail)
      -- tls = false asks for nothing: a plain client
      local plain = H.start_memcached()
      local got
      L.run(function()
        local c = new { servers = { plain.addr }, tls = false }
        assert(c:set("k", "plain"))
        got = c:get("k")
      end)
      plain.stop()
      assert.are.equal("plain", got)
    end)
  end)
end
