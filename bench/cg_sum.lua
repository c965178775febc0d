-- Reads callgrind output files and prints, per file, the instructions
-- spent per operation (self cost, summed by shared object): where the
-- time of one nginx handler's N operations went, in instructions that do
-- not depend on the machine's noise.
--   lua5.4 bench/cg_sum.lua N LABEL=FILE ...
local n = tonumber(arg[1])

local function parse(file)
  local by_obj, names, objs = {}, {}, {}
  local obj, in_call = "?", false
  for line in io.lines(file) do
    local k, v = line:match("^(%a+)=(.*)$")
    if k then
      if k == "ob" or k == "cob" then
        local id, name = v:match("^%((%d+)%)%s*(.*)$")
        if id then
          if name ~= "" then objs[id] = name end
          v = objs[id] or "?"
        end
        if k == "ob" then obj = v end
      elseif k == "calls" then
        in_call = true -- the next cost line is a call's inclusive cost
      end
    elseif line:match("^[%d+*-]") then
      local cost = line:match("^%S+%s+(%d+)")
      if cost then
        if in_call then in_call = false
        else by_obj[obj] = (by_obj[obj] or 0) + tonumber(cost) end
      end
    end
  end
  return by_obj
end

local function short(o)
  if o == "?" or o == "???" then return "JIT code" end
  return (o:match("([^/]+)$") or o):gsub("%.so.*$", "")
end

for i = 2, #arg do
  local label, file = arg[i]:match("^([^=]+)=(.*)$")
  local t, total = parse(file), 0
  local rows = {}
  for o, c in pairs(t) do
    total = total + c
    rows[#rows + 1] = { short(o), c }
  end
  table.sort(rows, function(a, b) return a[2] > b[2] end)
  local parts = {}
  for j = 1, math.min(5, #rows) do parts[j] = ("%s %d"):format(rows[j][1], rows[j][2] // n) end
  print(("| %s | %d | %s |"):format(label, total // n, table.concat(parts, ", ")))
end
