/*
 * tracing.c: W3C trace context on the request path and the spans levee exports (README
 * "Tracing").
 *
 * Every request continues the trace of a valid incoming `traceparent` or starts one; its own
 * span (the server span) gets a fresh id, and so does each attempt (a client span, child of
 * the server span), whose id goes upstream in the attempt's `traceparent`. A trace levee
 * starts is sampled with probability tracing.sample; a continued one follows the incoming
 * sampled flag. Only sampled requests build spans, and only when the configuration has an
 * OTLP endpoint: an unsampled request costs two random numbers per attempt and one header.
 * Spans are built at the end of the request from what the access log records anyway.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"
#include "base/method.h"
#include "http/tracectx.h"
#include "obs/accesslog.h"
#include "obs/metrics.h"
#include "policy/breaker.h"
#include "policy/outcome.h"
#include "policy/retry.h"
#include "proxy/request.h"
#include "proxy/routestate.h"
#include "proxy/server.h"
#include "trace/exporter.h"
#include "trace/span.h"

/* What the workers share for tracing, made by the first configuration. */
struct lv_trace_shared {
    _Atomic(struct lv_exporter *) exporter; /* made by the first config with tracing.otlp */
    uint64_t flush_ms;                      /* shutdown flush bound: tracing.timeout */
    struct lv_metric *invalid;              /* levee_trace_context_invalid_total */
    struct lv_metric *exported, *dropped_full, *dropped_failed, *failures, *queued;
};

static struct lv_trace_shared *shared_of(struct lv_server_shared *sh)
{
    return atomic_load_explicit(&sh->trace, memory_order_acquire);
}

static void random_bytes(struct lv_request *r, uint8_t *out, size_t n)
{
    /* never all zero (an invalid id): the odds of a zero draw are 2^-64 per word, and a
     * zero word is replaced */
    for (size_t i = 0; i < n; i += 8) {
        uint64_t x = lv_attempt_rand(r);
        if (x == 0)
            x = 1;
        size_t k = n - i < 8 ? n - i : 8;
        memcpy(out + i, &x, k);
    }
}

void lv_trace_begin(struct lv_request *r, const struct lv_reqhead *h)
{
    const struct lv_tracing_cfg *tc = &r->cfg->tracing;
    r->traced = tc->enabled;
    r->trace_continued = false;
    if (!r->traced)
        return;
    struct lv_tracectx in;
    if (h->ntraceparent == 1 && lv_traceparent_parse(h->traceparent.p, h->traceparent.len, &in)) {
        r->trace_continued = true;
        memcpy(r->trace_id, in.trace_id, sizeof(r->trace_id));
        memcpy(r->parent_id, in.parent_id, sizeof(r->parent_id));
        r->trace_flags = in.flags & LV_TRACE_FLAG_SAMPLED;
    } else {
        if (h->ntraceparent) { /* present but invalid (or repeated): a new trace, counted */
            struct lv_trace_shared *ts = shared_of(r->s->sh);
            if (ts)
                lv_metric_add(ts->invalid, 1);
        }
        random_bytes(r, r->trace_id, sizeof(r->trace_id));
        memset(r->parent_id, 0, sizeof(r->parent_id));
        /* the top 53 bits as a fraction in [0, 1) against the sample rate */
        double u = (double)(lv_attempt_rand(r) >> 11) * (1.0 / 9007199254740992.0);
        r->trace_flags = u < tc->sample ? LV_TRACE_FLAG_SAMPLED : 0;
    }
    random_bytes(r, r->span_id, sizeof(r->span_id));
    memcpy(r->try_span, r->span_id, sizeof(r->try_span));
}

void lv_trace_attempt(struct lv_request *r)
{
    if (r->traced)
        random_bytes(r, r->try_span, sizeof(r->try_span));
}

size_t lv_trace_header(const struct lv_request *r, char out[LV_TRACE_HEADER_MAX])
{
    if (!r->traced)
        return 0;
    static const char k[] = "traceparent: ";
    memcpy(out, k, sizeof(k) - 1);
    size_t n = sizeof(k) - 1;
    lv_traceparent_format(r->trace_id, r->try_span, r->trace_flags, out + n);
    n += LV_TRACEPARENT_LEN;
    memcpy(out + n, "\r\n", 2);
    return n + 2;
}

/* ---- spans */

static uint64_t wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* "host:port" of a server name into the span's server.address / server.port. */
static void server_attrs(struct lv_trace_span *sp, const char *server)
{
    if (!server)
        return;
    const char *colon = strrchr(server, ':');
    if (!colon) {
        lv_tspan_cstr(sp, "server.address", server);
        return;
    }
    const char *host = server;
    size_t hl = (size_t)(colon - server);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        host++;
        hl -= 2;
    }
    lv_tspan_str(sp, "server.address", host, hl);
    lv_tspan_int(sp, "server.port", atoi(colon + 1));
}

static const char *breaker_name(struct lv_request *r)
{
    struct lv_route_state *rs = r->rs;
    if (!rs || !atomic_load_explicit(&rs->breaker_enabled, memory_order_relaxed))
        return NULL;
    lv_route_state_lock(rs);
    enum lv_breaker_state st = rs->breaker.state;
    lv_route_state_unlock(rs);
    return st == LV_BREAKER_OPEN ? "open" : st == LV_BREAKER_HALF_OPEN ? "half-open" : "closed";
}

static void flags_attr(struct lv_trace_span *sp, unsigned flags)
{
    char buf[256];
    size_t n = 0;
    while (flags) {
        unsigned bit = flags & (0u - flags);
        flags &= flags - 1;
        const char *name = lv_access_flag_name(bit);
        size_t len = name ? strlen(name) : 0;
        if (!len || n + len + 1 >= sizeof(buf))
            continue;
        if (n)
            buf[n++] = ',';
        memcpy(buf + n, name, len);
        n += len;
    }
    if (n)
        lv_tspan_str(sp, "levee.flags", buf, n);
}

void lv_trace_end(struct lv_request *r)
{
    if (!r->traced || !(r->trace_flags & LV_TRACE_FLAG_SAMPLED) || !r->cfg->tracing.otlp)
        return;
    struct lv_trace_shared *ts = shared_of(r->s->sh);
    struct lv_exporter *ex = ts ? atomic_load_explicit(&ts->exporter, memory_order_acquire) : NULL;
    if (!ex)
        return;
    /* One reading of each clock: every start is placed on the wall clock from its hrtime. */
    uint64_t now_ns = wall_ns(), now_hr = uv_hrtime();
    uint64_t start_wall = now_ns - (now_hr - r->start_ns);
    const char *method = lv_method_name(r->method);
    const char *route = r->route ? r->route->name : NULL;
    const char *breaker = breaker_name(r);

    struct lv_trace_span sp;
    for (int i = 0; i < r->ntries; i++) {
        const struct lv_try *t = &r->tries[i];
        lv_tspan_init(&sp, LV_SPAN_CLIENT, r->trace_id, t->span_id, r->span_id);
        sp.start_ns = now_ns - (now_hr - t->start_ns);
        sp.end_ns = sp.start_ns + (uint64_t)(t->ms * 1e6);
        lv_tspan_name(&sp, method, strlen(method));
        lv_tspan_cstr(&sp, "http.request.method", method);
        server_attrs(&sp, t->server);
        if (i) /* set on resends only, as the HTTP conventions ask */
            lv_tspan_int(&sp, "http.request.resend_count", i);
        const char *outcome = t->kind == LV_OUT_STATUS ? NULL : lv_outcome_name(t->kind);
        if (t->kind == LV_OUT_STATUS)
            lv_tspan_int(&sp, "http.response.status_code", t->status);
        else
            lv_tspan_cstr(&sp, "error.type", outcome);
        lv_tspan_cstr(&sp, "levee.route", route);
        lv_tspan_int(&sp, "levee.attempt", i + 1);
        if (t->kind == LV_OUT_STATUS && t->status >= 100 && t->status <= 999) {
            char code[3] = {(char)('0' + t->status / 100), (char)('0' + t->status / 10 % 10),
                            (char)('0' + t->status % 10)};
            lv_tspan_str(&sp, "levee.outcome", code, 3);
        } else {
            lv_tspan_cstr(&sp, "levee.outcome", outcome);
        }
        if (t->verdict >= 0)
            lv_tspan_cstr(&sp, "levee.verdict", lv_verdict_name((enum lv_verdict)t->verdict));
        if (t->decision >= 0)
            lv_tspan_cstr(&sp, "levee.retry_decision",
                          t->decision == LV_STOP_NONE
                              ? "retry"
                              : lv_retry_stop_name((enum lv_retry_stop)t->decision));
        if (t->backoff_ms)
            lv_tspan_int(&sp, "levee.backoff_ms", (int64_t)t->backoff_ms);
        lv_tspan_cstr(&sp, "levee.fault", t->fault);
        lv_tspan_cstr(&sp, "levee.breaker", breaker);
        bool err = t->kind != LV_OUT_STATUS || t->status >= 400;
        lv_tspan_set_status(&sp, err ? LV_SPAN_ERROR : LV_SPAN_UNSET, err ? outcome : NULL);
        lv_exporter_submit(ex, &sp);
    }

    lv_tspan_init(&sp, LV_SPAN_SERVER, r->trace_id, r->span_id,
                  r->trace_continued ? r->parent_id : NULL);
    sp.start_ns = start_wall;
    sp.end_ns = now_ns;
    char name[96]; /* "METHOD ROUTE": a method name is short, a route name at most 64 bytes */
    const char *rn = route ? route : "(no route)";
    size_t ml = strlen(method), rl = strlen(rn);
    if (ml + 1 + rl > sizeof(name))
        rl = sizeof(name) - 1 - ml;
    memcpy(name, method, ml);
    name[ml] = ' ';
    memcpy(name + ml + 1, rn, rl);
    lv_tspan_name(&sp, name, ml + 1 + rl);
    lv_tspan_cstr(&sp, "http.request.method", method);
    const char *target = r->target.data ? r->target.data : "";
    const char *q = memchr(target, '?', r->target.len);
    lv_tspan_str(&sp, "url.path", target, q ? (size_t)(q - target) : r->target.len);
    if (q)
        lv_tspan_str(&sp, "url.query", q + 1, r->target.len - (size_t)(q + 1 - target));
    lv_tspan_cstr(&sp, "url.scheme", r->ds->tls ? "https" : "http");
    if (r->host.len)
        lv_tspan_str(&sp, "server.address", r->host.data, r->host.len);
    lv_tspan_cstr(&sp, "network.protocol.version", r->http10 ? "1.0" : "1.1");
    lv_tspan_cstr(&sp, "client.address", r->ds->peer);
    if (r->status)
        lv_tspan_int(&sp, "http.response.status_code", r->status);
    lv_tspan_cstr(&sp, "error.type", r->error_token);
    lv_tspan_cstr(&sp, "levee.route", route);
    lv_tspan_cstr(&sp, "levee.request_id", r->rid);
    lv_tspan_int(&sp, "levee.attempts", r->ntries);
    if (r->retry_stop != LV_STOP_NONE)
        lv_tspan_cstr(&sp, "levee.retry_stop", lv_retry_stop_name(r->retry_stop));
    lv_tspan_cstr(&sp, "levee.breaker", breaker);
    flags_attr(&sp, r->flags);
    bool err = r->status == 0 || r->status >= 500;
    lv_tspan_set_status(&sp, err ? LV_SPAN_ERROR : LV_SPAN_UNSET,
                        err ? (r->error_token ? r->error_token : "no response") : NULL);
    lv_exporter_submit(ex, &sp);
}

/* ---- the exporter and its metrics */

static void publish(struct lv_metrics *m, void *arg)
{
    (void)m;
    struct lv_trace_shared *ts = arg;
    struct lv_exporter *ex = atomic_load_explicit(&ts->exporter, memory_order_acquire);
    if (!ex)
        return;
    struct lv_exporter_stats st;
    lv_exporter_stats(ex, &st);
    lv_metric_set(ts->exported, (double)st.exported);
    lv_metric_set(ts->dropped_full, (double)st.dropped_full);
    lv_metric_set(ts->dropped_failed, (double)st.dropped_failed);
    lv_metric_set(ts->failures, (double)st.export_failures);
    lv_metric_set(ts->queued, (double)st.queued);
}

static struct lv_trace_shared *shared_make(struct lv_server_shared *sh)
{
    struct lv_trace_shared *ts = shared_of(sh);
    if (ts)
        return ts;
    ts = lv_xcalloc(1, sizeof(*ts));
    struct lv_metrics *m = sh->metrics;
    ts->invalid = lv_metric_series(
        lv_metrics_family(m, "levee_trace_context_invalid_total",
                          "Requests whose traceparent was invalid (a new trace was started).",
                          LV_METRIC_COUNTER, NULL, NULL, 0),
        NULL);
    ts->exported = lv_metric_series(lv_metrics_family(m, "levee_trace_spans_exported_total",
                                                      "Spans the OTLP collector accepted.",
                                                      LV_METRIC_COUNTER, NULL, NULL, 0),
                                    NULL);
    static const char *const reason[] = {"reason", NULL};
    struct lv_metric_family *dropped = lv_metrics_family(
        m, "levee_trace_spans_dropped_total",
        "Spans not exported: queue_full (the export queue was full), export_failed (every try "
        "of their batch failed, or shutdown came first).",
        LV_METRIC_COUNTER, reason, NULL, 0);
    ts->dropped_full = lv_metric_series(dropped, (const char *const[]){"queue_full"});
    ts->dropped_failed = lv_metric_series(dropped, (const char *const[]){"export_failed"});
    ts->failures = lv_metric_series(
        lv_metrics_family(m, "levee_trace_export_failures_total",
                          "Export requests to the OTLP collector that failed (each try counts).",
                          LV_METRIC_COUNTER, NULL, NULL, 0),
        NULL);
    ts->queued = lv_metric_series(lv_metrics_family(m, "levee_trace_spans_queued",
                                                    "Spans waiting for export.", LV_METRIC_GAUGE,
                                                    NULL, NULL, 0),
                                  NULL);
    lv_metrics_on_render(m, publish, ts);
    atomic_store_explicit(&sh->trace, ts, memory_order_release);
    return ts;
}

void lv_tracing_configure(struct lv_server_shared *sh, const struct lv_config *cfg)
{
    struct lv_trace_shared *ts = shared_make(sh);
    const struct lv_tracing_cfg *tc = &cfg->tracing;
    if (!tc->enabled || !tc->otlp)
        return; /* an exporter already running idles: requests check their config */
    struct lv_exporter_params p = {
        .url = tc->otlp,
        .tls_ca = tc->tls_ca,
        .service = tc->service,
        .batch = tc->batch,
        .queue = tc->queue,
        .flush_ms = tc->flush_ms,
        .timeout_ms = tc->timeout_ms,
    };
    ts->flush_ms = tc->timeout_ms;
    struct lv_exporter *ex = atomic_load_explicit(&ts->exporter, memory_order_acquire);
    if (ex) {
        if (lv_exporter_update(ex, &p) != 0)
            lv_warn("tracing: cannot use %s: the previous exporter settings stay", tc->otlp);
        return;
    }
    const char *err = NULL;
    ex = lv_exporter_start(&p, &err);
    if (!ex) {
        lv_warn("tracing: cannot export to %s: %s", tc->otlp, err ? err : "?");
        return;
    }
    atomic_store_explicit(&ts->exporter, ex, memory_order_release);
}

void lv_tracing_shutdown(struct lv_server_shared *sh)
{
    struct lv_trace_shared *ts = shared_of(sh);
    if (!ts)
        return;
    struct lv_exporter *ex = atomic_exchange_explicit(&ts->exporter, NULL, memory_order_acq_rel);
    if (ex) {
        publish(sh->metrics, ts);
        lv_exporter_stop(ex, ts->flush_ms ? ts->flush_ms : 5000);
    }
    lv_metrics_off_render(sh->metrics, publish, ts);
    atomic_store_explicit(&sh->trace, NULL, memory_order_release);
    free(ts);
}
