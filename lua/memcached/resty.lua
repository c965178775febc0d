-- memcached.resty: the memcached client for OpenResty/nginx workers.
--
-- The C client's methods, arguments, returns and ERR_* values (README), but
-- every byte travels over ngx.socket.tcp cosockets, so a request handler
-- yields instead of blocking the worker. Every rule is the C core's,
-- reached through LuaJIT's FFI: framing and the checks of replies
-- (memcached.resty.core), placement and server health
-- (memcached.resty.health, the core's mc_ring), so both clients put a key
-- on the same server. memcached.resty.conn moves the bytes;
-- memcached.resty.batch holds the pipelined methods; this file makes
-- clients and holds the single-key methods.
--
-- A connection goes back to nginx's keepalive pool only after a whole reply
-- was read; any error or timeout closes it, so no caller ever reads a reply
-- meant for another. An auth-status reply (memcached -S, which closes the
-- connection after it) closes it too. A request that is safe to send twice
-- and fails on a pooled connection before any byte of its reply (the
-- server closed it meanwhile: restarted, idle timeout) is sent once more on
-- a fresh connection, as the C client does. Every reply's opaque and
-- opcode are checked, and an item's reply must name its key (GETK, GATK).
-- A client's opaques start at a random value (pooled connections are
-- shared by clients), so a reply nobody asked for cannot guess them.
local memcached = require "memcached"
local _M = { _VERSION = memcached._VERSION }
local ffi = require "ffi"
local type, error, tostring, pairs, ipairs = type, error, tostring, pairs, ipairs
local setmetatable, tonumber, floor, sub = setmetatable, tonumber, math.floor, string.sub
local ngx_now = ngx.now
local C = require "memcached.resty.core"
local OP, ST, NO_CREATE, c_get, c_store = C.OP, C.ST, C.NO_CREATE, C.c_get, C.c_store
local c_concat, c_delete, c_arith, c_touch = C.c_concat, C.c_delete, C.c_arith, C.c_touch
local status_str, random32, mp_encode, E = C.status_str, C.random32, C.mp_encode, C.E
local E_KEY = C.E_KEY
local E_CLIENT_CLOSED, E_AUTH, CLOSED_DETAIL = C.E_CLIENT_CLOSED, C.E_AUTH, C.CLOSED_DETAIL
local KEY_DETAIL, core = C.KEY_DETAIL, C.core
local LOCK_FLAGS, LOCK_VALUE, counter_value = C.LOCK_FLAGS, C.LOCK_VALUE, C.counter_value
local K_GET, K_SET, K_ADD, K_REPLACE = C.K_GET, C.K_SET, C.K_ADD, C.K_REPLACE
local resend_safe, key_ok = C.resend_safe, C.key_ok
local resolve_names = C.resolve_names
local conn = require "memcached.resty.conn"
local next_opaques, take_reader = conn.next_opaques, conn.take_reader
local give_reader, roundtrip, release = conn.give_reader, conn.roundtrip, conn.release
local H = require "memcached.resty.health"
local server_list, new_ring, server_failed = H.server_list, H.new_ring, H.server_failed
local server_ok, server_name = H.server_ok, H.server_name
local place, replace_ring = H.place, H.replace_ring

for k, v in pairs(E) do _M[k] = v end
local mt = { __index = _M }

local OPTIONS = { servers = 1, timeout = 1, connect_timeout = 1, io_timeout = 1,
  pool_size = 1, keepalive_timeout = 1, msgpack_flag = 1, selector = 1,
  failure_limit = 1, retry_timeout = 1, eject = 1, probe_timeout = 1, resolver = 1,
  shared_dict = 1, max_conns = 1, max_idle = 1, max_value_size = 1, tls = 1, username = 1,
  password = 1 }
local SELECTORS = { modulo = 0, ketama = 1, gomemcached = 2 }
local MAX_VALUE = memcached.codec.DEFAULT_MAX_BODY -- the C client's default max_value_size

local function opt_count(opts, name, def, lo, hi)
  local v = opts[name]
  if v == nil then return def end
  if type(v) ~= "number" or v ~= floor(v) or v < lo or v > hi then
    error("option '" .. name .. "' must be an integer " .. lo .. ".." .. hi, 3)
  end
  return v
end

local function opt_seconds(opts, name, def, lo)
  local v = opts[name]
  if v == nil then return def end
  if type(v) ~= "number" or v < lo then error("option '" .. name .. "' must be a number >= " .. lo, 3) end
  return v
end

-- TLS (tls = true | {server_name =, verify =, cert_file =, key_file =}).
-- What a cosocket cannot set per connection is nginx's: the trusted CAs
-- (lua_ssl_trusted_certificate, lua_ssl_verify_depth), ciphers and
-- protocols; those options of the C client are refused here, naming the
-- directive, rather than ignored. A client certificate is parsed once
-- (ngx.ssl) and given to each handshake (tcpsock:setclientcert). Returns
-- the options, or nil, err, detail.
local NGINX_TLS = { ca_file = "lua_ssl_trusted_certificate", ca_path = "lua_ssl_trusted_certificate",
  ciphers = "lua_ssl_ciphers", min_version = "lua_ssl_protocols" }
local TLS_FIELDS = { server_name = 1, verify = 1, cert_file = 1, key_file = 1 }
local function read_pem(path, what, parse)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local pem = f:read("*a")
  f:close()
  local v
  v, err = parse(pem or "")
  if not v then return nil, what .. " " .. path .. ": " .. tostring(err) end
  return v
end
local function tls_options(t)
  if t == nil or t == false then return nil end
  if t == true then t = {} end
  if type(t) ~= "table" then error("option 'tls' must be a boolean or a table, got " .. type(t), 3) end
  for k in pairs(t) do
    if NGINX_TLS[k] then
      error("option 'tls." .. k .. "' is nginx's for cosockets: use the " .. NGINX_TLS[k]
        .. " directive", 3)
    end
    if not TLS_FIELDS[k] then error("unknown option 'tls." .. tostring(k) .. "'", 3) end
  end
  if t.verify ~= nil and type(t.verify) ~= "boolean" then error("option 'tls.verify' must be a boolean", 3) end
  for _, k in ipairs { "server_name", "cert_file", "key_file" } do
    if t[k] ~= nil and type(t[k]) ~= "string" then error("option 'tls." .. k .. "' must be a string", 3) end
  end
  if (t.cert_file == nil) ~= (t.key_file == nil) then
    error("options 'tls.cert_file' and 'tls.key_file' go together", 3)
  end
  local o = { server_name = t.server_name, verify = t.verify ~= false }
  o.tag = "|tls:" .. (o.server_name or "") .. (o.verify and ":verify" or ":noverify")
  if t.cert_file then
    local ssl = require "ngx.ssl"
    local err
    o.cert, err = read_pem(t.cert_file, "client certificate", ssl.parse_pem_cert)
    if not o.cert then return nil, _M.ERR_TLS, err end
    o.pkey, err = read_pem(t.key_file, "client key", ssl.parse_pem_priv_key)
    if not o.pkey then return nil, _M.ERR_TLS, err end
    o.tag = o.tag .. ":" .. t.cert_file
  end
  return o
end

-- username/password for SASL PLAIN: checked here by the core's framing
-- (at most 255 bytes each, no NUL).
local function credentials(opts)
  local user, pass = opts.username, opts.password
  if user == nil and pass == nil then return nil end
  if type(user) ~= "string" or type(pass) ~= "string" then
    error("options 'username' and 'password' go together, as strings", 3)
  end
  local buf = ffi.new("char[?]", 24 + 2 * 255 + 7)
  if core.mc_abi_sasl_frame(buf, 24 + 2 * 255 + 7, 1, 0, user, #user, pass, #pass) <= 0 then
    error("options 'username' and 'password': at most 255 bytes each, without NUL bytes", 3)
  end
  return user, pass
end

-- new{servers =, timeout =, connect_timeout =, io_timeout =, pool_size =,
-- keepalive_timeout =, msgpack_flag =, selector =, failure_limit =,
-- retry_timeout =, eject =, probe_timeout =, tls =, username =, password =},
-- or new(server, ...).
function _M.new(opts, ...)
  if type(opts) ~= "table" or opts[1] ~= nil then opts = { servers = { opts, ... } } end
  for k in pairs(opts) do
    if not OPTIONS[k] then error("unknown option '" .. tostring(k) .. "'", 2) end
  end
  local timeout = opts.timeout or memcached.DEFAULT_TIMEOUT
  local sel = opts.selector or "ketama"
  local custom
  if type(sel) == "function" or type(sel) == "table" then custom, sel = sel, "ketama"
  elseif SELECTORS[sel] == nil then error("unknown selector '" .. tostring(sel) .. "'", 2) end
  local failure_limit = opts.failure_limit or 2
  if type(failure_limit) ~= "number" or failure_limit < 1 or failure_limit ~= floor(failure_limit) then
    error("option 'failure_limit' must be 1 or more", 2)
  end
  local connect = opt_seconds(opts, "connect_timeout", timeout, 0.001)
  local max_conns = opt_count(opts, "max_conns", 0, 0, 1000000)
  local max_value = opt_count(opts, "max_value_size", MAX_VALUE, 1024, 2147483647)
  local user, pass = credentials(opts)
  local tls, terr, tdetail = tls_options(opts.tls)
  if terr then return nil, terr, tdetail end
  local tag = tls and tls.tag or ""
  if user then tag = tag .. "|sasl:" .. ngx.md5(user .. "\0" .. pass) end
  local self = setmetatable({
    connect_ms = floor(connect * 1000 + 0.5),
    io_timeout = opt_seconds(opts, "io_timeout", timeout, 0.001),
    -- nginx's pool: max_conns caps every connection to a server (per
    -- worker; beyond it ERR_BUSY), and the pool keeps as many idle;
    -- without it, pool_size (or max_idle) idle connections
    pool_size = max_conns > 0 and max_conns or opts.pool_size
      or opt_count(opts, "max_idle", nil, 0, 1000000),
    max_conns = max_conns,
    max_value_size = max_value,
    max_body = max_value + 512, -- the value, its key and extras
    keepalive_ms = floor((opts.keepalive_timeout or 60) * 1000 + 0.5),
    mp_flag = opts.msgpack_flag or 1,
    selector = SELECTORS[sel],
    custom = custom,
    failure_limit = failure_limit,
    retry_timeout = opt_seconds(opts, "retry_timeout", 1.0, 0),
    probe_ms = floor(math.min(opt_seconds(opts, "probe_timeout", 0.02, 0.001), connect) * 1000 + 0.5),
    eject = opts.eject ~= false,
    seq = random32(), -- next opaque
    readers = {}, -- idle codec readers
    abs = {}, -- idle core batches (memcached.resty.batch)
    records = {}, -- per server address (server_record)
    tls = tls, -- TLS options (tls_options), or nil
    user = user, pass = pass, -- SASL PLAIN's credentials, or nil
    secure = (tls or user) and true or false, -- new connections need a handshake or SASL
    pool_tag = tag, -- keeps their connections in pools of their own
  }, mt)
  if opts.shared_dict ~= nil then
    local dict = ngx.shared and ngx.shared[opts.shared_dict]
    if not dict then
      error("option 'shared_dict': no lua_shared_dict named '" .. tostring(opts.shared_dict) .. "'", 2)
    end
    self.dict = dict
  end
  local list = server_list(opts.servers or {})
  local ring, err, detail = new_ring(self, list)
  if not ring then return nil, err, detail end
  self.by_resolver = opts.resolver == true
  err, detail = resolve_names(list, self.by_resolver)
  if err then return nil, err, detail end
  self.ring, self.list, self.names = ring, list, {}
  return self
end

-- hold() / unhold(): for a handler that makes many calls, as
-- lua-resty-memcached's connect / set_keepalive: between them, this
-- request's calls keep one connection per server instead of taking it
-- from nginx's pool and giving it back each time; unhold gives them back.
-- Held connections still open when the request ends are closed by nginx.
function _M.hold(self)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if not conn.hold(self) then error("hold: only inside a request (no request here)", 2) end
  return true
end
function _M.unhold(self)
  return conn.unhold(self)
end

-- One request to the server of key, framed by enc(op, opaque, ...).
-- Returns the reply's value (a string, "" for none), cas, flags and the
-- server's address, or nil, err, detail with a
-- non-OK status mapped as `kind` says (by the core, which also judges the
-- reply: mc_abi_take_one). A request that may be sent twice (resend_safe)
-- gets it once more on a fresh connection when a pooled one turns out
-- closed.
local AUTH, err_str = C.err_num[E_AUTH], C.err_str
local function call(self, key, kind, enc, op, ...)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  if not key_ok(key) then return nil, E_KEY, KEY_DETAIL end
  local srv, err, detail = place(self, key)
  if not srv then return nil, err, detail end
  local addr = server_name(self, srv)
  local dl = ngx_now() + self.io_timeout
  local opaque = next_opaques(self, 1)
  local data = enc(op, opaque, ...)
  local r = take_reader(self)
  -- an item's reply names its key (error replies may name none)
  r.kind, r.op, r.opaque, r.key = kind, op, opaque, (op == OP.GETK or op == OP.GATK) and key or nil
  local res, sock, stale
  res, sock, detail, stale = roundtrip(self, addr, data, r, dl)
  if not res and stale and resend_safe(data) then
    r:reset()
    res, sock, detail = roundtrip(self, addr, data, r, dl, true)
  end
  local e, st, value, cas, flags
  if res then e, st, value, cas, flags = r.err, r.status, r.value, r.cas, r.flags end
  give_reader(self, r)
  if not res then
    server_failed(self, srv, sock, detail)
    return nil, sock, detail
  end
  server_ok(self, srv)
  if e == 0 then
    release(self, addr, sock)
    return value, cas, flags, addr
  end
  local msg = st ~= ST.OK and value ~= "" and ": " .. sub(value, 1, 120) or ""
  if e == AUTH then
    sock:close() -- the server closes it after this reply
    return nil, E_AUTH, addr .. ": " .. status_str(st) .. msg
  end
  release(self, addr, sock)
  if st == ST.OK then return nil, err_str[e] end -- delete_lock's marker: a miss
  return nil, err_str[e], addr .. ": " .. status_str(st) .. msg
end

-- get, set, ... touch_atomic_value, set_servers, add_server, pick_server,
-- set_server_error_callback: the methods both Lua drivers share, over call
-- (memcached.methods)
require "memcached.methods"({
  call = call, get = c_get, touch = c_touch, store = c_store, concat = c_concat,
  delete = c_delete, arith = c_arith, counter_value = counter_value,
  mp_encode = mp_encode, replace_ring = replace_ring, key_ok = key_ok, E = _M,
  static = function(self, key) return core.mc_abi_ring_static(self.ring, key, #key) end,
  server_name = server_name,
  LOCK_FLAGS = LOCK_FLAGS, LOCK_VALUE = LOCK_VALUE, NO_CREATE = NO_CREATE,
  K_GET = K_GET, K_SET = K_SET, K_ADD = K_ADD, K_REPLACE = K_REPLACE,
}, _M)

-- servers() -> {{addr =, alive =, failures =, last_error =}, ...}: this
-- worker's view of each server's health.
function _M.servers(self)
  if self.closed then return nil, E_CLIENT_CLOSED, CLOSED_DETAIL end
  local out, failures, last = {}, ffi.new("unsigned[1]"), ffi.new("const char *[1]")
  for i = 0, core.mc_abi_ring_nservers(self.ring) - 1 do
    local alive = core.mc_abi_ring_alive(self.ring, i, failures, last) ~= 0
    local e = ffi.string(last[0])
    out[i + 1] = { addr = server_name(self, i), alive = alive, failures = tonumber(failures[0]),
      last_error = e ~= "" and e or nil }
  end
  return out
end

-- Pooled connections belong to nginx: close only retires the client.
function _M.close(self)
  self.closed = true
  return true
end
_M.exit = _M.close



-- the batched methods (memcached.resty.batch)
for k, v in pairs(require "memcached.resty.batch") do _M[k] = v end

return _M
