#include "http/tracectx.h"
#include "t.h"

#include <stdio.h>
#include <string.h>

static bool parse(const char *s, struct lv_tracectx *t)
{
    return lv_traceparent_parse(s, strlen(s), t);
}

T_TEST(traceparent_valid)
{
    struct lv_tracectx t;
    T_CHECK(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", &t));
    T_CHECK_INT(t.trace_id[0], 0x4b);
    T_CHECK_INT(t.trace_id[15], 0x36);
    T_CHECK_INT(t.parent_id[0], 0x00);
    T_CHECK_INT(t.parent_id[7], 0xb7);
    T_CHECK_INT(t.flags, LV_TRACE_FLAG_SAMPLED);
    T_CHECK(parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", &t));
    T_CHECK_INT(t.flags, 0);
    /* a later version: its first four fields, more after a '-' */
    T_CHECK(parse("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09", &t));
    T_CHECK_INT(t.flags, 9);
    T_CHECK(parse("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-ever", &t));
}

T_TEST(traceparent_invalid)
{
    static const char *const bad[] = {
        "",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",   /* short */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", /* 00 has nothing after */
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  /* upper case */
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  /* zero trace id */
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  /* zero parent id */
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version ff */
        "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* separator */
        "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",  /* not hex */
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", /* later version, no '-' */
        "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  /* version not hex */
    };
    struct lv_tracectx t = {.flags = 0x77};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        T_CHECK(!parse(bad[i], &t));
        T_CHECK_INT(t.flags, 0x77); /* untouched */
    }
}

T_TEST(format_round_trip)
{
    struct lv_tracectx t;
    const char *in = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    T_CHECK(parse(in, &t));
    char out[LV_TRACEPARENT_LEN + 1];
    lv_traceparent_format(t.trace_id, t.parent_id, t.flags, out);
    T_CHECK_STR(out, in);
    uint8_t span[LV_SPAN_ID_LEN] = {0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3};
    lv_traceparent_format(t.trace_id, span, 0, out);
    T_CHECK_STR(out, "00-4bf92f3577b34da6a3ce929d0e0e4736-deadbeef00010203-00");
    char hex[17];
    lv_trace_hex(span, LV_SPAN_ID_LEN, hex);
    T_CHECK_STR(hex, "deadbeef00010203");
}

static bool ts(const char *s)
{
    return lv_tracestate_valid(s, strlen(s));
}

T_TEST(tracestate)
{
    T_CHECK(ts("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"));
    T_CHECK(ts(" rojo=00f067aa0ba902b7 ,\tcongo=t61rcWkgMzE "));
    T_CHECK(ts("k=v,,k2=v2"));
    T_CHECK(ts("tenant@system=x"));
    T_CHECK(ts(""));
    T_CHECK(!ts("Rojo=1"));  /* upper-case key */
    T_CHECK(!ts("k="));      /* empty value */
    T_CHECK(!ts("=v"));      /* empty key */
    T_CHECK(!ts("k=a=b"));   /* '=' in the value */
    T_CHECK(!ts("a@b@c=1")); /* two '@' */
    T_CHECK(!ts("k=v\x01")); /* a control byte */
    T_CHECK(!ts("nokey"));
    char many[33 * 6 + 1];
    size_t n = 0;
    for (int i = 0; i < 33; i++)
        n += (size_t)snprintf(many + n, sizeof(many) - n, "%s%c%c=1", i ? "," : "", 'a' + i % 26,
                              'a' + i / 26);
    T_CHECK(!lv_tracestate_valid(many, n));    /* 33 members */
    T_CHECK(lv_tracestate_valid(many, n - 5)); /* 32 */
}

int main(void)
{
    T_RUN(traceparent_valid);
    T_RUN(traceparent_invalid);
    T_RUN(format_round_trip);
    T_RUN(tracestate);
    T_DONE();
}
