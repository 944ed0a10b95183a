-- `levee dev` (README "levee dev"): the console access-log line (piped, NO_COLOR, colours on
-- a terminal), --json, the admin API (default on, --admin ADDR, --admin off), --policy
-- (merged into the dev route, reloaded on save, a broken save refused with FILE:LINE, a
-- broken file at start exits 1), --fault (usage errors; injected faults once levee has route
-- faults) and the Levee-Fault header.

local H = require("helpers")

local ARROW = "\xe2\x86\x92"


local function contains(s, sub) return s:find(sub, 1, true) ~= nil end

-- A levee dev in front of `up`, its admin API on $ADMIN unless `extra` says otherwise.
local function dev(up, extra, opts)
    local argv = { "dev", up:url(), "--listen", "127.0.0.1:$PORT" }
    local admin = true
    for _, a in ipairs(extra or {}) do
        argv[#argv + 1] = a
        if a == "--admin" then admin = false end
    end
    if admin then
        argv[#argv + 1] = "--admin"
        argv[#argv + 1] = "127.0.0.1:$ADMIN"
    end
    opts = opts or {}
    opts.argv = argv
    return H.levee(opts)
end

local function get(lv, path, headers)
    local r, err = lv:request({ path = path, headers = headers })
    assert(r, err)
    return r
end

-- The console line (stdout) whose path field is `path`.
local function line_of(lv, path)
    return H.wait_until(function()
        for _, l in ipairs(lv:access_log()) do
            local p = l:match("^%d%d:%d%d:%d%d%.%d%d%d %S+ (%S+) ")
            if p == path then return l end
        end
    end, 5 * H.scale, "the console line of " .. path)
end

local TIME = "%d%d:%d%d:%d%d%.%d%d%d"
local MS = "%d+%.?%d*m?s"

describe("levee dev: the console line", function()
    after_each(H.cleanup)

    it("is one readable line per request when piped: fields in order, attempts joined by arrows, no colours", function()
        local up = H.upstream()
        local lv = dev(up)
        assert.equal(200, get(lv, "/v1/ok").status)
        assert.equal(200, get(lv, "/v1/orders", { ["X-Test-Plan"] = "o1:reset,200" }).status)
        assert.equal(404, get(lv, "/v1/missing", { ["X-Test-Status"] = "404" }).status)
        assert.equal(502, get(lv, "/v1/down", { ["X-Test-Plan"] = "o2:reset" }).status)

        local ok = line_of(lv, "/v1/ok")
        assert.matches("^" .. TIME .. " GET /v1/ok 200 " .. MS .. "  200 " .. MS .. "$", ok)
        local retried = line_of(lv, "/v1/orders")
        assert.matches("^" .. TIME .. " GET /v1/orders 200 " .. MS .. "  reset " .. MS .. " "
            .. ARROW .. " 200 " .. MS, retried)
        assert.matches("^" .. TIME .. " GET /v1/missing 404 " .. MS .. "  404 " .. MS .. "  retry_stop=verdict$",
            line_of(lv, "/v1/missing"))
        local down = line_of(lv, "/v1/down")
        assert.matches("^" .. TIME .. " GET /v1/down 502 " .. MS .. "  reset " .. MS .. " "
            .. ARROW .. " reset .*%[retried%]  retry_stop=attempts  error=upstream%-reset$", down)
        assert.is_nil(lv:stdout():find("\27", 1, true), "no escape byte when piped")
        -- the time is the local time of the request, to the millisecond
        local hh, mm = ok:match("^(%d%d):(%d%d)")
        local t = os.date("*t")
        assert.is_true(tonumber(hh) == t.hour or tonumber(mm) <= 1, ok)
    end)

    it("escapes what a client puts in the path, so it cannot reach the terminal", function()
        local up = H.upstream()
        local lv = dev(up)
        local data = H.raw(lv.port, "GET /a\27[31mred\27]0;x\7 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert.is_truthy(data)
        assert.equal(200, get(lv, "/after").status)
        line_of(lv, "/after")
        assert.is_nil(lv:stdout():find("\27", 1, true), lv:stdout())
        assert.is_nil(lv:stdout():find("\7", 1, true))
    end)

    local have_script = os.execute("command -v script >/dev/null 2>&1")

    -- levee dev on a terminal (script(1) gives it one); returns the transcript once `path`
    -- was logged.
    local function on_terminal(env)
        local up = H.upstream()
        local dir = H.tmpdir()
        local port = H.free_port()
        local cmd = ("echo $$ > %s/pid; exec %s dev %s --listen 127.0.0.1:%d --admin off")
            :format(dir, os.getenv("LEVEE_BIN"), up:url(), port)
        H.spawn({ "script", "-qfec", cmd, "/dev/null" },
            { stdout = dir .. "/tty", stderr = dir .. "/err", env = env }, "script")
        H.wait_until(function() return H.port_open(port) end, 10 * H.scale, "levee dev on a pty")
        local r = assert(H.request(port, { path = "/tty", headers = { ["X-Test-Plan"] = "t:reset,200" } }))
        assert.equal(200, r.status)
        local text = H.wait_until(function()
            local t = H.read_file(dir .. "/tty")
            return t and t:find("/tty", 1, true) and t
        end, 5 * H.scale, "the console line on the pty")
        local pid = tonumber(H.read_file(dir .. "/pid"))
        H.proc.kill(pid, "TERM")
        H.wait_until(function() return not H.proc.alive(pid) end, 15 * H.scale, "levee to stop")
        return text
    end

    it("is in colour on a terminal: the status by class, the arrows dim", function()
        assert(have_script, "script(1) (Debian's bsdutils, essential) is needed for a terminal")
        local text = on_terminal({ NO_COLOR = false })
        assert.is_truthy(text:find("\27[32m200\27[0m", 1, true), text)
        assert.is_truthy(text:find("\27[31mreset\27[0m", 1, true), text)
        assert.is_truthy(text:find("\27[2m " .. ARROW .. " \27[0m", 1, true), text)
    end)

    it("has no colours when NO_COLOR is set, even on a terminal", function()
        assert(have_script, "script(1) (Debian's bsdutils, essential) is needed for a terminal")
        local text = on_terminal({ NO_COLOR = "1" })
        assert.is_truthy(text:find("/tty 200", 1, true), text)
        assert.is_nil(text:find("\27", 1, true), text)
    end)

    it("--json logs JSON lines instead", function()
        local up = H.upstream()
        local lv = dev(up, { "--json" })
        assert.equal(200, get(lv, "/j", { ["X-Test-Plan"] = "j:reset,200" }).status)
        local e = lv:wait_access(1)[1]
        assert.equal("/j", e.path)
        assert.equal(200, e.status)
        assert.equal("dev", e.route)
        assert.equal(2, #e.tries)
        assert.equal("reset", e.tries[1].outcome)
    end)
end)

describe("levee dev: the admin API", function()
    after_each(H.cleanup)

    it("answers /status on --admin ADDR, and the banner says where", function()
        local up = H.upstream()
        local lv = dev(up)
        local s = lv:status()
        assert.equal("dev", s.routes[1].name)
        assert.is_truthy(contains(lv:log(), "levee dev: http://127.0.0.1:" .. lv.port .. " -> "
            .. up:url() .. " (admin http://127.0.0.1:" .. lv.admin_port .. "/"), lv:log())
    end)

    it("is on at 127.0.0.1:9901 by default", function()
        assert(not H.port_open(9901), "127.0.0.1:9901 is taken by another process: this test "
            .. "checks levee dev's default admin address")
        local up = H.upstream()
        local lv = H.levee({ argv = { "dev", up:url(), "--listen", "127.0.0.1:$PORT" }, admin_port = 9901 })
        local r = assert(H.request(9901, { path = "/status" }))
        assert.equal(200, r.status)
        assert.equal("dev", H.json(r.body).routes[1].name)
        assert.is_truthy(contains(lv:log(), "(admin http://127.0.0.1:9901/"))
    end)

    it("--admin off turns it off", function()
        local up = H.upstream()
        local admin = H.free_port()
        local lv = dev(up, { "--admin", "off" })
        assert.equal(200, get(lv, "/x").status)
        assert.is_false(H.port_open(admin))
        assert.is_truthy(contains(lv:log(), "(admin off"), lv:log())
        assert.is_truthy(lv:log():find("admin API", 1, true) == nil, lv:log())
    end)
end)

describe("levee dev --policy", function()
    after_each(H.cleanup)

    -- (no breaker: the resets below would open it)
    local POLICY1 = "return {\n  retry = { attempts = 1 },\n  breaker = false,\n}\n"
    local POLICY3 = "return {\n  retry = { attempts = 3 },\n  breaker = false,\n}\n"

    it("merges the file into the dev route and reloads it on save; a broken save is refused", function()
        local up = H.upstream()
        local lv = dev(up, { "--policy", "$DIR/policy.lua" }, { files = { ["policy.lua"] = POLICY1 } })
        assert.is_truthy(contains(lv:log(), ", policy " .. lv.dir .. "/policy.lua"), lv:log())
        -- one attempt: a reset is the answer
        assert.equal(502, get(lv, "/p1", { ["X-Test-Plan"] = "p1:reset,200" }).status)
        assert.matches(" 502 " .. MS .. "  reset " .. MS .. "  ", line_of(lv, "/p1"))

        -- saved with three attempts: retried from the next request on
        H.write_file(lv.dir .. "/policy.lua", POLICY3)
        H.wait_until(function() return lv:status().generation == 2 end, 10 * H.scale,
            "the saved policy in force")
        assert.equal(200, get(lv, "/p2", { ["X-Test-Plan"] = "p2:reset,reset,200" }).status)
        assert.matches("reset " .. MS .. " " .. ARROW .. " reset " .. MS .. " " .. ARROW .. " 200 ",
            line_of(lv, "/p2"))

        -- a broken save: refused with FILE:LINE on stderr, the policy in force keeps serving
        H.write_file(lv.dir .. "/policy.lua", "return {\n  retry = {\n    attempts = 0,\n  },\n  breaker = false,\n}\n")
        lv:wait_log(lv.dir .. "/policy.lua:3: retry.attempts: expected integer >= 1, got 0", 10 * H.scale, true)
        assert.equal(200, get(lv, "/p3", { ["X-Test-Plan"] = "p3:reset,reset,200" }).status)
        assert.matches("reset " .. MS .. " " .. ARROW .. " reset " .. MS .. " " .. ARROW .. " 200 ",
            line_of(lv, "/p3"))
        local st = lv:status()
        assert.matches("^error: ", st.last_reload)
        assert.equal(2, st.generation)
    end)

    it("runs the policy's hooks and watches the modules it requires", function()
        local up = H.upstream()
        local files = {
            ["policy.lua"] = "local codes = require('codes')\nreturn {\n  breaker = false,\n"
                .. "  classify = function(res)\n    if res.status == codes.again then return 'retry' end\n"
                .. "  end,\n}\n",
            ["codes.lua"] = "return { again = 418 }\n",
        }
        local lv = dev(up, { "--policy", "$DIR/policy.lua" }, { files = files })
        assert.equal(200, get(lv, "/k1", { ["X-Test-Plan"] = "k1:418,200" }).status)
        assert.matches("  418 " .. MS .. " " .. ARROW .. " 200 ", line_of(lv, "/k1"))
        H.write_file(lv.dir .. "/codes.lua", "return { again = 419 }\n")
        H.wait_until(function() return lv:status().generation == 2 end, 10 * H.scale,
            "the module's change in force")
        assert.equal(418, get(lv, "/k2", { ["X-Test-Plan"] = "k2:418,200" }).status)
        assert.equal(200, get(lv, "/k3", { ["X-Test-Plan"] = "k3:419,200" }).status)
        -- POST /reload reloads the policy too
        assert.equal(200, lv:admin({ method = "POST", path = "/reload" }).status)
        assert.equal(3, lv:status().generation)
    end)

    it("exits 1 with FILE:LINE when the policy is broken at start", function()
        local path = H.tmpfile("return {\n  timeout = '1s',\n  retry = { attempts = 0 },\n}\n", "policy.lua")
        local code, out, err = H.run_levee({ "dev", "127.0.0.1:1", "--listen", "127.0.0.1:" .. H.free_port(),
            "--admin", "off", "--policy", path })
        assert.equal(1, code)
        assert.equal("", out)
        assert.equal(path .. ":3: retry.attempts: expected integer >= 1, got 0\n", err)
        code, _, err = H.run_levee({ "dev", "127.0.0.1:1", "--admin", "off", "--policy", path .. ".missing" })
        assert.equal(1, code)
        assert.equal(path .. ".missing:1: cannot read the file: No such file or directory\n", err)
    end)
end)

describe("levee dev --fault", function()
    after_each(H.cleanup)

    it("exits 2 (a usage error) on a bad SPEC, saying what is wrong", function()
        local cases = {
            { "bogus", 'levee dev: --fault: expected abort=STATUS[:P%], delay=DURATION[:P%], reset[:P%] or throttle=SIZE[:P%], got "bogus"' },
            { "abort=99", 'levee dev: --fault: abort: expected a status between 200 and 599, got "abort=99"' },
            { "reset:200%", 'levee dev: --fault: the percent must be more than 0% and at most 100%, got "reset:200%"' },
        }
        for _, c in ipairs(cases) do
            local code, out, err = H.run_levee({ "dev", "127.0.0.1:1", "--admin", "off", "--fault", c[1] })
            assert.equal(2, code, c[1])
            assert.equal("", out)
            assert.equal(c[2], err:match("^[^\n]*"))
            assert.is_truthy(contains(err, "usage: levee"), err)
        end
        local code, _, err = H.run_levee({ "dev", "127.0.0.1:1", "--fault" })
        assert.equal(2, code)
        assert.matches("^levee dev: %-%-fault needs a SPEC", err)
    end)

    it("abort=503 answers 503 without reaching the upstream, and the console line shows the fault", function()
        local up = H.upstream()
        local lv = dev(up, { "--fault", "abort=503" })
        assert.is_truthy(contains(lv:log(), "faults abort=503"), lv:log())
        local r = get(lv, "/f")
        assert.equal(503, r.status)
        local l = line_of(lv, "/f")
        assert.matches(" GET /f 503 ", l)
        assert.is_truthy(contains(l, "(fault)") and contains(l, "fault"), l)
        assert.equal(0, up:stats().requests)
    end)

    it("the Levee-Fault header is on in dev and never forwarded", function()
        local up = H.upstream()
        local lv = dev(up)
        assert.equal(503, get(lv, "/h", { ["Levee-Fault"] = "abort=503" }).status)
        assert.equal(0, up:stats().requests)
        assert.is_truthy(contains(line_of(lv, "/h"), "fault"))
        local r = get(lv, "/h2", { ["Levee-Fault"] = "delay=10ms" })
        assert.equal(200, r.status)
        for _, h in ipairs(H.json(r.body).headers) do
            assert.is_not.equal("levee-fault", h[1]:lower())
        end
        assert.equal(400, get(lv, "/h3", { ["Levee-Fault"] = "nonsense" }).status)
    end)
end)
