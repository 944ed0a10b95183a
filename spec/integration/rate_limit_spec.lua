-- Rate limits (docs/configuration.md, routes[].rate_limit and trusted_proxies; README
-- "Admission control"): GCRA per key, in the memory store shared by the workers or in Redis.
-- A new key passes burst + 1 requests at once, then one every per / rate; a refused request is
-- a 429 `rate-limited` with Retry-After and the RateLimit-Policy / RateLimit fields, and never
-- reaches the upstream (the test upstream's /__stats count proves it). Shadow mode forwards
-- everything and only counts. The accuracy contract: 10 s at twice the limit admits within 2%
-- of rate x time + burst, on memory and on Redis.
local H = require("helpers")
local socket = require("socket")

local RUN = tostring(H.proc.getpid()) .. "-" .. tostring(math.random(1, 1e9))

-- One route `api` (catch-all) with `rate_limit = rl`; `top` keys are added to the config.
local function config_of(up, rl, top, route_extra)
    local route = { name = "api", upstream = "api", timeout = "5s", rate_limit = rl,
        retry = { attempts = 1 } }
    for k, v in pairs(route_extra or {}) do route[k] = v end
    local config = { admin = true, upstreams = { api = { servers = { up:addr() } } }, routes = { route } }
    for k, v in pairs(top or {}) do config[k] = v end
    return config
end

local function start(up, rl, top, route_extra)
    return H.levee({ config = config_of(up, rl, top, route_extra) })
end

-- Writes `config`, sends SIGHUP and waits for the n-th successful reload.
local function reload(lv, config, n)
    lv:write_config(config)
    assert.is_true(lv:reload())
    H.wait_until(function() return (lv:metric('levee_config_reloads_total{result="ok"}') or 0) >= n end,
        5 * H.scale, "reload " .. n)
end

local function get(lv, path, headers)
    return assert(H.request(lv.port, { path = path, headers = headers or {} }))
end

local function by_path(up, path) return up:stats().by_path[path] or 0 end

local function metrics(lv)
    local r = assert(lv:admin("/metrics"))
    assert.equal(200, r.status)
    return H.parse_metrics(r.body)
end

local function metric(lv, name, labels) return H.metric(metrics(lv), name, labels) or 0 end

-- Sum of every sample of `name` whose labels include `want`.
local function metric_sum(lv, name, want)
    local n = 0
    for _, m in ipairs(metrics(lv)) do
        if m.name == name then
            local ok = true
            for k, v in pairs(want or {}) do if m.labels[k] ~= v then ok = false end end
            if ok then n = n + m.value end
        end
    end
    return n
end

local function has_flag(e, flag)
    for _, f in ipairs(e.flags or {}) do if f == flag then return true end end
    return false
end

-- The access-log entries of `path`, once there are n of them.
local function entries(lv, path, n)
    return H.wait_until(function()
        local out = {}
        for _, e in ipairs(lv:access_json()) do
            if e.path == path then out[#out + 1] = e end
        end
        return #out >= n and out
    end, 5 * H.scale, n .. " access-log lines of " .. path)
end

-- RateLimit: "default";r=N;t=N -> r, t (numbers); RateLimit-Policy: "default";q=N;w=N -> q, w.
local function rl_fields(r)
    local rl, pol = r.headers["ratelimit"], r.headers["ratelimit-policy"]
    local rr, t, q, w
    if rl then
        rr, t = rl:match('^"default";r=(%d+);t=(%d+)$')
        assert(rr, "RateLimit field " .. rl)
    end
    if pol then
        q, w = pol:match('^"default";q=(%d+);w=(%d+)$')
        assert(q, "RateLimit-Policy field " .. pol)
    end
    return tonumber(rr), tonumber(t), tonumber(q), tonumber(w)
end

local function assert_limited(r, route)
    H.assert_gw_error(r, 429, "rate-limited", route or "api")
    assert.matches("^%d+$", r.headers["retry-after"])
end

-- Sends GET `path` at `per_s` requests a second for `seconds`, round-robin over `nconns`
-- keep-alive connections to each of `ports` (a request is answered before the next is sent on
-- that connection). Returns admitted (200), refused (429), other statuses, and T: the time
-- from the first send to the last.
local function blast(ports, path, per_s, seconds, nconns, headers)
    local conns = {}
    for _, p in ipairs(ports) do
        for _ = 1, nconns do conns[#conns + 1] = { port = p } end
    end
    local function req_bytes(port)
        return H.build_request(port, { path = path, headers = headers or {} })
    end
    local ok, limited, other = 0, 0, {}
    local t0 = H.now()
    local t_first, t_last
    local i = 0
    while true do
        local due = t0 + i / per_s
        local now = H.now()
        if due >= t0 + seconds then break end
        if now < due then
            H.proc.sleep(math.min(due - now, 0.005))
        else
            local c = conns[i % #conns + 1]
            if not c.c then c.c = assert(H.conn(c.port, { timeout = 5 })) end
            local ts = H.now()
            assert(c.c:send(req_bytes(c.port)))
            local r, why = c.c:read_response({ timeout = 5 })
            assert(r, "blast: " .. tostring(why))
            t_first = t_first or ts
            t_last = ts
            if r.status == 200 then
                ok = ok + 1
            elseif r.status == 429 then
                limited = limited + 1
            else
                other[r.status] = (other[r.status] or 0) + 1
            end
            if (r.headers["connection"] or ""):lower() == "close" then
                c.c:close()
                c.c = nil
            end
            i = i + 1
        end
    end
    for _, c in ipairs(conns) do if c.c then c.c:close() end end
    return ok, limited, other, t_last - t_first
end

-- The accuracy contract for a limit of `rate` per second plus `burst`, at twice the rate.
local function accuracy(ports, path, rate, burst, label, headers)
    local ok, limited, other, T = blast(ports, path, 2 * rate, 10, 2, headers)
    local want = rate * T + burst
    local dev = (ok - want) / want
    print(("rate_limit accuracy [%s; LEVEE_TEST_WORKERS=%d]: admitted %d, refused %d, T = %.3f s, expected %.1f, deviation %+.2f%%")
        :format(label, H.workers(), ok, limited, T, want, dev * 100))
    assert.same({}, other)
    assert.is_true(math.abs(dev) <= 0.02,
        ("%s: admitted %d, expected %.1f (T = %.3f s): off by %.2f%%"):format(label, ok, want, T, dev * 100))
    return ok, want
end

describe("rate_limit, memory store", function()
    local up
    before_each(function() up = H.upstream({ name = "rl" }) end)
    after_each(H.cleanup)

    it("passes burst + 1 at once, then answers 429 with Retry-After and the RateLimit fields", function()
        local lv = start(up, { rate = 1, per = "10s", burst = 2 })
        local rs = {}
        for i = 1, 3 do
            local r = get(lv, "/exact")
            assert.equal(200, r.status, "request " .. i)
            local rr, t, q, w = rl_fields(r)
            assert.equal(3, q) -- burst + ceil(w / I) = 2 + 1
            assert.equal(10, w)
            rs[i] = rr
            assert.is_true(t >= 1 and t <= 30, "t=" .. tostring(t))
        end
        -- admitted responses count down what is left
        assert.same({ 2, 1, 0 }, rs)
        local r = get(lv, "/exact")
        assert_limited(r)
        -- the next request passes in 10 s (one emission interval), rounded up to whole seconds
        assert.equal("10", r.headers["retry-after"])
        local rr, t, q, w = rl_fields(r)
        assert.equal(0, rr)
        assert.equal(3, q)
        assert.equal(10, w)
        -- the whole quota is back when the three intervals are spent
        assert.is_true(t >= 10 and t <= 30, "t=" .. tostring(t))
        assert.equal(3, by_path(up, "/exact"))
        -- still refused, still not forwarded
        assert_limited(get(lv, "/exact"))
        assert.equal(3, by_path(up, "/exact"))
        local es = entries(lv, "/exact", 5)
        local flagged = 0
        for _, e in ipairs(es) do
            if has_flag(e, "rate-limited") then
                flagged = flagged + 1
                assert.equal(429, e.status)
            else
                assert.equal(200, e.status)
            end
        end
        assert.equal(2, flagged)
        assert.equal(2, metric(lv, "levee_rate_limited_total", { route = "api", mode = "enforce" }))
        assert.equal(0, metric(lv, "levee_rate_limited_total", { route = "api", mode = "shadow" }))
    end)

    it("rounds a sub-second wait up to Retry-After: 1", function()
        local lv = start(up, { rate = 10, per = "1s", burst = 0 })
        assert.equal(200, get(lv, "/sub").status)
        local r = get(lv, "/sub")
        assert_limited(r)
        assert.equal("1", r.headers["retry-after"])
        local rr, t, q, w = rl_fields(r)
        assert.equal(0, rr)
        assert.equal(1, t)
        assert.equal(10, q)
        assert.equal(1, w)
    end)

    it("answers pipelined requests in order, the refused ones too", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 1 })
        local c = assert(H.conn(lv.port))
        local bytes = {}
        for i = 1, 5 do bytes[i] = H.build_request(lv.port, { path = "/pipe/" .. i }) end
        assert(c:send(table.concat(bytes)))
        local want = { 200, 200, 429, 429, 429 }
        for i = 1, 5 do
            local r = assert(c:read_response({ timeout = 5 }))
            assert.equal(want[i], r.status, "response " .. i)
            if r.status == 200 then assert.equal("/pipe/" .. i, H.json(r.body).target) end
        end
        assert.equal(1, by_path(up, "/pipe/1"))
        assert.equal(1, by_path(up, "/pipe/2"))
        assert.equal(0, by_path(up, "/pipe/3"))
        -- the connection is still good
        assert(c:send(H.build_request(lv.port, { path = "/pipe/6" })))
        assert.equal(429, assert(c:read_response({ timeout = 5 })).status)
    end)

    it("keeps each key's state across reloads, under the new parameters", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 1 })
        for _ = 1, 2 do assert.equal(200, get(lv, "/rl").status) end
        assert_limited(get(lv, "/rl"))
        -- the same limit reloaded: still spent
        reload(lv, config_of(up, { rate = 1, per = "1h", burst = 1 }), 1)
        assert_limited(get(lv, "/rl"))
        -- a larger burst: the key keeps what it spent (two of four), so two more pass
        reload(lv, config_of(up, { rate = 1, per = "1h", burst = 3 }), 2)
        for i = 1, 2 do assert.equal(200, get(lv, "/rl").status, "after the reload " .. i) end
        local r = get(lv, "/rl")
        assert_limited(r)
        local _, _, q = rl_fields(r)
        assert.equal(4, q)
        assert.equal(4, by_path(up, "/rl"))
    end)

    it("limits each header:X-Api-Key value separately; no header is not limited", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 1, key = "header:X-Api-Key" })
        for _ = 1, 2 do assert.equal(200, get(lv, "/k", { ["X-Api-Key"] = "alpha" }).status) end
        assert_limited(get(lv, "/k", { ["X-Api-Key"] = "alpha" }))
        for _ = 1, 2 do assert.equal(200, get(lv, "/k", { ["X-Api-Key"] = "beta" }).status) end
        assert_limited(get(lv, "/k", { ["X-Api-Key"] = "beta" }))
        -- keys are compared as bytes: another case is another key
        assert.equal(200, get(lv, "/k", { ["X-Api-Key"] = "ALPHA" }).status)
        -- no key: not limited, and no RateLimit fields
        for i = 1, 6 do
            local r = get(lv, "/k")
            assert.equal(200, r.status, "request without a key " .. i)
            assert.is_nil(r.headers["ratelimit"])
        end
        assert.equal(2 + 2 + 1 + 6, by_path(up, "/k"))
        assert.equal(2, metric(lv, "levee_rate_limited_total", { route = "api", mode = "enforce" }))
    end)

    it("keys client_ip by the peer; X-Forwarded-For of an untrusted peer changes nothing", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 1 })
        assert.equal(200, get(lv, "/ip", { ["X-Forwarded-For"] = "10.0.0.1" }).status)
        assert.equal(200, get(lv, "/ip", { ["X-Forwarded-For"] = "10.0.0.2" }).status)
        -- every request comes from 127.0.0.1, whatever it claims
        assert_limited(get(lv, "/ip", { ["X-Forwarded-For"] = "10.0.0.3" }))
        assert_limited(get(lv, "/ip"))
        assert.equal(2, by_path(up, "/ip"))
    end)

    it("keys client_ip by the forwarded client when the peer is a trusted proxy", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 1 }, { trusted_proxies = { "127.0.0.1" } })
        local function xff(v) return { ["X-Forwarded-For"] = v } end
        for _ = 1, 2 do assert.equal(200, get(lv, "/tp", xff("10.0.0.1")).status) end
        assert_limited(get(lv, "/tp", xff("10.0.0.1")))
        -- another client behind the same proxy has its own limit
        for _ = 1, 2 do assert.equal(200, get(lv, "/tp", xff("10.0.0.2")).status) end
        assert_limited(get(lv, "/tp", xff("10.0.0.2")))
        -- the first untrusted address from the right is the client: a trusted hop after it
        -- is skipped, and whatever it claims before it is not believed
        assert_limited(get(lv, "/tp", xff("10.0.0.1, 127.0.0.1")))
        assert_limited(get(lv, "/tp", xff("10.0.0.9, 10.0.0.2")))
        assert.equal(200, get(lv, "/tp", xff("10.0.0.1, 10.0.0.3")).status)
        -- no header: the proxy itself is the client
        for _ = 1, 2 do assert.equal(200, get(lv, "/tp").status) end
        assert_limited(get(lv, "/tp"))
        assert.equal(7, by_path(up, "/tp"))
    end)

    it("keys by a Lua hook: nil is not limited, a failing hook is counted and not limited", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 0,
            key = H.code([[function(req)
                local t = req.headers["x-tenant"]
                if t == "boom" then error("tenant hook fails") end
                return t
            end]]) })
        assert.equal(200, get(lv, "/h", { ["X-Tenant"] = "t1" }).status)
        assert_limited(get(lv, "/h", { ["X-Tenant"] = "t1" }))
        assert.equal(200, get(lv, "/h", { ["X-Tenant"] = "t2" }).status)
        for _ = 1, 3 do assert.equal(200, get(lv, "/h").status) end
        assert.equal(0, metric_sum(lv, "levee_hook_errors_total", { route = "api" }))
        for _ = 1, 3 do assert.equal(200, get(lv, "/h", { ["X-Tenant"] = "boom" }).status) end
        assert.equal(3, metric_sum(lv, "levee_hook_errors_total", { route = "api" }))
        assert.equal(1 + 1 + 3 + 3, by_path(up, "/h"))
        assert.equal(1, metric(lv, "levee_rate_limited_total", { route = "api", mode = "enforce" }))
    end)

    it("shadow mode forwards everything, flags and counts what it would refuse", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 1, mode = "shadow" })
        for i = 1, 5 do
            local r = get(lv, "/sh")
            assert.equal(200, r.status, "request " .. i)
            assert.is_nil(r.headers["ratelimit"])
            assert.is_nil(r.headers["ratelimit-policy"])
            assert.is_nil(r.headers["retry-after"])
        end
        assert.equal(5, by_path(up, "/sh"))
        local flagged = 0
        for _, e in ipairs(entries(lv, "/sh", 5)) do
            assert.is_false(has_flag(e, "rate-limited"))
            if has_flag(e, "rate-limited-shadow") then flagged = flagged + 1 end
        end
        assert.equal(3, flagged)
        assert.equal(3, metric(lv, "levee_rate_limited_total", { route = "api", mode = "shadow" }))
        assert.equal(0, metric(lv, "levee_rate_limited_total", { route = "api", mode = "enforce" }))
    end)

    it("holds a bounded number of keys: full of live keys, on_store_error applies", function()
        local lv = start(up, { rate = 1, per = "1h", burst = 5, max_keys = 64,
            key = "header:X-Api-Key", on_store_error = "fail_closed" })
        for i = 1, 64 do
            assert.equal(200, get(lv, "/full", { ["X-Api-Key"] = "k" .. i }).status, "key " .. i)
        end
        local r = get(lv, "/full", { ["X-Api-Key"] = "k65" })
        H.assert_gw_error(r, 503, "rate-limit-store-unavailable", "api")
        -- keys it holds still work
        assert.equal(200, get(lv, "/full", { ["X-Api-Key"] = "k1" }).status)
        assert.equal(65, by_path(up, "/full"))
        assert.is_true(metric(lv, "levee_rate_limit_store_errors_total", { route = "api" }) >= 1)
    end)

    it("drops expired keys, so a bounded store keeps taking new ones", function()
        local lv = start(up, { rate = 1, per = "100ms", burst = 0, max_keys = 64,
            key = "header:X-Api-Key", on_store_error = "fail_closed" })
        for round = 1, 4 do
            local t_last
            for i = 1, 64 do
                local r = get(lv, "/churn", { ["X-Api-Key"] = ("r%d-k%d"):format(round, i) })
                assert.equal(200, r.status, ("round %d key %d: %s"):format(round, i, r.headers["levee-error"] or ""))
                t_last = H.now()
            end
            -- every key of this round expires 100 ms after its request (the wait is the subject)
            while H.now() < t_last + 0.15 do H.proc.sleep(0.02) end
        end
        assert.equal(0, metric(lv, "levee_rate_limit_store_errors_total", { route = "api" }))
        assert.equal(4 * 64, by_path(up, "/churn"))
    end)

    it("admits within 2% of rate x time + burst over 10 s at twice the rate", function()
        local lv = start(up, { rate = 50, per = "1s", burst = 10 })
        accuracy({ lv.port }, "/acc", 50, 10, "memory")
        assert.is_true(metric(lv, "levee_rate_limited_total", { route = "api", mode = "enforce" }) > 0)
    end)

    it("is exact across two workers (accuracy with workers = 2)", function()
        local lv = start(up, { rate = 50, per = "1s", burst = 10 }, { workers = 2 })
        accuracy({ lv.port }, "/acc2", 50, 10, "memory, workers = 2")
    end)
end)

---------------------------------------------------------------------------------------------
-- Redis: a real redis-server on a free loopback port (as idempotency_spec.lua starts it).

local redis_cmd = H.redis_cmd

describe("rate_limit, Redis store shared by two levees", function()
    local up, a, b, rport, rpid, rdir

    local function start_redis()
        rpid = H.redis_start(rport, rdir)
    end

    local function stop_redis()
        H.redis_stop(rpid)
    end

    -- Until `route` answers from Redis (not 503 store-unavailable) through `lv`, on every
    -- worker's connection (several fresh connections).
    local function wait_store(lv, path, headers)
        H.wait_until(function()
            for _ = 1, 4 do
                local r = get(lv, path, headers)
                if r.status == 503 then return false end
            end
            return true
        end, 10 * H.scale, "levee to use redis on " .. path)
    end

    setup(function()
        rdir = H.tmpdir()
        rport = H.free_port()
        start_redis()
        up = H.upstream({ name = "rl-redis" })
        local redis = { redis = "127.0.0.1:" .. rport, prefix = "lvspec:" .. RUN .. ":" }
        local function route(name, prefix, rl)
            rl.store = redis
            rl.key = "header:X-Api-Key"
            return { name = name, match = { prefix = prefix }, upstream = "api", timeout = "5s",
                retry = { attempts = 1 }, rate_limit = rl }
        end
        local config = {
            admin = true,
            upstreams = { api = { servers = { up:addr() } } },
            routes = {
                route("shared", "/shared", { rate = 20, per = "1s", burst = 10, timeout = "1s" }),
                route("acc", "/acc", { rate = 50, per = "1s", burst = 10, timeout = "1s" }),
                route("once", "/once", { rate = 1, per = "1h", burst = 0, timeout = "1s" }),
                route("ropen", "/ropen", { rate = 1, per = "1h", burst = 0, timeout = "100ms",
                    on_store_error = "fail_open" }),
                route("rclosed", "/rclosed", { rate = 1, per = "1h", burst = 0, timeout = "100ms",
                    on_store_error = "fail_closed" }),
            },
        }
        a = H.levee({ config = config })
        b = H.levee({ config = config })
        for _, lv in ipairs({ a, b }) do
            wait_store(lv, "/once/warm", { ["X-Api-Key"] = "warm-" .. lv.port })
        end
    end)
    teardown(H.cleanup)

    it("passes burst + 1 for a new key, then 429, shared by both gateways; keys live in Redis", function()
        local key = { ["X-Api-Key"] = "k-" .. RUN }
        local r = get(a, "/once/x", key)
        assert.equal(200, r.status)
        local rr, _, q, w = rl_fields(r)
        assert.equal(0, rr)
        assert.equal(1, q)
        assert.equal(3600, w)
        assert_limited(get(b, "/once/x", key), "once")
        local l = get(a, "/once/x", key)
        assert_limited(l, "once")
        assert.equal("3600", l.headers["retry-after"])
        assert.equal(1, by_path(up, "/once/x"))
        local keys = redis_cmd(rport, "KEYS", "lvspec:" .. RUN .. ":once*")
        assert.is_table(keys)
        assert.is_true(#keys >= 1)
    end)

    it("answers pipelined requests in order while each waits for Redis", function()
        local c = assert(H.conn(a.port))
        local bytes = {}
        for i = 1, 4 do
            bytes[i] = H.build_request(a.port, { path = "/once/pipe" .. i, headers = { ["X-Api-Key"] = "p-" .. RUN } })
        end
        assert(c:send(table.concat(bytes)))
        local want = { 200, 429, 429, 429 }
        for i = 1, 4 do
            local r = assert(c:read_response({ timeout = 5 }))
            assert.equal(want[i], r.status, "response " .. i)
        end
        assert.equal(1, by_path(up, "/once/pipe1"))
        assert.equal(0, by_path(up, "/once/pipe2"))
    end)

    it("two gateways sharing a limit stay within the limit plus one burst", function()
        -- 40/s for 3 s, alternately to each gateway: rate 20 + burst 10 shared
        local ok, limited, other, T = blast({ a.port, b.port }, "/shared", 40, 3, 1, { ["X-Api-Key"] = "s-" .. RUN })
        assert.same({}, other)
        local want = 20 * T + 10
        print(("rate_limit shared by two gateways: admitted %d, refused %d, T = %.3f s, expected %.1f")
            :format(ok, limited, T, want))
        assert.is_true(ok <= want + 2, ("admitted %d > %.1f"):format(ok, want))
        assert.is_true(ok >= want * 0.95, ("admitted %d < 95%% of %.1f"):format(ok, want))
        assert.equal(ok, by_path(up, "/shared"))
    end)

    it("admits within 2% of rate x time + burst over 10 s at twice the rate", function()
        local ok = accuracy({ a.port }, "/acc", 50, 10, "redis", { ["X-Api-Key"] = "acc-" .. RUN })
        assert.equal(0, metric(a, "levee_rate_limit_store_errors_total", { route = "acc" }))
        assert.equal(ok, by_path(up, "/acc"))
    end)

    it("applies on_store_error while Redis hangs or is down, and limits again when it is back", function()
        -- Redis frozen: the command timeout (100 ms) bounds the answer
        assert(H.proc.kill(rpid, "STOP"))
        local t0 = H.now()
        local r = get(a, "/rclosed/hang", { ["X-Api-Key"] = "h-" .. RUN })
        local took = H.now() - t0
        H.proc.kill(rpid, "CONT")
        H.assert_gw_error(r, 503, "rate-limit-store-unavailable", "rclosed")
        assert.is_true(took < 1 * H.scale, ("fail_closed took %.3f s with timeout 100ms"):format(took))
        assert.equal(0, by_path(up, "/rclosed/hang"))
        assert.is_true(metric(a, "levee_rate_limit_store_errors_total", { route = "rclosed" }) >= 1)
        -- back after the hang (the connection is made again after the timeout dropped it)
        wait_store(a, "/rclosed/after-hang", { ["X-Api-Key"] = "ah-" .. RUN })

        stop_redis()
        local key = { ["X-Api-Key"] = "down-" .. RUN }
        local errs0 = metric(b, "levee_rate_limit_store_errors_total", { route = "ropen" })
        -- fail_open: everything passes, counted as store errors
        for i = 1, 3 do assert.equal(200, get(b, "/ropen/down", key).status, "fail_open " .. i) end
        assert.equal(3, by_path(up, "/ropen/down"))
        assert.equal(errs0 + 3, metric(b, "levee_rate_limit_store_errors_total", { route = "ropen" }))
        -- fail_closed: 503 at once
        t0 = H.now()
        r = get(b, "/rclosed/down", key)
        took = H.now() - t0
        H.assert_gw_error(r, 503, "rate-limit-store-unavailable", "rclosed")
        assert.matches("^%d+$", r.headers["retry-after"])
        assert.is_true(took < 1 * H.scale, ("fail_closed took %.3f s"):format(took))
        assert.equal(0, by_path(up, "/rclosed/down"))

        -- a client that goes away while its check waits for a frozen Redis
        start_redis()
        wait_store(a, "/rclosed/again", { ["X-Api-Key"] = "again-" .. RUN })
        assert(H.proc.kill(rpid, "STOP"))
        local gone = {}
        for i = 1, 6 do
            gone[i] = assert(H.conn(a.port))
            assert(gone[i]:send(H.build_request(a.port, { path = "/shared/gone", headers = { ["X-Api-Key"] = "g" .. i } })))
        end
        for i = 1, 6 do gone[i]:close() end
        -- levee sees the closes while Redis is still frozen (the checks are still waiting)
        H.wait_until(function() return a:status().client_connections == 0 end, 5 * H.scale,
            "levee to see the clients go")
        H.proc.kill(rpid, "CONT")
        assert.is_true(a:alive())
        wait_store(a, "/rclosed/after-gone", { ["X-Api-Key"] = "ag-" .. RUN })
        stop_redis()

        -- Redis back on the same port (empty): the limit applies again
        start_redis()
        for _, lv in ipairs({ a, b }) do
            local k = { ["X-Api-Key"] = "back-" .. lv.port .. "-" .. RUN }
            H.wait_until(function()
                local x = get(lv, "/ropen/back", k)
                return x.status == 429
            end, 10 * H.scale, "a 429 again through levee on port " .. lv.port)
        end
    end)
end)
