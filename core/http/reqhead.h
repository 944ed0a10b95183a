/*
 * reqhead: parse one complete, already pre-validated (headscan) request head with llhttp
 * (HTTP_REQUEST, strict build, no lenient flags) and derive what the proxy acts on, applying
 * the guards llhttp 8.1 lacks (README, "How levee proxies"): exactly one valid Host on 1.1,
 * Transfer-Encoding exactly `chunked` (400/501), no TE on 1.0, no CL with TE, no duplicate CL,
 * keep-alive from our own Connection tokenising, absolute-form split, CONNECT/TRACE 405,
 * unknown methods 501, PRI 505.
 *
 * Nothing is copied: every span points into the caller's head buffer, and the fields go into
 * a caller-provided array. The body is not parsed here (see body.h). Called by the client
 * connection once headscan reports DONE; the forwarder rebuilds the upstream head from it.
 */
#ifndef LV_HTTP_REQHEAD_H
#define LV_HTTP_REQHEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/fields.h"

struct lv_reqhead {
    struct lv_field *fields; /* the caller's array; fields[0..nfields) are set */
    uint32_t nfields;
    int method; /* llhttp / base/method.h number */
    uint8_t major, minor;
    struct lv_span target;      /* request-target as received */
    struct lv_span path;        /* path without query: origin-form path, "*" for OPTIONS *, the
                                   absolute-form path (a static "/" when that one is empty) */
    struct lv_span query;       /* after '?', without it; see has_query */
    struct lv_span authority;   /* absolute-form: the target's authority, else empty */
    struct lv_span host;        /* routing authority: `authority` when absolute-form, else the Host
                                   value (empty for an HTTP/1.0 request without Host) */
    struct lv_span scheme;      /* absolute-form: "http" or "https" as received, else empty */
    struct lv_span request_id;  /* the X-Request-Id value when exactly one, and valid; else empty */
    struct lv_span upgrade;     /* Upgrade value when upgrade_requested */
    struct lv_span traceparent; /* the traceparent value when exactly one (not validated) */
    uint8_t ntraceparent;       /* traceparent fields seen (more than one: invalid) */
    uint8_t ntracestate;        /* tracestate fields seen */
    struct lv_span tracestate;  /* the tracestate value when exactly one */
    uint64_t content_length;    /* valid when has_content_length */
    bool has_query;
    bool has_content_length;
    bool chunked;           /* Transfer-Encoding: chunked (the only TE accepted) */
    bool keep_alive;        /* from the version and our own Connection tokenising */
    bool upgrade_requested; /* Connection: upgrade + an Upgrade field (the caller decides) */
    bool expect_continue;   /* HTTP/1.1 Expect: 100-continue */
    bool expect_other;      /* HTTP/1.1 Expect with another value (the caller answers 417) */
    bool absolute_form;
    const char *reason; /* when lv_reqhead_parse returns non-zero: static text */
};

/** Parse the request head `data[0..head_len)` (head_len from headscan DONE, CRLFCRLF
 *  included) into `h`, with up to `max_fields` fields stored in `fields`. Returns 0, or an
 *  HTTP status (400, 405, 431, 501, 505) with h->reason set; spans parsed before the error
 *  (e.g. request_id) may be set. Fields flagged LV_FIELD_HOP (hop-by-hop, or named by a
 *  Connection option) must not be forwarded; Host and Content-Length are never flagged by a
 *  Connection option: the forwarder writes those itself. */
int lv_reqhead_parse(struct lv_reqhead *h, const char *data, size_t head_len,
                     struct lv_field *fields, uint32_t max_fields);

/* Internal, shared with resphead: run llhttp over a complete head, collecting fields and the
 * target / reason span, and stop at on_headers_complete. */
struct lv__llhead {
    struct lv_field *fields;
    uint32_t max, n;
    struct lv_span url;    /* requests: the request-target */
    struct lv_span status; /* responses: the reason phrase */
    bool in_name, overflow;
    uint8_t major, minor, method, upgrade;
    int status_code;
    uint16_t flags;          /* llhttp F_* flags */
    uint64_t content_length; /* llhttp's view, for cross-checking */
};

/** 0 when llhttp accepted the head and stopped exactly at its end; otherwise the llhttp error
 *  number, or -1 if it stopped elsewhere. Fields come out OWS-trimmed and classified. */
int lv__llhead_run(struct lv__llhead *c, bool response, const char *data, size_t head_len);

#endif
