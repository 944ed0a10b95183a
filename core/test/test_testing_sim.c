/*
 * The offline policy simulation (README "Testing your policies"): real configurations loaded
 * through the loader, requests against scripted attempt outcomes, checked against the
 * gateway's rules on the virtual clock.
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "obs/accesslog.h"
#include "t.h"
#include "testing/sim.h"
#include "tmpconf.h"

static char dir[128];

static const char *CONF =
    "local function classify(a)\n"
    "  if a.status == 404 then return 'retry', '1s' end\n"
    "  if a.status == 418 then error('boom') end\n"
    "  return nil\n"
    "end\n"
    "return {\n"
    "  upstreams = { app = { servers = { '127.0.0.1:3000' } } },\n"
    "  routes = {\n"
    "    { name = 'reads', match = { prefix = '/r' }, upstream = 'app',\n"
    "      timeout = '10s', try_timeout = '600ms',\n"
    "      retry = { attempts = 3, on = { 'reset', 'timeout', '503' },\n"
    "                backoff = { base = '100ms', max = '1s', jitter = 'none' },\n"
    "                budget = { ratio = 0, min_per_second = 0.1, window = '10s' } },\n"
    "      classify = classify },\n"
    "    { name = 'short', match = { prefix = '/s' }, upstream = 'app',\n"
    "      timeout = '1s', try_timeout = '600ms',\n"
    "      retry = { attempts = 3, on = { 'timeout', '503' },\n"
    "                backoff = { base = '100ms', jitter = 'none' } } },\n"
    "    { name = 'brk', match = { prefix = '/b' }, upstream = 'app',\n"
    "      retry = { attempts = 1 },\n"
    "      breaker = { consecutive_failures = 2, open_for = '5s' },\n"
    "      fallback = function(req, why)\n"
    "        return { status = 418, headers = { ['X-Why'] = why }, body = 'resting' }\n"
    "      end },\n"
    "    { name = 'pay', match = { prefix = '/p' }, upstream = 'app',\n"
    "      retry = { attempts = 2, on = { '503' }, backoff = { base = '10ms', jitter = 'none' } "
    "},\n"
    "      idempotency = { required = true, ttl = '1m' } },\n"
    "  },\n"
    "}\n";

static struct lv_sim_outcome st(int status)
{
    return (struct lv_sim_outcome){.kind = LV_OUT_STATUS, .status = status};
}

static struct lv_sim_outcome er(enum lv_outcome_kind k)
{
    return (struct lv_sim_outcome){.kind = k};
}

/* Runs a request; the script must not run out. */
static void run(struct lv_sim *s, const char *method, const char *path,
                const struct lv_sim_outcome *script, size_t n, struct lv_sim_result *out)
{
    struct lv_sim_request rq = {.method = method, .path = path, .script = script, .nscript = n};
    struct lv_buf err = LV_BUF_INIT;
    T_CHECK_INT(lv_sim_request(s, &rq, out, &err), 0);
    lv_buf_dispose(&err);
}

static struct lv_sim *fresh(void)
{
    struct lv_config *cfg = tmpconf_load(dir, CONF);
    struct lv_sim *s = lv_sim_new(cfg, 7);
    lv_config_unpin(cfg);
    return s;
}

T_TEST(test_retry_then_success)
{
    struct lv_sim *s = fresh();
    struct lv_sim_outcome sc[] = {st(503), er(LV_OUT_TIMEOUT), st(200)};
    sc[1].has_time = true;
    struct lv_sim_result r;
    run(s, "GET", "/s", sc, 3, &r);
    T_CHECK_INT(r.status, 200);
    T_CHECK_INT(r.ntries, 3);
    T_CHECK_INT(r.tries[0].verdict, LV_VERDICT_RETRY);
    T_CHECK_INT(r.tries[0].delay_ms, 100); /* jitter none: base, then 2x base */
    T_CHECK_INT(r.tries[1].delay_ms, 200);
    T_CHECK(!r.tries[2].retried);
    T_CHECK_INT(r.retry_stop, LV_STOP_SUCCESS);
    T_CHECK(r.flags & LV_ACCESS_RETRIED);
    T_CHECK_STR(r.route, "short");
    T_CHECK(r.error == NULL);
    T_CHECK_INT(r.tries[1].time_ms, 600); /* a timeout takes try_timeout */
    T_CHECK_INT(lv_sim_now(s), 900);
    lv_sim_result_dispose(&r);
    lv_sim_free(s);
}

T_TEST(test_retry_after_moves_the_clock)
{
    struct lv_sim *s = fresh();
    struct lv_hook_header ra = {"Retry-After", 11, "2", 1};
    struct lv_sim_outcome sc[] = {st(503), st(200)};
    sc[0].headers = &ra;
    sc[0].nheaders = 1;
    struct lv_sim_result r;
    run(s, "GET", "/r/x", sc, 2, &r);
    T_CHECK_INT(r.status, 200);
    T_CHECK_INT(r.tries[0].delay_ms, 2000);
    T_CHECK_INT(r.tries[1].at_ms, 2000);
    T_CHECK_INT(lv_sim_now(s), 2000);
    lv_sim_result_dispose(&r);
    lv_sim_free(s);
}

T_TEST(test_budget_exhaustion)
{
    /* ratio 0, min_per_second 0.1 over 10s: one retry in the window */
    struct lv_sim *s = fresh();
    struct lv_sim_outcome sc[] = {st(503), st(200)};
    struct lv_sim_result r;
    run(s, "GET", "/r/x", sc, 2, &r);
    T_CHECK_INT(r.status, 200);
    lv_sim_result_dispose(&r);
    run(s, "GET", "/r/x", sc, 2, &r);
    T_CHECK_INT(r.status, 503);
    T_CHECK_INT(r.ntries, 1);
    T_CHECK_INT(r.retry_stop, LV_STOP_BUDGET);
    T_CHECK(r.flags & LV_ACCESS_BUDGET_EXHAUSTED);
    lv_sim_result_dispose(&r);
    struct lv_sim_route_info ri;
    T_CHECK_INT(lv_sim_route(s, "reads", &ri), 0);
    T_CHECK_INT(ri.budget_requests, 2);
    T_CHECK_INT(ri.budget_retries, 1);
    T_CHECK_INT(ri.budget_available, 0);
    /* the window moves on: the retry is allowed again */
    lv_sim_advance(s, 11000);
    run(s, "GET", "/r/x", sc, 2, &r);
    T_CHECK_INT(r.status, 200);
    lv_sim_result_dispose(&r);
    T_CHECK_INT(lv_sim_route(s, "nope", &ri), -1);
    lv_sim_free(s);
}

T_TEST(test_breaker_and_fallback)
{
    struct lv_sim *s = fresh();
    struct lv_sim_outcome fail[] = {st(500)}, ok[] = {st(200)};
    struct lv_sim_result r;
    run(s, "GET", "/b", fail, 1, &r);
    lv_sim_result_dispose(&r);
    run(s, "GET", "/b", fail, 1, &r);
    T_CHECK_INT(r.status, 500);
    lv_sim_result_dispose(&r);
    struct lv_sim_route_info ri;
    lv_sim_route(s, "brk", &ri);
    T_CHECK_INT(ri.breaker.state, LV_BREAKER_OPEN);
    /* open: the fallback answers, no attempt */
    run(s, "GET", "/b", ok, 1, &r);
    T_CHECK_INT(r.status, 418);
    T_CHECK_INT(r.ntries, 0);
    T_CHECK_INT(r.used, 0);
    T_CHECK(r.flags & LV_ACCESS_FALLBACK);
    T_CHECK(r.flags & LV_ACCESS_BREAKER_OPEN);
    T_CHECK_INT(r.retry_stop, LV_STOP_BREAKER_OPEN);
    T_CHECK(r.body.len == 7 && memcmp(r.body.data, "resting", 7) == 0);
    T_CHECK(r.head.len && strstr(r.head.data, "X-Why: breaker-open") != NULL);
    lv_sim_result_dispose(&r);
    /* open_for passes on the virtual clock: half-open, and a probe that succeeds closes it */
    lv_sim_advance(s, 5000);
    lv_sim_route(s, "brk", &ri);
    T_CHECK_INT(ri.breaker.state, LV_BREAKER_HALF_OPEN);
    run(s, "GET", "/b", ok, 1, &r);
    T_CHECK_INT(r.status, 200);
    lv_sim_result_dispose(&r);
    lv_sim_route(s, "brk", &ri);
    T_CHECK_INT(ri.breaker.state, LV_BREAKER_CLOSED);
    lv_sim_free(s);
}

T_TEST(test_deadline)
{
    /* timeout 1s, try 600ms: a timeout (600), backoff 100, then the second try would end at
     * 1300: the deadline cuts it at 1000 */
    struct lv_sim *s = fresh();
    struct lv_sim_outcome sc[] = {er(LV_OUT_TIMEOUT), er(LV_OUT_TIMEOUT)};
    struct lv_sim_result r;
    run(s, "GET", "/s", sc, 2, &r);
    T_CHECK_INT(r.status, 504);
    T_CHECK_STR(r.error, "deadline-exceeded");
    T_CHECK_INT(r.retry_stop, LV_STOP_DEADLINE);
    T_CHECK(r.flags & LV_ACCESS_DEADLINE_EXCEEDED);
    T_CHECK_INT(r.ntries, 2);
    T_CHECK_INT(r.tries[0].time_ms, 600);
    T_CHECK_INT(r.tries[1].at_ms, 700);
    T_CHECK_INT(r.tries[1].verdict, LV_VERDICT_NONE);
    T_CHECK_INT(lv_sim_now(s), 1000);
    lv_sim_result_dispose(&r);
    /* an answer slower than try_timeout is a timeout */
    struct lv_sim_outcome slow[] = {st(200), st(200)};
    slow[0].has_time = true;
    slow[0].time_ms = 700;
    run(s, "GET", "/s", slow, 2, &r);
    T_CHECK_INT(r.tries[0].kind, LV_OUT_TIMEOUT);
    T_CHECK_INT(r.status, 200);
    lv_sim_result_dispose(&r);
    lv_sim_free(s);
}

T_TEST(test_post_not_replayable)
{
    struct lv_sim *s = fresh();
    struct lv_sim_outcome sc[] = {st(503), st(200)};
    struct lv_sim_result r;
    run(s, "POST", "/r/x", sc, 2, &r);
    T_CHECK_INT(r.status, 503);
    T_CHECK_INT(r.retry_stop, LV_STOP_NOT_REPLAYABLE);
    T_CHECK_INT(r.ntries, 1);
    lv_sim_result_dispose(&r);
    /* a reset is not retried for a POST either; the client gets 502 upstream-reset */
    struct lv_sim_outcome rs[] = {er(LV_OUT_RESET)};
    run(s, "POST", "/r/x", rs, 1, &r);
    T_CHECK_INT(r.status, 502);
    T_CHECK_STR(r.error, "upstream-reset");
    lv_sim_result_dispose(&r);
    lv_sim_free(s);
}

T_TEST(test_classify_hook)
{
    struct lv_sim *s = fresh();
    struct lv_sim_outcome sc[] = {st(404), st(200)};
    struct lv_sim_result r;
    run(s, "GET", "/r/x", sc, 2, &r);
    T_CHECK_INT(r.status, 200);
    T_CHECK_INT(r.tries[0].verdict, LV_VERDICT_RETRY);
    T_CHECK_INT(r.tries[0].delay_ms, 1000); /* the hook's delay */
    lv_sim_result_dispose(&r);
    /* a hook that fails counts as no hook, flagged */
    struct lv_sim_outcome bad[] = {st(418)};
    run(s, "GET", "/r/x", bad, 1, &r);
    T_CHECK_INT(r.status, 418);
    T_CHECK(r.flags & LV_ACCESS_HOOK_ERROR);
    T_CHECK(r.hook_errors.len > 0);
    T_CHECK_INT(r.tries[0].verdict, LV_VERDICT_OK);
    lv_sim_result_dispose(&r);
    lv_sim_free(s);
}

T_TEST(test_idempotency)
{
    struct lv_sim *s = fresh();
    struct lv_hook_header key = {"Idempotency-Key", 15, "k1", 2};
    struct lv_sim_outcome sc[] = {st(201)};
    struct lv_sim_request rq = {
        .method = "POST", .path = "/p", .headers = &key, .nheaders = 1, .body = "a", .body_len = 1};
    rq.script = sc;
    rq.nscript = 1;
    struct lv_sim_result r;
    struct lv_buf err = LV_BUF_INIT;
    T_CHECK_INT(lv_sim_request(s, &rq, &r, &err), 0);
    T_CHECK_INT(r.status, 201);
    lv_sim_result_dispose(&r);
    /* the same request again: replayed, no outcome used */
    rq.nscript = 0;
    T_CHECK_INT(lv_sim_request(s, &rq, &r, &err), 0);
    T_CHECK_INT(r.status, 201);
    T_CHECK_INT(r.used, 0);
    T_CHECK(r.flags & LV_ACCESS_IDEMPOTENT_REPLAY);
    T_CHECK(strstr(r.head.data, "Idempotent-Replayed: true") != NULL);
    lv_sim_result_dispose(&r);
    /* another body with the same key: 422 idempotency-mismatch */
    rq.body = "b";
    T_CHECK_INT(lv_sim_request(s, &rq, &r, &err), 0);
    T_CHECK_INT(r.status, 422);
    T_CHECK_STR(r.error, "idempotency-mismatch");
    lv_sim_result_dispose(&r);
    /* no key on a route that requires one */
    rq.nheaders = 0;
    T_CHECK_INT(lv_sim_request(s, &rq, &r, &err), 0);
    T_CHECK_INT(r.status, 400);
    T_CHECK_STR(r.error, "idempotency-key-required");
    lv_sim_result_dispose(&r);
    /* after the ttl the key is gone: the request goes to the upstream again */
    lv_sim_advance(s, 60000);
    rq.nheaders = 1;
    rq.body = "a";
    T_CHECK_INT(lv_sim_request(s, &rq, &r, &err), -1); /* no outcome scripted */
    T_CHECK(err.len > 0 && strstr(err.data, "attempt 1") != NULL);
    lv_sim_result_dispose(&r);
    lv_buf_dispose(&err);
    lv_sim_free(s);
}

int main(void)
{
    tmpconf_dir(dir, sizeof(dir), "sim");
    T_RUN(test_retry_then_success);
    T_RUN(test_retry_after_moves_the_clock);
    T_RUN(test_budget_exhaustion);
    T_RUN(test_breaker_and_fallback);
    T_RUN(test_deadline);
    T_RUN(test_post_not_replayable);
    T_RUN(test_classify_hook);
    T_RUN(test_idempotency);
    char path[256];
    snprintf(path, sizeof(path), "%s/levee.lua", dir);
    unlink(path);
    rmdir(dir);
    T_DONE();
}
