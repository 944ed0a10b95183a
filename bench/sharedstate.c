/*
 * bench/sharedstate.c: what sharing a route's policy state between worker threads costs per
 * request (bench/README.md). A route's retry budget and circuit breaker (README "Resilience
 * policies") are guarded by one lock per route; per request a worker does
 *
 *   lock; lv_budget_on_request; lv_breaker_admit; unlock;
 *   ... (the exchange; nothing here) ...
 *   lock; lv_breaker_record; [every RETRY_EVERY-th request: lv_budget_try_retry]; unlock
 *
 * with a loop clock (`now` in ms, read from CLOCK_MONOTONIC every CLOCK_EVERY requests, as an
 * event loop caches its time). Every thread does the same fixed number of requests; the table
 * gives the wall time, the requests per second of all threads together, and the process CPU
 * time per request (what the machine pays), for:
 *
 *   nolock   1 thread, no lock: the cost of the policy calls alone
 *   mutex    one pthread_mutex_t per route
 *   spin     a test-and-test-and-set spinlock per route (atomic, relaxed reads while held)
 *   sharded  only a sharded budget's request counter: one cache-line-aligned counter per
 *            thread, each written by its own thread only, summed over all threads on the
 *            retry decision (every RETRY_EVERY-th request)
 *   atomic   the same counter as one shared atomic (fetch-and-add on one cache line)
 *
 * with 1, 2, 4 and 16 threads on ONE route (the worst case: the same lock and counters), and
 * 2 threads over 2 routes and 16 over 16 (no sharing). Threads are not pinned; on a machine with
 * fewer CPUs than threads, waiting includes being descheduled, as it would in levee.
 *
 *   bench_sharedstate [-n ITERATIONS_PER_THREAD] [-r ROUNDS]     (medians over ROUNDS)
 */
#include <errno.h>
#include <pthread.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "policy/breaker.h"
#include "policy/budget.h"

#define CACHE_LINE  64
#define MAX_THREADS 64
#define RETRY_EVERY 32  /* a retry decision on ~3% of requests */
#define FAIL_EVERY  64  /* a failed attempt on ~1.6% (the breaker stays closed) */
#define CLOCK_EVERY 256 /* loop-time refresh */

enum lock_kind { NOLOCK, MUTEX, SPIN, SHARDED, ATOMIC };
static const char *const kind_name[] = {"nolock", "mutex", "spin", "sharded", "atomic"};

struct route {
    alignas(CACHE_LINE) pthread_mutex_t mu;
    alignas(CACHE_LINE) atomic_bool spin;
    alignas(CACHE_LINE) struct lv_budget budget;
    struct lv_breaker breaker;
    uint64_t held; /* sections entered, counted under the lock: checks the lock */
    alignas(CACHE_LINE) atomic_uint_fast64_t requests; /* ATOMIC */
};

struct shard {
    alignas(CACHE_LINE) atomic_uint_fast64_t requests; /* written by its thread only */
};

struct run {
    enum lock_kind kind;
    unsigned nthreads, nroutes;
    uint64_t iters;
    struct route *routes;
    struct shard *shards;
    pthread_barrier_t start;
};

struct worker {
    struct run *run;
    unsigned id;
    uint64_t allowed, retried; /* results, so the calls cannot be optimised away */
};

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t cpu_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static inline void spin_lock(atomic_bool *l)
{
    for (;;) {
        if (!atomic_exchange_explicit(l, true, memory_order_acquire))
            return;
        while (atomic_load_explicit(l, memory_order_relaxed))
            cpu_relax();
    }
}

static inline void spin_unlock(atomic_bool *l)
{
    atomic_store_explicit(l, false, memory_order_release);
}

static inline void lock(enum lock_kind k, struct route *r)
{
    if (k == MUTEX)
        pthread_mutex_lock(&r->mu);
    else if (k == SPIN)
        spin_lock(&r->spin);
}

static inline void unlock(enum lock_kind k, struct route *r)
{
    if (k == MUTEX)
        pthread_mutex_unlock(&r->mu);
    else if (k == SPIN)
        spin_unlock(&r->spin);
}

static void *work_policy(struct worker *w)
{
    struct run *run = w->run;
    struct route *r = &run->routes[w->id % run->nroutes];
    enum lock_kind k = run->kind;
    uint64_t now = mono_ns() / 1000000;
    for (uint64_t i = 0; i < run->iters; i++) {
        if (i % CLOCK_EVERY == 0)
            now = mono_ns() / 1000000;
        lock(k, r);
        r->held++;
        lv_budget_on_request(&r->budget, now);
        enum lv_breaker_admit a = lv_breaker_admit(&r->breaker, now, NULL);
        unlock(k, r);
        w->allowed += a != LV_BREAKER_REJECT;
        lock(k, r);
        lv_breaker_record(&r->breaker, now, i % FAIL_EVERY == FAIL_EVERY - 1, false,
                          a == LV_BREAKER_PROBE);
        if (i % RETRY_EVERY == 0)
            w->retried += lv_budget_try_retry(&r->budget, now);
        unlock(k, r);
    }
    return NULL;
}

static void *work_counter(struct worker *w)
{
    struct run *run = w->run;
    for (uint64_t i = 0; i < run->iters; i++) {
        uint64_t total = 0;
        if (run->kind == SHARDED) {
            atomic_uint_fast64_t *mine = &run->shards[w->id].requests;
            atomic_store_explicit(mine, atomic_load_explicit(mine, memory_order_relaxed) + 1,
                                  memory_order_relaxed);
            if (i % RETRY_EVERY == 0)
                for (unsigned t = 0; t < run->nthreads; t++)
                    total += atomic_load_explicit(&run->shards[t].requests, memory_order_relaxed);
        } else {
            struct route *r = &run->routes[w->id % run->nroutes];
            atomic_fetch_add_explicit(&r->requests, 1, memory_order_relaxed);
            if (i % RETRY_EVERY == 0)
                total = atomic_load_explicit(&r->requests, memory_order_relaxed);
        }
        w->retried += total & 1;
    }
    return NULL;
}

static void *worker_main(void *arg)
{
    struct worker *w = arg;
    pthread_barrier_wait(&w->run->start);
    if (w->run->kind == SHARDED || w->run->kind == ATOMIC)
        return work_counter(w);
    return work_policy(w);
}

struct result {
    double wall_ns, cpu_ns;
};

static void die(const char *what, int err)
{
    fprintf(stderr, "bench_sharedstate: %s: %s\n", what, strerror(err));
    exit(1);
}

static struct result run_once(enum lock_kind kind, unsigned nthreads, unsigned nroutes,
                              uint64_t iters)
{
    static const struct lv_breaker_params bp = {
        .failure_ratio = 0.5,
        .min_requests = 20,
        .window_ms = 10000,
        .consecutive_failures = 5,
        .open_for_ms = 5000,
        .max_open_for_ms = 60000,
        .half_open_requests = 1,
    };
    struct run run = {.kind = kind, .nthreads = nthreads, .nroutes = nroutes, .iters = iters};
    struct worker ws[MAX_THREADS];
    pthread_t th[MAX_THREADS];
    int err;
    uint64_t now = mono_ns() / 1000000;

    run.routes = aligned_alloc(CACHE_LINE, sizeof(struct route) * nroutes);
    run.shards = aligned_alloc(CACHE_LINE, sizeof(struct shard) * nthreads);
    if (!run.routes || !run.shards)
        die("aligned_alloc", ENOMEM);
    for (unsigned i = 0; i < nroutes; i++) {
        struct route *r = &run.routes[i];
        memset(r, 0, sizeof(*r));
        pthread_mutex_init(&r->mu, NULL);
        atomic_init(&r->spin, false);
        atomic_init(&r->requests, 0);
        lv_budget_init(&r->budget, 0.2, 10, 10000, now);
        lv_breaker_init(&r->breaker, &bp, now);
    }
    for (unsigned i = 0; i < nthreads; i++)
        atomic_init(&run.shards[i].requests, 0);
    if ((err = pthread_barrier_init(&run.start, NULL, nthreads + 1)))
        die("pthread_barrier_init", err);
    for (unsigned i = 0; i < nthreads; i++) {
        ws[i] = (struct worker){.run = &run, .id = i};
        if ((err = pthread_create(&th[i], NULL, worker_main, &ws[i])))
            die("pthread_create", err);
    }
    uint64_t c0 = cpu_ns(), t0 = mono_ns();
    pthread_barrier_wait(&run.start);
    for (unsigned i = 0; i < nthreads; i++)
        pthread_join(th[i], NULL);
    uint64_t t1 = mono_ns(), c1 = cpu_ns();

    uint64_t allowed = 0;
    for (unsigned i = 0; i < nthreads; i++)
        allowed += ws[i].allowed;
    if (kind != SHARDED && kind != ATOMIC && allowed != iters * nthreads) {
        fprintf(stderr, "bench_sharedstate: %s: the breaker rejected %llu requests\n",
                kind_name[kind], (unsigned long long)(iters * nthreads - allowed));
        exit(1);
    }
    uint64_t held = 0;
    for (unsigned i = 0; i < nroutes; i++)
        held += run.routes[i].held;
    if (kind != SHARDED && kind != ATOMIC && held != iters * nthreads) {
        fprintf(stderr, "bench_sharedstate: %s: %llu of %llu locked increments kept\n",
                kind_name[kind], (unsigned long long)held, (unsigned long long)(iters * nthreads));
        exit(1);
    }
    pthread_barrier_destroy(&run.start);
    for (unsigned i = 0; i < nroutes; i++)
        pthread_mutex_destroy(&run.routes[i].mu);
    free(run.routes);
    free(run.shards);
    return (struct result){.wall_ns = (double)(t1 - t0), .cpu_ns = (double)(c1 - c0)};
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv)
{
    uint64_t iters = 1000000;
    unsigned repeats = 5;
    int c;
    while ((c = getopt(argc, argv, "n:r:")) != -1) {
        if (c == 'n')
            iters = strtoull(optarg, NULL, 10);
        else if (c == 'r')
            repeats = (unsigned)strtoul(optarg, NULL, 10);
        else {
            fprintf(stderr, "usage: %s [-n ITERATIONS_PER_THREAD] [-r ROUNDS]\n", argv[0]);
            return 2;
        }
    }
    if (iters == 0 || repeats == 0 || repeats > 99) {
        fprintf(stderr, "bench_sharedstate: -n and -r must be positive (-r at most 99)\n");
        return 2;
    }

    static const struct {
        enum lock_kind kind;
        unsigned threads, routes;
    } cases[] = {
        {NOLOCK, 1, 1},  {MUTEX, 1, 1},    {MUTEX, 2, 1},  {MUTEX, 4, 1},   {MUTEX, 16, 1},
        {MUTEX, 2, 2},   {MUTEX, 16, 16},  {SPIN, 1, 1},   {SPIN, 2, 1},    {SPIN, 4, 1},
        {SPIN, 16, 1},   {SPIN, 2, 2},     {SPIN, 16, 16}, {SHARDED, 1, 1}, {SHARDED, 2, 1},
        {SHARDED, 4, 1}, {SHARDED, 16, 1}, {ATOMIC, 1, 1}, {ATOMIC, 2, 1},  {ATOMIC, 4, 1},
        {ATOMIC, 16, 1}, {ATOMIC, 16, 16},
    };
    printf("# bench_sharedstate: %llu requests per thread, %u rounds, %ld CPUs online\n",
           (unsigned long long)iters, repeats, sysconf(_SC_NPROCESSORS_ONLN));
    printf("# per request: lock; budget_on_request; breaker_admit; unlock; lock; breaker_record;"
           " (1/%d: budget_try_retry); unlock\n",
           RETRY_EVERY);
    printf("# sharded/atomic: the request counter only (summed or read on 1/%d requests)\n",
           RETRY_EVERY);
    printf("# medians over rounds (each round runs every case once); wall ns/req = wall time / "
           "all requests;\n# cpu ns/req = process CPU time / all requests (cpu min: the least "
           "of the rounds); x nolock = cpu ns/req over nolock's\n");
    printf("%-8s %7s %6s %10s %11s %12s %11s %9s %9s\n", "lock", "threads", "routes", "wall ms",
           "Mreq/s", "wall ns/req", "cpu ns/req", "cpu min", "x nolock");
    run_once(NOLOCK, 1, 1, iters); /* warm-up: page faults, clock ramp-up; not reported */
    /* Rounds: every case once per round, so that the machine's drift hits all cases alike. */
    enum { NCASES = sizeof(cases) / sizeof(cases[0]) };
    static double wall[NCASES][99], cpu[NCASES][99];
    for (unsigned r = 0; r < repeats; r++) {
        for (size_t i = 0; i < NCASES; i++) {
            struct result res = run_once(cases[i].kind, cases[i].threads, cases[i].routes, iters);
            wall[i][r] = res.wall_ns;
            cpu[i][r] = res.cpu_ns;
        }
    }
    double base_cpu = 0;
    for (size_t i = 0; i < NCASES; i++) {
        qsort(wall[i], repeats, sizeof(double), cmp_double);
        qsort(cpu[i], repeats, sizeof(double), cmp_double);
        double total = (double)iters * cases[i].threads;
        double wmed = wall[i][repeats / 2], cmed = cpu[i][repeats / 2] / total;
        double cmin = cpu[i][0] / total;
        if (cases[i].kind == NOLOCK)
            base_cpu = cmed;
        printf("%-8s %7u %6u %10.1f %11.2f %12.1f %11.1f %9.1f %9.2f\n", kind_name[cases[i].kind],
               cases[i].threads, cases[i].routes, wmed / 1e6, total / wmed * 1e3, wmed / total,
               cmed, cmin, base_cpu > 0 ? cmed / base_cpu : 0);
    }
    return 0;
}
