/*
 * exporter: the span queue shared by every worker and the thread that sends it to an OTLP/HTTP
 * collector in batches (see exporter.h; README "Tracing").
 *
 * Workers touch only the queue (a ring under `lock`) and the atomic counters. The exporter
 * thread owns everything else: its loop, the timers, the HTTP client (trace/otlphttp), the
 * batch being sent and the parameters in force. It takes spans out of the ring one at a time
 * (a short hold of the lock each) and encodes them into the batch's body, which it keeps
 * until the batch is exported or given up.
 */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "base/buf.h"
#include "base/log.h"
#include "base/rand.h"
#include "trace/exporter.h"
#include "trace/otlphttp.h"

#define DEFAULT_BATCH      512
#define DEFAULT_QUEUE      2048
#define DEFAULT_FLUSH_MS   1000
#define DEFAULT_TIMEOUT_MS 5000
/* Largest batch and queue accepted (a queue of 1 Mi spans is about 1.7 GB). */
#define MAX_BATCH 65536
#define MAX_QUEUE (1u << 20)
/* Tries per batch, and the backoff between them: 100 ms doubling up to 5 s, equal jitter. */
#define MAX_TRIES       3
#define BACKOFF_BASE_MS 100
#define BACKOFF_MAX_MS  5000
#define LOG_INTERVAL_MS 10000

/* Parameters with defaults applied; strings owned. */
struct params {
    char *url;
    char *service;
    char *tls_ca; /* NULL: the system store */
    uint32_t batch, queue;
    uint64_t flush_ms, timeout_ms;
};

struct lv_exporter {
    pthread_mutex_t lock;
    /* ---- under lock */
    struct lv_trace_span *ring;
    uint64_t *ring_at; /* when each span was queued (monotonic ms) */
    uint32_t cap, head, count;
    uint32_t wake_batch; /* the batch size in force: a submit that fills one wakes the thread */
    bool accepting;
    bool stop_req;
    uint64_t stop_deadline; /* monotonic ms */
    struct params *pending; /* new parameters for the thread, or NULL */
    /* ---- any thread */
    atomic_uint_fast64_t submitted, exported, dropped_full, dropped_failed, export_failures, queued;
    /* ---- the exporter thread */
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t async;
    uv_timer_t timer;    /* the flush wait, or the backoff between tries */
    uv_timer_t deadline; /* lv_exporter_stop's deadline */
    struct params cur;
    struct lv_otlp_client *client;
    struct lv_buf body; /* the batch being sent, encoded */
    uint32_t body_spans;
    int tries;
    bool posting, backing_off, stopping, closing;
    uint64_t rng;
    uint64_t last_log_ms;
    uint64_t unlogged_drops;
    struct lv_trace_span scratch; /* a span taken out of the ring, being encoded */
};

static uint64_t mono_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void params_free(struct params *p)
{
    if (!p)
        return;
    free(p->url);
    free(p->service);
    free(p->tls_ca);
    free(p);
}

static struct params *params_new(const struct lv_exporter_params *p)
{
    struct params *q = lv_xcalloc(1, sizeof(*q));
    q->url = lv_xstrdup(p->url);
    q->service = lv_xstrdup(p->service ? p->service : "levee");
    q->tls_ca = p->tls_ca ? lv_xstrdup(p->tls_ca) : NULL;
    q->batch = p->batch ? p->batch : DEFAULT_BATCH;
    q->queue = p->queue ? p->queue : DEFAULT_QUEUE;
    q->flush_ms = p->flush_ms ? p->flush_ms : DEFAULT_FLUSH_MS;
    q->timeout_ms = p->timeout_ms ? p->timeout_ms : DEFAULT_TIMEOUT_MS;
    if (q->batch > MAX_BATCH)
        q->batch = MAX_BATCH;
    if (q->queue > MAX_QUEUE)
        q->queue = MAX_QUEUE;
    if (q->batch > q->queue)
        q->batch = q->queue; /* a batch can never be bigger than the queue */
    return q;
}

/* NULL if the parameters can be used, else what is wrong. */
static const char *params_error(const struct lv_exporter_params *p)
{
    if (!p)
        return "no parameters";
    const char *e = lv_exporter_url_error(p->url);
    if (e)
        return e;
    if (p->tls_ca && access(p->tls_ca, R_OK) != 0)
        return "tls_ca: cannot read the file";
    return NULL;
}

const char *lv_exporter_url_error(const char *url)
{
    struct lv_otlp_url u;
    const char *err = lv_otlp_url_parse(url, &u);
    if (!err)
        lv_otlp_url_free(&u);
    return err;
}

/* ---- submitting (any thread) */

bool lv_exporter_submit(struct lv_exporter *ex, const struct lv_trace_span *sp)
{
    uint64_t now = mono_ms();
    pthread_mutex_lock(&ex->lock);
    if (!ex->accepting || ex->count >= ex->cap) {
        pthread_mutex_unlock(&ex->lock);
        atomic_fetch_add_explicit(&ex->dropped_full, 1, memory_order_relaxed);
        return false;
    }
    uint32_t i = ex->head + ex->count;
    if (i >= ex->cap)
        i -= ex->cap;
    memcpy(&ex->ring[i], sp, sizeof(*sp));
    ex->ring_at[i] = now;
    ex->count++;
    atomic_store_explicit(&ex->queued, ex->count, memory_order_relaxed);
    /* Wake the thread when it has something new to do: arm the flush wait for the first span,
     * send a full batch. Otherwise it is already waiting on its timer or sending. */
    bool wake = ex->count == 1 || ex->count == ex->wake_batch;
    pthread_mutex_unlock(&ex->lock);
    atomic_fetch_add_explicit(&ex->submitted, 1, memory_order_relaxed);
    if (wake)
        uv_async_send(&ex->async);
    return true;
}

void lv_exporter_stats(const struct lv_exporter *ex, struct lv_exporter_stats *out)
{
    struct lv_exporter *e = (struct lv_exporter *)ex;
    out->submitted = atomic_load_explicit(&e->submitted, memory_order_relaxed);
    out->exported = atomic_load_explicit(&e->exported, memory_order_relaxed);
    out->dropped_full = atomic_load_explicit(&e->dropped_full, memory_order_relaxed);
    out->dropped_failed = atomic_load_explicit(&e->dropped_failed, memory_order_relaxed);
    out->export_failures = atomic_load_explicit(&e->export_failures, memory_order_relaxed);
    out->queued = atomic_load_explicit(&e->queued, memory_order_relaxed);
}

/* ---- the exporter thread */

static void pump(struct lv_exporter *ex);

/* A failed batch's drop is logged at most once per LOG_INTERVAL_MS (with the count since). */
static void log_drop(struct lv_exporter *ex, uint32_t n, const char *why)
{
    ex->unlogged_drops += n;
    uint64_t now = mono_ms();
    if (ex->last_log_ms && now - ex->last_log_ms < LOG_INTERVAL_MS)
        return;
    lv_warn("tracing: %llu span%s dropped: the collector at %s failed (%s)",
            (unsigned long long)ex->unlogged_drops, ex->unlogged_drops == 1 ? "" : "s", ex->cur.url,
            why);
    ex->last_log_ms = now;
    ex->unlogged_drops = 0;
}

static void batch_done(struct lv_exporter *ex)
{
    ex->body.len = 0;
    ex->body_spans = 0;
    ex->tries = 0;
}

static void batch_drop(struct lv_exporter *ex, const char *why)
{
    atomic_fetch_add_explicit(&ex->dropped_failed, ex->body_spans, memory_order_relaxed);
    log_drop(ex, ex->body_spans, why);
    batch_done(ex);
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
}

/* Everything sent or given up: close the handles; uv_run then returns in thread_main. */
static void finish_stop(struct lv_exporter *ex)
{
    if (ex->closing)
        return;
    ex->closing = true;
    if (ex->unlogged_drops) {
        ex->last_log_ms = 0; /* the last word: not held back */
        log_drop(ex, 0, "stopped before they were sent");
    }
    uv_timer_stop(&ex->timer);
    uv_timer_stop(&ex->deadline);
    uv_close((uv_handle_t *)&ex->async, on_closed);
    uv_close((uv_handle_t *)&ex->timer, on_closed);
    uv_close((uv_handle_t *)&ex->deadline, on_closed);
    lv_otlp_client_free(ex->client);
    ex->client = NULL;
}

/* Applies parameters a reload handed over (between batches only). */
static void apply_params(struct lv_exporter *ex, struct params *p)
{
    bool new_url = !ex->cur.url || strcmp(ex->cur.url, p->url) != 0 ||
                   (ex->cur.tls_ca == NULL) != (p->tls_ca == NULL) ||
                   (p->tls_ca && strcmp(ex->cur.tls_ca, p->tls_ca) != 0);
    free(ex->cur.url);
    free(ex->cur.service);
    free(ex->cur.tls_ca);
    ex->cur = *p;
    free(p); /* its strings now belong to ex->cur */
    if (new_url || !ex->client) {
        lv_otlp_client_free(ex->client);
        ex->client = NULL;
        struct lv_otlp_url u;
        if (lv_otlp_url_parse(ex->cur.url, &u) == NULL) {
            ex->client = lv_otlp_client_new(&ex->loop, &u, ex->cur.tls_ca, ex->cur.timeout_ms);
            lv_otlp_url_free(&u);
        }
    }
}

static void send_batch(struct lv_exporter *ex);

static void on_backoff_done(uv_timer_t *t)
{
    struct lv_exporter *ex = t->data;
    ex->backing_off = false;
    send_batch(ex);
}

static uint64_t backoff_ms(struct lv_exporter *ex, int tries)
{
    uint64_t d = BACKOFF_BASE_MS;
    for (int i = 1; i < tries && d < BACKOFF_MAX_MS; i++)
        d *= 2;
    if (d > BACKOFF_MAX_MS)
        d = BACKOFF_MAX_MS;
    /* Equal jitter: half fixed, half random. */
    return d / 2 + lv_rand_next(&ex->rng) % (d / 2 + 1);
}

static void on_post_done(void *arg, int status, const char *why)
{
    struct lv_exporter *ex = arg;
    ex->posting = false;
    if (status >= 200 && status < 300) {
        atomic_fetch_add_explicit(&ex->exported, ex->body_spans, memory_order_relaxed);
        batch_done(ex);
        pump(ex);
        return;
    }
    atomic_fetch_add_explicit(&ex->export_failures, 1, memory_order_relaxed);
    char text[64];
    if (status) {
        snprintf(text, sizeof(text), "HTTP %d", status);
        why = text;
    }
    bool retryable = status == 0 || status == 429 || status >= 500;
    ex->tries++;
    if (!retryable || ex->tries >= MAX_TRIES) {
        batch_drop(ex, why ? why : "failed");
        pump(ex);
        return;
    }
    uint64_t delay = backoff_ms(ex, ex->tries);
    if (ex->stopping) {
        /* Stopping: no wait past the deadline (the deadline timer gives up the batch). */
        uint64_t now = mono_ms();
        uint64_t left = ex->stop_deadline > now ? ex->stop_deadline - now : 0;
        if (delay > left)
            delay = left;
    }
    ex->backing_off = true;
    uv_timer_start(&ex->timer, on_backoff_done, delay, 0);
}

static void send_batch(struct lv_exporter *ex)
{
    if (!ex->client) {
        /* Cannot happen with a URL that passed lv_exporter_url_error; count it as a failure. */
        atomic_fetch_add_explicit(&ex->export_failures, 1, memory_order_relaxed);
        batch_drop(ex, "bad url");
        pump(ex);
        return;
    }
    ex->posting = true;
    lv_otlp_post(ex->client, ex->body.data, ex->body.len, ex->cur.timeout_ms, on_post_done, ex);
}

/* Takes up to a batch of spans out of the ring and encodes them. */
static void take_batch(struct lv_exporter *ex)
{
    batch_done(ex);
    lv_tspan_encode_begin(&ex->body, ex->cur.service);
    while (ex->body_spans < ex->cur.batch) {
        pthread_mutex_lock(&ex->lock);
        if (ex->count == 0) {
            pthread_mutex_unlock(&ex->lock);
            break;
        }
        memcpy(&ex->scratch, &ex->ring[ex->head], sizeof(ex->scratch));
        ex->head = ex->head + 1 == ex->cap ? 0 : ex->head + 1;
        ex->count--;
        atomic_store_explicit(&ex->queued, ex->count, memory_order_relaxed);
        pthread_mutex_unlock(&ex->lock);
        lv_tspan_encode_span(&ex->body, &ex->scratch, ex->body_spans == 0);
        ex->body_spans++;
    }
    lv_tspan_encode_end(&ex->body);
}

static void on_flush_timer(uv_timer_t *t)
{
    pump(t->data);
}

/* Decides what to do next: nothing (a POST or a backoff is under way), send a batch (full,
 * its oldest span waited flush_ms, or stopping), arm the flush wait, or finish stopping. */
static void pump(struct lv_exporter *ex)
{
    if (ex->closing || ex->posting || ex->backing_off)
        return;
    pthread_mutex_lock(&ex->lock);
    struct params *p = ex->pending;
    ex->pending = NULL;
    uint32_t n = ex->count;
    uint64_t oldest = n ? ex->ring_at[ex->head] : 0;
    pthread_mutex_unlock(&ex->lock);
    if (p) {
        apply_params(ex, p);
        pthread_mutex_lock(&ex->lock);
        ex->wake_batch = ex->cur.batch;
        pthread_mutex_unlock(&ex->lock);
    }
    if (n == 0) {
        uv_timer_stop(&ex->timer);
        if (ex->stopping)
            finish_stop(ex);
        return;
    }
    uint64_t now = mono_ms();
    uint64_t due = oldest + ex->cur.flush_ms;
    if (n >= ex->cur.batch || ex->stopping || now >= due) {
        uv_timer_stop(&ex->timer);
        take_batch(ex);
        if (ex->body_spans == 0) {
            pump(ex);
            return;
        }
        send_batch(ex);
        return;
    }
    uv_timer_start(&ex->timer, on_flush_timer, due - now, 0);
}

/* lv_exporter_stop's deadline: give up the batch under way and whatever is queued. */
static void on_deadline(uv_timer_t *t)
{
    struct lv_exporter *ex = t->data;
    if (ex->posting) {
        lv_otlp_cancel(ex->client);
        ex->posting = false;
        atomic_fetch_add_explicit(&ex->export_failures, 1, memory_order_relaxed);
    }
    if (ex->backing_off) {
        uv_timer_stop(&ex->timer);
        ex->backing_off = false;
    }
    if (ex->body_spans)
        batch_drop(ex, "stopped before the collector answered");
    pthread_mutex_lock(&ex->lock);
    uint32_t left = ex->count;
    ex->head = 0;
    ex->count = 0;
    atomic_store_explicit(&ex->queued, 0, memory_order_relaxed);
    pthread_mutex_unlock(&ex->lock);
    if (left) {
        atomic_fetch_add_explicit(&ex->dropped_failed, left, memory_order_relaxed);
        log_drop(ex, left, "stopped before they were sent");
    }
    finish_stop(ex);
}

static void on_async(uv_async_t *a)
{
    struct lv_exporter *ex = a->data;
    if (ex->closing)
        return;
    pthread_mutex_lock(&ex->lock);
    bool stop = ex->stop_req && !ex->stopping;
    uint64_t deadline = ex->stop_deadline;
    pthread_mutex_unlock(&ex->lock);
    if (stop) {
        uint64_t now = mono_ms();
        uv_timer_start(&ex->deadline, on_deadline, deadline > now ? deadline - now : 0, 0);
        if (ex->backing_off && ex->tries > 0) {
            /* No backoff wait past the deadline: cut the one under way short to fit. */
            uint64_t due = uv_timer_get_due_in(&ex->timer);
            uint64_t left = deadline > now ? deadline - now : 0;
            if (due > left)
                uv_timer_start(&ex->timer, on_backoff_done, left, 0);
        }
        ex->stopping = true;
    }
    pump(ex);
}

static void thread_main(void *arg)
{
    struct lv_exporter *ex = arg;
    pump(ex); /* applies the first parameters */
    uv_run(&ex->loop, UV_RUN_DEFAULT);
}

static bool ring_alloc(uint32_t cap, struct lv_trace_span **ring, uint64_t **at)
{
    *ring = calloc(cap, sizeof(**ring));
    *at = calloc(cap, sizeof(**at));
    if (!*ring || !*at) {
        free(*ring);
        free(*at);
        return false;
    }
    return true;
}

struct lv_exporter *lv_exporter_start(const struct lv_exporter_params *p, const char **err)
{
    const char *e = params_error(p);
    if (e) {
        if (err)
            *err = e;
        return NULL;
    }
    struct lv_exporter *ex = lv_xcalloc(1, sizeof(*ex));
    struct params *q = params_new(p);
    if (!ring_alloc(q->queue, &ex->ring, &ex->ring_at)) {
        params_free(q);
        free(ex);
        if (err)
            *err = "out of memory for the span queue";
        return NULL;
    }
    pthread_mutex_init(&ex->lock, NULL);
    ex->cap = q->queue;
    ex->wake_batch = q->batch;
    ex->accepting = true;
    ex->pending = q;
    ex->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)ex ^ 0x9E3779B97F4A7C15ULL;
    if (ex->rng == 0)
        ex->rng = 1;
    if (uv_loop_init(&ex->loop) != 0)
        goto fail_loop;
    uv_async_init(&ex->loop, &ex->async, on_async);
    ex->async.data = ex;
    uv_timer_init(&ex->loop, &ex->timer);
    ex->timer.data = ex;
    uv_timer_init(&ex->loop, &ex->deadline);
    ex->deadline.data = ex;
    if (uv_thread_create(&ex->thread, thread_main, ex) != 0) {
        uv_close((uv_handle_t *)&ex->async, NULL);
        uv_close((uv_handle_t *)&ex->timer, NULL);
        uv_close((uv_handle_t *)&ex->deadline, NULL);
        uv_run(&ex->loop, UV_RUN_DEFAULT);
        uv_loop_close(&ex->loop);
        goto fail_loop;
    }
    return ex;
fail_loop:
    params_free(ex->pending);
    free(ex->ring);
    free(ex->ring_at);
    pthread_mutex_destroy(&ex->lock);
    free(ex);
    if (err)
        *err = "cannot start the exporter thread";
    return NULL;
}

int lv_exporter_update(struct lv_exporter *ex, const struct lv_exporter_params *p)
{
    if (!ex || params_error(p))
        return -EINVAL;
    struct params *q = params_new(p);
    /* A new queue size applies now: the newest spans are kept, up to the new size (the older
     * ones count as dropped_full). The rest applies from the next batch. */
    struct lv_trace_span *ring = NULL;
    uint64_t *at = NULL;
    pthread_mutex_lock(&ex->lock);
    uint32_t cap = ex->cap;
    pthread_mutex_unlock(&ex->lock);
    if (q->queue != cap && !ring_alloc(q->queue, &ring, &at))
        q->queue = cap; /* no memory for the new one: keep the old size */
    pthread_mutex_lock(&ex->lock);
    if (ring && !ex->stop_req) {
        uint32_t keep = ex->count < q->queue ? ex->count : q->queue;
        uint32_t skip = ex->count - keep;
        for (uint32_t k = 0; k < keep; k++) {
            uint32_t i = (ex->head + skip + k) % ex->cap;
            memcpy(&ring[k], &ex->ring[i], sizeof(*ring));
            at[k] = ex->ring_at[i];
        }
        struct lv_trace_span *old_ring = ex->ring;
        uint64_t *old_at = ex->ring_at;
        ex->ring = ring;
        ex->ring_at = at;
        ex->cap = q->queue;
        ex->head = 0;
        ex->count = keep;
        atomic_store_explicit(&ex->queued, keep, memory_order_relaxed);
        if (skip)
            atomic_fetch_add_explicit(&ex->dropped_full, skip, memory_order_relaxed);
        ring = old_ring;
        at = old_at;
    }
    struct params *old = ex->pending;
    ex->pending = q;
    pthread_mutex_unlock(&ex->lock);
    free(ring);
    free(at);
    params_free(old);
    uv_async_send(&ex->async);
    return 0;
}

void lv_exporter_stop(struct lv_exporter *ex, uint64_t deadline_ms)
{
    lv_exporter_stop_stats(ex, deadline_ms, NULL);
}

void lv_exporter_stop_stats(struct lv_exporter *ex, uint64_t deadline_ms,
                            struct lv_exporter_stats *final)
{
    if (!ex)
        return;
    pthread_mutex_lock(&ex->lock);
    ex->accepting = false;
    ex->stop_req = true;
    ex->stop_deadline = mono_ms() + deadline_ms;
    pthread_mutex_unlock(&ex->lock);
    uv_async_send(&ex->async);
    uv_thread_join(&ex->thread);
    uv_loop_close(&ex->loop);
    if (final)
        lv_exporter_stats(ex, final);
    free(ex->cur.url);
    free(ex->cur.service);
    free(ex->cur.tls_ca);
    params_free(ex->pending);
    lv_buf_dispose(&ex->body);
    free(ex->ring);
    free(ex->ring_at);
    pthread_mutex_destroy(&ex->lock);
    free(ex);
}
