#include "testing/sim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "base/gwerr.h"
#include "base/method.h"
#include "conf/router.h"
#include "http/fields.h"
#include "obs/accesslog.h"
#include "policy/budget.h"
#include "policy/retryplan.h"
#include "script/hooks.h"
#include "store/idem.h"

/* The gateway hands hooks at most this many request headers (proxy/request.h). */
#define SIM_MAX_HOOK_HEADERS 64

/* A response kept for an idempotency key (the memory store's entry, store/memstore.c). */
struct sim_idem {
    struct sim_idem *next;
    char *key;
    uint8_t fp[LV_IDEM_FP_LEN];
    int status;
    char *head; /* end-to-end header lines */
    size_t head_len;
    char *body;
    size_t body_len;
    uint64_t expires;
};

/* What the gateway keeps by route name (proxy/routestate.h), for one route. */
struct sim_route {
    struct lv_budget budget;
    struct lv_breaker breaker;
    bool has_breaker;
    struct sim_idem *keys;
};

struct lv_sim {
    struct lv_config *cfg;
    struct sim_route *routes; /* parallel to cfg->routes */
    uint64_t now;             /* virtual ms */
    uint64_t rng;
    int64_t unix0; /* wall clock at creation: HTTP-date Retry-After is read against it */
};

static void idem_free(struct sim_idem *e)
{
    free(e->key);
    free(e->head);
    free(e->body);
    free(e);
}

/* Drops the keys whose ttl has passed. */
static void idem_sweep(struct sim_route *sr, uint64_t now)
{
    for (struct sim_idem **p = &sr->keys; *p;) {
        struct sim_idem *e = *p;
        if (e->expires <= now) {
            *p = e->next;
            idem_free(e);
        } else {
            p = &e->next;
        }
    }
}

/* Mirrors lv_route_state_configure (proxy/routestate.c) for a fresh state. */
static void route_init(struct sim_route *sr, const struct lv_route_cfg *r, uint64_t now)
{
    const struct lv_retry_cfg *rc = &r->retry;
    lv_budget_init(&sr->budget, rc->budget_ratio, rc->budget_min_per_second, rc->budget_window_ms,
                   now);
    const struct lv_breaker_cfg *bc = &r->breaker;
    struct lv_breaker_params p = lv_breaker_cfg_params(bc);
    sr->has_breaker = bc->enabled;
    if (bc->enabled)
        lv_breaker_init(&sr->breaker, &p, now);
}

struct lv_sim *lv_sim_new(struct lv_config *cfg, uint64_t seed)
{
    struct lv_sim *s = lv_xcalloc(1, sizeof(*s));
    lv_config_pin(cfg);
    s->cfg = cfg;
    s->rng = seed;
    s->unix0 = (int64_t)time(NULL);
    s->routes = lv_xcalloc(cfg->nroutes ? cfg->nroutes : 1, sizeof(*s->routes));
    for (size_t i = 0; i < cfg->nroutes; i++)
        route_init(&s->routes[i], &cfg->routes[i], s->now);
    return s;
}

void lv_sim_free(struct lv_sim *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->cfg->nroutes; i++) {
        while (s->routes[i].keys) {
            struct sim_idem *e = s->routes[i].keys;
            s->routes[i].keys = e->next;
            idem_free(e);
        }
    }
    free(s->routes);
    lv_config_unpin(s->cfg);
    free(s);
}

struct lv_config *lv_sim_config(const struct lv_sim *s)
{
    return s->cfg;
}

uint64_t lv_sim_now(const struct lv_sim *s)
{
    return s->now;
}

void lv_sim_advance(struct lv_sim *s, uint64_t ms)
{
    s->now += ms;
    for (size_t i = 0; i < s->cfg->nroutes; i++)
        idem_sweep(&s->routes[i], s->now);
}

void lv_sim_result_dispose(struct lv_sim_result *r)
{
    free(r->tries);
    r->tries = NULL;
    lv_buf_dispose(&r->head);
    lv_buf_dispose(&r->body);
    lv_buf_dispose(&r->hook_errors);
}

/* ---- one request */

/* A request in progress: the fields of struct lv_request (proxy/request.h) the policy reads. */
struct run {
    struct lv_sim *s;
    const struct lv_sim_request *rq;
    struct lv_sim_result *out;
    const struct lv_route_cfg *route;
    struct sim_route *sr;
    int method;
    int attempt; /* attempts started, first included */
    bool probe;  /* the breaker admitted the current attempt as a half-open probe */
    bool has_idem_key;
    char *idem_key;
    uint8_t fp[LV_IDEM_FP_LEN];
    uint64_t deadline_at;
    uint64_t prev_delay_ms;
};

static void add_field(struct lv_buf *b, const char *name, const char *value, size_t vlen)
{
    lv_buf_puts(b, name);
    lv_buf_puts(b, ": ");
    lv_buf_append(b, value, vlen);
    lv_buf_puts(b, "\r\n");
}

/* lv_request_fail: levee answers by itself (proxy/errresp.c: Levee-Error, Retry-After). */
static void answer_error(struct run *u, enum lv_gwerr err, int retry_after_s)
{
    const struct lv_gwerr_info *e = lv_gwerr_info(err);
    struct lv_sim_result *o = u->out;
    o->status = e->status;
    o->error = e->token;
    lv_buf_reset(&o->head);
    lv_buf_reset(&o->body);
    add_field(&o->head, "Content-Type", "application/json", 16);
    add_field(&o->head, "Levee-Error", e->token, strlen(e->token));
    if (retry_after_s < 0 && e->retry_after)
        retry_after_s = 1;
    if (retry_after_s >= 0) {
        char ra[16];
        int n = snprintf(ra, sizeof(ra), "%d", retry_after_s);
        add_field(&o->head, "Retry-After", ra, (size_t)n);
    }
    lv_buf_printf(&o->body, "{\"error\":\"%s\",\"route\":", e->token);
    if (u->route) {
        lv_buf_putc(&o->body, '"');
        lv_buf_json_escape(&o->body, u->route->name, strlen(u->route->name));
        lv_buf_putc(&o->body, '"');
    } else {
        lv_buf_puts(&o->body, "null");
    }
    lv_buf_printf(&o->body, ",\"message\":\"%s\"}", e->message);
    /* A probe that ends without an outcome gives its slot back (lv_breakergate_drop_probe). */
    if (u->probe && u->sr && u->sr->has_breaker)
        lv_breaker_release_probe(&u->sr->breaker);
    u->probe = false;
}

static void hook_failed(struct run *u, const char *what, const struct lv_buf *err)
{
    u->out->flags |= LV_ACCESS_HOOK_ERROR;
    lv_buf_printf(&u->out->hook_errors, "%s hook failed (counted as no hook): %.*s\n", what,
                  (int)err->len, err->data ? err->data : "");
}

static struct lv_hook_request hook_view(const struct run *u)
{
    const struct lv_sim_request *rq = u->rq;
    return (struct lv_hook_request){
        .method = lv_method_name(u->method),
        .path = rq->path,
        .path_len = strlen(rq->path),
        .headers = rq->headers,
        .nheaders = rq->nheaders < SIM_MAX_HOOK_HEADERS ? rq->nheaders : SIM_MAX_HOOK_HEADERS,
        .route = u->route->name,
        .request_id = NULL,
    };
}

/* Splits a complete HTTP/1.1 response (a fallback hook's) into status, header lines and body. */
static void take_response(struct lv_sim_result *o, const char *p, size_t n)
{
    lv_buf_reset(&o->head);
    lv_buf_reset(&o->body);
    const char *end = p + n;
    const char *eol = memchr(p, '\n', n);
    if (!eol)
        return;
    const char *line = eol + 1;
    while (line < end) {
        const char *e = memchr(line, '\n', (size_t)(end - line));
        if (!e)
            break;
        size_t len = (size_t)(e - line);
        if (len && line[len - 1] == '\r')
            len--;
        if (len == 0) {
            lv_buf_append(&o->body, e + 1, (size_t)(end - e - 1));
            return;
        }
        lv_buf_append(&o->head, line, len);
        lv_buf_puts(&o->head, "\r\n");
        line = e + 1;
    }
}

/* Mirrors lv_breakergate_reject (proxy/breakergate.c): the fallback hook, else 503. */
static void breaker_reject(struct run *u, uint64_t left_ms)
{
    struct lv_sim_result *o = u->out;
    o->flags |= LV_ACCESS_BREAKER_OPEN;
    o->retry_stop = LV_STOP_BREAKER_OPEN;
    if (u->route->fallback_ref >= 0) {
        struct lv_hook_request hr = hook_view(u);
        hr.close = false;
        struct lv_buf err = LV_BUF_INIT, resp = LV_BUF_INIT;
        int status = 0;
        if (lv_hook_fallback(u->s->cfg, u->route->fallback_ref, &hr, "breaker-open", &resp, &status,
                             &err) == 0) {
            o->flags |= LV_ACCESS_FALLBACK;
            o->status = status;
            take_response(o, resp.data, resp.len);
            lv_buf_dispose(&resp);
            lv_buf_dispose(&err);
            return;
        }
        if (err.len)
            hook_failed(u, "fallback", &err);
        lv_buf_dispose(&err);
        lv_buf_dispose(&resp);
    }
    answer_error(u, LV_GWERR_BREAKER_OPEN, (int)((left_ms + 999) / 1000));
}

/* Mirrors lv_idem_filter_begin (proxy/idemfilter.c): 1 keyed, 0 not keyed, -1 answered. */
static bool key_valid(const char *p, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] == 0x7f)
            return false;
    return true;
}

static int idem_begin(struct run *u)
{
    const struct lv_idem_cfg *ic = &u->route->idempotency;
    const struct lv_sim_request *rq = u->rq;
    if (!ic->enabled || !(ic->methods & LV_METHOD_BIT(u->method)))
        return 0;
    struct lv_buf key = LV_BUF_INIT;
    int have = -1;
    if (ic->key_ref >= 0) {
        struct lv_hook_request hr = hook_view(u);
        struct lv_buf err = LV_BUF_INIT;
        int rc = lv_hook_idem_key(u->s->cfg, ic->key_ref, &hr, &key, &err);
        if (rc < 0) {
            hook_failed(u, "idempotency key", &err);
            lv_buf_reset(&key);
        }
        lv_buf_dispose(&err);
        have = rc < 0 ? -1 : rc == 1 && key.len > 0 ? 1 : 0;
    }
    if (have < 0) {
        have = 0;
        const struct lv_hook_header *h = NULL;
        size_t hl = strlen(ic->header);
        for (size_t i = 0; i < rq->nheaders; i++)
            if (rq->headers[i].name_len == hl &&
                strncasecmp(rq->headers[i].name, ic->header, hl) == 0)
                h = &rq->headers[i];
        if (h) {
            if (!key_valid(h->value, h->value_len)) {
                lv_buf_dispose(&key);
                answer_error(u, LV_GWERR_IDEMPOTENCY_KEY_INVALID, -1);
                return -1;
            }
            lv_buf_append(&key, h->value, h->value_len);
            have = 1;
        }
    }
    if (!have) {
        lv_buf_dispose(&key);
        if (!ic->required)
            return 0;
        answer_error(u, LV_GWERR_IDEMPOTENCY_KEY_REQUIRED, -1);
        return -1;
    }
    if (rq->body_len > u->route->retry.buffer) {
        lv_buf_dispose(&key);
        answer_error(u, LV_GWERR_BODY_TOO_LARGE, -1);
        return -1;
    }
    u->idem_key = lv_xstrndup(key.data, key.len);
    lv_buf_dispose(&key);
    u->has_idem_key = true;
    return 1;
}

/* The lookup (lv_idem_begin on the memory store): 1 go on, 0 answered (replay or mismatch). */
static int idem_lookup(struct run *u)
{
    const char *m = lv_method_name(u->method);
    lv_idem_fingerprint(m, strlen(m), u->rq->path, strlen(u->rq->path), u->rq->body,
                        u->rq->body_len, u->fp);
    idem_sweep(u->sr, u->s->now);
    for (struct sim_idem *e = u->sr->keys; e; e = e->next) {
        if (strcmp(e->key, u->idem_key) != 0)
            continue;
        if (memcmp(e->fp, u->fp, LV_IDEM_FP_LEN) != 0) {
            answer_error(u, LV_GWERR_IDEMPOTENCY_MISMATCH, -1);
            return 0;
        }
        /* replay (proxy/idemfilter.c): the stored response, marked */
        struct lv_sim_result *o = u->out;
        o->status = e->status;
        lv_buf_reset(&o->head);
        lv_buf_append(&o->head, e->head, e->head_len);
        add_field(&o->head, "Idempotent-Replayed", "true", 4);
        lv_buf_reset(&o->body);
        if (u->method != LV_METHOD_HEAD)
            lv_buf_append(&o->body, e->body, e->body_len);
        o->flags |= LV_ACCESS_IDEMPOTENT_REPLAY;
        /* the breaker admitted the request; it ends without an attempt */
        if (u->probe && u->sr->has_breaker)
            lv_breaker_release_probe(&u->sr->breaker);
        u->probe = false;
        return 0;
    }
    return 1;
}

/* lv_idem_filter_capture_* and _finish: a final response below 500 is kept for ttl. */
static void idem_store(struct run *u)
{
    const struct lv_idem_cfg *ic = &u->route->idempotency;
    struct lv_sim_result *o = u->out;
    if (!u->has_idem_key || o->error || o->status >= 500 || o->body.len > ic->max_body)
        return;
    struct sim_idem *e = lv_xcalloc(1, sizeof(*e));
    e->key = lv_xstrdup(u->idem_key);
    memcpy(e->fp, u->fp, LV_IDEM_FP_LEN);
    e->status = o->status;
    e->head = lv_xstrndup(o->head.data ? o->head.data : "", o->head.len);
    e->head_len = o->head.len;
    e->body = lv_xstrndup(o->body.data ? o->body.data : "", o->body.len);
    e->body_len = o->body.len;
    e->expires = u->s->now + ic->ttl_ms;
    e->next = u->sr->keys;
    u->sr->keys = e;
}

static uint64_t rand64(struct lv_sim *s)
{
    uint64_t x = s->rng += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static struct lv_sim_try *add_try(struct run *u)
{
    struct lv_sim_result *o = u->out;
    o->tries = lv_xrealloc(o->tries, (o->ntries + 1) * sizeof(*o->tries));
    struct lv_sim_try *t = &o->tries[o->ntries++];
    memset(t, 0, sizeof(*t));
    return t;
}

/* Mirrors classify() in proxy/attempt.c: the classify hook when it gives a verdict, else
 * retry.on (lv_classify_default). */
static enum lv_verdict classify(struct run *u, const struct lv_sim_outcome *sc, struct lv_outcome o,
                                uint64_t attempt_ms, uint64_t *hook_delay, bool *has_hook_delay)
{
    *has_hook_delay = false;
    const struct lv_route_cfg *rt = u->route;
    if (rt->classify_ref >= 0) {
        bool st = o.kind == LV_OUT_STATUS;
        struct lv_hook_attempt a = {
            .status = st ? o.status : 0,
            .error = st ? NULL : lv_outcome_name(o.kind),
            .headers = st ? sc->headers : NULL,
            .nheaders = st ? sc->nheaders : 0,
            .duration_s = (double)attempt_ms / 1000.0,
            .number = u->attempt,
            .route = rt->name,
            .method = lv_method_name(u->method),
            .path = u->rq->path,
            .path_len = strlen(u->rq->path),
            .req_headers = u->rq->headers,
            .nreq_headers =
                u->rq->nheaders < SIM_MAX_HOOK_HEADERS ? u->rq->nheaders : SIM_MAX_HOOK_HEADERS,
        };
        struct lv_buf err = LV_BUF_INIT;
        enum lv_verdict hv =
            lv_hook_classify(u->s->cfg, rt->classify_ref, &a, hook_delay, has_hook_delay, &err);
        if (hv == LV_VERDICT_NONE && err.len)
            hook_failed(u, "classify", &err);
        lv_buf_dispose(&err);
        if (hv != LV_VERDICT_NONE)
            return hv;
        *has_hook_delay = false;
    }
    return lv_classify_default(rt->retry.on_errors, rt->retry.on_status, o);
}

/* Mirrors lv_breakergate_admit_retry (proxy/breakergate.c). */
static bool admit_retry(struct run *u, uint64_t now)
{
    if (!u->sr->has_breaker)
        return true;
    uint64_t left = 0;
    enum lv_breaker_admit ad = lv_breaker_admit(&u->sr->breaker, now, &left);
    if (ad == LV_BREAKER_REJECT) {
        u->out->flags |= LV_ACCESS_BREAKER_OPEN;
        return false;
    }
    u->probe = ad == LV_BREAKER_PROBE;
    return true;
}

/*
 * Mirrors next_attempt() in proxy/attempt.c, step for step: classify, tell the breaker, the
 * delay and the one retry rule (lv_retry_plan: lv_retry_delay, lv_retry_decide with
 * lv_budget_can_retry), the breaker's admission of the retry, the budget's count. Returns true when
 * a retry is planned
 * (*delay_out).
 */
static bool next_attempt(struct run *u, const struct lv_sim_outcome *sc, struct lv_outcome o,
                         uint64_t attempt_ms, struct lv_sim_try *t, uint64_t *delay_out)
{
    struct lv_sim *s = u->s;
    const struct lv_retry_cfg *rc = &u->route->retry;
    uint64_t now = s->now;
    uint64_t hook_delay = 0;
    bool has_hook_delay = false;
    enum lv_verdict v = classify(u, sc, o, attempt_ms, &hook_delay, &has_hook_delay);
    t->verdict = v;
    /* lv_breakergate_record */
    if (v != LV_VERDICT_NONE && u->sr->has_breaker) {
        struct lv_breaker *b = &u->sr->breaker;
        lv_breaker_record(b, now, lv_verdict_is_failure(v), lv_breaker_is_slow(b, attempt_ms),
                          u->probe);
        u->probe = false;
    }
    if (v != LV_VERDICT_RETRY) {
        bool success = v != LV_VERDICT_FAIL && o.kind == LV_OUT_STATUS && o.status < 400;
        u->out->retry_stop = success ? LV_STOP_SUCCESS : LV_STOP_VERDICT;
        return false;
    }

    const char *ra = NULL;
    size_t ra_len = 0;
    for (size_t i = 0; o.kind == LV_OUT_STATUS && i < sc->nheaders; i++) {
        if (lv_field_name_eq(sc->headers[i].name, sc->headers[i].name_len, "retry-after")) {
            ra = sc->headers[i].value;
            ra_len = sc->headers[i].value_len;
        }
    }
    /* lv_retry_delay, then lv_retry_decide with lv_budget_can_retry (policy/retryplan.h) */
    struct lv_retry_plan_in pi = {
        .verdict = v,
        .outcome = o,
        .has_hook_delay = has_hook_delay,
        .hook_delay_ms = hook_delay,
        .retry_after = ra,
        .retry_after_len = ra_len,
        .now_unix_s = s->unix0 + (int64_t)(now / 1000),
        .jitter = (int)rc->jitter,
        .base_ms = rc->backoff_base_ms,
        .max_ms = rc->backoff_max_ms,
        .attempts_made = (uint32_t)u->attempt,
        .max_attempts = rc->attempts,
        .prev_delay_ms = u->prev_delay_ms,
        .rand64 = rand64(s),
        .now_ms = now,
        .deadline_ms = u->deadline_at,
        .try_timeout_ms = u->route->try_timeout_ms,
        .response_started = false,
        .method = u->method,
        .has_idempotency_key = u->has_idem_key,
        .non_idempotent_allowed = rc->non_idempotent,
        .replayable = u->rq->body_len <= rc->buffer,
    };
    struct lv_retry_plan plan;
    enum lv_retry_no no = lv_retry_plan(&pi, &u->sr->budget, &plan);
    uint64_t delay = plan.delay_ms, planned = plan.planned_ms;
    bool go = no == LV_RETRY_GO && admit_retry(u, now);
    if (go)
        lv_budget_on_retry(&u->sr->budget, now);
    if (no == LV_RETRY_NO_BUDGET)
        u->out->flags |= LV_ACCESS_BUDGET_EXHAUSTED;
    u->out->retry_stop = no != LV_RETRY_GO ? lv_retry_stop_of(no)
                         : go              ? LV_STOP_NONE
                                           : LV_STOP_BREAKER_OPEN;
    if (!go)
        return false;
    u->prev_delay_ms = planned;
    u->out->flags |= LV_ACCESS_RETRIED;
    *delay_out = delay;
    return true;
}

/* The attempts, from lv_attempt_start to the answer: 0 done, -1 the script ran out. */
static int attempts(struct run *u, struct lv_buf *err)
{
    struct lv_sim *s = u->s;
    struct lv_sim_result *o = u->out;
    for (;;) {
        u->attempt++;
        if (o->used >= u->rq->nscript) {
            lv_buf_printf(err,
                          "the upstream script ran out: route %s wants attempt %d, but only %zu "
                          "outcome(s) were given",
                          u->route->name, u->attempt, u->rq->nscript);
            return -1;
        }
        const struct lv_sim_outcome *sc = &u->rq->script[o->used++];
        struct lv_sim_try *t = add_try(u);
        t->at_ms = s->now;
        t->kind = sc->kind;
        t->status = sc->kind == LV_OUT_STATUS ? sc->status : 0;
        /* How long it takes: as scripted; a timeout takes try_timeout; an answer later than
         * try_timeout is a timeout (the try clock of on_acquired in proxy/attempt.c). */
        uint64_t try_to = u->route->try_timeout_ms;
        uint64_t d = sc->has_time ? sc->time_ms : 0;
        if (sc->kind == LV_OUT_TIMEOUT)
            d = try_to ? try_to : u->route->timeout_ms;
        uint64_t conn_to = u->route->upstream ? u->route->upstream->connect_timeout_ms : 0;
        if (sc->kind == LV_OUT_CONNECT_FAILURE && conn_to && d > conn_to)
            d = conn_to; /* a connect slower than connect_timeout fails at it */
        if (sc->kind != LV_OUT_CONNECT_FAILURE && try_to && d > try_to) {
            t->kind = LV_OUT_TIMEOUT;
            t->status = 0;
            d = try_to;
        }
        uint64_t left = u->deadline_at > s->now ? u->deadline_at - s->now : 1;
        if (d >= left) {
            /* lv_attempt_deadline: the request's deadline comes first (its clock runs first
             * when both are due); the attempt is not classified. */
            s->now = u->deadline_at > s->now ? u->deadline_at : s->now;
            t->time_ms = left;
            if (t->kind != LV_OUT_CONNECT_FAILURE)
                t->kind = LV_OUT_TIMEOUT;
            t->status = 0;
            t->verdict = LV_VERDICT_NONE;
            o->flags |= LV_ACCESS_DEADLINE_EXCEEDED;
            o->retry_stop = LV_STOP_DEADLINE;
            answer_error(u, LV_GWERR_DEADLINE_EXCEEDED, -1);
            return 0;
        }
        s->now += d;
        t->time_ms = d;
        struct lv_outcome oc = {t->kind, t->status};
        uint64_t delay = 0;
        if (next_attempt(u, sc, oc, d, t, &delay)) {
            t->retried = true;
            t->delay_ms = delay;
            s->now += delay; /* start_backoff: the TRY clock, on the virtual clock */
            continue;
        }
        if (oc.kind == LV_OUT_STATUS) {
            o->status = oc.status;
            lv_buf_reset(&o->head);
            for (size_t i = 0; i < sc->nheaders; i++) {
                lv_buf_append(&o->head, sc->headers[i].name, sc->headers[i].name_len);
                lv_buf_puts(&o->head, ": ");
                lv_buf_append(&o->head, sc->headers[i].value, sc->headers[i].value_len);
                lv_buf_puts(&o->head, "\r\n");
            }
            lv_buf_reset(&o->body);
            if (sc->body)
                lv_buf_append(&o->body, sc->body, sc->body_len);
            idem_store(u);
        } else if (oc.kind == LV_OUT_TIMEOUT && s->now >= u->deadline_at) {
            o->flags |= LV_ACCESS_DEADLINE_EXCEEDED;
            answer_error(u, LV_GWERR_DEADLINE_EXCEEDED, -1);
        } else {
            answer_error(u, lv_outcome_gwerr(oc.kind), -1);
        }
        return 0;
    }
}

int lv_sim_request(struct lv_sim *s, const struct lv_sim_request *rq, struct lv_sim_result *out,
                   struct lv_buf *err)
{
    memset(out, 0, sizeof(*out));
    struct run u = {.s = s, .rq = rq, .out = out};
    out->start_ms = s->now;
    const char *mname = rq->method ? rq->method : "GET";
    u.method = lv_method_from_name(mname, strlen(mname));
    if (u.method < 0) {
        lv_buf_printf(err, "unknown method %s", mname);
        return -1;
    }
    const char *path = rq->path ? rq->path : "/";
    struct lv_sim_request local = *rq;
    local.path = path;
    u.rq = &local;
    int rc = 0;
    if (rq->body_len > s->cfg->limits.body_size) {
        answer_error(&u, LV_GWERR_BODY_TOO_LARGE, -1);
        goto done;
    }
    /* Routing on the path without the query, and the host without a port (request.c). */
    size_t plen = strcspn(path, "?");
    char host[256] = "";
    size_t hlen = 0;
    int port = -1;
    if (rq->host && *rq->host)
        lv_host_split(rq->host, strlen(rq->host), host, sizeof(host), &hlen, &port);
    u.route = lv_router_match(s->cfg, u.method, path, plen, host, hlen);
    if (!u.route) {
        answer_error(&u, LV_GWERR_NO_ROUTE, -1);
        goto done;
    }
    out->route = u.route->name;
    u.sr = &s->routes[u.route - s->cfg->routes];
    /* lv_request_admitted (proxy/request.c): idempotency first (a replay needs no upstream),
     * then lv_request_gate: the budget counts the request, the breaker admits it
     * (lv_breakergate_admit), else lv_breakergate_reject. */
    int keyed = idem_begin(&u);
    if (keyed < 0)
        goto done;
    u.deadline_at = s->now + u.route->timeout_ms; /* lv_attempt_start_deadline */
    if (keyed && !idem_lookup(&u))
        goto done;
    lv_budget_on_request(&u.sr->budget, s->now);
    if (u.sr->has_breaker) {
        uint64_t left_ms = 0;
        enum lv_breaker_admit ad = lv_breaker_admit(&u.sr->breaker, s->now, &left_ms);
        if (ad == LV_BREAKER_REJECT) {
            breaker_reject(&u, left_ms);
            goto done;
        }
        u.probe = ad == LV_BREAKER_PROBE;
    }
    rc = attempts(&u, err);
    if (rc < 0 && u.probe && u.sr->has_breaker)
        lv_breaker_release_probe(&u.sr->breaker); /* no outcome for the probe's slot */
done:
    free(u.idem_key);
    out->end_ms = s->now;
    return rc;
}

int lv_sim_route(struct lv_sim *s, const char *name, struct lv_sim_route_info *out)
{
    const struct lv_route_cfg *r = lv_config_route(s->cfg, name);
    if (!r)
        return -1;
    struct sim_route *sr = &s->routes[r - s->cfg->routes];
    memset(out, 0, sizeof(*out));
    out->cfg = r;
    out->has_breaker = sr->has_breaker;
    if (sr->has_breaker)
        lv_breaker_stats(&sr->breaker, s->now, &out->breaker);
    lv_budget_stats(&sr->budget, s->now, &out->budget_requests, &out->budget_retries,
                    &out->budget_available);
    idem_sweep(sr, s->now);
    for (struct sim_idem *e = sr->keys; e; e = e->next)
        out->idem_keys++;
    return 0;
}
