/*
 * body: the message-body de-framer for the streaming path, requests and responses alike.
 * Given the framing decided from the head (none, Content-Length N, chunked, or until EOF),
 * it is fed the bytes that follow the head and hands back spans of body data pointing into
 * the caller's buffer (chunk framing removed), then "complete" with exactly the bytes the
 * message used, so a pipelined next message starts right after.
 *
 * Chunked is strict (README, "How levee proxies"): 1*HEXDIG sizes without spaces,
 * signs or 0x, overflow-checked; chunk extensions parsed, CTL-free and capped; CRLF after
 * every chunk's data; bare CR or LF anywhere is an error; trailers parsed like header
 * fields, capped and dropped (never forwarded), and framing fields in them are an error.
 * A body bigger than the caller's limit is a distinct result (413 for requests).
 *
 * Owns nothing and allocates nothing. Used by the client connection (request bodies) and the
 * upstream attempt (response bodies); errors become 400 (requests) or 502 (responses).
 */
#ifndef LV_HTTP_BODY_H
#define LV_HTTP_BODY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/fields.h"

enum lv_body_mode {
    LV_BODY_NONE,    /* no body: complete at once */
    LV_BODY_LENGTH,  /* Content-Length bytes */
    LV_BODY_CHUNKED, /* chunked transfer coding */
    LV_BODY_EOF,     /* responses only: everything until the connection closes */
};

enum lv_body_result {
    LV_BODY_MORE,      /* input used up, nothing to hand out: feed more bytes */
    LV_BODY_DATA,      /* *out holds body bytes (inside the input) */
    LV_BODY_DONE,      /* message complete; *used stops right after its last byte */
    LV_BODY_ERROR,     /* malformed framing; b->reason says why */
    LV_BODY_TOO_LARGE, /* body exceeds max_body (checked before the data is handed out) */
};

#define LV_BODY_UNLIMITED        UINT64_MAX
#define LV_CHUNK_LINE_MAX        4096  /* chunk-size line incl. extensions, without CRLF */
#define LV_CHUNK_EXT_MESSAGE_MAX 16384 /* chunk-extension bytes over the whole message */
#define LV_TRAILER_MAX           16384 /* trailer section bytes incl. the final CRLF */
#define LV_TRAILER_FIELDS_MAX    64

struct lv_body {
    uint64_t remaining; /* bytes left in the Content-Length body or the current chunk */
    uint64_t size;      /* chunk size being read */
    uint64_t received;  /* body data bytes handed out so far */
    uint64_t max_body;
    uint64_t wire;      /* bytes consumed so far, framing included */
    uint32_t line_len;  /* current chunk-size line */
    uint32_t ext_total; /* chunk-extension bytes in this message */
    uint32_t trailer_bytes;
    uint32_t trailer_fields;
    uint8_t mode;  /* enum lv_body_mode */
    uint8_t state; /* private */
    uint8_t tname_len;
    char tname[18];     /* lower-cased start of the current trailer name */
    const char *reason; /* on LV_BODY_ERROR / LV_BODY_TOO_LARGE: static text */
};

/** Start a body. `content_length` is used in LV_BODY_LENGTH mode only; `max_body` is the
 *  largest body accepted (LV_BODY_UNLIMITED for none). A Content-Length above max_body makes
 *  the first lv_body_next return LV_BODY_TOO_LARGE before consuming anything. */
void lv_body_init(struct lv_body *b, enum lv_body_mode mode, uint64_t content_length,
                  uint64_t max_body);

/** Consume framing from `data[0..len)` until a data span, the end of the message or the end
 *  of the input. `*used` is always set to the bytes consumed (the caller advances by it and
 *  calls again with the rest). On LV_BODY_DATA `*out` is a span inside `data` (the last
 *  `out->len` bytes of the `*used` consumed). After DONE, ERROR or TOO_LARGE further calls
 *  return the same result and consume nothing. */
enum lv_body_result lv_body_next(struct lv_body *b, const char *data, size_t len, size_t *used,
                                 struct lv_span *out);

/** The peer closed the connection. Returns LV_BODY_DONE when that completes the message
 *  (LV_BODY_EOF mode, or already complete), else LV_BODY_ERROR ("truncated body"). */
enum lv_body_result lv_body_eof(struct lv_body *b);

/** True once the message is complete. */
bool lv_body_done(const struct lv_body *b);

#endif
