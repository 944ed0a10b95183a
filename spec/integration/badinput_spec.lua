-- Client -> gateway bad input (README, "How levee proxies": strict parsing),
-- sent as raw bytes to the real levee in front of real lv-testupstream processes.
--
-- For every row: the status code; for gateway-made errors the `Levee-Error` header and the
-- JSON body {"error","request_id"}; the connection closed where the framing is in doubt; and
-- above all that NOTHING reached an upstream for a rejected request (upstream request counters
-- checked after a sentinel request went through), or, for accepted-but-normalised requests,
-- exactly what the upstream received (echoed head, body length and digest, canonical framing).

local H = require("helpers")
local socket = require("socket")

-- The Levee-Error token of each gateway-made client error status.
local TOKENS = {
    [400] = "bad-request",
    [405] = "method-not-allowed",
    [408] = "request-timeout",
    [413] = "body-too-large",
    [414] = "uri-too-long",
    [417] = "expectation-failed",
    [431] = "header-too-large",
    [501] = "not-implemented",
    [505] = "version-not-supported",
}

-- Limits of the main levee (small, so the oversize rows stay cheap).
local LIMITS = {
    header_size = "4KiB",
    request_line = "1KiB",
    header_count = 20,
    body_size = "1KiB",
}

---------------------------------------------------------------------------------------------
-- helpers

local function post(path, rest)
    return "POST " .. path .. " HTTP/1.1\r\nHost: a\r\n" .. rest
end

local function get(path, rest)
    return "GET " .. path .. " HTTP/1.1\r\nHost: a\r\n" .. (rest or "\r\n")
end

-- Every echoed header {name, value} whose name equals `name` (case-insensitive).
local function echo_headers(e, name)
    local out = {}
    for _, kv in ipairs(e.headers) do
        if kv[1]:lower() == name:lower() then out[#out + 1] = kv[2] end
    end
    return out
end

-- The upstream saw exactly one framing header, the canonical one for the body it got.
local function assert_canonical_framing(e, kind, len)
    local cl, te = echo_headers(e, "content-length"), echo_headers(e, "transfer-encoding")
    if kind == "length" then
        assert.same({ tostring(len) }, cl)
        assert.same({}, te)
    elseif kind == "chunked" then
        assert.same({ "chunked" }, te)
        assert.same({}, cl)
    else
        assert.same({}, cl)
        assert.same({}, te)
    end
end

-- A gateway-made error response: status, Levee-Error, JSON body naming the same token and a
-- request id (the one in X-Request-Id when that header is sent).
local function assert_gateway_error(r, status)
    assert.equal(status, r.status)
    local token = r.headers["levee-error"]
    assert.is_string(token, "no Levee-Error header in:\n" .. tostring(r.raw_head))
    assert.equal(TOKENS[status], token)
    assert.matches("^application/json", r.headers["content-type"] or "")
    local body = H.json(r.body)
    assert.equal(token, body.error)
    assert.is_string(body.request_id)
    assert.is_true(#body.request_id > 0)
    if r.headers["x-request-id"] then assert.equal(r.headers["x-request-id"], body.request_id) end
end

-- lv-testupstream counters of both upstreams.
local function counts(ups)
    local out = {}
    for i, u in ipairs(ups) do out[i] = u:stats().requests end
    return out
end

---------------------------------------------------------------------------------------------
-- the table: { name, bytes, status, close = true | false | nil, forwarded, check = fn(echo) }
--   close = true: the connection must be closed after the response (framing in doubt);
--   close = false: it must stay usable (a second request on it is served);
--   close = nil: either is fine (a well-formed head refused by policy).
--   forwarded = false: no upstream may have received anything.

local CRLF = "\r\n"
local CHUNKED_5 = "5\r\nabcde\r\n0\r\n\r\n"

local ROWS = {
    -- 1: CL.TE / TE.CL
    { "1 CL then TE", post("/r1a", "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nX"), 400, true },
    { "1 TE then CL", post("/r1b", "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nX"), 400, true },
    -- 2, 3: duplicate Content-Length
    { "2 duplicate CL, different", post("/r2", "Content-Length: 3\r\nContent-Length: 5\r\n\r\nabcde"), 400, true },
    { "3 duplicate CL, same", post("/r3a", "Content-Length: 5\r\nContent-Length: 5\r\n\r\nabcde"), 400, true },
    { "3 CL list 5, 5", post("/r3b", "Content-Length: 5, 5\r\n\r\nabcde"), 400, true },
    -- 4: Content-Length not 1*DIGIT
    { "4 CL +5", post("/r4a", "Content-Length: +5\r\n\r\nabcde"), 400, true },
    { "4 CL -1", post("/r4b", "Content-Length: -1\r\n\r\nabcde"), 400, true },
    { "4 CL 0x5", post("/r4c", "Content-Length: 0x5\r\n\r\nabcde"), 400, true },
    { "4 CL 5a", post("/r4d", "Content-Length: 5a\r\n\r\nabcde"), 400, true },
    { "4 CL '1 0'", post("/r4e", "Content-Length: 1 0\r\n\r\nabcde"), 400, true },
    { "4 CL 1_0", post("/r4f", "Content-Length: 1_0\r\n\r\nabcde"), 400, true },
    { "4 CL empty", post("/r4g", "Content-Length: \r\n\r\nabcde"), 400, true },
    { "4 CL '5,5' with HTAB", post("/r4h", "Content-Length: 5\t,5\r\n\r\nabcde"), 400, true },
    -- HTAB is OWS as much as SP, on either side of a framing value
    { "4 CL TAB 5 TAB (OWS)", post("/r4i", "Content-Length:\t5\t\r\n\r\nabcde"), 200, false,
        forwarded = true, check = function(e)
            assert.equal("/r4i", e.target)
            assert_canonical_framing(e, "length", 5)
        end },
    { "13 TE chunked TAB (OWS)", post("/r13t", "Transfer-Encoding: chunked\t\r\n\r\n5\r\nabcde\r\n0\r\n\r\n"),
        200, false, forwarded = true, check = function(e)
            assert.equal("/r13t", e.target)
            assert_canonical_framing(e, "chunked", 5)
        end },
    -- 5: overflow
    { "5 CL overflow", post("/r5", "Content-Length: 18446744073709551616\r\n\r\nabcde"), 400, true },
    -- 6: leading zeros, accepted and forwarded as Content-Length: 5
    { "6 CL leading zeros (forwarded as 5)", post("/r6", "Content-Length: 005\r\n\r\nabcde"), 200, false,
        forwarded = true, check = function(e)
            assert.equal("POST", e.method)
            assert.equal("/r6", e.target)
            assert_canonical_framing(e, "length", 5)
            assert.equal(5, e.body_len)
            assert.equal(H.fnv1a64("abcde"), e.body_sha)
        end },
    -- 7: whitespace before the colon
    { "7 'Transfer-Encoding : chunked'", post("/r7a", "Transfer-Encoding : chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    { "7 'Content-Length<TAB>: 5'", post("/r7b", "Content-Length\t: 5\r\n\r\nabcde"), 400, true },
    -- 8: Transfer-Encoding not exactly chunked
    { "8 TE identity", post("/r8a", "Transfer-Encoding: identity\r\n\r\n" .. CHUNKED_5), 400, true },
    { "8 TE xchunked", post("/r8b", "Transfer-Encoding: xchunked\r\n\r\n" .. CHUNKED_5), 400, true },
    { "8 TE chunked-false", post("/r8c", "Transfer-Encoding: chunked-false\r\n\r\n" .. CHUNKED_5), 400, true },
    { "8 TE 'chunked, identity'", post("/r8d", "Transfer-Encoding: chunked, identity\r\n\r\n" .. CHUNKED_5), 400, true },
    { "8 TE quoted", post("/r8e", "Transfer-Encoding: \"chunked\"\r\n\r\n" .. CHUNKED_5), 400, true },
    { "8 TE chunked;ext=val", post("/r8f", "Transfer-Encoding: chunked;ext=val\r\n\r\n" .. CHUNKED_5), 400, true },
    { "8 TE \\xa0chunked", post("/r8g", "Transfer-Encoding: \xa0chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    -- 9: chunked twice
    { "9 TE 'chunked, chunked'", post("/r9a", "Transfer-Encoding: chunked, chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    { "9 two TE chunked lines", post("/r9b",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    -- 10: well-formed codings we do not apply
    { "10 TE 'gzip, chunked' (501)", post("/r10a", "Transfer-Encoding: gzip, chunked\r\n\r\n" .. CHUNKED_5), 501, true },
    { "10 TE 'identity, chunked' (501)", post("/r10b",
        "Transfer-Encoding: identity, chunked\r\n\r\n" .. CHUNKED_5), 501, true },
    -- 11: empty list element
    { "11 TE ',chunked'", post("/r11", "Transfer-Encoding: ,chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    -- 12: OWS around chunked, accepted, forwarded canonical
    { "12 TE '<TAB>chunked' (forwarded canonical)", post("/r12a", "Transfer-Encoding:\tchunked\r\n\r\n" .. CHUNKED_5),
        200, false, forwarded = true, check = function(e)
            assert.equal("/r12a", e.target)
            assert_canonical_framing(e, "chunked")
            assert.equal(5, e.body_len)
            assert.equal(H.fnv1a64("abcde"), e.body_sha)
        end },
    { "12 TE 'chunked ' (forwarded canonical)", post("/r12b", "Transfer-Encoding: chunked \r\n\r\n" .. CHUNKED_5),
        200, false, forwarded = true, check = function(e)
            assert.equal("/r12b", e.target)
            assert_canonical_framing(e, "chunked")
            assert.equal(5, e.body_len)
        end },
    -- 13: TE on HTTP/1.0
    { "13 TE on HTTP/1.0", "POST /r13 HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n" .. CHUNKED_5, 400, true },
    -- 14, 15: obs-fold
    { "14 obs-fold smuggling a second request", post("/r14",
        "Foo: bar\r\n Content-Length: 38\r\n\r\nGET /r14bye HTTP/1.1\r\nHost: a\r\n\r\n"), 400, true },
    { "15 obs-fold in TE", post("/r15", "Transfer-Encoding:\r\n chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    -- 16-19: bare CR / LF
    { "16 bare CR ends a header", post("/r16", "X-Abc: \rxTransfer-Encoding: chunked\r\n\r\n1\r\nA\r\n0\r\n\r\n"),
        400, true },
    { "17 header block ends CRLF CR X", "GET /r17 HTTP/1.1\r\nHost: a\r\n\rZGET /r17evil HTTP/1.1\r\nHost: a\r\n\r\n",
        400, true },
    { "18 bare CR mid-value", get("/r18", "X: a\rb\r\n\r\n"), 400, true },
    { "19 bare LF after the request line", "GET /r19a HTTP/1.1\nHost: a\r\n\r\n", 400, true },
    { "19 bare LF ends the header section", "GET /r19b HTTP/1.1\r\nHost: a\r\n\n", 400, true },
    { "19 bare LF between fields", "GET /r19c HTTP/1.1\r\nHost: a\nX: b\r\n\r\n", 400, true },
    -- 20, 21: CTLs in values
    { "20 NUL in a value", get("/r20a", "X: a\0b\r\n\r\n"), 400, true },
    { "20 NUL in Host", "GET /r20b HTTP/1.1\r\nHost: a\0\r\n\r\n", 400, true },
    { "21 \\x01 in a value", get("/r21a", "X: a\1b\r\n\r\n"), 400, true },
    { "21 DEL in a value", get("/r21b", "X: a\127b\r\n\r\n"), 400, true },
    { "21 VT before chunked", post("/r21c", "Transfer-Encoding: \11chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    -- 22: obs-text, accepted and forwarded unchanged
    { "22 obs-text in a value (forwarded unchanged)", get("/r22", "X-Obs: a\xffb\r\n\r\n"), 200, false,
        forwarded = true, check = function(e)
            assert.equal("/r22", e.target)
            assert.same({ "a\xffb" }, echo_headers(e, "x-obs"))
            assert_canonical_framing(e, "none")
            assert.equal(0, e.body_len)
        end },
    -- 23-26: header names
    { "23 space in a field name", get("/r23a", "X Y: b\r\n\r\n"), 400, true },
    { "23 @ in a field name", get("/r23b", "X@Y: b\r\n\r\n"), 400, true },
    { "23 NUL in a field name", get("/r23c", "X\0Y: b\r\n\r\n"), 400, true },
    { "23 \\xa0 in Transfer-Encoding name", post("/r23d", "Transfer-Encoding\xa0: chunked\r\n\r\n" .. CHUNKED_5),
        400, true },
    { "24 empty field name", get("/r24", ": b\r\n\r\n"), 400, true },
    { "25 field line without colon", get("/r25", "Foo\r\n\r\n"), 400, true },
    { "26 Content_Length twin", post("/r26a", "Content_Length: 5\r\n\r\nabcde"), 400, true },
    { "26 Transfer_Encoding twin", post("/r26b", "Transfer_Encoding: chunked\r\n\r\n" .. CHUNKED_5), 400, true },
    { "26 Host_ twin", get("/r26c", "Host_: b\r\n\r\n"), 400, true },
    -- 27, 28: whitespace in the head structure
    { "27 whitespace before the first field", "GET /r27 HTTP/1.1\r\n Host: a\r\n\r\n", 400, true },
    { "28 two spaces after the method", "GET  /r28a HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "28 trailing space after the version", "GET /r28b HTTP/1.1 \r\nHost: a\r\n\r\n", 400, true },
    { "28 TAB after the method", "GET\t/r28c HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "28 LF after the method", "GET\n/r28d HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    -- 29-31: request-target bytes
    { "29 space inside the target", "GET /r29a x HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "29 NUL in the target", "GET /r29b\0x HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "29 \\x01 in the target", "GET /r29c\1x HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "29 DEL in the target", "GET /r29d\127x HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "30 non-ASCII in the target", "GET /r30\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "31 fragment in the target", "GET /r31#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    -- 32: absolute-form, routed by its authority, forwarded as origin-form with a new Host
    { "32 absolute-form (routed by authority, origin-form + new Host)",
        "GET http://good.example/r32/x?q=1 HTTP/1.1\r\nHost: other.example\r\n\r\n", 200, false,
        forwarded = "vhost", check = function(e)
            assert.equal("GET", e.method)
            assert.equal("/r32/x?q=1", e.target)
            assert.same({ "good.example" }, echo_headers(e, "host"))
            assert.equal("vhost", e.server:match("^(%w+):"))
        end },
    { "32 absolute-form with userinfo in the authority", "GET http://u@good.example/r32b HTTP/1.1\r\nHost: a\r\n\r\n",
        400, true },
    -- 33: authority-form / asterisk-form misuse
    { "33 authority-form with GET", "GET good.example:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "33 GET *", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "33 OPTIONS */test", "OPTIONS */r33 HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    -- 34: CONNECT, the tunnel bytes never parsed as HTTP
    { "34 CONNECT (405, tunnel bytes ignored)",
        "CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\nGET /r34smuggled HTTP/1.1\r\nHost: a\r\n\r\n", 405, true },
    -- 35: methods
    { "35 unknown method FOO (501)", "FOO /r35a HTTP/1.1\r\nHost: a\r\n\r\n", 501, nil },
    { "35 lower-case method get (501)", "get /r35b HTTP/1.1\r\nHost: a\r\n\r\n", 501, nil },
    { "35 unknown method GETX (501)", "GETX /r35c HTTP/1.1\r\nHost: a\r\n\r\n", 501, nil },
    { "35 method not a token (400)", "G(T /r35d HTTP/1.1\r\nHost: a\r\n\r\n", 400, true },
    -- 36: versions
    { "36 HTTP/1.2 is HTTP/1.1", "GET /r36a HTTP/1.2\r\nHost: a\r\n\r\n", 200, false,
        forwarded = true, check = function(e)
            assert.equal("/r36a", e.target)
            assert.equal("HTTP/1.1", e.version)
        end },
    { "36 HTTP/3.0 (505)", "GET /r36f HTTP/3.0\r\nHost: a\r\n\r\n", 505, true },
    { "36 HTTP/1.10 (400)", "GET /r36b HTTP/1.10\r\nHost: a\r\n\r\n", 400, true },
    { "36 HTTP/2.0 (505)", "GET /r36c HTTP/2.0\r\nHost: a\r\n\r\n", 505, true },
    { "36 lower-case http/1.1 (400)", "GET /r36d http/1.1\r\nHost: a\r\n\r\n", 400, true },
    { "36 HTTP/0.9 (400)", "GET /r36e\r\n\r\n", 400, true },
    -- 37, 38: Host
    { "37 missing Host on 1.1", "GET /r37 HTTP/1.1\r\n\r\n", 400, nil },
    { "38 duplicate Host", "GET /r38a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, nil },
    { "38 Host 'a b@c'", "GET /r38b HTTP/1.1\r\nHost: a b@c\r\n\r\n", 400, nil },
    { "38 Host port 99999", "GET /r38c HTTP/1.1\r\nHost: a:99999\r\n\r\n", 400, nil },
    { "38 Host with \\x02", "GET /r38d HTTP/1.1\r\nHost: a\2\r\n\r\n", 400, true },
    -- 41-47: chunked framing of the body
    { "41 chunk size 0x5", post("/r41a", "Transfer-Encoding: chunked\r\n\r\n0x5\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "41 chunk size +5", post("/r41b", "Transfer-Encoding: chunked\r\n\r\n+5\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "41 chunk size ' 5'", post("/r41c", "Transfer-Encoding: chunked\r\n\r\n 5\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "41 chunk size empty", post("/r41d", "Transfer-Encoding: chunked\r\n\r\n\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "41 chunk size 0_5", post("/r41e", "Transfer-Encoding: chunked\r\n\r\n0_5\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "41 chunk size overflow", post("/r41f",
        "Transfer-Encoding: chunked\r\n\r\n10000000000000005\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "42 chunk size + SP", post("/r42a", "Transfer-Encoding: chunked\r\n\r\n5 \r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "42 chunk size + TAB", post("/r42b", "Transfer-Encoding: chunked\r\n\r\n5\t\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "43 chunk line bare LF", post("/r43a", "Transfer-Encoding: chunked\r\n\r\n5\nabcde\r\n0\r\n\r\n"), 400, true },
    { "43 chunk line CR X", post("/r43b", "Transfer-Encoding: chunked\r\n\r\n5\r\r;ABCD\r\nabcde\r\n0\r\n\r\n"),
        400, true },
    { "44 chunk data not followed by CRLF", post("/r44", "Transfer-Encoding: chunked\r\n\r\n5\r\nabcdeXX0\r\n\r\n"),
        400, true },
    { "45 chunk data then bare LF", post("/r45", "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\n0\r\n\r\n"), 400, true },
    { "46 chunk-ext with NUL", post("/r46a", "Transfer-Encoding: chunked\r\n\r\n5;a\0\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "46 chunk-ext with bare CR", post("/r46b", "Transfer-Encoding: chunked\r\n\r\n5;a\rb\r\nabcde\r\n0\r\n\r\n"),
        400, true },
    { "46 chunk-ext with bare LF", post("/r46c", "Transfer-Encoding: chunked\r\n\r\n5;a\nb\r\nabcde\r\n0\r\n\r\n"),
        400, true },
    { "46 chunk-ext bare ;", post("/r46d", "Transfer-Encoding: chunked\r\n\r\n5;\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "46 chunk-ext quoted LF", post("/r46e",
        "Transfer-Encoding: chunked\r\n\r\n5;a=\"x\ny\"\r\nabcde\r\n0\r\n\r\n"), 400, true },
    { "47 huge chunk-ext (over the cap)", post("/r47",
        "Transfer-Encoding: chunked\r\n\r\n1;" .. ("a"):rep(8192) .. "\r\nx\r\n0\r\n\r\n"), 400, true },
    -- 48: framing fields in trailers
    { "48 Content-Length trailer", post("/r48a",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\nContent-Length: 50\r\n\r\n"), 400, true },
    { "48 Transfer-Encoding trailer", post("/r48b",
        "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400, true },
    { "48 Host trailer", post("/r48c", "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\nHost: x\r\n\r\n"),
        400, true },
    -- 49: oversize heads
    { "49 request line over limits.request_line (414)", "GET /r49a" .. ("a"):rep(1100) .. " HTTP/1.1\r\nHost: a\r\n\r\n",
        414, true },
    { "49 one field over limits.header_size (431)", get("/r49b", "X-Big: " .. ("b"):rep(5000) .. "\r\n\r\n"), 431, true },
    { "49 header section over limits.header_size (431)", get("/r49c",
        ("X-Mid: " .. ("m"):rep(500) .. "\r\n"):rep(10) .. "\r\n"), 431, true },
    { "49 more fields than limits.header_count (431)", get("/r49d", ("X-N: 1\r\n"):rep(25) .. "\r\n"), 431, true },
    -- body over limits.body_size
    { "body over limits.body_size, Content-Length up front (413)", post("/r49e",
        "Content-Length: 2000\r\n\r\n" .. ("z"):rep(2000)), 413, true },
    { "body over limits.body_size, chunked growing past it (413)", post("/r49f",
        "Transfer-Encoding: chunked\r\n\r\n" .. ("320\r\n" .. ("y"):rep(800) .. "\r\n"):rep(2) .. "0\r\n\r\n"), 413, true },
    -- 50: Connection-nominated and hop-by-hop fields removed
    { "50 Connection-nominated and hop-by-hop fields removed", get("/r50",
        "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n" ..
        "Trailer: X-T\r\nUpgrade: foo\r\nProxy-Connection: keep-alive\r\nProxy-Authorization: x\r\n" ..
        "X-Kept: yes\r\n\r\n"), 200, false, forwarded = true, check = function(e)
            for _, name in ipairs({ "X-Secret", "Connection", "Keep-Alive", "TE", "Trailer", "Upgrade",
                "Proxy-Connection", "Proxy-Authorization" }) do
                assert.same({}, echo_headers(e, name), name .. " was forwarded")
            end
            assert.same({ "yes" }, echo_headers(e, "x-kept"))
        end },
    -- 51: an expectation we do not know
    { "51 unknown Expect (417)", post("/r51", "Expect: teapot\r\nContent-Length: 3\r\n\r\nabc"), 417, true },
    -- 53: HTTP/2 preface on the h1 port
    { "53 H2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, true },
    -- extra vectors
    { "extra: TRACE (405)", "TRACE /rx1 HTTP/1.1\r\nHost: a\r\n\r\n", 405, nil },
    { "extra: %00 in the path", "GET /rx2/%00 HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil },
    { "extra: dot-segments above the root", "GET /rx3/../../etc/passwd HTTP/1.1\r\nHost: a\r\n\r\n", 400, nil },
    { "extra: large GET body is forwarded", get("/rx4", "Content-Length: 600\r\n\r\n" .. H.pattern(600)), 200, false,
        forwarded = true, check = function(e)
            assert.equal("GET", e.method)
            assert_canonical_framing(e, "length", 600)
            assert.equal(600, e.body_len)
            assert.equal(H.fnv1a64(H.pattern(600)), e.body_sha)
        end },
}

---------------------------------------------------------------------------------------------

describe("bad input from clients #badinput", function()
    local main, vhost, cap_srv, lv, lv_pid, ups

    setup(function()
        main = H.upstream({ name = "main" })
        vhost = H.upstream({ name = "vhost" })
        ups = { main, vhost }
        -- A plain socket standing in for an upstream, to see the exact bytes levee forwards.
        cap_srv = assert(socket.bind("127.0.0.1", 0))
        local _, cap_port = cap_srv:getsockname()
        lv = H.levee({
            ports = { PORT_CAP = tonumber(cap_port) },
            config = {
                limits = LIMITS,
                access_log = false,
                upstreams = {
                    main = { servers = { main:addr() } },
                    vhost = { servers = { vhost:addr() } },
                    cap = { servers = { "127.0.0.1:$PORT_CAP" } },
                },
                routes = {
                    { name = "vhost", match = { host = "good.example" }, upstream = "vhost" },
                    { name = "cap", match = { prefix = "/cap" }, upstream = "cap" },
                    { name = "main", upstream = "main" },
                },
            },
        })
        lv_pid = lv:pid()
    end)

    teardown(function()
        if cap_srv then cap_srv:close() end
        H.cleanup()
    end)

    local function sentinel(tag)
        local r = assert(H.request(lv.port, { path = "/sentinel/" .. tag, host = false,
            headers = { { "Host", "a" } } }))
        assert.equal(200, r.status)
        assert.equal("main:" .. main.ports[1], r.headers["x-upstream"])
    end

    for i, row in ipairs(ROWS) do
        local name, bytes, status, close = row[1], row[2], row[3], row[4]
        it(("row %s -> %d%s"):format(name, status,
            row.forwarded and ", forwarded" or ", nothing forwarded"), function()
            local before = counts(ups)
            local c = assert(H.conn(lv.port))
            c:send(bytes)
            local r, why, raw = c:read_response()
            assert(r, ("no response (%s), got %q"):format(tostring(why), tostring(raw)))
            assert.equal(status, r.status)
            if status >= 400 then
                assert_gateway_error(r, status)
            else
                assert.is_nil(r.headers["levee-error"])
            end
            if close == true then
                assert.is_true(c:closed(3 * H.scale), "connection left open")
                -- nothing after the error response (no second, smuggled answer)
                assert.equal("", c:buffered())
            elseif close == false then
                assert.is_false(c:closed(), "connection closed")
                assert(c:send(get("/after/" .. i)))
                local r2 = assert(c:read_response())
                assert.equal(200, r2.status)
                assert.equal("/after/" .. i, H.json(r2.body).target)
            end
            c:close()

            -- Everything the row sent was answered before the sentinel is sent; the sentinel's
            -- answer means the main upstream has counted it.
            sentinel(i)
            local after = counts(ups)
            local main_expected = before[1] + 1 + (close == false and 1 or 0)
            if row.forwarded == true then main_expected = main_expected + 1 end
            local vhost_expected = before[2] + (row.forwarded == "vhost" and 1 or 0)
            assert.same({ main_expected, vhost_expected }, after,
                "upstream request counts (main, vhost) before: " .. before[1] .. ", " .. before[2])
            if row.forwarded then
                assert.is_string(r.headers["x-upstream"])
                row.check(H.json(r.body))
            end
        end)
    end

    it("39 pipelined request after Connection: close is never processed nor forwarded", function()
        local before = counts(ups)
        local c = assert(H.conn(lv.port))
        c:send(get("/p39a", "Connection: close\r\n\r\n") .. get("/p39b"))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal("/p39a", H.json(r.body).target)
        assert.equal("close", (r.headers["connection"] or ""):lower())
        assert.is_true(c:closed(3 * H.scale))
        assert.equal("", c:buffered())
        c:close()
        sentinel("39")
        local st = main:stats()
        assert.equal(before[1] + 2, st.requests)
        assert.equal(1, st.by_path["/p39a"])
        assert.is_nil(st.by_path["/p39b"])
    end)

    it("40 'Connection: close<TAB>' counts as close: the bytes after the body are never a request", function()
        local before = counts(ups)
        local c = assert(H.conn(lv.port))
        c:send(post("/p40a", "Content-Length: 1\r\nConnection: close\t\r\n\r\nq") .. get("/p40b"))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal("/p40a", e.target)
        assert.equal(1, e.body_len)
        assert.is_true(c:closed(3 * H.scale))
        assert.equal("", c:buffered())
        c:close()
        sentinel("40")
        local st = main:stats()
        assert.equal(before[1] + 2, st.requests)
        assert.is_nil(st.by_path["/p40b"])
    end)

    it("51 Expect: 100-continue gets 100 Continue before the final response; Expect is not forwarded", function()
        local c = assert(H.conn(lv.port))
        c:send(post("/p51", "Expect: 100-continue\r\nContent-Length: 3\r\n\r\n"))
        local interim = assert(c:read_response())
        assert.equal(100, interim.status)
        assert.is_true(interim.interim)
        c:send("abc")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal("/p51", e.target)
        assert.equal(3, e.body_len)
        assert.equal(H.fnv1a64("abc"), e.body_sha)
        assert.same({}, echo_headers(e, "expect"))
        assert_canonical_framing(e, "length", 3)
        c:close()
    end)

    it("52 Upgrade with a body: the upgrade is ignored, the body ends at its length, what follows is a new request", function()
        -- levee does not tunnel (RFC 9110 §7.8: a server MAY ignore Upgrade): Upgrade and
        -- Connection never reach the upstream, no 101 is sent, and the bytes after the 3-byte
        -- body are parsed (and validated) as the next request, never passed through raw.
        local before = counts(ups)
        local c = assert(H.conn(lv.port))
        c:send(post("/p52a", "Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 3\r\n\r\nabc") ..
            get("/p52b"))
        local r1 = assert(c:read_response())
        assert.equal(200, r1.status)
        local e1 = H.json(r1.body)
        assert.equal("/p52a", e1.target)
        assert.equal(3, e1.body_len)
        assert.equal(H.fnv1a64("abc"), e1.body_sha)
        assert.same({}, echo_headers(e1, "upgrade"))
        assert.same({}, echo_headers(e1, "connection"))
        local r2 = assert(c:read_response())
        assert.equal(200, r2.status)
        assert.equal("/p52b", H.json(r2.body).target)
        c:close()
        assert.equal(before[1] + 2, main:stats().requests)
    end)

    it("48 benign trailers are dropped: the upstream gets the body and a bare last chunk", function()
        local c = assert(H.conn(lv.port))
        c:send(post("/cap/48", "Transfer-Encoding: chunked\r\n\r\n5\r\nabcde\r\n0\r\nX-Trailer: t1\r\n" ..
            "X-Other: t2\r\n\r\n"))
        cap_srv:settimeout(5 * H.scale)
        local u = assert(cap_srv:accept())
        u:settimeout(5 * H.scale)
        -- read the forwarded request up to its last chunk
        local got = ""
        while not got:find("\r\n0\r\n\r\n", 1, true) do
            local d, err, part = u:receive(1)
            d = d or part
            assert(d and #d > 0, "upstream side: " .. tostring(err) .. " after " .. ("%q"):format(got))
            got = got .. d
        end
        u:send("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        assert.equal("ok", r.body)
        u:close()
        c:close()
        local head, body = got:match("^(.-\r\n\r\n)(.*)$")
        assert.matches("^POST /cap/48 HTTP/1%.1\r\n", head)
        assert.matches("\r\nTransfer%-Encoding: chunked\r\n", head)
        assert.is_nil(head:lower():find("content-length", 1, true))
        assert.is_nil(head:lower():find("x-trailer", 1, true))
        -- the body is re-framed; no trailer field follows the last chunk
        local data = {}
        local rest = body
        while true do
            local size, after = rest:match("^(%x+)\r\n(.*)$")
            assert(size, ("bad chunk framing: %q"):format(rest))
            size = tonumber(size, 16)
            if size == 0 then
                assert.equal("\r\n", after)
                break
            end
            data[#data + 1] = after:sub(1, size)
            assert.equal("\r\n", after:sub(size + 1, size + 2))
            rest = after:sub(size + 3)
        end
        assert.equal("abcde", table.concat(data))
        assert.is_nil(got:find("t1", 1, true))
        assert.is_nil(got:find("t2", 1, true))
    end)

    it("serves a request split byte by byte over the socket", function()
        local c = assert(H.conn(lv.port))
        local bytes = post("/split", "X-Split: yes\r\nTransfer-Encoding: chunked\r\n\r\n" ..
            "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n")
        for k = 1, #bytes do
            assert(c:send(bytes:sub(k, k)))
        end
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal("POST", e.method)
        assert.equal("/split", e.target)
        assert.same({ "yes" }, echo_headers(e, "x-split"))
        assert.equal(7, e.body_len)
        assert.equal(H.fnv1a64("abcdefg"), e.body_sha)
        assert_canonical_framing(e, "chunked")
        -- and the connection is still good for a second request
        c:send(get("/split2"))
        local r2 = assert(c:read_response())
        assert.equal(200, r2.status)
        assert.equal("/split2", H.json(r2.body).target)
        c:close()
    end)

    it("survives all of it: the same levee process still answers a good request", function()
        assert.is_true(lv:alive())
        assert.equal(lv_pid, lv:pid())
        local r = assert(lv:request({ path = "/still/alive", method = "POST", body = "fine" }))
        assert.equal(200, r.status)
        local e = H.json(r.body)
        assert.equal("/still/alive", e.target)
        assert.equal(4, e.body_len)
        assert.is_true(main:alive())
        assert.is_true(vhost:alive())
    end)
end)

describe("client timeouts #badinput", function()
    local up, lv

    setup(function()
        up = H.upstream({ name = "t" })
        lv = H.levee({
            config = {
                limits = { header_timeout = "300ms", idle_timeout = "300ms" },
                access_log = false,
                upstreams = { u = { servers = { up:addr() } } },
                routes = { { name = "all", upstream = "u" } },
            },
        })
    end)

    teardown(H.cleanup)

    it("54 a head not completed within limits.header_timeout gets 408 and a close", function()
        local before = up:stats().requests
        local c = assert(H.conn(lv.port))
        local t0 = H.now()
        c:send("GET /slow HTTP/1.1\r\nHost: a\r\n")
        local r, why, raw = c:read_response({ timeout = 5 * H.scale })
        assert(r, ("no 408 (%s): %q"):format(tostring(why), tostring(raw)))
        local elapsed = H.now() - t0
        assert_gateway_error(r, 408)
        assert.is_true(elapsed >= 0.25, ("408 after %.3fs, before header_timeout"):format(elapsed))
        assert.is_true(c:closed(3 * H.scale))
        c:close()
        assert.equal(before, up:stats().requests)
    end)

    it("54 a head dripped one byte at a time still gets 408 at the deadline (no timer restart)", function()
        local before = up:stats().requests
        local c = assert(H.conn(lv.port))
        local t0 = H.now()
        local head = "GET /drip HTTP/1.1\r\nHost: a\r\nX-Long: " .. ("d"):rep(200)
        local k = 0
        -- one byte per 50 ms; stops as soon as levee closes
        while k < #head and not c:closed(0.05) do
            k = k + 1
            c:send(head:sub(k, k))
        end
        assert.is_true(k < #head, "levee waited for the whole dripped head")
        local elapsed = H.now() - t0
        assert.is_true(elapsed >= 0.25 and elapsed < 3 * H.scale, ("closed after %.3fs"):format(elapsed))
        local r = assert(c:read_response({ timeout = 1 }))
        assert_gateway_error(r, 408)
        c:close()
        assert.equal(before, up:stats().requests)
    end)

    it("an idle keep-alive connection is closed after limits.idle_timeout", function()
        local c = assert(H.conn(lv.port))
        c:send(get("/idle"))
        local r = assert(c:read_response())
        assert.equal(200, r.status)
        local t0 = H.now()
        assert.is_false(c:closed(0.1), "closed right after the response")
        assert.is_true(c:closed(3 * H.scale), "idle connection not closed")
        local elapsed = H.now() - t0
        assert.is_true(elapsed >= 0.15, ("closed after %.3fs idle"):format(elapsed))
        -- a silent close: no response bytes
        assert.equal("", c:buffered())
        c:close()
    end)

    it("survives: the same levee still answers", function()
        assert.is_true(lv:alive())
        local r = assert(lv:request({ path = "/ok", host = false, headers = { { "Host", "a" } } }))
        assert.equal(200, r.status)
    end)
end)

describe("max_connections #badinput", function()
    local up, lv

    setup(function()
        up = H.upstream({ name = "m" })
        lv = H.levee({
            config = {
                limits = { max_connections = 2 },
                access_log = false,
                upstreams = { u = { servers = { up:addr() } } },
                routes = { { name = "all", upstream = "u" } },
            },
        })
    end)

    teardown(H.cleanup)

    it("closes a third concurrent connection without a response; the first two still work", function()
        -- levee's own readiness probe connection may still be closing: wait until two
        -- keep-alive connections are both served.
        local c1, c2
        H.wait_until(function()
            if c1 then c1:close() end
            if c2 then c2:close() end
            c1, c2 = H.conn(lv.port), H.conn(lv.port)
            if not (c1 and c2) then return false end -- refused while an old one still counts
            c1:send(get("/c1"))
            c2:send(get("/c2"))
            local r1, r2 = c1:read_response({ timeout = 2 }), c2:read_response({ timeout = 2 })
            return r1 and r2 and r1.status == 200 and r2.status == 200
        end, 10 * H.scale, "two connections served")
        local before = up:stats().requests

        -- The kernel may complete the handshake before levee accepts and resets it, or the
        -- reset may already be there when the connect is checked: either way no response.
        local c3, err = H.conn(lv.port)
        if c3 then
            c3:send(get("/c3"))
            local data, why = c3:read_all(3 * H.scale)
            assert.equal("", data)
            assert.is_true(why == "closed" or why == "reset", "third connection: " .. tostring(why))
            c3:close()
        else
            assert.is_truthy(tostring(err):find("closed") or tostring(err):find("refused")
                or tostring(err):find("reset"), "third connection: " .. tostring(err))
        end

        for k, c in ipairs({ c1, c2 }) do
            c:send(get("/again" .. k))
            local r = assert(c:read_response())
            assert.equal(200, r.status)
            assert.equal("/again" .. k, H.json(r.body).target)
        end
        local st = up:stats()
        assert.equal(before + 2, st.requests)
        assert.is_nil(st.by_path["/c3"])
        c1:close()
        c2:close()
        -- with the slots free again a new connection is served
        local r = H.wait_until(function()
            local x = H.request(lv.port, { path = "/later", host = false, headers = { { "Host", "a" } }, timeout = 2 })
            return x and x.status == 200 and x
        end, 5 * H.scale, "a new connection served")
        assert.equal(200, r.status)
        assert.is_true(lv:alive())
    end)
end)

describe("requests refused before routing are in the access log #badinput", function()
    local lv, up

    setup(function()
        up = H.upstream({ name = "main" })
        lv = H.levee({
            config = {
                access_log = "stdout",
                limits = { header_size = "2KiB", request_line = "512B", body_size = "1KiB",
                    header_timeout = "300ms" },
                upstreams = { main = { servers = { up:addr() } } },
                routes = { { name = "main", upstream = "main" } },
            },
        })
    end)

    teardown(function() H.cleanup() end)

    it("logs 400, 408, 413, 414 and 431 with status, reason token and client address", function()
        local sends = {
            { "GET /a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad-request" },
            { "GET /a HTTP/1.1\r\nHost: a\r\nX-C: a\1b\r\n\r\n", 400, "bad-request" },
            { "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bad-request" },
            { "GET /" .. ("u"):rep(600) .. " HTTP/1.1\r\nHost: a\r\n\r\n", 414, "uri-too-long" },
            { "GET / HTTP/1.1\r\nHost: a\r\nX-Big: " .. ("b"):rep(3000) .. "\r\n\r\n", 431, "header-too-large" },
            { "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5000\r\n\r\n", 413, "body-too-large" },
            { "GET / HTTP/1.1\r\nHost: a\r\n", 408, "request-timeout" }, -- the head never ends
        }
        for _, x in ipairs(sends) do
            local c = assert(H.conn(lv.port))
            c:send(x[1])
            local r = assert(c:read_response({ timeout = 5 }))
            assert.equal(x[2], r.status)
            c:close()
        end
        local entries = lv:wait_access(#sends, 5)
        -- matched by status and reason: with several workers, lines come in the order
        -- workers write them
        for i, x in ipairs(sends) do
            local e
            for k, cand in ipairs(entries) do
                if cand.status == x[2] and cand.error == x[3] then
                    e = table.remove(entries, k)
                    break
                end
            end
            assert.is_not_nil(e, ("entry %d: no line with %d %s"):format(i, x[2], tostring(x[3])))
            assert.equal(H.null, e.route)
            assert.equal("127.0.0.1", e.client)
            assert.is_true(e.bytes_out > 0)
            assert.truthy(e.request_id:match("^%x+$"))
        end
        assert.equal(0, up:stats().requests)
    end)

    it("logs at most 100 refused requests a second and says how many it left out", function()
        local before = #lv:access_json()
        local garbage = ("GET /x HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n")
        local n = 0
        local t0 = H.now()
        while n < 300 and H.now() - t0 < 0.8 do
            local c = assert(H.conn(lv.port))
            c:send(garbage)
            assert.equal(400, assert(c:read_response()).status)
            c:close()
            n = n + 1
        end
        local m = lv:wait_log("requests refused before routing were not logged", 5, true)
        local logged = #lv:access_json() - before
        assert.is_true(logged <= 200, ("%d of %d logged"):format(logged, n))
        -- the second the burst began in may already hold a line or two of the test before
        assert.is_true(logged >= math.min(n, 90), ("%d of %d logged"):format(logged, n))
        local left = tonumber(lv:log():match("(%d+) requests refused before routing were not logged"))
        assert.is_true(left and left > 0)
        assert.is_not_nil(m)
    end)
end)
