#include "net/healthcheck.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/rand.h"
#include "http/headscan.h"
#include "net/tls.h"

/* Addresses of one server a check tries, in order (the rest would not fit in the timeout). */
#define MAX_ADDRS 8
/* Field lines a check's response head may have; the byte cap bounds it anyway. */
#define MAX_FIELDS 1000
#define WHY_MAX    160

/* One read buffer per thread (= per worker loop): every read is consumed synchronously. */
static _Thread_local char read_block[LV_HEALTHCHECK_MAX_HEAD];

struct probe;

/* A server of the upstream, by index: its schedule and the check under way. */
struct slot {
    char name[LV_HEALTHCHECK_NAME_MAX]; /* which server holds this index */
    uint64_t next_due;
    struct probe *probe; /* NULL when no check is under way */
};

struct lv_healthcheck {
    uv_loop_t *loop;
    const struct lv_healthcheck_servers *servers;
    void *owner; /* NULL once stopped */
    lv_healthcheck_cb cb;
    void *arg;
    /* parameters (owned copies) */
    char *path, *host;
    uint64_t interval_ms, timeout_ms;
    uint64_t expect[10];
    /* state */
    struct slot *slots;
    size_t nslots;
    uv_timer_t timer; /* the next due check */
    uint64_t rng;
    size_t running; /* checks attached to a slot */
    size_t probes;  /* probes allocated (including the ones closing) */
    bool stopping;
    bool timer_closed;
};

/* One TCP connection attempt. Separate from the probe because a failed connect's handle must
 * be closed before the next address gets a new one. */
struct sock {
    uv_tcp_t tcp;
    uv_connect_t req;
    struct probe *p;
};

/* One check of one server. */
struct probe {
    struct lv_healthcheck *hc;
    size_t server;
    bool attached; /* still the check of slots[server]: its result is reported */
    bool done;     /* finished or abandoned: handles closing, nothing more happens */
    uint64_t started;
    uv_timer_t timer; /* the check's timeout, or a deferred failure */
    struct sock *sock;
    int open; /* handles not closed yet (timer and socks) */
    struct sockaddr_storage addrs[MAX_ADDRS];
    int naddrs, ai;
    struct lv_buf req;
    struct lv_tls *tls;
    struct lv_buf tls_out, tls_in;
    struct lv_headscan scan;
    size_t head_off; /* start of the head being scanned (after interim 1xx heads) */
    size_t head_len; /* bytes of head[] received */
    char why[WHY_MAX];
    char head[LV_HEALTHCHECK_MAX_HEAD];
};

static void rearm(struct lv_healthcheck *hc);
static void on_tick(uv_timer_t *t);

static uint64_t rng_next(uint64_t *s)
{
    return lv_rand_next(s);
}

/* A first check somewhere in [now, now + interval). */
static uint64_t first_due(struct lv_healthcheck *hc, uint64_t now)
{
    return now + rng_next(&hc->rng) % hc->interval_ms;
}

/* interval ± 10%. */
static uint64_t jittered_interval(struct lv_healthcheck *hc)
{
    uint64_t j = hc->interval_ms / 10;
    if (j == 0)
        return hc->interval_ms;
    return hc->interval_ms - j + rng_next(&hc->rng) % (2 * j + 1);
}

static bool visible(const char *s, bool allow_empty)
{
    if (!*s)
        return allow_empty;
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c <= 0x20 || *c == 0x7f)
            return false;
    return true;
}

const char *lv_healthcheck_params_error(const struct lv_healthcheck_params *p)
{
    if (p->path && (p->path[0] != '/' || !visible(p->path, false)))
        return "path must start with '/' and hold no space or control character";
    if (p->host && !visible(p->host, false))
        return "host must be non-empty and hold no space or control character";
    return NULL;
}

static void set_params(struct lv_healthcheck *hc, const struct lv_healthcheck_params *p)
{
    free(hc->path);
    free(hc->host);
    hc->path = lv_xstrdup(p->path ? p->path : "/");
    hc->host = p->host ? lv_xstrdup(p->host) : NULL;
    hc->interval_ms = p->interval_ms ? p->interval_ms : 2000;
    hc->timeout_ms = p->timeout_ms ? p->timeout_ms : 1000;
    bool any = false;
    for (int i = 0; i < 10; i++) {
        hc->expect[i] = p->expect[i];
        any |= p->expect[i] != 0;
    }
    if (!any)
        for (int s = 200; s < 400; s++)
            hc->expect[s / 64] |= 1ULL << (s % 64);
}

static bool expected(const struct lv_healthcheck *hc, int status)
{
    return status >= 0 && status < 640 && (hc->expect[status / 64] >> (status % 64)) & 1;
}

/* ---- freeing */

static void maybe_free(struct lv_healthcheck *hc)
{
    if (!hc->stopping || !hc->timer_closed || hc->probes > 0)
        return;
    free(hc->slots);
    free(hc->path);
    free(hc->host);
    free(hc);
}

static void on_hc_timer_closed(uv_handle_t *h)
{
    struct lv_healthcheck *hc = h->data;
    hc->timer_closed = true;
    maybe_free(hc);
}

static void probe_handle_closed(struct probe *p)
{
    if (--p->open > 0)
        return;
    struct lv_healthcheck *hc = p->hc;
    if (p->tls)
        lv_tls_free(p->tls);
    lv_buf_dispose(&p->req);
    lv_buf_dispose(&p->tls_out);
    lv_buf_dispose(&p->tls_in);
    free(p);
    hc->probes--;
    maybe_free(hc);
}

static void on_probe_timer_closed(uv_handle_t *h)
{
    probe_handle_closed(h->data);
}

static void on_sock_closed(uv_handle_t *h)
{
    struct sock *s = h->data;
    struct probe *p = s->p;
    free(s);
    probe_handle_closed(p);
}

static void sock_close(struct sock *s)
{
    if (s->p->sock == s)
        s->p->sock = NULL;
    /* A pending connect or write gets UV_ECANCELED before the close callback: s lives until
     * then, and the callbacks see it is no longer the probe's socket. */
    uv_close((uv_handle_t *)&s->tcp, on_sock_closed);
}

/* Closes the probe's handles; it frees itself when they are closed. */
static void probe_close(struct probe *p)
{
    p->done = true;
    uv_timer_stop(&p->timer);
    uv_close((uv_handle_t *)&p->timer, on_probe_timer_closed);
    if (p->sock)
        sock_close(p->sock);
}

/* The slot no longer waits for this probe (its server went away, or the checker stops). */
static void probe_detach(struct probe *p)
{
    if (!p->attached)
        return;
    p->attached = false;
    p->hc->slots[p->server].probe = NULL;
    p->hc->running--;
}

/* The check is over: close it, schedule the server's next check, report. */
static void finish(struct probe *p, bool ok, const char *why)
{
    if (p->done)
        return;
    struct lv_healthcheck *hc = p->hc;
    uint64_t now = uv_now(hc->loop);
    uint64_t duration = now - p->started;
    char text[WHY_MAX];
    snprintf(text, sizeof(text), "%s", why);
    bool report = p->attached && !hc->stopping;
    size_t server = p->server;
    if (p->attached) {
        uint64_t next = p->started + jittered_interval(hc);
        hc->slots[server].next_due = next > now ? next : now;
        probe_detach(p);
        rearm(hc);
    }
    probe_close(p);
    /* Last: the callback may update or stop the checker. */
    if (report)
        hc->cb(server, ok, text, duration, hc->arg);
}

static void fail_tls(struct probe *p)
{
    char why[WHY_MAX];
    const char *e = lv_tls_error(p->tls);
    snprintf(why, sizeof(why), "TLS: %s", *e ? e : "handshake failed");
    finish(p, false, why);
}

/* ---- I/O */

static void on_write_done(uv_write_t *w, int status)
{
    /* A failed write is not the verdict: the server may have answered and closed before
     * reading the request; the read side (or the timeout) decides. */
    free(w);
}

static void send_bytes(struct probe *p, const char *data, size_t len)
{
    if (len == 0 || !p->sock || p->done)
        return;
    uv_write_t *w = lv_xmalloc(sizeof(*w) + len);
    memcpy(w + 1, data, len);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)len);
    if (uv_write(w, (uv_stream_t *)&p->sock->tcp, &b, 1, on_write_done) < 0)
        free(w);
}

static void flush_tls(struct probe *p)
{
    send_bytes(p, p->tls_out.data, p->tls_out.len);
    p->tls_out.len = 0;
}

/* Scans what came of the response head; finishes the check once the status is known. */
static void scan_head(struct probe *p)
{
    for (;;) {
        const char *h = p->head + p->head_off;
        enum lv_headscan_result r = lv_headscan_feed(&p->scan, h, p->head_len - p->head_off);
        if (r == LV_HEADSCAN_ERROR) {
            finish(p, false, "bad response");
            return;
        }
        if (r == LV_HEADSCAN_MORE) {
            if (p->head_len == sizeof(p->head))
                finish(p, false, "bad response"); /* no end of head within the cap */
            return;
        }
        /* DONE: headscan validated "HTTP/1.x SP 3DIGIT" at the start, status in 100-599. */
        int status = (h[9] - '0') * 100 + (h[10] - '0') * 10 + (h[11] - '0');
        if (status >= 100 && status < 200 && status != 101) {
            /* Interim response: the final head follows, within what is left of the cap. */
            p->head_off += p->scan.head_len;
            lv_headscan_init(&p->scan, true, sizeof(p->head) - p->head_off, sizeof(p->head),
                             MAX_FIELDS);
            continue;
        }
        char code[8];
        snprintf(code, sizeof(code), "%d", status);
        finish(p, expected(p->hc, status), code);
        return;
    }
}

static void got_plain(struct probe *p, const char *data, size_t n)
{
    size_t room = sizeof(p->head) - p->head_len;
    if (n > room)
        n = room; /* what does not fit cannot be part of an acceptable head */
    memcpy(p->head + p->head_len, data, n);
    p->head_len += n;
    scan_head(p);
}

static void got_end(struct probe *p, ssize_t err)
{
    if (p->tls && !lv_tls_handshake_done(p->tls)) {
        finish(p, false, "TLS: connection closed during the handshake");
        return;
    }
    if (p->head_len > 0)
        finish(p, false, "bad response"); /* cut short */
    else
        finish(p, false, err == UV_EOF ? "connection closed" : uv_strerror((int)err));
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = read_block;
    buf->len = sizeof(read_block);
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct sock *s = stream->data;
    struct probe *p = s->p;
    if (nread == 0 || p->done || p->sock != s)
        return;
    if (nread < 0) {
        got_end(p, nread);
        return;
    }
    if (!p->tls) {
        got_plain(p, buf->base, (size_t)nread);
        return;
    }
    p->tls_in.len = 0;
    int rc = lv_tls_feed(p->tls, buf->base, (size_t)nread, lv_tls_collect, &p->tls_in, &p->tls_out);
    flush_tls(p); /* on a failure, the alert that tells the server why */
    if (rc < 0) {
        fail_tls(p);
        return;
    }
    if (p->tls_in.len)
        got_plain(p, p->tls_in.data, p->tls_in.len);
    if (!p->done && rc == 1)
        got_end(p, UV_EOF);
}

static int try_connect(struct probe *p);

static void on_connected(uv_connect_t *req, int status)
{
    struct sock *s = req->data;
    struct probe *p = s->p;
    if (p->done || p->sock != s)
        return; /* abandoned: this is the UV_ECANCELED of the close */
    if (status < 0) {
        sock_close(s);
        p->ai++;
        int rc = try_connect(p);
        if (rc < 0)
            finish(p, false, uv_strerror(rc));
        return;
    }
    uv_tcp_nodelay(&s->tcp, 1);
    uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (p->tls) {
        /* The request was queued in the engine: it goes out when the handshake completes. */
        if (lv_tls_start(p->tls, &p->tls_out) < 0) {
            fail_tls(p);
            return;
        }
        flush_tls(p);
        return;
    }
    send_bytes(p, p->req.data, p->req.len);
}

/* Starts connecting to addrs[ai], or to the next address that can be tried. Returns 0 when a
 * connect is under way, else the error of the last address tried. */
static int try_connect(struct probe *p)
{
    int rc = UV_ECONNREFUSED;
    for (; p->ai < p->naddrs; p->ai++) {
        struct sock *s = lv_xcalloc(1, sizeof(*s));
        s->p = p;
        uv_tcp_init(p->hc->loop, &s->tcp);
        s->tcp.data = s;
        s->req.data = s;
        p->open++;
        p->sock = s;
        rc = uv_tcp_connect(&s->req, &s->tcp, (const struct sockaddr *)&p->addrs[p->ai],
                            on_connected);
        if (rc == 0)
            return 0;
        sock_close(s);
    }
    return rc;
}

static void on_timeout(uv_timer_t *t)
{
    finish(t->data, false, "timeout");
}

static void on_fail_now(uv_timer_t *t)
{
    struct probe *p = t->data;
    finish(p, false, p->why);
}

/* Reports a failure from the loop, never from inside the caller. */
static void fail_soon(struct probe *p, const char *why)
{
    snprintf(p->why, sizeof(p->why), "%s", why);
    uv_timer_start(&p->timer, on_fail_now, 0, 0);
}

/* ---- scheduling */

static void probe_start(struct lv_healthcheck *hc, size_t i)
{
    struct lv_healthcheck_target s;
    hc->servers->get(hc->owner, i, &s);
    struct probe *p = lv_xcalloc(1, sizeof(*p));
    p->hc = hc;
    p->server = i;
    p->attached = true;
    p->started = uv_now(hc->loop);
    uv_timer_init(hc->loop, &p->timer);
    p->timer.data = p;
    p->open = 1;
    hc->probes++;
    hc->running++;
    hc->slots[i].probe = p;
    lv_headscan_init(&p->scan, true, sizeof(p->head), sizeof(p->head), MAX_FIELDS);

    /* Copy what the check needs: the upstream may re-resolve or reload while it runs. */
    const char *host = s.host ? s.host : "";
    lv_buf_printf(&p->req, "GET %s HTTP/1.1\r\nHost: ", hc->path);
    if (hc->host)
        lv_buf_puts(&p->req, hc->host);
    else if (strchr(host, ':') && host[0] != '[')
        lv_buf_printf(&p->req, "[%s]:%u", host, s.port); /* a bare IPv6 literal */
    else
        lv_buf_printf(&p->req, "%s:%u", host, s.port);
    lv_buf_puts(&p->req, "\r\nUser-Agent: levee-health-check\r\nConnection: close\r\n\r\n");
    p->naddrs = s.naddrs < MAX_ADDRS ? s.naddrs : MAX_ADDRS;
    if (p->naddrs > 0 && s.addrs)
        memcpy(p->addrs, s.addrs, (size_t)p->naddrs * sizeof(p->addrs[0]));
    else
        p->naddrs = 0;
    if (s.tls_ctx) {
        /* Same name rule as the owner's own connections. */
        p->tls = lv_tls_new(s.tls_ctx, false, s.sni ? s.sni : s.host);
        if (lv_tls_write(p->tls, p->req.data, p->req.len, &p->tls_out) < 0) {
            char why[WHY_MAX];
            snprintf(why, sizeof(why), "TLS: %s", lv_tls_error(p->tls));
            fail_soon(p, why);
            return;
        }
    }
    if (p->naddrs == 0) {
        fail_soon(p, "cannot resolve");
        return;
    }
    uv_timer_start(&p->timer, on_timeout, hc->timeout_ms, 0);
    int rc = try_connect(p);
    if (rc < 0)
        fail_soon(p, uv_strerror(rc));
}

/* Abandons a slot's check without reporting it. */
static void slot_abandon(struct lv_healthcheck *hc, size_t i)
{
    struct probe *p = hc->slots[i].probe;
    if (!p)
        return;
    probe_detach(p);
    probe_close(p);
}

static const char *server_name(struct lv_healthcheck *hc, size_t i)
{
    struct lv_healthcheck_target t;
    hc->servers->get(hc->owner, i, &t);
    return t.name ? t.name : "";
}

/* Follows the owner's servers: new ones get a first check spread over the interval,
 * removed or replaced ones lose their check. */
static void sync_slots(struct lv_healthcheck *hc)
{
    uint64_t now = uv_now(hc->loop);
    size_t n = hc->servers->count(hc->owner);
    if (n != hc->nslots) {
        for (size_t i = n; i < hc->nslots; i++)
            slot_abandon(hc, i);
        size_t old = hc->nslots;
        hc->slots = lv_xrealloc(hc->slots, (n ? n : 1) * sizeof(*hc->slots));
        for (size_t i = old; i < n; i++) {
            memset(&hc->slots[i], 0, sizeof(hc->slots[i]));
            snprintf(hc->slots[i].name, sizeof(hc->slots[i].name), "%s", server_name(hc, i));
            hc->slots[i].next_due = first_due(hc, now);
        }
        hc->nslots = n;
    }
    for (size_t i = 0; i < n; i++) {
        struct slot *sl = &hc->slots[i];
        const char *name = server_name(hc, i);
        if (strncmp(sl->name, name, sizeof(sl->name)) == 0)
            continue;
        slot_abandon(hc, i);
        snprintf(sl->name, sizeof(sl->name), "%s", name);
        sl->next_due = first_due(hc, now);
    }
}

static void rearm(struct lv_healthcheck *hc)
{
    if (hc->stopping)
        return;
    uint64_t now = uv_now(hc->loop);
    /* With nothing to wait for, still look at the servers once per interval (a reload may
     * add some). */
    uint64_t due = now + hc->interval_ms;
    for (size_t i = 0; i < hc->nslots; i++)
        if (!hc->slots[i].probe && hc->slots[i].next_due < due)
            due = hc->slots[i].next_due;
    uv_timer_start(&hc->timer, on_tick, due > now ? due - now : 0, 0);
}

static void on_tick(uv_timer_t *t)
{
    struct lv_healthcheck *hc = t->data;
    if (hc->stopping)
        return;
    sync_slots(hc);
    uint64_t now = uv_now(hc->loop);
    for (size_t i = 0; i < hc->nslots; i++) {
        struct slot *sl = &hc->slots[i];
        if (sl->probe || sl->next_due > now)
            continue;
        struct lv_healthcheck_target s;
        hc->servers->get(hc->owner, i, &s);
        if (hc->servers->closing(hc->owner)) {
            sl->next_due = now + hc->interval_ms;
        } else if (s.naddrs == 0 && s.resolving) {
            /* The first resolution is under way: not a failure yet, look again soon. */
            uint64_t again = hc->interval_ms / 10;
            sl->next_due = now + (again ? again : 1);
        } else {
            probe_start(hc, i); /* never reports from here: the slots stay as they are */
        }
    }
    rearm(hc);
}

/* ---- API */

struct lv_healthcheck *lv_healthcheck_start(uv_loop_t *loop,
                                            const struct lv_healthcheck_servers *servers,
                                            void *owner, const struct lv_healthcheck_params *p,
                                            lv_healthcheck_cb cb, void *arg)
{
    if (lv_healthcheck_params_error(p))
        return NULL;
    struct lv_healthcheck *hc = lv_xcalloc(1, sizeof(*hc));
    hc->loop = loop;
    hc->servers = servers;
    hc->owner = owner;
    hc->cb = cb;
    hc->arg = arg;
    hc->rng = (uint64_t)(uintptr_t)hc ^ uv_hrtime() ^ 0x9E3779B97F4A7C15ULL;
    if (hc->rng == 0)
        hc->rng = 1;
    set_params(hc, p);
    uv_timer_init(loop, &hc->timer);
    hc->timer.data = hc;
    sync_slots(hc);
    rearm(hc);
    return hc;
}

int lv_healthcheck_update(struct lv_healthcheck *hc, const struct lv_healthcheck_params *p)
{
    assert(!hc->stopping); /* updating a stopped checker is a bug */
    if (lv_healthcheck_params_error(p))
        return -EINVAL;
    set_params(hc, p);
    uint64_t now = uv_now(hc->loop);
    for (size_t i = 0; i < hc->nslots; i++)
        if (!hc->slots[i].probe && hc->slots[i].next_due > now + hc->interval_ms)
            hc->slots[i].next_due = first_due(hc, now);
    sync_slots(hc);
    rearm(hc);
    return 0;
}

void lv_healthcheck_stop(struct lv_healthcheck *hc)
{
    if (!hc || hc->stopping)
        return;
    for (size_t i = 0; i < hc->nslots; i++)
        slot_abandon(hc, i);
    hc->stopping = true;
    hc->owner = NULL; /* nothing of it is used any more */
    uv_timer_stop(&hc->timer);
    uv_close((uv_handle_t *)&hc->timer, on_hc_timer_closed);
}

size_t lv_healthcheck_running(const struct lv_healthcheck *hc)
{
    return hc->running;
}
