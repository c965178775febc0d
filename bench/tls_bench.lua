-- TLS and SASL next to the same calls without them, in one process pinned
-- to one CPU with its servers (bench/run.sh starts it under taskset; the
-- servers it starts inherit the CPU). Servers and certificates come from
-- spec/helper.lua (EC P-256 certificates made at run time).
--
--   taskset -c 1 lua5.4 bench/tls_bench.lua
--
-- Warm connection: get and set of a 100-byte value on a pooled connection,
-- plain and TLS (the target: TLS at most 1.15x). Reconnect: every call on
-- a new connection (max_idle = 0), plain, TLS resuming the server's
-- session, and TLS with a full handshake (a new client per call: no
-- session to offer), and SASL PLAIN (two more round trips per connect).
-- RUNS rounds, systems interleaved; medians (min-max).
package.path = "spec/?.lua;" .. package.path
local H = require "helper"
local memcached = H.memcached
local socket = require "socket"

local RUNS = tonumber(os.getenv("BENCH_RUNS")) or 5
local WARM_N, RECONNECT_N = 20000, 300
local VALUE = string.rep("v", 100)

local certs = H.make_certs()
local plain = H.start_memcached { args = "-m 64" }
local tls = H.start_memcached_tls { args = "-m 64" }
local sasl = H.start_memcached_sasl { users = { bench = "bench" }, args = "-m 64" }
local TLS = { ca_file = certs.ca }

local function timed(n, fn)
  local t0 = socket.gettime()
  for _ = 1, n do fn() end
  return (socket.gettime() - t0) / n * 1e9
end

local function warm(opts, op)
  local mc = assert(memcached.new(opts))
  assert(mc:set("bench:k", VALUE))
  local f = op == "get" and function() mc:get("bench:k") end
    or function() mc:set("bench:k", VALUE) end
  timed(1000, f) -- warm-up
  local ns = timed(WARM_N, f)
  mc:close()
  return ns
end

local cells = {
  { id = "get_plain", label = "get, warm, plain", f = function() return warm({ servers = { plain.addr } }, "get") end },
  { id = "get_tls", label = "get, warm, TLS", f = function() return warm({ servers = { tls.addr }, tls = TLS }, "get") end },
  { id = "set_plain", label = "set, warm, plain", f = function() return warm({ servers = { plain.addr } }, "set") end },
  { id = "set_tls", label = "set, warm, TLS", f = function() return warm({ servers = { tls.addr }, tls = TLS }, "set") end },
  { id = "re_plain", label = "reconnect + get, plain", f = function()
      local mc = assert(memcached.new { servers = { plain.addr }, max_idle = 0 })
      return timed(RECONNECT_N, function() assert(mc:get("bench:none") == nil) end)
    end },
  { id = "re_tls_resumed", label = "reconnect + get, TLS, session resumed", f = function()
      local mc = assert(memcached.new { servers = { tls.addr }, tls = TLS, max_idle = 0 })
      mc:get("bench:none") -- the first handshake is a full one
      local ns = timed(RECONNECT_N, function() mc:get("bench:none") end)
      assert(mc:servers()[1].tls_resumed, "the session was not resumed")
      return ns
    end },
  { id = "re_tls_full", label = "reconnect + get, TLS, full handshake", f = function()
      return timed(RECONNECT_N, function()
        local mc = assert(memcached.new { servers = { tls.addr }, tls = TLS })
        mc:get("bench:none")
        assert(not mc:servers()[1].tls_resumed)
        mc:close()
      end)
    end },
  { id = "re_sasl", label = "reconnect + get, SASL PLAIN", f = function()
      local mc = assert(memcached.new { servers = { sasl.addr }, username = "bench", password = "bench",
                                        max_idle = 0 })
      return timed(RECONNECT_N, function()
        local _, err = mc:get("bench:none")
        assert(err == memcached.ERR_CACHE_MISS, err)
      end)
    end },
}

local samples = {}
for run = 1, RUNS do
  for i = 0, #cells - 1 do
    local c = cells[(i + run - 1) % #cells + 1]
    samples[c.id] = samples[c.id] or {}
    table.insert(samples[c.id], c.f())
  end
end
H.stop_all()

local function stats(t)
  table.sort(t)
  local n = #t
  local med = n % 2 == 1 and t[(n + 1) // 2] or (t[n // 2] + t[n // 2 + 1]) / 2
  return med, t[1], t[n]
end
local function us(ns) return string.format("%.1f", ns / 1000) end

print("## TLS and SASL")
print("")
print(string.format("Median of %d runs (min–max); warm: %d ops per run, reconnect: %d.", RUNS, WARM_N, RECONNECT_N))
print("Ratio to the same call without TLS (plain).")
print("")
print("| workload | time | ratio to plain |")
print("| --- | --- | --- |")
local med = {}
for _, c in ipairs(cells) do med[c.id] = { stats(samples[c.id]) } end
local base = { get_plain = "get_plain", get_tls = "get_plain", set_plain = "set_plain", set_tls = "set_plain",
               re_plain = "re_plain", re_tls_resumed = "re_plain", re_tls_full = "re_plain", re_sasl = "re_plain" }
for _, c in ipairs(cells) do
  local m, lo, hi = table.unpack(med[c.id])
  print(string.format("| %s | %s µs (%s–%s) | **%.2fx** |", c.label, us(m), us(lo), us(hi), m / med[base[c.id]][1]))
end
print("")
local function ratio(a, b) return med[a][1] / med[b][1] end
print(string.format("- get over TLS <= 1.15x of plain on a warm connection: %.2fx, %s", ratio("get_tls", "get_plain"),
  ratio("get_tls", "get_plain") <= 1.15 and "MET" or "MISSED"))
print(string.format("- set over TLS <= 1.15x of plain on a warm connection: %.2fx, %s", ratio("set_tls", "set_plain"),
  ratio("set_tls", "set_plain") <= 1.15 and "MET" or "MISSED"))
print(string.format("- a TLS reconnect that resumes the session costs %.2fx of a full handshake",
  ratio("re_tls_resumed", "re_tls_full")))
