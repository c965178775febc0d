#!/usr/bin/env bash
# The install paths a user takes, for Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT
# (OpenResty's luajit2, through LuaRocks' 5.1 tree):
#
#   1. `luarocks make` of rockspec/memcached-engine-scm-1.rockspec in this
#      tree;
#   2. `luarocks make` of the release rockspec inside the unpacked
#      `make dist` tarball, with no network;
#   3. `luarocks build` of the `make dist` .src.rock, with no network.
#
# Each into a throwaway tree. Each installed module must be the one built
# with LuaRocks' flags (compiled once: the install step builds nothing),
# load in its Lua and store, read and count against a real memcached.
# "No network" is a network namespace of its own (unshare -n, as root);
# without one the offline steps still run, and say so.
#
# One TAP stream; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VERSIONS=${LUAROCKS_VERSIONS:-"5.1 5.2 5.3 5.4 luajit"}

TMP=$(mktemp -d /tmp/test-luarocks.XXXXXX)
mc_pid=
cleanup() {
    [ -n "$mc_pid" ] && kill -9 "$mc_pid" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

n=0
failed=0
ok() { n=$((n + 1)); echo "ok $n - $1"; }
not_ok() {
    n=$((n + 1)); failed=$((failed + 1)); echo "not ok $n - $1"
    [ -f "$2" ] && sed 's/^/# /' "$2" | tail -n 8
}

# ---- a memcached to talk to ----------------------------------------------
port=$(lua5.4 -e 'local s = require("socket").bind("127.0.0.1", 0); local _, p = s:getsockname(); print(p); s:close()')
user=""
[ "$(id -u)" = 0 ] && user="-u root"
memcached $user -U 0 -l 127.0.0.1 -p "$port" >/dev/null 2>&1 &
mc_pid=$!
for _ in $(seq 1 200); do
    (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
    sleep 0.02
done

offline=""
if [ "$(id -u)" = 0 ] && unshare -n true 2>/dev/null; then
    offline="unshare -n"
fi

(cd "$ROOT" && make --no-print-directory dist >"$TMP/dist.log" 2>&1) ||
    { not_ok "make dist" "$TMP/dist.log"; echo "1..$n"; exit 1; }
VERSION=$(sed -n 's/^#define LMC_VERSION "\(.*\)"$/\1/p' src/lua/lmc_client.h)
DIST=memcached-engine-$VERSION

# check NAME LUA TREE ABI LOG: the installed module loads in LUA, was
# compiled once, and works.
check() {
    local name=$1 lua=$2 tree=$3 abi=$4 log=$5 compiled out
    compiled=$(grep -c -- ' -c src/lua/lmc_client\.c ' "$log")
    if [ "$compiled" != 1 ]; then
        echo "lmc_client.c compiled $compiled times" >>"$log"
        not_ok "$name: built once" "$log"
        return
    fi
    if ! grep -qE -- "^(gcc|cc) .* -I$(luarocks_incdir "$lua") .* -c src/lua/lmc_client\.c " "$log"; then
        echo "not built against $(luarocks_incdir "$lua")" >>"$log"
        not_ok "$name: built with luarocks' flags" "$log"
        return
    fi
    out=$("$lua" -e "
        package.path = '$tree/share/lua/$abi/?.lua;' .. package.path
        package.cpath = '$tree/lib/lua/$abi/?.so'
        local memcached = require 'memcached'
        assert(memcached._VERSION == '$VERSION', memcached._VERSION)
        local mc = assert(memcached.new('127.0.0.1:$port'))
        local k = 'rock:' .. (jit and 'jit' or (_VERSION:gsub(' ', '')))
        assert(mc:set(k, { n = 1, s = 'x' }))
        local v = assert(mc:get(k))
        assert(v.n == 1 and v.s == 'x')
        assert(mc:delete(k .. 'c') or true)
        assert(mc:increment(k .. 'c', 5, 10) == 10)
        assert(mc:increment(k .. 'c', 5) == 15)
        mc:close()
        print('works')
    " 2>&1)
    if [ "$out" = works ]; then
        ok "$name"
    else
        echo "$out" >>"$log"
        not_ok "$name: the installed module works" "$log"
    fi
}

# The headers LuaRocks finds for each Lua (Debian's layout).
luarocks_incdir() {
    case $1 in
        luajit) echo /usr/include/luajit-2.1 ;;
        *) echo "/usr/include/$1" ;;
    esac
}

for v in $VERSIONS; do
    if [ "$v" = luajit ]; then
        lua=luajit abi=5.1
        # LuaJIT installs into LuaRocks' 5.1 tree, built against its own
        # headers and run by its own interpreter
        lr=(luarocks --lua-version=5.1)
        vars=(LUA_INCDIR=/usr/include/luajit-2.1 LUA=/usr/bin/luajit)
    else
        lua=lua$v abi=$v
        lr=(luarocks --lua-version="$v")
        vars=()
    fi

    # 1. the scm rockspec, in this tree
    tree=$TMP/scm-$v log=$TMP/scm-$v.log
    rm -rf build/luarocks
    if "${lr[@]}" make --tree="$tree" rockspec/memcached-engine-scm-1.rockspec "${vars[@]}" >"$log" 2>&1; then
        check "luarocks make (scm rockspec) for $v" "$lua" "$tree" "$abi" "$log"
    else
        not_ok "luarocks make (scm rockspec) for $v" "$log"
    fi

    # 2. the release rockspec in the unpacked tarball, offline
    tree=$TMP/rel-$v log=$TMP/rel-$v.log src=$TMP/src-$v
    mkdir -p "$src"
    tar -xzf "build/dist/$DIST.tar.gz" -C "$src"
    if (cd "$src/$DIST" && $offline "${lr[@]}" make --tree="$tree" "rockspec/$DIST-1.rockspec" "${vars[@]}") >"$log" 2>&1; then
        check "luarocks make (release rockspec, tarball${offline:+, no network}) for $v" "$lua" "$tree" "$abi" "$log"
    else
        not_ok "luarocks make (release rockspec, tarball${offline:+, no network}) for $v" "$log"
    fi

    # 3. the .src.rock, offline
    tree=$TMP/rock-$v log=$TMP/rock-$v.log
    if (cd "$TMP" && $offline "${lr[@]}" build --tree="$tree" "$ROOT/build/dist/$DIST-1.src.rock" "${vars[@]}") >"$log" 2>&1; then
        check "luarocks build (.src.rock${offline:+, no network}) for $v" "$lua" "$tree" "$abi" "$log"
    else
        not_ok "luarocks build (.src.rock${offline:+, no network}) for $v" "$log"
    fi
done
rm -rf build/luarocks

[ -z "$offline" ] && echo "# no network namespace (unshare -n): the offline builds ran with the network up"
echo "1..$n"
[ "$failed" -eq 0 ]
