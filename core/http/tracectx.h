/*
 * tracectx: W3C Trace Context (https://www.w3.org/TR/trace-context/), the `traceparent` and
 * `tracestate` request headers, parsed strictly and written back. Pure: no clock, no random
 * source (the caller gives new ids), no allocation.
 *
 *   traceparent: 00-<trace-id: 32 lower-case hex>-<parent-id: 16 lower-case hex>-<flags: 2 hex>
 *
 * Version 00 is exactly 55 bytes. A later version (01..fe) is read by its first four fields
 * and may carry more after a "-", as the specification asks of a version-00 reader; version ff,
 * upper-case hex, an all-zero trace id or parent id are invalid. An invalid traceparent is
 * treated as absent (a new trace starts) and its tracestate is dropped with it.
 */
#ifndef LV_HTTP_TRACECTX_H
#define LV_HTTP_TRACECTX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LV_TRACE_ID_LEN       16 /* bytes */
#define LV_SPAN_ID_LEN        8
#define LV_TRACEPARENT_LEN    55 /* version 00, as written */
#define LV_TRACE_FLAG_SAMPLED 0x01

struct lv_tracectx {
    uint8_t trace_id[LV_TRACE_ID_LEN];
    uint8_t parent_id[LV_SPAN_ID_LEN];
    uint8_t flags;
};

/** Parses a traceparent value (OWS already trimmed); false when it is invalid. */
bool lv_traceparent_parse(const char *p, size_t n, struct lv_tracectx *out);

/** Writes "00-<trace>-<span>-<flags>" (LV_TRACEPARENT_LEN bytes, then a NUL) into out. */
void lv_traceparent_format(const uint8_t trace_id[LV_TRACE_ID_LEN],
                           const uint8_t span_id[LV_SPAN_ID_LEN], uint8_t flags,
                           char out[LV_TRACEPARENT_LEN + 1]);

/** Lower-case hex of `n` bytes into out (2n chars and a NUL). */
void lv_trace_hex(const uint8_t *id, size_t n, char *out);

/**
 * True when a tracestate value is well formed: at most 32 list members separated by commas
 * (optional spaces and tabs around them, empty members allowed), each `key=value` with a key
 * of lower-case letters, digits and `_-*\/` (a `tenant@system` form allowed), at most 256
 * bytes, and a value of 1..256 printable bytes other than `,` and `=` that does not end in a
 * space. A well-formed tracestate travels on unchanged; an ill-formed one is dropped.
 */
bool lv_tracestate_valid(const char *p, size_t n);

#endif
