-- Unit specs for `levee dev` in lua/levee/config.lua (README "levee dev"): --fault SPECs,
-- --admin, --json, and --policy files (merged into the dev route, errors at FILE:LINE with
-- the keys as the file writes them).

local config = require("levee.config")

local LUA_DIR = package.searchpath("levee.config", package.path):match("^(.*)/levee/config%.lua$")

local dir

local function write(name, text)
    local path = dir .. "/" .. name
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
end

local function strip(errs)
    local out = {}
    for i, e in ipairs(errs) do
        out[i] = e:gsub(dir:gsub("%p", "%%%0") .. "/", "")
    end
    return out
end


-- The dev config with a policy file holding `text`.
local function with_policy(text, opts)
    opts = opts or {}
    opts.policy = write(opts.name or "policy.lua", text)
    opts.lua_dir = LUA_DIR
    return config.dev("3000", nil, opts)
end

local function policy_errors(text, opts)
    local c, errs = with_policy(text, opts)
    assert.is_nil(c)
    return strip(errs)
end

before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
end)

after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
end)

describe("--fault", function()
    it("reads each kind, the percent optional (100 by default)", function()
        local cases = {
            { "abort=503", "abort", { status = 503, percent = 100 } },
            { "abort=503:10%", "abort", { status = 503, percent = 10 } },
            { "delay=300ms:50%", "delay", { time = "300ms", percent = 50 } },
            { "delay=2s", "delay", { time = "2s", percent = 100 } },
            { "reset:5%", "reset", { percent = 5 } },
            { "reset", "reset", { percent = 100 } },
            { "throttle=16KiB", "throttle", { rate = "16KiB", percent = 100 } },
            { "throttle=1MiB:0.5%", "throttle", { rate = "1MiB", percent = 0.5 } },
        }
        for _, c in ipairs(cases) do
            local kind, t = config.parse_fault(c[1])
            assert.are.equal(c[2], kind, c[1])
            assert.are.same(c[3], t, c[1])
        end
    end)

    it("says what is wrong with a bad SPEC", function()
        local syntax = "levee dev: --fault: expected abort=STATUS[:P%], delay=DURATION[:P%], "
            .. "reset[:P%] or throttle=SIZE[:P%], got "
        local cases = {
            { "bogus", syntax .. '"bogus"' },
            { "", syntax .. '""' },
            { "abort", syntax .. '"abort"' },
            { "reset=1", syntax .. '"reset=1"' },
            { "abort=503:10", syntax .. '"abort=503:10"' },
            { "abort=503:x%", syntax .. '"abort=503:x%"' },
            { "abort=50", 'levee dev: --fault: abort: expected a status between 200 and 599, got "abort=50"' },
            { "abort=600", 'levee dev: --fault: abort: expected a status between 200 and 599, got "abort=600"' },
            { "delay=soon", 'levee dev: --fault: delay: expected a duration such as "300ms" or "2s" (at most 1h), got "delay=soon"' },
            { "delay=2h", 'levee dev: --fault: delay: expected a duration such as "300ms" or "2s" (at most 1h), got "delay=2h"' },
            { "throttle=fast", 'levee dev: --fault: throttle: expected a rate in bytes per second such as "16KiB" (at most 1GiB), got "throttle=fast"' },
            { "reset:0%", 'levee dev: --fault: the percent must be more than 0% and at most 100%, got "reset:0%"' },
            { "reset:150%", 'levee dev: --fault: the percent must be more than 0% and at most 100%, got "reset:150%"' },
        }
        for _, c in ipairs(cases) do
            local kind, err = config.parse_fault(c[1])
            assert.is_nil(kind, c[1])
            assert.are.equal(c[2], err)
        end
        local cfg, errs = config.dev("3000", nil, { faults = { "reset", "nope" } })
        assert.is_nil(cfg)
        assert.are.same({ syntax .. '"nope"' }, errs)
    end)

    it("merges into the policy's fault table, the command line winning per kind; header faults on", function()
        assert.are.same({ headers = true }, config.merge_faults(nil, {}))
        local _, abort = config.parse_fault("abort=503:10%")
        local _, reset = config.parse_fault("reset:5%")
        assert.are.same({
            abort = { status = 503, percent = 10 },
            delay = { time = "1s", percent = 100 },
            reset = { percent = 5 },
            headers = true,
        }, config.merge_faults({ abort = { status = 500 }, delay = { time = "1s", percent = 100 } },
            { abort = abort, reset = reset }))
        assert.are.same({ headers = false }, config.merge_faults({ headers = false }, {}))
    end)

    it("becomes the dev route's fault table", function()
        local c, errs = config.dev("3000", nil, { faults = { "abort=503:10%", "delay=300ms" } })
        assert.is_table(c, errs and table.concat(errs, "\n"))
        local f = c.routes[1].fault
        assert.is_true(f.enabled and f.headers)
        assert.are.same({ enabled = true, status = 503, percent = 10 }, f.abort)
        assert.are.same({ enabled = true, time_ms = 300, percent = 100 }, f.delay)
        assert.is_false(f.reset.enabled)
    end)
end)

describe("levee dev options", function()
    it("turns the admin API on at 127.0.0.1:9901 unless --admin says otherwise", function()
        assert.are.same({ host = "127.0.0.1", port = 9901 }, config.dev("3000").admin)
        assert.is_nil(config.dev("3000", nil, { admin = "off" }).admin)
        assert.are.same({ host = "127.0.0.1", port = 7000 },
            config.dev("3000", nil, { admin = "127.0.0.1:7000" }).admin)
        local c, errs = config.dev("3000", nil, { admin = "nowhere" })
        assert.is_nil(c)
        assert.are.same({ 'levee dev: --admin: expected "host:port" (like "127.0.0.1:8080" or '
            .. '"[::1]:8080") or "off", got "nowhere"' }, errs)
        c, errs = config.dev("3000", "127.0.0.1:9901")
        assert.is_nil(c)
        assert.matches("^levee dev: admin: ", errs[1])
    end)

    it("logs the console line, or JSON lines with --json", function()
        assert.are.equal("console", config.dev("3000").access_log_format)
        assert.are.equal("json", config.dev("3000", nil, { json = true }).access_log_format)
        assert.are.equal("stdout", config.dev("3000").access_log)
    end)
end)

describe("--policy", function()
    it("merges the file's route policy into the dev route and watches the file", function()
        local c, files = with_policy("return {\n  timeout = '5s',\n  retry = { attempts = 4 },\n"
            .. "  breaker = false,\n}\n")
        assert.is_table(c, files and table.concat(files, "\n"))
        local r = c.routes[1]
        assert.are.equal("dev", r.name)
        assert.are.equal("app", r.upstream)
        assert.are.equal(5000, r.timeout_ms)
        assert.are.equal(4, r.retry.attempts)
        assert.is_false(r.breaker.enabled)
        assert.is_true(c.watch)
        assert.are.same({ dir .. "/policy.lua" }, files)
    end)

    it("keeps the dev route's breaker when the policy says nothing of it", function()
        local c = with_policy("return { retry = { attempts = 3 } }\n")
        assert.is_true(c.routes[1].breaker.enabled)
        assert.is_false(config.dev("3000").watch)
    end)

    it("records the modules the policy requires, for the watch", function()
        write("shared.lua", "return { attempts = 3 }\n")
        local c, files = with_policy("local s = require('shared')\nreturn { retry = { attempts = s.attempts } }\n")
        assert.is_table(c)
        assert.are.equal(3, c.routes[1].retry.attempts)
        assert.are.same({ dir .. "/policy.lua", dir .. "/shared.lua" }, files)
    end)

    it("takes hooks", function()
        local c = with_policy("return {\n  classify = function(res) return 'success' end,\n}\n")
        assert.is_function(c.routes[1].classify)
    end)

    it("reports errors at FILE:LINE with the keys as the file writes them", function()
        assert.are.same({
            "policy.lua:3: retry.attempts: expected integer >= 1, got 0",
            'policy.lua:5: retyr: unknown key (did you mean "retry"?)',
        }, policy_errors("return {\n  retry = {\n    attempts = 0,\n  },\n  retyr = 1,\n}\n"))
        assert.are.same({
            "policy.lua:2: try_timeout: try_timeout (10s) must not be more than timeout (1s)",
        }, policy_errors("return {\n  try_timeout = '10s',\n  timeout = '1s',\n}\n"))
    end)

    it("refuses the keys levee dev sets", function()
        local errs = policy_errors("return {\n  timeout = '1s',\n  upstream = 'x',\n}\n")
        assert.are.same({ "policy.lua:3: upstream: not allowed in a policy file (levee dev sets "
            .. "the route's name, match and upstream)" }, errs)
    end)

    it("reports files that do not run or do not return a table", function()
        assert.are.same({ "policy.lua:2: the policy file must return a route policy table "
            .. "(return { retry = ..., timeout = ... }), got 42" },
            policy_errors("local x = 1\nreturn 42\n"))
        local errs = policy_errors("return {\n  timeout = ,\n}\n")
        assert.matches("^policy.lua:2: ", errs[1])
        errs = policy_errors("local t = nil\nreturn t.x\n")
        assert.matches("^policy.lua:2: ", errs[1])
        local c, missing = config.dev("3000", nil, { policy = dir .. "/none.lua" })
        assert.is_nil(c)
        assert.are.same({ "none.lua:1: cannot read the file: No such file or directory" }, strip(missing))
    end)

    it("runs under the load's limits", function()
        local errs = policy_errors("while true do end\n")
        assert.are.same({ "policy.lua:1: the configuration ran too long (an endless loop?)" }, errs)
    end)

    it("a policy's fault table is merged with --fault", function()
        local c, errs = with_policy("return {\n  fault = { delay = { time = '1s' } },\n}\n",
            { faults = { "abort=503" } })
        assert.is_table(c, errs and table.concat(errs, "\n"))
        local f = c.routes[1].fault
        assert.are.same({ enabled = true, time_ms = 1000, percent = 100 }, f.delay)
        assert.are.same({ enabled = true, status = 503, percent = 100 }, f.abort)
        assert.is_true(f.headers)
        assert.are.same({ "policy.lua:2: fault.delay.time: expected a duration like \"250ms\", "
            .. "\"2s\", \"5m\", \"24h\" or a number of seconds, got \"x\"" },
            policy_errors("return {\n  fault = { delay = { time = 'x' } },\n}\n"))
    end)
end)
