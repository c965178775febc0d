-- spec/behaviour.lua's cases against the Lua 5.4 client; the same cases
-- run inside nginx against memcached.resty (spec/nginx/tests.lua).
local H = require "spec.helper"
local memcached = H.memcached
local B = require "spec.behaviour"

describe("behaviour shared with memcached.resty", function()
  local srv
  local env = { E = memcached, prefix = "b54:", check = B.check }
  setup(function()
    srv = H.start_memcached()
    env.addr = srv.addr
    env.refused = "127.0.0.1:" .. H.free_port()
    env.new = function(o) return assert(memcached.new(o)) end
  end)
  teardown(function() srv.kill9() end)

  for _, c in ipairs(B.cases) do
    it(c[1], function() c[2](env) end)
  end
end)
