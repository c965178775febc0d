-- luacheck (Debian lua-check): `make lint`. The drivers run on every Lua
-- and inside nginx (the ngx global); methods keep their self argument
-- whether they use it or not.
std = "max"
-- ngx.ctx is the request's table (memcached.resty keeps its cosockets there)
globals = { ngx = { fields = { ctx = { other_fields = true, read_only = false } }, other_fields = true } }
unused_args = false
max_line_length = 120
files["spec"] = { std = "+busted" }
