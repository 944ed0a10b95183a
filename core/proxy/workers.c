#define _GNU_SOURCE /* sched_getaffinity */
#include "proxy/workers.h"

#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "base/inbox.h"
#include "base/log.h"
#include "net/upstream.h"
#include "obs/metrics.h"
#include "proxy/generation.h"

unsigned lv_workers_auto(void)
{
    cpu_set_t set;
    CPU_ZERO(&set);
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n > 256 ? 256 : (unsigned)n;
    }
    return 1;
}

static void on_tick(uv_timer_t *t)
{
    struct lv_worker *w = t->data;
    lv_server_tick(&w->server);
    lv_listeners_tick(&w->listeners);
}

void lv_workers_init(struct lv_workers *ws, unsigned n, uv_loop_t *main_loop,
                     const char *config_path)
{
    memset(ws, 0, sizeof(*ws));
    ws->n = n;
    ws->w = lv_xcalloc(n, sizeof(*ws->w));
    ws->sh = lv_server_shared_new(n);
    for (unsigned i = 0; i < n; i++) {
        struct lv_worker *w = &ws->w[i];
        w->index = i;
        w->ws = ws;
        if (i == 0) {
            w->loop = main_loop;
        } else {
            uv_loop_init(&w->own_loop);
            w->loop = &w->own_loop;
        }
        w->inbox = lv_inbox_open(w->loop);
        ws->sh->inboxes[i] = w->inbox;
        lv_server_init_worker(&w->server, w->loop, config_path, ws->sh, i);
        lv_listeners_init(&w->listeners, &w->server);
        if (i > 0) {
            uv_timer_init(w->loop, &w->tick);
            w->tick.data = w;
            uv_timer_start(&w->tick, on_tick, 1000, 1000);
        }
    }
}

/* ---- threads */

static void thread_exited(void *arg)
{
    struct lv_workers *ws = arg;
    if (--ws->threads_running == 0 && ws->on_threads_done)
        ws->on_threads_done(ws->on_threads_done_arg);
}

static void worker_main(void *arg)
{
    struct lv_worker *w = arg;
    lv_metrics_bind_thread(w->index);
    uv_run(w->loop, UV_RUN_DEFAULT);
    lv_inbox_call(w->ws->w[0].inbox, thread_exited, w->ws);
}

void lv_workers_start(struct lv_workers *ws)
{
    lv_metrics_bind_thread(0);
    for (unsigned i = 1; i < ws->n; i++) {
        struct lv_worker *w = &ws->w[i];
        if (uv_thread_create(&w->thread, worker_main, w) == 0) {
            w->has_thread = true;
            ws->threads_running++;
        } else {
            lv_error("worker %u: cannot start its thread", i);
        }
    }
}

void lv_worker_stop(struct lv_worker *w)
{
    if (w->index > 0) {
        uv_timer_stop(&w->tick);
        uv_close((uv_handle_t *)&w->tick, NULL);
    }
    lv_server_stop(&w->server);
}

/* ---- running something on every worker */

struct each {
    void (*fn)(struct lv_worker *w, void *arg);
    void *arg;
    void (*done)(void *arg);
    void *done_arg;
    struct lv_workers *ws;
    atomic_uint left;
};

struct each_msg {
    struct lv_inbox_msg base;
    struct each *e;
    struct lv_worker *w;
};

static void each_done(void *arg)
{
    struct each *e = arg;
    if (e->done)
        e->done(e->done_arg);
    free(e);
}

static void run_each(struct lv_inbox_msg *m)
{
    struct each_msg *em = (struct each_msg *)m;
    struct each *e = em->e;
    e->fn(em->w, e->arg);
    free(em);
    if (atomic_fetch_sub(&e->left, 1) == 1)
        lv_inbox_call(e->ws->w[0].inbox, each_done, e);
}

void lv_workers_each(struct lv_workers *ws, void (*fn)(struct lv_worker *w, void *arg), void *arg,
                     void (*done)(void *arg), void *done_arg)
{
    struct each *e = lv_xcalloc(1, sizeof(*e));
    e->fn = fn;
    e->arg = arg;
    e->done = done;
    e->done_arg = done_arg;
    e->ws = ws;
    atomic_init(&e->left, ws->n);
    for (unsigned i = 0; i < ws->n; i++) {
        struct each_msg *em = lv_xmalloc(sizeof(*em));
        em->base.run = run_each;
        em->e = e;
        em->w = &ws->w[i];
        lv_inbox_post(ws->w[i].inbox, &em->base);
    }
}

/* ---- statistics */

static void snap_clear(struct lv_worker_snap *s)
{
    for (size_t i = 0; i < s->nupstreams; i++)
        free(s->upstreams[i].servers);
    free(s->upstreams);
    memset(s, 0, sizeof(*s));
}

void lv_worker_snapshot(struct lv_worker *w)
{
    struct lv_worker_snap *sn = &w->snap;
    snap_clear(sn);
    struct lv_server *s = &w->server;
    sn->generation = s->generation;
    sn->connections = s->nclients;
    sn->requests = s->requests;
    struct lv_generation *g = lv_server_generation(s);
    if (!g)
        return;
    sn->nupstreams = g->cfg->nupstreams;
    sn->upstreams = lv_xcalloc(sn->nupstreams + 1, sizeof(*sn->upstreams));
    for (size_t i = 0; i < sn->nupstreams; i++) {
        struct lv_upstream *up = g->upstreams[i];
        struct lv_worker_snap_up *u = &sn->upstreams[i];
        u->waiting = up->nwaiting;
        u->panic_picks = up->panic_picks;
        u->nservers = up->nservers;
        u->servers = lv_xcalloc(up->nservers + 1, sizeof(*u->servers));
        for (size_t k = 0; k < up->nservers; k++) {
            const struct lv_upserver *sv = &up->servers[k];
            u->servers[k] = (struct lv_upserver_counts){
                .active = sv->active,
                .idle = sv->idle,
                .inflight = sv->inflight,
                .connects = sv->connects,
                .connect_failures = sv->connect_failures,
                .tls_resumed = sv->tls_resumed,
            };
        }
    }
}

void lv_workers_free(struct lv_workers *ws)
{
    for (unsigned i = 1; i < ws->n; i++) {
        struct lv_worker *w = &ws->w[i];
        if (w->has_thread)
            uv_thread_join(&w->thread);
    }
    /* The threads are gone: whatever was posted to them runs here, then their loops close. */
    for (unsigned i = 0; i < ws->n; i++) {
        struct lv_worker *w = &ws->w[i];
        lv_inbox_close(w->inbox);
        uv_run(w->loop, UV_RUN_DEFAULT);
    }
    for (unsigned i = 0; i < ws->n; i++) {
        struct lv_worker *w = &ws->w[i];
        snap_clear(&w->snap);
        lv_server_free(&w->server);
        if (i > 0 && uv_loop_close(&w->own_loop) != 0) {
            uv_run(&w->own_loop, UV_RUN_DEFAULT);
            uv_loop_close(&w->own_loop);
        }
    }
    lv_server_shared_free(ws->sh);
    free(ws->w);
    memset(ws, 0, sizeof(*ws));
}
