/*
 * generation: one configuration in force, or once in force, with the runtime objects it names
 * (README "Reload"). A generation wraps one struct lv_config and holds a reference to
 * everything that configuration names: per upstream its runtime upstream, per route its route
 * state, its upstream and its idempotency store, each found by index in O(1).
 *
 * The lifetime rule: a generation holds references to everything it names; a request pins
 * only its generation. The server holds the current generation (one pin); a reload installs a
 * new one and drops that pin on the old one. When the last pin goes, the generation's owner
 * (the server, proxy/server.c) releases the references the generation holds: an upstream or a
 * route state that no live generation names any more is freed then.
 *
 * The request path: pin the generation in force when the request starts, read the route's
 * state, upstream and store by the route's index (cfg->routes[i]), unpin when it ends.
 */
#ifndef LV_GENERATION_H
#define LV_GENERATION_H

#include <assert.h>
#include <stddef.h>
#include <stdint.h>

#include "conf/config.h"

struct lv_upstream;
struct lv_route_state;
struct lv_idem;
struct lv_generation;

/* Called once, when the last pin goes: drops the references `g` holds (then `g` is freed). */
typedef void (*lv_generation_release_fn)(void *owner, struct lv_generation *g);

struct lv_generation {
    struct lv_config *cfg; /* one config reference, the generation's own */
    uint64_t number;       /* cfg->generation */
    uint32_t pins;
    struct lv_upstream **upstreams;       /* per cfg->upstreams[i] */
    struct lv_upstream **route_upstreams; /* per cfg->routes[i]: upstreams[its upstream] */
    struct lv_route_state **route_states; /* per cfg->routes[i] */
    struct lv_idem **route_stores;        /* per cfg->routes[i]: NULL without idempotency */
    uint64_t *route_store_versions;       /* per route: the route state's idem_version */
    lv_generation_release_fn release;
    void *owner;
};

/** A generation for `cfg` (takes the caller's config reference), pinned once (the caller's
 *  pin), with empty slots the owner fills while it builds it; `release` runs at the last
 *  unpin. */
struct lv_generation *lv_generation_new(struct lv_config *cfg, lv_generation_release_fn release,
                                        void *owner);
void lv_generation_pin(struct lv_generation *g);
/** Drops one pin; the last one releases what `g` names and frees it. */
void lv_generation_unpin(struct lv_generation *g);

/** The index of `cfg->routes` entry `r` (a route of this generation's config). */
static inline size_t lv_generation_route_index(const struct lv_generation *g,
                                               const struct lv_route_cfg *r)
{
    assert(r >= g->cfg->routes && r < g->cfg->routes + g->cfg->nroutes);
    return (size_t)(r - g->cfg->routes);
}

static inline struct lv_route_state *lv_generation_route_state(const struct lv_generation *g,
                                                               size_t route_index)
{
    assert(route_index < g->cfg->nroutes);
    return g->route_states[route_index];
}

static inline struct lv_upstream *lv_generation_upstream(const struct lv_generation *g,
                                                         size_t route_index)
{
    assert(route_index < g->cfg->nroutes);
    return g->route_upstreams[route_index];
}

static inline struct lv_idem *lv_generation_store(const struct lv_generation *g, size_t route_index)
{
    assert(route_index < g->cfg->nroutes);
    return g->route_stores[route_index];
}

#endif
