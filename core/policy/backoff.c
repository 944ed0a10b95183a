#include "policy/backoff.h"

/* Uniform in [lo, hi] from 64 random bits. The modulo bias is below 2^-20 for any span a
 * delay in milliseconds can have (< 2^44), which is far below anything a test can see. */
static uint64_t uniform(uint64_t rand64, uint64_t lo, uint64_t hi)
{
    if (hi <= lo)
        return lo;
    uint64_t span = hi - lo;
    if (span == UINT64_MAX)
        return rand64;
    return lo + rand64 % (span + 1);
}

/* min(cap, base * 2^(n - 1)) without overflow. */
static uint64_t expo(uint64_t base, uint64_t cap, uint32_t n)
{
    uint32_t shift = n > 0 ? n - 1 : 0;
    if (base == 0)
        return 0;
    if (shift >= 64 || base > (cap >> shift))
        return cap;
    return base << shift;
}

uint64_t lv_backoff_ms(int jitter, uint64_t base_ms, uint64_t max_ms, uint32_t retry_number,
                       uint64_t prev_delay_ms, uint64_t rand64)
{
    uint64_t e = expo(base_ms, max_ms, retry_number);
    switch (jitter) {
    case LV_BACKOFF_EQUAL:
        return e / 2 + uniform(rand64, 0, e - e / 2);
    case LV_BACKOFF_DECORRELATED: {
        uint64_t prev = prev_delay_ms > base_ms ? prev_delay_ms : base_ms;
        uint64_t hi = prev > UINT64_MAX / 3 ? UINT64_MAX : prev * 3;
        uint64_t d = uniform(rand64, base_ms, hi);
        return d < max_ms ? d : max_ms;
    }
    case LV_BACKOFF_NONE:
        return e;
    case LV_BACKOFF_FULL:
    default:
        return uniform(rand64, 0, e);
    }
}
