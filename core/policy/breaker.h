/*
 * breaker: a route's circuit breaker (README, "Resilience policies"). Closed, it lets every attempt
 * through and watches their outcomes over a rolling window; it opens when either rule trips: N
 * failures in a row, or (with at least min_requests in the window) a failure ratio, or a slow-call
 * ratio. Open, it rejects at once. After open_for it is half-open (lazily, on the next
 * admission): exactly half_open_requests probes go through; all succeed → closed with an
 * empty window; one fails → open again for twice as long, up to max_open_for (the length
 * goes back to open_for on close).
 *
 * Embedded in the route state (which survives reloads by route name); no allocation. `now`
 * is an argument: milliseconds of a monotonic clock. Called by the request path: one
 * lv_breaker_admit before each attempt, then one lv_breaker_record with its outcome (or, for
 * a probe that ended without one, lv_breaker_release_probe).
 */
#ifndef LV_BREAKER_H
#define LV_BREAKER_H

#include <stdbool.h>
#include <stdint.h>

#include "policy/window.h"

/* Thresholds (config.h's struct lv_breaker_cfg carries the same values). */
struct lv_breaker_params {
    double failure_ratio;          /* (0, 1]; 0 or less turns the ratio rule off */
    uint32_t min_requests;         /* requests the window needs before a ratio rule applies */
    uint64_t window_ms;            /* rolling window */
    uint32_t consecutive_failures; /* 0 = rule off */
    uint64_t open_for_ms;          /* first open period */
    uint64_t max_open_for_ms;      /* cap of the doubling; below open_for_ms: no growth */
    uint32_t half_open_requests;   /* probes while half-open; 0 is taken as 1 */
    uint64_t slow_call_ms;         /* an attempt longer than this is slow; 0 = rule off */
    double slow_call_ratio;        /* (0, 1] */
};

/* Numbered as the levee_breaker_state metric. */
enum lv_breaker_state { LV_BREAKER_CLOSED = 0, LV_BREAKER_OPEN = 1, LV_BREAKER_HALF_OPEN = 2 };

enum lv_breaker_admit {
    LV_BREAKER_ALLOW,  /* go; report with probe = false */
    LV_BREAKER_PROBE,  /* go as a half-open probe; report with probe = true, or release */
    LV_BREAKER_REJECT, /* answer at once (fallback or 503 breaker-open) */
};

/* Rejection Retry-After while half-open with every probe slot taken. */
#define LV_BREAKER_BUSY_RETRY_MS 1000

struct lv_breaker {
    struct lv_breaker_params p;
    enum lv_breaker_state state;
    uint32_t consecutive;                      /* failures in a row while closed */
    uint64_t opened_at;                        /* OPEN: when */
    uint64_t open_until;                       /* OPEN: when it turns half-open */
    uint64_t open_for_ms;                      /* length of the current (or next) open period */
    uint32_t probes_admitted;                  /* HALF_OPEN: slots handed out */
    uint32_t probes_ok;                        /* HALF_OPEN: probes that succeeded */
    uint64_t to_open, to_half_open, to_closed; /* transitions since init */
    struct lv_window w;                        /* counter 0: requests, 1: failures, 2: slow calls */
};

/** For /status and metrics. */
struct lv_breaker_stats {
    enum lv_breaker_state state;       /* as of `now`: OPEN past open_until reads HALF_OPEN */
    uint64_t open_left_ms;             /* OPEN: ms until half-open; else 0 */
    uint64_t open_for_ms;              /* current open period (grows after failed probes) */
    uint64_t requests, failures, slow; /* in the window (frozen while open; emptied on close) */
    uint32_t consecutive;
    uint32_t probes_in_flight, probes_ok;
    uint64_t to_open, to_half_open, to_closed; /* transitions; to_open = times opened */
};

/** Closed, empty window, thresholds `p` (copied). */
void lv_breaker_init(struct lv_breaker *b, const struct lv_breaker_params *p, uint64_t now);

/**
 * New thresholds (a reload), applied at once: the state and the window are kept (the window
 * is carried over if its length changed, see lv_window_resize); an open period is
 * re-measured from when it began with the new length; a closed breaker whose window already
 * trips the new rules opens now; a half-open one whose successful probes reach the new
 * half_open_requests closes now.
 */
void lv_breaker_configure(struct lv_breaker *b, const struct lv_breaker_params *p, uint64_t now);

/**
 * May an attempt start at `now`? Moves OPEN to HALF_OPEN once open_until has passed. On
 * REJECT stores in *retry_after_ms (may be NULL) the time until the breaker may let a request
 * through: the rest of the open period (at least 1 ms), or LV_BREAKER_BUSY_RETRY_MS when
 * half-open with every probe slot taken.
 */
enum lv_breaker_admit lv_breaker_admit(struct lv_breaker *b, uint64_t now,
                                       uint64_t *retry_after_ms);

/** True when an attempt of `duration_ms` counts as slow (the slow rule is on and it exceeded
 * slow_call_ms). */
bool lv_breaker_is_slow(const struct lv_breaker *b, uint64_t duration_ms);

/**
 * Reports the outcome of an admitted attempt: `failure` from lv_verdict_is_failure, `slow`
 * from lv_breaker_is_slow, `probe` as lv_breaker_admit answered. Closed: counts it and opens
 * if a rule trips. Half-open, probe: a failure (or a slow call, when the slow rule is on)
 * opens again; the last of half_open_requests successes closes. Results of attempts admitted
 * before the state changed (non-probes while open or half-open, probes while open, probes
 * beyond the slots handed out) are ignored; a probe reported while closed counts as an
 * ordinary attempt.
 */
void lv_breaker_record(struct lv_breaker *b, uint64_t now, bool failure, bool slow, bool probe);

/** A PROBE admission ended without an outcome (client gone, request refused before sending): its
 * slot is free again. */
void lv_breaker_release_probe(struct lv_breaker *b);

/** The state as of `now` and the counters; does not change the breaker. */
void lv_breaker_stats(const struct lv_breaker *b, uint64_t now, struct lv_breaker_stats *out);

/** "closed", "open", "half-open". Never NULL. */
const char *lv_breaker_state_name(enum lv_breaker_state s);

#endif
