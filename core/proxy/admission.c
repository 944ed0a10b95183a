#include "proxy/admission.h"

#include <string.h>

#include "obs/metrics.h"

void lv_admission_init(struct lv_admission *a)
{
    memset(a, 0, sizeof(*a));
    pthread_mutex_init(&a->lock, NULL);
    pthread_rwlock_init(&a->mem_lock, NULL);
    lv_bulkhead_init(&a->bulkhead);
}

bool lv_admission_rate_check(struct lv_admission *a, const char *key, size_t len,
                             const struct lv_gcra *g, uint64_t now_ns, struct lv_gcra_result *out)
{
    pthread_rwlock_rdlock(&a->mem_lock);
    bool ok = a->mem && lv_ratemem_check(a->mem, key, len, g, now_ns, out) == LV_RATEMEM_OK;
    pthread_rwlock_unlock(&a->mem_lock);
    return ok;
}

uint32_t lv_admission_limit(const struct lv_admission *a)
{
    return a->adaptive ? lv_gradient_limit(&a->gradient) : a->max;
}

void lv_admission_configure(struct lv_admission *a, const struct lv_route_cfg *r,
                            const struct lv_admission_families *f, const char *route)
{
    const char *lv[] = {route, NULL};
    const struct lv_rate_cfg *rc = &r->rate_limit;
    const struct lv_concurrency_cfg *cc = &r->concurrency;
    struct lv_ratemem *old = NULL;
    /* The memory store keeps its keys while its size is unchanged (a reload that changes the
     * rate keeps each key's state: GCRA's state means the same under any parameters). */
    bool want_mem = rc->enabled && !rc->redis;
    pthread_rwlock_wrlock(&a->mem_lock);
    if (a->mem && (!want_mem || lv_ratemem_max_keys(a->mem) != rc->max_keys)) {
        old = a->mem;
        a->mem = NULL;
    }
    if (want_mem && !a->mem)
        a->mem = lv_ratemem_new(rc->max_keys);
    pthread_rwlock_unlock(&a->mem_lock);
    pthread_mutex_lock(&a->lock);
    if (rc->enabled && !a->limited[0]) {
        const char *le[] = {route, "enforce", NULL}, *ls[] = {route, "shadow", NULL};
        a->limited[0] = lv_metric_series(f->limited, le);
        a->limited[1] = lv_metric_series(f->limited, ls);
        a->store_errors = lv_metric_series(f->store_errors, lv);
    }
    a->bulkhead_on = cc->enabled;
    if (cc->enabled) {
        struct lv_gradient_cfg gc;
        lv_gradient_cfg_default(&gc);
        gc.min_limit = cc->min;
        gc.max_limit = cc->max_limit;
        gc.initial_limit = cc->initial;
        if (cc->adaptive && !a->gradient_ready)
            lv_gradient_init(&a->gradient, &gc);
        else if (cc->adaptive)
            lv_gradient_configure(&a->gradient, &gc);
        a->gradient_ready = a->gradient_ready || cc->adaptive;
        a->adaptive = cc->adaptive;
        a->max = cc->max;
        a->queue = cc->queue;
        if (!a->rejected) {
            a->rejected = lv_metric_series(f->rejected, lv);
            a->queued = lv_metric_series(f->queued, lv);
        }
    }
    pthread_mutex_unlock(&a->lock);
    lv_ratemem_free(old); /* no check holds it: they take mem_lock */
}

void lv_admission_publish(struct lv_admission *a, const struct lv_admission_families *f,
                          const char *route)
{
    const char *lv[] = {route, NULL};
    pthread_mutex_lock(&a->lock);
    bool on = a->bulkhead_on;
    uint32_t inflight = a->bulkhead.inflight, limit = lv_admission_limit(a);
    pthread_mutex_unlock(&a->lock);
    if (on) {
        lv_metric_set(lv_metric_series(f->inflight, lv), inflight);
        lv_metric_set(lv_metric_series(f->limit, lv), limit);
    } else {
        lv_metric_family_remove(f->inflight, "route", route);
        lv_metric_family_remove(f->limit, "route", route);
    }
}

void lv_admission_dispose(struct lv_admission *a, const struct lv_admission_families *f,
                          const char *route)
{
    struct lv_metric_family *fams[] = {f->limited, f->store_errors, f->rejected,
                                       f->queued,  f->inflight,     f->limit};
    for (size_t k = 0; f->limited && k < sizeof(fams) / sizeof(fams[0]); k++)
        lv_metric_family_remove(fams[k], "route", route);
    lv_ratemem_free(a->mem);
    a->mem = NULL;
    pthread_rwlock_destroy(&a->mem_lock);
    pthread_mutex_destroy(&a->lock);
}

void lv_admission_stats(struct lv_admission *a, struct lv_admission_stats *out)
{
    memset(out, 0, sizeof(*out));
    pthread_rwlock_rdlock(&a->mem_lock);
    out->rate_limit = a->mem != NULL;
    out->keys = a->mem ? lv_ratemem_keys(a->mem) : 0;
    pthread_rwlock_unlock(&a->mem_lock);
    pthread_mutex_lock(&a->lock);
    out->bulkhead = a->bulkhead_on;
    out->adaptive = a->adaptive;
    out->inflight = a->bulkhead.inflight;
    out->queued = a->bulkhead.queued;
    out->limit = lv_admission_limit(a);
    out->rejected = a->bulkhead.rejected;
    if (a->adaptive) {
        double s = 0, l = 0;
        lv_gradient_stats(&a->gradient, NULL, &s, &l, NULL);
        out->short_rtt_ms = s / 1e6;
        out->long_rtt_ms = l / 1e6;
    }
    pthread_mutex_unlock(&a->lock);
}
