#include "policy/budget.h"

#include <math.h>

enum { REQUESTS, RETRIES };

static double nonneg(double v)
{
    return v > 0 ? v : 0; /* also turns NaN into 0 */
}

/* Retries the window allows in total at `now` (not yet minus those made). */
static double allowance(const struct lv_budget *b, uint64_t now)
{
    double req = (double)lv_window_sum(&b->w, now, REQUESTS);
    return b->ratio * req + b->min_per_second * ((double)b->w.window_ms / 1000.0);
}

void lv_budget_init(struct lv_budget *b, double ratio, double min_per_second, uint64_t window_ms,
                    uint64_t now)
{
    (void)now;
    b->ratio = nonneg(ratio);
    b->min_per_second = nonneg(min_per_second);
    lv_window_init(&b->w, window_ms);
}

void lv_budget_configure(struct lv_budget *b, double ratio, double min_per_second,
                         uint64_t window_ms, uint64_t now)
{
    b->ratio = nonneg(ratio);
    b->min_per_second = nonneg(min_per_second);
    lv_window_resize(&b->w, window_ms, now);
}

void lv_budget_on_request(struct lv_budget *b, uint64_t now)
{
    lv_window_add(&b->w, now, REQUESTS, 1);
}

bool lv_budget_can_retry(const struct lv_budget *b, uint64_t now)
{
    /* a hair of tolerance so that e.g. 0.2 x 5 requests allows its 1 retry despite rounding */
    double used = (double)lv_window_sum(&b->w, now, RETRIES);
    return used + 1 <= allowance(b, now) + 1e-9;
}

void lv_budget_on_retry(struct lv_budget *b, uint64_t now)
{
    lv_window_add(&b->w, now, RETRIES, 1);
}

bool lv_budget_try_retry(struct lv_budget *b, uint64_t now)
{
    if (!lv_budget_can_retry(b, now))
        return false;
    lv_budget_on_retry(b, now);
    return true;
}

void lv_budget_stats(const struct lv_budget *b, uint64_t now, uint64_t *requests, uint64_t *retries,
                     uint64_t *available)
{
    uint64_t used = lv_window_sum(&b->w, now, RETRIES);
    if (requests)
        *requests = lv_window_sum(&b->w, now, REQUESTS);
    if (retries)
        *retries = used;
    if (available) {
        double total = floor(allowance(b, now) + 1e-9);
        double left = total - (double)used;
        *available = left <= 0 ? 0 : left >= 18446744073709551615.0 ? UINT64_MAX : (uint64_t)left;
    }
}
