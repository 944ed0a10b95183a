/*
 * conf/config.c: the lifetime of one generation of the compiled configuration and lookups in
 * it. Everything here is plain C: the hooks' runtime is freed through the callback the script
 * layer stored with it.
 */
#include "conf/config.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

static void upstream_free(struct lv_upstream_cfg *u)
{
    free(u->name);
    for (size_t i = 0; i < u->nservers; i++)
        free(u->servers[i].host);
    free(u->servers);
    free(u->tls_sni);
    free(u->tls_ca);
    free(u->health.path);
    free(u->health.host);
}

static void route_free(struct lv_route_cfg *r)
{
    free(r->name);
    for (size_t i = 0; i < r->nupgrade; i++)
        free(r->upgrade[i]);
    free(r->upgrade);
    free(r->match_prefix);
    free(r->match_path);
    free(r->match_host);
    free(r->idempotency.header);
    free(r->idempotency.redis.host);
    free(r->idempotency.redis_prefix);
    free(r->rate_limit.key_header);
    free(r->rate_limit.redis_addr.host);
    free(r->rate_limit.redis_prefix);
}

/* Frees a generation and everything it owns. A partly filled one (a load that failed midway)
 * is fine: counts only cover filled entries, the rest is NULL. */
static void config_free(struct lv_config *c)
{
    for (size_t i = 0; c->worker_copies && i < c->nworker_copies; i++)
        lv_config_unpin(c->worker_copies[i]);
    free(c->worker_copies);
    free(c->file);
    if (c->files) {
        for (char **f = c->files; *f; f++)
            free(*f);
        free(c->files);
    }
    for (size_t i = 0; i < c->nlistens; i++) {
        free(c->listens[i].addr.host);
        free(c->listens[i].tls_cert);
        free(c->listens[i].tls_key);
    }
    free(c->listens);
    free(c->admin.host);
    free(c->access_log_path);
    free(c->error_log_path);
    free(c->trusted_proxies);
    free(c->tracing.otlp);
    free(c->tracing.tls_ca);
    free(c->tracing.service);
    for (size_t i = 0; i < c->nupstreams; i++)
        upstream_free(&c->upstreams[i]);
    free(c->upstreams);
    if (c->router) /* before the routes: it points into their strings */
        c->router_free(c->router);
    for (size_t i = 0; i < c->nroutes; i++)
        route_free(&c->routes[i]);
    free(c->routes);
    if (c->hooks) {
        assert(c->hooks_free);
        c->hooks_free(c->hooks);
    }
    free(c);
}

struct lv_config *lv_config_new(void)
{
    struct lv_config *c = lv_xcalloc(1, sizeof(*c));
    c->refs = 1;
    return c;
}

void lv_config_pin(struct lv_config *c)
{
    assert(atomic_load(&c->refs) > 0);
    atomic_fetch_add(&c->refs, 1);
}

void lv_config_unpin(struct lv_config *c)
{
    if (!c)
        return;
    assert(atomic_load(&c->refs) > 0);
    if (atomic_fetch_sub(&c->refs, 1) == 1)
        config_free(c);
}

struct lv_config *lv_config_for_worker(struct lv_config *cfg, size_t i)
{
    if (i == 0)
        return cfg;
    if (i <= cfg->nworker_copies && cfg->worker_copies[i - 1]) {
        struct lv_config *c = cfg->worker_copies[i - 1];
        cfg->worker_copies[i - 1] = NULL;
        return c;
    }
    lv_config_pin(cfg);
    return cfg;
}

struct lv_upstream_cfg *lv_config_upstream(struct lv_config *c, const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < c->nupstreams; i++)
        if (c->upstreams[i].name && strcmp(c->upstreams[i].name, name) == 0)
            return &c->upstreams[i];
    return NULL;
}

struct lv_route_cfg *lv_config_route(struct lv_config *c, const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < c->nroutes; i++)
        if (c->routes[i].name && strcmp(c->routes[i].name, name) == 0)
            return &c->routes[i];
    return NULL;
}

struct lv_breaker_params lv_breaker_cfg_params(const struct lv_breaker_cfg *bc)
{
    return (struct lv_breaker_params){
        .failure_ratio = bc->failure_ratio,
        .min_requests = bc->min_requests,
        .window_ms = bc->window_ms,
        .consecutive_failures = bc->consecutive_failures,
        .open_for_ms = bc->open_for_ms,
        .max_open_for_ms = bc->max_open_for_ms,
        .half_open_requests = bc->half_open_requests,
        .slow_call_ms = bc->slow_call_ms,
        .slow_call_ratio = bc->slow_call_ratio,
    };
}
