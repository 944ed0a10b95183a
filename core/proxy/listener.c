#include "proxy/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "base/addr.h"
#include "base/inbox.h"
#include "base/log.h"
#include "net/tls.h"
#include "proxy/client.h"
#include "proxy/server.h"

/* ---- one listener */

/* accept = "shared" (README "Workers"): every worker polls the one socket and whichever wakes
 * first accepts, which says nothing of how busy it is; so the connection goes to the worker
 * with the fewest connections, handed over through its inbox when that is another one. */
struct handoff {
    struct lv_inbox_msg base;
    struct lv_server *to;
    int fd;
    struct lv_tls_ctx *tls; /* one reference, or NULL */
};

static void run_handoff(struct lv_inbox_msg *m)
{
    struct handoff *h = (struct handoff *)m;
    atomic_fetch_sub(&h->to->sh->incoming[h->to->worker], 1);
    if (h->to->draining)
        close(h->fd);
    else
        lv_client_adopt(h->to, h->fd, h->tls);
    if (h->tls)
        lv_tls_ctx_free(h->tls);
    free(h);
}

static unsigned least_busy(const struct lv_server *s)
{
    const struct lv_server_shared *sh = s->sh;
    unsigned best = s->worker;
    unsigned min = atomic_load_explicit(&sh->conns[best], memory_order_relaxed) +
                   atomic_load_explicit(&sh->incoming[best], memory_order_relaxed);
    for (unsigned i = 0; i < sh->nworkers; i++) {
        unsigned n = atomic_load_explicit(&sh->conns[i], memory_order_relaxed) +
                     atomic_load_explicit(&sh->incoming[i], memory_order_relaxed);
        if (n < min) {
            min = n;
            best = i;
        }
    }
    return best;
}

static void on_connection(uv_stream_t *ls, int status)
{
    struct lv_listener *l = ls->data;
    struct lv_server *s = l->server;
    if (status < 0) {
        lv_warn("accept on %s: %s", l->name, uv_strerror(status));
        return;
    }
    unsigned to = l->balance && !s->draining ? least_busy(s) : s->worker;
    if (to == s->worker) {
        lv_client_accept(s, ls, l->tls_ctx);
        return;
    }
    /* Take the socket out of this loop: accept into a handle, keep a duplicate of its fd. */
    uv_tcp_t *t = lv_xmalloc(sizeof(*t));
    uv_tcp_init(s->loop, t);
    uv_os_fd_t fd = -1;
    int dup_fd = -1;
    if (uv_accept(ls, (uv_stream_t *)t) == 0 && uv_fileno((uv_handle_t *)t, &fd) == 0)
        dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
    uv_close((uv_handle_t *)t, (uv_close_cb)free);
    if (dup_fd < 0)
        return;
    struct handoff *h = lv_xmalloc(sizeof(*h));
    h->base.run = run_handoff;
    h->to = s->sh->servers[to];
    h->fd = dup_fd;
    h->tls = l->tls_ctx ? lv_tls_ctx_ref(l->tls_ctx) : NULL;
    atomic_fetch_add(&s->sh->incoming[to], 1);
    lv_inbox_post(s->sh->inboxes[to], &h->base);
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

/* Binds and listens on one socket for `ss` (SO_REUSEPORT when `reuseport`): the fd, or a
 * negative libuv error. Plain syscalls: the main thread binds for every worker's loop. */
static int bind_socket(const struct sockaddr_storage *ss, bool reuseport)
{
    int fd = socket(ss->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return uv_translate_sys_error(errno);
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (reuseport)
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    socklen_t len =
        ss->ss_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
    if (bind(fd, (const struct sockaddr *)ss, len) != 0 || listen(fd, 1024) != 0) {
        int err = uv_translate_sys_error(errno);
        close(fd);
        return err;
    }
    return fd;
}

/* The sockets of one new listener, one per worker (README "Workers"): `shared`, one socket
 * and a duplicate of it per other worker; `reuseport`, a socket per worker bound with
 * SO_REUSEPORT. One worker never sets SO_REUSEPORT: a second levee on the same port must fail
 * loudly rather than silently share it. */
static int open_sockets(const char *where, const struct lv_listen_cfg *lc, unsigned nworkers,
                        enum lv_accept_mode mode, int *fds, struct lv_buf *errors)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    const char *host = strcmp(lc->addr.host, "localhost") == 0 ? "127.0.0.1" : lc->addr.host;
    if (lv_addr_from_ip(host, lc->addr.port, &ss) < 0) {
        lv_buf_printf(errors, "%s: listen %s:%u: not an IP address\n", where, lc->addr.host,
                      lc->addr.port);
        return UV_EINVAL;
    }
    bool reuseport = nworkers > 1 && mode == LV_ACCEPT_REUSEPORT;
    int rc = 0;
    for (unsigned w = 0; w < nworkers && rc == 0; w++) {
        if (w > 0 && !reuseport) {
            fds[w] = fcntl(fds[0], F_DUPFD_CLOEXEC, 0);
            if (fds[w] < 0)
                rc = uv_translate_sys_error(errno);
        } else {
            fds[w] = bind_socket(&ss, reuseport);
            if (fds[w] < 0)
                rc = fds[w];
        }
    }
    if (rc != 0) {
        lv_buf_printf(errors, "%s: listen %s:%u: %s\n", where, lc->addr.host, lc->addr.port,
                      uv_strerror(rc));
        for (unsigned w = 0; w < nworkers; w++) {
            if (fds[w] >= 0)
                close(fds[w]);
            fds[w] = -1;
        }
    }
    return rc;
}

/* A listener of this worker on `fd` (taken). */
static struct lv_listener *listener_open(struct lv_server *s, const struct lv_listen_cfg *lc,
                                         struct lv_tls_ctx *tls, int fd, bool balance)
{
    struct lv_listener *l = lv_xcalloc(1, sizeof(*l));
    l->server = s;
    l->balance = balance;
    l->tls_ctx = tls;
    l->addr.host = lv_xstrdup(lc->addr.host);
    l->addr.port = lc->addr.port;
    snprintf(l->name, sizeof(l->name), "%s:%u", lc->addr.host, lc->addr.port);
    uv_tcp_init(s->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
    else
        close(fd);
    if (rc != 0)
        lv_error("listen %s: %s", l->name, uv_strerror(rc)); /* bound already: not expected */
    else if (s->worker == 0)
        lv_info("listening on %s", l->name);
    return l;
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

void lv_listen_plan_free(struct lv_listen_plan *p)
{
    for (size_t i = 0; i < p->n * p->nworkers; i++)
        if (p->fds[i] >= 0)
            close(p->fds[i]);
    for (size_t i = 0; i < p->n; i++)
        if (p->tls[i])
            lv_tls_ctx_free(p->tls[i]);
    free(p->keep);
    free(p->fds);
    free(p->tls);
    memset(p, 0, sizeof(*p));
}

int lv_listeners_prepare(struct lv_listeners *ls, const struct lv_config *cfg, unsigned nworkers,
                         enum lv_accept_mode mode, struct lv_listen_plan *p, struct lv_buf *errors)
{
    struct lv_server *s = ls->server;
    const char *where = s->config_path ? s->config_path : "levee";
    size_t n = cfg->nlistens;
    p->n = n;
    p->nworkers = nworkers;
    p->mode = mode;
    p->keep = lv_xcalloc(n + 1, sizeof(*p->keep));
    p->fds = lv_xcalloc(n * nworkers + 1, sizeof(*p->fds));
    p->tls = lv_xcalloc(n + 1, sizeof(*p->tls));
    for (size_t i = 0; i < n * nworkers; i++)
        p->fds[i] = -1;
    bool *taken = lv_xcalloc(ls->n + 1, sizeof(*taken));
    int rc = 0;
    /* Unchanged addresses keep their sockets (no accept gap), with the certificate loaded
     * again; new ones are bound now, and closed again if the reload is refused. Every
     * certificate is loaded before any new socket listens, so the ports open together. */
    for (size_t i = 0; i < n; i++) {
        const struct lv_listen_cfg *lc = &cfg->listens[i];
        p->keep[i] = -1;
        for (size_t j = 0; j < ls->n; j++) {
            if (!taken[j] && strcmp(ls->items[j]->addr.host, lc->addr.host) == 0 &&
                ls->items[j]->addr.port == lc->addr.port &&
                (ls->items[j]->tls_ctx != NULL) == (lc->tls_cert != NULL)) {
                taken[j] = true;
                p->keep[i] = (int)j;
                break;
            }
        }
        if (lc->tls_cert) {
            p->tls[i] = listener_tls(s, lc, errors);
            if (!p->tls[i])
                rc = UV_EINVAL;
        }
    }
    free(taken);
    for (size_t i = 0; i < n && rc == 0; i++)
        if (p->keep[i] < 0)
            rc = open_sockets(where, &cfg->listens[i], nworkers, mode, &p->fds[i * nworkers],
                              errors);
    if (rc != 0)
        lv_listen_plan_free(p);
    return rc;
}

void lv_listeners_commit(struct lv_listeners *ls, const struct lv_config *cfg,
                         struct lv_listen_plan *p, unsigned worker)
{
    struct lv_listener **use = lv_xcalloc(p->n + 1, sizeof(*use));
    bool *kept = lv_xcalloc(ls->n + 1, sizeof(*kept));
    for (size_t i = 0; i < p->n; i++) {
        struct lv_tls_ctx *tls = p->tls[i] ? lv_tls_ctx_ref(p->tls[i]) : NULL;
        if (p->keep[i] >= 0) {
            kept[p->keep[i]] = true;
            use[i] = ls->items[p->keep[i]];
            if (tls) {
                lv_tls_ctx_free(use[i]->tls_ctx); /* connections hold their own references */
                use[i]->tls_ctx = tls;
            }
        } else {
            int *fd = &p->fds[i * p->nworkers + worker];
            use[i] = listener_open(ls->server, &cfg->listens[i], tls, *fd,
                                   p->nworkers > 1 && p->mode == LV_ACCEPT_SHARED);
            *fd = -1; /* taken */
        }
    }
    for (size_t j = 0; j < ls->n; j++)
        if (!kept[j])
            listener_close(ls->items[j]);
    free(kept);
    free(ls->items);
    ls->items = use;
    ls->n = p->n;
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
    if (s->worker == 0) /* one line for the process: every worker drains alike */
        lv_info("shutting down: finishing %u connections (drain_timeout %llums)",
                lv_client_count_all(s), (unsigned long long)drain_timeout_ms);
    for (size_t i = 0; i < ls->n; i++)
        listener_close(ls->items[i]);
    ls->n = 0;
    s->on_client_closed = maybe_drained;
    s->on_client_closed_arg = ls;
    lv_client_drain_idle(s);
    uv_timer_start(&ls->drain_timer, on_drain_timeout, drain_timeout_ms, 0);
    maybe_drained(ls);
}
