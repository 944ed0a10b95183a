-- The admin dashboard (GET / on the admin listener) rendered by a real headless Chromium:
-- its script must fetch /status and fill the tables with what levee is doing.
local H = require("helpers")

local function dump_dom(url)
    local profile = H.tmpdir()
    local f = io.popen(table.concat({ "/usr/bin/chromium", "--headless", "--no-sandbox",
        "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--user-data-dir=" .. profile,
        "--virtual-time-budget=5000", "--dump-dom", url, "2>/dev/null" }, " "))
    local dom = f:read("a")
    f:close()
    return dom
end

local function cells(dom, table_id)
    local body = dom:match('<table id="' .. table_id .. '">.-<tbody>(.-)</tbody>')
    local rows = {}
    for tr in (body or ""):gmatch("<tr>(.-)</tr>") do
        local row = {}
        for td in tr:gmatch("<td[^>]*>(.-)</td>") do row[#row + 1] = td end
        rows[#rows + 1] = row
    end
    return rows
end

describe("dashboard in headless Chromium", function()
    after_each(H.cleanup)

    it("shows the live routes, breaker states and upstream servers", function()
        assert.is_truthy(io.open("/usr/bin/chromium"), "chromium is installed by scripts/setup.sh")
        local up = H.upstream{ n = 2 }
        local lv = H.levee{ config = [[
return {
  listen = { "127.0.0.1:$PORT" }, admin = "127.0.0.1:$ADMIN", access_log = false,
  upstreams = { main = { servers = { "]] .. up:addr(1) .. [[", "]] .. up:addr(2) .. [[" } } },
  routes = {
    { name = "shop", match = { prefix = "/shop" }, upstream = "main" },
    { name = "flaky", match = { prefix = "/flaky" }, upstream = "main",
      retry = { attempts = 1 }, breaker = { consecutive_failures = 2, open_for = "60s" } },
  },
}]] }
        for i = 1, 3 do
            assert.equal(200, assert(H.request(lv.port, { path = "/shop/" .. i })).status)
        end
        for _ = 1, 2 do
            local res = assert(H.request(lv.port, { path = "/flaky", headers = { ["X-Test-Status"] = "500" } }))
            assert.equal(500, res.status)
        end
        assert.equal("breaker-open", assert(H.request(lv.port, { path = "/flaky" })).headers["levee-error"])

        local dom = dump_dom("http://127.0.0.1:" .. lv.admin_port .. "/")
        assert.truthy(dom:find("<h1>levee</h1>", 1, true), "the page rendered")
        -- The script replaced "loading…" with what /status says.
        assert.truthy(dom:match('<p id="meta">version [%d%.]+ · generation 1 ·'), dom:sub(1, 600))
        local routes = cells(dom, "routes")
        assert.equal(2, #routes)
        assert.same({ "shop", "main", "3", "closed" }, routes[1])
        -- flaky: 2 answered by the upstream + 1 rejected by the open breaker
        assert.same({ "flaky", "main", "3", "open" }, routes[2])
        assert.truthy(dom:find('<td class="open">open</td>', 1, true))
        local servers = cells(dom, "ups")
        assert.equal(2, #servers)
        assert.equal(up:addr(1), servers[1][2])
        assert.equal(up:addr(2), servers[2][2])
        -- every request went over pooled connections that are idle now
        assert.equal(2, tonumber(servers[1][4]) + tonumber(servers[2][4]))
    end)
end)
