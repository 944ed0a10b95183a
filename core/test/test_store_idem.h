/*
 * test_store_idem.h: what the idempotency-store tests share (test_store_idem_memory.c,
 * test_store_idem_redis.c): recording callbacks, a loop runner with a deadline, a canned
 * response, and a crowd of duplicate clients. Functions are static inline so a test file that
 * uses only some of them still builds with -Werror.
 */
#ifndef LV_TEST_STORE_IDEM_H
#define LV_TEST_STORE_IDEM_H

#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "store/idem.h"
#include "t.h"

/* ---- helpers */

static uint64_t fake_ms;

static inline uint64_t fake_now(void *arg)
{
    (void)arg;
    return fake_ms;
}

static inline void fp_of(const char *body, uint8_t out[LV_IDEM_FP_LEN])
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

static inline void rec_reset(struct rec *rc)
{
    free(rc->head);
    free(rc->body);
    memset(rc, 0, sizeof(*rc));
}

static inline void on_rec(enum lv_idem_result r, const struct lv_idem_response *st,
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

static inline void on_wrec(bool changed, void *arg)
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

static inline void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_fired = 1;
}

/* Runs before the loop computes its poll timeout: stopping here never blocks. */
static inline void on_until(uv_prepare_t *p)
{
    if (*until_count >= until_want || guard_fired)
        uv_stop(p->loop);
}

static inline void on_closed(uv_handle_t *h)
{
    (void)h;
    closed++;
}

/* Runs the loop until *count reaches want or timeout_ms passes; true if reached. */
static inline bool run_until(uv_loop_t *loop, const int *count, int want, uint64_t timeout_ms)
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
static inline void ask(uv_loop_t *loop, struct lv_idem *s, const char *key, const uint8_t *fp,
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

static inline struct lv_idem_response resp201(void)
{
    return (struct lv_idem_response){201, HEAD, sizeof(HEAD) - 1, BODY, BODY_LEN};
}

static inline void check_replay(const struct rec *rc)
{
    T_CHECK_STR(lv_idem_result_name(rc->r), "replay");
    T_CHECK_INT(rc->status, 201);
    T_CHECK_INT(rc->head_len, sizeof(HEAD) - 1);
    T_CHECK_INT(rc->body_len, BODY_LEN);
    T_CHECK(rc->head && memcmp(rc->head, HEAD, sizeof(HEAD) - 1) == 0);
    T_CHECK(rc->body && memcmp(rc->body, BODY, BODY_LEN) == 0);
    T_CHECK(rc->lock == NULL);
}

static inline void finish(uv_loop_t *loop)
{
    uv_run(loop, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(loop), 0);
}

/* ---- fingerprint */

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

static inline void client_begin(struct client *c);

static inline void client_waited(bool changed, void *arg)
{
    struct client *c = arg;
    c->timeouts += !changed;
    client_begin(c);
}

static inline void on_upstream_close(uv_handle_t *h)
{
    struct client *c = h->data;
    (*c->done)++;
}

static inline void client_upstream_done(uv_timer_t *t)
{
    struct client *c = t->data;
    struct lv_idem_response resp = resp201();
    lv_idem_complete(c->lock, &resp, 60000);
    c->final = LV_IDEM_ACQUIRED;
    c->body_ok = true;
    uv_close((uv_handle_t *)&c->upstream, on_upstream_close);
}

static inline void client_result(enum lv_idem_result r, const struct lv_idem_response *st,
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

static inline void client_begin(struct client *c)
{
    c->begins++;
    lv_idem_begin(c->s, c->key, strlen(c->key), c->fp, 5000, client_result, c);
}

/* 51 identical requests at once over `stores` (round robin): one reaches the upstream, the
 * other 50 get the replay. */
static inline void duplicates_exactly_once(uv_loop_t *loop, struct lv_idem **stores, int nstores,
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

#endif
