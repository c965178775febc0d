#!/bin/sh
# Runs examples/demo.lua (called by `make demo` after the build).
#
# With MEMCACHED_SERVERS set (comma-separated addresses), the demo talks to
# those servers. Otherwise a throwaway memcached is started on a free
# loopback port and killed, by its PID, when this script exits.
set -eu
cd "$(dirname "$0")/.."
LUA=${LUA:-lua5.4}

if [ -n "${MEMCACHED_SERVERS:-}" ]; then
    echo "demo: using MEMCACHED_SERVERS=$MEMCACHED_SERVERS"
    exec "$LUA" examples/demo.lua
fi

if ! command -v memcached >/dev/null 2>&1; then
    echo "demo: memcached is not installed (run make deps, or set MEMCACHED_SERVERS)" >&2
    exit 1
fi

pid=""
demo=""
cleanup() {
    if [ -n "$demo" ]; then
        kill "$demo" 2>/dev/null || true
        demo=""
    fi
    if [ -n "$pid" ]; then
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        pid=""
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# The kernel's choice of a free port (LuaSocket binding port 0); when that
# is not available, a pseudo-random one (a clash shows as a failed start and
# the loop below tries another).
free_port() {
    "$LUA" -e 'local s = assert(require("socket").bind("127.0.0.1", 0))
               local _, p = s:getsockname() s:close() print(p)' 2>/dev/null ||
        awk -v s="$$$1" 'BEGIN { srand(s); print 20000 + int(rand() * 40000) }'
}

# 0 once something accepts connections on the port; tries for ~5 s.
wait_port() {
    "$LUA" -e 'local socket = require "socket"
               for _ = 1, 250 do
                 local c = socket.tcp() c:settimeout(0.2)
                 local ok = c:connect("127.0.0.1", tonumber(arg[1])) c:close()
                 if ok then os.exit(0) end
                 socket.sleep(0.02)
               end
               os.exit(1)' "$1" 2>/dev/null && return 0
    # no LuaSocket: give memcached a moment and trust that it is still alive
    sleep 1
    kill -0 "$pid" 2>/dev/null
}

user=""
[ "$(id -u)" = 0 ] && user="-u root"

attempt=1
while [ "$attempt" -le 5 ]; do
    port=$(free_port "$attempt")
    # shellcheck disable=SC2086 # $user is one option or nothing
    memcached $user -l 127.0.0.1 -p "$port" -U 0 -t 1 -m 64 >/dev/null 2>&1 &
    pid=$!
    if wait_port "$port" && kill -0 "$pid" 2>/dev/null; then
        break
    fi
    cleanup
    attempt=$((attempt + 1))
done
if [ -z "$pid" ]; then
    echo "demo: could not start memcached on a loopback port" >&2
    exit 1
fi

echo "demo: started memcached (pid $pid) on 127.0.0.1:$port"
# In the background, so that a TERM reaches the trap at once instead of
# after the demo finished.
MEMCACHED_SERVERS="127.0.0.1:$port" "$LUA" examples/demo.lua &
demo=$!
rc=0
wait "$demo" || rc=$?
demo=""
exit "$rc"
