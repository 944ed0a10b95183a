/*
 * admission: a route's admission control (README "Admission control"), the state shared by
 * every worker. A request passes, in this order: its route, the rate limit (a GCRA per key,
 * in memory here or in Redis), the bulkhead (a concurrency limit, fixed or adaptive, with a
 * FIFO queue), then idempotency, the breaker and its attempts (proxy/request.c).
 *
 * struct lv_admission lives in the route state (kept by route name across reloads): the
 * memory store of the rate limit and the bulkhead with its gradient, under a lock of their
 * own (not the breaker's). The request's side is proxy/admitreq.c.
 */
#ifndef LV_PROXY_ADMISSION_H
#define LV_PROXY_ADMISSION_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "conf/config.h"
#include "policy/bulkhead.h"
#include "policy/gradient.h"
#include "policy/ratelimit.h"

struct lv_metric;
struct lv_metric_family;

/* The metric families admission control counts in (made by the server). */
struct lv_admission_families {
    struct lv_metric_family *limited;      /* levee_rate_limited_total{route,mode} */
    struct lv_metric_family *store_errors; /* levee_rate_limit_store_errors_total{route} */
    struct lv_metric_family *rejected;     /* levee_concurrency_rejected_total{route} */
    struct lv_metric_family *queued;       /* levee_concurrency_queued_total{route} */
    struct lv_metric_family *inflight;     /* levee_route_inflight{route} */
    struct lv_metric_family *limit;        /* levee_route_concurrency_limit{route} */
};

struct lv_admission {
    pthread_mutex_t lock;
    /* the rate limit's memory store, kept while max_keys is unchanged; checks hold mem_lock
     * for reading (the store locks its own shards), a reload that replaces it for writing */
    pthread_rwlock_t mem_lock;
    struct lv_ratemem *mem;
    /* the bulkhead */
    bool bulkhead_on;
    struct lv_bulkhead bulkhead;
    bool adaptive;
    bool gradient_ready;
    struct lv_gradient gradient;
    uint32_t max;   /* the fixed limit */
    uint32_t queue; /* queue length */
    /* series, made when the route first has the feature */
    struct lv_metric *limited[2]; /* mode enforce, shadow */
    struct lv_metric *store_errors, *rejected, *queued;
};

void lv_admission_init(struct lv_admission *a);
/** A load: the route's settings (stores made or kept, the bulkhead's limits, series). */
void lv_admission_configure(struct lv_admission *a, const struct lv_route_cfg *r,
                            const struct lv_admission_families *f, const char *route);
/** Gauges for a scrape: in flight and the current limit, for a route with a bulkhead. */
void lv_admission_publish(struct lv_admission *a, const struct lv_admission_families *f,
                          const char *route);
/** The route state goes: its series leave /metrics, its store is freed. */
void lv_admission_dispose(struct lv_admission *a, const struct lv_admission_families *f,
                          const char *route);

/** One check in the memory store (lv_ratemem_check); false when there is none or it is full. */
bool lv_admission_rate_check(struct lv_admission *a, const char *key, size_t len,
                             const struct lv_gcra *g, uint64_t now_ns, struct lv_gcra_result *out);

/** The bulkhead's current limit (the fixed one, or the gradient's). Lock held. */
uint32_t lv_admission_limit(const struct lv_admission *a);

/* For /status. */
struct lv_admission_stats {
    bool rate_limit;
    uint64_t keys;
    bool bulkhead, adaptive;
    uint32_t inflight, queued, limit;
    double short_rtt_ms, long_rtt_ms;
    uint64_t rejected;
};
void lv_admission_stats(struct lv_admission *a, struct lv_admission_stats *out);

#endif
