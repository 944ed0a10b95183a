/*
 * budget: a route's retry budget (README, "Resilience policies", the Linkerd/Finagle model). Over a
 * rolling window, retries may not exceed ratio x requests + min_per_second x window seconds.
 * Requests are the client requests the route received (counted once each, however many attempts
 * they took); retries are counted when they are decided, not when they are sent, so retries waiting
 * in backoff already count against the budget (envoy#30205).
 *
 * Embedded in the route state (which survives reloads by route name); no allocation. `now` is
 * an argument: milliseconds of a monotonic clock. Called by the request path.
 */
#ifndef LV_BUDGET_H
#define LV_BUDGET_H

#include <stdbool.h>
#include <stdint.h>

#include "policy/window.h"

struct lv_budget {
    double ratio;          /* retries allowed per request */
    double min_per_second; /* retries always allowed, per second of window */
    struct lv_window w;    /* counter 0: requests, 1: retries */
};

/** Sets the thresholds and empties the window. Negative values are taken as 0. */
void lv_budget_init(struct lv_budget *b, double ratio, double min_per_second, uint64_t window_ms,
                    uint64_t now);

/**
 * New thresholds (a reload), applied at once. Counts are kept when the window length is the
 * same; otherwise what the old window still holds is carried over (lv_window_resize), so a
 * reload neither forgets recent retries nor grants a fresh burst.
 */
void lv_budget_configure(struct lv_budget *b, double ratio, double min_per_second,
                         uint64_t window_ms, uint64_t now);

/** Counts one client request. Call once per request, before its first attempt. */
void lv_budget_on_request(struct lv_budget *b, uint64_t now);

/** True when one more retry fits: retries + 1 <= ratio x requests + min_per_second x window_s. */
bool lv_budget_can_retry(const struct lv_budget *b, uint64_t now);

/** Counts one retry, unconditionally (after lv_retry_decide answered GO). */
void lv_budget_on_retry(struct lv_budget *b, uint64_t now);

/** lv_budget_can_retry, and if yes lv_budget_on_retry: returns whether the retry was counted. */
bool lv_budget_try_retry(struct lv_budget *b, uint64_t now);

/**
 * Window counts at `now`, for /status and metrics; any pointer may be NULL. *available is how
 * many more retries would be allowed now (0 when spent).
 */
void lv_budget_stats(const struct lv_budget *b, uint64_t now, uint64_t *requests, uint64_t *retries,
                     uint64_t *available);

#endif
