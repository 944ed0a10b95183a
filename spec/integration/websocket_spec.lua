-- WebSocket (HTTP/1.1 Upgrade) tunnels (README "WebSocket and other upgrades"): a request with
-- Connection: upgrade and Upgrade: websocket goes to the upstream as an upgrade; its 101 makes
-- the two connections a byte tunnel both ways, with backpressure, half-close, an idle timeout,
-- metrics, one access-log line when it closes, and the drain at shutdown. lv-testupstream's
-- GET /ws... answers the handshake and echoes every frame (spec/support/README.md).
local H = require("helpers")

local KEY = "dGhlIHNhbXBsZSBub25jZQ=="        -- RFC 6455 §1.3's example key
local ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" -- and its Sec-WebSocket-Accept

local function handshake(path, extra)
    return ("GET %s HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        .. "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n%s\r\n"):format(path, KEY, extra or "")
end

-- A masked client frame (RFC 6455 §5.2).
local function frame(opcode, payload)
    local n = #payload
    local head
    if n < 126 then
        head = string.char(0x80 | opcode, 0x80 | n)
    elseif n < 65536 then
        head = string.char(0x80 | opcode, 0x80 | 126) .. string.pack(">I2", n)
    else
        head = string.char(0x80 | opcode, 0x80 | 127) .. string.pack(">I8", n)
    end
    local key = "\x37\xfa\x21\x3d"
    local k = { key:byte(1, 4) }
    local out = {}
    for i = 1, n, 4096 do
        local b = { payload:byte(i, math.min(i + 4095, n)) }
        for j = 1, #b do b[j] = b[j] ~ k[(i + j - 2) % 4 + 1] end
        out[#out + 1] = string.char(table.unpack(b))
    end
    return head .. key .. table.concat(out)
end

-- One server frame from connection c: opcode, payload (or nil, why).
local function read_frame(c, timeout)
    local deadline = H.now() + (timeout or 5) * H.scale
    local h, why = c:_take(2, deadline)
    if not h then return nil, why end
    local b1, b2 = h:byte(1, 2)
    assert.equal(0, b2 & 0x80, "a server frame is not masked")
    local len = b2 & 0x7f
    if len == 126 then
        local x = assert(c:_take(2, deadline))
        len = string.unpack(">I2", x)
    elseif len == 127 then
        local x = assert(c:_take(8, deadline))
        len = string.unpack(">I8", x)
    end
    local p = ""
    if len > 0 then
        p, why = c:_take(len, deadline)
        if not p then return nil, why end
    end
    return b1 & 0x0f, p
end

local function config(up, opts)
    opts = opts or {}
    return [[
return {
  listen = { "127.0.0.1:$PORT" },
  admin = "127.0.0.1:$ADMIN",
  drain_timeout = "]] .. (opts.drain or "10s") .. [[",
  upstreams = { u = { servers = { "]] .. up:addr(1) .. [[" } } },
  routes = {
    { name = "idle", match = { prefix = "/ws/idle" }, upstream = "u", tunnel_idle_timeout = "300ms" },
    { name = "plain", match = { prefix = "/ws/plain" }, upstream = "u", upgrade = {} },
    { name = "retry", match = { prefix = "/ws/retry" }, upstream = "u",
      retry = { attempts = 3, on = { "reset", "connect-failure" }, backoff = { base = "1ms", max = "2ms" } } },
    { name = "ws", upstream = "u" },
  },
}]]
end

local function metric(lv, name, labels)
    local r = assert(lv:admin("/metrics"))
    assert.equal(200, r.status)
    return H.metric(H.parse_metrics(r.body), name, labels) or 0
end

local function has_flag(e, flag)
    for _, f in ipairs(e.flags or {}) do if f == flag then return true end end
    return false
end

-- Opens a tunnel on levee's port: the 101 response and the connection.
local function open(port, path, extra, first_bytes)
    local c = assert(H.conn(port))
    assert(c:send(handshake(path or "/ws", extra) .. (first_bytes or "")))
    local r, why = c:read_response({ head_only = true })
    assert(r, why)
    return r, c
end

local function echo(c, text)
    assert(c:send(frame(1, text)))
    local op, p = read_frame(c)
    assert.equal(1, op)
    assert.equal(text, p)
end

describe("WebSocket tunnels", function()
    local up, lv
    before_each(function()
        up = H.upstream{}
        lv = H.levee{ config = config(up) }
    end)
    after_each(H.cleanup)

    it("pass the handshake both ways and echo frames; a close handshake closes both", function()
        local r, c = open(lv.port, "/ws", "Sec-WebSocket-Protocol: chat\r\n")
        assert.equal(101, r.status)
        assert.equal(ACCEPT, r.headers["sec-websocket-accept"])
        assert.equal("websocket", r.headers["upgrade"]:lower())
        assert.equal("upgrade", r.headers["connection"]:lower())
        for i = 1, 5 do echo(c, "message " .. i) end
        -- several frames in one write, read back in order
        assert(c:send(frame(1, "a") .. frame(2, "\0\1\2") .. frame(1, ("x"):rep(300))))
        local op, p = read_frame(c)
        assert.same({ 1, "a" }, { op, p })
        op, p = read_frame(c)
        assert.same({ 2, "\0\1\2" }, { op, p })
        op, p = read_frame(c)
        assert.same({ 1, ("x"):rep(300) }, { op, p })
        -- the close handshake: the upstream answers and closes; levee closes the client
        assert(c:send(frame(8, string.pack(">I2", 1000))))
        op, p = read_frame(c)
        assert.equal(8, op)
        assert.equal(string.pack(">I2", 1000), p)
        assert.is_true(c:closed(5 * H.scale)) -- the upstream's end of stream, passed on
        c:close() -- and ours: both directions ended, the tunnel closes
        local e = lv:wait_access(1)[1]
        assert.equal(101, e.status)
        assert.is_true(has_flag(e, "tunnel"))
    end)

    it("forward bytes sent right after the handshake, and the upstream's bytes after its 101", function()
        local r, c = open(lv.port, "/ws", "X-Test-Ws-Hello: hello first\r\n", frame(1, "early"))
        assert.equal(101, r.status)
        local op, p = read_frame(c)
        assert.same({ 1, "hello first" }, { op, p })
        op, p = read_frame(c)
        assert.same({ 1, "early" }, { op, p })
        echo(c, "later")
    end)

    it("carry a 2 MiB message both ways, with backpressure", function()
        local _, c = open(lv.port, "/ws")
        local big = H.pattern(2 * 1024 * 1024)
        local f = frame(2, big)
        -- send in pieces while the echo of earlier frames may come back
        assert(c:send(f))
        local op, p = read_frame(c, 20)
        assert.equal(2, op)
        assert.equal(#big, #p)
        assert.equal(H.fnv1a64(big), H.fnv1a64(p))
        -- many 64 KiB frames written before reading any echo
        local piece = H.pattern(64 * 1024)
        local many = {}
        for i = 1, 32 do many[i] = frame(2, piece) end
        assert(c:send(table.concat(many)))
        for _ = 1, 32 do
            op, p = read_frame(c, 20)
            assert.equal(2, op)
            assert.equal(piece, p)
        end
        echo(c, "still here")
        assert.is_true(metric(lv, "levee_tunnel_bytes_total", { route = "ws", direction = "upstream" })
            >= 4 * 1024 * 1024)
        assert.is_true(metric(lv, "levee_tunnel_bytes_total", { route = "ws", direction = "downstream" })
            >= 4 * 1024 * 1024)
    end)

    it("count open tunnels and their bytes, and log one line with status 101 when one closes", function()
        local _, c = open(lv.port, "/ws")
        echo(c, "ping")
        H.wait_until(function() return metric(lv, "levee_tunnels_active", { route = "ws" }) == 1 end,
            5 * H.scale, "levee_tunnels_active 1")
        assert.equal(1, metric(lv, "levee_tunnels_total", { route = "ws" }))
        assert.equal(0, #lv:access_json()) -- not before it closes
        c:close()
        H.wait_until(function() return metric(lv, "levee_tunnels_active", { route = "ws" }) == 0 end,
            5 * H.scale, "levee_tunnels_active 0")
        local e = lv:wait_access(1)[1]
        assert.equal(101, e.status)
        assert.equal("ws", e.route)
        assert.is_true(has_flag(e, "tunnel"))
        assert.equal(#frame(1, "ping"), e.bytes_in)
        assert.is_true(e.bytes_out > 4 + #"ping") -- the 101 head and the echo
        assert.is_true(e.duration_ms >= 0)
        assert.equal(#frame(1, "ping"),
            metric(lv, "levee_tunnel_bytes_total", { route = "ws", direction = "upstream" }))
        assert.equal(2 + #"ping",
            metric(lv, "levee_tunnel_bytes_total", { route = "ws", direction = "downstream" }))
    end)

    it("half-close: the client's end of stream reaches the upstream, which answers and closes", function()
        local _, c = open(lv.port, "/ws")
        assert(c:send(frame(1, "last words")))
        c.sock:shutdown("send")
        local op, p = read_frame(c)
        assert.same({ 1, "last words" }, { op, p })
        assert.is_true(c:closed(5 * H.scale))
        H.wait_until(function() return metric(lv, "levee_tunnels_active", { route = "ws" }) == 0 end,
            5 * H.scale, "levee_tunnels_active 0")
    end)

    it("close after tunnel_idle_timeout of silence, and not while traffic flows", function()
        local t0 = H.now()
        local _, c = open(lv.port, "/ws/idle")
        -- traffic every 100 ms for 0.8 s keeps it open past 300 ms
        local quiet
        while H.now() - t0 < 0.8 do
            echo(c, "tick")
            quiet = H.now()
            H.proc.sleep(0.1) -- the traffic's own pace, not a synchronisation
        end
        assert.is_false(c:closed(0))
        assert.is_true(c:closed(5 * H.scale))
        local took = H.now() - quiet
        assert.is_true(took >= 0.25, ("closed after %.3fs of silence"):format(took))
        local e = lv:wait_access(1)[1]
        assert.equal(101, e.status)
        assert.equal("idle", e.route)
    end)

    it("an upgrade the upstream refuses is an ordinary response; the connection goes on", function()
        local r, c = open(lv.port, "/ws", "X-Test-Ws-Refuse: 1\r\nX-Test-Status: 403\r\n")
        assert.equal(403, r.status)
        assert.is_nil(r.headers["upgrade"])
        assert(c:skip(tonumber(r.headers["content-length"])))
        assert(c:send("GET /next HTTP/1.1\r\nHost: localhost\r\n\r\n"))
        local r2 = assert(c:read_response())
        assert.equal(200, r2.status)
        assert.equal("/next", H.json(r2.body).target)
        assert.equal(0, metric(lv, "levee_tunnels_total", { route = "ws" }))
    end)

    it("a route with upgrade = {} strips Upgrade: the upstream sees an ordinary request", function()
        local r, c = open(lv.port, "/ws/plain")
        assert.equal(200, r.status)
        local body = assert(c:_take(tonumber(r.headers["content-length"]), H.now() + 5))
        for _, h in ipairs(H.json(body).headers) do
            assert.is_not.equal("upgrade", h[1]:lower())
            if h[1]:lower() == "connection" then assert.is_nil(h[2]:lower():find("upgrade")) end
        end
    end)

    it("an upgrade is never retried once sent: a reset gives 502 after one request", function()
        up:reset()
        local r = open(lv.port, "/ws/retry", "X-Test-Action: reset\r\n")
        assert.equal(502, r.status)
        assert.equal(1, up:stats().requests)
        local e = lv:wait_access(1)[1]
        assert.equal(1, e.attempts)
    end)

    it("a request with a body is not upgraded (Upgrade removed)", function()
        local c = assert(H.conn(lv.port))
        assert(c:send((handshake("/ws"):gsub("\r\n\r\n$", "\r\nContent-Length: 2\r\n\r\nhi"))))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal(2, H.json(r.body).body_len)
    end)
end)

describe("WebSocket tunnels at shutdown", function()
    after_each(H.cleanup)

    it("keep working through the drain, are closed at drain_timeout, and levee exits", function()
        local up = H.upstream{}
        local lv = H.levee{ config = config(up, { drain = "1s" }) }
        local _, c = open(lv.port, "/ws")
        echo(c, "before")
        local t0 = H.now()
        assert.is_true(lv:kill("TERM"))
        H.wait_until(function() return not H.port_open(lv.port) end, 5 * H.scale, "listener closed")
        echo(c, "during the drain")
        assert.is_true(c:closed(10 * H.scale))
        local took = H.now() - t0
        assert.is_true(took >= 0.9, ("tunnel closed after %.3fs"):format(took))
        assert.equal(0, (lv:wait_exit(10 * H.scale)))
    end)

    it("survive a reload", function()
        local up = H.upstream{}
        local lv = H.levee{ config = config(up) }
        local _, c = open(lv.port, "/ws")
        echo(c, "before")
        lv:reload()
        lv:wait_log("configuration reloaded: generation 2", 5 * H.scale, true)
        echo(c, "after the reload")
        c:close()
    end)
end)

-- TLS on either side, with the openssl command line: its s_client is the client in front of
-- an HTTPS listener, its s_server the upstream behind levee's upstream TLS (lv-testupstream
-- speaks plain TCP only). Each is driven through its stdin (io.popen) and read from a file.
describe("WebSocket tunnels over TLS", function()
    local certs
    local function make_certs()
        local d = H.tmpdir()
        assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem "
            .. "-days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1")
            :format(d, d)))
        return d
    end
    before_each(function() certs = make_certs() end)
    after_each(H.cleanup)

    local function wait_file(path, want, what)
        return H.wait_until(function()
            local s = H.read_file(path) or ""
            return s:find(want, 1, true) and s
        end, 10 * H.scale, what)
    end

    it("work behind an HTTPS listener", function()
        local up = H.upstream{}
        local lv = H.levee{ config = [[
return {
  listen = { "127.0.0.1:$PORT", { addr = "127.0.0.1:$PORT2", tls = { cert = "]] .. certs .. [[/cert.pem",
                                                                    key = "]] .. certs .. [[/key.pem" } } },
  upstreams = { u = { servers = { "]] .. up:addr(1) .. [[" } } },
  routes = { { name = "ws", upstream = "u" } },
}]] }
        H.wait_until(function() return H.port_open(lv.ports.PORT2) end, 10 * H.scale, "the TLS listener")
        local out = H.tmpdir() .. "/out"
        local p = io.popen(("exec openssl s_client -quiet -no_ign_eof -nocommands -connect 127.0.0.1:%d -servername localhost "
            .. "-CAfile %s/cert.pem > %s 2>/dev/null"):format(lv.ports.PORT2, certs, out), "w")
        p:write(handshake("/ws") .. frame(1, "over tls"))
        p:flush()
        local got = wait_file(out, "over tls", "the echo over TLS")
        assert.truthy(got:find("HTTP/1.1 101", 1, true))
        assert.truthy(got:find(ACCEPT, 1, true))
        p:write(frame(1, "second"))
        p:flush()
        wait_file(out, "second", "the second echo")
        p:write(frame(8, string.pack(">I2", 1000)))
        p:flush()
        p:close()
        local e = lv:wait_access(1, 10 * H.scale)[1]
        assert.equal(101, e.status)
        assert.is_true(has_flag(e, "tunnel"))
    end)

    it("work to a TLS upstream", function()
        local port = H.free_port()
        local got = H.tmpdir() .. "/got"
        local srv = io.popen(("exec openssl s_server -quiet -naccept 2 -accept 127.0.0.1:%d -cert %s/cert.pem "
            .. "-key %s/key.pem > %s 2>/dev/null"):format(port, certs, certs, got), "w")
        -- (this probe is its first connection, levee's the second)
        H.wait_until(function() return H.port_open(port) end, 10 * H.scale, "openssl s_server")
        local lv = H.levee{ config = ([[
return {
  listen = { "127.0.0.1:$PORT" },
  drain_timeout = "100ms", -- lv:stop() below with the tunnel still open
  upstreams = { u = { servers = { "127.0.0.1:%d" }, tls = { ca = "%s/cert.pem", sni = "localhost" } } },
  routes = { { name = "ws", upstream = "u" } },
}]]):format(port, certs) }
        local c = assert(H.conn(lv.port))
        assert(c:send(handshake("/ws")))
        wait_file(got, "Sec-WebSocket-Key: " .. KEY, "the handshake at the TLS upstream")
        -- the upstream's answer: the 101 head and a first frame in one write
        srv:write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            .. "Sec-WebSocket-Accept: " .. ACCEPT .. "\r\n\r\n" .. string.char(0x81, 5) .. "hello")
        srv:flush()
        local r = assert(c:read_response({ head_only = true }))
        assert.equal(101, r.status)
        assert.equal(ACCEPT, r.headers["sec-websocket-accept"])
        local op, p = read_frame(c)
        assert.same({ 1, "hello" }, { op, p })
        assert(c:send(frame(1, "to the tls upstream")))
        -- s_server prints what it received: the masked frame, byte for byte
        wait_file(got, frame(1, "to the tls upstream"), "the frame at the TLS upstream")
        lv:stop()
        srv:close()
    end)
end)
