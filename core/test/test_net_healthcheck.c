/*
 * test_net_healthcheck: active health checks (net/healthcheck.h) against small HTTP
 * responders run inside the test on loopback: one answering a sequence of statuses, one that
 * accepts and never answers, a closed port, responders sending garbage, an endless head, a cut
 * head, an interim 100 then 204, and a TLS one (certificates from a throwaway CA made with the
 * openssl command line). Intervals are tens of milliseconds. Every test stops its checker,
 * destroys its upstream and checks uv_loop_close() == 0 (with LeakSanitizer in the ASan build,
 * that also proves the checker freed everything).
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "net/healthcheck.h"
#include "net/tls.h"
#include "net/upstream.h"
#include "certs.h"
#include "t.h"

/* ---- certificates (TLS test) */

static void make_certs(void)
{
    certs_dir("lv-hc");
    sh("openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc"
       " -keyout ca.key -out ca.pem -days 2 -subj '/CN=levee test CA'"
       " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out srv.key");
    sh("printf 'subjectAltName=DNS:localhost\\n' >localhost.ext");
    sh("openssl req -new -key srv.key -subj /CN=localhost -out localhost.csr");
    sh("openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
       " -extfile localhost.ext -out localhost.pem");
}

/* ---- loop helpers */

static uv_timer_t guard;
static uv_prepare_t until;
static int guard_fired, closed;
static bool (*until_pred)(void *);
static void *until_arg;

static void on_guard(uv_timer_t *t)
{
    (void)t;
    guard_fired = 1;
}

/* Runs before the loop computes its poll timeout: stopping here never blocks. */
static void on_until(uv_prepare_t *p)
{
    if ((until_pred && until_pred(until_arg)) || guard_fired)
        uv_stop(p->loop);
}

static void on_closed(uv_handle_t *h)
{
    (void)h;
    closed++;
}

/* Runs the loop until pred(arg) holds or timeout_ms passes; returns pred's last value. A NULL
 * pred runs the loop for timeout_ms. */
static bool run_until(uv_loop_t *loop, bool (*pred)(void *), void *arg, uint64_t timeout_ms)
{
    guard_fired = closed = 0;
    until_pred = pred;
    until_arg = arg;
    uv_timer_init(loop, &guard);
    uv_timer_start(&guard, on_guard, timeout_ms, 0);
    uv_prepare_init(loop, &until);
    uv_prepare_start(&until, on_until);
    while (!(pred && pred(arg)) && !guard_fired)
        uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&guard, on_closed);
    uv_close((uv_handle_t *)&until, on_closed);
    while (closed < 2)
        uv_run(loop, UV_RUN_NOWAIT);
    return pred && pred(arg);
}

/* ---- responders */

enum mode {
    M_SEQ,       /* statuses[k] for the k-th request (the last one repeats) */
    M_SILENT,    /* reads, never answers */
    M_GARBAGE,   /* not HTTP */
    M_ENDLESS,   /* a status line and then header lines that never end */
    M_TRUNCATED, /* part of a head, then closes */
    M_CLOSE,     /* closes as soon as the request is in */
    M_INTERIM,   /* 100 Continue, then 204 */
};

struct rconn;

struct responder {
    uv_loop_t *loop;
    uv_tcp_t tcp;
    int port;
    enum mode mode;
    int statuses[8];
    int nstatuses;
    int requests;
    int open;
    struct lv_buf first; /* the first request received */
    struct lv_tls_ctx *tls;
    struct rconn *conns;
    bool listener_closed;
};

struct rconn {
    uv_tcp_t tcp;
    struct responder *r;
    struct rconn *next, *prev;
    struct lv_buf in;
    struct lv_buf out; /* TLS records to send */
    struct lv_tls *tls;
    bool answered;
    bool closing;
};

static void on_rwrite(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void raw_write(struct rconn *c, const char *data, size_t len)
{
    if (len == 0 || c->closing)
        return;
    uv_write_t *w = malloc(sizeof(*w) + len);
    memcpy(w + 1, data, len);
    uv_buf_t b = uv_buf_init((char *)(w + 1), (unsigned)len);
    if (uv_write(w, (uv_stream_t *)&c->tcp, &b, 1, on_rwrite) < 0)
        free(w);
}

static void rwrite(struct rconn *c, const char *data, size_t len)
{
    if (!c->tls) {
        raw_write(c, data, len);
        return;
    }
    lv_tls_write(c->tls, data, len, &c->out);
    raw_write(c, c->out.data, c->out.len);
    c->out.len = 0;
}

static void responder_maybe_free(struct responder *r)
{
    if (!r->listener_closed || r->open > 0)
        return;
    lv_buf_dispose(&r->first);
    free(r);
}

static void on_rconn_closed(uv_handle_t *h)
{
    struct rconn *c = h->data;
    struct responder *r = c->r;
    r->open--;
    lv_buf_dispose(&c->in);
    lv_buf_dispose(&c->out);
    if (c->tls)
        lv_tls_free(c->tls);
    free(c);
    responder_maybe_free(r);
}

static void rconn_close(struct rconn *c)
{
    if (c->closing)
        return;
    c->closing = true;
    if (c->prev)
        c->prev->next = c->next;
    else
        c->r->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, on_rconn_closed);
}

static void respond(struct rconn *c)
{
    struct responder *r = c->r;
    int k = r->requests++;
    if (k == 0)
        lv_buf_append(&r->first, c->in.data, c->in.len);
    switch (r->mode) {
    case M_SEQ: {
        int st = r->statuses[k < r->nstatuses ? k : r->nstatuses - 1];
        char resp[128];
        int n = snprintf(resp, sizeof(resp),
                         "HTTP/1.1 %d Whatever\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                         st);
        rwrite(c, resp, (size_t)n);
        break;
    }
    case M_SILENT:
        break;
    case M_GARBAGE: {
        const char *g = "SSH-2.0-OpenSSH_9.2\r\n\r\n";
        rwrite(c, g, strlen(g));
        break;
    }
    case M_ENDLESS: {
        struct lv_buf b = LV_BUF_INIT;
        lv_buf_puts(&b, "HTTP/1.1 200 OK\r\n");
        while (b.len < 256 * 1024)
            lv_buf_puts(&b, "X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        rwrite(c, b.data, b.len);
        lv_buf_dispose(&b);
        break;
    }
    case M_TRUNCATED: {
        const char *t = "HTTP/1.1 200 OK\r\nContent-";
        rwrite(c, t, strlen(t));
        rconn_close(c);
        break;
    }
    case M_CLOSE:
        rconn_close(c);
        break;
    case M_INTERIM: {
        const char *t = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n";
        rwrite(c, t, strlen(t));
        break;
    }
    }
}

static void on_ralloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)h;
    static char block[65536];
    (void)suggested;
    buf->base = block;
    buf->len = sizeof(block);
}

static bool has_end_of_head(const struct lv_buf *b)
{
    for (size_t i = 0; i + 4 <= b->len; i++)
        if (memcmp(b->data + i, "\r\n\r\n", 4) == 0)
            return true;
    return false;
}

static void on_rread(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    struct rconn *c = stream->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        rconn_close(c);
        return;
    }
    if (c->tls) {
        int rc = lv_tls_feed(c->tls, buf->base, (size_t)nread, lv_tls_collect, &c->in, &c->out);
        raw_write(c, c->out.data, c->out.len);
        c->out.len = 0;
        if (rc != 0) {
            rconn_close(c);
            return;
        }
    } else {
        lv_buf_append(&c->in, buf->base, (size_t)nread);
    }
    if (!c->answered && has_end_of_head(&c->in)) {
        c->answered = true;
        respond(c);
    }
}

static void on_accept(uv_stream_t *server, int status)
{
    struct responder *r = server->data;
    if (status < 0)
        return;
    struct rconn *c = calloc(1, sizeof(*c));
    c->r = r;
    uv_tcp_init(r->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) < 0) {
        c->closing = true;
        r->open++;
        uv_close((uv_handle_t *)&c->tcp, on_rconn_closed);
        return;
    }
    r->open++;
    c->next = r->conns;
    if (r->conns)
        r->conns->prev = c;
    r->conns = c;
    if (r->tls)
        c->tls = lv_tls_new(r->tls, true, NULL);
    uv_read_start((uv_stream_t *)&c->tcp, on_ralloc, on_rread);
}

static int bound_port(uv_tcp_t *t)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(t, (struct sockaddr *)&ss, &len);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static struct responder *responder_new(uv_loop_t *loop, enum mode mode)
{
    struct responder *r = calloc(1, sizeof(*r));
    r->loop = loop;
    r->mode = mode;
    r->statuses[0] = 200;
    r->nstatuses = 1;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &r->tcp);
    r->tcp.data = r;
    T_CHECK_INT(uv_tcp_bind(&r->tcp, (const struct sockaddr *)&a, 0), 0);
    T_CHECK_INT(uv_listen((uv_stream_t *)&r->tcp, 64, on_accept), 0);
    r->port = bound_port(&r->tcp);
    return r;
}

static void on_responder_closed(uv_handle_t *h)
{
    struct responder *r = h->data;
    r->listener_closed = true;
    responder_maybe_free(r);
}

static void responder_free(struct responder *r)
{
    while (r->conns)
        rconn_close(r->conns);
    uv_close((uv_handle_t *)&r->tcp, on_responder_closed);
}

/* A loopback port nobody listens on. */
static int closed_port(uv_loop_t *loop)
{
    uv_tcp_t t;
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    uv_tcp_init(loop, &t);
    uv_tcp_bind(&t, (const struct sockaddr *)&a, 0);
    int port = bound_port(&t);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return port;
}

/* ---- upstream fixture */

#define MAXS 8

struct fixture {
    uv_loop_t loop;
    struct lv_upstream_cfg cfg;
    struct lv_hostport hps[MAXS];
    char hosts[MAXS][16];
    struct lv_upstream *up;
    bool up_closed;
};

static void on_up_closed(struct lv_upstream *up)
{
    lv_upstream_free(up);
}

static void fixture_init(struct fixture *f)
{
    memset(f, 0, sizeof(*f));
    uv_loop_init(&f->loop);
    f->cfg.name = "hc";
    f->cfg.servers = f->hps;
    f->cfg.connect_timeout_ms = 1000;
    f->cfg.pool.max_idle = 4;
    f->cfg.pool.max_connections = 16;
    f->cfg.pool.queue_size = 16;
    f->cfg.tls_verify = true;
}

static void fixture_add(struct fixture *f, int port)
{
    size_t i = f->cfg.nservers++;
    snprintf(f->hosts[i], sizeof(f->hosts[i]), "127.0.0.1");
    f->hps[i].host = f->hosts[i];
    f->hps[i].port = (uint16_t)port;
}

static void fixture_up(struct fixture *f)
{
    f->up = lv_upstream_create(&f->loop, &f->cfg, NULL, true);
    f->up->on_closed = on_up_closed;
}

/* Destroys the upstream and the responders, and checks every handle is gone. */
static void fixture_done(struct fixture *f, struct responder **rs, int nrs)
{
    for (int i = 0; i < nrs; i++)
        responder_free(rs[i]);
    lv_upstream_destroy(f->up);
    uv_run(&f->loop, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(&f->loop), 0);
}

/* ---- results */

struct result {
    size_t server;
    bool ok;
    char why[160];
    uint64_t start, end, duration;
};

#define MAXR 512

struct rec {
    uv_loop_t *loop;
    struct result r[MAXR];
    int n;
    int per_server[MAXS];
    struct lv_healthcheck *hc;
    bool stop_in_cb;    /* stop the checker from inside the first callback */
    size_t max_running; /* lv_healthcheck_running seen from the callbacks */
    int want;           /* until_n: results wanted in all */
    int want_each;      /* until_each: results per server wanted */
    size_t nservers;
};

static void on_result(size_t server, bool ok, const char *why, uint64_t duration, void *arg)
{
    struct rec *rc = arg;
    uint64_t now = uv_now(rc->loop);
    if (rc->n < MAXR) {
        struct result *x = &rc->r[rc->n];
        x->server = server;
        x->ok = ok;
        snprintf(x->why, sizeof(x->why), "%s", why);
        x->end = now;
        x->duration = duration;
        x->start = now - duration;
    }
    rc->n++;
    if (server < MAXS)
        rc->per_server[server]++;
    if (rc->hc && lv_healthcheck_running(rc->hc) > rc->max_running)
        rc->max_running = lv_healthcheck_running(rc->hc);
    if (rc->stop_in_cb) {
        rc->stop_in_cb = false;
        lv_healthcheck_stop(rc->hc);
        rc->hc = NULL;
    }
}

static bool until_n(void *arg)
{
    struct rec *rc = arg;
    return rc->n >= rc->want;
}

static bool until_each(void *arg)
{
    struct rec *rc = arg;
    for (size_t i = 0; i < rc->nservers; i++)
        if (rc->per_server[i] < rc->want_each)
            return false;
    return true;
}

static bool until_running(void *arg)
{
    struct rec *rc = arg;
    return lv_healthcheck_running(rc->hc) > 0;
}

static bool until_requests(void *arg)
{
    const struct responder *r = arg;
    return r->requests > 0;
}

/* The k-th result of server i, or NULL. */
static const struct result *nth(const struct rec *rc, size_t server, int k)
{
    for (int i = 0; i < rc->n && i < MAXR; i++)
        if (rc->r[i].server == server && k-- == 0)
            return &rc->r[i];
    return NULL;
}

static void stop_checker(struct rec *rc)
{
    lv_healthcheck_stop(rc->hc);
    rc->hc = NULL;
}

static struct lv_healthcheck_params params(uint64_t interval, uint64_t timeout)
{
    struct lv_healthcheck_params p;
    memset(&p, 0, sizeof(p));
    p.path = "/healthz";
    p.interval_ms = interval;
    p.timeout_ms = timeout;
    return p;
}

/* ---- tests */

T_TEST(ok_then_503_and_the_request_sent)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SEQ);
    r->statuses[0] = 200;
    r->statuses[1] = 200;
    r->statuses[2] = 503;
    r->nstatuses = 3;
    fixture_add(&f, r->port);
    fixture_up(&f);
    struct lv_healthcheck_params p = params(30, 500);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    T_CHECK(rc.hc != NULL);
    T_CHECK_INT(rc.n, 0); /* nothing from inside start */
    rc.want = 4;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    T_CHECK(rc.r[0].ok && rc.r[1].ok && !rc.r[2].ok && !rc.r[3].ok);
    T_CHECK_STR(rc.r[0].why, "200");
    T_CHECK_STR(rc.r[1].why, "200");
    T_CHECK_STR(rc.r[2].why, "503");
    T_CHECK_STR(rc.r[3].why, "503");
    T_CHECK_INT(rc.r[0].server, 0);

    char want[256];
    snprintf(want, sizeof(want),
             "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUser-Agent: levee-health-check\r\n"
             "Connection: close\r\n\r\n",
             r->port);
    T_CHECK_INT(r->first.len, strlen(want));
    T_CHECK(r->first.len == strlen(want) && memcmp(r->first.data, want, r->first.len) == 0);

    /* The checks' connections are their own: the pool never saw them. */
    uint32_t active = 9, idle = 9;
    lv_upstream_counts(f.up, &active, &idle);
    T_CHECK_INT(active, 0);
    T_CHECK_INT(idle, 0);
    T_CHECK_INT(f.up->servers[0].connects, 0);

    /* The checker closed every connection it opened. */
    stop_checker(&rc);
    run_until(&f.loop, NULL, NULL, 30);
    T_CHECK_INT(r->open, 0);
    fixture_done(&f, &r, 1);
}

T_TEST(host_field_and_expect_set)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SEQ);
    r->statuses[0] = 418;
    fixture_add(&f, r->port);
    fixture_up(&f);
    struct lv_healthcheck_params p = params(20, 500);
    p.host = "api.internal";
    p.path = "/status?deep=1";
    p.expect[418 / 64] |= 1ULL << (418 % 64);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want = 1;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    T_CHECK(rc.r[0].ok);
    T_CHECK_STR(rc.r[0].why, "418");
    const char *want = "GET /status?deep=1 HTTP/1.1\r\nHost: api.internal\r\n";
    T_CHECK(r->first.len > strlen(want) && memcmp(r->first.data, want, strlen(want)) == 0);

    /* A reload that no longer expects 418 (all zero: 2xx and 3xx). */
    struct lv_healthcheck_params q = params(20, 500);
    T_CHECK_INT(lv_healthcheck_update(rc.hc, &q), 0);
    int before = rc.n;
    rc.want = before + 2;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    T_CHECK(!rc.r[rc.n - 1].ok);
    T_CHECK_STR(rc.r[rc.n - 1].why, "418");

    /* Invalid parameters are refused and change nothing. */
    struct lv_healthcheck_params bad = params(20, 500);
    bad.path = "/a b";
    T_CHECK(lv_healthcheck_params_error(&bad) != NULL);
    T_CHECK_INT(lv_healthcheck_update(rc.hc, &bad), -EINVAL);
    bad.path = "status";
    T_CHECK(lv_healthcheck_params_error(&bad) != NULL);
    T_CHECK(lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &bad, on_result, &rc) ==
            NULL);
    bad.path = "/ok";
    bad.host = "evil\r\nX-Injected: 1";
    T_CHECK(lv_healthcheck_params_error(&bad) != NULL);
    bad.host = NULL;
    T_CHECK(lv_healthcheck_params_error(&bad) == NULL);

    stop_checker(&rc);
    fixture_done(&f, &r, 1);
}

T_TEST(failures_are_named)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    enum mode modes[] = {M_SILENT, M_GARBAGE, M_ENDLESS, M_TRUNCATED, M_CLOSE, M_INTERIM};
    enum { NM = sizeof(modes) / sizeof(modes[0]) };
    struct responder *rs[NM];
    for (int i = 0; i < NM; i++) {
        rs[i] = responder_new(&f.loop, modes[i]);
        fixture_add(&f, rs[i]->port);
    }
    fixture_add(&f, closed_port(&f.loop)); /* server NM: nobody listens */
    fixture_up(&f);
    struct lv_healthcheck_params p = params(200, 60);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want_each = 1;
    rc.nservers = NM + 1;
    T_CHECK(run_until(&f.loop, until_each, &rc, 3000));
    const struct result *x;
    x = nth(&rc, 0, 0);
    T_CHECK(x && !x->ok);
    T_CHECK_STR(x ? x->why : NULL, "timeout");
    T_CHECK(x && x->duration >= 60 && x->duration < 60 + 100);
    for (int i = 1; i <= 3; i++) {
        x = nth(&rc, (size_t)i, 0);
        T_CHECK(x && !x->ok);
        T_CHECK_STR(x ? x->why : NULL, "bad response");
    }
    x = nth(&rc, 2, 0); /* the endless head failed at the cap, long before the timeout */
    T_CHECK(x && x->duration < 60);
    x = nth(&rc, 4, 0);
    T_CHECK(x && !x->ok);
    T_CHECK_STR(x ? x->why : NULL, "connection closed");
    x = nth(&rc, 5, 0);
    T_CHECK(x && x->ok);
    T_CHECK_STR(x ? x->why : NULL, "204");
    x = nth(&rc, NM, 0);
    T_CHECK(x && !x->ok);
    T_CHECK_STR(x ? x->why : NULL, "connection refused");
    stop_checker(&rc);
    fixture_done(&f, rs, NM);
}

T_TEST(cannot_resolve)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SEQ);
    fixture_add(&f, r->port);
    fixture_up(&f);
    /* As if the name had not resolved (and no resolution were under way). */
    int naddrs = f.up->servers[0].naddrs;
    f.up->servers[0].naddrs = 0;
    struct lv_healthcheck_params p = params(20, 500);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want = 1;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    T_CHECK(!rc.r[0].ok);
    T_CHECK_STR(rc.r[0].why, "cannot resolve");
    /* Addresses arrive (a re-resolution): the next checks use them. */
    f.up->servers[0].naddrs = naddrs;
    rc.want = rc.n + 2;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    T_CHECK(rc.r[rc.n - 1].ok);
    T_CHECK_STR(rc.r[rc.n - 1].why, "200");
    stop_checker(&rc);
    fixture_done(&f, &r, 1);
}

T_TEST(checks_are_spread_and_periodic)
{
    enum { N = 8, INTERVAL = 60, CHECKS = 4 };
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SEQ);
    for (int i = 0; i < N; i++)
        fixture_add(&f, r->port);
    fixture_up(&f);
    struct lv_healthcheck_params p = params(INTERVAL, 500);
    uv_update_time(&f.loop);
    uint64_t t0 = uv_now(&f.loop);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want_each = CHECKS;
    rc.nservers = N;
    T_CHECK(run_until(&f.loop, until_each, &rc, 5000));

    /* First checks at random offsets within the first interval, not all at once. */
    int distinct = 0;
    uint64_t firsts[N];
    for (int i = 0; i < N; i++) {
        const struct result *x = nth(&rc, (size_t)i, 0);
        firsts[i] = x ? x->start - t0 : 9999;
        T_CHECK(x && x->ok);
        /* due before t0 + INTERVAL; the loop may run it a little late */
        T_CHECK(firsts[i] < INTERVAL + 25);
        bool seen = false;
        for (int j = 0; j < i; j++)
            seen |= firsts[j] == firsts[i];
        distinct += !seen;
    }
    if (distinct < 4)
        for (int i = 0; i < N; i++)
            fprintf(stderr, "  first check of server %d at +%llu ms\n", i,
                    (unsigned long long)firsts[i]);
    T_CHECK(distinct >= 4);

    /* Then one check per interval ± 10%: never sooner, and not much later on average. */
    uint64_t total = 0;
    int gaps = 0;
    for (int i = 0; i < N; i++) {
        for (int k = 1; k < CHECKS; k++) {
            const struct result *a = nth(&rc, (size_t)i, k - 1), *b = nth(&rc, (size_t)i, k);
            if (!a || !b)
                continue;
            uint64_t gap = b->start - a->start;
            if (gap < INTERVAL - INTERVAL / 10 || gap > 2 * INTERVAL)
                fprintf(stderr, "  server %d: gap %llu ms\n", i, (unsigned long long)gap);
            T_CHECK(gap >= INTERVAL - INTERVAL / 10);
            T_CHECK(gap <= 2 * INTERVAL);
            T_CHECK(b->start >= a->end);
            total += gap;
            gaps++;
        }
    }
    T_CHECK_INT(gaps, N * (CHECKS - 1));
    if (gaps) {
        uint64_t mean = total / (uint64_t)gaps;
        T_CHECK(mean >= INTERVAL - INTERVAL / 10 && mean <= INTERVAL + INTERVAL / 10 + 15);
    }
    stop_checker(&rc);
    fixture_done(&f, &r, 1);
}

T_TEST(never_two_checks_of_a_server_at_once)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SILENT);
    fixture_add(&f, r->port);
    fixture_up(&f);
    /* The timeout is longer than the interval: the next check waits for the last one. */
    struct lv_healthcheck_params p = params(15, 45);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want = 4;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    for (int k = 0; k < 4; k++) {
        T_CHECK_STR(rc.r[k].why, "timeout");
        T_CHECK(rc.r[k].duration >= 45);
        if (k > 0)
            T_CHECK(rc.r[k].start >= rc.r[k - 1].end);
    }
    T_CHECK(lv_healthcheck_running(rc.hc) <= 1);
    T_CHECK_INT(rc.max_running, 0); /* the finished check is no longer counted in its callback */
    T_CHECK(r->requests >= 4);
    stop_checker(&rc);
    fixture_done(&f, &r, 1);
}

T_TEST(stop_while_a_check_runs)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SILENT);
    fixture_add(&f, r->port);
    fixture_up(&f);
    struct lv_healthcheck_params p = params(10, 1000);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    T_CHECK(run_until(&f.loop, until_running, &rc, 3000));
    /* Let it connect and send its request, then abandon it. */
    run_until(&f.loop, NULL, NULL, 20);
    T_CHECK_INT(lv_healthcheck_running(rc.hc), 1);
    lv_healthcheck_stop(rc.hc);
    rc.hc = NULL;
    /* The upstream can go at once: the stopped checker never touches it again. */
    lv_upstream_destroy(f.up);
    run_until(&f.loop, NULL, NULL, 50);
    T_CHECK_INT(rc.n, 0); /* an abandoned check is never reported */
    T_CHECK_INT(r->open, 0);
    responder_free(r);
    uv_run(&f.loop, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(&f.loop), 0);
}

T_TEST(stop_from_the_callback)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *r = responder_new(&f.loop, M_SEQ);
    for (int i = 0; i < 4; i++)
        fixture_add(&f, r->port);
    fixture_up(&f);
    struct lv_healthcheck_params p = params(10, 1000);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.stop_in_cb = true;
    rc.want = 1;
    T_CHECK(run_until(&f.loop, until_n, &rc, 3000));
    run_until(&f.loop, NULL, NULL, 50);
    T_CHECK_INT(rc.n, 1);
    fixture_done(&f, &r, 1);
}

T_TEST(servers_removed_by_a_reload)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct responder *ok = responder_new(&f.loop, M_SEQ);
    struct responder *silent = responder_new(&f.loop, M_SILENT);
    fixture_add(&f, ok->port);
    fixture_add(&f, silent->port);
    fixture_add(&f, ok->port);
    fixture_up(&f);
    struct lv_healthcheck_params p = params(15, 200);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want_each = 1;
    rc.nservers = 1;
    T_CHECK(run_until(&f.loop, until_each, &rc, 3000));
    T_CHECK(run_until(&f.loop, until_requests, silent, 3000));
    T_CHECK_INT(rc.per_server[1], 0); /* so server 1's first check is under way */

    /* A reload leaves two servers, and index 1 now holds another one: the check of the old
     * server 1 (silent, most likely under way) is dropped, server 2 is no longer checked. */
    f.up->nservers = 2;
    char saved[sizeof(f.up->servers[1].name)];
    memcpy(saved, f.up->servers[1].name, sizeof(saved));
    snprintf(f.up->servers[1].name, sizeof(f.up->servers[1].name), "127.0.0.1:%d", ok->port);
    f.up->servers[1].hp.port = (uint16_t)ok->port;
    f.up->servers[1].addrs[0] = f.up->servers[0].addrs[0];
    T_CHECK_INT(lv_healthcheck_update(rc.hc, &p), 0);
    int mark = rc.n;
    memset(rc.per_server, 0, sizeof(rc.per_server));
    rc.want_each = 2;
    rc.nservers = 2;
    T_CHECK(run_until(&f.loop, until_each, &rc, 3000));
    for (int i = mark; i < rc.n && i < MAXR; i++) {
        T_CHECK(rc.r[i].server < 2);
        T_CHECK(rc.r[i].ok); /* never the timeout of the dropped check */
    }
    T_CHECK_INT(rc.per_server[2], 0);
    stop_checker(&rc);
    /* Put the fixture back as the upstream created it, for its own teardown. */
    memcpy(f.up->servers[1].name, saved, sizeof(saved));
    f.up->nservers = 3;
    struct responder *rs[] = {ok, silent};
    fixture_done(&f, rs, 2);
}

T_TEST(tls_checks)
{
    static struct fixture f;
    static struct rec rc;
    fixture_init(&f);
    memset(&rc, 0, sizeof(rc));
    rc.loop = &f.loop;
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *sc = lv_tls_server_ctx(P("localhost.pem"), P("srv.key"), &err);
    T_CHECK(sc != NULL);
    lv_buf_dispose(&err);
    struct responder *r = responder_new(&f.loop, M_SEQ);
    r->tls = sc;
    fixture_add(&f, r->port);
    f.cfg.tls = true;
    f.cfg.tls_verify = true;
    char ca[256];
    snprintf(ca, sizeof(ca), "%s", P("ca.pem"));
    f.cfg.tls_ca = ca;
    f.cfg.tls_sni = "localhost"; /* the server is 127.0.0.1; its certificate names localhost */
    fixture_up(&f);
    T_CHECK(f.up->tls_ctx != NULL);
    struct lv_healthcheck_params p = params(20, 1000);
    rc.hc = lv_healthcheck_start(&f.loop, &lv_upstream_check_servers, f.up, &p, on_result, &rc);
    rc.want = 2;
    T_CHECK(run_until(&f.loop, until_n, &rc, 5000));
    T_CHECK(rc.r[0].ok && rc.r[1].ok);
    T_CHECK_STR(rc.r[0].why, "200");
    const char *want = "GET /healthz HTTP/1.1\r\n";
    T_CHECK(r->first.len > strlen(want) && memcmp(r->first.data, want, strlen(want)) == 0);

    /* Another name: the certificate does not match, the check fails with the reason. */
    f.cfg.tls_sni = "wrong.example";
    uint64_t changed = uv_now(&f.loop);
    int mark = rc.n;
    rc.want = mark + 2; /* the first may have started before the change */
    T_CHECK(run_until(&f.loop, until_n, &rc, 5000));
    /* Same millisecond as the change: it may have begun before it; the next one did not. */
    const struct result *x = &rc.r[rc.r[mark].start > changed ? mark : mark + 1];
    T_CHECK(!x->ok);
    T_CHECK(strncmp(x->why, "TLS: certificate verify failed", 30) == 0);
    if (strncmp(x->why, "TLS: certificate verify failed", 30) != 0)
        fprintf(stderr, "  got: %s\n", x->why);

    stop_checker(&rc);
    fixture_done(&f, &r, 1);
    lv_tls_ctx_free(sc);
}

int main(void)
{
    signal(SIGPIPE, SIG_IGN);
    make_certs();
    T_RUN(ok_then_503_and_the_request_sent);
    T_RUN(host_field_and_expect_set);
    T_RUN(failures_are_named);
    T_RUN(cannot_resolve);
    T_RUN(checks_are_spread_and_periodic);
    T_RUN(never_two_checks_of_a_server_at_once);
    T_RUN(stop_while_a_check_runs);
    T_RUN(stop_from_the_callback);
    T_RUN(servers_removed_by_a_reload);
    T_RUN(tls_checks);
    certs_remove();
    T_DONE();
}
