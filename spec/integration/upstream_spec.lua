-- The upstream → gateway side, end to end: the real levee in front of the real
-- lv-testupstream, programmed per request with X-Test-* headers. Covers
-- (README, "How levee proxies") and the failure shapes of "Outcomes and classification": refused
-- connections, resets, closes, garbage and invalid response heads, bad framing, truncated
-- bodies, hangs (try_timeout and the route deadline), pool overflow, stale pooled
-- connections, keep-alive reuse, balancing and name resolution. Every gateway error is checked
-- for its status, its Levee-Error token and its JSON body; every bad response is also checked
-- on the upstream side: the connection that carried it is closed and never reused.

local H = require("helpers")
local socket = require("socket")

-- X-Test-Raw text for the bytes `s` (lv-testupstream decodes \r \n \t \\ \" \0 \xHH).
local function esc(s)
    return (s:gsub("[%c\\\"\128-\255]", function(ch)
        if ch == "\r" then return "\\r" end
        if ch == "\n" then return "\\n" end
        if ch == "\\" then return "\\\\" end
        if ch == "\"" then return "\\\"" end
        if ch == "\0" then return "\\0" end
        return ("\\x%02X"):format(ch:byte())
    end))
end

-- Headers that make lv-testupstream answer with exactly `bytes`; keep = true leaves its
-- connection open afterwards (so only levee can decide not to reuse it).
local function raw(bytes, keep, extra)
    local h = { { "X-Test-Action", "raw" }, { "X-Test-Raw", esc(bytes) } }
    if keep then h[#h + 1] = { "X-Test-Keep", "1" } end
    for _, kv in ipairs(extra or {}) do h[#h + 1] = kv end
    return h
end

local assert_gw_error = H.assert_gw_error

local function count(t, k) return (t and t[tostring(k)]) or 0 end

describe("upstream → gateway", function()
    local up, lv, hole, hole_port

    -- levee with one route per upstream shape. Upstream listener 1 serves "main" (and the
    -- catch-all route), listener 2 the pools and balancers; `hole` is a bound port nothing
    -- listens on, so connecting to it is refused.
    -- `workers`: the workers key (nil: H.levee's LEVEE_TEST_WORKERS applies).
    local function launch(workers)
        local refused = "127.0.0.1:" .. hole_port
        lv = H.levee({
            config = {
                workers = workers,
                upstreams = {
                    main = { servers = { up:addr(1) } },
                    refused = { servers = { refused } },
                    half = { servers = { refused, up:addr(2) } },
                    pair = { servers = { up:addr(1), up:addr(2) }, balance = "round_robin" },
                    lr = { servers = { up:addr(1), up:addr(2) }, balance = "least_request" },
                    byname = { servers = { "localhost:" .. up.ports[1] } },
                    single = { servers = { up:addr(2) }, pool = { max_connections = 1, queue_size = 0 } },
                    queued = { servers = { up:addr(2) },
                        pool = { max_connections = 1, queue_size = 1, queue_timeout = "200ms" } },
                    handoff = { servers = { up:addr(2) },
                        pool = { max_connections = 1, queue_size = 1, queue_timeout = "5s" } },
                },
                routes = {
                    { name = "refused", match = { prefix = "/refused" }, upstream = "refused" },
                    { name = "half", match = { prefix = "/half" }, upstream = "half" },
                    { name = "bad", match = { prefix = "/bad" }, upstream = "main", try_timeout = "2s" },
                    { name = "try", match = { prefix = "/try" }, upstream = "main", try_timeout = "300ms" },
                    { name = "deadline", match = { prefix = "/deadline" }, upstream = "main", timeout = "400ms" },
                    { name = "slow", match = { prefix = "/slow" }, upstream = "main", timeout = "1s" },
                    { name = "rr", match = { prefix = "/rr" }, upstream = "pair" },
                    { name = "lr", match = { prefix = "/lr" }, upstream = "lr", try_timeout = "1500ms" },
                    { name = "byname", match = { prefix = "/byname" }, upstream = "byname" },
                    { name = "single", match = { prefix = "/single" }, upstream = "single", try_timeout = "1s" },
                    { name = "queued", match = { prefix = "/queued" }, upstream = "queued" },
                    { name = "handoff", match = { prefix = "/handoff" }, upstream = "handoff" },
                    { name = "main", upstream = "main" },
                },
            },
        })
    end

    local function start()
        up = H.upstream({ n = 2, name = "u" })
        hole = socket.tcp()
        assert(hole:bind("127.0.0.1", 0))
        hole_port = select(2, hole:getsockname())
        launch()
    end

    -- For a test about one pool's limits or one balancer's choices: upstream pools, and the
    -- balancers that pick from them, are per worker (README "Workers"), and which worker
    -- accepts a client connection is not ours to choose. Starts levee again with one worker.
    local function one_worker()
        lv:stop()
        launch(1)
    end

    local function get(path, headers, extra)
        local o = { path = path, headers = headers or {} }
        for k, v in pairs(extra or {}) do o[k] = v end
        local r, err, got = lv:request(o)
        assert(r, ("request %s: %s (got %q)"):format(path, tostring(err), tostring(got)))
        return r
    end

    -- get() on the client connection c. Requests that must meet the same pooled upstream
    -- connection go on one client connection: it stays with the worker that accepted it, and
    -- pools are per worker (README "Workers").
    local function get_on(c, path, headers, extra)
        local o = { path = path, headers = headers or {} }
        for k, v in pairs(extra or {}) do o[k] = v end
        assert(c:send(H.build_request(lv.port, o)))
        local r, err, got = c:read_response()
        assert(r, ("request %s: %s (got %q)"):format(path, tostring(err), tostring(got)))
        return r
    end

    -- The same levee process still proxies a plain request.
    local function assert_serves()
        assert.is_true(lv:alive())
        local r = get("/alive")
        assert.equal(200, r.status)
        assert.equal("/alive", H.json(r.body).target)
    end

    before_each(start)
    after_each(function()
        if hole then hole:close() end
        hole = nil
        H.cleanup()
    end)

    -------------------------------------------------------------------------------------
    describe("connect failures", function()
        it("answers 502 connect-failure naming the refused address, keeping the client's request id", function()
            local r = get("/refused/x", { { "X-Request-Id", "req-refused-1" } })
            local e = assert_gw_error(r, 502, "connect-failure", "refused")
            assert.equal("req-refused-1", e.request_id)
            assert.matches("127.0.0.1:" .. hole_port, e.detail, 1, true)
            lv:wait_log("127.0.0.1:" .. hole_port, 5, true)
            -- a generated request id too
            local r2 = get("/refused/y")
            local e2 = assert_gw_error(r2, 502, "connect-failure", "refused")
            assert.are_not.equal("req-refused-1", e2.request_id)
            local entries = lv:wait_access(2)
            assert.equal("connect-failure", entries[1].error)
            assert.equal("127.0.0.1:" .. hole_port, entries[1].tries[1].server)
            assert_serves()
        end)

        it("retries a GET and even a POST on the other server when one refuses", function()
            local n = 4
            for i = 1, n do
                local r = get("/half/get" .. i)
                assert.equal(200, r.status)
                assert.equal("u:" .. up.ports[2], H.json(r.body).server)
            end
            local body = "payment=42"
            for i = 1, n do
                local r = get("/half/post" .. i, {}, { method = "POST", body = body })
                assert.equal(200, r.status)
                local e = H.json(r.body)
                assert.equal("POST", e.method)
                assert.equal(H.fnv1a64(body), e.body_sha)
            end
            local s = up:stats()
            -- every request reached the upstream exactly once: nothing was replayed
            assert.equal(2 * n, s.requests)
            for i = 1, n do
                assert.equal(1, count(s.by_path, "/half/post" .. i))
                assert.equal(1, count(s.by_path, "/half/get" .. i))
            end
            -- and the refused server was really tried first at least once for each method
            local entries = lv:wait_access(2 * n)
            local rescued = { GET = 0, POST = 0 }
            for _, a in ipairs(entries) do
                assert.equal(200, a.status)
                if a.tries[1].outcome == "connect-failure" then
                    assert.equal("127.0.0.1:" .. hole_port, a.tries[1].server)
                    assert.equal("200", a.tries[2].outcome)
                    assert.equal(up:addr(2), a.tries[2].server)
                    rescued[a.method] = rescued[a.method] + 1
                end
            end
            assert.is_true(rescued.GET >= 1, "no GET met the refused server")
            assert.is_true(rescued.POST >= 1, "no POST met the refused server")
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("invalid responses (502 bad-upstream-response, connection never reused)", function()
        -- Each is sent on a warm pooled connection and the upstream keeps it open afterwards:
        -- levee must answer 502, not retry (protocol errors are not in the default retry.on),
        -- close that connection, and serve the next request on a fresh one.
        local vectors = {
            { "SSH banner (garbage)", "SSH-2.0-OpenSSH_9.2\r\n\r\n" },
            { "R10 2-digit status", "HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok" },
            { "R10 4-digit status", "HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok" },
            { "R10 bare LF ending the status line", "HTTP/1.1 200 OK\nContent-Length: 2\r\n\r\nok" },
            { "R10 bare CR in the status line", "HTTP/1.1 200 OK\rX-A: 1\r\nContent-Length: 2\r\n\r\nok" },
            { "status 600", "HTTP/1.1 600 Weird\r\nContent-Length: 2\r\n\r\nok" },
            { "status 099", "HTTP/1.1 099 Low\r\nContent-Length: 2\r\n\r\nok" },
            { "unknown protocol", "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok" },
            { "R11 obs-fold", "HTTP/1.1 200 OK\r\nX-A: 1\r\n  folded\r\nContent-Length: 2\r\n\r\nok" },
            { "R12 NUL in a header value", "HTTP/1.1 200 OK\r\nX-A: a\0b\r\nContent-Length: 2\r\n\r\nok" },
            { "R12 CR in a header value", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 2\r\n\r\nok" },
            { "R1 Content-Length with Transfer-Encoding",
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n" },
            { "R2 duplicate different Content-Length",
                "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd" },
            { "R3 Content-Length -1", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok" },
            { "R3 Content-Length not a number", "HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok" },
            { "R9 unrequested 101",
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw-bytes" },
            { "header line without a colon", "HTTP/1.1 200 OK\r\nNoColon\r\nContent-Length: 2\r\n\r\nok" },
            -- we never send TE: gzip bytes under our chunked framing would reach the client raw
            { "R4 unrequested Transfer-Encoding: gzip",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b\x08\x00gz" },
            { "R4 Transfer-Encoding: chunked, gzip",
                "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n2\r\nok\r\n0\r\n\r\n" },
        }

        for _, v in ipairs(vectors) do
            local what, bytes = v[1], v[2]
            it(what .. " → 502, connection closed and not reused", function()
                local c = assert(H.conn(lv.port))
                local warm = H.json(get_on(c, "/warm").body)
                local r = get_on(c, "/bad/v", raw(bytes, true))
                assert_gw_error(r, 502, "bad-upstream-response", "bad")
                assert.equal(1, count(up:stats().by_path, "/bad/v"), "a protocol error is not retried")
                -- levee closed the connection that carried it (the upstream kept it open)
                H.wait_until(function() return up:stats().active_connections == 0 end, 5,
                    "levee to close the upstream connection")
                local after = H.json(get_on(c, "/after").body)
                assert.equal(1, after.seq)
                assert.are_not.equal(warm.conn, after.conn)
                local a = lv:wait_access(3)[2]
                assert.equal("bad-upstream-response", a.error)
                assert.equal("protocol-error", a.tries[1].outcome)
                assert_serves()
            end)
        end

        it("R13 whitespace before a colon → 502, or the field is not forwarded as is", function()
            local r = get("/bad/ws", raw("HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 2\r\n\r\nok", true))
            if r.status == 502 then
                assert_gw_error(r, 502, "bad-upstream-response", "bad")
            else
                assert.equal(200, r.status)
                assert.is_nil(r.raw_head:find("X-A :", 1, true))
                assert.equal("ok", r.body)
            end
            assert_serves()
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("closed before a whole head (502 upstream-reset)", function()
        local shapes = {
            { "R16 empty reply (FIN)", { { "X-Test-Action", "close" } } },
            { "RST after the request", { { "X-Test-Action", "reset" } } },
            { "R16 head never completed", raw("HTTP/1.1 200 OK\r\nContent-Len", false) },
        }
        for _, s in ipairs(shapes) do
            it(s[1] .. ": GET is retried once (default policy), POST is not", function()
                local r = get("/reset/get", s[2])
                assert_gw_error(r, 502, "upstream-reset", "main")
                assert.equal(2, count(up:stats().by_path, "/reset/get"))
                local p = get("/reset/post", s[2], { method = "POST", body = "once" })
                assert_gw_error(p, 502, "upstream-reset", "main")
                assert.equal(1, count(up:stats().by_path, "/reset/post"), "a POST must not be replayed")
                -- by path, not position: lines of different workers may come in any order
                local entries = {}
                for _, e in ipairs(lv:wait_access(2)) do entries[e.path] = e end
                assert.equal(2, entries["/reset/get"].attempts)
                assert.equal("reset", entries["/reset/get"].tries[1].outcome)
                assert.equal(1, entries["/reset/post"].attempts)
                assert_serves()
            end)
        end
    end)

    -------------------------------------------------------------------------------------
    describe("framing of good but unusual responses", function()
        it("R5 204 and 304 with a body: no body to the client, the client connection goes on", function()
            for _, st in ipairs({ 204, 304 }) do
                up:reset()
                local c = assert(H.conn(lv.port))
                local warm
                c:send(H.build_request(lv.port, { path = "/warm" }))
                warm = H.json(assert(c:read_response()).body)
                c:send(H.build_request(lv.port, { path = "/nobody",
                    headers = raw(("HTTP/1.1 %d X\r\nContent-Length: 5\r\nX-S: %d\r\n\r\nhello"):format(st, st), true) }))
                local r = assert(c:read_response())
                assert.equal(st, r.status)
                assert.equal(tostring(st), r.headers["x-s"])
                assert.equal("", r.body)
                if st == 204 then assert.is_nil(r.headers["content-length"]) end
                c:send(H.build_request(lv.port, { path = "/next" }))
                local n = assert(c:read_response())
                assert.equal(200, n.status)
                local e = H.json(n.body) -- not "hello..."
                assert.equal("/next", e.target)
                -- the upstream connection with the 5 stray bytes was not reused
                assert.equal(1, e.seq)
                assert.are_not.equal(warm.conn, e.conn)
                assert.equal("", c:buffered())
                assert.is_false(c:closed())
                c:close()
            end
            assert_serves()
        end)

        it("R6 HEAD with Content-Length: no body, and both connections are reused", function()
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { method = "HEAD", path = "/head",
                headers = raw("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-H: 1\r\n\r\n", true) }))
            local r = assert(c:read_response({ head = true }))
            assert.equal(200, r.status)
            assert.equal("5", r.headers["content-length"])
            assert.equal("1", r.headers["x-h"])
            c:send(H.build_request(lv.port, { path = "/next" }))
            local n = assert(c:read_response())
            assert.equal(200, n.status)
            local e = H.json(n.body)
            assert.equal("/next", e.target)
            assert.equal(2, e.seq, "the upstream connection should be kept after a HEAD response")
            assert.equal("", c:buffered())
            -- the real HEAD path of lv-testupstream as well
            c:send(H.build_request(lv.port, { method = "HEAD", path = "/head2", headers = { { "X-Test-Body", "hello" } } }))
            local h2 = assert(c:read_response({ head = true }))
            assert.equal("5", h2.headers["content-length"])
            c:send(H.build_request(lv.port, { path = "/next2" }))
            assert.equal("/next2", H.json(assert(c:read_response()).body).target)
            assert.equal("", c:buffered())
            assert.equal(1, up:stats().connections)
        end)

        it("R7/R8 103 Early Hints (even with a Content-Length) then 200: HTTP/1.1 sees both, 1.0 only the 200", function()
            local bytes = "HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\nContent-Length: 5\r\n\r\n"
                .. "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Final: 1\r\n\r\nok"
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/hints", headers = raw(bytes, true) }))
            local i = assert(c:read_response())
            assert.equal(103, i.status)
            assert.is_true(i.interim)
            assert.equal("</s.css>; rel=preload", i.headers["link"])
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            assert.equal("1", r.headers["x-final"])
            assert.equal("ok", r.body)
            -- next request on the same client connection works, on the same upstream connection
            c:send(H.build_request(lv.port, { path = "/next" }))
            local e = H.json(assert(c:read_response()).body)
            assert.equal("/next", e.target)
            assert.equal(2, e.seq)

            local r10 = get("/hints10", raw(bytes, true), { version = "HTTP/1.0" })
            assert.equal(200, r10.status)
            assert.equal("ok", r10.body)
            assert.same({}, r10.interim_responses)
        end)

        -- Bodies over 2 KiB go to the client by reference to where they were read (no copy):
        -- these shapes put a head and large body pieces in one upstream write.
        it("large bodies read together with their head arrive intact: after 103, chunked, until close", function()
            local body = H.pattern(6000)
            local c = assert(H.conn(lv.port))
            local hinted = "HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                .. "HTTP/1.1 200 OK\r\nContent-Length: 6000\r\n\r\n" .. body
            c:send(H.build_request(lv.port, { path = "/big/hints", headers = raw(hinted, true) }))
            assert.equal(103, assert(c:read_response()).status)
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            assert.is_true(r.body == body, "103 + 200: body differs")

            -- chunked, several large chunks in one write: re-framed, bytes unchanged
            local chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                .. ("%x\r\n"):format(2500) .. body:sub(1, 2500) .. "\r\n"
                .. ("%x\r\n"):format(3500) .. body:sub(2501) .. "\r\n0\r\n\r\n"
            c:send(H.build_request(lv.port, { path = "/big/chunked", headers = raw(chunked, true) }))
            local r2 = assert(c:read_response())
            assert.equal(200, r2.status)
            assert.equal("chunked", r2.headers["transfer-encoding"])
            assert.is_true(r2.body == body, "chunked: body differs")

            -- ended by the upstream's close: chunked to an HTTP/1.1 client ...
            local eof = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" .. body
            c:send(H.build_request(lv.port, { path = "/big/eof", headers = raw(eof) }))
            local r3 = assert(c:read_response())
            assert.equal(200, r3.status)
            assert.equal("chunked", r3.headers["transfer-encoding"])
            assert.is_true(r3.body == body, "until close: body differs")
            -- ... and the client connection still works
            c:send(H.build_request(lv.port, { path = "/big/after" }))
            assert.equal("/big/after", H.json(assert(c:read_response()).body).target)
            c:close()
            -- ... and as is, ended by close, to an HTTP/1.0 client
            local r4 = get("/big/eof10", raw(eof), { version = "HTTP/1.0" })
            assert.equal(200, r4.status)
            assert.is_true(r4.body == body, "HTTP/1.0 until close: body differs")
        end)

        it("R14 extra bytes after a complete response are never served to the next request", function()
            local c = assert(H.conn(lv.port))
            local bytes = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                .. "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Smuggled: 1\r\n\r\nextra"
            c:send(H.build_request(lv.port, { path = "/extra", headers = raw(bytes, true) }))
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            assert.equal("ok", r.body)
            assert.equal("2", r.headers["content-length"])
            c:send(H.build_request(lv.port, { path = "/next" }))
            local n = assert(c:read_response())
            assert.equal(200, n.status)
            assert.is_nil(n.headers["x-smuggled"])
            local e = H.json(n.body)
            assert.equal("/next", e.target)
            assert.equal(1, e.seq, "the connection that sent extra bytes was reused")
            assert.equal("", c:buffered())
            -- levee closed that connection although the upstream kept it open
            H.wait_until(function() return up:stats().active_connections == 1 end, 5,
                "levee to close the poisoned connection")
            assert_serves()
        end)

        it("an HTTP/1.0 response or Connection: close is not pooled", function()
            for _, bytes in ipairs({ "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok",
                "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok" }) do
                up:reset()
                local k = assert(H.conn(lv.port))
                local r = get_on(k, "/closing", raw(bytes, true))
                assert.equal(200, r.status)
                assert.equal("ok", r.body)
                assert.is_nil(r.headers["connection"] and r.headers["connection"]:lower():find("close"),
                    "the client connection need not close for an upstream close")
                H.wait_until(function() return up:stats().active_connections == 0 end, 5,
                    "levee to close the upstream connection")
                -- a fresh connection; the upstream closes it after answering, so no pooled
                -- connection is left for the next round to find open (pools are per worker:
                -- the next round may run on another worker, which would not reuse it)
                assert.equal(1, H.json(get_on(k, "/next", { { "X-Test-Action", "close-after" } }).body).seq)
                k:close()
            end
        end)

        it("R17 a response without Content-Length or chunked is read to close and re-framed", function()
            local body = H.pattern(1500)
            local bytes = "HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\n" .. body
            local r = get("/eof", raw(bytes, false))
            assert.equal(200, r.status)
            assert.equal("chunked", r.headers["transfer-encoding"])
            assert.is_nil(r.headers["content-length"])
            assert.is_true(r.chunked)
            assert.is_true(r.body == body, "body differs")
            -- the client connection stays usable
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/eof2", headers = raw(bytes, false) }))
            local r2 = assert(c:read_response())
            assert.is_true(r2.body == body)
            c:send(H.build_request(lv.port, { path = "/next" }))
            assert.equal("/next", H.json(assert(c:read_response()).body).target)
            -- an HTTP/1.0 client gets it delimited by close
            local r10 = get("/eof10", raw(bytes, false), { version = "HTTP/1.0" })
            assert.equal(200, r10.status)
            assert.is_nil(r10.headers["transfer-encoding"])
            assert.is_true(r10.body == body)
        end)

        it("HTTP/1.2 status line and trailing HTAB in framing values are HTTP/1.1 and OWS", function()
            local k = assert(H.conn(lv.port))
            local warm = H.json(get_on(k, "/warm12").body)
            local r = get_on(k, "/v12",
                raw("HTTP/1.2 200 OK\r\nContent-Length: 6\t\r\nX-Ok: 1\r\n\r\nabcdef", true))
            assert.equal(200, r.status)
            assert.equal("abcdef", r.body)
            assert.equal("6", r.headers["content-length"])
            assert.equal("1", r.headers["x-ok"])
            local c = get_on(k, "/v12c", raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t\r\n\r\n"
                .. "3\r\nabc\r\n0\r\n\r\n", true))
            assert.equal(200, c.status)
            assert.equal("abc", c.body)
            -- both were framed exactly, so the connection went back to the pool
            assert.equal(warm.conn, H.json(get_on(k, "/after12").body).conn)
            assert_serves()
        end)

        it("R18 strips Connection, the fields it names, and Keep-Alive from the response", function()
            local bytes = "HTTP/1.1 200 OK\r\nConnection: X-Foo, x-bar\r\nX-Foo: secret\r\nX-Bar: also\r\n"
                .. "Keep-Alive: timeout=5\r\nUpgrade: h2c\r\nTrailer: X-T\r\nProxy-Authenticate: Basic\r\n"
                .. "X-Keep: yes\r\nContent-Length: 2\r\n\r\nok"
            local r = get("/hop", raw(bytes, true))
            assert.equal(200, r.status)
            assert.equal("ok", r.body)
            assert.is_nil(r.headers["x-foo"])
            assert.is_nil(r.headers["x-bar"])
            assert.is_nil(r.headers["keep-alive"])
            assert.is_nil(r.headers["connection"])
            assert.is_nil(r.headers["upgrade"])
            assert.is_nil(r.headers["trailer"])
            assert.is_nil(r.headers["proxy-authenticate"])
            assert.is_nil(r.raw_head:find("secret", 1, true))
            assert.equal("yes", r.headers["x-keep"])
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("R15 truncated bodies", function()
        it("Content-Length not reached: the bytes so far, then the client connection closes", function()
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/trunc", headers = { { "X-Test-Action", "truncate" },
                { "X-Test-Body", "12345" } } }))
            local r, why, got = c:read_response()
            assert.is_nil(r)
            assert.equal("closed", why)
            assert.matches("^HTTP/1.1 200 ", got)
            assert.matches("\r\nContent%-Length: 10\r\n", got)
            assert.equal("12345", got:sub(-5))
            assert.is_nil(got:find("\r\n0\r\n\r\n", 1, true))
            assert_serves()
        end)

        it("a large truncated body is forwarded byte for byte, then aborted", function()
            local n = 100000
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/trunc-big", headers = { { "X-Test-Action", "truncate" },
                { "X-Test-Body-Size", tostring(n) } } }))
            local head = assert(c:read_response({ head_only = true }))
            assert.equal(tostring(2 * n), head.headers["content-length"])
            local data, why = c:read_all(5)
            assert.equal("closed", why)
            assert.equal(n, #data)
            assert.is_true(data == H.pattern(n), "body bytes differ")
            assert_serves()
        end)

        it("chunked without the last chunk: the chunks so far, no terminating chunk, then close", function()
            local bytes = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n"
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/trunc-chunked", headers = raw(bytes, false) }))
            local r, why, got = c:read_response()
            assert.is_nil(r)
            assert.equal("closed", why)
            assert.matches("^HTTP/1.1 200 ", got)
            assert.matches("\r\nTransfer%-Encoding: chunked\r\n", got)
            local body = got:sub((got:find("\r\n\r\n", 1, true)) + 4)
            -- whatever the re-chunking, the data is there and the message is not completed
            local data = body:gsub("%x+\r\n(.-)\r\n", "%1")
            assert.equal("hello world", data)
            assert.is_nil(body:find("0\r\n\r\n", 1, true))
            assert.is_true(c:closed())
            assert_serves()
        end)

        it("a broken chunk size mid-body: head sent, then the client connection aborts", function()
            local bytes = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\nzz\r\nmore\r\n0\r\n\r\n"
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/bad-chunk", headers = raw(bytes, true) }))
            local r, why, got = c:read_response()
            assert.is_nil(r)
            assert.equal("closed", why)
            assert.matches("^HTTP/1.1 200 ", got)
            assert.is_nil(got:find("more", 1, true))
            assert.is_nil(got:find("\r\n0\r\n\r\n", 1, true))
            -- the upstream kept its connection open: levee closed it
            H.wait_until(function() return up:stats().active_connections == 0 end, 5,
                "levee to close the upstream connection")
            assert_serves()
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("hangs and timeouts", function()
        it("try_timeout 300ms on a hung upstream → 504 upstream-timeout, quickly, connection dropped", function()
            local t0 = H.now()
            local r = get("/try/h", { { "X-Test-Action", "hang" } })
            local dt = H.now() - t0
            assert_gw_error(r, 504, "upstream-timeout", "try")
            assert.is_true(dt >= 0.29, ("answered after %.3fs, before try_timeout"):format(dt))
            assert.is_true(dt < 1.5 * H.scale, ("answered after %.3fs"):format(dt))
            -- not retried (timeout is not in the default retry.on); the hung connection is closed
            assert.equal(1, count(up:stats().by_path, "/try/h"))
            H.wait_until(function() return up:stats().active_connections == 0 end, 5,
                "levee to close the hung connection")
            assert_serves()
        end)

        it("route timeout 400ms (try_timeout defaulted) → 504 deadline-exceeded", function()
            local t0 = H.now()
            local r = get("/deadline/h", { { "X-Test-Action", "hang" } })
            local dt = H.now() - t0
            assert_gw_error(r, 504, "deadline-exceeded", "deadline")
            assert.is_true(dt >= 0.39, ("answered after %.3fs, before the deadline"):format(dt))
            assert.is_true(dt < 1.5 * H.scale, ("answered after %.3fs"):format(dt))
            assert.equal(1, count(up:stats().by_path, "/deadline/h"))
            H.wait_until(function() return up:stats().active_connections == 0 end, 5,
                "levee to close the hung connection")
            local a = lv:wait_access(1)[1]
            assert.equal("deadline-exceeded", a.error)
            assert.is_truthy(table.concat(a.flags, ","):find("deadline-exceeded", 1, true))
        end)

        it("a slow upstream (200ms) within a 1s timeout succeeds", function()
            local t0 = H.now()
            local r = get("/slow/ok", { { "X-Test-Delay-Ms", "200" } })
            assert.equal(200, r.status)
            assert.is_nil(r.headers["levee-error"])
            assert.equal("/slow/ok", H.json(r.body).target)
            assert.is_true(H.now() - t0 >= 0.2)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("pool limits", function()
        -- Starts a request that hangs upstream on its own client connection and waits until
        -- the upstream holds it.
        local function hang(path)
            local c = assert(H.conn(lv.port, { timeout = 10 }))
            c:send(H.build_request(lv.port, { path = path, headers = { { "X-Test-Action", "hang" } } }))
            H.wait_until(function() return count(up:stats().by_path, path) == 1 end, 5, "the hung request upstream")
            return c
        end

        it("max_connections 1, queue_size 0: a second request gets 503 pool-overflow with Retry-After", function()
            one_worker()
            local c = hang("/single/hang")
            local t0 = H.now()
            local r = get("/single/second")
            assert_gw_error(r, 503, "pool-overflow", "single")
            assert.matches("^%d+$", r.headers["retry-after"])
            assert.is_true(H.now() - t0 < 1 * H.scale, "overflow should be immediate")
            assert.equal(0, count(up:stats().by_path, "/single/second"))
            -- the hung request ends at its try_timeout (1s): the slot is free again
            assert_gw_error(assert(c:read_response()), 504, "upstream-timeout", "single")
            H.wait_until(function() return up:stats().active_connections == 0 end, 5,
                "levee to drop the timed-out upstream connection")
            local third = get("/single/third")
            assert.equal(200, third.status)
            assert.equal("/single/third", H.json(third.body).target)
        end)

        it("queue_size 1, queue_timeout 200ms: the second waits, then gets 503 pool-overflow", function()
            one_worker()
            local c = hang("/queued/hang")
            local t0 = H.now()
            local r = get("/queued/second")
            local dt = H.now() - t0
            assert_gw_error(r, 503, "pool-overflow", "queued")
            assert.matches("^%d+$", r.headers["retry-after"])
            assert.is_true(dt >= 0.19, ("gave up after %.3fs, before queue_timeout"):format(dt))
            assert.is_true(dt < 1.5 * H.scale, ("gave up after %.3fs"):format(dt))
            assert.equal(0, count(up:stats().by_path, "/queued/second"))
            c:close()
        end)

        it("a client that resets its connection while its request hangs upstream frees the upstream connection", function()
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/abort/hang", headers = { { "X-Test-Action", "hang" } } }))
            H.wait_until(function() return count(up:stats().by_path, "/abort/hang") == 1 end, 5, "the hung request")
            assert(c.sock:setoption("linger", { on = true, timeout = 0 }))
            c:close() -- RST: the client is gone for sure
            -- levee drops its upstream connection long before the route timeout (15s)
            H.wait_until(function() return up:stats().active_connections == 0 end, 3,
                "levee to drop the upstream connection of a reset client")
            local a = lv:wait_access(1)[1]
            assert.equal("/abort/hang", a.path)
            assert.is_truthy(table.concat(a.flags, ","):find("client-abort", 1, true))
            assert_serves()
        end)

        it("a queued request gets the connection when it frees up", function()
            one_worker()
            local c = assert(H.conn(lv.port))
            c:send(H.build_request(lv.port, { path = "/handoff/first", headers = { { "X-Test-Delay-Ms", "300" } } }))
            H.wait_until(function() return count(up:stats().by_path, "/handoff/first") == 1 end, 5, "first request")
            local r = get("/handoff/second")
            assert.equal(200, r.status)
            local first = H.json(assert(c:read_response()).body)
            local second = H.json(r.body)
            assert.equal(first.conn, second.conn)
            assert.equal(2, second.seq)
            assert.equal(1, up:stats().connections)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("upstream keep-alive", function()
        it("a pooled connection the upstream closed is not used: no failure, no duplicate", function()
            local rounds = 20
            for i = 1, rounds do
                -- the upstream closes right after answering, or a few ms later
                local delay = tostring((i % 5) * 3)
                local k = assert(H.conn(lv.port))
                local a = get_on(k, "/stale/a" .. i,
                    { { "X-Test-Action", "close-after" }, { "X-Test-Close-Delay-Ms", delay } })
                assert.equal(200, a.status)
                local b = get_on(k, "/stale/b" .. i)
                assert.equal(200, b.status, "request after a close-after failed: " .. tostring(b.body))
                assert.equal("/stale/b" .. i, H.json(b.body).target)
                k:close()
            end
            local s = up:stats()
            assert.equal(2 * rounds, s.requests)
            for i = 1, rounds do
                assert.equal(1, count(s.by_path, "/stale/a" .. i))
                assert.equal(1, count(s.by_path, "/stale/b" .. i))
            end
        end)

        it("the first close-after case: the next GET succeeds on a fresh connection", function()
            local k = assert(H.conn(lv.port))
            local a = H.json(get_on(k, "/stale/one", { { "X-Test-Action", "close-after" } }).body)
            local b = H.json(get_on(k, "/stale/two").body)
            assert.are_not.equal(a.conn, b.conn)
            assert.equal(1, b.seq)
            assert.equal(2, up:stats().requests)
        end)

        it("60 sequential requests on one client connection use at most 2 upstream connections", function()
            local c = assert(H.conn(lv.port))
            for i = 1, 60 do
                assert(c:send(H.build_request(lv.port, { path = "/ka/" .. i })))
                local r = assert(c:read_response())
                assert.equal(200, r.status)
                assert.equal("/ka/" .. i, H.json(r.body).target)
            end
            local s = up:stats()
            assert.equal(60, s.requests)
            assert.is_true(s.connections <= 2, "upstream connections: " .. s.connections)
        end)

        it("100 requests over 10 client connections use at most 10 upstream connections", function()
            local cs = {}
            for i = 1, 10 do cs[i] = assert(H.conn(lv.port)) end
            for round = 1, 10 do
                for i = 1, 10 do
                    assert(cs[i]:send(H.build_request(lv.port, { path = ("/ka10/%d/%d"):format(i, round) })))
                end
                for i = 1, 10 do
                    local r = assert(cs[i]:read_response())
                    assert.equal(("/ka10/%d/%d"):format(i, round), H.json(r.body).target)
                end
            end
            local s = up:stats()
            assert.equal(100, s.requests)
            assert.is_true(s.connections <= 10, "upstream connections: " .. s.connections)
        end)
    end)

    -------------------------------------------------------------------------------------
    describe("balancing and resolution", function()
        it("round_robin alternates over two servers", function()
            -- one client connection: each worker keeps its own turn (README "Workers")
            local k = assert(H.conn(lv.port))
            for i = 1, 20 do assert.equal(200, get_on(k, "/rr/" .. i).status) end
            local s = up:stats()
            assert.equal(10, count(s.by_port, up.ports[1]))
            assert.equal(10, count(s.by_port, up.ports[2]))
        end)

        it("least_request sends new requests to the server with fewer in flight", function()
            one_worker()
            -- park one request on server 1 (it hangs there; server 2 answers at once)
            local p1 = up.ports[1]
            local parked = {}
            for _ = 1, 30 do
                local c = assert(H.conn(lv.port, { timeout = 10 }))
                c:send(H.build_request(lv.port, { path = "/lr/park", headers = { { "X-Test-By-Port", p1 .. "=hang" } } }))
                parked[#parked + 1] = c
                -- one at a time: the next is sent once the upstream holds this one
                local s = H.wait_until(function()
                    local st = up:stats()
                    return st.requests >= #parked and st
                end, 5, "the parking request upstream")
                if count(s.by_port, p1) >= 1 then break end
            end
            local before = up:stats()
            assert.equal(1, count(before.by_port, p1))
            for i = 1, 20 do
                local r = get("/lr/" .. i)
                assert.equal("u:" .. up.ports[2], H.json(r.body).server)
            end
            assert.equal(1, count(up:stats().by_port, p1))
            -- the parked request ends at its try_timeout; the others were answered by server 2
            local timed_out = 0
            for _, c in ipairs(parked) do
                local r = assert(c:read_response())
                if r.status == 504 then
                    assert_gw_error(r, 504, "upstream-timeout", "lr")
                    timed_out = timed_out + 1
                else
                    assert.equal("u:" .. up.ports[2], H.json(r.body).server)
                end
            end
            assert.equal(1, timed_out)
            -- with nothing in flight, both servers get requests
            up:reset()
            for i = 1, 40 do get("/lr/free" .. i) end
            local s = up:stats()
            assert.is_true(count(s.by_port, up.ports[1]) > 0)
            assert.is_true(count(s.by_port, up.ports[2]) > 0)
        end)

        it("a server written as localhost:PORT resolves and serves", function()
            local r = get("/byname/x")
            assert.equal(200, r.status)
            local e = H.json(r.body)
            assert.equal("u:" .. up.ports[1], e.server)
            assert.equal("/byname/x", e.target)
        end)
    end)

    -------------------------------------------------------------------------------------
    it("survives every shape above in one process and still serves", function()
        local shapes = {
            { { "X-Test-Action", "reset" } }, { { "X-Test-Action", "close" } }, { { "X-Test-Action", "garbage" } },
            { { "X-Test-Action", "truncate" }, { "X-Test-Body", "abc" } },
            raw("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", true),
            raw("HTTP/1.1 101 Switching Protocols\r\n\r\n", true),
            raw("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\nhello", true),
            raw("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n", true),
            raw("HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", true),
        }
        for round = 1, 3 do
            for i, h in ipairs(shapes) do
                local c = assert(H.conn(lv.port))
                c:send(H.build_request(lv.port, { path = ("/mix/%d/%d"):format(round, i), headers = h }))
                local r = c:read_response({ timeout = 5 })
                -- a gateway error, a forwarded response, or a broken message: never a hang
                assert.is_true(r ~= nil or c:closed(), "no answer to shape " .. i)
                c:close()
            end
        end
        assert_serves()
        local r = get("/refused/end")
        assert_gw_error(r, 502, "connect-failure", "refused")
        assert_serves()
    end)
end)
