/*
 * A Redis connection (store/redis.h), shared by the idempotency store (redisstore.c) and the
 * rate-limit store (ratelimit_redis.c): one hiredis async context per store, on the libuv
 * loop. Names are resolved with uv_getaddrinfo and hiredis is given an IP; every address
 * is tried in turn; the connect has a deadline; a lost connection is retried with jittered
 * exponential backoff. hiredis 0.14 must never be freed from inside one of its callbacks:
 * every free happens from our timers or destroy.
 *
 * The socket is watched by a small adapter of our own rather than hiredis' adapters/libuv.h:
 * libuv reports POLLERR (a refused connect, a reset) as an error status and stops the handle,
 * and the 0.14 adapter drops those, so a refused connect would only be seen at its deadline.
 */
#include <assert.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/addr.h"
#include "base/buf.h"
#include "base/log.h"
#include "base/rand.h"
#include "store/redis.h"

/* ---- hiredis event hooks on a uv_poll_t */

struct rpoll {
    redisAsyncContext *ac; /* NULL once hiredis let go of it */
    uv_poll_t poll;
    int events;
    int errors; /* error reports in a row: past a few, stop watching (no spinning) */
};

static void rpoll_cb(uv_poll_t *h, int status, int events);

static void rpoll_update(struct rpoll *p)
{
    if (p->events && p->errors < 3)
        uv_poll_start(&p->poll, p->events, rpoll_cb);
    else
        uv_poll_stop(&p->poll);
}

static void rpoll_cb(uv_poll_t *h, int status, int events)
{
    struct rpoll *p = h->data;
    if (!p->ac)
        return;
    if (status < 0) {
        /* Reading makes hiredis fetch the socket error and disconnect (or fail the connect).
         * If it somehow does not, the command deadlines drop the connection. */
        p->errors++;
        redisAsyncHandleRead(p->ac);
        if (p->ac)
            rpoll_update(p);
        return;
    }
    p->errors = 0;
    if (events & UV_READABLE)
        redisAsyncHandleRead(p->ac);
    if (p->ac && (events & UV_WRITABLE))
        redisAsyncHandleWrite(p->ac);
}

static void rpoll_add_read(void *arg)
{
    struct rpoll *p = arg;
    p->events |= UV_READABLE;
    rpoll_update(p);
}

static void rpoll_del_read(void *arg)
{
    struct rpoll *p = arg;
    p->events &= ~UV_READABLE;
    rpoll_update(p);
}

static void rpoll_add_write(void *arg)
{
    struct rpoll *p = arg;
    p->events |= UV_WRITABLE;
    rpoll_update(p);
}

static void rpoll_del_write(void *arg)
{
    struct rpoll *p = arg;
    p->events &= ~UV_WRITABLE;
    rpoll_update(p);
}

static void rpoll_closed(uv_handle_t *h)
{
    free(h->data);
}

/* hiredis is done with the socket (it closes it right after). */
static void rpoll_cleanup(void *arg)
{
    struct rpoll *p = arg;
    p->ac = NULL;
    uv_close((uv_handle_t *)&p->poll, rpoll_closed);
}

static bool rpoll_attach(redisAsyncContext *ac, uv_loop_t *loop)
{
    struct rpoll *p = lv_xcalloc(1, sizeof(*p));
    if (uv_poll_init(loop, &p->poll, ac->c.fd) != 0) {
        free(p);
        return false;
    }
    p->poll.data = p;
    p->ac = ac;
    ac->ev.data = p;
    ac->ev.addRead = rpoll_add_read;
    ac->ev.delRead = rpoll_del_read;
    ac->ev.addWrite = rpoll_add_write;
    ac->ev.delWrite = rpoll_del_write;
    ac->ev.cleanup = rpoll_cleanup;
    return true;
}

/* ---- connection */

void lv__redis_conn_init(struct lv__redisconn *c, const char *host, uint16_t port, uint64_t seed)
{
    c->host = lv_xstrdup(host);
    c->port = port;
    c->numeric = lv_addr_ip_family(host) != AF_UNSPEC;
    c->state = R_DOWN;
    c->rng = seed | 1;
    uv_timer_init(c->loop, &c->conn_timer);
    uv_unref((uv_handle_t *)&c->conn_timer);
    c->conn_timer.data = c;
    (*c->handles)++;
}

bool lv__redis_can_send(struct lv__redisconn *c)
{
    return c->ac && !*c->dying && c->state == R_UP &&
           !(c->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

/* A connection attempt is under way: new work waits for it rather than failing. */
bool lv__redis_connecting(struct lv__redisconn *c)
{
    return !*c->dying && (c->state == R_RESOLVING || c->state == R_CONNECTING);
}

static void schedule_reconnect(struct lv__redisconn *c)
{
    c->state = R_DOWN;
    if (*c->dying || *c->closing)
        return;
    unsigned shift = c->failures < 20 ? c->failures : 20;
    uint64_t delay = c->backoff_min_ms << shift;
    if (delay > c->backoff_max_ms || delay < c->backoff_min_ms)
        delay = c->backoff_max_ms;
    /* Equal jitter: several gateways that lost the same Redis do not come back in step. */
    delay = delay / 2 + lv_rand_next(&c->rng) % (delay / 2 + 1);
    c->failures++;
    uv_timer_start(&c->conn_timer, lv__redis_on_conn_timer, delay, 0);
}

/* The attempt failed for good: what waited for it fails, and the connection backs off. */
static void went_down(struct lv__redisconn *c, const char *why)
{
    if (!c->down_logged)
        lv_warn("%s: redis %s:%u: %s", c->what, c->host, c->port, why);
    c->down_logged = true;
    c->state = R_DOWN;
    c->hooks->down(c);
    schedule_reconnect(c);
}

/* One address failed: try the next one of this attempt (from a timer, as this may run inside
 * a hiredis callback), or give up. */
static void address_failed(struct lv__redisconn *c, const char *why)
{
    if (++c->addr_idx < c->naddrs) {
        c->state = R_CONNECTING;
        uv_timer_start(&c->conn_timer, lv__redis_on_conn_timer, 0, 0);
        return;
    }
    went_down(c, why);
}

/* Frees the connection from outside hiredis' callbacks: its pending commands are called back
 * with NULL. */
void lv__redis_drop(struct lv__redisconn *c, const char *why)
{
    redisAsyncContext *ac = c->ac;
    bool was_up = c->state == R_UP;
    c->ac = NULL;
    c->state = R_DOWN;
    if (ac)
        redisAsyncFree(ac);
    if (was_up)
        went_down(c, why);
    else
        address_failed(c, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct lv__redisconn *c = ac->data;
    if (c->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns. */
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", c->addrs[c->addr_idx],
                 ac->errstr ? ac->errstr : "?");
        c->ac = NULL;
        address_failed(c, why);
        return;
    }
    uv_timer_stop(&c->conn_timer);
    c->state = R_UP;
    c->failures = 0;
    if (c->down_logged)
        lv_info("%s: redis %s:%u: connected", c->what, c->host, c->port);
    c->down_logged = false;
    c->hooks->up(c);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct lv__redisconn *c = ac->data;
    (void)status;
    if (c->ac != ac)
        return;
    char why[160];
    snprintf(why, sizeof(why), "connection lost: %s", ac->errstr ? ac->errstr : "closed");
    c->ac = NULL;
    went_down(c, why);
}

/* Connects to addrs[addr_idx]. */
static void connect_next(struct lv__redisconn *c)
{
    const char *ip = c->addrs[c->addr_idx];
    redisAsyncContext *ac = redisAsyncConnect(ip, c->port);
    if (!ac) {
        went_down(c, "out of memory");
        return;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", ip, ac->errstr);
        redisAsyncFree(ac);
        address_failed(c, why);
        return;
    }
    if (!rpoll_attach(ac, c->loop)) {
        redisAsyncFree(ac);
        went_down(c, "cannot watch the socket");
        return;
    }
    ac->data = c;
    c->ac = ac;
    c->state = R_CONNECTING;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* This also watches for writability, which is how the connect completes. */
    redisAsyncSetConnectCallback(ac, on_connect);
    uv_timer_start(&c->conn_timer, lv__redis_on_conn_timer, c->connect_timeout_ms, 0);
}

static void on_gai(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct lv__redisconn *c = req->data;
    c->gai_busy = false;
    if (!*c->dying && !*c->closing && c->state == R_RESOLVING) {
        c->naddrs = 0;
        for (struct addrinfo *a = status == 0 ? res : NULL; a && c->naddrs < MAX_ADDRS;
             a = a->ai_next) {
            if (lv_addr_format_ip(a->ai_addr, c->addrs[c->naddrs], sizeof(c->addrs[0])) == 0)
                c->naddrs++;
        }
        if (c->naddrs > 0) {
            c->addr_idx = 0;
            connect_next(c);
        } else {
            char why[160];
            snprintf(why, sizeof(why), "cannot resolve: %s",
                     status ? uv_strerror(status) : "no address");
            went_down(c, why);
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    c->hooks->handle_closed(c);
}

void lv__redis_connect(struct lv__redisconn *c)
{
    c->addr_idx = 0;
    if (c->numeric) {
        struct sockaddr_storage ss;
        int rc = lv_addr_from_ip(c->host, c->port, &ss);
        assert(rc == 0); /* c->numeric says it is a literal */
        (void)rc;
        c->naddrs = 1;
        lv_addr_format_ip((struct sockaddr *)&ss, c->addrs[0], sizeof(c->addrs[0]));
        connect_next(c);
        return;
    }
    if (c->gai_busy) {
        /* The last lookup is still stuck in the thread pool. */
        went_down(c, "name lookup still pending");
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    c->gai.data = c;
    if (uv_getaddrinfo(c->loop, &c->gai, on_gai, c->host, NULL, &hints) != 0) {
        went_down(c, "cannot start a name lookup");
        return;
    }
    c->gai_busy = true;
    (*c->handles)++;
    c->state = R_RESOLVING;
    uv_timer_start(&c->conn_timer, lv__redis_on_conn_timer, c->connect_timeout_ms, 0);
}

void lv__redis_on_conn_timer(uv_timer_t *t)
{
    struct lv__redisconn *c = t->data;
    if (*c->closing) {
        c->hooks->closing_timer(c);
        return;
    }
    switch (c->state) {
    case R_DOWN:
        lv__redis_connect(c);
        break;
    case R_RESOLVING:
        /* on_gai will see the state changed and ignore the answer. */
        if (c->gai_busy)
            uv_cancel((uv_req_t *)&c->gai);
        went_down(c, "name lookup timed out");
        break;
    case R_CONNECTING:
        if (c->ac)
            lv__redis_drop(c, "connect timed out");
        else
            connect_next(c); /* the next address, after a failed one */
        break;
    case R_UP:
        break;
    }
}

void lv__redis_conn_stop(struct lv__redisconn *c)
{
    if (c->state != R_UP) {
        if (c->ac) { /* connecting: nothing was sent on it */
            redisAsyncContext *ac = c->ac;
            c->ac = NULL;
            redisAsyncFree(ac);
        }
        if (c->gai_busy)
            uv_cancel((uv_req_t *)&c->gai);
        c->state = R_DOWN;
    }
    uv_timer_stop(&c->conn_timer);
}

void lv__redis_conn_destroy(struct lv__redisconn *c, uv_close_cb closed)
{
    if (c->ac) {
        redisAsyncContext *ac = c->ac;
        c->ac = NULL;
        redisAsyncFree(ac);
    }
    if (c->gai_busy)
        uv_cancel((uv_req_t *)&c->gai);
    uv_close((uv_handle_t *)&c->conn_timer, closed);
}
