/*
 * gcra: the rate limit of a route (README, "Resilience policies"): `rate` requests per `per`, with
 * `burst` more at once, by the Generic Cell Rate Algorithm (the virtual-scheduling form). Pure: a
 * key's whole state is one number, its theoretical arrival time (TAT), kept by the caller (the
 * memory store of ratelimit.h, or a remote one); the clock is an argument, in nanoseconds of a
 * monotonic clock.
 *
 * With I = per / rate (the emission interval) and tau = burst x I (the tolerance), a request at
 * `now` passes when max(TAT, now) - now <= tau, and then TAT = max(TAT, now) + I. So:
 *
 *   - a new key passes burst + 1 requests at once (`burst` more than the one the rate allows
 *     now), then one every I;
 *   - in any span of time of length L (half-open), at most burst + ceil(L / I) requests pass;
 *     for L = per that is rate + burst (the quota lv_ratelimit_headers advertises), and over T
 *     at any excess of demand, rate x T / per + burst, to one request;
 *   - a key whose TAT <= now is in exactly the state of a new key (TAT 0), whatever the
 *     parameters, so a store may drop it (lv_gcra_expired) and parameters may change between
 *     two checks of the same key (a reload) without any conversion of the state.
 *
 * Integer arithmetic, saturating: I is per_ns / rate rounded up (never faster than configured;
 * at least 1 ns), tau = burst x I capped at UINT64_MAX / 4, and the sums saturate, so any
 * now_ns (uv_hrtime's) and any parameters give an answer without overflow.
 */
#ifndef LV_GCRA_H
#define LV_GCRA_H

#include <stdbool.h>
#include <stdint.h>

struct lv_gcra {
    uint64_t interval_ns;  /* I = ceil(per_ns / rate), at least 1 */
    uint64_t tolerance_ns; /* tau = burst x I */
    uint32_t rate;         /* as configured (0 is taken as 1) */
    uint64_t per_ns;       /* as configured (0 is taken as 1) */
    uint32_t burst;
};

struct lv_gcra_result {
    bool allowed;
    uint64_t retry_after_ns; /* refused: until one request would pass (> 0); allowed: 0 */
    uint64_t reset_ns;       /* until the key is back to a new key's state (TAT <= now) */
    uint32_t remaining;      /* requests that would pass right now, after this one */
};

/** Sets the parameters. rate 0 or per_ns 0 are taken as 1. */
void lv_gcra_init(struct lv_gcra *g, uint32_t rate, uint64_t per_ns, uint32_t burst);

/**
 * Checks one request of the key whose TAT is *tat (0 = a new key) at now_ns. When allowed,
 * *tat is advanced (and is then > now_ns); when refused it is left as it was.
 */
void lv_gcra_check(const struct lv_gcra *g, uint64_t *tat, uint64_t now_ns,
                   struct lv_gcra_result *out);

/** True when the state `tat` is that of a new key at now_ns (tat <= now_ns), whatever g. */
bool lv_gcra_expired(const struct lv_gcra *g, uint64_t tat, uint64_t now_ns);

/**
 * Retry-After of a refused request: retry_after_ns in whole seconds, rounded up, at least 1
 * (a client that comes back after that many seconds passes).
 */
uint32_t lv_gcra_retry_after_s(uint64_t retry_after_ns);

/** ns in whole seconds, rounded up (0 stays 0); saturates at UINT32_MAX. */
uint32_t lv_gcra_ceil_s(uint64_t ns);

#endif
