-- The admin dashboard (GET / on the admin listener, README "Admin API") rendered by a real
-- headless Chromium: its script polls /status and fills the tables with what levee is doing.
local H = require("helpers")
local proc = H.proc

local function chromium(profile, extra, url)
    local argv = { "/usr/bin/chromium", "--headless", "--no-sandbox", "--disable-gpu",
        "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--user-data-dir=" .. profile,
        "--virtual-time-budget=6000" }
    for _, a in ipairs(extra) do argv[#argv + 1] = a end
    argv[#argv + 1] = url
    return argv
end

-- Renders the page while `traffic` keeps sending requests, so polls see counters move.
local function render(url, extra, traffic)
    local dir = H.tmpdir()
    local out = dir .. "/dom.html"
    local pid = H.spawn(chromium(dir .. "/profile", extra, url), { stdout = out, stderr = "/dev/null" },
        "chromium")
    local deadline = H.now() + 60 * H.scale
    while proc.alive(pid) and H.now() < deadline do
        if traffic then traffic() else proc.sleep(0.05) end
    end
    assert.is_false(proc.alive(pid), "chromium finished")
    return H.read_file(out) or ""
end

local function row(dom, table_id, attr, name)
    local body = dom:match('<table id="' .. table_id .. '">.-<tbody>(.-)</tbody>') or ""
    local function lit(x) return (x:gsub("%p", "%%%0")) end
    local tr = body:match("<tr " .. lit(attr) .. '="' .. lit(name) .. '">(.-)</tr>')
    if not tr then return nil end
    local cells = {}
    for k, v in tr:gmatch('<td data%-k="(%w+)"[^>]*>(.-)</td>') do cells[k] = v end
    cells._html = tr
    return cells
end

local function nrows(dom, table_id)
    local body = dom:match('<table id="' .. table_id .. '">.-<tbody>(.-)</tbody>') or ""
    local n = 0
    for _ in body:gmatch("<tr ") do n = n + 1 end
    return n
end

describe("dashboard in headless Chromium", function()
    after_each(H.cleanup)

    it("shows rates, errors, breakers, ejections and a refused reload", function()
        assert.is_truthy(io.open("/usr/bin/chromium"), "chromium is installed by scripts/setup.sh")
        local up = H.upstream{ n = 3 }
        local dead = "127.0.0.1:" .. H.free_port()
        local lv = H.levee{ config = [[
return {
  listen = { "127.0.0.1:$PORT" }, admin = "127.0.0.1:$ADMIN", access_log = false,
  upstreams = {
    main = { servers = { "]] .. up:addr(1) .. [[", "]] .. up:addr(2) .. [[" } },
    pair = { servers = { "]] .. up:addr(3) .. [[", "]] .. dead .. [[" } },
  },
  routes = {
    { name = "shop", match = { prefix = "/shop" }, upstream = "main" },
    { name = "err", match = { prefix = "/err" }, upstream = "main" },
    { name = "flaky", match = { prefix = "/flaky" }, upstream = "main",
      retry = { attempts = 1 }, breaker = { consecutive_failures = 2, open_for = "60s" } },
    { name = "api", match = { prefix = "/api" }, upstream = "pair", retry = { attempts = 1 } },
    { name = "lim", match = { prefix = "/lim" }, upstream = "main",
      rate_limit = { rate = 1, per = "1h", key = "header:X-Key" }, concurrency = { max = 3 } },
  },
}]] }
        for i = 1, 3 do
            assert.equal(200, assert(H.request(lv.port, { path = "/shop/" .. i })).status)
        end
        for _, st in ipairs({ "200", "503", "200", "503" }) do
            local res = assert(H.request(lv.port, { path = "/err", headers = { ["X-Test-Status"] = st } }))
            assert.equal(tonumber(st), res.status)
        end
        for _ = 1, 2 do
            local res = assert(H.request(lv.port, { path = "/flaky", headers = { ["X-Test-Status"] = "500" } }))
            assert.equal(500, res.status)
        end
        assert.equal("breaker-open", assert(H.request(lv.port, { path = "/flaky" })).headers["levee-error"])
        -- the dead server of "pair" fails 5 connects in a row and is ejected (README "Upstream health")
        for i = 1, 12 do assert(H.request(lv.port, { path = "/api/" .. i })) end
        -- lim: one request per key and hour: two of three refused by the rate limit
        for i = 1, 3 do
            local res = assert(H.request(lv.port, { path = "/lim", headers = { ["X-Key"] = "k" } }))
            assert.equal(i == 1 and 200 or 429, res.status)
        end
        -- a broken configuration is refused; the old one keeps serving
        H.write_file(lv.config_path, "return { routes = 42, \n")
        local rl = assert(H.request(lv.admin_port, { method = "POST", path = "/reload" }))
        assert.equal(400, rl.status)

        local n = 0
        local function traffic()
            n = n + 1
            assert(H.request(lv.port, { path = "/shop/bg" .. n }))
        end
        local url = "http://127.0.0.1:" .. lv.admin_port .. "/"
        local dom = render(url, { "--dump-dom" }, traffic)
        assert.truthy(dom:find("<h1>levee</h1>", 1, true), "the page rendered")
        assert.truthy(dom:match('<p id="meta">version [%d%.]+ · generation 1 ·'), dom:sub(1, 800))
        assert.equal(5, nrows(dom, "routes"))

        -- shop: counted, and the traffic sent while the page polled shows as a rate
        local shop = assert(row(dom, "routes", "data-route", "shop"), dom)
        assert.is_true(tonumber(shop.requests) > 3, shop.requests)
        assert.is_true(tonumber(shop.rate:match("^[%d%.]+") or "0") > 0, "rate " .. shop.rate)
        assert.truthy(shop.p50:match("[%d%.]+ m?s"), shop.p50)
        assert.equal("", shop.breaker, "no breaker configured: nothing shown")
        assert.equal("", shop.idem)

        -- err: two of four answers were 503
        local err = assert(row(dom, "routes", "data-route", "err"))
        assert.truthy(err.errors:find("all 50.0%", 1, true), err.errors)
        assert.equal("", err.breaker)

        -- flaky: 2 answered by the upstream + 1 rejected by the open breaker
        local flaky = assert(row(dom, "routes", "data-route", "flaky"))
        assert.equal("3", flaky.requests)
        assert.truthy(flaky.breaker:match("^open <small>%d+s left</small>"), flaky.breaker)
        assert.truthy(flaky.breaker:find("2 consecutive failures", 1, true), flaky.breaker)
        assert.truthy(flaky._html:find('data-k="breaker" class="open"', 1, true))

        -- api: connect failures answered 502 are errors too
        local api = assert(row(dom, "routes", "data-route", "api"))
        assert.truthy(api.errors:match("all [1-9][%d%.]*%%"), api.errors)

        -- lim: the admission column shows what the rate limit refused and the bulkhead
        local lim = assert(row(dom, "routes", "data-route", "lim"))
        assert.truthy(lim.admission:find("2 limited", 1, true), lim.admission)
        assert.truthy(lim.admission:find("0/3", 1, true), lim.admission)
        assert.equal("", shop.admission, "no admission control configured: nothing shown")

        -- servers
        assert.equal(4, nrows(dom, "ups"))
        local ej = assert(row(dom, "ups", "data-server", dead))
        assert.truthy(ej.state:match("^ejected <small>%d+s left</small>"), ej.state)
        assert.truthy(ej._html:find('data-k="state" class="ejected"', 1, true))
        assert.truthy(ej.why:find("consecutive connect-failure", 1, true), ej.why)
        local s1 = assert(row(dom, "ups", "data-server", up:addr(1)))
        assert.equal("up", s1.state)

        -- the refused reload, in a red banner with its errors
        local banner = dom:match('<div id="banner"[^>]*>(.-)</div>')
        assert.truthy(banner and banner:find("Reload refused", 1, true), banner or dom:sub(1, 1500))
        assert.truthy(banner:find("<pre>.+</pre>"), banner)
        assert.falsy(dom:match('<div id="banner" hidden'), "banner visible")

        -- a screenshot, for people
        local dir = H.tmpdir()
        local shot = dir .. "/levee-stats.png"
        render(url, { "--screenshot=" .. shot, "--window-size=1500,1000", "--hide-scrollbars" },
            traffic)
        local png = assert(H.read_file(shot), "screenshot written")
        assert.equal("\137PNG", png:sub(1, 4))
        local build = os.getenv("LEVEE_BUILD_DIR")
        local copy = build and (build .. "/levee-stats.png") or "/tmp/levee-stats.png"
        H.write_file(copy, png)
        print("dashboard screenshot: " .. shot .. " (copied to " .. copy .. ")")
    end)
end)
