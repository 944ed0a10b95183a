/*
 * test_store_idem_memory: the request fingerprint (against an independent SHA-256 and under
 * random chunkings) and the memory store (store/memstore.c) on a fake clock: its state machine,
 * expiry, byte cap, waiters, notify forms, cancel, destroy and the last unref. Every test closes
 * its handles and checks uv_loop_close() == 0.
 */
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "store/idem.h"
#include "t.h"
#include "test_store_idem.h"

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

/* ---- the last unref */

/* Not the last reference: nothing changes. The last one: a pending lookup is answered
 * UNAVAILABLE, a waiter "not changed", a lock ended while closing is still carried out (its
 * notify answered), and the store frees itself once that lock is gone (the loop closes with
 * nothing left; ASan's leak check sees the memory back). */
T_TEST(memory_last_unref_answers_pending)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_idem *s = mem_store(&loop, 0);
    T_CHECK(lv_idem_ref(s) == s);
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec held = {0}, other = {0}, pend = {0};
    ask(&loop, s, "held", fa, 5000, &held);
    T_CHECK_STR(lv_idem_result_name(held.r), "acquired");
    ask(&loop, s, "other", fa, 5000, &other);
    T_CHECK_STR(lv_idem_result_name(other.r), "acquired");

    lv_idem_unref(s); /* one left */
    ask(&loop, s, "a", fa, 5000, &pend);
    T_CHECK_STR(lv_idem_result_name(pend.r), "acquired");
    lv_idem_release(pend.lock);
    rec_reset(&pend);

    lv_idem_begin(s, "b", 1, fa, 5000, on_rec, &pend);
    struct wrec w = {0}, told = {0};
    lv_idem_wait(s, "held", 4, 60000, on_wrec, &w);
    lv_idem_unref(s); /* the last */
    struct lv_idem_response resp = resp201();
    lv_idem_complete_notify(other.lock, &resp, 60000, on_wrec, &told);
    T_CHECK_INT(pend.calls + w.calls + told.calls, 0); /* never from inside unref */
    T_CHECK(run_until(&loop, &pend.calls, 1, 1000));
    T_CHECK(run_until(&loop, &w.calls, 1, 1000));
    T_CHECK(run_until(&loop, &told.calls, 1, 1000));
    T_CHECK_STR(lv_idem_result_name(pend.r), "unavailable");
    T_CHECK(pend.lock == NULL);
    T_CHECK(!w.changed); /* as if its time had run out, long before its 60 s */
    T_CHECK(told.changed);
    lv_idem_complete(held.lock, &resp, 60000); /* the last lock: frees the store */
    finish(&loop);
    rec_reset(&held);
    rec_reset(&other);
    rec_reset(&pend);
}

struct unref_in_cb {
    struct lv_idem *s;
    int calls;
    enum lv_idem_result r;
};

static void unref_in_cb(enum lv_idem_result r, const struct lv_idem_response *st,
                        struct lv_idem_lock *lock, void *arg)
{
    struct unref_in_cb *u = arg;
    u->calls++;
    u->r = r;
    lv_idem_release(lock);
    lv_idem_unref(u->s);
}

/* The last unref from inside a callback: the lookups of the same batch after it are answered
 * (UNAVAILABLE), not dropped; an unref with nothing pending frees at once. */
T_TEST(memory_last_unref_in_callback)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct unref_in_cb u = {.s = mem_store(&loop, 0)};
    uint8_t fa[32];
    fp_of("a", fa);
    struct rec after = {0};
    lv_idem_begin(u.s, "k", 1, fa, 5000, unref_in_cb, &u);
    lv_idem_begin(u.s, "j", 1, fa, 5000, on_rec, &after);
    T_CHECK(run_until(&loop, &after.calls, 1, 1000));
    T_CHECK_INT(u.calls, 1);
    T_CHECK_STR(lv_idem_result_name(u.r), "acquired");
    T_CHECK_STR(lv_idem_result_name(after.r), "unavailable");
    finish(&loop);
    rec_reset(&after);

    uv_loop_init(&loop);
    lv_idem_unref(mem_store(&loop, 0));
    lv_idem_unref(NULL);
    finish(&loop);
}

int main(void)
{
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
    T_RUN(memory_last_unref_answers_pending);
    T_RUN(memory_last_unref_in_callback);
    T_DONE();
}
