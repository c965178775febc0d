-- The Lua floor (bench/lua_floor.c) for the serial workloads: the same
-- requests as bench/limit.c, sent from Lua through a bare C module.
--   lua5.4 bench/floor_client.lua get|set NOPS HOST:PORT
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local C = require "common"
package.cpath = C.root .. "bench/?.so;" .. package.cpath
local floor = require "lua_floor"

local workload, nops, servers, warm = C.args()
if workload ~= "get" and workload ~= "set" then C.na() end

local fd = floor.connect(servers[1])
local key = "bench:floor:0"
local function frame(op, extras, value)
  local body = #extras + #key + #value
  return string.pack(">BBHBBHI4I4I8", 0x80, op, #key, #extras, 0, 0, body, 0, 0)
    .. extras .. key .. value
end
local set_req = frame(0x01, string.pack(">I4I4", 0, 0), C.VALUE)
local get_req = frame(0x00, "", "")
floor.request(fd, set_req)
assert(floor.request(fd, get_req) == C.VALUE)

local request = floor.request
local req = workload == "get" and get_req or set_req
C.report(C.measure(nops, warm, function() request(fd, req) end))
