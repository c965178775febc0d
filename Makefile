# memcached for Lua: a binary-protocol memcached client with a C engine.
#
#   make            build memcached.so for Lua 5.4
#   make demo       install missing Debian packages, build, run the example
#   make test       install missing Debian packages, build, run the specs
#   make asan       the specs again under AddressSanitizer + UBSan
#
# luarocks passes LUA_INCDIR, CFLAGS, LIBFLAG, INST_LIBDIR and INST_LUADIR.

LUA_VERSION ?= 5.4
LUA         ?= lua$(LUA_VERSION)
LUA_INCDIR  ?= /usr/include/lua$(LUA_VERSION)
CFLAGS      ?= -O2 -g
LIBFLAG     ?= -shared
PKG_CONFIG  ?= pkg-config
MSGPACK_CFLAGS ?= $(shell $(PKG_CONFIG) --cflags msgpack 2>/dev/null)
MSGPACK_LIBS   ?= $(shell $(PKG_CONFIG) --libs msgpack 2>/dev/null || echo -lmsgpackc)

PREFIX      ?= /usr/local
INST_LIBDIR ?= $(PREFIX)/lib/lua/$(LUA_VERSION)
INST_LUADIR ?= $(PREFIX)/share/lua/$(LUA_VERSION)

BUSTED      ?= busted
WARN        = -Wall -Wextra -std=gnu99
ALL_CFLAGS  = $(CFLAGS) $(WARN) -fPIC -fvisibility=hidden -I$(LUA_INCDIR) $(MSGPACK_CFLAGS)

SRC   = $(wildcard src/*.c)
HDR   = $(wildcard src/*.h)
OBJ   = $(SRC:src/%.c=build/%.o)
LUA_MODULES = $(wildcard lua/memcached/*.lua)

.PHONY: all deps demo test asan spec-bins install clean

all: memcached.so

build/%.o: src/%.c $(HDR)
	@mkdir -p build
	$(CC) $(ALL_CFLAGS) -c $< -o $@

memcached.so: $(OBJ)
	$(CC) $(LIBFLAG) $(CFLAGS) -o $@ $(OBJ) $(MSGPACK_LIBS)

# C programs the specs run: the selector's own tests, and a reference that
# asks Debian's libmemcached where it puts keys.
SPEC_BINS = spec/helpers/ketama_ref.bin spec/helpers/select_dump.bin spec/c/test_select.bin

spec-bins: $(SPEC_BINS)

spec/helpers/ketama_ref.bin: spec/helpers/ketama_ref.c
	$(CC) $(CFLAGS) $(WARN) -o $@ $< -lmemcached

spec/helpers/select_dump.bin: spec/helpers/select_dump.c src/mc_select.c src/mc_select.h
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ $< src/mc_select.c

spec/c/test_select.bin: spec/c/test_select.c src/mc_select.c src/mc_select.h
	$(CC) $(CFLAGS) $(WARN) -Isrc -o $@ $< src/mc_select.c

deps:
	@sh scripts/deps.sh

demo: deps
	@$(MAKE) --no-print-directory all
	@sh scripts/demo.sh

test: deps
	@$(MAKE) --no-print-directory all spec-bins
	$(BUSTED) --lua=$(LUA) -o TAP spec

# The same specs with the module built under ASan+UBSan. Leak checking is
# on; Lua itself is clean under LeakSanitizer.
asan: deps
	@$(MAKE) --no-print-directory clean
	@$(MAKE) --no-print-directory spec-bins
	@$(MAKE) --no-print-directory all CFLAGS="-O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=undefined" LIBFLAG="-shared -fsanitize=address,undefined"
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
	LSAN_OPTIONS=suppressions=$(CURDIR)/spec/lsan.supp:print_suppressions=0 \
	LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	$(LUA) /usr/bin/busted -o TAP spec
	@$(MAKE) --no-print-directory clean

install: memcached.so
	mkdir -p $(INST_LIBDIR)
	cp memcached.so $(INST_LIBDIR)/
	if [ -n "$(LUA_MODULES)" ]; then mkdir -p $(INST_LUADIR)/memcached && cp $(LUA_MODULES) $(INST_LUADIR)/memcached/; fi

clean:
	rm -rf build memcached.so
