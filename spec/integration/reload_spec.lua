-- Configuration reload of the real levee binary (README, "Resilience policies"): SIGHUP, POST /reload and
-- watch = true (in-place writes, save-by-rename, required modules); broken files refused with
-- their reason while the old configuration keeps serving; breaker and budget state kept by
-- route name; requests in flight finishing under the generation they started with; listeners
-- added and removed; upstream pools kept; reloads under load; no leak over 1000 reloads.

local H = require("helpers")
local proc = H.proc

---------------------------------------------------------------------------------------------
-- helpers local to this file

local function contains(s, needle) return s:find(needle, 1, true) ~= nil end

-- 1-based number of the first line of text containing needle (plain).
local function line_of(text, needle)
    local n = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if line:find(needle, 1, true) then return n end
    end
    error("line_of: " .. needle .. " not in text", 2)
end

-- One route entry of the config text.
local function route(name, prefix, extra)
    return ('    { name = "%s", match = { prefix = "%s" }, upstream = "api"%s },\n'):format(name, prefix,
        extra or "")
end

-- Configuration text. o.servers: list of "host:port" of upstream "api"; o.routes: route
-- entries (text) or o.routes_expr: a Lua expression for the whole list; o.listen: placeholder
-- ports (default { "$PORT" }); o.watch; o.access_log (true = stdout); o.head: text before
-- `return`; o.api: more keys of upstream "api" (text starting with ", "); o.workers: the
-- workers key (default: none, so H.levee's LEVEE_TEST_WORKERS applies).
local function conf(o)
    local listens, servers = {}, {}
    for _, p in ipairs(o.listen or { "$PORT" }) do listens[#listens + 1] = '"127.0.0.1:' .. p .. '"' end
    for _, a in ipairs(o.servers) do servers[#servers + 1] = '"' .. a .. '"' end
    return table.concat({
        o.head or "-- levee reload spec",
        "return {" .. (o.workers and (" workers = " .. o.workers .. ",") or ""),
        "  listen = { " .. table.concat(listens, ", ") .. " },",
        '  admin = "127.0.0.1:$ADMIN",',
        "  access_log = " .. (o.access_log and '"stdout"' or "false") .. ",",
        "  watch = " .. tostring(o.watch == true) .. ",",
        "  upstreams = {",
        "    api = { servers = { " .. table.concat(servers, ", ") .. " }" .. (o.api or "") .. " },",
        "  },",
        "  routes = " .. (o.routes_expr or ("{\n" .. o.routes .. "  }")) .. ",",
        "}",
    }, "\n") .. "\n"
end

local function get(port, path, headers, extra)
    local o = { path = path, headers = headers or {} }
    for k, v in pairs(extra or {}) do o[k] = v end
    local r, err = H.request(port, o)
    assert(r, "GET " .. path .. ": " .. tostring(err))
    return r
end

-- POST /reload: returns the response and its decoded JSON body.
local function post_reload(lv)
    local r, err = lv:admin({ method = "POST", path = "/reload", body = "" })
    assert(r, "POST /reload: " .. tostring(err))
    assert.matches("^application/json", r.headers["content-type"])
    return r, H.json(r.body)
end

local function reload_ok(lv, generation)
    local r, j = post_reload(lv)
    assert.equal(200, r.status, r.body)
    assert.same({ result = "ok", generation = generation }, j)
end

local function status(lv) return lv:status() end

local function route_status(st, name)
    for _, r in ipairs(st.routes) do
        if r.name == name then return r end
    end
end

local function metric(lv, series) return lv:metric(series) end
local RELOAD_OK = 'levee_config_reloads_total{result="ok"}'
local RELOAD_ERR = 'levee_config_reloads_total{result="error"}'

-- Polls until GET path on port answers 200 (the new configuration is in force).
local function wait_route(port, path, what)
    return H.wait_until(function()
        local r = H.request(port, { path = path })
        return r and r.status == 200 and r
    end, 5 * H.scale, what or ("GET " .. path .. " to answer 200"))
end

local function assert_no_route(port, path)
    local r = get(port, path)
    assert.equal(404, r.status)
    assert.equal("no-route", r.headers["levee-error"])
end

local function assert_echo(r, path, server)
    assert.equal(200, r.status, r.body)
    local e = H.json(r.body)
    assert.equal(path, e.target)
    if server then assert.equal(server, e.server) end
    return e
end

-- inode of the socket listening on 127.0.0.1:port (from /proc/net/tcp), or nil.
local function listen_inode(port)
    local want = ("0100007F:%04X"):format(port)
    for line in H.read_file("/proc/net/tcp"):gmatch("([^\n]*)\n") do
        local f = {}
        for w in line:gmatch("%S+") do f[#f + 1] = w end
        if f[2] == want and f[4] == "0A" then return f[10] end
    end
    return nil
end

-- Polls the descriptor count of pid until it holds still for 5 polls in a row.
local function settled_fds(pid)
    local last, same = -1, 0
    return H.wait_until(function()
        local n = proc.fd_count(pid)
        if n == last then
            same = same + 1
        else
            last, same = n, 0
        end
        return same >= 5 and n
    end, 5 * H.scale, "the descriptor count to settle")
end

---------------------------------------------------------------------------------------------

describe("reload changes the route table", function()
    after_each(H.cleanup)

    local function start(watch, access_log)
        local up = H.upstream({ name = "u" })
        local lv = H.levee({ config = conf({ servers = { up:addr() }, routes = route("one", "/one"),
            watch = watch, access_log = access_log }) })
        assert_echo(get(lv.port, "/one/x"), "/one/x")
        assert_no_route(lv.port, "/two/x")
        return lv, up
    end

    local function two_routes(up, watch)
        return conf({ servers = { up:addr() }, routes = route("one", "/one") .. route("two", "/two"),
            watch = watch })
    end

    it("on SIGHUP; /status and metrics show generation 2, load time, file and last result", function()
        local lv, up = start()
        local st0 = status(lv)
        assert.equal(1, st0.generation)
        assert.equal("initial load", st0.last_reload)
        assert.equal(lv.config_path, st0.file)
        lv:write_config(two_routes(up))
        local pid = lv:pid()
        assert.is_true(lv:reload())
        local r = wait_route(lv.port, "/two/new")
        assert_echo(r, "/two/new")
        assert.equal(1, up:stats().by_path["/two/new"])
        local st = status(lv)
        assert.equal(2, st.generation)
        assert.equal("ok", st.last_reload)
        assert.equal(lv.config_path, st.file)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", st.loaded_at)
        assert.is_true(st.loaded_at >= st0.loaded_at)
        assert.same({ "one", "two" }, { st.routes[1].name, st.routes[2].name })
        assert.equal(2, metric(lv, "levee_config_generation"))
        assert.equal(1, metric(lv, RELOAD_OK))
        assert.equal(0, metric(lv, RELOAD_ERR) or 0)
        lv:wait_log("configuration reloaded: generation 2", 5, true)
        assert_echo(get(lv.port, "/one/still"), "/one/still")
        assert.equal(pid, lv:pid())
        assert.is_true(lv:alive())
    end)

    it("on POST /reload, which answers only once the new table is in force", function()
        local lv, up = start()
        lv:write_config(two_routes(up))
        reload_ok(lv, 2)
        -- the answer came after the switch: no polling needed
        assert_echo(get(lv.port, "/two/now"), "/two/now")
        assert_echo(get(lv.port, "/one/now"), "/one/now")
        assert.equal(2, status(lv).generation)
        assert.equal(1, metric(lv, RELOAD_OK))
        -- a second reload with a third route: generation 3
        lv:write_config(conf({ servers = { up:addr() },
            routes = route("one", "/one") .. route("two", "/two") .. route("three", "/three") }))
        reload_ok(lv, 3)
        assert_echo(get(lv.port, "/three/x"), "/three/x")
        assert.equal(3, metric(lv, "levee_config_generation"))
        assert.equal(2, metric(lv, RELOAD_OK))
    end)

    it("with watch = true when the file is overwritten in place", function()
        local lv, up = start(true)
        lv:write_config(two_routes(up, true))
        local r = wait_route(lv.port, "/two/inplace")
        assert_echo(r, "/two/inplace")
        lv:wait_log("configuration file changed: reloading", 5, true)
        local st = status(lv)
        -- one save, one reload (the debounce folds the truncate and the write together)
        assert.equal(2, st.generation)
        assert.equal("ok", st.last_reload)
        assert.equal(1, metric(lv, RELOAD_OK))
        assert.equal(0, metric(lv, RELOAD_ERR) or 0)
        -- and it keeps watching: a second in-place save applies too
        lv:write_config(conf({ servers = { up:addr() }, watch = true,
            routes = route("one", "/one") .. route("two", "/two") .. route("three", "/three") }))
        assert_echo(wait_route(lv.port, "/three/again"), "/three/again")
    end)

    it("with watch = true when a new file is renamed over it (save-by-rename), twice", function()
        local lv, up = start(true)
        local function save_by_rename(text)
            local tmp = lv.dir .. "/.levee.lua.tmp"
            H.write_file(tmp, text:gsub("%$ADMIN", tostring(lv.admin_port)):gsub("%$PORT", tostring(lv.port)))
            assert(os.rename(tmp, lv.config_path))
        end
        save_by_rename(two_routes(up, true))
        assert_echo(wait_route(lv.port, "/two/renamed"), "/two/renamed")
        assert.equal(2, status(lv).generation)
        -- the file is a new inode now; the watch must still see the next save
        save_by_rename(conf({ servers = { up:addr() }, watch = true,
            routes = route("one", "/one") .. route("two", "/two") .. route("three", "/three") }))
        assert_echo(wait_route(lv.port, "/three/renamed"), "/three/renamed")
        assert.equal(3, status(lv).generation)
        assert.equal(2, metric(lv, RELOAD_OK))
        assert_echo(get(lv.port, "/one/x"), "/one/x")
    end)

    it("with watch = true when a Lua module the file required changes (in place, then by rename)", function()
        local up = H.upstream()
        local function module(routes)
            return "local M = {}\nM.routes = {\n" .. routes .. "}\nreturn M\n"
        end
        local lv = H.levee({
            config = conf({ servers = { up:addr() }, watch = true, head = 'local m = require "routes_mod"',
                routes_expr = "m.routes" }),
            files = { ["routes_mod.lua"] = module(route("one", "/one")) },
        })
        assert_echo(get(lv.port, "/one/m"), "/one/m")
        assert_no_route(lv.port, "/two/m")
        local mod_path = lv.dir .. "/routes_mod.lua"
        H.write_file(mod_path, module(route("one", "/one") .. route("two", "/two")))
        assert_echo(wait_route(lv.port, "/two/m"), "/two/m")
        assert.equal(2, status(lv).generation)
        -- saved by rename this time
        H.write_file(mod_path .. ".new", module(route("one", "/one") .. route("three", "/three")))
        assert(os.rename(mod_path .. ".new", mod_path))
        assert_echo(wait_route(lv.port, "/three/m"), "/three/m")
        assert_no_route(lv.port, "/two/m")
        assert.equal(3, status(lv).generation)
        assert.equal(2, metric(lv, RELOAD_OK))
    end)
end)

---------------------------------------------------------------------------------------------

describe("a broken file is refused and the old configuration keeps serving", function()
    after_each(H.cleanup)

    -- Three ways to break a file that adds route "two": what the error names, as
    -- { text, needle on the faulty line, what follows "FILE:LINE: " }.
    local function broken_files(up, watch)
        local base = route("one", "/one")
        return {
            { "syntax error",
                conf({ servers = { up:addr() }, watch = watch,
                    routes = base .. '    { name = "two", match = { prefix = "/two" } upstream = "api" },\n' }),
                'name = "two"', "'}' expected" },
            { "unknown key",
                conf({ servers = { up:addr() }, watch = watch,
                    routes = base .. route("two", "/two", ", retyr = { attempts = 2 }") }),
                "retyr", "routes[2].retyr: unknown key" },
            { "missing upstream",
                conf({ servers = { up:addr() }, watch = watch,
                    routes = base .. '    { name = "two", match = { prefix = "/two" }, upstream = "nope" },\n' }),
                '"nope"', 'routes[2].upstream: no upstream named "nope"' },
        }
    end

    local function start(watch)
        local up = H.upstream()
        local lv = H.levee({ config = conf({ servers = { up:addr() }, routes = route("one", "/one"), watch = watch }) })
        assert_echo(get(lv.port, "/one/before"), "/one/before")
        return lv, up
    end

    local function old_config_serves(lv, up, n_errors, tag)
        local r = get(lv.port, "/one/" .. tag)
        assert_echo(r, "/one/" .. tag)
        assert.equal(1, up:stats().by_path["/one/" .. tag])
        assert_no_route(lv.port, "/two/" .. tag)
        local st = status(lv)
        assert.equal(1, st.generation)
        assert.equal(1, #st.routes)
        assert.matches("^error", st.last_reload)
        assert.equal(1, metric(lv, "levee_config_generation"))
        assert.equal(n_errors, metric(lv, RELOAD_ERR))
        assert.equal(0, metric(lv, RELOAD_OK) or 0)
    end

    it("by POST /reload: 400 with FILE:LINE and the reason in errors", function()
        local lv, up = start()
        local pid = lv:pid()
        for i, b in ipairs(broken_files(up)) do
            local kind, text, needle, reason = b[1], b[2], b[3], b[4]
            local written = lv:write_config(text)
            local want = "levee.lua:" .. line_of(written, needle) .. ": " .. reason
            local r, j = post_reload(lv)
            assert.equal(400, r.status, kind .. ": " .. r.body)
            assert.equal("error", j.result)
            assert.equal("table", type(j.errors))
            local found = false
            for _, e in ipairs(j.errors) do
                if contains(e, want) then found = true end
            end
            assert.is_true(found, kind .. ": no '" .. want .. "' in " .. r.body)
            assert.is_nil(j.generation)
            old_config_serves(lv, up, i, "post" .. i)
            assert.is_true(contains(lv:log(), want), kind .. ": not logged: " .. want)
            assert.is_true(contains(status(lv).last_reload, reason), kind)
        end
        -- the same process, fixed file: generation 2
        assert.equal(pid, lv:pid())
        lv:write_config(conf({ servers = { up:addr() }, routes = route("one", "/one") .. route("two", "/two") }))
        reload_ok(lv, 2)
        assert_echo(get(lv.port, "/two/fixed"), "/two/fixed")
        assert.equal(1, metric(lv, RELOAD_OK))
        assert.equal(3, metric(lv, RELOAD_ERR))
    end)

    it("by SIGHUP: the reason with FILE:LINE in the log", function()
        local lv, up = start()
        local pid = lv:pid()
        for i, b in ipairs(broken_files(up)) do
            local kind, text, needle, reason = b[1], b[2], b[3], b[4]
            local written = lv:write_config(text)
            local want = "levee.lua:" .. line_of(written, needle) .. ": " .. reason
            local log_before = #lv:log()
            assert.is_true(lv:reload())
            H.wait_until(function() return metric(lv, RELOAD_ERR) == i end, 5 * H.scale,
                kind .. ": the refused reload to be counted")
            H.wait_until(function() return contains(lv:log():sub(log_before + 1), want) end, 5 * H.scale,
                kind .. ": '" .. want .. "' in the log")
            old_config_serves(lv, up, i, "hup" .. i)
        end
        lv:write_config(conf({ servers = { up:addr() }, routes = route("one", "/one") .. route("two", "/two") }))
        assert.is_true(lv:reload())
        assert_echo(wait_route(lv.port, "/two/fixed"), "/two/fixed")
        assert.equal(2, status(lv).generation)
        assert.equal(3, metric(lv, RELOAD_ERR))
        assert.equal(pid, lv:pid())
        assert.is_true(lv:alive())
    end)

    it("by watch = true: a broken save is logged and refused, the next good save applies", function()
        local lv, up = start(true)
        local b = broken_files(up, true)[2]
        local written = lv:write_config(b[2])
        local want = "levee.lua:" .. line_of(written, b[3]) .. ": " .. b[4]
        H.wait_until(function() return metric(lv, RELOAD_ERR) == 1 end, 5 * H.scale, "the refused reload")
        lv:wait_log(want, 5, true)
        old_config_serves(lv, up, 1, "watch")
        -- still watching after a refused reload
        lv:write_config(conf({ servers = { up:addr() }, watch = true,
            routes = route("one", "/one") .. route("two", "/two") }))
        assert_echo(wait_route(lv.port, "/two/fixed"), "/two/fixed")
        assert.equal(2, status(lv).generation)
        assert.equal(1, metric(lv, RELOAD_ERR))
    end)
end)

---------------------------------------------------------------------------------------------

describe("state across reloads", function()
    after_each(H.cleanup)

    it("an open breaker stays open for the same route name; a renamed route starts closed", function()
        local up = H.upstream()
        local breaker = ', retry = { attempts = 1 }, breaker = { consecutive_failures = 2, open_for = "30s" }'
        local lv = H.levee({ config = conf({ servers = { up:addr() },
            routes = route("b", "/", ', timeout = "5s"' .. breaker) }) })
        for i = 1, 2 do
            local r = get(lv.port, "/fail" .. i, { { "X-Test-Status", "503" }, { "X-Test-Body", "down" } })
            assert.equal(503, r.status)
            assert.equal("down", r.body) -- the upstream's own 503
            assert.is_nil(r.headers["levee-error"])
        end
        local open = get(lv.port, "/probe")
        assert.equal(503, open.status)
        assert.equal("breaker-open", open.headers["levee-error"])
        assert.is_nil(up:stats().by_path["/probe"])
        local rs = route_status(status(lv), "b")
        assert.equal("open", rs.breaker.state)
        local budget_requests = rs.budget.requests
        assert.is_true(budget_requests >= 2)

        -- same name, changed route (deadline, try timeout): still open
        lv:write_config(conf({ servers = { up:addr() },
            routes = route("b", "/", ', timeout = "4s", try_timeout = "3s"' .. breaker) }))
        reload_ok(lv, 2)
        local after = get(lv.port, "/after-reload")
        assert.equal(503, after.status)
        assert.equal("breaker-open", after.headers["levee-error"])
        assert.equal("b", H.json(after.body).route)
        assert.is_not_nil(after.headers["retry-after"])
        assert.is_nil(up:stats().by_path["/after-reload"])
        assert.equal(2, up:stats().requests)
        rs = route_status(status(lv), "b")
        assert.equal("open", rs.breaker.state)
        assert.equal(1, rs.breaker.times_opened)
        -- the budget window carried over too
        assert.is_true(rs.budget.requests >= budget_requests,
            ("budget requests %d after the reload, %d before"):format(rs.budget.requests, budget_requests))

        -- renamed: fresh state, closed breaker, the request reaches the upstream
        lv:write_config(conf({ servers = { up:addr() },
            routes = route("b-renamed", "/", ', timeout = "4s"' .. breaker) }))
        reload_ok(lv, 3)
        assert_echo(get(lv.port, "/fresh"), "/fresh")
        assert.equal(1, up:stats().by_path["/fresh"])
        local st = status(lv)
        assert.equal(1, #st.routes)
        rs = route_status(st, "b-renamed")
        assert.equal("closed", rs.breaker.state)
        assert.equal(0, rs.breaker.times_opened)
        -- the route that left frees its state: its series leave /metrics
        assert.is_nil(metric(lv, 'levee_breaker_state{route="b"}'))
        assert.equal(0, metric(lv, 'levee_breaker_state{route="b-renamed"}'))

        -- and a route coming back under its old name starts from nothing: closed
        lv:write_config(conf({ servers = { up:addr() },
            routes = route("b", "/", ', timeout = "4s"' .. breaker) }))
        reload_ok(lv, 4)
        assert_echo(get(lv.port, "/back"), "/back")
        assert.equal("closed", route_status(status(lv), "b").breaker.state)
    end)

    it("a request in flight finishes under its old generation while new requests see the new one", function()
        local old = H.upstream({ name = "old" })
        local new = H.upstream({ name = "new" })
        local lv = H.levee({ config = conf({ servers = { old:addr() }, access_log = true,
            routes = route("slow", "/", ', timeout = "5s"') }) })
        local c = assert(H.conn(lv.port, { timeout = 10 * H.scale }))
        local t0 = H.now()
        assert(c:send(H.build_request(lv.port, { path = "/slow", headers = { { "X-Test-Delay-Ms", "800" } } })))
        H.wait_until(function() return old:stats().by_path["/slow"] == 1 end, 5, "the slow request upstream")

        -- the new generation: another name, another upstream server, a 300 ms deadline
        lv:write_config(conf({ servers = { new:addr() }, access_log = true,
            routes = route("fresh", "/", ', timeout = "300ms"') }))
        reload_ok(lv, 2)
        assert_echo(get(lv.port, "/new"), "/new", "new:" .. new.ports[1])
        local late = get(lv.port, "/new-slow", { { "X-Test-Delay-Ms", "800" } })
        assert.equal(504, late.status)
        assert.is_truthy(({ ["deadline-exceeded"] = true, ["upstream-timeout"] = true })[late.headers["levee-error"]],
            tostring(late.headers["levee-error"]))
        -- answered while the old request is still in flight
        assert.is_false(c:closed(0))
        assert.equal("", c:buffered())

        -- the old request: served by the old server, under the old 5 s deadline
        local r, err = c:read_response()
        assert.is_not_nil(r, err)
        assert_echo(r, "/slow", "old:" .. old.ports[1])
        assert.is_true(H.now() - t0 >= 0.75)
        assert.is_nil(new:stats().by_path["/slow"])

        -- the same client connection carries on under the new generation
        assert(c:send(H.build_request(lv.port, { path = "/again" })))
        assert_echo(assert(c:read_response()), "/again", "new:" .. new.ports[1])

        local log = lv:wait_access(4)
        local by_path = {}
        for _, e in ipairs(log) do by_path[e.path] = e end
        assert.equal("slow", by_path["/slow"].route)
        assert.equal(200, by_path["/slow"].status)
        assert.equal("fresh", by_path["/new"].route)
        assert.equal("fresh", by_path["/new-slow"].route)
        assert.equal(504, by_path["/new-slow"].status)
        assert.equal("fresh", by_path["/again"].route)
    end)

    it("a request queued for an upstream connection is answered when the reload changes the servers", function()
        local up = H.upstream({ n = 2, name = "q" })
        local pool = ', pool = { max_connections = 1, queue_timeout = "5s" }'
        -- One worker: pools (and their max_connections) are per worker (README "Workers"), and
        -- which worker accepts the second client connection is not ours to choose, so with
        -- more than one the second request could get a connection of its own instead of queueing.
        local lv = H.levee({ config = conf({ servers = { up:addr(1) }, api = pool, routes = route("r", "/"),
            workers = 1 }) })
        -- the only connection is busy for 800 ms; the second request waits in the queue
        local busy = assert(H.conn(lv.port, { timeout = 10 * H.scale }))
        assert(busy:send(H.build_request(lv.port, { path = "/busy", headers = { { "X-Test-Delay-Ms", "800" } } })))
        H.wait_until(function() return up:stats().by_path["/busy"] == 1 end, 5, "the busy request upstream")
        local queued = assert(H.conn(lv.port, { timeout = 4 * H.scale }))
        assert(queued:send(H.build_request(lv.port, { path = "/queued" })))
        H.wait_until(function() return status(lv).upstreams[1].waiting == 1 end, 5 * H.scale, "a queued request")

        lv:write_config(conf({ servers = { up:addr(2) }, api = pool, routes = route("r", "/"), workers = 1 }))
        reload_ok(lv, 2)
        local r1, e1 = busy:read_response()
        assert.is_not_nil(r1, e1)
        assert_echo(r1, "/busy", "q:" .. up.ports[1])
        -- it started under generation 1: it finishes there, on the old server
        local r2, e2 = queued:read_response()
        assert.is_not_nil(r2, e2)
        assert_echo(r2, "/queued", "q:" .. up.ports[1])
        assert.is_true(lv:alive())
        -- new requests go to the new server
        assert_echo(get(lv.port, "/new"), "/new", "q:" .. up.ports[2])
        assert.equal(1, up:stats().by_port[tostring(up.ports[2])])
    end)

    it("the pool of an unchanged upstream keeps its idle connection", function()
        local up = H.upstream()
        local lv = H.levee({ config = conf({ servers = { up:addr() }, routes = route("p", "/") }) })
        -- every request on one client connection: upstream pools are per worker (README
        -- "Workers") and a client connection stays with the worker that accepted it
        local c = assert(H.conn(lv.port))
        local function on_c(path)
            assert(c:send(H.build_request(lv.port, { path = path })))
            return assert(c:read_response())
        end
        local first = assert_echo(on_c("/p1"), "/p1")
        H.wait_until(function() return status(lv).upstreams[1].servers[1].idle == 1 end, 5 * H.scale,
            "an idle upstream connection")
        local second = assert_echo(on_c("/p2"), "/p2")
        assert.equal(first.conn, second.conn) -- the pool works before the reload
        assert.equal(1, up:stats().connections)
        H.wait_until(function() return status(lv).upstreams[1].servers[1].idle == 1 end, 5 * H.scale,
            "the connection back in the pool")

        -- same upstream, other routes
        lv:write_config(conf({ servers = { up:addr() }, routes = route("q", "/q") .. route("p", "/") }))
        reload_ok(lv, 2)
        assert.equal(1, status(lv).upstreams[1].servers[1].idle)
        local third = assert_echo(on_c("/q/3"), "/q/3")
        assert.equal(first.conn, third.conn)
        local s = up:stats()
        assert.equal(1, s.connections)
        assert.equal(3, s.requests)
    end)
end)

---------------------------------------------------------------------------------------------

describe("listeners across reloads", function()
    after_each(H.cleanup)

    it("a listener added opens after the reload; the unchanged one keeps its socket", function()
        local up = H.upstream()
        local port2 = H.free_port()
        local lv = H.levee({ config = conf({ servers = { up:addr() }, routes = route("r", "/") }),
            ports = { PORT2 = port2 } })
        assert.is_false(H.port_open(port2))
        local inode = assert(listen_inode(lv.port))
        local c = assert(H.conn(lv.port))
        assert(c:send(H.build_request(lv.port, { path = "/k1" })))
        assert_echo(assert(c:read_response()), "/k1")

        lv:write_config(conf({ servers = { up:addr() }, routes = route("r", "/"), listen = { "$PORT", "$PORT2" } }))
        reload_ok(lv, 2)
        assert.is_truthy(listen_inode(port2))
        assert_echo(get(port2, "/via2"), "/via2")
        assert.equal(1, up:stats().by_path["/via2"])
        -- the same listening socket, not a new one bound to the same port
        assert.equal(inode, listen_inode(lv.port))
        assert_echo(get(lv.port, "/via1"), "/via1")
        assert(c:send(H.build_request(lv.port, { path = "/k2" })))
        assert_echo(assert(c:read_response()), "/k2")
    end)

    it("a listener removed stops accepting; its keep-alive connection gets its in-flight response", function()
        local up = H.upstream()
        local lv = H.levee({ config = conf({ servers = { up:addr() }, routes = route("r", "/"),
            listen = { "$PORT", "$PORT2" } }) })
        local port2 = lv.ports.PORT2
        local c = assert(H.conn(port2, { timeout = 10 * H.scale }))
        assert(c:send(H.build_request(port2, { path = "/first" })))
        assert_echo(assert(c:read_response()), "/first")
        assert(c:send(H.build_request(port2, { path = "/inflight", headers = { { "X-Test-Delay-Ms", "800" } } })))
        H.wait_until(function() return up:stats().by_path["/inflight"] == 1 end, 5, "the request upstream")

        lv:write_config(conf({ servers = { up:addr() }, routes = route("r", "/") }))
        reload_ok(lv, 2)
        assert.is_nil(listen_inode(port2))
        local none, err = H.request(port2, { path = "/refused" })
        assert.is_nil(none)
        assert.equal("connection refused", err)
        assert.is_false(c:closed(0))
        assert.equal("", c:buffered()) -- still in flight
        local r, rerr = c:read_response()
        assert.is_not_nil(r, rerr)
        assert_echo(r, "/inflight")
        assert_echo(get(lv.port, "/still"), "/still")
        assert.is_nil(up:stats().by_path["/refused"])
    end)
end)

---------------------------------------------------------------------------------------------

describe("reloads under load", function()
    after_each(H.cleanup)

    it("50 reloads (and refused ones) while 8 keep-alive connections send requests: none fails", function()
        local up = H.upstream({ n = 2, name = "L" })
        -- A and B differ in routes and upstream settings (same servers: the pool is kept; a
        -- change of servers is covered by "a request queued for a connection..." above)
        local A = conf({ servers = { up:addr(1) }, routes = route("a", "/") })
        local B = conf({ servers = { up:addr(1) }, api = ', connect_timeout = "2s", pool = { max_idle = 16 }',
            routes = route("b1", "/load/1") .. route("b2", "/", ', timeout = "7s"') })
        local BAD = conf({ servers = { up:addr(1) }, routes = route("a", "/", ', timeout = "soon"') })
        local lv = H.levee({ config = A })
        local N = 8
        local conns = {}
        for i = 1, N do conns[i] = assert(H.conn(lv.port, { timeout = 10 * H.scale })) end
        local served, failures, reloads, refused, rounds = 0, {}, 0, 0, 0
        local seq = 0

        local function send_round(with_delay)
            local paths = {}
            for i = 1, N do
                seq = seq + 1
                paths[i] = ("/load/%d/%d"):format(i, seq)
                local hs = {}
                if with_delay and i % 3 ~= 0 then hs[1] = { "X-Test-Delay-Ms", tostring(5 * (i % 3)) } end
                local ok, err = conns[i]:send(H.build_request(lv.port, { path = paths[i], headers = hs }))
                if not ok then failures[#failures + 1] = ("send on conn %d: %s"):format(i, tostring(err)) end
            end
            return paths
        end
        local function read_round(paths)
            for i = 1, N do
                local r, err = conns[i]:read_response()
                if not r then
                    failures[#failures + 1] = ("%s: %s"):format(paths[i], tostring(err))
                elseif r.status ~= 200 then
                    failures[#failures + 1] = ("%s: status %d %s"):format(paths[i], r.status, r.body)
                else
                    local ok, e = pcall(H.json, r.body)
                    if not ok or e.target ~= paths[i] or e.method ~= "GET" then
                        failures[#failures + 1] = ("%s: body %s"):format(paths[i], r.body)
                    else
                        served = served + 1
                    end
                end
            end
            rounds = rounds + 1
        end

        local t0 = H.now()
        while reloads < 50 and #failures == 0 do
            local bad = reloads > 0 and reloads % 5 == 0 and refused < reloads // 5
            lv:write_config(bad and BAD or (reloads % 2 == 0 and B or A))
            -- requests in flight while the reload happens
            local paths = send_round(true)
            local r = assert(lv:admin({ method = "POST", path = "/reload", body = "" }))
            if bad then
                assert.equal(400, r.status, r.body)
                refused = refused + 1
            else
                assert.equal(200, r.status, r.body)
                reloads = reloads + 1
                assert.equal(reloads + 1, H.json(r.body).generation)
            end
            read_round(paths)
            for _ = 1, 8 do read_round(send_round(false)) end
        end
        local took = H.now() - t0
        io.stderr:write(("\n[reload load] %d requests served on %d keep-alive connections in %d rounds, "
            .. "%d reloads ok, %d refused, %d failures, %.1fs\n"):format(served, N, rounds, reloads, refused,
            #failures, took))
        assert.same({}, failures)
        assert.equal(50, reloads)
        assert.equal(9, refused) -- one after every 5th good reload, none after the last
        assert.equal(rounds * N, served)
        for i = 1, N do assert.is_false(conns[i]:closed(), "connection " .. i .. " closed") end
        assert.equal(51, status(lv).generation)
        assert.equal(50, metric(lv, RELOAD_OK))
        assert.equal(9, metric(lv, RELOAD_ERR))
        local s = up:stats()
        assert.equal(served, s.requests)
    end)

    it("1000 reloads leave memory and descriptors where they were", function()
        local up = H.upstream()
        local function cfg(n)
            local hook = n == 1
                and ', classify = function(a) if a.status == 599 then return "fail" end return "ok" end'
                or ', classify = function(a) local s = a.status or 0; return s >= 500 and "retry" or "ok" end'
            return conf({ servers = { up:addr() }, routes = route("main", "/", hook) })
        end
        local lv = H.levee({ config = cfg(1) })
        local pid = lv:pid()
        local n_total = 0
        local function reloads(n)
            for i = 1, n do
                lv:write_config(cfg(i % 2 + 1))
                local r = assert(lv:admin({ method = "POST", path = "/reload", body = "" }))
                assert.equal(200, r.status, r.body)
                n_total = n_total + 1
                if i % 10 == 0 then assert_echo(get(lv.port, "/r" .. n_total), "/r" .. n_total) end
            end
        end
        reloads(50) -- warm-up: allocator arenas, metric series, pools
        local fd0 = settled_fds(pid)
        local open0 = up:stats().open
        local rss0 = proc.rss_kb(pid)
        local lua0 = status(lv).lua
        local n = H.sanitized and 200 or 1000
        local t0 = H.now()
        reloads(n)
        local took = H.now() - t0
        local fd1 = settled_fds(pid)
        local open1 = up:stats().open
        local rss1 = proc.rss_kb(pid)
        local lua1 = status(lv).lua
        io.stderr:write(("\n[reload leak] %d reloads after a warm-up of 50 in %.1fs: RSS %d -> %d KiB (%+d), "
            .. "fds %d -> %d, Lua states %d -> %d, Lua bytes %d -> %d%s\n"):format(n, took, rss0, rss1,
            rss1 - rss0, fd0, fd1, lua0.states, lua1.states, lua0.bytes, lua1.bytes,
            H.sanitized and " (ASan: RSS not checked)" or ""))
        assert.equal(50 + n + 1, status(lv).generation)
        -- the same descriptors but the pooled upstream connections, which are per worker
        -- (README "Workers"): a worker whose first request came after the warm-up opens its
        -- one then. At most one each: the requests come one at a time.
        assert.equal(fd0 - open0, fd1 - open1)
        assert.is_true(open1 - 1 <= H.workers(), ("%d connections open at the upstream"):format(open1 - 1))
        -- every old generation's Lua state is gone: only the one in force is left (one per
        -- worker: each worker runs the hooks in a Lua state of its own), holding about what the
        -- same configuration held before (both ends load cfg(1))
        assert.equal(H.workers(), lua0.states)
        assert.equal(H.workers(), lua1.states)
        assert.is_true(math.abs(lua1.bytes - lua0.bytes) <= 64 * 1024,
            ("Lua memory %d -> %d bytes"):format(lua0.bytes, lua1.bytes))
        if not H.sanitized then
            assert.is_true(rss1 - rss0 <= 4096, ("RSS grew by %d KiB over %d reloads"):format(rss1 - rss0, n))
        end
        assert_echo(get(lv.port, "/end"), "/end")
        assert.equal(pid, lv:pid())
    end)
end)
