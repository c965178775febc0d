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
local function read(p, fd, done, parked)
  local deadline = socket.gettime() + 2
  while true do
    local n, e, msg = p:read(fd, done, parked)
    if n ~= false or socket.gettime() > deadline then return n, e, msg end
    socket.sleep(0.002)
  end
end

local function slot(name, stream)
  return { name = name, done = false, queued = true, stream = stream }
end

-- A pipe with two keyed gets sent on fd: "ka" (opaque 1, slot a) and "kb"
-- (opaque 2, slot b). Returns p, a, b.
local function two_gets(fd)
  local p = core.pipe(1024 * 1024)
  local a, b = slot("a"), slot("b")
  p:get(a, OP.GETK, 1, "ka")
  p:get(b, OP.GETK, 2, "kb")
  assert.is_true(p:flush(fd))
  return p, a, b
end

describe("memcached.core.pipe", function()
  local fd, peer
  before_each(function() fd, peer = pair() end)
  after_each(function()
    core.close(fd)
    peer:close()
  end)

  it("hands every reply of one read to its slot, in order, and lists them", function()
    local p, a, b = two_gets(fd)
    assert.are.equal(2, p:count())
    assert.are.same({ a, b }, { p:slot(1), p:slot(2) })
    assert.is_nil(p:slot(3))
    assert.is_nil(p:slot(0))
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
    local p, a, b = two_gets(fd)
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

  it("p:read with a parked table lists the parked callers' coroutines and unparks them", function()
    local p = core.pipe(1024 * 1024)
    local parked = {}
    local function f() end
    local co1, co2, co3 = coroutine.create(f), coroutine.create(f), coroutine.create(f)
    local a, b, c = slot("a"), slot("b"), slot("c")
    a.co, b.co, c.co = co1, co2, co3
    a.parked = true      -- parked by get's own path
    parked[co2] = true   -- parked by conn.park
    p:get(a, OP.GETK, 1, "ka")
    p:get(b, OP.GETK, 2, "kb")
    p:get(c, OP.GETK, 3, "kc") -- its caller is not parked: answered, not listed
    assert.is_true(p:unsent())
    assert.is_true(p:flush(fd))
    assert.is_false(p:unsent())
    peer:send(hit(1, "ka", "va") .. hit(2, "kb", "vb") .. hit(3, "kc", "vc"))
    local done = {}
    assert.are.equal(2, read(p, fd, done, parked))
    assert.are.same({ co1, co2 }, { done[1], done[2] })
    assert.is_false(a.parked)
    assert.is_nil(parked[co2])
    assert.are.same({ "va", "vb", "vc", true, true, true }, { a.value, b.value, c.value, a.done, b.done, c.done })
  end)
end)

describe("memcached.core.lanes", function()
  local fd, peer, ring, l
  before_each(function()
    fd, peer = pair()
    ring = assert(core.ring_new(1, { "127.0.0.1:1", "127.0.0.1:2" }, { 1, 1 }, 1, 60, true))
    l = core.lanes(ring, 5, true, 7)
  end)
  after_each(function()
    core.close(fd)
    peer:close()
  end)

  -- a key placed on server srv by the ring
  local function key_on(srv)
    for i = 1, 1000 do
      local k = "lane_key_" .. i
      if ring:route(k) == srv then return k end
    end
  end

  it("queues a keyed get on the lane of the key's server, and on nothing else", function()
    local p = core.pipe(1024 * 1024)
    local c = { p = p }
    local k0, k1 = key_on(0), key_on(1)
    local s = slot("s")
    assert.is_nil(l:get(k0, s))            -- no lane yet
    local other = assert(core.ring_new(1, { "127.0.0.1:1", "127.0.0.1:2" }, { 1, 1 }, 1, 60, true))
    assert.is_false(l:set(0, c, other))    -- an index of another ring (replaced since)
    assert.is_nil(l:get(k0, s))
    assert.is_true(l:set(0, c, ring))
    assert.is_nil(l:get(k0, s))            -- its pipe takes none (no reader at work)
    local now = core.now()
    p:lane(now + 5)
    assert.is_nil(l:get(k1, s))            -- server 1 has no lane
    assert.is_nil(l:get(42, s))            -- a key not a string
    assert.is_nil(l:get("bad key", s))     -- a malformed key
    assert.are.equal(0, p:count())
    local got, deadline, srv = l:get(k0, s)
    assert.are.equal(c, got)
    assert.are.equal(0, srv)
    assert.is_true(deadline >= now + 5 and deadline < core.now() + 5.5)
    assert.are.equal(1, p:count())
    assert.are.equal(8, l:opaque())        -- the get took 7
    -- what went out is that get, and its reply comes to s
    assert.is_true(p:flush(fd))
    peer:settimeout(2)
    local head = assert(peer:receive(24))
    assert.are.equal(OP.GETK, head:byte(2))
    assert.are.equal(be(7, 4), head:sub(13, 16))
    assert.are.equal(k0, assert(peer:receive(#k0)))
    peer:send(hit(7, k0, "v0"))
    local done = {}
    assert.are.equal(1, read(p, fd, done))
    assert.are.same({ "v0", true }, { s.value, s.done })
    p:lane(false)
    assert.is_nil(l:get(k0, s))
    p:lane(core.now() + 60)                -- a reader whose deadline is later
    assert.is_nil(l:get(k0, s))
    p:lane(core.now())
    l:off()
    assert.is_nil(l:get(k0, s))
    assert.is_false(l:on())
    assert.are.equal(0, p:count())
  end)

  it("gives l:get bound to l as a function (getter), which checks its arguments alike", function()
    local p = core.pipe(1024)
    local c = { p = p }
    local get = l:getter()
    assert.is_function(get)
    local k0 = key_on(0)
    assert.is_nil(get(k0, slot("s")))       -- no lane yet
    l:set(0, c, ring)
    p:lane(core.now())
    local got, deadline, srv = get(k0, slot("s"))
    assert.are.equal(c, got)
    assert.are.equal(0, srv)
    assert.is_number(deadline)
    assert.are.equal(1, p:count())
    assert.are.equal(8, l:opaque())         -- the same counter as l:get's
    assert.is_nil(get(42, slot("s")))
    assert.has_error(function() get(k0, "not a slot") end)
    assert.has_error(function() l.getter({}) end)
    l:off()
    assert.is_nil(get(k0, slot("s")))
    assert.are.equal(1, p:count())
  end)

  it("takes no get for a dead server, nor on a freed pipe", function()
    local p = core.pipe(1024)
    l:set(0, { p = p }, ring)
    p:lane(core.now())
    local k0 = key_on(0)
    ring:failed(0, core.now(), "down") -- failure_limit 1: dead
    assert.is_nil(l:get(k0, slot("s")))
    ring:ok(0)
    assert.is_table(l:get(k0, slot("s")))
    p:free()
    assert.is_nil(l:get(k0, slot("s")))
  end)

  it("counts opaques up past 2^32 - 1 to 1, never 0", function()
    local w = core.lanes(ring, 1, false, 4294967295)
    assert.are.same({ 4294967295, 1, 2 }, { w:opaque(), w:opaque(), w:opaque() })
    assert.is_false(w:on())
    assert.is_false(w:set(2, { p = core.pipe(1024) }, ring)) -- (a custom selector's, interned later)
    assert.is_true(w:set(1, { p = core.pipe(1024) }, ring))
    assert.has_error(function() w:set(0, {}, ring) end)
  end)
end)

describe("an async client dropped with a request in flight", function()
  local srv
  setup(function() srv = helper.start_memcached() end)
  teardown(function() srv.sigcont() srv.stop() end)

  it("is collected and its descriptor closed by the next connection opened", function()
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
    -- the client's __gc leaves them to the next connection opened (no
    -- hook may run in a finalizer): tables have none under 5.1 and LuaJIT
    if _VERSION ~= "Lua 5.1" then
      assert.is_true(nfds() >= before + 10, "closed with no cancel hook")
      local mc = memcached.new { servers = { srv.addr }, timeout = 5, wait = function() end }
      assert.truthy(mc:set_raw_data("gc:reopen", "v")) -- opens one
      assert.are.equal("v", mc:get("gc:reopen"))
      mc:close()
      assert.is_true(nfds() <= before, "descriptors left open")
    end
  end)
end)
