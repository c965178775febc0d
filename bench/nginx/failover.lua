-- Served by nginx for bench/nginx.sh: one of three servers is down
-- (refused: nobody listens) or hung (accepts, never answers); 3,000 gets
-- over 300 keys with failure_limit 2, timeout 0.1 s, retry_timeout 0.5 s.
-- Answers: calls, errors, errors after the first failure_limit, and the
-- p50/p99/max latency (ms) of the calls after the server was ejected.
local resty_memcached = require "memcached.resty"
local var = ngx.var
local bad = ngx.req.get_uri_args().mode == "hung" and var.hung or var.refused
local mc = assert(resty_memcached.new { servers = { var.mc1, var.mc2, bad }, timeout = 0.1,
  failure_limit = 2, retry_timeout = 0.5 })
local ffi = require "ffi"
pcall(ffi.cdef, "typedef struct { long tv_sec; long tv_nsec; } fo_timespec;"
  .. " int clock_gettime(int clk, fo_timespec *ts);")
local ts = ffi.new("fo_timespec")
local function clock() -- CLOCK_MONOTONIC; ngx.now() has 1 ms steps
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) + tonumber(ts.tv_nsec) * 1e-9
end
local keys = {}
for i = 1, 300 do keys[i] = "fo_" .. i end -- misses: the server is down from the first call
local errors, lat, ejected = 0, {}, false
local after = 0
for i = 1, 3000 do
  local t = clock()
  local v, err = mc:get(keys[(i - 1) % 300 + 1])
  local dt = (clock() - t) * 1000
  if v == nil and err ~= resty_memcached.ERR_CACHE_MISS then
    errors = errors + 1
    if ejected then after = after + 1 end
  end
  if ejected then lat[#lat + 1] = dt end
  if not ejected and not mc:servers()[3].alive then ejected = true end
end
table.sort(lat)
local function pct(p) return lat[math.max(1, math.ceil(#lat * p))] or 0 end
ngx.say(string.format("%d %d %d %.3f %.3f %.3f", 3000, errors, after, pct(0.5), pct(0.99), lat[#lat] or 0))
