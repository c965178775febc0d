-- memcached.resty.health: where keys go and which servers are alive: the
-- core's mc_ring through the FFI, probes over cosockets, the error
-- callback, and health shared between workers through a lua_shared_dict.
local ffi = require "ffi"
local type, tostring, ipairs, tonumber = type, tostring, ipairs, tonumber
local sub, ngx_now = string.sub, ngx.now
local ngx_socket_tcp = ngx.socket.tcp
local C = require "memcached.resty.core"
local OP, HEADER_LEN, c_simple, E = C.OP, C.HEADER_LEN, C.c_simple, C.E
local core, err_str, err_num, split_addr = C.core, C.err_str, C.err_num, C.split_addr
local resolve_names, K_OTHER, addr_cache = C.resolve_names, C.K_OTHER, C.addr_cache
local conn = require "memcached.resty.conn"
local server_record, popts_of, next_opaques = conn.server_record, conn.popts_of, conn.next_opaques
local secure = conn.secure

local A = require "memcached.args"
local server_list = A.server_list

-- The core's server list with placement and health (mc_ring): the same
-- server for every key as the C client, dead servers routed around.
local ring_err = ffi.new("char[256]")
local function new_ring(self, list)
  local n = #list
  local addrs, weights = ffi.new("const char *[?]", n + 1), ffi.new("unsigned[?]", n + 1)
  for i, e in ipairs(list) do
    addrs[i - 1] = e[1] -- the strings live in list for the call
    weights[i - 1] = e[2]
  end
  local ring = core.mc_abi_ring_new(self.selector, addrs, weights, n, self.failure_limit,
    self.retry_timeout, self.eject and 1 or 0, ring_err, 256)
  if ring == nil then return nil, E.ERR_BAD_SERVER, ffi.string(ring_err) end
  return ffi.gc(ring, core.mc_abi_ring_free)
end

local function event(self, srv, why, state)
  local fn = self.callback
  if fn then pcall(fn, ffi.string(core.mc_abi_ring_name(self.ring, srv)), why, state) end
end

-- Shared health (option shared_dict): failures of a server are counted in
-- the dict by every worker sharing it, and the one that brings the count
-- to failure_limit marks the server dead there with the time of its next
-- probe, so every worker routes around it at once; a worker whose probe
-- brings it back removes the entry. The count lives for retry_timeout
-- (at least 1 s) from the first failure, and a success of a worker that
-- had counted a failure clears it: failure_limit failures within that
-- time, with no success seen between them, make a server dead for all.
local function dict_keys(self, srv)
  local rec = server_record(self, ffi.string(core.mc_abi_ring_name(self.ring, srv)))
  return rec.dead_key, rec.fail_key, rec.probe_key
end
local function share_dead(self, srv)
  local dict = self.dict
  if not dict then return end
  local at = core.mc_abi_ring_retry_at(self.ring, srv)
  local dk, fk = dict_keys(self, srv)
  if at > 0 then dict:set(dk, at, self.retry_timeout + 1) end
  dict:delete(fk)
end
local function share_alive(self, srv)
  if not self.dict then return end
  local dk, fk = dict_keys(self, srv)
  self.dict:delete(dk)
  self.dict:delete(fk)
end

-- The failures counted in the dict, this one included; nil without one.
local function share_failure(self, srv)
  local dict = self.dict
  if not dict then return nil end
  local _, fk = dict_keys(self, srv)
  return dict:incr(fk, 1, 0, math.max(self.retry_timeout, 1))
end

local fail_count, fail_last = ffi.new("unsigned[1]"), ffi.new("const char *[1]")

-- What a failure costs the server, as the core rules
-- (mc_abi_health_verdict): transport and protocol failures count
-- (failure_limit of them mark it dead); an auth refusal means it
-- answered; a value over the cap or memory here, nothing.
local function server_ok(self, srv)
  local ring = self.ring
  if self.dict and core.mc_abi_ring_alive(ring, srv, fail_count, fail_last) == 1
      and fail_count[0] == 0 then
    return -- nothing counted here: nothing to clear
  end
  if core.mc_abi_ring_ok(ring, srv) == 1 then
    share_alive(self, srv)
    event(self, srv, "responding again", "up")
  elseif self.dict then
    local _, fk = dict_keys(self, srv)
    self.dict:delete(fk)
  end
end

local function server_failed(self, srv, err, detail)
  local verdict = core.mc_abi_health_verdict(err_num[err] or 0)
  if verdict == 1 then return server_ok(self, srv) end
  if verdict == 2 then return end
  local why = tostring(err) .. ": " .. tostring(detail)
  local now = ngx_now()
  if core.mc_abi_ring_failed(self.ring, srv, now, why) == 1 then
    share_dead(self, srv)
    event(self, srv, why, "down")
    return
  end
  local n = share_failure(self, srv)
  if n and n >= self.failure_limit
      and core.mc_abi_ring_dead_until(self.ring, srv, now + self.retry_timeout, why) == 1 then
    share_dead(self, srv)
    event(self, srv, why, "down")
  end
end

-- A server alive here that another worker found dead: dead here too, until
-- the time that worker set. Returns true when it is.
local function dead_elsewhere(self, srv)
  local till = self.dict:get((dict_keys(self, srv)))
  if not till or till <= ngx_now() then return false end
  if core.mc_abi_ring_dead_until(self.ring, srv, till, "found dead by another worker") == 1 then
    event(self, srv, "found dead by another worker", "down")
  end
  return true
end

-- Server names by index, made once per ring (interned servers added as
-- they come): no string is made per operation.
local function server_name(self, srv)
  local names = self.names
  local n = names[srv]
  if not n then
    n = ffi.string(core.mc_abi_ring_name(self.ring, srv))
    names[srv] = n
  end
  return n
end

-- Probes a dead server whose retry time came (claimed by this caller): a
-- connect and a NOOP within probe_timeout, never the caller's request. An
-- answer brings it back (its cosocket goes to the pool, warm for the
-- caller); no answer keeps it dead another retry interval. Returns true
-- when it is usable.
local probe_rep, probe_msg = ffi.new("mc_abi_reply"), ffi.new("char[200]")
local function probe(self, srv)
  local dict = self.dict
  if dict then
    -- one probe per retry interval among the workers sharing the dict:
    -- the first to claim it probes; the others take its verdict from the
    -- dict (the dead entry gone: it answered) or keep routing around
    local dk, _, pk = dict_keys(self, srv)
    if not dict:add(pk, true, math.max(self.retry_timeout, 0.001)) then
      if dict:get(dk) then return false end
      server_ok(self, srv)
      return true
    end
  end
  local addr = server_name(self, srv)
  local host, port = split_addr(addr)
  local sock = ngx_socket_tcp()
  sock:settimeouts(self.probe_ms, self.probe_ms, self.probe_ms)
  local ok, err
  if port then ok, err = sock:connect(host, port, popts_of(self, addr))
  else ok, err = sock:connect(host, popts_of(self, addr)) end
  -- a new connection of a client with TLS or credentials is made secure
  -- first; a refused certificate or credentials is an answer
  if ok and self.secure and (sock:getreusedtimes() or 0) == 0 then
    local e, detail
    ok, e, detail = secure(self, sock, addr, ngx_now() + self.probe_ms / 1000)
    if not ok then
      if core.mc_abi_health_verdict(err_num[e] or 0) == 1 then
        server_ok(self, srv)
        return true
      end
      err = tostring(e) .. ": " .. tostring(detail)
    end
  end
  local opaque = next_opaques(self, 1)
  if ok then ok, err = sock:send(c_simple(OP.NOOP, opaque)) end
  local hdr
  if ok then hdr, err = sock:receive(HEADER_LEN) end
  -- the NOOP's reply, judged by the core; an auth refusal still says the
  -- server is up (memcached -S closes the connection after it)
  local rc = hdr and core.mc_abi_take_one(hdr, #hdr, HEADER_LEN, K_OTHER, OP.NOOP, opaque, nil,
    0, probe_rep, probe_msg, 200)
  if rc == 1 then
    if probe_rep.err == 0 then sock:setkeepalive(self.keepalive_ms, self.pool_size)
    else sock:close() end
    server_ok(self, srv)
    return true
  end
  if rc == -1 then err = "reply: " .. ffi.string(probe_msg)
  elseif rc then err = "not a NOOP reply" end
  sock:close()
  local why = "probe: " .. tostring(err or "no NOOP reply")
  if core.mc_abi_ring_failed(self.ring, srv, ngx_now(), why) == 1 then event(self, srv, why, "down") end
  share_dead(self, srv)
  return false
end

-- Where key goes, dead servers considered: the server's index, or nil,
-- err, detail. A dead server whose retry time came is probed first.
local pick_probe, pick_err = ffi.new("int[1]"), ffi.new("int[1]")
local function dead_detail(self, srv)
  local failures, last = ffi.new("unsigned[1]"), ffi.new("const char *[1]")
  core.mc_abi_ring_alive(self.ring, srv, failures, last)
  return server_name(self, srv) .. ": marked dead after: " .. ffi.string(last[0])
end
local function no_server(self, key, e, srv)
  local err = err_str[e]
  if err == E.ERR_SERVER_DEAD then return nil, err, dead_detail(self, srv) end
  if core.mc_abi_ring_nservers(self.ring) == 0 then return nil, err, "no servers configured" end
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
  local srv = core.mc_abi_ring_intern(ring, addr, ring_err, 256)
  if srv < 0 then return nil, E.ERR_BAD_SERVER, ffi.string(ring_err) end
  -- a host name the selector names is resolved the first time it is met
  -- (once per worker), as the C client does, unless nginx's resolver
  -- dials names (resolver = true)
  if not self.by_resolver and not addr_cache[addr] then
    local rerr, rdetail = resolve_names({ { addr } }, false)
    if rerr then return nil, rerr, rdetail end
  end
  if core.mc_abi_ring_usable(ring, srv, ngx_now(), pick_probe) ~= 0
      or (pick_probe[0] ~= 0 and probe(self, srv)) then
    return srv
  end
  return nil, E.ERR_SERVER_DEAD, dead_detail(self, srv)
end

local function place(self, key)
  if self.custom then return place_custom(self, key) end
  local ring = self.ring
  local srv = core.mc_abi_ring_pick(ring, key, #key, ngx_now(), pick_probe, pick_err)
  if srv >= 0 and pick_probe[0] == 0 and self.dict and dead_elsewhere(self, srv) then
    srv = core.mc_abi_ring_pick(ring, key, #key, ngx_now(), pick_probe, pick_err)
  end
  if srv >= 0 and pick_probe[0] ~= 0 and not probe(self, srv) then
    local dead = srv
    srv = core.mc_abi_ring_around(ring, key, #key, pick_err)
    if srv < 0 then return no_server(self, key, pick_err[0], dead) end
  end
  if srv < 0 then return no_server(self, key, pick_err[0], core.mc_abi_ring_static(ring, key, #key)) end
  return srv
end

-- set_servers(addr, ...) / add_server(addr [, max_conns]): a new list (no
-- change on a bad address). Servers kept from the old list keep their
-- health; their keys stay where they were.
local function replace_ring(self, list)
  local old = self.ring
  local ring, err, detail = new_ring(self, list)
  if not ring then return nil, err, detail end
  err, detail = resolve_names(list, self.by_resolver)
  if err then return nil, err, detail end
  local failures, last = ffi.new("unsigned[1]"), ffi.new("const char *[1]")
  local listed = {}
  for j = 0, core.mc_abi_ring_nservers(ring) - 1 do
    listed[ffi.string(core.mc_abi_ring_name(ring, j))] = j
  end
  for i = 0, core.mc_abi_ring_nservers(old) - 1 do
    local name = ffi.string(core.mc_abi_ring_name(old, i))
    local j = listed[name]
    -- a custom selector's servers (interned as it named them) stay known
    -- with their health, as in the C client
    if not j and self.custom then
      j = core.mc_abi_ring_intern(ring, name, ring_err, 256)
      if j < 0 then j = nil end
    end
    if j then
      core.mc_abi_ring_alive(old, i, failures, last)
      -- replay the old health: its failures (and death) as of now
      for _ = 1, tonumber(failures[0]) do core.mc_abi_ring_failed(ring, j, ngx_now(), last[0]) end
    end
  end
  self.ring, self.list, self.names = ring, list, {}
  return true
end


return {
  server_list = server_list,
  ring_err = ring_err,
  new_ring = new_ring,
  event = event,
  share_dead = share_dead,
  share_alive = share_alive,
  server_failed = server_failed,
  server_ok = server_ok,
  dead_elsewhere = dead_elsewhere,
  server_name = server_name,
  probe = probe,
  pick_probe = pick_probe,
  pick_err = pick_err,
  dead_detail = dead_detail,
  no_server = no_server,
  custom_addr = custom_addr,
  place_custom = place_custom,
  place = place,
  replace_ring = replace_ring,
}
