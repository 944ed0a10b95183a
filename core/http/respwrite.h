/*
 * respwrite: the one writer of HTTP/1.1 response heads. Every response levee sends — a
 * forwarded upstream response, an idempotent replay, a gateway error, a fallback hook's answer,
 * an admin API reply — is written with these three calls, so a header every response carries
 * (X-Request-Id, framing, Connection) is added in one place:
 *
 *   lv_respwrite_begin(out, status, reason)     status line
 *   lv_respwrite_field(...) / _e2e(...)         the response's own fields
 *   lv_respwrite_end(out, &tail)                X-Request-Id, framing, Connection, blank line
 */
#ifndef LV_HTTP_RESPWRITE_H
#define LV_HTTP_RESPWRITE_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "http/fields.h"

enum lv_framing {
    LV_FRAMING_NONE,    /* no framing header: interim heads, 204, a body that ends at close */
    LV_FRAMING_LENGTH,  /* Content-Length: tail.length */
    LV_FRAMING_CHUNKED, /* Transfer-Encoding: chunked */
};

enum lv_conn_header {
    LV_CONNHDR_NONE,       /* HTTP/1.1 default: persistent, nothing said */
    LV_CONNHDR_CLOSE,      /* Connection: close */
    LV_CONNHDR_KEEP_ALIVE, /* Connection: keep-alive (an HTTP/1.0 client that keeps it) */
};

struct lv_resp_tail {
    const char *request_id; /* X-Request-Id, when not NULL */
    enum lv_framing framing;
    uint64_t length; /* for LV_FRAMING_LENGTH */
    enum lv_conn_header connection;
};

/** The status line; `reason` NULL or empty takes the standard phrase. */
void lv_respwrite_begin(struct lv_buf *out, int status, const char *reason, size_t reason_len);
/** One header field. */
void lv_respwrite_field(struct lv_buf *out, const char *name, size_t name_len, const char *value,
                        size_t value_len);
/** Header field with a NUL-terminated name and value. */
void lv_respwrite_fieldz(struct lv_buf *out, const char *name, const char *value);
/** The end-to-end fields of a parsed head: hop-by-hop fields, the framing fields and
 *  X-Request-Id are left out (levee writes its own in the tail). */
void lv_respwrite_e2e(struct lv_buf *out, const struct lv_field *fields, uint32_t nfields);
/** X-Request-Id, the framing header, Connection, then the blank line ending the head. */
void lv_respwrite_end(struct lv_buf *out, const struct lv_resp_tail *tail);

#endif
