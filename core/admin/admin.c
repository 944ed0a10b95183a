#include "admin/admin.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/addr.h"
#include "base/gwerr.h"
#include "base/list.h"
#include "base/log.h"
#include "base/method.h"
#include "http/respwrite.h"
#include "http/headscan.h"
#include "http/reqhead.h"
#include "net/upstream.h"
#include "obs/metrics.h"
#include "policy/breaker.h"
#include "policy/budget.h"
#include "store/idem.h"
#include "admin/faultapi.h"

#define ADMIN_MAX_HEAD 16384
#define ADMIN_MAX_BODY 65536 /* a POST /faults body */

struct lv_admin {
    uv_tcp_t tcp;
    struct lv_admin_ops ops;
    struct lv_dlist conns; /* of struct admin_conn, by link */
};

struct admin_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    struct lv_admin *admin;
    struct lv_dlist link;
    struct lv_buf in;
    struct lv_headscan hs;
    int open;
    bool done;
    bool reloading;  /* POST /reload: waiting for the load to answer */
    bool collecting; /* GET /status or /metrics: waiting for the workers' numbers */
    bool want_metrics;
    size_t want; /* bytes of head and body a request with a body needs in `in` */
};

extern const char lv_dashboard_html[];

static void conn_closed(uv_handle_t *h)
{
    struct admin_conn *ac = h->data;
    if (--ac->open > 0)
        return;
    lv_dlist_remove(&ac->link);
    lv_buf_dispose(&ac->in);
    free(ac);
}

static void conn_close(struct admin_conn *ac)
{
    if (ac->collecting) {
        ac->collecting = false;
        ac->admin->ops.collect_cancel(ac->admin->ops.arg, ac);
    }
    if (ac->reloading) {
        ac->reloading = false;
        ac->admin->ops.reload_cancel(ac->admin->ops.arg, ac);
    }
    if (uv_is_closing((uv_handle_t *)&ac->tcp))
        return;
    uv_close((uv_handle_t *)&ac->tcp, conn_closed);
    uv_close((uv_handle_t *)&ac->timer, conn_closed);
}

static void on_written(uv_write_t *req, int status)
{
    struct admin_conn *ac = req->data;
    free(req);
    conn_close(ac);
}

static void respond_allow(struct admin_conn *ac, int status, const char *ctype, const char *body,
                          size_t len, const char *allow)
{
    ac->done = true;
    uv_read_stop((uv_stream_t *)&ac->tcp);
    struct lv_buf out = LV_BUF_INIT;
    lv_respwrite_begin(&out, status, NULL, 0);
    lv_respwrite_fieldz(&out, "Content-Type", ctype);
    lv_respwrite_fieldz(&out, "Cache-Control", "no-store");
    if (allow)
        lv_respwrite_fieldz(&out, "Allow", allow);
    struct lv_resp_tail tail = {
        .framing = LV_FRAMING_LENGTH, .length = len, .connection = LV_CONNHDR_CLOSE};
    lv_respwrite_end(&out, &tail);
    lv_buf_append(&out, body, len);
    uv_write_t *w = lv_xmalloc(sizeof(*w) + out.len);
    char *data = (char *)(w + 1);
    memcpy(data, out.data, out.len);
    uv_buf_t b = uv_buf_init(data, (unsigned)out.len);
    w->data = ac;
    lv_buf_dispose(&out);
    if (uv_write(w, (uv_stream_t *)&ac->tcp, &b, 1, on_written) != 0) {
        free(w);
        conn_close(ac);
    }
}

static void respond(struct admin_conn *ac, int status, const char *ctype, const char *body,
                    size_t len)
{
    respond_allow(ac, status, ctype, body, len, NULL);
}

static void respond_json_error_allow(struct admin_conn *ac, int status, const char *msg,
                                     const char *allow)
{
    struct lv_buf b = LV_BUF_INIT;
    lv_buf_puts(&b, "{\"error\":\"");
    lv_buf_json_escape(&b, msg, strlen(msg));
    lv_buf_puts(&b, "\"}\n");
    respond_allow(ac, status, "application/json", b.data, b.len, allow);
    lv_buf_dispose(&b);
}

static void respond_json_error(struct admin_conn *ac, int status, const char *msg)
{
    respond_json_error_allow(ac, status, msg, NULL);
}

static void json_str(struct lv_buf *b, const char *s)
{
    if (!s) {
        lv_buf_puts(b, "null");
        return;
    }
    lv_buf_putc(b, '"');
    lv_buf_json_escape(b, s, strlen(s));
    lv_buf_putc(b, '"');
}

/* GET /status: the JSON document (README "Admin API"). */
static void status_json(struct lv_admin *a, struct lv_buf *b)
{
    struct lv_admin_status s;
    a->ops.status(a->ops.arg, &s);
    const struct lv_config *cfg = s.cfg;
    char when[40];
    time_t t = (time_t)s.loaded_at;
    struct tm tm;
    gmtime_r(&t, &tm);
    strftime(when, sizeof(when), "%Y-%m-%dT%H:%M:%SZ", &tm);
    lv_buf_puts(b, "{\"version\":\"" LEVEE_VERSION "\",\"generation\":");
    lv_buf_putu(b, s.generation);
    lv_buf_puts(b, ",\"loaded_at\":\"");
    lv_buf_puts(b, when);
    lv_buf_puts(b, "\",\"file\":");
    json_str(b, cfg->file);
    lv_buf_puts(b, ",\"last_reload\":");
    json_str(b, s.last_reload);
    lv_buf_printf(b, ",\"draining\":%s,\"client_connections\":%u", s.draining ? "true" : "false",
                  s.client_connections);
    lv_buf_puts(b, ",\"workers\":[");
    for (unsigned i = 0; i < s.workers; i++) {
        struct lv_admin_worker w;
        a->ops.worker(a->ops.arg, i, &w);
        lv_buf_printf(b, "%s{\"worker\":%u,\"connections\":%u,\"requests\":%llu}", i ? "," : "", i,
                      w.connections, (unsigned long long)w.requests);
    }
    lv_buf_putc(b, ']');
    size_t lua_bytes;
    unsigned lua_states;
    lv_config_lua_stats(&lua_bytes, &lua_states);
    lv_buf_printf(b, ",\"lua\":{\"states\":%u,\"bytes\":%zu,\"abandoned_loaders\":%u}", lua_states,
                  lua_bytes, lv_config_loaders_abandoned());
    lv_buf_printf(b, ",\"reloading\":%s", s.reloading ? "true" : "false");
    lv_buf_puts(b, ",\"routes\":[");
    for (size_t i = 0; i < cfg->nroutes; i++) {
        const struct lv_route_cfg *r = &cfg->routes[i];
        struct lv_admin_route route;
        a->ops.route(a->ops.arg, i, &route);
        const struct lv_admin_route *rs = &route;
        if (i)
            lv_buf_putc(b, ',');
        lv_buf_puts(b, "{\"name\":");
        json_str(b, r->name);
        lv_buf_puts(b, ",\"upstream\":");
        json_str(b, r->upstream->name);
        lv_buf_puts(b, ",\"requests\":");
        lv_buf_putu(b, rs->requests);
        uint64_t now = uv_now(a->tcp.loop);
        if (rs->breaker_enabled) {
            struct lv_breaker_stats st;
            lv_breaker_stats(rs->breaker, now, &st);
            lv_buf_printf(b,
                          ",\"breaker\":{\"enabled\":true,\"state\":\"%s\",\"open_left_ms\":%llu,"
                          "\"open_for_ms\":%llu,\"window\":{\"requests\":%llu,\"failures\":%llu,"
                          "\"slow\":%llu},\"consecutive_failures\":%u,\"probes_in_flight\":%u,"
                          "\"times_opened\":%llu}",
                          lv_breaker_state_name(st.state), (unsigned long long)st.open_left_ms,
                          (unsigned long long)st.open_for_ms, (unsigned long long)st.requests,
                          (unsigned long long)st.failures, (unsigned long long)st.slow,
                          st.consecutive, st.probes_in_flight, (unsigned long long)st.to_open);
        } else {
            lv_buf_puts(b, ",\"breaker\":{\"enabled\":false,\"state\":\"closed\"}");
        }
        if (rs->idem) {
            struct lv_idem_stats is;
            lv_idem_stats(rs->idem, &is);
            lv_buf_printf(b,
                          ",\"idempotency\":{\"store\":\"%s\",\"entries\":%llu,\"bytes\":%llu,"
                          "\"max_bytes\":%llu,\"connected\":%s}",
                          is.kind, (unsigned long long)is.entries, (unsigned long long)is.bytes,
                          (unsigned long long)is.max_bytes, is.connected ? "true" : "false");
        }
        if (r->rate_limit.enabled) {
            lv_buf_printf(
                b,
                ",\"rate_limit\":{\"rate\":%u,\"per_ms\":%llu,\"burst\":%u,\"store\":\"%s\","
                "\"mode\":\"%s\",\"limited\":%.0f,\"shadow_limited\":%.0f,"
                "\"store_errors\":%.0f,\"keys\":%llu}",
                r->rate_limit.rate, (unsigned long long)r->rate_limit.per_ms, r->rate_limit.burst,
                r->rate_limit.redis ? "redis" : "memory",
                r->rate_limit.shadow ? "shadow" : "enforce",
                rs->rate_limited ? lv_metric_value(rs->rate_limited) : 0.0,
                rs->rate_shadowed ? lv_metric_value(rs->rate_shadowed) : 0.0,
                rs->rate_store_errors ? lv_metric_value(rs->rate_store_errors) : 0.0,
                (unsigned long long)rs->rate_keys);
        }
        if (rs->bulkhead) {
            lv_buf_printf(b,
                          ",\"concurrency\":{\"limit\":%u,\"adaptive\":%s,\"inflight\":%u,"
                          "\"queued\":%u,\"rejected\":%llu",
                          rs->limit, rs->adaptive ? "true" : "false", rs->inflight, rs->queued,
                          (unsigned long long)rs->concurrency_rejected);
            if (rs->adaptive)
                lv_buf_printf(b, ",\"short_rtt_ms\":%.3f,\"long_rtt_ms\":%.3f", rs->short_rtt_ms,
                              rs->long_rtt_ms);
            lv_buf_putc(b, '}');
        }
        uint64_t breq = 0, bret = 0, bavail = 0;
        lv_budget_stats(rs->budget, now, &breq, &bret, &bavail);
        lv_buf_printf(b, ",\"budget\":{\"requests\":%llu,\"retries\":%llu,\"available\":%llu}",
                      (unsigned long long)breq, (unsigned long long)bret,
                      (unsigned long long)bavail);
        /* Counters for the dashboard (README "Admin API"): answers by status class, retries,
         * and the levee_request_duration_seconds buckets (each alone, +Inf last). */
        const uint64_t *cls = rs->by_class;
        lv_buf_printf(b,
                      ",\"by_class\":{\"1xx\":%llu,\"2xx\":%llu,\"3xx\":%llu,\"4xx\":%llu,"
                      "\"5xx\":%llu},\"retries\":%llu,\"budget_exhausted\":%llu,"
                      "\"breaker_rejected\":%llu,\"duration\":{\"sum\":%.6f,\"le\":[",
                      (unsigned long long)cls[1], (unsigned long long)cls[2],
                      (unsigned long long)cls[3], (unsigned long long)cls[4],
                      (unsigned long long)cls[5], (unsigned long long)lv_metric_value(rs->retries),
                      (unsigned long long)lv_metric_value(rs->budget_exhausted),
                      (unsigned long long)lv_metric_value(rs->breaker_rejected),
                      lv_metric_sum(rs->duration));
        for (size_t k = 0; k < LV_METRIC_DEFAULT_NBUCKETS; k++)
            lv_buf_printf(b, "%s%g", k ? "," : "", lv_metric_default_buckets[k]);
        lv_buf_puts(b, "],\"counts\":[");
        for (size_t k = 0; k <= LV_METRIC_DEFAULT_NBUCKETS; k++)
            lv_buf_printf(b, "%s%llu", k ? "," : "",
                          (unsigned long long)lv_metric_bucket(rs->duration, k));
        lv_buf_puts(b, "]}");
        lv_buf_putc(b, '}');
    }
    lv_buf_puts(b, "],\"upstreams\":[");
    uint64_t now = uv_now(a->tcp.loop);
    for (size_t i = 0; i < s.nupstreams; i++) {
        struct lv_upstream *up = s.upstreams[i];
        if (i)
            lv_buf_putc(b, ',');
        lv_buf_puts(b, "{\"name\":");
        json_str(b, up->name);
        lv_buf_puts(b, ",\"balance\":");
        json_str(b, up->cfg->balance == LV_BALANCE_LEAST_REQUEST ? "least_request" : "round_robin");
        struct lv_admin_upstream su;
        a->ops.upstream(a->ops.arg, i, &su);
        lv_upstream_health_lock(up); /* every worker's outcomes feed it (README "Workers") */
        lv_buf_printf(b, ",\"waiting\":%u,\"panic\":%s,\"panic_picks\":%llu,\"servers\":[",
                      su.waiting, up->health->g.panic ? "true" : "false",
                      (unsigned long long)su.panic_picks);
        for (size_t k = 0; k < up->nservers; k++) {
            struct lv_upserver *sv = &up->servers[k];
            struct lv_admin_server sum;
            a->ops.server(a->ops.arg, i, k, &sum);
            if (k)
                lv_buf_putc(b, ',');
            lv_buf_puts(b, "{\"name\":");
            json_str(b, sv->name);
            lv_buf_printf(
                b,
                ",\"addresses\":%d,\"active\":%u,\"idle\":%u,\"inflight\":%u,"
                "\"connects\":%llu,\"connect_failures\":%llu,\"tls_resumed\":%llu",
                sv->naddrs, sum.active, sum.idle, sum.inflight, (unsigned long long)sum.connects,
                (unsigned long long)sum.connect_failures, (unsigned long long)sum.tls_resumed);
            /* health (README, "Upstream health") */
            const struct lv_server_health *hs = &up->health->g.servers[k];
            lv_buf_puts(b, ",\"state\":");
            json_str(b, lv_server_state_name(hs->state));
            lv_buf_puts(b, ",\"reason\":");
            json_str(b, hs->reason);
            lv_buf_printf(b,
                          ",\"eject_left_ms\":%llu,\"consecutive_failures\":%u,\"ejections\":%llu,"
                          "\"ejections_dry\":%llu,\"weight\":%.3f",
                          (unsigned long long)lv_health_eject_left(&up->health->g, k, now),
                          hs->consecutive_failures, (unsigned long long)hs->ejections_enforced,
                          (unsigned long long)hs->ejections_dry,
                          lv_health_weight(&up->health->g, k, now));
            if (sv->last_check[0]) {
                lv_buf_puts(b, ",\"last_check\":{\"result\":");
                json_str(b, sv->last_check);
                lv_buf_printf(b, ",\"ok\":%s,\"ms\":%.1f,\"at\":%.3f}",
                              sv->last_check_ok ? "true" : "false", sv->last_check_ms,
                              sv->last_check_unix);
            } else {
                lv_buf_puts(b, ",\"last_check\":null");
            }
            lv_buf_putc(b, '}');
        }
        lv_upstream_health_unlock(up);
        lv_buf_puts(b, "]}");
    }
    lv_buf_puts(b, "]}\n");
}

/* The answer of POST /reload, when its load ends. */
static void reload_done(void *arg, int rc, uint64_t generation, const char *errors, size_t len)
{
    struct admin_conn *ac = arg;
    ac->reloading = false;
    struct lv_buf b = LV_BUF_INIT;
    if (rc == 0) {
        lv_buf_printf(&b, "{\"result\":\"ok\",\"generation\":%llu}\n",
                      (unsigned long long)generation);
        respond(ac, 200, "application/json", b.data, b.len);
        lv_buf_dispose(&b);
        return;
    }
    lv_buf_puts(&b, "{\"result\":\"error\",\"errors\":[");
    size_t start = 0, n = 0;
    for (size_t i = 0; i <= len; i++) {
        if (i < len && errors[i] != '\n')
            continue;
        if (i > start) {
            if (n++)
                lv_buf_putc(&b, ',');
            lv_buf_putc(&b, '"');
            lv_buf_json_escape(&b, errors + start, i - start);
            lv_buf_putc(&b, '"');
        }
        start = i + 1;
    }
    lv_buf_puts(&b, "]}\n");
    respond(ac, 400, "application/json", b.data, b.len);
    lv_buf_dispose(&b);
}

/* The workers' numbers are in: the answer to GET /status or /metrics. */
static void collected(void *req)
{
    struct admin_conn *ac = req;
    struct lv_admin *a = ac->admin;
    ac->collecting = false;
    struct lv_buf b = LV_BUF_INIT;
    if (ac->want_metrics) {
        a->ops.metrics(a->ops.arg, &b);
        respond(ac, 200, "text/plain; version=0.0.4", b.data ? b.data : "", b.len);
    } else {
        status_json(a, &b);
        respond(ac, 200, "application/json", b.data, b.len);
    }
    lv_buf_dispose(&b);
}

static void handle(struct admin_conn *ac)
{
    struct lv_admin *a = ac->admin;
    struct lv_field fields[64];
    struct lv_reqhead h;
    if (lv_reqhead_parse(&h, ac->in.data, ac->hs.head_len, fields, 64) != 0) {
        respond_json_error(ac, 400, h.reason ? h.reason : "bad request");
        return;
    }
    const char *m = lv_method_name(h.method);
    bool get = strcmp(m, "GET") == 0 || strcmp(m, "HEAD") == 0;
    bool post = strcmp(m, "POST") == 0;
#define PATH_IS(lit) (h.path.len == sizeof(lit) - 1 && memcmp(h.path.p, lit, sizeof(lit) - 1) == 0)
    struct lv_buf b = LV_BUF_INIT;
    if (PATH_IS("/healthz") && get) {
        struct lv_admin_status s;
        a->ops.status(a->ops.arg, &s);
        if (s.draining)
            respond(ac, 503, "text/plain", "draining\n", 9);
        else
            respond(ac, 200, "text/plain", "ok\n", 3);
    } else if ((PATH_IS("/metrics") || PATH_IS("/status")) && get) {
        /* Every worker copies its numbers on its own thread first (README "Workers"). */
        ac->done = true;
        uv_read_stop((uv_stream_t *)&ac->tcp);
        ac->collecting = true;
        ac->want_metrics = PATH_IS("/metrics");
        a->ops.collect(a->ops.arg, collected, ac);
    } else if (PATH_IS("/reload") && post) {
        /* Answered when the load ends (off the loop, bounded: README "Reload"); nothing more
         * is read from this connection meanwhile, and its idle timer does not apply. */
        ac->done = true;
        uv_read_stop((uv_stream_t *)&ac->tcp);
        uv_timer_stop(&ac->timer);
        ac->reloading = true;
        a->ops.reload(a->ops.arg, reload_done, ac);
    } else if (a->ops.faults && lv_faultapi_path(h.path.p, h.path.len)) {
        if (h.chunked) {
            respond_json_error(ac, 411, "send the body with a Content-Length");
        } else if (h.content_length > ADMIN_MAX_BODY) {
            respond_json_error(ac, 413, "body larger than 64 KiB");
        } else if (ac->in.len < ac->hs.head_len + h.content_length) {
            ac->want = ac->hs.head_len + h.content_length; /* on_read calls again */
        } else {
            struct lv_admin_status s;
            a->ops.status(a->ops.arg, &s);
            const char *allow = NULL;
            int st =
                lv_faultapi_handle(a->ops.faults(a->ops.arg), s.cfg, m, h.path.p, h.path.len,
                                   ac->in.data + ac->hs.head_len, h.content_length, &b, &allow);
            respond_allow(ac, st, "application/json", b.data ? b.data : "", b.len, allow);
        }
    } else if (PATH_IS("/") && get) {
        respond(ac, 200, "text/html; charset=utf-8", lv_dashboard_html, strlen(lv_dashboard_html));
    } else if (PATH_IS("/reload")) {
        respond_json_error_allow(ac, 405, "method not allowed", "POST");
    } else if (PATH_IS("/healthz") || PATH_IS("/metrics") || PATH_IS("/status") || PATH_IS("/")) {
        respond_json_error_allow(ac, 405, "method not allowed", "GET, HEAD");
    } else {
        respond_json_error(ac, 404, "not found");
    }
#undef PATH_IS
    lv_buf_dispose(&b);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct admin_conn *ac = h->data;
    buf->base = lv_buf_reserve(&ac->in, 4096);
    buf->len = ac->in.cap - ac->in.len;
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    struct admin_conn *ac = st->data;
    if (ac->done || nread == 0)
        return;
    if (nread < 0) {
        conn_close(ac);
        return;
    }
    ac->in.len += (size_t)nread;
    if (ac->want) {
        if (ac->in.len >= ac->want)
            handle(ac);
        else if (ac->in.len > ADMIN_MAX_HEAD + ADMIN_MAX_BODY)
            conn_close(ac);
        return;
    }
    enum lv_headscan_result r = lv_headscan_feed(&ac->hs, ac->in.data, ac->in.len);
    if (r == LV_HEADSCAN_MORE)
        return;
    if (r == LV_HEADSCAN_ERROR) {
        respond_json_error(ac, ac->hs.status, ac->hs.reason);
        return;
    }
    handle(ac);
}

static void on_timeout(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_connection(uv_stream_t *ls, int status)
{
    struct lv_admin *a = ls->data;
    if (status < 0)
        return;
    struct admin_conn *ac = lv_xcalloc(1, sizeof(*ac));
    ac->admin = a;
    uv_tcp_init(ls->loop, &ac->tcp);
    uv_timer_init(ls->loop, &ac->timer);
    ac->tcp.data = ac->timer.data = ac;
    ac->open = 2;
    lv_dlist_push(&a->conns, &ac->link);
    if (uv_accept(ls, (uv_stream_t *)&ac->tcp) != 0) {
        conn_close(ac);
        return;
    }
    lv_headscan_init(&ac->hs, false, ADMIN_MAX_HEAD, 8192, 100);
    uv_timer_start(&ac->timer, on_timeout, 10000, 0);
    uv_read_start((uv_stream_t *)&ac->tcp, on_alloc, on_read);
}

struct lv_admin *lv_admin_start(uv_loop_t *loop, const struct lv_hostport *addr,
                                const struct lv_admin_ops *ops)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    const char *host = strcmp(addr->host, "localhost") == 0 ? "127.0.0.1" : addr->host;
    if (lv_addr_from_ip(host, addr->port, &ss) < 0) {
        lv_error("admin %s:%u: not an IP address", addr->host, addr->port);
        return NULL;
    }
    struct lv_admin *a = lv_xcalloc(1, sizeof(*a));
    a->ops = *ops;
    lv_dlist_init(&a->conns);
    uv_tcp_init(loop, &a->tcp);
    a->tcp.data = a;
    int rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&a->tcp, 128, on_connection);
    if (rc != 0) {
        lv_error("admin %s:%u: %s", addr->host, addr->port, uv_strerror(rc));
        uv_close((uv_handle_t *)&a->tcp, (uv_close_cb)free);
        return NULL;
    }
    lv_info("admin API on %s:%u", addr->host, addr->port);
    return a;
}

static void admin_closed(uv_handle_t *h)
{
    free(h->data);
}

void lv_admin_stop(struct lv_admin *a)
{
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &a->conns) conn_close(lv_dlist_entry(l, struct admin_conn, link));
    uv_close((uv_handle_t *)&a->tcp, admin_closed);
}
