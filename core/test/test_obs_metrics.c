#include "obs/metrics.h"
#include "t.h"

#include <math.h>
#include <signal.h>
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
    T_RUN(programming_errors_abort);
    T_DONE();
}
