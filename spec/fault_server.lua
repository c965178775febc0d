-- A misbehaving memcached (binary protocol) for the fault specs: only for
-- faults a real server cannot produce.
--
--   lua5.4 spec/fault_server.lua PORT MODE [ARG]
--
-- MODE:
--   silent        accept and read, never answer
--   close         close every connection right after accept
--   garbage       answer any request with non-protocol bytes
--   truncated     send the first 12 bytes of a valid response, then nothing
--   wrong_opaque  a valid response whose opaque is the request's + 1000
--   huge          a response header declaring a 0xFFFFFFF0-byte body
--   late_once ARG the first request on the whole server is answered (as
--                 echo) after ARG seconds; every other one promptly
--   slow ARG      every request answered (as echo) after ARG seconds
--   enomem        every request answered with status 0x82 (out of memory),
--                 no key, as memcached's error replies are
--   mutate ARG    answers as echo, but about one reply in four is damaged
--                 at random (seed ARG): a header byte flipped, cut short, sent
--                 twice, another request's opaque, a wrong opcode, garbage
--                 in front, or no reply at all
--   swallow       as echo, but in a batch (replies up to a NOOP) the first
--                 reply's body length also covers the second reply: a
--                 well-framed stream whose first value hides the second
--   stat_flood ARG  a STAT request is answered with ARG entries (distinct
--                 names) and no terminating empty entry, then silence;
--                 anything else as echo
--   stray ARG     sends one GET-family hit nobody asked for as soon as it
--                 accepts a connection (value "stray", cas 1; ARG "get":
--                 opcode GET, no key, opaque 1, what the C client's first
--                 get on a connection carried; "get0": the same with opaque
--                 0, the OpenResty driver's first; "getk": opcode GETK
--                 naming the key "k", opaque 1), then answers
--                 every request as echo 0.05 s late, so the stray reply is
--                 read on its own
--   other_key     answers GET/GETK/GAT/GATK under the request's opcode and
--                 opaque with the item of another key ("other", value
--                 "other's value"; the K forms name that key)
--   opaque        as echo, but a hit's value is the request's opaque (in
--                 decimal), so a spec can see what opaques a client sends
--   once          answers (as echo) what arrives in a connection's first
--                 read; data arriving later closes the connection
--                 unanswered: a server that took a request and went away
--   bigcas ARG    as echo, but every reply carries the cas ARG (decimal, up
--                 to 2^64 - 1), and a request carrying another nonzero cas
--                 is refused with status 2 (exists): a client that rounds
--                 a cas past 2^53 cannot compare-and-swap with it
--   reorder       as echo, but the replies to the requests that arrived
--                 in one read go back in reverse order (out of order)
--   close_after ARG  as echo for a connection's first ARG requests, then
--                 the connection is closed with the rest unanswered (a
--                 server that goes away mid-pipeline)
--   echo          GET/GETK/GETQ/GETKQ are hits whose value is the key (flags
--                 0); anything else gets status 0 and an empty body
local socket = require "socket"

local port, mode, arg = tonumber(arg[1]), arg[2], arg[3]
assert(port and mode, "usage: fault_server.lua PORT MODE [ARG]")

if mode == "mutate" then math.randomseed(tonumber(arg) or 1) end

local server = assert(socket.bind("127.0.0.1", port))
server:settimeout(0)

local HDR = ">BBHBBHI4I4I8" -- magic opcode keylen extlen datatype status/vb bodylen opaque cas
local GET, GETQ, GETK, GETKQ = 0x00, 0x09, 0x0c, 0x0d
local GAT, GATK = 0x1d, 0x23

local function response(req, status, extras, key, value, cas)
  return string.pack(HDR, 0x81, req.opcode, #key, #extras, 0, status,
    #extras + #key + #value, req.opaque, cas or 1) .. extras .. key .. value
end

-- bigcas: ARG as the 64 bits of an integer (wrapping past 2^63 - 1)
local big_cas = 0
if mode == "bigcas" then
  for d in arg:gmatch("%d") do big_cas = big_cas * 10 + tonumber(d) end
end

-- The reply a well-behaved server would give, as echo defines it.
local function echo(req)
  local op = req.opcode
  if op == GET or op == GETQ then
    return response(req, 0, string.pack(">I4", 0), "", req.key)
  elseif op == GETK or op == GETKQ then
    return response(req, 0, string.pack(">I4", 0), req.key, req.key)
  end
  return response(req, 0, "", "", "")
end

local answer = {
  silent = function() return nil end,
  garbage = function() return "HTTP/1.0 400 Bad Request\r\n\r\n" end,
  truncated = function(req) return echo(req):sub(1, 12) end,
  wrong_opaque = function(req)
    local r = echo(req)
    return r:sub(1, 12) .. string.pack(">I4", (req.opaque + 1000) % 2^32) .. r:sub(17)
  end,
  huge = function(req)
    return string.pack(HDR, 0x81, req.opcode, 0, 0, 0, 0, 0xFFFFFFF0, req.opaque, 0)
  end,
  enomem = function(req) return response(req, 0x82, "", "", "Out of memory") end,
  mutate = function(req)
    local r = echo(req)
    local dice = math.random(28)
    if dice == 1 then -- flip one header byte (the protocol has no checksum:
      -- a flipped value byte is undetectable by any client)
      local i = math.random(24)
      return r:sub(1, i - 1) .. string.char((r:byte(i) + math.random(255)) % 256) .. r:sub(i + 1)
    elseif dice == 2 then -- cut short
      return r:sub(1, math.random(#r) - 1)
    elseif dice == 3 then -- sent twice
      return r .. r
    elseif dice == 4 then -- another request's opaque
      return r:sub(1, 12) .. string.pack(">I4", (req.opaque + math.random(1, 3)) % 2^32) .. r:sub(17)
    elseif dice == 5 then -- a wrong opcode
      return r:sub(1, 1) .. string.char((r:byte(2) + 1) % 256) .. r:sub(3)
    elseif dice == 6 then -- garbage first
      return "\x81\x00\x00" .. r
    elseif dice == 7 then -- nothing
      return nil
    end
    return r
  end,
  stat_flood = function(req)
    if req.opcode ~= 0x10 then return echo(req) end
    local parts = {}
    for i = 1, tonumber(arg) do
      parts[i] = response(req, 0, "", string.format("flood_%07d", i), "1")
    end
    return table.concat(parts)
  end,
  other_key = function(req)
    local op, flags = req.opcode, string.pack(">I4", 0)
    if op == GET or op == GAT then
      return response(req, 0, flags, "", "other's value")
    elseif op == GETK or op == GATK then
      return response(req, 0, flags, "other", "other's value")
    end
    return echo(req)
  end,
  opaque = function(req)
    local op = req.opcode
    if op == GET or op == GETQ then
      return response(req, 0, string.pack(">I4", 0), "", tostring(req.opaque))
    elseif op == GETK or op == GETKQ then
      return response(req, 0, string.pack(">I4", 0), req.key, tostring(req.opaque))
    end
    return echo(req)
  end,
  bigcas = function(req)
    if req.cas ~= 0 and req.cas ~= big_cas then return response(req, 2, "", "", "", big_cas) end
    local r = echo(req)
    return r:sub(1, 16) .. string.pack(">I8", big_cas) .. r:sub(25)
  end,
  echo = echo,
  stray = echo,
  late_once = echo,
  slow = echo,
  swallow = echo,
  once = echo,
  reorder = echo,
  close_after = echo,
}
assert(answer[mode] or mode == "close", "unknown mode " .. tostring(mode))

local conns = {}     -- socket -> pending input bytes
local delayed = {}   -- {sock=, data=, at=} replies to send later
local first_seen = false
local held = {}      -- swallow: socket -> replies of the batch so far
local served = {}    -- once: sockets whose first read was answered
local answered = {}  -- close_after: socket -> requests answered

local function drop(c)
  conns[c] = nil
  c:close()
end

local function send(c, data)
  if conns[c] then
    c:settimeout(1)
    local ok = c:send(data)
    c:settimeout(0)
    if not ok then drop(c) end
  end
end

-- Parses every complete request in the connection's buffer.
local function serve(c)
  local buf = conns[c]
  local backwards = {} -- reorder: this read's replies
  while #buf >= 24 do
    local magic, opcode, keylen, extlen, _, _, bodylen, opaque, cas = string.unpack(HDR, buf)
    if magic ~= 0x80 then drop(c) return end
    if #buf < 24 + bodylen then break end
    local req = { opcode = opcode, opaque = opaque, cas = cas,
                  key = buf:sub(25 + extlen, 24 + extlen + keylen) }
    buf = buf:sub(25 + bodylen)
    local out = answer[mode](req)
    if mode == "close_after" then
      answered[c] = (answered[c] or 0) + 1
      if answered[c] > tonumber(arg) then
        answered[c] = nil
        drop(c)
        return
      end
    elseif mode == "reorder" then
      table.insert(backwards, 1, out)
      out = nil
    end
    if mode == "swallow" then
      held[c] = held[c] or {}
      local h = held[c]
      h[#h + 1] = out
      if req.opcode == 0x0a then -- NOOP: the batch is complete
        held[c] = nil
        if #h >= 3 then
          local body = string.unpack(">I4", h[1], 9) + #h[2]
          h[1] = h[1]:sub(1, 8) .. string.pack(">I4", body) .. h[1]:sub(13)
        end
        send(c, table.concat(h))
        if not conns[c] then return end
      end
      out = nil
    end
    if mode == "slow" or (mode == "late_once" and not first_seen) then
      first_seen = true
      delayed[#delayed + 1] = { sock = c, data = out, at = socket.gettime() + tonumber(arg) }
    elseif mode == "stray" then
      delayed[#delayed + 1] = { sock = c, data = out, at = socket.gettime() + 0.05 }
    elseif out then
      send(c, out)
      if not conns[c] then return end
    end
  end
  if #backwards > 0 then
    send(c, table.concat(backwards))
    if not conns[c] then return end
  end
  conns[c] = buf
end

while true do
  local list = { server }
  for c in pairs(conns) do list[#list + 1] = c end
  local wait = 1
  for _, d in ipairs(delayed) do wait = math.max(0, math.min(wait, d.at - socket.gettime())) end
  local readable = socket.select(list, nil, wait)
  for _, s in ipairs(readable) do
    if s == server then
      local c = server:accept()
      if c then
        if mode == "close" then
          c:close()
        else
          c:settimeout(0)
          c:setoption("tcp-nodelay", true)
          conns[c] = ""
          if mode == "stray" then
            local get = arg ~= "getk"
            send(c, response({ opcode = get and GET or GETK, opaque = arg == "get0" and 0 or 1 }, 0,
              string.pack(">I4", 0), get and "" or "k", "stray"))
          end
        end
      end
    elseif conns[s] then
      local data, err, partial = s:receive(65536)
      data = data or partial
      if data and #data > 0 then conns[s] = conns[s] .. data end
      if err == "closed" or (mode == "once" and served[s]) then
        served[s] = nil
        drop(s)
      elseif #conns[s] > 0 then
        if mode == "once" then served[s] = true end
        serve(s)
      end
    end
  end
  -- in arrival order: replies on one connection must not overtake
  local now, keep = socket.gettime(), {}
  for _, d in ipairs(delayed) do
    if d.at <= now then send(d.sock, d.data) else keep[#keep + 1] = d end
  end
  delayed = keep
end
