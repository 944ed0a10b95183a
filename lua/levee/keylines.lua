-- keylines: maps key paths of a Lua configuration file to the lines they are written on.
--
-- Lua does not record where a table key was written, so config errors would only name a key
-- path. This module tokenizes the source text (it never runs it) and walks the table
-- constructors written literally in the file: the table after the top-level `return`, and
-- tables bound by a top-level `local NAME = { ... }` that the returned table names. A keyed
-- entry maps to the line of its key, a positional entry ("[N]") to the line where its value
-- starts. Paths are built with join(), which levee.config also uses, so both spell them alike:
--   routes[1].retry.attempts      upstreams.api.servers[2]      upstreams["my-api"]
--
-- Used by levee.config to turn "routes[1].retry.attempts: ..." into "levee.lua:14: ...".

local M = {}

local KEYWORDS = {}
for w in ([[and break do else elseif end false for function goto if in local nil not or
            repeat return then true until while]]):gmatch("%a+") do
    KEYWORDS[w] = true
end

-- Multi-character operators, longest first.
local OPS3 = { ["..."] = true }
local OPS2 = {
    [".."] = true, ["=="] = true, ["~="] = true, ["<="] = true, [">="] = true,
    ["//"] = true, ["::"] = true, ["<<"] = true, [">>"] = true,
}

local ESCAPES = { a = "\a", b = "\b", f = "\f", n = "\n", r = "\r", t = "\t", v = "\v",
                  ["\\"] = "\\", ['"'] = '"', ["'"] = "'" }

-- Tokenizes Lua source. Returns a list of { type, value, line } where type is one of
-- "name", "keyword", "string", "number", "op", "eof". Never raises: text it cannot read
-- (an unfinished string, a stray byte) ends the list early; the Lua compiler reports it.
function M.tokenize(src)
    local toks = {}
    local pos, line, n = 1, 1, #src

    local function newline_at(p)
        -- "\r\n" and "\n\r" count as one line end, as in Lua's lexer.
        local c, d = src:sub(p, p), src:sub(p + 1, p + 1)
        if (c == "\r" and d == "\n") or (c == "\n" and d == "\r") then
            return p + 2
        end
        return p + 1
    end

    local function count_lines(s)
        local k = 0
        local p = 1
        while true do
            local a = s:find("[\r\n]", p)
            if not a then
                return k
            end
            local c, d = s:sub(a, a), s:sub(a + 1, a + 1)
            if (c == "\r" and d == "\n") or (c == "\n" and d == "\r") then
                a = a + 1
            end
            k = k + 1
            p = a + 1
        end
    end

    -- Long bracket starting at pos ("[" followed by "="* and "["). Returns content, end pos.
    local function long_bracket(p)
        local eqs = src:match("^%[(=*)%[", p)
        if not eqs then
            return nil
        end
        local open_end = p + #eqs + 2
        local close = "]" .. eqs .. "]"
        local a, b = src:find(close, open_end, true)
        if not a then
            return false
        end
        local body = src:sub(open_end, a - 1)
        return body, b + 1
    end

    local function short_string(q)
        local buf = {}
        local p = pos + 1
        local start_line = line
        while true do
            local c = src:sub(p, p)
            if c == "" or c == "\n" or c == "\r" then
                return nil
            elseif c == q then
                pos = p + 1
                return table.concat(buf), start_line
            elseif c == "\\" then
                local e = src:sub(p + 1, p + 1)
                if ESCAPES[e] then
                    buf[#buf + 1] = ESCAPES[e]
                    p = p + 2
                elseif e == "\n" or e == "\r" then
                    buf[#buf + 1] = "\n"
                    p = newline_at(p + 1)
                    line = line + 1
                elseif e == "x" then
                    local h = src:match("^%x%x", p + 2)
                    if not h then
                        return nil
                    end
                    buf[#buf + 1] = string.char(tonumber(h, 16))
                    p = p + 4
                elseif e == "z" then
                    p = p + 2
                    local ws = src:match("^%s*", p)
                    line = line + count_lines(ws)
                    p = p + #ws
                elseif e:match("%d") then
                    local d = src:match("^%d%d?%d?", p + 1)
                    local v = tonumber(d)
                    if v > 255 then
                        return nil
                    end
                    buf[#buf + 1] = string.char(v)
                    p = p + 1 + #d
                elseif e == "u" then
                    local h = src:match("^{(%x+)}", p + 2)
                    if not h or #h > 8 then
                        return nil
                    end
                    local v = tonumber(h, 16)
                    if v > 0x7FFFFFFF then
                        return nil
                    end
                    buf[#buf + 1] = utf8.char(v)
                    p = p + 4 + #h
                else
                    return nil
                end
            else
                local run = src:match("^[^\\\r\n" .. q .. "]+", p)
                buf[#buf + 1] = run
                p = p + #run
            end
        end
    end

    while pos <= n do
        local c = src:sub(pos, pos)
        if c == "\n" or c == "\r" then
            pos = newline_at(pos)
            line = line + 1
        elseif c:match("%s") then
            pos = pos + 1
        elseif src:sub(pos, pos + 1) == "--" then
            local body, after = long_bracket(pos + 2)
            if body then
                line = line + count_lines(body)
                pos = after
            elseif body == false then
                break -- unfinished long comment
            else
                local e = src:find("[\r\n]", pos) or n + 1
                pos = e
            end
        elseif c:match("[%a_]") then
            local w = src:match("^[%w_]+", pos)
            toks[#toks + 1] = { type = KEYWORDS[w] and "keyword" or "name", value = w, line = line }
            pos = pos + #w
        elseif c:match("%d") or (c == "." and src:sub(pos + 1, pos + 1):match("%d")) then
            local text = src:match("^0[xX][%x%.]*[pP][%+%-]?%d+", pos)
                or src:match("^0[xX][%x%.]*", pos)
                or src:match("^[%d%.]*[eE][%+%-]?%d+", pos)
                or src:match("^[%d%.]+", pos)
            local v = tonumber(text)
            toks[#toks + 1] = { type = "number", value = v, text = text, line = line }
            pos = pos + #text
        elseif c == '"' or c == "'" then
            local l0 = line
            local s = short_string(c)
            if not s then
                break
            end
            toks[#toks + 1] = { type = "string", value = s, line = l0 }
        elseif c == "[" and src:match("^%[=*%[", pos) then
            local l0 = line
            local body, after = long_bracket(pos)
            if not body then
                break
            end
            line = line + count_lines(body)
            -- A newline right after the opening bracket is not part of the string.
            body = body:gsub("^\r\n", ""):gsub("^\n\r", ""):gsub("^[\r\n]", "")
            toks[#toks + 1] = { type = "string", value = body, line = l0 }
            pos = after
        else
            local op = src:sub(pos, pos + 2)
            if not OPS3[op] then
                op = src:sub(pos, pos + 1)
                if not OPS2[op] then
                    op = c
                end
            end
            toks[#toks + 1] = { type = "op", value = op, line = line }
            pos = pos + #op
        end
    end
    toks[#toks + 1] = { type = "eof", value = "", line = line }
    return toks
end

local function is_identifier(k)
    return type(k) == "string" and k:match("^[%a_][%w_]*$") ~= nil and not KEYWORDS[k]
end

--- Appends a key to a path: "a" .. 1 -> "a[1]", "a" .. "b" -> "a.b", "a" .. "x-y" -> 'a["x-y"]'.
function M.join(path, key)
    if math.type(key) == "integer" then
        return path .. "[" .. key .. "]"
    elseif is_identifier(key) then
        return path == "" and key or path .. "." .. key
    else
        return path .. "[" .. string.format("%q", tostring(key)) .. "]"
    end
end

--- The path one level up ("a.b[2]" -> "a.b", "a" -> ""), or nil for "".
function M.parent(path)
    if path == "" then
        return nil
    end
    local p = path:match("^(.*)%[[^%[%]]*%]$") or path:match('^(.*)%["[^"]*"%]$')
    if p then
        return p
    end
    return path:match("^(.*)%.[%w_]+$") or ""
end

-- Block openers and closers, so that commas inside a function body do not end an entry.
local BLOCK_OPEN = { ["function"] = true, ["do"] = true, ["if"] = true, ["repeat"] = true }
local BLOCK_CLOSE = { ["end"] = true, ["until"] = true }
local BRACKET_OPEN = { ["("] = true, ["["] = true, ["{"] = true }
local BRACKET_CLOSE = { [")"] = true, ["]"] = true, ["}"] = true }

--- Scans Lua source; returns a map { [path] = line } for literal table constructors.
-- The returned value itself has path "" (the line of the `return`).
function M.scan(src)
    local toks = M.tokenize(src)
    local map = {}
    local locals = {}

    local function tok(i)
        return toks[i] or toks[#toks]
    end

    local function is_op(i, v)
        local t = tok(i)
        return t.type == "op" and t.value == v
    end

    -- Index just past the expression starting at i, which ends before a "," ";" or the
    -- closing bracket of the enclosing constructor (at nesting depth 0).
    local function skip_expr(i)
        local depth = 0
        while true do
            local t = tok(i)
            if t.type == "eof" then
                return i
            end
            if t.type == "op" then
                if BRACKET_OPEN[t.value] then
                    depth = depth + 1
                elseif BRACKET_CLOSE[t.value] then
                    if depth == 0 then
                        return i
                    end
                    depth = depth - 1
                elseif (t.value == "," or t.value == ";") and depth == 0 then
                    return i
                end
            elseif t.type == "keyword" then
                if BLOCK_OPEN[t.value] then
                    depth = depth + 1
                elseif BLOCK_CLOSE[t.value] then
                    depth = depth - 1
                end
            end
            i = i + 1
        end
    end

    local constructor

    -- Records what a value expression starting at i holds; returns the index past it.
    local function value(i, path, seen)
        local t = tok(i)
        if is_op(i, "{") then
            i = constructor(i, path, seen)
        elseif t.type == "name" then
            -- NAME, a top-level local table; NAME { ... } or NAME.x { ... } or NAME({ ... }):
            -- a helper call, whose table argument usually holds the keys as written.
            local j = i + 1
            while (is_op(j, ".") or is_op(j, ":")) and tok(j + 1).type == "name" do
                j = j + 2
            end
            if is_op(j, "{") then
                i = constructor(j, path, seen)
            elseif is_op(j, "(") and is_op(j + 1, "{") then
                i = constructor(j + 1, path, seen)
            elseif j == i + 1 and locals[t.value] and not seen[t.value] then
                local e = skip_expr(i)
                if e == i + 1 then
                    seen[t.value] = true
                    constructor(locals[t.value], path, seen)
                    seen[t.value] = nil
                end
            end
        end
        return skip_expr(i)
    end

    -- Walks the constructor whose "{" is at i; returns the index past its "}".
    function constructor(i, path, seen)
        if map[path] == nil then
            map[path] = tok(i).line
        end
        i = i + 1
        local n = 0
        while true do
            local t = tok(i)
            if t.type == "eof" then
                return i
            elseif is_op(i, "}") then
                return i + 1
            end
            local key, key_line, vstart
            if t.type == "name" and is_op(i + 1, "=") then
                key, key_line, vstart = t.value, t.line, i + 2
            elseif is_op(i, "[") then
                local close = skip_expr(i + 1)
                local k = tok(i + 1)
                if close == i + 2 and (k.type == "string" or k.type == "number") then
                    key = k.value
                    if type(key) == "number" then
                        key = math.tointeger(key) or key
                    end
                end
                key_line = t.line
                vstart = is_op(close, "]") and is_op(close + 1, "=") and close + 2 or close
            else
                n = n + 1
                key, key_line, vstart = n, t.line, i
            end
            local e
            if key ~= nil then
                local child = M.join(path, key)
                if map[child] == nil then
                    map[child] = key_line
                end
                e = value(vstart, child, seen)
            else
                e = skip_expr(vstart)
            end
            if is_op(e, ",") or is_op(e, ";") then
                i = e + 1
            elseif is_op(e, "}") then
                return e + 1
            else
                return e -- malformed: stop here
            end
        end
    end

    -- Top level: note `local NAME = {` and find the `return` of the main chunk.
    local depth, ret = 0, nil
    local i = 1
    while tok(i).type ~= "eof" do
        local t = tok(i)
        if t.type == "op" then
            if BRACKET_OPEN[t.value] then
                depth = depth + 1
            elseif BRACKET_CLOSE[t.value] then
                depth = depth - 1
            end
        elseif t.type == "keyword" then
            if BLOCK_OPEN[t.value] then
                depth = depth + 1
            elseif BLOCK_CLOSE[t.value] then
                depth = depth - 1
            elseif depth == 0 and t.value == "local" and tok(i + 1).type == "name"
                and is_op(i + 2, "=") and is_op(i + 3, "{") then
                locals[tok(i + 1).value] = i + 3
            elseif depth == 0 and t.value == "return" then
                ret = i
            end
        end
        i = i + 1
    end
    if ret then
        map[""] = tok(ret).line
        value(ret + 1, "", {})
    end
    return map
end

--- Line of `path` in a map from scan(): the path itself, else its longest known prefix,
-- else 1.
function M.line(map, path)
    local p = path
    while p do
        if map[p] then
            return map[p]
        end
        p = M.parent(p)
    end
    return 1
end

return M
