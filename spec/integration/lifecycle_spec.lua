-- Lifecycle of the real levee binary: the command line (README, "Command line"), the admin API and metrics
-- (README, "Admin API"), reloads by POST /reload and SIGHUP, graceful shutdown on SIGTERM/SIGINT with
-- drain_timeout, the access log, and `levee dev`.

local H = require("helpers")
local socket = require("socket")

---------------------------------------------------------------------------------------------
-- helpers local to this file

-- 1-based number of the first line of text containing needle (plain).
local function line_of(text, needle)
    local n = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        if line:find(needle, 1, true) then return n end
    end
    error("line_of: " .. needle .. " not in text", 2)
end

local nonempty_lines = H.nonempty_lines

local function contains(s, needle) return s:find(needle, 1, true) ~= nil end

-- Starts one lv-testupstream and levee in front of it: upstream "api", route "main"
-- (prefix "/" unless given), admin API on. extra: more top-level keys.
local function gateway(extra, levee_opts)
    local up = H.upstream()
    local cfg = {
        admin = true,
        access_log = false,
        upstreams = { api = { servers = { up:addr() } } },
        routes = { { name = "main", match = { prefix = "/" }, upstream = "api" } },
    }
    for k, v in pairs(extra or {}) do cfg[k] = v end
    local o = { config = cfg }
    for k, v in pairs(levee_opts or {}) do o[k] = v end
    return H.levee(o), up
end

local function get(lv, path, headers, extra)
    local o = { path = path or "/", headers = headers or {} }
    for k, v in pairs(extra or {}) do o[k] = v end
    return assert(lv:request(o))
end

local function admin_json(lv, path)
    local r = assert(lv:admin(path))
    assert.equal(200, r.status)
    assert.matches("^application/json", r.headers["content-type"])
    return H.json(r.body), r
end

---------------------------------------------------------------------------------------------
-- a Prometheus text-format (0.0.4) validator

local TYPES = { counter = true, gauge = true, histogram = true, summary = true, untyped = true }

-- Parses {a="b",...} starting at line:sub(i, i) == "{"; returns labels, index after "}".
local function parse_labels(line, i)
    local labels = {}
    i = i + 1
    while true do
        if line:sub(i, i) == "}" then return labels, i + 1 end
        local name, after = line:match("^([%a_][%w_]*)=()", i)
        if not name then return nil, "bad label name at column " .. i end
        if labels[name] then return nil, "duplicate label " .. name end
        i = after
        if line:sub(i, i) ~= '"' then return nil, "label value not quoted at column " .. i end
        i = i + 1
        local val = {}
        while true do
            local ch = line:sub(i, i)
            if ch == "" then return nil, "unterminated label value" end
            if ch == "\\" then
                local nx = line:sub(i + 1, i + 1)
                if nx == "\\" or nx == '"' then
                    val[#val + 1] = nx
                elseif nx == "n" then
                    val[#val + 1] = "\n"
                else
                    return nil, "bad escape \\" .. nx
                end
                i = i + 2
            elseif ch == '"' then
                i = i + 1
                break
            else
                val[#val + 1] = ch
                i = i + 1
            end
        end
        labels[name] = table.concat(val)
        local nx = line:sub(i, i)
        if nx == "," then
            i = i + 1
        elseif nx ~= "}" then
            return nil, "expected , or } after a label at column " .. i
        end
    end
end

local function parse_value(v)
    if v == "+Inf" or v == "Inf" then return math.huge end
    if v == "-Inf" then return -math.huge end
    if v == "NaN" then return 0 / 0 end
    local mant = v:match("^([+-]?[%d.]+)[eE][+-]?%d+$") or v:match("^[+-]?[%d.]+$")
    if not mant or not mant:match("%d") or select(2, mant:gsub("%.", "")) > 1 then return nil end
    return tonumber(v)
end

local function series_key(name, labels)
    local ks = {}
    for k in pairs(labels) do ks[#ks + 1] = k end
    table.sort(ks)
    local parts = { name }
    for _, k in ipairs(ks) do parts[#parts + 1] = k .. "=" .. labels[k] end
    return table.concat(parts, "\0")
end

-- Validates the whole exposition and returns the samples { name =, labels =, value = }.
-- Raises naming the offending line.
local function parse_metrics(text)
    assert(text:sub(-1) == "\n", "metrics text does not end with a newline")
    local types, helps, seen_sample_family, series = {}, {}, {}, {}
    local samples = {}
    local n = 0
    local function fail(why, line) error(("metrics line %d: %s: %q"):format(n, why, line), 3) end
    local function family_of(name)
        if types[name] then return name, types[name] end
        for _, suffix in ipairs({ "_bucket", "_sum", "_count" }) do
            local base = name:match("^(.*)" .. suffix .. "$")
            if base and (types[base] == "histogram" or (types[base] == "summary" and suffix ~= "_bucket")) then
                return base, types[base]
            end
        end
    end
    for line in text:gmatch("([^\n]*)\n") do
        n = n + 1
        if line == "" then
            -- empty lines are allowed
        elseif line:sub(1, 1) == "#" then
            local kind, name, rest = line:match("^#[ \t]+(%u+)[ \t]+([%a_:][%w_:]*)[ \t]*(.*)$")
            if kind == "TYPE" then
                if not TYPES[rest] then fail("unknown type", line) end
                if types[name] then fail("second TYPE for " .. name, line) end
                if seen_sample_family[name] then fail("TYPE after samples of " .. name, line) end
                if not (name:match("^levee_") or name:match("^process_")) then fail("metric name without levee_ or process_", line) end
                types[name] = rest
            elseif kind == "HELP" then
                if helps[name] then fail("second HELP for " .. name, line) end
                if not (name:match("^levee_") or name:match("^process_")) then fail("metric name without levee_ or process_", line) end
                helps[name] = rest
            end
            -- any other comment is allowed
        else
            local name, i = line:match("^([%a_:][%w_:]*)()")
            if not name then fail("no metric name", line) end
            if not (name:match("^levee_") or name:match("^process_")) then fail("metric name without levee_ or process_", line) end
            local labels = {}
            if line:sub(i, i) == "{" then
                local l, j = parse_labels(line, i)
                if not l then fail(j, line) end
                labels, i = l, j
            end
            local v, ts = line:sub(i):match("^[ \t]+(%S+)[ \t]*(%S*)[ \t]*$")
            if not v then fail("no value", line) end
            local value = parse_value(v)
            if value == nil then fail("bad value " .. v, line) end
            if ts ~= "" and not ts:match("^%-?%d+$") then fail("bad timestamp", line) end
            local family, ftype = family_of(name)
            if not family then fail("sample without a TYPE", line) end
            seen_sample_family[family] = true
            if ftype == "histogram" and name == family .. "_bucket" then
                if not labels.le or not parse_value(labels.le) then fail("bucket without a numeric le", line) end
            end
            if (ftype == "counter" or name:match("_count$") or name:match("_bucket$")) and not (value >= 0) then
                fail("negative counter", line)
            end
            local key = series_key(name, labels)
            if series[key] then fail("duplicate series", line) end
            series[key] = true
            samples[#samples + 1] = { name = name, labels = labels, value = value }
        end
    end
    return samples, types
end

-- Samples named `name` whose labels include every pair of `want`.
local function select_samples(samples, name, want)
    local out = {}
    for _, s in ipairs(samples) do
        if s.name == name then
            local ok = true
            for k, v in pairs(want or {}) do
                if s.labels[k] ~= v then ok = false end
            end
            if ok then out[#out + 1] = s end
        end
    end
    return out
end

-- The value of the one series name{want...}, or nil when there is none.
local function metric(samples, name, want)
    local s = select_samples(samples, name, want)
    assert(#s <= 1, "more than one series for " .. name)
    return s[1] and s[1].value
end

local function scrape(lv)
    local r = assert(lv:admin("/metrics"))
    assert.equal(200, r.status)
    assert.matches("^text/plain", r.headers["content-type"])
    return parse_metrics(r.body)
end

---------------------------------------------------------------------------------------------

describe("levee command line", function()
    after_each(H.cleanup)

    it("--version prints 'levee X.Y.Z' first (then its libraries: install_spec) and exits 0", function()
        local code, out, err = H.run_levee({ "--version" })
        assert.equal(0, code)
        assert.matches("^levee %d+%.%d+%.%d+\n", out)
        assert.equal("", err)
    end)

    it("--help prints the usage of every command and exits 0", function()
        local code, out = H.run_levee({ "--help" })
        assert.equal(0, code)
        assert.matches("usage", out:lower())
        for _, word in ipairs({ "-c", "check", "dev", "--version" }) do
            assert.is_true(contains(out, word), "usage does not mention " .. word .. ":\n" .. out)
        end
    end)

    it("an unknown flag exits 2 with the usage on stderr and nothing on stdout", function()
        for _, args in ipairs({ { "--bogus" }, { "-Z" }, { "-c", "x.lua", "--frobnicate" } }) do
            local code, out, err = H.run_levee(args)
            assert.equal(2, code, table.concat(args, " "))
            assert.equal("", out)
            assert.matches("usage", err:lower())
        end
    end)

    it("check prints exactly 'ok' and exits 0 for every configuration in examples/", function()
        local dir = H.src .. "/examples"
        local p = assert(io.popen("ls -1 '" .. dir .. "'"))
        local files = {}
        for name in p:lines() do
            -- *_spec.lua beside them are their policy specs (`levee test`), not configurations
            if name:match("%.lua$") and not name:match("_spec%.lua$") then
                files[#files + 1] = dir .. "/" .. name
            end
        end
        p:close()
        assert.is_true(#files >= 1, "no examples in " .. dir)
        local elsewhere = H.tmpdir() -- relative paths must resolve against the file's folder
        for _, file in ipairs(files) do
            local code, out, err = H.run_levee({ "check", file }, { cwd = elsewhere })
            assert.equal("ok\n", out, file .. ": " .. out .. err)
            assert.equal("", err, file)
            assert.equal(0, code, file)
        end
    end)

    it("check prints every error of a broken file as FILE:LINE: key.path: message and exits 1", function()
        local text = [[
-- a configuration with three mistakes
return {
  upstreams = {
    api = { servers = { "127.0.0.1:9000" } },
  },
  routes = {
    {
      name = "a",
      upstream = "api",
      retry = { attempts = "three" },
    },
    {
      name = "b",
      upstream = "api",
      retyr = { attempts = 2 },
    },
    {
      name = "c",
      upstream = "apx",
    },
  },
}
]]
        local dir = H.tmpdir()
        H.write_file(dir .. "/broken.lua", text)
        local code, out, err = H.run_levee({ "check", "broken.lua" }, { cwd = dir })
        assert.equal(1, code)
        local lines = {}
        for _, l in ipairs(nonempty_lines(out .. err)) do
            if not contains(l, ": warning: ") then lines[#lines + 1] = l end -- shadowed routes
        end
        assert.equal(3, #lines, out .. err)
        for _, l in ipairs(lines) do
            assert.matches("^broken%.lua:%d+: [%w_%.%[%]]+: %S.*$", l)
        end
        local all = table.concat(lines, "\n") .. "\n"
        local function expect(prefix, word)
            local l = all:match("\n?(" .. prefix:gsub("%p", "%%%0") .. "[^\n]*)\n")
            assert.is_not_nil(l, "no line starting with " .. prefix .. " in:\n" .. all)
            assert.is_true(contains(l, word), l)
        end
        expect(("broken.lua:%d: routes[1].retry.attempts: "):format(line_of(text, '"three"')), "three")
        expect(("broken.lua:%d: routes[2].retyr: "):format(line_of(text, "retyr")), "unknown")
        expect(("broken.lua:%d: routes[3].upstream: "):format(line_of(text, '"apx"')), "apx")
    end)

    it("check reports a Lua syntax error as FILE:LINE and exits 1", function()
        local text = 'return {\n  upstreams = { api = { servers = { "127.0.0.1:9000" } } },\n'
            .. '  routes = {\n    { name = "x" upstream = "api" },\n  },\n}\n'
        local dir = H.tmpdir()
        H.write_file(dir .. "/syntax.lua", text)
        local code, out, err = H.run_levee({ "check", "syntax.lua" }, { cwd = dir })
        assert.equal(1, code)
        local line = line_of(text, 'name = "x" upstream')
        assert.matches("^syntax%.lua:" .. line .. ": ", out .. err)
    end)

    it("check on a missing file prints an error naming it and exits 1", function()
        local missing = H.tmpdir() .. "/nothing-here.lua"
        local code, out, err = H.run_levee({ "check", missing })
        assert.equal(1, code)
        assert.is_true(contains(out .. err, missing), out .. err)
        assert.is_false(contains(out, "ok"))
    end)

    it("-c with a missing file exits 1 with the error on stderr", function()
        local missing = H.tmpdir() .. "/missing.lua"
        local code, out, err = H.run_levee({ "-c", missing })
        assert.equal(1, code)
        assert.equal("", out)
        assert.is_true(contains(err, missing), err)
    end)

    it("starting on a listen port already in use fails with a clear error and a non-zero exit", function()
        local up = H.upstream()
        local holder = assert(socket.bind("127.0.0.1", 0))
        local _, port = holder:getsockname()
        local lv = H.levee({
            config = { listen = { "127.0.0.1:" .. port }, access_log = false,
                upstreams = { api = { servers = { up:addr() } } },
                routes = { { name = "main", upstream = "api" } } },
            wait = false,
        })
        local code, how = lv:wait_exit(10 * H.scale)
        holder:close()
        assert.equal("exit", how, "levee did not exit by itself (or crashed): " .. lv:log())
        assert.is_true(code ~= 0)
        local log = lv:log()
        assert.is_true(contains(log, "127.0.0.1:" .. port), log)
        assert.is_true(contains(log:lower(), "in use"), log)
    end)

    it("starting on an admin port already in use fails with a clear error and a non-zero exit", function()
        local up = H.upstream()
        local holder = assert(socket.bind("127.0.0.1", 0))
        local _, port = holder:getsockname()
        local lv = H.levee({
            config = { admin = "127.0.0.1:" .. port, access_log = false,
                upstreams = { api = { servers = { up:addr() } } },
                routes = { { name = "main", upstream = "api" } } },
            wait = false,
        })
        local code, how = lv:wait_exit(10 * H.scale)
        holder:close()
        assert.equal("exit", how, "levee did not exit by itself (or crashed): " .. lv:log())
        assert.is_true(code ~= 0)
        local log = lv:log()
        assert.is_true(contains(log, "127.0.0.1:" .. port), log)
        assert.is_true(contains(log:lower(), "in use"), log)
    end)
end)

---------------------------------------------------------------------------------------------

describe("admin API", function()
    after_each(H.cleanup)

    it("GET /healthz answers 200 ok", function()
        local lv = gateway()
        local r = assert(lv:admin("/healthz"))
        assert.equal(200, r.status)
        assert.matches("^ok\n?$", r.body)
    end)

    it("GET /status reports version, generation, load time, file, routes and upstream pools", function()
        local lv, up = gateway()
        local _, vout = H.run_levee({ "--version" })
        local st = admin_json(lv, "/status")
        assert.equal(vout:match("^levee (%S+)"), st.version)
        assert.equal(1, st.generation)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d", st.loaded_at)
        local y = tonumber(st.loaded_at:sub(1, 4))
        assert.equal(tonumber(os.date("!%Y")), y)
        assert.is_true(contains(st.file, "levee.lua"), st.file)
        assert.equal(1, #st.routes)
        assert.equal("main", st.routes[1].name)
        assert.equal("api", st.routes[1].upstream)
        assert.equal(0, st.routes[1].requests)
        assert.equal("closed", st.routes[1].breaker.state)
        assert.equal(1, #st.upstreams)
        assert.equal("api", st.upstreams[1].name)
        assert.equal(1, #st.upstreams[1].servers)
        local sv = st.upstreams[1].servers[1]
        assert.equal("number", type(sv.active))
        assert.equal("number", type(sv.idle))
        assert.equal(0, sv.active + sv.idle)

        -- one worker entry per worker (H.levee's LEVEE_TEST_WORKERS), nothing counted yet
        assert.equal(H.workers(), #st.workers)
        for i, w in ipairs(st.workers) do
            assert.equal(i - 1, w.worker)
            assert.equal(0, w.requests)
        end

        -- on one client connection: upstream pools are per worker (README "Workers")
        local c = assert(H.conn(lv.port))
        for i = 1, 3 do
            assert(c:send(H.build_request(lv.port, { path = "/s" .. i })))
            assert.equal(200, assert(c:read_response()).status)
        end
        assert.equal(3, up:stats().requests)
        st = H.wait_until(function()
            local s = admin_json(lv, "/status")
            return s.routes[1].requests >= 3 and s.upstreams[1].servers[1].idle >= 1 and s
        end, 5 * H.scale, "3 requests counted and an idle upstream connection")
        assert.equal(3, st.routes[1].requests)
        assert.equal("closed", st.routes[1].breaker.state)
        assert.equal(0, st.upstreams[1].servers[1].active)
        assert.is_true(st.upstreams[1].servers[1].idle >= 1)
        -- the upstream connection really is kept alive: fewer connections than requests
        assert.is_true(up:stats().connections < 3)
        -- the workers' requests add up to the route's
        local sum = 0
        for _, w in ipairs(st.workers) do sum = sum + w.requests end
        assert.equal(3, sum)
    end)

    it("GET /metrics is valid Prometheus text with request counters, histogram and pool gauges", function()
        local lv = gateway()
        local samples = scrape(lv)
        assert.equal(1, metric(samples, "levee_config_generation"))
        assert.equal(0, metric(samples, "levee_requests_total", { route = "main", code = "200" }) or 0)

        local N = 4
        for i = 1, N do
            assert.equal(200, get(lv, "/m" .. i).status)
        end
        local types
        samples, types = H.wait_until(function()
            local s, t = scrape(lv)
            local n = metric(s, "levee_requests_total", { route = "main", code = "200" })
            local idle = metric(s, "levee_upstream_connections", { upstream = "api", state = "idle" })
            return n and n >= N and idle and idle >= 1 and s, t
        end, 5 * H.scale, "requests counted and an idle upstream connection")
        assert.equal(N, metric(samples, "levee_requests_total", { route = "main", code = "200" }))
        assert.equal("counter", types.levee_requests_total)

        -- histogram for the route: cumulative buckets ending at +Inf == _count == N
        assert.equal("histogram", types.levee_request_duration_seconds)
        local buckets = select_samples(samples, "levee_request_duration_seconds_bucket", { route = "main" })
        assert.is_true(#buckets >= 2)
        table.sort(buckets, function(a, b) return parse_value(a.labels.le) < parse_value(b.labels.le) end)
        for i = 2, #buckets do
            assert.is_true(buckets[i].value >= buckets[i - 1].value, "buckets not cumulative")
        end
        assert.equal("+Inf", buckets[#buckets].labels.le)
        assert.equal(N, buckets[#buckets].value)
        assert.equal(N, metric(samples, "levee_request_duration_seconds_count", { route = "main" }))
        local sum = metric(samples, "levee_request_duration_seconds_sum", { route = "main" })
        assert.is_true(sum > 0 and sum < N * 5, "sum " .. tostring(sum))

        local idle = metric(samples, "levee_upstream_connections", { upstream = "api", state = "idle" })
        assert.is_true(idle >= 1)
        assert.is_not_nil(metric(samples, "levee_upstream_connections", { upstream = "api", state = "active" }))
        assert.is_not_nil(types.levee_config_reloads_total)
        assert.equal(0, metric(samples, "levee_config_reloads_total", { result = "error" }) or 0)
        assert.equal(1, metric(samples, "levee_config_generation"))
        for _, s in ipairs(samples) do
            -- levee's own metrics, and the standard process_* ones (README, "Admin API")
            assert.is_true(s.name:match("^levee_") ~= nil or s.name:match("^process_") ~= nil, s.name)
        end
    end)

    it("the metrics validator rejects what is not Prometheus text", function()
        -- the validator above guards every scrape: make sure it does catch bad lines
        local bad = {
            "levee_x 1", -- no TYPE, no trailing newline
            "# TYPE levee_x counter\nlevee_x{a=\"b\" 1\n",
            "# TYPE levee_x counter\nlevee_x one\n",
            "# TYPE levee_x counter\nlevee_x 0x10\n",
            "# TYPE levee_x counter\nlevee_x 1.2.3\n",
            "# TYPE other_x counter\nother_x 1\n",
            "# TYPE levee_x counter\nlevee_x 1\nlevee_x 2\n",
            "# TYPE levee_x counter\nlevee_x{a=\"\\q\"} 1\n",
            "# TYPE levee_h histogram\nlevee_h_bucket 1\n",
        }
        for _, text in ipairs(bad) do
            assert.is_false(pcall(parse_metrics, text), text)
        end
        local s = parse_metrics('# HELP levee_x a "thing"\n# TYPE levee_x counter\nlevee_x{a="q\\"}\\\\",b="2"} 3\n')
        assert.equal('q"}\\', s[1].labels.a)
        assert.equal(3, s[1].value)
    end)

    it("answers 404 JSON to an unknown path, 405 to a wrong method, and serves the dashboard at /", function()
        local lv = gateway()
        local r = assert(lv:admin("/nope"))
        assert.equal(404, r.status)
        assert.matches("^application/json", r.headers["content-type"])
        assert.equal("string", type(H.json(r.body).error))

        for _, c in ipairs({ { "POST", "/status" }, { "DELETE", "/metrics" }, { "GET", "/reload" },
            { "PUT", "/healthz" } }) do
            local r2 = assert(lv:admin({ method = c[1], path = c[2], body = c[1] ~= "GET" and "" or nil }))
            assert.equal(405, r2.status, c[1] .. " " .. c[2])
            assert.matches("^application/json", r2.headers["content-type"])
            assert.equal("string", type(H.json(r2.body).error))
            -- RFC 9110 §15.5.6: a 405 response MUST carry Allow
            assert.is_not_nil(r2.headers["allow"], c[1] .. " " .. c[2] .. ": no Allow header")
        end

        local d = assert(lv:admin("/"))
        assert.equal(200, d.status)
        assert.matches("^text/html", d.headers["content-type"])
        assert.is_true(contains(d.body, "levee"))
    end)

    it("answers a bad request on the admin port with 400 and keeps working", function()
        local lv, up = gateway()
        local pid = lv:pid()
        for _, bytes in ipairs({
            "BLAH\r\n\r\n",
            "GET /status HTTP/1.1\r\nNo colon here\r\n\r\n",
            "GET /status HTTP/1.1\r\nX: a\0b\r\n\r\n",
            "GET /status SPDY/3\r\n\r\n",
        }) do
            local data, why = H.raw(lv.admin_port, bytes)
            assert.matches("^HTTP/1%.1 400 ", data)
            assert.is_true(why == "closed" or why == "reset", why)
        end
        -- a client leaving half-way and one connecting and saying nothing
        H.raw(lv.admin_port, "GET /sta", { timeout = 0.05 })
        local silent = assert(H.conn(lv.admin_port))
        silent:close()
        local r = assert(lv:admin("/healthz"))
        assert.equal(200, r.status)
        assert.equal(pid, lv:pid())
        assert.is_true(lv:alive())
        assert.equal(200, get(lv, "/after").status)
        assert.equal(1, up:stats().by_path["/after"])
    end)
end)

---------------------------------------------------------------------------------------------

describe("reload", function()
    after_each(H.cleanup)

    local function config_text(up, extra_routes, main_extra)
        return ([[
return {
  listen = { "127.0.0.1:$PORT" },
  admin = "127.0.0.1:$ADMIN",
  access_log = false,
  upstreams = {
    api = { servers = { "%s" } },
  },
  routes = {
    { name = "main", match = { prefix = "/a" }, upstream = "api"%s },
%s  },
}
]]):format(up:addr(), main_extra or "", extra_routes or "")
    end

    it("POST /reload with an unchanged file answers ok with generation 2", function()
        local up = H.upstream()
        local lv = H.levee({ config = config_text(up) })
        local r = assert(lv:admin({ method = "POST", path = "/reload", body = "" }))
        assert.equal(200, r.status)
        assert.matches("^application/json", r.headers["content-type"])
        local j = H.json(r.body)
        assert.equal("ok", j.result)
        assert.equal(2, j.generation)
        local st = admin_json(lv, "/status")
        assert.equal(2, st.generation)
        local samples = scrape(lv)
        assert.equal(2, metric(samples, "levee_config_generation"))
        assert.equal(1, metric(samples, "levee_config_reloads_total", { result = "ok" }))
        assert.equal(200, get(lv, "/a/x").status)
    end)

    it("POST /reload with a broken file answers 400 with FILE:LINE errors and keeps the old config", function()
        local up = H.upstream()
        local lv = H.levee({ config = config_text(up) })
        assert.equal(200, get(lv, "/a/before").status)
        local broken = lv:write_config(config_text(up, nil, ', timeout = "soon"'))
        local line = line_of(broken, 'timeout = "soon"')
        local r = assert(lv:admin({ method = "POST", path = "/reload", body = "" }))
        assert.equal(400, r.status)
        assert.matches("^application/json", r.headers["content-type"])
        local j = H.json(r.body)
        assert.equal("table", type(j.errors))
        assert.is_true(#j.errors >= 1)
        local found = false
        for _, e in ipairs(j.errors) do
            if contains(e, "levee.lua:" .. line .. ": routes[1].timeout") then found = true end
        end
        assert.is_true(found, "no levee.lua:" .. line .. " error in " .. r.body)

        -- the old configuration keeps serving
        local ok = get(lv, "/a/after")
        assert.equal(200, ok.status)
        assert.equal("/a/after", H.json(ok.body).target)
        assert.equal(1, up:stats().by_path["/a/after"])
        local st = admin_json(lv, "/status")
        assert.equal(1, st.generation)
        local samples = scrape(lv)
        assert.equal(1, metric(samples, "levee_config_reloads_total", { result = "error" }))
        assert.equal(0, metric(samples, "levee_config_reloads_total", { result = "ok" }) or 0)
        assert.equal(1, metric(samples, "levee_config_generation"))
        assert.is_true(contains(lv:log(), "levee.lua:" .. line), lv:log())
    end)

    it("SIGHUP with a broken file keeps serving, and with a new route serves it", function()
        local up = H.upstream()
        local lv = H.levee({ config = config_text(up) })
        local before = get(lv, "/b/x")
        assert.equal(404, before.status)
        assert.equal("no-route", before.headers["levee-error"])

        lv:write_config(config_text(up, nil, ", retry = { attempts = 0 }"))
        lv:reload()
        H.wait_until(function()
            return metric(scrape(lv), "levee_config_reloads_total", { result = "error" }) == 1
        end, 5 * H.scale, "the refused reload to be counted")
        assert.equal(200, get(lv, "/a/still").status)
        assert.equal(1, admin_json(lv, "/status").generation)

        lv:write_config(config_text(up,
            '    { name = "second", match = { prefix = "/b" }, upstream = "api" },\n'))
        lv:reload()
        local r = H.wait_until(function()
            local x = get(lv, "/b/new")
            return x.status == 200 and x
        end, 5 * H.scale, "the new route to serve")
        assert.equal("/b/new", H.json(r.body).target)
        local st = admin_json(lv, "/status")
        assert.equal(2, st.generation)
        assert.equal(2, #st.routes)
        assert.equal("second", st.routes[2].name)
        assert.equal(1, metric(scrape(lv), "levee_config_reloads_total", { result = "ok" }))
        assert.equal(200, get(lv, "/a/old").status)
    end)
end)

---------------------------------------------------------------------------------------------

describe("graceful shutdown", function()
    after_each(H.cleanup)

    it("SIGTERM lets a request in flight finish, refuses new connections, and exits 0", function()
        local lv, up = gateway({ drain_timeout = "10s" })
        local c = assert(H.conn(lv.port, { timeout = 10 }))
        c:send(H.build_request(lv.port, { path = "/slow",
            headers = { { "X-Test-Delay-Ms", "800" }, { "X-Test-Body-Size", "5000" } } }))
        H.wait_until(function() return (up:stats().by_path["/slow"] or 0) == 1 end, 5, "the request upstream")
        local t0 = H.now()
        assert.is_true(lv:kill("TERM"))
        H.wait_until(function() return not H.port_open(lv.port) end, 2 * H.scale, "the listener to close")
        -- still draining: the request in flight holds the process
        assert.is_true(lv:alive(), "levee exited with a request in flight")
        local r, err = c:read_response()
        assert.is_not_nil(r, err)
        assert.equal(200, r.status)
        assert.equal(5000, #r.body)
        assert.is_true(r.body == H.pattern(5000))
        assert.is_true(H.now() - t0 >= 0.5, "answered before the upstream did")
        assert.is_true(c:closed(5 * H.scale))
        assert.same({ 0, "exit" }, { lv:wait_exit(5 * H.scale) })
        assert.equal(1, up:stats().requests)
    end)

    it("with drain_timeout 300ms a hanging request is cut off, and levee exits 0 within about 1 s", function()
        local lv, up = gateway({ drain_timeout = "300ms" })
        local c = assert(H.conn(lv.port, { timeout = 5 }))
        c:send(H.build_request(lv.port, { path = "/hang", headers = { { "X-Test-Action", "hang" } } }))
        H.wait_until(function() return (up:stats().by_path["/hang"] or 0) == 1 end, 5, "the request upstream")
        local t0 = H.now()
        assert.is_true(lv:kill("TERM"))
        local code, how = lv:wait_exit(5 * H.scale)
        local took = H.now() - t0
        assert.same({ 0, "exit" }, { code, how })
        assert.is_true(took >= 0.25, ("exited after %.3fs, before drain_timeout"):format(took))
        assert.is_true(took < 1.0 * H.scale, ("exited after %.3fs"):format(took))
        assert.is_true(c:closed(1), "the hanging client connection is still open")
        -- the upstream side of the hung request is gone too
        H.wait_until(function() return up:stats().active_connections == 0 end, 5, "upstream connection closed")
    end)

    it("SIGINT also drains and exits 0", function()
        local lv = gateway()
        assert.equal(200, get(lv, "/x").status)
        assert.same({ 0, "exit" }, { lv:stop("INT", 5 * H.scale) })
        assert.is_false(H.port_open(lv.port))
        assert.is_false(H.port_open(lv.admin_port))
    end)

    it("closes idle keep-alive client connections at shutdown instead of waiting for them", function()
        local lv = gateway({ drain_timeout = "10s" })
        local used = assert(H.conn(lv.port))
        used:send(H.build_request(lv.port, { path = "/ka" }))
        local r = assert(used:read_response())
        assert.equal(200, r.status)
        assert.is_nil(r.headers["connection"] and r.headers["connection"]:lower():find("close"))
        local silent = assert(H.conn(lv.port))
        -- both connections are accepted by levee before the signal
        H.wait_until(function()
            return metric(scrape(lv), "levee_client_connections") == 2
        end, 5 * H.scale, "two client connections")
        local t0 = H.now()
        assert.is_true(lv:kill("TERM"))
        assert.same({ 0, "exit" }, { lv:wait_exit(5 * H.scale) })
        local took = H.now() - t0
        assert.is_true(took < 2 * H.scale, ("exit took %.3fs with idle connections"):format(took))
        assert.is_true(used:closed(1))
        assert.is_true(silent:closed(1))
    end)
end)

---------------------------------------------------------------------------------------------

describe("access log", function()
    after_each(H.cleanup)

    local KEYS = { "time", "request_id", "client", "method", "path", "host", "route", "upstream",
        "status", "attempts", "tries", "backoff_ms", "bytes_in", "bytes_out", "duration_ms",
        "upstream_ms", "error", "flags" }

    it("writes one JSON object a line to a file relative to the config folder", function()
        local elsewhere = H.tmpdir()
        local up = H.upstream()
        local lv = H.levee({
            config = { access_log = "access.log", upstreams = { api = { servers = { up:addr() } } },
                routes = { { name = "main", match = { prefix = "/a" }, upstream = "api" } } },
            cwd = elsewhere,
        })
        local body = "hello world"
        local r1 = get(lv, "/a/logged", { { "X-Request-Id", "req-life-1" } }, { method = "POST", body = body })
        assert.equal(200, r1.status)
        assert.equal("req-life-1", r1.headers["x-request-id"])
        local r2 = get(lv, "/nowhere")
        assert.equal(404, r2.status)
        assert.equal("no-route", r2.headers["levee-error"])

        local path = lv.dir .. "/access.log"
        local lines = H.wait_until(function()
            local l = nonempty_lines(H.read_file(path))
            return #l >= 2 and l
        end, 5 * H.scale, "two access log lines in " .. path)
        assert.equal(2, #lines)
        assert.equal("", H.read_file(elsewhere .. "/access.log"))
        -- by request id: with several workers, lines come in the order workers write them
        local e1, e2 = H.json(lines[1]), H.json(lines[2])
        if e2.request_id == "req-life-1" then e1, e2 = e2, e1 end
        for _, e in ipairs({ e1, e2 }) do
            for _, k in ipairs(KEYS) do
                assert.is_true(e[k] ~= nil, "access log line lacks " .. k)
            end
            assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d", e.time)
            assert.matches("^127%.0%.0%.1", e.client)
            assert.equal("table", type(e.flags))
            assert.equal("table", type(e.tries))
            assert.equal("number", type(e.duration_ms))
            assert.is_true(e.duration_ms >= 0)
            assert.equal("127.0.0.1:" .. lv.port, e.host)
        end
        assert.equal("req-life-1", e1.request_id)
        assert.equal("POST", e1.method)
        assert.equal("/a/logged", e1.path)
        assert.equal("main", e1.route)
        assert.equal(up:addr(), e1.upstream)
        assert.equal(200, e1.status)
        assert.equal(1, e1.attempts)
        assert.equal(1, #e1.tries)
        assert.equal(up:addr(), e1.tries[1].server)
        assert.equal(0, e1.backoff_ms)
        assert.is_true(e1.bytes_in >= #body, "bytes_in " .. tostring(e1.bytes_in))
        assert.is_true(e1.bytes_out >= #r1.body, "bytes_out " .. tostring(e1.bytes_out))
        assert.equal("number", type(e1.upstream_ms))
        assert.is_true(e1.upstream_ms >= 0 and e1.upstream_ms <= e1.duration_ms)
        assert.equal(H.null, e1.error)
        assert.same({}, e1.flags)

        assert.equal(r2.headers["x-request-id"], e2.request_id)
        assert.is_true(#e2.request_id > 0)
        assert.equal("GET", e2.method)
        assert.equal("/nowhere", e2.path)
        assert.equal(404, e2.status)
        assert.equal("no-route", e2.error)
        assert.equal(H.null, e2.route)
        assert.equal(0, e2.attempts)
        assert.same({}, e2.tries)
        assert.equal(0, up:stats().by_path["/nowhere"] or 0)

        assert.same({ 0, "exit" }, { lv:stop() })
        assert.equal("", lv:stdout())
    end)

    it("access_log = false writes nothing to stdout", function()
        local lv, up = gateway({ access_log = false })
        assert.equal(200, get(lv, "/quiet").status)
        assert.matches("^HTTP/1%.1 400 ", (H.raw(lv.port, "BLAH\r\n\r\n")))
        assert.equal(1, up:stats().by_path["/quiet"])
        assert.same({ 0, "exit" }, { lv:stop() })
        assert.equal("", lv:stdout())
    end)

    it("access_log = stdout (the default) writes the lines to stdout", function()
        local up = H.upstream()
        local lv = H.levee({ config = { upstreams = { api = { servers = { up:addr() } } },
            routes = { { name = "main", upstream = "api" } } } })
        assert.equal(200, get(lv, "/loud").status)
        local e = lv:wait_access(1, 5 * H.scale)
        assert.equal("/loud", e[1].path)
        assert.equal(200, e[1].status)
    end)
end)

---------------------------------------------------------------------------------------------

describe("levee dev", function()
    after_each(H.cleanup)

    it("proxies a GET and a POST to the URL", function()
        local up = H.upstream()
        local lv = H.levee({ argv = { "dev", up:url(), "--listen", "127.0.0.1:$PORT", "--admin", "off" } })
        local r = get(lv, "/dev/get?x=1")
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal("GET", e.method)
        assert.equal("/dev/get?x=1", e.target)
        assert.equal(up.ports[1], e.port)

        local body = H.pattern(3000)
        local p = get(lv, "/dev/post", { { "Content-Type", "text/plain" } }, { method = "POST", body = body })
        assert.equal(200, p.status)
        local pe = H.json(p.body)
        assert.equal("POST", pe.method)
        assert.equal("/dev/post", pe.target)
        assert.equal(#body, pe.body_len)
        assert.equal(H.fnv1a64(body), pe.body_sha)
        local s = up:stats()
        assert.equal(2, s.requests)
        assert.same({ ["/dev/get"] = 1, ["/dev/post"] = 1 }, s.by_path)
    end)

    it("accepts host:port and a bare port as the URL", function()
        local up = H.upstream()
        for _, url in ipairs({ up:addr(), tostring(up.ports[1]) }) do
            local lv = H.levee({ argv = { "dev", url, "--listen", "127.0.0.1:$PORT", "--admin", "off" } })
            local r = get(lv, "/form")
            assert.equal(200, r.status, url)
            assert.equal("/form", H.json(r.body).target)
            assert.same({ 0, "exit" }, { lv:stop() })
        end
        assert.equal(2, up:stats().by_path["/form"])
    end)

    it("exits 2 (a usage error) with a message for a bad URL or --listen", function()
        local port = H.free_port()
        for _, url in ipairs({ "http://127.0.0.1:99999", "ftp://127.0.0.1:80", "http://", "127.0.0.1:notaport" }) do
            local code, out, err = H.run_levee({ "dev", url, "--listen", "127.0.0.1:" .. port })
            assert.equal(2, code, url)
            assert.matches("^levee dev: URL: ", err)
            assert.is_true(contains(err, url), err)
            assert.equal("", out)
        end
        local code, _, err = H.run_levee({ "dev", "127.0.0.1:1", "--listen", "nonsense" })
        assert.equal(2, code)
        assert.matches("^levee dev: %-%-listen: ", err)
        assert.is_false(H.port_open(port))
    end)
end)
