
#include <string.h>
#include <strings.h>

#include "base/log.h"
#include "base/method.h"
#include "http/respwrite.h"
#include "obs/accesslog.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "script/hooks.h"
#include "store/idem.h"

void lv_idem_filter_dispose(struct lv_idem_filter *f)
{
    lv_buf_dispose(&f->key);
    lv_buf_dispose(&f->head);
    lv_buf_dispose(&f->body);
}

void lv_idem_filter_end(struct lv_request *r)
{
    struct lv_idem_filter *f = &r->idem;
    if (f->op) {
        lv_idem_cancel(f->op);
        f->op = NULL;
    }
    if (f->lock) {
        lv_idem_release(f->lock);
        f->lock = NULL;
    }
    f->state = LV_IDEMF_OFF;
    f->capture = false;
}

static bool key_valid(const char *p, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] == 0x7f)
            return false; /* HTAB, CTLs: not a key a client meant */
    return true;
}

static void replay(struct lv_request *r, const struct lv_idem_response *st)
{
    bool close = r->resp_close || !r->client_keep_alive || r->s->draining;
    struct lv_buf *o = &r->cout;
    lv_respwrite_begin(o, st->status, NULL, 0);
    lv_buf_append(o, st->head, st->head_len); /* stored as end-to-end field lines */
    lv_respwrite_fieldz(o, "Idempotent-Replayed", "true");
    struct lv_resp_tail t = {
        .request_id = r->rid,
        .framing = st->status != 204 && st->status != 304 ? LV_FRAMING_LENGTH : LV_FRAMING_NONE,
        .length = st->body_len,
        .connection = close ? LV_CONNHDR_CLOSE : LV_CONNHDR_NONE,
    };
    lv_respwrite_end(o, &t);
    if (r->method != LV_METHOD_HEAD)
        lv_buf_append(o, st->body, st->body_len);
    r->bytes_out += o->len;
    r->status = st->status;
    r->head_sent = true;
    r->flags |= LV_ACCESS_IDEMPOTENT_REPLAY;
    lv_metric_add(r->rs->idem_replays, 1);
    lv_request_end(r, close);
}

static void lookup(struct lv_request *r);

static void on_waited(bool changed, void *arg)
{
    struct lv_request *r = arg;
    r->idem.op = NULL;
    if (!lv_request_active(r))
        return;
    if (changed) {
        lookup(r); /* the first finished (replay) or gave up (take the lock) */
        return;
    }
    r->flags |= LV_ACCESS_IDEMPOTENCY_CONFLICT;
    lv_request_fail(r, LV_GWERR_IDEMPOTENCY_CONFLICT, "waited for the request in flight", -1,
                    r->resp_close);
}

static void on_lookup(enum lv_idem_result res, const struct lv_idem_response *stored,
                      struct lv_idem_lock *lock, void *arg)
{
    struct lv_request *r = arg;
    struct lv_idem_filter *f = &r->idem;
    f->op = NULL;
    if (!lv_request_active(r)) {
        if (lock)
            lv_idem_release(lock);
        return;
    }
    const struct lv_idem_cfg *ic = &r->route->idempotency;
    enum lv_gwerr err;
    switch (res) {
    case LV_IDEM_ACQUIRED:
        f->lock = lock;
        f->state = LV_IDEMF_LOCKED;
        if (lv_request_gate(r)) /* the breaker after idempotency (README "Admission control") */
            lv_attempt_start(r);
        return;
    case LV_IDEM_REPLAY:
        replay(r, stored);
        return;
    case LV_IDEM_IN_FLIGHT:
        lv_metric_add(r->rs->idem_conflicts, 1);
        if (ic->on_conflict == LV_IDEM_CONFLICT_WAIT) {
            f->op = lv_idem_wait(r->store, f->key.data, f->key.len, lv_attempt_time_left(r),
                                 on_waited, r);
            if (f->op)
                return;
            err = LV_GWERR_IDEMPOTENCY_STORE_UNAVAILABLE;
            break;
        }
        r->flags |= LV_ACCESS_IDEMPOTENCY_CONFLICT;
        err = LV_GWERR_IDEMPOTENCY_CONFLICT;
        break;
    case LV_IDEM_MISMATCH:
        lv_metric_add(r->rs->idem_mismatches, 1);
        err = LV_GWERR_IDEMPOTENCY_MISMATCH;
        break;
    case LV_IDEM_FULL:
        lv_metric_add(r->rs->idem_store_errors, 1);
        err = LV_GWERR_IDEMPOTENCY_STORE_FULL;
        break;
    case LV_IDEM_UNAVAILABLE:
    default:
        lv_metric_add(r->rs->idem_store_errors, 1);
        if (ic->on_store_error == LV_IDEM_FAIL_OPEN) {
            /* Forward without protection, as configured; the log says so. */
            f->state = LV_IDEMF_OPEN;
            lv_warn("route %s: idempotency store unavailable, forwarding without protection "
                    "(on_store_error = fail_open)",
                    r->route->name);
            if (lv_request_gate(r))
                lv_attempt_start(r);
            return;
        }
        err = LV_GWERR_IDEMPOTENCY_STORE_UNAVAILABLE;
        break;
    }
    lv_request_fail(r, err, NULL, -1, r->resp_close);
}

/* The whole body is in: fingerprint it (method, target, body digest) and ask the store. */
static void lookup(struct lv_request *r)
{
    struct lv_idem_filter *f = &r->idem;
    uint8_t fp[LV_IDEM_FP_LEN];
    const char *m = lv_method_name(r->method);
    lv_attempt_start_deadline(r);
    lv_idem_fingerprint(m, strlen(m), r->target.data, r->target.len, r->replay.data, r->replay.len,
                        fp);
    f->state = LV_IDEMF_LOOKUP;
    r->phase = LV_REQ_LOOKUP;
    f->op =
        lv_idem_begin(r->store, f->key.data, f->key.len, fp, lv_attempt_time_left(r), on_lookup, r);
}

void lv_idem_filter_body_done(struct lv_request *r)
{
    if (r->idem.state == LV_IDEMF_WAIT_BODY)
        lookup(r);
}

/* The key from the route's key hook: 1 found, 0 no key, -1 the hook failed. */
static int key_from_hook(struct lv_request *r, int key_ref)
{
    struct lv_hook_request hr = lv_request_hook_view(r);
    struct lv_buf err = LV_BUF_INIT;
    int rc = lv_hook_idem_key(r->cfg, key_ref, &hr, &r->idem.key, &err);
    if (rc < 0) {
        /* A failed hook counts as no hook: the header's value is the key. */
        lv_request_hook_failed(r, LV_REQ_HOOK_KEY, &err);
        lv_buf_reset(&r->idem.key);
    }
    lv_buf_dispose(&err);
    if (rc < 0)
        return -1;
    return rc == 1 && r->idem.key.len > 0 ? 1 : 0;
}

bool lv_idem_filter_begin(struct lv_request *r, const struct lv_reqhead *h)
{
    struct lv_idem_filter *f = &r->idem;
    const struct lv_idem_cfg *ic = &r->route->idempotency;
    f->state = LV_IDEMF_OFF;
    if (!ic->enabled || !r->store || !(ic->methods & LV_METHOD_BIT(r->method)))
        return true;
    lv_buf_reset(&f->key);
    int have = -1; /* -1: look at the header */
    if (ic->key_ref >= 0)
        have = key_from_hook(r, ic->key_ref); /* namespaced by tenant, credential...; nil: none */
    if (have < 0) {
        have = 0;
        const struct lv_field *key = NULL;
        size_t hl = strlen(ic->header);
        for (uint32_t i = 0; i < h->nfields; i++)
            if (h->fields[i].name.len == hl &&
                strncasecmp(h->fields[i].name.p, ic->header, hl) == 0)
                key = &h->fields[i];
        if (key) {
            if (!key_valid(key->value.p, key->value.len)) {
                lv_request_fail(r, LV_GWERR_IDEMPOTENCY_KEY_INVALID, NULL, -1, true);
                return false;
            }
            lv_buf_append(&f->key, key->value.p, key->value.len);
            have = 1;
        }
    }
    if (!have) {
        if (!ic->required)
            return true;
        lv_request_fail(r, LV_GWERR_IDEMPOTENCY_KEY_REQUIRED, NULL, -1, true);
        return false;
    }
    /* The whole body is kept (it is fingerprinted, and a keyed request may be retried). */
    if (r->body_kind == LV_REQ_BODY_LENGTH && r->body_cl > r->route->retry.buffer) {
        lv_request_fail(r, LV_GWERR_BODY_TOO_LARGE,
                        "keyed request bodies are kept up to retry.buffer", -1, true);
        return false;
    }
    lv_buf_putc(&f->key, '\0');
    f->key.len--;
    r->has_idem_key = true;
    f->state = LV_IDEMF_WAIT_BODY;
    return true;
}

void lv_idem_filter_capture_head(struct lv_request *r, const struct lv_resphead *h)
{
    struct lv_idem_filter *f = &r->idem;
    f->capture = false;
    if (f->state != LV_IDEMF_LOCKED || h->status >= 500)
        return; /* 5xx is not stored: the key is released at the end */
    f->capture = true;
    f->status = h->status;
    lv_buf_reset(&f->head);
    lv_buf_reset(&f->body);
    lv_respwrite_e2e(&f->head, h->fields, h->nfields);
}

void lv_idem_filter_capture_body(struct lv_request *r, const char *p, size_t n)
{
    struct lv_idem_filter *f = &r->idem;
    if (!f->capture)
        return;
    if (f->body.len + n > r->route->idempotency.max_body) {
        f->capture = false; /* forwarded, not stored: the key is released at the end */
        lv_info("route %s: response for idempotency key not stored: body over max_body (%zu)",
                r->route->name, r->route->idempotency.max_body);
        lv_buf_dispose(&f->body);
        return;
    }
    lv_buf_append(&f->body, p, n);
}

static void on_settled(bool changed, void *arg)
{
    struct lv_request *r = arg;
    (void)changed; /* stored or not, the client gets its response now */
    r->idem.op = NULL;
    if (lv_request_active(r))
        lv_request_finish_end(r);
}

bool lv_idem_filter_finish(struct lv_request *r)
{
    struct lv_idem_filter *f = &r->idem;
    if (!f->lock)
        return false;
    /* The last bytes wait until the store has the response (or has let the key go):
     * otherwise the client's next request, through another gateway sharing the store,
     * could find the key still in flight. One store round trip, keyed requests only. */
    struct lv_idem_lock *lock = f->lock;
    f->lock = NULL;
    if (f->capture) {
        struct lv_idem_response resp = {f->status, f->head.data, f->head.len, f->body.data,
                                        f->body.len};
        lv_metric_add(r->rs->idem_stored, 1);
        f->op = lv_idem_complete_notify(lock, &resp, r->route->idempotency.ttl_ms, on_settled, r);
    } else {
        f->op = lv_idem_release_notify(lock, on_settled, r);
    }
    f->capture = false;
    if (!f->op)
        return false;
    r->phase = LV_REQ_SETTLING;
    return true;
}
