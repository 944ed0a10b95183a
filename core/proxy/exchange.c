#include "proxy/exchange.h"

#include <assert.h>
#include <string.h>

/* Most header fields we look at in one response head. */
#define MAX_FIELDS 256
/* Bytes that may pile up before a head is complete: the head limit plus one read's slack. */
#define MAX_PENDING (LV_EXCHANGE_MAX_HEAD + 65536)

static void scan_init(struct lv_exchange *ex)
{
    lv_headscan_init(&ex->hs, true, LV_EXCHANGE_MAX_HEAD, LV_EXCHANGE_MAX_HEAD, 1000);
}

void lv_exchange_start(struct lv_exchange *ex, bool head_request)
{
    ex->head.len = 0;
    scan_init(ex);
    ex->after_p = NULL;
    ex->after_n = 0;
    ex->reason = NULL;
    ex->head_request = head_request;
    ex->started = false;
    ex->until_eof = false;
    ex->reusable = false;
    ex->upgrade = false;
    ex->tail_p = NULL;
    ex->tail_n = 0;
}

void lv_exchange_dispose(struct lv_exchange *ex)
{
    lv_buf_dispose(&ex->head);
}

/* Body bytes; `clean` false when bytes followed the end of the message. */
static enum lv_exchange_rc feed_body(struct lv_exchange *ex, const char *data, size_t n,
                                     const struct lv_exchange_sink *sink, void *arg)
{
    size_t off = 0;
    for (;;) {
        size_t used = 0;
        struct lv_span span;
        enum lv_body_result res = lv_body_next(&ex->dec, data + off, n - off, &used, &span);
        off += used;
        switch (res) {
        case LV_BODY_DATA:
            sink->data(arg, span.p, span.len);
            continue;
        case LV_BODY_MORE:
            return LV_EXCHANGE_MORE;
        case LV_BODY_DONE:
            /* Bytes after a complete response were never asked for: never pool it. */
            if (off != n)
                ex->reusable = false;
            return LV_EXCHANGE_DONE;
        default:
            ex->reason = ex->dec.reason;
            return LV_EXCHANGE_BAD_BODY;
        }
    }
}

/* A complete head is at the start of ex->head (hs.head_len bytes); what followed it is in
 * after_p/after_n or in ex->head past the head. */
static enum lv_exchange_rc on_head(struct lv_exchange *ex, const struct lv_exchange_sink *sink,
                                   void *arg)
{
    struct lv_field fields[MAX_FIELDS];
    struct lv_resphead h;
    for (;;) {
        if (lv_resphead_parse(&h, ex->head.data, ex->hs.head_len, ex->head_request, fields,
                              MAX_FIELDS) != 0) {
            ex->reason = h.reason ? h.reason : "invalid response head";
            return LV_EXCHANGE_BAD_HEAD;
        }
        if (h.status == 101 && !ex->upgrade) {
            ex->reason = "unrequested 101 Switching Protocols";
            return LV_EXCHANGE_BAD_HEAD;
        }
        if (h.status >= 200 || h.status == 101)
            break;
        /* Interim response; the rest of the read becomes the next head's start. */
        sink->interim(arg, &h);
        lv_buf_consume(&ex->head, ex->hs.head_len);
        if (ex->after_n) {
            lv_buf_append(&ex->head, ex->after_p, ex->after_n);
            ex->after_n = 0;
        }
        scan_init(ex);
        if (ex->head.len == 0)
            return LV_EXCHANGE_MORE;
        enum lv_headscan_result res = lv_headscan_feed(&ex->hs, ex->head.data, ex->head.len);
        if (res == LV_HEADSCAN_MORE)
            return LV_EXCHANGE_MORE;
        if (res == LV_HEADSCAN_ERROR) {
            ex->reason = ex->hs.reason;
            return LV_EXCHANGE_BAD_HEAD;
        }
    }
    /* The bytes after the head: still in the read block, or in ex->head. */
    const char *rest = ex->head.data + ex->hs.head_len;
    size_t nrest = ex->head.len - ex->hs.head_len;
    if (ex->after_n) {
        rest = ex->after_p;
        nrest = ex->after_n;
    }
    ex->after_n = 0;
    ex->until_eof = h.body == LV_BODY_EOF;
    ex->reusable = h.reusable;
    if (!sink->head(arg, &h))
        return LV_EXCHANGE_LET_GO;
    ex->started = true;
    if (h.status == 101) { /* what follows is the other protocol's: the caller's */
        ex->reusable = false;
        ex->tail_p = rest;
        ex->tail_n = nrest;
        return LV_EXCHANGE_UPGRADE;
    }
    if (h.body == LV_BODY_NONE || (h.body == LV_BODY_LENGTH && h.content_length == 0)) {
        if (nrest)
            ex->reusable = false;
        return LV_EXCHANGE_DONE;
    }
    lv_body_init(&ex->dec, h.body, h.content_length, LV_BODY_UNLIMITED);
    if (nrest == 0)
        return LV_EXCHANGE_MORE;
    return feed_body(ex, rest, nrest, sink, arg);
}

enum lv_exchange_rc lv_exchange_feed(struct lv_exchange *ex, const char *data, size_t n,
                                     const struct lv_exchange_sink *sink, void *arg)
{
    if (n == 0)
        return LV_EXCHANGE_MORE;
    if (ex->started)
        return feed_body(ex, data, n, sink, arg);
    if (ex->head.len + n > MAX_PENDING) {
        ex->reason = "response head too large";
        return LV_EXCHANGE_BAD_HEAD;
    }
    enum lv_headscan_result res;
    if (ex->head.len == 0) {
        /* Scan in place and copy only the head. */
        res = lv_headscan_feed(&ex->hs, data, n);
        if (res == LV_HEADSCAN_DONE) {
            lv_buf_append(&ex->head, data, ex->hs.head_len);
            ex->after_p = data + ex->hs.head_len;
            ex->after_n = n - ex->hs.head_len;
        } else {
            lv_buf_append(&ex->head, data, n);
        }
    } else {
        lv_buf_append(&ex->head, data, n);
        res = lv_headscan_feed(&ex->hs, ex->head.data, ex->head.len);
    }
    if (res == LV_HEADSCAN_MORE)
        return LV_EXCHANGE_MORE;
    if (res == LV_HEADSCAN_ERROR) {
        ex->reason = ex->hs.reason;
        return LV_EXCHANGE_BAD_HEAD;
    }
    enum lv_exchange_rc rc = on_head(ex, sink, arg);
    ex->after_n = 0; /* it pointed into this read */
    return rc;
}

enum lv_exchange_rc lv_exchange_eof(struct lv_exchange *ex)
{
    assert(ex->started);
    if (ex->until_eof) {
        lv_body_eof(&ex->dec);
        ex->reusable = false;
        return LV_EXCHANGE_DONE;
    }
    ex->reason = "response truncated";
    return LV_EXCHANGE_BAD_BODY;
}
