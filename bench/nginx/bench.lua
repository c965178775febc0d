-- Served by nginx for bench/nginx.sh: times one workload of one client
-- inside this handler and answers "<seconds>" (or "error: ...").
-- GET /bench?client=ours|resty|floor&op=get|set|multi|multi3&n=N
--   ours:  memcached.resty (this library), one client per worker
--   held:  the same, the handler holding its connections (hold/unhold)
--   resty: lua-resty-memcached (Debian's lua-nginx-memcached, text
--          protocol), connected once for the N operations
--   floorv: the floor that also makes each value a string in a table by
--          its key (what any client returning values must add)
--   floor: the least a binary-protocol cosocket client can do: requests
--          built before the clock starts, one send per operation, replies
--          read with receiveany and cut apart by their lengths, no checks
if os.getenv("BENCH_JIT_LOG") and not _G.__jitv then
  package.path = package.path .. ";/usr/share/luajit-2.1.0-beta3/?.lua"
  require("jit.v").on("/tmp/jit_v.log")
  _G.__jitv = true
end
local args = ngx.req.get_uri_args()
local client, op, n = args.client, args.op, tonumber(args.n)
local var = ngx.var
local MC = { var.mc1, var.mc2, var.mc3 }
local VALUE = ("v"):rep(100)
local KEYS = {}
for i = 1, 100 do KEYS[i] = "bench_" .. i end

local now, update = ngx.now, ngx.update_time
local function timed(fn)
  update()
  local t = now()
  local ok, err = fn()
  update()
  if ok == false then return nil, err end
  return now() - t
end

-- ---- ours -----------------------------------------------------------
local resty_memcached = require "memcached.resty"
local ours1, ours3 = _G.__bench_ours1, _G.__bench_ours3
if not ours1 then
  ours1 = assert(resty_memcached.new { servers = { MC[1] }, timeout = 1 })
  ours3 = assert(resty_memcached.new { servers = MC, timeout = 1 })
  _G.__bench_ours1, _G.__bench_ours3 = ours1, ours3
end

local function run_ours()
  local mc = op == "multi3" and ours3 or ours1
  -- held: the handler holds its connections (hold/unhold), as it does
  -- with lua-resty-memcached (connect/set_keepalive)
  if client == "held" then mc:hold() end
  if op == "get" then
    for _ = 1, n do if mc:get("bench_1") ~= VALUE then return false, "get" end end
  elseif op == "set" then
    -- raw bytes, as the floor and lua-resty-memcached store them (set
    -- would encode the string as msgpack first)
    for _ = 1, n do if not mc:set_raw_data("bench_set", VALUE) then return false, "set" end end
  else
    for _ = 1, n do
      local t = mc:get_multi(KEYS)
      if t["bench_100"] ~= VALUE then return false, "multi" end
    end
  end
  if client == "held" then mc:unhold() end
  return true
end

-- ---- lua-resty-memcached ----------------------------------------------
local function run_resty()
  local rm = require "nginx.memcached"
  local m = assert(rm:new())
  m:set_timeout(1000)
  local host, port = MC[1]:match("^(.*):(%d+)$")
  local ok, err = m:connect(host, tonumber(port))
  if not ok then return false, err end
  if op == "get" then
    for _ = 1, n do
      local v, _, e = m:get("bench_1")
      if v ~= VALUE then return false, "get: " .. tostring(v and #v) .. " " .. tostring(e) end
    end
  elseif op == "set" then
    for _ = 1, n do if not m:set("bench_set", VALUE) then return false, "set" end end
  else
    for _ = 1, n do
      local t = m:get(KEYS)
      if not t or not t["bench_100"] then return false, "multi" end
    end
  end
  m:set_keepalive(60000, 16)
  return true
end

-- ---- floor --------------------------------------------------------------
local codec = require("memcached").codec
local HEADER = codec.HEADER_LEN
local byte = string.byte

-- reads until `count` replies have arrived, cutting them apart by the
-- body length in each header; with `out` (floorv: the floor that also
-- builds its results) each reply's value goes to out[its key], the least
-- any client returning values must do on top of the floor
local sub = string.sub
local function drain(sock, count, out)
  local buf, pos = "", 1
  while true do
    while #buf - pos + 1 >= HEADER do
      local b1, b2, b3, b4 = byte(buf, pos + 8, pos + 11)
      local total = HEADER + ((b1 * 256 + b2) * 256 + b3) * 256 + b4
      if #buf - pos + 1 < total then break end
      if out then
        local k1, k2, ext = byte(buf, pos + 2, pos + 4)
        local klen = k1 * 256 + k2
        local k0 = pos + HEADER + ext
        out[sub(buf, k0, k0 + klen - 1)] = sub(buf, k0 + klen, pos + total - 1)
      end
      pos = pos + total
      count = count - 1
      if count == 0 then return true end
    end
    local data, err = sock:receiveany(65536)
    if not data then return false, err end
    buf = pos > #buf and data or buf:sub(pos) .. data
    pos = 1
  end
end

local function floor_conn(addr)
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  local host, port = addr:match("^(.*):(%d+)$")
  -- a pool of its own: memcached picks text or binary from a connection's
  -- first byte, and lua-resty-memcached's pool is named host:port
  local ok, err = sock:connect(host, tonumber(port), { pool = "floor:" .. addr })
  if not ok then return nil, err end
  return sock
end

local function run_floor()
  if op == "multi3" then return false, "n/a" end
  local sock, err = floor_conn(MC[1])
  if not sock then return false, err end
  local req, replies
  if op == "get" then
    req, replies = codec.get(codec.op.GETK, 1, "bench_1"), 1
  elseif op == "set" then
    req, replies = codec.store(codec.op.SET, 1, 0, "bench_set", 1, 0, VALUE), 1
  else
    local parts = {}
    for i = 1, 100 do parts[i] = codec.get(codec.op.GETK, i, KEYS[i]) end
    req, replies = table.concat(parts), 100
  end
  local with_values = client == "floorv"
  local one = {} -- get/set: the value's string alone, no table per call
  return timed(function()
    for _ = 1, n do
      local ok, e = sock:send(req)
      if not ok then return false, e end
      local out = with_values and (replies > 1 and {} or one) or nil
      ok, e = drain(sock, replies, out)
      if not ok then return false, e end
    end
    sock:setkeepalive(60000, 16)
    return true
  end)
end

-- the items every client reads
if not _G.__bench_filled then
  -- raw bytes (flags 0): every client reads the same 100-byte value
  for _, k in ipairs(KEYS) do assert(ours3:set_raw_data(k, VALUE)) end
  for _, k in ipairs(KEYS) do assert(ours1:set_raw_data(k, VALUE)) end
  _G.__bench_filled = true
end

-- what a pooled connect and a setkeepalive cost (no request)
local function run_pool()
  local host, port = MC[1]:match("^(.*):(%d+)$")
  local opts = { pool = "poolcost" }
  port = tonumber(port)
  for _ = 1, n do
    local sock = ngx.socket.tcp()
    sock:settimeouts(1000, 1000, 1000)
    local ok, err = sock:connect(host, port, opts)
    if not ok then return false, err end
    sock:setkeepalive(60000, 16)
  end
  return true
end

-- the same with one cosocket object reconnected each time, as
-- memcached.resty does within a request (the object stays in ngx.ctx)
local function run_pool_reuse()
  local host, port = MC[1]:match("^(.*):(%d+)$")
  local opts = { pool = "poolcost" }
  port = tonumber(port)
  local sock = ngx.socket.tcp()
  sock:settimeouts(1000, 1000, 1000)
  for _ = 1, n do
    local ok, err = sock:connect(host, port, opts)
    if not ok then return false, err end
    sock:setkeepalive(60000, 16)
  end
  return true
end

local dt, err
if client == "pool" then dt, err = timed(run_pool)
elseif client == "poolreuse" then dt, err = timed(run_pool_reuse)
elseif client == "ours" or client == "held" then dt, err = timed(run_ours)
elseif client == "resty" then dt, err = timed(run_resty)
else dt, err = run_floor() end
if not dt then ngx.say("error: ", tostring(err)) return end
ngx.say(string.format("%.6f", dt))
