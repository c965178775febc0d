-- Shared by the Lua benchmark clients: where the built module is, the
-- command line, and the timed loop. Every client prints one number, the
-- mean nanoseconds per operation, so the driver treats C and Lua alike.
local socket = require "socket"

local C = {}

-- bench/ sits under the repository root; MC_SO_DIR overrides where
-- memcached.so is looked for (to bench another build).
C.root = (arg and arg[0] or ""):match("^(.-)bench/[^/]*$") or "./"
if C.root == "" then C.root = "./" end
package.cpath = (os.getenv("MC_SO_DIR") or C.root) .. "/?.so;" .. package.cpath

C.NKEYS = 100
C.VALUE = string.rep("v", 100)

-- Fixed warm-up counts, the same whatever NOPS is: the allocation counter
-- subtracts a 10k run from a 100k run and needs the extras to cancel.
local WARM = { get = 2000, set = 2000 }

function C.args()
  local workload, nops = arg[1], tonumber(arg[2])
  local servers = {}
  for i = 3, #arg do servers[#servers + 1] = arg[i] end
  if not workload or not nops or #servers == 0 then
    io.stderr:write("usage: ", arg[0], " WORKLOAD NOPS HOST:PORT...\n")
    os.exit(2)
  end
  return workload, nops, servers, WARM[workload] or 200
end

-- Runs op() warm times, then nops times under the clock. With setup, the
-- clock covers op() alone: setup() runs before each op, untimed.
function C.measure(nops, warm, op, setup)
  for _ = 1, warm do
    if setup then setup() end
    op()
  end
  local gettime = socket.gettime
  local total = 0
  if setup then
    for _ = 1, nops do
      setup()
      local t0 = gettime()
      op()
      total = total + (gettime() - t0)
    end
  else
    local t0 = gettime()
    for _ = 1, nops do op() end
    total = gettime() - t0
  end
  return total * 1e9 / nops
end

function C.report(ns)
  io.write(string.format("%.0f\n", ns))
end

function C.na()
  io.write("n/a\n")
  os.exit(0)
end


-- Runs the named workload from ops (each returns op[, setup]) and prints
-- its time per operation.
function C.run(ops, workload, nops, warm)
  local make = ops[workload]
  if not make then
    io.stderr:write("unknown workload ", workload, "\n")
    os.exit(2)
  end
  local op, setup = make()
  C.report(C.measure(nops, warm, op, setup))
end

return C
