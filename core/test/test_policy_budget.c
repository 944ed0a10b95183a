#include "policy/budget.h"
#include "policy/window.h"
#include "t.h"

#include <math.h>
#include <stdint.h>

static uint64_t avail(const struct lv_budget *b, uint64_t now)
{
    uint64_t a = 0;
    lv_budget_stats(b, now, NULL, NULL, &a);
    return a;
}

static uint64_t reqs(const struct lv_budget *b, uint64_t now)
{
    uint64_t r = 0;
    lv_budget_stats(b, now, &r, NULL, NULL);
    return r;
}

static uint64_t rets(const struct lv_budget *b, uint64_t now)
{
    uint64_t r = 0;
    lv_budget_stats(b, now, NULL, &r, NULL);
    return r;
}

/* Takes retries at `now` until refused; returns how many were granted. */
static int drain(struct lv_budget *b, uint64_t now)
{
    int n = 0;
    while (lv_budget_try_retry(b, now) && n < 1000000)
        n++;
    return n;
}

T_TEST(window_buckets_expire_one_by_one)
{
    struct lv_window w;
    lv_window_init(&w, 10000); /* 10 buckets of 1 s */
    T_CHECK_INT(w.bucket_ms, 1000);
    for (uint64_t s = 0; s < 10; s++)
        lv_window_add(&w, s * 1000 + 500, 0, s + 1); /* 1..10 */
    T_CHECK_INT(lv_window_sum(&w, 9999, 0), 55);
    T_CHECK_INT(lv_window_sum(&w, 10000, 0), 54); /* second 0 left */
    T_CHECK_INT(lv_window_sum(&w, 10999, 0), 54);
    T_CHECK_INT(lv_window_sum(&w, 11000, 0), 52);
    T_CHECK_INT(lv_window_sum(&w, 18999, 0), 10);
    T_CHECK_INT(lv_window_sum(&w, 19000, 0), 0);
    T_CHECK_INT(lv_window_sum(&w, 500000, 0), 0);
    /* a slot reused a lap later starts from zero */
    lv_window_add(&w, 10100, 0, 100);
    T_CHECK_INT(lv_window_sum(&w, 10100, 0), 154);
    /* counters are separate; an unknown counter is ignored */
    lv_window_add(&w, 10100, 2, 7);
    lv_window_add(&w, 10100, LV_WINDOW_COUNTERS, 7);
    T_CHECK_INT(lv_window_sum(&w, 10100, 2), 7);
    T_CHECK_INT(lv_window_sum(&w, 10100, 1), 0);
    T_CHECK_INT(lv_window_sum(&w, 10100, LV_WINDOW_COUNTERS), 0);
    /* a clock that went back does not count the future */
    T_CHECK_INT(lv_window_sum(&w, 5000, 0),
                2 + 3 + 4 + 5 + 6); /* second 0's slot now holds t = 10 s */
    lv_window_clear(&w);
    T_CHECK_INT(lv_window_sum(&w, 10100, 0), 0);
    /* tiny windows: 1 ms buckets */
    lv_window_init(&w, 3);
    T_CHECK_INT(w.bucket_ms, 1);
    lv_window_init(&w, 0);
    T_CHECK_INT(w.bucket_ms, 1);
    lv_window_add(&w, 0, 0, 1);
    T_CHECK_INT(lv_window_sum(&w, 9, 0), 1);
    T_CHECK_INT(lv_window_sum(&w, 10, 0), 0);
    /* saturates instead of wrapping */
    lv_window_add(&w, 0, 1, UINT64_MAX);
    lv_window_add(&w, 0, 1, 5);
    lv_window_add(&w, 1, 1, UINT64_MAX);
    T_CHECK(lv_window_sum(&w, 1, 1) == UINT64_MAX);
}

T_TEST(window_resize_carries_over)
{
    struct lv_window w;
    lv_window_init(&w, 10000);
    lv_window_add(&w, 1000, 0, 3);
    lv_window_add(&w, 8000, 0, 4);
    lv_window_add(&w, 8000, 1, 9);
    lv_window_resize(&w, 10000, 8500); /* same length: nothing moves */
    T_CHECK_INT(lv_window_sum(&w, 10999, 0), 7);
    T_CHECK_INT(lv_window_sum(&w, 11000, 0), 4);
    lv_window_resize(&w, 2000, 9000); /* 200 ms buckets; 7 and 9 carried to t = 9000 */
    T_CHECK_INT(w.bucket_ms, 200);
    T_CHECK_INT(lv_window_sum(&w, 9000, 0), 7);
    T_CHECK_INT(lv_window_sum(&w, 9000, 1), 9);
    T_CHECK_INT(lv_window_sum(&w, 10999, 0), 7);
    T_CHECK_INT(lv_window_sum(&w, 11000, 0), 0);
    T_CHECK_INT(lv_window_sum(&w, 11000, 1), 0);
}

T_TEST(floor_without_requests)
{
    struct lv_budget b;
    /* no requests at all: min_per_second x window = 10 x 10 = 100 retries */
    lv_budget_init(&b, 0.2, 10, 10000, 0);
    T_CHECK_INT(avail(&b, 0), 100);
    T_CHECK_INT(drain(&b, 0), 100);
    T_CHECK(!lv_budget_can_retry(&b, 0));
    T_CHECK_INT(avail(&b, 0), 0);
    /* 10 requests add 0.2 x 10 = 2 */
    for (int i = 0; i < 10; i++)
        lv_budget_on_request(&b, 100);
    T_CHECK_INT(avail(&b, 100), 2);
    T_CHECK_INT(drain(&b, 100), 2);
    /* 4 more requests: 0.2 x 14 = 2.8, still 102 in all */
    for (int i = 0; i < 4; i++)
        lv_budget_on_request(&b, 100);
    T_CHECK_INT(drain(&b, 100), 0);
    lv_budget_on_request(&b, 100); /* 15: 3 */
    T_CHECK_INT(drain(&b, 100), 1);
    /* fractional floor: 0.5/s over 3 s is 1.5, so 1 */
    lv_budget_init(&b, 0, 0.5, 3000, 0);
    T_CHECK_INT(drain(&b, 0), 1);
}

T_TEST(ratio_exact_multiples)
{
    /* 0.2 x 5 = 1 in floating point is 1.0000000000000002 or 0.9999999999999999 depending on
     * how it is computed: exactly one retry either way */
    struct lv_budget b;
    lv_budget_init(&b, 0.2, 0, 10000, 0);
    T_CHECK(!lv_budget_can_retry(&b, 0));
    for (int n = 1; n <= 1000; n++) {
        lv_budget_on_request(&b, 0);
        drain(&b, 0);
        T_CHECK_INT(rets(&b, 0), n / 5);
    }
    lv_budget_init(&b, 0.1, 0, 10000, 0);
    for (int i = 0; i < 30; i++)
        lv_budget_on_request(&b, 0);
    T_CHECK_INT(drain(&b, 0), 3);
    lv_budget_init(&b, 0.3, 0, 10000, 0);
    for (int i = 0; i < 10; i++)
        lv_budget_on_request(&b, 0);
    T_CHECK_INT(drain(&b, 0), 3);
    /* 0.29 x 100 is 28.999999999999996 in doubles: still 29 */
    lv_budget_init(&b, 0.29, 0, 10000, 0);
    for (int i = 0; i < 100; i++)
        lv_budget_on_request(&b, 0);
    T_CHECK_INT(avail(&b, 0), 29);
    T_CHECK_INT(drain(&b, 0), 29);
}

T_TEST(stream_holds_the_ratio)
{
    /* 100 requests/s for 100 s, every one of them wanting a retry; no floor */
    struct lv_budget b;
    uint64_t t0 = 1000000000000ull; /* the clock need not start at zero */
    lv_budget_init(&b, 0.2, 0, 10000, t0);
    int granted = 0, bad = 0;
    for (uint64_t i = 0; i < 10000; i++) {
        uint64_t now = t0 + i * 10;
        lv_budget_on_request(&b, now);
        if (lv_budget_try_retry(&b, now))
            granted++;
        uint64_t q, r;
        lv_budget_stats(&b, now, &q, &r, NULL);
        if ((double)r > 0.2 * (double)q + 1e-9)
            bad++; /* never more retries than the ratio allows, at any moment */
    }
    T_CHECK_INT(bad, 0);
    /* over the run the ratio is used, not wasted: close to 2000 */
    T_CHECK(granted >= 1950 && granted <= 2000);
    /* with a floor of 10/s on top: about 2000 + 10 x 100 */
    lv_budget_init(&b, 0.2, 10, 10000, t0);
    granted = 0;
    for (uint64_t i = 0; i < 10000; i++) {
        uint64_t now = t0 + i * 10;
        lv_budget_on_request(&b, now);
        granted += drain(&b, now);
    }
    T_CHECK(granted >= 2900 && granted <= 3100);
}

T_TEST(window_slides)
{
    /* ratio 1, no floor: each request buys one retry while it is in the window */
    struct lv_budget b;
    lv_budget_init(&b, 1, 0, 10000, 0);
    for (int i = 0; i < 100; i++)
        lv_budget_on_request(&b, 0);
    T_CHECK_INT(drain(&b, 0), 100);
    for (int i = 0; i < 50; i++)
        lv_budget_on_request(&b, 5000);
    T_CHECK_INT(drain(&b, 5000), 50);
    T_CHECK_INT(avail(&b, 9999), 0);
    /* at 10 s the first second's bucket leaves: 100 requests and 100 retries go together,
     * and what came at 5 s stays (a window reset every 10 s would forget it) */
    T_CHECK_INT(reqs(&b, 10000), 50);
    T_CHECK_INT(rets(&b, 10000), 50);
    T_CHECK_INT(avail(&b, 10000), 0);
    T_CHECK_INT(reqs(&b, 14999), 50);
    T_CHECK_INT(reqs(&b, 15000), 0);
    T_CHECK_INT(rets(&b, 15000), 0);

    /* retries made late outlive the requests that paid for them: they still count */
    lv_budget_init(&b, 1, 0, 10000, 0);
    for (int i = 0; i < 10; i++)
        lv_budget_on_request(&b, 0);
    T_CHECK_INT(drain(&b, 9000), 10);
    T_CHECK_INT(reqs(&b, 10000), 0);
    T_CHECK_INT(rets(&b, 10000), 10);
    for (int i = 0; i < 10; i++)
        lv_budget_on_request(&b, 10000);
    T_CHECK_INT(avail(&b, 10000), 0); /* 10 allowed, 10 still in the window */
    T_CHECK_INT(avail(&b, 19000), 10);
}

T_TEST(can_retry_does_not_spend)
{
    struct lv_budget b;
    lv_budget_init(&b, 0, 1, 3000, 0);
    for (int i = 0; i < 100; i++)
        T_CHECK(lv_budget_can_retry(&b, 0));
    T_CHECK_INT(rets(&b, 0), 0);
    lv_budget_on_retry(&b, 0);
    lv_budget_on_retry(&b, 0);
    T_CHECK(lv_budget_can_retry(&b, 0));
    lv_budget_on_retry(&b, 0);
    T_CHECK(!lv_budget_can_retry(&b, 0));
    /* on_retry counts even past the budget (the caller decided; the count stays true) */
    lv_budget_on_retry(&b, 0);
    T_CHECK_INT(rets(&b, 0), 4);
    T_CHECK_INT(avail(&b, 0), 0);
    T_CHECK(!lv_budget_try_retry(&b, 0));
    T_CHECK_INT(rets(&b, 0), 4);
}

T_TEST(zero_and_bad_thresholds)
{
    struct lv_budget b;
    lv_budget_init(&b, 0, 0, 10000, 0);
    for (int i = 0; i < 1000; i++)
        lv_budget_on_request(&b, 0);
    T_CHECK(!lv_budget_try_retry(&b, 0));
    lv_budget_init(&b, -1, -5, 10000, 0);
    lv_budget_on_request(&b, 0);
    T_CHECK(!lv_budget_try_retry(&b, 0));
    T_CHECK_INT(avail(&b, 0), 0);
    lv_budget_init(&b, NAN, NAN, 10000, 0);
    lv_budget_on_request(&b, 0);
    T_CHECK(!lv_budget_try_retry(&b, 0));
    lv_budget_init(&b, 0, 1e300, 10000, 0);
    T_CHECK(avail(&b, 0) == UINT64_MAX);
}

T_TEST(reconfigure)
{
    struct lv_budget b;
    lv_budget_init(&b, 0.2, 0, 10000, 0);
    for (int i = 0; i < 100; i++)
        lv_budget_on_request(&b, 1000);
    T_CHECK_INT(drain(&b, 1000), 20);
    /* same window: counts kept, the new ratio applies at once */
    lv_budget_configure(&b, 0.5, 0, 10000, 2000);
    T_CHECK_INT(reqs(&b, 2000), 100);
    T_CHECK_INT(rets(&b, 2000), 20);
    T_CHECK_INT(avail(&b, 2000), 30);
    /* a lower ratio: nothing left, nothing forgotten */
    lv_budget_configure(&b, 0.1, 0, 10000, 2000);
    T_CHECK_INT(avail(&b, 2000), 0);
    T_CHECK_INT(rets(&b, 2000), 20);
    /* a floor added: 1/s x 10 s */
    lv_budget_configure(&b, 0.1, 1, 10000, 2000);
    T_CHECK_INT(avail(&b, 2000), 0); /* 10 + 10 = 20 allowed, 20 used */
    lv_budget_configure(&b, 0.1, 2, 10000, 2000);
    T_CHECK_INT(avail(&b, 2000), 10);
    /* a new window: recent history is carried, so no fresh burst, and ages out on the new
     * scale (1 s window: 100 ms buckets) */
    lv_budget_configure(&b, 0.2, 0, 1000, 3000);
    T_CHECK_INT(reqs(&b, 3000), 100);
    T_CHECK_INT(rets(&b, 3000), 20);
    T_CHECK_INT(avail(&b, 3000), 0);
    T_CHECK_INT(reqs(&b, 3999), 100);
    T_CHECK_INT(reqs(&b, 4000), 0);
    T_CHECK_INT(rets(&b, 4000), 0);
    /* the floor uses the new window length: 10/s over 1 s */
    lv_budget_configure(&b, 0.2, 10, 1000, 4000);
    T_CHECK_INT(avail(&b, 4000), 10);
}

int main(void)
{
    T_RUN(window_buckets_expire_one_by_one);
    T_RUN(window_resize_carries_over);
    T_RUN(floor_without_requests);
    T_RUN(ratio_exact_multiples);
    T_RUN(stream_holds_the_ratio);
    T_RUN(window_slides);
    T_RUN(can_retry_does_not_spend);
    T_RUN(zero_and_bad_thresholds);
    T_RUN(reconfigure);
    T_DONE();
}
