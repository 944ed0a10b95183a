/*
 * The memory store: a chained hash table of entries (in flight with a lease, or completed with
 * a ttl), a min-heap of their expiry times, and a byte cap. Expiry is lazy on access, plus one
 * timer armed for the earliest expiry, so nothing scans the table. When a new key would pass
 * max_memory, expired entries are dropped first and then the key is refused (FULL): live
 * entries are never evicted, since evicting one would let a duplicate through.
 *
 * Keys come from clients, so buckets are chosen with SipHash under a random key.
 */
#include <assert.h>
#include <openssl/rand.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/siphash.h"
#include "base/log.h"
#include "store/idem.h"

/* How often waiters are checked for their timeout: their precision. */
#define WAIT_TICK_MS 10

struct ment {
    struct ment *hnext;
    uint64_t hash;
    uint64_t expires; /* lease end while in flight, ttl end once done */
    uint64_t gen;     /* which lock created it */
    size_t heap_idx;
    struct lv_dlist waiters; /* struct mwait, by base.link */
    uint8_t fp[LV_IDEM_FP_LEN];
    bool done;
    int status;
    char *resp; /* head then body */
    size_t head_len, body_len;
    size_t klen;
    char key[];
};

struct mstore {
    struct lv_idem base;
    uv_timer_t timer;
    uint64_t (*now)(void *arg);
    void *now_arg;
    struct ment **buckets;
    size_t nbuckets, count;
    struct ment **heap;
    size_t heap_len, heap_cap;
    size_t bytes, max_bytes;
    uint64_t next_gen;
    uint64_t sip[2];
    struct lv_dlist waiting; /* every struct mwait, by `all` */
    uint64_t wait_due;       /* no waiter is due before this (may be early) */
};

struct mbegin {
    struct lv_idem_op base;
    uint64_t lease_ms;
    uint8_t fp[LV_IDEM_FP_LEN];
    size_t klen;
    char key[];
};

struct mwait {
    struct lv_idem_op base;
    struct lv_dlist all;
    uint64_t deadline;
};

struct mlock {
    struct lv_idem_lock base;
    uint64_t gen;
    size_t klen;
    char key[];
};

/* Accounted size of an entry besides its key and response: the struct, its bucket and heap
 * slots. */
#define ENTRY_OVERHEAD (sizeof(struct ment) + 2 * sizeof(void *))

static const struct lv__idem_vt mem_vt;

static uint64_t default_now(void *arg)
{
    return uv_now(arg);
}

static struct mwait *wait_of_all(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct mwait, all);
}

static struct mwait *wait_of_link(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct mwait, base.link);
}

/* ---- expiry heap (min by expires) */

static void heap_set(struct mstore *s, size_t i, struct ment *e)
{
    s->heap[i] = e;
    e->heap_idx = i;
}

static void heap_up(struct mstore *s, size_t i)
{
    struct ment *e = s->heap[i];
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (s->heap[p]->expires <= e->expires)
            break;
        heap_set(s, i, s->heap[p]);
        i = p;
    }
    heap_set(s, i, e);
}

static void heap_down(struct mstore *s, size_t i)
{
    struct ment *e = s->heap[i];
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= s->heap_len)
            break;
        if (c + 1 < s->heap_len && s->heap[c + 1]->expires < s->heap[c]->expires)
            c++;
        if (e->expires <= s->heap[c]->expires)
            break;
        heap_set(s, i, s->heap[c]);
        i = c;
    }
    heap_set(s, i, e);
}

static void heap_push(struct mstore *s, struct ment *e)
{
    if (s->heap_len == s->heap_cap) {
        s->heap_cap = s->heap_cap ? 2 * s->heap_cap : 64;
        s->heap = lv_xrealloc(s->heap, s->heap_cap * sizeof(*s->heap));
    }
    heap_set(s, s->heap_len++, e);
    heap_up(s, e->heap_idx);
}

static void heap_remove(struct mstore *s, struct ment *e)
{
    size_t i = e->heap_idx;
    struct ment *last = s->heap[--s->heap_len];
    if (last == e)
        return;
    heap_set(s, i, last);
    heap_up(s, i);
    heap_down(s, last->heap_idx);
}

static void heap_fix(struct mstore *s, struct ment *e)
{
    heap_up(s, e->heap_idx);
    heap_down(s, e->heap_idx);
}

/* ---- table */

static uint64_t now_of(struct mstore *s)
{
    return s->now(s->now_arg);
}

static struct ment *lookup(struct mstore *s, const char *key, size_t klen, uint64_t h)
{
    for (struct ment *e = s->buckets[h & (s->nbuckets - 1)]; e; e = e->hnext)
        if (e->hash == h && e->klen == klen && memcmp(e->key, key, klen) == 0)
            return e;
    return NULL;
}

static void grow(struct mstore *s)
{
    size_t n = s->nbuckets * 2;
    struct ment **b = lv_xcalloc(n, sizeof(*b));
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct ment *e = s->buckets[i];
        while (e) {
            struct ment *next = e->hnext;
            e->hnext = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
            e = next;
        }
    }
    free(s->buckets);
    s->buckets = b;
    s->nbuckets = n;
}

static size_t entry_bytes(const struct ment *e)
{
    return ENTRY_OVERHEAD + e->klen + e->head_len + e->body_len;
}

/* Wakes every waiter of `e` with changed = true. */
static void wake(struct ment *e)
{
    while (!lv_dlist_empty(&e->waiters)) {
        struct mwait *w = wait_of_link(e->waiters.next);
        lv_dlist_remove(&w->base.link);
        lv_dlist_remove(&w->all);
        w->base.changed = true;
        lv__idem_post(&w->base);
    }
}

static void entry_remove(struct mstore *s, struct ment *e)
{
    struct ment **pp = &s->buckets[e->hash & (s->nbuckets - 1)];
    while (*pp != e)
        pp = &(*pp)->hnext;
    *pp = e->hnext;
    heap_remove(s, e);
    s->count--;
    s->bytes -= entry_bytes(e);
    wake(e);
    free(e->resp);
    free(e);
}

static void expire_due(struct mstore *s, uint64_t now)
{
    while (s->heap_len > 0 && s->heap[0]->expires <= now)
        entry_remove(s, s->heap[0]);
}

static void on_timer(uv_timer_t *t);

/* Arms the timer for the earliest expiry, or the waiters' tick. */
static void arm(struct mstore *s)
{
    uint64_t now = now_of(s);
    uint64_t due = UINT64_MAX;
    if (s->heap_len > 0)
        due = s->heap[0]->expires;
    if (!lv_dlist_empty(&s->waiting) && s->wait_due < due)
        due = s->wait_due;
    if (due == UINT64_MAX) {
        uv_timer_stop(&s->timer);
        return;
    }
    uint64_t delay = due > now ? due - now : 0;
    if (!lv_dlist_empty(&s->waiting) && delay > WAIT_TICK_MS)
        delay = WAIT_TICK_MS;
    uv_timer_start(&s->timer, on_timer, delay, 0);
}

void lv_idem_memory_sweep(struct lv_idem *base)
{
    assert(base->vt == &mem_vt);
    struct mstore *s = (struct mstore *)base;
    if (base->dying)
        return;
    uint64_t now = now_of(s);
    expire_due(s, now);
    uint64_t due = UINT64_MAX;
    struct lv_dlist *l = s->waiting.next;
    while (l != &s->waiting) {
        struct mwait *w = wait_of_all(l);
        l = l->next;
        if (w->deadline <= now) {
            lv_dlist_remove(&w->base.link);
            lv_dlist_remove(&w->all);
            w->base.changed = false;
            lv__idem_post(&w->base);
        } else if (w->deadline < due) {
            due = w->deadline;
        }
    }
    s->wait_due = due;
    arm(s);
}

static void on_timer(uv_timer_t *t)
{
    lv_idem_memory_sweep(t->data);
}

/* ---- operations */

static struct lv_idem_op *mem_begin(struct lv_idem *base, const char *key, size_t klen,
                                    const uint8_t fp[LV_IDEM_FP_LEN], uint64_t lease_ms)
{
    struct mbegin *op = lv_xcalloc(1, sizeof(*op) + klen + 1);
    op->base.store = base;
    op->lease_ms = lease_ms;
    memcpy(op->fp, fp, LV_IDEM_FP_LEN);
    op->klen = klen;
    memcpy(op->key, key, klen);
    lv__idem_post(&op->base);
    return &op->base;
}

/* The decision is taken at delivery, so a REPLAY's response is read from a live entry and an
 * ACQUIRED lock exists only for a caller that is still there. */
static void mem_resolve(struct lv_idem_op *o)
{
    struct mbegin *op = (struct mbegin *)o;
    struct mstore *s = (struct mstore *)o->store;
    uint64_t now = now_of(s);
    uint64_t h = lv_siphash64(s->sip, op->key, op->klen);
    struct ment *e = lookup(s, op->key, op->klen, h);
    if (e && e->expires <= now) {
        entry_remove(s, e);
        e = NULL;
    }
    if (e) {
        if (memcmp(e->fp, op->fp, LV_IDEM_FP_LEN) != 0) {
            o->result = LV_IDEM_MISMATCH;
        } else if (!e->done) {
            o->result = LV_IDEM_IN_FLIGHT;
        } else {
            o->result = LV_IDEM_REPLAY;
            o->stored = (struct lv_idem_response){e->status, e->resp, e->head_len,
                                                  e->resp + e->head_len, e->body_len};
        }
        return;
    }
    size_t need = ENTRY_OVERHEAD + op->klen;
    if (s->bytes + need > s->max_bytes) {
        expire_due(s, now);
        if (s->bytes + need > s->max_bytes) {
            o->result = LV_IDEM_FULL;
            return;
        }
    }
    if (s->count >= s->nbuckets)
        grow(s);
    e = lv_xcalloc(1, sizeof(*e) + op->klen);
    e->hash = h;
    e->expires = now + op->lease_ms;
    e->gen = ++s->next_gen;
    lv_dlist_init(&e->waiters);
    memcpy(e->fp, op->fp, LV_IDEM_FP_LEN);
    e->klen = op->klen;
    memcpy(e->key, op->key, op->klen);
    e->hnext = s->buckets[h & (s->nbuckets - 1)];
    s->buckets[h & (s->nbuckets - 1)] = e;
    s->count++;
    s->bytes += entry_bytes(e);
    heap_push(s, e);
    arm(s);

    struct mlock *lk = lv_xcalloc(1, sizeof(*lk) + op->klen);
    lk->base.store = o->store;
    lk->gen = e->gen;
    lk->klen = op->klen;
    memcpy(lk->key, op->key, op->klen);
    o->store->locks++;
    o->lock = &lk->base;
    o->result = LV_IDEM_ACQUIRED;
}

static struct lv_idem_op *mem_wait(struct lv_idem *base, const char *key, size_t klen,
                                   uint64_t timeout_ms)
{
    struct mstore *s = (struct mstore *)base;
    struct mwait *w = lv_xcalloc(1, sizeof(*w));
    w->base.store = base;
    lv_dlist_init(&w->all);
    uint64_t now = now_of(s);
    uint64_t h = lv_siphash64(s->sip, key, klen);
    struct ment *e = lookup(s, key, klen, h);
    if (e && e->expires <= now) {
        entry_remove(s, e);
        e = NULL;
    }
    if (!e || e->done || timeout_ms == 0) {
        w->base.changed = !e || e->done;
        lv__idem_post(&w->base);
        return &w->base;
    }
    w->deadline = now + timeout_ms;
    lv_dlist_append(&e->waiters, &w->base.link);
    lv_dlist_append(&s->waiting, &w->all);
    if (w->deadline < s->wait_due)
        s->wait_due = w->deadline;
    arm(s);
    return &w->base;
}

static void mem_detach(struct lv_idem_op *o)
{
    /* Only waits are ever outside the ready list. */
    struct mwait *w = (struct mwait *)o;
    lv_dlist_remove(&w->base.link);
    lv_dlist_remove(&w->all);
}

/* The entry `lk` created, if it is still in flight under that lock. */
static struct ment *held(struct mstore *s, const struct mlock *lk)
{
    if (s->base.dying)
        return NULL;
    struct ment *e = lookup(s, lk->key, lk->klen, lv_siphash64(s->sip, lk->key, lk->klen));
    return e && !e->done && e->gen == lk->gen ? e : NULL;
}

static void lock_end(struct mlock *lk)
{
    struct lv_idem *s = lk->base.store;
    free(lk);
    lv__idem_lock_ended(s);
}

/* A notify op answered on the next loop turn, like every other. */
static struct lv_idem_op *told(struct lv_idem *s, bool yes)
{
    struct mwait *w = lv_xcalloc(1, sizeof(*w));
    w->base.store = s;
    lv_dlist_init(&w->all);
    w->base.changed = yes;
    lv__idem_post(&w->base);
    return &w->base;
}

static struct lv_idem_op *mem_complete(struct lv_idem_lock *l, const struct lv_idem_response *resp,
                                       uint64_t ttl_ms, bool notify)
{
    struct mlock *lk = (struct mlock *)l;
    struct mstore *s = (struct mstore *)l->store;
    struct ment *e = held(s, lk);
    bool stored = false;
    if (e && ttl_ms == 0) {
        entry_remove(s, e);
    } else if (e) {
        uint64_t now = now_of(s);
        /* Push our own expiry out first, so dropping the expired makes room without
         * dropping us. */
        e->expires = now + ttl_ms;
        heap_fix(s, e);
        size_t add = resp->head_len + resp->body_len;
        if (s->bytes + add > s->max_bytes)
            expire_due(s, now);
        if (s->bytes + add > s->max_bytes) {
            lv_warn("idempotency: memory store full, response of %zu bytes not stored", add);
            entry_remove(s, e);
        } else {
            e->resp = lv_xmalloc(add ? add : 1);
            if (resp->head_len)
                memcpy(e->resp, resp->head, resp->head_len);
            if (resp->body_len)
                memcpy(e->resp + resp->head_len, resp->body, resp->body_len);
            e->status = resp->status;
            e->head_len = resp->head_len;
            e->body_len = resp->body_len;
            e->done = true;
            s->bytes += add;
            wake(e);
            stored = true;
        }
        arm(s);
    }
    struct lv_idem_op *op = notify ? told(l->store, stored) : NULL;
    lock_end(lk);
    return op;
}

static struct lv_idem_op *mem_release(struct lv_idem_lock *l, bool notify)
{
    struct mlock *lk = (struct mlock *)l;
    struct mstore *s = (struct mstore *)l->store;
    struct ment *e = held(s, lk);
    if (e) {
        entry_remove(s, e);
        arm(s);
    }
    struct lv_idem_op *op = notify ? told(l->store, true) : NULL;
    lock_end(lk);
    return op;
}

static void mem_stats(struct lv_idem *base, struct lv_idem_stats *out)
{
    struct mstore *s = (struct mstore *)base;
    *out = (struct lv_idem_stats){"memory", s->count, s->bytes, s->max_bytes, true};
}

static void on_timer_close(uv_handle_t *h)
{
    lv__idem_handle_closed(h->data);
}

/* Nothing is ever outstanding here: the waiters are answered "not changed" (as if their time
 * had run out) and the store is drained at once; lookups already queued are answered
 * UNAVAILABLE at delivery (idem.c). */
static void mem_close(struct lv_idem *base)
{
    struct mstore *s = (struct mstore *)base;
    while (!lv_dlist_empty(&s->waiting)) {
        struct mwait *w = wait_of_all(s->waiting.next);
        mem_detach(&w->base);
        w->base.changed = false;
        lv__idem_post(&w->base);
    }
    lv__idem_drained(base);
}

static void mem_destroy(struct lv_idem *base)
{
    struct mstore *s = (struct mstore *)base;
    while (!lv_dlist_empty(&s->waiting)) {
        struct mwait *w = wait_of_all(s->waiting.next);
        mem_detach(&w->base);
        lv__idem_op_free(&w->base);
    }
    /* Entries stay until mem_free: a REPLAY callback that destroys the store still reads its
     * response afterwards. */
    uv_close((uv_handle_t *)&s->timer, on_timer_close);
}

static void mem_free(struct lv_idem *base)
{
    struct mstore *s = (struct mstore *)base;
    for (size_t i = 0; i < s->nbuckets; i++) {
        struct ment *e = s->buckets[i];
        while (e) {
            struct ment *next = e->hnext;
            free(e->resp);
            free(e);
            e = next;
        }
    }
    free(s->buckets);
    free(s->heap);
    free(s);
}

static const struct lv__idem_vt mem_vt = {
    .kind = "memory",
    .begin = mem_begin,
    .wait = mem_wait,
    .resolve = mem_resolve,
    .detach = mem_detach,
    .complete = mem_complete,
    .release = mem_release,
    .stats = mem_stats,
    .close = mem_close,
    .destroy = mem_destroy,
    .free = mem_free,
};

struct lv_idem *lv_idem_memory_create(uv_loop_t *loop, size_t max_memory)
{
    struct mstore *s = lv_xcalloc(1, sizeof(*s));
    lv__idem_init(&s->base, &mem_vt, loop);
    uv_timer_init(loop, &s->timer);
    uv_unref((uv_handle_t *)&s->timer);
    s->timer.data = s;
    s->base.handles++;
    s->now = default_now;
    s->now_arg = loop;
    s->nbuckets = 64;
    s->buckets = lv_xcalloc(s->nbuckets, sizeof(*s->buckets));
    s->max_bytes = max_memory ? max_memory : LV_IDEM_DEFAULT_MAX_MEMORY;
    lv_dlist_init(&s->waiting);
    s->wait_due = UINT64_MAX;
    if (RAND_bytes((unsigned char *)s->sip, sizeof(s->sip)) != 1) {
        /* Still spread, if guessable: the table works, only flooding gets easier. */
        s->sip[0] = uv_hrtime() ^ (uint64_t)(uintptr_t)s;
        s->sip[1] = s->sip[0] * 0x9E3779B97F4A7C15ULL;
    }
    return &s->base;
}

void lv_idem_memory_set_clock(struct lv_idem *base, uint64_t (*now)(void *arg), void *arg)
{
    assert(base->vt == &mem_vt);
    struct mstore *s = (struct mstore *)base;
    s->now = now ? now : default_now;
    s->now_arg = now ? arg : base->loop;
}
