-- A tour of the client against real servers.
--
--   MEMCACHED_SERVERS=127.0.0.1:11211 lua5.4 examples/demo.lua
--
-- Run from the repository root (it loads ./memcached.so). It does not start
-- servers; `make demo` does that. Exits non-zero when anything unexpected
-- happens.
package.cpath = "./?.so;" .. package.cpath

local memcached = require "memcached"

local list = os.getenv("MEMCACHED_SERVERS")
if not list or list == "" then
  io.stderr:write("set MEMCACHED_SERVERS, e.g. MEMCACHED_SERVERS=127.0.0.1:11211\n")
  os.exit(2)
end
local servers = {}
for addr in list:gmatch("[^,%s]+") do servers[#servers + 1] = addr end

local failures = 0

local function say(fmt, ...) print(string.format(fmt, ...)) end

local function check(ok, what)
  if not ok then
    failures = failures + 1
    say("  UNEXPECTED: %s", what)
  end
  return ok
end

-- Renders a value with sorted keys, so the output reads the same every run.
local function show(v)
  if type(v) == "string" then return string.format("%q", v) end
  if type(v) ~= "table" then return tostring(v) end
  local keys = {}
  for k in pairs(v) do keys[#keys + 1] = k end
  table.sort(keys, function(a, b)
    if type(a) == type(b) and (type(a) == "number" or type(a) == "string") then return a < b end
    return type(a) < type(b)
  end)
  local parts, seq = {}, #v == #keys
  for _, k in ipairs(keys) do
    if seq then
      parts[#parts + 1] = show(v[k])
    else
      local name = type(k) == "string" and k:match("^[%a_][%w_]*$") and k or "[" .. show(k) .. "]"
      parts[#parts + 1] = name .. " = " .. show(v[k])
    end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

-- Plain structural equality, enough for the values below.
local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if not same(v, b[k]) then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local mc = assert(memcached.new { servers = servers, timeout = 0.5 })
say("client:  %s  (module %s)", tostring(mc), memcached._VERSION)

local ok, err, failed = mc:ping()
if not ok then
  for _, why in pairs(failed or {}) do say("  %s", why) end
  say("ping failed: %s", err)
  os.exit(1)
end
say("ping:    every server answered")

-- A prefix of our own, so the demo does not step on anyone's keys.
math.randomseed(os.time())
local prefix = string.format("demo:%06d:", math.random(0, 999999))
local function key(name) return prefix .. name end
local used = {}

-- set / get with a nested table
local user = { name = "Ada", langs = { "lua", "c" }, admin = false, visits = 42, ratio = 0.75 }
used[#used + 1] = key("user")
local cas, e = mc:set(key("user"), user, 300)
check(cas, "set failed: " .. tostring(e))
say("set:     %s = %s  (cas %s)", key("user"), show(user), tostring(cas))

local v, vcas, flags = mc:get(key("user"))
check(v ~= nil, "get failed: " .. tostring(vcas))
check(same(v, user), "get returned a different value: " .. show(v))
say("get:     %s -> %s  (cas %s, flags %s)", key("user"), show(v), tostring(vcas), tostring(flags))
say("         on %s", mc:pick_server(key("user")))

-- a miss
local miss, merr = mc:get(key("nobody"))
check(miss == nil and merr == memcached.ERR_CACHE_MISS, "expected a miss, got " .. tostring(merr))
say("get:     %s -> nil, %q", key("nobody"), tostring(merr))

-- get_multi: one round trip per server; misses are absent
for i = 1, 3 do
  used[#used + 1] = key("item" .. i)
  check(mc:set(key("item" .. i), { n = i, sq = i * i }), "set item" .. i)
end
local want = { key("item1"), key("item2"), key("item3"), key("nobody") }
local got, gerr = mc:get_multi(want)
check(got and not gerr, "get_multi failed: " .. tostring(gerr))
got = got or {}
say("get_multi of %d keys:", #want)
for _, k in ipairs(want) do
  say("         %s -> %s", k, got[k] == nil and "(miss)" or show(got[k]))
end
check(got[key("item2")] and got[key("item2")].sq == 4 and got[key("nobody")] == nil,
      "get_multi returned the wrong values")

-- compare_and_swap: succeeds with the current cas, fails with a stale one
used[#used + 1] = key("counter_doc")
mc:set(key("counter_doc"), { version = 1 })
local doc, cas1 = mc:get(key("counter_doc"))
check(doc and doc.version == 1, "get before compare_and_swap")
say("cas:     %s is %s, cas %s", key("counter_doc"), show(doc), tostring(cas1))
local cas2, cerr = mc:compare_and_swap(key("counter_doc"), { version = 2 }, cas1)
check(cas2, "compare_and_swap with the current cas failed: " .. tostring(cerr))
say("cas:     swap with cas %s -> ok, new cas %s", tostring(cas1), tostring(cas2))
local stale, serr = mc:compare_and_swap(key("counter_doc"), { version = 3 }, cas1)
check(stale == nil and serr == memcached.ERR_CAS_CONFLICT,
      "a stale cas should give ERR_CAS_CONFLICT, got " .. tostring(stale or serr))
say("cas:     swap again with the stale cas %s -> nil, %q", tostring(cas1), tostring(serr))
doc = mc:get(key("counter_doc"))
check(doc and doc.version == 2, "the value after compare_and_swap should have version 2")
say("cas:     %s is now %s", key("counter_doc"), show(doc))

-- increment: created with the initial value, then incremented
used[#used + 1] = key("hits")
local n1, ierr = mc:increment(key("hits"), 5, 100, 300)
check(n1 == 100, "increment of a missing key should store the initial 100, got " .. tostring(n1 or ierr))
say("incr:    %s by 5 (initial 100) -> %s  (created)", key("hits"), tostring(n1))
local n2 = mc:increment(key("hits"), 5, 100, 300)
check(n2 == 105, "second increment should give 105, got " .. tostring(n2))
say("incr:    %s by 5 again -> %s", key("hits"), tostring(n2))
local raw, _, rflags = mc:get(key("hits"))
say("get:     %s -> %q, flags %s  (counters are plain digits, not msgpack)",
    key("hits"), tostring(raw), tostring(rflags))

-- clean up
for _, k in ipairs(used) do mc:delete(k) end
mc:close()

if failures > 0 then
  say("demo: %d unexpected result(s)", failures)
  os.exit(1)
end
say("demo: all as expected")
