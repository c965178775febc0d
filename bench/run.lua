-- The benchmark's driver, started by bench/run.sh with three running
-- memcached addresses. Runs every system x workload RUNS times, each run a
-- fresh client process pinned to the same CPU as the servers, with the
-- order of the systems rotated from run to run so that drift hits all
-- alike. Prints medians (min-max) and ratios to the hand-written C client,
-- a Markdown table, allocation counts, RSS over 1M gets and syscalls per
-- operation; writes bench/results.tsv.
local S1, S2, S3 = arg[1], arg[2], arg[3]
assert(S1 and S2 and S3, "usage: run.lua ADDR1 ADDR2 ADDR3 (use bench/run.sh)")
local CPU = os.getenv("BENCH_CPU") or "1"
local RUNS = tonumber(os.getenv("BENCH_RUNS")) or 5
local PIN = "taskset -c " .. CPU .. " "
local LUA = os.getenv("LUA") or "lua5.4"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("a")
  local ok, _, code = p:close()
  return out, ok, code
end

local function trim(s)
  local r = (s or ""):gsub("^%s+", ""):gsub("%s+$", "")
  return r
end

---------------------------------------------------------------- machine
-- Reads a file of lines that pattern splits into (a, b) and removes it:
-- {[a] = tonumber(b)}, or {[b] = tonumber(a)} when swap is set.
local function read_pairs(file, pattern, swap)
  local t = {}
  local f = io.open(file)
  if f then
    for line in f:lines() do
      local a, b = line:match(pattern)
      if a then
        if swap then t[b] = tonumber(a) else t[a] = tonumber(b) end
      end
    end
    f:close()
  end
  os.remove(file)
  return t
end

local function cpu_model()
  for line in io.lines("/proc/cpuinfo") do
    local m = line:match("^model name%s*:%s*(.+)$")
    if m then return m end
  end
  return "?"
end

print("## Machine")
print("")
print("- nproc: " .. trim(sh("nproc")))
print("- CPU: " .. cpu_model())
print("- kernel: " .. trim(sh("uname -sr")))
print("- memcached: " .. trim(sh("memcached -V")))
print("- libmemcached: " .. trim(sh("pkg-config --modversion libmemcached 2>/dev/null")))
print("- Lua: " .. trim(sh(LUA .. " -v")))
do
  local f = io.open("/proc/loadavg")
  print("- load average before the run: " .. (f and trim(f:read("l")) or "?") ..
        " (other work on the machine shows up as noise)")
  if f then f:close() end
end
print("- client and servers pinned with `" .. trim(PIN) .. "`; " .. RUNS ..
      " runs per cell, systems interleaved")
print("")

---------------------------------------------------------------- workloads
local SERIAL, MULTI, CODEC = 20000, 2000, 10000

-- Each workload: label, servers, op count, and how each system runs it.
-- A system's command gets WORKLOAD NOPS ADDRS appended.
local systems = {
  { id = "limit", label = "limit (C)", cmd = "bench/limit.bin" },
  { id = "ours", label = "this library (Lua)", cmd = LUA .. " bench/lua_client.lua" },
  { id = "libmemcached", label = "libmemcached (C)", cmd = "bench/libmc.bin" },
  { id = "text", label = "LuaSocket text (Lua)", cmd = LUA .. " bench/text_client.lua" },
  -- get, set and get_multi on one server: what any Lua client pays over the
  -- C limit (lua_floor.c: no checks, a new string per value, a result table)
  { id = "floor", label = "Lua floor (bare C module)", cmd = LUA .. " bench/floor_client.lua" },
}
-- BENCH_BASELINE=DIR adds the memcached.so built in DIR (an earlier
-- commit, say) as a column of the same run: before/after as a ratio.
local BASELINE = os.getenv("BENCH_BASELINE")
if BASELINE and BASELINE ~= "" then
  table.insert(systems, 3, { id = "baseline", label = "baseline build (Lua)",
    cmd = "env MC_SO_DIR=" .. BASELINE .. " " .. LUA .. " bench/lua_client.lua" })
end
local codecs = {
  { id = "ours", label = "this library", cmd = LUA .. " bench/msgpack_bench.lua ours" },
  { id = "cjson", label = "lua-cjson", cmd = LUA .. " bench/msgpack_bench.lua cjson" },
  { id = "messagepack", label = "lua-messagepack", cmd = LUA .. " bench/msgpack_bench.lua messagepack" },
}

local workloads = {
  { id = "get", label = "get, 100 B value", op = "get", n = SERIAL, addrs = S1 },
  { id = "set", label = "set, 100 B value", op = "set", n = SERIAL, addrs = S1 },
  { id = "get_multi", label = "get_multi, 100 keys, 1 server", op = "get_multi", n = MULTI, addrs = S1 },
  { id = "get_multi_3", label = "get_multi, 100 keys, 3 servers", op = "get_multi", n = MULTI,
    addrs = S1 .. " " .. S2 .. " " .. S3 },
  { id = "set_multi", label = "set_multi, 100 keys", op = "set_multi", n = MULTI, addrs = S1,
    -- libmemcached does 100 round trips here; fewer ops keep the run short
    n_for = { libmemcached = 200 } },
  { id = "delete_multi", label = "delete_multi, 100 keys", op = "delete_multi", n = MULTI, addrs = S1,
    n_for = { libmemcached = 200 } },
}
local codec_workload = { id = "msgpack", label = "encode+decode, ~1 KB nested table", n = CODEC }

local samples = {} -- samples[workload][system] = { ns, ... } or "n/a"

local function measure(wid, sid, cmd)
  local out, ok = sh(PIN .. cmd .. " 2>&1")
  local v = trim(out)
  samples[wid] = samples[wid] or {}
  if v == "n/a" then
    samples[wid][sid] = "n/a"
    return
  end
  local ns = tonumber(v)
  if not ok or not ns then
    io.stderr:write("FAILED: ", cmd, "\n", out, "\n")
    samples[wid][sid] = samples[wid][sid] or "failed"
    return
  end
  local t = samples[wid][sid]
  if type(t) ~= "table" then t = {}; samples[wid][sid] = t end
  t[#t + 1] = ns
end

local function rotated(list, k)
  local r = {}
  for i = 1, #list do r[i] = list[(i - 1 + k) % #list + 1] end
  return r
end

io.stderr:write("measuring: ", RUNS, " runs of ", #workloads * #systems + #codecs, " cells\n")
for run = 1, RUNS do
  local t0 = os.time()
  for _, w in ipairs(workloads) do
    for _, s in ipairs(rotated(systems, run - 1)) do
      local n = (w.n_for and w.n_for[s.id]) or w.n
      measure(w.id, s.id, string.format("%s %s %d %s", s.cmd, w.op, n, w.addrs))
    end
  end
  for _, c in ipairs(rotated(codecs, run - 1)) do
    measure("msgpack", c.id, string.format("%s %d", c.cmd, codec_workload.n))
  end
  io.stderr:write(string.format("  run %d/%d done (%ds)\n", run, RUNS, os.time() - t0))
end

---------------------------------------------------------------- statistics
local function stats(t)
  if type(t) ~= "table" or #t == 0 then return nil end
  local s = {}
  for i, v in ipairs(t) do s[i] = v end
  table.sort(s)
  local n = #s
  local med = (n % 2 == 1) and s[(n + 1) // 2] or (s[n // 2] + s[n // 2 + 1]) / 2
  return { median = med, min = s[1], max = s[n] }
end

local result = {} -- result[wid][sid] = stats + ratio
local function compute(wid, list, base)
  result[wid] = {}
  local b = stats(samples[wid] and samples[wid][base])
  for _, s in ipairs(list) do
    local st = stats(samples[wid] and samples[wid][s.id])
    if st and b then st.ratio = st.median / b.median end
    result[wid][s.id] = st or { na = (samples[wid] and samples[wid][s.id]) or "n/a" }
  end
end
for _, w in ipairs(workloads) do compute(w.id, systems, "limit") end
compute("msgpack", codecs, "cjson")

local function us(ns) return string.format("%.1f", ns / 1000) end

local function cell(st)
  if not st or st.na then return tostring(st and st.na or "n/a") end
  return string.format("%s µs (%s–%s) **%.2fx**", us(st.median), us(st.min), us(st.max), st.ratio or 0)
end

---------------------------------------------------------------- results.tsv
do
  local f = assert(io.open("bench/results.tsv", "w"))
  f:write("workload\tsystem\tmedian_ns\tmin_ns\tmax_ns\tratio\n")
  local function rows(wid, list)
    for _, s in ipairs(list) do
      local st = result[wid][s.id]
      if st.na then
        f:write(string.format("%s\t%s\tn/a\tn/a\tn/a\tn/a\n", wid, s.id))
      else
        f:write(string.format("%s\t%s\t%.0f\t%.0f\t%.0f\t%.3f\n", wid, s.id,
          st.median, st.min, st.max, st.ratio or 0))
      end
    end
  end
  for _, w in ipairs(workloads) do rows(w.id, systems) end
  rows("msgpack", codecs)
  f:close()
end

---------------------------------------------------------------- tables
print("## Time per operation")
print("")
print(string.format("Median of %d runs (min–max), and the ratio to the hand-written C client", RUNS))
print("(bench/limit.c: blocking socket, one write per request or batch). Serial ops: " ..
      SERIAL .. " per run; multi ops: " .. MULTI .. " (libmemcached's set/delete_multi: 200).")
print("")
local head, rule = { "workload" }, { "---" }
for _, s in ipairs(systems) do head[#head + 1] = s.label; rule[#rule + 1] = "---" end
print("| " .. table.concat(head, " | ") .. " |")
print("| " .. table.concat(rule, " | ") .. " |")
for _, w in ipairs(workloads) do
  local row = { w.label }
  for _, s in ipairs(systems) do row[#row + 1] = cell(result[w.id][s.id]) end
  print("| " .. table.concat(row, " | ") .. " |")
end
print("")
print("libmemcached's set_multi and delete_multi are 100 memcached_set / memcached_delete calls,")
print("one round trip each (its BUFFER_REQUESTS mode does not wait for the server).")
print("")
print("msgpack: " .. codec_workload.n .. " ops per run; ratio to lua-cjson (JSON, for scale).")
print("")
head, rule = { "workload" }, { "---" }
for _, c in ipairs(codecs) do head[#head + 1] = c.label; rule[#rule + 1] = "---" end
print("| " .. table.concat(head, " | ") .. " |")
print("| " .. table.concat(rule, " | ") .. " |")
do
  local row = { codec_workload.label }
  for _, c in ipairs(codecs) do row[#row + 1] = cell(result.msgpack[c.id]) end
  print("| " .. table.concat(row, " | ") .. " |")
end
do
  local sizes = trim(sh(LUA .. " bench/msgpack_bench.lua sizes")):gsub("\t", " "):gsub("\n", " B, ")
  print("")
  print("Encoded size: " .. sizes .. " B.")
end
print("")

---------------------------------------------------------------- targets
print("## Targets")
print("")
local function r(wid, sid)
  local st = result[wid] and result[wid][sid]
  return st and not st.na and st.ratio or nil
end
local function med(wid, sid)
  local st = result[wid] and result[wid][sid]
  return st and not st.na and st.median or nil
end
local function verdict(ok) return ok and "MET" or "MISSED" end
local function target_ratio(wid, limit, what)
  local x = r(wid, "ours")
  if not x then print("- " .. what .. ": n/a"); return end
  print(string.format("- %s <= %.2fx of the limit: %.2fx, %s%s", what, limit, x, verdict(x <= limit),
    x <= limit and "" or string.format(" by %.0f%%", (x / limit - 1) * 100)))
end
target_ratio("get", 1.05, "serial get")
target_ratio("set", 1.05, "serial set")
local function floor_note(wid)
  local f, o = r(wid, "floor"), r(wid, "ours")
  if f and o then
    print(string.format("  (%s: the Lua floor itself is %.2fx of the limit; this library is %.2fx of the floor)",
      wid, f, o / f))
  end
end
floor_note("get")
floor_note("set")
target_ratio("get_multi", 1.10, "get_multi, 1 server")
floor_note("get_multi")
do
  local o, l = med("get_multi", "ours"), med("get_multi", "libmemcached")
  if o and l then
    print(string.format("- get_multi faster than libmemcached's mget: %s vs %s µs, %s",
      us(o), us(l), verdict(o < l)))
  end
  local o3, l1, l3 = med("get_multi_3", "ours"), med("get_multi", "limit"), med("get_multi_3", "limit")
  if o and o3 and l1 and l3 then
    -- "close to one server's, not the sum": sending to all servers before
    -- reading any keeps the three round trips overlapped
    print(string.format("- get_multi over 3 servers close to 1 server's (<= 1.5x): ours %.2fx " ..
      "(limit's own: %.2fx), %s", o3 / o, l3 / l1, verdict(o3 / o <= 1.5)))
  end
  local m = r("msgpack", "ours")
  if m then
    print(string.format("- msgpack encode+decode faster than lua-cjson's: %.2fx of cjson, %s",
      m, verdict(m < 1)))
  end
end
print("")

---------------------------------------------------------------- allocations
print("## Allocations per operation (steady state)")
print("")
print("bench/malloc_count.so counts malloc/calloc/realloc calls per calling object;")
print("per op = (count at N2 ops - count at N1 ops) / (N2 - N1), same warm-up in both.")
print("Lua's allocator is realloc inside the interpreter (lua5.4): a get returns a new")
print("100-byte Lua string, which Lua allocates; the library's own C code is memcached.so")
print("and libmsgpackc.")
print("")
local function alloc_run(op, n, addrs)
  local file = os.tmpname()
  local cmd = string.format("MALLOC_COUNT_FILE=%s LD_PRELOAD=%s/bench/malloc_count.so %s%s bench/lua_client.lua %s %d %s >/dev/null",
    file, trim(sh("pwd")), PIN, LUA, op, n, addrs)
  local _, ok = sh(cmd)
  local counts = read_pairs(file, "^(%S+) (%d+)$")
  return ok and counts or nil
end
print("| workload | N1 -> N2 | all | Lua interpreter | memcached.so | libmsgpackc | other |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for _, a in ipairs {
  { op = "get", n1 = 10000, n2 = 100000 },
  { op = "set", n1 = 10000, n2 = 100000 },
  -- a get_multi costs ~20x a get: 1k -> 10k keeps the run short
  { op = "get_multi", n1 = 1000, n2 = 10000 },
} do
  local c1, c2 = alloc_run(a.op, a.n1, S1), alloc_run(a.op, a.n2, S1)
  if not (c1 and c2) then
    print("| " .. a.op .. " | failed | | | | | |")
  else
    local d = a.n2 - a.n1
    local function per(name) return ((c2[name] or 0) - (c1[name] or 0)) / d end
    local lua_i, ours, mp = per("lua5.4"), per("memcached.so"), 0
    for name in pairs(c2) do
      if name:match("^libmsgpack") then mp = mp + per(name) end
    end
    local all = per("total")
    print(string.format("| %s | %dk -> %dk | %.3f | %.3f | %.3f | %.3f | %.3f |", a.op, a.n1 // 1000,
      a.n2 // 1000, all, lua_i, ours, mp, all - lua_i - ours - mp))
  end
end
print("")

---------------------------------------------------------------- RSS
print("## Memory over 1M gets")
print("")
do
  local out, ok = sh(PIN .. LUA .. " bench/lua_client.lua rss 1000000 " .. S1)
  if not ok then
    print("failed: " .. out)
  else
    print("| gets | VmRSS | Lua heap (collectgarbage) |")
    print("| --- | --- | --- |")
    local rss = {}
    for n, r2, h in out:gmatch("(%d+)\t(%d+)\t(%d+)") do
      rss[#rss + 1] = tonumber(r2)
      print(string.format("| %dk | %.0f KiB | %.0f KiB |", tonumber(n) // 1000, r2 / 1024, h / 1024))
    end
    if #rss >= 3 then
      local grow = rss[#rss] - rss[1]
      print("")
      print(string.format("RSS change from 100k to 1M gets: %+d KiB (%s)", grow // 1024,
        math.abs(grow) <= 256 * 1024 and "flat" or "GROWING"))
    end
  end
end
print("")

---------------------------------------------------------------- syscalls
-- Where the time goes, per operation: the client's own CPU time, its
-- syscalls by kind, how many failed with EAGAIN, and context switches.
-- Counted with perf's tracepoints, which do not slow the client down (strace
-- does, and then every reply is already there when the client reads, which
-- hides the recv -> EAGAIN -> poll -> recv pattern). A short and a long run
-- are subtracted so that start-up and warm-up cancel.
local EVENTS = "-e task-clock,context-switches,raw_syscalls:sys_enter," ..
  "syscalls:sys_enter_poll,syscalls:sys_enter_recvfrom,syscalls:sys_enter_read," ..
  "syscalls:sys_enter_sendto,syscalls:sys_enter_write " ..
  "-e raw_syscalls:sys_exit --filter 'ret == -11'"

local function perf_counts(cmd)
  local file = os.tmpname()
  local _, ok = sh(PIN .. "perf stat -x, " .. EVENTS .. " -o " .. file .. " " .. cmd .. " >/dev/null 2>&1")
  local c = read_pairs(file, "^([%d%.]+),[^,]*,([^,]+),", true)
  return ok and c["raw_syscalls:sys_enter"] and c or nil
end

local has_perf = trim(sh("command -v perf")) ~= "" and
  perf_counts("true") ~= nil
if has_perf then
  print("## Where the time goes (perf stat, per operation)")
  print("")
  print("Client side only (the server is not counted). cpu = the client's own CPU time")
  print("(task-clock, user + kernel); recv counts recvfrom and read, send counts sendto")
  print("and write; EAGAIN = syscalls that failed with EAGAIN; cs = context switches.")
  print("")
  print("| workload | system | cpu µs | syscalls | poll | recv | send | EAGAIN | cs |")
  print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
  for _, w in ipairs {
    { op = "get", n1 = 2000, n2 = 12000, addrs = S1, label = "get" },
    { op = "set", n1 = 2000, n2 = 12000, addrs = S1, label = "set" },
    { op = "get_multi", n1 = 200, n2 = 1200, addrs = S1, label = "get_multi, 1 server" },
    { op = "get_multi", n1 = 200, n2 = 1200, addrs = S1 .. " " .. S2 .. " " .. S3,
      label = "get_multi, 3 servers" },
    { op = "set_multi", n1 = 200, n2 = 1200, addrs = S1, label = "set_multi" },
  } do
    for _, s in ipairs(systems) do
      local n1, n2 = w.n1, w.n2
      -- the floor has get, set and a one-server get_multi only
      local skip = s.id == "floor" and not (w.op == "get" or w.op == "set" or
        (w.op == "get_multi" and w.addrs == S1))
      if s.id == "libmemcached" and w.op == "set_multi" then n1, n2 = 20, 120 end
      local a = not skip and perf_counts(string.format("%s %s %d %s", s.cmd, w.op, n1, w.addrs))
      local b = not skip and perf_counts(string.format("%s %s %d %s", s.cmd, w.op, n2, w.addrs))
      if a and b then
        local function per(ev) return ((b[ev] or 0) - (a[ev] or 0)) / (n2 - n1) end
        print(string.format("| %s | %s | %.1f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f |",
          w.label, s.label, per("task-clock") * 1000, per("raw_syscalls:sys_enter"),
          per("syscalls:sys_enter_poll"),
          per("syscalls:sys_enter_recvfrom") + per("syscalls:sys_enter_read"),
          per("syscalls:sys_enter_sendto") + per("syscalls:sys_enter_write"),
          per("raw_syscalls:sys_exit"), per("context-switches")))
      end
    end
  end
  print("")
else
  print("(perf with tracepoints unavailable: install linux-perf and run as root for the")
  print("per-operation syscall table)")
  print("")
end

-- Async mode (issue 11): 100 coroutines x 1,000 gets on one server inside
-- cqueues and luv against the blocking client's serial loop, one process,
-- with the floors (none of the client, and the least each loop allows):
-- medians of 9 rounds, the rows interleaved (bench/async.lua says more;
-- a row's rounds spread by up to 2x on these machines, and 5 medians
-- moved by 25% from one run to the next).
print("## Async mode")
print("")
do
  local out, ok = sh(PIN .. LUA .. " bench/async.lua " .. S1 .. " 100 1000 1,2 9 2>&1")
  if ok then io.write(out) else print("(bench/async.lua failed: " .. trim(out) .. ")") end
end
print("")
-- The same under OpenResty's LuaJIT (its own build of memcached.so, and
-- Debian's luv and cqueues for the 5.1 ABI): the issue's target is Lua
-- 5.4's; this shows what a JIT makes of the same Lua.
print("Under LuaJIT:")
print("")
do
  local _, built = sh("make --no-print-directory LUA_VERSION=luajit all >/dev/null 2>&1")
  local out, ok = "", false
  if built then
    out, ok = sh(PIN .. "env MC_SO_DIR=build/luajit luajit bench/async.lua " .. S1
      .. " 100 1000 1,2 9 2>&1")
  end
  if ok then io.write(out) else print("(bench/async.lua under luajit failed: " .. trim(out) .. ")") end
end
print("")

print("Results written to bench/results.tsv")
