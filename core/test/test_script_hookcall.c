/*
 * test_script_hookcall: what a hook sees and what it returns (hookcall.h), through the hooks'
 * API on real configuration files: verdicts and delays, the attempt and request tables, the
 * fallback's response, the idempotency key, and every return value refused.
 */
#include <lua.h>

#include "test_script_hooks.h"

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

T_TEST(test_verdicts)
{
    T_CHECK_INT(verdict_of("function(a) return 'ok' end"), LV_VERDICT_OK);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(verdict_of("function(a) return 'fail' end"), LV_VERDICT_FAIL);
    T_CHECK_INT(verdict_of("function(a) return 'retry' end"), LV_VERDICT_RETRY);
    /* nil: the default classification, on purpose: nothing to log */
    T_CHECK_INT(verdict_of("function(a) return nil end"), LV_VERDICT_NONE);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(verdict_of("function(a) end"), LV_VERDICT_NONE);
    T_CHECK_INT(err.len, 0);
    T_CHECK_INT(verdict_of("function(a) if a.status == 503 then return 'retry' end "
                           "return 'ok' end"),
                LV_VERDICT_RETRY);
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
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_OK);
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
    T_CHECK_INT(run_classify(c, &a, NULL, NULL), LV_VERDICT_RETRY);
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
        enum lv_verdict want;
        bool has;
        uint64_t ms;
        const char *err;
    } cases[] = {
        {"n", NULL, LV_VERDICT_RETRY, true, 250, NULL},
        {"s", NULL, LV_VERDICT_RETRY, true, 250, NULL},
        {"m", NULL, LV_VERDICT_RETRY, true, 90000, NULL},
        {"bare", NULL, LV_VERDICT_RETRY, true, 2000, NULL},
        {"frac", NULL, LV_VERDICT_RETRY, true, 1500, NULL},
        {"none", NULL, LV_VERDICT_RETRY, false, 0, NULL},
        {"big", NULL, LV_VERDICT_RETRY, true, LV_HOOK_MAX_DELAY_MS, NULL},
        {"neg", NULL, LV_VERDICT_NONE, false, 0, "got -1"},
        {"bad", NULL, LV_VERDICT_NONE, false, 0, "got \"soon\""},
        {"tbl", NULL, LV_VERDICT_NONE, false, 0, "got table"},
        {"inf", NULL, LV_VERDICT_NONE, false, 0, "retry delay"},
        {"nan", NULL, LV_VERDICT_NONE, false, 0, "retry delay"},
        /* a delay only counts with "retry" */
        {"n", "ok", LV_VERDICT_OK, false, 0, NULL},
        {"bad", "fail", LV_VERDICT_FAIL, false, 0, NULL},
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
        enum lv_verdict v = run_classify(c, &a, &ms, &has);
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
        T_CHECK_INT(verdict_of(hooks[i]), LV_VERDICT_NONE);
        if (i < 5) {
            T_CHECK(err_has("classify hook returned a bad value"));
            T_CHECK(err_has(msgs[i]));
        } else {
            /* `print` is not in the sandbox: returning nil is a deliberate "no verdict" */
            T_CHECK_INT(err.len, 0);
        }
    }
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
             "X-Request-Id: req-1\r\n"
             "Content-Length: %zu\r\n"
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
    if (fixture_init() != 0)
        return 2;
    T_RUN(test_verdicts);
    T_RUN(test_attempt_table);
    T_RUN(test_delays);
    T_RUN(test_wrong_returns);
    T_RUN(test_fallback_response);
    T_RUN(test_fallback_map_and_defaults);
    T_RUN(test_fallback_errors);
    T_RUN(test_idem_key);
    T_RUN(test_idem_key_failures);
    fixture_done();
    T_DONE();
}
