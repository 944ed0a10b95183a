#include "base/method.h"
#include "policy/backoff.h"
#include "policy/retry.h"
#include "t.h"

#include <stdint.h>

#define GET       1
#define POST      3
#define PATCH     28
#define UNTOUCHED 0xabcdefull

/* a retry every rule allows: a 503 on a GET, plenty of time */
static struct lv_retry_ask base_ask(void)
{
    return (struct lv_retry_ask){
        .verdict = LV_VERDICT_RETRY,
        .outcome = {LV_OUT_STATUS, 503},
        .attempts_made = 1,
        .max_attempts = 3,
        .now_ms = 1000,
        .deadline_ms = 6000,
        .delay_ms = 40,
        .min_try_ms = 100,
        .method = GET,
        .replayable = true,
        .budget_allows = true,
    };
}

static enum lv_retry_no decide(const struct lv_retry_ask *a, uint64_t *delay)
{
    *delay = UNTOUCHED;
    enum lv_retry_no no = lv_retry_decide(a, delay);
    if (no != LV_RETRY_GO)
        T_CHECK(*delay == UNTOUCHED); /* only GO writes the delay */
    return no;
}

T_TEST(names)
{
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_GO), "go");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_VERDICT), "verdict");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_ATTEMPTS), "attempts");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_STARTED), "response-started");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_UNSAFE), "unsafe");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_REPLAY), "replay");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_DEADLINE), "deadline");
    T_CHECK_STR(lv_retry_no_name(LV_RETRY_NO_BUDGET), "budget-exhausted");
    T_CHECK_STR(lv_retry_no_name((enum lv_retry_no)42), "?");
}

/* short names for the table */
#define RETRY       LV_VERDICT_RETRY
#define OK          LV_VERDICT_OK
#define FAIL        LV_VERDICT_FAIL
#define VNONE       LV_VERDICT_NONE
#define STATUS      LV_OUT_STATUS
#define CONNECT     LV_OUT_CONNECT_FAILURE
#define RESET       LV_OUT_RESET
#define TIMEOUT     LV_OUT_TIMEOUT
#define PROTO       LV_OUT_PROTOCOL_ERROR
#define GO          LV_RETRY_GO
#define NO_VERDICT  LV_RETRY_NO_VERDICT
#define NO_ATTEMPTS LV_RETRY_NO_ATTEMPTS
#define NO_STARTED  LV_RETRY_NO_STARTED
#define NO_UNSAFE   LV_RETRY_NO_UNSAFE
#define NO_REPLAY   LV_RETRY_NO_REPLAY
#define NO_DEADLINE LV_RETRY_NO_DEADLINE
#define NO_BUDGET   LV_RETRY_NO_BUDGET
#define M64         UINT64_MAX
#define PUT         4
#define DELETE      0

/* Hand-written rows: each changes the base ask in one or two ways. */
T_TEST(table)
{
    static const struct {
        const char *what;
        int verdict, kind, status, made, max, method, key, nonidem, started, replay, budget;
        uint64_t now, deadline, delay, min_try;
        bool server;
        int want;
        uint64_t want_delay;
    } rows[] = {
        // clang-format off
        /* what                           verdict kind     st   made max meth    key ni sent rep bud now   deadline delay min  srv want         delay */
        {"plain go",                      RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"verdict ok",                    OK,     STATUS,  200, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_VERDICT,  0},
        {"verdict fail",                  FAIL,   STATUS,  500, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_VERDICT,  0},
        {"verdict none",                  VNONE,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_VERDICT,  0},
        {"last attempt",                  RETRY,  STATUS,  503, 3,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_ATTEMPTS, 0},
        {"past the attempts",             RETRY,  STATUS,  503, 4,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_ATTEMPTS, 0},
        {"one attempt only",              RETRY,  CONNECT, 0,   1,   1,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_ATTEMPTS, 0},
        {"second of three",               RETRY,  STATUS,  503, 2,   3,  GET,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"response started",              RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 1,   1,  1,  1000, 6000,    40,   100, 0,  NO_STARTED,  0},
        {"post 503",                      RETRY,  STATUS,  503, 1,   3,  POST,   0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_UNSAFE,   0},
        {"post reset",                    RETRY,  RESET,   0,   1,   3,  POST,   0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_UNSAFE,   0},
        {"post timeout",                  RETRY,  TIMEOUT, 0,   1,   3,  POST,   0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_UNSAFE,   0},
        {"patch protocol error",          RETRY,  PROTO,   0,   1,   3,  PATCH,  0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  NO_UNSAFE,   0},
        {"post connect-failure",          RETRY,  CONNECT, 0,   1,   3,  POST,   0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"post with key",                 RETRY,  RESET,   0,   1,   3,  POST,   1,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"post non_idempotent",           RETRY,  STATUS,  502, 1,   3,  POST,   0,  1, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"put reset",                     RETRY,  RESET,   0,   1,   3,  PUT,    0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"delete timeout",                RETRY,  TIMEOUT, 0,   1,   3,  DELETE, 0,  0, 0,   1,  1,  1000, 6000,    40,   100, 0,  GO,          40},
        {"body not buffered",             RETRY,  CONNECT, 0,   1,   3,  POST,   0,  0, 0,   0,  1,  1000, 6000,    40,   100, 0,  NO_REPLAY,   0},
        {"budget spent",                  RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  0,  1000, 6000,    40,   100, 0,  NO_BUDGET,   0},
        /* deadline: 1000 ms left, 100 ms for a try, so 900 ms of room for a delay */
        {"backoff fits",                  RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1000, 2000,    900,  100, 0,  GO,          900},
        {"backoff too long",              RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1000, 2000,    901,  100, 0,  NO_DEADLINE, 0},
        {"server delay fits",             RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 2000,    900,  100, 1,  GO,          900},
        {"server delay too long",         RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 2000,    901,  100, 1,  NO_DEADLINE, 0},
        {"exactly a try left",            RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1900, 2000,    0,    100, 0,  GO,          0},
        {"a try left, no room to wait",   RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1900, 2000,    40,   100, 0,  NO_DEADLINE, 0},
        {"less than a try left",          RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1901, 2000,    0,    100, 0,  NO_DEADLINE, 0},
        {"server zero delay, a try left", RETRY,  STATUS,  429, 1,   3,  GET,    0,  0, 0,   1,  1,  1900, 2000,    0,    100, 1,  GO,          0},
        {"deadline now",                  RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  2000, 2000,    0,    0,   0,  NO_DEADLINE, 0},
        {"deadline past",                 RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  9000, 2000,    0,    0,   0,  NO_DEADLINE, 0},
        {"1 ms left, no min try",         RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1999, 2000,    0,    0,   0,  GO,          0},
        {"no min try: delay keeps 1 ms",  RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1000, 2000,    999,  0,   0,  GO,          999},
        {"huge server delay",             RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  1,  1000, 2000,    M64,  100, 1,  NO_DEADLINE, 0},
        {"huge min try",                  RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  1000, M64,     0,    M64, 0,  NO_DEADLINE, 0},
        {"no deadline to speak of",       RETRY,  RESET,   0,   1,   3,  GET,    0,  0, 0,   1,  1,  0,    M64,     M64-100, 100, 0,  GO,       M64-100},
        /* order: the first failing rule is the answer */
        {"verdict before attempts",       FAIL,   STATUS,  500, 3,   3,  POST,   0,  0, 1,   0,  0,  2000, 2000,    0,    0,   0,  NO_VERDICT,  0},
        {"attempts before started",       RETRY,  STATUS,  503, 3,   3,  POST,   0,  0, 1,   0,  0,  2000, 2000,    0,    0,   0,  NO_ATTEMPTS, 0},
        {"started before unsafe",         RETRY,  STATUS,  503, 1,   3,  POST,   0,  0, 1,   0,  0,  2000, 2000,    0,    0,   0,  NO_STARTED,  0},
        {"unsafe before replay",          RETRY,  STATUS,  503, 1,   3,  POST,   0,  0, 0,   0,  0,  2000, 2000,    0,    0,   0,  NO_UNSAFE,   0},
        {"replay before deadline",        RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   0,  0,  2000, 2000,    0,    0,   0,  NO_REPLAY,   0},
        {"deadline before budget",        RETRY,  STATUS,  503, 1,   3,  GET,    0,  0, 0,   1,  0,  2000, 2000,    0,    0,   0,  NO_DEADLINE, 0},
        // clang-format on
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        struct lv_retry_ask a = {
            .verdict = (enum lv_verdict)rows[i].verdict,
            .outcome = {(enum lv_outcome_kind)rows[i].kind, rows[i].status},
            .attempts_made = (uint32_t)rows[i].made,
            .max_attempts = (uint32_t)rows[i].max,
            .now_ms = rows[i].now,
            .deadline_ms = rows[i].deadline,
            .delay_ms = rows[i].delay,
            .delay_from_server = rows[i].server,
            .min_try_ms = rows[i].min_try,
            .response_started = rows[i].started,
            .method = rows[i].method,
            .has_idempotency_key = rows[i].key,
            .non_idempotent_allowed = rows[i].nonidem,
            .replayable = rows[i].replay,
            .budget_allows = rows[i].budget,
        };
        uint64_t d;
        enum lv_retry_no got = decide(&a, &d);
        if ((int)got != rows[i].want || (got == LV_RETRY_GO && d != rows[i].want_delay))
            fprintf(stderr, "row \"%s\": got %s delay %llu\n", rows[i].what, lv_retry_no_name(got),
                    (unsigned long long)d);
        T_CHECK_INT(got, rows[i].want);
        if (got == LV_RETRY_GO)
            T_CHECK(d == rows[i].want_delay);
    }
}

#define N_OF(x) (sizeof(x) / sizeof((x)[0]))

/* README, "Resilience policies" read as a checklist, in the documented order: the answer
 * lv_retry_decide owes. */
static enum lv_retry_no expected(const struct lv_retry_ask *a, uint64_t *delay)
{
    uint64_t left = a->now_ms < a->deadline_ms ? a->deadline_ms - a->now_ms : 0;
    bool safe = a->outcome.kind == LV_OUT_CONNECT_FAILURE || lv_method_idempotent(a->method) ||
                a->has_idempotency_key || a->non_idempotent_allowed;
    if (a->verdict != LV_VERDICT_RETRY)
        return LV_RETRY_NO_VERDICT;
    if (a->attempts_made >= a->max_attempts)
        return LV_RETRY_NO_ATTEMPTS;
    if (a->response_started)
        return LV_RETRY_NO_STARTED;
    if (!safe)
        return LV_RETRY_NO_UNSAFE;
    if (!a->replayable)
        return LV_RETRY_NO_REPLAY;
    uint64_t min_try = a->min_try_ms ? a->min_try_ms : 1;
    if (left < min_try || a->delay_ms > left - min_try)
        return LV_RETRY_NO_DEADLINE;
    if (!a->budget_allows)
        return LV_RETRY_NO_BUDGET;
    *delay = a->delay_ms;
    return LV_RETRY_GO;
}

/*
 * Every combination of verdict x attempts x budget x deadline x method x key x started x
 * replay x outcome x non_idempotent x delay size x delay source (about 500k asks).
 */
T_TEST(product)
{
    static const int verdicts[] = {LV_VERDICT_NONE, LV_VERDICT_OK, LV_VERDICT_FAIL,
                                   LV_VERDICT_RETRY};
    static const int methods[] = {0, 1, 2, 3, 4, 5, 6, 7, 9, 28}; /* DELETE..TRACE, LOCK, PATCH */
    static const struct lv_outcome outcomes[] = {
        {LV_OUT_STATUS, 503}, {LV_OUT_STATUS, 429}, {LV_OUT_CONNECT_FAILURE, 0},
        {LV_OUT_RESET, 0},    {LV_OUT_TIMEOUT, 0},  {LV_OUT_PROTOCOL_ERROR, 0},
    };
    static const uint64_t nows[] = {0, 1000, 1800, 1850, 1900, 1901, 1999, 2000, 3000};
    static const uint64_t delays[] = {0, 50, 100, 899, 900, 901};
    size_t total =
        N_OF(verdicts) * 3 * 2 * N_OF(nows) * N_OF(methods) * 32 * N_OF(outcomes) * N_OF(delays);
    long go = 0, counts[8] = {0};
    int bad = 0;
    for (size_t i = 0; i < total; i++) {
        size_t k = i;
        struct lv_retry_ask a = {.max_attempts = 3, .deadline_ms = 2000, .min_try_ms = 100};
        a.verdict = (enum lv_verdict)verdicts[k % N_OF(verdicts)], k /= N_OF(verdicts);
        a.attempts_made = (uint32_t)(k % 3) + 1, k /= 3;
        a.budget_allows = k % 2, k /= 2;
        a.now_ms = nows[k % N_OF(nows)], k /= N_OF(nows);
        a.method = methods[k % N_OF(methods)], k /= N_OF(methods);
        a.outcome = outcomes[k % N_OF(outcomes)], k /= N_OF(outcomes);
        a.delay_ms = delays[k % N_OF(delays)], k /= N_OF(delays);
        a.has_idempotency_key = k & 1;
        a.response_started = k & 2;
        a.replayable = k & 4;
        a.non_idempotent_allowed = k & 8;
        a.delay_from_server = k & 16;

        uint64_t d, want_d = 0;
        enum lv_retry_no want = expected(&a, &want_d);
        enum lv_retry_no got = decide(&a, &d);
        counts[got & 7]++;
        if (got == LV_RETRY_GO) {
            go++;
            /* the try after the delay always gets its minimum; the delay is never shortened */
            if (a.now_ms + d + a.min_try_ms > a.deadline_ms || d != a.delay_ms)
                bad++;
        }
        if (got != want || (got == LV_RETRY_GO && d != want_d)) {
            if (bad++ < 5)
                fprintf(stderr, "ask %zu: got %s, want %s\n", i, lv_retry_no_name(got),
                        lv_retry_no_name(want));
        }
    }
    T_CHECK_INT(bad, 0);
    /* the product reaches every answer, so no rule went untested */
    for (int i = 0; i < 8; i++)
        T_CHECK(counts[i] > 0);
    T_CHECK(go > 0 && (size_t)go < total);
}

T_TEST(delay_untouched_without_pointer)
{
    struct lv_retry_ask a = base_ask();
    T_CHECK_INT(lv_retry_decide(&a, NULL), LV_RETRY_GO);
}

/* ---- lv_retry_delay */

static struct lv_retry_delay_ask delay_ask(int status, const char *ra)
{
    return (struct lv_retry_delay_ask){
        .outcome = {LV_OUT_STATUS, status},
        .retry_after = ra,
        .retry_after_len = ra ? strlen(ra) : 0,
        .now_unix_s = 784111777 - 60,
        .jitter = LV_BACKOFF_NONE,
        .base_ms = 25,
        .max_ms = 1000,
        .retry_number = 2,
        .rand64 = 12345,
    };
}

T_TEST(delay_sources)
{
    bool server = false;
    struct lv_retry_delay_ask a;

    /* 503 and 429 with Retry-After: wait as told, in either form */
    a = delay_ask(503, "3");
    T_CHECK_INT(lv_retry_delay(&a, &server), 3000);
    T_CHECK(server);
    a = delay_ask(429, "Sun, 06 Nov 1994 08:49:37 GMT");
    server = false;
    T_CHECK_INT(lv_retry_delay(&a, &server), 60000);
    T_CHECK(server);
    a = delay_ask(429, "0");
    server = false;
    T_CHECK_INT(lv_retry_delay(&a, &server), 0);
    T_CHECK(server);

    /* other statuses and errors ignore the header: backoff (none: 25 * 2) */
    a = delay_ask(502, "3");
    T_CHECK_INT(lv_retry_delay(&a, &server), 50);
    T_CHECK(!server);
    a = delay_ask(500, "3");
    server = true;
    T_CHECK_INT(lv_retry_delay(&a, &server), 50);
    T_CHECK(!server);
    a = delay_ask(0, "3");
    a.outcome = (struct lv_outcome){LV_OUT_RESET, 503};
    server = true;
    T_CHECK_INT(lv_retry_delay(&a, &server), 50);
    T_CHECK(!server);

    /* a missing or invalid header: backoff */
    a = delay_ask(503, NULL);
    server = true;
    T_CHECK_INT(lv_retry_delay(&a, &server), 50);
    T_CHECK(!server);
    a = delay_ask(503, "soon");
    server = true;
    T_CHECK_INT(lv_retry_delay(&a, &server), 50);
    T_CHECK(!server);

    /* the hook's delay wins over everything, and counts as firm */
    a = delay_ask(503, "3");
    a.has_hook_delay = true;
    a.hook_delay_ms = 700;
    server = false;
    T_CHECK_INT(lv_retry_delay(&a, &server), 700);
    T_CHECK(server);
    a = delay_ask(502, NULL);
    a.has_hook_delay = true;
    a.hook_delay_ms = 0;
    T_CHECK_INT(lv_retry_delay(&a, NULL), 0);

    /* backoff is exactly lv_backoff_ms with the same inputs */
    for (int k = 0; k < 4; k++)
        for (uint64_t r = 0; r < 2000; r += 37) {
            a = delay_ask(502, NULL);
            a.jitter = k;
            a.rand64 = r * 0x9e3779b97f4a7c15ull;
            a.prev_delay_ms = r;
            a.retry_number = (uint32_t)(r % 7) + 1;
            T_CHECK(lv_retry_delay(&a, NULL) ==
                    lv_backoff_ms(k, 25, 1000, a.retry_number, r, a.rand64));
        }

    T_CHECK(lv_retry_after_applies((struct lv_outcome){LV_OUT_STATUS, 429}));
    T_CHECK(lv_retry_after_applies((struct lv_outcome){LV_OUT_STATUS, 503}));
    T_CHECK(!lv_retry_after_applies((struct lv_outcome){LV_OUT_STATUS, 502}));
    T_CHECK(!lv_retry_after_applies((struct lv_outcome){LV_OUT_STATUS, 200}));
    T_CHECK(!lv_retry_after_applies((struct lv_outcome){LV_OUT_TIMEOUT, 503}));
}

/* Each "no" of the retry rule names one retry_stop, the access log's and the metric's. */
T_TEST(stops)
{
    T_CHECK_INT(lv_retry_stop_of(LV_RETRY_GO), LV_STOP_NONE);
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_VERDICT)), "verdict");
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_ATTEMPTS)), "attempts");
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_STARTED)), "response-started");
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_UNSAFE)), "not-replayable");
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_REPLAY)), "body-too-large");
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_DEADLINE)), "deadline");
    T_CHECK_STR(lv_retry_stop_name(lv_retry_stop_of(LV_RETRY_NO_BUDGET)), "budget");
    T_CHECK_STR(lv_retry_stop_name(LV_STOP_NONE), "retry");
    T_CHECK_STR(lv_retry_stop_name(LV_STOP_SUCCESS), "success");
    T_CHECK_STR(lv_retry_stop_name(LV_STOP_BREAKER_OPEN), "breaker-open");
}

int main(void)
{
    T_RUN(names);
    T_RUN(stops);
    T_RUN(table);
    T_RUN(product);
    T_RUN(delay_untouched_without_pointer);
    T_RUN(delay_sources);
    T_DONE();
}
