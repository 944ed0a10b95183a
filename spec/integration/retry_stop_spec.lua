-- Why a request was not retried (README "When levee retries"): the access log's retry_stop on
-- every request, and levee_retry_decisions_total{route,decision} counting each decision.
local H = require("helpers")

local function start(up, route_extra)
    local route = { name = "api", upstream = "api",
        retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx", "reset" } } }
    for k, v in pairs(route_extra or {}) do route[k] = v end
    return H.levee({ config = { admin = true,
        upstreams = { api = { servers = { up:addr() } } },
        routes = { route } } })
end

local function decisions(lv, decision)
    return lv:metric(('levee_retry_decisions_total{route="api",decision="%s"}'):format(decision)) or 0
end

describe("retry_stop", function()
    after_each(H.cleanup)

    it("says success, after retries too, and counts each decision", function()
        local up = H.upstream()
        local lv = start(up)
        assert.equal(200, lv:request({ path = "/ok" }).status)
        assert.equal("success", lv:access_entry("/ok").retry_stop)
        local r = lv:request({ path = "/again", headers = { { "X-Test-Plan", "again:503,503,200" } } })
        assert.equal(200, r.status)
        local e = lv:access_entry("/again")
        assert.equal("success", e.retry_stop)
        assert.equal(3, e.attempts)
        assert.equal(2, decisions(lv, "success"))
        assert.equal(2, decisions(lv, "retry"))
    end)

    it("says attempts when every attempt failed and verdict when the outcome is not retried", function()
        local up = H.upstream()
        local lv = start(up)
        assert.equal(503, lv:request({ path = "/down", headers = { { "X-Test-Status", "503" } } }).status)
        local e = lv:access_entry("/down")
        assert.equal("attempts", e.retry_stop)
        assert.equal(3, e.attempts)
        assert.equal(404, lv:request({ path = "/missing", headers = { { "X-Test-Status", "404" } } }).status)
        assert.equal("verdict", lv:access_entry("/missing").retry_stop)
        assert.equal(1, decisions(lv, "attempts"))
        assert.equal(1, decisions(lv, "verdict"))
        assert.equal(2, decisions(lv, "retry"))
    end)

    it("says not-replayable for a POST without a key after a reset, and null without a route", function()
        local up = H.upstream()
        local lv = start(up)
        local r = lv:request({ method = "POST", path = "/pay", body = "x",
            headers = { { "X-Test-Action", "reset" } } })
        assert.equal(502, r.status)
        assert.equal("not-replayable", lv:access_entry("/pay").retry_stop)
        assert.equal(1, up:stats().requests)
        local nr = H.levee({ config = { upstreams = { api = { servers = { up:addr() } } },
            routes = { { name = "only", match = { prefix = "/only" }, upstream = "api" } } } })
        assert.equal(404, nr:request({ path = "/elsewhere" }).status)
        assert.equal(H.null, nr:access_entry("/elsewhere").retry_stop)
    end)

    it("says budget when the retry budget is spent and breaker-open when the breaker refuses", function()
        local up = H.upstream()
        local lv = start(up, { retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" },
            budget = { ratio = 0.0, min_per_second = 0 } } })
        assert.equal(503, lv:request({ path = "/spent", headers = { { "X-Test-Status", "503" } } }).status)
        assert.equal("budget", lv:access_entry("/spent").retry_stop)
        assert.equal(1, decisions(lv, "budget"))

        local up2 = H.upstream()
        local lv2 = start(up2, { retry = { attempts = 1, on = { "5xx" } }, breaker = { consecutive_failures = 2, open_for = "30s" } })
        for i = 1, 2 do
            assert.equal(503, lv2:request({ path = "/f" .. i, headers = { { "X-Test-Status", "503" } } }).status)
            assert.equal("attempts", lv2:access_entry("/f" .. i).retry_stop)
        end
        local r = lv2:request({ path = "/open" })
        assert.equal(503, r.status)
        assert.equal("breaker-open", r.headers["levee-error"])
        assert.equal("breaker-open", lv2:access_entry("/open").retry_stop)
        assert.equal(1, decisions(lv2, "breaker-open"))
        assert.equal(2, up2:stats().requests)
    end)

    it("says response-started when the response broke after its head went out, and deadline when no try fits", function()
        local up = H.upstream()
        local lv = start(up, { retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" },
            on = { "5xx", "reset", "protocol-error", "timeout" } } })
        lv:request({ path = "/cut", headers = { { "X-Test-Action", "truncate" }, { "X-Test-Body-Size", "100000" } } })
        assert.equal("response-started", lv:access_entry("/cut").retry_stop)
        assert.equal(1, up:stats().requests)

        local up2 = H.upstream()
        local lv2 = start(up2, { timeout = "300ms", try_timeout = "200ms",
            retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "timeout" } } })
        local r = lv2:request({ path = "/slow", headers = { { "X-Test-Delay-Ms", "1000" } } })
        assert.equal(504, r.status)
        assert.equal("deadline", lv2:access_entry("/slow").retry_stop)
    end)

    it("says body-too-large when a body larger than the replay buffer would have to be sent again", function()
        local up = H.upstream()
        local lv = start(up, { retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx" },
            buffer = "1KiB" } })
        local r = lv:request({ method = "PUT", path = "/big", body = H.pattern(64 * 1024),
            headers = { { "X-Test-Status", "503" } } })
        assert.equal(503, r.status)
        assert.equal("body-too-large", lv:access_entry("/big").retry_stop)
        assert.equal(1, up:stats().requests)
        assert.equal(1, decisions(lv, "body-too-large"))
    end)
end)
