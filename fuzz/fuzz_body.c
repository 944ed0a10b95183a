/*
 * fuzz_body: the body de-framer alone. The first bytes of the input choose the framing and
 * the limits, the rest is the byte stream after a head:
 *   byte 0    bits 0-1: mode (0 Content-Length, 1 chunked, 2 until EOF, 3 none);
 *             bit 2: no size limit; bit 3: a Content-Length beyond every limit
 *   bytes 1-2 size limit (little endian, unless bit 2)
 *   bytes 3-4 Content-Length (little endian, unless bit 3)
 * The stream is de-framed as one read, split into pieces at offsets derived from the input,
 * and (when short) one byte per read, the way request.c feeds it; the transcripts (result,
 * bytes used, body length and hash, reason, end-of-stream result) must be identical.
 */
#include <string.h>

#include "common.h"
#include "httpfz.h"

#define PREFIX 5

struct params {
    enum lv_body_mode mode;
    uint64_t max_body;
    uint64_t content_length;
};

static void run(struct fz_log *out, const struct params *pr, const uint8_t *data, size_t size,
                const struct fz_split *how)
{
    struct fz_log log = {0};
    struct lv_body b;
    struct fz_bytes in = {0};
    struct fz_sink sink = {0, FZ_HASH_INIT};
    size_t base = 0; /* stream offset of in.p[0] */
    int rc = 0;
    lv_body_init(&b, pr->mode, pr->content_length, pr->max_body);
    for (size_t k = 0; k < how->n && rc == 0; k++) {
        size_t off, len;
        fz_split_piece(how, k, &off, &len);
        if (len == 0)
            continue;
        fz_bytes_append(&in, data + off, len);
        size_t used = 0;
        rc = fz_body_feed(&b, in.p, in.len, &used, &sink);
        fz_bytes_consume(&in, used);
        base += used;
    }
    if (rc == 0 && size == 0) {
        /* No bytes at all: one call with an empty input, as after a head with nothing more. */
        size_t used = 0;
        rc = fz_body_feed(&b, "", 0, &used, &sink);
    }
    fz_logf(&log, "rc=%d end=%zu wire=%llu received=%llu n=%llu hash=%016llx reason=%s\n", rc, base,
            (unsigned long long)b.wire, (unsigned long long)b.received, (unsigned long long)sink.n,
            (unsigned long long)sink.hash, rc == 1 || !b.reason ? "-" : b.reason);
    if (b.received != sink.n)
        fz_fail("lv_body: received %llu, handed out %llu", (unsigned long long)b.received,
                (unsigned long long)sink.n);
    if (rc == 1 && pr->mode == LV_BODY_LENGTH && sink.n != pr->content_length)
        fz_fail("lv_body: Content-Length %llu complete after %llu bytes",
                (unsigned long long)pr->content_length, (unsigned long long)sink.n);
    if (rc == 1 && pr->mode == LV_BODY_EOF)
        fz_fail("lv_body: a body until EOF completed before the EOF");
    enum lv_body_result e = lv_body_eof(&b);
    fz_logf(&log, "eof=%d %s done=%d\n", (int)e, e == LV_BODY_DONE ? "-" : b.reason,
            lv_body_done(&b));
    if ((e == LV_BODY_DONE) != lv_body_done(&b))
        fz_fail("lv_body_eof: %d disagrees with lv_body_done", (int)e);
    if (rc == 1 && e != LV_BODY_DONE)
        fz_fail("lv_body_eof: a complete body became an error");
    fz_bytes_free(&in);
    *out = log;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < PREFIX)
        return -1; /* not an input: keep it out of the corpus */
    struct params pr;
    static const enum lv_body_mode modes[] = {LV_BODY_LENGTH, LV_BODY_CHUNKED, LV_BODY_EOF,
                                              LV_BODY_NONE};
    pr.mode = modes[data[0] & 3];
    pr.max_body = data[0] & 4 ? LV_BODY_UNLIMITED : (uint64_t)data[1] | (uint64_t)data[2] << 8;
    pr.content_length = data[0] & 8 ? LV_CONTENT_LENGTH_MAX + (data[3] & 1)
                                    : (uint64_t)data[3] | (uint64_t)data[4] << 8;
    data += PREFIX;
    size -= PREFIX;

    struct fz_split whole, split;
    struct fz_log a, b;
    fz_split_whole(&whole, size);
    run(&a, &pr, data, size, &whole);

    fz_split_random(&split, data, size, 2);
    run(&b, &pr, data, size, &split);
    fz_compare("fuzz_body", &a, &b, &split);
    fz_log_free(&b);

    if (size <= 1024) {
        fz_split_bytewise(&split, size);
        run(&b, &pr, data, size, &split);
        fz_compare("fuzz_body", &a, &b, &split);
        fz_log_free(&b);
    }
    fz_log_free(&a);
    return 0;
}
