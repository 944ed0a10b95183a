/*
 * The route bulkhead's counter and FIFO (policy/bulkhead.h): admission, queueing, hand-over of
 * slots to the oldest waiter, cancellation, moving limits; and the locking protocol of the
 * header run by several threads (under TSan in the tsan build).
 */
#include "policy/bulkhead.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "t.h"

T_TEST(fixed_limit_queue_reject)
{
    struct lv_bulkhead b;
    struct lv_bulkhead_waiter w[8];
    lv_bulkhead_init(&b);
    for (int i = 0; i < 8; i++)
        lv_bulkhead_waiter_init(&w[i]);
    /* max 3, queue 2 */
    for (int i = 0; i < 3; i++)
        T_CHECK_INT(lv_bulkhead_admit(&b, 3, 2, &w[i], 100), LV_BULKHEAD_GO);
    T_CHECK_INT(lv_bulkhead_admit(&b, 3, 2, &w[3], 101), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_admit(&b, 3, 2, &w[4], 102), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_admit(&b, 3, 2, &w[5], 103), LV_BULKHEAD_REJECT);
    T_CHECK_INT(b.inflight, 3);
    T_CHECK_INT(b.queued, 2);
    T_CHECK(!w[3].admitted && lv_dlist_linked(&w[3].link));
    T_CHECK(!lv_dlist_linked(&w[5].link)); /* a rejected waiter is not touched */
    T_CHECK_INT(w[3].enqueued_at, 101);
    T_CHECK_INT(b.admitted_now, 3);
    T_CHECK_INT(b.enqueued, 2);
    T_CHECK_INT(b.rejected, 1);
    /* nothing is handed over while the limit is full */
    T_CHECK(lv_bulkhead_next(&b, 3) == NULL);
    /* a release hands the slot to the oldest waiter */
    lv_bulkhead_release(&b);
    T_CHECK(lv_bulkhead_next(&b, 3) == &w[3]);
    T_CHECK(w[3].admitted && !lv_dlist_linked(&w[3].link));
    T_CHECK(lv_bulkhead_next(&b, 3) == NULL);
    T_CHECK_INT(b.inflight, 3);
    T_CHECK_INT(b.queued, 1);
    T_CHECK_INT(b.admitted_queued, 1);
    /* everything ends */
    for (int i = 0; i < 3; i++)
        lv_bulkhead_release(&b);
    T_CHECK(lv_bulkhead_next(&b, 3) == &w[4]);
    lv_bulkhead_release(&b);
    T_CHECK_INT(b.inflight, 0);
    T_CHECK_INT(b.queued, 0);
    T_CHECK(lv_dlist_empty(&b.queue));
    /* an unmatched release does not wrap */
    lv_bulkhead_release(&b);
    T_CHECK_INT(b.inflight, 0);
}

/* A free slot goes to the oldest waiter, never to a newcomer; waiters leave in arrival order. */
T_TEST(fifo_no_overtaking)
{
    struct lv_bulkhead b;
    struct lv_bulkhead_waiter w[6];
    lv_bulkhead_init(&b);
    for (int i = 0; i < 6; i++)
        lv_bulkhead_waiter_init(&w[i]);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 10, &w[0], 0), LV_BULKHEAD_GO);
    for (int i = 1; i < 4; i++)
        T_CHECK_INT(lv_bulkhead_admit(&b, 1, 10, &w[i], (uint64_t)i), LV_BULKHEAD_QUEUED);
    lv_bulkhead_release(&b); /* the slot is free, but w[1..3] wait: a newcomer queues */
    T_CHECK(!lv_bulkhead_try_acquire(&b, 1));
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 10, &w[4], 4), LV_BULKHEAD_QUEUED);
    for (int i = 1; i <= 4; i++) {
        T_CHECK(lv_bulkhead_next(&b, 1) == &w[i]);
        T_CHECK(lv_bulkhead_next(&b, 1) == NULL);
        lv_bulkhead_release(&b);
    }
    /* queue empty again: a newcomer goes straight through */
    T_CHECK(lv_bulkhead_try_acquire(&b, 1));
}

T_TEST(cancel)
{
    struct lv_bulkhead b;
    struct lv_bulkhead_waiter w[4];
    lv_bulkhead_init(&b);
    for (int i = 0; i < 4; i++)
        lv_bulkhead_waiter_init(&w[i]);
    T_CHECK(!lv_bulkhead_cancel(&b, &w[0])); /* never queued */
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[0], 0), LV_BULKHEAD_GO);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[1], 1), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[2], 2), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[3], 3), LV_BULKHEAD_QUEUED);
    /* the middle one times out */
    T_CHECK(lv_bulkhead_cancel(&b, &w[2]));
    T_CHECK(!lv_bulkhead_cancel(&b, &w[2]));
    T_CHECK_INT(b.queued, 2);
    T_CHECK_INT(b.cancelled, 1);
    lv_bulkhead_release(&b);
    T_CHECK(lv_bulkhead_next(&b, 1) == &w[1]);
    /* w[1]'s timer fires after it was admitted: cancel says no, it owns a slot */
    T_CHECK(!lv_bulkhead_cancel(&b, &w[1]));
    T_CHECK(w[1].admitted);
    T_CHECK_INT(b.inflight, 1);
    lv_bulkhead_release(&b);
    T_CHECK(lv_bulkhead_next(&b, 1) == &w[3]);
    lv_bulkhead_release(&b);
    T_CHECK_INT(b.inflight, 0);
    T_CHECK_INT(b.queued, 0);
    /* a waiter can be used again after init */
    lv_bulkhead_waiter_init(&w[1]);
    T_CHECK(!w[1].admitted);
}

/* The limit is read at each call: the adaptive one shrinks and grows under the bulkhead. */
T_TEST(moving_limit)
{
    struct lv_bulkhead b;
    struct lv_bulkhead_waiter w[20];
    lv_bulkhead_init(&b);
    for (int i = 0; i < 20; i++)
        lv_bulkhead_waiter_init(&w[i]);
    for (int i = 0; i < 10; i++)
        T_CHECK_INT(lv_bulkhead_admit(&b, 10, 10, &w[i], 0), LV_BULKHEAD_GO);
    for (int i = 10; i < 20; i++)
        T_CHECK_INT(lv_bulkhead_admit(&b, 10, 10, &w[i], 0), LV_BULKHEAD_QUEUED);
    /* the limit falls to 6: releases do not hand over until inflight is under 6 */
    for (int i = 0; i < 4; i++) {
        lv_bulkhead_release(&b);
        T_CHECK(lv_bulkhead_next(&b, 6) == NULL);
    }
    T_CHECK_INT(b.inflight, 6);
    lv_bulkhead_release(&b);
    T_CHECK(lv_bulkhead_next(&b, 6) == &w[10]);
    T_CHECK(lv_bulkhead_next(&b, 6) == NULL);
    /* the limit rises to 9: three more at once, without any release */
    T_CHECK(lv_bulkhead_next(&b, 9) == &w[11]);
    T_CHECK(lv_bulkhead_next(&b, 9) == &w[12]);
    T_CHECK(lv_bulkhead_next(&b, 9) == &w[13]);
    T_CHECK(lv_bulkhead_next(&b, 9) == NULL);
    T_CHECK_INT(b.inflight, 9);
    T_CHECK_INT(b.queued, 6);
    /* limit 0 admits nothing, queue_max 0 queues nothing */
    struct lv_bulkhead z;
    struct lv_bulkhead_waiter zw;
    lv_bulkhead_init(&z);
    lv_bulkhead_waiter_init(&zw);
    T_CHECK(!lv_bulkhead_try_acquire(&z, 0));
    T_CHECK(!lv_bulkhead_can_queue(&z, 0));
    T_CHECK_INT(lv_bulkhead_admit(&z, 0, 0, &zw, 0), LV_BULKHEAD_REJECT);
    T_CHECK_INT(lv_bulkhead_admit(&z, 1, 0, &zw, 0), LV_BULKHEAD_GO);
    T_CHECK_INT(lv_bulkhead_admit(&z, 1, 0, &zw, 0), LV_BULKHEAD_REJECT);
}

T_TEST(deadlines_and_sweep)
{
    struct lv_bulkhead b;
    struct lv_bulkhead_waiter w[4];
    lv_bulkhead_init(&b);
    for (int i = 0; i < 4; i++)
        lv_bulkhead_waiter_init(&w[i]);
    T_CHECK(lv_bulkhead_expired(&b, 1000, 100) == NULL); /* empty */
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[0], 0), LV_BULKHEAD_GO);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[1], 1000), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[2], 1050), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_admit(&b, 1, 5, &w[3], 1200), LV_BULKHEAD_QUEUED);
    T_CHECK_INT(lv_bulkhead_deadline(&w[1], 100), 1100);
    T_CHECK(lv_bulkhead_deadline(&w[1], UINT64_MAX) == UINT64_MAX); /* saturates */
    T_CHECK(lv_bulkhead_expired(&b, 1099, 100) == NULL);
    /* at 1160, w[1] and w[2] are over their 100: swept oldest first, w[3] stays */
    int swept = 0;
    struct lv_bulkhead_waiter *x;
    while ((x = lv_bulkhead_expired(&b, 1160, 100))) {
        T_CHECK(x == &w[1 + swept]);
        T_CHECK(lv_bulkhead_cancel(&b, x));
        swept++;
    }
    T_CHECK_INT(swept, 2);
    T_CHECK_INT(b.queued, 1);
    T_CHECK_INT(b.cancelled, 2);
}

/*
 * The header's protocol on several threads: one mutex around the bulkhead, each queued request
 * waits on its own condition variable, the releasing thread hands slots over and wakes; some
 * waiters give up (a short "queue timeout") and cancel. Checks: never more than the limit in
 * flight, every request accounted for once, the bulkhead empty at the end.
 */
#define THREADS    4
#define PER_THREAD 2000
#define LIMIT      3
#define QUEUE      4

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct lv_bulkhead shared;
static atomic_int running, max_running, served, rejected, timed_out, bad_cancel;

struct req {
    struct lv_bulkhead_waiter w; /* first: the waiter is the request */
    pthread_cond_t cv;
};

static void wake_all(void) /* under mu */
{
    struct lv_bulkhead_waiter *w;
    while ((w = lv_bulkhead_next(&shared, LIMIT)))
        pthread_cond_signal(&((struct req *)(void *)w)->cv);
}

static void serve(void)
{
    int now = atomic_fetch_add(&running, 1) + 1;
    int m = atomic_load(&max_running);
    while (now > m && !atomic_compare_exchange_weak(&max_running, &m, now))
        ;
    for (volatile int i = 0; i < 2000; i++)
        ;
    sched_yield(); /* let the others arrive while this one is in flight */
    atomic_fetch_sub(&running, 1);
    atomic_fetch_add(&served, 1);
    pthread_mutex_lock(&mu);
    lv_bulkhead_release(&shared);
    wake_all();
    pthread_mutex_unlock(&mu);
}

static void *worker(void *arg)
{
    unsigned seed = (unsigned)(uintptr_t)arg;
    struct req r;
    pthread_cond_init(&r.cv, NULL);
    for (int i = 0; i < PER_THREAD; i++) {
        lv_bulkhead_waiter_init(&r.w);
        pthread_mutex_lock(&mu);
        enum lv_bulkhead_admit a = lv_bulkhead_admit(&shared, LIMIT, QUEUE, &r.w, 0);
        if (a == LV_BULKHEAD_REJECT) {
            pthread_mutex_unlock(&mu);
            atomic_fetch_add(&rejected, 1);
            continue;
        }
        if (a == LV_BULKHEAD_QUEUED) {
            seed = seed * 1103515245u + 12345u;
            bool patient = (seed >> 16) % 4 != 0; /* one in four gives up at once */
            while (!r.w.admitted && patient)
                pthread_cond_wait(&r.cv, &mu);
            if (!r.w.admitted) {
                /* the queue timeout: cancel; false means it was admitted meanwhile */
                if (!lv_bulkhead_cancel(&shared, &r.w)) /* (T_CHECK is not thread-safe) */
                    atomic_fetch_add(&bad_cancel, 1);
                pthread_mutex_unlock(&mu);
                atomic_fetch_add(&timed_out, 1);
                continue;
            }
        }
        pthread_mutex_unlock(&mu);
        serve();
    }
    pthread_cond_destroy(&r.cv);
    return NULL;
}

T_TEST(threads_follow_the_protocol)
{
    lv_bulkhead_init(&shared);
    pthread_t t[THREADS];
    for (int i = 0; i < THREADS; i++)
        T_CHECK_INT(pthread_create(&t[i], NULL, worker, (void *)(uintptr_t)(i + 1)), 0);
    for (int i = 0; i < THREADS; i++)
        pthread_join(t[i], NULL);
    fprintf(stderr, "  served %d (%llu from the queue), rejected %d, gave up %d\n",
            atomic_load(&served), (unsigned long long)shared.admitted_queued,
            atomic_load(&rejected), atomic_load(&timed_out));
    T_CHECK_INT(atomic_load(&bad_cancel), 0);
    T_CHECK(shared.admitted_queued > 0); /* the hand-over ran (thousands, in practice) */
    T_CHECK(atomic_load(&max_running) <= LIMIT);
    T_CHECK(atomic_load(&max_running) >= 1);
    T_CHECK_INT(atomic_load(&served) + atomic_load(&rejected) + atomic_load(&timed_out),
                THREADS * PER_THREAD);
    T_CHECK_INT(shared.inflight, 0);
    T_CHECK_INT(shared.queued, 0);
    T_CHECK_INT(shared.admitted_now + shared.admitted_queued, atomic_load(&served));
    T_CHECK_INT(shared.cancelled, atomic_load(&timed_out));
    T_CHECK_INT(shared.rejected, atomic_load(&rejected));
}

int main(void)
{
    T_RUN(fixed_limit_queue_reject);
    T_RUN(fifo_no_overtaking);
    T_RUN(cancel);
    T_RUN(moving_limit);
    T_RUN(deadlines_and_sweep);
    T_RUN(threads_follow_the_protocol);
    T_DONE();
}
