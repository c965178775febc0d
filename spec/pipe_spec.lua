-- memcached.core.pipe from Lua (the async driver's connections): replies
-- written into their slots, a STAT entry handler that raises or uses the
-- pipe, and a pipe dropped with requests in flight. The server is a
-- LuaSocket peer that sends bytes written here.
local helper = require "spec.helper"
local socket = require "socket"
local core = require "memcached.core"
local memcached = require "memcached"
local OP = memcached.codec.op

local function be(n, width)
  local t = {}
  for i = width, 1, -1 do
    t[i] = string.char(n % 256)
    n = math.floor(n / 256)
  end
  return table.concat(t)
end

-- A binary reply: op, opaque, key, extras, value (status 0, cas 0).
local function reply(op, opaque, key, extras, value)
  return "\129" .. string.char(op) .. be(#key, 2) .. string.char(#extras) .. "\0" .. be(0, 2)
    .. be(#key + #extras + #value, 4) .. be(opaque, 4) .. be(0, 8) .. extras .. key .. value
end
local function hit(opaque, key, value) return reply(OP.GETK, opaque, key, "\0\0\0\0", value) end
local function stat(opaque, key, value) return reply(OP.STAT, opaque, key, "", value) end

-- A connected descriptor (memcached.core) and the peer's LuaSocket.
local function pair()
  local srv = assert(socket.bind("127.0.0.1", 0))
  local _, port = srv:getsockname()
  local fd = assert(core.connect("127.0.0.1:" .. port))
  srv:settimeout(2)
  local peer = assert(srv:accept())
  srv:close()
  return fd, peer
end

-- p:read until something comes (or 2 s pass).
local function read(p, fd, done)
  local deadline = socket.gettime() + 2
  while true do
    local n, e, msg = p:read(fd, done)
    if n ~= false or socket.gettime() > deadline then return n, e, msg end
    socket.sleep(0.002)
  end
end

local function slot(name, stream)
  return { name = name, done = false, queued = true, stream = stream }
end

describe("memcached.core.pipe", function()
  local fd, peer
  before_each(function() fd, peer = pair() end)
  after_each(function()
    core.close(fd)
    peer:close()
  end)

  it("hands every reply of one read to its slot, in order, and lists them", function()
    local p = core.pipe(1024 * 1024)
    local a, b = slot("a"), slot("b")
    p:get(a, OP.GETK, 1, "ka")
    p:get(b, OP.GETK, 2, "kb")
    assert.is_true(p:flush(fd))
    assert.are.equal(2, p:count())
    peer:send(hit(1, "ka", "va") .. hit(2, "kb", "vb"))
    local done = {}
    local n = read(p, fd, done)
    assert.are.equal(2, n)
    assert.are.equal(a, done[1])
    assert.are.equal(b, done[2])
    assert.are.same({ "va", "vb", 0, 0, true, true, false, false },
      { a.value, b.value, a.err, b.err, a.done, b.done, a.queued, b.queued })
    assert.are.equal(0, p:count())
    assert.is_true(p:clean())
  end)

  it("a reply whose caller gave up is dropped, not listed", function()
    local p = core.pipe(1024 * 1024)
    local a, b = slot("a"), slot("b")
    p:get(a, OP.GETK, 1, "ka")
    p:get(b, OP.GETK, 2, "kb")
    assert.is_true(p:flush(fd))
    a.done = true -- timed out
    peer:send(hit(1, "ka", "va") .. hit(2, "kb", "vb"))
    local done = {}
    assert.are.equal(1, read(p, fd, done))
    assert.are.equal(b, done[1])
    assert.is_nil(done[2])
    assert.is_nil(a.value)
    assert.is_false(a.queued)
  end)

  it("a STAT entry handler that raises fails the pipe; replies before it are still listed", function()
    local p = core.pipe(1024 * 1024)
    local a = slot("a")
    local s = slot("s", function() error("boom") end)
    local b = slot("b")
    p:get(a, OP.GETK, 1, "ka")
    p:push(s, 4, OP.STAT, 2, nil, true, core.enc(OP.STAT, 2))
    p:get(b, OP.GETK, 3, "kb")
    assert.is_true(p:flush(fd))
    peer:send(hit(1, "ka", "va") .. stat(2, "pid", "1") .. stat(2, "", "") .. hit(3, "kb", "vb"))
    local done = {}
    local n, err, msg = read(p, fd, done)
    assert.are.equal(1, n)
    assert.are.equal(a, done[1])
    assert.are.equal("va", a.value)
    assert.are.equal(memcached.ERR_PROTOCOL, err)
    assert.truthy(msg:find("handler failed: .*boom"), msg)
    local list = {}
    assert.are.equal(2, p:drain(list))
    assert.are.same({ s, b }, list)
  end)

  it("a STAT entry handler that uses the pipe fails it, and hands no slot twice", function()
    local p = core.pipe(1024 * 1024)
    local s = slot("s", function() p:drain({}) return false end)
    p:push(s, 4, OP.STAT, 1, nil, true, core.enc(OP.STAT, 1))
    assert.is_true(p:flush(fd))
    peer:send(stat(1, "pid", "1"))
    local n, err, msg = read(p, fd, {})
    assert.are.same({ 0, memcached.ERR_PROTOCOL }, { n, err })
    assert.truthy(msg:find("used the pipe"), msg)
    -- the refs are whole: two new requests get their own replies
    local x, y = slot("x"), slot("y")
    p:get(x, OP.GETK, 5, "kx")
    p:get(y, OP.GETK, 6, "ky")
    assert.is_true(p:flush(fd))
    peer:send(hit(5, "kx", "vx") .. hit(6, "ky", "vy"))
    local done = {}
    assert.are.equal(2, read(p, fd, done))
    assert.are.same({ "vx", "vy" }, { x.value, y.value })
  end)

  it("a pipe dropped with requests in flight is collected with its slots and their coroutines", function()
    local weak = setmetatable({}, { __mode = "v" })
    for i = 1, 20 do
      local p = core.pipe(1024)
      local co = coroutine.create(function()
        local s = slot("s" .. i)
        s.co = coroutine.running()
        s.p = p -- the slot reaches the pipe back, as a client's would
        p:get(s, OP.GETK, i, "k")
        coroutine.yield()
      end)
      assert(coroutine.resume(co))
      weak[#weak + 1] = p
      weak[#weak + 1] = co
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(0, #weak + (next(weak) and 1 or 0))
  end)
end)

describe("an async client dropped with a request in flight", function()
  local srv
  setup(function() srv = helper.start_memcached() end)
  teardown(function() srv.sigcont() srv.stop() end)

  it("is collected and its descriptor closed", function()
    local f = io.open("/proc/self/stat")
    local pid = f:read("*l"):match("^(%d+)")
    f:close()
    -- sockets only: popen's own pipe may show both ends while ls runs
    local function nfds()
      local n, ls = 0, io.popen("ls -l /proc/" .. pid .. "/fd 2>/dev/null")
      for line in ls:lines() do
        if line:find("-> socket:", 1, true) then n = n + 1 end
      end
      ls:close()
      return n
    end
    srv.sigstop()
    local before = nfds()
    local weak = setmetatable({}, { __mode = "v" })
    for i = 1, 10 do
      -- (no luassert here: it may keep what it was given)
      local mc = memcached.new { servers = { srv.addr }, timeout = 5,
        wait = function() coroutine.yield() end }
      local co = coroutine.create(function() return mc:get("k") end)
      local ok, err = coroutine.resume(co) -- parked in get, its request in flight
      if not ok then error(err) end
      weak[i] = mc
    end
    -- (Lua 5.1 and LuaJIT finalize the pipes' user values a cycle late)
    for _ = 1, 6 do collectgarbage() end
    srv.sigcont()
    local alive = 0
    for i = 1, 10 do if weak[i] then alive = alive + 1 end end
    assert.are.equal(0, alive)
    -- the client's __gc closes them: tables have none under 5.1 and LuaJIT
    if _VERSION ~= "Lua 5.1" then
      assert.is_true(nfds() <= before, "descriptors left open")
    end
  end)
end)
