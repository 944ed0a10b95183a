/*
 * test_server_idem: the idempotency stores (store/idem.h). The fingerprint against an
 * independent SHA-256 and under random chunkings; the memory store's state machine on a fake
 * clock; the Redis store against a real redis-server started here on a free loopback port
 * (two stores act as two gateways; the server is killed, paused and restarted mid-test).
 * Every test closes its handles and checks uv_loop_close() == 0.
 */
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <openssl/evp.h>
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

/* ---- helpers */

static uint64_t fake_ms;

static uint64_t fake_now(void *arg)
{
    (void)arg;
    return fake_ms;
}

static void fp_of(const char *body, uint8_t out[LV_IDEM_FP_LEN])
{
    lv_idem_fingerprint("POST", 4, "/pay", 4, body, strlen(body), out);
}

/* What a begin callback saw. */
struct rec {
    int calls;
    enum lv_idem_result r;
    struct lv_idem_lock *lock;
    int status;
    char *head, *body;
    size_t head_len, body_len;
};

static void rec_reset(struct rec *rc)
{
    free(rc->head);
    free(rc->body);
    memset(rc, 0, sizeof(*rc));
}

static void on_rec(enum lv_idem_result r, const struct lv_idem_response *st,
                   struct lv_idem_lock *lock, void *arg)
{
    struct rec *rc = arg;
    rc->calls++;
    rc->r = r;
    rc->lock = lock;
    if (st) {
        rc->status = st->status;
        rc->head = malloc(st->head_len + 1);
        memcpy(rc->head, st->head, st->head_len);
        rc->head_len = st->head_len;
        rc->body = malloc(st->body_len + 1);
        if (st->body_len)
            memcpy(rc->body, st->body, st->body_len);
        rc->body_len = st->body_len;
    }
}

struct wrec {
    int calls;
    bool changed;
};

static void on_wrec(bool changed, void *arg)
{
    struct wrec *w = arg;
    w->calls++;
    w->changed = changed;
}

static uv_timer_t guard;
static uv_prepare_t until;
static int guard_fired, closed;
static const int *until_count;
static int until_want;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_fired = 1;
}

/* Runs before the loop computes its poll timeout: stopping here never blocks. */
static void on_until(uv_prepare_t *p)
{
    if (*until_count >= until_want || guard_fired)
        uv_stop(p->loop);
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
    closed++;
}

/* Runs the loop until *count reaches want or timeout_ms passes; true if reached. */
static bool run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
{
    guard_fired = closed = 0;
    until_count = count;
    until_want = want;
    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, on_guard, timeout_ms, 0);
    uv_prepare_init(loop, &until);
    uv_prepare_start(&until, on_until);
    while (*count < want && !guard_fired)
        uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&guard, on_closed);
    uv_close((uv_handle_t *)&until, on_closed);
    while (closed < 2)
        uv_run(loop, UV_RUN_NOWAIT);
    return *count >= want;
}

/* begin + wait for the callback. */
static void ask(uv_loop_t *loop, struct lv_idem *s, const char *key, const uint8_t *fp,
                uint64_t lease, struct rec *rc)
{
    rec_reset(rc);
    lv_idem_begin(s, key, strlen(key), fp, lease, on_rec, rc);
    T_CHECK_INT(rc->calls, 0); /* never called from inside begin */
    T_CHECK(run_until(loop, &rc->calls, 1, 5000));
    T_CHECK_INT(rc->calls, 1);
}

static const char HEAD[] = "Content-Type: application/json\r\nX-Req: 1\r\n";
static const char BODY[] = "{\"id\":\"ch_1\"}\0\r\n\xff binary";
#define BODY_LEN (sizeof(BODY) - 1)

static struct lv_idem_response resp201(void)
{
    return (struct lv_idem_response){201, HEAD, sizeof(HEAD) - 1, BODY, BODY_LEN};
}

static void check_replay(const struct rec *rc)
{
    T_CHECK_STR(lv_idem_result_name(rc->r), "replay");
    T_CHECK_INT(rc->status, 201);
    T_CHECK_INT(rc->head_len, sizeof(HEAD) - 1);
    T_CHECK_INT(rc->body_len, BODY_LEN);
    T_CHECK(rc->head && memcmp(rc->head, HEAD, sizeof(HEAD) - 1) == 0);
    T_CHECK(rc->body && memcmp(rc->body, BODY, BODY_LEN) == 0);
    T_CHECK(rc->lock == NULL);
}

static void finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(loop), 0);
}

/* ---- fingerprint */

static void sha256(EVP_MD_CTX *md, const void *p, size_t n, uint8_t out[32])
{
    unsigned int len = 0;
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
    EVP_DigestUpdate(md, p, n);
    EVP_DigestFinal_ex(md, out, &len);
}

/* The documented formula, computed independently. */
static void expected_fp(const char *m, const char *t, const void *body, size_t blen,
                        uint8_t out[32])
{
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    uint8_t buf[4096], head[32], bd[32];
    size_t n = 0, ml = strlen(m), tl = strlen(t);
    for (int i = 0; i < 8; i++)
        buf[n++] = (uint8_t)((uint64_t)ml >> (56 - 8 * i));
    memcpy(buf + n, m, ml);
    n += ml;
    for (int i = 0; i < 8; i++)
        buf[n++] = (uint8_t)((uint64_t)tl >> (56 - 8 * i));
    memcpy(buf + n, t, tl);
    n += tl;
    sha256(md, buf, n, head);
    sha256(md, body, blen, bd);
    n = 0;
    memcpy(buf, "levee-idem-1", 13);
    n = 13;
    memcpy(buf + n, head, 32);
    n += 32;
    buf[n++] = 0;
    memcpy(buf + n, bd, 32);
    n += 32;
    sha256(md, buf, n, out);
    EVP_MD_CTX_free(md);
}

T_TEST(fingerprint_streamed_equals_one_shot)
{
    srand(7);
    size_t sizes[] = {0, 1, 63, 64, 65, 1000, 100003};
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        size_t n = sizes[si];
        unsigned char *body = malloc(n + 1);
        for (size_t i = 0; i < n; i++)
            body[i] = (unsigned char)rand();
        uint8_t one[32], want[32];
        lv_idem_fingerprint("POST", 4, "/v1/pay?x=1", 11, body, n, one);
        expected_fp("POST", "/v1/pay?x=1", body, n, want);
        T_CHECK(memcmp(one, want, 32) == 0);
        for (int round = 0; round < 40; round++) {
            struct lv_idem_fp fp;
            lv_idem_fp_init(&fp, "POST", 4, "/v1/pay?x=1", 11);
            size_t off = 0;
            while (off < n) {
                size_t c = (size_t)rand() % (round % 2 ? 7 : 5000) + (round % 3 == 0 ? 0 : 1);
                if (c > n - off)
                    c = n - off;
                lv_idem_fp_update(&fp, body + off, c);
                off += c;
            }
            uint8_t got[32];
            lv_idem_fp_final(&fp, got);
            T_CHECK(fp.md == NULL);
            T_CHECK(memcmp(got, one, 32) == 0);
        }
        free(body);
    }
}

T_TEST(fingerprint_distinguishes)
{
    uint8_t a[32], b[32];
    lv_idem_fingerprint("POST", 4, "/a", 2, "bc", 2, a);
    lv_idem_fingerprint("POST", 4, "/ab", 3, "c", 1, b);
    T_CHECK(memcmp(a, b, 32) != 0);
    lv_idem_fingerprint("PATCH", 5, "/a", 2, "bc", 2, b);
    T_CHECK(memcmp(a, b, 32) != 0);
    lv_idem_fingerprint("POST", 4, "/a", 2, "bd", 2, b);
    T_CHECK(memcmp(a, b, 32) != 0);
    lv_idem_fingerprint("POST", 4, "/a", 2, "bc", 2, b);
    T_CHECK(memcmp(a, b, 32) == 0);
    /* The method/target framing: "PO" + "ST/a" is not "POST" + "/a". */
    lv_idem_fingerprint("PO", 2, "ST/a", 4, "bc", 2, b);
    T_CHECK(memcmp(a, b, 32) != 0);
    /* Abandoned before final: no leak (ASan). */
    struct lv_idem_fp fp;
    lv_idem_fp_init(&fp, "POST", 4, "/a", 2);
    lv_idem_fp_update(&fp, "x", 1);
    lv_idem_fp_dispose(&fp);
    lv_idem_fp_dispose(&fp);
}

/* ---- memory store */

static struct lv_idem *mem_store(uv_loop_t *loop, size_t cap)
{
    fake_ms = 1000000;
    struct lv_idem *s = lv_idem_memory_create(loop, cap);
    lv_idem_memory_set_clock(s, fake_now, NULL);
    return s;
}

T_TEST(memory_state_machine)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = mem_store(&loop, 0);
    uint8_t fa[32], fb[32];
    fp_of("a", fa);
    fp_of("b", fb);
    struct rec r1 = {0}, r2 = {0};

    ask(&loop, s, "k1", fa, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    T_CHECK(r1.lock != NULL);
    ask(&loop, s, "k1", fa, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "in-flight");
    T_CHECK(r2.lock == NULL);
    ask(&loop, s, "k1", fb, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "mismatch");
    ask(&loop, s, "k2", fb, 5000, &r2); /* other keys are independent */
    T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");
    lv_idem_release(r2.lock);

    struct lv_idem_stats st;
    lv_idem_stats(s, &st);
    T_CHECK_STR(st.kind, "memory");
    T_CHECK_INT(st.entries, 1);
    uint64_t inflight_bytes = st.bytes;
    T_CHECK(st.bytes > 2);

    struct lv_idem_response resp = resp201();
    lv_idem_complete(r1.lock, &resp, 60000);
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.bytes, inflight_bytes + sizeof(HEAD) - 1 + BODY_LEN);
    for (int i = 0; i < 3; i++) {
        ask(&loop, s, "k1", fa, 5000, &r2);
        check_replay(&r2);
    }
    ask(&loop, s, "k1", fb, 5000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "mismatch");

    /* Released: the key is free again, with any fingerprint. */
    ask(&loop, s, "k3", fa, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    lv_idem_release(r1.lock);
    ask(&loop, s, "k3", fb, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    /* complete with ttl 0 stores nothing */
    lv_idem_complete(r1.lock, &resp, 0);
    ask(&loop, s, "k3", fa, 5000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    lv_idem_release(r1.lock);
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.entries, 1);

    rec_reset(&r1);
    rec_reset(&r2);
    lv_idem_destroy(s);
    finish(&loop);
}

T_TEST(memory_lease_and_ttl_expiry)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = mem_store(&loop, 0);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r1 = {0}, r2 = {0};

    ask(&loop, s, "k", fa, 100, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    fake_ms += 99;
    ask(&loop, s, "k", fa, 100, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "in-flight");
    fake_ms += 1; /* the lease is over: a client that vanished does not lock the key */
    ask(&loop, s, "k", fa, 100, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");
    /* The first holder's late outcomes do not touch the second holder's lock. */
    struct lv_idem_response resp = resp201();
    lv_idem_complete(r1.lock, &resp, 60000);
    struct rec r3 = {0};
    ask(&loop, s, "k", fa, 100, &r3);
    T_CHECK_STR(lv_idem_result_name(r3.r), "in-flight");

    lv_idem_complete(r2.lock, &resp, 1000);
    fake_ms += 999;
    ask(&loop, s, "k", fa, 100, &r3);
    check_replay(&r3);
    fake_ms += 1;
    ask(&loop, s, "k", fa, 100, &r3);
    T_CHECK_STR(lv_idem_result_name(r3.r), "acquired");

    /* Lease over and nobody asks: the sweep drops it. */
    struct lv_idem_stats st;
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.entries, 1);
    fake_ms += 100;
    lv_idem_memory_sweep(s);
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.entries, 0);
    T_CHECK_INT(st.bytes, 0);
    lv_idem_release(r3.lock); /* gone already: a no-op */

    rec_reset(&r1);
    rec_reset(&r2);
    rec_reset(&r3);
    lv_idem_destroy(s);
    finish(&loop);
}

T_TEST(memory_cap_refuses_never_evicts)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    /* Learn the cost of one entry with a 4-byte key. */
    struct lv_idem *probe = mem_store(&loop, 0);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r = {0};
    ask(&loop, probe, "key0", fa, 1000, &r);
    struct lv_idem_stats st;
    lv_idem_stats(probe, &st);
    size_t one = st.bytes;
    lv_idem_release(r.lock);
    lv_idem_destroy(probe);

    struct lv_idem *s = mem_store(&loop, 3 * one + one / 2);
    struct rec held[3] = {{0}};
    char key[8];
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        ask(&loop, s, key, fa, 1000 + 1000 * (uint64_t)i, &held[i]);
        T_CHECK_STR(lv_idem_result_name(held[i].r), "acquired");
    }
    ask(&loop, s, "key3", fa, 1000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "full");
    T_CHECK(r.lock == NULL);
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.entries, 3);
    T_CHECK(st.bytes <= st.max_bytes);
    /* Existing keys still answer as before: nothing was evicted. */
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "key%d", i);
        ask(&loop, s, key, fa, 1000, &r);
        T_CHECK_STR(lv_idem_result_name(r.r), "in-flight");
    }
    /* key0's lease ends: its room is taken back for a new key, the others stay. */
    fake_ms += 1000;
    ask(&loop, s, "key3", fa, 1000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "acquired");
    struct rec r2 = {0};
    ask(&loop, s, "key1", fa, 1000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "in-flight");
    ask(&loop, s, "key4", fa, 1000, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "full");

    /* A response that does not fit is not stored; the key is released and its waiter
     * told. */
    struct wrec w = {0};
    lv_idem_wait(s, "key3", 4, 5000, on_wrec, &w);
    char *big = calloc(1, one);
    struct lv_idem_response resp = {200, "", 0, big, one};
    lv_idem_complete(r.lock, &resp, 60000);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(w.changed);
    ask(&loop, s, "key3", fa, 1000, &r);
    T_CHECK_STR(lv_idem_result_name(r.r), "acquired");
    lv_idem_release(r.lock);
    free(big);

    lv_idem_release(held[1].lock);
    lv_idem_release(held[2].lock);
    lv_idem_release(held[0].lock); /* lapsed and dropped already */
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.entries, 0);
    T_CHECK_INT(st.bytes, 0);
    for (int i = 0; i < 3; i++)
        rec_reset(&held[i]);
    rec_reset(&r);
    rec_reset(&r2);
    lv_idem_destroy(s);
    finish(&loop);
}

/* A client of the store in on_conflict = "wait" mode: begin; IN_FLIGHT -> wait -> begin. */
struct client {
    uv_loop_t *loop;
    struct lv_idem *s;
    const char *key;
    uint8_t fp[32];
    int *forwards, *done;
    enum lv_idem_result final;
    bool body_ok;
    struct lv_idem_lock *lock;
    uv_timer_t upstream; /* the forwarded request's latency */
    int begins;
    int timeouts; /* waits that ended without the key changing */
};

static void client_begin(struct client *c);

static void client_waited(bool changed, void *arg)
{
    struct client *c = arg;
    c->timeouts += !changed;
    client_begin(c);
}

static void on_upstream_close(uv_handle_t *h)
{
    struct client *c = h->data;
    (*c->done)++;
}

static void client_upstream_done(uv_timer_t *t)
{
    struct client *c = t->data;
    struct lv_idem_response resp = resp201();
    lv_idem_complete(c->lock, &resp, 60000);
    c->final = LV_IDEM_ACQUIRED;
    c->body_ok = true;
    uv_close((uv_handle_t *)&c->upstream, on_upstream_close);
}

static void client_result(enum lv_idem_result r, const struct lv_idem_response *st,
                          struct lv_idem_lock *lock, void *arg)
{
    struct client *c = arg;
    switch (r) {
    case LV_IDEM_ACQUIRED:
        (*c->forwards)++;
        c->lock = lock;
        uv_timer_init(c->loop, &c->upstream);
        c->upstream.data = c;
        uv_timer_start(&c->upstream, client_upstream_done, 30, 0);
        return;
    case LV_IDEM_IN_FLIGHT:
        lv_idem_wait(c->s, c->key, strlen(c->key), 5000, client_waited, c);
        return;
    default:
        c->final = r;
        c->body_ok = st && st->status == 201 && st->body_len == BODY_LEN &&
                     memcmp(st->body, BODY, BODY_LEN) == 0;
        (*c->done)++;
    }
}

static void client_begin(struct client *c)
{
    c->begins++;
    lv_idem_begin(c->s, c->key, strlen(c->key), c->fp, 5000, client_result, c);
}

/* 51 identical requests at once over `stores` (round robin): one reaches the upstream, the
 * other 50 get the replay. */
static void duplicates_exactly_once(uv_loop_t *loop, struct lv_idem **stores, int nstores,
                                    const char *key)
{
    enum { N = 51 };
    static struct client cs[N];
    int forwards = 0, done = 0;
    for (int i = 0; i < N; i++) {
        cs[i] = (struct client){.loop = loop,
                                .s = stores[i % nstores],
                                .key = key,
                                .forwards = &forwards,
                                .done = &done};
        fp_of("same body", cs[i].fp);
    }
    for (int i = 0; i < N; i++)
        client_begin(&cs[i]);
    T_CHECK(run_until(loop, &done, N, 10000));
    T_CHECK_INT(forwards, 1);
    int replays = 0, ok = 0, rebegins = 0, timeouts = 0;
    for (int i = 0; i < N; i++) {
        replays += cs[i].final == LV_IDEM_REPLAY;
        ok += cs[i].body_ok;
        rebegins += cs[i].begins > 1;
        timeouts += cs[i].timeouts;
    }
    T_CHECK_INT(timeouts, 0); /* woken by the completion, not by their own deadline */
    T_CHECK_INT(replays, N - 1);
    T_CHECK_INT(ok, N);
    T_CHECK_INT(rebegins, N - 1); /* they really waited, rather than racing in late */
}

T_TEST(memory_waiters)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = lv_idem_memory_create(&loop, 0); /* real clock */
    duplicates_exactly_once(&loop, &s, 1, "dup");
    lv_idem_destroy(s);
    finish(&loop);

    uv_loop_init(&loop);
    s = mem_store(&loop, 0);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r = {0};
    struct wrec w1 = {0}, w2 = {0}, w3 = {0};

    /* Woken by release. */
    ask(&loop, s, "k", fa, 1000, &r);
    lv_idem_wait(s, "k", 1, 5000, on_wrec, &w1);
    lv_idem_wait(s, "k", 1, 5000, on_wrec, &w2);
    struct lv_idem_op *cancelled = lv_idem_wait(s, "k", 1, 5000, on_wrec, &w3);
    lv_idem_cancel(cancelled);
    uv_run(&loop, UV_RUN_NOWAIT);
    T_CHECK_INT(w1.calls, 0);
    lv_idem_release(r.lock);
    T_CHECK_INT(w1.calls, 0); /* not from inside release */
    T_CHECK(run_until(&loop, &w2.calls, 1, 5000));
    T_CHECK_INT(w1.calls, 1);
    T_CHECK(w1.changed && w2.changed);
    T_CHECK_INT(w3.calls, 0);

    /* Woken by complete (the fake clock never moves: only the completion can wake them). */
    ask(&loop, s, "kc", fa, 1000, &r);
    w1 = (struct wrec){0};
    lv_idem_wait(s, "kc", 2, 5000, on_wrec, &w1);
    struct lv_idem_response done = resp201();
    lv_idem_complete(r.lock, &done, 60000);
    T_CHECK(run_until(&loop, &w1.calls, 1, 5000));
    T_CHECK(w1.changed);

    /* Woken by the lease ending. */
    ask(&loop, s, "k", fa, 1000, &r);
    w1 = (struct wrec){0};
    lv_idem_wait(s, "k", 1, 5000, on_wrec, &w1);
    fake_ms += 999;
    lv_idem_memory_sweep(s);
    uv_run(&loop, UV_RUN_NOWAIT);
    T_CHECK_INT(w1.calls, 0);
    fake_ms += 1;
    lv_idem_memory_sweep(s);
    T_CHECK(run_until(&loop, &w1.calls, 1, 5000));
    T_CHECK(w1.changed);
    lv_idem_release(r.lock);

    /* Timed out: changed = false. */
    ask(&loop, s, "k", fa, 10000, &r);
    w1 = (struct wrec){0};
    lv_idem_wait(s, "k", 1, 500, on_wrec, &w1);
    fake_ms += 499;
    lv_idem_memory_sweep(s);
    uv_run(&loop, UV_RUN_NOWAIT);
    T_CHECK_INT(w1.calls, 0);
    fake_ms += 1;
    lv_idem_memory_sweep(s);
    T_CHECK(run_until(&loop, &w1.calls, 1, 5000));
    T_CHECK(!w1.changed);

    /* Not in flight (done or absent): called back at once, changed. */
    struct lv_idem_response resp = resp201();
    lv_idem_complete(r.lock, &resp, 60000);
    w1 = (struct wrec){0};
    w2 = (struct wrec){0};
    lv_idem_wait(s, "k", 1, 500, on_wrec, &w1);
    lv_idem_wait(s, "absent", 6, 500, on_wrec, &w2);
    T_CHECK_INT(w1.calls + w2.calls, 0);
    T_CHECK(run_until(&loop, &w2.calls, 1, 5000));
    T_CHECK(w1.calls == 1 && w1.changed && w2.changed);

    /* Waiting on a store destroyed: dropped, never called. */
    ask(&loop, s, "k2", fa, 10000, &r);
    w1 = (struct wrec){0};
    lv_idem_wait(s, "k2", 2, 500, on_wrec, &w1);
    lv_idem_destroy(s);
    lv_idem_release(r.lock); /* after destroy: allowed, frees the lock */
    finish(&loop);
    T_CHECK_INT(w1.calls, 0);
    rec_reset(&r);
}

T_TEST(memory_complete_notify)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = mem_store(&loop, 0);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r1 = {0}, r2 = {0};
    struct wrec w = {0};
    struct lv_idem_response resp = resp201();

    ask(&loop, s, "k", fa, 1000, &r1);
    T_CHECK(lv_idem_complete_notify(r1.lock, &resp, 60000, on_wrec, &w) != NULL);
    T_CHECK_INT(w.calls, 0); /* not from inside */
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(w.changed);
    ask(&loop, s, "k", fa, 1000, &r2);
    check_replay(&r2);

    /* A lapsed lock stores nothing and says so. */
    ask(&loop, s, "j", fa, 100, &r1);
    fake_ms += 100;
    ask(&loop, s, "j", fa, 100, &r2);
    T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");
    w = (struct wrec){0};
    lv_idem_complete_notify(r1.lock, &resp, 60000, on_wrec, &w);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(!w.changed);
    /* ttl 0: released, not stored */
    w = (struct wrec){0};
    lv_idem_complete_notify(r2.lock, &resp, 0, on_wrec, &w);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(!w.changed);
    /* Cancelled: no callback, but the response is stored all the same. */
    ask(&loop, s, "c", fa, 1000, &r1);
    w = (struct wrec){0};
    lv_idem_cancel(lv_idem_complete_notify(r1.lock, &resp, 60000, on_wrec, &w));
    ask(&loop, s, "c", fa, 1000, &r2);
    check_replay(&r2);
    T_CHECK_INT(w.calls, 0);
    T_CHECK(lv_idem_complete_notify(NULL, &resp, 1, on_wrec, &w) == NULL);

    /* release_notify: confirmed, and the key is free */
    ask(&loop, s, "rel", fa, 1000, &r1);
    w = (struct wrec){0};
    T_CHECK(lv_idem_release_notify(r1.lock, on_wrec, &w) != NULL);
    T_CHECK_INT(w.calls, 0);
    T_CHECK(run_until(&loop, &w.calls, 1, 5000));
    T_CHECK(w.changed);
    ask(&loop, s, "rel", fa, 1000, &r1);
    T_CHECK_STR(lv_idem_result_name(r1.r), "acquired");
    w = (struct wrec){0};
    lv_idem_cancel(lv_idem_release_notify(r1.lock, on_wrec, &w));
    ask(&loop, s, "rel", fa, 1000, &r2); /* released all the same */
    T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");
    T_CHECK_INT(w.calls, 0);
    lv_idem_release(r2.lock);
    T_CHECK(lv_idem_release_notify(NULL, on_wrec, &w) == NULL);

    rec_reset(&r1);
    rec_reset(&r2);
    lv_idem_destroy(s);
    finish(&loop);
}

T_TEST(memory_cancel_and_destroy)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = mem_store(&loop, 0);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec r1 = {0}, r2 = {0};

    /* A cancelled begin never calls back and takes no lock. */
    lv_idem_cancel(lv_idem_begin(s, "k", 1, fa, 1000, on_rec, &r1));
    lv_idem_cancel(NULL);
    ask(&loop, s, "k", fa, 1000, &r2);
    T_CHECK_INT(r1.calls, 0);
    T_CHECK_STR(lv_idem_result_name(r2.r), "acquired");

    /* Destroy with pending begins and a held lock: callbacks dropped, the lock ends later. */
    rec_reset(&r1);
    lv_idem_begin(s, "x", 1, fa, 1000, on_rec, &r1);
    lv_idem_begin(s, "y", 1, fa, 1000, on_rec, &r1);
    lv_idem_destroy(s);
    uv_run(&loop, UV_RUN_DEFAULT);
    T_CHECK_INT(r1.calls, 0);
    struct lv_idem_response resp = resp201();
    lv_idem_complete(r2.lock, &resp, 1000); /* frees the store's last bit */
    finish(&loop);
    rec_reset(&r1);
    rec_reset(&r2);
}

/* A callback that destroys the store (REPLAY's response stays readable) and one that asks
 * again from inside a callback. */
struct reentry {
    struct lv_idem *s;
    uint8_t fp[32];
    int calls;
    bool body_ok;
    struct rec again;
};

static void destroy_in_cb(enum lv_idem_result r, const struct lv_idem_response *st,
                          struct lv_idem_lock *lock, void *arg)
{
    struct reentry *re = arg;
    re->calls++;
    lv_idem_destroy(re->s);
    re->body_ok =
        r == LV_IDEM_REPLAY && st->body_len == BODY_LEN && memcmp(st->body, BODY, BODY_LEN) == 0;
    lv_idem_begin(re->s, "z", 1, re->fp, 1000, on_rec, &re->again); /* dropped with it */
}

T_TEST(memory_reentrant_callbacks)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct reentry re = {0};
    re.s = mem_store(&loop, 0);
    fp_of("a", re.fp);
    struct rec r = {0}, other = {0};
    ask(&loop, re.s, "k", re.fp, 1000, &r);
    struct lv_idem_response resp = resp201();
    lv_idem_complete(r.lock, &resp, 60000);
    lv_idem_begin(re.s, "k", 1, re.fp, 1000, destroy_in_cb, &re);
    lv_idem_begin(re.s, "k", 1, re.fp, 1000, on_rec, &other); /* same batch, after */
    finish(&loop);
    T_CHECK_INT(re.calls, 1);
    T_CHECK(re.body_ok);
    T_CHECK_INT(re.again.calls, 0);
    T_CHECK_INT(other.calls, 0);
    rec_reset(&r);
}

/* Many keys with random leases and ttls: the table grows, and the expiry heap drops exactly the
 * entries that are due at each step, whatever order they were added in. */
T_TEST(memory_many_keys_expire_in_order)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = mem_store(&loop, 0);
    enum { N = 3000 };
    static uint64_t expiry[N];
    static struct rec rs[N];
    uint64_t t0 = fake_ms;
    uint8_t fa[32];
    fp_of("a", fa);
    srand(11);
    char key[16];
    for (int i = 0; i < N; i++) {
        snprintf(key, sizeof(key), "key-%d", i);
        memset(&rs[i], 0, sizeof(rs[i]));
        uint64_t lease = 1 + (uint64_t)(rand() % 5000);
        expiry[i] = t0 + lease;
        lv_idem_begin(s, key, strlen(key), fa, lease, on_rec, &rs[i]);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    struct lv_idem_response resp = {200, "A: b\r\n", 6, "ok", 2};
    int acquired = 0;
    for (int i = 0; i < N; i++) {
        acquired += rs[i].calls == 1 && rs[i].r == LV_IDEM_ACQUIRED;
        if (i % 3 == 0) { /* released */
            lv_idem_release(rs[i].lock);
            expiry[i] = 0;
        } else if (i % 3 == 1) { /* done with a ttl; the rest keep their lease */
            uint64_t ttl = 1 + (uint64_t)(rand() % 5000);
            lv_idem_complete(rs[i].lock, &resp, ttl);
            expiry[i] = t0 + ttl;
        }
    }
    T_CHECK_INT(acquired, N);
    int bad_steps = 0;
    for (uint64_t step = 0; step <= 5000; step += 125) {
        fake_ms = t0 + step;
        lv_idem_memory_sweep(s);
        struct lv_idem_stats st;
        lv_idem_stats(s, &st);
        uint64_t want = 0;
        for (int i = 0; i < N; i++)
            want += expiry[i] > fake_ms;
        bad_steps += st.entries != want;
    }
    T_CHECK_INT(bad_steps, 0);
    struct lv_idem_stats st;
    lv_idem_stats(s, &st);
    T_CHECK_INT(st.entries, 0);
    T_CHECK_INT(st.bytes, 0);
    for (int i = 2; i < N; i += 3)
        lv_idem_release(rs[i].lock); /* lapsed long ago: only ends the lock */
    for (int i = 0; i < N; i++)
        rec_reset(&rs[i]);
    lv_idem_destroy(s);
    finish(&loop);
}

/* ---- Redis store against a real redis-server */

static int redis_port;
static pid_t redis_pid;
static int redis_out = -1;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts redis-server on redis_port and returns once it logged that it accepts connections. */
static void redis_start(void)
{
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(1);
    }
    char port[16];
    snprintf(port, sizeof(port), "%d", redis_port);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", "/tmp", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    redis_pid = pid;
    redis_out = p[0];
    char log[8192];
    size_t n = 0;
    for (;;) {
        struct pollfd pf = {.fd = redis_out, .events = POLLIN};
        if (poll(&pf, 1, 10000) <= 0)
            break;
        ssize_t r = read(redis_out, log + n, sizeof(log) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        log[n] = 0;
        if (strstr(log, "Ready to accept connections"))
            return;
        if (n == sizeof(log) - 1)
            break;
    }
    log[n] = 0;
    fprintf(stderr, "test setup failed: redis-server did not start:\n%s\n", log);
    kill(pid, SIGKILL);
    exit(1);
}

static void redis_kill(void)
{
    if (redis_pid <= 0)
        return;
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = 0;
    close(redis_out);
    redis_out = -1;
}

/* A plain blocking client for looking behind the store's back. */
static redisContext *raw(void)
{
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    if (!c || c->err) {
        fprintf(stderr, "raw redis connect failed\n");
        exit(1);
    }
    return c;
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

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    T_RUN(fingerprint_streamed_equals_one_shot);
    T_RUN(fingerprint_distinguishes);
    T_RUN(memory_state_machine);
    T_RUN(memory_lease_and_ttl_expiry);
    T_RUN(memory_cap_refuses_never_evicts);
    T_RUN(memory_waiters);
    T_RUN(memory_complete_notify);
    T_RUN(memory_cancel_and_destroy);
    T_RUN(memory_reentrant_callbacks);
    T_RUN(memory_many_keys_expire_in_order);

    redis_port = free_port();
    redis_start();
    T_RUN(redis_two_gateways_share_keys);
    T_RUN(redis_release_checks_token);
    T_RUN(redis_garbage_values);
    T_RUN(redis_stuck_server_times_out);
    T_RUN(redis_down_and_back);
    T_RUN(redis_refused_and_destroy_pending);
    redis_kill();
    T_DONE();
}
