-- Idempotency keys end to end (README, "Resilience policies" error tokens, §6 metrics and access log): the real
-- levee in front of the real lv-testupstream, with the memory store and with a real
-- redis-server shared by two levee processes.
--
-- What the upstream saw is read from its /__stats (by_path counts per request path, plans per
-- X-Test-Plan ID), so "replayed, upstream not contacted" is a fact, not an inference from a
-- response header. Every path below is used by one test only.

local H = require("helpers")
local socket = require("socket")

local assert_gw_error = H.assert_gw_error

-- X-Test-Plan IDs and Redis keys must not collide between two runs against the same
-- processes (they never share processes, but keep the IDs readable and unique anyway).
local RUN = tostring(H.proc.getpid())

local function by_path(up, path)
    return up:stats().by_path[path] or 0
end

local function has_flag(entry, flag)
    for _, f in ipairs(entry.flags or {}) do
        if f == flag then return true end
    end
    return false
end

-- Prometheus sample value for name{route="route"} (0 when absent).
local function metric(lv, name, route)
    local r = assert(lv:admin("/metrics"))
    assert.equal(200, r.status)
    for line in r.body:gmatch("[^\n]+") do
        local n, lbl, v = line:match("^([%w_:]+){(.*)}%s+(%S+)$")
        if n == name and lbl:find('route="' .. route .. '"', 1, true) then return tonumber(v) end
    end
    return 0
end

local function route_status(lv, name)
    local r = assert(lv:admin("/status"))
    for _, rt in ipairs(H.json(r.body).routes) do
        if rt.name == name then return rt end
    end
    error("no route " .. name .. " in /status")
end

-- Request options for a POST (or opts.method) with an Idempotency-Key.
local function keyed(path, key, opts)
    opts = opts or {}
    local headers = {}
    if key then headers[#headers + 1] = { "Idempotency-Key", key } end
    for _, kv in ipairs(opts.headers or {}) do headers[#headers + 1] = kv end
    return { method = opts.method or "POST", path = path, headers = headers,
        body = opts.body or "pay 10 EUR", timeout = opts.timeout or 5 }
end

local function send(lv_or_port, path, key, opts)
    local port = type(lv_or_port) == "table" and lv_or_port.port or lv_or_port
    return H.request(port, keyed(path, key, opts))
end

-- The upstream's own answer: no Levee-Error, not replayed, the echo of `path`.
local function assert_fresh(r, status, path)
    assert.is_table(r, "no response")
    assert.equal(status, r.status)
    assert.is_nil(r.headers["levee-error"])
    assert.is_nil(r.headers["idempotent-replayed"])
    if path then assert.equal(path, H.json(r.body).target) end
end

local function assert_replay_of(r, first)
    assert.is_table(r, "no response")
    assert.equal(first.status, r.status)
    assert.equal("true", r.headers["idempotent-replayed"])
    assert.is_nil(r.headers["levee-error"])
    assert.is_true(r.body == first.body, "replayed body differs from the first response")
end

local quick = { base = "1ms", max = "1ms", jitter = "none" }
local generous = { ratio = 1, min_per_second = 100, window = "10s" }

---------------------------------------------------------------------------------------------

describe("idempotency keys, memory store", function()
    local up, lv

    before_each(function()
        up = H.upstream({ name = "pay" })
        lv = H.levee({ config = {
            admin = true,
            upstreams = { api = { servers = { up:addr() } } },
            routes = {
                { name = "idem", match = { prefix = "/i/" }, upstream = "api", timeout = "5s",
                  retry = { attempts = 3, on = { "503" }, backoff = quick, budget = generous },
                  idempotency = { ttl = "30s" } },
                { name = "wait", match = { prefix = "/w/" }, upstream = "api", timeout = "5s",
                  idempotency = { on_conflict = "wait" } },
                { name = "req", match = { prefix = "/r/" }, upstream = "api",
                  idempotency = { required = true } },
                { name = "ttl", match = { prefix = "/t/" }, upstream = "api",
                  idempotency = { ttl = "300ms" } },
                { name = "cap", match = { prefix = "/c/" }, upstream = "api",
                  idempotency = { max_memory = "2KiB", max_body = "1KiB" } },
            },
        } })
    end)
    after_each(H.cleanup)

    it("replays the stored response byte for byte with Idempotent-Replayed, upstream contacted once", function()
        local hdrs = { { "X-Test-Status", "201" }, { "X-Test-Header", "X-Test-Header: created-42" },
            { "X-Test-Header", "Location: /i/replay/42" } }
        local first = assert(send(lv, "/i/replay", "key-replay-" .. RUN, { headers = hdrs }))
        assert_fresh(first, 201, "/i/replay")
        assert.equal("created-42", first.headers["x-test-header"])
        assert.equal(1, by_path(up, "/i/replay"))

        -- headers are not part of the fingerprint: a retry without the X-Test-* program
        -- still gets the stored 201, not a fresh 200
        for i = 1, 2 do
            local again = assert(send(lv, "/i/replay", "key-replay-" .. RUN, { headers = i == 1 and hdrs or {} }))
            assert_replay_of(again, first)
            assert.equal("created-42", again.headers["x-test-header"])
            assert.equal("/i/replay/42", again.headers["location"])
            assert.equal(first.headers["content-type"], again.headers["content-type"])
            assert.equal(first.headers["x-upstream"], again.headers["x-upstream"])
            assert.equal(tostring(#first.body), again.headers["content-length"])
            -- a replay is its own request: its own id
            assert.is_string(again.headers["x-request-id"])
            assert.are_not.equal(first.headers["x-request-id"], again.headers["x-request-id"])
        end
        assert.equal(1, by_path(up, "/i/replay"))

        -- the same key on another route is another key (namespaced per route)
        local other = assert(send(lv, "/t/replay", "key-replay-" .. RUN))
        assert_fresh(other, 200, "/t/replay")

        assert.equal(2, metric(lv, "levee_idempotency_replays_total", "idem"))
        assert.equal(1, metric(lv, "levee_idempotency_stored_total", "idem"))
        assert.equal(1, metric(lv, "levee_idempotency_store_entries", "idem"))
        -- by path and flag, not position: lines of different workers may come in any order
        local fresh, replays = 0, 0
        for _, e in ipairs(lv:wait_access(4)) do
            if e.path == "/i/replay" then
                assert.equal(201, e.status)
                if has_flag(e, "idempotent-replay") then replays = replays + 1 else fresh = fresh + 1 end
            end
        end
        assert.equal(1, fresh)
        assert.equal(2, replays)
    end)

    it("replays a chunked 300 KB response body as the same bytes", function()
        local key = "key-chunked-" .. RUN
        local hdrs = { { "X-Test-Body-Size", "300000" }, { "X-Test-Chunked", "1" }, { "X-Test-Chunk-Size", "7000" } }
        local first = assert(send(lv, "/i/chunked", key, { headers = hdrs }))
        assert_fresh(first, 200)
        assert.is_true(first.body == H.pattern(300000))
        local again = assert(send(lv, "/i/chunked", key))
        assert_replay_of(again, first)
        assert.is_nil(again.headers["transfer-encoding"])
        assert.equal("300000", again.headers["content-length"])
        assert.equal(1, by_path(up, "/i/chunked"))
    end)

    it("answers 409 idempotency-conflict with Retry-After while the first is in flight", function()
        local key = "key-conflict-" .. RUN
        local c = assert(H.conn(lv.port))
        c:send(H.build_request(lv.port, keyed("/i/conflict", key, { headers = { { "X-Test-Delay-Ms", "800" } } })))
        H.wait_until(function() return by_path(up, "/i/conflict") == 1 end, 5, "first request upstream")

        local dup = assert(send(lv, "/i/conflict", key))
        assert_gw_error(dup, 409, "idempotency-conflict", "idem")
        assert.matches("^%d+$", dup.headers["retry-after"])
        assert.equal(1, by_path(up, "/i/conflict"))

        local first = assert(c:read_response())
        assert_fresh(first, 200, "/i/conflict")
        local after = assert(send(lv, "/i/conflict", key))
        assert_replay_of(after, first)
        assert.equal(1, by_path(up, "/i/conflict"))
        assert.equal(1, metric(lv, "levee_idempotency_conflicts_total", "idem"))
        local log = lv:wait_access(3)
        local conflicts = 0
        for _, e in ipairs(log) do
            if has_flag(e, "idempotency-conflict") then
                conflicts = conflicts + 1
                assert.equal(409, e.status)
            end
        end
        assert.equal(1, conflicts)
    end)

    it("with on_conflict = wait, 50 concurrent duplicates reach the upstream once and all get the response", function()
        local key = "key-wait-" .. RUN
        local conns = {}
        for i = 1, 50 do
            conns[i] = assert(H.conn(lv.port, { timeout = 10 }))
        end
        local bytes = H.build_request(lv.port, keyed("/w/herd", key, { headers = { { "X-Test-Delay-Ms", "300" } } }))
        for i = 1, 50 do assert.is_true(conns[i]:send(bytes)) end
        local rs = {}
        for i = 1, 50 do rs[i] = assert(conns[i]:read_response({ timeout = 10 })) end

        local fresh = 0
        for i = 1, 50 do
            assert.equal(200, rs[i].status)
            assert.is_nil(rs[i].headers["levee-error"])
            assert.is_true(rs[i].body == rs[1].body, "response " .. i .. " differs")
            if rs[i].headers["idempotent-replayed"] == nil then fresh = fresh + 1 end
        end
        assert.equal(1, fresh)
        assert.equal("/w/herd", H.json(rs[1].body).target)
        assert.equal(1, by_path(up, "/w/herd"))
        assert.equal(49, metric(lv, "levee_idempotency_replays_total", "wait"))
        -- the duplicates met the first in flight and waited: none was answered 409
        assert.is_true(metric(lv, "levee_idempotency_conflicts_total", "wait") >= 1)
        local log = lv:wait_access(50)
        local replays = 0
        for _, e in ipairs(log) do
            assert.equal(200, e.status)
            assert.is_false(has_flag(e, "idempotency-conflict"))
            if has_flag(e, "idempotent-replay") then replays = replays + 1 end
        end
        assert.equal(49, replays)
    end)

    it("answers 422 idempotency-mismatch for the same key with another body, target or method", function()
        local key = "key-mismatch-" .. RUN
        local first = assert(send(lv, "/i/mm", key, { body = "amount=10" }))
        assert_fresh(first, 200, "/i/mm")
        for _, o in ipairs({
            { path = "/i/mm", body = "amount=11" },
            { path = "/i/mm?x=1", body = "amount=10" },
            { path = "/i/mm2", body = "amount=10" },
            { path = "/i/mm", body = "amount=10", method = "PATCH" },
        }) do
            local r = assert(send(lv, o.path, key, { body = o.body, method = o.method }))
            assert_gw_error(r, 422, "idempotency-mismatch", "idem")
        end
        assert.equal(1, by_path(up, "/i/mm"))
        assert.equal(0, by_path(up, "/i/mm2"))
        -- the original still replays
        assert_replay_of(assert(send(lv, "/i/mm", key, { body = "amount=10" })), first)
        assert.equal(4, metric(lv, "levee_idempotency_mismatches_total", "idem"))
    end)

    it("answers 400 for a missing required key and for an invalid key, and keeps serving", function()
        local r = assert(send(lv, "/r/missing", nil))
        assert_gw_error(r, 400, "idempotency-key-required", "req")
        -- required applies to the listed methods only
        assert_fresh(assert(lv:request({ path = "/r/missing" })), 200, "/r/missing")
        assert.equal(1, by_path(up, "/r/missing"))

        for _, key in ipairs({ ("k"):rep(256), "ab\tcd", "" }) do
            local bad = assert(send(lv, "/r/invalid", key))
            assert_gw_error(bad, 400, "idempotency-key-invalid", "req")
        end
        -- a DEL byte inside the value (the parser may refuse the field itself)
        local del = assert(send(lv, "/r/invalid", "ab\127cd"))
        assert.equal(400, del.status)
        assert.equal(0, by_path(up, "/r/invalid"))

        -- 255 bytes is still a key
        local long = ("k"):rep(255)
        local ok = assert(send(lv, "/r/long", long))
        assert_fresh(ok, 200, "/r/long")
        assert_replay_of(assert(send(lv, "/r/long", long)), ok)
        assert.equal(1, by_path(up, "/r/long"))
    end)

    it("refuses a keyed body over retry.buffer with 413 but streams an unkeyed one", function()
        local big = H.pattern(70000)
        local r = assert(send(lv, "/i/big", "key-big-" .. RUN, { body = big }))
        assert.equal(413, r.status)
        assert.equal(0, by_path(up, "/i/big"))
        local rc = assert(H.request(lv.port, { method = "POST", path = "/i/bigc", chunked = true, body = big,
            headers = { { "Idempotency-Key", "key-bigc-" .. RUN } } }))
        assert.equal(413, rc.status)
        assert.equal(0, by_path(up, "/i/bigc"))

        local plain = assert(H.request(lv.port, { method = "POST", path = "/i/big", body = big }))
        local e = H.json(plain.body)
        assert.equal(200, plain.status)
        assert.equal(70000, e.body_len)
        assert.equal(H.fnv1a64(big), e.body_sha)
        -- the same levee still serves keyed requests
        assert_fresh(assert(send(lv, "/i/after-big", "key-after-big-" .. RUN)), 200, "/i/after-big")
    end)

    it("does not store upstream 5xx or gateway errors: the same key goes through again", function()
        local key = "key-5xx-" .. RUN
        -- garbage, not reset: a reset on a reused pooled connection is retried on a fresh one
        local plan = { { "X-Test-Plan", "p5xx-" .. RUN .. ":500,garbage,200" } }
        local r1 = assert(send(lv, "/i/5xx", key, { headers = plan }))
        assert_fresh(r1, 500)
        local r2 = assert(send(lv, "/i/5xx", key, { headers = plan }))
        assert_gw_error(r2, 502, "bad-upstream-response", "idem")
        local r3 = assert(send(lv, "/i/5xx", key, { headers = plan }))
        assert_fresh(r3, 200, "/i/5xx")
        assert.equal(3, by_path(up, "/i/5xx"))
        local r4 = assert(send(lv, "/i/5xx", key, { headers = plan }))
        assert_replay_of(r4, r3)
        assert.equal(3, by_path(up, "/i/5xx"))
        assert.equal(1, metric(lv, "levee_idempotency_stored_total", "idem"))
    end)

    it("does not store a response over max_body (forwarded whole, key released)", function()
        local key = "key-maxbody-" .. RUN
        local r1 = assert(send(lv, "/c/huge", key, { headers = { { "X-Test-Body-Size", "3000" } } }))
        assert_fresh(r1, 200)
        assert.is_true(r1.body == H.pattern(3000))
        local r2 = assert(send(lv, "/c/huge", key, { headers = { { "X-Test-Body-Size", "3000" } } }))
        assert_fresh(r2, 200)
        assert.equal(3000, #r2.body)
        assert.equal(2, by_path(up, "/c/huge"))
        assert.equal(0, metric(lv, "levee_idempotency_stored_total", "cap"))
    end)

    it("retries a keyed POST on 503 but not an unkeyed one", function()
        local kplan = "pk-" .. RUN
        local r = assert(send(lv, "/i/retry", "key-retry-" .. RUN, { headers = { { "X-Test-Plan", kplan .. ":503,200" } } }))
        assert_fresh(r, 200, "/i/retry")
        assert.equal(2, up:stats().plans[kplan])

        local uplan = "pu-" .. RUN
        local u = assert(send(lv, "/i/retry-plain", nil, { headers = { { "X-Test-Plan", uplan .. ":503,200" } } }))
        assert_fresh(u, 503)
        assert.equal(1, up:stats().plans[uplan])

        -- by path, not position: lines of different workers may come in any order
        local log = {}
        for _, e in ipairs(lv:wait_access(2)) do log[e.path] = e end
        assert.equal(2, log["/i/retry"].attempts)
        assert.is_true(has_flag(log["/i/retry"], "retried"))
        assert.equal(1, log["/i/retry-plain"].attempts)
        assert.equal(1, metric(lv, "levee_retries_total", "idem"))
        -- the retried answer was stored: the key now replays it
        assert_replay_of(assert(send(lv, "/i/retry", "key-retry-" .. RUN)), r)
        assert.equal(2, up:stats().plans[kplan])
    end)

    it("forgets a key after its ttl", function()
        local key = "key-ttl-" .. RUN
        local t0 = H.now()
        local first = assert(send(lv, "/t/ttl", key))
        assert_fresh(first, 200, "/t/ttl")
        assert_replay_of(assert(send(lv, "/t/ttl", key)), first)
        assert.equal(1, by_path(up, "/t/ttl"))
        local r = H.wait_until(function()
            local x = assert(send(lv, "/t/ttl", key))
            return x.headers["idempotent-replayed"] == nil and x
        end, 3, "the key to expire")
        assert.is_true(H.now() - t0 >= 0.3, "expired before its ttl")
        assert_fresh(r, 200, "/t/ttl")
        assert.equal(2, by_path(up, "/t/ttl"))
        assert_replay_of(assert(send(lv, "/t/ttl", key)), r)
    end)

    -- A client that goes away while its keyed request waits on a hanging upstream must not
    -- keep the key locked until the request deadline (5 s here): the same key, sent again,
    -- reaches the upstream within a short poll instead of getting 409.
    local function disconnect_then_retry(path, key, how)
        local c = assert(H.conn(lv.port))
        c:send(H.build_request(lv.port, keyed(path, key, { headers = { { "X-Test-Action", "hang" } } })))
        H.wait_until(function() return by_path(up, path) == 1 end, 5, "hanging request upstream")
        if how == "reset" then c.sock:setoption("linger", { on = true, timeout = 0 }) end
        c:close()
        local r = H.wait_until(function()
            local x = assert(send(lv, path, key))
            if x.status == 409 then return false end
            return x
        end, 2, "the lock to be released")
        assert_fresh(r, 200, path)
        assert.equal(2, by_path(up, path))
        assert_replay_of(assert(send(lv, path, key)), r)
    end

    it("releases the key when the client resets its connection mid-request", function()
        disconnect_then_retry("/i/gone-rst", "key-gone-rst-" .. RUN, "reset")
    end)

    it("releases the key when the client closes its connection mid-request", function()
        disconnect_then_retry("/i/gone-fin", "key-gone-fin-" .. RUN, "close")
    end)

    it("refuses new keys with 503 idempotency-store-full at max_memory, stored keys still replay", function()
        local stored = {}
        local full
        for i = 1, 40 do
            local key = ("key-cap-%s-%02d"):format(RUN, i)
            local r = assert(send(lv, "/c/fill", key, { headers = { { "X-Test-Body", ("x"):rep(200) } } }))
            if r.status == 503 then
                full = r
                break
            end
            assert_fresh(r, 200)
            assert.equal(("x"):rep(200), r.body)
            stored[#stored + 1] = { key = key, r = r }
        end
        assert.is_table(full, "the store never filled up")
        assert_gw_error(full, 503, "idempotency-store-full", "cap")
        assert.matches("^%d+$", full.headers["retry-after"])
        assert.is_true(#stored >= 2, "store full after " .. #stored .. " entries of ~300 bytes in 2 KiB")
        local reached = by_path(up, "/c/fill")
        assert.equal(#stored, reached)
        -- the first key was stored while there was room: it replays, upstream untouched
        assert_replay_of(assert(send(lv, "/c/fill", stored[1].key)), stored[1].r)
        assert.equal(reached, by_path(up, "/c/fill"))
        assert.is_true(metric(lv, "levee_idempotency_store_errors_total", "cap") >= 1)
        local st = route_status(lv, "cap").idempotency
        assert.equal("memory", st.store)
        assert.is_true(st.bytes <= 2048)
        assert.equal(2048, st.max_bytes)
    end)
end)

---------------------------------------------------------------------------------------------
-- Redis: a real redis-server on a free loopback port, spoken to with a tiny RESP client.

local redis_cmd = H.redis_cmd

describe("idempotency keys, Redis store shared by two levees", function()
    local up, a, b, rport, rpid, rdir

    local function start_redis()
        rpid = H.redis_start(rport, rdir)
    end

    local function stop_redis()
        H.redis_stop(rpid)
    end

    local function connected(lv, route)
        return route_status(lv, route).idempotency.connected
    end

    setup(function()
        rdir = H.tmpdir()
        rport = H.free_port()
        start_redis()
        up = H.upstream({ name = "shared" })
        local redis = { redis = "127.0.0.1:" .. rport, prefix = "lvspec:" }
        local config = {
            admin = true,
            upstreams = { api = { servers = { up:addr() } } },
            routes = {
                { name = "closed", match = { prefix = "/k/" }, upstream = "api", timeout = "5s",
                  idempotency = { store = redis, on_store_error = "fail_closed" } },
                { name = "open", match = { prefix = "/o/" }, upstream = "api", timeout = "5s",
                  idempotency = { store = redis, on_store_error = "fail_open" } },
                { name = "rwait", match = { prefix = "/rw/" }, upstream = "api", timeout = "5s",
                  idempotency = { store = redis, on_conflict = "wait" } },
            },
        }
        a = H.levee({ config = config })
        b = H.levee({ config = config })
        for _, lv in ipairs({ a, b }) do
            H.wait_until(function() return connected(lv, "closed") and connected(lv, "open") end, 5 * H.scale,
                "levee connected to redis")
        end
    end)
    teardown(H.cleanup)

    it("replays on levee B a key completed through levee A", function()
        local key = "key-shared-" .. RUN
        local first = assert(send(a, "/k/shared", key, { headers = { { "X-Test-Header", "X-Test-Header: from-a" } } }))
        assert_fresh(first, 200, "/k/shared")
        local again = assert(send(b, "/k/shared", key))
        assert_replay_of(again, first)
        assert.equal("from-a", again.headers["x-test-header"])
        assert.equal(first.headers["content-type"], again.headers["content-type"])
        assert.equal(1, by_path(up, "/k/shared"))
        -- mismatch is shared too
        assert_gw_error(assert(send(b, "/k/shared", key, { body = "other" })), 422, "idempotency-mismatch", "closed")
        assert.equal(1, by_path(up, "/k/shared"))
        assert.equal(1, metric(b, "levee_idempotency_replays_total", "closed"))
        assert.equal(1, metric(a, "levee_idempotency_stored_total", "closed"))
        -- the key lives in Redis under the configured prefix
        local keys = redis_cmd(rport, "KEYS", "*")
        assert.is_table(keys)
        local found = false
        for _, k in ipairs(keys) do
            assert.matches("^lvspec:", k)
            if k:find(key, 1, true) then found = true end
        end
        assert.is_true(found, "key not in redis: " .. table.concat(keys, " "))
    end)

    it("replays a 200 KiB body byte for byte across the two levees", function()
        local key = "key-bigshared-" .. RUN
        local first = assert(send(b, "/k/big", key, { headers = { { "X-Test-Body-Size", tostring(200 * 1024) } } }))
        assert_fresh(first, 200)
        assert.is_true(first.body == H.pattern(200 * 1024))
        local again = assert(send(a, "/k/big", key))
        assert_replay_of(again, first)
        assert.equal(1, by_path(up, "/k/big"))
    end)

    it("answers 409 on levee B while the first request is in flight on levee A", function()
        local key = "key-xconflict-" .. RUN
        local c = assert(H.conn(a.port))
        c:send(H.build_request(a.port, keyed("/k/xconflict", key, { headers = { { "X-Test-Delay-Ms", "800" } } })))
        H.wait_until(function() return by_path(up, "/k/xconflict") == 1 end, 5, "first request upstream")
        local dup = assert(send(b, "/k/xconflict", key))
        assert_gw_error(dup, 409, "idempotency-conflict", "closed")
        assert.matches("^%d+$", dup.headers["retry-after"])
        local first = assert(c:read_response())
        assert_fresh(first, 200, "/k/xconflict")
        assert_replay_of(assert(send(b, "/k/xconflict", key)), first)
        assert.equal(1, by_path(up, "/k/xconflict"))
    end)

    it("with on_conflict = wait, a duplicate on levee B waits for levee A's response", function()
        local key = "key-xwait-" .. RUN
        local c = assert(H.conn(a.port))
        c:send(H.build_request(a.port, keyed("/rw/xwait", key, { headers = { { "X-Test-Delay-Ms", "500" } } })))
        H.wait_until(function() return by_path(up, "/rw/xwait") == 1 end, 5, "first request upstream")
        local dups = {}
        for i = 1, 5 do
            dups[i] = assert(H.conn(b.port))
            dups[i]:send(H.build_request(b.port, keyed("/rw/xwait", key)))
        end
        local first = assert(c:read_response())
        assert_fresh(first, 200, "/rw/xwait")
        for i = 1, 5 do assert_replay_of(assert(dups[i]:read_response()), first) end
        assert.equal(1, by_path(up, "/rw/xwait"))
        assert.equal(5, metric(b, "levee_idempotency_replays_total", "rwait"))
    end)

    it("releases a key in Redis when the upstream answers 5xx: levee B then forwards it", function()
        local key = "key-x5xx-" .. RUN
        local r1 = assert(send(a, "/k/x5xx", key, { headers = { { "X-Test-Status", "500" } } }))
        assert_fresh(r1, 500)
        local r2 = assert(send(b, "/k/x5xx", key))
        assert_fresh(r2, 200, "/k/x5xx")
        assert_replay_of(assert(send(a, "/k/x5xx", key)), r2)
        assert.equal(2, by_path(up, "/k/x5xx"))
    end)

    it("bounds a lookup on a Redis that stopped answering (SIGSTOP) and recovers on SIGCONT", function()
        H.proc.kill(rpid, "STOP")
        local ok, err = pcall(function()
            local t0 = H.now()
            local r = assert(send(a, "/k/hung", "key-hung-" .. RUN, { timeout = 8 }))
            local took = H.now() - t0
            assert_gw_error(r, 503, "idempotency-store-unavailable", "closed")
            assert.is_true(took < 2, ("a hung Redis held the request %.2fs"):format(took))
            assert.equal(0, by_path(up, "/k/hung"))
        end)
        H.proc.kill(rpid, "CONT")
        assert(ok, err)
        local key = "key-unhung-" .. RUN
        local first = H.wait_until(function()
            local x = assert(send(a, "/k/unhung", key))
            if x.status == 503 and x.headers["levee-error"] == "idempotency-store-unavailable" then return false end
            return x
        end, 10 * H.scale, "keys to work again")
        assert_fresh(first, 200, "/k/unhung")
        assert_replay_of(assert(send(b, "/k/unhung", key)), first)
        assert.equal(1, by_path(up, "/k/unhung"))
    end)

    it("fails closed (or open, as configured) while Redis is down, and recovers when it is back", function()
        stop_redis()
        local t0 = H.now()
        local r = assert(send(a, "/k/down", "key-down-" .. RUN, { timeout = 5 }))
        local took = H.now() - t0
        assert_gw_error(r, 503, "idempotency-store-unavailable", "closed")
        assert.matches("^%d+$", r.headers["retry-after"])
        assert.is_true(took < 2, ("fail_closed took %.2fs"):format(took))
        assert.equal(0, by_path(up, "/k/down"))
        assert.is_true(metric(a, "levee_idempotency_store_errors_total", "closed") >= 1)

        local before = by_path(up, "/o/down")
        local o = assert(send(b, "/o/down", "key-open-" .. RUN, { timeout = 5 }))
        assert_fresh(o, 200, "/o/down")
        assert.equal(before + 1, by_path(up, "/o/down"))
        -- unprotected means unprotected: the same key is forwarded again
        assert_fresh(assert(send(b, "/o/down", "key-open-" .. RUN)), 200, "/o/down")
        assert.equal(before + 2, by_path(up, "/o/down"))

        start_redis()
        for _, lv in ipairs({ a, b }) do
            H.wait_until(function() return connected(lv, "closed") end, 10 * H.scale, "levee to reconnect")
        end
        local key = "key-back-" .. RUN
        local first = H.wait_until(function()
            local x = assert(send(a, "/k/back", key))
            if x.status == 503 and x.headers["levee-error"] == "idempotency-store-unavailable" then return false end
            return x
        end, 10 * H.scale, "keys to work again")
        assert_fresh(first, 200, "/k/back")
        -- with several workers each has its own Redis connection, reconnecting on its own
        -- (/status shows the first worker's): a request may still meet one that is not back
        local again = H.wait_until(function()
            local x = assert(send(b, "/k/back", key))
            if x.status == 503 and x.headers["levee-error"] == "idempotency-store-unavailable" then return false end
            return x
        end, 10 * H.scale, "the replay through b")
        assert_replay_of(again, first)
        assert.equal(1, by_path(up, "/k/back"))
    end)
end)
