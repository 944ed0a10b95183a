/*
 * admitreq: a request through its route's admission control (README "Admission control"):
 * the rate limit, then the bulkhead, before idempotency, the breaker and the attempts. The
 * shared state is the route's struct lv_admission (proxy/admission.h); a Redis rate store is
 * the worker's own connection (one per address and prefix, made on first use).
 *
 * While a Redis answer or a bulkhead slot is awaited the request is in LV_REQ_ADMISSION and
 * its head stays in the downstream's input (nothing after it is read for this request);
 * lv_request_admitted goes on from there. A slot freed on one worker is handed to the oldest
 * waiter, whichever worker it is on, through that worker's inbox.
 */

#include <arpa/inet.h>
#include <stdlib.h>
#include <string.h>

#include "base/inbox.h"
#include "base/log.h"
#include "http/fields.h"
#include "obs/accesslog.h"
#include "obs/metrics.h"
#include "policy/gcra.h"
#include "proxy/admission.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "script/hooks.h"
#include "store/ratelimit_redis.h"

static struct lv_admission *adm(struct lv_request *r)
{
    return &r->rs->adm;
}

/* Answers with a gateway error: the head leaves the input first. */
static void refuse(struct lv_request *r, enum lv_gwerr err, int retry_after)
{
    if (r->head_len) {
        lv_buf_consume(&r->ds->in, r->head_len);
        r->head_len = 0;
    }
    lv_request_fail(r, err, NULL, retry_after, false);
}

/* ---- the key */

static bool ip16(const char *s, size_t n, uint8_t out[16])
{
    char buf[64];
    if (n == 0 || n >= sizeof(buf))
        return false;
    memcpy(buf, s, n);
    buf[n] = 0;
    struct in_addr a4;
    if (inet_pton(AF_INET, buf, &a4) == 1) {
        memset(out, 0, 10);
        out[10] = out[11] = 0xff;
        memcpy(out + 12, &a4, 4);
        return true;
    }
    return inet_pton(AF_INET6, buf, out) == 1;
}

static bool trusted(const struct lv_config *cfg, const char *s, size_t n)
{
    uint8_t a[16];
    if (!cfg->ntrusted_proxies || !ip16(s, n, a))
        return false;
    for (size_t i = 0; i < cfg->ntrusted_proxies; i++) {
        const struct lv_cidr *c = &cfg->trusted_proxies[i];
        unsigned bits = c->bits, k = 0;
        for (; k + 8 <= bits && a[k / 8] == c->addr[k / 8]; k += 8)
            ;
        if (k + 8 <= bits)
            continue;
        unsigned rest = bits - k;
        if (rest == 0 || ((a[k / 8] ^ c->addr[k / 8]) & (uint8_t)(0xff << (8 - rest))) == 0)
            return true;
    }
    return false;
}

/* client_ip: the peer; when it is a trusted proxy, the first address of X-Forwarded-For,
 * from the right, that is not one (README "Admission control"). */
static void client_key(struct lv_request *r, const struct lv_reqhead *h, struct lv_buf *key)
{
    const char *peer = r->ds->peer;
    size_t pn = strlen(peer);
    lv_buf_append(key, peer, pn);
    if (!trusted(r->cfg, peer, pn))
        return;
    /* Every X-Forwarded-For field, the last first; each list from its end. */
    for (uint32_t i = h->nfields; i-- > 0;) {
        const struct lv_field *f = &h->fields[i];
        if (f->id != LV_FID_X_FORWARDED_FOR)
            continue;
        const char *p = f->value.p, *end = p + f->value.len;
        while (end > p) {
            const char *c = end;
            while (c > p && c[-1] != ',')
                c--;
            const char *a = c, *b = end;
            while (a < b && (*a == ' ' || *a == '\t'))
                a++;
            while (b > a && (b[-1] == ' ' || b[-1] == '\t'))
                b--;
            end = c > p ? c - 1 : p;
            if (a == b)
                continue;
            lv_buf_reset(key);
            lv_buf_append(key, a, (size_t)(b - a));
            if (!trusted(r->cfg, a, (size_t)(b - a)))
                return;
        }
    }
}

/* The request's key into `key`; false: the request is not limited (no header, a nil key, a
 * failing hook, which is counted). */
static bool rate_key(struct lv_request *r, const struct lv_reqhead *h, struct lv_buf *key)
{
    const struct lv_rate_cfg *rc = &r->route->rate_limit;
    lv_buf_reset(key);
    switch (rc->key) {
    case LV_RATE_KEY_CLIENT_IP:
        client_key(r, h, key);
        return true;
    case LV_RATE_KEY_HEADER:
        for (uint32_t i = 0; i < h->nfields; i++) {
            const struct lv_field *f = &h->fields[i];
            if (lv_field_name_eq(f->name.p, f->name.len, rc->key_header)) {
                lv_buf_append(key, f->value.p, f->value.len);
                return true;
            }
        }
        return false;
    case LV_RATE_KEY_HOOK: {
        struct lv_hook_request view = lv_request_hook_view(r);
        struct lv_buf err = LV_BUF_INIT;
        int rc2 = lv_hook_idem_key(r->cfg, rc->key_ref, &view, key, &err);
        if (rc2 < 0)
            lv_request_hook_failed(r, LV_REQ_HOOK_KEY, &err);
        lv_buf_dispose(&err);
        return rc2 == 1;
    }
    }
    return false;
}

/* ---- the rate limit's answer */

static enum lv_admit bulkhead(struct lv_request *r);

/* A check's result (`ok` false: the store failed). GO, or REFUSED (answered). */
static enum lv_admit rate_decided(struct lv_request *r, bool ok, const struct lv_gcra *g,
                                  const struct lv_gcra_result *res)
{
    const struct lv_rate_cfg *rc = &r->route->rate_limit;
    struct lv_admission *a = adm(r);
    if (!ok) {
        lv_metric_add(a->store_errors, 1);
        if (rc->fail_closed) {
            refuse(r, LV_GWERR_RATE_LIMIT_STORE_UNAVAILABLE, -1);
            return LV_ADMIT_REFUSED;
        }
        return LV_ADMIT_GO;
    }
    if (res->allowed) {
        if (!rc->shadow)
            lv_ratelimit_headers(&r->resp_extra, g, res);
        return LV_ADMIT_GO;
    }
    if (rc->shadow) {
        r->flags |= LV_ACCESS_RATE_LIMITED_SHADOW;
        lv_metric_add(a->limited[1], 1);
        return LV_ADMIT_GO;
    }
    r->flags |= LV_ACCESS_RATE_LIMITED;
    lv_metric_add(a->limited[0], 1);
    lv_ratelimit_headers(&r->resp_extra, g, res);
    refuse(r, LV_GWERR_RATE_LIMITED, (int)lv_gcra_retry_after_s(res->retry_after_ns));
    return LV_ADMIT_REFUSED;
}

static void gcra_of(const struct lv_rate_cfg *rc, struct lv_gcra *g)
{
    lv_gcra_init(g, rc->rate, rc->per_ms * 1000000ull, rc->burst);
}

static void on_redis(void *arg, const struct lv_rate_answer *ans)
{
    struct lv_request *r = arg;
    r->admit_op = NULL;
    struct lv_gcra g;
    gcra_of(&r->route->rate_limit, &g);
    struct lv_gcra_result res = {
        .allowed = ans->allowed,
        .retry_after_ns = ans->retry_after_us * 1000,
        .reset_ns = ans->reset_us * 1000,
        .remaining = ans->remaining,
    };
    if (rate_decided(r, ans->rc == 0, &g, &res) != LV_ADMIT_GO)
        return;
    if (bulkhead(r) == LV_ADMIT_GO)
        lv_request_admitted(r, NULL);
}

/* The worker's Redis rate store for this address and prefix (made on first use). */
static struct lv_rate_redis *redis_store(struct lv_server *s, const struct lv_rate_cfg *rc)
{
    char sig[400];
    snprintf(sig, sizeof(sig), "%s:%u %s %llu", rc->redis_addr.host, rc->redis_addr.port,
             rc->redis_prefix ? rc->redis_prefix : "", (unsigned long long)rc->timeout_ms);
    for (size_t i = 0; i < s->nrate_redis; i++)
        if (strcmp(s->rate_redis[i].sig, sig) == 0)
            return s->rate_redis[i].store;
    struct lv_rate_redis_opts o = {.command_timeout_ms = rc->timeout_ms};
    struct lv_rate_redis *st =
        lv_rate_redis_new(s->loop, rc->redis_addr.host, rc->redis_addr.port, rc->redis_prefix, &o);
    s->rate_redis = lv_xrealloc(s->rate_redis, (s->nrate_redis + 1) * sizeof(*s->rate_redis));
    s->rate_redis[s->nrate_redis].sig = lv_xstrdup(sig);
    s->rate_redis[s->nrate_redis].store = st;
    s->nrate_redis++;
    return st;
}

/* ---- the bulkhead */

struct wake {
    struct lv_request *r;
    uint64_t serial;
};

static void on_wake(void *arg);

/* Hands freed slots to the oldest waiters (lock held): each is woken on its own worker. */
static void wake_waiters(struct lv_admission *a)
{
    struct lv_bulkhead_waiter *w;
    while ((w = lv_bulkhead_next(&a->bulkhead, lv_admission_limit(a)))) {
        struct lv_request *q = (struct lv_request *)((char *)w - offsetof(struct lv_request, bh));
        struct wake *m = lv_xmalloc(sizeof(*m));
        m->r = q;
        m->serial = q->serial;
        lv_inbox_call(q->s->sh->inboxes[q->s->worker], on_wake, m);
    }
}

static void slot_taken(struct lv_request *r, uint32_t inflight)
{
    r->bh_slot = true;
    r->bh_inflight = inflight;
}

static enum lv_admit bulkhead(struct lv_request *r)
{
    const struct lv_concurrency_cfg *cc = &r->route->concurrency;
    if (!cc->enabled)
        return LV_ADMIT_GO;
    struct lv_admission *a = adm(r);
    lv_bulkhead_waiter_init(&r->bh);
    pthread_mutex_lock(&a->lock);
    enum lv_bulkhead_admit ad = lv_bulkhead_admit(&a->bulkhead, lv_admission_limit(a), cc->queue,
                                                  &r->bh, uv_now(r->s->loop));
    uint32_t inflight = a->bulkhead.inflight;
    pthread_mutex_unlock(&a->lock);
    switch (ad) {
    case LV_BULKHEAD_GO:
        slot_taken(r, inflight);
        return LV_ADMIT_GO;
    case LV_BULKHEAD_QUEUED:
        r->bh_queued = true;
        r->flags |= LV_ACCESS_QUEUED;
        lv_metric_add(a->queued, 1);
        r->phase = LV_REQ_ADMISSION;
        lv_request_clock_set(r, LV_CLOCK_TRY, cc->queue_timeout_ms);
        return LV_ADMIT_WAIT;
    case LV_BULKHEAD_REJECT:
        break;
    }
    r->flags |= LV_ACCESS_CONCURRENCY_LIMIT;
    lv_metric_add(a->rejected, 1);
    refuse(r, LV_GWERR_CONCURRENCY_LIMIT, 1);
    return LV_ADMIT_REFUSED;
}

static void on_wake(void *arg)
{
    struct wake *m = arg;
    struct lv_request *r = m->r;
    bool mine = r->serial == m->serial && r->phase == LV_REQ_ADMISSION && r->bh_queued;
    free(m);
    if (!mine)
        return; /* it timed out into its slot, or ended (and let the slot go) */
    r->bh_queued = false;
    lv_request_clock_clear(r, LV_CLOCK_TRY);
    struct lv_admission *a = adm(r);
    pthread_mutex_lock(&a->lock);
    uint32_t inflight = a->bulkhead.inflight;
    pthread_mutex_unlock(&a->lock);
    slot_taken(r, inflight);
    lv_request_admitted(r, NULL);
}

void lv_admitreq_clock(struct lv_request *r)
{
    if (!r->bh_queued)
        return;
    struct lv_admission *a = adm(r);
    pthread_mutex_lock(&a->lock);
    bool was_queued = lv_bulkhead_cancel(&a->bulkhead, &r->bh);
    uint32_t inflight = a->bulkhead.inflight;
    pthread_mutex_unlock(&a->lock);
    r->bh_queued = false;
    if (was_queued) {
        r->flags |= LV_ACCESS_CONCURRENCY_LIMIT;
        lv_metric_add(a->rejected, 1);
        refuse(r, LV_GWERR_CONCURRENCY_LIMIT, 1);
        return;
    }
    /* Handed a slot just now: its wake-up is on the way, and finds it taken already. */
    slot_taken(r, inflight);
    lv_request_admitted(r, NULL);
}

/* ---- the request's side */

enum lv_admit lv_admitreq_begin(struct lv_request *r, const struct lv_reqhead *h)
{
    const struct lv_rate_cfg *rc = &r->route->rate_limit;
    if (rc->enabled && rate_key(r, h, &r->admit_key)) {
        struct lv_gcra g;
        gcra_of(rc, &g);
        if (rc->redis) {
            r->phase = LV_REQ_ADMISSION;
            r->admit_op = lv_rate_redis_check(redis_store(r->s, rc), r->route->name,
                                              r->admit_key.data, r->admit_key.len, rc->rate,
                                              rc->per_ms * 1000, rc->burst, on_redis, r);
            return LV_ADMIT_WAIT; /* always answered later (store/ratelimit_redis.h) */
        }
        struct lv_gcra_result res;
        struct lv_admission *a = adm(r);
        bool ok =
            lv_admission_rate_check(a, r->admit_key.data, r->admit_key.len, &g, uv_hrtime(), &res);
        if (rate_decided(r, ok, &g, &res) != LV_ADMIT_GO)
            return LV_ADMIT_REFUSED;
    }
    return bulkhead(r);
}

void lv_admitreq_end(struct lv_request *r)
{
    if (r->admit_op) {
        lv_rate_redis_cancel(r->admit_op);
        r->admit_op = NULL;
    }
    if (!r->bh_queued && !r->bh_slot)
        return;
    struct lv_admission *a = adm(r);
    pthread_mutex_lock(&a->lock);
    bool release = r->bh_slot;
    if (r->bh_queued && !lv_bulkhead_cancel(&a->bulkhead, &r->bh))
        release = true; /* handed a slot while it was going: give it on */
    if (release) {
        if (r->bh_slot && a->adaptive) {
            /* The upstream's latency (to the response head) is the signal; a request that
             * got none, or an overload answer, is a drop. */
            bool dropped =
                r->status == 429 || r->status == 503 || r->status == 504 || r->upstream_ms < 0;
            double ms = r->upstream_ms >= 0 ? r->upstream_ms : 0;
            lv_gradient_sample(&a->gradient, uv_hrtime(), (uint64_t)(ms * 1e6), r->bh_inflight,
                               dropped);
        }
        lv_bulkhead_release(&a->bulkhead);
    }
    wake_waiters(a);
    pthread_mutex_unlock(&a->lock);
    r->bh_queued = false;
    r->bh_slot = false;
}
