/*
 * resphead: parse one complete, already pre-validated (headscan in response mode) upstream
 * response head with llhttp (HTTP_RESPONSE, strict) and decide its body framing and whether
 * the upstream connection may go back to the pool, with the guards of
 * (README, "How levee proxies"): no CL with TE, no duplicate or invalid CL, no body
 * for HEAD/1xx/204/304 whatever the headers say, 204/304 carrying a body length poison the
 * connection, TE other than exactly `chunked` reads until EOF, no framing reads until EOF.
 *
 * Spans point into the caller's head buffer; fields go into a caller-provided array. Called
 * by the upstream attempt once headscan reports DONE; every error is a 502.
 */
#ifndef LV_HTTP_RESPHEAD_H
#define LV_HTTP_RESPHEAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "http/body.h"
#include "http/fields.h"

struct lv_resphead {
    struct lv_field *fields; /* the caller's array; fields[0..nfields) are set */
    uint32_t nfields;
    int status; /* 100-599 */
    uint8_t major, minor;
    struct lv_span reason_phrase; /* may be empty */
    enum lv_body_mode body;       /* framing of the body that follows this head */
    uint64_t content_length;      /* valid when has_content_length */
    bool has_content_length;
    bool chunked;       /* Transfer-Encoding: chunked (whether or not a body follows) */
    bool keep_alive;    /* from the version and our own Connection tokenising */
    bool reusable;      /* the connection can serve another request after this response */
    bool interim;       /* 1xx other than 101: the final head follows (reusable is false here) */
    bool upgrade;       /* 101 Switching Protocols (502 unless the client asked to upgrade) */
    const char *reason; /* when lv_resphead_parse returns non-zero: static text */
};

/** Parse the response head `data[0..head_len)` (head_len from headscan DONE) to a request
 *  whose method was HEAD when `head_request`. Up to `max_fields` fields go into `fields`.
 *  Returns 0, or 502 with h->reason set. Rules beyond llhttp:
 *  - HEAD, 1xx, 204, 304: body LV_BODY_NONE whatever the headers say; a 204/304 with
 *    Content-Length > 0 or Transfer-Encoding is not reusable (its bytes may follow);
 *  - CL+TE, duplicate or invalid CL, several TE fields, malformed TE, a TE that ends in
 *    chunked after another coding (we would forward it un-decoded), TE on HTTP/1.0: 502;
 *  - a well-formed TE not ending in chunked ("gzip"), or no CL/TE: LV_BODY_EOF, not reusable;
 *  - 101: upgrade, LV_BODY_NONE, not reusable. */
int lv_resphead_parse(struct lv_resphead *h, const char *data, size_t head_len, bool head_request,
                      struct lv_field *fields, uint32_t max_fields);

#endif
