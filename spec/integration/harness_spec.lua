-- The harness itself: lvproc, lv-testupstream and helpers.lua, exercised against
-- lv-testupstream directly (no levee), so later specs can trust what they are built on.

local H = require("helpers")
local proc = H.proc

local function req(port, path, headers, extra)
    local o = { path = path or "/", headers = headers or {} }
    for k, v in pairs(extra or {}) do o[k] = v end
    return assert(H.request(port, o))
end

describe("lvproc", function()
    after_each(H.cleanup)

    it("spawns with env, cwd and redirected output and reports the exit code", function()
        local dir = H.tmpdir()
        local pid = H.spawn({ "sh", "-c", 'echo "$LV_X $(pwd) ${LV_GONE-unset}"; echo oops >&2; exit 7' },
            { stdout = dir .. "/o", stderr = dir .. "/e", env = { LV_X = "hi", LV_GONE = false }, cwd = dir })
        local exited, code = proc.wait(pid, 5)
        assert.is_true(exited)
        assert.equal(7, code)
        assert.equal("hi " .. dir .. " unset\n", H.read_file(dir .. "/o"))
        assert.equal("oops\n", H.read_file(dir .. "/e"))
    end)

    it("signals by name or number, wait times out with nil and reports the signal", function()
        local pid = H.spawn({ "sleep", "30" })
        assert.is_true(proc.alive(pid))
        local t0 = proc.now()
        local exited, why = proc.wait(pid, 0.1)
        assert.is_nil(exited)
        assert.equal("timeout", why)
        assert.is_true(proc.now() - t0 >= 0.1)
        assert.is_true(proc.kill(pid, "SIGTERM"))
        local e2, sig = proc.wait(pid, 5)
        assert.is_false(e2)
        assert.equal(15, sig)
        assert.is_false(proc.alive(pid))
        -- a second wait still answers from the recorded status
        assert.same({ false, 15 }, { proc.wait(pid, 0) })

        local pid2 = H.spawn({ "sleep", "30" })
        proc.kill(pid2, 9)
        assert.same({ false, 9 }, { proc.wait(pid2, 5) })
    end)

    it("reports an exec failure instead of a pid", function()
        local pid, err = proc.spawn({ "/nonexistent/levee-nothing" })
        assert.is_nil(pid)
        assert.matches("No such file", err)
    end)

    it("gives children only stdin/stdout/stderr and default signal dispositions", function()
        local server = assert(require("socket").bind("127.0.0.1", 0)) -- an fd the child must not get
        local pid = H.spawn({ "sleep", "30" })
        H.wait_until(function() return proc.fd_count(pid) == 3 end, 5, "child with 3 fds")
        local status = H.read_file("/proc/" .. pid .. "/status")
        -- no standard signal ignored (luasocket ignores SIGPIPE in the spec process; glibc keeps
        -- its internal real-time signals 32 and 33 to itself)
        assert.equal(0, tonumber(status:match("SigIgn:%s*(%x+)"), 16) & 0x7fffffff)
        server:close()
    end)

    it("reads time, RSS and descriptor counts", function()
        local a = proc.now()
        proc.sleep(0.02)
        assert.is_true(proc.now() - a >= 0.02)
        assert.is_true(proc.rss_kb(proc.getpid()) > 1000)
        assert.is_true(proc.fd_count(proc.getpid()) >= 3)
        assert.is_nil(proc.rss_kb(999999999))
        assert.is_nil(proc.fd_count(999999999))
    end)
end)

describe("lv-testupstream", function()
    local up

    before_each(function() up = H.upstream({ name = "t" }) end)
    after_each(H.cleanup)

    it("echoes method, target, headers in order, body length and digest", function()
        local body = ("0123456789"):rep(1000)
        local r = req(up.ports[1], "/echo/me?x=1", { { "X-One", "1" }, { "x-two", "a, b" }, { "X-One", "again" } },
            { method = "PUT", body = body })
        assert.equal(200, r.status)
        assert.equal("application/json", r.headers["content-type"])
        assert.equal("t:" .. up.ports[1], r.headers["x-upstream"])
        local e = H.json(r.body)
        assert.equal("PUT", e.method)
        assert.equal("/echo/me?x=1", e.target)
        assert.same({ { "Host", up:addr() }, { "Content-Length", "10000" }, { "X-One", "1" }, { "x-two", "a, b" },
            { "X-One", "again" } }, e.headers)
        assert.equal(10000, e.body_len)
        assert.equal(H.fnv1a64(body), e.body_sha)
        assert.equal("t:" .. up.ports[1], e.server)
        assert.equal(1, e.seq)
    end)

    it("answers with X-Test-Status, X-Test-Body and repeated X-Test-Header", function()
        local r = req(up.ports[1], "/", { { "X-Test-Status", "503" }, { "X-Test-Body", "busy" },
            { "X-Test-Header", "Retry-After: 2" }, { "X-Test-Header", "X-Dup: 1" }, { "X-Test-Header", "X-Dup: 2" } })
        assert.equal(503, r.status)
        assert.equal("busy", r.body)
        assert.equal("2", r.headers["retry-after"])
        assert.equal("1, 2", r.headers["x-dup"])
        assert.equal("4", r.headers["content-length"])
        local bad = req(up.ports[1], "/", { { "X-Test-Status", "abc" } })
        assert.equal(400, bad.status)
        assert.matches("X%-Test%-Status", bad.body)
    end)

    it("streams X-Test-Body-Size bytes of the pattern (5 MiB)", function()
        local n = 5 * 1024 * 1024
        local r = req(up.ports[1], "/big", { { "X-Test-Body-Size", tostring(n) } }, { timeout = 20 })
        assert.equal(tostring(n), r.headers["content-length"])
        assert.equal(n, #r.body)
        assert.is_true(r.body == H.pattern(n))
    end)

    it("sends chunked bodies in X-Test-Chunk-Size pieces and reads chunked request bodies", function()
        local r = req(up.ports[1], "/", { { "X-Test-Body-Size", "100000" }, { "X-Test-Chunked", "1" },
            { "X-Test-Chunk-Size", "30000" } })
        assert.equal("chunked", r.headers["transfer-encoding"])
        assert.is_nil(r.headers["content-length"])
        assert.is_true(r.chunked)
        assert.same({ 30000, 30000, 30000, 10000 }, r.chunks)
        assert.is_true(r.body == H.pattern(100000))
        assert.matches("\r\n0\r\n\r\n$", r.raw)

        local body = ("xyz"):rep(7000)
        local e = H.json(req(up.ports[1], "/up", {}, { method = "POST", body = body, chunked = true }).body)
        assert.equal(21000, e.body_len)
        assert.equal(H.fnv1a64(body), e.body_sha)
        assert.same({ "Transfer-Encoding", "chunked" }, e.headers[2])
    end)

    it("keeps connections alive and answers pipelined requests in order", function()
        local c = assert(H.conn(up.ports[1]))
        local one = H.build_request(up.ports[1], { path = "/a" })
        local two = H.build_request(up.ports[1], { path = "/b", method = "POST", body = "hello" })
        assert.is_true(c:send(one .. two .. one))
        local r1, r2, r3 = c:read_response(), c:read_response(), c:read_response()
        local e1, e2, e3 = H.json(r1.body), H.json(r2.body), H.json(r3.body)
        assert.same({ "/a", "/b", "/a" }, { e1.target, e2.target, e3.target })
        assert.same({ 1, 2, 3 }, { e1.seq, e2.seq, e3.seq })
        assert.equal(e1.conn, e3.conn)
        assert.equal(5, e2.body_len)
        assert.equal("", c:buffered())
        assert.is_false(c:closed())
        local other = H.json(req(up.ports[1], "/").body)
        assert.are_not.equal(e1.conn, other.conn)
        assert.equal(1, other.seq)
    end)

    it("closes after an HTTP/1.0 request and after Connection: close", function()
        for _, o in ipairs({ { version = "HTTP/1.0" }, { headers = { { "Connection", "close" } } } }) do
            local c = assert(H.conn(up.ports[1]))
            c:send(H.build_request(up.ports[1], o))
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            assert.equal("close", r.headers["connection"])
            assert.is_true(c:closed(2))
        end
    end)

    it("follows an X-Test-Plan per ID and repeats its last item", function()
        local plan = { { "X-Test-Plan", "p1:503,reset,200" } }
        assert.equal(503, req(up.ports[1], "/", plan).status)
        local r, err = H.request(up.ports[1], { headers = plan })
        assert.is_nil(r)
        assert.equal("reset", err)
        assert.equal(200, req(up.ports[1], "/", plan).status)
        assert.equal(200, req(up.ports[1], "/", plan).status)
        -- another ID has its own counter
        assert.equal(502, req(up.ports[1], "/", { { "X-Test-Plan", "p2:502,200" } }).status)
        assert.equal(4, up:stats().plans.p1)
        up:reset()
        assert.equal(503, req(up.ports[1], "/", plan).status)
    end)

    it("applies X-Test-By-Port items only on the listener named", function()
        local two = H.upstream({ n = 2, name = "pair" })
        local hdr = { { "X-Test-By-Port", two.ports[1] .. "=503" } }
        assert.equal(503, req(two.ports[1], "/", hdr).status)
        local r = req(two.ports[2], "/", hdr)
        assert.equal(200, r.status)
        assert.equal("pair:" .. two.ports[2], H.json(r.body).server)
        local s = two:stats(2)
        assert.equal(1, s.by_port[tostring(two.ports[1])])
        assert.equal(1, s.by_port[tostring(two.ports[2])])
    end)

    it("resets, closes, or sends garbage as told, right after reading the request", function()
        local get = function(action)
            return "GET / HTTP/1.1\r\nHost: x\r\nX-Test-Action: " .. action .. "\r\n\r\n"
        end
        assert.same({ "", "reset" }, { H.raw(up.ports[1], get("reset")) })
        assert.same({ "", "closed" }, { H.raw(up.ports[1], get("close")) })
        assert.same({ "SSH-2.0-OpenSSH\r\n\r\n", "closed" }, { H.raw(up.ports[1], get("garbage")) })
        -- with a body, the whole body is read first
        local body = ("b"):rep(200000)
        local data, why = H.raw(up.ports[1], "POST / HTTP/1.1\r\nX-Test-Action: reset\r\nContent-Length: 200000\r\n\r\n" .. body)
        assert.equal("reset", why)
        assert.equal("", data)
        assert.equal(4, up:stats().requests)
    end)

    it("sends X-Test-Raw bytes with escapes decoded, then closes unless X-Test-Keep is 1", function()
        local raw = [[HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Bin: \x41\t\\\r\n\r\nhi!]]
        local data, why = H.raw(up.ports[1], "GET / HTTP/1.1\r\nX-Test-Action: raw\r\nX-Test-Raw: " .. raw .. "\r\n\r\n")
        assert.equal("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Bin: A\t\\\r\n\r\nhi!", data)
        assert.equal("closed", why)

        local c = assert(H.conn(up.ports[1]))
        c:send("GET /1 HTTP/1.1\r\nX-Test-Action: raw\r\nX-Test-Keep: 1\r\nX-Test-Raw: " .. raw .. "\r\n\r\n")
        local r = assert(c:read_response())
        assert.equal("hi!", r.body)
        assert.equal("A\t\\", r.headers["x-bin"])
        c:send("GET /2 HTTP/1.1\r\n\r\n")
        local r2 = assert(c:read_response())
        assert.equal(2, H.json(r2.body).seq)
    end)

    it("truncates: declares twice the body and closes after sending it", function()
        local data, why = H.raw(up.ports[1], "GET / HTTP/1.1\r\nX-Test-Action: truncate\r\nX-Test-Body: 12345\r\n\r\n")
        assert.equal("closed", why)
        assert.matches("Content%-Length: 10\r\n", data)
        assert.matches("\r\n\r\n12345$", data)
        local c = assert(H.conn(up.ports[1]))
        c:send("GET / HTTP/1.1\r\nX-Test-Action: truncate\r\nX-Test-Body-Size: 1000\r\n\r\n")
        local r, err, got = c:read_response()
        assert.is_nil(r)
        assert.equal("closed", err)
        assert.is_true(got:sub(-1000) == H.pattern(1000))
    end)

    it("hangs without answering and closes when the client leaves", function()
        local c = assert(H.conn(up.ports[1], { timeout = 0.3 }))
        c:send("GET /h HTTP/1.1\r\nX-Test-Action: hang\r\n\r\n")
        local r, err = c:read_response()
        assert.is_nil(r)
        assert.equal("timeout", err)
        assert.equal(1, up:stats().active_connections)
        c:close()
        H.wait_until(function() return up:stats().active_connections == 0 end, 5, "hung connection to close")
        assert.equal(1, up:stats().by_path["/h"])
    end)

    it("closes a kept-alive connection after the response with close-after", function()
        local c = assert(H.conn(up.ports[1]))
        c:send("GET / HTTP/1.1\r\nX-Test-Action: close-after\r\n\r\n")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.is_nil(r.headers["connection"])
        assert.is_true(c:closed(2))

        -- with a close delay the connection stays open for a while, then goes
        local c2 = assert(H.conn(up.ports[1]))
        c2:send("GET / HTTP/1.1\r\nX-Test-Action: close-after\r\nX-Test-Close-Delay-Ms: 1000\r\n\r\n")
        assert.equal(200, assert(c2:read_response()).status)
        assert.is_false(c2:closed(0.1))
        assert.is_true(c2:closed(5))
    end)

    it("delays the head and the body, and drips chunks", function()
        local t0 = proc.now()
        local c = assert(H.conn(up.ports[1]))
        c:send("GET / HTTP/1.1\r\nX-Test-Delay-Ms: 200\r\nX-Test-Body-Delay-Ms: 300\r\nX-Test-Body: late\r\n\r\n")
        local head = assert(c:read_response({ head_only = true }))
        assert.equal(200, head.status)
        assert.is_true(proc.now() - t0 >= 0.2)
        assert.equal(4, c:skip(4))
        assert.is_true(proc.now() - t0 >= 0.5)

        t0 = proc.now()
        local r = req(up.ports[1], "/", { { "X-Test-Body-Size", "30" }, { "X-Test-Chunked", "1" },
            { "X-Test-Chunk-Size", "10" }, { "X-Test-Chunk-Delay-Ms", "100" } })
        assert.same({ 10, 10, 10 }, r.chunks)
        assert.is_true(proc.now() - t0 >= 0.2)
    end)

    it("stops reading the request body for X-Test-Delay-Ms with slow-read", function()
        local n = 8 * 1024 * 1024
        local body = H.pattern(n)
        local t0 = proc.now()
        local r = req(up.ports[1], "/slow", { { "X-Test-Action", "slow-read" }, { "X-Test-Delay-Ms", "400" } },
            { method = "POST", body = body, timeout = 20 })
        assert.is_true(proc.now() - t0 >= 0.4)
        local e = H.json(r.body)
        assert.equal(n, e.body_len)
        assert.equal(H.fnv1a64(body), e.body_sha)
    end)

    it("answers 400 and closes on malformed requests, and keeps serving", function()
        local bad = {
            "BLAH\r\n\r\n",
            "GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            "GET / HTTP/1.1\r\n folded: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
            "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
            "GET / SPDY/3\r\n\r\n",
            "GET / HTTP/1.1\r\nX: \0\r\n\r\n",
            ("GET /" .. ("a"):rep(70000) .. " HTTP/1.1\r\n\r\n"),
        }
        for _, bytes in ipairs(bad) do
            local data, why = H.raw(up.ports[1], bytes)
            assert.matches("^HTTP/1.1 400 ", data)
            assert.equal("closed", why)
        end
        assert.equal(200, req(up.ports[1], "/").status)
        -- a client leaving mid-request is no error
        assert.same({ "", "timeout" }, { H.raw(up.ports[1], "GET / HTT", { timeout = 0.1 }) })
        assert.is_true(up:alive())
    end)

    it("counts requests, connections and paths, keeps the last raw head, ignores /__", function()
        local c = assert(H.conn(up.ports[1]))
        c:send("GET /x?q=1 HTTP/1.1\r\nHost: h\r\n\r\nGET /x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert(c:read_response())
        assert(c:read_response())
        req(up.ports[1], "/y", { { "X-Last", "yes" } })
        -- H.request closed its connection; the upstream notices asynchronously
        local s = H.wait_until(function()
            local st = up:stats()
            return st.active_connections == 1 and st
        end, 5, "one active connection")
        assert.equal(3, s.requests)
        assert.equal(2, s.connections)
        assert.same({ ["/x"] = 2, ["/y"] = 1 }, s.by_path)
        assert.equal("GET /y HTTP/1.1\r\nHost: " .. up:addr() .. "\r\nX-Last: yes\r\n\r\n", s.last_raw)
        assert.equal(3, up:stats().requests) -- asking did not count
        up:reset()
        s = up:stats()
        assert.equal(0, s.requests)
        assert.equal(0, s.connections)
        assert.same({}, s.by_path)
        assert.equal("", s.last_raw)
        -- a connection seen before the reset counts again when it carries a request
        c:send("GET /z HTTP/1.1\r\n\r\n")
        assert(c:read_response())
        assert.equal(1, up:stats().connections)
        assert.equal(404, req(up.ports[1], "/__nope").status)
    end)

    it("streams 1 GiB in flat memory, writing only as the client reads", function()
        local n = 1024 * 1024 * 1024
        local c = assert(H.conn(up.ports[1], { timeout = 120 }))
        c:send("GET / HTTP/1.1\r\nX-Test-Body-Size: " .. n .. "\r\n\r\n")
        local head = assert(c:read_response({ head_only = true }))
        assert.equal(tostring(n), head.headers["content-length"])
        local first = c:skip(1024 * 1024)
        assert.equal(1024 * 1024, first)
        local max_rss = 0
        local got = first
        while got < n do
            local step = c:skip(math.min(64 * 1024 * 1024, n - got))
            assert.is_true(step > 0)
            got = got + step
            max_rss = math.max(max_rss, proc.rss_kb(up:pid()))
        end
        assert.equal(n, got)
        assert.is_true(max_rss < 48 * 1024, "upstream RSS " .. max_rss .. " KiB")
        c:send("GET / HTTP/1.1\r\n\r\n")
        assert.equal(200, assert(c:read_response()).status)
    end)

    it("serves 2000 concurrent keep-alive connections", function()
        local cs = {}
        for i = 1, 2000 do
            cs[i] = assert(H.conn(up.ports[1]))
            assert(cs[i]:send("GET /many HTTP/1.1\r\n\r\n"))
        end
        local conn_ids = {}
        for i = 1, 2000 do
            local r = assert(cs[i]:read_response())
            conn_ids[H.json(r.body).conn] = true
        end
        local distinct = 0
        for _ in pairs(conn_ids) do distinct = distinct + 1 end
        assert.equal(2000, distinct)
        local s = up:stats()
        assert.equal(2000, s.active_connections)
        assert.equal(2000, s.by_path["/many"])
        for i = 1, 2000 do cs[i]:close() end
        H.wait_until(function() return up:stats().active_connections == 0 end, 10, "connections to close")
    end)

    it("exits 0 on SIGTERM with connections open, and restarts on the same ports", function()
        local idle = assert(H.conn(up.ports[1]))
        local hung = assert(H.conn(up.ports[1]))
        hung:send("GET / HTTP/1.1\r\nX-Test-Action: hang\r\n\r\n")
        H.wait_until(function() return up:stats().requests == 1 end, 5, "hung request")
        local port = up.ports[1]
        assert.same({ 0, "exit" }, { up:stop() })
        assert.is_true(idle:closed(2))
        assert.is_true(hung:closed(2))
        assert.is_false(H.port_open(port))
        up:start()
        assert.equal(port, up.ports[1])
        assert.equal(0, up:stats().requests)
        assert.equal(200, req(port, "/").status)
    end)
end)

describe("helpers", function()
    after_each(H.cleanup)

    it("free_port gives a port that can be bound, outside the ephemeral range, once", function()
        local f = assert(io.open("/proc/sys/net/ipv4/ip_local_port_range"))
        local eph_lo = tonumber(f:read("a"):match("(%d+)"))
        f:close()
        local seen = {}
        for _ = 1, 50 do
            local p = H.free_port()
            assert.is_true(p > 0 and p < 65536)
            if eph_lo > 12000 then assert.is_true(p < eph_lo, "port " .. p .. " is ephemeral") end
            assert.is_nil(seen[p], "port " .. p .. " given twice")
            seen[p] = true
            local s = assert(require("socket").bind("127.0.0.1", p))
            s:close()
        end
    end)

    it("read_response frames HEAD, 204 and 304 without a body and keeps what follows", function()
        local up = H.upstream()
        local c = assert(H.conn(up.ports[1]))
        c:send("HEAD / HTTP/1.1\r\nX-Test-Body-Size: 100\r\n\r\n"
            .. "GET / HTTP/1.1\r\nX-Test-Status: 204\r\n\r\n"
            .. "GET / HTTP/1.1\r\nX-Test-Status: 304\r\n\r\n"
            .. "GET / HTTP/1.1\r\nX-Test-Body: end\r\n\r\n")
        local h = assert(c:read_response({ head = true }))
        assert.equal("100", h.headers["content-length"])
        assert.equal("", h.body)
        assert.equal(204, assert(c:read_response()).status)
        assert.equal(304, assert(c:read_response()).status)
        assert.equal("end", assert(c:read_response()).body)
    end)

    it("H.request skips 1xx responses and reads bodies delimited by close", function()
        local up = H.upstream()
        local raw = [[HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nuntil close]]
        local r = req(up.ports[1], "/", { { "X-Test-Action", "raw" }, { "X-Test-Raw", raw } })
        assert.equal(200, r.status)
        assert.equal("until close", r.body)
        assert.is_true(r.until_close)
        assert.equal(1, #r.interim_responses)
        assert.equal(100, r.interim_responses[1].status)
        -- Expect: 100-continue gets the interim response from lv-testupstream itself
        local r2 = req(up.ports[1], "/", { { "Expect", "100-continue" } }, { method = "POST", body = "abc" })
        assert.equal(100, r2.interim_responses[1].status)
        assert.equal(3, H.json(r2.body).body_len)
        -- connection refused is an error, not a response
        local port = H.free_port()
        local none, err = H.request(port, {})
        assert.is_nil(none)
        assert.equal("connection refused", err)
    end)

    it("lua_source serialises tables, keeps H.code verbatim, and round-trips", function()
        local src = H.lua_source({
            listen = { "127.0.0.1:1" },
            routes = { { name = "r", retry = { attempts = 3, on = { "502" } }, ["odd-key"] = 0.5,
                classify = H.code("function(a) return 'ok' end") } },
            ["end"] = true,
        })
        local t = assert(load(src, "cfg", "t", {}))()
        assert.same({ "127.0.0.1:1" }, t.listen)
        assert.equal(3, t.routes[1].retry.attempts)
        assert.equal(0.5, t.routes[1]["odd-key"])
        assert.is_true(t["end"])
        assert.equal("ok", t.routes[1].classify({}))
    end)

    -- A stand-in for levee: a shell script that serves every 127.0.0.1 port its config names
    -- through lv-testupstream, so H.levee's machinery is tested before levee runs.
    local function fake_levee(body)
        local path = H.tmpfile("#!/bin/sh\n" .. body, "fake-levee")
        assert.same({ true, 0 }, { proc.wait(H.spawn({ "chmod", "+x", path }), 5) })
        return path
    end

    local SERVE = [[
echo "starting with $2" >&2
cfg=$2
set --
for a in $(grep -o '127\.0\.0\.1:[0-9][0-9]*' "$cfg"); do set -- "$@" --listen "$a"; done
exec "$LEVEE_TESTUPSTREAM" --name fake "$@"
]]

    it("H.levee writes the config with ports, waits for them, exposes logs, reloads and stops", function()
        local bin = fake_levee(SERVE)
        local lv = H.levee({
            bin = bin,
            config = { admin = true, upstreams = { api = { servers = { "localhost:9" } } },
                routes = { { name = "r", upstream = "api", classify = H.code("function() return 'ok' end") } } },
            files = { ["policy/x.lua"] = "return '$DIR'" },
        })
        assert.equal(lv.ports.PORT, lv.port)
        assert.equal(lv.ports.ADMIN, lv.admin_port)
        assert.equal("http://127.0.0.1:" .. lv.port, lv.url)
        assert.is_true(H.port_open(lv.port))
        assert.is_true(H.port_open(lv.admin_port))
        local cfg = assert(load(H.read_file(lv.config_path), "cfg", "t", {}))()
        assert.same({ "127.0.0.1:" .. lv.port }, cfg.listen)
        assert.equal("127.0.0.1:" .. lv.admin_port, cfg.admin)
        assert.equal(lv.dir, assert(load(H.read_file(lv.dir .. "/policy/x.lua")))())
        assert.matches("starting with " .. lv.config_path, lv:log(), 1, true)
        assert.equal(200, assert(lv:request({ path = "/" })).status)
        assert.equal(200, assert(lv:admin("/status")).status)
        H.wait_until(function() return #lv:access_log() == 2 end, 5, "two stdout lines")
        assert.matches("^listening 127.0.0.1:%d+$", lv:access_log()[1])
        lv:reload()
        lv:wait_log("SIGHUP received")
        -- rewriting keeps the ports
        local text = lv:write_config("return { listen = { '127.0.0.1:$PORT' } }")
        assert.equal("return { listen = { '127.0.0.1:" .. lv.port .. "' } }", text)
        assert.same({ 0, "exit" }, { lv:stop() })
        assert.is_false(lv:alive())
        assert.is_false(H.port_open(lv.port))
    end)

    it("H.levee accepts config text and fails with levee's stderr when it cannot start", function()
        local lv = H.levee({ bin = fake_levee(SERVE), config = "return { listen = { \"127.0.0.1:$PORT\" } }\n" })
        assert.is_true(H.port_open(lv.port))
        lv:stop()

        local ok, err = pcall(H.levee, {
            bin = fake_levee("echo 'levee.lua:3: routes[1].upstream: no upstream \"x\"' >&2; exit 1"),
            config = "return {}", port = H.free_port(),
        })
        assert.is_false(ok)
        assert.matches("exited %(code 1%)", err)
        assert.matches('levee.lua:3: routes[1].upstream: no upstream "x"', err, 1, true)
    end)

    it("H.run_levee returns the exit code, stdout and stderr", function()
        local code, out, err = H.run_levee({ "-c", "echo out; echo err >&2; exit 3" }, { bin = "/bin/sh" })
        assert.equal(3, code)
        assert.equal("out\n", out)
        assert.equal("err\n", err)
    end)

    it("H.cleanup stops every process it started", function()
        local up = H.upstream()
        local lv = H.levee({ bin = fake_levee(SERVE), config = {} })
        local pids = { up:pid(), lv:pid(), H.spawn({ "sleep", "30" }) }
        assert.equal(3, #H.tracked())
        H.cleanup()
        for _, pid in ipairs(pids) do assert.is_false(proc.alive(pid)) end
        assert.same({}, H.tracked())
    end)

    it("wait_until returns the value or fails naming what it waited for", function()
        local n = 0
        assert.equal(3, H.wait_until(function()
            n = n + 1
            return n >= 3 and n
        end, 1, "n"))
        local ok, err = pcall(H.wait_until, function() return false end, 0.05, "the impossible")
        assert.is_false(ok)
        assert.matches("waiting for the impossible", err)
    end)
end)
