-- spec/support/helpers.lua: the harness every levee integration spec uses.
--
-- Starts real processes (levee, lv-testupstream) with lvproc, talks to them over real
-- sockets with luasocket, and synchronises on events (a port accepting, a line appearing, a
-- counter changing) with deadline-and-poll loops, never with fixed sleeps. Every process,
-- connection and temporary directory it creates is tracked; H.cleanup() (call it from
-- after_each or teardown) releases them all. Children also die with the spec process.
-- The API is documented in spec/support/README.md.

local socket = require("socket")
local cjson = require("cjson")
local proc = require("lvproc")

local H = {}

H.proc = proc
H.src = os.getenv("LEVEE_SRC") or "."
H.sanitized = os.getenv("LEVEE_SANITIZED") == "1"
-- Timeouts the harness picks itself are multiplied by this (ASan builds start slower).
H.scale = H.sanitized and 3 or 1

local HOST = "127.0.0.1"

local procs = {}   -- pid -> { what = "levee" | "upstream" | "process" }
local tmpdirs = {} -- list of paths
local conns = setmetatable({}, { __mode = "k" })

local function now() return proc.now() end
H.now = now

local function env_path(name, what)
    local v = os.getenv(name)
    if not v or v == "" then
        error(name .. " is not set: it must point at " .. what .. " (ctest sets it; see spec/support/README.md)", 3)
    end
    return v
end

local function read_file(path)
    local f = io.open(path, "rb")
    if not f then return "" end
    local s = f:read("a")
    f:close()
    return s
end
H.read_file = read_file

local function write_file(path, text)
    local f = assert(io.open(path, "wb"))
    assert(f:write(text))
    f:close()
end
H.write_file = write_file

local function lines_of(text)
    local out = {}
    for line in text:gmatch("([^\n]*)\n") do
        if line ~= "" then out[#out + 1] = line end
    end
    return out
end

---------------------------------------------------------------------------------------------
-- small utilities

--- The non-empty lines of `text`, the last one too when it has no newline yet.
function H.nonempty_lines(text)
    local out = {}
    for line in text:gmatch("([^\n]*)\n?") do
        if line ~= "" then out[#out + 1] = line end
    end
    return out
end

-- cjson decodes every number as a float; integral ones become integers so that
-- tostring(e.conn) is "3", not "3.0".
local function intify(v)
    if type(v) == "table" then
        for k, x in pairs(v) do v[k] = intify(x) end
    elseif math.type(v) == "float" then
        return math.tointeger(v) or v
    end
    return v
end

--- Decodes JSON with cjson (integral numbers as integers); the error names the text.
function H.json(s)
    local ok, v = pcall(cjson.decode, s)
    if not ok then
        error(("H.json: %s in: %s"):format(v, tostring(s):sub(1, 300)), 2)
    end
    return intify(v)
end

H.json_encode = cjson.encode
H.null = cjson.null

--- Polls fn every 10 ms until it returns a truthy value (returned, with the rest of its
--- results) or `timeout` seconds (default 5) pass; then errors naming `what`.
function H.wait_until(fn, timeout, what)
    timeout = timeout or 5 * H.scale
    local deadline = now() + timeout
    while true do
        local r = table.pack(fn())
        if r[1] then return table.unpack(r, 1, r.n) end
        if now() >= deadline then
            error(("timed out after %.2fs waiting for %s"):format(timeout, what or "condition"), 2)
        end
        proc.sleep(0.01)
    end
end

--- A port that was free a moment ago (bound to 0, read, closed).
-- Ports handed out come from below the kernel's ephemeral range: a port the kernel picked
-- for bind(0) and we closed can be taken by the next outgoing connection of any process
-- (specs make thousands) before levee binds it. Within the range left, a random start per
-- process keeps concurrent spec files apart; a port is given out once per process.
local port_lo, port_hi
local given = {}
local function port_range()
    if port_lo then return port_lo, port_hi end
    local f = io.open("/proc/sys/net/ipv4/ip_local_port_range")
    local eph_lo = f and tonumber((f:read("a") or ""):match("(%d+)")) or 32768
    if f then f:close() end
    port_lo, port_hi = 10000, eph_lo - 1
    if port_hi - port_lo < 2000 then port_lo, port_hi = nil, nil end -- no room: bind(0)
    return port_lo, port_hi
end

function H.free_port()
    local lo, hi = port_range()
    if lo then
        for _ = 1, 200 do
            local p = math.random(lo, hi)
            if not given[p] then
                local s = socket.bind(HOST, p)
                if s then
                    s:close()
                    given[p] = true
                    return p
                end
            end
        end
    end
    local s = assert(socket.bind(HOST, 0))
    local _, port = s:getsockname()
    s:close()
    return assert(tonumber(port))
end

--- Whether something accepts TCP connections on 127.0.0.1:port right now.
function H.port_open(port)
    local s = socket.tcp()
    s:settimeout(0.5)
    local ok = s:connect(HOST, port)
    s:close()
    return ok ~= nil
end

--- FNV-1a 64 of s as 16 hex digits: the `body_sha` lv-testupstream reports.
function H.fnv1a64(s)
    local h = -3750763034362895579 -- 0xcbf29ce484222325
    local prime = 0x100000001b3
    for i = 1, #s do
        h = (h ~ s:byte(i)) * prime
    end
    return ("%016x"):format(h)
end

local ALPHA = "abcdefghijklmnopqrstuvwxyz"

--- The first n bytes of lv-testupstream's X-Test-Body-Size pattern (byte i = 'a' + i % 26).
function H.pattern(n)
    return ALPHA:rep(n // 26 + 1):sub(1, n)
end

--- One command to a redis-server on 127.0.0.1:port with a tiny RESP client: the reply
-- ("+OK", ":1", a string, a list, false for a null bulk), or nil when it cannot connect.
function H.redis_cmd(port, ...)
    local s = socket.tcp()
    s:settimeout(0.5)
    if not s:connect("127.0.0.1", port) then
        s:close()
        return nil
    end
    local args = { ... }
    local out = { "*" .. #args .. "\r\n" }
    for _, a in ipairs(args) do out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n" end
    s:send(table.concat(out))
    local function read()
        local line = s:receive("*l")
        if not line then return nil end
        local t, rest = line:sub(1, 1), line:sub(2)
        if t == "+" or t == "-" or t == ":" then return line end
        if t == "$" then
            local n = tonumber(rest)
            if n < 0 then return false end
            local data = s:receive(n + 2)
            return data and data:sub(1, n)
        end
        if t == "*" then
            local list = {}
            for i = 1, tonumber(rest) do list[i] = read() end
            return list
        end
        return line
    end
    local v = read()
    s:close()
    return v
end

--- A real redis-server on 127.0.0.1:port (no persistence), its output in dir; returns its pid
-- once it answers PING. Stopped by H.cleanup, or by H.redis_stop(pid).
function H.redis_start(port, dir)
    local pid = H.spawn({ "redis-server", "--port", tostring(port), "--bind", "127.0.0.1", "--save", "",
        "--appendonly", "no" }, { stdout = dir .. "/redis.out", stderr = dir .. "/redis.err" }, "redis")
    H.wait_until(function() return H.redis_cmd(port, "PING") == "+PONG" end, 5 * H.scale,
        "redis-server PING")
    return pid
end

function H.redis_stop(pid)
    H.proc.kill(pid, "TERM")
    assert(H.proc.wait(pid, 5), "redis-server did not stop")
end

--- A fresh temporary directory, removed by H.cleanup().
function H.tmpdir()
    local dir = assert(proc.mkdtemp("/tmp/lvspec-"))
    tmpdirs[#tmpdirs + 1] = dir
    return dir
end

--- Writes text to a file in a fresh temporary directory and returns its path.
function H.tmpfile(text, name)
    local path = H.tmpdir() .. "/" .. (name or "file")
    write_file(path, text)
    return path
end

---------------------------------------------------------------------------------------------
-- processes

--- lvproc.spawn plus tracking, so H.cleanup() stops it. Raises if exec fails.
function H.spawn(argv, opts, what)
    local pid, err = proc.spawn(argv, opts)
    if not pid then error("spawn " .. tostring(argv[1]) .. ": " .. tostring(err), 2) end
    procs[pid] = { what = what or "process" }
    return pid
end

local function code_of(exited, v)
    if exited == nil then return nil end
    if exited then return v, "exit" end
    return 128 + v, "signal"
end

--- Sends sig (default TERM) to the process group, waits up to timeout, then SIGKILL.
--- Returns exit code (128+N when killed by signal N) and "exit" | "signal".
local function stop_pid(pid, sig, timeout)
    if not proc.alive(pid) then
        procs[pid] = nil
        return code_of(proc.wait(pid, 0))
    end
    proc.kill(pid, sig or "TERM")
    local exited, v = proc.wait(pid, timeout or 5 * H.scale)
    if exited == nil then
        proc.kill(pid, "KILL", true)
        exited, v = proc.wait(pid, 5)
    end
    -- anything left in its group (children of a shell wrapper) goes too
    proc.kill(pid, "KILL", true)
    procs[pid] = nil
    return code_of(exited, v)
end

--- Releases everything the harness started: connections, processes (TERM, then KILL after
--- 3 s), temporary directories (kept when LEVEE_KEEP_TMP=1).
function H.cleanup()
    for c in pairs(conns) do c:close() end
    local pids = {}
    for pid in pairs(procs) do
        -- a pid already reaped is not signalled: the number may belong to someone else now
        if proc.alive(pid) then
            pids[#pids + 1] = pid
            proc.kill(pid, "TERM", true)
        end
    end
    procs = {}
    local deadline = now() + 3 * H.scale
    for _, pid in ipairs(pids) do
        local left = deadline - now()
        if proc.wait(pid, left > 0 and left or 0) == nil then
            proc.kill(pid, "KILL", true)
            proc.wait(pid, 5)
        end
        proc.kill(pid, "KILL", true)
    end
    if os.getenv("LEVEE_KEEP_TMP") ~= "1" then
        for _, dir in ipairs(tmpdirs) do
            if dir:match("^/tmp/lvspec%-") then
                local pid = proc.spawn({ "rm", "-rf", dir })
                if pid then proc.wait(pid, 10) end
            end
        end
    end
    tmpdirs = {}
end

--- Processes started and still running, as { pid =, what = } (for specs that check cleanup).
function H.tracked()
    local out = {}
    for pid, p in pairs(procs) do
        if proc.alive(pid) then out[#out + 1] = { pid = pid, what = p.what } end
    end
    return out
end

---------------------------------------------------------------------------------------------
-- lv-testupstream

local Upstream = {}
Upstream.__index = Upstream

--- Starts lv-testupstream: opts.n listeners (default 1) or opts.ports (fixed ports),
--- opts.name (default "u"). Returns an Upstream once every "listening" line was printed.
function H.upstream(opts)
    opts = opts or {}
    local n = opts.n or (opts.ports and #opts.ports) or 1
    local self = setmetatable({ name = opts.name or "u", n = n, ports = {} }, Upstream)
    for i = 1, n do self.ports[i] = opts.ports and opts.ports[i] or 0 end
    self:start()
    return self
end

--- (Re)starts the process on the same ports (after :stop() or :kill()).
function Upstream:start()
    assert(not (self._pid and proc.alive(self._pid)), "upstream already running")
    local bin = env_path("LEVEE_TESTUPSTREAM", "the lv-testupstream binary")
    self.dir = self.dir or H.tmpdir()
    local argv = { bin, "--name", self.name }
    for i = 1, self.n do
        argv[#argv + 1] = "--listen"
        argv[#argv + 1] = HOST .. ":" .. self.ports[i]
    end
    local out, err = self.dir .. "/stdout", self.dir .. "/stderr"
    self._pid = H.spawn(argv, { stdout = out, stderr = err }, "upstream")
    local ports
    local ok, why = pcall(H.wait_until, function()
        local got = {}
        for p in read_file(out):gmatch("listening [^\n]*:(%d+)\n") do got[#got + 1] = tonumber(p) end
        if #got >= self.n then
            ports = got
            return true
        end
        if not proc.alive(self._pid) then error("exited", 0) end
    end, 5 * H.scale, "lv-testupstream to listen")
    if not ok then
        stop_pid(self._pid, "KILL")
        error("lv-testupstream did not start (" .. tostring(why) .. "): " .. read_file(err), 2)
    end
    self.ports = ports
    return self
end

function Upstream:pid() return self._pid end
function Upstream:alive() return self._pid ~= nil and proc.alive(self._pid) end
--- "127.0.0.1:PORT" of listener i (default 1).
function Upstream:addr(i) return HOST .. ":" .. self.ports[i or 1] end
--- All listener addresses, in order.
function Upstream:addrs()
    local out = {}
    for i = 1, self.n do out[i] = self:addr(i) end
    return out
end
function Upstream:url(i) return "http://" .. self:addr(i) end
--- Stderr of the process.
function Upstream:log() return read_file(self.dir .. "/stderr") end

--- GET /__stats through listener i (counters are per process, not per listener; by_port
--- splits them by listener).
function Upstream:stats(i)
    local r, err = H.request(self.ports[i or 1], { path = "/__stats" })
    if not r then error("upstream stats: " .. tostring(err), 2) end
    return H.json(r.body)
end

--- POST /__reset: zero counters and plans.
function Upstream:reset()
    local r, err = H.request(self.ports[1], { method = "POST", path = "/__reset", body = "" })
    if not r or r.status ~= 200 then error("upstream reset: " .. tostring(err), 2) end
end

--- SIGTERM (or sig), wait, SIGKILL if needed. Returns the exit code (0 = clean).
function Upstream:stop(sig)
    if not self._pid then return nil end
    local code, how = stop_pid(self._pid, sig)
    self._pid = nil
    return code, how
end

--- SIGKILL: the upstream vanishes without closing anything gracefully.
function Upstream:kill()
    return self:stop("KILL")
end

---------------------------------------------------------------------------------------------
-- levee

local Levee = {}
Levee.__index = Levee

local Code = {}
Code.__index = Code

--- Marks Lua source to be emitted verbatim by H.lua_source (hooks in table configs).
function H.code(src) return setmetatable({ src = src }, Code) end

local KEYWORDS = {}
for k in ([[and break do else elseif end false for function goto if in local nil not or
    repeat return then true until while]]):gmatch("%a+") do KEYWORDS[k] = true end

local function ser(v, indent)
    local t = type(v)
    if getmetatable(v) == Code then return v.src end
    if t == "string" then return ("%q"):format(v) end
    if t == "number" then
        if math.type(v) == "integer" then return tostring(v) end
        return ("%.17g"):format(v)
    end
    if t == "boolean" then return tostring(v) end
    if t ~= "table" then error("H.lua_source: cannot serialise a " .. t, 3) end
    local pad = ("  "):rep(indent + 1)
    local parts = {}
    local n = #v
    for i = 1, n do parts[#parts + 1] = pad .. ser(v[i], indent + 1) end
    local keys = {}
    for k in pairs(v) do
        if not (math.type(k) == "integer" and k >= 1 and k <= n) then keys[#keys + 1] = k end
    end
    table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
    for _, k in ipairs(keys) do
        local key
        if type(k) == "string" and k:match("^[%a_][%w_]*$") and not KEYWORDS[k] then
            key = k
        else
            key = "[" .. ser(k, indent + 1) .. "]"
        end
        parts[#parts + 1] = pad .. key .. " = " .. ser(v[k], indent + 1)
    end
    if #parts == 0 then return "{}" end
    return "{\n" .. table.concat(parts, ",\n") .. ",\n" .. ("  "):rep(indent) .. "}"
end

--- Lua source "return { ... }" for a config table (strings, numbers, booleans, nested
--- tables, H.code(...) for verbatim source such as hook functions).
function H.lua_source(tbl)
    return "return " .. ser(tbl, 0) .. "\n"
end

-- Replaces $PORT, $PORT2, $PORT_X..., $ADMIN..., with ports (one free port per distinct
-- name, remembered in `ports`), $DIR with dir and $SRC with LEVEE_SRC. Other $NAMEs stay.
local function substitute(text, ports, dir)
    return (text:gsub("%$([%u][%u%d_]*)", function(name)
        if name == "DIR" then return dir end
        if name == "SRC" then return H.src end
        if name:match("^PORT") or name:match("^ADMIN") then
            ports[name] = ports[name] or H.free_port()
            return tostring(ports[name])
        end
        return nil
    end))
end

-- LEVEE_TEST_WORKERS=N runs every levee the harness starts with `workers = N` (README
-- "Workers") unless its config sets workers itself; ctest uses it for the .workers2 runs.
local test_workers
do
    local v = os.getenv("LEVEE_TEST_WORKERS")
    if v and v ~= "" then
        test_workers = math.tointeger(tonumber(v))
        if not test_workers or test_workers < 1 then
            error("LEVEE_TEST_WORKERS must be a positive integer, got " .. v)
        end
    end
end

--- The number of workers a levee started by H.levee runs with when its config does not set
--- `workers`: LEVEE_TEST_WORKERS, or 1 when unset.
function H.workers() return test_workers or 1 end

-- A text config gets `workers = N` right after its first `return {`, unless the text names
-- a workers key anywhere.
local function inject_workers(text)
    if not test_workers or text:find("%f[%w_]workers%s*=") then return text end
    local s, e = text:find("return%s*{")
    if not s then return text end
    return text:sub(1, e) .. " workers = " .. test_workers .. "," .. text:sub(e + 1)
end

local function config_text(config)
    if type(config) == "table" then
        local c = {}
        for k, v in pairs(config) do c[k] = v end
        if c.listen == nil then c.listen = { HOST .. ":$PORT" } end
        if c.admin == true then c.admin = HOST .. ":$ADMIN" end
        if c.workers == nil then c.workers = test_workers end
        return H.lua_source(c)
    end
    assert(type(config) == "string", "H.levee: config must be Lua source text or a table")
    return inject_workers(config)
end

-- The first quoted "host:port" after `listen =`, for configs written with fixed ports.
local function guess_listen_port(text)
    local p = text:match("listen%s*=.-[\"'][^\"'\n]*:(%d+)[\"']")
    return p and tonumber(p)
end

--- Starts levee. opts:
---   config  = Lua source text, or a table (serialised with H.lua_source; listen defaults to
---             127.0.0.1:$PORT, admin = true becomes 127.0.0.1:$ADMIN)
---   files   = { ["name.lua"] = text, ... } extra files next to levee.lua (placeholders too)
---   args    = extra arguments after "-c levee.lua"
---   argv    = full argument list instead of "-c levee.lua" + args (placeholders replaced)
---   env     = { K = V | false }, ports = { PORT = n, ... } preset placeholders
---   port    = the port to wait for (default: $PORT, else the first listen port in the text)
---   wait    = false: return at once, do not wait for the port
---   timeout = seconds to wait for the port (default 10, ×3 under ASan)
---   bin     = binary instead of $LEVEE_BIN
function H.levee(opts)
    opts = opts or {}
    local self = setmetatable({}, Levee)
    self.dir = H.tmpdir()
    -- Ports this call picks itself may, rarely, be taken by another process before levee
    -- binds them: then levee is started again on fresh ports (never with preset ones).
    local tries = (opts.ports or opts.wait == false) and 1 or 3
    for try = 1, tries do
        self.ports = {}
        for k, v in pairs(opts.ports or {}) do self.ports[k] = v end
        self.config_path = self.dir .. "/" .. (opts.filename or "levee.lua")
        local text
        if opts.config ~= nil then
            text = substitute(config_text(opts.config), self.ports, self.dir)
            write_file(self.config_path, text)
        end
        self.config_text = text
        for name, body in pairs(opts.files or {}) do
            local path = self.dir .. "/" .. name
            local sub = path:match("^(.*)/[^/]+$")
            if sub ~= self.dir then
                local pid = proc.spawn({ "mkdir", "-p", sub })
                proc.wait(pid, 5)
            end
            write_file(path, substitute(body, self.ports, self.dir))
        end
        local argv = { opts.bin or env_path("LEVEE_BIN", "the levee binary") }
        if opts.argv then
            for _, a in ipairs(opts.argv) do argv[#argv + 1] = substitute(tostring(a), self.ports, self.dir) end
        else
            argv[#argv + 1] = "-c"
            argv[#argv + 1] = self.config_path
            for _, a in ipairs(opts.args or {}) do argv[#argv + 1] = substitute(tostring(a), self.ports, self.dir) end
        end
        self.argv = argv
        self.port = opts.port or self.ports.PORT or (text and guess_listen_port(text))
        self.admin_port = opts.admin_port or self.ports.ADMIN
        if self.port then self.url = "http://" .. HOST .. ":" .. self.port end
        if self.admin_port then self.admin_url = "http://" .. HOST .. ":" .. self.admin_port end
        self.stdout_path = self.dir .. "/stdout.log"
        self.stderr_path = self.dir .. "/stderr.log"
        self._pid = H.spawn(argv, { stdout = self.stdout_path, stderr = self.stderr_path, env = opts.env,
            cwd = opts.cwd or self.dir }, "levee")
        if opts.wait == false then return self end
        local ok, err = pcall(self.wait_ready, self, opts.timeout)
        if ok then return self end
        self:stop("KILL")
        local raced = next(self.ports) ~= nil and self:log():find("address already in use", 1, true)
        if try == tries or not raced then error(err, 2) end
        io.stderr:write("H.levee: a port was taken before levee bound it; starting again\n")
    end
end

--- Waits until the listen port (and admin port, when known) accept TCP connections.
--- Errors with levee's stderr if it exits first or the deadline passes.
function Levee:wait_ready(timeout)
    assert(self.port, "H.levee: no port to wait for (use $PORT or opts.port)")
    timeout = timeout or 10 * H.scale
    local deadline = now() + timeout
    for _, port in ipairs({ self.port, self.admin_port }) do
        while not H.port_open(port) do
            if not proc.alive(self._pid) then
                local code = code_of(proc.wait(self._pid, 0))
                error(("levee exited (code %s) before listening on %d\n--- argv: %s\n--- stderr:\n%s")
                    :format(tostring(code), port, table.concat(self.argv, " "), self:log()), 0)
            end
            if now() >= deadline then
                error(("levee not listening on %d after %.1fs\n--- stderr:\n%s")
                    :format(port, timeout, self:log()), 0)
            end
            proc.sleep(0.01)
        end
    end
    return self
end

function Levee:pid() return self._pid end
function Levee:alive() return self._pid ~= nil and proc.alive(self._pid) end
--- levee's stderr so far.
function Levee:log() return read_file(self.stderr_path) end
--- levee's stdout so far.
function Levee:stdout() return read_file(self.stdout_path) end
--- Non-empty stdout lines (the access log when access_log = "stdout").
function Levee:access_log() return lines_of(self:stdout()) end

--- Access-log lines that decode as JSON objects.
function Levee:access_json()
    local out = {}
    for _, line in ipairs(self:access_log()) do
        local ok, v = pcall(cjson.decode, line)
        if ok and type(v) == "table" then out[#out + 1] = v end
    end
    return out
end

--- Waits until the access log holds at least n JSON entries; returns them.
function Levee:wait_access(n, timeout)
    return H.wait_until(function()
        local e = self:access_json()
        return #e >= n and e
    end, timeout, ("%d access log entries"):format(n))
end

--- Waits until the access log has a line for `path` (the raw target); returns the last one.
function Levee:access_entry(path, timeout)
    local found
    H.wait_until(function()
        for _, e in ipairs(self:access_json()) do
            if e.path == path then found = e end
        end
        return found
    end, timeout or 5 * H.scale, "the access-log line of " .. path)
    return found
end

--- Waits until stderr contains `pattern` (a Lua pattern; plain=true for a plain string).
function Levee:wait_log(pattern, timeout, plain)
    return H.wait_until(function()
        local text = self:log()
        return text:find(pattern, 1, plain) and text
    end, timeout, "log line " .. pattern)
end

--- Sends a signal without waiting.
function Levee:kill(sig) return proc.kill(self._pid, sig or "TERM") end

--- SIGHUP: reload the configuration.
function Levee:reload() return proc.kill(self._pid, "HUP") end

--- Rewrites the configuration file (text or table); placeholders keep their ports.
function Levee:write_config(config)
    local text = substitute(config_text(config), self.ports, self.dir)
    write_file(self.config_path, text)
    self.config_text = text
    return text
end

--- Stops levee with sig (default TERM), waits up to timeout (default 15 s), then SIGKILL.
--- Returns the exit code (128+N if killed by signal N) and "exit" | "signal".
function Levee:stop(sig, timeout)
    if not self._pid then return self._code, self._how end
    self._code, self._how = stop_pid(self._pid, sig, timeout or 15 * H.scale)
    self._pid = nil
    return self._code, self._how
end

--- Waits for levee to exit by itself; returns code, how, or nil on timeout.
function Levee:wait_exit(timeout)
    if not self._pid then return self._code, self._how end
    local exited, v = proc.wait(self._pid, timeout or 10 * H.scale)
    if exited == nil then return nil end
    procs[self._pid] = nil
    self._pid = nil
    self._code, self._how = code_of(exited, v)
    return self._code, self._how
end

--- H.request to levee's listen port.
function Levee:request(opts) return H.request(self.port, opts) end

--- H.request to the admin port; `opts` may be a path string.
function Levee:admin(opts)
    if type(opts) == "string" then opts = { path = opts } end
    return H.request(assert(self.admin_port, "no admin port"), opts)
end

--- GET /status, checked (200) and decoded.
function Levee:status()
    local r = assert(self:admin("/status"))
    assert(r.status == 200, "GET /status: " .. tostring(r.status))
    return H.json(r.body)
end

--- The value of one sample of /metrics written as it appears there, e.g.
-- lv:metric('levee_config_reloads_total{result="ok"}'); nil when there is no such sample.
function Levee:metric(series)
    local r = assert(self:admin("/metrics"))
    assert(r.status == 200, "GET /metrics: " .. tostring(r.status))
    for line in r.body:gmatch("([^\n]*)\n") do
        if line:sub(1, #series + 1) == series .. " " then return tonumber(line:sub(#series + 2)) end
    end
    return nil
end

--- The samples of a /metrics text: { { name =, labels = { k = v }, value = number }, ... }.
function H.parse_metrics(text)
    local out = {}
    for line in text:gmatch("[^\n]+") do
        if line:sub(1, 1) ~= "#" then
            local name, lbl, v = line:match("^([%w_:]+){(.*)}%s+(%S+)$")
            if not name then
                name, v = line:match("^([%w_:]+)%s+(%S+)$")
                lbl = ""
            end
            if name then
                local labels = {}
                for k, x in lbl:gmatch('([%w_]+)="(.-)"') do labels[k] = x end
                out[#out + 1] = { name = name, labels = labels, value = tonumber(v) }
            end
        end
    end
    return out
end

--- The value of the first sample of `name` whose labels include `want` (nil when none).
function H.metric(samples, name, want)
    for _, m in ipairs(samples) do
        if m.name == name then
            local ok = true
            for k, v in pairs(want or {}) do
                if m.labels[k] ~= v then ok = false break end
            end
            if ok then return m.value end
        end
    end
    return nil
end

--- Runs levee (or opts.bin) to completion: returns exit code, stdout, stderr.
--- opts: bin, env, cwd, timeout (default 30 s).
function H.run_levee(args, opts)
    opts = opts or {}
    local dir = H.tmpdir()
    local argv = { opts.bin or env_path("LEVEE_BIN", "the levee binary") }
    for _, a in ipairs(args or {}) do argv[#argv + 1] = tostring(a) end
    local out, err = dir .. "/stdout", dir .. "/stderr"
    local pid = H.spawn(argv, { stdout = out, stderr = err, env = opts.env, cwd = opts.cwd }, "levee")
    local exited, v = proc.wait(pid, opts.timeout or 30 * H.scale)
    if exited == nil then
        stop_pid(pid, "KILL")
        error("levee " .. table.concat(args or {}, " ") .. ": no exit after timeout\n" .. read_file(err), 2)
    end
    procs[pid] = nil
    return (code_of(exited, v)), read_file(out), read_file(err)
end

---------------------------------------------------------------------------------------------
-- HTTP over luasocket, hiding nothing

local Conn = {}
Conn.__index = Conn

local function classify_err(err)
    if err == "closed" then return "closed" end
    if err and (err:find("reset") or err:find("broken pipe")) then return "reset" end
    return err
end

--- Opens a TCP connection to 127.0.0.1:port. opts.timeout (default 5 s) is the default
--- deadline of each read. Returns a Conn or nil, err.
function H.conn(port, opts)
    opts = opts or {}
    local s = socket.tcp()
    s:settimeout(opts.connect_timeout or opts.timeout or 5)
    local ok, err = s:connect(opts.host or HOST, port)
    if not ok then
        s:close()
        return nil, err
    end
    s:setoption("tcp-nodelay", true)
    local c = setmetatable({ sock = s, fd = s:getfd(), buf = "", eof = nil, port = port,
        timeout = opts.timeout or 5 }, Conn)
    conns[c] = true
    return c
end

--- Writes bytes (all of them, within the default timeout). Returns true or nil, err.
function Conn:send(bytes)
    if not self.sock then return nil, "closed" end
    self.sock:settimeout(self.timeout, "t")
    local i, err, last = self.sock:send(bytes)
    if not i then
        local why = classify_err(err)
        if why == "reset" or why == "closed" then self.eof = self.eof or why end
        return nil, why, last
    end
    return true
end

-- Reads into self.buf with lvproc.recv (poll + recv): luasocket reports a reset as "closed",
-- and its select() fails for descriptors past FD_SETSIZE.
-- Returns true if bytes arrived, or nil and "closed" | "reset" | "timeout".
function Conn:_fill(deadline)
    if not self.sock then return nil, "closed" end
    if self.eof then return nil, self.eof end
    local left = deadline - now()
    local data, status = proc.recv(self.fd, 256 * 1024, left > 0 and left or 0)
    if #data > 0 then
        self.buf = self.buf .. data
        return true
    end
    if status ~= "timeout" then self.eof = status end
    return nil, status
end

-- Removes and returns n bytes, reading as needed (pieces gathered in a table, so large bodies
-- are not quadratic). Returns nil, why on close/timeout (bytes stay in the buffer).
function Conn:_take(n, deadline)
    if #self.buf >= n then
        local out = self.buf:sub(1, n)
        self.buf = self.buf:sub(n + 1)
        return out
    end
    local parts, have = { self.buf }, #self.buf
    self.buf = ""
    while have < n do
        local ok, why = self:_fill(deadline)
        if not ok then
            self.buf = table.concat(parts) .. self.buf
            return nil, why
        end
        parts[#parts + 1] = self.buf
        have = have + #self.buf
        self.buf = ""
    end
    local all = table.concat(parts)
    self.buf = all:sub(n + 1)
    return all:sub(1, n)
end

-- Removes and returns one CRLF-terminated line (without CRLF).
function Conn:_line(deadline)
    while true do
        local i = self.buf:find("\r\n", 1, true)
        if i then
            local line = self.buf:sub(1, i - 1)
            self.buf = self.buf:sub(i + 2)
            return line
        end
        local ok, why = self:_fill(deadline)
        if not ok then return nil, why end
    end
end

--- Reads exactly one response: the head (status, reason, version, headers with lower-cased
--- names, repeated ones joined with ", ", header_list in order and original case), then the
--- body framed by chunked / Content-Length / close, or none for HEAD (opts.head = true),
--- 1xx, 204 and 304. Bytes after it stay buffered for the next call. opts.head_only = true
--- returns after the head and leaves the body unread (read it with :skip, :read_all...). A 1xx interim response
--- is returned on its own (status 100..199, interim = true).
--- Returns the response, or nil, "closed" | "reset" | "timeout" | "bad response: ...", and the
--- raw bytes received so far.
function Conn:read_response(opts)
    opts = opts or {}
    local deadline = now() + (opts.timeout or self.timeout)
    local raw = {}
    local function fail(why)
        raw[#raw + 1] = self.buf
        self.buf = ""
        return nil, why, table.concat(raw)
    end
    local head_end
    while true do
        head_end = self.buf:find("\r\n\r\n", 1, true)
        if head_end then break end
        local ok, why = self:_fill(deadline)
        if not ok then return fail(why) end
    end
    local head = self.buf:sub(1, head_end + 3)
    self.buf = self.buf:sub(head_end + 4)
    raw[1] = head
    local r = { headers = {}, header_list = {}, raw_head = head }
    local status_line = head:match("^([^\r\n]*)\r\n")
    local major, minor, code, reason = status_line:match("^HTTP/(%d)%.(%d) (%d%d%d) ?(.*)$")
    if not code then return fail("bad response: status line " .. ("%q"):format(status_line)) end
    r.version = major .. "." .. minor
    r.status = tonumber(code)
    r.reason = reason
    r.status_line = status_line
    for line in head:sub(#status_line + 3, -3):gmatch("([^\r\n]*)\r\n") do
        local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
        if not name then return fail("bad response: header line " .. ("%q"):format(line)) end
        r.header_list[#r.header_list + 1] = { name, value }
        local k = name:lower()
        r.headers[k] = r.headers[k] and (r.headers[k] .. ", " .. value) or value
    end
    local status = r.status
    if opts.head_only then
        r.raw = head
        return r
    end
    if status < 200 then
        r.interim = true
        r.body = ""
        r.raw = head
        return r
    end
    local te = r.headers["transfer-encoding"]
    local cl = r.headers["content-length"]
    if opts.head or status == 204 or status == 304 then
        r.body = ""
    elseif te and te:lower():match("chunked%s*$") then
        r.chunked = true
        r.chunks = {}
        local body = {}
        while true do
            local line, why = self:_line(deadline)
            if not line then return fail(why) end
            raw[#raw + 1] = line .. "\r\n"
            local size = line:match("^(%x+)")
            if not size then return fail("bad response: chunk size " .. ("%q"):format(line)) end
            size = tonumber(size, 16)
            if size == 0 then break end
            local data, why2 = self:_take(size + 2, deadline)
            if not data then return fail(why2) end
            raw[#raw + 1] = data
            if data:sub(-2) ~= "\r\n" then return fail("bad response: chunk not followed by CRLF") end
            body[#body + 1] = data:sub(1, -3)
            r.chunks[#r.chunks + 1] = size
        end
        r.trailers = {}
        while true do
            local line, why = self:_line(deadline)
            if not line then return fail(why) end
            raw[#raw + 1] = line .. "\r\n"
            if line == "" then break end
            local name, value = line:match("^([^:%s]+):[ \t]*(.-)[ \t]*$")
            if name then r.trailers[name:lower()] = value end
        end
        r.body = table.concat(body)
    elseif cl then
        local n = tonumber(cl:match("^%s*(%d+)%s*$"))
        if not n then return fail("bad response: Content-Length " .. ("%q"):format(cl)) end
        local data, why = self:_take(n, deadline)
        if not data then return fail(why) end
        raw[#raw + 1] = data
        r.body = data
    else
        -- no framing: the body runs until the peer closes
        while true do
            local ok, why = self:_fill(deadline)
            if not ok then
                if why ~= "closed" then return fail(why) end
                break
            end
        end
        r.body = self.buf
        raw[#raw + 1] = self.buf
        self.buf = ""
        r.until_close = true
    end
    r.raw = table.concat(raw)
    return r
end

--- Reads everything until the peer closes or the deadline (default: the conn's timeout).
--- Returns data, "closed" | "reset" | "timeout".
function Conn:read_all(timeout)
    local deadline = now() + (timeout or self.timeout)
    local why
    while true do
        local ok, w = self:_fill(deadline)
        if not ok then
            why = w
            break
        end
    end
    local data = self.buf
    self.buf = ""
    return data, why
end

--- Reads and drops n bytes (huge bodies, without keeping them). Returns the number dropped
--- and, when it stopped short, "closed" | "reset" | "timeout". timeout: the whole call.
function Conn:skip(n, timeout)
    local deadline = now() + (timeout or self.timeout)
    local dropped = 0
    while dropped < n do
        if #self.buf == 0 then
            local ok, why = self:_fill(deadline)
            if not ok then return dropped, why end
        end
        local take = math.min(#self.buf, n - dropped)
        dropped = dropped + take
        self.buf = self.buf:sub(take + 1)
    end
    return dropped
end

--- True (and "closed" | "reset") once the peer has closed. Waits up to `wait` seconds
--- (default 0: just checks); bytes arriving meanwhile are buffered, not lost.
function Conn:closed(wait)
    local deadline = now() + (wait or 0)
    while not self.eof do
        local ok, why = self:_fill(deadline)
        if not ok and why == "timeout" then break end
        if now() >= deadline and not self.eof then break end
    end
    if self.eof then return true, self.eof end
    return false
end

--- Bytes received and not yet consumed by read_response.
function Conn:buffered() return self.buf end

function Conn:close()
    if self.sock then
        self.sock:close()
        self.sock = nil
    end
    conns[self] = nil
end

--- Builds request bytes: opts.method (GET), path (/), version ("HTTP/1.1"), headers (list of
--- {name, value} in order, or a map name -> value | {values}, sent sorted), body. Adds
--- "Host: 127.0.0.1:PORT" unless a Host header is given or opts.host == false, and
--- Content-Length for a body unless Content-Length or Transfer-Encoding is given;
--- opts.chunked = true sends the body chunked instead. Nothing else is added.
function H.build_request(port, opts)
    opts = opts or {}
    local list = {}
    local hs = opts.headers or {}
    if hs[1] ~= nil or next(hs) == nil then
        for _, kv in ipairs(hs) do list[#list + 1] = { kv[1], kv[2] } end
    else
        local names = {}
        for k in pairs(hs) do names[#names + 1] = k end
        table.sort(names)
        for _, k in ipairs(names) do
            local v = hs[k]
            if type(v) == "table" then
                for _, x in ipairs(v) do list[#list + 1] = { k, x } end
            else
                list[#list + 1] = { k, v }
            end
        end
    end
    local has = {}
    for _, kv in ipairs(list) do has[kv[1]:lower()] = true end
    local lines = { ("%s %s %s"):format(opts.method or "GET", opts.path or "/", opts.version or "HTTP/1.1") }
    if not has.host and opts.host ~= false then lines[#lines + 1] = "Host: " .. HOST .. ":" .. tostring(port) end
    local body = opts.body
    if body ~= nil and not has["content-length"] and not has["transfer-encoding"] then
        if opts.chunked then
            lines[#lines + 1] = "Transfer-Encoding: chunked"
            body = (#body > 0 and (("%x\r\n"):format(#body) .. body .. "\r\n") or "") .. "0\r\n\r\n"
        else
            lines[#lines + 1] = "Content-Length: " .. #body
        end
    end
    for _, kv in ipairs(list) do lines[#lines + 1] = kv[1] .. ": " .. tostring(kv[2]) end
    return table.concat(lines, "\r\n") .. "\r\n\r\n" .. (body or "")
end

--- One request on a fresh connection: sends H.build_request(port, opts), reads one final
--- response (1xx responses are skipped and listed in r.interim_responses), closes.
--- opts.timeout (default 5 s) bounds the whole exchange. Returns the response
--- {status, reason, version, headers, header_list, body, raw, ...} or nil, err, raw.
function H.request(port, opts)
    opts = opts or {}
    local c, err = H.conn(port, { timeout = opts.timeout or 5 })
    if not c then return nil, err end
    local ok, serr = c:send(H.build_request(port, opts))
    if not ok and serr ~= "reset" and serr ~= "closed" then
        c:close()
        return nil, serr
    end
    local interim = {}
    local deadline = now() + (opts.timeout or 5)
    while true do
        local r, why, raw = c:read_response({ head = (opts.method == "HEAD"), timeout = math.max(deadline - now(), 0) })
        if not r then
            c:close()
            return nil, why, raw
        end
        if not r.interim then
            r.interim_responses = interim
            c:close()
            return r
        end
        interim[#interim + 1] = r
    end
end

--- Sends raw bytes on a fresh connection and returns everything received until the peer
--- closes or opts.timeout (default 2 s) passes: data, "closed" | "reset" | "timeout".
function H.raw(port, bytes, opts)
    opts = opts or {}
    local c, err = H.conn(port, { timeout = opts.timeout or 2 })
    if not c then return nil, err end
    c:send(bytes)
    local data, why = c:read_all(opts.timeout or 2)
    c:close()
    return data, why
end

-- Processes outlive nothing: if the spec process exits without H.cleanup(), the children
-- die anyway (PR_SET_PDEATHSIG); this also stops them when the Lua state is closed.
-- A gateway error as README, "How levee proxies" says: status, Levee-Error, JSON {error, route, request_id}
-- with request_id equal to the X-Request-Id response header. Returns the decoded body.
function H.assert_gw_error(r, status, token, route)
    assert(type(r) == "table", "no response")
    assert(r.status == status, ("status %s, want %s"):format(tostring(r.status), tostring(status)))
    assert(r.headers["levee-error"] == token,
        ("Levee-Error %s, want %s"):format(tostring(r.headers["levee-error"]), tostring(token)))
    assert((r.headers["content-type"] or ""):match("^application/json"), "not JSON")
    local e = H.json(r.body)
    assert(e.error == token, "JSON error " .. tostring(e.error))
    assert(e.route == route, ("JSON route %s, want %s"):format(tostring(e.route), tostring(route)))
    local rid = r.headers["x-request-id"]
    assert(type(rid) == "string" and #rid > 0, "no X-Request-Id")
    assert(rid == e.request_id, "request_id differs from X-Request-Id")
    return e
end

---------------------------------------------------------------------------------------------
-- Added for spec/integration/shared_state_workers_spec.lua: waiting for a response without
-- blocking on it (a request left pending while the spec drives other traffic).

--- Whether one whole response (head, and a body framed by Content-Length; no body when it has
--- none) is buffered, reading for at most `wait` seconds (default 0). Leaves it buffered for
--- c:read_response(). Chunked and read-until-close bodies count as complete with the head.
function Conn:response_ready(wait)
    local deadline = now() + (wait or 0)
    repeat
        local head_end = self.buf:find("\r\n\r\n", 1, true)
        if head_end then
            local head = self.buf:sub(1, head_end):lower()
            local cl = tonumber(head:match("\ncontent%-length:%s*(%d+)"))
            if not cl or #self.buf >= head_end + 3 + cl then return true end
        end
        if self.eof then return false end
        local ok, why = self:_fill(deadline)
        if not ok and why ~= "timeout" then return false end
    until now() >= deadline
    return false
end

H._sentinel = setmetatable({}, { __gc = function() pcall(H.cleanup) end })

return H
