/*
 * test_trace_exporter: the exporter against a real collector, an HTTP/1.1 server on its own
 * libuv thread in this process that parses each POST, records it and answers with a status
 * programmed per request (keep-alive). Everything waits by deadline-and-poll.
 */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <uv.h>

#include "base/buf.h"
#include "certs.h"
#include "net/tls.h"
#include "t.h"
#include "trace/exporter.h"
#include "trace/otlphttp.h"

/* ---- the collector */

#define MAX_POSTS 256

struct collector {
    uv_thread_t thread;
    uv_loop_t loop;
    uv_tcp_t server;
    uv_async_t stop;
    int port;
    pthread_mutex_t lock;
    /* under lock */
    int posts;
    int spans;
    int batch[MAX_POSTS];
    int connections;
    bool bad_body;    /* a body that was not an ExportTraceServiceRequest */
    int statuses[16]; /* the answer to request i (0: never answer); later ones get 200 */
    int nstatuses;
    char path[64];          /* of the last request */
    char host[64];          /* its Host */
    struct lv_tls_ctx *tls; /* NULL: plain HTTP */
};

struct cconn {
    uv_tcp_t tcp;
    struct collector *col;
    struct lv_buf in;
    struct lv_tls *tls;
    struct lv_buf plain, net_out;
};

static int count_spans(const char *p, size_t n)
{
    int k = 0;
    const char *needle = "\"spanId\":\"";
    size_t nl = strlen(needle);
    for (size_t i = 0; i + nl <= n; i++)
        if (memcmp(p + i, needle, nl) == 0)
            k++;
    return k;
}

static void on_cwrite(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void cconn_closed(uv_handle_t *h)
{
    struct cconn *cc = h->data;
    lv_buf_dispose(&cc->in);
    lv_buf_dispose(&cc->plain);
    lv_buf_dispose(&cc->net_out);
    if (cc->tls)
        lv_tls_free(cc->tls);
    free(cc);
}

static void raw_write(struct cconn *cc, const char *p, size_t n)
{
    if (n == 0)
        return;
    uv_write_t *w = malloc(sizeof(*w) + n);
    memcpy(w + 1, p, n);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)n);
    if (uv_write(w, (uv_stream_t *)&cc->tcp, &b, 1, on_cwrite) < 0)
        free(w);
}

static void flush_tls(struct cconn *cc)
{
    raw_write(cc, cc->net_out.data, cc->net_out.len);
    cc->net_out.len = 0;
}

static void cwrite(struct cconn *cc, const char *p, size_t n)
{
    if (!cc->tls) {
        raw_write(cc, p, n);
        return;
    }
    lv_tls_write(cc->tls, p, n, &cc->net_out);
    flush_tls(cc);
}

static void on_calloc(uv_handle_t *h, size_t sz, uv_buf_t *b)
{
    (void)h;
    b->base = malloc(sz);
    b->len = sz;
}

/* Copies the value of header `name` (in head[0..n)) into out. */
static void header_value(const char *head, size_t n, const char *name, char *out, size_t cap)
{
    out[0] = '\0';
    size_t nl = strlen(name);
    for (size_t i = 0; i + nl + 1 < n; i++) {
        if ((i == 0 || head[i - 1] == '\n') && strncasecmp(head + i, name, nl) == 0 &&
            head[i + nl] == ':') {
            size_t s = i + nl + 1;
            while (s < n && head[s] == ' ')
                s++;
            size_t e = s;
            while (e < n && head[e] != '\r')
                e++;
            snprintf(out, cap, "%.*s", (int)(e - s), head + s);
            return;
        }
    }
}

static void serve(struct cconn *cc)
{
    for (;;) {
        char *end = NULL;
        for (size_t i = 0; i + 4 <= cc->in.len; i++)
            if (memcmp(cc->in.data + i, "\r\n\r\n", 4) == 0) {
                end = cc->in.data + i;
                break;
            }
        if (!end)
            return;
        size_t hl = (size_t)(end - cc->in.data) + 4;
        char cl[32];
        header_value(cc->in.data, hl, "content-length", cl, sizeof(cl));
        size_t blen = (size_t)strtoul(cl, NULL, 10);
        if (cc->in.len < hl + blen)
            return;
        struct collector *col = cc->col;
        const char *body = cc->in.data + hl;
        int n = count_spans(body, blen);
        pthread_mutex_lock(&col->lock);
        int idx = col->posts++;
        if (idx < MAX_POSTS)
            col->batch[idx] = n;
        col->spans += n;
        if (blen < 20 || memcmp(body, "{\"resourceSpans\":[", 18) != 0 || body[blen - 1] != '}')
            col->bad_body = true;
        int status = idx < col->nstatuses ? col->statuses[idx] : 200;
        const char *sp = memchr(cc->in.data, ' ', hl);
        if (sp) {
            const char *sp2 = memchr(sp + 1, ' ', hl - (size_t)(sp + 1 - cc->in.data));
            if (sp2)
                snprintf(col->path, sizeof(col->path), "%.*s", (int)(sp2 - sp - 1), sp + 1);
        }
        header_value(cc->in.data, hl, "host", col->host, sizeof(col->host));
        pthread_mutex_unlock(&col->lock);
        lv_buf_consume(&cc->in, hl + blen);
        if (status == 0)
            continue; /* never answer this one */
        if (status < 0) {
            uv_close((uv_handle_t *)&cc->tcp, cconn_closed); /* hang up without an answer */
            return;
        }
        char resp[256];
        int rl = snprintf(resp, sizeof(resp),
                          "HTTP/1.1 %d X\r\nContent-Type: application/json\r\n"
                          "Content-Length: 2\r\n\r\n{}",
                          status);
        cwrite(cc, resp, (size_t)rl);
    }
}

static void on_cread(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct cconn *cc = s->data;
    if (nread < 0) {
        free(buf->base);
        if (!uv_is_closing((uv_handle_t *)s))
            uv_close((uv_handle_t *)s, cconn_closed);
        return;
    }
    if (cc->tls) {
        cc->plain.len = 0;
        int rc = lv_tls_feed(cc->tls, buf->base, (size_t)nread, lv_tls_collect, &cc->plain,
                             &cc->net_out);
        free(buf->base);
        flush_tls(cc);
        if (rc < 0) {
            uv_close((uv_handle_t *)s, cconn_closed);
            return;
        }
        lv_buf_append(&cc->in, cc->plain.data, cc->plain.len);
    } else {
        lv_buf_append(&cc->in, buf->base, (size_t)nread);
        free(buf->base);
    }
    serve(cc);
}

static void on_conn(uv_stream_t *server, int status)
{
    struct collector *col = server->data;
    if (status < 0)
        return;
    struct cconn *cc = calloc(1, sizeof(*cc));
    cc->col = col;
    uv_tcp_init(&col->loop, &cc->tcp);
    cc->tcp.data = cc;
    if (uv_accept(server, (uv_stream_t *)&cc->tcp) != 0) {
        uv_close((uv_handle_t *)&cc->tcp, cconn_closed);
        return;
    }
    if (col->tls)
        cc->tls = lv_tls_new(col->tls, true, NULL);
    pthread_mutex_lock(&col->lock);
    col->connections++;
    pthread_mutex_unlock(&col->lock);
    uv_read_start((uv_stream_t *)&cc->tcp, on_calloc, on_cread);
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (uv_is_closing(h))
        return;
    if (h->type == UV_TCP && h->data && ((struct cconn *)h->data)->tcp.data == h->data &&
        (uv_tcp_t *)h == &((struct cconn *)h->data)->tcp)
        uv_close(h, cconn_closed);
    else
        uv_close(h, NULL);
}

static void on_stop(uv_async_t *a)
{
    uv_walk(a->loop, close_any, NULL);
}

static void collector_main(void *arg)
{
    struct collector *col = arg;
    uv_run(&col->loop, UV_RUN_DEFAULT);
}

static struct collector *collector_start_tls(const int *statuses, int n, struct lv_tls_ctx *tls)
{
    struct collector *col = calloc(1, sizeof(*col));
    col->tls = tls;
    pthread_mutex_init(&col->lock, NULL);
    for (int i = 0; i < n && i < 16; i++)
        col->statuses[i] = statuses[i];
    col->nstatuses = n;
    uv_loop_init(&col->loop);
    uv_tcp_init(&col->loop, &col->server);
    col->server.data = NULL; /* close_any: not a connection */
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&col->server, (const struct sockaddr *)&sa, 0);
    col->server.data = col;
    uv_listen((uv_stream_t *)&col->server, 64, on_conn);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&col->server, (struct sockaddr *)&ss, &len);
    col->port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_async_init(&col->loop, &col->stop, on_stop);
    uv_thread_create(&col->thread, collector_main, col);
    return col;
}

static struct collector *collector_start(const int *statuses, int n)
{
    return collector_start_tls(statuses, n, NULL);
}

static void collector_stop(struct collector *col)
{
    uv_async_send(&col->stop);
    uv_thread_join(&col->thread);
    T_CHECK_INT(uv_loop_close(&col->loop), 0);
    pthread_mutex_destroy(&col->lock);
    free(col);
}

static int col_get(struct collector *col, const int *field)
{
    pthread_mutex_lock(&col->lock);
    int v = *field;
    pthread_mutex_unlock(&col->lock);
    return v;
}

/* A port nothing listens on (bound, then closed). */
static int dead_port(void)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t t;
    uv_tcp_init(&loop, &t);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    uv_tcp_bind(&t, (const struct sockaddr *)&sa, 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&t, (struct sockaddr *)&ss, &len);
    int port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return port;
}

/* ---- helpers */

static uint64_t now_ms(void)
{
    return uv_hrtime() / 1000000u;
}

static void nap(void)
{
    uv_sleep(2);
}

#define WAIT_UNTIL(cond, ms)                                                                       \
    do {                                                                                           \
        uint64_t t__end = now_ms() + (ms);                                                         \
        while (!(cond) && now_ms() < t__end)                                                       \
            nap();                                                                                 \
    } while (0)

static struct lv_exporter_stats stats(struct lv_exporter *ex)
{
    struct lv_exporter_stats s;
    lv_exporter_stats(ex, &s);
    return s;
}

static void make_span(struct lv_trace_span *sp, int i)
{
    uint8_t tid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    uint8_t sid[8] = {1, 2, 3, 4, 5, 6, 7, (uint8_t)i};
    lv_tspan_init(sp, LV_SPAN_SERVER, tid, sid, NULL);
    lv_tspan_name(sp, "GET /", 5);
    sp->start_ns = 1000;
    sp->end_ns = 2000;
    lv_tspan_int(sp, "i", i);
}

static int submit_n(struct lv_exporter *ex, int n)
{
    int ok = 0;
    struct lv_trace_span sp;
    for (int i = 0; i < n; i++) {
        make_span(&sp, i);
        ok += lv_exporter_submit(ex, &sp);
    }
    return ok;
}

static struct lv_exporter *start(const char *url, uint32_t batch, uint32_t queue, uint64_t flush_ms,
                                 uint64_t timeout_ms)
{
    struct lv_exporter_params p = {.url = url,
                                   .service = "test-svc",
                                   .batch = batch,
                                   .queue = queue,
                                   .flush_ms = flush_ms,
                                   .timeout_ms = timeout_ms};
    const char *err = NULL;
    struct lv_exporter *ex = lv_exporter_start(&p, &err);
    T_CHECK(ex != NULL);
    T_CHECK(err == NULL);
    return ex;
}

static char *url_of(struct collector *col, const char *path)
{
    static char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", col->port, path);
    return url;
}

/* ---- tests */

T_TEST(url_checks)
{
    T_CHECK(lv_exporter_url_error("http://collector:4318/v1/traces") == NULL);
    T_CHECK(lv_exporter_url_error("https://collector") == NULL);
    T_CHECK(lv_exporter_url_error("HTTP://10.0.0.1:80/x?y=1") == NULL);
    T_CHECK(lv_exporter_url_error("http://[::1]:4318") == NULL);
    T_CHECK(lv_exporter_url_error(NULL) != NULL);
    T_CHECK(lv_exporter_url_error("") != NULL);
    T_CHECK(lv_exporter_url_error("ftp://x") != NULL);
    T_CHECK(lv_exporter_url_error("http://") != NULL);
    T_CHECK(lv_exporter_url_error("http://:80/") != NULL);
    T_CHECK(lv_exporter_url_error("http://x:0/") != NULL);
    T_CHECK(lv_exporter_url_error("http://x:65536/") != NULL);
    T_CHECK(lv_exporter_url_error("http://x:/") != NULL);
    T_CHECK(lv_exporter_url_error("http://x:8a/") != NULL);
    T_CHECK(lv_exporter_url_error("http://u:p@x/") != NULL);
    T_CHECK(lv_exporter_url_error("http://x/a b") != NULL);
    T_CHECK(lv_exporter_url_error("http://x/#f") != NULL);
    T_CHECK(lv_exporter_url_error("http://[::1/") != NULL);
    T_CHECK(lv_exporter_url_error("http://[zz]/") != NULL);
    T_CHECK(lv_exporter_url_error("http://a..b/") != NULL);
    T_CHECK(lv_exporter_url_error("http://x?q") != NULL);

    struct lv_otlp_url u;
    T_CHECK(lv_otlp_url_parse("https://Collector.example", &u) == NULL);
    T_CHECK_STR(u.host, "Collector.example");
    T_CHECK_INT(u.port, 443);
    T_CHECK(u.tls);
    T_CHECK_STR(u.path, "/v1/traces");
    lv_otlp_url_free(&u);
    T_CHECK(lv_otlp_url_parse("http://[::1]:9/p", &u) == NULL);
    T_CHECK_STR(u.host, "::1");
    T_CHECK_INT(u.port, 9);
    T_CHECK(u.ipv6);
    T_CHECK(!u.tls);
    T_CHECK_STR(u.path, "/p");
    lv_otlp_url_free(&u);
    T_CHECK(lv_otlp_url_parse("http://1.2.3.4", &u) == NULL);
    T_CHECK_INT(u.port, 80);
    lv_otlp_url_free(&u);

    const char *err = "unset";
    struct lv_exporter_params p = {.url = "nope"};
    T_CHECK(lv_exporter_start(&p, &err) == NULL);
    T_CHECK(err != NULL && strstr(err, "http://") != NULL);
    p.url = "http://127.0.0.1:1/";
    p.tls_ca = "/nonexistent/ca.pem";
    err = NULL;
    T_CHECK(lv_exporter_start(&p, &err) == NULL);
    T_CHECK(err != NULL && strstr(err, "tls_ca") != NULL);
    lv_exporter_stop(NULL, 0);
}

T_TEST(batches_on_one_connection)
{
    struct collector *col = collector_start(NULL, 0);
    struct lv_exporter *ex = start(url_of(col, ""), 10, 100, 60000, 5000);
    /* Submitted 10 at a time, waiting for each batch: full batches, sent without a flush. */
    for (int k = 0; k < 3; k++) {
        T_CHECK_INT(submit_n(ex, 10), 10);
        WAIT_UNTIL(stats(ex).exported == (uint64_t)(10 * (k + 1)), 5000);
    }
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.submitted, 30);
    T_CHECK_INT(s.exported, 30);
    T_CHECK_INT(s.queued, 0);
    T_CHECK_INT(s.export_failures, 0);
    T_CHECK_INT(col_get(col, &col->posts), 3);
    for (int i = 0; i < 3; i++)
        T_CHECK_INT(col_get(col, &col->batch[i]), 10);
    T_CHECK_INT(col_get(col, &col->connections), 1); /* keep-alive */
    pthread_mutex_lock(&col->lock);
    T_CHECK_STR(col->path, "/v1/traces");
    char want_host[32];
    snprintf(want_host, sizeof(want_host), "127.0.0.1:%d", col->port);
    T_CHECK_STR(col->host, want_host);
    T_CHECK(!col->bad_body);
    pthread_mutex_unlock(&col->lock);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(burst_is_split_into_batches)
{
    struct collector *col = collector_start(NULL, 0);
    struct lv_exporter *ex = start(url_of(col, "/custom"), 7, 100, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 35), 35);
    WAIT_UNTIL(stats(ex).exported == 35, 5000);
    T_CHECK_INT(stats(ex).exported, 35);
    int posts = col_get(col, &col->posts);
    T_CHECK_INT(posts, 5);
    for (int i = 0; i < posts && i < MAX_POSTS; i++)
        T_CHECK_INT(col_get(col, &col->batch[i]), 7);
    pthread_mutex_lock(&col->lock);
    T_CHECK_STR(col->path, "/custom");
    pthread_mutex_unlock(&col->lock);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(partial_batch_flushed_after_flush_ms)
{
    struct collector *col = collector_start(NULL, 0);
    struct lv_exporter *ex = start(url_of(col, ""), 100, 1000, 150, 5000);
    uint64_t t0 = now_ms();
    T_CHECK_INT(submit_n(ex, 5), 5);
    WAIT_UNTIL(col_get(col, &col->posts) == 1, 5000);
    uint64_t waited = now_ms() - t0;
    T_CHECK_INT(col_get(col, &col->posts), 1);
    T_CHECK_INT(col_get(col, &col->batch[0]), 5);
    T_CHECK(waited >= 140); /* not before flush_ms */
    WAIT_UNTIL(stats(ex).exported == 5, 5000);
    T_CHECK_INT(stats(ex).exported, 5);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(queue_full_drops_fast)
{
    /* The collector never answers: the first batch stays in flight, the queue fills. */
    int st[] = {0};
    struct collector *col = collector_start(st, 1);
    struct lv_exporter *ex = start(url_of(col, ""), 8, 8, 60000, 30000);
    T_CHECK_INT(submit_n(ex, 8), 8);
    WAIT_UNTIL(col_get(col, &col->posts) == 1, 5000);
    T_CHECK_INT(stats(ex).queued, 0);
    T_CHECK_INT(submit_n(ex, 8), 8);
    uint64_t t0 = uv_hrtime();
    T_CHECK_INT(submit_n(ex, 100), 0);
    uint64_t took_us = (uv_hrtime() - t0) / 1000;
    T_CHECK(took_us < 100000); /* refused without waiting (generous for sanitizers) */
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.submitted, 16);
    T_CHECK_INT(s.dropped_full, 100);
    T_CHECK_INT(s.queued, 8);
    /* Stop at a short deadline: the batch in flight and the queued spans are given up. */
    uint64_t t1 = now_ms();
    lv_exporter_stop_stats(ex, 200, &s);
    T_CHECK(now_ms() - t1 < 3000);
    T_CHECK_INT(s.dropped_failed, 16);
    T_CHECK_INT(s.queued, 0);
    collector_stop(col);
}

T_TEST(stop_counts_leftovers)
{
    int st[] = {0};
    struct collector *col = collector_start(st, 1);
    struct lv_exporter *ex = start(url_of(col, ""), 8, 8, 60000, 30000);
    T_CHECK_INT(submit_n(ex, 8), 8);
    WAIT_UNTIL(col_get(col, &col->posts) == 1, 5000);
    T_CHECK_INT(submit_n(ex, 5), 5);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.queued, 5);
    /* The POST in flight never ends: stop waits for its deadline, then gives everything up. */
    uint64_t t1 = now_ms();
    lv_exporter_stop_stats(ex, 150, &s);
    uint64_t took = now_ms() - t1;
    T_CHECK(took >= 140);
    T_CHECK(took < 3000);
    T_CHECK_INT(s.dropped_failed, 13);
    T_CHECK_INT(s.export_failures, 1);
    T_CHECK_INT(s.exported, 0);
    T_CHECK_INT(s.queued, 0);
    collector_stop(col);
}

T_TEST(collector_down)
{
    char url[64];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/v1/traces", dead_port());
    struct lv_exporter *ex = start(url, 5, 100, 50, 2000);
    T_CHECK_INT(submit_n(ex, 5), 5);
    WAIT_UNTIL(stats(ex).dropped_failed == 5, 10000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.dropped_failed, 5);
    T_CHECK_INT(s.export_failures, 3); /* three tries */
    T_CHECK_INT(s.exported, 0);
    /* Requests keep being accepted meanwhile. */
    T_CHECK_INT(submit_n(ex, 3), 3);
    lv_exporter_stop(ex, 100);
}

T_TEST(retried_after_503)
{
    int st[] = {503, 429};
    struct collector *col = collector_start(st, 2);
    struct lv_exporter *ex = start(url_of(col, ""), 4, 100, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 4), 4);
    WAIT_UNTIL(stats(ex).exported == 4, 10000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.exported, 4);
    T_CHECK_INT(s.export_failures, 2);
    T_CHECK_INT(s.dropped_failed, 0);
    T_CHECK_INT(col_get(col, &col->posts), 3);
    T_CHECK_INT(col_get(col, &col->batch[2]), 4);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(client_error_not_retried)
{
    int st[] = {400};
    struct collector *col = collector_start(st, 1);
    struct lv_exporter *ex = start(url_of(col, ""), 4, 100, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 4), 4);
    WAIT_UNTIL(stats(ex).dropped_failed == 4, 5000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.dropped_failed, 4);
    T_CHECK_INT(s.export_failures, 1);
    T_CHECK_INT(col_get(col, &col->posts), 1);
    /* The next batch goes through (200). */
    T_CHECK_INT(submit_n(ex, 4), 4);
    WAIT_UNTIL(stats(ex).exported == 4, 5000);
    T_CHECK_INT(stats(ex).exported, 4);
    T_CHECK_INT(col_get(col, &col->connections), 1);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(stale_connection_resent)
{
    /* The collector hangs up on the second request, which came on the kept-alive connection:
     * sent once more on a new connection, not counted as a failure. */
    int st[] = {200, -1};
    struct collector *col = collector_start(st, 2);
    struct lv_exporter *ex = start(url_of(col, ""), 2, 100, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 2), 2);
    WAIT_UNTIL(stats(ex).exported == 2, 5000);
    T_CHECK_INT(submit_n(ex, 2), 2);
    WAIT_UNTIL(stats(ex).exported == 4, 5000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.exported, 4);
    T_CHECK_INT(s.export_failures, 0);
    T_CHECK_INT(col_get(col, &col->posts), 3);
    T_CHECK_INT(col_get(col, &col->connections), 2);
    /* A new connection that is hung up on is a failure like any other. */
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
    int st2[] = {-1, 200};
    col = collector_start(st2, 2);
    ex = start(url_of(col, ""), 2, 100, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 2), 2);
    WAIT_UNTIL(stats(ex).exported == 2, 5000);
    s = stats(ex);
    T_CHECK_INT(s.exported, 2);
    T_CHECK_INT(s.export_failures, 1);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(timeout_is_a_failure)
{
    int st[] = {0, 0, 0};
    struct collector *col = collector_start(st, 3);
    struct lv_exporter *ex = start(url_of(col, ""), 2, 100, 60000, 100);
    T_CHECK_INT(submit_n(ex, 2), 2);
    WAIT_UNTIL(stats(ex).dropped_failed == 2, 10000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.dropped_failed, 2);
    T_CHECK_INT(s.export_failures, 3);
    T_CHECK_INT(col_get(col, &col->posts), 3);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

T_TEST(stop_flushes_queue)
{
    struct collector *col = collector_start(NULL, 0);
    struct lv_exporter *ex = start(url_of(col, ""), 100, 1000, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 250), 250);
    struct lv_exporter_stats s;
    lv_exporter_stop_stats(ex, 5000, &s);
    T_CHECK_INT(s.exported, 250);
    T_CHECK_INT(s.dropped_failed, 0);
    T_CHECK_INT(col_get(col, &col->spans), 250);
    int posts = col_get(col, &col->posts);
    T_CHECK(posts >= 3);
    T_CHECK_INT(col_get(col, &col->batch[posts - 1]) <= 100, 1);
    T_CHECK_INT(col_get(col, &col->connections), 1);
    collector_stop(col);
}

T_TEST(update_switches_collector)
{
    struct collector *a = collector_start(NULL, 0);
    struct collector *b = collector_start(NULL, 0);
    struct lv_exporter *ex = start(url_of(a, ""), 3, 100, 60000, 5000);
    T_CHECK_INT(submit_n(ex, 3), 3);
    WAIT_UNTIL(stats(ex).exported == 3, 5000);
    struct lv_exporter_params p = {.url = url_of(b, "/b"), .batch = 2, .queue = 50};
    T_CHECK_INT(lv_exporter_update(ex, &p), 0);
    struct lv_exporter_params bad = {.url = "gopher://x"};
    T_CHECK_INT(lv_exporter_update(ex, &bad), -EINVAL);
    /* Wait until the thread took the new parameters (a batch of 2 now sends at once). */
    T_CHECK_INT(submit_n(ex, 2), 2);
    WAIT_UNTIL(stats(ex).exported == 5, 5000);
    T_CHECK_INT(stats(ex).exported, 5);
    T_CHECK_INT(col_get(a, &a->spans), 3);
    T_CHECK_INT(col_get(b, &b->spans), 2);
    pthread_mutex_lock(&b->lock);
    T_CHECK_STR(b->path, "/b");
    pthread_mutex_unlock(&b->lock);
    lv_exporter_stop(ex, 1000);
    collector_stop(a);
    collector_stop(b);
}

T_TEST(shrinking_queue_keeps_newest)
{
    int st[] = {0};
    struct collector *col = collector_start(st, 1);
    struct lv_exporter *ex = start(url_of(col, ""), 4, 64, 60000, 30000);
    T_CHECK_INT(submit_n(ex, 4), 4);
    WAIT_UNTIL(col_get(col, &col->posts) == 1, 5000); /* in flight forever */
    T_CHECK_INT(submit_n(ex, 20), 20);
    struct lv_exporter_params p = {.url = url_of(col, ""), .batch = 4, .queue = 8};
    T_CHECK_INT(lv_exporter_update(ex, &p), 0);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.queued, 8);
    T_CHECK_INT(s.dropped_full, 12);
    T_CHECK_INT(submit_n(ex, 1), 0);
    lv_exporter_stop(ex, 100);
    collector_stop(col);
}

static void make_certs(void)
{
    certs_dir("lv-trace");
    sh("openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc"
       " -keyout ca.key -out ca.pem -days 2 -subj '/CN=levee test CA'"
       " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out srv.key");
    sh("printf 'subjectAltName=DNS:localhost\\n' >localhost.ext");
    sh("openssl req -new -key srv.key -subj /CN=localhost -out localhost.csr");
    sh("openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
       " -extfile localhost.ext -out localhost.pem");
}

T_TEST(https_collector)
{
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *sc = lv_tls_server_ctx(P("localhost.pem"), P("srv.key"), &err);
    T_CHECK(sc != NULL);
    lv_buf_dispose(&err);
    struct collector *col = collector_start_tls(NULL, 0, sc);
    char url[128];
    snprintf(url, sizeof(url), "https://localhost:%d/v1/traces", col->port);
    /* Verified against the test CA, by the name in the URL (SNI localhost). */
    struct lv_exporter_params p = {
        .url = url, .batch = 3, .queue = 100, .flush_ms = 60000, .tls_ca = P("ca.pem")};
    const char *e = NULL;
    struct lv_exporter *ex = lv_exporter_start(&p, &e);
    T_CHECK(ex != NULL);
    for (int k = 0; k < 2; k++) {
        T_CHECK_INT(submit_n(ex, 3), 3);
        WAIT_UNTIL(stats(ex).exported == (uint64_t)(3 * (k + 1)), 10000);
    }
    T_CHECK_INT(stats(ex).exported, 6);
    T_CHECK_INT(col_get(col, &col->connections), 1);
    pthread_mutex_lock(&col->lock);
    char want_host[32];
    snprintf(want_host, sizeof(want_host), "localhost:%d", col->port);
    T_CHECK_STR(col->host, want_host);
    T_CHECK(!col->bad_body);
    pthread_mutex_unlock(&col->lock);
    lv_exporter_stop(ex, 1000);

    /* Without the test CA the certificate is not trusted: every try fails, nothing arrives. */
    p.tls_ca = NULL;
    p.batch = 2;
    ex = lv_exporter_start(&p, &e);
    T_CHECK_INT(submit_n(ex, 2), 2);
    WAIT_UNTIL(stats(ex).dropped_failed == 2, 10000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.dropped_failed, 2);
    T_CHECK_INT(s.export_failures, 3);
    lv_exporter_stop(ex, 1000);
    T_CHECK_INT(col_get(col, &col->posts), 2);
    collector_stop(col);
    lv_tls_ctx_free(sc);
}

static void *submitter(void *arg)
{
    struct lv_exporter *ex = arg;
    submit_n(ex, 500);
    return NULL;
}

T_TEST(many_threads)
{
    struct collector *col = collector_start(NULL, 0);
    struct lv_exporter *ex = start(url_of(col, ""), 50, 4096, 20, 5000);
    pthread_t th[4];
    for (int i = 0; i < 4; i++)
        pthread_create(&th[i], NULL, submitter, ex);
    for (int i = 0; i < 4; i++)
        pthread_join(th[i], NULL);
    WAIT_UNTIL(stats(ex).exported == 2000, 20000);
    struct lv_exporter_stats s = stats(ex);
    T_CHECK_INT(s.submitted + s.dropped_full, 2000);
    T_CHECK_INT(s.exported, s.submitted);
    T_CHECK_INT(col_get(col, &col->spans), (int)s.submitted);
    lv_exporter_stop(ex, 1000);
    collector_stop(col);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    make_certs();
    T_RUN(url_checks);
    T_RUN(batches_on_one_connection);
    T_RUN(burst_is_split_into_batches);
    T_RUN(partial_batch_flushed_after_flush_ms);
    T_RUN(queue_full_drops_fast);
    T_RUN(stop_counts_leftovers);
    T_RUN(collector_down);
    T_RUN(retried_after_503);
    T_RUN(client_error_not_retried);
    T_RUN(stale_connection_resent);
    T_RUN(timeout_is_a_failure);
    T_RUN(stop_flushes_queue);
    T_RUN(update_switches_collector);
    T_RUN(shrinking_queue_keeps_newest);
    T_RUN(many_threads);
    T_RUN(https_collector);
    certs_remove();
    T_DONE();
}
