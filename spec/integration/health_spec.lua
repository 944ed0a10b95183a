-- Upstream health end to end (README, "Upstream health: one bad server never hurts a client"
-- and "Circuit breaker"): the real levee in front of real misbehaving servers.
--
-- Passive outlier ejection (refused connections, 503s, growing ejection times, max_ejected,
-- enforce = false), active checks (a stopped upstream process goes down and comes back),
-- slow start (a returning server's share grows), panic mode (no server in: send to all),
-- health state kept across reloads, breaker transition lines and the collapsing of identical
-- warnings. A dead server is a "hole": a bound port nobody listens on, so connecting to it is
-- refused at once. A server answering 503 is one listener of lv-testupstream programmed with
-- X-Test-By-Port. Every test starts its own levee (and upstreams), so no state leaks.
--
-- Timing: short eject_for / interval / slow_start values; every wait is H.wait_until (or a
-- helper built on it); loops that must span a period send real traffic until a deadline.

local H = require("helpers")
local socket = require("socket")

local function count(t, k) return (t and t[tostring(k)]) or 0 end

-- Prometheus text → list of { name, labels = {}, value }.
local parse_metrics = H.parse_metrics

local function has_flag(entry, flag)
    for _, f in ipairs(entry.flags or {}) do
        if f == flag then return true end
    end
    return false
end

-- Lines of `text` that contain `needle` (plain).
local function lines_with(text, needle)
    local out = {}
    for line in text:gmatch("[^\n]+") do
        if line:find(needle, 1, true) then out[#out + 1] = line end
    end
    return out
end

describe("upstream health", function()
    local lv
    local holes = {}

    -- A port that refuses connections: bound (so nobody else takes it), never listening.
    local function hole()
        local s = socket.tcp()
        assert(s:bind("127.0.0.1", 0))
        holes[#holes + 1] = s
        return select(2, s:getsockname())
    end

    -- levee with an admin port and the access log on stdout.
    local function start(cfg)
        cfg.admin = true
        lv = H.levee({ config = cfg })
        return lv
    end

    local function req(path, headers, extra)
        local o = { path = path, headers = headers or {} }
        for k, v in pairs(extra or {}) do o[k] = v end
        local r, err, got = lv:request(o)
        assert(r, ("request %s: %s (got %q)"):format(path, tostring(err), tostring(got)))
        return r
    end

    -- The "NAME:PORT" of the upstream process that answered (lv-testupstream's X-Upstream).
    local function answered_by(r)
        return r.headers["x-upstream"]
    end

    local function status()
        local r = assert(lv:admin("/status"))
        assert.equal(200, r.status)
        return H.json(r.body)
    end

    local function status_upstream(name)
        for _, u in ipairs(status().upstreams) do
            if u.name == name then return u end
        end
        error("no upstream " .. name .. " in /status")
    end

    local function server(up_name, addr)
        for _, s in ipairs(status_upstream(up_name).servers) do
            if s.name == addr then return s end
        end
        error("no server " .. addr .. " in upstream " .. up_name .. " of /status")
    end

    local function samples()
        local r = assert(lv:admin("/metrics"))
        assert.equal(200, r.status)
        return parse_metrics(r.body)
    end

    local function metric(name, want, s) return H.metric(s or samples(), name, want) end

    -- Sum over every series of `name`.
    local function metric_sum(name, s)
        local sum = 0
        for _, m in ipairs(s or samples()) do
            if m.name == name then sum = sum + m.value end
        end
        return sum
    end

    -- levee's stderr lines containing `needle`.
    local function log_lines(needle) return lines_with(lv:log(), needle) end

    -- H.wait_until, but a timeout's error carries levee's stderr (without per-request lines).
    local function wait_logged(fn, timeout, what)
        local ok, err = pcall(H.wait_until, fn, timeout, what)
        if ok then return end
        local keep = {}
        for line in lv:log():gmatch("[^\n]+") do
            if not line:find("connect to upstream", 1, true) then keep[#keep + 1] = line end
        end
        error(tostring(err) .. "\n--- levee stderr:\n" .. table.concat(keep, "\n", math.max(1, #keep - 40)), 2)
    end

    -- Sends failing traffic (fn(i) sends request i) until levee has logged `n` lines with
    -- `needle`. Returns the H.now() taken just before the request that produced the n-th one,
    -- and how many requests were sent.
    local function send_until_logged(needle, n, fn, timeout)
        local i, t0 = 0, nil
        wait_logged(function()
            t0 = H.now()
            i = i + 1
            fn(i)
            return #log_lines(needle) >= n
        end, timeout or 5 * H.scale, ("%d log line(s) %q"):format(n, needle))
        return t0, i
    end

    -- Waits until levee has logged a line containing `needle`, sending a plain request at
    -- each poll (a pick is what notices that an ejection ran out; the tick is once a second).
    local function drive_until_logged(needle, path, timeout)
        local i = 0
        wait_logged(function()
            i = i + 1
            local r = req(path .. i)
            assert.equal(200, r.status)
            return #log_lines(needle) > 0
        end, timeout or 5 * H.scale, ("log line %q"):format(needle))
        return i
    end

    after_each(function()
        for _, s in ipairs(holes) do s:close() end
        holes = {}
        lv = nil
        H.cleanup()
    end)

    -------------------------------------------------------------------------------------
    describe("passive outlier ejection", function()
        it("a refusing server costs clients exactly consecutive_failures errors, then is ejected and avoided", function()
            local good = H.upstream({ name = "good" })
            local dead = "127.0.0.1:" .. hole()
            start({
                upstreams = { api = { servers = { dead, good:addr(1) } } },
                -- one attempt: every pick of the dead server is visible to its client
                routes = { { name = "api", upstream = "api", retry = { attempts = 1 } } },
            })
            local n = 200
            local errors, last_error = 0, 0
            for i = 1, n do
                local r = req("/one/" .. i)
                if r.status ~= 200 then
                    H.assert_gw_error(r, 502, "connect-failure", "api")
                    errors = errors + 1
                    last_error = i
                else
                    assert.equal("good:" .. good.ports[1], answered_by(r))
                end
            end
            -- default outlier policy: 5 connect-failures in a row eject it. Round robin gives it
            -- every other request, so the errors are the first 5 of its turns, then none.
            assert.equal(5, errors)
            assert.is_true(last_error <= 10, "an error at request " .. last_error)

            local sv = server("api", dead)
            assert.equal("ejected", sv.state)
            assert.matches("consecutive connect-failure", sv.reason, 1, true)
            assert.equal("ejected for 10s after 5 consecutive connect-failure", sv.reason)
            assert.equal(1, sv.ejections)
            assert.is_true(sv.eject_left_ms > 0 and sv.eject_left_ms <= 10000, "eject_left_ms " .. sv.eject_left_ms)
            assert.equal("up", server("api", good:addr(1)).state)

            -- the access log: the dead server is named by exactly the 5 failed requests, and by
            -- nothing after the one that ejected it (the ejection lasts 10 s, this ran faster)
            local entries = lv:wait_access(n)
            local named = {}
            for _, e in ipairs(entries) do
                local i = tonumber(e.path:match("^/one/(%d+)$"))
                for _, t in ipairs(e.tries) do
                    if t.server == dead then
                        assert.equal("connect-failure", t.outcome)
                        named[#named + 1] = i
                    end
                end
            end
            assert.equal(5, #named)
            for _, i in ipairs(named) do
                assert.is_true(i <= last_error, ("request %d after the ejection went to the dead server"):format(i))
            end

            -- one warn line for the ejection, in the documented words
            local ej = log_lines("server " .. dead .. " ejected for")
            assert.equal(1, #ej)
            assert.matches("upstream api server " .. dead .. " ejected for 10s after 5 consecutive connect-failure",
                ej[1], 1, true)
            assert.equal(1, metric("levee_upstream_ejections_total",
                { upstream = "api", server = dead, enforced = "true" }))
            assert.equal(0, metric("levee_upstream_server_up", { upstream = "api", server = dead }))
            assert.equal(1, metric("levee_upstream_server_up", { upstream = "api", server = good:addr(1) }))
        end)

        it("a server answering 503 is ejected after consecutive_failures 5xx", function()
            local up = H.upstream({ n = 2, name = "u" })
            local bad, good = up.ports[1], up.ports[2]
            local plan = { ["X-Test-By-Port"] = ("%d=503,%d=200"):format(bad, good) }
            start({
                upstreams = { api = { servers = up:addrs() } },
                routes = { { name = "api", upstream = "api" } }, -- default retry: 503 not retried
            })
            local n, got503 = 40, 0
            for i = 1, n do
                local r = req("/five/" .. i, plan)
                if r.status == 503 then
                    assert.is_nil(r.headers["levee-error"]) -- the upstream's own 503
                    assert.equal("u:" .. bad, answered_by(r))
                    got503 = got503 + 1
                else
                    assert.equal(200, r.status)
                    assert.equal("u:" .. good, answered_by(r))
                end
            end
            assert.equal(5, got503)
            local s = up:stats()
            assert.equal(5, count(s.by_port, bad))
            assert.equal(n - 5, count(s.by_port, good))
            local sv = server("api", up:addr(1))
            assert.equal("ejected", sv.state)
            assert.equal("ejected for 10s after 5 consecutive 5xx", sv.reason)
            assert.equal(1, #log_lines("upstream api server " .. up:addr(1) .. " ejected for 10s after 5 consecutive 5xx"))
        end)

        it("each new ejection of the same server lasts twice as long (eject_for = 300ms, then 600ms)", function()
            local up = H.upstream({ n = 2, name = "u" })
            local bad, good = up.ports[1], up.ports[2]
            local plan = { ["X-Test-By-Port"] = ("%d=503,%d=200"):format(bad, good) }
            local addr = up:addr(1)
            start({
                upstreams = { api = { servers = up:addrs(), outlier = { eject_for = "300ms" } } },
                routes = { { name = "api", upstream = "api" } },
            })
            local failing = function(i) req("/grow/" .. i, plan) end

            -- first ejection: 300 ms
            local t1 = send_until_logged("server " .. addr .. " ejected for", 1, failing)
            local sv = server("api", addr)
            local took = (H.now() - t1) * 1000
            assert.equal("ejected", sv.state)
            assert.equal("ejected for 300ms after 5 consecutive 5xx", sv.reason)
            assert.equal(1, sv.ejections)
            assert.is_true(sv.eject_left_ms <= 300, "eject_left_ms " .. sv.eject_left_ms)
            assert.is_true(sv.eject_left_ms >= 300 - took - 5,
                ("eject_left_ms %d, %.0f ms after the request that ejected it"):format(sv.eject_left_ms, took))

            -- it comes back (not before its 300 ms), then fails 5 more times: 600 ms
            local t2 = send_until_logged("server " .. addr .. " ejected for", 2, failing)
            local back = log_lines("server " .. addr .. " back in")
            assert.equal(1, #back)
            assert.is_true(t2 - t1 >= 0.3, ("second ejection only %.3fs after the first"):format(t2 - t1))
            sv = server("api", addr)
            took = (H.now() - t2) * 1000
            assert.equal("ejected", sv.state)
            assert.matches("^ejected for 600ms after 5 consecutive 5xx", sv.reason)
            assert.equal("ejected for 600ms after 5 consecutive 5xx (ejection 2)", sv.reason)
            assert.equal(2, sv.ejections)
            assert.is_true(sv.eject_left_ms <= 600, "eject_left_ms " .. sv.eject_left_ms)
            assert.is_true(sv.eject_left_ms >= 600 - took - 5,
                ("eject_left_ms %d, %.0f ms after the request that ejected it"):format(sv.eject_left_ms, took))
            local lines = log_lines("server " .. addr .. " ejected for")
            assert.equal(2, #lines)
            assert.matches("ejected for 300ms after 5 consecutive 5xx", lines[1], 1, true)
            assert.matches("ejected for 600ms after 5 consecutive 5xx (ejection 2)", lines[2], 1, true)
            assert.equal(2, metric("levee_upstream_ejections_total",
                { upstream = "api", server = addr, enforced = "true" }))
        end)

        it("max_ejected = 0.5 with three failing servers of four: two ejected, the third stays in", function()
            local up = H.upstream({ n = 4, name = "u" })
            local p = up.ports
            local plan = { ["X-Test-By-Port"] = ("%d=503,%d=503,%d=503,%d=200"):format(p[1], p[2], p[3], p[4]) }
            start({
                upstreams = { api = { servers = up:addrs(), outlier = { max_ejected = 0.5 } } },
                routes = { { name = "api", upstream = "api" } },
            })
            send_until_logged("not ejected: max_ejected", 1, function(i) req("/max/" .. i, plan) end)
            -- and some more traffic: nothing changes
            local before = up:stats().by_port
            for i = 1, 20 do req("/max/more" .. i, plan) end
            local after = up:stats().by_port

            local ejected, in_bad = {}, {}
            for i = 1, 3 do
                local sv = server("api", up:addr(i))
                if sv.state == "ejected" then
                    ejected[#ejected + 1] = i
                    assert.matches("^ejected for 10s after 5 consecutive 5xx", sv.reason)
                else
                    assert.equal("up", sv.state)
                    in_bad[#in_bad + 1] = i
                end
            end
            assert.equal(2, #ejected)
            assert.equal(1, #in_bad)
            assert.equal("up", server("api", up:addr(4)).state)
            -- the third failing server still takes traffic, the ejected ones none
            local third = p[in_bad[1]]
            assert.is_true(count(after, third) > count(before, third), "the server left in got no traffic")
            for _, i in ipairs(ejected) do
                assert.equal(count(before, p[i]), count(after, p[i]))
            end
            local nl = log_lines("server " .. up:addr(in_bad[1]) .. " not ejected: max_ejected reached (2 of 4 ejected)")
            assert.is_true(#nl >= 1, "no 'not ejected: max_ejected' line for the third server:\n" .. lv:log())
            assert.equal(2, #log_lines(" ejected for "))
            local s = samples()
            local ups, ej = 0, 0
            for i = 1, 4 do
                ups = ups + metric("levee_upstream_server_up", { upstream = "api", server = up:addr(i) }, s)
                ej = ej + metric("levee_upstream_ejections_total",
                    { upstream = "api", server = up:addr(i), enforced = "true" }, s)
            end
            assert.equal(2, ups)
            assert.equal(2, ej)
        end)

        it("enforce = false: detected, logged and counted, the server keeps its traffic", function()
            local up = H.upstream({ n = 2, name = "u" })
            local bad, good = up.ports[1], up.ports[2]
            local plan = { ["X-Test-By-Port"] = ("%d=503,%d=200"):format(bad, good) }
            local addr = up:addr(1)
            start({
                upstreams = { api = { servers = up:addrs(), outlier = { enforce = false } } },
                routes = { { name = "api", upstream = "api" } },
            })
            local n, got503 = 40, 0
            for i = 1, n do
                if req("/dry/" .. i, plan).status == 503 then got503 = got503 + 1 end
            end
            -- round robin, nothing taken out: every other request met the bad server. Each
            -- worker keeps its own turn (README "Workers"), so with several workers each one's
            -- share may be odd: half a request off per worker, none with one worker.
            assert.is_true(math.abs(got503 - n / 2) <= H.workers() // 2,
                ("%d of %d requests met the bad server"):format(got503, n))
            assert.equal(got503, count(up:stats().by_port, bad))
            -- the server's failures count together whichever worker saw them: a verdict every 5
            local verdicts = got503 // 5
            local sv = server("api", addr)
            assert.equal("up", sv.state)
            assert.equal(0, sv.ejections)
            assert.equal(verdicts, sv.ejections_dry)
            assert.equal(0, sv.eject_left_ms)
            local s = samples()
            assert.equal(verdicts, metric("levee_upstream_ejections_total",
                { upstream = "api", server = addr, enforced = "false" }, s))
            assert.equal(0, metric("levee_upstream_ejections_total",
                { upstream = "api", server = addr, enforced = "true" }, s))
            assert.equal(1, metric("levee_upstream_server_up", { upstream = "api", server = addr }, s))
            local w = log_lines("server " .. addr .. " would be ejected after 5 consecutive 5xx")
            assert.is_true(#w >= 1, "no 'would be ejected' line:\n" .. lv:log())
            assert.matches("(enforce = false)", w[1], 1, true)
            assert.equal(0, #log_lines(" ejected for "))
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("active checks", function()
        it("a stopped server goes down after `unhealthy` failed checks and comes back after `healthy` passes", function()
            local a = H.upstream({ name = "a" })
            local b = H.upstream({ name = "b" })
            start({
                upstreams = { api = { servers = { a:addr(), b:addr() },
                    health = { path = "/healthz", interval = "100ms", timeout = "100ms", healthy = 2, unhealthy = 2 } } },
                routes = { { name = "api", upstream = "api" } },
            })
            local sent = 0
            -- checks run: both servers get GET /healthz and /status shows a passed check
            H.wait_until(function()
                local sv = server("api", b:addr())
                return sv.last_check ~= H.null and sv.last_check.ok == true
            end, 3 * H.scale, "a passed check of b in /status")
            local lc = server("api", b:addr()).last_check
            assert.equal("200", lc.result)
            assert.is_true(lc.ms >= 0 and lc.ms <= 100, "check took " .. tostring(lc.ms))
            assert.is_true(math.abs(lc.at - os.time()) < 5, "last_check.at " .. tostring(lc.at))
            H.wait_until(function() return count(a:stats().by_path, "/healthz") >= 2 end, 3 * H.scale,
                "checks reaching a")

            b:stop()
            lv:wait_log("upstream api server " .. b:addr() .. " down after 2 failed checks", 3 * H.scale, true)
            local sv = server("api", b:addr())
            assert.equal("down", sv.state)
            assert.matches("^down after 2 failed checks: ", sv.reason)
            assert.is_false(sv.last_check.ok)
            assert.are_not.equal("200", sv.last_check.result)
            assert.matches("refused", sv.last_check.result, 1, true)
            assert.equal(1, #log_lines("server " .. b:addr() .. " down after"))
            assert.equal(0, metric("levee_upstream_server_up", { upstream = "api", server = b:addr() }))

            -- every request goes to a, none is lost
            local n = 20
            for i = 1, n do
                local r = req("/ac/" .. i)
                sent = sent + 1
                assert.equal(200, r.status)
                assert.equal("a:" .. a.ports[1], answered_by(r))
            end
            for _, e in ipairs(lv:wait_access(n)) do
                assert.equal(1, #e.tries)
                assert.equal(a:addr(), e.tries[1].server)
            end

            b:start()
            lv:wait_log("upstream api server " .. b:addr() .. " back in after 2 passed checks", 3 * H.scale, true)
            sv = server("api", b:addr())
            assert.equal("up", sv.state)
            assert.is_true(sv.last_check.ok)
            assert.equal("200", sv.last_check.result)
            assert.is_true(count(b:stats().by_path, "/healthz") >= 2)
            -- b takes traffic again
            local seen_b = false
            for i = 1, 6 do
                local r = req("/back/" .. i)
                sent = sent + 1
                assert.equal(200, r.status)
                if answered_by(r) == "b:" .. b.ports[1] then seen_b = true end
            end
            assert.is_true(seen_b, "b got no request after it came back")

            local s = samples()
            local bf = metric("levee_health_checks_total", { upstream = "api", server = b:addr(), result = "failed" }, s)
            local bo = metric("levee_health_checks_total", { upstream = "api", server = b:addr(), result = "ok" }, s)
            local ao = metric("levee_health_checks_total", { upstream = "api", server = a:addr(), result = "ok" }, s)
            local af = metric("levee_health_checks_total", { upstream = "api", server = a:addr(), result = "failed" }, s)
            assert.is_true(bf ~= nil and bf >= 2, "failed checks of b: " .. tostring(bf))
            assert.is_true(bo ~= nil and bo >= 3, "passed checks of b: " .. tostring(bo)) -- 1+ before, 2 after
            assert.is_true(ao ~= nil and ao >= 2, "passed checks of a: " .. tostring(ao))
            assert.equal(0, af)
            -- checks are not client requests
            assert.equal(sent, metric_sum("levee_requests_total", s))
            assert.equal(sent, status().routes[1].requests)
        end)

        it("panic mode: every server fails its checks, requests are still answered, logged once", function()
            local up = H.upstream({ n = 2, name = "u" })
            start({
                upstreams = { api = { servers = up:addrs(),
                    health = { path = "/", interval = "100ms", timeout = "100ms", healthy = 2, unhealthy = 2,
                        expect = { 204 } } } },
                routes = { { name = "api", upstream = "api", retry = { attempts = 1 } } },
            })
            lv:wait_log("(panic mode)", 3 * H.scale, true)
            local u = status_upstream("api")
            assert.is_true(u.panic)
            for _, sv in ipairs(u.servers) do
                assert.equal("down", sv.state)
                assert.equal("down after 2 failed checks: 200", sv.reason)
                assert.is_false(sv.last_check.ok)
                assert.equal("200", sv.last_check.result)
            end
            -- traffic for longer than the 1 s in which identical warnings collapse, so a line
            -- logged per request would show (again, or as "repeated")
            local n, deadline = 0, H.now() + 1.2
            local by = {}
            while H.now() < deadline do
                n = n + 1
                local r = req("/panic/" .. n)
                assert.equal(200, r.status)
                assert.is_nil(r.headers["levee-error"])
                by[answered_by(r)] = true
            end
            assert.is_true(n >= 10, "only " .. n .. " requests")
            assert.is_true(by["u:" .. up.ports[1]] and by["u:" .. up.ports[2]], "panic traffic not sent to all")
            for _, e in ipairs(lv:wait_access(n)) do
                assert.is_true(has_flag(e, "panic"), "no panic flag on " .. e.path)
            end
            local s = samples()
            assert.equal(n, metric("levee_upstream_panic_total", { upstream = "api" }, s))
            assert.equal(n, status_upstream("api").panic_picks)
            local lines = log_lines("(panic mode)")
            assert.equal(1, #lines)
            assert.matches("upstream api: no server in: sending to all 2 (panic mode)", lines[1], 1, true)
            assert.is_nil(lines[1]:find("repeated", 1, true))
            for i = 1, 2 do
                assert.equal(0, metric("levee_upstream_server_up", { upstream = "api", server = up:addr(i) }, s))
            end
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("slow start", function()
        it("a server back from an ejection starts near 10% of its share and grows over slow_start", function()
            local up = H.upstream({ n = 2, name = "u" })
            local a, b = up.ports[1], up.ports[2]
            local baddr = up:addr(2)
            start({
                upstreams = { api = { servers = up:addrs(), balance = "round_robin", slow_start = "2s",
                    outlier = { eject_for = "300ms" } } },
                routes = { { name = "api", upstream = "api", retry = { attempts = 1 } } },
            })
            local plan = { ["X-Test-By-Port"] = ("%d=200,%d=503"):format(a, b) }
            send_until_logged("server " .. baddr .. " ejected for", 1, function(i) req("/ss-fail/" .. i, plan) end)
            assert.equal("ejected", server("api", baddr).state)

            -- plain traffic until b is back, ramping up
            drive_until_logged("server " .. baddr .. " starting", "/ss-wait/")
            local t0 = H.now()
            local sv = server("api", baddr)
            assert.equal("starting", sv.state)
            assert.matches("slow start 2s", sv.reason, 1, true)
            assert.is_true(sv.weight >= 0.1 and sv.weight < 0.3, "weight at start " .. sv.weight)

            -- 4 windows of 0.5 s over the 2 s: b's share of the requests in each
            local win, nwin = 0.5, 4
            local total, tob, weights = {}, {}, {}
            for k = 1, nwin do total[k], tob[k] = 0, 0 end
            local i = 0
            while true do
                local el = H.now() - t0
                local k = math.floor(el / win) + 1
                if k > nwin then break end
                if not weights[k] then
                    local t_before = H.now() - t0
                    local w = server("api", baddr).weight
                    local t_after = H.now() - t0
                    -- 0.1 + 0.9 × elapsed / 2 s; b started at most one poll (a few ms) before t0
                    assert.is_true(w >= 0.1 + 0.45 * t_before - 0.01 and w <= 0.1 + 0.45 * (t_after + 0.1) + 0.01,
                        ("weight %.3f at %.3fs"):format(w, t_before))
                    weights[k] = w
                else
                    i = i + 1
                    local r = req("/ss/" .. i)
                    assert.equal(200, r.status)
                    total[k] = total[k] + 1
                    if answered_by(r) == "u:" .. b then tob[k] = tob[k] + 1 end
                end
            end
            local share = {}
            for k = 1, nwin do
                assert.is_true(total[k] >= 20, ("window %d: only %d requests"):format(k, total[k]))
                share[k] = tob[k] / total[k]
            end
            local desc = ("shares %.2f %.2f %.2f %.2f of %d %d %d %d requests"):format(share[1], share[2], share[3],
                share[4], total[1], total[2], total[3], total[4])
            assert.is_true(share[1] < 0.35, desc)
            assert.is_true(share[1] < share[nwin], desc)
            assert.is_true(share[nwin] > 0.35, desc)
            assert.is_true(tob[1] > 0, "b got nothing in the first window (never starved): " .. desc)
            for k = 2, nwin do
                assert.is_true(weights[k] > weights[k - 1], "weights do not grow")
            end

            -- after slow_start it is fully up again
            drive_until_logged("server " .. baddr .. " slow start done", "/ss-done/")
            sv = server("api", baddr)
            assert.equal("up", sv.state)
            assert.equal(1, sv.weight)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("reload", function()
        it("keeps a server's ejection across reloads that keep or extend the server list; a new server starts up", function()
            local up = H.upstream({ n = 3, name = "u" })
            local addrs = up:addrs()
            local p = up.ports
            local function cfg(servers, extra_route)
                local routes = { { name = "api", upstream = "api" } }
                if extra_route then
                    table.insert(routes, 1, { name = "extra", match = { prefix = "/extra/" }, upstream = "api" })
                end
                return {
                    admin = true,
                    upstreams = { api = { servers = servers, outlier = { eject_for = "30s" } } },
                    routes = routes,
                }
            end
            start(cfg({ addrs[1], addrs[2] }))
            local plan = { ["X-Test-By-Port"] = ("%d=200,%d=503,%d=200"):format(p[1], p[2], p[3]) }
            send_until_logged("server " .. addrs[2] .. " ejected for", 1, function(i) req("/rl/" .. i, plan) end)
            local sv0 = server("api", addrs[2])
            assert.equal("ejected", sv0.state)
            assert.equal("ejected for 30s after 5 consecutive 5xx", sv0.reason)

            local function reload(config, gen)
                lv:write_config(config)
                lv:reload()
                lv:wait_log("configuration reloaded: generation " .. gen, 5 * H.scale, true)
            end

            -- 1. same servers, one more route
            reload(cfg({ addrs[1], addrs[2] }, true), 2)
            local sv = server("api", addrs[2])
            assert.equal("ejected", sv.state)
            assert.equal(sv0.reason, sv.reason)
            assert.equal(1, sv.ejections)
            assert.is_true(sv.eject_left_ms > 20000 and sv.eject_left_ms <= sv0.eject_left_ms,
                ("eject_left_ms %d, was %d"):format(sv.eject_left_ms, sv0.eject_left_ms))
            local before = count(up:stats().by_port, p[2])
            for i = 1, 6 do assert.equal(200, req("/extra/" .. i, plan).status) end
            assert.equal(before, count(up:stats().by_port, p[2]))

            -- 2. a third server added
            reload(cfg({ addrs[1], addrs[2], addrs[3] }), 3)
            local u = status_upstream("api")
            assert.equal(3, #u.servers)
            sv = server("api", addrs[2])
            assert.equal("ejected", sv.state)
            assert.equal(sv0.reason, sv.reason)
            assert.equal(1, sv.ejections)
            assert.is_true(sv.eject_left_ms > 20000, "eject_left_ms " .. sv.eject_left_ms)
            local sv3 = server("api", addrs[3])
            assert.equal("up", sv3.state)
            assert.equal(0, sv3.ejections)
            assert.equal("up", server("api", addrs[1]).state)
            -- traffic goes to the first and the new server, never to the ejected one
            before = up:stats().by_port
            for i = 1, 10 do assert.equal(200, req("/rl3/" .. i, plan).status) end
            local after = up:stats().by_port
            assert.equal(count(before, p[2]), count(after, p[2]))
            assert.is_true(count(after, p[3]) > count(before, p[3]), "the new server got no traffic")
            assert.is_true(count(after, p[1]) > count(before, p[1]), "the first server got no traffic")
            assert.equal(1, #log_lines(" ejected for "))
            assert.equal(0, #log_lines(" back in"))
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("log lines", function()
        it("breaker transitions: open (naming the cause), half-open, closed, each logged once", function()
            local up = H.upstream({ name = "u" })
            start({
                upstreams = { api = { servers = { up:addr() } } },
                routes = { { name = "brk", upstream = "api", retry = { attempts = 1 },
                    breaker = { consecutive_failures = 3, open_for = "300ms", min_requests = 1000 } } },
            })
            local fail = { ["X-Test-Status"] = "503" }
            for i = 1, 3 do
                local r = req("/brk/f" .. i, fail)
                assert.equal(503, r.status)
                assert.is_nil(r.headers["levee-error"])
            end
            lv:wait_log("route brk breaker open for", 2 * H.scale, true)
            H.assert_gw_error(req("/brk/refused", fail), 503, "breaker-open", "brk")
            assert.equal(0, #log_lines("breaker half-open"))

            -- the upstream recovers; once open_for has passed the probe goes through and closes it
            local t_open = H.now()
            local refused = 0
            H.wait_until(function()
                local r = req("/brk/probe")
                if r.headers["levee-error"] == "breaker-open" then
                    refused = refused + 1
                    return false
                end
                assert.equal(200, r.status)
                return true
            end, 3 * H.scale, "the breaker to let a probe through")
            assert.is_true(H.now() - t_open < 1 * H.scale + 0.3)
            assert.is_true(refused >= 1, "no request was refused while open")
            for i = 1, 5 do assert.equal(200, req("/brk/ok" .. i).status) end

            local log = lv:log()
            local open = lines_with(log, "route brk breaker open for")
            local half = lines_with(log, "route brk breaker half-open")
            local closed = lines_with(log, "route brk breaker closed")
            assert.equal(1, #open)
            assert.equal(1, #half)
            assert.equal(1, #closed)
            assert.matches("route brk breaker open for 300ms: 3 consecutive failures", open[1], 1, true)
            assert.matches("route brk breaker half-open: letting 1 probe(s) through", half[1], 1, true)
            assert.matches("route brk breaker closed: 1 probe(s) succeeded", closed[1], 1, true)
            local io, ih, ic = log:find(open[1], 1, true), log:find(half[1], 1, true), log:find(closed[1], 1, true)
            assert.is_true(io < ih and ih < ic, "transitions logged out of order")
            for _, l in ipairs({ open[1], half[1], closed[1] }) do
                assert.is_nil(l:find("repeated", 1, true))
            end
        end)

        it("identical warnings within a second are collapsed, with the count", function()
            local dead = "127.0.0.1:" .. hole()
            start({
                upstreams = { solo = { servers = { dead } } },
                routes = { { name = "solo", upstream = "solo", retry = { attempts = 1 } } },
            })
            local n = 300
            local t0 = H.now()
            for i = 1, n do
                H.assert_gw_error(req("/c/" .. i), 502, "connect-failure", "solo")
            end
            local took = H.now() - t0
            -- every failure is either printed or counted in a "(repeated N more times" line;
            -- the counts come out once their second is over
            local needle = "route solo: connect to upstream solo failed"
            local printed, repeated, biggest
            H.wait_until(function()
                printed, repeated, biggest = 0, 0, 0
                for _, l in ipairs(log_lines(needle)) do
                    local k = tonumber(l:match("%(repeated (%d+) more times in %d+%.?%d*s%)$"))
                    if k then
                        repeated = repeated + k
                        biggest = math.max(biggest, k)
                    else
                        printed = printed + 1
                    end
                end
                return printed + repeated >= n
            end, 4 * H.scale, "the repeat counts to add up to the failures")
            local lines = log_lines(needle)
            assert.is_true(#lines <= 10 and #lines <= 2 * (math.ceil(took) + 1),
                ("%d lines for %d failures in %.2fs"):format(#lines, n, took))
            assert.equal(n, printed + repeated)
            assert.is_true(biggest >= 100, "largest repeat count " .. biggest)
            -- the server was never ejected: one server always stays in
            assert.equal("up", server("solo", dead).state)
            assert.equal(0, #log_lines(" ejected for "))
        end)
    end)
end)
