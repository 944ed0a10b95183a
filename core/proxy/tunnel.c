#include "proxy/tunnel.h"

#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "base/method.h"
#include "http/tracectx.h"
#include "net/iobufs.h"
#include "net/tls.h"
#include "obs/accesslog.h"
#include "obs/devline.h"
#include "proxy/generation.h"
#include "proxy/request.h"
#include "proxy/server.h"

/* Upstream write queue above which the client is not read; reading resumes below a quarter. */
#define UP_WRITE_HIGH (64 * 1024)

struct lv_tunnel {
    uv_timer_t timer; /* tunnel_idle_timeout, armed lazily from `last_ms` */
    struct lv_server *s;
    struct lv_downstream *ds;  /* NULL once the client connection is gone */
    struct lv_upconn *uc;      /* NULL once let go */
    struct lv_generation *gen; /* pinned: the route's names and the upstream stay */
    uint64_t idle_ms, last_ms;
    uint64_t start_ns;
    uint64_t up_bytes, down_bytes; /* client to upstream, upstream to client */
    struct lv_metric *m_active, *m_up, *m_down;
    bool attached;     /* the request ended: the client connection is ours */
    bool client_eof;   /* the client ended its side */
    bool up_eof;       /* the upstream ended its side */
    bool up_shut_sent; /* we shut the upstream's write side down (or asked to) */
    bool up_shut;      /* ... and it is done */
    bool client_shut;  /* the client's write side is shut down */
    bool up_paused;    /* the upstream is not read: the client's queue is full */
    bool closed;
    /* the access-log line, filled at the switch */
    struct lv_access_entry e;
    char rid[204], peer[64], trace_hex[33], span_hex[17];
    struct lv_buf path, host;
};

struct up_op { /* a shutdown of the upstream's write side; finds its tunnel through the upconn */
    uv_shutdown_t sh;
    struct lv_upconn *uc;
};

static void on_up_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg);
static void finish(struct lv_tunnel *t, bool reset);
static void pump_client(struct lv_tunnel *t);

static struct lv_tunnel *of_uc(struct lv_upconn *uc)
{
    return uc->on_read == on_up_read ? uc->read_arg : NULL;
}

static void touch(struct lv_tunnel *t)
{
    t->last_ms = uv_now(t->s->loop);
}

static size_t up_queued(const struct lv_tunnel *t)
{
    return uv_stream_get_write_queue_size((const uv_stream_t *)&t->uc->tcp);
}

/* ---- closing */

static void on_timer_closed(uv_handle_t *h)
{
    struct lv_tunnel *t = h->data;
    lv_buf_dispose(&t->path);
    lv_buf_dispose(&t->host);
    free(t);
}

static void write_log(struct lv_tunnel *t)
{
    struct lv_server *s = t->s;
    double ms = (double)(uv_hrtime() - t->start_ns) / 1e6;
    lv_metric_add(t->m_active, -1);
    if (!s->access_on)
        return;
    uv_timeval64_t tv;
    if (uv_gettimeofday(&tv) == 0)
        t->e.time = (double)tv.tv_sec + (double)tv.tv_usec / 1e6 - ms / 1000.0;
    t->e.duration_ms = ms;
    t->e.bytes_in = t->up_bytes;
    t->e.bytes_out += t->down_bytes;
    struct lv_buf line = LV_BUF_INIT;
    lv_accesslog_format_as(s->cfg->access_format == LV_ACCESS_FORMAT_CONSOLE, s->cfg->access_color,
                           &t->e, &line);
    lv_server_access_log(s, line.data, line.len);
    lv_buf_dispose(&line);
}

/* Closes both sides (`reset`: the client gets an RST, as after an upstream error). */
static void finish(struct lv_tunnel *t, bool reset)
{
    if (t->closed)
        return;
    t->closed = true;
    write_log(t);
    if (t->uc) {
        struct lv_upconn *uc = t->uc;
        t->uc = NULL;
        uc->server->inflight--;
        uc->on_read = NULL;
        uc->read_arg = NULL;
        lv_upconn_discard(uc, false);
    }
    if (t->ds) {
        struct lv_downstream *ds = t->ds;
        t->ds = NULL;
        ds->tunnel = NULL;
        if (!ds->closed) {
            if (reset)
                ds->ops->reset(ds);
            else
                ds->ops->abort(ds);
        }
    }
    lv_generation_unpin(t->gen);
    uv_close((uv_handle_t *)&t->timer, on_timer_closed);
}

/* Both directions ended and both write sides are shut: close. */
static void maybe_done(struct lv_tunnel *t)
{
    if (!t->closed && t->client_eof && t->up_eof && t->up_shut && t->client_shut)
        finish(t, false);
}

static void on_idle(uv_timer_t *timer)
{
    struct lv_tunnel *t = timer->data;
    uint64_t now = uv_now(t->s->loop), quiet = now - t->last_ms;
    if (quiet < t->idle_ms) {
        uv_timer_start(&t->timer, on_idle, t->idle_ms - quiet, 0);
        return;
    }
    lv_debug("tunnel %s: idle for %llums: closing", t->rid, (unsigned long long)quiet);
    finish(t, false);
}

/* ---- to the upstream */

static void on_up_write(uv_write_t *req, int status)
{
    struct lv_tunnel *t = of_uc(req->data);
    free(req); /* lv_iobufs_write's allocation */
    if (!t || t->closed)
        return;
    if (status < 0) {
        finish(t, true);
        return;
    }
    if (up_queued(t) <= UP_WRITE_HIGH / 4)
        pump_client(t);
}

static void on_up_shutdown(uv_shutdown_t *req, int status)
{
    struct up_op *op = (struct up_op *)req;
    struct lv_tunnel *t = of_uc(op->uc);
    free(op);
    if (!t || t->closed)
        return;
    if (status < 0) {
        finish(t, true);
        return;
    }
    t->up_shut = true;
    maybe_done(t);
}

/* Sends bytes as they are on the wire (ciphertext with TLS): try now, queue a copy of the rest.
 * Returns < 0 when the connection broke. */
static int up_send_raw(struct lv_tunnel *t, const uv_buf_t *bufs, unsigned n)
{
    return lv_iobufs_write((uv_stream_t *)&t->uc->tcp, bufs, n, on_up_write, t->uc);
}

static int up_send(struct lv_tunnel *t, const char *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    if (t->uc->tls) {
        if (lv_upconn_tls_wrap(t->uc, &b, 1) < 0)
            return UV_EPROTO;
        b = uv_buf_init(t->uc->tls_out.data, (unsigned)t->uc->tls_out.len);
        t->uc->tls_out.len = 0; /* valid until the next wrap: copied if not sent now */
    }
    return up_send_raw(t, &b, 1);
}

/* The client ended: so does our side toward the upstream, once its queue is out. */
static void up_shutdown(struct lv_tunnel *t)
{
    t->up_shut_sent = true;
    if (t->uc->tls) {
        lv_tls_shutdown(t->uc->tls, &t->uc->tls_out);
        uv_buf_t b = uv_buf_init(t->uc->tls_out.data, (unsigned)t->uc->tls_out.len);
        t->uc->tls_out.len = 0;
        if (up_send_raw(t, &b, 1) < 0) {
            finish(t, true);
            return;
        }
    }
    struct up_op *op = lv_xmalloc(sizeof(*op));
    op->uc = t->uc;
    if (uv_shutdown(&op->sh, (uv_stream_t *)&t->uc->tcp, on_up_shutdown) < 0) {
        free(op);
        finish(t, true);
    }
}

/* What the client sent goes upstream while the upstream's queue has room. */
static void pump_client(struct lv_tunnel *t)
{
    if (!t->attached || t->closed)
        return;
    struct lv_downstream *ds = t->ds;
    if (ds->in.len && up_queued(t) < UP_WRITE_HIGH) {
        size_t n = ds->in.len;
        if (up_send(t, ds->in.data, n) < 0) {
            finish(t, true);
            return;
        }
        t->uc->server->sent_bytes += n;
        t->up_bytes += n;
        lv_metric_add(t->m_up, (double)n);
        touch(t);
        lv_buf_consume(&ds->in, n);
        ds->ops->consumed(ds);
        if (t->closed)
            return;
    }
    if (t->client_eof && ds->in.len == 0 && !t->up_shut_sent)
        up_shutdown(t);
}

/* ---- to the client */

static void on_up_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg)
{
    struct lv_tunnel *t = arg;
    if (t->closed)
        return;
    if (nread < 0) {
        if (nread != UV_EOF) {
            lv_debug("tunnel %s: upstream: %s", t->rid, uv_strerror((int)nread));
            finish(t, true);
            return;
        }
        t->up_eof = true;
        lv_upconn_read_stop(uc);
        t->ds->ops->shutdown(t->ds); /* lv_tunnel_client_shut follows */
        return;
    }
    uc->server->received_bytes += (uint64_t)nread;
    t->down_bytes += (uint64_t)nread;
    lv_metric_add(t->m_down, (double)nread);
    touch(t);
    if (lv_ds_write(t->ds, data, (size_t)nread) < 0 || t->closed)
        return;
    if (t->ds->write_queued >= LV_DOWNSTREAM_WRITE_HIGH) {
        lv_upconn_read_stop(uc);
        t->up_paused = true;
    }
}

/* ---- the switch */

static void copy_entry(struct lv_tunnel *t, const struct lv_request *r)
{
    struct lv_access_entry *e = &t->e;
    memset(e, 0, sizeof(*e));
    memcpy(t->rid, r->rid, sizeof(t->rid));
    memcpy(t->peer, r->ds->peer, sizeof(t->peer));
    lv_buf_append(&t->path, r->target.data, r->target.len);
    lv_buf_append(&t->host, r->host.data, r->host.len);
    e->request_id = lv_access_cstr(t->rid);
    if (r->traced) { /* the request's trace and span (README "Tracing") */
        lv_trace_hex(r->trace_id, sizeof(r->trace_id), t->trace_hex);
        lv_trace_hex(r->span_id, sizeof(r->span_id), t->span_hex);
        e->trace_id = t->trace_hex;
        e->span_id = t->span_hex;
    }
    e->client = t->peer;
    e->method = lv_method_name(r->method);
    e->path = (struct lv_access_str){t->path.data, t->path.len};
    e->host = t->host.len ? (struct lv_access_str){t->host.data, t->host.len}
                          : (struct lv_access_str){NULL, 0};
    e->route = r->route->name; /* the pinned generation keeps the names */
    e->upstream = r->ntries ? r->tries[r->ntries - 1].server : NULL;
    e->status = 101;
    e->attempts = r->ntries;
    e->bytes_out = r->bytes_out; /* the 101 head */
    e->upstream_ms = r->upstream_ms;
    e->retry_stop = r->retry_stop != LV_STOP_NONE ? lv_retry_stop_name(r->retry_stop) : NULL;
    e->flags = r->flags | LV_ACCESS_TUNNEL;
    e->backoff_ms = r->backoff_ms;
    e->ntries = (unsigned)(r->ntries < LV_ACCESS_MAX_TRIES ? r->ntries : LV_ACCESS_MAX_TRIES);
    for (unsigned i = 0; i < e->ntries; i++) {
        const struct lv_try *tr = &r->tries[i];
        e->tries[i].status = tr->kind == LV_OUT_STATUS ? tr->status : 0;
        e->tries[i].error = tr->kind == LV_OUT_STATUS ? "" : lv_outcome_name(tr->kind);
        e->tries[i].server = tr->server;
        e->tries[i].ms = tr->ms;
        e->tries[i].fault = tr->fault;
    }
}

void lv_tunnel_begin(struct lv_request *r, const char *tail, size_t ntail)
{
    lv_respout_flush(r); /* the 101 head */
    if (!lv_request_active(r))
        return; /* the client went away (its teardown let the upstream go) */
    struct lv_server *s = r->s;
    struct lv_tunnel *t = lv_xcalloc(1, sizeof(*t));
    t->s = s;
    t->ds = r->ds;
    t->uc = r->uc;
    r->uc = NULL; /* ours now: the request's release leaves it alone */
    t->uc->on_read = on_up_read;
    t->uc->read_arg = t;
    lv_upconn_read_stop(t->uc); /* read again once attached */
    t->gen = r->gen;
    lv_generation_pin(t->gen);
    t->idle_ms = r->route->tunnel_idle_timeout_ms ? r->route->tunnel_idle_timeout_ms : 3600000;
    t->start_ns = r->start_ns;
    uv_timer_init(s->loop, &t->timer);
    t->timer.data = t;
    r->flags |= LV_ACCESS_TUNNEL; /* the request's own line is left out: ours has it all */
    copy_entry(t, r);
    const char *lr[] = {r->route->name, NULL};
    const char *lu[] = {r->route->name, "upstream", NULL};
    const char *ld[] = {r->route->name, "downstream", NULL};
    t->m_active = lv_metric_series(s->m_tunnels_active, lr);
    t->m_up = lv_metric_series(s->m_tunnel_bytes, lu);
    t->m_down = lv_metric_series(s->m_tunnel_bytes, ld);
    lv_metric_add(lv_metric_series(s->m_tunnels_total, lr), 1);
    lv_metric_add(t->m_active, 1);
    touch(t);
    r->ds->tunnel = t;
    if (ntail) { /* the upstream's first bytes of the new protocol, right after the head */
        t->down_bytes += ntail;
        lv_metric_add(t->m_down, (double)ntail);
        lv_ds_write(r->ds, tail, ntail); /* a failure closes the client: lv_tunnel_client_gone */
    }
    if (lv_request_active(r))
        lv_request_end(r, false); /* the downstream's done: lv_tunnel_attached */
}

void lv_tunnel_attached(struct lv_tunnel *t)
{
    if (t->closed)
        return;
    t->attached = true;
    uv_timer_start(&t->timer, on_idle, t->idle_ms, 0);
    lv_upconn_read_start(t->uc, on_up_read, t);
    pump_client(t); /* what the client sent after its head */
}

/* ---- the client's side */

void lv_tunnel_client_data(struct lv_tunnel *t)
{
    pump_client(t);
}

void lv_tunnel_client_eof(struct lv_tunnel *t)
{
    if (t->closed)
        return;
    t->client_eof = true;
    pump_client(t); /* shuts the upstream's write side down once the input is out */
}

void lv_tunnel_client_drained(struct lv_tunnel *t)
{
    if (t->closed || !t->up_paused || t->up_eof)
        return;
    t->up_paused = false;
    lv_upconn_read_start(t->uc, on_up_read, t);
}

void lv_tunnel_client_shut(struct lv_tunnel *t)
{
    if (t->closed)
        return;
    t->client_shut = true;
    maybe_done(t);
}

void lv_tunnel_client_gone(struct lv_tunnel *t)
{
    t->ds = NULL;
    finish(t, false);
}
