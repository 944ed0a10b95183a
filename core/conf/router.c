#include "conf/router.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/method.h"

#define NO_ROUTE UINT32_MAX

/* One way a route can match inside its group: its position and its method set (0: any). */
struct cand {
    uint32_t route;
    uint64_t methods;
};

/* Candidates in route order, so the first whose methods fit is the list's answer. */
struct cand_list {
    struct cand *v;
    uint32_t n, cap;
};

/* Open-addressing map from a byte string to a small integer (exact paths, hosts). */
struct slot {
    const char *key; /* NULL: empty slot */
    size_t len;
    uint64_t hash;
    uint32_t val;
};

struct strmap {
    struct slot *slots;
    size_t cap, n; /* cap: a power of two, or 0 */
};

/* Radix tree node: the edge from its parent is label[0..label_len). */
struct rnode {
    const char *label;
    size_t label_len;
    struct cand_list here; /* routes whose prefix ends exactly here */
    uint32_t subtree_min;  /* lowest route position here or below: the walk stops past it */
    struct rnode *kids;    /* sorted by label[0] */
    uint32_t nkids;
};

/* The routes of one host (or of none). */
struct group {
    struct cand_list any;    /* neither path nor prefix */
    struct strmap exact;     /* path -> index into paths */
    struct cand_list *paths; /* exact path routes (their prefix, if any, already checked) */
    uint32_t npaths;
    struct rnode *prefixes; /* NULL: no prefix route */
};

struct lv_router {
    struct group hostless;
    struct strmap hosts; /* host -> index into by_host */
    struct group *by_host;
    uint32_t nhosts;
};

/* ---- building blocks */

static void cand_push(struct cand_list *l, uint32_t route, uint64_t methods)
{
    if (l->n == l->cap) {
        l->cap = l->cap ? l->cap * 2 : 2;
        l->v = lv_xrealloc(l->v, l->cap * sizeof(*l->v));
    }
    l->v[l->n++] = (struct cand){route, methods};
}

/* The lowest position in `l` that fits `mbit` and is below `best`, else `best`. */
static uint32_t cand_first(const struct cand_list *l, uint64_t mbit, uint32_t best)
{
    for (uint32_t i = 0; i < l->n; i++) {
        if (l->v[i].route >= best)
            return best;
        if (!l->v[i].methods || (l->v[i].methods & mbit))
            return l->v[i].route;
    }
    return best;
}

static uint64_t hash_bytes(const char *p, size_t n)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)p[i]) * 1099511628211ull;
    return h;
}

static struct slot *map_find(const struct strmap *m, const char *key, size_t len, uint64_t h)
{
    if (!m->cap)
        return NULL;
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        struct slot *s = &m->slots[i];
        if (!s->key)
            return s;
        if (s->hash == h && s->len == len && (len == 0 || memcmp(s->key, key, len) == 0))
            return s;
    }
}

static bool map_get(const struct strmap *m, const char *key, size_t len, uint32_t *val)
{
    struct slot *s = map_find(m, key, len, hash_bytes(key, len));
    if (!s || !s->key)
        return false;
    *val = s->val;
    return true;
}

static void map_put(struct strmap *m, const char *key, size_t len, uint32_t val)
{
    if ((m->n + 1) * 2 > m->cap) {
        struct strmap bigger = {lv_xcalloc(m->cap ? m->cap * 2 : 8, sizeof(struct slot)),
                                m->cap ? m->cap * 2 : 8, m->n};
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].key)
                *map_find(&bigger, m->slots[i].key, m->slots[i].len, m->slots[i].hash) =
                    m->slots[i];
        free(m->slots);
        *m = bigger;
    }
    uint64_t h = hash_bytes(key, len);
    struct slot *s = map_find(m, key, len, h);
    assert(!s->key); /* callers look the key up first */
    *s = (struct slot){key, len, h, val};
    m->n++;
}

/* ---- the radix tree of prefixes */

struct pitem {
    const char *s;
    size_t len;
    uint32_t route;
    uint64_t methods;
};

static int pitem_cmp(const void *a, const void *b)
{
    const struct pitem *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = n ? memcmp(x->s, y->s, n) : 0;
    if (c)
        return c;
    if (x->len != y->len)
        return x->len < y->len ? -1 : 1;
    return x->route < y->route ? -1 : x->route > y->route;
}

/* Fills `n` from items[lo..hi), sorted, all sharing their first `depth` bytes. */
static void rnode_build(struct rnode *n, const struct pitem *it, size_t lo, size_t hi, size_t depth)
{
    n->subtree_min = NO_ROUTE;
    size_t i = lo;
    for (; i < hi && it[i].len == depth; i++) {
        cand_push(&n->here, it[i].route, it[i].methods);
        if (it[i].route < n->subtree_min)
            n->subtree_min = it[i].route;
    }
    size_t nkids = 0;
    for (size_t j = i; j < hi; j++)
        if (j == i || it[j].s[depth] != it[j - 1].s[depth])
            nkids++;
    if (!nkids)
        return;
    n->kids = lv_xcalloc(nkids, sizeof(*n->kids));
    for (size_t a = i; a < hi;) {
        size_t b = a + 1;
        while (b < hi && it[b].s[depth] == it[a].s[depth])
            b++;
        /* Sorted: what the first and last of the run share, the whole run shares. */
        const struct pitem *f = &it[a], *l = &it[b - 1];
        size_t lcp = depth + 1;
        while (lcp < f->len && lcp < l->len && f->s[lcp] == l->s[lcp])
            lcp++;
        struct rnode *k = &n->kids[n->nkids++];
        k->label = f->s + depth;
        k->label_len = lcp - depth;
        rnode_build(k, it, a, b, lcp);
        if (k->subtree_min < n->subtree_min)
            n->subtree_min = k->subtree_min;
        a = b;
    }
}

static void rnode_free(struct rnode *n)
{
    for (uint32_t i = 0; i < n->nkids; i++)
        rnode_free(&n->kids[i]);
    free(n->kids);
    free(n->here.v);
}

static const struct rnode *rnode_child(const struct rnode *n, unsigned char c)
{
    uint32_t lo = 0, hi = n->nkids;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        unsigned char k = (unsigned char)n->kids[mid].label[0];
        if (k == c)
            return &n->kids[mid];
        if (k < c)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Walks the path down the tree: every node passed is a prefix of the path. */
static uint32_t rnode_lookup(const struct rnode *n, const char *path, size_t len, uint64_t mbit,
                             uint32_t best)
{
    size_t d = 0;
    while (n && n->subtree_min < best) {
        best = cand_first(&n->here, mbit, best);
        if (d == len)
            break;
        const struct rnode *k = rnode_child(n, (unsigned char)path[d]);
        if (!k || k->label_len > len - d || memcmp(k->label, path + d, k->label_len) != 0)
            break;
        d += k->label_len;
        n = k;
    }
    return best;
}

/* ---- groups */

static void group_build(struct group *g, const struct lv_route_cfg *routes, const uint32_t *idx,
                        size_t n)
{
    struct pitem *items = lv_xcalloc(n ? n : 1, sizeof(*items));
    size_t nitems = 0;
    for (size_t k = 0; k < n; k++) {
        const struct lv_route_cfg *r = &routes[idx[k]];
        if (r->match_path) {
            size_t plen = strlen(r->match_path);
            if (r->match_prefix &&
                strncmp(r->match_path, r->match_prefix, strlen(r->match_prefix)) != 0)
                continue; /* its path is outside its prefix: it never matches */
            uint32_t at;
            if (!map_get(&g->exact, r->match_path, plen, &at)) {
                at = g->npaths++;
                g->paths = lv_xrealloc(g->paths, g->npaths * sizeof(*g->paths));
                g->paths[at] = (struct cand_list){0};
                map_put(&g->exact, r->match_path, plen, at);
            }
            cand_push(&g->paths[at], idx[k], r->match_methods);
        } else if (r->match_prefix) {
            items[nitems++] =
                (struct pitem){r->match_prefix, strlen(r->match_prefix), idx[k], r->match_methods};
        } else {
            cand_push(&g->any, idx[k], r->match_methods);
        }
    }
    if (nitems) {
        qsort(items, nitems, sizeof(*items), pitem_cmp);
        g->prefixes = lv_xcalloc(1, sizeof(*g->prefixes));
        g->prefixes->label = "";
        rnode_build(g->prefixes, items, 0, nitems, 0);
    }
    free(items);
}

static void group_free(struct group *g)
{
    free(g->any.v);
    for (uint32_t i = 0; i < g->npaths; i++)
        free(g->paths[i].v);
    free(g->paths);
    free(g->exact.slots);
    if (g->prefixes) {
        rnode_free(g->prefixes);
        free(g->prefixes);
    }
}

static uint32_t group_lookup(const struct group *g, uint64_t mbit, const char *path, size_t len,
                             uint32_t best)
{
    best = cand_first(&g->any, mbit, best);
    uint32_t at;
    if (g->npaths && map_get(&g->exact, path, len, &at))
        best = cand_first(&g->paths[at], mbit, best);
    return rnode_lookup(g->prefixes, path, len, mbit, best);
}

/* ---- the index */

struct lv_router *lv_router_build(const struct lv_route_cfg *routes, size_t nroutes)
{
    assert(nroutes < NO_ROUTE);
    struct lv_router *rt = lv_xcalloc(1, sizeof(*rt));
    /* Route positions per group, in route order: group 0 is the host-less one. */
    uint32_t *members = lv_xcalloc(nroutes ? nroutes : 1, sizeof(*members));
    uint32_t *group_of = lv_xcalloc(nroutes ? nroutes : 1, sizeof(*group_of));
    for (size_t i = 0; i < nroutes; i++) {
        const char *h = routes[i].match_host;
        if (!h) {
            group_of[i] = 0;
            continue;
        }
        uint32_t g;
        if (!map_get(&rt->hosts, h, strlen(h), &g)) {
            g = rt->nhosts++;
            map_put(&rt->hosts, h, strlen(h), g);
        }
        group_of[i] = g + 1;
    }
    rt->by_host = lv_xcalloc(rt->nhosts ? rt->nhosts : 1, sizeof(*rt->by_host));
    /* Counting sort by group keeps route order inside each group. */
    uint32_t *start = lv_xcalloc(rt->nhosts + 2, sizeof(*start));
    for (size_t i = 0; i < nroutes; i++)
        start[group_of[i] + 1]++;
    for (uint32_t g = 0; g <= rt->nhosts; g++)
        start[g + 1] += start[g];
    uint32_t *fill = lv_xcalloc(rt->nhosts + 1, sizeof(*fill));
    for (size_t i = 0; i < nroutes; i++)
        members[start[group_of[i]] + fill[group_of[i]]++] = (uint32_t)i;
    for (uint32_t g = 0; g <= rt->nhosts; g++)
        group_build(g ? &rt->by_host[g - 1] : &rt->hostless, routes, members + start[g],
                    start[g + 1] - start[g]);
    free(fill);
    free(start);
    free(group_of);
    free(members);
    return rt;
}

void lv_router_free(struct lv_router *rt)
{
    if (!rt)
        return;
    group_free(&rt->hostless);
    for (uint32_t i = 0; i < rt->nhosts; i++)
        group_free(&rt->by_host[i]);
    free(rt->by_host);
    free(rt->hosts.slots);
    free(rt);
}

long lv_router_lookup(const struct lv_router *rt, int method, const char *path, size_t path_len,
                      const char *host, size_t host_len)
{
    /* A route with a method set never matches a method outside 0..63 (bit 0 fits none). */
    uint64_t mbit = method >= 0 && method < 64 ? LV_METHOD_BIT(method) : 0;
    uint32_t best = NO_ROUTE, g;
    if (rt->nhosts && map_get(&rt->hosts, host ? host : "", host ? host_len : 0, &g))
        best = group_lookup(&rt->by_host[g], mbit, path, path_len, best);
    best = group_lookup(&rt->hostless, mbit, path, path_len, best);
    return best == NO_ROUTE ? -1 : (long)best;
}

const struct lv_route_cfg *lv_router_match(const struct lv_config *cfg, int method,
                                           const char *path, size_t path_len, const char *host,
                                           size_t host_len)
{
    assert(cfg->router || cfg->nroutes == 0);
    if (!cfg->router)
        return NULL;
    long i = lv_router_lookup(cfg->router, method, path, path_len, host, host_len);
    return i < 0 ? NULL : &cfg->routes[i];
}
