-- spec/nginx/tls_sasl.lua: memcached.resty over TLS (nginx's cosockets,
-- trusted through lua_ssl_trusted_certificate) and SASL (memcached -S),
-- run by spec/nginx/tests.lua with its helpers (T).
return function(T)
  local resty_memcached, var, E = T.resty_memcached, T.var, T.E
  local MC1, MC2 = T.MC1, T.MC2
  local ok, is, show, deep_eq = T.ok, T.is, T.show, T.deep_eq
  -- The ClientHellos in the bytes a client sent (spec/tls_fault.lua's
  -- record): for each, whether it offers a session to resume (a
  -- pre_shared_key extension, TLS 1.3; or a session_ticket extension with a
  -- ticket in it, TLS 1.2).
  -- A record cut short at the end of the file (the proxy has not written
  -- all of it yet) is left out and counted in out.cut; a handshake record
  -- that does not parse as a ClientHello is counted in out.bad.
  local function hello_offers(body)
    local p = 5 + 2 + 32 -- type, length (3), version (2), random (32)
    p = p + 1 + body:byte(p) -- session id
    p = p + 2 + body:byte(p) * 256 + body:byte(p + 1) -- cipher suites
    p = p + 1 + body:byte(p) -- compression methods
    local ext_end = p + 2 + body:byte(p) * 256 + body:byte(p + 1)
    if ext_end - 1 > #body then error("extensions past the record") end
    p = p + 2
    local offers = false
    while p + 4 <= ext_end do
      local etype = body:byte(p) * 256 + body:byte(p + 1)
      local elen = body:byte(p + 2) * 256 + body:byte(p + 3)
      if etype == 41 or (etype == 35 and elen > 0) then offers = true end
      p = p + 4 + elen
    end
    return offers
  end
  local function client_hellos(bytes)
    local out, pos = { cut = 0, bad = 0 }, 1
    while pos + 5 <= #bytes do
      local ctype = bytes:byte(pos)
      local len = bytes:byte(pos + 3) * 256 + bytes:byte(pos + 4)
      local body = bytes:sub(pos + 5, pos + 4 + len)
      if #body < len then out.cut = out.cut + 1 break end
      if ctype == 22 and body:byte(1) == 1 then -- a handshake record holding a ClientHello
        local okp, offers = pcall(hello_offers, body)
        if okp then out[#out + 1] = { offers_session = offers }
        else -- shown in the test's message: where, and its first bytes
          out.bad = out.bad + 1
          out.bad_at = out.bad_at or (pos .. "/" .. #bytes .. ": "
            .. bytes:sub(pos, pos + 47):gsub(".", function(ch) return ("%02x"):format(ch:byte()) end))
        end
      end
      pos = pos + 5 + len
    end
    return out
  end

  -- The handshakes in the bytes a TLS 1.2 client sent, connection after
  -- connection: for each ClientHello, whether a ClientKeyExchange followed
  -- (a full handshake; a resumed one has none). Records after the client's
  -- ChangeCipherSpec are encrypted until the next connection's ClientHello,
  -- which follows its application data or alerts.
  local function tls12_handshakes(bytes)
    local out, pos, encrypted, after_app = {}, 1, false, false
    while pos + 5 <= #bytes do
      local ctype = bytes:byte(pos)
      local len = bytes:byte(pos + 3) * 256 + bytes:byte(pos + 4)
      local first = bytes:byte(pos + 5)
      if ctype == 22 and after_app then encrypted, after_app = false, false end
      if ctype == 20 then encrypted = true
      elseif ctype == 23 or ctype == 21 then after_app = true
      elseif ctype == 22 and not encrypted then
        if first == 1 then out[#out + 1] = { full = false }
        elseif first == 16 and #out > 0 then out[#out].full = true end
      end
      pos = pos + 5 + len
    end
    return out
  end

  local function read_all(path)
    local f = io.open(path, "rb")
    if not f then return "" end
    local b = f:read("*a")
    f:close()
    return b or ""
  end

  -- TLS (memcached -Z, certificates made by scripts/test-openresty.sh,
  -- trusted through lua_ssl_trusted_certificate) and SASL (memcached -S).
  local function tls_and_sasl()
    local TLS = "localhost:" .. var.tls_port
    local function tls_client(addr, tls, more)
      local o = { servers = { addr }, tls = tls == nil and true or tls, timeout = 1 }
      for k, v in pairs(more or {}) do o[k] = v end
      return assert(resty_memcached.new(o))
    end
    local t = tls_client(TLS)
    is("TLS: set", { true }, t:set("tls:k", { v = "over TLS" }) ~= nil)
    local tv = t:get("tls:k")
    ok(type(tv) == "table" and tv.v == "over TLS", "TLS: get", show(tv))
    t:set("tls:k2", 2)
    local tm, tmerr = t:get_multi { "tls:k", "tls:k2", "tls:none" }
    ok(tm and tm["tls:k2"] == 2 and tm["tls:k"] and tm["tls:k"].v == "over TLS" and tm["tls:none"] == nil,
       "TLS: get_multi", show(tmerr))
    local tsr = t:set_multi { ["tls:a"] = 1, ["tls:b"] = 2 }
    ok(tsr and tsr["tls:a"] and tsr["tls:b"] and t:get("tls:b") == 2, "TLS: set_multi", show(tsr))
    local tst, tsterr = t:stats()
    ok(tst and tst[TLS] and tonumber(tst[TLS].curr_items) >= 3, "TLS: stats", show(tsterr))
    is("TLS: delete", { true }, t:delete("tls:k2"))
    ok(t:servers()[1].alive and t:servers()[1].failures == 0, "TLS: the server is alive")
    -- what TLS does not change: the plain client's view of the same item
    -- is none (another server), and a plain client cannot reach a TLS server
    local plain_to_tls = assert(resty_memcached.new { servers = { TLS }, timeout = 0.3 })
    local pv, perr = plain_to_tls:get("tls:k")
    ok(pv == nil and perr ~= nil and perr ~= E.ERR_CACHE_MISS,
       "TLS: a client without tls gets no answer from a TLS server", show(pv, perr))

    -- every refusal is ERR_TLS with the reason, and no failure of the server
    local function refused(name, addr, want, tls)
      local c = tls_client(addr, tls)
      local v, err, detail = c:get("tls:k")
      ok(v == nil and err == E.ERR_TLS and type(detail) == "string" and detail:find(want, 1, true),
         "TLS: " .. name .. ": ERR_TLS naming why", show(v, err, detail))
      local v2, err2 = c:set("tls:k", "x")
      ok(v2 == nil and err2 == E.ERR_TLS, "TLS: " .. name .. ": every call (set)", show(v2, err2))
      local m, merr, mfail = c:get_multi { "a", "b" }
      ok(deep_eq(m, {}) and merr == E.ERR_TLS and mfail and mfail.a == E.ERR_TLS and mfail.b == E.ERR_TLS,
         "TLS: " .. name .. ": every key of get_multi", show(merr, mfail and mfail.a))
      local info = c:servers()[1]
      ok(info.alive and info.failures == 0, "TLS: " .. name .. ": the server is not marked dead",
         show(info.alive, info.failures))
    end
    refused("a certificate from an unknown CA", "localhost:" .. var.tls_stranger_port,
      "unable to verify")
    refused("a certificate for another name", "localhost:" .. var.tls_wrong_port, "host mismatch")
    refused("an expired certificate", "localhost:" .. var.tls_expired_port, "expired")
    refused("server_name that the certificate does not name", TLS, "host mismatch",
      { server_name = "other.example" })
    -- nginx checks a name against the certificate's DNS names only
    -- (X509_check_host), so an IP address given as the server is refused
    -- although the certificate names it (IP:127.0.0.1): give a host name or
    -- tls.server_name
    refused("an IP address (nginx checks DNS names only)", "127.0.0.1:" .. var.tls_port, "host mismatch")
    local byname = tls_client("127.0.0.1:" .. var.tls_port, { server_name = "localhost" })
    is("TLS: an IP address with tls.server_name = the certificate's name", { 1 },
      byname:get("tls:a"))
    local noverify = tls_client("localhost:" .. var.tls_stranger_port, { verify = false })
    ok(noverify:set("tls:nv", 1) and noverify:get("tls:nv") == 1,
       "TLS: verify = false accepts an unknown CA's certificate")

    -- a plain-text server when TLS is asked for: the handshake fails, and
    -- nothing of the request went over in clear (the proxy recorded it)
    local PLAIN_REC = "localhost:" .. var.plain_rec_port
    local pc = tls_client(PLAIN_REC)
    local _, pcerr, pcdetail = pc:set("tls-secret-key", "tls-secret-value")
    ok(pcerr == E.ERR_TLS, "TLS: a plain-text server fails closed with ERR_TLS", show(pcerr, pcdetail))
    local _, pcerr2 = pc:get("tls-secret-key")
    ok(pcerr2 == E.ERR_TLS, "TLS: ... on every call", show(pcerr2))
    local sent = read_all(var.tmp .. "/plain_rec.bin")
    ok(#sent > 0 and sent:byte(1) == 22 and not sent:find("secret", 1, true),
       "TLS: ... sending only handshake records, nothing in clear", show(#sent, sent:byte(1)))
    local plain = assert(resty_memcached.new { servers = { MC1 } })
    is("TLS: ... and the plain server never got the item", { nil, E.ERR_CACHE_MISS },
      plain:get("tls-secret-key"))
    ok(pc:servers()[1].alive and pc:servers()[1].failures == 0,
       "TLS: ... and the server is not marked dead")

    -- a server that demands a client certificate
    local CLIENT = "localhost:" .. var.tls_client_port
    local dir = var.tls_dir
    local cc = tls_client(CLIENT, { cert_file = dir .. "/client.pem", key_file = dir .. "/client.key" })
    ok(cc:set("tls:cc", 7) and cc:get("tls:cc") == 7, "TLS: a client certificate (tls.cert_file, key_file)")
    local nocert = tls_client(CLIENT)
    local ncv, ncerr, ncdetail = nocert:get("tls:cc")
    ok(ncv == nil and ncerr == E.ERR_TLS, "TLS: without the client certificate the server refuses ("
       .. tostring(ncerr) .. ": " .. tostring(ncdetail) .. ")", show(ncv, ncerr, ncdetail))
    local badfile, bferr, bfdetail = resty_memcached.new { servers = { CLIENT },
      tls = { cert_file = dir .. "/nothing.pem", key_file = dir .. "/client.key" } }
    ok(badfile == nil and bferr == E.ERR_TLS and tostring(bfdetail):find("nothing.pem", 1, true),
       "TLS: an unreadable client certificate: new gives ERR_TLS", show(badfile, bferr, bfdetail))
    for _, k in ipairs { "ca_file", "ciphers", "min_version" } do
      local okn, nerr = pcall(resty_memcached.new, { servers = { TLS }, tls = { [k] = "x" } })
      ok(not okn and tostring(nerr):find("lua_ssl_", 1, true),
         "TLS: tls." .. k .. " raises, naming nginx's directive", show(nerr))
    end

    -- one handshake per connection: calls reuse the pooled TLS connection;
    -- a new connection offers the session of the last one (the proxy
    -- records each ClientHello). keepalive_timeout 0.2: the idle connection
    -- is closed by nginx, so the next call makes a new one.
    local REC = "localhost:" .. var.tls_rec_port
    local rc = tls_client(REC, nil, { keepalive_timeout = 0.2 })
    local all = true
    for i = 1, 10 do
      if not rc:set("tls:r" .. i, i) or rc:get("tls:r" .. i) ~= i then all = false end
    end
    local hellos = client_hellos(read_all(var.tmp .. "/tls_rec.bin"))
    ok(all and #hellos == 1, "TLS: 20 calls, one handshake (the connection is pooled)",
       show(all, #hellos, hellos.cut, hellos.bad, hellos.bad_at))
    ngx.sleep(0.5)
    ok(rc:get("tls:r1") == 1, "TLS: a call after the pooled connection closed")
    -- the proxy writes what it got before it forwards it, so the file holds
    -- every whole record by now; one cut short is waited for a little
    -- (and shows in the message if it stays cut)
    local recorded
    for _ = 1, 20 do
      recorded = read_all(var.tmp .. "/tls_rec.bin")
      hellos = client_hellos(recorded)
      if hellos.cut == 0 then break end
      ngx.sleep(0.05)
    end
    ok(#hellos == 2 and not hellos[1].offers_session and hellos[2].offers_session,
       "TLS: the new connection offers the last session to resume",
       show(#hellos, hellos[1] and hellos[1].offers_session, hellos[2] and hellos[2].offers_session,
            #recorded, hellos.cut, hellos.bad, hellos.bad_at))

    -- under TLS 1.2 the server's acceptance shows: the second connection's
    -- handshake is an abbreviated one
    local sub = ngx.location.capture("/tls12")
    local hs = tls12_handshakes(read_all(var.tmp .. "/tls12_rec.bin"))
    ok(sub.status == 200 and sub.body == "true nil v -\n" and #hs == 2 and hs[1].full
       and not hs[2].full, "TLS 1.2: the session is resumed on the new connection",
       show(sub.status, sub.body, #hs, hs[1] and hs[1].full, hs[2] and hs[2].full))

    -- SASL PLAIN (memcached -S; user mcuser made by saslpasswd2)
    local SASL = var.sasl
    local function sasl_client(addr, user, pass, more)
      local o = { servers = { addr }, username = user, password = pass, timeout = 1 }
      for k, v in pairs(more or {}) do o[k] = v end
      return assert(resty_memcached.new(o))
    end
    local sc = sasl_client(SASL, "mcuser", "mcsecret")
    ok(sc:set("sasl:k", { 1, 2 }) ~= nil, "SASL: set")
    local sv = sc:get("sasl:k")
    ok(type(sv) == "table" and sv[2] == 2, "SASL: get", show(sv))
    sc:set("sasl:k2", "two")
    local sm = sc:get_multi { "sasl:k", "sasl:k2", "sasl:none" }
    ok(sm and sm["sasl:k2"] == "two" and sm["sasl:none"] == nil, "SASL: get_multi")
    local sst = sc:stats()
    local before = sst and sst[SASL] and tonumber(sst[SASL].auth_cmds)
    ok(before and before >= 1, "SASL: stats (auth_cmds " .. tostring(before) .. ")")
    for i = 1, 20 do sc:get("sasl:k") end
    sst = sc:stats()
    local after = sst and sst[SASL] and tonumber(sst[SASL].auth_cmds)
    ok(after == before, "SASL: pooled connections authenticate once, not per call",
       show(before, after))
    is("SASL: delete", { true }, sc:delete("sasl:k2"))
    is("SASL: increment", { 5 }, sc:increment("sasl:n", 1, 5))

    local bad = sasl_client(SASL, "mcuser", "wrong")
    for i, c in ipairs {
      { "get", function() return bad:get("sasl:k") end },
      { "set", function() return bad:set("sasl:k", 1) end },
      { "get again", function() return bad:get("sasl:k") end },
      { "delete", function() return bad:delete("sasl:k") end },
    } do
      local v, err, detail = c[2]()
      ok(v == nil and err == E.ERR_AUTH and (i > 1 or tostring(detail):find("authentication failed", 1, true)),
         "SASL: wrong password: " .. c[1] .. " is ERR_AUTH", show(v, err, detail))
    end
    local bm, bmerr, bmfail = bad:get_multi { "a", "b" }
    ok(deep_eq(bm, {}) and bmerr == E.ERR_AUTH and bmfail and bmfail.a == E.ERR_AUTH,
       "SASL: wrong password: get_multi is ERR_AUTH for every key", show(bmerr))
    local bst, bsterr = bad:stats()
    ok(bst == nil or bst[SASL] == nil, "SASL: wrong password: no stats", show(bsterr))
    ok(bad:servers()[1].alive and bad:servers()[1].failures == 0,
       "SASL: wrong password: the server is not marked dead (alive, no failures)",
       show(bad:servers()[1].alive, bad:servers()[1].failures))
    local nouser = sasl_client(SASL, "nobody", "mcsecret")
    is("SASL: unknown user is ERR_AUTH", { nil, E.ERR_AUTH }, nouser:get("sasl:k"))
    -- the authenticated client's pooled connections serve no one else
    local anon = assert(resty_memcached.new { servers = { SASL }, timeout = 1 })
    is("SASL: a client without credentials never gets an authenticated connection",
      { nil, E.ERR_AUTH }, anon:get("sasl:k"))
    is("SASL: credentials against a server without SASL are ERR_AUTH", { nil, E.ERR_AUTH },
      sasl_client(MC2, "mcuser", "mcsecret"):get("k"))
    local okc, cerr = pcall(resty_memcached.new, { servers = { SASL }, username = "u" })
    ok(not okc and tostring(cerr):find("go together", 1, true), "SASL: a username alone raises", show(cerr))
    okc, cerr = pcall(resty_memcached.new, { servers = { SASL }, username = "u\0v", password = "p" })
    ok(not okc, "SASL: a NUL byte in a username raises", show(cerr))

    -- a server marked dead (by hand: this one never fails) is probed over a
    -- new connection, which authenticates first: refused credentials are an
    -- answer, so the probe brings it back
    local H = require "memcached.resty.health"
    local pc2 = sasl_client(SASL, "mcuser", "wrong", { failure_limit = 1, retry_timeout = 0.05 })
    local states = {}
    pc2:set_server_error_callback(function(_, why, state) states[#states + 1] = state .. ":" .. why end)
    H.server_failed(pc2, 0, E.ERR_TIMEOUT, "marked by the test")
    ok(not pc2:servers()[1].alive, "SASL probe: the server is marked dead")
    ngx.sleep(0.1)
    local _, perr2 = pc2:get("sasl:k")
    ok(perr2 == E.ERR_AUTH and pc2:servers()[1].alive and #states == 2 and states[2]:find("^up:"),
       "SASL probe: the probe authenticates, is refused, and brings the server back",
       show(perr2, pc2:servers()[1].alive, table.concat(states, " | ")))

    -- a figure, not a test (the VM's timings are noisy): warm gets over
    -- TLS, over SASL and plain, to the same kind of server
    local function per_get(c, key)
      c:set(key, "x")
      c:get(key)
      ngx.update_time()
      local t0 = ngx.now()
      for _ = 1, 500 do c:get(key) end
      ngx.update_time()
      return (ngx.now() - t0) / 500 * 1e6
    end
    ngx.say(("# warm get: plain %.1f us, TLS %.1f us, SASL %.1f us (500 each, one run)"):format(
      per_get(plain, "fig:k"), per_get(t, "fig:k"), per_get(sc, "fig:k")))

    -- TLS and SASL at once
    local both = sasl_client("localhost:" .. var.tls_sasl_port, "mcuser", "mcsecret", { tls = true })
    ok(both:set("both:k", "yes") and both:get("both:k") == "yes", "TLS + SASL: set and get")
    local bothbad = sasl_client("localhost:" .. var.tls_sasl_port, "mcuser", "no", { tls = true })
    is("TLS + SASL: wrong password is ERR_AUTH", { nil, E.ERR_AUTH }, bothbad:get("both:k"))
  end

  tls_and_sasl()
end
