-- levee.config: loads a levee.lua configuration file and turns it into a normalized table.
--
-- compile(path, lua_dir) reads the file as text and runs it in a sandbox (safe standard
-- libraries only, an instruction limit, and a `require` that loads text modules from the
-- file's folder and lua_dir only). It then validates every key of the returned table against
-- levee.schema (the keys each table may hold, their types, ranges and defaults; the rules
-- between keys are here) and collects every error as "FILE:LINE: key.path: message", the line found by levee.keylines.
-- On success it returns the normalized table and the list of files read (for `watch`); on
-- failure nil and the list of errors.
--
-- The normalized table mirrors core/script/config.h field for field, so config.c walks it
-- without decisions: durations are integer milliseconds in `*_ms` keys, sizes are integer
-- bytes, every default is filled in, host:port values are { host =, port = }, method sets are
-- lists of upper-case names, retry.on is { errors = { names }, statuses = { ints } }, and
-- hooks are the function values. dev(url, listen) builds the `levee dev` configuration
-- through the same validation.
--
-- Called by core/script/config.c (lv_config_load, lv_config_dev) and by spec/unit.

local keylines = require("levee.keylines")
local schema = require("levee.schema")

local M = {}

local KiB, MiB, GiB = 1024, 1024 * 1024, 1024 * 1024 * 1024
local SECOND, MINUTE, HOUR = 1000, 60 * 1000, 3600 * 1000

-- Upper bounds that keep values exact in C (uint32 counters, ms and byte counts in 2^53).
local MAX_U32 = 2147483647
local MAX_MS = 1 << 40   -- about 34 years
local MAX_SIZE = 1 << 50 -- 1 PiB

-- Instructions and seconds a configuration file may run while loading (its code, then the
-- validation of what it returned): enough for any table-building code, small enough that an
-- endless loop is an error after a second or two, not a hang. levee's loader (config.c) counts
-- them itself with a C hook and a monotonic clock, and adds a memory cap and guards for the
-- C functions that can run for ever in one call; run alone (spec/unit), this module counts
-- with a Lua hook and os.clock.
local RUN_TICK = 100000
local RUN_TICKS = 2000
local RUN_SECONDS = 2
local RAN_TOO_LONG = "the configuration ran too long (an endless loop?)"
-- Tables nested deeper than this are not searched for metatables: validation never reads
-- that deep (its deepest keys are a few levels down).
local MT_DEPTH = 32
-- Longer error messages from the file are cut (a message is printed and logged as is).
local MAX_ERROR_TEXT = 2000

-- Same names and order as core/base/method.c.
local METHODS = {}
for _, m in ipairs({ "DELETE", "GET", "HEAD", "POST", "PUT", "CONNECT", "OPTIONS", "TRACE",
    "COPY", "LOCK", "MKCOL", "MOVE", "PROPFIND", "PROPPATCH", "SEARCH", "UNLOCK", "BIND",
    "REBIND", "UNBIND", "ACL", "REPORT", "MKACTIVITY", "CHECKOUT", "MERGE", "M-SEARCH",
    "NOTIFY", "SUBSCRIBE", "UNSUBSCRIBE", "PATCH", "PURGE", "MKCALENDAR", "LINK", "UNLINK",
    "SOURCE" }) do
    METHODS[m] = true
end

local RETRY_ERRORS = { "connect-failure", "reset", "timeout", "protocol-error" }
local RETRY_GROUPS = {
    ["5xx"] = {},
    ["gateway-error"] = { 502, 503, 504 },
    ["retriable-4xx"] = { 409, 425, 429 },
}
for s = 500, 599 do
    RETRY_GROUPS["5xx"][#RETRY_GROUPS["5xx"] + 1] = s
end

local join = keylines.join

------------------------------------------------------------------------------------------
-- Values as the user wrote them, for messages.

local function show(v)
    local t = type(v)
    if t == "string" then
        if #v > 60 then
            v = v:sub(1, 57) .. "..."
        end
        return (string.format("%q", v):gsub("\\\n", "\\n"))
    elseif t == "number" then
        if math.type(v) == "float" and v == math.floor(v) and v > -1e15 and v < 1e15 then
            return string.format("%d", v)
        end
        return tostring(v)
    elseif t == "nil" or t == "boolean" then
        return tostring(v)
    end
    return "a " .. t
end

-- n in the largest unit that divides it exactly ("90s" stays "90s", 2048 bytes is "2KiB").
local function fmt_units(n, units, base)
    if n == 0 then
        return "0"
    end
    for _, u in ipairs(units) do
        if n % u[1] == 0 then
            return (n // u[1]) .. u[2]
        end
    end
    return n .. base
end

local function fmt_ms(ms)
    return fmt_units(ms, { { HOUR, "h" }, { MINUTE, "m" }, { SECOND, "s" } }, "ms")
end

local function fmt_size(n)
    return fmt_units(n, { { GiB, "GiB" }, { MiB, "MiB" }, { KiB, "KiB" } }, "B")
end

------------------------------------------------------------------------------------------
-- Units.

local DURATION_UNITS = { ms = 1, s = SECOND, m = MINUTE, h = HOUR }
local SIZE_UNITS = { B = 1, KiB = KiB, MiB = MiB, GiB = GiB }

--- Milliseconds for "250ms", "2s", "1.5s", "5m", "24h", "1h30m" or a number of seconds;
-- nil when the value is not a duration. Rounded to the nearest millisecond.
function M.parse_duration(v)
    local ms
    if type(v) == "number" then
        if v ~= v or v == math.huge or v == -math.huge then
            return nil
        end
        ms = v * SECOND
    elseif type(v) == "string" then
        if v == "" or #v > 64 then
            return nil
        end
        ms = 0
        local pos = 1
        while pos <= #v do
            local num, unit, after = v:match("^(%d+%.?%d*)(%a+)()", pos)
            if not num then
                num, unit, after = v:match("^(%.%d+)(%a+)()", pos)
            end
            if not num or not DURATION_UNITS[unit] then
                return nil
            end
            ms = ms + tonumber(num) * DURATION_UNITS[unit]
            pos = after
        end
    else
        return nil
    end
    return math.floor(ms + 0.5)
end

--- Bytes for "512B", "64KiB", "1MiB", "1GiB", "1.5MiB" or a number of bytes; nil otherwise.
function M.parse_size(v)
    local n
    if type(v) == "number" then
        if v ~= v or v == math.huge or v == -math.huge then
            return nil
        end
        n = v
    elseif type(v) == "string" then
        if #v > 64 then
            return nil
        end
        local num, unit = v:match("^(%d+%.?%d*)(%a+)$")
        if not num then
            num, unit = v:match("^(%.%d+)(%a+)$")
        end
        if not num or not SIZE_UNITS[unit] then
            return nil
        end
        n = tonumber(num) * SIZE_UNITS[unit]
    else
        return nil
    end
    return math.floor(n)
end

--- host, port for "host:port", "1.2.3.4:80" or "[::1]:80"; nil and a reason otherwise.
function M.parse_hostport(s)
    if type(s) ~= "string" or #s > 300 then
        return nil, "syntax"
    end
    local host, port = s:match("^%[([%x:%.]+)%]:(%d+)$")
    if not host then
        host, port = s:match("^([%w%.%-_]+):(%d+)$")
        if host and (host:match("^[%.%-]") or host:match("%.%.")) then
            host = nil
        end
    end
    if not host then
        return nil, "syntax"
    end
    port = tonumber(port)
    if port < 1 or port > 65535 then
        return nil, "port"
    end
    return host, port
end

------------------------------------------------------------------------------------------
-- Validation context: collects errors by key path, reads typed values.

local Cx = {}
Cx.__index = Cx

-- `checks`: the checks of `levee check` (README "Command line"), from levee's loader:
-- { tls_pair = function(cert, key) -> nil or message, dir_writable = function(dir) -> nil or
-- message }; nil otherwise.
local function new_cx(file, lines, base_dir, checks)
    return setmetatable({ file = file, lines = lines, base_dir = base_dir, errors = {},
        warnings = {}, checks = checks }, Cx)
end

function Cx:err(path, msg)
    self.errors[#self.errors + 1] = { path = path, msg = msg, n = #self.errors + 1 }
end

-- A probable mistake: reported ("FILE:LINE: warning: key.path: message"), never fatal.
function Cx:warn(path, msg)
    self.warnings[#self.warnings + 1] = { path = path, msg = msg, n = #self.warnings + 1 }
end

-- Line of a key path in the file; 0 for a table built in code (no file).
function Cx:line(path)
    if not self.lines then
        return 0
    end
    return keylines.line(self.lines, path)
end

-- Errors as "FILE:LINE: path: message", in line order (then in the order found); with `tag`
-- ("warning: "), the warnings.
function Cx:formatted(tag)
    local es = {}
    for _, e in ipairs(tag and self.warnings or self.errors) do
        es[#es + 1] = { line = self:line(e.path), n = e.n, path = e.path, msg = e.msg }
    end
    table.sort(es, function(a, b)
        if a.line ~= b.line then
            return a.line < b.line
        end
        return a.n < b.n
    end)
    local out = {}
    for _, e in ipairs(es) do
        local where = self.lines and self.file .. ":" .. e.line .. ": " or self.file .. ": "
        out[#out + 1] = where .. (tag or "") .. (e.path ~= "" and e.path .. ": " or "") .. e.msg
    end
    return out
end

local function distance(a, b)
    local prev = {}
    for j = 0, #b do
        prev[j] = j
    end
    for i = 1, #a do
        local cur = { [0] = i }
        for j = 1, #b do
            local cost = a:sub(i, i) == b:sub(j, j) and 0 or 1
            cur[j] = math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
        end
        prev = cur
    end
    return prev[#b]
end

local function suggest(key, allowed)
    local best, bd = nil, 3
    for _, k in ipairs(allowed) do
        local d = distance(key:lower(), k)
        if d < bd then
            best, bd = k, d
        end
    end
    return best
end

-- Keys of t in a stable order (strings sorted, then numbers), for deterministic messages.
local function sorted_keys(t)
    local ks = {}
    for k in pairs(t) do
        ks[#ks + 1] = k
    end
    table.sort(ks, function(a, b)
        local ta, tb = type(a), type(b)
        if ta ~= tb then
            return ta > tb
        end
        if ta == "string" or ta == "number" then
            return a < b
        end
        return false
    end)
    return ks
end

--- A table of named fields: reports a wrong type and every unknown key. Returns the table,
-- or {} (so defaults apply) when v is nil or not a table.
function Cx:record(v, path, allowed)
    if v == nil then
        return {}
    end
    if type(v) ~= "table" then
        self:err(path, "expected a table, got " .. show(v))
        return {}
    end
    local known = {}
    for _, k in ipairs(allowed) do
        known[k] = true
    end
    for _, k in ipairs(sorted_keys(v)) do
        if type(k) ~= "string" then
            self:err(join(path, k), "unexpected positional value; expected one of: "
                .. table.concat(allowed, ", "))
        elseif not known[k] then
            local s = suggest(k, allowed)
            self:err(join(path, k), "unknown key" .. (s and (' (did you mean "' .. s .. '"?)')
                or "; expected one of: " .. table.concat(allowed, ", ")))
        end
    end
    return v
end

--- A sequence: reports a wrong type and any key that is not 1..n. Returns the list or {}.
function Cx:list(v, path, what)
    if v == nil then
        return {}
    end
    if type(v) ~= "table" then
        self:err(path, "expected a list of " .. what .. ", got " .. show(v))
        return {}
    end
    local n = #v
    local ok = true
    for _, k in ipairs(sorted_keys(v)) do
        if math.type(k) ~= "integer" or k < 1 or k > n then
            self:err(join(path, k), "unexpected key in a list of " .. what)
            ok = false
        end
    end
    if not ok then
        local out = {}
        for i = 1, n do
            out[i] = v[i]
        end
        return out
    end
    return v
end

local function range_text(o, fmt)
    fmt = fmt or tostring
    if o.min and o.max then
        return " between " .. fmt(o.min) .. " and " .. fmt(o.max)
    elseif o.gt then
        return o.max and (" > " .. fmt(o.gt) .. " and <= " .. fmt(o.max)) or (" > " .. fmt(o.gt))
    elseif o.min then
        return " >= " .. fmt(o.min)
    elseif o.max then
        return " <= " .. fmt(o.max)
    end
    return ""
end

-- Checks x against o.min/o.max/o.gt and a silent type cap; returns the range text that
-- failed, or nil.
local function out_of_range(x, o, cap, fmt)
    if (o.min and x < o.min) or (o.max and x > o.max) or (o.gt and x <= o.gt) then
        return range_text(o, fmt)
    end
    if cap and x > cap then
        return " <= " .. (fmt or tostring)(cap)
    end
end

-- Every reader takes (v, path, o) where o has default, required and range keys, reports
-- what is wrong, and returns the normalized value (o.default when v is nil or invalid).
local function missing(self, path, o, what)
    if o.required then
        self:err(path, "required key is missing; expected " .. what)
    end
    return o.default
end

function Cx:integer(v, path, o)
    o = o or {}
    local what = "integer" .. range_text(o)
    if v == nil then
        return missing(self, path, o, what)
    end
    local x = type(v) == "number" and math.tointeger(v) or nil
    if x == nil then
        self:err(path, "expected " .. what .. ", got " .. show(v))
        return o.default
    end
    local bad = out_of_range(x, o, MAX_U32)
    if bad then
        self:err(path, "expected integer" .. bad .. ", got " .. show(v))
        return o.default
    end
    return x
end

function Cx:number(v, path, o)
    o = o or {}
    local what = "number" .. range_text(o)
    if v == nil then
        return missing(self, path, o, what)
    end
    if type(v) ~= "number" or v ~= v or out_of_range(v, o, 1e15) then
        self:err(path, "expected " .. what .. ", got " .. show(v))
        return o.default
    end
    return v + 0.0
end

function Cx:boolean(v, path, o)
    o = o or {}
    if v == nil then
        return missing(self, path, o, "true or false")
    end
    if type(v) ~= "boolean" then
        self:err(path, "expected true or false, got " .. show(v))
        return o.default
    end
    return v
end

function Cx:func(v, path, o)
    o = o or {}
    if v == nil then
        return missing(self, path, o, "a function")
    end
    if type(v) ~= "function" then
        self:err(path, "expected a function, got " .. show(v))
        return nil
    end
    return v
end

--- A string; o.pattern (a Lua pattern) and o.what (its description) restrict it.
function Cx:string(v, path, o)
    o = o or {}
    local what = o.what or "a string"
    if v == nil then
        return missing(self, path, o, what)
    end
    if type(v) ~= "string" or (o.maxlen and #v > o.maxlen) or (o.pattern and not v:match(o.pattern)) then
        self:err(path, "expected " .. what .. ", got " .. show(v))
        return o.default
    end
    return v
end

function Cx:enum(v, path, o)
    local quoted = {}
    for i, c in ipairs(o.choices) do
        quoted[i] = '"' .. c .. '"'
    end
    local what = #quoted == 2 and (quoted[1] .. " or " .. quoted[2])
        or (table.concat(quoted, ", ", 1, #quoted - 1) .. " or " .. quoted[#quoted])
    if v == nil then
        return missing(self, path, o, what)
    end
    for _, c in ipairs(o.choices) do
        if v == c then
            return v
        end
    end
    self:err(path, "expected " .. what .. ", got " .. show(v))
    return o.default
end

local DURATION_SYNTAX = 'a duration like "250ms", "2s", "5m", "24h" or a number of seconds'
local SIZE_SYNTAX = 'a size like "512B", "64KiB", "16MiB", "1GiB" or a number of bytes'

-- A duration or a size: parsed, checked against its range, or an error at `path`.
local function measure(cx, v, path, o, parse, syntax, what, max, fmt)
    o = o or {}
    if v == nil then
        return missing(cx, path, o, syntax)
    end
    local n = parse(v)
    if n == nil or (type(v) == "number" and v < 0) then
        cx:err(path, "expected " .. syntax .. ", got " .. show(v))
        return o.default
    end
    local bad = out_of_range(n, o, max, fmt)
    if bad then
        cx:err(path, "expected " .. what .. bad .. ", got " .. show(v))
        return o.default
    end
    return n
end

-- Milliseconds as hours, minutes, seconds and milliseconds ("1h23m20s").
local function fmt_hms(ms)
    local out = ""
    for _, u in ipairs({ { HOUR, "h" }, { MINUTE, "m" }, { SECOND, "s" }, { 1, "ms" } }) do
        if ms >= u[1] then
            out = out .. (ms // u[1]) .. u[2]
            ms = ms % u[1]
        end
    end
    return out == "" and "0" or out
end

-- A bare number of at least this many seconds for a duration probably meant milliseconds.
local BARE_SECONDS_WARN = 1000

--- Milliseconds; o.min/o.max/o.gt are in milliseconds too.
function Cx:duration(v, path, o)
    local n = measure(self, v, path, o, M.parse_duration, DURATION_SYNTAX, "a duration", MAX_MS,
        fmt_ms)
    if type(v) == "number" and v >= BARE_SECONDS_WARN and n == M.parse_duration(v) then
        self:warn(path, "a bare number is seconds: " .. show(v) .. " is " .. fmt_hms(n)
            .. '; write "' .. show(v) .. 'ms" if milliseconds were meant')
    end
    return n
end

--- Bytes; o.min/o.max are in bytes.
function Cx:size(v, path, o)
    return measure(self, v, path, o, M.parse_size, SIZE_SYNTAX, "a size", MAX_SIZE, fmt_size)
end

local HOSTPORT_SYNTAX = 'expected "host:port" (like "127.0.0.1:8080" or "[::1]:8080")'

--- { host, port } or nil.
function Cx:hostport(v, path, o)
    o = o or {}
    if v == nil then
        missing(self, path, o, '"host:port"')
        return nil
    end
    local host, why = M.parse_hostport(v)
    if not host then
        if why == "port" then
            self:err(path, "expected a port between 1 and 65535, got " .. show(v))
        else
            self:err(path, HOSTPORT_SYNTAX .. ", got " .. show(v))
        end
        return nil
    end
    return { host = host, port = why }
end

--- A readable file, resolved against the configuration file's folder; nil if not.
function Cx:readable_file(v, path, o)
    local s = self:string(v, path, { required = o and o.required, pattern = "^[^%z]+$",
        what = "a file path" })
    if not s then
        return nil
    end
    local p = s
    if p:sub(1, 1) ~= "/" and self.base_dir and self.base_dir ~= "." then
        p = self.base_dir .. "/" .. p
    end
    local f, err = io.open(p, "rb")
    if f then
        -- An empty file reads as nil without an error; a folder fails with one.
        local _, rerr = f:read(1)
        f:close()
        if not rerr then
            return p
        end
        err = rerr:gsub("^.*: ", "")
    else
        err = err:gsub("^.*: ", "")
    end
    self:err(path, "cannot read " .. show(p) .. ": " .. err)
    return nil
end

--- A list of HTTP method names, deduplicated, in the order written; nil when absent.
function Cx:methods(v, path, o)
    if v == nil then
        return o and o.default
    end
    local list = self:list(v, path, "method names")
    local out, seen = {}, {}
    for i, m in ipairs(list) do
        if type(m) == "string" and METHODS[m] then
            if not seen[m] then
                seen[m] = true
                out[#out + 1] = m
            end
        else
            self:err(join(path, i), 'expected an upper-case HTTP method name like "GET", got '
                .. show(m))
        end
    end
    if #list == 0 and type(v) == "table" then
        self:err(path, "expected at least one method name")
    end
    return out
end

------------------------------------------------------------------------------------------
-- Keys, read as levee.schema describes them.

-- A row's default and range in the readers' units (milliseconds, bytes, floats), once.
local row_opts_cache = {}
local function row_opts(row)
    local o = row_opts_cache[row]
    if o then
        return o
    end
    local conv = function(x)
        return x
    end
    if row.type == "duration" then
        conv = M.parse_duration
    elseif row.type == "size" or row.type == "request_buffer" then
        conv = M.parse_size
    end
    o = { required = row.required, choices = row.choices, pattern = row.pattern,
        maxlen = row.maxlen, what = row.what }
    for _, k in ipairs({ "default", "min", "max", "gt" }) do
        if row[k] ~= nil and type(row[k]) ~= "table" then
            o[k] = conv(row[k])
            assert(o[k] ~= nil, row.key)
        end
    end
    if row.type == "number" and o.default then
        o.default = o.default + 0.0 -- a number key is a double in C
    end
    o.per_read = row.min_ref or row.max_ref or row.default_ref or type(row.default) == "table"
    row_opts_cache[row] = o
    return o
end

local function copy_list(t)
    local out = {}
    for i, x in ipairs(t) do
        out[i] = x
    end
    return out
end

-- A row's default as written in the schema (a fresh copy of a list).
local function default_of(key)
    local d = schema.row(key).default
    return type(d) == "table" and copy_list(d) or d
end

-- Options of one read: the row's, with the bounds and default that refer to other keys' values
-- (`vals`, by key, read earlier) filled in; a default stays within such bounds.
local function read_opts(row, vals)
    local o = row_opts_cache[row] or row_opts(row)
    if not o.per_read then
        return o
    end
    local r = {}
    for k, x in pairs(o) do
        r[k] = x
    end
    if type(row.default) == "table" then
        r.default = copy_list(row.default)
    end
    if row.default_ref then
        r.default = vals[row.default_ref]
    end
    if row.min_ref then
        r.min = vals[row.min_ref]
        r.default = math.max(r.default, r.min)
    end
    if row.max_ref then
        r.max = vals[row.max_ref]
        r.default = math.min(r.default, r.max)
    end
    return r
end

local READERS = {
    size = Cx.size,
    duration = Cx.duration,
    integer = Cx.integer,
    number = Cx.number,
    boolean = Cx.boolean,
    enum = Cx.enum,
    hostport = Cx.hostport,
    methods = Cx.methods,
    file = Cx.readable_file,
    ["function"] = Cx.func,
    string = function(cx, v, path, o)
        return cx:string(v, path, o)
    end,
}

-- Reads the value `v` of a key at `path`; `vals` gets it for the keys that refer to it.
local function read_row(cx, row, v, path, vals)
    local read = READERS[row.type]
    assert(read, row.key)
    local o = row_opts_cache[row] or row_opts(row)
    local x = read(cx, v, path, o.per_read and read_opts(row, vals) or o)
    if row.lower and x then
        x = x:lower()
    end
    vals[row.key] = x
    return x
end

--- Reads the value `v` of the key `key` at `path`.
local function read_value(cx, key, v, path, vals)
    return read_row(cx, schema.row(key), v, path, vals)
end

-- The field of the normalized table a key's value goes to (a key always has the same `prefix`,
-- its table's `flat`).
local out_names = {}
local function out_name(row, prefix)
    local name = out_names[row]
    if not name then
        name = row.out or ((prefix or "") .. row.name .. (row.type == "duration" and "_ms" or ""))
        out_names[row] = name
    end
    return name
end

-- Keys read by a function of their own (see levee.schema), and checks made once a key is read:
-- both fn(cx, v, path, out, st, t), v the key's value, out the normalized table being built,
-- st the state of the load, t the table the key is in.
local CUSTOM, AFTER = {}, {}

--- Reads every key of the table `key` (a record already checked by Cx:record) into `out`.
local function read_table(cx, key, t, path, out, st, prefix)
    for _, row in ipairs(schema.children(key)) do
        local v, p = t[row.name], join(path, row.name)
        if CUSTOM[row.key] then
            CUSTOM[row.key](cx, v, p, out, st, t)
        elseif row.type == "table" then
            local sub = cx:record(v, p, schema.allowed(row.key))
            if row.flat then
                read_table(cx, row.key, sub, p, out, st, row.flat)
            else
                out[row.name] = {}
                read_table(cx, row.key, sub, p, out[row.name], st)
            end
        else
            out[out_names[row] or out_name(row, prefix)] = read_row(cx, row, v, p, st.vals)
        end
        if AFTER[row.key] then
            AFTER[row.key](cx, v, p, out, st, t)
        end
    end
    return out
end

-- A table key that `true` turns on with its defaults and nil or `false` leaves off.
local function switch(cx, key, v, path, st, off)
    if v == nil or v == false then
        return off
    end
    if v == true then
        v = {}
    end
    local t = cx:record(v, path, schema.allowed(key))
    return read_table(cx, key, t, path, { enabled = true }, st)
end

-- Top level.

local function listen_entry(cx, v, path, st)
    if type(v) == "table" then
        local t = cx:record(v, path, schema.allowed("listen[]"))
        local addr = read_value(cx, "listen[].addr", t.addr, join(path, "addr"), st.vals)
        local out = { addr = addr }
        if t.tls ~= nil then
            local tp = join(path, "tls")
            local tls = cx:record(t.tls, tp, schema.allowed("listen[].tls"))
            read_table(cx, "listen[].tls", tls, tp, out, st, schema.row("listen[].tls").flat)
            if cx.checks and out.tls_cert and out.tls_key then
                local e = cx.checks.tls_pair(out.tls_cert, out.tls_key)
                if e then
                    cx:err(join(tp, "key"), e)
                end
            end
        end
        return addr and out
    end
    local addr = cx:hostport(v, path)
    return addr and { addr = addr }
end

CUSTOM["listen"] = function(cx, v, path, c, st)
    if v == nil then
        v = default_of("listen")
    elseif type(v) == "string" or (type(v) == "table" and v.addr ~= nil) then
        -- A single address is a list of one; the path stays "listen" for its messages.
        c.listen = { listen_entry(cx, v, path, st) }
        return
    end
    local list = cx:list(v, path, '"host:port" addresses')
    local out, seen = {}, {}
    for i, e in ipairs(list) do
        local p = join(path, i)
        local l = listen_entry(cx, e, p, st)
        if l then
            local key = l.addr.host .. ":" .. l.addr.port
            if seen[key] then
                cx:err(p, "address " .. show(key) .. " is already listed at " .. seen[key])
            else
                seen[key] = p
            end
            out[#out + 1] = l
        end
    end
    if #list == 0 and type(v) == "table" then
        cx:err(path, "expected at least one address")
    end
    c.listen = out
end

CUSTOM["workers"] = function(cx, v, path, c)
    if v == nil then
        c.workers = 1
    elseif v == "auto" then
        c.workers = 0 -- the core counts the CPUs it may run on
    elseif math.type(v) == "integer" then
        if v < 1 or v > 256 then
            cx:err(path, "expected 1 to 256 or \"auto\", got " .. show(v))
        end
        c.workers = v
    else
        cx:err(path, 'expected "auto" or an integer, got ' .. show(v))
    end
end

CUSTOM["admin"] = function(cx, v, path, c)
    if v ~= nil and v ~= false then
        c.admin = cx:hostport(v, path)
        for i, l in ipairs(c.listen) do
            if c.admin and l.addr.host == c.admin.host and l.addr.port == c.admin.port then
                cx:err(path, "address " .. show(v) .. " is also listen[" .. i .. "]")
            end
        end
    end
end

-- A log file path, resolved against the config file's folder; `levee check` also makes sure
-- its folder is writable.
local function log_file(cx, v, path)
    local p = v
    if p:sub(1, 1) ~= "/" and cx.base_dir and cx.base_dir ~= "." then
        p = cx.base_dir .. "/" .. p
    end
    if cx.checks then
        local e = cx.checks.dir_writable(p:match("^(.*)/[^/]*$") or ".")
        if e then
            cx:err(path, "cannot write " .. show(p) .. ": " .. e)
        end
    end
    return p
end

CUSTOM["access_log"] = function(cx, v, path, c)
    if v == nil then
        v = default_of("access_log")
    end
    if v == false then
        c.access_log = "off"
    elseif v == "stdout" or v == "stderr" then
        c.access_log = v
    elseif type(v) == "string" and v ~= "" and not v:find("%z") then
        c.access_log, c.access_log_path = "file", log_file(cx, v, path)
    else
        cx:err(path, 'expected "stdout", "stderr", a file path or false, got ' .. show(v))
        c.access_log = default_of("access_log")
    end
end

-- error_log = "stderr" | "path" (README "Operations"): nil for stderr, else the file path,
-- resolved against the config file's folder like access_log.
CUSTOM["error_log"] = function(cx, v, path, c)
    if v == nil or v == default_of("error_log") then
        return
    elseif type(v) == "string" and v ~= "" and v ~= "stdout" and not v:find("%z") then
        c.error_log_path = log_file(cx, v, path)
        return
    end
    cx:err(path, 'expected "stderr" or a file path, got ' .. show(v))
end

-- Upstreams.

CUSTOM["upstreams"] = function(cx, v, path, c, st)
    local out, by_name = {}, {}
    c.upstreams, st.by_name = out, by_name
    if v == nil then
        return
    end
    if type(v) ~= "table" then
        cx:err(path, "expected a table of upstreams by name, got " .. show(v))
        return
    end
    for _, name in ipairs(sorted_keys(v)) do
        local p = join(path, name)
        if type(name) ~= "string" then
            cx:err(p, "expected upstreams by name: upstreams = { api = { servers = { ... } } }")
        elseif not name:match(schema.NAME_PATTERN) or #name > schema.NAME_MAXLEN then
            cx:err(p, "expected " .. schema.NAME_WHAT .. " as the upstream name, got " .. show(name))
        else
            local u
            if type(v[name]) ~= "table" then
                cx:err(p, "expected an upstream table { servers = { ... } }, got " .. show(v[name]))
            else
                local t = cx:record(v[name], p, schema.allowed("upstreams.<name>"))
                u = read_table(cx, "upstreams.<name>", t, p, { name = name, servers = {} }, st)
            end
            out[#out + 1] = u
            -- A broken upstream is still known by name: no second error on its routes.
            by_name[name] = u or true
        end
    end
end

CUSTOM["upstreams.<name>.servers"] = function(cx, v, sp, u, st)
    if v == nil then
        cx:err(sp, 'required key is missing; expected a list of "host:port"')
    end
    local list = cx:list(v, sp, '"host:port" addresses')
    for i, s in ipairs(list) do
        local hp = read_value(cx, "upstreams.<name>.servers[]", s, join(sp, i), st.vals)
        if hp then
            u.servers[#u.servers + 1] = hp
        end
    end
    if v ~= nil and type(v) == "table" and #list == 0 then
        cx:err(sp, "expected at least one server")
    end
end

CUSTOM["upstreams.<name>.tls"] = function(cx, v, tp, u, st)
    local key = "upstreams.<name>.tls"
    local t = {}
    u.tls = v == true
    if type(v) == "table" then
        t = cx:record(v, tp, schema.allowed(key))
        u.tls = true
    elseif v ~= nil and type(v) ~= "boolean" then
        cx:err(tp, "expected true, false or a table { sni, verify, ca }, got " .. show(v))
    end
    read_table(cx, key, t, tp, u, st, schema.row(key).flat)
end

-- Active health checks: off when absent; `true` or `{}` turns them on with the defaults.
CUSTOM["upstreams.<name>.health"] = function(cx, v, path, u, st)
    u.health = switch(cx, "upstreams.<name>.health", v, path, st, nil)
    if u.health then
        u.health.enabled = nil
    end
end

-- "2xx" or a status code (integer or "200") -> list of statuses; nil on a bad entry.
local function status_codes(x)
    local class = type(x) == "string" and x:match("^([1-5])xx$")
    if class then
        local out = {}
        for c = tonumber(class) * 100, tonumber(class) * 100 + 99 do
            out[#out + 1] = c
        end
        return out
    end
    local n = math.tointeger(x) or (type(x) == "string" and x:match("^%d%d%d$") and tonumber(x))
    if n and n >= 100 and n <= 599 then
        return { n }
    end
    return nil
end

CUSTOM["upstreams.<name>.health.expect"] = function(cx, v, path, h)
    local codes = {}
    local list = v == nil and default_of("upstreams.<name>.health.expect")
        or cx:list(v, path, "status codes")
    for i, x in ipairs(list) do
        local c = status_codes(x)
        if not c then
            cx:err(join(path, i), 'expected a status code 100-599 or a class like "2xx", got '
                .. show(x))
        else
            for _, s in ipairs(c) do
                codes[s] = true
            end
        end
    end
    h.expect = {}
    for s = 100, 599 do
        if codes[s] then
            h.expect[#h.expect + 1] = s
        end
    end
    if v ~= nil and type(v) == "table" and #list == 0 then
        cx:err(path, "expected at least one status code or class")
    end
end

-- Passive outlier ejection: on by default; `false` turns it off (its values stay the defaults).
CUSTOM["upstreams.<name>.outlier"] = function(cx, v, path, u, st)
    local off = v == false
    u.outlier = switch(cx, "upstreams.<name>.outlier", (v == nil or off) and true or v, path, st)
    u.outlier.enabled = not off
end

-- Routes.

local function route(cx, v, path, st)
    if type(v) ~= "table" then
        cx:err(path, "expected a route table { name = ..., upstream = ... }, got " .. show(v))
        return nil
    end
    local t = cx:record(v, path, schema.allowed("routes[]"))
    return read_table(cx, "routes[]", t, path, { line = cx:line(path) }, st)
end

CUSTOM["routes"] = function(cx, v, path, c, st)
    c.routes = {}
    if v == nil then
        cx:err(path, "required key is missing; expected a list of routes")
    elseif type(v) == "table" and next(v) == nil then
        cx:err(path, "expected at least one route")
    end
    local list = cx:list(v, path, "routes ({ name = ..., upstream = ... })")
    for i, rv in ipairs(list) do
        c.routes[#c.routes + 1] = route(cx, rv, join(path, i), st)
    end
end

AFTER["routes[].name"] = function(cx, _, path, r, st)
    if r.name then
        if st.names[r.name] then
            local other = st.names[r.name]
            cx:err(path, "duplicate route name " .. show(r.name) .. " (also " .. other
                .. (cx.lines and (", line " .. cx:line(other)) or "") .. ")")
        else
            st.names[r.name] = keylines.parent(path)
        end
    end
end

AFTER["routes[].upstream"] = function(cx, _, path, r, st)
    if r.upstream and not st.by_name[r.upstream] then
        local known = {}
        for n in pairs(st.by_name) do
            known[#known + 1] = n
        end
        table.sort(known)
        local s = suggest(r.upstream, known)
        cx:err(path, "no upstream named " .. show(r.upstream)
            .. (s and (' (did you mean "' .. s .. '"?)') or (#known > 0 and
                ("; upstreams: " .. table.concat(known, ", ")) or "; upstreams is empty")))
    end
end

AFTER["routes[].try_timeout"] = function(cx, _, path, r)
    if r.try_timeout_ms > r.timeout_ms then
        cx:err(path, "try_timeout (" .. fmt_ms(r.try_timeout_ms)
            .. ") must not be more than timeout (" .. fmt_ms(r.timeout_ms) .. ")")
    end
end

AFTER["routes[].retry"] = function(cx, _, path, r)
    if r.retry.non_idempotent then
        for _, s in ipairs(r.retry.on.statuses) do
            if s >= 500 then
                cx:warn(join(path, "non_idempotent"), "retries non-idempotent requests on "
                    .. "5xx responses: the upstream may have acted before failing, so a retry "
                    .. "can repeat it")
                break
            end
        end
    end
end

local function retry_on(cx, v, path)
    local errs, statuses = {}, {}
    local list = cx:list(v, path, "outcomes")
    for i, x in ipairs(list) do
        local codes
        if math.type(x) == "integer" or (type(x) == "number" and math.tointeger(x)) then
            codes = { math.tointeger(x) }
        elseif type(x) == "string" and x:match("^%d%d%d$") then
            codes = { tonumber(x) }
        elseif type(x) == "string" and RETRY_GROUPS[x] then
            codes = RETRY_GROUPS[x]
        end
        local known_error = false
        for _, e in ipairs(RETRY_ERRORS) do
            if x == e then
                errs[e] = true
                known_error = true
            end
        end
        local ok = known_error
        if codes then
            ok = true
            for _, c in ipairs(codes) do
                if c < 100 or c > 599 then
                    ok = false
                else
                    statuses[c] = true
                end
            end
        end
        if not ok then
            cx:err(join(path, i), 'expected "connect-failure", "reset", "timeout", '
                .. '"protocol-error", "5xx", "gateway-error", "retriable-4xx" or a status code '
                .. "100-599, got " .. show(x))
        end
    end
    local out = { errors = {}, statuses = {} }
    for _, e in ipairs(RETRY_ERRORS) do
        if errs[e] then
            out.errors[#out.errors + 1] = e
        end
    end
    if next(statuses) ~= nil then -- (the default retries on no status)
        for s = 100, 599 do
            if statuses[s] then
                out.statuses[#out.statuses + 1] = s
            end
        end
    end
    return out
end

CUSTOM["routes[].retry.on"] = function(cx, v, path, r)
    r.on = retry_on(cx, v == nil and default_of("routes[].retry.on") or v, path)
end

AFTER["routes[].retry.backoff.max"] = function(cx, _, path, r, _, b)
    if r.backoff_max_ms < r.backoff_base_ms then
        cx:err(b.max ~= nil and path or join(keylines.parent(path), "base"), "backoff.max ("
            .. fmt_ms(r.backoff_max_ms) .. ") must not be less than backoff.base ("
            .. fmt_ms(r.backoff_base_ms) .. ")")
    end
end

-- Request buffering: a body up to this size is received before an upstream connection is
-- taken (false: stream at once). The default is the replay buffer.
CUSTOM["routes[].request_buffer"] = function(cx, v, path, r, st)
    if v == false then
        r.request_buffer = 0
    else
        local key = "routes[].request_buffer"
        r.request_buffer = cx:size(v, path, read_opts(schema.row(key), st.vals))
    end
end

CUSTOM["routes[].breaker"] = function(cx, v, path, r, st)
    r.breaker = switch(cx, "routes[].breaker", v, path, st, { enabled = false })
end

AFTER["routes[].breaker.max_open_for"] = function(cx, _, path, b)
    if b.max_open_for_ms < b.open_for_ms then
        cx:err(path, "max_open_for (" .. fmt_ms(b.max_open_for_ms)
            .. ") must not be less than open_for (" .. fmt_ms(b.open_for_ms) .. ")")
    end
end

-- Slow calls: off (a zero duration) when absent; inside it, `duration` is required.
CUSTOM["routes[].breaker.slow_call"] = function(cx, v, path, b, st)
    local key = "routes[].breaker.slow_call"
    local s = v == nil and {} or cx:record(v, path, schema.allowed(key))
    if type(v) == "table" then
        read_table(cx, key, s, path, b, st, schema.row(key).flat)
    else
        b.slow_call_ms = row_opts(schema.row(key .. ".duration")).default
        b.slow_call_ratio = read_value(cx, key .. ".ratio", s.ratio, join(path, "ratio"), st.vals)
    end
end

-- Admission control (README "Admission control").

local store_key -- defined with the idempotency store, below

-- A CIDR "a.b.c.d[/n]" or an IPv6 "x:...[/n]": {addr = "...", bits = n}, or nil and why.
local function parse_cidr(s)
    if type(s) ~= "string" then
        return nil
    end
    local addr, bits = s:match("^([^/]+)/(%d+)$")
    addr = addr or s
    local v4 = { addr:match("^(%d+)%.(%d+)%.(%d+)%.(%d+)$") }
    local max
    if #v4 == 4 then
        for _, o in ipairs(v4) do
            if tonumber(o) > 255 or (#o > 1 and o:sub(1, 1) == "0") then
                return nil
            end
        end
        max = 32
    else
        if not addr:match("^[%x:%.]+$") or addr:find(":::", 1, true) then
            return nil
        end
        local _, dc = addr:gsub("::", "")
        local groups = 0
        for g in addr:gmatch("[^:]+") do
            groups = groups + 1
            if not g:match("^%x%x?%x?%x?$") and not (g:match("^[%d%.]+$") and addr:sub(-#g) == g) then
                return nil
            end
        end
        if dc > 1 or (dc == 0 and groups ~= 8) or groups > 8 or not addr:find(":", 1, true) then
            return nil
        end
        max = 128
    end
    bits = bits and tonumber(bits) or max
    if bits > max then
        return nil
    end
    return { addr = addr, bits = bits }
end

CUSTOM["trusted_proxies"] = function(cx, v, path, c)
    c.trusted_proxies = {}
    if v == nil then
        return
    end
    if type(v) ~= "table" then
        cx:err(path, "expected a list of CIDR strings like \"10.0.0.0/8\", got " .. show(v))
        return
    end
    for i, x in ipairs(v) do
        local p = parse_cidr(x)
        if p then
            c.trusted_proxies[#c.trusted_proxies + 1] = p
        else
            cx:err(join(path, i), "expected an address or CIDR like \"10.0.0.0/8\" or \"fd00::/8\", got "
                .. show(x))
        end
    end
end

-- Tracing (README "Tracing"): on with its defaults when absent, off with `false`.
CUSTOM["tracing"] = function(cx, v, path, c, st)
    if v == false then
        c.tracing = { enabled = false }
        return
    end
    if v == nil or v == true then
        v = {}
    end
    local t = cx:record(v, path, schema.allowed("tracing"))
    c.tracing = read_table(cx, "tracing", t, path, { enabled = true }, st)
end

--- An OTLP/HTTP URL: scheme, host, port and path (default port 80/443, path /v1/traces), or
-- nil and what is wrong.
function M.parse_otlp_url(s)
    if type(s) ~= "string" then
        return nil, "expected a URL string like \"http://127.0.0.1:4318/v1/traces\", got " .. show(s)
    end
    local scheme, rest = s:match("^(https?)://(.*)$")
    if not scheme then
        return nil, "expected an http:// or https:// URL, got " .. show(s)
    end
    local authority, path = rest:match("^([^/]*)(/.*)$")
    if not authority then
        authority, path = rest, "/v1/traces"
    end
    if not path:match("^/[%g]*$") or #path > 1024 then
        return nil, "the path must be printable text without spaces, got " .. show(path)
    end
    local host, port
    if authority:match(":%d+$") then
        host, port = M.parse_hostport(authority)
    elseif authority:match("^%[[%x:%.]+%]$") then
        host, port = authority:sub(2, -2), scheme == "https" and 443 or 80
    elseif authority:match("^[%w%.%-_]+$") and not authority:match("^[%.%-]")
        and not authority:match("%.%.") then
        host, port = authority, scheme == "https" and 443 or 80
    end
    if not host then
        return nil, "expected a host, an IPv4 address or a bracketed IPv6 address and an optional "
            .. "port after " .. scheme .. "://, got " .. show(authority)
    end
    return { scheme = scheme, host = host, port = port, path = path,
        url = scheme .. "://" .. authority .. path }
end

CUSTOM["tracing.otlp"] = function(cx, v, path, t)
    if v == nil then
        return
    end
    local u, why = M.parse_otlp_url(v)
    if not u then
        cx:err(path, why)
        return
    end
    t.otlp = u.url
end

AFTER["tracing.queue"] = function(cx, _, path, t)
    if t.queue and t.batch and t.queue < t.batch then
        cx:err(path, "queue (" .. t.queue .. ") must not be less than batch (" .. t.batch .. ")")
    end
end

-- Upgrade tokens (README "WebSocket and other upgrades"), stored in lower case.
CUSTOM["routes[].upgrade"] = function(cx, v, path, r)
    if v == nil then
        v = default_of("routes[].upgrade")
    end
    local list = cx:list(v, path, "protocol tokens like \"websocket\"")
    local out, seen = {}, {}
    for i, x in ipairs(list) do
        if type(x) == "string" and #x <= 64 and x:match("^[%w!#%$%%&'%*%+%-%.%^_`|~]+$") then
            local tok = x:lower()
            if not seen[tok] then
                seen[tok] = true
                out[#out + 1] = tok
            end
        else
            cx:err(join(path, i), "expected a protocol token like \"websocket\" (at most 64 "
                .. "characters), got " .. show(x))
        end
    end
    r.upgrade = out
end

CUSTOM["routes[].rate_limit"] = function(cx, v, path, r, st)
    r.rate_limit = switch(cx, "routes[].rate_limit", v, path, st, { enabled = false })
end

CUSTOM["routes[].rate_limit.key"] = function(cx, v, path, rl)
    if v == nil or v == "client_ip" then
        rl.key_kind = "client_ip"
    elseif type(v) == "function" then
        rl.key_kind = "hook"
        rl.key = v
    elseif type(v) == "string" and v:match("^header:") then
        local name = v:sub(8)
        if name:match("^[%w!#%$%%&'%*%+%-%.%^_`|~]+$") then
            rl.key_kind = "header"
            rl.key_header = name:lower()
        else
            cx:err(path, 'expected "header:NAME" with a header name, got ' .. show(v))
        end
    else
        cx:err(path, 'expected "client_ip", "header:NAME" or a function, got ' .. show(v))
    end
end

CUSTOM["routes[].rate_limit.store"] = function(cx, v, path, d, st)
    store_key(cx, "routes[].rate_limit.store", v, path, d, st)
end

CUSTOM["routes[].concurrency"] = function(cx, v, path, r, st)
    r.concurrency = switch(cx, "routes[].concurrency", v, path, st, { enabled = false })
end

CUSTOM["routes[].concurrency.max"] = function(cx, v, path, c)
    if v == "adaptive" then
        c.adaptive = true
        c.max = 0
    elseif v == nil then
        cx:err(path, 'required key is missing; expected an integer ≥ 1 or "adaptive"')
    elseif math.type(v) == "integer" and v >= 1 and v <= 1000000 then
        c.adaptive = false
        c.max = v
    else
        cx:err(path, 'expected an integer from 1 to 1000000 or "adaptive", got ' .. show(v))
    end
end

AFTER["routes[].concurrency.max_limit"] = function(cx, _, path, c)
    if c.max_limit and c.min and c.max_limit < c.min then
        cx:err(path, "max_limit (" .. c.max_limit .. ") must not be less than min (" .. c.min .. ")")
    end
end

-- Faults (README "levee dev"): off unless the table is given; each kind inside likewise.
CUSTOM["routes[].fault"] = function(cx, v, path, r, st)
    if v == nil or v == false then
        r.fault = { enabled = false }
        return
    end
    local t = cx:record(v, path, schema.allowed("routes[].fault"))
    r.fault = read_table(cx, "routes[].fault", t, path, { enabled = true }, st)
end

for _, kind in ipairs({ "abort", "delay", "reset", "throttle" }) do
    local key = "routes[].fault." .. kind
    CUSTOM[key] = function(cx, v, path, f, st)
        if v == nil or v == false then
            f[kind] = { enabled = false }
            return
        end
        local t = cx:record(v, path, schema.allowed(key))
        f[kind] = read_table(cx, key, t, path, { enabled = true }, st)
    end
end

CUSTOM["routes[].idempotency"] = function(cx, v, path, r, st)
    r.idempotency = switch(cx, "routes[].idempotency", v, path, st, { enabled = false })
end

CUSTOM["routes[].idempotency.store"] = function(cx, v, path, d, st)
    store_key(cx, "routes[].idempotency.store", v, path, d, st)
end

-- A store key: "memory", or { redis = "host:port", prefix = ... } (idempotency, rate limits).
store_key = function(cx, key, v, path, d, st)
    if type(v) == "table" then
        local s = cx:record(v, path, schema.allowed(key))
        d.store = "redis"
        read_table(cx, key, s, path, d, st, schema.row(key).flat)
        return
    end
    d.store = default_of(key)
    d.redis_prefix = default_of(key .. ".prefix")
    if v ~= nil and v ~= d.store then
        cx:err(path, 'expected "memory" or { redis = "host:port" }, got ' .. show(v))
    end
end

AFTER["routes[].idempotency.max_memory"] = function(cx, _, path, d)
    if d.max_memory < d.max_body then
        cx:err(path, "max_memory (" .. fmt_size(d.max_memory)
            .. ") must not be less than max_body (" .. fmt_size(d.max_body) .. ")")
    end
end

-- Does every request route `b` matches also match route `a` (README "Routing": a plain
-- string prefix, an exact path, an exact host, a method set)? Only certain cases say yes.
local function under(x, prefix)
    return x ~= nil and x:sub(1, #prefix) == prefix
end

local function covers(a, b)
    if a.match_host and a.match_host ~= b.match_host then
        return false
    end
    if #a.match_methods > 0 then
        if #b.match_methods == 0 then
            return false
        end
        local set = {}
        for _, m in ipairs(a.match_methods) do
            set[m] = true
        end
        for _, m in ipairs(b.match_methods) do
            if not set[m] then
                return false
            end
        end
    end
    if a.match_path then
        return b.match_path == a.match_path
            and (a.match_prefix == nil or under(b.match_path, a.match_prefix))
    end
    if a.match_prefix then
        return under(b.match_path, a.match_prefix) or under(b.match_prefix, a.match_prefix)
    end
    return true
end

-- A route an earlier route always takes the requests of (routes are tried in order). Only the
-- earlier routes that could cover a route are compared with it (indexed by host, exact path
-- and prefix), so a file of thousands of routes is checked in about linear time.
local function warn_shadowed(cx, routes)
    local any_host, by_host, exact, prefixed = {}, {}, {}, {}
    local function add(t, k, i)
        local l = t[k]
        if not l then
            l = {}
            t[k] = l
        end
        l[#l + 1] = i
    end
    for j, b in ipairs(routes) do
        if b and b.name then
            local first
            local function consider(list)
                for _, i in ipairs(list or {}) do
                    if first and i >= first then
                        break -- lists are in route order
                    end
                    if covers(routes[i], b) then
                        first = i
                        break
                    end
                end
            end
            consider(any_host)
            if b.match_host then
                consider(by_host[b.match_host])
            end
            if b.match_path then
                consider(exact[b.match_path])
            end
            for _, p in ipairs({ b.match_path or false, b.match_prefix or false }) do
                for k = 0, p and #p or -1 do
                    consider(prefixed[p:sub(1, k)])
                end
            end
            if first then
                local a = routes[first]
                cx:warn(join("routes", j), "never matches: route " .. show(a.name)
                    .. (cx.lines and (" (line " .. a.line .. ")") or "")
                    .. " before it matches every request it would")
            end
            if b.match_path then
                add(exact, b.match_path, j)
            elseif b.match_prefix then
                add(prefixed, b.match_prefix, j)
            elseif b.match_host then
                add(by_host, b.match_host, j)
            else
                any_host[#any_host + 1] = j
            end
        end
    end
end

local function validate(cx, v)
    local t = cx:record(v, "", schema.allowed(""))
    local st = { vals = {}, names = {}, by_name = {} }
    local c = read_table(cx, "", t, "", {}, st)
    warn_shadowed(cx, c.routes)
    local used = {}
    for _, r in ipairs(c.routes) do
        used[r.upstream or false] = true
    end
    for _, u in ipairs(c.upstreams) do
        if u and not used[u.name] then
            cx:warn(join("upstreams", u.name), "no route uses this upstream")
        end
    end
    return c
end

------------------------------------------------------------------------------------------
-- Running the file.

-- The limits of one load. `limits` comes from levee's loader: { hit = function() -> whether
-- its hook stopped the load, memory = its cap in bytes }; nil when this module runs alone.
local function new_limit(limits)
    return { hit = false, ticks = 0, deadline = os.clock() + RUN_SECONDS,
        external = limits and limits.hit, memory = limits and limits.memory }
end

-- Has the load run over its instructions or its time? (No global is read here: the sandbox's
-- functions below call it, and hooks.c treats functions that read levee's globals apart.)
local function limit_hit(lim)
    return lim.hit or (lim.external ~= nil and lim.external() == true)
end

local function sandbox(lim)
    local env = {}
    for _, k in ipairs({ "pairs", "ipairs", "type", "tostring", "tonumber", "select", "error",
        "assert", "pcall", "xpcall", "setmetatable", "getmetatable", "next", "rawget", "rawset",
        "rawequal", "rawlen", "_VERSION" }) do
        env[k] = _G[k]
    end
    for _, lib in ipairs({ "string", "table", "math", "utf8" }) do
        local copy = {}
        for k, f in pairs(_G[lib]) do
            copy[k] = f
        end
        env[lib] = copy
    end
    env.string.dump = nil
    env.os = { getenv = os.getenv, time = os.time, clock = os.clock }
    env._G = env
    local setmt, xpcall_, type_, rawget_, error_ = setmetatable, xpcall, type, rawget, error
    -- A finalizer runs when Lua collects or closes the state, with hooks off: no limit could
    -- stop it, so none may be set. Lua looks for __gc raw, at setmetatable time, as here.
    env.setmetatable = function(t, mt)
        if type_(mt) == "table" and rawget_(mt, "__gc") ~= nil then
            error_("setmetatable: __gc metamethods are not allowed in the configuration "
                .. "(a finalizer would run outside the load's limits)", 2)
        end
        return setmt(t, mt)
    end
    -- Lua runs the message handler of an error raised by the instruction limit with hooks
    -- off: once the limit is hit, handlers are skipped.
    env.xpcall = function(f, h, ...)
        if type_(h) ~= "function" then
            return xpcall_(f, h, ...)
        end
        return xpcall_(f, function(e)
            if limit_hit(lim) then
                return e
            end
            return h(e)
        end, ...)
    end
    return env
end

local function read_text(path)
    local f, err = io.open(path, "rb")
    if not f then
        return nil, err
    end
    local src = f:read("a")
    f:close()
    if not src then
        return nil, path .. ": not a readable file"
    end
    -- A "#!" first line is allowed, as with the lua command; keep the line count.
    if src:sub(1, 1) == "#" then
        src = src:gsub("^[^\n]*", "", 1)
    end
    return src
end

local LOADING = {}

-- "a", "a.b_c", "my-mod": dot-separated segments, nothing that could climb out of a folder.
local function valid_module_name(name)
    if type(name) ~= "string" or name == "" then
        return false
    end
    for seg in (name .. "."):gmatch("([^.]*)%.") do
        if not seg:match("^[%w_%-]+$") then
            return false
        end
    end
    return true
end

-- `require` for the sandbox: text modules from `dirs` only, each file recorded in `files`.
local function make_require(env, dirs, files)
    local loaded = {}
    return function(name)
        if not valid_module_name(name) then
            error("require: bad module name " .. show(name), 2)
        end
        local v = loaded[name]
        if v == LOADING then
            error("require: module '" .. name .. "' is being loaded (a require loop)", 2)
        elseif v ~= nil then
            return v
        end
        local rel = name:gsub("%.", "/")
        local tried, src, found = {}, nil, nil
        for _, d in ipairs(dirs) do
            for _, pat in ipairs({ "%s/%s.lua", "%s/%s/init.lua" }) do
                local p = pat:format(d, rel)
                src = read_text(p)
                if src then
                    found = p
                    break
                end
                tried[#tried + 1] = p
            end
            if found then
                break
            end
        end
        if not found then
            error("module '" .. name .. "' not found (looked for " .. table.concat(tried, ", ")
                .. ")", 2)
        end
        files[#files + 1] = found
        local chunk, err = load(src, "@" .. found, "t", env)
        if not chunk then
            error(err, 0)
        end
        loaded[name] = LOADING
        local ok, res = pcall(chunk, name, found)
        if not ok then
            loaded[name] = nil
            error(res, 0)
        end
        if res == nil then
            res = true
        end
        loaded[name] = res
        return res
    end
end

-- Runs fn under the load's limits; returns ok, result like pcall. fn runs in a coroutine of
-- its own because count hooks are per thread: the limit then never fires in this module's
-- code, whatever the file did to it. levee's loader has set a C hook on the main thread,
-- which new coroutines inherit ("external hook"); alone, this module sets a Lua one.
local function run_limited(fn, lim)
    local co = coroutine.create(fn)
    if not debug.gethook(co) then
        local function hook()
            lim.ticks = lim.ticks + 1
            if lim.hit or lim.ticks > RUN_TICKS or os.clock() > lim.deadline then
                lim.hit = true
                -- From now on every instruction fails, so a pcall in a loop cannot outlast it.
                debug.sethook(co, hook, "", 1)
                error(RAN_TOO_LONG, 2)
            end
        end
        debug.sethook(co, hook, "", RUN_TICK)
    end
    local ok, res = coroutine.resume(co)
    if ok and coroutine.status(co) ~= "dead" then
        return false, "the configuration must not yield"
    end
    if ok and limit_hit(lim) then
        return false, RAN_TOO_LONG -- the limit's error was caught, then fn returned
    end
    return ok, res, co
end

local function dirname(path)
    return path:match("^(.*)/[^/]*$") or "."
end

-- An error from loading or running the file, as "FILE:LINE: message". Lua shortens long
-- chunk names to "...tail"; the full path of the file it came from is put back.
local function error_text(path, files, e)
    if type(e) ~= "string" then
        e = "error: " .. show(e)
    end
    if #e > MAX_ERROR_TEXT then
        e = e:sub(1, MAX_ERROR_TEXT) .. "..."
    end
    local tail, rest = e:match("^%.%.%.([^\n]-)(:%d+: .*)$")
    if tail then
        for _, f in ipairs(files) do
            if f:sub(-#tail) == tail then
                return f .. rest
            end
        end
    end
    if not e:match("^[^\n]-:%d+: ") then
        e = path .. ":1: " .. e
    end
    return e
end

-- An error without a position (raised by a C function such as string.rep, or with level 0)
-- gets the line the innermost frame in one of the user's files was at when it was raised;
-- `co` is the coroutine that failed (Lua leaves its stack as it was for the debug library).
local function locate(files, e, co)
    if co == nil or (type(e) == "string" and e:match("^[^\n]-:%d+: ")) then
        return e
    end
    local level = 0
    while true do
        local info = debug.getinfo(co, level, "Sl")
        if not info then
            return e
        end
        if info.currentline and info.currentline > 0 then
            for _, f in ipairs(files) do
                if info.source == "@" .. f then
                    if type(e) ~= "string" then
                        e = "error: " .. show(e)
                    end
                    return f .. ":" .. info.currentline .. ": " .. e
                end
            end
        end
        level = level + 1
    end
end

-- The error that stopped the file's code (or the checks after it) as "FILE:LINE: message".
-- A limit is named as such, at a line of the user's files or else at line 1.
local function run_error(path, files, e, lim, co)
    if e == "not enough memory" then -- Lua's memory error
        collectgarbage() -- what the dead coroutine held
        return path .. ":1: " .. (lim.memory and ("the configuration used more than %d MiB of Lua "
            .. "memory while loading"):format(lim.memory // MiB)
            or "the configuration ran out of memory while loading")
    end
    e = error_text(path, files, locate(files, e, co))
    if limit_hit(lim) then
        local where, line = e:match("^(.-):(%d+): ")
        for _, f in ipairs(files) do
            if f == where then
                return where .. ":" .. line .. ": " .. RAN_TOO_LONG
            end
        end
        return path .. ":1: " .. RAN_TOO_LONG
    end
    return e
end

-- Reports every table in the returned value (keys too) that has a metatable, found raw (next,
-- debug.getmetatable): validation reads with indexing, pairs and #, which would run the
-- file's metamethods (an __index making an endless list, say). True when it found one.
local function refuse_metatables(cx, root)
    local getmt = debug.getmetatable
    local seen, found = {}, false
    local function walk(v, path, depth)
        if type(v) ~= "table" or seen[v] then
            return
        end
        seen[v] = true
        if getmt(v) ~= nil then
            cx:err(path, "tables with metatables are not allowed in the configuration")
            found = true
            return
        end
        if depth >= MT_DEPTH then
            return
        end
        for k, x in next, v do
            walk(k, path, depth + 1) -- a table used as a key is reported where it is
            local kt = type(k)
            walk(x, (kt == "string" or kt == "number" or kt == "boolean") and join(path, k) or path,
                depth + 1)
        end
    end
    walk(root, "", 0)
    return found
end

-- Everything after the file's code: key lines, metatables, validation. Returns { config = }
-- or { errors = }.
local function check(path, src, res, base, checks)
    local lines = keylines.scan(src)
    if type(res) ~= "table" then
        return { errors = { path .. ":" .. keylines.line(lines, "")
            .. ": the file must return a table (return { listen = ..., routes = ... }), got "
            .. show(res) } }
    end
    local cx = new_cx(path, lines, base, checks)
    if refuse_metatables(cx, res) then
        return { errors = cx:formatted() }
    end
    local c = validate(cx, res)
    c.warnings = cx:formatted("warning: ")
    if #cx.errors > 0 then
        -- `levee check` prints the warnings, then the errors.
        local out = checks and c.warnings or {}
        for _, e in ipairs(cx:formatted()) do
            out[#out + 1] = e
        end
        return { errors = out }
    end
    return { config = c }
end

-- Runs a Lua file of the user's (a levee.lua, a `levee dev --policy` file): text only,
-- sandboxed, under the load's limits, `require` from its folder and lua_dir. Returns true,
-- what it returned, its source and the files it read; or false and one error line.
local function run_file(path, lua_dir, lim)
    local src, err = read_text(path)
    if not src then
        err = err:sub(1, #path + 2) == path .. ": " and err:sub(#path + 3) or err
        return false, path .. ":1: cannot read the file: " .. err
    end
    local base = dirname(path)
    local files = { path }
    local env = sandbox(lim)
    local dirs = { base }
    if lua_dir and lua_dir ~= base then
        dirs[2] = lua_dir
    end
    env.require = make_require(env, dirs, files)
    local chunk, lerr = load(src, "@" .. path, "t", env)
    if not chunk then
        return false, error_text(path, files, lerr)
    end
    local ok, res, co = run_limited(chunk, lim)
    if not ok then
        return false, run_error(path, files, res, lim, co)
    end
    return true, res, src, files
end

--- Loads and validates the configuration file at `path`. `lua_dir` is the second folder
-- `require` searches (after the file's own). `limits` is levee's loader's (see new_limit).
-- Returns (config, files) or (nil, errors); config.warnings lists the probable mistakes as
-- "FILE:LINE: warning: key.path: message". With limits.check (`levee check`, see new_cx), the
-- files the configuration names are checked too, and errors start with the warnings.
function M.compile(path, lua_dir, limits)
    local lim = new_limit(limits)
    local ran, res, src, files = run_file(path, lua_dir, lim)
    if not ran then
        return nil, { res }
    end
    local base = dirname(path)
    -- Only levee's code from here, but on what the file returned (which can be huge): under
    -- the same limits.
    local okc, out = run_limited(function()
        return check(path, src, res, base, limits and limits.check)
    end, lim)
    if not okc then
        if out == "not enough memory" or limit_hit(lim) then
            return nil, { run_error(path, {}, out, lim) }
        end
        error(out, 0)
    end
    if out.errors then
        return nil, out.errors
    end
    return out.config, files
end

--- Validates a configuration table built in code (no file, no lines). `label` starts each
-- error ("label: key.path: message"). Returns the normalized table or nil, errors.
function M.compile_table(t, label)
    local cx = new_cx(label, nil, nil)
    local c = validate(cx, t)
    if #cx.errors > 0 then
        return nil, cx:formatted()
    end
    c.warnings = cx:formatted("warning: ")
    return c
end

------------------------------------------------------------------------------------------
-- `levee dev` (README "levee dev").

local FAULT_SYNTAX = "expected abort=STATUS[:P%], delay=DURATION[:P%], reset[:P%] or "
    .. "throttle=SIZE[:P%]"

--- One --fault SPEC: "abort=503:10%", "delay=300ms:50%", "reset:5%", "throttle=16KiB" (the
-- percent is optional, 100 by default). Returns kind, { ... } as a route's `fault` table holds
-- it (abort = { status, percent }, delay = { time, percent }, reset = { percent }, throttle =
-- { rate, percent }), or nil and the usage error.
function M.parse_fault(spec)
    local function bad(why)
        return nil, "levee dev: --fault: " .. (why or FAULT_SYNTAX) .. ", got " .. show(spec)
    end
    if type(spec) ~= "string" then
        return bad()
    end
    local body, pct = spec:match("^(.-):([^:]*)$")
    local percent = 100
    if body then
        local num = pct:match("^(%d+%.?%d*)%%$") or pct:match("^(%d*%.%d+)%%$")
        if not num then
            return bad()
        end
        percent = tonumber(num)
        if percent <= 0 or percent > 100 then
            return bad("the percent must be more than 0% and at most 100%")
        end
        percent = math.tointeger(percent) or percent
    else
        body = spec
    end
    local kind, arg = body:match("^(%a+)=(.+)$")
    kind = kind or body
    if kind == "abort" and arg then
        local status = arg:match("^%d%d%d$") and tonumber(arg)
        if not status or status < 200 or status > 599 then
            return bad("abort: expected a status between 200 and 599")
        end
        return kind, { status = status, percent = percent }
    elseif kind == "delay" and arg then
        local ms = M.parse_duration(arg)
        if not ms or ms <= 0 or ms > HOUR then
            return bad("delay: expected a duration such as \"300ms\" or \"2s\" (at most 1h)")
        end
        return kind, { time = arg, percent = percent }
    elseif kind == "reset" and not arg then
        return kind, { percent = percent }
    elseif kind == "throttle" and arg then
        local n = M.parse_size(arg)
        if not n or n < 1 or n > GiB then
            return bad("throttle: expected a rate in bytes per second such as \"16KiB\" (at most 1GiB)")
        end
        return kind, { rate = arg, percent = percent }
    end
    return bad()
end

--- The dev route's fault table: the policy's `fault` table (or nil) with the kinds of
-- --fault (kind -> table, from parse_fault) over it, and `headers = true` unless the policy
-- set `headers` itself.
function M.merge_faults(policy_fault, faults)
    local merged = {}
    for k, v in next, policy_fault or {} do
        merged[k] = v
    end
    for kind, t in pairs(faults or {}) do
        merged[kind] = t
    end
    if merged.headers == nil then
        merged.headers = true
    end
    return merged
end

-- Keys of a routes[] entry a --policy file may not set: levee dev sets them.
local function policy_key_refused(k)
    return k == "name" or k == "upstream" or k == "match"
end

-- The dev route's key paths ("routes[1].retry.attempts") as the policy file writes them
-- ("retry.attempts"); nil for a path outside the route.
local DEV_ROUTE = join("routes", 1)
local function policy_rel(path)
    if path == DEV_ROUTE then
        return ""
    end
    local rest = path:sub(#DEV_ROUTE + 1)
    if path:sub(1, #DEV_ROUTE) ~= DEV_ROUTE then
        return nil
    elseif rest:sub(1, 1) == "." then
        return rest:sub(2)
    elseif rest:sub(1, 1) == "[" then
        return rest
    end
    return nil
end

-- Errors (or, with `tag`, warnings) of a dev configuration: those about the dev route as
-- "FILE:LINE: key.path: message" in the policy file (keys as it writes them), the others as
-- "levee dev: key.path: message".
local function dev_formatted(cx, policy, lines, tag)
    local es = {}
    for _, e in ipairs(tag and cx.warnings or cx.errors) do
        local rel = policy and policy_rel(e.path)
        es[#es + 1] = { rel = rel, path = rel or e.path, msg = e.msg, n = e.n,
            line = rel and keylines.line(lines, rel) or 0 }
    end
    table.sort(es, function(a, b)
        if a.line ~= b.line then
            return a.line < b.line
        end
        return a.n < b.n
    end)
    local out = {}
    for _, e in ipairs(es) do
        local where = e.rel and (policy .. ":" .. e.line .. ": ") or "levee dev: "
        out[#out + 1] = where .. (tag or "") .. (e.path ~= "" and e.path .. ": " or "") .. e.msg
    end
    return out
end

-- The dev route: name "dev", upstream "app", a breaker; the policy's keys over it; the fault
-- table of the policy with the --fault kinds over it, and header faults on.
local function dev_route(policy_tbl, faults, errs, policy, lines)
    local r = { name = "dev", upstream = "app", breaker = {} }
    if policy_tbl ~= nil then
        for k, v in next, policy_tbl do
            if policy_key_refused(k) then
                errs[#errs + 1] = policy .. ":" .. keylines.line(lines, join("", k)) .. ": "
                    .. join("", k) .. ": not allowed in a policy file (levee dev sets the "
                    .. "route's name, match and upstream)"
            else
                r[k] = v
            end
        end
    end
    if type(r.fault) == "table" or r.fault == nil then
        r.fault = M.merge_faults(r.fault, faults)
    elseif r.fault == false and next(faults) then
        r.fault = M.merge_faults(nil, faults) -- the command line wins
    end
    return r
end

--- The `levee dev URL [--listen ADDR]` configuration: one upstream "app" at URL, one
-- catch-all route "dev" with the default retry policy and a breaker. URL is
-- "http://host:port", "host:port", "https://host[:port]" or a bare port. `opts` (from the
-- command line, README "levee dev"): admin (host:port, "off"; default 127.0.0.1:9901),
-- policy (a file returning a route policy table, merged into the route "dev"), faults (a
-- list of --fault SPECs), json (the access log as JSON lines, not the console line),
-- lua_dir (for the policy's require). `limits` as for compile.
-- Returns (config, files) or (nil, errors); errors of the URL, --listen, --admin and --fault
-- start with "levee dev: " (usage errors), those of the policy with its path.
function M.dev(url, listen, opts, limits)
    opts = opts or {}
    local errs = {}
    local tls = false
    local rest = type(url) == "string" and url or ""
    local scheme, after = rest:match("^(%a[%w+.-]*)://(.*)$")
    if scheme then
        scheme = scheme:lower()
        if scheme == "https" then
            tls = true
        elseif scheme ~= "http" then
            errs[#errs + 1] = "levee dev: URL: expected an http:// or https:// URL, got " .. show(url)
        end
        rest = after
    end
    rest = rest:gsub("/$", "")
    local server
    if rest:match("^%d+$") then
        server = "127.0.0.1:" .. rest
    elseif rest:match("^[%w%.%-_]+$") or rest:match("^%[[%x:%.]+%]$") then
        server = rest .. ":" .. (tls and 443 or 80)
    else
        server = rest
    end
    local _, uwhy = M.parse_hostport(server)
    if #errs == 0 and not _ then
        errs[#errs + 1] = "levee dev: URL: " .. (uwhy == "port"
            and "expected a port between 1 and 65535" or rest:find("/", 1, true)
            and 'expected "http://host:port" (no path)' or 'expected "http://host:port"')
            .. ", got " .. show(url)
    end
    listen = listen or "127.0.0.1:8080"
    local _, why = M.parse_hostport(listen)
    if not _ then
        errs[#errs + 1] = "levee dev: --listen: "
            .. (why == "port" and "expected a port between 1 and 65535" or HOSTPORT_SYNTAX)
            .. ", got " .. show(listen)
    end
    local admin = opts.admin or "127.0.0.1:9901"
    if admin == "off" then
        admin = false
    else
        local _, awhy = M.parse_hostport(admin)
        if not _ then
            errs[#errs + 1] = "levee dev: --admin: "
                .. (awhy == "port" and "expected a port between 1 and 65535" or HOSTPORT_SYNTAX)
                .. ' or "off", got ' .. show(admin)
        end
    end
    local faults = {}
    for _, spec in ipairs(opts.faults or {}) do
        local kind, t = M.parse_fault(spec)
        if kind then
            faults[kind] = t -- the last of a kind wins
        else
            errs[#errs + 1] = t
        end
    end
    if #errs > 0 then
        return nil, errs
    end

    local lim = new_limit(limits)
    local policy, policy_tbl, lines, files = opts.policy, nil, nil, {}
    if policy then
        local ran, res, src, pfiles = run_file(policy, opts.lua_dir, lim)
        if not ran then
            return nil, { res }
        end
        files = pfiles
        lines = keylines.scan(src)
        if type(res) ~= "table" then
            return nil, { policy .. ":" .. keylines.line(lines, "")
                .. ": the policy file must return a route policy table (return { retry = ..., "
                .. "timeout = ... }), got " .. show(res) }
        end
        local cx = new_cx(policy, lines, dirname(policy))
        if refuse_metatables(cx, res) then
            return nil, cx:formatted()
        end
        policy_tbl = res
    end
    local perrs = {}
    local route = dev_route(policy_tbl, faults, perrs, policy, lines)
    if #perrs > 0 then
        return nil, perrs
    end
    local host = M.parse_hostport(server)
    local t = {
        listen = { listen },
        admin = admin,
        access_log = "stdout",
        access_log_format = opts.json and "json" or "console",
        watch = policy ~= nil,
        upstreams = { app = { servers = { server }, tls = tls and { sni = host:match("^[%w%.%-_]+$")
            and host or nil } or nil } },
        routes = { route },
    }
    -- The policy's values are the file's own (hooks included): validated under the limits.
    local okc, out = run_limited(function()
        local cx = new_cx(policy or "levee dev", nil, policy and dirname(policy))
        local c = validate(cx, t)
        if #cx.errors > 0 then
            return { errors = dev_formatted(cx, policy, lines) }
        end
        c.warnings = dev_formatted(cx, policy, lines, "warning: ")
        return { config = c }
    end, lim)
    if not okc then
        if out == "not enough memory" or limit_hit(lim) then
            return nil, { run_error(policy or "levee dev", {}, out, lim) }
        end
        error(out, 0)
    end
    if out.errors then
        return nil, out.errors
    end
    return out.config, policy and files or {}
end

return M
