-- spec/support/otlp_collector.lua: a test OTLP/HTTP collector the specs run as a real process.
--
--   lua5.4 spec/support/otlp_collector.lua PORT OUTFILE [STATUS]
--
-- Listens on 127.0.0.1:PORT (0: a free port), prints "ready 127.0.0.1:<port>" on stdout once
-- it accepts, and serves HTTP/1.1 with keep-alive on any number of connections
-- (socket.select). Every POST body (Content-Length or chunked) is appended to OUTFILE as one
-- line (CR and LF in it turned into spaces, which keeps any JSON document valid), flushed at
-- once; the answer is STATUS with the body `{}` (Content-Type application/json). STATUS may be
-- a comma-separated list ("503,503,200"): one per POST in order, the last one repeating.
-- Requests other than POST get 405 and are not recorded. Exits on SIGTERM.

local socket = require("socket")

local port = tonumber(arg[1] or "0")
local outfile = arg[2]
if not port or not outfile then
    io.stderr:write("usage: otlp_collector.lua PORT OUTFILE [STATUS[,STATUS...]]\n")
    os.exit(2)
end
local statuses = {}
for s in (arg[3] or "200"):gmatch("%d+") do statuses[#statuses + 1] = tonumber(s) end
if #statuses == 0 then statuses[1] = 200 end

local MAX_HEAD = 64 * 1024
local MAX_BODY = 64 * 1024 * 1024

local server = assert(socket.bind("127.0.0.1", port))
server:settimeout(0)
local _, bound = server:getsockname()
local out = assert(io.open(outfile, "ab"))
io.stdout:write("ready 127.0.0.1:" .. bound .. "\n")
io.stdout:flush()

local posts = 0
local reasons = { [200] = "OK", [400] = "Bad Request", [405] = "Method Not Allowed",
    [429] = "Too Many Requests", [500] = "Internal Server Error", [502] = "Bad Gateway",
    [503] = "Service Unavailable" }

local clients = {} -- socket -> { buf = "" }

local function drop(c)
    clients[c] = nil
    c:close()
end

local function send_all(c, data)
    c:settimeout(5)
    local ok = c:send(data)
    c:settimeout(0)
    return ok ~= nil
end

-- Parses a chunked body starting at `pos` of buf: the body and the position after it, nil if
-- more bytes are needed, or false on a malformed body.
local function chunked(buf, pos)
    local parts = {}
    local total = 0
    while true do
        local eol = buf:find("\r\n", pos, true)
        if not eol then return nil end
        local size = tonumber(buf:sub(pos, eol - 1):match("^(%x+)"), 16)
        if not size then return false end
        pos = eol + 2
        if size == 0 then
            -- trailers up to an empty line
            while true do
                local e = buf:find("\r\n", pos, true)
                if not e then return nil end
                if e == pos then return table.concat(parts), e + 2 end
                pos = e + 2
            end
        end
        total = total + size
        if total > MAX_BODY then return false end
        if #buf < pos + size + 1 then return nil end
        parts[#parts + 1] = buf:sub(pos, pos + size - 1)
        if buf:sub(pos + size, pos + size + 1) ~= "\r\n" then return false end
        pos = pos + size + 2
    end
end

-- Serves every complete request in the client's buffer; false when the connection must close.
local function serve(c, st)
    while true do
        local he = st.buf:find("\r\n\r\n", 1, true)
        if not he then return #st.buf <= MAX_HEAD end
        local head = st.buf:sub(1, he + 1)
        local method = head:match("^(%u+) ")
        local h = {}
        for name, value in head:gmatch("\n([^:\r\n]+):[ \t]*([^\r\n]*)") do h[name:lower()] = value end
        local body, after
        if (h["transfer-encoding"] or ""):lower():find("chunked", 1, true) then
            body, after = chunked(st.buf, he + 4)
            if body == false then return false end
            if body == nil then return true end
        else
            local n = tonumber(h["content-length"] or "0")
            if not n or n > MAX_BODY then return false end
            if #st.buf < he + 3 + n then return true end
            body = st.buf:sub(he + 4, he + 3 + n)
            after = he + 4 + n
        end
        st.buf = st.buf:sub(after)
        local status = 405
        if method == "POST" then
            posts = posts + 1
            status = statuses[math.min(posts, #statuses)]
            out:write((body:gsub("[\r\n]", " ")), "\n")
            out:flush()
        end
        local close = (h["connection"] or ""):lower() == "close"
        local resp = ("HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: 2\r\n%s\r\n{}")
            :format(status, reasons[status] or "Status", close and "Connection: close\r\n" or "")
        if not send_all(c, resp) or close then return false end
    end
end

while true do
    local watch = { server }
    for c in pairs(clients) do watch[#watch + 1] = c end
    local readable = socket.select(watch, nil, 1)
    for _, s in ipairs(readable or {}) do
        if s == server then
            while true do
                local c = server:accept()
                if not c then break end
                c:settimeout(0)
                c:setoption("tcp-nodelay", true)
                clients[c] = { buf = "" }
            end
        elseif clients[s] then
            local st = clients[s]
            local data, err, partial = s:receive(65536)
            data = data or partial
            if data and #data > 0 then st.buf = st.buf .. data end
            local keep = serve(s, st)
            if not keep or (err and err ~= "timeout") then drop(s) end
        end
    end
end
