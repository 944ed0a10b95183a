/*
 * levee: command line (README, "Command line"). `levee [-c FILE]` runs the gateway, `levee check
 * FILE` validates a configuration, `levee dev URL [--listen ADDR]` runs a local dev proxy.
 *
 * The composition root: the server's state (proxy/server), its listeners and connections
 * (proxy/listener), reloads (proxy/reload) and the admin API (admin/admin, through its
 * interface) are wired together here, with the signals and the shutdown.
 */
#include <hiredis/hiredis.h>
#include <llhttp.h>
#include <lua.h>
#include <openssl/crypto.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "admin/admin.h"
#include "base/inbox.h"
#include "base/log.h"
#include "net/tls.h"
#include "proxy/generation.h"
#include "proxy/listener.h"
#include "proxy/reload.h"
#include "proxy/server.h"
#include "proxy/workers.h"
#include "script/config.h"
#include "testing/testcmd.h"

static void usage(FILE *f)
{
    fputs("usage: levee [-c FILE]              run the gateway (default FILE: ./levee.lua)\n"
          "       levee check FILE             validate FILE: prints ok or FILE:LINE: errors\n"
          "       levee dev URL [--listen ADDR] [--admin ADDR|off] [--policy FILE]\n"
          "                 [--fault SPEC]... [--json]\n"
          "                                    local dev proxy in front of URL (README \"levee "
          "dev\")\n"
          "       levee test [-c FILE] [SPEC...] run policy specs offline (levee.testing)\n"
          "       levee --version | --help\n"
          "options: -c FILE  configuration file;  -v  debug logging\n",
          f);
}

/* A usage error (README "Command line"): what was wrong, then the usage; exit code 2. */
static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    usage(stderr);
    return 2;
}

/* `levee check`: a listener's key must load and match its certificate. */
static bool check_tls_pair(const char *cert, const char *key, struct lv_buf *err)
{
    struct lv_tls_ctx *ctx = lv_tls_server_ctx(cert, key, err);
    if (!ctx)
        return false;
    lv_tls_ctx_free(ctx);
    return true;
}

/* Exit codes (README "Command line"): 0 valid (warnings allowed), 1 invalid. */
static int cmd_check(const char *file)
{
    struct lv_buf errors = LV_BUF_INIT;
    lv_config_check_mode(check_tls_pair);
    struct lv_config *cfg = lv_config_load(file, NULL, &errors);
    if (!cfg) {
        if (errors.len)
            fwrite(errors.data, 1, errors.len, stdout);
        if (errors.len && errors.data[errors.len - 1] != '\n')
            putchar('\n');
        lv_buf_dispose(&errors);
        return 1;
    }
    lv_config_unpin(cfg);
    if (errors.len)
        fwrite(errors.data, 1, errors.len, stdout); /* the warnings */
    lv_buf_dispose(&errors);
    puts("ok");
    return 0;
}

/* ---- the gateway: worker loops (proxy/workers.h), the first on the main thread */

struct collect;

struct app {
    uv_loop_t loop;
    struct lv_workers ws;
    struct lv_server *server; /* worker 0's: reloads, signals and the admin API live beside it */
    struct lv_reloader reloader;
    struct lv_admin *admin;
    uv_signal_t sig_term, sig_int, sig_hup, sig_quit, sig_usr1, sig_usr2;
    uv_timer_t tick;
    int exit_code;
    bool worker0_drained;
    bool stopping;
    /* /status reads a route's breaker and budget from these copies (made under its lock) */
    struct lv_breaker route_breaker;
    struct lv_budget route_budget;
    struct collect *collects; /* scrapes waiting for the workers' numbers */
};

/* What one configuration brings to every worker: its copy of the configuration, the listener
 * sockets and whether an access log is on. */
struct install {
    struct app *app;
    struct lv_config **cfgs;      /* per worker, one reference each */
    struct lv_idem ***owner_refs; /* per worker >= 1: lv_server_owner_refs */
    struct lv_listen_plan plan;
    struct lv_log_files logs;
    uint64_t number;
    bool reload; /* answer the reloader when done */
};

static void install_on_worker(struct lv_worker *w, void *arg)
{
    struct install *in = arg;
    struct lv_config *cfg = in->cfgs[w->index];
    in->cfgs[w->index] = NULL;
    lv_listeners_commit(&w->listeners, cfg, &in->plan, w->index);
    struct lv_idem **refs = in->owner_refs[w->index];
    in->owner_refs[w->index] = NULL;
    lv_server_install_worker(&w->server, cfg, in->number, in->logs.access_fd >= 0, refs);
}

static void install_done(void *arg)
{
    struct install *in = arg;
    struct app *app = in->app;
    /* No worker writes to the old log files any more: they close now. */
    lv_server_commit_logs(app->server, &in->logs);
    lv_listen_plan_free(&in->plan);
    free(in->cfgs);
    free(in->owner_refs);
    bool reload = in->reload;
    free(in);
    if (reload)
        lv_reload_applied(&app->reloader);
}

/* Puts `cfg` in force (start and reloads), all or nothing (README "Operations"): whatever can
 * fail (new listeners bound, certificates loaded, log files opened) is done before anything
 * is swapped; a failure undoes it and refuses the configuration. Then the route states take
 * its settings and every worker installs it (its own copy when routes have hooks). */
static int apply(struct app *app, struct lv_config *cfg, struct lv_buf *errors, bool reload)
{
    struct lv_workers *ws = &app->ws;
    struct install *in = lv_xcalloc(1, sizeof(*in));
    in->app = app;
    in->reload = reload;
    int rc = lv_listeners_prepare(&ws->w[0].listeners, cfg, ws->n, cfg->accept, &in->plan, errors);
    int rc_logs = lv_server_open_logs(app->server, cfg, &in->logs, errors);
    if (rc != 0 || rc_logs != 0) {
        if (rc == 0)
            lv_listen_plan_free(&in->plan);
        if (rc_logs == 0)
            lv_server_close_logs(&in->logs);
        free(in);
        return rc != 0 ? rc : rc_logs;
    }
    if (reload && cfg->workers != 0 && cfg->workers != ws->n)
        lv_warn("workers = %u: the number of workers changes at the next start (%u run now)",
                cfg->workers, ws->n);
    in->number = app->server->generation + 1;
    in->cfgs = lv_xcalloc(ws->n, sizeof(*in->cfgs));
    for (unsigned i = 0; i < ws->n; i++) {
        in->cfgs[i] = lv_config_for_worker(cfg, i);
        in->cfgs[i]->generation = in->number;
    }
    lv_server_shared_configure(ws->sh, cfg, app->server->loop);
    in->owner_refs = lv_xcalloc(ws->n, sizeof(*in->owner_refs));
    for (unsigned i = 1; i < ws->n; i++)
        in->owner_refs[i] = lv_server_owner_refs(ws->sh, in->cfgs[i]);
    if (!reload) {
        /* At start nothing runs yet: every worker installs from here. */
        for (unsigned i = 0; i < ws->n; i++)
            install_on_worker(&ws->w[i], in);
        install_done(in);
        return 0;
    }
    lv_workers_each(ws, install_on_worker, in, install_done, in);
    return LV_RELOAD_PENDING;
}

static int apply_reload(void *arg, struct lv_config *cfg, struct lv_buf *errors)
{
    return apply(arg, cfg, errors, true);
}

/* ---- the admin API's view (admin/admin.h) */

struct collect {
    struct collect *next;
    struct app *app;
    void (*done)(void *req);
    void *req; /* NULL: cancelled */
};

static void collect_on_worker(struct lv_worker *w, void *arg)
{
    (void)arg;
    lv_server_publish(&w->server);
    lv_worker_snapshot(w);
}

static void collect_done(void *arg)
{
    struct collect *c = arg;
    struct app *app = c->app;
    for (struct collect **p = &app->collects; *p; p = &(*p)->next)
        if (*p == c) {
            *p = c->next;
            break;
        }
    if (c->req)
        c->done(c->req);
    free(c);
}

static void admin_collect(void *arg, void (*done)(void *req), void *req)
{
    struct app *app = arg;
    struct collect *c = lv_xcalloc(1, sizeof(*c));
    c->app = app;
    c->done = done;
    c->req = req;
    c->next = app->collects;
    app->collects = c;
    lv_workers_each(&app->ws, collect_on_worker, NULL, collect_done, c);
}

static void admin_collect_cancel(void *arg, void *req)
{
    struct app *app = arg;
    for (struct collect *c = app->collects; c; c = c->next)
        if (c->req == req)
            c->req = NULL;
}

static void admin_status(void *arg, struct lv_admin_status *out)
{
    struct app *app = arg;
    struct lv_server *s = app->server;
    struct lv_generation *g = lv_server_generation(s);
    uint32_t conns = 0;
    for (unsigned i = 0; i < app->ws.n; i++)
        conns += app->ws.w[i].snap.connections;
    *out = (struct lv_admin_status){
        .generation = s->generation,
        .loaded_at = s->reload_at,
        .cfg = s->cfg,
        .last_reload = app->reloader.last_result,
        .draining = s->draining,
        .reloading = lv_reload_busy(&app->reloader),
        .client_connections = conns,
        .upstreams = g ? g->upstreams : NULL,
        .nupstreams = g ? g->cfg->nupstreams : 0,
        .workers = app->ws.n,
    };
}

static void admin_worker(void *arg, unsigned i, struct lv_admin_worker *out)
{
    struct app *app = arg;
    const struct lv_worker_snap *sn = &app->ws.w[i].snap;
    *out = (struct lv_admin_worker){.connections = sn->connections, .requests = sn->requests};
}

/* Worker i's numbers of upstream `up`, or NULL when it is still on another generation (a
 * reload under way). */
static const struct lv_worker_snap_up *snap_upstream(const struct app *app, unsigned i, size_t up)
{
    const struct lv_worker_snap *sn = &app->ws.w[i].snap;
    if (sn->generation != app->server->generation || up >= sn->nupstreams)
        return NULL;
    return &sn->upstreams[up];
}

/* An upstream's queue and panic picks summed over the workers (each has its own pools). */
static void admin_upstream(void *arg, size_t up, struct lv_admin_upstream *out)
{
    struct app *app = arg;
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < app->ws.n; i++) {
        const struct lv_worker_snap_up *u = snap_upstream(app, i, up);
        if (u) {
            out->waiting += u->waiting;
            out->panic_picks += u->panic_picks;
        }
    }
}

/* A server's pool numbers summed over the workers. */
static void admin_server(void *arg, size_t up, size_t k, struct lv_admin_server *out)
{
    struct app *app = arg;
    memset(out, 0, sizeof(*out));
    for (unsigned i = 0; i < app->ws.n; i++) {
        const struct lv_worker_snap_up *u = snap_upstream(app, i, up);
        if (!u || k >= u->nservers)
            continue;
        const struct lv_upserver_counts *c = &u->servers[k];
        out->active += c->active;
        out->idle += c->idle;
        out->inflight += c->inflight;
        out->connects += c->connects;
        out->connect_failures += c->connect_failures;
        out->tls_resumed += c->tls_resumed;
    }
}

static void admin_route(void *arg, size_t i, struct lv_admin_route *out)
{
    struct app *app = arg;
    struct lv_route_state *rs = lv_generation_route_state(lv_server_generation(app->server), i);
    lv_route_state_lock(rs);
    app->route_breaker = rs->breaker;
    app->route_budget = rs->budget;
    *out = (struct lv_admin_route){
        .requests = lv_route_state_requests(rs),
        .breaker_enabled = lv_route_state_has_breaker(rs),
        .breaker = &app->route_breaker,
        .budget = &app->route_budget,
        .idem = rs->idem,
        .retries = rs->retries,
        .budget_exhausted = rs->budget_exhausted,
        .breaker_rejected = rs->breaker_rejected,
        .duration = rs->duration,
    };
    lv_route_state_unlock(rs);
    lv_route_state_by_class(rs, out->by_class);
    struct lv_admission_stats as;
    lv_admission_stats(&rs->adm, &as);
    out->rate_limited = rs->adm.limited[0];
    out->rate_shadowed = rs->adm.limited[1];
    out->rate_store_errors = rs->adm.store_errors;
    out->rate_keys = as.keys;
    out->bulkhead = as.bulkhead;
    out->adaptive = as.adaptive;
    out->inflight = as.inflight;
    out->queued = as.queued;
    out->limit = as.limit;
    out->concurrency_rejected = rs->adm.rejected ? (uint64_t)lv_metric_value(rs->adm.rejected) : 0;
    out->short_rtt_ms = as.short_rtt_ms;
    out->long_rtt_ms = as.long_rtt_ms;
}

static void admin_metrics(void *arg, struct lv_buf *out)
{
    struct app *app = arg;
    lv_metrics_render(app->ws.sh->metrics, out);
}

static void admin_reload(void *arg, lv_admin_reload_cb cb, void *req)
{
    struct app *app = arg;
    lv_reload_request(&app->reloader, cb, req);
}

static void admin_reload_cancel(void *arg, void *req)
{
    struct app *app = arg;
    lv_reload_cancel(&app->reloader, req);
}

static struct lv_fault_rules *admin_faults(void *arg)
{
    struct app *app = arg;
    return &app->ws.sh->faults;
}

/* ---- shutdown and signals */

/* Every worker drained and the other threads' loops ended: the rest stops, so the loop ends. */
static void stop_main(struct app *app)
{
    if (app->stopping || !app->worker0_drained || app->ws.threads_running > 0)
        return;
    app->stopping = true;
    uv_signal_t *sigs[] = {&app->sig_term, &app->sig_int,  &app->sig_hup,
                           &app->sig_quit, &app->sig_usr1, &app->sig_usr2};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        uv_signal_stop(sigs[i]);
        uv_close((uv_handle_t *)sigs[i], NULL);
    }
    uv_timer_stop(&app->tick);
    uv_close((uv_handle_t *)&app->tick, NULL);
    lv_reload_stop(&app->reloader);
    if (app->admin) {
        lv_admin_stop(app->admin);
        app->admin = NULL;
    }
    lv_worker_stop(&app->ws.w[0]);
}

static void threads_done(void *arg)
{
    stop_main(arg);
}

/* A worker's last connection closed. The others stop their loop; the first waits for them
 * (their requests may still use what its loop owns, such as memory idempotency stores). */
static void worker_drained(void *arg)
{
    lv_worker_stop(arg);
}

/* `arg`: the drain timeout in ms (heap, freed when every worker ran this). */
static void drain_on_worker(struct lv_worker *w, void *arg)
{
    const uint64_t *timeout_ms = arg;
    if (w->index > 0)
        lv_listeners_drain(&w->listeners, *timeout_ms, worker_drained, w);
}

static void worker0_drained(void *arg)
{
    struct app *app = arg;
    app->worker0_drained = true;
    stop_main(app);
}

/* Stops accepting, lets requests in flight finish (up to drain_timeout) on every worker, then
 * stops. */
static void shutdown_gateway(struct app *app, uint64_t drain_timeout_ms)
{
    if (app->server->draining)
        return;
    uint64_t *d = lv_xmalloc(sizeof(*d));
    *d = drain_timeout_ms;
    /* The first worker drains here (its completion is the app's); the others by message. */
    lv_listeners_drain(&app->ws.w[0].listeners, drain_timeout_ms, worker0_drained, app);
    lv_workers_each(&app->ws, drain_on_worker, d, free, d);
}
static void on_signal(uv_signal_t *h, int signum)
{
    struct app *app = h->data;
    /* README "Operations": HUP reloads, USR1 reopens the log files, USR2 is ignored (no binary
     * upgrade), TERM, INT and QUIT drain. */
    switch (signum) {
    case SIGHUP:
        lv_reload_request(&app->reloader, NULL, NULL);
        return;
    case SIGUSR1:
        lv_server_reopen_logs(app->server);
        return;
    case SIGUSR2:
        lv_warn("SIGUSR2 received: ignored (levee has no binary upgrade; SIGHUP reloads)");
        return;
    default:
        lv_info("signal %d received: draining", signum);
        shutdown_gateway(app, app->server->cfg->drain_timeout_ms);
    }
}

static void on_tick(uv_timer_t *t)
{
    struct app *app = t->data;
    lv_server_tick(app->server);
    lv_listeners_tick(&app->ws.w[0].listeners);
}

/* Puts `cfg` in force (takes the caller's reference either way) and starts the admin API and
 * the signals: 0, or a libuv error (logged; the caller shuts down what was opened). */
static int start(struct app *app, struct lv_config *cfg)
{
    struct lv_buf errors = LV_BUF_INIT;
    int rc = apply(app, cfg, &errors, false);
    if (rc != 0) {
        lv_error("%.*s", (int)(errors.len ? errors.len - 1 : 0), errors.data ? errors.data : "");
        lv_buf_dispose(&errors);
        lv_config_unpin(cfg);
        return rc;
    }
    lv_buf_dispose(&errors);
    lv_reload_started(&app->reloader);
    if (cfg->admin_enabled) {
        struct lv_admin_ops ops = {
            .arg = app,
            .collect = admin_collect,
            .collect_cancel = admin_collect_cancel,
            .status = admin_status,
            .worker = admin_worker,
            .upstream = admin_upstream,
            .server = admin_server,
            .route = admin_route,
            .metrics = admin_metrics,
            .reload = admin_reload,
            .reload_cancel = admin_reload_cancel,
            .faults = admin_faults,
        };
        app->admin = lv_admin_start(&app->loop, &cfg->admin, &ops);
        if (!app->admin)
            return UV_EADDRINUSE;
    }
    uv_signal_start(&app->sig_term, on_signal, SIGTERM);
    uv_signal_start(&app->sig_int, on_signal, SIGINT);
    uv_signal_start(&app->sig_hup, on_signal, SIGHUP);
    uv_signal_start(&app->sig_quit, on_signal, SIGQUIT);
    uv_signal_start(&app->sig_usr1, on_signal, SIGUSR1);
    uv_signal_start(&app->sig_usr2, on_signal, SIGUSR2);
    uv_timer_start(&app->tick, on_tick, 1000, 1000);
    return 0;
}

/* `levee dev`'s command line, for its reloads; NULL otherwise. */
static const struct lv_dev_opts *dev_opts;

static int run(struct lv_config *cfg, const char *path)
{
    signal(SIGPIPE, SIG_IGN);
    unsigned nworkers = cfg->workers ? cfg->workers : lv_workers_auto();
    if (path && nworkers > 1) {
        struct lv_buf errors = LV_BUF_INIT;
        if (lv_config_load_copies(cfg, path, NULL, nworkers - 1, &errors) != 0) {
            fwrite(errors.data, 1, errors.len, stderr);
            lv_buf_dispose(&errors);
            lv_config_unpin(cfg);
            return 1;
        }
        lv_buf_dispose(&errors);
    }
    struct app *app = lv_xcalloc(1, sizeof(*app));
    uv_loop_init(&app->loop);
    lv_workers_init(&app->ws, nworkers, &app->loop, path);
    app->ws.on_threads_done = threads_done;
    app->ws.on_threads_done_arg = app;
    struct lv_server *s = app->server = &app->ws.w[0].server;
    lv_reload_init(&app->reloader, s, apply_reload, app);
    app->reloader.dev = dev_opts; /* levee dev: reloads run its loader */
    uv_signal_t *sigs[] = {&app->sig_term, &app->sig_int,  &app->sig_hup,
                           &app->sig_quit, &app->sig_usr1, &app->sig_usr2};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        uv_signal_init(&app->loop, sigs[i]);
        sigs[i]->data = app;
    }
    uv_timer_init(&app->loop, &app->tick);
    app->tick.data = app;
    uint64_t drain_timeout_ms = cfg->drain_timeout_ms;
    int rc = start(app, cfg);
    lv_workers_start(&app->ws);
    if (rc != 0) {
        lv_error("cannot start: %s", uv_strerror(rc));
        app->exit_code = 1;
        shutdown_gateway(app, drain_timeout_ms); /* close what was opened, so the exit is clean */
    } else {
        lv_info("levee %s started (generation %llu, %zu routes, %u worker%s)", LEVEE_VERSION,
                (unsigned long long)s->generation, s->cfg->nroutes, nworkers,
                nworkers == 1 ? "" : "s");
    }
    uv_run(&app->loop, UV_RUN_DEFAULT);
    lv_log_flush_repeats(true);
    if (rc == 0)
        lv_info("stopped");
    rc = app->exit_code;
    lv_workers_free(&app->ws);
    if (uv_loop_close(&app->loop) != 0) {
        /* Something still open: walk and close it so sanitizers see a clean exit. */
        uv_run(&app->loop, UV_RUN_DEFAULT);
        uv_loop_close(&app->loop);
    }
    free(app);
    return rc;
}

/* `levee dev URL [--listen ADDR] [--admin ADDR|off] [--policy FILE] [--fault SPEC]...
 * [--json]` (README "levee dev"): exit 2 on a usage error, 1 when the policy file is
 * invalid. */
static int cmd_dev(int argc, char **argv)
{
    static struct lv_dev_opts o;
    const char **faults = lv_xcalloc((size_t)argc, sizeof(*faults));
    o.faults = faults;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i];
        const char **val = strcmp(a, "--listen") == 0   ? &o.listen
                           : strcmp(a, "--admin") == 0  ? &o.admin
                           : strcmp(a, "--policy") == 0 ? &o.policy
                           : strcmp(a, "--fault") == 0  ? &faults[o.nfaults]
                                                        : NULL;
        if (val && i + 1 < argc) {
            *val = argv[++i];
            if (val == &faults[o.nfaults])
                o.nfaults++;
        } else if (val) {
            free(faults);
            return usage_error(strcmp(a, "--listen") == 0   ? "levee dev: --listen needs an ADDR%s"
                               : strcmp(a, "--admin") == 0  ? "levee dev: --admin needs an ADDR "
                                                              "or off%s"
                               : strcmp(a, "--policy") == 0 ? "levee dev: --policy needs a FILE%s"
                                                            : "levee dev: --fault needs a SPEC%s",
                               "");
        } else if (strcmp(a, "--json") == 0) {
            o.json = true;
        } else if (strcmp(a, "-v") == 0) {
            lv_log_set_level(LV_LOG_DEBUG);
        } else if (!o.url && a[0] != '-') {
            o.url = a;
        } else {
            free(faults);
            return usage_error(a[0] == '-' ? "levee dev: unknown option %s"
                                           : "levee dev: unexpected argument %s",
                               a);
        }
    }
    if (!o.url) {
        free(faults);
        return usage_error("levee dev: needs a URL%s", "");
    }
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_dev(&o, NULL, &errors);
    if (!cfg) {
        fwrite(errors.data, 1, errors.len, stderr);
        /* The command line's errors start with "levee dev: " (usage errors); the policy
         * file's with its path. */
        bool usage_err = errors.len < 11 || memcmp(errors.data, "levee dev: ", 11) == 0;
        lv_buf_dispose(&errors);
        free(faults);
        if (!usage_err)
            return 1;
        usage(stderr);
        return 2;
    }
    lv_buf_dispose(&errors);
    struct lv_buf banner = LV_BUF_INIT;
    lv_buf_printf(&banner, "levee dev: http://%s -> %s (admin ",
                  o.listen ? o.listen : "127.0.0.1:8080", o.url);
    if (cfg->admin_enabled)
        lv_buf_printf(&banner, strchr(cfg->admin.host, ':') ? "http://[%s]:%u/" : "http://%s:%u/",
                      cfg->admin.host, (unsigned)cfg->admin.port);
    else
        lv_buf_puts(&banner, "off");
    if (o.policy)
        lv_buf_printf(&banner, ", policy %s", o.policy);
    if (o.nfaults) {
        lv_buf_puts(&banner, ", faults");
        for (size_t i = 0; i < o.nfaults; i++)
            lv_buf_printf(&banner, "%s %s", i ? "," : "", o.faults[i]);
    }
    lv_buf_puts(&banner, ")\n");
    fwrite(banner.data, 1, banner.len, stderr);
    lv_buf_dispose(&banner);
    dev_opts = &o;
    int rc = run(cfg, o.policy);
    dev_opts = NULL;
    free(faults);
    return rc;
}

int main(int argc, char **argv)
{
    const char *file = "levee.lua";
    if (argc >= 2 && (strcmp(argv[1], "--version") == 0 || strcmp(argv[1], "-V") == 0)) {
        printf("levee %s\nlibuv %s\nOpenSSL %s\n%s\nllhttp %d.%d.%d\nhiredis %d.%d.%d\n",
               LEVEE_VERSION, uv_version_string(), OpenSSL_version(OPENSSL_VERSION_STRING),
               LUA_RELEASE, LLHTTP_VERSION_MAJOR, LLHTTP_VERSION_MINOR, LLHTTP_VERSION_PATCH,
               HIREDIS_MAJOR, HIREDIS_MINOR, HIREDIS_PATCH);
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        if (argc < 3)
            return usage_error("levee check: needs a FILE%s", "");
        if (argc > 3)
            return usage_error("levee check: expected one FILE, got an extra argument %s", argv[3]);
        return cmd_check(argv[2]);
    }
    if (argc >= 2 && strcmp(argv[1], "test") == 0)
        return lv_testcmd_main(argc - 2, argv + 2);
    if (argc >= 2 && strcmp(argv[1], "dev") == 0)
        return cmd_dev(argc, argv);
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(argv[i], "-c") == 0) {
            return usage_error("levee: -c needs a FILE%s", "");
        } else if (strcmp(argv[i], "-v") == 0) {
            lv_log_set_level(LV_LOG_DEBUG);
        } else if (argv[i][0] == '-') {
            return usage_error("levee: unknown option %s", argv[i]);
        } else {
            return usage_error("levee: unexpected argument %s", argv[i]);
        }
    }
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_load(file, NULL, &errors);
    if (!cfg) {
        fwrite(errors.data, 1, errors.len, stderr);
        lv_buf_dispose(&errors);
        return 1;
    }
    lv_buf_dispose(&errors);
    return run(cfg, file);
}
