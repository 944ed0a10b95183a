-- Unit specs for lua/levee/policy.lua: the helpers hooks call. Attempts are plain tables
-- shaped like the ones levee builds (see core/script/hooks.h).

local policy = require("levee.policy")

-- Sun, 06 Nov 1994 08:49:37 GMT, the example date of RFC 9110.
local NOW = 784111777

local function attempt(status, headers)
    return { status = status, headers = headers or {}, number = 1, route = "r",
        duration = 0.01, request = { method = "GET", path = "/", headers = {} } }
end

local function failed(err)
    return { error = err, headers = {}, number = 1, route = "r", duration = 0.01,
        request = { method = "GET", path = "/", headers = {} } }
end

describe("levee.policy", function()
    describe("header", function()
        it("finds lower-case names whatever case is asked", function()
            local a = attempt(200, { ["retry-after"] = "5", ["content-type"] = "text/plain" })
            assert.equal("5", policy.header(a, "Retry-After"))
            assert.equal("text/plain", policy.header(a, "CONTENT-TYPE"))
        end)

        it("finds names of any case in a hand-made table", function()
            local a = attempt(200, { ["X-Thing"] = "yes" })
            assert.equal("yes", policy.header(a, "x-thing"))
            assert.equal("yes", policy.header(a, "X-THING"))
        end)

        it("is nil when absent, without headers, or for an error attempt", function()
            assert.is_nil(policy.header(attempt(200, { a = "1" }), "b"))
            assert.is_nil(policy.header({ status = 200 }, "a"))
            assert.is_nil(policy.header(failed("reset"), "retry-after"))
            assert.is_nil(policy.header(nil, "a"))
            assert.is_nil(policy.header(attempt(200, { a = "1" }), nil))
        end)
    end)

    describe("status helpers", function()
        it("classes statuses", function()
            assert.equal("1xx", policy.status_class(attempt(101)))
            assert.equal("2xx", policy.status_class(attempt(200)))
            assert.equal("2xx", policy.status_class(attempt(299)))
            assert.equal("3xx", policy.status_class(attempt(304)))
            assert.equal("4xx", policy.status_class(attempt(404)))
            assert.equal("5xx", policy.status_class(attempt(503)))
            assert.is_nil(policy.status_class(failed("timeout")))
        end)

        it("tells 4xx and 5xx apart, and neither for errors", function()
            assert.is_true(policy.is_5xx(attempt(500)))
            assert.is_true(policy.is_5xx(attempt(599)))
            assert.is_false(policy.is_5xx(attempt(499)))
            assert.is_false(policy.is_5xx(attempt(200)))
            assert.is_true(policy.is_4xx(attempt(400)))
            assert.is_true(policy.is_4xx(attempt(429)))
            assert.is_false(policy.is_4xx(attempt(500)))
            assert.is_false(policy.is_4xx(attempt(399)))
            assert.is_false(policy.is_5xx(failed("connect-failure")))
            assert.is_false(policy.is_4xx(failed("connect-failure")))
        end)
    end)

    describe("retry_after", function()
        local function ra(v, now)
            return policy.retry_after(attempt(503, { ["retry-after"] = v }), now or NOW)
        end

        it("reads delay-seconds", function()
            assert.equal(120, ra("120"))
            assert.equal(0, ra("0"))
            assert.equal(3, ra(" 3\t"))
            assert.equal(policy.MAX_DELAY, ra("99999999999"))
        end)

        it("reads the three HTTP-date formats", function()
            assert.equal(60, ra("Sun, 06 Nov 1994 08:50:37 GMT"))
            assert.equal(60, ra("Sunday, 06-Nov-94 08:50:37 GMT"))
            assert.equal(60, ra("Sun Nov  6 08:50:37 1994"))
            assert.equal(86399, ra("Mon, 07 Nov 1994 08:49:36 GMT"))
        end)

        it("gives 0 for a date in the past and caps far dates", function()
            assert.equal(0, ra("Sat, 05 Nov 1994 08:49:37 GMT"))
            assert.equal(policy.MAX_DELAY, ra("Fri, 01 Jan 2100 00:00:00 GMT"))
        end)

        it("handles leap days and month ends", function()
            local feb29 = 951782400 -- Tue, 29 Feb 2000 00:00:00 GMT
            assert.equal(10, ra("Tue, 29 Feb 2000 00:00:10 GMT", feb29))
            assert.equal(86400, ra("Wed, 01 Mar 2000 00:00:00 GMT", feb29))
            assert.is_nil(ra("Thu, 29 Feb 2001 00:00:00 GMT", feb29))
            assert.is_nil(ra("Mon, 31 Apr 2000 00:00:00 GMT", feb29))
        end)

        it("reads RFC 850 two-digit years as the nearest past century", function()
            local y2020 = 1577836800 -- 2020-01-01
            -- "69" is 2069 (within 50 years), "71" is 1971 (2071 is more than 50 ahead)
            assert.equal(policy.MAX_DELAY, ra("Tuesday, 01-Jan-69 00:00:00 GMT", y2020))
            assert.equal(0, ra("Friday, 01-Jan-71 00:00:00 GMT", y2020))
        end)

        it("is nil when absent or malformed", function()
            assert.is_nil(policy.retry_after(attempt(503), NOW))
            assert.is_nil(policy.retry_after(failed("reset"), NOW))
            for _, v in ipairs({ "", "soon", "-1", "1.5", "0x10", "5 s",
                "Sun, 06 Nov 1994 08:49:37 UTC", "Sun, 06 Nov 1994 25:00:00 GMT",
                "Sun, 32 Nov 1994 08:49:37 GMT", "Xyz, 06 Nov 1994 08:49:37 GMT",
                "Sun, 06 Foo 1994 08:49:37 GMT", "Sun, 6 Nov 1994 08:49:37 GMT" }) do
                assert.is_nil(ra(v), v)
            end
        end)

        it("uses the current time by default", function()
            local later = os.time() + 3600
            local d = policy.retry_after(attempt(503, { ["retry-after"] =
                os.date("!%a, %d %b %Y %H:%M:%S GMT", later) }))
            assert.is_true(d >= 3590 and d <= 3600, tostring(d))
        end)
    end)

    describe("classify", function()
        it("retries 503 and 429, with Retry-After when given", function()
            local v, d = policy.classify(attempt(503, { ["retry-after"] = "7" }))
            assert.equal("retry", v)
            assert.equal(7, d)
            v, d = policy.classify(attempt(429))
            assert.equal("retry", v)
            assert.is_nil(d)
        end)

        it("leaves everything else to the default classification", function()
            for _, s in ipairs({ 200, 404, 500, 502, 504 }) do
                assert.is_nil(policy.classify(attempt(s)), tostring(s))
            end
            assert.is_nil(policy.classify(failed("connect-failure")))
            assert.is_nil(policy.classify(failed("timeout")))
        end)
    end)

    it("keeps working in a sandbox with only what the config sandbox offers", function()
        local env = { string = string, math = math, table = table, type = type, pairs = pairs,
            tonumber = tonumber, os = { time = os.time } }
        local path = package.searchpath("levee.policy", package.path)
        local f = assert(io.open(path))
        local src = f:read("a")
        f:close()
        local chunk = assert(load(src, "@policy.lua", "t", env))
        local p = chunk()
        assert.equal("retry", (p.classify(attempt(503))))
        assert.equal(60, p.retry_after(attempt(503, { ["retry-after"] = "60" })))
    end)
end)
