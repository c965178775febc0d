-- This library from Lua 5.4, one workload per run.
--   lua5.4 bench/lua_client.lua WORKLOAD NOPS HOST:PORT...
-- WORKLOAD: get | set | get_multi | set_multi | delete_multi | rss
-- rss does NOPS gets and prints the resident set and Lua's heap at 10%, 50%
-- and 100% of them instead of a time.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local C = require "common"
local memcached = require "memcached"

local workload, nops, servers, warm = C.args()
local mc = assert(memcached.new(table.unpack(servers)))
local value = C.VALUE

local keys, items = {}, {}
for i = 1, C.NKEYS do
  keys[i] = "bench:ours:" .. (i - 1)
  items[keys[i]] = value
end
local key = keys[1]

local function fill()
  if mc.set_multi then
    local r, err = mc:set_multi(items)
    assert(r and not err, err)
  else
    for k, v in pairs(items) do assert(mc:set(k, v)) end
  end
end
fill()

local function statm_rss()
  local f = assert(io.open("/proc/self/statm"))
  local _, rss = f:read("*l"):match("^(%d+) (%d+)")
  f:close()
  return tonumber(rss) * 4096
end

local ops = {}

function ops.get()
  assert(mc:get(key) == value)
  return function() mc:get(key) end
end

function ops.set()
  return function() mc:set(key, value) end
end

function ops.get_multi()
  local n = 0
  for _ in pairs(mc:get_multi(keys)) do n = n + 1 end
  assert(n == C.NKEYS, "get_multi found " .. n .. " keys")
  return function() mc:get_multi(keys) end
end

function ops.set_multi()
  if not mc.set_multi then C.na() end
  return function() mc:set_multi(items) end
end

function ops.delete_multi()
  if not mc.delete_multi then C.na() end
  return function() mc:delete_multi(keys) end, fill
end

if workload == "rss" then
  local marks = { [nops // 10] = true, [nops // 2] = true, [nops] = true }
  local get = mc.get
  for i = 1, nops do
    get(mc, key)
    if marks[i] then
      io.write(string.format("%d\t%d\t%.0f\n", i, statm_rss(), collectgarbage("count") * 1024))
    end
  end
  os.exit(0)
end

C.run(ops, workload, nops, warm)
mc:close()
