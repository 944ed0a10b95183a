#include "proxy/request.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/method.h"
#include "http/fields.h"
#include "http/reqhead.h"
#include "http/tracectx.h"
#include "obs/accesslog.h"
#include "obs/devline.h"
#include "conf/router.h"
#include "proxy/generation.h"
#include "proxy/server.h"
#include "script/hooks.h"

/* Most header fields we look at in one head (the configured limit caps requests earlier). */
#define MAX_FIELDS 256
/* Idle request slots kept for reuse (per loop); beyond it a finished slot is freed, so idle
 * connections hold no request memory. */
#define POOL_MAX 64

/* ---- slots */

static void on_clock(uv_timer_t *t);

struct slot_pool {
    struct lv_request *slots[POOL_MAX];
    unsigned n;
};
static _Thread_local struct slot_pool pool;

static void slot_closed(uv_handle_t *h)
{
    struct lv_request *r = h->data;
    lv_buf_dispose(&r->target);
    lv_buf_dispose(&r->host);
    lv_buf_dispose(&r->fwd);
    lv_buf_dispose(&r->replay);
    lv_buf_dispose(&r->out);
    lv_buf_dispose(&r->cout);
    lv_buf_dispose(&r->resp_extra);
    lv_buf_dispose(&r->admit_key);
    lv_buf_dispose(&r->hook_head);
    free(r->hook_req);
    lv_exchange_dispose(&r->ex);
    lv_idem_filter_dispose(&r->idem);
    free(r);
}

/* The slot's one handle, its timer, closes first; the memory goes in its close callback. */
static void slot_free(struct lv_request *r)
{
    uv_close((uv_handle_t *)&r->timer, slot_closed);
}

/* ---- clocks */

static void clock_arm(struct lv_request *r)
{
    uint64_t first = 0;
    for (int i = 0; i < 3; i++)
        if (r->due[i] && (!first || r->due[i] < first))
            first = r->due[i];
    if (first && (!r->armed || first < r->armed)) {
        uint64_t now = uv_now(r->s->loop);
        uv_timer_start(&r->timer, on_clock, first > now ? first - now : 0, 0);
        r->armed = first;
    }
}

void lv_request_clock_set(struct lv_request *r, enum lv_req_clock which, uint64_t timeout_ms)
{
    r->due[which] = uv_now(r->s->loop) + timeout_ms;
    if (!r->due[which])
        r->due[which] = 1; /* 0 means "not set" */
    clock_arm(r);
}

/* The earliest due came (or one that has moved since): run the clocks that are due. */
static void on_clock(uv_timer_t *t)
{
    struct lv_request *r = t->data;
    r->armed = 0;
    if (!lv_request_active(r))
        return; /* a due of a request that ended (dues are cleared, the timer is not) */
    uint64_t now = uv_now(r->s->loop);
    if (r->due[LV_CLOCK_DEADLINE] && r->due[LV_CLOCK_DEADLINE] <= now) {
        r->due[LV_CLOCK_DEADLINE] = 0;
        lv_attempt_deadline(r);
        if (!lv_request_active(r))
            return;
    }
    if (r->due[LV_CLOCK_TRY] && r->due[LV_CLOCK_TRY] <= now) {
        r->due[LV_CLOCK_TRY] = 0;
        lv_attempt_clock(r);
        if (!lv_request_active(r))
            return;
    }
    if (r->due[LV_CLOCK_BODY] && r->due[LV_CLOCK_BODY] <= now) {
        r->due[LV_CLOCK_BODY] = 0;
        lv_reqbody_clock(r);
        if (!lv_request_active(r))
            return;
    }
    clock_arm(r);
}

struct lv_request *lv_request_get(struct lv_server *s, struct lv_downstream *ds)
{
    struct lv_request *r;
    if (pool.n) {
        r = pool.slots[--pool.n];
    } else {
        r = lv_xcalloc(1, sizeof(*r));
        uv_timer_init(s->loop, &r->timer);
        r->timer.data = r;
        r->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)r;
    }
    assert(r->phase == LV_REQ_IDLE);
    r->s = s;
    r->ds = ds;
    return r;
}

void lv_request_put(struct lv_request *r)
{
    assert(r->phase == LV_REQ_IDLE);
    r->ds = NULL;
    /* Big buffers are not kept for the next request: an idle slot stays small. */
    if (r->replay.cap > 64 * 1024)
        lv_buf_dispose(&r->replay);
    if (r->cout.cap > 64 * 1024)
        lv_buf_dispose(&r->cout);
    if (pool.n < POOL_MAX && !r->s->draining)
        pool.slots[pool.n++] = r;
    else
        slot_free(r);
}

void lv_request_pool_free(struct lv_server *s)
{
    (void)s;
    while (pool.n)
        slot_free(pool.slots[--pool.n]);
}

/* ---- the end */

static void log_request(struct lv_request *r)
{
    struct lv_server *s = r->s;
    double total_ms = (double)(uv_hrtime() - r->start_ns) / 1e6;
    lv_server_count_request(s, r->rs, r->status, total_ms / 1000.0);
    lv_trace_end(r); /* a tunnel's request span ends with its 101 */
    if (!s->access_on || (r->flags & LV_ACCESS_TUNNEL))
        return; /* a tunnel's line is written when it closes (proxy/tunnel.c) */
    struct lv_access_entry e;
    memset(&e, 0, sizeof(e));
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) == 0) /* now, less the request's duration: when it started */
        e.time = (double)tv.tv_sec + (double)tv.tv_usec / 1e6 - total_ms / 1000.0;
    e.request_id = lv_access_cstr(r->rid);
    char trace_hex[33], span_hex[17];
    if (r->traced) {
        lv_trace_hex(r->trace_id, sizeof(r->trace_id), trace_hex);
        lv_trace_hex(r->span_id, sizeof(r->span_id), span_hex);
        e.trace_id = trace_hex;
        e.span_id = span_hex;
    }
    e.client = r->ds->peer;
    e.method = lv_method_name(r->method);
    e.path = (struct lv_access_str){r->target.data, r->target.len};
    e.host = r->host.len ? (struct lv_access_str){r->host.data, r->host.len}
                         : (struct lv_access_str){NULL, 0};
    e.route = r->route ? r->route->name : NULL;
    e.upstream = r->ntries ? r->tries[r->ntries - 1].server : NULL;
    e.status = r->status;
    e.attempts = r->ntries;
    e.bytes_in = r->bytes_in;
    e.bytes_out = r->bytes_out;
    e.duration_ms = total_ms;
    e.upstream_ms = r->upstream_ms;
    e.error = r->error_token;
    e.retry_stop = r->retry_stop != LV_STOP_NONE ? lv_retry_stop_name(r->retry_stop) : NULL;
    e.flags = r->flags;
    e.backoff_ms = r->backoff_ms;
    e.ntries = (unsigned)(r->ntries < LV_ACCESS_MAX_TRIES ? r->ntries : LV_ACCESS_MAX_TRIES);
    for (unsigned i = 0; i < e.ntries; i++) {
        const struct lv_try *t = &r->tries[i];
        e.tries[i].status = t->kind == LV_OUT_STATUS ? t->status : 0;
        e.tries[i].error = t->kind == LV_OUT_STATUS ? "" : lv_outcome_name(t->kind);
        e.tries[i].server = t->server;
        e.tries[i].ms = t->ms;
        e.tries[i].fault = t->fault;
    }
    struct lv_buf line = LV_BUF_INIT;
    lv_accesslog_format_as(s->cfg->access_format == LV_ACCESS_FORMAT_CONSOLE, s->cfg->access_color,
                           &e, &line);
    lv_server_access_log(s, line.data, line.len);
    lv_buf_dispose(&line);
}

/* The one teardown, whatever the phase: everything the request holds is given back. */
static void teardown(struct lv_request *r, bool flush)
{
    assert(lv_request_active(r));
    lv_breakergate_drop_probe(r);
    lv_idem_filter_end(r);
    if (flush)
        lv_respout_flush(r);
    lv_attempt_release(r, false); /* no-op when already let go */
    r->phase = LV_REQ_IDLE;
    r->ncpieces = 0;
    r->cout_marked = 0;
    r->cout.len = 0;
    r->due[LV_CLOCK_DEADLINE] = r->due[LV_CLOCK_TRY] = r->due[LV_CLOCK_BODY] = 0;
    log_request(r);
    lv_admitreq_end(r); /* after the log: a bulkhead sample reads the final status */
    /* after the log: its tries name the upstream's servers, which the generation keeps */
    r->up = NULL;
    r->rs = NULL;
    r->store = NULL;
    r->route = NULL;
    r->cfg = NULL;
    lv_generation_unpin(r->gen);
    r->gen = NULL;
}

void lv_request_end(struct lv_request *r, bool close)
{
    struct lv_downstream *ds = r->ds;
    teardown(r, true);
    ds->ops->done(ds, close);
}

void lv_request_fail(struct lv_request *r, enum lv_gwerr err, const char *detail, int retry_after,
                     bool close)
{
    if (lv_idem_filter_locked(&r->idem)) {
        /* As a finished response waits for the store (lv_request_finish), the error waits
         * until the key is let go: the client's next try with it, through any worker or
         * gateway, then finds it free. */
        lv_attempt_release(r, false);
        lv_respout_error_format(r, err, detail, retry_after);
        r->resp_close = r->resp_close || close;
        r->idem.capture = false; /* an error is never stored */
        r->error_held = true;
        if (lv_idem_filter_finish(r))
            return; /* lv_request_finish_end writes it once settled */
        r->error_held = false;
        lv_ds_write(r->ds, r->out.data, r->out.len);
        lv_request_end(r, r->resp_close);
        return;
    }
    lv_respout_error(r, err, detail, retry_after);
    lv_request_end(r, close || r->resp_close);
}

void lv_request_finish_end(struct lv_request *r)
{
    if (r->error_held) { /* a gateway error that waited for the idempotency store */
        r->error_held = false;
        lv_ds_write(r->ds, r->out.data, r->out.len);
        lv_request_end(r, r->resp_close);
        return;
    }
    /* An unread request body leaves the connection's framing unknown: close it. */
    lv_request_end(r, r->resp_close || !r->client_keep_alive || !r->body_done);
}

void lv_request_finish(struct lv_request *r)
{
    lv_attempt_release(r, r->ex.reusable && r->body_final_sent);
    if (lv_idem_filter_finish(r))
        return; /* the store settles first; then lv_request_finish_end */
    lv_request_finish_end(r);
}

void lv_request_abort_client(struct lv_request *r, unsigned log_flag)
{
    /* What was received goes out, then the connection closes without completing the
     * message (no last chunk, or fewer bytes than Content-Length): the client sees it broke. */
    r->flags |= log_flag;
    lv_request_end(r, true);
}

void lv_request_client_gone(struct lv_request *r)
{
    if (!lv_request_active(r))
        return;
    r->flags |= LV_ACCESS_CLIENT_ABORT;
    if (!r->status)
        r->status = 499;
    teardown(r, false);
}

void lv_request_client_eof(struct lv_request *r)
{
    /* The client closed its side before any response byte: it is gone (as nginx treats it),
     * so the upstream request is abandoned and an idempotency key is released at once. Once
     * the response streams, a half-close only means the client sent everything. */
    if (!r->body_done || !r->head_sent)
        r->ds->ops->abort(r->ds);
}

void lv_request_client_data(struct lv_request *r)
{
    /* While admission control waits, body bytes stay in the input (its reading pauses when
     * it is full): the body is read once the request is let through. */
    if (lv_request_active(r) && r->phase != LV_REQ_ADMISSION)
        lv_reqbody_client_data(r);
}

void lv_request_client_drained(struct lv_request *r)
{
    if (lv_request_active(r))
        lv_attempt_resume(r);
}

struct lv_hook_request lv_request_hook_view(const struct lv_request *r)
{
    return (struct lv_hook_request){
        .method = lv_method_name(r->method),
        .path = r->target.data,
        .path_len = r->target.len,
        .headers = r->hook_req,
        .nheaders = r->nhook_req,
        .route = r->route->name,
        .request_id = r->rid,
    };
}

void lv_request_retry_decided(struct lv_request *r, enum lv_retry_stop stop)
{
    r->retry_stop = stop;
    if (r->ntries)
        r->tries[r->ntries - 1].decision = (int8_t)stop;
    lv_route_state_count_decision(r->s->routes, r->rs, stop);
}

void lv_request_hook_failed(struct lv_request *r, enum lv_req_hook which, const struct lv_buf *err)
{
    r->flags |= LV_ACCESS_HOOK_ERROR;
    static const char *const hook_names[] = {"classify", "fallback", "key"};
    enum lv_hook_failure kind = lv_hook_last_failure(r->cfg);
    /* At most one log line per route per second: a broken hook must not flood the log. */
    if (lv_route_state_hook_failed(r->s->routes, r->rs, (int)which, hook_names[which], (int)kind,
                                   lv_hook_failure_name(kind), uv_now(r->s->loop))) {
        static const char *const what[] = {"classify", "fallback", "idempotency key"};
        lv_warn("route %s: %s hook failed (counted as no hook): %.*s", r->route->name, what[which],
                (int)err->len, err->data ? err->data : "");
    }
}

/* ---- the beginning */

static enum lv_gwerr status_to_err(int status)
{
    switch (status) {
    case 405:
        return LV_GWERR_METHOD_NOT_ALLOWED;
    case 413:
        return LV_GWERR_BODY_TOO_LARGE;
    case 414:
        return LV_GWERR_URI_TOO_LONG;
    case 417:
        return LV_GWERR_EXPECTATION_FAILED;
    case 431:
        return LV_GWERR_HEADER_TOO_LARGE;
    case 501:
        return LV_GWERR_NOT_IMPLEMENTED;
    case 505:
        return LV_GWERR_VERSION_NOT_SUPPORTED;
    default:
        return LV_GWERR_BAD_REQUEST;
    }
}

/* Hooks may read the request's headers after its head left the input buffer: keep a copy
 * (only on routes that have a hook). */
static void keep_hook_headers(struct lv_request *r, const struct lv_reqhead *h, const char *base)
{
    lv_buf_reset(&r->hook_head);
    lv_buf_append(&r->hook_head, base,
                  h->fields && h->nfields ? (size_t)(h->fields[h->nfields - 1].value.p +
                                                     h->fields[h->nfields - 1].value.len - base)
                                          : 0);
    if (!r->hook_req)
        r->hook_req = lv_xcalloc(LV_HOOK_MAX_HEADERS, sizeof(*r->hook_req));
    size_t n = h->nfields < LV_HOOK_MAX_HEADERS ? h->nfields : LV_HOOK_MAX_HEADERS;
    for (size_t i = 0; i < n; i++) {
        const struct lv_field *f = &h->fields[i];
        r->hook_req[i].name = r->hook_head.data + (f->name.p - base);
        r->hook_req[i].name_len = f->name.len;
        r->hook_req[i].value = r->hook_head.data + (f->value.p - base);
        r->hook_req[i].value_len = f->value.len;
    }
    r->nhook_req = n;
}

static void put_cstr(struct lv_buf *b, const char *p, size_t n)
{
    lv_buf_reset(b);
    lv_buf_append(b, p, n);
    lv_buf_putc(b, '\0');
    b->len--;
}

/* Every per-request field, in one place: a slot carries nothing from its last request but
 * buffer capacity and its random state. */
static void reset(struct lv_request *r, const struct lv_reqhead *h)
{
    r->route = NULL;
    r->rs = NULL;
    r->up = NULL;
    r->store = NULL;
    r->method = h->method;
    r->http10 = h->minor == 0;
    r->client_keep_alive = h->keep_alive;
    r->expect_continue = h->expect_continue && !r->http10;
    r->upgrade = false;        /* decided once routed */
    r->start_ns = uv_hrtime(); /* the wall-clock start is derived from it when logged */
    r->start_ms = uv_now(r->s->loop);
    if (h->request_id.len) {
        memcpy(r->rid, h->request_id.p, h->request_id.len);
        r->rid[h->request_id.len] = '\0';
    } else {
        lv_server_request_id(r->s, r->rid);
    }
    put_cstr(&r->target, h->target.p, h->target.len);
    put_cstr(&r->host, h->host.p, h->host.len);
    r->add_server_host = false;
    /* body */
    r->body_kind = h->chunked                                       ? LV_REQ_BODY_CHUNKED
                   : h->has_content_length && h->content_length > 0 ? LV_REQ_BODY_LENGTH
                                                                    : LV_REQ_BODY_NONE;
    r->body_cl = h->content_length;
    r->body_in = 0;
    r->body_done = r->body_kind == LV_REQ_BODY_NONE;
    lv_buf_reset(&r->replay);
    r->replay_valid = true;
    r->body_sent_any = false;
    r->body_final_sent = false;
    r->body_held = false;
    r->body_mark = 0;
    /* attempts */
    r->attempt = 0;
    r->stale_resend_used = false;
    r->want_fresh = false;
    r->head_written = false;
    r->upstream_paused = false;
    r->probe = false;
    r->has_idem_key = false;
    r->uc = NULL;
    r->last_server = NULL;
    r->tried_servers = 0;
    r->deadline_started = false;
    r->deadline_at_ms = r->start_ms;
    r->prev_delay_ms = 0;
    r->backoff_next_ms = 0;
    r->backoff_ms = 0;
    r->ntries = 0; /* r->ex is reset by each attempt (lv_exchange_start) */
    /* response */
    r->status = 0;
    r->head_sent = false;
    r->resp_rechunk = false;
    r->resp_close = false;
    r->bytes_out = 0;
    r->upstream_ms = -1;
    r->ncpieces = 0;
    r->cout_marked = 0;
    r->cout.len = 0;
    r->resp_extra.len = 0;
    r->nhook_req = 0;
    r->idem.state = LV_IDEMF_OFF;
    r->idem.capture = false;
    r->error_held = false;
    r->error_status = 0;
    r->serial++;
    r->head_len = 0;
    r->admit_op = NULL;
    r->bh_queued = false;
    r->bh_slot = false;
    r->fault_client = (struct lv_fault_hit){0};
    r->fault_try = (struct lv_fault_hit){0};
    r->fault_client_held = false;
    /* log */
    r->flags = 0;
    r->retry_stop = LV_STOP_NONE;
    r->error_token = NULL;
    r->bytes_in = 0;
    r->traced = false;
}

void lv_request_begin(struct lv_request *r, size_t head_len)
{
    struct lv_downstream *ds = r->ds;
    struct lv_server *s = r->s;
    assert(r->phase == LV_REQ_IDLE);
    struct lv_field fields[MAX_FIELDS];
    struct lv_reqhead h;
    uint32_t maxf =
        s->cfg->limits.header_count < MAX_FIELDS ? s->cfg->limits.header_count : MAX_FIELDS;
    int st = lv_reqhead_parse(&h, ds->in.data, head_len, fields, maxf);
    if (st != 0) {
        ds->ops->refuse(ds, st, status_to_err(st), h.reason);
        return;
    }

    /* A request from here on: pin the generation it starts under. */
    r->phase = LV_REQ_CONNECTING; /* not idle; the stages set the real phase below */
    r->gen = lv_server_generation(s);
    lv_generation_pin(r->gen);
    r->cfg = r->gen->cfg;
    reset(r, &h);
    lv_trace_begin(r, &h);

    int refuse = -1; /* enum lv_gwerr */
    const char *why = NULL;
    if (!lv_path_safe(h.path.p, h.path.len)) {
        refuse = LV_GWERR_BAD_REQUEST;
        why = "path has %00 or a dot segment";
    } else if (h.expect_other) {
        refuse = LV_GWERR_EXPECTATION_FAILED;
    } else if (r->body_kind == LV_REQ_BODY_LENGTH && r->body_cl > s->cfg->limits.body_size) {
        refuse = LV_GWERR_BODY_TOO_LARGE; /* known too large up front: not read */
    }
    if (refuse >= 0) {
        lv_buf_consume(&ds->in, head_len);
        lv_request_fail(r, (enum lv_gwerr)refuse, why, -1, true);
        return;
    }

    /* Route on the parsed head (path without the query, host without the port). */
    char hostbuf[256];
    size_t hostlen = 0;
    int port = -1;
    hostbuf[0] = '\0';
    if (r->host.len)
        lv_host_split(r->host.data, r->host.len, hostbuf, sizeof(hostbuf), &hostlen, &port);
    r->route = lv_router_match(r->cfg, r->method, h.path.p, h.path.len, hostbuf, hostlen);
    if (!r->route) {
        lv_buf_consume(&ds->in, head_len);
        lv_request_fail(r, LV_GWERR_NO_ROUTE, NULL, -1, false);
        return;
    }
    struct lv_fwdhead_in fi = {
        .h = &h,
        .method = lv_method_name(r->method),
        .host = r->host.data,
        .host_len = r->host.len,
        .client = ds->peer,
        .https = ds->tls,
        .http10 = r->http10,
        .request_id = r->rid,
        .body = r->body_kind,
        .content_length = r->body_cl,
        .trace = r->traced,
        .tracestate = r->trace_continued,
    };
    r->upgrade =
        lv_fwdhead_upgrade_allowed(&h, r->body_kind, r->route->upgrade, r->route->nupgrade);
    if (r->upgrade)
        fi.upgrade = h.upgrade;
    r->add_server_host = lv_fwdhead_build(&r->fwd, &fi);
    size_t ri = lv_generation_route_index(r->gen, r->route);
    r->rs = lv_generation_route_state(r->gen, ri);
    r->up = lv_generation_upstream(r->gen, ri);
    r->store = lv_generation_store(r->gen, ri);
    if (r->route->classify_ref >= 0 || r->route->fallback_ref >= 0 ||
        r->route->idempotency.key_ref >= 0 || r->route->rate_limit.key_ref >= 0)
        keep_hook_headers(r, &h, ds->in.data);
    /* Faults the client gets come before the policy: it never sees them. */
    char fault_why[160];
    enum lv_fault_answer fa = lv_fault_begin(r, &h, fault_why, sizeof(fault_why));
    if (fa != LV_FAULT_GO) {
        lv_buf_consume(&ds->in, head_len);
        lv_fault_answer(r, fa, fault_why);
        return;
    }
    /* Admission control (README "Admission control"): the rate limit, then the bulkhead. */
    r->head_len = head_len;
    if (lv_admitreq_begin(r, &h) == LV_ADMIT_GO)
        lv_request_admitted(r, &h);
}

void lv_request_admitted(struct lv_request *r, const struct lv_reqhead *hp)
{
    struct lv_downstream *ds = r->ds;
    size_t head_len = r->head_len;
    struct lv_field fields[MAX_FIELDS];
    struct lv_reqhead reparsed;
    if (!hp) { /* it waited: its head is still where it was, and parsed before */
        uint32_t maxf =
            r->cfg->limits.header_count < MAX_FIELDS ? r->cfg->limits.header_count : MAX_FIELDS;
        int st = lv_reqhead_parse(&reparsed, ds->in.data, head_len, fields, maxf);
        assert(st == 0);
        (void)st;
        hp = &reparsed;
    }
    r->phase = LV_REQ_CONNECTING; /* not idle; the stages set the real phase below */
    r->head_len = 0;
    bool keyed_ok = lv_idem_filter_begin(r, hp); /* reads the head's fields */
    /* The head leaves the input before any answer: the downstream serves what follows it. */
    lv_buf_consume(&ds->in, head_len);
    if (!keyed_ok)
        return; /* answered (and closing) */
    /* Idempotency comes before the breaker (README "Admission control"): a keyed request
     * meets the breaker once the store has let it through, as a replay needs no upstream. */
    if (r->idem.state == LV_IDEMF_OFF && !lv_request_gate(r))
        return;
    ds->ops->consumed(ds);
    lv_reqbody_begin(r);
}

bool lv_request_gate(struct lv_request *r)
{
    /* One hold of the route's lock: the budget counts the request, the breaker admits it
     * (README "Workers"). */
    uint64_t left_ms = 0;
    lv_route_state_lock(r->rs);
    lv_budget_on_request(&r->rs->budget, r->start_ms);
    bool admitted = lv_breakergate_admit(r, &left_ms);
    lv_route_state_unlock(r->rs);
    if (!admitted)
        lv_breakergate_reject(r, left_ms);
    return admitted;
}
