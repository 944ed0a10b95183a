/*
 * admin: the admin listener (README, "Admin API"): GET /healthz, GET /status (JSON), GET /metrics
 * (Prometheus text), POST /reload, GET / (the dashboard page), /faults (admin/faultapi.h). One
 * request per connection, answered and closed: the admin API is for operators and scrapers, not for
 * traffic.
 *
 * The admin knows nothing of the server's internals: main.c hands it a struct lv_admin_ops,
 * callbacks that read the state in force (at the time of the call, on the loop) and ask for a
 * reload. Everything it is given is read-only and valid until the callback that gave it runs
 * again or the loop turns.
 */
#ifndef LV_ADMIN_H
#define LV_ADMIN_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "script/config.h"

struct lv_admin;
struct lv_fault_rules;
struct lv_breaker;
struct lv_budget;
struct lv_idem;
struct lv_metric;
struct lv_upstream;

/* /status, the process and the configuration in force. */
struct lv_admin_status {
    uint64_t generation;
    double loaded_at;                     /* unix time */
    const struct lv_config *cfg;          /* the configuration in force: file, routes */
    const char *last_reload;              /* "initial load", "ok" or "error: ..." */
    bool draining;                        /* shutting down */
    bool reloading;                       /* a load is in progress */
    uint32_t client_connections;          /* open client connections */
    struct lv_upstream *const *upstreams; /* the first worker's runtime upstreams in force */
    size_t nupstreams;
    unsigned workers; /* worker loops (README "Workers") */
};

/* /status, one worker. */
struct lv_admin_worker {
    uint32_t connections;
    uint64_t requests;
};

/* /status, one upstream: its queue and panic picks, summed over the workers. */
struct lv_admin_upstream {
    uint32_t waiting;
    uint64_t panic_picks;
};

/* /status, one server of an upstream: pool numbers summed over the workers. */
struct lv_admin_server {
    uint32_t active, idle, inflight;
    uint64_t connects, connect_failures, tls_resumed;
};

/* /status, one route of cfg->routes: its state, kept by route name across reloads. */
struct lv_admin_route {
    uint64_t requests;
    bool breaker_enabled;
    const struct lv_breaker *breaker;
    const struct lv_budget *budget;
    struct lv_idem *idem; /* the route's idempotency store; NULL: none */
    /* levee_requests_total{route} by status class (index 1-5: 1xx-5xx), and the series of
     * levee_retries_total, ..._budget_exhausted_total, ..._breaker_rejected_total and the
     * levee_request_duration_seconds histogram (NULL: not made yet, reads as 0) */
    uint64_t by_class[6];
    struct lv_metric *retries, *budget_exhausted, *breaker_rejected, *duration;
    /* admission control (README "Admission control") */
    struct lv_metric *rate_limited, *rate_shadowed, *rate_store_errors; /* NULL: no rate limit */
    uint64_t rate_keys;                                                 /* memory store */
    bool bulkhead, adaptive;
    uint32_t inflight, queued, limit;
    uint64_t concurrency_rejected;
    double short_rtt_ms, long_rtt_ms; /* adaptive: the gradient's latencies */
};

/* The answer to POST /reload: rc 0 and the generation now in force, or -1 and the errors
 * ("FILE:LINE: ...\n" lines; not NUL-terminated). */
typedef void (*lv_admin_reload_cb)(void *req, int rc, uint64_t generation, const char *errors,
                                   size_t len);

struct lv_admin_ops {
    void *arg; /* the first argument of every callback */
    /** Gathers every worker's numbers, then `done(req)` (later, from the loop): /status and
     *  /metrics read them after. */
    void (*collect)(void *arg, void (*done)(void *req), void *req);
    /** `req` went away: its done will not be called. */
    void (*collect_cancel)(void *arg, void *req);
    void (*status)(void *arg, struct lv_admin_status *out);
    void (*worker)(void *arg, unsigned i, struct lv_admin_worker *out);
    void (*upstream)(void *arg, size_t upstream, struct lv_admin_upstream *out);
    void (*server)(void *arg, size_t upstream, size_t server, struct lv_admin_server *out);
    void (*route)(void *arg, size_t route_index, struct lv_admin_route *out);
    /** Appends the Prometheus text of every metric. */
    void (*metrics)(void *arg, struct lv_buf *out);
    /** Asks for a reload; `cb(req, ...)` answers when its load ends (maybe at once). */
    void (*reload)(void *arg, lv_admin_reload_cb cb, void *req);
    /** Forgets the pending answer to `req` (its connection went away). */
    void (*reload_cancel)(void *arg, void *req);
    /** The process's fault rules (README "levee dev"), for /faults; NULL: no such endpoint. */
    struct lv_fault_rules *(*faults)(void *arg);
};

/** Binds the admin listener at `addr` on `loop`; NULL (logged) if it cannot. `ops` is copied. */
struct lv_admin *lv_admin_start(uv_loop_t *loop, const struct lv_hostport *addr,
                                const struct lv_admin_ops *ops);
/** Stops listening and closes admin connections. */
void lv_admin_stop(struct lv_admin *a);

#endif
