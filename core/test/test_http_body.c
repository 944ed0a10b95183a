/*
 * body: Content-Length, chunked (README, "How levee proxies") and until-EOF de-framing, each
 * vector fed whole, split in two at every offset and byte by byte, with the same data,
 * result, reason and consumed byte count every time.
 */
#include <stdlib.h>

#include "http/body.h"
#include "t.h"

#define ALL ((size_t)-1) /* consumed: the whole input */

struct vec {
    const char *name;
    const char *bytes;
    size_t len;
    enum lv_body_mode mode;
    uint64_t cl;
    uint64_t max;
    enum lv_body_result want;
    const char *data; /* expected body bytes */
    size_t consumed;  /* expected wire bytes used (ALL = len) */
    const char *why;  /* reason substring */
};

#define CH(name, s, want, data, consumed, why)                                                     \
    {                                                                                              \
        name, s, sizeof(s) - 1, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED, want, data, consumed, why   \
    }
#define CHM(name, s, max, want, data, consumed, why)                                               \
    {                                                                                              \
        name, s, sizeof(s) - 1, LV_BODY_CHUNKED, 0, max, want, data, consumed, why                 \
    }
#define CL(name, s, cl, max, want, data, consumed)                                                 \
    {                                                                                              \
        name, s, sizeof(s) - 1, LV_BODY_LENGTH, cl, max, want, data, consumed, NULL                \
    }

static const struct vec vecs[] = {
    CL("CL exact", "abcde", 5, LV_BODY_UNLIMITED, LV_BODY_DONE, "abcde", ALL),
    CL("CL then pipelined request", "abcdeGET / HTTP/1.1\r\n", 5, 100, LV_BODY_DONE, "abcde", 5),
    CL("CL short", "abc", 5, LV_BODY_UNLIMITED, LV_BODY_MORE, "abc", ALL),
    CL("CL zero", "GET /", 0, LV_BODY_UNLIMITED, LV_BODY_DONE, "", 0),
    CL("CL at limit", "abcde", 5, 5, LV_BODY_DONE, "abcde", ALL),
    CL("CL over limit", "abcde", 5, 4, LV_BODY_TOO_LARGE, "", 0),
    CH("one chunk", "5\r\nabcde\r\n0\r\n\r\n", LV_BODY_DONE, "abcde", ALL, NULL),
    CH("chunks then next message", "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\nGET / HTTP/1.1\r\n",
       LV_BODY_DONE, "abcde", 20, NULL),
    CH("upper-case hex, leading zeros", "00A\r\n0123456789\r\n0000\r\n\r\n", LV_BODY_DONE,
       "0123456789", ALL, NULL),
    CH("empty body", "0\r\n\r\n", LV_BODY_DONE, "", ALL, NULL),
    CH("extensions", "5;a=b;c;d=\"x y\\\"z\"\r\nabcde\r\n0;last\r\n\r\n", LV_BODY_DONE, "abcde",
       ALL, NULL),
    CH("extension BWS", "5 ;a = b ;c\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 1,
       "invalid chunk size"),
    CH("extension BWS after ;", "5; a = b\t; c\r\nabcde\r\n0\r\n\r\n", LV_BODY_DONE, "abcde", ALL,
       NULL),
    CH("extension obs-text in quoted", "1;a=\"\xe9\"\r\nz\r\n0\r\n\r\n", LV_BODY_DONE, "z", ALL,
       NULL),
    CH("trailers dropped", "5\r\nabcde\r\n0\r\nX-T: v\r\nY:\r\n\r\n", LV_BODY_DONE, "abcde", ALL,
       NULL),
    CH("binary data", "4\r\n\r\n\x01\n\r\n0\r\n\r\n", LV_BODY_DONE, "\r\n\x01\n", ALL, NULL),
    CH("incomplete", "5\r\nabcde\r\n0\r\n", LV_BODY_MORE, "abcde", ALL, NULL),
    /* row 41 */
    CH("row 41 0x5", "0x5\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 1, "chunk size"),
    CH("row 41 +5", "+5\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 0, "chunk size"),
    CH("row 41 -5", "-5\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 0, "chunk size"),
    CH("row 41 leading space", " 5\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 0, "chunk size"),
    CH("row 41 empty size", "\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 0, "chunk size"),
    CH("row 41 0_5", "0_5\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 1, "chunk size"),
    CH("row 41 overflow", "10000000000000005\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 14,
       "too large"),
    CH("row 41 64-bit wrap", "FFFFFFFFFFFFFFFF5\r\n", LV_BODY_ERROR, "", 13, "too large"),
    /* row 42 */
    CH("row 42 size SP", "5 \r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 1, "chunk size"),
    CH("row 42 size TAB", "5\t\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 1, "chunk size"),
    /* row 43 */
    CH("row 43 bare LF size line", "5\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 1, "bare LF"),
    CH("row 43 CR X", "5\r\r;ABCD\r\n34\r\nE\r\n0\r\n\r\n", LV_BODY_ERROR, "", 2, "bare CR"),
    /* row 44, 45 */
    CH("row 44 data not followed by CRLF", "5\r\nabcdeXX0\r\n\r\n", LV_BODY_ERROR, "abcde", 8,
       "CRLF"),
    CH("row 45 data then bare LF", "5\r\nabcde\n0\r\n\r\n", LV_BODY_ERROR, "abcde", 8, "CRLF"),
    CH("data then CR X", "5\r\nabcde\rX0\r\n\r\n", LV_BODY_ERROR, "abcde", 9, "CRLF"),
    /* row 46 */
    CH("row 46 NUL in ext", "5;a\0\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 3, "extension"),
    CH("row 46 CR in ext", "5;a\rb\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 4, "bare CR"),
    CH("row 46 LF in ext", "5;a\nb\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 3, "bare LF"),
    CH("row 46 bare semicolon", "5;\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 2, "extension"),
    CH("row 46 LF in quoted ext", "5;a=\"x\ny\"\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 6,
       "bare LF"),
    CH("ext value missing", "5;a=\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 4, "extension"),
    CH("ext BWS before CRLF", "5;a \r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 4, "extension"),
    CH("ext DEL in quoted", "5;a=\"\x7f\"\r\nabcde\r\n0\r\n\r\n", LV_BODY_ERROR, "", 5, "control"),
    /* row 48 */
    CH("row 48 CL trailer", "0\r\nContent-Length: 50\r\n\r\n", LV_BODY_ERROR, "", 17, "framing"),
    CH("row 48 TE trailer", "0\r\ntransfer-encoding: chunked\r\n\r\n", LV_BODY_ERROR, "", 20,
       "framing"),
    CH("row 48 Host trailer", "0\r\nHOST: x\r\n\r\n", LV_BODY_ERROR, "", 7, "framing"),
    CH("trailer obs-fold", "0\r\nX: a\r\n b\r\n\r\n", LV_BODY_ERROR, "", 9, "obs-fold"),
    CH("trailer bare LF", "0\r\nX: a\nY: b\r\n\r\n", LV_BODY_ERROR, "", 7, "bare LF"),
    CH("trailer space before colon", "0\r\nX : a\r\n\r\n", LV_BODY_ERROR, "", 4, "whitespace"),
    CH("trailer NUL", "0\r\nX: \0\r\n\r\n", LV_BODY_ERROR, "", 6, "control"),
    CH("trailer empty name", "0\r\n: a\r\n\r\n", LV_BODY_ERROR, "", 3, "empty"),
    CH("final CRLF bare CR", "0\r\n\rX", LV_BODY_ERROR, "", 4, "bare CR"),
    CH("longer name is not a framing field", "0\r\nContent-Length-X: 1\r\n\r\n", LV_BODY_DONE, "",
       ALL, NULL),
    /* 413 */
    CHM("chunk over limit", "5\r\nabcde\r\n0\r\n\r\n", 4, LV_BODY_TOO_LARGE, "", 3, "limit"),
    CHM("second chunk over limit", "3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 5, LV_BODY_TOO_LARGE, "abc",
        11, "limit"),
    CHM("chunks at limit", "3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n", 5, LV_BODY_DONE, "abcde", ALL, NULL),
    {"EOF mode", "anything\r\n0\r\n", 13, LV_BODY_EOF, 0, LV_BODY_UNLIMITED, LV_BODY_MORE,
     "anything\r\n0\r\n", ALL, NULL},
    {"EOF over limit", "abcdef", 6, LV_BODY_EOF, 0, 3, LV_BODY_TOO_LARGE, "abc", 3, "limit"},
    {"no body", "GET /", 5, LV_BODY_NONE, 0, 0, LV_BODY_DONE, "", 0, NULL},
};

struct outcome {
    enum lv_body_result r;
    char data[256];
    size_t dlen;
    uint64_t wire;
    const char *reason;
};

/* Feed one piece the way a caller does: advance by *used, append DATA spans, stop on MORE. */
static bool feed(struct lv_body *b, const char *p, size_t n, struct outcome *o)
{
    for (;;) {
        size_t used = 0;
        struct lv_span sp;
        o->r = lv_body_next(b, p, n, &used, &sp);
        if (used > n)
            return false;
        if (o->r == LV_BODY_DATA) {
            if (sp.p < p || sp.p + sp.len != p + used || o->dlen + sp.len > sizeof(o->data))
                return false;
            memcpy(o->data + o->dlen, sp.p, sp.len);
            o->dlen += sp.len;
        }
        p += used;
        n -= used;
        if (o->r == LV_BODY_MORE)
            return n == 0;
        if (o->r != LV_BODY_DATA)
            return true;
    }
}

/* Feeds the pieces [0,k1) [k1,k2) ... at the given cut points. */
static struct outcome run(const struct vec *v, const char *buf, const size_t *cuts, size_t ncuts)
{
    struct outcome o;
    struct lv_body b;
    memset(&o, 0, sizeof(o));
    lv_body_init(&b, v->mode, v->cl, v->max);
    size_t at = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t to = i < ncuts ? cuts[i] : v->len;
        if (!feed(&b, buf + at, to - at, &o)) {
            o.r = (enum lv_body_result)99;
            return o;
        }
        at = to;
        if (o.r != LV_BODY_MORE)
            break;
    }
    o.wire = b.wire;
    o.reason = b.reason;
    return o;
}

static bool same(const struct outcome *a, const struct outcome *b)
{
    return a->r == b->r && a->dlen == b->dlen && memcmp(a->data, b->data, a->dlen) == 0 &&
           a->wire == b->wire && a->reason == b->reason;
}

T_TEST(vectors_whole_split_and_bytewise)
{
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        const struct vec *v = &vecs[i];
        char *buf = malloc(v->len ? v->len : 1);
        memcpy(buf, v->bytes, v->len);
        struct outcome whole = run(v, buf, NULL, 0);
        size_t want_used = v->consumed == ALL ? v->len : v->consumed;
        bool ok = whole.r == v->want && whole.dlen == strlen(v->data) &&
                  memcmp(whole.data, v->data, whole.dlen) == 0 && whole.wire == want_used &&
                  (!v->why || (whole.reason && strstr(whole.reason, v->why)));
        if (!ok)
            fprintf(stderr, "vector \"%s\": r=%d data=%zu wire=%llu reason=%s\n", v->name, whole.r,
                    whole.dlen, (unsigned long long)whole.wire, whole.reason ? whole.reason : "-");
        T_CHECK(ok);
        for (size_t k = 0; k <= v->len; k++) {
            struct outcome o = run(v, buf, &k, 1);
            if (!same(&o, &whole)) {
                fprintf(stderr, "vector \"%s\": split at %zu differs\n", v->name, k);
                T_CHECK(same(&o, &whole));
                break;
            }
        }
        size_t *cuts = malloc((v->len + 1) * sizeof(size_t));
        for (size_t k = 0; k < v->len; k++)
            cuts[k] = k + 1;
        struct outcome bb = run(v, buf, cuts, v->len ? v->len - 1 : 0);
        if (!same(&bb, &whole))
            fprintf(stderr, "vector \"%s\": byte by byte differs\n", v->name);
        T_CHECK(same(&bb, &whole));
        free(cuts);
        free(buf);
    }
}

T_TEST(row47_chunk_extension_caps)
{
    static char buf[LV_CHUNK_LINE_MAX + 64];
    struct lv_body b;
    size_t used;
    struct lv_span sp;
    /* One line just at the cap is fine, one byte more is not. */
    size_t n = 0;
    buf[n++] = '1';
    buf[n++] = ';';
    while (n < LV_CHUNK_LINE_MAX)
        buf[n++] = 'a';
    memcpy(buf + n, "\r\nz\r\n", 5);
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, buf, n + 5, &used, &sp), LV_BODY_DATA);
    T_CHECK_INT(sp.len, 1);
    buf[n] = 'a';
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, buf, n + 5, &used, &sp), LV_BODY_ERROR);
    T_CHECK_STR(b.reason, "chunk line too long");
    T_CHECK_INT(used, LV_CHUNK_LINE_MAX);

    /* Per message: 3000 extension bytes per chunk, six chunks cross 16 KiB. */
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    enum lv_body_result r = LV_BODY_MORE;
    int chunks = 0;
    for (; chunks < 10 && r != LV_BODY_ERROR; chunks++) {
        n = 0;
        buf[n++] = '1';
        buf[n++] = ';';
        while (n < 3000)
            buf[n++] = 'e';
        memcpy(buf + n, "\r\nz\r\n", 5);
        n += 5;
        size_t off = 0;
        do {
            r = lv_body_next(&b, buf + off, n - off, &used, &sp);
            off += used;
        } while (r == LV_BODY_DATA);
    }
    T_CHECK_INT(r, LV_BODY_ERROR);
    T_CHECK_INT(chunks, 6);
    T_CHECK_STR(b.reason, "too many chunk-extension bytes");
}

T_TEST(trailer_caps)
{
    static char buf[LV_TRAILER_MAX + 256];
    struct lv_body b;
    size_t used, n = 0;
    struct lv_span sp;
    memcpy(buf, "0\r\n", 3);
    n = 3;
    for (int i = 0; i < LV_TRAILER_FIELDS_MAX; i++)
        n += (size_t)snprintf(buf + n, 16, "T%d: v\r\n", i);
    memcpy(buf + n, "\r\n", 2);
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, buf, n + 2, &used, &sp), LV_BODY_DONE);
    T_CHECK_INT(used, n + 2);
    memcpy(buf + n, "X: 1\r\n\r\n", 8);
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, buf, n + 8, &used, &sp), LV_BODY_ERROR);
    T_CHECK_STR(b.reason, "too many trailer fields");

    n = 3;
    memcpy(buf + n, "Big: ", 5);
    n += 5;
    while (n < LV_TRAILER_MAX + 100)
        buf[n++] = 'v';
    memcpy(buf + n, "\r\n\r\n", 4);
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, buf, n + 4, &used, &sp), LV_BODY_ERROR);
    T_CHECK_STR(b.reason, "trailer section too large");
}

T_TEST(eof_and_truncation)
{
    struct lv_body b;
    size_t used;
    struct lv_span sp;
    lv_body_init(&b, LV_BODY_EOF, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, "abc", 3, &used, &sp), LV_BODY_DATA);
    T_CHECK(!lv_body_done(&b));
    T_CHECK_INT(lv_body_eof(&b), LV_BODY_DONE);
    T_CHECK(lv_body_done(&b));
    T_CHECK_INT(b.received, 3);

    /* R15: truncated Content-Length and chunked bodies are errors, never "complete". */
    lv_body_init(&b, LV_BODY_LENGTH, 10, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, "abc", 3, &used, &sp), LV_BODY_DATA);
    T_CHECK_INT(lv_body_eof(&b), LV_BODY_ERROR);
    T_CHECK_STR(b.reason, "connection closed before the body was complete");
    lv_body_init(&b, LV_BODY_CHUNKED, 0, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, "5\r\nab", 5, &used, &sp), LV_BODY_DATA);
    T_CHECK_INT(lv_body_eof(&b), LV_BODY_ERROR);

    /* A complete body stays complete at EOF, and DONE consumes nothing more. */
    lv_body_init(&b, LV_BODY_LENGTH, 2, LV_BODY_UNLIMITED);
    T_CHECK_INT(lv_body_next(&b, "abXY", 4, &used, &sp), LV_BODY_DATA);
    T_CHECK_INT(used, 2);
    T_CHECK_INT(lv_body_next(&b, "XY", 2, &used, &sp), LV_BODY_DONE);
    T_CHECK_INT(used, 0);
    T_CHECK_INT(lv_body_eof(&b), LV_BODY_DONE);
    T_CHECK_INT(b.wire, 2);
}

T_TEST(large_content_length_streams)
{
    /* 2^40 bytes announced, fed in 1 MiB slices: counters, not memory, track it. */
    struct lv_body b;
    size_t used;
    struct lv_span sp;
    static char slice[1 << 20];
    lv_body_init(&b, LV_BODY_LENGTH, (uint64_t)1 << 40, LV_BODY_UNLIMITED);
    for (int i = 0; i < 4; i++) {
        T_CHECK_INT(lv_body_next(&b, slice, sizeof(slice), &used, &sp), LV_BODY_DATA);
        T_CHECK_INT(used, sizeof(slice));
    }
    T_CHECK(b.remaining == ((uint64_t)1 << 40) - 4 * sizeof(slice));
}

int main(void)
{
    T_RUN(vectors_whole_split_and_bytewise);
    T_RUN(row47_chunk_extension_caps);
    T_RUN(trailer_caps);
    T_RUN(eof_and_truncation);
    T_RUN(large_content_length_streams);
    T_DONE();
}
