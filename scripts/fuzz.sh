#!/bin/sh
# Builds the libFuzzer targets in spec/fuzz/ (clang, with ASan+UBSan) and
# runs each for FUZZ_SECONDS (default 60); prints TAP. A crash, an overread,
# undefined behaviour or a leak fails the target and leaves the input that
# caused it in build/fuzz/.
set -u
cd "$(dirname "$0")/.."
SECONDS_EACH=${FUZZ_SECONDS:-60}
CC=${FUZZ_CC:-clang}
OUT=build/fuzz
mkdir -p "$OUT"
LUA_INC=${LUA_INCDIR:-/usr/include/lua5.4}
FLAGS="-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined -Isrc/core -Isrc/driver -Isrc/lua -I$LUA_INC"

n=0
fail=0
check() { # check NAME BUILD-ARGS...
    name=$1
    shift
    n=$((n + 1))
    if ! $CC $FLAGS -o "$OUT/$name" "spec/fuzz/$name.c" "$@" >"$OUT/$name.build.log" 2>&1; then
        echo "not ok $n - $name: does not build (see $OUT/$name.build.log)"
        fail=$((fail + 1))
        return
    fi
    mkdir -p "$OUT/$name.corpus"
    if (cd "$OUT" && "./$name" -max_total_time="$SECONDS_EACH" -print_final_stats=1 \
            "$name.corpus" >"$name.log" 2>&1); then
        runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$OUT/$name.log")
        echo "ok $n - $name: ${runs:-?} inputs in ${SECONDS_EACH} s, no failure"
    else
        echo "not ok $n - $name: failed, see $OUT/$name.log"
        tail -n 30 "$OUT/$name.log" | sed 's/^/# /'
        fail=$((fail + 1))
    fi
}

check fuzz_reader src/core/mc_proto.c src/core/mc_buf.c
check fuzz_value src/lua/lmc_value.c src/lua/lmc_encode.c src/lua/lmc_decode.c src/core/mc_buf.c -llua5.4 -lmsgpackc
check fuzz_feed src/core/mc_feed.c src/core/mc_codec.c src/core/mc_proto.c src/core/mc_buf.c src/core/mc_item.c src/core/mc_error.c
check fuzz_abi src/core/mc_abi_batch.c src/core/mc_feed.c src/core/mc_codec.c src/core/mc_proto.c src/core/mc_buf.c src/core/mc_item.c src/core/mc_error.c
check fuzz_pipe $(ls src/core/*.c)
check fuzz_roundtrip src/lua/lmc_value.c src/lua/lmc_encode.c src/lua/lmc_decode.c src/core/mc_buf.c -llua5.4 -lmsgpackc
echo "1..$n"
[ "$fail" -eq 0 ]
