#!/bin/bash
# `make bench`: builds the C helpers, starts three memcached servers pinned
# to CPU 1 on free loopback ports, and runs bench/run.lua against them. The
# servers are killed by PID on any exit (trap), never by name.
#
# Why everything runs on CPU 1: on these VMs a wake-up across CPUs costs
# ~100 us and would swamp the ~10 us a request takes.
set -eu
cd "$(dirname "$0")/.."
LUA=${LUA:-lua5.4}
CC=${CC:-cc}
CPU=${BENCH_CPU:-1}
WARN="-O2 -Wall -Wextra -std=gnu99"

build() { # build OUT SRC FLAGS...: only when the source is newer
    local out=$1 src=$2; shift 2
    if [ ! -e "$out" ] || [ "$src" -nt "$out" ]; then
        echo "$CC $WARN -o $out $src $*"
        $CC $WARN -o "$out" "$src" "$@"
    fi
}
build bench/limit.bin bench/limit.c
build bench/libmc.bin bench/libmc.c -lmemcached
build bench/malloc_count.so bench/malloc_count.c -fPIC -shared -ldl
build bench/lua_floor.so bench/lua_floor.c -fPIC -shared -I"${LUA_INCDIR:-/usr/include/lua5.4}"
[ -e memcached.so ] || { echo "memcached.so missing: run make first" >&2; exit 1; }

PIDS="" # the servers and the driver, killed by PID on exit
cleanup() {
    for p in $PIDS; do kill -9 "$p" 2>/dev/null || true; done
    for p in $PIDS; do wait "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

USER_ARG=""
[ "$(id -u)" = 0 ] && USER_ARG="-u root"

free_port() {
    $LUA -e 'local s = assert(require("socket").bind("127.0.0.1", 0))
             local _, p = s:getsockname(); s:close(); print(p)'
}

port_up() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

ADDRS=""
for i in 1 2 3; do
    started=""
    for attempt in 1 2 3 4 5; do
        port=$(free_port)
        # taskset execs memcached, so $! is memcached's own PID
        taskset -c "$CPU" memcached $USER_ARG -t 1 -U 0 -c 256 -m 64 \
            -l 127.0.0.1 -p "$port" >/dev/null 2>&1 &
        pid=$!
        PIDS="$PIDS $pid"
        for _ in $(seq 200); do
            if port_up "$port"; then started=1; break; fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.02
        done
        [ -n "$started" ] && break
        kill -9 "$pid" 2>/dev/null || true
    done
    [ -n "$started" ] || { echo "could not start memcached" >&2; exit 1; }
    ADDRS="$ADDRS 127.0.0.1:$port"
done

# In the background with wait, so that a TERM reaches the trap at once
# instead of after the driver finishes.
BENCH_CPU=$CPU $LUA bench/run.lua $ADDRS &
DRIVER=$!
PIDS="$PIDS $DRIVER"
wait "$DRIVER"

# TLS and SASL (bench/tls_bench.lua): its own servers, started from the
# pinned process so that they share its CPU.
echo
taskset -c "$CPU" $LUA bench/tls_bench.lua

# The nginx section (bench/nginx.sh): its own nginx and memcached servers.
echo
bash bench/nginx.sh
