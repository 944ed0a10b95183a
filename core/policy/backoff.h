/*
 * backoff: the delay before a retry, as defined by the AWS "Exponential Backoff and Jitter"
 * family. The random value is an argument, so the same inputs always give the same delay and
 * tests can sweep seeds; the caller draws it from its own generator. Every computation
 * saturates instead of overflowing, whatever base, cap and retry number it is given.
 *
 * Called by lv_retry_delay (retry.h), which adds the Retry-After and hook-delay rules.
 */
#ifndef LV_BACKOFF_H
#define LV_BACKOFF_H

#include <stdint.h>

/*
 * Jitter kinds, numbered as config.h's enum lv_jitter (FULL, EQUAL, DECORRELATED, NONE), so
 * that value can be passed as is; policy does not include script headers.
 */
#define LV_BACKOFF_FULL         0
#define LV_BACKOFF_EQUAL        1
#define LV_BACKOFF_DECORRELATED 2
#define LV_BACKOFF_NONE         3

/**
 * Delay in ms before retry number `retry_number` (1 = the first retry; 0 is taken as 1).
 * With expo = min(max_ms, base_ms * 2^(retry_number - 1)):
 *   full:         uniform in [0, expo];
 *   equal:        expo/2 + uniform in [0, expo - expo/2]  (so within [expo/2, expo]);
 *   decorrelated: min(max_ms, uniform in [base_ms, 3 * max(prev_delay_ms, base_ms)]), where
 *                 `prev_delay_ms` is the delay this function returned for the previous retry
 *                 (0 before the first);
 *   none:         expo.
 * An unknown kind is taken as full. The result never exceeds max_ms.
 */
uint64_t lv_backoff_ms(int jitter, uint64_t base_ms, uint64_t max_ms, uint32_t retry_number,
                       uint64_t prev_delay_ms, uint64_t rand64);

#endif
