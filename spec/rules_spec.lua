-- The core's rules checked from C alone (spec/c/test_rules.c): the key
-- rule, each status per kind of operation, the lock marker, the error table.
local H = require "spec.helper"
local memcached = H.memcached

describe("the core's rules", function()
  it("pass their C checks, with bytes alone", function()
    local out = H.sh(H.root .. "spec/c/test_rules.bin 2>&1")
    local passed = out:match("(%d+) passed, 0 failed%s*$")
    assert.truthy(passed, out)
    assert.is_true(tonumber(passed) > 250)
  end)

  it("are exported from memcached.so through a plain C ABI (for LuaJIT's FFI)", function()
    local so = package.searchpath("memcached", package.cpath)
    local out = H.sh("nm -D --defined-only " .. so .. " 2>&1")
    for _, name in ipairs { "mc_abi_key_ok", "mc_abi_status_err", "mc_abi_err_str",
                            "mc_abi_err_count", "mc_abi_is_lock", "mc_abi_status_is_auth",
                            "mc_abi_reply_key_ok", "mc_abi_resend_safe", "mc_abi_counter_value",
                            "mc_abi_addr_split", "mc_abi_ring_new", "mc_abi_ring_pick",
                            "mc_abi_ring_failed", "mc_abi_ring_ok", "mc_resolve_host", "luaopen_memcached" } do
      assert.truthy(out:find(" T " .. name .. "\n", 1, true), name .. " not exported:\n" .. out)
    end
  end)

  it("are the ERR_* values the module exports, one per error", function()
    local seen, n = {}, 0
    for k, v in pairs(memcached) do
      if k:match("^ERR_") then
        assert.is_string(v)
        assert.is_nil(seen[v], k .. " repeats " .. tostring(seen[v]))
        seen[v] = k
        n = n + 1
      end
    end
    assert.are.equal(23, n)
    assert.are.equal("cache miss", memcached.ERR_CACHE_MISS)
    assert.are.equal("tls error", memcached.ERR_TLS)
    assert.are.equal("connection closed", memcached.ERR_CONNECTION_CLOSED)
  end)
end)
