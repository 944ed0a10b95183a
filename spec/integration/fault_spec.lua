-- Injected faults (docs/configuration.md, routes[].fault; README "levee dev"): abort, delay,
-- reset and throttle from a route's fault table, the Levee-Fault request header and the admin
-- API's /faults rules, at both placements. The test upstream's request count (/__stats) proves
-- what reached it; the access log's `fault` flag and per-try `fault`, and
-- levee_faults_injected_total{route,kind}, show what levee injected.
local H = require("helpers")

-- One route `api` (a catch-all) on upstream `up`; `route_extra` keys replace the route's.
-- Retries are off unless the test asks: each request is one attempt.
local function start(up, route_extra, top_extra)
    local route = { name = "api", upstream = "api",
        retry = { attempts = 1, backoff = { base = "1ms", max = "2ms" } } }
    for k, v in pairs(route_extra or {}) do route[k] = v end
    local config = { admin = true,
        upstreams = { api = { servers = { up:addr() } } },
        routes = { route } }
    for k, v in pairs(top_extra or {}) do config[k] = v end
    return H.levee({ config = config })
end

local function has_flag(e, flag)
    for _, f in ipairs(e.flags or {}) do
        if f == flag then return true end
    end
    return false
end

local function faults(lv, kind)
    return lv:metric(('levee_faults_injected_total{route="api",kind="%s"}'):format(kind)) or 0
end

-- Whether the upstream's JSON echo shows a request header `name` (any case).
local function echoed(body, name)
    for _, h in ipairs(H.json(body).headers) do
        if h[1]:lower() == name:lower() then return h[2] end
    end
    return nil
end

local function requests(up) return up:stats().requests end

-- Admin API helpers.
local function post_fault(lv, rule)
    local r = assert(lv:admin({ method = "POST", path = "/faults",
        headers = { { "Content-Type", "application/json" } },
        body = type(rule) == "string" and rule or H.json_encode(rule) }))
    return r, (r.body ~= "" and H.json(r.body) or nil)
end

local function list_faults(lv)
    local r = assert(lv:admin("/faults"))
    assert.equal(200, r.status)
    return H.json(r.body).faults
end

-- Whether `dt` seconds is about `want`: 0.7x to 1.6x (a sanitized build gets 1 s more at the
-- top: the throttle keeps the rate by the clock, so a slow process only adds a fixed lateness).
local function about(dt, want)
    return dt >= 0.7 * want and dt <= 1.6 * want + (H.sanitized and 1 or 0)
end

local function timed(fn)
    local t0 = H.now()
    local a, b, c = fn()
    return H.now() - t0, a, b, c
end

describe("fault (route table, at = upstream)", function()
    after_each(H.cleanup)

    it("abort: the attempt gets the status without reaching the upstream", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 503 } } })
        local r = lv:request({ path = "/abort" })
        local e = H.assert_gw_error(r, 503, "fault-injected", "api")
        assert.equal("abort", e.detail)
        assert.equal(0, requests(up))
        local a = lv:access_entry("/abort")
        assert.equal(503, a.status)
        assert.is_true(has_flag(a, "fault"))
        assert.equal(1, a.attempts)
        assert.equal(1, #a.tries)
        assert.equal("503", a.tries[1].outcome)
        assert.equal("abort", a.tries[1].fault)
        assert.equal(1, faults(lv, "abort"))
    end)

    it("abort: retries act on it as on a real 5xx, and the upstream never sees one", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 503 } },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } } })
        H.assert_gw_error(lv:request({ path = "/retried" }), 503, "fault-injected", "api")
        local a = lv:access_entry("/retried")
        assert.equal(3, a.attempts)
        assert.equal(3, #a.tries)
        for i = 1, 3 do
            assert.equal("503", a.tries[i].outcome)
            assert.equal("abort", a.tries[i].fault)
        end
        assert.equal("attempts", a.retry_stop)
        assert.equal(0, requests(up))
        assert.equal(3, faults(lv, "abort"))
    end)

    it("abort: a status the retry policy does not retry ends the request at once", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 418 } },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } } })
        H.assert_gw_error(lv:request({ path = "/teapot" }), 418, "fault-injected", "api")
        local a = lv:access_entry("/teapot")
        assert.equal(1, a.attempts)
        assert.equal("verdict", a.retry_stop)
        assert.equal(0, requests(up))
    end)

    it("reset: the attempt ends as reset (502 upstream-reset), retried on reset", function()
        local up = H.upstream()
        local lv = start(up, { fault = { reset = {} } })
        H.assert_gw_error(lv:request({ path = "/reset" }), 502, "upstream-reset", "api")
        local a = lv:access_entry("/reset")
        assert.is_true(has_flag(a, "fault"))
        assert.equal(1, #a.tries)
        assert.equal("reset", a.tries[1].outcome)
        assert.equal("reset", a.tries[1].fault)
        assert.equal(0, requests(up))
        assert.equal(1, faults(lv, "reset"))

        local up2 = H.upstream()
        local lv2 = start(up2, { fault = { reset = {} },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "reset" } } })
        H.assert_gw_error(lv2:request({ path = "/reset3" }), 502, "upstream-reset", "api")
        local a2 = lv2:access_entry("/reset3")
        assert.equal(3, #a2.tries)
        for i = 1, 3 do assert.equal("reset", a2.tries[i].fault) end
        assert.equal(0, requests(up2))
    end)

    it("delay: the attempt is held before it is sent, and the try's ms includes it", function()
        local up = H.upstream()
        local lv = start(up, { fault = { delay = { time = "300ms" } } })
        local dt, r = timed(function() return lv:request({ path = "/delay" }) end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.29, ("took %.3fs"):format(dt))
        assert.equal(1, requests(up))
        local a = lv:access_entry("/delay")
        assert.is_true(has_flag(a, "fault"))
        assert.equal("200", a.tries[1].outcome)
        assert.equal("delay", a.tries[1].fault)
        assert.is_true(a.tries[1].ms >= 290, "try ms " .. tostring(a.tries[1].ms))
        assert.equal(1, faults(lv, "delay"))
    end)

    it("delay: counts against the route timeout (504, nothing sent)", function()
        local up = H.upstream()
        local lv = start(up, { timeout = "200ms", fault = { delay = { time = "2s" } } })
        local dt, r = timed(function() return lv:request({ path = "/late" }) end)
        H.assert_gw_error(r, 504, "deadline-exceeded", "api")
        assert.is_true(dt < 1.5, ("took %.3fs"):format(dt))
        assert.equal(0, requests(up))
        local a = lv:access_entry("/late")
        assert.is_true(has_flag(a, "fault"))
        assert.equal("delay", a.tries[1].fault)
    end)

    it("percent: about that share of the attempts", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 503, percent = 50 } } })
        local aborted = 0
        local c = H.conn(lv.port)
        for _ = 1, 200 do
            c:send(H.build_request(lv.port, { path = "/half" }))
            local r = assert(c:read_response({ timeout = 5 * H.scale }))
            if r.status == 503 then aborted = aborted + 1 else assert.equal(200, r.status) end
        end
        c:close()
        assert.is_true(aborted >= 60 and aborted <= 140, "aborted " .. aborted)
        assert.equal(200 - aborted, requests(up))
        assert.equal(aborted, faults(lv, "abort"))
    end)

    it("delay with a streamed request body: the body arrives whole after the hold", function()
        local up = H.upstream()
        local lv = start(up, { fault = { delay = { time = "200ms" } } })
        local body = H.pattern(300 * 1024) -- larger than retry.buffer: streamed
        local r = lv:request({ method = "PUT", path = "/upload", body = body, timeout = 10 * H.scale })
        assert.equal(200, r.status)
        local echo = H.json(r.body)
        assert.equal(#body, echo.body_len)
        assert.equal(H.fnv1a64(body), echo.body_sha)
        assert.equal("delay", lv:access_entry("/upload").tries[1].fault)
    end)

    it("an injected abort on a keyed POST lets the idempotency key go", function()
        local up = H.upstream()
        local lv = start(up, { idempotency = {} })
        assert.equal(201, (post_fault(lv, { route = "api", abort = { status = 503 }, times = 1 })).status)
        local key = { "Idempotency-Key", "fault-k1" }
        H.assert_gw_error(lv:request({ method = "POST", path = "/pay", body = "x", headers = { key } }),
            503, "fault-injected", "api")
        local r = lv:request({ method = "POST", path = "/pay", body = "x", headers = { key } })
        assert.equal(200, r.status, r.body)
        assert.equal(1, requests(up))
    end)

    it("percent 0 never fires and the route works", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 503, percent = 0 }, reset = { percent = 0 } } })
        for i = 1, 5 do
            assert.equal(200, lv:request({ path = "/p" .. i }).status)
        end
        assert.equal(5, requests(up))
        assert.is_false(has_flag(lv:access_entry("/p5"), "fault"))
        assert.equal(0, faults(lv, "abort"))
    end)

    it("the retry budget is spent by retries of injected failures", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 503 } },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" },
                budget = { ratio = 0.0, min_per_second = 0 } } })
        H.assert_gw_error(lv:request({ path = "/spent" }), 503, "fault-injected", "api")
        local a = lv:access_entry("/spent")
        assert.equal("budget", a.retry_stop)
        assert.equal(1, a.attempts)
        assert.equal(0, requests(up))
    end)

    it("delay: every attempt is delayed, and the tries show it", function()
        local up = H.upstream()
        local lv = start(up, { fault = { delay = { time = "100ms" } },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } } })
        local dt, r = timed(function()
            return lv:request({ path = "/dd", headers = { { "X-Test-Plan", "dd:503,503,200" } } })
        end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.29, ("took %.3fs"):format(dt))
        local a = lv:access_entry("/dd")
        assert.equal(3, #a.tries)
        assert.same({ "503", "503", "200" }, { a.tries[1].outcome, a.tries[2].outcome, a.tries[3].outcome })
        for i = 1, 3 do
            assert.equal("delay", a.tries[i].fault)
            assert.is_true(a.tries[i].ms >= 95, ("try %d ms %s"):format(i, tostring(a.tries[i].ms)))
        end
        assert.equal(3, requests(up))
        assert.equal(3, faults(lv, "delay"))
    end)

    it("abort of a request with a body: the connection goes on serving", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true } })
        local c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { method = "POST", path = "/kb1", body = H.pattern(4096),
            headers = { { "Levee-Fault", "abort=503" } } }))
        local r = assert(c:read_response({ timeout = 5 * H.scale }))
        H.assert_gw_error(r, 503, "fault-injected", "api")
        c:send(H.build_request(lv.port, { method = "POST", path = "/kb2", body = H.pattern(1000) }))
        r = assert(c:read_response({ timeout = 5 * H.scale }))
        assert.equal(200, r.status)
        assert.equal(1000, H.json(r.body).body_len)
        assert.equal(1, requests(up))
        c:close()
    end)

    it("a client that goes away during a delay: nothing is sent, levee carries on", function()
        local up = H.upstream()
        local lv = start(up, { fault = { delay = { time = "300ms" } } })
        local c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { path = "/gone" }))
        H.wait_until(function() return faults(lv, "delay") == 1 end, 5 * H.scale, "the delay to start")
        c:close()
        local e = lv:access_entry("/gone")
        assert.equal(499, e.status)
        assert.is_true(has_flag(e, "client-abort"))
        assert.is_true(has_flag(e, "fault"))
        assert.equal(200, lv:request({ path = "/after" }).status)
        assert.equal(1, requests(up))
        assert.is_true(lv:alive())
    end)

    it("a POST without a key: an injected 503 is treated as a real one", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx", "reset" } } })
        local real = lv:request({ method = "POST", path = "/real", body = "x", headers = { { "X-Test-Status", "503" } } })
        assert.equal(503, real.status)
        local fake = lv:request({ method = "POST", path = "/fake", body = "x", headers = { { "Levee-Fault", "abort=503" } } })
        H.assert_gw_error(fake, 503, "fault-injected", "api")
        local er, ef = lv:access_entry("/real"), lv:access_entry("/fake")
        assert.equal(er.attempts, ef.attempts)
        assert.equal(er.retry_stop, ef.retry_stop)
        assert.equal(er.attempts, requests(up))
    end)

    it("the breaker opens on injected failures as on real ones", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true },
            breaker = { consecutive_failures = 2, open_for = "30s" } })
        for i = 1, 2 do
            H.assert_gw_error(lv:request({ path = "/b" .. i, headers = { { "Levee-Fault", "abort=503" } } }),
                503, "fault-injected", "api")
        end
        -- No fault asked for: the breaker, opened by the two injected aborts, refuses.
        local r = lv:request({ path = "/b3" })
        H.assert_gw_error(r, 503, "breaker-open", "api")
        assert.equal(0, requests(up))
        assert.equal("breaker-open", lv:access_entry("/b3").retry_stop)
        assert.equal(1, lv:metric('levee_breaker_state{route="api"}'))
    end)
end)

describe("fault configuration", function()
    after_each(H.cleanup)

    it("levee check rejects a bad fault table, naming the key", function()
        local code, out = H.run_levee({ "check", H.tmpfile([[
return {
  listen = { "127.0.0.1:1" },
  upstreams = { u = { servers = { "127.0.0.1:2" } } },
  routes = {
    { name = "a", upstream = "u", match = { prefix = "/a" }, fault = { abort = { status = 99 } } },
    { name = "b", upstream = "u", match = { prefix = "/b" }, fault = { delay = { time = "0s" } } },
    { name = "c", upstream = "u", match = { prefix = "/c" }, fault = { throttle = { rate = "fast" } } },
    { name = "d", upstream = "u", match = { prefix = "/d" }, fault = { at = "server" } },
    { name = "e", upstream = "u", match = { prefix = "/e" }, fault = { abort = { status = 503, percent = 101 } } },
    { name = "f", upstream = "u", match = { prefix = "/f" }, fault = { explode = {} } },
    { name = "g", upstream = "u", match = { prefix = "/g" }, fault = { abort = {} } },
  },
}
]], "levee.lua") })
        assert.equal(1, code)
        for _, key in ipairs({ "routes[1].fault.abort.status", "routes[2].fault.delay.time",
                "routes[3].fault.throttle.rate", "routes[4].fault.at", "routes[5].fault.abort.percent",
                "routes[6].fault", "routes[7].fault.abort.status" }) do
            assert.truthy(out:find(key, 1, true), key .. " not in: " .. out)
        end
    end)
end)

describe("fault (route table, at = client)", function()
    after_each(H.cleanup)

    it("abort: the client gets the status at once; no retry, no breaker, no upstream", function()
        local up = H.upstream()
        local lv = start(up, { fault = { abort = { status = 503 }, at = "client" },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } },
            breaker = { consecutive_failures = 1, open_for = "30s" } })
        for i = 1, 3 do
            H.assert_gw_error(lv:request({ path = "/c" .. i }), 503, "fault-injected", "api")
        end
        assert.equal(0, requests(up))
        local a = lv:access_entry("/c3")
        assert.is_true(has_flag(a, "fault"))
        assert.equal(0, #a.tries)
        assert.equal(3, faults(lv, "abort"))
        -- The breaker (one failure opens it) never saw the aborts: it is closed.
        assert.equal(0, lv:metric('levee_breaker_state{route="api"}'))
    end)

    it("reset: the client connection is reset, nothing reaches the upstream", function()
        local up = H.upstream()
        local lv = start(up, { fault = { reset = {}, at = "client" } })
        local data, why = H.raw(lv.port, H.build_request(lv.port, { path = "/rst" }), { timeout = 3 * H.scale })
        assert.equal("", data)
        assert.equal("reset", why)
        assert.equal(0, requests(up))
        assert.is_true(has_flag(lv:access_entry("/rst"), "fault"))
        assert.equal(1, faults(lv, "reset"))
    end)

    it("delay: the request is held before the first attempt, not counted in the route timeout", function()
        local up = H.upstream()
        local lv = start(up, { timeout = "200ms", fault = { delay = { time = "500ms" }, at = "client" } })
        local dt, r = timed(function() return lv:request({ path = "/hold" }) end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.49, ("took %.3fs"):format(dt))
        assert.equal(1, requests(up))
        local a = lv:access_entry("/hold")
        assert.is_true(has_flag(a, "fault"))
        assert.equal(1, #a.tries)
        assert.is_nil(a.tries[1].fault)
        assert.is_true(a.tries[1].ms < 400, "try ms " .. tostring(a.tries[1].ms))
        assert.equal(1, faults(lv, "delay"))
    end)

    it("delay with a streamed request body: the body arrives whole after the hold", function()
        local up = H.upstream()
        local lv = start(up, { fault = { delay = { time = "200ms" }, at = "client" } })
        local body = H.pattern(300 * 1024)
        local dt, r = timed(function()
            return lv:request({ method = "PUT", path = "/c-upload", body = body, timeout = 10 * H.scale })
        end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.19, ("took %.3fs"):format(dt))
        local echo = H.json(r.body)
        assert.equal(#body, echo.body_len)
        assert.equal(H.fnv1a64(body), echo.body_sha)
    end)

    it("an abort on a keyed POST does not hold the idempotency key", function()
        local up = H.upstream()
        local lv = start(up, { idempotency = {} })
        assert.equal(201, (post_fault(lv, { route = "api", abort = { status = 503 }, at = "client", times = 1 })).status)
        local key = { "Idempotency-Key", "fault-k2" }
        H.assert_gw_error(lv:request({ method = "POST", path = "/cpay", body = H.pattern(5000), headers = { key } }),
            503, "fault-injected", "api")
        local r = lv:request({ method = "POST", path = "/cpay", body = H.pattern(5000), headers = { key } })
        assert.equal(200, r.status, r.body)
        assert.equal(5000, H.json(r.body).body_len)
        assert.equal(1, requests(up))
    end)

    it("an abort without a body keeps the connection", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true, at = "client" } })
        local c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { path = "/ka1", headers = { { "Levee-Fault", "abort=503" } } }))
        H.assert_gw_error(assert(c:read_response({ timeout = 5 * H.scale })), 503, "fault-injected", "api")
        c:send(H.build_request(lv.port, { path = "/ka2" }))
        assert.equal(200, assert(c:read_response({ timeout = 5 * H.scale })).status)
        assert.equal(1, requests(up))
        c:close()
    end)
end)

describe("fault throttle", function()
    after_each(H.cleanup)

    local SIZE, RATE = 100 * 1024, 50 * 1024

    it("the body reaches the client at about the route's rate", function()
        local up = H.upstream()
        local lv = start(up, { fault = { throttle = { rate = "50KiB" } } })
        local dt, r = timed(function()
            return lv:request({ path = "/slow", timeout = 10 * H.scale,
                headers = { { "X-Test-Body-Size", tostring(SIZE) } } })
        end)
        assert.equal(200, r.status)
        assert.equal(H.pattern(SIZE), r.body)
        local want = SIZE / RATE
        assert.is_true(about(dt, want), ("took %.3fs, want about %.1fs"):format(dt, want))
        assert.is_true(has_flag(lv:access_entry("/slow"), "fault"))
        assert.equal(1, faults(lv, "throttle"))
    end)

    it("a chunked body is throttled too; a client that leaves mid-body does not upset levee", function()
        local up = H.upstream()
        local lv = start(up, { fault = { throttle = { rate = "50KiB" } } })
        local dt, r = timed(function()
            return lv:request({ path = "/chunked", timeout = 10 * H.scale, headers = {
                { "X-Test-Body-Size", tostring(SIZE) }, { "X-Test-Chunked", "1" }, { "X-Test-Chunk-Size", "8192" } } })
        end)
        assert.equal(200, r.status)
        assert.is_true(r.chunked)
        assert.equal(H.pattern(SIZE), r.body)
        local want = SIZE / RATE
        assert.is_true(about(dt, want), ("took %.3fs, want about %.1fs"):format(dt, want))

        local c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { path = "/leave", headers = { { "X-Test-Body-Size", tostring(4 * 1024 * 1024) } } }))
        assert(c:read_response({ head_only = true, timeout = 5 * H.scale }))
        assert(c:skip(10 * 1024, 5 * H.scale))
        c:close()
        local e = lv:access_entry("/leave")
        assert.is_true(has_flag(e, "fault"))
        assert.is_true(e.bytes_out < 4 * 1024 * 1024, "bytes_out " .. tostring(e.bytes_out))
        assert.equal(200, lv:request({ path = "/after", headers = { { "X-Test-Body-Size", "100" } } }).status)
        assert.is_true(lv:alive())
    end)

    it("Connection: close and HTTP/1.0: the whole throttled body goes out before the close", function()
        local up = H.upstream()
        local lv = start(up, { fault = { throttle = { rate = "50KiB" } } })
        local size = 60 * 1024
        for _, v in ipairs({ "1.1", "1.0" }) do
            local hs = { { "X-Test-Body-Size", tostring(size) } }
            if v == "1.1" then hs[2] = { "Connection", "close" } end
            local c = H.conn(lv.port, { timeout = 10 * H.scale })
            c:send(H.build_request(lv.port, { path = "/close" .. v, version = "HTTP/" .. v, headers = hs }))
            local t0 = H.now()
            local r = assert(c:read_response({ timeout = 10 * H.scale }))
            local dt = H.now() - t0
            assert.equal(200, r.status)
            assert.equal(H.pattern(size), r.body)
            assert.is_true(about(dt, size / (50 * 1024)), ("HTTP/%s took %.3fs"):format(v, dt))
            assert.is_true(c:closed(2 * H.scale), "HTTP/" .. v .. ": not closed")
            c:close()
        end
    end)

    it("a high rate is kept too: 16 MiB at 8 MiB/s takes about 2 s", function()
        local up = H.upstream()
        local lv = start(up, { fault = { throttle = { rate = "8MiB" } } })
        local size = 16 * 1024 * 1024
        local dt, r = timed(function()
            return lv:request({ path = "/fast-rate", timeout = 20 * H.scale,
                headers = { { "X-Test-Body-Size", tostring(size) } } })
        end)
        assert.equal(200, r.status)
        assert.equal(size, #r.body)
        assert.is_true(about(dt, 2), ("16 MiB at 8 MiB/s took %.3fs, want about 2 s"):format(dt))
    end)

    it("by header: throttled at the rate asked, and an unthrottled request on the route is fast", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true } })
        local dt, r = timed(function()
            return lv:request({ path = "/hdr-slow", timeout = 10 * H.scale,
                headers = { { "X-Test-Body-Size", tostring(SIZE) }, { "Levee-Fault", "throttle=50KiB" } } })
        end)
        assert.equal(200, r.status)
        assert.equal(H.pattern(SIZE), r.body)
        local want = SIZE / RATE
        assert.is_true(about(dt, want), ("took %.3fs, want about %.1fs"):format(dt, want))
        local fast, r2 = timed(function()
            return lv:request({ path = "/hdr-fast", headers = { { "X-Test-Body-Size", tostring(SIZE) } } })
        end)
        assert.equal(200, r2.status)
        assert.equal(SIZE, #r2.body)
        assert.is_true(fast < 0.5 * want, ("unthrottled took %.3fs"):format(fast))
        assert.is_false(has_flag(lv:access_entry("/hdr-fast"), "fault"))
        -- The connection after a throttled response is not throttled any more.
        local c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { path = "/k1", headers = { { "X-Test-Body-Size", "40960" },
            { "Levee-Fault", "throttle=40KiB" } } }))
        local t0 = H.now()
        assert.equal(200, c:read_response({ timeout = 5 * H.scale }).status)
        local slow = H.now() - t0
        c:send(H.build_request(lv.port, { path = "/k2", headers = { { "X-Test-Body-Size", "40960" } } }))
        t0 = H.now()
        assert.equal(200, c:read_response({ timeout = 5 * H.scale }).status)
        local quick = H.now() - t0
        assert.is_true(slow >= 0.7, ("throttled 40KiB at 40KiB/s took %.3fs"):format(slow))
        assert.is_true(quick < 0.5, ("next request on the connection took %.3fs"):format(quick))
        c:close()
    end)
end)

describe("Levee-Fault header", function()
    after_each(H.cleanup)

    it("is ignored, and not forwarded, on a route without headers = true", function()
        local up = H.upstream()
        local lv = start(up)
        local r = lv:request({ path = "/none", headers = { { "Levee-Fault", "abort=503" } } })
        assert.equal(200, r.status)
        assert.is_nil(echoed(r.body, "levee-fault"))
        -- A malformed one too.
        r = lv:request({ path = "/none2", headers = { { "Levee-Fault", "nonsense!!" } } })
        assert.equal(200, r.status)
        assert.is_nil(echoed(r.body, "levee-fault"))

        local up2 = H.upstream()
        local lv2 = start(up2, { fault = { delay = { time = "1ms", percent = 0 } } })
        r = lv2:request({ path = "/off", headers = { { "Levee-Fault", "abort=503" } } })
        assert.equal(200, r.status)
        assert.is_nil(echoed(r.body, "levee-fault"))
        r = lv2:request({ path = "/off2", headers = { { "Levee-Fault", "abort=1" } } })
        assert.equal(200, r.status)
        assert.equal(2, requests(up2))
    end)

    it("with headers = true: abort, reset, delay, percents and several kinds; never forwarded", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true } })
        H.assert_gw_error(lv:request({ path = "/h-abort", headers = { { "Levee-Fault", "abort=503" } } }),
            503, "fault-injected", "api")
        H.assert_gw_error(lv:request({ path = "/h-reset", headers = { { "Levee-Fault", "reset" } } }),
            502, "upstream-reset", "api")
        assert.equal(0, requests(up))
        assert.equal("reset", lv:access_entry("/h-reset").tries[1].fault)

        local dt, r = timed(function()
            return lv:request({ path = "/h-delay", headers = { { "Levee-Fault", "delay=200ms" } } })
        end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.19, ("took %.3fs"):format(dt))
        assert.is_nil(echoed(r.body, "levee-fault"))
        assert.equal("delay", lv:access_entry("/h-delay").tries[1].fault)

        dt, r = timed(function()
            return lv:request({ path = "/h-secs", headers = { { "Levee-Fault", "delay=0.2s" } } })
        end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.19, ("took %.3fs"):format(dt))

        r = lv:request({ path = "/h-never", headers = { { "Levee-Fault", "abort=503:0%" } } })
        assert.equal(200, r.status)
        assert.is_nil(echoed(r.body, "levee-fault"))
        r = lv:request({ path = "/h-always", headers = { { "Levee-Fault", " abort=502:100% " } } })
        H.assert_gw_error(r, 502, "fault-injected", "api")

        dt, r = timed(function()
            return lv:request({ path = "/h-both", headers = { { "Levee-Fault", "delay=150ms, abort=504" } } })
        end)
        H.assert_gw_error(r, 504, "fault-injected", "api")
        assert.is_true(dt >= 0.14, ("took %.3fs"):format(dt))
        local a = lv:access_entry("/h-both")
        assert.equal("abort", a.tries[1].fault)
        assert.is_true(a.tries[1].ms >= 140, "try ms " .. tostring(a.tries[1].ms))

        -- Two fields, different kinds: both apply.
        r = lv:request({ path = "/h-two", headers = { { "Levee-Fault", "delay=100ms" }, { "Levee-Fault", "abort=500" } } })
        H.assert_gw_error(r, 500, "fault-injected", "api")
        assert.equal(3, requests(up))
        assert.equal(4, faults(lv, "abort"))
        assert.equal(1, faults(lv, "reset"))
        assert.equal(4, faults(lv, "delay"))

        -- A percent in the header: about that share.
        local aborted = 0
        local c = H.conn(lv.port)
        for _ = 1, 200 do
            c:send(H.build_request(lv.port, { path = "/h-half", headers = { { "Levee-Fault", "abort=503:50%" } } }))
            local x = assert(c:read_response({ timeout = 5 * H.scale }))
            if x.status == 503 then aborted = aborted + 1 else assert.equal(200, x.status) end
        end
        c:close()
        assert.is_true(aborted >= 60 and aborted <= 140, "aborted " .. aborted)
    end)

    it("at = client: an abort by header is not retried, a reset resets the client", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true, at = "client" },
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } } })
        H.assert_gw_error(lv:request({ path = "/hc-abort", headers = { { "Levee-Fault", "abort=503" } } }),
            503, "fault-injected", "api")
        assert.equal(0, #lv:access_entry("/hc-abort").tries)
        local data, why = H.raw(lv.port, H.build_request(lv.port, { path = "/hc-rst",
            headers = { { "Levee-Fault", "reset" } } }), { timeout = 3 * H.scale })
        assert.equal("", data)
        assert.equal("reset", why)
        assert.equal(0, requests(up))
        assert.equal(200, lv:request({ path = "/hc-ok" }).status)
        assert.equal(1, requests(up))
    end)

    it("at = client: a delay by header is outside the route timeout", function()
        local up = H.upstream()
        local lv = start(up, { timeout = "200ms", fault = { headers = true, at = "client" } })
        local dt, r = timed(function()
            return lv:request({ path = "/hc-delay", headers = { { "Levee-Fault", "delay=400ms" } } })
        end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.39, ("took %.3fs"):format(dt))
        assert.is_nil(echoed(r.body, "levee-fault"))
        assert.equal(1, faults(lv, "delay"))
    end)

    it("malformed: 400 bad-fault-header with a detail saying what is wrong", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true } })
        -- { header values, what the detail must name }
        local bad = {
            { { "abort=99" }, "200-599" }, { { "abort=600" }, "200-599" }, { { "abort" }, "abort=STATUS" },
            { { "delay=" }, "delay=DURATION" }, { { "delay=0ms" }, "delay=DURATION" },
            { { "delay=2h" }, "1h" }, { { "throttle=0" }, "throttle=SIZE" },
            { { "throttle=fast" }, "throttle=SIZE" }, { { "reset=1" }, "reset" },
            { { "explode" }, "explode" }, { { "abort=503,,delay=1ms" }, "empty" },
            { { "abort=503:150%" }, "percent" }, { { "abort=503:50" }, "percent" },
            { { "abort=503,abort=502" }, "once" },
            { { "abort=503", "abort=502" }, "abort" }, -- the same kind in two fields
        }
        for i, case in ipairs(bad) do
            local values, want = case[1], case[2]
            local hs = {}
            for _, v in ipairs(values) do hs[#hs + 1] = { "Levee-Fault", v } end
            local r = lv:request({ path = "/bad" .. i, headers = hs })
            local shown = table.concat(values, " | ")
            local e = H.assert_gw_error(r, 400, "bad-fault-header", "api")
            assert.is_string(e.detail, shown)
            assert.truthy(e.detail:find(want, 1, true), ("%s: detail %q does not name %s"):format(shown, e.detail, want))
        end
        assert.equal(0, requests(up))
    end)
end)

describe("faults and the connection's life", function()
    after_each(H.cleanup)

    it("pipelined requests: a held one keeps its place, a reset ends the connection", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true, at = "client" } })
        local c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { path = "/pl1", headers = { { "Levee-Fault", "delay=300ms" } } }) ..
            H.build_request(lv.port, { path = "/pl2" }))
        local r1 = assert(c:read_response({ timeout = 5 * H.scale }))
        local r2 = assert(c:read_response({ timeout = 5 * H.scale }))
        assert.equal("/pl1", H.json(r1.body).target)
        assert.equal("/pl2", H.json(r2.body).target)
        c:close()

        c = H.conn(lv.port)
        c:send(H.build_request(lv.port, { path = "/pr1", headers = { { "Levee-Fault", "reset" } } }) ..
            H.build_request(lv.port, { path = "/pr2" }))
        local data, why = c:read_all(3 * H.scale)
        assert.equal("", data)
        assert.equal("reset", why)
        c:close()
        assert.equal(2, requests(up))
        assert.equal(0, up:stats().by_path["/pr2"] or 0)
    end)

    it("an abort with a 2xx status is the client's answer, marked fault-injected", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true } })
        local r = lv:request({ path = "/ok-abort", headers = { { "Levee-Fault", "abort=200" } } })
        assert.equal(200, r.status)
        assert.equal("fault-injected", r.headers["levee-error"])
        assert.equal(0, requests(up))
        assert.equal("abort", lv:access_entry("/ok-abort").tries[1].fault)
    end)

    it("shutdown with a request held by a delay and one throttled: levee exits 0 within the drain", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true, at = "client" } }, { drain_timeout = "500ms" })
        local held = H.conn(lv.port)
        held:send(H.build_request(lv.port, { path = "/held", headers = { { "Levee-Fault", "delay=30s" } } }))
        local slow = H.conn(lv.port)
        slow:send(H.build_request(lv.port, { path = "/slowest", headers = {
            { "Levee-Fault", "throttle=10KiB" }, { "X-Test-Body-Size", tostring(4 * 1024 * 1024) } } }))
        assert(slow:read_response({ head_only = true, timeout = 5 * H.scale }))
        H.wait_until(function() return faults(lv, "delay") == 1 end, 5 * H.scale, "the hold to start")
        local t0 = H.now()
        assert.is_true(lv:kill("TERM"))
        local code, how = lv:wait_exit(10 * H.scale)
        local took = H.now() - t0
        assert.same({ 0, "exit" }, { code, how })
        assert.is_true(took < 3 * H.scale, ("exited after %.3fs"):format(took))
        assert.is_true(held:closed(2), "the held client connection is still open")
        assert.is_true(slow:closed(2), "the throttled client connection is still open")
        assert.equal(0, up:stats().by_path["/held"] or 0)
    end)
end)

describe("fault admin API (/faults)", function()
    after_each(H.cleanup)

    it("times: exactly the next N matching attempts fail; the spent rule disappears", function()
        local up = H.upstream()
        local lv = start(up)
        local r, b = post_fault(lv, { route = "api", abort = { status = 503 }, times = 2 })
        assert.equal(201, r.status, r.body)
        assert.is_number(b.id)
        assert.equal(2, b.times_left)
        assert.equal("api", b.route)
        assert.same({ status = 503 }, b.abort)
        local l = list_faults(lv)
        assert.equal(1, #l)
        assert.equal(b.id, l[1].id)
        assert.equal(2, l[1].times_left)
        assert.equal(0, l[1].injected)

        H.assert_gw_error(lv:request({ path = "/t1" }), 503, "fault-injected", "api")
        l = list_faults(lv)
        assert.equal(1, l[1].times_left)
        assert.equal(1, l[1].injected)
        H.assert_gw_error(lv:request({ path = "/t2" }), 503, "fault-injected", "api")
        assert.equal(0, #list_faults(lv))
        for i = 3, 5 do assert.equal(200, lv:request({ path = "/t" .. i }).status) end
        assert.equal(3, requests(up))
        assert.equal(2, faults(lv, "abort"))
        local a = lv:access_entry("/t1")
        assert.is_true(has_flag(a, "fault"))
        assert.equal("abort", a.tries[1].fault)
        assert.is_false(has_flag(lv:access_entry("/t3"), "fault"))
    end)

    it("times = 2 with 3 attempts: 200 after two faulted tries", function()
        local up = H.upstream()
        local lv = start(up, { retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } } })
        assert.equal(201, (post_fault(lv, { route = "api", abort = { status = 503 }, times = 2 })).status)
        local r = lv:request({ path = "/heal" })
        assert.equal(200, r.status)
        local a = lv:access_entry("/heal")
        assert.equal(3, a.attempts)
        assert.equal("503", a.tries[1].outcome)
        assert.equal("abort", a.tries[1].fault)
        assert.equal("503", a.tries[2].outcome)
        assert.equal("abort", a.tries[2].fault)
        assert.equal("200", a.tries[3].outcome)
        assert.is_nil(a.tries[3].fault)
        assert.is_true(has_flag(a, "fault"))
        assert.equal("success", a.retry_stop)
        assert.equal(1, requests(up))
    end)

    it("a classify hook sees an injected attempt as the upstream's status or reset", function()
        local up = H.upstream()
        local lv = start(up, { retry = { attempts = 3, on = {}, backoff = { base = "1ms", max = "2ms" } },
            classify = H.code([[function(a)
                if a.status == 418 or a.error == "reset" then return "retry", 0.001 end
                return "ok"
            end]]) })
        assert.equal(201, (post_fault(lv, { route = "api", abort = { status = 418 }, times = 1 })).status)
        assert.equal(200, lv:request({ path = "/cl1" }).status)
        local a = lv:access_entry("/cl1")
        assert.equal(2, #a.tries)
        assert.equal("418", a.tries[1].outcome)
        assert.equal("abort", a.tries[1].fault)
        assert.equal(201, (post_fault(lv, { route = "api", reset = {}, times = 1 })).status)
        assert.equal(200, lv:request({ path = "/cl2" }).status)
        a = lv:access_entry("/cl2")
        assert.equal(2, #a.tries)
        assert.equal("reset", a.tries[1].outcome)
        assert.equal("reset", a.tries[1].fault)
        assert.equal(2, requests(up))
    end)

    it("levee_faults_injected_total is a counter per route and kind", function()
        local up = H.upstream()
        local lv = start(up, { fault = { headers = true } })
        lv:request({ path = "/m1", headers = { { "Levee-Fault", "abort=503" } } })
        lv:request({ path = "/m2", headers = { { "Levee-Fault", "reset" } } })
        lv:request({ path = "/m3", headers = { { "Levee-Fault", "delay=10ms, throttle=1MiB" } } })
        local text = assert(lv:admin("/metrics")).body
        assert.truthy(text:find("# TYPE levee_faults_injected_total counter", 1, true), text)
        local m = H.parse_metrics(text)
        for _, kind in ipairs({ "abort", "reset", "delay", "throttle" }) do
            assert.equal(1, H.metric(m, "levee_faults_injected_total", { route = "api", kind = kind }), kind)
        end
    end)

    it("percent: roughly that share of the matching requests", function()
        local up = H.upstream()
        local lv = start(up)
        local _, b = post_fault(lv, { route = "api", abort = { status = 503 }, percent = 50 })
        assert.equal(50, b.percent)
        assert.equal(H.null, b.times_left)
        local aborted = 0
        local c = H.conn(lv.port)
        for i = 1, 200 do
            c:send(H.build_request(lv.port, { path = "/pc" }))
            local r = assert(c:read_response({ timeout = 5 * H.scale }))
            if r.status == 503 then
                assert.equal("fault-injected", r.headers["levee-error"])
                aborted = aborted + 1
            else
                assert.equal(200, r.status)
            end
        end
        c:close()
        assert.is_true(aborted >= 60 and aborted <= 140, "aborted " .. aborted)
        assert.equal(200 - aborted, requests(up))
        local l = list_faults(lv)
        assert.equal(aborted, l[1].injected)
        assert.equal(aborted, faults(lv, "abort"))
    end)

    it("match: method and path prefix", function()
        local up = H.upstream()
        local lv = start(up)
        local r, b = post_fault(lv, { route = "api", abort = { status = 503 }, match = { method = "POST", prefix = "/w" } })
        assert.equal(201, r.status, r.body)
        assert.same({ method = "POST", prefix = "/w" }, b.match)
        assert.equal(200, lv:request({ path = "/w/1" }).status)
        assert.equal(200, lv:request({ method = "POST", path = "/x", body = "" }).status)
        H.assert_gw_error(lv:request({ method = "POST", path = "/w/2", body = "" }), 503, "fault-injected", "api")
        H.assert_gw_error(lv:request({ method = "POST", path = "/write", body = "" }), 503, "fault-injected", "api")
        assert.equal(2, requests(up))
        assert.equal(2, list_faults(lv)[1].injected)
    end)

    it("at = client: answered at once, not retried, the breaker does not see it", function()
        local up = H.upstream()
        local lv = start(up, { retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" } },
            breaker = { consecutive_failures = 1, open_for = "30s" } })
        local r, b = post_fault(lv, { route = "api", abort = { status = 503 }, at = "client", times = 3 })
        assert.equal(201, r.status, r.body)
        assert.equal("client", b.at)
        for i = 1, 3 do
            H.assert_gw_error(lv:request({ path = "/ac" .. i }), 503, "fault-injected", "api")
            assert.equal(0, #lv:access_entry("/ac" .. i).tries)
        end
        assert.equal(0, requests(up))
        -- The breaker (one failure opens it) saw nothing.
        assert.equal(200, lv:request({ path = "/ac-ok" }).status)
        assert.equal(1, requests(up))
        -- A reset for the client: the connection is reset.
        assert.equal(201, (post_fault(lv, { route = "api", reset = true, at = "client", times = 1 })).status)
        local data, why = H.raw(lv.port, H.build_request(lv.port, { path = "/ac-rst" }), { timeout = 3 * H.scale })
        assert.equal("", data)
        assert.equal("reset", why)
        assert.equal(1, requests(up))
    end)

    it("delay, reset and throttle rules, in both spellings", function()
        local up = H.upstream()
        local lv = start(up)
        local r1, d1 = post_fault(lv, { route = "api", delay = { time = "200ms" }, match = { prefix = "/d1" } })
        local r2, d2 = post_fault(lv, { route = "api", delay = { ms = 200 }, match = { prefix = "/d2" } })
        local r3, t1 = post_fault(lv, { route = "api", throttle = { rate = "10KiB" }, match = { prefix = "/t1" } })
        local r4, t2 = post_fault(lv, { route = "api", throttle = { rate = 10240 }, match = { prefix = "/t2" } })
        local r5, x1 = post_fault(lv, { route = "api", reset = {}, match = { prefix = "/x1" } })
        local r6, x2 = post_fault(lv, { route = "api", reset = true, match = { prefix = "/x2" } })
        for _, r in ipairs({ r1, r2, r3, r4, r5, r6 }) do assert.equal(201, r.status, r.body) end
        assert.same({ ms = 200 }, d1.delay)
        assert.same({ ms = 200 }, d2.delay)
        assert.same({ rate = 10240 }, t1.throttle)
        assert.same({ rate = 10240 }, t2.throttle)
        assert.same({}, x1.reset)
        assert.same({}, x2.reset)
        assert.equal("upstream", x1.at)
        assert.equal(6, #list_faults(lv))

        for _, p in ipairs({ "/d1", "/d2" }) do
            local dt, r = timed(function() return lv:request({ path = p }) end)
            assert.equal(200, r.status)
            assert.is_true(dt >= 0.19, ("%s took %.3fs"):format(p, dt))
            assert.equal("delay", lv:access_entry(p).tries[1].fault)
        end
        for _, p in ipairs({ "/x1", "/x2" }) do
            H.assert_gw_error(lv:request({ path = p }), 502, "upstream-reset", "api")
            assert.equal("reset", lv:access_entry(p).tries[1].fault)
        end
        assert.equal(2, requests(up))
        for _, p in ipairs({ "/t1", "/t2" }) do
            local dt, r = timed(function()
                return lv:request({ path = p, timeout = 10 * H.scale, headers = { { "X-Test-Body-Size", "20480" } } })
            end)
            assert.equal(200, r.status)
            assert.equal(20480, #r.body)
            assert.is_true(about(dt, 2), ("%s: 20KiB at 10KiB/s took %.3fs"):format(p, dt))
        end
        assert.equal(2, faults(lv, "delay"))
        assert.equal(2, faults(lv, "reset"))
        assert.equal(2, faults(lv, "throttle"))
    end)

    it("a client delay rule holds the request outside the route timeout", function()
        local up = H.upstream()
        local lv = start(up, { timeout = "200ms" })
        local r, b = post_fault(lv, { route = "api", delay = { ms = 400 }, at = "client", times = 1 })
        assert.equal(201, r.status, r.body)
        local dt
        dt, r = timed(function() return lv:request({ path = "/cd" }) end)
        assert.equal(200, r.status)
        assert.is_true(dt >= 0.39, ("took %.3fs"):format(dt))
        assert.is_nil(lv:access_entry("/cd").tries[1].fault)
        assert.equal(0, #list_faults(lv))
        -- The same delay at the upstream counts against the timeout.
        assert.equal(201, (post_fault(lv, { route = "api", delay = { ms = 400 }, times = 1 })).status)
        H.assert_gw_error(lv:request({ path = "/ud" }), 504, "deadline-exceeded", "api")
        assert.equal(1, requests(up))
        assert.is_number(b.id)
    end)

    it("rules outlive a reload; a rule for a route that is gone matches nothing", function()
        local up = H.upstream()
        local lv = start(up)
        local _, b = post_fault(lv, { route = "api", abort = { status = 503 } })
        H.assert_gw_error(lv:request({ path = "/r1" }), 503, "fault-injected", "api")
        local config = { admin = true, upstreams = { api = { servers = { up:addr() } } },
            routes = { { name = "other", upstream = "api", retry = { attempts = 1 } } } }
        lv:write_config(config)
        assert.is_true(lv:reload())
        lv:wait_log("configuration reloaded: generation 2", 5 * H.scale, true)
        assert.equal(200, lv:request({ path = "/r2" }).status)
        local l = list_faults(lv)
        assert.equal(1, #l)
        assert.equal(b.id, l[1].id)
        -- A new rule must name a route of the configuration in force.
        local r = post_fault(lv, { route = "api", abort = { status = 503 } })
        assert.equal(400, r.status)
        config.routes[1].name = "api"
        lv:write_config(config)
        assert.is_true(lv:reload())
        lv:wait_log("configuration reloaded: generation 3", 5 * H.scale, true)
        H.assert_gw_error(lv:request({ path = "/r3" }), 503, "fault-injected", "api")
        assert.equal(1, requests(up))
    end)

    it("GET /faults/ID shows one rule; 404 for an unknown one", function()
        local up = H.upstream()
        local lv = start(up)
        local _, b = post_fault(lv, { route = "api", abort = { status = 502 }, times = 3, percent = 25.5,
            match = { prefix = "/p" } })
        local r = assert(lv:admin("/faults/" .. b.id))
        assert.equal(200, r.status)
        local one = H.json(r.body)
        assert.equal(b.id, one.id)
        assert.equal(3, one.times_left)
        assert.equal(25.5, one.percent)
        assert.equal(0, one.injected)
        assert.equal("upstream", one.at)
        assert.same({ prefix = "/p" }, one.match)
        assert.equal(404, lv:admin("/faults/" .. (b.id + 1)).status)
        assert.equal(404, lv:admin("/faults/x1").status)
    end)

    it("DELETE one (404 when unknown) and DELETE all", function()
        local up = H.upstream()
        local lv = start(up)
        local _, a = post_fault(lv, { route = "api", abort = { status = 503 }, match = { prefix = "/a" } })
        local _, b = post_fault(lv, { route = "api", abort = { status = 500 }, match = { prefix = "/b" } })
        local _, c = post_fault(lv, { route = "api", reset = {}, match = { prefix = "/c" } })
        assert.are_not.equal(a.id, b.id)
        assert.equal(3, #list_faults(lv))
        local one = assert(lv:admin("/faults/" .. b.id))
        assert.equal(200, one.status)
        assert.equal(500, H.json(one.body).abort.status)

        local r = lv:admin({ method = "DELETE", path = "/faults/" .. a.id })
        assert.equal(200, r.status)
        assert.same({ deleted = a.id }, H.json(r.body))
        r = lv:admin({ method = "DELETE", path = "/faults/" .. a.id })
        assert.equal(404, r.status)
        assert.is_string(H.json(r.body).error)
        assert.equal(404, lv:admin({ method = "DELETE", path = "/faults/999999" }).status)
        assert.equal(404, lv:admin({ method = "DELETE", path = "/faults/abc" }).status)
        local l = list_faults(lv)
        assert.equal(2, #l)
        assert.equal(b.id, l[1].id)
        assert.equal(c.id, l[2].id)
        assert.equal(200, lv:request({ path = "/a" }).status)
        H.assert_gw_error(lv:request({ path = "/b" }), 500, "fault-injected", "api")

        r = lv:admin({ method = "DELETE", path = "/faults" })
        assert.equal(200, r.status)
        assert.same({ deleted = 2 }, H.json(r.body))
        assert.equal(0, #list_faults(lv))
        assert.equal(200, lv:request({ path = "/b" }).status)
        assert.equal(200, lv:request({ path = "/c" }).status)
        assert.same({ deleted = 0 }, H.json(lv:admin({ method = "DELETE", path = "/faults" }).body))
    end)

    it("bad input: 400 with the reason in error", function()
        local up = H.upstream()
        local lv = start(up)
        local cases = {
            { "{not json", "JSON" },
            { "[]", "object" },
            { '{"route":"api","route":"api","abort":{"status":503}}', "JSON" },
            { { route = "api", abort = { status = 503 }, bogus = 1 }, "bogus" },
            { { route = "nope", abort = { status = 503 } }, "nope" },
            { { abort = { status = 503 } }, "route" },
            { { route = "api" }, "abort" },
            { { route = "api", times = 2 }, "abort" },
            { { route = "api", abort = { status = 503 }, times = 0 }, "times" },
            { { route = "api", abort = { status = 503 }, times = "2" }, "times" },
            { { route = "api", abort = { status = 503 }, times = 1.5 }, "times" },
            { { route = "api", abort = { status = 503 }, percent = 0 }, "percent" },
            { { route = "api", abort = { status = 503 }, percent = 101 }, "percent" },
            { { route = "api", abort = { status = 503 }, percent = "50" }, "percent" },
            { { route = "api", abort = { status = 99 } }, "status" },
            { { route = "api", abort = {} }, "status" },
            { { route = "api", abort = { status = 503, extra = 1 } }, "extra" },
            { { route = "api", delay = { time = "soon" } }, "delay" },
            { { route = "api", delay = { ms = 0 } }, "delay" },
            { { route = "api", throttle = { rate = "fast" } }, "throttle" },
            { { route = "api", throttle = { rate = 0 } }, "throttle" },
            { { route = "api", reset = false }, "reset" },
            { { route = "api", abort = { status = 503 }, at = "server" }, "at" },
            { { route = "api", abort = { status = 503 }, match = { method = 7 } }, "method" },
            { { route = "api", abort = { status = 503 }, match = { prefix = "w" } }, "prefix" },
            { { route = "api", abort = { status = 503 }, match = { host = "x" } }, "host" },
        }
        for i, case in ipairs(cases) do
            local r = post_fault(lv, case[1])
            local shown = type(case[1]) == "string" and case[1] or H.json_encode(case[1])
            assert.equal(400, r.status, shown .. " -> " .. r.body)
            local e = H.json(r.body).error
            assert.is_string(e, shown)
            assert.truthy(e:find(case[2], 1, true), ("case %d %s: error %q does not name %s"):format(i, shown, e, case[2]))
        end
        assert.equal(0, #list_faults(lv))
        -- Other methods.
        local r = lv:admin({ method = "PUT", path = "/faults", body = "{}" })
        assert.equal(405, r.status)
        assert.equal(200, lv:request({ path = "/still-fine" }).status)
    end)
end)

describe("fault rules with workers = 2", function()
    after_each(H.cleanup)

    it("times = 5 over 20 concurrent connections: exactly 5 aborted", function()
        local up = H.upstream()
        local lv = start(up, nil, { workers = 2 })
        assert.equal(201, (post_fault(lv, { route = "api", abort = { status = 503 }, times = 5 })).status)
        local conns = {}
        for i = 1, 20 do
            conns[i] = assert(H.conn(lv.port))
        end
        for i = 1, 20 do
            assert(conns[i]:send(H.build_request(lv.port, { path = "/w" .. i })))
        end
        local aborted, ok = 0, 0
        for i = 1, 20 do
            local r = assert(conns[i]:read_response({ timeout = 5 * H.scale }))
            if r.status == 503 then
                assert.equal("fault-injected", r.headers["levee-error"])
                aborted = aborted + 1
            elseif r.status == 200 then
                ok = ok + 1
            end
            conns[i]:close()
        end
        assert.equal(5, aborted)
        assert.equal(15, ok)
        assert.equal(15, requests(up))
        assert.equal(0, #list_faults(lv))
        assert.equal(5, faults(lv, "abort"))
        local entries = lv:wait_access(20)
        assert.equal(20, #entries)

        -- The same for the client placement.
        assert.equal(201, (post_fault(lv, { route = "api", abort = { status = 429 }, times = 5, at = "client" })).status)
        for i = 1, 20 do
            conns[i] = assert(H.conn(lv.port))
        end
        for i = 1, 20 do
            assert(conns[i]:send(H.build_request(lv.port, { path = "/wc" .. i })))
        end
        aborted, ok = 0, 0
        for i = 1, 20 do
            local r = assert(conns[i]:read_response({ timeout = 5 * H.scale }))
            if r.status == 429 then aborted = aborted + 1 elseif r.status == 200 then ok = ok + 1 end
            conns[i]:close()
        end
        assert.equal(5, aborted)
        assert.equal(15, ok)
        assert.equal(30, requests(up))
        assert.equal(10, faults(lv, "abort"))
    end)
end)
