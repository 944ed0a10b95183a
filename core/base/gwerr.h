/*
 * gwerr: the one table of errors the gateway itself answers with (README, "Errors made by the
 * gateway"). Each has the `Levee-Error` token, the status code, whether a Retry-After is sent, and
 * a short message. The token of an error exists here and nowhere else.
 */
#ifndef LV_GWERR_H
#define LV_GWERR_H

/* X(enum, token, status, retry_after, message) */
#define LV_GWERR_TABLE(X)                                                                          \
    X(CONNECT_FAILURE, "connect-failure", 502, 0, "could not connect to the upstream")             \
    X(UPSTREAM_RESET, "upstream-reset", 502, 0, "the upstream closed the connection early")        \
    X(UPSTREAM_TIMEOUT, "upstream-timeout", 504, 0, "the upstream did not answer in time")         \
    X(DEADLINE_EXCEEDED, "deadline-exceeded", 504, 0, "the request deadline passed")               \
    X(BREAKER_OPEN, "breaker-open", 503, 1, "the route's circuit breaker is open")                 \
    X(POOL_OVERFLOW, "pool-overflow", 503, 1, "too many requests waiting for an upstream")         \
    X(BAD_UPSTREAM_RESPONSE, "bad-upstream-response", 502, 0, "the upstream sent invalid HTTP")    \
    X(IDEMPOTENCY_CONFLICT, "idempotency-conflict", 409, 1,                                        \
      "a request with this idempotency key is in flight")                                          \
    X(IDEMPOTENCY_MISMATCH, "idempotency-mismatch", 422, 0,                                        \
      "this idempotency key was used with a different request")                                    \
    X(IDEMPOTENCY_KEY_REQUIRED, "idempotency-key-required", 400, 0,                                \
      "this route requires an idempotency key")                                                    \
    X(IDEMPOTENCY_KEY_INVALID, "idempotency-key-invalid", 400, 0,                                  \
      "the idempotency key is too long or not a valid header value")                               \
    X(IDEMPOTENCY_STORE_FULL, "idempotency-store-full", 503, 1, "the idempotency store is full")   \
    X(IDEMPOTENCY_STORE_UNAVAILABLE, "idempotency-store-unavailable", 503, 1,                      \
      "the idempotency store is unavailable")                                                      \
    X(NO_ROUTE, "no-route", 404, 0, "no route matches this request")                               \
    X(NO_SERVER, "no-server", 503, 1, "the upstream has no resolvable server")                     \
    X(BAD_REQUEST, "bad-request", 400, 0, "malformed request")                                     \
    X(URI_TOO_LONG, "uri-too-long", 414, 0, "request line too long")                               \
    X(HEADER_TOO_LARGE, "header-too-large", 431, 0, "request header section too large")            \
    X(BODY_TOO_LARGE, "body-too-large", 413, 0, "request body too large")                          \
    X(REQUEST_TIMEOUT, "request-timeout", 408, 0, "request not received in time")                  \
    X(NOT_IMPLEMENTED, "not-implemented", 501, 0, "not implemented")                               \
    X(VERSION_NOT_SUPPORTED, "version-not-supported", 505, 0, "HTTP version not supported")        \
    X(EXPECTATION_FAILED, "expectation-failed", 417, 0, "unsupported expectation")                 \
    X(METHOD_NOT_ALLOWED, "method-not-allowed", 405, 0, "method not allowed")                      \
    X(SHUTTING_DOWN, "shutting-down", 503, 1, "the gateway is shutting down")                      \
    X(RATE_LIMITED, "rate-limited", 429, 1, "too many requests for this key")                      \
    X(RATE_LIMIT_STORE_UNAVAILABLE, "rate-limit-store-unavailable", 503, 1,                        \
      "the rate limit's store cannot be reached")                                                  \
    X(CONCURRENCY_LIMIT, "concurrency-limit", 503, 1, "the route has too many requests in flight") \
    X(FAULT_INJECTED, "fault-injected", 503, 0, "a fault was injected on purpose (abort)")         \
    X(BAD_FAULT_HEADER, "bad-fault-header", 400, 0, "malformed Levee-Fault header")

enum lv_gwerr {
#define LV__GWERR_ENUM(e, tok, st, ra, msg) LV_GWERR_##e,
    LV_GWERR_TABLE(LV__GWERR_ENUM)
#undef LV__GWERR_ENUM
        LV_GWERR__COUNT
};

struct lv_gwerr_info {
    const char *token;
    int status;
    int retry_after; /* 1: the response carries Retry-After */
    const char *message;
};

/** The table row for `e` (never NULL for a valid enum value). */
const struct lv_gwerr_info *lv_gwerr_info(enum lv_gwerr e);
/** Reason phrase for a status code ("OK", "Bad Gateway", ...; "Unknown" otherwise). */
const char *lv_http_reason(int status);

#endif
