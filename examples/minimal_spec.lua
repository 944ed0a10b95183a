-- Policy tests for minimal.lua: levee's default policy (README "Testing your policies").
local testing = require("levee.testing")

describe("minimal.lua", function()
  local gw
  before_each(function() gw = testing.load("minimal.lua") end)

  it("retries a connect-failure or a reset once", function()
    local r = gw:request{ path = "/anything", upstream = { "reset", 200 } }
    assert.equal("all", r.route)
    assert.equal(200, r.status)
    r = gw:request{ path = "/anything", upstream = { "reset", "reset" } }
    assert.equal(502, r.status)
    assert.equal("upstream-reset", r.error)
    assert.equal("attempts", r.retry_stop)
  end)

  it("passes a 503 through: no status is retried by default", function()
    local r = gw:request{ path = "/", upstream = { 503 } }
    assert.equal(503, r.status)
    assert.equal(1, #r.attempts)
  end)
end)
