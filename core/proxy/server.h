/*
 * server: one worker loop's state: the generation in force (proxy/generation.h) and the
 * runtime objects generations name (upstreams, idempotency stores), the access-log buffer,
 * and what client connections share (their list, request ids). It knows nothing of
 * listeners, connections' handling or the admin API: proxy/listener accepts and drains
 * connections, proxy/reload loads configurations, main.c composes them.
 *
 * Every worker has its own server, touched only by its own thread. What the workers share
 * (README "Workers") is in struct lv_server_shared: the route states (breakers, budgets), the
 * metrics registry (values sharded per worker), the upstream health and the log files. A
 * client connection reaches all of it through its server pointer; nothing is global.
 */
#ifndef LV_SERVER_H
#define LV_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/list.h"
#include "obs/metrics.h"
#include "policy/breaker.h"
#include "policy/budget.h"
#include "policy/faultrules.h"
#include "proxy/routestate.h"
#include "conf/config.h"
#include "script/hooks.h"
#include "store/idem.h"

struct lv_client;
struct lv_upstream;
struct lv_generation;
struct lv_inbox;
struct lv_health_registry;
struct lv_trace_shared;

/* What every worker shares (README "Workers"). Made before the workers start; its parts lock
 * themselves (route states, metrics, health) or are set only while the workers wait. */
struct lv_server_shared {
    unsigned nworkers;
    struct lv_inbox **inboxes;     /* per worker: how to reach its loop */
    struct lv_server **servers;    /* per worker: its server, touched only on its loop */
    atomic_uint *conns;            /* per worker: its client connections, written by it */
    atomic_uint *incoming;         /* per worker: connections handed to it, not yet adopted */
    struct lv_route_states routes; /* route state registry, by name (proxy/routestate.h) */
    struct lv_metrics *metrics;    /* one registry, a value shard per worker */
    struct lv_health_registry *health;
    struct lv_fault_rules faults;            /* the admin API's fault rules (README "levee dev") */
    _Atomic(struct lv_trace_shared *) trace; /* tracing's exporter and metrics (proxy/tracing.c) */
    /* The access log: every worker writes whole buffers of whole lines under the lock, so a
     * line is never cut by another worker's; the fd swaps under it too (reload, SIGUSR1). */
    pthread_mutex_t access_lock;
    int access_fd; /* -1: off */
    /* access-log lines for requests refused before routing, at most a hundred a second for
     * the process (a flood of garbage must not make logging the bottleneck; proxy/client.c) */
    struct lv_refused_log {
        pthread_mutex_t lock;
        uint64_t second;   /* loop ms / 1000 of the current second */
        uint32_t logged;   /* lines written in it */
        uint64_t unlogged; /* refused requests not logged in it */
    } refused;
};

/** Shared state for `nworkers` workers (inboxes set later by the caller). */
struct lv_server_shared *lv_server_shared_new(unsigned nworkers);
void lv_server_shared_free(struct lv_server_shared *sh);
/** A reload, before any worker installs it: the route states take `cfg`'s settings (new
 *  thresholds at once, counts and breaker state kept), idempotency stores made or replaced
 *  on `loop` (the first worker's, which owns memory stores). */
void lv_server_shared_configure(struct lv_server_shared *sh, const struct lv_config *cfg,
                                uv_loop_t *loop);
/** Tracing (proxy/tracing.c): a configuration goes in force, before the workers install it:
 *  starts or updates the span exporter. */
void lv_tracing_configure(struct lv_server_shared *sh, const struct lv_config *cfg);
/** Shutdown, after the workers stopped: flushes (within tracing.timeout) and stops it. */
void lv_tracing_shutdown(struct lv_server_shared *sh);
/** Points the access log at `fd` (-1: off); returns the old fd, no longer written to. */
int lv_server_shared_access_fd(struct lv_server_shared *sh, int fd);

struct lv_rate_redis;

struct lv_server {
    uv_loop_t *loop;
    unsigned worker;             /* index, 0 .. nworkers - 1 */
    struct lv_server_shared *sh; /* what the workers share */
    bool owns_shared;            /* lv_server_init made `sh` (one worker, tests) */
    uint64_t requests;           /* requests this worker finished (README "Workers") */
    /* Redis rate-limit stores of this worker, one per address, prefix and timeout (made on
     * first use by proxy/admitreq.c, closed with the server) */
    struct lv_rate_redis_slot {
        char *sig;
        struct lv_rate_redis *store;
    } * rate_redis;
    size_t nrate_redis;
    struct lv_generation *gen; /* the generation in force: the server holds one pin */
    struct lv_config *cfg;     /* gen->cfg: the configuration in force */
    uint64_t generation;       /* number of the newest generation installed */
    char *config_path;         /* levee dev: its --policy file or NULL */
    double reload_at;          /* unix time the generation in force was installed */

    struct lv_generation **live; /* every generation not yet released, oldest first */
    size_t nlive;
    struct lv_route_states *routes; /* sh->routes */

    struct lv_metrics *metrics; /* sh->metrics */
    /* per-route families: routes.fam (proxy/routestate.h) */
    struct lv_metric_family *m_reloads, *m_generation, *m_upconns, *m_clients, *m_bad_requests;
    struct lv_metric_family *m_server_up, *m_ejections, *m_health_checks, *m_panics;
    struct lv_metric_family *m_up_sent, *m_up_received, *m_attempt_duration;
    /* tunnels (proxy/tunnel.c): {route}, {route}, {route, direction} */
    struct lv_metric_family *m_tunnels_active, *m_tunnels_total, *m_tunnel_bytes;
    struct lv_metric *m_reload_ok, *m_reload_err;

    /* client connections (proxy/client.c keeps the list; proxy/listener.c drains it) */
    struct lv_dlist clients; /* of struct lv_client, by link */
    uint32_t nclients;
    uint64_t next_conn_id;
    uint64_t rid_state; /* request id generator */
    bool draining;      /* shutting down: no new connections, no keep-alive */
    /* told by lv_server_client_closed (proxy/listener.c counts down the drain with it) */
    void (*on_client_closed)(void *arg);
    void *on_client_closed_arg;

    /* access log: lines wait here for the end of the loop turn (written under sh's lock) */
    bool access_on;
    struct lv_buf access_buf;
    uv_check_t flush_check;
    bool error_fd_owned; /* error_log = "path": the log module writes to a file levee opened */
};

/* The log files of a configuration, opened before it goes in force (a reload is all or
 * nothing: README "Operations"). */
struct lv_log_files {
    int access_fd; /* -1: off */
    int error_fd;  /* -1: stderr */
};

/** Sets up the server's state on `loop` (metrics, the access-log flush); nothing in force yet.
 *  `config_path` (copied; levee dev: its --policy file or NULL) names the file in messages
 *  and reloads. One worker: the server makes and owns its shared state. */
void lv_server_init(struct lv_server *s, uv_loop_t *loop, const char *config_path);
/** The same for worker `index` of several sharing `sh` (call before its loop runs). */
void lv_server_init_worker(struct lv_server *s, uv_loop_t *loop, const char *config_path,
                           struct lv_server_shared *sh, unsigned index);
/** Opens the log files `cfg` names. Returns 0, or a negative libuv error with each reason
 *  appended to `errors` as one line (and nothing left open). */
int lv_server_open_logs(struct lv_server *s, const struct lv_config *cfg, struct lv_log_files *lf,
                        struct lv_buf *errors);
/** Closes log files opened by lv_server_open_logs that will not go in force. */
void lv_server_close_logs(struct lv_log_files *lf);
/** One worker (tests, lv_server_init): lv_server_shared_configure, lv_server_install_worker
 *  and the log files opened for `cfg` go in force (the old ones closed). Cannot fail. */
void lv_server_install(struct lv_server *s, struct lv_config *cfg, struct lv_log_files *lf);
/** On the worker's thread, after lv_server_shared_configure: puts `cfg` (takes the caller's
 *  reference; the worker's own copy when routes have hooks) in force as generation `number`;
 *  the previous generation loses the server's pin. `access_on`: an access log is configured.
 *  `owner_refs`: from lv_server_owner_refs (NULL for the first worker). */
void lv_server_install_worker(struct lv_server *s, struct lv_config *cfg, uint64_t number,
                              bool access_on, struct lv_idem **owner_refs);
/** On the first worker's thread, for a worker >= 1 about to install `cfg`: per route, a
 *  reference to its memory idempotency store (NULL for others), which that worker's remote
 *  store takes over or gives back (install_worker frees the array). */
struct lv_idem **lv_server_owner_refs(struct lv_server_shared *sh, const struct lv_config *cfg);
/** Puts the log files opened for a configuration in force and closes the old ones (all
 *  workers have installed it, or there is one). */
void lv_server_commit_logs(struct lv_server *s, struct lv_log_files *lf);
/** On the worker's thread: copies the worker's own values into its metric shards (client
 *  connections, pools, bytes); the first worker also the shared ones (generation, breakers,
 *  health). Called before a scrape. */
void lv_server_publish(struct lv_server *s);
/** The generation in force (NULL before the first install and after lv_server_stop). */
struct lv_generation *lv_server_generation(struct lv_server *s);
/** Once a second: upstream health timers and pool lifetimes, repeated log lines. */
void lv_server_tick(struct lv_server *s);
/** SIGUSR1 (README "Operations"): the access log and error log files are opened again by name
 *  (logrotate renamed them), the old fds closed. A file that cannot be opened keeps its old fd.
 *  Any worker's buffered lines go to the old file or the new one, whole. */
void lv_server_reopen_logs(struct lv_server *s);
/** After the last connection closed: flushes the access log and lets go of the generation in
 *  force (its upstreams close) and of the idempotency stores, so the loop can end. */
void lv_server_stop(struct lv_server *s);
/** Writes the access-log lines this worker still holds. */
void lv_server_flush_access_log(struct lv_server *s);
/** Frees what the server owns, after its loop ran to completion. */
void lv_server_free(struct lv_server *s);

/** A generation starts / stops naming a route's state; the state of a route that left the
 *  configuration goes with the last generation naming it. */
void lv_server_route_use(struct lv_server *s, struct lv_route_state *rs);
void lv_server_route_unuse(struct lv_server *s, struct lv_route_state *rs);
/** Route state by name (created when missing). */
struct lv_route_state *lv_server_route_state(struct lv_server *s, const char *name);

/** Appends one access log line (already formatted, ends with \n). */
void lv_server_access_log(struct lv_server *s, const char *line, size_t len);

/** Called by client.c when a connection closed (tells on_client_closed). */
void lv_server_client_closed(struct lv_server *s, struct lv_client *c);

/** Fills a new request id (32 hex chars + NUL). */
void lv_server_request_id(struct lv_server *s, char out[33]);

/** Counts one upstream attempt's outcome: a status, or an error kind (enum lv_outcome_kind). */
/** An injected fault, for levee_faults_injected_total{route,kind}. */
void lv_server_count_fault(struct lv_server *s, struct lv_route_state *rs, int kind);
void lv_server_count_attempt(struct lv_server *s, struct lv_route_state *rs, int kind, int status);

/** Counts a finished request in the metrics. */
void lv_server_count_request(struct lv_server *s, struct lv_route_state *rs, int status,
                             double seconds);

#endif
