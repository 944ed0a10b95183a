#include "base/buf.h"
#include "policy/gcra.h"
#include "policy/ratelimit.h"
#include "t.h"

#include <stdint.h>
#include <stdlib.h>

#define MS  1000000ULL
#define SEC 1000000000ULL

/* Checks once; returns whether it passed. */
static bool pass(const struct lv_gcra *g, uint64_t *tat, uint64_t now, struct lv_gcra_result *r)
{
    struct lv_gcra_result tmp;
    if (!r)
        r = &tmp;
    lv_gcra_check(g, tat, now, r);
    return r->allowed;
}

T_TEST(init_interval_and_tolerance)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 100, SEC, 20);
    T_CHECK_INT(g.interval_ns, 10 * MS);
    T_CHECK_INT(g.tolerance_ns, 200 * MS);
    /* I rounds up: never faster than configured */
    lv_gcra_init(&g, 3, SEC, 0);
    T_CHECK_INT(g.interval_ns, 333333334);
    T_CHECK_INT(g.tolerance_ns, 0);
    /* 0 taken as 1; I at least 1 ns */
    lv_gcra_init(&g, 0, 0, 0);
    T_CHECK_INT(g.rate, 1);
    T_CHECK_INT(g.per_ns, 1);
    T_CHECK_INT(g.interval_ns, 1);
    lv_gcra_init(&g, 4000000000u, SEC, 1);
    T_CHECK_INT(g.interval_ns, 1);
    /* huge products saturate */
    lv_gcra_init(&g, 1, UINT64_MAX, UINT32_MAX);
    T_CHECK(g.interval_ns == UINT64_MAX / 4);
    T_CHECK(g.tolerance_ns == UINT64_MAX / 4);
}

T_TEST(new_key_passes_burst_plus_one_at_once)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 100, SEC, 20);
    uint64_t tat = 0, now = 5 * SEC;
    struct lv_gcra_result r;
    for (uint32_t i = 0; i < 21; i++) {
        T_CHECK(pass(&g, &tat, now, &r));
        T_CHECK_INT(r.remaining, 20 - i);
        T_CHECK_INT(r.retry_after_ns, 0);
        T_CHECK_INT(r.reset_ns, (i + 1) * 10 * MS);
    }
    uint64_t before = tat;
    T_CHECK(!pass(&g, &tat, now, &r));
    T_CHECK_INT(tat, before); /* a refusal changes nothing */
    T_CHECK_INT(r.remaining, 0);
    T_CHECK_INT(r.retry_after_ns, 10 * MS); /* exactly one interval */
    T_CHECK_INT(r.reset_ns, 210 * MS);
    T_CHECK_INT(lv_gcra_retry_after_s(r.retry_after_ns), 1);
    /* 1 ns early: still refused, by exactly 1 ns; on time: passes */
    T_CHECK(!pass(&g, &tat, now + 10 * MS - 1, &r));
    T_CHECK_INT(r.retry_after_ns, 1);
    T_CHECK(pass(&g, &tat, now + 10 * MS, &r));
    T_CHECK_INT(r.remaining, 0);
    /* burst 0: one at once */
    lv_gcra_init(&g, 100, SEC, 0);
    tat = 0;
    T_CHECK(pass(&g, &tat, now, &r));
    T_CHECK_INT(r.remaining, 0);
    T_CHECK(!pass(&g, &tat, now, &r));
    T_CHECK_INT(r.retry_after_ns, 10 * MS);
}

T_TEST(steady_rate_passes_forever)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 100, SEC, 0);
    uint64_t tat = 0;
    int ok = 0;
    for (uint64_t t = 0; t < 10 * SEC; t += 10 * MS)
        ok += pass(&g, &tat, t, NULL);
    T_CHECK_INT(ok, 1000);
    /* with a burst: the bucket refills while paced, so a full burst is there again */
    lv_gcra_init(&g, 100, SEC, 20);
    tat = 0;
    for (uint64_t t = 0; t < SEC; t += 20 * MS)
        T_CHECK(pass(&g, &tat, t, NULL)); /* at half the rate */
    uint64_t now = SEC + 500 * MS;
    int n = 0;
    while (pass(&g, &tat, now, NULL))
        n++;
    T_CHECK_INT(n, 21);
}

T_TEST(recovery_after_waiting)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 10, SEC, 4);
    uint64_t tat = 0, now = 1000 * SEC;
    struct lv_gcra_result r;
    while (pass(&g, &tat, now, &r))
        ;
    T_CHECK_INT(r.retry_after_ns, 100 * MS);
    T_CHECK_INT(r.reset_ns, 500 * MS);
    /* waiting retry_after lets exactly one through */
    now += r.retry_after_ns;
    T_CHECK(pass(&g, &tat, now, &r));
    T_CHECK(!pass(&g, &tat, now, &r));
    /* waiting the reset gives the whole burst + 1 back */
    now += r.reset_ns;
    T_CHECK(lv_gcra_expired(&g, tat, now));
    int n = 0;
    while (pass(&g, &tat, now, &r))
        n++;
    T_CHECK_INT(n, 5);
}

T_TEST(retry_after_rounds_up_to_whole_seconds)
{
    T_CHECK_INT(lv_gcra_retry_after_s(0), 1);
    T_CHECK_INT(lv_gcra_retry_after_s(1), 1);
    T_CHECK_INT(lv_gcra_retry_after_s(SEC - 1), 1);
    T_CHECK_INT(lv_gcra_retry_after_s(SEC), 1);
    T_CHECK_INT(lv_gcra_retry_after_s(SEC + 1), 2);
    T_CHECK_INT(lv_gcra_retry_after_s(3600 * SEC), 3600);
    T_CHECK(lv_gcra_retry_after_s(UINT64_MAX) == UINT32_MAX);
    T_CHECK_INT(lv_gcra_ceil_s(0), 0);
    T_CHECK_INT(lv_gcra_ceil_s(1), 1);
    T_CHECK_INT(lv_gcra_ceil_s(2 * SEC), 2);
    T_CHECK_INT(lv_gcra_ceil_s(2 * SEC + 1), 3);
    /* a client coming back after Retry-After whole seconds passes */
    struct lv_gcra g;
    lv_gcra_init(&g, 2, 3 * SEC, 0); /* I = 1.5 s */
    uint64_t tat = 0, now = 7;
    struct lv_gcra_result r;
    T_CHECK(pass(&g, &tat, now, &r));
    T_CHECK(!pass(&g, &tat, now + 200 * MS, &r));
    T_CHECK_INT(r.retry_after_ns, 1300 * MS);
    uint32_t ra = lv_gcra_retry_after_s(r.retry_after_ns);
    T_CHECK_INT(ra, 2);
    T_CHECK(pass(&g, &tat, now + 200 * MS + ra * SEC, &r));
}

/* Requests every `gap` from t = 0 for `span`: how many pass. Also checks that no window of
 * length `per` (half-open) holds more than rate + burst of them. */
static uint64_t simulate(const struct lv_gcra *g, uint64_t gap, uint64_t span, bool *window_ok)
{
    size_t cap = (size_t)(span / gap) + 2;
    uint64_t *at = malloc(cap * sizeof(*at));
    size_t n = 0;
    uint64_t tat = 0;
    for (uint64_t t = 0; t < span; t += gap)
        if (pass(g, &tat, t, NULL))
            at[n++] = t;
    *window_ok = true;
    for (size_t i = 0, j = 0; j < n; j++) {
        while (at[j] - at[i] >= g->per_ns)
            i++;
        if (j - i + 1 > (uint64_t)g->rate + g->burst)
            *window_ok = false;
    }
    free(at);
    return n;
}

T_TEST(accuracy_at_twice_the_rate)
{
    struct lv_gcra g;
    bool wok;
    /* 10 s at twice the rate: rate x T / per + burst, to one request */
    lv_gcra_init(&g, 100, SEC, 20);
    uint64_t n = simulate(&g, 5 * MS, 10 * SEC, &wok);
    T_CHECK(n <= 100 * 10 + 20);
    T_CHECK(n >= 100 * 10 + 20 - 1);
    T_CHECK(wok);
    /* other rates, gaps not dividing the interval */
    lv_gcra_init(&g, 7, SEC, 3);
    n = simulate(&g, 71 * MS, 10 * SEC, &wok);
    T_CHECK(n <= 70 + 3);
    T_CHECK(n >= 70 + 3 - 1);
    T_CHECK(wok);
    lv_gcra_init(&g, 1000, SEC, 1);
    n = simulate(&g, 333 * 1000, 10 * SEC, &wok);
    T_CHECK(n <= 10000 + 1 && n >= 10000);
    T_CHECK(wok);
    /* within 2% also when the rate does not divide the period (I rounded up) */
    lv_gcra_init(&g, 3, SEC, 1);
    n = simulate(&g, 100 * MS, 10 * SEC, &wok);
    T_CHECK(n <= 31 && n >= 30);
    T_CHECK(wok);
    /* at exactly the rate, nothing is refused and nothing more passes */
    lv_gcra_init(&g, 50, SEC, 5);
    n = simulate(&g, 20 * MS, 10 * SEC, &wok);
    T_CHECK_INT(n, 500);
}

T_TEST(random_arrivals_respect_every_window)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 20, SEC, 5);
    uint64_t s = 0x9E3779B97F4A7C15ULL, tat = 0, t = 0;
    uint64_t at[20000];
    size_t n = 0;
    for (int k = 0; k < 20000; k++) {
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        t += s % (40 * MS); /* bursty: 0 .. 40 ms apart, mean 20 ms = twice the rate */
        if (pass(&g, &tat, t, NULL))
            at[n++] = t;
    }
    bool ok = true;
    for (size_t i = 0, j = 0; j < n; j++) {
        while (at[j] - at[i] >= SEC)
            i++;
        if (j - i + 1 > 25)
            ok = false;
    }
    T_CHECK(ok);
    T_CHECK(n <= 20 * (t / SEC + 1) + 5);
    T_CHECK(n >= 20 * (t / SEC) * 95 / 100);
}

T_TEST(expired_state_equals_new_key)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 10, SEC, 2);
    uint64_t tat = 0, now = 50 * SEC;
    pass(&g, &tat, now, NULL);
    pass(&g, &tat, now, NULL);
    T_CHECK_INT(tat, now + 200 * MS);
    T_CHECK(!lv_gcra_expired(&g, tat, now + 200 * MS - 1));
    T_CHECK(lv_gcra_expired(&g, tat, now + 200 * MS));
    T_CHECK(lv_gcra_expired(&g, 0, 0));
    /* from the expiry on, the old state and a new one answer alike, request after request */
    for (uint64_t later = now + 200 * MS; later < now + 2 * SEC; later += 300 * MS) {
        uint64_t a = tat, b = 0;
        for (int i = 0; i < 5; i++) {
            struct lv_gcra_result ra, rb;
            lv_gcra_check(&g, &a, later, &ra);
            lv_gcra_check(&g, &b, later, &rb);
            T_CHECK(ra.allowed == rb.allowed);
            T_CHECK_INT(ra.remaining, rb.remaining);
            T_CHECK_INT(ra.reset_ns, rb.reset_ns);
            T_CHECK_INT(ra.retry_after_ns, rb.retry_after_ns);
            T_CHECK_INT(a, b);
        }
    }
    /* whatever the parameters (a reload) */
    struct lv_gcra g2;
    lv_gcra_init(&g2, 1, 3600 * SEC, 0);
    T_CHECK(lv_gcra_expired(&g2, tat, now + 200 * MS));
}

T_TEST(parameters_change_on_the_same_state)
{
    struct lv_gcra g, g2;
    lv_gcra_init(&g, 10, SEC, 0);
    uint64_t tat = 0, now = SEC;
    T_CHECK(pass(&g, &tat, now, NULL));
    T_CHECK(!pass(&g, &tat, now, NULL));
    /* a reload to a burst of 5: the state is read with the new tolerance */
    lv_gcra_init(&g2, 10, SEC, 5);
    int n = 0;
    while (pass(&g2, &tat, now, NULL))
        n++;
    T_CHECK_INT(n, 5);
}

T_TEST(edge_rates)
{
    struct lv_gcra g;
    struct lv_gcra_result r;
    /* 1 per hour */
    lv_gcra_init(&g, 1, 3600 * SEC, 0);
    uint64_t tat = 0, now = 42 * SEC;
    T_CHECK(pass(&g, &tat, now, &r));
    T_CHECK_INT(r.reset_ns, 3600 * SEC);
    T_CHECK(!pass(&g, &tat, now + SEC, &r));
    T_CHECK_INT(r.retry_after_ns, 3599 * SEC);
    T_CHECK_INT(lv_gcra_retry_after_s(r.retry_after_ns), 3599);
    T_CHECK(!pass(&g, &tat, now + 3600 * SEC - 1, &r));
    T_CHECK(pass(&g, &tat, now + 3600 * SEC, &r));
    /* 1e6 per second: 1 us apart, a million in a second, not one more */
    lv_gcra_init(&g, 1000000, SEC, 0);
    T_CHECK_INT(g.interval_ns, 1000);
    tat = 0;
    int ok = 0;
    for (uint64_t t = 0; t < SEC; t += 500)
        ok += pass(&g, &tat, t, NULL);
    T_CHECK_INT(ok, 1000000);
    /* large clocks: no overflow near the end of the range */
    lv_gcra_init(&g, 100, SEC, 20);
    now = (uint64_t)1 << 62;
    tat = 0;
    int n = 0;
    while (pass(&g, &tat, now, &r))
        n++;
    T_CHECK_INT(n, 21);
    T_CHECK_INT(r.retry_after_ns, 10 * MS);
    now = UINT64_MAX - 5;
    tat = 0;
    T_CHECK(pass(&g, &tat, now, &r));
    T_CHECK(tat == UINT64_MAX); /* saturated, not wrapped */
    T_CHECK(r.reset_ns == 5);
    T_CHECK(!lv_gcra_expired(&g, tat, now));
    /* a long per with a huge burst: I and tau are capped, the sums saturate */
    lv_gcra_init(&g, 1, UINT64_MAX / 2, UINT32_MAX);
    tat = 0;
    T_CHECK(pass(&g, &tat, 1, &r));
    T_CHECK_INT(r.remaining, 1);
    T_CHECK(pass(&g, &tat, 1, &r));
    T_CHECK(!pass(&g, &tat, 1, &r));
    T_CHECK(r.retry_after_ns > 0);
}

static void headers(const struct lv_gcra *g, const struct lv_gcra_result *r, const char *want)
{
    struct lv_buf b = LV_BUF_INIT;
    lv_ratelimit_headers(&b, g, r);
    lv_buf_putc(&b, '\0');
    T_CHECK_STR(b.data, want);
    lv_buf_dispose(&b);
}

T_TEST(ratelimit_header_fields)
{
    struct lv_gcra g;
    struct lv_gcra_result r;
    uint64_t tat = 0, now = SEC;
    lv_gcra_init(&g, 100, SEC, 20);
    lv_gcra_check(&g, &tat, now, &r);
    headers(&g, &r,
            "RateLimit-Policy: \"default\";q=120;w=1\r\n"
            "RateLimit: \"default\";r=20;t=1\r\n");
    while (r.allowed)
        lv_gcra_check(&g, &tat, now, &r);
    headers(&g, &r,
            "RateLimit-Policy: \"default\";q=120;w=1\r\n"
            "RateLimit: \"default\";r=0;t=1\r\n");
    /* 1 per hour: the refused client learns the hour */
    lv_gcra_init(&g, 1, 3600 * SEC, 0);
    tat = 0;
    lv_gcra_check(&g, &tat, now, &r);
    lv_gcra_check(&g, &tat, now + 10 * SEC, &r);
    T_CHECK(!r.allowed);
    headers(&g, &r,
            "RateLimit-Policy: \"default\";q=1;w=3600\r\n"
            "RateLimit: \"default\";r=0;t=3590\r\n");
    T_CHECK_INT(lv_gcra_retry_after_s(r.retry_after_ns), 3590);
    /* per below a second: the window is 1 s and the quota what GCRA passes in it */
    lv_gcra_init(&g, 10, 100 * MS, 5);
    tat = 0;
    lv_gcra_check(&g, &tat, now, &r);
    headers(&g, &r,
            "RateLimit-Policy: \"default\";q=105;w=1\r\n"
            "RateLimit: \"default\";r=5;t=1\r\n");
    /* per not whole seconds: rounded up */
    lv_gcra_init(&g, 3, 1500 * MS, 2);
    tat = 0;
    lv_gcra_check(&g, &tat, now, &r);
    headers(&g, &r,
            "RateLimit-Policy: \"default\";q=6;w=2\r\n"
            "RateLimit: \"default\";r=2;t=1\r\n");
    /* per of 1 ns: 1e9 a second, plus the burst */
    lv_gcra_init(&g, 1, 1, UINT32_MAX);
    struct lv_gcra_result big = {.allowed = true, .remaining = 7, .reset_ns = 0};
    headers(&g, &big,
            "RateLimit-Policy: \"default\";q=5294967295;w=1\r\n"
            "RateLimit: \"default\";r=7;t=0\r\n");
}

int main(void)
{
    T_RUN(init_interval_and_tolerance);
    T_RUN(new_key_passes_burst_plus_one_at_once);
    T_RUN(steady_rate_passes_forever);
    T_RUN(recovery_after_waiting);
    T_RUN(retry_after_rounds_up_to_whole_seconds);
    T_RUN(accuracy_at_twice_the_rate);
    T_RUN(random_arrivals_respect_every_window);
    T_RUN(expired_state_equals_new_key);
    T_RUN(parameters_change_on_the_same_state);
    T_RUN(edge_rates);
    T_RUN(ratelimit_header_fields);
    T_DONE();
}
