/*
 * gradient: the adaptive concurrency limit of a route bulkhead (`concurrency = { max = "adaptive",
 * min, max_limit }`, README "Resilience policies"). The limit follows the upstream's latency: it
 * grows while the recent RTT stays close to the no-load RTT, and shrinks when the recent RTT
 * grows past it, which is what a queue building up at the upstream looks like. The model is
 * Netflix concurrency-limits' Gradient2 (delay based, averages rather than minima):
 *
 *   Samples (one per finished request) are aggregated into a sample window; each closed window
 *   is one update. A window closes at the first sample that finds it both old enough
 *   (clamp(2 x the window's fastest RTT, window_min_ns, window_max_ns)) and holding at least
 *   window_min_samples samples; so one slow request never decides an update on its own, and a
 *   quiet route updates every window_min_samples requests.
 *
 *   short RTT = the window's mean RTT (dropped requests left out: a timeout's RTT is the timeout)
 *   long RTT  = the baseline: an exponential average of the windows' short RTTs over about
 *               long_window windows (plain mean for the first LV_GRADIENT_WARMUP windows)
 *   gradient  = clamp(tolerance x long / short, 0.5, 1.0)
 *   queue     = sqrt(limit)        (how much the limit may grow per update while latency is fine)
 *   new       = limit x gradient + queue
 *   limit     = limit x (1 - smoothing) + new x smoothing, clamped to [min_limit, max_limit]
 *
 * and three guards (the constants are in gradient.c, with their reasons):
 *   - app-limited: a window whose highest inflight stayed under limit / 2 neither grows nor
 *     shrinks the limit (the load, not the upstream, set its latency);
 *   - drops: a window where at least 1% of the requests (and at least one) were dropped
 *     (timeout, overload) multiplies the limit by drop_backoff instead of the gradient rule;
 *   - no self-inflicted drift: a window that shows queueing (short > tolerance x long) is not
 *     averaged into the baseline, so a limit held at the upstream's knee does not slowly teach
 *     the baseline that queueing is normal (Gradient2 averages every window, and its limit then
 *     climbs under sustained load). Windows faster than the baseline pull it down quickly.
 *
 * What the averages cannot tell apart, a latency we cause by queueing from a latency the
 * upstream has on its own, a probe measures: every probe_interval windows (not while
 * app-limited), the limit is halved for one window (lv_gradient_limit returns the probe limit),
 * and the mean RTT of the requests that started within it (inflight <= the probe limit) becomes
 * the baseline, up or down. So a limit that started above the knee walks down to it (each probe
 * sees the latency at half the concurrency), and an upstream that became slower for good is
 * re-learnt instead of pinning the limit at its floor. The cost: one window in probe_interval
 * at half the concurrency. When the baseline looks stale (right after the warm-up, after a probe
 * that lowered it by 10% or more, after a window faster than baseline / tolerance), the next
 * probe comes after 10 windows instead.
 *
 * The caller (the request path): one lv_gradient_sample per request the bulkhead admitted, when
 * it ends (requests the bulkhead rejected or timed out in its queue are not samples: they never
 * reached the upstream); enforce lv_gradient_limit; show lv_gradient_stats' estimate in /status
 * and levee_route_concurrency_limit (it does not dip during probes).
 *
 * Pure: no clock (`now_ns` is an argument, nanoseconds of a monotonic clock), no allocation.
 * Not thread-safe: the caller serialises every call on one struct lv_gradient (the bulkhead's
 * lock).
 */
#ifndef LV_GRADIENT_H
#define LV_GRADIENT_H

#include <stdbool.h>
#include <stdint.h>

/* Windows over which the baseline is a plain mean before the exponential average takes over. */
#define LV_GRADIENT_WARMUP 10

struct lv_gradient_cfg {
    uint32_t min_limit;          /* floor of the limit; 0 is taken as 1 */
    uint32_t max_limit;          /* ceiling; below min_limit: min_limit */
    uint32_t initial_limit;      /* starting limit; 0: min_limit; clamped to [min, max] */
    double smoothing;            /* (0, 1]: weight of a new estimate; default 0.2 */
    double tolerance;            /* >= 1: RTT growth over the baseline taken as no queueing; 1.5 */
    uint32_t long_window;        /* windows the baseline averages over; default 600 */
    uint32_t window_min_samples; /* samples a window needs to close; default 10; 1..2^30/10 */
    uint64_t window_min_ns;      /* shortest window; default 100 ms */
    uint64_t window_max_ns;      /* longest window (before the sample count); default 1 s */
    double drop_backoff;         /* (0, 1): limit factor of a window with drops; default 0.9 */
    uint32_t probe_interval;     /* windows between probes; default 100; 0: default */
};

struct lv_gradient {
    struct lv_gradient_cfg c;  /* sanitised copy */
    double limit;              /* the estimated limit (fractional; lv_gradient_limit truncates) */
    double short_rtt;          /* ns: the last closed window's mean RTT (0 before the first) */
    double long_rtt;           /* ns: the baseline (0 before the first window) */
    uint32_t baseline_windows; /* windows averaged into the baseline, up to LV_GRADIENT_WARMUP */
    uint64_t updates;          /* windows closed since init */
    /* The open sample window. */
    uint64_t win_start;    /* now_ns of its first sample */
    uint64_t win_len;      /* its length, set when the previous window closed */
    uint32_t win_samples;  /* samples, dropped ones included */
    uint32_t win_drops;    /* dropped samples */
    uint32_t win_inflight; /* highest inflight of its samples */
    double win_rtt_sum;    /* ns, sum of the RTTs of the samples not dropped */
    double win_rtt_min;    /* ns, fastest RTT not dropped (0: none yet) */
    /* Probes. */
    bool probing;        /* the open window is a probe */
    uint64_t next_probe; /* `updates` at which the next probe starts */
    uint64_t last_probe; /* `updates` when the last probe ended */
    uint32_t probe_n;    /* probe window: samples that started within the probe limit */
    double probe_sum;    /* ns, their RTT sum */
};

/** Fills `c` with the defaults above (min 1, max 1000, initial 20). */
void lv_gradient_cfg_default(struct lv_gradient_cfg *c);

/** Starts from c->initial_limit with no baseline. Out-of-range fields are replaced as above. */
void lv_gradient_init(struct lv_gradient *g, const struct lv_gradient_cfg *c);

/**
 * New settings (a reload): the learnt limit and RTTs are kept (the limit clamped to the new
 * bounds); initial_limit is ignored.
 */
void lv_gradient_configure(struct lv_gradient *g, const struct lv_gradient_cfg *c);

/**
 * One finished request: its RTT (ns), the inflight count when it started (itself included),
 * and whether it was dropped (failed with a timeout or an overload answer). May close the
 * window and update the limit. Any values are accepted (rtt 0, huge, inflight 0).
 */
void lv_gradient_sample(struct lv_gradient *g, uint64_t now_ns, uint64_t rtt_ns, uint32_t inflight,
                        bool dropped);

/** The current limit, in [min_limit, max_limit]: the estimate, or during a probe half of it. */
uint32_t lv_gradient_limit(const struct lv_gradient *g);

/**
 * For /status and metrics; any pointer may be NULL. *limit is the estimate (fractional, without
 * the probes' dips); RTTs in ns, 0 before the first window; *updates counts closed windows.
 */
void lv_gradient_stats(const struct lv_gradient *g, double *limit, double *short_rtt_ns,
                       double *long_rtt_ns, uint64_t *updates);

#endif
