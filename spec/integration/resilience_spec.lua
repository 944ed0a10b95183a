-- Resilience end to end (README, "Resilience policies"): the real levee in front of the real lv-testupstream.
-- Retries through 503 / reset / timeout, what is safe to replay, retries moving to another
-- server, the retry budget under a stream of failures, the request deadline, Retry-After,
-- classify hooks (including broken ones), circuit breakers (consecutive, ratio, slow calls,
-- half-open probes), fallbacks, and what /metrics, /status and the access log say about it.
--
-- The upstream is programmed per request: X-Test-Plan "ID:503,200" for "fail, then
-- succeed", X-Test-By-Port for one bad and one good server, X-Test-Action hang and
-- X-Test-Delay-Ms for timeouts and slow calls. Every levee starts fresh (before_each), so
-- breaker and budget state never leak from one test into another.

local H = require("helpers")
local socket = require("socket")

local function count(t, k) return (t and t[tostring(k)]) or 0 end

local assert_gw_error = H.assert_gw_error

-- The upstream's own answer (not made by levee): no Levee-Error, the echo body of the
-- request that reached it. Returns the decoded echo.
local function assert_upstream_answer(r, status, path)
    assert.is_table(r, "no response")
    assert.equal(status, r.status)
    assert.is_nil(r.headers["levee-error"])
    local e = H.json(r.body)
    assert.equal(path, e.target)
    return e
end

-- The value of header `name` in lv-testupstream's echo (what the upstream received).
local function echoed(e, name)
    local out
    for _, kv in ipairs(e.headers) do
        if kv[1]:lower() == name:lower() then
            out = out and (out .. ", " .. kv[2]) or kv[2]
        end
    end
    return out
end

local function has_flag(entry, flag)
    for _, f in ipairs(entry.flags or {}) do
        if f == flag then return true end
    end
    return false
end

-- Prometheus text → list of { name, labels = {}, value }.
local parse_metrics = H.parse_metrics

describe("resilience (retries, budgets, deadlines, hooks, breakers)", function()
    local up, lv, hole, hole_port

    -- Routes, one per behaviour; "main" is listener 1 of the upstream, "pair" both listeners,
    -- "half" a refused address (a bound port nobody listens on) and listener 1.
    local function quick(extra)
        local t = { base = "1ms", max = "1ms", jitter = "none" }
        for k, v in pairs(extra or {}) do t[k] = v end
        return t
    end
    local generous = { ratio = 1, min_per_second = 100, window = "10s" }

    local function config()
        local refused = "127.0.0.1:" .. hole_port
        local one = { attempts = 1 }
        return {
            admin = true,
            upstreams = {
                main = { servers = { up:addr(1) } },
                pair = { servers = { up:addr(1), up:addr(2) }, balance = "round_robin" },
                half = { servers = { refused, up:addr(1) }, balance = "round_robin" },
            },
            routes = {
                { name = "retry", match = { prefix = "/retry/" }, upstream = "main",
                    timeout = "5s", try_timeout = "300ms",
                    retry = { attempts = 4, on = { "503", "reset", "timeout" },
                        backoff = { base = "20ms", max = "100ms", jitter = "none" }, budget = generous } },
                { name = "spread", match = { prefix = "/spread/" }, upstream = "pair",
                    retry = { attempts = 2, on = { "503" }, backoff = quick(), budget = generous } },
                { name = "post", match = { prefix = "/post/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503", "reset", "connect-failure" }, backoff = quick(),
                        budget = generous } },
                { name = "replay", match = { prefix = "/replay/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503", "reset" }, backoff = quick(), budget = generous,
                        non_idempotent = true } },
                { name = "failover", match = { prefix = "/failover/" }, upstream = "half",
                    retry = { attempts = 2, on = { "connect-failure" }, backoff = quick(), budget = generous } },
                { name = "budget", match = { prefix = "/budget/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick(),
                        budget = { ratio = 0.2, min_per_second = 0, window = "10s" } } },
                { name = "dl-hang", match = { prefix = "/dl-hang/" }, upstream = "main", timeout = "300ms",
                    retry = { attempts = 5, on = { "timeout", "503" }, backoff = quick(), budget = generous } },
                { name = "dl-try", match = { prefix = "/dl-try/" }, upstream = "main", timeout = "300ms",
                    try_timeout = "100ms",
                    retry = { attempts = 5, on = { "timeout" }, backoff = quick(), budget = generous } },
                { name = "dl-503", match = { prefix = "/dl-503/" }, upstream = "main", timeout = "300ms",
                    retry = { attempts = 5, on = { "503" }, budget = generous,
                        backoff = { base = "100ms", max = "1s", jitter = "none" } } },
                { name = "ra", match = { prefix = "/ra/" }, upstream = "main", timeout = "5s",
                    retry = { attempts = 2, on = { "503", "429" }, backoff = quick(), budget = generous } },
                { name = "ra-short", match = { prefix = "/ra-short/" }, upstream = "main", timeout = "500ms",
                    retry = { attempts = 2, on = { "503", "429" }, backoff = quick(), budget = generous } },
                { name = "c418", match = { prefix = "/c418/" }, upstream = "main",
                    retry = { attempts = 3, backoff = quick(), budget = generous },
                    classify = H.code([[function(a) if a.status == 418 then return "retry" end end]]) },
                { name = "cok", match = { prefix = "/cok/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick(), budget = generous },
                    classify = H.code([[function(a) if a.status == 503 then return "ok" end end]]) },
                { name = "cdelay", match = { prefix = "/cdelay/" }, upstream = "main", timeout = "5s",
                    retry = { attempts = 2, on = { "503" }, budget = generous,
                        backoff = { base = "400ms", max = "1s", jitter = "none" } },
                    classify = H.code([[function(a) if a.status == 503 then return "retry", "50ms" end end]]) },
                { name = "cpolicy", match = { prefix = "/cpolicy/" }, upstream = "main", timeout = "5s",
                    retry = { attempts = 2, on = { "connect-failure" }, backoff = quick(), budget = generous },
                    classify = H.code([[require("levee.policy").classify]]) },
                { name = "cerr", match = { prefix = "/cerr/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick(), budget = generous },
                    classify = H.code([[function(a) error("boom from the hook") end]]) },
                { name = "cloop", match = { prefix = "/cloop/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick(), budget = generous },
                    classify = H.code([[function(a) local n = 0 while true do n = n + 1 end end]]) },
                { name = "cmem", match = { prefix = "/cmem/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick(), budget = generous },
                    classify = H.code([[function(a)
                        local t = {}
                        for i = 1, 1e9 do t[i] = ("x"):rep(4096) .. i end
                    end]]) },
                { name = "cbad", match = { prefix = "/cbad/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick(), budget = generous },
                    classify = H.code([[function(a) return { "retry" } end]]) },
                { name = "brk", match = { prefix = "/brk/" }, upstream = "main", retry = one,
                    breaker = { consecutive_failures = 3, open_for = "500ms", min_requests = 1000 } },
                { name = "ratio", match = { prefix = "/ratio/" }, upstream = "main", retry = one,
                    breaker = { failure_ratio = 0.5, min_requests = 4, consecutive_failures = 0,
                        window = "10s", open_for = "5s" } },
                { name = "probe", match = { prefix = "/probe/" }, upstream = "main", retry = one,
                    breaker = { consecutive_failures = 2, open_for = "300ms", half_open_requests = 1,
                        min_requests = 1000 } },
                { name = "slow", match = { prefix = "/slow/" }, upstream = "main", retry = one,
                    breaker = { slow_call = { duration = "100ms", ratio = 0.5 }, min_requests = 4,
                        consecutive_failures = 0, failure_ratio = 1, open_for = "5s" } },
                { name = "fb", match = { prefix = "/fb/" }, upstream = "main", retry = one,
                    breaker = { consecutive_failures = 2, open_for = "5s", min_requests = 1000 },
                    fallback = H.code([[function(req, why)
                        return { status = 200, headers = { ["X-From"] = "fallback" }, body = "cached " .. why }
                    end]]) },
                { name = "fberr", match = { prefix = "/fberr/" }, upstream = "main", retry = one,
                    breaker = { consecutive_failures = 2, open_for = "5s", min_requests = 1000 },
                    fallback = H.code([[function(req, why) error("fallback is broken") end]]) },
                { name = "main", upstream = "main" },
            },
        }
    end

    local function req(path, headers, extra)
        local o = { path = path, headers = headers or {} }
        for k, v in pairs(extra or {}) do o[k] = v end
        local r, err, got = lv:request(o)
        assert(r, ("request %s: %s (got %q)"):format(path, tostring(err), tostring(got)))
        return r
    end

    -- The request and how long it took (seconds).
    local function timed(path, headers, extra)
        local t0 = H.now()
        local r = req(path, headers, extra)
        return r, H.now() - t0
    end

    -- The access-log entry of the request to `path` (waits for it).
    local function entry(path)
        return H.wait_until(function()
            for _, e in ipairs(lv:access_json()) do
                if e.path == path then return e end
            end
        end, 5 * H.scale, "access log entry for " .. path)
    end

    local function samples()
        local r = assert(lv:admin("/metrics"))
        assert.equal(200, r.status)
        return parse_metrics(r.body)
    end

    local function metric(name, want, s) return H.metric(s or samples(), name, want) end

    local function status_route(name)
        local r = assert(lv:admin("/status"))
        assert.equal(200, r.status)
        for _, rt in ipairs(H.json(r.body).routes) do
            if rt.name == name then return rt end
        end
        error("no route " .. name .. " in /status")
    end

    local function hits(path) return count(up:stats().by_path, path) end

    -- The same levee process still proxies a plain request.
    local function assert_serves()
        assert.is_true(lv:alive())
        local r = req("/alive")
        assert.equal(200, r.status)
        assert.equal("/alive", H.json(r.body).target)
    end

    before_each(function()
        up = H.upstream({ n = 2, name = "u" })
        hole = socket.tcp()
        assert(hole:bind("127.0.0.1", 0))
        hole_port = select(2, hole:getsockname())
        lv = H.levee({ config = config() })
    end)

    after_each(function()
        if hole then hole:close() end
        hole = nil
        H.cleanup()
    end)

    -------------------------------------------------------------------------------------
    describe("retries", function()
        it("a first attempt that succeeds is sent once, with Levee-Attempt: 1, and not flagged", function()
            local r = req("/retry/once")
            local e = assert_upstream_answer(r, 200, "/retry/once")
            assert.equal("1", echoed(e, "Levee-Attempt"))
            local a = entry("/retry/once")
            assert.equal(1, a.attempts)
            assert.equal(1, #a.tries)
            assert.equal("200", a.tries[1].outcome)
            assert.is_false(has_flag(a, "retried"))
            assert.equal(1, hits("/retry/once"))
            assert.equal(0, metric("levee_retries_total", { route = "retry" }))
        end)

        it("retries through 503, reset and a try_timeout to a success, with backoff", function()
            local r, took = timed("/retry/mix", { ["X-Test-Plan"] = "mix:503,reset,hang,200" }, { timeout = 10 })
            local e = assert_upstream_answer(r, 200, "/retry/mix")
            -- the fourth attempt is the one that answered, numbered for the upstream
            assert.equal("4", echoed(e, "Levee-Attempt"))
            assert.equal(4, hits("/retry/mix"))
            -- the hang lasted try_timeout (300 ms), the backoff 20 + 40 + 80 ms
            assert.is_true(took >= 0.44 and took < 2, "took " .. took)
            local a = entry("/retry/mix")
            assert.equal(200, a.status)
            assert.equal(4, a.attempts)
            assert.equal(4, #a.tries)
            assert.same({ "503", "reset", "timeout", "200" },
                { a.tries[1].outcome, a.tries[2].outcome, a.tries[3].outcome, a.tries[4].outcome })
            assert.is_true(a.tries[3].ms >= 290, "timed-out try lasted " .. a.tries[3].ms)
            assert.is_true(has_flag(a, "retried"))
            assert.equal(H.null, a.error)
            -- jitter "none": 20, 40, then 80 ms
            assert.is_true(a.backoff_ms >= 139 and a.backoff_ms <= 141, "backoff_ms " .. tostring(a.backoff_ms))
            local s = samples()
            assert.equal(3, metric("levee_retries_total", { route = "retry" }, s))
            for _, o in ipairs({ "503", "reset", "timeout", "200" }) do
                assert.equal(1, metric("levee_upstream_attempts_total", { route = "retry", outcome = o }, s), o)
            end
        end)

        it("503 then reset then 200: the client gets the 200; every attempt is counted and logged", function()
            local r = req("/retry/ok", { ["X-Test-Plan"] = "ok:503,reset,200" })
            local e = assert_upstream_answer(r, 200, "/retry/ok")
            -- the upstream saw the third attempt numbered 3
            assert.equal("3", echoed(e, "Levee-Attempt"))
            assert.equal(3, hits("/retry/ok"))
            local a = entry("/retry/ok")
            assert.equal(200, a.status)
            assert.equal(3, a.attempts)
            assert.same({ "503", "reset", "200" }, { a.tries[1].outcome, a.tries[2].outcome, a.tries[3].outcome })
            assert.is_true(a.backoff_ms > 0)
            assert.is_true(has_flag(a, "retried"))
            local s = samples()
            assert.equal(2, metric("levee_retries_total", { route = "retry" }, s))
            assert.equal(1, metric("levee_upstream_attempts_total", { route = "retry", outcome = "503" }, s))
            assert.equal(1, metric("levee_upstream_attempts_total", { route = "retry", outcome = "reset" }, s))
            assert.equal(1, metric("levee_upstream_attempts_total", { route = "retry", outcome = "200" }, s))
            assert.equal(1, metric("levee_requests_total", { route = "retry", code = "200" }, s))
            local b = status_route("retry").budget
            assert.equal(1, b.requests)
            assert.equal(2, b.retries)
        end)

        it("a timeout (try_timeout) then 200: retried, Levee-Attempt: 2", function()
            local r, took = timed("/retry/slow", { ["X-Test-Plan"] = "to:hang,200" })
            local e = assert_upstream_answer(r, 200, "/retry/slow")
            assert.equal("2", echoed(e, "Levee-Attempt"))
            assert.is_true(took >= 0.29 and took < 2, "took " .. took)
            local a = entry("/retry/slow")
            assert.equal("timeout", a.tries[1].outcome)
            assert.equal("200", a.tries[2].outcome)
            assert.equal(1, metric("levee_upstream_attempts_total", { route = "retry", outcome = "timeout" }))
            assert.equal(1, metric("levee_retries_total", { route = "retry" }))
        end)

        it("when attempts run out the client gets the last attempt's 503, sent as Levee-Attempt: 4", function()
            local r = req("/retry/always", { ["X-Test-Status"] = "503" })
            local e = assert_upstream_answer(r, 503, "/retry/always")
            assert.equal("4", echoed(e, "Levee-Attempt"))
            assert.equal(4, hits("/retry/always"))
            assert.equal(3, metric("levee_retries_total", { route = "retry" }))
            assert.equal(4, metric("levee_upstream_attempts_total", { route = "retry", outcome = "503" }))
        end)

        it("a retry goes to the other server of the upstream", function()
            local r = req("/spread/a", { ["X-Test-Plan"] = "sp:503,200" })
            local e = assert_upstream_answer(r, 200, "/spread/a")
            local a = entry("/spread/a")
            assert.equal(2, a.attempts)
            assert.equal("503", a.tries[1].outcome)
            assert.equal("200", a.tries[2].outcome)
            assert.are_not.equal(a.tries[1].server, a.tries[2].server)
            assert.equal(a.tries[2].server, "127.0.0.1:" .. e.port)
        end)

        it("one bad server and one good one: every request ends on the good one", function()
            local bad, good = up.ports[1], up.ports[2]
            local plan = ("%d=503,%d=200"):format(bad, good)
            local n = 6
            for i = 1, n do
                local r = req("/spread/bp" .. i, { ["X-Test-By-Port"] = plan })
                local e = assert_upstream_answer(r, 200, "/spread/bp" .. i)
                assert.equal(good, e.port)
            end
            local moved = 0
            for i = 1, n do
                local a = entry("/spread/bp" .. i)
                assert.equal("127.0.0.1:" .. good, a.tries[#a.tries].server)
                if a.attempts == 2 then
                    assert.equal("127.0.0.1:" .. bad, a.tries[1].server)
                    assert.equal("503", a.tries[1].outcome)
                    moved = moved + 1
                end
            end
            -- round robin sends about half of them to the bad server first
            assert.is_true(moved >= 1, "no request met the bad server")
            assert.equal(moved, count(up:stats().by_port, bad))
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("what is safe to replay", function()
        it("a POST answered 503 is not replayed: the upstream sees it once, the client gets the 503", function()
            local r = req("/post/a", { ["X-Test-Status"] = "503" }, { method = "POST", body = "amount=10" })
            local e = assert_upstream_answer(r, 503, "/post/a")
            assert.equal("1", echoed(e, "Levee-Attempt"))
            assert.equal(1, hits("/post/a"))
            local a = entry("/post/a")
            assert.equal(1, a.attempts)
            assert.is_false(has_flag(a, "retried"))
            assert.equal(0, metric("levee_retries_total", { route = "post" }))
        end)

        it("a POST whose connection is reset is not replayed: 502 upstream-reset, upstream saw it once", function()
            -- a GET first leaves a pooled keep-alive connection, so the POST goes out on a
            -- reused one: a reset there must not pass for a stale connection and be re-sent.
            -- Both go on one client connection: upstream pools are per worker (README
            -- "Workers"), and a client connection stays on the worker that accepted it.
            local c = assert(H.conn(lv.port))
            assert(c:send(H.build_request(lv.port, { path = "/post/warm" })))
            assert_upstream_answer(assert(c:read_response()), 200, "/post/warm")
            assert(c:send(H.build_request(lv.port, { method = "POST", path = "/post/b",
                headers = { ["X-Test-Action"] = "reset" }, body = "amount=10" })))
            local r = assert(c:read_response())
            assert_gw_error(r, 502, "upstream-reset", "post")
            assert.equal(1, hits("/post/b"))
            assert.equal(1, up:stats().connections)
            assert.equal(1, entry("/post/b").attempts)
            assert_serves()
        end)

        it("a GET on the same route is retried (the method decides)", function()
            local r = req("/post/get", { ["X-Test-Plan"] = "pg:reset,200" })
            assert_upstream_answer(r, 200, "/post/get")
            assert.equal(2, hits("/post/get"))
        end)

        it("retry.non_idempotent = true replays a POST, body included", function()
            local body = "amount=10&currency=EUR"
            local r = req("/replay/a", { ["X-Test-Plan"] = "np:503,reset,200" }, { method = "POST", body = body })
            local e = assert_upstream_answer(r, 200, "/replay/a")
            assert.equal("POST", e.method)
            assert.equal(#body, e.body_len)
            assert.equal(H.fnv1a64(body), e.body_sha)
            assert.equal("3", echoed(e, "Levee-Attempt"))
            assert.equal(3, hits("/replay/a"))
            assert.equal(2, metric("levee_retries_total", { route = "replay" }))
        end)

        it("a connect failure fails over even for a POST (nothing reached the upstream)", function()
            local body = "payment=42"
            for i = 1, 2 do
                local r = req("/failover/p" .. i, {}, { method = "POST", body = body })
                local e = assert_upstream_answer(r, 200, "/failover/p" .. i)
                assert.equal(H.fnv1a64(body), e.body_sha)
                assert.equal(1, hits("/failover/p" .. i))
            end
            local rescued = 0
            for i = 1, 2 do
                local a = entry("/failover/p" .. i)
                if a.tries[1].outcome == "connect-failure" then
                    assert.equal("127.0.0.1:" .. hole_port, a.tries[1].server)
                    assert.equal("200", a.tries[2].outcome)
                    assert.equal(up:addr(1), a.tries[2].server)
                    assert.is_true(has_flag(a, "retried"))
                    rescued = rescued + 1
                end
            end
            -- round robin over two servers: one of two requests meets the refused one first
            assert.is_true(rescued >= 1, "no POST met the refused server")
            assert.is_true(metric("levee_upstream_attempts_total",
                { route = "failover", outcome = "connect-failure" }) >= 1)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("retry budget", function()
        it("caps retries near ratio × requests under a stream of failures; clients get the 503", function()
            local n = 100
            for i = 1, n do
                local r = req("/budget/x", { ["X-Test-Status"] = "503" })
                assert_upstream_answer(r, 503, "/budget/x")
            end
            local total = hits("/budget/x")
            -- ratio 0.2, min_per_second 0: about 20 retries for 100 requests
            assert.is_true(total >= n + 15 and total <= n + 25, "upstream saw " .. total .. " requests")
            local entries = H.wait_until(function()
                local got = {}
                for _, e in ipairs(lv:access_json()) do
                    if e.path == "/budget/x" then got[#got + 1] = e end
                end
                return #got == n and got
            end, 5 * H.scale, n .. " budget entries")
            local flagged, attempts = 0, 0
            for _, e in ipairs(entries) do
                assert.equal(503, e.status)
                assert.equal(H.null, e.error)
                attempts = attempts + e.attempts
                if has_flag(e, "budget-exhausted") then flagged = flagged + 1 end
            end
            assert.equal(total, attempts)
            assert.is_true(flagged > 0, "no budget-exhausted flag")
            local s = samples()
            local exhausted = metric("levee_retry_budget_exhausted_total", { route = "budget" }, s)
            assert.is_true(exhausted > 0)
            -- one refusal ends the request: at most one per request
            assert.equal(flagged, exhausted)
            assert.equal(total - n, metric("levee_retries_total", { route = "budget" }, s))
            local b = status_route("budget").budget
            assert.equal(n, b.requests)
            assert.equal(total - n, b.retries)
            assert.equal(0, b.available)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("the deadline (route timeout) bounds the whole request", function()
        it("an upstream that hangs: 504 deadline-exceeded within the 300 ms timeout, no retry after it", function()
            local r, took = timed("/dl-hang/a", { ["X-Test-Action"] = "hang" })
            assert_gw_error(r, 504, "deadline-exceeded", "dl-hang")
            assert.is_true(took >= 0.28 and took < 0.3 + 0.2 * H.scale, "took " .. took)
            assert.equal(1, hits("/dl-hang/a"))
            local a = entry("/dl-hang/a")
            assert.is_true(has_flag(a, "deadline-exceeded"))
            assert.equal("deadline-exceeded", a.error)
        end)

        it("try_timeout 100 ms, attempts 5: retries until the deadline, then 504 deadline-exceeded", function()
            local r, took = timed("/dl-try/a", { ["X-Test-Action"] = "hang" })
            assert_gw_error(r, 504, "deadline-exceeded", "dl-try")
            assert.is_true(took >= 0.28 and took < 0.3 + 0.2 * H.scale, "took " .. took)
            local n = hits("/dl-try/a")
            assert.is_true(n >= 2 and n <= 3, "upstream saw " .. n)
            local a = entry("/dl-try/a")
            assert.is_true(has_flag(a, "retried"))
            assert.is_true(has_flag(a, "deadline-exceeded"))
            assert.equal(n, a.attempts)
        end)

        it("503 with a 100 ms backoff, attempts 5: no retry once the backoff no longer fits", function()
            local r, took = timed("/dl-503/a", { ["X-Test-Status"] = "503" })
            -- README, "Resilience policies": a retry needs "the deadline leaves room for the backoff and a try".
            -- jitter "none", base 100 ms: attempt 1 at 0, backoff 100 ms (fits), attempt 2 at
            -- ~100 ms, next backoff 200 ms: 100 + 200 leaves no room for a try before 300 ms,
            -- so no retry: the client gets attempt 2's 503 at ~100 ms.
            assert_upstream_answer(r, 503, "/dl-503/a")
            local a = entry("/dl-503/a")
            local outs = {}
            for _, t in ipairs(a.tries) do outs[#outs + 1] = t.outcome .. "@" .. t.ms .. "ms" end
            local seen = ("attempts %d, backoff_ms %s, tries %s"):format(a.attempts, tostring(a.backoff_ms),
                table.concat(outs, " "))
            assert.equal(2, hits("/dl-503/a"), seen)
            assert.equal(2, a.attempts, seen)
            assert.is_true(a.backoff_ms >= 99 and a.backoff_ms <= 101, seen)
            assert.is_true(took >= 0.09 and took < 0.1 + 0.15 * H.scale, "took " .. took .. "; " .. seen)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("Retry-After", function()
        for _, code in ipairs({ "503", "429" }) do
            it(code .. " with Retry-After: 1 then 200: the retry waits about a second", function()
                local path = "/ra/" .. code
                local r, took = timed(path, { ["X-Test-Plan"] = "ra" .. code .. ":" .. code .. ",200",
                    ["X-Test-Header"] = "Retry-After: 1" })
                assert_upstream_answer(r, 200, path)
                assert.is_true(took >= 0.9 and took < 3, "took " .. took)
                assert.equal(2, hits(path))
                local a = entry(path)
                assert.equal(code, a.tries[1].outcome)
                assert.is_true(a.backoff_ms >= 900, "backoff_ms " .. a.backoff_ms)
            end)

            it(code .. " with Retry-After: 1 and a 500 ms timeout: no retry, the client gets the " .. code .. " at once", function()
                local path = "/ra-short/" .. code
                local r, took = timed(path, { ["X-Test-Plan"] = "rs" .. code .. ":" .. code .. ",200",
                    ["X-Test-Header"] = "Retry-After: 1" })
                assert_upstream_answer(r, tonumber(code), path)
                assert.equal("1", r.headers["retry-after"])
                assert.is_true(took < 0.3 * H.scale, "took " .. took)
                assert.equal(1, hits(path))
                local a = entry(path)
                assert.equal(1, a.attempts)
                assert.is_false(has_flag(a, "retried"))
            end)
        end
    end)

    -------------------------------------------------------------------------------------
    describe("classify hook", function()
        it("'retry' for 418 makes a 418 retried (418 is not in retry.on)", function()
            local r = req("/c418/a", { ["X-Test-Plan"] = "t:418,200" })
            local e = assert_upstream_answer(r, 200, "/c418/a")
            assert.equal("2", echoed(e, "Levee-Attempt"))
            assert.equal(2, hits("/c418/a"))
            assert.is_true(has_flag(entry("/c418/a"), "retried"))
        end)

        it("'ok' for 503 stops the retry that retry.on would make", function()
            local r = req("/cok/a", { ["X-Test-Plan"] = "k:503,200" })
            assert_upstream_answer(r, 503, "/cok/a")
            assert.equal(1, hits("/cok/a"))
            local a = entry("/cok/a")
            assert.equal(1, a.attempts)
            assert.is_false(has_flag(a, "retried"))
        end)

        it("('retry', '50ms') waits 50 ms instead of the route's 400 ms backoff", function()
            local r, took = timed("/cdelay/a", { ["X-Test-Plan"] = "d:503,200" })
            assert_upstream_answer(r, 200, "/cdelay/a")
            assert.is_true(took >= 0.05 and took < 0.3 * H.scale, "took " .. took)
            local a = entry("/cdelay/a")
            assert.equal(2, a.attempts)
            assert.is_true(a.backoff_ms >= 50 and a.backoff_ms < 60, "backoff_ms " .. a.backoff_ms)
        end)

        it("levee.policy's classify retries a 503 that retry.on does not list", function()
            local r = req("/cpolicy/a", { ["X-Test-Plan"] = "pc:503,200" })
            assert_upstream_answer(r, 200, "/cpolicy/a")
            assert.equal(2, hits("/cpolicy/a"))
            -- anything else gets the default rule: a 500 is not retried
            local r2 = req("/cpolicy/b", { ["X-Test-Plan"] = "pc2:500,200" })
            assert_upstream_answer(r2, 500, "/cpolicy/b")
            assert.equal(1, hits("/cpolicy/b"))
        end)

        local broken = {
            { "raises an error", "cerr", "error" },
            { "loops forever", "cloop", "instruction-limit" },
            { "allocates without bound", "cmem", "memory-limit" },
            { "returns a value of the wrong type", "cbad", "bad-value" },
        }
        for _, b in ipairs(broken) do
            local what, route, kind = b[1], b[2], b[3]
            it("a hook that " .. what .. " counts as no hook: the default rule applies, levee stays up", function()
                -- retry.on = { "503" }: by default 503 then 200 is retried to the 200
                local p1 = "/" .. route .. "/a"
                local r = req(p1, { ["X-Test-Plan"] = route .. "a:503,200" })
                assert_upstream_answer(r, 200, p1)
                assert.equal(2, hits(p1))
                local a = entry(p1)
                assert.is_true(has_flag(a, "hook-error"))
                assert.is_true(has_flag(a, "retried"))
                -- and an upstream always 503 fails the default way: 3 attempts, the last 503
                local p2 = "/" .. route .. "/b"
                local r2 = req(p2, { ["X-Test-Status"] = "503" })
                assert_upstream_answer(r2, 503, p2)
                assert.equal(3, hits(p2))
                -- one failed hook call per attempt: 2 + 3
                assert.equal(5, metric("levee_hook_errors_total", { route = route, hook = "classify", kind = kind }))
                -- and no other kind was counted for this route
                local others = 0
                for _, m in ipairs(samples()) do
                    if m.name == "levee_hook_errors_total" and m.labels.route == route and m.labels.kind ~= kind then
                        others = others + m.value
                    end
                end
                assert.equal(0, others)
                lv:wait_log("classify hook", 5 * H.scale, true)
                assert_serves()
            end)
        end
    end)

    -------------------------------------------------------------------------------------
    describe("circuit breaker", function()
        -- Opens the "brk" breaker with three failed requests.
        local function open_brk()
            for i = 1, 3 do
                local r = req("/brk/f" .. i, { ["X-Test-Status"] = "503" })
                assert_upstream_answer(r, 503, "/brk/f" .. i)
            end
        end

        it("3 consecutive failures open it: the 4th request is refused at once, not forwarded", function()
            assert.equal("closed", status_route("brk").breaker.state)
            open_brk()
            local before = up:stats().requests
            local r, took = timed("/brk/x")
            assert_gw_error(r, 503, "breaker-open", "brk")
            -- what is left of open_for (500 ms), rounded up to whole seconds
            assert.equal("1", r.headers["retry-after"])
            assert.is_true(took < 0.2 * H.scale, "took " .. took)
            assert.equal(before, up:stats().requests)
            local a = entry("/brk/x")
            assert.is_true(has_flag(a, "breaker-open"))
            assert.equal(0, a.attempts)
            local b = status_route("brk").breaker
            assert.equal("open", b.state)
            assert.is_true(b.open_left_ms > 0 and b.open_left_ms <= 500, "open_left_ms " .. b.open_left_ms)
            assert.equal(3, b.window.failures)
            local s = samples()
            assert.equal(1, metric("levee_breaker_state", { route = "brk" }, s))
            assert.equal(1, metric("levee_breaker_rejected_total", { route = "brk" }, s))
        end)

        it("after open_for a probe reaches the upstream; a healthy answer closes it", function()
            open_brk()
            assert_gw_error(req("/brk/x"), 503, "breaker-open", "brk")
            H.wait_until(function() return status_route("brk").breaker.state == "half-open" end,
                3 * H.scale, "half-open")
            assert.equal(2, metric("levee_breaker_state", { route = "brk" }))
            local r = req("/brk/probe")
            assert_upstream_answer(r, 200, "/brk/probe")
            assert.equal(1, hits("/brk/probe"))
            local b = status_route("brk").breaker
            assert.equal("closed", b.state)
            assert.equal(0, metric("levee_breaker_state", { route = "brk" }))
            -- closed again: requests flow
            assert_upstream_answer(req("/brk/after"), 200, "/brk/after")
        end)

        it("after open_for a failing probe opens it again", function()
            open_brk()
            H.wait_until(function() return status_route("brk").breaker.state == "half-open" end,
                3 * H.scale, "half-open")
            local r = req("/brk/probe", { ["X-Test-Status"] = "503" })
            assert_upstream_answer(r, 503, "/brk/probe")
            assert.equal(1, hits("/brk/probe"))
            local b = status_route("brk").breaker
            assert.equal("open", b.state)
            assert.equal(2, b.times_opened)
            assert.equal(1, metric("levee_breaker_state", { route = "brk" }))
            assert_gw_error(req("/brk/y"), 503, "breaker-open", "brk")
            assert.equal(0, hits("/brk/y"))
        end)

        it("failure_ratio: opens when failures/requests reach 0.5 with min_requests 4", function()
            assert_upstream_answer(req("/ratio/1"), 200, "/ratio/1")
            assert_upstream_answer(req("/ratio/2", { ["X-Test-Status"] = "503" }), 503, "/ratio/2")
            assert_upstream_answer(req("/ratio/3"), 200, "/ratio/3")
            -- 1 failure in 3: below min_requests, still closed
            local b = status_route("ratio").breaker
            assert.equal("closed", b.state)
            assert.equal(3, b.window.requests)
            assert.equal(1, b.window.failures)
            assert_upstream_answer(req("/ratio/4", { ["X-Test-Status"] = "503" }), 503, "/ratio/4")
            assert.equal("open", status_route("ratio").breaker.state)
            assert_gw_error(req("/ratio/5"), 503, "breaker-open", "ratio")
            assert.equal(0, hits("/ratio/5"))
        end)

        it("half_open_requests = 1 admits exactly one probe; a concurrent request fails fast", function()
            for i = 1, 2 do
                assert_upstream_answer(req("/probe/f" .. i, { ["X-Test-Status"] = "503" }), 503, "/probe/f" .. i)
            end
            assert.equal("open", status_route("probe").breaker.state)
            H.wait_until(function() return status_route("probe").breaker.state == "half-open" end,
                3 * H.scale, "half-open")
            -- the probe: a slow healthy answer
            local c = assert(H.conn(lv.port, { timeout = 5 }))
            assert(c:send(H.build_request(lv.port, { path = "/probe/slow",
                headers = { ["X-Test-Delay-Ms"] = "600" } })))
            H.wait_until(function() return hits("/probe/slow") == 1 end, 3 * H.scale, "the probe at the upstream")
            assert.equal(1, status_route("probe").breaker.probes_in_flight)
            local r, took = timed("/probe/other")
            assert_gw_error(r, 503, "breaker-open", "probe")
            assert.is_true(took < 0.3 * H.scale, "took " .. took)
            assert.equal(0, hits("/probe/other"))
            local pr = assert(c:read_response())
            assert_upstream_answer(pr, 200, "/probe/slow")
            assert.equal("closed", status_route("probe").breaker.state)
            assert_upstream_answer(req("/probe/after"), 200, "/probe/after")
        end)

        it("slow_call: slow 200 answers open it once their share reaches the ratio", function()
            for i = 1, 3 do
                assert_upstream_answer(req("/slow/fast" .. i), 200, "/slow/fast" .. i)
            end
            -- 3 fast + slow ones: 1/4, 2/5, then 3/6 = 0.5 opens it
            for i = 1, 3 do
                local r = req("/slow/s" .. i, { ["X-Test-Delay-Ms"] = "150" })
                assert_upstream_answer(r, 200, "/slow/s" .. i)
                local st = status_route("slow").breaker.state
                assert.equal(i < 3 and "closed" or "open", st, "after slow call " .. i)
            end
            local b = status_route("slow").breaker
            assert.equal(3, b.window.slow)
            assert.equal(0, b.window.failures)
            assert_gw_error(req("/slow/x"), 503, "breaker-open", "slow")
            assert.equal(0, hits("/slow/x"))
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("fallback", function()
        it("while open, the fallback answers: its status, header and body; counted and flagged", function()
            for i = 1, 2 do
                assert_upstream_answer(req("/fb/f" .. i, { ["X-Test-Status"] = "503" }), 503, "/fb/f" .. i)
            end
            local before = up:stats().requests
            local r = req("/fb/x", { ["X-Request-Id"] = "fb-req-1" })
            assert.equal(200, r.status)
            assert.equal("fallback", r.headers["x-from"])
            assert.equal("cached breaker-open", r.body)
            assert.equal(tostring(#"cached breaker-open"), r.headers["content-length"])
            assert.equal("fb-req-1", r.headers["x-request-id"])
            assert.is_nil(r.headers["levee-error"])
            assert.equal(before, up:stats().requests)
            local a = entry("/fb/x")
            assert.is_true(has_flag(a, "fallback"))
            assert.is_true(has_flag(a, "breaker-open"))
            assert.equal(200, a.status)
            local s = samples()
            assert.equal(1, metric("levee_fallbacks_total", { route = "fb" }, s))
            assert.equal(1, metric("levee_breaker_rejected_total", { route = "fb" }, s))
            assert.equal(1, metric("levee_breaker_state", { route = "fb" }, s))
        end)

        it("a fallback that errors: 503 breaker-open with Retry-After, hook error counted", function()
            for i = 1, 2 do
                assert_upstream_answer(req("/fberr/f" .. i, { ["X-Test-Status"] = "503" }), 503, "/fberr/f" .. i)
            end
            local before = up:stats().requests
            local r = req("/fberr/x")
            assert_gw_error(r, 503, "breaker-open", "fberr")
            assert.is_truthy(tonumber(r.headers["retry-after"]))
            assert.equal(before, up:stats().requests)
            local a = entry("/fberr/x")
            assert.is_true(has_flag(a, "hook-error"))
            assert.is_false(has_flag(a, "fallback"))
            local s = samples()
            assert.equal(1, metric("levee_hook_errors_total", { route = "fberr", hook = "fallback", kind = "error" }, s))
            assert.equal(0, metric("levee_fallbacks_total", { route = "fberr" }, s))
            lv:wait_log("fallback hook", 5 * H.scale, true)
            assert_serves()
        end)
    end)
end)

-- The commented example policies do what their comments say (they also pass `levee check`,
-- see lifecycle_spec). Their fixed addresses are swapped for free ports and the test upstream.
describe("example policies", function()
    local up, lv

    local function start(file)
        up = H.upstream({ n = 2, name = "u" })
        local text = H.read_file(H.src .. "/examples/" .. file)
        assert.is_true(#text > 0, "examples/" .. file .. " missing")
        local swaps = {
            ["127.0.0.1:8080"] = "127.0.0.1:$PORT",
            ["127.0.0.1:9901"] = "127.0.0.1:$ADMIN",
            ["127.0.0.1:9000"] = up:addr(1),
            ["127.0.0.1:9001"] = up:addr(2),
        }
        for from, to in pairs(swaps) do
            local n
            text, n = text:gsub(from:gsub("%p", "%%%0"), (to:gsub("%%", "%%%%")))
            assert.is_true(n >= 1, from .. " not found in examples/" .. file)
        end
        lv = H.levee({ config = text })
    end

    local function req(path, headers, extra)
        local o = { path = path, headers = headers or {} }
        for k, v in pairs(extra or {}) do o[k] = v end
        local r, err, got = lv:request(o)
        assert(r, ("request %s: %s (got %q)"):format(path, tostring(err), tostring(got)))
        return r
    end

    local function hits(path) return count(up:stats().by_path, path) end

    local function entry(path)
        return H.wait_until(function()
            for _, e in ipairs(lv:access_json()) do
                if e.path == path then return e end
            end
        end, 5 * H.scale, "access log entry for " .. path)
    end

    after_each(H.cleanup)

    it("read-heavy.lua: GETs retried on 5xx; a long Retry-After is not waited for; warming cache retried", function()
        start("read-heavy.lua")
        -- 5xx without Retry-After: retried (the hook says "retry", the backoff applies)
        local r = req("/api/items/1", { ["X-Test-Plan"] = "a:503,200" })
        assert_upstream_answer(r, 200, "/api/items/1")
        assert.equal(2, hits("/api/items/1"))
        local r2 = req("/api/items/2", { ["X-Test-Plan"] = "b:500,502,200" })
        assert_upstream_answer(r2, 200, "/api/items/2")
        assert.equal(3, hits("/api/items/2"))
        -- Retry-After: 5 is longer than the hook's MAX_WAIT: the client gets the 503 now
        local t0 = H.now()
        local r3 = req("/api/items/3", { ["X-Test-Status"] = "503", ["X-Test-Header"] = "Retry-After: 5" })
        assert_upstream_answer(r3, 503, "/api/items/3")
        assert.equal("5", r3.headers["retry-after"])
        assert.is_true(H.now() - t0 < 0.5 * H.scale)
        assert.equal(1, hits("/api/items/3"))
        -- a 404 from a warming cache node: retried after the hook's 50 ms
        local r4 = req("/api/items/4", { ["X-Test-Plan"] = "c:404,200", ["X-Test-Header"] = "X-Cache-Status: warming" })
        assert_upstream_answer(r4, 200, "/api/items/4")
        local a = entry("/api/items/4")
        assert.equal(2, a.attempts)
        assert.is_true(a.backoff_ms >= 50 and a.backoff_ms < 60, "backoff_ms " .. a.backoff_ms)
        -- a plain 404 is an answer, not retried
        assert_upstream_answer(req("/api/items/5", { ["X-Test-Status"] = "404" }), 404, "/api/items/5")
        assert.equal(1, hits("/api/items/5"))
        -- writes take the "writes" route: a POST answered 503 is not replayed
        assert_upstream_answer(req("/api/items", { ["X-Test-Status"] = "503" }, { method = "POST", body = "x" }),
            503, "/api/items")
        assert.equal(1, hits("/api/items"))
    end)

    it("payments.lua: a keyed POST is retried on 503 but not on a reset", function()
        start("payments.lua")
        local body = '{"amount":1000,"currency":"EUR"}'
        -- first request of this levee, so a fresh upstream connection: a reset leaves the
        -- charge's outcome unknown and "reset" is not in retry.on: not retried
        local r2 = req("/v1/payments/capture", { ["Idempotency-Key"] = "k-reset", ["X-Test-Action"] = "reset" },
            { method = "POST", body = body })
        assert_gw_error(r2, 502, "upstream-reset", "payments-write")
        assert.equal(1, hits("/v1/payments/capture"))
        -- 503 is in retry.on and the key makes the POST safe to replay
        local r = req("/v1/payments", { ["Idempotency-Key"] = "k-503", ["X-Test-Plan"] = "p:503,200" },
            { method = "POST", body = body })
        local e = assert_upstream_answer(r, 200, "/v1/payments")
        assert.equal(H.fnv1a64(body), e.body_sha)
        assert.equal("k-503", echoed(e, "Idempotency-Key"))
        assert.equal("2", echoed(e, "Levee-Attempt"))
        assert.equal(2, hits("/v1/payments"))
        -- reads are retried more freely: a reset GET goes again
        local r3 = req("/v1/payments/p1", { ["X-Test-Plan"] = "g:reset,200" })
        assert_upstream_answer(r3, 200, "/v1/payments/p1")
        assert.equal(2, hits("/v1/payments/p1"))
    end)
end)
