-- bench/idle.sh's client: opens N keep-alive connections to 127.0.0.1:PORT, one after the
-- other; on each, one GET / is sent and its whole answer read (status 200, Content-Length
-- body), then the connection is left idle. Writes "ready OPEN failed FAILED" to STATUS once
-- all are done, holds them until HOLD seconds have passed (or it is killed), closes them.
--   lua5.4 bench/idle-client.lua PORT N STATUS HOLD
local socket = require "socket"
local port, n, status_path, hold = tonumber(arg[1]), tonumber(arg[2]), arg[3], tonumber(arg[4])
assert(port and n and status_path and hold, "usage: idle-client.lua PORT N STATUS HOLD")
local req = "GET / HTTP/1.1\r\nHost: bench\r\n\r\n"

local function one_request(s)
  if not s:send(req) then return false end
  local line = s:receive("*l")
  if not line or not line:match("^HTTP/1%.1 200 ") then return false end
  local length
  repeat
    line = s:receive("*l")
    if not line then return false end
    local v = line:lower():match("^content%-length:%s*(%d+)")
    if v then length = tonumber(v) end
  until line == ""
  if not length then return false end   -- the origin answers with a length
  return length == 0 or s:receive(length) ~= nil
end

local conns, failed, first_error = {}, 0, nil
for _ = 1, n do
  local s = socket.tcp4()
  s:settimeout(5)
  local ok, err = s:connect("127.0.0.1", port)
  if ok and one_request(s) then
    conns[#conns + 1] = s
  else
    first_error = first_error or err or "bad answer"
    failed = failed + 1
    s:close()
  end
end
local f = assert(io.open(status_path, "w"))
f:write(("ready %d failed %d%s\n"):format(#conns, failed, first_error and (" " .. first_error) or ""))
f:close()
socket.sleep(hold)
for _, s in ipairs(conns) do s:close() end
