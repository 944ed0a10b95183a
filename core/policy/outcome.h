/*
 * outcome: how one attempt ended (README, "Outcomes and classification") and the verdict on it. An
 * attempt ends with the upstream's status, or with one of four errors; a verdict (from the route's
 * classify hook, or from lv_classify_default when there is none or it failed) says whether it
 * counts as a success or a failure for the breaker and whether it may be retried. The outcome and
 * verdict names used in configuration, logs and hooks exist here only.
 *
 * Pure: no clock, no I/O. Called by the request path (core/proxy/request.c) after each
 * attempt and by the configuration loader to parse retry.on.
 */
#ifndef LV_OUTCOME_H
#define LV_OUTCOME_H

#include "base/gwerr.h"
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* How one attempt ended. NONE: no outcome (the client went away, or no attempt was made). */
enum lv_outcome_kind {
    LV_OUT_NONE,
    LV_OUT_STATUS,
    LV_OUT_CONNECT_FAILURE, /* refused, unreachable, DNS, connect timeout: nothing was sent */
    LV_OUT_RESET,           /* connection closed or reset before a whole response head */
    LV_OUT_TIMEOUT,         /* try_timeout passed */
    LV_OUT_PROTOCOL_ERROR,  /* the upstream sent invalid HTTP */
};

struct lv_outcome {
    enum lv_outcome_kind kind;
    int status; /* LV_OUT_STATUS only */
};

/* What an outcome means. NONE: no hook, or the hook failed; use lv_classify_default. */
enum lv_verdict { LV_VERDICT_NONE, LV_VERDICT_OK, LV_VERDICT_FAIL, LV_VERDICT_RETRY };

/*
 * The retry.on error bit of an error kind: connect-failure 1, reset 2, timeout 4,
 * protocol-error 8 (the same values as config.h's LV_RETRY_ON_*); 0 for NONE and STATUS.
 */
static inline uint32_t lv_outcome_error_bit(enum lv_outcome_kind k)
{
    return k >= LV_OUT_CONNECT_FAILURE && k <= LV_OUT_PROTOCOL_ERROR
               ? (uint32_t)1 << (k - LV_OUT_CONNECT_FAILURE)
               : 0;
}

/**
 * Name of a kind: "connect-failure", "reset", "timeout", "protocol-error", and "status" and
 * "none" for the other two. Static string, never NULL ("?" for an unknown value).
 */
const char *lv_outcome_name(enum lv_outcome_kind k);
/** The gateway error a client gets when an attempt that ended so is the last one:
 *  connect-failure, upstream-reset, upstream-timeout, else bad-upstream-response. */
enum lv_gwerr lv_outcome_gwerr(enum lv_outcome_kind kind);

/** The error kind named by `name` (one of the four error names), or LV_OUT_NONE. */
enum lv_outcome_kind lv_outcome_from_name(const char *name, size_t n);

/** "none", "ok", "fail", "retry" (the words a classify hook returns). Never NULL. */
const char *lv_verdict_name(enum lv_verdict v);

/** The verdict a hook's word names ("ok", "fail", "retry"), or LV_VERDICT_NONE. */
enum lv_verdict lv_verdict_from_name(const char *name, size_t n);

/** True when the verdict is a failure for the breaker (FAIL and RETRY). */
static inline bool lv_verdict_is_failure(enum lv_verdict v)
{
    return v == LV_VERDICT_FAIL || v == LV_VERDICT_RETRY;
}

/** True when bit `status` of a retry.on status map (640 bits, 10 words) is set. */
static inline bool lv_status_in(const uint64_t map[10], int status)
{
    return status >= 0 && status < 640 && ((map[status / 64] >> (status % 64)) & 1);
}

/**
 * The verdict without a hook (README, "Outcomes and classification"): an outcome listed in retry.on
 * (`on_errors` bits as lv_outcome_error_bit, `on_status` bit s for status s) is RETRY; any other
 * error, and any other 5xx, is FAIL; every other status is OK. LV_OUT_NONE has no verdict
 * (LV_VERDICT_NONE): it must count neither way.
 */
enum lv_verdict lv_classify_default(uint32_t on_errors, const uint64_t on_status[10],
                                    struct lv_outcome o);

#endif
