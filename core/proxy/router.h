/*
 * router: first-match route selection over a configuration's routes (README, "Configuration": in
 * order, on exact path, path prefix, host and method). Pure: reads the config structs, owns
 * nothing.
 */
#ifndef LV_ROUTER_H
#define LV_ROUTER_H

#include <stddef.h>

#include "script/config.h"

/**
 * The first route of `cfg` matching the request, or NULL. `path` is the path without the
 * query; `host` is the lower-cased host without its port (may be empty).
 * A prefix is a plain string prefix: "/api" matches "/api", "/api/x" and "/apix", as
 * Envoy's `prefix` and nginx's `location /api` do.
 */
const struct lv_route_cfg *lv_router_match(const struct lv_config *cfg, int method,
                                           const char *path, size_t path_len, const char *host,
                                           size_t host_len);

#endif
