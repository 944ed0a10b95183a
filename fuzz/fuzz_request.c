/*
 * fuzz_request: the client side of a connection, fed the input as the bytes a client sends.
 * It drives the parsers the way the client connection and the request do (client.c
 * client_process, request.c lv_request_begin, reqbody.c lv_reqbody_pump): empty lines skipped
 * before a request, headscan in request mode with the default limits, lv_reqhead_parse on the
 * complete head, the checks made before the body is read, then the body de-framer (Content-Length
 * or chunked as the head says) on the bytes after the head, then the next pipelined request on a
 * kept-alive connection. The input is run as one read, split into pieces at offsets derived
 * from it, and (when short) one byte per read; the transcripts must be identical.
 */
#include <stdlib.h>
#include <string.h>

#include "common.h"
#include "http/fields.h"
#include "http/headscan.h"
#include "httpfz.h"

/* The defaults of limits.* (lua/levee/config.lua) and request.c's field array. */
#define HEADER_SIZE  (32 * 1024)
#define REQUEST_LINE (8 * 1024)
#define HEADER_COUNT 100
#define BODY_SIZE    ((uint64_t)16 << 20)
#define MAX_FIELDS   256
#define MAX_REQUESTS 64 /* pipelined requests followed per input */

enum conn_state { C_IDLE, C_HEAD, C_BODY, C_CLOSED };

struct conn {
    struct fz_log log;
    struct fz_bytes in; /* received, not consumed */
    size_t base;        /* stream offset of in.p[0] */
    enum conn_state state;
    struct lv_headscan hs;
    struct lv_body body;
    struct fz_sink sink;
    bool keep_alive; /* of the request whose body is being read */
    unsigned requests;
};

static void conn_close(struct conn *c, const char *why)
{
    fz_logf(&c->log, "close: %s\n", why);
    c->state = C_CLOSED;
}

/* The request is done: the next one follows on a kept-alive connection. */
static void request_done(struct conn *c, bool keep_alive)
{
    if (!keep_alive) {
        conn_close(c, "not keep-alive");
        return;
    }
    if (++c->requests == MAX_REQUESTS) {
        conn_close(c, "enough requests");
        return;
    }
    c->state = C_IDLE;
}

/* A complete head of head_len bytes at the start of c->in: lv_request_begin. */
static void begin_request(struct conn *c, size_t head_len)
{
    /* The head alone in an exact allocation: the parser must not look past head_len. */
    char *head = fz_dup(c->in.p, head_len);
    struct lv_field fields[MAX_FIELDS];
    struct lv_reqhead h;
    uint32_t maxf = HEADER_COUNT < MAX_FIELDS ? HEADER_COUNT : MAX_FIELDS;
    int st = lv_reqhead_parse(&h, head, head_len, fields, maxf);
    fz_log_reqhead(&c->log, st, &h, head, head_len);
    if (st != 0) {
        free(head);
        conn_close(c, "bad request head");
        return;
    }
    if (h.chunked && h.has_content_length)
        fz_fail("lv_reqhead_parse: accepted chunked with a Content-Length");
    if (!h.path.len)
        fz_fail("lv_reqhead_parse: accepted an empty path");
    if (h.minor == 1 && !h.host.len)
        fz_fail("lv_reqhead_parse: accepted HTTP/1.1 without a host");
    bool safe = lv_path_safe(h.path.p, h.path.len);
    char host[256];
    size_t host_len = 0;
    int port = -1;
    bool split =
        h.host.len && lv_host_split(h.host.p, h.host.len, host, sizeof(host), &host_len, &port);
    fz_logf(&c->log, "path_safe=%d host_split=%d:%.*s:%d\n", safe, split, split ? (int)host_len : 0,
            split ? host : "", port);
    int body_kind = h.chunked ? 2 : (h.has_content_length && h.content_length > 0 ? 1 : 0);
    uint64_t cl = h.content_length;
    bool keep_alive = h.keep_alive;
    bool expect_other = h.expect_other;
    free(head);

    fz_bytes_consume(&c->in, head_len);
    c->base += head_len;
    if (!safe) {
        conn_close(c, "400 path");
        return;
    }
    if (expect_other) {
        conn_close(c, "417");
        return;
    }
    if (body_kind == 1 && cl > BODY_SIZE) {
        conn_close(c, "413 Content-Length");
        return;
    }
    if (!body_kind) {
        request_done(c, keep_alive);
        return;
    }
    lv_body_init(&c->body, body_kind == 2 ? LV_BODY_CHUNKED : LV_BODY_LENGTH, cl, BODY_SIZE);
    c->sink = (struct fz_sink){0, FZ_HASH_INIT};
    c->keep_alive = keep_alive;
    c->state = C_BODY;
}

/* pump_body: everything received goes through the de-framer. */
static void pump_body(struct conn *c)
{
    if (c->in.len == 0)
        return;
    size_t used = 0;
    int rc = fz_body_feed(&c->body, c->in.p, c->in.len, &used, &c->sink);
    fz_bytes_consume(&c->in, used);
    c->base += used;
    if (rc == 0)
        return;
    fz_logf(&c->log, "body rc=%d n=%llu hash=%016llx end=%zu wire=%llu reason=%s\n", rc,
            (unsigned long long)c->sink.n, (unsigned long long)c->sink.hash, c->base,
            (unsigned long long)c->body.wire, rc == 1 ? "-" : c->body.reason);
    if (rc == 1)
        request_done(c, c->keep_alive);
    else
        conn_close(c, rc == -2 ? "413 body" : "400 body");
}

/* client_process */
static void process(struct conn *c)
{
    for (;;) {
        switch (c->state) {
        case C_CLOSED:
            return;
        case C_BODY:
            pump_body(c);
            if (c->state == C_BODY)
                return;
            continue;
        case C_IDLE: {
            size_t skip = 0;
            while (skip + 1 < c->in.len && c->in.p[skip] == '\r' && c->in.p[skip + 1] == '\n' &&
                   skip < 4)
                skip += 2;
            fz_bytes_consume(&c->in, skip);
            c->base += skip;
            if (c->in.len == 0)
                return;
            c->state = C_HEAD;
            lv_headscan_init(&c->hs, false, HEADER_SIZE, REQUEST_LINE, HEADER_COUNT);
            continue;
        }
        case C_HEAD: {
            enum lv_headscan_result r = lv_headscan_feed(&c->hs, c->in.p, c->in.len);
            if (r == LV_HEADSCAN_MORE) {
                if (c->hs.pos > c->in.len)
                    fz_fail("headscan: position %zu past %zu bytes", c->hs.pos, c->in.len);
                return;
            }
            if (r == LV_HEADSCAN_ERROR) {
                int st = c->hs.status;
                if (!c->hs.reason || (st != 400 && st != 414 && st != 431 && st != 505))
                    fz_fail("headscan: error %d (%s)", st, c->hs.reason ? c->hs.reason : "none");
                /* The status and reason must not depend on the split; where exactly the
                 * scanner stopped is logged too. */
                fz_logf(&c->log, "headscan error %d at %zu: %s\n", st, c->base + c->hs.pos,
                        c->hs.reason);
                conn_close(c, "bad head");
                return;
            }
            fz_check_head_end(c->in.p, c->in.len, c->hs.head_len);
            fz_logf(&c->log, "head end=%zu fields=%u\n", c->base + c->hs.head_len, c->hs.fields);
            begin_request(c, c->hs.head_len);
            continue;
        }
        }
    }
}

static void run(struct fz_log *out, const uint8_t *data, size_t size, const struct fz_split *how)
{
    struct conn c;
    memset(&c, 0, sizeof(c));
    c.state = C_IDLE;
    for (size_t k = 0; k < how->n && c.state != C_CLOSED; k++) {
        size_t off, len;
        fz_split_piece(how, k, &off, &len);
        fz_bytes_append(&c.in, data + off, len);
        process(&c);
    }
    /* The client closes: on_read with UV_EOF. */
    switch (c.state) {
    case C_IDLE:
    case C_HEAD:
        /* Idle or a partial head: closed silently either way (and where the head began
         * depends on how many empty lines the idle state skipped). */
        fz_logf(&c.log, "eof without a complete head\n");
        break;
    case C_BODY: {
        enum lv_body_result r = lv_body_eof(&c.body);
        fz_logf(&c.log, "eof in body: %d %s\n", (int)r, r == LV_BODY_DONE ? "-" : c.body.reason);
        break;
    }
    case C_CLOSED:
        break;
    }
    fz_bytes_free(&c.in);
    *out = c.log;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fz_split whole, split;
    struct fz_log a, b;
    fz_split_whole(&whole, size);
    run(&a, data, size, &whole);

    fz_split_random(&split, data, size, 1);
    run(&b, data, size, &split);
    fz_compare("fuzz_request", &a, &b, &split);
    fz_log_free(&b);

    if (size <= 512) {
        fz_split_bytewise(&split, size);
        run(&b, data, size, &split);
        fz_compare("fuzz_request", &a, &b, &split);
        fz_log_free(&b);
    }
    fz_log_free(&a);
    return 0;
}
