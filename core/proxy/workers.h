/*
 * workers: the worker loops (README "Workers"). Worker 0 runs on the main loop, beside the
 * admin API, the signals and reloads; workers 1 .. N-1 each run a loop on a thread of their
 * own. Each worker has its own server (proxy/server.h: generation, upstream pools, clients)
 * and listeners, touched only by its own thread. Other threads reach a worker through its
 * inbox (base/inbox.h); what workers share lives in struct lv_server_shared.
 *
 * lv_workers_each runs a function on every worker's loop and then, once all have run it, a
 * completion on the main loop: installs, drains and statistics for a scrape go this way.
 */
#ifndef LV_WORKERS_H
#define LV_WORKERS_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "proxy/listener.h"
#include "proxy/server.h"

struct lv_workers;

/* A worker's numbers for /status, copied on its own thread (lv_workers_each) for the main
 * thread to read once every worker has run. */
struct lv_upserver_counts {
    uint32_t active, idle, inflight;
    uint64_t connects, connect_failures, tls_resumed;
};
struct lv_worker_snap {
    uint64_t generation;
    uint32_t connections;
    uint64_t requests;
    size_t nupstreams;
    struct lv_worker_snap_up {
        uint32_t waiting;
        uint64_t panic_picks;
        size_t nservers;
        struct lv_upserver_counts *servers;
    } * upstreams;
};

struct lv_worker {
    unsigned index;
    uv_loop_t *loop; /* worker 0: the main loop; else own_loop */
    uv_loop_t own_loop;
    uv_thread_t thread;
    bool has_thread;
    struct lv_inbox *inbox;
    struct lv_server server;
    struct lv_listeners listeners;
    uv_timer_t tick; /* workers >= 1: once a second (worker 0's is main.c's) */
    struct lv_workers *ws;
    struct lv_worker_snap snap;
};

struct lv_workers {
    unsigned n;
    struct lv_worker *w;
    struct lv_server_shared *sh;
    unsigned threads_running; /* seen from the main thread */
    /* main loop: every worker thread has ended its loop */
    void (*on_threads_done)(void *arg);
    void *on_threads_done_arg;
};

/** One worker per CPU this process may run on (sched_getaffinity), at least 1. */
unsigned lv_workers_auto(void);
/** Sets up `n` workers: worker 0 on `main_loop`, the others' loops, every server, listeners
 *  and inbox (nothing runs yet). */
void lv_workers_init(struct lv_workers *ws, unsigned n, uv_loop_t *main_loop,
                     const char *config_path);
/** Starts the threads of workers 1 .. n-1. */
void lv_workers_start(struct lv_workers *ws);
/** Runs fn(w, arg) on every worker's loop, then done(done_arg) on the main loop (done may be
 *  NULL). Call from the main thread. */
void lv_workers_each(struct lv_workers *ws, void (*fn)(struct lv_worker *w, void *arg), void *arg,
                     void (*done)(void *arg), void *done_arg);
/** On worker w's thread, after its drain: stops its server and tick; its loop then ends. */
void lv_worker_stop(struct lv_worker *w);
/** After the main loop ended: joins the threads, closes the inboxes, frees the servers. */
void lv_workers_free(struct lv_workers *ws);
/** Fills w->snap from w's server (on w's thread). */
void lv_worker_snapshot(struct lv_worker *w);

#endif
