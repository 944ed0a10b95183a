-- config-docs.lua: writes docs/configuration.md from lua/levee/schema.lua, the list of every
-- configuration key that levee.config validates with. Run from the repository's root:
--
--   LUA_PATH='lua/?.lua;;' lua5.4 scripts/config-docs.lua > docs/configuration.md
--
-- spec/unit/config_schema_spec.lua fails when docs/configuration.md is not this output.

local schema = require("levee.schema")

local REGENERATE = "LUA_PATH='lua/?.lua;;' lua5.4 scripts/config-docs.lua > docs/configuration.md"

local TYPES = {
    size = "size", duration = "duration", integer = "integer", number = "number",
    string = "string", boolean = "boolean", enum = "enum", hostport = "host:port",
    methods = "list of method names", file = "file path", ["function"] = "function",
    table = "table", list = "list",
}

-- A value as it is written in a configuration file.
local function literal(v)
    if type(v) == "string" then
        return string.format("%q", v)
    elseif type(v) == "table" then
        if #v == 0 then
            return "{}"
        end
        local parts = {}
        for i, x in ipairs(v) do
            parts[i] = literal(x)
        end
        return "{ " .. table.concat(parts, ", ") .. " }"
    end
    return tostring(v)
end

local function code(s)
    return "`" .. s .. "`"
end

-- Another key, named as seen from `row`: "timeout" from a sibling, "retry.buffer" from
-- routes[].request_buffer.
local function ref_name(row, ref)
    local scope = row.parent
    while scope ~= "" and ref:sub(1, #scope + 1) ~= scope .. "." do
        scope = schema.split(scope)
    end
    return code(scope == "" and ref or ref:sub(#scope + 2))
end

local function bound(row, k)
    if row[k .. "_ref"] then
        return ref_name(row, row[k .. "_ref"])
    end
    return row[k] ~= nil and tostring(row[k]) or nil
end

local function range_of(row)
    if row.range_doc then
        return row.range_doc
    end
    if row.choices then
        local q = {}
        for i, c in ipairs(row.choices) do
            q[i] = code(literal(c))
        end
        return table.concat(q, ", ")
    end
    local min, max, gt = bound(row, "min"), bound(row, "max"), row.gt
    if min and max then
        return min .. " – " .. max
    elseif gt and max then
        return "> " .. gt .. ", ≤ " .. max
    elseif gt then
        return "> " .. gt
    elseif min then
        return "≥ " .. min
    elseif max then
        return "≤ " .. max
    elseif row.what then
        return row.what
    end
    return ""
end

local function default_of(row)
    if row.default_doc then
        return row.default_doc
    elseif row.default_ref then
        return ref_name(row, row.default_ref)
    elseif row.default ~= nil then
        return code(literal(row.default))
    elseif row.required then
        return "**required**"
    end
    return "—"
end

local function cell(s)
    return (s:gsub("|", "\\|"))
end

local out = {}
local function say(s)
    out[#out + 1] = s
end

say("<!-- Generated from lua/levee/schema.lua by scripts/config-docs.lua: do not edit. "
    .. "Regenerate with " .. REGENERATE .. " -->")
say("# Configuration reference")
say("")
say(schema.intro)
for _, s in ipairs(schema.sections) do
    say("")
    say((s.title:find("[%.%[]") and "### " or "## ") .. (s.title:find(" ") and s.title or code(s.title)))
    say("")
    if s.intro then
        say(s.intro)
        say("")
    end
    say("| key | type | range | default | meaning |")
    say("|---|---|---|---|---|")
    for _, row in ipairs(s.rows) do
        say("| " .. table.concat({ code(row.key), cell(row.type_doc or TYPES[row.type]),
            cell(range_of(row)), cell(default_of(row)), cell(row.doc) }, " | ") .. " |")
    end
    if s.notes then
        say("")
        say(s.notes)
    end
end
say("")
say(schema.outro)
io.write(table.concat(out, "\n"), "\n")
