/*
 * reqhead: request heads run through headscan then reqhead, as the client connection does;
 * (README, "How levee proxies") and the derived facts (spans, keep-alive,
 * absolute-form split, Expect, Upgrade, Connection-nominated fields, X-Request-Id).
 */
#include <llhttp.h>

#include "http/headscan.h"
#include "http/reqhead.h"
#include "t.h"

#define NF 32
static struct lv_field fields[NF];
static struct lv_reqhead h;

/* headscan first (its status wins), then reqhead; the head must be the whole input. */
static int parse_n(const char *head, size_t len, uint32_t max_fields)
{
    struct lv_headscan s;
    lv_headscan_init(&s, false, 32768, 8192, 100);
    enum lv_headscan_result r = lv_headscan_feed(&s, head, len);
    if (r == LV_HEADSCAN_ERROR)
        return s.status;
    if (r != LV_HEADSCAN_DONE || s.head_len != len) {
        fprintf(stderr, "headscan did not finish the head\n");
        return -1;
    }
    return lv_reqhead_parse(&h, head, len, fields, max_fields);
}

#define PARSE(lit)       parse_n(lit, sizeof(lit) - 1, NF)
#define H                "Host: a\r\n"
#define SPAN_IS(sp, lit) ((sp).len == sizeof(lit) - 1 && memcmp((sp).p, lit, (sp).len) == 0)

T_TEST(simple_get)
{
    static const char req[] = "GET /p/a?x=1&y HTTP/1.1\r\nHost: a.example\r\nX-Other:  v w \t\r\n"
                              "Empty:\r\n\r\n";
    T_CHECK_INT(PARSE(req), 0);
    T_CHECK_INT(h.method, HTTP_GET);
    T_CHECK_INT(h.major, 1);
    T_CHECK_INT(h.minor, 1);
    T_CHECK(SPAN_IS(h.target, "/p/a?x=1&y"));
    T_CHECK(h.target.p == req + 4); /* spans point into the caller's buffer */
    T_CHECK(SPAN_IS(h.path, "/p/a"));
    T_CHECK(h.has_query);
    T_CHECK(SPAN_IS(h.query, "x=1&y"));
    T_CHECK(SPAN_IS(h.host, "a.example"));
    T_CHECK(!h.absolute_form);
    T_CHECK(h.keep_alive);
    T_CHECK(!h.has_content_length);
    T_CHECK(!h.chunked);
    T_CHECK_INT(h.nfields, 3);
    T_CHECK(h.fields == fields);
    T_CHECK(SPAN_IS(fields[0].name, "Host"));
    T_CHECK_INT(fields[0].id, LV_FID_HOST);
    T_CHECK(SPAN_IS(fields[1].name, "X-Other"));
    T_CHECK(SPAN_IS(fields[1].value, "v w"));
    T_CHECK(SPAN_IS(fields[2].name, "Empty"));
    T_CHECK_INT(fields[2].value.len, 0);
    T_CHECK(fields[2].value.p != NULL);
    T_CHECK_INT(fields[0].flags | fields[1].flags | fields[2].flags, 0);
    T_CHECK_INT(h.request_id.len, 0);
}

T_TEST(query_and_path_shapes)
{
    T_CHECK_INT(PARSE("GET /p? HTTP/1.1\r\n" H "\r\n"), 0);
    T_CHECK(SPAN_IS(h.path, "/p"));
    T_CHECK(h.has_query);
    T_CHECK_INT(h.query.len, 0);
    T_CHECK_INT(PARSE("OPTIONS * HTTP/1.1\r\n" H "\r\n"), 0);
    T_CHECK_INT(h.method, HTTP_OPTIONS);
    T_CHECK(SPAN_IS(h.path, "*"));
    T_CHECK(!h.has_query);
    T_CHECK_INT(PARSE("\r\nGET / HTTP/1.1\r\n" H "\r\n"), 0); /* leading empty line */
    T_CHECK(SPAN_IS(h.path, "/"));
}

T_TEST(row32_absolute_form)
{
    T_CHECK_INT(PARSE("GET http://Evil.example:8080/x?q HTTP/1.1\r\nHost: good.example\r\n\r\n"),
                0);
    T_CHECK(h.absolute_form);
    T_CHECK(SPAN_IS(h.scheme, "http"));
    T_CHECK(SPAN_IS(h.authority, "Evil.example:8080"));
    T_CHECK(SPAN_IS(h.host, "Evil.example:8080"));
    T_CHECK(SPAN_IS(h.path, "/x"));
    T_CHECK(SPAN_IS(h.query, "q"));
    T_CHECK_INT(PARSE("GET HTTPS://a.example HTTP/1.1\r\n" H "\r\n"), 0);
    T_CHECK(SPAN_IS(h.scheme, "HTTPS"));
    T_CHECK(SPAN_IS(h.authority, "a.example"));
    T_CHECK(SPAN_IS(h.path, "/"));
    T_CHECK(!h.has_query);
    T_CHECK_INT(PARSE("GET http://a.example?x HTTP/1.1\r\n" H "\r\n"), 0);
    T_CHECK(SPAN_IS(h.path, "/"));
    T_CHECK(SPAN_IS(h.query, "x"));
    T_CHECK_INT(PARSE("GET http://user@a/ HTTP/1.1\r\n" H "\r\n"), 400);
    T_CHECK_INT(PARSE("GET http:///x HTTP/1.1\r\n" H "\r\n"), 400);
    T_CHECK_INT(PARSE("GET http://a:99999/ HTTP/1.1\r\n" H "\r\n"), 400);
    /* Host is still required on 1.1 (RFC 9112 §3.2). */
    T_CHECK_INT(PARSE("GET http://a/ HTTP/1.1\r\n\r\n"), 400);
}

T_TEST(framing_rows_1_to_6)
{
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n"
                      "\r\n"),
                400);
    T_CHECK_STR(h.reason, "Content-Length with Transfer-Encoding");
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\nContent-Length: 6\r\n"
                      "\r\n"),
                400);
    T_CHECK_STR(h.reason, "Content-Length with Transfer-Encoding");
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 3\r\nContent-Length: 5\r\n\r\n"),
                400);
    T_CHECK_STR(h.reason, "duplicate Content-Length");
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 5\r\nContent-Length: 5\r\n\r\n"),
                400);
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 5, 5\r\n\r\n"), 400);
    static const char *bad[] = {"+5",
                                "-1",
                                "0x5",
                                "5a",
                                "1 0",
                                "1_0",
                                "",
                                "5\t,5",
                                "18446744073709551616",
                                "9007199254740993"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char req[128];
        int n = snprintf(req, sizeof(req),
                         "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\n\r\n", bad[i]);
        int st = parse_n(req, (size_t)n, NF);
        if (st != 400)
            fprintf(stderr, "CL \"%s\" -> %d\n", bad[i], st);
        T_CHECK_INT(st, 400);
    }
    /* OWS around the value is SP or HTAB alike (RFC 9110 §5.6.3). */
    static const char *ows[] = {"\t5\t", "5\t", "5 \t ", " 5\t\t", "5\t "};
    for (size_t i = 0; i < sizeof(ows) / sizeof(ows[0]); i++) {
        char req[128];
        int n =
            snprintf(req, sizeof(req),
                     "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: %s\r\nX: y\t\r\n\r\n", ows[i]);
        T_CHECK_INT(parse_n(req, (size_t)n, NF), 0);
        T_CHECK_INT(h.content_length, 5);
        T_CHECK_INT(h.nfields, 3);
    }
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 005\r\n\r\n"), 0);
    T_CHECK(h.has_content_length);
    T_CHECK_INT(h.content_length, 5);
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 0\r\n\r\n"), 0);
    T_CHECK(h.has_content_length);
    T_CHECK_INT(h.content_length, 0);
}

T_TEST(transfer_encoding_rows_8_to_13)
{
    static const struct {
        const char *te;
        int want;
    } v[] = {
        {"chunked", 0},
        {"\tchunked", 0},
        {"chunked ", 0},
        {"chunked\t", 0},
        {"chunked \t", 0},
        {"\tchunked\t", 0},
        {"Chunked", 0},
        {"identity", 400},
        {"xchunked", 400},
        {"chunked-false", 400},
        {"chunked, identity", 400},
        {"\"chunked\"", 400},
        {"chunked;ext=val", 400},
        {"\xa0"
         "chunked",
         400},
        {"chunked, chunked", 400},
        {",chunked", 400},
        {"gzip, chunked", 501},
        {"identity, chunked", 501},
        {"gzip", 400},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[128];
        int n = snprintf(req, sizeof(req),
                         "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: %s\r\n\r\n", v[i].te);
        int st = parse_n(req, (size_t)n, NF);
        if (st != v[i].want)
            fprintf(stderr, "TE \"%s\" -> %d (%s)\n", v[i].te, st, h.reason ? h.reason : "-");
        T_CHECK_INT(st, v[i].want);
        if (v[i].want == 0) {
            T_CHECK(h.chunked);
            T_CHECK(!h.has_content_length);
        }
    }
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Transfer-Encoding: chunked\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"),
                400);
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Transfer-Encoding: gzip\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"),
                400);
    /* row 13 */
    T_CHECK_INT(PARSE("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n"), 400);
    T_CHECK_STR(h.reason, "Transfer-Encoding in an HTTP/1.0 request");
    T_CHECK_INT(PARSE("POST / HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"),
                400);
}

T_TEST(prevalidator_rows_24_26_31_33_36)
{
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H ": b\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content_Length: 5\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET /a#frag HTTP/1.1\r\n" H "\r\n"), 400);
    T_CHECK_INT(PARSE("GET good.example:80 HTTP/1.1\r\n" H "\r\n"), 400);
    T_CHECK_INT(PARSE("GET * HTTP/1.1\r\n" H "\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/2.0\r\n" H "\r\n"), 505);
    /* A higher minor version is treated as HTTP/1.1 (RFC 9110 §2.5). */
    T_CHECK_INT(PARSE("GET / HTTP/1.2\r\n" H "\r\n"), 0);
    T_CHECK_INT(h.minor, 1);
    T_CHECK(h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.9\r\n" H "Content-Length: 0\t\r\n\r\n"), 0);
    T_CHECK_INT(h.minor, 1);
    T_CHECK_INT(PARSE("GET / HTTP/1.2\r\n\r\n"), 400); /* 1.1 rules: Host is required */
    T_CHECK_INT(PARSE("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 505);
    T_CHECK_INT(PARSE("PRI / HTTP/1.1\r\n" H "\r\n"), 505);
}

T_TEST(methods_rows_34_35)
{
    T_CHECK_INT(PARSE("CONNECT evil:443 HTTP/1.1\r\nHost: evil:443\r\n\r\n"), 405);
    T_CHECK_INT(PARSE("TRACE / HTTP/1.1\r\n" H "\r\n"), 405);
    T_CHECK_INT(PARSE("get / HTTP/1.1\r\n" H "\r\n"), 501);
    T_CHECK_INT(PARSE("FOO / HTTP/1.1\r\n" H "\r\n"), 501);
    T_CHECK_INT(PARSE("GETX / HTTP/1.1\r\n" H "\r\n"), 501);
    T_CHECK_INT(PARSE("DESCRIBE / HTTP/1.1\r\n" H "\r\n"), 501);
    T_CHECK_INT(PARSE("M-SEARCH / HTTP/1.1\r\n" H "\r\n"), 0);
    T_CHECK_INT(h.method, HTTP_MSEARCH);
    T_CHECK_INT(PARSE("PATCH / HTTP/1.1\r\n" H "\r\n"), 0);
    T_CHECK_INT(h.method, HTTP_PATCH);
}

T_TEST(host_rows_37_38)
{
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n\r\n"), 400);
    T_CHECK_STR(h.reason, "missing Host");
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    T_CHECK_STR(h.reason, "more than one Host field");
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: a b@c\r\n\r\n"), 400);
    T_CHECK_STR(h.reason, "invalid Host");
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: a\x02\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost:\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: user@a\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/1.0\r\n\r\n"), 0);
    T_CHECK_INT(h.host.len, 0);
    T_CHECK_INT(PARSE("GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n"), 0);
    T_CHECK(SPAN_IS(h.host, "[::1]:8080"));
}

T_TEST(keep_alive_rows_39_40)
{
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "Connection: close\r\n\r\n"), 0);
    T_CHECK(!h.keep_alive);
    /* row 40: llhttp 8.1 says keep-alive here. */
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Content-Length: 1\r\nConnection: close\t\r\n\r\n"),
                0);
    T_CHECK(!h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "Connection: keep-alive, CLOSE\r\n\r\n"), 0);
    T_CHECK(!h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "Connection: foo\r\nConnection: close\r\n\r\n"), 0);
    T_CHECK(!h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "Connection: closed\r\n\r\n"), 0);
    T_CHECK(h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.0\r\n\r\n"), 0);
    T_CHECK(!h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"), 0);
    T_CHECK(h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.0\r\nConnection: keep-alive\t\r\n\r\n"), 0);
    T_CHECK(h.keep_alive);
    T_CHECK_INT(PARSE("GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n"), 0);
    T_CHECK(!h.keep_alive);
}

T_TEST(connection_nominated_row_50)
{
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "Connection: keep-alive, X-Secret\r\nX-Secret: 1\r\n"
                      "Keep-Alive: 5\r\nX-Kept: 2\r\nProxy-Connection: x\r\nTE: trailers\r\n\r\n"),
                0);
    T_CHECK_INT(h.nfields, 7);
    int want[] = {0, 1, 1, 1, 0, 1, 1};
    for (int i = 0; i < 7; i++)
        T_CHECK_INT(fields[i].flags & LV_FIELD_HOP, want[i] ? LV_FIELD_HOP : 0);
    /* A Connection option cannot make Host or Content-Length disappear. */
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Connection: host, content-length\r\n"
                      "Content-Length: 1\r\n\r\n"),
                0);
    T_CHECK_INT(fields[0].flags, 0);
    T_CHECK_INT(fields[2].flags, 0);
    T_CHECK(h.has_content_length);
}

T_TEST(expect_and_upgrade)
{
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Expect: 100-Continue\r\nContent-Length: 3\r\n\r\n"),
                0);
    T_CHECK(h.expect_continue);
    T_CHECK(!h.expect_other);
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Expect: something\r\nContent-Length: 3\r\n\r\n"), 0);
    T_CHECK(!h.expect_continue);
    T_CHECK(h.expect_other);
    T_CHECK_INT(PARSE("POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n"), 0);
    T_CHECK(!h.expect_continue);
    T_CHECK(!h.expect_other);

    T_CHECK_INT(PARSE("GET /ws HTTP/1.1\r\n" H "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n"),
                0);
    T_CHECK(h.upgrade_requested);
    T_CHECK(SPAN_IS(h.upgrade, "websocket"));
    T_CHECK_INT(fields[1].flags & LV_FIELD_HOP, LV_FIELD_HOP);
    T_CHECK_INT(fields[2].flags & LV_FIELD_HOP, LV_FIELD_HOP);
    T_CHECK(h.keep_alive);
    /* Upgrade without the Connection option is only an announcement. */
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "Upgrade: websocket\r\n\r\n"), 0);
    T_CHECK(!h.upgrade_requested);
    /* row 52 shape: flagged, the caller refuses it. */
    T_CHECK_INT(PARSE("POST / HTTP/1.1\r\n" H "Connection: upgrade\r\nUpgrade: websocket\r\n"
                      "Content-Length: 3\r\n\r\n"),
                0);
    T_CHECK(h.upgrade_requested);
    T_CHECK(h.has_content_length);
}

T_TEST(request_id)
{
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "X-Request-Id:  abc-123 \r\n\r\n"), 0);
    T_CHECK(SPAN_IS(h.request_id, "abc-123"));
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "X-Request-Id: a b\r\n\r\n"), 0);
    T_CHECK_INT(h.request_id.len, 0);
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\n" H "X-Request-Id: a\r\nx-request-id: b\r\n\r\n"), 0);
    T_CHECK_INT(h.request_id.len, 0);
    /* Known even when the request is refused, so the error response can carry it. */
    T_CHECK_INT(PARSE("GET / HTTP/1.1\r\nX-Request-Id: r1\r\n\r\n"), 400);
    T_CHECK(SPAN_IS(h.request_id, "r1"));
}

T_TEST(field_array_limit)
{
    static const char req[] = "GET / HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\n\r\n";
    T_CHECK_INT(parse_n(req, sizeof(req) - 1, 3), 0);
    T_CHECK_INT(h.nfields, 3);
    T_CHECK_INT(parse_n(req, sizeof(req) - 1, 2), 431);
    T_CHECK_INT(parse_n(req, sizeof(req) - 1, 0), 431);
}

static uint32_t rng = 777;
static uint32_t next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

/* Mutated requests: whatever headscan lets through, reqhead answers with a known status, and
 * an accepted head keeps the invariants the forwarder relies on. */
T_TEST(mutations_keep_invariants)
{
    static const char *const base[] = {
        "POST /a?b HTTP/1.1\r\nHost: a.example:80\r\nContent-Length: 3\r\n"
        "Connection: keep-alive, X-A\r\nX-A: 1\r\n\r\n",
        "GET http://h/p HTTP/1.0\r\nTransfer-Encoding: chunked\r\nHost: h\r\n\r\n",
        "PUT / HTTP/1.1\r\nHost: b\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n",
    };
    static const char subst[] = " \t:,;_-0159aAzZ/@[]#*?\"\x80\xff";
    char buf[256];
    int accepted = 0, refused = 0;
    for (int iter = 0; iter < 20000; iter++) {
        const char *b = base[iter % 3];
        size_t n = strlen(b);
        memcpy(buf, b, n);
        int muts = 1 + (int)(next_rand() % 3);
        /* Never touch the final CRLFCRLF, so most mutants remain complete heads. */
        for (int m = 0; m < muts; m++)
            buf[next_rand() % (n - 4)] = subst[next_rand() % (sizeof(subst) - 1)];
        struct lv_headscan sc;
        lv_headscan_init(&sc, false, 32768, 8192, 100);
        if (lv_headscan_feed(&sc, buf, n) != LV_HEADSCAN_DONE || sc.head_len != n)
            continue;
        int st = lv_reqhead_parse(&h, buf, n, fields, NF);
        T_CHECK(st == 0 || st == 400 || st == 405 || st == 501 || st == 505);
        if (st) {
            refused++;
            T_CHECK(h.reason != NULL);
            continue;
        }
        accepted++;
        T_CHECK(!(h.has_content_length && h.chunked));
        T_CHECK(h.major == 1 && h.minor <= 1);
        T_CHECK(h.minor == 0 || h.host.len > 0);
        T_CHECK(h.minor == 1 || !h.chunked);
        T_CHECK(h.method >= 0 && h.method != HTTP_CONNECT && h.method != HTTP_TRACE);
        T_CHECK(h.path.len > 0);
        for (uint32_t i = 0; i < h.nfields; i++) {
            T_CHECK(fields[i].name.len > 0);
            T_CHECK(fields[i].name.p >= buf && fields[i].name.p + fields[i].name.len <= buf + n);
            T_CHECK(memchr(fields[i].value.p, '\r', fields[i].value.len) == NULL);
        }
    }
    T_CHECK(accepted > 1000);
    T_CHECK(refused > 1000);
}

int main(void)
{
    T_RUN(simple_get);
    T_RUN(query_and_path_shapes);
    T_RUN(row32_absolute_form);
    T_RUN(framing_rows_1_to_6);
    T_RUN(transfer_encoding_rows_8_to_13);
    T_RUN(prevalidator_rows_24_26_31_33_36);
    T_RUN(methods_rows_34_35);
    T_RUN(host_rows_37_38);
    T_RUN(keep_alive_rows_39_40);
    T_RUN(connection_nominated_row_50);
    T_RUN(expect_and_upgrade);
    T_RUN(request_id);
    T_RUN(field_array_limit);
    T_RUN(mutations_keep_invariants);
    T_DONE();
}
