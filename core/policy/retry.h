/*
 * retry: whether a failed attempt is retried, and after how long (README, "Resilience policies").
 * The rule lives in one pure function, lv_retry_decide, which takes every fact it needs as a field
 * of struct lv_retry_ask; the request path (core/proxy/request.c) gathers the facts, calls it after
 * each attempt, and acts on the answer. lv_retry_delay chooses the delay to ask about: a
 * hook's delay, else the server's Retry-After on a 429 or 503, else backoff.
 *
 * Typical use after an attempt (all times from one monotonic clock, in ms):
 *
 *     verdict = hook verdict, or lv_classify_default(...) if none / the hook failed;
 *     delay = lv_retry_delay(&d, &from_server);
 *     ask = { verdict, outcome, attempts_made, max_attempts, now, deadline, delay,
 *             from_server, min_try, response_started, method, has_key, non_idempotent,
 *             replayable, lv_budget_can_retry(budget, now) };
 *     switch (lv_retry_decide(&ask, &delay)) {
 *     case LV_RETRY_GO: lv_budget_on_retry(budget, now); start a timer of `delay`; break;
 *     case LV_RETRY_NO_BUDGET: count budget exhaustion; answer with this attempt; break;
 *     default: answer with this attempt;
 *     }
 */
#ifndef LV_RETRY_H
#define LV_RETRY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/outcome.h"

struct lv_retry_ask {
    enum lv_verdict verdict; /* after classification (hook or default) */
    struct lv_outcome outcome;
    uint32_t attempts_made, max_attempts; /* attempts made so far, first included; retry.attempts */
    uint64_t now_ms, deadline_ms;         /* absolute, same clock */
    uint64_t delay_ms;      /* backoff, hook delay or Retry-After, from lv_retry_delay */
    bool delay_from_server; /* Retry-After or hook delay (no delay is shortened); if it does not fit
                               the deadline there is no retry */
    uint64_t min_try_ms;    /* a useful try needs at least this long after the delay */
    bool response_started;  /* a byte of the response went to the client */
    int method;             /* llhttp method number */
    bool has_idempotency_key;    /* the request carries a key on a route with idempotency on */
    bool non_idempotent_allowed; /* retry.non_idempotent */
    bool replayable;             /* the whole body sent so far is buffered (or there is none) */
    bool budget_allows;          /* lv_budget_can_retry() answered yes */
};

/* Why not, in the order the rules are checked; the first that fails is the answer. */
enum lv_retry_no {
    LV_RETRY_GO = 0,
    LV_RETRY_NO_VERDICT,  /* the verdict is not "retry" */
    LV_RETRY_NO_ATTEMPTS, /* attempts_made >= max_attempts */
    LV_RETRY_NO_STARTED,  /* part of the response already went to the client */
    LV_RETRY_NO_UNSAFE,   /* maybe processed, and not idempotent, no key, not allowed */
    LV_RETRY_NO_REPLAY,   /* the request body cannot be sent again */
    LV_RETRY_NO_DEADLINE, /* no room left for the delay and a useful try */
    LV_RETRY_NO_BUDGET,   /* the route's retry budget is spent */
};

/**
 * Decides whether to retry (README, "Resilience policies"). A retry needs all of: verdict RETRY;
 * attempts_made < max_attempts; no response byte sent; the request safe to replay (the outcome is
 * connect-failure, so nothing reached the upstream, or the method is idempotent per
 * lv_method_idempotent, or it has an idempotency key, or non_idempotent_allowed); a
 * replayable body; room before the deadline; the budget.
 *
 * Deadline: the whole delay and a try of at least max(min_try_ms, 1) ms must fit before the
 * deadline (delay + min try <= time left), else NO_DEADLINE. No delay is ever shortened:
 * retrying early would ignore a server's Retry-After, or defeat the backoff.
 *
 * The budget is checked last on purpose: NO_BUDGET then means "everything else allowed it",
 * which is what levee_retry_budget_exhausted_total and the budget-exhausted log flag count,
 * and the caller spends budget (lv_budget_on_retry) only on GO, at decision time, so retries
 * waiting in backoff already count against it.
 *
 * On GO stores the delay to wait in *delay_ms_out (may be NULL); otherwise leaves it alone.
 */
enum lv_retry_no lv_retry_decide(const struct lv_retry_ask *a, uint64_t *delay_ms_out);

/*
 * Why a request's attempts ended where they did (README "When levee retries"): the access
 * log's `retry_stop` and levee_retry_decisions_total{route,decision} (which also counts
 * LV_STOP_NONE decisions to retry, as "retry").
 */
enum lv_retry_stop {
    LV_STOP_NONE = 0,         /* no decision yet (or a retry was decided) */
    LV_STOP_SUCCESS,          /* the attempt succeeded (verdict ok, status below 400) */
    LV_STOP_VERDICT,          /* classified ok or fail, not retry */
    LV_STOP_ATTEMPTS,         /* retry.attempts used up */
    LV_STOP_BUDGET,           /* the route's retry budget is spent */
    LV_STOP_DEADLINE,         /* no room left before the deadline */
    LV_STOP_NOT_REPLAYABLE,   /* maybe processed and not safe to send again */
    LV_STOP_BODY_TOO_LARGE,   /* the body was not kept for a replay (over request_buffer) */
    LV_STOP_RESPONSE_STARTED, /* part of the response already went to the client */
    LV_STOP_BREAKER_OPEN,     /* the breaker refused the request or its retry */
};
#define LV_STOP_KINDS 10

/** The stop a "no" of lv_retry_decide means (GO: LV_STOP_NONE). */
enum lv_retry_stop lv_retry_stop_of(enum lv_retry_no no);
/** "success", "verdict", "attempts", "budget", "deadline", "not-replayable",
 *  "body-too-large", "response-started", "breaker-open"; "retry" for LV_STOP_NONE. */
const char *lv_retry_stop_name(enum lv_retry_stop s);

/**
 * Short name of an answer, for logs and metric labels: "go", "verdict", "attempts",
 * "response-started", "unsafe", "replay", "deadline", "budget-exhausted". Never NULL.
 */
const char *lv_retry_no_name(enum lv_retry_no no);

/* Inputs of lv_retry_delay. */
struct lv_retry_delay_ask {
    struct lv_outcome outcome;
    bool has_hook_delay; /* the classify hook returned a delay */
    uint64_t hook_delay_ms;
    const char *retry_after; /* the response's Retry-After value, NULL if none */
    size_t retry_after_len;
    int64_t now_unix_s; /* wall clock, for an HTTP-date Retry-After */
    int jitter;         /* LV_BACKOFF_* (= enum lv_jitter) */
    uint64_t base_ms, max_ms;
    uint32_t retry_number;  /* 1 for the first retry */
    uint64_t prev_delay_ms; /* the previous backoff delay (decorrelated jitter), 0 at first */
    uint64_t rand64;        /* 64 random bits */
};

/**
 * The delay before the next attempt, and whether it is the server's word (*from_server, for
 * lv_retry_ask.delay_from_server; may be NULL). In order: the hook's delay; else, for a 429
 * or 503 carrying a valid Retry-After, that delay ("wait as told", with or without a hook);
 * else lv_backoff_ms. An invalid Retry-After is ignored (backoff is used).
 */
uint64_t lv_retry_delay(const struct lv_retry_delay_ask *a, bool *from_server);

/** True for the outcomes whose Retry-After is obeyed: status 429 and 503. */
bool lv_retry_after_applies(struct lv_outcome o);

#endif
