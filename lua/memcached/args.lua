-- memcached.args: the argument rules the Lua drivers (memcached.resty,
-- memcached.async) share with the C binding (src/lua): keys, optional
-- integers, the one-table call form, server lists, custom selectors. Pure
-- Lua, no I/O; the core's rules come from the C core, these are the
-- binding's.
local type, error, tostring, pcall, pairs, floor = type, error, tostring, pcall, pairs, math.floor

local M = {}

-- The details both drivers give with ERR_CLIENT_CLOSED and
-- ERR_MALFORMED_KEY (the C client's words).
M.CLOSED_DETAIL = "the client was closed"
M.KEY_DETAIL = "keys are 1 to 250 bytes without spaces or control characters"

-- A key argument must be a string (what makes a valid key is the core's
-- rule, asked separately).
function M.check_key(key)
  if type(key) ~= "string" then
    error("bad argument #1 (key): string expected, got " .. type(key), 3)
  end
end

-- An optional integer argument in 0..hi (2^64 without hi).
function M.opt_uint(n, name, v, hi)
  if v ~= nil and (type(v) ~= "number" or v ~= floor(v) or v < 0 or (hi and v > hi)) then
    error(("bad argument #%d (%s): integer 0..%s expected, got %s")
      :format(n, name, tostring(hi or "2^64"), tostring(v)), 3)
  end
  return v and floor(v)
end

-- The one-table form ({key =, value =, expiration =, ...}) as positional
-- values; `expiration` also answers to `exptime`.
local function field(t, name)
  if name == "expiration" then return t.expiration or t.exptime end
  return name and t[name]
end
M.field = field
function M.fields(t, a, b, c, d, e)
  return field(t, a), field(t, b), field(t, c), field(t, d), field(t, e)
end

-- The server list as the C client reads it: strings, {addr, weight = n},
-- {addr, n}, or lists of those; {addr, weight} pairs appended to out.
local function server_list(list, out)
  out = out or {}
  for i = 1, #list do
    local e = list[i]
    if type(e) == "string" then out[#out + 1] = { e, 1 }
    elseif type(e) == "table" and type(e[1]) == "string" then
      local w = e.weight or e[2] or 1
      if type(w) ~= "number" or w ~= floor(w) or w < 1 or w > 65535 then
        error("server weight must be an integer 1..65535", 3)
      end
      out[#out + 1] = { e[1], floor(w) }
    elseif type(e) == "table" then server_list(e, out)
    else
      error("bad server #" .. i .. ": \"host:port\", a unix socket path or {addr, weight = n} expected, got "
        .. type(e), 3)
    end
  end
  return out
end
M.server_list = server_list

-- A custom selector's address for key: true, addr; or false, its error.
-- (Kept out of the drivers' place: a closure there would stop LuaJIT from
-- compiling it.)
function M.custom_addr(sel, key)
  if type(sel) == "function" then return pcall(sel, key) end
  return pcall(sel.pick_server, sel, key)
end

-- set_multi(items, exptime) and delete_multi(keys), checked as the C
-- client checks them (a wrong type raises at the method's caller): the
-- list of {key [, bytes]} to send, in order, and the results known before
-- anything is sent ({key = err} for a malformed key, a value that cannot be
-- encoded or one over max_value_size). D gives the driver's key_ok,
-- mp_encode and E (the ERR_* strings). Errors are raised at level 3: the
-- caller of the method that calls these. nil for a closed client (checked
-- after the arguments' types, before their contents, as the C client).
local U32 = 4294967295
function M.set_items(self, items, exptime, D)
  if type(items) ~= "table" then error("bad argument #1 (items): table expected, got " .. type(items), 3) end
  if exptime ~= nil and (type(exptime) ~= "number" or exptime ~= floor(exptime)
      or exptime < 0 or exptime > U32) then
    error("bad argument #2 (expiration): integer 0..4294967295 expected, got " .. tostring(exptime), 3)
  end
  if self.closed then return nil end
  local key_ok, mp_encode, E = D.key_ok, D.mp_encode, D.E
  local list, results = {}, {}
  for k, v in pairs(items) do
    if type(k) ~= "string" then
      error("bad argument #1 (items): keys must be strings, got " .. type(k), 3)
    end
    local e = { k }
    list[#list + 1] = e
    if not key_ok(k) then results[k] = E.ERR_MALFORMED_KEY
    else
      local bytes = mp_encode(v)
      if not bytes then results[k] = E.ERR_UNENCODABLE
      elseif #bytes > self.max_value_size then results[k] = E.ERR_VALUE_TOO_LARGE
      else e[2] = bytes end
    end
  end
  return list, results, floor(exptime or 0)
end

-- delete_multi's keys: each once (a second DELETEQ would turn its success
-- into a miss).
function M.delete_keys(self, keys, D)
  if type(keys) ~= "table" then error("bad argument #1 (keys): table expected, got " .. type(keys), 3) end
  if self.closed then return nil end
  local key_ok, E_KEY = D.key_ok, D.E.ERR_MALFORMED_KEY
  local list, results, seen = {}, {}, {}
  for i = 1, #keys do
    local k = keys[i]
    if type(k) ~= "string" then
      error(("bad argument #1 (keys): key #%d is a %s, not a string"):format(i, type(k)), 3)
    end
    if not seen[k] then
      seen[k] = true
      list[#list + 1] = { k }
      if not key_ok(k) then results[k] = E_KEY end
    end
  end
  return list, results
end

return M
