-- memcached.resty.batch: the methods that pipeline requests over several
-- servers (get_multi, set_multi, delete_multi; flush, ping, version; stats
-- one server after the other). Each returns the C client's results.
local M = {}
local ffi = require "ffi"
local type, error, tostring, ipairs, next = type, error, tostring, ipairs, next
local select, floor, ngx_now = select, math.floor, ngx.now
local ngx_thread_spawn, ngx_thread_wait = ngx.thread.spawn, ngx.thread.wait
local new_tab = require "table.new"
local C = require "memcached.resty.core"
local OP, c_stat, status_str = C.OP, C.c_stat, C.status_str
local c_flush, c_simple = C.c_flush, C.c_simple
local mp_encode, mp_decode, E, E_KEY, E_PROTOCOL = C.mp_encode, C.mp_decode, C.E, C.E_KEY, C.E_PROTOCOL
local E_CLIENT_CLOSED, E_AUTH, CLOSED_DETAIL = C.E_CLIENT_CLOSED, C.E_AUTH, C.CLOSED_DETAIL
local U32, core, K_GET, K_SET = C.U32, C.core, C.K_GET, C.K_SET
local K_OTHER, err_str = C.K_OTHER, C.err_str
local resend_safe, key_ok, opt_uint = C.resend_safe, C.key_ok, C.opt_uint
local STALE, sock_fail = C.STALE, C.sock_fail
local A = require "memcached.args"
local set_items, delete_keys = A.set_items, A.delete_keys
local ARGS = { key_ok = key_ok, mp_encode = mp_encode, E = E } -- for set_items, delete_keys
local conn = require "memcached.resty.conn"
local next_opaques, leftover, take_reader = conn.next_opaques, conn.leftover, conn.take_reader
local give_reader, send_to, read_reply = conn.give_reader, conn.send_to, conn.read_reply
local roundtrip, release, set_left = conn.roundtrip, conn.release, conn.set_left
-- the core's number for a miss (entries carry numbers)
local MISS, AUTH = C.err_num[C.E_MISS], C.err_num[C.E_AUTH]
local H = require "memcached.resty.health"
local server_failed, server_ok, server_name = H.server_failed, H.server_ok, H.server_name
local place = H.place

-- Sends batch b (sets b.sock, b.reused); a pooled connection found closed
-- gets it once more on a fresh one when resend_safe. Returns nil, or err, detail.
local function send_batch(self, b, dl)
  local sock, x, detail, stale = send_to(self, b.addr, b.data, dl)
  if not sock and stale and resend_safe(b.data) then
    b.resent = true
    sock, x, detail = send_to(self, b.addr, b.data, dl, true)
  end
  b.sock = sock
  if not sock then return x, detail end
  b.reused = x
end

-- The core's batches (mc_abi_batch): one per server of a call, kept by the
-- client for later calls. Taken while in use (light threads sharing the
-- client each take their own).
local function take_ab(self)
  local pool = self.abs
  local ab = pool[#pool]
  if ab then
    pool[#pool] = nil
    return ab
  end
  ab = core.mc_abi_batch_new(self.max_body)
  if ab == nil then return nil end
  return ffi.gc(ab, core.mc_abi_batch_free)
end
local function give_abs(self, batches)
  local pool = self.abs
  for _, b in ipairs(batches) do
    if b.ab and #pool < 8 then pool[#pool + 1] = b.ab end
    b.ab = nil
  end
end

local ents, nents, ferr = ffi.new("mc_abi_entry *[1]"), ffi.new("int[1]"), ffi.new("int[1]")
local fmsg, seal_len = ffi.new("char[256]"), ffi.new("size_t[1]")

-- Reads batch b's replies from its socket into the core's batch until its
-- NOOP: each reply's entry goes to on_entry(st, b, e) at once (its value
-- lives until the next feed). Returns true, or nil, err, detail, stale
-- with the socket closed (stale: it failed before any byte came).
local function read_batch(self, b, sock, dl, on_entry, st)
  local got = false
  while true do
    set_left(sock, nil, dl)
    local data, err = sock:receiveany(65536)
    if not data then
      local stale = not got and STALE[err] or nil
      local _, e, detail = sock_fail(sock, b.addr, "receive", err)
      return nil, e, detail, stale
    end
    got = true
    local rc = core.mc_abi_batch_feed(b.ab, data, #data, ents, nents, ferr, fmsg, 256)
    local es = ents[0]
    for j = 0, nents[0] - 1 do on_entry(st, b, es[j]) end
    if rc == 1 then return true end
    if rc < 0 then
      sock:close()
      return nil, err_str[ferr[0]], b.addr .. ": " .. ffi.string(fmsg)
    end
  end
end

-- Batches over several servers: each batch b (batch_of) is sent whole,
-- every server before any reply is read; then each server's replies are
-- taken by the core (read_batch). on_entry(st, b, e) hears of each reply;
-- on_fail(st, b, err, detail) of each server that failed (its entries
-- already heard of must then be dropped: a stream that broke off may have
-- framed an earlier reply wrongly). st is the caller's state: the
-- callbacks are plain functions, no closure per call (LuaJIT does not
-- compile closure creation). A batch whose requests may all be sent twice
-- (resend_safe) and whose pooled connection turns out closed before any
-- byte of its replies is sent once more on a fresh one.
-- A server's failure counts against it once per batch (as in the C
-- client); its stream parsed through the NOOP is a success.
local function batch_fail(self, on_fail, st, b, err, detail)
  server_failed(self, b.srv, err, detail)
  on_fail(st, b, err, detail)
end

local function run_batches(self, batches, on_entry, on_fail_user, st)
  local dl = ngx_now() + self.io_timeout
  if #batches == 1 then
    local b = batches[1]
    local err, detail = send_batch(self, b, dl)
    if err then batch_fail(self, on_fail_user, st, b, err, detail) end
  else
    -- connect to and write every server at once, one light thread each, so
    -- that servers that hang cost one connect timeout, not one each
    local threads = {}
    for i, b in ipairs(batches) do
      threads[i] = ngx_thread_spawn(send_batch, self, b, dl)
    end
    for i, b in ipairs(batches) do
      local ok, err, detail = ngx_thread_wait(threads[i])
      if not ok then
        if b.sock then b.sock:close() end
        b.sock, err, detail = nil, E.ERR_IO, b.addr .. ": " .. tostring(err)
      end
      if err then batch_fail(self, on_fail_user, st, b, err, detail) end
    end
  end
  for _, b in ipairs(batches) do
    local sock = b.sock
    if sock then
      local read = b.read or read_batch
      local ok, err, detail, stale = read(self, b, sock, dl, on_entry, st)
      if not ok and stale and b.reused and not b.resent and resend_safe(b.data) then
        -- a pooled connection the server had closed: once more on a fresh one
        b.resent = true
        sock, err, detail = send_to(self, b.addr, b.data, dl, true)
        if sock then ok, err, detail = read(self, b, sock, dl, on_entry, st) end
      end
      if ok then
        release(self, b.addr, sock)
        server_ok(self, b.srv)
      else
        batch_fail(self, on_fail_user, st, b, err, detail)
      end
    end
  end
  give_abs(self, batches)
end

-- A call's batch for server srv, made on its first request; batches keeps
-- them in that order. Requests are framed into the core's batch (ab);
-- keys[i] is the key of its request i - 1. Opaques run from base in each
-- batch (each has a connection of its own). Returns the batch, or nil when
-- memory ran out.
local function batch_of(self, by_srv, batches, srv, base, kind, every_reply, nkeys)
  local b = by_srv[srv]
  if not b then
    local ab = take_ab(self)
    if not ab then return nil end
    core.mc_abi_batch_begin(ab, base, kind, every_reply)
    b = { addr = server_name(self, srv), srv = srv, ab = ab, keys = new_tab(nkeys, 0) }
    by_srv[srv] = b
    batches[#batches + 1] = b
  end
  return b
end

-- Room to make for one server's keys of n (its batch's key list): all of
-- them with one server, else a share with room for an uneven spread.
local function keys_per_server(self, n)
  local ns = core.mc_abi_ring_nservers(self.ring)
  if ns <= 1 then return n end
  return floor(n * 1.5 / ns) + 1
end

-- Frames one request into b; false when it cannot be framed.
local function batch_add(b, op, key, extras, flags, exptime, value, vlen)
  if core.mc_abi_batch_add(b.ab, op, 0, key, #key, extras, flags, exptime, value, vlen) < 0 then
    return false
  end
  local keys = b.keys
  keys[#keys + 1] = key
  return true
end

-- Closes each batch's stream with its NOOP and takes its bytes.
local function batches_seal(batches)
  for _, b in ipairs(batches) do
    local p = core.mc_abi_batch_seal(b.ab, seal_len)
    if p == nil then error("out of memory framing a batch") end
    b.data = ffi.string(p, seal_len[0])
  end
end

-- get_multi's state (st): values, failed ({key = err}, made on first use)
-- and the first error.
local function gm_failed(st, k, err)
  st.first = st.first or err
  local f = st.failed
  if not f then f = {} st.failed = f end
  f[k] = err
end

local function gm_entry(st, b, e)
  local k = b.keys[e.idx + 1]
  local err = e.err
  if err == 0 then
    local v = ffi.string(e.value, e.vlen)
    if e.flags == st.mp_flag then
      local dv, derr = mp_decode(v)
      if dv == nil and derr ~= nil then gm_failed(st, k, E.ERR_UNDECODABLE) return end
      v = dv
    end
    st.values[k] = v
  elseif err ~= MISS then
    gm_failed(st, k, err_str[err])
  end
end

local function gm_fail(st, b, err)
  -- every key of a server that failed fails, and its hits are dropped: a
  -- stream that broke off may have framed an earlier reply wrongly
  for _, k in ipairs(b.keys) do
    st.values[k] = nil
    gm_failed(st, k, err)
  end
end

-- get_multi(keys) -> {key = value}, or values, err, {key = err}
function M.get_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n = #keys
  local st = { values = new_tab(0, n), mp_flag = self.mp_flag }
  local by_srv, batches = {}, {}
  local base = next_opaques(self, n + 1)
  local per = keys_per_server(self, n)
  for i = 1, n do -- nothing is sent before every key was checked
    local k = keys[i]
    if type(k) ~= "string" then
      give_abs(self, batches)
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not key_ok(k) then
      give_abs(self, batches)
      return nil, E_KEY, "key #" .. i .. " is malformed; nothing was sent"
    end
    local srv, err = place(self, k)
    if not srv then gm_failed(st, k, err) else
      -- GETK, not GETKQ: every key gets its reply, in order, naming its key,
      -- so a value that swallowed the replies after it breaks the batch
      local b = batch_of(self, by_srv, batches, srv, base, K_GET, 1, per)
      if not (b and batch_add(b, OP.GETK, k, 0, 0, 0, nil, 0)) then gm_failed(st, k, E.ERR_NOMEM) end
    end
  end
  batches_seal(batches)
  run_batches(self, batches, gm_entry, gm_fail, st)
  if st.first then return st.values, st.first, st.failed end
  return st.values
end

-- quiet_batch's callbacks; st: results
local function quiet_entry(st, b, e)
  if e.err ~= 0 then st.results[b.keys[e.idx + 1]] = err_str[e.err] end
end

local function quiet_fail(st, b, err)
  for _, k in ipairs(b.keys) do st.results[k] = err end
end

-- set_multi / delete_multi: quiet requests (SETQ / DELETEQ), one NOOP per
-- server; only failures answer. list holds {key, value}; results[key] is
-- true for every key sent and already holds the error of each key that
-- could not be. A failure reply is the status's meaning for `kind`; a
-- server that fails (transport, protocol, auth) fails every key sent to it
-- (any of them may or may not have been stored). extras, flags, exptime:
-- the requests' (stores: 1, the flags, the expiration). Returns results,
-- or results and the first error in list order.
local function quiet_batch(self, qop, kind, list, results, extras, flags, exptime)
  local by_srv, batches = {}, {}
  local base = next_opaques(self, #list + 1)
  local per = keys_per_server(self, #list)
  for _, e in ipairs(list) do
    local k, v = e[1], e[2]
    if results[k] == true then
      local b = batch_of(self, by_srv, batches, e.srv, base, kind, 0, per)
      if not (b and batch_add(b, qop, k, extras, flags, exptime, v, v and #v or 0)) then
        results[k] = E.ERR_NOMEM
      end
    end
  end
  batches_seal(batches)
  run_batches(self, batches, quiet_entry, quiet_fail, { results = results })
  for _, e in ipairs(list) do
    local r = results[e[1]]
    if r ~= true then return results, r end
  end
  return results
end

-- Where each key of list goes (e.srv), or its error in results.
local function quiet_place(self, list, results)
  for _, e in ipairs(list) do
    local k = e[1]
    if results[k] == nil then
      local srv, err = place(self, k)
      e.srv = srv
      results[k] = srv and true or err
    end
  end
end

-- set_multi(items [, expiration]) -> {key = true | err}[, first err]. items
-- maps keys to values, msgpack-encoded as set does (mp_encode frames a
-- string as a msgpack str, as the C client does). A malformed key or an
-- unencodable value fails that key alone; so does a value the server
-- refuses as too large (its SETQ answers ERR_VALUE_TOO_LARGE).
function M.set_multi(self, items, exptime)
  local list, results, exp = set_items(self, items, exptime, ARGS)
  if not list then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  quiet_place(self, list, results)
  return quiet_batch(self, OP.SETQ, K_SET, list, results, 1, self.mp_flag, exp)
end

-- delete_multi(keys) -> {key = true | err}[, first err]; a missing key is
-- ERR_CACHE_MISS. A repeated key is deleted once (a second DELETEQ would
-- turn its success into a miss).
function M.delete_multi(self, keys)
  local list, results = delete_keys(self, keys, ARGS)
  if not list then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  quiet_place(self, list, results)
  return quiet_batch(self, OP.DELETEQ, K_GET, list, results, 0, 0, 0)
end

-- each_server's callbacks; st: values, failures, first
local function each_failed(st, b, err, detail)
  st.first = st.first or err
  st.failures[b.addr] = detail
end
local function each_entry(st, b, res)
  if res.err == 0 then st.values[b.addr] = res.value
  else each_failed(st, b, err_str[res.err], b.addr .. ": " .. status_str(res.status)) end
end

-- Reads the one reply of batch b (each_server's: one request, no NOOP,
-- as memcached -S answers VERSION unauthenticated but not a NOOP), judged
-- by the core as a single request's (read_reply).
local function read_one(self, b, sock, dl, on_entry, st)
  local r = take_reader(self)
  r.kind, r.op, r.opaque, r.key = K_OTHER, b.op, b.opaque, nil
  local res, err, detail, stale = read_reply(sock, r, b.addr, dl)
  if res and res.err == AUTH then -- the server closes the connection after it
    sock:close()
    res, err, detail = nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  if res then on_entry(st, b, res) end -- r holds the reply until it is given back
  give_reader(self, r)
  if not res then return nil, err, detail, stale end
  return true
end

-- One request to each distinct server. Returns {addr = reply value}, the
-- first error and {addr = detail} for the servers that failed; or nil,
-- err, detail when none can be asked.
local function each_server(self, enc, op, arg)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n = core.mc_abi_ring_nservers(self.ring)
  if n == 0 then return nil, E.ERR_NO_SERVERS, "no servers configured" end
  local base = next_opaques(self, n)
  local batches, values, failures = {}, {}, {}
  for i = 1, n do
    local opaque = (base + i - 1) % 4294967296
    batches[i] = { addr = server_name(self, i - 1), srv = i - 1, op = op, opaque = opaque,
      data = enc(op, opaque, arg), read = read_one }
  end
  local st = { values = values, failures = failures }
  run_batches(self, batches, each_entry, each_failed, st)
  return values, st.first, failures
end

local function all_ok(values, err, failures)
  if values and not err then return true end
  return nil, err, failures
end

function M.flush(self, delay)
  if type(delay) == "table" then delay = delay.expiration end
  opt_uint(1, "delay", delay, U32)
  return all_ok(each_server(self, c_flush, OP.FLUSH, delay))
end
function M.flush_all(self) return all_ok(each_server(self, c_flush, OP.FLUSH)) end
M.delete_all = M.flush_all
function M.ping(self) return all_ok(each_server(self, c_simple, OP.NOOP)) end

-- version() -> {addr = version}[, first err]; nil, err, detail when none answered
function M.version(self)
  local values, err, failures = each_server(self, c_simple, OP.VERSION)
  if not values then return nil, err, failures end
  if not err then return values end
  if next(values) then return values, err end
  return nil, err, select(2, next(failures))
end

-- The most entries one server's stats reply may hold (the core's
-- MC_MAX_STAT_ENTRIES): a server streaming entries without end would grow
-- the table until the timeout.
local MAX_STAT_ENTRIES = core.mc_abi_max_stat_entries()

-- One server's stats: {name = value}; or nil, err, detail, answered
-- (answered: the server replied with an error status, no failure of it).
-- The reply is a stream of STAT packets under the request's opaque, ended
-- by one with an empty key. Its own I/O timeout, as in the C client.
local function server_stats(self, srv, group, r)
  local addr = server_name(self, srv)
  local dl = ngx_now() + self.io_timeout
  local opaque = next_opaques(self, 1)
  local data = c_stat(opaque, group)
  -- the core judges each reply (mc_abi_take_one): the request's opcode
  -- and opaque, its shape; a STAT stream may have more after each
  r.kind, r.op, r.opaque, r.key = K_OTHER, OP.STAT, opaque, nil
  local res, sock, detail, stale = roundtrip(self, addr, data, r, dl)
  if not res and stale and resend_safe(data) then
    r:reset()
    res, sock, detail = roundtrip(self, addr, data, r, dl, true)
  end
  if not res then return nil, sock, detail end
  local t, nent, err = {}, 0
  while true do
    if res.err == AUTH then -- the server closes the connection after it
      sock:close()
      return nil, E_AUTH, addr .. ": " .. status_str(res.status)
    end
    if res.err ~= 0 then
      if leftover(r) then sock:close() else release(self, addr, sock) end
      return nil, err_str[res.err], addr .. ": " .. status_str(res.status), true
    end
    if res.rkey == "" then
      if leftover(r) then sock:close() else release(self, addr, sock) end
      return t
    end
    nent = nent + 1
    if nent > MAX_STAT_ENTRIES then
      sock:close() -- the rest is not read
      return nil, E_PROTOCOL, addr .. ": more than " .. MAX_STAT_ENTRIES .. " stat entries in one reply"
    end
    t[res.rkey] = res.value
    res, err, detail = read_reply(sock, r, addr, dl)
    if not res then return nil, err, detail end
  end
end

-- stats([group]) -> {addr = {name = value}}[, first err]; nil, ERR_NO_STATS,
-- detail when no server answered. One server after the other; a server
-- that fails is left out (and counts as failing, as in every call).
function M.stats(self, group)
  if type(group) == "number" then group = tostring(group)
  elseif group ~= nil and type(group) ~= "string" then
    error("bad argument #1 (group): string expected, got " .. type(group), 2)
  end
  -- the group travels as the request's key: 16 bits of length
  if group and #group > 65535 then error("bad argument #1 (group): longer than 65535 bytes", 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if core.mc_abi_ring_nservers(self.ring) == 0 then
    return nil, E.ERR_NO_SERVERS, "no servers configured"
  end
  local out, answered, first, detail = {}, false, nil, nil
  local srv = 0
  -- the list is read again after each server (set_servers may run while
  -- this call waits), as the C client does
  while srv < core.mc_abi_ring_nservers(self.ring) do
    local r = take_reader(self)
    local t, err, d, replied = server_stats(self, srv, group, r)
    give_reader(self, r)
    if t then
      server_ok(self, srv)
      out[server_name(self, srv)] = t
      answered = true
    else
      if replied then server_ok(self, srv) else server_failed(self, srv, err, d) end
      first, detail = first or err, d
    end
    srv = srv + 1
  end
  if not answered then return nil, E.ERR_NO_STATS, detail end
  if first then return out, first end
  return out
end


return M
