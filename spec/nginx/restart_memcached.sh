#!/usr/bin/env bash
# Kills (-9) the memcached whose pid is in PIDFILE, if any, and starts a new
# one on 127.0.0.1:PORT at once; writes its pid to PIDFILE and returns when it
# accepts connections. scripts/test-openresty.sh starts the "restart" server
# with it; spec/nginx/tests.lua runs it (os.execute, which blocks the worker)
# to restart that server between two calls.
#
#   restart_memcached.sh PORT PIDFILE LOG [memcached options...]
set -u
port=$1 pidfile=$2 log=$3
shift 3

accepts() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }
state() { sed -n 's/^[0-9]* (.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null; }

if [ -s "$pidfile" ]; then
    old=$(cat "$pidfile")
    kill -9 "$old" 2>/dev/null
    # gone or a zombie (its sockets closed), and nothing listens any more
    for _ in $(seq 500); do
        s=$(state "$old")
        { [ -z "$s" ] || [ "$s" = Z ]; } && ! accepts && break
        sleep 0.01
    done
fi
user=()
[ "$(id -u)" = 0 ] && user=(-u root)
for _ in 1 2 3; do
    # run from nginx, this shell holds copies of the worker's sockets
    # (listener, cosockets): the subshell closes them before memcached
    # starts, so that they close when nginx closes them
    (
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" 2>/dev/null
        done
        exec memcached "${user[@]}" -l 127.0.0.1 -p "$port" -U 0 -t 1 "$@" </dev/null >>"$log" 2>&1
    ) &
    new=$!
    echo "$new" >"$pidfile"
    for _ in $(seq 250); do
        s=$(state "$new")
        { [ -z "$s" ] || [ "$s" = Z ]; } && break # did not start (port still taken?)
        accepts && exit 0
        sleep 0.02
    done
done
echo "memcached on $port did not start" >&2
exit 1
