#include "policy/gcra.h"

#define TOL_MAX  (UINT64_MAX / 4)
#define NS_PER_S 1000000000ULL

static uint64_t sat_add(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

void lv_gcra_init(struct lv_gcra *g, uint32_t rate, uint64_t per_ns, uint32_t burst)
{
    g->rate = rate ? rate : 1;
    g->per_ns = per_ns ? per_ns : 1;
    g->burst = burst;
    g->interval_ns = g->per_ns / g->rate + (g->per_ns % g->rate != 0);
    if (g->interval_ns > TOL_MAX)
        g->interval_ns = TOL_MAX;
    g->tolerance_ns = burst && g->interval_ns > TOL_MAX / burst ? TOL_MAX : burst * g->interval_ns;
}

void lv_gcra_check(const struct lv_gcra *g, uint64_t *tat, uint64_t now_ns,
                   struct lv_gcra_result *out)
{
    uint64_t t0 = *tat > now_ns ? *tat : now_ns;
    uint64_t debt = t0 - now_ns; /* how far ahead of the schedule the key is */
    if (debt > g->tolerance_ns) {
        out->allowed = false;
        out->retry_after_ns = debt - g->tolerance_ns;
        out->reset_ns = debt;
        out->remaining = 0;
        return;
    }
    uint64_t nt = sat_add(t0, g->interval_ns);
    *tat = nt;
    debt = nt - now_ns; /* in (0, tau + I] */
    out->allowed = true;
    out->retry_after_ns = 0;
    out->reset_ns = debt;
    /* k more pass now while debt + (k - 1) x I <= tau */
    uint64_t k = debt <= g->tolerance_ns ? (g->tolerance_ns - debt) / g->interval_ns + 1 : 0;
    out->remaining = k > UINT32_MAX ? UINT32_MAX : (uint32_t)k;
}

bool lv_gcra_expired(const struct lv_gcra *g, uint64_t tat, uint64_t now_ns)
{
    (void)g;
    return tat <= now_ns;
}

uint32_t lv_gcra_ceil_s(uint64_t ns)
{
    uint64_t s = ns / NS_PER_S + (ns % NS_PER_S != 0);
    return s > UINT32_MAX ? UINT32_MAX : (uint32_t)s;
}

uint32_t lv_gcra_retry_after_s(uint64_t retry_after_ns)
{
    uint32_t s = lv_gcra_ceil_s(retry_after_ns);
    return s ? s : 1;
}
