/*
 * test_store_idem_redis: the Redis store (store/redisstore.c) against a real redis-server
 * started here on a free loopback port: two stores act as two gateways; the server is killed,
 * paused and restarted mid-test; the last unref with commands in flight. Every test closes its
 * handles and checks uv_loop_close() == 0.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "store/idem.h"
#include "t.h"
#include "test_store_idem.h"

#include "test_redis_server.h"
}

static long long raw_int(redisContext *c, const char *fmt, const char *key)
{
    redisReply *r = redisCommand(c, fmt, key);
    long long v = r && r->type == REDIS_REPLY_INTEGER ? r->integer : -999;
    freeReplyObject(r);
    return v;
}

static bool raw_get_prefix(redisContext *c, const char *key, const char *want)
{
    redisReply *r = redisCommand(c, "GET %s", key);
    bool ok = r && r->type == REDIS_REPLY_STRING && r->len >= strlen(want) &&
              memcmp(r->str, want, strlen(want)) == 0;
    freeReplyObject(r);
    return ok;
}

static void raw_set(redisContext *c, const char *key, const char *v, size_t n)
{
    freeReplyObject(redisCommand(c, "SET %s %b", key, v, n));
}

static struct lv_idem *rstore(uv_loop_t *loop, const char *host, const char *prefix)
{
    struct lv_idem_redis_opts o = {.command_timeout_ms = 300,
                                   .connect_timeout_ms = 300,
                                   .backoff_min_ms = 20,
                                   .backoff_max_ms = 200};
    return lv_idem_redis_create(loop, host, (uint16_t)redis_port, prefix, &o);
}

T_TEST(redis_two_gateways_share_keys)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t1:");
    struct lv_idem *b = rstore(&loop, "localhost", "t1:"); /* through uv_getaddrinfo */
    redisContext *c = raw();
    uint8_t fa[32], fb[32];
    fp_of("a", fa);
    fp_of("b", fb);
    struct rec r1 = {0}, r2 = {0};

    ask(&loop, a, "k", fa, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    long long pttl = raw_int(c, "PTTL %s", "t1:k");
    T_CHECK(pttl > 0 && pttl <= 5000);
    T_CHECK(raw_get_prefix(c, "t1:k", "lv1 I "));
    ask(&loop, b, "k", fa, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "in-flight");
    ask(&loop, b, "k", fb, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "mismatch");
    ask(&loop, a, "k", fa, 5000, &r2); /* the same process sees it too */
    T_CHECK_STR(lv_idem_result_name(r2.r), "in-flight");

    /* b waits; a completes; b is told and gets the replay. */
    struct wrec w = {0};
    lv_idem_wait(b, "k", 1, 5000, on_wrec, &w);
    struct lv_idem_response resp = resp201();
    lv_idem_complete(r1.lock, &resp, 60000);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(w.changed);
    ask(&loop, b, "k", fa, 5000, &r2);
    check_replay(&r2);
    ask(&loop, a, "k", fa, 5000, &r2);
    check_replay(&r2);
    ask(&loop, b, "k", fb, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "mismatch");
    pttl = raw_int(c, "PTTL %s", "t1:k");
    T_CHECK(pttl > 5000 && pttl <= 60000);

    /* complete_notify: once told, the other gateway (another connection) sees the replay at
     * once; without it, nothing orders a's complete before b's begin. */
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof(key), "n%d", i);
        ask(&loop, a, key, fa, 5000, &r1);
        w = (struct wrec){0};
        lv_idem_complete_notify(r1.lock, &resp, 60000, on_wrec, &w);
        T_CHECK(run_until(&loop, &w.calls, 1, 5000));
        T_CHECK(w.changed);
        ask(&loop, b, key, fa, 5000, &r2);
        check_replay(&r2);
    }
    /* release_notify orders a's release before b's next begin the same way */
    for (int i = 0; i < 20; i++) {
        char key[16];
        snprintf(key, sizeof(key), "rn%d", i);
        ask(&loop, a, key, fa, 5000, &r1);
        w = (struct wrec){0};
        lv_idem_release_notify(r1.lock, on_wrec, &w);
        T_CHECK(run_until(&loop, &w.calls, 1, 5000));
        T_CHECK(w.changed);
        ask(&loop, b, key, fb, 5000, &r2);
        T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");
        lv_idem_release(r2.lock);
    }
    /* a lapsed lock: told false */
    ask(&loop, a, "lapsed", fa, 5000, &r1);
    T_CHECK_INT(raw_int(c, "DEL %s", "t1:lapsed"), 1);
    w = (struct wrec){0};
    lv_idem_complete_notify(r1.lock, &resp, 60000, on_wrec, &w);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(!w.changed);

    /* ttl 0: released, nothing stored (asked on the same connection, so after it) */
    ask(&loop, a, "k0", fa, 5000, &r1);
    lv_idem_complete(r1.lock, &resp, 0);
    ask(&loop, a, "k0", fb, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    lv_idem_release(r1.lock);

    struct lv_idem_stats st;
    lv_idem_stats(a, &st);
    T_CHECK_STR(st.kind, "redis");
    T_CHECK(st.connected);
    T_CHECK_INT(st.entries, 0);

    /* 51 duplicates over both gateways: the upstream sees one. */
    struct lv_idem *both[2] = {a, b};
    duplicates_exactly_once(&loop, both, 2, "dup");

    rec_reset(&r1);
    rec_reset(&r2);
    redisFree(c);
    lv_idem_destroy(a);
    lv_idem_destroy(b);
    finish(&loop);
}

T_TEST(redis_release_checks_token)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t2:");
    struct lv_idem *b = rstore(&loop, "127.0.0.1", "t2:");
    redisContext *c = raw();
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r1 = {0}, r2 = {0}, r3 = {0};

    ask(&loop, a, "k", fa, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    /* a's lease lapses (the key goes), and b takes the key. */
    T_CHECK_INT(raw_int(c, "DEL %s", "t2:k"), 1);
    ask(&loop, b, "k", fa, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");
    /* a's late release must not free b's lock; commands on one connection are in order, so
     * the next begin on a sees the state after the release. */
    lv_idem_release(r1.lock);
    ask(&loop, a, "k", fa, 5000, &r3);
    T_CHECK_STR(lv_idem_result_name(r3.r), "in-flight");
    /* nor may a stale complete overwrite it */
    T_CHECK_INT(raw_int(c, "DEL %s", "t2:j"), 0);
    ask(&loop, a, "j", fa, 5000, &r1);
    T_CHECK_INT(raw_int(c, "DEL %s", "t2:j"), 1);
    ask(&loop, b, "j", fa, 5000, &r3);
    T_CHECK_STR(lv_idem_result_name(r3.r), "acquired");
    struct lv_idem_response resp = resp201();
    lv_idem_complete(r1.lock, &resp, 60000);
    struct rec r4 = {0};
    ask(&loop, a, "j", fa, 5000, &r4);
    T_CHECK_STR(lv_idem_result_name(r4.r), "in-flight");
    lv_idem_release(r3.lock);

    /* b's own release works (a waiter on b's connection sees it, then a asks). */
    lv_idem_release(r2.lock);
    struct wrec w = {0};
    lv_idem_wait(b, "k", 1, 5000, on_wrec, &w);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(w.changed);
    ask(&loop, a, "k", fa, 5000, &r3);
    T_CHECK_STR(lv_idem_result_name(r3.r), "acquired");
    lv_idem_release(r3.lock);

    /* A begin cancelled after it took the lock gives it back. */
    lv_idem_cancel(lv_idem_begin(a, "c", 1, fa, 5000, on_rec, &r1));
    w = (struct wrec){0};
    lv_idem_wait(b, "c", 1, 5000, on_wrec, &w);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(w.changed);
    ask(&loop, b, "c", fa, 5000, &r3);
    T_CHECK_STR(lv_idem_result_name(r3.r), "acquired");
    lv_idem_release(r3.lock);

    rec_reset(&r1);
    rec_reset(&r2);
    rec_reset(&r3);
    rec_reset(&r4);
    redisFree(c);
    lv_idem_destroy(a);
    lv_idem_destroy(b);
    finish(&loop);
}

T_TEST(redis_garbage_values)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t3:");
    redisContext *c = raw();
    uint8_t fa[32];
    fp_of("a", fa);
    char hexfp[65];
    for (int i = 0; i < 32; i++)
        snprintf(hexfp + 2 * i, 3, "%02x", fa[i]);
    char v[512];
    const char *bad[] = {
        "garbage",
        "lv1 I ",
        "lv1 X %s 0123456789abcdef0123456789abcdef",
        "lv1 I %s 0123",                  /* short token */
        "lv1 D %s 200 99999\nA: b\r\nxy", /* head longer than the value */
        "lv1 D %s 2x0 0\n",
        "lv1 D %s 200 \n",
        "lv1 D %s 200 12345678901234567890\n",
        "lv1 D %s 099 0\n",
        "lv1 D %s 200 0",
    };
    struct rec r = {0};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int n = snprintf(v, sizeof(v), bad[i], hexfp);
        raw_set(c, "t3:g", v, (size_t)n);
        ask(&loop, a, "g", fa, 5000, &r);
        if (r.r != LV_IDEM_UNAVAILABLE)
            fprintf(stderr, "value %zu: %s\n", i, lv_idem_result_name(r.r));
        T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    }
    /* a hand-made well-formed value is read back exactly, empty head and body included */
    int n = snprintf(v, sizeof(v), "lv1 D %s 204 0\n", hexfp);
    raw_set(c, "t3:g", v, (size_t)n);
    ask(&loop, a, "g", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "replay");
    T_CHECK_INT(r.status, 204);
    T_CHECK_INT(r.head_len + r.body_len, 0);
    /* a key of another type answers an error: unavailable, not a crash */
    freeReplyObject(redisCommand(c, "DEL t3:h"));
    freeReplyObject(redisCommand(c, "HSET t3:h f v"));
    ask(&loop, a, "h", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    /* and the store keeps working */
    ask(&loop, a, "fresh", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "acquired");
    lv_idem_release(r.lock);
    rec_reset(&r);
    redisFree(c);
    lv_idem_destroy(a);
    finish(&loop);
}

static void retry_until_up(uv_timer_t *t);

struct prober {
    struct lv_idem *s;
    uint8_t fp[32];
    struct rec r;
    int done, tries;
    uv_timer_t timer;
};

static void on_probe(enum lv_idem_result r, const struct lv_idem_response *st,
                     struct lv_idem_lock *lock, void *arg)
{
    struct prober *p = arg;
    if (r == LV_IDEM_UNAVAILABLE) {
        uv_timer_start(&p->timer, retry_until_up, 20, 0);
        return;
    }
    on_rec(r, st, lock, &p->r);
    p->done = 1;
}

static void retry_until_up(uv_timer_t *t)
{
    struct prober *p = t->data;
    p->tries++;
    lv_idem_begin(p->s, "after", 5, p->fp, 5000, on_probe, p);
}

T_TEST(redis_down_and_back)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t4:");
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r = {0}, held = {0};
    ask(&loop, a, "k", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "acquired");
    ask(&loop, a, "held", fa, 5000, &held);

    struct lv_idem_lock *k_lock = r.lock;
    redis_kill();
    uint64_t t0 = uv_hrtime();
    ask(&loop, a, "k2", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    T_CHECK((uv_hrtime() - t0) / 1000000 < 1000);
    /* Now known down: the next answer does not even wait for a round trip. */
    t0 = uv_hrtime();
    ask(&loop, a, "k3", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    T_CHECK((uv_hrtime() - t0) / 1000000 < 100);
    struct lv_idem_stats st;
    lv_idem_stats(a, &st);
    T_CHECK(!st.connected);
    T_CHECK_INT(st.entries, 2); /* locks taken before the outage */
    /* cannot reach Redis: ends the lock, says so; the lease frees the key */
    struct wrec wr = {0};
    lv_idem_release_notify(k_lock, on_wrec, &wr);
    lv_idem_stats(a, &st);
    T_CHECK_INT(st.entries, 1);
    T_CHECK(run_until(&loop, &wr.calls, 1, 1000));
    T_CHECK(!wr.changed);
    /* A waiter is told to ask again, and hears UNAVAILABLE. */
    struct wrec w = {0};
    lv_idem_wait(a, "k", 1, 5000, on_wrec, &w);
    T_CHECK(run_until(&loop, &w.calls, 1, 1000));
    T_CHECK(w.changed);
    /* Outcomes of locks taken before the outage end them without trouble. */
    struct lv_idem_response resp = resp201();
    lv_idem_complete(held.lock, &resp, 60000);

    redis_start(); /* same port */
    struct prober p = {.s = a};
    memcpy(p.fp, fa, 32);
    uv_timer_init(&loop, &p.timer);
    p.timer.data = &p;
    uv_timer_start(&p.timer, retry_until_up, 0, 0);
    T_CHECK(run_until(&loop, &p.done, 1, 5000));
    T_CHECK_STR(lv_idem_result_name(p.r.r), "acquired");
    lv_idem_stats(a, &st);
    T_CHECK(st.connected);
    lv_idem_release(p.r.lock);
    uv_close((uv_handle_t *)&p.timer, NULL);
    rec_reset(&p.r);
    rec_reset(&r);
    rec_reset(&held);
    lv_idem_destroy(a);
    finish(&loop);
}

T_TEST(redis_stuck_server_times_out)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t5:");
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r = {0}, r2 = {0};
    ask(&loop, a, "k", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "acquired");
    lv_idem_release(r.lock);

    struct rec held = {0};
    ask(&loop, a, "held", fa, 5000, &held);
    kill(redis_pid, SIGSTOP); /* accepts bytes, answers nothing */
    uint64_t t0 = uv_hrtime();
    rec_reset(&r);
    struct wrec w = {0};
    struct lv_idem_response resp = resp201();
    lv_idem_complete_notify(held.lock, &resp, 60000, on_wrec, &w);
    lv_idem_begin(a, "k", 1, fa, 5000, on_rec, &r);
    lv_idem_begin(a, "k2", 2, fa, 5000, on_rec, &r2);
    T_CHECK(run_until(&loop, &r2.calls, 1, 3000));
    T_CHECK(run_until(&loop, &w.calls, 1, 100));
    T_CHECK(!w.changed);
    rec_reset(&held);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    T_CHECK_STR(lv_idem_result_name(r2.r), "unavailable");
    T_CHECK(ms >= 250 && ms < 1000); /* command_timeout is 300 ms */

    kill(redis_pid, SIGCONT);
    struct prober p = {.s = a};
    memcpy(p.fp, fa, 32);
    uv_timer_init(&loop, &p.timer);
    p.timer.data = &p;
    uv_timer_start(&p.timer, retry_until_up, 0, 0);
    T_CHECK(run_until(&loop, &p.done, 1, 5000));
    T_CHECK_STR(lv_idem_result_name(p.r.r), "acquired");
    lv_idem_release(p.r.lock);
    uv_close((uv_handle_t *)&p.timer, NULL);
    rec_reset(&p.r);
    rec_reset(&r);
    rec_reset(&r2);
    lv_idem_destroy(a);
    finish(&loop);
}

T_TEST(redis_refused_and_destroy_pending)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* Nobody listens there: the refusal is seen at once, not at the 3 s deadlines. */
    struct lv_idem_redis_opts o = {.command_timeout_ms = 3000, .connect_timeout_ms = 3000};
    struct lv_idem *d = lv_idem_redis_create(&loop, "127.0.0.1", (uint16_t)free_port(), "x:", &o);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r = {0};
    uint64_t t0 = uv_hrtime();
    ask(&loop, d, "k", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    T_CHECK((uv_hrtime() - t0) / 1000000 < 500);
    struct lv_idem_stats st;
    lv_idem_stats(d, &st);
    T_CHECK(!st.connected);
    lv_idem_destroy(d);
    o.command_timeout_ms = o.connect_timeout_ms = 300;

    /* An unresolvable name: unavailable, bounded, and destroy with the lookup pending. */
    d = lv_idem_redis_create(&loop, "no-such-host.invalid", 6379, "x:", &o);
    ask(&loop, d, "k", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    lv_idem_destroy(d);

    /* Destroyed with commands in flight: their callbacks never run. */
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t6:");
    ask(&loop, a, "warm", fa, 5000, &r);
    lv_idem_release(r.lock);
    rec_reset(&r);
    lv_idem_begin(a, "k", 1, fa, 5000, on_rec, &r);
    lv_idem_wait(a, "k", 1, 5000, on_wrec, &(struct wrec){0});
    lv_idem_destroy(a);
    finish(&loop);
    T_CHECK_INT(r.calls, 0);
    rec_reset(&r);
}

/* ---- the last unref with commands in flight */

/* At the last unref: a complete sent just before still reaches Redis, a lookup in flight is
 * answered UNAVAILABLE and the lock it got is given back, a waiter is answered "not changed",
 * and a lock ended after the unref is still released (its notify answered from the reply).
 * Then the store closes and frees itself (loop closes empty; ASan checks the rest). */
T_TEST(redis_last_unref_in_flight)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t7:");
    redisContext *c = raw();
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec held = {0}, done = {0}, pend = {0};
    ask(&loop, a, "held", fa, 5000, &held);
    ask(&loop, a, "done", fa, 5000, &done);
    T_CHECK_STR(lv_idem_result_name(held.r), "acquired");
    T_CHECK_STR(lv_idem_result_name(done.r), "acquired");

    struct lv_idem_response resp = resp201();
    struct wrec w = {0}, rel = {0};
    lv_idem_complete(done.lock, &resp, 60000); /* sent, reply outstanding */
    lv_idem_begin(a, "pend", 4, fa, 5000, on_rec, &pend);
    lv_idem_wait(a, "held", 4, 60000, on_wrec, &w);
    lv_idem_unref(a);
    lv_idem_release_notify(held.lock, on_wrec, &rel);
    T_CHECK(run_until(&loop, &pend.calls, 1, 2000));
    T_CHECK(run_until(&loop, &w.calls, 1, 2000));
    T_CHECK(run_until(&loop, &rel.calls, 1, 2000));
    T_CHECK_STR(lv_idem_result_name(pend.r), "unavailable");
    T_CHECK(pend.lock == NULL);
    T_CHECK(!w.changed);
    T_CHECK(rel.changed);
    finish(&loop);

    T_CHECK(raw_get_prefix(c, "t7:done", "lv1 D "));
    T_CHECK_INT(raw_int(c, "EXISTS %s", "t7:held"), 0);
    T_CHECK_INT(raw_int(c, "EXISTS %s", "t7:pend"), 0); /* its lock was given back */
    redisFree(c);
    rec_reset(&held);
    rec_reset(&done);
    rec_reset(&pend);
}

/* A server that answers nothing: the close waits command_timeout_ms for the replies, answers
 * the notify "not stored", and frees everything. */
T_TEST(redis_last_unref_server_stuck)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *a = rstore(&loop, "127.0.0.1", "t8:");
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec held = {0};
    ask(&loop, a, "held", fa, 5000, &held);
    T_CHECK_STR(lv_idem_result_name(held.r), "acquired");
    kill(redis_pid, SIGSTOP);
    uint64_t t0 = uv_hrtime();
    struct wrec w = {0};
    struct lv_idem_response resp = resp201();
    lv_idem_complete_notify(held.lock, &resp, 60000, on_wrec, &w);
    lv_idem_unref(a);
    T_CHECK(run_until(&loop, &w.calls, 1, 3000));
    T_CHECK(!w.changed);
    uint64_t ms = (uv_hrtime() - t0) / 1000000;
    T_CHECK(ms >= 250 && ms < 1500); /* command_timeout is 300 ms */
    finish(&loop);
    kill(redis_pid, SIGCONT);
    rec_reset(&held);
}

/* The last unref while the store has no connection (refused, backing off): at once. */
T_TEST(redis_last_unref_while_down)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem_redis_opts o = {.command_timeout_ms = 300, .connect_timeout_ms = 300};
    struct lv_idem *d = lv_idem_redis_create(&loop, "127.0.0.1", (uint16_t)free_port(), "x:", &o);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r = {0};
    ask(&loop, d, "k", fa, 5000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "unavailable");
    uint64_t t0 = uv_hrtime();
    lv_idem_unref(d);
    finish(&loop);
    T_CHECK((uv_hrtime() - t0) / 1000000 < 250);

    /* And during a name lookup. */
    uv_loop_init(&loop);
    d = lv_idem_redis_create(&loop, "localhost", (uint16_t)redis_port, "x:", &o);
    lv_idem_unref(d);
    finish(&loop);
    rec_reset(&r);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    redis_port = free_port();
    redis_start();
    T_RUN(redis_two_gateways_share_keys);
    T_RUN(redis_release_checks_token);
    T_RUN(redis_garbage_values);
    T_RUN(redis_stuck_server_times_out);
    T_RUN(redis_down_and_back);
    T_RUN(redis_refused_and_destroy_pending);
    T_RUN(redis_last_unref_in_flight);
    T_RUN(redis_last_unref_server_stuck);
    T_RUN(redis_last_unref_while_down);
    redis_kill();
    T_DONE();
}
