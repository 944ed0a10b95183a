/*
 * lv-testupstream: a programmable, misbehaving HTTP/1.1 upstream for levee's integration specs.
 *
 * One libuv thread serves any number of listeners (`--listen HOST:PORT`, port 0 = any free one;
 * one "listening HOST:PORT" line per listener is printed on stdout). Each request is answered
 * according to its own X-Test-* headers, so a spec programs the upstream through the request
 * it sends via levee: status, body, size, chunking, delays, and failure actions (hang, reset,
 * close, garbage, raw bytes, truncated body, close after the response, slow body reading).
 * The default body is a JSON echo of what arrived (method, target, headers, body length and
 * FNV-1a digest, connection serial and sequence). `/__stats` and `/__reset` are control
 * endpoints on every listener and are not counted. The request parser is deliberately simple
 * and tolerant; anything it cannot frame gets 400 and a closed connection, never a crash.
 * Request bodies are hashed and dropped, response bodies of any size are streamed from a static
 * pattern with a bounded write queue, so memory stays flat for gigabyte transfers.
 * SIGTERM/SIGINT close every handle and exit 0. Nothing else links to this file.
 */
#include <uv.h>

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

#define TU_MAX_LISTENERS 64
#define TU_HEAD_MAX      (64 * 1024)
#define TU_LINE_MAX      4096
#define TU_PIECE         (64 * 1024)
#define TU_HIGH_WATER    (1024 * 1024)
#define TU_INBUF_MAX     (4 * 1024 * 1024)
#define TU_LINGER_MS     2000
#define TU_MAX_KEYS      4096
#define TU_FNV_OFFSET    0xcbf29ce484222325ULL
#define TU_FNV_PRIME     0x100000001b3ULL

/* ---- small growable string ---------------------------------------------------------------- */

struct sbuf {
    char *p;
    size_t len, cap;
};

static void *xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q) {
        fprintf(stderr, "lv-testupstream: out of memory\n");
        abort();
    }
    return q;
}

static void *xcalloc(size_t n, size_t sz)
{
    void *q = calloc(n, sz);
    if (!q) {
        fprintf(stderr, "lv-testupstream: out of memory\n");
        abort();
    }
    return q;
}

static char *xmemdup(const char *s, size_t n)
{
    char *d = xrealloc(NULL, n + 1);
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static void sb_reserve(struct sbuf *b, size_t extra)
{
    if (b->len + extra + 1 <= b->cap)
        return;
    size_t n = b->cap ? b->cap : 256;
    while (n < b->len + extra + 1)
        n *= 2;
    b->p = xrealloc(b->p, n);
    b->cap = n;
}

static void sb_add(struct sbuf *b, const void *d, size_t n)
{
    sb_reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s)
{
    sb_add(b, s, strlen(s));
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n <= 0)
        return;
    sb_reserve(b, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

/* Bytes >= 0x80 pass through untouched so a spec sees exactly what was received. */
static void sb_json(struct sbuf *b, const char *s, size_t n)
{
    sb_add(b, "\"", 1);
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            char e[2] = {'\\', (char)ch};
            sb_add(b, e, 2);
        } else if (ch == '\n') {
            sb_add(b, "\\n", 2);
        } else if (ch == '\r') {
            sb_add(b, "\\r", 2);
        } else if (ch == '\t') {
            sb_add(b, "\\t", 2);
        } else if (ch < 0x20 || ch == 0x7f) {
            sb_printf(b, "\\u%04x", ch);
        } else {
            sb_add(b, s + i, 1);
        }
    }
    sb_add(b, "\"", 1);
}

static void sb_free(struct sbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* ---- counters keyed by string (by_path, by_port, plans) ----------------------------------- */

struct counter {
    char *key;
    uint64_t n;
};

struct ctab {
    struct counter *v;
    size_t n, cap;
    uint64_t overflow; /* keys beyond TU_MAX_KEYS share this slot: bounded memory */
};

static uint64_t *ctab_get(struct ctab *t, const char *key, size_t klen)
{
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->v[i].key) == klen && memcmp(t->v[i].key, key, klen) == 0)
            return &t->v[i].n;
    if (t->n >= TU_MAX_KEYS)
        return &t->overflow;
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 16;
        t->v = xrealloc(t->v, t->cap * sizeof(*t->v));
    }
    t->v[t->n].key = xmemdup(key, klen);
    t->v[t->n].n = 0;
    return &t->v[t->n++].n;
}

static void ctab_clear(struct ctab *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i].key);
    free(t->v);
    memset(t, 0, sizeof(*t));
}

static void ctab_json(struct sbuf *b, const struct ctab *t)
{
    sb_puts(b, "{");
    for (size_t i = 0; i < t->n; i++) {
        if (i)
            sb_puts(b, ",");
        sb_json(b, t->v[i].key, strlen(t->v[i].key));
        sb_printf(b, ":%" PRIu64, t->v[i].n);
    }
    sb_puts(b, "}");
}

/* ---- state -------------------------------------------------------------------------------- */

struct listener {
    uv_tcp_t tcp;
    int port;
    char host[80];
};

enum rstate {
    RS_HEAD,
    RS_BODY_CL,
    RS_CHUNK_SIZE,
    RS_CHUNK_DATA,
    RS_CHUNK_CRLF,
    RS_CHUNK_TRAILER,
    RS_COMPLETE,
    RS_BUSY,   /* request complete, response (or a delay before it) in progress */
    RS_HANG,   /* never answer; discard input until the peer leaves */
    RS_LINGER, /* our side shut down; discard input until EOF or the linger timer */
    RS_WS,     /* switched to WebSocket (GET /ws...): frames are echoed */
};

enum action {
    A_NONE,
    A_HANG,
    A_RESET,
    A_CLOSE,
    A_GARBAGE,
    A_RAW,
    A_TRUNCATE,
    A_CLOSE_AFTER,
    A_SLOW_READ,
};

static const char *const action_names[] = {"none", "hang",     "reset",       "close",    "garbage",
                                           "raw",  "truncate", "close-after", "slow-read"};

enum after { AF_KEEP, AF_CLOSE, AF_CLOSE_AFTER };

enum tpurpose { T_NONE, T_HEAD_DELAY, T_BODY_DELAY, T_DRIP, T_SLOW_READ, T_LINGER, T_CLOSE_DELAY };

struct header {
    char *name, *value; /* point into request.head */
};

struct request {
    char *head; /* copy of the head, NUL-split in place */
    char *raw;  /* untouched copy, for last_raw */
    size_t raw_len;
    char *method, *target, *version;
    struct header *hdrs;
    size_t nhdrs, cap;
    int http10, keep_alive, chunked, control, expect_continue;
    uint64_t clen;
    uint64_t body_len, body_hash;
    /* behaviour decided when the head arrives */
    int status;
    enum action act;
    long delay_ms, body_delay_ms, close_delay_ms;
    long delay_per_active_ms;
    char *directive_err;
};

struct conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shut;
    struct conn *prev, *next;
    struct listener *ls;
    uint64_t serial, seq, counted_gen;
    int active, handles_open;
    int in_progress; /* a counted request is between its head and its response's end */
    int reading, closing, shutting, peer_eof, paused;
    char *in;
    size_t in_len, in_off, in_cap;
    enum rstate st;
    uint64_t remaining; /* body bytes (Content-Length) or current chunk bytes still to read */
    size_t line_len;    /* bytes of the chunk-size/trailer line scanned so far */
    struct request req;
    enum tpurpose tp;
    /* the response in flight */
    int resp_active, body_ready, final_queued, need_terminator, chunked_out, drip_wait;
    enum after after;
    char *body_static; /* NULL: pattern body */
    uint64_t body_total, body_sent;
    size_t piece;
    long drip_ms;
    size_t pending_bytes;
    int pending_writes;
};

struct wreq {
    uv_write_t req;
    struct conn *c;
    size_t bytes;
    char *owned;
};

static struct {
    uv_loop_t *loop;
    const char *name;
    struct listener ls[TU_MAX_LISTENERS];
    int nls;
    uv_signal_t sig[3];
    int stopping;
    struct conn *conns;
    uint64_t conn_serial, gen;
    uint64_t requests, connections, accepted;
    int64_t active, open;
    int64_t inflight, max_inflight; /* requests in progress; its high-water mark */
    struct ctab by_path, by_port, plans;
    char *last_raw;
    size_t last_raw_len;
} g;

static char pattern[TU_PIECE + 26];
static char discard[64 * 1024];

static void conn_close(struct conn *c);
static void conn_finish(struct conn *c);
static void process(struct conn *c);
static void pump(struct conn *c);
static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);
static void ws_process(struct conn *c);
static int has_token(const char *v, const char *tok);

/* ---- connection lifecycle ----------------------------------------------------------------- */

static void request_reset(struct request *r)
{
    free(r->head);
    free(r->raw);
    free(r->hdrs);
    free(r->directive_err);
    memset(r, 0, sizeof(*r));
}

static void response_reset(struct conn *c)
{
    free(c->body_static);
    c->body_static = NULL;
    c->resp_active = c->body_ready = c->final_queued = c->need_terminator = 0;
    c->chunked_out = c->drip_wait = 0;
    c->body_total = c->body_sent = 0;
    c->drip_ms = 0;
    c->piece = TU_PIECE;
    c->after = AF_KEEP;
}

/* The connection's request is over (answered, or its connection gone). */
static void request_over(struct conn *c)
{
    if (c->in_progress) {
        c->in_progress = 0;
        g.inflight--;
    }
}

static void on_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles_open > 0)
        return;
    request_reset(&c->req);
    response_reset(c);
    free(c->in);
    free(c);
}

static void conn_unlink(struct conn *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        g.conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    g.open--;
    request_over(c);
    if (c->active) {
        c->active = 0;
        g.active--;
    }
}

static void conn_close(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    conn_unlink(c);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

/* RST instead of FIN: SO_LINGER 0 via libuv. */
static void conn_reset(struct conn *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    conn_unlink(c);
    if (uv_tcp_close_reset(&c->tcp, on_handle_closed) != 0)
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

static void timer_arm(struct conn *c, enum tpurpose tp, long ms);

static void read_start(struct conn *c);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (c->closing)
        return;
    if (status < 0 || c->peer_eof)
        conn_close(c);
}

/* Graceful close: FIN after queued writes, then drain input until EOF so that unread bytes do
 * not turn our close into an RST that could destroy the response still in flight. */
static void conn_finish(struct conn *c)
{
    if (c->closing || c->shutting)
        return;
    c->shutting = 1;
    c->st = RS_LINGER;
    c->shut.data = c;
    if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_close(c);
        return;
    }
    if (!c->peer_eof)
        read_start(c);
    timer_arm(c, T_LINGER, TU_LINGER_MS);
}

/* ---- writing ------------------------------------------------------------------------------ */

static void on_write(uv_write_t *req, int status)
{
    struct wreq *w = (struct wreq *)req;
    struct conn *c = w->c;
    c->pending_writes--;
    c->pending_bytes -= w->bytes;
    free(w->owned);
    free(w);
    if (c->closing)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    if (c->st == RS_WS) {
        ws_process(c);
        return;
    }
    pump(c);
}

/* Takes ownership of `owned` (freed when the write completes). Returns -1 if the connection
 * was closed because the write could not be queued. */
static int conn_write(struct conn *c, uv_buf_t *bufs, unsigned n, char *owned)
{
    struct wreq *w = xcalloc(1, sizeof(*w));
    w->c = c;
    w->owned = owned;
    for (unsigned i = 0; i < n; i++)
        w->bytes += bufs[i].len;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
        free(owned);
        free(w);
        conn_close(c);
        return -1;
    }
    c->pending_writes++;
    c->pending_bytes += w->bytes;
    return 0;
}

static int conn_write_copy(struct conn *c, const char *s, size_t n)
{
    char *d = xmemdup(s, n);
    uv_buf_t b = uv_buf_init(d, (unsigned)n);
    return conn_write(c, &b, 1, d);
}

static void response_done(struct conn *c)
{
    enum after af = c->after;
    long close_delay = c->req.close_delay_ms;
    request_over(c);
    response_reset(c);
    if (af == AF_CLOSE) {
        conn_finish(c);
        return;
    }
    if (af == AF_CLOSE_AFTER) {
        if (close_delay > 0) {
            c->st = RS_LINGER;
            timer_arm(c, T_CLOSE_DELAY, close_delay);
        } else {
            conn_finish(c);
        }
        return;
    }
    request_reset(&c->req);
    c->st = RS_HEAD;
    if (!c->peer_eof)
        read_start(c);
    process(c);
}

/* Queues body pieces while the write queue is under the high-water mark; on_write calls back
 * here as it drains, which is the backpressure that keeps a 1 GiB body in constant memory. */
static void pump(struct conn *c)
{
    if (c->closing || !c->resp_active || !c->body_ready || c->drip_wait)
        return;
    while (c->body_sent < c->body_total && c->pending_bytes < TU_HIGH_WATER) {
        uint64_t left = c->body_total - c->body_sent;
        size_t n = left < c->piece ? (size_t)left : c->piece;
        char *data = c->body_static ? c->body_static + c->body_sent : pattern + c->body_sent % 26;
        if (c->chunked_out) {
            char line[24];
            int pl = snprintf(line, sizeof(line), "%zx\r\n", n);
            char *pre = xmemdup(line, (size_t)pl);
            uv_buf_t b[3] = {uv_buf_init(pre, (unsigned)pl), uv_buf_init(data, (unsigned)n),
                             uv_buf_init((char *)"\r\n", 2)};
            if (conn_write(c, b, 3, pre) < 0)
                return;
        } else {
            uv_buf_t b = uv_buf_init(data, (unsigned)n);
            if (conn_write(c, &b, 1, NULL) < 0)
                return;
        }
        c->body_sent += n;
        if (c->drip_ms > 0 && c->body_sent < c->body_total) {
            c->drip_wait = 1;
            timer_arm(c, T_DRIP, c->drip_ms);
            return;
        }
    }
    if (c->body_sent == c->body_total && !c->final_queued) {
        c->final_queued = 1;
        if (c->need_terminator) {
            uv_buf_t b = uv_buf_init((char *)"0\r\n\r\n", 5);
            if (conn_write(c, &b, 1, NULL) < 0)
                return;
        }
    }
    if (c->final_queued && c->pending_writes == 0)
        response_done(c);
}

/* ---- timers ------------------------------------------------------------------------------- */

static void act_now(struct conn *c);

static void on_timer(uv_timer_t *t)
{
    struct conn *c = t->data;
    enum tpurpose tp = c->tp;
    c->tp = T_NONE;
    if (c->closing)
        return;
    switch (tp) {
    case T_HEAD_DELAY:
        act_now(c);
        break;
    case T_BODY_DELAY:
        c->body_ready = 1;
        pump(c);
        break;
    case T_DRIP:
        c->drip_wait = 0;
        pump(c);
        break;
    case T_SLOW_READ:
        c->paused = 0;
        if (!c->peer_eof)
            read_start(c);
        process(c);
        break;
    case T_LINGER:
        conn_close(c);
        break;
    case T_CLOSE_DELAY:
        conn_finish(c);
        break;
    case T_NONE:
        break;
    }
}

static void timer_arm(struct conn *c, enum tpurpose tp, long ms)
{
    c->tp = tp;
    uv_timer_start(&c->timer, on_timer, (uint64_t)(ms > 0 ? ms : 0), 0);
}

/* ---- responses ---------------------------------------------------------------------------- */

static const char *reason(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 204:
        return "No Content";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 409:
        return "Conflict";
    case 413:
        return "Content Too Large";
    case 422:
        return "Unprocessable Content";
    case 429:
        return "Too Many Requests";
    case 500:
        return "Internal Server Error";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Status";
    }
}

static const char *hdr_get(const struct request *r, const char *name)
{
    for (size_t i = 0; i < r->nhdrs; i++)
        if (strcasecmp(r->hdrs[i].name, name) == 0)
            return r->hdrs[i].value;
    return NULL;
}

/* Non-negative decimal, or -1 when absent or malformed. */
static long long parse_num(const char *s)
{
    if (!s || !*s)
        return -1;
    long long v = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return -1;
        if (v > (LLONG_MAX - 9) / 10)
            return -1;
        v = v * 10 + (*s - '0');
    }
    return v;
}

struct resp {
    int status;
    const char *ctype;
    char *body; /* owned, NULL = pattern body */
    uint64_t body_len;
    int user_headers; /* append the X-Test-Header values */
};

static void server_id(struct sbuf *b, const struct conn *c)
{
    sb_printf(b, "%s:%d", g.name, c->ls->port);
}

static void send_response(struct conn *c, struct resp *rs)
{
    struct request *r = &c->req;
    int no_body_status = rs->status < 200 || rs->status == 204 || rs->status == 304;
    int head_req = r->method && strcmp(r->method, "HEAD") == 0;
    const char *v = hdr_get(r, "x-test-chunked");
    int chunked = !no_body_status && v && strcmp(v, "1") == 0 && !r->control;
    int truncate = r->act == A_TRUNCATE;

    response_reset(c);
    c->resp_active = 1;
    c->after = r->keep_alive ? AF_KEEP : AF_CLOSE;
    if (truncate)
        c->after = AF_CLOSE;
    else if (r->act == A_CLOSE_AFTER)
        c->after = AF_CLOSE_AFTER;

    int user_ctype = 0;
    if (rs->user_headers)
        for (size_t i = 0; i < r->nhdrs; i++)
            if (strcasecmp(r->hdrs[i].name, "x-test-header") == 0 &&
                strncasecmp(r->hdrs[i].value, "content-type:", 13) == 0)
                user_ctype = 1;

    struct sbuf h = {0};
    sb_printf(&h, "HTTP/1.1 %d %s\r\nX-Upstream: ", rs->status, reason(rs->status));
    server_id(&h, c);
    sb_puts(&h, "\r\n");
    if (!user_ctype && rs->ctype)
        sb_printf(&h, "Content-Type: %s\r\n", rs->ctype);
    if (!no_body_status) {
        if (chunked)
            sb_puts(&h, "Transfer-Encoding: chunked\r\n");
        else
            sb_printf(&h, "Content-Length: %" PRIu64 "\r\n",
                      truncate ? rs->body_len * 2 : rs->body_len);
    }
    if (!r->keep_alive)
        sb_puts(&h, "Connection: close\r\n");
    if (rs->user_headers)
        for (size_t i = 0; i < r->nhdrs; i++)
            if (strcasecmp(r->hdrs[i].name, "x-test-header") == 0)
                sb_printf(&h, "%s\r\n", r->hdrs[i].value);
    sb_puts(&h, "\r\n");

    c->body_static = rs->body;
    rs->body = NULL;
    c->body_total = (head_req || no_body_status) ? 0 : rs->body_len;
    c->chunked_out = chunked && !head_req;
    c->need_terminator = c->chunked_out && !truncate;
    const char *cs = hdr_get(r, "x-test-chunk-size");
    long long piece = parse_num(cs);
    if (piece > 0)
        c->piece = piece < TU_PIECE ? (size_t)piece : TU_PIECE;
    long long drip = parse_num(hdr_get(r, "x-test-chunk-delay-ms"));
    c->drip_ms = drip > 0 ? (long)drip : 0;

    uv_buf_t b = uv_buf_init(h.p, (unsigned)h.len);
    if (conn_write(c, &b, 1, h.p) < 0)
        return;
    if (r->body_delay_ms > 0 && (c->body_total > 0 || c->need_terminator)) {
        timer_arm(c, T_BODY_DELAY, r->body_delay_ms);
    } else {
        c->body_ready = 1;
        pump(c);
    }
}

/* Bytes written as they are, no head: garbage and raw actions. */
static void send_bytes(struct conn *c, const char *s, size_t n, enum after af)
{
    response_reset(c);
    c->resp_active = 1;
    c->after = af;
    if (n > 0 && conn_write_copy(c, s, n) < 0)
        return;
    c->body_ready = 1;
    pump(c);
}

static void send_simple(struct conn *c, int status, const char *ctype, struct sbuf *body)
{
    struct resp rs = {status, ctype, body->p ? body->p : xmemdup("", 0), body->len, 0};
    body->p = NULL;
    body->len = body->cap = 0;
    send_response(c, &rs);
    free(rs.body);
}

static void bad_request(struct conn *c, const char *why)
{
    struct sbuf h = {0};
    sb_printf(&h,
              "HTTP/1.1 400 Bad Request\r\nX-Upstream: %s:%d\r\nContent-Type: text/plain\r\n"
              "Content-Length: %zu\r\nConnection: close\r\n\r\n%s\n",
              g.name, c->ls->port, strlen(why) + 1, why);
    c->st = RS_BUSY;
    send_bytes(c, h.p, h.len, AF_CLOSE);
    sb_free(&h);
}

static void echo_json(struct conn *c, struct sbuf *b)
{
    struct request *r = &c->req;
    sb_puts(b, "{\"method\":");
    sb_json(b, r->method, strlen(r->method));
    sb_puts(b, ",\"target\":");
    sb_json(b, r->target, strlen(r->target));
    sb_puts(b, ",\"version\":");
    sb_json(b, r->version, strlen(r->version));
    sb_puts(b, ",\"headers\":[");
    for (size_t i = 0; i < r->nhdrs; i++) {
        sb_puts(b, i ? ",[" : "[");
        sb_json(b, r->hdrs[i].name, strlen(r->hdrs[i].name));
        sb_puts(b, ",");
        sb_json(b, r->hdrs[i].value, strlen(r->hdrs[i].value));
        sb_puts(b, "]");
    }
    sb_printf(b,
              "],\"body_len\":%" PRIu64 ",\"body_sha\":\"%016" PRIx64 "\",\"conn\":%" PRIu64
              ",\"seq\":%" PRIu64 ",\"port\":%d,\"server\":",
              r->body_len, r->body_hash, c->serial, c->seq, c->ls->port);
    struct sbuf id = {0};
    server_id(&id, c);
    sb_json(b, id.p, id.len);
    sb_free(&id);
    sb_puts(b, "}");
}

static void respond_normal(struct conn *c)
{
    struct request *r = &c->req;
    struct resp rs = {r->status, "text/plain", NULL, 0, 1};
    struct sbuf body = {0};
    long long size = parse_num(hdr_get(r, "x-test-body-size"));
    const char *text = hdr_get(r, "x-test-body");
    if (r->directive_err) {
        rs.status = 400;
        rs.user_headers = 0;
        sb_printf(&body, "%s\n", r->directive_err);
    } else if (size >= 0) {
        rs.body_len = (uint64_t)size;
    } else if (text) {
        sb_puts(&body, text);
    } else {
        echo_json(c, &body);
        rs.ctype = "application/json";
    }
    if (!(size >= 0 && !r->directive_err)) {
        rs.body = body.p ? body.p : xmemdup("", 0);
        rs.body_len = body.len;
    }
    send_response(c, &rs);
    free(rs.body);
}

static void stats_json(struct sbuf *b)
{
    sb_printf(b,
              "{\"requests\":%" PRIu64 ",\"connections\":%" PRIu64
              ",\"active_connections\":%" PRId64 ",\"accepted\":%" PRIu64 ",\"open\":%" PRId64
              ",\"inflight\":%" PRId64 ",\"max_inflight\":%" PRId64 ",\"by_path\":",
              g.requests, g.connections, g.active, g.accepted, g.open, g.inflight, g.max_inflight);
    ctab_json(b, &g.by_path);
    sb_puts(b, ",\"by_port\":");
    ctab_json(b, &g.by_port);
    sb_puts(b, ",\"plans\":");
    ctab_json(b, &g.plans);
    sb_puts(b, ",\"server\":");
    sb_json(b, g.name, strlen(g.name));
    sb_puts(b, ",\"last_raw\":");
    sb_json(b, g.last_raw ? g.last_raw : "", g.last_raw_len);
    sb_puts(b, "}");
}

static void respond_control(struct conn *c)
{
    const char *t = c->req.target;
    size_t plen = strcspn(t, "?");
    struct sbuf body = {0};
    if (plen == 8 && memcmp(t, "/__stats", 8) == 0) {
        stats_json(&body);
        send_simple(c, 200, "application/json", &body);
    } else if (plen == 8 && memcmp(t, "/__reset", 8) == 0) {
        g.requests = g.connections = 0;
        g.max_inflight = g.inflight;
        g.gen++;
        ctab_clear(&g.by_path);
        ctab_clear(&g.by_port);
        ctab_clear(&g.plans);
        free(g.last_raw);
        g.last_raw = NULL;
        g.last_raw_len = 0;
        sb_puts(&body, "{\"ok\":true}");
        send_simple(c, 200, "application/json", &body);
    } else {
        sb_puts(&body, "{\"error\":\"unknown control endpoint\"}");
        send_simple(c, 404, "application/json", &body);
    }
}

/* Decodes \r \n \t \\ \" \0 \xHH; any other backslash sequence is kept as it is. */
static size_t unescape(const char *s, char *out)
{
    size_t n = 0;
    while (*s) {
        if (s[0] == '\\' && s[1]) {
            char e = s[1];
            if (e == 'r' || e == 'n' || e == 't' || e == '\\' || e == '"' || e == '0') {
                out[n++] = e == 'r' ? '\r' : e == 'n' ? '\n' : e == 't' ? '\t' : e == '0' ? 0 : e;
                s += 2;
                continue;
            }
            if (e == 'x' && isxdigit((unsigned char)s[2]) && isxdigit((unsigned char)s[3])) {
                char hx[3] = {s[2], s[3], 0};
                out[n++] = (char)strtol(hx, NULL, 16);
                s += 4;
                continue;
            }
        }
        out[n++] = *s++;
    }
    return n;
}

/* ---- WebSocket (RFC 6455) ------------------------------------------------------------------ */

/* GET /ws... with Upgrade: websocket, Connection: upgrade and a Sec-WebSocket-Key, and no
 * X-Test-Ws-Refuse: answers 101 (X-Test-Ws-Hello: TEXT also sends a text frame right after the
 * head, in the same write), then echoes every frame unmasked with its opcode, answers ping with
 * pong and a close frame with a close frame, then closes. Anything else is an ordinary request. */
static int ws_wanted(const struct request *r)
{
    const char *up = hdr_get(r, "upgrade"), *conn = hdr_get(r, "connection");
    return strncmp(r->target, "/ws", 3) == 0 && up && has_token(up, "websocket") && conn &&
           has_token(conn, "upgrade") && hdr_get(r, "sec-websocket-key") &&
           !hdr_get(r, "x-test-ws-refuse");
}

static void ws_frame(struct sbuf *b, int opcode, const char *p, size_t n)
{
    unsigned char h[10];
    size_t hl = 2;
    h[0] = (unsigned char)(0x80 | opcode);
    if (n < 126) {
        h[1] = (unsigned char)n;
    } else if (n < 65536) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    sb_add(b, h, hl);
    sb_add(b, p, n);
}

static void ws_start(struct conn *c)
{
    struct request *r = &c->req;
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    struct sbuf k = {0};
    sb_puts(&k, hdr_get(r, "sec-websocket-key"));
    sb_puts(&k, guid);
    unsigned char md[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)k.p, k.len, md);
    sb_free(&k);
    unsigned char accept[64];
    EVP_EncodeBlock(accept, md, SHA_DIGEST_LENGTH);
    struct sbuf out = {0};
    sb_printf(&out,
              "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              "Sec-WebSocket-Accept: %s\r\nX-Upstream: %s:%d\r\n\r\n",
              (const char *)accept, g.name, c->ls->port);
    const char *hello = hdr_get(r, "x-test-ws-hello");
    if (hello)
        ws_frame(&out, 1, hello, strlen(hello));
    request_over(c);
    c->st = RS_WS;
    if (conn_write_copy(c, out.p, out.len) < 0) {
        sb_free(&out);
        return;
    }
    sb_free(&out);
    read_start(c);
    ws_process(c);
}

/* Echoes the complete frames in the input; stops reading while the write queue is full. */
static void ws_process(struct conn *c)
{
    while (!c->closing && c->st == RS_WS && c->pending_bytes < TU_HIGH_WATER) {
        unsigned char *p = (unsigned char *)c->in + c->in_off;
        size_t n = c->in_len - c->in_off;
        if (n < 2)
            break;
        int opcode = p[0] & 0x0f, masked = p[1] & 0x80;
        uint64_t len = p[1] & 0x7f;
        size_t hl = 2;
        if (len == 126) {
            if (n < 4)
                break;
            len = (uint64_t)p[2] << 8 | p[3];
            hl = 4;
        } else if (len == 127) {
            if (n < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            hl = 10;
        }
        if (!masked || len > (64u << 20)) {
            conn_close(c); /* a client frame must be masked (RFC 6455 5.1) */
            return;
        }
        if (n < hl + 4 + len)
            break;
        unsigned char *key = p + hl, *data = p + hl + 4;
        for (uint64_t i = 0; i < len; i++)
            data[i] ^= key[i % 4];
        struct sbuf out = {0};
        ws_frame(&out, opcode == 9 ? 10 : opcode, (const char *)data, (size_t)len);
        c->in_off += hl + 4 + (size_t)len;
        int rc = conn_write_copy(c, out.p, out.len);
        sb_free(&out);
        if (rc < 0)
            return;
        if (opcode == 8) { /* close: ours went back; FIN once written */
            conn_finish(c);
            return;
        }
    }
    if (c->closing || c->st != RS_WS)
        return;
    if (c->pending_bytes >= TU_HIGH_WATER) {
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
    } else if (c->peer_eof) {
        conn_finish(c);
    } else {
        read_start(c);
    }
}

static void act_now(struct conn *c)
{
    struct request *r = &c->req;
    switch (r->act) {
    case A_RESET:
        conn_reset(c);
        break;
    case A_CLOSE:
        conn_finish(c);
        break;
    case A_GARBAGE: {
        static const char ssh[] = "SSH-2.0-OpenSSH\r\n\r\n";
        send_bytes(c, ssh, sizeof(ssh) - 1, AF_CLOSE);
        break;
    }
    case A_RAW: {
        const char *raw = hdr_get(r, "x-test-raw");
        const char *keep = hdr_get(r, "x-test-keep");
        char *out = xrealloc(NULL, raw ? strlen(raw) + 1 : 1);
        size_t n = raw ? unescape(raw, out) : 0;
        send_bytes(c, out, n, keep && strcmp(keep, "1") == 0 ? AF_KEEP : AF_CLOSE);
        free(out);
        break;
    }
    case A_HANG:
        c->st = RS_HANG;
        if (c->peer_eof)
            conn_close(c);
        else
            read_start(c);
        break;
    default:
        if (ws_wanted(r))
            ws_start(c);
        else
            respond_normal(c);
        break;
    }
}

/* ---- behaviour programming ---------------------------------------------------------------- */

static int parse_action(const char *s, size_t n, enum action *out)
{
    for (size_t i = 1; i < sizeof(action_names) / sizeof(action_names[0]); i++)
        if (strlen(action_names[i]) == n && strncasecmp(action_names[i], s, n) == 0) {
            *out = (enum action)i;
            return 0;
        }
    return -1;
}

/* An item of a plan or a by-port list: a status code replaces status and action, an action
 * name replaces the action. */
static void apply_item(struct request *r, const char *s, size_t n)
{
    while (n && (*s == ' ' || *s == '\t'))
        s++, n--;
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (n == 3 && isdigit((unsigned char)s[0]) && isdigit((unsigned char)s[1]) &&
        isdigit((unsigned char)s[2])) {
        r->status = (s[0] - '0') * 100 + (s[1] - '0') * 10 + (s[2] - '0');
        r->act = A_NONE;
        return;
    }
    if (parse_action(s, n, &r->act) < 0) {
        struct sbuf e = {0};
        sb_puts(&e, "bad plan item: ");
        sb_add(&e, s, n);
        free(r->directive_err);
        r->directive_err = e.p;
    }
}

static void directive_error(struct request *r, const char *what)
{
    if (!r->directive_err)
        r->directive_err = xmemdup(what, strlen(what));
}

static long directive_ms(struct request *r, const char *name)
{
    const char *v = hdr_get(r, name);
    if (!v)
        return 0;
    long long n = parse_num(v);
    if (n < 0) {
        directive_error(r, "bad X-Test delay value");
        return 0;
    }
    return n > 3600000 ? 3600000 : (long)n;
}

static void decide(struct conn *c)
{
    struct request *r = &c->req;
    r->status = 200;
    r->act = A_NONE;
    const char *v = hdr_get(r, "x-test-status");
    if (v) {
        long long s = parse_num(v);
        if (s < 100 || s > 999)
            directive_error(r, "bad X-Test-Status");
        else
            r->status = (int)s;
    }
    v = hdr_get(r, "x-test-action");
    if (v && parse_action(v, strlen(v), &r->act) < 0)
        directive_error(r, "bad X-Test-Action");
    if (hdr_get(r, "x-test-body-size") && parse_num(hdr_get(r, "x-test-body-size")) < 0)
        directive_error(r, "bad X-Test-Body-Size");
    v = hdr_get(r, "x-test-plan");
    if (v) {
        const char *colon = strchr(v, ':');
        if (!colon || colon == v || !colon[1]) {
            directive_error(r, "bad X-Test-Plan (want ID:item,item,...)");
        } else {
            uint64_t *cnt = ctab_get(&g.plans, v, (size_t)(colon - v));
            uint64_t nth = ++*cnt;
            const char *item = colon + 1;
            for (uint64_t i = 1; i < nth; i++) {
                const char *comma = strchr(item, ',');
                if (!comma)
                    break; /* past the end: the last item repeats */
                item = comma + 1;
            }
            apply_item(r, item, strcspn(item, ","));
        }
    }
    v = hdr_get(r, "x-test-by-port");
    if (v) {
        const char *p = v;
        while (*p) {
            size_t len = strcspn(p, ",");
            const char *eq = memchr(p, '=', len);
            if (!eq) {
                directive_error(r, "bad X-Test-By-Port (want PORT=item,...)");
                break;
            }
            if (atoi(p) == c->ls->port)
                apply_item(r, eq + 1, len - (size_t)(eq + 1 - p));
            p += len;
            if (*p == ',')
                p++;
        }
    }
    r->delay_ms = directive_ms(r, "x-test-delay-ms");
    r->body_delay_ms = directive_ms(r, "x-test-body-delay-ms");
    r->close_delay_ms = directive_ms(r, "x-test-close-delay-ms");
    /* latency that grows with the load: N ms per request in progress, this one included */
    r->delay_per_active_ms = directive_ms(r, "x-test-delay-per-active-ms");
    if (r->delay_per_active_ms > 0) {
        long long d = (long long)r->delay_ms + (long long)r->delay_per_active_ms * g.inflight;
        r->delay_ms = d > 3600000 ? 3600000 : (long)d;
    }
}

static void count_request(struct conn *c)
{
    struct request *r = &c->req;
    g.requests++;
    if (c->counted_gen != g.gen + 1) {
        c->counted_gen = g.gen + 1;
        g.connections++;
    }
    if (!c->active) {
        c->active = 1;
        g.active++;
    }
    if (!c->in_progress) {
        c->in_progress = 1;
        if (++g.inflight > g.max_inflight)
            g.max_inflight = g.inflight;
    }
    (*ctab_get(&g.by_path, r->target, strcspn(r->target, "?")))++;
    char port[16];
    int pl = snprintf(port, sizeof(port), "%d", c->ls->port);
    (*ctab_get(&g.by_port, port, (size_t)pl))++;
    free(g.last_raw);
    g.last_raw = xmemdup(r->raw, r->raw_len);
    g.last_raw_len = r->raw_len;
}

/* ---- parsing ------------------------------------------------------------------------------ */

static int is_tchar(unsigned char ch)
{
    return isalnum(ch) || strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Whether a comma-separated header value lists `tok` (case-insensitive). */
static int has_token(const char *v, const char *tok)
{
    size_t tl = strlen(tok);
    while (*v) {
        while (*v == ' ' || *v == '\t' || *v == ',')
            v++;
        size_t n = strcspn(v, ",");
        size_t m = n;
        while (m && (v[m - 1] == ' ' || v[m - 1] == '\t'))
            m--;
        if (m == tl && strncasecmp(v, tok, tl) == 0)
            return 1;
        v += n;
    }
    return 0;
}

static char *trim(char *s)
{
    while (*s == ' ' || *s == '\t')
        s++;
    size_t n = strlen(s);
    while (n && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        s[--n] = '\0';
    return s;
}

/* Returns 1 with the head parsed, 0 if more bytes are needed, or -1 with *why set. */
static int parse_head(struct conn *c, const char **why)
{
    char *p = c->in + c->in_off;
    size_t n = c->in_len - c->in_off;
    while (n && (*p == '\r' || *p == '\n')) {
        p++;
        n--;
        c->in_off++;
    }
    size_t end = 0;
    for (size_t i = 0; i < n && i < TU_HEAD_MAX; i++) {
        if (p[i] != '\n')
            continue;
        if (i + 1 < n && p[i + 1] == '\n') {
            end = i + 2;
            break;
        }
        if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n') {
            end = i + 3;
            break;
        }
    }
    if (!end) {
        if (n >= TU_HEAD_MAX) {
            *why = "request head too large";
            return -1;
        }
        return 0;
    }
    struct request *r = &c->req;
    r->raw = xmemdup(p, end);
    r->raw_len = end;
    r->head = xmemdup(p, end);
    c->in_off += end;
    if (memchr(r->head, '\0', end)) {
        *why = "NUL in request head";
        return -1;
    }

    char *save = NULL;
    char *line = strtok_r(r->head, "\n", &save);
    if (!line) {
        *why = "empty request";
        return -1;
    }
    line[strcspn(line, "\r")] = '\0';
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strrchr(line, ' ') : NULL;
    if (!sp1 || sp2 == sp1) {
        *why = "bad request line";
        return -1;
    }
    *sp1 = '\0';
    *sp2 = '\0';
    r->method = line;
    r->target = trim(sp1 + 1);
    r->version = sp2 + 1;
    if (!*r->method || !*r->target || strncmp(r->version, "HTTP/1.", 7) != 0 ||
        !isdigit((unsigned char)r->version[7]) || r->version[8]) {
        *why = "bad request line";
        return -1;
    }
    for (char *m = r->method; *m; m++)
        if (!is_tchar((unsigned char)*m)) {
            *why = "bad method";
            return -1;
        }
    r->http10 = r->version[7] == '0';
    r->keep_alive = !r->http10;

    int has_clen = 0, has_te = 0;
    while ((line = strtok_r(NULL, "\n", &save)) != NULL) {
        size_t ll = strcspn(line, "\r");
        if (ll == 0)
            break;
        if (line[ll] == '\r' && line[ll + 1] != '\0') {
            *why = "bare CR in header";
            return -1;
        }
        line[ll] = '\0';
        if (*line == ' ' || *line == '\t') {
            *why = "obsolete line folding";
            return -1;
        }
        char *colon = strchr(line, ':');
        if (!colon || colon == line) {
            *why = "header line without name";
            return -1;
        }
        *colon = '\0';
        for (char *q = line; *q; q++)
            if (!is_tchar((unsigned char)*q)) {
                *why = "bad header name";
                return -1;
            }
        if (r->nhdrs == r->cap) {
            r->cap = r->cap ? r->cap * 2 : 16;
            r->hdrs = xrealloc(r->hdrs, r->cap * sizeof(*r->hdrs));
        }
        struct header *h = &r->hdrs[r->nhdrs++];
        h->name = line;
        h->value = trim(colon + 1);
        if (strcasecmp(h->name, "content-length") == 0) {
            long long v = parse_num(h->value);
            if (v < 0 || (has_clen && (uint64_t)v != r->clen)) {
                *why = "bad Content-Length";
                return -1;
            }
            has_clen = 1;
            r->clen = (uint64_t)v;
        } else if (strcasecmp(h->name, "transfer-encoding") == 0) {
            size_t vl = strlen(h->value);
            has_te = 1;
            r->chunked = vl >= 7 && strcasecmp(h->value + vl - 7, "chunked") == 0;
            if (!r->chunked) {
                *why = "unsupported Transfer-Encoding";
                return -1;
            }
        } else if (strcasecmp(h->name, "connection") == 0) {
            if (has_token(h->value, "close"))
                r->keep_alive = 0;
        } else if (strcasecmp(h->name, "expect") == 0) {
            r->expect_continue = strcasecmp(h->value, "100-continue") == 0;
        }
    }
    if (has_te)
        r->clen = 0;
    r->control = strncmp(r->target, "/__", 3) == 0;
    return 1;
}

static void body_bytes(struct request *r, const char *p, size_t n)
{
    uint64_t h = r->body_hash;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= TU_FNV_PRIME;
    }
    r->body_hash = h;
    r->body_len += n;
}

static void on_head(struct conn *c)
{
    struct request *r = &c->req;
    c->seq++;
    r->body_hash = TU_FNV_OFFSET;
    if (!r->control) {
        count_request(c);
        decide(c);
    }
    int has_body = r->chunked || r->clen > 0;
    c->st = r->chunked ? RS_CHUNK_SIZE : r->clen > 0 ? RS_BODY_CL : RS_COMPLETE;
    c->remaining = r->clen;
    c->line_len = 0;
    if (has_body && r->expect_continue) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        if (conn_write_copy(c, cont, sizeof(cont) - 1) < 0)
            return;
    }
    if (has_body && r->act == A_SLOW_READ && r->delay_ms > 0) {
        c->paused = 1;
        if (c->reading) {
            uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = 0;
        }
        timer_arm(c, T_SLOW_READ, r->delay_ms);
        r->delay_ms = 0;
    }
}

static void on_complete(struct conn *c)
{
    struct request *r = &c->req;
    c->st = RS_BUSY;
    if (r->control) {
        respond_control(c);
    } else if (r->act == A_HANG) {
        c->st = RS_HANG;
        if (c->peer_eof)
            conn_close(c); /* nobody left to hang up on */
        else
            read_start(c);
    } else if (r->delay_ms > 0) {
        timer_arm(c, T_HEAD_DELAY, r->delay_ms);
    } else {
        act_now(c);
    }
}

/* Scans a CRLF- or LF-terminated line from the input; returns its length (without the
 * terminator) and consumes it, or -1 when incomplete, or -2 when too long. */
static long take_line(struct conn *c, char **line)
{
    char *p = c->in + c->in_off;
    size_t n = c->in_len - c->in_off;
    char *nl = memchr(p, '\n', n);
    if (!nl)
        return n > TU_LINE_MAX ? -2 : -1;
    size_t len = (size_t)(nl - p);
    if (len > TU_LINE_MAX)
        return -2;
    c->in_off += len + 1;
    if (len && p[len - 1] == '\r')
        len--;
    p[len] = '\0';
    *line = p;
    return (long)len;
}

static void process(struct conn *c)
{
    while (!c->closing && !c->paused) {
        size_t avail = c->in_len - c->in_off;
        switch (c->st) {
        case RS_HEAD: {
            const char *why = NULL;
            int rc = parse_head(c, &why);
            if (rc < 0) {
                bad_request(c, why);
                return;
            }
            if (rc == 0) {
                if (c->peer_eof) {
                    if (c->in_len == c->in_off)
                        conn_finish(c);
                    else
                        conn_close(c);
                }
                return;
            }
            on_head(c);
            break;
        }
        case RS_BODY_CL: {
            if (avail == 0)
                goto need_more;
            size_t n = avail < c->remaining ? avail : (size_t)c->remaining;
            body_bytes(&c->req, c->in + c->in_off, n);
            c->in_off += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->st = RS_COMPLETE;
            break;
        }
        case RS_CHUNK_SIZE: {
            char *line;
            long len = take_line(c, &line);
            if (len == -1)
                goto need_more;
            char *endp;
            errno = 0;
            unsigned long long sz = len > 0 ? strtoull(line, &endp, 16) : 0;
            if (len < 0 || len == 0 || !isxdigit((unsigned char)line[0]) || errno ||
                (*endp && *endp != ';' && *endp != ' ' && *endp != '\t') || sz > (1ULL << 62)) {
                bad_request(c, "bad chunk size");
                return;
            }
            c->remaining = sz;
            c->st = sz ? RS_CHUNK_DATA : RS_CHUNK_TRAILER;
            break;
        }
        case RS_CHUNK_DATA: {
            if (avail == 0)
                goto need_more;
            size_t n = avail < c->remaining ? avail : (size_t)c->remaining;
            body_bytes(&c->req, c->in + c->in_off, n);
            c->in_off += n;
            c->remaining -= n;
            if (c->remaining == 0)
                c->st = RS_CHUNK_CRLF;
            break;
        }
        case RS_CHUNK_CRLF:
        case RS_CHUNK_TRAILER: {
            char *line;
            long len = take_line(c, &line);
            if (len == -1)
                goto need_more;
            if (len == -2 || (c->st == RS_CHUNK_CRLF && len != 0)) {
                bad_request(c, "bad chunk framing");
                return;
            }
            if (c->st == RS_CHUNK_CRLF)
                c->st = RS_CHUNK_SIZE;
            else if (len == 0)
                c->st = RS_COMPLETE;
            break;
        }
        case RS_COMPLETE:
            on_complete(c);
            return;
        case RS_BUSY:
        case RS_WS:
        case RS_HANG:
        case RS_LINGER:
            return;
        }
        continue;
    need_more:
        if (c->peer_eof)
            conn_close(c); /* the peer left mid-request */
        return;
    }
}

/* ---- reading ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct conn *c = h->data;
    if (c->st == RS_HANG || c->st == RS_LINGER) {
        *buf = uv_buf_init(discard, sizeof(discard));
        return;
    }
    if (c->in_off > 0) {
        memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
        c->in_len -= c->in_off;
        c->in_off = 0;
    }
    size_t want = 64 * 1024;
    if (c->in_cap - c->in_len < want) {
        c->in_cap = c->in_len + want + 1;
        c->in = xrealloc(c->in, c->in_cap);
    }
    *buf = uv_buf_init(c->in + c->in_len, (unsigned)(c->in_cap - c->in_len - 1));
}

static void read_start(struct conn *c)
{
    if (c->reading || c->closing)
        return;
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
        c->reading = 1;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct conn *c = s->data;
    if (c->closing)
        return;
    if (nread == 0)
        return;
    if (nread < 0) {
        uv_read_stop(s);
        c->reading = 0;
        if (nread != UV_EOF) {
            conn_close(c);
            return;
        }
        c->peer_eof = 1;
        if (c->st == RS_WS)
            ws_process(c);
        else if (c->st == RS_HANG || c->st == RS_LINGER)
            conn_close(c);
        else if (c->st != RS_BUSY)
            process(c);
        return;
    }
    if (c->st == RS_HANG || c->st == RS_LINGER)
        return;
    c->in_len += (size_t)nread;
    if (c->st == RS_WS) {
        ws_process(c);
        return;
    }
    if (c->st == RS_BUSY) {
        if (c->in_len - c->in_off > TU_INBUF_MAX) {
            uv_read_stop(s);
            c->reading = 0;
        }
        return;
    }
    process(c);
}

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0 || g.stopping)
        return;
    struct conn *c = xcalloc(1, sizeof(*c));
    c->ls = server->data;
    uv_tcp_init(g.loop, &c->tcp);
    uv_timer_init(g.loop, &c->timer);
    c->tcp.data = c->timer.data = c;
    c->handles_open = 2;
    c->piece = TU_PIECE;
    c->next = g.conns;
    if (g.conns)
        g.conns->prev = c;
    g.conns = c;
    g.open++;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_close(c);
        return;
    }
    g.accepted++;
    c->serial = ++g.conn_serial;
    uv_tcp_nodelay(&c->tcp, 1);
    read_start(c);
}

/* ---- startup and shutdown ----------------------------------------------------------------- */

static void on_listener_closed(uv_handle_t *h)
{
    (void)h;
}

static void stop_all(void)
{
    if (g.stopping)
        return;
    g.stopping = 1;
    for (int i = 0; i < g.nls; i++)
        uv_close((uv_handle_t *)&g.ls[i].tcp, on_listener_closed);
    while (g.conns)
        conn_close(g.conns);
    for (int i = 0; i < 3; i++)
        uv_close((uv_handle_t *)&g.sig[i], NULL);
}

static void on_signal(uv_signal_t *h, int signum)
{
    if (signum == SIGHUP) {
        fprintf(stderr, "lv-testupstream: SIGHUP received\n");
        return;
    }
    stop_all();
}

static int listen_on(const char *spec)
{
    if (g.nls >= TU_MAX_LISTENERS) {
        fprintf(stderr, "lv-testupstream: too many listeners\n");
        return -1;
    }
    struct listener *l = &g.ls[g.nls];
    const char *colon = strrchr(spec, ':');
    if (!colon || colon == spec || (size_t)(colon - spec) >= sizeof(l->host)) {
        fprintf(stderr, "lv-testupstream: bad --listen %s (want HOST:PORT)\n", spec);
        return -1;
    }
    memcpy(l->host, spec, (size_t)(colon - spec));
    l->host[colon - spec] = '\0';
    long long port = parse_num(colon + 1);
    if (port < 0 || port > 65535) {
        fprintf(stderr, "lv-testupstream: bad port in %s\n", spec);
        return -1;
    }
    struct sockaddr_storage ss;
    char host[80];
    snprintf(host, sizeof(host), "%s", l->host);
    if (host[0] == '[') {
        size_t hl = strlen(host);
        if (hl > 2 && host[hl - 1] == ']') {
            memmove(host, host + 1, hl - 2);
            host[hl - 2] = '\0';
        }
    }
    if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)&ss) != 0) {
        fprintf(stderr, "lv-testupstream: bad address %s\n", spec);
        return -1;
    }
    uv_tcp_init(g.loop, &l->tcp);
    l->tcp.data = l;
    g.nls++;
    int rc = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 4096, on_connection);
    if (rc != 0) {
        fprintf(stderr, "lv-testupstream: listen %s: %s\n", spec, uv_strerror(rc));
        return -1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &blen);
    l->port = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                          : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    return 0;
}

static void usage(FILE *f)
{
    fprintf(f, "usage: lv-testupstream --listen HOST:PORT [--listen HOST:PORT ...] [--name NAME]\n"
               "Programmable HTTP/1.1 upstream for levee's specs; see spec/support/README.md.\n");
}

int main(int argc, char **argv)
{
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    for (size_t i = 0; i < sizeof(pattern); i++)
        pattern[i] = (char)('a' + i % 26);
    g.loop = uv_default_loop();
    g.name = "upstream";
    int rc = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
            if (listen_on(argv[++i]) < 0) {
                rc = 1;
                break;
            }
        } else if (strcmp(argv[i], "--name") == 0 && i + 1 < argc) {
            g.name = argv[++i];
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else {
            usage(stderr);
            rc = 2;
            break;
        }
    }
    if (rc == 0 && g.nls == 0) {
        usage(stderr);
        rc = 2;
    }
    if (rc != 0) {
        for (int i = 0; i < g.nls; i++)
            uv_close((uv_handle_t *)&g.ls[i].tcp, NULL);
        uv_run(g.loop, UV_RUN_DEFAULT);
        uv_loop_close(g.loop);
        return rc;
    }
    static const int sigs[3] = {SIGTERM, SIGINT, SIGHUP};
    for (int i = 0; i < 3; i++) {
        uv_signal_init(g.loop, &g.sig[i]);
        uv_signal_start(&g.sig[i], on_signal, sigs[i]);
    }
    for (int i = 0; i < g.nls; i++)
        printf("listening %s:%d\n", g.ls[i].host, g.ls[i].port);
    fflush(stdout);

    uv_run(g.loop, UV_RUN_DEFAULT);
    ctab_clear(&g.by_path);
    ctab_clear(&g.by_port);
    ctab_clear(&g.plans);
    free(g.last_raw);
    if (uv_loop_close(g.loop) != 0) {
        fprintf(stderr, "lv-testupstream: handles left open at exit\n");
        return 1;
    }
    return 0;
}
