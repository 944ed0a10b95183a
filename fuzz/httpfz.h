/*
 * httpfz: the pieces the HTTP fuzz targets share: the body de-framer loop the proxy runs
 * (request.c's body_feed) with the de-framer's contract checked on every call, and the
 * transcript lines of a parsed request or response head.
 */
#ifndef LV_FUZZ_HTTPFZ_H
#define LV_FUZZ_HTTPFZ_H

#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "http/body.h"
#include "http/reqhead.h"
#include "http/resphead.h"

/* Where de-framed body bytes go: their count and a running hash. */
struct fz_sink {
    uint64_t n;
    uint64_t hash;
};

/** The proxy's de-framer loop over data[0..len): data spans go to `k`. Returns 1 when the
 *  message is complete, 0 when more input is needed, -1 on bad framing, -2 over the size
 *  limit; *used_total is what was consumed. Aborts when lv_body_next breaks its contract. */
int fz_body_feed(struct lv_body *b, const char *data, size_t len, size_t *used_total,
                 struct fz_sink *k);

/** Transcript line of lv_reqhead_parse's result `st` on the head `head[0..head_len)`; checks
 *  that every span lies inside the head (or is the static "/" path). */
void fz_log_reqhead(struct fz_log *l, int st, const struct lv_reqhead *h, const char *head,
                    size_t head_len);

/** The same for lv_resphead_parse. */
void fz_log_resphead(struct fz_log *l, int st, const struct lv_resphead *h, const char *head,
                     size_t head_len);

/** Checks a headscan DONE: the head ends with CRLFCRLF inside the bytes given. */
void fz_check_head_end(const char *data, size_t len, size_t head_len);

#endif
