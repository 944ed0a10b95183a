/*
 * otlphttp: the collector URL and one POST at a time over net/upstream (see otlphttp.h).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include "base/addr.h"
#include "base/buf.h"
#include "http/body.h"
#include "http/headscan.h"
#include "http/resphead.h"
#include "net/upstream.h"
#include "trace/otlphttp.h"

#ifndef LEVEE_VERSION
#define LEVEE_VERSION "0"
#endif

/* The collector's response head: a few KiB at most in practice. */
#define MAX_HEAD   16384
#define MAX_FIELDS 64
/* What may pile up before the head is complete: the head limit plus one read. */
#define MAX_PENDING (MAX_HEAD + 65536)
/* A response body is skipped, not kept; past this the connection is not worth keeping. */
#define MAX_BODY (1024 * 1024)

/* ---- URL */

const char *lv_otlp_url_parse(const char *url, struct lv_otlp_url *out)
{
    memset(out, 0, sizeof(*out));
    if (!url || !*url)
        return "no url";
    for (const unsigned char *p = (const unsigned char *)url; *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
            return "url: whitespace, control or non-ASCII bytes";
    bool tls;
    const char *rest;
    if (strncasecmp(url, "http://", 7) == 0) {
        tls = false;
        rest = url + 7;
    } else if (strncasecmp(url, "https://", 8) == 0) {
        tls = true;
        rest = url + 8;
    } else {
        return "url: must start with http:// or https://";
    }
    if (strchr(rest, '#'))
        return "url: a fragment (#) is not allowed";
    size_t alen = strcspn(rest, "/?");
    const char *path = rest + alen;
    if (*path == '?')
        return "url: the path must start with /";
    if (alen == 0)
        return "url: no host";
    if (memchr(rest, '@', alen))
        return "url: user info is not supported";
    /* The port: after the last ':' that is outside an IPv6 literal's brackets. */
    const char *host = rest;
    size_t hlen = alen;
    const char *port = NULL;
    size_t plen = 0;
    if (rest[0] == '[') {
        const char *close = memchr(rest, ']', alen);
        if (!close)
            return "url: unclosed [ in the host";
        hlen = (size_t)(close - rest) + 1;
        if (hlen < alen) {
            if (close[1] != ':')
                return "url: junk after ]";
            port = close + 2;
            plen = alen - hlen - 1;
        }
    } else {
        const char *colon = memchr(rest, ':', alen);
        if (colon) {
            hlen = (size_t)(colon - rest);
            port = colon + 1;
            plen = alen - hlen - 1;
        }
    }
    unsigned long pn = tls ? 443 : 80;
    if (port) {
        if (plen == 0 || plen > 5)
            return "url: bad port";
        pn = 0;
        for (size_t i = 0; i < plen; i++) {
            if (port[i] < '0' || port[i] > '9')
                return "url: bad port";
            pn = pn * 10 + (unsigned long)(port[i] - '0');
        }
        if (pn == 0 || pn > 65535)
            return "url: port out of range";
    }
    if (hlen == 0)
        return "url: no host";
    char hp[LV_ADDR_HOST_MAX + 16];
    if (hlen > LV_ADDR_HOST_MAX)
        return "url: host too long";
    snprintf(hp, sizeof(hp), "%.*s:%lu", (int)hlen, host, pn);
    struct lv_addr a;
    if (lv_addr_parse(hp, strlen(hp), &a, NULL, 0) != 0)
        return "url: bad host";
    if (rest[0] == '[' && a.family != AF_INET6)
        return "url: bad IPv6 address";
    out->host = lv_xstrdup(a.host);
    out->port = (uint16_t)pn;
    out->tls = tls;
    out->ipv6 = a.family == AF_INET6;
    out->path = lv_xstrdup(*path ? path : LV_OTLP_DEFAULT_PATH);
    return NULL;
}

void lv_otlp_url_free(struct lv_otlp_url *u)
{
    free(u->host);
    free(u->path);
    memset(u, 0, sizeof(*u));
}

/* ---- client */

struct lv_otlp_client {
    uv_loop_t *loop;
    struct lv_upstream *up;
    struct lv_upstream_cfg cfg; /* the upstream points at it: lives as long as the client */
    struct lv_hostport hp;
    char *host_header;
    char *path;
    uv_timer_t timer; /* the POST's timeout */
    int closing;      /* handles left to close (timer, upstream) once freeing */
    bool freeing;
    /* the POST under way */
    bool active;
    bool acquiring;
    bool fresh_used; /* the one re-send after a stale pooled connection was used */
    uint32_t try_id; /* tells a write's completion which POST it was part of */
    struct lv_acquire acq;
    struct lv_upconn *uc;
    struct lv_buf req; /* head and body as sent */
    lv_otlp_done_cb cb;
    void *arg;
    /* the response */
    bool got_bytes;
    bool head_done;
    bool reusable;
    int status;
    struct lv_headscan hs;
    struct lv_buf head;
    struct lv_body dec;
};

struct post_write {
    uv_write_t req;
    struct lv_otlp_client *c;
    uint32_t try_id;
    char data[];
};

static void maybe_free(struct lv_otlp_client *c)
{
    if (--c->closing > 0)
        return;
    lv_buf_dispose(&c->req);
    lv_buf_dispose(&c->head);
    free(c->host_header);
    free(c->path);
    free(c->hp.host);
    free(c->cfg.name);
    free(c->cfg.tls_ca);
    free(c);
}

static void on_up_closed(struct lv_upstream *up)
{
    struct lv_otlp_client *c = up->owner;
    lv_upstream_free(up);
    maybe_free(c);
}

static void on_timer_closed(uv_handle_t *h)
{
    maybe_free(h->data);
}

struct lv_otlp_client *lv_otlp_client_new(uv_loop_t *loop, const struct lv_otlp_url *u,
                                          const char *tls_ca, uint64_t connect_timeout_ms)
{
    struct lv_otlp_client *c = lv_xcalloc(1, sizeof(*c));
    c->loop = loop;
    c->hp.host = lv_xstrdup(u->host);
    c->hp.port = u->port;
    c->path = lv_xstrdup(u->path);
    struct lv_buf h = LV_BUF_INIT;
    bool dflt = u->port == (u->tls ? 443 : 80);
    lv_buf_printf(&h, u->ipv6 ? "[%s]" : "%s", u->host);
    if (!dflt)
        lv_buf_printf(&h, ":%u", (unsigned)u->port);
    lv_buf_putc(&h, '\0');
    c->host_header = h.data;
    c->cfg.name = lv_xstrdup("otlp-collector");
    c->cfg.servers = &c->hp;
    c->cfg.nservers = 1;
    c->cfg.connect_timeout_ms = connect_timeout_ms ? connect_timeout_ms : 1000;
    c->cfg.pool.max_idle = 2;
    c->cfg.pool.idle_timeout_ms = 30000;
    c->cfg.pool.max_lifetime_ms = 600000;
    c->cfg.pool.max_connections = 4;
    c->cfg.pool.queue_size = 4;
    c->cfg.pool.queue_timeout_ms = c->cfg.connect_timeout_ms;
    c->cfg.tls = u->tls;
    c->cfg.tls_verify = true;
    c->cfg.tls_ca = tls_ca ? lv_xstrdup(tls_ca) : NULL;
    /* The collector's failures decide retries here, not ejection: no health, no outliers. */
    c->cfg.health.enabled = false;
    c->cfg.outlier.enabled = false;
    c->up = lv_upstream_create(loop, &c->cfg, NULL, false);
    c->up->owner = c;
    c->up->on_closed = on_up_closed;
    uv_timer_init(loop, &c->timer);
    c->timer.data = c;
    return c;
}

uint64_t lv_otlp_client_connects(const struct lv_otlp_client *c)
{
    return c->up->servers[0].connects;
}

bool lv_otlp_busy(const struct lv_otlp_client *c)
{
    return c->active;
}

/* Lets go of the connection and the acquire; the POST is over (no callback here). */
static void post_end(struct lv_otlp_client *c, bool keep)
{
    uv_timer_stop(&c->timer);
    if (c->acquiring) {
        lv_upstream_cancel(&c->acq);
        c->acquiring = false;
    }
    if (c->uc) {
        struct lv_upconn *uc = c->uc;
        c->uc = NULL;
        if (keep) {
            lv_upconn_release(uc);
        } else {
            lv_upconn_read_stop(uc);
            lv_upconn_discard(uc, false);
        }
    }
    c->active = false;
    c->try_id++;
}

static void finish(struct lv_otlp_client *c, int status, const char *why)
{
    bool keep = status != 0 && c->reusable;
    post_end(c, keep);
    lv_otlp_done_cb cb = c->cb;
    c->cb = NULL;
    if (cb)
        cb(c->arg, status, why);
}

static void start_try(struct lv_otlp_client *c, bool fresh);

static void on_write_done(uv_write_t *req, int status)
{
    struct post_write *w = (struct post_write *)req;
    struct lv_otlp_client *c = w->c;
    uint32_t id = w->try_id;
    free(w);
    /* A failed write shows up on the read side too, but not always (a peer that keeps the
     * connection open): end the POST here when it is still this one. */
    if (status < 0 && status != UV_ECANCELED && c->active && c->try_id == id && c->uc)
        finish(c, 0, uv_strerror(status));
}

static void send_request(struct lv_otlp_client *c)
{
    struct lv_upconn *uc = c->uc;
    const char *data = c->req.data;
    size_t len = c->req.len;
    if (uc->tls) {
        uv_buf_t b = uv_buf_init(c->req.data, (unsigned)c->req.len);
        if (lv_upconn_tls_wrap(uc, &b, 1) < 0) {
            finish(c, 0, "TLS write failed");
            return;
        }
        data = uc->tls_out.data;
        len = uc->tls_out.len;
    }
    struct post_write *w = lv_xmalloc(sizeof(*w) + len);
    memcpy(w->data, data, len);
    if (uc->tls)
        uc->tls_out.len = 0;
    w->c = c;
    w->try_id = c->try_id;
    uv_buf_t b = uv_buf_init(w->data, (unsigned)len);
    int rc = uv_write(&w->req, (uv_stream_t *)&uc->tcp, &b, 1, on_write_done);
    if (rc < 0) {
        free(w);
        finish(c, 0, uv_strerror(rc));
    }
}

/* Skips body bytes; the POST ends at the end of the body. */
static void feed_body(struct lv_otlp_client *c, const char *data, size_t n)
{
    size_t off = 0;
    for (;;) {
        size_t used = 0;
        struct lv_span span;
        enum lv_body_result res = lv_body_next(&c->dec, data + off, n - off, &used, &span);
        off += used;
        switch (res) {
        case LV_BODY_DATA:
            continue;
        case LV_BODY_MORE:
            return;
        case LV_BODY_DONE:
            if (off != n)
                c->reusable = false; /* bytes nobody asked for */
            finish(c, c->status, NULL);
            return;
        default:
            /* The status is known; the connection is not worth keeping. */
            c->reusable = false;
            finish(c, c->status, NULL);
            return;
        }
    }
}

/* Scans what c->head holds: true when a whole head starts it; false when more is needed, or
 * when the head was refused (the POST has then finished). */
static bool scan_head(struct lv_otlp_client *c)
{
    enum lv_headscan_result r = lv_headscan_feed(&c->hs, c->head.data, c->head.len);
    if (r == LV_HEADSCAN_ERROR)
        finish(c, 0, c->hs.reason ? c->hs.reason : "bad response head");
    return r == LV_HEADSCAN_DONE;
}

/* The head is complete at the start of c->head. */
static void on_head(struct lv_otlp_client *c)
{
    struct lv_field fields[MAX_FIELDS];
    struct lv_resphead h;
    for (;;) {
        if (lv_resphead_parse(&h, c->head.data, c->hs.head_len, false, fields, MAX_FIELDS) != 0) {
            finish(c, 0, h.reason ? h.reason : "invalid response head");
            return;
        }
        if (h.status == 101) {
            finish(c, 0, "unrequested 101 Switching Protocols");
            return;
        }
        if (h.status >= 200)
            break;
        /* An interim response: the final head follows. */
        lv_buf_consume(&c->head, c->hs.head_len);
        lv_headscan_init(&c->hs, true, MAX_HEAD, MAX_HEAD, MAX_FIELDS);
        if (c->head.len == 0 || !scan_head(c))
            return;
    }
    c->head_done = true;
    c->status = h.status;
    c->reusable = h.reusable;
    size_t nrest = c->head.len - c->hs.head_len;
    if (h.body == LV_BODY_NONE || (h.body == LV_BODY_LENGTH && h.content_length == 0)) {
        if (nrest)
            c->reusable = false;
        finish(c, c->status, NULL);
        return;
    }
    lv_body_init(&c->dec, h.body, h.content_length, MAX_BODY);
    if (h.body == LV_BODY_LENGTH && h.content_length > MAX_BODY) {
        c->reusable = false;
        finish(c, c->status, NULL);
        return;
    }
    if (nrest == 0)
        return;
    /* Copy the rest out of c->head: feed_body may finish, and the next POST reuses it. */
    struct lv_buf rest = LV_BUF_INIT;
    lv_buf_append(&rest, c->head.data + c->hs.head_len, nrest);
    c->head.len = c->hs.head_len;
    feed_body(c, rest.data, rest.len);
    lv_buf_dispose(&rest);
}

static void on_read(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg)
{
    struct lv_otlp_client *c = arg;
    if (!c->active || c->uc != uc)
        return;
    if (nread < 0) {
        if (c->head_done && c->dec.mode == LV_BODY_EOF) {
            c->reusable = false;
            finish(c, c->status, NULL);
            return;
        }
        if (uc->reused && !c->got_bytes && !c->fresh_used) {
            /* A pooled connection the collector had closed: once more on a new one. */
            c->fresh_used = true;
            c->uc = NULL;
            lv_upconn_discard(uc, false);
            start_try(c, true);
            return;
        }
        finish(c, 0,
               nread == UV_EOF ? "connection closed before the response" : uv_strerror((int)nread));
        return;
    }
    c->got_bytes = true;
    size_t n = (size_t)nread;
    if (c->head_done) {
        feed_body(c, data, n);
        return;
    }
    if (c->head.len + n > MAX_PENDING) {
        finish(c, 0, "response head too large");
        return;
    }
    lv_buf_append(&c->head, data, n);
    if (scan_head(c))
        on_head(c);
}

static void on_acquired(enum lv_acquire_error err, struct lv_upconn *uc, const char *detail,
                        void *arg)
{
    struct lv_otlp_client *c = arg;
    c->acquiring = false;
    if (err != LV_ACQUIRE_OK) {
        finish(c, 0, detail && *detail ? detail : "connect failed");
        return;
    }
    c->uc = uc;
    c->got_bytes = false;
    c->head_done = false;
    c->reusable = false;
    c->status = 0;
    c->head.len = 0;
    lv_headscan_init(&c->hs, true, MAX_HEAD, MAX_HEAD, MAX_FIELDS);
    lv_upconn_read_start(uc, on_read, c);
    send_request(c);
}

static void on_timeout(uv_timer_t *t)
{
    struct lv_otlp_client *c = t->data;
    if (c->active)
        finish(c, 0, "timeout");
}

static void start_try(struct lv_otlp_client *c, bool fresh)
{
    c->acquiring = true;
    lv_upstream_acquire(c->up, &c->acq, NULL, 0, fresh, on_acquired, c);
}

void lv_otlp_post(struct lv_otlp_client *c, const char *body, size_t n, uint64_t timeout_ms,
                  lv_otlp_done_cb cb, void *arg)
{
    if (c->active)
        post_end(c, false);
    c->req.len = 0;
    lv_buf_printf(&c->req,
                  "POST %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: levee/" LEVEE_VERSION
                  "\r\nContent-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                  c->path, c->host_header, n);
    lv_buf_append(&c->req, body, n);
    c->cb = cb;
    c->arg = arg;
    c->active = true;
    c->fresh_used = false;
    c->try_id++;
    uv_timer_start(&c->timer, on_timeout, timeout_ms ? timeout_ms : 5000, 0);
    lv_upstream_tick(c->up); /* re-resolves a name now and then */
    start_try(c, false);
}

void lv_otlp_cancel(struct lv_otlp_client *c)
{
    if (c->active) {
        c->cb = NULL;
        post_end(c, false);
    }
}

void lv_otlp_client_free(struct lv_otlp_client *c)
{
    if (!c || c->freeing)
        return;
    c->freeing = true;
    lv_otlp_cancel(c);
    c->closing = 2;
    uv_close((uv_handle_t *)&c->timer, on_timer_closed);
    lv_upstream_destroy(c->up);
}
