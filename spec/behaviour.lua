-- The behaviour both clients owe their users, written once: run under
-- busted against `memcached` (spec/behaviour_spec.lua, Lua 5.4) and inside
-- nginx against `memcached.resty` (spec/nginx/tests.lua, LuaJIT). Written
-- in the Lua 5.1 subset.
--
-- Each case is { name, fn }; fn(env) raises (through env.check) when the
-- behaviour is wrong. env: new(opts) makes a client of the module under
-- test, E holds its ERR_* values, addr is a live memcached, refused an
-- address nobody listens on, prefix keeps the keys of one run apart.
local B = {}

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end
B.same = same

local function show(...)
  local t = { n = select("#", ...), ... }
  for i = 1, t.n do t[i] = tostring(t[i]) end
  return table.concat(t, ", ", 1, t.n)
end

local cases = {}
local function case(name, fn) cases[#cases + 1] = { name, fn } end
B.cases = cases

case("set then get returns the value, its cas and the msgpack flag", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "a"
  local cas = mc:set(k, { 1, "two", { three = 3 } })
  env.check(type(cas) == "number" and cas > 0, "set returns the cas", cas)
  local v, c2, flags = mc:get(k)
  env.check(same(v, { 1, "two", { three = 3 } }) and c2 == cas and flags == 1, "get", show(v, c2, flags))
end)

case("a miss is nil, ERR_CACHE_MISS", function(env)
  local mc = env.new { servers = { env.addr } }
  local v, err = mc:get(env.prefix .. "absent")
  env.check(v == nil and err == env.E.ERR_CACHE_MISS, "miss", show(v, err))
end)

case("raw data keeps its bytes and flags", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "raw"
  env.check(mc:set_raw_data(k, "bin\0\255", 0, nil, 7), "set_raw_data")
  local v, _, flags = mc:get(k)
  env.check(v == "bin\0\255" and flags == 7, "raw get", show(v, flags))
end)

case("add, replace and compare_and_swap report conflicts with the constants", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "arc"
  mc:delete(k)
  env.check(mc:replace(k, 1) == nil, "replace of a missing key fails")
  env.check(mc:add(k, 1), "add")
  local _, err = mc:add(k, 2)
  env.check(err == env.E.ERR_NOT_STORED, "a second add", err)
  local _, cas = mc:get(k)
  env.check(mc:compare_and_swap(k, 3, cas), "cas with the right cas")
  _, err = mc:compare_and_swap(k, 4, cas)
  env.check(err == env.E.ERR_CAS_CONFLICT, "cas with a stale cas", err)
  env.check(mc:get(k) == 3, "the value of the winning cas")
end)

case("append and prepend work on raw bytes", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "ap"
  mc:set_raw_data(k, "b")
  env.check(mc:append(k, "c") and mc:prepend(k, "a"), "append, prepend")
  env.check(mc:get(k) == "abc", "abc", (mc:get(k)))
end)

case("counters: increment with an initial value, decrement, a non-number", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "ctr"
  mc:delete(k)
  local v = mc:increment(k, 5, 10)
  env.check(v == 10, "created at the initial value", v)
  env.check(mc:increment(k, 5) == 15 and mc:decrement(k, 20) == 0, "up and down, floored at 0")
  mc:set(k, { "not a number" })
  local _, err = mc:increment(k, 1)
  env.check(err == env.E.ERR_NON_NUMERIC, "a non-number", err)
  local nv, nerr = mc:increment(env.prefix .. "nocreate", 1)
  env.check(nv == nil and nerr == env.E.ERR_CACHE_MISS, "no initial: a miss", show(nv, nerr))
end)

case("delete, then the key is gone; touch and get_and_touch on a miss", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "del"
  mc:set(k, 1)
  env.check(mc:delete(k), "delete")
  local _, err = mc:delete(k)
  env.check(err == env.E.ERR_CACHE_MISS, "delete of a missing key", err)
  _, err = mc:touch(k, 10)
  env.check(err == env.E.ERR_CACHE_MISS, "touch of a missing key", err)
  mc:set(k, "t")
  local v = mc:get_and_touch(k, 100)
  env.check(v == "t" and mc:touch(k, 100), "get_and_touch, touch", v)
end)

case("delete_lock makes a key read as a miss; a set ends the lock", function(env)
  local mc, k = env.new { servers = { env.addr } }, env.prefix .. "lock"
  mc:set(k, "v")
  env.check(mc:delete_lock(k, 30), "delete_lock")
  local v, err = mc:get(k)
  env.check(v == nil and err == env.E.ERR_CACHE_MISS, "a locked key reads as a miss", show(v, err))
  local _, aerr = mc:add(k, "x")
  env.check(aerr == env.E.ERR_NOT_STORED, "add fails while it is locked", aerr)
  mc:set(k, "w")
  env.check(mc:get(k) == "w", "a set ends it")
end)

case("get_multi returns hits only; set_multi and delete_multi report per key", function(env)
  local mc = env.new { servers = { env.addr } }
  local p = env.prefix
  local res, err = mc:set_multi { [p .. "m1"] = 1, [p .. "m2"] = { 2 }, [p .. "m3"] = "three" }
  env.check(err == nil and res[p .. "m1"] == true and res[p .. "m3"] == true, "set_multi", err)
  local got = mc:get_multi { p .. "m1", p .. "m2", p .. "m3", p .. "none" }
  env.check(same(got, { [p .. "m1"] = 1, [p .. "m2"] = { 2 }, [p .. "m3"] = "three" }), "get_multi")
  res = mc:delete_multi { p .. "m1", p .. "none" }
  env.check(res[p .. "m1"] == true and res[p .. "none"] == env.E.ERR_CACHE_MISS, "delete_multi",
    show(res[p .. "m1"], res[p .. "none"]))
  local bad, berr = mc:set_multi { ["bad key"] = 1, [p .. "ok"] = 2 }
  env.check(bad["bad key"] == env.E.ERR_MALFORMED_KEY and bad[p .. "ok"] == true
    and berr == env.E.ERR_MALFORMED_KEY, "a malformed key fails alone", berr)
end)

case("malformed keys are refused before anything is sent", function(env)
  local mc = env.new { servers = { env.addr } }
  local _, e1 = mc:get("has space")
  local _, e2 = mc:set(("k"):rep(251), 1)
  local _, e3 = mc:get_multi { "ok", "not\tok" }
  env.check(e1 == env.E.ERR_MALFORMED_KEY and e2 == env.E.ERR_MALFORMED_KEY
    and e3 == env.E.ERR_MALFORMED_KEY, "malformed keys", show(e1, e2, e3))
end)

case("ping, version and stats name each server", function(env)
  local mc = env.new { servers = { env.addr } }
  env.check(mc:ping() == true, "ping")
  local ver = mc:version()
  env.check(type(ver[env.addr]) == "string", "version", ver and ver[env.addr])
  local st = mc:stats()
  env.check(st and st[env.addr] and tonumber(st[env.addr].pid), "stats")
end)

case("pick_server names the key's server; servers() lists them", function(env)
  local mc = env.new { servers = { env.addr, env.refused } }
  local seen = {}
  for i = 1, 100 do seen[mc:pick_server("pk" .. i)] = true end
  env.check(seen[env.addr] and seen[env.refused], "both servers take keys")
  local list = mc:servers()
  env.check(#list == 2 and list[1].addr == env.addr and list[1].alive == true, "servers()")
end)

case("a refused server fails failure_limit calls, then its keys go elsewhere", function(env)
  local events = 0
  local mc = env.new { servers = { env.addr, env.refused }, failure_limit = 2, retry_timeout = 30 }
  mc:set_server_error_callback(function(_, _, state) if state == "down" then events = events + 1 end end)
  local k
  for i = 1, 200 do
    if mc:pick_server(env.prefix .. "fo" .. i) == env.refused then k = env.prefix .. "fo" .. i break end
  end
  local _, e1 = mc:get(k)
  local _, e2 = mc:get(k)
  local v3, e3 = mc:get(k)
  env.check(e1 == env.E.ERR_CONNECTION_REFUSED and e2 == env.E.ERR_CONNECTION_REFUSED
    and v3 == nil and e3 == env.E.ERR_CACHE_MISS, "two failures, then ejected", show(e1, e2, e3))
  env.check(events == 1 and mc:servers()[2].alive == false, "one event; servers() says dead", events)
  env.check(mc:set(k, "moved") and mc:get(k) == "moved", "its key is served elsewhere")
end)

case("eject = false: a dead server's keys fail fast with ERR_SERVER_DEAD", function(env)
  local mc = env.new { servers = { env.addr, env.refused }, failure_limit = 1, retry_timeout = 30,
    eject = false }
  local k
  for i = 1, 200 do
    if mc:pick_server("ne" .. i) == env.refused then k = "ne" .. i break end
  end
  mc:get(k)
  local v, err = mc:get(k)
  env.check(v == nil and err == env.E.ERR_SERVER_DEAD, "server dead", show(v, err))
end)

case("a closed client refuses calls", function(env)
  local mc = env.new { servers = { env.addr } }
  env.check(mc:close() and mc:close(), "close twice")
  local _, err = mc:get("k")
  env.check(err == env.E.ERR_CLIENT_CLOSED, "closed", err)
end)

-- Runs every case: report(name, ok, why) hears of each.
function B.run(env, report)
  for _, c in ipairs(cases) do
    local ok, why = pcall(c[2], env)
    report(c[1], ok, why)
  end
end

-- env.check for a runner: raises with the reason and what was seen.
function B.check(cond, what, seen)
  if not cond then error(what .. (seen ~= nil and (": " .. tostring(seen)) or ""), 2) end
  return cond
end

return B
