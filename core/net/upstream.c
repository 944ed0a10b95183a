#include "net/upstream.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/addr.h"
#include "base/log.h"
#include "base/rand.h"
#include "net/healthcheck.h"
#include "net/tls.h"

static uint64_t rng_next(uint64_t *s)
{
    return lv_rand_next(s);
}

/* ---- resolution */

/* The first entry from `a` on of `family` (AF_UNSPEC: either IPv4 or IPv6). */
static struct addrinfo *next_of_family(struct addrinfo *a, int family)
{
    for (; a; a = a->ai_next)
        if (family == AF_UNSPEC ? a->ai_family == AF_INET || a->ai_family == AF_INET6
                                : a->ai_family == family)
            return a;
    return NULL;
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res)
{
    struct lv_upserver *s = req->data;
    struct lv_upstream *up = s->up;
    s->resolving = false;
    up->open_handles--;
    if (up->closing) {
        uv_freeaddrinfo(res);
        if (up->open_handles == 0 && up->on_closed)
            up->on_closed(up);
        return;
    }
    if (status < 0) {
        lv_warn("upstream %s: cannot resolve %s: %s", up->name, s->hp.host, uv_strerror(status));
    } else {
        int n = 0;
        for (struct addrinfo *a = res; a; a = a->ai_next)
            if (a->ai_family == AF_INET || a->ai_family == AF_INET6)
                n++;
        if (n > 0) {
            /* RFC 8305 §4: alternate the families, starting with the resolver's first one
             * (its preference), each in the resolver's order. Connect races go down this
             * list, so a family that does not work costs one Connection Attempt Delay
             * instead of one attempt per address of that family. */
            struct sockaddr_storage *addrs = lv_xcalloc((size_t)n, sizeof(*addrs));
            struct addrinfo *lead = next_of_family(res, AF_UNSPEC);
            int fam[2] = {lead->ai_family, lead->ai_family == AF_INET ? AF_INET6 : AF_INET};
            struct addrinfo *cur[2] = {next_of_family(res, fam[0]), next_of_family(res, fam[1])};
            int i = 0;
            for (int k = 0; cur[0] || cur[1]; k ^= 1) {
                struct addrinfo *a = cur[k];
                if (!a)
                    continue;
                cur[k] = next_of_family(a->ai_next, fam[k]);
                memcpy(&addrs[i], a->ai_addr, a->ai_addrlen);
                if (a->ai_family == AF_INET)
                    ((struct sockaddr_in *)&addrs[i])->sin_port = htons(s->hp.port);
                else
                    ((struct sockaddr_in6 *)&addrs[i])->sin6_port = htons(s->hp.port);
                i++;
            }
            free(s->addrs);
            s->addrs = addrs;
            s->naddrs = n;
        }
    }
    s->resolved_at = lv__upstream_now(up);
    uv_freeaddrinfo(res);
    lv__upstream_dispatch_waiters(up);
}

static void resolve(struct lv_upserver *s)
{
    struct lv_upstream *up = s->up;
    if (s->resolving || up->closing)
        return;
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    char port[8];
    snprintf(port, sizeof(port), "%u", s->hp.port);
    s->gai.data = s;
    if (uv_getaddrinfo(up->loop, &s->gai, on_resolved, s->hp.host, port, &hints) == 0) {
        s->resolving = true;
        up->open_handles++;
    }
}

static bool is_literal(const struct lv_upserver *s)
{
    struct sockaddr_storage ss;
    return lv_addr_from_ip(s->hp.host, s->hp.port, &ss) == 0;
}

/* ---- acquiring */

/* ---- picking a server (README, "Upstream health") */

static void health_events(struct lv_upstream *up, const struct lv_health_event *ev, int n);

size_t lv_upserver_index(const struct lv_upserver *s)
{
    assert(s >= s->up->servers && s < s->up->servers + s->up->nservers);
    return (size_t)(s - s->up->servers);
}

/* Can server i take this attempt? In (or panic: any), and not tried unless `tried_ok`. */
static bool candidate(const struct lv_upstream *up, size_t i, uint64_t tried, bool panic,
                      bool tried_ok)
{
    if (!panic && !lv_health_in(&up->health->g, i))
        return false;
    return tried_ok || i >= 64 || !(tried & ((uint64_t)1 << i));
}

/* A starting server takes its slow-start share: it is passed over with probability 1 - w. */
static bool takes_share(struct lv_upstream *up, size_t i, uint64_t now)
{
    double w = lv_health_weight(&up->health->g, i, now);
    if (w >= 1.0)
        return true;
    return (double)(rng_next(&up->rng) >> 11) * 0x1.0p-53 < w;
}

static struct lv_upserver *pick_rr(struct lv_upstream *up, size_t start, bool advance,
                                   uint64_t tried, bool panic, uint64_t now)
{
    size_t n = up->nservers;
    /* Two rounds: untried servers first, then (a retry with every server tried) any of them;
     * within a round a starting server may be passed over for its share, but never when it
     * is the only one. */
    for (int round = 0; round < 2; round++) {
        size_t first = SIZE_MAX;
        for (size_t k = 0; k < n; k++) {
            size_t i = (start + k) % n;
            if (!candidate(up, i, tried, panic, round == 1))
                continue;
            if (first == SIZE_MAX)
                first = i;
            if (panic || takes_share(up, i, now)) {
                if (advance)
                    up->rr = i + 1;
                return &up->servers[i];
            }
        }
        if (first != SIZE_MAX) {
            if (advance)
                up->rr = first + 1;
            return &up->servers[first];
        }
    }
    return &up->servers[start % n];
}

static struct lv_upserver *pick_p2c(struct lv_upstream *up, uint64_t tried, bool panic,
                                    uint64_t now)
{
    /* Power of two choices among the candidates: least in flight per unit of weight. */
    size_t n = up->nservers, idx[64], m = 0;
    for (int round = 0; round < 2 && m == 0; round++)
        for (size_t i = 0; i < n && m < 64; i++)
            if (candidate(up, i, tried, panic, round == 1))
                idx[m++] = i;
    if (m == 0)
        return &up->servers[rng_next(&up->rng) % n];
    if (m == 1)
        return &up->servers[idx[0]];
    size_t a = rng_next(&up->rng) % m;
    size_t b = rng_next(&up->rng) % (m - 1);
    if (b >= a)
        b++;
    struct lv_upserver *sa = &up->servers[idx[a]], *sb = &up->servers[idx[b]];
    double wa = panic ? 1.0 : lv_health_weight(&up->health->g, idx[a], now);
    double wb = panic ? 1.0 : lv_health_weight(&up->health->g, idx[b], now);
    return (double)(sb->inflight + 1) / wb < (double)(sa->inflight + 1) / wa ? sb : sa;
}

static struct lv_upserver *pick_server_locked(struct lv_upstream *up,
                                              const struct lv_upserver *last, uint64_t tried,
                                              bool fresh, bool *panic)
{
    size_t n = up->nservers;
    uint64_t now = lv__upstream_now(up);
    size_t in = lv_health_count_in(&up->health->g);
    if (in < n && !up->closing) {
        /* Someone is out: an ejection may have run out since the last tick. */
        struct lv_health_event ev[16];
        health_events(up, ev, lv_health_tick(&up->health->g, now, ev, 16));
        in = lv_health_count_in(&up->health->g);
    }
    *panic = in == 0;
    if (*panic)
        up->panic_picks++;
    if (fresh && last)
        return (struct lv_upserver *)last; /* re-send on the same server, a fresh connection */
    if (n == 1)
        return &up->servers[0];
    if (up->cfg->balance == LV_BALANCE_LEAST_REQUEST)
        return pick_p2c(up, last ? tried : 0, *panic, now);
    if (last) {
        /* A retry takes the next server after the one that failed, without moving the shared
         * rotation: otherwise a dead server would be every request's first pick. */
        return pick_rr(up, lv_upserver_index(last) + 1, false, tried, *panic, now);
    }
    return pick_rr(up, up->rr, true, 0, *panic, now);
}

/* Picks under the health lock: the states every worker shares (README "Workers"). While every
 * server is up at full weight health has nothing to say: the pick then takes no lock, and
 * treats every server as a candidate as panic mode does (without counting it as panic). */
static struct lv_upserver *pick_server(struct lv_upstream *up, const struct lv_upserver *last,
                                       uint64_t tried, bool fresh, bool *panic)
{
    if (atomic_load_explicit(&up->health->all_up, memory_order_acquire) && !up->closing) {
        *panic = false;
        if (fresh && last)
            return (struct lv_upserver *)last;
        if (up->nservers == 1)
            return &up->servers[0];
        if (up->cfg->balance == LV_BALANCE_LEAST_REQUEST)
            return pick_p2c(up, last ? tried : 0, true, 0);
        if (last)
            return pick_rr(up, lv_upserver_index(last) + 1, false, tried, true, 0);
        return pick_rr(up, up->rr, true, 0, true, 0);
    }
    lv_upstream_health_lock(up);
    struct lv_upserver *s = pick_server_locked(up, last, tried, fresh, panic);
    lv_upstream_health_sync(up->health);
    lv_upstream_health_unlock(up);
    return s;
}

/* The most recently pooled idle connection of `s`, taken (busy), or NULL. Its idle timer is
 * left armed: it fires harmlessly for a busy connection (see on_idle_timeout). */
static struct lv_upconn *take_idle(struct lv_upserver *s)
{
    struct lv_upconn *uc = lv__upserver_idle_first(s);
    if (!uc)
        return NULL;
    lv_dlist_remove(&uc->idle_link);
    s->idle--;
    s->active++;
    uc->idle_due = 0;
    uc->state = LV_UPCONN_BUSY;
    uc->requests++;
    uc->reused = true;
    return uc;
}

/* Try to satisfy `acq` now. Returns true if it was handled (callback scheduled or queued
 * elsewhere), false if it must wait for a slot. */
static bool try_acquire(struct lv_upstream *up, struct lv_acquire *acq, bool *call_now,
                        struct lv_upconn **got)
{
    struct lv_upserver *s = acq->server;
    *call_now = false;
    *got = NULL;
    if (s->naddrs == 0) {
        if (s->resolving)
            return false;
        return true; /* unresolvable: caller reports */
    }
    if (!acq->fresh) {
        struct lv_upconn *uc = take_idle(s);
        if (uc) {
            *got = uc;
            *call_now = true;
            return true;
        }
    }
    if (s->active >= up->cfg->pool.max_connections)
        return false;
    lv__upconn_race_start(s, acq);
    return true;
}

static void on_reuse_now(uv_timer_t *t);

void lv_upstream_acquire(struct lv_upstream *up, struct lv_acquire *acq,
                         const struct lv_upserver *last, uint64_t tried, bool fresh,
                         lv_acquire_cb cb, void *arg)
{
    memset(acq, 0, sizeof(*acq));
    acq->up = up;
    acq->cb = cb;
    acq->arg = arg;
    acq->fresh = fresh;
    acq->active = true;
    acq->queued_at = lv__upstream_now(up);
    acq->server = pick_server(up, last, tried, fresh, &acq->panic);
    /* The common case, a pooled connection and nobody waiting before us: handed over now, the
     * callback runs before this returns (the caller is ready for that). */
    if (!fresh && up->nwaiting == 0 && !up->closing && acq->server->naddrs) {
        struct lv_upconn *uc = take_idle(acq->server);
        if (uc) {
            lv__acquire_done(acq, LV_ACQUIRE_OK, uc, NULL);
            return;
        }
    }
    /* Otherwise through the wait queue and a zero timer, so the callback runs from the loop. */
    lv_dlist_append(&up->waitq, &acq->link);
    acq->queued = true;
    up->nwaiting++;
    uv_timer_start(&up->timer, on_reuse_now, 0, 0);
}

void lv_upstream_cancel(struct lv_acquire *acq)
{
    if (!acq->active)
        return;
    acq->active = false;
    if (acq->queued) {
        lv_dlist_remove(&acq->link);
        acq->queued = false;
        acq->up->nwaiting--;
        return;
    }
    lv__upconn_race_detach(acq);
}

static void fail_acquire(struct lv_upstream *up, struct lv_acquire *acq, enum lv_acquire_error err,
                         const char *detail)
{
    lv__acquire_done(acq, err, NULL, detail);
}

void lv__upstream_dispatch_waiters(struct lv_upstream *up)
{
    if (up->closing)
        return;
    uint64_t now = lv__upstream_now(up);
    uint64_t qto = up->cfg->pool.queue_timeout_ms ? up->cfg->pool.queue_timeout_ms
                                                  : up->cfg->connect_timeout_ms;
    uint32_t waiting_for_slot = 0;
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &up->waitq)
    {
        struct lv_acquire *a = lv_dlist_entry(l, struct lv_acquire, link);
        bool call_now;
        struct lv_upconn *got;
        if (try_acquire(up, a, &call_now, &got)) {
            lv_dlist_remove(&a->link);
            a->queued = false;
            up->nwaiting--;
            if (got) {
                lv__acquire_done(a, LV_ACQUIRE_OK, got, NULL);
            } else if (a->server->naddrs == 0) {
                char msg[160];
                snprintf(msg, sizeof(msg), "%s: cannot resolve", a->server->name);
                fail_acquire(up, a, LV_ACQUIRE_NO_SERVER, msg);
            }
            /* else: connecting; the connect callbacks finish it */
        } else if (now - a->queued_at >= qto) {
            lv_dlist_remove(&a->link);
            a->queued = false;
            up->nwaiting--;
            fail_acquire(up, a, LV_ACQUIRE_QUEUE_TIMEOUT, "timed out waiting for a connection");
        } else if (++waiting_for_slot > up->cfg->pool.queue_size) {
            lv_dlist_remove(&a->link);
            a->queued = false;
            up->nwaiting--;
            fail_acquire(up, a, LV_ACQUIRE_OVERFLOW, "connection pool queue full");
        }
    }
    if (up->nwaiting > 0 && !up->closing) {
        /* Re-check queue timeouts soon. */
        uv_timer_start(&up->timer, on_reuse_now, 10, 0);
    }
}

static void on_reuse_now(uv_timer_t *t)
{
    lv__upstream_dispatch_waiters(t->data);
}

/* ---- lifecycle */

/* FNV-1a over what decides whether an old pool can serve a new config's upstream. */
static uint64_t fnv_byte(uint64_t h, uint64_t b)
{
    return (h ^ b) * 1099511628211ULL;
}

static uint64_t fnv_str(uint64_t h, const char *s)
{
    for (const char *p = s ? s : ""; *p; p++)
        h = fnv_byte(h, (unsigned char)*p);
    return fnv_byte(h, '|');
}

static uint64_t servers_fingerprint(const struct lv_upstream_cfg *cfg)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < cfg->nservers; i++)
        h = fnv_byte(fnv_str(h, cfg->servers[i].host), cfg->servers[i].port);
    h = fnv_byte(h, (uint64_t)cfg->tls);
    h = fnv_byte(h, (uint64_t)cfg->tls_verify);
    return fnv_str(fnv_str(h, cfg->tls_sni), cfg->tls_ca);
}

static void health_params(const struct lv_upstream_cfg *cfg, struct lv_health_params *p)
{
    memset(p, 0, sizeof(*p));
    p->outlier = cfg->outlier.enabled;
    p->consecutive_failures = cfg->outlier.consecutive_failures;
    p->eject_for_ms = cfg->outlier.eject_for_ms;
    p->max_eject_for_ms = cfg->outlier.max_eject_for_ms;
    p->max_ejected = cfg->outlier.max_ejected;
    p->enforce = cfg->outlier.enforce;
    p->healthy = cfg->health.enabled ? cfg->health.healthy : 2;
    p->unhealthy = cfg->health.enabled ? cfg->health.unhealthy : 3;
    p->slow_start_ms = cfg->slow_start_ms;
}

static void health_events(struct lv_upstream *up, const struct lv_health_event *ev, int n)
{
    for (int i = 0; i < n; i++)
        if (up->on_health_event)
            up->on_health_event(up, &ev[i]);
}

void lv_upstream_report(struct lv_upstream *up, const struct lv_upserver *s,
                        enum lv_health_outcome o)
{
    assert(!s || s->up == up); /* a server of another upstream: a bug */
    if (!s || up->closing)
        return;
    size_t i = lv_upserver_index(s);
    if (o == LV_HEALTH_SUCCESS &&
        !atomic_load_explicit(&up->health->failing[i], memory_order_relaxed))
        return; /* nothing to reset: no lock, no shared write */
    struct lv_health_event ev[LV_HEALTH_MAX_EVENTS];
    lv_upstream_health_lock(up);
    int n = lv_health_record(&up->health->g, i, lv__upstream_now(up), o, ev);
    health_events(up, ev, n);
    lv_upstream_health_sync(up->health);
    lv_upstream_health_unlock(up);
}

void lv_upstream_check_result(struct lv_upstream *up, size_t i, bool ok, const char *why,
                              double duration_ms)
{
    /* The checker drops the results of servers it no longer has: i is always one of ours. */
    assert(i < up->nservers);
    if (up->closing)
        return;
    struct lv_upserver *s = &up->servers[i];
    snprintf(s->last_check, sizeof(s->last_check), "%s", why ? why : (ok ? "ok" : "failed"));
    s->last_check_ok = ok;
    s->last_check_ms = duration_ms;
    uv_timeval64_t tv;
    s->last_check_unix = uv_gettimeofday(&tv) == 0 ? (double)tv.tv_sec + tv.tv_usec / 1e6 : 0;
    struct lv_health_event ev[LV_HEALTH_MAX_EVENTS];
    lv_upstream_health_lock(up);
    int n = lv_health_check_result(&up->health->g, i, lv__upstream_now(up), ok, why, ev);
    health_events(up, ev, n);
    lv_upstream_health_sync(up->health);
    lv_upstream_health_unlock(up);
}

/* ---- the servers as net/healthcheck sees them */

static size_t check_count(void *owner)
{
    const struct lv_upstream *up = owner;
    return up->servers ? up->nservers : 0;
}

static bool check_closing(void *owner)
{
    return ((const struct lv_upstream *)owner)->closing;
}

static void check_get(void *owner, size_t i, struct lv_healthcheck_target *t)
{
    const struct lv_upstream *up = owner;
    assert(i < up->nservers);
    const struct lv_upserver *s = &up->servers[i];
    *t = (struct lv_healthcheck_target){
        .name = s->name,
        .host = s->hp.host,
        .port = s->hp.port,
        .addrs = s->addrs,
        .naddrs = s->naddrs,
        .resolving = s->resolving,
        .tls_ctx = up->tls_ctx,
        .sni = up->cfg ? up->cfg->tls_sni : NULL,
    };
}

const struct lv_healthcheck_servers lv_upstream_check_servers = {
    .count = check_count,
    .closing = check_closing,
    .get = check_get,
};

static void on_check(size_t server, bool ok, const char *why, uint64_t duration_ms, void *arg)
{
    lv_upstream_check_result(arg, server, ok, why, (double)duration_ms);
}

/* Starts, updates or stops the active checks to match cfg->health. */
static void checks_sync(struct lv_upstream *up)
{
    const struct lv_health_cfg *h = &up->cfg->health;
    if (!h->enabled || up->retired || up->closing || !up->runs_checks) {
        lv_healthcheck_stop(up->checker);
        up->checker = NULL;
        return;
    }
    struct lv_healthcheck_params p = {.path = h->path,
                                      .interval_ms = h->interval_ms,
                                      .timeout_ms = h->timeout_ms,
                                      .host = h->host};
    memcpy(p.expect, h->expect, sizeof(p.expect));
    if (up->checker) {
        if (lv_healthcheck_update(up->checker, &p) != 0)
            lv_warn("upstream %s: health check settings refused: %s", up->name,
                    lv_healthcheck_params_error(&p));
        return;
    }
    up->checker = lv_healthcheck_start(up->loop, &lv_upstream_check_servers, up, &p, on_check, up);
    if (!up->checker)
        lv_warn("upstream %s: cannot start health checks: %s", up->name,
                lv_healthcheck_params_error(&p));
}

void lv_upstream_health_sync(struct lv_upstream_health *h)
{
    bool all = h->g.n > 0;
    for (size_t i = 0; i < h->g.n; i++) {
        const struct lv_server_health *s = &h->g.servers[i];
        all = all && s->state == LV_SERVER_UP;
        atomic_store_explicit(&h->failing[i], s->consecutive_failures != 0, memory_order_relaxed);
    }
    atomic_store_explicit(&h->all_up, all, memory_order_release);
}

struct lv_upstream_health *lv_upstream_health_new(const struct lv_upstream_cfg *cfg)
{
    struct lv_upstream_health *h = lv_xcalloc(1, sizeof(*h));
    pthread_mutex_init(&h->lock, NULL);
    struct lv_health_params hp;
    health_params(cfg, &hp);
    lv_health_init(&h->g, &hp, cfg->nservers, false);
    h->failing = lv_xcalloc(cfg->nservers + 1, sizeof(*h->failing));
    atomic_init(&h->refs, 1);
    lv_upstream_health_sync(h);
    return h;
}

struct lv_upstream_health *lv_upstream_health_ref(struct lv_upstream_health *h)
{
    atomic_fetch_add(&h->refs, 1);
    return h;
}

void lv_upstream_health_unref(struct lv_upstream_health *h)
{
    if (!h || atomic_fetch_sub(&h->refs, 1) > 1)
        return;
    lv_health_free(&h->g);
    free(h->failing);
    pthread_mutex_destroy(&h->lock);
    free(h);
}

struct lv_upstream *lv_upstream_create(uv_loop_t *loop, const struct lv_upstream_cfg *cfg,
                                       struct lv_upstream_health *health, bool runs_checks)
{
    struct lv_upstream *up = lv_xcalloc(1, sizeof(*up));
    up->name = lv_xstrdup(cfg->name);
    up->loop = loop;
    up->cfg = cfg;
    up->rng = (uint64_t)(uintptr_t)up ^ uv_hrtime() ^ 0x9E3779B97F4A7C15ULL;
    if (up->rng == 0)
        up->rng = 1;
    up->fingerprint = servers_fingerprint(cfg);
    if (cfg->tls) {
        struct lv_buf err = LV_BUF_INIT;
        up->tls_ctx = lv_tls_client_ctx(cfg->tls_verify, cfg->tls_ca, &err);
        if (!up->tls_ctx)
            lv_error("upstream %s: TLS: %.*s (connections will fail)", cfg->name, (int)err.len,
                     err.data ? err.data : "");
        lv_buf_dispose(&err);
    }
    lv_dlist_init(&up->waitq);
    uv_timer_init(loop, &up->timer);
    up->timer.data = up;
    up->open_handles = 1;
    up->nservers = cfg->nservers;
    up->servers = lv_xcalloc(cfg->nservers, sizeof(*up->servers));
    up->health = health ? lv_upstream_health_ref(health) : lv_upstream_health_new(cfg);
    up->runs_checks = runs_checks;
    for (size_t i = 0; i < cfg->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        s->up = up;
        s->hp.host = lv_xstrdup(cfg->servers[i].host);
        s->hp.port = cfg->servers[i].port;
        snprintf(s->name, sizeof(s->name), "%s:%u", s->hp.host, s->hp.port);
        lv_dlist_init(&s->idle_conns);
        struct sockaddr_storage ss;
        if (lv_addr_from_ip(s->hp.host, s->hp.port, &ss) == 0) {
            s->addrs = lv_xcalloc(1, sizeof(ss));
            s->addrs[0] = ss;
            s->naddrs = 1;
        } else {
            resolve(s);
        }
    }
    checks_sync(up);
    return up;
}

bool lv_upstream_same_servers(const struct lv_upstream *up, const struct lv_upstream_cfg *cfg)
{
    return up->fingerprint == servers_fingerprint(cfg) && up->nservers == cfg->nservers;
}

void lv_upstream_update(struct lv_upstream *up, const struct lv_upstream_cfg *cfg)
{
    bool checks_were_on = up->cfg->health.enabled;
    up->cfg = cfg;
    struct lv_health_params hp;
    health_params(cfg, &hp);
    lv_upstream_health_lock(up);
    lv_health_configure(&up->health->g, &hp);
    if (checks_were_on && !cfg->health.enabled && up->runs_checks) {
        /* Nothing will check a down server again: bring it back (README, "Upstream health"). */
        struct lv_health_event ev[16];
        health_events(up, ev, lv_health_checks_off(&up->health->g, lv__upstream_now(up), ev, 16));
    }
    lv_upstream_health_sync(up->health);
    lv_upstream_health_unlock(up);
    checks_sync(up);
}

void lv_upstream_tick(struct lv_upstream *up)
{
    uint64_t now = lv__upstream_now(up);
    if (!up->closing) {
        struct lv_health_event ev[16];
        lv_upstream_health_lock(up);
        int n = lv_health_tick(&up->health->g, now, ev, 16);
        health_events(up, ev, n);
        lv_upstream_health_sync(up->health);
        lv_upstream_health_unlock(up);
    }
    uint64_t period = up->cfg->pool.max_lifetime_ms ? up->cfg->pool.max_lifetime_ms : 600000;
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        if (!is_literal(s) && !s->resolving && now - s->resolved_at >= period)
            resolve(s);
    }
}

static void on_upstream_timer_closed(uv_handle_t *h)
{
    struct lv_upstream *up = h->data;
    up->open_handles--;
    if (up->open_handles == 0 && up->on_closed)
        up->on_closed(up);
}

void lv_upstream_retire(struct lv_upstream *up)
{
    up->retired = true;
    checks_sync(up); /* its replacement checks the servers now */
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        for (struct lv_upconn *uc; (uc = lv__upserver_idle_first(s));)
            lv__upconn_close(uc, false);
    }
}

void lv_upstream_destroy(struct lv_upstream *up)
{
    if (up->closing)
        return;
    up->closing = true;
    checks_sync(up);
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &up->waitq)
    {
        struct lv_acquire *a = lv_dlist_entry(l, struct lv_acquire, link);
        lv_dlist_remove(&a->link);
        a->queued = false;
        up->nwaiting--;
        fail_acquire(up, a, LV_ACQUIRE_CANCELLED, "upstream removed");
    }
    for (size_t i = 0; i < up->nservers; i++) {
        struct lv_upserver *s = &up->servers[i];
        for (struct lv_upconn *uc; (uc = lv__upserver_idle_first(s));)
            lv__upconn_close(uc, false);
        if (s->resolving)
            uv_cancel((uv_req_t *)&s->gai);
    }
    uv_timer_stop(&up->timer);
    uv_close((uv_handle_t *)&up->timer, on_upstream_timer_closed);
}

void lv_upstream_free(struct lv_upstream *up)
{
    for (size_t i = 0; i < up->nservers; i++) {
        free(up->servers[i].addrs);
        free(up->servers[i].hp.host);
    }
    free(up->servers);
    free(up->name);
    lv_upstream_health_unref(up->health);
    if (up->tls_ctx)
        lv_tls_ctx_free(up->tls_ctx);
    free(up);
}

void lv_upstream_counts(const struct lv_upstream *up, uint32_t *active, uint32_t *idle)
{
    uint32_t a = 0, i = 0;
    for (size_t k = 0; k < up->nservers; k++) {
        a += up->servers[k].active;
        i += up->servers[k].idle;
    }
    *active = a;
    *idle = i;
}
