rockspec_format = "3.0"
package = "memcached-engine"
version = "0.1.0-1"
-- the tarball `make dist` writes (memcached-engine-0.1.0.tar.gz)
source = {
   url = "https://github.com/lua-memcached/lua-memcached/releases/download/v0.1.0/memcached-engine-0.1.0.tar.gz",
   dir = "memcached-engine-0.1.0",
}
description = {
   summary = "memcached client with a C engine: binary protocol, msgpack values, ketama",
   detailed = [[
A memcached client for Lua 5.1, 5.2, 5.3, 5.4, LuaJIT and OpenResty. The
engine is C: the binary protocol, pools of connections per server,
dead-server handling and key placement compatible with libmemcached
(ketama), gomemcache (crc32 modulo) and gomemcached. Values are msgpack
with flags = 1, so they can be shared with Go services using gomemcached.
The rock installs the module `memcached` (and `memcached.resty` for
OpenResty).
]],
   homepage = "https://github.com/lua-memcached/lua-memcached",
   license = "MIT",
}
-- ppoll, CLOCK_MONOTONIC_COARSE, getrandom: Linux only
supported_platforms = { "linux" }
dependencies = {
   "lua >= 5.1, < 5.5",
}
external_dependencies = {
   MSGPACK = {
      header = "msgpack.h",
      library = "msgpackc",
   },
   OPENSSL = {
      header = "openssl/ssl.h",
      library = "ssl",
   },
}
build = {
   type = "make",
   -- built once, with luarocks' flags, into a directory of its own;
   -- `make install` copies that module and never rebuilds
   build_target = "all",
   build_variables = {
      LUA = "$(LUA)",
      LUA_INCDIR = "$(LUA_INCDIR)",
      CFLAGS = "$(CFLAGS)",
      LIBFLAG = "$(LIBFLAG)",
      MSGPACK_CFLAGS = "-I$(MSGPACK_INCDIR)",
      MSGPACK_LIBS = "-L$(MSGPACK_LIBDIR) -lmsgpackc",
      SSL_CFLAGS = "-I$(OPENSSL_INCDIR)",
      SSL_LIBS = "-L$(OPENSSL_LIBDIR) -lssl -lcrypto",
      OBJDIR = "build/luarocks",
      MODULE = "build/luarocks/memcached.so",
   },
   install_target = "install",
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
      MODULE = "build/luarocks/memcached.so",
   },
}
