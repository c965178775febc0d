# memcached for Lua: a binary-protocol memcached client with a C engine.
#
#   make            build memcached.so for Lua 5.4
#   make demo       install missing Debian packages, build, run the example
#   make test       install missing Debian packages, build, run the specs
#   make asan       the specs again under AddressSanitizer + UBSan
#   make test-all   the specs under Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT
#   make dist       the release tarball the release rockspec builds from
#
# Another Lua: LUA_VERSION=5.1, 5.2, 5.3, 5.4 (the default) or luajit, for
# make, make test and make install (make test-5.1 ... test-luajit say the
# same). Each version builds into build/<version>/memcached.so; 5.4 keeps
# build/ and ./memcached.so.
#
# luarocks passes LUA, LUA_INCDIR, CFLAGS, LIBFLAG, INST_LIBDIR and
# INST_LUADIR; `make install` copies what `make` built and never rebuilds,
# so the module it installs is the one built with luarocks' flags.

LUA_VERSION ?= 5.4
ifeq ($(LUA_VERSION),luajit)
# OpenResty's LuaJIT (Debian packages luajit2, libluajit2-5.1-dev): Debian's
# own luajit and libluajit-5.1-dev would remove nginx's Lua module.
LUA         ?= luajit
LUA_INCDIR  ?= /usr/include/luajit-2.1
LUA_ABI      = 5.1
LUA_PKGS     = luajit2 libluajit2-5.1-dev
else
LUA         ?= lua$(LUA_VERSION)
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
LUA_ABI      = $(LUA_VERSION)
LUA_PKGS     = lua$(LUA_VERSION) liblua$(LUA_VERSION)$(if $(filter 5.1,$(LUA_VERSION)),-0)-dev
endif
CFLAGS      ?= -O2 -g
LIBFLAG     ?= -shared
PKG_CONFIG  ?= pkg-config
MSGPACK_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags msgpack 2>/dev/null)
MSGPACK_LIBS   ?= $(shell $(PKG_CONFIG) --libs msgpack 2>/dev/null || echo -lmsgpackc)
# OpenSSL: the TLS transport (src/driver/mc_tls.c).
SSL_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags openssl 2>/dev/null)
SSL_LIBS   ?= $(shell $(PKG_CONFIG) --libs openssl 2>/dev/null || echo -lssl -lcrypto)

PREFIX      ?= /usr/local
INST_LIBDIR ?= $(PREFIX)/lib/lua/$(LUA_ABI)
INST_LUADIR ?= $(PREFIX)/share/lua/$(LUA_ABI)

BUSTED      ?= busted
# CI sets WERROR=-Werror: a new warning fails the run.
WERROR     ?=
WARN        = -Wall -Wextra -Wshadow -Wconversion -Wformat=2 -Wmissing-prototypes \
              -std=gnu99 $(WERROR)
# The layers (DESIGN.md): src/core (no I/O, no Lua), src/driver (sockets),
# src/lua (the binding).
INC         = -Isrc/core -Isrc/driver -Isrc/lua
ALL_CFLAGS  = $(CFLAGS) $(WARN) -fPIC -fvisibility=hidden $(INC) -I$(LUA_INCDIR) $(MSGPACK_CFLAGS) $(SSL_CFLAGS)

SRC   = $(wildcard src/*/*.c)
HDR   = $(wildcard src/*/*.h)
# Where objects and the module go; `make asan` uses its own pair so the
# normal build is never mixed with a sanitizer build.
ifeq ($(LUA_VERSION),5.4)
OBJDIR ?= build
MODULE ?= memcached.so
else
OBJDIR ?= build/$(LUA_VERSION)
MODULE ?= $(OBJDIR)/memcached.so
endif
OBJ   = $(SRC:src/%.c=$(OBJDIR)/%.o)
LUA_MODULES = $(wildcard lua/memcached/*.lua)
LUA_RESTY_MODULES = $(wildcard lua/memcached/resty/*.lua)
LUA_ASYNC_MODULES = $(wildcard lua/memcached/async/*.lua)
ASAN_FLAGS = -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined

.PHONY: all deps demo lint test test-all test-5.1 test-5.2 test-5.3 test-5.4 asan fuzz luajit test-luajit \
        test-openresty test-luarocks spec-bins bench install dist clean

all: $(MODULE)

# Objects remember the flags they were built with: other CFLAGS (luarocks',
# a sanitizer's) or another Lua's headers rebuild them.
$(OBJDIR)/.flags: FORCE
	@mkdir -p $(OBJDIR)
	@echo '$(ALL_CFLAGS) $(LIBFLAG) $(MSGPACK_LIBS) $(SSL_LIBS)' | cmp -s - $@ || echo '$(ALL_CFLAGS) $(LIBFLAG) $(MSGPACK_LIBS) $(SSL_LIBS)' > $@

$(OBJDIR)/%.o: src/%.c $(HDR) $(OBJDIR)/.flags
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(MODULE): $(OBJ)
	$(CC) $(LIBFLAG) $(CFLAGS) -o $@ $(OBJ) $(MSGPACK_LIBS) $(SSL_LIBS)

FORCE:

# C programs the specs run: the selector's own tests, and a reference that
# asks Debian's libmemcached where it puts keys.
SPEC_BINS = spec/helpers/ketama_ref.bin spec/helpers/select_dump.bin spec/c/test_select.bin \
            spec/c/test_rules.bin

spec-bins: $(SPEC_BINS)

spec/helpers/ketama_ref.bin: spec/helpers/ketama_ref.c
	$(CC) $(CFLAGS) $(WARN) -o $@ $< -lmemcached

spec/helpers/select_dump.bin: spec/helpers/select_dump.c src/core/mc_select.c src/core/mc_select.h
	$(CC) $(CFLAGS) $(WARN) -Isrc/core -o $@ $< src/core/mc_select.c

spec/c/test_select.bin: spec/c/test_select.c spec/c/check.h src/core/mc_select.c src/core/mc_select.h
	$(CC) $(CFLAGS) $(WARN) -Isrc/core -o $@ $< src/core/mc_select.c

RULES_SRC = src/core/mc_item.c src/core/mc_error.c src/core/mc_abi.c src/core/mc_health.c \
            src/core/mc_feed.c src/core/mc_proto.c src/core/mc_buf.c \
            src/core/mc_place.c src/core/mc_select.c src/core/mc_codec.c \
            src/core/mc_addr.c src/core/mc_ring.c src/core/mc_abi_batch.c src/core/mc_sasl.c \
            src/core/mc_pipe.c
spec/c/test_rules.bin: spec/c/test_rules.c spec/c/check.h $(RULES_SRC) $(wildcard src/core/*.h)
	$(CC) $(CFLAGS) $(WARN) -Isrc/core -o $@ $< $(RULES_SRC)

deps:
	@EXTRA_PKGS="$(LUA_PKGS)" sh scripts/deps.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/demo.sh

# The specs load the module from MEMCACHED_SO_DIR (spec/helper.lua) and run
# under $(LUA); busted and its modules come from Debian's lua-busted, which
# installs them for every Lua (LuaJIT reads the 5.1 tree).
test: deps
	@$(MAKE) --no-print-directory all spec-bins
	MEMCACHED_SO_DIR=$(CURDIR)/$(patsubst %/,%,$(dir $(MODULE))) $(BUSTED) --lua=$(LUA) -o TAP spec

LUA_VERSIONS = 5.1 5.2 5.3 5.4 luajit

test-5.1 test-5.2 test-5.3 test-5.4 test-luajit:
	@$(MAKE) --no-print-directory test LUA_VERSION=$(@:test-%=%)

# Every Lua in turn; one TAP stream per version, and a failure in one does
# not stop the others.
test-all:
	@rc=0; for v in $(LUA_VERSIONS); do \
		echo "==== Lua $$v"; \
		$(MAKE) --no-print-directory test LUA_VERSION=$$v || rc=1; \
	done; exit $$rc

# The same specs with the module built under ASan+UBSan into build/asan.
# LeakSanitizer is on: a leak makes the run exit non-zero. Lua itself is
# clean under it, so nothing is suppressed.
asan: deps
	@$(MAKE) --no-print-directory spec-bins
	@$(MAKE) --no-print-directory OBJDIR=build/asan MODULE=build/asan/memcached.so \
		CFLAGS="$(ASAN_FLAGS)" LIBFLAG="-shared -fsanitize=address,undefined"
	MEMCACHED_SO_DIR=$(CURDIR)/build/asan ASAN_OPTIONS=detect_leaks=1 \
	LD_PRELOAD="$$($(CC) -print-file-name=libasan.so) $$($(CC) -print-file-name=libubsan.so)" \
	$(LUA) $$(command -v $(BUSTED)) -o TAP spec

# The benchmark: this library next to a minimal C client (the limit),
# libmemcached and a plain LuaSocket client, plus msgpack against lua-cjson
# and lua-messagepack; clients and servers pinned to one CPU. See
# bench/README.md; results in bench/results.tsv.
BENCH_PKGS = lua-cjson lua-messagepack util-linux linux-perf libmemcached-dev \
             nginx libnginx-mod-http-lua libluajit2-5.1-dev lua-nginx-memcached curl valgrind

bench:
	@EXTRA_PKGS="$(BENCH_PKGS)" sh scripts/deps.sh
	@$(MAKE) --no-print-directory all
	LUA=$(LUA) CC="$(CC)" bash bench/run.sh

# libFuzzer on the reply reader and the msgpack decoder (spec/fuzz/), with
# ASan+UBSan, FUZZ_SECONDS each (default 60); TAP output.
fuzz:
	@EXTRA_PKGS="clang" sh scripts/deps.sh
	@sh scripts/fuzz.sh

# The same C source for LuaJIT (OpenResty's ABI): build/luajit/memcached.so.
# make test-luajit runs the specs against it under OpenResty's luajit.
luajit:
	@$(MAKE) --no-print-directory all LUA_VERSION=luajit

# The release: version from src/lua/lmc_client.h, rock memcached-engine.
VERSION  := $(shell sed -n 's/^\#define LMC_VERSION "\(.*\)"$$/\1/p' src/lua/lmc_client.h)
DIST      = memcached-engine-$(VERSION)
ROCKSPEC  = rockspec/$(DIST)-1.rockspec

# build/dist/: the source tarball of every tracked file (as in the work
# tree) under $(DIST)/, the release rockspec, and a .src.rock holding both,
# which `luarocks build` installs with no network. Both byte for byte the
# same from the same tree (sorted names, fixed owner, every time stamp the
# last commit's).
dist:
	@test -f $(ROCKSPEC) || { echo "$(ROCKSPEC) is missing" >&2; exit 1; }
	rm -rf build/dist
	mkdir -p build/dist
	t=$$(git log -1 --format=%ct) && \
	git ls-files | LC_ALL=C sort | tar --create --no-recursion --files-from=- \
		--transform='s,^,$(DIST)/,' --owner=0 --group=0 --numeric-owner \
		--mtime=@$$t | gzip -n > build/dist/$(DIST).tar.gz && \
	cp $(ROCKSPEC) build/dist/ && \
	touch -d @$$t build/dist/$(DIST).tar.gz build/dist/$(DIST)-1.rockspec && \
	cd build/dist && TZ=UTC zip -q -X $(DIST)-1.src.rock $(DIST)-1.rockspec $(DIST).tar.gz
	@ls -l build/dist

# luarocks make of the scm rockspec for every Lua, then the release
# rockspec from the unpacked `make dist` tarball and its .src.rock with no
# network; each installed module must load and talk to a memcached. TAP.
# luacheck (Debian lua-check) over the library's Lua, with .luacheckrc's
# rules: unused variables and values, globals, shadowing. TAP.
lint:
	@EXTRA_PKGS="lua-check" sh scripts/deps.sh
	@if out=$$(luacheck --no-color -q lua/ 2>&1); then \
		echo "ok 1 - luacheck lua/: no warnings"; echo "1..1"; \
	else \
		echo "not ok 1 - luacheck lua/"; echo "$$out" | sed 's/^/# /'; echo "1..1"; exit 1; \
	fi

test-luarocks:
	@EXTRA_PKGS="luarocks zip lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev luajit2 libluajit2-5.1-dev" sh scripts/deps.sh
	bash scripts/test-luarocks.sh

# The OpenResty driver (lua/memcached/resty.lua) inside a real nginx with
# ngx_http_lua: installs missing packages (nginx's Lua module brings
# OpenResty's libluajit2, which replaces Debian's luajit packages), builds
# build/luajit/memcached.so and runs spec/nginx/tests.lua; TAP output.
test-openresty:
	bash scripts/test-openresty.sh

# No rebuild here: luarocks runs this step with none of its build flags, and
# a rebuild would install a module for the Makefile's default Lua.
install:
	@test -f $(MODULE) || { echo "$(MODULE) is not built: run make first" >&2; exit 1; }
	mkdir -p $(INST_LIBDIR)
	cp $(MODULE) $(INST_LIBDIR)/memcached.so
	if [ -n "$(LUA_MODULES)" ]; then mkdir -p $(INST_LUADIR)/memcached && cp $(LUA_MODULES) $(INST_LUADIR)/memcached/; fi
	if [ -n "$(LUA_RESTY_MODULES)" ]; then mkdir -p $(INST_LUADIR)/memcached/resty && cp $(LUA_RESTY_MODULES) $(INST_LUADIR)/memcached/resty/; fi
	if [ -n "$(LUA_ASYNC_MODULES)" ]; then mkdir -p $(INST_LUADIR)/memcached/async && cp $(LUA_ASYNC_MODULES) $(INST_LUADIR)/memcached/async/; fi

clean:
	rm -rf build memcached.so $(SPEC_BINS) bench/*.bin bench/*.so
