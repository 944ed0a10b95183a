/*
 * exchange: one upstream response in, callbacks out. Every response here is fed whole, split
 * at every offset, and byte by byte; the events must be the same each time.
 */
#include <stdlib.h>

#include "proxy/exchange.h"
#include "t.h"

struct events {
    int interim[4];
    int ninterim;
    int status;   /* final head's status, 0 before */
    bool decline; /* the head callback lets the exchange go */
    char body[4096];
    size_t nbody;
};

static void on_interim(void *arg, const struct lv_resphead *h)
{
    struct events *e = arg;
    if (e->ninterim < 4)
        e->interim[e->ninterim] = h->status;
    e->ninterim++;
}

static bool on_head(void *arg, const struct lv_resphead *h)
{
    struct events *e = arg;
    e->status = h->status;
    return !e->decline;
}

static void on_data(void *arg, const char *p, size_t n)
{
    struct events *e = arg;
    if (e->nbody + n <= sizeof(e->body))
        memcpy(e->body + e->nbody, p, n);
    e->nbody += n;
}

static const struct lv_exchange_sink sink = {on_interim, on_head, on_data};

struct outcome {
    enum lv_exchange_rc rc;
    bool reusable;
    struct events ev;
};

/* Feeds `resp` in pieces cut at cuts[0..ncuts); each piece from its own heap block (freed
 * after the call, so a pointer kept past lv_exchange_feed shows up under ASan). `eof`: the
 * upstream closes after the last byte. */
static struct outcome run(const char *resp, size_t len, const size_t *cuts, size_t ncuts,
                          bool head_request, bool eof, bool decline)
{
    struct outcome o;
    memset(&o, 0, sizeof(o));
    o.ev.decline = decline;
    struct lv_exchange ex;
    memset(&ex, 0, sizeof(ex));
    lv_exchange_start(&ex, head_request);
    size_t at = 0;
    o.rc = LV_EXCHANGE_MORE;
    for (size_t i = 0; i <= ncuts && o.rc == LV_EXCHANGE_MORE; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        if (end <= at)
            continue;
        char *piece = malloc(end - at);
        memcpy(piece, resp + at, end - at);
        o.rc = lv_exchange_feed(&ex, piece, end - at, &sink, &o.ev);
        free(piece);
        at = end;
    }
    if (o.rc == LV_EXCHANGE_MORE && eof && ex.started)
        o.rc = lv_exchange_eof(&ex);
    o.reusable = ex.reusable;
    lv_exchange_dispose(&ex);
    return o;
}

static bool same(const struct outcome *a, const struct outcome *b)
{
    return a->rc == b->rc && a->reusable == b->reusable && a->ev.status == b->ev.status &&
           a->ev.ninterim == b->ev.ninterim && a->ev.nbody == b->ev.nbody &&
           memcmp(a->ev.body, b->ev.body, a->ev.nbody < sizeof(a->ev.body) ? a->ev.nbody : 0) == 0;
}

/* Whole, every two-piece split, and byte by byte: all give `want`. Returns the failures. */
static int splits_agree(const char *resp, bool head_request, bool eof, const struct outcome *want)
{
    size_t len = strlen(resp);
    int bad = 0;
    struct outcome whole = run(resp, len, NULL, 0, head_request, eof, false);
    if (!same(&whole, want))
        bad++;
    for (size_t k = 1; k < len; k++) {
        struct outcome o = run(resp, len, &k, 1, head_request, eof, false);
        if (!same(&o, want)) {
            fprintf(stderr, "  split at %zu: rc %d status %d body %zu reusable %d\n", k, o.rc,
                    o.ev.status, o.ev.nbody, o.reusable);
            bad++;
        }
    }
    size_t *cuts = malloc(len * sizeof(*cuts));
    for (size_t i = 0; i < len; i++)
        cuts[i] = i + 1;
    struct outcome bytes = run(resp, len, cuts, len, head_request, eof, false);
    free(cuts);
    if (!same(&bytes, want))
        bad++;
    return bad;
}

static struct outcome expect(enum lv_exchange_rc rc, bool reusable, int status, const char *body,
                             int ninterim)
{
    struct outcome o;
    memset(&o, 0, sizeof(o));
    o.rc = rc;
    o.reusable = reusable;
    o.ev.status = status;
    o.ev.ninterim = ninterim;
    o.ev.nbody = strlen(body);
    memcpy(o.ev.body, body, o.ev.nbody);
    return o;
}

T_TEST(content_length_body)
{
    struct outcome w = expect(LV_EXCHANGE_DONE, true, 200, "hello world", 0);
    T_CHECK_INT(
        splits_agree("HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world", false, false, &w),
        0);
}

T_TEST(chunked_body)
{
    struct outcome w = expect(LV_EXCHANGE_DONE, true, 201, "abcdefghij-xyz", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
                             "a\r\nabcdefghij\r\n4;ext=1\r\n-xyz\r\n0\r\nTrailer: t\r\n\r\n",
                             false, false, &w),
                0);
}

T_TEST(interim_heads_then_final)
{
    struct outcome w = expect(LV_EXCHANGE_DONE, true, 200, "ok", 2);
    T_CHECK_INT(splits_agree("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\n"
                             "Link: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
                             false, false, &w),
                0);
    const char *only = "HTTP/1.1 103 Early Hints\r\n\r\n";
    struct outcome o = run(only, strlen(only), NULL, 0, false, false, false);
    T_CHECK_INT(o.rc, LV_EXCHANGE_MORE);
    T_CHECK_INT(o.ev.ninterim, 1);
    T_CHECK_INT(o.ev.interim[0], 103);
    T_CHECK_INT(o.ev.status, 0);
}

T_TEST(no_body_statuses_and_head)
{
    struct outcome w = expect(LV_EXCHANGE_DONE, true, 204, "", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 204 No Content\r\nX: y\r\n\r\n", false, false, &w), 0);
    w = expect(LV_EXCHANGE_DONE, true, 200, "", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n", true, false, &w),
                0);
    w = expect(LV_EXCHANGE_DONE, true, 200, "", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, false, &w), 0);
}

T_TEST(body_until_close)
{
    struct outcome w = expect(LV_EXCHANGE_DONE, false, 200, "all of it", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 200 OK\r\n\r\nall of it", false, true, &w), 0);
}

T_TEST(bytes_after_the_response_poison_the_connection)
{
    /* Bytes after a complete response were never asked for: the response is delivered, but
     * the connection is not reused. Split anywhere the extra bytes arrive with the end. */
    const char *resp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokEXTRA";
    struct outcome o = run(resp, strlen(resp), NULL, 0, false, false, false);
    T_CHECK_INT(o.rc, LV_EXCHANGE_DONE);
    T_CHECK(!o.reusable);
    T_CHECK_INT(o.ev.nbody, 2);
    const char *nobody = "HTTP/1.1 204 No Content\r\n\r\nJUNK";
    o = run(nobody, strlen(nobody), NULL, 0, false, false, false);
    T_CHECK_INT(o.rc, LV_EXCHANGE_DONE);
    T_CHECK(!o.reusable);
}

T_TEST(bad_heads)
{
    static const char *const bad[] = {
        "HTTP/1.1 2000 OK\r\n\r\n",
        "garbage\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
        "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        "HTTP/1.1 200 OK\nbare: lf\r\n\r\n",
        "HTTP/1.1 103 Early\r\n\r\nHTTP/1.1 20x OK\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct outcome w = expect(LV_EXCHANGE_BAD_HEAD, false, 0, "", i == 6 ? 1 : 0);
        int fails = splits_agree(bad[i], false, false, &w);
        if (fails)
            fprintf(stderr, "  case %zu\n", i);
        T_CHECK_INT(fails, 0);
    }
}

T_TEST(head_too_large)
{
    size_t n = LV_EXCHANGE_MAX_HEAD + 70000;
    char *big = malloc(n);
    memcpy(big, "HTTP/1.1 200 OK\r\nX: ", 20);
    memset(big + 20, 'a', n - 20);
    struct outcome o = run(big, n, NULL, 0, false, false, false);
    T_CHECK_INT(o.rc, LV_EXCHANGE_BAD_HEAD);
    size_t cuts[] = {1000, 40000, 66000};
    o = run(big, n, cuts, 3, false, false, false);
    T_CHECK_INT(o.rc, LV_EXCHANGE_BAD_HEAD);
    free(big);
}

T_TEST(broken_bodies)
{
    /* After the head: bad chunk framing is BAD_BODY with the head already delivered. */
    struct outcome w = expect(LV_EXCHANGE_BAD_BODY, true, 200, "abc", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcXX",
                             false, false, &w),
                0);
    /* The upstream closes before Content-Length bytes came: truncated. */
    w = expect(LV_EXCHANGE_BAD_BODY, true, 200, "ab", 0);
    T_CHECK_INT(splits_agree("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab", false, true, &w), 0);
    w = expect(LV_EXCHANGE_BAD_BODY, true, 200, "", 0);
    T_CHECK_INT(
        splits_agree("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, true, &w), 0);
}

T_TEST(declined_head_takes_no_body)
{
    const char *resp = "HTTP/1.1 503 Busy\r\nContent-Length: 4\r\n\r\nbusy";
    size_t len = strlen(resp);
    for (size_t k = 1; k <= len; k++) {
        struct outcome o = run(resp, len, &k, 1, false, false, true);
        T_CHECK_INT(o.rc, LV_EXCHANGE_LET_GO);
        T_CHECK_INT(o.ev.status, 503);
        T_CHECK_INT(o.ev.nbody, 0);
    }
}

T_TEST(start_resets_for_the_next_attempt)
{
    struct lv_exchange ex;
    memset(&ex, 0, sizeof(ex));
    struct events ev;
    memset(&ev, 0, sizeof(ev));
    lv_exchange_start(&ex, false);
    const char *part = "HTTP/1.1 200 OK\r\nContent-Le";
    T_CHECK_INT(lv_exchange_feed(&ex, part, strlen(part), &sink, &ev), LV_EXCHANGE_MORE);
    T_CHECK(ex.head.len > 0);
    lv_exchange_start(&ex, false); /* the attempt failed; a new one starts */
    T_CHECK_INT(ex.head.len, 0);
    T_CHECK(!ex.started);
    const char *resp = "HTTP/1.1 404 Not Found\r\nContent-Length: 1\r\n\r\nx";
    T_CHECK_INT(lv_exchange_feed(&ex, resp, strlen(resp), &sink, &ev), LV_EXCHANGE_DONE);
    T_CHECK_INT(ev.status, 404);
    T_CHECK(ex.reusable);
    lv_exchange_dispose(&ex);
}

int main(void)
{
    T_RUN(content_length_body);
    T_RUN(chunked_body);
    T_RUN(interim_heads_then_final);
    T_RUN(no_body_statuses_and_head);
    T_RUN(body_until_close);
    T_RUN(bytes_after_the_response_poison_the_connection);
    T_RUN(bad_heads);
    T_RUN(head_too_large);
    T_RUN(broken_bodies);
    T_RUN(declined_head_takes_no_body);
    T_RUN(start_resets_for_the_next_attempt);
    T_DONE();
}
