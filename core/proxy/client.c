#include "proxy/client.h"
#include "proxy/clientslow.h"

#include <assert.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "http/headscan.h"
#include "net/iobufs.h"
#include "net/tls.h"
#include "obs/accesslog.h"
#include "obs/devline.h"
#include "proxy/errresp.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "proxy/tunnel.h"

/* Bytes we read ahead of the request being served (pipelined heads, body) before pausing. */
#define INPUT_HIGH (64 * 1024)
/* How long a closing connection keeps draining unread input so the client sees our answer. */
#define LINGER_MS 2000

struct write_req {
    uv_write_t req;
    struct lv_client *c;
    size_t len;
    char *owned; /* a buffer handed over by client_write_buf, or NULL */
    char data[];
};

static void client_process(struct lv_client *c);
static void on_timer(uv_timer_t *t);
static void timer_take(struct lv_client *c, uv_timer_cb cb, uint64_t timeout_ms);
static int raw_write_buf(struct lv_client *c, struct lv_buf *b);
static void client_close(struct lv_client *c, bool reset);
static void input_release(struct lv_client *c);
static void client_error_close(struct lv_client *c, int status, enum lv_gwerr err,
                               const char *reason);
static int client_writev(struct lv_client *c, const uv_buf_t *bufs, unsigned nbufs);

/* ---- list */

/* Each worker's count is also published for the others: accepting on a shared socket gives
 * a connection to the worker with the fewest (proxy/listener.c), and max_connections counts
 * the whole process. */
static void list_add(struct lv_server *s, struct lv_client *c)
{
    lv_dlist_push(&s->clients, &c->link);
    s->nclients++;
    atomic_store_explicit(&s->sh->conns[s->worker], s->nclients, memory_order_relaxed);
}

static void list_remove(struct lv_server *s, struct lv_client *c)
{
    lv_dlist_remove(&c->link);
    s->nclients--;
    atomic_store_explicit(&s->sh->conns[s->worker], s->nclients, memory_order_relaxed);
}

/* ---- closing */

static void on_handle_closed(uv_handle_t *h)
{
    struct lv_client *c = h->data;
    if (--c->open_handles > 0)
        return;
    struct lv_server *s = c->server;
    list_remove(s, c);
    c->ds.in.len = 0;
    input_release(c);
    lv_buf_dispose(&c->tls_out);
    if (c->tls)
        lv_tls_free(c->tls);
    if (c->slow)
        lv_client_slow_free(c->slow);
    free(c);
    lv_server_client_closed(s, NULL);
}

static void client_close(struct lv_client *c, bool reset)
{
    if (c->ds.closed)
        return;
    c->ds.closed = true;
    c->state = LV_CLIENT_CLOSING;
    if (c->req) {
        struct lv_request *r = c->req;
        c->req = NULL;
        lv_request_client_gone(r);
        lv_request_put(r);
    }
    if (c->ds.tunnel) {
        struct lv_tunnel *t = c->ds.tunnel;
        c->ds.tunnel = NULL;
        lv_tunnel_client_gone(t);
    }
    uv_timer_stop(&c->timer);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    if (c->slow)
        uv_close((uv_handle_t *)&c->slow->timer, on_handle_closed);
    if (reset)
        uv_tcp_close_reset(&c->tcp, on_handle_closed);
    else
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

static void on_linger_timeout(uv_timer_t *t)
{
    client_close(t->data, false);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct lv_client *c = req->data;
    if (c->ds.closed)
        return;
    if (c->state == LV_CLIENT_TUNNEL) { /* our write side is done; reading goes on */
        if (status < 0)
            client_close(c, true);
        else if (c->ds.tunnel)
            lv_tunnel_client_shut(c->ds.tunnel);
        return;
    }
    if (status < 0 || c->eof) {
        client_close(c, false);
        return;
    }
    /* Keep reading (and discarding) for a moment: closing with unread input would send an
     * RST that can destroy the response before the client reads it. */
    c->lingering = true;
    timer_take(c, on_linger_timeout, LINGER_MS);
}
/* Close after everything queued has been written. */
static void shutdown_after_write(struct lv_client *c);

static void client_close_after_write(struct lv_client *c)
{
    if (c->ds.closed || c->state == LV_CLIENT_CLOSING)
        return;
    c->state = LV_CLIENT_CLOSING;
    if (c->slow && c->slow->q.len) {
        /* The throttle lets the rest out first (on_slow_tick); bounded all the same. */
        uint64_t to = c->server->cfg->limits.send_timeout_ms;
        c->slow->close_after = true;
        timer_take(c, on_linger_timeout,
                   (to ? to : 60000) + c->slow->q.len * 1000 / (c->slow->rate ? c->slow->rate : 1));
        return;
    }
    shutdown_after_write(c);
}

static void shutdown_after_write(struct lv_client *c)
{
    uint64_t to = c->server->cfg->limits.send_timeout_ms;
    timer_take(c, on_linger_timeout, to ? to : 60000);
    if (c->tls) {
        lv_tls_shutdown(c->tls, &c->tls_out);
        raw_write_buf(c, &c->tls_out);
        if (c->ds.closed)
            return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        client_close(c, false);
}

/* ---- writing */

static void on_write(uv_write_t *req, int status)
{
    struct write_req *w = (struct write_req *)req;
    struct lv_client *c = w->c;
    c->ds.write_queued -= w->len;
    free(w->owned);
    free(w);
    if (c->ds.closed)
        return;
    if (status < 0) {
        client_close(c, true);
        return;
    }
    c->last_write_ms = uv_now(c->server->loop);
    if (c->req && c->ds.write_queued <= LV_DOWNSTREAM_WRITE_HIGH / 4)
        lv_request_client_drained(c->req);
    else if (c->ds.tunnel && c->ds.write_queued <= LV_DOWNSTREAM_WRITE_HIGH / 4)
        lv_tunnel_client_drained(c->ds.tunnel);
}

/* Write what the socket takes now, without going through libuv's queue: a fully written
 * uv_write still costs an epoll_ctl (libuv re-arms the watcher), uv_try_write does not.
 * Returns bytes written (maybe partial), or -1 when the connection broke (closed). */
static ssize_t try_write_now(struct lv_client *c, const uv_buf_t *bufs, unsigned nbufs)
{
    if (c->ds.write_queued > (c->slow ? c->slow->counted : 0))
        return 0; /* keep order behind what is queued */
    int n = uv_try_write((uv_stream_t *)&c->tcp, bufs, nbufs);
    if (n == UV_EAGAIN)
        return 0;
    if (n < 0) {
        client_close(c, true);
        return -1;
    }
    c->last_write_ms = uv_now(c->server->loop);
    return n;
}

static void queue_write(struct lv_client *c, struct write_req *w, char *base, size_t len)
{
    uv_buf_t b = uv_buf_init(base, (unsigned)len);
    if (c->ds.write_queued == 0)
        c->last_write_ms = uv_now(c->server->loop);
    w->c = c;
    w->len = len;
    c->ds.write_queued += len;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, on_write) < 0) {
        c->ds.write_queued -= len;
        free(w->owned);
        free(w);
        client_close(c, true);
    }
}

static int wire_writev(struct lv_client *c, const uv_buf_t *bufs, unsigned nbufs)
{
    size_t total = lv_iobufs_total(bufs, nbufs);
    if (total == 0)
        return 0;
    ssize_t done = try_write_now(c, bufs, nbufs);
    if (done < 0)
        return -1;
    if ((size_t)done == total)
        return 0;
    /* Copy what is left into one queued write. */
    struct write_req *w = lv_xmalloc(sizeof(*w) + total - (size_t)done);
    w->owned = NULL;
    size_t off = lv_iobufs_copy_after(w->data, bufs, nbufs, (size_t)done);
    queue_write(c, w, w->data, off);
    return c->ds.closed ? -1 : 0;
}

static int raw_writev(struct lv_client *c, const uv_buf_t *bufs, unsigned nbufs)
{
    if (c->ds.closed)
        return -1;
    if (lv_client_slowed(c->slow)) {
        for (unsigned i = 0; i < nbufs; i++)
            lv_client_slow_hold(c->slow, bufs[i].base, bufs[i].len);
        return 0;
    }
    return wire_writev(c, bufs, nbufs);
}

static int raw_write_buf(struct lv_client *c, struct lv_buf *b)
{
    if (b->len == 0)
        return 0;
    if (c->ds.closed) {
        b->len = 0;
        return -1;
    }
    if (lv_client_slowed(c->slow)) {
        lv_client_slow_hold(c->slow, b->data, b->len);
        b->len = 0;
        return 0;
    }
    uv_buf_t ub = uv_buf_init(b->data, (unsigned)b->len);
    ssize_t done = try_write_now(c, &ub, 1);
    if (done < 0) {
        b->len = 0;
        return -1;
    }
    if ((size_t)done == b->len) {
        b->len = 0; /* all sent: the buffer keeps its memory for the next response */
        return 0;
    }
    /* The rest goes with a queued write that takes the buffer's memory (no copy). */
    struct write_req *w = lv_xmalloc(sizeof(*w));
    w->owned = b->data;
    char *base = b->data + done;
    size_t len = b->len - (size_t)done;
    *b = (struct lv_buf)LV_BUF_INIT;
    queue_write(c, w, base, len);
    return c->ds.closed ? -1 : 0;
}

/* The throttle (clientslow.c) writes through here, and says when a tick is over. */
static int slow_wire(void *arg, const uv_buf_t *bufs, unsigned nbufs)
{
    return wire_writev(arg, bufs, nbufs);
}

static void slow_ticked(void *arg)
{
    struct lv_client *c = arg;
    if (!c->slow->q.len && !c->req) {
        c->slow->rate = 0; /* the throttled response is out: the next one goes at full speed */
        if (c->slow->close_after) {
            c->slow->close_after = false;
            shutdown_after_write(c);
            return;
        }
    }
    if (c->req && c->ds.write_queued <= LV_DOWNSTREAM_WRITE_HIGH / 4)
        lv_request_client_drained(c->req);
}

static const struct lv_client_slow_ops slow_ops = {slow_wire, slow_ticked};

static void client_throttle(struct lv_client *c, uint64_t rate)
{
    if (!rate || c->ds.closed)
        return;
    if (!c->slow) {
        c->slow = lv_client_slow_new(c->server->loop, &c->ds, &slow_ops, c);
        c->open_handles++;
    }
    lv_client_slow_rate(c->slow, rate);
}

/* HTTPS: plaintext goes through the engine; what it produces goes to the socket. */
static int client_writev(struct lv_client *c, const uv_buf_t *bufs, unsigned nbufs)
{
    if (!c->tls)
        return raw_writev(c, bufs, nbufs);
    if (c->ds.closed)
        return -1;
    for (unsigned i = 0; i < nbufs; i++) {
        if (bufs[i].len && lv_tls_write(c->tls, bufs[i].base, bufs[i].len, &c->tls_out) < 0) {
            client_close(c, true);
            return -1;
        }
    }
    return raw_write_buf(c, &c->tls_out);
}

static int client_write_buf(struct lv_client *c, struct lv_buf *b)
{
    if (!c->tls)
        return raw_write_buf(c, b);
    uv_buf_t ub = uv_buf_init(b->data, (unsigned)b->len);
    int rc = b->len ? client_writev(c, &ub, 1) : 0;
    b->len = 0; /* consumed: the buffer keeps its memory */
    return rc;
}

static int client_write(struct lv_client *c, const char *data, size_t len)
{
    uv_buf_t b = uv_buf_init((char *)data, (unsigned)len);
    return client_writev(c, &b, 1);
}

/* Requests refused before routing get an access-log line too (README, "Access log"), at most
 * LV_REFUSED_LOG_PER_S a second: past that they are only counted (levee_bad_requests_total) and
 * the number not logged goes to the error log once the second is over. */
#define LV_REFUSED_LOG_PER_S 100

/* The budget is the process's, shared by the workers under one lock (the path of garbage,
 * not of traffic). Returns whether a line may be written now (`take`), or only rotates the
 * second and reports what the last one left out. */
static bool refused_budget(struct lv_server *s, bool take)
{
    struct lv_refused_log *rl = &s->sh->refused;
    uint64_t sec = uv_now(s->loop) / 1000;
    uint64_t left_out = 0;
    bool ok = false;
    pthread_mutex_lock(&rl->lock);
    if (sec > rl->second) {
        left_out = rl->unlogged;
        rl->second = sec;
        rl->logged = 0;
        rl->unlogged = 0;
    }
    if (take) {
        ok = rl->logged < LV_REFUSED_LOG_PER_S;
        if (ok)
            rl->logged++;
        else
            rl->unlogged++;
    }
    pthread_mutex_unlock(&rl->lock);
    if (left_out)
        lv_warn("access log: %llu requests refused before routing were not logged (more than %d "
                "a second); levee_bad_requests_total counts them all",
                (unsigned long long)left_out, LV_REFUSED_LOG_PER_S);
    return ok;
}

void lv_client_refused_log_tick(struct lv_server *s)
{
    refused_budget(s, false);
}

static void log_refused(struct lv_client *c, int status, enum lv_gwerr err, const char *rid,
                        size_t bytes_out)
{
    struct lv_server *s = c->server;
    if (!s->access_on || !refused_budget(s, true))
        return;
    struct lv_access_entry e;
    memset(&e, 0, sizeof(e));
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) == 0)
        e.time = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
    e.request_id = lv_access_cstr(rid);
    e.client = c->ds.peer;
    e.status = status;
    e.bytes_in = c->ds.in.len;
    e.bytes_out = bytes_out;
    e.upstream_ms = -1;
    e.error = lv_gwerr_info(err)->token;
    struct lv_buf line = LV_BUF_INIT;
    lv_accesslog_format_as(s->cfg->access_format == LV_ACCESS_FORMAT_CONSOLE, s->cfg->access_color,
                           &e, &line);
    lv_server_access_log(s, line.data, line.len);
    lv_buf_dispose(&line);
}

static void client_error_close(struct lv_client *c, int status, enum lv_gwerr err,
                               const char *reason)
{
    struct lv_server *s = c->server;
    char rid[33];
    lv_server_request_id(s, rid);
    struct lv_buf out = LV_BUF_INIT;
    lv_errresp_format(&out, err, status, NULL, rid, reason, -1, NULL, true, false);
    client_write(c, out.data, out.len);
    size_t sent = out.len;
    lv_buf_dispose(&out);
    if (status == 0)
        status = lv_gwerr_info(err)->status;
    log_refused(c, status, err, rid, sent);
    char code[8];
    snprintf(code, sizeof(code), "%d", status);
    const char *lv[] = {code, NULL};
    lv_metric_add(lv_metric_series(s->m_bad_requests, lv), 1);
    lv_debug("client %s: %d %s", c->ds.peer, status, reason ? reason : "");
    client_close_after_write(c);
}

/* ---- reading */

/* HTTPS reads ciphertext here (per thread = per worker loop), then feeds the engine. */
static _Thread_local char tls_block[64 * 1024];

/* Input buffers of idle connections: a few are kept for the next reads (per loop), the rest
 * are freed, so a busy keep-alive connection does not allocate per request and thousands of
 * idle ones hold no buffers. */
#define INPUT_POOL_MAX 64
#define INPUT_BUF_SIZE 16384
static _Thread_local struct {
    char *bufs[INPUT_POOL_MAX];
    unsigned n;
} input_pool;

/* An idle connection's read lands here; its bytes are then copied to a buffer of its own. */
static _Thread_local char first_block[INPUT_BUF_SIZE];

static void input_release(struct lv_client *c)
{
    struct lv_buf *in = &c->ds.in;
    assert(in->len == 0);
    if (in->cap == INPUT_BUF_SIZE && input_pool.n < INPUT_POOL_MAX && !c->server->draining) {
        input_pool.bufs[input_pool.n++] = in->data;
        *in = (struct lv_buf)LV_BUF_INIT;
    } else {
        lv_buf_dispose(in);
    }
}

static void input_pool_free(void)
{
    while (input_pool.n)
        free(input_pool.bufs[--input_pool.n]);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct lv_client *c = h->data;
    if (c->tls) {
        buf->base = tls_block;
        buf->len = sizeof(tls_block);
        return;
    }
    if (c->ds.in.cap == 0) {
        /* No buffer (idle): read into the loop's block first, so a read that brings nothing
         * (the end of the stream, a reset) costs no allocation (see on_read). */
        buf->base = first_block;
        buf->len = sizeof(first_block);
        return;
    }
    size_t want = c->ds.in.len < 16384 ? 16384 : 32768;
    buf->base = lv_buf_reserve(&c->ds.in, want);
    buf->len = c->ds.in.cap - c->ds.in.len;
}

static void start_timer_for_state(struct lv_client *c);

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct lv_client *c = stream->data;
    if (c->ds.closed)
        return;
    if (nread == 0)
        return;
    if (c->lingering) {
        if (nread < 0)
            client_close(c, false);
        c->ds.in.len = 0; /* discard */
        return;
    }
    if (nread < 0) {
        c->eof = true;
        uv_read_stop(stream);
        c->reading = false;
        if (nread != UV_EOF) {
            /* Reset (not a half-close): the client is gone; abort its request at once so
             * the upstream connection and its pool slot are freed. */
            client_close(c, false);
            return;
        }
        if (c->state == LV_CLIENT_REQUEST && c->req) {
            lv_request_client_eof(c->req);
            return;
        }
        if (c->state == LV_CLIENT_TUNNEL && c->ds.tunnel) {
            lv_tunnel_client_eof(c->ds.tunnel);
            return;
        }
        if (c->state == LV_CLIENT_CLOSING)
            return;
        client_close(c, false);
        return;
    }
    if (c->tls) {
        int rc =
            lv_tls_feed(c->tls, buf->base, (size_t)nread, lv_tls_collect, &c->ds.in, &c->tls_out);
        raw_write_buf(c, &c->tls_out); /* handshake records, alerts */
        if (rc < 0) {
            lv_debug("client %s: TLS: %s", c->ds.peer, lv_tls_error(c->tls));
            client_close(c, false);
            return;
        }
        if (c->ds.closed)
            return;
        if (c->ds.in.len)
            client_process(c);
        if (rc == 1 && !c->ds.closed) {
            /* close_notify: the same as a TCP end of stream */
            static const uv_buf_t none = {NULL, 0};
            on_read(stream, UV_EOF, &none);
        }
        return;
    }
    if (buf->base == first_block) {
        if (input_pool.n) {
            c->ds.in.data = input_pool.bufs[--input_pool.n];
            c->ds.in.cap = INPUT_BUF_SIZE;
        } else {
            lv_buf_reserve(&c->ds.in, INPUT_BUF_SIZE); /* its size, so it can go to the pool */
        }
        lv_buf_append(&c->ds.in, first_block, (size_t)nread);
    } else {
        c->ds.in.len += (size_t)nread;
    }
    client_process(c);
}

static void pause_reading(struct lv_client *c)
{
    if (c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
    c->read_paused = true;
}

static void resume_reading(struct lv_client *c)
{
    c->read_paused = false;
    if (!c->reading && !c->eof && !c->ds.closed) {
        uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
        c->reading = true;
    }
}

static void client_input_consumed(struct lv_client *c)
{
    if (c->read_paused && c->ds.in.len < INPUT_HIGH)
        resume_reading(c);
}

/* The connection's one timer is armed lazily: `due` is when the current state's timeout
 * expires, `armed` when the timer will fire (0: not armed for on_timer). Moving `due` later
 * costs nothing (the timer fires early and re-arms for what is left), so a keep-alive request,
 * whose idle and send timeouts only ever move later, makes no timer call at all. */
static void timer_due(struct lv_client *c, uint64_t timeout_ms)
{
    c->due = uv_now(c->server->loop) + timeout_ms;
    if (c->armed == 0 || c->armed > c->due) {
        uv_timer_start(&c->timer, on_timer, timeout_ms, 0);
        c->armed = c->due;
    }
}

/* The timer goes to another callback (closing): the lazy scheme is over. */
static void timer_take(struct lv_client *c, uv_timer_cb cb, uint64_t timeout_ms)
{
    c->armed = 0;
    c->due = UINT64_MAX;
    uv_timer_start(&c->timer, cb, timeout_ms, 0);
}

static void on_timer(uv_timer_t *t)
{
    struct lv_client *c = t->data;
    uint64_t now = uv_now(c->server->loop);
    c->armed = 0;
    if (now < c->due) { /* armed for an earlier due that moved */
        timer_due(c, c->due - now);
        return;
    }
    switch (c->state) {
    case LV_CLIENT_IDLE:
        if (c->ds.in.len > 0) {
            client_process(c); /* pipelined input left by the last request */
            break;
        }
        client_close(c, false); /* keep-alive idle timeout: silent close */
        break;
    case LV_CLIENT_HEAD:
        client_error_close(c, 408, LV_GWERR_REQUEST_TIMEOUT, "request head not received in time");
        break;
    case LV_CLIENT_REQUEST:
        /* send timeout: the client stopped reading our response */
        if (c->ds.write_queued > 0) {
            uint64_t to = c->server->cfg->limits.send_timeout_ms;

            if (now - c->last_write_ms >= to) {
                lv_debug("client %s: send timeout", c->ds.peer);
                client_close(c, true);
                return;
            }
            timer_due(c, to - (now - c->last_write_ms));
        } else {
            start_timer_for_state(c);
        }
        break;
    case LV_CLIENT_CLOSING:
        client_close(c, false);
        break;
    case LV_CLIENT_TUNNEL: /* the tunnel keeps its own time */
        break;
    }
}

static void start_timer_for_state(struct lv_client *c)
{
    const struct lv_limits_cfg *lim = &c->server->cfg->limits;
    switch (c->state) {
    case LV_CLIENT_IDLE:
        timer_due(c, c->requests ? lim->idle_timeout_ms : lim->header_timeout_ms);
        break;
    case LV_CLIENT_HEAD:
        /* started once at the first byte; not restarted on each read (slowloris) */
        break;
    case LV_CLIENT_REQUEST:
        timer_due(c, lim->send_timeout_ms ? lim->send_timeout_ms : 60000);
        break;
    case LV_CLIENT_CLOSING:
    case LV_CLIENT_TUNNEL:
        break;
    }
}

static void client_process(struct lv_client *c)
{
    struct lv_server *s = c->server;
    const struct lv_limits_cfg *lim = &s->cfg->limits;
    for (;;) {
        if (c->ds.closed || c->state == LV_CLIENT_CLOSING)
            return;
        if (c->state == LV_CLIENT_REQUEST || c->state == LV_CLIENT_TUNNEL) {
            if (c->req)
                lv_request_client_data(c->req);
            else if (c->ds.tunnel)
                lv_tunnel_client_data(c->ds.tunnel);
            if (c->ds.in.len >= INPUT_HIGH)
                pause_reading(c);
            return;
        }
        if (c->state == LV_CLIENT_IDLE) {
            /* RFC 9112 §2.2: ignore at least one empty line before a request-line. */
            size_t skip = 0;
            while (skip + 1 < c->ds.in.len && c->ds.in.data[skip] == '\r' &&
                   c->ds.in.data[skip + 1] == '\n' && skip < 4)
                skip += 2;
            if (skip)
                lv_buf_consume(&c->ds.in, skip);
            if (c->ds.in.len == 0) {
                if (s->draining) {
                    client_close(c, false);
                    return;
                }
                start_timer_for_state(c);
                return;
            }
            c->state = LV_CLIENT_HEAD;
            lv_headscan_init(&c->hs, false, lim->header_size, lim->request_line, lim->header_count);
            c->head_at = uv_now(s->loop);
            c->head_timed = false;
        }
        /* LV_CLIENT_HEAD */
        struct lv_headscan *hs = &c->hs;
        enum lv_headscan_result r = lv_headscan_feed(hs, c->ds.in.data, c->ds.in.len);
        if (r == LV_HEADSCAN_MORE) {
            if (c->eof) {
                client_close(c, false);
                return;
            }
            if (!c->head_timed) {
                /* header_timeout counts from the head's first byte and is not moved by later
                 * reads (slowloris); a head that comes whole never sets it */
                uint64_t gone = uv_now(s->loop) - c->head_at;
                timer_due(c, gone < lim->header_timeout_ms ? lim->header_timeout_ms - gone : 0);
                c->head_timed = true;
            }
            if (c->ds.in.len >= INPUT_HIGH + lim->header_size)
                pause_reading(c); /* cannot happen past the head limit, but stay bounded */
            return;
        }
        if (r == LV_HEADSCAN_ERROR) {
            enum lv_gwerr e = hs->status == 431   ? LV_GWERR_HEADER_TOO_LARGE
                              : hs->status == 414 ? LV_GWERR_URI_TOO_LONG
                              : hs->status == 505 ? LV_GWERR_VERSION_NOT_SUPPORTED
                              : hs->status == 501 ? LV_GWERR_NOT_IMPLEMENTED
                                                  : LV_GWERR_BAD_REQUEST;
            pause_reading(c);
            client_error_close(c, hs->status, e, hs->reason);
            return;
        }
        /* A complete, pre-validated head: the request takes it from here. */
        c->state = LV_CLIENT_REQUEST;
        c->requests++;
        size_t head_len = hs->head_len;
        c->req = lv_request_get(s, &c->ds);
        lv_request_begin(c->req, head_len);
        if (c->ds.closed)
            return;
        if (c->state == LV_CLIENT_REQUEST)
            start_timer_for_state(c);
        /* loop: the request may have finished at once (errors), or wants its body bytes */
    }
}

static void client_request_done(struct lv_client *c, bool close)
{
    if (c->req) {
        lv_request_put(c->req);
        c->req = NULL;
    }
    if (c->ds.closed)
        return;
    if (c->ds.tunnel) { /* a 101 went out: the connection is the tunnel's from now on */
        c->state = LV_CLIENT_TUNNEL;
        uv_timer_stop(&c->timer);
        c->armed = 0;
        c->due = UINT64_MAX;
        lv_tunnel_attached(c->ds.tunnel);
        return;
    }
    if (close || c->eof || c->server->draining) {
        client_close_after_write(c);
        return;
    }
    c->state = LV_CLIENT_IDLE;
    if (c->read_paused)
        resume_reading(c);
    /* Serve what is already buffered (pipelining) from the loop, not from inside the
     * request's completion path. */
    if (c->ds.in.len > 0) {
        timer_due(c, 0);
    } else {
        /* Idle: the input buffer goes (a read takes one again), as nginx frees its
         * connection buffer between requests; an idle connection holds little memory. */
        input_release(c);
        start_timer_for_state(c);
    }
}

/* ---- the request's view of this connection (struct lv_downstream) */

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

static struct lv_client *of(struct lv_downstream *d)
{
    return container_of(d, struct lv_client, ds);
}

static int ds_writev(struct lv_downstream *d, const uv_buf_t *bufs, unsigned nbufs)
{
    return client_writev(of(d), bufs, nbufs);
}

static int ds_write_buf(struct lv_downstream *d, struct lv_buf *b)
{
    return client_write_buf(of(d), b);
}

static void ds_done(struct lv_downstream *d, bool close)
{
    client_request_done(of(d), close);
}

static void ds_consumed(struct lv_downstream *d)
{
    client_input_consumed(of(d));
}

static void ds_abort(struct lv_downstream *d)
{
    client_close(of(d), false);
}

static void ds_reset(struct lv_downstream *d)
{
    client_close(of(d), true);
}

static void ds_throttle(struct lv_downstream *d, uint64_t rate)
{
    client_throttle(of(d), rate);
}

/* A tunnel's other side ended: end ours once what is queued is out (on_shutdown). */
static void ds_shutdown(struct lv_downstream *d)
{
    struct lv_client *c = of(d);
    if (c->ds.closed)
        return;
    if (c->tls) {
        lv_tls_shutdown(c->tls, &c->tls_out);
        if (raw_write_buf(c, &c->tls_out) < 0)
            return;
    }
    c->shutdown_req.data = c;
    if (uv_shutdown(&c->shutdown_req, (uv_stream_t *)&c->tcp, on_shutdown) != 0)
        client_close(c, true);
}

static void ds_refuse(struct lv_downstream *d, int status, enum lv_gwerr err, const char *reason)
{
    struct lv_client *c = of(d);
    /* No request began: the slot goes back before the answer. */
    if (c->req) {
        lv_request_put(c->req);
        c->req = NULL;
    }
    client_error_close(c, status, err, reason);
}

static const struct lv_downstream_ops ds_ops = {
    ds_writev, ds_write_buf, ds_done,     ds_consumed, ds_abort,
    ds_refuse, ds_reset,     ds_throttle, ds_shutdown,
};

static struct lv_client *client_new(struct lv_server *s)
{
    struct lv_client *c = lv_xcalloc(1, sizeof(*c));
    c->server = s;
    uv_tcp_init(s->loop, &c->tcp);
    uv_timer_init(s->loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->ds.ops = &ds_ops;
    c->open_handles = 2; /* tcp, timer */
    list_add(s, c);
    return c;
}

static void client_start(struct lv_client *c, struct lv_tls_ctx *tls);

void lv_client_accept(struct lv_server *s, uv_stream_t *ls, struct lv_tls_ctx *tls)
{
    struct lv_client *c = client_new(s);
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        client_close(c, false);
        return;
    }
    client_start(c, tls);
}

void lv_client_adopt(struct lv_server *s, int fd, struct lv_tls_ctx *tls)
{
    struct lv_client *c = client_new(s);
    if (uv_tcp_open(&c->tcp, fd) != 0) {
        close(fd);
        client_close(c, false);
        return;
    }
    client_start(c, tls);
}

uint32_t lv_client_count_all(const struct lv_server *s)
{
    uint32_t n = 0;
    for (unsigned i = 0; i < s->sh->nworkers; i++)
        n += atomic_load_explicit(&s->sh->conns[i], memory_order_relaxed);
    return n;
}

static void client_start(struct lv_client *c, struct lv_tls_ctx *tls)
{
    struct lv_server *s = c->server;
    if (lv_client_count_all(s) > s->cfg->limits.max_connections || s->draining) {
        client_close(c, true);
        return;
    }
    c->id = ++s->next_conn_id;
    uv_tcp_nodelay(&c->tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    c->ds.peer[0] = '\0';
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET)
            uv_ip4_name((struct sockaddr_in *)&ss, c->ds.peer, sizeof(c->ds.peer));
        else
            uv_ip6_name((struct sockaddr_in6 *)&ss, c->ds.peer, sizeof(c->ds.peer));
    }
    if (tls) {
        c->tls = lv_tls_new(tls, true, NULL); /* the handshake fits in header_timeout */
        c->ds.tls = true;
    }
    c->state = LV_CLIENT_IDLE;
    timer_due(c, s->cfg->limits.header_timeout_ms);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
    c->reading = true;
}

void lv_client_drain_idle(struct lv_server *s)
{
    lv_request_pool_free(s); /* from now on finished slots are freed, not pooled */
    input_pool_free();
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->clients)
    {
        struct lv_client *c = lv_dlist_entry(l, struct lv_client, link);
        if (c->state == LV_CLIENT_IDLE && c->ds.in.len == 0)
            client_close(c, false);
    }
}

void lv_client_close_all(struct lv_server *s)
{
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->clients)
        client_close(lv_dlist_entry(l, struct lv_client, link), true);
}
