/*
 * conf/config: the compiled configuration, one generation of it: plain C structs the request
 * path reads (it never walks a Lua table), and what needs no Lua: the lifetime of a generation
 * (pin/unpin, freed on the last reference) and lookups by name. The script layer fills them in
 * (script/config.h: loading a levee.lua file, README "Configuration" and "Reload").
 *
 * A struct lv_config owns every string and array below, and the runtime of its route hooks
 * (classify, fallback, idempotency key) through an opaque pointer and the function that frees
 * it. It is refcounted: the server holds one reference, each request in flight pins one, and it
 * is freed when the last reference goes (README "Reload": requests in flight finish under the
 * configuration they started with). Not thread-safe: pinned and unpinned on one thread.
 */
#ifndef LV_CONF_CONFIG_H
#define LV_CONF_CONFIG_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/breaker.h"
#include "policy/fault.h"

/* The route hooks' runtime, defined by the script layer (script/hooks.c). */
struct lv_config_hooks;
struct lv_router; /* conf/router.h */

struct lv_hostport {
    char *host; /* as written: a literal address or a DNS name */
    uint16_t port;
};

struct lv_listen_cfg {
    struct lv_hostport addr;
    char *tls_cert; /* NULL: plain TCP */
    char *tls_key;
};

struct lv_limits_cfg {
    size_t header_size;    /* whole request head, request line included; default 32 KiB -> 431 */
    size_t request_line;   /* default 8 KiB -> 414 */
    uint32_t header_count; /* default 100 -> 431 */
    size_t body_size;      /* default 16 MiB -> 413 */
    uint64_t header_timeout_ms; /* default 10 s -> 408 */
    uint64_t idle_timeout_ms;   /* keep-alive idle, default 60 s */
    uint64_t send_timeout_ms;   /* a client that reads nothing this long is closed, default 60 s */
    uint64_t body_timeout_ms;   /* a buffered body must arrive within it; the rate window; 10 s */
    size_t body_rate;           /* bytes/s a streamed body must average per window, default 1 KiB */
    uint32_t max_connections;   /* default 10000 */
};

enum lv_balance { LV_BALANCE_ROUND_ROBIN, LV_BALANCE_LEAST_REQUEST };

struct lv_pool_cfg {
    uint32_t max_idle;         /* per server, default 64 */
    uint64_t idle_timeout_ms;  /* default 60 s */
    uint64_t max_lifetime_ms;  /* default 10 min; also the DNS re-resolve period */
    uint32_t max_connections;  /* per server, default 1024 */
    uint32_t queue_size;       /* requests waiting for a connection, per upstream; default 1024 */
    uint64_t queue_timeout_ms; /* default: connect_timeout */
};

/* Active health checks (health = { ... }); off when `enabled` is false. */
struct lv_health_cfg {
    bool enabled;
    char *path;           /* default "/" */
    uint64_t interval_ms; /* default 2 s */
    uint64_t timeout_ms;  /* default 1 s (at most interval) */
    uint32_t healthy;     /* consecutive passes that bring a server back, default 2 */
    uint32_t unhealthy;   /* consecutive failures that take it out, default 3 */
    uint64_t expect[10];  /* bit s set: status s (100..599) passes; default 2xx and 3xx */
    char *host;           /* Host of the check; NULL: the server's host:port */
};

/* Passive outlier ejection (outlier = { ... }); on by default. */
struct lv_outlier_cfg {
    bool enabled;                  /* outlier = false turns it off */
    uint32_t consecutive_failures; /* default 5 */
    uint64_t eject_for_ms;         /* default 10 s, doubled on each new ejection */
    uint64_t max_eject_for_ms;     /* default 5 min */
    double max_ejected;            /* share of servers out at once, default 0.5 */
    bool enforce;                  /* false: detect, log and count only */
};

struct lv_upstream_cfg {
    char *name;
    struct lv_hostport *servers;
    size_t nservers;
    enum lv_balance balance;
    uint64_t connect_timeout_ms; /* default 1 s */
    struct lv_pool_cfg pool;
    bool tls;        /* TLS to the upstream */
    char *tls_sni;   /* default: the server's host */
    bool tls_verify; /* default true */
    char *tls_ca;    /* CA file; NULL: system default */
    struct lv_health_cfg health;
    struct lv_outlier_cfg outlier;
    uint64_t slow_start_ms; /* a returning server's share ramps up over this; 0 = off */
};

/* Outcome kinds a retry policy can name (retry.on). */
enum {
    LV_RETRY_ON_CONNECT_FAILURE = 1 << 0,
    LV_RETRY_ON_RESET = 1 << 1,
    LV_RETRY_ON_TIMEOUT = 1 << 2,
    LV_RETRY_ON_PROTOCOL_ERROR = 1 << 3,
};

enum lv_jitter { LV_JITTER_FULL, LV_JITTER_EQUAL, LV_JITTER_DECORRELATED, LV_JITTER_NONE };

struct lv_retry_cfg {
    uint32_t attempts;        /* total, first included; default 2 */
    uint32_t on_errors;       /* LV_RETRY_ON_* bits; default connect-failure|reset */
    uint64_t on_status[10];   /* bit s set: status s (100..599) is retried ("5xx" etc. expanded) */
    uint64_t backoff_base_ms; /* default 25 ms */
    uint64_t backoff_max_ms;  /* default 1 s */
    enum lv_jitter jitter;    /* default full */
    double budget_ratio;      /* default 0.2 */
    double budget_min_per_second; /* default 10 */
    uint64_t budget_window_ms;    /* default 10 s */
    bool non_idempotent;          /* default false */
    size_t buffer;                /* replay buffer, default 64 KiB */
};

struct lv_breaker_cfg {
    bool enabled;                  /* false when the route has no breaker table */
    double failure_ratio;          /* default 0.5 */
    uint32_t min_requests;         /* default 20 */
    uint64_t window_ms;            /* default 10 s */
    uint32_t consecutive_failures; /* default 5; 0 = rule off */
    uint64_t open_for_ms;          /* default 5 s */
    uint64_t max_open_for_ms;      /* default = open_for (no growth) */
    uint32_t half_open_requests;   /* default 1 */
    uint64_t slow_call_ms;         /* 0 = rule off */
    double slow_call_ratio;        /* default 1.0 */
};

enum lv_idem_store { LV_IDEM_STORE_MEMORY, LV_IDEM_STORE_REDIS };
enum lv_idem_on_conflict { LV_IDEM_CONFLICT_REJECT, LV_IDEM_CONFLICT_WAIT };
enum lv_idem_on_store_error { LV_IDEM_FAIL_CLOSED, LV_IDEM_FAIL_OPEN };

struct lv_idem_cfg {
    bool enabled;                               /* false when the route has no idempotency table */
    char *header;                               /* default "Idempotency-Key" */
    uint64_t ttl_ms;                            /* default 24 h */
    uint64_t methods;                           /* LV_METHOD_BIT set; default POST|PATCH */
    bool required;                              /* default false */
    enum lv_idem_store store;                   /* default memory */
    struct lv_hostport redis;                   /* store = { redis = "host:port" } */
    char *redis_prefix;                         /* default "levee:" */
    size_t max_body;                            /* largest stored response body, default 1 MiB */
    size_t max_memory;                          /* memory store cap, default 64 MiB */
    enum lv_idem_on_conflict on_conflict;       /* default reject (409) */
    enum lv_idem_on_store_error on_store_error; /* default fail_closed */
    int key_ref; /* the key(req) hook, a handle of the hooks' runtime (script/hooks.h), or -1 */
};

/* A rate limit per key (routes[].rate_limit, README "Admission control"). */
enum lv_rate_key { LV_RATE_KEY_CLIENT_IP, LV_RATE_KEY_HEADER, LV_RATE_KEY_HOOK };
struct lv_rate_cfg {
    bool enabled;
    uint32_t rate;        /* requests per `per_ms` */
    uint64_t per_ms;      /* default 1 s */
    uint32_t burst;       /* more at once; default 0 */
    enum lv_rate_key key; /* default client_ip */
    char *key_header;     /* LV_RATE_KEY_HEADER: the header's name, lower case */
    int key_ref;          /* LV_RATE_KEY_HOOK: a hook handle (script/hooks.h), else -1 */
    bool redis;           /* store = { redis = ... }; else memory */
    struct lv_hostport redis_addr;
    char *redis_prefix;  /* default "levee:rl:" */
    uint32_t max_keys;   /* memory store, default 100000 */
    uint64_t timeout_ms; /* Redis, default 50 ms */
    bool fail_closed;    /* on_store_error = "fail_closed"; default fail_open */
    bool shadow;         /* mode = "shadow" */
};

/* A route bulkhead (routes[].concurrency). */
struct lv_concurrency_cfg {
    bool enabled;
    bool adaptive;                    /* max = "adaptive" */
    uint32_t max;                     /* fixed limit (not adaptive) */
    uint32_t queue;                   /* default 0 */
    uint64_t queue_timeout_ms;        /* default 1 s */
    uint32_t min, max_limit, initial; /* adaptive: default 1, 1000, 20 */
};

/* Faults to inject (routes[].fault, README "levee dev"). */
struct lv_fault_cfg {
    bool enabled; /* false when the route has no fault table */
    struct lv_faults f;
    bool at_client; /* at = "client": the client gets the fault, the policy does not see it */
    bool headers;   /* honour the Levee-Fault request header */
};

struct lv_route_cfg {
    char *name;                       /* stable identity: state is kept by name across reloads */
    int line;                         /* line of the route in the file, for messages */
    char *match_prefix;               /* NULL: any */
    char *match_path;                 /* exact path, NULL: any */
    char *match_host;                 /* exact host (no port, lower case), NULL: any */
    uint64_t match_methods;           /* LV_METHOD_BIT set, 0: any */
    struct lv_upstream_cfg *upstream; /* points into lv_config.upstreams */
    uint64_t timeout_ms;              /* whole request deadline, default 15 s */
    uint64_t try_timeout_ms;          /* one attempt until response head, default = timeout */
    size_t request_buffer; /* body bytes received before connecting; 0 = stream; default buffer */
    struct lv_retry_cfg retry;
    struct lv_breaker_cfg breaker;
    struct lv_idem_cfg idempotency;
    struct lv_fault_cfg fault;
    struct lv_rate_cfg rate_limit;
    struct lv_concurrency_cfg concurrency;
    int classify_ref; /* a hook handle (script/hooks.h), or -1 */
    int fallback_ref; /* a hook handle (script/hooks.h), or -1 */
    char **upgrade;   /* protocol tokens a client may switch to, lower case (default websocket) */
    size_t nupgrade;
    uint64_t tunnel_idle_timeout_ms; /* default 1 h */
};

/* Trace context and span export (top-level `tracing`, README "Tracing"). */
struct lv_tracing_cfg {
    bool enabled;        /* false: `tracing = false`, traceparent passes through untouched */
    char *otlp;          /* OTLP/HTTP URL with its path, or NULL: no export */
    char *tls_ca;        /* CA file for an https collector; NULL: the system store */
    double sample;       /* share of new traces sampled, default 1 */
    char *service;       /* service.name, default "levee" */
    uint32_t batch;      /* default 512 */
    uint32_t queue;      /* default 2048 */
    uint64_t flush_ms;   /* default 1 s */
    uint64_t timeout_ms; /* default 5 s */
};

/* How workers share a listening port (README "Workers"). */
enum lv_accept_mode { LV_ACCEPT_SHARED, LV_ACCEPT_REUSEPORT };

enum lv_access_log {
    LV_ACCESS_LOG_OFF,
    LV_ACCESS_LOG_STDOUT,
    LV_ACCESS_LOG_STDERR,
    LV_ACCESS_LOG_FILE
};

/* How access-log lines read (README "Access log", "levee dev"). */
enum lv_access_format { LV_ACCESS_FORMAT_JSON, LV_ACCESS_FORMAT_CONSOLE };

struct lv_config {
    char *file;   /* absolute path of the file loaded */
    char **files; /* the file and every Lua module it required (for watch); NULL-terminated */
    struct lv_listen_cfg *listens;
    size_t nlistens;
    bool admin_enabled;
    struct lv_hostport admin;
    struct lv_limits_cfg limits;
    enum lv_access_log access_log;
    char *access_log_path;
    enum lv_access_format access_format;
    bool access_color;    /* console lines in ANSI colours: stdout a terminal, NO_COLOR unset */
    char *error_log_path; /* error_log = "path"; NULL: stderr */
    bool watch;
    uint64_t drain_timeout_ms; /* default 10 s */
    uint32_t workers;          /* worker loops; 0: "auto", one per CPU (README "Workers") */
    enum lv_accept_mode accept;
    struct lv_cidr {
        uint8_t addr[16]; /* network order; IPv4 as ::ffff:a.b.c.d */
        uint8_t bits;     /* of the 128 (IPv4: 96 + n) */
    } * trusted_proxies;  /* README "Admission control" */
    size_t ntrusted_proxies;
    struct lv_tracing_cfg tracing;
    struct lv_upstream_cfg *upstreams;
    size_t nupstreams;
    struct lv_route_cfg *routes;
    size_t nroutes;

    /* The route hooks' runtime (a Lua state the script layer made and keeps): opaque here,
     * freed by `hooks_free` with the generation. NULL when no route has a hook. */
    struct lv_config_hooks *hooks;
    /* With hooks and several workers: a copy of this configuration per other worker, loaded
     * from the same file, each with its own Lua state (README "Workers"). Taken out with
     * lv_config_for_worker; what is left is freed with the configuration. */
    struct lv_config **worker_copies;
    size_t nworker_copies;
    void (*hooks_free)(struct lv_config_hooks *hooks);
    uint64_t generation; /* set by the server when it installs this config */
    double loaded_at;    /* unix time */
    atomic_int refs;     /* workers without hooks share one configuration (README "Workers") */

    /* The route index (conf/router.h), built at load; freed with the generation through
     * `router_free`, so this module needs nothing of the router's. */
    struct lv_router *router;
    void (*router_free)(struct lv_router *router);
};

/** A generation with no content and one reference (the caller's), for the loader to fill. */
struct lv_config *lv_config_new(void);

void lv_config_pin(struct lv_config *c);
/** The configuration worker `i` installs, one reference for it: `cfg` itself for worker 0
 *  (the caller's reference), its copy for another worker when routes have hooks (taken out of
 *  worker_copies), else `cfg` again, pinned. */
struct lv_config *lv_config_for_worker(struct lv_config *cfg, size_t i);
/** Drops one reference; frees the config (and its hooks' runtime) on the last one. NULL is a
 * no-op. */
void lv_config_unpin(struct lv_config *c);

/** A route's breaker settings as the breaker takes them (policy/breaker.h). */
struct lv_breaker_params lv_breaker_cfg_params(const struct lv_breaker_cfg *bc);

/** The upstream named `name`, or NULL (also for a NULL name). */
struct lv_upstream_cfg *lv_config_upstream(struct lv_config *c, const char *name);
/** The route named `name`, or NULL (also for a NULL name). */
struct lv_route_cfg *lv_config_route(struct lv_config *c, const char *name);

#endif
