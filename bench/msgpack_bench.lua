-- msgpack encode + decode of one ~1 KB nested table, per system:
--   lua5.4 bench/msgpack_bench.lua SYSTEM NOPS      (SYSTEM: ours | cjson | messagepack)
--   lua5.4 bench/msgpack_bench.lua sizes             (encoded size per system)
-- One op = encode the table, then decode the result.
package.path = (arg[0]:match("^(.*/)") or "./") .. "?.lua;" .. package.path
local C = require "common"

-- Debian ships lua-messagepack for Lua 5.1-5.3 only; the 5.3 file is plain
-- Lua that runs unchanged on 5.4.
package.path = package.path .. ";/usr/share/lua/5.3/?.lua"

-- Strings, integers, floats, booleans, nested arrays and maps. Floats are
-- ones that print exactly in 14 digits, so all three systems round-trip them.
local function document()
  local items = {}
  for i = 1, 6 do
    items[i] = {
      sku = "SKU-" .. (100000 + i * 7919),
      title = "Item number " .. i .. " of the order",
      qty = i * 3,
      price = 9.75 + i * 1.5,
      tags = { "red", "cotton", "size-" .. i },
      dims = { w = 10 + i, h = 20.5 + i, d = 3 },
    }
  end
  return {
    id = 123456789,
    user = {
      name = "Ada Lovelace",
      email = "ada@example.org",
      age = 36,
      score = 97.25,
      verified = true,
      roles = { "admin", "editor", "viewer" },
    },
    items = items,
    totals = { 1, 22, 333, 4444, 55555, 666666, -7, -88, 0 },
    ratios = { 0.5, 0.25, 1.125, 3.75, -2.5 },
    note = "Deliver between nine and five; ring the bell twice.",
  }
end

local systems = {}

function systems.ours()
  local memcached = require "memcached"
  local enc, dec = memcached.encode, memcached.decode
  return function(t) return dec(enc(t)) end, enc
end

function systems.cjson()
  local cjson = require "cjson"
  local enc, dec = cjson.encode, cjson.decode
  return function(t) return dec(enc(t)) end, enc
end

function systems.messagepack()
  local mp = require "MessagePack"
  local pack, unpack = mp.pack, mp.unpack
  return function(t) return unpack(pack(t)) end, pack
end

local doc = document()

if arg[1] == "sizes" then
  for _, name in ipairs { "ours", "cjson", "messagepack" } do
    local _, enc = systems[name]()
    io.write(name, "\t", #enc(doc), "\n")
  end
  os.exit(0)
end

local name, nops = arg[1], tonumber(arg[2])
if not systems[name] or not nops then
  io.stderr:write("usage: msgpack_bench.lua ours|cjson|messagepack NOPS | sizes\n")
  os.exit(2)
end
local roundtrip = systems[name]()
local back = roundtrip(doc)
assert(back.items[6].dims.h == doc.items[6].dims.h and back.user.roles[3] == "viewer"
  and back.totals[7] == -7 and back.ratios[3] == 1.125, name .. " did not round-trip")
C.report(C.measure(nops, nops // 10, function() roundtrip(doc) end))
