#include "proxy/listener.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/addr.h"
#include "base/log.h"
#include "net/tls.h"
#include "proxy/client.h"
#include "proxy/server.h"

/* ---- one listener */

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

/* The TLS context of a new HTTPS listener (NULL and a line in `errors` when it fails). */
static struct lv_tls_ctx *listener_tls(struct lv_server *s, const struct lv_listen_cfg *lc,
                                       struct lv_buf *errors)
{
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *ctx = lv_tls_server_ctx(lc->tls_cert, lc->tls_key, &err);
    if (!ctx)
        lv_buf_printf(errors, "%s: listen %s:%u: TLS: %.*s\n",
                      s->config_path ? s->config_path : "levee", lc->addr.host, lc->addr.port,
                      (int)err.len, err.data ? err.data : "");
    lv_buf_dispose(&err);
    return ctx;
}

/* Opens (binds, listens) one listener with its TLS context `tls` (taken; NULL: plain); a
 * failure is appended to `errors` as one line. */
static int listener_open(struct lv_server *s, const struct lv_listen_cfg *lc,
                         struct lv_tls_ctx *tls, struct lv_listener **out, struct lv_buf *errors)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    const char *host = strcmp(lc->addr.host, "localhost") == 0 ? "127.0.0.1" : lc->addr.host;
    if (lv_addr_from_ip(host, lc->addr.port, &ss) < 0) {
        lv_buf_printf(errors, "%s: listen %s:%u: not an IP address\n",
                      s->config_path ? s->config_path : "levee", lc->addr.host, lc->addr.port);
        if (tls)
            lv_tls_ctx_free(tls);
        return UV_EINVAL;
    }
    int family = ss.ss_family;
    struct lv_listener *l = lv_xcalloc(1, sizeof(*l));
    l->server = s;
    l->tls_ctx = tls;
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

/* ---- the set in force, and reloads */

void lv_listeners_init(struct lv_listeners *ls, struct lv_server *s)
{
    memset(ls, 0, sizeof(*ls));
    ls->server = s;
    uv_timer_init(s->loop, &ls->drain_timer);
    ls->drain_timer.data = ls;
}

void lv_listeners_undo(struct lv_listen_plan *p)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->opened[i] && p->use[i])
            listener_close(p->use[i]);
        if (p->tls[i])
            lv_tls_ctx_free(p->tls[i]);
    }
    free(p->use);
    free(p->opened);
    free(p->tls);
    free(p->kept);
    memset(p, 0, sizeof(*p));
}

int lv_listeners_prepare(struct lv_listeners *ls, const struct lv_config *cfg,
                         struct lv_listen_plan *p, struct lv_buf *errors)
{
    struct lv_server *s = ls->server;
    size_t n = cfg->nlistens;
    p->n = n;
    p->use = lv_xcalloc(n + 1, sizeof(*p->use));
    p->opened = lv_xcalloc(n + 1, sizeof(*p->opened));
    p->tls = lv_xcalloc(n + 1, sizeof(*p->tls));
    p->kept = lv_xcalloc(ls->n + 1, sizeof(*p->kept));
    int rc = 0;
    /* Every certificate is loaded before any new socket listens, so the ports open together
     * (a client that found one of them open finds the others open too). */
    struct lv_tls_ctx **fresh_tls = lv_xcalloc(n + 1, sizeof(*fresh_tls));
    /* Unchanged addresses keep their sockets (no accept gap), with the certificate loaded
     * again; new ones are bound now, and closed again if the reload is refused. */
    for (size_t i = 0; i < n; i++) {
        const struct lv_listen_cfg *lc = &cfg->listens[i];
        for (size_t j = 0; j < ls->n; j++) {
            if (!p->kept[j] && strcmp(ls->items[j]->addr.host, lc->addr.host) == 0 &&
                ls->items[j]->addr.port == lc->addr.port &&
                (ls->items[j]->tls_ctx != NULL) == (lc->tls_cert != NULL)) {
                p->kept[j] = true;
                p->use[i] = ls->items[j];
                break;
            }
        }
        if (lc->tls_cert) {
            struct lv_tls_ctx *ctx = listener_tls(s, lc, errors);
            if (!ctx)
                rc = UV_EINVAL;
            else if (p->use[i])
                p->tls[i] = ctx; /* swapped in at commit */
            else
                fresh_tls[i] = ctx;
        }
    }
    for (size_t i = 0; i < n; i++) {
        const struct lv_listen_cfg *lc = &cfg->listens[i];
        if (!p->use[i] && !(lc->tls_cert && !fresh_tls[i])) { /* a failed certificate: said */
            int r = listener_open(s, lc, fresh_tls[i], &p->use[i], errors);
            fresh_tls[i] = NULL; /* taken */
            if (r != 0) {
                p->use[i] = NULL;
                if (!rc)
                    rc = r;
            } else {
                p->opened[i] = true;
            }
        }
    }
    free(fresh_tls); /* every context was taken by its listener */
    if (rc != 0)
        lv_listeners_undo(p);
    return rc;
}

void lv_listeners_commit(struct lv_listeners *ls, struct lv_listen_plan *p)
{
    for (size_t i = 0; i < p->n; i++) {
        if (p->tls[i]) {
            lv_tls_ctx_free(p->use[i]->tls_ctx); /* connections hold their own references */
            p->use[i]->tls_ctx = p->tls[i];
            p->tls[i] = NULL;
        }
    }
    for (size_t j = 0; j < ls->n; j++)
        if (!p->kept[j])
            listener_close(ls->items[j]);
    free(ls->items);
    ls->items = p->use;
    ls->n = p->n;
    p->use = NULL;
    free(p->opened);
    free(p->tls);
    free(p->kept);
    memset(p, 0, sizeof(*p));
}

void lv_listeners_tick(struct lv_listeners *ls)
{
    lv_client_refused_log_tick(ls->server);
}

/* ---- the drain at shutdown */

static void drain_timer_closed(uv_handle_t *h)
{
    struct lv_listeners *ls = h->data;
    free(ls->items);
    ls->items = NULL;
    ls->n = 0;
    ls->on_drained(ls->on_drained_arg);
}

static void maybe_drained(void *arg)
{
    struct lv_listeners *ls = arg;
    if (ls->drained || ls->server->nclients > 0)
        return;
    ls->drained = true;
    ls->server->on_client_closed = NULL;
    uv_timer_stop(&ls->drain_timer);
    uv_close((uv_handle_t *)&ls->drain_timer, drain_timer_closed);
}

static void on_drain_timeout(uv_timer_t *t)
{
    struct lv_listeners *ls = t->data;
    lv_warn("drain_timeout reached with %u connections open: closing them", ls->server->nclients);
    lv_client_close_all(ls->server);
}

void lv_listeners_drain(struct lv_listeners *ls, uint64_t drain_timeout_ms, void (*done)(void *arg),
                        void *arg)
{
    struct lv_server *s = ls->server;
    if (s->draining)
        return;
    s->draining = true;
    ls->on_drained = done;
    ls->on_drained_arg = arg;
    lv_info("shutting down: finishing %u connections (drain_timeout %llums)", s->nclients,
            (unsigned long long)drain_timeout_ms);
    for (size_t i = 0; i < ls->n; i++)
        listener_close(ls->items[i]);
    ls->n = 0;
    s->on_client_closed = maybe_drained;
    s->on_client_closed_arg = ls;
    lv_client_drain_idle(s);
    uv_timer_start(&ls->drain_timer, on_drain_timeout, drain_timeout_ms, 0);
    maybe_drained(ls);
}
