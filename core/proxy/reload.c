#include "proxy/reload.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/log.h"
#include "proxy/server.h"

/* ---- watching the configuration files (watch = true) */

/* Editors often save by writing a new file and renaming it over the old one, which a watch
 * on the file itself would lose (new inode). So each watcher watches a folder and reacts to
 * the names of the files the configuration was built from. */
struct lv_watch {
    uv_fs_event_t ev;
    struct lv_reloader *rl;
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

static void watches_stop(struct lv_reloader *rl)
{
    struct lv_watch *w = rl->watches;
    rl->watches = NULL;
    while (w) {
        struct lv_watch *next = w->next;
        uv_fs_event_stop(&w->ev);
        uv_close((uv_handle_t *)&w->ev, watch_closed);
        w = next;
    }
}

static void on_watch_debounced(uv_timer_t *t)
{
    struct lv_reloader *rl = t->data;
    lv_info("configuration file changed: reloading");
    lv_reload_request(rl, NULL, NULL);
}

static void on_watch_event(uv_fs_event_t *h, const char *filename, int events, int status)
{
    struct lv_watch *w = h->data;
    struct lv_reloader *rl = w->rl;
    if (status < 0 || rl->server->draining)
        return;
    bool ours = filename == NULL;
    for (char **n = w->names; !ours && n && *n; n++)
        ours = strcmp(*n, filename) == 0;
    if (!ours)
        return;
    /* Editors touch a file several times per save: reload once, after things settle. */
    uv_timer_start(&rl->watch_debounce, on_watch_debounced, 150, 0);
}

static void watches_start(struct lv_reloader *rl, const struct lv_config *cfg)
{
    watches_stop(rl);
    if (!cfg->watch || !cfg->files)
        return;
    for (char **f = cfg->files; *f; f++) {
        const char *slash = strrchr(*f, '/');
        char *dir = slash ? lv_xstrndup(*f, (size_t)(slash - *f) + (slash == *f)) : lv_xstrdup(".");
        const char *base = slash ? slash + 1 : *f;
        struct lv_watch *w = rl->watches;
        while (w && strcmp(w->dir, dir) != 0)
            w = w->next;
        if (!w) {
            w = lv_xcalloc(1, sizeof(*w));
            w->rl = rl;
            w->dir = dir;
            w->names = lv_xcalloc(1, sizeof(char *));
            uv_fs_event_init(rl->server->loop, &w->ev);
            w->ev.data = w;
            int rc = uv_fs_event_start(&w->ev, on_watch_event, dir, 0);
            if (rc != 0)
                lv_warn("watch %s: %s", dir, uv_strerror(rc));
            w->next = rl->watches;
            rl->watches = w;
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

/* ---- reloading */

struct lv_reload_waiter {
    lv_reload_cb cb;
    void *arg;
    struct lv_reload_waiter *next;
};

struct lv_reload_load {
    struct lv_config_job *job;
    struct lv_reload_waiter *waiters; /* answered when this load ends */
    struct lv_config *applying;       /* handed to apply, which answers later (several workers) */
};

/* At most this many abandoned loaders may still run: each holds a thread (maybe spinning) and
 * up to LV_CONFIG_LOAD_MEMORY; past it, reloads are refused until one ends. */
#define MAX_ABANDONED_LOADERS 4

static void reload_start(struct lv_reloader *rl, struct lv_reload_waiter *waiters);

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
static void reload_finish(struct lv_reloader *rl, struct lv_config *cfg, bool shutting,
                          struct lv_buf *errors);

static void reload_end(struct lv_reloader *rl, struct lv_config *cfg, struct lv_buf *errors)
{
    struct lv_server *s = rl->server;
    uv_timer_stop(&rl->timer);
    rl->load->job = NULL; /* finished, abandoned or never started */
    bool shutting = false;
    if (cfg && s->draining) {
        shutting = true;
        lv_config_unpin(cfg);
        cfg = NULL;
        lv_buf_puts(errors, "shutting down\n");
    } else if (cfg) {
        int rc = rl->apply(rl->apply_arg, cfg, errors);
        if (rc == LV_RELOAD_PENDING) {
            rl->load->applying = cfg; /* lv_reload_applied finishes; still busy until then */
            return;
        }
        if (rc != 0) {
            lv_config_unpin(cfg);
            cfg = NULL;
        }
    }
    reload_finish(rl, cfg, shutting, errors);
}

void lv_reload_applied(struct lv_reloader *rl)
{
    if (!rl->load || !rl->load->applying)
        return; /* stopped meanwhile */
    struct lv_buf errors = LV_BUF_INIT;
    reload_finish(rl, rl->load->applying, false, &errors);
    lv_buf_dispose(&errors);
}

static void reload_finish(struct lv_reloader *rl, struct lv_config *cfg, bool shutting,
                          struct lv_buf *errors)
{
    struct lv_server *s = rl->server;
    struct lv_reload_load *r = rl->load;
    rl->load = NULL;
    int rc = -1;
    if (cfg) {
        watches_start(rl, cfg);
        lv_metric_add(s->m_reload_ok, 1);
        snprintf(rl->last_result, sizeof(rl->last_result), "ok");
        lv_info("configuration reloaded: generation %llu", (unsigned long long)s->generation);
        rc = 0;
    } else if (!shutting) {
        lv_metric_add(s->m_reload_err, 1);
        lv_error("reload refused, the configuration in force keeps serving:\n%.*s",
                 (int)errors->len, errors->data ? errors->data : "");
        snprintf(rl->last_result, sizeof(rl->last_result), "error: %.*s",
                 (int)(errors->len > 400 ? 400 : errors->len), errors->data ? errors->data : "");
    }
    struct lv_reload_waiter *w = r->waiters;
    free(r);
    waiters_answer(w, rc, s->generation, errors);
    if (rl->again && !s->draining && !rl->load) {
        struct lv_reload_waiter *next = rl->queue;
        rl->queue = NULL;
        rl->again = false;
        reload_start(rl, next);
    }
}

/* On the loader thread, under its job's lock (never after the job is abandoned). */
static void reload_notify(void *arg)
{
    struct lv_reloader *rl = arg;
    uv_async_send(&rl->async);
}

static void on_reload_async(uv_async_t *h)
{
    struct lv_reloader *rl = h->data;
    if (!rl->load || !rl->load->job || !lv_config_job_done(rl->load->job))
        return;
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_job_finish(rl->load->job, &errors);
    reload_end(rl, cfg, &errors);
    lv_buf_dispose(&errors);
}

static void on_reload_timeout(uv_timer_t *t)
{
    struct lv_reloader *rl = t->data;
    struct lv_server *s = rl->server;
    if (!rl->load)
        return;
    if (lv_config_job_done(rl->load->job)) {
        on_reload_async(&rl->async);
        return;
    }
    lv_config_job_abandon(rl->load->job);
    lv_warn("the configuration loader of %s still runs after %d ms (stuck inside one C call?): "
            "abandoned; %u abandoned loader(s) still running",
            s->config_path, LV_CONFIG_LOAD_WAIT_MS, lv_config_loaders_abandoned());
    struct lv_buf errors = LV_BUF_INIT;
    lv_buf_printf(&errors,
                  "%s:1: the configuration ran too long (its loader did not finish within %d ms "
                  "and was abandoned)\n",
                  s->config_path, LV_CONFIG_LOAD_WAIT_MS);
    reload_end(rl, NULL, &errors);
    lv_buf_dispose(&errors);
}

static void reload_start(struct lv_reloader *rl, struct lv_reload_waiter *waiters)
{
    struct lv_server *s = rl->server;
    struct lv_reload_load *r = lv_xcalloc(1, sizeof(*r));
    r->waiters = waiters;
    rl->load = r;
    struct lv_buf errors = LV_BUF_INIT;
    unsigned stuck = lv_config_loaders_abandoned();
    if (stuck >= MAX_ABANDONED_LOADERS) {
        lv_buf_printf(&errors,
                      "%s:1: the configuration ran too long before: %u abandoned loaders still "
                      "run, no other starts until one ends\n",
                      s->config_path, stuck);
        reload_end(rl, NULL, &errors);
        lv_buf_dispose(&errors);
        return;
    }
    r->job = lv_config_job_new(s->config_path, NULL, reload_notify, rl);
    lv_config_job_set_copies(r->job, s->sh->nworkers - 1); /* hooks: a Lua state per worker */
    if (rl->dev)
        lv_config_job_set_dev(r->job, rl->dev);
    uv_thread_t tid;
    int rc = uv_thread_create(&tid, lv_config_job_run, r->job);
    if (rc != 0) {
        lv_config_job_discard(r->job);
        r->job = NULL;
        lv_buf_printf(&errors, "%s:1: cannot start a thread to load the configuration: %s\n",
                      s->config_path, uv_strerror(rc));
        reload_end(rl, NULL, &errors);
        lv_buf_dispose(&errors);
        return;
    }
    pthread_detach(tid); /* uv_thread_t is a pthread_t; nobody joins a loader */
    uv_timer_start(&rl->timer, on_reload_timeout, LV_CONFIG_LOAD_WAIT_MS, 0);
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

/* ---- the interface */

void lv_reload_init(struct lv_reloader *rl, struct lv_server *s, lv_reload_apply_fn apply,
                    void *arg)
{
    memset(rl, 0, sizeof(*rl));
    rl->server = s;
    rl->apply = apply;
    rl->apply_arg = arg;
    uv_timer_init(s->loop, &rl->watch_debounce);
    rl->watch_debounce.data = rl;
    uv_timer_init(s->loop, &rl->timer);
    rl->timer.data = rl;
    uv_async_init(s->loop, &rl->async, on_reload_async);
    rl->async.data = rl;
}

void lv_reload_started(struct lv_reloader *rl)
{
    snprintf(rl->last_result, sizeof(rl->last_result), "initial load");
    if (rl->server->config_path)
        watches_start(rl, rl->server->cfg);
}

void lv_reload_request(struct lv_reloader *rl, lv_reload_cb cb, void *arg)
{
    struct lv_server *s = rl->server;
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
    if (rl->load) {
        /* One load at a time: this request is answered by the next one, which every request
         * made meanwhile shares (a file saved twice during a load is loaded once more). */
        struct lv_reload_waiter **tail = &rl->queue;
        while (*tail)
            tail = &(*tail)->next;
        *tail = w;
        rl->again = true;
        return;
    }
    reload_start(rl, w);
}

void lv_reload_cancel(struct lv_reloader *rl, void *arg)
{
    if (rl->load)
        waiters_cancel(&rl->load->waiters, arg);
    waiters_cancel(&rl->queue, arg);
}

bool lv_reload_busy(const struct lv_reloader *rl)
{
    return rl->load != NULL;
}

void lv_reload_stop(struct lv_reloader *rl)
{
    uv_timer_stop(&rl->timer);
    uv_timer_stop(&rl->watch_debounce);
    if (rl->load) {
        if (rl->load->job)
            lv_config_job_abandon(rl->load->job);
        waiters_free(rl->load->waiters);
        free(rl->load);
        rl->load = NULL;
    }
    waiters_free(rl->queue);
    rl->queue = NULL;
    rl->again = false;
    watches_stop(rl);
    uv_close((uv_handle_t *)&rl->watch_debounce, NULL);
    uv_close((uv_handle_t *)&rl->timer, NULL);
    uv_close((uv_handle_t *)&rl->async, NULL);
}
