/*
 * accesslog: formats the access-log line of one request, a single JSON object followed by
 * "\n" (README, "Admin API"). The proxy fills a struct lv_access_entry as the request goes (it
 * lives in the request, so nothing is allocated per request), formats it once at the end into a
 * buffer, and writes the buffer wherever access_log points; this module does no I/O.
 *
 * Strings that came from the network (request id, path, host) are slices, may hold any byte
 * and are always escaped; the others are C strings borrowed from the configuration or from
 * static tables. A NULL string renders as null.
 */
#ifndef LV_OBS_ACCESSLOG_H
#define LV_OBS_ACCESSLOG_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* X(enum suffix, bit, name in the log). The names are part of the log format: keep them. */
#define LV_ACCESS_FLAG_TABLE(X)                                                                    \
    X(RETRIED, 0, "retried")                                                                       \
    X(BUDGET_EXHAUSTED, 1, "budget-exhausted")                                                     \
    X(BREAKER_OPEN, 2, "breaker-open")                                                             \
    X(IDEMPOTENT_REPLAY, 3, "idempotent-replay")                                                   \
    X(IDEMPOTENCY_CONFLICT, 4, "idempotency-conflict")                                             \
    X(DEADLINE_EXCEEDED, 5, "deadline-exceeded")                                                   \
    X(HOOK_ERROR, 6, "hook-error")                                                                 \
    X(FALLBACK, 7, "fallback")                                                                     \
    X(CLIENT_ABORT, 8, "client-abort")                                                             \
    X(UPSTREAM_ABORT, 9, "upstream-abort")                                                         \
    X(PANIC, 10, "panic")                                                                          \
    X(FAULT, 11, "fault")                                                                          \
    X(RATE_LIMITED, 12, "rate-limited")                                                            \
    X(RATE_LIMITED_SHADOW, 13, "rate-limited-shadow")                                              \
    X(CONCURRENCY_LIMIT, 14, "concurrency-limit")                                                  \
    X(QUEUED, 15, "queued")                                                                        \
    X(TUNNEL, 16, "tunnel")

enum lv_access_flag {
#define LV__ACCESS_FLAG_ENUM(e, bit, name) LV_ACCESS_##e = 1u << (bit),
    LV_ACCESS_FLAG_TABLE(LV__ACCESS_FLAG_ENUM)
#undef LV__ACCESS_FLAG_ENUM
};

/* Most attempts recorded per request; later ones still count in `attempts`. */
#define LV_ACCESS_MAX_TRIES 16

/* Bytes of a time rendered by lv_accesslog_rfc3339(), NUL included. */
#define LV_ACCESS_TIME_SIZE 32

/** A borrowed byte slice; ptr == NULL renders as null. */
struct lv_access_str {
    const char *ptr;
    size_t len;
};

/** One upstream attempt, rendered as {"outcome":"503","server":"127.0.0.1:9000","ms":1.2}
 *  (and "fault":"abort" after "ms" when a fault was injected into it). */
struct lv_access_try {
    int status;         /* the upstream's status code, or 0 when the attempt ended in an error */
    const char *error;  /* outcome when status == 0: "connect-failure", "reset", "timeout", ... */
    const char *server; /* "host:port", or NULL before a server was picked */
    double ms;          /* duration of the attempt */
    const char *fault;  /* the injected fault that made this outcome ("abort", "delay", "reset"),
                           or NULL; rendered as "fault":"abort" only when set */
};

struct lv_access_entry {
    double time; /* request start, unix seconds */
    struct lv_access_str request_id;
    const char *trace_id;      /* 32 hex digits (README "Tracing"), or NULL: tracing off */
    const char *span_id;       /* the request's span, 16 hex digits, or NULL */
    const char *client;        /* peer address, "ip:port" */
    const char *method;        /* "GET", ...; NULL before the request line was parsed */
    struct lv_access_str path; /* the raw request target */
    struct lv_access_str host; /* the Host header */
    const char *route;         /* route name, or NULL (no route matched) */
    const char *upstream;      /* server of the last attempt, "127.0.0.1:9000", or NULL */
    int status;                /* status sent to the client (0: none was sent) */
    int attempts;              /* upstream attempts, first included */
    unsigned ntries;           /* entries used in tries[] (more are ignored) */
    struct lv_access_try tries[LV_ACCESS_MAX_TRIES];
    double backoff_ms;      /* total time spent waiting between attempts */
    uint64_t bytes_in;      /* request body bytes received */
    uint64_t bytes_out;     /* response bytes sent to the client, head included */
    double duration_ms;     /* whole request */
    double upstream_ms;     /* to the first byte of the upstream response; < 0: null */
    const char *error;      /* Levee-Error token, or NULL */
    const char *retry_stop; /* why the attempts ended ("success", "budget", ...), or NULL */
    unsigned flags;         /* enum lv_access_flag bits */
};

/** A slice of a NUL-terminated string (NULL gives a null slice). */
static inline struct lv_access_str lv_access_cstr(const char *s)
{
    struct lv_access_str r = {s, 0};
    while (s && s[r.len])
        r.len++;
    return r;
}

/**
 * Appends the JSON line of `e` to `out`: keys "time", "request_id", "trace_id", "span_id",
 * "client", "method", "path", "host", "route", "upstream", "status", "attempts", "tries",
 * "backoff_ms", "bytes_in", "bytes_out", "duration_ms", "upstream_ms", "error", "retry_stop",
 * "flags" in this order, then
 * "\n".
 * Durations are in milliseconds with at most 3 decimals; a non-finite one renders as null.
 * `flags` is an array of flag names in table order. Bytes outside printable ASCII, quotes and
 * backslashes are escaped, so the line is valid JSON whatever the client sent.
 */
void lv_accesslog_format(const struct lv_access_entry *e, struct lv_buf *out);

/**
 * Writes `unix_s` (seconds) as RFC 3339 UTC with milliseconds, "2026-11-23T20:01:02.345Z", into
 * `out` (NUL-terminated) and returns its length (24). Milliseconds are truncated, not rounded,
 * so a time never moves to the next second. Times before 1970 or after 9999 are clamped.
 */
size_t lv_accesslog_rfc3339(double unix_s, char out[LV_ACCESS_TIME_SIZE]);

/** The log name of one flag bit ("retried", ...), or NULL if `flag` is not exactly one flag. */
const char *lv_access_flag_name(unsigned flag);

#endif
