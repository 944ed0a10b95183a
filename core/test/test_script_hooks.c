/*
 * test_script_hooks: running hooks (hooks.h) of real configuration files: every way a call can
 * fail (error, endless loop, memory bomb, sandbox escape) and its kind, that the state keeps
 * working after each failure and does not grow, and what hooks share between calls.
 */
#include <lua.h>

#include "test_script_hooks.h"

static int lua_kib(struct lv_config *c)
{
    return lua_gc(lv_hooks_state(c), LUA_GCCOUNT, 0);
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
    T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &d, &h, &err), LV_VERDICT_NONE);
    T_CHECK(!h);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);

    /* A state with a fallback only: classify_ref is -1 */
    c = load(NULL, NULL, "function() return nil end");
    T_CHECK(c && lv_hooks_state(c) && c->routes[0].classify_ref < 0);
    T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &d, &h, &err), LV_VERDICT_NONE);
    T_CHECK_INT(err.len, 0);
    lv_config_unpin(c);
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
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
        T_CHECK(err.len > 0);
        T_CHECK_INT(lv_hook_last_failure(c), cases[i].kind);
    }
    /* a call that works leaves the last failure as it was: read it right after the failure */
    struct lv_hook_attempt ok = attempt(200, NULL);
    T_CHECK_INT(run_classify(c, &ok, NULL, NULL), LV_VERDICT_OK);
    lv_config_unpin(c);
}

T_TEST(test_errors)
{
    T_CHECK_INT(verdict_of("function(a) error('boom') end"), LV_VERDICT_NONE);
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
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
    T_CHECK(err_has("attempt to index a number value"));
    T_CHECK(err_has("traceback: "));
    T_CHECK(err_has("in upvalue 'helper'"));
    T_CHECK_INT(lv_hook_last_failure(c), LV_HOOK_FAILED_ERROR);
    /* the same state keeps working */
    a = attempt(0, "timeout");
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
    lv_config_unpin(c);

    T_CHECK_INT(verdict_of("function(a) error({ code = 1 }) end"), LV_VERDICT_NONE);
    T_CHECK(err_has("error object is a table value"));
    T_CHECK_INT(verdict_of("function(a) error(setmetatable({}, { __tostring = function() "
                           "while true do end end })) end"),
                LV_VERDICT_NONE);
    T_CHECK(err_has("error object is a table value"));
    T_CHECK_INT(verdict_of("function(a) error(string.rep('x', 5000) .. '\\r\\n' .. 'tail') end"),
                LV_VERDICT_NONE);
    T_CHECK(err.len <= 1024);
    T_CHECK(strchr(err.data, '\n') == NULL && strchr(err.data, '\r') == NULL);
    T_CHECK_INT(verdict_of("function(a) local function f(n) return f(n + 1) + 1 end "
                           "return f(1) end"),
                LV_VERDICT_NONE);
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
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
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
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
        T_CHECK(err.len > 0);
        lv_config_unpin(c);
        T_CHECK_INT(run_classify(ok, &a, NULL, NULL), LV_VERDICT_FAIL);
    }
    lv_config_unpin(ok);
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
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_OK);
    int base = lua_kib(c);

    const char *modes[] = {"rep", "grow", "keep"};
    for (int i = 0; i < 3; i++) {
        h.value = modes[i];
        h.value_len = strlen(modes[i]);
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
        T_CHECK(err_has("out of memory"));
        T_CHECK_INT(lv_hook_last_failure(c), LV_HOOK_FAILED_MEMORY);
        /* the state still works, and the failed call's garbage is gone */
        h.value = "";
        h.value_len = 0;
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_OK);
        T_CHECK_INT(err.len, 0);
    }
    /* "keep" stored up to 8 MiB in an upvalue before failing (the hook's own business);
     * everything else was collected. */
    T_CHECK(lua_kib(c) < base + 9 * 1024);

    /* The cap is per call: a hook making 4 MiB of garbage per call runs again and again. */
    h.value = "garbage";
    h.value_len = 7;
    for (int i = 0; i < 20; i++)
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_OK);
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
        T_CHECK_INT(verdict_of(cases[i].hook), LV_VERDICT_NONE);
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
        T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
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
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_FAIL);
    a.number = 2;
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_OK);
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
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_OK);
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_RETRY);
    if (err.len)
        fprintf(stderr, "  %s\n", err.data);
    T_CHECK(has);
    T_CHECK_INT(ms, 2000);
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_RETRY);
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
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_RETRY);
    T_CHECK(has);
    T_CHECK_INT(ms, 2000);
    a = attempt(429, NULL);
    a.nheaders = 1; /* no Retry-After */
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_RETRY);
    T_CHECK(!has);
    a = attempt(200, NULL);
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_NONE);
    T_CHECK_INT(err.len, 0);
    a = attempt(0, "connect-failure");
    T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_NONE);
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
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_FAIL);
    a = attempt(204, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_OK);
    a = attempt(404, NULL);
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_NONE);
    T_CHECK_INT(err.len, 0);
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
    T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &ms, &has, &err),
                LV_VERDICT_RETRY);
    T_CHECK_INT(lv_hook_classify(c, c->routes[1].classify_ref, &a, &ms, &has, &err),
                LV_VERDICT_RETRY);
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
        T_CHECK_INT(run_classify(c, &a, &ms, &has), LV_VERDICT_RETRY);
    lua_gc(lv_hooks_state(c), LUA_GCCOLLECT, 0);
    T_CHECK(lua_kib(c) <= base + 16);
    T_CHECK_INT(lua_gettop(lv_hooks_state(c)), 0);
    lv_config_unpin(c);
}

int main(void)
{
    if (fixture_init() != 0)
        return 2;
    T_RUN(test_no_hook);
    T_RUN(test_failure_kinds);
    T_RUN(test_errors);
    T_RUN(test_endless_loops);
    T_RUN(test_memory_limit);
    T_RUN(test_sandbox);
    T_RUN(test_upvalues_and_kept_tables);
    T_RUN(test_policy_module);
    T_RUN(test_hooks_share_state);
    T_RUN(test_many_calls_no_growth);
    fixture_done();
    T_DONE();
}
