-- Hostile configuration files (README "Reload", load limits): code that runs for ever or
-- allocates without bound — in the file, in metamethods validation would call, in finalizers,
-- in message handlers, or inside one C call — is refused by `levee check` within seconds, and
-- by a reload of a running levee (SIGHUP and POST /reload) while the serving loop keeps
-- answering with normal latency and the old configuration keeps serving. A loader stuck in a
-- system call is abandoned, and a later valid reload still works. Reloads asked during a load
-- wait for it.

local H = require("helpers")
local proc = H.proc

-- The slowest answer a client may see while a hostile file loads: the loop must not wait for
-- the load (a normal answer takes about a millisecond).
local MAX_LATENCY = 0.2

local function contains(s, needle) return s:find(needle, 1, true) ~= nil end

-- A configuration: `head` (top-level code) then the valid table; `routes` overrides the
-- route list (text).
local function conf(up, head, routes)
    return table.concat({
        head or "-- hostile config spec",
        "return {",
        '  listen = { "127.0.0.1:$PORT" },',
        '  admin = "127.0.0.1:$ADMIN",',
        "  access_log = false,",
        '  upstreams = { api = { servers = { "' .. up:addr() .. '" } } },',
        "  routes = " .. (routes or '{ { name = "api", match = { prefix = "/" }, upstream = "api" } }') .. ",",
        "}",
    }, "\n") .. "\n"
end

-- The hostile files: { what, top-level code, expected error (after "levee.lua:"), or routes }.
local CASES = {
    { "a finalizer that loops", "setmetatable({}, { __gc = function() while true do end end })",
        "1: setmetatable: __gc metamethods are not allowed in the configuration" },
    { "an __index that makes an endless method list", nil,
        "8: routes[1].match.methods: tables with metatables are not allowed in the configuration",
        '{ { name = "api", upstream = "api",\n'
            .. '    match = { methods = setmetatable({}, { __index = function() return "GET" end }) } } }' },
    { "a backtracking string.find",
        'string.find(string.rep("a", 40), string.rep("a?", 40) .. string.rep("a", 40))',
        "1: string.find: pattern too costly for a 40-byte subject" },
    { "an endless loop", "while true do end", "1: the configuration ran too long" },
    { "an endless loop behind pcall", "while true do pcall(function() while true do end end) end",
        "1: the configuration ran too long" },
    { "an xpcall message handler that loops",
        "xpcall(function() while true do end end, function() while true do end end)",
        "1: the configuration ran too long" },
    -- A sanitizer build writes shadow memory for every byte allocated: there, 64 MiB can take
    -- longer than the 2 s load limit, and either limit refusing the file is right.
    { "an allocation bomb", 'local t, i = {}, 0 while true do i = i + 1 t[i] = ("x"):rep(100000) .. i end',
        "1: the configuration used more than 64 MiB of Lua memory while loading",
        sanitized_alt = "1: the configuration ran too long" },
    { "string.rep of an empty string", 'local s = string.rep("", 1e15)',
        "1: string.rep: too many repetitions of an empty string" },
    { "table.remove on a table whose __len lies",
        "table.remove(setmetatable({}, { __len = function() return math.maxinteger end }), 1)",
        "1: table functions cannot take a table with a __len metamethod" },
}

-- The reasons a case may be refused with: its own, and under a sanitizer its alternative.
local function reasons(case)
    if H.sanitized and case.sanitized_alt then return { case[3], case.sanitized_alt } end
    return { case[3] }
end

local function has_reason(text, prefix, case)
    for _, r in ipairs(reasons(case)) do
        if contains(text, prefix .. r) then return true end
    end
    return false
end

local function text_of(up, case)
    return conf(up, case[2], case[4])
end

local function status(lv) return lv:status() end

local function metric(lv, series) return lv:metric(series) or 0 end
local RELOAD_OK = 'levee_config_reloads_total{result="ok"}'
local RELOAD_ERR = 'levee_config_reloads_total{result="error"}'

-- Sends requests one after the other on a keep-alive connection until done() (asked every
-- 20 ms) returns a truthy value, which is returned with the slowest answer's latency and the
-- number of requests. Every answer must be the old configuration's 200.
local function serve_while(lv, done, what, timeout)
    local deadline = H.now() + (timeout or 10 * H.scale)
    local c = assert(H.conn(lv.port, { timeout = 5 }))
    local slowest, n, next_check = 0, 0, 0
    while true do
        local t0 = H.now()
        assert(c:send(H.build_request(lv.port, { path = "/during/" .. n })))
        local r, err = c:read_response({ timeout = 5 })
        local took = H.now() - t0
        assert(r, "request during the reload: " .. tostring(err))
        assert.equal(200, r.status, r.body)
        assert.equal("/during/" .. n, H.json(r.body).target)
        if took > slowest then slowest = took end
        n = n + 1
        if H.now() >= next_check then
            next_check = H.now() + 0.02
            local v = done()
            if v then
                c:close()
                return v, slowest, n
            end
        end
        if H.now() > deadline then error("timed out waiting for " .. what, 2) end
    end
end

-- POST /reload without waiting: returns a function that is the response once it arrived.
local function post_reload(lv)
    local c = assert(H.conn(lv.admin_port, { timeout = 15 }))
    assert(c:send(H.build_request(lv.admin_port, { method = "POST", path = "/reload", body = "" })))
    return function()
        if not c:closed(0) then return nil end -- the admin API closes after its answer
        local r = assert(c:read_response({ timeout = 1 }))
        return { status = r.status, body = H.json(r.body) }
    end
end

local timings = {}
local function note(what, seconds)
    timings[#timings + 1] = ("%-48s %5.2fs"):format(what, seconds)
end

---------------------------------------------------------------------------------------------

describe("levee check refuses a hostile file within seconds", function()
    after_each(H.cleanup)
    teardown(function()
        io.stderr:write("\n[levee check on hostile files]\n  " .. table.concat(timings, "\n  ") .. "\n")
        timings = {}
    end)

    for _, case in ipairs(CASES) do
        it(case[1], function()
            local up = H.upstream()
            local path = H.tmpfile(text_of(up, case):gsub("%$PORT", "1"):gsub("%$ADMIN", "2"), "levee.lua")
            local t0 = H.now()
            local code, out = H.run_levee({ "check", path }, { timeout = 20 })
            local took = H.now() - t0
            note(case[1], took)
            assert.equal(1, code, out)
            assert.is_true(has_reason(out, path .. ":", case), out)
            -- the load's own limit is 2 s of wall-clock time; the rest is starting the process
            assert.is_true(took < (H.sanitized and 8 or 5), ("took %.2fs"):format(took))
        end)
    end
end)

describe("a reload of a hostile file is refused while levee keeps serving", function()
    after_each(H.cleanup)
    local slowest_all = 0
    teardown(function()
        io.stderr:write(("\n[hostile reloads] slowest answer during all of them: %.1f ms\n")
            :format(slowest_all * 1000))
    end)

    it("by SIGHUP and by POST /reload, every hostile file, then a valid one", function()
        local up = H.upstream()
        local lv = H.levee({ config = conf(up) })
        local good = H.request(lv.port, { path = "/before" })
        assert.equal(200, good.status)
        for i, case in ipairs(CASES) do
            local want = lv.config_path .. ":" .. case[3]
            local prefix = lv.config_path .. ":"
            lv:write_config(text_of(up, case))

            -- SIGHUP
            local log_before = #lv:log()
            assert.is_true(lv:reload())
            local _, slowest, n = serve_while(lv, function()
                return metric(lv, RELOAD_ERR) == 2 * i - 1
            end, case[1] .. ": the refused SIGHUP reload")
            assert.is_true(slowest < MAX_LATENCY, ("%s (SIGHUP): slowest of %d answers %.0f ms")
                :format(case[1], n, slowest * 1000))
            slowest_all = math.max(slowest_all, slowest)
            H.wait_until(function() return has_reason(lv:log():sub(log_before + 1), prefix, case) end,
                5 * H.scale,
                case[1] .. ": '" .. want .. "' in the log")
            local st = status(lv)
            assert.equal(1, st.generation)
            assert.matches("^error: ", st.last_reload)
            local in_status = false
            for _, r in ipairs(reasons(case)) do
                in_status = in_status or contains(st.last_reload, r:match("^%d+: (.*)$"):sub(1, 40))
            end
            assert.is_true(in_status, st.last_reload)

            -- POST /reload: answered when its load ends, 400 with the error
            local answer = post_reload(lv)
            local res
            res, slowest, n = serve_while(lv, answer, case[1] .. ": the answer to POST /reload")
            assert.is_true(slowest < MAX_LATENCY, ("%s (POST): slowest of %d answers %.0f ms")
                :format(case[1], n, slowest * 1000))
            slowest_all = math.max(slowest_all, slowest)
            assert.equal(400, res.status)
            assert.equal("error", res.body.result)
            local found = false
            for _, e in ipairs(res.body.errors) do
                if has_reason(e, prefix, case) then found = true end
            end
            assert.is_true(found, case[1] .. ": no '" .. want .. "' in " .. H.json_encode(res.body))
            assert.equal(2 * i, metric(lv, RELOAD_ERR))
            assert.equal(1, status(lv).generation)
        end
        -- the old configuration served all along; a valid file still loads
        lv:write_config(conf(up, nil, '{ { name = "two", match = { prefix = "/" }, upstream = "api" } }'))
        local answer = post_reload(lv)
        local res = H.wait_until(answer, 10 * H.scale, "the valid reload")
        assert.equal(200, res.status)
        assert.same({ result = "ok", generation = 2 }, res.body)
        assert.equal(1, metric(lv, RELOAD_OK))
        local st = status(lv)
        assert.equal("two", st.routes[1].name)
        assert.equal(0, st.lua.abandoned_loaders)
        assert.is_true(lv:alive())
    end)
end)

describe("a loader stuck in a system call", function()
    after_each(H.cleanup)

    -- A module that is a FIFO nobody writes to: the loader blocks in open() for ever.
    local function fifo(dir)
        local path = dir .. "/stuck.lua"
        local pid = H.spawn({ "mkfifo", path })
        assert.is_true(proc.wait(pid, 5))
        return path
    end

    -- Opens the FIFO for writing (in a child, which would block if no loader were waiting).
    local function unblock(path)
        local pid = H.spawn({ "sh", "-c", "printf 'return 1' > '" .. path .. "'" })
        local exited = proc.wait(pid, 10 * H.scale)
        assert.is_not_nil(exited, "nobody was reading " .. path)
    end

    it("is abandoned by levee check, which answers within a few seconds", function()
        local up = H.upstream()
        local dir = H.tmpdir()
        fifo(dir)
        local path = dir .. "/levee.lua"
        H.write_file(path, conf(up, 'require "stuck"'):gsub("%$PORT", "1"):gsub("%$ADMIN", "2"))
        local t0 = H.now()
        local code, out = H.run_levee({ "check", path }, { timeout = 20 })
        local took = H.now() - t0
        io.stderr:write(("\n[levee check, loader stuck in open()] %.2fs\n"):format(took))
        assert.equal(1, code)
        assert.is_true(contains(out, path .. ":1: the configuration ran too long (its loader did not finish"), out)
        assert.is_true(took < 6 * H.scale, ("took %.2fs"):format(took))
    end)

    it("is abandoned by a reload; a later valid reload works; its late result is dropped", function()
        local up = H.upstream()
        local lv = H.levee({ config = conf(up) })
        local stuck = fifo(lv.dir)
        lv:write_config(conf(up, 'require "stuck"'))
        assert.is_true(lv:reload())
        local _, slowest, n = serve_while(lv, function()
            return metric(lv, RELOAD_ERR) == 1
        end, "the abandoned reload")
        io.stderr:write(("\n[abandoned loader] slowest of %d answers while it ran: %.1f ms\n")
            :format(n, slowest * 1000))
        assert.is_true(slowest < MAX_LATENCY, ("slowest answer %.0f ms"):format(slowest * 1000))
        lv:wait_log("still runs after 3000 ms", 5, true)
        local st = status(lv)
        assert.equal(1, st.generation)
        assert.equal(1, st.lua.abandoned_loaders)
        assert.is_true(contains(st.last_reload, "the configuration ran too long"), st.last_reload)

        -- a valid file loads while the stuck loader still waits
        lv:write_config(conf(up, nil, '{ { name = "two", match = { prefix = "/" }, upstream = "api" } }'))
        local res = H.wait_until(post_reload(lv), 10 * H.scale, "the valid reload")
        assert.equal(200, res.status)
        assert.same({ result = "ok", generation = 2 }, res.body)

        -- the stuck loader ends after all: its result (the stuck file, now loadable) is dropped
        unblock(stuck)
        lv:wait_log("finished after all; its result is dropped", 10 * H.scale, true)
        H.wait_until(function() return status(lv).lua.abandoned_loaders == 0 end, 5 * H.scale,
            "the abandoned loader to end")
        st = status(lv)
        assert.equal(2, st.generation)
        assert.equal("two", st.routes[1].name)
        assert.equal(1, metric(lv, RELOAD_OK))
        assert.equal(200, H.request(lv.port, { path = "/after" }).status)
    end)
end)

describe("reloads asked during a load", function()
    after_each(H.cleanup)

    it("wait for it: signals coalesce into one more load, POST /reload gets its own", function()
        local up = H.upstream()
        local lv = H.levee({ config = conf(up) })
        -- a file that takes the whole time limit to be refused
        lv:write_config(conf(up, "while true do end"))
        assert.is_true(lv:reload())
        H.wait_until(function() return status(lv).reloading end, 5 * H.scale, "the first load to start")
        for _ = 1, 3 do
            assert.is_true(lv:reload())
        end
        local answer = post_reload(lv)
        local res = serve_while(lv, answer, "the answer to POST /reload", 20 * H.scale)
        assert.equal(400, res.status)
        assert.is_true(contains(res.body.errors[1], "the configuration ran too long"), res.body.errors[1])
        -- the POST was answered by the second load (its own), which the three signals shared:
        -- two loads in all, none left to run
        assert.equal(2, metric(lv, RELOAD_ERR))
        local st = status(lv)
        assert.is_false(st.reloading)
        assert.equal(1, st.generation)
    end)
end)
