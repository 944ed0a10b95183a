/*
 * test_script_hooks.h: the fixture of the hook tests (test_script_hooks.c, test_script_hookcall.c):
 * real configuration files with one route "r1", written to a temporary folder and loaded with
 * lv_config_load, and the attempts and requests the hooks are called with.
 */
#ifndef LV_TEST_SCRIPT_HOOKS_H
#define LV_TEST_SCRIPT_HOOKS_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "script/config.h"
#include "script/hooks.h"
#include "t.h"

static char tmpdir[64];
static int nfile;

/* Loads a configuration with one route "r1" whose hooks are the Lua expressions `classify`
 * and `fallback` (NULL: none), and `idem_key` for idempotency = { key = ... } (NULL: no
 * idempotency table), after `prelude` (top-level code of the file). */
static inline struct lv_config *load_idem(const char *prelude, const char *classify,
                                          const char *fallback, const char *idem_key)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/levee%d.lua", tmpdir, ++nfile);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fprintf(f,
            "%s\n"
            "return {\n"
            "  upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
            "  routes = { { name = 'r1', upstream = 'api',\n"
            "    classify = %s,\n"
            "    fallback = %s,\n"
            "    idempotency = %s%s%s,\n"
            "  } },\n"
            "}\n",
            prelude ? prelude : "", classify ? classify : "nil", fallback ? fallback : "nil",
            idem_key ? "{ key = " : "nil", idem_key ? idem_key : "", idem_key ? " }" : "");
    fclose(f);
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *c = lv_config_load(path, NULL, &errs);
    if (!c)
        fprintf(stderr, "load failed: %.*s\n", (int)errs.len, errs.data);
    lv_buf_dispose(&errs);
    return c;
}

static inline struct lv_config *load(const char *prelude, const char *classify,
                                     const char *fallback)
{
    return load_idem(prelude, classify, fallback, NULL);
}

static const struct lv_hook_header rsp_headers[] = {
    {"Content-Type", 12, "text/plain", 10},
    {"Retry-After", 11, "2", 1},
    {"X-Multi", 7, "a", 1},
    {"x-multi", 7, "b", 1},
};

static const struct lv_hook_header req_headers[] = {
    {"Host", 4, "example.com", 11},
    {"X-A", 3, "1", 1},
};

/* A status attempt (or an error one when `error` is set). */
static inline struct lv_hook_attempt attempt(int status, const char *error)
{
    struct lv_hook_attempt a = {
        .status = status,
        .error = error,
        .headers = error ? NULL : rsp_headers,
        .nheaders = error ? 0 : sizeof(rsp_headers) / sizeof(rsp_headers[0]),
        .duration_s = 0.125,
        .number = 2,
        .route = "r1",
        .method = "GET",
        .path = "/v1/items?x=1",
        .path_len = 13,
        .req_headers = req_headers,
        .nreq_headers = 2,
    };
    return a;
}

static inline double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct lv_buf err = LV_BUF_INIT;

/* Runs route r1's classify hook on attempt a. */
static inline enum lv_verdict run_classify(struct lv_config *c, const struct lv_hook_attempt *a,
                                           uint64_t *delay_ms, bool *has_delay)
{
    uint64_t d = 0;
    bool h = false;
    enum lv_verdict v = lv_hook_classify(c, c->routes[0].classify_ref, a, delay_ms ? delay_ms : &d,
                                         has_delay ? has_delay : &h, &err);
    return v;
}

/* The verdict of a classify hook given as a Lua expression, on a 503 attempt. */
static inline enum lv_verdict verdict_of(const char *classify)
{
    struct lv_config *c = load(NULL, classify, NULL);
    if (!c)
        return (enum lv_verdict) - 1;
    struct lv_hook_attempt a = attempt(503, NULL);
    enum lv_verdict v = run_classify(c, &a, NULL, NULL);
    lv_config_unpin(c);
    return v;
}

static inline bool err_has(const char *needle)
{
    bool ok = err.data && strstr(err.data, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  err is \"%s\", expected it to contain \"%s\"\n",
                err.data ? err.data : "", needle);
    return ok;
}

static inline struct lv_hook_request request(const char *method, const char *request_id, bool close)
{
    struct lv_hook_request r = {
        .method = method,
        .path = "/v1/pay",
        .path_len = 7,
        .headers = req_headers,
        .nheaders = 2,
        .route = "r1",
        .request_id = request_id,
        .close = close,
    };
    return r;
}

/* Runs route r1's fallback; returns its result, the response in *out. */
static inline int run_fallback(struct lv_config *c, const struct lv_hook_request *r,
                               struct lv_buf *out, int *status)
{
    return lv_hook_fallback(c, c->routes[0].fallback_ref, r, "breaker-open", out, status, &err);
}

static inline bool out_is(struct lv_buf *out, const char *want)
{
    bool ok = out->len == strlen(want) && memcmp(out->data, want, out->len) == 0;
    if (!ok)
        fprintf(stderr, "  got:  \"%.*s\"\n  want: \"%s\"\n", (int)out->len, out->data, want);
    return ok;
}

/* Makes the temporary folder; fixture_done removes it. */
static inline int fixture_init(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lvhooksXXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return -1;
    }
    return 0;
}

static inline void fixture_done(void)
{
    lv_buf_dispose(&err);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

#endif
