/*
 * test_script_config: lv_config_load/lv_config_dev turn levee.lua files into the config.h
 * structs. Each test writes its fixture into a fresh temporary folder.
 */
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/method.h"
#include "script/config.h"
#include "script/hooks.h"
#include "t.h"
#include "tmpconf.h"

static char tmpdir[64];

static void write_file(const char *name, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
}

static const char *path_of(const char *name)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    return path;
}

static bool status_bit(const struct lv_retry_cfg *r, int s)
{
    return (r->on_status[s / 64] >> (s % 64)) & 1;
}

static int count_status_bits(const struct lv_retry_cfg *r)
{
    int n = 0;
    for (int s = 0; s < 640; s++)
        n += status_bit(r, s);
    return n;
}

static const char *full_config =
    "-- a full configuration\n"
    "local hooks = require 'hooks'\n"
    "return {\n"
    "  listen = { '127.0.0.1:8080', { addr = '[::1]:8443' } },\n"
    "  admin = '127.0.0.1:9901',\n"
    "  limits = { header_size = '16KiB', request_line = '4KiB', header_count = 50,\n"
    "             body_size = '1MiB', header_timeout = '5s', idle_timeout = 30,\n"
    "             send_timeout = '1m', max_connections = 500 },\n"
    "  access_log = false,\n"
    "  watch = true,\n"
    "  drain_timeout = '2s',\n"
    "  upstreams = {\n"
    "    api = { servers = { '127.0.0.1:9000', 'backend.internal:9001' },\n"
    "            balance = 'least_request', connect_timeout = '250ms',\n"
    "            pool = { max_idle = 8, idle_timeout = '30s', max_lifetime = '5m',\n"
    "                     max_connections = 100, queue_size = 10 },\n"
    "            tls = { sni = 'api.internal', verify = false } },\n"
    "    other = { servers = { '10.0.0.1:80' } },\n"
    "  },\n"
    "  routes = {\n"
    "    { name = 'payments',\n"
    "      match = { prefix = '/v1/payments', methods = { 'POST', 'GET' }, host = "
    "'API.Example.com' },\n"
    "      upstream = 'api', timeout = '5s', try_timeout = '1s',\n"
    "      retry = { attempts = 3, on = { 'connect-failure', 'timeout', '5xx', 429 },\n"
    "                backoff = { base = '10ms', max = '500ms', jitter = 'decorrelated' },\n"
    "                budget = { ratio = 0.1, min_per_second = 5, window = '20s' },\n"
    "                non_idempotent = true, buffer = '128KiB' },\n"
    "      breaker = { failure_ratio = 0.25, min_requests = 10, window = '30s',\n"
    "                  consecutive_failures = 0, open_for = '2s', max_open_for = '1m',\n"
    "                  half_open_requests = 3, slow_call = { duration = '2s', ratio = 0.8 } },\n"
    "      idempotency = { header = 'X-Idem', ttl = '1h', methods = { 'POST' }, required = true,\n"
    "                      store = { redis = 'redis.local:6380', prefix = 'p:' },\n"
    "                      max_body = '2MiB', max_memory = '8MiB', key = hooks.key,\n"
    "                      on_conflict = 'wait', on_store_error = 'fail_open' },\n"
    "      classify = hooks.classify, fallback = function(req, why) return { status = 503 } end "
    "},\n"
    "    { name = 'default', match = { path = '/' }, upstream = 'other' },\n"
    "  },\n"
    "}\n";

T_TEST(test_full_config)
{
    write_file("hooks.lua", "return { key = function(r) return r.path end,\n"
                            "         classify = function(a) return 'ok' end }\n");
    write_file("levee.lua", full_config);
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *c = lv_config_load(path_of("levee.lua"), NULL, &errs);
    T_CHECK(c != NULL);
    if (!c) {
        fprintf(stderr, "%.*s", (int)errs.len, errs.data ? errs.data : "");
        lv_buf_dispose(&errs);
        return;
    }
    T_CHECK_INT(errs.len, 0);
    T_CHECK_INT(c->refs, 1);
    T_CHECK(c->file[0] == '/');
    T_CHECK(strstr(c->file, "/levee.lua") != NULL);
    T_CHECK(c->files[0] && strcmp(c->files[0], c->file) == 0);
    T_CHECK(c->files[1] && strstr(c->files[1], "/hooks.lua") != NULL);
    T_CHECK(c->files[2] == NULL);
    T_CHECK(c->loaded_at > 1e9);

    T_CHECK_INT(c->nlistens, 2);
    T_CHECK_STR(c->listens[0].addr.host, "127.0.0.1");
    T_CHECK_INT(c->listens[0].addr.port, 8080);
    T_CHECK_STR(c->listens[1].addr.host, "::1");
    T_CHECK_INT(c->listens[1].addr.port, 8443);
    T_CHECK(c->listens[1].tls_cert == NULL);
    T_CHECK(c->admin_enabled);
    T_CHECK_STR(c->admin.host, "127.0.0.1");
    T_CHECK_INT(c->admin.port, 9901);

    T_CHECK_INT(c->limits.header_size, 16384);
    T_CHECK_INT(c->limits.request_line, 4096);
    T_CHECK_INT(c->limits.header_count, 50);
    T_CHECK_INT(c->limits.body_size, 1 << 20);
    T_CHECK_INT(c->limits.header_timeout_ms, 5000);
    T_CHECK_INT(c->limits.idle_timeout_ms, 30000);
    T_CHECK_INT(c->limits.send_timeout_ms, 60000);
    T_CHECK_INT(c->limits.max_connections, 500);
    T_CHECK_INT(c->access_log, LV_ACCESS_LOG_OFF);
    T_CHECK(c->access_log_path == NULL);
    T_CHECK(c->watch);
    T_CHECK_INT(c->drain_timeout_ms, 2000);

    T_CHECK_INT(c->nupstreams, 2);
    struct lv_upstream_cfg *api = lv_config_upstream(c, "api");
    T_CHECK(api != NULL);
    T_CHECK(lv_config_upstream(c, "nope") == NULL);
    if (api) {
        T_CHECK_INT(api->nservers, 2);
        T_CHECK_STR(api->servers[0].host, "127.0.0.1");
        T_CHECK_INT(api->servers[0].port, 9000);
        T_CHECK_STR(api->servers[1].host, "backend.internal");
        T_CHECK_INT(api->servers[1].port, 9001);
        T_CHECK_INT(api->balance, LV_BALANCE_LEAST_REQUEST);
        T_CHECK_INT(api->connect_timeout_ms, 250);
        T_CHECK_INT(api->pool.max_idle, 8);
        T_CHECK_INT(api->pool.idle_timeout_ms, 30000);
        T_CHECK_INT(api->pool.max_lifetime_ms, 300000);
        T_CHECK_INT(api->pool.max_connections, 100);
        T_CHECK_INT(api->pool.queue_size, 10);
        T_CHECK_INT(api->pool.queue_timeout_ms, 250); /* defaults to connect_timeout */
        T_CHECK(api->tls);
        T_CHECK_STR(api->tls_sni, "api.internal");
        T_CHECK(!api->tls_verify);
        T_CHECK(api->tls_ca == NULL);
    }
    struct lv_upstream_cfg *other = lv_config_upstream(c, "other");
    T_CHECK(other != NULL);
    if (other) {
        T_CHECK(!other->tls);
        T_CHECK(other->tls_verify);
        T_CHECK_INT(other->balance, LV_BALANCE_ROUND_ROBIN);
        T_CHECK_INT(other->pool.max_idle, 64);
        T_CHECK_INT(other->pool.queue_timeout_ms, 1000);
    }

    T_CHECK_INT(c->nroutes, 2);
    struct lv_route_cfg *r = &c->routes[0];
    T_CHECK_STR(r->name, "payments");
    T_CHECK_INT(r->line, 21);
    T_CHECK_STR(r->match_prefix, "/v1/payments");
    T_CHECK(r->match_path == NULL);
    T_CHECK_STR(r->match_host, "api.example.com");
    T_CHECK(r->match_methods == (LV_METHOD_BIT(lv_method_from_name("POST", 4)) |
                                 LV_METHOD_BIT(lv_method_from_name("GET", 3))));
    T_CHECK(r->upstream == api);
    T_CHECK_INT(r->timeout_ms, 5000);
    T_CHECK_INT(r->try_timeout_ms, 1000);
    T_CHECK_INT(r->retry.attempts, 3);
    T_CHECK_INT(r->retry.on_errors, LV_RETRY_ON_CONNECT_FAILURE | LV_RETRY_ON_TIMEOUT);
    T_CHECK(status_bit(&r->retry, 500));
    T_CHECK(status_bit(&r->retry, 503));
    T_CHECK(status_bit(&r->retry, 599));
    T_CHECK(status_bit(&r->retry, 429));
    T_CHECK(!status_bit(&r->retry, 499));
    T_CHECK(!status_bit(&r->retry, 200));
    T_CHECK_INT(count_status_bits(&r->retry), 101);
    T_CHECK_INT(r->retry.backoff_base_ms, 10);
    T_CHECK_INT(r->retry.backoff_max_ms, 500);
    T_CHECK_INT(r->retry.jitter, LV_JITTER_DECORRELATED);
    T_CHECK(r->retry.budget_ratio == 0.1);
    T_CHECK(r->retry.budget_min_per_second == 5.0);
    T_CHECK_INT(r->retry.budget_window_ms, 20000);
    T_CHECK(r->retry.non_idempotent);
    T_CHECK_INT(r->retry.buffer, 128 * 1024);

    T_CHECK(r->breaker.enabled);
    T_CHECK(r->breaker.failure_ratio == 0.25);
    T_CHECK_INT(r->breaker.min_requests, 10);
    T_CHECK_INT(r->breaker.window_ms, 30000);
    T_CHECK_INT(r->breaker.consecutive_failures, 0);
    T_CHECK_INT(r->breaker.open_for_ms, 2000);
    T_CHECK_INT(r->breaker.max_open_for_ms, 60000);
    T_CHECK_INT(r->breaker.half_open_requests, 3);
    T_CHECK_INT(r->breaker.slow_call_ms, 2000);
    T_CHECK(r->breaker.slow_call_ratio == 0.8);

    struct lv_idem_cfg *d = &r->idempotency;
    T_CHECK(d->enabled);
    T_CHECK_STR(d->header, "X-Idem");
    T_CHECK_INT(d->ttl_ms, 3600000);
    T_CHECK(d->methods == LV_METHOD_BIT(lv_method_from_name("POST", 4)));
    T_CHECK(d->required);
    T_CHECK_INT(d->store, LV_IDEM_STORE_REDIS);
    T_CHECK_STR(d->redis.host, "redis.local");
    T_CHECK_INT(d->redis.port, 6380);
    T_CHECK_STR(d->redis_prefix, "p:");
    T_CHECK_INT(d->max_body, 2 << 20);
    T_CHECK_INT(d->max_memory, 8 << 20);
    T_CHECK_INT(d->on_conflict, LV_IDEM_CONFLICT_WAIT);
    T_CHECK_INT(d->on_store_error, LV_IDEM_FAIL_OPEN);

    /* Hooks are live functions in the state the config keeps. */
    T_CHECK(lv_hooks_state(c) != NULL);
    T_CHECK(d->key_ref >= 0);
    T_CHECK(r->classify_ref >= 0);
    T_CHECK(r->fallback_ref >= 0);
    lua_State *L = lv_hooks_state(c);
    if (L && r->classify_ref >= 0) {
        lua_rawgeti(L, LUA_REGISTRYINDEX, r->classify_ref);
        lua_newtable(L);
        T_CHECK_INT(lua_pcall(L, 1, 1, 0), LUA_OK);
        T_CHECK_STR(lua_tostring(L, -1), "ok");
        lua_pop(L, 1);
    }

    /* The second route: every policy default. */
    r = &c->routes[1];
    T_CHECK_STR(r->name, "default");
    T_CHECK_INT(r->line, 36);
    T_CHECK(r->match_prefix == NULL);
    T_CHECK_STR(r->match_path, "/");
    T_CHECK(r->match_host == NULL);
    T_CHECK_INT(r->match_methods, 0);
    T_CHECK(r->upstream == other);
    T_CHECK_INT(r->timeout_ms, 15000);
    T_CHECK_INT(r->try_timeout_ms, 15000);
    T_CHECK_INT(r->retry.attempts, 2);
    T_CHECK_INT(r->retry.on_errors, LV_RETRY_ON_CONNECT_FAILURE | LV_RETRY_ON_RESET);
    T_CHECK_INT(count_status_bits(&r->retry), 0);
    T_CHECK_INT(r->retry.backoff_base_ms, 25);
    T_CHECK_INT(r->retry.backoff_max_ms, 1000);
    T_CHECK_INT(r->retry.jitter, LV_JITTER_FULL);
    T_CHECK(r->retry.budget_ratio == 0.2);
    T_CHECK(r->retry.budget_min_per_second == 10.0);
    T_CHECK_INT(r->retry.budget_window_ms, 10000);
    T_CHECK(!r->retry.non_idempotent);
    T_CHECK_INT(r->retry.buffer, 65536);
    T_CHECK(!r->breaker.enabled);
    T_CHECK(!r->idempotency.enabled);
    T_CHECK_INT(r->idempotency.key_ref, -1);
    T_CHECK_INT(r->classify_ref, -1);
    T_CHECK_INT(r->fallback_ref, -1);

    /* Pinned by a request: still alive after the server's reference goes. */
    lv_config_pin(c);
    T_CHECK_INT(c->refs, 2);
    lv_config_unpin(c);
    T_CHECK_INT(c->refs, 1);
    T_CHECK_STR(c->routes[0].name, "payments");
    lv_config_unpin(c); /* frees; ASan's leak check verifies everything went */
    lv_buf_dispose(&errs);
}

T_TEST(test_defaults_without_hooks)
{
    write_file("min.lua", "return { upstreams = { app = { servers = { 'localhost:3000' } } },\n"
                          "         routes = { { name = 'all', upstream = 'app' } } }\n");
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *c = lv_config_load(path_of("min.lua"), NULL, &errs);
    T_CHECK(c != NULL);
    if (c) {
        T_CHECK(lv_hooks_state(c) == NULL); /* no hook: the state is closed at once */
        T_CHECK_INT(c->nlistens, 1);
        T_CHECK_STR(c->listens[0].addr.host, "127.0.0.1");
        T_CHECK_INT(c->listens[0].addr.port, 8080);
        T_CHECK(!c->admin_enabled);
        T_CHECK_INT(c->limits.header_size, 32 * 1024);
        T_CHECK_INT(c->limits.request_line, 8 * 1024);
        T_CHECK_INT(c->limits.header_count, 100);
        T_CHECK_INT(c->limits.body_size, 16 << 20);
        T_CHECK_INT(c->limits.header_timeout_ms, 10000);
        T_CHECK_INT(c->limits.idle_timeout_ms, 60000);
        T_CHECK_INT(c->limits.send_timeout_ms, 60000);
        T_CHECK_INT(c->limits.max_connections, 10000);
        T_CHECK_INT(c->access_log, LV_ACCESS_LOG_STDOUT);
        T_CHECK(!c->watch);
        T_CHECK_INT(c->drain_timeout_ms, 10000);
        T_CHECK_INT(c->upstreams[0].pool.max_lifetime_ms, 600000);
        T_CHECK_INT(c->upstreams[0].pool.max_connections, 1024);
        T_CHECK_INT(c->upstreams[0].pool.queue_size, 1024);
        T_CHECK(c->files[0] != NULL && c->files[1] == NULL);
        lv_config_unpin(c);
    }
    lv_buf_dispose(&errs);
}

T_TEST(test_access_log_file_and_lua_dir)
{
    char dir[1024];
    /* An explicit lua_dir is used as given (the source tree's lua/, next to core/). */
    snprintf(dir, sizeof(dir), "%s", __FILE__);
    char *p = strstr(dir, "/core/test/");
    T_CHECK(p != NULL);
    if (!p)
        return;
    strcpy(p, "/lua");
    write_file("log.lua", "return { access_log = 'access.log',\n"
                          "  upstreams = { a = { servers = { '127.0.0.1:1' } } },\n"
                          "  routes = { { name = 'r', upstream = 'a' } } }\n");
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *c = lv_config_load(path_of("log.lua"), dir, &errs);
    T_CHECK(c != NULL);
    if (c) {
        char want[256];
        snprintf(want, sizeof(want), "%s/access.log", tmpdir);
        T_CHECK_INT(c->access_log, LV_ACCESS_LOG_FILE);
        T_CHECK_STR(c->access_log_path, want); /* relative to the file's folder */
        lv_config_unpin(c);
    }
    lv_buf_reset(&errs);
    c = lv_config_load(path_of("log.lua"), "/nonexistent-lua-dir", &errs);
    T_CHECK(c == NULL);
    T_CHECK(errs.len > 0 && strstr(errs.data, "cannot load levee.config") != NULL);
    lv_buf_dispose(&errs);
}

T_TEST(test_errors_all_reported)
{
    char want[4096];
    write_file("bad.lua", "return {\n"
                          "  listen = { '127.0.0.1:99999' },\n"
                          "  limits = { header_size = 'big' },\n"
                          "  upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
                          "  routes = {\n"
                          "    { name = 'a', upstream = 'api',\n"
                          "      retry = { attempts = 'three' } },\n"
                          "    { name = 'a', upstream = 'nope' },\n"
                          "  },\n"
                          "}\n");
    struct lv_buf errs = LV_BUF_INIT;
    const char *f = path_of("bad.lua");
    struct lv_config *c = lv_config_load(f, NULL, &errs);
    T_CHECK(c == NULL);
    lv_buf_putc(&errs, '\0');
    snprintf(want, sizeof(want),
             "%s:2: listen[1]: expected a port between 1 and 65535, got \"127.0.0.1:99999\"\n"
             "%s:3: limits.header_size: expected a size like \"512B\", \"64KiB\", \"16MiB\", "
             "\"1GiB\" or a number of bytes, got \"big\"\n"
             "%s:7: routes[1].retry.attempts: expected integer >= 1, got \"three\"\n"
             "%s:8: routes[2].name: duplicate route name \"a\" (also routes[1], line 6)\n"
             "%s:8: routes[2].upstream: no upstream named \"nope\"; upstreams: api\n",
             f, f, f, f, f);
    T_CHECK_STR(errs.data, want);
    lv_buf_dispose(&errs);
}

T_TEST(test_syntax_and_runtime_errors)
{
    struct lv_buf errs = LV_BUF_INIT;
    const char *f = path_of("syntax.lua");
    char want[512];

    write_file("syntax.lua", "return {\n  listen = { '127.0.0.1:8080' \n  routes = {},\n}\n");
    T_CHECK(lv_config_load(f, NULL, &errs) == NULL);
    lv_buf_putc(&errs, '\0');
    snprintf(want, sizeof(want), "%s:3: ", f);
    T_CHECK(strncmp(errs.data, want, strlen(want)) == 0);
    T_CHECK(strstr(errs.data, "'}' expected") != NULL);

    lv_buf_reset(&errs);
    write_file("syntax.lua", "local x = nil\nreturn { routes = x.y }\n");
    T_CHECK(lv_config_load(f, NULL, &errs) == NULL);
    lv_buf_putc(&errs, '\0');
    snprintf(want, sizeof(want), "%s:2: attempt to index a nil value (local 'x')\n", f);
    T_CHECK_STR(errs.data, want);

    lv_buf_reset(&errs);
    write_file("syntax.lua", "return io.open('/etc/passwd')\n");
    T_CHECK(lv_config_load(f, NULL, &errs) == NULL);
    lv_buf_putc(&errs, '\0');
    snprintf(want, sizeof(want), "%s:1: attempt to index a nil value (global 'io')\n", f);
    T_CHECK_STR(errs.data, want);

    lv_buf_reset(&errs);
    T_CHECK(lv_config_load(path_of("missing.lua"), NULL, &errs) == NULL);
    lv_buf_putc(&errs, '\0');
    T_CHECK(strstr(errs.data, "missing.lua:1: cannot read the file: No such file or directory") !=
            NULL);
    lv_buf_dispose(&errs);
}

T_TEST(test_dev)
{
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *c =
        lv_config_dev(&(struct lv_dev_opts){.url = "http://127.0.0.1:3000"}, NULL, &errs);
    T_CHECK(c != NULL);
    if (c) {
        T_CHECK_INT(c->nlistens, 1);
        T_CHECK_STR(c->listens[0].addr.host, "127.0.0.1");
        T_CHECK_INT(c->listens[0].addr.port, 8080);
        T_CHECK_INT(c->nupstreams, 1);
        T_CHECK_STR(c->upstreams[0].name, "app");
        T_CHECK_INT(c->upstreams[0].nservers, 1);
        T_CHECK_STR(c->upstreams[0].servers[0].host, "127.0.0.1");
        T_CHECK_INT(c->upstreams[0].servers[0].port, 3000);
        T_CHECK(!c->upstreams[0].tls);
        T_CHECK_INT(c->nroutes, 1);
        T_CHECK_STR(c->routes[0].name, "dev");
        T_CHECK(c->routes[0].upstream == &c->upstreams[0]);
        T_CHECK(c->routes[0].match_prefix == NULL && c->routes[0].match_path == NULL);
        T_CHECK_INT(c->routes[0].retry.attempts, 2);
        T_CHECK_INT(c->routes[0].retry.on_errors, LV_RETRY_ON_CONNECT_FAILURE | LV_RETRY_ON_RESET);
        T_CHECK(c->routes[0].breaker.enabled);
        T_CHECK_INT(c->routes[0].breaker.consecutive_failures, 5);
        T_CHECK(!c->routes[0].idempotency.enabled);
        T_CHECK(!c->watch);
        T_CHECK_INT(c->access_log, LV_ACCESS_LOG_STDOUT);
        T_CHECK_INT(c->access_format, LV_ACCESS_FORMAT_CONSOLE);
        T_CHECK(c->admin_enabled);
        T_CHECK_STR(c->admin.host, "127.0.0.1");
        T_CHECK_INT(c->admin.port, 9901);
        T_CHECK(c->files[0] == NULL);
        T_CHECK(lv_hooks_state(c) == NULL);
        lv_config_unpin(c);
    }

    c = lv_config_dev(
        &(struct lv_dev_opts){.url = "localhost:3000", .listen = "0.0.0.0:9090", .admin = "off"},
        NULL, &errs);
    T_CHECK(c != NULL);
    if (c) {
        T_CHECK_STR(c->listens[0].addr.host, "0.0.0.0");
        T_CHECK_INT(c->listens[0].addr.port, 9090);
        T_CHECK_STR(c->upstreams[0].servers[0].host, "localhost");
        T_CHECK(!c->admin_enabled);
        lv_config_unpin(c);
    }

    c = lv_config_dev(&(struct lv_dev_opts){.url = "https://api.example.com", .json = true}, NULL,
                      &errs);
    T_CHECK(c != NULL);
    if (c) {
        T_CHECK_INT(c->upstreams[0].servers[0].port, 443);
        T_CHECK(c->upstreams[0].tls);
        T_CHECK_STR(c->upstreams[0].tls_sni, "api.example.com");
        T_CHECK_INT(c->access_format, LV_ACCESS_FORMAT_JSON);
        lv_config_unpin(c);
    }
    T_CHECK_INT(errs.len, 0);

    c = lv_config_dev(&(struct lv_dev_opts){.url = "ftp://x:1", .listen = "nope"}, NULL, &errs);
    T_CHECK(c == NULL);
    lv_buf_putc(&errs, '\0');
    T_CHECK_STR(errs.data,
                "levee dev: URL: expected an http:// or https:// URL, got \"ftp://x:1\"\n"
                "levee dev: --listen: expected \"host:port\" (like \"127.0.0.1:8080\" or "
                "\"[::1]:8080\"), got \"nope\"\n");
    lv_buf_dispose(&errs);
}

T_TEST(test_examples)
{
    char dir[1024], path[1100];
    snprintf(dir, sizeof(dir), "%s", __FILE__);
    char *p = strstr(dir, "/core/test/");
    T_CHECK(p != NULL);
    if (!p)
        return;
    strcpy(p, "/examples");
    const char *names[] = {"levee.lua", "minimal.lua"};
    for (size_t i = 0; i < 2; i++) {
        struct lv_buf errs = LV_BUF_INIT;
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        struct lv_config *c = lv_config_load(path, NULL, &errs);
        T_CHECK(c != NULL);
        if (!c)
            fprintf(stderr, "%s: %.*s", path, (int)errs.len, errs.data ? errs.data : "");
        else if (i == 0) {
            T_CHECK_INT(c->nroutes, 2);
            T_CHECK(c->routes[0].fallback_ref >= 0);
            T_CHECK(lv_hooks_state(c) != NULL);
        }
        lv_config_unpin(c);
        lv_buf_dispose(&errs);
    }
}

int main(void)
{
    tmpconf_dir(tmpdir, sizeof(tmpdir), "cfg");
    T_RUN(test_full_config);
    T_RUN(test_defaults_without_hooks);
    T_RUN(test_access_log_file_and_lua_dir);
    T_RUN(test_errors_all_reported);
    T_RUN(test_syntax_and_runtime_errors);
    T_RUN(test_dev);
    T_RUN(test_examples);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    T_DONE();
}
