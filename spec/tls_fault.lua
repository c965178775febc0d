-- A man in the middle for the TLS specs: a TCP proxy in front of a real
-- memcached (TLS or not) that damages the stream in ways a real server
-- cannot, one connection at a time.
--
--   lua5.4 spec/tls_fault.lua PORT UPSTREAM_PORT MODE [ARG]
--
-- MODE:
--   stall ARG     forwards the client's bytes, but only the first ARG
--                 bytes (default 60) of the server's: the handshake stops
--                 midway, inside the server's first flight, and the
--                 connection stays open
--   garbage       forwards both ways until the client has sent two
--                 application-data records (its Finished and its first
--                 request: the handshake is over); from then on the server's
--                 bytes are replaced by one well-framed record of random
--                 bytes, which cannot decrypt
--   record FILE   forwards both ways and appends every byte the client
--                 sends to FILE, so a spec can see what went over the wire
local socket = require "socket"

local port, upstream, mode, arg = tonumber(arg[1]), tonumber(arg[2]), arg[3], arg[4]
assert(port and upstream and mode, "usage: tls_fault.lua PORT UPSTREAM_PORT MODE [ARG]")
local STALL_AT = tonumber(arg) or 60

local server = assert(socket.bind("127.0.0.1", port))

-- Counts the application-data records (type 23) in a client's stream;
-- buf holds what is not yet a whole record header + body.
local function count_records(st, data)
  st.buf = st.buf .. data
  while #st.buf >= 5 do
    local len = st.buf:byte(4) * 256 + st.buf:byte(5)
    if #st.buf < 5 + len then break end
    if st.buf:byte(1) == 23 then st.app = st.app + 1 end
    st.buf = st.buf:sub(6 + len)
  end
end

local function junk_record()
  local t = {}
  for i = 1, 48 do t[i] = string.char(math.random(0, 255)) end
  return "\23\3\3\0\48" .. table.concat(t)
end

-- Sends all of data on a non-blocking socket (a send that would block
-- sends part: the rest must not be dropped). false when the peer is gone.
local function send_all(s, data)
  local i = 1
  while i <= #data do
    local n, err, last = s:send(data, i)
    if n then i = n + 1
    elseif err == "timeout" then
      i = last + 1
      socket.select(nil, { s }, 1)
    else return false end
  end
  return true
end

local function serve(c)
  local u = socket.tcp()
  if not u:connect("127.0.0.1", upstream) then c:close() return end
  c:settimeout(0)
  u:settimeout(0)
  local st = { buf = "", app = 0 }
  local forwarded, spoiled = 0, false
  local rec = mode == "record" and assert(io.open(arg, "ab"))
  local open = true
  while open do
    local ready = socket.select({ c, u }, nil, 1)
    for _, s in ipairs(ready) do
      local data, err, partial = s:receive(16384)
      data = data or partial
      if data and #data > 0 then
        if s == c then
          if rec then rec:write(data) rec:flush() end
          if mode == "garbage" then count_records(st, data) end
          send_all(u, data)
        elseif mode == "stall" then
          local room = STALL_AT - forwarded
          if room > 0 then
            send_all(c, data:sub(1, room))
            forwarded = forwarded + math.min(room, #data)
          end
        elseif mode == "garbage" and st.app >= 2 then
          if not spoiled then send_all(c, junk_record()) spoiled = true end
        else
          send_all(c, data)
        end
      end
      if err == "closed" then open = false end
    end
  end
  if rec then rec:close() end
  u:close()
  c:close()
end

while true do
  local c = server:accept()
  if c then serve(c) end
end
