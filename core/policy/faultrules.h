/*
 * faultrules: the faults a test suite adds and removes at run time through the admin API
 * (README "levee dev", "Scripted faults"), as it would drive Toxiproxy. A rule names a route,
 * the faults it injects, how many more times it fires (`times`) and how often (`percent`), and
 * optionally a method and a path prefix a request must have. Rules are the process's: every
 * worker draws from the same table under its lock, so `times = 2` fires exactly twice, and a
 * rule outlives reloads (a rule for a route that is gone matches nothing).
 *
 * The request path asks only when the table is not empty (one atomic load otherwise).
 */
#ifndef LV_POLICY_FAULTRULES_H
#define LV_POLICY_FAULTRULES_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "policy/fault.h"

struct lv_fault_rule {
    uint64_t id;        /* given by lv_fault_rules_add */
    char *route;        /* the route's name */
    struct lv_faults f; /* the kinds it injects (their percents are ignored: see `percent`) */
    double percent;     /* share of matching attempts it fires on, 0..100 */
    int64_t times;      /* fires left; -1: no limit */
    uint64_t injected;  /* times it fired */
    int method;         /* -1: any */
    char *prefix;       /* path prefix, NULL: any */
    bool at_client;     /* the client gets it (once per request) instead of an attempt */
};

struct lv_fault_rules {
    pthread_mutex_t lock;
    atomic_size_t n; /* rules in the table, read without the lock */
    struct lv_fault_rule *v;
    size_t cap;
    uint64_t next_id;
};

void lv_fault_rules_init(struct lv_fault_rules *t);
void lv_fault_rules_dispose(struct lv_fault_rules *t);

/** Adds a copy of `r` (its strings copied, its id and `injected` ignored); returns the id. */
uint64_t lv_fault_rules_add(struct lv_fault_rules *t, const struct lv_fault_rule *r);
/** Removes rule `id`; false when there is none. */
bool lv_fault_rules_remove(struct lv_fault_rules *t, uint64_t id);
/** Removes every rule; returns how many there were. */
size_t lv_fault_rules_clear(struct lv_fault_rules *t);

/**
 * One draw for an attempt (`at_client` false) or a request (true) of route `route`, method
 * `method`, path `path`: each matching rule of that placement fires with its percent (`rnd`
 * gives 64 random bits), adds its faults to `hit` (kinds already there stay), and uses up one
 * of its `times`; a rule with none left is removed. Returns the number of rules that fired.
 */
unsigned lv_fault_rules_draw(struct lv_fault_rules *t, const char *route, int method,
                             const char *path, size_t path_len, bool at_client,
                             uint64_t (*rnd)(void *), void *arg, struct lv_fault_hit *hit);

/** Calls `each` for every rule, in the order they were added, under the table's lock (so
 *  `each` must not call back into the table). */
void lv_fault_rules_each(struct lv_fault_rules *t,
                         void (*each)(const struct lv_fault_rule *r, void *arg), void *arg);

static inline bool lv_fault_rules_empty(struct lv_fault_rules *t)
{
    return atomic_load_explicit(&t->n, memory_order_relaxed) == 0;
}

#endif
