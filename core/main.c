/*
 * levee: command line (SPEC §1). `levee [-c FILE]` runs the gateway, `levee check FILE`
 * validates a configuration, `levee dev URL [--listen ADDR]` runs a local dev proxy.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "base/log.h"
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

static int cmd_check(const char *file)
{
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_load(file, NULL, &errors);
    if (!cfg) {
        fwrite(errors.data, 1, errors.len, stdout);
        if (errors.len && errors.data[errors.len - 1] != '\n')
            putchar('\n');
        lv_buf_dispose(&errors);
        return 1;
    }
    lv_config_unpin(cfg);
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
        printf("levee %s\n", LEVEE_VERSION);
        return 0;
    }
    if (argc >= 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc >= 2 && strcmp(argv[1], "check") == 0) {
        if (argc != 3) {
            usage(stderr);
            return 2;
        }
        return cmd_check(argv[2]);
    }
    if (argc >= 2 && strcmp(argv[1], "dev") == 0) {
        const char *url = NULL, *listen = "127.0.0.1:8080";
        for (int i = 2; i < argc; i++) {
            if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc)
                listen = argv[++i];
            else if (strcmp(argv[i], "-v") == 0)
                lv_log_set_level(LV_LOG_DEBUG);
            else if (!url && argv[i][0] != '-')
                url = argv[i];
            else {
                usage(stderr);
                return 2;
            }
        }
        if (!url) {
            usage(stderr);
            return 2;
        }
        struct lv_buf errors = LV_BUF_INIT;
        struct lv_config *cfg = lv_config_dev(url, listen, NULL, &errors);
        if (!cfg) {
            fwrite(errors.data, 1, errors.len, stderr);
            lv_buf_dispose(&errors);
            return 1;
        }
        lv_buf_dispose(&errors);
        fprintf(stderr, "levee dev: http://%s -> %s\n", listen, url);
        return run(cfg, NULL, true);
    }
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            file = argv[++i];
        } else if (strcmp(argv[i], "-v") == 0) {
            lv_log_set_level(LV_LOG_DEBUG);
        } else {
            usage(stderr);
            return 2;
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
