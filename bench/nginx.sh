#!/usr/bin/env bash
# The nginx section of `make bench`: memcached.resty (this library),
# lua-resty-memcached (Debian's lua-nginx-memcached) and a floor client,
# each timed inside one nginx handler (bench/nginx/bench.lua) on the same
# worker and the same memcached; nginx and memcached pinned to one CPU;
# the three clients alternate within each round; medians of the rounds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LUA=${LUA:-lua5.4}
CPU=${BENCH_CPU:-1}
ROUNDS=${BENCH_NGINX_ROUNDS:-7}
N=${BENCH_NGINX_N:-20000}   # serial gets, sets
M=${BENCH_NGINX_M:-2000}    # 100-key multi-gets

for m in ndk_http_module.so ngx_http_lua_module.so; do
    [ -f "/usr/lib/nginx/modules/$m" ] || { echo "nginx section skipped: no $m (make test-openresty installs it)"; exit 0; }
done
[ -f /usr/share/lua/5.1/nginx/memcached.lua ] || { echo "nginx section skipped: lua-nginx-memcached missing"; exit 0; }
make --no-print-directory OBJDIR=build/luajit MODULE=build/luajit/memcached.so \
    LUA_INCDIR=/usr/include/luajit-2.1 >/dev/null

TMP=$(mktemp -d /tmp/bench-nginx.XXXXXX)
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$TMP"
}
trap cleanup EXIT

free_port() {
    "$LUA" -e 'local s = assert(require("socket").bind("127.0.0.1", 0))
               local _, p = s:getsockname() s:close() print(p)'
}
port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() { local i; for i in $(seq 200); do port_up "$1" && return 0; sleep 0.02; done; return 1; }
USER_ARG=()
[ "$(id -u)" = 0 ] && USER_ARG=(-u root)

MCS=()
for i in 1 2 3; do
    p=$(free_port)
    taskset -c "$CPU" memcached "${USER_ARG[@]}" -t 1 -U 0 -c 256 -m 64 -l 127.0.0.1 -p "$p" >/dev/null 2>&1 &
    PIDS+=($!)
    wait_port "$p" || { echo "memcached did not start" >&2; exit 1; }
    MCS+=("$p")
done
REFUSED=$(free_port) # nobody listens there
HUNG=$(free_port)    # accepts and never answers
"$LUA" -e "local socket = require 'socket'
           local s = assert(socket.bind('127.0.0.1', $HUNG))
           local keep = {}
           s:settimeout(0.05)
           while true do local c = s:accept() if c then keep[#keep + 1] = c end end" &
PIDS+=($!)
wait_port "$HUNG" || { echo "the hung server did not start" >&2; exit 1; }
PORT=$(free_port)
sed -e "s|@TMP@|$TMP|g" -e "s|@ROOT@|$ROOT|g" -e "s|@PORT@|$PORT|g" \
    -e "s|@MC1@|${MCS[0]}|g" -e "s|@MC2@|${MCS[1]}|g" -e "s|@MC3@|${MCS[2]}|g" \
    -e "s|@REFUSED@|$REFUSED|g" -e "s|@HUNG@|$HUNG|g" \
    bench/nginx/nginx.conf.in >"$TMP/nginx.conf"
taskset -c "$CPU" nginx -p "$TMP" -c "$TMP/nginx.conf" -e "$TMP/error.log" &
PIDS+=($!)
wait_port "$PORT" || { echo "nginx did not start" >&2; cat "$TMP/error.log" >&2; exit 1; }
URL="http://127.0.0.1:$PORT/bench"

run() { # client op n -> seconds
    curl -sS --max-time 120 "$URL?client=$1&op=$2&n=$3"
}
# warm up every client and the keepalive pools
for c in ours held resty floor floorv; do for op in get set multi; do run "$c" "$op" 200 >/dev/null; done; done
run ours multi3 50 >/dev/null

# what a pooled connect + setkeepalive alone costs, per operation: part of
# every memcached.resty call (its client outlives requests, so it takes a
# connection from nginx's pool per call)
pool_us=$(for _ in 1 2 3; do run pool get "$N"; done | sort -n | sed -n 2p)
reuse_us=$(for _ in 1 2 3; do run poolreuse get "$N"; done | sort -n | sed -n 2p)
: >"$TMP/results"
for r in $(seq "$ROUNDS"); do
    order="ours held resty floor floorv"
    [ $((r % 2)) = 0 ] && order="floorv floor resty held ours"
    for op in get set multi multi3; do
        n=$N
        [ "$op" = multi ] || [ "$op" = multi3 ] && n=$M
        for c in $order; do
            [ "$op" = multi3 ] && [ "$c" != ours ] && [ "$c" != held ] && continue
            echo "$op $c $n $(run "$c" "$op" "$n")" >>"$TMP/results"
        done
    done
done

"$LUA" - "$TMP/results" "$ROUNDS" <<'LUA'
local file, rounds = arg[1], tonumber(arg[2])
local t = {}
for line in io.lines(file) do
  local op, c, n, s = line:match("^(%S+) (%S+) (%S+) (.*)$")
  local v = tonumber(s)
  if not v then print("error: " .. op .. " " .. c .. ": " .. s) os.exit(1) end
  t[op] = t[op] or {}
  t[op][c] = t[op][c] or {}
  table.insert(t[op][c], v / tonumber(n) * 1e6)
end
local function med(l)
  if not l then return nil end
  table.sort(l)
  return l[(#l + 1) // 2], l[1], l[#l]
end
local function cell(l, base)
  local m, lo, hi = med(l)
  if not m then return "n/a" end
  local s = string.format("%.1f µs (%.1f–%.1f)", m, lo, hi)
  if base then s = s .. string.format(" **%.2fx**", m / base) end
  return s
end
print("## nginx (OpenResty driver)\n")
print(("Each figure: one nginx handler timing N operations, median of %d rounds (min–max), " ..
       "per operation; the ratio is to the floor column."):format(rounds))
print("nginx and memcached pinned to one CPU; the clients alternate within each round.\n")
print("| workload | floor (binary, no checks) | floor + values | memcached.resty | memcached.resty, held | lua-resty-memcached | ours / lua-resty-memcached (held) |")
print("| --- | --- | --- | --- | --- | --- | --- |")
local names = { get = "get, 100 B value", set = "set (raw bytes), 100 B value", multi = "get_multi, 100 keys, 1 server",
                multi3 = "get_multi, 100 keys, 3 servers" }
for _, op in ipairs { "get", "set", "multi", "multi3" } do
  local f = med(t[op].floor and { table.unpack(t[op].floor) })
  local o = med(t[op].ours and { table.unpack(t[op].ours) })
  local r = med(t[op].resty and { table.unpack(t[op].resty) })
  local h = med(t[op].held and { table.unpack(t[op].held) })
  print(("| %s | %s | %s | %s | %s | %s | %s |"):format(names[op], cell(t[op].floor), cell(t[op].floorv, f),
    cell(t[op].ours, f),
    cell(t[op].held, f), cell(t[op].resty, f),
    (o and r) and string.format("%.2fx (%s)", o / r, h and string.format("%.2fx", h / r) or "n/a") or "n/a"))
end
LUA

echo
echo "A pooled connect + setkeepalive alone (no request), median of 3: $("$LUA" -e "print(string.format('%.2f', $pool_us / $N * 1e6))") µs with a new cosocket object each time, $("$LUA" -e "print(string.format('%.2f', $reuse_us / $N * 1e6))") µs reconnecting one object (what memcached.resty does within a request). The floor and lua-resty-memcached keep one connection for the whole handler; memcached.resty's client outlives requests, so each call takes a connection from nginx's pool and gives it back."
echo
echo "### Failover (memcached.resty, one of three servers down, failure_limit 2, timeout 0.1 s)"
echo
echo "| server | calls | errors | errors after ejection | p50 after (ms) | p99 after (ms) | max after (ms) |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
for mode in refused hung; do
    read -r calls errs after p50 p99 mx < <(curl -sS --max-time 120 "http://127.0.0.1:$PORT/failover?mode=$mode")
    echo "| $mode | $calls | $errs | $after | $p50 | $p99 | $mx |"
done

# Where the time goes, in instructions (deterministic, unlike the VM's
# timings): the same handlers in a second nginx under callgrind, counters
# zeroed after a warm-up, per operation and by shared object (JIT code is
# LuaJIT's compiled traces; libluajit its interpreter, GC, C API and trace
# exits; ngx_http_lua_module the cosocket calls).
cg_dumps() { # how many dumps callgrind has written (cg.out.1, .2, ...)
    local f k=0
    for f in "$TMP"/cg.out.*; do [ -e "$f" ] && k=$((k + 1)); done
    echo "$k"
}
if command -v valgrind >/dev/null && command -v callgrind_control >/dev/null; then
    CGPORT=$(free_port)
    sed -e "s/listen 127.0.0.1:$PORT;/listen 127.0.0.1:$CGPORT;/" -e "s|pid $TMP/nginx.pid|pid $TMP/nginx-cg.pid|" \
        "$TMP/nginx.conf" >"$TMP/nginx-cg.conf"
    valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" \
        nginx -p "$TMP" -c "$TMP/nginx-cg.conf" -e "$TMP/error-cg.log" >"$TMP/valgrind.log" 2>&1 &
    CGPID=$!
    PIDS+=($CGPID)
    if wait_port "$CGPORT" || { sleep 5; port_up "$CGPORT"; }; then
        CGN=${BENCH_NGINX_CG_N:-2000}
        CGURL="http://127.0.0.1:$CGPORT/bench"
        echo
        echo "### Instructions per operation (nginx under callgrind, $CGN operations, user space)"
        echo
        echo "| handler | instructions | by object |"
        echo "| --- | --- | --- |"
        cgfiles=()
        for spec in floor:get floorv:get ours:get held:get resty:get floor:set ours:set held:set resty:set \
                    floor:multi floorv:multi ours:multi resty:multi pool:get poolreuse:get; do
            c=${spec%%:*} op=${spec#*:}
            n=$CGN
            [ "$op" = multi ] && n=$((CGN / 10))
            for _ in 1 2 3; do curl -sS --max-time 300 "$CGURL?client=$c&op=$op&n=$n" >/dev/null; done
            callgrind_control -z "$CGPID" >/dev/null 2>&1
            curl -sS --max-time 300 "$CGURL?client=$c&op=$op&n=$n" >/dev/null
            before=$(cg_dumps)
            callgrind_control -d "$spec" "$CGPID" >/dev/null 2>&1 || true
            for _ in $(seq 50); do [ "$(cg_dumps)" -gt "$before" ] && break; sleep 0.1; done
            f="$TMP/cg.out.$(cg_dumps)"
            [ -f "$f" ] && "$LUA" bench/cg_sum.lua "$n" "$c $op=$f"
        done
    else
        echo "(callgrind section skipped: nginx under valgrind did not start)"
    fi
fi
