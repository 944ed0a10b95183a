/*
 * upconn: an upstream's connections (net/upstream.h): opening them (a Happy Eyeballs race per
 * new connection, with the pool's slot accounting), TLS to the upstream, reads for the attempt
 * that owns a busy connection, and the idle keep-alive pool. net/upstream.c picks the server
 * and queues the acquires; this file gets them a connection.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/addr.h"
#include "base/log.h"
#include "net/tls.h"
#include "net/upstream.h"

/* One read buffer per thread (= per worker loop): readers consume synchronously. */
static _Thread_local char read_block[64 * 1024];

static void connect_next(struct lv_upconn *uc);
static void conn_reading(struct lv_upconn *uc, bool on);
static void connect_done(struct lv_upconn *uc);
static void raw_send(struct lv_upconn *uc);

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

void lv__upconn_close(struct lv_upconn *uc, bool reset)
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
    uc->created_ms = lv__upstream_now(up);
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
    uint64_t now = lv__upstream_now(uc->server->up);
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
           lv__upstream_now(up) < race->deadline;
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
void lv__upconn_race_start(struct lv_upserver *s, struct lv_acquire *acq)
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
    race->deadline = lv__upstream_now(up) + (to ? to : 1000);
    s->active++;
    acq->race = race;
    race_start_next(race);
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
    if (untried > 0 && !race->winner && lv__upstream_now(up) >= race->deadline)
        lv_buf_printf(&msg, "%s%d more address%s not tried within connect_timeout",
                      msg.len ? "; " : "", untried, untried == 1 ? "" : "es");
    lv_buf_putc(&msg, '\0');
    s->active--;
    if (acq)
        acq->race = NULL;
    race_free(race);
    if (acq)
        lv__acquire_done(acq, LV_ACQUIRE_CONNECT_FAILED, NULL, msg.data);
    lv_buf_dispose(&msg);
    lv__upstream_dispatch_waiters(up);
}

/* An attempt failed: race the next address at once, or, when no attempt is left in flight,
 * fail the whole connect. */
static void connect_failed(struct lv_upconn *uc, const char *why)
{
    struct lv_race *race = uc->race;
    uc->server->connect_failures++;
    lv_buf_printf(&race->addrs[uc->addr_index].why, "%s: %s", uc->peer, why);
    race_drop(uc);
    lv__upconn_close(uc, false);
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
            lv__upconn_close(other, false);
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
    lv__acquire_done(acq, LV_ACQUIRE_OK, uc, NULL);
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
        if (bufs[i].len) {
            int rc = lv_tls_write(uc->tls, bufs[i].base, bufs[i].len, &uc->tls_out);
            if (rc < 0)
                return rc;
        }
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
        lv__upconn_close(uc, false);
        lv__upstream_dispatch_waiters(up);
    }
}

static void on_idle_timeout(uv_timer_t *t)
{
    struct lv_upconn *uc = t->data;
    uc->idle_armed = 0;
    if (uc->state != LV_UPCONN_IDLE)
        return; /* armed while it was idle; it is busy now (its next release re-arms) */
    uint64_t now = lv__upstream_now(uc->server->up);
    if (now < uc->idle_due) { /* it went busy and idle again since: not expired yet */
        uv_timer_start(&uc->timer, on_idle_timeout, uc->idle_due - now, 0);
        uc->idle_armed = uc->idle_due;
        return;
    }
    lv__upconn_close(uc, false);
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
    uint64_t now = lv__upstream_now(up);
    const struct lv_pool_cfg *pc = &up->cfg->pool;
    uc->on_read = NULL;
    uc->read_arg = NULL;
    if (up->closing || up->retired || s->idle >= pc->max_idle ||
        (pc->max_lifetime_ms && now - uc->created_ms >= pc->max_lifetime_ms)) {
        lv__upconn_close(uc, false);
        lv__upstream_dispatch_waiters(up);
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
    /* Lazily: a connection taken and given back again and again keeps one timer armed and
     * moves only its due (no timer call per request). */
    uc->idle_due = now + to;
    if (uc->idle_armed == 0 || uc->idle_armed > uc->idle_due) {
        uv_timer_start(&uc->timer, on_idle_timeout, to, 0);
        uc->idle_armed = uc->idle_due;
    }
    lv__upstream_dispatch_waiters(up);
}

void lv_upconn_discard(struct lv_upconn *uc, bool reset)
{
    struct lv_upstream *up = uc->server->up;
    lv__upconn_close(uc, reset);
    lv__upstream_dispatch_waiters(up);
}

/* Connecting: detach the race. It starts no further address (nobody waits for it), but the
 * attempts in flight go on: the first to connect goes to the idle pool (the others are closed
 * as usual), and a race that fails just gives its slot back. */
void lv__upconn_race_detach(struct lv_acquire *acq)
{
    if (acq->race) {
        acq->race->acq = NULL;
        acq->race = NULL;
    }
}
