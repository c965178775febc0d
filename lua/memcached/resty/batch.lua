-- memcached.resty.batch: the methods that pipeline requests over several
-- servers (get_multi, set_multi, delete_multi; flush, ping, version; stats
-- one server after the other). Each returns the C client's results.
local M = {}
local type, error, tostring, pairs, ipairs, next = type, error, tostring, pairs, ipairs, next
local select, floor, concat, ngx_now = select, math.floor, table.concat, ngx.now
local ngx_update_time, ngx_thread_spawn = ngx.update_time, ngx.thread.spawn
local ngx_thread_wait = ngx.thread.wait
local C = require "memcached.resty.core"
local OP, ST, c_get, c_store, c_delete = C.OP, C.ST, C.c_get, C.c_store, C.c_delete
local c_flush, c_simple, c_stat, status_str = C.c_flush, C.c_simple, C.c_stat, C.status_str
local mp_encode, E, E_MISS, E_KEY, E_PROTOCOL = C.mp_encode, C.E, C.E_MISS, C.E_KEY, C.E_PROTOCOL
local E_CLIENT_CLOSED, E_AUTH, CLOSED_DETAIL = C.E_CLIENT_CLOSED, C.E_AUTH, C.CLOSED_DETAIL
local U32, core, is_lock, K_GET, K_SET = C.U32, C.core, C.is_lock, C.K_GET, C.K_SET
local K_OTHER, status_err, is_auth = C.K_OTHER, C.status_err, C.is_auth
local reply_key_ok, resend_safe, key_ok = C.reply_key_ok, C.resend_safe, C.key_ok
local opt_uint, item_value = C.opt_uint, C.item_value
local conn = require "memcached.resty.conn"
local next_opaques, leftover, take_reader = conn.next_opaques, conn.leftover, conn.take_reader
local give_reader, send_to, read_reply = conn.give_reader, conn.send_to, conn.read_reply
local roundtrip = conn.roundtrip
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

-- Batches over several servers: each batch {addr =, data =, last =} is sent
-- whole, every server before any reply is read; then each server's replies
-- are read until the one whose opaque is `last`. on_reply(st, b, res)
-- returns true (keep reading), or nil, err, detail (a reply not ours, or an
-- auth status: the socket is closed). on_fail(st, b, err, detail) hears of
-- each server that failed. st is the caller's state: the callbacks are
-- plain functions, no closure per call (LuaJIT does not compile closure
-- creation). A batch whose requests may all be sent twice (resend_safe)
-- and whose pooled connection turns out closed before any byte of its
-- replies is sent once more on a fresh one.
-- A server's failure counts against it once per batch (as in the C
-- client); its stream parsed through the NOOP is a success.
local function batch_fail(self, on_fail, st, b, err, detail)
  server_failed(self, b.srv, err, detail)
  on_fail(st, b, err, detail)
end

local function run_batches(self, batches, on_reply_user, on_fail_user, st)
  ngx_update_time()
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
  local r = take_reader(self)
  for _, b in ipairs(batches) do
    local sock, replied = b.sock, false
    r:reset()
    while sock do
      local res, err, detail, stale = read_reply(sock, r, b.addr, dl)
      if res then
        replied = true
        local mine
        mine, err, detail = on_reply_user(st, b, res)
        if not mine then sock:close()
        elseif res.opaque == b.last and leftover(r) then
          -- the stream ends with the NOOP and nothing after it
          sock:close()
          mine, err, detail = nil, E_PROTOCOL, b.addr .. ": bytes after the batch's NOOP"
        elseif res.opaque == b.last then
          sock:setkeepalive(self.keepalive_ms, self.pool_size)
          server_ok(self, b.srv)
          break
        end
      elseif stale and b.reused and not replied and not b.resent and resend_safe(b.data) then
        -- a pooled connection the server had closed: once more on a fresh one
        b.resent = true
        r:reset()
        sock, err, detail = send_to(self, b.addr, b.data, dl, true)
        if sock then err = nil end
      end
      if err then
        r:reset()
        batch_fail(self, on_fail_user, st, b, err, detail)
        break
      end
    end
  end
  give_reader(self, r)
end

-- A call's batch for server srv, made on its first request; batches keeps
-- them in that order. waiting: opaque -> key until its reply; order: the
-- opaques as sent.
local function batch_of(self, by_srv, batches, srv)
  local b = by_srv[srv]
  if not b then
    b = { addr = server_name(self, srv), srv = srv, parts = {}, waiting = {}, order = {}, pos = 1 }
    by_srv[srv] = b
    batches[#batches + 1] = b
  end
  return b
end

local function batch_add(b, opaque, key, data)
  b.parts[#b.parts + 1] = data
  b.waiting[opaque] = key
  b.order[#b.order + 1] = opaque
end

-- Closes each batch with a NOOP under an opaque of its own (b.last) and
-- joins its bytes.
local function batches_close(self, batches)
  local noops = next_opaques(self, #batches)
  for j, b in ipairs(batches) do
    b.last = (noops + j - 1) % 4294967296
    b.parts[#b.parts + 1] = c_simple(OP.NOOP, b.last)
    b.data = concat(b.parts)
    b.parts = nil
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

local function gm_reply(st, b, res)
  if res.opaque == b.last and res.opcode == OP.NOOP then
    if b.pos <= #b.order then
      return nil, E_PROTOCOL, b.addr .. ": the batch ended with requests unanswered"
    end
    return true
  end
  local k = b.waiting[res.opaque]
  -- error replies may carry no key: their opaque says which request
  if not k or res.opaque ~= b.order[b.pos] or res.opcode ~= OP.GETK
      or not reply_key_ok(res, k) then
    return nil, E_PROTOCOL, b.addr .. ": a reply that answers no request of this batch, in order"
  end
  if is_auth(res.status) then
    -- memcached -S closes the connection after this reply: this key and
    -- every other key of the batch fail with ERR_AUTH (gm_fail)
    return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  b.waiting[res.opaque] = nil
  b.pos = b.pos + 1
  local e = res.status ~= ST.OK and status_err(K_GET, res.status)
  if e then
    if e ~= E_MISS then gm_failed(st, k, e) end
  elseif not is_lock(res) then
    local ok, v = item_value(st.self, res)
    if ok then
      st.values[k] = v
      local got = b.got
      if not got then got = {} b.got = got end
      got[#got + 1] = k
    else
      gm_failed(st, k, E.ERR_UNDECODABLE)
    end
  end
  return true
end

local function gm_fail(st, b, err)
  for _, k in pairs(b.waiting) do gm_failed(st, k, err) end
  b.waiting = {}
  -- a server's hits count only if its stream parsed through the NOOP:
  -- a stream that broke off may have framed an earlier reply wrongly
  for _, k in ipairs(b.got or {}) do
    st.values[k] = nil
    gm_failed(st, k, err)
  end
  b.got = nil
end

-- get_multi(keys) -> {key = value}, or values, err, {key = err}
function M.get_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local n = #keys
  local st = { self = self, values = {} }
  local by_srv, batches = {}, {}
  local base = next_opaques(self, n)
  for i = 1, n do -- nothing is sent before every key was checked
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not key_ok(k) then return nil, E_KEY, "key #" .. i .. " is malformed; nothing was sent" end
    local srv, err = place(self, k)
    if not srv then gm_failed(st, k, err) else
      local opaque = (base + i - 1) % 4294967296
      -- GETK, not GETKQ: every key gets its reply, in order, naming its key,
      -- so a value that swallowed the replies after it breaks the batch
      batch_add(batch_of(self, by_srv, batches, srv), opaque, k, c_get(OP.GETK, opaque, k))
    end
  end
  batches_close(self, batches)
  run_batches(self, batches, gm_reply, gm_fail, st)
  if st.first then return st.values, st.first, st.failed end
  return st.values
end

-- quiet_batch's callbacks; st: qop, kind, results
local function quiet_reply(st, b, res)
  if res.opaque == b.last and res.opcode == OP.NOOP then return true end
  -- an answer names a request of the batch, no earlier than the last one
  -- answered (replies come in order), and no other key
  local k, order, pos = b.waiting[res.opaque], b.order, b.pos
  while pos <= #order and order[pos] ~= res.opaque do pos = pos + 1 end
  if not k or pos > #order or res.opcode ~= st.qop or not reply_key_ok(res, k) then
    return nil, E_PROTOCOL, b.addr .. ": a reply that answers no request of this batch, in order"
  end
  b.pos = pos + 1
  if is_auth(res.status) then -- the server closes the connection after it
    return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  if res.status ~= ST.OK then st.results[k] = status_err(st.kind, res.status) end
  return true
end

local function quiet_fail(st, b, err)
  for _, k in pairs(b.waiting) do st.results[k] = err end
end

-- set_multi / delete_multi: quiet requests (SETQ / DELETEQ), one NOOP per
-- server; only failures answer. list holds {key, value}; results[key] is
-- true for every key sent and already holds the error of each key that
-- could not be. A failure reply is the status's meaning for `kind`; a
-- server that fails (transport, protocol, auth) fails every key sent to it
-- (any of them may or may not have been stored). Returns results, or
-- results and the first error in list order.
local function quiet_batch(self, qop, kind, list, results, enc)
  local by_srv, batches = {}, {}
  local base = next_opaques(self, #list)
  for i, e in ipairs(list) do
    local k = e[1]
    if results[k] == true then
      local opaque = (base + i - 1) % 4294967296
      batch_add(batch_of(self, by_srv, batches, e.srv), opaque, k, enc(qop, opaque, k, e[2]))
    end
  end
  batches_close(self, batches)
  run_batches(self, batches, quiet_reply, quiet_fail, { qop = qop, kind = kind, results = results })
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
  if type(items) ~= "table" then error("bad argument #1 (items): table expected, got " .. type(items), 2) end
  if exptime ~= nil and (type(exptime) ~= "number" or exptime ~= floor(exptime)
      or exptime < 0 or exptime > U32) then
    error("bad argument #2 (expiration): integer 0..4294967295 expected, got " .. tostring(exptime), 2)
  end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local list, results = {}, {}
  for k, v in pairs(items) do
    if type(k) ~= "string" then
      error("bad argument #1 (items): keys must be strings, got " .. type(k), 2)
    end
    local e = { k }
    list[#list + 1] = e
    if not key_ok(k) then results[k] = E_KEY
    else
      local bytes = mp_encode(v)
      if bytes then e[2] = bytes else results[k] = E.ERR_UNENCODABLE end
    end
  end
  ngx_update_time()
  quiet_place(self, list, results)
  local mp_flag, exp = self.mp_flag, exptime or 0
  return quiet_batch(self, OP.SETQ, K_SET, list, results, function(op, opaque, key, value)
    return c_store(op, opaque, nil, key, mp_flag, exp, value)
  end)
end

-- delete_multi(keys) -> {key = true | err}[, first err]; a missing key is
-- ERR_CACHE_MISS. A repeated key is deleted once (a second DELETEQ would
-- turn its success into a miss).
function M.delete_multi(self, keys)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 2) end
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local list, results, seen = {}, {}, {}
  for i = 1, #keys do
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 2)
    end
    if not seen[k] then
      seen[k] = true
      list[#list + 1] = { k }
      if not key_ok(k) then results[k] = E_KEY end
    end
  end
  ngx_update_time()
  quiet_place(self, list, results)
  return quiet_batch(self, OP.DELETEQ, K_GET, list, results, function(op, opaque, key)
    return c_delete(op, opaque, nil, key)
  end)
end

-- each_server's callbacks; st: op, values, failures, first
local function each_failed(st, b, err, detail)
  st.first = st.first or err
  st.failures[b.addr] = detail
end
local function each_reply(st, b, res)
  if res.opaque ~= b.last or res.opcode ~= st.op then
    return nil, E_PROTOCOL, b.addr .. ": reply opcode " .. res.opcode .. " opaque " .. res.opaque
  end
  if is_auth(res.status) then -- the server closes the connection after it
    return nil, E_AUTH, b.addr .. ": " .. status_str(res.status)
  end
  if res.status == ST.OK then st.values[b.addr] = res.value
  else each_failed(st, b, status_err(K_OTHER, res.status), b.addr .. ": " .. status_str(res.status)) end
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
    batches[i] = { addr = server_name(self, i - 1), srv = i - 1, last = opaque,
      data = enc(op, opaque, arg) }
  end
  local st = { op = op, values = values, failures = failures }
  run_batches(self, batches, each_reply, each_failed, st)
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

-- The most entries one server's stats reply may hold (the C client's
-- MAX_STAT_ENTRIES, lmc_every.c): memcached sends a few hundred; a server
-- streaming entries without end would grow the table until the timeout.
local MAX_STAT_ENTRIES = 100000

-- One server's stats: {name = value}; or nil, err, detail, answered
-- (answered: the server replied with an error status, no failure of it).
-- The reply is a stream of STAT packets under the request's opaque, ended
-- by one with an empty key. Its own I/O timeout, as in the C client.
local function server_stats(self, srv, group, r)
  local addr = server_name(self, srv)
  ngx_update_time()
  local dl = ngx_now() + self.io_timeout
  local opaque = next_opaques(self, 1)
  local data = c_stat(opaque, group)
  local res, sock, detail, stale = roundtrip(self, addr, data, r, dl)
  if not res and stale and resend_safe(data) then
    r:reset()
    res, sock, detail = roundtrip(self, addr, data, r, dl, true)
  end
  if not res then return nil, sock, detail end
  local t, nent, err = {}, 0, nil
  while true do
    if res.opcode ~= OP.STAT or res.opaque ~= opaque then
      sock:close()
      return nil, E_PROTOCOL, ("%s: reply opcode %d opaque %d to request opcode %d opaque %d")
        :format(addr, res.opcode, res.opaque, OP.STAT, opaque)
    end
    if is_auth(res.status) then -- the server closes the connection after it
      sock:close()
      return nil, E_AUTH, addr .. ": " .. status_str(res.status)
    end
    if res.status ~= ST.OK then
      if leftover(r) then sock:close() else sock:setkeepalive(self.keepalive_ms, self.pool_size) end
      return nil, status_err(K_OTHER, res.status), addr .. ": " .. status_str(res.status), true
    end
    if res.key == "" then
      if leftover(r) then sock:close() else sock:setkeepalive(self.keepalive_ms, self.pool_size) end
      return t
    end
    nent = nent + 1
    if nent > MAX_STAT_ENTRIES then
      sock:close() -- the rest is not read
      return nil, E_PROTOCOL, addr .. ": more than " .. MAX_STAT_ENTRIES .. " stat entries in one reply"
    end
    t[res.key] = res.value
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
