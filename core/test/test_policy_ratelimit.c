#include "policy/gcra.h"
#include "policy/ratelimit.h"
#include "t.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define MS  1000000ULL
#define SEC 1000000000ULL

static bool check(struct lv_ratemem *m, const char *key, const struct lv_gcra *g, uint64_t now,
                  enum lv_ratemem_rc *rc, struct lv_gcra_result *r)
{
    struct lv_gcra_result tmp;
    enum lv_ratemem_rc trc;
    if (!r)
        r = &tmp;
    if (!rc)
        rc = &trc;
    *rc = lv_ratemem_check(m, key, strlen(key), g, now, r);
    return *rc == LV_RATEMEM_OK && r->allowed;
}

T_TEST(store_is_gcra_per_key)
{
    struct lv_ratemem *m = lv_ratemem_new(1000);
    struct lv_gcra g;
    lv_gcra_init(&g, 100, SEC, 20);
    uint64_t now = 3 * SEC;
    struct lv_gcra_result r;
    enum lv_ratemem_rc rc;
    int n = 0;
    while (check(m, "r1:alice", &g, now, &rc, &r))
        n++;
    T_CHECK_INT(rc, LV_RATEMEM_OK);
    T_CHECK_INT(n, 21);
    T_CHECK_INT(r.retry_after_ns, 10 * MS);
    /* another key is untouched; so is a key differing in one byte */
    T_CHECK(check(m, "r1:bob", &g, now, NULL, &r));
    T_CHECK_INT(r.remaining, 20);
    T_CHECK(check(m, "r1:alicf", &g, now, NULL, &r));
    T_CHECK(check(m, "r2:alice", &g, now, NULL, &r));
    T_CHECK_INT(lv_ratemem_keys(m), 4);
    /* empty and long keys */
    T_CHECK(lv_ratemem_check(m, "", 0, &g, now, &r) == LV_RATEMEM_OK && r.remaining == 20);
    T_CHECK(lv_ratemem_check(m, "", 0, &g, now, &r) == LV_RATEMEM_OK && r.remaining == 19);
    char *big = malloc(10000);
    memset(big, 'k', 10000);
    T_CHECK(lv_ratemem_check(m, big, 10000, &g, now, &r) == LV_RATEMEM_OK && r.remaining == 20);
    big[9999] = 'j';
    T_CHECK(lv_ratemem_check(m, big, 10000, &g, now, &r) == LV_RATEMEM_OK && r.remaining == 20);
    T_CHECK(lv_ratemem_check(m, big, 9999, &g, now, &r) == LV_RATEMEM_OK && r.remaining == 20);
    T_CHECK(lv_ratemem_check(m, big, 9999, &g, now, &r) == LV_RATEMEM_OK && r.remaining == 19);
    free(big);
    /* after the interval, alice gets one more */
    T_CHECK(check(m, "r1:alice", &g, now + 10 * MS, NULL, &r));
    T_CHECK(!check(m, "r1:alice", &g, now + 10 * MS, NULL, &r));
    /* parameters are per check (a reload): a bigger burst applies to the same state */
    struct lv_gcra g2;
    lv_gcra_init(&g2, 100, SEC, 25);
    n = 0;
    while (check(m, "r1:alice", &g2, now + 10 * MS, NULL, &r))
        n++;
    T_CHECK_INT(n, 5);
    lv_ratemem_free(m);
}

T_TEST(full_of_live_keys_then_reclaimed)
{
    struct lv_ratemem *m = lv_ratemem_new(4); /* one shard of 4 */
    T_CHECK_INT(lv_ratemem_max_keys(m), 4);
    struct lv_gcra g;
    lv_gcra_init(&g, 1, 10 * SEC, 0); /* a state lives 10 s */
    char key[32];
    enum lv_ratemem_rc rc;
    struct lv_gcra_result r;
    for (int i = 0; i < 4; i++) {
        snprintf(key, sizeof(key), "k%d", i);
        T_CHECK(check(m, key, &g, SEC + (uint64_t)i * SEC, &rc, &r)); /* expire at 11..14 s */
    }
    T_CHECK_INT(lv_ratemem_keys(m), 4);
    /* a fifth key: full of live keys */
    T_CHECK(!check(m, "new", &g, 5 * SEC, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_FULL);
    T_CHECK(!check(m, "new", &g, 10 * SEC, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_FULL);
    T_CHECK_INT(lv_ratemem_keys(m), 4);
    /* the known keys still get their answers */
    T_CHECK(!check(m, "k0", &g, 10 * SEC, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_OK);
    T_CHECK_INT(r.retry_after_ns, SEC);
    /* k0 expires at 11 s: its place is taken */
    T_CHECK(check(m, "new", &g, 11 * SEC, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_OK);
    T_CHECK_INT(lv_ratemem_keys(m), 4);
    T_CHECK(!check(m, "new2", &g, 11 * SEC + 1, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_FULL);
    /* a key refused while over its limit does not take a place */
    T_CHECK(!check(m, "new", &g, 11 * SEC + 2, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_OK);
    /* everything expired: all four places free again, k0 counts as new */
    T_CHECK(check(m, "k0", &g, 100 * SEC, &rc, &r));
    T_CHECK_INT(r.remaining, 0);
    for (int i = 0; i < 3; i++) {
        snprintf(key, sizeof(key), "x%d", i);
        T_CHECK(check(m, key, &g, 100 * SEC, &rc, &r));
    }
    T_CHECK(!check(m, "x3", &g, 100 * SEC, &rc, &r));
    T_CHECK_INT(rc, LV_RATEMEM_FULL);
    lv_ratemem_free(m);
}

T_TEST(bounded_under_churn)
{
    /* 200,000 distinct keys over time in a store of 5,000, each state living 100 ms: never
     * full, and the store never holds more than its bound */
    struct lv_ratemem *m = lv_ratemem_new(5000);
    struct lv_gcra g;
    lv_gcra_init(&g, 10, SEC, 0);
    char key[32];
    int full = 0, refused = 0;
    size_t most = 0;
    for (int i = 0; i < 200000; i++) {
        uint64_t now = SEC + (uint64_t)i * 50000; /* 20,000 new keys a second: ~2,000 live */
        snprintf(key, sizeof(key), "ip:%d", i);
        enum lv_ratemem_rc rc;
        struct lv_gcra_result r;
        if (!check(m, key, &g, now, &rc, &r)) {
            if (rc == LV_RATEMEM_FULL)
                full++;
            else
                refused++;
        }
        if (i % 1000 == 0) {
            size_t k = lv_ratemem_keys(m);
            if (k > most)
                most = k;
        }
    }
    T_CHECK_INT(full, 0);
    T_CHECK_INT(refused, 0);
    T_CHECK(most <= 5000);
    T_CHECK(lv_ratemem_keys(m) <= 5000);
    /* once everything has expired, new keys fill the whole bound, then it is full */
    uint64_t later = 1000 * SEC;
    int ok = 0;
    full = 0;
    for (int i = 0; i < 6000; i++) {
        snprintf(key, sizeof(key), "late:%d", i);
        enum lv_ratemem_rc rc;
        if (check(m, key, &g, later, &rc, NULL))
            ok++;
        else if (rc == LV_RATEMEM_FULL)
            full++;
    }
    T_CHECK(ok <= 5000);
    T_CHECK(ok >= 4500); /* shards fill a little unevenly */
    T_CHECK_INT(ok + full, 6000);
    /* the count also holds states of the churn that expired in shards never full since */
    T_CHECK(lv_ratemem_keys(m) >= (size_t)ok && lv_ratemem_keys(m) <= 5000);
    lv_ratemem_free(m);
}

T_TEST(small_and_zero_bounds)
{
    struct lv_ratemem *m = lv_ratemem_new(0);
    T_CHECK_INT(lv_ratemem_max_keys(m), 1);
    struct lv_gcra g;
    lv_gcra_init(&g, 1, SEC, 0);
    enum lv_ratemem_rc rc;
    T_CHECK(check(m, "a", &g, 1, &rc, NULL));
    T_CHECK(!check(m, "b", &g, 2, &rc, NULL));
    T_CHECK_INT(rc, LV_RATEMEM_FULL);
    T_CHECK(check(m, "b", &g, SEC + 1, &rc, NULL));
    lv_ratemem_free(m);
    lv_ratemem_free(NULL);
}

/* ---- threads: the check and update of a key are one step */

#define THREADS 4
#define KEYS    3
#define PHASES  150
#define PER_KEY 25 /* checks per key per phase per thread */

struct hammer {
    struct lv_ratemem *m;
    const struct lv_gcra *g;
    pthread_barrier_t *bar;
    uint64_t admitted[KEYS];
    uint64_t full;
};

static const char *const hkeys[KEYS] = {"route:a", "route:b", "route:c"};

static uint64_t phase_now(int p)
{
    return SEC + (uint64_t)p * 7 * MS;
}

static void *hammer_run(void *arg)
{
    struct hammer *h = arg;
    for (int p = 0; p < PHASES; p++) {
        pthread_barrier_wait(h->bar); /* the clock is the same for every thread in a phase */
        for (int i = 0; i < PER_KEY; i++)
            for (int k = 0; k < KEYS; k++) {
                struct lv_gcra_result r;
                const char *key = hkeys[(k + i) % KEYS];
                enum lv_ratemem_rc rc =
                    lv_ratemem_check(h->m, key, strlen(key), h->g, phase_now(p), &r);
                if (rc == LV_RATEMEM_FULL)
                    h->full++;
                else if (r.allowed)
                    h->admitted[(k + i) % KEYS]++;
            }
        pthread_barrier_wait(h->bar);
    }
    return NULL;
}

T_TEST(threads_admit_exactly_what_one_thread_would)
{
    struct lv_gcra g;
    lv_gcra_init(&g, 1000, SEC, 50);
    /* one thread, the same requests */
    struct lv_ratemem *ref = lv_ratemem_new(100);
    uint64_t want[KEYS] = {0};
    for (int p = 0; p < PHASES; p++)
        for (int i = 0; i < PER_KEY * THREADS; i++)
            for (int k = 0; k < KEYS; k++) {
                struct lv_gcra_result r;
                lv_ratemem_check(ref, hkeys[k], strlen(hkeys[k]), &g, phase_now(p), &r);
                want[k] += r.allowed;
            }
    lv_ratemem_free(ref);
    /* the limit bites: burst + 1 at first, then 7 per phase are due, 100 are asked for */
    for (int k = 0; k < KEYS; k++)
        T_CHECK_INT(want[k], 51 + (PHASES - 1) * 7);

    struct lv_ratemem *m = lv_ratemem_new(100);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, THREADS);
    struct hammer h[THREADS];
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        h[t] = (struct hammer){.m = m, .g = &g, .bar = &bar};
        pthread_create(&th[t], NULL, hammer_run, &h[t]);
    }
    uint64_t got[KEYS] = {0}, full = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        for (int k = 0; k < KEYS; k++)
            got[k] += h[t].admitted[k];
        full += h[t].full;
    }
    pthread_barrier_destroy(&bar);
    for (int k = 0; k < KEYS; k++)
        T_CHECK_INT(got[k], want[k]);
    T_CHECK_INT(full, 0);
    T_CHECK_INT(lv_ratemem_keys(m), KEYS);
    lv_ratemem_free(m);
}

struct spread {
    struct lv_ratemem *m;
    const struct lv_gcra *g;
    int id;
    int ok, full;
};

static void *spread_run(void *arg)
{
    struct spread *s = arg;
    char key[32];
    for (int i = 0; i < 20000; i++) {
        snprintf(key, sizeof(key), "t%d:%d", s->id, i % 3000);
        struct lv_gcra_result r;
        enum lv_ratemem_rc rc =
            lv_ratemem_check(s->m, key, strlen(key), s->g, SEC + (uint64_t)i * 1000, &r);
        if (rc == LV_RATEMEM_FULL)
            s->full++;
        else if (r.allowed)
            s->ok++;
    }
    return NULL;
}

T_TEST(threads_on_many_keys_share_the_bound)
{
    /* 4 threads x 3,000 keys each, the same second: 12,000 live keys in a store of 8,000 */
    struct lv_ratemem *m = lv_ratemem_new(8000);
    struct lv_gcra g;
    lv_gcra_init(&g, 1, 3600 * SEC, 0);
    struct spread s[THREADS];
    pthread_t th[THREADS];
    for (int t = 0; t < THREADS; t++) {
        s[t] = (struct spread){.m = m, .g = &g, .id = t};
        pthread_create(&th[t], NULL, spread_run, &s[t]);
    }
    int ok = 0, full = 0;
    for (int t = 0; t < THREADS; t++) {
        pthread_join(th[t], NULL);
        ok += s[t].ok;
        full += s[t].full;
    }
    /* each key that got in passed once; every other check of a new key was FULL */
    T_CHECK_INT(lv_ratemem_keys(m), (size_t)ok);
    T_CHECK(ok <= 8000);
    T_CHECK(ok >= 7200);
    T_CHECK(full > 0);
    lv_ratemem_free(m);
}

int main(void)
{
    T_RUN(store_is_gcra_per_key);
    T_RUN(full_of_live_keys_then_reclaimed);
    T_RUN(bounded_under_churn);
    T_RUN(small_and_zero_bounds);
    T_RUN(threads_admit_exactly_what_one_thread_would);
    T_RUN(threads_on_many_keys_share_the_bound);
    T_DONE();
}
