-- Policy tests for read-heavy.lua, run offline with `levee test` (README "Testing your policies").
local testing = require("levee.testing")

describe("read-heavy.lua, route reads", function()
  local gw
  before_each(function() gw = testing.load("read-heavy.lua") end)

  it("retries 5xx, resets and timeouts with backoff", function()
    local r = gw:request{ path = "/api/items/1", upstream = { 500, "timeout", 200 } }
    assert.equal("reads", r.route)
    assert.equal(200, r.status)
    assert.is_true(r.attempts[1].delay <= 50)
    assert.equal(800, r.attempts[2].time) -- try_timeout
    assert.is_true(r.attempts[2].delay <= 100)
  end)

  it("classify: waits a short Retry-After as told", function()
    local r = gw:request{ path = "/api/items/1",
                          upstream = { { status = 503, headers = { ["Retry-After"] = "1" } }, 200 } }
    assert.equal(200, r.status)
    assert.equal(1000, r.attempts[1].delay)
  end)

  it("classify: gives up at once on a Retry-After longer than a second", function()
    local r = gw:request{ path = "/api/items/1",
                          upstream = { { status = 429, headers = { ["Retry-After"] = "30" } } } }
    assert.equal(429, r.status)
    assert.equal("fail", r.attempts[1].verdict)
    assert.equal("verdict", r.retry_stop)
    assert.equal("30", r.headers["retry-after"])
  end)

  it("classify: asks again after 50ms when a cache node is warming", function()
    local r = gw:request{ path = "/api/items/1", upstream = {
      { status = 404, headers = { ["X-Cache-Status"] = "warming" } }, 200 } }
    assert.equal(200, r.status)
    assert.equal(50, r.attempts[1].delay)
    -- an ordinary 404 is an answer
    r = gw:request{ path = "/api/items/1", upstream = { 404 } }
    assert.equal(404, r.status)
    assert.equal("ok", r.attempts[1].verdict)
    assert.equal("verdict", r.retry_stop) -- "success" is for statuses below 400
  end)

  it("opens the breaker after 20 failures in a row; 3 probes must succeed to close it", function()
    for _ = 1, 7 do gw:request{ path = "/api/x", upstream = { 500, 500, 500 } } end
    assert.equal("open", gw:route("reads").breaker)
    local r = gw:request{ path = "/api/x", upstream = {} }
    assert.equal(503, r.status)
    assert.is_true(r.flags.fallback)
    assert.equal('{"degraded":true,"reason":"breaker-open"}', r.body)
    gw:advance("5s")
    for i = 1, 3 do
      assert.equal("half-open", gw:route("reads").breaker)
      assert.equal(200, gw:request{ path = "/api/x", upstream = { 200 } }.status, "probe " .. i)
    end
    assert.equal("closed", gw:route("reads").breaker)
  end)

  it("the retry budget caps retries at 20% of requests plus 5/s over 10s", function()
    local exhausted
    for i = 1, 300 do
      -- one retried request in three: few enough failures to keep the breaker closed
      local r = gw:request{ path = "/api/x", upstream = { "reset", 200 } }
      if r.flags["budget-exhausted"] then
        exhausted = i
        assert.equal(502, r.status)
        assert.equal("budget", r.retry_stop)
        break
      end
      gw:request{ path = "/api/x", upstream = { 200 } }
      gw:request{ path = "/api/x", upstream = { 200 } }
    end
    assert.is_not_nil(exhausted)
    local b = gw:route("reads").budget
    assert.equal(math.floor(0.2 * b.requests + 5 * 10), b.retries)
    assert.is_false(b.allowed)
    assert.equal("closed", gw:route("reads").breaker)
  end)

  it("a reset on every other attempt opens the breaker once 50 attempts are in the window", function()
    -- failure_ratio 0.5 over min_requests 50: the breaker counts attempts, not requests
    for _ = 1, 24 do gw:request{ path = "/api/x", upstream = { "reset", 200 } } end
    assert.equal("closed", gw:route("reads").breaker)
    gw:request{ path = "/api/x", upstream = { "reset", 200 } }
    assert.equal("open", gw:route("reads").breaker)
  end)
end)

describe("read-heavy.lua, route writes", function()
  it("does not retry a POST after it reached the service", function()
    local gw = testing.load("read-heavy.lua")
    local r = gw:request{ method = "POST", path = "/api/items", upstream = { "reset" } }
    assert.equal("writes", r.route)
    assert.equal(502, r.status)
    assert.equal("not-replayable", r.retry_stop)
  end)
end)
