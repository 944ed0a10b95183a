-- scripts/demo.sh: the scripted tour (a retry that succeeds, a breaker that opens) runs, levee
-- keeps serving, and stopping the script by its PID (SIGTERM) or Ctrl-C (SIGINT to its process
-- group) leaves none of the processes it started. The demo uses the binaries next to
-- LEVEE_BIN, free ports, and neither runs scripts/setup.sh nor builds.

local H = require("helpers")
local proc = H.proc

local function read(path)
    local f = io.open(path)
    if not f then return nil end
    local s = f:read("a")
    f:close()
    return s
end

-- A process that still runs (not gone, not a zombie) with `needle` in its command line.
local function running(pid, needle)
    local stat = read("/proc/" .. pid .. "/stat")
    if not stat then return false end
    if stat:match("^%d+ %b() (%a)") == "Z" then return false end
    local cmd = (read("/proc/" .. pid .. "/cmdline") or ""):gsub("%z", " ")
    return cmd:find(needle, 1, true) ~= nil
end

-- PIDs of processes whose process group is pgid (from /proc/*/stat).
local function group_members(pgid)
    local out = {}
    local p = io.popen("ls /proc")
    for name in p:lines() do
        if name:match("^%d+$") then
            local stat = read("/proc/" .. name .. "/stat")
            local state, pgrp = (stat or ""):match("^%d+ %b() (%a) %d+ (%d+)")
            if pgrp and tonumber(pgrp) == pgid and state ~= "Z" then out[#out + 1] = tonumber(name) end
        end
    end
    p:close()
    return out
end

local function start_demo()
    local src = assert(os.getenv("LEVEE_SRC"), "LEVEE_SRC not set")
    local bin = assert(os.getenv("LEVEE_BIN"), "LEVEE_BIN not set")
    if bin:sub(1, 1) ~= "/" then bin = (os.getenv("PWD") or ".") .. "/" .. bin end
    local build = bin:match("^(.*)/[^/]+$")
    local dir = H.tmpdir()
    local d = { dir = dir, pidfile = dir .. "/pids", out = dir .. "/stdout", err = dir .. "/stderr",
                port = H.free_port(), admin = H.free_port(), up1 = H.free_port(), up2 = H.free_port() }
    d.pid = H.spawn({ "bash", src .. "/scripts/demo.sh" }, {
        cwd = src, stdout = d.out, stderr = d.err,
        env = {
            LEVEE_DEMO_NO_SETUP = "1", LEVEE_BUILD = build,
            LEVEE_DEMO_PORT = tostring(d.port), LEVEE_DEMO_ADMIN_PORT = tostring(d.admin),
            LEVEE_DEMO_UPSTREAM_PORTS = d.up1 .. " " .. d.up2,
            LEVEE_DEMO_PIDFILE = d.pidfile,
        },
    }, "demo.sh")
    local function log() return (read(d.out) or "") .. (read(d.err) or "") end
    H.wait_until(function()
        if not proc.alive(d.pid) then error("demo.sh exited early:\n" .. log()) end
        return (read(d.err) or ""):find("levee demo: running", 1, true)
    end, 30 * H.scale, "the demo to finish its tour")
    local pids = read(d.pidfile) or ""
    d.levee = tonumber(pids:match("levee (%d+)"))
    d.upstream = tonumber(pids:match("upstream (%d+)"))
    d.log = log
    return d
end

local function assert_all_gone(d)
    -- the script's own children are stopped before it exits: nothing to wait for after that
    assert.is_false(running(d.levee, "levee"), "levee (pid " .. d.levee .. ") still runs")
    assert.is_false(running(d.upstream, "lv-testupstream"),
        "lv-testupstream (pid " .. d.upstream .. ") still runs")
    assert.same({}, group_members(d.pid))
end

describe("scripts/demo.sh", function()
    after_each(H.cleanup)

    it("tours a retry and an open breaker, serves, and stops everything on SIGTERM", function()
        local d = start_demo()
        assert.is_number(d.levee)
        assert.is_number(d.upstream)
        assert.is_true(running(d.levee, "levee"))
        assert.is_true(running(d.upstream, "lv-testupstream"))

        local out = read(d.out)
        -- the retry: 503 then 200, both tries in the access log line
        assert.matches('"path":"/api/retry"[^\n]*"status":200,"attempts":2,"tries":%[{"outcome":"503"', out)
        -- the breaker: 503 breaker-open once three failures in a row opened it
        assert.matches("Levee%-Error: breaker%-open", out)
        assert.matches('"error":"breaker%-open"', out)

        -- levee keeps serving after the tour
        local r = assert(H.request(d.port, { path = "/api/hello" }))
        assert.equal(200, r.status)

        assert.is_true(proc.kill(d.pid, "TERM"))
        local exited, code = proc.wait(d.pid, 20 * H.scale)
        assert.is_not_nil(exited, "demo.sh did not exit after SIGTERM:\n" .. d.log())
        assert.is_true(exited)
        assert.equal(143, code)
        assert_all_gone(d)
        assert.is_false(H.port_open(d.port))
    end)

    it("stops everything on Ctrl-C (SIGINT to its process group)", function()
        local d = start_demo()
        assert.is_true(proc.kill(d.pid, "INT", true))
        local exited = proc.wait(d.pid, 20 * H.scale)
        assert.is_not_nil(exited, "demo.sh did not exit after SIGINT:\n" .. d.log())
        assert_all_gone(d)
    end)
end)
