#include "obs/metrics.h"
#include "t.h"

#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

/* Renders `m` into a NUL-terminated string the caller frees. */
static char *render(struct lv_metrics *m)
{
    struct lv_buf b = LV_BUF_INIT;
    lv_metrics_render(m, &b);
    lv_buf_putc(&b, '\0');
    return b.data;
}

#define CHECK_RENDER(m, want)                                                                      \
    do {                                                                                           \
        char *got_ = render(m);                                                                    \
        T_CHECK_STR(got_, want);                                                                   \
        free(got_);                                                                                \
    } while (0)

static const char *const route_code[] = {"route", "code", NULL};
static const char *const route_only[] = {"route", NULL};

T_TEST(counter_with_labels)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f = lv_metrics_family(m, "levee_requests_total", "Requests served.",
                                                   LV_METRIC_COUNTER, route_code, NULL, 0);
    struct lv_metric *a = lv_metric_series(f, (const char *[]){"pay", "200"});
    struct lv_metric *b = lv_metric_series(f, (const char *[]){"pay", "503"});
    struct lv_metric *c = lv_metric_series(f, (const char *[]){"users", "200"});
    lv_metric_add(a, 1);
    lv_metric_add(a, 2);
    lv_metric_add(b, 1);
    lv_metric_add(c, 0.5);
    lv_metric_add(c, -4); /* counters never go down */
    lv_metric_add(c, NAN);
    T_CHECK(lv_metric_series(f, (const char *[]){"pay", "200"}) == a);
    T_CHECK(lv_metric_value(a) == 3);
    T_CHECK(lv_metric_value(c) == 0.5);
    CHECK_RENDER(m, "# HELP levee_requests_total Requests served.\n"
                    "# TYPE levee_requests_total counter\n"
                    "levee_requests_total{route=\"pay\",code=\"200\"} 3\n"
                    "levee_requests_total{route=\"pay\",code=\"503\"} 1\n"
                    "levee_requests_total{route=\"users\",code=\"200\"} 0.5\n");
    lv_metrics_destroy(m);
}

T_TEST(gauge_values_and_families_in_order)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *g =
        lv_metrics_family(m, "levee_config_generation", "", LV_METRIC_GAUGE, NULL, NULL, 0);
    struct lv_metric_family *h =
        lv_metrics_family(m, "x:ratio", "a \\ b\nc \"q\"", LV_METRIC_GAUGE, route_only, NULL, 0);
    /* Families with labels and no series are left out; a label-less one shows 0 at once. */
    lv_metrics_family(m, "levee_unused", "never used", LV_METRIC_COUNTER, route_only, NULL, 0);
    CHECK_RENDER(m, "# TYPE levee_config_generation gauge\n"
                    "levee_config_generation 0\n");

    struct lv_metric *s = lv_metric_series(g, NULL);
    lv_metric_set(s, 7);
    lv_metric_add(s, -10);
    T_CHECK(lv_metric_value(s) == -3);
    lv_metric_set(lv_metric_series(h, (const char *[]){"a"}), 0.1);
    lv_metric_set(lv_metric_series(h, (const char *[]){"b"}), 1e21);
    lv_metric_set(lv_metric_series(h, (const char *[]){"c"}), -INFINITY);
    lv_metric_set(lv_metric_series(h, (const char *[]){"d"}), NAN);
    lv_metric_set(lv_metric_series(h, (const char *[]){"e"}), 1.0 / 3);
    lv_metric_set(lv_metric_series(h, (const char *[]){"f"}), -0.0);
    CHECK_RENDER(m, "# TYPE levee_config_generation gauge\n"
                    "levee_config_generation -3\n"
                    "# HELP x:ratio a \\\\ b\\nc \"q\"\n"
                    "# TYPE x:ratio gauge\n"
                    "x:ratio{route=\"a\"} 0.1\n"
                    "x:ratio{route=\"b\"} 1e+21\n"
                    "x:ratio{route=\"c\"} -Inf\n"
                    "x:ratio{route=\"d\"} NaN\n"
                    "x:ratio{route=\"e\"} 0.33333333333333331\n"
                    "x:ratio{route=\"f\"} 0\n");
    lv_metrics_destroy(m);
}

T_TEST(label_values_escaped)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f =
        lv_metrics_family(m, "t_total", "h", LV_METRIC_COUNTER, route_code, NULL, 0);
    lv_metric_add(lv_metric_series(f, (const char *[]){"a\"b\\c\nd", "x"}), 1);
    lv_metric_add(lv_metric_series(f, (const char *[]){NULL, "\\"}), 2);
    CHECK_RENDER(m, "# HELP t_total h\n"
                    "# TYPE t_total counter\n"
                    "t_total{route=\"a\\\"b\\\\c\\nd\",code=\"x\"} 1\n"
                    "t_total{route=\"\",code=\"\\\\\"} 2\n");
    /* NULL is "", and the raw (unescaped) values are what lookups compare. */
    T_CHECK(lv_metric_value(lv_metric_series(f, (const char *[]){"", "\\"})) == 2);
    T_CHECK(lv_metric_value(lv_metric_series(f, (const char *[]){"a\"b\\c\nd", "x"})) == 1);
    lv_metrics_destroy(m);
}

T_TEST(label_boundaries_distinct)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f =
        lv_metrics_family(m, "t_total", "h", LV_METRIC_COUNTER, route_code, NULL, 0);
    struct lv_metric *a = lv_metric_series(f, (const char *[]){"ab", ""});
    struct lv_metric *b = lv_metric_series(f, (const char *[]){"a", "b"});
    struct lv_metric *c = lv_metric_series(f, (const char *[]){"", "ab"});
    T_CHECK(a != b && b != c && a != c);
    lv_metrics_destroy(m);
}

T_TEST(histogram_buckets)
{
    struct lv_metrics *m = lv_metrics_create();
    static const double bk[] = {0.1, 0.5, 1, INFINITY};
    struct lv_metric_family *f =
        lv_metrics_family(m, "lat_seconds", "Latency.", LV_METRIC_HISTOGRAM, route_only, bk, 4);
    struct lv_metric *s = lv_metric_series(f, (const char *[]){"r"});
    lv_metric_observe(s, 0.05); /* bucket 0.1 */
    lv_metric_observe(s, 0.1);  /* le is inclusive: bucket 0.1 */
    lv_metric_observe(s, 0.3);  /* bucket 0.5 */
    lv_metric_observe(s, 7);    /* only +Inf */
    lv_metric_observe(s, NAN);  /* ignored */
    T_CHECK_INT(lv_metric_bucket(s, 0), 2);
    T_CHECK_INT(lv_metric_bucket(s, 1), 1);
    T_CHECK_INT(lv_metric_bucket(s, 2), 0);
    T_CHECK_INT(lv_metric_bucket(s, 3), 1);
    T_CHECK_INT(lv_metric_bucket(s, 4), 0);
    T_CHECK(lv_metric_value(s) == 4);
    T_CHECK(fabs(lv_metric_sum(s) - 7.45) < 1e-12);
    struct lv_metric *e = lv_metric_series(f, (const char *[]){"empty"});
    (void)e;

    struct lv_metric_family *nolabel =
        lv_metrics_family(m, "plain", "", LV_METRIC_HISTOGRAM, NULL, (const double[]){2}, 1);
    lv_metric_observe(lv_metric_series(nolabel, NULL), 2);
    lv_metric_observe(lv_metric_series(nolabel, NULL), 3);

    char *got = render(m);
    char want[1024];
    snprintf(want, sizeof(want),
             "# HELP lat_seconds Latency.\n"
             "# TYPE lat_seconds histogram\n"
             "lat_seconds_bucket{route=\"r\",le=\"0.1\"} 2\n"
             "lat_seconds_bucket{route=\"r\",le=\"0.5\"} 3\n"
             "lat_seconds_bucket{route=\"r\",le=\"1\"} 3\n"
             "lat_seconds_bucket{route=\"r\",le=\"+Inf\"} 4\n"
             "lat_seconds_sum{route=\"r\"} %.15g\n"
             "lat_seconds_count{route=\"r\"} 4\n"
             "lat_seconds_bucket{route=\"empty\",le=\"0.1\"} 0\n"
             "lat_seconds_bucket{route=\"empty\",le=\"0.5\"} 0\n"
             "lat_seconds_bucket{route=\"empty\",le=\"1\"} 0\n"
             "lat_seconds_bucket{route=\"empty\",le=\"+Inf\"} 0\n"
             "lat_seconds_sum{route=\"empty\"} 0\n"
             "lat_seconds_count{route=\"empty\"} 0\n"
             "# TYPE plain histogram\n"
             "plain_bucket{le=\"2\"} 1\n"
             "plain_bucket{le=\"+Inf\"} 2\n"
             "plain_sum 5\n"
             "plain_count 2\n",
             lv_metric_sum(s));
    T_CHECK_STR(got, want);
    free(got);
    lv_metrics_destroy(m);
}

T_TEST(histogram_default_buckets)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f =
        lv_metrics_family(m, "levee_request_duration_seconds", "Request duration.",
                          LV_METRIC_HISTOGRAM, route_only, NULL, 0);
    struct lv_metric *s = lv_metric_series(f, (const char *[]){"r"});
    lv_metric_observe(s, 0.003);
    lv_metric_observe(s, 0.25);
    lv_metric_observe(s, 11);
    CHECK_RENDER(m, "# HELP levee_request_duration_seconds Request duration.\n"
                    "# TYPE levee_request_duration_seconds histogram\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.001\"} 0\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.0025\"} 0\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.005\"} 1\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.01\"} 1\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.025\"} 1\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.05\"} 1\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.1\"} 1\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.25\"} 2\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"0.5\"} 2\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"1\"} 2\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"2.5\"} 2\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"5\"} 2\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"10\"} 2\n"
                    "levee_request_duration_seconds_bucket{route=\"r\",le=\"+Inf\"} 3\n"
                    "levee_request_duration_seconds_sum{route=\"r\"} 11.253\n"
                    "levee_request_duration_seconds_count{route=\"r\"} 3\n");
    lv_metrics_destroy(m);
}

struct cb_state {
    int calls;
    struct lv_metric *gauge;
    double next;
};

static void on_render(struct lv_metrics *m, void *arg)
{
    struct cb_state *st = arg;
    (void)m;
    st->calls++;
    lv_metric_set(st->gauge, st->next);
}

T_TEST(on_render_callback)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f = lv_metrics_family(m, "levee_breaker_state", "0 closed, 1 open",
                                                   LV_METRIC_GAUGE, route_only, NULL, 0);
    struct cb_state st = {0, lv_metric_series(f, (const char *[]){"pay"}), 2};
    lv_metrics_on_render(m, on_render, &st);
    CHECK_RENDER(m, "# HELP levee_breaker_state 0 closed, 1 open\n"
                    "# TYPE levee_breaker_state gauge\n"
                    "levee_breaker_state{route=\"pay\"} 2\n");
    T_CHECK_INT(st.calls, 1);
    st.next = 1;
    lv_metrics_off_render(m, on_render, (void *)1); /* another arg: not removed */
    CHECK_RENDER(m, "# HELP levee_breaker_state 0 closed, 1 open\n"
                    "# TYPE levee_breaker_state gauge\n"
                    "levee_breaker_state{route=\"pay\"} 1\n");
    T_CHECK_INT(st.calls, 2);
    lv_metrics_off_render(m, on_render, &st);
    st.next = 0;
    CHECK_RENDER(m, "# HELP levee_breaker_state 0 closed, 1 open\n"
                    "# TYPE levee_breaker_state gauge\n"
                    "levee_breaker_state{route=\"pay\"} 1\n");
    T_CHECK_INT(st.calls, 2);
    lv_metrics_destroy(m);
}

T_TEST(remove_hides_and_revives)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f =
        lv_metrics_family(m, "r_total", "h", LV_METRIC_COUNTER, route_code, NULL, 0);
    struct lv_metric *a200 = lv_metric_series(f, (const char *[]){"a", "200"});
    struct lv_metric *b200 = lv_metric_series(f, (const char *[]){"b", "200"});
    struct lv_metric *a500 = lv_metric_series(f, (const char *[]){"a", "500"});
    lv_metric_add(a200, 5);
    lv_metric_add(b200, 6);
    lv_metric_add(a500, 7);
    lv_metric_family_remove(f, "route", "a");
    CHECK_RENDER(m, "# HELP r_total h\n"
                    "# TYPE r_total counter\n"
                    "r_total{route=\"b\",code=\"200\"} 6\n");
    /* A request still holding the pointer may update it safely. */
    lv_metric_add(a500, 1);
    lv_metric_family_remove(f, "code", "200");
    CHECK_RENDER(m, "");
    lv_metric_family_remove(f, "route", "nope");
    /* Asking again brings back the same series, with its value, in its old place. */
    T_CHECK(lv_metric_series(f, (const char *[]){"a", "500"}) == a500);
    T_CHECK(lv_metric_series(f, (const char *[]){"b", "200"}) == b200);
    CHECK_RENDER(m, "# HELP r_total h\n"
                    "# TYPE r_total counter\n"
                    "r_total{route=\"b\",code=\"200\"} 6\n"
                    "r_total{route=\"a\",code=\"500\"} 8\n");
    lv_metrics_destroy(m);
}

T_TEST(reregister_returns_same_family)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f =
        lv_metrics_family(m, "r_total", "h", LV_METRIC_COUNTER, route_only, NULL, 0);
    struct lv_metric *s = lv_metric_series(f, (const char *[]){"a"});
    lv_metric_add(s, 1);
    T_CHECK(lv_metrics_family(m, "r_total", "other help", LV_METRIC_COUNTER, route_only, NULL, 0) ==
            f);
    T_CHECK(lv_metrics_find(m, "r_total") == f);
    T_CHECK(lv_metrics_find(m, "r") == NULL);
    T_CHECK(lv_metric_series(f, (const char *[]){"a"}) == s);
    T_CHECK(lv_metric_value(s) == 1);
    struct lv_metric_family *h1 =
        lv_metrics_family(m, "h_seconds", "", LV_METRIC_HISTOGRAM, NULL, NULL, 0);
    struct lv_metric_family *h2 =
        lv_metrics_family(m, "h_seconds", "", LV_METRIC_HISTOGRAM, NULL, lv_metric_default_buckets,
                          LV_METRIC_DEFAULT_NBUCKETS);
    T_CHECK(h1 == h2);
    lv_metrics_destroy(m);
}

T_TEST(series_pointers_stable)
{
    enum { N = 5000 };
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *f =
        lv_metrics_family(m, "many_total", "h", LV_METRIC_COUNTER, route_code, NULL, 0);
    static struct lv_metric *ptr[N];
    char route[32], code[32];
    for (int i = 0; i < N; i++) {
        snprintf(route, sizeof(route), "r%d", i / 10);
        snprintf(code, sizeof(code), "%d", i % 10);
        ptr[i] = lv_metric_series(f, (const char *[]){route, code});
        lv_metric_add(ptr[i], i);
    }
    int same = 0, right = 0;
    for (int i = 0; i < N; i++) {
        snprintf(route, sizeof(route), "r%d", i / 10);
        snprintf(code, sizeof(code), "%d", i % 10);
        struct lv_metric *s = lv_metric_series(f, (const char *[]){route, code});
        same += s == ptr[i];
        right += lv_metric_value(ptr[i]) == i;
    }
    T_CHECK_INT(same, N);
    T_CHECK_INT(right, N);
    /* Creation order survives the table growing. */
    char *out = render(m);
    const char *first = strstr(out, "many_total{route=\"r0\",code=\"0\"} 0\n");
    const char *second = strstr(out, "many_total{route=\"r0\",code=\"1\"} 1\n");
    const char *last = strstr(out, "many_total{route=\"r499\",code=\"9\"} 4999\n");
    T_CHECK(first && second && last && first < second && second < last);
    free(out);
    lv_metrics_destroy(m);
}

/* ---- shards: one registry, each thread writing its own shard, readers summing them */

/* Each shard adds its part; every reader and the rendered text show the sums. */
T_TEST(shards_sum)
{
    struct lv_metrics *m = lv_metrics_create_sharded(3);
    struct lv_metric_family *fc =
        lv_metrics_family(m, "s_total", "", LV_METRIC_COUNTER, route_only, NULL, 0);
    struct lv_metric_family *fg =
        lv_metrics_family(m, "s_gauge", "", LV_METRIC_GAUGE, NULL, NULL, 0);
    struct lv_metric_family *fh =
        lv_metrics_family(m, "s_seconds", "", LV_METRIC_HISTOGRAM, NULL, (const double[]){1, 2}, 2);
    struct lv_metric *c = lv_metric_series(fc, (const char *[]){"r"});
    struct lv_metric *g = lv_metric_series(fg, NULL);
    struct lv_metric *h = lv_metric_series(fh, NULL);
    for (unsigned k = 0; k < 3; k++) {
        lv_metrics_bind_thread(k);
        lv_metric_add(c, k + 1);
        lv_metric_add(g, -0.5 * (k + 1));
        lv_metric_observe(h, k); /* 0 and 1 in le="1", 2 in le="2" */
        lv_metric_observe(h, 10);
    }
    lv_metrics_bind_thread(0);
    T_CHECK(lv_metric_value(c) == 6);
    T_CHECK(lv_metric_value(g) == -3);
    T_CHECK(lv_metric_value(h) == 6);
    T_CHECK(lv_metric_sum(h) == 33);
    T_CHECK_INT(lv_metric_bucket(h, 0), 2);
    T_CHECK_INT(lv_metric_bucket(h, 1), 1);
    T_CHECK_INT(lv_metric_bucket(h, 2), 3);
    CHECK_RENDER(m, "# TYPE s_total counter\n"
                    "s_total{route=\"r\"} 6\n"
                    "# TYPE s_gauge gauge\n"
                    "s_gauge -3\n"
                    "# TYPE s_seconds histogram\n"
                    "s_seconds_bucket{le=\"1\"} 2\n"
                    "s_seconds_bucket{le=\"2\"} 3\n"
                    "s_seconds_bucket{le=\"+Inf\"} 6\n"
                    "s_seconds_sum 33\n"
                    "s_seconds_count 6\n");
    lv_metrics_destroy(m);
}

/* A set value is kept once for the registry: a gauge only ever set reads the last value set,
 * whichever shard set it; adds from other shards stay on top; a set replaces what the
 * setting thread itself added. */
T_TEST(set_gauge_semantics)
{
    struct lv_metrics *m = lv_metrics_create_sharded(2);
    struct lv_metric *g =
        lv_metric_series(lv_metrics_family(m, "g", "", LV_METRIC_GAUGE, NULL, NULL, 0), NULL);
    struct lv_metric *c = lv_metric_series(
        lv_metrics_family(m, "c_total", "", LV_METRIC_COUNTER, NULL, NULL, 0), NULL);
    lv_metrics_bind_thread(1);
    lv_metric_set(g, 7);
    lv_metric_set(c, 10);
    lv_metrics_bind_thread(0);
    lv_metric_set(g, 4);
    lv_metric_set(c, 12);
    T_CHECK(lv_metric_value(g) == 4); /* not 11 */
    T_CHECK(lv_metric_value(c) == 12);
    CHECK_RENDER(m, "# TYPE g gauge\n"
                    "g 4\n"
                    "# TYPE c_total counter\n"
                    "c_total 12\n");

    lv_metrics_bind_thread(1);
    lv_metric_add(g, 2);
    T_CHECK(lv_metric_value(g) == 6);
    lv_metrics_bind_thread(0);
    lv_metric_set(g, 5); /* shard 1's 2 stays */
    T_CHECK(lv_metric_value(g) == 7);
    lv_metrics_bind_thread(1);
    lv_metric_set(g, 1); /* replaces shard 1's own 2 */
    T_CHECK(lv_metric_value(g) == 1);
    lv_metric_add(g, -10);
    lv_metric_set(g, 3);
    T_CHECK(lv_metric_value(g) == 3);
    lv_metric_set(g, -0.0);
    T_CHECK(signbit(lv_metric_value(g)) && lv_metric_value(g) == 0);
    lv_metric_set(g, NAN);
    T_CHECK(isnan(lv_metric_value(g)));
    lv_metrics_bind_thread(0);
    lv_metrics_destroy(m);
}

struct render_job {
    struct lv_metrics *m;
    unsigned shard;
    char *out;
};

static void *render_on_thread(void *arg)
{
    struct render_job *j = arg;
    lv_metrics_bind_thread(j->shard);
    j->out = render(j->m);
    return NULL;
}

/* The on-render callbacks run on whichever thread renders; what they set is not counted once
 * per thread that ever rendered. */
T_TEST(set_from_renders_on_any_thread)
{
    struct lv_metrics *m = lv_metrics_create_sharded(3);
    struct lv_metric_family *f =
        lv_metrics_family(m, "levee_breaker_state", "", LV_METRIC_GAUGE, route_only, NULL, 0);
    struct cb_state st = {0, lv_metric_series(f, (const char *[]){"pay"}), 0};
    lv_metrics_on_render(m, on_render, &st);
    for (int i = 0; i < 6; i++) {
        st.next = i + 1;
        struct render_job j = {m, (unsigned)i % 3, NULL};
        pthread_t t;
        T_CHECK(pthread_create(&t, NULL, render_on_thread, &j) == 0);
        pthread_join(t, NULL);
        char want[128];
        snprintf(want, sizeof(want),
                 "# TYPE levee_breaker_state gauge\nlevee_breaker_state{route=\"pay\"} %d\n",
                 i + 1);
        T_CHECK_STR(j.out, want);
        free(j.out);
    }
    T_CHECK_INT(st.calls, 6);
    T_CHECK(lv_metric_value(st.gauge) == 6);
    lv_metrics_destroy(m);
}

/* The workers stop halfway until MT_OVERLAP renders are done, so renders (and new chunks:
 * each of them makes MT_NEW_PER_RENDER series of each family) overlap their updates. */
enum {
    MT_WORKERS = 4,
    MT_ADDS = 100000,
    MT_OVERLAP = 4,
    MT_NEW_PER_RENDER = 64,
    MT_NEW_MAX = 1024
};

struct mt {
    struct lv_metrics *m;
    struct lv_metric_family *fc, *fh;
    struct lv_metric *c, *h;
    pthread_barrier_t start;
    atomic_int done;
    atomic_int renders;
    /* the renderer's findings */
    int went_down, count_mismatch, created;
};

struct mt_worker {
    struct mt *mt;
    unsigned shard;
    int lookups_wrong;
};

static void *mt_work(void *arg)
{
    struct mt_worker *w = arg;
    struct mt *mt = w->mt;
    lv_metrics_bind_thread(w->shard);
    pthread_barrier_wait(&mt->start);
    for (int i = 0; i < MT_ADDS; i++) {
        lv_metric_add(mt->c, 1);
        lv_metric_observe(mt->h, i % 4 == 0 ? 0.5 : 3); /* le="1", else only +Inf */
        if (i % 4096 == 0) /* lookups while the renderer creates series */
            w->lookups_wrong += lv_metric_series(mt->fc, (const char *[]){"w"}) != mt->c;
        if (i == MT_ADDS / 2)
            while (atomic_load(&mt->renders) < MT_OVERLAP)
                sched_yield();
    }
    atomic_fetch_add(&mt->done, 1);
    return NULL;
}

/* The number after `prefix` in `text`, or -1. */
static double sample(const char *text, const char *prefix)
{
    const char *p = strstr(text, prefix);
    return p ? strtod(p + strlen(prefix), NULL) : -1;
}

static void *mt_render(void *arg)
{
    struct mt *mt = arg;
    lv_metrics_bind_thread(MT_WORKERS); /* its own shard for the series it makes */
    pthread_barrier_wait(&mt->start);
    double last = 0;
    int finished;
    do {
        finished = atomic_load(&mt->done) == MT_WORKERS;
        char *out = render(mt->m);
        double v = sample(out, "mt_total{route=\"w\"} ");
        mt->went_down += v < last;
        last = v;
        mt->count_mismatch += sample(out, "mt_seconds_bucket{route=\"w\",le=\"+Inf\"} ") !=
                              sample(out, "mt_seconds_count{route=\"w\"} ");
        free(out);
        /* New series (new chunks) while the workers write theirs. */
        for (int i = 0; i < MT_NEW_PER_RENDER && mt->created < MT_NEW_MAX; i++) {
            char name[32];
            snprintf(name, sizeof(name), "n%d", mt->created++);
            lv_metric_add(lv_metric_series(mt->fc, (const char *[]){name}), 1);
            lv_metric_observe(lv_metric_series(mt->fh, (const char *[]){name}), 1);
        }
        atomic_fetch_add(&mt->renders, 1);
    } while (!finished);
    return NULL;
}

/* Workers each on their own shard update the same counter and histogram while another thread
 * renders and creates series: the totals come out exact, and no render goes backwards. */
T_TEST(threads_update_while_rendering)
{
    static struct mt mt;
    mt.m = lv_metrics_create_sharded(MT_WORKERS + 1);
    mt.fc = lv_metrics_family(mt.m, "mt_total", "", LV_METRIC_COUNTER, route_only, NULL, 0);
    mt.fh = lv_metrics_family(mt.m, "mt_seconds", "", LV_METRIC_HISTOGRAM, route_only,
                              (const double[]){1, 2}, 2);
    mt.c = lv_metric_series(mt.fc, (const char *[]){"w"});
    mt.h = lv_metric_series(mt.fh, (const char *[]){"w"});
    atomic_init(&mt.done, 0);
    atomic_init(&mt.renders, 0);
    pthread_barrier_init(&mt.start, NULL, MT_WORKERS + 1);
    struct mt_worker w[MT_WORKERS];
    pthread_t t[MT_WORKERS + 1];
    for (unsigned i = 0; i < MT_WORKERS; i++) {
        w[i] = (struct mt_worker){&mt, i, 0};
        T_CHECK(pthread_create(&t[i], NULL, mt_work, &w[i]) == 0);
    }
    T_CHECK(pthread_create(&t[MT_WORKERS], NULL, mt_render, &mt) == 0);
    for (int i = 0; i <= MT_WORKERS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&mt.start);

    for (int i = 0; i < MT_WORKERS; i++)
        T_CHECK_INT(w[i].lookups_wrong, 0);
    T_CHECK(lv_metric_value(mt.c) == MT_WORKERS * MT_ADDS);
    T_CHECK(lv_metric_value(mt.h) == MT_WORKERS * MT_ADDS);
    T_CHECK_INT(lv_metric_bucket(mt.h, 0), MT_WORKERS * MT_ADDS / 4);
    T_CHECK_INT(lv_metric_bucket(mt.h, 1), 0);
    T_CHECK_INT(lv_metric_bucket(mt.h, 2), MT_WORKERS * MT_ADDS / 4 * 3);
    T_CHECK(lv_metric_sum(mt.h) == MT_WORKERS * (MT_ADDS / 4 * 0.5 + MT_ADDS / 4 * 3 * 3));
    T_CHECK(atomic_load(&mt.renders) > MT_OVERLAP);
    T_CHECK(mt.created >= MT_OVERLAP * MT_NEW_PER_RENDER);
    T_CHECK_INT(mt.went_down, 0);
    T_CHECK_INT(mt.count_mismatch, 0);

    /* Every series the renderer made is there once, with its value. */
    char *out = render(mt.m);
    int lines = 0, ones = 0;
    for (const char *p = out; (p = strstr(p, "mt_total{route=\"n")); p++) {
        lines++;
        ones += strncmp(strchr(p, '}'), "} 1\n", 4) == 0;
    }
    T_CHECK_INT(lines, mt.created);
    T_CHECK_INT(ones, mt.created);
    char want[64];
    snprintf(want, sizeof(want), "mt_total{route=\"w\"} %d\n", MT_WORKERS * MT_ADDS);
    T_CHECK(strstr(out, want) != NULL);
    snprintf(want, sizeof(want), "mt_seconds_count{route=\"w\"} %d\n", MT_WORKERS * MT_ADDS);
    T_CHECK(strstr(out, want) != NULL);
    free(out);
    lv_metrics_destroy(mt.m);
}

enum { CC_THREADS = 4, CC_KEYS = 300 };

struct cc {
    struct lv_metrics *m;
    pthread_barrier_t start;
    struct lv_metric_family *fam[CC_THREADS];
    struct lv_metric *ptr[CC_THREADS][CC_KEYS];
};

struct cc_thread {
    struct cc *cc;
    unsigned id;
};

static void *cc_work(void *arg)
{
    struct cc_thread *ct = arg;
    struct cc *cc = ct->cc;
    lv_metrics_bind_thread(ct->id);
    pthread_barrier_wait(&cc->start);
    struct lv_metric_family *f =
        lv_metrics_family(cc->m, "cc_total", "h", LV_METRIC_COUNTER, route_only, NULL, 0);
    cc->fam[ct->id] = f;
    for (int j = 0; j < CC_KEYS; j++) {
        int key = (j * 7 + (int)ct->id * 75) % CC_KEYS; /* each thread in another order */
        char name[16];
        snprintf(name, sizeof(name), "k%d", key);
        struct lv_metric *s = lv_metric_series(f, (const char *[]){name});
        lv_metric_add(s, 1);
        cc->ptr[ct->id][key] = s;
    }
    return NULL;
}

/* Threads asking for the same families and label sets at once get one of each. */
T_TEST(concurrent_series_creation)
{
    static struct cc cc;
    cc.m = lv_metrics_create_sharded(CC_THREADS);
    pthread_barrier_init(&cc.start, NULL, CC_THREADS);
    struct cc_thread ct[CC_THREADS];
    pthread_t t[CC_THREADS];
    for (unsigned i = 0; i < CC_THREADS; i++) {
        ct[i] = (struct cc_thread){&cc, i};
        T_CHECK(pthread_create(&t[i], NULL, cc_work, &ct[i]) == 0);
    }
    for (int i = 0; i < CC_THREADS; i++)
        pthread_join(t[i], NULL);
    pthread_barrier_destroy(&cc.start);

    int same_fam = 0, same_series = 0, right = 0;
    for (int i = 0; i < CC_THREADS; i++)
        same_fam += cc.fam[i] == cc.fam[0];
    for (int k = 0; k < CC_KEYS; k++) {
        for (int i = 0; i < CC_THREADS; i++)
            same_series += cc.ptr[i][k] == cc.ptr[0][k];
        right += lv_metric_value(cc.ptr[0][k]) == CC_THREADS;
    }
    T_CHECK_INT(same_fam, CC_THREADS);
    T_CHECK_INT(same_series, CC_THREADS * CC_KEYS);
    T_CHECK_INT(right, CC_KEYS);
    char *out = render(cc.m);
    int lines = 0;
    for (const char *p = out; (p = strstr(p, "cc_total{")); p++)
        lines++;
    T_CHECK_INT(lines, CC_KEYS);
    free(out);
    lv_metrics_destroy(cc.m);
}

/* Runs fn in a child and reports whether it died of SIGABRT. */
static int aborts(void (*fn)(void))
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        fn();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return WIFSIGNALED(status) && WTERMSIG(status) == SIGABRT;
}

static struct lv_metrics *mk(void)
{
    return lv_metrics_create();
}

static void bad_name(void)
{
    lv_metrics_family(mk(), "levee-requests", "", LV_METRIC_COUNTER, NULL, NULL, 0);
}
static void bad_first_char(void)
{
    lv_metrics_family(mk(), "1levee", "", LV_METRIC_COUNTER, NULL, NULL, 0);
}
static void bad_label(void)
{
    lv_metrics_family(mk(), "x", "", LV_METRIC_COUNTER, (const char *[]){"a:b", NULL}, NULL, 0);
}
static void reserved_label(void)
{
    lv_metrics_family(mk(), "x", "", LV_METRIC_COUNTER, (const char *[]){"__x", NULL}, NULL, 0);
}
static void le_in_histogram(void)
{
    lv_metrics_family(mk(), "x", "", LV_METRIC_HISTOGRAM, (const char *[]){"le", NULL}, NULL, 0);
}
static void buckets_not_ascending(void)
{
    lv_metrics_family(mk(), "x", "", LV_METRIC_HISTOGRAM, NULL, (const double[]){1, 1}, 2);
}
static void type_changed(void)
{
    struct lv_metrics *m = mk();
    lv_metrics_family(m, "x", "", LV_METRIC_COUNTER, NULL, NULL, 0);
    lv_metrics_family(m, "x", "", LV_METRIC_GAUGE, NULL, NULL, 0);
}
static void labels_changed(void)
{
    struct lv_metrics *m = mk();
    lv_metrics_family(m, "x", "", LV_METRIC_COUNTER, route_only, NULL, 0);
    lv_metrics_family(m, "x", "", LV_METRIC_COUNTER, route_code, NULL, 0);
}
static void observe_counter(void)
{
    struct lv_metric_family *f = lv_metrics_family(mk(), "x", "", LV_METRIC_COUNTER, NULL, NULL, 0);
    lv_metric_observe(lv_metric_series(f, NULL), 1);
}
static void remove_unknown_label(void)
{
    struct lv_metric_family *f =
        lv_metrics_family(mk(), "x", "", LV_METRIC_COUNTER, route_only, NULL, 0);
    lv_metric_family_remove(f, "code", "200");
}
static void no_shards(void)
{
    lv_metrics_create_sharded(0);
}
static void add_on_shard_out_of_range(void)
{
    struct lv_metric_family *f =
        lv_metrics_family(lv_metrics_create_sharded(2), "x", "", LV_METRIC_COUNTER, NULL, NULL, 0);
    lv_metrics_bind_thread(2);
    lv_metric_add(lv_metric_series(f, NULL), 1);
}
static void set_on_shard_out_of_range(void)
{
    struct lv_metric_family *f = lv_metrics_family(mk(), "x", "", LV_METRIC_GAUGE, NULL, NULL, 0);
    lv_metrics_bind_thread(1);
    lv_metric_set(lv_metric_series(f, NULL), 1);
}
static void observe_on_shard_out_of_range(void)
{
    struct lv_metric_family *f =
        lv_metrics_family(mk(), "x", "", LV_METRIC_HISTOGRAM, NULL, NULL, 0);
    lv_metrics_bind_thread(7);
    lv_metric_observe(lv_metric_series(f, NULL), 1);
}
static void last_shard_in_range(void)
{
    struct lv_metrics *m = lv_metrics_create_sharded(2);
    struct lv_metric_family *f = lv_metrics_family(m, "x", "", LV_METRIC_COUNTER, NULL, NULL, 0);
    lv_metrics_bind_thread(1);
    lv_metric_add(lv_metric_series(f, NULL), 1);
    lv_metrics_destroy(m);
}
static void valid_family(void)
{
    struct lv_metrics *m = mk();
    lv_metrics_family(m, "levee:x_1", "", LV_METRIC_COUNTER, (const char *[]){"_a1", NULL}, NULL,
                      0);
    lv_metrics_destroy(m);
}

/* A series the caller has not made yet (made on first use) reads as zero. */
T_TEST(unmade_series_read_zero)
{
    T_CHECK(lv_metric_value(NULL) == 0);
    T_CHECK(lv_metric_sum(NULL) == 0);
    T_CHECK_INT(lv_metric_bucket(NULL, 0), 0);
    T_CHECK_INT(lv_metric_bucket(NULL, LV_METRIC_DEFAULT_NBUCKETS), 0);
}

/* Values and labels of every length, histogram buckets beside them: the series keeps its own
 * copies (one block per series) and renders them. */
T_TEST(series_keep_their_labels)
{
    struct lv_metrics *m = lv_metrics_create();
    struct lv_metric_family *h =
        lv_metrics_family(m, "lat_seconds", "h", LV_METRIC_HISTOGRAM, route_code, NULL, 0);
    char longv[300];
    memset(longv, 'v', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = '\0';
    char buf[16];
    snprintf(buf, sizeof(buf), "%s", "a\"b");
    struct lv_metric *a = lv_metric_series(h, (const char *[]){buf, ""});
    struct lv_metric *b = lv_metric_series(h, (const char *[]){longv, "x"});
    strcpy(buf, "zz"); /* the caller's strings are not kept */
    lv_metric_observe(a, 0.003);
    lv_metric_observe(b, 20);
    T_CHECK(lv_metric_series(h, (const char *[]){"a\"b", ""}) == a);
    T_CHECK(lv_metric_series(h, (const char *[]){longv, "x"}) == b);
    T_CHECK_INT(lv_metric_bucket(a, 2), 1);
    T_CHECK_INT(lv_metric_bucket(b, LV_METRIC_DEFAULT_NBUCKETS), 1);
    char *out = render(m);
    T_CHECK(strstr(out, "lat_seconds_bucket{route=\"a\\\"b\",code=\"\",le=\"0.005\"} 1\n") != NULL);
    char want[400];
    snprintf(want, sizeof(want), "lat_seconds_count{route=\"%s\",code=\"x\"} 1\n", longv);
    T_CHECK(strstr(out, want) != NULL);
    free(out);
    lv_metric_family_remove(h, "route", longv);
    out = render(m);
    T_CHECK(strstr(out, want) == NULL);
    free(out);
    lv_metrics_destroy(m);
}

T_TEST(programming_errors_abort)
{
    T_CHECK(aborts(bad_name));
    T_CHECK(aborts(bad_first_char));
    T_CHECK(aborts(bad_label));
    T_CHECK(aborts(reserved_label));
    T_CHECK(aborts(le_in_histogram));
    T_CHECK(aborts(buckets_not_ascending));
    T_CHECK(aborts(type_changed));
    T_CHECK(aborts(labels_changed));
    T_CHECK(aborts(observe_counter));
    T_CHECK(aborts(remove_unknown_label));
    T_CHECK(!aborts(valid_family));
    T_CHECK(aborts(no_shards));
    T_CHECK(aborts(add_on_shard_out_of_range));
    T_CHECK(aborts(set_on_shard_out_of_range));
    T_CHECK(aborts(observe_on_shard_out_of_range));
    T_CHECK(!aborts(last_shard_in_range));
}

int main(void)
{
    T_RUN(counter_with_labels);
    T_RUN(gauge_values_and_families_in_order);
    T_RUN(label_values_escaped);
    T_RUN(label_boundaries_distinct);
    T_RUN(histogram_buckets);
    T_RUN(histogram_default_buckets);
    T_RUN(on_render_callback);
    T_RUN(remove_hides_and_revives);
    T_RUN(reregister_returns_same_family);
    T_RUN(series_pointers_stable);
    T_RUN(unmade_series_read_zero);
    T_RUN(series_keep_their_labels);
    T_RUN(shards_sum);
    T_RUN(set_gauge_semantics);
    T_RUN(set_from_renders_on_any_thread);
    T_RUN(threads_update_while_rendering);
    T_RUN(concurrent_series_creation);
    T_RUN(programming_errors_abort);
    T_DONE();
}
