/*
 * health: the state of each server of an upstream (README, "Upstream health"), as pure
 * decisions over a group of servers. A server is
 *   UP        in the rotation;
 *   DOWN      active checks failed `unhealthy` times in a row (until `healthy` successes);
 *   EJECTED   live traffic failed `consecutive_failures` times in a row (connect-failure,
 *             reset, timeout, protocol-error, 5xx; a success resets the count): out for
 *             eject_for × 2^(n-1), n = its ejections so far, capped at max_eject_for;
 *   STARTING  back in, with a share that grows linearly over slow_start.
 * At most max(1, floor(max_ejected × n)) of the group's n servers are ejected at once
 * (none when max_ejected <= 0), and a server is never ejected when that would leave no
 * server in (DOWN servers count as out): a group of one is never ejected from. When the rule
 * trips but cannot eject, the count is reset and a NOT_EJECTED event says why. enforce =
 * false detects, logs and counts ejections without changing traffic (max_ejected is not
 * consulted then). DOWN is not limited by max_ejected (active checks are authoritative);
 * when no server is in at all the group is in panic mode and the caller sends to all.
 * A server that is both ejected and failing checks reads DOWN (checks are the stronger
 * signal); when both clear it comes back through STARTING (slow_start > 0) or UP, with its
 * failure count reset. Priority when several apply: DOWN > EJECTED > STARTING > UP.
 *
 * No libuv, no allocation beyond the group's array: `now` is a monotonic millisecond clock
 * given by the caller. Every change of state is reported to the caller as an event (for the
 * log line, metrics) with a reason text such as "ejected for 10s after 5 consecutive
 * connect-failure", "down after 3 failed checks: 503", "back in".
 */
#ifndef LV_HEALTH_H
#define LV_HEALTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lv_health_params {
    /* passive outlier ejection */
    bool outlier;                  /* false: live traffic never ejects */
    uint32_t consecutive_failures; /* default 5; 0 is taken as 1 (as healthy, unhealthy) */
    uint64_t eject_for_ms;         /* default 10 s */
    uint64_t max_eject_for_ms;     /* default 5 min; below eject_for_ms: no growth */
    double max_ejected;            /* share of servers ejected at once, default 0.5 */
    bool enforce;                  /* default true */
    /* active checks (only the thresholds: probing is net/healthcheck.c) */
    uint32_t healthy;   /* consecutive successes that bring a DOWN server back, default 2 */
    uint32_t unhealthy; /* consecutive failures that make it DOWN, default 3 */
    /* slow start */
    uint64_t slow_start_ms; /* 0 = off */
};

enum lv_server_state {
    LV_SERVER_UP = 0,
    LV_SERVER_DOWN = 1,
    LV_SERVER_EJECTED = 2,
    LV_SERVER_STARTING = 3,
};

/* What a live attempt on a server came to. */
enum lv_health_outcome {
    LV_HEALTH_SUCCESS,         /* a response that is not 5xx */
    LV_HEALTH_CONNECT_FAILURE, /* the names are the outcome names of the log */
    LV_HEALTH_RESET,
    LV_HEALTH_TIMEOUT,
    LV_HEALTH_PROTOCOL_ERROR,
    LV_HEALTH_5XX,
};

#define LV_HEALTH_REASON_MAX 128

struct lv_server_health {
    enum lv_server_state state;
    char reason[LV_HEALTH_REASON_MAX]; /* why it is in this state ("" while UP from the start) */
    /* passive */
    uint32_t consecutive_failures;
    enum lv_health_outcome last_failure;
    uint32_t ejections;          /* enforced ejections so far (the n of the backoff) */
    uint64_t ejected_until;      /* EJECTED (or DOWN while also ejected): when it may return */
    bool ejected;                /* the outlier rule has it out (state may read DOWN) */
    uint64_t ejections_enforced; /* counters for metrics */
    uint64_t ejections_dry;      /* detected with enforce = false */
    /* active checks */
    bool check_down;
    uint32_t check_ok_streak, check_fail_streak;
    uint64_t checks_ok, checks_failed;
    /* slow start */
    uint64_t starting_since;
};

struct lv_health_group {
    struct lv_health_params p;
    struct lv_server_health *servers; /* owned: n entries */
    size_t n;
    bool panic;      /* no server in: traffic goes to all of them */
    uint64_t panics; /* times the group entered panic mode */
};

/* An event for the caller to log (once, at warn) and count. */
enum lv_health_event_kind {
    LV_HEALTH_EV_EJECTED,     /* state -> EJECTED: an enforced ejection, or a DOWN server
                                 whose checks passed while its ejection still runs (the
                                 ejection counters are in lv_server_health) */
    LV_HEALTH_EV_WOULD_EJECT, /* enforce = false: detected, nothing changed */
    LV_HEALTH_EV_NOT_EJECTED, /* the rule tripped but max_ejected is reached (or the server
                                 is the last one in) */
    LV_HEALTH_EV_DOWN,        /* state -> DOWN */
    LV_HEALTH_EV_STARTING,    /* back, ramping up */
    LV_HEALTH_EV_UP,          /* fully in ("back in" or the end of slow start) */
    LV_HEALTH_EV_PANIC,       /* the group entered panic mode (server index: -1) */
    LV_HEALTH_EV_PANIC_OVER,  /* a server is in again (server index: -1) */
};

struct lv_health_event {
    enum lv_health_event_kind kind;
    int server;                        /* index in the group, or -1 */
    char reason[LV_HEALTH_REASON_MAX]; /* text for the log line */
};

/* Events one call may produce at most (one server's change plus a panic change). */
#define LV_HEALTH_MAX_EVENTS 4

/** n servers, all UP (as HAProxy and Envoy start them), or, with `start_down`, all DOWN
 *  ("waiting for 2 passed checks") until `healthy` checks pass: for a reload while active
 *  checks are on, init the new group with start_down, then lv_health_carry every kept server,
 *  so only servers new to the group wait for their checks. The panic flag is set without an
 *  event and without counting in `panics`. Allocates the array (aborts when out of memory). */
void lv_health_init(struct lv_health_group *g, const struct lv_health_params *p, size_t n,
                    bool start_down);
void lv_health_free(struct lv_health_group *g);

/** New thresholds (a reload), state kept: a running ejection keeps its end time, a slow
 *  start its start (its length is the new slow_start, so the next tick may end it), streaks
 *  and counts are judged against the new thresholds from the next report on. */
void lv_health_configure(struct lv_health_group *g, const struct lv_health_params *p);

/** Carries the state of server `from` of group `old` to server `to` of `g` (a reload that kept
 *  the server): everything, counters included. The panic flag of `g` is recomputed without an
 *  event; the group's `panics` counter is the caller's to carry. */
void lv_health_carry(struct lv_health_group *g, size_t to, const struct lv_health_group *old,
                     size_t from);

/**
 * A live attempt on server i ended with `o`. Returns the number of events written to `ev`
 * (at most LV_HEALTH_MAX_EVENTS). Never called for attempts that did not reach a server
 * through our own doing (pool overflow, cancelled). A success resets the failure count; a
 * failure on a server that is out (an attempt that began before, or panic traffic) is not
 * counted, so it never extends an ejection.
 */
int lv_health_record(struct lv_health_group *g, size_t i, uint64_t now, enum lv_health_outcome o,
                     struct lv_health_event *ev);

/**
 * An active check of server i: ok, or failed with `why` ("503", "timeout", "connection
 * refused"). Returns the events.
 */
int lv_health_check_result(struct lv_health_group *g, size_t i, uint64_t now, bool ok,
                           const char *why, struct lv_health_event *ev);

/** Time passes: ejections that ran out end (a server also DOWN stays DOWN, silently, with
 *  `ejected` cleared), slow starts that completed end. Returns the number of events written
 *  (up to `max`, which should be at least 2): a change with no room for its event is left for
 *  the next tick, never made silently. */
int lv_health_tick(struct lv_health_group *g, uint64_t now, struct lv_health_event *ev, int max);

/** Active checks were turned off (a reload): DOWN servers come back (through STARTING or UP,
 *  or EJECTED while an ejection still runs), since nothing would ever bring them back now.
 *  Returns the events, up to `max` (at least 2); servers without room wait for the next
 *  call. */
int lv_health_checks_off(struct lv_health_group *g, uint64_t now, struct lv_health_event *ev,
                         int max);

/** May server i take new traffic (UP or STARTING)? */
bool lv_health_in(const struct lv_health_group *g, size_t i);

/** Share of a full server's traffic that server i takes now: 1 when UP, 0.1 + 0.9 ×
 *  elapsed / slow_start while STARTING (so a starting server is never starved; 1 once
 *  slow_start has passed, even before the tick that makes it UP), 0 when out (in panic mode
 *  the caller ignores weights). */
double lv_health_weight(const struct lv_health_group *g, size_t i, uint64_t now);

/** Servers in (UP or STARTING). When 0, the caller sends to all (panic mode): the group's
 *  panic flag is kept up to date by every call that changes a state. */
size_t lv_health_count_in(const struct lv_health_group *g);

/** Milliseconds left of server i's ejection (0 if not ejected). */
uint64_t lv_health_eject_left(const struct lv_health_group *g, size_t i, uint64_t now);

/** "up", "down", "ejected", "starting". */
const char *lv_server_state_name(enum lv_server_state s);
/** "connect-failure", "reset", "timeout", "protocol-error", "5xx", "success". */
const char *lv_health_outcome_name(enum lv_health_outcome o);

#endif
