/*
 * The part common to both stores: dispatch through the store's table, the ready queue that
 * turns every result into a callback on a later loop turn, and the store's lifetime (freed
 * when its handles are closed and no lock refers to it).
 */
#include "store/idem.h"

#include <assert.h>
#include <stdlib.h>

const char *lv_idem_result_name(enum lv_idem_result r)
{
    switch (r) {
    case LV_IDEM_ACQUIRED:
        return "acquired";
    case LV_IDEM_REPLAY:
        return "replay";
    case LV_IDEM_IN_FLIGHT:
        return "in-flight";
    case LV_IDEM_MISMATCH:
        return "mismatch";
    case LV_IDEM_FULL:
        return "full";
    case LV_IDEM_UNAVAILABLE:
        return "unavailable";
    }
    return "?";
}

static struct lv_idem_op *op_of(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct lv_idem_op, link);
}

static void shut(struct lv_idem *s);

/* A closing store is destroyed once it has nothing outstanding and every answer was given. */
static void finish_if_drained(struct lv_idem *s)
{
    if (s->closing && s->drained && !s->dying && !s->delivering && lv_dlist_empty(&s->ready))
        shut(s);
}

static void on_close(uv_handle_t *h)
{
    lv__idem_handle_closed(h->data);
}

static void deliver(struct lv_idem_op *op)
{
    if (op->is_wait) {
        lv_idem_wait_cb cb = op->wait_cb;
        void *arg = op->arg;
        bool changed = op->changed;
        lv__idem_op_free(op);
        cb(changed, arg);
        return;
    }
    struct lv_idem_lock *lock = op->lock;
    op->lock = NULL; /* handed to the callback */
    op->cb(op->result, op->result == LV_IDEM_REPLAY ? &op->stored : NULL, lock, op->arg);
    lv__idem_op_free(op);
}

/* Delivers the ops that were ready when this turn started; ops posted by the callbacks wait
 * for the next turn, so a callback that asks again cannot spin the loop here. */
static void on_kick(uv_timer_t *t)
{
    struct lv_idem *s = t->data;
    struct lv_dlist batch;
    lv_dlist_init(&batch);
    lv_dlist_splice(&batch, &s->ready);
    s->delivering = true;
    while (!lv_dlist_empty(&batch) && !s->dying) {
        struct lv_idem_op *op = op_of(batch.next);
        lv_dlist_remove(&op->link);
        op->in_ready = false;
        if (!op->is_wait && s->vt->resolve) {
            /* A closing store takes no new lock: a lookup decided now is UNAVAILABLE. */
            if (s->closing)
                op->result = LV_IDEM_UNAVAILABLE;
            else
                s->vt->resolve(op);
        }
        deliver(op);
    }
    s->delivering = false;
    /* A callback destroyed the store: what is left of the batch goes with it. */
    while (!lv_dlist_empty(&batch)) {
        struct lv_idem_op *op = op_of(batch.next);
        lv_dlist_remove(&op->link);
        lv__idem_op_free(op);
    }
    finish_if_drained(s);
}

void lv__idem_init(struct lv_idem *s, const struct lv__idem_vt *vt, uv_loop_t *loop)
{
    s->vt = vt;
    s->loop = loop;
    lv_dlist_init(&s->ready);
    uv_timer_init(loop, &s->kick);
    s->kick.data = s;
    s->handles = 1;
    s->locks = 0;
    s->refs = 1;
    s->closing = s->drained = s->delivering = s->dying = false;
}

void lv__idem_post(struct lv_idem_op *op)
{
    struct lv_idem *s = op->store;
    lv_dlist_append(&s->ready, &op->link);
    op->in_ready = true;
    if (!uv_is_active((uv_handle_t *)&s->kick))
        uv_timer_start(&s->kick, on_kick, 0, 0);
}

void lv__idem_op_free(struct lv_idem_op *op)
{
    if (op->lock)
        op->store->vt->release(op->lock, false);
    free(op->owned);
    free(op);
}

void lv__idem_handle_closed(struct lv_idem *s)
{
    assert(s->handles > 0);
    s->handles--;
    if (s->dying && s->handles == 0 && s->locks == 0)
        s->vt->free(s);
}

void lv__idem_drained(struct lv_idem *s)
{
    assert(s->closing);
    s->drained = true;
    finish_if_drained(s);
}

void lv__idem_lock_ended(struct lv_idem *s)
{
    assert(s->locks > 0);
    s->locks--;
    if (s->dying && s->handles == 0 && s->locks == 0)
        s->vt->free(s);
}

/* ---- public dispatch */

static struct lv_idem_op *started(struct lv_idem_op *op, bool is_wait, lv_idem_cb cb,
                                  lv_idem_wait_cb wait_cb, void *arg)
{
    op->is_wait = is_wait;
    op->cb = cb;
    op->wait_cb = wait_cb;
    op->arg = arg;
    return op;
}

struct lv_idem_op *lv_idem_begin(struct lv_idem *s, const char *key, size_t klen,
                                 const uint8_t fp[LV_IDEM_FP_LEN], uint64_t lease_ms, lv_idem_cb cb,
                                 void *arg)
{
    /* Only a holder of a reference asks (see idem.h); after lv_idem_destroy, NULL. */
    assert(!s->closing || s->dying);
    if (s->dying)
        return NULL;
    if (lease_ms == 0)
        lease_ms = 1;
    return started(s->vt->begin(s, key, klen, fp, lease_ms), false, cb, NULL, arg);
}

struct lv_idem_op *lv_idem_wait(struct lv_idem *s, const char *key, size_t klen,
                                uint64_t timeout_ms, lv_idem_wait_cb cb, void *arg)
{
    assert(!s->closing || s->dying);
    if (s->dying)
        return NULL;
    return started(s->vt->wait(s, key, klen, timeout_ms), true, NULL, cb, arg);
}

void lv_idem_cancel(struct lv_idem_op *op)
{
    if (!op)
        return;
    if (op->in_ready) {
        lv_dlist_remove(&op->link);
        op->in_ready = false;
    } else {
        op->store->vt->detach(op);
    }
    lv__idem_op_free(op);
}

void lv_idem_complete(struct lv_idem_lock *lock, const struct lv_idem_response *resp,
                      uint64_t ttl_ms)
{
    if (lock)
        lock->store->vt->complete(lock, resp, ttl_ms, false);
}

struct lv_idem_op *lv_idem_complete_notify(struct lv_idem_lock *lock,
                                           const struct lv_idem_response *resp, uint64_t ttl_ms,
                                           lv_idem_wait_cb cb, void *arg)
{
    if (!lock)
        return NULL;
    bool dying = lock->store->dying;
    struct lv_idem_op *op = lock->store->vt->complete(lock, resp, ttl_ms, !dying);
    return op ? started(op, true, NULL, cb, arg) : NULL;
}

void lv_idem_release(struct lv_idem_lock *lock)
{
    if (lock)
        lock->store->vt->release(lock, false);
}

struct lv_idem_op *lv_idem_release_notify(struct lv_idem_lock *lock, lv_idem_wait_cb cb, void *arg)
{
    if (!lock)
        return NULL;
    bool dying = lock->store->dying;
    struct lv_idem_op *op = lock->store->vt->release(lock, !dying);
    return op ? started(op, true, NULL, cb, arg) : NULL;
}

void lv_idem_stats(struct lv_idem *s, struct lv_idem_stats *out)
{
    s->vt->stats(s, out);
}

struct lv_idem *lv_idem_ref(struct lv_idem *s)
{
    assert(s->refs > 0 && !s->closing && !s->dying);
    s->refs++;
    return s;
}

void lv_idem_unref(struct lv_idem *s)
{
    if (!s)
        return;
    assert(s->refs > 0);
    if (--s->refs > 0 || s->dying)
        return;
    s->closing = true;
    s->vt->close(s);
    finish_if_drained(s);
}

void lv_idem_destroy(struct lv_idem *s)
{
    if (!s || s->dying)
        return;
    s->refs = 0;
    s->closing = true;
    shut(s);
}

/* Destroys: drops what is still queued for delivery and closes the handles. */
static void shut(struct lv_idem *s)
{
    s->dying = true;
    while (!lv_dlist_empty(&s->ready)) {
        struct lv_idem_op *op = op_of(s->ready.next);
        lv_dlist_remove(&op->link);
        lv__idem_op_free(op);
    }
    s->vt->destroy(s);
    uv_close((uv_handle_t *)&s->kick, on_close);
}
