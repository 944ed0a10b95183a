-- `cmake --install` and the installed tree (README "Install"): the binary finds its Lua library
-- relative to its own location, so a moved prefix still works; `levee -V`; LEVEE_LUA_DIR.

local H = require("helpers")

local function sh(cmd)
    local p = assert(io.popen(cmd .. " 2>&1"))
    local out = p:read("a")
    local ok, _, code = p:close()
    return ok and 0 or code, out
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Installs the build directory into a fresh prefix, then moves the prefix elsewhere.
-- Returns the moved prefix.
local function install_and_move()
    local build = os.getenv("LEVEE_BUILD_DIR")
    assert(build and build ~= "", "LEVEE_BUILD_DIR is not set (ctest sets it)")
    local base = H.tmpdir()
    local prefix, moved = base .. "/prefix", base .. "/moved"
    local code, out = sh("cmake --install " .. q(build) .. " --prefix " .. q(prefix))
    assert.equal(0, code, out)
    code, out = sh("mv " .. q(prefix) .. " " .. q(moved))
    assert.equal(0, code, out)
    return moved
end

-- The environment of the installed binary: no LEVEE_LUA_DIR.
local NO_LUA_DIR = { LEVEE_LUA_DIR = false }

describe("installed tree", function()
    after_each(H.cleanup)

    it("holds bin/levee and the Lua library, and works after being moved", function()
        local p = install_and_move()
        for _, f in ipairs({ "bin/levee", "share/levee/lua/levee/config.lua",
                             "share/levee/lua/levee/keylines.lua",
                             "share/levee/lua/levee/policy.lua" }) do
            assert.is_true(H.read_file(p .. "/" .. f) ~= "", f .. " not installed")
        end
        local bin = p .. "/bin/levee"
        local cwd = H.tmpdir()
        for _, example in ipairs({ "minimal.lua", "levee.lua" }) do
            local code, out, err = H.run_levee({ "check", H.src .. "/examples/" .. example },
                { bin = bin, env = NO_LUA_DIR, cwd = cwd })
            assert.equal("ok\n", out, example .. ": " .. out .. err)
            assert.equal(0, code, example)
        end
        -- It is the installed copy that is loaded (not the source tree compiled in).
        H.write_file(p .. "/share/levee/lua/levee/config.lua", 'error("installed copy loaded")\n')
        local code, out, err = H.run_levee({ "check", H.src .. "/examples/minimal.lua" },
            { bin = bin, env = NO_LUA_DIR, cwd = cwd })
        assert.equal(1, code, out .. err)
        assert.truthy((out .. err):find("installed copy loaded", 1, true), out .. err)
        assert.truthy((out .. err):find(p .. "/share/levee/lua", 1, true), out .. err)
    end)

    it("LEVEE_LUA_DIR wins, and an empty one fails check naming that dir", function()
        local p = install_and_move()
        local empty = H.tmpdir()
        local code, out, err = H.run_levee({ "check", H.src .. "/examples/minimal.lua" },
            { bin = p .. "/bin/levee", env = { LEVEE_LUA_DIR = empty } })
        assert.equal(1, code, out .. err)
        local text = out .. err
        assert.truthy(text:find("cannot load levee.config from " .. empty, 1, true), text)
    end)
end)

describe("levee -V", function()
    after_each(H.cleanup)

    for _, flag in ipairs({ "-V", "--version" }) do
        it(flag .. " lists levee and the five libraries with their versions", function()
            local code, out, err = H.run_levee({ flag })
            assert.equal(0, code, err)
            local names = {}
            for line in out:gmatch("[^\n]+") do
                local name, version = line:match("^(%S+) (%S+)$")
                assert.truthy(name, "not 'name version': " .. line)
                assert.truthy(version:match("^%d+%.%d+%.%d+"), "not a version: " .. line)
                names[#names + 1] = name
            end
            assert.are.same({ "levee", "libuv", "OpenSSL", "Lua", "llhttp", "hiredis" }, names)
        end)
    end
end)
