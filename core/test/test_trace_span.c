/* test_trace_span: filling span records and their OTLP/HTTP JSON encoding. */
#include <stdlib.h>
#include <string.h>

#include "t.h"
#include "trace/span.h"

static const uint8_t TID[16] = {0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6,
                                0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36};
static const uint8_t SID[8] = {0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7};
static const uint8_t PID[8] = {0x53, 0x99, 0x5c, 0x3f, 0x42, 0xcd, 0x8a, 0xd8};

static char *encode(const char *service, const struct lv_trace_span *sp, size_t n)
{
    struct lv_buf b = LV_BUF_INIT;
    lv_tspan_encode(&b, service, sp, n);
    lv_buf_putc(&b, '\0');
    return b.data;
}

static char *escape(const char *s, size_t n)
{
    struct lv_buf b = LV_BUF_INIT;
    lv_tspan_json_escape(&b, s, n);
    lv_buf_putc(&b, '\0');
    return b.data;
}

#define PREFIX                                                                                     \
    "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service.name\",\"value\":{"     \
    "\"stringValue\":\"svc\"}},{\"key\":\"service.version\",\"value\":{\"stringValue\":"           \
    "\"" LEVEE_VERSION                                                                             \
    "\"}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"levee\",\"version\":\"" LEVEE_VERSION           \
    "\"},\"spans\":["
#define SUFFIX "]}]}]}"

T_TEST(server_span_exact)
{
    struct lv_trace_span sp;
    memset(&sp, 0xAB, sizeof(sp)); /* init must not depend on a zeroed record */
    lv_tspan_init(&sp, LV_SPAN_SERVER, TID, SID, NULL);
    lv_tspan_name(&sp, "GET /api", 8);
    sp.start_ns = 1700000000000000000ull;
    sp.end_ns = 1700000000001000000ull;
    lv_tspan_cstr(&sp, "http.request.method", "GET");
    lv_tspan_int(&sp, "http.response.status_code", 200);
    lv_tspan_int(&sp, "neg", -5);
    lv_tspan_bool(&sp, "levee.retried", false);
    lv_tspan_bool(&sp, "t", true);
    lv_tspan_cstr(&sp, "skipped", NULL);
    char *j = encode("svc", &sp, 1);
    T_CHECK_STR(j, PREFIX
                "{\"traceId\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"spanId\":\"00f067aa0ba902b7\","
                "\"name\":\"GET /api\",\"kind\":2,\"startTimeUnixNano\":\"1700000000000000000\","
                "\"endTimeUnixNano\":\"1700000000001000000\",\"attributes\":["
                "{\"key\":\"http.request.method\",\"value\":{\"stringValue\":\"GET\"}},"
                "{\"key\":\"http.response.status_code\",\"value\":{\"intValue\":\"200\"}},"
                "{\"key\":\"neg\",\"value\":{\"intValue\":\"-5\"}},"
                "{\"key\":\"levee.retried\",\"value\":{\"boolValue\":false}},"
                "{\"key\":\"t\",\"value\":{\"boolValue\":true}}]}" SUFFIX);
    T_CHECK(!sp.truncated);
    free(j);
}

T_TEST(client_span_with_parent_and_status)
{
    struct lv_trace_span sp[2];
    lv_tspan_init(&sp[0], LV_SPAN_SERVER, TID, PID, NULL);
    lv_tspan_name(&sp[0], "GET", 3);
    lv_tspan_init(&sp[1], LV_SPAN_CLIENT, TID, SID, PID);
    lv_tspan_name(&sp[1], "GET", 3);
    sp[1].start_ns = 5;
    sp[1].end_ns = 9;
    lv_tspan_set_status(&sp[1], LV_SPAN_ERROR, "upstream \"reset\"");
    char *j = encode("svc", sp, 2);
    T_CHECK_STR(j, PREFIX
                "{\"traceId\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"spanId\":\"53995c3f42cd8ad8\","
                "\"name\":\"GET\",\"kind\":2,\"startTimeUnixNano\":\"0\",\"endTimeUnixNano\":\"0\","
                "\"attributes\":[]},"
                "{\"traceId\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"spanId\":\"00f067aa0ba902b7\","
                "\"parentSpanId\":\"53995c3f42cd8ad8\",\"name\":\"GET\",\"kind\":3,"
                "\"startTimeUnixNano\":\"5\",\"endTimeUnixNano\":\"9\",\"attributes\":[],"
                "\"status\":{\"code\":2,\"message\":\"upstream \\\"reset\\\"\"}}" SUFFIX);
    free(j);
    /* OK without a message; UNSET has no status at all. */
    lv_tspan_set_status(&sp[1], LV_SPAN_OK, NULL);
    j = encode(NULL, &sp[1], 1);
    T_CHECK(strstr(j, ",\"status\":{\"code\":1}}") != NULL);
    T_CHECK(strstr(j, "\"stringValue\":\"levee\"") != NULL); /* the default service name */
    free(j);
    lv_tspan_set_status(&sp[1], LV_SPAN_UNSET, NULL);
    j = encode("svc", &sp[1], 1);
    T_CHECK(strstr(j, "status") == NULL);
    free(j);
    /* No spans at all: still a valid document. */
    j = encode("svc", NULL, 0);
    T_CHECK_STR(j, PREFIX SUFFIX);
    free(j);
}

T_TEST(escaping)
{
    char *e = escape("a\"b\\c\n\r\t\x01\x1f\x7f", 11);
    T_CHECK_STR(e, "a\\\"b\\\\c\\n\\r\\t\\u0001\\u001f\\u007f");
    free(e);
    /* Valid UTF-8 stays as it is: é (2), € (3), 𝄞 (4). */
    e = escape("\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e", 9);
    T_CHECK_STR(e, "\xc3\xa9\xe2\x82\xac\xf0\x9d\x84\x9e");
    free(e);
    /* Invalid: a lone continuation, a Latin-1 byte, an overlong '/', a surrogate, above
     * U+10FFFF, a cut sequence at the end, 0xff. Each bad byte becomes U+FFFD. */
    e = escape("\x80", 1);
    T_CHECK_STR(e, "\\ufffd");
    free(e);
    e = escape("caf\xe9!", 5);
    T_CHECK_STR(e, "caf\\ufffd!");
    free(e);
    e = escape("\xc0\xaf", 2);
    T_CHECK_STR(e, "\\ufffd\\ufffd");
    free(e);
    e = escape("\xed\xa0\x80", 3);
    T_CHECK_STR(e, "\\ufffd\\ufffd\\ufffd");
    free(e);
    e = escape("\xf4\x90\x80\x80", 4);
    T_CHECK_STR(e, "\\ufffd\\ufffd\\ufffd\\ufffd");
    free(e);
    e = escape("x\xe2\x82", 3);
    T_CHECK_STR(e, "x\\ufffd\\ufffd");
    free(e);
    e = escape("\xff", 1);
    T_CHECK_STR(e, "\\ufffd");
    free(e);
    /* A NUL byte inside a value. */
    e = escape("a\0b", 3);
    T_CHECK_STR(e, "a\\u0000b");
    free(e);

    /* In a span: an attribute from the network never breaks the document. */
    struct lv_trace_span sp;
    lv_tspan_init(&sp, LV_SPAN_SERVER, TID, SID, NULL);
    lv_tspan_name(&sp, "GET /\"}]}\xff", 10);
    lv_tspan_str(&sp, "url.path", "/\"\\\n\xc3", 5);
    char *j = encode("s\"vc", &sp, 1);
    T_CHECK(strstr(j, "\"name\":\"GET /\\\"}]}\\ufffd\"") != NULL);
    T_CHECK(strstr(j, "{\"stringValue\":\"/\\\"\\\\\\n\\ufffd\"}") != NULL);
    T_CHECK(strstr(j, "{\"stringValue\":\"s\\\"vc\"}") != NULL);
    free(j);
}

T_TEST(truncation)
{
    struct lv_trace_span sp;
    lv_tspan_init(&sp, LV_SPAN_SERVER, TID, SID, NULL);
    char big[3000];
    memset(big, 'x', sizeof(big));
    lv_tspan_name(&sp, "n", 1);
    lv_tspan_str(&sp, "a", big, 1000);
    T_CHECK(!sp.truncated);
    T_CHECK_INT(sp.text_used, 1001);
    lv_tspan_str(&sp, "b", big, sizeof(big)); /* only 23 bytes left */
    T_CHECK(sp.truncated);
    T_CHECK_INT(sp.attrs[1].len, LV_SPAN_TEXT - 1001);
    T_CHECK_INT(sp.text_used, LV_SPAN_TEXT);
    lv_tspan_str(&sp, "c", "more", 4); /* nothing left: an empty value */
    T_CHECK_INT(sp.attrs[2].len, 0);
    lv_tspan_set_status(&sp, LV_SPAN_ERROR, "message");
    T_CHECK_INT(sp.msg_len, 0);
    lv_tspan_int(&sp, "i", 7); /* ints need no text */
    T_CHECK_INT(sp.nattrs, 4);
    char *j = encode("svc", &sp, 1);
    T_CHECK(strstr(j, "{\"key\":\"c\",\"value\":{\"stringValue\":\"\"}}") != NULL);
    T_CHECK(strstr(j, "\"status\":{\"code\":2}") != NULL);
    T_CHECK(strstr(j, "{\"intValue\":\"7\"}") != NULL);
    free(j);

    /* A cut falls on a character boundary: 1021 bytes used, then "ab€" with room for 3. */
    lv_tspan_init(&sp, LV_SPAN_SERVER, TID, SID, NULL);
    lv_tspan_str(&sp, "a", big, LV_SPAN_TEXT - 3);
    lv_tspan_str(&sp, "b", "ab\xe2\x82\xac", 5);
    T_CHECK(sp.truncated);
    T_CHECK_INT(sp.attrs[1].len, 2);
    j = encode("svc", &sp, 1);
    T_CHECK(strstr(j, "{\"key\":\"b\",\"value\":{\"stringValue\":\"ab\"}}") != NULL);
    T_CHECK(strstr(j, "fffd") == NULL);
    free(j);
}

T_TEST(attribute_cap)
{
    struct lv_trace_span sp;
    lv_tspan_init(&sp, LV_SPAN_CLIENT, TID, SID, PID);
    for (int i = 0; i < LV_SPAN_MAX_ATTRS + 5; i++)
        lv_tspan_int(&sp, "k", i);
    lv_tspan_cstr(&sp, "s", "x");
    lv_tspan_bool(&sp, "b", true);
    T_CHECK_INT(sp.nattrs, LV_SPAN_MAX_ATTRS);
    T_CHECK_INT(sp.dropped_attrs, 7);
    T_CHECK(sp.truncated);
    T_CHECK_INT(sp.text_used, 0);
    char *j = encode("svc", &sp, 1);
    T_CHECK(strstr(j, "{\"intValue\":\"23\"}") != NULL);
    T_CHECK(strstr(j, "{\"intValue\":\"24\"}") == NULL);
    T_CHECK(strstr(j, "],\"droppedAttributesCount\":7}") != NULL);
    free(j);
    /* The count saturates instead of wrapping. */
    for (int i = 0; i < 600; i++)
        lv_tspan_int(&sp, "k", i);
    T_CHECK_INT(sp.dropped_attrs, 255);
}

T_TEST(hostile_record)
{
    /* Offsets and counts that point past the record (a bug elsewhere) stay inside it. */
    struct lv_trace_span sp;
    lv_tspan_init(&sp, LV_SPAN_SERVER, TID, SID, NULL);
    memset(sp.text, 'y', sizeof(sp.text));
    sp.name_off = 1000;
    sp.name_len = 60000;
    sp.nattrs = 200;
    for (int i = 0; i < LV_SPAN_MAX_ATTRS; i++) {
        sp.attrs[i].key = NULL;
        sp.attrs[i].type = LV_SPAN_ATTR_STR;
        sp.attrs[i].off = 65535;
        sp.attrs[i].len = 65535;
    }
    sp.end_ns = 0;
    sp.start_ns = 10;
    char *j = encode("svc", &sp, 1);
    T_CHECK(strstr(j, "\"name\":\"yyyyyyyyyyyyyyyyyyyyyyyy\"") != NULL); /* 24 bytes */
    T_CHECK(strstr(j, "\"endTimeUnixNano\":\"10\"") != NULL);
    free(j);
}

int main(void)
{
    T_RUN(server_span_exact);
    T_RUN(client_span_with_parent_and_status);
    T_RUN(escaping);
    T_RUN(truncation);
    T_RUN(attribute_cap);
    T_RUN(hostile_record);
    T_DONE();
}
