#include "policy/breaker.h"
#include "t.h"

#include <stdint.h>

/* breaker { failure_ratio 0.5, min_requests 10, window 10s, consecutive 5, open_for 1s,
 * max_open_for 8s, half_open_requests 2 } */
static struct lv_breaker_params params(void)
{
    return (struct lv_breaker_params){
        .failure_ratio = 0.5,
        .min_requests = 10,
        .window_ms = 10000,
        .consecutive_failures = 5,
        .open_for_ms = 1000,
        .max_open_for_ms = 8000,
        .half_open_requests = 2,
        .slow_call_ms = 0,
        .slow_call_ratio = 1.0,
    };
}

static struct lv_breaker_stats stats(const struct lv_breaker *b, uint64_t now)
{
    struct lv_breaker_stats s;
    lv_breaker_stats(b, now, &s);
    return s;
}

static void fail(struct lv_breaker *b, uint64_t now, int n)
{
    for (int i = 0; i < n; i++)
        lv_breaker_record(b, now, true, false, false);
}

static void succeed(struct lv_breaker *b, uint64_t now, int n)
{
    for (int i = 0; i < n; i++)
        lv_breaker_record(b, now, false, false, false);
}

static int admit(struct lv_breaker *b, uint64_t now, uint64_t *ra)
{
    *ra = 0xdead;
    return lv_breaker_admit(b, now, ra);
}

/* opens b at `now` with the consecutive rule */
static void trip(struct lv_breaker *b, uint64_t now)
{
    fail(b, now, (int)b->p.consecutive_failures);
}

T_TEST(closed_admits_everything)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    lv_breaker_init(&b, &p, 0);
    uint64_t ra;
    for (uint64_t t = 0; t < 100000; t += 997)
        T_CHECK_INT(admit(&b, t, &ra), LV_BREAKER_ALLOW);
    T_CHECK(ra == 0xdead); /* untouched unless rejected */
    struct lv_breaker_stats s = stats(&b, 0);
    T_CHECK_INT(s.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(s.open_for_ms, 1000);
    T_CHECK_STR(lv_breaker_state_name(LV_BREAKER_CLOSED), "closed");
    T_CHECK_STR(lv_breaker_state_name(LV_BREAKER_OPEN), "open");
    T_CHECK_STR(lv_breaker_state_name(LV_BREAKER_HALF_OPEN), "half-open");
    T_CHECK_STR(lv_breaker_state_name((enum lv_breaker_state)9), "?");
    /* metric values */
    T_CHECK_INT(LV_BREAKER_CLOSED, 0);
    T_CHECK_INT(LV_BREAKER_OPEN, 1);
    T_CHECK_INT(LV_BREAKER_HALF_OPEN, 2);
}

T_TEST(consecutive_rule)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    p.min_requests = 1000; /* keep the ratio rule out of it */
    lv_breaker_init(&b, &p, 0);
    fail(&b, 100, 4);
    T_CHECK_INT(stats(&b, 100).consecutive, 4);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    succeed(&b, 100, 1); /* a success breaks the run */
    T_CHECK_INT(stats(&b, 100).consecutive, 0);
    fail(&b, 100, 4);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 200, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
    struct lv_breaker_stats s = stats(&b, 200);
    T_CHECK_INT(s.state, LV_BREAKER_OPEN);
    T_CHECK_INT(s.to_open, 1);
    T_CHECK_INT(s.open_left_ms, 1000);
    T_CHECK_INT(s.requests, 10);
    T_CHECK_INT(s.failures, 9);
    uint64_t ra;
    T_CHECK_INT(admit(&b, 200, &ra), LV_BREAKER_REJECT);
    T_CHECK_INT(ra, 1000);
    T_CHECK_INT(admit(&b, 700, &ra), LV_BREAKER_REJECT);
    T_CHECK_INT(ra, 500);
    T_CHECK_INT(admit(&b, 1199, &ra), LV_BREAKER_REJECT);
    T_CHECK_INT(ra, 1);
    /* rule off */
    p.consecutive_failures = 0;
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 500);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
}

T_TEST(ratio_rule)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    p.consecutive_failures = 0;
    lv_breaker_init(&b, &p, 0);
    /* below min_requests nothing trips, whatever the ratio */
    fail(&b, 0, 9);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 0, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* 4 of 10 stays closed, 5 of 11 too, 6 of 12 opens */
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 4);
    succeed(&b, 0, 6);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 0, 1);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 0, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* reaching the ratio exactly is enough, and a success can be the sample that makes
     * the window big enough */
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 5);
    succeed(&b, 0, 4);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    succeed(&b, 0, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* 0.29 x 100 is 28.999999999999996 in doubles: 29 failures of 100 reach it, 28 do not */
    p.failure_ratio = 0.29;
    p.min_requests = 100;
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 28);
    succeed(&b, 0, 72);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 29);
    succeed(&b, 0, 71);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* 0.55 x 100 is 55.00000000000001 in doubles: 55 failures of 100 reach it */
    p.failure_ratio = 0.55;
    lv_breaker_init(&b, &p, 0);
    succeed(&b, 0, 45);
    fail(&b, 0, 54);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 0, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* ratio 0 turns the rule off */
    p.failure_ratio = 0;
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 100);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
}

T_TEST(ratio_window_rolls)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    p.consecutive_failures = 0;
    lv_breaker_init(&b, &p, 5000);
    fail(&b, 5000, 9);
    /* 10 s later the first bucket has left: one new failure is 1 of 1, below min_requests */
    fail(&b, 15000, 1);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(stats(&b, 15000).requests, 1);
    T_CHECK_INT(stats(&b, 15000).failures, 1);
    /* inside the window they add up */
    fail(&b, 16000, 8);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 16500, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* old successes leaving the window raise the ratio: it trips on the next sample */
    lv_breaker_init(&b, &p, 0);
    succeed(&b, 0, 20);
    fail(&b, 5000, 10);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    succeed(&b, 10000, 1); /* now 10 failures of 11 */
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
}

T_TEST(slow_rule)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    p.consecutive_failures = 0;
    p.failure_ratio = 0.9;
    p.slow_call_ms = 100;
    p.slow_call_ratio = 0.5;
    lv_breaker_init(&b, &p, 0);
    T_CHECK(!lv_breaker_is_slow(&b, 0));
    T_CHECK(!lv_breaker_is_slow(&b, 100));
    T_CHECK(lv_breaker_is_slow(&b, 101));
    for (int i = 0; i < 9; i++)
        lv_breaker_record(&b, 0, false, i % 2 == 0, false); /* 5 slow of 9 */
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(stats(&b, 0).slow, 5);
    T_CHECK_INT(stats(&b, 0).consecutive, 0);      /* slow successes are successes */
    lv_breaker_record(&b, 0, false, false, false); /* 5 of 10 */
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);

    /* a slow probe fails the probe */
    uint64_t ra;
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1000, false, true, true);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
    T_CHECK_INT(b.open_for_ms, 2000);

    /* rule off: slow flags are ignored, even when passed */
    p.slow_call_ms = 0;
    p.failure_ratio = 0.5;
    lv_breaker_init(&b, &p, 0);
    T_CHECK(!lv_breaker_is_slow(&b, UINT64_MAX));
    for (int i = 0; i < 50; i++)
        lv_breaker_record(&b, 0, false, true, false);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(stats(&b, 0).slow, 0);
    trip(&b, 0);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED); /* consecutive off, ratio 5/55 */
    fail(&b, 0, 50);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1000, false, true, true);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN); /* slow does not count with the rule off */
}

T_TEST(open_goes_half_open_lazily)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    lv_breaker_init(&b, &p, 0);
    trip(&b, 100);
    T_CHECK_INT(stats(&b, 1099).state, LV_BREAKER_OPEN);
    T_CHECK_INT(stats(&b, 1099).open_left_ms, 1);
    /* the stats show the effective state; the breaker moves on the next admission */
    T_CHECK_INT(stats(&b, 1100).state, LV_BREAKER_HALF_OPEN);
    T_CHECK_INT(stats(&b, 1100).open_left_ms, 0);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
    T_CHECK_INT(stats(&b, 1100).to_half_open, 0);
    uint64_t ra;
    T_CHECK_INT(admit(&b, 5000, &ra), LV_BREAKER_PROBE);
    T_CHECK(ra == 0xdead);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN);
    T_CHECK_INT(stats(&b, 5000).to_half_open, 1);
    T_CHECK_INT(admit(&b, 5000, &ra), LV_BREAKER_PROBE);
    /* every slot taken: a short wait */
    T_CHECK_INT(admit(&b, 5000, &ra), LV_BREAKER_REJECT);
    T_CHECK_INT(ra, LV_BREAKER_BUSY_RETRY_MS);
    T_CHECK_INT(admit(&b, 99999, &ra), LV_BREAKER_REJECT);
    struct lv_breaker_stats s = stats(&b, 5000);
    T_CHECK_INT(s.probes_in_flight, 2);
    T_CHECK_INT(s.probes_ok, 0);
}

T_TEST(probes_all_succeed_closes)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    uint64_t ra;
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1010, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN);
    T_CHECK_INT(stats(&b, 1010).probes_ok, 1);
    T_CHECK_INT(stats(&b, 1010).probes_in_flight, 1);
    T_CHECK_INT(admit(&b, 1010, &ra), LV_BREAKER_REJECT); /* the slot is not handed out again */
    lv_breaker_record(&b, 1020, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    struct lv_breaker_stats s = stats(&b, 1020);
    T_CHECK_INT(s.requests, 0); /* fresh window */
    T_CHECK_INT(s.failures, 0);
    T_CHECK_INT(s.consecutive, 0);
    T_CHECK_INT(s.to_open, 1);
    T_CHECK_INT(s.to_half_open, 1);
    T_CHECK_INT(s.to_closed, 1);
    T_CHECK_INT(admit(&b, 1020, &ra), LV_BREAKER_ALLOW);
    /* the old failures are gone: it takes a whole new run to open again */
    fail(&b, 1030, 4);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    fail(&b, 1030, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
}

T_TEST(failed_probe_reopens_longer)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    static const uint64_t want[] = {2000, 4000, 8000, 8000, 8000};
    uint64_t now = 0, ra;
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        now += b.open_for_ms;
        T_CHECK_INT(admit(&b, now, &ra), LV_BREAKER_PROBE);
        T_CHECK_INT(admit(&b, now, &ra), LV_BREAKER_PROBE);
        lv_breaker_record(&b, now + 5, false, false, true); /* one good ... */
        lv_breaker_record(&b, now + 5, true, false, true);  /* ... one bad: open again */
        now += 5;
        T_CHECK_INT(b.state, LV_BREAKER_OPEN);
        T_CHECK_INT(b.open_for_ms, want[i]);
        T_CHECK_INT(admit(&b, now, &ra), LV_BREAKER_REJECT);
        T_CHECK_INT(ra, want[i]);
        T_CHECK_INT(admit(&b, now + want[i] - 1, &ra), LV_BREAKER_REJECT);
        T_CHECK_INT(stats(&b, now).open_for_ms, want[i]);
    }
    T_CHECK_INT(stats(&b, now).to_open, 6);
    T_CHECK_INT(stats(&b, now).to_half_open, 5);
    /* recovery resets the length */
    now += b.open_for_ms;
    T_CHECK_INT(admit(&b, now, &ra), LV_BREAKER_PROBE);
    T_CHECK_INT(admit(&b, now, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, now, false, false, true);
    lv_breaker_record(&b, now, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(b.open_for_ms, 1000);
    trip(&b, now);
    T_CHECK_INT(admit(&b, now, &ra), LV_BREAKER_REJECT);
    T_CHECK_INT(ra, 1000);

    /* max_open_for below open_for (or equal): no growth */
    p.max_open_for_ms = 10;
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1000, true, false, true);
    T_CHECK_INT(b.open_for_ms, 1000);
    /* doubling near the top of the range saturates at the cap */
    p.open_for_ms = UINT64_MAX / 2 + 1;
    p.max_open_for_ms = UINT64_MAX;
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    T_CHECK(admit(&b, UINT64_MAX / 2 + 1, &ra) == LV_BREAKER_PROBE);
    lv_breaker_record(&b, 5, true, false, true);
    T_CHECK(b.open_for_ms == UINT64_MAX);
    T_CHECK(b.open_until == UINT64_MAX);
    T_CHECK_INT(admit(&b, UINT64_MAX - 1, &ra), LV_BREAKER_REJECT);
}

T_TEST(late_and_foreign_results_are_ignored)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    /* attempts admitted before it opened finish while open: no effect */
    succeed(&b, 10, 50);
    fail(&b, 10, 50);
    lv_breaker_record(&b, 10, false, false, true);
    lv_breaker_record(&b, 10, true, false, true);
    struct lv_breaker_stats s = stats(&b, 10);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
    T_CHECK_INT(s.open_left_ms, 990);
    T_CHECK_INT(s.to_open, 1);
    T_CHECK_INT(s.requests, 5); /* the window is frozen while open */
    /* half-open: non-probe results are late too */
    uint64_t ra;
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    fail(&b, 1000, 20);
    succeed(&b, 1000, 20);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN);
    T_CHECK_INT(stats(&b, 1000).probes_ok, 0);
    /* more probe results than probes handed out: only the first counts */
    lv_breaker_record(&b, 1000, false, false, true);
    lv_breaker_record(&b, 1000, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN);
    T_CHECK_INT(stats(&b, 1000).probes_ok, 1);
    lv_breaker_record(&b, 1000, true, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN); /* a stray failure does not reopen either */
    /* a probe result after it closed counts as an ordinary sample */
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1000, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    lv_breaker_record(&b, 1001, true, false, true);
    T_CHECK_INT(stats(&b, 1001).requests, 1);
    T_CHECK_INT(stats(&b, 1001).consecutive, 1);
}

T_TEST(release_probe)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    p.half_open_requests = 1;
    lv_breaker_init(&b, &p, 0);
    lv_breaker_release_probe(&b); /* closed: nothing to release */
    T_CHECK_INT(b.probes_admitted, 0);
    trip(&b, 0);
    lv_breaker_release_probe(&b); /* open: nothing either */
    uint64_t ra;
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_REJECT);
    lv_breaker_release_probe(&b); /* the client went away */
    T_CHECK_INT(stats(&b, 1000).probes_in_flight, 0);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_release_probe(&b);
    lv_breaker_release_probe(&b); /* twice: no underflow */
    T_CHECK_INT(b.probes_admitted, 0);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1000, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);

    /* releasing cannot take back a slot whose probe already reported */
    p.half_open_requests = 2;
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    lv_breaker_record(&b, 1000, false, false, true);
    lv_breaker_release_probe(&b);
    T_CHECK_INT(b.probes_admitted, 1);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_PROBE);
    T_CHECK_INT(admit(&b, 1000, &ra), LV_BREAKER_REJECT);
}

T_TEST(configure_applies_at_once)
{
    struct lv_breaker b;
    struct lv_breaker_params p = params();
    lv_breaker_init(&b, &p, 0);
    fail(&b, 0, 3);
    /* same thresholds: nothing changes; counts kept */
    lv_breaker_configure(&b, &p, 100);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(stats(&b, 100).requests, 3);
    T_CHECK_INT(stats(&b, 100).consecutive, 3);
    /* a lower consecutive threshold the run already meets: opens now */
    p.consecutive_failures = 3;
    lv_breaker_configure(&b, &p, 100);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
    T_CHECK_INT(stats(&b, 100).open_left_ms, 1000);

    /* a shorter open_for is measured from when it opened */
    p.open_for_ms = 300;
    p.max_open_for_ms = 300;
    lv_breaker_configure(&b, &p, 200);
    uint64_t ra;
    T_CHECK_INT(admit(&b, 399, &ra), LV_BREAKER_REJECT);
    T_CHECK_INT(ra, 1);
    T_CHECK_INT(admit(&b, 400, &ra), LV_BREAKER_PROBE);

    /* a grown open period is clamped into the new [open_for, max_open_for] */
    p = params();
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    for (uint64_t now = 0, i = 0; i < 3; i++) { /* 2 s, 4 s, 8 s */
        now += b.open_for_ms;
        admit(&b, now, &ra);
        lv_breaker_record(&b, now, true, false, true);
    }
    T_CHECK_INT(b.open_for_ms, 8000);
    uint64_t opened = b.opened_at;
    p.max_open_for_ms = 3000;
    lv_breaker_configure(&b, &p, opened + 10);
    T_CHECK_INT(b.open_for_ms, 3000);
    T_CHECK_INT(stats(&b, opened + 10).open_left_ms, 2990);
    p.open_for_ms = 5000; /* max below open_for: taken as open_for */
    lv_breaker_configure(&b, &p, opened + 10);
    T_CHECK_INT(b.open_for_ms, 5000);
    T_CHECK_INT(stats(&b, opened + 10).open_left_ms, 4990);

    /* half-open, with as many successful probes as the new count wants: closes now */
    p = params();
    p.half_open_requests = 3;
    lv_breaker_init(&b, &p, 0);
    trip(&b, 0);
    admit(&b, 1000, &ra);
    admit(&b, 1000, &ra);
    lv_breaker_record(&b, 1000, false, false, true);
    T_CHECK_INT(b.state, LV_BREAKER_HALF_OPEN);
    p.half_open_requests = 0; /* taken as 1 */
    lv_breaker_configure(&b, &p, 1000);
    T_CHECK_INT(b.state, LV_BREAKER_CLOSED);
    T_CHECK_INT(b.p.half_open_requests, 1);

    /* a new window length keeps what the window holds */
    p = params();
    p.consecutive_failures = 0;
    lv_breaker_init(&b, &p, 0);
    fail(&b, 500, 9);
    p.window_ms = 2000;
    lv_breaker_configure(&b, &p, 1000);
    T_CHECK_INT(stats(&b, 1000).requests, 9);
    fail(&b, 1000, 1);
    T_CHECK_INT(b.state, LV_BREAKER_OPEN);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Random traffic under many seeds; the invariants of the state machine hold throughout. */
T_TEST(random_traffic_invariants)
{
    int bad = 0;
    uint64_t closes = 0, reopens = 0, probes = 0;
    for (uint64_t seed = 1; seed <= 300 && !bad; seed++) {
        uint64_t rng = seed;
        struct lv_breaker_params p = params();
        p.consecutive_failures = (uint32_t)(splitmix(&rng) % 6);
        p.min_requests = (uint32_t)(splitmix(&rng) % 20) + 1;
        p.half_open_requests = (uint32_t)(splitmix(&rng) % 4) + 1;
        p.open_for_ms = splitmix(&rng) % 3000 + 1;
        p.max_open_for_ms = p.open_for_ms * (splitmix(&rng) % 10 + 1);
        p.slow_call_ms = splitmix(&rng) % 2 ? 100 : 0;
        p.slow_call_ratio = 0.8;
        struct lv_breaker b;
        lv_breaker_init(&b, &p, 0);
        int fail_pct = (int)(splitmix(&rng) % 100);
        uint64_t now = 0, prev_open = 0, prev_half = 0, prev_closed = 0;
        for (int i = 0; i < 5000 && !bad; i++) {
            now += splitmix(&rng) % 50;
            enum lv_breaker_state before = b.state;
            uint64_t open_until = b.open_until;
            uint64_t ra = 0;
            enum lv_breaker_admit a = lv_breaker_admit(&b, now, &ra);
            if (a == LV_BREAKER_ALLOW && before != LV_BREAKER_CLOSED)
                bad++;
            if (before == LV_BREAKER_OPEN && now < open_until &&
                (a != LV_BREAKER_REJECT || ra != open_until - now))
                bad++;
            if (a == LV_BREAKER_REJECT && ra == 0)
                bad++;
            probes += a == LV_BREAKER_PROBE;
            if (b.state == LV_BREAKER_HALF_OPEN && b.probes_admitted > b.p.half_open_requests)
                bad++;
            if (b.open_for_ms < p.open_for_ms || b.open_for_ms > p.max_open_for_ms)
                bad++;
            if (a != LV_BREAKER_REJECT) {
                bool f = (int)(splitmix(&rng) % 100) < fail_pct;
                uint64_t dur = splitmix(&rng) % 200;
                bool probe = a == LV_BREAKER_PROBE;
                if (probe && splitmix(&rng) % 10 == 0) {
                    lv_breaker_release_probe(&b);
                } else {
                    lv_breaker_record(&b, now, f, lv_breaker_is_slow(&b, dur), probe);
                    if (!probe && b.state == LV_BREAKER_CLOSED && p.consecutive_failures &&
                        b.consecutive >= p.consecutive_failures)
                        bad++; /* the run should have opened it */
                }
            }
            struct lv_breaker_stats s = stats(&b, now);
            /* transitions go closed -> open -> half-open -> (open | closed), one at a time */
            if (s.to_half_open > s.to_open || s.to_closed > s.to_half_open ||
                s.to_open < prev_open || s.to_half_open < prev_half || s.to_closed < prev_closed)
                bad++;
            if (s.to_open + s.to_half_open + s.to_closed - prev_open - prev_half - prev_closed > 2)
                bad++;
            prev_open = s.to_open;
            prev_half = s.to_half_open;
            prev_closed = s.to_closed;
            if (s.state != b.state && !(b.state == LV_BREAKER_OPEN &&
                                        s.state == LV_BREAKER_HALF_OPEN && now >= b.open_until))
                bad++;
            if (bad)
                fprintf(stderr, "seed %llu step %d: state %d admit %d\n", (unsigned long long)seed,
                        i, b.state, a);
        }
        closes += b.to_closed;
        reopens += b.to_half_open - b.to_closed; /* half-open periods that did not close */
        /* traffic that fails most of the time must have opened it at least once */
        if (fail_pct >= 80 && b.to_open == 0 && (p.consecutive_failures || p.min_requests <= 20)) {
            fprintf(stderr, "seed %llu never opened at %d%% failures\n", (unsigned long long)seed,
                    fail_pct);
            bad++;
        }
    }
    T_CHECK_INT(bad, 0);
    /* the seeds drove every transition many times */
    if (!(probes > 1000 && closes > 100 && reopens > 100))
        fprintf(stderr, "probes %llu closes %llu reopens %llu\n", (unsigned long long)probes,
                (unsigned long long)closes, (unsigned long long)reopens);
    T_CHECK(probes > 1000 && closes > 100 && reopens > 100);
}

int main(void)
{
    T_RUN(closed_admits_everything);
    T_RUN(consecutive_rule);
    T_RUN(ratio_rule);
    T_RUN(ratio_window_rolls);
    T_RUN(slow_rule);
    T_RUN(open_goes_half_open_lazily);
    T_RUN(probes_all_succeed_closes);
    T_RUN(failed_probe_reopens_longer);
    T_RUN(late_and_foreign_results_are_ignored);
    T_RUN(release_probe);
    T_RUN(configure_applies_at_once);
    T_RUN(random_traffic_invariants);
    T_DONE();
}
