#include "proxy/routestate.h"
#include "policy/fault.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "policy/outcome.h"

/* ---- series made on first use */

static struct lv_keyed_metric *keyed_at(const struct lv_keyed_series *ks, uint32_t i)
{
    return &ks->chunk[i / LV_KEYED_CHUNK][i % LV_KEYED_CHUNK];
}

/* The series under `key` (a status code, or -1 - an outcome kind), made with the labels
 * {route, key as text} when missing (formatted only then, under the route state's lock). */
/* The label of a key: a status code, or -1 - an outcome kind. */
static const char *status_or_outcome(int key, char *buf, size_t n)
{
    if (key < 0)
        return lv_outcome_name((enum lv_outcome_kind)(-1 - key));
    snprintf(buf, n, "%d", key);
    return buf;
}

static const char *decision_name(int key, char *buf, size_t n)
{
    (void)buf, (void)n;
    return lv_retry_stop_name((enum lv_retry_stop)key);
}

static struct lv_metric *keyed_get(struct lv_route_state *rs, struct lv_keyed_series *ks, int key,
                                   struct lv_metric_family *fam,
                                   const char *(*label_of)(int key, char *buf, size_t n))
{
    uint32_t n = atomic_load_explicit(&ks->n, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++)
        if (keyed_at(ks, i)->key == key)
            return keyed_at(ks, i)->m;
    lv_route_state_lock(rs);
    uint32_t now_n = atomic_load_explicit(&ks->n, memory_order_relaxed);
    for (uint32_t i = n; i < now_n; i++)
        if (keyed_at(ks, i)->key == key) {
            lv_route_state_unlock(rs);
            return keyed_at(ks, i)->m;
        }
    assert(now_n < LV_KEYED_CHUNK * LV_KEYED_CHUNKS); /* 500 codes + 8 kinds fit */
    if (!ks->chunk[now_n / LV_KEYED_CHUNK])
        ks->chunk[now_n / LV_KEYED_CHUNK] =
            lv_xcalloc(LV_KEYED_CHUNK, sizeof(struct lv_keyed_metric));
    char buf[16];
    const char *labels[] = {rs->name, label_of(key, buf, sizeof(buf)), NULL};
    struct lv_keyed_metric *e = keyed_at(ks, now_n);
    e->key = key;
    e->m = lv_metric_series(fam, labels);
    atomic_store_explicit(&ks->n, now_n + 1, memory_order_release);
    lv_route_state_unlock(rs);
    return e->m;
}

static void keyed_free(struct lv_keyed_series *ks)
{
    for (size_t c = 0; c < LV_KEYED_CHUNKS; c++)
        free(ks->chunk[c]);
}

/* ---- the registry, by name */

static uint64_t name_hash(const char *s)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static void table_insert(struct lv_route_states *reg, struct lv_route_state *rs)
{
    size_t mask = reg->cap - 1, i = (size_t)name_hash(rs->name) & mask;
    while (reg->table[i])
        i = (i + 1) & mask;
    reg->table[i] = rs;
}

/* Rebuilt after a growth or a removal (removals come from reloads, not from requests). */
static void table_rebuild(struct lv_route_states *reg, size_t cap)
{
    free(reg->table);
    reg->table = lv_xcalloc(cap, sizeof(*reg->table));
    reg->cap = cap;
    for (size_t i = 0; i < reg->n; i++)
        table_insert(reg, reg->all[i]);
}

void lv_route_states_init(struct lv_route_states *reg)
{
    memset(reg, 0, sizeof(*reg));
    pthread_mutex_init(&reg->lock, NULL);
}

struct lv_route_state *lv_route_states_get(struct lv_route_states *reg, const char *name)
{
    pthread_mutex_lock(&reg->lock);
    if (reg->cap) {
        size_t mask = reg->cap - 1;
        for (size_t i = (size_t)name_hash(name) & mask; reg->table[i]; i = (i + 1) & mask)
            if (strcmp(reg->table[i]->name, name) == 0) {
                struct lv_route_state *found = reg->table[i];
                pthread_mutex_unlock(&reg->lock);
                return found;
            }
    }
    struct lv_route_state *rs = lv_xcalloc(1, sizeof(*rs));
    pthread_mutex_init(&rs->lock, NULL);
    lv_admission_init(&rs->adm);
    rs->name = lv_xstrdup(name);
    const char *lv[] = {name, NULL};
    rs->duration = lv_metric_series(reg->fam.duration, lv);
    rs->retries = lv_metric_series(reg->fam.retries, lv);
    rs->budget_exhausted = lv_metric_series(reg->fam.budget_exhausted, lv);
    reg->all = lv_xrealloc(reg->all, (reg->n + 1) * sizeof(*reg->all));
    reg->all[reg->n++] = rs;
    if (reg->n * 2 > reg->cap)
        table_rebuild(reg, reg->cap ? reg->cap * 2 : 16);
    else
        table_insert(reg, rs);
    pthread_mutex_unlock(&reg->lock);
    return rs;
}

static void state_free(struct lv_route_states *reg, size_t i)
{
    struct lv_route_state *rs = reg->all[i];
    reg->all[i] = reg->all[--reg->n];
    table_rebuild(reg, reg->cap);
    /* Its series leave /metrics (they come back, with their values, if the name returns). */
    const struct lv_route_families *f = &reg->fam;
    struct lv_metric_family *fams[] = {
        f->requests,        f->duration,          f->retries,      f->budget_exhausted,
        f->attempts,        f->breaker_state,     f->fallbacks,    f->breaker_rejected,
        f->hook_errors,     f->idem_replays,      f->idem_stored,  f->idem_conflicts,
        f->idem_mismatches, f->idem_store_errors, f->idem_entries, f->retry_decisions,
        f->faults};
    for (size_t k = 0; k < sizeof(fams) / sizeof(fams[0]); k++)
        lv_metric_family_remove(fams[k], "route", rs->name);
    lv_idem_unref(rs->idem); /* its own reference; generations that named it hold theirs */
    keyed_free(&rs->by_code);
    keyed_free(&rs->attempts);
    keyed_free(&rs->decisions);
    keyed_free(&rs->faults);
    lv_admission_dispose(&rs->adm, &reg->fam.adm, rs->name);
    free(rs->idem_sig);
    free(rs->name);
    pthread_mutex_destroy(&rs->lock);
    free(rs);
}

void lv_route_states_begin_install(struct lv_route_states *reg)
{
    pthread_mutex_lock(&reg->lock);
    for (size_t i = 0; i < reg->n; i++)
        reg->all[i]->in_config = false;
    pthread_mutex_unlock(&reg->lock);
}

void lv_route_state_use(struct lv_route_states *reg, struct lv_route_state *rs)
{
    pthread_mutex_lock(&reg->lock);
    rs->users++;
    pthread_mutex_unlock(&reg->lock);
}

void lv_route_state_unuse(struct lv_route_states *reg, struct lv_route_state *rs)
{
    pthread_mutex_lock(&reg->lock);
    assert(rs->users > 0);
    if (--rs->users == 0 && !rs->in_config) {
        for (size_t i = 0; i < reg->n; i++) {
            if (reg->all[i] == rs) {
                state_free(reg, i);
                break;
            }
        }
    }
    pthread_mutex_unlock(&reg->lock);
}

/* ---- configuration */

struct lv_idem *lv_route_state_configure(struct lv_route_states *reg, struct lv_route_state *rs,
                                         const struct lv_route_cfg *r, uv_loop_t *loop)
{
    pthread_mutex_lock(&reg->lock);
    rs->in_config = true;
    pthread_mutex_unlock(&reg->lock);
    lv_route_state_lock(rs);
    uint64_t now = uv_now(loop);
    const struct lv_retry_cfg *rc = &r->retry;
    if (!rs->policy_ready)
        lv_budget_init(&rs->budget, rc->budget_ratio, rc->budget_min_per_second,
                       rc->budget_window_ms, now);
    else
        lv_budget_configure(&rs->budget, rc->budget_ratio, rc->budget_min_per_second,
                            rc->budget_window_ms, now);
    const struct lv_breaker_cfg *bc = &r->breaker;
    struct lv_breaker_params p = lv_breaker_cfg_params(bc);
    if (bc->enabled && (!rs->policy_ready || !lv_route_state_has_breaker(rs)))
        lv_breaker_init(&rs->breaker, &p, now);
    else if (bc->enabled)
        lv_breaker_configure(&rs->breaker, &p, now);
    atomic_store_explicit(&rs->breaker_enabled, bc->enabled, memory_order_release);
    rs->policy_ready = true;
    const char *lv[] = {rs->name, NULL};
    if (bc->enabled && !rs->breaker_rejected) {
        rs->fallbacks = lv_metric_series(reg->fam.fallbacks, lv);
        rs->breaker_rejected = lv_metric_series(reg->fam.breaker_rejected, lv);
    }

    /* The idempotency store lives as long as its settings: a reload that keeps them keeps the
     * keys (and the locks of requests in flight). */
    const struct lv_idem_cfg *ic = &r->idempotency;
    struct lv_idem *replaced = NULL;
    char sig[512] = "";
    if (ic->enabled) {
        if (ic->store == LV_IDEM_STORE_REDIS)
            snprintf(sig, sizeof(sig), "redis %s:%u %s", ic->redis.host, ic->redis.port,
                     ic->redis_prefix ? ic->redis_prefix : "levee:");
        else
            snprintf(sig, sizeof(sig), "memory %zu", ic->max_memory);
    }
    if (rs->idem && (!ic->enabled || !rs->idem_sig || strcmp(rs->idem_sig, sig) != 0)) {
        replaced = rs->idem;
        rs->idem = NULL;
    }
    if (ic->enabled && !rs->idem) {
        if (ic->store == LV_IDEM_STORE_REDIS) {
            char prefix[300];
            /* keys are namespaced by route: one key means one thing per route */
            snprintf(prefix, sizeof(prefix),
                     "%s%s:", ic->redis_prefix ? ic->redis_prefix : "levee:", rs->name);
            rs->idem = lv_idem_redis_create(loop, ic->redis.host, ic->redis.port, prefix, NULL);
        } else {
            rs->idem = lv_idem_memory_create(loop, ic->max_memory);
        }
        rs->idem_version++;
    }
    if (ic->enabled && !rs->idem_stored) {
        rs->idem_replays = lv_metric_series(reg->fam.idem_replays, lv);
        rs->idem_stored = lv_metric_series(reg->fam.idem_stored, lv);
        rs->idem_conflicts = lv_metric_series(reg->fam.idem_conflicts, lv);
        rs->idem_mismatches = lv_metric_series(reg->fam.idem_mismatches, lv);
        rs->idem_store_errors = lv_metric_series(reg->fam.idem_store_errors, lv);
    }
    free(rs->idem_sig);
    rs->idem_sig = lv_xstrdup(sig);
    lv_route_state_unlock(rs);
    lv_admission_configure(&rs->adm, r, &reg->fam.adm, rs->name);
    return replaced;
}

/* ---- counting */

void lv_route_state_count_request(struct lv_route_states *reg, struct lv_route_state *rs,
                                  int status, double seconds)
{
    if (status >= 100 && status <= 599)
        lv_metric_add(keyed_get(rs, &rs->by_code, status, reg->fam.requests, status_or_outcome), 1);
    lv_metric_observe(rs->duration, seconds);
}

void lv_route_state_count_attempt(struct lv_route_states *reg, struct lv_route_state *rs, int kind,
                                  int status)
{
    int key;
    if (kind == LV_OUT_STATUS) {
        if (status < 100 || status > 599)
            return;
        key = status;
    } else {
        if (kind < 0 || kind >= 8)
            return;
        key = -1 - kind;
    }
    lv_metric_add(keyed_get(rs, &rs->attempts, key, reg->fam.attempts, status_or_outcome), 1);
}

static const char *fault_kind_name(int key, char *buf, size_t n)
{
    (void)buf, (void)n;
    return lv_fault_kind_name((enum lv_fault_kind)key);
}

void lv_route_state_count_fault(struct lv_route_states *reg, struct lv_route_state *rs, int kind)
{
    lv_metric_add(keyed_get(rs, &rs->faults, kind, reg->fam.faults, fault_kind_name), 1);
}

void lv_route_state_count_decision(struct lv_route_states *reg, struct lv_route_state *rs,
                                   enum lv_retry_stop stop)
{
    lv_metric_add(keyed_get(rs, &rs->decisions, (int)stop, reg->fam.retry_decisions, decision_name),
                  1);
}

uint64_t lv_route_state_requests(const struct lv_route_state *rs)
{
    return (uint64_t)lv_metric_value(rs->duration);
}

void lv_route_state_by_class(struct lv_route_state *rs, uint64_t out[6])
{
    memset(out, 0, 6 * sizeof(out[0]));
    uint32_t n = atomic_load_explicit(&rs->by_code.n, memory_order_acquire);
    for (uint32_t i = 0; i < n; i++)
        out[keyed_at(&rs->by_code, i)->key / 100] +=
            (uint64_t)lv_metric_value(keyed_at(&rs->by_code, i)->m);
}

bool lv_route_state_hook_failed(struct lv_route_states *reg, struct lv_route_state *rs, int which,
                                const char *hook, int kind, const char *kind_name, uint64_t now)
{
    lv_route_state_lock(rs);
    /* Series per kind appear on the first failure of that kind: a route whose hooks never
     * fail adds no lines to /metrics. */
    struct lv_metric **m = &rs->hook_errors[which][kind];
    if (!*m) {
        const char *lbl[] = {rs->name, hook, kind_name, NULL};
        *m = lv_metric_series(reg->fam.hook_errors, lbl);
    }
    struct lv_metric *series = *m;
    bool log = now - rs->hook_log_at >= 1000 || rs->hook_log_at == 0;
    if (log)
        rs->hook_log_at = now;
    lv_route_state_unlock(rs);
    lv_metric_add(series, 1);
    return log;
}

/* ---- render time */

void lv_route_state_publish(struct lv_route_states *reg, struct lv_route_state *rs, uint64_t now)
{
    const struct lv_route_families *f = &reg->fam;
    const char *lv[] = {rs->name, NULL};
    /* Breaker and idempotency series only for routes that have them (README "Metrics"):
     * lv_metric_series() shows them again, with their counts, when a reload turns one on. */
    lv_route_state_lock(rs);
    struct lv_metric_family *bf[] = {f->breaker_state, f->breaker_rejected, f->fallbacks};
    for (size_t k = 0; k < sizeof(bf) / sizeof(bf[0]); k++)
        if (lv_route_state_has_breaker(rs))
            lv_metric_series(bf[k], lv);
        else
            lv_metric_family_remove(bf[k], "route", rs->name);
    if (lv_route_state_has_breaker(rs)) {
        struct lv_breaker_stats st = {0};
        lv_breaker_stats(&rs->breaker, now, &st);
        lv_metric_set(lv_metric_series(f->breaker_state, lv), (double)st.state);
    }
    struct lv_metric_family *idf[] = {f->idem_replays,    f->idem_stored,       f->idem_conflicts,
                                      f->idem_mismatches, f->idem_store_errors, f->idem_entries};
    for (size_t k = 0; k < sizeof(idf) / sizeof(idf[0]); k++)
        if (rs->idem)
            lv_metric_series(idf[k], lv);
        else
            lv_metric_family_remove(idf[k], "route", rs->name);
    if (rs->idem) {
        struct lv_idem_stats is;
        lv_idem_stats(rs->idem, &is);
        lv_metric_set(lv_metric_series(f->idem_entries, lv), (double)is.entries);
    }
    lv_route_state_unlock(rs);
    lv_admission_publish(&rs->adm, &reg->fam.adm, rs->name);
}

/* ---- teardown */

void lv_route_states_close_stores(struct lv_route_states *reg)
{
    for (size_t i = 0; i < reg->n; i++) {
        if (reg->all[i]->idem) {
            lv_idem_destroy(reg->all[i]->idem);
            reg->all[i]->idem = NULL;
        }
    }
}

void lv_route_states_dispose(struct lv_route_states *reg)
{
    for (size_t i = 0; i < reg->n; i++) {
        struct lv_route_state *rs = reg->all[i];
        keyed_free(&rs->by_code);
        keyed_free(&rs->attempts);
        keyed_free(&rs->decisions);
        keyed_free(&rs->faults);
        lv_admission_dispose(&rs->adm, &reg->fam.adm, rs->name);
        free(rs->idem_sig);
        free(rs->name);
        pthread_mutex_destroy(&rs->lock);
        free(rs);
    }
    free(reg->all);
    free(reg->table);
    pthread_mutex_destroy(&reg->lock);
    *reg = (struct lv_route_states){0};
}
