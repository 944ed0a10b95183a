#include "policy/health.h"
#include "t.h"

#include <math.h>
#include <stdint.h>

/* outlier { consecutive_failures 5, eject_for 10s, max_eject_for 5m, max_ejected 0.5 },
 * health { healthy 2, unhealthy 3 }, no slow start */
static struct lv_health_params params(void)
{
    return (struct lv_health_params){
        .outlier = true,
        .consecutive_failures = 5,
        .eject_for_ms = 10000,
        .max_eject_for_ms = 300000,
        .max_ejected = 0.5,
        .enforce = true,
        .healthy = 2,
        .unhealthy = 3,
        .slow_start_ms = 0,
    };
}

/* the events of the last call; the clock is whatever `now` the test passes */
static struct lv_health_event ev[16];
static int nev;

/* n failures of kind o on server i; the events of the last one stay in ev */
static int fail(struct lv_health_group *g, size_t i, uint64_t now, int n, enum lv_health_outcome o)
{
    int total = 0;
    for (int k = 0; k < n; k++) {
        nev = lv_health_record(g, i, now, o, ev);
        total += nev;
    }
    return total;
}

static int succeed(struct lv_health_group *g, size_t i, uint64_t now)
{
    return nev = lv_health_record(g, i, now, LV_HEALTH_SUCCESS, ev);
}

/* n active checks of server i; the events of the last one stay in ev */
static int check(struct lv_health_group *g, size_t i, uint64_t now, int n, bool ok, const char *why)
{
    int total = 0;
    for (int k = 0; k < n; k++) {
        nev = lv_health_check_result(g, i, now, ok, why, ev);
        total += nev;
    }
    return total;
}

static int tick(struct lv_health_group *g, uint64_t now)
{
    return nev = lv_health_tick(g, now, ev, 16);
}

static enum lv_server_state state(const struct lv_health_group *g, size_t i)
{
    return g->servers[i].state;
}

static bool near(double a, double b)
{
    return fabs(a - b) < 1e-9;
}

/* the reason of the first ejection of a fresh one-of-two group with eject_for `ms` */
static void eject_text(uint64_t ms, const char *want)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.eject_for_ms = ms;
    p.max_eject_for_ms = ms;
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(nev, 1);
    char full[LV_HEALTH_REASON_MAX];
    snprintf(full, sizeof full, "ejected for %s after 5 consecutive 5xx", want);
    T_CHECK_STR(ev[0].reason, full);
    lv_health_free(&g);
}

T_TEST(names)
{
    T_CHECK_STR(lv_server_state_name(LV_SERVER_UP), "up");
    T_CHECK_STR(lv_server_state_name(LV_SERVER_DOWN), "down");
    T_CHECK_STR(lv_server_state_name(LV_SERVER_EJECTED), "ejected");
    T_CHECK_STR(lv_server_state_name(LV_SERVER_STARTING), "starting");
    T_CHECK_STR(lv_server_state_name((enum lv_server_state)9), "?");
    T_CHECK_STR(lv_health_outcome_name(LV_HEALTH_SUCCESS), "success");
    T_CHECK_STR(lv_health_outcome_name(LV_HEALTH_CONNECT_FAILURE), "connect-failure");
    T_CHECK_STR(lv_health_outcome_name(LV_HEALTH_RESET), "reset");
    T_CHECK_STR(lv_health_outcome_name(LV_HEALTH_TIMEOUT), "timeout");
    T_CHECK_STR(lv_health_outcome_name(LV_HEALTH_PROTOCOL_ERROR), "protocol-error");
    T_CHECK_STR(lv_health_outcome_name(LV_HEALTH_5XX), "5xx");
    T_CHECK_STR(lv_health_outcome_name((enum lv_health_outcome)42), "?");
    /* metric values */
    T_CHECK_INT(LV_SERVER_UP, 0);
    T_CHECK_INT(LV_SERVER_DOWN, 1);
    T_CHECK_INT(LV_SERVER_EJECTED, 2);
    T_CHECK_INT(LV_SERVER_STARTING, 3);
}

T_TEST(starts_up)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    T_CHECK_INT(g.n, 3);
    T_CHECK_INT(lv_health_count_in(&g), 3);
    T_CHECK(!g.panic);
    T_CHECK_INT(g.panics, 0);
    for (size_t i = 0; i < 3; i++) {
        T_CHECK_INT(state(&g, i), LV_SERVER_UP);
        T_CHECK(lv_health_in(&g, i));
        T_CHECK(near(lv_health_weight(&g, i, 12345), 1));
        T_CHECK_INT(lv_health_eject_left(&g, i, 0), 0);
        T_CHECK_STR(g.servers[i].reason, "");
    }
    T_CHECK_INT(tick(&g, 999999), 0);
    /* indices past the end are harmless */
    T_CHECK(!lv_health_in(&g, 3));
    T_CHECK(near(lv_health_weight(&g, 3, 0), 0));
    T_CHECK_INT(lv_health_record(&g, 3, 0, LV_HEALTH_5XX, ev), 0);
    T_CHECK_INT(lv_health_check_result(&g, 7, 0, false, "503", ev), 0);
    lv_health_free(&g);
    T_CHECK(g.servers == NULL);
    T_CHECK_INT(g.n, 0);
}

T_TEST(ejects_after_exactly_n_failures)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 2, false);
    T_CHECK_INT(fail(&g, 0, 1000, 4, LV_HEALTH_CONNECT_FAILURE), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK_INT(g.servers[0].consecutive_failures, 4);
    T_CHECK_INT(fail(&g, 0, 1000, 1, LV_HEALTH_CONNECT_FAILURE), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_EJECTED);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_STR(ev[0].reason, "ejected for 10s after 5 consecutive connect-failure");
    const struct lv_server_health *s = &g.servers[0];
    T_CHECK_INT(s->state, LV_SERVER_EJECTED);
    T_CHECK_STR(s->reason, "ejected for 10s after 5 consecutive connect-failure");
    T_CHECK(s->ejected);
    T_CHECK_INT(s->ejected_until, 11000);
    T_CHECK_INT(s->ejections, 1);
    T_CHECK_INT(s->ejections_enforced, 1);
    T_CHECK_INT(s->ejections_dry, 0);
    T_CHECK_INT(s->consecutive_failures, 0); /* reset when ejected */
    T_CHECK_INT(s->last_failure, LV_HEALTH_CONNECT_FAILURE);
    T_CHECK(!lv_health_in(&g, 0));
    T_CHECK(near(lv_health_weight(&g, 0, 1000), 0));
    T_CHECK_INT(lv_health_eject_left(&g, 0, 1000), 10000);
    T_CHECK_INT(lv_health_eject_left(&g, 0, 10999), 1);
    T_CHECK_INT(lv_health_eject_left(&g, 0, 11000), 0);
    T_CHECK_INT(lv_health_count_in(&g), 1);
    T_CHECK(!g.panic);
    /* the other server is untouched */
    T_CHECK_INT(state(&g, 1), LV_SERVER_UP);
    lv_health_free(&g);

    /* every failure kind counts, and the text names the one that tripped */
    lv_health_init(&g, &p, 2, false);
    fail(&g, 1, 0, 1, LV_HEALTH_RESET);
    fail(&g, 1, 0, 1, LV_HEALTH_TIMEOUT);
    fail(&g, 1, 0, 1, LV_HEALTH_PROTOCOL_ERROR);
    fail(&g, 1, 0, 1, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 1), LV_SERVER_UP);
    fail(&g, 1, 0, 1, LV_HEALTH_TIMEOUT);
    T_CHECK_INT(state(&g, 1), LV_SERVER_EJECTED);
    T_CHECK_STR(ev[0].reason, "ejected for 10s after 5 consecutive timeout");
    T_CHECK_INT(ev[0].server, 1);
    lv_health_free(&g);

    /* a threshold of 0 is taken as 1 */
    p.consecutive_failures = 0;
    lv_health_init(&g, &p, 2, false);
    T_CHECK_INT(fail(&g, 0, 0, 1, LV_HEALTH_5XX), 1);
    T_CHECK_STR(ev[0].reason, "ejected for 10s after 1 consecutive 5xx");
    lv_health_free(&g);
}

T_TEST(success_resets_the_count)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 4, LV_HEALTH_5XX);
    T_CHECK_INT(succeed(&g, 0, 0), 0);
    T_CHECK_INT(g.servers[0].consecutive_failures, 0);
    T_CHECK_INT(fail(&g, 0, 0, 4, LV_HEALTH_5XX), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK_INT(fail(&g, 0, 0, 1, LV_HEALTH_5XX), 1);
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    lv_health_free(&g);
}

T_TEST(outlier_off_never_ejects)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.outlier = false;
    lv_health_init(&g, &p, 2, false);
    T_CHECK_INT(fail(&g, 0, 0, 100, LV_HEALTH_RESET), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK_INT(g.servers[0].ejections_dry, 0);
    lv_health_free(&g);
}

T_TEST(backoff_doubles_up_to_the_cap)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.max_eject_for_ms = 35000;
    lv_health_init(&g, &p, 2, false);
    const uint64_t want[] = {10000, 20000, 35000, 35000, 35000};
    const char *text[] = {
        "ejected for 10s after 5 consecutive 5xx",
        "ejected for 20s after 5 consecutive 5xx (ejection 2)",
        "ejected for 35s after 5 consecutive 5xx (ejection 3)",
        "ejected for 35s after 5 consecutive 5xx (ejection 4)",
        "ejected for 35s after 5 consecutive 5xx (ejection 5)",
    };
    uint64_t now = 0;
    for (int k = 0; k < 5; k++) {
        fail(&g, 0, now, 5, LV_HEALTH_5XX);
        T_CHECK_INT(nev, 1);
        T_CHECK_STR(ev[0].reason, text[k]);
        T_CHECK_INT(g.servers[0].ejected_until, now + want[k]);
        T_CHECK_INT(g.servers[0].ejections, k + 1);
        /* one ms early: still out; then back */
        T_CHECK_INT(tick(&g, now + want[k] - 1), 0);
        T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
        now += want[k];
        T_CHECK_INT(tick(&g, now), 1);
        T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_UP);
        T_CHECK_STR(ev[0].reason, "back in");
        T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
        T_CHECK(!g.servers[0].ejected);
        now += 1000;
    }
    T_CHECK_INT(g.servers[0].ejections_enforced, 5);
    lv_health_free(&g);

    /* max_eject_for below eject_for: no growth */
    p.eject_for_ms = 10000;
    p.max_eject_for_ms = 1000;
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    tick(&g, 10000);
    fail(&g, 0, 20000, 5, LV_HEALTH_5XX);
    T_CHECK_INT(g.servers[0].ejected_until, 30000);
    lv_health_free(&g);

    /* a huge number of ejections neither overflows nor passes the cap */
    p = params();
    lv_health_init(&g, &p, 2, false);
    g.servers[0].ejections = 200;
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(g.servers[0].ejected_until, 300000);
    T_CHECK_STR(ev[0].reason, "ejected for 5m after 5 consecutive 5xx (ejection 201)");
    lv_health_free(&g);
}

T_TEST(duration_texts)
{
    eject_text(250, "250ms");
    eject_text(1, "1ms");
    eject_text(1000, "1s");
    eject_text(1500, "1.5s");
    eject_text(1250, "1.25s");
    eject_text(1001, "1.001s");
    eject_text(60000, "1m");
    eject_text(90000, "1m30s");
    eject_text(3600000, "1h");
    eject_text(3661001, "1h1m1.001s");
    eject_text(7200500, "2h0.5s");
}

T_TEST(failures_while_out_do_not_extend)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(g.servers[0].ejected_until, 10000);
    /* attempts that began before the ejection, reported late */
    T_CHECK_INT(fail(&g, 0, 5000, 20, LV_HEALTH_RESET), 0);
    T_CHECK_INT(g.servers[0].ejected_until, 10000);
    T_CHECK_INT(g.servers[0].ejections, 1);
    T_CHECK_INT(g.servers[0].consecutive_failures, 0);
    T_CHECK_INT(g.servers[0].last_failure, LV_HEALTH_5XX);
    T_CHECK_INT(tick(&g, 10000), 1);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    /* and nothing carried over: it gets a whole new run before the next ejection */
    T_CHECK_INT(fail(&g, 0, 10000, 4, LV_HEALTH_5XX), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    lv_health_free(&g);
}

T_TEST(comes_back_through_slow_start)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.slow_start_ms = 30000;
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 1000, 5, LV_HEALTH_5XX);
    T_CHECK_INT(tick(&g, 10999), 0);
    T_CHECK_INT(tick(&g, 11000), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_STARTING);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_STR(ev[0].reason, "starting (slow start 30s)");
    T_CHECK_INT(state(&g, 0), LV_SERVER_STARTING);
    T_CHECK_STR(g.servers[0].reason, "starting (slow start 30s)");
    T_CHECK_INT(g.servers[0].starting_since, 11000);
    T_CHECK(lv_health_in(&g, 0));
    T_CHECK_INT(lv_health_count_in(&g), 2);
    /* 0.1 at once, linear, 1 at the end */
    T_CHECK(near(lv_health_weight(&g, 0, 11000), 0.1));
    T_CHECK(near(lv_health_weight(&g, 0, 11000 + 3000), 0.19));
    T_CHECK(near(lv_health_weight(&g, 0, 11000 + 10000), 0.4));
    T_CHECK(near(lv_health_weight(&g, 0, 11000 + 15000), 0.55));
    T_CHECK(near(lv_health_weight(&g, 0, 11000 + 27000), 0.91));
    T_CHECK(lv_health_weight(&g, 0, 40999) < 1);
    T_CHECK(lv_health_weight(&g, 0, 40999) > 0.9999);
    T_CHECK(near(lv_health_weight(&g, 0, 41000), 1));
    /* a clock read before the start never goes below the floor */
    T_CHECK(near(lv_health_weight(&g, 0, 5), 0.1));
    T_CHECK(near(lv_health_weight(&g, 1, 11000), 1));
    /* it takes part in the outlier rule while starting */
    T_CHECK_INT(g.servers[0].consecutive_failures, 0);
    T_CHECK_INT(tick(&g, 40999), 0);
    T_CHECK_INT(tick(&g, 41000), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_UP);
    T_CHECK_STR(ev[0].reason, "slow start done");
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK(near(lv_health_weight(&g, 0, 41000), 1));
    T_CHECK_INT(tick(&g, 99999), 0);

    /* a starting server that fails again is ejected again, its ramp abandoned */
    fail(&g, 0, 50000, 5, LV_HEALTH_5XX);
    tick(&g, 70000);
    T_CHECK_INT(state(&g, 0), LV_SERVER_STARTING);
    T_CHECK_INT(fail(&g, 0, 71000, 5, LV_HEALTH_RESET), 1);
    T_CHECK_STR(ev[0].reason, "ejected for 40s after 5 consecutive reset (ejection 3)");
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    T_CHECK(near(lv_health_weight(&g, 0, 72000), 0));
    T_CHECK_INT(tick(&g, 111000), 1);
    T_CHECK_INT(g.servers[0].starting_since, 111000);
    lv_health_free(&g);
}

T_TEST(max_ejected_of_three)
{
    /* floor(0.5 × 3) = 1 */
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    T_CHECK_INT(fail(&g, 1, 0, 4, LV_HEALTH_5XX), 0);
    T_CHECK_INT(fail(&g, 1, 0, 1, LV_HEALTH_5XX), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_INT(ev[0].server, 1);
    T_CHECK_STR(ev[0].reason, "not ejected: max_ejected reached (1 of 3 ejected)");
    T_CHECK_INT(state(&g, 1), LV_SERVER_UP);
    T_CHECK_INT(g.servers[1].ejections, 0);
    T_CHECK_INT(g.servers[1].ejections_enforced, 0);
    /* the count was reset: no event on every later failure, only after a whole new run */
    T_CHECK_INT(g.servers[1].consecutive_failures, 0);
    T_CHECK_INT(fail(&g, 1, 0, 4, LV_HEALTH_5XX), 0);
    T_CHECK_INT(fail(&g, 1, 0, 1, LV_HEALTH_5XX), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_INT(lv_health_count_in(&g), 2);
    /* once the first is back, the second may go */
    tick(&g, 10000);
    T_CHECK_INT(fail(&g, 1, 10000, 5, LV_HEALTH_5XX), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_EJECTED);
    T_CHECK_INT(state(&g, 1), LV_SERVER_EJECTED);
    lv_health_free(&g);
}

T_TEST(max_ejected_of_four)
{
    /* floor(0.5 × 4) = 2 */
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 4, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    fail(&g, 1, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    T_CHECK_INT(state(&g, 1), LV_SERVER_EJECTED);
    fail(&g, 2, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_STR(ev[0].reason, "not ejected: max_ejected reached (2 of 4 ejected)");
    fail(&g, 3, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_INT(lv_health_count_in(&g), 2);
    lv_health_free(&g);

    /* 0.75 × 4 = 3, and the fourth stays in */
    p.max_ejected = 0.75;
    lv_health_init(&g, &p, 4, false);
    for (size_t i = 0; i < 3; i++) {
        fail(&g, i, 0, 5, LV_HEALTH_5XX);
        T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_EJECTED);
    }
    fail(&g, 3, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_INT(lv_health_count_in(&g), 1);
    lv_health_free(&g);

    /* 0.29 × 100 is 28.999999999999996 in doubles: 29 may go */
    p.max_ejected = 0.29;
    lv_health_init(&g, &p, 100, false);
    for (size_t i = 0; i < 30; i++)
        fail(&g, i, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(lv_health_count_in(&g), 71);
    lv_health_free(&g);
}

T_TEST(one_always_stays_in)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    /* one server: never ejected, whatever max_ejected says */
    p.max_ejected = 1.0;
    lv_health_init(&g, &p, 1, false);
    T_CHECK_INT(fail(&g, 0, 0, 5, LV_HEALTH_CONNECT_FAILURE), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_STR(ev[0].reason, "not ejected: no other server is in (0 of 1 out)");
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK(!g.panic);
    lv_health_free(&g);
    p.max_ejected = 0.5;
    lv_health_init(&g, &p, 1, false);
    fail(&g, 0, 0, 50, LV_HEALTH_CONNECT_FAILURE);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK_INT(g.servers[0].ejections, 0);
    lv_health_free(&g);

    /* two servers and 0.5: one may go, the other stays */
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    fail(&g, 1, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_STR(ev[0].reason, "not ejected: max_ejected reached (1 of 2 ejected)");
    T_CHECK_INT(state(&g, 1), LV_SERVER_UP);
    lv_health_free(&g);

    /* two servers and 1.0: still one stays */
    p.max_ejected = 1.0;
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    fail(&g, 1, 0, 5, LV_HEALTH_5XX);
    T_CHECK_STR(ev[0].reason, "not ejected: no other server is in (1 of 2 out)");
    T_CHECK_INT(lv_health_count_in(&g), 1);
    lv_health_free(&g);

    /* a DOWN server counts as out: with 0 DOWN and 1 ejected, 2 may not go */
    lv_health_init(&g, &p, 3, false);
    check(&g, 0, 0, 3, false, "503");
    fail(&g, 1, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 1), LV_SERVER_EJECTED);
    fail(&g, 2, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_STR(ev[0].reason, "not ejected: no other server is in (2 of 3 out)");
    T_CHECK_INT(lv_health_count_in(&g), 1);
    lv_health_free(&g);

    /* a share below one server still lets one go (floor(0.1 × 4) = 0) */
    p.max_ejected = 0.1;
    lv_health_init(&g, &p, 4, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    fail(&g, 1, 0, 5, LV_HEALTH_5XX);
    T_CHECK_STR(ev[0].reason, "not ejected: max_ejected reached (1 of 4 ejected)");
    lv_health_free(&g);

    /* max_ejected = 0: nothing is ever ejected */
    p.max_ejected = 0;
    lv_health_init(&g, &p, 4, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED);
    T_CHECK_STR(ev[0].reason, "not ejected: max_ejected is 0");
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    lv_health_free(&g);
}

T_TEST(enforce_false_only_reports)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.enforce = false;
    lv_health_init(&g, &p, 2, false);
    T_CHECK_INT(fail(&g, 0, 0, 4, LV_HEALTH_RESET), 0);
    T_CHECK_INT(fail(&g, 0, 0, 1, LV_HEALTH_RESET), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_WOULD_EJECT);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_STR(ev[0].reason, "would be ejected after 5 consecutive reset (enforce = false)");
    const struct lv_server_health *s = &g.servers[0];
    T_CHECK_INT(s->state, LV_SERVER_UP);
    T_CHECK_STR(s->reason, "");
    T_CHECK(!s->ejected);
    T_CHECK_INT(s->ejections, 0);
    T_CHECK_INT(s->ejections_enforced, 0);
    T_CHECK_INT(s->ejections_dry, 1);
    T_CHECK_INT(s->consecutive_failures, 0);
    T_CHECK(lv_health_in(&g, 0));
    T_CHECK(near(lv_health_weight(&g, 0, 0), 1));
    T_CHECK_INT(lv_health_eject_left(&g, 0, 0), 0);
    /* once per run of failures */
    T_CHECK_INT(fail(&g, 0, 0, 4, LV_HEALTH_RESET), 0);
    T_CHECK_INT(fail(&g, 0, 0, 1, LV_HEALTH_RESET), 1);
    T_CHECK_INT(s->ejections_dry, 2);
    /* max_ejected is not consulted: the other server would be ejected as well */
    T_CHECK_INT(fail(&g, 1, 0, 5, LV_HEALTH_5XX), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_WOULD_EJECT);
    T_CHECK_INT(lv_health_count_in(&g), 2);
    T_CHECK_INT(tick(&g, 1000000), 0);
    lv_health_free(&g);
}

T_TEST(active_checks_thresholds)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    T_CHECK_INT(check(&g, 0, 0, 2, false, "503"), 0);
    T_CHECK_INT(check(&g, 0, 0, 1, true, NULL), 0); /* a pass breaks the run */
    T_CHECK_INT(g.servers[0].check_fail_streak, 0);
    T_CHECK_INT(check(&g, 0, 0, 2, false, "timeout"), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK_INT(check(&g, 0, 0, 1, false, "503"), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_DOWN);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_STR(ev[0].reason, "down after 3 failed checks: 503");
    T_CHECK_INT(state(&g, 0), LV_SERVER_DOWN);
    T_CHECK_STR(g.servers[0].reason, "down after 3 failed checks: 503");
    T_CHECK(g.servers[0].check_down);
    T_CHECK(!lv_health_in(&g, 0));
    T_CHECK(near(lv_health_weight(&g, 0, 0), 0));
    T_CHECK_INT(lv_health_eject_left(&g, 0, 0), 0);
    /* more failures: no more events */
    T_CHECK_INT(check(&g, 0, 0, 5, false, "503"), 0);
    /* back after 2 passes in a row, not 1; a failure in between starts over */
    T_CHECK_INT(check(&g, 0, 0, 1, true, "200"), 0);
    T_CHECK_INT(check(&g, 0, 0, 1, false, "503"), 0);
    T_CHECK_INT(check(&g, 0, 0, 1, true, "200"), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_DOWN);
    T_CHECK_INT(check(&g, 0, 0, 1, true, "200"), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_UP);
    T_CHECK_STR(ev[0].reason, "back in after 2 passed checks");
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    T_CHECK(!g.servers[0].check_down);
    T_CHECK_INT(g.servers[0].checks_ok, 4);
    T_CHECK_INT(g.servers[0].checks_failed, 11);
    /* passes on an UP server change nothing */
    T_CHECK_INT(check(&g, 0, 0, 10, true, "200"), 0);

    /* no `why`: the text ends after the count */
    T_CHECK_INT(check(&g, 1, 0, 3, false, NULL), 1);
    T_CHECK_STR(ev[0].reason, "down after 3 failed checks");
    T_CHECK_INT(check(&g, 2, 0, 3, false, ""), 1);
    T_CHECK_STR(ev[0].reason, "down after 3 failed checks");
    /* DOWN is not limited by max_ejected: two of three down with 0.5 */
    T_CHECK_INT(lv_health_count_in(&g), 1);
    lv_health_free(&g);

    /* coming back with slow start */
    p.slow_start_ms = 90000;
    p.unhealthy = 1;
    p.healthy = 1;
    lv_health_init(&g, &p, 2, false);
    check(&g, 1, 500, 1, false, "connection refused");
    T_CHECK_STR(ev[0].reason, "down after 1 failed check: connection refused");
    T_CHECK_INT(check(&g, 1, 1000, 1, true, "200"), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_STARTING);
    T_CHECK_STR(ev[0].reason, "starting after 1 passed check (slow start 1m30s)");
    T_CHECK_INT(state(&g, 1), LV_SERVER_STARTING);
    T_CHECK_INT(g.servers[1].starting_since, 1000);
    T_CHECK(near(lv_health_weight(&g, 1, 1000 + 45000), 0.55));
    /* a starting server that fails its checks goes DOWN */
    T_CHECK_INT(check(&g, 1, 2000, 1, false, "503"), 1);
    T_CHECK_INT(state(&g, 1), LV_SERVER_DOWN);
    T_CHECK_INT(tick(&g, 1000000), 0); /* DOWN does not end with time */
    lv_health_free(&g);
}

T_TEST(live_failures_of_a_down_server_are_ignored)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    check(&g, 0, 0, 3, false, "503");
    T_CHECK_INT(fail(&g, 0, 0, 20, LV_HEALTH_5XX), 0); /* panic traffic, or late reports */
    T_CHECK(!g.servers[0].ejected);
    T_CHECK_INT(g.servers[0].consecutive_failures, 0);
    lv_health_free(&g);
}

T_TEST(down_and_ejected)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    /* the checks fail too: DOWN wins */
    T_CHECK_INT(check(&g, 0, 1000, 3, false, "503"), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_DOWN);
    T_CHECK_INT(state(&g, 0), LV_SERVER_DOWN);
    T_CHECK(g.servers[0].ejected);
    T_CHECK_INT(lv_health_eject_left(&g, 0, 1000), 9000);
    /* the ejection runs out: still DOWN, quietly */
    T_CHECK_INT(tick(&g, 10000), 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_DOWN);
    T_CHECK(!g.servers[0].ejected);
    T_CHECK_STR(g.servers[0].reason, "down after 3 failed checks: 503");
    T_CHECK_INT(lv_health_eject_left(&g, 0, 10000), 0);
    /* then the checks pass */
    T_CHECK_INT(check(&g, 0, 12000, 2, true, "200"), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_UP);
    T_CHECK_STR(ev[0].reason, "back in after 2 passed checks");
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    lv_health_free(&g);

    /* the checks pass while the ejection still runs: EJECTED until it ends */
    lv_health_init(&g, &p, 3, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    check(&g, 0, 1000, 3, false, "503");
    T_CHECK_INT(check(&g, 0, 4000, 2, true, "200"), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_EJECTED);
    T_CHECK_STR(ev[0].reason, "passed 2 checks, still ejected for 6s");
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    T_CHECK(!g.servers[0].check_down);
    T_CHECK_INT(g.servers[0].ejections_enforced, 1); /* not a new ejection */
    T_CHECK_INT(tick(&g, 9999), 0);
    T_CHECK_INT(tick(&g, 10000), 1);
    T_CHECK_STR(ev[0].reason, "back in");
    T_CHECK_INT(state(&g, 0), LV_SERVER_UP);
    lv_health_free(&g);

    /* ... or passes after it ran out but before the tick saw it */
    lv_health_init(&g, &p, 3, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    check(&g, 0, 1000, 3, false, "503");
    T_CHECK_INT(check(&g, 0, 10000, 2, true, "200"), 1);
    T_CHECK_STR(ev[0].reason, "back in after 2 passed checks");
    T_CHECK(!g.servers[0].ejected);
    T_CHECK_INT(tick(&g, 20000), 0);
    lv_health_free(&g);
}

T_TEST(panic_enter_and_leave)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    check(&g, 0, 0, 3, false, "503");
    check(&g, 1, 0, 3, false, "503");
    T_CHECK(!g.panic);
    T_CHECK_INT(check(&g, 2, 0, 3, false, "timeout"), 2);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_DOWN);
    T_CHECK_INT(ev[0].server, 2);
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC);
    T_CHECK_INT(ev[1].server, -1);
    T_CHECK_STR(ev[1].reason, "no server in: sending to all 3 (panic mode)");
    T_CHECK(g.panic);
    T_CHECK_INT(g.panics, 1);
    T_CHECK_INT(lv_health_count_in(&g), 0);
    /* still panicking: no second event */
    T_CHECK_INT(check(&g, 2, 0, 3, false, "timeout"), 0);
    T_CHECK_INT(g.panics, 1);
    T_CHECK_INT(check(&g, 1, 0, 2, true, "200"), 2);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_UP);
    T_CHECK_INT(ev[0].server, 1);
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC_OVER);
    T_CHECK_INT(ev[1].server, -1);
    T_CHECK_STR(ev[1].reason, "panic mode over: 1 of 3 in");
    T_CHECK(!g.panic);
    T_CHECK_INT(g.panics, 1);
    /* again: counted again */
    T_CHECK_INT(check(&g, 1, 0, 3, false, "503"), 2);
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC);
    T_CHECK_INT(g.panics, 2);
    lv_health_free(&g);

    /* ejected + DOWN empty the group; the end of the ejection ends the panic */
    p.slow_start_ms = 1000;
    lv_health_init(&g, &p, 2, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    T_CHECK_INT(check(&g, 1, 0, 3, false, "503"), 2);
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC);
    T_CHECK_STR(ev[1].reason, "no server in: sending to all 2 (panic mode)");
    T_CHECK_INT(tick(&g, 10000), 2);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_STARTING);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC_OVER);
    T_CHECK_STR(ev[1].reason, "panic mode over: 1 of 2 in");
    T_CHECK(!g.panic);
    T_CHECK_INT(g.panics, 1);
    lv_health_free(&g);
}

T_TEST(tick_never_drops_events)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.max_ejected = 1.0;
    lv_health_init(&g, &p, 4, false);
    for (size_t i = 0; i < 3; i++)
        fail(&g, i, 0, 5, LV_HEALTH_5XX);
    check(&g, 3, 0, 3, false, "503");
    T_CHECK(g.panic);
    /* room for two: one server and the end of the panic */
    T_CHECK_INT(nev = lv_health_tick(&g, 10000, ev, 2), 2);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_STR(ev[0].reason, "back in");
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC_OVER);
    T_CHECK_INT(state(&g, 1), LV_SERVER_EJECTED); /* waits for the next tick */
    T_CHECK_INT(nev = lv_health_tick(&g, 10000, ev, 2), 2);
    T_CHECK_INT(ev[0].server, 1);
    T_CHECK_INT(ev[1].server, 2);
    T_CHECK_INT(lv_health_tick(&g, 10000, ev, 2), 0);
    T_CHECK_INT(lv_health_count_in(&g), 3);
    lv_health_free(&g);
}

T_TEST(configure_keeps_state)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    p.slow_start_ms = 30000;
    lv_health_init(&g, &p, 3, false);
    fail(&g, 0, 0, 5, LV_HEALTH_5XX);
    fail(&g, 1, 0, 2, LV_HEALTH_5XX);
    check(&g, 2, 0, 2, false, "503");

    struct lv_health_params q = params();
    q.eject_for_ms = 1000;
    q.consecutive_failures = 4;
    q.unhealthy = 2;
    q.slow_start_ms = 60000;
    lv_health_configure(&g, &q);
    T_CHECK_INT(g.p.eject_for_ms, 1000);
    /* the running ejection keeps its end */
    T_CHECK_INT(state(&g, 0), LV_SERVER_EJECTED);
    T_CHECK_INT(g.servers[0].ejected_until, 10000);
    T_CHECK_INT(tick(&g, 9999), 0);
    /* the counts are kept and judged against the new thresholds */
    T_CHECK_INT(g.servers[1].consecutive_failures, 2);
    T_CHECK_INT(fail(&g, 1, 100, 1, LV_HEALTH_5XX), 0);
    T_CHECK_INT(fail(&g, 1, 100, 1, LV_HEALTH_5XX), 1);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_NOT_EJECTED); /* 1 of 3 already */
    T_CHECK_INT(g.servers[2].check_fail_streak, 2);
    T_CHECK_INT(check(&g, 2, 100, 1, false, "503"), 1);
    T_CHECK_STR(ev[0].reason, "down after 3 failed checks: 503");
    T_CHECK_INT(tick(&g, 10000), 1);
    T_CHECK_STR(ev[0].reason, "starting (slow start 1m)");
    T_CHECK_INT(g.servers[0].starting_since, 10000);

    /* a slow start keeps its start; its length is the new one */
    p.slow_start_ms = 20000;
    lv_health_configure(&g, &p);
    T_CHECK_INT(g.servers[0].starting_since, 10000);
    T_CHECK(near(lv_health_weight(&g, 0, 20000), 0.55));
    T_CHECK_INT(tick(&g, 30000), 1);
    T_CHECK_STR(ev[0].reason, "slow start done");
    /* the next ejection uses the new eject_for, and the backoff remembers */
    fail(&g, 0, 40000, 5, LV_HEALTH_5XX);
    T_CHECK_STR(ev[0].reason, "ejected for 20s after 5 consecutive 5xx (ejection 2)");

    /* slow start turned off while starting: full weight at once, UP at the next tick */
    tick(&g, 60000);
    T_CHECK_INT(state(&g, 0), LV_SERVER_STARTING);
    p.slow_start_ms = 0;
    lv_health_configure(&g, &p);
    T_CHECK(near(lv_health_weight(&g, 0, 60000), 1));
    T_CHECK_INT(tick(&g, 60000), 1);
    T_CHECK_STR(ev[0].reason, "slow start done");
    lv_health_free(&g);
}

T_TEST(carry_between_groups)
{
    struct lv_health_group old, g;
    struct lv_health_params p = params();
    p.slow_start_ms = 30000;
    lv_health_init(&old, &p, 2, false);
    fail(&old, 1, 0, 5, LV_HEALTH_RESET);
    fail(&old, 0, 0, 2, LV_HEALTH_5XX);
    check(&old, 0, 0, 7, true, "200");

    /* the reload adds a server while checks are on: new servers wait for their checks */
    lv_health_init(&g, &p, 3, true);
    T_CHECK(g.panic);
    T_CHECK_INT(g.panics, 0);
    lv_health_carry(&g, 0, &old, 1);
    lv_health_carry(&g, 2, &old, 0);
    T_CHECK(!g.panic);
    const struct lv_server_health *s = &g.servers[0];
    T_CHECK_INT(s->state, LV_SERVER_EJECTED);
    T_CHECK(s->ejected);
    T_CHECK_INT(s->ejected_until, 10000);
    T_CHECK_INT(s->ejections, 1);
    T_CHECK_INT(s->ejections_enforced, 1);
    T_CHECK_STR(s->reason, "ejected for 10s after 5 consecutive reset");
    T_CHECK_INT(g.servers[2].state, LV_SERVER_UP);
    T_CHECK_INT(g.servers[2].consecutive_failures, 2);
    T_CHECK_INT(g.servers[2].checks_ok, 7);
    T_CHECK_INT(g.servers[1].state, LV_SERVER_DOWN);
    T_CHECK_STR(g.servers[1].reason, "waiting for 2 passed checks");
    T_CHECK_INT(lv_health_count_in(&g), 1);
    /* the carried ejection ends on time, through the new group's slow start */
    T_CHECK_INT(tick(&g, 10000), 1);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_INT(state(&g, 0), LV_SERVER_STARTING);
    /* out of range: nothing */
    lv_health_carry(&g, 3, &old, 0);
    lv_health_carry(&g, 0, &old, 2);
    T_CHECK_INT(state(&g, 0), LV_SERVER_STARTING);
    lv_health_free(&g);

    /* carrying only out servers into a fresh group sets the panic flag, quietly */
    lv_health_init(&g, &p, 1, false);
    lv_health_carry(&g, 0, &old, 1);
    T_CHECK(g.panic);
    T_CHECK_INT(g.panics, 0);
    lv_health_free(&g);
    lv_health_free(&old);
}

T_TEST(start_down)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 2, true);
    for (size_t i = 0; i < 2; i++) {
        T_CHECK_INT(state(&g, i), LV_SERVER_DOWN);
        T_CHECK(g.servers[i].check_down);
        T_CHECK_STR(g.servers[i].reason, "waiting for 2 passed checks");
    }
    T_CHECK(g.panic);
    T_CHECK_INT(g.panics, 0);
    T_CHECK_INT(tick(&g, 100000), 0);
    T_CHECK_INT(check(&g, 1, 0, 1, true, "200"), 0);
    T_CHECK_INT(check(&g, 1, 0, 1, true, "200"), 2);
    T_CHECK_STR(ev[0].reason, "back in after 2 passed checks");
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_PANIC_OVER);
    T_CHECK_STR(ev[1].reason, "panic mode over: 1 of 2 in");
    lv_health_free(&g);
}

T_TEST(checks_turned_off)
{
    struct lv_health_group g;
    struct lv_health_params p = params();
    lv_health_init(&g, &p, 3, false);
    check(&g, 0, 0, 3, false, "503");
    fail(&g, 1, 0, 5, LV_HEALTH_5XX);
    check(&g, 1, 0, 3, false, "503");
    check(&g, 2, 0, 3, false, "503");
    T_CHECK(g.panic);
    T_CHECK_INT(nev = lv_health_checks_off(&g, 5000, ev, 16), 4);
    T_CHECK_INT(ev[0].server, 0);
    T_CHECK_INT(ev[0].kind, LV_HEALTH_EV_UP);
    T_CHECK_STR(ev[0].reason, "back in: active checks off");
    T_CHECK_INT(ev[1].server, 1);
    T_CHECK_INT(ev[1].kind, LV_HEALTH_EV_EJECTED);
    T_CHECK_STR(ev[1].reason, "active checks off, still ejected for 5s");
    T_CHECK_INT(ev[2].server, 2);
    T_CHECK_INT(ev[2].kind, LV_HEALTH_EV_UP);
    T_CHECK_INT(ev[3].kind, LV_HEALTH_EV_PANIC_OVER);
    T_CHECK_STR(ev[3].reason, "panic mode over: 2 of 3 in");
    T_CHECK(!g.panic);
    T_CHECK_INT(g.servers[2].check_fail_streak, 0);
    T_CHECK(!g.servers[2].check_down);
    T_CHECK_INT(lv_health_checks_off(&g, 5000, ev, 16), 0);
    T_CHECK_INT(tick(&g, 10000), 1);
    T_CHECK_INT(lv_health_count_in(&g), 3);
    lv_health_free(&g);
}

int main(void)
{
    T_RUN(names);
    T_RUN(starts_up);
    T_RUN(ejects_after_exactly_n_failures);
    T_RUN(success_resets_the_count);
    T_RUN(outlier_off_never_ejects);
    T_RUN(backoff_doubles_up_to_the_cap);
    T_RUN(duration_texts);
    T_RUN(failures_while_out_do_not_extend);
    T_RUN(comes_back_through_slow_start);
    T_RUN(max_ejected_of_three);
    T_RUN(max_ejected_of_four);
    T_RUN(one_always_stays_in);
    T_RUN(enforce_false_only_reports);
    T_RUN(active_checks_thresholds);
    T_RUN(live_failures_of_a_down_server_are_ignored);
    T_RUN(down_and_ejected);
    T_RUN(panic_enter_and_leave);
    T_RUN(tick_never_drops_events);
    T_RUN(configure_keeps_state);
    T_RUN(carry_between_groups);
    T_RUN(start_down);
    T_RUN(checks_turned_off);
    T_DONE();
}
