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
#include "base/log.h"
#include "net/tls.h"
#include "proxy/generation.h"
#include "proxy/listener.h"
#include "proxy/reload.h"
#include "proxy/server.h"
#include "script/config.h"

static void usage(FILE *f)
{
    fputs("usage: levee [-c FILE]              run the gateway (default FILE: ./levee.lua)\n"
          "       levee check FILE             validate FILE: prints ok or FILE:LINE: errors\n"
          "       levee dev URL [--listen ADDR] local dev proxy in front of URL\n"
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

/* ---- the gateway: one loop, one server */

struct app {
    uv_loop_t loop;
    struct lv_server server;
    struct lv_listeners listeners;
    struct lv_reloader reloader;
    struct lv_admin *admin;
    uv_signal_t sig_term, sig_int, sig_hup, sig_quit, sig_usr1, sig_usr2;
    uv_timer_t tick;
    int exit_code;
};

/* Puts `cfg` in force (start and reloads), all or nothing (README "Operations"): whatever can
 * fail (new listeners bound, certificates loaded, log files opened) is done before anything
 * is swapped; a failure undoes it and refuses the configuration. */
static int apply_config(void *arg, struct lv_config *cfg, struct lv_buf *errors)
{
    struct app *app = arg;
    struct lv_listen_plan plan;
    struct lv_log_files logs;
    int rc = lv_listeners_prepare(&app->listeners, cfg, &plan, errors);
    int rc_logs = lv_server_open_logs(&app->server, cfg, &logs, errors);
    if (rc != 0 || rc_logs != 0) {
        if (rc == 0)
            lv_listeners_undo(&plan);
        if (rc_logs == 0)
            lv_server_close_logs(&logs);
        return rc != 0 ? rc : rc_logs;
    }
    lv_listeners_commit(&app->listeners, &plan);
    lv_server_install(&app->server, cfg, &logs);
    return 0;
}

/* ---- the admin API's view (admin/admin.h) */

static void admin_status(void *arg, struct lv_admin_status *out)
{
    struct app *app = arg;
    struct lv_server *s = &app->server;
    struct lv_generation *g = lv_server_generation(s);
    *out = (struct lv_admin_status){
        .generation = s->generation,
        .loaded_at = s->reload_at,
        .cfg = s->cfg,
        .last_reload = app->reloader.last_result,
        .draining = s->draining,
        .reloading = lv_reload_busy(&app->reloader),
        .client_connections = s->nclients,
        .upstreams = g ? g->upstreams : NULL,
        .nupstreams = g ? g->cfg->nupstreams : 0,
    };
}

static void admin_route(void *arg, size_t i, struct lv_admin_route *out)
{
    struct app *app = arg;
    struct lv_route_state *rs = lv_generation_route_state(lv_server_generation(&app->server), i);
    *out = (struct lv_admin_route){
        .requests = rs->requests,
        .breaker_enabled = rs->breaker_enabled,
        .breaker = &rs->breaker,
        .budget = &rs->budget,
        .idem = rs->idem,
        .retries = rs->retries,
        .budget_exhausted = rs->budget_exhausted,
        .breaker_rejected = rs->breaker_rejected,
        .duration = rs->duration,
    };
    lv_route_state_by_class(rs, out->by_class);
}

static void admin_metrics(void *arg, struct lv_buf *out)
{
    struct app *app = arg;
    lv_metrics_render(app->server.metrics, out);
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

/* ---- shutdown and signals */

/* The last connection closed: everything else stops, so the loop ends. */
static void on_drained(void *arg)
{
    struct app *app = arg;
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
    lv_server_stop(&app->server);
}

/* Stops accepting, lets requests in flight finish (up to drain_timeout), then stops. */
static void shutdown_gateway(struct app *app, uint64_t drain_timeout_ms)
{
    lv_listeners_drain(&app->listeners, drain_timeout_ms, on_drained, app);
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
        lv_server_reopen_logs(&app->server);
        return;
    case SIGUSR2:
        lv_warn("SIGUSR2 received: ignored (levee has no binary upgrade; SIGHUP reloads)");
        return;
    default:
        lv_info("signal %d received: draining", signum);
        shutdown_gateway(app, app->server.cfg->drain_timeout_ms);
    }
}

static void on_tick(uv_timer_t *t)
{
    struct app *app = t->data;
    lv_server_tick(&app->server);
    lv_listeners_tick(&app->listeners);
}

/* Puts `cfg` in force (takes the caller's reference either way) and starts the admin API and
 * the signals: 0, or a libuv error (logged; the caller shuts down what was opened). */
static int start(struct app *app, struct lv_config *cfg)
{
    struct lv_buf errors = LV_BUF_INIT;
    int rc = apply_config(app, cfg, &errors);
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
            .status = admin_status,
            .route = admin_route,
            .metrics = admin_metrics,
            .reload = admin_reload,
            .reload_cancel = admin_reload_cancel,
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

static int run(struct lv_config *cfg, const char *path)
{
    signal(SIGPIPE, SIG_IGN);
    struct app *app = lv_xcalloc(1, sizeof(*app));
    uv_loop_init(&app->loop);
    struct lv_server *s = &app->server;
    lv_server_init(s, &app->loop, path);
    lv_listeners_init(&app->listeners, s);
    lv_reload_init(&app->reloader, s, apply_config, app);
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
    if (rc != 0) {
        lv_error("cannot start: %s", uv_strerror(rc));
        app->exit_code = 1;
        shutdown_gateway(app, drain_timeout_ms); /* close what was opened, so the exit is clean */
    } else {
        lv_info("levee %s started (generation %llu, %zu routes)", LEVEE_VERSION,
                (unsigned long long)s->generation, s->cfg->nroutes);
    }
    uv_run(&app->loop, UV_RUN_DEFAULT);
    lv_log_flush_repeats(true);
    if (rc == 0)
        lv_info("stopped");
    rc = app->exit_code;
    lv_server_free(s);
    if (uv_loop_close(&app->loop) != 0) {
        /* Something still open: walk and close it so sanitizers see a clean exit. */
        uv_run(&app->loop, UV_RUN_DEFAULT);
        uv_loop_close(&app->loop);
    }
    free(app);
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
    if (argc >= 2 && strcmp(argv[1], "dev") == 0) {
        const char *url = NULL, *listen = "127.0.0.1:8080";
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
                listen = argv[++i];
            else if (strcmp(argv[i], "--listen") == 0)
                return usage_error("levee dev: --listen needs an ADDR%s", "");
            else if (strcmp(argv[i], "-v") == 0)
                lv_log_set_level(LV_LOG_DEBUG);
            else if (!url && argv[i][0] != '-')
                url = argv[i];
            else if (argv[i][0] == '-')
                return usage_error("levee dev: unknown option %s", argv[i]);
            else
                return usage_error("levee dev: unexpected argument %s", argv[i]);
        }
        if (!url)
            return usage_error("levee dev: needs a URL%s", "");
        struct lv_buf errors = LV_BUF_INIT;
        struct lv_config *cfg = lv_config_dev(url, listen, NULL, &errors);
        if (!cfg) {
            /* Every error of `levee dev` is about its URL or --listen: a usage error. */
            fwrite(errors.data, 1, errors.len, stderr);
            lv_buf_dispose(&errors);
            usage(stderr);
            return 2;
        }
        lv_buf_dispose(&errors);
        fprintf(stderr, "levee dev: http://%s -> %s\n", listen, url);
        return run(cfg, NULL);
    }
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
