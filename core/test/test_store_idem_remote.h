/*
 * test_store_idem_remote.h: the fixture of test_store_idem_remote.c: threads each running a loop
 * with an inbox (the owner O of the target store, a second worker B), the target memory store on
 * a fake clock, and setup/teardown. Included once, by that test.
 */
#ifndef LV_TEST_STORE_IDEM_REMOTE_H
#define LV_TEST_STORE_IDEM_REMOTE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/inbox.h"
#include "store/idem.h"
#include "t.h"
#include "test_store_idem.h"
/* ---- threads with a loop and an inbox */

struct worker {
    uv_loop_t loop;
    struct lv_inbox *ib;
    uv_async_t hold; /* keeps the loop up until worker_stop */
    pthread_t th;
    atomic_int ended;
    int close_rc;
};

static uv_loop_t ml; /* the main thread's loop */
static struct lv_inbox *mib;
static struct worker O, B; /* the owner (the target's loop) and a second worker */
static struct lv_idem *tgt;

static void on_hold(uv_async_t *a)
{
    (void)a;
}

static void close_hold(void *arg)
{
    uv_close(arg, NULL);
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    uv_run(&w->loop, UV_RUN_DEFAULT);
    lv_inbox_close(w->ib);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    w->close_rc = uv_loop_close(&w->loop);
    atomic_store(&w->ended, 1);
    return NULL;
}

static void worker_start(struct worker *w)
{
    uv_loop_init(&w->loop);
    w->ib = lv_inbox_open(&w->loop);
    uv_async_init(&w->loop, &w->hold, on_hold);
    atomic_store(&w->ended, 0);
    w->close_rc = -1;
    pthread_create(&w->th, NULL, worker_main, w);
}

static void bump(void *arg)
{
    (*(int *)arg)++;
}

struct call {
    void (*fn)(void *arg);
    void *arg;
    int *done;
};

static void call_run(void *arg)
{
    struct call *c = arg;
    c->fn(c->arg);
    lv_inbox_call(mib, bump, c->done);
    free(c);
}

/* Runs fn(arg) on w's thread and waits (running the main loop) until it has. */
static bool on_worker(struct worker *w, void (*fn)(void *arg), void *arg)
{
    int done = 0;
    struct call *c = malloc(sizeof(*c));
    *c = (struct call){fn, arg, &done};
    lv_inbox_call(w->ib, call_run, c);
    return run_until(&ml, &done, 1, 10000);
}

static void noop(void *arg)
{
    (void)arg;
}

/* Waits until w's loop has run once more after everything posted so far and the answers it
 * sent meanwhile reached the main loop and were delivered there. */
static void settle(void)
{
    T_CHECK(on_worker(&O, noop, NULL));
    T_CHECK(on_worker(&O, noop, NULL));
    for (int i = 0; i < 3; i++)
        uv_run(&ml, UV_RUN_NOWAIT);
}

/* Ends w's loop: it stops once nothing else keeps it up. */
static void worker_stop(struct worker *w)
{
    lv_inbox_call(w->ib, close_hold, &w->hold);
    uint64_t deadline = uv_hrtime() + 10 * 1000000000ULL;
    while (!atomic_load(&w->ended) && uv_hrtime() < deadline) {
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    T_CHECK(atomic_load(&w->ended));
    if (!atomic_load(&w->ended)) {
        fprintf(stderr, "worker loop did not end\n");
        exit(1);
    }
    pthread_join(w->th, NULL);
    T_CHECK_INT(w->close_rc, 0);
}

/* ---- the target, on O */

static void make_target(void *arg)
{
    (void)arg;
    fake_ms = 1000000;
    tgt = lv_idem_memory_create(&O.loop, 0);
    lv_idem_memory_set_clock(tgt, fake_now, NULL);
}

static void ref_target(void *arg)
{
    (void)arg;
    lv_idem_ref(tgt);
}

static void unref_target(void *arg)
{
    (void)arg;
    lv_idem_unref(tgt);
}

static uint64_t advance_by;
static void advance_on_owner(void *arg)
{
    (void)arg;
    fake_ms += advance_by;
    lv_idem_memory_sweep(tgt);
}

/* Moves the target's clock (on its thread) and sweeps. */
static void advance(uint64_t ms)
{
    advance_by = ms;
    T_CHECK(on_worker(&O, advance_on_owner, NULL));
}

static struct lv_idem_stats tstats;
static void stats_on_owner(void *arg)
{
    (void)arg;
    lv_idem_stats(tgt, &tstats);
}

static uint64_t target_entries(void)
{
    T_CHECK(on_worker(&O, stats_on_owner, NULL));
    return tstats.entries;
}

static void setup(void)
{
    uv_loop_init(&ml);
    mib = lv_inbox_open(&ml);
    worker_start(&O);
    T_CHECK(on_worker(&O, make_target, NULL));
}

/* A remote store on the main loop; the reference it takes over is taken on O. */
static struct lv_idem *remote_here(void)
{
    T_CHECK(on_worker(&O, ref_target, NULL));
    return lv_idem_remote_create(&ml, mib, tgt, O.ib);
}

/* The remote stores are unref'd or destroyed already. */
static void teardown(void)
{
    uv_run(&ml, UV_RUN_DEFAULT); /* they finish: the loop stays up until their answers are in */
    T_CHECK(on_worker(&O, unref_target, NULL));
    worker_stop(&O);
    lv_inbox_close(mib);
    uv_run(&ml, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(&ml), 0);
}

#endif
