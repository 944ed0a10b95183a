#include "proxy/server.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <lua.h>
#include <openssl/crypto.h>

#include "admin/admin.h"
#include "base/log.h"
#include "net/tls.h"
#include "net/upstream.h"
#include "obs/process.h"
#include "policy/outcome.h"
#include "proxy/client.h"

static const char *const L_ROUTE_CODE[] = {"route", "code", NULL};
static const char *const L_ROUTE[] = {"route", NULL};
static const char *const L_RESULT[] = {"result", NULL};
static const char *const L_UPCONN[] = {"upstream", "state", NULL};
static const char *const L_CODE[] = {"code", NULL};
static const char *const L_ROUTE_OUTCOME[] = {"route", "outcome", NULL};
static const char *const L_ROUTE_HOOK[] = {"route", "hook", "kind", NULL};
static const char *const L_UPSTREAM[] = {"upstream", NULL};
static const char *const L_UP_SERVER[] = {"upstream", "server", NULL};
static const char *const L_UP_SERVER_ENFORCED[] = {"upstream", "server", "enforced", NULL};
static const char *const L_UP_SERVER_RESULT[] = {"upstream", "server", "result", NULL};

/* ---- listeners */

static void on_connection(uv_stream_t *ls, int status)
{
    struct lv_listener *l = ls->data;
    struct lv_server *s = l->server;
    if (status < 0) {
        lv_warn("accept on %s: %s", l->name, uv_strerror(status));
        return;
    }
    lv_client_accept(s, ls, l->tls_ctx);
}

/* Opens (binds, listens) one listener; a failure is appended to `errors` as one line. */
static int listener_open(struct lv_server *s, const struct lv_listen_cfg *lc,
                         struct lv_listener **out, struct lv_buf *errors)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    const char *host = lc->addr.host;
    char tmp[64];
    size_t hn = strlen(host);
    if (hn > 2 && host[0] == '[' && host[hn - 1] == ']' && hn - 2 < sizeof(tmp)) {
        memcpy(tmp, host + 1, hn - 2);
        tmp[hn - 2] = '\0';
        host = tmp;
    }
    if (strcmp(host, "localhost") == 0)
        host = "127.0.0.1";
    int family = AF_INET;
    if (uv_ip4_addr(host, lc->addr.port, (struct sockaddr_in *)&ss) != 0) {
        if (uv_ip6_addr(host, lc->addr.port, (struct sockaddr_in6 *)&ss) != 0) {
            lv_buf_printf(errors, "%s: listen %s:%u: not an IP address\n",
                          s->config_path ? s->config_path : "levee", lc->addr.host, lc->addr.port);
            return UV_EINVAL;
        }
        family = AF_INET6;
    }
    struct lv_listener *l = lv_xcalloc(1, sizeof(*l));
    l->server = s;
    if (lc->tls_cert) {
        struct lv_buf err = LV_BUF_INIT;
        l->tls_ctx = lv_tls_server_ctx(lc->tls_cert, lc->tls_key, &err);
        if (!l->tls_ctx) {
            lv_buf_printf(errors, "%s: listen %s:%u: TLS: %.*s\n",
                          s->config_path ? s->config_path : "levee", lc->addr.host, lc->addr.port,
                          (int)err.len, err.data ? err.data : "");
            lv_buf_dispose(&err);
            free(l);
            return UV_EINVAL;
        }
        lv_buf_dispose(&err);
    }
    l->addr.host = lv_xstrdup(lc->addr.host);
    l->addr.port = lc->addr.port;
    snprintf(l->name, sizeof(l->name), "%s:%u", lc->addr.host, lc->addr.port);
    /* No SO_REUSEPORT yet: with one worker, a second levee on the same port must fail loudly
     * rather than silently share the port. Workers will set it on their own sockets. */
    uv_tcp_init_ex(s->loop, &l->tcp, (unsigned)family);
    l->tcp.data = l;
    int rc = uv_tcp_bind(&l->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
    if (rc != 0) {
        lv_buf_printf(errors, "%s: listen %s: %s\n", s->config_path ? s->config_path : "levee",
                      l->name, uv_strerror(rc));
        l->closing = true;
        if (l->tls_ctx)
            lv_tls_ctx_free(l->tls_ctx);
        uv_close((uv_handle_t *)&l->tcp, (uv_close_cb)free);
        free(l->addr.host);
        return rc;
    }
    lv_info("listening on %s", l->name);
    *out = l;
    return 0;
}

static void listener_closed(uv_handle_t *h)
{
    struct lv_listener *l = h->data;
    if (l->tls_ctx)
        lv_tls_ctx_free(l->tls_ctx); /* connections hold their own references */
    free(l->addr.host);
    free(l);
}

static void listener_close(struct lv_listener *l)
{
    if (l->closing)
        return;
    l->closing = true;
    uv_close((uv_handle_t *)&l->tcp, listener_closed);
}

/* ---- upstream and route registries */

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

/* A reload replaced `up` (its server list changed): servers it keeps, by name, keep their
 * health and ejection state; new ones start up. */
static void carry_health(struct lv_upstream *up, const struct lv_upstream *old)
{
    for (size_t i = 0; i < up->nservers; i++)
        for (size_t j = 0; j < old->nservers; j++)
            if (strcmp(up->servers[i].name, old->servers[j].name) == 0) {
                lv_health_carry(&up->health, i, &old->health, j);
                memcpy(up->servers[i].last_check, old->servers[j].last_check,
                       sizeof(up->servers[i].last_check));
                up->servers[i].last_check_ok = old->servers[j].last_check_ok;
                up->servers[i].last_check_ms = old->servers[j].last_check_ms;
                up->servers[i].last_check_unix = old->servers[j].last_check_unix;
                break;
            }
}

static void sync_upstreams(struct lv_server *s, struct lv_config *cfg)
{
    /* Keep runtime upstreams whose servers are unchanged (their pools survive); replace the
     * others; drop the ones the new config no longer has. */
    struct lv_upstream **next = lv_xcalloc(cfg->nupstreams, sizeof(*next));
    bool *kept = lv_xcalloc(s->nupstreams + 1, sizeof(*kept));
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const struct lv_upstream_cfg *uc = &cfg->upstreams[i];
        for (size_t j = 0; j < s->nupstreams; j++) {
            if (!kept[j] && strcmp(s->upstreams[j]->name, uc->name) == 0 &&
                lv_upstream_same_servers(s->upstreams[j], uc)) {
                kept[j] = true;
                next[i] = s->upstreams[j];
                lv_upstream_update(next[i], uc);
                break;
            }
        }
        if (!next[i]) {
            next[i] = lv_upstream_create(s->loop, uc);
            for (size_t j = 0; j < s->nupstreams; j++)
                if (!kept[j] && strcmp(s->upstreams[j]->name, uc->name) == 0)
                    carry_health(next[i], s->upstreams[j]);
        }
        next[i]->on_closed = upstream_closed;
        next[i]->on_health_event = on_health_event;
        next[i]->owner = s;
    }
    for (size_t j = 0; j < s->nupstreams; j++) {
        if (kept[j])
            continue;
        struct lv_upstream *up = s->upstreams[j];
        if (up->users == 0) {
            lv_upstream_destroy(up);
            continue;
        }
        /* Requests of older generations still use it (some may wait in its queue): they
         * finish on it; it goes with its last user. */
        lv_upstream_retire(up);
        s->retired = lv_xrealloc(s->retired, (s->nretired + 1) * sizeof(*s->retired));
        s->retired[s->nretired++] = up;
    }
    free(kept);
    free(s->upstreams);
    s->upstreams = next;
    s->nupstreams = cfg->nupstreams;
}

struct lv_upstream *lv_server_upstream(struct lv_server *s, const struct lv_upstream_cfg *cfg)
{
    for (size_t i = 0; i < s->nupstreams; i++)
        if (s->upstreams[i]->cfg == cfg)
            return s->upstreams[i];
    for (size_t i = 0; i < s->nupstreams; i++)
        if (strcmp(s->upstreams[i]->name, cfg->name) == 0)
            return s->upstreams[i];
    return NULL;
}

void lv_server_upstream_use(struct lv_server *s, struct lv_upstream *up)
{
    (void)s;
    up->users++;
}

void lv_server_upstream_unuse(struct lv_server *s, struct lv_upstream *up)
{
    if (--up->users > 0 || !up->retired)
        return;
    for (size_t i = 0; i < s->nretired; i++) {
        if (s->retired[i] == up) {
            s->retired[i] = s->retired[--s->nretired];
            break;
        }
    }
    lv_upstream_destroy(up);
}

void lv_server_route_use(struct lv_server *s, struct lv_route_state *rs)
{
    (void)s;
    lv_route_state_use(rs);
}

void lv_server_route_unuse(struct lv_server *s, struct lv_route_state *rs)
{
    lv_route_state_unuse(&s->routes, rs);
}

struct lv_route_state *lv_server_route_state(struct lv_server *s, const char *name)
{
    return lv_route_states_get(&s->routes, name);
}

void lv_server_count_attempt(struct lv_server *s, struct lv_route_state *rs, int kind, int status)
{
    lv_route_state_count_attempt(&s->routes, rs, kind, status);
}

void lv_server_count_request(struct lv_server *s, struct lv_route_state *rs, int status,
                             double seconds)
{
    if (rs)
        lv_route_state_count_request(&s->routes, rs, status, seconds);
}

/* ---- metrics computed at render time */

static void render_gauges(struct lv_metrics *m, void *arg)
{
    struct lv_server *s = arg;
    lv_metric_set(lv_metric_series(s->m_generation, NULL), (double)s->generation);
    lv_metric_set(lv_metric_series(s->m_clients, NULL), (double)s->nclients);
    uint64_t now = uv_now(s->loop);
    for (size_t i = 0; i < s->cfg->nroutes; i++)
        lv_route_state_publish(&s->routes, lv_server_route_state(s, s->cfg->routes[i].name), now);
    for (size_t i = 0; i < s->nupstreams; i++) {
        uint32_t active, idle;
        lv_upstream_counts(s->upstreams[i], &active, &idle);
        const char *la[] = {s->upstreams[i]->name, "active", NULL};
        const char *li[] = {s->upstreams[i]->name, "idle", NULL};
        lv_metric_set(lv_metric_series(s->m_upconns, la), active);
        lv_metric_set(lv_metric_series(s->m_upconns, li), idle);
        struct lv_upstream *up = s->upstreams[i];
        const char *lu[] = {up->name, NULL};
        lv_metric_set(lv_metric_series(s->m_panics, lu), (double)up->panic_picks);
        for (size_t k = 0; k < up->nservers; k++) {
            const struct lv_server_health *hs = &up->health.servers[k];
            const char *ls[] = {up->name, up->servers[k].name, NULL};
            lv_metric_set(lv_metric_series(s->m_server_up, ls), lv_health_in(&up->health, k));
            lv_metric_set(lv_metric_series(s->m_up_sent, ls), (double)up->servers[k].sent_bytes);
            lv_metric_set(lv_metric_series(s->m_up_received, ls),
                          (double)up->servers[k].received_bytes);
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
    }
}

static void metrics_setup(struct lv_server *s)
{
    struct lv_metrics *m = s->metrics = lv_metrics_create();
    s->m_requests =
        lv_metrics_family(m, "levee_requests_total", "Requests answered, by route and status.",
                          LV_METRIC_COUNTER, L_ROUTE_CODE, NULL, 0);
    s->m_duration = lv_metrics_family(m, "levee_request_duration_seconds",
                                      "Time from the request head to the last response byte.",
                                      LV_METRIC_HISTOGRAM, L_ROUTE, NULL, 0);
    s->m_retries = lv_metrics_family(m, "levee_retries_total", "Retries sent, by route.",
                                     LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_budget_exhausted =
        lv_metrics_family(m, "levee_retry_budget_exhausted_total",
                          "Retries refused because the route's retry budget was spent.",
                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_attempts = lv_metrics_family(m, "levee_upstream_attempts_total",
                                      "Upstream attempts, by route and outcome.", LV_METRIC_COUNTER,
                                      L_ROUTE_OUTCOME, NULL, 0);
    s->m_breaker_state = lv_metrics_family(m, "levee_breaker_state",
                                           "Circuit breaker state: 0 closed, 1 open, 2 half-open.",
                                           LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    s->m_fallbacks = lv_metrics_family(m, "levee_fallbacks_total",
                                       "Responses served by the route's fallback hook.",
                                       LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_breaker_rejected = lv_metrics_family(
        m, "levee_breaker_rejected_total",
        "Requests answered at once because the breaker was open (fallback or 503).",
        LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_hook_errors = lv_metrics_family(m, "levee_hook_errors_total",
                                         "Hook calls that failed and counted as no hook.",
                                         LV_METRIC_COUNTER, L_ROUTE_HOOK, NULL, 0);
    s->m_idem_replays = lv_metrics_family(m, "levee_idempotency_replays_total",
                                          "Stored responses replayed for a repeated key.",
                                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_idem_stored = lv_metrics_family(m, "levee_idempotency_stored_total",
                                         "Responses stored under an idempotency key.",
                                         LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_idem_conflicts = lv_metrics_family(m, "levee_idempotency_conflicts_total",
                                            "Requests whose key was in flight (409 or waited).",
                                            LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_idem_mismatches = lv_metrics_family(m, "levee_idempotency_mismatches_total",
                                             "Keys reused with a different request (422).",
                                             LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_idem_store_errors =
        lv_metrics_family(m, "levee_idempotency_store_errors_total",
                          "Store lookups that failed (store full or unavailable).",
                          LV_METRIC_COUNTER, L_ROUTE, NULL, 0);
    s->m_idem_entries =
        lv_metrics_family(m, "levee_idempotency_store_entries", "Keys held by the route's store.",
                          LV_METRIC_GAUGE, L_ROUTE, NULL, 0);
    s->routes.fam = (struct lv_route_families){
        .requests = s->m_requests,
        .duration = s->m_duration,
        .retries = s->m_retries,
        .budget_exhausted = s->m_budget_exhausted,
        .attempts = s->m_attempts,
        .breaker_state = s->m_breaker_state,
        .fallbacks = s->m_fallbacks,
        .breaker_rejected = s->m_breaker_rejected,
        .hook_errors = s->m_hook_errors,
        .idem_replays = s->m_idem_replays,
        .idem_stored = s->m_idem_stored,
        .idem_conflicts = s->m_idem_conflicts,
        .idem_mismatches = s->m_idem_mismatches,
        .idem_store_errors = s->m_idem_store_errors,
        .idem_entries = s->m_idem_entries,
    };
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
    struct lv_build_info bi = {
        .version = LEVEE_VERSION,
        .libuv = uv_version_string(),
        .openssl = OpenSSL_version(OPENSSL_VERSION_STRING),
        .lua = LUA_VERSION_MAJOR "." LUA_VERSION_MINOR "." LUA_VERSION_RELEASE,
    };
    lv_process_metrics_register(m, &bi);
    lv_metrics_on_render(m, render_gauges, s);
}

/* ---- access log */

static void flush_access_log(struct lv_server *s);

void lv_server_access_log(struct lv_server *s, const char *line, size_t len)
{
    if (s->access_fd < 0)
        return;
    lv_buf_append(&s->access_buf, line, len);
    if (s->access_buf.len >= 64 * 1024)
        flush_access_log(s);
}

static void flush_access_log(struct lv_server *s)
{
    size_t off = 0;
    while (off < s->access_buf.len) {
        ssize_t n = write(s->access_fd, s->access_buf.data + off, s->access_buf.len - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            break; /* EAGAIN or a broken pipe: drop rather than block the loop */
        }
        off += (size_t)n;
    }
    s->access_buf.len = 0;
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

/* SIGUSR1 (README "Operations"): the access log and error log files are opened again by name
 * (logrotate renamed them), the old fds closed. A file that cannot be opened keeps its old fd. */
static void reopen_logs(struct lv_server *s)
{
    if (s->access_buf.len)
        flush_access_log(s);
    if (s->access_fd_owned && s->cfg->access_log == LV_ACCESS_LOG_FILE) {
        int fd = log_file_open(s->cfg->access_log_path);
        if (fd < 0) {
            lv_error("SIGUSR1: access_log %s: %s (still writing to the old file)",
                     s->cfg->access_log_path, strerror(errno));
        } else {
            close(s->access_fd);
            s->access_fd = fd;
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

/* ---- watching the configuration files (watch = true) */

/* Editors often save by writing a new file and renaming it over the old one, which a watch
 * on the file itself would lose (new inode). So each watcher watches a folder and reacts to
 * the names of the files the configuration was built from. */
struct lv_watch {
    uv_fs_event_t ev;
    struct lv_server *server;
    struct lv_watch *next;
    char *dir;
    char **names; /* basenames in that folder, NULL-terminated */
};

static void watch_closed(uv_handle_t *h)
{
    struct lv_watch *w = h->data;
    for (char **n = w->names; n && *n; n++)
        free(*n);
    free(w->names);
    free(w->dir);
    free(w);
}

static void watches_stop(struct lv_server *s)
{
    struct lv_watch *w = s->watches;
    s->watches = NULL;
    while (w) {
        struct lv_watch *next = w->next;
        uv_fs_event_stop(&w->ev);
        uv_close((uv_handle_t *)&w->ev, watch_closed);
        w = next;
    }
}

static void on_watch_debounced(uv_timer_t *t)
{
    struct lv_server *s = t->data;
    lv_info("configuration file changed: reloading");
    s->reloads_by_watch++;
    lv_server_reload(s, NULL, NULL);
}

static void on_watch_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct lv_watch *w = h->data;
    struct lv_server *s = w->server;
    if (status < 0 || s->draining)
        return;
    bool ours = filename == NULL;
    for (char **n = w->names; !ours && n && *n; n++)
        ours = strcmp(*n, filename) == 0;
    if (!ours)
        return;
    /* Editors touch a file several times per save: reload once, after things settle. */
    uv_timer_start(&s->watch_debounce, on_watch_debounced, 150, 0);
}

static void watches_start(struct lv_server *s, const struct lv_config *cfg)
{
    watches_stop(s);
    if (!cfg->watch || !cfg->files)
        return;
    for (char **f = cfg->files; *f; f++) {
        const char *slash = strrchr(*f, '/');
        char *dir = slash ? lv_xstrndup(*f, (size_t)(slash - *f) + (slash == *f)) : lv_xstrdup(".");
        const char *base = slash ? slash + 1 : *f;
        struct lv_watch *w = s->watches;
        while (w && strcmp(w->dir, dir) != 0)
            w = w->next;
        if (!w) {
            w = lv_xcalloc(1, sizeof(*w));
            w->server = s;
            w->dir = dir;
            w->names = lv_xcalloc(1, sizeof(char *));
            uv_fs_event_init(s->loop, &w->ev);
            w->ev.data = w;
            int rc = uv_fs_event_start(&w->ev, on_watch_event, dir, 0);
            if (rc != 0)
                lv_warn("watch %s: %s", dir, uv_strerror(rc));
            w->next = s->watches;
            s->watches = w;
        } else {
            free(dir);
        }
        size_t n = 0;
        while (w->names[n])
            n++;
        w->names = lv_xrealloc(w->names, (n + 2) * sizeof(char *));
        w->names[n] = lv_xstrdup(base);
        w->names[n + 1] = NULL;
    }
}

/* ---- reloading (README "Reload"): the file is loaded and validated on a thread of its own
 * (not libuv's threadpool, which also runs DNS lookups) with its own Lua state; the loop only
 * swaps the result in. A loader that has not answered after LV_CONFIG_LOAD_WAIT_MS is stuck
 * inside one C call: it is abandoned and the reload refused. */

struct lv_reload_waiter {
    lv_reload_cb cb;
    void *arg;
    struct lv_reload_waiter *next;
};

struct lv_reload {
    struct lv_config_job *job;
    struct lv_reload_waiter *waiters; /* answered when this load ends */
};

/* At most this many abandoned loaders may still run: each holds a thread (maybe spinning) and
 * up to LV_CONFIG_LOAD_MEMORY; past it, reloads are refused until one ends. */
#define MAX_ABANDONED_LOADERS 4

static void reload_start(struct lv_server *s, struct lv_reload_waiter *waiters);

/* A reload is all or nothing (README "Operations"): whatever can fail (new listeners bound,
 * certificates loaded, log files opened) is done by prepare() before anything is swapped; a
 * failure undoes it and refuses the configuration, and commit() cannot fail. */
struct lv_prepared {
    struct lv_listener **use; /* per cfg->listens[i]: the listener (kept or new) */
    bool *opened;             /* per i: use[i] was opened for this configuration */
    struct lv_tls_ctx **tls;  /* per i: the new TLS context of a kept HTTPS listener */
    bool *kept;               /* per s->listeners[j]: kept */
    int access_fd;            /* -1: off */
    int error_fd;             /* -1: stderr */
};

static void prepared_dispose(struct lv_prepared *p)
{
    free(p->use);
    free(p->opened);
    free(p->tls);
    free(p->kept);
}

static void prepared_undo(struct lv_server *s, struct lv_prepared *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p->opened[i] && p->use[i])
            listener_close(p->use[i]);
        if (p->tls[i])
            lv_tls_ctx_free(p->tls[i]);
    }
    if (p->access_fd > STDERR_FILENO)
        close(p->access_fd);
    if (p->error_fd >= 0)
        close(p->error_fd);
    (void)s;
    prepared_dispose(p);
}

static int prepare(struct lv_server *s, const struct lv_config *cfg, struct lv_prepared *p,
                   struct lv_buf *errors)
{
    size_t n = cfg->nlistens;
    p->use = lv_xcalloc(n + 1, sizeof(*p->use));
    p->opened = lv_xcalloc(n + 1, sizeof(*p->opened));
    p->tls = lv_xcalloc(n + 1, sizeof(*p->tls));
    p->kept = lv_xcalloc(s->nlisteners + 1, sizeof(*p->kept));
    p->access_fd = -1;
    p->error_fd = -1;
    int rc = 0;
    /* Unchanged addresses keep their sockets (no accept gap), with the certificate loaded
     * again; new ones are bound now, and closed again if the reload is refused. */
    for (size_t i = 0; i < n; i++) {
        const struct lv_listen_cfg *lc = &cfg->listens[i];
        for (size_t j = 0; j < s->nlisteners; j++) {
            if (!p->kept[j] && strcmp(s->listeners[j]->addr.host, lc->addr.host) == 0 &&
                s->listeners[j]->addr.port == lc->addr.port &&
                (s->listeners[j]->tls_ctx != NULL) == (lc->tls_cert != NULL)) {
                p->kept[j] = true;
                p->use[i] = s->listeners[j];
                break;
            }
        }
        if (p->use[i] && lc->tls_cert) {
            struct lv_buf err = LV_BUF_INIT;
            p->tls[i] = lv_tls_server_ctx(lc->tls_cert, lc->tls_key, &err);
            if (!p->tls[i]) {
                lv_buf_printf(errors, "%s: listen %s:%u: TLS: %.*s\n",
                              s->config_path ? s->config_path : "levee", lc->addr.host,
                              lc->addr.port, (int)err.len, err.data ? err.data : "");
                rc = UV_EINVAL;
            }
            lv_buf_dispose(&err);
        } else if (!p->use[i]) {
            int r = listener_open(s, lc, &p->use[i], errors);
            if (r != 0) {
                p->use[i] = NULL;
                if (!rc)
                    rc = r;
            } else {
                p->opened[i] = true;
            }
        }
    }
    int fd = access_log_open(s, cfg, errors);
    if (fd == -2 && !rc)
        rc = UV_EIO;
    p->access_fd = fd == -2 ? -1 : fd;
    if (cfg->error_log_path) {
        p->error_fd = log_file_open(cfg->error_log_path);
        if (p->error_fd < 0) {
            lv_buf_printf(errors, "%s: error_log %s: %s\n",
                          s->config_path ? s->config_path : "levee", cfg->error_log_path,
                          strerror(errno));
            if (!rc)
                rc = UV_EIO;
        }
    }
    if (rc != 0)
        prepared_undo(s, p, n);
    return rc;
}

static void install_config(struct lv_server *s, struct lv_config *cfg, struct lv_prepared *p);

static void waiters_answer(struct lv_reload_waiter *w, int rc, uint64_t generation,
                           const struct lv_buf *errors)
{
    while (w) {
        struct lv_reload_waiter *next = w->next;
        w->cb(w->arg, rc, generation, errors->data ? errors->data : "", errors->len);
        free(w);
        w = next;
    }
}

static void waiters_free(struct lv_reload_waiter *w)
{
    while (w) {
        struct lv_reload_waiter *next = w->next;
        free(w);
        w = next;
    }
}

/* The end of a load: the new configuration in force, or the errors logged; then the answers,
 * then the load asked for meanwhile. */
static void reload_end(struct lv_server *s, struct lv_config *cfg, struct lv_buf *errors)
{
    struct lv_reload *r = s->reload;
    s->reload = NULL;
    uv_timer_stop(&s->reload_timer);
    int rc = -1;
    bool shutting = false;
    if (cfg && s->draining) {
        shutting = true;
        lv_config_unpin(cfg);
        cfg = NULL;
        lv_buf_puts(errors, "shutting down\n");
    } else if (cfg) {
        struct lv_prepared p;
        if (prepare(s, cfg, &p, errors) != 0) {
            lv_config_unpin(cfg);
            cfg = NULL;
        } else {
            install_config(s, cfg, &p);
        }
    }
    if (cfg) {
        lv_metric_add(s->m_reload_ok, 1);
        snprintf(s->last_reload_result, sizeof(s->last_reload_result), "ok");
        lv_info("configuration reloaded: generation %llu", (unsigned long long)s->generation);
        rc = 0;
    } else if (!shutting) {
        lv_metric_add(s->m_reload_err, 1);
        lv_error("reload refused, the configuration in force keeps serving:\n%.*s",
                 (int)errors->len, errors->data ? errors->data : "");
        snprintf(s->last_reload_result, sizeof(s->last_reload_result), "error: %.*s",
                 (int)(errors->len > 400 ? 400 : errors->len), errors->data ? errors->data : "");
    }
    struct lv_reload_waiter *w = r->waiters;
    free(r);
    waiters_answer(w, rc, s->generation, errors);
    if (s->reload_again && !s->draining && !s->reload) {
        struct lv_reload_waiter *next = s->reload_queue;
        s->reload_queue = NULL;
        s->reload_again = false;
        reload_start(s, next);
    }
}

/* On the loader thread, under its job's lock (never after the job is abandoned). */
static void reload_notify(void *arg)
{
    struct lv_server *s = arg;
    uv_async_send(&s->reload_async);
}

static void on_reload_async(uv_async_t *h)
{
    struct lv_server *s = h->data;
    if (!s->reload || !s->reload->job || !lv_config_job_done(s->reload->job))
        return;
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_job_finish(s->reload->job, &errors);
    reload_end(s, cfg, &errors);
    lv_buf_dispose(&errors);
}

static void on_reload_timeout(uv_timer_t *t)
{
    struct lv_server *s = t->data;
    if (!s->reload)
        return;
    if (lv_config_job_done(s->reload->job)) {
        on_reload_async(&s->reload_async);
        return;
    }
    lv_config_job_abandon(s->reload->job);
    lv_warn("the configuration loader of %s still runs after %d ms (stuck inside one C call?): "
            "abandoned; %u abandoned loader(s) still running",
            s->config_path, LV_CONFIG_LOAD_WAIT_MS, lv_config_loaders_abandoned());
    struct lv_buf errors = LV_BUF_INIT;
    lv_buf_printf(&errors,
                  "%s:1: the configuration ran too long (its loader did not finish within %d ms "
                  "and was abandoned)\n",
                  s->config_path, LV_CONFIG_LOAD_WAIT_MS);
    reload_end(s, NULL, &errors);
    lv_buf_dispose(&errors);
}

static void reload_start(struct lv_server *s, struct lv_reload_waiter *waiters)
{
    struct lv_reload *r = lv_xcalloc(1, sizeof(*r));
    r->waiters = waiters;
    s->reload = r;
    struct lv_buf errors = LV_BUF_INIT;
    unsigned stuck = lv_config_loaders_abandoned();
    if (stuck >= MAX_ABANDONED_LOADERS) {
        lv_buf_printf(&errors,
                      "%s:1: the configuration ran too long before: %u abandoned loaders still "
                      "run, no other starts until one ends\n",
                      s->config_path, stuck);
        reload_end(s, NULL, &errors);
        lv_buf_dispose(&errors);
        return;
    }
    r->job = lv_config_job_new(s->config_path, s->lua_dir, reload_notify, s);
    uv_thread_t tid;
    int rc = uv_thread_create(&tid, lv_config_job_run, r->job);
    if (rc != 0) {
        lv_config_job_discard(r->job);
        r->job = NULL;
        lv_buf_printf(&errors, "%s:1: cannot start a thread to load the configuration: %s\n",
                      s->config_path, uv_strerror(rc));
        reload_end(s, NULL, &errors);
        lv_buf_dispose(&errors);
        return;
    }
    pthread_detach(tid); /* uv_thread_t is a pthread_t; nobody joins a loader */
    uv_timer_start(&s->reload_timer, on_reload_timeout, LV_CONFIG_LOAD_WAIT_MS, 0);
}

/* Shutdown: a load in progress is abandoned, its requests dropped (their connections close). */
static void reload_stop(struct lv_server *s)
{
    uv_timer_stop(&s->reload_timer);
    if (s->reload) {
        if (s->reload->job)
            lv_config_job_abandon(s->reload->job);
        waiters_free(s->reload->waiters);
        free(s->reload);
        s->reload = NULL;
    }
    waiters_free(s->reload_queue);
    s->reload_queue = NULL;
    s->reload_again = false;
}

/* ---- lifecycle */

static void on_tick(uv_timer_t *t)
{
    struct lv_server *s = t->data;
    for (size_t i = 0; i < s->nupstreams; i++)
        lv_upstream_tick(s->upstreams[i]);
    lv_log_flush_repeats(false);
    lv_client_refused_log_tick(s);
}

static void stop_loop_handles(struct lv_server *s)
{
    uv_signal_stop(&s->sig_term);
    uv_signal_stop(&s->sig_int);
    uv_signal_stop(&s->sig_hup);
    uv_signal_stop(&s->sig_quit);
    uv_signal_stop(&s->sig_usr1);
    uv_signal_stop(&s->sig_usr2);
    uv_timer_stop(&s->tick);
    uv_timer_stop(&s->drain_timer);
    uv_timer_stop(&s->watch_debounce);
    uv_close((uv_handle_t *)&s->watch_debounce, NULL);
    watches_stop(s);
    reload_stop(s);
    uv_close((uv_handle_t *)&s->reload_timer, NULL);
    uv_close((uv_handle_t *)&s->reload_async, NULL);
    uv_close((uv_handle_t *)&s->sig_term, NULL);
    uv_close((uv_handle_t *)&s->sig_int, NULL);
    uv_close((uv_handle_t *)&s->sig_hup, NULL);
    uv_close((uv_handle_t *)&s->sig_quit, NULL);
    uv_close((uv_handle_t *)&s->sig_usr1, NULL);
    uv_close((uv_handle_t *)&s->sig_usr2, NULL);
    uv_close((uv_handle_t *)&s->tick, NULL);
    uv_close((uv_handle_t *)&s->drain_timer, NULL);
    if (s->access_buf.len)
        flush_access_log(s);
    uv_check_stop(&s->flush_check);
    uv_close((uv_handle_t *)&s->flush_check, NULL);
    for (size_t i = 0; i < s->nupstreams; i++)
        lv_upstream_destroy(s->upstreams[i]);
    for (size_t i = 0; i < s->nretired; i++)
        lv_upstream_destroy(s->retired[i]);
    s->nretired = 0;
    lv_route_states_close_stores(&s->routes);
    for (size_t i = 0; i < s->nold_stores; i++)
        lv_idem_destroy(s->old_stores[i]);
    s->nold_stores = 0;
    if (s->admin) {
        lv_admin_stop(s->admin);
        s->admin = NULL;
    }
}

static void maybe_finish_drain(struct lv_server *s)
{
    if (s->draining && s->nclients == 0 && !uv_is_closing((uv_handle_t *)&s->tick))
        stop_loop_handles(s);
}

void lv_server_client_closed(struct lv_server *s, struct lv_client *c)
{
    (void)c;
    maybe_finish_drain(s);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct lv_server *s = t->data;
    lv_warn("drain_timeout reached with %u connections open: closing them", s->nclients);
    lv_client_close_all(s);
}

void lv_server_shutdown(struct lv_server *s)
{
    if (s->draining)
        return;
    s->draining = true;
    lv_info("shutting down: finishing %u connections (drain_timeout %llums)", s->nclients,
            (unsigned long long)s->cfg->drain_timeout_ms);
    for (size_t i = 0; i < s->nlisteners; i++)
        listener_close(s->listeners[i]);
    s->nlisteners = 0;
    lv_client_drain_idle(s);
    uv_timer_start(&s->drain_timer, on_drain_timeout, s->cfg->drain_timeout_ms, 0);
    maybe_finish_drain(s);
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct lv_server *s = h->data;
    /* README "Operations": HUP reloads, USR1 reopens the log files, USR2 is ignored (no binary
     * upgrade), TERM, INT and QUIT drain. */
    switch (signum) {
    case SIGHUP:
        lv_server_reload(s, NULL, NULL);
        return;
    case SIGUSR1:
        reopen_logs(s);
        return;
    case SIGUSR2:
        lv_warn("SIGUSR2 received: ignored (levee has no binary upgrade; SIGHUP reloads)");
        return;
    default:
        lv_info("signal %d received: draining", signum);
        lv_server_shutdown(s);
    }
}

/* The prepared listeners and log files go in force; removed listeners stop accepting (their
 * connections finish normally). Cannot fail. */
static void commit_prepared(struct lv_server *s, const struct lv_config *cfg, struct lv_prepared *p)
{
    for (size_t i = 0; i < cfg->nlistens; i++) {
        if (p->tls[i]) {
            lv_tls_ctx_free(p->use[i]->tls_ctx); /* connections hold their own references */
            p->use[i]->tls_ctx = p->tls[i];
            p->tls[i] = NULL;
        }
    }
    for (size_t j = 0; j < s->nlisteners; j++)
        if (!p->kept[j])
            listener_close(s->listeners[j]);
    free(s->listeners);
    s->listeners = p->use;
    s->nlisteners = cfg->nlistens;
    p->use = NULL;
    if (s->access_buf.len)
        flush_access_log(s);
    if (s->access_fd_owned && s->access_fd >= 0)
        close(s->access_fd);
    s->access_fd = p->access_fd;
    s->access_fd_owned = p->access_fd > STDERR_FILENO;
    int old = lv_log_set_fd(p->error_fd);
    if (s->error_fd_owned)
        close(old);
    s->error_fd_owned = p->error_fd >= 0;
    prepared_dispose(p);
}

static void install_config(struct lv_server *s, struct lv_config *cfg, struct lv_prepared *p)
{
    cfg->generation = ++s->generation;
    struct lv_config *old = s->cfg;
    s->cfg = cfg;
    sync_upstreams(s, cfg);
    lv_route_states_begin_install(&s->routes);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        struct lv_route_state *rs = lv_server_route_state(s, cfg->routes[i].name);
        struct lv_idem *replaced =
            lv_route_state_configure(&s->routes, rs, &cfg->routes[i], s->loop);
        if (replaced) {
            s->old_stores =
                lv_xrealloc(s->old_stores, (s->nold_stores + 1) * sizeof(*s->old_stores));
            s->old_stores[s->nold_stores++] = replaced;
        }
    }
    /* A route that disappeared keeps its state only while requests still use it. */
    lv_route_states_prune(&s->routes);
    commit_prepared(s, cfg, p);
    if (s->config_path)
        watches_start(s, cfg);
    s->reload_at = (double)time(NULL);
    if (old)
        lv_config_unpin(old);
}

int lv_server_start(struct lv_server *s, uv_loop_t *loop, struct lv_config *cfg)
{
    s->loop = loop;
    s->access_fd = -1;
    s->rid_state = uv_hrtime() ^ ((uint64_t)getpid() << 32);
    metrics_setup(s);
    /* Loop handles first: whatever fails later, lv_server_shutdown can close them all. */
    uv_check_init(loop, &s->flush_check);
    s->flush_check.data = s;
    uv_check_start(&s->flush_check, on_flush_check);
    uv_signal_init(loop, &s->sig_term);
    uv_signal_init(loop, &s->sig_int);
    uv_signal_init(loop, &s->sig_hup);
    uv_signal_init(loop, &s->sig_quit);
    uv_signal_init(loop, &s->sig_usr1);
    uv_signal_init(loop, &s->sig_usr2);
    s->sig_term.data = s->sig_int.data = s->sig_hup.data = s;
    s->sig_quit.data = s->sig_usr1.data = s->sig_usr2.data = s;
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    uv_timer_init(loop, &s->drain_timer);
    s->drain_timer.data = s;
    uv_timer_init(loop, &s->watch_debounce);
    s->watch_debounce.data = s;
    uv_timer_init(loop, &s->reload_timer);
    s->reload_timer.data = s;
    uv_async_init(loop, &s->reload_async, on_reload_async);
    s->reload_async.data = s;
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_prepared p;
    int rc = prepare(s, cfg, &p, &errors);
    if (rc != 0) {
        lv_error("%.*s", (int)(errors.len ? errors.len - 1 : 0), errors.data ? errors.data : "");
        lv_buf_dispose(&errors);
        s->cfg = cfg; /* lv_server_shutdown reads drain_timeout; freed with the server */
        return rc;
    }
    lv_buf_dispose(&errors);
    install_config(s, cfg, &p);
    snprintf(s->last_reload_result, sizeof(s->last_reload_result), "initial load");
    if (cfg->admin_enabled) {
        s->admin = lv_admin_start(s, &cfg->admin);
        if (!s->admin)
            return UV_EADDRINUSE;
    }
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);
    uv_signal_start(&s->sig_quit, on_signal, SIGQUIT);
    uv_signal_start(&s->sig_usr1, on_signal, SIGUSR1);
    uv_signal_start(&s->sig_usr2, on_signal, SIGUSR2);
    uv_timer_start(&s->tick, on_tick, 1000, 1000);
    return 0;
}

void lv_server_reload(struct lv_server *s, lv_reload_cb cb, void *arg)
{
    if (s->draining || !s->config_path) {
        const char *why = s->draining ? "shutting down\n" : "no configuration file to reload\n";
        if (cb)
            cb(arg, -1, s->generation, why, strlen(why));
        return;
    }
    struct lv_reload_waiter *w = NULL;
    if (cb) {
        w = lv_xcalloc(1, sizeof(*w));
        w->cb = cb;
        w->arg = arg;
    }
    if (s->reload) {
        /* One load at a time: this request is answered by the next one, which every request
         * made meanwhile shares (a file saved twice during a load is loaded once more). */
        struct lv_reload_waiter **tail = &s->reload_queue;
        while (*tail)
            tail = &(*tail)->next;
        *tail = w;
        s->reload_again = true;
        return;
    }
    reload_start(s, w);
}

static void waiters_cancel(struct lv_reload_waiter **list, void *arg)
{
    while (*list) {
        struct lv_reload_waiter *w = *list;
        if (w->arg == arg) {
            *list = w->next;
            free(w);
        } else {
            list = &w->next;
        }
    }
}

void lv_server_reload_cancel(struct lv_server *s, void *arg)
{
    if (s->reload)
        waiters_cancel(&s->reload->waiters, arg);
    waiters_cancel(&s->reload_queue, arg);
}

void lv_server_free(struct lv_server *s)
{
    lv_route_states_dispose(&s->routes);
    free(s->old_stores);
    free(s->upstreams); /* each upstream freed itself when its handles closed */
    free(s->retired);
    free(s->listeners);
    lv_buf_dispose(&s->access_buf);
    if (s->access_fd_owned && s->access_fd >= 0)
        close(s->access_fd);
    int efd = lv_log_set_fd(-1); /* later lines go to stderr */
    if (s->error_fd_owned)
        close(efd);
    if (s->cfg)
        lv_config_unpin(s->cfg);
    lv_metrics_destroy(s->metrics);
}
