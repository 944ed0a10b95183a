/*
 * The Redis store's connection (store/redis.h): one hiredis async context per store, on the
 * libuv loop. Names are resolved with uv_getaddrinfo and hiredis is given an IP; every address
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

bool lv__redis_can_send(struct rstore *s)
{
    return s->ac && !s->base.dying && s->state == R_UP &&
           !(s->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING));
}

/* A connection attempt is under way: new work waits for it rather than failing. */
bool lv__redis_connecting(struct rstore *s)
{
    return !s->base.dying && (s->state == R_RESOLVING || s->state == R_CONNECTING);
}

static void schedule_reconnect(struct rstore *s)
{
    s->state = R_DOWN;
    if (s->base.dying || s->base.closing)
        return;
    unsigned shift = s->failures < 20 ? s->failures : 20;
    uint64_t delay = s->o.backoff_min_ms << shift;
    if (delay > s->o.backoff_max_ms || delay < s->o.backoff_min_ms)
        delay = s->o.backoff_max_ms;
    /* Equal jitter: several gateways that lost the same Redis do not come back in step. */
    delay = delay / 2 + lv_rand_next(&s->rng) % (delay / 2 + 1);
    s->failures++;
    uv_timer_start(&s->conn_timer, lv__redis_on_conn_timer, delay, 0);
}

/* The attempt failed for good: what waited for it fails, and the store backs off. */
static void went_down(struct rstore *s, const char *why)
{
    if (!s->down_logged)
        lv_warn("idempotency: redis %s:%u: %s", s->host, s->port, why);
    s->down_logged = true;
    s->state = R_DOWN;
    struct lv_dlist *l = s->pending.next;
    while (l != &s->pending) {
        struct rop *op = lv__rop_of(l);
        l = l->next;
        if (op->unsent)
            lv__redis_fail_op(op);
    }
    schedule_reconnect(s);
}

/* One address failed: try the next one of this attempt (from a timer, as this may run inside
 * a hiredis callback), or give up. */
static void address_failed(struct rstore *s, const char *why)
{
    if (++s->addr_idx < s->naddrs) {
        s->state = R_CONNECTING;
        uv_timer_start(&s->conn_timer, lv__redis_on_conn_timer, 0, 0);
        return;
    }
    went_down(s, why);
}

/* Frees the connection from outside hiredis' callbacks: its pending commands are called back
 * with NULL, which makes their ops UNAVAILABLE. */
void lv__redis_drop(struct rstore *s, const char *why)
{
    redisAsyncContext *ac = s->ac;
    bool was_up = s->state == R_UP;
    s->ac = NULL;
    s->state = R_DOWN;
    if (ac)
        redisAsyncFree(ac);
    if (was_up)
        went_down(s, why);
    else
        address_failed(s, why);
}

static void on_connect(const redisAsyncContext *ac, int status)
{
    struct rstore *s = ac->data;
    if (s->ac != ac)
        return;
    if (status != REDIS_OK) {
        /* hiredis frees the context after this returns. */
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", s->addrs[s->addr_idx],
                 ac->errstr ? ac->errstr : "?");
        s->ac = NULL;
        address_failed(s, why);
        return;
    }
    uv_timer_stop(&s->conn_timer);
    s->state = R_UP;
    s->failures = 0;
    if (s->down_logged)
        lv_info("idempotency: redis %s:%u: connected", s->host, s->port);
    s->down_logged = false;
    lv__redis_flush_queued(s);
}

static void on_disconnect(const redisAsyncContext *ac, int status)
{
    struct rstore *s = ac->data;
    if (s->ac != ac)
        return;
    char why[160];
    snprintf(why, sizeof(why), "connection lost: %s", ac->errstr ? ac->errstr : "closed");
    s->ac = NULL;
    went_down(s, why);
}

/* Connects to addrs[addr_idx]. */
static void connect_next(struct rstore *s)
{
    const char *ip = s->addrs[s->addr_idx];
    redisAsyncContext *ac = redisAsyncConnect(ip, s->port);
    if (!ac) {
        went_down(s, "out of memory");
        return;
    }
    if (ac->err) {
        char why[160];
        snprintf(why, sizeof(why), "connect to %s failed: %s", ip, ac->errstr);
        redisAsyncFree(ac);
        address_failed(s, why);
        return;
    }
    if (!rpoll_attach(ac, s->base.loop)) {
        redisAsyncFree(ac);
        went_down(s, "cannot watch the socket");
        return;
    }
    ac->data = s;
    s->ac = ac;
    s->state = R_CONNECTING;
    redisAsyncSetDisconnectCallback(ac, on_disconnect);
    /* This also watches for writability, which is how the connect completes. */
    redisAsyncSetConnectCallback(ac, on_connect);
    uv_timer_start(&s->conn_timer, lv__redis_on_conn_timer, s->o.connect_timeout_ms, 0);
}

static void on_gai(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct rstore *s = req->data;
    s->gai_busy = false;
    if (!s->base.dying && !s->base.closing && s->state == R_RESOLVING) {
        s->naddrs = 0;
        for (struct addrinfo *a = status == 0 ? res : NULL; a && s->naddrs < MAX_ADDRS;
             a = a->ai_next) {
            if (lv_addr_format_ip(a->ai_addr, s->addrs[s->naddrs], sizeof(s->addrs[0])) == 0)
                s->naddrs++;
        }
        if (s->naddrs > 0) {
            s->addr_idx = 0;
            connect_next(s);
        } else {
            char why[160];
            snprintf(why, sizeof(why), "cannot resolve: %s",
                     status ? uv_strerror(status) : "no address");
            went_down(s, why);
        }
    }
    if (res)
        uv_freeaddrinfo(res);
    lv__idem_handle_closed(&s->base);
}

void lv__redis_connect(struct rstore *s)
{
    s->addr_idx = 0;
    if (s->numeric) {
        struct sockaddr_storage ss;
        int rc = lv_addr_from_ip(s->host, s->port, &ss);
        assert(rc == 0); /* s->numeric says it is a literal */
        (void)rc;
        s->naddrs = 1;
        lv_addr_format_ip((struct sockaddr *)&ss, s->addrs[0], sizeof(s->addrs[0]));
        connect_next(s);
        return;
    }
    if (s->gai_busy) {
        /* The last lookup is still stuck in the thread pool. */
        went_down(s, "name lookup still pending");
        return;
    }
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    s->gai.data = s;
    if (uv_getaddrinfo(s->base.loop, &s->gai, on_gai, s->host, NULL, &hints) != 0) {
        went_down(s, "cannot start a name lookup");
        return;
    }
    s->gai_busy = true;
    s->base.handles++;
    s->state = R_RESOLVING;
    uv_timer_start(&s->conn_timer, lv__redis_on_conn_timer, s->o.connect_timeout_ms, 0);
}

void lv__redis_on_conn_timer(uv_timer_t *t)
{
    struct rstore *s = t->data;
    if (s->base.closing) {
        lv__redis_closing_timer(s);
        return;
    }
    switch (s->state) {
    case R_DOWN:
        lv__redis_connect(s);
        break;
    case R_RESOLVING:
        /* on_gai will see the state changed and ignore the answer. */
        if (s->gai_busy)
            uv_cancel((uv_req_t *)&s->gai);
        went_down(s, "name lookup timed out");
        break;
    case R_CONNECTING:
        if (s->ac)
            lv__redis_drop(s, "connect timed out");
        else
            connect_next(s); /* the next address, after a failed one */
        break;
    case R_UP:
        break;
    }
}
