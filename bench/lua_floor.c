/*
 * The floor for any Lua client: a Lua C module that does only what the C
 * limit client does (one write of a prebuilt request, one read) and hands
 * the value back as a new Lua string. No argument checks, no errors, no
 * pools, no msgpack. Whatever it costs over bench/limit.c is the price of
 * being called from Lua at all; whatever this library costs over it is our
 * own path.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lauxlib.h>
#include <lua.h>

static unsigned char rbuf[1 << 16];

static int l_connect(lua_State *L)
{
    const char *addr = luaL_checkstring(L, 1);
    const char *colon = strrchr(addr, ':');
    char host[64];
    struct sockaddr_in sa;
    int one = 1, fd;
    if (!colon || (size_t)(colon - addr) >= sizeof(host))
        return luaL_error(L, "bad address");
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(colon + 1));
    inet_pton(AF_INET, host, &sa.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
        return luaL_error(L, "connect failed");
    lua_pushinteger(L, fd);
    return 1;
}

/* request(fd, bytes): writes a prebuilt request, reads one reply, returns
 * its value as a new string (GET) or nothing. */
static int l_request(lua_State *L)
{
    int fd = (int)lua_tointeger(L, 1);
    size_t n, have = 0;
    const char *req = lua_tolstring(L, 2, &n);
    unsigned body, ext, key;
    if (write(fd, req, n) != (ssize_t)n)
        return luaL_error(L, "write failed");
    for (;;) {
        ssize_t r = read(fd, rbuf + have, sizeof(rbuf) - have);
        if (r <= 0)
            return luaL_error(L, "read failed");
        have += (size_t)r;
        if (have >= 24) {
            body = ((unsigned)rbuf[8] << 24) | ((unsigned)rbuf[9] << 16) |
                   ((unsigned)rbuf[10] << 8) | rbuf[11];
            if (have >= 24 + body)
                break;
        }
    }
    ext = rbuf[4];
    key = ((unsigned)rbuf[2] << 8) | rbuf[3];
    if (body > ext + key) {
        lua_pushlstring(L, (const char *)rbuf + 24 + ext + key, body - ext - key);
        return 1;
    }
    return 0;
}

/* multi(fd, bytes, keys): writes a prebuilt GETKQ x n + NOOP batch, reads
 * replies up to the NOOP and returns {key = value}, the key being the
 * caller's own string keys[opaque + 1]. The least any Lua get_multi does:
 * a new string per value and a table, nothing checked. */
static int l_multi(lua_State *L)
{
    int fd = (int)lua_tointeger(L, 1);
    size_t n, have = 0, pos = 0;
    const char *req = lua_tolstring(L, 2, &n);
    lua_createtable(L, 0, (int)lua_rawlen(L, 3));
    if (write(fd, req, n) != (ssize_t)n)
        return luaL_error(L, "write failed");
    for (;;) {
        while (have - pos >= 24) {
            const unsigned char *h = rbuf + pos;
            size_t body = ((size_t)h[8] << 24) | ((size_t)h[9] << 16) |
                          ((size_t)h[10] << 8) | h[11];
            size_t ext = h[4], key = ((size_t)h[2] << 8) | h[3];
            lua_Integer opaque = ((lua_Integer)h[12] << 24) |
                                 ((lua_Integer)h[13] << 16) |
                                 ((lua_Integer)h[14] << 8) | h[15];
            if (have - pos < 24 + body)
                break;
            pos += 24 + body;
            if (h[1] == 0x0a)
                return 1;
            lua_rawgeti(L, 3, opaque + 1);
            lua_pushlstring(L, (const char *)h + 24 + ext + key,
                            body - ext - key);
            lua_rawset(L, 4);
        }
        if (pos == have)
            have = pos = 0;
        else if (pos > 0) {
            memmove(rbuf, rbuf + pos, have - pos);
            have -= pos;
            pos = 0;
        }
        ssize_t r = read(fd, rbuf + have, sizeof(rbuf) - have);
        if (r <= 0)
            return luaL_error(L, "read failed");
        have += (size_t)r;
    }
}

int luaopen_lua_floor(lua_State *L)
{
    lua_newtable(L);
    lua_pushcfunction(L, l_connect);
    lua_setfield(L, -2, "connect");
    lua_pushcfunction(L, l_request);
    lua_setfield(L, -2, "request");
    lua_pushcfunction(L, l_multi);
    lua_setfield(L, -2, "multi");
    return 1;
}
