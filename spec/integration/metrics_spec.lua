-- /metrics end to end (README "Metrics"): after traffic with errors, a retry and a failover,
-- the scrape is valid Prometheus text (promtool check metrics when installed, and a strict
-- parser here either way), and the per-server byte counters, the attempt histogram, the
-- process_* series and levee_build_info agree with what the test did. Breaker and
-- idempotency series appear only on routes that have a breaker / idempotency.

local H = require("helpers")
local socket = require("socket")

-- Strict exposition-format 0.0.4 parser. Fails (error) on: a sample before its family's
-- TYPE, a HELP or TYPE given twice, a family interleaved with another, a counter not named
-- *_total, bad label syntax or escaping, a duplicate series, histogram buckets out of order,
-- not cumulative, without +Inf, or +Inf ~= _count, or a histogram without _sum/_count.
-- Returns families: name -> { type, help, samples = { { name, labels, key, value } } }.
local function parse_strict(text)
    assert(text:sub(-1) == "\n", "exposition must end with a newline")
    local fams, order, seen_series = {}, {}, {}
    local current -- family of the last TYPE line

    local function parse_labels(s, lineno)
        local labels, keys, i = {}, {}, 1
        while i <= #s do
            local name, j = s:match("^([%a_][%w_]*)=\"()", i)
            assert(name, ("line %d: bad label at %q"):format(lineno, s:sub(i)))
            assert(labels[name] == nil, ("line %d: label %s twice"):format(lineno, name))
            local v, k = {}, j
            while true do
                local c = s:sub(k, k)
                assert(c ~= "", ("line %d: unterminated label value"):format(lineno))
                if c == "\\" then
                    local e = s:sub(k + 1, k + 1)
                    local map = { ["\\"] = "\\", ['"'] = '"', n = "\n" }
                    assert(map[e], ("line %d: bad escape \\%s"):format(lineno, e))
                    v[#v + 1] = map[e]
                    k = k + 2
                elseif c == '"' then
                    break
                else
                    assert(c ~= "\n", ("line %d: raw newline in label"):format(lineno))
                    v[#v + 1] = c
                    k = k + 1
                end
            end
            labels[name] = table.concat(v)
            keys[#keys + 1] = name
            i = k + 1
            if s:sub(i, i) == "," then i = i + 1 end
        end
        table.sort(keys)
        local parts = {}
        for _, k in ipairs(keys) do parts[#parts + 1] = k .. "=" .. ("%q"):format(labels[k]) end
        return labels, table.concat(parts, ",")
    end

    local function family_of(name)
        if fams[name] then return name end
        for _, suf in ipairs({ "_bucket", "_sum", "_count" }) do
            local base = name:sub(1, #name - #suf)
            if name:sub(-#suf) == suf and fams[base] and fams[base].type == "histogram" then
                return base
            end
        end
    end

    local lineno = 0
    for line in text:gmatch("([^\n]*)\n") do
        lineno = lineno + 1
        assert(line ~= "", ("line %d: empty line"):format(lineno))
        local kind, name, rest = line:match("^# (%u+) ([%a_:][%w_:]*) ?(.*)$")
        if kind == "HELP" then
            local f = fams[name] or { samples = {} }
            assert(f.help == nil, ("line %d: second HELP for %s"):format(lineno, name))
            assert(not f.type, ("line %d: HELP after TYPE for %s"):format(lineno, name))
            assert(not rest:gsub("\\[\\n]", ""):find("\\", 1, true),
                ("line %d: bad escape in HELP"):format(lineno))
            f.help = rest
            if not fams[name] then fams[name] = f; order[#order + 1] = name end
        elseif kind == "TYPE" then
            local f = fams[name] or { samples = {} }
            assert(f.type == nil, ("line %d: second TYPE for %s"):format(lineno, name))
            assert(({ counter = 1, gauge = 1, histogram = 1, summary = 1, untyped = 1 })[rest],
                ("line %d: bad type %q"):format(lineno, rest))
            f.type = rest
            if rest == "counter" then
                assert(name:match("_total$"), ("counter %s does not end in _total"):format(name))
            end
            if not fams[name] then fams[name] = f; order[#order + 1] = name end
            current = name
        else
            assert(line:sub(1, 1) ~= "#", ("line %d: unknown comment %q"):format(lineno, line))
            local sname, lbl, v = line:match("^([%a_:][%w_:]*){(.*)} (%S+)$")
            if not sname then
                sname, v = line:match("^([%a_:][%w_:]*) (%S+)$")
                lbl = ""
            end
            assert(sname, ("line %d: bad sample %q"):format(lineno, line))
            local fam = family_of(sname)
            assert(fam, ("line %d: sample %s before its TYPE"):format(lineno, sname))
            assert(fam == current, ("line %d: %s outside its family's block"):format(lineno, sname))
            local value = tonumber(v) or ({ ["+Inf"] = math.huge, ["-Inf"] = -math.huge })[v]
                or (v == "NaN" and 0 / 0)
            assert(value, ("line %d: bad value %q"):format(lineno, v))
            local labels, key = parse_labels(lbl, lineno)
            local full = sname .. "{" .. key .. "}"
            assert(not seen_series[full], ("line %d: duplicate series %s"):format(lineno, full))
            seen_series[full] = true
            table.insert(fams[fam].samples, { name = sname, labels = labels, key = key, value = value })
        end
    end

    -- Histograms: per series (labels without le), buckets ascending and cumulative,
    -- +Inf present and equal to _count, _sum present.
    for _, name in ipairs(order) do
        local f = fams[name]
        assert(f.type, "HELP without TYPE for " .. name)
        if f.type == "histogram" then
            local series = {}
            for _, s in ipairs(f.samples) do
                local l = {}
                for k, v in pairs(s.labels) do if k ~= "le" then l[#l + 1] = k .. "=" .. v end end
                table.sort(l)
                local id = table.concat(l, ",")
                series[id] = series[id] or { buckets = {} }
                local se = series[id]
                if s.name == name .. "_bucket" then
                    assert(s.labels.le, name .. "_bucket without le")
                    local le = s.labels.le == "+Inf" and math.huge or tonumber(s.labels.le)
                    assert(le, "bad le " .. s.labels.le)
                    se.buckets[#se.buckets + 1] = { le = le, v = s.value }
                elseif s.name == name .. "_sum" then
                    se.sum = s.value
                elseif s.name == name .. "_count" then
                    se.count = s.value
                else
                    error("histogram " .. name .. " has sample " .. s.name)
                end
            end
            for id, se in pairs(series) do
                local what = name .. "{" .. id .. "}"
                assert(se.sum, what .. ": no _sum")
                assert(se.count, what .. ": no _count")
                assert(#se.buckets > 0, what .. ": no buckets")
                for i = 2, #se.buckets do
                    assert(se.buckets[i].le > se.buckets[i - 1].le, what .. ": le not ascending")
                    assert(se.buckets[i].v >= se.buckets[i - 1].v, what .. ": not cumulative")
                end
                local last = se.buckets[#se.buckets]
                assert(last.le == math.huge, what .. ": no +Inf bucket")
                assert(last.v == se.count, what .. ": +Inf bucket ~= _count")
            end
        end
    end
    return fams
end

-- The value of the sample `name` whose labels include `want` (nil when none).
local function value(fams, name, want)
    for _, f in pairs(fams) do
        for _, s in ipairs(f.samples) do
            if s.name == name then
                local ok = true
                for k, v in pairs(want or {}) do
                    if s.labels[k] ~= v then ok = false break end
                end
                if ok then return s.value end
            end
        end
    end
end

-- Sum over the samples `name` whose labels include `want`.
local function total(fams, name, want)
    local n = 0
    for _, f in pairs(fams) do
        for _, s in ipairs(f.samples) do
            if s.name == name then
                local ok = true
                for k, v in pairs(want or {}) do
                    if s.labels[k] ~= v then ok = false break end
                end
                if ok then n = n + s.value end
            end
        end
    end
    return n
end

local function promtool()
    local p = io.popen("command -v promtool 2>/dev/null")
    local path = p:read("*l")
    p:close()
    return path and path ~= "" and path or nil
end

describe("metrics", function()
    local up, lv, hole, refused

    local quick = { base = "1ms", max = "1ms", jitter = "none" }
    local generous = { ratio = 1, min_per_second = 100, window = "10s" }

    before_each(function()
        up = H.upstream({ n = 1, name = "u" })
        hole = socket.tcp()
        assert(hole:bind("127.0.0.1", 0))
        refused = "127.0.0.1:" .. select(2, hole:getsockname())
        lv = H.levee({ config = {
            admin = true,
            upstreams = {
                main = { servers = { up:addr(1) } },
                half = { servers = { refused, up:addr(1) }, balance = "round_robin" },
            },
            routes = {
                { name = "retry", match = { prefix = "/retry/" }, upstream = "main",
                    retry = { attempts = 3, on = { "503" }, backoff = quick, budget = generous } },
                { name = "failover", match = { prefix = "/failover/" }, upstream = "half",
                    retry = { attempts = 2, on = { "connect-failure" }, backoff = quick,
                        budget = generous } },
                { name = "brk", match = { prefix = "/brk/" }, upstream = "main",
                    retry = { attempts = 1 },
                    breaker = { consecutive_failures = 2, open_for = "5s", min_requests = 1000 } },
                { name = "idem", match = { prefix = "/idem/" }, upstream = "main",
                    idempotency = { ttl = "30s" } },
                { name = "plain", upstream = "main", retry = { attempts = 1 } },
            },
        } })
    end)

    after_each(function()
        if hole then hole:close() end
        hole = nil
        H.cleanup()
    end)

    local function req(o)
        local r, err = lv:request(o)
        assert(r, ("request %s: %s"):format(o.path, tostring(err)))
        return r
    end

    local function scrape()
        local r = assert(lv:admin("/metrics"))
        assert.equal(200, r.status)
        return r.body
    end

    it("is valid exposition text, and the new series match the traffic", function()
        local big = ("x"):rep(20000)
        local received = 0
        -- plain: a POST with a body, a GET, and an upstream reset (502, no retry)
        local r = req({ method = "POST", path = "/post", body = big })
        assert.equal(200, r.status)
        received = received + #r.body
        r = req({ path = "/get" })
        assert.equal(200, r.status)
        received = received + #r.body
        r = req({ path = "/reset", headers = { ["X-Test-Action"] = "reset" } })
        assert.equal(502, r.status)
        -- a retry: 503 then 200 (2 attempts)
        r = req({ path = "/retry/a", headers = { ["X-Test-Plan"] = "m1:503,200" } })
        assert.equal(200, r.status)
        received = received + #r.body
        -- a failover: the refused server first, then the good one (round robin from 0)
        for i = 1, 2 do
            r = req({ path = "/failover/" .. i })
            assert.equal(200, r.status)
        end
        -- breaker and idempotency routes see traffic too
        assert.equal(200, req({ path = "/brk/x" }).status)
        assert.equal(200, req({ method = "POST", path = "/idem/x", body = "hi",
            headers = { ["Idempotency-Key"] = "k1" } }).status)

        local text = scrape()
        local fams = parse_strict(text)

        local tool = promtool()
        if tool then
            local path = os.tmpname()
            H.write_file(path, text)
            local p = io.popen(tool .. " check metrics < " .. path .. " 2>&1")
            local out = p:read("*a")
            local ok, _, code = p:close()
            os.remove(path)
            assert(ok and (code == 0 or code == nil), "promtool check metrics:\n" .. out)
            assert.equal("", out)
        end

        -- build info and process series
        local bi = fams.levee_build_info
        assert.is_table(bi)
        assert.equal("gauge", bi.type)
        assert.equal(1, #bi.samples)
        assert.equal(1, bi.samples[1].value)
        assert.truthy(bi.samples[1].labels.version:match("^%d+%.%d+%.%d+"))
        assert.truthy(bi.samples[1].labels.libuv:match("^%d+%.%d+"))
        assert.truthy(bi.samples[1].labels.openssl:match("^%d+%.%d+"))
        assert.truthy(bi.samples[1].labels.lua:match("^5%.%d+%.%d+$"))
        assert.equal("counter", fams.process_cpu_seconds_total.type)
        assert.is_true(value(fams, "process_cpu_seconds_total") >= 0)
        assert.is_true(value(fams, "process_resident_memory_bytes") > 1024 * 1024)
        local open_fds, max_fds = value(fams, "process_open_fds"), value(fams, "process_max_fds")
        assert.is_true(open_fds >= 3)
        assert.is_true(max_fds >= open_fds)
        local start = value(fams, "process_start_time_seconds")
        assert.is_true(start <= os.time() + 1 and start > os.time() - 600, "start time " .. start)

        -- bytes to and from the good server: at least the bodies that crossed
        local server = up:addr(1)
        local sent = value(fams, "levee_upstream_sent_bytes_total", { upstream = "main", server = server })
        local got = value(fams, "levee_upstream_received_bytes_total",
            { upstream = "main", server = server })
        assert.is_true(sent >= #big + 2, "sent " .. tostring(sent))
        assert.is_true(got >= received, ("received %s < %d"):format(tostring(got), received))
        assert.equal("counter", fams.levee_upstream_sent_bytes_total.type)
        -- the refused server got nothing
        assert.equal(0, value(fams, "levee_upstream_sent_bytes_total", { upstream = "half", server = refused }))

        -- attempt histogram: one observation per attempt (attempts_total by route)
        local main_attempts = 0
        for _, route in ipairs({ "retry", "brk", "idem", "plain" }) do
            main_attempts = main_attempts + total(fams, "levee_upstream_attempts_total", { route = route })
        end
        assert.equal(7, main_attempts) -- post, get, reset, 503+200, brk, idem
        assert.equal(main_attempts,
            value(fams, "levee_upstream_attempt_duration_seconds_count", { upstream = "main" }))
        local half_attempts = total(fams, "levee_upstream_attempts_total", { route = "failover" })
        assert.is_true(half_attempts >= 3, "failover attempts " .. half_attempts) -- 2 + failovers
        assert.equal(half_attempts,
            value(fams, "levee_upstream_attempt_duration_seconds_count", { upstream = "half" }))
        assert.equal(half_attempts - 2, value(fams, "levee_upstream_attempts_total",
            { route = "failover", outcome = "connect-failure" }))

        -- breaker series only on the breaker route, idempotency only on the idempotency one
        for _, name in ipairs({ "levee_breaker_state", "levee_breaker_rejected_total",
            "levee_fallbacks_total" }) do
            assert.is_not_nil(value(fams, name, { route = "brk" }), name .. " for brk")
            for _, route in ipairs({ "plain", "retry", "failover", "idem" }) do
                assert.is_nil(value(fams, name, { route = route }), name .. " for " .. route)
            end
        end
        for _, name in ipairs({ "levee_idempotency_replays_total", "levee_idempotency_stored_total",
            "levee_idempotency_conflicts_total", "levee_idempotency_mismatches_total",
            "levee_idempotency_store_errors_total", "levee_idempotency_store_entries" }) do
            assert.is_not_nil(value(fams, name, { route = "idem" }), name .. " for idem")
            for _, route in ipairs({ "plain", "retry", "failover", "brk" }) do
                assert.is_nil(value(fams, name, { route = route }), name .. " for " .. route)
            end
        end
        assert.equal(1, value(fams, "levee_idempotency_stored_total", { route = "idem" }))
    end)

    it("the strict parser rejects broken exposition text", function()
        local bad = {
            "x_total 1\n", -- sample before TYPE
            "# TYPE x counter\nx 1\n", -- counter without _total
            "# TYPE a_total counter\n# TYPE a_total counter\na_total 1\n",
            "# TYPE g gauge\ng{a=\"1\"} 1\ng{a=\"1\"} 2\n", -- duplicate series
            "# TYPE g gauge\ng{a=\"\\x\"} 1\n", -- bad escape
            "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 3\n",
            "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",
        }
        for _, t in ipairs(bad) do
            assert.has_error(function() parse_strict(t) end, nil, t)
        end
        parse_strict("# HELP g a \\\\ b\n# TYPE g gauge\ng{a=\"q\\\"\\n\\\\\"} 1\n")
    end)
end)
