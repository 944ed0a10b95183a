-- Tracing (README "Tracing"): W3C trace context continued or started, a fresh span id per
-- attempt sent upstream in traceparent, trace ids in the access log, and spans exported as
-- OTLP/HTTP JSON to a real collector process (spec/support/otlp_collector.lua).
local H = require("helpers")
local C = require("collector")

local TID = "4bf92f3577b34da6a3ce929d0e0e4736"
local PID = "00f067aa0ba902b7"

-- A collector on a free port; returns it and its OTLP URL.
local function collector(status)
    local port = H.free_port()
    local col = C.start(port, H.tmpdir() .. "/spans.jsonl", status)
    return col, "http://127.0.0.1:" .. port .. "/v1/traces"
end

local function start(opts)
    opts = opts or {}
    local route = { name = "api", upstream = "api",
        retry = { attempts = 3, backoff = { base = "1ms", max = "2ms" }, on = { "5xx", "reset" } } }
    local config = { admin = true,
        upstreams = { api = { servers = { opts.up:addr() } } },
        routes = { route } }
    if opts.tracing ~= nil then config.tracing = opts.tracing end
    if opts.drain_timeout then config.drain_timeout = opts.drain_timeout end
    return H.levee({ config = config })
end

-- The header values the upstream saw, by lower-case name (the echo's last answer).
local function seen(r)
    local out = {}
    for _, kv in ipairs(H.json(r.body).headers) do
        local k = kv[1]:lower()
        out[k] = out[k] and (out[k] .. "|" .. kv[2]) or kv[2]
    end
    return out
end

local function spans_of(col, trace_id, n)
    local got
    H.wait_until(function()
        got = {}
        for _, s in ipairs(col:spans()) do
            if s.trace_id == trace_id then got[#got + 1] = s end
        end
        return #got >= n
    end, 10 * H.scale, n .. " spans of trace " .. trace_id)
    return got
end

local function tp_parts(v)
    return v:match("^00%-(%x+)%-(%x+)%-(%x%x)$")
end

describe("tracing", function()
    after_each(H.cleanup)

    it("continues an incoming trace: a span per attempt, each id sent upstream, the log carries the ids", function()
        local up = H.upstream()
        local col, col_url = collector()
        local lv = start({ up = up, tracing = { otlp = col_url, flush = "50ms", service = "edge" } })
        local r = lv:request({ path = "/pay?x=1", headers = {
            { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" },
            { "tracestate", "vendor=abc,other=1" },
            { "X-Test-Plan", "tr1:503,503,200" } } })
        assert.equal(200, r.status)
        local hdr = seen(r)
        local tid, sid, flags = tp_parts(hdr.traceparent)
        assert.equal(TID, tid)
        assert.equal("01", flags)
        assert.are_not.equal(PID, sid)
        assert.equal("vendor=abc,other=1", hdr.tracestate)

        local e = lv:access_entry("/pay?x=1")
        assert.equal(TID, e.trace_id)
        assert.truthy(e.span_id:match("^%x+$") and #e.span_id == 16)

        local spans = spans_of(col, TID, 4)
        assert.equal(4, #spans)
        local server, clients = nil, {}
        for _, s in ipairs(spans) do
            if s.kind == 2 then server = s else clients[#clients + 1] = s end
        end
        assert.truthy(server, "a server span")
        assert.equal(e.span_id, server.span_id)
        assert.equal(PID, server.parent_id)
        assert.equal("edge", server.resource["service.name"])
        assert.equal("GET api", server.name)
        assert.equal(200, server.attrs["http.response.status_code"])
        assert.equal("/pay", server.attrs["url.path"])
        assert.equal("api", server.attrs["levee.route"])
        assert.equal("success", server.attrs["levee.retry_stop"])
        assert.equal(3, server.attrs["levee.attempts"])
        assert.truthy(server.attrs["levee.flags"]:find("retried", 1, true))
        assert.equal(3, #clients)
        table.sort(clients, function(a, b) return a.attrs["levee.attempt"] < b.attrs["levee.attempt"] end)
        local ids = {}
        for i, c in ipairs(clients) do
            assert.equal(3, c.kind)
            assert.equal(server.span_id, c.parent_id)
            assert.equal(i, c.attrs["levee.attempt"])
            assert.equal("api", c.attrs["levee.route"])
            assert.truthy(c.start_ns >= server.start_ns and c.end_ns <= server.end_ns + 1000000,
                "an attempt lies within its request")
            ids[c.span_id] = true
        end
        assert.equal("503", clients[1].attrs["levee.outcome"])
        assert.equal("retry", clients[1].attrs["levee.verdict"])
        assert.equal("retry", clients[1].attrs["levee.retry_decision"])
        assert.equal(2, clients[1].status)
        assert.equal("200", clients[3].attrs["levee.outcome"])
        assert.equal(200, clients[3].attrs["http.response.status_code"])
        assert.equal("success", clients[3].attrs["levee.retry_decision"])
        assert.equal(sid, clients[3].span_id, "the last attempt's id went upstream")
        local n = 0
        for _ in pairs(ids) do n = n + 1 end
        assert.equal(3, n, "a fresh span id per attempt")
    end)

    it("starts a trace without traceparent: sample 1 exports it, sample 0 sends flags 00 and exports nothing", function()
        local up = H.upstream()
        local col, col_url = collector()
        local lv = start({ up = up, tracing = { otlp = col_url, flush = "50ms", sample = 1 } })
        local r = lv:request({ path = "/new" })
        local tid, sid, flags = tp_parts(seen(r).traceparent)
        assert.equal("01", flags)
        assert.equal(tid, lv:access_entry("/new").trace_id)
        local spans = spans_of(col, tid, 2)
        local server
        for _, s in ipairs(spans) do if s.kind == 2 then server = s end end
        assert.equal(nil, server.parent_id, "a root span")
        for _, s in ipairs(spans) do if s.kind == 3 then assert.equal(sid, s.span_id) end end

        local up0 = H.upstream()
        local col0, col0_url = collector()
        local lv0 = start({ up = up0, tracing = { otlp = col0_url, flush = "50ms", sample = 0 } })
        for i = 1, 5 do
            local r0 = lv0:request({ path = "/unsampled" .. i })
            local _, _, f0 = tp_parts(seen(r0).traceparent)
            assert.equal("00", f0)
        end
        -- a sampled request after them (an incoming sampled flag) is exported: once it is in,
        -- the unsampled ones would have been too
        local r1 = lv0:request({ path = "/parent-sampled",
            headers = { { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" } } })
        assert.equal(200, r1.status)
        spans_of(col0, TID, 2)
        for _, s in ipairs(col0:spans()) do assert.equal(TID, s.trace_id) end
    end)

    it("honours an incoming unsampled flag: nothing exported, flags 00 upstream", function()
        local up = H.upstream()
        local col, col_url = collector()
        local lv = start({ up = up, tracing = { otlp = col_url, flush = "50ms", sample = 1 } })
        local other = "0af7651916cd43dd8448eb211c80319c"
        local r = lv:request({ path = "/no", headers = { { "traceparent", "00-" .. other .. "-" .. PID .. "-00" } } })
        local tid, _, flags = tp_parts(seen(r).traceparent)
        assert.equal(other, tid)
        assert.equal("00", flags)
        lv:request({ path = "/yes", headers = { { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" } } })
        spans_of(col, TID, 2)
        for _, s in ipairs(col:spans()) do assert.are_not.equal(other, s.trace_id) end
    end)

    it("starts a new trace for an invalid traceparent, drops its tracestate, and counts it", function()
        local up = H.upstream()
        local lv = start({ up = up })
        local bad = {
            "00-00000000000000000000000000000000-" .. PID .. "-01", -- all-zero trace id
            "00-" .. TID:upper() .. "-" .. PID .. "-01",           -- upper-case hex
            "ff-" .. TID .. "-" .. PID .. "-01",                   -- version ff
            "00-" .. TID .. "-" .. PID,                             -- no flags
        }
        for i, v in ipairs(bad) do
            local r = lv:request({ path = "/bad" .. i, headers = { { "traceparent", v }, { "tracestate", "a=b" } } })
            assert.equal(200, r.status)
            local hdr = seen(r)
            local tid = tp_parts(hdr.traceparent)
            assert.truthy(tid, v)
            assert.are_not.equal(TID, tid, v)
            assert.is_nil(hdr.tracestate, v)
            assert.equal(tid, lv:access_entry("/bad" .. i).trace_id)
        end
        -- two traceparent fields are invalid too
        local r = lv:request({ path = "/two", headers = {
            { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" },
            { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" } } })
        assert.are_not.equal(TID, (tp_parts(seen(r).traceparent)))
        assert.equal(5, lv:metric("levee_trace_context_invalid_total"))
        -- a valid traceparent with an ill-formed tracestate: the trace goes on, the state is dropped
        local ok = lv:request({ path = "/state", headers = {
            { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" }, { "tracestate", "BAD KEY=1" } } })
        local hdr = seen(ok)
        assert.equal(TID, (tp_parts(hdr.traceparent)))
        assert.is_nil(hdr.tracestate)
        assert.equal(5, lv:metric("levee_trace_context_invalid_total"))
    end)

    it("with tracing = false passes traceparent through untouched and logs no ids", function()
        local up = H.upstream()
        local lv = start({ up = up, tracing = false })
        local v = "00-" .. TID .. "-" .. PID .. "-01"
        local r = lv:request({ path = "/off", headers = { { "traceparent", v } } })
        assert.equal(v, seen(r).traceparent)
        local r2 = lv:request({ path = "/off2" })
        assert.is_nil(seen(r2).traceparent)
        assert.equal(H.null, lv:access_entry("/off").trace_id)
    end)

    it("keeps serving when the collector is down, and counts the failed exports and the spans lost", function()
        local up = H.upstream()
        local dead = H.free_port()
        local lv = start({ up = up, tracing = { otlp = "http://127.0.0.1:" .. dead .. "/v1/traces",
            flush = "20ms", batch = 4, timeout = "200ms" } })
        for i = 1, 20 do
            assert.equal(200, lv:request({ path = "/down" .. i }).status)
        end
        H.wait_until(function()
            return (lv:metric('levee_trace_spans_dropped_total{reason="export_failed"}') or 0) > 0
        end, 20 * H.scale, "spans counted as lost")
        assert.truthy(lv:metric("levee_trace_export_failures_total") >= 3)
        assert.equal(0, lv:metric("levee_trace_spans_exported_total"))
    end)

    it("retries a batch the collector refused, and flushes queued spans on shutdown", function()
        local up = H.upstream()
        local col, col_url = collector(503)
        local lv = start({ up = up, tracing = { otlp = col_url, flush = "20ms", timeout = "1s" } })
        lv:request({ path = "/refused", headers = { { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" } } })
        H.wait_until(function() return (lv:metric("levee_trace_export_failures_total") or 0) >= 1 end,
            10 * H.scale, "a refused export")
        col:stop()

        local col2, col2_url = collector()
        local lv2 = start({ up = up, tracing = { otlp = col2_url, flush = "1m", batch = 512 } })
        local other = "0af7651916cd43dd8448eb211c80319c"
        lv2:request({ path = "/late", headers = { { "traceparent", "00-" .. other .. "-" .. PID .. "-01" } } })
        lv2:access_entry("/late")
        assert.equal(0, #col2:spans(), "held for the flush interval")
        lv2:stop("TERM", 10)
        local got = 0
        for _, s in ipairs(col2:spans()) do if s.trace_id == other then got = got + 1 end end
        assert.equal(2, got, "flushed on shutdown")
    end)

    it("exports to an https collector verified with tracing.ca, and not without it", function()
        local d = H.tmpdir()
        assert(os.execute(("openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem "
            .. "-days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 >/dev/null 2>&1")
            :format(d, d)))
        -- openssl s_server is the collector: it prints what it receives (and never answers)
        -- (its stdin is a pipe kept open: at end of input it would close the connection; it is
        -- killed, not waited for, at the end whatever happened, so a failure cannot hang here)
        local servers = {}
        finally(function()
            for _, sv in ipairs(servers) do
                os.execute(("pkill -f 's_server -quiet -accept 127.0.0.1:%d ' 2>/dev/null"):format(sv.port))
                sv.pipe:close()
            end
        end)
        local function collector_tls(out)
            local port = H.free_port()
            local pipe = io.popen(("exec openssl s_server -quiet -accept 127.0.0.1:%d "
                .. "-cert %s/cert.pem -key %s/key.pem > %s 2>/dev/null"):format(port, d, d, out), "w")
            servers[#servers + 1] = { port = port, pipe = pipe }
            H.wait_until(function() return H.port_open(port) end, 10 * H.scale, "openssl s_server")
            return "https://localhost:" .. port .. "/v1/traces"
        end
        local got = d .. "/got"
        local url = collector_tls(got)
        local up = H.upstream()
        local lv = start({ up = up, tracing = { otlp = url, ca = d .. "/cert.pem", flush = "20ms" } })
        lv:request({ path = "/tls", headers = { { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" } } })
        H.wait_until(function()
            local text = H.read_file(got) or ""
            return text:find("POST /v1/traces", 1, true) and text:find(TID, 1, true)
        end, 10 * H.scale, "the spans at the https collector")

        local got2 = d .. "/got2"
        local url2 = collector_tls(got2)
        local lv2 = start({ up = up, tracing = { otlp = url2, flush = "20ms", timeout = "500ms" } })
        lv2:request({ path = "/tls2", headers = { { "traceparent", "00-" .. TID .. "-" .. PID .. "-01" } } })
        H.wait_until(function() return (lv2:metric("levee_trace_export_failures_total") or 0) >= 1 end,
            10 * H.scale, "an export refused: the collector's certificate is not trusted")
        assert.is_nil((H.read_file(got2) or ""):find("POST", 1, true))
    end)
end)
