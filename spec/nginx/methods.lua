-- spec/nginx/methods.lua: memcached.resty's set_multi, delete_multi,
-- stats, delete_lock and touch_atomic_value against the C client's
-- arguments, returns and errors; run by spec/nginx/tests.lua with its
-- helpers and clients (T).
return function(T)
  local ok, is, show, deep_eq = T.ok, T.is, T.show, T.deep_eq
  local raw_item = T.raw_item
  local resty_memcached, var, E = T.resty_memcached, T.var, T.E
  local MC1, MC2, REFUSED = T.MC1, T.MC2, T.REFUSED
  local ver = T.ver

  -- set_multi, delete_multi, stats, delete_lock, touch_atomic_value: the
  -- C client's methods, arguments, returns and errors
  do
    local m2 = assert(resty_memcached.new { servers = { MC1, MC2 }, timeout = 0.5 })
    -- reads items as bytes with their flags (the msgpack flag is another)
    local raw = assert(resty_memcached.new { servers = { MC1, MC2 }, msgpack_flag = 99 })
    local items, mkeys = { s = "hi", t = { 1, { a = true } }, n = 42 }, {}
    for i = 1, 30 do items["sm:" .. i] = "v" .. i end
    for k in pairs(items) do mkeys[#mkeys + 1] = k end
    local res, err = m2:set_multi(items, 60)
    local all = true
    for k in pairs(items) do if res[k] ~= true then all = false end end
    ok(all and err == nil, "set_multi: every key true", show(err))
    ok(deep_eq(m2:get_multi(mkeys), items), "set_multi: the values read back over two servers")
    m2:set("s2", "hi")
    local rv, _, rf = raw:get("s")
    is("set_multi frames a string as set does (msgpack str, the msgpack flag)", { raw:get("s2"), 1 },
       rv, rf)
    ok(deep_eq(m2:set_multi {}, {}), "set_multi{} is {}")
    local bad = { ["bad key"] = 1, good = 2, f = function() end, [string.rep("k", 251)] = 3 }
    res, err = m2:set_multi(bad)
    ok(res and res.good == true and res["bad key"] == E.ERR_MALFORMED_KEY and res.f == E.ERR_UNENCODABLE
       and res[string.rep("k", 251)] == E.ERR_MALFORMED_KEY
       and (err == E.ERR_MALFORMED_KEY or err == E.ERR_UNENCODABLE),
       "set_multi: a malformed key or an unencodable value fails that key alone", show(err))
    is("... the others are stored", { 2 }, m2:get("good"))
    res, err = m2:set_multi { huge = string.rep("x", 2 * 1024 * 1024), small = "s" }
    ok(res and res.huge == E.ERR_VALUE_TOO_LARGE and res.small == true and err == E.ERR_VALUE_TOO_LARGE,
       "set_multi: a value over the server's limit fails that key alone", show(res and res.huge, err))
    is("... the other is stored and the client works", { "s" }, m2:get("small"))
    ok(not pcall(m2.set_multi, m2, { [1] = "x" }), "set_multi: a key that is not a string raises")
    ok(not pcall(m2.set_multi, m2, "k"), "set_multi: items that are not a table raise")
    ok(not pcall(m2.set_multi, m2, { k = 1 }, -1), "set_multi: a negative expiration raises")

    -- delete_multi
    m2:set_multi { d1 = 1, d2 = 2 }
    res, err = m2:delete_multi { "d1", "d2", "d:missing", "d1" }
    ok(deep_eq(res, { d1 = true, d2 = true, ["d:missing"] = E.ERR_CACHE_MISS }) and err == E.ERR_CACHE_MISS,
       "delete_multi: true, a miss, a repeated key deleted once", show(err, res and res.d1))
    is("... the keys are gone", { nil, E.ERR_CACHE_MISS }, m2:get("d2"))
    res, err = m2:delete_multi { "x y", "good" }
    ok(res and res["x y"] == E.ERR_MALFORMED_KEY and res.good == true and err == E.ERR_MALFORMED_KEY,
       "delete_multi: a malformed key fails alone", show(err))
    ok(deep_eq(m2:delete_multi {}, {}), "delete_multi{} is {}")
    ok(not pcall(m2.delete_multi, m2, { "a", 5 }), "delete_multi: a key that is not a string raises")

    -- a server that refuses: its keys fail, the others' are done, and every
    -- batch counts against it (failure_limit 3: two batches leave it alive)
    local hr = assert(resty_memcached.new { servers = { MC1, REFUSED }, timeout = 0.5, failure_limit = 3 })
    local hitems, on_ref = {}, 0
    for i = 1, 20 do
      local k = "hr:" .. i
      hitems[k] = i
      if hr:pick_server(k) == REFUSED then on_ref = on_ref + 1 end
    end
    res, err = hr:set_multi(hitems)
    local nt, nref = 0, 0
    for k, r in pairs(res or {}) do
      if r == true and hr:pick_server(k) == MC1 then nt = nt + 1 end
      if r == E.ERR_CONNECTION_REFUSED and hr:pick_server(k) == REFUSED then nref = nref + 1 end
    end
    ok(on_ref > 0 and nref == on_ref and nt == 20 - on_ref and err == E.ERR_CONNECTION_REFUSED,
       "set_multi with one server refusing: its keys fail, the others are stored",
       show(on_ref, nref, nt, err))
    local dk = {}
    for k in pairs(hitems) do dk[#dk + 1] = k end
    res, err = hr:delete_multi(dk)
    nt, nref = 0, 0
    for k, r in pairs(res or {}) do
      if r == true and hr:pick_server(k) == MC1 then nt = nt + 1 end
      if r == E.ERR_CONNECTION_REFUSED and hr:pick_server(k) == REFUSED then nref = nref + 1 end
    end
    ok(nref == on_ref and nt == 20 - on_ref and err == E.ERR_CONNECTION_REFUSED,
       "delete_multi with one server refusing: its keys fail, the others are deleted", show(nref, nt, err))
    local hl = hr:servers()
    ok(hl[2].failures == 2 and hl[2].alive, "each batch counted once against the refusing server",
       show(hl[2].failures, hl[2].alive))
    err = select(2, hr:set_multi(hitems))
    hl = hr:servers()
    ok(hl[2].alive == false and err == E.ERR_CONNECTION_REFUSED, "... and the third marks it dead",
       show(hl[2].alive, err))
    res, err = hr:set_multi(hitems)
    ok(res and err == nil, "... then its keys go elsewhere", show(err))

    -- stats
    local st, serr = m2:stats()
    ok(st and serr == nil and st[MC1] and st[MC2] and type(st[MC1].pid) == "string"
       and st[MC1].version == ver[MC1], "stats: every server's table of strings", show(st, serr))
    st = m2:stats("settings")
    ok(st and st[MC1] and st[MC1].item_size_max, "stats(group)", show(st and st[MC1]))
    is("stats of an unknown group is ERR_NO_STATS", { nil, E.ERR_NO_STATS }, m2:stats("bogus"))
    ok(not pcall(m2.stats, m2, {}), "stats: a group that is not a string raises")
    ok(not pcall(m2.stats, m2, string.rep("g", 65536)), "stats: a group over 65535 bytes raises")
    local sr = assert(resty_memcached.new { servers = { MC1, REFUSED }, timeout = 0.5 })
    st, serr = sr:stats()
    ok(st and st[MC1] and st[REFUSED] == nil and serr == E.ERR_CONNECTION_REFUSED,
       "stats with one server refusing: the others, and the error", show(st, serr))
    ok(sr:servers()[2].failures == 1, "... which counts against it", show(sr:servers()[2].failures))
    local _, de, dd = resty_memcached.new { servers = { REFUSED } }:stats()
    ok(de == E.ERR_NO_STATS and type(dd) == "string" and dd:find("refused", 1, true),
       "stats when no server answers: ERR_NO_STATS and the detail", show(de, dd))
    is("stats with no servers", { nil, E.ERR_NO_SERVERS }, resty_memcached.new { servers = {} }:stats())
    is("memcached -S: stats is ERR_NO_STATS", { nil, E.ERR_NO_STATS },
       resty_memcached.new { servers = { var.sasl } }:stats())

    -- delete_lock
    m2:set("lk", "v")
    is("delete_lock", { true }, m2:delete_lock("lk", 60))
    is("... get is a miss", { nil, E.ERR_CACHE_MISS }, m2:get("lk"))
    is("... add fails", { nil, E.ERR_NOT_STORED }, m2:add("lk", 1))
    ok(m2:get_multi({ "lk" }).lk == nil, "... absent from get_multi")
    is("... increment is a miss", { nil, E.ERR_CACHE_MISS }, m2:increment("lk", 1))
    is("... touch_atomic_value is a miss", { nil, E.ERR_CACHE_MISS }, m2:touch_atomic_value("lk"))
    local lv, lf = raw_item(m2:pick_server("lk"), "lk")
    is("... the marker is the C client's", { "\0memcached.lua delete_lock\0", 0x6d634c4b }, lv, lf)
    is("delete_lock of a missing key", { nil, E.ERR_CACHE_MISS }, m2:delete_lock("lk:none", 60))
    is("... stores nothing", { nil, E.ERR_CACHE_MISS }, m2:get("lk:none"))
    m2:set("lk0", 1)
    is("delete_lock with 0 seconds is a delete", { true }, m2:delete_lock("lk0", 0))
    ok(type(m2:add("lk0", 1)) == "number", "... add then works")
    m2:set("lkt", 1)
    is("delete_lock{key =, seconds =}", { true }, m2:delete_lock { key = "lkt", seconds = 60 })
    is("delete_lock{key =, expiration =}", { true }, m2:delete_lock { key = "lkt", expiration = 60 })
    is("delete_lock of a malformed key", { nil, E.ERR_MALFORMED_KEY }, m2:delete_lock("a b", 1))
    ok(not pcall(m2.delete_lock, m2, "k"), "delete_lock without seconds raises")
    ok(not pcall(m2.delete_lock, m2, "k", -1), "delete_lock with negative seconds raises")
    ok(not pcall(m2.delete_lock, m2, "k", 1.5), "delete_lock with fractional seconds raises")
    is("delete_lock on a refusing server", { nil, E.ERR_CONNECTION_REFUSED },
       resty_memcached.new { servers = { REFUSED } }:delete_lock("k", 1))

    -- touch_atomic_value
    m2:increment("ta", 1, 41)
    is("touch_atomic_value", { 41 }, m2:touch_atomic_value("ta"))
    is("... changes nothing", { "41" }, m2:get("ta"))
    is("... returns only the value", { 1 }, select("#", m2:touch_atomic_value("ta")))
    is("touch_atomic_value{key =}", { 41 }, m2:touch_atomic_value { key = "ta" })
    is("touch_atomic_value of a missing key", { nil, E.ERR_CACHE_MISS }, m2:touch_atomic_value("ta:none"))
    is("... does not create it", { nil, E.ERR_CACHE_MISS }, m2:get("ta:none"))
    m2:set("ta:mp", { 1 })
    is("touch_atomic_value of a msgpack item", { nil, E.ERR_NON_NUMERIC }, m2:touch_atomic_value("ta:mp"))
    is("touch_atomic_value of a malformed key", { nil, E.ERR_MALFORMED_KEY }, m2:touch_atomic_value(""))
    is("touch_atomic_value on a refusing server", { nil, E.ERR_CONNECTION_REFUSED },
       resty_memcached.new { servers = { REFUSED } }:touch_atomic_value("k"))
    m2:set_raw_data("ta:53", "9007199254740992")
    is("counters are exact to 2^53 (the core's counter reply, a double)", { 2 ^ 53 },
       m2:touch_atomic_value("ta:53"))
    is("increment through the core's counter reply", { 2 ^ 53 + 2 }, m2:increment("ta:53", 2))

    -- a server that streams stat entries without end: capped at 100,000
    local root = var.restart_cmd:match("^(%S+)/spec/nginx/restart_memcached%.sh")
    local script, out = os.tmpname(), os.tmpname()
    local f = assert(io.open(script, "w"))
    f:write(([[
port=$(lua5.4 -e 'local s = assert(require("socket").bind("127.0.0.1", 0)) local _, p = s:getsockname() s:close() print(p)')
(
  for fd in /proc/$BASHPID/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
  done
  exec timeout 60 lua5.4 %s/spec/fault_server.lua "$port" stat_flood 100001 </dev/null >/dev/null 2>&1
) &
echo "$! $port" >%s
]]):format(root, out))
    f:close()
    os.execute("bash " .. script)
    local fh = assert(io.open(out))
    local pid, fport = fh:read("*n", "*n")
    fh:close()
    os.remove(script)
    os.remove(out)
    for _ = 1, 100 do
      local c = ngx.socket.tcp()
      local up = c:connect("127.0.0.1", fport)
      c:close()
      if up then break end
      ngx.sleep(0.05)
    end
    local FLOOD = "127.0.0.1:" .. fport
    local fl = assert(resty_memcached.new { servers = { FLOOD, MC1 }, timeout = 5 })
    st, serr = fl:stats()
    ok(st and st[MC1] and st[FLOOD] == nil and serr == E.ERR_PROTOCOL and fl:servers()[1].failures == 1,
       "stats: a server sending more than 100,000 entries fails with ERR_PROTOCOL, and counts",
       show(st and st[FLOOD], serr, fl:servers()[1].failures))
    os.execute("kill " .. tostring(pid) .. " 2>/dev/null")
  end
end
