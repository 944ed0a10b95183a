#include "policy/bulkhead.h"

void lv_bulkhead_init(struct lv_bulkhead *b)
{
    b->inflight = 0;
    b->queued = 0;
    lv_dlist_init(&b->queue);
    b->admitted_now = b->enqueued = b->admitted_queued = b->rejected = b->cancelled = 0;
}

void lv_bulkhead_waiter_init(struct lv_bulkhead_waiter *w)
{
    lv_dlist_init(&w->link);
    w->enqueued_at = 0;
    w->admitted = false;
}

bool lv_bulkhead_try_acquire(struct lv_bulkhead *b, uint32_t limit)
{
    if (b->queued > 0 || b->inflight >= limit)
        return false;
    b->inflight++;
    b->admitted_now++;
    return true;
}

bool lv_bulkhead_can_queue(const struct lv_bulkhead *b, uint32_t queue_max)
{
    return b->queued < queue_max;
}

enum lv_bulkhead_admit lv_bulkhead_admit(struct lv_bulkhead *b, uint32_t limit, uint32_t queue_max,
                                         struct lv_bulkhead_waiter *w, uint64_t now)
{
    if (lv_bulkhead_try_acquire(b, limit))
        return LV_BULKHEAD_GO;
    if (!lv_bulkhead_can_queue(b, queue_max)) {
        b->rejected++;
        return LV_BULKHEAD_REJECT;
    }
    w->enqueued_at = now;
    w->admitted = false;
    lv_dlist_append(&b->queue, &w->link);
    b->queued++;
    b->enqueued++;
    return LV_BULKHEAD_QUEUED;
}

void lv_bulkhead_release(struct lv_bulkhead *b)
{
    if (b->inflight > 0) /* an unmatched release is a caller's bug; never wrap around */
        b->inflight--;
}

struct lv_bulkhead_waiter *lv_bulkhead_next(struct lv_bulkhead *b, uint32_t limit)
{
    struct lv_dlist *l = lv_dlist_first(&b->queue);
    if (!l || b->inflight >= limit)
        return NULL;
    struct lv_bulkhead_waiter *w = lv_dlist_entry(l, struct lv_bulkhead_waiter, link);
    lv_dlist_remove(l);
    b->queued--;
    b->inflight++;
    b->admitted_queued++;
    w->admitted = true;
    return w;
}

bool lv_bulkhead_cancel(struct lv_bulkhead *b, struct lv_bulkhead_waiter *w)
{
    if (!lv_dlist_linked(&w->link))
        return false;
    lv_dlist_remove(&w->link);
    b->queued--;
    b->cancelled++;
    return true;
}

uint64_t lv_bulkhead_deadline(const struct lv_bulkhead_waiter *w, uint64_t timeout)
{
    return w->enqueued_at > UINT64_MAX - timeout ? UINT64_MAX : w->enqueued_at + timeout;
}

struct lv_bulkhead_waiter *lv_bulkhead_expired(const struct lv_bulkhead *b, uint64_t now,
                                               uint64_t timeout)
{
    struct lv_dlist *l = lv_dlist_first(&b->queue);
    if (!l)
        return NULL;
    struct lv_bulkhead_waiter *w = lv_dlist_entry(l, struct lv_bulkhead_waiter, link);
    return now >= lv_bulkhead_deadline(w, timeout) ? w : NULL;
}
