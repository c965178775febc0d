-- memcached.methods: the single-key methods and server-list methods both
-- Lua drivers share (memcached.resty over nginx's cosockets and LuaJIT's
-- FFI, memcached.async over memcached.core under any event loop): their
-- arguments as the C client checks them, the one-table form, msgpack,
-- max_value_size, the delete_lock marker and the shapes of their returns.
-- Only the request itself is the driver's (D.call). Usage:
--
--   require "memcached.methods"(D, M)   -- adds the methods to M
--
-- D holds (and gets get_reply(self, value, cas, flags, addr): what get
-- returns for call's returns):
--   call(self, key, kind, frame, op, ...)  one request to key's server,
--       framed by the driver's frame for op; returns the reply's value (a
--       string, "" for none), cas, flags and the server's address, or nil,
--       err, detail (a non-OK status mapped as kind says; a delete_lock
--       marker read as a miss comes with no detail)
--   get, touch, store, concat, delete, arith  the driver's frames, passed
--       back to call as they are
--   counter_value(bytes)  a counter reply's value, or nil
--   mp_encode(value)  bytes, or nil, why
--   replace_ring(self, list)  the server list replaced: true, or nil,
--       err, detail
--   static(self, key)  key's server (an index) with every server healthy,
--       or < 0 with none; server_name(self, index)  its address
--   E  the ERR_* strings; LOCK_FLAGS, LOCK_VALUE, NO_CREATE  the core's
--   K_GET, K_SET, K_ADD, K_REPLACE  the reply kinds (enum mc_op_kind)
--
-- Argument errors are raised at the caller of the method (every method
-- tail-calls the helper that checks, so the levels below count from it).
local A = require "memcached.args"
local memcached = require "memcached"

local type, error, tostring, ipairs, floor = type, error, tostring, ipairs, math.floor
local check_key, opt_uint, fields, server_list = A.check_key, A.opt_uint, A.fields, A.server_list
local OP = memcached.codec.op
local OP_GETK, OP_GATK, OP_TOUCH = OP.GETK, OP.GATK, OP.TOUCH
local U32 = 4294967295
local CLOSED_DETAIL, KEY_DETAIL = A.CLOSED_DETAIL, A.KEY_DETAIL
local mp_decode = memcached.decode

-- The item's value: msgpack-decoded when it carries the client's flag;
-- true, value or false, why.
local function item_value(self, flags, value)
  if flags ~= self.mp_flag then return true, value end
  local v, err = mp_decode(value)
  if v == nil and err ~= nil then return false, err end
  return true, v
end

return function(D, M)
  local call, counter_value, mp_encode = D.call, D.counter_value, D.mp_encode
  local f_get, f_touch, f_store, f_concat, f_delete, f_arith = D.get, D.touch, D.store, D.concat,
    D.delete, D.arith
  local E = D.E
  local E_MISS, E_PROTOCOL, E_CLIENT_CLOSED = E.ERR_CACHE_MISS, E.ERR_PROTOCOL, E.ERR_CLIENT_CLOSED
  local E_KEY, E_UNENCODABLE, E_UNDECODABLE = E.ERR_MALFORMED_KEY, E.ERR_UNENCODABLE, E.ERR_UNDECODABLE
  local E_NON_NUMERIC, E_TOO_LARGE = E.ERR_NON_NUMERIC, E.ERR_VALUE_TOO_LARGE
  local K_GET, K_SET, K_ADD, K_REPLACE = D.K_GET, D.K_SET, D.K_ADD, D.K_REPLACE
  local LOCK_FLAGS, LOCK_VALUE, NO_CREATE = D.LOCK_FLAGS, D.LOCK_VALUE, D.NO_CREATE
  local key_ok = D.key_ok

  -- A value over max_value_size is refused before anything is sent.
  local function too_large(self, n)
    return nil, E_TOO_LARGE,
      ("a value of %d bytes is over max_value_size (%d)"):format(n, self.max_value_size)
  end

  -- What get and get_and_touch return for call's returns (a driver's own
  -- path for get uses it too: D.get_reply).
  local function get_reply(self, value, cas, flags, addr)
    if not value then return nil, cas, flags end
    if flags ~= self.mp_flag then return value, cas, flags end
    local ok, v = item_value(self, flags, value)
    if not ok then return nil, E_UNDECODABLE, addr .. ": " .. tostring(v) end
    return v, cas, flags
  end
  D.get_reply = get_reply

  -- get, get_and_touch, touch
  local function key_op(self, op, key, exptime)
    local value, cas, flags, addr
    if op == OP_GETK and type(key) == "string" then
      value, cas, flags, addr = call(self, key, K_GET, f_get, op, key)
    else
      if type(key) == "table" then key, exptime = fields(key, "key", "expiration") end
      check_key(key)
      exptime = opt_uint(2, "expiration", exptime, U32)
      if op == OP_GETK then value, cas, flags, addr = call(self, key, K_GET, f_get, op, key)
      else value, cas, flags, addr = call(self, key, K_GET, f_touch, op, key, exptime) end
    end
    if op == OP_TOUCH and value then return true end
    return get_reply(self, value, cas, flags, addr)
  end

  function M.get(self, key) return key_op(self, OP_GETK, key) end
  function M.get_and_touch(self, key, exptime) return key_op(self, OP_GATK, key, exptime) end
  function M.touch(self, key, exptime) return key_op(self, OP_TOUCH, key, exptime) end

  -- set/add/replace/compare_and_swap (msgpack) and *_raw_data (bytes).
  local function store(self, op, kind, raw, is_cas, key, value, a3, a4, flags)
    local exptime, cas = a3, a4
    if type(key) == "table" then
      key, value, exptime, cas, flags = fields(key, "key", "value", "expiration", "cas", "flags")
    elseif is_cas then
      cas, exptime = a3, a4
    end
    check_key(key)
    exptime = opt_uint(3, "expiration", exptime, U32)
    flags = opt_uint(5, "flags", flags, U32)
    cas = opt_uint(4, "cas", cas)
    if is_cas and (cas or 0) == 0 then
      error("bad argument #3 (cas): compare_and_swap needs the cas of a previous get", 3)
    end
    if raw or (flags and flags ~= self.mp_flag) then
      if type(value) ~= "string" then
        error("bad argument #2 (value): string expected for raw data, got " .. type(value), 3)
      end
      flags = flags or 0
    else
      -- a closed client or a bad key is told before the value is encoded
      if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
      if not key_ok(key) then return nil, E_KEY, KEY_DETAIL end
      local err
      value, err = mp_encode(value)
      if not value then return nil, E_UNENCODABLE, err end
      flags = self.mp_flag
    end
    if #value > self.max_value_size and not self.closed then return too_large(self, #value) end
    local ok, rcas, detail = call(self, key, kind, f_store, op, cas, key, flags, exptime, value)
    if not ok then return nil, rcas, detail end
    return rcas
  end

  function M.set(self, k, v, e, c, f) return store(self, OP.SET, K_SET, false, false, k, v, e, c, f) end
  function M.add(self, k, v, e, c, f) return store(self, OP.ADD, K_ADD, false, false, k, v, e, c, f) end
  function M.replace(self, k, v, e, c, f)
    return store(self, OP.REPLACE, K_REPLACE, false, false, k, v, e, c, f)
  end
  function M.compare_and_swap(self, k, v, c, e, f)
    return store(self, OP.SET, K_REPLACE, false, true, k, v, c, e, f)
  end
  function M.set_raw_data(self, k, v, e, c, f) return store(self, OP.SET, K_SET, true, false, k, v, e, c, f) end
  function M.add_raw_data(self, k, v, e, c, f) return store(self, OP.ADD, K_ADD, true, false, k, v, e, c, f) end
  function M.replace_raw_data(self, k, v, e, c, f)
    return store(self, OP.REPLACE, K_REPLACE, true, false, k, v, e, c, f)
  end

  local function concat_op(self, op, key, bytes, cas)
    if type(key) == "table" then key, bytes, cas = fields(key, "key", "value", "cas") end
    check_key(key)
    if type(bytes) ~= "string" then
      error("bad argument #2 (bytes): string expected, got " .. type(bytes), 3)
    end
    cas = opt_uint(3, "cas", cas)
    if #bytes > self.max_value_size and not self.closed then return too_large(self, #bytes) end
    local ok, rcas, detail = call(self, key, K_REPLACE, f_concat, op, cas, key, bytes)
    if not ok then return nil, rcas, detail end
    return rcas
  end

  function M.append(self, key, bytes, cas) return concat_op(self, OP.APPEND, key, bytes, cas) end
  function M.prepend(self, key, bytes, cas) return concat_op(self, OP.PREPEND, key, bytes, cas) end

  function M.delete(self, key, cas)
    if type(key) == "table" then key, cas = fields(key, "key", "cas") end
    check_key(key)
    cas = opt_uint(2, "cas", cas)
    local kind = (cas or 0) ~= 0 and K_REPLACE or K_GET
    local res, err, detail = call(self, key, kind, f_delete, OP.DELETE, cas, key)
    if not res then return nil, err, detail end
    return true
  end

  -- memcached 1.4 dropped delete's hold time: delete_lock(key, seconds)
  -- REPLACEs the item with the core's marker (so a missing key stays a
  -- miss), which expires after `seconds`; 0 is a plain delete. Table form:
  -- {key =, seconds =} (or expiration =).
  function M.delete_lock(self, key, seconds)
    if type(key) == "table" then
      local t = key
      key, seconds = t.key, t.seconds
      if seconds == nil then seconds = t.expiration end
    end
    check_key(key)
    if type(seconds) ~= "number" or seconds ~= floor(seconds) then
      error("bad argument #2 (seconds): integer expected, got " .. type(seconds), 2)
    end
    if seconds < 0 or seconds > U32 then error("bad argument #2 (seconds): must be 0..4294967295", 2) end
    local res, err, detail
    if seconds == 0 then
      res, err, detail = call(self, key, K_GET, f_delete, OP.DELETE, nil, key)
    else
      res, err, detail = call(self, key, K_GET, f_store, OP.REPLACE, nil, key, LOCK_FLAGS,
        floor(seconds), LOCK_VALUE)
    end
    if not res then return nil, err, detail end
    return true
  end

  -- A counter operation: value, cas; or nil, err, detail.
  local function arith_call(self, op, key, delta, initial, exp)
    local value, rcas, detail, addr = call(self, key, K_GET, f_arith, op, key, delta, initial, exp)
    if not value then
      local err = rcas
      if err == E_NON_NUMERIC then
        -- a delete_lock marker is not a number either, but reads as a miss
        -- (call reads the marker as a miss without a detail; a real miss
        -- names its server)
        local g, gerr, gdetail = call(self, key, K_GET, f_get, OP_GETK, key)
        if not g and gerr == E_MISS and gdetail == nil then
          return nil, E_MISS, "the key is locked by delete_lock"
        end
        detail = "the item is not a decimal number"
      end
      return nil, err, detail
    end
    local n = counter_value(value)
    if not n then return nil, E_PROTOCOL, addr .. ": counter reply of " .. #value .. " bytes, not 8" end
    return n, rcas
  end

  -- increment/decrement(key, delta [, initial [, expiration]]) -> value, cas
  local function arith(self, op, key, delta, initial, exptime)
    if type(key) == "table" then
      key, delta, initial, exptime = fields(key, "key", "delta", "initial", "expiration")
    end
    check_key(key)
    if delta == nil then error("bad argument #2 (delta): integer expected, got nil", 3) end
    delta = opt_uint(2, "delta", delta)
    initial = opt_uint(3, "initial", initial)
    exptime = opt_uint(4, "expiration", exptime, U32)
    local exp = initial and (exptime or 0) or NO_CREATE
    return arith_call(self, op, key, delta, initial, exp)
  end

  function M.increment(self, key, delta, initial, exptime)
    return arith(self, OP.INCREMENT, key, delta, initial, exptime)
  end
  function M.decrement(self, key, delta, initial, exptime)
    return arith(self, OP.DECREMENT, key, delta, initial, exptime)
  end

  -- touch_atomic_value(key) -> value: the counter as it is (an increment by
  -- 0 that never creates the key), as the C client's (further arguments are
  -- ignored there too). Table form {key =}.
  function M.touch_atomic_value(self, key)
    if type(key) == "table" then key = key.key end
    check_key(key)
    local n, err, detail = arith_call(self, OP.INCREMENT, key, 0, nil, NO_CREATE)
    if n == nil then return nil, err, detail end
    return n
  end

  -- ---- servers ----

  -- set_server_error_callback(fn(addr, reason, "down" | "up")): told of
  -- every server that turns dead or comes back.
  function M.set_server_error_callback(self, fn)
    if fn ~= nil and type(fn) ~= "function" then
      error("bad argument #1 (callback): function or nil expected, got " .. type(fn), 2)
    end
    self.callback = fn
    return true
  end

  -- pick_server(key): where key goes with every server healthy (or where
  -- the custom selector says)
  local custom_addr, static, server_name = A.custom_addr, D.static, D.server_name
  function M.pick_server(self, key)
    check_key(key)
    if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
    if not key_ok(key) then return nil, E_KEY end
    if self.custom then
      local ok, addr = custom_addr(self.custom, key)
      if not ok or type(addr) ~= "string" then return nil, E.ERR_NO_SERVERS, tostring(addr) end
      return addr
    end
    local srv = static(self, key)
    if srv < 0 then return nil, E.ERR_NO_SERVERS, "no servers configured" end
    return server_name(self, srv)
  end


  function M.set_servers(self, ...)
    if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
    return D.replace_ring(self, server_list({ ... }))
  end

  function M.add_server(self, addr, max_conns)
    if type(addr) ~= "string" and type(addr) ~= "table" then
      error("bad argument #1 (addr): \"host:port\", a unix socket path or {addr, weight = n} expected, got "
        .. type(addr), 2)
    end
    opt_uint(2, "max_conns", max_conns, 1000000)
    if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
    local list = {}
    for i, e in ipairs(self.list) do list[i] = e end
    server_list({ addr }, list)
    return D.replace_ring(self, list)
  end

  return M
end
