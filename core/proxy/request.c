#include "proxy/request.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "base/gwerr.h"
#include "base/log.h"
#include "base/method.h"
#include "http/body.h"
#include "http/fields.h"
#include "http/reqhead.h"
#include "http/resphead.h"
#include "obs/accesslog.h"
#include "proxy/client.h"
#include "proxy/errresp.h"
#include "conf/router.h"
#include "proxy/server.h"
#include "policy/backoff.h"
#include "policy/retry.h"
#include "script/hooks.h"

#define container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* Most header fields we look at in one head (the configured limit caps requests earlier). */
#define MAX_FIELDS 256
/* Upstream write queue above which we stop reading the client's body. */
#define UP_WRITE_HIGH (256 * 1024)
/* Largest response head we accept from an upstream. */
#define MAX_RESP_HEAD (64 * 1024)

struct up_write {
    uv_write_t req;
    struct lv_upconn *uc;
    size_t len;
    char data[];
};

static void attempt_start(struct lv_request *r);
static void attempt_failed(struct lv_request *r, enum lv_outcome_kind kind, const char *detail);
static void finish(struct lv_request *r);
static void pump_body(struct lv_request *r);
static void buffering_check(struct lv_request *r);
static void hook_failed(struct lv_request *r, int which, const struct lv_buf *err);
static void on_up_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg);

static double ms_since(uint64_t ns)
{
    return (double)(uv_hrtime() - ns) / 1e6;
}

/* Runs the de-framer over data[0..len): data spans go to `cb`. Returns 1 when the message
 * is complete, 0 when more input is needed, -1 on bad framing, -2 over the size limit. */
static int body_feed(struct lv_body *b, const char *data, size_t len, size_t *used_total,
                     void (*cb)(void *, const char *, size_t), void *arg)
{
    size_t off = 0;
    for (;;) {
        size_t used = 0;
        struct lv_span span;
        enum lv_body_result res = lv_body_next(b, data + off, len - off, &used, &span);
        off += used;
        switch (res) {
        case LV_BODY_DATA:
            cb(arg, span.p, span.len);
            continue;
        case LV_BODY_MORE:
            *used_total = off;
            return 0;
        case LV_BODY_DONE:
            *used_total = off;
            return 1;
        case LV_BODY_TOO_LARGE:
            *used_total = off;
            return -2;
        default:
            *used_total = off;
            return -1;
        }
    }
}

/* ---- slot lifecycle */

static void on_deadline(uv_timer_t *t);
static void on_try_timeout(uv_timer_t *t);
static void on_body_timer(uv_timer_t *t);

void lv_request_init(struct lv_request *r, struct lv_client *c)
{
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->s = c->server;
    uv_timer_init(c->server->loop, &r->deadline_timer);
    uv_timer_init(c->server->loop, &r->try_timer);
    uv_timer_init(c->server->loop, &r->body_timer);
    r->deadline_timer.data = c;
    r->try_timer.data = c;
    r->body_timer.data = c;
    r->body_dec = lv_xcalloc(1, sizeof(struct lv_body));
    r->resp_dec = lv_xcalloc(1, sizeof(struct lv_body));
}

int lv_request_dispose(struct lv_request *r, uv_close_cb close_cb)
{
    uv_close((uv_handle_t *)&r->deadline_timer, close_cb);
    uv_close((uv_handle_t *)&r->try_timer, close_cb);
    uv_close((uv_handle_t *)&r->body_timer, close_cb);
    lv_buf_dispose(&r->target);
    lv_buf_dispose(&r->host);
    lv_buf_dispose(&r->fwd);
    lv_buf_dispose(&r->replay);
    lv_buf_dispose(&r->rhead);
    lv_buf_dispose(&r->out);
    lv_buf_dispose(&r->cout);
    lv_buf_dispose(&r->hook_head);
    lv_buf_dispose(&r->idem_key);
    lv_buf_dispose(&r->idem_head);
    lv_buf_dispose(&r->idem_body);
    free(r->body_dec);
    free(r->resp_dec);
    r->body_dec = r->resp_dec = NULL;
    return 3;
}

/* ---- upstream writes */

static void on_up_write(uv_write_t *req, int status)
{
    struct up_write *w = (struct up_write *)req;
    struct lv_upconn *uc = w->uc;
    struct lv_request *r = uc->read_arg; /* NULL once the request let go of the connection */
    free(w);
    /* Errors show up on the read side too; here we only resume a body paused on a full
     * upstream queue. */
    if (status < 0 || !r || r->uc != uc || !r->active || r->body_done)
        return;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&uc->tcp) < UP_WRITE_HIGH / 2)
        pump_body(r);
}

static int up_write(struct lv_request *r, const uv_buf_t *bufs, unsigned n)
{
    uv_buf_t sealed;
    for (unsigned i = 0; i < n; i++)
        r->uc->server->sent_bytes += bufs[i].len; /* levee_upstream_sent_bytes_total */
    if (r->uc->tls) {
        /* Upstream TLS: what goes out is the ciphertext of all of it. */
        if (lv_upconn_tls_wrap(r->uc, bufs, n) < 0)
            return UV_EPROTO;
        sealed = uv_buf_init(r->uc->tls_out.data, (unsigned)r->uc->tls_out.len);
        r->uc->tls_out.len = 0; /* the bytes stay valid until the next wrap: copied below */
        bufs = &sealed;
        n = 1;
    }
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    if (total == 0)
        return 0;
    size_t done = 0;
    if (uv_stream_get_write_queue_size((uv_stream_t *)&r->uc->tcp) == 0) {
        /* Straight to the socket when nothing is queued: no epoll re-arm (see client.c). */
        int rc = uv_try_write((uv_stream_t *)&r->uc->tcp, bufs, n);
        if (rc < 0 && rc != UV_EAGAIN)
            return rc;
        if (rc > 0)
            done = (size_t)rc;
        if (done == total)
            return 0;
    }
    struct up_write *w = lv_xmalloc(sizeof(*w) + total - done);
    w->uc = r->uc;
    w->len = total - done;
    size_t off = 0, skip = done;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(w->data + off, bufs[i].base + skip, len - skip);
        off += len - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(w->data, (unsigned)off);
    int rc = uv_write(&w->req, (uv_stream_t *)&r->uc->tcp, &b, 1, on_up_write);
    if (rc < 0) {
        free(w);
        return rc;
    }
    return 0;
}

static size_t up_queue_size(const struct lv_request *r)
{
    return r->uc ? uv_stream_get_write_queue_size((const uv_stream_t *)&r->uc->tcp) : 0;
}

/* ---- client output */

static void send_error(struct lv_request *r, enum lv_gwerr err, const char *detail, int retry_after)
{
    const struct lv_gwerr_info *e = lv_gwerr_info(err);
    r->status = e->status;
    r->error_token = e->token;
    /* Unread request body means the framing of what follows is unknown: close. */
    if (!r->body_done)
        r->resp_close = true;
    lv_buf_reset(&r->out);
    lv_errresp_format(&r->out, err, 0, r->route ? r->route->name : NULL, r->rid, detail,
                      retry_after, r->resp_close || !r->client_keep_alive,
                      r->method == 2 /* HEAD */);
    r->bytes_out += r->out.len;
    r->head_sent = true;
    lv_client_write(r->c, r->out.data, r->out.len);
}

/* ---- finishing */

static void release_upstream(struct lv_request *r, bool reusable)
{
    if (r->acquiring) {
        lv_upstream_cancel(&r->acq);
        r->acquiring = false;
    }
    if (r->uc) {
        struct lv_upconn *uc = r->uc;
        r->uc = NULL;
        uc->server->inflight--;
        uc->read_arg = NULL;
        uc->on_read = NULL;
        if (reusable)
            lv_upconn_release(uc);
        else
            lv_upconn_discard(uc, false);
    }
    uv_timer_stop(&r->try_timer);
    r->in_backoff = false;
}

static void log_request(struct lv_request *r)
{
    struct lv_server *s = r->s;
    double total_ms = ms_since(r->start_ns);
    lv_server_count_request(s, r->rs, r->status, total_ms / 1000.0);
    if (s->access_fd < 0)
        return;
    struct lv_access_entry e;
    memset(&e, 0, sizeof(e));
    e.time = r->start_unix;
    e.request_id = lv_access_cstr(r->rid);
    e.client = r->c->peer;
    e.method = lv_method_name(r->method);
    e.path = (struct lv_access_str){r->target.data, r->target.len};
    e.host = r->host.len ? (struct lv_access_str){r->host.data, r->host.len}
                         : (struct lv_access_str){NULL, 0};
    e.route = r->route ? r->route->name : NULL;
    e.upstream = r->ntries ? r->tries[r->ntries - 1].server : NULL;
    e.status = r->status;
    e.attempts = r->ntries;
    e.bytes_in = r->bytes_in;
    e.bytes_out = r->bytes_out;
    e.duration_ms = total_ms;
    e.upstream_ms = r->resp_started ? r->upstream_ms : -1;
    e.error = r->error_token;
    e.flags = r->flags;
    e.backoff_ms = r->backoff_ms;
    e.ntries = (unsigned)(r->ntries < LV_ACCESS_MAX_TRIES ? r->ntries : LV_ACCESS_MAX_TRIES);
    for (unsigned i = 0; i < e.ntries; i++) {
        static const char *const names[] = {"none",  "",        "connect-failure",
                                            "reset", "timeout", "protocol-error"};
        e.tries[i].status = r->tries[i].kind == LV_OUT_STATUS ? r->tries[i].status : 0;
        e.tries[i].error = names[r->tries[i].kind];
        e.tries[i].server = r->tries[i].server;
        e.tries[i].ms = r->tries[i].ms;
    }
    struct lv_buf line = LV_BUF_INIT;
    lv_accesslog_format(&e, &line);
    lv_server_access_log(s, line.data, line.len);
    lv_buf_dispose(&line);
}

/* Closes the cout range not yet in cpieces, so a pointer piece can follow it. */
static void cout_mark(struct lv_request *r)
{
    if (r->cout.len > r->cout_marked) {
        r->cpieces[r->ncpieces++] =
            (struct lv_cpiece){NULL, r->cout_marked, r->cout.len - r->cout_marked};
        r->cout_marked = r->cout.len;
    }
}

/* Copies the pointer pieces into cout, in order: for output that must outlive this read. */
static void cout_materialize(struct lv_request *r)
{
    if (r->ncpieces == 0)
        return;
    cout_mark(r);
    struct lv_buf all = LV_BUF_INIT;
    for (unsigned i = 0; i < r->ncpieces; i++) {
        const struct lv_cpiece *pc = &r->cpieces[i];
        lv_buf_append(&all, pc->p ? pc->p : r->cout.data + pc->off, pc->len);
    }
    lv_buf_dispose(&r->cout);
    r->cout = all;
    r->ncpieces = 0;
    r->cout_marked = 0;
}

/* Client output made while handling one upstream read goes out in one write. */
static void flush_client(struct lv_request *r)
{
    if (r->idem_op && r->active) {
        cout_materialize(r);
        return; /* the last bytes wait for the idempotency store (see finish) */
    }
    if (r->ncpieces) {
        cout_mark(r);
        uv_buf_t bufs[LV_CPIECES_MAX];
        for (unsigned i = 0; i < r->ncpieces; i++) {
            const struct lv_cpiece *pc = &r->cpieces[i];
            bufs[i] =
                uv_buf_init((char *)(pc->p ? pc->p : r->cout.data + pc->off), (unsigned)pc->len);
        }
        unsigned n = r->ncpieces;
        r->ncpieces = 0;
        r->cout_marked = 0;
        r->cout.len = 0;
        lv_client_writev(r->c, bufs, n); /* copies only what the socket did not take */
        return;
    }
    if (r->cout.len)
        lv_client_write_buf(r->c, &r->cout);
}

/* A breaker probe that ended with no outcome frees its slot (else the route stays shut). */
static void drop_probe(struct lv_request *r)
{
    if (r->probe && r->rs && r->rs->breaker_enabled)
        lv_breaker_release_probe(&r->rs->breaker);
    r->probe = false;
}

static void idem_end(struct lv_request *r);

static void request_end(struct lv_request *r, bool close_client)
{
    if (!r->active)
        return;
    drop_probe(r);
    idem_end(r);
    flush_client(r);
    release_upstream(r, false); /* no-op when already let go */
    r->active = false;
    uv_timer_stop(&r->deadline_timer);
    uv_timer_stop(&r->try_timer);
    uv_timer_stop(&r->body_timer);
    log_request(r);
    if (r->up) { /* after the log: its tries name the upstream's servers */
        lv_server_upstream_unuse(r->s, r->up);
        r->up = NULL;
    }
    if (r->rs) {
        lv_server_route_unuse(r->s, r->rs);
        r->rs = NULL;
    }
    lv_config_unpin(r->cfg);
    r->cfg = NULL;
    lv_client_request_done(r->c, close_client);
}

/* The response went out whole. */
static void finish_end(struct lv_request *r)
{
    /* An unread request body leaves the connection's framing unknown: close it. */
    request_end(r, r->resp_close || !r->client_keep_alive || !r->body_done);
}

static void on_idem_settled(bool changed, void *arg)
{
    struct lv_request *r = arg;
    (void)changed; /* stored or not, the client gets its response now */
    r->idem_op = NULL;
    if (r->active)
        finish_end(r);
}

static void finish(struct lv_request *r)
{
    bool reusable = r->up_reusable && r->body_final_sent;
    release_upstream(r, reusable);
    if (r->idem_lock) {
        /* The last bytes wait until the store has the response (or has let the key go):
         * otherwise the client's next request, through another gateway sharing the store,
         * could find the key still in flight. One store round trip, keyed requests only. */
        struct lv_idem_lock *lock = r->idem_lock;
        r->idem_lock = NULL;
        if (r->idem_capture) {
            struct lv_idem_response resp = {r->idem_status, r->idem_head.data, r->idem_head.len,
                                            r->idem_body.data, r->idem_body.len};
            lv_metric_add(r->rs->idem_stored, 1);
            r->idem_op = lv_idem_complete_notify(lock, &resp, r->route->idempotency.ttl_ms,
                                                 on_idem_settled, r);
        } else {
            r->idem_op = lv_idem_release_notify(lock, on_idem_settled, r);
        }
        r->idem_capture = false;
        if (r->idem_op)
            return;
    }
    finish_end(r);
}

/* Something broke after response bytes went out: the client must see a broken message. */
static void abort_client(struct lv_request *r, unsigned flag)
{
    /* What was received goes out, then the connection closes without completing the
     * message (no last chunk, or fewer bytes than Content-Length): the client sees it broke. */
    r->flags |= flag;
    release_upstream(r, false);
    request_end(r, true);
}

void lv_request_client_gone(struct lv_request *r)
{
    if (!r->active)
        return;
    r->flags |= LV_ACCESS_CLIENT_ABORT;
    if (!r->status)
        r->status = 499;
    drop_probe(r);
    idem_end(r);
    release_upstream(r, false);
    r->active = false;
    uv_timer_stop(&r->deadline_timer);
    uv_timer_stop(&r->body_timer);
    log_request(r);
    if (r->up) {
        lv_server_upstream_unuse(r->s, r->up);
        r->up = NULL;
    }
    if (r->rs) {
        lv_server_route_unuse(r->s, r->rs);
        r->rs = NULL;
    }
    lv_config_unpin(r->cfg);
    r->cfg = NULL;
}

void lv_request_client_eof(struct lv_request *r)
{
    /* The client closed its side before any response byte: it is gone (as nginx treats it),
     * so the upstream request is abandoned and an idempotency key is released at once. Once
     * the response streams, a half-close only means the client sent everything. */
    if (!r->body_done || !r->head_sent)
        lv_client_abort(r->c, false);
}

/* ---- the forwarded head */

static void build_forward_head(struct lv_request *r, const struct lv_reqhead *h)
{
    struct lv_buf *b = &r->fwd;
    lv_buf_reset(b);
    lv_buf_puts(b, lv_method_name(r->method));
    lv_buf_putc(b, ' ');
    if (h->absolute_form) { /* forward the origin-form */
        lv_buf_append(b, h->path.p, h->path.len);
        if (h->has_query) {
            lv_buf_putc(b, '?');
            lv_buf_append(b, h->query.p, h->query.len);
        }
    } else {
        lv_buf_append(b, h->target.p, h->target.len);
    }
    lv_buf_puts(b, " HTTP/1.1\r\n");
    bool have_host = false;
    struct lv_span xff = {NULL, 0}, via = {NULL, 0};
    for (uint32_t i = 0; i < h->nfields; i++) {
        const struct lv_field *f = &h->fields[i];
        if (f->flags & LV_FIELD_HOP)
            continue;
        switch (f->id) {
        case LV_FID_CONTENT_LENGTH:
        case LV_FID_TRANSFER_ENCODING:
        case LV_FID_X_REQUEST_ID:
        case LV_FID_X_FORWARDED_PROTO:
        case LV_FID_X_FORWARDED_HOST:
        case LV_FID_EXPECT:
            continue;
        case LV_FID_X_FORWARDED_FOR:
            xff = f->value;
            continue;
        case LV_FID_VIA:
            via = f->value;
            continue;
        case LV_FID_HOST:
            if (h->absolute_form)
                continue; /* the target's authority wins */
            have_host = true;
            break;
        default:
            break;
        }
        lv_buf_append(b, f->name.p, f->name.len);
        lv_buf_puts(b, ": ");
        lv_buf_append(b, f->value.p, f->value.len);
        lv_buf_puts(b, "\r\n");
    }
    /* HTTP/1.1 requires Host. An HTTP/1.0 request may come without one (and so matched no
     * route with match.host): it gets the authority of the server each attempt goes to. */
    r->add_server_host = false;
    if (!have_host && r->host.len) {
        lv_buf_puts(b, "Host: ");
        lv_buf_append(b, r->host.data, r->host.len);
        lv_buf_puts(b, "\r\n");
    } else if (!have_host) {
        r->add_server_host = true;
    }
    lv_buf_puts(b, "X-Forwarded-For: ");
    if (xff.len) {
        lv_buf_append(b, xff.p, xff.len);
        lv_buf_puts(b, ", ");
    }
    lv_buf_puts(b, r->c->peer);
    lv_buf_puts(b,
                r->c->tls ? "\r\nX-Forwarded-Proto: https\r\n" : "\r\nX-Forwarded-Proto: http\r\n");
    if (r->host.len) {
        lv_buf_puts(b, "X-Forwarded-Host: ");
        lv_buf_append(b, r->host.data, r->host.len);
        lv_buf_puts(b, "\r\n");
    }
    lv_buf_puts(b, "Via: ");
    if (via.len) {
        lv_buf_append(b, via.p, via.len);
        lv_buf_puts(b, ", ");
    }
    lv_buf_puts(b, r->http10 ? "1.0 levee\r\n" : "1.1 levee\r\n");
    lv_buf_puts(b, "X-Request-Id: ");
    lv_buf_puts(b, r->rid);
    lv_buf_puts(b, "\r\n");
    if (r->body_kind == 1) {
        lv_buf_puts(b, "Content-Length: ");
        lv_buf_putu(b, r->body_cl);
        lv_buf_puts(b, "\r\n");
    } else if (r->body_kind == 2) {
        lv_buf_puts(b, "Transfer-Encoding: chunked\r\n");
    }
}

/* ---- idempotency keys (README, "Resilience policies") */

enum { IDEM_NONE, IDEM_WAIT_BODY, IDEM_LOOKUP, IDEM_LOCKED, IDEM_OPEN };

/* The request ends: cancel a lookup, and give back a lock that was not completed (gateway
 * error, 5xx, response too big, client gone) so the client may retry with its key. */
static void idem_end(struct lv_request *r)
{
    if (r->idem_op) {
        lv_idem_cancel(r->idem_op);
        r->idem_op = NULL;
    }
    if (r->idem_lock) {
        lv_idem_release(r->idem_lock);
        r->idem_lock = NULL;
    }
    r->idem_state = IDEM_NONE;
    r->idem_capture = false;
}

static bool idem_key_valid(const char *p, size_t n)
{
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)p[i] < 0x20 || (unsigned char)p[i] == 0x7f)
            return false; /* HTAB, CTLs: not a key a client meant */
    return true;
}

static void idem_replay(struct lv_request *r, const struct lv_idem_response *st)
{
    bool close = r->resp_close || !r->client_keep_alive || r->s->draining;
    struct lv_buf *o = &r->cout;
    lv_buf_printf(o, "HTTP/1.1 %d %s\r\n", st->status, lv_http_reason(st->status));
    lv_buf_append(o, st->head, st->head_len);
    lv_buf_puts(o, "Idempotent-Replayed: true\r\nX-Request-Id: ");
    lv_buf_puts(o, r->rid);
    lv_buf_puts(o, "\r\n");
    if (st->status != 204 && st->status != 304) {
        lv_buf_puts(o, "Content-Length: ");
        lv_buf_putu(o, st->body_len);
        lv_buf_puts(o, "\r\n");
    }
    if (close)
        lv_buf_puts(o, "Connection: close\r\n");
    lv_buf_puts(o, "\r\n");
    if (r->method != 2 /* HEAD */)
        lv_buf_append(o, st->body, st->body_len);
    r->bytes_out += o->len;
    r->status = st->status;
    r->head_sent = true;
    r->flags |= LV_ACCESS_IDEMPOTENT_REPLAY;
    lv_metric_add(r->rs->idem_replays, 1);
    request_end(r, close);
}

static void idem_lookup(struct lv_request *r);
static void start_deadline(struct lv_request *r);

static void on_idem_waited(bool changed, void *arg)
{
    struct lv_request *r = arg;
    r->idem_op = NULL;
    if (!r->active)
        return;
    if (changed) {
        idem_lookup(r); /* the first finished (replay) or gave up (take the lock) */
        return;
    }
    r->flags |= LV_ACCESS_IDEMPOTENCY_CONFLICT;
    send_error(r, LV_GWERR_IDEMPOTENCY_CONFLICT, "waited for the request in flight", -1);
    request_end(r, r->resp_close);
}

static uint64_t time_left_ms(struct lv_request *r)
{
    uint64_t now = uv_now(r->s->loop), end = r->deadline_at_ms;
    return end > now ? end - now : 1;
}

static void on_idem(enum lv_idem_result res, const struct lv_idem_response *stored,
                    struct lv_idem_lock *lock, void *arg)
{
    struct lv_request *r = arg;
    r->idem_op = NULL;
    if (!r->active) {
        if (lock)
            lv_idem_release(lock);
        return;
    }
    const struct lv_idem_cfg *ic = &r->route->idempotency;
    switch (res) {
    case LV_IDEM_ACQUIRED:
        r->idem_lock = lock;
        r->idem_state = IDEM_LOCKED;
        attempt_start(r);
        return;
    case LV_IDEM_REPLAY:
        idem_replay(r, stored);
        return;
    case LV_IDEM_IN_FLIGHT:
        lv_metric_add(r->rs->idem_conflicts, 1);
        if (ic->on_conflict == LV_IDEM_CONFLICT_WAIT) {
            r->idem_op = lv_idem_wait(r->rs->idem, r->idem_key.data, r->idem_key.len,
                                      time_left_ms(r), on_idem_waited, r);
            if (r->idem_op)
                return;
            send_error(r, LV_GWERR_IDEMPOTENCY_STORE_UNAVAILABLE, NULL, -1);
            break;
        }
        r->flags |= LV_ACCESS_IDEMPOTENCY_CONFLICT;
        send_error(r, LV_GWERR_IDEMPOTENCY_CONFLICT, NULL, -1);
        break;
    case LV_IDEM_MISMATCH:
        lv_metric_add(r->rs->idem_mismatches, 1);
        send_error(r, LV_GWERR_IDEMPOTENCY_MISMATCH, NULL, -1);
        break;
    case LV_IDEM_FULL:
        lv_metric_add(r->rs->idem_store_errors, 1);
        send_error(r, LV_GWERR_IDEMPOTENCY_STORE_FULL, NULL, -1);
        break;
    case LV_IDEM_UNAVAILABLE:
        lv_metric_add(r->rs->idem_store_errors, 1);
        if (ic->on_store_error == LV_IDEM_FAIL_OPEN) {
            /* Forward without protection, as configured; the log says so. */
            r->idem_state = IDEM_OPEN;
            lv_warn("route %s: idempotency store unavailable, forwarding without protection "
                    "(on_store_error = fail_open)",
                    r->route->name);
            attempt_start(r);
            return;
        }
        send_error(r, LV_GWERR_IDEMPOTENCY_STORE_UNAVAILABLE, NULL, -1);
        break;
    }
    request_end(r, r->resp_close);
}

/* The whole body is in: fingerprint it (method, target, body digest) and ask the store. */
static void idem_lookup(struct lv_request *r)
{
    uint8_t fp[LV_IDEM_FP_LEN];
    const char *m = lv_method_name(r->method);
    start_deadline(r);
    lv_idem_fingerprint(m, strlen(m), r->target.data, r->target.len, r->replay.data, r->replay.len,
                        fp);
    r->idem_state = IDEM_LOOKUP;
    r->idem_op = lv_idem_begin(r->rs->idem, r->idem_key.data, r->idem_key.len, fp, time_left_ms(r),
                               on_idem, r);
}

/* At the head: is this a keyed request? Returns false when it was answered (400). */
static bool idem_begin(struct lv_request *r, const struct lv_reqhead *h)
{
    const struct lv_idem_cfg *ic = &r->route->idempotency;
    r->idem_state = IDEM_NONE;
    if (!ic->enabled || !r->rs->idem || !(ic->methods & LV_METHOD_BIT(r->method)))
        return true;
    const struct lv_field *key = NULL;
    size_t hl = strlen(ic->header);
    for (uint32_t i = 0; i < h->nfields; i++)
        if (h->fields[i].name.len == hl && strncasecmp(h->fields[i].name.p, ic->header, hl) == 0)
            key = &h->fields[i];
    lv_buf_reset(&r->idem_key);
    bool have = false;
    if (ic->key_ref >= 0) {
        /* key(req) derives the key (namespaced by tenant, credential...); nil: no key. */
        struct lv_hook_request hr = {
            .method = lv_method_name(r->method),
            .path = r->target.data,
            .path_len = r->target.len,
            .headers = r->hook_req,
            .nheaders = r->nhook_req,
            .route = r->route->name,
            .request_id = r->rid,
        };
        struct lv_buf err = LV_BUF_INIT;
        int rc = lv_hook_idem_key(r->cfg, ic->key_ref, &hr, &r->idem_key, &err);
        if (rc < 0) {
            /* A failed hook counts as no hook: the header's value is the key. */
            hook_failed(r, 2, &err);
            lv_buf_reset(&r->idem_key);
        } else {
            have = rc == 1 && r->idem_key.len > 0;
            key = NULL;
            if (rc == 0 || !have) {
                lv_buf_dispose(&err);
                goto no_key;
            }
        }
        lv_buf_dispose(&err);
    }
    if (!have && key) {
        if (!idem_key_valid(key->value.p, key->value.len)) {
            send_error(r, LV_GWERR_IDEMPOTENCY_KEY_INVALID, NULL, -1);
            request_end(r, true);
            return false;
        }
        lv_buf_append(&r->idem_key, key->value.p, key->value.len);
        have = true;
    }
no_key:
    if (!have) {
        if (!ic->required)
            return true;
        send_error(r, LV_GWERR_IDEMPOTENCY_KEY_REQUIRED, NULL, -1);
        request_end(r, true);
        return false;
    }
    /* The whole body is kept (it is fingerprinted, and a keyed request may be retried). */
    if (r->body_kind == 1 && r->body_cl > r->route->retry.buffer) {
        send_error(r, LV_GWERR_BODY_TOO_LARGE, "keyed request bodies are kept up to retry.buffer",
                   -1);
        request_end(r, true);
        return false;
    }
    lv_buf_putc(&r->idem_key, '\0');
    r->idem_key.len--;
    r->has_idem_key = true;
    r->idem_state = IDEM_WAIT_BODY;
    return true;
}

/* The final response of a locked request: keep what the store needs. */
static void idem_capture_head(struct lv_request *r, const struct lv_resphead *h)
{
    r->idem_capture = false;
    if (r->idem_state != IDEM_LOCKED || h->status >= 500)
        return; /* 5xx is not stored: the key is released at the end */
    r->idem_capture = true;
    r->idem_status = h->status;
    lv_buf_reset(&r->idem_head);
    lv_buf_reset(&r->idem_body);
    for (uint32_t i = 0; i < h->nfields; i++) {
        const struct lv_field *f = &h->fields[i];
        if ((f->flags & LV_FIELD_HOP) || f->id == LV_FID_CONTENT_LENGTH ||
            f->id == LV_FID_TRANSFER_ENCODING || f->id == LV_FID_X_REQUEST_ID)
            continue;
        lv_buf_append(&r->idem_head, f->name.p, f->name.len);
        lv_buf_puts(&r->idem_head, ": ");
        lv_buf_append(&r->idem_head, f->value.p, f->value.len);
        lv_buf_puts(&r->idem_head, "\r\n");
    }
}

static void idem_capture_body(struct lv_request *r, const char *p, size_t n)
{
    if (!r->idem_capture)
        return;
    if (r->idem_body.len + n > r->route->idempotency.max_body) {
        r->idem_capture = false; /* forwarded, not stored: the key is released at the end */
        lv_info("route %s: response for idempotency key not stored: body over max_body (%zu)",
                r->route->name, r->route->idempotency.max_body);
        lv_buf_dispose(&r->idem_body);
        return;
    }
    lv_buf_append(&r->idem_body, p, n);
}

/* ---- beginning */

static enum lv_gwerr status_to_err(int status)
{
    switch (status) {
    case 405:
        return LV_GWERR_METHOD_NOT_ALLOWED;
    case 413:
        return LV_GWERR_BODY_TOO_LARGE;
    case 414:
        return LV_GWERR_URI_TOO_LONG;
    case 417:
        return LV_GWERR_EXPECTATION_FAILED;
    case 431:
        return LV_GWERR_HEADER_TOO_LARGE;
    case 501:
        return LV_GWERR_NOT_IMPLEMENTED;
    case 505:
        return LV_GWERR_VERSION_NOT_SUPPORTED;
    default:
        return LV_GWERR_BAD_REQUEST;
    }
}

/* Hooks may read the request's headers after its head left the input buffer: keep a copy
 * (only on routes that have a hook). */
static void keep_hook_headers(struct lv_request *r, const struct lv_reqhead *h, const char *base)
{
    lv_buf_reset(&r->hook_head);
    lv_buf_append(&r->hook_head, base,
                  h->fields && h->nfields ? (size_t)(h->fields[h->nfields - 1].value.p +
                                                     h->fields[h->nfields - 1].value.len - base)
                                          : 0);
    size_t n = h->nfields < LV_HOOK_MAX_HEADERS ? h->nfields : LV_HOOK_MAX_HEADERS;
    for (size_t i = 0; i < n; i++) {
        const struct lv_field *f = &h->fields[i];
        r->hook_req[i].name = r->hook_head.data + (f->name.p - base);
        r->hook_req[i].name_len = f->name.len;
        r->hook_req[i].value = r->hook_head.data + (f->value.p - base);
        r->hook_req[i].value_len = f->value.len;
    }
    r->nhook_req = n;
}

/* The breaker is open: the route's fallback answers, or 503 breaker-open. */
/* Every breaker transition is logged once, with what caused it (README, "Circuit breaker"). */
static void breaker_note(struct lv_request *r, const struct lv_breaker *b, uint64_t open0,
                         uint64_t half0, uint64_t closed0, enum lv_breaker_state before,
                         uint64_t now)
{
    const char *name = r->route->name;
    if (b->to_open != open0) {
        struct lv_breaker_stats st;
        lv_breaker_stats(b, now, &st);
        char why[160];
        if (before == LV_BREAKER_HALF_OPEN)
            snprintf(why, sizeof(why), "a half-open probe failed");
        else if (b->p.consecutive_failures && st.consecutive >= b->p.consecutive_failures)
            snprintf(why, sizeof(why), "%u consecutive failures", st.consecutive);
        else if (b->p.failure_ratio > 0 && st.requests &&
                 (double)st.failures >= b->p.failure_ratio * (double)st.requests - 1e-9)
            snprintf(why, sizeof(why), "%llu of %llu failed (ratio %.2g >= %.2g)",
                     (unsigned long long)st.failures, (unsigned long long)st.requests,
                     (double)st.failures / (double)st.requests, b->p.failure_ratio);
        else
            snprintf(why, sizeof(why), "%llu of %llu slower than %llums (ratio >= %.2g)",
                     (unsigned long long)st.slow, (unsigned long long)st.requests,
                     (unsigned long long)b->p.slow_call_ms, b->p.slow_call_ratio);
        lv_log_change(LV_LOG_WARN, "route %s breaker open for %llums: %s", name,
                      (unsigned long long)st.open_for_ms, why);
    }
    if (b->to_half_open != half0)
        lv_log_change(LV_LOG_WARN, "route %s breaker half-open: letting %u probe(s) through", name,
                      b->p.half_open_requests ? b->p.half_open_requests : 1);
    if (b->to_closed != closed0)
        lv_log_change(LV_LOG_WARN, "route %s breaker closed: %u probe(s) succeeded", name,
                      b->p.half_open_requests ? b->p.half_open_requests : 1);
}

static enum lv_breaker_admit breaker_admit(struct lv_request *r, uint64_t now, uint64_t *left)
{
    struct lv_breaker *b = &r->rs->breaker;
    uint64_t o = b->to_open, h = b->to_half_open, c = b->to_closed;
    enum lv_breaker_state before = b->state;
    enum lv_breaker_admit ad = lv_breaker_admit(b, now, left);
    if (b->to_open != o || b->to_half_open != h || b->to_closed != c)
        breaker_note(r, b, o, h, c, before, now);
    return ad;
}

static void breaker_record(struct lv_request *r, uint64_t now, bool failure, bool slow, bool probe)
{
    struct lv_breaker *b = &r->rs->breaker;
    uint64_t o = b->to_open, h = b->to_half_open, c = b->to_closed;
    enum lv_breaker_state before = b->state;
    lv_breaker_record(b, now, failure, slow, probe);
    if (b->to_open != o || b->to_half_open != h || b->to_closed != c)
        breaker_note(r, b, o, h, c, before, now);
}

static void breaker_open(struct lv_request *r, uint64_t left_ms)
{
    struct lv_route_state *rs = r->rs;
    r->flags |= LV_ACCESS_BREAKER_OPEN;
    lv_metric_add(rs->breaker_rejected, 1);
    if (r->body_kind)
        r->resp_close = true; /* its body is not read */
    bool close = r->resp_close || !r->client_keep_alive;
    if (r->route->fallback_ref >= 0) {
        struct lv_hook_request hr = {
            .method = lv_method_name(r->method),
            .path = r->target.data,
            .path_len = r->target.len,
            .headers = r->hook_req,
            .nheaders = r->nhook_req,
            .route = r->route->name,
            .request_id = r->rid,
            .close = close,
        };
        struct lv_buf err = LV_BUF_INIT;
        int status = 0;
        lv_buf_reset(&r->cout);
        if (lv_hook_fallback(r->cfg, r->route->fallback_ref, &hr, "breaker-open", &r->cout, &status,
                             &err) == 0) {
            lv_buf_dispose(&err);
            r->flags |= LV_ACCESS_FALLBACK;
            lv_metric_add(rs->fallbacks, 1);
            r->status = status;
            r->bytes_out += r->cout.len;
            r->head_sent = true;
            r->resp_close = close;
            request_end(r, close);
            return;
        }
        lv_buf_reset(&r->cout);
        if (err.len)
            hook_failed(r, 1, &err);
        lv_buf_dispose(&err);
    }
    send_error(r, LV_GWERR_BREAKER_OPEN, NULL, (int)((left_ms + 999) / 1000));
    request_end(r, r->resp_close);
}

void lv_request_begin(struct lv_client *c, size_t head_len)
{
    struct lv_request *r = &c->rq;
    struct lv_server *s = c->server;
    struct lv_field fields[MAX_FIELDS];
    struct lv_reqhead h;
    uint32_t maxf =
        s->cfg->limits.header_count < MAX_FIELDS ? s->cfg->limits.header_count : MAX_FIELDS;
    int st = lv_reqhead_parse(&h, c->in.data, head_len, fields, maxf);
    if (st != 0) {
        lv_client_error_close(c, st, status_to_err(st), h.reason);
        return;
    }

    /* A request from here on: pin the generation it starts under. */
    r->active = true;
    r->cfg = s->cfg;
    lv_config_pin(r->cfg);
    c->req = r;
    r->route = NULL;
    r->rs = NULL;
    r->up = NULL;
    r->method = h.method;
    r->http10 = h.minor == 0;
    r->client_keep_alive = h.keep_alive;
    r->expect_continue = h.expect_continue && !r->http10;
    r->start_ns = uv_hrtime();
    r->start_unix = 0;
    {
        uv_timeval64_t tv;
        if (uv_gettimeofday(&tv) == 0)
            r->start_unix = (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
    }
    if (h.request_id.len) {
        memcpy(r->rid, h.request_id.p, h.request_id.len);
        r->rid[h.request_id.len] = '\0';
    } else {
        lv_server_request_id(s, r->rid);
    }
    lv_buf_reset(&r->target);
    lv_buf_append(&r->target, h.target.p, h.target.len);
    lv_buf_putc(&r->target, '\0');
    r->target.len--;
    lv_buf_reset(&r->host);
    lv_buf_append(&r->host, h.host.p, h.host.len);
    lv_buf_putc(&r->host, '\0');
    r->host.len--;
    r->body_kind = h.chunked ? 2 : (h.has_content_length && h.content_length > 0 ? 1 : 0);
    r->body_cl = h.content_length;
    r->body_in = 0;
    r->bytes_in = 0;
    r->body_done = r->body_kind == 0;
    lv_buf_reset(&r->replay);
    r->replay_valid = true;
    r->body_sent_any = false;
    r->body_final_sent = false;
    r->attempt = 0;
    r->stale_resend_used = false;
    r->acquiring = false;
    r->uc = NULL;
    r->last_server = NULL;
    r->tried_servers = 0;
    r->ntries = 0;
    r->resp_started = r->head_sent = false;
    r->resp_close = false;
    r->status = 0;
    r->bytes_out = 0;
    r->upstream_ms = -1;
    r->flags = 0;
    r->error_token = NULL;
    r->upstream_paused = false;
    r->start_ms = uv_now(s->loop);
    r->deadline_started = false;
    r->deadline_at_ms = r->start_ms;
    r->probe = false;
    r->in_backoff = false;
    r->prev_delay_ms = 0;
    r->backoff_ms = 0;
    r->has_idem_key = false;
    r->nhook_req = 0;
    if (r->rng == 0)
        r->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)r;

    if (!lv_path_safe(h.path.p, h.path.len)) {
        lv_buf_consume(&c->in, head_len);
        send_error(r, LV_GWERR_BAD_REQUEST, "path has %00 or a dot segment", -1);
        request_end(r, true);
        return;
    }
    if (h.expect_other) {
        lv_buf_consume(&c->in, head_len);
        send_error(r, LV_GWERR_EXPECTATION_FAILED, NULL, -1);
        request_end(r, true);
        return;
    }
    if (r->body_kind == 1 && r->body_cl > s->cfg->limits.body_size) {
        /* Known too large up front: answer without reading it. */
        lv_buf_consume(&c->in, head_len);
        send_error(r, LV_GWERR_BODY_TOO_LARGE, NULL, -1);
        request_end(r, true);
        return;
    }

    /* Route on the parsed head (path without the query, host without the port). */
    char hostbuf[256];
    size_t hostlen = 0;
    int port = -1;
    hostbuf[0] = '\0';
    if (r->host.len)
        lv_host_split(r->host.data, r->host.len, hostbuf, sizeof(hostbuf), &hostlen, &port);
    r->route = lv_router_match(r->cfg, r->method, h.path.p, h.path.len, hostbuf, hostlen);
    if (!r->route) {
        lv_buf_consume(&c->in, head_len);
        send_error(r, LV_GWERR_NO_ROUTE, NULL, -1);
        request_end(r, r->resp_close);
        return;
    }
    build_forward_head(r, &h);
    r->rs = lv_server_route_state(s, r->route->name);
    lv_server_route_use(s, r->rs);
    r->up = lv_server_upstream(s, r->route->upstream);
    lv_server_upstream_use(s, r->up);
    if (r->route->classify_ref >= 0 || r->route->fallback_ref >= 0 ||
        r->route->idempotency.key_ref >= 0)
        keep_hook_headers(r, &h, c->in.data);
    lv_budget_on_request(&r->rs->budget, r->start_ms);
    if (r->rs->breaker_enabled) {
        uint64_t left = 0;
        enum lv_breaker_admit ad = breaker_admit(r, r->start_ms, &left);
        if (ad == LV_BREAKER_REJECT) {
            lv_buf_consume(&c->in, head_len);
            breaker_open(r, left);
            return;
        }
        r->probe = ad == LV_BREAKER_PROBE;
    }
    if (!idem_begin(r, &h)) {
        lv_buf_consume(&c->in, head_len);
        return;
    }
    lv_buf_consume(&c->in, head_len);
    lv_client_input_consumed(c);
    if (r->body_kind)
        lv_body_init(r->body_dec, r->body_kind == 2 ? LV_BODY_CHUNKED : LV_BODY_LENGTH, r->body_cl,
                     s->cfg->limits.body_size);
    if (r->expect_continue && r->body_kind) {
        /* We answer the expectation ourselves (Expect is not forwarded). */
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        lv_client_write(c, cont, sizeof(cont) - 1);
    }
    /* Request buffering: a body up to request_buffer is received before an upstream connection
     * is taken, so a slow client holds no upstream capacity (README, "Request buffering"). */
    r->buffering = r->body_kind && r->route->request_buffer > 0 && r->idem_state == IDEM_NONE;
    r->body_held = false;
    r->body_mark = 0;
    if (r->idem_state == IDEM_NONE && !r->buffering)
        attempt_start(r);
    /* A keyed request first reads its whole body (pump_body asks the store when it is in). */
    if (r->active)
        pump_body(r);
    if (r->active)
        buffering_check(r);
    /* Only a body still on its way needs the body timer (most arrive with their head). */
    if (r->active && !r->body_done)
        uv_timer_start(&r->body_timer, on_body_timer, s->cfg->limits.body_timeout_ms, 0);
}

/* ---- request body */

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

static void on_body_data(void *arg, const char *p, size_t n)
{
    struct body_sink *k = arg;
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
    if (r->body_kind == 2) {
        int m = snprintf(sz, sizeof(sz), "%zx\r\n", n);
        b[nb++] = uv_buf_init(sz, (unsigned)m);
    }
    b[nb++] = uv_buf_init((char *)p, (unsigned)n);
    if (r->body_kind == 2)
        b[nb++] = uv_buf_init("\r\n", 2);
    if (up_write(r, b, nb) < 0)
        k->err = 1;
    r->body_sent_any = true;
}

static void send_body_end(struct lv_request *r)
{
    if (r->body_final_sent || !r->head_written)
        return;
    if (r->body_kind == 2) {
        uv_buf_t b = uv_buf_init("0\r\n\r\n", 5);
        up_write(r, &b, 1);
    }
    r->body_final_sent = true;
}

static void pump_body(struct lv_request *r)
{
    struct lv_client *c = r->c;
    if (!r->active)
        return;
    if (r->body_done) {
        if (r->head_written)
            send_body_end(r);
        if (r->idem_state == IDEM_WAIT_BODY)
            idem_lookup(r);
        return;
    }
    bool connected = r->uc && r->head_written;
    while (c->in.len > 0 && !r->body_done) {
        size_t feed = c->in.len;
        if (connected) {
            if (up_queue_size(r) >= UP_WRITE_HIGH)
                break;
        } else {
            /* Not connected yet: only take what the replay buffer can hold. */
            if (!r->replay_valid)
                break;
            size_t room = hold_cap(r) - r->replay.len;
            if (room == 0) {
                if (r->idem_state == IDEM_WAIT_BODY && !r->body_done) {
                    r->resp_close = true;
                    send_error(r, LV_GWERR_BODY_TOO_LARGE,
                               "keyed request bodies are kept up to retry.buffer", -1);
                    request_end(r, true);
                    return;
                }
                break;
            }
            if (feed > room)
                feed = room;
        }
        struct body_sink k = {r, connected, 0};
        size_t used = 0;
        int rc = body_feed(r->body_dec, c->in.data, feed, &used, on_body_data, &k);
        lv_buf_consume(&c->in, used);
        if (rc == -1) {
            /* Bad chunked framing from the client. */
            r->body_done = true;
            r->resp_close = true;
            if (!r->head_sent) {
                release_upstream(r, false);
                send_error(r, LV_GWERR_BAD_REQUEST, ((struct lv_body *)r->body_dec)->reason, -1);
                request_end(r, true);
            } else {
                abort_client(r, 0);
            }
            return;
        }
        if (rc == -2) {
            r->resp_close = true;
            if (!r->head_sent) {
                release_upstream(r, false);
                send_error(r, LV_GWERR_BODY_TOO_LARGE, NULL, -1);
                request_end(r, true);
            } else {
                abort_client(r, 0);
            }
            return;
        }
        if (rc == 1) {
            r->body_done = true;
            uv_timer_stop(&r->body_timer);
        }
        if (used == 0)
            break;
    }
    if (c->in.len > 0)
        r->body_held = true; /* we are the bottleneck in this rate window, not the client */
    lv_client_input_consumed(c);
    if (r->body_done && connected)
        send_body_end(r);
    if (r->body_done && r->idem_state == IDEM_WAIT_BODY)
        idem_lookup(r);
}

void lv_request_client_data(struct lv_request *r)
{
    if (r->active)
        pump_body(r);
    if (r->active)
        buffering_check(r);
}

/* Buffering ends when the body is all in, or request_buffer bytes are (the rest streams). */
static void buffering_check(struct lv_request *r)
{
    if (!r->buffering)
        return;
    if (r->body_done || !r->replay_valid || r->replay.len >= r->route->request_buffer) {
        r->buffering = false;
        attempt_start(r);
    }
}

/* The client's body is too slow: 408 when no response byte went out yet, else a broken
 * response. The connection closes either way (the rest of the body is unread). */
static void body_too_slow(struct lv_request *r, const char *detail)
{
    lv_debug("client %s: %s", r->c->peer, detail);
    r->resp_close = true;
    if (!r->head_sent) {
        release_upstream(r, false);
        send_error(r, LV_GWERR_REQUEST_TIMEOUT, detail, -1);
        request_end(r, true);
    } else {
        abort_client(r, 0);
    }
}

/*
 * limits.body_timeout and limits.body_rate. While the body is being buffered (or read whole
 * for an idempotency key) it must all arrive within body_timeout. Once it streams, each
 * window of body_timeout must bring at least body_rate bytes per second (at least one byte),
 * except a window in which we left client bytes unread: then the upstream or our own wait
 * for a connection was the bottleneck, not the client.
 */
static void on_body_timer(uv_timer_t *t)
{
    struct lv_request *r = container_of(t, struct lv_request, body_timer);
    if (!r->active || r->body_done)
        return;
    const struct lv_limits_cfg *lim = &r->cfg->limits;
    if (r->buffering || r->idem_state == IDEM_WAIT_BODY) {
        body_too_slow(r, "request body not received within limits.body_timeout");
        return;
    }
    uint64_t need = (uint64_t)lim->body_rate * lim->body_timeout_ms / 1000;
    if (!r->body_held && r->c->in.len == 0 && r->body_in - r->body_mark < (need ? need : 1)) {
        body_too_slow(r, "request body slower than limits.body_rate");
        return;
    }
    r->body_held = false;
    r->body_mark = r->body_in;
    uv_timer_start(&r->body_timer, on_body_timer, lim->body_timeout_ms, 0);
}

/* ---- attempts */

/* Replaying is safe (README, "Resilience policies"): nothing reached the upstream, or an idempotent
 * method, or an idempotency key on a route with idempotency on, or retry.non_idempotent. The retry
 * rule in policy/retry.c applies the same test; this copy serves the stale-connection re-send only.
 */
static bool replay_safe(const struct lv_request *r, enum lv_outcome_kind kind)
{
    return kind == LV_OUT_CONNECT_FAILURE || lv_method_idempotent(r->method) || r->has_idem_key ||
           r->route->retry.non_idempotent;
}

/* Can the request be sent again? (the body is all in the replay buffer, or there is none) */
static bool can_replay(const struct lv_request *r)
{
    if (r->body_kind == 0)
        return true;
    return r->replay_valid && r->replay.len == r->body_in;
}

static uint64_t rand64(struct lv_request *r)
{
    uint64_t x = r->rng += 0x9E3779B97F4A7C15ULL;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

static void hook_headers(const struct lv_field *f, uint32_t n, struct lv_hook_header *out,
                         size_t *nout, size_t cap)
{
    size_t k = 0;
    for (uint32_t i = 0; i < n && k < cap; i++) {
        out[k].name = f[i].name.p;
        out[k].name_len = f[i].name.len;
        out[k].value = f[i].value.p;
        out[k].value_len = f[i].value.len;
        k++;
    }
    *nout = k;
}

static void hook_failed(struct lv_request *r, int which, const struct lv_buf *err)
{
    r->flags |= LV_ACCESS_HOOK_ERROR;
    /* Series per kind appear on the first failure of that kind: a route whose hooks never
     * fail adds no lines to /metrics. */
    static const char *const hook_names[] = {"classify", "fallback", "key"};
    enum lv_hook_failure kind = lv_hook_last_failure(r->cfg);
    struct lv_metric **m = &r->rs->hook_errors[which][kind];
    if (!*m) {
        const char *lbl[] = {r->rs->name, hook_names[which], lv_hook_failure_name(kind), NULL};
        *m = lv_metric_series(r->s->m_hook_errors, lbl);
    }
    lv_metric_add(*m, 1);
    /* At most one log line per route per second: a broken hook must not flood the log. */
    uint64_t now = uv_now(r->s->loop);
    if (now - r->rs->hook_log_at >= 1000 || r->rs->hook_log_at == 0) {
        r->rs->hook_log_at = now;
        lv_warn("route %s: %s hook failed (counted as no hook): %.*s", r->route->name,
                which == 2 ? "idempotency key"
                : which    ? "fallback"
                           : "classify",
                (int)err->len, err->data ? err->data : "");
    }
}

/* The verdict on one attempt: the route's classify hook when it gives one, else retry.on. */
static enum lv_verdict classify(struct lv_request *r, struct lv_outcome o,
                                const struct lv_resphead *h, double attempt_ms,
                                uint64_t *hook_delay, bool *has_hook_delay)
{
    *has_hook_delay = false;
    const struct lv_route_cfg *rt = r->route;
    if (rt->classify_ref >= 0) {
        struct lv_hook_header rh[64], qh[64];
        size_t nrh = 0, nqh = 0;
        if (h)
            hook_headers(h->fields, h->nfields, rh, &nrh, 64);
        for (size_t i = 0; i < r->nhook_req && nqh < 64; i++)
            qh[nqh++] = r->hook_req[i];
        struct lv_hook_attempt a = {
            .status = o.kind == LV_OUT_STATUS ? o.status : 0,
            .error = o.kind == LV_OUT_STATUS ? NULL : lv_outcome_name(o.kind),
            .headers = rh,
            .nheaders = nrh,
            .duration_s = attempt_ms / 1000.0,
            .number = r->attempt,
            .route = rt->name,
            .method = lv_method_name(r->method),
            .path = r->target.data,
            .path_len = r->target.len,
            .req_headers = qh,
            .nreq_headers = nqh,
        };
        struct lv_buf err = LV_BUF_INIT;
        enum lv_hook_verdict hv =
            lv_hook_classify(r->cfg, rt->classify_ref, &a, hook_delay, has_hook_delay, &err);
        if (hv == LV_HOOK_NONE && err.len)
            hook_failed(r, 0, &err);
        lv_buf_dispose(&err);
        if (hv != LV_HOOK_NONE)
            return (enum lv_verdict)hv;
        *has_hook_delay = false;
    }
    return lv_classify_default(rt->retry.on_errors, rt->retry.on_status, o);
}

static void on_backoff_done(uv_timer_t *t);
static void start_backoff(struct lv_request *r);

/*
 * An attempt ended with outcome `o` (h: its response head, for a status). Classifies it,
 * tells the breaker, and asks the one retry rule (policy/retry.c) whether to go again.
 * Returns true when a retry is scheduled: the caller then drops this attempt's result.
 */
static bool next_attempt(struct lv_request *r, struct lv_outcome o, const struct lv_resphead *h)
{
    struct lv_route_state *rs = r->rs;
    const struct lv_retry_cfg *rc = &r->route->retry;
    uv_update_time(r->s->loop); /* the cached loop time may lag: the deadline rule needs now */
    uint64_t now = uv_now(r->s->loop);
    double attempt_ms = ms_since(r->attempt_start_ns);
    lv_server_count_attempt(r->s, rs, (int)o.kind, o.status);
    if (r->up && !r->up->attempt_duration) {
        const char *lu[] = {r->up->name, NULL};
        r->up->attempt_duration = lv_metric_series(r->s->m_attempt_duration, lu);
    }
    if (r->up)
        lv_metric_observe(r->up->attempt_duration, attempt_ms / 1000.0);

    uint64_t hook_delay = 0;
    bool has_hook_delay = false;
    enum lv_verdict v = classify(r, o, h, attempt_ms, &hook_delay, &has_hook_delay);
    if (rs->breaker_enabled && v != LV_VERDICT_NONE) {
        breaker_record(r, now, lv_verdict_is_failure(v),
                       lv_breaker_is_slow(&rs->breaker, (uint64_t)attempt_ms), r->probe);
        r->probe = false;
    }
    if (v != LV_VERDICT_RETRY)
        return false;

    const char *ra = NULL;
    size_t ra_len = 0;
    for (uint32_t i = 0; h && i < h->nfields; i++) {
        if (lv_field_name_eq(h->fields[i].name.p, h->fields[i].name.len, "retry-after")) {
            ra = h->fields[i].value.p;
            ra_len = h->fields[i].value.len;
        }
    }
    uv_timeval64_t tv = {0, 0};
    uv_gettimeofday(&tv);
    struct lv_retry_delay_ask da = {
        .outcome = o,
        .has_hook_delay = has_hook_delay,
        .hook_delay_ms = hook_delay,
        .retry_after = ra,
        .retry_after_len = ra_len,
        .now_unix_s = tv.tv_sec,
        .jitter = (int)rc->jitter,
        .base_ms = rc->backoff_base_ms,
        .max_ms = rc->backoff_max_ms,
        .retry_number = (uint32_t)r->attempt,
        .prev_delay_ms = r->prev_delay_ms,
        .rand64 = rand64(r),
    };
    bool from_server = false;
    uint64_t delay = lv_retry_delay(&da, &from_server);
    uint64_t planned = delay;
    uint64_t try_ms = r->route->try_timeout_ms;
    struct lv_retry_ask ask = {
        .verdict = v,
        .outcome = o,
        .attempts_made = (uint32_t)r->attempt,
        .max_attempts = rc->attempts,
        .now_ms = now,
        .deadline_ms = r->deadline_at_ms,
        .delay_ms = delay,
        .delay_from_server = from_server,
        .min_try_ms = try_ms && try_ms < 10 ? try_ms : 10,
        .response_started = r->head_sent,
        .method = r->method,
        .has_idempotency_key = r->has_idem_key,
        .non_idempotent_allowed = rc->non_idempotent,
        .replayable = can_replay(r),
        .budget_allows = lv_budget_can_retry(&rs->budget, now),
    };
    enum lv_retry_no no = lv_retry_decide(&ask, &delay);
    if (no == LV_RETRY_NO_BUDGET) {
        r->flags |= LV_ACCESS_BUDGET_EXHAUSTED;
        lv_metric_add(rs->budget_exhausted, 1);
    }
    if (no != LV_RETRY_GO)
        return false;
    if (rs->breaker_enabled) {
        uint64_t left = 0;
        enum lv_breaker_admit ad = breaker_admit(r, now, &left);
        if (ad == LV_BREAKER_REJECT) {
            r->flags |= LV_ACCESS_BREAKER_OPEN;
            return false; /* the client gets this attempt's result */
        }
        r->probe = ad == LV_BREAKER_PROBE;
    }
    /* Counted now, so retries waiting in backoff count against the budget. */
    lv_budget_on_retry(&rs->budget, now);
    r->prev_delay_ms = planned;
    r->backoff_ms += (double)delay;
    r->flags |= LV_ACCESS_RETRIED;
    lv_metric_add(rs->retries, 1);
    r->backoff_next_ms = delay;
    return true;
}

/* Wait out the backoff, then the next attempt. Called once the last attempt's connection
 * was let go (release_upstream stops the timer we use). */
static void start_backoff(struct lv_request *r)
{
    r->in_backoff = true;
    uv_timer_start(&r->try_timer, on_backoff_done, r->backoff_next_ms, 0);
}

static void on_backoff_done(uv_timer_t *t)
{
    struct lv_request *r = container_of(t, struct lv_request, try_timer);
    r->in_backoff = false;
    if (r->active)
        attempt_start(r);
}

static void record_try(struct lv_request *r, enum lv_outcome_kind kind, int status)
{
    if (r->ntries < LV_MAX_TRIES) {
        struct lv_try *t = &r->tries[r->ntries++];
        t->kind = kind;
        t->status = status;
        t->server = r->last_server ? r->last_server->name : NULL;
        t->ms = ms_since(r->attempt_start_ns);
    }
}

static enum lv_gwerr outcome_error(enum lv_outcome_kind kind)
{
    switch (kind) {
    case LV_OUT_CONNECT_FAILURE:
        return LV_GWERR_CONNECT_FAILURE;
    case LV_OUT_RESET:
        return LV_GWERR_UPSTREAM_RESET;
    case LV_OUT_TIMEOUT:
        return LV_GWERR_UPSTREAM_TIMEOUT;
    default:
        return LV_GWERR_BAD_UPSTREAM_RESPONSE;
    }
}

/* The current attempt ended without a usable response head. */
static void attempt_failed(struct lv_request *r, enum lv_outcome_kind kind, const char *detail)
{
    bool was_reused = r->uc && r->uc->reused;
    bool got_bytes = r->rhead.len > 0;
    record_try(r, kind, 0);
    release_upstream(r, false);
    r->head_written = false;
    /* A reused keep-alive connection the upstream had already closed: send once more on a
     * fresh connection, when replaying is safe (not counted as a retry). */
    if (was_reused && kind == LV_OUT_RESET && !got_bytes && !r->stale_resend_used &&
        replay_safe(r, kind) && can_replay(r)) {
        r->stale_resend_used = true;
        r->want_fresh = true;
        r->attempt--;
        attempt_start(r);
        return;
    }
    if (kind != LV_OUT_CONNECT_FAILURE)
        lv_upstream_report(r->up, r->last_server,
                           kind == LV_OUT_RESET     ? LV_HEALTH_RESET
                           : kind == LV_OUT_TIMEOUT ? LV_HEALTH_TIMEOUT
                                                    : LV_HEALTH_PROTOCOL_ERROR);
    if (next_attempt(r, (struct lv_outcome){kind, 0}, NULL)) {
        start_backoff(r);
        return;
    }
    if (kind == LV_OUT_TIMEOUT && uv_now(r->s->loop) >= r->deadline_at_ms) {
        r->flags |= LV_ACCESS_DEADLINE_EXCEEDED;
        send_error(r, LV_GWERR_DEADLINE_EXCEEDED, NULL, -1);
    } else {
        send_error(r, outcome_error(kind), detail, -1);
    }
    request_end(r, r->resp_close);
}

static void mark_tried(struct lv_request *r, const struct lv_upserver *s)
{
    size_t i = lv_upserver_index(s);
    if (i < 64)
        r->tried_servers |= (uint64_t)1 << i;
    if (r->acq.panic)
        r->flags |= LV_ACCESS_PANIC;
}

static void on_acquired(enum lv_acquire_error err, struct lv_upconn *uc, const char *detail,
                        void *arg)
{
    struct lv_request *r = arg;
    r->acquiring = false;
    if (!r->active) {
        if (uc)
            lv_upconn_release(uc);
        return;
    }
    if (err != LV_ACQUIRE_OK) {
        if (err == LV_ACQUIRE_OVERFLOW || err == LV_ACQUIRE_QUEUE_TIMEOUT) {
            record_try(r, LV_OUT_NONE, 0);
            send_error(r, LV_GWERR_POOL_OVERFLOW, detail, 1);
            request_end(r, r->resp_close);
            return;
        }
        r->last_server = r->acq.server;
        mark_tried(r, r->acq.server);
        lv_upstream_report(r->up, r->acq.server, LV_HEALTH_CONNECT_FAILURE);
        lv_warn("route %s: connect to upstream %s failed: %s", r->route->name, r->up->name,
                detail ? detail : "?");
        attempt_failed(r, LV_OUT_CONNECT_FAILURE, detail);
        return;
    }
    r->uc = uc;
    r->last_server = uc->server;
    mark_tried(r, uc->server);
    uc->server->inflight++;
    uc->read_arg = r;
    r->rhead.len = 0;
    lv_headscan_init(&r->rhs, true, MAX_RESP_HEAD, MAX_RESP_HEAD, 1000);
    r->resp_started = false;
    r->up_reusable = false;
    /* Head, attempt number, then the buffered body. */
    char attempt_hdr[160]; /* the server name is at most 79 bytes */
    int n =
        r->add_server_host
            ? snprintf(attempt_hdr, sizeof(attempt_hdr), "Host: %s\r\nLevee-Attempt: %d\r\n\r\n",
                       uc->server->name, r->attempt)
            : snprintf(attempt_hdr, sizeof(attempt_hdr), "Levee-Attempt: %d\r\n\r\n", r->attempt);
    uv_buf_t b[3];
    unsigned nb = 0;
    b[nb++] = uv_buf_init(r->fwd.data, (unsigned)r->fwd.len);
    b[nb++] = uv_buf_init(attempt_hdr, (unsigned)n);
    char sz[24];
    lv_buf_reset(&r->out);
    if (r->body_kind && r->replay.len) {
        if (r->body_kind == 2) {
            int m = snprintf(sz, sizeof(sz), "%zx\r\n", r->replay.len);
            lv_buf_append(&r->out, sz, (size_t)m);
            lv_buf_append(&r->out, r->replay.data, r->replay.len);
            lv_buf_puts(&r->out, "\r\n");
        } else {
            lv_buf_append(&r->out, r->replay.data, r->replay.len);
        }
        b[nb++] = uv_buf_init(r->out.data, (unsigned)r->out.len);
        r->body_sent_any = true;
    }
    r->head_written = true;
    r->body_final_sent = false;
    if (up_write(r, b, nb) < 0) {
        attempt_failed(r, LV_OUT_RESET, "write failed");
        return;
    }
    lv_upconn_read_start(uc, on_up_read, r);
    uint64_t try_to = r->route->try_timeout_ms;
    uint64_t now = uv_now(r->s->loop);
    uint64_t left = r->deadline_at_ms > now ? r->deadline_at_ms - now : 1;
    if (!try_to || try_to > left)
        try_to = left;
    uv_timer_start(&r->try_timer, on_try_timeout, try_to, 0);
    pump_body(r);
}

/* The route timeout counts from the first attempt (or idempotency lookup): time spent
 * receiving a buffered body is bounded by limits.body_timeout instead. */
static void start_deadline(struct lv_request *r)
{
    if (r->deadline_started)
        return;
    r->deadline_started = true;
    r->deadline_at_ms = uv_now(r->s->loop) + r->route->timeout_ms;
    uv_timer_start(&r->deadline_timer, on_deadline, r->route->timeout_ms, 0);
}

static void attempt_start(struct lv_request *r)
{
    start_deadline(r);
    r->attempt++;
    r->attempt_start_ns = uv_hrtime();
    r->head_written = false;
    r->body_final_sent = false;
    r->acquiring = true;
    bool fresh = r->want_fresh;
    r->want_fresh = false;
    /* A retry prefers a server not tried yet; the stale-connection resend goes to the same one. */
    lv_upstream_acquire(r->up, &r->acq, r->ntries ? r->last_server : NULL, r->tried_servers, fresh,
                        on_acquired, r);
}

static void on_try_timeout(uv_timer_t *t)
{
    struct lv_request *r = container_of(t, struct lv_request, try_timer);
    if (!r->active || r->in_backoff)
        return;
    if (r->resp_started) {
        /* The upstream stalled in the middle of the body. */
        if (r->upstream_paused)
            return; /* we stopped reading it: the client's send timeout governs */
        lv_warn("route %s: upstream %s stalled mid-response", r->route->name,
                r->last_server ? r->last_server->name : "?");
        abort_client(r, LV_ACCESS_UPSTREAM_ABORT);
        return;
    }
    attempt_failed(r, LV_OUT_TIMEOUT, NULL);
}

static void on_deadline(uv_timer_t *t)
{
    struct lv_request *r = container_of(t, struct lv_request, deadline_timer);
    if (!r->active)
        return;
    if (r->head_sent) {
        /* The response is streaming: the deadline covers getting it, not reading it. */
        return;
    }
    r->flags |= LV_ACCESS_DEADLINE_EXCEEDED;
    if (r->uc || r->acquiring)
        record_try(r, r->uc ? LV_OUT_TIMEOUT : LV_OUT_CONNECT_FAILURE, 0);
    release_upstream(r, false);
    send_error(r, LV_GWERR_DEADLINE_EXCEEDED, NULL, -1);
    request_end(r, r->resp_close);
}

/* ---- response */

static void write_client_head(struct lv_request *r, const struct lv_resphead *h)
{
    struct lv_buf *o = &r->cout;
    size_t start = o->len;
    lv_buf_printf(o, "HTTP/1.1 %d ", h->status);
    if (h->reason_phrase.len)
        lv_buf_append(o, h->reason_phrase.p, h->reason_phrase.len);
    else
        lv_buf_puts(o, lv_http_reason(h->status));
    lv_buf_puts(o, "\r\n");
    for (uint32_t i = 0; i < h->nfields; i++) {
        const struct lv_field *f = &h->fields[i];
        if (f->flags & LV_FIELD_HOP)
            continue;
        if (f->id == LV_FID_CONTENT_LENGTH || f->id == LV_FID_TRANSFER_ENCODING ||
            f->id == LV_FID_X_REQUEST_ID)
            continue;
        lv_buf_append(o, f->name.p, f->name.len);
        lv_buf_puts(o, ": ");
        lv_buf_append(o, f->value.p, f->value.len);
        lv_buf_puts(o, "\r\n");
    }
    lv_buf_puts(o, "X-Request-Id: ");
    lv_buf_puts(o, r->rid);
    lv_buf_puts(o, "\r\n");
    if (h->status >= 200) {
        if (r->resp_no_body) {
            /* HEAD and 304 keep the length the upstream announced; 204 has none. */
            if (h->has_content_length && h->status != 204) {
                lv_buf_puts(o, "Content-Length: ");
                lv_buf_putu(o, h->content_length);
                lv_buf_puts(o, "\r\n");
            }
        } else if (h->body == LV_BODY_LENGTH) {
            lv_buf_puts(o, "Content-Length: ");
            lv_buf_putu(o, h->content_length);
            lv_buf_puts(o, "\r\n");
        } else if (!r->http10) {
            lv_buf_puts(o, "Transfer-Encoding: chunked\r\n");
            r->resp_rechunk = true;
        } else {
            r->resp_close = true; /* HTTP/1.0 client: the body ends at close */
        }
        bool close = r->resp_close || !r->client_keep_alive || r->s->draining;
        if (close) {
            r->resp_close = true;
            lv_buf_puts(o, "Connection: close\r\n");
        } else if (r->http10) {
            lv_buf_puts(o, "Connection: keep-alive\r\n");
        }
    }
    lv_buf_puts(o, "\r\n");
    r->bytes_out += o->len - start;
}

struct resp_sink {
    struct lv_request *r;
};

/* Pieces at least this long are referenced, not copied (below it a copy is cheaper). */
#define LV_CPIECE_MIN 2048

static void on_resp_data(void *arg, const char *p, size_t n)
{
    struct lv_request *r = arg;
    size_t start = r->cout.len;
    if (r->resp_rechunk)
        lv_buf_printf(&r->cout, "%zx\r\n", n);
    /* By reference only while the bytes outlive the write: not for keyed requests, whose
     * last bytes may wait for the store after this read returns. */
    bool by_ref = n >= LV_CPIECE_MIN && !r->idem_lock &&
                  r->ncpieces + 3 <= LV_CPIECES_MAX; /* mark, piece, the next mark */
    if (by_ref) {
        cout_mark(r);
        r->cpieces[r->ncpieces++] = (struct lv_cpiece){p, 0, n};
        r->bytes_out += n;
    } else {
        lv_buf_append(&r->cout, p, n);
    }
    if (r->resp_rechunk)
        lv_buf_append(&r->cout, "\r\n", 2);
    idem_capture_body(r, p, n);
    r->bytes_out += r->cout.len - start;
}

static void response_complete(struct lv_request *r, bool clean)
{
    if (r->resp_rechunk) {
        lv_buf_append(&r->cout, "0\r\n\r\n", 5);
        r->bytes_out += 5;
    }
    if (!clean)
        r->up_reusable = false;
    finish(r);
}

/* Feed response body bytes; returns false if the request ended. */
static bool feed_resp_body(struct lv_request *r, const char *data, size_t n)
{
    if (n == 0)
        return true;
    /* Idle bound while streaming: the route timeout between two reads. */
    uv_timer_start(&r->try_timer, on_try_timeout, r->route->timeout_ms, 0);
    size_t used = 0;
    int rc = body_feed(r->resp_dec, data, n, &used, on_resp_data, r);
    if (r->ncpieces)
        flush_client(r); /* the pieces point into `data`: out before anything else happens */
    if (rc < 0) {
        lv_warn("route %s: upstream %s sent a broken body: %s", r->route->name,
                r->last_server ? r->last_server->name : "?",
                ((struct lv_body *)r->resp_dec)->reason);
        abort_client(r, LV_ACCESS_UPSTREAM_ABORT);
        return false;
    }
    if (rc == 1) {
        /* Bytes after a complete response were never asked for: never pool that connection. */
        response_complete(r, used == n);
        return false;
    }
    flush_client(r);
    if (!r->c->closed && r->c->write_queued >= LV_CLIENT_WRITE_HIGH && r->uc) {
        lv_upconn_read_stop(r->uc);
        r->upstream_paused = true;
    }
    return true;
}

void lv_request_client_drained(struct lv_request *r)
{
    if (r->active && r->upstream_paused && r->uc) {
        r->upstream_paused = false;
        lv_upconn_read_start(r->uc, on_up_read, r);
    }
}

static void on_response_head(struct lv_request *r)
{
    struct lv_field fields[MAX_FIELDS];
    struct lv_resphead h;
    for (;;) {
        int st = lv_resphead_parse(&h, r->rhead.data, r->rhs.head_len, r->method == 2, fields,
                                   MAX_FIELDS);
        if (st != 0) {
            lv_warn("route %s: upstream %s sent an invalid response head: %s", r->route->name,
                    r->last_server ? r->last_server->name : "?", h.reason ? h.reason : "");
            attempt_failed(r, LV_OUT_PROTOCOL_ERROR, h.reason);
            return;
        }
        if (h.status == 101) {
            attempt_failed(r, LV_OUT_PROTOCOL_ERROR, "unrequested 101 Switching Protocols");
            return;
        }
        if (h.status < 200) {
            /* Interim response: pass it on to HTTP/1.1 clients (not 100: Expect is ours). */
            if (!r->http10 && h.status != 100) {
                r->resp_no_body = true;
                write_client_head(r, &h);
            }
            lv_buf_consume(&r->rhead, r->rhs.head_len);
            if (r->after_n) { /* the rest of the read becomes the next head's start */
                lv_buf_append(&r->rhead, r->after_p, r->after_n);
                r->after_n = 0;
            }
            size_t rest = r->rhead.len;
            lv_headscan_init(&r->rhs, true, MAX_RESP_HEAD, MAX_RESP_HEAD, 1000);
            if (rest == 0)
                return;
            enum lv_headscan_result res = lv_headscan_feed(&r->rhs, r->rhead.data, r->rhead.len);
            if (res == LV_HEADSCAN_MORE)
                return;
            if (res == LV_HEADSCAN_ERROR) {
                attempt_failed(r, LV_OUT_PROTOCOL_ERROR, r->rhs.reason);
                return;
            }
            continue;
        }
        break;
    }
    /* A final head. */
    uv_timer_stop(&r->try_timer);
    r->resp_started = true;
    r->upstream_ms = ms_since(r->attempt_start_ns);
    record_try(r, LV_OUT_STATUS, h.status);
    lv_upstream_report(r->up, r->last_server, h.status >= 500 ? LV_HEALTH_5XX : LV_HEALTH_SUCCESS);
    if (next_attempt(r, (struct lv_outcome){LV_OUT_STATUS, h.status}, &h)) {
        /* This response is dropped: its connection cannot be reused with a body unread. */
        release_upstream(r, false);
        r->resp_started = false;
        start_backoff(r);
        return;
    }
    r->status = h.status;
    r->resp_no_body = h.body == LV_BODY_NONE;
    r->resp_until_eof = h.body == LV_BODY_EOF;
    r->resp_rechunk = false;
    r->up_reusable = h.reusable;
    idem_capture_head(r, &h);
    write_client_head(r, &h);
    r->head_sent = true;
    /* The bytes after the head: still in the read block, or in rhead. */
    const char *rest = r->rhead.data + r->rhs.head_len;
    size_t nrest = r->rhead.len - r->rhs.head_len;
    if (r->after_n) {
        rest = r->after_p;
        nrest = r->after_n;
        r->after_n = 0;
    }
    if (r->resp_no_body) {
        response_complete(r, nrest == 0);
        return;
    }
    lv_body_init(r->resp_dec, h.body, h.content_length, LV_BODY_UNLIMITED);
    if (h.body == LV_BODY_LENGTH && h.content_length == 0) {
        response_complete(r, nrest == 0);
        return;
    }
    feed_resp_body(r, rest, nrest);
}

static void on_up_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg)
{
    struct lv_request *r = arg;
    if (!r || !r->active || r->uc != uc)
        return;
    if (nread > 0)
        uc->server->received_bytes += (uint64_t)nread; /* levee_upstream_received_bytes_total */
    if (nread < 0) {
        if (!r->resp_started) {
            attempt_failed(r, LV_OUT_RESET,
                           nread == UV_EOF ? "upstream closed the connection"
                                           : uv_strerror((int)nread));
            return;
        }
        if (r->resp_until_eof && nread == UV_EOF) {
            lv_body_eof(r->resp_dec);
            r->up_reusable = false;
            response_complete(r, false);
            return;
        }
        lv_warn("route %s: upstream %s: response truncated (%s)", r->route->name,
                r->last_server ? r->last_server->name : "?", uv_strerror((int)nread));
        abort_client(r, LV_ACCESS_UPSTREAM_ABORT);
        return;
    }
    if (!r->resp_started) {
        if (r->rhead.len + (size_t)nread > MAX_RESP_HEAD + 65536) {
            attempt_failed(r, LV_OUT_PROTOCOL_ERROR, "response head too large");
            return;
        }
        enum lv_headscan_result res;
        if (r->rhead.len == 0) {
            /* Usually the whole head is in this read: scan it in place and copy only the head,
             * so the body after it can go to the client without a copy. */
            res = lv_headscan_feed(&r->rhs, data, (size_t)nread);
            if (res == LV_HEADSCAN_DONE) {
                lv_buf_append(&r->rhead, data, r->rhs.head_len);
                r->after_p = data + r->rhs.head_len;
                r->after_n = (size_t)nread - r->rhs.head_len;
            } else {
                lv_buf_append(&r->rhead, data, (size_t)nread);
            }
        } else {
            lv_buf_append(&r->rhead, data, (size_t)nread);
            res = lv_headscan_feed(&r->rhs, r->rhead.data, r->rhead.len);
        }
        if (res == LV_HEADSCAN_MORE)
            return;
        if (res == LV_HEADSCAN_ERROR) {
            lv_warn("route %s: upstream %s sent an invalid response: %s", r->route->name,
                    r->last_server ? r->last_server->name : "?", r->rhs.reason);
            attempt_failed(r, LV_OUT_PROTOCOL_ERROR, r->rhs.reason);
            return;
        }
        on_response_head(r);
        r->after_n = 0;  /* it pointed into this read */
        flush_client(r); /* interim heads */
        return;
    }
    feed_resp_body(r, data, (size_t)nread);
}
