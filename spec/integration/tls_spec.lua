-- HTTPS listeners: levee terminates TLS (listen = { addr = ..., tls = { cert, key } }) in
-- front of a plain upstream. The client is curl (a real TLS stack), the certificates are made
-- by the openssl command line for this run.
local H = require("helpers")

local certs -- folder with ca-signed cert.pem / key.pem for localhost, and a second key

local function sh(cmd)
    local ok = os.execute(cmd .. " >/dev/null 2>&1")
    assert(ok, "command failed: " .. cmd)
end

local function make_certs()
    local d = H.tmpdir()
    sh(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem -days 2 "
        .. "-subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1"):format(d, d))
    sh(("openssl genrsa -out %s/other.pem 2048"):format(d))
    return d
end

-- curl ARGS URL...: returns exit code, "status connects" per URL, the first URL's body
local function curl(args, ...)
    local out = H.tmpdir() .. "/out"
    local urls = {}
    for i, u in ipairs({ ... }) do
        urls[#urls + 1] = (i == 1 and "-o " .. out or "-o /dev/null") .. " " .. u
    end
    local cmd = "curl -s -m 10 --cacert " .. certs .. "/cert.pem " .. args .. " " .. table.concat(urls, " ")
        .. " -w '%{http_code} %{num_connects}\\n' 2>/dev/null"
    local f = io.popen(cmd)
    local meta = f:read("a")
    local ok, _, code = f:close()
    return (ok and 0 or code), meta, H.read_file(out)
end

local function https_levee(up)
    local cfg = [[
return {
  listen = { "127.0.0.1:$PORT", { addr = "127.0.0.1:$PORT2", tls = { cert = "]] .. certs .. [[/cert.pem",
                                                                    key = "]] .. certs .. [[/key.pem" } } },
  access_log = false,
  limits = { body_size = "8MiB" },
  upstreams = { u = { servers = { "]] .. up:addr(1) .. [[" } } },
  routes = { { name = "r", upstream = "u" } },
}]]
    -- H.levee waits for $PORT; the TLS listener opens after it (its certificate is loaded
    -- first), so a client could otherwise come before it listens
    local lv = H.levee{ config = cfg }
    H.wait_until(function() return H.port_open(lv.ports.PORT2) end, 10 * H.scale,
        "the TLS listener")
    return lv
end

describe("TLS listeners", function()
    -- certificates per test: H.cleanup removes temporary folders after each one
    before_each(function() certs = make_certs() end)
    after_each(H.cleanup)

    it("serve HTTPS with keep-alive, and tell the upstream X-Forwarded-Proto: https", function()
        local up = H.upstream{}
        local lv = https_levee(up)
        local tls_port = lv.ports.PORT2
        local code, meta = curl("", ("https://localhost:%d/a"):format(tls_port), ("https://localhost:%d/b"):format(tls_port))
        assert.equal(0, code)
        -- two transfers: the second reused the first's connection (0 new connects)
        assert.equal("200 1\n200 0\n", meta)
        local st = up:stats(1)
        assert.equal(1, st.by_path["/a"])
        assert.equal(1, st.by_path["/b"])
        local _, _, body = curl("", ("https://localhost:%d/echo"):format(tls_port))
        local echo = H.json(body)
        local proto
        for _, kv in ipairs(echo.headers) do
            if kv[1] == "X-Forwarded-Proto" then proto = kv[2] end
        end
        assert.equal("https", proto)
        -- the plain listener next to it still says http
        local plain = assert(H.request(lv.port, { path = "/plain" }))
        for _, kv in ipairs(H.json(plain.body).headers) do
            if kv[1] == "X-Forwarded-Proto" then assert.equal("http", kv[2]) end
        end
    end)

    it("streams multi-MiB bodies both ways over TLS, bytes intact", function()
        local up = H.upstream{}
        local lv = https_levee(up)
        local tls_port = lv.ports.PORT2
        local data = H.pattern(3 * 1024 * 1024)
        local file = H.tmpfile(data, "up.bin")
        local code, meta, body = curl("-X POST --data-binary @" .. file, ("https://localhost:%d/upload"):format(tls_port))
        assert.equal(0, code)
        assert.equal("200 1\n", meta)
        local echo = H.json(body)
        assert.equal(#data, echo.body_len)
        assert.equal(H.fnv1a64(data), echo.body_sha)
        local code2, meta2, got = curl("-H 'X-Test-Body-Size: 3000000'", ("https://localhost:%d/download"):format(tls_port))
        assert.equal(0, code2)
        assert.equal("200 1\n", meta2)
        assert.equal(3000000, #got)
        assert.is_true(got == H.pattern(3000000), "downloaded bytes differ")
    end)

    it("answer nothing in plain text on the TLS port, and keep serving", function()
        local up = H.upstream{}
        local lv = https_levee(up)
        local tls_port = lv.ports.PORT2
        local data, how = H.raw(tls_port, "GET / HTTP/1.1\r\nHost: a\r\n\r\n", { timeout = 3 })
        assert.are_not.equal("timeout", how)
        assert.is_nil((data or ""):find("HTTP/1.1", 1, true), "no plaintext HTTP answer on a TLS port")
        assert.equal(0, up:stats(1).requests)
        local code, meta = curl("", ("https://localhost:%d/after"):format(tls_port))
        assert.equal(0, code)
        assert.equal("200 1\n", meta)
    end)

    it("refuse to start with a key that does not match the certificate", function()
        local d = H.tmpdir()
        local cfg = H.tmpfile([[
return {
  listen = { { addr = "127.0.0.1:1", tls = { cert = "]] .. certs .. [[/cert.pem", key = "]] .. certs .. [[/other.pem" } } },
  upstreams = { u = { servers = { "127.0.0.1:2" } } },
  routes = { { name = "r", upstream = "u" } },
}]], "levee.lua")
        local code, _, err = H.run_levee({ "-c", cfg }, { cwd = d, timeout = 10 })
        assert.equal(1, code)
        assert.truthy(err:find("TLS", 1, true), err)
    end)

    it("speak TLS to upstreams: verified, pooled, and a wrong name is a connect-failure", function()
        local up = H.upstream{}
        local back = https_levee(up) -- the TLS upstream: levee's own HTTPS listener
        local front = H.levee{ config = [[
return {
  listen = { "127.0.0.1:$PORT" }, access_log = false,
  upstreams = {
    good = { servers = { "127.0.0.1:]] .. back.ports.PORT2 .. [[" },
             tls = { sni = "localhost", ca = "]] .. certs .. [[/cert.pem" } },
    wrong = { servers = { "127.0.0.1:]] .. back.ports.PORT2 .. [[" },
              tls = { sni = "wrong.example", ca = "]] .. certs .. [[/cert.pem" } },
    unknown_ca = { servers = { "127.0.0.1:]] .. back.ports.PORT2 .. [[" }, tls = { sni = "localhost" } },
    fresh = { servers = { "127.0.0.1:]] .. back.ports.PORT2 .. [[" }, pool = { max_idle = 0 },
              tls = { sni = "localhost", ca = "]] .. certs .. [[/cert.pem" } },
  },
  admin = "127.0.0.1:$ADMIN",
  routes = {
    { name = "fresh", match = { prefix = "/fresh" }, upstream = "fresh" },
    { name = "wrong", match = { prefix = "/wrong" }, upstream = "wrong" },
    { name = "unknown", match = { prefix = "/unknown" }, upstream = "unknown_ca" },
    { name = "good", upstream = "good" },
  },
}]] }
        local c = assert(H.conn(front.port))
        local data = H.pattern(300000)
        for i = 1, 10 do
            c:send(H.build_request(front.port, { method = "POST", path = "/t" .. i, body = data }))
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            local echo = H.json(r.body)
            assert.equal(#data, echo.body_len)
            assert.equal(H.fnv1a64(data), echo.body_sha)
        end
        -- 10 requests and the stats request over pooled connections: the upstream saw one
        local st = assert(H.json(assert(H.request(front.port, { path = "/__stats" })).body))
        assert.equal(1, st.connections)
        local big = assert(H.request(front.port, { path = "/big", headers = { ["X-Test-Body-Size"] = "4000000" } }))
        assert.equal(4000000, #big.body)
        assert.is_true(big.body == H.pattern(4000000), "bytes differ after two TLS hops")

        local bad = assert(H.request(front.port, { path = "/wrong/x" }))
        local e = H.assert_gw_error(bad, 502, "connect-failure", "wrong")
        assert.truthy(e.detail:find("hostname mismatch", 1, true), e.detail)
        local unknown = assert(H.request(front.port, { path = "/unknown/x" }))
        local e2 = H.assert_gw_error(unknown, 502, "connect-failure", "unknown")
        assert.truthy(e2.detail:find("certificate verify failed", 1, true), e2.detail)
        assert.is_nil(up:stats(1).by_path["/wrong/x"])
        assert.is_nil(up:stats(1).by_path["/unknown/x"])

        -- No idle pool: every request opens a new TLS connection, and all but the first
        -- resume the session the back levee gave (no full handshake).
        for i = 1, 4 do
            local r = assert(H.request(front.port, { path = "/fresh/" .. i }))
            assert.equal(200, r.status)
            assert.equal("/fresh/" .. i, H.json(r.body).target)
        end
        local status = H.json(assert(front:admin("/status")).body)
        local server
        for _, u in ipairs(status.upstreams) do
            if u.name == "fresh" then server = u.servers[1] end
        end
        assert.equal(4, server.connects)
        assert.equal(3, server.tls_resumed)
    end)
end)
