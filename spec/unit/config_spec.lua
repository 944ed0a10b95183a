-- Unit specs for lua/levee/config.lua and lua/levee/keylines.lua.
-- Fixture configurations are written into a temporary folder per test.

local config = require("levee.config")
local keylines = require("levee.keylines")

local LUA_DIR = package.searchpath("levee.config", package.path):match("^(.*)/levee/config%.lua$")

local dir

local function write(name, text)
    local path = dir .. "/" .. name
    local f = assert(io.open(path, "w"))
    f:write(text)
    f:close()
    return path
end

-- Errors with the temporary folder removed, so they read "levee.lua:4: ...".
local function strip(errs)
    local out = {}
    for i, e in ipairs(errs) do
        out[i] = e:gsub(dir:gsub("%p", "%%%0") .. "/", "")
    end
    return out
end

local function compile(text, name)
    return config.compile(write(name or "levee.lua", text), LUA_DIR)
end

local function errors_of(text, name)
    local c, errs = compile(text, name)
    assert.is_nil(c)
    return strip(errs)
end

local function ok(text)
    local c, files = compile(text)
    if not c then
        error("unexpected errors:\n" .. table.concat(strip(files), "\n"))
    end
    return c, files
end

local UPSTREAMS = "  upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"

-- A file whose only route is on line 4, with `fields` added to it.
local function with_route(fields)
    return "return {\n" .. UPSTREAMS .. "  routes = {\n"
        .. "    { name = 'r', upstream = 'api', " .. fields .. " },\n  },\n}\n"
end

-- A file whose line 2 is `top`, followed by a valid upstream and route.
local function with_top(top)
    return "return {\n  " .. top .. ",\n" .. UPSTREAMS
        .. "  routes = { { name = 'r', upstream = 'api' } },\n}\n"
end

-- A file whose upstream `api` is on line 2 with `fields`.
local function with_upstream(fields)
    return "return {\n  upstreams = { api = { " .. fields .. " } },\n"
        .. "  routes = { { name = 'r', upstream = 'api' } },\n}\n"
end

before_each(function()
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p '" .. dir .. "'"))
end)

after_each(function()
    os.execute("rm -rf '" .. dir .. "'")
end)

describe("durations", function()
    it("parses units, compounds and plain seconds into milliseconds", function()
        local cases = {
            { "250ms", 250 }, { "2s", 2000 }, { "5m", 300000 }, { "24h", 86400000 },
            { "1h30m", 5400000 }, { "1.5s", 1500 }, { ".5s", 500 }, { "0s", 0 },
            { 2, 2000 }, { 0.25, 250 }, { 0, 0 }, { "1m30s250ms", 90250 },
        }
        for _, c in ipairs(cases) do
            assert.are.equal(c[2], config.parse_duration(c[1]), tostring(c[1]))
        end
    end)

    it("rejects anything else", function()
        for _, v in ipairs({ "2", "2 s", "2S", "s", "", "1d", "-1s", "2s ", "1.2.3s", "ms",
            true, {}, 0 / 0, math.huge }) do
            assert.is_nil(config.parse_duration(v), tostring(v))
        end
    end)
end)

describe("sizes", function()
    it("parses binary units and plain bytes", function()
        local cases = {
            { "512B", 512 }, { "64KiB", 65536 }, { "1MiB", 1048576 }, { "1GiB", 1073741824 },
            { "1.5KiB", 1536 }, { 100, 100 }, { 0, 0 }, { "0B", 0 },
        }
        for _, c in ipairs(cases) do
            assert.are.equal(c[2], config.parse_size(c[1]), tostring(c[1]))
        end
    end)

    it("rejects decimal units, spaces and other types", function()
        for _, v in ipairs({ "16MB", "1 KiB", "1kib", "KiB", "64", "", false, 0 / 0 }) do
            assert.is_nil(config.parse_size(v), tostring(v))
        end
    end)
end)

describe("host:port", function()
    it("accepts names, IPv4 and bracketed IPv6", function()
        assert.are.same({ "localhost", 3000 }, { config.parse_hostport("localhost:3000") })
        assert.are.same({ "10.0.0.1", 1 }, { config.parse_hostport("10.0.0.1:1") })
        assert.are.same({ "::1", 65535 }, { config.parse_hostport("[::1]:65535") })
        assert.are.same({ "a-b.c_d", 80 }, { config.parse_hostport("a-b.c_d:80") })
    end)

    it("rejects a missing host or port, bad ports and junk", function()
        assert.are.same({ nil, "port" }, { config.parse_hostport("h:0") })
        assert.are.same({ nil, "port" }, { config.parse_hostport("h:65536") })
        for _, v in ipairs({ "h", ":80", "h:", "h:8x", "::1:80", "a b:80", "-h:80", "a..b:80",
            "h:80/x", 80 }) do
            assert.are.same({ nil, "syntax" }, { config.parse_hostport(v) }, tostring(v))
        end
    end)
end)

describe("compile", function()
    it("normalizes a full configuration", function()
        write("hooks.lua", "return { classify = function(a) return 'ok' end }\n")
        local c, files = ok([[
local hooks = require "hooks"
return {
  listen = { "127.0.0.1:8080", { addr = "0.0.0.0:8081" } },
  admin = "127.0.0.1:9901",
  limits = { header_size = "16KiB", body_size = 1000, header_timeout = 2.5 },
  access_log = "stderr",
  watch = true,
  drain_timeout = "1m",
  upstreams = {
    api = { servers = { "127.0.0.1:9000", "[::1]:9001" }, balance = "least_request",
            connect_timeout = "250ms", pool = { max_idle = 0, queue_timeout = "2s" },
            tls = { sni = "api.internal" } },
    b = { servers = { "b:1" }, tls = true },
  },
  routes = {
    { name = "pay", upstream = "api",
      match = { prefix = "/v1", host = "Example.COM", methods = { "POST", "GET", "POST" } },
      timeout = "5s",
      retry = { on = { "reset", "gateway-error", "429", 418, "timeout", "reset" },
                backoff = { jitter = "none" }, budget = { ratio = 0 } },
      breaker = { slow_call = { duration = "2s" } },
      idempotency = { store = { redis = "127.0.0.1:6379" } },
      classify = hooks.classify },
    { name = "rest", upstream = "b", breaker = true, idempotency = true },
  },
}
]])
        assert.are.same({ dir .. "/levee.lua", dir .. "/hooks.lua" }, files)
        assert.are.same({ { addr = { host = "127.0.0.1", port = 8080 } },
            { addr = { host = "0.0.0.0", port = 8081 } } }, c.listen)
        assert.are.same({ host = "127.0.0.1", port = 9901 }, c.admin)
        assert.are.same({ header_size = 16384, request_line = 8192, header_count = 100,
            body_size = 1000, header_timeout_ms = 2500, idle_timeout_ms = 60000,
            send_timeout_ms = 60000, max_connections = 10000, body_timeout_ms = 10000,
            body_rate = 1024 }, c.limits)
        assert.are.equal("stderr", c.access_log)
        assert.is_nil(c.access_log_path)
        assert.is_true(c.watch)
        assert.are.equal(60000, c.drain_timeout_ms)

        assert.are.equal(2, #c.upstreams)
        local api = c.upstreams[1]
        assert.are.same({
            name = "api",
            servers = { { host = "127.0.0.1", port = 9000 }, { host = "::1", port = 9001 } },
            balance = "least_request",
            connect_timeout_ms = 250,
            pool = { max_idle = 0, idle_timeout_ms = 60000, max_lifetime_ms = 600000,
                max_connections = 1024, queue_size = 1024, queue_timeout_ms = 2000 },
            tls = true, tls_sni = "api.internal", tls_verify = true,
            -- outlier ejection is on by default; no active checks unless configured
            outlier = { enabled = true, consecutive_failures = 5, eject_for_ms = 10000,
                max_eject_for_ms = 300000, max_ejected = 0.5, enforce = true },
            slow_start_ms = 0,
        }, api)
        assert.are.equal("b", c.upstreams[2].name)
        assert.is_true(c.upstreams[2].tls)
        assert.are.equal(1000, c.upstreams[2].pool.queue_timeout_ms)

        local r = c.routes[1]
        assert.are.equal("pay", r.name)
        assert.are.equal(16, r.line)
        assert.are.equal("/v1", r.match_prefix)
        assert.is_nil(r.match_path)
        assert.are.equal("example.com", r.match_host)
        assert.are.same({ "POST", "GET" }, r.match_methods)
        assert.are.equal("api", r.upstream)
        assert.are.equal(5000, r.timeout_ms)
        assert.are.equal(5000, r.try_timeout_ms)
        assert.are.equal(65536, r.request_buffer) -- the replay buffer by default
        assert.are.same({
            attempts = 2,
            on = { errors = { "reset", "timeout" }, statuses = { 418, 429, 502, 503, 504 } },
            backoff_base_ms = 25, backoff_max_ms = 1000, jitter = "none",
            budget_ratio = 0.0, budget_min_per_second = 10.0, budget_window_ms = 10000,
            non_idempotent = false, buffer = 65536,
        }, r.retry)
        assert.are.same({ enabled = true, failure_ratio = 0.5, min_requests = 20,
            window_ms = 10000, consecutive_failures = 5, open_for_ms = 5000,
            max_open_for_ms = 5000, half_open_requests = 1, slow_call_ms = 2000,
            slow_call_ratio = 1.0 }, r.breaker)
        assert.are.same({ enabled = true, header = "Idempotency-Key", ttl_ms = 86400000,
            methods = { "POST", "PATCH" }, required = false, store = "redis",
            redis = { host = "127.0.0.1", port = 6379 }, redis_prefix = "levee:",
            max_body = 1048576, max_memory = 67108864, on_conflict = "reject",
            on_store_error = "fail_closed" }, r.idempotency)
        assert.are.equal("ok", r.classify())
        assert.is_nil(r.fallback)

        local rest = c.routes[2]
        assert.are.equal(24, rest.line)
        assert.is_true(rest.breaker.enabled)
        assert.are.equal(20, rest.breaker.min_requests)
        assert.is_true(rest.idempotency.enabled)
        assert.are.equal("memory", rest.idempotency.store)
        assert.is_nil(rest.idempotency.redis)
    end)

    it("fills every default for a minimal file", function()
        local c = ok("return { upstreams = { a = { servers = { 'h:1' } } },\n"
            .. "routes = { { name = 'x', upstream = 'a' } } }\n")
        assert.are.same({ { addr = { host = "127.0.0.1", port = 8080 } } }, c.listen)
        assert.is_nil(c.admin)
        assert.are.equal("stdout", c.access_log)
        assert.is_false(c.watch)
        assert.are.equal(10000, c.drain_timeout_ms)
        assert.are.equal(32768, c.limits.header_size)
        local r = c.routes[1]
        assert.are.same({}, r.match_methods)
        assert.is_nil(r.match_prefix)
        assert.are.equal(15000, r.timeout_ms)
        assert.are.equal(15000, r.try_timeout_ms)
        assert.are.same({ errors = { "connect-failure", "reset" }, statuses = {} }, r.retry.on)
        assert.are.equal(2, r.retry.attempts)
        assert.are.equal(0.2, r.retry.budget_ratio)
        assert.are.equal(10, r.retry.budget_min_per_second)
        assert.are.same({ enabled = false }, r.breaker)
        assert.are.same({ enabled = false }, r.idempotency)
        local u = c.upstreams[1]
        assert.are.equal("round_robin", u.balance)
        assert.are.equal(1000, u.connect_timeout_ms)
        assert.is_false(u.tls)
        assert.is_true(u.tls_verify)
        assert.are.equal(64, u.pool.max_idle)
    end)

    it("normalizes health checks, outlier ejection and slow start", function()
        local c = ok(with_upstream("servers = { '127.0.0.1:9000' }, slow_start = '30s', "
            .. "health = { path = '/healthz?deep=1', expect = { '2xx', 418, '302' }, host = 'api.internal' }, "
            .. "outlier = { consecutive_failures = 3, eject_for = '1s', enforce = false }"))
        local u = c.upstreams[1]
        assert.are.equal(30000, u.slow_start_ms)
        local h = u.health
        assert.are.equal("/healthz?deep=1", h.path)
        assert.are.same({ 2000, 1000, 2, 3, "api.internal" },
            { h.interval_ms, h.timeout_ms, h.healthy, h.unhealthy, h.host })
        assert.are.equal(102, #h.expect)
        assert.are.same({ 200, 201 }, { h.expect[1], h.expect[2] })
        assert.are.same({ 299, 302, 418 }, { h.expect[100], h.expect[101], h.expect[102] })
        assert.are.same({ enabled = true, consecutive_failures = 3, eject_for_ms = 1000,
            max_eject_for_ms = 300000, max_ejected = 0.5, enforce = false }, u.outlier)
        local off = ok(with_upstream("servers = { '127.0.0.1:9000' }, outlier = false, health = true"))
        assert.is_false(off.upstreams[1].outlier.enabled)
        assert.are.equal("/", off.upstreams[1].health.path)
        assert.are.same({ 200, 399 }, { off.upstreams[1].health.expect[1], off.upstreams[1].health.expect[200] })
        assert.are.same({
            "levee.lua:2: upstreams.api.health.path: expected a path starting with /, got \"healthz\"",
            "levee.lua:2: upstreams.api.health.timeout: expected a duration between 1ms and 1s, got \"5s\"",
            "levee.lua:2: upstreams.api.health.expect[1]: expected a status code 100-599 or a class like \"2xx\", got \"7xx\"",
            "levee.lua:2: upstreams.api.outlier.max_ejected: expected number between 0 and 1, got 1.5",
        }, errors_of(with_upstream("servers = { '127.0.0.1:9000' }, outlier = { max_ejected = 1.5 }, "
            .. "health = { path = 'healthz', interval = '1s', timeout = '5s', expect = { '7xx' } }")))
    end)

    it("expands 5xx and retriable-4xx", function()
        local c = ok(with_route("retry = { on = { '5xx', 'retriable-4xx', 'protocol-error', "
            .. "'connect-failure' } }"))
        local on = c.routes[1].retry.on
        assert.are.same({ "connect-failure", "protocol-error" }, on.errors)
        assert.are.equal(103, #on.statuses)
        assert.are.same({ 409, 425, 429, 500, 501 }, { table.unpack(on.statuses, 1, 5) })
        assert.are.equal(599, on.statuses[103])
    end)

    it("resolves listener TLS files, the CA file and the access log against the file's folder", function()
        write("c.pem", "cert")
        write("k.pem", "key")
        write("ca.pem", "ca")
        local c = ok("return {\n  listen = { addr = '0.0.0.0:8443', tls = { cert = 'c.pem', key = 'k.pem' } },\n"
            .. "  access_log = 'logs/a.log',\n"
            .. "  upstreams = { a = { servers = { 'h:1' }, tls = { ca = 'ca.pem', verify = true } } },\n"
            .. "  routes = { { name = 'x', upstream = 'a' } } }\n")
        assert.are.same({ { addr = { host = "0.0.0.0", port = 8443 }, tls_cert = dir .. "/c.pem",
            tls_key = dir .. "/k.pem" } }, c.listen)
        assert.are.equal("file", c.access_log)
        assert.are.equal(dir .. "/logs/a.log", c.access_log_path)
        assert.are.equal(dir .. "/ca.pem", c.upstreams[1].tls_ca)
        c = ok(with_top("access_log = false"))
        assert.are.equal("off", c.access_log)
    end)

    -- Each case: a file and the one error it must produce, exactly.
    local cases = {
        { "the spec's example", with_route("retry = { attempts = 'three' }"),
            'levee.lua:4: routes[1].retry.attempts: expected integer >= 1, got "three"' },
        { "integer too small", with_route("retry = { attempts = 0 }"),
            "levee.lua:4: routes[1].retry.attempts: expected integer >= 1, got 0" },
        { "integer not whole", with_route("retry = { attempts = 1.5 }"),
            "levee.lua:4: routes[1].retry.attempts: expected integer >= 1, got 1.5" },
        { "bad duration", with_route("timeout = '2 sec'"),
            'levee.lua:4: routes[1].timeout: expected a duration like "250ms", "2s", "5m", "24h" '
            .. 'or a number of seconds, got "2 sec"' },
        { "negative duration", with_route("timeout = -1"),
            'levee.lua:4: routes[1].timeout: expected a duration like "250ms", "2s", "5m", "24h" '
            .. "or a number of seconds, got -1" },
        { "zero timeout", with_route("timeout = 0"),
            "levee.lua:4: routes[1].timeout: expected a duration > 0, got 0" },
        { "try_timeout over timeout", with_route("timeout = '1s', try_timeout = '2s'"),
            "levee.lua:4: routes[1].try_timeout: try_timeout (2s) must not be more than timeout (1s)" },
        { "bad size", with_route("retry = { buffer = '16MB' }"),
            'levee.lua:4: routes[1].retry.buffer: expected a size like "512B", "64KiB", "16MiB", '
            .. '"1GiB" or a number of bytes, got "16MB"' },
        { "size out of range", with_top("limits = { header_size = '4MiB' }"),
            'levee.lua:2: limits.header_size: expected a size between 1KiB and 1MiB, got "4MiB"' },
        { "request line over header size", with_top("limits = { header_size = '2KiB', request_line = '4KiB' }"),
            'levee.lua:2: limits.request_line: expected a size between 256B and 2KiB, got "4KiB"' },
        { "header_count range", with_top("limits = { header_count = 0 }"),
            "levee.lua:2: limits.header_count: expected integer between 1 and 10000, got 0" },
        { "unknown top-level key", with_top("lisen = {}"),
            'levee.lua:2: lisen: unknown key (did you mean "listen"?)' },
        { "unknown key without a near match", with_top("limits = { zzzzzzzz = 1 }"),
            "levee.lua:2: limits.zzzzzzzz: unknown key; expected one of: header_size, request_line, "
            .. "header_count, body_size, header_timeout, idle_timeout, send_timeout, max_connections, "
            .. "body_timeout, body_rate" },
        { "positional value in a record", with_top("limits = { '32KiB' }"),
            "levee.lua:2: limits[1]: unexpected positional value; expected one of: header_size, "
            .. "request_line, header_count, body_size, header_timeout, idle_timeout, send_timeout, "
            .. "max_connections, body_timeout, body_rate" },
        { "section of the wrong type", with_top("limits = 5"),
            "levee.lua:2: limits: expected a table, got 5" },
        { "listen port out of range", with_top("listen = { '127.0.0.1:0' }"),
            'levee.lua:2: listen[1]: expected a port between 1 and 65535, got "127.0.0.1:0"' },
        { "listen without port", with_top("listen = { 'localhost' }"),
            'levee.lua:2: listen[1]: expected "host:port" (like "127.0.0.1:8080" or "[::1]:8080"), '
            .. 'got "localhost"' },
        { "listen listed twice", with_top("listen = { 'a:1', 'a:1' }"),
            'levee.lua:2: listen[2]: address "a:1" is already listed at listen[1]' },
        { "empty listen", with_top("listen = {}"),
            "levee.lua:2: listen: expected at least one address" },
        { "TLS listener without key", with_top("listen = { { addr = 'a:1', tls = { cert = '/dev/null' } } }"),
            "levee.lua:2: listen[1].tls.key: required key is missing; expected a file path" },
        { "TLS file missing", with_top("listen = { addr = 'a:1', tls = { cert = 'nope.pem', key = '/dev/null' } }"),
            'levee.lua:2: listen.tls.cert: cannot read "nope.pem": No such file or directory' },
        { "TLS file a folder", with_top("listen = { addr = 'a:1', tls = { cert = '/', key = '/dev/null' } }"),
            'levee.lua:2: listen.tls.cert: cannot read "/": Is a directory' },
        { "admin same as listen", with_top("listen = 'a:1', admin = 'a:1'"),
            'levee.lua:2: admin: address "a:1" is also listen[1]' },
        { "admin not an address", with_top("admin = true"),
            'levee.lua:2: admin: expected "host:port" (like "127.0.0.1:8080" or "[::1]:8080"), got true' },
        { "watch not a boolean", with_top("watch = 'yes'"),
            'levee.lua:2: watch: expected true or false, got "yes"' },
        { "access_log of the wrong type", with_top("access_log = 5"),
            'levee.lua:2: access_log: expected "stdout", "stderr", a file path or false, got 5' },
        { "missing upstream", with_route("upstream = 'apx'"),
            'levee.lua:4: routes[1].upstream: no upstream named "apx" (did you mean "api"?)' },
        { "route without name", "return {\n" .. UPSTREAMS .. "  routes = {\n    { upstream = 'api' },\n  },\n}\n",
            'levee.lua:4: routes[1].name: required key is missing; expected a name of letters, '
            .. 'digits, "_", "-", ".", ":" (at most 64)' },
        { "empty route name", "return {\n" .. UPSTREAMS .. "  routes = {\n    { name = '', upstream = 'api' },\n  },\n}\n",
            'levee.lua:4: routes[1].name: expected a name of letters, digits, "_", "-", ".", ":" '
            .. '(at most 64), got ""' },
        { "duplicate route name", "return {\n" .. UPSTREAMS .. "  routes = {\n    { name = 'a', upstream = 'api' },\n"
            .. "    { name = 'a', upstream = 'api' },\n  },\n}\n",
            'levee.lua:5: routes[2].name: duplicate route name "a" (also routes[1], line 4)' },
        { "route not a table", "return {\n" .. UPSTREAMS .. "  routes = {\n    'api',\n  },\n}\n",
            'levee.lua:4: routes[1]: expected a route table { name = ..., upstream = ... }, got "api"' },
        { "routes missing", "return {\n" .. UPSTREAMS .. "}\n",
            "levee.lua:1: routes: required key is missing; expected a list of routes" },
        { "routes empty", "return {\n" .. UPSTREAMS .. "  routes = {},\n}\n",
            "levee.lua:3: routes: expected at least one route" },
        { "routes by name", "return {\n" .. UPSTREAMS .. "  routes = { api = { upstream = 'api' } },\n}\n",
            "levee.lua:3: routes.api: unexpected key in a list of routes ({ name = ..., upstream = ... })" },
        { "prefix without slash", with_route("match = { prefix = 'api' }"),
            'levee.lua:4: routes[1].match.prefix: expected a path prefix starting with "/", got "api"' },
        { "path without slash", with_route("match = { path = 'x' }"),
            'levee.lua:4: routes[1].match.path: expected a path starting with "/", got "x"' },
        { "lower-case method", with_route("match = { methods = { 'GET', 'get' } }"),
            'levee.lua:4: routes[1].match.methods[2]: expected an upper-case HTTP method name like '
            .. '"GET", got "get"' },
        { "methods not a list", with_route("match = { methods = 'GET' }"),
            'levee.lua:4: routes[1].match.methods: expected a list of method names, got "GET"' },
        { "host with port", with_route("match = { host = 'a.com:80' }"),
            'levee.lua:4: routes[1].match.host: expected a host name without port, got "a.com:80"' },
        { "unknown retry outcome", with_route("retry = { on = { 'reset', '5xy' } }"),
            'levee.lua:4: routes[1].retry.on[2]: expected "connect-failure", "reset", "timeout", '
            .. '"protocol-error", "5xx", "gateway-error", "retriable-4xx" or a status code 100-599, got "5xy"' },
        { "status out of range", with_route("retry = { on = { 600 } }"),
            'levee.lua:4: routes[1].retry.on[1]: expected "connect-failure", "reset", "timeout", '
            .. '"protocol-error", "5xx", "gateway-error", "retriable-4xx" or a status code 100-599, got 600' },
        { "bad jitter", with_route("retry = { backoff = { jitter = 'fully' } }"),
            'levee.lua:4: routes[1].retry.backoff.jitter: expected "full", "equal", "decorrelated" '
            .. 'or "none", got "fully"' },
        { "backoff max under base", with_route("retry = { backoff = { base = '2s', max = '1s' } }"),
            "levee.lua:4: routes[1].retry.backoff.max: backoff.max (1s) must not be less than "
            .. "backoff.base (2s)" },
        { "budget ratio over 1", with_route("retry = { budget = { ratio = 1.5 } }"),
            "levee.lua:4: routes[1].retry.budget.ratio: expected number between 0 and 1, got 1.5" },
        { "retry of the wrong type", with_route("retry = 3"),
            "levee.lua:4: routes[1].retry: expected a table, got 3" },
        { "breaker ratio zero", with_route("breaker = { failure_ratio = 0 }"),
            "levee.lua:4: routes[1].breaker.failure_ratio: expected number > 0 and <= 1, got 0" },
        { "max_open_for under open_for", with_route("breaker = { open_for = '10s', max_open_for = '5s' }"),
            "levee.lua:4: routes[1].breaker.max_open_for: max_open_for (5s) must not be less than "
            .. "open_for (10s)" },
        { "slow_call without duration", with_route("breaker = { slow_call = { ratio = 0.5 } }"),
            'levee.lua:4: routes[1].breaker.slow_call.duration: required key is missing; expected a '
            .. 'duration like "250ms", "2s", "5m", "24h" or a number of seconds' },
        { "store as a string", with_route("idempotency = { store = 'redis' }"),
            'levee.lua:4: routes[1].idempotency.store: expected "memory" or { redis = "host:port" }, '
            .. 'got "redis"' },
        { "redis address", with_route("idempotency = { store = { redis = 'x' } }"),
            'levee.lua:4: routes[1].idempotency.store.redis: expected "host:port" (like '
            .. '"127.0.0.1:8080" or "[::1]:8080"), got "x"' },
        { "on_conflict", with_route("idempotency = { on_conflict = 'block' }"),
            'levee.lua:4: routes[1].idempotency.on_conflict: expected "reject" or "wait", got "block"' },
        { "on_store_error", with_route("idempotency = { on_store_error = 'open' }"),
            'levee.lua:4: routes[1].idempotency.on_store_error: expected "fail_closed" or "fail_open", '
            .. 'got "open"' },
        { "no idempotent methods", with_route("idempotency = { methods = {} }"),
            "levee.lua:4: routes[1].idempotency.methods: expected at least one method name" },
        { "bad header name", with_route("idempotency = { header = 'Idem Key' }"),
            'levee.lua:4: routes[1].idempotency.header: expected a header name, got "Idem Key"' },
        { "max_memory under max_body", with_route("idempotency = { max_body = '2MiB', max_memory = '1MiB' }"),
            "levee.lua:4: routes[1].idempotency.max_memory: max_memory (1MiB) must not be less than "
            .. "max_body (2MiB)" },
        { "key not a function", with_route("idempotency = { key = 'k' }"),
            'levee.lua:4: routes[1].idempotency.key: expected a function, got "k"' },
        { "classify not a function", with_route("classify = 1"),
            "levee.lua:4: routes[1].classify: expected a function, got 1" },
        { "fallback not a function", with_route("fallback = {}"),
            "levee.lua:4: routes[1].fallback: expected a function, got a table" },
        { "upstreams as a list", "return {\n  upstreams = { { servers = { 'a:1' } } },\n"
            .. "  routes = { { name = 'r', upstream = 'api' } },\n}\n",
            "levee.lua:2: upstreams[1]: expected upstreams by name: upstreams = { api = { servers = { ... } } }",
            "levee.lua:3: routes[1].upstream: no upstream named \"api\"; upstreams is empty" },
        { "no servers", with_upstream("servers = {}"),
            "levee.lua:2: upstreams.api.servers: expected at least one server" },
        { "misspelt servers", with_upstream("server = { 'a:1' }"),
            'levee.lua:2: upstreams.api.server: unknown key (did you mean "servers"?)',
            'levee.lua:2: upstreams.api.servers: required key is missing; expected a list of "host:port"' },
        { "bad server", with_upstream("servers = { 'a:1', 'b' }"),
            'levee.lua:2: upstreams.api.servers[2]: expected "host:port" (like "127.0.0.1:8080" or '
            .. '"[::1]:8080"), got "b"' },
        { "balance", with_upstream("servers = { 'a:1' }, balance = 'random'"),
            'levee.lua:2: upstreams.api.balance: expected "round_robin" or "least_request", got "random"' },
        { "pool value", with_upstream("servers = { 'a:1' }, pool = { max_connections = 0 }"),
            "levee.lua:2: upstreams.api.pool.max_connections: expected integer >= 1, got 0" },
        { "upstream tls type", with_upstream("servers = { 'a:1' }, tls = 'yes'"),
            'levee.lua:2: upstreams.api.tls: expected true, false or a table { sni, verify, ca }, got "yes"' },
        { "upstream name", "return {\n  upstreams = { ['a b'] = { servers = { 'a:1' } } },\n"
            .. "  routes = { { name = 'r', upstream = 'a b' } },\n}\n",
            'levee.lua:2: upstreams["a b"]: expected a name of letters, digits, "_", "-", ".", ":" '
            .. '(at most 64) as the upstream name, got "a b"',
            'levee.lua:3: routes[1].upstream: no upstream named "a b"; upstreams is empty' },
    }

    for _, case in ipairs(cases) do
        it("reports " .. case[1], function()
            local want = { table.unpack(case, 3) }
            assert.are.same(want, errors_of(case[2]))
        end)
    end

    it("reports every error at once, in line order", function()
        local errs = errors_of([[
return {
  routes = {
    { name = "a", upstream = "nope",
      retry = { attempts = "three",
                backoff = { base = "fast" } } },
  },
  limits = { body_size = "huge" },
  upstreams = { api = { servers = { "h:99999" } } },
  bogus = true,
}
]])
        assert.are.same({
            'levee.lua:3: routes[1].upstream: no upstream named "nope"; upstreams: api',
            'levee.lua:4: routes[1].retry.attempts: expected integer >= 1, got "three"',
            'levee.lua:5: routes[1].retry.backoff.base: expected a duration like "250ms", "2s", '
                .. '"5m", "24h" or a number of seconds, got "fast"',
            'levee.lua:7: limits.body_size: expected a size like "512B", "64KiB", "16MiB", "1GiB" '
                .. 'or a number of bytes, got "huge"',
            'levee.lua:8: upstreams.api.servers[1]: expected a port between 1 and 65535, got "h:99999"',
            'levee.lua:9: bogus: unknown key; expected one of: listen, admin, limits, access_log, '
                .. "access_log_format, error_log, watch, drain_timeout, workers, trusted_proxies, accept, tracing, upstreams, routes",
        }, errs)
    end)

    it("finds lines of keys in top-level local tables", function()
        local errs = errors_of([[
local retry = {
  attempts = "three",
}
return {
  upstreams = { api = { servers = { "a:1" } } },
  routes = { { name = "r", upstream = "api", retry = retry } },
}
]])
        assert.are.same({ 'levee.lua:2: routes[1].retry.attempts: expected integer >= 1, got "three"' },
            errs)
    end)

    it("reports syntax errors with file and line", function()
        local errs = errors_of("return {\n  watch = true\n  routes = {},\n}\n")
        assert.are.equal(1, #errs)
        assert.matches("^levee%.lua:3: '}' expected %(to close '{' at line 1%) near 'routes'$", errs[1])
    end)

    it("names a file with a long path in full", function()
        local long = dir .. "/" .. string.rep("d", 80)
        assert(os.execute("mkdir -p '" .. long .. "'"))
        write(string.rep("d", 80) .. "/mod.lua", "local t\nreturn t.x\n")
        write(string.rep("d", 80) .. "/levee.lua", "local m = require 'mod'\nreturn {\n  watch = 1\n")
        local c, errs = config.compile(long .. "/levee.lua", LUA_DIR)
        assert.is_nil(c)
        assert.are.same({ long .. "/levee.lua:4: '}' expected (to close '{' at line 2) near <eof>" },
            errs)
        write(string.rep("d", 80) .. "/levee.lua", "local m = require 'mod'\nreturn m\n")
        c, errs = config.compile(long .. "/levee.lua", LUA_DIR)
        assert.are.same({ long .. "/mod.lua:2: attempt to index a nil value (local 't')" }, errs)
    end)

    it("reports runtime errors with file and line", function()
        assert.are.same({ "levee.lua:2: attempt to index a nil value (local 'x')" },
            errors_of("local x\nreturn x.y\n"))
        assert.are.same({ "levee.lua:1: no config for you" }, errors_of("error('no config for you')"))
        assert.are.same({ "levee.lua:1: boom" }, errors_of("error('boom', 0)"))
        assert.are.same({ "levee.lua:1: error: a table" }, errors_of("error({})"))
    end)

    it("reports errors raised inside C functions at the line of the file that called them", function()
        assert.are.same({ "levee.lua:3: bad argument #1 to 'rep' (number expected, got nil)" },
            errors_of("local t = {}\n\nlocal s = ('x'):rep(nil)\nreturn t\n"))
        assert.are.same({ "levee.lua:2: bad argument #1 to 'rep' (string expected, got no value)" },
            errors_of("local t = {}\nt.x = string.rep()\nreturn t\n"))
        assert.are.same({ "levee.lua:2: bad argument #1 to 'tostring' (value expected)" },
            errors_of("local function f()\n  return tostring()\nend\nlocal v = f()\n"))
        assert.are.same({ "levee.lua:4: bad argument #1 to 'tostring' (value expected)" },
            errors_of("local t = {}\n\n\nt.v = tostring()\nreturn t\n"))
        write("mod.lua", "local M = {}\n\nM.x = ('x'):rep(nil)\nreturn M\n")
        assert.are.same({ "mod.lua:3: bad argument #1 to 'rep' (number expected, got nil)" },
            errors_of("-- uses mod\nlocal m = require('mod')\nreturn m\n"))
    end)

    it("requires the file to return a table", function()
        assert.are.same({ "levee.lua:2: the file must return a table (return { listen = ..., "
            .. "routes = ... }), got 5" }, errors_of("-- c\nreturn 5\n"))
    end)

    it("reports a missing file", function()
        local c, errs = config.compile(dir .. "/none.lua", LUA_DIR)
        assert.is_nil(c)
        assert.are.same({ "none.lua:1: cannot read the file: No such file or directory" }, strip(errs))
    end)

    it("refuses binary chunks", function()
        local f = assert(io.open(dir .. "/levee.lua", "wb"))
        f:write(string.dump(function() return {} end))
        f:close()
        local c, errs = config.compile(dir .. "/levee.lua", LUA_DIR)
        assert.is_nil(c)
        assert.matches("attempt to load a binary chunk", errs[1])
    end)

    it("stops an endless loop, even one hidden behind pcall", function()
        local errs = errors_of("while true do pcall(function() while true do end end) end\n")
        assert.are.same({ "levee.lua:1: the configuration ran too long (an endless loop?)" }, errs)
    end)
end)

describe("examples", function()
    it("compile without errors", function()
        local examples = LUA_DIR:gsub("/lua$", "") .. "/examples"
        for _, name in ipairs({ "levee.lua", "minimal.lua" }) do
            local c, errs = config.compile(examples .. "/" .. name, LUA_DIR)
            assert.is_table(c, name .. ": " .. table.concat(errs or {}, "\n"))
        end
        local c = config.compile(examples .. "/levee.lua", LUA_DIR)
        assert.are.same({ "api", "default" }, { c.routes[1].name, c.routes[2].name })
        assert.are.equal(2, #c.upstreams[1].servers)
        assert.is_function(c.routes[1].fallback)
    end)
end)

describe("the sandbox", function()
    it("offers only the safe libraries", function()
        local c = ok([[
local seen = {
  io = io, load = load, dofile = dofile, loadfile = loadfile, require_is_fn = type(require),
  debug = debug, coroutine = coroutine, package = package, print = print,
  execute = os.execute, remove = os.remove, dump = string.dump, collectgarbage = collectgarbage,
}
assert(seen.require_is_fn == "function")
seen.require_is_fn = nil
assert(next(seen) == nil, "unexpected global " .. tostring(next(seen)))
assert(os.getenv("HOME") ~= nil or true)
assert(type(os.time()) == "number" and type(os.clock()) == "number")
assert(string.rep("a", 3) == "aaa" and ("x"):upper() == "X")
assert(math.max(1, 2) == 2 and table.concat({ "a", "b" }) == "ab" and utf8.char(65) == "A")
local n = 0
for _ in pairs({ 1, 2 }) do n = n + 1 end
assert(select("#", 1, 2) == 2 and tonumber("3") == 3 and tostring(1) == "1")
assert(pcall(error, "x") == false)
assert(getmetatable(setmetatable({}, { __index = {} })) ~= nil)
return {
  upstreams = { a = { servers = { "h:1" } } },
  routes = { { name = "r", upstream = "a" } },
}
]])
        assert.are.equal("r", c.routes[1].name)
    end)

    it("does not let a config change the loader's own libraries", function()
        ok([[string.format = nil; table.concat = nil; math.floor = nil
return { upstreams = { a = { servers = { "h:1" } } }, routes = { { name = "r", upstream = "a" } } }]])
        assert.is_function(string.format)
        assert.is_function(table.concat)
        assert.is_function(math.floor)
    end)
end)

describe("load limits", function()
    it("refuses __gc metamethods, whose finalizers would run outside every limit", function()
        local errs = errors_of("local mt = { __gc = true }\nsetmetatable({}, mt)\n" .. with_route(""))
        assert.are.same({ "levee.lua:2: setmetatable: __gc metamethods are not allowed in the "
            .. "configuration (a finalizer would run outside the load's limits)" }, errs)
        ok("setmetatable({}, { __index = {}, __close = function() end })\n" .. with_route(""))
    end)

    it("refuses tables with metatables in what the file returns, without calling them", function()
        local errs = errors_of("local methods = setmetatable({}, { __index = function() return 'GET' end })\n"
            .. "return {\n" .. UPSTREAMS .. "  routes = {\n"
            .. "    { name = 'r', upstream = 'api', match = { methods = methods } },\n  },\n}\n")
        assert.are.same({ "levee.lua:5: routes[1].match.methods: tables with metatables are not "
            .. "allowed in the configuration" }, errs)
        -- hidden behind __metatable, or on the returned table itself
        errs = errors_of("return setmetatable({}, { __metatable = false, __pairs = function() "
            .. "while true do end end })\n")
        assert.are.same({ "levee.lua:1: tables with metatables are not allowed in the configuration" },
            errs)
    end)

    it("skips xpcall message handlers once the limit is hit (Lua runs them with hooks off)", function()
        local errs = errors_of("xpcall(function() while true do end end, function() while true do end end)\n")
        assert.are.same({ "levee.lua:1: the configuration ran too long (an endless loop?)" }, errs)
        ok("assert(select(2, xpcall(error, function(e) return 'handled ' .. e end, 'x')) == 'handled x')\n"
            .. with_route(""))
    end)

    it("stops a __close handler that loops", function()
        local errs = errors_of("pcall(function()\n  local x <close> = setmetatable({}, { __close = "
            .. "function() while true do end end })\n  error('x')\nend)\n")
        assert.matches("^levee.lua:%d+: the configuration ran too long", errs[1])
    end)

    it("cuts long error messages", function()
        local errs = errors_of("error(string.rep('x', 5000))\n")
        assert.is_true(#errs[1] < 2100)
        assert.matches("^levee.lua:1: x+%.%.%.$", errs[1])
    end)
end)

describe("require", function()
    it("loads sibling modules and modules in folders, once each, and lists them", function()
        assert(os.execute("mkdir -p '" .. dir .. "/pol'"))
        write("shared.lua", "count = (count or 0) + 1\nreturn { attempts = 3 }\n")
        write("pol/init.lua", "return { ratio = 0.5 }\n")
        write("pol/extra.lua", "local s = require 'shared'\nreturn { attempts = s.attempts }\n")
        local c, files = ok([[
local shared = require "shared"
local pol = require "pol"
local extra = require "pol.extra"
assert(require("shared") == shared and count == 1)
return {
  upstreams = { a = { servers = { "h:1" } } },
  routes = { { name = "r", upstream = "a",
               retry = { attempts = extra.attempts, budget = { ratio = pol.ratio } } } },
}
]])
        assert.are.equal(3, c.routes[1].retry.attempts)
        assert.are.equal(0.5, c.routes[1].retry.budget_ratio)
        assert.are.same({ dir .. "/levee.lua", dir .. "/shared.lua", dir .. "/pol/init.lua",
            dir .. "/pol/extra.lua" }, files)
    end)

    it("searches the lua folder after the file's own", function()
        local lib = dir .. "/lib"
        assert(os.execute("mkdir -p '" .. lib .. "/acme' '" .. dir .. "/conf'"))
        local f = assert(io.open(lib .. "/acme/retry.lua", "w"))
        f:write("return { attempts = 4 }\n")
        f:close()
        local path = write("conf/levee.lua", [[
return {
  upstreams = { a = { servers = { "h:1" } } },
  routes = { { name = "r", upstream = "a", retry = require("acme.retry") } },
}
]])
        local c, files = config.compile(path, lib)
        assert.is_table(c)
        assert.are.equal(4, c.routes[1].retry.attempts)
        assert.are.same({ path, lib .. "/acme/retry.lua" }, files)
    end)

    it("refuses names that leave the folders, and reports missing modules", function()
        for _, name in ipairs({ "../x", "a/b", "", ".a", "a.", "a..b", "/etc/passwd" }) do
            local errs = errors_of("return require(" .. string.format("%q", name) .. ")\n")
            assert.are.same({ "levee.lua:1: require: bad module name " .. string.format("%q", name) },
                errs, name)
        end
        assert.are.same({ "levee.lua:1: require: bad module name 5" }, errors_of("return require(5)\n"))
        local errs = errors_of("local x = 1\nlocal m = require 'nothere'\nreturn m\n")
        assert.are.equal(1, #errs)
        assert.matches("^levee%.lua:2: module 'nothere' not found %(looked for .*nothere%.lua", errs[1])
    end)

    it("reports errors inside a module with the module's file and line", function()
        write("broken.lua", "local t = {}\nreturn t.x.y\n")
        assert.are.same({ "broken.lua:2: attempt to index a nil value (field 'x')" },
            errors_of("return require 'broken'\n"))
        write("syntax.lua", "return {\n")
        local errs = errors_of("return require 'syntax'\n")
        assert.are.same({ "syntax.lua:2: unexpected symbol near <eof>" }, errs)
    end)

    it("detects a require loop", function()
        write("a.lua", "local b = require 'b'\nreturn b\n")
        write("b.lua", "local a = require 'a'\nreturn a\n")
        assert.are.same({ "b.lua:1: require: module 'a' is being loaded (a require loop)" },
            errors_of("return require 'a'\n"))
    end)
end)

describe("dev", function()
    it("builds one upstream and a catch-all route with the default policy and a breaker", function()
        local c, files = config.dev("http://127.0.0.1:3000")
        assert.is_table(c)
        assert.are.same({}, files)
        assert.are.same({ { addr = { host = "127.0.0.1", port = 8080 } } }, c.listen)
        assert.are.equal(1, #c.upstreams)
        assert.are.equal("app", c.upstreams[1].name)
        assert.are.same({ { host = "127.0.0.1", port = 3000 } }, c.upstreams[1].servers)
        assert.are.equal(1, #c.routes)
        local r = c.routes[1]
        assert.are.equal("dev", r.name)
        assert.are.equal("app", r.upstream)
        assert.is_nil(r.match_prefix)
        assert.are.equal(2, r.retry.attempts)
        assert.is_true(r.breaker.enabled)
        assert.is_false(r.idempotency.enabled)
        assert.is_false(c.watch)
        assert.are.equal("stdout", c.access_log)
    end)

    it("accepts host:port, a bare port, https and a listen address", function()
        assert.are.same({ host = "localhost", port = 3000 },
            config.dev("localhost:3000").upstreams[1].servers[1])
        assert.are.same({ host = "127.0.0.1", port = 4000 },
            config.dev("4000").upstreams[1].servers[1])
        local c = config.dev("https://example.com/", "0.0.0.0:9000")
        assert.are.same({ host = "example.com", port = 443 }, c.upstreams[1].servers[1])
        assert.is_true(c.upstreams[1].tls)
        assert.are.equal("example.com", c.upstreams[1].tls_sni)
        assert.are.same({ host = "0.0.0.0", port = 9000 }, c.listen[1].addr)
        assert.are.same({ host = "localhost", port = 80 }, config.dev("http://localhost").upstreams[1].servers[1])
    end)

    it("rejects bad URLs and listen addresses", function()
        local c, errs = config.dev("http://a:3000/api", "x:0")
        assert.is_nil(c)
        assert.are.same({
            'levee dev: URL: expected "http://host:port" (no path), got "http://a:3000/api"',
            'levee dev: --listen: expected a port between 1 and 65535, got "x:0"',
        }, errs)
        c, errs = config.dev("ftp://a:1")
        assert.are.same({ 'levee dev: URL: expected an http:// or https:// URL, got "ftp://a:1"' }, errs)
    end)
end)

describe("keylines", function()
    it("tokenizes comments, strings, numbers, names and operators with lines", function()
        local toks = keylines.tokenize("--[==[ a\nb ]==] x = 'a\\\nb' .. [[\nc\nd]] -- t\n"
            .. "y = 0x1F + 1e3 + .5 ~= \"q\\u{41}\\z\n   r\"\n")
        local got = {}
        for _, t in ipairs(toks) do
            got[#got + 1] = t.type .. ":" .. tostring(t.value) .. "@" .. t.line
        end
        assert.are.same({ "name:x@2", "op:=@2", "string:a\nb@2", "op:..@3", "string:c\nd@3",
            "name:y@6", "op:=@6", "number:31@6", "op:+@6", "number:1000.0@6", "op:+@6",
            "number:0.5@6", "op:~=@6", 'string:qAr@6', "eof:@8" }, got)
    end)

    it("maps key paths of the returned table to lines", function()
        local map = keylines.scan([[
-- header { not = "a table" }
return {
  listen = { "a:1",
    { addr = "b:2" } },
  upstreams = { ["my-api"] = { servers = { "x:1" } } },
  routes = {
    { name = "a", s = [=[
}}}]=], classify = function(a) local x, y = 1, 2; if x then return "ok" end end,
      retry = { attempts = 3 } },
    { name = "b", [3] = true },
  },
}
]])
        assert.are.equal(2, map[""])
        assert.are.equal(3, map["listen"])
        assert.are.equal(3, map["listen[1]"])
        assert.are.equal(4, map["listen[2]"])
        assert.are.equal(4, map["listen[2].addr"])
        assert.are.equal(5, map['upstreams["my-api"].servers[1]'])
        assert.are.equal(7, map["routes[1]"])
        assert.are.equal(7, map["routes[1].s"])
        assert.are.equal(8, map["routes[1].classify"])
        assert.are.equal(9, map["routes[1].retry.attempts"])
        assert.are.equal(10, map["routes[2].name"])
        assert.are.equal(10, map["routes[2][3]"])
        assert.is_nil(map["routes[3]"])
        assert.is_nil(map["not"])
    end)

    it("follows top-level locals and table-call helpers", function()
        local map = keylines.scan([[
local b = {
  attempts = 1,
}
local function route(t) return t end
return {
  retry = b,
  routes = { route {
    name = "x" } },
}
]])
        assert.are.equal(2, map["retry.attempts"])
        assert.are.equal(8, map["routes[1].name"])
    end)

    it("falls back to the longest known prefix, then line 1", function()
        local map = keylines.scan("\n\nreturn {\n  a = {\n    b = 1 } }\n")
        assert.are.equal(5, keylines.line(map, "a.b"))
        assert.are.equal(4, keylines.line(map, "a.c.d[2]"))
        assert.are.equal(3, keylines.line(map, "zz"))
        assert.are.equal(1, keylines.line({}, "a.b"))
    end)

    it("joins and splits paths", function()
        assert.are.equal("a", keylines.join("", "a"))
        assert.are.equal("a[1]", keylines.join("a", 1))
        assert.are.equal("a.b", keylines.join("a", "b"))
        assert.are.equal('a["x-y"]', keylines.join("a", "x-y"))
        assert.are.equal('a["end"]', keylines.join("a", "end"))
        assert.are.equal("a.b", keylines.parent("a.b[2]"))
        assert.are.equal("a", keylines.parent('a["x-y"]'))
        assert.are.equal("", keylines.parent("a"))
        assert.is_nil(keylines.parent(""))
    end)

    it("survives unfinished input", function()
        for _, src in ipairs({ "return { a = 'x", "return { a = [[x", "--[[ x", "return { a = {",
            "return { [", "return" }) do
            assert.is_table(keylines.scan(src))
        end
    end)
end)

describe("warnings", function()
    local function warnings_of(text, checks)
        local c, errs = config.compile(write("levee.lua", text), LUA_DIR, checks)
        if not c then
            error("unexpected errors:\n" .. table.concat(strip(errs), "\n"))
        end
        return strip(c.warnings)
    end

    it("are empty for a clean file", function()
        assert.are.same({}, warnings_of(with_route("timeout = 999, try_timeout = '500ms'")))
    end)

    it("flag a bare number of 1000 or more for a duration", function()
        assert.are.same({
            'levee.lua:4: warning: routes[1].timeout: a bare number is seconds: 5000 is 1h23m20s; '
                .. 'write "5000ms" if milliseconds were meant',
        }, warnings_of(with_route("timeout = 5000")))
        assert.are.same({
            'levee.lua:2: warning: drain_timeout: a bare number is seconds: 1000 is 16m40s; '
                .. 'write "1000ms" if milliseconds were meant',
        }, warnings_of(with_top("drain_timeout = 1000")))
        assert.are.same({}, warnings_of(with_top("drain_timeout = '5000ms'")))
    end)

    it("flag a route an earlier route always matches first", function()
        local text = [[
return {
  upstreams = { api = { servers = { "127.0.0.1:9000" } } },
  routes = {
    { name = "api", match = { prefix = "/api" }, upstream = "api" },
    { name = "v1", match = { prefix = "/api/v1" }, upstream = "api" },
    { name = "login", match = { path = "/api/login", methods = { "POST" } }, upstream = "api" },
    { name = "other-host", match = { host = "b.example", prefix = "/" }, upstream = "api" },
    { name = "b-api", match = { host = "b.example", prefix = "/api/x" }, upstream = "api" },
    { name = "gets", match = { methods = { "GET" } }, upstream = "api" },
    { name = "get-head", match = { methods = { "GET", "HEAD" } }, upstream = "api" },
    { name = "apix", match = { prefix = "/apix" }, upstream = "api" },
    { name = "all", upstream = "api" },
    { name = "late", match = { path = "/z" }, upstream = "api" },
  },
}
]]
        assert.are.same({
            'levee.lua:5: warning: routes[2]: never matches: route "api" (line 4) before it '
                .. "matches every request it would",
            'levee.lua:6: warning: routes[3]: never matches: route "api" (line 4) before it '
                .. "matches every request it would",
            'levee.lua:8: warning: routes[5]: never matches: route "api" (line 4) before it '
                .. "matches every request it would",
            'levee.lua:11: warning: routes[8]: never matches: route "api" (line 4) before it '
                .. "matches every request it would",
            'levee.lua:13: warning: routes[10]: never matches: route "all" (line 12) before it '
                .. "matches every request it would",
        }, warnings_of(text))
    end)

    it("flag an upstream no route uses", function()
        assert.are.same({ "levee.lua:4: warning: upstreams.spare: no route uses this upstream" },
            warnings_of("return {\n  upstreams = {\n    api = { servers = { '127.0.0.1:9000' } },\n"
                .. "    spare = { servers = { '127.0.0.1:9001' } },\n  },\n"
                .. "  routes = { { name = 'r', upstream = 'api' } },\n}\n"))
    end)

    it("flag retrying non-idempotent requests on 5xx", function()
        local w = "levee.lua:4: warning: routes[1].retry.non_idempotent: retries non-idempotent "
            .. "requests on 5xx responses: the upstream may have acted before failing, so a retry "
            .. "can repeat it"
        assert.are.same({ w }, warnings_of(with_route("retry = { non_idempotent = true, on = { 'reset', 503 } }")))
        assert.are.same({ w }, warnings_of(with_route("retry = { non_idempotent = true, on = { '5xx' } }")))
        assert.are.same({}, warnings_of(with_route("retry = { non_idempotent = true, on = { 'reset', 429 } }")))
        assert.are.same({}, warnings_of(with_route("retry = { on = { 'gateway-error' } }")))
    end)

    it("come before the errors with levee check's checks, which check the files named", function()
        local seen = {}
        local checks = { check = {
            tls_pair = function(cert, key)
                seen[#seen + 1] = cert .. " " .. key
                return "the private key does not match the certificate"
            end,
            dir_writable = function(d)
                return "folder " .. d .. " does not exist"
            end,
        } }
        write("cert.pem", "c")
        write("key.pem", "k")
        local text = [[
return {
  listen = { addr = "127.0.0.1:8443", tls = { cert = "cert.pem", key = "key.pem" } },
  access_log = "logs/access.log",
  upstreams = { api = { servers = { "127.0.0.1:9000" } } },
  routes = { { name = "r", upstream = "api", timeout = 3000, try_timeout = "x" } },
}
]]
        local c, errs = config.compile(write("levee.lua", text), LUA_DIR, checks)
        assert.is_nil(c)
        assert.are.same({
            'levee.lua:5: warning: routes[1].timeout: a bare number is seconds: 3000 is 50m; '
                .. 'write "3000ms" if milliseconds were meant',
            "levee.lua:2: listen.tls.key: the private key does not match the certificate",
            'levee.lua:3: access_log: cannot write "logs/access.log": folder logs does not exist',
            'levee.lua:5: routes[1].try_timeout: expected a duration like "250ms", "2s", "5m", '
                .. '"24h" or a number of seconds, got "x"',
        }, strip(errs))
        assert.are.same({ dir .. "/cert.pem " .. dir .. "/key.pem" }, seen)
    end)
end)
