-- memcached.async: the client for coroutines under any event loop.
--
-- memcached.new{..., wait = fn} (and memcached.cqueues / memcached.luv,
-- which supply the hooks) makes one of these: the C client's methods,
-- arguments, returns and ERR_* values, but whenever it would block it
-- calls the loop's hooks (memcached.async.conn) instead, which may yield
-- the running coroutine. Many coroutines may share one client: requests
-- they have in flight to one server are pipelined on its connections
-- (up to max_conns of them). Every rule is the C core's, through
-- memcached.core: framing, the judgement of replies, placement and server
-- health (mc_ring), the key rule, the lock marker, counters, addresses.
-- Host names are resolved in new, before any loop needs to run.
local core = require "memcached.core"
local memcached = require "memcached"
local conn = require "memcached.async.conn"

local codec = memcached.codec
local OP, ST = codec.op, codec.status
local NO_CREATE = codec.ARITH_NO_CREATE
local status_str, mp_encode = codec.status_str, memcached.encode
local enc, now, errs, key_ok = core.enc, core.now, core.errs, core.key_ok
local type, error, tostring, pairs, ipairs, pcall = type, error, tostring, pairs, ipairs, pcall
local floor, sub, find, setmetatable = math.floor, string.sub, string.find, setmetatable
local E = conn.E
local server_of, submit, await = conn.server_of, conn.submit, conn.await
local routed = conn.routed

local _M = { _VERSION = "0.1" }
for k, v in pairs(E) do _M[k] = v end
local mt = { __index = _M, __name = "memcached.async" }

local OP_GETK, OP_GATK = OP.GETK, OP.GATK
local running = coroutine.running
-- a reusable slot per coroutine (call). Weak both ways: Lua 5.1 and
-- LuaJIT have no ephemerons, so a slot held here would keep its
-- coroutine (s.co) alive for good. A slot in flight is held by its
-- connection's pipe, and through s.co it holds the parked coroutine (luv
-- holds nothing for it); an idle one may go at any collection, and the
-- next call makes another.
local slot_of = setmetatable({}, { __mode = "kv" })
local E_KEY = E.ERR_MALFORMED_KEY
local E_CLIENT_CLOSED, E_AUTH = E.ERR_CLIENT_CLOSED, E.ERR_AUTH
local A = require "memcached.args"
local CLOSED_DETAIL, KEY_DETAIL = A.CLOSED_DETAIL, A.KEY_DETAIL
local U32 = 4294967295
local K_GET, K_SET, K_ADD, K_REPLACE, K_OTHER = 0, 1, 2, 3, 4 -- enum mc_op_kind
local err_num = {}
for i, s in ipairs(errs) do err_num[s] = i end
local AUTH = err_num[E_AUTH]

-- ---- arguments (as the C client checks them) ----

local opt_uint = A.opt_uint

local function opt_number(opts, name, def, lo, hi)
  local v = opts[name]
  if v == nil then return def end
  if type(v) ~= "number" or v < lo or v > hi then
    error("option '" .. name .. "' must be a number " .. lo .. ".." .. hi, 4)
  end
  return v
end

local function opt_int(opts, name, def, lo, hi)
  local v = opts[name]
  if v == nil then return def end
  if type(v) ~= "number" or v ~= floor(v) or v < lo or v > hi then
    error("option '" .. name .. "' must be an integer " .. lo .. ".." .. hi, 4)
  end
  return floor(v)
end

local function opt_fn(opts, name)
  local v = opts[name]
  if v ~= nil and type(v) ~= "function" then
    error("option '" .. name .. "' must be a function", 4)
  end
  return v
end

-- ---- servers: the core's ring ----

local server_list = A.server_list

-- Where the driver dials each address: a host name resolved once, here
-- (new and set_servers run before the loop needs to), as a numeric
-- address; numeric addresses and unix sockets as they are. nil, or err,
-- detail.
local function resolve(self, list)
  for _, e in ipairs(list) do
    local addr = e[1]
    if not self.dial[addr] then
      local kind, host, port = core.addr_split(addr)
      if not kind then return E.ERR_BAD_SERVER, host end
      if kind == 0 and not find(host, "^%d+%.%d+%.%d+%.%d+$") and not find(host, ":", 1, true) then
        local ip, err = core.resolve(host)
        if not ip then return E.ERR_BAD_SERVER, err end
        self.dial[addr] = (find(ip, ":", 1, true) and "[" .. ip .. "]" or ip) .. ":" .. port
      else
        self.dial[addr] = addr
      end
    end
  end
end

local SELECTORS = { modulo = 0, ketama = 1, gomemcached = 2 }

local function new_ring(self, list)
  local addrs, weights = {}, {}
  for i, e in ipairs(list) do addrs[i], weights[i] = e[1], e[2] end
  local ring, err = core.ring_new(self.selector, addrs, weights, self.failure_limit,
    self.retry_timeout, self.eject)
  if not ring then return nil, E.ERR_BAD_SERVER, err end
  return ring
end

local function event(self, srv, why, state)
  local fn = self.callback
  if fn then pcall(fn, self.ring:name(srv), why, state) end
end

local function server_name(self, srv)
  local n = self.names[srv]
  if not n then
    n = self.ring:name(srv)
    self.names[srv] = n
  end
  return n
end

-- The address of srv, an index of ring (the ring a call placed its key
-- on: set_servers may have replaced it while the call waited).
local function name_in(self, ring, srv)
  if ring == self.ring then return self.names[srv] or server_name(self, srv) end
  return ring:name(srv)
end

-- The health of srv is counted in ring, the ring srv is an index of; a
-- list replaced since (set_servers while the call waited) counts nothing
-- of it: its index may be another server's now, or none.
-- self.sick[srv]: the ring has counted a failure of srv since its last
-- success, so a success must be reported (ring:ok); a healthy server's
-- success costs no call into the ring.
local function server_ok(self, srv, ring)
  if ring ~= self.ring then return end
  local sick = self.sick
  if not sick[srv] then return end
  sick[srv] = nil
  if self.ring:ok(srv) then event(self, srv, "responding again", "up") end
end

local function ring_failed(self, srv, why, ring)
  if ring ~= self.ring then return end
  self.sick[srv] = true
  if self.ring:failed(srv, now(), why) then event(self, srv, why, "down") end
end

-- What a failure costs the server, as the core rules (health_verdict).
local function server_failed(self, srv, err, detail, ring)
  local verdict = core.health_verdict(err_num[err] or 0)
  if verdict == 1 then return server_ok(self, srv, ring) end
  if verdict == 2 then return end
  ring_failed(self, srv, tostring(err) .. ": " .. tostring(detail), ring)
end

-- Probes a dead server whose retry time came (claimed by this caller): a
-- connect and a NOOP within probe_timeout on a connection of its own,
-- judged by the core; never the caller's request. True when it answered.
local function probe(self, srv, ring)
  local addr = name_in(self, ring, srv)
  local sv = server_of(self, addr)
  local deadline = now() + self.probe_timeout
  local opaque = core.random32()
  local s = { kind = K_OTHER, op = OP.NOOP, opaque = opaque }
  local c, err, detail = conn.open(self, sv)
  if c then
    c.exclusive = true
    c.cdeadline = deadline
    local ok = true
    if c.connecting then ok, err, detail = conn.finish_connect(self, c, deadline) end
    if ok then
      c.exclusive = nil
      s.co, s.deadline = coroutine.running(), deadline
      c.p:push(s, K_OTHER, OP.NOOP, opaque, nil, false, enc(OP.NOOP, opaque))
      c.n = 1
      c.reader = s
      conn.read_for(self, c, s)
      c.reader = nil
      if s.done and not s.failed then
        server_ok(self, srv, ring)
        return true
      end
      err, detail = s.err, s.detail
    else
      conn.conn_fail(self, c, err, detail)
    end
  end
  ring_failed(self, srv, "probe: " .. tostring(err) .. ": " .. tostring(detail), ring)
  return false
end

local function dead_detail(self, srv, ring)
  local _, _, last = ring:alive(srv)
  return name_in(self, ring, srv) .. ": marked dead after: " .. tostring(last)
end

local function no_server(self, e, srv, ring)
  local err = errs[e]
  if err == E.ERR_SERVER_DEAD then return nil, err, dead_detail(self, srv, ring) end
  if ring:nservers() == 0 then return nil, err, "no servers configured" end
  return nil, err, "no servers available: all are marked dead"
end

local custom_addr = A.custom_addr

local function place_custom(self, key)
  local ring = self.ring
  local ok, addr = custom_addr(self.custom, key)
  if not ok or type(addr) ~= "string" then
    return nil, E.ERR_NO_SERVERS, "selector gave no server for key '" .. sub(key, 1, 60) .. "': "
      .. tostring(addr or "no address")
  end
  local srv, err = ring:intern(addr)
  if not srv then return nil, E.ERR_BAD_SERVER, err end
  local derr, ddetail = resolve(self, { { addr } })
  if derr then return nil, derr, ddetail end
  local usable, due = ring:usable(srv, now())
  if usable or (due and probe(self, srv, ring)) then return srv, ring end
  return nil, E.ERR_SERVER_DEAD, dead_detail(self, srv, ring)
end

-- Where key goes, dead servers considered: its server, the time and the
-- ring the server is an index of (a probe or a custom selector may wait,
-- and set_servers replace the ring meanwhile); or nil, err, detail. A
-- dead server whose retry time came is probed first. t: now, when the
-- caller has it; after a probe or a custom selector (either may have
-- waited) the server comes with the time then, else with t.
local function place(self, key, t)
  if self.custom then
    local srv, ring_or_err, detail = place_custom(self, key)
    if srv then return srv, now(), ring_or_err end
    return nil, ring_or_err, detail
  end
  local ring = self.ring
  t = t or now()
  local srv, due, e = ring:pick(key, t)
  if srv >= 0 and due then
    local ok = probe(self, srv, ring)
    t = now()
    if ok then return srv, t, ring end
  end
  if srv >= 0 and due then
    local dead = srv
    srv, e = ring:around(key)
    if srv < 0 then return no_server(self, e, dead, ring) end
  end
  if srv < 0 then return no_server(self, e, ring:static(key), ring) end
  return srv, t, ring
end

-- ---- one request ----

local function f_get(op, opaque, key) return enc(op, opaque, 0, key) end

-- What call returns for slot s, done: its reply's value, cas, flags and
-- the address, or nil, err, detail; and what it tells of the health of
-- srv (an index of ring).
local function reply(self, srv, addr, s, ring)
  if s.failed then
    server_failed(self, srv, s.err, s.detail, ring)
    return nil, s.err, s.detail
  end
  if self.sick[srv] then server_ok(self, srv, ring) end
  local e = s.err
  if e == 0 then return s.value, s.cas, s.flags, addr end
  local st = s.status
  local msg = st ~= ST.OK and s.value ~= "" and ": " .. sub(s.value, 1, 120) or ""
  if e == AUTH then
    -- the server closes the connection after it; so does the next read
    return nil, E_AUTH, addr .. ": " .. status_str(st) .. msg
  end
  if st == ST.OK then return nil, errs[e] end -- delete_lock's marker: a miss
  return nil, errs[e], addr .. ": " .. status_str(st) .. msg
end

-- One request to the server of key: data framed by frame(opaque, ...).
-- Returns the slot with the reply (s.err 0 for success, else the core's
-- error number for its status) and the address; or nil, err, detail.
local function call(self, key, kind, frame, op, ...)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if not key_ok(key) then return nil, E_KEY, KEY_DETAIL end
  local srv, t, ring = place(self, key, now())
  if not srv then return nil, t, ring end
  local addr = name_in(self, ring, srv)
  -- opaques count up from a random start: each request on a connection
  -- has its own, and a connection dies with its first wrong reply
  local opaque = self.lanes:opaque()
  -- the coroutine's slot from its last call, unless that one is still in
  -- a FIFO (its caller gave up waiting): a table per request costs more
  -- than the rest of the request's Lua
  local co = running()
  local s = slot_of[co]
  local rkey = (op == OP_GETK or op == OP_GATK) and key or nil
  if s == nil or s.queued then
    -- every field a slot gets, so the table is sized once
    s = { kind = kind, op = op, opaque = opaque, key = rkey, co = co, deadline = 0,
      done = false, failed = false, err = false, detail = false, status = 0, flags = 0, cas = 0,
      value = false, queued = false, parked = false, ok = false }
    -- (a batch's stream, conn.routed, set before it runs, keeps none: get's
    -- own path, which parks with the client's hooks, takes only a slot kept)
    if not routed[co] then slot_of[co] = s end
  else
    s.kind, s.op, s.opaque, s.key, s.co, s.done, s.failed, s.err, s.detail, s.value =
      kind, op, opaque, rkey, co, false, false, false, false, false
  end
  local sv = self.by_addr[addr] or server_of(self, addr)
  if ring == self.ring then
    self.svs[srv] = sv
    sv.srv, sv.ring = srv, ring -- (deliver's lanes:set: srv in this ring)
  end
  -- a get is framed by the connection's pipe, no string made
  local c = submit(self, sv, s, frame ~= f_get and frame(op, opaque, ...) or nil, t + self.io_timeout)
  if c then await(self, c, s) end
  return reply(self, srv, addr, s, ring)
end

local function f_store(op, opaque, cas, key, flags, exptime, value)
  return enc(op, opaque, cas or 0, key, 1, flags, exptime or 0, value)
end
local function f_concat(op, opaque, cas, key, value) return enc(op, opaque, cas or 0, key, 0, 0, 0, value) end
local function f_delete(op, opaque, cas, key) return enc(op, opaque, cas or 0, key) end
local f_arith, f_touch = codec.arith, codec.touch

-- get, set, ... touch_atomic_value, set_servers, add_server, pick_server,
-- set_server_error_callback: the methods both Lua drivers share, over call
-- (memcached.methods); given below, once replace_ring is defined


function _M.servers(self)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local out = {}
  for i = 0, self.ring:nservers() - 1 do
    local alive, failures, last = self.ring:alive(i)
    local addr = server_name(self, i)
    local sv = self.by_addr[addr]
    out[i + 1] = { addr = addr, alive = alive, failures = failures, last_error = last,
      connections = sv and #sv.conns or 0, tls_resumed = sv and sv.tls_resumed }
  end
  return out
end

-- A new list (no change on a bad address); servers kept from the old list
-- keep their health (its failures replayed into the new ring).
local function replace_ring(self, list)
  local ring, err, detail = new_ring(self, list)
  if not ring then return nil, err, detail end
  err, detail = resolve(self, list)
  if err then return nil, err, detail end
  local old, listed, sick = self.ring, {}, {}
  for j = 0, ring:nservers() - 1 do listed[ring:name(j)] = j end
  for i = 0, old:nservers() - 1 do
    local name = old:name(i)
    local j = listed[name]
    if not j and self.custom then j = ring:intern(name) end
    if j then
      local _, failures, last = old:alive(i)
      for _ = 1, failures do ring:failed(j, now(), last or "") end
      if failures > 0 then sick[j] = true end
    end
  end
  self.ring, self.list, self.names, self.sick, self.svs = ring, list, {}, sick, {}
  local old_lanes = self.lanes
  self.lanes = core.lanes(ring, self.io_timeout, old_lanes:on(), old_lanes:opaque())
  self.lane_get = self.lanes:getter()
  return true
end

local D = {
  call = call, get = f_get, touch = f_touch, store = f_store, concat = f_concat,
  delete = f_delete, arith = f_arith, counter_value = core.counter_value,
  mp_encode = mp_encode, replace_ring = replace_ring, key_ok = key_ok, E = E,
  static = function(self, key) return self.ring:static(key) end, server_name = server_name,
  LOCK_FLAGS = core.LOCK_FLAGS, LOCK_VALUE = core.LOCK_VALUE, NO_CREATE = NO_CREATE,
  K_GET = K_GET, K_SET = K_SET, K_ADD = K_ADD, K_REPLACE = K_REPLACE,
}
require "memcached.methods"(D, _M)

-- get's own path, for what nearly every get is: a string key on a client
-- with no custom selector, whose server is alive (ring:route), from a
-- coroutine whose last request ended. The common case of those, a server
-- with max_conns connections, one of them being read (its lane), takes
-- one call into C (memcached.core.lanes: route, the lane, the framing)
-- and a park; the rest submit as call does. Every other case goes the
-- general way (memcached.methods' get over call), and so does every
-- answer but a hit; both give the same returns.
local slow_get, get_reply = _M.get, D.get_reply

-- What get returns for slot s, done, of srv (an index of ring): a hit as
-- it is; anything else (a failed slot's err is an ERR_* string, another
-- status, msgpack, a server to report healthy) as call's reply would.
local function get_done(self, s, srv, ring)
  if s.err ~= 0 or self.sick[srv] or s.flags == self.mp_flag then
    return get_reply(self, reply(self, srv, name_in(self, ring, srv), s, ring))
  end
  return s.value, s.cas, s.flags
end

local function submit_get(self, key, co, s)
  local ring = self.ring
  local srv = ring:route(key)
  local sv = srv >= 0 and self.svs[srv]
  if not sv then return slow_get(self, key) end
  local opaque = self.lanes:opaque()
  s.kind, s.op, s.opaque, s.key, s.co, s.done, s.failed = K_GET, OP_GETK, opaque, key, co, false, false
  local c = submit(self, sv, s, nil, now() + self.io_timeout)
  if c then
    -- the connection being read: srv's lane, while its reader reads
    -- (unless submit waited for a connection while the ring was replaced)
    if c.reading then self.lanes:set(srv, c, ring) end
    await(self, c, s)
  end
  return get_done(self, s, srv, ring)
end

-- A get on a lane, woken with anything but a hit to hand over as it is
-- (a reply of another status, or msgpack; a failure; named the reader).
local function lane_rest(self, c, s, srv, ring)
  if s.parked then s.parked = false -- (woken by nobody: the loop's doing)
  else self.woken = self.woken - 1 end
  if not s.done or c.reader == s or self.closed then await(self, c, s) end
  return get_done(self, s, srv, ring)
end

function _M.get(self, key)
  local co = running()
  local s = slot_of[co]
  if s and not s.queued then
    -- (nil for a key not a string, after close, with a custom selector;
    -- self.lanes is of self.ring, both replaced at once)
    local ring = self.ring
    local c, deadline, srv = self.lane_get(key, s)
    if c then
      -- (one statement each: a field set to a constant is one instruction)
      s.done = false
      s.failed = false
      s.ok = false
      s.deadline = deadline
      s.queued = true
      -- the lane's reader reads this reply by its own deadline, no later
      -- than this one, or fails the connection: the park needs no timer
      s.parked = co -- (conn.wake_slot; the pipe's read, which lists it)
      self.sleep(nil, co) -- (until woken)
      -- s.ok: the pipe's read woke this caller (counted in self.woken)
      -- with a hit, not msgpack (memcached.core.pipe); after close() the
      -- reader, not this caller, closes the connection
      if s.ok and not self.sick[srv] then
        self.woken = self.woken - 1
        return s.value, s.cas, s.flags
      end
      return lane_rest(self, c, s, srv, ring)
    end
  end
  if not s or s.queued or type(key) ~= "string" or self.closed or self.custom then
    return slow_get(self, key)
  end
  return submit_get(self, key, co, s)
end

-- Idle connections close at once; those in use when their requests end.
function _M.close(self)
  if not self.closed then
    self.closed = true
    self.lanes:off()
    conn.close_idle(self)
    -- the muxes of batches over several servers (async/batch.lua)
    for _, m in ipairs(self.muxes or {}) do conn.close_mux(self, m) end
    self.muxes = nil
  end
  return true
end
_M.exit = _M.close
mt.__close = function(self) _M.close(self) end
mt.__gc = function(self)
  -- the descriptors, closed by the next connection any client opens
  -- (conn.orphan: no hook may run from a finalizer)
  for _, m in ipairs(self.muxes or {}) do conn.orphan(self, m.fd, m) end
  for _, sv in pairs(self.by_addr) do
    for _, c in ipairs(sv.conns) do
      if not c.dead then c.dead = true conn.orphan(self, c.fd) end
    end
  end
end

-- ---- making a client ----

local OPTIONS = { servers = 1, timeout = 1, connect_timeout = 1, io_timeout = 1, max_conns = 1,
  max_idle = 1, msgpack_flag = 1, selector = 1, failure_limit = 1, retry_timeout = 1, eject = 1,
  max_value_size = 1, probe_timeout = 1, wait = 1, sleep = 1, wakeup = 1, wakeup_all = 1, cancel = 1,
  tls = 1, username = 1, password = 1 }

-- The default cap on connections per server: requests of many coroutines
-- share them (pipelined), so a few are enough; 0 means no cap.
_M.DEFAULT_MAX_CONNS = 2

local function construct(opts, custom)
  for k in pairs(opts) do
    if not OPTIONS[k] then error("unknown option '" .. tostring(k) .. "'", 3) end
  end
  if type(opts.wait) ~= "function" then
    error("option 'wait' must be a function(fd, events, timeout)", 3)
  end
  local timeout = opt_number(opts, "timeout", memcached.DEFAULT_TIMEOUT, 0.001, 3600)
  local sel = opts.selector or "ketama"
  if custom then sel = "ketama"
  elseif type(sel) == "function" or type(sel) == "table" then custom, sel = sel, "ketama"
  elseif SELECTORS[sel] == nil then error("unknown selector '" .. tostring(sel) .. "'", 3) end
  local connect_timeout = opt_number(opts, "connect_timeout", timeout, 0.001, 3600)
  local self = setmetatable({
    wait = opts.wait, sleep = opt_fn(opts, "sleep"), wakeup = opt_fn(opts, "wakeup"),
    wakeup_all = opt_fn(opts, "wakeup_all"), cancel = opt_fn(opts, "cancel"),
    connect_timeout = connect_timeout,
    io_timeout = opt_number(opts, "io_timeout", timeout, 0.001, 3600),
    max_conns = opt_int(opts, "max_conns", _M.DEFAULT_MAX_CONNS, 0, 1000000),
    mp_flag = opt_int(opts, "msgpack_flag", 1, 0, U32),
    selector = SELECTORS[sel],
    custom = custom,
    failure_limit = opt_int(opts, "failure_limit", 2, 1, 1000000),
    retry_timeout = opt_number(opts, "retry_timeout", 1.0, 0, 86400),
    probe_timeout = math.min(opt_number(opts, "probe_timeout", 0.02, 0.001, 3600), connect_timeout),
    eject = opts.eject ~= false,
    woken = 0, -- coroutines woken and not yet run (memcached.async.conn)
    sick = {},     -- servers the ring holds failures of (server_ok)
    by_addr = {}, -- per server address: connections (memcached.async.conn)
    dial = {},    -- address -> what to connect to
    names = {},
    svs = {},     -- server index -> what by_addr holds for it (get's own path)
  }, mt)
  opt_int(opts, "max_idle", 2, 0, 1000000)
  -- a longer value is refused before it is sent (memcached.methods), and
  -- an item read back over it fails its connection (the core's max_body)
  self.max_value_size = opt_int(opts, "max_value_size", conn.MAX_BODY, 1024, 0x7fffffff)
  self.max_body = self.max_value_size + 512 -- the value, its key and extras
  if (opts.sleep == nil) ~= (opts.wakeup == nil) then
    error("options 'sleep' and 'wakeup' go together", 3)
  end
  if opts.wakeup_all ~= nil and opts.wakeup == nil then
    error("option 'wakeup_all' needs 'sleep' and 'wakeup'", 3)
  end
  local sec, serr, sdetail = require("memcached.async.secure").new(opts) -- TLS, SASL
  if sec == nil then return nil, serr, sdetail end
  self.secure = sec or nil
  local list = server_list(opts.servers or {})
  local ring, err, detail = new_ring(self, list)
  if not ring then return nil, err, detail end
  err, detail = resolve(self, list)
  if err then return nil, err, detail end
  local seq = core.random32() -- the first request's opaque
  self.ring, self.list = ring, list
  -- get's own path (memcached.core.lanes), for loops that park with
  -- sleep; and every request's opaque
  self.lanes = core.lanes(ring, self.io_timeout, self.sleep ~= nil and not custom, seq)
  -- (l:get bound to the lanes: no check of them, no method lookup per get)
  self.lane_get = self.lanes:getter()
  return self
end

-- new{servers =, wait =, ...} (the C client's options, plus the hooks
-- wait, sleep/wakeup and cancel), or new(server, ..., {wait =, ...})
function _M.new(opts, ...)
  if type(opts) ~= "table" or opts[1] ~= nil then
    local args = { opts, ... }
    local last = args[#args]
    if type(last) == "table" and last.wait then
      args[#args] = nil
      local o = {}
      for k, v in pairs(last) do o[k] = v end
      o.servers = args
      return construct(o)
    end
    error("option 'wait' must be a function(fd, events, timeout)", 2)
  end
  return construct(opts)
end

function _M.new_from_selector(sel, opts)
  local t = type(sel)
  if t ~= "function" and t ~= "table" and t ~= "userdata" then
    error("bad argument #1 (selector): function or object with pick_server expected", 2)
  end
  return construct(opts or {}, sel)
end

-- the batched methods (memcached.async.batch)
local batch = require "memcached.async.batch" {
  place = place, name_in = name_in, server_ok = server_ok, server_failed = server_failed,
  K_GET = K_GET, K_SET = K_SET, K_OTHER = K_OTHER, AUTH = AUTH, CLOSED_DETAIL = CLOSED_DETAIL,
  KEY_DETAIL = KEY_DETAIL, opt_uint = opt_uint }
for k, v in pairs(batch) do _M[k] = v end

return _M
