/*
 * exporter: sends finished spans to an OTLP/HTTP collector as JSON (README "Tracing").
 *
 * One exporter per process, shared by every worker loop. A worker hands a span over with
 * lv_exporter_submit, which copies it into a bounded queue under a short lock and never
 * waits: when the queue is full the span is dropped and counted. The exporter's own thread
 * (its own libuv loop) takes batches of up to `batch` spans, encodes them (trace/span) and
 * POSTs them to the collector over the project's upstream HTTP client (net/upstream: a pooled
 * keep-alive connection, TLS for https URLs). A batch that fails (connection refused, timeout,
 * a 429/5xx answer) is retried with exponential backoff and jitter up to a few times, then
 * dropped and counted; a 4xx other than 429 is not retried. A batch is sent when it is full or
 * when the oldest queued span has waited `flush_ms`.
 *
 * lv_exporter_stop flushes what is queued (bounded by its deadline), then joins the thread.
 *
 * The URL: http://host[:port][/path] or https://...; host a DNS name, an IPv4 literal or a
 * bracketed IPv6 literal; port 80 / 443 by default; path /v1/traces (OTLP/HTTP's default)
 * when the URL has none. https verifies the collector's certificate against its host name
 * (SNI = host) with the system's CAs or `tls_ca`. Connections are kept alive and reused.
 *
 * Retries: a batch is tried at most 3 times; between tries it waits 100 ms, then 200 ms
 * (doubling up to 5 s), each with equal jitter. New spans keep queueing meanwhile (and are
 * refused once the queue is full). Each failed try counts in export_failures; a batch given
 * up counts its spans in dropped_failed; a 2xx counts them in exported.
 *
 * A reload (lv_exporter_update): the queue size applies at once (a smaller queue keeps the
 * newest spans, the older ones count in dropped_full); url, tls_ca, service, batch, flush_ms
 * and timeout_ms apply from the next batch (a batch being retried finishes with the old ones;
 * a new url or tls_ca opens a new connection pool).
 *
 * After lv_exporter_stop began, lv_exporter_submit refuses spans (counted in dropped_full).
 */
#ifndef LV_TRACE_EXPORTER_H
#define LV_TRACE_EXPORTER_H

#include <stdbool.h>
#include <stdint.h>

#include "trace/span.h"

struct lv_exporter;

struct lv_exporter_params {
    const char *url;     /* http://host:port/path or https://...; required */
    const char *service; /* service.name; NULL: "levee" */
    uint32_t batch;      /* spans per POST; 0: 512 */
    uint32_t queue;      /* spans held at most; 0: 2048 */
    uint64_t flush_ms;   /* longest wait of a queued span; 0: 1000 */
    uint64_t timeout_ms; /* one POST (connect to answer); 0: 5000 */
    const char *tls_ca;  /* https: PEM CA bundle to trust; NULL: the system store */
};

/* Counters, read with lv_exporter_stats from any thread. */
struct lv_exporter_stats {
    uint64_t submitted;       /* spans accepted into the queue */
    uint64_t exported;        /* spans the collector accepted (2xx) */
    uint64_t dropped_full;    /* spans refused: the queue was full */
    uint64_t dropped_failed;  /* spans given up after their batch failed every try */
    uint64_t export_failures; /* POSTs that failed (each try counts) */
    uint64_t queued;          /* spans waiting now */
};

/** NULL if `url` can be used (see above), else a static text saying what is wrong. */
const char *lv_exporter_url_error(const char *url);

/** Starts the exporter thread; NULL (and *err set to a static text) on failure: a bad url,
 *  an unreadable tls_ca, no thread. */
struct lv_exporter *lv_exporter_start(const struct lv_exporter_params *p, const char **err);

/** New parameters (a reload): takes effect from the next batch (the queue size at once, see
 *  above). Returns 0, or -EINVAL (nothing changed) for parameters lv_exporter_start refuses. */
int lv_exporter_update(struct lv_exporter *ex, const struct lv_exporter_params *p);

/** Copies the span into the queue; false (and counted) when the queue is full. Any thread. */
bool lv_exporter_submit(struct lv_exporter *ex, const struct lv_trace_span *sp);

void lv_exporter_stats(const struct lv_exporter *ex, struct lv_exporter_stats *out);

/** Sends what is queued, waiting at most `deadline_ms`, then stops and frees the exporter.
 *  Spans still queued at the deadline are dropped and counted. NULL is accepted. */
void lv_exporter_stop(struct lv_exporter *ex, uint64_t deadline_ms);
/** lv_exporter_stop that also hands back the final counters (`final` may be NULL). */
void lv_exporter_stop_stats(struct lv_exporter *ex, uint64_t deadline_ms,
                            struct lv_exporter_stats *final);

#endif
