-- wrk script for bench/syscalls.sh and bench/calls.sh: stop after WRK_REQUESTS answers and
-- create the file WRK_MARK, so the script knows the load is over (wrk itself waits for -d).
local n, limit, mark = 0, tonumber(os.getenv("WRK_REQUESTS")), os.getenv("WRK_MARK")
function response()
  n = n + 1
  if n == limit then
    local f = io.open(mark, "w")
    f:write("done\n")
    f:close()
    wrk.thread:stop()
  end
end
