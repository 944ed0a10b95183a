/*
 * test_script_hooks: classify and fallback hooks of real configuration files, loaded with
 * lv_config_load from a temporary folder and run through lv_hook_classify/lv_hook_fallback:
 * verdicts and delays, the attempt and request tables, every way a hook can fail (error,
 * endless loop, memory bomb, bad return, sandbox escape), and that the state keeps working
 * after each failure.
 */
#include <lua.h>
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
static struct lv_config *load_idem(const char *prelude, const char *classify, const char *fallback,
                                   const char *idem_key)
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

static struct lv_config *load(const char *prelude, const char *classify, const char *fallback)
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
static struct lv_hook_attempt attempt(int status, const char *error)
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

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct lv_buf err = LV_BUF_INIT;

/* Runs route r1's classify hook on attempt a. */
static enum lv_hook_verdict run_classify(struct lv_config *c, const struct lv_hook_attempt *a,
                                         uint64_t *delay_ms, bool *has_delay)
{
    uint64_t d = 0;
    bool h = false;
    enum lv_hook_verdict v =
        lv_hook_classify(c, c->routes[0].classify_ref, a, delay_ms ? delay_ms : &d,
                         has_delay ? has_delay : &h, &err);
    return v;
}

/* The verdict of a classify hook given as a Lua expression, on a 503 attempt. */
static enum lv_hook_verdict verdict_of(const char *classify)
{
    struct lv_config *c = load(NULL, classify, NULL);
    if (!c)
        return (enum lv_hook_verdict) - 1;
    struct lv_hook_attempt a = attempt(503, NULL);
    enum lv_hook_verdict v = run_classify(c, &a, NULL, NULL);
    lv_config_unpin(c);
    return v;
}

static bool err_has(const char *needle)
{
    bool ok = err.data && strstr(err.data, needle) != NULL;
    if (!ok)
        fprintf(stderr, "  err is \"%s\", expected it to contain \"%s\"\n",
                err.data ? err.data : "", needle);
    return ok;
}

/* ---- classify */

T_TEST(test_verdicts)
{
    T_CHECK_INT(verdict_of("function(a) return 'ok' end"), LV_HOOK_OK);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(verdict_of("function(a) return 'fail' end"), LV_HOOK_FAIL);
    T_CHECK_INT(verdict_of("function(a) return 'retry' end"), LV_HOOK_RETRY);
    /* nil: the default classification, on purpose: nothing to log */
    T_CHECK_INT(verdict_of("function(a) return nil end"), LV_HOOK_NONE);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(verdict_of("function(a) end"), LV_HOOK_NONE);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(verdict_of("function(a) if a.status == 503 then return 'retry' end "
                           "return 'ok' end"),
                LV_HOOK_RETRY);
}

T_TEST(test_no_hook)
{
    struct lv_config *c = load(NULL, NULL, NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_CHECK(lv_hooks_state(c) == NULL);
    struct lv_hook_attempt a = attempt(200, NULL);
    uint64_t d = 7;
    bool h = true;
    T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &d, &h, &err), LV_HOOK_NONE);
    T_CHECK(!h);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);

    /* A state with a fallback only: classify_ref is -1 */
    c = load(NULL, NULL, "function() return nil end");
    T_CHECK(c && lv_hooks_state(c) && c->routes[0].classify_ref < 0);
    T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &d, &h, &err), LV_HOOK_NONE);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);
}

/* The attempt table: each assert names the field that is wrong. */
T_TEST(test_attempt_table)
{
    struct lv_config *c = load(
        NULL,
        "function(a)\n"
        "  assert(a.status == 503, 'status ' .. tostring(a.status))\n"
        "  assert(math.type(a.status) == 'integer', 'status type')\n"
        "  assert(a.error == nil, 'error')\n"
        "  assert(a.duration == 0.125, 'duration')\n"
        "  assert(a.number == 2, 'number')\n"
        "  assert(a.route == 'r1', 'route')\n"
        "  assert(a.headers['content-type'] == 'text/plain', 'content-type')\n"
        "  assert(a.headers['Content-Type'] == nil, 'names are lower case')\n"
        "  assert(a.headers['retry-after'] == '2', 'retry-after')\n"
        "  assert(a.headers['x-multi'] == 'a, b', 'joined: ' .. tostring(a.headers['x-multi']))\n"
        "  local n = 0 for _ in pairs(a.headers) do n = n + 1 end\n"
        "  assert(n == 3, 'header count ' .. n)\n"
        "  assert(rawequal(a.headers, a.headers), 'built once')\n"
        "  local r = a.request\n"
        "  assert(r.method == 'GET', 'method')\n"
        "  assert(r.path == '/v1/items?x=1', 'path')\n"
        "  assert(r.headers.host == 'example.com' and r.headers['x-a'] == '1', 'req headers')\n"
        "  assert(a.nothing == nil, 'unknown key')\n"
        "  return 'ok'\n"
        "end",
        NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_OK);
    if (err.len)
        fprintf(stderr, "  %s\n", err.data);
    lv_config_unpin(c);

    c = load(NULL,
             "function(a)\n"
             "  assert(a.status == nil, 'status')\n"
             "  assert(a.error == 'reset', 'error')\n"
             "  assert(next(a.headers) == nil, 'no headers')\n"
             "  assert(a.request.method == 'GET', 'method')\n"
             "  return 'retry'\n"
             "end",
             NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    a = attempt(0, "reset");
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_RETRY);
    if (err.len)
        fprintf(stderr, "  %s\n", err.data);
    lv_config_unpin(c);
}

T_TEST(test_delays)
{
    struct lv_config *c = load("local delays = { n = 0.25, s = '250ms', m = '1m30s', "
                               "bare = '2', frac = '1.5s', neg = -1, bad = 'soon', "
                               "tbl = {}, inf = math.huge, big = 1e12, nan = 0/0 }\n",
                               "function(a) return a.request.headers['x-verdict'] or 'retry', "
                               "delays[a.request.headers['x-delay']] end",
                               NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct {
        const char *key;
        const char *verdict; /* NULL: "retry" */
        enum lv_hook_verdict want;
        bool has;
        uint64_t ms;
        const char *err;
    } cases[] = {
        {"n", NULL, LV_HOOK_RETRY, true, 250, NULL},
        {"s", NULL, LV_HOOK_RETRY, true, 250, NULL},
        {"m", NULL, LV_HOOK_RETRY, true, 90000, NULL},
        {"bare", NULL, LV_HOOK_RETRY, true, 2000, NULL},
        {"frac", NULL, LV_HOOK_RETRY, true, 1500, NULL},
        {"none", NULL, LV_HOOK_RETRY, false, 0, NULL},
        {"big", NULL, LV_HOOK_RETRY, true, LV_HOOK_MAX_DELAY_MS, NULL},
        {"neg", NULL, LV_HOOK_NONE, false, 0, "got -1"},
        {"bad", NULL, LV_HOOK_NONE, false, 0, "got \"soon\""},
        {"tbl", NULL, LV_HOOK_NONE, false, 0, "got table"},
        {"inf", NULL, LV_HOOK_NONE, false, 0, "retry delay"},
        {"nan", NULL, LV_HOOK_NONE, false, 0, "retry delay"},
        /* a delay only counts with "retry" */
        {"n", "ok", LV_HOOK_OK, false, 0, NULL},
        {"bad", "fail", LV_HOOK_FAIL, false, 0, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lv_hook_header h[2] = {
            {"X-Delay", 7, cases[i].key, strlen(cases[i].key)},
            {"X-Verdict", 9, cases[i].verdict ? cases[i].verdict : "retry",
             strlen(cases[i].verdict ? cases[i].verdict : "retry")},
        };
        struct lv_hook_attempt a = attempt(503, NULL);
        a.req_headers = h;
        a.nreq_headers = 2;
        uint64_t ms = 12345;
        bool has = true;
        enum lv_hook_verdict v = run_classify(c, &a, &ms, &has);
        T_CHECK_INT(v, cases[i].want);
        T_CHECK_INT(has, cases[i].has);
        if (cases[i].has)
            T_CHECK_INT(ms, cases[i].ms);
        if (cases[i].err)
            T_CHECK(err_has(cases[i].err));
        else
            T_CHECK_INT(err.len, 0);
        if (v != cases[i].want)
            fprintf(stderr, "  case %zu (%s)\n", i, cases[i].key);
    }
    lv_config_unpin(c);
}

T_TEST(test_wrong_returns)
{
    const char *hooks[] = {
        "function() return 1 end",
        "function() return {} end",
        "function() return true end",
        "function() return 'OK' end",
        "function() return 'retry please' end",
        "function() return print end",
    };
    const char *msgs[] = {
        "got 1", "got table", "got boolean", "got \"OK\"", "got \"retry please\"", "got nil"};
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++) {
        T_CHECK_INT(verdict_of(hooks[i]), LV_HOOK_NONE);
        if (i < 5) {
            T_CHECK(err_has("classify hook returned a bad value"));
            T_CHECK(err_has(msgs[i]));
        } else {
            /* `print` is not in the sandbox: returning nil is a deliberate "no verdict" */
            T_CHECK_INT(err.len, 0);
        }
    }
}

/* Each way a call fails has its kind, for levee_hook_errors_total{kind}. */
T_TEST(test_failure_kinds)
{
    T_CHECK_STR(lv_hook_failure_name(LV_HOOK_FAILED_ERROR), "error");
    T_CHECK_STR(lv_hook_failure_name(LV_HOOK_FAILED_INSTRUCTIONS), "instruction-limit");
    T_CHECK_STR(lv_hook_failure_name(LV_HOOK_FAILED_MEMORY), "memory-limit");
    T_CHECK_STR(lv_hook_failure_name(LV_HOOK_FAILED_VALUE), "bad-value");
    struct lv_config *c = load(NULL,
                               "function(a)\n"
                               "  if a.status == 500 then error('boom') end\n"
                               "  if a.status == 501 then return 42 end\n"
                               "  if a.status == 502 then while true do end end\n"
                               "  if a.status == 503 then return string.rep('x', 64 << 20) end\n"
                               "  return 'ok'\n"
                               "end",
                               NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    const struct {
        int status;
        enum lv_hook_failure kind;
    } cases[] = {{500, LV_HOOK_FAILED_ERROR},
                 {501, LV_HOOK_FAILED_VALUE},
                 {502, LV_HOOK_FAILED_INSTRUCTIONS},
                 {503, LV_HOOK_FAILED_MEMORY},
                 {500, LV_HOOK_FAILED_ERROR}};
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct lv_hook_attempt a = attempt(cases[i].status, NULL);
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
        T_CHECK(err.len > 0);
        T_CHECK_INT(lv_hook_last_failure(c), cases[i].kind);
    }
    /* a call that works leaves the last failure as it was: read it right after the failure */
    struct lv_hook_attempt ok = attempt(200, NULL);
    T_CHECK_INT(run_classify(c, &ok, NULL, NULL), LV_HOOK_OK);
    lv_config_unpin(c);
}

T_TEST(test_errors)
{
    T_CHECK_INT(verdict_of("function(a) error('boom') end"), LV_HOOK_NONE);
    T_CHECK(err_has("classify hook: "));
    T_CHECK(err_has(".lua:5: boom"));
    T_CHECK(strchr(err.data, '\n') == NULL);

    /* a helper in the file: the traceback names both frames */
    struct lv_config *c = load("local function helper(a) return a.status.x end",
                               "function(a) local v = helper(a) return v end", NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
    T_CHECK(err_has("attempt to index a number value"));
    T_CHECK(err_has("traceback: "));
    T_CHECK(err_has("in upvalue 'helper'"));
    T_CHECK_INT(lv_hook_last_failure(c), LV_HOOK_FAILED_ERROR);
    /* the same state keeps working */
    a = attempt(0, "timeout");
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
    lv_config_unpin(c);

    T_CHECK_INT(verdict_of("function(a) error({ code = 1 }) end"), LV_HOOK_NONE);
    T_CHECK(err_has("error object is a table value"));
    T_CHECK_INT(verdict_of("function(a) error(setmetatable({}, { __tostring = function() "
                           "while true do end end })) end"),
                LV_HOOK_NONE);
    T_CHECK(err_has("error object is a table value"));
    T_CHECK_INT(verdict_of("function(a) error(string.rep('x', 5000) .. '\\r\\n' .. 'tail') end"),
                LV_HOOK_NONE);
    T_CHECK(err.len <= 1024);
    T_CHECK(strchr(err.data, '\n') == NULL && strchr(err.data, '\r') == NULL);
    T_CHECK_INT(verdict_of("function(a) local function f(n) return f(n + 1) + 1 end "
                           "return f(1) end"),
                LV_HOOK_NONE);
    T_CHECK(err.len > 0);
}

/* Endless loops stop at the instruction limit, also when the hook catches the error. */
T_TEST(test_endless_loops)
{
    const char *hooks[] = {
        "function(a) while true do end end",
        "function(a) while true do pcall(function() while true do end end) end end",
        "function(a) local t = {} for i = 1, 1e9 do t[i % 10] = i end end",
        "function(a) local ok repeat ok = xpcall(function() while true do end end, "
        "function(e) while true do end end) until false end",
        "function(a) return xp(function() while true do end end, function(e) while true do end "
        "end) end",
        "function(a) local x <close> = setmetatable({}, { __close = function() while true do "
        "end end }) error('then loop') end",
        "function(a) table.sort({ 3, 2, 1, 5, 4 }, function(x, y) while true do end end) end",
        "function(a) return (string.gsub('aaaa', 'a', function() while true do end end)) end",
    };
    struct lv_config *ok = load(NULL, "function(a) return 'fail' end", NULL);
    for (size_t i = 0; i < sizeof(hooks) / sizeof(hooks[0]); i++) {
        /* `xp` is xpcall taken when the file loaded: an upvalue, not a global */
        struct lv_config *c = load("local xp = xpcall", hooks[i], NULL);
        T_CHECK(c != NULL);
        if (!c)
            continue;
        struct lv_hook_attempt a = attempt(503, NULL);
        double t0 = now_s();
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
        double dt = now_s() - t0;
        T_CHECK(dt < 5.0);
        if (i != 5) {
            T_CHECK(err_has("instruction limit reached"));
            T_CHECK_INT(lv_hook_last_failure(c), LV_HOOK_FAILED_INSTRUCTIONS);
        } else
            T_CHECK(err.len > 0);
        /* Where the loop was, for the log. */
        if (i == 0)
            T_CHECK(err_has(".lua:5: instruction limit"));
        /* the next call has a fresh limit */
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
        T_CHECK(err.len > 0);
        lv_config_unpin(c);
        T_CHECK_INT(run_classify(ok, &a, NULL, NULL), LV_HOOK_FAIL);
    }
    lv_config_unpin(ok);
}

static int lua_kib(struct lv_config *c)
{
    return lua_gc(lv_hooks_state(c), LUA_GCCOUNT, 0);
}

T_TEST(test_memory_limit)
{
    struct lv_config *c =
        load("local keep = {}\n",
             "function(a)\n"
             "  local h = a.request.headers['x-mode']\n"
             "  if h == 'rep' then return string.rep('x', 64 * 1024 * 1024) end\n"
             "  if h == 'grow' then local t = {} local s = string.rep('y', 1024)\n"
             "    for i = 1, 1e6 do t[i] = s .. i end end\n"
             "  if h == 'keep' then for i = 1, 1e6 do keep[#keep + 1] = string.rep('z', 1000) .. i "
             "end end\n"
             "  if h == 'garbage' then local s for i = 1, 4000 do s = string.rep('g', 1024) .. i "
             "end end\n"
             "  return 'ok'\n"
             "end",
             NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_header h = {"X-Mode", 6, "", 0};
    struct lv_hook_attempt a = attempt(200, NULL);
    a.req_headers = &h;
    a.nreq_headers = 1;
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_OK);
    int base = lua_kib(c);

    const char *modes[] = {"rep", "grow", "keep"};
    for (int i = 0; i < 3; i++) {
        h.value = modes[i];
        h.value_len = strlen(modes[i]);
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
        T_CHECK(err_has("out of memory"));
        T_CHECK_INT(lv_hook_last_failure(c), LV_HOOK_FAILED_MEMORY);
        /* the state still works, and the failed call's garbage is gone */
        h.value = "";
        h.value_len = 0;
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_OK);
        T_CHECK_INT(err.len, 0);
    }
    /* "keep" stored up to 8 MiB in an upvalue before failing (the hook's own business);
     * everything else was collected. */
    T_CHECK(lua_kib(c) < base + 9 * 1024);

    /* The cap is per call: a hook making 4 MiB of garbage per call runs again and again. */
    h.value = "garbage";
    h.value_len = 7;
    for (int i = 0; i < 20; i++)
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_OK);
    lv_config_unpin(c);
}

/* What the sandbox leaves out, and that hooks cannot change what the next call sees. */
T_TEST(test_sandbox)
{
    struct {
        const char *hook;
        const char *msg;
    } cases[] = {
        {"function(a) io.open('/etc/passwd') end", "attempt to index a nil value (global 'io')"},
        {"function(a) return require('levee.policy').classify(a) end",
         "require is not available in hooks"},
        {"function(a) return load('return 1')() end", "global 'load'"},
        {"function(a) return dofile('/etc/passwd') end", "global 'dofile'"},
        {"function(a) return debug.getinfo(1) end", "global 'debug'"},
        {"function(a) return os.execute('true') end", "field 'execute'"},
        {"function(a) return collectgarbage('count') end", "global 'collectgarbage'"},
        {"function(a) counter = 1 end", "hooks cannot change global counter"},
        {"function(a) string.format = nil end", "hooks cannot change string.format"},
        {"function(a) math.pi = 3 end", "hooks cannot change math.pi"},
        {"function(a) rawset(_G, 'pairs', nil) end", "hooks cannot change globals"},
        {"function(a) setmetatable(_G, nil) end", "protected metatable"},
        {"function(a) setmetatable({}, { __gc = function() while true do end end }) end",
         "__gc metamethods are not allowed"},
        {"function(a) getmetatable(a).__index = nil end", "attempt to index a boolean"},
        {"function(a) setmetatable(a, nil) end", "protected metatable"},
        {"function(a) return getmetatable('').__index end", "attempt to index a boolean"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        T_CHECK_INT(verdict_of(cases[i].hook), LV_HOOK_NONE);
        if (!err_has(cases[i].msg)) {
            T_CHECK(0);
            fprintf(stderr, "  case %zu: %s\n", i, cases[i].hook);
        }
    }

    /* The same functions taken into locals when the file loaded (upvalues, table fields). */
    struct {
        const char *hook;
        const char *msg;
    } aliased[] = {
        {"function(a) return req('levee.policy') end", "require is not available in hooks"},
        {"function(a) return lib.req('levee.policy') end", "require is not available in hooks"},
        {"function(a) smt({}, { __gc = function() end }) end", "__gc metamethods are not allowed"},
        {"function(a) lib.smt({}, { __gc = function() end }) end",
         "__gc metamethods are not allowed"},
        {"function(a) rs(string, 'rep', nil) end", "hooks cannot change globals"},
    };
    for (size_t i = 0; i < sizeof(aliased) / sizeof(aliased[0]); i++) {
        struct lv_config *c = load("local req, smt, rs = require, setmetatable, rawset\n"
                                   "local lib = { req = require, smt = setmetatable }\n",
                                   aliased[i].hook, NULL);
        T_CHECK(c != NULL);
        if (!c)
            continue;
        struct lv_hook_attempt a = attempt(503, NULL);
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
        if (!err_has(aliased[i].msg)) {
            T_CHECK(0);
            fprintf(stderr, "  aliased case %zu: %s\n", i, aliased[i].hook);
        }
        lv_config_unpin(c);
    }

    /* After failed writes the globals and libraries are intact for the next call. */
    struct lv_config *c = load("x = 41\n",
                               "function(a)\n"
                               "  if a.number == 1 then pcall(function() string.format = nil end)\n"
                               "    pcall(function() x = 0 end) pcall(rawset, string, 'rep', 1)\n"
                               "    return 'fail' end\n"
                               "  local n = 0 for k in pairs(string) do n = n + 1 end\n"
                               "  assert(n > 10, 'pairs over a library')\n"
                               "  return string.format('%d', x + 1) == '42' and 'ok' or 'fail'\n"
                               "end",
                               NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL);
    a.number = 1;
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_FAIL);
    a.number = 2;
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_OK);
    T_CHECK_INT(err.len, 0);
    if (err.len)
        fprintf(stderr, "  %s\n", err.data);
    lv_config_unpin(c);
}

/* Upvalues are the documented way to keep state; tables kept past their call go inert. */
T_TEST(test_upvalues_and_kept_tables)
{
    struct lv_config *c = load("local n, kept = 0, nil\n",
                               "function(a)\n"
                               "  n = n + 1\n"
                               "  if n == 1 then kept = a return 'ok' end\n"
                               "  assert(kept.headers == nil and kept.request == nil, 'inert')\n"
                               "  assert(kept.status == 503, 'plain fields stay')\n"
                               "  assert(a.headers['content-type'] == 'text/plain', 'new one')\n"
                               "  return 'retry', n\n"
                               "end",
                               NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL);
    uint64_t ms = 0;
    bool has = false;
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_OK);
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_RETRY);
    if (err.len)
        fprintf(stderr, "  %s\n", err.data);
    T_CHECK(has);
    T_CHECK_INT(ms, 2000);
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_RETRY);
    T_CHECK_INT(ms, 3000);
    lv_config_unpin(c);
}

/* levee.policy required at load time works inside the sealed sandbox. */
T_TEST(test_policy_module)
{
    struct lv_config *c = load("local policy = require 'levee.policy'", "policy.classify", NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL); /* Retry-After: 2 */
    uint64_t ms = 0;
    bool has = false;
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_RETRY);
    T_CHECK(has);
    T_CHECK_INT(ms, 2000);
    a = attempt(429, NULL);
    a.nheaders = 1; /* no Retry-After */
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_RETRY);
    T_CHECK(!has);
    a = attempt(200, NULL);
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_NONE);
    T_CHECK_INT(err.len, 0);
    a = attempt(0, "connect-failure");
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_NONE);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);

    c = load("local policy = require 'levee.policy'",
             "function(a)\n"
             "  if policy.is_5xx(a) and policy.header(a, 'Content-Type') == 'text/plain' then\n"
             "    return 'fail' end\n"
             "  return policy.status_class(a) == '2xx' and 'ok' or nil\n"
             "end",
             NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    a = attempt(502, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_FAIL);
    a = attempt(204, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_OK);
    a = attempt(404, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_HOOK_NONE);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);
}

/* ---- fallback */

static struct lv_hook_request request(const char *method, const char *request_id, bool close)
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
static int run_fallback(struct lv_config *c, const struct lv_hook_request *r, struct lv_buf *out,
                        int *status)
{
    return lv_hook_fallback(c, c->routes[0].fallback_ref, r, "breaker-open", out, status, &err);
}

static bool out_is(struct lv_buf *out, const char *want)
{
    bool ok = out->len == strlen(want) && memcmp(out->data, want, out->len) == 0;
    if (!ok)
        fprintf(stderr, "  got:  \"%.*s\"\n  want: \"%s\"\n", (int)out->len, out->data, want);
    return ok;
}

T_TEST(test_fallback_response)
{
    struct lv_config *c =
        load(NULL, NULL,
             "function(req, why)\n"
             "  return { status = 503,\n"
             "    headers = { { 'Content-Type', 'application/json' }, { 'Retry-After', 5 },\n"
             "                { 'Set-Cookie', 'a=1' }, { 'Set-Cookie', 'b=2' } },\n"
             "    body = '{\"why\":\"' .. why .. '\",\"m\":\"' .. req.method .. '\",\"p\":\"' ..\n"
             "      req.path .. '\",\"r\":\"' .. req.route .. '\",\"id\":\"' .. req.request_id ..\n"
             "      '\",\"h\":\"' .. req.headers['x-a'] .. '\"}' }\n"
             "end");
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_buf out = LV_BUF_INIT;
    lv_buf_puts(&out, "PREV");
    int status = 0;
    struct lv_hook_request r = request("POST", "req-1", false);
    T_CHECK_INT(run_fallback(c, &r, &out, &status), 0);
    T_CHECK_INT(status, 503);
    T_CHECK_INT(err.len, 0);
    const char *body =
        "{\"why\":\"breaker-open\",\"m\":\"POST\",\"p\":\"/v1/pay\",\"r\":\"r1\",\"id\":\"req-1\","
        "\"h\":\"1\"}";
    char want[1024];
    snprintf(want, sizeof(want),
             "PREVHTTP/1.1 503 Service Unavailable\r\n"
             "Content-Type: application/json\r\n"
             "Retry-After: 5\r\n"
             "Set-Cookie: a=1\r\n"
             "Set-Cookie: b=2\r\n"
             "Content-Length: %zu\r\n"
             "X-Request-Id: req-1\r\n"
             "\r\n%s",
             strlen(body), body);
    T_CHECK(out_is(&out, want));

    /* HEAD: the same head, no body; close: Connection: close */
    lv_buf_reset(&out);
    r = request("HEAD", "req-2", true);
    T_CHECK_INT(run_fallback(c, &r, &out, &status), 0);
    char *head_end = out.data ? strstr(out.data, "\r\n\r\n") : NULL;
    T_CHECK(head_end && (size_t)(head_end + 4 - out.data) == out.len);
    char cl[64];
    snprintf(cl, sizeof(cl), "Content-Length: %zu\r\n", strlen(body));
    T_CHECK(out.data && strstr(out.data, cl) != NULL);
    T_CHECK(out.data && strstr(out.data, "Connection: close\r\n") != NULL);
    lv_buf_dispose(&out);
    lv_config_unpin(c);
}

T_TEST(test_fallback_map_and_defaults)
{
    struct lv_config *c =
        load(NULL, NULL,
             "function(req, why)\n"
             "  local m = req.headers['x-mode']\n"
             "  if m == 'map' then return { headers = { ['X-One'] = '1', ['X-List'] = { 'a', 2 },\n"
             "    ['Content-Length'] = '999', Connection = 'keep-alive',\n"
             "    ['Transfer-Encoding'] = 'chunked', ['X-Request-Id'] = 'mine' } } end\n"
             "  if m == '204' then return { status = 204, headers = { Foo = 'bar' } } end\n"
             "  if m == 'nil' then return nil end\n"
             "  return { status = 200, body = 'cached' }\n"
             "end");
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_header h = {"X-Mode", 6, "map", 3};
    struct lv_hook_request r = request("GET", "rid", false);
    r.headers = &h;
    r.nheaders = 1;
    struct lv_buf out = LV_BUF_INIT;
    int status = 0;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), 0);
    T_CHECK_INT(status, 503); /* the default */
    lv_buf_putc(&out, '\0');
    T_CHECK(strncmp(out.data, "HTTP/1.1 503 Service Unavailable\r\n", 34) == 0);
    T_CHECK(strstr(out.data, "X-One: 1\r\n") != NULL);
    T_CHECK(strstr(out.data, "X-List: a\r\nX-List: 2\r\n") != NULL);
    T_CHECK(strstr(out.data, "Content-Length: 0\r\n") != NULL);
    T_CHECK(strstr(out.data, "999") == NULL);
    T_CHECK(strstr(out.data, "Connection") == NULL);
    T_CHECK(strstr(out.data, "Transfer-Encoding") == NULL);
    T_CHECK(strstr(out.data, "mine") == NULL);
    T_CHECK(strstr(out.data, "X-Request-Id: rid\r\n") != NULL);
    T_CHECK(strcmp(out.data + out.len - 5, "\r\n\r\n") == 0);

    lv_buf_reset(&out);
    h.value = "204";
    r.request_id = NULL;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), 0);
    T_CHECK_INT(status, 204);
    T_CHECK(out_is(&out, "HTTP/1.1 204 No Content\r\nFoo: bar\r\n\r\n"));

    lv_buf_reset(&out);
    h.value = "other";
    h.value_len = 5;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), 0);
    T_CHECK(out_is(&out, "HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\ncached"));

    /* nil: the caller answers (503 breaker-open); nothing to log */
    lv_buf_reset(&out);
    h.value = "nil";
    h.value_len = 3;
    status = 0;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), -1);
    T_CHECK_INT(out.len, 0);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(status, 0);
    lv_buf_dispose(&out);
    lv_config_unpin(c);

    /* no fallback */
    c = load(NULL, "function() return 'ok' end", NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), -1);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);
}

T_TEST(test_fallback_errors)
{
    struct {
        const char *ret;
        const char *msg;
    } cases[] = {
        {"{ headers = { ['Bad Name'] = 'x' } }", "header name must be a token"},
        {"{ headers = { [''] = 'x' } }", "header name must be a token"},
        {"{ headers = { ['X-Inj'] = 'a\\r\\nSet-Cookie: evil=1' } }", "control byte"},
        {"{ headers = { ['X-Nul'] = 'a\\0b' } }", "control byte"},
        {"{ headers = { { 'X-Pair', 'ok\\n' } } }", "control byte"},
        {"{ headers = { { 'X-Pair' } } }", "string or a number"},
        {"{ headers = { { 1, 'x' } } }", "header pair"},
        {"{ headers = { ['X'] = true } }", "string or a number"},
        {"{ headers = { ['X'] = { {} } } }", "string or a number"},
        {"{ headers = 'X: y' }", "headers must be a table"},
        {"{ status = 99 }", "status must be an integer from 200 to 599"},
        {"{ status = 100 }", "status must be an integer from 200 to 599"},
        {"{ status = 600 }", "status must be an integer from 200 to 599"},
        {"{ status = '503' }", "status must be an integer"},
        {"{ status = 503.5 }", "status must be an integer"},
        {"{ status = 204, body = 'x' }", "a 204 response has no body"},
        {"{ status = 304, body = 'x' }", "a 304 response has no body"},
        {"{ body = 42 }", "body must be a string"},
        {"{ stauts = 200 }", "unknown key"},
        {"{ 'positional' }", "unknown key"},
        {"'503 please'", "expected a table"},
        {"{ headers = { ['X-Big'] = string.rep('v', 70000) } }", "response head is larger"},
        {"error('down')", "down"},
    };
    struct lv_buf out = LV_BUF_INIT;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char fb[256];
        snprintf(fb, sizeof(fb), "function(req, why) return %s end", cases[i].ret);
        struct lv_config *c = load(NULL, NULL, fb);
        T_CHECK(c != NULL);
        if (!c)
            continue;
        struct lv_hook_request r = request("GET", "rid", false);
        lv_buf_reset(&out);
        lv_buf_puts(&out, "KEEP");
        int status = 0;
        T_CHECK_INT(run_fallback(c, &r, &out, &status), -1);
        T_CHECK(out_is(&out, "KEEP"));
        T_CHECK(err_has("fallback hook"));
        if (!err_has(cases[i].msg))
            fprintf(stderr, "  case %zu: %s\n", i, cases[i].ret);
        T_CHECK(strchr(err.data, '\r') == NULL && strchr(err.data, '\n') == NULL);
        lv_config_unpin(c);
    }
    lv_buf_dispose(&out);

    /* limits apply to fallbacks too */
    struct lv_config *c = load(NULL, NULL, "function() while true do end end");
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_request r = request("GET", NULL, false);
    int status;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), -1);
    T_CHECK(err_has("instruction limit reached"));
    T_CHECK_INT(out.len, 0);
    lv_config_unpin(c);
    c = load(NULL, NULL, "function() return { body = string.rep('b', 100 * 1024 * 1024) } end");
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_CHECK_INT(run_fallback(c, &r, &out, &status), -1);
    T_CHECK(err_has("out of memory"));
    lv_config_unpin(c);
}

/* Several routes share one state and one sealed environment. */
T_TEST(test_hooks_share_state)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/multi.lua", tmpdir);
    FILE *f = fopen(path, "w");
    T_CHECK(f != NULL);
    if (!f)
        return;
    fputs("local policy = require 'levee.policy'\n"
          "local seen = 0\n"
          "local function count() seen = seen + 1 return seen end\n"
          "return {\n"
          "  upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
          "  routes = {\n"
          "    { name = 'a', upstream = 'api', match = { prefix = '/a' },\n"
          "      classify = function(x) count() return policy.classify(x) end },\n"
          "    { name = 'b', upstream = 'api',\n"
          "      classify = function(x) return 'retry', count() end,\n"
          "      fallback = function(req) return { status = 200, body = tostring(seen) } end },\n"
          "  },\n"
          "}\n",
          f);
    fclose(f);
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *c = lv_config_load(path, NULL, &errs);
    if (!c)
        fprintf(stderr, "  %.*s\n", (int)errs.len, errs.data);
    lv_buf_dispose(&errs);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL);
    uint64_t ms;
    bool has;
    T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &ms, &has, &err), LV_HOOK_RETRY);
    T_CHECK_INT(lv_hook_classify(c, c->routes[1].classify_ref, &a, &ms, &has, &err), LV_HOOK_RETRY);
    T_CHECK(has);
    T_CHECK_INT(ms, 2000);
    struct lv_hook_request r = request("GET", NULL, false);
    struct lv_buf out = LV_BUF_INIT;
    int status = 0;
    T_CHECK_INT(
        lv_hook_fallback(c, c->routes[1].fallback_ref, &r, "breaker-open", &out, &status, &err), 0);
    T_CHECK(out_is(&out, "HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"));
    lv_buf_dispose(&out);
    lv_config_unpin(c);
}

/* A plain, cheap call stays cheap: many calls, no growth of the state. */
T_TEST(test_many_calls_no_growth)
{
    struct lv_config *c = load(NULL,
                               "function(a) if a.headers['retry-after'] and "
                               "a.request.headers.host then return 'retry', 1 end end",
                               NULL);
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_hook_attempt a = attempt(503, NULL);
    uint64_t ms;
    bool has;
    for (int i = 0; i < 2000; i++)
        run_classify(c, &a, &ms, &has);
    lua_gc(lv_hooks_state(c), LUA_GCCOLLECT, 0);
    int base = lua_kib(c);
    for (int i = 0; i < 20000; i++)
        T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_HOOK_RETRY);
    lua_gc(lv_hooks_state(c), LUA_GCCOLLECT, 0);
    T_CHECK(lua_kib(c) <= base + 16);
    T_CHECK_INT(lua_gettop(lv_hooks_state(c)), 0);
    lv_config_unpin(c);
}

/* ---- idempotency key */

static const struct lv_hook_header idem_headers[] = {
    {"Host", 4, "example.com", 11},
    {"X-Tenant", 8, "acme", 4},
    {"IDEMPOTENCY-KEY", 15, "k-123", 5},
};

/* A POST to /v1/pay with the headers above; `mode` (NULL: none) is sent as X-Mode. */
static struct lv_hook_request idem_request(const char *mode, size_t nheaders,
                                           struct lv_hook_header hs[4])
{
    memcpy(hs, idem_headers, sizeof(idem_headers));
    size_t n = nheaders;
    if (mode)
        hs[n++] = (struct lv_hook_header){"X-Mode", 6, mode, strlen(mode)};
    struct lv_hook_request r = {
        .method = "POST",
        .path = "/v1/pay",
        .path_len = 7,
        .headers = hs,
        .nheaders = n,
        .route = "r1",
        .request_id = "req-9",
    };
    return r;
}

/* Runs route r1's key hook on a request with X-Mode: mode (and all three headers above). */
static int run_idem(struct lv_config *c, const char *mode, struct lv_buf *key)
{
    struct lv_hook_header hs[4];
    struct lv_hook_request r = idem_request(mode, 3, hs);
    return lv_hook_idem_key(c, c->routes[0].idempotency.key_ref, &r, key, &err);
}

static bool key_equals(const struct lv_buf *key, const char *want)
{
    bool ok = key->len == strlen(want) && (key->len == 0 || memcmp(key->data, want, key->len) == 0);
    if (!ok)
        fprintf(stderr, "  key is \"%.*s\", want \"%s\"\n", (int)key->len,
                key->data ? key->data : "", want);
    return ok;
}

T_TEST(test_idem_key)
{
    struct lv_config *c = load_idem(
        NULL, NULL, NULL,
        "function(req)\n"
        "  local k = req.headers['idempotency-key']\n"
        "  if not k then return nil end\n"
        "  return req.headers['x-tenant'] .. ':' .. k .. '|' .. req.method .. ' ' .. req.path\n"
        "    .. ' ' .. req.route .. ' ' .. tostring(req.request_id)\n"
        "end");
    T_CHECK(c != NULL);
    if (!c)
        return;
    T_CHECK(c->routes[0].idempotency.key_ref >= 0);
    struct lv_buf key = LV_BUF_INIT;
    lv_buf_puts(&key, "PREV");
    /* Mixed-case header names are read in lower case; the key is appended. */
    T_CHECK_INT(run_idem(c, NULL, &key), 1);
    T_CHECK_INT(err.len, 0);
    T_CHECK(key_equals(&key, "PREVacme:k-123|POST /v1/pay r1 req-9"));

    /* No Idempotency-Key header: the hook returns nil, the request is not keyed. */
    lv_buf_reset(&key);
    struct lv_hook_header hs[4];
    struct lv_hook_request r = idem_request(NULL, 2, hs);
    r.request_id = NULL;
    T_CHECK_INT(lv_hook_idem_key(c, c->routes[0].idempotency.key_ref, &r, &key, &err), 0);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(key.len, 0);

    /* No hook: 0, nothing to log. */
    lv_buf_puts(&err, "stale");
    T_CHECK_INT(lv_hook_idem_key(c, -1, &r, &key, &err), 0);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(key.len, 0);
    lv_buf_dispose(&key);
    lv_config_unpin(c);

    /* A route without `key` has no ref. */
    c = load_idem(NULL, NULL, NULL, "nil");
    T_CHECK(c != NULL);
    if (c) {
        T_CHECK_INT(c->routes[0].idempotency.key_ref, -1);
        lv_config_unpin(c);
    }
}

T_TEST(test_idem_key_failures)
{
    struct lv_config *c =
        load_idem("local long = string.rep('k', 256)\n", NULL, NULL,
                  "function(req)\n"
                  "  local m = req.headers['x-mode']\n"
                  "  if m == 'error' then error('no tenant') end\n"
                  "  if m == 'concat' then return req.headers['x-none'] .. ':x' end\n"
                  "  if m == 'long' then return long end\n"
                  "  if m == '255' then return long:sub(2) end\n"
                  "  if m == 'nl' then return 'a\\nb' end\n"
                  "  if m == 'del' then return 'a\\127' end\n"
                  "  if m == 'utf8' then return 'caf\\195\\169 ~' end\n"
                  "  if m == 'empty' then return '' end\n"
                  "  if m == 'number' then return 42 end\n"
                  "  if m == 'table' then return { 'k' } end\n"
                  "  if m == 'false' then return false end\n"
                  "  if m == 'loop' then while true do end end\n"
                  "  if m == 'pcall-loop' then\n"
                  "    while true do pcall(function() while true do end end) end\n"
                  "  end\n"
                  "  if m == 'global' then tenant = 'x' end\n"
                  "  return 'ok:' .. req.headers['x-tenant']\n"
                  "end");
    T_CHECK(c != NULL);
    if (!c)
        return;
    struct lv_buf key = LV_BUF_INIT;

    T_CHECK_INT(run_idem(c, "error", &key), -1);
    T_CHECK(err_has("idempotency key hook: "));
    T_CHECK(err_has(".lua:10: no tenant"));
    T_CHECK_INT(key.len, 0);
    T_CHECK_INT(run_idem(c, "concat", &key), -1);
    T_CHECK(err_has("attempt to concatenate"));

    /* Length: 255 bytes is a key, 256 is not. */
    T_CHECK_INT(run_idem(c, "long", &key), -1);
    T_CHECK(err_has("idempotency key hook returned a bad value: the key is 256 bytes long; at "
                    "most 255"));
    T_CHECK_INT(key.len, 0);
    T_CHECK_INT(run_idem(c, "255", &key), 1);
    T_CHECK_INT(key.len, 255);
    T_CHECK_INT(err.len, 0);
    lv_buf_reset(&key);

    /* Control bytes are refused; bytes >= 0x80 are fine. */
    T_CHECK_INT(run_idem(c, "nl", &key), -1);
    T_CHECK(err_has("control byte (0x0a) at 1"));
    T_CHECK_INT(run_idem(c, "del", &key), -1);
    T_CHECK(err_has("control byte (0x7f) at 1"));
    T_CHECK_INT(key.len, 0);
    T_CHECK_INT(run_idem(c, "utf8", &key), 1);
    T_CHECK(key_equals(&key, "caf\xc3\xa9 ~"));
    lv_buf_reset(&key);
    T_CHECK_INT(run_idem(c, "empty", &key), 1);
    T_CHECK_INT(key.len, 0);

    /* Neither a string nor nil. */
    T_CHECK_INT(run_idem(c, "number", &key), -1);
    T_CHECK(err_has("expected a string key or nil; got 42"));
    T_CHECK_INT(run_idem(c, "table", &key), -1);
    T_CHECK(err_has("got table"));
    T_CHECK_INT(run_idem(c, "false", &key), -1);
    T_CHECK(err_has("got boolean"));
    T_CHECK_INT(key.len, 0);

    /* The sandbox is sealed for this hook too. */
    T_CHECK_INT(run_idem(c, "global", &key), -1);
    T_CHECK(err_has("hooks cannot change global tenant"));

    /* Loops stop at the instruction limit, also when caught; the next call works. */
    const char *loops[] = {"loop", "pcall-loop"};
    for (int i = 0; i < 2; i++) {
        double t0 = now_s();
        T_CHECK_INT(run_idem(c, loops[i], &key), -1);
        T_CHECK(now_s() - t0 < 5.0);
        T_CHECK(err_has("idempotency key hook: "));
        T_CHECK(err_has("instruction limit reached"));
        T_CHECK_INT(key.len, 0);
        T_CHECK_INT(run_idem(c, NULL, &key), 1);
        T_CHECK(key_equals(&key, "ok:acme"));
        T_CHECK_INT(err.len, 0);
        lv_buf_reset(&key);
    }
    T_CHECK_INT(lua_gettop(lv_hooks_state(c)), 0);
    lv_buf_dispose(&key);
    lv_config_unpin(c);
}

int main(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/lvhooksXXXXXX");
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        return 2;
    }
    T_RUN(test_verdicts);
    T_RUN(test_no_hook);
    T_RUN(test_attempt_table);
    T_RUN(test_delays);
    T_RUN(test_wrong_returns);
    T_RUN(test_failure_kinds);
    T_RUN(test_errors);
    T_RUN(test_endless_loops);
    T_RUN(test_memory_limit);
    T_RUN(test_sandbox);
    T_RUN(test_upvalues_and_kept_tables);
    T_RUN(test_policy_module);
    T_RUN(test_fallback_response);
    T_RUN(test_fallback_map_and_defaults);
    T_RUN(test_fallback_errors);
    T_RUN(test_hooks_share_state);
    T_RUN(test_many_calls_no_growth);
    T_RUN(test_idem_key);
    T_RUN(test_idem_key_failures);
    lv_buf_dispose(&err);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    T_DONE();
}
