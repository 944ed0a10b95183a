/*
 * bulkhead: a route's concurrency limit (README, "Resilience policies": `concurrency = { max,
 * queue, queue_timeout }`). At most `limit` requests of the route are in flight; the ones over it
 * wait in a FIFO queue of at most `queue_max`, each up to queue_timeout; beyond the queue the
 * request is answered 503 `concurrency-limit` with Retry-After. The limit is the caller's: the
 * fixed `max`, or with `max = "adaptive"` the gradient's current value (policy/gradient.h),
 * read at each call, so a limit that moves applies at once.
 *
 * The queue is intrusive: each waiting request embeds a struct lv_bulkhead_waiter, so nothing is
 * allocated and cancelling a waiter (timeout, client gone) is O(1). A slot is handed over, not
 * freed and re-won: lv_bulkhead_next moves the oldest waiter from the queue to inflight in one
 * step, under the caller's lock, so a newcomer can never take the slot meant for a waiter
 * while the waiter's thread is being woken, and lv_bulkhead_admit never lets a newcomer pass
 * a non-empty queue.
 *
 * Not thread-safe: the caller locks. The route state holds one mutex around the bulkhead (and
 * its gradient); the requests of the route run on several worker threads. The protocol:
 *
 *   lock; r = lv_bulkhead_admit(b, limit, queue_max, &req->waiter, now); unlock;
 *   GO:     send the request; when it ends: lock; lv_bulkhead_release(b); wake(b); unlock.
 *   QUEUED: arm a timer for lv_bulkhead_deadline(w, queue_timeout); wait to be woken.
 *           On the timer: lock; if (lv_bulkhead_cancel(b, w)) -> 503 (it never got a slot);
 *           else it was admitted meanwhile (its wake-up is on the way): go as admitted. unlock.
 *           Client gone while queued: the same cancel; if it returns false, release the slot.
 *   REJECT: 503 concurrency-limit, Retry-After.
 *   wake(b): while ((w = lv_bulkhead_next(b, limit))) post "admitted" to w's owning thread.
 *
 * Call wake(b) after anything that may raise the limit too: a release, a gradient sample, a
 * reload. A waiter must stay valid (its request alive) while it is queued: cancel it before the
 * request is freed. A struct lv_bulkhead points into itself (the queue head): it is initialised
 * in place and never copied.
 */
#ifndef LV_BULKHEAD_H
#define LV_BULKHEAD_H

#include <stdbool.h>
#include <stdint.h>

#include "base/list.h"

/* One request waiting for a slot; embedded in the request. */
struct lv_bulkhead_waiter {
    struct lv_dlist link; /* on the bulkhead's queue while waiting */
    uint64_t enqueued_at; /* the `now` of lv_bulkhead_admit (the caller's clock) */
    bool admitted;        /* set by lv_bulkhead_next: this request owns a slot */
};

struct lv_bulkhead {
    uint32_t inflight;     /* slots taken: admitted requests not yet released */
    uint32_t queued;       /* waiters on the queue */
    struct lv_dlist queue; /* lv_bulkhead_waiter.link, oldest first */
    /* Since init, for metrics: admitted at once, queued, admitted from the queue, rejected
     * (queue full), left the queue without a slot (lv_bulkhead_cancel, timed out or gone). */
    uint64_t admitted_now, enqueued, admitted_queued, rejected, cancelled;
};

enum lv_bulkhead_admit {
    LV_BULKHEAD_GO,     /* a slot is taken: send, then lv_bulkhead_release */
    LV_BULKHEAD_QUEUED, /* the waiter is queued: wait for lv_bulkhead_next or the timeout */
    LV_BULKHEAD_REJECT, /* over the limit and the queue is full: 503 concurrency-limit */
};

/** Empty: nothing in flight, nothing queued. */
void lv_bulkhead_init(struct lv_bulkhead *b);

/** Before a waiter's first use (it is then unlinked and not admitted). */
void lv_bulkhead_waiter_init(struct lv_bulkhead_waiter *w);

/**
 * True (and a slot is taken) when inflight < limit and nobody is queued: a newcomer never
 * passes a waiter. limit 0 admits nothing.
 */
bool lv_bulkhead_try_acquire(struct lv_bulkhead *b, uint32_t limit);

/** True when one more waiter fits: queued < queue_max (queue_max 0: no queue). */
bool lv_bulkhead_can_queue(const struct lv_bulkhead *b, uint32_t queue_max);

/**
 * A request arrives: GO if lv_bulkhead_try_acquire, else QUEUED (w appended, enqueued_at = now)
 * if lv_bulkhead_can_queue, else REJECT. `w` must be unlinked (lv_bulkhead_waiter_init).
 */
enum lv_bulkhead_admit lv_bulkhead_admit(struct lv_bulkhead *b, uint32_t limit, uint32_t queue_max,
                                         struct lv_bulkhead_waiter *w, uint64_t now);

/** An admitted request ended (GO, or a waiter that was admitted): its slot is free. */
void lv_bulkhead_release(struct lv_bulkhead *b);

/**
 * The oldest waiter, now admitted (moved from the queue to inflight, w->admitted set), if
 * someone waits and inflight < limit; else NULL. Call in a loop and wake each one.
 */
struct lv_bulkhead_waiter *lv_bulkhead_next(struct lv_bulkhead *b, uint32_t limit);

/**
 * The waiter leaves the queue without a slot (its queue timeout, or its client went away).
 * True if it was queued; false if it was not (already admitted by lv_bulkhead_next: it owns a
 * slot, to use or release; or never queued).
 */
bool lv_bulkhead_cancel(struct lv_bulkhead *b, struct lv_bulkhead_waiter *w);

/** When the waiter's queue timeout ends: enqueued_at + timeout (saturating). */
uint64_t lv_bulkhead_deadline(const struct lv_bulkhead_waiter *w, uint64_t timeout);

/**
 * The oldest waiter if its queue timeout has ended at `now`, else NULL; for a caller that sweeps
 * the queue from one timer instead of one timer per waiter (the queue is in arrival order, so
 * the oldest times out first). It stays queued: lv_bulkhead_cancel it, then answer 503.
 */
struct lv_bulkhead_waiter *lv_bulkhead_expired(const struct lv_bulkhead *b, uint64_t now,
                                               uint64_t timeout);

#endif
