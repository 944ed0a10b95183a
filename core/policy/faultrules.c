#include "policy/faultrules.h"

#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

void lv_fault_rules_init(struct lv_fault_rules *t)
{
    memset(t, 0, sizeof(*t));
    pthread_mutex_init(&t->lock, NULL);
    atomic_init(&t->n, 0);
    t->next_id = 1;
}

static void rule_free(struct lv_fault_rule *r)
{
    free(r->route);
    free(r->prefix);
}

void lv_fault_rules_dispose(struct lv_fault_rules *t)
{
    size_t n = atomic_load(&t->n);
    for (size_t i = 0; i < n; i++)
        rule_free(&t->v[i]);
    free(t->v);
    pthread_mutex_destroy(&t->lock);
}

static char *dup_or_null(const char *s)
{
    if (!s)
        return NULL;
    size_t n = strlen(s) + 1;
    char *d = lv_xmalloc(n);
    memcpy(d, s, n);
    return d;
}

uint64_t lv_fault_rules_add(struct lv_fault_rules *t, const struct lv_fault_rule *r)
{
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load_explicit(&t->n, memory_order_relaxed);
    if (n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 8;
        t->v = lv_xrealloc(t->v, t->cap * sizeof(*t->v));
    }
    struct lv_fault_rule *d = &t->v[n];
    *d = *r;
    d->id = t->next_id++;
    d->injected = 0;
    d->route = dup_or_null(r->route);
    d->prefix = dup_or_null(r->prefix);
    atomic_store_explicit(&t->n, n + 1, memory_order_relaxed);
    uint64_t id = d->id;
    pthread_mutex_unlock(&t->lock);
    return id;
}

/* Under the lock: removes entry i, keeping the order. */
static void remove_at(struct lv_fault_rules *t, size_t i)
{
    size_t n = atomic_load_explicit(&t->n, memory_order_relaxed);
    rule_free(&t->v[i]);
    memmove(&t->v[i], &t->v[i + 1], (n - i - 1) * sizeof(*t->v));
    atomic_store_explicit(&t->n, n - 1, memory_order_relaxed);
}

bool lv_fault_rules_remove(struct lv_fault_rules *t, uint64_t id)
{
    bool found = false;
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load_explicit(&t->n, memory_order_relaxed);
    for (size_t i = 0; i < n && !found; i++) {
        if (t->v[i].id == id) {
            remove_at(t, i);
            found = true;
        }
    }
    pthread_mutex_unlock(&t->lock);
    return found;
}

size_t lv_fault_rules_clear(struct lv_fault_rules *t)
{
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load_explicit(&t->n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        rule_free(&t->v[i]);
    atomic_store_explicit(&t->n, 0, memory_order_relaxed);
    pthread_mutex_unlock(&t->lock);
    return n;
}

static bool matches(const struct lv_fault_rule *r, const char *route, int method, const char *path,
                    size_t path_len, bool at_client)
{
    if (r->at_client != at_client || strcmp(r->route, route) != 0)
        return false;
    if (r->method >= 0 && r->method != method)
        return false;
    if (r->prefix) {
        size_t pl = strlen(r->prefix);
        if (pl > path_len || memcmp(r->prefix, path, pl) != 0)
            return false;
    }
    return true;
}

unsigned lv_fault_rules_draw(struct lv_fault_rules *t, const char *route, int method,
                             const char *path, size_t path_len, bool at_client,
                             uint64_t (*rnd)(void *), void *arg, struct lv_fault_hit *hit)
{
    unsigned fired = 0;
    pthread_mutex_lock(&t->lock);
    for (size_t i = 0; i < atomic_load_explicit(&t->n, memory_order_relaxed);) {
        struct lv_fault_rule *r = &t->v[i];
        if (!matches(r, route, method, path, path_len, at_client)) {
            i++;
            continue;
        }
        if (r->percent < 100 &&
            !(r->percent > 0 && (double)(rnd(arg) % 100000000u) < r->percent * 1000000.0)) {
            i++;
            continue;
        }
        for (int k = 0; k < LV_FAULT_KINDS; k++)
            if (r->f.k[k].on)
                lv_fault_hit_add(hit, (enum lv_fault_kind)k, r->f.k[k].value);
        r->injected++;
        fired++;
        if (r->times > 0 && --r->times == 0) {
            remove_at(t, i);
            continue;
        }
        i++;
    }
    pthread_mutex_unlock(&t->lock);
    return fired;
}

void lv_fault_rules_each(struct lv_fault_rules *t,
                         void (*each)(const struct lv_fault_rule *r, void *arg), void *arg)
{
    pthread_mutex_lock(&t->lock);
    size_t n = atomic_load_explicit(&t->n, memory_order_relaxed);
    for (size_t i = 0; i < n; i++)
        each(&t->v[i], arg);
    pthread_mutex_unlock(&t->lock);
}
