/*
 * rand: a small fast generator for spreading load and jitter (xorshift64*): balancing, check
 * schedules and backoff jitter need spread, not secrecy. Never for anything secret.
 */
#ifndef LV_RAND_H
#define LV_RAND_H

#include <stdint.h>

/** Next value of the generator whose state is *s (the state must not be 0). */
static inline uint64_t lv_rand_next(uint64_t *s)
{
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

#endif
