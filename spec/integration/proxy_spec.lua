-- Forwarding through the real levee to the real lv-testupstream: header rewriting (README, "How levee proxies"),
-- routing, keep-alive and pipelining, streamed bodies compared byte for byte, memory bounds
-- with slow peers, Expect: 100-continue, large heads and the access log (README, "Admin API").
--
-- The upstream's default answer is a JSON echo of what it received (method, target, headers
-- in order, body_len, body_sha = FNV-1a 64, conn serial, seq), so every test checks what
-- actually arrived upstream, not only what the client got back.

local H = require("helpers")
local proc = H.proc

local KiB, MiB = 1024, 1024 * 1024

---------------------------------------------------------------------------------------------
-- helpers

-- FNV-1a 64 that can continue from a previous state (h), so a body made of repeated pieces
-- is hashed without hashing every byte in Lua; ("%016x"):format(h) is H.fnv1a64's form.
local FNV_OFFSET = -3750763034362895579
local function fnv(s, h)
    h = h or FNV_OFFSET
    local prime = 0x100000001b3
    local byte, n, i = string.byte, #s, 1
    while i <= n do
        local j = math.min(i + 31, n)
        local t = { byte(s, i, j) }
        for k = 1, #t do h = (h ~ t[k]) * prime end
        i = j + 1
    end
    return h
end
local function hex(h) return ("%016x"):format(h) end

-- A body with no short period (16-byte decimal counters), so a dropped, repeated or shifted
-- block changes the hash; built once per size.
local bodies = {}
local function body_of(n)
    if not bodies[n] then
        local parts = {}
        for i = 0, n // 16 do parts[#parts + 1] = ("%015d\n"):format(i) end
        local s = table.concat(parts):sub(1, n)
        bodies[n] = { s = s, sha = hex(fnv(s)) }
    end
    return bodies[n].s, bodies[n].sha
end

-- Values of header `name` (any case) in an echo's ordered header list.
local function echo_values(e, name)
    local out = {}
    name = name:lower()
    for _, kv in ipairs(e.headers) do
        if kv[1]:lower() == name then out[#out + 1] = kv[2] end
    end
    return out
end

local function echo_one(e, name)
    local v = echo_values(e, name)
    assert.equal(1, #v, ("exactly one %s upstream, got %d: %s"):format(name, #v, table.concat(v, " | ")))
    return v[1]
end

-- Hop-by-hop names (README, "How levee proxies") plus the ones the tests list in Connection; Proxy-* apart.
local HOP = { ["x-hop-a"] = 1, ["x-hop-b"] = 1, ["x-secret"] = 1, ["x-other"] = 1, ["keep-alive"] = 1,
    te = 1, trailer = 1, upgrade = 1, ["transfer-encoding"] = 1 }

local function echo_names(e)
    local out = {}
    for _, kv in ipairs(e.headers) do out[#out + 1] = kv[1]:lower() end
    return out
end

-- Starts one lv-testupstream and a levee in front of it (one catch-all route "all" unless
-- opts.routes is given). Returns lv, up.
local function start(opts)
    opts = opts or {}
    local up = opts.up or H.upstream({ name = "u" })
    local cfg = {
        upstreams = opts.upstreams or { u = { servers = { up:addr() } } },
        routes = opts.routes or { { name = "all", upstream = "u" } },
        limits = opts.limits,
    }
    local lv = H.levee({ config = cfg, env = opts.env })
    return lv, up
end

-- For RSS measurements under ASan: its quarantine keeps freed blocks (256 MiB by default),
-- so RSS would track bytes allocated, not bytes held. Without it RSS means what it means.
local function rss_env()
    if not H.sanitized then return nil end
    local o = os.getenv("ASAN_OPTIONS")
    return { ASAN_OPTIONS = (o and o ~= "" and (o .. ":") or "") .. "quarantine_size_mb=0" }
end

local function get(lv, path, headers, extra)
    local o = { path = path or "/", headers = headers or {} }
    for k, v in pairs(extra or {}) do o[k] = v end
    local r, err, raw = lv:request(o)
    assert(r, ("request %s %s failed: %s %s"):format(o.method or "GET", o.path, tostring(err), tostring(raw)))
    return r
end

local function echo(r)
    assert.equal(200, r.status, r.body)
    return H.json(r.body)
end

local function rss(lv) return (assert(proc.rss_kb(lv:pid()), "levee RSS")) end

local function still_serves(lv, pid)
    assert.equal(pid, lv:pid())
    assert.is_true(lv:alive())
    local e = echo(get(lv, "/still-alive"))
    assert.equal("/still-alive", e.target)
end

---------------------------------------------------------------------------------------------

describe("proxy headers", function()
    after_each(H.cleanup)

    it("drops hop-by-hop request headers, and the fields Connection names, keeps the rest", function()
        local lv, up = start()
        local pid = lv:pid()
        local r = get(lv, "/hop", {
            { "Connection", "X-Hop-A" },
            { "Connection", "x-hop-b, keep-alive" },
            { "X-Hop-A", "1" },
            { "X-Hop-B", "2" },
            { "Keep-Alive", "timeout=5, max=100" },
            { "TE", "trailers" },
            { "Trailer", "X-Checksum" },
            { "Upgrade", "websocket" },
            { "Proxy-Authorization", "Basic Zm9vOmJhcg==" },
            { "Proxy-Connection", "keep-alive" },
            { "Proxy-Foo", "bar" },
            { "Proxy-X", "x" },
            { "Proxy-Anything-Else", "y" },
            { "X-End-To-End", "kept" },
            { "Authorization", "Bearer t0ken" },
            { "Cookie", "a=1; b=2" },
        })
        local e = echo(r)
        local leaked = {}
        for _, name in ipairs(echo_names(e)) do
            if HOP[name] or name:match("^proxy%-") then leaked[#leaked + 1] = name end
        end
        assert.same({}, leaked)
        for _, v in ipairs(echo_values(e, "connection")) do
            assert.is_nil(v:lower():find("x-hop", 1, true), "Connection names a client field: " .. v)
        end
        assert.equal("kept", echo_one(e, "X-End-To-End"))
        assert.equal("Bearer t0ken", echo_one(e, "Authorization"))
        assert.equal("a=1; b=2", echo_one(e, "Cookie"))
        assert.equal("GET", e.method)
        assert.equal(1, up:stats().requests)
        still_serves(lv, pid)
    end)

    it("drops hop-by-hop response headers, and the fields Connection names", function()
        local lv = start()
        local r = get(lv, "/resp-hop", {
            { "X-Test-Header", "Connection: X-Secret, X-Other" },
            { "X-Test-Header", "X-Secret: s3cr3t" },
            { "X-Test-Header", "X-Other: o" },
            { "X-Test-Header", "Keep-Alive: timeout=9" },
            { "X-Test-Header", "Proxy-Authenticate: Basic realm=x" },
            { "X-Test-Header", "Proxy-Foo: y" },
            { "X-Test-Header", "Proxy-X: z" },
            { "X-Test-Header", "Trailer: X-Sum" },
            { "X-Test-Header", "Upgrade: h2c" },
            { "X-Test-Header", "TE: trailers" },
            { "X-Test-Header", "X-End: yes" },
        })
        assert.equal(200, r.status)
        local leaked = {}
        for _, kv in ipairs(r.header_list) do
            local name = kv[1]:lower()
            if HOP[name] or name:match("^proxy%-") then leaked[#leaked + 1] = name end
        end
        assert.same({}, leaked)
        local conn = (r.headers["connection"] or ""):lower()
        assert.is_nil(conn:find("x-secret", 1, true))
        assert.equal("yes", r.headers["x-end"])
        assert.equal("/resp-hop", H.json(r.body).target)
    end)

    it("sets X-Forwarded-For/Proto/Host and Via, and keeps Host", function()
        local lv = start()
        local e = echo(get(lv, "/fwd", {
            { "Host", "Shop.Example.test:8080" },
            { "X-Forwarded-For", "203.0.113.7" },
            { "X-Forwarded-Proto", "https" },
            { "X-Forwarded-Host", "spoofed.example" },
            { "Via", "1.1 edge-proxy" },
        }))
        assert.equal("Shop.Example.test:8080", echo_one(e, "Host"))
        assert.equal("203.0.113.7, 127.0.0.1", echo_one(e, "X-Forwarded-For"))
        assert.equal("http", echo_one(e, "X-Forwarded-Proto"))
        assert.equal("Shop.Example.test:8080", echo_one(e, "X-Forwarded-Host"))
        local via = table.concat(echo_values(e, "Via"), ", ")
        assert.truthy(via:find("1.1 edge-proxy", 1, true), "earlier Via entry kept: " .. via)
        assert.truthy(via:find("levee", 1, true), "Via names levee: " .. via)
        assert.truthy(via:find("1.1 edge-proxy", 1, true) < via:find("levee", 1, true), "levee appended: " .. via)

        -- without any: the client address alone, Host as the client sent it
        local e2 = echo(get(lv, "/fwd2"))
        assert.equal("127.0.0.1", echo_one(e2, "X-Forwarded-For"))
        assert.equal("http", echo_one(e2, "X-Forwarded-Proto"))
        assert.equal("127.0.0.1:" .. lv.port, echo_one(e2, "Host"))
        assert.equal("127.0.0.1:" .. lv.port, echo_one(e2, "X-Forwarded-Host"))
        assert.truthy(echo_one(e2, "Via"):find("levee", 1, true))
    end)

    it("keeps a valid X-Request-Id, forwards it and returns it", function()
        local lv = start()
        local id = "req-7f3a_9.ABC:xyz/1"
        local r = get(lv, "/rid", { { "X-Request-Id", id } })
        assert.equal(id, r.headers["x-request-id"])
        local e = echo(r)
        assert.equal(id, echo_one(e, "X-Request-Id"))
        -- one X-Request-Id to the client, even though the upstream sent none of its own
        local n = 0
        for _, kv in ipairs(r.header_list) do
            if kv[1]:lower() == "x-request-id" then n = n + 1 end
        end
        assert.equal(1, n)
    end)

    it("creates a 32-hex X-Request-Id when there is none, forwards and returns the same", function()
        local lv = start()
        local seen = {}
        for i = 1, 3 do
            local r = get(lv, "/rid-new/" .. i)
            local id = r.headers["x-request-id"]
            assert.truthy(id and id:match("^%x+$") and #id == 32, "generated id: " .. tostring(id))
            assert.equal(id, echo_one(echo(r), "X-Request-Id"))
            assert.is_nil(seen[id], "ids are unique")
            seen[id] = true
        end
    end)

    it("replaces an invalid X-Request-Id (too long, or with spaces) with a generated one", function()
        local lv, up = start()
        local pid = lv:pid()
        for _, bad in ipairs({ ("x"):rep(300), "has spaces in it", "tab\tinside" }) do
            local r = get(lv, "/rid-bad", { { "X-Request-Id", bad } })
            local id = r.headers["x-request-id"]
            assert.truthy(id and id:match("^%x+$") and #id == 32, "replacement id: " .. tostring(id))
            local e = echo(r)
            assert.equal(id, echo_one(e, "X-Request-Id"))
        end
        assert.equal(3, up:stats().requests)
        still_serves(lv, pid)
    end)

    it("tells the upstream the attempt number: Levee-Attempt: 1", function()
        local lv = start()
        assert.equal("1", echo_one(echo(get(lv, "/attempt")), "Levee-Attempt"))
        local r = get(lv, "/attempt", {}, { method = "POST", body = "abc" })
        local e = echo(r)
        assert.equal("1", echo_one(e, "Levee-Attempt"))
        assert.equal(3, e.body_len)
    end)

    it("passes end-to-end response headers unchanged and in order, repeated Set-Cookie too", function()
        local lv = start()
        local sent = {
            { "Set-Cookie", "a=1; Path=/; Expires=Wed, 21 Oct 2026 07:28:00 GMT" },
            { "X-Multi", "one" },
            { "Cache-Control", "no-store, max-age=0" },
            { "Set-Cookie", "b=2; HttpOnly" },
            { "X-Multi", "two" },
            { "ETag", "\"v1-abc\"" },
            { "Set-Cookie", "c=3; Secure; SameSite=Lax" },
            { "X-Empty-Ish", "a  b" },
        }
        local hs = {}
        for _, kv in ipairs(sent) do hs[#hs + 1] = { "X-Test-Header", kv[1] .. ": " .. kv[2] } end
        local r = get(lv, "/resp-headers", hs)
        assert.equal(200, r.status)
        local wanted = { ["set-cookie"] = 1, ["x-multi"] = 1, ["cache-control"] = 1, etag = 1, ["x-empty-ish"] = 1 }
        local got = {}
        for _, kv in ipairs(r.header_list) do
            if wanted[kv[1]:lower()] then got[#got + 1] = { kv[1], kv[2] } end
        end
        assert.same(sent, got)
        -- each Set-Cookie its own line (not folded into one)
        local raw_cookies = select(2, r.raw_head:gsub("\r\nSet%-Cookie: ", ""))
        assert.equal(3, raw_cookies)
        assert.matches("^u:%d+$", r.headers["x-upstream"])
        assert.equal("application/json", r.headers["content-type"])
    end)
end)

---------------------------------------------------------------------------------------------

describe("proxy routing", function()
    after_each(H.cleanup)

    local function start_routes()
        local a = H.upstream({ name = "a" })
        local b = H.upstream({ name = "b" })
        local lv = start({
            up = a,
            upstreams = { a = { servers = { a:addr() } }, b = { servers = { b:addr() } } },
            routes = {
                { name = "special", match = { prefix = "/api/special" }, upstream = "b" },
                { name = "api", match = { prefix = "/api" }, upstream = "a" },
                { name = "shadowed", match = { prefix = "/api/special/x" }, upstream = "a" },
                { name = "exact", match = { path = "/exact" }, upstream = "b" },
                { name = "byhost", match = { host = "svc.example.com" }, upstream = "b" },
                { name = "writes", match = { methods = { "DELETE", "PUT" } }, upstream = "a" },
                { name = "postonly", match = { prefix = "/both", methods = { "POST" } }, upstream = "b" },
            },
        })
        return lv, a, b
    end

    -- Sends the request and returns (route from the access log, upstream name, response).
    local function route_of(lv, opts, nth)
        local r = get(lv, opts.path, opts.headers, { method = opts.method, body = opts.body })
        local id = r.headers["x-request-id"]
        local entries = lv:wait_access(nth)
        local route
        for _, en in ipairs(entries) do
            if en.request_id == id then route = en.route end
        end
        local upname = r.headers["x-upstream"] and r.headers["x-upstream"]:match("^(%a+):")
        return route, upname, r
    end

    it("takes the first matching route in order: prefix, exact path, host, methods", function()
        local lv, a, b = start_routes()
        local cases = {
            { { path = "/api/special/x" }, "special", "b" },   -- shadowed comes later: never used
            { { path = "/api/special" }, "special", "b" },
            { { path = "/api/other" }, "api", "a" },
            { { path = "/api" }, "api", "a" },
            { { path = "/exact" }, "exact", "b" },
            { { path = "/exact?v=1" }, "exact", "b" },
            { { path = "/x", headers = { { "Host", "SVC.Example.COM:9999" } } }, "byhost", "b" },
            { { path = "/x", headers = { { "Host", "svc.example.com" } } }, "byhost", "b" },
            { { path = "/x", method = "DELETE" }, "writes", "a" },
            { { path = "/x", method = "PUT", body = "p" }, "writes", "a" },
            { { path = "/both/1", method = "POST", body = "p" }, "postonly", "b" },
        }
        for i, c in ipairs(cases) do
            local route, upname, r = route_of(lv, c[1], i)
            local what = (c[1].method or "GET") .. " " .. c[1].path
            assert.equal(200, r.status, what)
            assert.equal(c[2], route, what)
            assert.equal(c[3], upname, what)
            assert.equal(c[1].path, H.json(r.body).target, what)
        end
        assert.equal(0, a:stats().by_path["/api/special/x"] or 0)
    end)

    it("answers 404 no-route with a JSON body when nothing matches, upstreams untouched", function()
        local lv, a, b = start_routes()
        local pid = lv:pid()
        local misses = {
            { path = "/nothing" },
            { path = "/exact/more" },                                           -- path is exact
            { path = "/exactly" },
            { path = "/ap" },
            { path = "/both/1" },                                               -- GET, route wants POST
            { path = "/x", headers = { { "Host", "svc.example.com.evil" } } },  -- host is whole
            { path = "/x", headers = { { "Host", "other.svc.example.com" } } },
        }
        for _, m in ipairs(misses) do
            local r = get(lv, m.path, m.headers)
            assert.equal(404, r.status, m.path)
            assert.equal("no-route", r.headers["levee-error"])
            assert.matches("^application/json", r.headers["content-type"])
            local body = H.json(r.body)
            assert.equal("no-route", body.error)
            assert.is_truthy(r.headers["x-request-id"])
            assert.equal(r.headers["x-request-id"], body.request_id)
            assert.is_true(body.route == nil or body.route == H.null)
        end
        assert.equal(0, a:stats().requests)
        assert.equal(0, b:stats().requests)
        assert.equal(pid, lv:pid())
        assert.equal(200, get(lv, "/api/ok").status)
    end)

    it("forwards the query string intact", function()
        local lv = start()
        for _, target in ipairs({
            "/q?a=1&b=%2F%20x&c=&a=2&flag",
            "/q/path%20with%2Fescapes?x=%E2%82%AC&y=a+b&z=%3D%26",
            "/q?",
            "/q?only",
        }) do
            assert.equal(target, echo(get(lv, target)).target)
        end
    end)

    it("routes an absolute-form target by its authority and forwards the origin-form", function()
        local lv, a, b = start_routes()
        local pid = lv:pid()
        local c = assert(H.conn(lv.port))
        c:send("GET http://svc.example.com:1234/p?q=1 HTTP/1.1\r\nHost: other.test\r\n\r\n")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.matches("^b:", r.headers["x-upstream"])
        local e = H.json(r.body)
        assert.equal("/p?q=1", e.target)
        assert.equal("svc.example.com:1234", echo_one(e, "Host"))

        -- the Host header names the host route, but the authority does not: no route
        c:send("GET http://nomatch.test/x HTTP/1.1\r\nHost: svc.example.com\r\n\r\n")
        local r2 = assert(c:read_response())
        assert.equal(404, r2.status)
        assert.equal("no-route", r2.headers["levee-error"])

        -- an absolute-form path still matches prefix routes
        c:send("GET http://anything.test/api/abs HTTP/1.1\r\nHost: anything.test\r\n\r\n")
        local r3 = assert(c:read_response())
        assert.equal(200, r3.status)
        assert.matches("^a:", r3.headers["x-upstream"])
        assert.equal("/api/abs", H.json(r3.body).target)
        assert.equal(1, b:stats().requests)
        assert.equal(1, a:stats().requests)
        assert.equal(pid, lv:pid())
    end)
end)

---------------------------------------------------------------------------------------------

describe("proxy keep-alive and pipelining", function()
    after_each(H.cleanup)

    it("serves 60 sequential requests on one client connection over pooled upstream connections", function()
        local lv, up = start()
        local c = assert(H.conn(lv.port))
        local conns = {}
        for i = 1, 60 do
            assert(c:send(("GET /seq/%d HTTP/1.1\r\nHost: h\r\n\r\n"):format(i)))
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            assert.is_nil(r.headers["connection"] and r.headers["connection"]:lower():find("close"))
            local e = H.json(r.body)
            assert.equal("/seq/" .. i, e.target)
            conns[e.conn] = true
        end
        local n = 0
        for _ in pairs(conns) do n = n + 1 end
        assert.is_true(n <= 2, "upstream connections used: " .. n)
        local s = up:stats()
        assert.equal(60, s.requests)
        assert.is_true(s.connections <= 2, "upstream connections: " .. s.connections)
        assert.is_false(c:closed())
    end)

    it("answers 10 pipelined requests sent in one write, in order, with mixed methods and bodies", function()
        local lv, up = start()
        local post_body = "name=levee&payload=" .. ("p"):rep(3000)
        local reqs = {
            { method = "GET", path = "/pipe/1" },
            { method = "HEAD", path = "/pipe/2", headers = { { "X-Test-Body-Size", "777" } } },
            { method = "POST", path = "/pipe/3", body = post_body },
            { method = "GET", path = "/pipe/4?x=y" },
            { method = "PUT", path = "/pipe/5", body = "chunked-put-body", chunked = true },
            { method = "DELETE", path = "/pipe/6" },
            { method = "OPTIONS", path = "/pipe/7" },
            { method = "GET", path = "/pipe/8", headers = { { "X-Test-Status", "204" } } },
            { method = "PATCH", path = "/pipe/9", body = "" },
            { method = "GET", path = "/pipe/10", headers = { { "X-Test-Body-Size", "100000" } } },
        }
        local bytes = {}
        for i, q in ipairs(reqs) do
            local hs = { { "X-Request-Id", "pipe-" .. i } }
            for _, h in ipairs(q.headers or {}) do hs[#hs + 1] = h end
            bytes[#bytes + 1] = H.build_request(lv.port, { method = q.method, path = q.path, headers = hs,
                body = q.body, chunked = q.chunked })
        end
        local c = assert(H.conn(lv.port))
        assert(c:send(table.concat(bytes)))
        for i, q in ipairs(reqs) do
            local r = assert(c:read_response({ head = q.method == "HEAD" }))
            local what = q.method .. " " .. q.path
            assert.equal("pipe-" .. i, r.headers["x-request-id"], what)
            if q.method == "HEAD" then
                assert.equal(200, r.status, what)
                assert.equal("777", r.headers["content-length"], what)
            elseif i == 8 then
                assert.equal(204, r.status, what)
            elseif i == 10 then
                assert.equal(200, r.status, what)
                assert.equal(H.pattern(100000), r.body, what)
            else
                local e = echo(r)
                assert.equal(q.method, e.method, what)
                assert.equal(q.path, e.target, what)
                local body = q.body or ""
                assert.equal(#body, e.body_len, what)
                assert.equal(H.fnv1a64(body), e.body_sha, what)
            end
        end
        -- nothing extra: the HEAD and the 204 carried no body bytes
        assert.equal("", c:buffered())
        assert.is_false(c:closed(0.05))
        assert.equal(10, up:stats().requests)
    end)

    it("closes after the response to an HTTP/1.0 client, keeps it open when asked", function()
        local lv = start()
        local c = assert(H.conn(lv.port))
        c:send("GET /ten HTTP/1.0\r\nHost: h\r\n\r\n")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal("/ten", H.json(r.body).target)
        assert.is_true(c:closed(2), "HTTP/1.0 connection closed")

        -- Connection: keep-alive: the answer says so and a second request is served
        local k = assert(H.conn(lv.port))
        k:send("GET /ten-ka/1 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
        local r1 = assert(k:read_response())
        assert.equal(200, r1.status)
        assert.equal("keep-alive", (r1.headers["connection"] or ""):lower())
        assert.truthy(r1.headers["content-length"])
        assert.is_false(k:closed(0.1))
        k:send("GET /ten-ka/2 HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
        local r2 = assert(k:read_response())
        assert.equal("/ten-ka/2", H.json(r2.body).target)

        -- a chunked upstream body reaches an HTTP/1.0 client unchunked, ended by close
        local u = assert(H.conn(lv.port))
        u:send("GET /ten-chunked HTTP/1.0\r\nHost: h\r\nX-Test-Body-Size: 100000\r\nX-Test-Chunked: 1\r\n\r\n")
        local r3 = assert(u:read_response())
        assert.equal(200, r3.status)
        assert.is_nil(r3.headers["transfer-encoding"])
        assert.equal(H.pattern(100000), r3.body)
        assert.is_true(u:closed(2))
    end)

    it("gives an HTTP/1.0 request without Host the upstream server's authority, sent once", function()
        local lv, up = start()
        local c = assert(H.conn(lv.port))
        c:send("GET /c HTTP/1.0\r\n\r\n")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal("/c", e.target)
        assert.equal("HTTP/1.1", e.version)
        -- HTTP/1.1 requires exactly one Host (RFC 9112 §3.2): the server the attempt went to
        assert.equal(up:addr(), echo_one(e, "host"))
        assert.same({}, echo_values(e, "x-forwarded-host"))
        assert.equal(1, up:stats().by_path["/c"])
        assert.is_true(c:closed(2))
    end)

    it("closes the client connection after the response when the client sent Connection: close", function()
        local lv, up = start()
        local c = assert(H.conn(lv.port))
        c:send("GET /bye HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal("/bye", H.json(r.body).target)
        assert.equal("close", (r.headers["connection"] or ""):lower())
        assert.is_true(c:closed(2), "closed after the response")
        assert.equal("", c:buffered())
        -- the upstream connection is not closed for it: the next request reuses it
        local e = echo(get(lv, "/after"))
        assert.equal(1, up:stats().connections)
        assert.equal(2, e.seq)
    end)
end)

---------------------------------------------------------------------------------------------

describe("proxy streaming bodies", function()
    after_each(H.cleanup)

    local N = 8 * MiB

    it("streams an 8 MiB request body with Content-Length, byte for byte", function()
        local lv = start()
        local body, sha = body_of(N)
        local r = get(lv, "/up-cl", {}, { method = "POST", body = body, timeout = 30 })
        local e = echo(r)
        assert.equal(N, e.body_len)
        assert.equal(sha, e.body_sha)
        assert.equal(tostring(N), echo_one(e, "Content-Length"))
    end)

    it("streams an 8 MiB chunked request body of uneven chunks, byte for byte", function()
        local lv = start()
        local body, sha = body_of(N)
        local sizes = { 1, 2, 15, 4096, 65535, 65536, 65537, 1000000, 3 }
        local parts, off, k = {}, 0, 1
        while off < N do
            local n = math.min(sizes[(k - 1) % #sizes + 1], N - off)
            parts[#parts + 1] = ("%x\r\n"):format(n) .. body:sub(off + 1, off + n) .. "\r\n"
            off, k = off + n, k + 1
        end
        parts[#parts + 1] = "0\r\n\r\n"
        local c = assert(H.conn(lv.port, { timeout = 30 }))
        assert(c:send("PUT /up-chunked HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"))
        assert(c:send(table.concat(parts)))
        local r = assert(c:read_response())
        local e = echo(r)
        assert.equal(N, e.body_len)
        assert.equal(sha, e.body_sha)
        assert.equal("PUT", e.method)
        -- the connection is still usable: the chunked body was framed exactly
        c:send("GET /after-chunked HTTP/1.1\r\nHost: h\r\n\r\n")
        assert.equal("/after-chunked", H.json(assert(c:read_response()).body).target)
    end)

    it("streams an 8 MiB response body with Content-Length and chunked, byte for byte", function()
        local lv = start()
        local want = H.pattern(N)
        local r = get(lv, "/down-cl", { { "X-Test-Body-Size", tostring(N) } }, { timeout = 30 })
        assert.equal(200, r.status)
        assert.equal(tostring(N), r.headers["content-length"])
        assert.equal(N, #r.body)
        assert.is_true(r.body == want, "Content-Length body differs from the pattern")

        local c = assert(H.conn(lv.port, { timeout = 30 }))
        c:send("GET /down-chunked HTTP/1.1\r\nHost: h\r\nX-Test-Body-Size: " .. N
            .. "\r\nX-Test-Chunked: 1\r\nX-Test-Chunk-Size: 70000\r\n\r\n")
        local r2 = assert(c:read_response())
        assert.equal(200, r2.status)
        assert.is_true(r2.chunked)
        assert.is_nil(r2.headers["content-length"])
        assert.equal(N, #r2.body)
        assert.is_true(r2.body == want, "chunked body differs from the pattern")
        -- framing ended exactly: the connection carries another request
        c:send("GET /after HTTP/1.1\r\nHost: h\r\n\r\n")
        assert.equal("/after", H.json(assert(c:read_response()).body).target)
    end)

    it("sends no body for HEAD, 204 and 304, and the connection stays in sync", function()
        local lv = start()
        local c = assert(H.conn(lv.port))
        c:send("HEAD /h HTTP/1.1\r\nHost: h\r\nX-Test-Body-Size: 5000\r\n\r\n"
            .. "HEAD /hc HTTP/1.1\r\nHost: h\r\nX-Test-Body-Size: 5000\r\nX-Test-Chunked: 1\r\n\r\n"
            .. "GET /n HTTP/1.1\r\nHost: h\r\nX-Test-Status: 204\r\n\r\n"
            .. "GET /nm HTTP/1.1\r\nHost: h\r\nX-Test-Status: 304\r\n\r\n"
            .. "GET /last HTTP/1.1\r\nHost: h\r\n\r\n")
        local h = assert(c:read_response({ head = true }))
        assert.equal(200, h.status)
        assert.equal("5000", h.headers["content-length"])
        local hc = assert(c:read_response({ head = true }))
        assert.equal(200, hc.status)
        local r204 = assert(c:read_response())
        assert.equal(204, r204.status)
        assert.is_nil(r204.headers["content-length"])
        assert.is_nil(r204.headers["transfer-encoding"])
        local r304 = assert(c:read_response())
        assert.equal(304, r304.status)
        assert.is_nil(r304.headers["transfer-encoding"])
        -- had any of them carried body bytes, this would not parse as the echo of /last
        local last = assert(c:read_response())
        assert.equal("/last", H.json(last.body).target)
        assert.equal("", c:buffered())
    end)
end)

---------------------------------------------------------------------------------------------

describe("proxy memory bounds", function()
    after_each(H.cleanup)

    it("streams a 1 GiB response to a slow reader in bounded memory", function()
        local lv, up = start({ env = rss_env() })
        local pid = lv:pid()
        -- warm-up: buffers and pools allocated once
        local w = get(lv, "/warm", { { "X-Test-Body-Size", tostring(2 * MiB) } }, { timeout = 10 })
        assert.equal(2 * MiB, #w.body)
        local base = rss(lv)

        local c = assert(H.conn(lv.port, { timeout = 10 }))
        c:send("GET /huge HTTP/1.1\r\nHost: h\r\nX-Test-Body-Size: 1073741824\r\n\r\n")
        local head = assert(c:read_response({ head_only = true }))
        assert.equal(200, head.status)
        assert.equal("1073741824", head.headers["content-length"])
        local got, peak = 0, base
        while got < 64 * MiB do
            local n = c:skip(4 * MiB, 10)
            assert.equal(4 * MiB, n)
            got = got + n
            -- the client stops reading for a while (a slow reader, not a synchronisation wait)
            proc.sleep(0.15)
            peak = math.max(peak, rss(lv))
        end
        assert.is_true(peak - base <= 8 * 1024,
            ("levee RSS grew by %d KiB (base %d, peak %d)"):format(peak - base, base, peak))
        c:close()

        -- the half-sent response's upstream connection is dropped, not pooled
        H.wait_until(function() return up:stats().active_connections == 0 end, 5, "upstream connection closed")
        still_serves(lv, pid)
        local after = rss(lv)
        assert.is_true(after - base <= 8 * 1024,
            ("levee RSS after: %d KiB over base"):format(after - base))
    end)

    it("holds a small bounded amount per slow reader (RSS delta over 40 readers)", function()
        local socket = require("socket")
        local lv = start({ env = rss_env() })
        local pid = lv:pid()
        local w = get(lv, "/warm", { { "X-Test-Body-Size", tostring(2 * MiB) } }, { timeout = 10 })
        assert.equal(2 * MiB, #w.body)
        local base = rss(lv)
        local n, readers = 40, {}
        for i = 1, n do
            -- a tiny receive window, and then the client reads nothing at all
            local t = assert(socket.tcp4())
            assert(t:setoption("recv-buffer-size", 4096))
            assert(t:connect("127.0.0.1", lv.port))
            assert(t:send(("GET /slow-read/%d HTTP/1.1\r\nHost: h\r\nX-Test-Body-Size: %d\r\n\r\n")
                :format(i, 16 * MiB)))
            readers[i] = t
        end
        -- levee's RSS settles once every reader's queue is full and the upstreams are paused
        local last, since = rss(lv), H.now()
        H.wait_until(function()
            local now = rss(lv)
            if now ~= last then last, since = now, H.now() end
            return H.now() - since >= 0.5
        end, 20 * H.scale, "levee's RSS to settle (unchanged for 0.5 s)")
        local per = (last - base) / n
        print(("\nslow readers: %.1f KiB each over %d readers"):format(per, n))
        assert.is_true(per <= 160, ("%.0f KiB per slow reader (base %d, now %d KiB)"):format(per, base, last))
        for _, t in ipairs(readers) do t:close() end
        still_serves(lv, pid)
    end)

    it("uploads 16 MiB to an upstream that stops reading, in bounded memory", function()
        local n = 16 * MiB
        local lv = start({ limits = { body_size = "64MiB" }, env = rss_env() })
        local pid = lv:pid()
        local body8, _ = body_of(8 * MiB)
        local sha = hex(fnv(body8, fnv(body8)))
        -- warm-up with a body, so the body path's buffers exist before the baseline
        local w = echo(get(lv, "/warm", {}, { method = "POST", body = body8:sub(1, MiB), timeout = 10 }))
        assert.equal(MiB, w.body_len)
        local base = rss(lv)

        local c = assert(H.conn(lv.port, { timeout = 30 }))
        assert(c:send("POST /slow-up HTTP/1.1\r\nHost: h\r\nContent-Length: " .. n
            .. "\r\nX-Test-Action: slow-read\r\nX-Test-Delay-Ms: 500\r\n\r\n"))
        local peak = base
        local piece = MiB
        for _ = 1, 2 do -- the body is body8 twice
            for off = 0, 8 * MiB - 1, piece do
                assert(c:send(body8:sub(off + 1, off + piece)))
                peak = math.max(peak, rss(lv))
            end
        end
        local r = assert(c:read_response({ timeout = 30 }))
        local e = echo(r)
        assert.equal(n, e.body_len)
        assert.equal(sha, e.body_sha)
        peak = math.max(peak, rss(lv))
        assert.is_true(peak - base < 16 * 1024,
            ("levee RSS grew by %d KiB (base %d, peak %d)"):format(peak - base, base, peak))
        still_serves(lv, pid)
    end)
end)

---------------------------------------------------------------------------------------------

describe("proxy Expect, large heads and access log", function()
    after_each(H.cleanup)

    it("answers Expect: 100-continue with 100 Continue, then forwards the body", function()
        local lv, up = start()
        local body, sha = body_of(5000)
        local c = assert(H.conn(lv.port))
        c:send("POST /expect HTTP/1.1\r\nHost: h\r\nContent-Length: 5000\r\nExpect: 100-continue\r\n\r\n")
        local interim = assert(c:read_response({ timeout = 3 }))
        assert.equal(100, interim.status)
        assert.is_true(interim.interim)
        c:send(body)
        local r = assert(c:read_response())
        while r.interim do r = assert(c:read_response()) end
        local e = echo(r)
        assert.equal(5000, e.body_len)
        assert.equal(sha, e.body_sha)
        assert.equal(1, up:stats().requests)
        -- the connection goes on
        c:send("GET /next HTTP/1.1\r\nHost: h\r\n\r\n")
        assert.equal("/next", H.json(assert(c:read_response()).body).target)
    end)

    it("passes header values and request targets near the limits", function()
        local lv = start()
        local pid = lv:pid()
        -- one value that brings the whole head to 64 bytes under limits.header_size (32 KiB)
        local function head_len(v)
            local bytes = H.build_request(lv.port, { path = "/big-header", headers = { { "X-Big", v }, { "X-After", "tail" } } })
            return #bytes
        end
        local pad = 32 * KiB - 64 - head_len("")
        local big = {}
        for i = 1, pad do big[i] = string.char(97 + (i * 7) % 26) end
        big = table.concat(big)
        assert.equal(32 * KiB - 64, head_len(big))
        local e = echo(get(lv, "/big-header", { { "X-Big", big }, { "X-After", "tail" } }))
        assert.equal(big, echo_one(e, "X-Big"))
        assert.equal("tail", echo_one(e, "X-After"))

        local many = {}
        for i = 1, 50 do many[#many + 1] = { "X-Many-" .. i, ("v"):rep(400) .. i } end
        local e2 = echo(get(lv, "/many-headers", many))
        for i = 1, 50 do assert.equal(("v"):rep(400) .. i, echo_one(e2, "X-Many-" .. i)) end

        local target = "/long?" .. ("k=v&"):rep(1750)
        assert.is_true(#target > 7000 and #target < 8 * KiB - 32)
        assert.equal(target, echo(get(lv, target)).target)
        still_serves(lv, pid)
    end)

    it("logs one JSON line per request with id, method, path, route, status, attempts, bytes", function()
        local up = H.upstream({ name = "u" })
        local lv = start({ up = up, routes = { { name = "logged", match = { prefix = "/log" }, upstream = "u" } } })
        local post_body = ("x"):rep(1234)
        local sent = {
            { method = "GET", path = "/log/a?q=1", status = 200 },
            { method = "POST", path = "/log/b", body = post_body, status = 200 },
            { method = "HEAD", path = "/log/c", status = 200 },
            { method = "GET", path = "/log/d", headers = { { "X-Test-Status", "503" } }, status = 503 },
            { method = "GET", path = "/nolog", status = 404 },
            { method = "GET", path = "/log/e", headers = { { "X-Request-Id", "client-id-42" } }, status = 200 },
        }
        local resp = {}
        for i, q in ipairs(sent) do
            local r = get(lv, q.path, q.headers, { method = q.method, body = q.body })
            assert.equal(q.status, r.status, q.path)
            resp[i] = r
        end
        assert.equal("client-id-42", resp[6].headers["x-request-id"])
        -- one more request, so any late or duplicate line for the first ones shows up before it
        local marker = get(lv, "/log/marker")
        local entries = lv:wait_access(#sent + 1)
        assert.equal(#sent + 1, #entries, "one entry per request")
        assert.equal(marker.headers["x-request-id"], entries[#entries].request_id)
        local by_id = {}
        for _, en in ipairs(entries) do
            assert.is_nil(by_id[en.request_id], "duplicate entry for " .. tostring(en.request_id))
            by_id[en.request_id] = en
        end
        for i, q in ipairs(sent) do
            local r = resp[i]
            local id = r.headers["x-request-id"]
            local en = by_id[id]
            assert.is_truthy(en, "no entry for " .. q.path .. " id " .. tostring(id))
            assert.equal(q.method, en.method, q.path)
            local p = q.path:match("^[^?]*")
            assert.is_true(en.path == q.path or en.path == p, q.path .. " logged as " .. tostring(en.path))
            assert.equal(q.status, en.status, q.path)
            assert.is_true(type(en.duration_ms) == "number" and en.duration_ms >= 0, q.path)
            assert.is_true(type(en.bytes_out) == "number" and en.bytes_out >= #r.body
                and en.bytes_out <= #r.raw, q.path .. " bytes_out " .. tostring(en.bytes_out) .. " raw " .. #r.raw)
            if q.status == 404 then
                assert.is_true(en.route == nil or en.route == H.null, "no route logged")
                assert.is_true(en.upstream == nil or en.upstream == H.null)
                assert.equal(0, en.attempts)
            else
                assert.equal("logged", en.route, q.path)
                assert.equal(1, en.attempts, q.path)
                assert.equal(up:addr(), en.upstream, q.path)
            end
            local want_in = q.body and #q.body or 0
            assert.is_true(type(en.bytes_in) == "number" and en.bytes_in >= want_in
                and en.bytes_in <= want_in + 1024, q.path .. " bytes_in " .. tostring(en.bytes_in))
        end
        -- the POST's body and the 503 are visible as such
        assert.equal(1234, H.json(resp[2].body).body_len)
        assert.equal(6, up:stats().requests)
    end)
end)
