-- spec/nginx/connections.lua: memcached.resty's hold/unhold and the C
-- client's connection and size options (max_value_size, max_conns,
-- max_idle); run by spec/nginx/tests.lua with its helpers and clients (T).
return function(T)
  local ok, is, show, elapsed = T.ok, T.is, T.show, T.elapsed
  local total_connections, raw_item = T.total_connections, T.raw_item
  local resty_memcached, E = T.resty_memcached, T.E
  local MC1, SILENT, mc, mc2 = T.MC1, T.SILENT, T.mc, T.mc2

  -- hold / unhold: a handler's calls keep one connection per server
  do
    is("hold", { true }, mc2:hold())
    local before = total_connections(MC1)
    local good = true
    for i = 1, 30 do
      local k = "held:" .. i
      if not mc2:set(k, i) or mc2:get(k) ~= i then good = false end
    end
    local m = mc2:get_multi { "held:1", "held:30" }
    good = good and m["held:1"] == 1 and m["held:30"] == 30
    -- light threads take their own connection while one is in use
    local th = {}
    for i = 1, 5 do th[i] = ngx.thread.spawn(function() return mc2:get("held:" .. i) == i end) end
    for i = 1, 5 do
      local okw, r = ngx.thread.wait(th[i])
      good = good and okw and r
    end
    local after = total_connections(MC1)
    ok(good and before and after and after - before <= 6,
       "held connections serve every call of the request, values right", show(good, before, after))
    is("unhold", { true }, mc2:unhold())
    local b2 = total_connections(MC1)
    for _ = 1, 10 do mc2:get("held:1") end
    local a2 = total_connections(MC1)
    ok(b2 and a2 and a2 - b2 <= 1, "... gives them back to the pool", show(b2, a2))
    local mm = mc2:get_multi { "held:1" }
    ok(mm and mm["held:1"] == 1, "calls after unhold work", show(mm and mm["held:1"]))
  end

  -- max_value_size, max_conns, max_idle: the C client's options
  do
    local small = assert(resty_memcached.new { servers = { MC1 }, max_value_size = 2048 })
    local big = ("b"):rep(3000)
    local _, e1 = small:set_raw_data("mv:big", big)
    ok(e1 == E.ERR_VALUE_TOO_LARGE and raw_item(MC1, "mv:big") == nil,
       "max_value_size: a larger value is refused and nothing is sent", show(e1))
    local _, e2 = small:append("mv:big", big)
    is("... append too", { E.ERR_VALUE_TOO_LARGE }, e2)
    local res = small:set_multi { ["mv:a"] = "small", ["mv:b"] = big }
    ok(res and res["mv:a"] == true and res["mv:b"] == E.ERR_VALUE_TOO_LARGE,
       "... set_multi refuses that key alone", show(res and res["mv:a"], res and res["mv:b"]))
    assert(mc:set_raw_data("mv:stored", big))
    local v3, e3 = small:get("mv:stored")
    ok(v3 == nil and e3 == E.ERR_VALUE_TOO_LARGE, "... an item read back over it is refused", show(v3, e3))
    is("... and the next call works", { "small" }, small:get("mv:a"))
    local m3, me3, mf3 = small:get_multi { "mv:stored", "mv:a" }
    ok(m3 and me3 == E.ERR_VALUE_TOO_LARGE and mf3 and mf3["mv:stored"],
       "... get_multi reports it", show(me3))
    ok(small:servers()[1].alive and small:servers()[1].failures == 0,
       "... and the server is not counted as failing", show(small:servers()[1].failures))
    ok(not pcall(resty_memcached.new, { servers = { MC1 }, max_value_size = 10 }),
       "max_value_size below 1024 raises")
    local one = assert(resty_memcached.new { servers = { SILENT }, max_conns = 1, timeout = 0.3,
      failure_limit = 10 })
    local t1 = ngx.thread.spawn(function() return one:get("busy") end)
    ngx.sleep(0.05)
    local dt, r = elapsed(function() return one:get("busy") end)
    ngx.thread.wait(t1)
    ok(r[1] == nil and r[2] == E.ERR_BUSY and dt < 0.1,
       "max_conns 1: a second call while the connection is in use is ERR_BUSY at once",
       show(r[2], dt))
    ok(assert(resty_memcached.new { servers = { MC1 }, max_idle = 4 }):set("mi", 1),
       "max_idle is accepted (nginx's pool keeps that many idle)")
  end
end
