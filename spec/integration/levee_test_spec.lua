-- `levee test` on the real binary (README "Testing your policies"): busted specs using
-- require("levee.testing"), exit codes 0/1/2, configuration errors as FILE:LINE, the virtual
-- clock (seconds of backoff in no time) and the discovery of *_spec.lua files.
local H = require("helpers")

local CONF = [[
return {
  upstreams = { app = { servers = { "127.0.0.1:9" } } },
  routes = {
    { name = "slow", match = { prefix = "/slow" }, upstream = "app", timeout = "60s",
      retry = { attempts = 4, on = { "503" },
                backoff = { base = "2s", max = "30s", jitter = "none" } } },
    { name = "all", upstream = "app" },
  },
}
]]

local PASSING = [[
local testing = require("levee.testing")
describe("policy", function()
  it("retries 503 with 2s, 4s, 8s of backoff, on the virtual clock", function()
    local gw = testing.load("levee.lua")
    local r = gw:request{ path = "/slow/x", upstream = { 503, 503, 503, 200 } }
    assert.equal(200, r.status)
    assert.equal(2000, r.attempts[1].delay)
    assert.equal(4000, r.attempts[2].delay)
    assert.equal(8000, r.attempts[3].delay)
    assert.equal(14000, gw:now())
  end)
end)
]]

local FAILING = [[
local testing = require("levee.testing")
describe("policy", function()
  it("expects a retry the default route does not make", function()
    local gw = testing.load("levee.lua")
    local r = gw:request{ path = "/", upstream = { 503, 200 } }
    assert.equal(200, r.status)
  end)
end)
]]

local function setup_dir(files)
    local dir = H.tmpdir()
    H.write_file(dir .. "/levee.lua", CONF)
    for name, text in pairs(files) do H.write_file(dir .. "/" .. name, text) end
    return dir
end

describe("levee test", function()
    after_each(H.cleanup)

    it("exits 0 when every spec passes, and takes no real time for seconds of backoff", function()
        local dir = setup_dir({ ["policy_spec.lua"] = PASSING })
        -- 14 s of backoff on the virtual clock; the whole run (process, load) well under 1 s.
        -- The best of up to three runs: a shared machine may stall one, never sleep 14 s.
        local best = math.huge
        for _ = 1, 3 do
            local t0 = H.now()
            local code, out, err = H.run_levee({ "test", "policy_spec.lua" }, { cwd = dir })
            best = math.min(best, H.now() - t0)
            assert.equal(0, code, out .. err)
            assert.matches("1 success / 0 failures / 0 errors", out, 1, true)
            if best < 1 then break end
        end
        assert.is_true(best < 1, "took " .. best .. " s")
    end)

    it("exits 1 and prints the failure when a spec fails", function()
        local dir = setup_dir({ ["policy_spec.lua"] = FAILING })
        local code, out = H.run_levee({ "test", "policy_spec.lua" }, { cwd = dir })
        assert.equal(1, code)
        assert.matches("0 successes / 1 failure", out, 1, true)
        assert.matches("expects a retry the default route does not make", out, 1, true)
        assert.matches("policy_spec.lua:6: Expected objects to be equal.", out, 1, true)
    end)

    it("reports a bad configuration in testing.load with its FILE:LINE error", function()
        local dir = setup_dir({
            ["bad.lua"] = 'return {\n  upstreams = { app = { servers = { "127.0.0.1:9" } } },\n'
                .. '  routes = { { name = "r", upstream = "app",\n    retry = { attempts = 0 } } },\n}\n',
            ["bad_spec.lua"] = 'local testing = require("levee.testing")\n'
                .. 'it("loads", function()\n  testing.load("bad.lua")\nend)\n',
        })
        local code, out = H.run_levee({ "test", "bad_spec.lua" }, { cwd = dir })
        assert.equal(1, code)
        assert.matches("bad_spec.lua:3: testing.load: bad.lua is not a valid configuration", out,
            1, true)
        assert.matches("bad.lua:4: routes[1].retry.attempts", out, 1, true)
    end)

    it("says which attempt ran out of scripted outcomes", function()
        local dir = setup_dir({
            ["short_spec.lua"] = 'local testing = require("levee.testing")\n'
                .. 'it("runs out", function()\n  local gw = testing.load()\n'
                .. '  gw:request{ path = "/slow", upstream = { 503 } }\nend)\n',
        })
        local code, out = H.run_levee({ "test", "short_spec.lua" }, { cwd = dir })
        assert.equal(1, code)
        assert.matches("short_spec.lua:4: the upstream script ran out: route slow wants attempt 2",
            out, 1, true)
    end)

    it("runs every *_spec.lua beside the configuration when no FILE is given", function()
        local dir = setup_dir({ ["a_spec.lua"] = PASSING, ["b_spec.lua"] = PASSING,
                                ["helper.lua"] = "error('not a spec')" })
        local code, out = H.run_levee({ "test" }, { cwd = dir })
        assert.equal(0, code, out)
        assert.matches("2 successes / 0 failures", out, 1, true)
        -- -c names the configuration: its folder is searched, and testing.load() loads it
        local other = H.tmpdir()
        H.write_file(dir .. "/c_spec.lua", 'local t = require("levee.testing")\n'
            .. 'it("default", function() assert.equal(0, t.load():now()) end)\n')
        code, out = H.run_levee({ "test", "-c", dir .. "/levee.lua" }, { cwd = other })
        assert.equal(0, code, out)
        assert.matches("3 successes / 0 failures", out, 1, true)
        -- and a failing one among them makes the run fail
        H.write_file(dir .. "/z_spec.lua", FAILING)
        code = H.run_levee({ "test" }, { cwd = dir })
        assert.equal(1, code)
    end)

    it("exits 2 on a usage error", function()
        local dir = setup_dir({})
        local code, _, err = H.run_levee({ "test", "--frobnicate" }, { cwd = dir })
        assert.equal(2, code)
        assert.matches("levee test: unknown option --frobnicate", err, 1, true)
        assert.matches("usage: levee test", err, 1, true)
        code, _, err = H.run_levee({ "test", "missing_spec.lua" }, { cwd = dir })
        assert.equal(2, code)
        assert.matches("no such spec file missing_spec.lua", err, 1, true)
        code, _, err = H.run_levee({ "test" }, { cwd = dir }) -- no spec beside levee.lua
        assert.equal(2, code)
        assert.matches("no *_spec.lua file in .", err, 1, true)
        code = H.run_levee({ "test", "-c" }, { cwd = dir })
        assert.equal(2, code)
    end)
end)
