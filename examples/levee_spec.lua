-- Policy tests for levee.lua, run offline with `levee test` (README "Testing your policies").
local testing = require("levee.testing")

describe("levee.lua, route api", function()
  local gw
  before_each(function() gw = testing.load("levee.lua") end)

  it("retries gateway errors and resets up to 3 attempts, with backoff", function()
    local r = gw:request{ path = "/api/users", upstream = { 502, "reset", 200 } }
    assert.equal("api", r.route)
    assert.equal(200, r.status)
    assert.equal(3, #r.attempts)
    assert.equal("502", r.attempts[1].outcome)
    assert.is_true(r.attempts[1].delay <= 25)  -- full jitter, base 25ms
    assert.is_true(r.attempts[2].delay <= 50)  -- then twice that
    assert.is_nil(r.attempts[3].delay)
    assert.same({ "retried" }, { table.unpack(r.flags) })
  end)

  it("gives the client the last answer once the attempts are used", function()
    local r = gw:request{ path = "/api/users", upstream = { 503, 503, 503 } }
    assert.equal(503, r.status)
    assert.equal("attempts", r.retry_stop)
  end)

  it("does not retry a 500 (not in retry.on)", function()
    local r = gw:request{ path = "/api/users", upstream = { 500 } }
    assert.equal(500, r.status)
    assert.equal("fail", r.attempts[1].verdict)
  end)

  it("does not replay a POST without an idempotency key; does with one", function()
    local r = gw:request{ method = "POST", path = "/api/orders", upstream = { 503 } }
    assert.equal(503, r.status)
    assert.equal("not-replayable", r.retry_stop)
    r = gw:request{ method = "POST", path = "/api/orders", headers = { ["Idempotency-Key"] = "o-1" },
                    upstream = { 503, 201 } }
    assert.equal(201, r.status)
    -- and the repeat is answered from the store
    r = gw:request{ method = "POST", path = "/api/orders", headers = { ["Idempotency-Key"] = "o-1" },
                    upstream = {} }
    assert.equal(201, r.status)
    assert.is_true(r.flags["idempotent-replay"])
  end)

  it("opens the breaker after 5 failed attempts; the fallback answers until open_for passes", function()
    gw:request{ path = "/api/a", upstream = { "reset", "reset", "reset" } }
    local r = gw:request{ path = "/api/a", upstream = { "reset", "reset", "reset" } }
    -- the 5th failure opened it: the retry after it was refused
    assert.equal("breaker-open", r.retry_stop)
    assert.equal(2, #r.attempts)
    assert.equal("open", gw:route("api").breaker)
    r = gw:request{ path = "/api/a", upstream = {} }
    assert.equal(503, r.status)
    assert.is_true(r.flags.fallback)
    assert.matches("resting", r.body)
    gw:advance("5s")
    assert.equal("half-open", gw:route("api").breaker)
    assert.equal(200, gw:request{ path = "/api/a", upstream = { 200 } }.status)
    assert.equal("closed", gw:route("api").breaker)
  end)
end)

describe("levee.lua, route default", function()
  it("retries connect-failure and reset once, nothing else", function()
    local gw = testing.load("levee.lua")
    assert.equal(200, gw:request{ path = "/", upstream = { "connect-failure", 200 } }.status)
    local r = gw:request{ path = "/", upstream = { "connect-failure", "connect-failure" } }
    assert.equal(502, r.status)
    assert.equal("connect-failure", r.error)
    r = gw:request{ path = "/", upstream = { 503 } }
    assert.equal(503, r.status)
    assert.equal("default", r.route)
    assert.is_nil(gw:route("default").breaker) -- no breaker table
  end)
end)
