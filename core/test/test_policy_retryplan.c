/* lv_retry_plan: the delay and the retry rule in one call, as the request path asks them. */
#include "base/method.h"
#include "policy/backoff.h"
#include "policy/retryplan.h"
#include "t.h"

static struct lv_retry_plan_in base(void)
{
    return (struct lv_retry_plan_in){
        .verdict = LV_VERDICT_RETRY,
        .outcome = {LV_OUT_STATUS, 503},
        .jitter = LV_BACKOFF_NONE,
        .base_ms = 100,
        .max_ms = 1000,
        .attempts_made = 1,
        .max_attempts = 3,
        .now_ms = 1000,
        .deadline_ms = 11000,
        .try_timeout_ms = 2000,
        .method = LV_METHOD_GET,
        .replayable = true,
    };
}

T_TEST(test_backoff_go)
{
    struct lv_budget b;
    lv_budget_init(&b, 0.2, 10, 10000, 0);
    struct lv_retry_plan_in in = base();
    struct lv_retry_plan p;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_GO);
    T_CHECK_INT(p.delay_ms, 100);
    T_CHECK_INT(p.planned_ms, 100);
    in.attempts_made = 2;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_GO);
    T_CHECK_INT(p.delay_ms, 200);
    in.attempts_made = 3;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_NO_ATTEMPTS);
    T_CHECK_INT(p.delay_ms, 0);
}

T_TEST(test_retry_after_and_deadline)
{
    struct lv_budget b;
    lv_budget_init(&b, 0.2, 10, 10000, 0);
    struct lv_retry_plan_in in = base();
    in.retry_after = "3";
    in.retry_after_len = 1;
    struct lv_retry_plan p;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_GO);
    T_CHECK_INT(p.delay_ms, 3000);
    /* the server's delay is never shortened: no room for it and a try of 10 ms, no retry */
    in.deadline_ms = in.now_ms + 3005;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_NO_DEADLINE);
    /* a try_timeout under 10 ms is the useful try */
    in.try_timeout_ms = 5;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_GO);
}

T_TEST(test_budget_and_safety)
{
    struct lv_budget b;
    lv_budget_init(&b, 0, 0, 10000, 0); /* no retry ever */
    struct lv_retry_plan_in in = base();
    struct lv_retry_plan p;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_NO_BUDGET);
    lv_budget_init(&b, 0.2, 10, 10000, 0);
    in.method = LV_METHOD_POST;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_NO_UNSAFE);
    in.has_idempotency_key = true;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_GO);
    in.replayable = false;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_NO_REPLAY);
    in = base();
    in.verdict = LV_VERDICT_FAIL;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_NO_VERDICT);
    in = base();
    in.has_hook_delay = true;
    in.hook_delay_ms = 777;
    T_CHECK_INT(lv_retry_plan(&in, &b, &p), LV_RETRY_GO);
    T_CHECK_INT(p.delay_ms, 777);
}

int main(void)
{
    T_RUN(test_backoff_go);
    T_RUN(test_retry_after_and_deadline);
    T_RUN(test_budget_and_safety);
    T_DONE();
}
