/*
 * The adaptive concurrency limit (policy/gradient.h) against a simulated upstream, on a fake
 * clock. The simulator is a closed loop: K clients each send back to back; a request starts
 * only while inflight < the current limit (the others wait for a completion, as in the bulkhead's
 * queue: in flight = min(K, limit)); its RTT is the upstream model's answer for the inflight count
 * at its start, with
 * +-20% deterministic jitter.
 */
#include "policy/gradient.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "t.h"

#define MS   1000000ull
#define SEC  1000000000ull
#define MAXK 512

/* Upstream model: RTT (ns) of a request started at `now` with `inflight` in flight. */
typedef uint64_t (*upstream_fn)(uint64_t now, uint32_t inflight);

struct req {
    uint64_t done_at;      /* completes then */
    uint64_t rtt;          /* its RTT */
    uint32_t started_with; /* inflight at its start, itself included */
};

struct sim {
    struct lv_gradient g;
    upstream_fn up;
    uint32_t k;        /* clients: at most k requests in flight */
    uint64_t now;      /* fake clock */
    uint32_t inflight; /* requests in flight: heap[0 .. inflight), earliest first */
    struct req heap[MAXK];
    uint64_t rnd;
    uint64_t completed;
    uint32_t lo, hi; /* lowest and highest estimate since the last sim_watch */
};

static int trace; /* GRADIENT_TRACE=1: one line per window */

static double jitter(struct sim *s)
{
    s->rnd = s->rnd * 6364136223846793005ull + 1442695040888963407ull;
    return 0.8 + 0.4 * (double)(s->rnd >> 11) / (double)(1ull << 53);
}

static void sim_init(struct sim *s, const struct lv_gradient_cfg *c, upstream_fn up, uint32_t k)
{
    memset(s, 0, sizeof *s);
    lv_gradient_init(&s->g, c);
    s->up = up;
    s->k = k;
    s->rnd = 42;
    s->now = 1 * SEC;
}

/* Watches the estimate (lv_gradient_stats), not the probes' dips of lv_gradient_limit. */
static void sim_watch(struct sim *s)
{
    double est;
    lv_gradient_stats(&s->g, &est, NULL, NULL, NULL);
    s->lo = s->hi = (uint32_t)est;
}

static void heap_swap(struct sim *s, uint32_t i, uint32_t j)
{
    struct req t = s->heap[i];
    s->heap[i] = s->heap[j];
    s->heap[j] = t;
}

/* Starts requests for idle clients while the limit allows. */
static void admit(struct sim *s)
{
    while (s->inflight < s->k && s->inflight < lv_gradient_limit(&s->g)) {
        uint32_t i = s->inflight++;
        uint64_t rtt = (uint64_t)((double)s->up(s->now, s->inflight) * jitter(s));
        if (rtt == 0)
            rtt = 1;
        s->heap[i] = (struct req){s->now + rtt, rtt, s->inflight};
        for (; i > 0 && s->heap[(i - 1) / 2].done_at > s->heap[i].done_at; i = (i - 1) / 2)
            heap_swap(s, i, (i - 1) / 2);
    }
}

/* Removes and returns the earliest completion (inflight > 0). */
static struct req pop(struct sim *s)
{
    struct req top = s->heap[0];
    s->heap[0] = s->heap[--s->inflight];
    for (uint32_t i = 0;;) {
        uint32_t m = i, l = 2 * i + 1, r = l + 1;
        if (l < s->inflight && s->heap[l].done_at < s->heap[m].done_at)
            m = l;
        if (r < s->inflight && s->heap[r].done_at < s->heap[m].done_at)
            m = r;
        if (m == i)
            break;
        heap_swap(s, i, m);
        i = m;
    }
    return top;
}

/* Runs until the fake clock passes `until`. */
static void sim_run(struct sim *s, uint64_t until)
{
    admit(s);
    while (s->now < until) {
        if (s->inflight == 0)
            break;
        struct req r = pop(s);
        s->now = r.done_at;
        s->completed++;
        uint64_t u = s->g.updates;
        lv_gradient_sample(&s->g, s->now, r.rtt, r.started_with, false);
        if (trace && s->g.updates != u)
            fprintf(stderr, "t=%.2f limit=%.1f probing=%d short=%.1fms long=%.1fms inflight=%u\n",
                    (double)s->now / SEC, s->g.limit, s->g.probing, s->g.short_rtt / MS,
                    s->g.long_rtt / MS, s->inflight);
        double est;
        lv_gradient_stats(&s->g, &est, NULL, NULL, NULL);
        uint32_t l = (uint32_t)est;
        if (l < s->lo)
            s->lo = l;
        if (l > s->hi)
            s->hi = l;
        admit(s);
    }
}

static uint64_t flat_10ms(uint64_t now, uint32_t inflight)
{
    (void)now, (void)inflight;
    return 10 * MS;
}

/* Latency grows with concurrency past a capacity of 20. */
static uint64_t knee20(uint64_t now, uint32_t inflight)
{
    (void)now;
    double over = inflight > 20 ? (double)(inflight - 20) / 20.0 : 0;
    return (uint64_t)(10.0 * MS * (1 + over));
}

/* knee20, but 4x slower between 100 s and 110 s of the clock. */
static uint64_t knee20_spike(uint64_t now, uint32_t inflight)
{
    uint64_t r = knee20(now, inflight);
    return now >= 100 * SEC && now < 110 * SEC ? 4 * r : r;
}

/* Capacity 20, but only 5 between 100 s and 130 s (half the upstream's instances gone). */
static uint64_t knee_shrinks(uint64_t now, uint32_t inflight)
{
    double cap = now >= 100 * SEC && now < 130 * SEC ? 5 : 20;
    double over = inflight > cap ? (inflight - cap) / cap : 0;
    return (uint64_t)(10.0 * MS * (1 + over));
}

/* knee20, 3x slower for good from 100 s on. */
static uint64_t knee20_slower(uint64_t now, uint32_t inflight)
{
    uint64_t r = knee20(now, inflight);
    return now >= 100 * SEC ? 3 * r : r;
}

static struct lv_gradient_cfg cfg(uint32_t min, uint32_t max, uint32_t initial)
{
    struct lv_gradient_cfg c;
    lv_gradient_cfg_default(&c);
    c.min_limit = min;
    c.max_limit = max;
    c.initial_limit = initial;
    return c;
}

static double est(const struct lv_gradient *g);
static void feed(struct lv_gradient *g, uint64_t *now, int n, int per, uint64_t rtt,
                 uint32_t inflight, int drops);
static void settle(struct lv_gradient *g, uint64_t *now, uint64_t rtt, uint32_t inflight);

/* (a) Constant latency: the limit grows to max_limit when the load fills it. */
T_TEST(constant_latency_grows_to_max)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(5, 200, 20);
    sim_init(&s, &c, flat_10ms, 400);
    sim_run(&s, 60 * SEC);
    T_CHECK_INT(lv_gradient_limit(&s.g), 200);
    sim_watch(&s);
    sim_run(&s, 120 * SEC);
    T_CHECK_INT(s.lo, 200);
}

/* (a) ... and stays put while app-limited (inflight under half the limit). */
T_TEST(constant_latency_app_limited_stays)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(5, 200, 40);
    sim_init(&s, &c, flat_10ms, 12);
    sim_watch(&s);
    sim_run(&s, 60 * SEC);
    T_CHECK_INT(s.lo, 40);
    T_CHECK_INT(s.hi, 40);
    T_CHECK(s.g.updates > 100);
}

/* (b) Latency grows with concurrency: the limit settles near the capacity, neither at the
 * floor nor at the ceiling, and stays there (no drift of the baseline under sustained load). */
T_TEST(knee_converges_near_capacity)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(1, 500, 100);
    sim_init(&s, &c, knee20, 400);
    sim_run(&s, 20 * SEC); /* from 100, where the latency is 5x, it takes ~10 probes */
    sim_watch(&s);
    sim_run(&s, 120 * SEC);
    fprintf(stderr, "  knee: limit %u..%u over 100s, %llu updates\n", s.lo, s.hi,
            (unsigned long long)s.g.updates);
    T_CHECK(s.lo >= 10);
    T_CHECK(s.hi <= 40);
    /* Ten minutes more of sustained overload: still there. */
    sim_watch(&s);
    sim_run(&s, 720 * SEC);
    fprintf(stderr, "  knee: limit %u..%u over 600s more\n", s.lo, s.hi);
    T_CHECK(s.lo >= 10);
    T_CHECK(s.hi <= 40);
}

/* (b) from below: starting at the floor, it climbs to the knee. */
T_TEST(knee_from_floor)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(2, 500, 2);
    sim_init(&s, &c, knee20, 400);
    sim_run(&s, 60 * SEC);
    sim_watch(&s);
    sim_run(&s, 120 * SEC);
    T_CHECK(s.lo >= 10);
    T_CHECK(s.hi <= 40);
}

/* (c) A latency spike: the limit falls, then comes back near where it was. */
T_TEST(spike_falls_then_recovers)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(1, 500, 20);
    sim_init(&s, &c, knee20_spike, 400);
    sim_run(&s, 100 * SEC);
    uint32_t before = (uint32_t)est(&s.g);
    sim_watch(&s);
    sim_run(&s, 110 * SEC);
    uint32_t during = s.lo;
    /* after the spike: windows until the estimate is back to 80% */
    uint64_t updates = s.g.updates;
    while (est(&s.g) < 0.8 * before && s.now < 200 * SEC)
        sim_run(&s, s.now + 10 * MS);
    uint64_t back = s.g.updates - updates;
    sim_run(&s, 140 * SEC);
    sim_watch(&s);
    sim_run(&s, 200 * SEC);
    fprintf(stderr,
            "  spike: before %u, lowest during %u, back to 80%% in %llu windows, then %u..%u\n",
            before, during, (unsigned long long)back, s.lo, s.hi);
    T_CHECK(before >= 10 && before <= 40);
    T_CHECK(during <= before * 7 / 10);
    T_CHECK(back <= 50);
    T_CHECK(s.lo >= before * 8 / 10);
    T_CHECK(s.hi <= 45);
}

/* The contract's case: the upstream's latency grows with its concurrency at a lower capacity
 * for a while: the limit falls to the new knee, then comes back. */
T_TEST(capacity_drop_and_back)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(1, 500, 20);
    sim_init(&s, &c, knee_shrinks, 400);
    sim_run(&s, 100 * SEC);
    uint32_t before = (uint32_t)est(&s.g);
    sim_run(&s, 115 * SEC);
    sim_watch(&s);
    sim_run(&s, 130 * SEC);
    uint32_t lo = s.lo, hi = s.hi;
    sim_run(&s, 160 * SEC);
    sim_watch(&s);
    sim_run(&s, 200 * SEC);
    fprintf(stderr, "  capacity 20 -> 5 -> 20: limit %u, then %u..%u, then %u..%u\n", before, lo,
            hi, s.lo, s.hi);
    T_CHECK(before >= 20 && before <= 40);
    T_CHECK(lo >= 3 && hi <= 15);
    T_CHECK(s.lo >= before * 8 / 10 && s.hi <= 45);
}

/* Probes: every probe_interval windows under load, lv_gradient_limit halves for one window, and
 * what that window measured becomes the baseline; the estimate itself is kept. */
T_TEST(probes)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(1, 500, 20);
    sim_init(&s, &c, knee20, 400);
    sim_run(&s, 60 * SEC);
    /* count probe windows over the next 1000 windows; the limit the caller sees during each */
    uint64_t start = s.g.updates;
    int probes = 0;
    bool was = false;
    while (s.g.updates < start + 1000) {
        sim_run(&s, s.now + 1 * MS);
        if (s.g.probing && !was) {
            probes++;
            T_CHECK_INT(lv_gradient_limit(&s.g), (uint32_t)floor(est(&s.g) / 2));
        }
        was = s.g.probing;
    }
    fprintf(stderr, "  probes: %d in 1000 windows\n", probes);
    T_CHECK(probes >= 9 && probes <= 11);
    /* a probe's measurement replaces the baseline, up or down; the estimate stays */
    struct lv_gradient g;
    lv_gradient_init(&g, &c);
    uint64_t now = SEC;
    feed(&g, &now, 30, 10, 10 * MS, 1000, 0); /* warm-up, then the early probe */
    settle(&g, &now, 10 * MS, 1000);
    while (!g.probing)
        feed(&g, &now, 1, 10, 10 * MS, 1000, 0);
    double e = est(&g);
    uint32_t pl = lv_gradient_limit(&g);
    T_CHECK_INT(pl, (uint32_t)floor(e / 2));
    /* requests started above the probe limit do not count; 10 within it, at 30 ms */
    for (int i = 0; i < 10; i++)
        lv_gradient_sample(&g, now += 20 * MS, 10 * MS, pl + 1, false);
    T_CHECK(g.probing);
    for (int i = 0; i < 10; i++)
        lv_gradient_sample(&g, now += 20 * MS, 30 * MS, pl, false);
    T_CHECK(!g.probing);
    T_CHECK(fabs(g.long_rtt - 30.0 * MS) < 1);
    T_CHECK(est(&g) == e);
    /* a caller that ignores the probe limit: the probe gives up after 10 windows' samples */
    while (!g.probing)
        feed(&g, &now, 1, 10, 30 * MS, 1000, 0);
    double base = g.long_rtt;
    for (int i = 0; i < 99; i++)
        lv_gradient_sample(&g, now += 20 * MS, 10 * MS, 1000, false);
    T_CHECK(g.probing);
    lv_gradient_sample(&g, now += 20 * MS, 10 * MS, 1000, false);
    T_CHECK(!g.probing);
    T_CHECK(g.long_rtt == base);
    /* drops during a probe back off all the same */
    while (!g.probing)
        feed(&g, &now, 1, 10, 30 * MS, 1000, 0);
    e = est(&g);
    pl = lv_gradient_limit(&g);
    for (int i = 0; i < 11; i++) /* 10 measured, 1 dropped */
        lv_gradient_sample(&g, now += 20 * MS, 30 * MS, pl, i == 0);
    T_CHECK(!g.probing);
    T_CHECK(fabs(est(&g) - 0.9 * e) < 1e-9);
}

/* The upstream becomes slower for good (not through our load): after the fall the limit is
 * re-based on the new latency instead of staying at the floor. */
T_TEST(permanent_slowdown_rebases)
{
    static struct sim s;
    struct lv_gradient_cfg c = cfg(1, 500, 20);
    sim_init(&s, &c, knee20_slower, 400);
    sim_run(&s, 100 * SEC);
    uint32_t before = lv_gradient_limit(&s.g);
    sim_watch(&s);
    sim_run(&s, 115 * SEC);
    uint32_t during = s.lo;
    sim_run(&s, 200 * SEC);
    sim_watch(&s);
    sim_run(&s, 300 * SEC);
    fprintf(stderr, "  slower: before %u, lowest %u, after %u..%u\n", before, during, s.lo, s.hi);
    T_CHECK(during < before);
    T_CHECK(s.lo >= 10);
    T_CHECK(s.hi <= 45);
}

/* The estimate (lv_gradient_limit is half of it during a probe). */
static double est(const struct lv_gradient *g)
{
    double v;
    lv_gradient_stats(g, &v, NULL, NULL, NULL);
    return v;
}

/* Feeds `n` windows of `per` samples each, 20 ms apart, at `rtt` and `inflight` (at most the
 * current limit, as a caller that applies it), the first `drops` of each window dropped. */
static void feed(struct lv_gradient *g, uint64_t *now, int n, int per, uint64_t rtt,
                 uint32_t inflight, int drops)
{
    for (int w = 0; w < n; w++) {
        for (int i = 0; i < per; i++) {
            *now += 20 * MS;
            uint32_t l = lv_gradient_limit(g);
            lv_gradient_sample(g, *now, rtt, inflight < l ? inflight : l, i < drops);
        }
    }
}

/* Feeds plain windows until no probe is running. */
static void settle(struct lv_gradient *g, uint64_t *now, uint64_t rtt, uint32_t inflight)
{
    for (int i = 0; i < 100 && g->probing; i++)
        feed(g, now, 1, 10, rtt, inflight, 0);
}

/* (d) Drops cut the limit by drop_backoff per window; one lone drop among many does not. */
T_TEST(drops_reduce_limit)
{
    struct lv_gradient g;
    struct lv_gradient_cfg c = cfg(5, 200, 100);
    lv_gradient_init(&g, &c);
    uint64_t now = SEC;
    /* A baseline, at full load, constant latency: the limit grows. */
    feed(&g, &now, 20, 10, 10 * MS, 1000, 0);
    settle(&g, &now, 10 * MS, 1000);
    T_CHECK(!g.probing);
    double l0 = est(&g);
    T_CHECK(l0 > 100);
    uint64_t u0 = g.updates;
    feed(&g, &now, 1, 10, 10 * MS, 1000, 1); /* one window, 1 of 10 dropped */
    T_CHECK_INT(g.updates, u0 + 1);
    T_CHECK(fabs(est(&g) - 0.9 * l0) < 1e-9);
    /* Ten drop windows (probes or not): at most 0.9^10 of it, ~35% */
    feed(&g, &now, 10, 10, 10 * MS, 1000, 2);
    T_CHECK(est(&g) < l0 * 0.4);
    /* All dropped, and while app-limited too: still backs off, down to the floor only. */
    feed(&g, &now, 200, 10, 10 * MS, 1, 10);
    T_CHECK(est(&g) == 5);
    T_CHECK_INT(lv_gradient_limit(&g), 5);
    /* One drop among 200 samples in a window (<1%): no backoff. */
    struct lv_gradient h;
    struct lv_gradient_cfg c2 = cfg(5, 200, 100);
    c2.window_min_samples = 200;
    c2.window_max_ns = c2.window_min_ns = 10 * SEC;
    lv_gradient_init(&h, &c2);
    now = SEC;
    for (int i = 0; i < 201; i++) {
        now += 100 * MS;
        lv_gradient_sample(&h, now, 10 * MS, 100, i == 50);
    }
    T_CHECK_INT(h.updates, 1);
    T_CHECK(est(&h) >= 100); /* not backed off (0.9 x 100); the warm-up does not grow it */
}

/* (e) The clamps: initial outside [min, max], growth stops at max, shrinking at min. */
T_TEST(clamps)
{
    struct lv_gradient g;
    struct lv_gradient_cfg c = cfg(10, 50, 500);
    lv_gradient_init(&g, &c);
    T_CHECK_INT(lv_gradient_limit(&g), 50);
    c.initial_limit = 2;
    lv_gradient_init(&g, &c);
    T_CHECK_INT(lv_gradient_limit(&g), 10);
    uint64_t now = SEC;
    feed(&g, &now, 500, 10, 5 * MS, 1000, 0);
    T_CHECK_INT(lv_gradient_limit(&g), 50);
    /* latency x10 at full load: down to the floor, never under */
    feed(&g, &now, 30, 10, 50 * MS, 1000, 0);
    T_CHECK(lv_gradient_limit(&g) < 50);
    feed(&g, &now, 500, 10, 10 * SEC, 1000, 0);
    T_CHECK(lv_gradient_limit(&g) >= 10);
    /* min 0 -> 1, max < min -> min */
    struct lv_gradient_cfg z = cfg(0, 0, 0);
    lv_gradient_init(&g, &z);
    T_CHECK_INT(lv_gradient_limit(&g), 1);
    /* a reload narrows the bounds: the limit is clamped at once, the baseline kept */
    c = cfg(10, 50, 50);
    lv_gradient_init(&g, &c);
    now = SEC;
    feed(&g, &now, 20, 10, 5 * MS, 1000, 0);
    settle(&g, &now, 5 * MS, 1000);
    double base = g.long_rtt;
    c.max_limit = 30;
    lv_gradient_configure(&g, &c);
    T_CHECK(est(&g) == 30);
    T_CHECK_INT(lv_gradient_limit(&g), 30);
    T_CHECK(g.long_rtt == base);
}

static bool sane(const struct lv_gradient *g)
{
    uint32_t l = lv_gradient_limit(g);
    return isfinite(g->limit) && isfinite(g->long_rtt) && isfinite(g->short_rtt) &&
           l >= g->c.min_limit && l <= g->c.max_limit;
}

/* (f) No NaN, no overflow, whatever the samples. */
T_TEST(degenerate_samples)
{
    struct lv_gradient g;
    struct lv_gradient_cfg c = cfg(3, 100, 20);
    lv_gradient_init(&g, &c);
    uint64_t now = SEC;
    feed(&g, &now, 30, 10, 0, 20, 0); /* rtt 0 */
    T_CHECK(sane(&g));
    T_CHECK(lv_gradient_limit(&g) >= 20);       /* rtt 0 is not "infinitely fast, so slow down" */
    feed(&g, &now, 30, 10, UINT64_MAX, 100, 0); /* huge */
    T_CHECK(sane(&g));
    feed(&g, &now, 30, 10, 0, 100, 0);
    T_CHECK(sane(&g));
    feed(&g, &now, 30, 10, 10 * MS, 0, 0); /* inflight 0 */
    T_CHECK(sane(&g));
    feed(&g, &now, 30, 10, UINT64_MAX, UINT32_MAX, 0);
    T_CHECK(sane(&g));
    /* a clock that goes backwards, or stands still */
    for (int i = 0; i < 1000; i++)
        lv_gradient_sample(&g, SEC - (uint64_t)i, 10 * MS, 50, false);
    for (int i = 0; i < 1000; i++)
        lv_gradient_sample(&g, 0, UINT64_MAX, 50, i % 2);
    T_CHECK(sane(&g));
    /* nonsense settings are replaced */
    struct lv_gradient_cfg bad = cfg(5, 10, 7);
    bad.smoothing = NAN;
    bad.tolerance = -1;
    bad.drop_backoff = 2;
    bad.long_window = 0;
    bad.window_min_samples = 0;
    bad.window_min_ns = 5 * SEC;
    bad.window_max_ns = 1;
    lv_gradient_init(&g, &bad);
    T_CHECK(g.c.smoothing == 0.2 && g.c.tolerance == 1.5 && g.c.drop_backoff == 0.9);
    T_CHECK(g.c.window_max_ns == 5 * SEC && g.c.window_min_samples == 1);
    now = SEC;
    feed(&g, &now, 100, 10, 10 * MS, 10, 0);
    T_CHECK(sane(&g));
}

/* Windows: one slow request among fast ones in a window does not move the limit much; an
 * update needs window_min_samples samples and the window's length. */
T_TEST(windows_aggregate)
{
    struct lv_gradient g;
    struct lv_gradient_cfg c = cfg(5, 200, 100);
    lv_gradient_init(&g, &c);
    uint64_t now = SEC;
    for (int i = 0; i < 9; i++)
        lv_gradient_sample(&g, now += SEC, 10 * MS, 100, false);
    T_CHECK_INT(g.updates, 0); /* 9 samples: not yet, however long */
    lv_gradient_sample(&g, now += SEC, 10 * MS, 100, false);
    T_CHECK_INT(g.updates, 1);
    /* 10 samples within 1 ms: the window (>= 100 ms) is not over */
    for (int i = 0; i < 10; i++)
        lv_gradient_sample(&g, now += 100000, 10 * MS, 100, false);
    T_CHECK_INT(g.updates, 1);
    /* warm the baseline, then one 1 s outlier among 50 samples of 10 ms */
    feed(&g, &now, 20, 10, 10 * MS, 100, 0);
    c.window_min_samples = 50;
    lv_gradient_configure(&g, &c);
    feed(&g, &now, 2, 50, 10 * MS, 150, 0);
    double before = g.limit;
    for (int i = 0; i < 50; i++) {
        now += 20 * MS;
        lv_gradient_sample(&g, now, i == 25 ? SEC : 10 * MS, 150, false);
    }
    T_CHECK(g.limit >= before * 0.9);
}

int main(void)
{
    trace = getenv("GRADIENT_TRACE") != NULL;
    T_RUN(constant_latency_grows_to_max);
    T_RUN(constant_latency_app_limited_stays);
    T_RUN(knee_converges_near_capacity);
    T_RUN(knee_from_floor);
    T_RUN(spike_falls_then_recovers);
    T_RUN(permanent_slowdown_rebases);
    T_RUN(capacity_drop_and_back);
    T_RUN(probes);
    T_RUN(drops_reduce_limit);
    T_RUN(clamps);
    T_RUN(degenerate_samples);
    T_RUN(windows_aggregate);
    T_DONE();
}
