
#include <assert.h>
#include <stdio.h>

#include "base/log.h"
#include "proxy/request.h"
#include "conf/config.h"

/* Body bytes held before a connection is taken and kept for replay: the larger of the replay
 * buffer and the request buffer (a body held whole can always be sent again). */
static size_t hold_cap(const struct lv_request *r)
{
    size_t b = r->route->retry.buffer, q = r->route->request_buffer;
    return q > b ? q : b;
}

struct body_sink {
    struct lv_request *r;
    bool write_up;
    int err;
};

static void on_body_data(struct body_sink *k, const char *p, size_t n)
{
    struct lv_request *r = k->r;
    r->body_in += n;
    r->bytes_in += n;
    if (r->replay_valid) {
        if (r->replay.len + n <= hold_cap(r))
            lv_buf_append(&r->replay, p, n);
        else
            r->replay_valid = false;
    }
    if (!k->write_up)
        return;
    uv_buf_t b[3];
    unsigned nb = 0;
    char sz[24];
    if (r->body_kind == LV_REQ_BODY_CHUNKED) {
        int m = snprintf(sz, sizeof(sz), "%zx\r\n", n);
        b[nb++] = uv_buf_init(sz, (unsigned)m);
    }
    b[nb++] = uv_buf_init((char *)p, (unsigned)n);
    if (r->body_kind == LV_REQ_BODY_CHUNKED)
        b[nb++] = uv_buf_init("\r\n", 2);
    if (lv_attempt_write(r, b, nb) < 0)
        k->err = 1;
    r->body_sent_any = true;
}

/* Runs the de-framer over data[0..len). Returns 1 when the body is complete, 0 when more
 * input is needed, -1 on bad framing, -2 over the size limit; *used_total: bytes consumed. */
static int body_feed(struct body_sink *k, const char *data, size_t len, size_t *used_total)
{
    size_t off = 0;
    for (;;) {
        size_t used = 0;
        struct lv_span span;
        enum lv_body_result res =
            lv_body_next(&k->r->body_dec, data + off, len - off, &used, &span);
        off += used;
        *used_total = off;
        switch (res) {
        case LV_BODY_DATA:
            on_body_data(k, span.p, span.len);
            continue;
        case LV_BODY_MORE:
            return 0;
        case LV_BODY_DONE:
            return 1;
        case LV_BODY_TOO_LARGE:
            return -2;
        default:
            return -1;
        }
    }
}

static void send_body_end(struct lv_request *r)
{
    if (r->body_final_sent || !r->head_written)
        return;
    if (r->body_kind == LV_REQ_BODY_CHUNKED) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        lv_attempt_write(r, &b, 1);
    }
    r->body_final_sent = true;
}

/* The body cannot go on: an error answer when no response byte went out yet, else a broken
 * response. The connection closes either way (the rest of the body is unread). */
static void body_failed(struct lv_request *r, enum lv_gwerr err, const char *detail)
{
    r->resp_close = true;
    if (!r->head_sent) {
        lv_attempt_release(r, false);
        lv_request_fail(r, err, detail, -1, true);
    } else {
        lv_request_abort_client(r, 0);
    }
}

void lv_reqbody_pump(struct lv_request *r)
{
    struct lv_downstream *ds = r->ds;
    if (!lv_request_active(r))
        return;
    if (r->body_done) {
        if (r->head_written)
            send_body_end(r);
        lv_idem_filter_body_done(r);
        return;
    }
    bool connected = r->uc && r->head_written;
    while (ds->in.len > 0 && !r->body_done) {
        size_t feed = ds->in.len;
        if (connected) {
            if (!lv_attempt_body_room(r))
                break;
        } else {
            /* Not connected yet: only take what the replay buffer can hold. */
            if (!r->replay_valid)
                break;
            size_t room = hold_cap(r) - r->replay.len;
            if (room == 0) {
                if (r->idem.state == LV_IDEMF_WAIT_BODY) {
                    body_failed(r, LV_GWERR_BODY_TOO_LARGE,
                                "keyed request bodies are kept up to retry.buffer");
                    return;
                }
                break;
            }
            if (feed > room)
                feed = room;
        }
        struct body_sink k = {r, connected, 0};
        size_t used = 0;
        int rc = body_feed(&k, ds->in.data, feed, &used);
        lv_buf_consume(&ds->in, used);
        if (rc == -1) {
            /* Bad chunked framing from the client. */
            r->body_done = true;
            body_failed(r, LV_GWERR_BAD_REQUEST, r->body_dec.reason);
            return;
        }
        if (rc == -2) {
            body_failed(r, LV_GWERR_BODY_TOO_LARGE, NULL);
            return;
        }
        if (rc == 1) {
            r->body_done = true;
            lv_request_clock_clear(r, LV_CLOCK_BODY);
        }
        if (used == 0)
            break;
    }
    if (ds->in.len > 0)
        r->body_held = true; /* we are the bottleneck in this rate window, not the client */
    ds->ops->consumed(ds);
    if (r->body_done && connected)
        send_body_end(r);
    if (r->body_done)
        lv_idem_filter_body_done(r);
}

/* Buffering ends when the body is all in, or request_buffer bytes are (the rest streams). */
static void buffering_check(struct lv_request *r)
{
    if (r->phase != LV_REQ_RECEIVING || r->idem.state != LV_IDEMF_OFF)
        return;
    if (r->body_done || !r->replay_valid || r->replay.len >= r->route->request_buffer)
        lv_attempt_start(r);
}

void lv_reqbody_client_data(struct lv_request *r)
{
    lv_reqbody_pump(r);
    if (lv_request_active(r))
        buffering_check(r);
}

void lv_reqbody_begin(struct lv_request *r)
{
    const struct lv_limits_cfg *lim = &r->cfg->limits;
    if (r->body_kind != LV_REQ_BODY_NONE)
        lv_body_init(&r->body_dec,
                     r->body_kind == LV_REQ_BODY_CHUNKED ? LV_BODY_CHUNKED : LV_BODY_LENGTH,
                     r->body_cl, lim->body_size);
    if (r->expect_continue && r->body_kind != LV_REQ_BODY_NONE) {
        /* We answer the expectation ourselves (Expect is not forwarded). */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        lv_ds_write(r->ds, cont, sizeof(cont) - 1);
    }
    /* Request buffering: a body up to request_buffer is received before an upstream connection
     * is taken, so a slow client holds no upstream capacity (README, "Request buffering"). A
     * keyed request first reads its whole body (the store is asked when it is in). */
    bool buffering = r->body_kind != LV_REQ_BODY_NONE && r->route->request_buffer > 0;
    r->body_held = false;
    r->body_mark = 0;
    if (r->idem.state == LV_IDEMF_OFF && !buffering)
        lv_attempt_start(r);
    else
        r->phase = LV_REQ_RECEIVING;
    lv_reqbody_pump(r);
    if (lv_request_active(r))
        buffering_check(r);
    /* Only a body still on its way needs the body timer (most arrive with their head). */
    if (lv_request_active(r) && !r->body_done)
        lv_request_clock_set(r, LV_CLOCK_BODY, lim->body_timeout_ms);
}

/*
 * limits.body_timeout and limits.body_rate. While the body is being received before the first
 * attempt (buffered, or read whole for an idempotency key) it must all arrive within
 * body_timeout. Once it streams, each window of body_timeout must bring at least body_rate
 * bytes per second (at least one byte), except a window in which we left client bytes unread:
 * then the upstream or our own wait for a connection was the bottleneck, not the client.
 */
void lv_reqbody_clock(struct lv_request *r)
{
    assert(lv_request_active(r) && !r->body_done);
    const struct lv_limits_cfg *lim = &r->cfg->limits;
    if (r->phase == LV_REQ_RECEIVING) {
        lv_debug("client %s: request body not received within limits.body_timeout", r->ds->peer);
        body_failed(r, LV_GWERR_REQUEST_TIMEOUT,
                    "request body not received within limits.body_timeout");
        return;
    }
    uint64_t need = (uint64_t)lim->body_rate * lim->body_timeout_ms / 1000;
    if (!r->body_held && r->ds->in.len == 0 && r->body_in - r->body_mark < (need ? need : 1)) {
        lv_debug("client %s: request body slower than limits.body_rate", r->ds->peer);
        body_failed(r, LV_GWERR_REQUEST_TIMEOUT, "request body slower than limits.body_rate");
        return;
    }
    r->body_held = false;
    r->body_mark = r->body_in;
    lv_request_clock_set(r, LV_CLOCK_BODY, lim->body_timeout_ms);
}
