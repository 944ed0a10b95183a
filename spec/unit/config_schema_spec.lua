-- Unit specs for lua/levee/schema.lua: the schema drives levee.config's validation (its keys,
-- defaults and ranges), and docs/configuration.md is what scripts/config-docs.lua writes from it.

local config = require("levee.config")
local schema = require("levee.schema")

local SRC = os.getenv("LEVEE_SRC") or "."
local REGENERATE = "LUA_PATH='lua/?.lua;;' lua5.4 scripts/config-docs.lua > docs/configuration.md"

-- The smallest configuration with every optional table that is off by default turned on.
local function minimal()
    return {
        upstreams = { api = { servers = { "127.0.0.1:9000" }, health = true } },
        routes = { { name = "r", upstream = "api", breaker = true, idempotency = true,
            fault = { abort = { status = 503 }, delay = { time = "1s" }, reset = {},
                throttle = { rate = "1KiB" } },
            rate_limit = { rate = 10 }, concurrency = { max = 10 } } },
    }
end

-- The path of a schema key's first instance in minimal(): routes[] -> routes[1],
-- upstreams.<name> -> upstreams.api.
local function instance(key)
    return (key:gsub("%[%]", "[1]"):gsub("<name>", "api"))
end

-- Sets the value of a schema key in a configuration table, making the tables on the way.
local function set(cfg, key, value)
    local parts = {}
    local k = key
    while k ~= "" do
        local parent, name = schema.split(k)
        table.insert(parts, 1, name)
        k = parent
    end
    local t = cfg
    for i, name in ipairs(parts) do
        local field = name == "[]" and 1 or name == "<name>" and "api" or name
        if i == #parts then
            t[field] = value
        else
            if type(t[field]) ~= "table" then
                t[field] = {}
            end
            t = t[field]
        end
    end
    return cfg
end

local function compile(cfg)
    return config.compile_table(cfg, "t")
end

local function errors_of(cfg)
    local c, errs = compile(cfg)
    assert.is_nil(c, "expected errors")
    return errs
end

local function contains(list, s)
    for _, x in ipairs(list) do
        if x == s then
            return true
        end
    end
    return false
end

-- The normalized value of a schema key's first instance (the layout core/script/config.h
-- mirrors: `flat` tables merge into the table around them, durations end in "_ms").
local function normalized(c, key)
    local chain = {}
    local k = key
    while k ~= "" do
        table.insert(chain, 1, schema.row(k))
        k = schema.split(k)
    end
    local t, prefix = c, ""
    for i = 1, #chain - 1 do
        local row = chain[i]
        if row.name == "[]" or row.name == "<name>" then
            t = t[1]
        elseif row.flat then
            prefix = row.flat
        else
            t, prefix = t[row.name], ""
        end
        assert(type(t) == "table", "no normalized table for " .. row.key)
    end
    local row = chain[#chain]
    return t[row.out or (prefix .. row.name .. (row.type == "duration" and "_ms" or ""))]
end

describe("docs/configuration.md", function()
    it("is what scripts/config-docs.lua writes from the schema", function()
        local p = io.popen("cd '" .. SRC .. "' && LUA_PATH='lua/?.lua;;' lua5.4 scripts/config-docs.lua")
        local generated = p:read("a")
        assert.is_true(p:close(), "scripts/config-docs.lua failed")
        local f = assert(io.open(SRC .. "/docs/configuration.md", "rb"))
        local current = f:read("a")
        f:close()
        assert(current == generated, "docs/configuration.md is not what the schema says; "
            .. "regenerate it: " .. REGENERATE)
    end)

    it("says on its first line that it is generated and how to regenerate it", function()
        local f = assert(io.open(SRC .. "/docs/configuration.md", "rb"))
        local first = f:read("l")
        f:close()
        assert.truthy(first:find("Generated from lua/levee/schema.lua", 1, true))
        assert.truthy(first:find(REGENERATE, 1, true))
    end)

    it("has a row for every key of the schema", function()
        local f = assert(io.open(SRC .. "/docs/configuration.md", "rb"))
        local text = f:read("a")
        f:close()
        for _, row in ipairs(schema.rows) do
            assert.truthy(text:find("\n| `" .. row.key .. "` |", 1, true), row.key)
        end
    end)
end)

describe("the schema", function()
    it("gives every key a type and a one-line doc, once", function()
        local seen = {}
        for _, row in ipairs(schema.rows) do
            assert.is_nil(seen[row.key], row.key)
            seen[row.key] = true
            assert.is_string(row.type, row.key)
            assert.truthy(type(row.doc) == "string" and row.doc ~= "" and not row.doc:find("\n"),
                row.key)
            if row.parent ~= "" then
                assert.is_table(schema.row(row.parent), row.key .. ": no row for its table")
            end
        end
    end)

    it("holds every default that a minimal configuration is normalized with", function()
        local c = assert(compile(minimal()))
        local checked = 0
        -- How a default written in the schema looks once normalized.
        local normalize = {
            size = config.parse_size,
            request_buffer = config.parse_size,
            duration = config.parse_duration,
            listen = function(d)
                local host, port = config.parse_hostport(d[1])
                return { { addr = { host = host, port = port } } }
            end,
            error_log = function(d)
                assert.are.equal("stderr", d)
                return nil -- stderr is the absence of a file
            end,
            statuses = function(d)
                local out = {}
                for _, class in ipairs(d) do
                    local base = tonumber(class:match("^(%d)xx$")) * 100
                    for s = base, base + 99 do
                        out[#out + 1] = s
                    end
                end
                return out
            end,
            retry_on = function(d)
                return { errors = d, statuses = {} }
            end,
        }
        for _, row in ipairs(schema.rows) do
            if row.default ~= nil or row.default_ref then
                local want
                if row.default_ref then
                    want = normalized(c, row.default_ref)
                else
                    want = (normalize[row.type] or function(x)
                        return x
                    end)(row.default)
                end
                if row.min_ref then
                    want = math.max(want, normalized(c, row.min_ref))
                end
                if row.max_ref then
                    want = math.min(want, normalized(c, row.max_ref))
                end
                local got = normalized(c, row.key)
                if row.key == "error_log" then
                    got = c.error_log_path
                end
                assert.are.same(want, got, row.key)
                checked = checked + 1
            end
        end
        assert.is_true(checked >= 60, "only " .. checked .. " defaults checked")
    end)

    it("is the list of keys each table accepts: any other key is refused", function()
        local tables = 0
        for _, row in ipairs(schema.rows) do
            local allowed = schema.allowed(row.key)
            if #allowed > 0 then
                tables = tables + 1
                local key = row.key .. ".zzz_unknown"
                local errs = errors_of(set(minimal(), key, 1))
                local want = "t: " .. instance(key) .. ": unknown key; expected one of: "
                    .. table.concat(allowed, ", ")
                assert.is_true(contains(errs, want), want .. "\nnot in:\n" .. table.concat(errs, "\n"))
            end
        end
        local errs = errors_of(set(minimal(), "zzz_unknown", 1))
        assert.are.same({ "t: zzz_unknown: unknown key; expected one of: "
            .. table.concat(schema.allowed(""), ", ") }, errs)
        assert.is_true(tables >= 17, "only " .. tables .. " tables")
    end)

    it("has every key the examples use", function()
        local function walk(v, key, where)
            if type(v) ~= "table" then
                return
            end
            for k, x in pairs(v) do
                local sub
                if math.type(k) == "integer" then
                    sub = key .. "[]"
                elseif key == "upstreams" then
                    sub = "upstreams.<name>"
                else
                    sub = key == "" and k or key .. "." .. k
                end
                local row = schema.row(sub) -- raises for a key the schema does not have
                if row.type ~= "methods" and row.type ~= "statuses" and row.type ~= "retry_on"
                    and row.type ~= "servers" then
                    walk(x, sub, where)
                end
            end
        end
        for _, name in ipairs({ "levee.lua", "minimal.lua", "payments.lua", "read-heavy.lua" }) do
            local path = SRC .. "/examples/" .. name
            local t = dofile(path)
            assert.is_table((compile(t)), name)
            walk(t, "", name)
        end
    end)

    it("gives the range a value outside it is refused with", function()
        local tested = 0
        -- A value just outside a bound, as written in a configuration file.
        local function beyond(row, bound, dir)
            if row.type == "size" or row.type == "request_buffer" then
                return config.parse_size(bound) + dir
            elseif row.type == "duration" then
                local ms = config.parse_duration(bound) + dir
                return ms >= 0 and (ms .. "ms") or nil
            elseif row.type == "integer" then
                return bound + dir
            elseif row.type == "number" then
                return bound + dir * 0.5
            end
        end
        for _, row in ipairs(schema.rows) do
            local cases = {}
            if row.gt then
                cases[#cases + 1] = beyond(row, row.gt, 0)
            elseif row.min then
                cases[#cases + 1] = beyond(row, row.min, -1)
            end
            if row.max then
                cases[#cases + 1] = beyond(row, row.max, 1)
            end
            -- The words of Cx's range text, with the bounds as the schema writes them.
            local range
            if row.min_ref or row.max_ref then
                range = tostring(row.min or row.max)
            elseif row.min and row.max then
                range = " between " .. row.min .. " and " .. row.max
            elseif row.gt and row.max then
                range = " > " .. row.gt .. " and <= " .. row.max
            elseif row.gt then
                range = " > " .. row.gt
            elseif row.min then
                range = " >= " .. row.min
            elseif row.max then
                range = " <= " .. row.max
            end
            for _, v in pairs(cases) do
                local path = instance(row.key)
                local cfg = set(minimal(), row.key, v)
                if row.key:find("slow_call.ratio", 1, true) then
                    set(cfg, "routes[].breaker.slow_call.duration", "1s")
                end
                local errs = errors_of(cfg)
                local found
                for _, e in ipairs(errs) do
                    if e:sub(1, #path + 5) == "t: " .. path .. ": " then
                        found = e
                    end
                end
                assert.truthy(found, row.key .. " = " .. tostring(v) .. " accepted")
                assert.truthy(found:find(range, 1, true), found .. " does not say " .. range)
                tested = tested + 1
            end
        end
        assert.is_true(tested >= 40, "only " .. tested .. " bounds tested")
    end)

    it("is what levee.config reads its defaults, ranges and keys from", function()
        -- A fresh levee.config over an edited schema follows the edit.
        local saved_schema, saved_config = package.loaded["levee.schema"], package.loaded["levee.config"]
        package.loaded["levee.schema"], package.loaded["levee.config"] = nil, nil
        local ok, err = pcall(function()
            local s = require("levee.schema")
            local row = s.row("limits.body_size")
            row.default, row.max = "1MiB", "2MiB"
            local timeout = s.row("routes[].timeout")
            timeout.default = "3s"
            local cfg = require("levee.config")
            local c = assert(cfg.compile_table(minimal(), "t"))
            assert.are.equal(1024 * 1024, c.limits.body_size)
            assert.are.equal(3000, c.routes[1].timeout_ms)
            assert.are.equal(3000, c.routes[1].try_timeout_ms) -- its default is the timeout's
            local _, errs = cfg.compile_table(set(minimal(), "limits.body_size", "3MiB"), "t")
            assert.are.same({ 't: limits.body_size: expected a size <= 2MiB, got "3MiB"' }, errs)
        end)
        package.loaded["levee.schema"], package.loaded["levee.config"] = saved_schema, saved_config
        assert(ok, err)
    end)
end)
