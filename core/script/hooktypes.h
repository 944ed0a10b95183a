/*
 * hooktypes: what a hook call is given (borrowed for the call) and the limits it runs under
 * (README "Writing hooks"). Shared by the public API (hooks.h) and the Lua side of a call
 * (hookcall.h); no Lua here.
 */
#ifndef LV_HOOKTYPES_H
#define LV_HOOKTYPES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Lua VM instructions one call may run (about 10 ms of pure Lua). Pure-C library calls
 * (e.g. one string.find with a pathological pattern) run to completion: they are not counted. */
#define LV_HOOK_MAX_INSTRUCTIONS 1000000
/* Bytes one call may add to the state (an allocation beyond fails the call with a memory
 * error); the state-wide cap LV_HOOK_STATE_MEMORY still applies on top. */
#define LV_HOOK_MAX_MEMORY ((size_t)8 << 20)
/* Cap of a configuration's Lua state once loaded: it holds the hooks for the whole generation,
 * so a runaway hook fails with a memory error instead of growing the process. */
#define LV_HOOK_STATE_MEMORY ((size_t)256 << 20)
/* A longer retry delay from a hook is capped (the deadline then decides; no deadline fits). */
#define LV_HOOK_MAX_DELAY_MS ((uint64_t)86400 * 1000)
/* Largest response head a fallback may produce (status line and headers). */
#define LV_HOOK_MAX_FALLBACK_HEAD ((size_t)64 << 10)
/* Longest key an idempotency key hook may return (it becomes part of a store key). */
#define LV_HOOK_MAX_IDEM_KEY 255

/* One header field, borrowed: not NUL-terminated. */
struct lv_hook_header {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

/* What a classify hook sees (README, "Outcomes and classification"), as the table
 * { status, error, headers, duration, number, route, request = { method, path, headers } }. */
struct lv_hook_attempt {
    int status;        /* the upstream's status; 0 when the attempt ended in an error */
    const char *error; /* "connect-failure", "reset", "timeout", "protocol-error", or NULL */
    const struct lv_hook_header *headers; /* response headers (status outcomes only) */
    size_t nheaders;
    double duration_s; /* this attempt, start to outcome */
    int number;        /* 1 for the first attempt */
    const char *route; /* route name */
    const char *method;
    const char *path; /* request-target as received (query included) */
    size_t path_len;
    const struct lv_hook_header *req_headers;
    size_t nreq_headers;
};

/* The request a fallback hook sees, as { method, path, headers, route, request_id }. */
struct lv_hook_request {
    const char *method;
    const char *path;
    size_t path_len;
    const struct lv_hook_header *headers;
    size_t nheaders;
    const char *route;
    const char *request_id; /* sent back as X-Request-Id (the hook's own is dropped); may be NULL */
    bool close; /* the connection closes after this response: the head says Connection: close */
};

#endif
