-- A plain Lua 5.4 + LuaSocket client for memcached's text protocol, written
-- for this benchmark: what a team gets without any C of its own.
--   lua5.4 bench/text_client.lua WORKLOAD NOPS HOST:PORT...
-- get_multi sends one "get k1 k2 ..." per server (all servers first, then
-- reads each); set_multi and delete_multi pipeline 100 commands per server
-- in one send and then read the 100 answers.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local C = require "common"
local socket = require "socket"

local workload, nops, servers, warm = C.args()
local value = C.VALUE

local conns = {}
for i, addr in ipairs(servers) do
  local host, port = addr:match("^(.*):(%d+)$")
  local s = assert(socket.tcp())
  assert(s:connect(host, tonumber(port)))
  s:setoption("tcp-nodelay", true)
  conns[i] = s
end
local nsrv = #conns
local c1 = conns[1]

-- key i (0-based) lives on server i % nsrv, as in bench/limit.c
local keys, per_srv = {}, {}
for s = 1, nsrv do per_srv[s] = {} end
for i = 0, C.NKEYS - 1 do
  local k = "bench:text:" .. i
  keys[#keys + 1] = k
  local t = per_srv[i % nsrv + 1]
  t[#t + 1] = k
end
local key = keys[1]

local get_req, set_req, del_req, nper = {}, {}, {}, {}
for s = 1, nsrv do
  local ks = per_srv[s]
  nper[s] = #ks
  get_req[s] = "get " .. table.concat(ks, " ") .. "\r\n"
  local sets, dels = {}, {}
  for j, k in ipairs(ks) do
    sets[j] = "set " .. k .. " 0 0 " .. #value .. "\r\n" .. value .. "\r\n"
    dels[j] = "delete " .. k .. "\r\n"
  end
  set_req[s] = table.concat(sets)
  del_req[s] = table.concat(dels)
end

local function expect(s, want)
  local line = assert(s:receive("*l"))
  if line ~= want then error("expected " .. want .. ", got " .. line) end
end

-- Reads VALUE blocks until END; returns how many came.
local function read_values(s)
  local n = 0
  while true do
    local line = assert(s:receive("*l"))
    if line == "END" then return n end
    local len = tonumber(line:match("^VALUE %S+ %d+ (%d+)"))
    if not len then error("bad line " .. line) end
    assert(s:receive(len + 2))
    n = n + 1
  end
end

local function pipeline(reqs, answer)
  for s = 1, nsrv do assert(conns[s]:send(reqs[s])) end
  for s = 1, nsrv do
    local c = conns[s]
    for _ = 1, nper[s] do expect(c, answer) end
  end
end

local function set_multi() pipeline(set_req, "STORED") end
set_multi()

local set_one = "set " .. key .. " 0 0 " .. #value .. "\r\n" .. value .. "\r\n"
local get_one = "get " .. key .. "\r\n"

local ops = {}

function ops.get()
  return function()
    c1:send(get_one)
    read_values(c1)
  end
end

function ops.set()
  return function()
    c1:send(set_one)
    expect(c1, "STORED")
  end
end

function ops.get_multi()
  return function()
    for s = 1, nsrv do assert(conns[s]:send(get_req[s])) end
    local n = 0
    for s = 1, nsrv do n = n + read_values(conns[s]) end
    if n ~= C.NKEYS then error("get_multi found " .. n .. " keys") end
  end
end

function ops.set_multi()
  return set_multi
end

function ops.delete_multi()
  return function() pipeline(del_req, "DELETED") end, set_multi
end

C.run(ops, workload, nops, warm)
