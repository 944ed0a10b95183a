
#include <stdio.h>

#include "base/log.h"
#include "base/method.h"
#include "obs/accesslog.h"
#include "policy/breaker.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "script/hooks.h"

/* Every breaker transition is logged once, with what caused it (README, "Circuit breaker"). */
static void note(struct lv_request *r, const struct lv_breaker *b, uint64_t open0, uint64_t half0,
                 uint64_t closed0, enum lv_breaker_state before, uint64_t now)
{
    const char *name = r->route->name;
    if (b->to_open != open0) {
        struct lv_breaker_stats st;
        lv_breaker_stats(b, now, &st);
        char why[160];
        if (before == LV_BREAKER_HALF_OPEN)
            snprintf(why, sizeof(why), "a half-open probe failed");
        else if (b->p.consecutive_failures && st.consecutive >= b->p.consecutive_failures)
            snprintf(why, sizeof(why), "%u consecutive failures", st.consecutive);
        else if (b->p.failure_ratio > 0 && st.requests &&
                 (double)st.failures >= b->p.failure_ratio * (double)st.requests - 1e-9)
            snprintf(why, sizeof(why), "%llu of %llu failed (ratio %.2g >= %.2g)",
                     (unsigned long long)st.failures, (unsigned long long)st.requests,
                     (double)st.failures / (double)st.requests, b->p.failure_ratio);
        else
            snprintf(why, sizeof(why), "%llu of %llu slower than %llums (ratio >= %.2g)",
                     (unsigned long long)st.slow, (unsigned long long)st.requests,
                     (unsigned long long)b->p.slow_call_ms, b->p.slow_call_ratio);
        lv_log_change(LV_LOG_WARN, "route %s breaker open for %llums: %s", name,
                      (unsigned long long)st.open_for_ms, why);
    }
    if (b->to_half_open != half0)
        lv_log_change(LV_LOG_WARN, "route %s breaker half-open: letting %u probe(s) through", name,
                      b->p.half_open_requests ? b->p.half_open_requests : 1);
    if (b->to_closed != closed0)
        lv_log_change(LV_LOG_WARN, "route %s breaker closed: %u probe(s) succeeded", name,
                      b->p.half_open_requests ? b->p.half_open_requests : 1);
}

static enum lv_breaker_admit admit(struct lv_request *r, uint64_t now, uint64_t *left)
{
    struct lv_breaker *b = &r->rs->breaker;
    uint64_t o = b->to_open, h = b->to_half_open, c = b->to_closed;
    enum lv_breaker_state before = b->state;
    enum lv_breaker_admit ad = lv_breaker_admit(b, now, left);
    if (b->to_open != o || b->to_half_open != h || b->to_closed != c)
        note(r, b, o, h, c, before, now);
    return ad;
}

void lv_breakergate_record(struct lv_request *r, uint64_t now, bool failure, double attempt_ms)
{
    if (!lv_route_state_has_breaker(r->rs))
        return; /* no lock for a route without a breaker */
    lv_route_state_lock(r->rs);
    if (!lv_route_state_has_breaker(r->rs)) {
        lv_route_state_unlock(r->rs);
        return;
    }
    struct lv_breaker *b = &r->rs->breaker;
    uint64_t o = b->to_open, h = b->to_half_open, c = b->to_closed;
    enum lv_breaker_state before = b->state;
    lv_breaker_record(b, now, failure, lv_breaker_is_slow(b, (uint64_t)attempt_ms), r->probe);
    r->probe = false;
    if (b->to_open != o || b->to_half_open != h || b->to_closed != c)
        note(r, b, o, h, c, before, now);
    lv_route_state_unlock(r->rs);
}

void lv_breakergate_drop_probe(struct lv_request *r)
{
    if (r->probe && r->rs) {
        lv_route_state_lock(r->rs);
        if (lv_route_state_has_breaker(r->rs))
            lv_breaker_release_probe(&r->rs->breaker);
        lv_route_state_unlock(r->rs);
    }
    r->probe = false;
}

/* The caller holds the route state's lock (the retry decision and the budget go with it). */
bool lv_breakergate_admit_retry(struct lv_request *r, uint64_t now)
{
    if (!lv_route_state_has_breaker(r->rs))
        return true;
    uint64_t left = 0;
    enum lv_breaker_admit ad = admit(r, now, &left);
    if (ad == LV_BREAKER_REJECT) {
        r->flags |= LV_ACCESS_BREAKER_OPEN;
        return false;
    }
    r->probe = ad == LV_BREAKER_PROBE;
    return true;
}

void lv_breakergate_reject(struct lv_request *r, uint64_t left_ms)
{
    struct lv_route_state *rs = r->rs;
    r->flags |= LV_ACCESS_BREAKER_OPEN;
    lv_metric_add(rs->breaker_rejected, 1);
    lv_request_retry_decided(r, LV_STOP_BREAKER_OPEN);
    if (r->body_kind != LV_REQ_BODY_NONE)
        r->resp_close = true; /* its body is not read */
    bool close = r->resp_close || !r->client_keep_alive;
    if (r->route->fallback_ref >= 0) {
        struct lv_hook_request hr = lv_request_hook_view(r);
        hr.close = close;
        struct lv_buf err = LV_BUF_INIT;
        int status = 0;
        lv_buf_reset(&r->cout);
        if (lv_hook_fallback(r->cfg, r->route->fallback_ref, &hr, "breaker-open", &r->cout, &status,
                             &err) == 0) {
            lv_buf_dispose(&err);
            r->flags |= LV_ACCESS_FALLBACK;
            lv_metric_add(rs->fallbacks, 1);
            r->status = status;
            r->bytes_out += r->cout.len;
            r->head_sent = true;
            r->resp_close = close;
            lv_request_end(r, close);
            return;
        }
        lv_buf_reset(&r->cout);
        if (err.len)
            lv_request_hook_failed(r, LV_REQ_HOOK_FALLBACK, &err);
        lv_buf_dispose(&err);
    }
    lv_request_fail(r, LV_GWERR_BREAKER_OPEN, NULL, (int)((left_ms + 999) / 1000), r->resp_close);
}

/* The caller holds the route state's lock (it counts the request in the budget with it). */
bool lv_breakergate_admit(struct lv_request *r, uint64_t *left_ms)
{
    if (!lv_route_state_has_breaker(r->rs))
        return true;
    enum lv_breaker_admit ad = admit(r, r->start_ms, left_ms);
    if (ad == LV_BREAKER_REJECT)
        return false;
    r->probe = ad == LV_BREAKER_PROBE;
    return true;
}
