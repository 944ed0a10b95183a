#include "policy/retry.h"

#include "base/method.h"
#include "policy/backoff.h"
#include "policy/retry_after.h"

static bool safe_to_replay(const struct lv_retry_ask *a)
{
    return a->outcome.kind == LV_OUT_CONNECT_FAILURE || lv_method_idempotent(a->method) ||
           a->has_idempotency_key || a->non_idempotent_allowed;
}

enum lv_retry_no lv_retry_decide(const struct lv_retry_ask *a, uint64_t *delay_ms_out)
{
    if (a->verdict != LV_VERDICT_RETRY)
        return LV_RETRY_NO_VERDICT;
    if (a->attempts_made >= a->max_attempts)
        return LV_RETRY_NO_ATTEMPTS;
    if (a->response_started)
        return LV_RETRY_NO_STARTED;
    if (!safe_to_replay(a))
        return LV_RETRY_NO_UNSAFE;
    if (!a->replayable)
        return LV_RETRY_NO_REPLAY;

    /* a try of 0 ms is no try at all */
    uint64_t min_try = a->min_try_ms > 0 ? a->min_try_ms : 1;
    uint64_t left = a->deadline_ms > a->now_ms ? a->deadline_ms - a->now_ms : 0;
    if (left < min_try)
        return LV_RETRY_NO_DEADLINE;
    /* README, "Resilience policies": the deadline must leave room for the whole delay and a try. A
     * shortened backoff would retry early against a struggling upstream, and a server's delay
     * shortened would ignore what it told us. */
    uint64_t room = left - min_try, delay = a->delay_ms;
    if (delay > room)
        return LV_RETRY_NO_DEADLINE;

    if (!a->budget_allows)
        return LV_RETRY_NO_BUDGET;
    if (delay_ms_out)
        *delay_ms_out = delay;
    return LV_RETRY_GO;
}

enum lv_retry_stop lv_retry_stop_of(enum lv_retry_no no)
{
    switch (no) {
    case LV_RETRY_GO:
        return LV_STOP_NONE;
    case LV_RETRY_NO_VERDICT:
        return LV_STOP_VERDICT;
    case LV_RETRY_NO_ATTEMPTS:
        return LV_STOP_ATTEMPTS;
    case LV_RETRY_NO_STARTED:
        return LV_STOP_RESPONSE_STARTED;
    case LV_RETRY_NO_UNSAFE:
        return LV_STOP_NOT_REPLAYABLE;
    case LV_RETRY_NO_REPLAY:
        return LV_STOP_BODY_TOO_LARGE;
    case LV_RETRY_NO_DEADLINE:
        return LV_STOP_DEADLINE;
    case LV_RETRY_NO_BUDGET:
        return LV_STOP_BUDGET;
    }
    return LV_STOP_VERDICT;
}

const char *lv_retry_stop_name(enum lv_retry_stop s)
{
    static const char *const names[LV_STOP_KINDS] = {
        "retry",    "success",        "verdict",        "attempts",         "budget",
        "deadline", "not-replayable", "body-too-large", "response-started", "breaker-open",
    };
    return (unsigned)s < LV_STOP_KINDS ? names[s] : "verdict";
}

const char *lv_retry_no_name(enum lv_retry_no no)
{
    switch (no) {
    case LV_RETRY_GO:
        return "go";
    case LV_RETRY_NO_VERDICT:
        return "verdict";
    case LV_RETRY_NO_ATTEMPTS:
        return "attempts";
    case LV_RETRY_NO_STARTED:
        return "response-started";
    case LV_RETRY_NO_UNSAFE:
        return "unsafe";
    case LV_RETRY_NO_REPLAY:
        return "replay";
    case LV_RETRY_NO_DEADLINE:
        return "deadline";
    case LV_RETRY_NO_BUDGET:
        return "budget-exhausted";
    }
    return "?";
}

bool lv_retry_after_applies(struct lv_outcome o)
{
    return o.kind == LV_OUT_STATUS && (o.status == 429 || o.status == 503);
}

uint64_t lv_retry_delay(const struct lv_retry_delay_ask *a, bool *from_server)
{
    uint64_t d;
    bool server = true;
    if (a->has_hook_delay)
        d = a->hook_delay_ms;
    else if (!(lv_retry_after_applies(a->outcome) && a->retry_after &&
               lv_retry_after_parse(a->retry_after, a->retry_after_len, a->now_unix_s, &d) == 0)) {
        d = lv_backoff_ms(a->jitter, a->base_ms, a->max_ms, a->retry_number, a->prev_delay_ms,
                          a->rand64);
        server = false;
    }
    if (from_server)
        *from_server = server;
    return d;
}
