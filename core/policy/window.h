/*
 * window: a rolling time window of LV_WINDOW_BUCKETS buckets, each holding a few counters,
 * shared by the retry budget and the circuit breaker. Buckets expire one at a time as time
 * moves on (a count leaves the window about `window_ms` after it was added), instead of the
 * whole window being reset at once. Embedded in its owner; no allocation. `now` is always an
 * argument (milliseconds of a monotonic clock); a clock that goes backwards only makes the
 * window forget early.
 */
#ifndef LV_WINDOW_H
#define LV_WINDOW_H

#include <stdint.h>

#define LV_WINDOW_BUCKETS  10
#define LV_WINDOW_COUNTERS 3

struct lv_window {
    uint64_t window_ms;                /* as configured */
    uint64_t bucket_ms;                /* window_ms / LV_WINDOW_BUCKETS, at least 1 */
    uint64_t epoch[LV_WINDOW_BUCKETS]; /* now / bucket_ms of the time the bucket holds */
    uint64_t count[LV_WINDOW_BUCKETS][LV_WINDOW_COUNTERS];
};

/**
 * Empties `w` and sets its length. The window covers the current bucket plus the
 * LV_WINDOW_BUCKETS - 1 before it; below LV_WINDOW_BUCKETS ms, buckets are 1 ms long.
 */
void lv_window_init(struct lv_window *w, uint64_t window_ms);

/** Adds `n` to counter `c` (< LV_WINDOW_COUNTERS) at time `now`. */
void lv_window_add(struct lv_window *w, uint64_t now, unsigned c, uint64_t n);

/** Sum of counter `c` over the buckets still inside the window at `now`. */
uint64_t lv_window_sum(const struct lv_window *w, uint64_t now, unsigned c);

/** Zeroes every counter, keeping the length. */
void lv_window_clear(struct lv_window *w);

/**
 * Changes the length. An unchanged length keeps every bucket. A new length cannot keep the
 * old bucket boundaries, so what the old window still held at `now` is carried into the
 * current bucket of the new one: recent history is neither lost nor counted twice, and it
 * ages out one new window later.
 */
void lv_window_resize(struct lv_window *w, uint64_t window_ms, uint64_t now);

#endif
