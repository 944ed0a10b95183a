/*
 * test_store_rate_redis: the Redis store of rate limits (store/ratelimit_redis.c) against a real
 * redis-server started here on a free loopback port: burst then refusal with its retry_after, a
 * steady rate, two gateways on two threads sharing a key, the server's clock (no local time is
 * sent), the server killed, restarted and paused, cancel and close with commands in flight.
 * Every test closes its store and checks uv_loop_close() == 0.
 */
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "store/ratelimit_redis.h"
#include "t.h"

#include "test_redis_server.h"
}

/* ---- loop helpers (per loop: the threads test runs two at once) */

static void on_guard(uv_timer_t *t)
{
    (void)t;
}

static void on_closed(uv_handle_t *h)
{
    *(int *)h->data = 1;
}

/* Runs the loop until *count >= want or timeout_ms passes; true if reached. */
static bool run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    uv_timer_t guard;
    int closed = 0;
    /* the guard is due at `end` exactly, so the loop never waits past it */
    uv_update_time(loop);
    uint64_t end = uv_now(loop) + timeout_ms;
    uv_timer_init(loop, &guard);
    guard.data = &closed;
    uv_timer_start(&guard, on_guard, timeout_ms, 0);
    while (*count < want) {
        uv_update_time(loop);
        if (uv_now(loop) >= end)
            break;
        uv_run(loop, UV_RUN_ONCE);
    }
    uv_close((uv_handle_t *)&guard, on_closed);
    while (!closed)
        uv_run(loop, UV_RUN_NOWAIT);
    return *count >= want;
}

/* Runs the loop until nothing is left, at most 10 s: a handle the store failed to close is
 * listed and fails the test instead of hanging it. */
static void finish(uv_loop_t *loop)
{
    uint64_t t0 = uv_hrtime();
    while (uv_run(loop, UV_RUN_NOWAIT) != 0 && uv_hrtime() - t0 < 10000000000ull)
        uv_sleep(1);
    if (uv_loop_alive(loop)) {
        fprintf(stderr, "finish: handles still open after 10 s:\n");
        uv_print_all_handles(loop, stderr);
        T_CHECK(!uv_loop_alive(loop));
        return;
    }
    T_CHECK_INT(uv_loop_close(loop), 0);
}

struct rec {
    int calls;
    struct lv_rate_answer a;
};

static void on_rec(void *arg, const struct lv_rate_answer *a)
{
    struct rec *r = arg;
    r->calls++;
    r->a = *a;
}

static struct lv_rate_redis *rstore(uv_loop_t *loop, const char *host, uint64_t timeout_ms)
{
    struct lv_rate_redis_opts o = {.command_timeout_ms = timeout_ms,
                                   .connect_timeout_ms = 300,
                                   .backoff_min_ms = 20,
                                   .backoff_max_ms = 200};
    return lv_rate_redis_new(loop, host, (uint16_t)redis_port, "t:", &o);
}

/* One check, waited for. */
static struct lv_rate_answer check(uv_loop_t *loop, struct lv_rate_redis *s, const char *route,
                                   const char *key, uint32_t rate, uint64_t per_us, uint32_t burst)
{
    struct rec r = {0};
    lv_rate_redis_check(s, route, key, strlen(key), rate, per_us, burst, on_rec, &r);
    T_CHECK_INT(r.calls, 0); /* never called from inside check */
    T_CHECK(run_until(loop, &r.calls, 1, 5000));
    T_CHECK_INT(r.calls, 1);
    return r.a;
}

static uint64_t ms_since(uint64_t t0)
{
    return (uv_hrtime() - t0) / 1000000;
}

T_TEST(rate_burst_then_refused)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis *s = rstore(&loop, "localhost", 1000); /* through uv_getaddrinfo */
    const uint64_t I = 10 * 1000000ULL;                         /* 1 per 10 s */
    /* burst 5: a new key passes 6 at once */
    for (uint32_t i = 0; i <= 5; i++) {
        struct lv_rate_answer a = check(&loop, s, "r1", "k", 1, I, 5);
        T_CHECK_INT(a.rc, 0);
        T_CHECK(a.allowed);
        T_CHECK_INT(a.retry_after_us, 0);
        T_CHECK_INT(a.remaining, 5 - i);
        T_CHECK(a.reset_us > i * I && a.reset_us <= (i + 1) * I);
    }
    T_CHECK(lv_rate_redis_connected(s));
    struct lv_rate_answer a = check(&loop, s, "r1", "k", 1, I, 5);
    T_CHECK_INT(a.rc, 0);
    T_CHECK(!a.allowed);
    T_CHECK_INT(a.remaining, 0);
    /* TAT = t0 + 6 I; retry_after = TAT - now - 5 I: just under I */
    T_CHECK(a.retry_after_us > I - 2000000 && a.retry_after_us <= I);
    T_CHECK(a.reset_us > 5 * I && a.reset_us <= 6 * I);
    /* another key, another route: their own state */
    a = check(&loop, s, "r1", "k2", 1, I, 5);
    T_CHECK(a.rc == 0 && a.allowed);
    a = check(&loop, s, "r2", "k", 1, I, 5);
    T_CHECK(a.rc == 0 && a.allowed);
    /* binary-safe keys: "a\0b" and "a\0c" differ */
    struct rec r1 = {0}, r2 = {0};
    lv_rate_redis_check(s, "r3", "a\0b", 3, 1, I, 0, on_rec, &r1);
    lv_rate_redis_check(s, "r3", "a\0c", 3, 1, I, 0, on_rec, &r2);
    T_CHECK(run_until(&loop, &r2.calls, 1, 5000));
    T_CHECK(r1.calls == 1 && r1.a.rc == 0 && r1.a.allowed);
    T_CHECK(r2.a.rc == 0 && r2.a.allowed);
    /* the key's layout and its expiry: prefix route ":" key, PX = TAT - now */
    redisContext *c = raw();
    redisReply *rp = redisCommand(c, "PTTL %s", "t:r1:k");
    T_CHECK(rp && rp->type == REDIS_REPLY_INTEGER && rp->integer > 50000 && rp->integer <= 60000);
    freeReplyObject(rp);
    rp = redisCommand(c, "PTTL %b", "t:r3:a\0b", (size_t)8);
    T_CHECK(rp && rp->type == REDIS_REPLY_INTEGER && rp->integer > 5000 && rp->integer <= 10000);
    freeReplyObject(rp);
    /* a garbage value is taken as a new key */
    freeReplyObject(redisCommand(c, "SET t:r4:g garbage"));
    a = check(&loop, s, "r4", "g", 1, I, 0);
    T_CHECK(a.rc == 0 && a.allowed);
    /* a value of the wrong type is an error reply: rc -1 */
    freeReplyObject(redisCommand(c, "LPUSH t:r4:l x"));
    a = check(&loop, s, "r4", "l", 1, I, 0);
    T_CHECK_INT(a.rc, -1);
    a = check(&loop, s, "r4", "g", 1, I, 0); /* and the connection is still good */
    T_CHECK(a.rc == 0 && !a.allowed);
    redisFree(c);
    lv_rate_redis_close(s);
    finish(&loop);
}

T_TEST(rate_steady)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis *s = rstore(&loop, "127.0.0.1", 1000);
    /* 100 per 100 ms: one per ms, with a burst of 20 (a loaded machine may stall the client
     * for a few ms, which the burst catches up). Back to back checks for ~300 ms. */
    int allowed = 0, total = 0;
    uint64_t t0 = uv_hrtime();
    while (ms_since(t0) < 300) {
        struct lv_rate_answer a = check(&loop, s, "steady", "k", 100, 100000, 20);
        T_CHECK_INT(a.rc, 0);
        if (a.rc != 0)
            break;
        total++;
        allowed += a.allowed;
        if (!a.allowed)
            T_CHECK(a.retry_after_us > 0 && a.retry_after_us <= 1000);
        else
            T_CHECK(a.remaining <= 20);
    }
    uint64_t ms = ms_since(t0);
    /* at most one per ms of the span plus the burst (and the first); at least a third when checks
     * are faster */
    T_CHECK(allowed <= (int)ms + 20 + 2);
    if (total > 2 * (int)ms)
        T_CHECK(allowed >= (int)ms / 3);
    fprintf(stderr, "  steady: %d allowed of %d in %llu ms\n", allowed, total,
            (unsigned long long)ms);
    lv_rate_redis_close(s);
    finish(&loop);
}

/* ---- two gateways on two threads, one key */

struct gw {
    int allowed, answered, failed;
    uint64_t ms;
};

struct pump {
    struct lv_rate_redis *s;
    struct gw *g;
    uint64_t t0, span_ms;
    int inflight;
};

static void pump_next(struct pump *p);

static void on_pump(void *arg, const struct lv_rate_answer *a)
{
    struct pump *p = arg;
    p->inflight--;
    p->g->answered++;
    if (a->rc != 0)
        p->g->failed++;
    else
        p->g->allowed += a->allowed;
    pump_next(p);
}

static void pump_next(struct pump *p)
{
    /* four in flight on the connection, until the span is over */
    while (p->inflight < 4 && ms_since(p->t0) < p->span_ms) {
        p->inflight++;
        lv_rate_redis_check(p->s, "shared", "k", 1, 50, 500000, 10, on_pump, p);
    }
}

static void *gateway(void *arg)
{
    struct gw *g = arg;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis *s = rstore(&loop, "127.0.0.1", 2000);
    struct pump p = {.s = s, .g = g, .t0 = uv_hrtime(), .span_ms = 400};
    pump_next(&p);
    int zero = 0;
    /* run until the span is over and the last answers are in */
    while (p.inflight > 0)
        run_until(&loop, &zero, 1, 50);
    g->ms = ms_since(p.t0);
    lv_rate_redis_close(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return NULL;
}

T_TEST(rate_two_gateways_share)
{
    /* 50 per 500 ms (I = 10 ms), burst 10: over ~400 ms at most 40 + 11 pass, together */
    struct gw g[2] = {{0}, {0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, gateway, &g[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    int allowed = g[0].allowed + g[1].allowed;
    uint64_t ms = g[0].ms > g[1].ms ? g[0].ms : g[1].ms;
    fprintf(stderr, "  two gateways: %d + %d allowed of %d + %d in %llu ms\n", g[0].allowed,
            g[1].allowed, g[0].answered, g[1].answered, (unsigned long long)ms);
    T_CHECK_INT(g[0].failed + g[1].failed, 0);
    T_CHECK(g[0].answered > 20 && g[1].answered > 20);
    T_CHECK(allowed <= (int)(ms / 10) + 11 + 1);
    T_CHECK(allowed >= 11 + 400 / 10 / 2); /* the burst, and the rate most of the time */
}

/* ---- the server's clock: exactly (script, "1", key, I, tau) is sent, no time */

T_TEST(rate_server_clock)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    redisContext *c = raw();
    freeReplyObject(redisCommand(c, "SCRIPT FLUSH"));
    freeReplyObject(redisCommand(c, "CONFIG SET slowlog-log-slower-than 0"));
    freeReplyObject(redisCommand(c, "SLOWLOG RESET"));
    struct lv_rate_redis *s = rstore(&loop, "127.0.0.1", 1000);
    /* I = ceil(1 s / 3) = 333334 us, tau = 2 I */
    struct lv_rate_answer a = check(&loop, s, "clock", "k", 3, 1000000, 2);
    T_CHECK(a.rc == 0 && a.allowed); /* after NOSCRIPT, sent whole */
    a = check(&loop, s, "clock", "k", 3, 1000000, 2);
    T_CHECK(a.rc == 0 && a.allowed);
    freeReplyObject(redisCommand(c, "CONFIG SET slowlog-log-slower-than 10000"));
    redisReply *r = redisCommand(c, "SLOWLOG GET 100");
    int evalsha = 0, eval = 0;
    for (size_t i = 0; r && r->type == REDIS_REPLY_ARRAY && i < r->elements; i++) {
        redisReply *e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 4)
            continue;
        redisReply *args = e->element[3];
        if (args->type != REDIS_REPLY_ARRAY || args->elements < 1)
            continue;
        const char *cmd = args->element[0]->str;
        bool is_sha = strcasecmp(cmd, "EVALSHA") == 0, is_eval = strcasecmp(cmd, "EVAL") == 0;
        if (!is_sha && !is_eval)
            continue;
        evalsha += is_sha;
        eval += is_eval;
        T_CHECK_INT(args->elements, 6);
        if (args->elements != 6)
            continue;
        T_CHECK_STR(args->element[2]->str, "1");
        T_CHECK_STR(args->element[3]->str, "t:clock:k");
        T_CHECK_STR(args->element[4]->str, "333334");
        T_CHECK_STR(args->element[5]->str, "666668");
    }
    freeReplyObject(r);
    T_CHECK_INT(evalsha, 2); /* the first answered NOSCRIPT */
    T_CHECK_INT(eval, 1);
    /* the stored TAT is in the server's time: TIME + (2 I - elapsed) */
    r = redisCommand(c, "TIME");
    long long now = atoll(r->element[0]->str) * 1000000 + atoll(r->element[1]->str);
    freeReplyObject(r);
    r = redisCommand(c, "GET t:clock:k");
    long long tat = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
    freeReplyObject(r);
    T_CHECK(tat > now && tat <= now + 2 * 333334);
    /* a TAT far in the (server's) future refuses whatever the local clock */
    char v[32];
    snprintf(v, sizeof(v), "%lld", now + 3600LL * 1000000);
    freeReplyObject(redisCommand(c, "SET t:clock:k %s", v));
    a = check(&loop, s, "clock", "k", 3, 1000000, 2);
    T_CHECK(a.rc == 0 && !a.allowed);
    T_CHECK(a.retry_after_us > 3500ULL * 1000000 && a.retry_after_us < 3600ULL * 1000000);
    redisFree(c);
    lv_rate_redis_close(s);
    finish(&loop);
}

/* ---- down, back, slow */

T_TEST(rate_down_and_back)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis *s = rstore(&loop, "127.0.0.1", 200);
    struct lv_rate_answer a = check(&loop, s, "db", "k", 100, 1000000, 0);
    T_CHECK(a.rc == 0 && a.allowed);

    redis_kill();
    /* the loss is noticed (or the command times out): rc -1 within the timeout */
    uint64_t t0 = uv_hrtime();
    a = check(&loop, s, "db", "k", 100, 1000000, 0);
    T_CHECK_INT(a.rc, -1);
    T_CHECK(ms_since(t0) < 200 + 100);
    /* while down: answered at once, asynchronously, nothing queued */
    t0 = uv_hrtime();
    struct rec r[50] = {{0}};
    int all = 0;
    for (int i = 0; i < 50; i++)
        lv_rate_redis_check(s, "db", "k", 1, 100, 1000000, 0, on_rec, &r[i]);
    for (int i = 0; i < 50; i++)
        T_CHECK_INT(r[i].calls, 0);
    struct rec last = {0};
    lv_rate_redis_check(s, "db", "k", 1, 100, 1000000, 0, on_rec, &last);
    T_CHECK(run_until(&loop, &last.calls, 1, 5000));
    for (int i = 0; i < 50; i++)
        all += r[i].calls == 1 && r[i].a.rc == -1;
    T_CHECK_INT(all, 50);
    T_CHECK_INT(last.a.rc, -1);
    T_CHECK(ms_since(t0) < 100);
    T_CHECK(!lv_rate_redis_connected(s));

    /* back: a check passes again after the backoff (at most 200 ms, jittered) */
    redis_start();
    t0 = uv_hrtime();
    bool ok = false;
    while (!ok && ms_since(t0) < 3000) {
        a = check(&loop, s, "db", "k2", 100, 1000000, 0);
        ok = a.rc == 0 && a.allowed;
        if (!ok) {
            int zero = 0;
            run_until(&loop, &zero, 1, 10);
        }
    }
    T_CHECK(ok);
    T_CHECK(ms_since(t0) < 1000);
    lv_rate_redis_close(s);
    finish(&loop);
}

T_TEST(rate_slow_server_times_out)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis *s = rstore(&loop, "127.0.0.1", 100);
    struct lv_rate_answer a = check(&loop, s, "slow", "k", 100, 1000000, 0);
    T_CHECK(a.rc == 0 && a.allowed);
    /* another client pauses every client's commands for 600 ms */
    redisContext *c = raw();
    redisReply *r = redisCommand(c, "CLIENT PAUSE 600 ALL");
    T_CHECK(r && r->type == REDIS_REPLY_STATUS);
    freeReplyObject(r);
    uint64_t t0 = uv_hrtime();
    a = check(&loop, s, "slow", "k", 100, 1000000, 0);
    uint64_t ms = ms_since(t0);
    T_CHECK_INT(a.rc, -1);
    T_CHECK(ms >= 90 && ms < 400);
    /* the connection was dropped: until it is back, answers come at once */
    t0 = uv_hrtime();
    a = check(&loop, s, "slow", "k", 100, 1000000, 0);
    T_CHECK(a.rc == -1 || ms_since(t0) < 400);
    freeReplyObject(redisCommand(c, "CLIENT UNPAUSE"));
    t0 = uv_hrtime();
    bool ok = false;
    while (!ok && ms_since(t0) < 3000) {
        a = check(&loop, s, "slow", "k", 100, 1000000, 0);
        ok = a.rc == 0;
        if (!ok) {
            int zero = 0;
            run_until(&loop, &zero, 1, 10);
        }
    }
    T_CHECK(ok);
    redisFree(c);
    lv_rate_redis_close(s);
    finish(&loop);
}

/* ---- cancel and close */

static void on_never(void *arg, const struct lv_rate_answer *a)
{
    (void)a;
    (*(int *)arg)++;
}

static void close_from_cb(void *arg, const struct lv_rate_answer *a)
{
    (void)a;
    lv_rate_redis_close(arg);
}

T_TEST(rate_cancel_and_close)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis *s = rstore(&loop, "127.0.0.1", 1000);
    int never = 0;
    /* queued while connecting, then cancelled */
    struct lv_rate_op *op = lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
    lv_rate_redis_cancel(op);
    struct lv_rate_answer a = check(&loop, s, "c", "k", 100, 1000000, 0);
    T_CHECK(a.rc == 0 && a.allowed);
    /* sent, then cancelled: the next answer on the same connection comes after its reply */
    for (int i = 0; i < 10; i++) {
        op = lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
        lv_rate_redis_cancel(op);
    }
    a = check(&loop, s, "c", "k", 100, 1000000, 0);
    T_CHECK_INT(a.rc, 0);
    T_CHECK_INT(never, 0);
    /* answered but not yet called back, then cancelled */
    redis_kill();
    a = check(&loop, s, "c", "k", 100, 1000000, 0); /* notices the loss */
    T_CHECK_INT(a.rc, -1);
    op = lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
    lv_rate_redis_cancel(op);
    a = check(&loop, s, "c", "k", 100, 1000000, 0);
    T_CHECK_INT(a.rc, -1);
    T_CHECK_INT(never, 0);
    redis_start();
    lv_rate_redis_close(s);
    finish(&loop);

    /* closed with commands in flight and answers not yet delivered: no callback, no leak */
    uv_loop_init(&loop);
    s = rstore(&loop, "127.0.0.1", 1000);
    a = check(&loop, s, "c", "k", 100, 1000000, 0);
    T_CHECK_INT(a.rc, 0);
    for (int i = 0; i < 10; i++)
        lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
    lv_rate_redis_close(s);
    finish(&loop);
    T_CHECK_INT(never, 0);

    /* closed while connecting, and while resolving */
    uv_loop_init(&loop);
    s = rstore(&loop, "127.0.0.1", 1000);
    lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
    lv_rate_redis_close(s);
    finish(&loop);
    uv_loop_init(&loop);
    s = rstore(&loop, "localhost", 1000);
    lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
    lv_rate_redis_close(s);
    finish(&loop);
    T_CHECK_INT(never, 0);

    /* closed from a callback, with more answers waiting to be delivered */
    uv_loop_init(&loop);
    s = rstore(&loop, "127.0.0.1", 1000);
    a = check(&loop, s, "c", "k", 100, 1000000, 0);
    lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, close_from_cb, s);
    for (int i = 0; i < 5; i++)
        lv_rate_redis_check(s, "c", "k", 1, 100, 1000000, 0, on_never, &never);
    finish(&loop);
    T_CHECK_INT(never, 0);
}

T_TEST(rate_overload)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_rate_redis_opts o = {.command_timeout_ms = 1000, .max_pending = 3};
    struct lv_rate_redis *s = lv_rate_redis_new(&loop, "127.0.0.1", (uint16_t)redis_port, "t:", &o);
    struct lv_rate_answer a = check(&loop, s, "o", "k", 1000, 1000000, 100);
    T_CHECK(a.rc == 0 && a.allowed);
    /* past max_pending waiting at once: rc -1 at once, the others answered */
    struct rec r[5] = {{0}};
    for (int i = 0; i < 5; i++)
        lv_rate_redis_check(s, "o", "k", 1, 1000, 1000000, 100, on_rec, &r[i]);
    T_CHECK(run_until(&loop, &r[2].calls, 1, 5000));
    T_CHECK(run_until(&loop, &r[4].calls, 1, 5000));
    for (int i = 0; i < 5; i++) {
        T_CHECK_INT(r[i].calls, 1);
        T_CHECK_INT(r[i].a.rc, i < 3 ? 0 : -1);
    }
    lv_rate_redis_close(s);
    finish(&loop);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    redis_port = free_port();
    redis_start();
    T_RUN(rate_burst_then_refused);
    T_RUN(rate_steady);
    T_RUN(rate_two_gateways_share);
    T_RUN(rate_server_clock);
    T_RUN(rate_down_and_back);
    T_RUN(rate_slow_server_times_out);
    T_RUN(rate_cancel_and_close);
    T_RUN(rate_overload);
    redis_kill();
    T_DONE();
}
