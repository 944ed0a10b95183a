/*
 * fields: checks and small parsers for single header field values, shared by the request and
 * response head parsers (reqhead, resphead), the body de-framer and the forwarder. Everything
 * works on spans of bytes (not NUL-terminated), allocates nothing and owns nothing.
 *
 * These are the guards llhttp 8.1 does not give us (README, "How levee proxies"):
 * Connection tokens with HTAB trimmed, exactly-one-`chunked` Transfer-Encoding, Host syntax,
 * Content-Length overflow, X-Request-Id syntax, hop-by-hop names (README, "How levee proxies").
 */
#ifndef LV_HTTP_FIELDS_H
#define LV_HTTP_FIELDS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* A borrowed run of bytes inside a caller's buffer. */
struct lv_span {
    const char *p;
    size_t len;
};

/* Header names the proxy treats specially; everything else is LV_FID_OTHER. */
enum lv_field_id {
    LV_FID_OTHER = 0,
    LV_FID_HOST,
    LV_FID_CONTENT_LENGTH,
    LV_FID_TRANSFER_ENCODING,
    LV_FID_CONNECTION,
    LV_FID_KEEP_ALIVE,
    LV_FID_TE,
    LV_FID_TRAILER,
    LV_FID_UPGRADE,
    LV_FID_PROXY, /* any name starting "proxy-" (Proxy-Connection, Proxy-Authorization...) */
    LV_FID_EXPECT,
    LV_FID_X_REQUEST_ID,
    LV_FID_X_FORWARDED_FOR,
    LV_FID_X_FORWARDED_PROTO,
    LV_FID_X_FORWARDED_HOST,
    LV_FID_FORWARDED,
    LV_FID_VIA,
    LV_FID_LEVEE_FAULT, /* never forwarded (README "levee dev") */
    LV_FID_TRACEPARENT, /* W3C trace context (README "Tracing") */
    LV_FID_TRACESTATE,
};

/* lv_field.flags: the field must not be forwarded (hop-by-hop by name, or named in Connection). */
#define LV_FIELD_HOP 0x01

/* One header field line as parsed by reqhead/resphead: spans into the caller's head buffer,
 * the value with leading and trailing OWS removed. */
struct lv_field {
    struct lv_span name;
    struct lv_span value;
    uint8_t id;    /* enum lv_field_id */
    uint8_t flags; /* LV_FIELD_* */
};

/** Case-insensitive (ASCII) compare of a name span with a lower-case NUL-terminated literal. */
bool lv_field_name_eq(const char *name, size_t len, const char *lower_literal);

/** The id of a header name (case-insensitive); LV_FID_OTHER when not special. */
enum lv_field_id lv_field_classify(const char *name, size_t len);

/** True for hop-by-hop names (README, "How levee proxies"): Connection, Keep-Alive, TE, Trailer,
 *  Transfer-Encoding, Upgrade and Proxy-* (which covers Proxy-Connection). */
bool lv_field_is_hop_by_hop(const char *name, size_t len);

/* Iterator over a comma-separated list value (RFC 9110 §5.6.1). Elements come out with OWS
 * (SP and HTAB) trimmed; empty elements are skipped, as a recipient must. */
struct lv_list_iter {
    const char *p, *end;
};

/** Start iterating over the list in `v[0..n)`. Borrows `v`. */
void lv_list_init(struct lv_list_iter *it, const char *v, size_t n);
/** Next non-empty element into `*elem`; false at the end. */
bool lv_list_next(struct lv_list_iter *it, struct lv_span *elem);

/* Connection options with a meaning of their own. */
#define LV_CONN_CLOSE      0x1
#define LV_CONN_KEEP_ALIVE 0x2
#define LV_CONN_UPGRADE    0x4

/** Flag for one Connection option (LV_CONN_*), or 0 for any other option, which names a
 *  header field to drop before forwarding. */
unsigned lv_connection_option(const char *tok, size_t len);
/** OR of LV_CONN_* over every option of one Connection value. `close\t` counts as close. */
unsigned lv_connection_flags(const char *v, size_t n);

/* Transfer-Encoding list shape, as lv_te_parse sees it. */
struct lv_te_info {
    unsigned ncodings; /* list elements */
    unsigned nchunked; /* elements equal to "chunked" */
    bool chunked_last; /* the final coding is "chunked" */
};

/** Parse a Transfer-Encoding value: 1#token with OWS around commas, no empty elements and no
 *  parameters (a ';' anywhere is malformed: chunked has none, and we apply no other coding).
 *  Returns false when malformed. */
bool lv_te_parse(const char *v, size_t n, struct lv_te_info *out);

/** Request Transfer-Encoding policy: 0 when the value is exactly one `chunked` (OWS-trimmed,
 *  any case); 501 for a well-formed list that ends in a single chunked after codings we do
 *  not apply ("gzip, chunked"); 400 for everything else (malformed, chunked not last or
 *  repeated, no chunked). Several Transfer-Encoding field lines are the caller's business:
 *  reqhead and resphead reject them (400/502) rather than combine them. */
int lv_te_check(const char *v, size_t n);

/** Host field value (or absolute-form authority): uri-host [":" port] where uri-host is a
 *  non-empty reg-name (unreserved / pct-encoded / sub-delims, which covers IPv4) or an
 *  "[IPv6]" literal, and port is 1*5DIGIT <= 65535. No userinfo, no whitespace. */
bool lv_host_valid(const char *v, size_t n);

/** Validate like lv_host_valid and split: copies the host, lower-cased (brackets kept for
 *  IPv6), into `out` (NUL-terminated, `cap` bytes incl. the NUL), sets *host_len and *port
 *  (-1 when absent). Returns false when invalid or when the host does not fit. */
bool lv_host_split(const char *v, size_t n, char *out, size_t cap, size_t *host_len, int *port);

/** Set LV_FIELD_HOP on hop-by-hop names and on every field named by a Connection option,
 *  except Host and Content-Length (the forwarder writes those itself, so a client cannot
 *  make them vanish). Returns the OR of LV_CONN_* over all Connection fields. Fields must be
 *  classified (lv_field.id) first. */
unsigned lv_fields_mark_hop(struct lv_field *fields, uint32_t n);

/* Largest Content-Length / chunk size accepted (2^53: exact in a double, absurd as a body). */
#define LV_CONTENT_LENGTH_MAX ((uint64_t)1 << 53)

/** Content-Length value (already OWS-trimmed): 1*DIGIT, leading zeros allowed, at most
 *  LV_CONTENT_LENGTH_MAX. Returns 0 and sets *out, or -1 when invalid (lists like "5, 5"
 *  included). */
int lv_content_length_parse(const char *v, size_t n, uint64_t *out);

/** X-Request-Id we keep: 1..200 bytes of visible ASCII (0x21-0x7E). */
bool lv_request_id_valid(const char *v, size_t n);

/** A request path levee will route on: no "%00" and no dot segments ("/./", "/../", also
 *  percent-encoded as %2e), so a prefix route can never be escaped by "/public/../admin".
 *  Clients normalise dot segments before sending (RFC 3986 §5.2.4), so real traffic has none;
 *  the proxy answers 400 to the rest, as nginx does for ".." above the root. */
bool lv_path_safe(const char *p, size_t n);

/** Trim leading and trailing SP/HTAB from a span. */
struct lv_span lv_span_trim_ows(struct lv_span s);

/* Byte classes shared by the http modules (one table lookup each). */
extern const uint8_t lv__http_cls[256];
#define LV__C_TCHAR      0x01 /* RFC 9110 tchar */
#define LV__C_VALUE      0x02 /* field-value byte: HTAB SP VCHAR obs-text */
#define LV__C_VCHAR      0x04 /* 0x21-0x7E */
#define LV__C_HEX        0x08
#define LV__C_HOST       0x10 /* reg-name: unreserved / sub-delims ('%' handled apart) */
#define LV__C_TARGET     0x20 /* request-target byte: VCHAR except '#' */
#define lv__is_tchar(c)  (lv__http_cls[(uint8_t)(c)] & LV__C_TCHAR)
#define lv__is_value(c)  (lv__http_cls[(uint8_t)(c)] & LV__C_VALUE)
#define lv__is_vchar(c)  (lv__http_cls[(uint8_t)(c)] & LV__C_VCHAR)
#define lv__is_hex(c)    (lv__http_cls[(uint8_t)(c)] & LV__C_HEX)
#define lv__is_target(c) (lv__http_cls[(uint8_t)(c)] & LV__C_TARGET)
#define lv__lower(c)     ((char)((c) >= 'A' && (c) <= 'Z' ? (c) + 32 : (c)))

#endif
