#include "obs/accesslog.h"
#include "t.h"

#include <math.h>
#include <stdlib.h>

/* ---- a strict little JSON reader: validates a line and pulls out top-level values */

struct jp {
    const char *p, *end;
};

static void j_ws(struct jp *j)
{
    while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
        j->p++;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* Decodes a string into `out` (if given); \u00XX becomes the byte XX. Also insists that the
 * raw text is printable ASCII: our lines must not carry raw bytes from the network. */
static int j_string(struct jp *j, struct lv_buf *out)
{
    if (j->p >= j->end || *j->p != '"')
        return 0;
    j->p++;
    while (j->p < j->end && *j->p != '"') {
        unsigned char c = (unsigned char)*j->p++;
        if (c < 0x20 || c >= 0x7f)
            return 0;
        if (c != '\\') {
            if (out)
                lv_buf_putc(out, (char)c);
            continue;
        }
        if (j->p >= j->end)
            return 0;
        char e = *j->p++, d;
        switch (e) {
        case '"':
        case '\\':
        case '/':
            d = e;
            break;
        case 'b':
            d = '\b';
            break;
        case 'f':
            d = '\f';
            break;
        case 'n':
            d = '\n';
            break;
        case 'r':
            d = '\r';
            break;
        case 't':
            d = '\t';
            break;
        case 'u': {
            if (j->end - j->p < 4)
                return 0;
            int v = 0;
            for (int i = 0; i < 4; i++) {
                int h = hexval(j->p[i]);
                if (h < 0)
                    return 0;
                v = v * 16 + h;
            }
            j->p += 4;
            if (v > 0xff)
                return 0;
            d = (char)v;
            break;
        }
        default:
            return 0;
        }
        if (out)
            lv_buf_putc(out, d);
    }
    if (j->p >= j->end)
        return 0;
    j->p++;
    return 1;
}

static int j_digits(struct jp *j)
{
    const char *s = j->p;
    while (j->p < j->end && *j->p >= '0' && *j->p <= '9')
        j->p++;
    return j->p > s;
}

static int j_number(struct jp *j)
{
    if (j->p < j->end && *j->p == '-')
        j->p++;
    if (j->p < j->end && *j->p == '0')
        j->p++;
    else if (!j_digits(j))
        return 0;
    if (j->p < j->end && *j->p == '.') {
        j->p++;
        if (!j_digits(j))
            return 0;
    }
    if (j->p < j->end && (*j->p == 'e' || *j->p == 'E')) {
        j->p++;
        if (j->p < j->end && (*j->p == '+' || *j->p == '-'))
            j->p++;
        if (!j_digits(j))
            return 0;
    }
    return 1;
}

static int j_lit(struct jp *j, const char *lit)
{
    size_t n = strlen(lit);
    if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
        return 0;
    j->p += n;
    return 1;
}

static int j_value(struct jp *j, int depth);

static int j_container(struct jp *j, int depth, char close, int object)
{
    j->p++;
    j_ws(j);
    if (j->p < j->end && *j->p == close) {
        j->p++;
        return 1;
    }
    for (;;) {
        j_ws(j);
        if (object) {
            if (!j_string(j, NULL))
                return 0;
            j_ws(j);
            if (j->p >= j->end || *j->p++ != ':')
                return 0;
        }
        if (!j_value(j, depth + 1))
            return 0;
        j_ws(j);
        if (j->p >= j->end)
            return 0;
        char c = *j->p++;
        if (c == close)
            return 1;
        if (c != ',')
            return 0;
    }
}

static int j_value(struct jp *j, int depth)
{
    if (depth > 16)
        return 0;
    j_ws(j);
    if (j->p >= j->end)
        return 0;
    switch (*j->p) {
    case '{':
        return j_container(j, depth, '}', 1);
    case '[':
        return j_container(j, depth, ']', 0);
    case '"':
        return j_string(j, NULL);
    case 't':
        return j_lit(j, "true");
    case 'f':
        return j_lit(j, "false");
    case 'n':
        return j_lit(j, "null");
    default:
        return j_number(j);
    }
}

/* 1 if `line` is exactly one JSON object and a "\n". */
static int valid_line(const struct lv_buf *line)
{
    if (line->len < 2 || line->data[line->len - 1] != '\n' || line->data[0] != '{')
        return 0;
    struct jp j = {line->data, line->data + line->len - 1};
    if (!j_value(&j, 0))
        return 0;
    return j.p == j.end;
}

/* Finds top-level `key`; copies its raw text into `raw` and, for a string, the decoded bytes
 * into `str`. Returns 1 if found. */
static int get_key(const struct lv_buf *line, const char *key, struct lv_buf *raw,
                   struct lv_buf *str)
{
    struct jp j = {line->data + 1, line->data + line->len - 1};
    struct lv_buf k = LV_BUF_INIT;
    int found = 0;
    for (;;) {
        j_ws(&j);
        lv_buf_reset(&k);
        if (!j_string(&j, &k))
            break;
        j_ws(&j);
        j.p++; /* ':' */
        j_ws(&j);
        const char *v = j.p;
        if (k.len == strlen(key) && memcmp(k.data, key, k.len) == 0) {
            if (*v == '"') {
                struct jp s = {v, j.end};
                lv_buf_reset(str);
                j_string(&s, str);
            }
            found = 1;
        }
        if (!j_value(&j, 1))
            break;
        if (found) {
            lv_buf_reset(raw);
            lv_buf_append(raw, v, (size_t)(j.p - v));
            lv_buf_putc(raw, '\0');
            break;
        }
        j_ws(&j);
        if (j.p >= j.end || *j.p++ != ',')
            break;
    }
    lv_buf_dispose(&k);
    return found;
}

static char *format(const struct lv_access_entry *e, struct lv_buf *b)
{
    lv_buf_reset(b);
    lv_accesslog_format(e, b);
    lv_buf_putc(b, '\0');
    b->len--; /* keep the NUL out of the line, but present for string compares */
    return b->data;
}

/* ---- tests */

T_TEST(rfc3339)
{
    char t[LV_ACCESS_TIME_SIZE];
    T_CHECK_INT(lv_accesslog_rfc3339(1795464062.345, t), 24);
    T_CHECK_STR(t, "2026-11-23T20:01:02.345Z");
    lv_accesslog_rfc3339(0, t);
    T_CHECK_STR(t, "1970-01-01T00:00:00.000Z");
    lv_accesslog_rfc3339(1709251199.999, t);
    T_CHECK_STR(t, "2024-02-29T23:59:59.999Z");
    lv_accesslog_rfc3339(1709251200, t);
    T_CHECK_STR(t, "2024-03-01T00:00:00.000Z");
    lv_accesslog_rfc3339(951868800.0 - 0.5, t);
    T_CHECK_STR(t, "2000-02-29T23:59:59.500Z");
    lv_accesslog_rfc3339(4107585600.0, t);
    T_CHECK_STR(t, "2100-03-01T12:00:00.000Z");
    lv_accesslog_rfc3339(4107585600.0 - 86400, t); /* 2100 is not a leap year */
    T_CHECK_STR(t, "2100-02-28T12:00:00.000Z");
    lv_accesslog_rfc3339(59.9996, t); /* truncated: never the next second */
    T_CHECK_STR(t, "1970-01-01T00:00:59.999Z");
    lv_accesslog_rfc3339(-5, t);
    T_CHECK_STR(t, "1970-01-01T00:00:00.000Z");
    lv_accesslog_rfc3339(NAN, t);
    T_CHECK_STR(t, "1970-01-01T00:00:00.000Z");
    lv_accesslog_rfc3339(1e300, t);
    T_CHECK_STR(t, "9999-12-31T23:59:59.999Z");
}

static void fill(struct lv_access_entry *e)
{
    memset(e, 0, sizeof(*e));
    e->time = 1795464062.345;
    e->request_id = lv_access_cstr("req-1");
    e->client = "10.0.0.7:51234";
    e->method = "POST";
    e->path = lv_access_cstr("/v1/payments?x=1");
    e->host = lv_access_cstr("api.example");
    e->route = "payments";
    e->upstream = "127.0.0.1:9001";
    e->status = 201;
    e->attempts = 2;
    e->ntries = 2;
    e->tries[0] = (struct lv_access_try){503, NULL, "127.0.0.1:9000", 1.2, "abort"};
    e->tries[1] = (struct lv_access_try){201, NULL, "127.0.0.1:9001", 10, NULL};
    e->backoff_ms = 25.5;
    e->bytes_in = 42;
    e->bytes_out = 18446744073709551615ull;
    e->duration_ms = 37.0004;
    e->upstream_ms = 12.3456;
    e->error = NULL;
    e->retry_stop = "success";
    e->flags = LV_ACCESS_RETRIED;
    e->trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    e->span_id = "00f067aa0ba902b7";
}

T_TEST(full_line_exact)
{
    struct lv_access_entry e;
    struct lv_buf b = LV_BUF_INIT;
    fill(&e);
    T_CHECK_STR(
        format(&e, &b),
        "{\"time\":\"2026-11-23T20:01:02.345Z\",\"request_id\":\"req-1\","
        "\"trace_id\":\"4bf92f3577b34da6a3ce929d0e0e4736\",\"span_id\":\"00f067aa0ba902b7\","
        "\"client\":\"10.0.0.7:51234\",\"method\":\"POST\",\"path\":\"/v1/payments?x=1\","
        "\"host\":\"api.example\",\"route\":\"payments\",\"upstream\":\"127.0.0.1:9001\","
        "\"status\":201,\"attempts\":2,\"tries\":["
        "{\"outcome\":\"503\",\"server\":\"127.0.0.1:9000\",\"ms\":1.2,\"fault\":\"abort\"},"
        "{\"outcome\":\"201\",\"server\":\"127.0.0.1:9001\",\"ms\":10}],"
        "\"backoff_ms\":25.5,\"bytes_in\":42,\"bytes_out\":18446744073709551615,"
        "\"duration_ms\":37,\"upstream_ms\":12.346,\"error\":null,"
        "\"retry_stop\":\"success\",\"flags\":[\"retried\"]}\n");
    T_CHECK(valid_line(&b));
    /* Appends: a second line goes after the first. */
    size_t one = b.len;
    lv_accesslog_format(&e, &b);
    T_CHECK_INT(b.len, 2 * one);
    T_CHECK(memcmp(b.data, b.data + one, one) == 0);
    lv_buf_dispose(&b);
}

T_TEST(nulls_and_errors)
{
    struct lv_access_entry e;
    struct lv_buf b = LV_BUF_INIT;
    memset(&e, 0, sizeof(e));
    e.status = 404;
    e.upstream_ms = -1;
    e.duration_ms = 0.25;
    e.error = "no-route";
    e.client = "[::1]:5000";
    e.method = "GET";
    e.path = lv_access_cstr("/nope");
    T_CHECK_STR(format(&e, &b),
                "{\"time\":\"1970-01-01T00:00:00.000Z\",\"request_id\":null,"
                "\"trace_id\":null,\"span_id\":null,"
                "\"client\":\"[::1]:5000\",\"method\":\"GET\",\"path\":\"/nope\",\"host\":null,"
                "\"route\":null,\"upstream\":null,\"status\":404,\"attempts\":0,\"tries\":[],"
                "\"backoff_ms\":0,\"bytes_in\":0,\"bytes_out\":0,\"duration_ms\":0.25,"
                "\"upstream_ms\":null,\"error\":\"no-route\",\"retry_stop\":null,\"flags\":[]}\n");
    T_CHECK(valid_line(&b));

    /* Error outcomes, a try with no server yet, non-finite and negative durations. */
    e.ntries = 2;
    e.tries[0] = (struct lv_access_try){0, "connect-failure", NULL, 0.0004, NULL};
    e.tries[1] = (struct lv_access_try){0, NULL, "s:1", INFINITY, NULL};
    e.duration_ms = NAN;
    e.backoff_ms = -1.5;
    e.upstream_ms = 0;
    e.status = -1;
    format(&e, &b);
    T_CHECK(strstr(b.data, "\"tries\":[{\"outcome\":\"connect-failure\",\"server\":null,\"ms\":0},"
                           "{\"outcome\":null,\"server\":\"s:1\",\"ms\":null}]") != NULL);
    T_CHECK(strstr(b.data, "\"backoff_ms\":-1.5,") != NULL);
    T_CHECK(strstr(b.data, "\"duration_ms\":null,\"upstream_ms\":0,") != NULL);
    T_CHECK(strstr(b.data, "\"status\":-1,") != NULL);
    T_CHECK(valid_line(&b));
    lv_buf_dispose(&b);
}

T_TEST(hostile_bytes_escaped)
{
    static const char path[] = "/a\"b\\c\nd\re\tf\x01g\x1f\x7f\xff\xc3\xa9 \0tail";
    static const char rid[] = "\"},\"status\":200,\"x\":\"";
    static const char host[] = "h\x00st";
    struct lv_access_entry e;
    struct lv_buf b = LV_BUF_INIT, raw = LV_BUF_INIT, str = LV_BUF_INIT;
    fill(&e);
    e.path = (struct lv_access_str){path, sizeof(path) - 1};
    e.request_id = (struct lv_access_str){rid, sizeof(rid) - 1};
    e.host = (struct lv_access_str){host, sizeof(host) - 1};
    e.route = "r\"oute";
    e.error = "x\\y";
    format(&e, &b);
    T_CHECK(valid_line(&b));
    T_CHECK(memchr(b.data, '\n', b.len) == b.data + b.len - 1);

    T_CHECK(get_key(&b, "path", &raw, &str));
    T_CHECK_INT(str.len, sizeof(path) - 1);
    T_CHECK(str.len == sizeof(path) - 1 && memcmp(str.data, path, str.len) == 0);
    T_CHECK(get_key(&b, "request_id", &raw, &str));
    T_CHECK(str.len == sizeof(rid) - 1 && memcmp(str.data, rid, str.len) == 0);
    T_CHECK(get_key(&b, "host", &raw, &str));
    T_CHECK(str.len == sizeof(host) - 1 && memcmp(str.data, host, str.len) == 0);
    T_CHECK(get_key(&b, "route", &raw, &str));
    T_CHECK(str.len == 6 && memcmp(str.data, "r\"oute", 6) == 0);
    T_CHECK(get_key(&b, "error", &raw, &str));
    T_CHECK(str.len == 3 && memcmp(str.data, "x\\y", 3) == 0);
    /* The injected "status" stayed inside the request id. */
    T_CHECK(get_key(&b, "status", &raw, &str));
    T_CHECK_STR(raw.data, "201");
    T_CHECK(!get_key(&b, "x", &raw, &str));

    lv_buf_dispose(&b);
    lv_buf_dispose(&raw);
    lv_buf_dispose(&str);
}

T_TEST(flags_array)
{
    struct lv_access_entry e;
    struct lv_buf b = LV_BUF_INIT, raw = LV_BUF_INIT, str = LV_BUF_INIT;
    fill(&e);
    e.flags = 0x3ff | (1u << 20) | (1u << 31); /* every flag, plus unknown bits */
    format(&e, &b);
    T_CHECK(valid_line(&b));
    T_CHECK(get_key(&b, "flags", &raw, &str));
    T_CHECK_STR(raw.data, "[\"retried\",\"budget-exhausted\",\"breaker-open\","
                          "\"idempotent-replay\",\"idempotency-conflict\",\"deadline-exceeded\","
                          "\"hook-error\",\"fallback\",\"client-abort\",\"upstream-abort\"]");
    e.flags = LV_ACCESS_BREAKER_OPEN | LV_ACCESS_FALLBACK;
    format(&e, &b);
    T_CHECK(get_key(&b, "flags", &raw, &str));
    T_CHECK_STR(raw.data, "[\"breaker-open\",\"fallback\"]");
    T_CHECK_STR(lv_access_flag_name(LV_ACCESS_UPSTREAM_ABORT), "upstream-abort");
    T_CHECK(lv_access_flag_name(0) == NULL);
    T_CHECK(lv_access_flag_name(LV_ACCESS_RETRIED | LV_ACCESS_FALLBACK) == NULL);
    lv_buf_dispose(&b);
    lv_buf_dispose(&raw);
    lv_buf_dispose(&str);
}

T_TEST(tries_capped)
{
    struct lv_access_entry e;
    struct lv_buf b = LV_BUF_INIT, raw = LV_BUF_INIT, str = LV_BUF_INIT;
    fill(&e);
    for (int i = 0; i < LV_ACCESS_MAX_TRIES; i++)
        e.tries[i] = (struct lv_access_try){500 + i, NULL, "s", i, NULL};
    e.ntries = 40;
    e.attempts = 40;
    format(&e, &b);
    T_CHECK(valid_line(&b));
    int n = 0;
    for (const char *p = b.data; (p = strstr(p, "\"outcome\"")) != NULL; p++)
        n++;
    T_CHECK_INT(n, LV_ACCESS_MAX_TRIES);
    T_CHECK(strstr(b.data, "{\"outcome\":\"515\",\"server\":\"s\",\"ms\":15}],") != NULL);
    T_CHECK(get_key(&b, "attempts", &raw, &str));
    T_CHECK_STR(raw.data, "40");
    lv_buf_dispose(&b);
    lv_buf_dispose(&raw);
    lv_buf_dispose(&str);
}

T_TEST(milliseconds)
{
    static const struct {
        double v;
        const char *want;
    } cases[] = {
        {0, "0"},
        {1, "1"},
        {1.5, "1.5"},
        {1.25, "1.25"},
        {0.001, "0.001"},
        {0.0004, "0"},
        {0.0005, "0.001"},
        {999.9996, "1000"},
        {12.3456, "12.346"},
        {-0.25, "-0.25"},
        {1e12, "1000000000000"},
        {1e16, "10000000000000000"},
    };
    struct lv_access_entry e;
    struct lv_buf b = LV_BUF_INIT, raw = LV_BUF_INIT, str = LV_BUF_INIT;
    memset(&e, 0, sizeof(e));
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        e.duration_ms = cases[i].v;
        format(&e, &b);
        T_CHECK(valid_line(&b));
        T_CHECK(get_key(&b, "duration_ms", &raw, &str));
        T_CHECK_STR(raw.data, cases[i].want);
    }
    lv_buf_dispose(&b);
    lv_buf_dispose(&raw);
    lv_buf_dispose(&str);
}

T_TEST(validator_rejects_bad_json)
{
    /* The checker itself must fail on what a broken formatter could produce. */
    static const char *bad[] = {
        "{\"a\":\"x\ny\"}\n", "{\"a\":\"\x01\"}\n", "{\"a\":1,}\n",
        "{\"a\":01}\n",       "{\"a\":\"\\q\"}\n",  "{\"a\":nul}\n",
        "{\"a\":1}",          "{\"a\":1}}\n",       "{\"a\":\"\xff\"}\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct lv_buf b = {(char *)bad[i], strlen(bad[i]), 0};
        T_CHECK(!valid_line(&b));
    }
    struct lv_buf ok = {(char *)"{\"a\":[1,-2.5e3,null,true,{\"b\":\"\\u00ff\"}]}\n", 0, 0};
    ok.len = strlen(ok.data);
    T_CHECK(valid_line(&ok));
}

int main(void)
{
    T_RUN(rfc3339);
    T_RUN(full_line_exact);
    T_RUN(nulls_and_errors);
    T_RUN(hostile_bytes_escaped);
    T_RUN(flags_array);
    T_RUN(tries_capped);
    T_RUN(milliseconds);
    T_RUN(validator_rejects_bad_json);
    T_DONE();
}
