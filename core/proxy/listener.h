/*
 * listener: the connection side of a server. Its listening sockets (plain or HTTPS) and the
 * connections they accept (proxy/client.c serves them); the once-a-second report of refused
 * requests left out of the access log; and the drain at shutdown (README "Operations"): stop
 * accepting, close idle connections, let busy ones finish up to drain_timeout, then close
 * what is left and say so.
 *
 * A reload is all or nothing: lv_listeners_prepare binds what the new configuration adds
 * (and loads certificates again) without touching what is in force; then either
 * lv_listeners_commit or lv_listeners_undo.
 */
#ifndef LV_LISTENER_H
#define LV_LISTENER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "conf/config.h"

struct lv_server;
struct lv_tls_ctx;

struct lv_listener {
    uv_tcp_t tcp;
    struct lv_server *server;
    struct lv_hostport addr;
    char name[80];
    struct lv_tls_ctx *tls_ctx; /* listen { tls = { cert, key } }: HTTPS; NULL: plain */
    bool balance;               /* a socket shared by workers: the least busy one serves */
    bool closing;
};

struct lv_listeners {
    struct lv_server *server;
    struct lv_listener **items; /* in force, per cfg->listens[i] */
    size_t n;
    uv_timer_t drain_timer;
    void (*on_drained)(void *arg); /* the last connection closed after lv_listeners_drain */
    void *on_drained_arg;
    bool drained;
};

/* A configuration's listeners, ready to go in force in every worker (see above). */
struct lv_listen_plan {
    size_t n;          /* cfg->nlistens */
    unsigned nworkers; /* columns of fds */
    enum lv_accept_mode mode;
    int *keep; /* per cfg->listens[i]: index of the listener in force it keeps, or -1 */
    int *fds;  /* per i, per worker: the new socket (-1: kept, or taken at commit) */
    struct lv_tls_ctx **tls; /* per i: its (reloaded) TLS context, one reference; NULL: plain */
};

/** Sets up an empty set for `s`. Its drain timer is a loop handle: lv_listeners_drain, which
 *  every run ends with, closes it. */
void lv_listeners_init(struct lv_listeners *ls, struct lv_server *s);
/** On the main thread, with `ls` the first worker's set (every worker's is alike): binds the
 *  listeners `cfg` adds, a socket per worker or one shared (README "Workers"); unchanged
 *  addresses keep their sockets, with their certificates loaded again. Returns 0, or a
 *  negative libuv error with each reason appended to `errors` as one line (and nothing left
 *  open). */
int lv_listeners_prepare(struct lv_listeners *ls, const struct lv_config *cfg, unsigned nworkers,
                         enum lv_accept_mode mode, struct lv_listen_plan *p, struct lv_buf *errors);
/** On worker `worker`'s thread: the planned listeners go in force (it takes its sockets);
 *  removed ones stop accepting (their connections finish normally). Cannot fail. */
void lv_listeners_commit(struct lv_listeners *ls, const struct lv_config *cfg,
                         struct lv_listen_plan *p, unsigned worker);
/** After every worker committed, or to give the plan up: closes what no worker took. */
void lv_listen_plan_free(struct lv_listen_plan *p);
/** Once a second: the refused requests the access log left out (proxy/client.c). */
void lv_listeners_tick(struct lv_listeners *ls);

/** Shutdown: stops accepting, closes idle connections, lets busy ones finish for up to
 *  `drain_timeout_ms`, then closes the rest; `done(arg)` on the loop turn after none is left.
 *  Marks the server draining. A second call does nothing. */
void lv_listeners_drain(struct lv_listeners *ls, uint64_t drain_timeout_ms, void (*done)(void *arg),
                        void *arg);

#endif
