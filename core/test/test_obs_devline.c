/*
 * test_obs_devline: the console access-log line (README "levee dev"): exact lines without
 * and with colours, several attempts, injected faults, flags, retry_stop, long and hostile
 * paths.
 */
#include "obs/devline.h"
#include "t.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#define T0 1795000801.234 /* 2026-11-18T11:20:01.234Z */

static struct lv_access_entry entry(void)
{
    struct lv_access_entry e;
    memset(&e, 0, sizeof(e));
    e.time = T0;
    e.method = "GET";
    e.path = lv_access_cstr("/v1/orders");
    e.status = 200;
    e.duration_ms = 12.34;
    return e;
}

static struct lv_buf linebuf;

static char *line(const struct lv_access_entry *e, bool color)
{
    lv_buf_reset(&linebuf);
    lv_accesslog_format_console(e, &linebuf, color);
    lv_buf_putc(&linebuf, '\0');
    return linebuf.data;
}

static void add_try(struct lv_access_entry *e, int status, const char *error, double ms,
                    const char *fault)
{
    struct lv_access_try *t = &e->tries[e->ntries++];
    t->status = status;
    t->error = status ? "" : error;
    t->server = "127.0.0.1:3000";
    t->ms = ms;
    t->fault = fault;
    e->attempts = (int)e->ntries;
}

T_TEST(plain_one_attempt)
{
    struct lv_access_entry e = entry();
    add_try(&e, 200, NULL, 5.21, NULL);
    e.retry_stop = "success";
    T_CHECK_STR(line(&e, false), "11:20:01.234 GET /v1/orders 200 12.3ms  200 5.2ms\n");
}

T_TEST(attempts_faults_flags)
{
    struct lv_access_entry e = entry();
    add_try(&e, 503, NULL, 0.12, "abort");
    add_try(&e, 0, "reset", 1.0, NULL);
    add_try(&e, 200, NULL, 5.2, NULL);
    e.flags = LV_ACCESS_RETRIED | LV_ACCESS_FAULT;
    e.retry_stop = "success";
    T_CHECK_STR(line(&e, false),
                "11:20:01.234 GET /v1/orders 200 12.3ms  503 (fault) 0.1ms \xe2\x86\x92 "
                "reset 1.0ms \xe2\x86\x92 200 5.2ms  [retried fault]\n");
    /* a delay says which fault it was; an injected reset does not repeat itself */
    struct lv_access_entry d = entry();
    add_try(&d, 200, NULL, 300.4, "delay");
    add_try(&d, 0, "reset", 0, "reset");
    d.flags = LV_ACCESS_FAULT;
    T_CHECK_STR(line(&d, false), "11:20:01.234 GET /v1/orders 200 12.3ms  200 (fault delay) 300ms "
                                 "\xe2\x86\x92 reset (fault) 0.0ms  [fault]\n");
}

T_TEST(retry_stop_and_error)
{
    struct lv_access_entry e = entry();
    e.status = 502;
    e.duration_ms = 1234.5;
    add_try(&e, 0, "reset", 0.3, NULL);
    add_try(&e, 0, "connect-failure", 0.4, NULL);
    e.flags = LV_ACCESS_RETRIED;
    e.retry_stop = "attempts";
    e.error = "upstream-reset";
    T_CHECK_STR(line(&e, false), "11:20:01.234 GET /v1/orders 502 1.23s  reset 0.3ms \xe2\x86\x92 "
                                 "connect-failure 0.4ms  [retried]  retry_stop=attempts  "
                                 "error=upstream-reset\n");
    /* levee answered alone: no attempts, no method (a request refused before its line) */
    struct lv_access_entry r;
    memset(&r, 0, sizeof(r));
    r.time = T0;
    r.status = 400;
    r.duration_ms = 0.04;
    r.error = "bad-request";
    T_CHECK_STR(line(&r, false), "11:20:01.234 - - 400 0.0ms  error=bad-request\n");
    /* breaker open */
    struct lv_access_entry b = entry();
    b.status = 503;
    b.flags = LV_ACCESS_BREAKER_OPEN;
    b.retry_stop = "breaker";
    b.error = "breaker-open";
    T_CHECK_STR(line(&b, false), "11:20:01.234 GET /v1/orders 503 12.3ms  [breaker-open]  "
                                 "retry_stop=breaker  error=breaker-open\n");
}

T_TEST(durations)
{
    struct lv_access_entry e = entry();
    double ms[] = {0.04, 99.94, 99.96, 123.4, 999.4, 999.6, 12345.0};
    const char *want[] = {"0.0ms", "99.9ms", "100ms", "123ms", "999ms", "1.00s", "12.3s"};
    for (size_t i = 0; i < sizeof(ms) / sizeof(ms[0]); i++) {
        e.duration_ms = ms[i];
        char exp[128];
        snprintf(exp, sizeof(exp), "11:20:01.234 GET /v1/orders 200 %s\n", want[i]);
        T_CHECK_STR(line(&e, false), exp);
    }
}

T_TEST(more_attempts_than_recorded)
{
    struct lv_access_entry e = entry();
    for (int i = 0; i < LV_ACCESS_MAX_TRIES; i++)
        add_try(&e, 503, NULL, 1, NULL);
    e.attempts = LV_ACCESS_MAX_TRIES + 2;
    const char *l = line(&e, false);
    T_CHECK(strstr(l, "503 1.0ms \xe2\x86\x92 +2 more\n") != NULL);
}

T_TEST(colours)
{
    struct lv_access_entry e = entry();
    add_try(&e, 503, NULL, 0.12, "abort");
    add_try(&e, 200, NULL, 5.2, NULL);
    e.flags = LV_ACCESS_RETRIED | LV_ACCESS_FAULT;
    e.retry_stop = "success";
    T_CHECK_STR(line(&e, true), "\033[2m11:20:01.234\033[0m \033[1mGET\033[0m /v1/orders "
                                "\033[32m200\033[0m 12.3ms  \033[31m503\033[0m "
                                "\033[35m(fault)\033[0m 0.1ms\033[2m \xe2\x86\x92 \033[0m"
                                "\033[32m200\033[0m 5.2ms  [\033[33mretried\033[0m "
                                "\033[35mfault\033[0m]\n");
    struct lv_access_entry s = entry();
    int statuses[] = {200, 304, 429, 504};
    const char *codes[] = {"32", "36", "33", "31"};
    for (int i = 0; i < 4; i++) {
        s.status = statuses[i];
        char want[64];
        snprintf(want, sizeof(want), "\033[%sm%d\033[0m", codes[i], statuses[i]);
        T_CHECK(strstr(line(&s, true), want) != NULL);
    }
    /* errors red, retry_stop yellow, the Levee-Error token red */
    struct lv_access_entry r = entry();
    r.status = 502;
    add_try(&r, 0, "timeout", 1, NULL);
    r.retry_stop = "deadline";
    r.error = "upstream-timeout";
    const char *l = line(&r, true);
    T_CHECK(strstr(l, "\033[31mtimeout\033[0m") != NULL);
    T_CHECK(strstr(l, "retry_stop=\033[33mdeadline\033[0m") != NULL);
    T_CHECK(strstr(l, "error=\033[31mupstream-timeout\033[0m") != NULL);
    /* without colour: no escape byte at all */
    T_CHECK(strchr(line(&r, false), '\033') == NULL);
}

T_TEST(hostile_path_sanitized)
{
    struct lv_access_entry e = entry();
    static const char p[] = "/a\033[31mred\033]0;title\a\\b\r\nx\x7f\xc2\x9b\x00z";
    e.path = (struct lv_access_str){p, sizeof(p) - 1};
    const char *l = line(&e, false);
    T_CHECK_STR(l, "11:20:01.234 GET /a\\x1b[31mred\\x1b]0;title\\x07\\\\b\\x0d\\x0ax\\x7f\\xc2"
                   "\\x9b\\x00z 200 12.3ms\n");
    /* with colours, the only escapes are levee's own */
    const char *c = line(&e, true);
    for (const char *q = strchr(c, '\033'); q; q = strchr(q + 1, '\033'))
        T_CHECK(q[1] == '[' && (q[2] == '0' || q[2] == '1' || q[2] == '2' || q[2] == '3'));
    T_CHECK(strstr(c, "\033]") == NULL && strchr(c, '\a') == NULL && strchr(c, '\r') == NULL);
    /* a hostile method too (it comes from the request line) */
    e.method = "G\033T";
    T_CHECK(strstr(line(&e, false), " G\\x1bT ") != NULL);
}

T_TEST(long_path_cut)
{
    struct lv_access_entry e = entry();
    char p[400];
    memset(p, 'a', sizeof(p));
    p[0] = '/';
    e.path = (struct lv_access_str){p, sizeof(p)};
    const char *l = line(&e, false);
    const char *start = strchr(l, '/');
    T_CHECK(start != NULL);
    T_CHECK(strncmp(start + LV_DEVLINE_MAX_PATH, "... 200 12.3ms\n", 15) == 0);
    T_CHECK_INT(strlen(l),
                strlen("11:20:01.234 GET ") + LV_DEVLINE_MAX_PATH + strlen("... 200 12.3ms\n"));
}

T_TEST(format_as)
{
    struct lv_access_entry e = entry();
    struct lv_buf b = LV_BUF_INIT;
    lv_accesslog_format_as(false, true, &e, &b);
    T_CHECK(b.len > 0 && b.data[0] == '{');
    lv_buf_reset(&b);
    lv_accesslog_format_as(true, false, &e, &b);
    T_CHECK(b.len > 0 && b.data[0] == '1');
    lv_buf_dispose(&b);
}

int main(void)
{
    setenv("TZ", "UTC", 1); /* the console line shows local time */
    tzset();
    T_RUN(plain_one_attempt);
    T_RUN(attempts_faults_flags);
    T_RUN(retry_stop_and_error);
    T_RUN(durations);
    T_RUN(more_attempts_than_recorded);
    T_RUN(colours);
    T_RUN(hostile_path_sanitized);
    T_RUN(long_path_cut);
    T_RUN(format_as);
    lv_buf_dispose(&linebuf);
    T_DONE();
}
