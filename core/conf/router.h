/*
 * router: first-match route selection over a configuration's routes (README, "Configuration":
 * in order, on exact path, path prefix, host and method), through an index compiled once per
 * configuration generation so a lookup costs about the same with one route or thousands.
 *
 * The index keeps the semantics of a linear first-match scan exactly: routes are grouped by
 * host (a hash of exact hosts, plus the host-less group), and inside a group by how they match
 * the path (an exact-path hash, a radix tree over prefix bytes, and the routes that match any
 * path). Every candidate carries its route's position, and a lookup returns the lowest position
 * among all candidates that match, so an earlier, broader route still wins over a later, more
 * specific one. Pure: no libuv, no Lua; reads the config structs, owns only the index.
 */
#ifndef LV_ROUTER_H
#define LV_ROUTER_H

#include <stddef.h>

#include "conf/config.h"

struct lv_router;

/**
 * Compiles the index of `routes[0..nroutes)`. It points into the routes' match strings, so it
 * must be freed (lv_router_free) before them: it belongs to the configuration generation.
 */
struct lv_router *lv_router_build(const struct lv_route_cfg *routes, size_t nroutes);
void lv_router_free(struct lv_router *rt);

/**
 * The position of the first route matching the request, or -1. `method` is an llhttp method
 * number (any value: a route with a method set never matches one outside 0..63); `path` is the
 * path without the query; `host` is the lower-cased host without its port (may be empty).
 * A prefix is a plain string prefix: "/api" matches "/api", "/api/x" and "/apix", as Envoy's
 * `prefix` and nginx's `location /api` do.
 */
long lv_router_lookup(const struct lv_router *rt, int method, const char *path, size_t path_len,
                      const char *host, size_t host_len);

/** The first route of `cfg` matching the request (lv_router_lookup on cfg->router), or NULL. */
const struct lv_route_cfg *lv_router_match(const struct lv_config *cfg, int method,
                                           const char *path, size_t path_len, const char *host,
                                           size_t host_len);

#endif
