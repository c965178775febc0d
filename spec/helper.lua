-- Shared by the specs: loads the freshly built module and starts/stops real
-- memcached servers on free loopback ports (stopped by PID).
local root = debug.getinfo(1, "S").source:match("^@(.*)spec/helper%.lua$") or "./"
if root == "" then root = "./" end
-- MEMCACHED_SO_DIR picks another build of the module (make asan).
package.cpath = (os.getenv("MEMCACHED_SO_DIR") and (os.getenv("MEMCACHED_SO_DIR") .. "/?.so;") or "")
  .. root .. "?.so;" .. package.cpath
package.path = root .. "lua/?.lua;" .. root .. "lua/?/init.lua;" .. root .. "spec/?.lua;" .. package.path

local socket = require "socket"

local H = { root = root }

-- The suite runs under Lua 5.1, 5.2, 5.3, 5.4 and LuaJIT (make test
-- LUA_VERSION=...). The specs are written in the common subset; what
-- differs is reached through these few names.

-- The interpreter running the specs, for child processes that must load
-- the same build of the module.
H.lua_bin = jit and "luajit" or ("lua" .. _VERSION:match("%d+%.%d+"))
-- True where numbers have an integer subtype (5.3+): integers are exact to
-- 2^63 there; before, every number is a double, exact to 2^53.
H.integers = math.type ~= nil

-- math.type where there is one; before 5.3, an integral number in the
-- int64 range counts as "integer".
function H.mtype(x)
  if math.type then return math.type(x) end
  if type(x) ~= "number" then return nil end
  if x == math.floor(x) and x >= -2 ^ 63 and x < 2 ^ 63 then return "integer" end
  return "float"
end

-- math.tointeger's answer for a number (nil if not integral).
function H.tointeger(x)
  if math.tointeger then return math.tointeger(x) end
  if type(x) == "number" and x == math.floor(x) then return x end
  return nil
end

-- table.pack and table.unpack of 5.2+ (5.1 and LuaJIT have unpack only).
H.pack = table.pack or function(...) return { n = select("#", ...), ... } end
H.unpack = table.unpack or unpack


-- The incremental collector's pause and step multiplier (5.4's
-- collectgarbage("incremental", pause, stepmul); setpause and setstepmul
-- before). gc_incremental(1, 100) steps at nearly every allocation;
-- gc_incremental() puts back the defaults (200 and 100 in 5.4, 200 and 200
-- before).
local GC_PRELUDE = [[
local function gc_incremental(pause, stepmul)
  if _VERSION == "Lua 5.4" then
    collectgarbage("incremental", pause or 200, stepmul or 100)
  else
    collectgarbage("setpause", pause or 200)
    collectgarbage("setstepmul", stepmul or 200)
  end
end
local function finalizer(fn)
  if newproxy then
    getmetatable(newproxy(true)).__gc = fn
  else
    setmetatable({}, { __gc = fn })
  end
end
return gc_incremental, finalizer
]]
-- finalizer(fn) makes garbage whose finalizer runs fn at a collection: a
-- table with __gc from 5.2 on, a newproxy userdata on 5.1 and LuaJIT (which
-- ignore __gc on tables). Child scripts (H.child_lua) see both as locals.
H.gc_incremental, H.finalizer = (loadstring or load)(GC_PRELUDE)()

-- Big-endian integers of 1, 2, 4 or 8 bytes: string.pack(">BI2I4I8", ...)
-- for the formats the specs use, on every Lua. fmt is a string of the
-- codes B (1 byte), H or I2 (2), I4 (4) and I8 (8), after a leading ">".
-- 8-byte values must be exact numbers (below 2^53 before 5.3).
function H.pack_be(fmt, ...)
  local args, out, n = { ... }, {}, 0
  for code in fmt:gmatch("[BHI]%d*") do
    local width = (code == "B" and 1) or (code == "H" and 2) or tonumber(code:sub(2))
    n = n + 1
    local v = args[n]
    if v < 0 then v = v + 2 ^ (8 * width) end
    local bytes = {}
    for i = width, 1, -1 do
      bytes[i] = string.char(v % 256)
      v = math.floor(v / 256)
    end
    out[#out + 1] = table.concat(bytes)
  end
  return table.concat(out)
end

-- A port nobody listens on right now (the kernel picks it).
function H.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end
H.sh = sh

local is_root = sh("id -u"):match("^0") ~= nil

function H.sleep(s) socket.sleep(s) end
function H.now() return socket.gettime() end

-- True when something accepts connections on the loopback port.
local function port_open(port)
  local c = socket.tcp()
  c:settimeout(0.2)
  local ok = c:connect("127.0.0.1", port)
  c:close()
  return ok ~= nil
end

local function wait_port(port, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  repeat
    if port_open(port) then return true end
    socket.sleep(0.01)
  until socket.gettime() > deadline
  return false
end

local servers = {}

-- True while the process runs (a zombie nobody reaped counts as gone).
local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local st = f:read("*l") or ""
  f:close()
  return st:match("^%d+ %b() (%a)") ~= "Z"
end
H.alive = alive

-- Waits until the process is gone and, for a TCP server, until its port
-- refuses connections: the main thread of a killed memcached turns zombie
-- before its other threads have closed the listening socket.
local function wait_gone(pid, port)
  for _ = 1, 500 do
    if not alive(pid) then break end
    socket.sleep(0.002)
  end
  if port then
    for _ = 1, 500 do
      if not port_open(port) then return end
      socket.sleep(0.002)
    end
  end
end

-- Starts memcached; returns {port=, addr=, pid=, stop=, kill=, ...}.
-- opts.args: extra command line arguments (e.g. "-I 2m"); opts.port: fixed
-- port (for restarts on the same port); opts.unix: a socket path instead.
function H.start_memcached(opts)
  opts = opts or {}
  for _ = 1, 5 do
    local port = opts.port or H.free_port()
    local listen = opts.unix and ("-s " .. opts.unix .. " -a 0700")
      or ("-l 127.0.0.1 -p " .. port)
    local cmd = string.format("%smemcached %s -U 0 -t 1 -c 256 %s %s >/dev/null 2>&1 & echo $!",
      opts.env and (opts.env .. " ") or "", is_root and "-u root" or "", listen, opts.args or "")
    local pid = tonumber(sh(cmd))
    local up
    if opts.unix then
      for _ = 1, 200 do
        -- the socket file exists from bind(), before listen(): connect
        local c = require("socket.unix").stream()
        local ok = c:connect(opts.unix)
        c:close()
        if ok then up = true break end
        socket.sleep(0.01)
      end
    else
      up = wait_port(port, 5)
    end
    if up then
      local srv = { port = (not opts.unix) and port or nil, pid = pid, args = opts.args, env = opts.env,
                    addr = opts.unix or ("127.0.0.1:" .. port), unix = opts.unix }
      function srv.stop()
        if srv.pid then
          -- SIGTERM makes memcached linger for a second; nothing here needs
          -- a graceful exit
          os.execute("kill -9 " .. srv.pid .. " 2>/dev/null")
          wait_gone(srv.pid, srv.port) -- so that the port is free again
          srv.pid = nil
        end
      end
      function srv.kill9()
        if srv.pid then
          os.execute("kill -9 " .. srv.pid .. " 2>/dev/null")
          wait_gone(srv.pid, srv.port)
          srv.pid = nil
        end
      end
      -- kill(2) returns before the target has stopped: wait for state T
      function srv.sigstop()
        os.execute("kill -STOP " .. srv.pid)
        for _ = 1, 500 do
          local f = io.open("/proc/" .. srv.pid .. "/stat")
          local st = f and f:read("*l") or ""
          if f then f:close() end
          if st:match("^%d+ %b() (%a)") == "T" then break end
          socket.sleep(0.002)
        end
      end
      function srv.sigcont() os.execute("kill -CONT " .. srv.pid) end
      function srv.restart()
        srv.stop()
        local n = H.start_memcached { port = srv.port, unix = srv.unix, args = srv.args, env = srv.env }
        srv.pid = n.pid
      end
      servers[#servers + 1] = srv
      return srv
    end
    os.execute("kill " .. pid .. " 2>/dev/null")
    if opts.port or opts.unix then break end
  end
  error("could not start memcached")
end

local sasl_dirs = {}
local cert_dir -- H.make_certs's, once per spec file

function H.stop_all()
  for _, s in ipairs(servers) do s.stop() end
  servers = {}
  for _, d in ipairs(sasl_dirs) do os.execute("rm -rf '" .. d .. "'") end
  sasl_dirs = {}
  cert_dir = nil
end

-- Starts memcached with SASL required (-S). memcached 1.6 reads its SASL
-- configuration from SASL_CONF_PATH/memcached.conf and will not start
-- without one; the password database it names is made with saslpasswd2
-- when opts.users ({name = password}) is given. opts as for
-- start_memcached (args adds to -S); srv.restart keeps the configuration.
function H.start_memcached_sasl(opts)
  opts = opts or {}
  local dir = sh("mktemp -d /tmp/mc-sasl.XXXXXX"):match("^%s*(.-)%s*$")
  sasl_dirs[#sasl_dirs + 1] = dir
  local f = assert(io.open(dir .. "/memcached.conf", "w"))
  f:write("mech_list: plain\nsasldb_path: ", dir, "/sasldb\n")
  f:close()
  for user, pass in pairs(opts.users or {}) do
    -- memcached looks users up in the realm of the host's name, which is
    -- saslpasswd2's default too
    local p = assert(io.popen(string.format("saslpasswd2 -a memcached -c -p -f %s/sasldb %s",
      dir, user), "w"))
    p:write(pass)
    assert(p:close(), "saslpasswd2 failed")
  end
  return H.start_memcached { port = opts.port, unix = opts.unix,
                             args = "-S " .. (opts.args or ""),
                             env = "SASL_CONF_PATH=" .. dir }
end

-- Certificates for the TLS specs, made once per run with the openssl
-- command into a temporary directory (removed by stop_all's caller at the
-- end of the file): a CA; a server certificate from it for localhost and
-- 127.0.0.1; one for another name only; one that has expired; a client
-- certificate from the CA; and a second CA nobody trusts, with a server
-- certificate of its own. Returns {dir=, ca=, server={cert=, key=}, ...}.
-- EC P-256 keys: made in milliseconds, and cheap to handshake with.
function H.make_certs()
  if cert_dir then return cert_dir end
  local dir = sh("mktemp -d /tmp/mc-tls.XXXXXX"):match("^%s*(.-)%s*$")
  sasl_dirs[#sasl_dirs + 1] = dir -- removed with them
  local script = [[
set -e
cd "$1"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1.key" 2>/dev/null; }
ca() { key "$1"; openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 2 -subj "/CN=$2"          -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign 2>/dev/null; }
# cert NAME CA SAN DAYS [EKU]
cert() {
  key "$1"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf 'subjectAltName=%s
extendedKeyUsage=%s
' "$3" "${5:-serverAuth}" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial     -out "$1.pem" -days "$4" -extfile "$1.ext" 2>/dev/null
}
ca ca "memcached spec CA"
ca other_ca "nobody's CA"
cert server ca "DNS:localhost,IP:127.0.0.1" 2
cert wrong_name ca "DNS:wrong.example" 2
cert expired ca "DNS:localhost,IP:127.0.0.1" -1
cert client ca "DNS:client" 2 clientAuth
cert stranger other_ca "DNS:localhost,IP:127.0.0.1" 2
]]
  local f = assert(io.open(dir .. "/make.sh", "w"))
  f:write(script)
  f:close()
  assert(os.execute("sh " .. dir .. "/make.sh " .. dir), "could not make certificates")
  local c = { dir = dir, ca = dir .. "/ca.pem", other_ca = dir .. "/other_ca.pem" }
  for _, n in ipairs { "server", "wrong_name", "expired", "client", "stranger" } do
    c[n] = { cert = dir .. "/" .. n .. ".pem", key = dir .. "/" .. n .. ".key" }
  end
  cert_dir = c
  return c
end

-- Starts memcached with TLS (-Z) serving opts.cert ({cert=, key=}, default
-- the CA's server certificate). opts.client_ca: demand a client
-- certificate from that CA (ssl_verify_mode=2). opts.sasl: SASL as
-- start_memcached_sasl, with opts.users. opts.args: more arguments.
function H.start_memcached_tls(opts)
  opts = opts or {}
  local c = H.make_certs()
  local cert = opts.cert or c.server
  local o = "ssl_chain_cert=" .. cert.cert .. ",ssl_key=" .. cert.key
  if opts.client_ca then
    o = o .. ",ssl_verify_mode=2,ssl_ca_cert=" .. opts.client_ca
  end
  local args = "-Z -o " .. o .. " " .. (opts.args or "")
  if opts.sasl then
    return H.start_memcached_sasl { users = opts.users, args = args, port = opts.port }
  end
  return H.start_memcached { args = args, port = opts.port }
end

-- Runs a fault server (spec/fault_server.lua) in the background. mode is
-- one of the modes it documents. Returns {addr=, port=, pid=, stop=}.
function H.start_fault(mode, arg)
  local port = H.free_port()
  local cmd = string.format("lua5.4 %sspec/fault_server.lua %d %s %s >/dev/null 2>&1 & echo $!",
    root, port, mode, arg or "")
  local pid = tonumber(sh(cmd))
  assert(wait_port(port, 5), "fault server did not start")
  local f = { port = port, pid = pid, addr = "127.0.0.1:" .. port }
  function f.stop()
    if f.pid then os.execute("kill " .. f.pid .. " 2>/dev/null"); f.pid = nil end
  end
  servers[#servers + 1] = f
  return f
end

-- Runs spec/tls_fault.lua (a proxy that damages a TLS stream) in front of
-- the server on upstream_port. Returns {addr=, port=, pid=, stop=}.
function H.start_tls_fault(mode, upstream_port, arg)
  local port = H.free_port()
  local cmd = string.format("lua5.4 %sspec/tls_fault.lua %d %d %s %s >/dev/null 2>&1 & echo $!",
    root, port, upstream_port, mode, arg or "")
  local pid = tonumber(sh(cmd))
  assert(wait_port(port, 5), "tls fault proxy did not start")
  local f = { port = port, pid = pid, addr = "127.0.0.1:" .. port }
  function f.stop()
    if f.pid then os.execute("kill " .. f.pid .. " 2>/dev/null"); f.pid = nil end
  end
  servers[#servers + 1] = f
  return f
end

-- Runs src in a child Lua with the build under test (make asan's too: the
-- child inherits LD_PRELOAD and MEMCACHED_SO_DIR), so that a crash fails
-- one spec instead of ending the run; a small heap there also lets the
-- collector run hard and fast. src sees `memcached` and, in `...`, the
-- extra arguments. Returns what it printed and whether it exited cleanly.
function H.child_lua(src, ...)
  local script = os.tmpname()
  local f = assert(io.open(script, "w"))
  f:write([[
    local dir = ...
    package.cpath = (os.getenv("MEMCACHED_SO_DIR") or dir) .. "/?.so;" .. dir .. "/?.so;" .. package.cpath
    local memcached = require "memcached"
    local function args(_, ...) return ... end
  ]], GC_PRELUDE:gsub("\nreturn [^\n]*\n$", "\n"), "return (function(...)\n", src, "\nend)(args(...))\n")
  f:close()
  local argv = { root == "" and "." or root, ... }
  -- the exit status comes from the shell: io.popen's close does not give
  -- it on 5.1 and LuaJIT
  local p = io.popen(string.format("%s %s %s 2>&1; echo \"exit status $?\"", H.lua_bin, script,
    table.concat(argv, " ")))
  local out = p:read("*a")
  p:close()
  os.remove(script)
  local code = tonumber(out:match("exit status (%d+)\n$"))
  out = out:gsub("exit status %d+\n$", "")
  return out, code == 0
end

-- Elapsed seconds of fn().
function H.timed(fn)
  local t = socket.gettime()
  local r = { n = 0 }
  local function keep(...) r = { n = select("#", ...), ... } end
  keep(fn())
  return socket.gettime() - t, H.unpack(r, 1, r.n)
end

-- Whatever a spec file started and did not stop (a failed assertion skips
-- its stop calls) is killed when this module goes away: at the end of the
-- file (busted reloads modules per file) or when busted closes Lua.
if newproxy then
  H.sentinel = newproxy(true)
  getmetatable(H.sentinel).__gc = function() H.stop_all() end
else
  H.sentinel = setmetatable({}, { __gc = function() H.stop_all() end })
end

-- A black hole for connects: a listening socket (in this process) whose
-- accept queue is full and never drained, so the kernel drops further SYNs
-- and a connect stays in progress. Returns {addr=, port=, stop=}.
function H.start_blackhole()
  local l = assert(socket.tcp())
  assert(l:bind("127.0.0.1", 0))
  assert(l:listen(0))
  local _, port = l:getsockname()
  local fill = {}
  for i = 1, 2 do -- backlog 0 queues one; the second stays in SYN_SENT
    fill[i] = socket.tcp()
    fill[i]:settimeout(0.05)
    fill[i]:connect("127.0.0.1", port)
  end
  local b = { port = tonumber(port), addr = "127.0.0.1:" .. port }
  function b.stop()
    for _, c in ipairs(fill) do c:close() end
    l:close()
  end
  return b
end

-- busted ends with os.exit(code, true): lua_close runs every finalizer
-- left. LuaJIT may unload LuaSocket's C library (socket/core.so) before it
-- finalizes the sockets still alive then (kept by spec closures), whose
-- __gc then jumps into unmapped code: a segfault after every spec passed.
-- At busted's exit event LuaSocket's classes lose their __gc (the process
-- is ending; the kernel closes the descriptors).
if jit then
  local ok_busted, busted = pcall(require, "busted")
  if ok_busted and type(busted) == "table" and busted.subscribe then
    busted.subscribe({ "exit" }, function()
      for name, mt in pairs(debug.getregistry()) do
        if type(name) == "string" and name:match("^%a+{%a+}$") and type(mt) == "table" then
          mt.__gc = nil
        end
      end
      return nil, true
    end)
  end
end

H.memcached = require "memcached"
return H
