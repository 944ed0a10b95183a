/*
 * headscan: table of request and response heads (README, "How levee proxies"): the rows the
 * pre-validator owns, §3b R10-R13), each fed whole, split in two at every offset, and byte by byte;
 * all three must give the same result, status, reason and head length.
 */
#include <stdlib.h>

#include "http/headscan.h"
#include "t.h"

#define MORE (-1) /* expected: head not complete yet */
#define DONE 0

struct vec {
    const char *name;
    const char *bytes;
    size_t len;
    bool response;
    int want;           /* DONE, MORE or the error status */
    const char *reason; /* substring of s.reason, or NULL */
    size_t max_head, max_line;
    uint32_t max_fields;
};

#define H "GET / HTTP/1.1\r\nHost: a\r\n"
#define P "POST / HTTP/1.1\r\nHost: a\r\n"
#define RQ(name, s, want, why)                                                                     \
    {                                                                                              \
        name, s, sizeof(s) - 1, false, want, why, 0, 0, 0                                          \
    }
#define RS(name, s, want, why)                                                                     \
    {                                                                                              \
        name, s, sizeof(s) - 1, true, want, why, 0, 0, 0                                           \
    }
#define LIM(name, s, want, why, mh, ml, mf)                                                        \
    {                                                                                              \
        name, s, sizeof(s) - 1, false, want, why, mh, ml, mf                                       \
    }

static const struct vec vecs[] = {
    /* well-formed requests */
    RQ("simple", H "\r\n", DONE, NULL),
    RQ("http/1.0 without host", "GET / HTTP/1.0\r\n\r\n", DONE, NULL),
    RQ("leading empty lines skipped", "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("options asterisk", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("absolute-form", "GET http://a.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("absolute-form https any case", "GET HTTPS://a/ HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("connect authority-form", "CONNECT a.example:443 HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("lower-case method is a token", "get / HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("PRI with HTTP/1.1 left to reqhead", "PRI / HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("row 22 obs-text value",
       P "X: a\xff"
         "b\r\n\r\n",
       DONE, NULL),
    RQ("empty value", H "X:\r\n\r\n", DONE, NULL),
    RQ("htab and trailing space in value", H "X: a\tb \r\n\r\n", DONE, NULL),
    RQ("underscore in other names", H "X-Y_Z: 1\r\nContent_Type: x\r\n\r\n", DONE, NULL),
    RQ("query and pct", "GET /a?b=c&d=%20 HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("row 6 CL leading zeros", P "Content-Length: 005\r\n\r\n", DONE, NULL),
    RQ("row 12 TE htab", P "Transfer-Encoding:\tchunked\r\n\r\n", DONE, NULL),
    RQ("missing host is reqhead's", "GET / HTTP/1.1\r\n\r\n", DONE, NULL),
    RQ("every tchar in a name", H "!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n", DONE, NULL),
    RQ("quotes in value", H "X: \"q\\\"\"\r\n\r\n", DONE, NULL),
    RQ("incomplete head", H "X: y\r\n", MORE, NULL),
    RQ("incomplete request line", "GET /abc HTT", MORE, NULL),
    /* header section (rows 14-27) */
    RQ("row 14 obs-fold CL", P "Foo: bar\r\n Content-Length: 38\r\n\r\n", 400, "obs-fold"),
    RQ("row 15 obs-fold TE", P "Transfer-Encoding:\r\n chunked\r\n\r\n", 400, "obs-fold"),
    RQ("obs-fold with htab", H "X: a\r\n\tb\r\n\r\n", 400, "obs-fold"),
    RQ("row 16 bare CR ends a header", P "X-Abc: \rxTransfer-Encoding: chunked\r\n\r\n", 400,
       "bare CR"),
    RQ("row 17 head ends CRLF CR X", H "\rZGET /evil: HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare CR"),
    RQ("row 18 bare CR mid-value", H "X: a\rb\r\n\r\n", 400, "bare CR"),
    RQ("row 19 bare LF after request line", "GET / HTTP/1.1\nHost: a\r\n\r\n", 400, "bare LF"),
    RQ("row 19 bare LF ends head", H "\n", 400, "bare LF"),
    RQ("row 19 bare LF between fields", H "X: b\nY: c\r\n\r\n", 400, "bare LF"),
    RQ("row 20 NUL in value", H "X: a\0b\r\n\r\n", 400, "control"),
    RQ("row 20 NUL in host", "GET / HTTP/1.1\r\nHost: a\0\r\n\r\n", 400, "control"),
    RQ("row 21 SOH in value",
       H "X: a\x01"
         "b\r\n\r\n",
       400, "control"),
    RQ("row 21 DEL in value",
       H "X: a\x7f"
         "b\r\n\r\n",
       400, "control"),
    RQ("row 21 VT in TE",
       P "Transfer-Encoding: \x0b"
         "chunked\r\n\r\n",
       400, "control"),
    RQ("row 23 space in name", H "X Y: b\r\n\r\n", 400, "whitespace before colon"),
    RQ("row 23 @ in name", H "X@Y: b\r\n\r\n", 400, "field name"),
    RQ("row 23 NUL in name", H "X\0Y: b\r\n\r\n", 400, "field name"),
    RQ("row 23 nbsp before colon", P "Transfer-Encoding\xa0: chunked\r\n\r\n", 400, "field name"),
    RQ("row 7 space before colon", P "Transfer-Encoding : chunked\r\n\r\n", 400, "whitespace"),
    RQ("row 7 tab before colon", P "Content-Length\t: 5\r\n\r\n", 400, "whitespace"),
    RQ("row 24 empty name", H ": b\r\n\r\n", 400, "empty field name"),
    RQ("row 25 no colon", H "Foo\r\n\r\n", 400, "without colon"),
    RQ("row 26 Content_Length", P "Content_Length: 5\r\n\r\n", 400, "underscore"),
    RQ("row 26 Transfer_Encoding", P "Transfer_Encoding: chunked\r\n\r\n", 400, "underscore"),
    RQ("row 26 Host_", H "Host_: b\r\n\r\n", 400, "underscore"),
    RQ("row 26 lower-case content_length", P "content_length: 5\r\n\r\n", 400, "underscore"),
    RQ("row 26 _host", H "_host: b\r\n\r\n", 400, "underscore"),
    RQ("row 27 space before first header", "GET / HTTP/1.1\r\n Host: a\r\n\r\n", 400, "obs-fold"),
    /* request line (rows 28-36, 53) */
    RQ("row 28 double SP", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed request line"),
    RQ("row 28 trailing SP", "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", 400, "malformed"),
    RQ("row 28 tab after method", "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed"),
    RQ("row 28 LF after method", "GET\n/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "bare LF"),
    RQ("leading space", " GET / HTTP/1.1\r\n\r\n", 400, "malformed"),
    RQ("leading bare LF", "\nGET / HTTP/1.1\r\n\r\n", 400, "bare LF"),
    RQ("method not a token", "GE(T / HTTP/1.1\r\n\r\n", 400, "malformed"),
    RQ("row 29 space in target", "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n", 400, "malformed"),
    RQ("row 29 NUL in target", "GET /\0 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target"),
    RQ("row 29 SOH in target", "GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target"),
    RQ("row 29 DEL in target", "GET /\x7f HTTP/1.1\r\nHost: a\r\n\r\n", 400, "request target"),
    RQ("row 30 non-ASCII target", "GET /a\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", 400, "target"),
    RQ("row 31 fragment", "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n", 400, "fragment"),
    RQ("row 33 authority-form on GET", "GET good.example:80 HTTP/1.1\r\nHost: a\r\n\r\n", 400,
       "origin-form"),
    RQ("row 33 asterisk on GET", "GET * HTTP/1.1\r\nHost: a\r\n\r\n", 400, "asterisk"),
    RQ("row 33 OPTIONS */test", "OPTIONS */test HTTP/1.1\r\nHost: a\r\n\r\n", 400, "origin-form"),
    RQ("other scheme", "GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n", 400, "origin-form"),
    RQ("scheme without authority", "GET http:// HTTP/1.1\r\nHost: a\r\n\r\n", 400, "origin-form"),
    RQ("row 36 HTTP/1.2 is 1.1", "GET / HTTP/1.2\r\nHost: a\r\n\r\n", DONE, NULL),
    RQ("HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, "unsupported"),
    RQ("row 36 HTTP/3.0", "GET / HTTP/3.0\r\nHost: a\r\n\r\n", 505, "unsupported"),
    RQ("row 36 HTTP/1.10", "GET / HTTP/1.10\r\nHost: a\r\n\r\n", 400, "version"),
    RQ("row 36 HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", 505, "HTTP/2.0"),
    RQ("row 36 lower-case http", "GET / http/1.1\r\nHost: a\r\n\r\n", 400, "version"),
    RQ("row 36 HTTP/0.9", "GET /\r\n\r\n", 400, "HTTP/0.9"),
    RQ("version with suffix", "GET / HTTP/1.1x\r\nHost: a\r\n\r\n", 400, "version"),
    RQ("empty version", "GET / \r\nHost: a\r\n\r\n", 400, "version"),
    RQ("row 53 h2 preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505, "HTTP/2.0"),
    RQ("bare CR in request line", "GET / HTTP/1.1\rHost: a\r\n\r\n", 400, "bare CR"),
    /* limits (row 49) */
    LIM("row 49 request line too long", "GET /aaaaaaaaaaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\n\r\n", 414,
        "too long", 4096, 16, 8),
    LIM("request line at the limit", "GET /abcdefgh HTTP/1.1\r\n\r\n", DONE, NULL, 4096, 22, 8),
    LIM("request line one over", "GET /abcdefgh HTTP/1.1\r\n\r\n", 414, "too long", 4096, 21, 8),
    LIM("head at the limit", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", DONE, NULL, 27, 1024, 8),
    LIM("head one over", "GET / HTTP/1.1\r\nHost: a\r\n\r\n", 431, "too large", 26, 1024, 8),
    LIM("huge value", "GET / HTTP/1.1\r\nX: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        431, "too large", 40, 1024, 8),
    LIM("fields at the limit", H "X: 1\r\n\r\n", DONE, NULL, 4096, 1024, 2),
    LIM("fields one over", H "X: 1\r\nY: 2\r\n\r\n", 431, "too many", 4096, 1024, 2),
    /* responses (R10-R13) */
    RS("response", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", DONE, NULL),
    RS("response 1.0", "HTTP/1.0 204 No Content\r\n\r\n", DONE, NULL),
    RS("response without reason", "HTTP/1.1 200\r\n\r\n", DONE, NULL),
    RS("response empty reason", "HTTP/1.1 200 \r\n\r\n", DONE, NULL),
    RS("response reason obs-text", "HTTP/1.1 404 Not\tFound \xe9\r\n\r\n", DONE, NULL),
    RS("response 599", "HTTP/1.1 599 X\r\n\r\n", DONE, NULL),
    RS("R10 bare CR in status line", "HTTP/1.1 200 OK\rX: y\r\n\r\n", 502, "bare CR"),
    RS("R10 bare LF in status line", "HTTP/1.1 200 OK\nX: y\r\n\r\n", 502, "bare LF"),
    RS("R10 2-digit status", "HTTP/1.1 20 OK\r\n\r\n", 502, "3 digits"),
    RS("R10 4-digit status", "HTTP/1.1 2000 OK\r\n\r\n", 502, "3 digits"),
    RS("R10 garbage", "SSH-2.0-OpenSSH_8.9\r\n", 502, "status line"),
    RS("status 099", "HTTP/1.1 099 X\r\n\r\n", 502, "range"),
    RS("status 600", "HTTP/1.1 600 X\r\n\r\n", 502, "range"),
    RS("HTTP/2 status line", "HTTP/2 200\r\n\r\n", 502, "status line"),
    RS("HTTP/1.2 status line is 1.1", "HTTP/1.2 200 OK\r\n\r\n", DONE, NULL),
    RS("lower-case http", "http/1.1 200 OK\r\n\r\n", 502, "status line"),
    RS("CTL in reason", "HTTP/1.1 200 O\x01K\r\n\r\n", 502, "reason"),
    RS("R11 obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", 502, "obs-fold"),
    RS("R12 NUL in value", "HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n", 502, "control"),
    RS("R12 CR in value", "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", 502, "bare CR"),
    RS("R13 space before colon", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\n", 502,
       "whitespace"),
    RS("response underscore twin", "HTTP/1.1 200 OK\r\nContent_Length: 5\r\n\r\n", 502,
       "underscore"),
    RS("incomplete response", "HTTP/1.1 200 OK\r\nX: 1\r\n\r", MORE, NULL),
};

struct outcome {
    int r; /* DONE, MORE or status */
    const char *reason;
    size_t head_len, start;
};

static void init(struct lv_headscan *s, const struct vec *v)
{
    lv_headscan_init(s, v->response, v->max_head ? v->max_head : 8192,
                     v->max_line ? v->max_line : 1024, v->max_fields ? v->max_fields : 20);
}

static struct outcome finish(const struct lv_headscan *s, enum lv_headscan_result r)
{
    struct outcome o = {MORE, NULL, 0, 0};
    if (r == LV_HEADSCAN_DONE) {
        o.r = DONE;
        o.head_len = s->head_len;
        o.start = s->start;
    } else if (r == LV_HEADSCAN_ERROR) {
        o.r = s->status;
        o.reason = s->reason;
    }
    return o;
}

static struct outcome run_split(const struct vec *v, const char *buf, size_t len, size_t k)
{
    struct lv_headscan s;
    init(&s, v);
    enum lv_headscan_result r = lv_headscan_feed(&s, buf, k);
    if (r == LV_HEADSCAN_MORE)
        r = lv_headscan_feed(&s, buf, len);
    return finish(&s, r);
}

static struct outcome run_bytes(const struct vec *v, const char *buf, size_t len)
{
    struct lv_headscan s;
    enum lv_headscan_result r = LV_HEADSCAN_MORE;
    init(&s, v);
    for (size_t n = 1; n <= len && r == LV_HEADSCAN_MORE; n++)
        r = lv_headscan_feed(&s, buf, n);
    return finish(&s, r);
}

static bool same(struct outcome a, struct outcome b)
{
    return a.r == b.r && a.reason == b.reason && a.head_len == b.head_len && a.start == b.start;
}

T_TEST(vectors_whole_split_and_bytewise)
{
    for (size_t i = 0; i < sizeof(vecs) / sizeof(vecs[0]); i++) {
        const struct vec *v = &vecs[i];
        /* Copy to an exact-size heap buffer so ASan catches any read past len. */
        char *buf = malloc(v->len ? v->len : 1);
        memcpy(buf, v->bytes, v->len);
        struct outcome whole = run_split(v, buf, v->len, v->len);
        if (whole.r != v->want)
            fprintf(stderr, "vector \"%s\": got %d (%s), want %d\n", v->name, whole.r,
                    whole.reason ? whole.reason : "-", v->want);
        T_CHECK_INT(whole.r, v->want);
        if (v->want == DONE)
            T_CHECK_INT(whole.head_len, v->len);
        if (v->reason) {
            T_CHECK(whole.reason != NULL && strstr(whole.reason, v->reason) != NULL);
            if (!whole.reason || !strstr(whole.reason, v->reason))
                fprintf(stderr, "vector \"%s\": reason \"%s\", want \"%s\"\n", v->name,
                        whole.reason ? whole.reason : "-", v->reason);
        }
        for (size_t k = 0; k <= v->len; k++) {
            struct outcome o = run_split(v, buf, v->len, k);
            if (!same(o, whole)) {
                fprintf(stderr, "vector \"%s\": split at %zu differs\n", v->name, k);
                T_CHECK(same(o, whole));
                break;
            }
        }
        struct outcome b = run_bytes(v, buf, v->len);
        if (!same(b, whole))
            fprintf(stderr, "vector \"%s\": byte by byte differs\n", v->name);
        T_CHECK(same(b, whole));
        free(buf);
    }
}

T_TEST(bytes_after_the_head_are_not_looked_at)
{
    const char head[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    char buf[64];
    memcpy(buf, head, sizeof(head) - 1);
    memcpy(buf + sizeof(head) - 1, "\0\r\x01garbage", 10);
    struct lv_headscan s;
    lv_headscan_init(&s, false, 8192, 1024, 20);
    T_CHECK_INT(lv_headscan_feed(&s, buf, sizeof(head) - 1 + 10), LV_HEADSCAN_DONE);
    T_CHECK_INT(s.head_len, sizeof(head) - 1);
    T_CHECK_INT(s.fields, 1);
    /* DONE is sticky. */
    T_CHECK_INT(lv_headscan_feed(&s, buf, sizeof(head) - 1 + 10), LV_HEADSCAN_DONE);
}

T_TEST(leading_empty_lines_move_start)
{
    const char head[] = "\r\n\r\nGET / HTTP/1.1\r\n\r\n";
    struct lv_headscan s;
    lv_headscan_init(&s, false, 8192, 1024, 20);
    T_CHECK_INT(lv_headscan_feed(&s, head, sizeof(head) - 1), LV_HEADSCAN_DONE);
    T_CHECK_INT(s.start, 4);
    T_CHECK_INT(s.fields, 0);
}

T_TEST(response_errors_are_502_even_for_limits)
{
    const char head[] = "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n\r\n";
    struct lv_headscan s;
    lv_headscan_init(&s, true, 8192, 1024, 2);
    T_CHECK_INT(lv_headscan_feed(&s, head, sizeof(head) - 1), LV_HEADSCAN_ERROR);
    T_CHECK_INT(s.status, 502);
    lv_headscan_init(&s, true, 20, 1024, 20);
    T_CHECK_INT(lv_headscan_feed(&s, head, sizeof(head) - 1), LV_HEADSCAN_ERROR);
    T_CHECK_INT(s.status, 502);
    lv_headscan_init(&s, true, 8192, 10, 20);
    T_CHECK_INT(lv_headscan_feed(&s, head, sizeof(head) - 1), LV_HEADSCAN_ERROR);
    T_CHECK_INT(s.status, 502);
}

T_TEST(error_is_sticky_and_more_does_not_rescan)
{
    struct lv_headscan s;
    lv_headscan_init(&s, false, 8192, 1024, 20);
    const char a[] = "GET / HTTP/1.1\r\nX: 1\r\n";
    T_CHECK_INT(lv_headscan_feed(&s, a, sizeof(a) - 1), LV_HEADSCAN_MORE);
    T_CHECK_INT(s.pos, sizeof(a) - 1);
    T_CHECK_INT(lv_headscan_feed(&s, a, sizeof(a) - 1), LV_HEADSCAN_MORE);
    const char b[] = "GET / HTTP/1.1\r\nX: 1\r\n\x01";
    T_CHECK_INT(lv_headscan_feed(&s, b, sizeof(b) - 1), LV_HEADSCAN_ERROR);
    T_CHECK_INT(lv_headscan_feed(&s, b, sizeof(b) - 1), LV_HEADSCAN_ERROR);
    T_CHECK_INT(s.status, 400);
}

/* Deterministic pseudo-random heads over an alphabet of the bytes that matter: whatever they
 * are, the result must not depend on how they are split, and nothing may be read past len. */
static uint32_t rng = 12345;
static uint32_t next_rand(void)
{
    rng = rng * 1103515245u + 12345u;
    return rng >> 8;
}

T_TEST(random_heads_are_split_invariant)
{
    /* Mostly well-formed pieces, some hostile bytes. */
    static const char *const pieces[] = {"Host: a\r\n",
                                         "X-A: b c\r\n",
                                         "Content_Length: 1\r\n",
                                         "Y:\r\n",
                                         "\r\n",
                                         "\r",
                                         "\n",
                                         " ",
                                         "\t",
                                         ":",
                                         "_",
                                         "\x01",
                                         "\x7f",
                                         "\x80",
                                         "Z",
                                         "#",
                                         "z: \xff\r\n"};
    static const char *const starts[] = {"GET / HTTP/1.1\r\n", "HTTP/1.1 200 OK\r\n", ""};
    char buf[160];
    int done = 0, errors = 0;
    for (int iter = 0; iter < 3000; iter++) {
        struct vec v = {"random", buf, 0, iter % 3 == 1, 0, NULL, 100, 24, 3};
        size_t n = strlen(starts[iter % 3]);
        memcpy(buf, starts[iter % 3], n);
        size_t npieces = next_rand() % 5;
        for (size_t k = 0; k < npieces; k++) {
            /* Well-formed lines (the first two) twice as likely as any other piece. */
            size_t np = sizeof(pieces) / sizeof(pieces[0]);
            size_t pick = next_rand() % (np + 4);
            const char *p = pieces[pick < np ? pick : pick % 2];
            memcpy(buf + n, p, strlen(p));
            n += strlen(p);
        }
        if (next_rand() % 2) {
            memcpy(buf + n, "\r\n", 2);
            n += 2;
        }
        v.len = n;
        char *heap = malloc(n ? n : 1);
        memcpy(heap, buf, n);
        struct outcome whole = run_split(&v, heap, n, n);
        struct outcome b = run_bytes(&v, heap, n);
        struct outcome sp = run_split(&v, heap, n, next_rand() % (n + 1));
        T_CHECK(same(whole, b));
        T_CHECK(same(whole, sp));
        if (whole.r == DONE) {
            done++;
            T_CHECK(whole.head_len <= n);
        } else if (whole.r != MORE) {
            errors++;
            T_CHECK(whole.reason != NULL);
            T_CHECK(v.response
                        ? whole.r == 502
                        : (whole.r == 400 || whole.r == 414 || whole.r == 431 || whole.r == 505));
        }
        free(heap);
    }
    /* The generator must exercise both outcomes, or this test proves nothing. */
    if (done < 200 || errors < 500)
        fprintf(stderr, "random heads: %d done, %d errors\n", done, errors);
    T_CHECK(done >= 200);
    T_CHECK(errors >= 500);
}

int main(void)
{
    T_RUN(vectors_whole_split_and_bytewise);
    T_RUN(bytes_after_the_head_are_not_looked_at);
    T_RUN(leading_empty_lines_move_start);
    T_RUN(response_errors_are_502_even_for_limits);
    T_RUN(error_is_sticky_and_more_does_not_rescan);
    T_RUN(random_heads_are_split_invariant);
    T_DONE();
}
