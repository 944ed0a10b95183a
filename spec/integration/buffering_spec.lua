-- Request buffering and slow request bodies (README, "Request buffering"): a body up to
-- `request_buffer` is received before an upstream connection is taken, under
-- limits.body_timeout; a larger body streams under limits.body_rate. Slow clients must never
-- hold upstream capacity, and a client slowed down by our own backpressure is never punished.
-- Real levee, real lv-testupstream, real sockets.

local H = require("helpers")

local KiB = 1024

local function start(opts)
    local up = opts.up or H.upstream({ name = "u" })
    local route = { name = "r", upstream = "u" }
    for k, v in pairs(opts.route or {}) do route[k] = v end
    local lv = H.levee({
        config = {
            access_log = "stdout",
            limits = opts.limits,
            upstreams = { u = { servers = opts.servers or { up:addr() }, pool = opts.pool } },
            routes = { route },
        },
    })
    return lv, up
end

local function post_head(path, len, extra)
    return ("POST %s HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n%s\r\n"):format(path, len, extra or "")
end

-- Requests that reached the upstream, through a sentinel: once levee answered the sentinel,
-- whatever it had forwarded before it has been counted by the upstream too.
local function forwarded(lv, up, path)
    local r = assert(lv:request({ path = "/sentinel" }))
    assert.equal(200, r.status)
    return up:stats().by_path[path] or 0
end

describe("request buffering #buffering", function()
    after_each(function() H.cleanup() end)

    it("100+ slow bodies hold no upstream connection; a normal request is served at once", function()
        local lv, up = start({
            pool = { max_connections = 4, queue_size = 8 },
            limits = { body_timeout = "30s" },
        })
        local slow = {}
        for i = 1, 120 do
            local c = assert(H.conn(lv.port))
            -- the audit's reproducer: a 100000-byte body announced, three bytes sent
            assert(c:send(post_head("/slow", 100000) .. "abc"))
            slow[i] = c
        end
        -- every slow connection is open and waiting (none was answered or closed)
        for _, c in ipairs(slow) do assert.is_false(c:closed()) end
        local t0 = H.now()
        for i = 1, 20 do
            local r = assert(lv:request({ path = "/normal/" .. i }))
            assert.equal(200, r.status)
        end
        assert.is_true(H.now() - t0 < 2 * H.scale, "20 normal requests took " .. (H.now() - t0) .. " s")
        local s = up:stats()
        assert.equal(0, s.by_path["/slow"] or 0)
        -- only the normal requests' pooled connection(s) reached the upstream
        assert.is_true(s.connections <= 4, "upstream connections " .. s.connections)
        for _, c in ipairs(slow) do c:close() end
    end)

    it("a buffered body not received within limits.body_timeout gets 408 and never reaches the upstream", function()
        local lv, up = start({ limits = { body_timeout = "1s" } })
        local c = assert(H.conn(lv.port))
        local t0 = H.now()
        assert(c:send(post_head("/stall", 1000) .. ("x"):rep(500)))
        local r = assert(c:read_response({ timeout = 10 }))
        local took = H.now() - t0
        H.assert_gw_error(r, 408, "request-timeout", "r")
        assert.truthy(r.body:find("limits.body_timeout", 1, true))
        assert.is_true(took >= 0.9 and took < 5 * H.scale, "408 after " .. took .. " s")
        assert.is_true(c:closed(3), "connection closed after the 408")
        assert.equal(0, forwarded(lv, up, "/stall"))
        assert.equal(1, up:stats().connections) -- the sentinel's connection only
        local a = lv:wait_access(2)[1]
        assert.equal(408, a.status)
        assert.equal("request-timeout", a.error)
        assert.equal("r", a.route)
    end)

    it("a body that arrives in pieces within body_timeout is forwarded whole, in one go", function()
        local lv, up = start({ limits = { body_timeout = "5s" } })
        local body = H.pattern(40 * KiB)
        local c = assert(H.conn(lv.port))
        assert(c:send(post_head("/pieces", #body) .. body:sub(1, 20 * KiB)))
        -- half the body in: the upstream has not been contacted yet
        assert.equal(0, forwarded(lv, up, "/pieces"))
        assert.equal(1, up:stats().connections) -- the sentinel's
        assert(c:send(body:sub(20 * KiB + 1)))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal(#body, e.body_len)
        assert.equal(H.fnv1a64(body), e.body_sha)
    end)

    it("a buffered POST is retried after a 503 with its whole body (non_idempotent allowed)", function()
        local up = H.upstream({ n = 2, name = "u" })
        local lv = start({
            up = up, servers = up:addrs(),
            route = { retry = { attempts = 2, on = { "503" }, non_idempotent = true,
                backoff = { base = "1ms", max = "1ms" } } },
        })
        local body = H.pattern(3000)
        local c = assert(H.conn(lv.port))
        assert(c:send(post_head("/retry", #body, "X-Test-Plan: rb:503,200\r\n") .. body:sub(1, 1000)))
        assert.equal(0, forwarded(lv, up, "/retry"))
        assert(c:send(body:sub(1001)))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal(#body, e.body_len)
        assert.equal(H.fnv1a64(body), e.body_sha)
        local a = lv:wait_access(2)[2]
        assert.equal(2, a.attempts)
        assert.same({ "503", "200" }, { a.tries[1].outcome, a.tries[2].outcome })
    end)

    it("request_buffer = false streams at once, as before", function()
        local lv, up = start({ route = { request_buffer = false } })
        local c = assert(H.conn(lv.port))
        assert(c:send(post_head("/stream", 10000) .. "abc"))
        H.wait_until(function() return up:stats().active_connections == 1 end, 5,
            "the upstream to get the streamed request")
        assert(c:send(("z"):rep(9997)))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal(10000, H.json(r.body).body_len)
    end)

    it("a streamed body slower than limits.body_rate gets 408 and frees its upstream connection", function()
        local lv, up = start({
            route = { request_buffer = "1KiB" },
            limits = { body_timeout = "1s", body_rate = "4KiB" },
        })
        local c = assert(H.conn(lv.port))
        -- the buffered KiB goes at once, then the body crawls at about 100 bytes a second
        assert(c:send(post_head("/crawl", 100000) .. ("a"):rep(2 * KiB)))
        H.wait_until(function() return up:stats().active_connections == 1 end, 5,
            "the upstream connection for the streamed body")
        local t0, r = H.now(), nil
        for _ = 1, 100 do
            if not c:send(("b"):rep(10)) then break end
            r = c:read_response({ timeout = 0.1 })
            if r then break end
        end
        assert(r, "no 408 while the body crawled")
        H.assert_gw_error(r, 408, "request-timeout", "r")
        assert.truthy(r.body:find("limits.body_rate", 1, true))
        assert.is_true(H.now() - t0 < 6 * H.scale)
        H.wait_until(function() return up:stats().active_connections == 0 end, 5,
            "levee to close the upstream connection")
    end)

    it("a streamed body at a good rate passes, however long it takes", function()
        local lv, up = start({
            route = { request_buffer = "1KiB" },
            limits = { body_timeout = "500ms", body_rate = "1KiB" },
        })
        local body = H.pattern(24 * KiB)
        local c = assert(H.conn(lv.port))
        assert(c:send(post_head("/steady", #body)))
        -- 2 KiB every 100 ms (about 20 KiB/s) over 1.2 s: more than two rate windows
        for i = 0, #body - 1, 2 * KiB do
            assert(c:send(body:sub(i + 1, i + 2 * KiB)))
            H.proc.sleep(0.1) -- pacing the client is the point of this test, not a wait for levee
        end
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal(H.fnv1a64(body), H.json(r.body).body_sha)
        assert.is_not_nil(up)
    end)

    it("a client held back by a slow upstream is not timed out by body_rate", function()
        local lv, up = start({
            route = { request_buffer = false },
            limits = { body_timeout = "500ms", body_rate = "1KiB" },
        })
        local body = H.pattern(4 * 1024 * KiB)
        local c = assert(H.conn(lv.port))
        -- the upstream reads nothing for 2.5 s: levee's queue fills and it stops reading us
        assert(c:send(post_head("/held", #body, "X-Test-Action: slow-read\r\nX-Test-Delay-Ms: 2500\r\n")))
        assert(c:send(body))
        local r = assert(c:read_response({ timeout = 20 }))
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal(#body, e.body_len)
        assert.equal(H.fnv1a64(body), e.body_sha)
        assert.is_not_nil(up)
    end)

    it("limits.body_timeout, body_rate and request_buffer are validated", function()
        local code, out = H.run_levee({ "check", H.tmpfile([[
return {
  listen = { "127.0.0.1:1" },
  limits = { body_timeout = "0s", body_rate = "fast" },
  upstreams = { u = { servers = { "127.0.0.1:2" } } },
  routes = { { name = "r", upstream = "u", request_buffer = true } },
}
]], "levee.lua") })
        assert.equal(1, code)
        assert.truthy(out:find("limits.body_timeout: expected a duration > 0", 1, true), out)
        assert.truthy(out:find("limits.body_rate: expected a size", 1, true), out)
        assert.truthy(out:find("routes[1].request_buffer: expected a size", 1, true), out)
    end)
end)
