-- `levee check FILE` on the real binary (README "Command line"): warnings, the checks of the
-- files a configuration names (access-log folder, listener certificate and key, upstream CA),
-- exit codes 0/1/2, and the messages of command-line usage errors.
local H = require("helpers")

local function sh(cmd)
    local ok = os.execute(cmd .. " >/dev/null 2>&1")
    assert(ok, "command failed: " .. cmd)
end

-- Runs `levee check NAME` in `dir` on `text` written to dir/NAME.
local function check(dir, text, name)
    name = name or "levee.lua"
    H.write_file(dir .. "/" .. name, text)
    return H.run_levee({ "check", name }, { cwd = dir })
end

local USAGE = "usage: levee [-c FILE]"

describe("levee check", function()
    it("prints exactly ok and exits 0 for a clean file", function()
        local code, out, err = check(H.tmpdir(), [[
return {
  upstreams = { api = { servers = { "127.0.0.1:9000" } } },
  routes = { { name = "r", upstream = "api", timeout = "5s" } },
}
]])
        assert.equal("ok\n", out)
        assert.equal("", err)
        assert.equal(0, code)
    end)

    it("prints the warnings, then ok, and exits 0 for a valid file with probable mistakes", function()
        local code, out, err = check(H.tmpdir(), [[
return {
  upstreams = { api = { servers = { "127.0.0.1:9000" } } },
  routes = {
    { name = "all", upstream = "api" },
    { name = "api", match = { prefix = "/api" }, upstream = "api" },
  },
}
]])
        assert.equal('levee.lua:5: warning: routes[2]: never matches: route "all" (line 4) before '
            .. "it matches every request it would\nok\n", out)
        assert.equal("", err)
        assert.equal(0, code)
    end)

    it("prints the warnings then the errors, each as FILE:LINE, and exits 1", function()
        local dir = H.tmpdir()
        local code, out, err = check(dir, [[
return {
  access_log = "logs/access.log",
  upstreams = {
    api = { servers = { "127.0.0.1:9000" } },
    spare = { servers = { "127.0.0.1:9001" } },
  },
  routes = {
    { name = "r", upstream = "api", timeout = 5000,
      retry = { attempts = 0 } },
  },
}
]])
        assert.equal(
            "levee.lua:5: warning: upstreams.spare: no route uses this upstream\n"
            .. 'levee.lua:8: warning: routes[1].timeout: a bare number is seconds: 5000 is 1h23m20s; '
            .. 'write "5000ms" if milliseconds were meant\n'
            .. 'levee.lua:2: access_log: cannot write "logs/access.log": folder logs does not exist\n'
            .. "levee.lua:9: routes[1].retry.attempts: expected integer >= 1, got 0\n", out)
        assert.equal("", err)
        assert.equal(1, code)
    end)

    it("checks that the access-log folder is a writable folder", function()
        local dir = H.tmpdir()
        H.write_file(dir .. "/afile", "x")
        local base = '  upstreams = { api = { servers = { "127.0.0.1:9000" } } },\n'
            .. '  routes = { { name = "r", upstream = "api" } },\n}\n'
        local code, out = check(dir, 'return {\n  access_log = "afile/access.log",\n' .. base)
        assert.equal('levee.lua:2: access_log: cannot write "afile/access.log": afile is not a folder\n', out)
        assert.equal(1, code)
        sh("mkdir " .. dir .. "/logs")
        code, out = check(dir, 'return {\n  access_log = "logs/access.log",\n' .. base)
        assert.equal("ok\n", out)
        assert.equal(0, code)
        local f = io.open(dir .. "/logs/access.log")
        assert.is_nil(f, "levee check must not create the log file")
        local p = io.popen("id -u")
        local uid = p:read("l")
        p:close()
        if uid ~= "0" then -- root may write anywhere
            sh("chmod 555 " .. dir .. "/logs")
            code, out = check(dir, 'return {\n  access_log = "logs/access.log",\n' .. base)
            sh("chmod 755 " .. dir .. "/logs")
            assert.equal('levee.lua:2: access_log: cannot write "logs/access.log": folder logs is not '
                .. "writable: Permission denied\n", out)
            assert.equal(1, code)
        end
    end)

    it("checks that a listener's key matches its certificate, and the CA file", function()
        local dir = H.tmpdir()
        sh(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem -days 2 "
            .. "-subj /CN=localhost"):format(dir, dir))
        sh(("openssl genrsa -out %s/other.pem 2048"):format(dir))
        local code, out, err = check(dir, [[
return {
  listen = {
    { addr = "127.0.0.1:8443", tls = { cert = "cert.pem", key = "other.pem" } },
    { addr = "127.0.0.1:8444", tls = { cert = "cert.pem", key = "key.pem" } },
  },
  upstreams = { api = { servers = { "127.0.0.1:9000" }, tls = { ca = "ca.pem" } } },
  routes = { { name = "r", upstream = "api" } },
}
]])
        assert.equal("levee.lua:3: listen[1].tls.key: other.pem: the private key does not match the "
            .. "certificate in cert.pem\n"
            .. 'levee.lua:6: upstreams.api.tls.ca: cannot read "ca.pem": No such file or directory\n', out)
        assert.equal("", err)
        assert.equal(1, code)
        code, out = check(dir, [[
return {
  listen = { addr = "127.0.0.1:8444", tls = { cert = "cert.pem", key = "key.pem" } },
  upstreams = { api = { servers = { "127.0.0.1:9000" }, tls = { ca = "cert.pem" } } },
  routes = { { name = "r", upstream = "api" } },
}
]])
        assert.equal("ok\n", out)
        assert.equal(0, code)
    end)

    it("reports an error inside a function the file calls at the calling line", function()
        local code, out = check(H.tmpdir(), "local t = {}\n\nlocal s = ('x'):rep(nil)\nreturn t\n")
        assert.equal("levee.lua:3: bad argument #1 to 'rep' (number expected, got nil)\n", out)
        assert.equal(1, code)
    end)
end)

describe("command-line usage errors", function()
    local cases = {
        { { "-c" }, "levee: -c needs a FILE" },
        { { "--bogus" }, "levee: unknown option --bogus" },
        { { "-c", "x.lua", "extra" }, "levee: unexpected argument extra" },
        { { "dev", "99999" }, 'levee dev: URL: expected a port between 1 and 65535, got "99999"' },
        { { "dev", "http://a:1/api" }, 'levee dev: URL: expected "http://host:port" (no path), got "http://a:1/api"' },
        { { "dev" }, "levee dev: needs a URL" },
        { { "dev", "127.0.0.1:1", "--listen" }, "levee dev: --listen needs an ADDR" },
        { { "check" }, "levee check: needs a FILE" },
        { { "check", "a.lua", "b.lua" }, "levee check: expected one FILE, got an extra argument b.lua" },
    }
    for _, case in ipairs(cases) do
        it("levee " .. table.concat(case[1], " ") .. " names what was wrong, then the usage, exit 2", function()
            local code, out, err = H.run_levee(case[1])
            assert.equal(2, code)
            assert.equal("", out)
            assert.equal(case[2], err:match("^([^\n]*)\n"))
            assert.equal(USAGE, err:match("\n(usage: levee %[%-c FILE%])"))
        end)
    end
end)
