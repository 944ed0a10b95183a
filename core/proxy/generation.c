#include "proxy/generation.h"

#include <stdlib.h>

#include "base/buf.h"

struct lv_generation *lv_generation_new(struct lv_config *cfg, lv_generation_release_fn release,
                                        void *owner)
{
    struct lv_generation *g = lv_xcalloc(1, sizeof(*g));
    g->cfg = cfg;
    g->number = cfg->generation;
    g->pins = 1;
    g->upstreams = lv_xcalloc(cfg->nupstreams + 1, sizeof(*g->upstreams));
    g->route_upstreams = lv_xcalloc(cfg->nroutes + 1, sizeof(*g->route_upstreams));
    g->route_states = lv_xcalloc(cfg->nroutes + 1, sizeof(*g->route_states));
    g->route_stores = lv_xcalloc(cfg->nroutes + 1, sizeof(*g->route_stores));
    g->route_store_versions = lv_xcalloc(cfg->nroutes + 1, sizeof(*g->route_store_versions));
    g->release = release;
    g->owner = owner;
    return g;
}

void lv_generation_pin(struct lv_generation *g)
{
    assert(g->pins > 0); /* a released generation is gone */
    g->pins++;
}

void lv_generation_unpin(struct lv_generation *g)
{
    assert(g->pins > 0);
    if (--g->pins > 0)
        return;
    if (g->release)
        g->release(g->owner, g);
    lv_config_unpin(g->cfg);
    free(g->upstreams);
    free(g->route_upstreams);
    free(g->route_states);
    free(g->route_stores);
    free(g->route_store_versions);
    free(g);
}
