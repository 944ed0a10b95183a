#include "net/upstream.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/addr.h"
#include "base/log.h"
#include "base/rand.h"
#include "net/healthcheck.h"
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
    return lv_rand_next(s);
}

static struct lv_upconn *idle_first(struct lv_upserver *s)
{
    struct lv_dlist *l = lv_dlist_first(&s->idle_conns);
    return l ? lv_dlist_entry(l, struct lv_upconn, idle_link) : NULL;
}

/* ---- resolution */

/* The first entry from `a` on of `family` (AF_UNSPEC: either IPv4 or IPv6). */
static struct addrinfo *next_of_family(struct addrinfo *a, int family)
{
    for (; a; a = a->ai_next)
        if (family == AF_UNSPEC ? a->ai_family == AF_INET || a->ai_family == AF_INET6
                                : a->ai_family == family)
            return a;
    return NULL;
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
            /* RFC 8305 §4: alternate the families, starting with the resolver's first one
             * (its preference), each in the resolver's order. Connect races go down this
             * list, so a family that does not work costs one Connection Attempt Delay
             * instead of one attempt per address of that family. */
            struct sockaddr_storage *addrs = lv_xcalloc((size_t)n, sizeof(*addrs));
            struct addrinfo *lead = next_of_family(res, AF_UNSPEC);
            int fam[2] = {lead->ai_family, lead->ai_family == AF_INET ? AF_INET6 : AF_INET};
            struct addrinfo *cur[2] = {next_of_family(res, fam[0]), next_of_family(res, fam[1])};
            int i = 0;
            for (int k = 0; cur[0] || cur[1]; k ^= 1) {
                struct addrinfo *a = cur[k];
                if (!a)
                    continue;
                cur[k] = next_of_family(a->ai_next, fam[k]);
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
    return lv_addr_from_ip(s->hp.host, s->hp.port, &ss) == 0;
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
        lv_dlist_remove(&uc->idle_link);
        s->idle--;
    } else if (uc->state == LV_UPCONN_BUSY) {
        s->active--;
    } /* CONNECTING: the slot is its race's (see "connecting" below) */
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
    return uc;
}

/* ---- connecting: Happy Eyeballs (RFC 8305)
 *
 * An acquire that needs a new connection runs a race over the server's addresses (in the
 * order on_resolved made, families interleaved). The first attempt starts at once; the next
 * one when the newest attempt has not connected after LV_CONNECT_ATTEMPT_DELAY_MS, or at once
 * when any attempt fails; earlier attempts keep trying meanwhile. The first attempt whose TCP
 * connect completes wins and every other one is closed; for a TLS upstream the winner alone
 * goes on to the handshake. The race is bounded by connect_timeout from its first attempt,
 * not per address; the TLS handshake keeps its own connect_timeout after TCP is up.
 *
 * Pool accounting: a race holds exactly one slot of s->active (max_connections), however
 * many attempts it has in flight. It opens one connection, and the losers are closed the
 * moment a winner exists, so counting each attempt would make a slow family spend slots (and
 * send requests to the wait queue or pool-overflow) for sockets that never serve anything.
 * The winner takes the slot over (BUSY, or IDLE through lv_upconn_release); a race that ends
 * without a winner gives it back. CONNECTING connections therefore never touch s->active
 * themselves (conn_new, conn_close). The price is up to connect_timeout / 250 ms extra
 * sockets per race while addresses hang, never more than the server has addresses.
 */
#define LV_CONNECT_ATTEMPT_DELAY_MS 250

struct lv_race_addr {
    struct sockaddr_storage ss;
    struct lv_upconn *uc; /* its attempt, while in flight */
    struct lv_buf why;    /* "peer: reason" once its attempt failed */
};

struct lv_race {
    struct lv_acquire *acq; /* NULL once cancelled: the winner then goes to the idle pool */
    struct lv_upserver *server;
    struct lv_race_addr *addrs; /* a copy: a re-resolution must not move them mid-race */
    int naddrs;
    int next;                 /* the next address to start */
    int live;                 /* attempts in flight */
    struct lv_upconn *newest; /* the attempt whose timer paces the next start */
    struct lv_upconn *winner; /* its TCP connect completed first (TLS may still run) */
    uint64_t deadline;        /* first attempt + connect_timeout */
};

static void on_connect_timeout(uv_timer_t *t);

static void race_free(struct lv_race *race)
{
    for (int i = 0; i < race->naddrs; i++)
        lv_buf_dispose(&race->addrs[i].why);
    free(race->addrs);
    free(race);
}

/* Takes attempt `uc` out of its race (the race itself stays). */
static void race_drop(struct lv_upconn *uc)
{
    struct lv_race *race = uc->race;
    race->addrs[uc->addr_index].uc = NULL;
    race->live--;
    if (race->newest == uc)
        race->newest = NULL;
    uc->race = NULL;
}

/* An attempt's timer: the Connection Attempt Delay while it is the newest (`stagger`), then
 * the race's deadline. */
static void arm_attempt_timer(struct lv_upconn *uc)
{
    uint64_t now = now_ms(uc->server->up);
    uint64_t left = uc->race->deadline > now ? uc->race->deadline - now : 0;
    if (left <= LV_CONNECT_ATTEMPT_DELAY_MS)
        uc->stagger = false; /* nothing could start before the deadline anyway */
    uv_timer_start(&uc->timer, on_connect_timeout, uc->stagger ? LV_CONNECT_ATTEMPT_DELAY_MS : left,
                   0);
}

static bool race_can_start(const struct lv_race *race)
{
    const struct lv_upstream *up = race->server->up;
    return race->acq && !race->winner && race->next < race->naddrs && !up->closing &&
           now_ms(up) < race->deadline;
}

/* Starts an attempt to the race's next address. */
static void race_start_next(struct lv_race *race)
{
    struct lv_upconn *prev = race->newest;
    if (prev && prev->stagger) {
        /* One pacing timer per race: the attempt before now only waits for the deadline. */
        prev->stagger = false;
        arm_attempt_timer(prev);
    }
    struct lv_upconn *uc = conn_new(race->server);
    int i = race->next++;
    uc->race = race;
    uc->addr_index = i;
    race->addrs[i].uc = uc;
    race->live++;
    race->newest = uc;
    connect_next(uc);
}

/* Opens a connection to server `s` for `acq`: a race holding one pool slot. */
static void race_start(struct lv_upserver *s, struct lv_acquire *acq)
{
    struct lv_upstream *up = s->up;
    struct lv_race *race = lv_xcalloc(1, sizeof(*race));
    race->acq = acq;
    race->server = s;
    race->naddrs = s->naddrs;
    race->addrs = lv_xcalloc((size_t)s->naddrs, sizeof(*race->addrs));
    for (int i = 0; i < s->naddrs; i++)
        race->addrs[i].ss = s->addrs[i];
    uint64_t to = up->cfg->connect_timeout_ms;
    race->deadline = now_ms(up) + (to ? to : 1000);
    s->active++;
    acq->race = race;
    race_start_next(race);
}

static void acquire_done(struct lv_acquire *acq, enum lv_acquire_error err, struct lv_upconn *uc,
                         const char *detail)
{
    acq->active = false;
    acq->cb(err, uc, detail, acq->arg);
}

/* The last attempt of a race failed: give its slot back and fail the acquire, naming every
 * address tried with its own reason, in the order they were tried. */
static void race_lost(struct lv_race *race)
{
    struct lv_upserver *s = race->server;
    struct lv_upstream *up = s->up;
    struct lv_acquire *acq = race->acq;
    struct lv_buf msg = LV_BUF_INIT;
    for (int i = 0; i < race->next; i++) {
        const struct lv_buf *why = &race->addrs[i].why;
        if (why->len) {
            if (msg.len)
                lv_buf_puts(&msg, "; ");
            lv_buf_append(&msg, why->data, why->len);
        }
    }
    int untried = race->naddrs - race->next;
    if (untried > 0 && !race->winner && now_ms(up) >= race->deadline)
        lv_buf_printf(&msg, "%s%d more address%s not tried within connect_timeout",
                      msg.len ? "; " : "", untried, untried == 1 ? "" : "es");
    lv_buf_putc(&msg, '\0');
    s->active--;
    if (acq)
        acq->race = NULL;
    race_free(race);
    if (acq)
        acquire_done(acq, LV_ACQUIRE_CONNECT_FAILED, NULL, msg.data);
    lv_buf_dispose(&msg);
    dispatch_waiters(up);
}

/* An attempt failed: race the next address at once, or, when no attempt is left in flight,
 * fail the whole connect. */
static void connect_failed(struct lv_upconn *uc, const char *why)
{
    struct lv_race *race = uc->race;
    uc->server->connect_failures++;
    lv_buf_printf(&race->addrs[uc->addr_index].why, "%s: %s", uc->peer, why);
    race_drop(uc);
    conn_close(uc, false);
    if (race_can_start(race)) {
        race_start_next(race);
        return;
    }
    if (race->live == 0)
        race_lost(race);
}

static void on_connect_timeout(uv_timer_t *t)
{
    struct lv_upconn *uc = t->data;
    if (uc->stagger) {
        /* Not connected within the Connection Attempt Delay: race the next address too,
         * while this one keeps trying until the deadline. */
        uc->stagger = false;
        arm_attempt_timer(uc);
        if (race_can_start(uc->race))
            race_start_next(uc->race);
        return;
    }
    connect_failed(uc, "connect timeout");
}

/* The TLS handshake of a race's winner: its own connect_timeout. */
static void arm_connect_timer(struct lv_upconn *uc)
{
    uint64_t to = uc->server->up->cfg->connect_timeout_ms;
    uc->stagger = false;
    uv_timer_start(&uc->timer, on_connect_timeout, to ? to : 1000, 0);
}

static void on_connect_error_deferred(uv_timer_t *t)
{
    struct lv_upconn *uc = t->data;
    connect_failed(uc, uv_strerror(uc->connect_error));
}

/* TCP to uc completed first: it wins, and every other attempt of its race is closed now
 * (not counted as failures: they were abandoned, not refused). */
static void race_won(struct lv_upconn *uc)
{
    struct lv_race *race = uc->race;
    race->winner = uc;
    uc->stagger = false;
    for (int i = 0; i < race->next; i++) {
        struct lv_upconn *other = race->addrs[i].uc;
        if (other && other != uc) {
            race_drop(other);
            conn_close(other, false);
        }
    }
}

static void on_connected(uv_connect_t *req, int status)
{
    struct lv_upconn *uc = req->data;
    if (uc->state == LV_UPCONN_CLOSING)
        return; /* timed out already, or another attempt won */
    struct lv_upserver *s = uc->server;
    uv_timer_stop(&uc->timer);
    if (status < 0) {
        connect_failed(uc, uv_strerror(status));
        return;
    }
    race_won(uc);
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

/* TCP (and TLS) are up: the race is over, and the connection (with the race's pool slot) is
 * the acquirer's. */
static void connect_done(struct lv_upconn *uc)
{
    struct lv_upserver *s = uc->server;
    struct lv_race *race = uc->race;
    struct lv_acquire *acq = race->acq;
    race_drop(uc);
    race_free(race);
    uv_timer_stop(&uc->timer);
    uc->handshaking = false;
    s->connects++;
    if (uc->tls && lv_tls_resumed(uc->tls))
        s->tls_resumed++;
    uc->state = LV_UPCONN_BUSY;
    uc->requests = 1;
    uc->reused = false;
    if (!acq) {
        /* The requester went away while we connected: keep the connection for the next one. */
        lv_upconn_release(uc);
        return;
    }
    acq->race = NULL;
    acquire_done(acq, LV_ACQUIRE_OK, uc, NULL);
}

/* Starts the TCP connect of attempt `uc` to its address in the race. */
static void connect_next(struct lv_upconn *uc)
{
    struct sockaddr_storage *ss = &uc->race->addrs[uc->addr_index].ss;
    lv_addr_format((const struct sockaddr *)ss, uc->peer, sizeof(uc->peer));
    uc->connect_req.data = uc;
    int rc = uv_tcp_connect(&uc->connect_req, &uc->tcp, (const struct sockaddr *)ss, on_connected);
    if (rc < 0) {
        /* Report through the loop, never from inside the caller. */
        uc->connect_error = rc;
        uc->stagger = false;
        uv_timer_start(&uc->timer, on_connect_error_deferred, 0, 0);
        return;
    }
    uc->stagger = true;
    arm_attempt_timer(uc);
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
        uc->tls_plain_now = true; /* past the engine: on_conn_read must not come back here */
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
        uc->tls_plain_now = true;
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
    if (rc == 1) {
        uc->tls_plain_now = true;
        on_conn_read((uv_stream_t *)&uc->tcp, UV_EOF, &(uv_buf_t){NULL, 0});
    }
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
    lv_dlist_push(&s->idle_conns, &uc->idle_link);
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

/* ---- picking a server (README, "Upstream health") */

static void health_events(struct lv_upstream *up, const struct lv_health_event *ev, int n);

size_t lv_upserver_index(const struct lv_upserver *s)
{
    return (size_t)(s - s->up->servers);
}

/* Can server i take this attempt? In (or panic: any), and not tried unless `tried_ok`. */
static bool candidate(const struct lv_upstream *up, size_t i, uint64_t tried, bool panic,
                      bool tried_ok)
{
    if (!panic && !lv_health_in(&up->health, i))
        return false;
    return tried_ok || i >= 64 || !(tried & ((uint64_t)1 << i));
}

/* A starting server takes its slow-start share: it is passed over with probability 1 - w. */
static bool takes_share(struct lv_upstream *up, size_t i, uint64_t now)
{
    double w = lv_health_weight(&up->health, i, now);
    if (w >= 1.0)
        return true;
    return (double)(rng_next(&up->rng) >> 11) * 0x1.0p-53 < w;
}

static struct lv_upserver *pick_rr(struct lv_upstream *up, size_t start, bool advance,
                                   uint64_t tried, bool panic, uint64_t now)
{
    size_t n = up->nservers;
    /* Two rounds: untried servers first, then (a retry with every server tried) any of them;
     * within a round a starting server may be passed over for its share, but never when it
     * is the only one. */
    for (int round = 0; round < 2; round++) {
        size_t first = SIZE_MAX;
        for (size_t k = 0; k < n; k++) {
            size_t i = (start + k) % n;
            if (!candidate(up, i, tried, panic, round == 1))
                continue;
            if (first == SIZE_MAX)
                first = i;
            if (panic || takes_share(up, i, now)) {
                if (advance)
                    up->rr = i + 1;
                return &up->servers[i];
            }
        }
        if (first != SIZE_MAX) {
            if (advance)
                up->rr = first + 1;
            return &up->servers[first];
        }
    }
    return &up->servers[start % n];
}

static struct lv_upserver *pick_p2c(struct lv_upstream *up, uint64_t tried, bool panic,
                                    uint64_t now)
{
    /* Power of two choices among the candidates: least in flight per unit of weight. */
    size_t n = up->nservers, idx[64], m = 0;
    for (int round = 0; round < 2 && m == 0; round++)
        for (size_t i = 0; i < n && m < 64; i++)
            if (candidate(up, i, tried, panic, round == 1))
                idx[m++] = i;
    if (m == 0)
        return &up->servers[rng_next(&up->rng) % n];
    if (m == 1)
        return &up->servers[idx[0]];
    size_t a = rng_next(&up->rng) % m;
    size_t b = rng_next(&up->rng) % (m - 1);
    if (b >= a)
        b++;
    struct lv_upserver *sa = &up->servers[idx[a]], *sb = &up->servers[idx[b]];
    double wa = panic ? 1.0 : lv_health_weight(&up->health, idx[a], now);
    double wb = panic ? 1.0 : lv_health_weight(&up->health, idx[b], now);
    return (double)(sb->inflight + 1) / wb < (double)(sa->inflight + 1) / wa ? sb : sa;
}

static struct lv_upserver *pick_server(struct lv_upstream *up, const struct lv_upserver *last,
                                       uint64_t tried, bool fresh, bool *panic)
{
    size_t n = up->nservers;
    uint64_t now = now_ms(up);
    size_t in = lv_health_count_in(&up->health);
    if (in < n && !up->closing) {
        /* Someone is out: an ejection may have run out since the last tick. */
        struct lv_health_event ev[16];
        health_events(up, ev, lv_health_tick(&up->health, now, ev, 16));
        in = lv_health_count_in(&up->health);
    }
    *panic = in == 0;
    if (*panic)
        up->panic_picks++;
    if (fresh && last)
        return (struct lv_upserver *)last; /* re-send on the same server, a fresh connection */
    if (n == 1)
        return &up->servers[0];
    if (up->cfg->balance == LV_BALANCE_LEAST_REQUEST)
        return pick_p2c(up, last ? tried : 0, *panic, now);
    if (last) {
        /* A retry takes the next server after the one that failed, without moving the shared
         * rotation: otherwise a dead server would be every request's first pick. */
        return pick_rr(up, lv_upserver_index(last) + 1, false, tried, *panic, now);
    }
    return pick_rr(up, up->rr, true, 0, *panic, now);
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
        struct lv_upconn *uc = idle_first(s);
        if (uc) {
            lv_dlist_remove(&uc->idle_link);
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
    race_start(s, acq);
    return true;
}

static void on_reuse_now(uv_timer_t *t);

void lv_upstream_acquire(struct lv_upstream *up, struct lv_acquire *acq,
                         const struct lv_upserver *last, uint64_t tried, bool fresh,
                         lv_acquire_cb cb, void *arg)
{
    memset(acq, 0, sizeof(*acq));
    acq->up = up;
    acq->cb = cb;
    acq->arg = arg;
    acq->fresh = fresh;
    acq->active = true;
    acq->queued_at = now_ms(up);
    acq->server = pick_server(up, last, tried, fresh, &acq->panic);
    /* Always go through the wait queue + a zero timer so the callback runs from the loop. */
    lv_dlist_append(&up->waitq, &acq->link);
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
        lv_dlist_remove(&acq->link);
        acq->queued = false;
        acq->up->nwaiting--;
        return;
    }
    /* Connecting: detach the race. It starts no further address (nobody waits for it), but
     * the attempts in flight go on: the first to connect goes to the idle pool (the others
     * are closed as usual), and a race that fails just gives its slot back. */
    if (acq->race) {
        acq->race->acq = NULL;
        acq->race = NULL;
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
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &up->waitq)
    {
        struct lv_acquire *a = lv_dlist_entry(l, struct lv_acquire, link);
        bool call_now;
        struct lv_upconn *got;
        if (try_acquire(up, a, &call_now, &got)) {
            lv_dlist_remove(&a->link);
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
            lv_dlist_remove(&a->link);
            a->queued = false;
            up->nwaiting--;
            fail_acquire(up, a, LV_ACQUIRE_QUEUE_TIMEOUT, "timed out waiting for a connection");
        } else if (++waiting_for_slot > up->cfg->pool.queue_size) {
            lv_dlist_remove(&a->link);
            a->queued = false;
            up->nwaiting--;
            fail_acquire(up, a, LV_ACQUIRE_OVERFLOW, "connection pool queue full");
        }
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

static void health_params(const struct lv_upstream_cfg *cfg, struct lv_health_params *p)
{
    memset(p, 0, sizeof(*p));
    p->outlier = cfg->outlier.enabled;
    p->consecutive_failures = cfg->outlier.consecutive_failures;
    p->eject_for_ms = cfg->outlier.eject_for_ms;
    p->max_eject_for_ms = cfg->outlier.max_eject_for_ms;
    p->max_ejected = cfg->outlier.max_ejected;
    p->enforce = cfg->outlier.enforce;
    p->healthy = cfg->health.enabled ? cfg->health.healthy : 2;
    p->unhealthy = cfg->health.enabled ? cfg->health.unhealthy : 3;
    p->slow_start_ms = cfg->slow_start_ms;
}

static void health_events(struct lv_upstream *up, const struct lv_health_event *ev, int n)
{
    for (int i = 0; i < n; i++)
        if (up->on_health_event)
            up->on_health_event(up, &ev[i]);
}

void lv_upstream_report(struct lv_upstream *up, const struct lv_upserver *s,
                        enum lv_health_outcome o)
{
    if (!s || s->up != up || up->closing)
        return;
    struct lv_health_event ev[LV_HEALTH_MAX_EVENTS];
    int n = lv_health_record(&up->health, lv_upserver_index(s), now_ms(up), o, ev);
    health_events(up, ev, n);
}

void lv_upstream_check_result(struct lv_upstream *up, size_t i, bool ok, const char *why,
                              double duration_ms)
{
    if (i >= up->nservers || up->closing)
        return;
    struct lv_upserver *s = &up->servers[i];
    snprintf(s->last_check, sizeof(s->last_check), "%s", why ? why : (ok ? "ok" : "failed"));
    s->last_check_ok = ok;
    s->last_check_ms = duration_ms;
    uv_timeval64_t tv;
    s->last_check_unix = uv_gettimeofday(&tv) == 0 ? (double)tv.tv_sec + tv.tv_usec / 1e6 : 0;
    struct lv_health_event ev[LV_HEALTH_MAX_EVENTS];
    int n = lv_health_check_result(&up->health, i, now_ms(up), ok, why, ev);
    health_events(up, ev, n);
}

/* ---- the servers as net/healthcheck sees them */

static size_t check_count(void *owner)
{
    const struct lv_upstream *up = owner;
    return up->servers ? up->nservers : 0;
}

static bool check_closing(void *owner)
{
    return ((const struct lv_upstream *)owner)->closing;
}

static void check_get(void *owner, size_t i, struct lv_healthcheck_target *t)
{
    const struct lv_upstream *up = owner;
    assert(i < up->nservers);
    const struct lv_upserver *s = &up->servers[i];
    *t = (struct lv_healthcheck_target){
        .name = s->name,
        .host = s->hp.host,
        .port = s->hp.port,
        .addrs = s->addrs,
        .naddrs = s->naddrs,
        .resolving = s->resolving,
        .tls_ctx = up->tls_ctx,
        .sni = up->cfg ? up->cfg->tls_sni : NULL,
    };
}

const struct lv_healthcheck_servers lv_upstream_check_servers = {
    .count = check_count,
    .closing = check_closing,
    .get = check_get,
};

static void on_check(size_t server, bool ok, const char *why, uint64_t duration_ms, void *arg)
{
    lv_upstream_check_result(arg, server, ok, why, (double)duration_ms);
}

/* Starts, updates or stops the active checks to match cfg->health. */
static void checks_sync(struct lv_upstream *up)
{
    const struct lv_health_cfg *h = &up->cfg->health;
    if (!h->enabled || up->retired || up->closing) {
        lv_healthcheck_stop(up->checker);
        up->checker = NULL;
        return;
    }
    struct lv_healthcheck_params p = {.path = h->path,
                                      .interval_ms = h->interval_ms,
                                      .timeout_ms = h->timeout_ms,
                                      .host = h->host};
    memcpy(p.expect, h->expect, sizeof(p.expect));
    if (up->checker) {
        if (lv_healthcheck_update(up->checker, &p) != 0)
            lv_warn("upstream %s: health check settings refused: %s", up->name,
                    lv_healthcheck_params_error(&p));
        return;
    }
    up->checker = lv_healthcheck_start(up->loop, &lv_upstream_check_servers, up, &p, on_check, up);
    if (!up->checker)
        lv_warn("upstream %s: cannot start health checks: %s", up->name,
                lv_healthcheck_params_error(&p));
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
    lv_dlist_init(&up->waitq);
    uv_timer_init(loop, &up->timer);
    up->timer.data = up;
    up->open_handles = 1;
    up->nservers = cfg->nservers;
    up->servers = lv_xcalloc(cfg->nservers, sizeof(*up->servers));
    struct lv_health_params hp;
    health_params(cfg, &hp);
    lv_health_init(&up->health, &hp, cfg->nservers, false);
    for (size_t i = 0; i < cfg->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        s->up = up;
        s->hp.host = lv_xstrdup(cfg->servers[i].host);
        s->hp.port = cfg->servers[i].port;
        snprintf(s->name, sizeof(s->name), "%s:%u", s->hp.host, s->hp.port);
        lv_dlist_init(&s->idle_conns);
        struct sockaddr_storage ss;
        if (lv_addr_from_ip(s->hp.host, s->hp.port, &ss) == 0) {
            s->addrs = lv_xcalloc(1, sizeof(ss));
            s->addrs[0] = ss;
            s->naddrs = 1;
        } else {
            resolve(s);
        }
    }
    checks_sync(up);
    return up;
}

bool lv_upstream_same_servers(const struct lv_upstream *up, const struct lv_upstream_cfg *cfg)
{
    return up->fingerprint == servers_fingerprint(cfg) && up->nservers == cfg->nservers;
}

void lv_upstream_update(struct lv_upstream *up, const struct lv_upstream_cfg *cfg)
{
    bool checks_were_on = up->cfg->health.enabled;
    up->cfg = cfg;
    struct lv_health_params hp;
    health_params(cfg, &hp);
    lv_health_configure(&up->health, &hp);
    checks_sync(up);
    if (checks_were_on && !cfg->health.enabled) {
        /* Nothing will check a down server again: bring it back (README, "Upstream health"). */
        struct lv_health_event ev[16];
        health_events(up, ev, lv_health_checks_off(&up->health, now_ms(up), ev, 16));
    }
}

void lv_upstream_tick(struct lv_upstream *up)
{
    uint64_t now = now_ms(up);
    if (!up->closing) {
        struct lv_health_event ev[16];
        int n = lv_health_tick(&up->health, now, ev, 16);
        health_events(up, ev, n);
    }
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
    checks_sync(up); /* its replacement checks the servers now */
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        for (struct lv_upconn *uc; (uc = idle_first(s));)
            conn_close(uc, false);
    }
}

void lv_upstream_destroy(struct lv_upstream *up)
{
    if (up->closing)
        return;
    up->closing = true;
    checks_sync(up);
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &up->waitq)
    {
        struct lv_acquire *a = lv_dlist_entry(l, struct lv_acquire, link);
        lv_dlist_remove(&a->link);
        a->queued = false;
        up->nwaiting--;
        fail_acquire(up, a, LV_ACQUIRE_CANCELLED, "upstream removed");
    }
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        for (struct lv_upconn *uc; (uc = idle_first(s));)
            conn_close(uc, false);
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
    lv_health_free(&up->health);
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
