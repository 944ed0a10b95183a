/*
 * test_proxy_request: the request path's stages (proxy/request.h) driven over a fake downstream
 * against a real upstream socket, on a real server state and loop (test_proxy_fixture.h). Each
 * test scripts the upstream step by step: a whole answer, pieces with the loop running between
 * them, no answer, a reset, a close mid-body, 503 then 200, garbage. The teardown tests take a
 * request into each phase and let the client go there (README "Errors made by the gateway",
 * "Reload"): the request ends once, with no answer, counted once, its upstream connection
 * closed and its generation unpinned.
 */
#include "obs/accesslog.h"
#include "test_proxy_fixture.h"

static int dead_port;

/* One upstream (`up`) on the test's server; `narrow` is the same server with one connection
 * at most; `dead` refuses connects. */
static const char *config_text(void)
{
    static char text[4096];
    snprintf(
        text, sizeof(text),
        "return {\n"
        "  upstreams = {\n"
        "    up = { servers = { '127.0.0.1:%d' }, outlier = false },\n"
        "    narrow = { servers = { '127.0.0.1:%d' }, outlier = false,\n"
        "               pool = { max_connections = 1 } },\n"
        "    dead = { servers = { '127.0.0.1:%d' }, outlier = false },\n"
        "  },\n"
        "  routes = {\n"
        "    { name = 'plain', match = { prefix = '/plain' }, upstream = 'up',\n"
        "      timeout = '10s', retry = { attempts = 1 } },\n"
        "    { name = 'stream', match = { prefix = '/stream' }, upstream = 'up',\n"
        "      request_buffer = false, retry = { attempts = 1 } },\n"
        "    { name = 'slow', match = { prefix = '/slow' }, upstream = 'up',\n"
        "      timeout = '10s', try_timeout = '100ms', retry = { attempts = 1 } },\n"
        "    { name = 'retry', match = { prefix = '/retry' }, upstream = 'up', timeout = '60s',\n"
        "      retry = { attempts = 2, on = { 503 },\n"
        "                backoff = { base = '20s', max = '20s', jitter = 'none' } } },\n"
        "    { name = 'again', match = { prefix = '/again' }, upstream = 'up',\n"
        "      retry = { attempts = 2, on = { 503 },\n"
        "                backoff = { base = '10ms', max = '10ms', jitter = 'none' } } },\n"
        "    { name = 'narrow', match = { prefix = '/narrow' }, upstream = 'narrow' },\n"
        "    { name = 'dead', match = { prefix = '/dead' }, upstream = 'dead' },\n"
        "    { name = 'idem', match = { prefix = '/idem' }, upstream = 'up',\n"
        "      idempotency = true },\n"
        "    { name = 'paused', match = { prefix = '/paused' }, upstream = 'up',\n"
        "      timeout = '200ms', retry = { attempts = 1 } },\n"
        "  },\n"
        "}\n",
        up_port, up_port, dead_port);
    return text;
}

static void start(void)
{
    fx_start();
    dead_port = fx_dead_port();
    fx_install(config_text());
}

/* A reload while a request is in flight: the request keeps the old generation pinned. */
static void reload_while_pinned(void)
{
    fx_install(config_text());
    T_CHECK_INT(fx_server.nlive, 2);
}

/* After the client went away in the middle of a request: the slot is idle, the downstream was
 * never told done, the old generation went with the request's pin, and the request was counted
 * once with `code` on its route. */
static void check_gone(struct fake_ds *f, struct lv_request *r, const char *route, int code)
{
    T_CHECK_INT(r->phase, LV_REQ_IDLE);
    T_CHECK(r->gen == NULL);
    T_CHECK_INT(f->done_calls, 0);
    T_CHECK_INT(fx_server.nlive, 1);
    struct lv_route_state *rs = fx_route(route);
    T_CHECK(rs != NULL);
    if (rs)
        T_CHECK_INT(lv_route_state_requests(rs), 1);
    char line[160];
    snprintf(line, sizeof(line), "levee_requests_total{route=\"%s\",code=\"%d\"} 1", route, code);
    T_CHECK(fx_metrics_has(line));
}

/* After fx_stop: exactly one access-log line, for this request, marked client-abort. */
static void check_logged_abort(const char *route, int code)
{
    char status[32], rt[64];
    snprintf(status, sizeof(status), "\"status\":%d", code);
    snprintf(rt, sizeof(rt), "\"route\":\"%s\"", route);
    T_CHECK_INT(fx_access_lines("\n"), 1);
    T_CHECK_INT(fx_access_lines(status), 1);
    T_CHECK_INT(fx_access_lines(rt), 1);
    T_CHECK_INT(fx_access_lines("client-abort"), 1);
}

static bool starts_with(const char *s, const char *prefix)
{
    return strncmp(s, prefix, strlen(prefix)) == 0;
}

static const char *const get_plain = "GET /plain/x HTTP/1.1\r\nHost: example.test\r\n\r\n";

/* ---- 1. a normal GET */

T_TEST(test_get_forwarded_and_answered)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, get_plain);
    T_CHECK_INT(r->phase, LV_REQ_CONNECTING);
    RUN_UNTIL(up_has_head(0));
    T_CHECK_INT(r->phase, LV_REQ_EXCHANGE);
    const char *got = upc[0]->got.data;
    T_CHECK(starts_with(got, "GET /plain/x HTTP/1.1\r\n"));
    T_CHECK(strstr(got, "\r\nX-Forwarded-For: 192.0.2.7\r\n") != NULL);
    T_CHECK(strstr(got, "\r\nVia: 1.1 levee\r\n") != NULL);
    T_CHECK(strstr(got, "\r\nLevee-Attempt: 1\r\n") != NULL);
    T_CHECK(strstr(got, "\r\nHost: example.test\r\n") != NULL);

    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: yes\r\n\r\nhello");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(!f.done_close);
    T_CHECK_INT(r->phase, LV_REQ_IDLE);
    T_CHECK(r->gen == NULL);
    const char *out = fds_text(&f);
    T_CHECK(starts_with(out, "HTTP/1.1 200 OK\r\n"));
    T_CHECK(strstr(out, "\r\nX-App: yes\r\n") != NULL);
    T_CHECK(strstr(out, "\r\nContent-Length: 5\r\n") != NULL);
    T_CHECK_INT(fds_body_len(&f), 5);
    T_CHECK(f.out.len >= 5 && memcmp(out + f.out.len - 5, "hello", 5) == 0);
    /* the id the client got is the one the upstream got */
    const char *rid = strstr(out, "\r\nX-Request-Id: ");
    T_CHECK(rid != NULL);
    if (rid) {
        char line[96];
        const char *e = strstr(rid + 2, "\r\n");
        snprintf(line, sizeof(line), "%.*s", (int)(e - rid), rid);
        T_CHECK(e - rid > 20);
        T_CHECK(strstr(got, line) != NULL);
    }
    T_CHECK_INT(f.refuse_calls + f.abort_calls, 0);
    T_CHECK(f.consumed_calls >= 1);
    /* the upstream connection went back to the pool, open */
    fx_run_for(20);
    T_CHECK(!up_peer_closed(0));
    T_CHECK(fx_metrics_has("levee_requests_total{route=\"plain\",code=\"200\"} 1"));
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("\"status\":200"), 1);
    T_CHECK_INT(fx_access_lines("client-abort"), 0);
}

/* ---- 2. teardown in every phase */

T_TEST(test_gone_while_receiving)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    /* request buffering (on by default): 10 of 100 body bytes are in */
    struct lv_request *r = fds_send(&f, "POST /plain/up HTTP/1.1\r\nHost: a\r\n"
                                        "Content-Length: 100\r\n\r\n0123456789");
    fds_more(&f, "abcdefghij");
    fx_run_for(20);
    T_CHECK_INT(r->phase, LV_REQ_RECEIVING);
    T_CHECK_INT(r->body_in, 20);
    T_CHECK_INT(nupc, 0); /* no upstream connection while the body arrives */
    reload_while_pinned();
    fds_gone(&f);
    check_gone(&f, r, "plain", 499);
    fx_run_for(20);
    T_CHECK_INT(nupc, 0);
    fds_dispose(&f);
    fx_stop();
    check_logged_abort("plain", 499);
}

T_TEST(test_gone_while_looking_up_the_key)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    const char *req = "POST /idem HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k1\r\n"
                      "Content-Length: 3\r\n\r\nabc";
    struct lv_request *r = fds_send(&f, req);
    T_CHECK_INT(r->phase, LV_REQ_LOOKUP); /* the store answers from the loop */
    reload_while_pinned();
    fds_gone(&f);
    check_gone(&f, r, "idem", 499);
    fx_run_for(20);
    T_CHECK_INT(nupc, 0);
    /* the key was not left locked: the same request again is forwarded */
    struct fake_ds g;
    fds_init(&g, "192.0.2.8");
    fds_send(&g, req);
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "\r\n\r\nabc"));
    up_send(upc[0], "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
    RUN_UNTIL(g.done_calls == 1);
    T_CHECK(starts_with(fds_text(&g), "HTTP/1.1 201 Created\r\n"));
    fds_dispose(&g);
    fds_dispose(&f);
    fx_stop();
}

T_TEST(test_gone_while_connecting)
{
    start();
    /* a holds the narrow pool's only connection ... */
    struct fake_ds a, b;
    fds_init(&a, "192.0.2.1");
    fds_init(&b, "192.0.2.2");
    fds_send(&a, "GET /narrow/a HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0));
    /* ... so b waits for one */
    struct lv_request *rb = fds_send(&b, "GET /narrow/b HTTP/1.1\r\nHost: a\r\n\r\n");
    fx_run_for(20);
    T_CHECK_INT(rb->phase, LV_REQ_CONNECTING);
    T_CHECK_INT(nupc, 1);
    reload_while_pinned();
    T_CHECK(b.r == rb);
    /* b goes: its place in the queue with it */
    b.ds.closed = true;
    lv_request_client_gone(rb);
    T_CHECK_INT(rb->phase, LV_REQ_IDLE);
    T_CHECK_INT(b.done_calls, 0);
    T_CHECK(rb->gen == NULL);
    T_CHECK_INT(fx_server.nlive, 2); /* a still pins the old generation */
    lv_request_put(rb);
    b.r = NULL;
    /* a completes; its connection goes back to the pool, not to b */
    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    RUN_UNTIL(a.done_calls == 1);
    T_CHECK(!a.done_close);
    fx_run_for(30);
    T_CHECK_INT(nupc, 1);
    T_CHECK(!up_peer_closed(0));
    T_CHECK(strstr(upc[0]->got.data, "/narrow/b") == NULL);
    T_CHECK_INT(fx_server.nlive, 1);
    T_CHECK_INT(lv_route_state_requests(fx_route("narrow")), 2);
    T_CHECK(fx_metrics_has("levee_requests_total{route=\"narrow\",code=\"499\"} 1"));
    T_CHECK(fx_metrics_has("levee_requests_total{route=\"narrow\",code=\"200\"} 1"));
    T_CHECK_INT(b.out.len, 0);
    fds_dispose(&a);
    fds_dispose(&b);
    fx_stop();
    T_CHECK_INT(fx_access_lines("client-abort"), 1);
    T_CHECK_INT(fx_access_lines("\"status\":499"), 1);
}

T_TEST(test_gone_while_exchanging)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    T_CHECK_INT(r->phase, LV_REQ_EXCHANGE);
    reload_while_pinned();
    fds_gone(&f);
    check_gone(&f, r, "plain", 499);
    RUN_UNTIL(up_peer_closed(0)); /* the upstream sees the connection closed */
    T_CHECK_INT(f.out.len, 0);
    fds_dispose(&f);
    fx_stop();
    check_logged_abort("plain", 499);
}

T_TEST(test_gone_while_backing_off)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, "GET /retry HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(r->phase == LV_REQ_BACKOFF);
    RUN_UNTIL(up_peer_closed(0)); /* the dropped answer's connection is not reused */
    reload_while_pinned();
    fds_gone(&f);
    check_gone(&f, r, "retry", 499);
    fx_run_for(30);
    T_CHECK_INT(nupc, 1); /* no second attempt */
    T_CHECK_INT(f.out.len, 0);
    fds_dispose(&f);
    fx_stop();
    check_logged_abort("retry", 499);
}

T_TEST(test_gone_while_responding)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    RUN_UNTIL(fds_body_len(&f) == 10);
    T_CHECK_INT(r->phase, LV_REQ_RESPONDING);
    reload_while_pinned();
    fds_gone(&f);
    /* the head went out: the request is counted with the status the client got */
    check_gone(&f, r, "plain", 200);
    RUN_UNTIL(up_peer_closed(0));
    fds_dispose(&f);
    fx_stop();
    check_logged_abort("plain", 200);
}

/* SETTLING lasts from the response's end until the store's answer, which comes on a later loop
 * turn: a check handle (after the upstream read, before the next turn's timers) lets the client
 * go in between. */
static struct fake_ds *settle_ds;
static int settle_seen;
static void on_check_settling(uv_check_t *h)
{
    (void)h;
    if (settle_ds && settle_ds->r && settle_ds->r->phase == LV_REQ_SETTLING) {
        settle_seen++;
        fds_gone(settle_ds);
    }
}

T_TEST(test_gone_while_settling)
{
    start();
    uv_check_t check;
    uv_check_init(&fx_loop, &check);
    uv_check_start(&check, on_check_settling);
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    settle_ds = &f;
    settle_seen = 0;
    const char *req = "POST /idem HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k2\r\n"
                      "Content-Length: 3\r\n\r\nabc";
    struct lv_request *r = fds_send(&f, req);
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "\r\n\r\nabc"));
    T_CHECK_INT(r->phase, LV_REQ_EXCHANGE);
    reload_while_pinned();
    up_send(upc[0], "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
    RUN_UNTIL(settle_seen == 1);
    settle_ds = NULL;
    check_gone(&f, r, "idem", 201);
    T_CHECK_INT(f.out.len, 0); /* the last bytes waited for the store */
    fx_run_for(20);
    T_CHECK_INT(f.done_calls, 0);
    /* the key is not left in flight: the same request again is not a conflict */
    struct fake_ds g;
    fds_init(&g, "192.0.2.8");
    fds_send(&g, req);
    RUN_UNTIL(g.done_calls == 1 || up_has_head(1));
    if (g.done_calls == 0) { /* forwarded again */
        up_send(upc[1], "HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok");
        RUN_UNTIL(g.done_calls == 1);
    }
    T_CHECK(starts_with(fds_text(&g), "HTTP/1.1 201 Created\r\n"));
    uv_close((uv_handle_t *)&check, NULL);
    fds_dispose(&g);
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("client-abort"), 1);
}

/* A client that leaves while the connect is under way starts nothing more; the connection
 * that still comes up goes to the idle pool (README "Happy Eyeballs") and serves the next
 * request. A prepare handle (after the timers that start the connect, before the poll that
 * completes it) lets the client go in between. */
static struct fake_ds *race_ds;
static int race_left;
static void on_prepare_leave_mid_connect(uv_prepare_t *h)
{
    (void)h;
    struct lv_request *r = race_ds ? race_ds->r : NULL;
    if (r && r->phase == LV_REQ_CONNECTING && !r->acq.queued) {
        race_left++;
        fds_gone(race_ds);
    }
}

T_TEST(test_gone_mid_connect_leaves_the_connection_to_the_pool)
{
    start();
    uv_prepare_t prep;
    uv_prepare_init(&fx_loop, &prep);
    uv_prepare_start(&prep, on_prepare_leave_mid_connect);
    struct fake_ds f, g;
    fds_init(&f, "192.0.2.7");
    fds_init(&g, "192.0.2.8");
    race_left = 0;
    race_ds = &f;
    struct lv_request *r = fds_send(&f, get_plain);
    T_CHECK_INT(r->phase, LV_REQ_CONNECTING);
    T_CHECK(r->acq.queued); /* the connect starts from the loop */
    reload_while_pinned();
    RUN_UNTIL(race_left == 1);
    race_ds = NULL;
    check_gone(&f, r, "plain", 499);
    RUN_UNTIL(nupc == 1);
    fx_run_for(20);
    T_CHECK(upc[0] && upc[0]->got.len == 0); /* no request was sent on it */
    T_CHECK(!up_peer_closed(0));
    fds_send(&g, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 204 No Content\r\n\r\n");
    RUN_UNTIL(g.done_calls == 1);
    T_CHECK(starts_with(fds_text(&g), "HTTP/1.1 204 No Content\r\n"));
    T_CHECK_INT(nupc, 1);
    uv_close((uv_handle_t *)&prep, NULL);
    fds_dispose(&f);
    fds_dispose(&g);
    fx_stop();
}

/* A half-close before the response began is a client gone (README "Timeouts"); once the
 * response streams it only means the client sent everything. */
T_TEST(test_client_eof_before_and_after_the_response_began)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    lv_request_client_eof(r);
    T_CHECK_INT(f.abort_calls, 1);
    T_CHECK(f.r == NULL);
    check_gone(&f, r, "plain", 499);
    RUN_UNTIL(up_peer_closed(0));

    struct fake_ds g;
    fds_init(&g, "192.0.2.8");
    r = fds_send(&g, get_plain);
    RUN_UNTIL(up_has_head(1));
    up_send(upc[1], "HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab");
    RUN_UNTIL(fds_body_len(&g) == 2);
    lv_request_client_eof(r);
    T_CHECK_INT(g.abort_calls, 0);
    T_CHECK_INT(r->phase, LV_REQ_RESPONDING);
    up_send(upc[1], "cd");
    RUN_UNTIL(g.done_calls == 1);
    T_CHECK_INT(fds_body_len(&g), 4);
    fds_dispose(&f);
    fds_dispose(&g);
    fx_stop();
}

/* Expect: 100-continue is answered by levee; a buffered body is received whole before a
 * connection is taken, then goes out with the head. */
T_TEST(test_buffered_body_with_expect_continue)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, "POST /plain HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n"
                                        "Expect: 100-continue\r\n\r\n");
    T_CHECK_STR(fds_text(&f), "HTTP/1.1 100 Continue\r\n\r\n");
    T_CHECK_INT(r->phase, LV_REQ_RECEIVING);
    fds_more(&f, "01234");
    fx_run_for(10);
    T_CHECK_INT(r->phase, LV_REQ_RECEIVING);
    T_CHECK_INT(nupc, 0);
    fds_more(&f, "56789");
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "\r\n\r\n0123456789"));
    const char *got = upc[0]->got.data;
    T_CHECK(strstr(got, "\r\nContent-Length: 10\r\n") != NULL);
    T_CHECK(strstr(got, "Expect") == NULL);
    up_send(upc[0], "HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(!f.done_close);
    T_CHECK(strstr(fds_text(&f), "\r\n\r\nHTTP/1.1 201 Created\r\n") != NULL);
    T_CHECK_INT(f.ds.in.len, 0);
    fds_dispose(&f);
    fx_stop();
}

/* A slot given back by a request the client left mid-response serves the next request from
 * a clean state. */
T_TEST(test_slot_after_a_client_left_serves_cleanly)
{
    start();
    struct fake_ds f, g;
    fds_init(&f, "192.0.2.7");
    fds_init(&g, "192.0.2.8");
    struct lv_request *r = fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n");
    RUN_UNTIL(fds_body_len(&f) > 0);
    fds_gone(&f);
    struct lv_request *r2 = fds_send(&g, get_plain);
    T_CHECK(r2 == r);
    T_CHECK(!r2->head_sent && r2->status == 0 && r2->ntries == 0 && !r2->resp_rechunk);
    RUN_UNTIL(up_has_head(1));
    up_send(upc[1], "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz");
    RUN_UNTIL(g.done_calls == 1);
    const char *out = fds_text(&g);
    T_CHECK(starts_with(out, "HTTP/1.1 200 OK\r\n"));
    T_CHECK(strstr(out, "\r\nContent-Length: 3\r\n") != NULL);
    T_CHECK(strstr(out, "Transfer-Encoding") == NULL);
    /* the body is the new answer only (the head carries a random X-Request-Id, which may
     * itself contain "abc", so the body is compared, not searched) */
    const char *body = strstr(out, "\r\n\r\n");
    T_CHECK(body != NULL);
    T_CHECK_STR(body + 4, "xyz");
    T_CHECK_INT(fds_body_len(&g), 3);
    fds_dispose(&f);
    fds_dispose(&g);
    fx_stop();
}

/* Backpressure: a client with a full output queue stops the upstream reads; bytes the
 * upstream sends meanwhile wait; a drained client resumes them. Once streaming, a stalled
 * upstream (no byte for the route's timeout) ends the response (README "Timeouts"), also
 * when the idle bound ran out while the client held the reads. */
T_TEST(test_backpressure_and_stall_after_resume)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    f.ds.write_queued = LV_DOWNSTREAM_WRITE_HIGH; /* a slow reader */
    struct lv_request *r = fds_send(&f, "GET /paused HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    RUN_UNTIL(fds_body_len(&f) == 10 && r->upstream_paused);
    up_send(upc[0], "abcdefghij");
    fx_run_for(50);
    T_CHECK_INT(fds_body_len(&f), 10); /* held while the client is full */
    f.ds.write_queued = 0;
    lv_request_client_drained(r);
    RUN_UNTIL(fds_body_len(&f) == 20);

    /* full again; the idle bound runs out while the reads are held */
    f.ds.write_queued = LV_DOWNSTREAM_WRITE_HIGH;
    up_send(upc[0], "klmnopqrst");
    RUN_UNTIL(fds_body_len(&f) == 30 && r->upstream_paused);
    RUN_UNTIL(r->due[LV_CLOCK_TRY] == 0); /* the idle bound ran out while paused */
    T_CHECK_INT(r->phase, LV_REQ_RESPONDING);
    T_CHECK_INT(f.done_calls, 0);
    /* the client drains; the upstream sends nothing more: the response must end */
    f.ds.write_queued = 0;
    lv_request_client_drained(r);
    RUN_UNTIL_MS(f.done_calls == 1, 2000);
    T_CHECK(f.done_close);
    T_CHECK_INT(fds_body_len(&f), 30);
    if (f.r) /* stuck: let it go so the rest of the test can stop */
        fds_gone(&f);
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("upstream-abort"), 1);
}

/* ---- 3. errors reach the client as the documented answer */

/* The request ended with the gateway error `token` (README "Errors made by the gateway"). */
static void check_error_answer(struct fake_ds *f, const char *status_line, const char *token,
                               bool close)
{
    const char *out = fds_text(f);
    T_CHECK_INT(f->done_calls, 1);
    T_CHECK(f->done_close == close);
    T_CHECK(starts_with(out, status_line));
    char hdr[96];
    snprintf(hdr, sizeof(hdr), "\r\nLevee-Error: %s\r\n", token);
    T_CHECK(strstr(out, hdr) != NULL);
    snprintf(hdr, sizeof(hdr), "{\"error\":\"%s\"", token);
    T_CHECK(strstr(out, hdr) != NULL);
    T_CHECK(strstr(out, "\r\nX-Request-Id: ") != NULL);
}

T_TEST(test_connect_refused_is_502_connect_failure)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, "GET /dead HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    check_error_answer(&f, "HTTP/1.1 502 ", "connect-failure", false);
    T_CHECK_INT(r->ntries, 2); /* connect-failure is retried by default */
    T_CHECK_INT(r->phase, LV_REQ_IDLE);
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("\"status\":502"), 1);
}

T_TEST(test_upstream_timeout_is_504)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, "GET /slow HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0));
    RUN_UNTIL(f.done_calls == 1);
    check_error_answer(&f, "HTTP/1.1 504 ", "upstream-timeout", false);
    RUN_UNTIL(up_peer_closed(0));
    fds_dispose(&f);
    fx_stop();
}

T_TEST(test_garbage_head_is_502_bad_upstream_response)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "this is not http at all\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    check_error_answer(&f, "HTTP/1.1 502 ", "bad-upstream-response", false);
    RUN_UNTIL(up_peer_closed(0));
    fds_dispose(&f);
    fx_stop();
}

T_TEST(test_reset_before_head_is_502_upstream_reset)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_reset(upc[0]);
    RUN_UNTIL(f.done_calls == 1);
    check_error_answer(&f, "HTTP/1.1 502 ", "upstream-reset", false);
    fds_dispose(&f);
    fx_stop();
}

T_TEST(test_upstream_closing_mid_body_cuts_the_message)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789");
    RUN_UNTIL(fds_body_len(&f) == 10);
    T_CHECK_INT(f.done_calls, 0);
    up_close(upc[0]);
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(f.done_close); /* the client sees fewer bytes than Content-Length, then close */
    T_CHECK(starts_with(fds_text(&f), "HTTP/1.1 200 OK\r\n"));
    T_CHECK(strstr(fds_text(&f), "\r\nContent-Length: 100\r\n") != NULL);
    T_CHECK_INT(fds_body_len(&f), 10);
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("upstream-abort"), 1);
}

T_TEST(test_bad_chunk_from_the_client_is_400_and_close)
{
    start();
    /* buffered: the framing error shows before any connection is taken */
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, "POST /plain HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\nzz\r\n");
    RUN_UNTIL(f.done_calls == 1);
    check_error_answer(&f, "HTTP/1.1 400 ", "bad-request", true);
    T_CHECK(strstr(fds_text(&f), "\r\nConnection: close\r\n") != NULL);
    T_CHECK_INT(nupc, 0);
    fds_dispose(&f);

    /* streamed: the upstream already has the first chunk; its connection is closed */
    struct fake_ds g;
    fds_init(&g, "192.0.2.8");
    fds_send(&g, "POST /stream HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                 "5\r\nhello\r\n");
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "hello"));
    fds_more(&g, "zz\r\n");
    RUN_UNTIL(g.done_calls == 1);
    check_error_answer(&g, "HTTP/1.1 400 ", "bad-request", true);
    RUN_UNTIL(up_peer_closed(0));
    fds_dispose(&g);
    fx_stop();
}

/* The first attempt's 503 never reaches the client; the second answer arrives in pieces with
 * the loop running between them, and each piece goes out as it comes. */
T_TEST(test_503_then_200_in_pieces)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r = fds_send(&f, "GET /again HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(up_has_head(1));
    T_CHECK(strstr(upc[1]->got.data, "\r\nLevee-Attempt: 2\r\n") != NULL);
    up_send(upc[1], "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n");
    RUN_UNTIL(strstr(fds_text(&f), "\r\n\r\n") != NULL);
    T_CHECK_INT(r->phase, LV_REQ_RESPONDING);
    up_send(upc[1], "3\r\nabc\r\n");
    RUN_UNTIL(fds_body_len(&f) >= 8);
    T_CHECK_INT(f.done_calls, 0);
    up_send(upc[1], "0\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(!f.done_close);
    const char *out = fds_text(&f);
    T_CHECK(starts_with(out, "HTTP/1.1 200 OK\r\n"));
    T_CHECK(strstr(out, "Service Unavailable") == NULL);
    T_CHECK(strstr(out, "\r\n\r\n3\r\nabc\r\n0\r\n\r\n") != NULL);
    T_CHECK_INT(r->ntries, 2);
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("\"status\":200"), 1);
    T_CHECK_INT(fx_access_lines("retried"), 1);
}

/* ---- the response's framing toward the client */

T_TEST(test_interim_then_final_and_http10_read_until_close)
{
    start();
    /* an interim 103 goes to an HTTP/1.1 client before the final head */
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n");
    RUN_UNTIL(strstr(fds_text(&f), "\r\n\r\n") != NULL);
    T_CHECK(starts_with(fds_text(&f), "HTTP/1.1 103 Early Hints\r\n"));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(strstr(fds_text(&f), "\r\n\r\nHTTP/1.1 200 OK\r\n") != NULL);
    T_CHECK(!f.done_close);
    fds_dispose(&f);

    /* a chunked answer to an HTTP/1.0 client: the body ends with the connection */
    struct fake_ds g;
    fds_init(&g, "192.0.2.8");
    fds_send(&g, "GET /plain/10 HTTP/1.0\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "/plain/10"));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n");
    RUN_UNTIL(g.done_calls == 1);
    T_CHECK(g.done_close);
    const char *out = fds_text(&g);
    T_CHECK(starts_with(out, "HTTP/1.1 200 OK\r\n"));
    T_CHECK(strstr(out, "Transfer-Encoding") == NULL);
    T_CHECK(strstr(out, "\r\nConnection: close\r\n") != NULL);
    T_CHECK(g.out.len > 4 && memcmp(out + g.out.len - 4, "body", 4) == 0);
    fds_dispose(&g);
    fx_stop();
}

/* ---- request bodies: replay on a retry, an answer before the body is all in */

T_TEST(test_retry_replays_the_body)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, "PUT /again HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello");
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "\r\n\r\nhello"));
    up_send(upc[0], "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(up_has_head(1) && strstr(upc[1]->got.data, "\r\n\r\nhello"));
    T_CHECK(strstr(upc[1]->got.data, "\r\nContent-Length: 5\r\n") != NULL);
    T_CHECK(strstr(upc[1]->got.data, "\r\nLevee-Attempt: 2\r\n") != NULL);
    up_send(upc[1], "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(starts_with(fds_text(&f), "HTTP/1.1 200 OK\r\n"));
    T_CHECK(!f.done_close);
    fds_dispose(&f);
    fx_stop();
}

T_TEST(test_answer_before_the_body_is_all_in_closes)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    struct lv_request *r =
        fds_send(&f, "POST /stream HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n01234");
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "\r\n\r\n01234"));
    T_CHECK(!r->body_done);
    up_send(upc[0], "HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(starts_with(fds_text(&f), "HTTP/1.1 413 "));
    T_CHECK(f.done_close);        /* the rest of the body is unread: the framing is lost */
    RUN_UNTIL(up_peer_closed(0)); /* a connection with a body half sent is not pooled */
    fds_dispose(&f);
    fx_stop();
}

/* ---- idempotency keys: a stored answer is replayed; the same key in flight is a conflict */

T_TEST(test_idempotency_replay_and_conflict)
{
    start();
    const char *req = "POST /idem HTTP/1.1\r\nHost: a\r\nIdempotency-Key: k3\r\n"
                      "Content-Length: 3\r\n\r\nabc";
    struct fake_ds f, g, h;
    fds_init(&f, "192.0.2.7");
    fds_init(&g, "192.0.2.8");
    fds_init(&h, "192.0.2.9");
    fds_send(&f, req);
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "\r\n\r\nabc"));
    fds_send(&g, req); /* the first is in flight */
    RUN_UNTIL(g.done_calls == 1);
    check_error_answer(&g, "HTTP/1.1 409 ", "idempotency-conflict", false);
    up_send(upc[0], "HTTP/1.1 201 Created\r\nContent-Length: 2\r\nX-Id: 7\r\n\r\nok");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(starts_with(fds_text(&f), "HTTP/1.1 201 Created\r\n"));
    fds_send(&h, req); /* answered from the store: the upstream sees nothing more */
    RUN_UNTIL(h.done_calls == 1);
    const char *out = fds_text(&h);
    T_CHECK(starts_with(out, "HTTP/1.1 201 "));
    T_CHECK(strstr(out, "\r\nIdempotent-Replayed: true\r\n") != NULL);
    T_CHECK(strstr(out, "\r\nX-Id: 7\r\n") != NULL);
    T_CHECK_INT(fds_body_len(&h), 2);
    T_CHECK(strstr(upc[0]->got.data + 1, "POST /idem") == NULL);
    T_CHECK_INT(nupc, 1);
    fds_dispose(&f);
    fds_dispose(&g);
    fds_dispose(&h);
    fx_stop();
}

/* A reused pooled connection the upstream closed without answering: the request is sent
 * once more on a fresh connection, not counted as a retry (attempts = 1 on the route). */
T_TEST(test_stale_pooled_connection_is_resent_once)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    fds_send(&f, get_plain);
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(f.done_calls == 1);
    struct lv_request *r = fds_send(&f, "GET /plain/again HTTP/1.1\r\nHost: a\r\n\r\n");
    RUN_UNTIL(up_has_head(0) && strstr(upc[0]->got.data, "/plain/again"));
    up_close(upc[0]); /* read the head, answered nothing */
    RUN_UNTIL(up_has_head(1));
    T_CHECK(strstr(upc[1]->got.data, "GET /plain/again ") != NULL);
    T_CHECK(strstr(upc[1]->got.data, "\r\nLevee-Attempt: 1\r\n") != NULL);
    up_send(upc[1], "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    RUN_UNTIL(f.done_calls == 2);
    T_CHECK(!f.done_close);
    T_CHECK_INT(r->status, 200);
    T_CHECK(!(r->flags & LV_ACCESS_RETRIED));
    fds_dispose(&f);
    fx_stop();
}

/* ---- 4. slots: pipelined requests on one downstream reuse one slot, from a clean state */

T_TEST(test_pipelined_requests_reuse_a_clean_slot)
{
    start();
    struct fake_ds f;
    fds_init(&f, "192.0.2.7");
    /* the first request leaves a retry, two tries, a status and flags behind */
    lv_buf_puts(&f.ds.in, "GET /again HTTP/1.1\r\nHost: a\r\n\r\n"
                          "GET /plain/2 HTTP/1.1\r\nHost: a\r\n\r\n");
    struct lv_request *r1 = fds_send(&f, "");
    RUN_UNTIL(up_has_head(0));
    up_send(upc[0], "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
    RUN_UNTIL(up_has_head(1));
    up_send(upc[1], "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
    RUN_UNTIL(f.done_calls == 1);
    T_CHECK(!f.done_close);
    T_CHECK_INT(r1->ntries, 2);
    T_CHECK(r1->flags != 0);
    T_CHECK_INT(r1->status, 200);
    /* the second head waited in the input */
    T_CHECK(starts_with(f.ds.in.data, "GET /plain/2 "));
    size_t first_len = f.out.len;

    struct lv_request *r2 = fds_send(&f, "");
    T_CHECK(r2 == r1); /* the pooled slot */
    T_CHECK_INT(r2->ntries, 0);
    T_CHECK_INT(r2->flags, 0);
    T_CHECK_INT(r2->status, 0);
    T_CHECK_INT(r2->attempt, 1);
    T_CHECK(!r2->head_sent);
    T_CHECK(!r2->resp_close);
    T_CHECK(r2->backoff_ms == 0);
    T_CHECK_INT(r2->tried_servers, 1); /* only the server its pooled connection came from */
    T_CHECK_INT(r2->bytes_out, 0);
    T_CHECK(r2->error_token == NULL);
    T_CHECK_STR(r2->target.data, "/plain/2");
    T_CHECK_STR(r2->route->name, "plain");
    /* the pooled connection of the first request's last attempt serves it */
    RUN_UNTIL(up_has_head(1) && strstr(upc[1]->got.data, "GET /plain/2 "));
    const char *h2 = strstr(upc[1]->got.data, "GET /plain/2 ");
    T_CHECK(h2 && strstr(h2, "\r\nLevee-Attempt: 1\r\n") != NULL);
    up_send(upc[1], "HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\ntwo");
    RUN_UNTIL(f.done_calls == 2);
    T_CHECK(!f.done_close);
    T_CHECK(starts_with(f.out.data + first_len, "HTTP/1.1 200 OK\r\n"));
    T_CHECK(f.out.len > 3 && memcmp(f.out.data + f.out.len - 3, "two", 3) == 0);
    T_CHECK_INT(r2->ntries, 1);
    T_CHECK_INT(f.ds.in.len, 0);
    fds_dispose(&f);
    fx_stop();
    T_CHECK_INT(fx_access_lines("retried"), 1);
    T_CHECK_INT(fx_access_lines("\"status\":200"), 2);
}

int main(void)
{
    snprintf(fx_dir, sizeof(fx_dir), "/tmp/lv-test-req-XXXXXX");
    if (!mkdtemp(fx_dir)) {
        perror("mkdtemp");
        return 2;
    }
    T_RUN(test_get_forwarded_and_answered);
    T_RUN(test_gone_while_receiving);
    T_RUN(test_gone_while_looking_up_the_key);
    T_RUN(test_gone_while_connecting);
    T_RUN(test_gone_while_exchanging);
    T_RUN(test_gone_while_backing_off);
    T_RUN(test_gone_while_responding);
    T_RUN(test_gone_while_settling);
    T_RUN(test_gone_mid_connect_leaves_the_connection_to_the_pool);
    T_RUN(test_client_eof_before_and_after_the_response_began);
    T_RUN(test_buffered_body_with_expect_continue);
    T_RUN(test_slot_after_a_client_left_serves_cleanly);
    T_RUN(test_backpressure_and_stall_after_resume);
    T_RUN(test_connect_refused_is_502_connect_failure);
    T_RUN(test_upstream_timeout_is_504);
    T_RUN(test_garbage_head_is_502_bad_upstream_response);
    T_RUN(test_reset_before_head_is_502_upstream_reset);
    T_RUN(test_upstream_closing_mid_body_cuts_the_message);
    T_RUN(test_bad_chunk_from_the_client_is_400_and_close);
    T_RUN(test_503_then_200_in_pieces);
    T_RUN(test_interim_then_final_and_http10_read_until_close);
    T_RUN(test_retry_replays_the_body);
    T_RUN(test_answer_before_the_body_is_all_in_closes);
    T_RUN(test_idempotency_replay_and_conflict);
    T_RUN(test_stale_pooled_connection_is_resent_once);
    T_RUN(test_pipelined_requests_reuse_a_clean_slot);
    char path[128];
    snprintf(path, sizeof(path), "%s/levee.lua", fx_dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/access.log", fx_dir);
    unlink(path);
    rmdir(fx_dir);
    T_DONE();
}
