/*
 * The Redis store of rate limits (store/ratelimit_redis.h), on the project's Redis connection
 * (store/redisconn.c). Checks are pipelined on the one connection; each has a deadline,
 * watched by `tick` while any is pending; answers are delivered from `post` (a 0 ms timer), so
 * no callback ever runs inside lv_rate_redis_check or inside hiredis. hiredis 0.14 must never
 * be freed from inside one of its callbacks: the connection is dropped from `tick` or close.
 */
#include <assert.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/list.h"
#include "base/log.h"
#include "store/ratelimit_redis.h"
#include "store/redis.h"

#define TICK_MAX_MS 25

/* Redis 7 replicates a script's effects, so TIME inside it is allowed. Lua numbers are doubles:
 * microseconds since the epoch fit exactly (< 2^53), and the TAT is written with %.0f. */
const char lv_rate_redis_script[] =
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local interval = tonumber(ARGV[1])\n"
    "local tolerance = tonumber(ARGV[2])\n"
    "local tat = tonumber(redis.call('GET', KEYS[1]))\n"
    "if not tat or tat < now then tat = now end\n"
    "if tat - now > tolerance then\n"
    "  return {0, tat - now - tolerance, tat - now, 0}\n"
    "end\n"
    "local newtat = tat + interval\n"
    "local debt = newtat - now\n"
    "redis.call('SET', KEYS[1], string.format('%.0f', newtat), 'PX', math.ceil(debt / 1000))\n"
    "local remaining = 0\n"
    "if debt <= tolerance then remaining = math.floor((tolerance - debt) / interval) + 1 end\n"
    "return {1, 0, debt, remaining}\n";

struct lv_rate_redis {
    struct lv__redisconn c;
    uv_loop_t *loop;
    struct lv_rate_redis_opts o;
    char *prefix;
    size_t plen;
    char sha[41];
    uv_timer_t tick;         /* deadlines, while anything is pending */
    uv_timer_t post;         /* delivers `ready` */
    struct lv_dlist pending; /* queued until connected (unsent), or awaiting a reply */
    struct lv_dlist ready;   /* answered, to be called back */
    unsigned npending;
    unsigned outstanding; /* commands handed to hiredis and not yet called back */
    unsigned handles;     /* open handles and requests; freed at 0 once closed */
    bool dying;           /* closed: nothing is called back any more */
    bool closing;         /* never set: close is immediate (the connection reads it) */
    bool err_logged;
};

struct rrcmd {
    struct lv_rate_redis *s;
    struct lv_rate_op *op; /* NULL once cancelled or timed out */
};

struct lv_rate_op {
    struct lv_rate_redis *s;
    struct lv_dlist link; /* pending or ready */
    struct rrcmd *cmd;    /* sent and not answered */
    bool unsent;          /* queued until connected */
    bool is_ready;
    uint64_t deadline;
    lv_rate_cb cb;
    void *arg;
    struct lv_rate_answer a;
    char interval[24], tolerance[24];
    size_t klen;
    char key[]; /* prefix + route + ":" + key */
};

static struct lv_rate_redis *of_conn(struct lv__redisconn *c)
{
    return (struct lv_rate_redis *)(void *)((char *)c - offsetof(struct lv_rate_redis, c));
}

static struct lv_rate_op *op_of(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct lv_rate_op, link);
}

static void maybe_free(struct lv_rate_redis *s)
{
    if (s->dying && s->handles == 0 && s->outstanding == 0) {
        free(s->c.host);
        free(s->prefix);
        free(s);
    }
}

static void on_post(uv_timer_t *t)
{
    struct lv_rate_redis *s = t->data;
    while (!s->dying && !lv_dlist_empty(&s->ready)) {
        struct lv_rate_op *op = op_of(s->ready.next);
        lv_dlist_remove(&op->link);
        struct lv_rate_answer a = op->a;
        lv_rate_cb cb = op->cb;
        void *arg = op->arg;
        free(op);
        cb(arg, &a);
    }
}

/* Answers a pending (or new) op: it leaves `pending` and is called back from `post`. */
static void answer(struct lv_rate_op *op, const struct lv_rate_answer *a)
{
    struct lv_rate_redis *s = op->s;
    if (op->cmd)
        op->cmd->op = NULL;
    op->cmd = NULL;
    if (!lv_dlist_empty(&op->link)) {
        lv_dlist_remove(&op->link);
        s->npending--;
    }
    op->unsent = false;
    op->is_ready = true;
    op->a = *a;
    lv_dlist_append(&s->ready, &op->link);
    if (!uv_is_active((uv_handle_t *)&s->post))
        uv_timer_start(&s->post, on_post, 0, 0);
}

static void fail(struct lv_rate_op *op)
{
    struct lv_rate_answer a = {.rc = -1};
    answer(op, &a);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static bool send_op(struct lv_rate_redis *s, struct lv_rate_op *op, bool eval)
{
    if (!lv__redis_can_send(&s->c))
        return false;
    struct rrcmd *cmd = lv_xcalloc(1, sizeof(*cmd));
    cmd->s = s;
    cmd->op = op;
    const char *argv[] = {eval ? "EVAL" : "EVALSHA",
                          eval ? lv_rate_redis_script : s->sha,
                          "1",
                          op->key,
                          op->interval,
                          op->tolerance};
    const size_t lens[] = {eval ? 4 : 7,
                           eval ? sizeof(lv_rate_redis_script) - 1 : 40,
                           1,
                           op->klen,
                           strlen(op->interval),
                           strlen(op->tolerance)};
    if (redisAsyncCommandArgv(s->c.ac, on_reply, cmd, 6, argv, lens) != REDIS_OK) {
        free(cmd);
        return false;
    }
    s->outstanding++;
    op->cmd = cmd;
    op->unsent = false;
    return true;
}

static bool reply_int(const redisReply *r, size_t i, long long *v)
{
    if (r->elements <= i || !r->element[i] || r->element[i]->type != REDIS_REPLY_INTEGER)
        return false;
    *v = r->element[i]->integer;
    return true;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    (void)ac;
    struct rrcmd *cmd = privdata;
    struct lv_rate_redis *s = cmd->s;
    struct lv_rate_op *op = cmd->op;
    const redisReply *r = reply;
    assert(s->outstanding > 0);
    s->outstanding--;
    free(cmd);
    if (s->dying) {
        maybe_free(s);
        return;
    }
    if (!op)
        return;
    op->cmd = NULL;
    if (r && r->type == REDIS_REPLY_ERROR && r->str && strncmp(r->str, "NOSCRIPT", 8) == 0) {
        /* The server does not have the script (yet): send it whole, which also caches it. */
        if (!send_op(s, op, true))
            fail(op);
        return;
    }
    long long v[4];
    if (r && r->type == REDIS_REPLY_ARRAY && reply_int(r, 0, &v[0]) && reply_int(r, 1, &v[1]) &&
        reply_int(r, 2, &v[2]) && reply_int(r, 3, &v[3]) && v[1] >= 0 && v[2] >= 0 && v[3] >= 0) {
        s->err_logged = false;
        struct lv_rate_answer a = {
            .rc = 0,
            .allowed = v[0] == 1,
            .retry_after_us = (uint64_t)v[1],
            .reset_us = (uint64_t)v[2],
            .remaining = v[3] > UINT32_MAX ? UINT32_MAX : (uint32_t)v[3],
        };
        answer(op, &a);
        return;
    }
    if (r && !s->err_logged) {
        s->err_logged = true;
        if (r->type == REDIS_REPLY_ERROR)
            lv_warn("rate limit: redis %s:%u: %.*s", s->c.host, s->c.port, (int)r->len,
                    r->str ? r->str : "");
        else
            lv_warn("rate limit: redis %s:%u: unexpected reply (type %d)", s->c.host, s->c.port,
                    r->type);
    }
    fail(op);
}

static void on_tick(uv_timer_t *t)
{
    struct lv_rate_redis *s = t->data;
    uint64_t now = uv_now(s->loop);
    bool stuck = false;
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->pending)
    {
        struct lv_rate_op *op = op_of(l);
        if (op->deadline > now)
            continue;
        /* A reply overdue means the connection is stuck; a queued op waited too long for a
         * connection attempt that has its own deadline. */
        stuck = stuck || !op->unsent;
        fail(op);
    }
    if (stuck && s->c.ac && s->c.state == R_UP)
        lv__redis_drop(&s->c, "command timed out");
    if (lv_dlist_empty(&s->pending))
        uv_timer_stop(&s->tick);
}

static void ensure_tick(struct lv_rate_redis *s)
{
    if (!uv_is_active((uv_handle_t *)&s->tick)) {
        uint64_t period = s->o.command_timeout_ms / 4;
        if (period > TICK_MAX_MS)
            period = TICK_MAX_MS;
        if (period == 0)
            period = 1;
        uv_timer_start(&s->tick, on_tick, period, period);
    }
}

/* ---- the connection's hooks */

static void conn_up(struct lv__redisconn *c)
{
    struct lv_rate_redis *s = of_conn(c);
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->pending)
    {
        struct lv_rate_op *op = op_of(l);
        if (op->unsent && !send_op(s, op, false))
            fail(op);
    }
}

static void conn_down(struct lv__redisconn *c)
{
    struct lv_rate_redis *s = of_conn(c);
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->pending)
    {
        struct lv_rate_op *op = op_of(l);
        if (op->unsent)
            fail(op);
    }
}

static void conn_closing_timer(struct lv__redisconn *c)
{
    (void)c; /* never closing: close is immediate */
}

static void conn_handle_closed(struct lv__redisconn *c)
{
    struct lv_rate_redis *s = of_conn(c);
    s->handles--;
    maybe_free(s);
}

static const struct lv__redisconn_hooks conn_hooks = {
    .up = conn_up,
    .down = conn_down,
    .closing_timer = conn_closing_timer,
    .handle_closed = conn_handle_closed,
};

static void on_handle_close(uv_handle_t *h)
{
    struct lv_rate_redis *s = h->data;
    s->handles--;
    maybe_free(s);
}

static void on_conn_closed(uv_handle_t *h)
{
    conn_handle_closed(h->data);
}

/* ---- API */

struct lv_rate_redis *lv_rate_redis_new(uv_loop_t *loop, const char *host, uint16_t port,
                                        const char *prefix, const struct lv_rate_redis_opts *opts)
{
    struct lv_rate_redis *s = lv_xcalloc(1, sizeof(*s));
    s->loop = loop;
    if (opts)
        s->o = *opts;
    if (!s->o.command_timeout_ms)
        s->o.command_timeout_ms = 100;
    if (!s->o.connect_timeout_ms)
        s->o.connect_timeout_ms = 1000;
    if (!s->o.backoff_min_ms)
        s->o.backoff_min_ms = 50;
    if (!s->o.backoff_max_ms)
        s->o.backoff_max_ms = 2000;
    if (s->o.backoff_max_ms < s->o.backoff_min_ms)
        s->o.backoff_max_ms = s->o.backoff_min_ms;
    if (!s->o.max_pending)
        s->o.max_pending = 10000;
    s->prefix = lv_xstrdup(prefix ? prefix : "");
    s->plen = strlen(s->prefix);
    unsigned char d[SHA_DIGEST_LENGTH];
    SHA1((const unsigned char *)lv_rate_redis_script, sizeof(lv_rate_redis_script) - 1, d);
    for (int i = 0; i < SHA_DIGEST_LENGTH; i++)
        snprintf(s->sha + 2 * i, 3, "%02x", d[i]);
    lv_dlist_init(&s->pending);
    lv_dlist_init(&s->ready);
    uint64_t seed;
    if (RAND_bytes((unsigned char *)&seed, sizeof(seed)) != 1)
        seed = uv_hrtime() ^ (uint64_t)(uintptr_t)s;
    s->c.loop = loop;
    s->c.hooks = &conn_hooks;
    s->c.what = "rate limit";
    s->c.dying = &s->dying;
    s->c.closing = &s->closing;
    s->c.handles = &s->handles;
    s->c.connect_timeout_ms = s->o.connect_timeout_ms;
    s->c.backoff_min_ms = s->o.backoff_min_ms;
    s->c.backoff_max_ms = s->o.backoff_max_ms;
    lv__redis_conn_init(&s->c, host, port, seed);
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    uv_timer_init(loop, &s->post);
    s->post.data = s;
    s->handles += 2;
    lv__redis_connect(&s->c);
    return s;
}

struct lv_rate_op *lv_rate_redis_check(struct lv_rate_redis *s, const char *route, const char *key,
                                       size_t key_len, uint32_t rate, uint64_t per_us,
                                       uint32_t burst, lv_rate_cb cb, void *arg)
{
    assert(!s->dying);
    size_t rlen = strlen(route);
    size_t klen = s->plen + rlen + 1 + key_len;
    struct lv_rate_op *op = lv_xcalloc(1, sizeof(*op) + klen + 1);
    op->s = s;
    op->cb = cb;
    op->arg = arg;
    lv_dlist_init(&op->link);
    memcpy(op->key, s->prefix, s->plen);
    memcpy(op->key + s->plen, route, rlen);
    op->key[s->plen + rlen] = ':';
    memcpy(op->key + s->plen + rlen + 1, key, key_len);
    op->klen = klen;
    if (rate == 0)
        rate = 1;
    if (per_us == 0)
        per_us = 1;
    uint64_t interval = per_us / rate + (per_us % rate != 0);
    /* Both well inside a double's exact integers (2^53) once added to the epoch in us. */
    const uint64_t cap = 1ULL << 50;
    if (interval > cap)
        interval = cap;
    uint64_t tolerance = burst && interval > cap / burst ? cap : burst * interval;
    snprintf(op->interval, sizeof(op->interval), "%llu", (unsigned long long)interval);
    snprintf(op->tolerance, sizeof(op->tolerance), "%llu", (unsigned long long)tolerance);

    bool up = lv__redis_can_send(&s->c);
    if ((!up && !lv__redis_connecting(&s->c)) || s->npending >= s->o.max_pending) {
        /* Down and backing off, or overloaded: answered at once (from `post`). */
        fail(op);
        return op;
    }
    op->deadline = uv_now(s->loop) + s->o.command_timeout_ms;
    lv_dlist_append(&s->pending, &op->link);
    s->npending++;
    ensure_tick(s);
    if (!up)
        op->unsent = true; /* sent once connected, see conn_up */
    else if (!send_op(s, op, false))
        fail(op);
    return op;
}

void lv_rate_redis_cancel(struct lv_rate_op *op)
{
    struct lv_rate_redis *s = op->s;
    if (op->cmd)
        op->cmd->op = NULL;
    if (!lv_dlist_empty(&op->link)) {
        lv_dlist_remove(&op->link);
        if (!op->is_ready)
            s->npending--;
    }
    free(op);
}

bool lv_rate_redis_connected(const struct lv_rate_redis *s)
{
    return s->c.state == R_UP;
}

void lv_rate_redis_close(struct lv_rate_redis *s)
{
    struct lv_dlist *lists[] = {&s->pending, &s->ready};
    for (int i = 0; i < 2; i++) {
        while (!lv_dlist_empty(lists[i]))
            lv_rate_redis_cancel(op_of(lists[i]->next));
    }
    s->dying = true;
    /* Frees the hiredis context: its pending commands are called back with NULL (on_reply
     * sees `dying`); a name lookup is cancelled and reported through handle_closed. */
    lv__redis_conn_destroy(&s->c, on_conn_closed);
    uv_close((uv_handle_t *)&s->tick, on_handle_close);
    uv_close((uv_handle_t *)&s->post, on_handle_close);
}
