/*
 * headscan: an incremental pre-validator of one HTTP/1.x message head (request or response),
 * run on the bytes as they arrive and before llhttp sees them. It finds the end of the head
 * (the first CRLFCRLF), enforces the size limits llhttp does not have (request line, head
 * size, field count) and rejects the shapes llhttp 8.1 strict lets through
 * (README, "How levee proxies"): bare CR or LF, obs-fold, empty or non-token
 * field names, whitespace before the colon, CTLs in values, `_` twins of framing headers,
 * request lines that are not exactly `token SP target SP HTTP/1.[01]`, fragments, misplaced
 * asterisk/authority-form targets, HTTP/0.9 and HTTP/2.0 request lines, status lines that are
 * not `HTTP/1.[01] SP 3DIGIT [SP reason]` with a status in 100-599.
 *
 * It owns no memory and copies nothing: the caller keeps the head bytes in one buffer that
 * grows between calls (same start), and the scanner resumes where it stopped. The result does
 * not depend on how the bytes were split. Called by the client connection (requests) and the
 * upstream attempt (responses); reqhead/resphead then parse the validated head.
 */
#ifndef LV_HTTP_HEADSCAN_H
#define LV_HTTP_HEADSCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lv_headscan_result { LV_HEADSCAN_MORE, LV_HEADSCAN_DONE, LV_HEADSCAN_ERROR };

struct lv_headscan {
    /* limits */
    size_t max_head;
    size_t max_line;
    uint32_t max_fields;
    bool response;
    /* resume state (private) */
    uint8_t state;
    uint8_t idx;       /* position inside a fixed-size token (status line) */
    uint16_t code;     /* status code digits so far */
    size_t pos;        /* next byte to scan */
    size_t mark;       /* start of the current token */
    size_t method_end; /* request line: method is [start, method_end) */
    size_t target;     /* request line: target is [target, target_end) */
    size_t target_end;
    /* results */
    size_t start;       /* offset of the start line (request mode skips leading empty lines) */
    uint32_t fields;    /* field lines seen */
    size_t head_len;    /* on DONE: bytes of the head including the final CRLFCRLF */
    int status;         /* on ERROR: 400, 414, 431, 505 for requests; always 502 for responses */
    const char *reason; /* on ERROR: static text, e.g. "bare LF in header section" */
};

/** Prepare a scan. `response` selects status-line rules (and 502 for every error).
 *  `max_head`: the whole head including its final CRLFCRLF may be at most this long (else 431).
 *  `max_request_line`: the start line without its CRLF may be at most this long (else 414).
 *  `max_fields`: at most this many field lines (else 431). */
void lv_headscan_init(struct lv_headscan *s, bool response, size_t max_head,
                      size_t max_request_line, uint32_t max_fields);

/** Scan more of the head. `data` is the first byte of the head and `len` all bytes received
 *  so far; bytes already scanned are not looked at again, except that the request line is
 *  checked as a whole at its CR (so they must still be there, unchanged). Returns MORE (need
 *  more bytes), DONE (s->head_len set; bytes after it belong to the body or the next message)
 *  or ERROR (s->status, s->reason set). DONE and ERROR are sticky. */
enum lv_headscan_result lv_headscan_feed(struct lv_headscan *s, const char *data, size_t len);

#endif
