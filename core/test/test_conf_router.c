/* The route index (conf/router.h) against a plain first-match scan, on generated route sets. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/method.h"
#include "conf/router.h"
#include "t.h"

/* The reference: the first route, in order, whose every condition holds. */
static long scan(const struct lv_route_cfg *routes, size_t n, int method, const char *path,
                 size_t path_len, const char *host, size_t host_len)
{
    for (size_t i = 0; i < n; i++) {
        const struct lv_route_cfg *r = &routes[i];
        if (r->match_methods &&
            (method < 0 || method >= 64 || !(r->match_methods & LV_METHOD_BIT(method))))
            continue;
        if (r->match_path &&
            (strlen(r->match_path) != path_len || memcmp(r->match_path, path, path_len) != 0))
            continue;
        if (r->match_prefix && (strlen(r->match_prefix) > path_len ||
                                memcmp(r->match_prefix, path, strlen(r->match_prefix)) != 0))
            continue;
        if (r->match_host &&
            (strlen(r->match_host) != host_len || memcmp(r->match_host, host, host_len) != 0))
            continue;
        return (long)i;
    }
    return -1;
}

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13; /* xorshift64: the same sequence on every run */
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

/* Paths from a tiny alphabet, so prefixes, exact paths and requests overlap often. */
static char *rnd_path(size_t maxlen)
{
    static const char abc[] = "//abc-";
    size_t n = 1 + rnd((uint32_t)maxlen);
    char *p = malloc(n + 1);
    p[0] = '/';
    for (size_t i = 1; i < n; i++)
        p[i] = abc[rnd(sizeof(abc) - 1)];
    p[n] = '\0';
    return p;
}

static const char *const hosts[] = {"a.example", "b.example", "a.example.org", ""};
static const int some_methods[] = {1, 2, 3,
                                   4, 5, 63}; /* GET, HEAD, POST, PUT, DELETE, the last bit */

static uint64_t rnd_methods(void)
{
    if (rnd(3))
        return 0;
    uint64_t m = 0;
    for (int i = 0, k = 1 + (int)rnd(2); i < k; i++)
        m |= LV_METHOD_BIT(some_methods[rnd(6)]);
    return m;
}

static void routes_free(struct lv_route_cfg *r, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(r[i].match_prefix);
        free(r[i].match_path);
        free(r[i].match_host);
    }
    free(r);
}

static struct lv_route_cfg *rnd_routes(size_t n)
{
    struct lv_route_cfg *r = calloc(n ? n : 1, sizeof(*r));
    for (size_t i = 0; i < n; i++) {
        uint32_t kind = rnd(10);
        if (kind < 5)
            r[i].match_prefix = rnd(8) ? rnd_path(6) : strdup("/");
        else if (kind < 8)
            r[i].match_path = rnd_path(6);
        else if (kind < 9) { /* both: the path under the prefix, or (sometimes) not */
            r[i].match_path = rnd_path(7);
            r[i].match_prefix = strndup(r[i].match_path, 1 + rnd(3));
            if (!rnd(4))
                r[i].match_prefix[0] = 'x';
        }
        if (!rnd(3))
            r[i].match_host = strdup(hosts[rnd(3)]);
        r[i].match_methods = rnd_methods();
    }
    return r;
}

/* A request path near the routes: one of their strings, cut, extended or a trailing slash. */
static char *rnd_request(const struct lv_route_cfg *r, size_t n, size_t *len)
{
    const char *base = NULL;
    if (n && rnd(4)) {
        const struct lv_route_cfg *x = &r[rnd((uint32_t)n)];
        base = x->match_path && (rnd(2) || !x->match_prefix) ? x->match_path : x->match_prefix;
    }
    char *p;
    if (!base) {
        p = rnd_path(9);
    } else {
        size_t bl = strlen(base);
        switch (rnd(4)) {
        case 0: /* as is */
            p = strdup(base);
            break;
        case 1: /* cut */
            p = strndup(base, bl ? rnd((uint32_t)bl + 1) : 0);
            break;
        case 2: { /* extended */
            char *tail = rnd_path(4);
            p = malloc(bl + strlen(tail) + 1);
            memcpy(p, base, bl);
            strcpy(p + bl, tail + 1 - rnd(2)); /* with or without the tail's slash */
            free(tail);
            break;
        }
        default: /* trailing slash */
            p = malloc(bl + 2);
            memcpy(p, base, bl);
            strcpy(p + bl, "/");
        }
    }
    *len = strlen(p);
    return p;
}

static int rnd_method(void)
{
    uint32_t k = rnd(10);
    return k < 8 ? some_methods[rnd(6)] : k == 8 ? -1 : 64 + (int)rnd(3);
}

/* Every request in `reqs` answered the same by the index and the scan. */
static int agree(const struct lv_route_cfg *r, size_t n, const struct lv_router *rt, int method,
                 const char *path, size_t len, const char *host)
{
    size_t hl = host ? strlen(host) : 0;
    long want = scan(r, n, method, path, len, host, hl);
    long got = lv_router_lookup(rt, method, path, len, host, hl);
    if (want != got)
        fprintf(stderr, "routes %zu, %d %.*s host \"%s\": index %ld, scan %ld\n", n, method,
                (int)len, path, host ? host : "(null)", got, want);
    return want == got;
}

T_TEST(random_sets_agree_with_the_scan)
{
    int bad = 0, matched = 0;
    for (int set = 0; set < 400; set++) {
        size_t n = set < 20 ? (size_t)set : 1 + rnd(set < 300 ? 40 : 300);
        struct lv_route_cfg *r = rnd_routes(n);
        struct lv_router *rt = lv_router_build(r, n);
        for (int q = 0; q < 300; q++) {
            size_t len;
            char *p = rnd_request(r, n, &len);
            const char *host = rnd(5) ? hosts[rnd(4)] : rnd(2) ? "c.example" : NULL;
            int m = rnd_method();
            bad += !agree(r, n, rt, m, p, len, host);
            matched += scan(r, n, m, p, len, host, host ? strlen(host) : 0) >= 0;
            free(p);
        }
        lv_router_free(rt);
        routes_free(r, n);
    }
    T_CHECK_INT(bad, 0);
    /* The generator is useful only if most requests match something and some do not. */
    T_CHECK(matched > 400 * 300 / 2);
    T_CHECK(matched < 400 * 300);
}

/* Overlapping prefixes of one long path, in every order, with an exact path among them. */
T_TEST(nested_prefixes_in_any_order)
{
    const char *chain[] = {"/", "/a", "/a/", "/a/b", "/a/b/c", "/a/b/c/"};
    int bad = 0;
    for (int perm = 0; perm < 200; perm++) {
        size_t n = 7;
        struct lv_route_cfg *r = calloc(n, sizeof(*r));
        for (size_t i = 0; i < 6; i++)
            r[i].match_prefix = strdup(chain[i]);
        r[6].match_path = strdup("/a/b");
        for (size_t i = n - 1; i > 0; i--) { /* shuffle */
            size_t j = rnd((uint32_t)i + 1);
            struct lv_route_cfg t = r[i];
            r[i] = r[j];
            r[j] = t;
        }
        struct lv_router *rt = lv_router_build(r, n);
        const char *reqs[] = {"/",     "/a",     "/a/",      "/a/b", "/a/bc",
                              "/a/b/", "/a/b/c", "/a/b/c/d", "",     "/b"};
        for (size_t k = 0; k < sizeof(reqs) / sizeof(reqs[0]); k++)
            bad += !agree(r, n, rt, 1, reqs[k], strlen(reqs[k]), "");
        lv_router_free(rt);
        routes_free(r, n);
    }
    T_CHECK_INT(bad, 0);
}

static struct lv_route_cfg route(const char *prefix, const char *path, const char *host,
                                 uint64_t methods)
{
    return (struct lv_route_cfg){.match_prefix = (char *)prefix,
                                 .match_path = (char *)path,
                                 .match_host = (char *)host,
                                 .match_methods = methods};
}

static long look(const struct lv_router *rt, int method, const char *path, const char *host)
{
    return lv_router_lookup(rt, method, path, strlen(path), host, host ? strlen(host) : 0);
}

T_TEST(first_match_wins_over_more_specific)
{
    struct lv_route_cfg r[] = {
        route("/api", NULL, NULL, LV_METHOD_BIT(3)), /* 0: POST /api... */
        route(NULL, "/api/x", NULL, 0),              /* 1: exact, after a broader prefix */
        route("/api/", NULL, "h.example", 0),        /* 2: host-only */
        route("/", NULL, NULL, 0),                   /* 3: catch-all */
        route(NULL, "/api/x", NULL, 0),              /* 4: never: 1 is the same and earlier */
    };
    struct lv_router *rt = lv_router_build(r, 5);
    T_CHECK_INT(look(rt, 3, "/api/x", ""), 0);          /* POST: the earlier, broader prefix */
    T_CHECK_INT(look(rt, 1, "/api/x", ""), 1);          /* GET: the exact path */
    T_CHECK_INT(look(rt, 1, "/api/x", "h.example"), 1); /* the host route comes later */
    T_CHECK_INT(look(rt, 1, "/api/y", "h.example"), 2);
    T_CHECK_INT(look(rt, 1, "/api/y", "H.example"), 3); /* hosts compare exactly */
    T_CHECK_INT(look(rt, 1, "/api", ""), 3);
    T_CHECK_INT(look(rt, -1, "/apix", ""), 3); /* no method number: method sets never match */
    T_CHECK_INT(look(rt, 64, "/apix", ""), 3);
    T_CHECK_INT(look(rt, 1, "nope", ""), -1); /* not under "/" */
    lv_router_free(rt);
}

T_TEST(edge_cases)
{
    struct lv_router *rt = lv_router_build(NULL, 0);
    T_CHECK_INT(look(rt, 1, "/", ""), -1);
    T_CHECK_INT(lv_router_lookup(rt, 1, NULL, 0, NULL, 0), -1);
    lv_router_free(rt);
    lv_router_free(NULL);

    /* A route with no condition matches everything, an empty path and no host included. */
    struct lv_route_cfg any[] = {route(NULL, NULL, "x", 0), route(NULL, NULL, NULL, 0)};
    rt = lv_router_build(any, 2);
    T_CHECK_INT(lv_router_lookup(rt, 1, NULL, 0, NULL, 0), 1);
    T_CHECK_INT(lv_router_lookup(rt, 1, "", 0, "x", 1), 0);
    lv_router_free(rt);

    /* A path outside its own prefix never matches; bytes >= 0x80 compare as bytes. */
    struct lv_route_cfg odd[] = {route("/b", "/a", NULL, 0), route("/\xc3\xa9", NULL, NULL, 0),
                                 route("/\xc3", NULL, NULL, 0), route(NULL, "/a", NULL, 0)};
    rt = lv_router_build(odd, 4);
    T_CHECK_INT(look(rt, 1, "/a", ""), 3);
    T_CHECK_INT(look(rt, 1, "/\xc3\xa9t\xc3\xa9", ""), 1);
    T_CHECK_INT(look(rt, 1, "/\xc3\xa8", ""), 2);
    T_CHECK_INT(look(rt, 1, "/\xc2", ""), -1);
    lv_router_free(rt);

    /* Long paths: a 10,000-byte prefix, and a request well past it. */
    char *longp = malloc(20001);
    for (int i = 0; i < 20000; i++)
        longp[i] = i % 7 ? 'a' + i % 26 : '/';
    longp[0] = '/';
    longp[20000] = '\0';
    char *pre = strndup(longp, 10000), *pre2 = strndup(longp, 9999);
    struct lv_route_cfg lng[] = {route(pre, NULL, NULL, LV_METHOD_BIT(3)),
                                 route(pre2, NULL, NULL, 0), route(NULL, longp, NULL, 0)};
    rt = lv_router_build(lng, 3);
    T_CHECK_INT(look(rt, 3, longp, ""), 0);
    T_CHECK_INT(look(rt, 1, longp, ""), 1);
    T_CHECK_INT(lv_router_lookup(rt, 1, longp, 9998, "", 0), -1);
    T_CHECK_INT(agree(lng, 3, rt, 1, longp, 20000, NULL), 1);
    lv_router_free(rt);
    free(pre);
    free(pre2);
    free(longp);
}

/* The case the index exists for: many routes, the last one asked for. */
T_TEST(thousands_of_routes)
{
    size_t n = 5000;
    struct lv_route_cfg *r = calloc(n, sizeof(*r));
    for (size_t i = 0; i < n; i++) {
        char buf[64];
        snprintf(buf, sizeof(buf), "/svc%zu/", i);
        if (i % 3 == 0)
            r[i].match_path = strdup(buf);
        else
            r[i].match_prefix = strdup(buf);
        if (i % 5 == 0)
            r[i].match_host = strdup(i % 10 ? "a.example" : "b.example");
    }
    struct lv_router *rt = lv_router_build(r, n);
    int bad = 0;
    for (size_t i = 0; i < n; i += 7) {
        char buf[64];
        int len = snprintf(buf, sizeof(buf), "/svc%zu/%s", i, i % 2 ? "x" : "");
        bad += !agree(r, n, rt, 1, buf, (size_t)len, i % 4 ? "a.example" : "b.example");
        bad += !agree(r, n, rt, 1, buf, (size_t)len, NULL);
    }
    T_CHECK_INT(bad, 0);
    T_CHECK_INT(look(rt, 1, "/svc4999/x", ""), 4999);
    lv_router_free(rt);
    routes_free(r, n);
}

T_TEST(match_uses_the_config_index)
{
    struct lv_route_cfg r[] = {route("/a", NULL, NULL, 0), route("/", NULL, NULL, 0)};
    struct lv_config cfg = {.routes = r, .nroutes = 2};
    cfg.router = lv_router_build(r, 2);
    T_CHECK(lv_router_match(&cfg, 1, "/ab", 3, "", 0) == &r[0]);
    T_CHECK(lv_router_match(&cfg, 1, "/b", 2, "", 0) == &r[1]);
    T_CHECK(lv_router_match(&cfg, 1, "b", 1, "", 0) == NULL);
    lv_router_free(cfg.router);
}

int main(void)
{
    T_RUN(random_sets_agree_with_the_scan);
    T_RUN(nested_prefixes_in_any_order);
    T_RUN(first_match_wins_over_more_specific);
    T_RUN(edge_cases);
    T_RUN(thousands_of_routes);
    T_RUN(match_uses_the_config_index);
    T_DONE();
}
