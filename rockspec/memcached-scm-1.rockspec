rockspec_format = "3.0"
package = "memcached"
version = "scm-1"
source = {
   url = "git+https://github.com/lua-memcached/lua-memcached.git",
   branch = "main",
}
description = {
   summary = "memcached client with a C engine: binary protocol, msgpack values, ketama",
   detailed = [[
A memcached client for Lua 5.4 and OpenResty. The engine is C: the binary
protocol, pools of connections per server, dead-server handling and key
placement compatible with libmemcached (ketama), gomemcache (crc32 modulo)
and gomemcached. Values are msgpack with flags = 1, so they can be shared
with Go services using gomemcached.
]],
   homepage = "https://github.com/lua-memcached/lua-memcached",
   license = "MIT",
}
dependencies = {
   "lua >= 5.1",
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
   -- the Makefile rebuilds objects whose flags differ from luarocks'
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
   },
   install_target = "install",
   install_variables = {
      INST_LIBDIR = "$(LIBDIR)",
      INST_LUADIR = "$(LUADIR)",
   },
}
