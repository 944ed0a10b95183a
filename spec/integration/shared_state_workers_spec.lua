-- Several workers, one gateway (README "Workers", docs/configuration.md `workers`, `accept`):
-- with `workers = 2` every guarantee that holds for one event loop holds for the process.
-- Connections land on both workers; a breaker opens once whichever worker saw the failures; a
-- retry budget counts the requests and retries of all workers; an idempotency key reaches the
-- upstream at most once (memory and Redis stores); health checks run once per server and
-- every worker sees their result; outlier ejection counts failures over all workers; a reload
-- switches every worker; SIGTERM drains every worker; /status and /metrics sum the workers;
-- the access log keeps whole lines.
--
-- Where new connections land is checked once, for both accept modes ("connections"). The
-- other tests need traffic on both workers, not a particular split: they use
-- accept = "reuseport" (the kernel hashes each new connection's address, so a sequence of
-- new connections goes to both workers at random) or keep opening connections until both
-- workers hold some (open_spread); /status "workers" proves that both served requests.
-- Exact numbers are asserted wherever the guarantee is exact; a per-worker implementation
-- would give different ones (noted next to each).

local H = require("helpers")

local RUN = tostring(H.proc.getpid())

local quick = { base = "1ms", max = "1ms", jitter = "none" }

-- Upstream delays that must outlast levee's own work (all duplicates in, all requests in
-- flight) grow with sanitizer builds (ctest sets LEVEE_SANITIZED or LEVEE_TSAN).
local SLOW = (H.sanitized or os.getenv("LEVEE_TSAN") == "1") and 3 or 1

local held = {} -- connections kept open so the next one goes to the other worker

local function start(cfg, opts)
    cfg.workers = 2
    cfg.admin = true
    opts = opts or {}
    opts.config = cfg
    return H.levee(opts)
end

local function status(lv) return lv:status() end

local function route_status(lv, name)
    for _, rt in ipairs(status(lv).routes) do
        if rt.name == name then return rt end
    end
    error("no route " .. name .. " in /status")
end

local function server_status(lv, upstream, addr)
    local found
    for _, u in ipairs(status(lv).upstreams) do
        if u.name == upstream then
            for _, sv in ipairs(u.servers) do
                if sv.name == addr then
                    assert.is_nil(found, "server " .. addr .. " listed twice in /status")
                    found = sv
                end
            end
        end
    end
    return assert(found, "no server " .. addr .. " in /status")
end

local function samples(lv)
    local r = assert(lv:admin("/metrics"))
    assert.equal(200, r.status)
    return H.parse_metrics(r.body)
end

-- Sum of every sample of `name` whose labels include `want`.
local function metric_sum(s, name, want)
    local total = 0
    for _, m in ipairs(s) do
        if m.name == name then
            local ok = true
            for k, v in pairs(want or {}) do
                if m.labels[k] ~= v then ok = false break end
            end
            if ok then total = total + m.value end
        end
    end
    return total
end

local function worker_requests(st)
    local sum = 0
    for _, w in ipairs(st.workers) do sum = sum + w.requests end
    return sum
end

-- Both workers served requests (and there are exactly two of them).
local function assert_both_workers(lv)
    local st = status(lv)
    assert.equal(2, #st.workers)
    assert.is_true(st.workers[1].requests > 0 and st.workers[2].requests > 0,
        "requests per worker: " .. st.workers[1].requests .. ", " .. st.workers[2].requests)
    return st
end

local function hdrs(t)
    local out = {}
    for k, v in pairs(t or {}) do out[#out + 1] = { k, v } end
    return out
end

-- One request on a NEW connection, which is then held open (closed by cleanup).
local function fresh(lv, opts)
    local c = assert(H.conn(lv.port, { timeout = opts.timeout or 5 }))
    held[#held + 1] = c
    assert(c:send(H.build_request(lv.port, opts)))
    return c:read_response({ timeout = opts.timeout or 5 })
end

local function open_conns(lv, n)
    local out = {}
    for i = 1, n do
        out[i] = assert(H.conn(lv.port, { timeout = 10 }))
        held[#held + 1] = out[i]
    end
    -- every connection is accepted (and counted by its worker) before traffic starts
    H.wait_until(function()
        local st = status(lv)
        return st.client_connections >= #held
    end, 5 * H.scale, n .. " client connections in /status")
    return out
end

-- At least n connections, held open, with some on each worker: opens n, then more (up to
-- 64 in all) while one worker holds them all. Where the new connections land is the accept
-- mode's business (test "connections" checks it); tests that need both workers busy use this.
local function open_spread(lv, n)
    local conns = open_conns(lv, n)
    H.wait_until(function()
        local st = status(lv)
        if st.client_connections >= #held and st.workers[1].connections > 0 and st.workers[2].connections > 0 then
            return true
        end
        if #conns >= 64 then
            error(("%d connections, per worker %d and %d"):format(#conns, st.workers[1].connections,
                st.workers[2].connections))
        end
        if st.client_connections >= #held then
            local c = assert(H.conn(lv.port, { timeout = 10 }))
            held[#held + 1] = c
            conns[#conns + 1] = c
        end
        return false
    end, 10 * H.scale, "connections on both workers")
    return conns
end

local function count_lines(text, pattern)
    local n = 0
    for line in text:gmatch("[^\n]+") do
        if line:find(pattern, 1, true) then n = n + 1 end
    end
    return n
end

local function cleanup()
    for i = #held, 1, -1 do
        held[i]:close()
        held[i] = nil
    end
    H.cleanup()
end

---------------------------------------------------------------------------------------------

describe("workers = 2", function()
    after_each(cleanup)

    ---------------------------------------------------------------------------------------
    describe("connections", function()
        for _, mode in ipairs({ "shared", "reuseport" }) do
            it("land on both workers and /status and /metrics count every request once (accept = " .. mode .. ")", function()
                local up = H.upstream()
                local lv = start({ accept = mode, upstreams = { api = { servers = { up:addr() } } },
                    routes = { { name = "api", upstream = "api" } } })
                local nconn, rounds = 16, 5
                local conns = open_conns(lv, nconn)
                local st = status(lv)
                assert.equal(2, #st.workers)
                assert.equal(0, st.workers[1].worker)
                assert.equal(1, st.workers[2].worker)
                assert.equal(nconn, st.workers[1].connections + st.workers[2].connections)
                assert.equal(nconn, st.client_connections)
                for k = 1, rounds do
                    for i, c in ipairs(conns) do
                        assert(c:send(H.build_request(lv.port, { path = ("/spread/%d/%d"):format(i, k) })))
                    end
                    for i, c in ipairs(conns) do
                        local r = assert(c:read_response())
                        assert.equal(200, r.status)
                        assert.equal(("/spread/%d/%d"):format(i, k), H.json(r.body).target)
                    end
                end
                local sent = nconn * rounds
                st = H.wait_until(function()
                    local s = status(lv)
                    return worker_requests(s) >= sent and s
                end, 5 * H.scale, sent .. " requests in /status workers")
                local w1, w2 = st.workers[1], st.workers[2]
                assert.is_true(w1.requests > 0 and w2.requests > 0,
                    ("requests per worker: %d, %d"):format(w1.requests, w2.requests))
                assert.is_true(w1.connections > 0 and w2.connections > 0,
                    ("connections per worker: %d, %d"):format(w1.connections, w2.connections))
                assert.equal(sent, w1.requests + w2.requests)
                assert.equal(nconn, w1.connections + w2.connections)
                assert.equal(nconn, st.client_connections)
                assert.equal(sent, st.routes[1].requests)
                assert.equal(sent, st.routes[1].by_class["2xx"])
                local s = samples(lv)
                assert.equal(sent, metric_sum(s, "levee_requests_total"))
                assert.equal(sent, metric_sum(s, "levee_requests_total", { route = "api", code = "200" }))
                assert.equal(sent, metric_sum(s, "levee_upstream_attempts_total", { route = "api", outcome = "200" }))
                assert.equal(nconn, metric_sum(s, "levee_client_connections"))
                assert.equal(sent, up:stats().requests)
            end)
        end
    end)

    ---------------------------------------------------------------------------------------
    describe("circuit breaker", function()
        it("consecutive rule: opens once after exactly consecutive_failures failures over both workers", function()
            local up = H.upstream()
            local lv = start({ accept = "reuseport", upstreams = { api = { servers = { up:addr() }, outlier = false } },
                routes = { { name = "brk", upstream = "api", retry = { attempts = 1 },
                    breaker = { consecutive_failures = 5, min_requests = 1000, open_for = "30s" } } } })
            local fail = hdrs({ ["X-Test-Status"] = "503" })
            local answered, first_open = 0, nil
            for i = 1, 20 do
                local r = assert(fresh(lv, { path = "/brk/" .. i, headers = fail }))
                assert.equal(503, r.status)
                if r.headers["levee-error"] == "breaker-open" then
                    first_open = i
                    break
                end
                assert.is_nil(r.headers["levee-error"]) -- the upstream's own 503
                answered = answered + 1
            end
            assert.equal(6, first_open) -- 5 failures (per worker it would take up to 9)
            assert.equal(5, answered)
            H.assert_gw_error(fresh(lv, { path = "/brk/after", headers = fail }), 503, "breaker-open", "brk")
            for i = 1, 8 do
                local r = assert(fresh(lv, { path = "/brk/more/" .. i, headers = fail }))
                assert.equal("breaker-open", r.headers["levee-error"])
                assert.is_string(r.headers["retry-after"])
            end
            assert.equal(5, up:stats().requests)
            local st = assert_both_workers(lv)
            local b = st.routes[1].breaker
            assert.equal("open", b.state)
            assert.equal(1, b.times_opened)
            assert.equal(1, count_lines(lv:log(), "route brk breaker open"))
            local s = samples(lv)
            assert.equal(1, metric_sum(s, "levee_breaker_state", { route = "brk" }))
            assert.equal(10, metric_sum(s, "levee_breaker_rejected_total", { route = "brk" }))
            assert.equal(15, metric_sum(s, "levee_requests_total", { route = "brk" }))
        end)

        it("ratio rule: min_requests and failure_ratio are counted over both workers", function()
            local up = H.upstream()
            local lv = start({ accept = "reuseport", upstreams = { api = { servers = { up:addr() }, outlier = false } },
                routes = { { name = "ratio", upstream = "api", retry = { attempts = 1 },
                    breaker = { consecutive_failures = 0, failure_ratio = 0.5, min_requests = 10,
                        window = "60s", open_for = "30s" } } } })
            local first_open
            for i = 1, 30 do
                -- odd: 503, even: 200, so the ratio is 0.5 after every even request
                local h = i % 2 == 1 and hdrs({ ["X-Test-Status"] = "503" }) or {}
                local r = assert(fresh(lv, { path = "/ratio/" .. i, headers = h }))
                if r.headers["levee-error"] == "breaker-open" then
                    first_open = i
                    break
                end
                assert.equal(i % 2 == 1 and 503 or 200, r.status)
            end
            -- the 10th outcome makes 10 requests, 5 failures: open (per worker: 20 needed)
            assert.equal(11, first_open)
            assert.equal(10, up:stats().requests)
            local st = assert_both_workers(lv)
            local b = st.routes[1].breaker
            assert.equal("open", b.state)
            assert.equal(1, b.times_opened)
            assert.equal(10, b.window.requests)
            assert.equal(5, b.window.failures)
            assert.equal(1, count_lines(lv:log(), "route ratio breaker open"))
        end)

        it("half-open: exactly half_open_requests probes over both workers", function()
            local up = H.upstream()
            local lv = start({ accept = "reuseport", upstreams = { api = { servers = { up:addr() }, outlier = false } },
                routes = { { name = "probe", upstream = "api", retry = { attempts = 1 }, timeout = "10s",
                    breaker = { consecutive_failures = 2, min_requests = 1000, open_for = "300ms",
                        half_open_requests = 2 } } } })
            for i = 1, 2 do
                assert.equal(503, fresh(lv, { path = "/p/open/" .. i, headers = hdrs({ ["X-Test-Status"] = "503" }) }).status)
            end
            assert.equal("open", route_status(lv, "probe").breaker.state)
            H.wait_until(function()
                local b = route_status(lv, "probe").breaker
                return b.state ~= "open" or b.open_left_ms == 0
            end, 3 * H.scale, "the breaker's open time to pass")
            up:reset()
            -- 10 slow requests at once on 10 new connections (both workers): 2 probes go through
            local conns = open_spread(lv, 10)
            for i, c in ipairs(conns) do
                assert(c:send(H.build_request(lv.port, { path = "/p/probe/" .. i,
                    headers = hdrs({ ["X-Test-Delay-Ms"] = "500" }) })))
            end
            local ok, rejected, nreq = 0, 0, #conns
            for _, c in ipairs(conns) do
                local r = assert(c:read_response({ timeout = 10 * SLOW }))
                if r.status == 200 then ok = ok + 1
                elseif r.headers["levee-error"] == "breaker-open" then rejected = rejected + 1 end
            end
            assert.equal(2, ok)
            assert.equal(nreq - 2, rejected)
            assert.equal(2, up:stats().requests)
            assert.equal("closed", route_status(lv, "probe").breaker.state)
            local st = status(lv)
            assert.is_true(st.workers[1].connections > 0 and st.workers[2].connections > 0)
        end)
    end)

    ---------------------------------------------------------------------------------------
    describe("retry budget", function()
        it("one budget for all workers: retries = ratio x requests + min_per_second x window, not twice", function()
            local up = H.upstream()
            local lv = start({ accept = "reuseport", upstreams = { api = { servers = { up:addr() }, outlier = false } },
                routes = { { name = "bud", upstream = "api", timeout = "10s",
                    retry = { attempts = 2, on = { "503" }, backoff = quick,
                        budget = { ratio = 0.1, min_per_second = 0.05, window = "60s" } } } } })
            -- allowance after n requests: 0.1 n + 0.05 x 60 = 0.1 n + 3. Sequential requests:
            -- retries at n = 1, 2, 3, 10, 20, 30: 6 for K = 30. Two budgets of 15 requests
            -- each would allow floor(1.5 + 3) = 4 each: 8.
            local K = 30
            for i = 1, K do
                local r = assert(fresh(lv, { path = "/bud/" .. i, headers = hdrs({ ["X-Test-Status"] = "503" }) }))
                assert.equal(503, r.status)
            end
            local want_retries = 6
            assert.equal(K + want_retries, up:stats().requests)
            local st = assert_both_workers(lv)
            local rt = st.routes[1]
            assert.equal(K, rt.requests)
            assert.equal(want_retries, rt.retries)
            assert.equal(K - want_retries, rt.budget_exhausted)
            assert.equal(K, rt.budget.requests)
            assert.equal(want_retries, rt.budget.retries)
            assert.equal(0, rt.budget.available)
            local s = samples(lv)
            assert.equal(want_retries, metric_sum(s, "levee_retries_total", { route = "bud" }))
            assert.equal(K - want_retries, metric_sum(s, "levee_retry_budget_exhausted_total", { route = "bud" }))
            assert.equal(K + want_retries, metric_sum(s, "levee_upstream_attempts_total", { route = "bud", outcome = "503" }))
        end)
    end)

    ---------------------------------------------------------------------------------------
    -- Idempotency: 50 duplicates at once on 50 connections (both workers), a slow upstream.

    local N = 50

    local function idem_routes(store)
        return {
            { name = "rej", match = { prefix = "/rej/" }, upstream = "api", timeout = "10s",
              idempotency = { store = store, on_conflict = "reject" } },
            { name = "wait", match = { prefix = "/wait/" }, upstream = "api", timeout = "10s",
              idempotency = { store = store, on_conflict = "wait" } },
        }
    end

    local function duplicates(lv, path, key)
        local conns = open_spread(lv, N)
        assert.equal(N, #conns)
        local st = status(lv)
        assert.is_true(st.workers[1].connections > 0 and st.workers[2].connections > 0,
            "connections per worker: " .. st.workers[1].connections .. ", " .. st.workers[2].connections)
        local bytes = H.build_request(lv.port, { method = "POST", path = path, body = "pay 10 EUR",
            headers = { { "Idempotency-Key", key }, { "X-Test-Delay-Ms", tostring(1000 * SLOW) },
                { "X-Test-Status", "201" } } })
        for _, c in ipairs(conns) do assert(c:send(bytes)) end
        local out = {}
        for i, c in ipairs(conns) do out[i] = assert(c:read_response({ timeout = 15 })) end
        return out
    end

    local function check_reject(lv, up, path, key)
        local rs = duplicates(lv, path, key)
        local fresh_n, conflicts = 0, 0
        for _, r in ipairs(rs) do
            if r.status == 201 and not r.headers["levee-error"] and not r.headers["idempotent-replayed"] then
                fresh_n = fresh_n + 1
            elseif r.status == 409 then
                H.assert_gw_error(r, 409, "idempotency-conflict", "rej")
                assert.is_string(r.headers["retry-after"])
                conflicts = conflicts + 1
            else
                error(("unexpected answer %d %s"):format(r.status, tostring(r.headers["levee-error"])))
            end
        end
        assert.equal(1, fresh_n)
        assert.equal(N - 1, conflicts)
        assert.equal(1, up:stats().by_path[path])
        -- once done, the key replays everywhere
        for i = 1, 4 do
            local r = assert(fresh(lv, { method = "POST", path = path, body = "pay 10 EUR",
                headers = { { "Idempotency-Key", key } } }))
            assert.equal(201, r.status, "replay " .. i)
            assert.equal("true", r.headers["idempotent-replayed"])
        end
        assert.equal(1, up:stats().by_path[path])
    end

    local function check_wait(lv, up, path, key)
        local rs = duplicates(lv, path, key)
        local first, replays = nil, 0
        for _, r in ipairs(rs) do
            assert.equal(201, r.status, "status " .. r.status .. " " .. tostring(r.headers["levee-error"]))
            assert.is_nil(r.headers["levee-error"])
            if r.headers["idempotent-replayed"] == "true" then
                replays = replays + 1
            else
                assert.is_nil(first, "two fresh (not replayed) answers")
                first = r
            end
        end
        assert.is_table(first, "no fresh answer")
        assert.equal(N - 1, replays)
        for _, r in ipairs(rs) do assert.is_true(r.body == first.body, "a body differs from the first") end
        assert.equal(1, up:stats().by_path[path])
    end

    describe("idempotency, memory store", function()
        local up, lv
        before_each(function()
            up = H.upstream({ name = "pay" })
            lv = start({ accept = "reuseport", upstreams = { api = { servers = { up:addr() } } }, routes = idem_routes("memory") })
        end)

        it("on_conflict = reject: 50 duplicates at once reach the upstream once, 49 get 409", function()
            check_reject(lv, up, "/rej/mem", "mem-rej-" .. RUN)
            assert.equal(1, route_status(lv, "rej").idempotency.entries)
        end)

        it("on_conflict = wait: 50 duplicates at once coalesce across workers into one upstream request", function()
            check_wait(lv, up, "/wait/mem", "mem-wait-" .. RUN)
            assert.equal(1, route_status(lv, "wait").idempotency.entries)
        end)
    end)

    describe("idempotency, redis store", function()
        local up, lv, rport, rpid, rdir

        before_each(function()
            rdir = H.tmpdir()
            rport = H.free_port()
            rpid = H.spawn({ "redis-server", "--port", tostring(rport), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no" }, { stdout = rdir .. "/redis.out", stderr = rdir .. "/redis.err" }, "redis")
            H.wait_until(function()
                local c = H.conn(rport, { timeout = 0.5 })
                if not c then return false end
                c:send("PING\r\n")
                local data = c:read_all(0.2)
                c:close()
                return data and data:find("+PONG", 1, true)
            end, 5 * H.scale, "redis-server PING")
            up = H.upstream({ name = "pay" })
            local store = { redis = "127.0.0.1:" .. rport, prefix = "lvws" .. RUN .. ":" }
            lv = start({ accept = "reuseport", upstreams = { api = { servers = { up:addr() } } }, routes = idem_routes(store) })
            H.wait_until(function()
                return route_status(lv, "rej").idempotency.connected and route_status(lv, "wait").idempotency.connected
            end, 5 * H.scale, "levee connected to redis")
        end)
        after_each(function()
            if rpid then
                H.proc.kill(rpid, "TERM")
                H.proc.wait(rpid, 5)
                rpid = nil
            end
        end)

        it("on_conflict = reject: 50 duplicates at once reach the upstream once, 49 get 409", function()
            check_reject(lv, up, "/rej/redis", "redis-rej-" .. RUN)
        end)

        it("on_conflict = wait: 50 duplicates at once coalesce across workers into one upstream request", function()
            check_wait(lv, up, "/wait/redis", "redis-wait-" .. RUN)
        end)
    end)

    ---------------------------------------------------------------------------------------
    describe("reload", function()
        for _, mode in ipairs({ "shared", "reuseport" }) do
        it("5 reloads under load on both workers: no failed request, every worker switches (accept = " .. mode .. ")", function()
            local up = H.upstream()
            local function config(k)
                local routes = { { name = "load", match = { prefix = "/load/" }, upstream = "api",
                    timeout = (10 + k) .. "s" } }
                if k > 0 then
                    routes[2] = { name = "g" .. k, match = { prefix = "/g" .. k .. "/" }, upstream = "api" }
                end
                return { workers = 2, accept = mode, admin = true, upstreams = { api = { servers = { up:addr() } } }, routes = routes }
            end
            local lv = H.levee({ config = config(0) })
            local gen0 = status(lv).generation
            local conns = open_spread(lv, 8)
            local st
            local sent, failures = 0, {}
            local function round(path_of)
                for i, c in ipairs(conns) do
                    sent = sent + 1
                    assert(c:send(H.build_request(lv.port, { path = path_of(i) })))
                end
                local codes = {}
                for i, c in ipairs(conns) do
                    local r, err = c:read_response({ timeout = 10 })
                    codes[i] = r and r.status or err
                end
                return codes
            end
            for k = 1, 5 do
                lv:write_config(config(k))
                local admin = assert(H.conn(lv.admin_port, { timeout = 10 }))
                held[#held + 1] = admin
                assert(admin:send(H.build_request(lv.admin_port, { method = "POST", path = "/reload", body = "" })))
                local rounds = 0
                repeat
                    rounds = rounds + 1
                    for i, code in ipairs(round(function(i) return ("/load/%d/%d/%d"):format(k, rounds, i) end)) do
                        if code ~= 200 then failures[#failures + 1] = ("reload %d conn %d: %s"):format(k, i, tostring(code)) end
                    end
                until admin:response_ready(0) and rounds >= 2
                local r = assert(admin:read_response())
                assert.equal(200, r.status, r.body)
                assert.equal(gen0 + k, H.json(r.body).generation)
                -- every connection (on both workers) sees the new route
                H.wait_until(function()
                    local codes = round(function(i) return ("/g%d/%d"):format(k, i) end)
                    for _, code in ipairs(codes) do
                        if code ~= 200 then return false end
                    end
                    return true
                end, 3 * H.scale, "every connection to see route g" .. k)
                -- and the old one is gone everywhere
                if k > 1 then
                    for i, code in ipairs(round(function(i) return ("/g%d/%d"):format(k - 1, i) end)) do
                        assert.equal(404, code, "conn " .. i .. " still routes g" .. (k - 1))
                    end
                end
            end
            assert.same({}, failures)
            st = assert_both_workers(lv)
            assert.equal(gen0 + 5, st.generation)
            assert.is_true(sent > #conns * 5 * 3)
            assert.equal(5, metric_sum(samples(lv), "levee_config_reloads_total", { result = "ok" }))
        end)
        end
    end)

    ---------------------------------------------------------------------------------------
    describe("drain", function()
        for _, mode in ipairs({ "shared", "reuseport" }) do
            it("SIGTERM finishes requests in flight on both workers, refuses new connections, exits 0 (accept = "
                .. mode .. ")", function()
                local up = H.upstream()
                local lv = start({ accept = mode, upstreams = { api = { servers = { up:addr() } } },
                    routes = { { name = "api", upstream = "api", timeout = (10 * SLOW) .. "s" } }, drain_timeout = (10 * SLOW) .. "s" })
                local conns = open_spread(lv, 8)
                local n = #conns
                local st = status(lv)
                assert.is_true(st.workers[1].connections > 0 and st.workers[2].connections > 0,
                    "connections per worker: " .. st.workers[1].connections .. ", " .. st.workers[2].connections)
                for i, c in ipairs(conns) do
                    assert(c:send(H.build_request(lv.port, { path = "/drain/" .. i,
                        headers = hdrs({ ["X-Test-Delay-Ms"] = tostring(2000 * SLOW) }) })))
                end
                -- all of them in flight upstream
                H.wait_until(function()
                    local s = status(lv)
                    return s.upstreams[1].servers[1].inflight == n
                end, 3 * H.scale, n .. " requests in flight")
                local t0 = H.now()
                lv:kill("TERM")
                H.wait_until(function() return not H.port_open(lv.port) end, 1.5 * H.scale, "the listener to close")
                assert.is_true(H.now() - t0 < 1.9 * SLOW, "listener closed only after the requests ended")
                assert.is_nil((H.conn(lv.port, { timeout = 1 })), "a new connection was accepted after SIGTERM")
                for i, c in ipairs(conns) do
                    local r, err = c:read_response({ timeout = 10 * SLOW })
                    assert.is_table(r, "request " .. i .. ": " .. tostring(err))
                    assert.equal(200, r.status)
                    assert.equal("/drain/" .. i, H.json(r.body).target)
                end
                local code, how = lv:wait_exit(10 * H.scale)
                assert.equal("exit", how)
                assert.equal(0, code)
                assert.equal(n, up:stats().requests)
            end)
        end
    end)

    ---------------------------------------------------------------------------------------
    describe("upstream health", function()
        local function start_checked(a, b)
            local lv = start({ accept = "reuseport", upstreams = { api = { servers = { a:addr(), b:addr() }, outlier = false,
                    health = { path = "/hc", interval = "200ms", timeout = "150ms", healthy = 2, unhealthy = 2 } } },
                routes = { { name = "api", upstream = "api", retry = { attempts = 1 } } } })
            H.wait_until(function()
                local sv = server_status(lv, "api", b:addr())
                return sv.last_check ~= H.null and sv.last_check.ok == true
            end, 3 * H.scale, "a passed check of b")
            return lv
        end

        it("active checks run once per server per interval, not once per worker", function()
            local a = H.upstream({ name = "a" })
            local b = H.upstream({ name = "b" })
            local lv = start_checked(a, b)
            -- about 10 checks of each server in 2 s (20 if each worker checked)
            local function checks(up) return up:stats().by_path["/hc"] or 0 end
            local a0, b0, t0 = checks(a), checks(b), H.now()
            local m0 = samples(lv)
            H.wait_until(function() return H.now() - t0 >= 2 end, 3, "2 s of checks")
            local a1, b1, t1 = checks(a), checks(b), H.now()
            local m1 = samples(lv)
            local expected = (t1 - t0) / 0.2
            for _, x in ipairs({ { "a", a1 - a0 }, { "b", b1 - b0 } }) do
                assert.is_true(x[2] <= expected + 2 and x[2] >= expected - 3,
                    ("%d checks of %s in %.2fs with interval 200ms (expected about %.0f)"):format(x[2], x[1], t1 - t0, expected))
            end
            -- every check is counted once in the metric
            local function ok_checks(m, up)
                return metric_sum(m, "levee_health_checks_total", { upstream = "api", server = up:addr(), result = "ok" })
            end
            local da = ok_checks(m1, a) - ok_checks(m0, a)
            assert.is_true(math.abs(da - (a1 - a0)) <= 2,
                ("metric counted %d checks of a, a saw %d"):format(da, a1 - a0))
        end)

        it("a server down after failed checks is out on every worker and goes down once", function()
            local a = H.upstream({ name = "a" })
            local b = H.upstream({ name = "b" })
            local lv = start_checked(a, b)
            b:stop()
            lv:wait_log("upstream api server " .. b:addr() .. " down after 2 failed checks", 3 * H.scale, true)
            assert.equal("down", server_status(lv, "api", b:addr()).state)
            -- a's requests other than its health checks (those go on every 200 ms meanwhile)
            local function proxied(up)
                local st = up:stats()
                return st.requests - (st.by_path["/hc"] or 0)
            end
            local before = proxied(a)
            local n = 40
            local failed = {}
            for i = 1, n do
                local r = assert(fresh(lv, { path = "/h/" .. i }))
                if r.status ~= 200 or r.headers["x-upstream"] ~= "a:" .. a.ports[1] then
                    failed[#failed + 1] = ("request %d: %d %s"):format(i, r.status, tostring(r.headers["levee-error"]))
                end
            end
            assert.same({}, failed)
            assert.equal(before + n, proxied(a))
            for _, e in ipairs(lv:wait_access(n)) do
                assert.equal(1, #e.tries)
                assert.equal(a:addr(), e.tries[1].server)
            end
            assert_both_workers(lv)
            -- more failed checks pass; the state change is still one line, one state
            local f0 = metric_sum(samples(lv), "levee_health_checks_total", { upstream = "api", server = b:addr(), result = "failed" })
            H.wait_until(function()
                return metric_sum(samples(lv), "levee_health_checks_total",
                    { upstream = "api", server = b:addr(), result = "failed" }) >= f0 + 3
            end, 3 * H.scale, "more failed checks of b")
            assert.equal(1, count_lines(lv:log(), "server " .. b:addr() .. " down after"))
            local sv = server_status(lv, "api", b:addr())
            assert.equal("down", sv.state)
            assert.matches("^down after 2 failed checks: ", sv.reason)
            assert.equal(0, metric_sum(samples(lv), "levee_upstream_server_up", { upstream = "api", server = b:addr() }))
            assert.equal(n, metric_sum(samples(lv), "levee_requests_total", { route = "api" }))

            -- back: 2 passed checks bring it in, once, for every worker
            b:start()
            lv:wait_log("upstream api server " .. b:addr() .. " back in after 2 passed checks", 3 * H.scale, true)
            local seen_b = 0
            for i = 1, 20 do
                local r = assert(fresh(lv, { path = "/back/" .. i }))
                assert.equal(200, r.status)
                if r.headers["x-upstream"] == "b:" .. b.ports[1] then seen_b = seen_b + 1 end
            end
            assert.is_true(seen_b > 0, "b got no request after it came back")
            assert.equal(1, count_lines(lv:log(), "server " .. b:addr() .. " back in"))
        end)

        it("outlier ejection counts consecutive 5xx over both workers", function()
            local up = H.upstream({ n = 2, name = "u" })
            local pa, pb = up.ports[1], up.ports[2]
            local lv = start({ accept = "reuseport", upstreams = { api = { servers = up:addrs(), balance = "round_robin",
                    outlier = { consecutive_failures = 5, eject_for = "30s" } } },
                routes = { { name = "api", upstream = "api", retry = { attempts = 1 } } } })
            local plan = hdrs({ ["X-Test-By-Port"] = ("%d=200,%d=503"):format(pa, pb) })
            local n = 40
            for i = 1, n do
                local r = assert(fresh(lv, { path = "/ej/" .. i, headers = plan }))
                assert.is_true(r.status == 200 or r.status == 503)
            end
            local by_port = up:stats().by_port
            -- exactly 5 failures eject b (per worker it would take up to 9)
            assert.equal(5, by_port[tostring(pb)])
            assert.equal(n - 5, by_port[tostring(pa)])
            assert.equal(1, count_lines(lv:log(), "server " .. up:addr(2) .. " ejected for"))
            local sv = server_status(lv, "api", up:addr(2))
            assert.equal("ejected", sv.state)
            assert.equal(1, sv.ejections)
            assert.equal(1, metric_sum(samples(lv), "levee_upstream_ejections_total",
                { upstream = "api", server = up:addr(2), enforced = "true" }))
            assert_both_workers(lv)
        end)
    end)

    ---------------------------------------------------------------------------------------
    describe("access log", function()
        it("2000 requests over 20 connections on both workers: 2000 whole JSON lines", function()
            local up = H.upstream()
            local lv = start({ accept = "reuseport", access_log = "access.log", upstreams = { api = { servers = { up:addr() } } },
                routes = { { name = "api", upstream = "api" } } })
            local path = lv.dir .. "/access.log"
            local nconn, rounds, pipe = 20, 20, 5
            local conns = open_spread(lv, nconn)
            nconn = #conns
            for k = 1, rounds do
                for i, c in ipairs(conns) do
                    local parts = {}
                    for j = 1, pipe do
                        parts[j] = H.build_request(lv.port, { path = ("/al/%d/%d/%d"):format(i, k, j) })
                    end
                    assert(c:send(table.concat(parts)))
                end
                for _, c in ipairs(conns) do
                    for _ = 1, pipe do
                        local r = assert(c:read_response())
                        assert.equal(200, r.status)
                    end
                end
            end
            local total = nconn * rounds * pipe
            assert.is_true(total >= 2000)
            H.wait_until(function()
                local _, lines = H.read_file(path):gsub("\n", "")
                return lines >= total
            end, 5 * H.scale, total .. " access log lines")
            local text = H.read_file(path)
            assert.equal("\n", text:sub(-1))
            local n, paths, bad = 0, {}, {}
            for line in text:gmatch("([^\n]*)\n") do
                n = n + 1
                local ok, e = pcall(H.json, line)
                if ok and type(e) == "table" then
                    paths[e.path] = (paths[e.path] or 0) + 1
                    assert.equal(200, e.status)
                else
                    bad[#bad + 1] = line:sub(1, 200)
                end
            end
            assert.same({}, bad)
            assert.equal(total, n)
            local distinct = 0
            for _, c in pairs(paths) do
                distinct = distinct + 1
                assert.equal(1, c)
            end
            assert.equal(total, distinct)
            local st = assert_both_workers(lv)
            assert.equal(total, worker_requests(st))
        end)
    end)
end)
