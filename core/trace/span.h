/*
 * span: one finished span as the request path hands it to the exporter (README "Tracing"),
 * and its encoding as OTLP/HTTP JSON.
 *
 * A span is a fixed-size value (no pointers but to static attribute keys): the request path
 * fills one on its stack when a request or an attempt ends and the exporter copies it into its
 * queue, so nothing is allocated per span on the request path. Attribute values live in the
 * span's own text area; what does not fit is cut (a span is diagnostics, never data).
 */
#ifndef LV_TRACE_SPAN_H
#define LV_TRACE_SPAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "http/tracectx.h"

/* OTLP's SpanKind values. */
enum lv_span_kind { LV_SPAN_SERVER = 2, LV_SPAN_CLIENT = 3 };

/* OTLP's Status.code values. */
enum lv_span_status { LV_SPAN_UNSET = 0, LV_SPAN_OK = 1, LV_SPAN_ERROR = 2 };

#define LV_SPAN_MAX_ATTRS 24
#define LV_SPAN_TEXT      1024 /* bytes for the name, attribute values and status message */

enum lv_span_attr_type { LV_SPAN_ATTR_STR, LV_SPAN_ATTR_INT, LV_SPAN_ATTR_BOOL };

struct lv_tspan_attr {
    const char *key; /* static text: "http.request.method", "levee.route", ... */
    uint8_t type;    /* enum lv_span_attr_type */
    uint16_t off;    /* LV_SPAN_ATTR_STR: the value is text[off .. off+len) */
    uint16_t len;
    int64_t i; /* LV_SPAN_ATTR_INT, LV_SPAN_ATTR_BOOL (0/1) */
};

struct lv_trace_span {
    uint8_t trace_id[LV_TRACE_ID_LEN];
    uint8_t span_id[LV_SPAN_ID_LEN];
    uint8_t parent_id[LV_SPAN_ID_LEN]; /* all zero: a root span */
    uint8_t kind;                      /* enum lv_span_kind */
    uint8_t status;                    /* enum lv_span_status */
    uint8_t nattrs;
    uint8_t dropped_attrs; /* attributes ignored beyond LV_SPAN_MAX_ATTRS (capped at 255) */
    bool truncated;        /* some text did not fit, or attributes were dropped */
    uint64_t start_ns;     /* Unix time, nanoseconds */
    uint64_t end_ns;       /* >= start_ns */
    uint16_t name_off, name_len;
    uint16_t msg_off, msg_len; /* status message (errors), may be empty */
    uint16_t text_used;
    struct lv_tspan_attr attrs[LV_SPAN_MAX_ATTRS];
    char text[LV_SPAN_TEXT];
};

/** Starts a span: ids, kind, times zeroed; no name, no attributes. */
void lv_tspan_init(struct lv_trace_span *sp, enum lv_span_kind kind,
                   const uint8_t trace_id[LV_TRACE_ID_LEN], const uint8_t span_id[LV_SPAN_ID_LEN],
                   const uint8_t *parent_id /* NULL: root */);

/* Text (name, status message, string values) goes into sp->text in the order it is set; what
 * does not fit is cut at a UTF-8 character boundary and sp->truncated is set. Setting the name
 * or the message twice uses new room (the old text stays unused). */

/** Sets the span's name ("GET /api", "GET"), cut to what fits. */
void lv_tspan_name(struct lv_trace_span *sp, const char *p, size_t n);

/** Sets the status and its message (may be NULL). */
void lv_tspan_set_status(struct lv_trace_span *sp, enum lv_span_status st, const char *msg);

/** Adds an attribute; `key` must be static text. Ignored beyond LV_SPAN_MAX_ATTRS (counted in
 *  dropped_attrs, sent as the span's droppedAttributesCount). */
void lv_tspan_str(struct lv_trace_span *sp, const char *key, const char *p, size_t n);
void lv_tspan_cstr(struct lv_trace_span *sp, const char *key,
                   const char *s); /* s may be NULL: skipped */
void lv_tspan_int(struct lv_trace_span *sp, const char *key, int64_t v);
void lv_tspan_bool(struct lv_trace_span *sp, const char *key, bool v);

/**
 * Appends an OTLP/HTTP JSON ExportTraceServiceRequest holding `n` spans to `out`:
 * one resourceSpans with `service.name` = service (and `service.version`), one scopeSpans
 * (scope "levee"), ids as lower-case hex, times as decimal strings, kind and status codes as
 * numbers, every text JSON-escaped (bytes that are not valid UTF-8 are replaced), int
 * attributes as decimal strings ({"intValue":"123"}, the proto3 JSON mapping of int64).
 * A span with status UNSET has no "status"; a root span has no "parentSpanId".
 * service.version is LEVEE_VERSION; `service` NULL means "levee".
 */
void lv_tspan_encode(struct lv_buf *out, const char *service, const struct lv_trace_span *spans,
                     size_t n);

/* The same document in pieces, for a caller that takes spans one at a time (the exporter):
 * begin, then one lv_tspan_encode_span per span (`first` for the first), then end. */
void lv_tspan_encode_begin(struct lv_buf *out, const char *service);
void lv_tspan_encode_span(struct lv_buf *out, const struct lv_trace_span *sp, bool first);
void lv_tspan_encode_end(struct lv_buf *out);

/** Appends `s[0..n)` as the inside of a JSON string: `"`, `\` and control bytes escaped,
 *  valid UTF-8 kept as it is, every byte of an invalid sequence (overlong forms, surrogates,
 *  code points above U+10FFFF, cut sequences) replaced by U+FFFD. */
void lv_tspan_json_escape(struct lv_buf *out, const char *s, size_t n);

#endif
