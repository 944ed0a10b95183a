-- The shape of core/ that the README's "Development" section promises: no include cycle
-- among modules (a .c and its .h are one module), no file over 1,000 lines, and comments that
-- cite only the repository's own README and docs/.
local src = os.getenv("LEVEE_SRC") or "."

local function files(ext)
    local out = {}
    local p = io.popen("cd " .. src .. " && find core -name '*." .. ext .. "' | sort")
    for line in p:lines() do out[#out + 1] = line end
    p:close()
    return out
end

-- Files outside the repository that comments must not cite (split so this file does not
-- match itself).
local SPEC_REF, RESEARCH_REF, SHARED_REF = "SP" .. "EC §", "rese" .. "arch/", "%.%./sh" .. "ared"

local function module_of(path) return (path:gsub("%.[ch]$", "")) end

local function read(path)
    local f = assert(io.open(src .. "/" .. path, "rb"))
    local s = f:read("a")
    f:close()
    return s
end

-- Strongly connected components of the module include graph (Tarjan), larger than one.
local function cycles(graph)
    local index, low, on, stack, out, n = {}, {}, {}, {}, {}, 0
    local function visit(v)
        n = n + 1
        index[v], low[v] = n, n
        stack[#stack + 1] = v
        on[v] = true
        for w in pairs(graph[v] or {}) do
            if not index[w] then
                visit(w)
                low[v] = math.min(low[v], low[w])
            elseif on[w] then
                low[v] = math.min(low[v], index[w])
            end
        end
        if low[v] == index[v] then
            local comp = {}
            repeat
                local w = table.remove(stack)
                on[w] = nil
                comp[#comp + 1] = w
            until w == v
            if #comp > 1 then
                table.sort(comp)
                out[#out + 1] = table.concat(comp, " <-> ")
            end
        end
    end
    local names = {}
    for v in pairs(graph) do names[#names + 1] = v end
    table.sort(names)
    for _, v in ipairs(names) do if not index[v] then visit(v) end end
    return out
end

local function include_graph()
    local graph = {}
    for _, ext in ipairs({ "c", "h" }) do
        for _, path in ipairs(files(ext)) do
            if not path:find("^core/test/") then
                local m = module_of(path)
                graph[m] = graph[m] or {}
                for inc in read(path):gmatch('#include "([^"]+)"') do
                    local dep = "core/" .. module_of(inc)
                    if dep ~= m then graph[m][dep] = true end
                end
            end
        end
    end
    return graph
end

describe("core/ layout", function()
    it("has no include cycle among modules", function()
        local graph = include_graph()
        assert.is_truthy(next(graph)) -- the walk found the sources
        assert.same({}, cycles(graph))
    end)

    it("finds a cycle when there is one (the check itself works)", function()
        local g = { a = { b = true }, b = { c = true }, c = { a = true }, d = { a = true } }
        assert.same({ "a <-> b <-> c" }, cycles(g))
    end)

    -- The testing layer (`levee test`, README "Testing your policies") runs the policy code
    -- offline: it may use the layers below the request path, never the request path itself,
    -- and only the command line (main.c) and its own unit tests use it.
    it("keeps core/testing off the request path, and used by main.c only", function()
        local allowed = { base = true, http = true, policy = true, conf = true, script = true,
                          store = true, obs = true, testing = true }
        local bad = {}
        for _, ext in ipairs({ "c", "h" }) do
            for _, path in ipairs(files(ext)) do
                local text = read(path)
                for inc in text:gmatch('#include "([^"]+)"') do
                    local layer = inc:match("^([%w_]+)/")
                    if path:find("^core/testing/") and layer and not allowed[layer] then
                        bad[#bad + 1] = path .. " includes " .. inc
                    end
                    if layer == "testing" and not path:find("^core/testing/")
                        and not path:find("^core/test/") and path ~= "core/main.c" then
                        bad[#bad + 1] = path .. " includes " .. inc
                    end
                end
            end
        end
        assert.same({}, bad)
    end)

    it("has no file over 1,000 lines", function()
        local long = {}
        for _, ext in ipairs({ "c", "h" }) do
            for _, path in ipairs(files(ext)) do
                local _, lines = read(path):gsub("\n", "")
                if lines > 1000 then long[#long + 1] = path .. ": " .. lines end
            end
        end
        assert.same({}, long)
    end)

    it("cites only the README and docs/ in comments", function()
        local bad = {}
        for _, ext in ipairs({ "c", "h" }) do
            for _, path in ipairs(files(ext)) do
                local n = 0
                for line in read(path):gmatch("[^\n]*") do
                    n = n + 1
                    if line:find(SPEC_REF) or line:find(RESEARCH_REF) or line:find("[Ii]ssue #?%d")
                        or line:find(SHARED_REF) then
                        bad[#bad + 1] = path .. ":" .. n .. ": " .. line
                    end
                end
            end
        end
        assert.same({}, bad)
    end)
end)
