/*
 * server: one worker loop and everything it owns: the listeners, the current configuration
 * generation, the runtime upstreams (by name), the route state registry (by name), the
 * metrics registry, the admin listener, the access log, signals and graceful shutdown.
 *
 * Nothing on the request path is global: a client connection reaches all of it through its
 * server pointer, so several workers (SO_REUSEPORT listeners, one loop per thread) can run
 * side by side later without a rewrite.
 */
#ifndef LV_SERVER_H
#define LV_SERVER_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "obs/metrics.h"
#include "policy/breaker.h"
#include "policy/budget.h"
#include "proxy/routestate.h"
#include "script/config.h"
#include "script/hooks.h"
#include "store/idem.h"

struct lv_client;
struct lv_admin;
struct lv_upstream;
struct lv_tls_ctx;
struct lv_reload;
struct lv_reload_waiter;

/* The answer to one reload request: rc 0 and the generation now in force, or -1 and the
 * errors ("FILE:LINE: ...\n" lines; not NUL-terminated). */
typedef void (*lv_reload_cb)(void *arg, int rc, uint64_t generation, const char *errors,
                             size_t len);

struct lv_listener {
    uv_tcp_t tcp;
    struct lv_server *server;
    struct lv_hostport addr;
    char name[80];
    struct lv_tls_ctx *tls_ctx; /* listen { tls = { cert, key } }: HTTPS; NULL: plain */
    bool closing;
};

struct lv_server {
    uv_loop_t *loop;
    struct lv_config *cfg; /* current generation: the server holds one reference */
    uint64_t generation;
    char *config_path;
    const char *lua_dir;
    bool dev_mode;

    struct lv_listener **listeners;
    size_t nlisteners;
    struct lv_admin *admin;

    struct lv_upstream **upstreams; /* runtime upstreams, by name */
    size_t nupstreams;
    struct lv_upstream **retired; /* replaced by a reload, still used by older requests */
    size_t nretired;
    struct lv_idem **old_stores; /* idempotency stores replaced by a reload (freed at exit) */
    size_t nold_stores;
    struct lv_route_states routes; /* route state registry, by name (proxy/routestate.h) */

    struct lv_metrics *metrics;
    struct lv_metric_family *m_requests, *m_duration, *m_retries, *m_budget_exhausted, *m_reloads,
        *m_generation, *m_upconns, *m_clients, *m_bad_requests, *m_attempts, *m_breaker_state,
        *m_fallbacks, *m_breaker_rejected, *m_hook_errors, *m_idem_replays, *m_idem_stored,
        *m_idem_conflicts, *m_idem_mismatches, *m_idem_store_errors, *m_idem_entries;
    struct lv_metric_family *m_server_up, *m_ejections, *m_health_checks, *m_panics;
    struct lv_metric_family *m_up_sent, *m_up_received, *m_attempt_duration;
    struct lv_metric *m_reload_ok, *m_reload_err;

    /* access-log lines for requests refused before routing, at most LV_REFUSED_LOG_PER_S a
     * second (a flood of garbage must not make logging the bottleneck) */
    uint64_t refused_log_second; /* loop ms / 1000 of the current second */
    uint32_t refused_logged;     /* lines written in it */
    uint64_t refused_unlogged;   /* refused requests not logged in it */

    /* client connections */
    struct lv_client *clients; /* intrusive list head */
    uint32_t nclients;
    uint64_t next_conn_id;
    uint64_t rid_state; /* request id generator */

    /* access log */
    int access_fd; /* -1: off */
    bool access_fd_owned;
    struct lv_buf access_buf;
    uv_check_t flush_check;

    /* watch = true: one fs watcher per folder holding the file or a module it required */
    struct lv_watch *watches;
    uv_timer_t watch_debounce;
    uint64_t reloads_by_watch;

    /* reload (README "Reload"): one load at a time, on a thread of its own */
    struct lv_reload *reload;              /* the load in progress, or NULL */
    struct lv_reload_waiter *reload_queue; /* requests answered by the next load */
    bool reload_again;                     /* a reload was asked during the current one */
    uv_async_t reload_async;               /* the loader thread's "done" */
    uv_timer_t reload_timer;               /* LV_CONFIG_LOAD_WAIT_MS: then it is abandoned */

    uv_signal_t sig_term, sig_int, sig_hup, sig_quit, sig_usr1, sig_usr2;
    bool error_fd_owned; /* error_log = "path": the log module writes to a file levee opened */
    uv_timer_t tick;
    uv_timer_t drain_timer;
    bool draining;
    int exit_code;
    double reload_at;
    char last_reload_result[512];
};

/** Sets up the server on `loop` with `cfg` (takes the caller's reference), binds listeners.
 *  Returns 0 or a negative libuv error (logged). */
int lv_server_start(struct lv_server *s, uv_loop_t *loop, struct lv_config *cfg);
/** Loads the config file again, off the loop, and swaps it in when valid (the old one keeps
 *  serving otherwise). `cb(arg, ...)` (may be NULL) gets the outcome when the load ends; at
 *  once when no reload is possible. A reload asked while one runs waits for it; all asked
 *  meanwhile share the next load. */
void lv_server_reload(struct lv_server *s, lv_reload_cb cb, void *arg);
/** Forgets the pending answers to `arg` (its requester went away). */
void lv_server_reload_cancel(struct lv_server *s, void *arg);
/** Stops accepting, lets requests in flight finish (up to drain_timeout), then stops. */
void lv_server_shutdown(struct lv_server *s);

/** Frees what the server owns, after its loop ran to completion. */
void lv_server_free(struct lv_server *s);

/** The runtime upstream for a route of the current or an older generation. */
struct lv_upstream *lv_server_upstream(struct lv_server *s, const struct lv_upstream_cfg *cfg);
/** A request starts / stops using a runtime upstream (a retired one goes with its last user). */
void lv_server_upstream_use(struct lv_server *s, struct lv_upstream *up);
void lv_server_upstream_unuse(struct lv_server *s, struct lv_upstream *up);
/** A request starts / stops using a route's state; the state of a route that left the
 *  configuration goes with its last user. */
void lv_server_route_use(struct lv_server *s, struct lv_route_state *rs);
void lv_server_route_unuse(struct lv_server *s, struct lv_route_state *rs);
/** Route state by name (created when missing). */
struct lv_route_state *lv_server_route_state(struct lv_server *s, const char *name);

/** Appends one access log line (already formatted, ends with \n). */
void lv_server_access_log(struct lv_server *s, const char *line, size_t len);

/** Called by client.c when a connection closes. */
void lv_server_client_closed(struct lv_server *s, struct lv_client *c);

/** Fills a new request id (32 hex chars + NUL). */
void lv_server_request_id(struct lv_server *s, char out[33]);

/** Counts one upstream attempt's outcome: a status, or an error kind (enum lv_outcome_kind). */
void lv_server_count_attempt(struct lv_server *s, struct lv_route_state *rs, int kind, int status);

/** Counts a finished request in the metrics. */
void lv_server_count_request(struct lv_server *s, struct lv_route_state *rs, int status,
                             double seconds);

#endif
