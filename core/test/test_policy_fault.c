#include "policy/fault.h"
#include "policy/faultrules.h"
#include "t.h"

#include <string.h>

static bool parse(const char *s, struct lv_faults *f, char *why)
{
    return lv_fault_header_parse(s, strlen(s), f, why, 200);
}

T_TEST(header_kinds)
{
    struct lv_faults f;
    char why[200] = "";
    T_CHECK(parse("abort=503", &f, why));
    T_CHECK(f.k[LV_FAULT_ABORT].on && f.k[LV_FAULT_ABORT].value == 503);
    T_CHECK(f.k[LV_FAULT_ABORT].percent == 100);
    T_CHECK(!f.k[LV_FAULT_DELAY].on && !f.k[LV_FAULT_RESET].on && !f.k[LV_FAULT_THROTTLE].on);

    T_CHECK(parse(" delay=200ms , reset:5% ,throttle=10KiB:50%,abort=429:0.5%", &f, why));
    T_CHECK_INT(f.k[LV_FAULT_DELAY].value, 200);
    T_CHECK(f.k[LV_FAULT_DELAY].percent == 100);
    T_CHECK(f.k[LV_FAULT_RESET].on && f.k[LV_FAULT_RESET].percent == 5);
    T_CHECK_INT(f.k[LV_FAULT_THROTTLE].value, 10240);
    T_CHECK(f.k[LV_FAULT_THROTTLE].percent == 50);
    T_CHECK_INT(f.k[LV_FAULT_ABORT].value, 429);
    T_CHECK(f.k[LV_FAULT_ABORT].percent == 0.5);
    T_CHECK(lv_faults_any(&f));

    T_CHECK(parse("DELAY=1.5s", &f, why));
    T_CHECK_INT(f.k[LV_FAULT_DELAY].value, 1500);
    T_CHECK(parse("delay=1m,throttle=2MB", &f, why));
    T_CHECK_INT(f.k[LV_FAULT_DELAY].value, 60000);
    T_CHECK_INT(f.k[LV_FAULT_THROTTLE].value, 2000000);
    T_CHECK(parse("throttle=512", &f, why));
    T_CHECK_INT(f.k[LV_FAULT_THROTTLE].value, 512);
}

T_TEST(header_errors)
{
    struct lv_faults f;
    char why[200];
    static const struct {
        const char *in, *why;
    } bad[] = {
        {"", "expected abort=STATUS, delay=DURATION, reset or throttle=SIZE, each with an "
             "optional :P%, got \"\""},
        {"abort", "expected abort=STATUS with STATUS 200-599, got \"abort\""},
        {"abort=99", "expected abort=STATUS with STATUS 200-599, got \"abort=99\""},
        {"abort=600", "expected abort=STATUS with STATUS 200-599, got \"abort=600\""},
        {"abort=503.5", "expected abort=STATUS with STATUS 200-599, got \"abort=503.5\""},
        {"delay=fast", "expected delay=DURATION like 200ms, 1.5s or 1m (at most 1h), got "
                       "\"delay=fast\""},
        {"delay=0ms", "expected delay=DURATION like 200ms, 1.5s or 1m (at most 1h), got "
                      "\"delay=0ms\""},
        {"delay=2h", "expected delay=DURATION like 200ms, 1.5s or 1m (at most 1h), got "
                     "\"delay=2h\""},
        {"reset=1", "expected reset with no value, got \"reset=1\""},
        {"throttle=0", "expected throttle=SIZE like 10KiB or 512 (bytes a second, at least 1), "
                       "got \"throttle=0\""},
        {"reset:101%", "expected a percent from 0% to 100% after ':', got \"reset:101%\""},
        {"reset:5", "expected a percent from 0% to 100% after ':', got \"reset:5\""},
        {"reset,reset", "each kind may be given once, got \"reset\""},
        {"reset,", "empty item in the list, got \"reset,\""},
        {"boom", "expected abort=STATUS, delay=DURATION, reset or throttle=SIZE, each with an "
                 "optional :P%, got \"boom\""},
        {"re\x1b[2Jset", "expected abort=STATUS, delay=DURATION, reset or throttle=SIZE, each "
                         "with an optional :P%, got \"re?[2Jset\""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        why[0] = 0;
        T_CHECK(!parse(bad[i].in, &f, why));
        T_CHECK_STR(why, bad[i].why);
    }
    /* Long garbage is cut in the reason. */
    char longv[300];
    memset(longv, 'x', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = 0;
    T_CHECK(!parse(longv, &f, why));
    T_CHECK(strlen(why) < 200);
    T_CHECK(strstr(why, "xxx...\"") != NULL);
}

static uint64_t seq_rnd(void *arg)
{
    uint64_t *s = arg;
    return (*s)++;
}

T_TEST(draw)
{
    struct lv_faults f;
    memset(&f, 0, sizeof(f));
    f.k[LV_FAULT_ABORT] = (struct lv_fault_one){true, 100, 503};
    f.k[LV_FAULT_RESET] = (struct lv_fault_one){true, 0, 0};
    f.k[LV_FAULT_DELAY] = (struct lv_fault_one){true, 25, 300};
    struct lv_fault_hit hit = {0};
    uint64_t s = 0;
    lv_faults_draw(&f, ~0u, seq_rnd, &s, &hit);
    /* abort always, reset never; the delay drew 0 (< 25%): hit */
    T_CHECK_INT(hit.kinds, (1u << LV_FAULT_ABORT) | (1u << LV_FAULT_DELAY));
    T_CHECK_INT(hit.abort_status, 503);
    T_CHECK_INT(hit.delay_ms, 300);
    T_CHECK_INT(s, 1); /* one draw: only the delay's percent needed one */

    /* 25% over the whole range of draws hits a quarter of them. */
    int hits = 0;
    for (uint64_t d = 0; d < 100000000u; d += 10000) {
        struct lv_fault_hit h = {0};
        uint64_t x = d;
        lv_faults_draw(&f, 1u << LV_FAULT_DELAY, seq_rnd, &x, &h);
        hits += h.kinds != 0;
    }
    T_CHECK_INT(hits, 2500);

    /* `only` and a kind already hit are left alone. */
    struct lv_fault_hit h2 = {0};
    lv_fault_hit_add(&h2, LV_FAULT_ABORT, 429);
    lv_faults_draw(&f, (1u << LV_FAULT_ABORT) | (1u << LV_FAULT_RESET), seq_rnd, &s, &h2);
    T_CHECK_INT(h2.kinds, 1u << LV_FAULT_ABORT);
    T_CHECK_INT(h2.abort_status, 429);
    T_CHECK_STR(lv_fault_kind_name(LV_FAULT_THROTTLE), "throttle");
}

static void count_each(const struct lv_fault_rule *r, void *arg)
{
    int *n = arg;
    (*n)++;
    (void)r;
}

T_TEST(rules)
{
    struct lv_fault_rules t;
    lv_fault_rules_init(&t);
    T_CHECK(lv_fault_rules_empty(&t));
    struct lv_fault_rule r = {.route = "api", .percent = 100, .times = 2, .method = -1};
    r.f.k[LV_FAULT_ABORT] = (struct lv_fault_one){true, 100, 503};
    uint64_t a = lv_fault_rules_add(&t, &r);
    /* a second rule: POST under /v1 only, at the client, no limit */
    struct lv_fault_rule r2 = {.route = "api",
                               .percent = 100,
                               .times = -1,
                               .method = 3,
                               .prefix = "/v1",
                               .at_client = true};
    r2.f.k[LV_FAULT_RESET] = (struct lv_fault_one){true, 100, 0};
    uint64_t b = lv_fault_rules_add(&t, &r2);
    T_CHECK(a != b && !lv_fault_rules_empty(&t));
    uint64_t s = 0;
    struct lv_fault_hit h = {0};
    /* another route, the client placement for a GET: nothing */
    T_CHECK_INT(lv_fault_rules_draw(&t, "other", 1, "/", 1, false, seq_rnd, &s, &h), 0);
    T_CHECK_INT(lv_fault_rules_draw(&t, "api", 1, "/v1/x", 5, true, seq_rnd, &s, &h), 0);
    T_CHECK_INT(h.kinds, 0);
    /* exactly twice, then gone */
    T_CHECK_INT(lv_fault_rules_draw(&t, "api", 1, "/", 1, false, seq_rnd, &s, &h), 1);
    T_CHECK_INT(h.kinds, 1u << LV_FAULT_ABORT);
    T_CHECK_INT(h.abort_status, 503);
    struct lv_fault_hit h2 = {0};
    T_CHECK_INT(lv_fault_rules_draw(&t, "api", 1, "/", 1, false, seq_rnd, &s, &h2), 1);
    struct lv_fault_hit h3 = {0};
    T_CHECK_INT(lv_fault_rules_draw(&t, "api", 1, "/", 1, false, seq_rnd, &s, &h3), 0);
    int n = 0;
    lv_fault_rules_each(&t, count_each, &n);
    T_CHECK_INT(n, 1);
    /* the POST rule: by method and prefix */
    T_CHECK_INT(lv_fault_rules_draw(&t, "api", 3, "/v2", 3, true, seq_rnd, &s, &h3), 0);
    T_CHECK_INT(lv_fault_rules_draw(&t, "api", 3, "/v1/pay", 7, true, seq_rnd, &s, &h3), 1);
    T_CHECK_INT(h3.kinds, 1u << LV_FAULT_RESET);
    T_CHECK(!lv_fault_rules_remove(&t, a));
    T_CHECK(lv_fault_rules_remove(&t, b));
    T_CHECK(lv_fault_rules_empty(&t));
    /* percent: 10% of a sweep of draws */
    struct lv_fault_rule r3 = {.route = "api", .percent = 10, .times = -1, .method = -1};
    r3.f.k[LV_FAULT_DELAY] = (struct lv_fault_one){true, 100, 50};
    lv_fault_rules_add(&t, &r3);
    lv_fault_rules_add(&t, &r3);
    int fired = 0;
    for (uint64_t d = 0; d < 100000000u; d += 100000) {
        struct lv_fault_hit hx = {0};
        uint64_t x = d;
        fired += (int)lv_fault_rules_draw(&t, "api", 1, "/", 1, false, seq_rnd, &x, &hx);
    }
    T_CHECK_INT(fired, 2 * 100); /* each rule draws on its own: 10% of 1000, twice */
    T_CHECK_INT(lv_fault_rules_clear(&t), 2);
    T_CHECK(lv_fault_rules_empty(&t));
    lv_fault_rules_dispose(&t);
}

int main(void)
{
    T_RUN(rules);
    T_RUN(header_kinds);
    T_RUN(header_errors);
    T_RUN(draw);
    T_DONE();
}
