-- Unit specs for the test OTLP collector (spec/support/otlp_collector.lua and collector.lua):
-- POSTs sent with luasocket arrive as spans, keep-alive and chunked bodies work, and the
-- programmed statuses are answered in order.

local socket = require("socket")
local cjson = require("cjson")
local H = require("helpers")
local C = require("collector")

local function body_of(spans)
    return cjson.encode({ resourceSpans = { {
        resource = { attributes = {
            { key = "service.name", value = { stringValue = "svc" } },
            { key = "service.version", value = { stringValue = "1.2.3" } },
        } },
        scopeSpans = { { scope = { name = "levee", version = "1.2.3" }, spans = spans } },
    } } })
end

local SPAN = {
    traceId = "4bf92f3577b34da6a3ce929d0e0e4736",
    spanId = "00f067aa0ba902b7",
    parentSpanId = "53995c3f42cd8ad8",
    name = "GET /api",
    kind = 3,
    startTimeUnixNano = "1700000000000000000",
    endTimeUnixNano = "1700000000001000000",
    attributes = {
        { key = "http.request.method", value = { stringValue = "GET" } },
        { key = "http.response.status_code", value = { intValue = "503" } },
        { key = "levee.retried", value = { boolValue = true } },
    },
    status = { code = 2, message = "upstream reset" },
}

local ROOT = {
    traceId = "4bf92f3577b34da6a3ce929d0e0e4736",
    spanId = "53995c3f42cd8ad8",
    name = "GET",
    kind = 2,
    startTimeUnixNano = "5",
    endTimeUnixNano = "9",
    attributes = {},
}

-- Sends raw request text on an open connection; returns the status and body of the answer.
local function exchange(s, text)
    assert(s:send(text))
    local line = assert(s:receive("*l"))
    local status = tonumber(line:match("^HTTP/1%.1 (%d+)"))
    local len
    while true do
        local h = assert(s:receive("*l"))
        if h == "" then break end
        local n = h:match("^[Cc]ontent%-[Ll]ength:%s*(%d+)")
        if n then len = tonumber(n) end
    end
    local body = len and len > 0 and assert(s:receive(len)) or ""
    return status, body
end

local function post(body, path)
    return ("POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s")
        :format(path or "/v1/traces", #body, body)
end

local function connect(col)
    local s = assert(socket.connect("127.0.0.1", col.port))
    s:settimeout(5 * H.scale)
    return s
end

describe("otlp collector", function()
    after_each(function() H.cleanup() end)

    it("records a POSTed body as spans", function()
        local col = C.start()
        local s = connect(col)
        local status, body = exchange(s, post(body_of({ ROOT, SPAN })))
        assert.are.equal(200, status)
        assert.are.equal("{}", body)
        local spans = col:wait_spans(2)
        assert.are.equal(2, #spans)
        local root, child = spans[1], spans[2]
        assert.are.equal("53995c3f42cd8ad8", root.span_id)
        assert.is_nil(root.parent_id)
        assert.are.equal(2, root.kind)
        assert.are.equal(0, root.status)
        assert.are.equal(5, root.start_ns)
        assert.are.equal(9, root.end_ns)
        assert.are.equal("4bf92f3577b34da6a3ce929d0e0e4736", child.trace_id)
        assert.are.equal("00f067aa0ba902b7", child.span_id)
        assert.are.equal("53995c3f42cd8ad8", child.parent_id)
        assert.are.equal("GET /api", child.name)
        assert.are.equal(3, child.kind)
        assert.are.same({ ["http.request.method"] = "GET", ["http.response.status_code"] = 503,
            ["levee.retried"] = true }, child.attrs)
        assert.are.equal(2, child.status)
        assert.are.equal("upstream reset", child.status_message)
        assert.are.equal(1700000000000000000, child.start_ns)
        assert.are.equal(1700000000001000000, child.end_ns)
        assert.are.equal("svc", child.resource["service.name"])
        assert.are.equal("1.2.3", child.resource["service.version"])
        assert.are.equal("levee", child.scope.name)
        s:close()
    end)

    it("keeps the connection alive and reads chunked bodies", function()
        local col = C.start()
        local s = connect(col)
        assert.are.equal(200, (exchange(s, post(body_of({ ROOT })))))
        local b = body_of({ SPAN })
        local half = math.floor(#b / 2)
        local chunked = ("POST /v1/traces HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .. "%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n"):format(half, b:sub(1, half), #b - half, b:sub(half + 1))
        assert.are.equal(200, (exchange(s, chunked)))
        -- Two requests in one write (pipelined).
        local two = post(body_of({ ROOT })) .. post(body_of({ ROOT }))
        assert(s:send(two))
        for _ = 1, 2 do
            assert.are.equal("HTTP/1.1 200 OK", s:receive("*l"))
            repeat local h = s:receive("*l") until h == ""
            assert.are.equal("{}", s:receive(2))
        end
        local spans = col:wait_spans(4)
        assert.are.equal(4, #spans)
        assert.are.equal("GET /api", spans[2].name)
        assert.are.equal(4, #col:bodies())
        -- A GET is not a span.
        assert.are.equal(405, (exchange(s, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")))
        assert.are.equal(4, #col:bodies())
        s:close()
    end)

    it("serves several connections at once", function()
        local col = C.start()
        local a, b = connect(col), connect(col)
        assert.are.equal(200, (exchange(b, post(body_of({ ROOT })))))
        assert.are.equal(200, (exchange(a, post(body_of({ SPAN })))))
        assert.are.equal(2, #col:wait_spans(2))
        a:close()
        b:close()
    end)

    it("answers the programmed statuses in order", function()
        local col = C.start(0, nil, "503,429,200")
        local s = connect(col)
        assert.are.equal(503, (exchange(s, post(body_of({ ROOT })))))
        assert.are.equal(429, (exchange(s, post(body_of({ ROOT })))))
        assert.are.equal(200, (exchange(s, post(body_of({ ROOT })))))
        assert.are.equal(200, (exchange(s, post(body_of({ ROOT })))))
        assert.are.equal(4, #col:wait_spans(4)) -- every POST is recorded, whatever the answer
        s:close()
    end)

    it("writes to the given file and stops", function()
        local dir = H.tmpdir()
        local col = C.start(0, dir .. "/out.jsonl")
        local s = connect(col)
        assert.are.equal(200, (exchange(s, post(body_of({ SPAN }), "/other"))))
        s:close()
        col:wait_spans(1)
        assert.truthy(H.read_file(dir .. "/out.jsonl"):find("00f067aa0ba902b7", 1, true))
        assert.are.equal("http://127.0.0.1:" .. col.port .. "/v1/traces", col:url())
        col:stop()
        assert.is_nil(socket.connect("127.0.0.1", col.port))
    end)
end)
