-- The Lua floor (bench/lua_floor.c): the same requests as bench/limit.c,
-- sent from Lua through a bare C module that checks nothing.
--   lua5.4 bench/floor_client.lua get|set|get_multi NOPS HOST:PORT
-- get_multi (one server) sends a prebuilt GETKQ x100 + NOOP and builds the
-- {key = value} table a Lua caller needs.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local C = require "common"
package.cpath = C.root .. "bench/?.so;" .. package.cpath
local floor = require "lua_floor"

local workload, nops, servers, warm = C.args()
if workload ~= "get" and workload ~= "set" and
   not (workload == "get_multi" and #servers == 1) then C.na() end

local fd = floor.connect(servers[1])
local function frame(op, key, extras, value, opaque)
  local body = #extras + #key + #value
  return string.pack(">BBHBBHI4I4I8", 0x80, op, #key, #extras, 0, 0, body,
                     opaque or 0, 0) .. extras .. key .. value
end
local flags = string.pack(">I4I4", 0, 0)

if workload == "get_multi" then
  local keys, parts = {}, {}
  for i = 1, C.NKEYS do
    keys[i] = "bench:floor:" .. (i - 1)
    floor.request(fd, frame(0x01, keys[i], flags, C.VALUE))
    parts[i] = frame(0x0d, keys[i], "", "", i - 1)
  end
  parts[#parts + 1] = frame(0x0a, "", "", "")
  local req, multi = table.concat(parts), floor.multi
  local n = 0
  for k, v in pairs(multi(fd, req, keys)) do
    assert(v == C.VALUE and k:match("^bench:floor:"))
    n = n + 1
  end
  assert(n == C.NKEYS, "floor get_multi found " .. n .. " keys")
  C.report(C.measure(nops, warm, function() multi(fd, req, keys) end))
  os.exit(0)
end

local key = "bench:floor:0"
local set_req = frame(0x01, key, flags, C.VALUE)
local get_req = frame(0x00, key, "", "")
floor.request(fd, set_req)
assert(floor.request(fd, get_req) == C.VALUE)

local request = floor.request
local req = workload == "get" and get_req or set_req
C.report(C.measure(nops, warm, function() request(fd, req) end))
