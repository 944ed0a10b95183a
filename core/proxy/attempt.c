
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/method.h"
#include "net/iobufs.h"
#include "obs/accesslog.h"
#include "policy/backoff.h"
#include "policy/retry.h"
#include "policy/retryplan.h"
#include "proxy/exchange.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "proxy/tunnel.h"
#include "script/hooks.h"

/* Upstream write queue above which we stop reading the client's body. */
#define UP_WRITE_HIGH (256 * 1024)

static void attempt_failed(struct lv_request *r, enum lv_outcome_kind kind, const char *detail);
static void on_up_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg);

static double ms_since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e6;
}

/* ---- upstream writes */

static void on_up_write(uv_write_t *req, int status)
{
    struct lv_upconn *uc = req->data;
    /* NULL once the request let go of the connection (or a tunnel took it) */
    struct lv_request *r = uc->on_read == on_up_read ? uc->read_arg : NULL;
    free(req); /* lv_iobufs_write's allocation */
    /* Errors show up on the read side too; here we only resume a body paused on a full
     * upstream queue. */
    if (status < 0 || !r || r->uc != uc || !lv_request_active(r) || r->body_done)
        return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&uc->tcp) < UP_WRITE_HIGH / 2)
        lv_reqbody_pump(r);
}

int lv_attempt_write(struct lv_request *r, const uv_buf_t *bufs, unsigned n)
{
    uv_buf_t sealed;
    for (unsigned i = 0; i < n; i++)
        r->uc->server->sent_bytes += bufs[i].len; /* levee_upstream_sent_bytes_total */
    if (r->uc->tls) {
        /* Upstream TLS: what goes out is the ciphertext of all of it. */
        if (lv_upconn_tls_wrap(r->uc, bufs, n) < 0)
            return UV_EPROTO;
        sealed = uv_buf_init(r->uc->tls_out.data, (unsigned)r->uc->tls_out.len);
        r->uc->tls_out.len = 0; /* the bytes stay valid until the next wrap: copied below */
        bufs = &sealed;
        n = 1;
    }
    return lv_iobufs_write((uv_stream_t *)&r->uc->tcp, bufs, n, on_up_write, r->uc);
}

size_t lv_attempt_queued(const struct lv_request *r)
{
    return r->uc ? uv_stream_get_write_queue_size((const uv_stream_t *)&r->uc->tcp) : 0;
}

bool lv_attempt_body_room(const struct lv_request *r)
{
    return lv_attempt_queued(r) < UP_WRITE_HIGH;
}

void lv_attempt_release(struct lv_request *r, bool reusable)
{
    if (r->phase == LV_REQ_CONNECTING)
        lv_upstream_cancel(&r->acq); /* a no-op for one already answered or cancelled */
    if (r->uc) {
        struct lv_upconn *uc = r->uc;
        r->uc = NULL;
        uc->server->inflight--;
        uc->read_arg = NULL;
        uc->on_read = NULL;
        if (reusable)
            lv_upconn_release(uc);
        else
            lv_upconn_discard(uc, false);
    }
    lv_request_clock_clear(r, LV_CLOCK_TRY);
}

/* ---- deadline */

uint64_t lv_attempt_time_left(const struct lv_request *r)
{
    uint64_t now = uv_now(r->s->loop), end = r->deadline_at_ms;
    return end > now ? end - now : 1;
}

void lv_attempt_start_deadline(struct lv_request *r)
{
    if (r->deadline_started)
        return;
    r->deadline_started = true;
    r->deadline_at_ms = uv_now(r->s->loop) + r->route->timeout_ms;
    lv_request_clock_set(r, LV_CLOCK_DEADLINE, r->route->timeout_ms);
}

/* An attempt's outcome for the log; `ms`: how long it took. */
static void record_try(struct lv_request *r, enum lv_outcome_kind kind, int status, double ms)
{
    if (r->ntries < LV_MAX_TRIES) {
        struct lv_try *t = &r->tries[r->ntries++];
        t->kind = kind;
        t->status = status;
        t->server = r->last_server ? r->last_server->name : NULL;
        t->ms = ms;
        unsigned k = r->fault_try.kinds;
        t->fault = k & (1u << LV_FAULT_ABORT)   ? "abort"
                   : k & (1u << LV_FAULT_RESET) ? "reset"
                   : k & (1u << LV_FAULT_DELAY) ? "delay"
                                                : NULL;
        memcpy(t->span_id, r->try_span, sizeof(t->span_id));
        t->start_ns = r->attempt_start_ns;
        t->verdict = -1;
        t->decision = -1;
        t->backoff_ms = 0;
    }
}

void lv_attempt_deadline(struct lv_request *r)
{
    assert(lv_request_active(r));
    if (r->head_sent) {
        /* The response is streaming: the deadline covers getting it, not reading it. */
        return;
    }
    r->flags |= LV_ACCESS_DEADLINE_EXCEEDED;
    r->retry_stop = LV_STOP_DEADLINE; /* the attempt under way (or the backoff) ran out of time */
    if (r->uc || r->phase == LV_REQ_CONNECTING)
        record_try(r, r->uc ? LV_OUT_TIMEOUT : LV_OUT_CONNECT_FAILURE, 0,
                   ms_since(r->attempt_start_ns));
    else if (r->phase == LV_REQ_FAULT_HOLD && r->attempt > 0)
        record_try(r, LV_OUT_TIMEOUT, 0, ms_since(r->attempt_start_ns)); /* an injected delay */
    lv_attempt_release(r, false);
    lv_request_fail(r, LV_GWERR_DEADLINE_EXCEEDED, NULL, -1, r->resp_close);
}

/* ---- classification and the retry decision */

uint64_t lv_attempt_rand(struct lv_request *r)
{
    uint64_t x = r->rng += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* The verdict on one attempt: the route's classify hook when it gives one, else retry.on. */
static enum lv_verdict classify(struct lv_request *r, struct lv_outcome o,
                                const struct lv_resphead *h, double attempt_ms,
                                uint64_t *hook_delay, bool *has_hook_delay)
{
    *has_hook_delay = false;
    const struct lv_route_cfg *rt = r->route;
    if (rt->classify_ref >= 0) {
        struct lv_hook_header rh[LV_HOOK_MAX_HEADERS];
        size_t nrh = 0;
        for (uint32_t i = 0; h && i < h->nfields && nrh < LV_HOOK_MAX_HEADERS; i++, nrh++) {
            rh[nrh].name = h->fields[i].name.p;
            rh[nrh].name_len = h->fields[i].name.len;
            rh[nrh].value = h->fields[i].value.p;
            rh[nrh].value_len = h->fields[i].value.len;
        }
        struct lv_hook_attempt a = {
            .status = o.kind == LV_OUT_STATUS ? o.status : 0,
            .error = o.kind == LV_OUT_STATUS ? NULL : lv_outcome_name(o.kind),
            .headers = rh,
            .nheaders = nrh,
            .duration_s = attempt_ms / 1000.0,
            .number = r->attempt,
            .route = rt->name,
            .method = lv_method_name(r->method),
            .path = r->target.data,
            .path_len = r->target.len,
            .req_headers = r->hook_req,
            .nreq_headers = r->nhook_req,
        };
        struct lv_buf err = LV_BUF_INIT;
        enum lv_verdict hv =
            lv_hook_classify(r->cfg, rt->classify_ref, &a, hook_delay, has_hook_delay, &err);
        if (hv == LV_VERDICT_NONE && err.len)
            lv_request_hook_failed(r, LV_REQ_HOOK_CLASSIFY, &err);
        lv_buf_dispose(&err);
        if (hv != LV_VERDICT_NONE)
            return hv;
        *has_hook_delay = false;
    }
    return lv_classify_default(rt->retry.on_errors, rt->retry.on_status, o);
}

/* Can the request be sent again? (the body is all in the replay buffer, or there is none) */
static bool can_replay(const struct lv_request *r)
{
    if (r->body_kind == LV_REQ_BODY_NONE)
        return true;
    return r->replay_valid && r->replay.len == r->body_in;
}

/*
 * An attempt ended with outcome `o` (h: its response head, for a status). Classifies it,
 * tells the breaker, and asks the one retry rule (policy/retry.c) whether to go again.
 * Returns true when a retry is planned (r->backoff_next_ms): the caller drops this result.
 */
static bool next_attempt(struct lv_request *r, struct lv_outcome o, const struct lv_resphead *h,
                         double attempt_ms)
{
    struct lv_route_state *rs = r->rs;
    const struct lv_retry_cfg *rc = &r->route->retry;
    uv_update_time(r->s->loop); /* the cached loop time may lag: the deadline rule needs now */
    uint64_t now = uv_now(r->s->loop);
    lv_server_count_attempt(r->s, rs, (int)o.kind, o.status);
    if (!r->up->attempt_duration) {
        const char *lu[] = {r->up->name, NULL};
        r->up->attempt_duration = lv_metric_series(r->s->m_attempt_duration, lu);
    }
    lv_metric_observe(r->up->attempt_duration, attempt_ms / 1000.0);

    uint64_t hook_delay = 0;
    bool has_hook_delay = false;
    enum lv_verdict v = classify(r, o, h, attempt_ms, &hook_delay, &has_hook_delay);
    if (r->ntries)
        r->tries[r->ntries - 1].verdict = (int8_t)v;
    if (v != LV_VERDICT_NONE)
        lv_breakergate_record(r, now, lv_verdict_is_failure(v), attempt_ms);
    if (v != LV_VERDICT_RETRY) {
        bool success = v != LV_VERDICT_FAIL && o.kind == LV_OUT_STATUS && o.status < 400;
        lv_request_retry_decided(r, success ? LV_STOP_SUCCESS : LV_STOP_VERDICT);
        return false;
    }

    const char *ra = NULL;
    size_t ra_len = 0;
    for (uint32_t i = 0; h && i < h->nfields; i++) {
        if (lv_field_name_eq(h->fields[i].name.p, h->fields[i].name.len, "retry-after")) {
            ra = h->fields[i].value.p;
            ra_len = h->fields[i].value.len;
        }
    }
    uv_timeval64_t tv = {0, 0};
    uv_gettimeofday(&tv);
    struct lv_retry_plan_in in = {
        .verdict = v,
        .outcome = o,
        .has_hook_delay = has_hook_delay,
        .hook_delay_ms = hook_delay,
        .retry_after = ra,
        .retry_after_len = ra_len,
        .now_unix_s = tv.tv_sec,
        .jitter = (int)rc->jitter,
        .base_ms = rc->backoff_base_ms,
        .max_ms = rc->backoff_max_ms,
        .attempts_made = (uint32_t)r->attempt,
        .max_attempts = rc->attempts,
        .prev_delay_ms = r->prev_delay_ms,
        .rand64 = lv_attempt_rand(r),
        .now_ms = now,
        .deadline_ms = r->deadline_at_ms,
        .try_timeout_ms = r->route->try_timeout_ms,
        .response_started = r->head_sent,
        .method = r->method,
        .has_idempotency_key = r->has_idem_key,
        .non_idempotent_allowed = rc->non_idempotent,
        .replayable = can_replay(r) && (!r->upgrade || o.kind == LV_OUT_CONNECT_FAILURE),
    };
    /* One hold of the route's lock from the budget check to the count, so workers deciding
     * at once cannot both take the last retry the budget allows (README "Workers"). The
     * offline simulation (`levee test`) makes the same call. */
    struct lv_retry_plan plan;
    lv_route_state_lock(rs);
    enum lv_retry_no no = lv_retry_plan(&in, &rs->budget, &plan);
    bool go = no == LV_RETRY_GO && lv_breakergate_admit_retry(r, now);
    /* Counted now, so retries waiting in backoff count against the budget. */
    if (go)
        lv_budget_on_retry(&rs->budget, now);
    lv_route_state_unlock(rs);
    uint64_t delay = plan.delay_ms, planned = plan.planned_ms;
    if (no == LV_RETRY_NO_BUDGET) {
        r->flags |= LV_ACCESS_BUDGET_EXHAUSTED;
        lv_metric_add(rs->budget_exhausted, 1);
    }
    lv_request_retry_decided(r, no != LV_RETRY_GO ? lv_retry_stop_of(no)
                                : go              ? LV_STOP_NONE
                                                  : LV_STOP_BREAKER_OPEN);
    if (!go)
        return false; /* no retry; or the breaker refused it: the client gets this result */
    r->prev_delay_ms = planned;
    r->backoff_ms += (double)delay;
    r->flags |= LV_ACCESS_RETRIED;
    lv_metric_add(rs->retries, 1);
    r->backoff_next_ms = delay;
    if (r->ntries)
        r->tries[r->ntries - 1].backoff_ms = delay;
    return true;
}

/* Wait out the backoff on the TRY clock, then the next attempt (lv_attempt_clock). Called
 * once the last attempt's connection was let go (lv_attempt_release clears that clock). */
static void start_backoff(struct lv_request *r)
{
    r->phase = LV_REQ_BACKOFF;
    lv_request_clock_set(r, LV_CLOCK_TRY, r->backoff_next_ms);
}

/* Replaying is safe (README, "Resilience policies"): nothing reached the upstream, or an
 * idempotent method, or an idempotency key on a route with idempotency on, or
 * retry.non_idempotent. The retry rule in policy/retry.c applies the same test; this copy
 * serves the stale-connection re-send only. */
static bool replay_safe(const struct lv_request *r, enum lv_outcome_kind kind)
{
    return kind == LV_OUT_CONNECT_FAILURE || lv_method_idempotent(r->method) || r->has_idem_key ||
           r->route->retry.non_idempotent;
}

/* The current attempt ended without a usable response head. */
static void attempt_failed(struct lv_request *r, enum lv_outcome_kind kind, const char *detail)
{
    bool was_reused = r->uc && r->uc->reused;
    bool got_bytes = r->ex.head.len > 0;
    double attempt_ms = ms_since(r->attempt_start_ns); /* one clock read for all below */
    record_try(r, kind, 0, attempt_ms);
    lv_attempt_release(r, false);
    r->head_written = false;
    /* A reused keep-alive connection the upstream had already closed: send once more on a
     * fresh connection, when replaying is safe (not counted as a retry). */
    if (was_reused && kind == LV_OUT_RESET && !got_bytes && !r->stale_resend_used &&
        replay_safe(r, kind) && can_replay(r)) {
        r->stale_resend_used = true;
        r->want_fresh = true;
        r->attempt--;
        lv_attempt_start(r);
        return;
    }
    if (kind != LV_OUT_CONNECT_FAILURE && !(r->fault_try.kinds & (1u << LV_FAULT_RESET)))
        lv_upstream_report(r->up, r->last_server,
                           kind == LV_OUT_RESET     ? LV_HEALTH_RESET
                           : kind == LV_OUT_TIMEOUT ? LV_HEALTH_TIMEOUT
                                                    : LV_HEALTH_PROTOCOL_ERROR);
    if (next_attempt(r, (struct lv_outcome){kind, 0}, NULL, attempt_ms)) {
        start_backoff(r);
        return;
    }
    if (kind == LV_OUT_TIMEOUT && uv_now(r->s->loop) >= r->deadline_at_ms) {
        r->flags |= LV_ACCESS_DEADLINE_EXCEEDED;
        lv_request_fail(r, LV_GWERR_DEADLINE_EXCEEDED, NULL, -1, r->resp_close);
    } else {
        lv_request_fail(r, lv_outcome_gwerr(kind), detail, -1, r->resp_close);
    }
}

/* ---- taking a connection and sending */

static void mark_tried(struct lv_request *r, const struct lv_upserver *s)
{
    size_t i = lv_upserver_index(s);
    if (i < 64)
        r->tried_servers |= (uint64_t)1 << i;
    if (r->acq.panic)
        r->flags |= LV_ACCESS_PANIC;
}

/* "[Host: server\r\n]Levee-Attempt: N\r\n\r\n", without printf (once per attempt). */
static int attempt_header(char *out, size_t cap, const char *host, int attempt)
{
    size_t n = 0;
    if (host) {
        size_t hl = strlen(host);
        assert(hl + 8 < cap - 40);
        memcpy(out, "Host: ", 6);
        memcpy(out + 6, host, hl);
        memcpy(out + 6 + hl, "\r\n", 2);
        n = hl + 8;
    }
    static const char k[] = "Levee-Attempt: ";
    memcpy(out + n, k, sizeof(k) - 1);
    n += sizeof(k) - 1;
    assert(attempt > 0);
    char digits[12];
    int nd = 0;
    for (unsigned v = (unsigned)attempt; v; v /= 10)
        digits[nd++] = (char)('0' + v % 10);
    while (nd)
        out[n++] = digits[--nd];
    memcpy(out + n, "\r\n\r\n", 4);
    return (int)(n + 4);
}

static void on_acquired(enum lv_acquire_error err, struct lv_upconn *uc, const char *detail,
                        void *arg)
{
    struct lv_request *r = arg;
    if (r->phase != LV_REQ_CONNECTING) {
        if (uc)
            lv_upconn_release(uc);
        return;
    }
    r->phase = LV_REQ_EXCHANGE;
    if (err != LV_ACQUIRE_OK) {
        if (err == LV_ACQUIRE_OVERFLOW || err == LV_ACQUIRE_QUEUE_TIMEOUT) {
            record_try(r, LV_OUT_NONE, 0, ms_since(r->attempt_start_ns));
            lv_request_fail(r, LV_GWERR_POOL_OVERFLOW, detail, 1, r->resp_close);
            return;
        }
        r->last_server = r->acq.server;
        mark_tried(r, r->acq.server);
        lv_upstream_report(r->up, r->acq.server, LV_HEALTH_CONNECT_FAILURE);
        lv_warn("route %s: connect to upstream %s failed: %s", r->route->name, r->up->name,
                detail ? detail : "?");
        attempt_failed(r, LV_OUT_CONNECT_FAILURE, detail);
        return;
    }
    r->uc = uc;
    r->last_server = uc->server;
    mark_tried(r, uc->server);
    uc->server->inflight++;
    uc->read_arg = r;
    lv_exchange_start(&r->ex, r->method == LV_METHOD_HEAD);
    r->ex.upgrade = r->upgrade;
    /* Head, attempt number, then the buffered body. */
    char attempt_hdr[160]; /* the server name is at most 79 bytes */
    int n = attempt_header(attempt_hdr, sizeof(attempt_hdr),
                           r->add_server_host ? uc->server->name : NULL, r->attempt);
    char trace_hdr[LV_TRACE_HEADER_MAX];
    size_t tn = lv_trace_header(r, trace_hdr);
    uv_buf_t b[4];
    unsigned nb = 0;
    b[nb++] = uv_buf_init(r->fwd.data, (unsigned)r->fwd.len);
    if (tn)
        b[nb++] = uv_buf_init(trace_hdr, (unsigned)tn);
    b[nb++] = uv_buf_init(attempt_hdr, (unsigned)n);
    char sz[24];
    lv_buf_reset(&r->out);
    if (r->body_kind != LV_REQ_BODY_NONE && r->replay.len) {
        if (r->body_kind == LV_REQ_BODY_CHUNKED) {
            int m = snprintf(sz, sizeof(sz), "%zx\r\n", r->replay.len);
            lv_buf_append(&r->out, sz, (size_t)m);
            lv_buf_append(&r->out, r->replay.data, r->replay.len);
            lv_buf_puts(&r->out, "\r\n");
        } else {
            lv_buf_append(&r->out, r->replay.data, r->replay.len);
        }
        b[nb++] = uv_buf_init(r->out.data, (unsigned)r->out.len);
        r->body_sent_any = true;
    }
    r->head_written = true;
    r->body_final_sent = false;
    if (lv_attempt_write(r, b, nb) < 0) {
        attempt_failed(r, LV_OUT_RESET, "write failed");
        return;
    }
    lv_upconn_read_start(uc, on_up_read, r);
    uint64_t try_to = r->route->try_timeout_ms;
    uint64_t left = lv_attempt_time_left(r);
    if (!try_to || try_to > left)
        try_to = left;
    lv_request_clock_set(r, LV_CLOCK_TRY, try_to);
    lv_reqbody_pump(r);
}

/* An injected abort: the attempt's outcome is its status, and nothing reached the upstream. */
static void fault_abort(struct lv_request *r)
{
    int status = r->fault_try.abort_status;
    double ms = ms_since(r->attempt_start_ns);
    r->last_server = NULL;
    record_try(r, LV_OUT_STATUS, status, ms);
    if (next_attempt(r, (struct lv_outcome){LV_OUT_STATUS, status}, NULL, ms)) {
        start_backoff(r);
        return;
    }
    r->error_status = status;
    lv_request_fail(r, LV_GWERR_FAULT_INJECTED, "abort", -1, r->resp_close);
}

/* The attempt goes: an injected abort or reset ends it here, else a connection is taken. */
static void attempt_go(struct lv_request *r)
{
    unsigned k = r->fault_try.kinds;
    if (k & (1u << LV_FAULT_ABORT)) {
        lv_fault_injected(r, LV_FAULT_ABORT);
        fault_abort(r);
        return;
    }
    if (k & (1u << LV_FAULT_RESET)) {
        lv_fault_injected(r, LV_FAULT_RESET);
        r->phase = LV_REQ_EXCHANGE;
        r->last_server = NULL;
        attempt_failed(r, LV_OUT_RESET, "reset fault injected");
        return;
    }
    r->phase = LV_REQ_CONNECTING;
    bool fresh = r->want_fresh || r->upgrade; /* an upgrade is never re-sent: no stale risk */
    r->want_fresh = false;
    /* A retry prefers a server not tried yet; the stale-connection resend goes to the same one. */
    lv_upstream_acquire(r->up, &r->acq, r->ntries ? r->last_server : NULL, r->tried_servers, fresh,
                        on_acquired, r);
}

void lv_attempt_start(struct lv_request *r)
{
    /* A delay the client gets holds the request before the policy's clocks start. */
    if (r->attempt == 0 && (r->fault_client.kinds & (1u << LV_FAULT_DELAY)) &&
        !r->fault_client_held) {
        r->fault_client_held = true;
        r->phase = LV_REQ_FAULT_HOLD;
        lv_request_clock_set(r, LV_CLOCK_TRY, r->fault_client.delay_ms);
        return;
    }
    lv_attempt_start_deadline(r);
    r->attempt++;
    r->attempt_start_ns = uv_hrtime();
    lv_trace_attempt(r);
    r->head_written = false;
    r->body_final_sent = false;
    lv_fault_draw_attempt(r);
    if (r->fault_try.kinds & (1u << LV_FAULT_DELAY)) {
        /* Held on the TRY clock; the route deadline runs on (the policy sees the delay). */
        lv_fault_injected(r, LV_FAULT_DELAY);
        r->phase = LV_REQ_FAULT_HOLD;
        lv_request_clock_set(r, LV_CLOCK_TRY, r->fault_try.delay_ms);
        return;
    }
    attempt_go(r);
}

void lv_attempt_clock(struct lv_request *r)
{
    if (r->phase == LV_REQ_ADMISSION) {
        lv_admitreq_clock(r);
        return;
    }
    if (r->phase == LV_REQ_BACKOFF) {
        lv_attempt_start(r);
        return;
    }
    if (r->phase == LV_REQ_FAULT_HOLD) {
        if (r->attempt == 0)
            lv_attempt_start(r); /* the client's delay is served */
        else
            attempt_go(r);
        return;
    }
    assert(r->phase == LV_REQ_EXCHANGE || r->phase == LV_REQ_RESPONDING);
    if (r->phase == LV_REQ_RESPONDING) {
        /* The upstream stalled in the middle of the body. */
        if (r->upstream_paused)
            return; /* we stopped reading it: the client's send timeout governs */
        lv_warn("route %s: upstream %s stalled mid-response", r->route->name,
                r->last_server ? r->last_server->name : "?");
        r->retry_stop = LV_STOP_RESPONSE_STARTED; /* broke after its head went out */
        lv_request_abort_client(r, LV_ACCESS_UPSTREAM_ABORT);
        return;
    }
    attempt_failed(r, LV_OUT_TIMEOUT, NULL);
}

/* ---- the response */

static void sink_interim(void *arg, const struct lv_resphead *h)
{
    lv_respout_interim(arg, h);
}

/* The final head: retried, or forwarded. */
static bool sink_head(void *arg, const struct lv_resphead *h)
{
    struct lv_request *r = arg;
    lv_request_clock_clear(r, LV_CLOCK_TRY);
    double upstream_ms = ms_since(r->attempt_start_ns);
    record_try(r, LV_OUT_STATUS, h->status, upstream_ms);
    lv_upstream_report(r->up, r->last_server, h->status >= 500 ? LV_HEALTH_5XX : LV_HEALTH_SUCCESS);
    if (next_attempt(r, (struct lv_outcome){LV_OUT_STATUS, h->status}, h, upstream_ms)) {
        /* This response is dropped: its connection cannot be reused with a body unread. */
        lv_attempt_release(r, false);
        start_backoff(r);
        return false;
    }
    r->phase = LV_REQ_RESPONDING;
    r->upstream_ms = upstream_ms;
    r->status = h->status;
    lv_idem_filter_capture_head(r, h);
    lv_respout_head(r, h);
    r->head_sent = true;
    return true;
}

static void sink_data(void *arg, const char *p, size_t n)
{
    lv_respout_data(arg, p, n);
}

static const struct lv_exchange_sink sink = {sink_interim, sink_head, sink_data};

static const char *server_name(const struct lv_request *r)
{
    return r->last_server ? r->last_server->name : "?";
}

void lv_attempt_resume(struct lv_request *r)
{
    if (r->upstream_paused && r->uc) {
        r->upstream_paused = false;
        lv_upconn_read_start(r->uc, on_up_read, r);
        /* the idle bound again: it did not run while we held the upstream back */
        lv_request_clock_set(r, LV_CLOCK_TRY, r->route->timeout_ms);
    }
}

static void response_done(struct lv_request *r)
{
    lv_respout_end(r);
    lv_request_finish(r);
}

static void on_up_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg)
{
    struct lv_request *r = arg;
    if (!r || !lv_request_active(r) || r->uc != uc)
        return;
    if (nread < 0) {
        if (!r->ex.started) {
            attempt_failed(r, LV_OUT_RESET,
                           nread == UV_EOF ? "upstream closed the connection"
                                           : uv_strerror((int)nread));
            return;
        }
        if (nread == UV_EOF && lv_exchange_eof(&r->ex) == LV_EXCHANGE_DONE) {
            response_done(r);
            return;
        }
        lv_warn("route %s: upstream %s: response truncated (%s)", r->route->name, server_name(r),
                uv_strerror((int)nread));
        r->retry_stop = LV_STOP_RESPONSE_STARTED; /* broke after its head went out */
        lv_request_abort_client(r, LV_ACCESS_UPSTREAM_ABORT);
        return;
    }
    uc->server->received_bytes += (uint64_t)nread; /* levee_upstream_received_bytes_total */
    bool in_body = r->ex.started;
    if (in_body) /* idle bound while streaming: the route timeout between two reads */
        lv_request_clock_set(r, LV_CLOCK_TRY, r->route->timeout_ms);
    enum lv_exchange_rc rc = lv_exchange_feed(&r->ex, data, (size_t)nread, &sink, r);
    if (r->ncpieces)
        lv_respout_flush(r); /* the pieces point into `data`: out before anything else */
    switch (rc) {
    case LV_EXCHANGE_MORE:
        if (r->ex.started && !in_body) /* the head came with this read: start the idle bound */
            lv_request_clock_set(r, LV_CLOCK_TRY, r->route->timeout_ms);
        break;
    case LV_EXCHANGE_DONE:
        response_done(r);
        return;
    case LV_EXCHANGE_LET_GO:
        break;
    case LV_EXCHANGE_UPGRADE:
        lv_tunnel_begin(r, r->ex.tail_p, r->ex.tail_n);
        return;
    case LV_EXCHANGE_BAD_HEAD:
        lv_warn("route %s: upstream %s sent an invalid response: %s", r->route->name,
                server_name(r), r->ex.reason);
        attempt_failed(r, LV_OUT_PROTOCOL_ERROR, r->ex.reason);
        return;
    case LV_EXCHANGE_BAD_BODY:
        lv_warn("route %s: upstream %s sent a broken body: %s", r->route->name, server_name(r),
                r->ex.reason);
        r->retry_stop = LV_STOP_RESPONSE_STARTED; /* broke after its head went out */
        lv_request_abort_client(r, LV_ACCESS_UPSTREAM_ABORT);
        return;
    }
    if (!lv_request_active(r))
        return;
    lv_respout_flush(r); /* interim heads, body bytes */
    if (r->phase == LV_REQ_RESPONDING && !r->ds->closed &&
        r->ds->write_queued >= LV_DOWNSTREAM_WRITE_HIGH && r->uc) {
        lv_upconn_read_stop(r->uc);
        r->upstream_paused = true;
    }
}
