#include "proxy/server.h"
#include "store/ratelimit_redis.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lua.h>
#include <openssl/crypto.h>

#include "base/inbox.h"
#include "base/log.h"
#include "net/upstream.h"
#include "obs/process.h"
#include "policy/outcome.h"
#include "proxy/generation.h"

static const char *const L_ROUTE_CODE[] = {"route", "code", NULL};
static const char *const L_ROUTE[] = {"route", NULL};
static const char *const L_RESULT[] = {"result", NULL};
static const char *const L_UPCONN[] = {"upstream", "state", NULL};
static const char *const L_CODE[] = {"code", NULL};
static const char *const L_ROUTE_OUTCOME[] = {"route", "outcome", NULL};
static const char *const L_ROUTE_DECISION[] = {"route", "decision", NULL};
static const char *const L_ROUTE_KIND[] = {"route", "kind", NULL};
static const char *const L_ROUTE_MODE[] = {"route", "mode", NULL};
static const char *const L_ROUTE_HOOK[] = {"route", "hook", "kind", NULL};
static const char *const L_UPSTREAM[] = {"upstream", NULL};
static const char *const L_UP_SERVER[] = {"upstream", "server", NULL};
static const char *const L_UP_SERVER_ENFORCED[] = {"upstream", "server", "enforced", NULL};
static const char *const L_UP_SERVER_RESULT[] = {"upstream", "server", "result", NULL};
static const char *const L_ROUTE_DIRECTION[] = {"route", "direction", NULL};

/* ---- generations and what they name (proxy/generation.h: one lifetime rule) */

static void upstream_closed(struct lv_upstream *up)
{
    lv_upstream_free(up);
}

/* A server changed state (README, "Upstream health"): one warn line per change. */
static void on_health_event(struct lv_upstream *up, const struct lv_health_event *ev)
{
    if (ev->kind == LV_HEALTH_EV_NOT_EJECTED && up->nservers == 1)
        return; /* one server is never ejected: nothing to tell */
    if (ev->server < 0)
        lv_log_change(LV_LOG_WARN, "upstream %s: %s", up->name, ev->reason);
    else
        lv_log_change(LV_LOG_WARN, "upstream %s server %s %s", up->name,
                      up->servers[ev->server].name, ev->reason);
}

/* The health group every worker's new runtime upstream for `uc` shares (README "Workers"):
 * the first worker to build generation `gen` makes it, with the state of the servers it keeps
 * carried over from `old` (its previous upstream of that name, or NULL); the others find it. */
struct lv_health_registry {
    pthread_mutex_t lock;
    struct health_entry {
        char *name;
        uint64_t gen;
        struct lv_upstream_health *h; /* one reference */
    } * v;
    size_t n;
};

static struct lv_upstream_health *shared_health(struct lv_server *s,
                                                const struct lv_upstream_cfg *uc, uint64_t gen,
                                                const struct lv_upstream *old)
{
    struct lv_health_registry *reg = s->sh->health;
    pthread_mutex_lock(&reg->lock);
    struct lv_upstream_health *h = NULL;
    for (size_t k = 0; k < reg->n && !h; k++)
        if (reg->v[k].gen == gen && strcmp(reg->v[k].name, uc->name) == 0)
            h = reg->v[k].h;
    if (!h) {
        h = lv_upstream_health_new(uc);
        if (old) {
            /* Servers it keeps keep their health and ejection state; new ones start up. */
            pthread_mutex_lock(&old->health->lock);
            for (size_t i = 0; i < uc->nservers; i++) {
                for (size_t j = 0; j < old->nservers; j++)
                    if (old->servers[j].hp.port == uc->servers[i].port &&
                        strcmp(old->servers[j].hp.host, uc->servers[i].host) == 0) {
                        lv_health_carry(&h->g, i, &old->health->g, j);
                        break;
                    }
            }
            pthread_mutex_unlock(&old->health->lock);
            lv_upstream_health_sync(h); /* no other thread has it yet */
        }
        reg->v = lv_xrealloc(reg->v, (reg->n + 1) * sizeof(*reg->v));
        reg->v[reg->n++] = (struct health_entry){lv_xstrdup(uc->name), gen, h};
    }
    pthread_mutex_unlock(&reg->lock);
    return h;
}

/* Forgets the groups made for generations before `gen` (every worker has built those). */
static void health_registry_forget(struct lv_health_registry *reg, uint64_t gen)
{
    pthread_mutex_lock(&reg->lock);
    size_t keep = 0;
    for (size_t k = 0; k < reg->n; k++) {
        if (reg->v[k].gen >= gen) {
            reg->v[keep++] = reg->v[k];
        } else {
            lv_upstream_health_unref(reg->v[k].h);
            free(reg->v[k].name);
        }
    }
    reg->n = keep;
    pthread_mutex_unlock(&reg->lock);
}

/* A reload replaced `up` (its server list changed): what the last check of a server it keeps
 * said is kept too. */
static void carry_health(struct lv_upstream *up, const struct lv_upstream *old)
{
    for (size_t i = 0; i < up->nservers; i++)
        for (size_t j = 0; j < old->nservers; j++)
            if (strcmp(up->servers[i].name, old->servers[j].name) == 0) {
                memcpy(up->servers[i].last_check, old->servers[j].last_check,
                       sizeof(up->servers[i].last_check));
                up->servers[i].last_check_ok = old->servers[j].last_check_ok;
                up->servers[i].last_check_ms = old->servers[j].last_check_ms;
                up->servers[i].last_check_unix = old->servers[j].last_check_unix;
                break;
            }
}

/* An upstream's reference count is `users`: the generations that name it (a request holds it
 * through its pinned generation). It is destroyed with the last. */
static void upstream_ref(struct lv_upstream *up)
{
    up->users++;
}

static void upstream_unref(struct lv_upstream *up)
{
    assert(up->users > 0);
    if (--up->users == 0)
        lv_upstream_destroy(up);
}

/* Fills g->upstreams: the runtime upstreams of the generation in force whose servers are
 * unchanged are kept (their pools survive); the others are new, with the health of the servers
 * they keep. An upstream the new generation does not keep is retired: it serves the requests
 * that hold it and pools nothing; it goes with the last generation naming it. */
static void generation_take_upstreams(struct lv_server *s, struct lv_generation *g)
{
    const struct lv_config *cfg = g->cfg;
    struct lv_upstream **cur = s->gen ? s->gen->upstreams : NULL;
    size_t ncur = s->gen ? s->gen->cfg->nupstreams : 0;
    bool *kept = lv_xcalloc(ncur + 1, sizeof(*kept));
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct lv_upstream_cfg *uc = &cfg->upstreams[i];
        struct lv_upstream *up = NULL;
        for (size_t j = 0; j < ncur && !up; j++) {
            if (!kept[j] && strcmp(cur[j]->name, uc->name) == 0 &&
                lv_upstream_same_servers(cur[j], uc)) {
                kept[j] = true;
                up = cur[j];
                lv_upstream_update(up, uc);
            }
        }
        if (!up) {
            const struct lv_upstream *old = NULL;
            for (size_t j = 0; j < ncur && !old; j++)
                if (!kept[j] && strcmp(cur[j]->name, uc->name) == 0)
                    old = cur[j];
            struct lv_upstream_health *h = shared_health(s, uc, g->number, old);
            /* Active checks run once per server: in the first worker (README "Workers"). */
            up = lv_upstream_create(s->loop, uc, h, s->worker == 0);
            if (old)
                carry_health(up, old);
            up->on_closed = upstream_closed;
            up->on_health_event = on_health_event;
            up->owner = s;
        }
        upstream_ref(up);
        g->upstreams[i] = up;
    }
    for (size_t j = 0; j < ncur; j++)
        if (!kept[j])
            lv_upstream_retire(cur[j]);
    free(kept);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        size_t u = (size_t)(cfg->routes[i].upstream - cfg->upstreams);
        assert(u < cfg->nupstreams);
        g->route_upstreams[i] = g->upstreams[u];
    }
}

void lv_server_route_use(struct lv_server *s, struct lv_route_state *rs)
{
    lv_route_state_use(s->routes, rs);
}

void lv_server_route_unuse(struct lv_server *s, struct lv_route_state *rs)
{
    lv_route_state_unuse(s->routes, rs);
}

struct lv_route_state *lv_server_route_state(struct lv_server *s, const char *name)
{
    return lv_route_states_get(s->routes, name);
}

void lv_server_count_fault(struct lv_server *s, struct lv_route_state *rs, int kind)
{
    lv_route_state_count_fault(s->routes, rs, kind);
}

void lv_server_count_attempt(struct lv_server *s, struct lv_route_state *rs, int kind, int status)
{
    lv_route_state_count_attempt(s->routes, rs, kind, status);
}

void lv_server_count_request(struct lv_server *s, struct lv_route_state *rs, int status,
                             double seconds)
{
    s->requests++;
    if (rs)
        lv_route_state_count_request(s->routes, rs, status, seconds);
}

/* The idempotency store this worker uses for route `i` of `g`: one reference, taken when the
 * generation is built and given back when it goes (a request keeps the store it began with by
 * pinning its generation). The first worker uses the route state's store itself; the others
 * their own access to it (README "Workers"): a remote store forwarding to the memory store on
 * the first worker's loop, or a Redis connection of their own. It is kept from the previous
 * generation while the route state's store is the same one. */
static void owner_unref(void *store)
{
    lv_idem_unref(store);
}

/* `owner_ref` (maybe NULL): a reference to the route's memory store, taken on the first
 * worker's loop for this worker; used for a new remote store, else given back there. */
static struct lv_idem *generation_take_store(struct lv_server *s, struct lv_generation *g, size_t i,
                                             struct lv_route_state *rs, struct lv_idem *owner_ref)
{
    lv_route_state_lock(rs);
    struct lv_idem *owner = rs->idem;
    uint64_t version = rs->idem_version;
    lv_route_state_unlock(rs);
    g->route_store_versions[i] = version;
    struct lv_idem *store = NULL;
    const struct lv_idem_cfg *ic = &g->cfg->routes[i].idempotency;
    struct lv_generation *prev = s->gen;
    if (!owner) {
        store = NULL;
    } else if (s->worker == 0) {
        store = lv_idem_ref(owner);
    } else {
        for (size_t j = 0; prev && j < prev->cfg->nroutes && !store; j++)
            if (prev->route_states[j] == rs && prev->route_stores[j] &&
                prev->route_store_versions[j] == version)
                store = lv_idem_ref(prev->route_stores[j]);
        if (!store && ic->store == LV_IDEM_STORE_REDIS) {
            char prefix[300];
            snprintf(prefix, sizeof(prefix),
                     "%s%s:", ic->redis_prefix ? ic->redis_prefix : "levee:", rs->name);
            store = lv_idem_redis_create(s->loop, ic->redis.host, ic->redis.port, prefix, NULL);
        } else if (!store && owner_ref) {
            store = lv_idem_remote_create(s->loop, s->sh->inboxes[s->worker], owner_ref,
                                          s->sh->inboxes[0]);
            owner_ref = NULL; /* taken over */
        }
    }
    if (owner_ref)
        lv_inbox_call(s->sh->inboxes[0], owner_unref, owner_ref);
    return store;
}

struct lv_idem **lv_server_owner_refs(struct lv_server_shared *sh, const struct lv_config *cfg)
{
    struct lv_idem **refs = lv_xcalloc(cfg->nroutes + 1, sizeof(*refs));
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct lv_idem_cfg *ic = &cfg->routes[i].idempotency;
        if (!ic->enabled || ic->store == LV_IDEM_STORE_REDIS)
            continue;
        struct lv_route_state *rs = lv_route_states_get(&sh->routes, cfg->routes[i].name);
        lv_route_state_lock(rs);
        if (rs->idem)
            refs[i] = lv_idem_ref(rs->idem);
        lv_route_state_unlock(rs);
    }
    return refs;
}

static void generation_release_store(struct lv_idem *store)
{
    lv_idem_unref(store); /* the last reference closes it (store/idem.h) */
}

/* An upstream that outlives `g` may still read its configuration through up->cfg, which a
 * reload repoints to the newest generation naming it: point it at another live generation's. */
static void upstream_rebind(struct lv_server *s, struct lv_upstream *up,
                            const struct lv_config *gone)
{
    if (up->cfg < gone->upstreams || up->cfg >= gone->upstreams + gone->nupstreams)
        return;
    for (size_t k = s->nlive; k-- > 0;) {
        struct lv_generation *o = s->live[k];
        for (size_t i = 0; i < o->cfg->nupstreams; i++)
            if (o->upstreams[i] == up) {
                up->cfg = &o->cfg->upstreams[i];
                return;
            }
    }
    /* none: a request that pinned the configuration itself still holds it */
}

/* The last pin on `g` went: it lets go of everything it names. */
static void generation_release(void *owner, struct lv_generation *g)
{
    struct lv_server *s = owner;
    for (size_t k = 0; k < s->nlive; k++)
        if (s->live[k] == g) {
            memmove(&s->live[k], &s->live[k + 1], (s->nlive - k - 1) * sizeof(*s->live));
            s->nlive--;
            break;
        }
    for (size_t i = 0; i < g->cfg->nroutes; i++) {
        generation_release_store(g->route_stores[i]);
        lv_server_route_unuse(s, g->route_states[i]);
    }
    for (size_t i = 0; i < g->cfg->nupstreams; i++) {
        struct lv_upstream *up = g->upstreams[i];
        if (up->users > 1)
            upstream_rebind(s, up, g->cfg);
        upstream_unref(up);
    }
}

/* A generation for `cfg` (takes its reference): references to the upstreams and the route
 * states (by route name: they carry over from older generations, and lv_server_shared_configure
 * gave them this configuration's settings) it names. */
static struct lv_generation *generation_build(struct lv_server *s, struct lv_config *cfg,
                                              struct lv_idem **owner_refs)
{
    struct lv_generation *g = lv_generation_new(cfg, generation_release, s);
    generation_take_upstreams(s, g);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct lv_route_state *rs = lv_server_route_state(s, cfg->routes[i].name);
        lv_server_route_use(s, rs);
        g->route_states[i] = rs;
        g->route_stores[i] = generation_take_store(s, g, i, rs, owner_refs ? owner_refs[i] : NULL);
    }
    s->live = lv_xrealloc(s->live, (s->nlive + 1) * sizeof(*s->live));
    s->live[s->nlive++] = g;
    return g;
}

/* ---- metrics computed at render time */

/* Each worker sets its own shard of a gauge (obs/metrics.h), so a scrape reads their sum:
 * per-worker values (connections, pools, bytes) from every worker, the shared ones (generation,
 * breakers, health) from the first worker only. */
void lv_server_publish(struct lv_server *s)
{
    bool first = s->worker == 0;
    if (first)
        lv_metric_set(lv_metric_series(s->m_generation, NULL), (double)s->generation);
    lv_metric_set_own(lv_metric_series(s->m_clients, NULL), (double)s->nclients);
    if (!s->gen)
        return;
    uint64_t now = uv_now(s->loop);
    for (size_t i = 0; first && i < s->cfg->nroutes; i++)
        lv_route_state_publish(s->routes, lv_generation_route_state(s->gen, i), now);
    for (size_t i = 0; i < s->cfg->nupstreams; i++) {
        struct lv_upstream *up = s->gen->upstreams[i];
        uint32_t active, idle;
        lv_upstream_counts(up, &active, &idle);
        const char *la[] = {up->name, "active", NULL};
        const char *li[] = {up->name, "idle", NULL};
        lv_metric_set_own(lv_metric_series(s->m_upconns, la), active);
        lv_metric_set_own(lv_metric_series(s->m_upconns, li), idle);
        const char *lu[] = {up->name, NULL};
        lv_metric_set_own(lv_metric_series(s->m_panics, lu), (double)up->panic_picks);
        for (size_t k = 0; k < up->nservers; k++) {
            const char *ls[] = {up->name, up->servers[k].name, NULL};
            lv_metric_set_own(lv_metric_series(s->m_up_sent, ls),
                              (double)up->servers[k].sent_bytes);
            lv_metric_set_own(lv_metric_series(s->m_up_received, ls),
                              (double)up->servers[k].received_bytes);
        }
        if (!first)
            continue;
        lv_upstream_health_lock(up);
        for (size_t k = 0; k < up->nservers; k++) {
            const struct lv_server_health *hs = &up->health->g.servers[k];
            const char *ls[] = {up->name, up->servers[k].name, NULL};
            lv_metric_set(lv_metric_series(s->m_server_up, ls), lv_health_in(&up->health->g, k));
            const char *le[] = {up->name, up->servers[k].name, "true", NULL};
            const char *ld[] = {up->name, up->servers[k].name, "false", NULL};
            lv_metric_set(lv_metric_series(s->m_ejections, le), (double)hs->ejections_enforced);
            if (hs->ejections_dry)
                lv_metric_set(lv_metric_series(s->m_ejections, ld), (double)hs->ejections_dry);
            if (up->cfg->health.enabled) {
                const char *lok[] = {up->name, up->servers[k].name, "ok", NULL};
                const char *lf[] = {up->name, up->servers[k].name, "failed", NULL};
                lv_metric_set(lv_metric_series(s->m_health_checks, lok), (double)hs->checks_ok);
                lv_metric_set(lv_metric_series(s->m_health_checks, lf), (double)hs->checks_failed);
            }
        }
        lv_upstream_health_unlock(up);
    }
}

/* Registers the families on the shared registry (registering again returns the same family,
 * so every worker gets the same pointers); the first call also sets the route families. */
static void metrics_setup(struct lv_server *s)
{
    struct lv_metrics *m = s->metrics = s->sh->metrics;
    /* The per-route families live with the route states that fill them. */
    struct lv_route_families *f = &s->sh->routes.fam;
    f->requests =
        lv_metrics_family(m, "levee_requests_total", "Requests answered, by route and status.",
                          LV_METRIC_COUNTER, L_ROUTE_CODE, NULL, 0);
    f->duration = lv_metrics_family(m, "levee_request_duration_seconds",
                                    "Time from the request head to the last response byte.",
                                    LV_METRIC_HISTOGRAM, L_ROUTE, NULL, 0);
    f->retries = lv_metrics_family(m, "levee_retries_total", "Retries sent, by route.",
                                   LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->budget_exhausted =
        lv_metrics_family(m, "levee_retry_budget_exhausted_total",
                          "Retries refused because the route's retry budget was spent.",
                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->attempts = lv_metrics_family(m, "levee_upstream_attempts_total",
                                    "Upstream attempts, by route and outcome.", LV_METRIC_COUNTER,
                                    L_ROUTE_OUTCOME, NULL, 0);
    f->breaker_state = lv_metrics_family(m, "levee_breaker_state",
                                         "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                                         LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    f->fallbacks = lv_metrics_family(m, "levee_fallbacks_total",
                                     "Responses served by the route's fallback hook.",
                                     LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->breaker_rejected = lv_metrics_family(
        m, "levee_breaker_rejected_total",
        "Requests answered at once because the breaker was open (fallback or 503).",
        LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->hook_errors = lv_metrics_family(m, "levee_hook_errors_total",
                                       "Hook calls that failed and counted as no hook.",
                                       LV_METRIC_COUNTER, L_ROUTE_HOOK, NULL, 0);
    f->idem_replays = lv_metrics_family(m, "levee_idempotency_replays_total",
                                        "Stored responses replayed for a repeated key.",
                                        LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->idem_stored = lv_metrics_family(m, "levee_idempotency_stored_total",
                                       "Responses stored under an idempotency key.",
                                       LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->idem_conflicts = lv_metrics_family(m, "levee_idempotency_conflicts_total",
                                          "Requests whose key was in flight (409 or waited).",
                                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->idem_mismatches = lv_metrics_family(m, "levee_idempotency_mismatches_total",
                                           "Keys reused with a different request (422).",
                                           LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->idem_store_errors =
        lv_metrics_family(m, "levee_idempotency_store_errors_total",
                          "Store lookups that failed (store full or unavailable).",
                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    f->retry_decisions = lv_metrics_family(
        m, "levee_retry_decisions_total",
        "Retry decisions after an attempt, by route and decision: retry, or why not (success, "
        "verdict, attempts, budget, deadline, not-replayable, body-too-large, response-started, "
        "breaker-open).",
        LV_METRIC_COUNTER, L_ROUTE_DECISION, NULL, 0);
    struct lv_admission_families *af = &f->adm;
    af->limited = lv_metrics_family(m, "levee_rate_limited_total",
                                    "Requests over the route's rate limit, by mode: enforce "
                                    "(refused, 429) or shadow (counted and forwarded).",
                                    LV_METRIC_COUNTER, L_ROUTE_MODE, NULL, 0);
    af->store_errors =
        lv_metrics_family(m, "levee_rate_limit_store_errors_total",
                          "Rate-limit checks whose store failed (Redis down or slow, memory "
                          "store full of live keys); on_store_error decided.",
                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    af->rejected = lv_metrics_family(m, "levee_concurrency_rejected_total",
                                     "Requests refused by the route's bulkhead (503 "
                                     "concurrency-limit: queue full or queue timeout).",
                                     LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    af->queued = lv_metrics_family(m, "levee_concurrency_queued_total",
                                   "Requests that waited in the route's bulkhead queue.",
                                   LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    af->inflight = lv_metrics_family(m, "levee_route_inflight",
                                     "Requests of the route holding a bulkhead slot.",
                                     LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    af->limit = lv_metrics_family(m, "levee_route_concurrency_limit",
                                  "The route's bulkhead limit (fixed, or the adaptive one now).",
                                  LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    f->faults = lv_metrics_family(m, "levee_faults_injected_total",
                                  "Faults injected on purpose, by route and kind (abort, delay, "
                                  "reset, throttle): route fault tables, Levee-Fault headers and "
                                  "the admin API's rules.",
                                  LV_METRIC_COUNTER, L_ROUTE_KIND, NULL, 0);
    f->idem_entries =
        lv_metrics_family(m, "levee_idempotency_store_entries", "Keys held by the route's store.",
                          LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    s->m_reloads =
        lv_metrics_family(m, "levee_config_reloads_total", "Configuration reloads, by result.",
                          LV_METRIC_COUNTER, L_RESULT, NULL, 0);
    const char *ok[] = {"ok", NULL}, *err[] = {"error", NULL};
    s->m_reload_ok = lv_metric_series(s->m_reloads, ok);
    s->m_reload_err = lv_metric_series(s->m_reloads, err);
    s->m_generation = lv_metrics_family(m, "levee_config_generation",
                                        "Generation number of the configuration in force.",
                                        LV_METRIC_GAUGE, NULL, NULL, 0);
    s->m_clients = lv_metrics_family(m, "levee_client_connections", "Open client connections.",
                                     LV_METRIC_GAUGE, NULL, NULL, 0);
    s->m_upconns = lv_metrics_family(m, "levee_upstream_connections",
                                     "Upstream connections, by upstream and state (active, idle).",
                                     LV_METRIC_GAUGE, L_UPCONN, NULL, 0);
    s->m_server_up = lv_metrics_family(
        m, "levee_upstream_server_up",
        "1 when the server takes traffic (up or starting), 0 when down or ejected.",
        LV_METRIC_GAUGE, L_UP_SERVER, NULL, 0);
    s->m_ejections = lv_metrics_family(
        m, "levee_upstream_ejections_total",
        "Outlier ejections, by server; enforced=\"false\": detected with outlier.enforce = false.",
        LV_METRIC_COUNTER, L_UP_SERVER_ENFORCED, NULL, 0);
    s->m_health_checks = lv_metrics_family(m, "levee_health_checks_total",
                                           "Active health checks, by server and result.",
                                           LV_METRIC_COUNTER, L_UP_SERVER_RESULT, NULL, 0);
    s->m_panics = lv_metrics_family(m, "levee_upstream_panic_total",
                                    "Attempts sent while no server of the upstream was in.",
                                    LV_METRIC_COUNTER, L_UPSTREAM, NULL, 0);
    s->m_bad_requests = lv_metrics_family(m, "levee_bad_requests_total",
                                          "Requests refused before routing, by status.",
                                          LV_METRIC_COUNTER, L_CODE, NULL, 0);
    s->m_up_sent = lv_metrics_family(m, "levee_upstream_sent_bytes_total",
                                     "HTTP bytes (TLS excluded) sent to the server by requests.",
                                     LV_METRIC_COUNTER, L_UP_SERVER, NULL, 0);
    s->m_up_received =
        lv_metrics_family(m, "levee_upstream_received_bytes_total",
                          "HTTP bytes (TLS excluded) received from the server by requests.",
                          LV_METRIC_COUNTER, L_UP_SERVER, NULL, 0);
    s->m_attempt_duration =
        lv_metrics_family(m, "levee_upstream_attempt_duration_seconds",
                          "Time from an attempt's start to its response head or its failure.",
                          LV_METRIC_HISTOGRAM, L_UPSTREAM, NULL, 0);
    s->m_tunnels_active = lv_metrics_family(m, "levee_tunnels_active",
                                            "Open tunnels (upgraded connections, e.g. WebSocket).",
                                            LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    s->m_tunnels_total = lv_metrics_family(m, "levee_tunnels_total",
                                           "Tunnels opened (101 Switching Protocols passed on).",
                                           LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_tunnel_bytes = lv_metrics_family(
        m, "levee_tunnel_bytes_total",
        "Bytes carried by tunnels, by direction: upstream (client to upstream) or downstream.",
        LV_METRIC_COUNTER, L_ROUTE_DIRECTION, NULL, 0);
}

/* ---- access log */

static void flush_access_log(struct lv_server *s);

void lv_server_access_log(struct lv_server *s, const char *line, size_t len)
{
    if (!s->access_on)
        return;
    lv_buf_append(&s->access_buf, line, len);
    if (s->access_buf.len >= 64 * 1024)
        flush_access_log(s);
}

/* The buffer holds whole lines; one worker writes it at a time (README "Workers"). */
static void flush_access_log(struct lv_server *s)
{
    struct lv_server_shared *sh = s->sh;
    size_t off = 0;
    pthread_mutex_lock(&sh->access_lock);
    while (sh->access_fd >= 0 && off < s->access_buf.len) {
        ssize_t n = write(sh->access_fd, s->access_buf.data + off, s->access_buf.len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN or a broken pipe: drop rather than block the loop */
        }
        off += (size_t)n;
    }
    pthread_mutex_unlock(&sh->access_lock);
    s->access_buf.len = 0;
}

void lv_server_flush_access_log(struct lv_server *s)
{
    if (s->access_buf.len)
        flush_access_log(s);
}

int lv_server_shared_access_fd(struct lv_server_shared *sh, int fd)
{
    pthread_mutex_lock(&sh->access_lock);
    int old = sh->access_fd;
    sh->access_fd = fd;
    pthread_mutex_unlock(&sh->access_lock);
    return old;
}

static void on_flush_check(uv_check_t *h)
{
    struct lv_server *s = h->data;
    if (s->access_buf.len)
        flush_access_log(s);
}

static int log_file_open(const char *path)
{
    return open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
}

/* The access log's fd for `cfg` (-1: off), opened now; -2 when its file cannot be opened (the
 * reason appended to `errors`). */
static int access_log_open(struct lv_server *s, const struct lv_config *cfg, struct lv_buf *errors)
{
    switch (cfg->access_log) {
    case LV_ACCESS_LOG_OFF:
        return -1;
    case LV_ACCESS_LOG_STDOUT:
        return STDOUT_FILENO;
    case LV_ACCESS_LOG_STDERR:
        return STDERR_FILENO;
    case LV_ACCESS_LOG_FILE:
        break;
    }
    int fd = log_file_open(cfg->access_log_path);
    if (fd < 0) {
        lv_buf_printf(errors, "%s: access_log %s: %s\n", s->config_path ? s->config_path : "levee",
                      cfg->access_log_path, strerror(errno));
        return -2;
    }
    return fd;
}

void lv_server_reopen_logs(struct lv_server *s)
{
    if (s->access_buf.len)
        flush_access_log(s);
    if (s->cfg->access_log == LV_ACCESS_LOG_FILE) {
        int fd = log_file_open(s->cfg->access_log_path);
        if (fd < 0) {
            lv_error("SIGUSR1: access_log %s: %s (still writing to the old file)",
                     s->cfg->access_log_path, strerror(errno));
        } else {
            int old = lv_server_shared_access_fd(s->sh, fd);
            if (old > STDERR_FILENO)
                close(old);
        }
    }
    if (s->error_fd_owned && s->cfg->error_log_path) {
        int fd = log_file_open(s->cfg->error_log_path);
        if (fd < 0) {
            lv_error("SIGUSR1: error_log %s: %s (still writing to the old file)",
                     s->cfg->error_log_path, strerror(errno));
        } else {
            close(lv_log_set_fd(fd));
        }
    }
    lv_info("SIGUSR1: log files reopened");
}

/* ---- request ids */

void lv_server_request_id(struct lv_server *s, char out[33])
{
    static const char hex[] = "0123456789abcdef";
    for (int half = 0; half < 2; half++) {
        uint64_t x = s->rid_state += 0x9E3779B97F4A7C15ULL;
        x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ULL;
        x = (x ^ (x >> 27)) * 0x94D049BB133111EBULL;
        x ^= x >> 31;
        for (int i = 0; i < 16; i++)
            out[half * 16 + i] = hex[(x >> (i * 4)) & 15];
    }
    out[32] = '\0';
}

/* ---- log files, generations in force, lifecycle */

int lv_server_open_logs(struct lv_server *s, const struct lv_config *cfg, struct lv_log_files *lf,
                        struct lv_buf *errors)
{
    int rc = 0;
    int fd = access_log_open(s, cfg, errors);
    if (fd == -2)
        rc = UV_EIO;
    lf->access_fd = fd == -2 ? -1 : fd;
    lf->error_fd = -1;
    if (cfg->error_log_path) {
        lf->error_fd = log_file_open(cfg->error_log_path);
        if (lf->error_fd < 0) {
            lv_buf_printf(errors, "%s: error_log %s: %s\n",
                          s->config_path ? s->config_path : "levee", cfg->error_log_path,
                          strerror(errno));
            rc = UV_EIO;
        }
    }
    if (rc != 0)
        lv_server_close_logs(lf);
    return rc;
}

void lv_server_close_logs(struct lv_log_files *lf)
{
    if (lf->access_fd > STDERR_FILENO)
        close(lf->access_fd);
    if (lf->error_fd >= 0)
        close(lf->error_fd);
    lf->access_fd = lf->error_fd = -1;
}

/* The log files opened for the new configuration go in force; the old ones are closed (no
 * worker writes to them any more: the swaps happen under the writers' locks). */
void lv_server_commit_logs(struct lv_server *s, struct lv_log_files *lf)
{
    if (s->access_buf.len)
        flush_access_log(s);
    int old_access = lv_server_shared_access_fd(s->sh, lf->access_fd);
    if (old_access > STDERR_FILENO)
        close(old_access);
    int old = lv_log_set_fd(lf->error_fd);
    if (s->error_fd_owned)
        close(old);
    s->error_fd_owned = lf->error_fd >= 0;
}

void lv_server_shared_configure(struct lv_server_shared *sh, const struct lv_config *cfg,
                                uv_loop_t *loop)
{
    health_registry_forget(sh->health, cfg->generation);
    lv_route_states_begin_install(&sh->routes);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct lv_route_state *rs = lv_route_states_get(&sh->routes, cfg->routes[i].name);
        struct lv_idem *replaced = lv_route_state_configure(&sh->routes, rs, &cfg->routes[i], loop);
        lv_idem_unref(replaced); /* the route state's reference; generations keep theirs */
    }
    lv_tracing_configure(sh, cfg);
}

void lv_server_install_worker(struct lv_server *s, struct lv_config *cfg, uint64_t number,
                              bool access_on, struct lv_idem **owner_refs)
{
    s->generation = number;
    struct lv_generation *old = s->gen;
    s->gen = generation_build(s, cfg, owner_refs);
    free(owner_refs);
    s->cfg = cfg;
    if (s->access_on && !access_on && s->access_buf.len)
        flush_access_log(s);
    s->access_on = access_on;
    s->reload_at = (double)time(NULL);
    /* Requests that pinned it finish on it; what only it names goes with its last pin. */
    if (old)
        lv_generation_unpin(old);
}

void lv_server_install(struct lv_server *s, struct lv_config *cfg, struct lv_log_files *lf)
{
    cfg->generation = s->generation + 1;
    lv_server_shared_configure(s->sh, cfg, s->loop);
    lv_server_install_worker(s, cfg, cfg->generation, lf->access_fd >= 0, NULL);
    lv_server_commit_logs(s, lf);
}

struct lv_generation *lv_server_generation(struct lv_server *s)
{
    return s->gen;
}

struct lv_server_shared *lv_server_shared_new(unsigned nworkers)
{
    struct lv_server_shared *sh = lv_xcalloc(1, sizeof(*sh));
    sh->nworkers = nworkers;
    sh->inboxes = lv_xcalloc(nworkers, sizeof(*sh->inboxes));
    sh->servers = lv_xcalloc(nworkers, sizeof(*sh->servers));
    sh->conns = lv_xcalloc(nworkers, sizeof(*sh->conns));
    sh->incoming = lv_xcalloc(nworkers, sizeof(*sh->incoming));
    lv_route_states_init(&sh->routes);
    lv_fault_rules_init(&sh->faults);
    sh->health = lv_xcalloc(1, sizeof(*sh->health));
    pthread_mutex_init(&sh->health->lock, NULL);
    sh->metrics = lv_metrics_create_sharded(nworkers);
    pthread_mutex_init(&sh->access_lock, NULL);
    pthread_mutex_init(&sh->refused.lock, NULL);
    sh->access_fd = -1;
    struct lv_build_info bi = {
        .version = LEVEE_VERSION,
        .libuv = uv_version_string(),
        .openssl = OpenSSL_version(OPENSSL_VERSION_STRING),
        .lua = LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "." LUA_VERSION_RELEASE,
    };
    lv_process_metrics_register(sh->metrics, &bi);
    return sh;
}

void lv_server_shared_free(struct lv_server_shared *sh)
{
    if (!sh)
        return;
    lv_tracing_shutdown(sh); /* flushes the spans still queued */
    lv_route_states_dispose(&sh->routes);
    lv_fault_rules_dispose(&sh->faults);
    health_registry_forget(sh->health, UINT64_MAX);
    free(sh->health->v);
    pthread_mutex_destroy(&sh->health->lock);
    free(sh->health);
    if (sh->access_fd > STDERR_FILENO)
        close(sh->access_fd);
    pthread_mutex_destroy(&sh->access_lock);
    pthread_mutex_destroy(&sh->refused.lock);
    lv_metrics_destroy(sh->metrics);
    free(sh->inboxes);
    free(sh->servers);
    free(sh->conns);
    free(sh->incoming);
    free(sh);
}

void lv_server_init_worker(struct lv_server *s, uv_loop_t *loop, const char *config_path,
                           struct lv_server_shared *sh, unsigned index)
{
    s->loop = loop;
    s->sh = sh;
    s->worker = index;
    s->routes = &sh->routes;
    sh->servers[index] = s;
    lv_dlist_init(&s->clients);
    s->config_path = config_path ? lv_xstrdup(config_path) : NULL;
    s->rid_state = uv_hrtime() ^ ((uint64_t)getpid() << 32) ^ ((uint64_t)index << 56);
    metrics_setup(s);
    uv_check_init(loop, &s->flush_check);
    s->flush_check.data = s;
    uv_check_start(&s->flush_check, on_flush_check);
}

static void publish_at_render(struct lv_metrics *m, void *arg)
{
    (void)m;
    lv_server_publish(arg);
}

void lv_server_init(struct lv_server *s, uv_loop_t *loop, const char *config_path)
{
    struct lv_server_shared *sh = lv_server_shared_new(1);
    lv_server_init_worker(s, loop, config_path, sh, 0);
    s->owns_shared = true;
    /* One thread: a render may read the server directly. */
    lv_metrics_on_render(sh->metrics, publish_at_render, s);
}

void lv_server_tick(struct lv_server *s)
{
    for (size_t i = 0; s->gen && i < s->cfg->nupstreams; i++)
        lv_upstream_tick(s->gen->upstreams[i]);
    lv_log_flush_repeats(false);
}

void lv_server_client_closed(struct lv_server *s, struct lv_client *c)
{
    (void)c;
    if (s->on_client_closed)
        s->on_client_closed(s->on_client_closed_arg);
}

void lv_server_stop(struct lv_server *s)
{
    if (s->access_buf.len)
        flush_access_log(s);
    uv_check_stop(&s->flush_check);
    uv_close((uv_handle_t *)&s->flush_check, NULL);
    /* Every connection is closed: the generation in force is the last one alive. Its
     * upstreams go with it; route states stay (freed with the server). */
    if (s->gen) {
        struct lv_generation *g = s->gen;
        s->gen = NULL;
        lv_config_pin(g->cfg); /* s->cfg stays readable until lv_server_free */
        lv_generation_unpin(g);
    }
    assert(s->nlive == 0);
    for (size_t i = 0; i < s->nrate_redis; i++) {
        lv_rate_redis_close(s->rate_redis[i].store);
        free(s->rate_redis[i].sig);
    }
    free(s->rate_redis);
    s->rate_redis = NULL;
    s->nrate_redis = 0;
    if (s->worker == 0)
        lv_route_states_close_stores(s->routes); /* the first worker's loop holds them */
}

void lv_server_free(struct lv_server *s)
{
    assert(!s->gen); /* lv_server_stop ran */
    free(s->live);
    lv_buf_dispose(&s->access_buf);
    if (s->error_fd_owned) {
        int efd = lv_log_set_fd(-1); /* later lines go to stderr */
        close(efd);
    }
    if (s->cfg)
        lv_config_unpin(s->cfg);
    free(s->config_path);
    if (s->owns_shared)
        lv_server_shared_free(s->sh);
}
