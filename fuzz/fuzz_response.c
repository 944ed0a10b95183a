/*
 * fuzz_response: the upstream side of one attempt, fed the input as the bytes an upstream
 * answers. It drives the parsers the way request.c does (on_up_read, on_response_head,
 * feed_resp_body): headscan in response mode (64 KiB head, 1000 fields) scanning a first read
 * in place and later reads in the kept head buffer, lv_resphead_parse on each complete head,
 * interim 1xx heads skipped (the bytes after one start the next head), then the body
 * de-framer with the framing the final head reports, and the end of the stream. Every input
 * is run for a GET and for a HEAD request, each as one read, split into pieces at offsets
 * derived from the input, and (when short) one byte per read; the transcripts must be
 * identical.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "http/headscan.h"
#include "httpfz.h"

/* request.c's limits for response heads. */
#define MAX_RESP_HEAD   (64 * 1024)
#define MAX_RESP_FIELDS 1000
#define MAX_FIELDS      256

enum up_state { U_HEAD, U_BODY, U_DONE };

struct attempt {
    struct fz_log log;
    bool head_request;
    enum up_state state;
    struct lv_headscan rhs;
    struct fz_bytes rhead; /* head bytes kept between reads */
    size_t rhead_base;     /* stream offset of rhead.p[0] */
    const char *after_p;   /* bytes after the head in the current read */
    size_t after_n;
    size_t after_base;
    struct lv_body dec;
    struct fz_sink sink;
    bool until_eof;
    unsigned interim;
};

static void attempt_failed(struct attempt *a, const char *why)
{
    fz_logf(&a->log, "attempt failed: %s\n", why);
    a->state = U_DONE;
}

static void response_complete(struct attempt *a, size_t end)
{
    fz_logf(&a->log, "response complete end=%zu n=%llu hash=%016llx\n", end,
            (unsigned long long)a->sink.n, (unsigned long long)a->sink.hash);
    a->state = U_DONE;
}

/* feed_resp_body: `base` is the stream offset of data[0]. */
static void feed_resp_body(struct attempt *a, const char *data, size_t n, size_t base)
{
    if (n == 0)
        return;
    size_t used = 0;
    int rc = fz_body_feed(&a->dec, data, n, &used, &a->sink);
    if (rc < 0) {
        fz_logf(&a->log, "broken body at %zu rc=%d n=%llu: %s\n", base + used, rc,
                (unsigned long long)a->sink.n, a->dec.reason);
        a->state = U_DONE;
        return;
    }
    if (rc == 1)
        response_complete(a, base + used);
}

/* A scan of the kept head buffer returned `res`: 0 to go on with a complete head. */
static int scan_result(struct attempt *a, enum lv_headscan_result res)
{
    if (res == LV_HEADSCAN_MORE)
        return 1;
    if (res == LV_HEADSCAN_ERROR) {
        if (a->rhs.status != 502 || !a->rhs.reason)
            fz_fail("headscan: response error %d (%s)", a->rhs.status,
                    a->rhs.reason ? a->rhs.reason : "none");
        fz_logf(&a->log, "headscan error at %zu: %s\n", a->rhead_base + a->rhs.pos, a->rhs.reason);
        attempt_failed(a, "invalid response");
        return 1;
    }
    return 0;
}

static void on_response_head(struct attempt *a)
{
    struct lv_field fields[MAX_FIELDS];
    struct lv_resphead h;
    for (;;) {
        size_t head_len = a->rhs.head_len;
        fz_check_head_end(a->rhead.p, a->rhead.len, head_len);
        char *head = fz_dup(a->rhead.p, head_len);
        int st = lv_resphead_parse(&h, head, head_len, a->head_request, fields, MAX_FIELDS);
        fz_logf(&a->log, "head end=%zu scanned_fields=%u\n", a->rhead_base + head_len,
                a->rhs.fields);
        fz_log_resphead(&a->log, st, &h, head, head_len);
        free(head);
        if (st != 0) {
            attempt_failed(a, "invalid response head");
            return;
        }
        if (h.status == 101) {
            attempt_failed(a, "unrequested 101");
            return;
        }
        if (h.status < 200) {
            a->interim++;
            fz_bytes_consume(&a->rhead, head_len);
            a->rhead_base += head_len;
            if (a->after_n) {
                if (a->rhead.len)
                    fz_fail("response: bytes both kept and after the head");
                fz_bytes_append(&a->rhead, a->after_p, a->after_n);
                a->after_n = 0;
            }
            lv_headscan_init(&a->rhs, true, MAX_RESP_HEAD, MAX_RESP_HEAD, MAX_RESP_FIELDS);
            if (a->rhead.len == 0)
                return;
            if (scan_result(a, lv_headscan_feed(&a->rhs, a->rhead.p, a->rhead.len)))
                return;
            continue;
        }
        break;
    }
    /* A final head. */
    const char *rest = a->rhead.p + a->rhs.head_len;
    size_t nrest = a->rhead.len - a->rhs.head_len;
    size_t rest_base = a->rhead_base + a->rhs.head_len;
    if (a->after_n) {
        rest = a->after_p;
        nrest = a->after_n;
        rest_base = a->after_base;
        a->after_n = 0;
    }
    if (h.body == LV_BODY_NONE) {
        response_complete(a, rest_base);
        return;
    }
    a->until_eof = h.body == LV_BODY_EOF;
    a->state = U_BODY;
    a->sink = (struct fz_sink){0, FZ_HASH_INIT};
    lv_body_init(&a->dec, h.body, h.content_length, LV_BODY_UNLIMITED);
    if (h.body == LV_BODY_LENGTH && h.content_length == 0) {
        response_complete(a, rest_base);
        return;
    }
    feed_resp_body(a, rest, nrest, rest_base);
}

/* on_up_read with nread > 0: `read` holds exactly this read's bytes. */
static void on_up_read(struct attempt *a, const char *read, size_t n, size_t base)
{
    if (a->state == U_DONE)
        return;
    if (a->state == U_BODY) {
        feed_resp_body(a, read, n, base);
        return;
    }
    enum lv_headscan_result res;
    if (a->rhead.len == 0) {
        a->rhead_base = base;
        res = lv_headscan_feed(&a->rhs, read, n);
        if (res == LV_HEADSCAN_DONE) {
            fz_check_head_end(read, n, a->rhs.head_len);
            fz_bytes_append(&a->rhead, read, a->rhs.head_len);
            a->after_p = read + a->rhs.head_len;
            a->after_n = n - a->rhs.head_len;
            a->after_base = base + a->rhs.head_len;
        } else {
            fz_bytes_append(&a->rhead, read, n);
        }
    } else {
        fz_bytes_append(&a->rhead, read, n);
        res = lv_headscan_feed(&a->rhs, a->rhead.p, a->rhead.len);
    }
    if (scan_result(a, res))
        return;
    on_response_head(a);
    a->after_n = 0;
}

static void on_up_eof(struct attempt *a)
{
    switch (a->state) {
    case U_HEAD:
        attempt_failed(a, "upstream closed the connection");
        break;
    case U_BODY:
        if (a->until_eof) {
            enum lv_body_result r = lv_body_eof(&a->dec);
            if (r != LV_BODY_DONE)
                fz_fail("lv_body_eof: a body until EOF did not complete (%s)", a->dec.reason);
            fz_logf(&a->log, "response complete at eof n=%llu hash=%016llx\n",
                    (unsigned long long)a->sink.n, (unsigned long long)a->sink.hash);
        } else {
            enum lv_body_result r = lv_body_eof(&a->dec);
            fz_logf(&a->log, "response truncated n=%llu: %d %s\n", (unsigned long long)a->sink.n,
                    (int)r, a->dec.reason);
        }
        a->state = U_DONE;
        break;
    case U_DONE:
        break;
    }
}

static void run(struct fz_log *out, bool head_request, const uint8_t *data, size_t size,
                const struct fz_split *how)
{
    struct attempt a;
    memset(&a, 0, sizeof(a));
    a.head_request = head_request;
    a.state = U_HEAD;
    lv_headscan_init(&a.rhs, true, MAX_RESP_HEAD, MAX_RESP_HEAD, MAX_RESP_FIELDS);
    for (size_t k = 0; k < how->n && a.state != U_DONE; k++) {
        size_t off, len;
        fz_split_piece(how, k, &off, &len);
        if (len == 0)
            continue;
        char *read = fz_dup(data + off, len); /* the read buffer, exactly this read */
        on_up_read(&a, read, len, off);
        free(read);
    }
    on_up_eof(&a);
    fz_bytes_free(&a.rhead);
    *out = a.log;
}

static void check(bool head_request, const uint8_t *data, size_t size)
{
    struct fz_split whole, split;
    struct fz_log a, b;
    const char *name = head_request ? "fuzz_response (HEAD)" : "fuzz_response (GET)";
    fz_split_whole(&whole, size);
    run(&a, head_request, data, size, &whole);

    fz_split_random(&split, data, size, head_request ? 3 : 4);
    run(&b, head_request, data, size, &split);
    fz_compare(name, &a, &b, &split);
    fz_log_free(&b);

    if (size <= 512) {
        fz_split_bytewise(&split, size);
        run(&b, head_request, data, size, &split);
        fz_compare(name, &a, &b, &split);
        fz_log_free(&b);
    }
    fz_log_free(&a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check(false, data, size);
    check(true, data, size);
    return 0;
}
