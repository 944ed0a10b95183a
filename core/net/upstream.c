#include "net/upstream.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "net/tls.h"

/* One read buffer per thread (= per worker loop): readers consume synchronously. */
static _Thread_local char read_block[64 * 1024];

static void dispatch_waiters(struct lv_upstream *up);
static void connect_next(struct lv_upconn *uc);
static void conn_reading(struct lv_upconn *uc, bool on);
static void connect_done(struct lv_upconn *uc);
static void raw_send(struct lv_upconn *uc);

static uint64_t now_ms(const struct lv_upstream *up)
{
    return uv_now(up->loop);
}

static uint64_t rng_next(uint64_t *s)
{
    /* xorshift64*: balancing needs spread, not secrecy. */
    uint64_t x = *s;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* ---- list helpers (circular, sentinel-headed) */

static void conn_list_init(struct lv_upconn *h)
{
    h->next = h->prev = h;
}

static void conn_list_push(struct lv_upconn *h, struct lv_upconn *c)
{
    c->next = h->next;
    c->prev = h;
    h->next->prev = c;
    h->next = c;
}

static void conn_list_remove(struct lv_upconn *c)
{
    c->prev->next = c->next;
    c->next->prev = c->prev;
    c->next = c->prev = NULL;
}

static void acq_list_init(struct lv_acquire *h)
{
    h->next = h->prev = h;
}

static void acq_list_append(struct lv_acquire *h, struct lv_acquire *a)
{
    a->prev = h->prev;
    a->next = h;
    h->prev->next = a;
    h->prev = a;
}

static void acq_list_remove(struct lv_acquire *a)
{
    a->prev->next = a->next;
    a->next->prev = a->prev;
    a->next = a->prev = NULL;
}

/* ---- resolution */

static int literal_addr(const struct lv_hostport *hp, struct sockaddr_storage *ss)
{
    memset(ss, 0, sizeof(*ss));
    if (uv_ip4_addr(hp->host, hp->port, (struct sockaddr_in *)ss) == 0)
        return 0;
    const char *h = hp->host;
    char tmp[64];
    size_t n = strlen(h);
    if (n > 2 && h[0] == '[' && h[n - 1] == ']' && n - 2 < sizeof(tmp)) {
        memcpy(tmp, h + 1, n - 2);
        tmp[n - 2] = '\0';
        h = tmp;
    }
    if (uv_ip6_addr(h, hp->port, (struct sockaddr_in6 *)ss) == 0)
        return 0;
    return -1;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct lv_upserver *s = req->data;
    struct lv_upstream *up = s->up;
    s->resolving = false;
    up->open_handles--;
    if (up->closing) {
        uv_freeaddrinfo(res);
        if (up->open_handles == 0 && up->on_closed)
            up->on_closed(up);
        return;
    }
    if (status < 0) {
        lv_warn("upstream %s: cannot resolve %s: %s", up->name, s->hp.host, uv_strerror(status));
    } else {
        int n = 0;
        for (struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == AF_INET || a->ai_family == AF_INET6)
                n++;
        if (n > 0) {
            struct sockaddr_storage *addrs = lv_xcalloc((size_t)n, sizeof(*addrs));
            int i = 0;
            for (struct addrinfo *a = res; a; a = a->ai_next) {
                if (a->ai_family != AF_INET && a->ai_family != AF_INET6)
                    continue;
                memcpy(&addrs[i], a->ai_addr, a->ai_addrlen);
                if (a->ai_family == AF_INET)
                    ((struct sockaddr_in *)&addrs[i])->sin_port = htons(s->hp.port);
                else
                    ((struct sockaddr_in6 *)&addrs[i])->sin6_port = htons(s->hp.port);
                i++;
            }
            free(s->addrs);
            s->addrs = addrs;
            s->naddrs = n;
        }
    }
    s->resolved_at = now_ms(up);
    uv_freeaddrinfo(res);
    dispatch_waiters(up);
}

static void resolve(struct lv_upserver *s)
{
    struct lv_upstream *up = s->up;
    if (s->resolving || up->closing)
        return;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof(port), "%u", s->hp.port);
    s->gai.data = s;
    if (uv_getaddrinfo(up->loop, &s->gai, on_resolved, s->hp.host, port, &hints) == 0) {
        s->resolving = true;
        up->open_handles++;
    }
}

static bool is_literal(const struct lv_upserver *s)
{
    struct sockaddr_storage ss;
    return literal_addr(&s->hp, &ss) == 0;
}

/* ---- connections */

static void conn_free_if_closed(uv_handle_t *h)
{
    struct lv_upconn *uc = h->data;
    struct lv_upstream *up = uc->server->up;
    /* Two handles per connection: tcp and timer; free after both closed. */
    up->open_handles--;
    if ((uv_handle_t *)&uc->tcp == h)
        uc->tcp.data = NULL;
    else
        uc->timer.data = NULL;
    if (uc->tcp.data == NULL && uc->timer.data == NULL) {
        lv_buf_dispose(&uc->tried);
        lv_buf_dispose(&uc->tls_out);
        lv_buf_dispose(&uc->tls_in);
        if (uc->tls)
            lv_tls_free(uc->tls);
        free(uc);
    }
    if (up->closing && up->open_handles == 0 && up->on_closed)
        up->on_closed(up);
}

static void conn_close(struct lv_upconn *uc, bool reset)
{
    struct lv_upserver *s = uc->server;
    if (uc->state == LV_UPCONN_CLOSING)
        return;
    if (uc->state == LV_UPCONN_IDLE) {
        conn_list_remove(uc);
        s->idle--;
    } else {
        s->active--;
    }
    uc->state = LV_UPCONN_CLOSING;
    uv_timer_stop(&uc->timer);
    if (reset)
        uv_tcp_close_reset(&uc->tcp, conn_free_if_closed);
    else
        uv_close((uv_handle_t *)&uc->tcp, conn_free_if_closed);
    uv_close((uv_handle_t *)&uc->timer, conn_free_if_closed);
}

static struct lv_upconn *conn_new(struct lv_upserver *s)
{
    struct lv_upstream *up = s->up;
    struct lv_upconn *uc = lv_xcalloc(1, sizeof(*uc));
    uc->server = s;
    uv_tcp_init(up->loop, &uc->tcp);
    uv_timer_init(up->loop, &uc->timer);
    uc->tcp.data = uc;
    uc->timer.data = uc;
    up->open_handles += 2;
    uc->state = LV_UPCONN_CONNECTING;
    uc->created_ms = now_ms(up);
    s->active++;
    return uc;
}

static void acquire_done(struct lv_acquire *acq, enum lv_acquire_error err, struct lv_upconn *uc,
                         const char *detail)
{
    acq->active = false;
    acq->cb(err, uc, detail, acq->arg);
}

/* A connect attempt to one address failed: try the next address, or fail the acquire. */
static void connect_failed(struct lv_upconn *uc, const char *why)
{
    struct lv_upserver *s = uc->server;
    struct lv_upstream *up = s->up;
    lv_buf_printf(&uc->tried, "%s%s: %s", uc->tried.len ? "; " : "", uc->peer, why);
    s->connect_failures++;
    struct lv_acquire *acq = uc->acq;
    int next = uc->addr_index + 1;
    struct lv_buf tried = uc->tried;
    uc->tried = (struct lv_buf)LV_BUF_INIT;
    uc->acq = NULL;
    conn_close(uc, false);
    if (acq && next < s->naddrs && !up->closing) {
        struct lv_upconn *nc = conn_new(s);
        nc->acq = acq;
        acq->connecting = nc;
        nc->addr_index = next;
        nc->tried = tried;
        connect_next(nc);
        return;
    }
    if (acq) {
        acq->connecting = NULL;
        lv_buf_putc(&tried, '\0');
        acquire_done(acq, LV_ACQUIRE_CONNECT_FAILED, NULL, tried.data);
    }
    lv_buf_dispose(&tried);
    dispatch_waiters(up);
}

static void on_connect_timeout(uv_timer_t *t)
{
    connect_failed(t->data, "connect timeout");
}

static void arm_connect_timer(struct lv_upconn *uc)
{
    uint64_t to = uc->server->up->cfg->connect_timeout_ms;
    uv_timer_start(&uc->timer, on_connect_timeout, to ? to : 1000, 0);
}

static void on_connect_error_deferred(uv_timer_t *t)
{
    struct lv_upconn *uc = t->data;
    connect_failed(uc, uv_strerror(uc->connect_error));
}

static void format_peer(const struct sockaddr_storage *ss, char *out, size_t n)
{
    char ip[INET6_ADDRSTRLEN] = "?";
    int port = 0;
    if (ss->ss_family == AF_INET) {
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        uv_ip4_name(a, ip, sizeof(ip));
        port = ntohs(a->sin_port);
        snprintf(out, n, "%s:%d", ip, port);
    } else {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, ip, sizeof(ip));
        port = ntohs(a->sin6_port);
        snprintf(out, n, "[%s]:%d", ip, port);
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    struct lv_upconn *uc = req->data;
    if (uc->state == LV_UPCONN_CLOSING)
        return; /* timed out already */
    struct lv_upserver *s = uc->server;
    uv_timer_stop(&uc->timer);
    if (status < 0) {
        connect_failed(uc, uv_strerror(status));
        return;
    }
    uv_tcp_nodelay(&uc->tcp, 1);
    conn_reading(uc, true);
    if (s->up->tls_ctx) {
        /* TLS: the handshake is part of connecting (under the same connect timeout). */
        const char *sni = s->up->cfg->tls_sni ? s->up->cfg->tls_sni : s->hp.host;
        uc->tls = lv_tls_new(s->up->tls_ctx, false, sni);
        uc->handshaking = true;
        if (lv_tls_start(uc->tls, &uc->tls_out) < 0) {
            connect_failed(uc, lv_tls_error(uc->tls));
            return;
        }
        raw_send(uc);
        arm_connect_timer(uc); /* the handshake gets its own connect_timeout */
        return;
    }
    connect_done(uc);
}

/* TCP (and TLS) are up: the connection is the acquirer's. */
static void connect_done(struct lv_upconn *uc)
{
    struct lv_upserver *s = uc->server;
    uv_timer_stop(&uc->timer);
    uc->handshaking = false;
    s->connects++;
    if (uc->tls && lv_tls_resumed(uc->tls))
        s->tls_resumed++;
    uc->state = LV_UPCONN_BUSY;
    uc->requests = 1;
    uc->reused = false;
    struct lv_acquire *acq = uc->acq;
    uc->acq = NULL;
    lv_buf_dispose(&uc->tried);
    if (!acq) {
        /* The requester went away while we connected: keep the connection for the next one. */
        lv_upconn_release(uc);
        return;
    }
    acq->connecting = NULL;
    acquire_done(acq, LV_ACQUIRE_OK, uc, NULL);
}

static void connect_next(struct lv_upconn *uc)
{
    struct lv_upserver *s = uc->server;
    struct sockaddr_storage *ss = &s->addrs[uc->addr_index];
    format_peer(ss, uc->peer, sizeof(uc->peer));
    uc->connect_req.data = uc;
    int rc = uv_tcp_connect(&uc->connect_req, &uc->tcp, (const struct sockaddr *)ss, on_connected);
    if (rc < 0) {
        /* Report through the loop, never from inside the caller. */
        uc->connect_error = rc;
        uv_timer_start(&uc->timer, on_connect_error_deferred, 0, 0);
        return;
    }
    arm_connect_timer(uc);
}

/* ---- idle pool */

static void on_conn_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    buf->base = read_block;
    buf->len = sizeof(read_block);
}

/* A connection reads for its whole life (no epoll churn per request); what it read goes to
 * the owner while BUSY. An idle connection that speaks or closes is unusable: drop it before
 * anyone reuses it. */
static void on_write_done(uv_write_t *w, int status)
{
    free(w);
}

/* Ciphertext the engine produced goes out as it is (handshake, alerts, records). */
static void raw_send(struct lv_upconn *uc)
{
    if (uc->tls_out.len == 0 || uc->state == LV_UPCONN_CLOSING)
        return;
    uv_write_t *w = lv_xmalloc(sizeof(*w) + uc->tls_out.len);
    memcpy(w + 1, uc->tls_out.data, uc->tls_out.len);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)uc->tls_out.len);
    uc->tls_out.len = 0;
    if (uv_write(w, (uv_stream_t *)&uc->tcp, &b, 1, on_write_done) < 0)
        free(w);
}

int lv_upconn_tls_wrap(struct lv_upconn *uc, const uv_buf_t *bufs, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        if (bufs[i].len && lv_tls_write(uc->tls, bufs[i].base, bufs[i].len, &uc->tls_out) < 0)
            return -1;
    return 0;
}

static void on_conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

/* Upstream TLS: decrypt, then go on as if the plaintext had been read. */
static void tls_read(struct lv_upconn *uc, ssize_t nread, const uv_buf_t *buf)
{
    if (nread < 0) {
        if (uc->handshaking) {
            connect_failed(uc, "closed during the TLS handshake");
            return;
        }
        on_conn_read((uv_stream_t *)&uc->tcp, nread, &(uv_buf_t){NULL, 0});
        return;
    }
    uc->tls_in.len = 0;
    int rc =
        lv_tls_feed(uc->tls, buf->base, (size_t)nread, lv_tls_collect, &uc->tls_in, &uc->tls_out);
    raw_send(uc);
    if (rc < 0) {
        if (uc->handshaking) {
            connect_failed(uc, lv_tls_error(uc->tls)); /* e.g. certificate verify failed */
            return;
        }
        lv_warn("upstream %s: TLS: %s", uc->peer, lv_tls_error(uc->tls));
        on_conn_read((uv_stream_t *)&uc->tcp, UV_ECONNRESET, &(uv_buf_t){NULL, 0});
        return;
    }
    if (uc->handshaking) {
        if (lv_tls_handshake_done(uc->tls))
            connect_done(uc);
        if (uc->state != LV_UPCONN_BUSY || uc->tls_in.len == 0)
            return;
    }
    if (uc->tls_in.len) {
        uv_buf_t plain = uv_buf_init(uc->tls_in.data, (unsigned)uc->tls_in.len);
        uc->tls_plain_now = true;
        on_conn_read((uv_stream_t *)&uc->tcp, (ssize_t)plain.len, &plain);
        return; /* uc may be gone */
    }
    if (rc == 1)
        on_conn_read((uv_stream_t *)&uc->tcp, UV_EOF, &(uv_buf_t){NULL, 0});
}

static void on_conn_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct lv_upconn *uc = stream->data;
    if (nread == 0)
        return;
    if (uc->tls && !uc->tls_plain_now && uc->state != LV_UPCONN_CLOSING) {
        tls_read(uc, nread, buf);
        return;
    }
    uc->tls_plain_now = false;
    if (uc->state == LV_UPCONN_BUSY && uc->on_read) {
        uc->on_read(uc, nread, buf->base, uc->read_arg);
        return;
    }
    if (uc->state == LV_UPCONN_IDLE || uc->state == LV_UPCONN_BUSY) {
        struct lv_upstream *up = uc->server->up;
        conn_close(uc, false);
        dispatch_waiters(up);
    }
}

static void on_idle_timeout(uv_timer_t *t)
{
    conn_close(t->data, false);
}

static void conn_reading(struct lv_upconn *uc, bool on)
{
    if (on && !uc->reading) {
        uv_read_start((uv_stream_t *)&uc->tcp, on_conn_alloc, on_conn_read);
        uc->reading = true;
    } else if (!on && uc->reading) {
        uv_read_stop((uv_stream_t *)&uc->tcp);
        uc->reading = false;
    }
}

void lv_upconn_read_start(struct lv_upconn *uc, lv_upconn_read_cb cb, void *arg)
{
    uc->on_read = cb;
    uc->read_arg = arg;
    conn_reading(uc, true);
}

void lv_upconn_read_stop(struct lv_upconn *uc)
{
    conn_reading(uc, false);
}

void lv_upconn_release(struct lv_upconn *uc)
{
    struct lv_upserver *s = uc->server;
    struct lv_upstream *up = s->up;
    uint64_t now = now_ms(up);
    const struct lv_pool_cfg *pc = &up->cfg->pool;
    uc->on_read = NULL;
    uc->read_arg = NULL;
    if (up->closing || up->retired || s->idle >= pc->max_idle ||
        (pc->max_lifetime_ms && now - uc->created_ms >= pc->max_lifetime_ms)) {
        conn_close(uc, false);
        dispatch_waiters(up);
        return;
    }
    s->active--;
    s->idle++;
    uc->state = LV_UPCONN_IDLE;
    uc->idle_since_ms = now;
    conn_list_push(&s->idle_head, uc);
    conn_reading(uc, true);
    uint64_t to = pc->idle_timeout_ms ? pc->idle_timeout_ms : 60000;
    if (pc->max_lifetime_ms) {
        uint64_t left = pc->max_lifetime_ms - (now - uc->created_ms);
        if (left < to)
            to = left;
    }
    uv_timer_start(&uc->timer, on_idle_timeout, to, 0);
    dispatch_waiters(up);
}

void lv_upconn_discard(struct lv_upconn *uc, bool reset)
{
    struct lv_upstream *up = uc->server->up;
    conn_close(uc, reset);
    dispatch_waiters(up);
}

/* ---- acquiring */

static struct lv_upserver *pick_server(struct lv_upstream *up, const struct lv_upserver *avoid)
{
    size_t n = up->nservers;
    if (n == 1)
        return &up->servers[0];
    if (up->cfg->balance == LV_BALANCE_LEAST_REQUEST) {
        /* Power of two choices over distinct servers, preferring one that is not `avoid`. */
        size_t a = rng_next(&up->rng) % n;
        size_t b = rng_next(&up->rng) % (n - 1);
        if (b >= a)
            b++;
        struct lv_upserver *sa = &up->servers[a], *sb = &up->servers[b];
        if (sa == avoid)
            return sb;
        if (sb == avoid)
            return sa;
        return sb->inflight < sa->inflight ? sb : sa;
    }
    if (avoid) {
        /* A retry takes the server after the one that failed, without moving the shared
         * rotation: otherwise a dead server would be every request's first pick. */
        size_t i = (size_t)(avoid - up->servers);
        return &up->servers[(i + 1) % n];
    }
    return &up->servers[up->rr++ % n];
}

/* Try to satisfy `acq` now. Returns true if it was handled (callback scheduled or queued
 * elsewhere), false if it must wait for a slot. */
static bool try_acquire(struct lv_upstream *up, struct lv_acquire *acq, bool *call_now,
                        struct lv_upconn **got)
{
    struct lv_upserver *s = acq->server;
    *call_now = false;
    *got = NULL;
    if (s->naddrs == 0) {
        if (s->resolving)
            return false;
        return true; /* unresolvable: caller reports */
    }
    if (!acq->fresh) {
        while (s->idle_head.next != &s->idle_head) {
            struct lv_upconn *uc = s->idle_head.next;
            conn_list_remove(uc);
            s->idle--;
            s->active++;
            uv_timer_stop(&uc->timer);
            uc->state = LV_UPCONN_BUSY;
            uc->requests++;
            uc->reused = true;
            *got = uc;
            *call_now = true;
            return true;
        }
    }
    if (s->active >= up->cfg->pool.max_connections)
        return false;
    struct lv_upconn *uc = conn_new(s);
    uc->acq = acq;
    acq->connecting = uc;
    uc->addr_index = 0;
    connect_next(uc);
    return true;
}

static void on_reuse_now(uv_timer_t *t);

void lv_upstream_acquire(struct lv_upstream *up, struct lv_acquire *acq,
                         const struct lv_upserver *avoid, bool fresh, lv_acquire_cb cb, void *arg)
{
    memset(acq, 0, sizeof(*acq));
    acq->up = up;
    acq->cb = cb;
    acq->arg = arg;
    acq->fresh = fresh;
    acq->active = true;
    acq->queued_at = now_ms(up);
    acq->server = pick_server(up, avoid);
    /* Always go through the wait queue + a zero timer so the callback runs from the loop. */
    acq_list_append(&up->waitq, acq);
    acq->queued = true;
    up->nwaiting++;
    uv_timer_start(&up->timer, on_reuse_now, 0, 0);
}

void lv_upstream_cancel(struct lv_acquire *acq)
{
    if (!acq->active)
        return;
    acq->active = false;
    if (acq->queued) {
        acq_list_remove(acq);
        acq->queued = false;
        acq->up->nwaiting--;
        return;
    }
    /* Connecting: detach; a connection that still comes up goes to the idle pool. */
    if (acq->connecting) {
        acq->connecting->acq = NULL;
        acq->connecting = NULL;
    }
}

static void fail_acquire(struct lv_upstream *up, struct lv_acquire *acq, enum lv_acquire_error err,
                         const char *detail)
{
    acquire_done(acq, err, NULL, detail);
}

static void dispatch_waiters(struct lv_upstream *up)
{
    if (up->closing)
        return;
    uint64_t now = now_ms(up);
    uint64_t qto = up->cfg->pool.queue_timeout_ms ? up->cfg->pool.queue_timeout_ms
                                                  : up->cfg->connect_timeout_ms;
    uint32_t waiting_for_slot = 0;
    struct lv_acquire *a = up->waitq.next;
    while (a != &up->waitq) {
        struct lv_acquire *next = a->next;
        bool call_now;
        struct lv_upconn *got;
        if (try_acquire(up, a, &call_now, &got)) {
            acq_list_remove(a);
            a->queued = false;
            up->nwaiting--;
            if (got) {
                acquire_done(a, LV_ACQUIRE_OK, got, NULL);
            } else if (a->server->naddrs == 0) {
                char msg[160];
                snprintf(msg, sizeof(msg), "%s: cannot resolve", a->server->name);
                fail_acquire(up, a, LV_ACQUIRE_NO_SERVER, msg);
            }
            /* else: connecting; the connect callbacks finish it */
        } else if (now - a->queued_at >= qto) {
            acq_list_remove(a);
            a->queued = false;
            up->nwaiting--;
            fail_acquire(up, a, LV_ACQUIRE_QUEUE_TIMEOUT, "timed out waiting for a connection");
        } else if (++waiting_for_slot > up->cfg->pool.queue_size) {
            acq_list_remove(a);
            a->queued = false;
            up->nwaiting--;
            fail_acquire(up, a, LV_ACQUIRE_OVERFLOW, "connection pool queue full");
        }
        a = next;
    }
    if (up->nwaiting > 0 && !up->closing) {
        /* Re-check queue timeouts soon. */
        uv_timer_start(&up->timer, on_reuse_now, 10, 0);
    }
}

static void on_reuse_now(uv_timer_t *t)
{
    dispatch_waiters(t->data);
}

/* ---- lifecycle */

/* FNV-1a over what decides whether an old pool can serve a new config's upstream. */
static uint64_t fnv_byte(uint64_t h, uint64_t b)
{
    return (h ^ b) * 1099511628211ULL;
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    for (const char *p = s ? s : ""; *p; p++)
        h = fnv_byte(h, (unsigned char)*p);
    return fnv_byte(h, '|');
}

static uint64_t servers_fingerprint(const struct lv_upstream_cfg *cfg)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < cfg->nservers; i++)
        h = fnv_byte(fnv_str(h, cfg->servers[i].host), cfg->servers[i].port);
    h = fnv_byte(h, (uint64_t)cfg->tls);
    h = fnv_byte(h, (uint64_t)cfg->tls_verify);
    return fnv_str(fnv_str(h, cfg->tls_sni), cfg->tls_ca);
}

struct lv_upstream *lv_upstream_create(uv_loop_t *loop, const struct lv_upstream_cfg *cfg)
{
    struct lv_upstream *up = lv_xcalloc(1, sizeof(*up));
    up->name = lv_xstrdup(cfg->name);
    up->loop = loop;
    up->cfg = cfg;
    up->rng = (uint64_t)(uintptr_t)up ^ uv_hrtime() ^ 0x9E3779B97F4A7C15ULL;
    if (up->rng == 0)
        up->rng = 1;
    up->fingerprint = servers_fingerprint(cfg);
    if (cfg->tls) {
        struct lv_buf err = LV_BUF_INIT;
        up->tls_ctx = lv_tls_client_ctx(cfg->tls_verify, cfg->tls_ca, &err);
        if (!up->tls_ctx)
            lv_error("upstream %s: TLS: %.*s (connections will fail)", cfg->name, (int)err.len,
                     err.data ? err.data : "");
        lv_buf_dispose(&err);
    }
    acq_list_init(&up->waitq);
    uv_timer_init(loop, &up->timer);
    up->timer.data = up;
    up->open_handles = 1;
    up->nservers = cfg->nservers;
    up->servers = lv_xcalloc(cfg->nservers, sizeof(*up->servers));
    for (size_t i = 0; i < cfg->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        s->up = up;
        s->hp.host = lv_xstrdup(cfg->servers[i].host);
        s->hp.port = cfg->servers[i].port;
        snprintf(s->name, sizeof(s->name), "%s:%u", s->hp.host, s->hp.port);
        conn_list_init(&s->idle_head);
        struct sockaddr_storage ss;
        if (literal_addr(&s->hp, &ss) == 0) {
            s->addrs = lv_xcalloc(1, sizeof(ss));
            s->addrs[0] = ss;
            s->naddrs = 1;
        } else {
            resolve(s);
        }
    }
    return up;
}

bool lv_upstream_same_servers(const struct lv_upstream *up, const struct lv_upstream_cfg *cfg)
{
    return up->fingerprint == servers_fingerprint(cfg) && up->nservers == cfg->nservers;
}

void lv_upstream_update(struct lv_upstream *up, const struct lv_upstream_cfg *cfg)
{
    up->cfg = cfg;
}

void lv_upstream_tick(struct lv_upstream *up)
{
    uint64_t now = now_ms(up);
    uint64_t period = up->cfg->pool.max_lifetime_ms ? up->cfg->pool.max_lifetime_ms : 600000;
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        if (!is_literal(s) && !s->resolving && now - s->resolved_at >= period)
            resolve(s);
    }
}

static void on_upstream_timer_closed(uv_handle_t *h)
{
    struct lv_upstream *up = h->data;
    up->open_handles--;
    if (up->open_handles == 0 && up->on_closed)
        up->on_closed(up);
}

void lv_upstream_retire(struct lv_upstream *up)
{
    up->retired = true;
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        while (s->idle_head.next != &s->idle_head)
            conn_close(s->idle_head.next, false);
    }
}

void lv_upstream_destroy(struct lv_upstream *up)
{
    if (up->closing)
        return;
    up->closing = true;
    struct lv_acquire *a = up->waitq.next;
    while (a != &up->waitq) {
        struct lv_acquire *next = a->next;
        acq_list_remove(a);
        a->queued = false;
        up->nwaiting--;
        fail_acquire(up, a, LV_ACQUIRE_CANCELLED, "upstream removed");
        a = next;
    }
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        while (s->idle_head.next != &s->idle_head)
            conn_close(s->idle_head.next, false);
        if (s->resolving)
            uv_cancel((uv_req_t *)&s->gai);
    }
    uv_timer_stop(&up->timer);
    uv_close((uv_handle_t *)&up->timer, on_upstream_timer_closed);
}

void lv_upstream_free(struct lv_upstream *up)
{
    for (size_t i = 0; i < up->nservers; i++) {
        free(up->servers[i].addrs);
        free(up->servers[i].hp.host);
    }
    free(up->servers);
    free(up->name);
    if (up->tls_ctx)
        lv_tls_ctx_free(up->tls_ctx);
    free(up);
}

void lv_upstream_counts(const struct lv_upstream *up, uint32_t *active, uint32_t *idle)
{
    uint32_t a = 0, i = 0;
    for (size_t k = 0; k < up->nservers; k++) {
        a += up->servers[k].active;
        i += up->servers[k].idle;
    }
    *active = a;
    *idle = i;
}
