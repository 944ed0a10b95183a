#include "policy/backoff.h"
#include "t.h"

#include <stdint.h>

#define SEEDS 10000

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* min(cap, base * 2^(n-1)) by repeated doubling: a second, independent way to the same value */
static uint64_t ref_expo(uint64_t base, uint64_t cap, uint32_t n)
{
    uint64_t v = base < cap ? base : cap;
    for (uint32_t i = 1; i < n && v < cap; i++)
        v = v > cap / 2 ? cap : v * 2;
    return v;
}

static const struct {
    uint64_t base, max;
} shapes[] = {
    {25, 1000}, {1, 1}, {0, 100}, {100, 100}, {7, 1000000}, {1000, 10}, {3, 0}, {1, UINT64_MAX},
};

T_TEST(bounds_full_equal_none)
{
    uint64_t seed = 1;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        for (uint32_t n = 1; n <= 70; n += (n < 12 ? 1 : 29)) {
            uint64_t e = ref_expo(shapes[s].base, shapes[s].max, n);
            int bad = 0;
            for (int i = 0; i < SEEDS && !bad; i++) {
                uint64_t r = splitmix(&seed);
                uint64_t f = lv_backoff_ms(LV_BACKOFF_FULL, shapes[s].base, shapes[s].max, n, 0, r);
                uint64_t q =
                    lv_backoff_ms(LV_BACKOFF_EQUAL, shapes[s].base, shapes[s].max, n, 0, r);
                uint64_t z = lv_backoff_ms(LV_BACKOFF_NONE, shapes[s].base, shapes[s].max, n, 0, r);
                if (f > e || q < e / 2 || q > e || z != e) {
                    fprintf(stderr,
                            "base %llu max %llu n %u: e %llu full %llu equal %llu none %llu\n",
                            (unsigned long long)shapes[s].base, (unsigned long long)shapes[s].max,
                            n, (unsigned long long)e, (unsigned long long)f, (unsigned long long)q,
                            (unsigned long long)z);
                    bad = 1;
                }
            }
            T_CHECK(!bad);
        }
    }
}

T_TEST(bounds_decorrelated_chain)
{
    uint64_t seed = 42;
    for (size_t s = 0; s < sizeof(shapes) / sizeof(shapes[0]); s++) {
        uint64_t base = shapes[s].base, max = shapes[s].max;
        int bad = 0;
        for (int i = 0; i < SEEDS / 10 && !bad; i++) {
            uint64_t prev = 0;
            for (uint32_t n = 1; n <= 10 && !bad; n++) {
                uint64_t d =
                    lv_backoff_ms(LV_BACKOFF_DECORRELATED, base, max, n, prev, splitmix(&seed));
                uint64_t p = prev > base ? prev : base;
                uint64_t hi = p > UINT64_MAX / 3 ? UINT64_MAX : p * 3;
                uint64_t lo = base < max ? base : max;
                if (hi > max)
                    hi = max;
                if (d < lo || d > hi || d > max) {
                    fprintf(stderr, "base %llu max %llu n %u prev %llu: %llu\n",
                            (unsigned long long)base, (unsigned long long)max, n,
                            (unsigned long long)prev, (unsigned long long)d);
                    bad = 1;
                }
                prev = d;
            }
        }
        T_CHECK(!bad);
    }
}

/* mean and variance of 10k draws, against the uniform distribution's */
static void moments(int kind, uint64_t base, uint64_t max, uint32_t n, uint64_t prev, double *mean,
                    double *var, uint64_t *lo, uint64_t *hi)
{
    uint64_t seed = 7;
    double sum = 0, sq = 0;
    *lo = UINT64_MAX;
    *hi = 0;
    for (int i = 0; i < SEEDS; i++) {
        uint64_t d = lv_backoff_ms(kind, base, max, n, prev, splitmix(&seed));
        sum += (double)d;
        sq += (double)d * (double)d;
        if (d < *lo)
            *lo = d;
        if (d > *hi)
            *hi = d;
    }
    *mean = sum / SEEDS;
    *var = sq / SEEDS - *mean * *mean;
}

static int near(double got, double want, double tol)
{
    double d = got - want;
    if (d < 0)
        d = -d;
    if (d > tol)
        fprintf(stderr, "got %f, want %f +- %f\n", got, want, tol);
    return d <= tol;
}

T_TEST(spread)
{
    double m, v;
    uint64_t lo, hi;
    /* full, expo = 100 * 2^3 = 800: U[0,800], mean 400, var 801^2-1 / 12; 6 sigma of the mean */
    moments(LV_BACKOFF_FULL, 100, 100000, 4, 0, &m, &v, &lo, &hi);
    T_CHECK(near(m, 400, 6 * 231.2 / 100));
    T_CHECK(near(v, (801.0 * 801 - 1) / 12, 0.06 * 53466));
    T_CHECK(lo < 10 && hi > 790);
    /* equal, expo 800: U[400,800] */
    moments(LV_BACKOFF_EQUAL, 100, 100000, 4, 0, &m, &v, &lo, &hi);
    T_CHECK(near(m, 600, 6 * 115.8 / 100));
    T_CHECK(near(v, (401.0 * 401 - 1) / 12, 0.06 * 13400));
    T_CHECK(lo >= 400 && lo < 405 && hi > 795 && hi <= 800);
    /* decorrelated, base 10, prev 100: U[10,300] */
    moments(LV_BACKOFF_DECORRELATED, 10, 100000, 3, 100, &m, &v, &lo, &hi);
    T_CHECK(near(m, 155, 6 * 84.0 / 100));
    T_CHECK(near(v, (291.0 * 291 - 1) / 12, 0.06 * 7057));
    T_CHECK(lo >= 10 && lo < 15 && hi > 295 && hi <= 300);
    /* the cap bites: full over U[0, 1000] even at retry 30 */
    moments(LV_BACKOFF_FULL, 25, 1000, 30, 0, &m, &v, &lo, &hi);
    T_CHECK(near(m, 500, 6 * 289.0 / 100));
    T_CHECK(hi <= 1000 && hi > 990);
    /* none is not random at all */
    moments(LV_BACKOFF_NONE, 25, 1000, 3, 0, &m, &v, &lo, &hi);
    T_CHECK(lo == 100 && hi == 100);
}

T_TEST(cap_and_overflow)
{
    static const uint32_t big[] = {65, 66, 100, 1000, UINT32_MAX};
    for (size_t i = 0; i < sizeof(big) / sizeof(big[0]); i++) {
        T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_NONE, 25, 1000, big[i], 0, 0), 1000);
        T_CHECK(lv_backoff_ms(LV_BACKOFF_NONE, 1, UINT64_MAX, big[i], 0, 0) == UINT64_MAX);
        T_CHECK(lv_backoff_ms(LV_BACKOFF_FULL, 3, UINT64_MAX, big[i], 0, UINT64_MAX) == UINT64_MAX);
        T_CHECK(lv_backoff_ms(LV_BACKOFF_EQUAL, 3, 1000, big[i], 0, 12345) <= 1000);
    }
    /* base * 2^(n-1) exactly at 2^63, then saturating */
    T_CHECK(lv_backoff_ms(LV_BACKOFF_NONE, 1, UINT64_MAX, 64, 0, 0) == (uint64_t)1 << 63);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_NONE, 2, UINT64_MAX, 64, 0, 0) == UINT64_MAX);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_NONE, 1, UINT64_MAX, 63, 0, 0) == (uint64_t)1 << 62);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_NONE, UINT64_MAX / 2, UINT64_MAX, 2, 0, 0) ==
            (UINT64_MAX / 2) * 2);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_NONE, UINT64_MAX / 2 + 1, UINT64_MAX, 2, 0, 0) == UINT64_MAX);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 5, UINT64_MAX, 9, UINT64_MAX, 0) == 5);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 5, 1000, 9, UINT64_MAX, UINT64_MAX - 1) <= 1000);
    /* a zero cap means no wait */
    for (int k = 0; k < 4; k++)
        T_CHECK_INT(lv_backoff_ms(k, 25, 0, 3, 50, 999), 0);
    /* base above the cap: the cap */
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_NONE, 5000, 1000, 1, 0, 0), 1000);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 5000, 1000, 1, 0, 3), 1000);
}

T_TEST(none_is_monotone_to_the_cap)
{
    uint64_t prev = 0;
    int reached = 0;
    for (uint32_t n = 1; n < 200; n++) {
        uint64_t d = lv_backoff_ms(LV_BACKOFF_NONE, 25, 1000, n, 0, n * 77);
        T_CHECK(d >= prev);
        T_CHECK(d <= 1000);
        if (reached)
            T_CHECK_INT(d, 1000);
        if (d == 1000)
            reached = 1;
        prev = d;
    }
    T_CHECK(reached);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_NONE, 25, 1000, 1, 0, 0), 25);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_NONE, 25, 1000, 2, 0, 0), 50);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_NONE, 25, 1000, 6, 0, 0), 800);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_NONE, 25, 1000, 7, 0, 0), 1000);
}

T_TEST(deterministic_and_edges)
{
    uint64_t seed = 99;
    for (int i = 0; i < 1000; i++) {
        uint64_t r = splitmix(&seed);
        for (int k = 0; k < 4; k++)
            T_CHECK(lv_backoff_ms(k, 25, 1000, 3, 40, r) == lv_backoff_ms(k, 25, 1000, 3, 40, r));
        /* retry 0 is taken as the first retry; an unknown kind as full */
        T_CHECK(lv_backoff_ms(LV_BACKOFF_FULL, 25, 1000, 0, 0, r) ==
                lv_backoff_ms(LV_BACKOFF_FULL, 25, 1000, 1, 0, r));
        T_CHECK(lv_backoff_ms(17, 25, 1000, 4, 0, r) ==
                lv_backoff_ms(LV_BACKOFF_FULL, 25, 1000, 4, 0, r));
        T_CHECK(lv_backoff_ms(-1, 25, 1000, 4, 0, r) ==
                lv_backoff_ms(LV_BACKOFF_FULL, 25, 1000, 4, 0, r));
    }
    /* zero base: no exponential wait; decorrelated grows from the previous delay only */
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_FULL, 0, 1000, 5, 0, 12345), 0);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 0, 1000, 5, 0, 12345), 0);
    T_CHECK(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 0, 1000, 5, 10, 12345) <= 30);
    /* the random value's extremes reach the interval's ends */
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_FULL, 25, 1000, 3, 0, 0), 0);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_FULL, 25, 1000, 3, 0, 100), 100);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_EQUAL, 25, 1000, 3, 0, 0), 50);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_EQUAL, 25, 1000, 3, 0, 50), 100);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 25, 1000, 3, 0, 0), 25);
    T_CHECK_INT(lv_backoff_ms(LV_BACKOFF_DECORRELATED, 25, 1000, 3, 0, 50), 75);
}

int main(void)
{
    T_RUN(bounds_full_equal_none);
    T_RUN(bounds_decorrelated_chain);
    T_RUN(spread);
    T_RUN(cap_and_overflow);
    T_RUN(none_is_monotone_to_the_cap);
    T_RUN(deterministic_and_edges);
    T_DONE();
}
