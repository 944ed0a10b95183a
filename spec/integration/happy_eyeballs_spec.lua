-- Happy Eyeballs (RFC 8305) for upstream connects, end to end: the real levee resolves a name
-- to [::1] and 127.0.0.1 (in that order) and races connects to them. levee runs in a private
-- mount namespace whose /etc/hosts is this spec's (unshare -m + mount --bind, as root), so
-- nothing outside the spec sees the name. An address that "hangs" is a listener whose accept
-- queue is full: the kernel drops further SYNs, so a connect to it neither succeeds nor fails
-- until levee gives up. One that "refuses" is a bound port with no listener.
--
-- Cases: the first family hangs and the second serves (success after the 250 ms Connection
-- Attempt Delay, not after connect_timeout); both fail (one error naming each address with its
-- own reason); the first refuses (the second at once); both hang (one connect_timeout for the
-- whole race, not one per address); four addresses (tried with the families interleaved); a
-- TLS upstream (the TCP winner does the handshake); a client that leaves mid-race (no further
-- address is started, the pool slot comes back). /status checks the pool accounting each time:
-- a race holds one slot, losers are neither connects nor failures.

local H = require("helpers")
local socket = require("socket")

-- mixed.test: the resolver sorts it [::1], 127.0.0.1, 127.0.0.2, [::ffff:127.0.0.3] (RFC 6724);
-- the race must go [::1], 127.0.0.1, [::ffff:127.0.0.3], 127.0.0.2 (RFC 8305 §4).
local HOSTS = [[
127.0.0.1 localhost
::1 dual.test
127.0.0.1 dual.test
127.0.0.2 mixed.test
::ffff:127.0.0.3 mixed.test
127.0.0.1 mixed.test
::1 mixed.test
]]

-- Runs argv to completion; returns ok, stdout, stderr. Not tracked by H.spawn: it is reaped
-- here, and a tracked pid would be signalled again by H.cleanup after the number is reused.
local function run(argv)
    local dir = H.tmpdir()
    local pid = assert(H.proc.spawn(argv, { stdout = dir .. "/out", stderr = dir .. "/err" }))
    local exited, code = H.proc.wait(pid, 10 * H.scale)
    if exited == nil then
        H.proc.kill(pid, "KILL", true)
        H.proc.wait(pid, 5)
    end
    return exited == true and code == 0, H.read_file(dir .. "/out"), H.read_file(dir .. "/err")
end

-- The wrapper H.levee runs as `bin`: levee itself, exec'd (same pid, so signals and exit
-- codes are levee's) inside a mount namespace whose /etc/hosts is `hosts`.
local function wrapper(hosts)
    local path = H.tmpfile(([[#!/bin/sh
exec unshare -m sh -c 'mount --bind "$0" /etc/hosts && exec "$@"' %q %q "$@"
]]):format(hosts, os.getenv("LEVEE_BIN") or error("LEVEE_BIN is not set")), "levee-dual")
    assert(run({ "chmod", "+x", path }))
    return path
end

-- The addresses getaddrinfo gives for `name` under `hosts` (in a namespace like levee's), in
-- the resolver's order. Fails loudly (never skips) when the machine cannot do that.
local function resolve(hosts, name)
    local ok, out, err = run({ "sh", "-c", "command -v unshare" })
    assert(ok, "unshare is not available (util-linux): this spec needs it\n" .. out .. err)
    ok, out, err = run({ "unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/hosts && getent ahosts "$1"', hosts,
        name })
    assert(ok, "unshare -m + mount --bind of a hosts file failed (run as root):\n" .. out .. err)
    local addrs = {}
    for a in out:gmatch("(%S+)%s+STREAM") do addrs[#addrs + 1] = a end
    return addrs
end

-- RFC 8305 §4: alternate the families, the first address's family first.
local function interleave(addrs)
    local fam = function(a) return a:find(":", 1, true) and 6 or 4 end
    local by = { [4] = {}, [6] = {} }
    for _, a in ipairs(addrs) do table.insert(by[fam(a)], a) end
    local order, k = {}, fam(addrs[1])
    local i = { [4] = 1, [6] = 1 }
    while by[4][i[4]] or by[6][i[6]] do
        if by[k][i[k]] then
            order[#order + 1] = by[k][i[k]]
            i[k] = i[k] + 1
        end
        k = 10 - k
    end
    return order
end

local held = {} -- sockets to close after each test

local function keep(s)
    held[#held + 1] = s
    return s
end

local function close_held()
    for _, s in ipairs(held) do s:close() end
    held = {}
end

-- Closes the held socket bound to host:port (a reservation, for a process to bind it now).
local function release(host, port)
    for i, s in ipairs(held) do
        local h, p = s:getsockname()
        if h == host and tonumber(p) == port then
            s:close()
            table.remove(held, i)
            return
        end
    end
    error(("no socket held on %s:%d"):format(host, port))
end

local function new_socket(v6)
    return keep(assert(v6 and socket.tcp6() or socket.tcp()))
end

-- A listener on host:port that accepts nothing and whose accept queue is full: connects to it
-- hang (their SYNs are dropped). Checked with a probe connect that must time out. Returns
-- nil, err when the port is taken.
local function hang(host, port)
    local v6 = host:find(":", 1, true) ~= nil
    local l = new_socket(v6)
    local bound, why = l:bind(host, port)
    if not bound then return nil, why end
    assert(l:listen(0))
    for _ = 1, 3 do
        local c = new_socket(v6)
        c:settimeout(0)
        c:connect(host, port)
    end
    H.proc.sleep(0.05) -- let the first of them complete into the accept queue
    local probe = assert(v6 and socket.tcp6() or socket.tcp())
    probe:settimeout(0.3)
    local ok, err = probe:connect(host, port)
    probe:close()
    assert(not ok and err == "timeout",
        ("%s:%d should drop SYNs (full accept queue), but a connect gave %s"):format(host, port,
            tostring(ok or err)))
    return true
end

-- host:port bound but not listening: connects to it are refused, and nobody else takes it.
-- Returns nil, err when the port is taken.
local function refuse(host, port)
    host = host:match("^::ffff:([%d.]+)$") or host -- v4-mapped: the IPv4 port is the one used
    local s = new_socket(host:find(":", 1, true) ~= nil)
    return s:bind(host, port)
end

-- A port on which every (fn, host) of `plan` succeeds, each binding its socket at once so that
-- no other process (specs run in parallel) takes the port in between.
local function claim(plan)
    for _ = 1, 20 do
        local p, ok = H.free_port(), true
        for _, step in ipairs(plan) do
            ok = ok and step[1](step[2], p)
        end
        if ok then return p end
    end
    error("no port free for the plan on 127.0.0.1 and ::1")
end

describe("Happy Eyeballs upstream connects", function()
    local up, lv, ports, certs

    local function server(port) return "dual.test:" .. port end

    local mixed -- the resolver's order for mixed.test

    setup(function()
        local hosts = H.tmpfile(HOSTS, "hosts")
        local dual = resolve(hosts, "dual.test")
        assert(dual[1] == "::1" and dual[2] == "127.0.0.1",
            "the resolver does not give dual.test as ::1, 127.0.0.1: " .. table.concat(dual, " "))
        mixed = resolve(hosts, "mixed.test")
        assert(#mixed == 4, "mixed.test: " .. table.concat(mixed, " "))
        H.cleanup()
    end)

    before_each(function()
        close_held() -- left over if the last before_each failed
        local hosts = H.tmpfile(HOSTS, "hosts")
        -- 127.0.0.1 serves: lv-testupstream on two ports the kernel picks
        up = H.upstream({ n = 2, name = "u" })
        ports = { slow6 = up.ports[1], refused6 = up.ports[2] }
        assert(hang("::1", ports.slow6)) -- [::1] hangs
        assert(refuse("::1", ports.refused6)) -- [::1] refuses
        ports.fail = claim({ { hang, "::1" }, { refuse, "127.0.0.1" } })
        ports.stuck = claim({ { hang, "::1" }, { hang, "127.0.0.1" } })
        local all = {}
        for i, a in ipairs(mixed) do all[i] = { refuse, a } end
        ports.mixed = claim(all)
        -- [::1] hangs, 127.0.0.1 will be a TLS levee (the TLS test starts it)
        ports.tls = claim({ { hang, "::1" }, { refuse, "127.0.0.1" } })
        certs = H.tmpdir()
        local ok, out, err = run({ "openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
            "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", certs .. "/key.pem", "-out",
            certs .. "/cert.pem", "-days", "2", "-subj", "/CN=localhost", "-addext",
            "subjectAltName=DNS:localhost" })
        assert(ok, "openssl: " .. out .. err)
        local once = { attempts = 1 }
        lv = H.levee({
            bin = wrapper(hosts),
            config = {
                admin = true,
                upstreams = {
                    slow6 = { servers = { server(ports.slow6) }, connect_timeout = "5s" },
                    refused6 = { servers = { server(ports.refused6) }, connect_timeout = "5s" },
                    fail = { servers = { server(ports.fail) }, connect_timeout = "1s" },
                    stuck = { servers = { server(ports.stuck) }, connect_timeout = "1s" },
                    mixed = { servers = { "mixed.test:" .. ports.mixed }, connect_timeout = "1s" },
                    tls = { servers = { server(ports.tls) }, connect_timeout = "5s",
                        tls = { sni = "localhost", ca = certs .. "/cert.pem" } },
                },
                routes = {
                    { name = "slow6", match = { prefix = "/slow6" }, upstream = "slow6", timeout = "20s", retry = once },
                    { name = "refused6", match = { prefix = "/refused6" }, upstream = "refused6", timeout = "20s", retry = once },
                    { name = "fail", match = { prefix = "/fail" }, upstream = "fail", timeout = "20s", retry = once },
                    { name = "stuck", match = { prefix = "/stuck" }, upstream = "stuck", timeout = "20s", retry = once },
                    { name = "mixed", match = { prefix = "/mixed" }, upstream = "mixed", timeout = "20s", retry = once },
                    { name = "tls", match = { prefix = "/tls" }, upstream = "tls", timeout = "20s", retry = once },
                },
            },
        })
        -- both addresses resolved before the first request
        H.wait_until(function()
            local r = lv:admin("/status")
            if not r or r.status ~= 200 then return false end
            for _, u in ipairs(H.json(r.body).upstreams) do
                if u.servers[1].addresses ~= (u.name == "mixed" and 4 or 2) then return false end
            end
            return true
        end, 5 * H.scale, "dual.test to resolve to two addresses")
    end)

    after_each(function()
        close_held()
        H.cleanup()
    end)

    local function server_status(name)
        local r = assert(lv:admin("/status"))
        for _, u in ipairs(H.json(r.body).upstreams) do
            if u.name == name then return u.servers[1] end
        end
        error("no upstream " .. name .. " in /status")
    end

    local function timed_get(path)
        local t0 = H.now()
        local r, err = lv:request({ path = path, timeout = 15 })
        assert(r, ("request %s: %s"):format(path, tostring(err)))
        return r, H.now() - t0
    end

    it("connects to the second family after the attempt delay when the first hangs", function()
        local r, took = timed_get("/slow6/a")
        assert.equal(200, r.status)
        assert.equal("u:" .. ports.slow6, H.json(r.body).server)
        -- the race started 127.0.0.1 250 ms after [::1], not after connect_timeout (5 s)
        assert.is_true(took < 1.5, ("took %.3f s"):format(took))
        local e = lv:wait_access(1)[1]
        assert.equal(200, e.status)
        assert.equal(1, e.attempts)
        assert.equal(1, #e.tries)
        assert.equal("200", e.tries[1].outcome)
        assert.is_true(e.upstream_ms >= 240 and e.upstream_ms < 1500,
            "upstream_ms " .. tostring(e.upstream_ms))
        -- one connection made, the [::1] attempt closed as a loser (not a failure), and the
        -- race's single pool slot went to the winner, now idle
        local s = server_status("slow6")
        assert.equal(1, s.connects)
        assert.equal(0, s.connect_failures)
        assert.equal(0, s.active)
        assert.equal(1, s.idle)
        -- the pooled winner serves the next request at once
        local r2 = timed_get("/slow6/b")
        assert.equal(200, r2.status)
        assert.equal(1, server_status("slow6").connects)
    end)

    it("names every address with its own reason when all fail", function()
        local r, took = timed_get("/fail/x")
        local e = H.assert_gw_error(r, 502, "connect-failure", "fail")
        local want = ("[::1]:%d: connect timeout; 127.0.0.1:%d: connection refused"):format(ports.fail, ports.fail)
        assert.equal(want, e.detail)
        lv:wait_log(want, 5, true)
        -- bounded by connect_timeout (1 s) from the first attempt
        assert.is_true(took >= 0.9 and took < 2.5, ("took %.3f s"):format(took))
        local s = server_status("fail")
        assert.equal(2, s.connect_failures)
        assert.equal(0, s.active)
        assert.equal(0, s.idle)
        local a = lv:wait_access(1)[1]
        assert.equal("connect-failure", a.error)
        assert.equal(1, a.attempts)
    end)

    it("tries the second address at once when the first refuses", function()
        local r, took = timed_get("/refused6/a")
        assert.equal(200, r.status)
        assert.equal("u:" .. ports.refused6, H.json(r.body).server)
        local e = lv:wait_access(1)[1]
        assert.equal(1, e.attempts)
        -- well below the 250 ms attempt delay: the refusal started 127.0.0.1 right away
        assert.is_true(e.upstream_ms < 200, "upstream_ms " .. tostring(e.upstream_ms))
        assert.is_true(took < 1, ("took %.3f s"):format(took))
        local s = server_status("refused6")
        assert.equal(1, s.connects)
        assert.equal(1, s.connect_failures)
        assert.equal(0, s.active)
        assert.equal(1, s.idle)
    end)

    it("bounds the whole race by one connect_timeout when every address hangs", function()
        local r = timed_get("/stuck/x")
        local e = H.assert_gw_error(r, 502, "connect-failure", "stuck")
        assert.equal(("[::1]:%d: connect timeout; 127.0.0.1:%d: connect timeout"):format(ports.stuck, ports.stuck),
            e.detail)
        -- one connect_timeout (1 s) from the first attempt, where one per address would be 2 s
        local ms = lv:wait_access(1)[1].tries[1].ms
        assert.is_true(ms >= 990 and ms < 1500, "attempt took " .. tostring(ms) .. " ms")
        local s = server_status("stuck")
        assert.equal(2, s.connect_failures)
        assert.equal(0, s.active)
    end)

    it("tries the addresses with the families interleaved (RFC 8305 §4)", function()
        local order = interleave(mixed)
        assert.are_not.same(mixed, order) -- the resolver's own order would not do
        local r = timed_get("/mixed/x")
        local e = H.assert_gw_error(r, 502, "connect-failure", "mixed")
        local want = {}
        for i, a in ipairs(order) do
            want[i] = (a:find(":", 1, true) and "[%s]:%d" or "%s:%d"):format(a, ports.mixed) .. ": connection refused"
        end
        assert.equal(table.concat(want, "; "), e.detail)
        -- every refusal started the next address at once (waiting the attempt delay after
        -- each would take 750 ms)
        local ms = lv:wait_access(1)[1].tries[1].ms
        assert.is_true(ms < 200, "attempt took " .. tostring(ms) .. " ms")
        assert.equal(4, server_status("mixed").connect_failures)
    end)

    it("hands the TCP winner alone to the TLS handshake", function()
        release("127.0.0.1", ports.tls)
        H.levee({
            ports = { PORT = ports.tls },
            config = {
                listen = { { addr = "127.0.0.1:$PORT",
                    tls = { cert = certs .. "/cert.pem", key = certs .. "/key.pem" } } },
                access_log = false,
                upstreams = { u = { servers = { up:addr(1) } } },
                routes = { { name = "r", upstream = "u" } },
            },
        })
        local r, took = timed_get("/tls/a")
        assert.equal(200, r.status)
        assert.equal("u:" .. ports.slow6, H.json(r.body).server)
        assert.is_true(took < 1.5, ("took %.3f s"):format(took))
        local s = server_status("tls")
        assert.equal(1, s.connects)
        assert.equal(0, s.connect_failures)
        assert.equal(0, s.active)
        assert.equal(1, s.idle)
        -- the TLS connection is pooled like any other
        assert.equal(200, timed_get("/tls/b").status)
        assert.equal(1, server_status("tls").connects)
    end)

    it("starts no further address for a client that left, and gives the slot back", function()
        local c = assert(H.conn(lv.port))
        local t0 = H.now()
        c:send("GET /stuck/gone HTTP/1.1\r\nHost: x\r\n\r\n")
        -- the [::1] attempt is under way: the race holds one slot
        H.wait_until(function() return server_status("stuck").active == 1 end, 2, "the race to start")
        local age = H.now() - t0
        c:close()
        assert(age < 0.2, ("the client must leave within the 250 ms attempt delay, left after %.3f s"):format(age))
        -- [::1] times out at connect_timeout; 127.0.0.1 was never started
        H.wait_until(function() return server_status("stuck").active == 0 end, 3 * H.scale,
            "the slot to come back")
        local s = server_status("stuck")
        assert.equal(1, s.connect_failures)
        assert.equal(0, s.connects)
        assert.equal(0, s.idle)
        assert.is_true(lv:alive())
    end)
end)
