/*
 * fwdhead: the request head levee forwards (README, "How levee proxies"): origin-form target,
 * end-to-end fields only (hop-by-hop and Connection-named fields dropped), one canonical
 * framing header, X-Forwarded-For/-Proto/-Host, Via, X-Request-Id; Expect is answered by levee
 * and not forwarded, nor is Levee-Fault (levee's own, README "levee dev"). With trace context
 * on (README "Tracing") the incoming traceparent is replaced per attempt. Levee-Attempt,
 * traceparent and the final CRLF are added per attempt. An upgrade the route allows goes on as
 * Connection: upgrade and the client's Upgrade value.
 */
#ifndef LV_PROXY_FWDHEAD_H
#define LV_PROXY_FWDHEAD_H

#include <stdbool.h>
#include <stdint.h>

#include "base/buf.h"
#include "http/reqhead.h"

/* Request body framing, as the client sent it (and as it is forwarded). */
enum lv_req_body { LV_REQ_BODY_NONE, LV_REQ_BODY_LENGTH, LV_REQ_BODY_CHUNKED };

struct lv_fwdhead_in {
    const struct lv_reqhead *h;
    const char *method; /* its name */
    const char *host;   /* Host (or the absolute-form authority); may be empty */
    size_t host_len;
    const char *client;     /* the client's address, appended to X-Forwarded-For */
    bool https;             /* X-Forwarded-Proto */
    bool http10;            /* Via: 1.0 */
    const char *request_id; /* X-Request-Id */
    enum lv_req_body body;  /* the framing header to write */
    uint64_t content_length;
    struct lv_span upgrade; /* the Upgrade value to forward (with Connection: upgrade), or
                               empty: no upgrade (README "WebSocket and other upgrades") */
    bool trace;      /* trace context on: traceparent is written per attempt, not forwarded */
    bool tracestate; /* (with trace) the incoming traceparent was valid: its well-formed
                        tracestate fields travel on; otherwise they are dropped */
};

/** Whether a request may be forwarded as an upgrade: it asked (Connection: upgrade and an
 *  Upgrade value), has no body, and every protocol its Upgrade list names ("websocket",
 *  "foo/2") is in the route's `tokens` (lower case; a name compares without its version, case
 *  insensitively). */
bool lv_fwdhead_upgrade_allowed(const struct lv_reqhead *h, enum lv_req_body body,
                                char *const *tokens, size_t ntokens);

/** Writes the forwarded head into `out` (reset first). Returns true when the request has no
 *  Host to forward: each attempt then names its server's authority. */
bool lv_fwdhead_build(struct lv_buf *out, const struct lv_fwdhead_in *in);

#endif
