/*
 * levee: command line (README, "Command line"). `levee [-c FILE]` runs the gateway, `levee check
 * FILE` validates a configuration, `levee dev URL [--listen ADDR]` runs a local dev proxy.
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

#include "base/log.h"
#include "net/tls.h"
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

static int run(struct lv_config *cfg, const char *path, bool dev)
{
    signal(SIGPIPE, SIG_IGN);
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct lv_server *s = lv_xcalloc(1, sizeof(*s));
    s->config_path = path ? lv_xstrdup(path) : NULL;
    s->dev_mode = dev;
    int rc = lv_server_start(s, &loop, cfg);
    if (rc != 0) {
        lv_error("cannot start: %s", uv_strerror(rc));
        s->exit_code = 1;
        lv_server_shutdown(s); /* close what was opened, so the exit is clean */
    } else {
        lv_info("levee %s started (generation %llu, %zu routes)", LEVEE_VERSION,
                (unsigned long long)s->generation, s->cfg->nroutes);
    }
    uv_run(&loop, UV_RUN_DEFAULT);
    lv_log_flush_repeats(true);
    if (rc == 0)
        lv_info("stopped");
    rc = s->exit_code;
    lv_server_free(s);
    if (uv_loop_close(&loop) != 0) {
        /* Something still open: walk and close it so sanitizers see a clean exit. */
        uv_run(&loop, UV_RUN_DEFAULT);
        uv_loop_close(&loop);
    }
    free(s->config_path);
    free(s);
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
        return run(cfg, NULL, true);
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
    return run(cfg, file, false);
}
