-- The order of the request path (README "Admission control"): route, rate limit, bulkhead,
-- idempotency, breaker, attempts. Each test shows one pair in its order with the upstream's
-- request count as the witness of what reached it.
local H = require("helpers")

local function start(up, route_extra)
    local route = { name = "api", upstream = "api", retry = { attempts = 1 } }
    for k, v in pairs(route_extra or {}) do route[k] = v end
    return H.levee({ config = { admin = true,
        upstreams = { api = { servers = { up:addr() } } },
        routes = { route } } })
end

local function post(lv, key, headers)
    local h = { { "Idempotency-Key", key }, { "Content-Type", "application/json" } }
    for _, x in ipairs(headers or {}) do h[#h + 1] = x end
    return lv:request({ method = "POST", path = "/pay", headers = h, body = '{"amount":1}' })
end

describe("the request path's order", function()
    after_each(H.cleanup)

    it("replays a stored answer while the breaker is open: idempotency comes first", function()
        local up = H.upstream()
        local lv = start(up, { idempotency = true,
            breaker = { consecutive_failures = 2, open_for = "60s" } })
        assert.equal(200, post(lv, "k1").status)
        -- two failures open the breaker
        for i = 1, 2 do
            assert.equal(503, post(lv, "f" .. i, { { "X-Test-Status", "503" } }).status)
        end
        local open = post(lv, "k2")
        assert.equal(503, open.status)
        assert.equal("breaker-open", open.headers["levee-error"])
        local before = up:stats().requests
        -- the stored answer of k1 is served, though the breaker refuses new work
        local again = post(lv, "k1")
        assert.equal(200, again.status)
        assert.equal("true", again.headers["idempotent-replayed"])
        assert.equal(before, up:stats().requests)
    end)

    it("refuses over the rate limit before the breaker or idempotency see the request", function()
        local up = H.upstream()
        local lv = start(up, { idempotency = true, breaker = { consecutive_failures = 1 },
            rate_limit = { rate = 1, per = "1h", key = "header:X-Api-Key" } })
        assert.equal(200, post(lv, "a1", { { "X-Api-Key", "t" } }).status)
        local r = post(lv, "a2", { { "X-Api-Key", "t" }, { "X-Test-Status", "503" } })
        assert.equal(429, r.status)
        assert.equal("rate-limited", r.headers["levee-error"])
        -- the refused request reached nothing: the upstream saw one request, the breaker no
        -- failure, and its key was never stored (a retry after the limit is a fresh request)
        assert.equal(1, up:stats().requests)
        local st = lv:status()
        assert.equal("closed", st.routes[1].breaker.state)
        assert.equal(200, post(lv, "a2", { { "X-Api-Key", "u" } }).status)
    end)

    it("refuses at the bulkhead before idempotency takes the key", function()
        local up = H.upstream()
        local lv = start(up, { idempotency = true, concurrency = { max = 1 } })
        local slow = H.conn(lv.port)
        slow:send(H.build_request(lv.port, { method = "POST", path = "/pay", body = "{}",
            headers = { { "Idempotency-Key", "s1" }, { "X-Test-Delay-Ms", "1500" } } }))
        H.wait_until(function() return up:stats().requests == 1 end, 5 * H.scale,
            "the slow request to reach the upstream")
        local r = post(lv, "b1")
        assert.equal(503, r.status)
        assert.equal("concurrency-limit", r.headers["levee-error"])
        assert.equal("1", r.headers["retry-after"])
        assert.equal(200, slow:read_response().status)
        -- b1 was not taken by the store while refused: sent again, it goes through
        assert.equal(200, post(lv, "b1").status)
    end)
end)
