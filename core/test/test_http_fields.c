/*
 * fields: single-field helpers (names, Connection, Transfer-Encoding, Host, Content-Length,
 * X-Request-Id, hop-by-hop marking) and base/method names against llhttp's table.
 */
#include <llhttp.h>

#include "base/method.h"
#include "http/fields.h"
#include "t.h"

#define S(lit) lit, sizeof(lit) - 1

T_TEST(name_eq)
{
    T_CHECK(lv_field_name_eq(S("Content-Length"), "content-length"));
    T_CHECK(lv_field_name_eq(S("HOST"), "host"));
    T_CHECK(!lv_field_name_eq(S("Hosts"), "host"));
    T_CHECK(!lv_field_name_eq(S("Hos"), "host"));
    T_CHECK(!lv_field_name_eq(S("H0st"), "host"));
    T_CHECK(lv_field_name_eq("", 0, ""));
    /* Only ASCII letters fold: 0xC8 is not 'h' + 0x80 folded. */
    T_CHECK(!lv_field_name_eq(S("\xc8ost"), "host"));
}

T_TEST(classify_and_hop_by_hop)
{
    T_CHECK_INT(lv_field_classify(S("Host")), LV_FID_HOST);
    T_CHECK_INT(lv_field_classify(S("content-LENGTH")), LV_FID_CONTENT_LENGTH);
    T_CHECK_INT(lv_field_classify(S("Transfer-Encoding")), LV_FID_TRANSFER_ENCODING);
    T_CHECK_INT(lv_field_classify(S("X-Forwarded-Proto")), LV_FID_X_FORWARDED_PROTO);
    T_CHECK_INT(lv_field_classify(S("X-Forwarded-For")), LV_FID_X_FORWARDED_FOR);
    T_CHECK_INT(lv_field_classify(S("X-Forwarded-Host")), LV_FID_X_FORWARDED_HOST);
    T_CHECK_INT(lv_field_classify(S("X-Request-Id")), LV_FID_X_REQUEST_ID);
    T_CHECK_INT(lv_field_classify(S("Expect")), LV_FID_EXPECT);
    T_CHECK_INT(lv_field_classify(S("Via")), LV_FID_VIA);
    T_CHECK_INT(lv_field_classify(S("Forwarded")), LV_FID_FORWARDED);
    T_CHECK_INT(lv_field_classify(S("Proxy-Authorization")), LV_FID_PROXY);
    T_CHECK_INT(lv_field_classify(S("Content-Type")), LV_FID_OTHER);
    T_CHECK_INT(lv_field_classify(S("Content_Length")), LV_FID_OTHER);
    T_CHECK_INT(lv_field_classify(S("Proxy-")), LV_FID_OTHER);
    /* Every length that also has a special name of its own. */
    T_CHECK_INT(lv_field_classify(S("Proxy-X")), LV_FID_PROXY);
    T_CHECK_INT(lv_field_classify(S("Proxy-Foo")), LV_FID_PROXY);
    T_CHECK_INT(lv_field_classify(S("Proxy-Abcd")), LV_FID_PROXY);
    T_CHECK_INT(lv_field_classify(S("proxy-x-request")), LV_FID_PROXY);

    const char *hop[] = {"Connection",       "keep-alive",        "TE",
                         "Trailer",          "Transfer-Encoding", "Upgrade",
                         "Proxy-Connection", "proxy-authenticate"};
    for (size_t i = 0; i < sizeof(hop) / sizeof(hop[0]); i++)
        T_CHECK(lv_field_is_hop_by_hop(hop[i], strlen(hop[i])));
    const char *e2e[] = {"Host",
                         "Content-Length",
                         "Trailers",
                         "TEE",
                         "X-Connection",
                         "Proxy",
                         "Upgrade-Insecure-Requests",
                         "Via"};
    for (size_t i = 0; i < sizeof(e2e) / sizeof(e2e[0]); i++)
        T_CHECK(!lv_field_is_hop_by_hop(e2e[i], strlen(e2e[i])));
}

T_TEST(path_safety)
{
    const char *ok[] = {"/",      "/a/b",     "/a.b/c", "/.well-known/x", "/a/..b",
                        "/a/b..", "/%2e%2fx", "/a%20b", "/a/%2ex",        "/%01"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++)
        T_CHECK(lv_path_safe(ok[i], strlen(ok[i])));
    const char *bad[] = {"/%00",    "/a%00b", "/..",      "/a/../b",
                         "/a/..",   "/./a",   "/a/.",     "/%2e%2e/x",
                         "/%2E./x", "/.%2e",  "/a/%2e/b", "/../../etc/passwd"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        T_CHECK(!lv_path_safe(bad[i], strlen(bad[i])));
}

T_TEST(list_iteration)
{
    struct lv_list_iter it;
    struct lv_span e;
    const char v[] = " a ,, \tb\t,c,  ,";
    lv_list_init(&it, S(v));
    T_CHECK(lv_list_next(&it, &e));
    T_CHECK(e.len == 1 && e.p[0] == 'a');
    T_CHECK(lv_list_next(&it, &e));
    T_CHECK(e.len == 1 && e.p[0] == 'b');
    T_CHECK(lv_list_next(&it, &e));
    T_CHECK(e.len == 1 && e.p[0] == 'c');
    T_CHECK(!lv_list_next(&it, &e));
    lv_list_init(&it, "", 0);
    T_CHECK(!lv_list_next(&it, &e));
}

T_TEST(connection_options)
{
    /* row 40: llhttp 8.1 misses the trailing TAB. */
    T_CHECK_INT(lv_connection_flags(S("close\t")), LV_CONN_CLOSE);
    T_CHECK_INT(lv_connection_flags(S("\tClose ")), LV_CONN_CLOSE);
    T_CHECK_INT(lv_connection_flags(S("keep-alive, Upgrade")),
                LV_CONN_KEEP_ALIVE | LV_CONN_UPGRADE);
    T_CHECK_INT(lv_connection_flags(S("x-secret,CLOSE")), LV_CONN_CLOSE);
    T_CHECK_INT(lv_connection_flags(S("closed")), 0);
    T_CHECK_INT(lv_connection_flags(S("x-close")), 0);
    T_CHECK_INT(lv_connection_flags(S("clo se")), 0);
    T_CHECK_INT(lv_connection_flags(S("")), 0);
    T_CHECK_INT(lv_connection_option(S("UPGRADE")), LV_CONN_UPGRADE);
    T_CHECK_INT(lv_connection_option(S("X-Secret")), 0);
}

T_TEST(transfer_encoding)
{
    T_CHECK_INT(lv_te_check(S("chunked")), 0);
    T_CHECK_INT(lv_te_check(S("\tchunked")), 0);
    T_CHECK_INT(lv_te_check(S("Chunked ")), 0);
    T_CHECK_INT(lv_te_check(S("CHUNKED")), 0);
    const char *bad[] = {",chunked",
                         "chunked,",
                         "chunked, chunked",
                         "\"chunked\"",
                         "chunked;ext=1",
                         "xchunked",
                         "identity",
                         "\xa0"
                         "chunked",
                         "chunked, identity",
                         "chunked-false",
                         "",
                         " ",
                         "gzip chunked",
                         "chunked\x0b",
                         "gzip,,chunked",
                         "gzip;q=1, chunked",
                         "gzip, chunked, chunked"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lv_te_check(bad[i], strlen(bad[i])) != 400)
            fprintf(stderr, "TE \"%s\" not 400\n", bad[i]);
        T_CHECK_INT(lv_te_check(bad[i], strlen(bad[i])), 400);
    }
    T_CHECK_INT(lv_te_check(S("gzip, chunked")), 501);
    T_CHECK_INT(lv_te_check(S("identity, chunked")), 501);
    T_CHECK_INT(lv_te_check(S("deflate,chunked")), 501);
    T_CHECK_INT(lv_te_check(S("x-custom ,\tchunked")), 501);

    struct lv_te_info ti;
    T_CHECK(lv_te_parse(S("gzip, chunked"), &ti));
    T_CHECK_INT(ti.ncodings, 2);
    T_CHECK_INT(ti.nchunked, 1);
    T_CHECK(ti.chunked_last);
    T_CHECK(lv_te_parse(S("chunked, gzip"), &ti));
    T_CHECK_INT(ti.nchunked, 1);
    T_CHECK(!ti.chunked_last);
    T_CHECK(lv_te_parse(S("gzip"), &ti));
    T_CHECK_INT(ti.nchunked, 0);
    T_CHECK(!lv_te_parse(S(",chunked"), &ti));
    T_CHECK(!lv_te_parse(S("chunked;a=b"), &ti));
}

T_TEST(host)
{
    const char *good[] = {
        "a",         "a.example",     "a.example:80",     "127.0.0.1:8080",   "[::1]",
        "[::1]:443", "[2001:db8::7]", "[::ffff:1.2.3.4]", "xn--bcher-kva.ex", "a%2Db",
        "a:65535",   "a:0",           "A-b_c~d",          "a!$&'()*+,;=b"};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        if (!lv_host_valid(good[i], strlen(good[i])))
            fprintf(stderr, "host \"%s\" rejected\n", good[i]);
        T_CHECK(lv_host_valid(good[i], strlen(good[i])));
    }
    const char *bad[] = {"",       ":80",      "a:",    "a:99999", "a:65536", "a:123456",
                         "a b@c",  "user@a",   "a\x02", "[::1",    "[zz::1]", "[::1]x",
                         "[::1]:", "a:8x",     "a/b",   "a?b",     "[v1.fe]", "[fe80::1%25eth0]",
                         "a%2",    "a%zz",     "a:+80", "[]",      "a:80:80", "a\xc3\xa9",
                         "a\t",    "[1.2.3.4]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (lv_host_valid(bad[i], strlen(bad[i])))
            fprintf(stderr, "host \"%s\" accepted\n", bad[i]);
        T_CHECK(!lv_host_valid(bad[i], strlen(bad[i])));
    }
    T_CHECK(!lv_host_valid(S("a\0")));

    char out[32];
    size_t hl = 0;
    int port = 0;
    T_CHECK(lv_host_split(S("A.Example:8080"), out, sizeof(out), &hl, &port));
    T_CHECK_STR(out, "a.example");
    T_CHECK_INT(hl, 9);
    T_CHECK_INT(port, 8080);
    T_CHECK(lv_host_split(S("[::ABC]"), out, sizeof(out), &hl, &port));
    T_CHECK_STR(out, "[::abc]");
    T_CHECK_INT(port, -1);
    T_CHECK(!lv_host_split(S("a.example"), out, 9, &hl, &port)); /* no room for the NUL */
    T_CHECK(lv_host_split(S("a.example"), out, 10, &hl, &port));
    T_CHECK(!lv_host_split(S("a:99999"), out, sizeof(out), &hl, &port));
}

T_TEST(content_length)
{
    uint64_t v = 1;
    T_CHECK_INT(lv_content_length_parse(S("0"), &v), 0);
    T_CHECK_INT(v, 0);
    T_CHECK_INT(lv_content_length_parse(S("005"), &v), 0);
    T_CHECK_INT(v, 5);
    T_CHECK_INT(lv_content_length_parse(S("9007199254740992"), &v), 0);
    T_CHECK(v == LV_CONTENT_LENGTH_MAX);
    T_CHECK_INT(lv_content_length_parse(S("00000000000000000000000000000012"), &v), 0);
    T_CHECK_INT(v, 12);
    const char *bad[] = {"9007199254740993",
                         "18446744073709551616",
                         "99999999999999999999999",
                         "+5",
                         "-1",
                         "0x5",
                         "5a",
                         "1 0",
                         "1_0",
                         "",
                         "\t5\t",
                         "5, 5",
                         " 5"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = 77;
        T_CHECK_INT(lv_content_length_parse(bad[i], strlen(bad[i]), &v), -1);
        T_CHECK_INT(v, 77);
    }
}

T_TEST(request_id)
{
    char id[202];
    memset(id, 'a', sizeof(id));
    T_CHECK(lv_request_id_valid(S("abc-123_XYZ")));
    T_CHECK(lv_request_id_valid(S("!~")));
    T_CHECK(lv_request_id_valid(id, 200));
    T_CHECK(!lv_request_id_valid(id, 201));
    T_CHECK(!lv_request_id_valid("", 0));
    T_CHECK(!lv_request_id_valid(S("a b")));
    T_CHECK(!lv_request_id_valid(S("a\x7f")));
    T_CHECK(!lv_request_id_valid(S("\xc3\xa9")));
    T_CHECK(!lv_request_id_valid(S("a\tb")));
}

T_TEST(span_trim)
{
    struct lv_span s = lv_span_trim_ows((struct lv_span){" \t a b\t ", 8});
    T_CHECK_INT(s.len, 3);
    T_CHECK(memcmp(s.p, "a b", 3) == 0);
    s = lv_span_trim_ows((struct lv_span){" \t ", 3});
    T_CHECK_INT(s.len, 0);
}

static struct lv_field fld(const char *name, const char *value)
{
    struct lv_field f = {{name, strlen(name)}, {value, strlen(value)}, 0, 0};
    f.id = (uint8_t)lv_field_classify(name, strlen(name));
    return f;
}

T_TEST(mark_hop)
{
    /* R18 / row 50: Connection-nominated fields go, and so do the hop-by-hop ones. */
    struct lv_field f[] = {
        fld("Host", "a"),
        fld("Connection", "keep-alive, X-Secret,\tx-other\t"),
        fld("X-Secret", "1"),
        fld("x-other", "2"),
        fld("Keep-Alive", "timeout=5"),
        fld("Content-Length", "3"),
        fld("X-Kept", "3"),
        fld("Connection", "host, content-length, close"),
        fld("Proxy-Connection", "keep-alive"),
        fld("TE", "trailers"),
    };
    unsigned conn = lv_fields_mark_hop(f, 10);
    T_CHECK_INT(conn, LV_CONN_KEEP_ALIVE | LV_CONN_CLOSE);
    int want[] = {0, 1, 1, 1, 1, 0, 0, 1, 1, 1};
    for (int i = 0; i < 10; i++) {
        if ((f[i].flags & LV_FIELD_HOP) != (want[i] ? LV_FIELD_HOP : 0))
            fprintf(stderr, "field %d (%s) hop flag wrong\n", i, f[i].name.p);
        T_CHECK_INT(f[i].flags & LV_FIELD_HOP, want[i] ? LV_FIELD_HOP : 0);
    }
}

T_TEST(method_names_match_llhttp)
{
    for (int m = 0; m <= 33; m++) {
        const char *ll = llhttp_method_name((llhttp_method_t)m);
        T_CHECK_STR(lv_method_name(m), ll);
        T_CHECK_INT(lv_method_from_name(ll, strlen(ll)), m);
    }
    T_CHECK_INT(lv_method_from_name(S("PRI")), -1);
    T_CHECK_INT(lv_method_from_name(S("get")), -1);
    T_CHECK_INT(HTTP_GET, 1);
    T_CHECK_INT(HTTP_CONNECT, 5);
    T_CHECK_INT(HTTP_TRACE, 7);
}

int main(void)
{
    T_RUN(name_eq);
    T_RUN(classify_and_hop_by_hop);
    T_RUN(path_safety);
    T_RUN(list_iteration);
    T_RUN(connection_options);
    T_RUN(transfer_encoding);
    T_RUN(host);
    T_RUN(content_length);
    T_RUN(request_id);
    T_RUN(span_trim);
    T_RUN(mark_hop);
    T_RUN(method_names_match_llhttp);
    T_DONE();
}
