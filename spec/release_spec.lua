-- One version string everywhere: the C module (LMC_VERSION,
-- memcached._VERSION), the release rockspec (its name and its version
-- field), the top entry of CHANGELOG.md; one rock name in both rockspecs.
local H = require "spec.helper"
local memcached = H.memcached

local function read(path)
  local f = assert(io.open(H.root .. path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- A rockspec's fields (it is Lua: assignments to globals).
local function rockspec(path)
  local env = {}
  local chunk
  if setfenv then
    chunk = assert(loadstring(read(path), path))
    setfenv(chunk, env)
  else
    chunk = assert(load(read(path), path, "t", env))
  end
  chunk()
  return env
end

describe("release", function()
  local version = read("src/lua/lmc_client.h"):match('#define LMC_VERSION "([^"]+)"')

  it("has one version in C, Lua, the release rockspec and the CHANGELOG", function()
    assert.is_truthy(version and version:match("^%d+%.%d+%.%d+$"), tostring(version))
    assert.are.equal(version, memcached._VERSION)
    local rs = rockspec("rockspec/memcached-engine-" .. version .. "-1.rockspec")
    assert.are.equal(version .. "-1", rs.version)
    assert.is_truthy(rs.source.url:find("memcached-engine-" .. version .. ".tar.gz", 1, true))
    assert.are.equal("memcached-engine-" .. version, rs.source.dir)
    assert.are.equal(version, read("CHANGELOG.md"):match("\n## (%d+%.%d+%.%d+)"))
  end)

  it("names the rock memcached-engine for Linux and every Lua from 5.1 to 5.4", function()
    for _, path in ipairs { "rockspec/memcached-engine-scm-1.rockspec",
                            "rockspec/memcached-engine-" .. version .. "-1.rockspec" } do
      local rs = rockspec(path)
      assert.are.equal("memcached-engine", rs.package, path)
      assert.are.same({ "linux" }, rs.supported_platforms, path)
      assert.are.same({ "lua >= 5.1, < 5.5" }, rs.dependencies, path)
      -- the module is built once, into a directory the install step copies from
      assert.are.equal(rs.build.build_variables.MODULE, rs.build.install_variables.MODULE, path)
    end
  end)
end)
