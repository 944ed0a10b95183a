/*
 * script/config: loading a levee.lua file into the compiled configuration of conf/config.h
 * (whose structs and lifetime this header brings along). Loading runs lua/levee/config.lua in a
 * fresh Lua state (runtime.h; text only, sandboxed, under the limits of README "Load limits"),
 * which validates every key and returns a normalized table (durations in milliseconds, sizes
 * in bytes, defaults filled in) or the list of errors as "FILE:LINE: key.path: message";
 * walk.h then copies the normalized table into the structs, and when a route has a hook the
 * state stays with the configuration for its hooks (hooks.h).
 */
#ifndef LV_SCRIPT_CONFIG_H
#define LV_SCRIPT_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "conf/config.h"

/* Limits of one load (README "Reload"): the file's code and validation run at most
 * LV_CONFIG_LOAD_SECONDS of the loader thread's CPU time and 2e8 Lua instructions, with at most
 * LV_CONFIG_LOAD_MEMORY bytes of Lua memory; the hooks' state keeps its own, larger cap. A
 * loader that has not answered after LV_CONFIG_LOAD_WAIT_MS (stuck inside one C call) is
 * abandoned. */
#define LV_CONFIG_LOAD_SECONDS 2
/* ...and at most this much wall-clock time, so a busy machine's load still answers itself
 * before the owner's wait (LV_CONFIG_LOAD_WAIT_MS) abandons it. */
#define LV_CONFIG_LOAD_WALL_MS 2800
#define LV_CONFIG_LOAD_MEMORY  ((size_t)64 << 20)
#define LV_CONFIG_LOAD_WAIT_MS 3000

/**
 * Loads and validates FILE. On success returns a config with refs = 1. On failure returns NULL
 * and appends every error, one per line "FILE:LINE: key.path: message\n", to `errors`.
 * `lua_dir` is the folder holding levee/config.lua (NULL: the built-in default).
 * Bounded whatever the file holds: the load runs on a thread of its own, which is abandoned
 * (the error says "the configuration ran too long") after LV_CONFIG_LOAD_WAIT_MS.
 */
struct lv_config *lv_config_load(const char *file, const char *lua_dir, struct lv_buf *errors);

/*
 * A load on a thread the caller starts (the server does so for reloads, so its loop never
 * waits). lv_config_job_new prepares it; the thread runs lv_config_job_run(job); the owner
 * then either takes the result with lv_config_job_finish once lv_config_job_done (or
 * lv_config_job_wait) says so, or gives up with lv_config_job_abandon: the thread then frees
 * whatever it produces when it ends. Each of finish and abandon releases the owner's hold;
 * the job is freed by whichever of the owner and the thread comes last.
 *
 * `notify(arg)`, when set, is called once on the loader thread when the result is ready,
 * never after lv_config_job_abandon returned (e.g. uv_async_send).
 */
struct lv_config_job;
struct lv_config_job *lv_config_job_new(const char *file, const char *lua_dir,
                                        void (*notify)(void *arg), void *arg);
/** Several workers: a configuration with route hooks is loaded `copies` more times, one per
 *  other worker (cfg->worker_copies), so each runs hooks in a Lua state of its own. */
void lv_config_job_set_copies(struct lv_config_job *job, unsigned copies);
/** The same, synchronously, for a configuration already loaded from `file`: 0, or -1 with the
 *  errors appended (copies that failed to load or differ in their routes). */
int lv_config_load_copies(struct lv_config *cfg, const char *file, const char *lua_dir,
                          unsigned copies, struct lv_buf *errors);
/** The thread's body (fits uv_thread_create): loads, then hands the result over. */
void lv_config_job_run(void *job);
bool lv_config_job_done(struct lv_config_job *job);
/** Waits up to `ms` milliseconds; true once the result is ready. */
bool lv_config_job_wait(struct lv_config_job *job, uint64_t ms);
/** The result: a config, or NULL with the errors appended to `errors`. Frees the owner's hold. */
struct lv_config *lv_config_job_finish(struct lv_config_job *job, struct lv_buf *errors);
/** Gives up on a load (its thread is detached and left to end by itself). */
void lv_config_job_abandon(struct lv_config_job *job);
/** Frees a job whose thread could not be started. */
void lv_config_job_discard(struct lv_config_job *job);
/** Loaders abandoned and still running (each holds a thread and up to LV_CONFIG_LOAD_MEMORY). */
unsigned lv_config_loaders_abandoned(void);

/**
 * `levee check` mode for this process (README "Command line"): loads also check that an
 * access-log file's folder is writable and that each listener's key matches its certificate
 * (with `tls_pair`, which returns false and appends the reason to `err` when not), and a
 * loaded config's warnings ("FILE:LINE: warning: key.path: message") are appended to `errors`
 * (before the errors when the file is invalid) instead of being logged at warn.
 */
typedef bool (*lv_config_tls_pair_fn)(const char *cert, const char *key, struct lv_buf *err);
void lv_config_check_mode(lv_config_tls_pair_fn tls_pair);

/** The command line of `levee dev` (README "levee dev"); NULL fields take their defaults. */
struct lv_dev_opts {
    const char *url;
    const char *listen;        /* default 127.0.0.1:8080 */
    const char *admin;         /* host:port or "off"; default 127.0.0.1:9901 */
    const char *policy;        /* a file returning a route policy table, merged into route "dev" */
    const char *const *faults; /* --fault SPECs */
    size_t nfaults;
    bool json; /* the access log as JSON lines instead of the console line */
};

/** Builds the configuration of `levee dev URL`: one upstream, one catch-all route "dev" with
 *  the default policy, the policy file's keys over it, the faults of --fault and header
 *  faults. Errors of the command line start with "levee dev: ", those of the policy file with
 *  its path ("policy.lua:3: retry.attempts: ..."). The policy file runs under the limits of a
 *  load (README "Reload"). */
struct lv_config *lv_config_dev(const struct lv_dev_opts *o, const char *lua_dir,
                                struct lv_buf *errors);
/** A job (above) that runs the `levee dev` loader with `dev` (which must outlive it) instead
 *  of loading a file: reloads of levee dev. */
void lv_config_job_set_dev(struct lv_config_job *job, const struct lv_dev_opts *dev);

/** Lua states of configurations alive in this process (the one in force, older generations
 * still pinned by requests, one being loaded) and the bytes their allocators hold. */
void lv_config_lua_stats(size_t *bytes, unsigned *states);

#endif
