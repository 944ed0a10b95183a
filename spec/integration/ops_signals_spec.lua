-- Operations (README "Operations"): the signals an operator sends by habit (USR1 reopens the
-- log files for logrotate, USR2 is ignored, QUIT drains like TERM) and reloads that are all or
-- nothing (a new listener on a busy port, a missing certificate, an access log that cannot be
-- opened: the reload is refused, its reason answered by POST /reload, the old one serves).

local H = require("helpers")
local proc = H.proc

local nonempty_lines = H.nonempty_lines

local function get(lv, path, headers)
    return assert(lv:request({ path = path or "/", headers = headers or {} }))
end

local function lines_in(path) return nonempty_lines(H.read_file(path) or "") end

local function wait_lines(path, n)
    return H.wait_until(function()
        local l = lines_in(path)
        return #l >= n and l
    end, 5 * H.scale, ("%d lines in %s"):format(n, path))
end

local function wait_text(path, needle)
    return H.wait_until(function()
        local t = H.read_file(path) or ""
        return t:find(needle, 1, true) and t
    end, 5 * H.scale, ("%q in %s"):format(needle, path))
end

local function rename(from, to) assert(os.rename(from, to)) end

local function config(up, extra)
    local c = { admin = true, access_log = false, upstreams = { api = { servers = { up:addr() } } },
        routes = { { name = "main", match = { prefix = "/" }, upstream = "api" } } }
    for k, v in pairs(extra or {}) do c[k] = v end
    return c
end

local function metric(lv, series) return lv:metric(series) end

describe("signals", function()
    after_each(H.cleanup)

    it("USR1 reopens a renamed access log: lines before in the old file, after in the new", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up, { access_log = "access.log" }) })
        local path, rotated = lv.dir .. "/access.log", lv.dir .. "/access.log.1"
        for i = 1, 5 do assert.equal(200, get(lv, "/before/" .. i).status) end
        wait_lines(path, 5)
        rename(path, rotated)
        -- logrotate's window: between the rename and USR1, lines still go to the renamed file
        for i = 1, 3 do assert.equal(200, get(lv, "/between/" .. i).status) end
        wait_lines(rotated, 8)
        assert.is_true(lv:kill("USR1"))
        lv:wait_log("log files reopened", 5 * H.scale, true)
        for i = 1, 4 do assert.equal(200, get(lv, "/after/" .. i).status) end
        local new = wait_lines(path, 4)
        local old = lines_in(rotated)
        assert.equal(8, #old)
        assert.equal(4, #new)
        for _, l in ipairs(old) do assert.is_nil(l:find("/after/", 1, true)) end
        for _, l in ipairs(new) do assert.truthy(l:find("/after/", 1, true)) end
        assert.same({ 0, "exit" }, { lv:stop("TERM") })
    end)

    it("USR1 reopens error_log's file; USR2 is logged and ignored", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up, { error_log = "error.log" }) })
        local path, rotated = lv.dir .. "/error.log", lv.dir .. "/error.log.1"
        wait_text(path, "started")
        rename(path, rotated)
        assert.is_true(lv:kill("USR1"))
        wait_text(path, "log files reopened")
        assert.truthy((H.read_file(rotated) or ""):find("started", 1, true))
        assert.is_true(lv:kill("USR2"))
        wait_text(path, "SIGUSR2")
        assert.is_true(lv:alive())
        assert.equal(200, get(lv, "/still").status)
        assert.is_nil(H.read_file(rotated):find("SIGUSR2", 1, true))
        assert.same({ 0, "exit" }, { lv:stop("TERM") })
    end)

    it("QUIT drains: a request in flight finishes, then exit 0", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up, { drain_timeout = "10s" }) })
        local c = assert(H.conn(lv.port, { timeout = 10 }))
        c:send(H.build_request(lv.port, { path = "/slow", headers = { { "X-Test-Delay-Ms", "800" } } }))
        H.wait_until(function() return (up:stats().by_path["/slow"] or 0) == 1 end, 5 * H.scale,
            "the request upstream")
        assert.is_true(lv:kill("QUIT"))
        local r, err = c:read_response()
        assert(r, err)
        assert.equal(200, r.status)
        assert.same({ 0, "exit" }, { lv:wait_exit(10 * H.scale) })
    end)
end)

describe("refused reloads", function()
    after_each(H.cleanup)

    -- Writes `extra` over the base config, POSTs /reload and checks it is refused with `needle`
    -- in its errors, the old generation still serving, and the refusal counted and shown.
    local function refused(lv, up, extra, needle)
        lv:write_config(config(up, extra))
        local r = assert(lv:admin({ method = "POST", path = "/reload", body = "" }))
        assert.equal(400, r.status, r.body)
        local j = H.json(r.body)
        assert.equal("error", j.result)
        local all = table.concat(j.errors, "\n")
        assert.truthy(all:find(needle, 1, true), all)
        assert.equal(200, get(lv, "/still").status)
        assert.equal(1, metric(lv, 'levee_config_reloads_total{result="error"}'))
        local st = H.json(assert(lv:admin("/status")).body)
        assert.truthy(st.last_reload:find("^error"), st.last_reload)
        lv:wait_log("reload refused", 5 * H.scale, true)
        return j
    end

    it("a new listener on a busy port: refused, the other new listener closed again", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up) })
        local busy = up.ports[1]
        refused(lv, up, { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT3", "127.0.0.1:" .. busy } },
            "address already in use")
        assert.is_false(H.port_open(lv.ports.PORT3))
        assert.equal(200, get(lv, "/again").status)
        -- the same file without the busy port goes through
        lv:write_config(config(up, { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT3" } }))
        local r = assert(lv:admin({ method = "POST", path = "/reload", body = "" }))
        assert.equal(200, r.status, r.body)
        assert.equal(200, assert(H.request(lv.ports.PORT3, { path = "/new" })).status)
    end)

    it("a missing certificate file: refused", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up) })
        refused(lv, up, { listen = { "127.0.0.1:$PORT", { addr = "127.0.0.1:$PORT2",
            tls = { cert = "$DIR/missing.pem", key = "$DIR/missing.key" } } } }, "missing.pem")
        assert.is_false(H.port_open(lv.ports.PORT2))
    end)

    it("an access log in a missing folder: refused, new listeners closed again", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up) })
        refused(lv, up, { listen = { "127.0.0.1:$PORT", "127.0.0.1:$PORT2" },
            access_log = "nowhere/access.log" }, "access_log")
        assert.is_false(H.port_open(lv.ports.PORT2))
        assert.equal(200, get(lv, "/again").status)
        assert.same({ 0, "exit" }, { lv:stop("TERM") })
    end)

    it("an error log in a missing folder: refused", function()
        local up = H.upstream()
        local lv = H.levee({ config = config(up) })
        refused(lv, up, { error_log = "nowhere/error.log" }, "error_log")
    end)
end)
