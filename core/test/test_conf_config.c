/*
 * test_conf_config: the lifetime of one generation of the compiled configuration (pin, unpin,
 * freed with its hooks' runtime on the last reference) and the lookups by name, on configs
 * built by hand: this layer has no loader. Everything a config owns is heap memory here, so
 * the ASan build reports what the free would miss.
 */
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "conf/config.h"
#include "t.h"

/* Stands in for the script layer's hooks runtime: counts how often it is freed. */
struct lv_config_hooks {
    int *freed;
};

static void fake_hooks_free(struct lv_config_hooks *h)
{
    (*h->freed)++;
    free(h);
}

static void attach_fake_hooks(struct lv_config *c, int *freed)
{
    struct lv_config_hooks *h = lv_xcalloc(1, sizeof(*h));
    h->freed = freed;
    c->hooks = h;
    c->hooks_free = fake_hooks_free;
}

/* A config owning one of everything config_free must release. */
static struct lv_config *full_config(void)
{
    struct lv_config *c = lv_config_new();
    c->file = lv_xstrdup("/etc/levee.lua");
    c->files = lv_xcalloc(3, sizeof(*c->files));
    c->files[0] = lv_xstrdup("/etc/levee.lua");
    c->files[1] = lv_xstrdup("/etc/hooks.lua");
    c->nlistens = 1;
    c->listens = lv_xcalloc(1, sizeof(*c->listens));
    c->listens[0].addr.host = lv_xstrdup("127.0.0.1");
    c->listens[0].tls_cert = lv_xstrdup("cert.pem");
    c->listens[0].tls_key = lv_xstrdup("key.pem");
    c->admin.host = lv_xstrdup("127.0.0.1");
    c->access_log_path = lv_xstrdup("/var/log/levee.log");
    c->error_log_path = lv_xstrdup("/var/log/levee.err");
    c->nupstreams = 2;
    c->upstreams = lv_xcalloc(2, sizeof(*c->upstreams));
    const char *names[] = {"api", "static"};
    for (int i = 0; i < 2; i++) {
        struct lv_upstream_cfg *u = &c->upstreams[i];
        u->name = lv_xstrdup(names[i]);
        u->nservers = 2;
        u->servers = lv_xcalloc(2, sizeof(*u->servers));
        u->servers[0].host = lv_xstrdup("10.0.0.1");
        u->servers[1].host = lv_xstrdup("10.0.0.2");
        u->tls_sni = lv_xstrdup("api.example");
        u->tls_ca = lv_xstrdup("ca.pem");
        u->health.path = lv_xstrdup("/health");
        u->health.host = lv_xstrdup("api.example");
    }
    c->nroutes = 2;
    c->routes = lv_xcalloc(2, sizeof(*c->routes));
    const char *routes[] = {"orders", "catch-all"};
    for (int i = 0; i < 2; i++) {
        struct lv_route_cfg *r = &c->routes[i];
        r->name = lv_xstrdup(routes[i]);
        r->match_prefix = lv_xstrdup("/v1/");
        r->match_path = lv_xstrdup("/v1/orders");
        r->match_host = lv_xstrdup("api.example");
        r->upstream = &c->upstreams[i];
        r->idempotency.header = lv_xstrdup("Idempotency-Key");
        r->idempotency.redis.host = lv_xstrdup("redis.local");
        r->idempotency.redis_prefix = lv_xstrdup("levee:");
        r->classify_ref = r->fallback_ref = r->idempotency.key_ref = -1;
    }
    return c;
}

T_TEST(test_new)
{
    struct lv_config *c = lv_config_new();
    T_CHECK_INT(c->refs, 1);
    T_CHECK(c->hooks == NULL);
    T_CHECK_INT(c->nroutes, 0);
    T_CHECK(lv_config_upstream(c, "api") == NULL);
    T_CHECK(lv_config_route(c, "orders") == NULL);
    lv_config_unpin(c); /* an empty config frees too */
    lv_config_unpin(NULL);
}

/* The generation lives while anyone holds it; its hooks go with its last reference, once. */
T_TEST(test_pin_unpin_lifetime)
{
    int freed = 0;
    struct lv_config *c = full_config();
    attach_fake_hooks(c, &freed);
    lv_config_pin(c); /* a request in flight */
    lv_config_pin(c); /* another */
    T_CHECK_INT(c->refs, 3);
    lv_config_unpin(c); /* the server moved to a new generation */
    T_CHECK_INT(c->refs, 2);
    T_CHECK_INT(freed, 0);
    /* still readable by the requests that pinned it */
    T_CHECK_STR(c->routes[0].name, "orders");
    lv_config_unpin(c);
    T_CHECK_INT(freed, 0);
    T_CHECK_INT(c->refs, 1);
    lv_config_unpin(c);
    T_CHECK_INT(freed, 1);
}

/* A config a load abandoned midway: counts cover only what was filled in (the ASan build checks
 * that nothing leaks and nothing unfilled is freed). */
T_TEST(test_free_partly_filled)
{
    int freed = 0;
    struct lv_config *c = lv_config_new();
    attach_fake_hooks(c, &freed);
    c->file = lv_xstrdup("levee.lua");
    c->upstreams = lv_xcalloc(3, sizeof(*c->upstreams));
    c->nupstreams = 1;
    c->upstreams[0].name = lv_xstrdup("api");
    c->upstreams[0].servers = lv_xcalloc(2, sizeof(*c->upstreams[0].servers));
    c->upstreams[0].nservers = 1;
    c->upstreams[0].servers[0].host = lv_xstrdup("10.0.0.1");
    c->routes = lv_xcalloc(2, sizeof(*c->routes));
    lv_config_unpin(c);
    T_CHECK_INT(freed, 1);
}

T_TEST(test_lookups)
{
    struct lv_config *c = full_config();
    struct lv_upstream_cfg *u = lv_config_upstream(c, "static");
    T_CHECK(u == &c->upstreams[1]);
    T_CHECK(lv_config_upstream(c, "api") == &c->upstreams[0]);
    T_CHECK(lv_config_upstream(c, "API") == NULL); /* names are exact */
    T_CHECK(lv_config_upstream(c, "ap") == NULL);
    T_CHECK(lv_config_upstream(c, NULL) == NULL);
    struct lv_route_cfg *r = lv_config_route(c, "catch-all");
    T_CHECK(r == &c->routes[1]);
    T_CHECK(r && r->upstream == u);
    T_CHECK(lv_config_route(c, "orders") == &c->routes[0]);
    T_CHECK(lv_config_route(c, "order") == NULL);
    T_CHECK(lv_config_route(c, NULL) == NULL);
    /* a route and an upstream may share a name: each lookup has its own namespace */
    free(c->routes[0].name);
    c->routes[0].name = lv_xstrdup("api");
    T_CHECK(lv_config_route(c, "api") == &c->routes[0]);
    T_CHECK(lv_config_upstream(c, "api") == &c->upstreams[0]);
    lv_config_unpin(c);
}

int main(void)
{
    T_RUN(test_new);
    T_RUN(test_pin_unpin_lifetime);
    T_RUN(test_free_partly_filled);
    T_RUN(test_lookups);
    T_DONE();
}
