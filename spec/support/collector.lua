-- spec/support/collector.lua: the test OTLP collector (otlp_collector.lua) for specs.
--
--   local C = require("collector")
--   local col = C.start(port, outfile, status) -- port 0/nil: a free one; outfile nil: a temp
--                                              -- file; status: 200 (default), 503, "503,200"
--   col.port, col:url()                        -- "http://127.0.0.1:PORT/v1/traces"
--   col:spans()                                -- every span received so far (flat list)
--   col:wait_spans(n, timeout)                 -- polls until at least n spans arrived
--   col:bodies()                               -- every request body, decoded (cjson)
--   col:stop()                                 -- also done by H.cleanup()
--
-- A span: { trace_id, span_id, parent_id (nil for a root), name, kind, attrs = { key = value },
-- status (the status code, 0 when unset), status_message, start_ns, end_ns,
-- dropped_attrs, resource = { ["service.name"] = ..., ["service.version"] = ... },
-- scope = { name =, version = } }. Attribute values: stringValue as a string, intValue as an
-- integer, boolValue as a boolean, doubleValue as a number.
-- The process is started with helpers' H.spawn, so H.cleanup() stops it.

local cjson = require("cjson")
local H = require("helpers")

local C = {}
local Collector = {}
Collector.__index = Collector

--- Starts the collector; returns once it listens.
function C.start(port, outfile, status)
    local dir = H.tmpdir()
    outfile = outfile or (dir .. "/bodies.jsonl")
    local argv = { "lua5.4", H.src .. "/spec/support/otlp_collector.lua", tostring(port or 0), outfile }
    if status then argv[#argv + 1] = tostring(status) end
    local stdout, stderr = dir .. "/stdout", dir .. "/stderr"
    local pid = H.spawn(argv, { stdout = stdout, stderr = stderr }, "collector")
    local got
    local ok, why = pcall(H.wait_until, function()
        got = tonumber(H.read_file(stdout):match("ready [^\n]*:(%d+)\n"))
        if got then return true end
        if not H.proc.alive(pid) then error("exited", 0) end
    end, 5 * H.scale, "the OTLP collector to listen")
    if not ok then
        H.proc.kill(pid, "KILL")
        error("otlp_collector.lua did not start (" .. tostring(why) .. "): " .. H.read_file(stderr), 2)
    end
    return setmetatable({ pid = pid, port = got, outfile = outfile, dir = dir }, Collector)
end

function Collector:url(path)
    return "http://127.0.0.1:" .. self.port .. (path or "/v1/traces")
end

function Collector:stop()
    if self.pid and H.proc.alive(self.pid) then
        H.proc.kill(self.pid, "TERM")
        if H.proc.wait(self.pid, 5) == nil then
            H.proc.kill(self.pid, "KILL")
            H.proc.wait(self.pid, 5)
        end
    end
end

--- Every body received so far, decoded (a body that is not JSON raises).
function Collector:bodies()
    local out = {}
    for line in H.read_file(self.outfile):gmatch("([^\n]*)\n") do
        if line ~= "" then out[#out + 1] = cjson.decode(line) end
    end
    return out
end

local function nonnull(v)
    if v == cjson.null then return nil end
    return v
end

local function any_value(v)
    if type(v) ~= "table" then return nil end
    if v.stringValue ~= nil then return nonnull(v.stringValue) end
    if v.intValue ~= nil then return math.tointeger(tonumber(v.intValue)) or tonumber(v.intValue) end
    if v.boolValue ~= nil then return nonnull(v.boolValue) end
    if v.doubleValue ~= nil then return tonumber(v.doubleValue) end
    return nil
end

local function attrs_of(list)
    local out = {}
    for _, kv in ipairs(type(list) == "table" and list or {}) do
        if type(kv) == "table" and kv.key then out[kv.key] = any_value(kv.value) end
    end
    return out
end

local function int(s)
    if s == nil or s == cjson.null then return nil end
    return math.tointeger(tonumber(s)) or tonumber(s)
end

--- Every span received so far, in arrival order, flattened out of their requests.
function Collector:spans()
    local out = {}
    for _, body in ipairs(self:bodies()) do
        for _, rs in ipairs(body.resourceSpans or {}) do
            local resource = attrs_of(rs.resource and rs.resource.attributes)
            for _, ss in ipairs(rs.scopeSpans or {}) do
                local scope = type(ss.scope) == "table" and ss.scope or {}
                for _, s in ipairs(ss.spans or {}) do
                    local st = type(s.status) == "table" and s.status or {}
                    out[#out + 1] = {
                        trace_id = nonnull(s.traceId),
                        span_id = nonnull(s.spanId),
                        parent_id = nonnull(s.parentSpanId),
                        name = nonnull(s.name),
                        kind = nonnull(s.kind),
                        attrs = attrs_of(s.attributes),
                        status = nonnull(st.code) or 0,
                        status_message = nonnull(st.message),
                        start_ns = int(s.startTimeUnixNano),
                        end_ns = int(s.endTimeUnixNano),
                        dropped_attrs = nonnull(s.droppedAttributesCount) or 0,
                        resource = resource,
                        scope = { name = nonnull(scope.name), version = nonnull(scope.version) },
                    }
                end
            end
        end
    end
    return out
end

--- Polls until at least n spans arrived; returns them.
function Collector:wait_spans(n, timeout)
    local spans
    H.wait_until(function()
        spans = self:spans()
        return #spans >= n
    end, timeout or 5 * H.scale, n .. " span(s) at the collector")
    return spans
end

return C
