/*
 * reload (README "Reload"): the configuration file is loaded and validated again on a thread
 * of its own (not libuv's threadpool, which also runs DNS lookups) with its own Lua state; the
 * loop only puts the result in force, through the `apply` function it is given (main.c: the
 * listeners and the server, all or nothing). A loader that has not answered after
 * LV_CONFIG_LOAD_WAIT_MS is stuck inside one C call: it is abandoned and the reload refused.
 *
 * One load at a time: a reload asked while one runs is answered by the next load, which every
 * request made meanwhile shares. With watch = true, a change to the file or to a module it
 * required asks for a reload.
 */
#ifndef LV_RELOAD_H
#define LV_RELOAD_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "script/config.h"

struct lv_server;
struct lv_watch;
struct lv_reload_load;
struct lv_reload_waiter;

/* The answer to one reload request: rc 0 and the generation now in force, or -1 and the
 * errors ("FILE:LINE: ...\n" lines; not NUL-terminated). */
typedef void (*lv_reload_cb)(void *arg, int rc, uint64_t generation, const char *errors,
                             size_t len);
/* Puts `cfg` in force: 0 (it took the reference), LV_RELOAD_PENDING (it took the reference and
 * calls lv_reload_applied once every worker has it), or non-zero with the reasons appended to
 * `errors` as lines (the configuration in force keeps serving). */
#define LV_RELOAD_PENDING 1
typedef int (*lv_reload_apply_fn)(void *arg, struct lv_config *cfg, struct lv_buf *errors);

struct lv_reloader {
    struct lv_server *server;
    lv_reload_apply_fn apply;
    void *apply_arg;
    struct lv_reload_load *load;    /* the load in progress, or NULL */
    struct lv_reload_waiter *queue; /* requests answered by the next load */
    bool again;                     /* a reload was asked during the current one */
    uv_async_t async;               /* the loader thread's "done" */
    uv_timer_t timer;               /* LV_CONFIG_LOAD_WAIT_MS: then it is abandoned */
    struct lv_watch *watches;       /* watch = true: one fs watcher per folder */
    uv_timer_t watch_debounce;
    char last_result[512]; /* "initial load", "ok" or "error: ..." */
    /* levee dev: reloads run its loader with these options (its --policy file is the
     * server's config_path); NULL: the configuration file is loaded again. */
    const struct lv_dev_opts *dev;
};

/** Sets up the reloader of `s` (its loop handles: lv_reload_stop closes them). */
void lv_reload_init(struct lv_reloader *rl, struct lv_server *s, lv_reload_apply_fn apply,
                    void *arg);
/** The first configuration is in force: watch its files when it says so. */
void lv_reload_started(struct lv_reloader *rl);
/** Loads the file again, off the loop, and applies it when valid. `cb(arg, ...)` (may be
 *  NULL) gets the outcome when the load ends; at once when no reload is possible (shutting
 *  down, or levee dev without --policy). */
void lv_reload_request(struct lv_reloader *rl, lv_reload_cb cb, void *arg);
/** The configuration apply answered LV_RELOAD_PENDING for is in force in every worker. */
void lv_reload_applied(struct lv_reloader *rl);
/** Forgets the pending answers to `arg` (its requester went away). */
void lv_reload_cancel(struct lv_reloader *rl, void *arg);
/** A load is in progress. */
bool lv_reload_busy(const struct lv_reloader *rl);
/** Shutdown: a load in progress is abandoned, its requests dropped; watchers and handles
 *  closed. */
void lv_reload_stop(struct lv_reloader *rl);

#endif
