-- Served by nginx (content_by_lua_file) for scripts/test-openresty.sh:
-- exercises every method of memcached.resty against real memcached servers
-- and spec/fault_server.lua, and answers with TAP lines.
local resty_memcached = require "memcached.resty"
local memcached = require "memcached"

local var = ngx.var
local MC1, MC2, REFUSED, SILENT = var.mc1, var.mc2, var.refused, var.silent

local n = 0
local function ok(cond, name, diag)
  n = n + 1
  ngx.say((cond and "ok " or "not ok ") .. n .. " - " .. name)
  if not cond and diag then ngx.say("#   " .. tostring(diag):gsub("\n", "\n#   ")) end
  return cond
end

local function show(...)
  local t = { n = select("#", ...), ... }
  for i = 1, t.n do t[i] = tostring(t[i]) end
  return table.concat(t, ", ", 1, t.n)
end

-- ok() when the first returned values equal want's (nil holes allowed)
local function is(name, want, ...)
  local same = true
  for i = 1, table.maxn(want) do
    if select(i, ...) ~= want[i] then same = false end
  end
  return ok(same, name, "got: " .. show(...))
end

local function deep_eq(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not deep_eq(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function elapsed(fn)
  ngx.update_time()
  local t = ngx.now()
  local r = { fn() }
  ngx.update_time()
  return ngx.now() - t, r
end

local E = resty_memcached

-- memcached's total_connections counter, read over a cosocket with the codec
-- (the stat connection itself counts once)
local function total_connections(addr)
  local codec = memcached.codec
  local host, port = addr:match("^(.*):(%d+)$")
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  if not sock:connect(host, tonumber(port)) then return nil end
  sock:send(codec.stat(7))
  local r, total = codec.reader(), nil
  while true do
    local res = r:get()
    if res == nil then break end
    if res then
      if res.key == "" then break end
      if res.key == "total_connections" then total = tonumber(res.value) end
    else
      local data = sock:receiveany(4096)
      if not data then break end
      r:feed(data)
    end
  end
  sock:close()
  return total
end

-- an item's value and flags as the server holds them (a GETK over a
-- cosocket with the codec: no client rule in the way)
local function raw_item(addr, key)
  local codec = memcached.codec
  local host, port = addr:match("^(.*):(%d+)$")
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  if not sock:connect(host, tonumber(port)) then return nil end
  sock:send(codec.get(codec.op.GETK, 1, key))
  local r = codec.reader()
  local res = r:get()
  while res == false do
    local data = sock:receiveany(4096)
    if not data then break end
    r:feed(data)
    res = r:get()
  end
  sock:close()
  if res and res.status == 0 then return res.value, res.flags end
end


local function run()
  local mc = assert(resty_memcached.new { servers = { MC1 }, timeout = 0.5 })
  is("flush_all", { true }, mc:flush_all())

  -- reading
  is("get of a missing key is a miss", { nil, E.ERR_CACHE_MISS }, mc:get("missing"))
  local nested = { name = "Ada", langs = { "lua", "c" }, deep = { a = { b = { c = 1.5 } } },
                   flag = true, n = 42, bin = "a\0b\255" }
  local cas = mc:set("user:42", nested, 300)
  ok(type(cas) == "number" and cas > 0, "set returns a cas", show(cas))
  local v, gcas, flags = mc:get("user:42")
  ok(deep_eq(v, nested), "nested table round trip")
  is("get returns cas and the msgpack flag", { cas, 1 }, gcas, flags)
  mc:set("nil", nil)
  local nv, ncas = mc:get("nil")
  ok(nv == nil and type(ncas) == "number", "a stored nil reads back as nil, cas", show(nv, ncas))
  local big = string.rep("0123456789", 50000)
  mc:set("big", big)
  is("a 500 kB value round trip", { big }, mc:get("big"))
  is("a value over the server's limit", { nil, E.ERR_VALUE_TOO_LARGE },
     mc:set("huge", string.rep("x", 2 * 1024 * 1024)))
  is("the client still works after it", { big }, mc:get("big"))
  is("table form of set/get", { "tv" }, mc:get { key = (mc:set { key = "tk", value = "tv", expiration = 60 } and "tk") })

  -- storing
  is("add of an existing key", { nil, E.ERR_NOT_STORED }, mc:add("user:42", 1))
  ok(type(mc:add("new", "x")) == "number", "add of a new key")
  is("replace of a missing key", { nil, E.ERR_NOT_STORED }, mc:replace("nope", 1))
  ok(type(mc:replace("new", "y")) == "number", "replace of an existing key")
  local c1 = select(2, mc:get("user:42"))
  local c2 = mc:set("user:42", "changed")
  is("compare_and_swap with a stale cas", { nil, E.ERR_CAS_CONFLICT },
     mc:compare_and_swap("user:42", "mine", c1))
  local c3 = mc:compare_and_swap("user:42", "mine", c2)
  ok(type(c3) == "number" and c3 ~= c2, "compare_and_swap with the current cas", show(c3))
  mc:delete("user:42")
  is("compare_and_swap of a vanished key", { nil, E.ERR_NOT_STORED },
     mc:compare_and_swap("user:42", "mine", c3))
  is("set with a cas of a missing key", { nil, E.ERR_NOT_STORED }, mc:set("user:42", 1, 0, c3))
  ok(not pcall(mc.compare_and_swap, mc, "k", 1), "compare_and_swap without cas raises")
  is("unencodable value", { nil, E.ERR_UNENCODABLE }, mc:set("f", function() end))

  -- raw data
  ok(type(mc:set_raw_data("raw", "by\0tes", 0, nil, 42)) == "number", "set_raw_data")
  is("get of raw data: bytes and flags", { "by\0tes", nil, 42 }, (function()
    local a, b, c = mc:get("raw") return a, nil, c end)())
  is("add_raw_data of an existing key", { nil, E.ERR_NOT_STORED }, mc:add_raw_data("raw", "x"))
  is("replace_raw_data of a missing key", { nil, E.ERR_NOT_STORED }, mc:replace_raw_data("nokey", "x"))
  ok(type(mc:add_raw_data("raw2", "mid")) == "number", "add_raw_data of a new key")
  ok(type(mc:replace_raw_data("raw2", "mid")) == "number", "replace_raw_data")
  ok(type(mc:set("other", "x", 0, nil, 7)) == "number", "set with other flags stores bytes")
  is("... read back raw", { "x" }, mc:get("other"))
  ok(type(mc:append("raw2", ">")) == "number" and type(mc:prepend("raw2", "<")) == "number",
     "append and prepend")
  is("... give the bytes", { "<mid>" }, mc:get("raw2"))
  is("append to a missing key", { nil, E.ERR_NOT_STORED }, mc:append("nokey", "x"))
  is("prepend with a stale cas", { nil, E.ERR_CAS_CONFLICT }, mc:prepend("raw2", "x", 1))

  -- deleting
  local dcas = mc:set("del", 1)
  is("delete with a wrong cas", { nil, E.ERR_CAS_CONFLICT }, mc:delete("del", dcas + 1000))
  is("delete", { true }, mc:delete("del"))
  is("delete of a missing key", { nil, E.ERR_CACHE_MISS }, mc:delete("del"))

  -- counters
  is("increment of a missing key", { nil, E.ERR_CACHE_MISS }, mc:increment("ctr", 1))
  is("increment with initial creates it", { 10 }, mc:increment("ctr", 1, 10))
  is("increment", { 15 }, mc:increment("ctr", 5))
  is("counters read as strings", { "15" }, mc:get("ctr"))
  is("decrement stops at 0", { 0 }, mc:decrement("ctr", 20))
  mc:set("notnum", { 1, 2 })
  is("increment of a msgpack item", { nil, E.ERR_NON_NUMERIC }, mc:increment("notnum", 1))
  ok(not pcall(mc.increment, mc, "ctr"), "increment without delta raises")

  -- expiration
  is("touch", { true }, mc:touch("raw", 100))
  is("touch of a missing key", { nil, E.ERR_CACHE_MISS }, mc:touch("nokey", 100))
  is("get_and_touch", { "by\0tes" }, mc:get_and_touch("raw", 100))
  is("get_and_touch of a missing key", { nil, E.ERR_CACHE_MISS }, mc:get_and_touch("nokey", 1))

  -- keys
  is("a key with a space", { nil, E.ERR_MALFORMED_KEY }, mc:get("a b"))
  is("a key of 251 bytes", { nil, E.ERR_MALFORMED_KEY }, mc:set(string.rep("k", 251), 1))
  is("an empty key", { nil, E.ERR_MALFORMED_KEY }, mc:delete(""))
  is("a key with DEL", { nil, E.ERR_MALFORMED_KEY }, mc:touch("a\127", 1))
  ok(type(mc:set(string.rep("k", 250), 1)) == "number", "a key of 250 bytes")
  ok(not pcall(mc.get, mc, 42), "a key that is not a string raises")

  -- delete_lock markers (written by the C client) read as misses
  mc:set_raw_data("locked", "\0memcached.lua delete_lock\0", 60, nil, 0x6d634c4b)
  is("a delete_lock marker is a miss for get", { nil, E.ERR_CACHE_MISS }, mc:get("locked"))
  is("... and for increment", { nil, E.ERR_CACHE_MISS }, mc:increment("locked", 1))
  local lm = mc:get_multi { "locked", "raw" }
  ok(lm and lm.locked == nil and lm.raw == "by\0tes", "... and absent from get_multi")

  -- undecodable items
  mc:set_raw_data("badmp", "\193", 0, nil, 1)
  is("an item with the msgpack flag that is not msgpack", { nil, E.ERR_UNDECODABLE }, mc:get("badmp"))
  local uv, uerr, ufail = mc:get_multi { "badmp", "raw" }
  ok(uv and uv.raw and uerr == E.ERR_UNDECODABLE and ufail and ufail.badmp == E.ERR_UNDECODABLE,
     "get_multi reports it per key", show(uv, uerr, ufail))

  -- options and table forms
  local mc5 = assert(resty_memcached.new { servers = { MC1 }, msgpack_flag = 5 })
  mc5:set("flag5", { 1 })
  local f5v, _, f5 = mc5:get("flag5")
  ok(type(f5v) == "table" and f5v[1] == 1 and f5 == 5, "msgpack_flag option", show(f5v, f5))
  ok(not pcall(resty_memcached.new, { servers = { MC1 }, bogus = 1 }), "an unknown option raises")
  ok(type(assert(resty_memcached.new(MC1, MC2))) == "table", "new(server, ...)")
  is("table form of increment", { 7 }, mc:increment { key = "tctr", delta = 1, initial = 7 })
  is("table form of delete", { true }, mc:delete { key = "tctr" })
  is("table form of touch", { nil, E.ERR_CACHE_MISS }, mc:touch { key = "tctr", expiration = 5 })
  is("pick_server", { MC1 }, mc:pick_server("any"))

  -- servers
  local ver = mc:version()
  ok(type(ver) == "table" and type(ver[MC1]) == "string" and ver[MC1]:match("^%d+%.%d+"),
     "version", show(ver and ver[MC1]))
  is("ping", { true }, mc:ping())
  is("flush with a delay", { true }, mc:flush(0))
  is("delete_all", { true }, mc:delete_all())
  is("... removes items", { nil, E.ERR_CACHE_MISS }, mc:get("raw"))

  -- get_multi over two servers
  local mc2 = assert(resty_memcached.new { servers = { MC1, MC2 }, timeout = 0.5 })
  local placer = memcached.new { servers = { MC1, MC2 } }
  local one = { [MC1] = resty_memcached.new { servers = { MC1 } },
                [MC2] = resty_memcached.new { servers = { MC2 } } }
  local keys, want, used, placed = {}, {}, {}, true
  for i = 1, 40 do
    local k = "multi:" .. i
    keys[#keys + 1] = k
    want[k] = { i = i, s = ("v"):rep(i) }
    mc2:set(k, want[k])
    local addr = mc2:pick_server(k)
    used[addr] = true
    if addr ~= placer:pick_server(k) or not deep_eq(one[addr]:get(k), want[k]) then placed = false end
  end
  ok(used[MC1] and used[MC2], "keys spread over both servers")
  ok(placed, "each key is on the server the C client picks")
  keys[#keys + 1] = "multi:missing"
  local got, err = mc2:get_multi(keys)
  ok(deep_eq(got, want) and err == nil, "get_multi over two servers, misses absent", show(got, err))
  local empty = mc2:get_multi {}
  ok(type(empty) == "table" and next(empty) == nil, "get_multi{} is {}")
  is("get_multi with a malformed key", { nil, E.ERR_MALFORMED_KEY }, mc2:get_multi { "ok", "not ok" })
  is("flush_all on two servers", { true }, mc2:flush_all())
  local vs = mc2:version()
  ok(vs and vs[MC1] and vs[MC2], "version of two servers")

  local mcu = assert(resty_memcached.new { servers = { var.unix } })
  mcu:set("unix", { "over", "a", "unix", "socket" })
  ok(deep_eq(mcu:get("unix"), { "over", "a", "unix", "socket" }), "a server on a unix socket")

  -- concurrent light threads sharing one client
  local threads = {}
  for i = 1, 20 do
    threads[i] = ngx.thread.spawn(function()
      local k = "thread:" .. i
      if not mc2:set(k, { i }) then return false end
      local got1 = mc2:get(k)
      local m = mc2:get_multi { k, "thread:none" }
      return got1 and got1[1] == i and m[k] and m[k][1] == i
    end)
  end
  local all = true
  for i = 1, 20 do
    local okw, res = ngx.thread.wait(threads[i])
    all = all and okw and res
  end
  ok(all, "20 light threads share one client")

  -- failures
  local down = assert(resty_memcached.new { servers = { REFUSED }, timeout = 0.5 })
  is("connection refused", { nil, E.ERR_CONNECTION_REFUSED }, down:get("k"))
  local half = assert(resty_memcached.new { servers = { MC1, REFUSED }, timeout = 0.5 })
  local hkeys, expect, dead = {}, 0, 0
  for i = 1, 20 do
    local k = "half:" .. i
    hkeys[i] = k
    if half:pick_server(k) == MC1 then
      expect = expect + 1
      half:set(k, i)
    else
      dead = dead + 1
    end
  end
  local hv, herr, hfail = half:get_multi(hkeys)
  local nv, nf = 0, 0
  for _ in pairs(hv or {}) do nv = nv + 1 end
  for _, e in pairs(hfail or {}) do if e == E.ERR_CONNECTION_REFUSED then nf = nf + 1 end end
  ok(herr == E.ERR_CONNECTION_REFUSED and nv == expect and nf == dead and dead > 0,
     "get_multi with one server refusing: values, err, failures", show(nv, expect, nf, dead, herr))
  local fok, ferr, fdet = half:flush_all()
  ok(fok == nil and ferr == E.ERR_CONNECTION_REFUSED and type(fdet) == "table" and fdet[REFUSED],
     "flush_all with one server refusing", show(fok, ferr, fdet))
  local hver, hverr = half:version()
  ok(hver and hver[MC1] and hverr == E.ERR_CONNECTION_REFUSED, "version with one server refusing",
     show(hver, hverr))

  local silent = assert(resty_memcached.new { servers = { SILENT }, timeout = 0.2 })
  local t, r = elapsed(function() return silent:get("k") end)
  ok(r[1] == nil and r[2] == E.ERR_TIMEOUT and t >= 0.19 and t < 0.5,
     "timeout against a server that never answers", show(t, r[1], r[2], r[3]))
  local two = assert(resty_memcached.new { servers = { SILENT, MC2 }, timeout = 0.2 })
  local skeys = {}
  for i = 1, 20 do skeys[i] = "silent:" .. i end
  t, r = elapsed(function() return two:get_multi(skeys) end)
  ok(r[2] == E.ERR_TIMEOUT and t < 0.5, "get_multi with a silent server: one timeout",
     show(t, r[2]))
  -- connects that hang run side by side: three cost one connect timeout
  local hang = assert(resty_memcached.new { servers = { var.hang1, var.hang2, var.hang3, MC1 },
                                            timeout = 0.2 })
  local hkeys = {}
  for i = 1, 40 do hkeys[i] = "hang:" .. i end
  t, r = elapsed(function() return hang:get_multi(hkeys) end)
  ok(r[2] == E.ERR_TIMEOUT and t < 0.35, "get_multi with three hanging connects: one connect timeout",
     show(t, r[2]))

  for _, c in ipairs {
    { var.wrong_opaque, E.ERR_PROTOCOL, "a reply with another opaque" },
    { var.truncated, E.ERR_TIMEOUT, "a truncated reply" },
    { var.huge, E.ERR_PROTOCOL, "a reply declaring a huge body" },
    { var.closing, E.ERR_CONNECTION_CLOSED, "a server that closes" },
  } do
    local bad = assert(resty_memcached.new { servers = { c[1] }, timeout = 0.2 })
    is(c[3], { nil, c[2] }, bad:get("k"))
  end

  -- a single get is as strict as get_multi: a reply nobody asked for, or
  -- another key's item, is refused (GETK/GATK with the key checked, a
  -- client's opaques starting at a random value)
  local stray = assert(resty_memcached.new { servers = { var.stray }, timeout = 0.2 })
  is("a reply sent before any request is refused, not a hit", { nil, E.ERR_PROTOCOL },
     stray:get("k"))
  local other = assert(resty_memcached.new { servers = { var.other_key }, timeout = 0.2 })
  is("another key's item is refused by get", { nil, E.ERR_PROTOCOL }, other:get("k"))
  is("another key's item is refused by get_and_touch", { nil, E.ERR_PROTOCOL },
     other:get_and_touch("k", 60))
  local seen, distinct = {}, true
  for _ = 1, 5 do
    local c = assert(resty_memcached.new { servers = { var.opaque }, timeout = 0.2 })
    local v = c:get("k")
    local o = tonumber(v)
    if not o or o == 0 or seen[o] then distinct = false end
    if o then seen[o] = true end
  end
  ok(distinct, "clients start at unpredictable opaques", show(next(seen)))

  -- memcached at its connection limit says so in a text line: its words
  -- come back as ERR_SERVER_ERROR
  local full = assert(resty_memcached.new { servers = { var.limit }, timeout = 0.5 })
  is("memcached at its connection limit: get is ERR_SERVER_ERROR with its line",
     { nil, E.ERR_SERVER_ERROR, var.limit .. ": ERROR Too many open connections" }, full:get("k"))
  local fr, ferr, ffail = full:get_multi { "a", "b" }
  ok(deep_eq(fr, {}) and ferr == E.ERR_SERVER_ERROR and ffail and ffail.a == E.ERR_SERVER_ERROR,
     "memcached at its connection limit: get_multi is ERR_SERVER_ERROR", show(fr, ferr))

  -- a reply that comes after the timeout must not reach the next caller:
  -- the timed-out connection was closed, not pooled
  local late = assert(resty_memcached.new { servers = { var.late }, timeout = 0.2 })
  is("a late reply times out", { nil, E.ERR_TIMEOUT }, late:get("first"))
  ngx.sleep(0.5)
  is("the next call gets its own reply", { "second" }, late:get("second"))

  -- hold/unhold, max_value_size, max_conns, max_idle:
  -- spec/nginx/connections.lua
  require("spec.nginx.connections") { ok = ok, is = is, show = show, elapsed = elapsed,
    total_connections = total_connections, raw_item = raw_item,
    resty_memcached = resty_memcached, E = E, MC1 = MC1, SILENT = SILENT, mc = mc, mc2 = mc2 }

  -- pooled connections: 20 gets open no new connection
  local before = total_connections(MC1)
  for _ = 1, 20 do mc:get("raw") end
  local after = total_connections(MC1)
  ok(before and after and after - before <= 2, "connections are reused from the pool",
     show(before, after))

  -- memcached -S answers every request but version with status 0x20 and
  -- closes the connection: the driver closes its cosocket too (pooling it
  -- made the next call on it "connection closed"), so every call is
  -- ERR_AUTH, and every key of a batch sent there
  local SASL = var.sasl
  local auth = assert(resty_memcached.new { servers = { SASL }, timeout = 0.5 })
  for _, c in ipairs {
    { "get", function() return auth:get("k") end },
    { "get again", function() return auth:get("k") end },
    { "set", function() return auth:set("k", 1) end },
    { "set again", function() return auth:set("k", 1) end },
    { "add", function() return auth:add("k", 1) end },
    { "get_and_touch", function() return auth:get_and_touch("k", 60) end },
    { "touch", function() return auth:touch("k", 60) end },
    { "append", function() return auth:append("k", "x") end },
    { "delete", function() return auth:delete("k") end },
    { "increment", function() return auth:increment("k", 1) end },
    { "delete_lock", function() return auth:delete_lock("k", 60) end },
    { "touch_atomic_value", function() return auth:touch_atomic_value("k") end },
    { "get once more", function() return auth:get("k") end },
  } do
    is("memcached -S: " .. c[1] .. " is ERR_AUTH", { nil, E.ERR_AUTH }, c[2]())
  end
  local _, _, adetail = auth:get("k")
  ok(type(adetail) == "string" and adetail:find(SASL, 1, true) and adetail:lower():find("auth"),
     "memcached -S: the detail names the server and the auth status", show(adetail))
  for i = 1, 2 do
    local av, aerr, afail = auth:get_multi { "a", "b", "c" }
    ok(deep_eq(av, {}) and aerr == E.ERR_AUTH and afail and afail.a == E.ERR_AUTH
       and afail.b == E.ERR_AUTH and afail.c == E.ERR_AUTH,
       "memcached -S: get_multi fails every key with ERR_AUTH (" .. i .. ")",
       show(av, aerr, afail and afail.a, afail and afail.b, afail and afail.c))
  end
  local mixed = assert(resty_memcached.new { servers = { MC1, SASL }, timeout = 0.5 })
  local mkeys, mwant, on_sasl = {}, {}, 0
  for i = 1, 20 do
    local k = "sasl:" .. i
    mkeys[i] = k
    if mixed:pick_server(k) == MC1 then
      mwant[k] = i
      mixed:set(k, i)
    else
      on_sasl = on_sasl + 1
    end
  end
  for i = 1, 2 do
    local mv, merr, mfail = mixed:get_multi(mkeys)
    local nauth, nother = 0, 0
    for _, e in pairs(mfail or {}) do
      if e == E.ERR_AUTH then nauth = nauth + 1 else nother = nother + 1 end
    end
    ok(deep_eq(mv, mwant) and merr == E.ERR_AUTH and nauth == on_sasl and nother == 0
       and on_sasl > 0, "memcached -S next to a plain server: get_multi (" .. i .. ")",
       show(merr, nauth, on_sasl, nother))
  end
  local sres, serr2 = auth:set_multi { a = 1, b = 2 }
  ok(deep_eq(sres, { a = E.ERR_AUTH, b = E.ERR_AUTH }) and serr2 == E.ERR_AUTH,
     "memcached -S: set_multi fails every key with ERR_AUTH", show(serr2))
  sres, serr2 = auth:delete_multi { "a", "b" }
  ok(deep_eq(sres, { a = E.ERR_AUTH, b = E.ERR_AUTH }) and serr2 == E.ERR_AUTH,
     "memcached -S: delete_multi fails every key with ERR_AUTH", show(serr2))
  is("memcached -S: flush_all is ERR_AUTH", { nil, E.ERR_AUTH }, auth:flush_all())
  is("memcached -S: ping is ERR_AUTH", { nil, E.ERR_AUTH }, auth:ping())
  is("memcached -S: ping again is ERR_AUTH", { nil, E.ERR_AUTH }, auth:ping())
  local sver, sverr = auth:version()
  ok(sver and type(sver[SASL]) == "string" and sverr == nil,
     "memcached -S answers version unauthenticated", show(sver, sverr))
  is("memcached -S: a get after version is ERR_AUTH", { nil, E.ERR_AUTH }, auth:get("k"))

  -- a server killed (-9) and restarted at once on the same port: the
  -- worker's pooled cosockets to it are dead. os.execute blocks the worker,
  -- so nginx has not yet seen their close when the next call takes one
  -- from the pool (as when a worker is busy, or the close is still on the
  -- wire). A request safe to send twice is sent once more on a fresh
  -- cosocket; one that is not (add, counters, a cas, ...) fails.
  local RESTART = var.restart
  local rc = assert(resty_memcached.new { servers = { RESTART }, timeout = 0.5 })
  local function restart()
    local st = os.execute(var.restart_cmd)
    assert(st == 0 or st == true, "restart_memcached.sh failed")
  end
  -- fn runs on a pooled cosocket whose server was just restarted
  local function after_restart(name, want, fn)
    rc:set("warm", 1)
    restart()
    return is("after a restart: " .. name, want, fn())
  end
  local function typed(t, ...) return type((...)) == t, select(2, ...) end
  after_restart("get is resent", { nil, E.ERR_CACHE_MISS }, function() return rc:get("r") end)
  after_restart("set is resent", { true }, function() return typed("number", rc:set("r", "v")) end)
  is("... and stored its value", { "v" }, rc:get("r"))
  after_restart("set_raw_data is resent", { true },
    function() return typed("number", rc:set_raw_data("r", "raw")) end)
  after_restart("get_and_touch is resent", { nil, E.ERR_CACHE_MISS },
    function() return rc:get_and_touch("r", 60) end)
  after_restart("touch is resent", { nil, E.ERR_CACHE_MISS }, function() return rc:touch("r", 60) end)
  after_restart("get_multi is resent", { true, true }, function()
    local v, err = rc:get_multi { "a", "b" }
    return deep_eq(v, {}), err == nil, err
  end)
  after_restart("ping is resent", { true }, function() return rc:ping() end)
  after_restart("flush_all is resent", { true }, function() return rc:flush_all() end)
  after_restart("flush is resent", { true }, function() return rc:flush(0) end)
  after_restart("version is resent", { true, true }, function()
    local v, err = rc:version()
    return type(v) == "table" and type(v[RESTART]) == "string", err == nil, err
  end)
  after_restart("set_multi is resent", { true, true }, function()
    local v, err = rc:set_multi { sm = "v" }
    return deep_eq(v, { sm = true }), err == nil, err
  end)
  after_restart("stats is resent", { true, true }, function()
    local v, err = rc:stats()
    return type(v) == "table" and type(v[RESTART]) == "table", err == nil, err
  end)
  after_restart("delete_multi is not resent", { true, E.ERR_CONNECTION_CLOSED }, function()
    local v, err = rc:delete_multi { "u" }
    return deep_eq(v, { u = E.ERR_CONNECTION_CLOSED }), err
  end)
  local rcas = rc:set("c", 1)
  for _, c in ipairs {
    { "add", function() return rc:add("u", 1) end },
    { "replace", function() return rc:replace("u", 1) end },
    { "append", function() return rc:append("u", "x") end },
    { "prepend", function() return rc:prepend("u", "x") end },
    { "compare_and_swap", function() return rc:compare_and_swap("c", 2, rcas) end },
    { "set with a cas", function() return rc:set("c", 2, 0, rcas) end },
    { "increment", function() return rc:increment("u", 1, 5) end },
    { "decrement", function() return rc:decrement("u", 1, 5) end },
    { "delete", function() return rc:delete("u") end },
    { "delete_lock", function() return rc:delete_lock("c", 60) end },
    { "touch_atomic_value", function() return rc:touch_atomic_value("c") end },
  } do
    after_restart(c[1] .. " is not resent", { nil, E.ERR_CONNECTION_CLOSED }, c[2])
  end
  is("... and none of them ran", { nil, E.ERR_CACHE_MISS }, rc:get("u"))
  -- two dead cosockets in the pool: the resend must not take the other one
  local function two_pooled()
    local t1 = ngx.thread.spawn(function() return rc:get("warm") end)
    local t2 = ngx.thread.spawn(function() return rc:get("warm") end)
    ngx.thread.wait(t1)
    ngx.thread.wait(t2)
  end
  rc:set("warm", 1)
  two_pooled()
  restart()
  is("after a restart with two pooled cosockets: get is resent on a fresh one",
     { nil, E.ERR_CACHE_MISS }, rc:get("r"))
  two_pooled()
  restart()
  is("... and get_multi", { true, true }, (function()
    local v, err = rc:get_multi { "a" }
    return deep_eq(v, {}), err == nil, err
  end)())
  -- a batch over two servers, one restarted: its part is resent
  local rc2 = assert(resty_memcached.new { servers = { MC1, RESTART }, timeout = 0.5 })
  local rkeys, rwant, on_restart = {}, {}, 0
  for i = 1, 20 do
    local k = "restart:" .. i
    rkeys[i] = k
    if rc2:pick_server(k) == MC1 then rwant[k] = i else on_restart = on_restart + 1 end
    rc2:set(k, i)
  end
  rc2:get_multi(rkeys) -- both servers' cosockets pooled
  restart()
  local rv, rerr, rfail = rc2:get_multi(rkeys)
  ok(on_restart > 0 and deep_eq(rv, rwant) and rerr == nil,
     "after a restart: get_multi over two servers resends the restarted one's part",
     show(on_restart, rerr, rfail and next(rfail)))

  -- failover: the core's placement and health (mc_ring), per worker
  do
    local events = {}
    local fo = assert(resty_memcached.new { servers = { MC1, MC2, REFUSED }, timeout = 0.3,
      failure_limit = 2, retry_timeout = 0.2 })
    fo:set_server_error_callback(function(addr, reason, state)
      events[#events + 1] = { addr = addr, reason = reason, state = state }
    end)
    local dk = {}
    for i = 1, 200 do
      local k = "fo:" .. i
      if fo:pick_server(k) == REFUSED then dk[#dk + 1] = k end
    end
    local errs = {}
    for i = 1, #dk do
      local _, e = fo:get(dk[i])
      if e ~= E.ERR_CACHE_MISS then errs[#errs + 1] = e end
    end
    ok(#dk > 10 and #errs == 2 and errs[1] == E.ERR_CONNECTION_REFUSED,
       "a refused server fails failure_limit calls, then its keys go elsewhere", show(#dk, #errs, errs[1]))
    ok(#events == 1 and events[1].addr == REFUSED and events[1].state == "down"
       and events[1].reason:find("refused", 1, true), "the callback hears of it once",
       show(#events, events[1] and events[1].reason))
    local list = fo:servers()
    ok(#list == 3 and list[3].addr == REFUSED and list[3].alive == false and list[3].failures == 2
       and list[1].alive and list[3].last_error, "servers() shows it dead", show(list[3] and list[3].alive))
    is("a dead server's key is stored elsewhere", { true }, type(fo:set(dk[1], "moved")) == "number")
    is("... and read back", { "moved" }, fo:get(dk[1]))
    local mg, merr = fo:get_multi(dk)
    ok(mg and merr == nil and mg[dk[1]] == "moved", "get_multi of its keys: no error", show(merr))
    -- its retry time: one call probes it (refused at once), nobody fails
    ngx.sleep(0.25)
    local bad, why = 0, nil
    for i = 1, #dk do
      local v, e, d = fo:get(dk[i])
      if e ~= E.ERR_CACHE_MISS and v == nil then bad = bad + 1; why = tostring(e) .. " " .. tostring(d) end
    end
    local list2 = fo:servers()
    ok(bad == 0 and list2[3].alive == false and list2[3].failures == 3,
       "a failed probe fails no call and keeps it dead", show(bad, list2[3].failures, why))
    is("pick_server still names the key's own server", { REFUSED }, fo:pick_server(dk[1]))
    -- a hung server: after failure_limit timeouts, its keys cost nothing
    local hung = assert(resty_memcached.new { servers = { MC1, SILENT }, timeout = 0.1,
      failure_limit = 2, retry_timeout = 0.2 })
    local hk = {}
    for i = 1, 200 do
      local k = "hung:" .. i
      if hung:pick_server(k) == SILENT then hk[#hk + 1] = k end
    end
    local slow, worst = 0, 0
    for i = 1, #hk do
      local dt = elapsed(function() return hung:get(hk[i]) end)
      if dt > 0.05 then slow = slow + 1 end
      if i > 2 and dt > worst then worst = dt end
    end
    ok(#hk > 10 and slow == 2 and worst < 0.05, "a hung server costs two timeouts, then nothing",
       show(#hk, slow, worst))
    ngx.sleep(0.25)
    local pdt, pr = elapsed(function() return hung:get(hk[1]) end)
    ok(pr[2] == E.ERR_CACHE_MISS and pdt < 0.08,
       "its probe is bounded by probe_timeout and the call goes elsewhere", show(pdt, pr[2]))
    local noeject = assert(resty_memcached.new { servers = { MC1, REFUSED }, failure_limit = 1,
      retry_timeout = 30, eject = false })
    local nk
    for i = 1, 200 do if noeject:pick_server("ne:" .. i) == REFUSED then nk = "ne:" .. i break end end
    noeject:get(nk)
    is("eject = false: a dead server's keys fail fast", { nil, E.ERR_SERVER_DEAD }, noeject:get(nk))
    -- shared health: a server one client (worker) finds dead is dead for
    -- every client that names the same lua_shared_dict
    local sa = assert(resty_memcached.new { servers = { MC1, REFUSED }, failure_limit = 2,
      retry_timeout = 5, shared_dict = "mc_health" })
    local sb_events = {}
    local sb = assert(resty_memcached.new { servers = { MC1, REFUSED }, failure_limit = 2,
      retry_timeout = 5, shared_dict = "mc_health" })
    sb:set_server_error_callback(function(addr, reason, state) sb_events[#sb_events + 1] = state .. " " .. reason end)
    local sk
    for i = 1, 200 do if sa:pick_server("sh:" .. i) == REFUSED then sk = "sh:" .. i break end end
    sa:get(sk); sa:get(sk)
    local sv, se = sb:get(sk)
    ok(sv == nil and se == E.ERR_CACHE_MISS and sb:servers()[2].alive == false,
       "shared_dict: another client finds the dead server dead at once, and no call of its fails",
       show(sv, se, sb:servers()[2].alive))
    ok(#sb_events == 1 and sb_events[1]:find("down found dead by another worker", 1, true),
       "... and its callback hears of it", show(sb_events[1]))
    ngx.shared.mc_health:flush_all()
    -- failures are counted in the dict: one each by two clients (two
    -- workers) make failure_limit 2
    local fa = assert(resty_memcached.new { servers = { MC1, REFUSED }, failure_limit = 2,
      retry_timeout = 5, shared_dict = "mc_health" })
    local fb = assert(resty_memcached.new { servers = { MC1, REFUSED }, failure_limit = 2,
      retry_timeout = 5, shared_dict = "mc_health" })
    local _, fe1 = fa:get(sk)
    local _, fe2 = fb:get(sk)
    local fv3, fe3 = fa:get(sk)
    ok(fe1 == E.ERR_CONNECTION_REFUSED and fe2 == E.ERR_CONNECTION_REFUSED
       and fv3 == nil and fe3 == E.ERR_CACHE_MISS and fa:servers()[2].alive == false
       and fb:servers()[2].alive == false,
       "shared_dict: one failure in each of two clients makes failure_limit 2; no third call fails",
       show(fe1, fe2, fe3, fa:servers()[2].alive, fb:servers()[2].alive))
    ngx.shared.mc_health:flush_all()
    -- one probe per retry interval among clients sharing the dict: a
    -- probe of the silent server takes probe_timeout; the second client,
    -- due at the same time, takes the first one's verdict and routes
    -- around at once
    local function sharer()
      return assert(resty_memcached.new { servers = { MC1, SILENT }, failure_limit = 1,
        retry_timeout = 0.2, probe_timeout = 0.08, timeout = 0.1, shared_dict = "mc_health" })
    end
    local pa, pb = sharer(), sharer()
    local pk
    for i = 1, 200 do if pa:pick_server("pr:" .. i) == SILENT then pk = "pr:" .. i break end end
    pa:get(pk) -- times out: dead for both
    pb:get(pk)
    ngx.sleep(0.25)
    local ta = elapsed(function() return pa:get(pk) end)
    local tb = elapsed(function() return pb:get(pk) end)
    ok(ta >= 0.07 and tb < 0.04 and pb:servers()[2].alive == false,
       "shared_dict: one client probes a dead server, the other takes its verdict at once",
       show(ta, tb, pb:servers()[2].alive))
    ngx.shared.mc_health:flush_all()
    local lone = assert(resty_memcached.new { servers = { MC1, REFUSED }, failure_limit = 2 })
    is("without shared_dict a client finds it for itself", { nil, E.ERR_CONNECTION_REFUSED }, lone:get(sk))
    ok(not pcall(resty_memcached.new, { servers = { MC1 }, shared_dict = "no_such_dict" }),
       "a shared_dict nginx does not have raises")
    ngx.shared.mc_health:flush_all()

    -- custom selectors: a function, or an object with pick_server
    local csel = assert(resty_memcached.new { servers = { MC1 },
      selector = function(key) return key:sub(1, 1) == "b" and MC2 or MC1 end })
    ok(csel:set("a-key", "one") and csel:set("b-key", "two")
       and raw_item(MC1, "a-key") and raw_item(MC2, "b-key") and not raw_item(MC1, "b-key"),
       "a selector function puts each key on the server it names")
    is("... and reads it back from there", { "two" }, csel:get("b-key"))
    local cobj = assert(resty_memcached.new { servers = { MC1 },
      selector = { pick_server = function(self_, key) return MC2 end } })
    is("a selector object's pick_server", { MC2 }, cobj:pick_server("x"))
    local cname = assert(resty_memcached.new { servers = { MC1 },
      selector = function() return "localhost:" .. MC2:match(":(%d+)$") end })
    ok(cname:set("sel-name", "by name") and raw_item(MC2, "sel-name"),
       "a host name a selector names is resolved (no nginx resolver configured)")
    local cunk = assert(resty_memcached.new { servers = { MC1 },
      selector = function() return "no-such-host.invalid:11211" end })
    local _, cue = cunk:get("x")
    is("... and one that does not resolve is ERR_BAD_SERVER", { E.ERR_BAD_SERVER }, cue)
    local cbad = assert(resty_memcached.new { servers = { MC1 },
      selector = function() error("no idea") end })
    local _, cbe = cbad:get("x")
    is("a selector that raises fails the call with ERR_NO_SERVERS", { E.ERR_NO_SERVERS }, cbe)
    local cref = assert(resty_memcached.new { servers = { MC1 }, failure_limit = 1,
      retry_timeout = 30, selector = function() return REFUSED end })
    cref:get("x")
    local function alive_of(cl, addr)
      for _, sv in ipairs(cl:servers()) do if sv.addr == addr then return sv.alive end end
    end
    local was = alive_of(cref, REFUSED)
    cref:set_servers(MC2)
    local cv, ce = cref:get("x")
    ok(was == false and alive_of(cref, REFUSED) == false and cv == nil
       and ce == E.ERR_SERVER_DEAD,
       "a selector's dead server stays dead across set_servers",
       show(was, alive_of(cref, REFUSED), cv, ce))

    -- addresses: the core's rule
    local v6 = assert(resty_memcached.new { servers = { "[::1]:" .. REFUSED:match(":(%d+)$") } })
    local _, v6e, v6d = v6:get("k")
    ok(v6e == E.ERR_CONNECTION_REFUSED or v6e == E.ERR_IO, "an IPv6 address is dialled, not a parse error",
       show(v6e, v6d))
    is("a bad address is refused by new", { nil, E.ERR_BAD_SERVER },
       resty_memcached.new { servers = { "host:99999" } })
    local byname = assert(resty_memcached.new { servers = { "localhost:" .. MC1:match(":(%d+)$") } })
    is("a host name is resolved once in new, no nginx resolver needed", { true },
       type(byname:set("byname", "x")) == "number")
    is("... and names the server", { "localhost:" .. MC1:match(":(%d+)$") }, byname:pick_server("byname"))
    is("an unknown host name fails new", { nil, E.ERR_BAD_SERVER },
       resty_memcached.new { servers = { "no-such-host.invalid:11211" } })
    local sw = assert(resty_memcached.new { servers = { MC1 } })
    is("set_servers", { true }, sw:set_servers(MC2))
    is("... moves the keys", { MC2 }, sw:pick_server("any"))
    is("add_server", { true }, sw:add_server(MC1))
    is("... adds one", { 2 }, #sw:servers())
    is("set_servers with a bad address changes nothing", { nil, E.ERR_BAD_SERVER },
       sw:set_servers("host:0"))
    is("... nothing", { 2 }, #sw:servers())
  end

  -- set_multi, delete_multi, stats, delete_lock, touch_atomic_value:
  -- spec/nginx/methods.lua, with this file's helpers and clients
  require("spec.nginx.methods") { ok = ok, is = is, show = show, deep_eq = deep_eq,
    elapsed = elapsed, total_connections = total_connections, raw_item = raw_item,
    resty_memcached = resty_memcached, memcached = memcached, var = var, E = E,
    MC1 = MC1, MC2 = MC2, REFUSED = REFUSED, SILENT = SILENT, mc = mc, mc2 = mc2, ver = ver }

  -- TLS and SASL: spec/nginx/tls_sasl.lua, with this file's helpers
  require("spec.nginx.tls_sasl") { resty_memcached = resty_memcached, memcached = memcached,
    var = var, E = E, MC1 = MC1, MC2 = MC2, ok = ok, is = is, show = show, deep_eq = deep_eq }

  -- the behaviour both clients share (spec/behaviour.lua; busted runs the
  -- same cases against the Lua 5.4 client)
  local B = require "spec.behaviour"
  B.run({ new = function(o) return assert(resty_memcached.new(o)) end, E = resty_memcached,
          addr = MC1, refused = REFUSED, prefix = "bngx:", check = B.check },
        function(name, passed, why) ok(passed, "behaviour: " .. name, why) end)

  -- closing
  is("close", { true }, mc:close())
  is("close again", { true }, mc:close())
  is("a closed client", { nil, E.ERR_CLIENT_CLOSED }, mc:get("k"))
end

local okr, err = pcall(run)
if not okr then ok(false, "tests ran to the end", err) end
ngx.say("1.." .. n)
