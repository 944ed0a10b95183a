#include "policy/retryplan.h"

enum lv_retry_no lv_retry_plan(const struct lv_retry_plan_in *in, const struct lv_budget *budget,
                               struct lv_retry_plan *out)
{
    struct lv_retry_delay_ask da = {
        .outcome = in->outcome,
        .has_hook_delay = in->has_hook_delay,
        .hook_delay_ms = in->hook_delay_ms,
        .retry_after = in->retry_after,
        .retry_after_len = in->retry_after_len,
        .now_unix_s = in->now_unix_s,
        .jitter = in->jitter,
        .base_ms = in->base_ms,
        .max_ms = in->max_ms,
        .retry_number = in->attempts_made,
        .prev_delay_ms = in->prev_delay_ms,
        .rand64 = in->rand64,
    };
    bool from_server = false;
    uint64_t delay = lv_retry_delay(&da, &from_server);
    out->planned_ms = delay;
    uint64_t try_ms = in->try_timeout_ms;
    struct lv_retry_ask ask = {
        .verdict = in->verdict,
        .outcome = in->outcome,
        .attempts_made = in->attempts_made,
        .max_attempts = in->max_attempts,
        .now_ms = in->now_ms,
        .deadline_ms = in->deadline_ms,
        .delay_ms = delay,
        .delay_from_server = from_server,
        .min_try_ms = try_ms && try_ms < 10 ? try_ms : 10,
        .response_started = in->response_started,
        .method = in->method,
        .has_idempotency_key = in->has_idempotency_key,
        .non_idempotent_allowed = in->non_idempotent_allowed,
        .replayable = in->replayable,
        .budget_allows = lv_budget_can_retry(budget, in->now_ms),
    };
    out->no = lv_retry_decide(&ask, &delay);
    out->delay_ms = out->no == LV_RETRY_GO ? delay : 0;
    return out->no;
}
