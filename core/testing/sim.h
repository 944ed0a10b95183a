/*
 * sim: a route's resilience policy run offline, on a virtual clock (README "Testing your
 * policies"). A simulated gateway holds one loaded configuration and, per route, the state the
 * real gateway keeps by route name (retry budget, circuit breaker, idempotency keys); a request
 * runs against a scripted list of attempt outcomes instead of an upstream. Every decision is
 * made by the same code as the gateway's: the pure functions of core/policy (called in the
 * order core/proxy/attempt.c and core/proxy/breakergate.c call them) and the route hooks in
 * their sandbox (script/hooks.h). Nothing sleeps and no socket is opened: attempt times,
 * backoff delays and Retry-After move the virtual clock.
 *
 * Not thread-safe; one simulated gateway per Lua state (core/testing/luamod.c).
 */
#ifndef LV_TESTING_SIM_H
#define LV_TESTING_SIM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "conf/config.h"
#include "policy/breaker.h"
#include "policy/outcome.h"
#include "policy/retry.h"
#include "script/hooktypes.h"

struct lv_sim;

/* One scripted attempt outcome. */
struct lv_sim_outcome {
    enum lv_outcome_kind kind;            /* LV_OUT_STATUS or one of the four errors */
    int status;                           /* LV_OUT_STATUS */
    bool has_time;                        /* time_ms given: how long the attempt takes */
    uint64_t time_ms;                     /* default 0; a "timeout" takes the route's try_timeout */
    const struct lv_hook_header *headers; /* response headers (status outcomes) */
    size_t nheaders;
    const char *body; /* response body (status outcomes), may be NULL */
    size_t body_len;
};

struct lv_sim_request {
    const char *method; /* default "GET" */
    const char *path;   /* request target, query included; default "/" */
    const char *host;   /* for host matches, may be NULL */
    const struct lv_hook_header *headers;
    size_t nheaders;
    const char *body;
    size_t body_len;
    const struct lv_sim_outcome *script;
    size_t nscript;
};

/* One attempt as it happened. */
struct lv_sim_try {
    enum lv_outcome_kind kind;
    int status;
    enum lv_verdict verdict; /* LV_VERDICT_NONE: cut short by the deadline, not classified */
    bool retried;            /* delay_ms is the wait before the next attempt */
    uint64_t delay_ms;
    uint64_t at_ms, time_ms; /* virtual start, duration */
};

struct lv_sim_result {
    int status;
    const char *route; /* the route's name (borrowed from the configuration), NULL: none */
    const char *error; /* Levee-Error token when levee answered itself, else NULL */
    enum lv_retry_stop retry_stop;
    unsigned flags; /* enum lv_access_flag bits (obs/accesslog.h) */
    struct lv_sim_try *tries;
    size_t ntries;
    struct lv_buf head; /* response header lines "Name: value\r\n" */
    struct lv_buf body;
    struct lv_buf hook_errors; /* one line per failed hook call */
    uint64_t start_ms, end_ms; /* virtual clock */
    size_t used;               /* scripted outcomes consumed */
};

/** A simulated gateway for `cfg` (takes one reference of its own), clock at 0, `seed` for the
 * backoff jitter. */
struct lv_sim *lv_sim_new(struct lv_config *cfg, uint64_t seed);
void lv_sim_free(struct lv_sim *s);
struct lv_config *lv_sim_config(const struct lv_sim *s);

uint64_t lv_sim_now(const struct lv_sim *s);
/** Moves the virtual clock forward by `ms` (expired idempotency keys go). */
void lv_sim_advance(struct lv_sim *s, uint64_t ms);

/**
 * Runs one request. Returns 0 with `out` filled in (dispose it with lv_sim_result_dispose);
 * -1 when the script ran out while the policy wanted another attempt: `err` names the
 * attempt, and `out` still holds what happened before (state changes stay).
 */
int lv_sim_request(struct lv_sim *s, const struct lv_sim_request *rq, struct lv_sim_result *out,
                   struct lv_buf *err);
void lv_sim_result_dispose(struct lv_sim_result *r);

/* A route's state, as /status would show it. */
struct lv_sim_route_info {
    const struct lv_route_cfg *cfg;
    bool has_breaker;
    struct lv_breaker_stats breaker;
    uint64_t budget_requests, budget_retries, budget_available;
    size_t idem_keys; /* stored responses still within their ttl */
};

/** Fills `out` for route `name`; -1 when there is no such route. */
int lv_sim_route(struct lv_sim *s, const char *name, struct lv_sim_route_info *out);

#endif
