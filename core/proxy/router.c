#include "proxy/router.h"

#include <string.h>

#include "base/method.h"

const struct lv_route_cfg *lv_router_match(const struct lv_config *cfg, int method,
                                           const char *path, size_t path_len, const char *host,
                                           size_t host_len)
{
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct lv_route_cfg *r = &cfg->routes[i];
        if (r->match_methods &&
            (method < 0 || method >= 64 || !(r->match_methods & LV_METHOD_BIT(method))))
            continue;
        if (r->match_path) {
            size_t n = strlen(r->match_path);
            if (n != path_len || memcmp(r->match_path, path, n) != 0)
                continue;
        }
        if (r->match_prefix) {
            size_t n = strlen(r->match_prefix);
            if (n > path_len || memcmp(r->match_prefix, path, n) != 0)
                continue;
        }
        if (r->match_host) {
            size_t n = strlen(r->match_host);
            if (n != host_len || memcmp(r->match_host, host, n) != 0)
                continue;
        }
        return r;
    }
    return NULL;
}
