/*
 * retryplan: the retry decision after a classified attempt, as one call (README "When levee
 * retries"): the delay to ask about (lv_retry_delay: a hook's delay, Retry-After, backoff),
 * the facts of the one rule (lv_retry_decide), and the budget's answer
 * (lv_budget_can_retry), checked last. The request path's glue, shared so that the gateway
 * and the offline simulation (`levee test`) cannot drift apart.
 *
 * Pure apart from reading the budget: the caller holds whatever lock guards it, and on GO
 * asks the breaker to admit the retry and counts it (lv_budget_on_retry) itself.
 */
#ifndef LV_RETRYPLAN_H
#define LV_RETRYPLAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/budget.h"
#include "policy/outcome.h"
#include "policy/retry.h"

struct lv_retry_plan_in {
    enum lv_verdict verdict; /* after classification; LV_VERDICT_RETRY to get anywhere */
    struct lv_outcome outcome;
    bool has_hook_delay; /* the classify hook returned a delay */
    uint64_t hook_delay_ms;
    const char *retry_after; /* the response's Retry-After value, NULL if none */
    size_t retry_after_len;
    int64_t now_unix_s; /* wall clock, for an HTTP-date Retry-After */
    int jitter;         /* retry.backoff.jitter (LV_BACKOFF_*) */
    uint64_t base_ms, max_ms;
    uint32_t attempts_made, max_attempts; /* first included; retry.attempts */
    uint64_t prev_delay_ms;               /* the last planned delay (decorrelated jitter) */
    uint64_t rand64;
    uint64_t now_ms, deadline_ms; /* one monotonic clock */
    uint64_t try_timeout_ms;      /* the route's; a useful try needs min(it, 10 ms) */
    bool response_started;
    int method;
    bool has_idempotency_key, non_idempotent_allowed, replayable;
};

struct lv_retry_plan {
    enum lv_retry_no no; /* LV_RETRY_GO: retry after delay_ms */
    uint64_t delay_ms;   /* the wait before the retry (GO only) */
    uint64_t planned_ms; /* the delay asked about: the next prev_delay_ms on GO */
};

/** Plans the retry of an attempt classified RETRY; `budget` is read at in->now_ms. */
enum lv_retry_no lv_retry_plan(const struct lv_retry_plan_in *in, const struct lv_budget *budget,
                               struct lv_retry_plan *out);

#endif
