/*
 * fuzz_response: the upstream side of one attempt, fed the input as the bytes an upstream
 * answers, through the proxy's own exchange (proxy/exchange.c): headscan in response mode
 * scanning a first read in place and later reads in the kept head buffer, lv_resphead_parse on
 * each complete head, interim 1xx heads passed on (the bytes after one start the next head),
 * then the body de-framer with the framing the final head reports, and the end of the stream.
 * Every input is run for a GET and for a HEAD request, each as one read, split into pieces at
 * offsets derived from the input, and (when short) one byte per read; the transcripts must be
 * identical. Each read is its own exact-size allocation, freed when the feed returns, so a
 * pointer the exchange kept into a read shows up under AddressSanitizer.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "httpfz.h"
#include "proxy/exchange.h"

struct attempt {
    struct fz_log log;
    struct lv_exchange ex;
    uint64_t body_n, body_hash;
    bool done;
};

static void on_interim(void *arg, const struct lv_resphead *h)
{
    struct attempt *a = arg;
    fz_logf(&a->log, "interim %d\n", h->status);
    fz_log_resphead(&a->log, 0, h, a->ex.head.data, a->ex.hs.head_len);
}

static bool on_head(void *arg, const struct lv_resphead *h)
{
    struct attempt *a = arg;
    fz_logf(&a->log, "final head\n");
    fz_log_resphead(&a->log, 0, h, a->ex.head.data, a->ex.hs.head_len);
    return true;
}

static void on_data(void *arg, const char *p, size_t n)
{
    struct attempt *a = arg;
    if (n == 0)
        fz_fail("exchange: empty data callback");
    a->body_n += n;
    a->body_hash = fz_hash(a->body_hash, p, n); /* reads every byte: the span must be valid */
}

static const struct lv_exchange_sink sink = {on_interim, on_head, on_data};

static void result(struct attempt *a, enum lv_exchange_rc rc, const char *when)
{
    if (rc == LV_EXCHANGE_MORE)
        return;
    a->done = true;
    /* Not `reusable`: bytes after a complete response poison the connection only when they
     * came in the same read (later ones find it in the pool), so it depends on the split. */
    fz_logf(&a->log, "%s: rc=%d body n=%llu hash=%016llx reason=%s\n", when, (int)rc,
            (unsigned long long)a->body_n, (unsigned long long)a->body_hash,
            rc == LV_EXCHANGE_DONE ? "-" : (a->ex.reason ? a->ex.reason : "(none)"));
    if ((rc == LV_EXCHANGE_BAD_HEAD || rc == LV_EXCHANGE_BAD_BODY) && !a->ex.reason)
        fz_fail("exchange: an error without a reason");
}

static void run(struct fz_log *out, bool head_request, const uint8_t *data,
                const struct fz_split *how)
{
    struct attempt a;
    memset(&a, 0, sizeof(a));
    a.body_hash = FZ_HASH_INIT;
    lv_exchange_start(&a.ex, head_request);
    for (size_t k = 0; k < how->n && !a.done; k++) {
        size_t off, len;
        fz_split_piece(how, k, &off, &len);
        if (len == 0)
            continue;
        char *read = fz_dup(data + off, len); /* the read buffer, exactly this read */
        result(&a, lv_exchange_feed(&a.ex, read, len, &sink, &a), "read");
        free(read);
    }
    if (!a.done) {
        if (a.ex.started)
            result(&a, lv_exchange_eof(&a.ex), "eof");
        else
            fz_logf(&a.log, "eof before a final head\n");
    }
    lv_exchange_dispose(&a.ex);
    *out = a.log;
}

static void check(bool head_request, const uint8_t *data, size_t size)
{
    struct fz_split whole, split;
    struct fz_log a, b;
    const char *name = head_request ? "fuzz_response (HEAD)" : "fuzz_response (GET)";
    fz_split_whole(&whole, size);
    run(&a, head_request, data, &whole);

    fz_split_random(&split, data, size, head_request ? 3 : 4);
    run(&b, head_request, data, &split);
    fz_compare(name, &a, &b, &split);
    fz_log_free(&b);

    if (size <= 512) {
        fz_split_bytewise(&split, size);
        run(&b, head_request, data, &split);
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
