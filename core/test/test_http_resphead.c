/*
 * resphead: upstream response heads run through headscan (response mode) then resphead, as
 * the upstream attempt does (README, "How levee proxies"): the framing and reuse rules.
 */
#include "http/headscan.h"
#include "http/resphead.h"
#include "t.h"

#define NF 16
static struct lv_field fields[NF];
static struct lv_resphead h;

static int parse_n(const char *head, size_t len, bool head_request, uint32_t max_fields)
{
    struct lv_headscan s;
    lv_headscan_init(&s, true, 32768, 8192, 100);
    enum lv_headscan_result r = lv_headscan_feed(&s, head, len);
    if (r == LV_HEADSCAN_ERROR)
        return s.status;
    if (r != LV_HEADSCAN_DONE || s.head_len != len) {
        fprintf(stderr, "headscan did not finish the head\n");
        return -1;
    }
    return lv_resphead_parse(&h, head, len, head_request, fields, max_fields);
}

#define GET(lit)         parse_n(lit, sizeof(lit) - 1, false, NF)
#define HEAD(lit)        parse_n(lit, sizeof(lit) - 1, true, NF)
#define SPAN_IS(sp, lit) ((sp).len == sizeof(lit) - 1 && memcmp((sp).p, lit, (sp).len) == 0)

T_TEST(plain_responses)
{
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A:  b \r\n\r\n"), 0);
    T_CHECK_INT(h.status, 200);
    T_CHECK_INT(h.major, 1);
    T_CHECK_INT(h.minor, 1);
    T_CHECK(SPAN_IS(h.reason_phrase, "OK"));
    T_CHECK_INT(h.body, LV_BODY_LENGTH);
    T_CHECK(h.has_content_length);
    T_CHECK_INT(h.content_length, 5);
    T_CHECK(h.keep_alive);
    T_CHECK(h.reusable);
    T_CHECK(!h.interim);
    T_CHECK(!h.upgrade);
    T_CHECK_INT(h.nfields, 2);
    T_CHECK(SPAN_IS(fields[1].value, "b"));

    T_CHECK_INT(GET("HTTP/1.1 404 Not Found\r\nTransfer-Encoding: Chunked\r\n\r\n"), 0);
    T_CHECK(SPAN_IS(h.reason_phrase, "Not Found"));
    T_CHECK_INT(h.body, LV_BODY_CHUNKED);
    T_CHECK(h.chunked);
    T_CHECK(h.reusable);
    T_CHECK_INT(fields[0].flags & LV_FIELD_HOP, LV_FIELD_HOP);

    T_CHECK_INT(GET("HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"), 0);
    T_CHECK_INT(h.reason_phrase.len, 0);
    T_CHECK(h.reason_phrase.p != NULL);
    T_CHECK_INT(h.body, LV_BODY_LENGTH);
    T_CHECK_INT(h.content_length, 0);
    T_CHECK(h.reusable);
}

T_TEST(framing_errors_R1_R3)
{
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
                502);
    T_CHECK_STR(h.reason, "Content-Length with Transfer-Encoding in response");
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n"),
                502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\n"), 502);
    T_CHECK_STR(h.reason, "duplicate Content-Length in response");
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n"), 502);
    T_CHECK_STR(h.reason, "invalid Content-Length in response");
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: 18446744073709551616\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length: 1,1\r\n\r\n"), 502);
    T_CHECK(!h.reusable);
}

T_TEST(minor_version_and_htab)
{
    T_CHECK_INT(GET("HTTP/1.2 200 OK\r\nContent-Length: 3\t\r\n\r\n"), 0);
    T_CHECK_INT(h.minor, 1);
    T_CHECK_INT(h.content_length, 3);
    T_CHECK(h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\t \r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_CHUNKED);
}

T_TEST(transfer_codings_R4)
{
    /* We never send TE: any coding but chunked on a body is the upstream breaking the
     * protocol (forwarded, the client would get gzip bytes it never asked for). */
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), 502);
    T_CHECK(strstr(h.reason, "unrequested transfer coding") != NULL);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: identity\r\n\r\n"), 502);
    /* No body, so nothing to decode: a HEAD or 304 answer may name the coding. */
    T_CHECK_INT(HEAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n"), 0);
    T_CHECK_INT(GET("HTTP/1.1 304 Not Modified\r\nTransfer-Encoding: gzip\r\n\r\n"), 0);
    /* Chunked after a coding we would forward un-decoded with TE stripped: refuse. */
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: ,chunked\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n"),
                502);
    T_CHECK_INT(GET("HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 502);
    T_CHECK_STR(h.reason, "Transfer-Encoding in an HTTP/1.0 response");
}

T_TEST(bodiless_R5_R6_R8)
{
    /* R5 */
    T_CHECK_INT(GET("HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n"), 0);
    T_CHECK(h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(h.reusable);
    /* R6 */
    T_CHECK_INT(HEAD("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(h.has_content_length);
    T_CHECK(h.reusable);
    T_CHECK_INT(HEAD("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(h.reusable);
    T_CHECK_INT(HEAD("HTTP/1.1 200 OK\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(h.reusable);
    /* R7, R8 */
    T_CHECK_INT(GET("HTTP/1.1 100 Continue\r\n\r\n"), 0);
    T_CHECK(h.interim);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK_INT(GET("HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"), 0);
    T_CHECK(h.interim);
    T_CHECK_INT(GET("HTTP/1.1 102 Processing\r\nContent-Length: 5\r\n\r\n"), 0);
    T_CHECK(h.interim);
    T_CHECK_INT(h.body, LV_BODY_NONE);
}

T_TEST(switching_protocols_R9)
{
    T_CHECK_INT(GET("HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n"
                    "Upgrade: websocket\r\n\r\n"),
                0);
    T_CHECK(h.upgrade);
    T_CHECK(!h.interim);
    T_CHECK_INT(h.body, LV_BODY_NONE);
    T_CHECK(!h.reusable);
}

T_TEST(status_line_and_fields_R10_R13)
{
    T_CHECK_INT(GET("HTTP/1.1 20 OK\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 2000 OK\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\rX: y\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\nX: y\r\n\r\n"), 502);
    T_CHECK_INT(GET("SSH-2.0-OpenSSH_8.9\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n"), 502);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n"), 502);
}

T_TEST(close_delimited_and_keep_alive_R17)
{
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_EOF);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.0 200 OK\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_EOF);
    T_CHECK(!h.keep_alive);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_LENGTH);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\n"), 0);
    T_CHECK(h.keep_alive);
    T_CHECK(h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\n"), 0);
    T_CHECK_INT(h.body, LV_BODY_LENGTH);
    T_CHECK(!h.keep_alive);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nConnection: close\t\r\nContent-Length: 2\r\n\r\n"), 0);
    T_CHECK(!h.reusable);
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nConnection: close\r\nTransfer-Encoding: chunked\r\n\r\n"),
                0);
    T_CHECK_INT(h.body, LV_BODY_CHUNKED);
    T_CHECK(!h.reusable);
}

T_TEST(connection_nominated_R18)
{
    T_CHECK_INT(GET("HTTP/1.1 200 OK\r\nConnection: X-Foo\r\nX-Foo: secret\r\nX-Bar: 1\r\n"
                    "Content-Length: 0\r\n\r\n"),
                0);
    T_CHECK_INT(fields[0].flags & LV_FIELD_HOP, LV_FIELD_HOP);
    T_CHECK_INT(fields[1].flags & LV_FIELD_HOP, LV_FIELD_HOP);
    T_CHECK_INT(fields[2].flags, 0);
    T_CHECK_INT(fields[3].flags, 0);
    T_CHECK(h.reusable);
}

T_TEST(field_array_limit)
{
    static const char resp[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nContent-Length: 0\r\n\r\n";
    T_CHECK_INT(parse_n(resp, sizeof(resp) - 1, false, 3), 0);
    T_CHECK_INT(parse_n(resp, sizeof(resp) - 1, false, 2), 502);
    T_CHECK_STR(h.reason, "too many header fields in response");
}

int main(void)
{
    T_RUN(plain_responses);
    T_RUN(framing_errors_R1_R3);
    T_RUN(minor_version_and_htab);
    T_RUN(transfer_codings_R4);
    T_RUN(bodiless_R5_R6_R8);
    T_RUN(switching_protocols_R9);
    T_RUN(status_line_and_fields_R10_R13);
    T_RUN(close_delimited_and_keep_alive_R17);
    T_RUN(connection_nominated_R18);
    T_RUN(field_array_limit);
    T_DONE();
}
