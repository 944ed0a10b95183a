/*
 * routestate: per-route state that outlives a configuration generation, kept by route name
 * (README "Reload": counts, retry budget, breaker and idempotency store carry over), and the
 * route's metric series (README "Metrics").
 *
 * Lean by design, since a configuration may hold thousands of routes: a route that serves
 * nothing holds this struct (about 1 KiB, its budget and breaker windows included) and the
 * three series every route shows from the start (duration, retries, budget exhausted). Series
 * by status code or attempt outcome are made on first use and kept in small sorted arrays;
 * breaker and idempotency series are made when a configuration turns those features on for
 * the route (they are shown only then).
 *
 * Shared by every worker (README "Workers"): one state per route name for the whole process,
 * so a breaker opens once and a budget counts every worker's requests. `lock` guards what
 * changes after creation (budget, breaker, the series made on first use, the counts and the
 * store); metric values themselves are per-worker shards (obs/metrics.h). The registry's own
 * lock guards the table and the users counts (reload time only).
 */
#ifndef LV_ROUTESTATE_H
#define LV_ROUTESTATE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "obs/metrics.h"
#include "policy/breaker.h"
#include "proxy/admission.h"
#include "policy/budget.h"
#include "policy/retry.h"
#include "conf/config.h"
#include "script/hooks.h"
#include "store/idem.h"

/* The families a route's series belong to (the server registers them). */
struct lv_route_families {
    struct lv_metric_family *requests, *duration, *retries, *budget_exhausted, *attempts,
        *breaker_state, *fallbacks, *breaker_rejected, *hook_errors, *idem_replays, *idem_stored,
        *idem_conflicts, *idem_mismatches, *idem_store_errors, *idem_entries, *retry_decisions,
        *faults;
    struct lv_admission_families adm;
};

/* Series made on first use, by key, in the order made. Entries are only ever appended, into
 * chunks that never move, so a worker finds a key without a lock (n is published after the
 * entry is written); a new key is added under the route state's lock. Room for every status
 * code and outcome kind. */
#define LV_KEYED_CHUNK  64
#define LV_KEYED_CHUNKS 8
struct lv_keyed_series {
    struct lv_keyed_metric {
        int key;
        struct lv_metric *m;
    } * chunk[LV_KEYED_CHUNKS];
    _Atomic uint32_t n;
};

struct lv_route_state {
    pthread_mutex_t lock; /* see the top of this file */
    char *name;
    struct lv_metric *duration;         /* levee_request_duration_seconds{route} */
    struct lv_keyed_series by_code;     /* levee_requests_total{route,code}, key: the status */
    struct lv_metric *retries;          /* levee_retries_total{route} */
    struct lv_metric *budget_exhausted; /* levee_retry_budget_exhausted_total{route} */
    /* levee_upstream_attempts_total{route,outcome}: key the status, or -1 - the error kind */
    struct lv_keyed_series attempts;
    /* levee_retry_decisions_total{route,decision}: key an enum lv_retry_stop */
    struct lv_keyed_series decisions;
    /* levee_faults_injected_total{route,kind}: key an enum lv_fault_kind */
    struct lv_keyed_series faults;
    /* Made when the route first gets a breaker (used only then; NULL before). */
    struct lv_metric *fallbacks;        /* levee_fallbacks_total{route} */
    struct lv_metric *breaker_rejected; /* levee_breaker_rejected_total{route} */
    /* levee_hook_errors_total{route,hook,kind}: hook classify/fallback/key × kind, lazily */
    struct lv_metric *hook_errors[3][LV_HOOK_FAILURE_KINDS];
    uint32_t users; /* generations naming this state */
    bool in_config; /* the configuration in force has a route with this name */
    /* Resilience state, kept by route name across reloads; thresholds follow the newest config. */
    struct lv_budget budget;
    struct lv_breaker breaker;
    atomic_bool breaker_enabled; /* written under `lock`; read without it to skip the lock */
    bool policy_ready;
    uint64_t hook_log_at; /* rate limit for hook error log lines */
    /* admission control: rate limit and bulkhead (proxy/admission.h), its own lock */
    struct lv_admission adm;
    /* idempotency: the route's store (kept across reloads while its settings are unchanged) */
    struct lv_idem *idem;
    char *idem_sig;        /* the settings the store was made with */
    uint64_t idem_version; /* changes with the store: workers make their own access anew */
    /* Made when the route first gets an idempotency store (used only then; NULL before). */
    struct lv_metric *idem_replays, *idem_stored, *idem_conflicts, *idem_mismatches,
        *idem_store_errors;
};

/* The registry: every route state, by name. */
struct lv_route_states {
    pthread_mutex_t lock;
    struct lv_route_families fam;
    struct lv_route_state **all; /* no particular order */
    size_t n;
    struct lv_route_state **table; /* open addressing by name hash */
    size_t cap;                    /* a power of two, or 0 */
};

/** An empty registry (its families are set by the caller). */
void lv_route_states_init(struct lv_route_states *reg);

static inline void lv_route_state_lock(struct lv_route_state *rs)
{
    pthread_mutex_lock(&rs->lock);
}

static inline void lv_route_state_unlock(struct lv_route_state *rs)
{
    pthread_mutex_unlock(&rs->lock);
}

/** The state of route `name`, created when missing (with its always-shown series). */
struct lv_route_state *lv_route_states_get(struct lv_route_states *reg, const char *name);

/** A configuration is being installed: no state is in it until lv_route_state_configure. */
void lv_route_states_begin_install(struct lv_route_states *reg);

/**
 * Marks `rs` as in the configuration and applies route `r`'s settings to it: new thresholds
 * apply at once, counts and breaker state carry over (README "Resilience policies"). Returns
 * the idempotency store this replaced (its settings changed: the caller keeps it alive for the
 * requests that still hold it), or NULL.
 */
struct lv_idem *lv_route_state_configure(struct lv_route_states *reg, struct lv_route_state *rs,
                                         const struct lv_route_cfg *r, uv_loop_t *loop);

/** A request starts / stops using `rs`; a state out of the configuration goes with its last
 * user. */
void lv_route_state_use(struct lv_route_states *reg, struct lv_route_state *rs);
void lv_route_state_unuse(struct lv_route_states *reg, struct lv_route_state *rs);

/** Counts a finished request: its status (100..599; others only in `requests`) and duration. */
void lv_route_state_count_request(struct lv_route_states *reg, struct lv_route_state *rs,
                                  int status, double seconds);
/** Counts one upstream attempt's outcome: a status, or an error kind (enum lv_outcome_kind). */
void lv_route_state_count_attempt(struct lv_route_states *reg, struct lv_route_state *rs, int kind,
                                  int status);

/** Counts one retry decision (LV_STOP_NONE: a retry went). */
void lv_route_state_count_fault(struct lv_route_states *reg, struct lv_route_state *rs, int kind);
void lv_route_state_count_decision(struct lv_route_states *reg, struct lv_route_state *rs,
                                   enum lv_retry_stop stop);

/** Render time: shows the breaker and idempotency series of a route that has them (hides them
 * otherwise) and copies in the breaker state and store size. */
void lv_route_state_publish(struct lv_route_states *reg, struct lv_route_state *rs, uint64_t now);

/** Requests finished on the route, every worker's (the duration histogram's count). */
uint64_t lv_route_state_requests(const struct lv_route_state *rs);
static inline bool lv_route_state_has_breaker(const struct lv_route_state *rs)
{
    return atomic_load_explicit(&rs->breaker_enabled, memory_order_acquire);
}
/** Requests answered, by status class: out[1] 1xx .. out[5] 5xx (out[0] is 0). */
void lv_route_state_by_class(struct lv_route_state *rs, uint64_t out[6]);

/** A hook failed: counts it in levee_hook_errors_total{route,hook,kind} (`hook`: "classify",
 *  "fallback" or "key", index `which`; `kind` a hook failure kind and its name). Returns true
 *  when a log line is due (at most one a second per route, whichever worker). */
bool lv_route_state_hook_failed(struct lv_route_states *reg, struct lv_route_state *rs, int which,
                                const char *hook, int kind, const char *kind_name, uint64_t now);

/** Shutdown: destroys every idempotency store (their handles close with the loop). */
void lv_route_states_close_stores(struct lv_route_states *reg);

/** Frees every state and the registry's arrays (after the loop ran to completion). */
void lv_route_states_dispose(struct lv_route_states *reg);

#endif
