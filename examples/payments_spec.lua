-- Policy tests for payments.lua, run offline with `levee test` (README "Testing your policies"):
-- no upstream, no sockets, and the clock is virtual, so backoff and open breakers cost no time.
local testing = require("levee.testing")

local n = 0
local function key() -- a fresh Idempotency-Key per request
  n = n + 1
  return { ["Idempotency-Key"] = "charge-" .. n }
end

local function charge(gw, upstream, headers, body)
  return gw:request{ method = "POST", path = "/v1/payments", headers = headers or key(),
                     body = body or '{"amount":100}', upstream = upstream }
end

describe("payments.lua, payments-write (POST /v1/payments)", function()
  local gw
  before_each(function() gw = testing.load("payments.lua") end)

  it("refuses a POST without an Idempotency-Key, without asking the service", function()
    local r = gw:request{ method = "POST", path = "/v1/payments", upstream = {} }
    assert.equal(400, r.status)
    assert.equal("idempotency-key-required", r.error)
    assert.same({}, r.attempts)
  end)

  it("retries a 503 once, then succeeds", function()
    local r = charge(gw, { 503, 201 })
    assert.equal("payments-write", r.route)
    assert.equal(201, r.status)
    assert.equal(2, #r.attempts)
    assert.equal("retry", r.attempts[1].verdict)
    assert.is_true(r.attempts[1].delay <= 100) -- full jitter within the 100ms base
    assert.is_true(r.flags.retried)
    assert.equal("success", r.retry_stop)
  end)

  it("makes two attempts at most", function()
    local r = charge(gw, { 503, 503 })
    assert.equal(503, r.status)
    assert.equal("attempts", r.retry_stop)
  end)

  it("never retries a reset or a timeout: the charge may have happened", function()
    local r = charge(gw, { "reset" })
    assert.equal(502, r.status)
    assert.equal("upstream-reset", r.error)
    assert.equal("fail", r.attempts[1].verdict)
    assert.equal("verdict", r.retry_stop)
    r = charge(gw, { "timeout" })
    assert.equal(504, r.status)
    assert.equal(2000, r.attempts[1].time) -- a timeout takes try_timeout
  end)

  it("retries a refused connection (nothing reached the service)", function()
    local r = charge(gw, { "connect-failure", 201 })
    assert.equal(201, r.status)
  end)

  it("waits as told by Retry-After when the deadline leaves room", function()
    local t0 = gw:now()
    local r = charge(gw, { { status = 503, headers = { ["Retry-After"] = "1" } }, 201 })
    assert.equal(201, r.status)
    assert.equal(1000, r.attempts[1].delay)
    assert.equal(t0 + 1000, gw:now())
  end)

  it("answers at once when Retry-After does not fit the 3s deadline", function()
    local r = charge(gw, { { status = 429, headers = { ["Retry-After"] = "5" } } })
    assert.equal(429, r.status)
    assert.equal("deadline", r.retry_stop)
    assert.equal(1, #r.attempts)
  end)

  it("replays the stored response for a repeated key, without asking the service", function()
    local k = key()
    local first = charge(gw, { { status = 201, body = '{"id":"pay_1"}' } }, k)
    assert.equal(201, first.status)
    local again = charge(gw, {}, k)
    assert.equal(201, again.status)
    assert.equal('{"id":"pay_1"}', again.body)
    assert.is_true(again.flags["idempotent-replay"])
    assert.equal("true", again.headers["idempotent-replayed"])
    assert.equal(1, gw:route("payments-write").idempotency_keys)
    -- another body with the same key is refused
    local other = charge(gw, {}, k, '{"amount":999}')
    assert.equal(422, other.status)
    assert.equal("idempotency-mismatch", other.error)
    -- the key is kept for 24h, then the request goes to the service again
    gw:advance("24h")
    assert.equal(201, charge(gw, { 201 }, k).status)
  end)

  it("does not store a 5xx: the client may try the key again", function()
    local k = key()
    assert.equal(500, charge(gw, { 500 }, k).status)
    assert.equal(200, charge(gw, { 200 }, k).status)
  end)

  it("opens the breaker after 5 failures in a row; the fallback answers; a probe closes it", function()
    for _ = 1, 5 do charge(gw, { "reset" }) end
    assert.equal("open", gw:route("payments-write").breaker)
    local r = charge(gw, {}) -- no attempt: nothing scripted is needed
    assert.equal(503, r.status)
    assert.is_true(r.flags.fallback)
    assert.equal("breaker-open", r.retry_stop)
    assert.equal("5", r.headers["retry-after"])
    assert.matches('"error":"payments_unavailable"', r.body, 1, true)
    gw:advance("10s")
    assert.equal("half-open", gw:route("payments-write").breaker)
    -- a failed probe opens it again for twice as long
    charge(gw, { 500 })
    assert.equal("open", gw:route("payments-write").breaker)
    assert.equal(20000, gw:route("payments-write").breaker_stats.open_for)
    gw:advance("20s")
    assert.equal(201, charge(gw, { 201 }).status)
    assert.equal("closed", gw:route("payments-write").breaker)
  end)
end)

describe("payments.lua, payments-read (GET /v1/payments)", function()
  local gw
  before_each(function() gw = testing.load("payments.lua") end)

  it("retries resets, timeouts and 5xx gateway errors, up to 3 attempts", function()
    local r = gw:request{ path = "/v1/payments/p1", upstream = { "reset", "timeout", 200 } }
    assert.equal("payments-read", r.route)
    assert.equal(200, r.status)
    assert.equal(700, r.attempts[2].time) -- try_timeout
    r = gw:request{ path = "/v1/payments/p1", upstream = { 502, 503, 504 } }
    assert.equal(504, r.status)
    assert.equal("attempts", r.retry_stop)
  end)

  it("stops at the 2s deadline", function()
    local r = gw:request{ path = "/v1/payments/p1", upstream = { "timeout", "timeout", "timeout" } }
    assert.equal(504, r.status)
    assert.equal("deadline-exceeded", r.error)
    assert.is_true(r.flags["deadline-exceeded"])
    assert.equal("deadline", r.retry_stop)
    assert.is_true(r.duration <= 2000)
  end)

  it("does not retry a 500", function()
    local r = gw:request{ path = "/v1/payments/p1", upstream = { 500 } }
    assert.equal(500, r.status)
    assert.equal("verdict", r.retry_stop)
  end)
end)

describe("payments.lua, default route", function()
  it("keeps levee's default retry budget: 20% of requests plus 10/s over 10s", function()
    local gw = testing.load("payments.lua")
    local exhausted_at
    for i = 1, 200 do
      local r = gw:request{ path = "/healthz", upstream = { "reset", 200 } }
      if r.flags["budget-exhausted"] then
        exhausted_at = i
        assert.equal(502, r.status)
        assert.equal("budget", r.retry_stop)
        break
      end
    end
    -- retries + 1 <= 0.2 x requests + 10 x 10: the 126th request finds it spent
    assert.equal(126, exhausted_at)
    assert.is_false(gw:route("default").budget.allowed)
    gw:advance("10s")
    assert.is_true(gw:route("default").budget.allowed)
  end)
end)
