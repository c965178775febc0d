#!/bin/sh
# Installs the Debian packages the build, the demo and the specs need, when
# they are missing: with apt-get when run as root, else it prints the exact
# command to run.
set -e
# libssl-dev: the TLS transport; openssl and sasl2-bin: the specs make
# certificates and a SASL password database at run time.
PKGS="gcc make pkg-config lua5.4 liblua5.4-dev libmsgpack-dev lua-busted lua-socket memcached libmemcached-dev libssl-dev openssl sasl2-bin"
[ -n "$EXTRA_PKGS" ] && PKGS="$PKGS $EXTRA_PKGS"
missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed"; then
        missing="$missing $p"
    fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ]; then
    echo "installing:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq --no-install-recommends $missing >/dev/null
else
    echo "missing Debian packages; run:"
    echo "  sudo apt-get install -y$missing"
    exit 1
fi
