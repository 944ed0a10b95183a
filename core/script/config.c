/*
 * config.c: loading a configuration (script/config.h). A load runs lua/levee/config.lua in a
 * fresh state of the runtime (runtime.h) under the load's budget, then walk.c copies the
 * normalized table it returns into a struct lv_config (conf/config.h), and hooks.c takes the
 * state over when a route has a hook. Loads for `levee check`, the start and reloads run on a
 * thread of their own (the job below), which the caller can abandon.
 */
#include "script/config.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "conf/router.h"
#include "script/guards.h"
#include "script/hooks.h"
#include "script/runtime.h"
#include "script/walk.h"

#ifndef LEVEE_LUA_DIR
#define LEVEE_LUA_DIR "/usr/local/share/levee/lua"
#endif

#define RAN_TOO_LONG "the configuration ran too long (an endless loop?)"

/* Loading (README "Reload"): the file's code, the key-line scan and validation run on Lua
 * coroutines under a count hook that every 100 instructions checks the instruction budget,
 * the loader thread's CPU time and the wall clock; levee's glue code on the main thread is not
 * counted. */
static const struct lv_rt_budget load_budget = {
    .instructions = 200000000,
    .tick = 100,
    .time_ms = (uint64_t)LV_CONFIG_LOAD_SECONDS * 1000,
    .wall_ms = LV_CONFIG_LOAD_WALL_MS,
    .skip_main = true,
    .guard_c_calls = true,
    .message = RAN_TOO_LONG,
};

/* Loaders given up on (lv_config_job_abandon) that have not finished yet. */
static atomic_uint loaders_abandoned;

void lv_config_lua_stats(size_t *bytes, unsigned *states)
{
    lv_rt_stats(bytes, states);
}

unsigned lv_config_loaders_abandoned(void)
{
    return atomic_load(&loaders_abandoned);
}

/* <prefix>/share/levee/lua of the running binary (<prefix>/bin/levee), so an installed tree
 * still works when moved (README "Install"); empty when it holds no levee/config.lua. */
static char lua_dir_near_exe[PATH_MAX];
static pthread_once_t lua_dir_near_exe_once = PTHREAD_ONCE_INIT;

static void find_lua_dir_near_exe(void)
{
    char exe[PATH_MAX];
    if (!realpath("/proc/self/exe", exe))
        return;
    for (int up = 0; up < 2; up++) { /* strip "/levee", then "/bin" */
        char *slash = strrchr(exe, '/');
        if (!slash)
            return;
        *slash = '\0';
    }
    char probe[PATH_MAX];
    int n = snprintf(probe, sizeof(probe), "%s/share/levee/lua/levee/config.lua", exe);
    if (n < 0 || (size_t)n >= sizeof(probe))
        return;
    FILE *f = fopen(probe, "r");
    if (!f)
        return;
    fclose(f);
    probe[(size_t)n - strlen("/levee/config.lua")] = '\0';
    memcpy(lua_dir_near_exe, probe, (size_t)n + 1 - strlen("/levee/config.lua"));
}

/* Order: the argument, $LEVEE_LUA_DIR, the installed tree next to the binary, the source tree
 * compiled in (running from a build directory). */
static const char *lua_dir_or_default(const char *lua_dir)
{
    if (lua_dir && *lua_dir)
        return lua_dir;
    const char *env = getenv("LEVEE_LUA_DIR");
    if (env && *env)
        return env;
    pthread_once(&lua_dir_near_exe_once, find_lua_dir_near_exe);
    if (lua_dir_near_exe[0])
        return lua_dir_near_exe;
    return LEVEE_LUA_DIR;
}

/* ---- loading */

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The error for a load that failed on one of its limits, or false. */
static bool limit_error(lua_State *L, enum lv_rt_status st, const char *label,
                        struct lv_buf *errors)
{
    if (st == LV_RT_MEMORY || lv_rt_memory_refused(L))
        lv_buf_printf(errors,
                      "%s:1: the configuration used more than %zu MiB of Lua memory while "
                      "loading\n",
                      label, LV_CONFIG_LOAD_MEMORY >> 20);
    else if (lv_rt_budget_hit(L))
        lv_buf_printf(errors, "%s:1: " RAN_TOO_LONG "\n", label);
    else
        return false;
    return true;
}

/* ---- `levee check` (README "Command line"): the files the configuration names are checked
 * too, and warnings are returned in `errors` instead of being logged. */

static bool check_mode;
static lv_config_tls_pair_fn check_tls_pair;

void lv_config_check_mode(lv_config_tls_pair_fn tls_pair)
{
    check_mode = true;
    check_tls_pair = tls_pair;
}

/* checks.tls_pair(cert, key) -> nil or a message */
static int l_tls_pair(lua_State *L)
{
    const char *cert = luaL_checkstring(L, 1), *key = luaL_checkstring(L, 2);
    struct lv_buf err = LV_BUF_INIT;
    if (check_tls_pair && !check_tls_pair(cert, key, &err)) {
        if (err.len == 0)
            lv_buf_puts(&err, "the certificate and key cannot be loaded");
        lua_pushlstring(L, err.data, err.len);
    } else {
        lua_pushnil(L);
    }
    lv_buf_dispose(&err);
    return 1;
}

/* checks.dir_writable(dir) -> nil or a message */
static int l_dir_writable(lua_State *L)
{
    const char *dir = luaL_checkstring(L, 1);
    struct stat st;
    if (stat(dir, &st) != 0 && errno == ENOENT)
        lua_pushfstring(L, "folder %s does not exist", dir);
    else if (stat(dir, &st) != 0)
        lua_pushfstring(L, "folder %s: %s", dir, strerror(errno));
    else if (!S_ISDIR(st.st_mode))
        lua_pushfstring(L, "%s is not a folder", dir);
    else if (access(dir, W_OK | X_OK) != 0)
        lua_pushfstring(L, "folder %s is not writable: %s", dir, strerror(errno));
    else
        lua_pushnil(L);
    return 1;
}

/* Appends the strings of the list at `idx` to `out`, one a line. */
static void put_lines(lua_State *L, int idx, struct lv_buf *out)
{
    lua_Integer n = (lua_Integer)lua_rawlen(L, idx);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, idx, i);
        const char *e = lua_tostring(L, -1);
        lv_buf_puts(out, e ? e : "?");
        lv_buf_putc(out, '\n');
        lua_pop(L, 1);
    }
}

/* Calls levee.config[fn](args...) with `nargs` strings (NULL pushes nil) and walks the result
 * into a new config. `label` names the source in errors that did not come from the Lua side.
 * With `limited`, fn runs a configuration file: under the load-time limits (README "Reload"),
 * which a last argument describes to levee.config. */
/* Pushes the arguments of levee.config[fn] (before the limits); returns how many. */
typedef int (*push_args_fn)(lua_State *L, const void *arg);

static struct lv_config *run(const char *fn, push_args_fn push, const void *push_arg,
                             const char *label, char *file, const char *lua_dir, bool limited,
                             struct lv_buf *errors)
{
    lua_State *L = lv_rt_new(lua_dir, limited ? LV_CONFIG_LOAD_MEMORY : LV_HOOK_STATE_MEMORY);
    if (!L) {
        lv_buf_printf(errors, "%s: cannot create a Lua state\n", label);
        free(file);
        return NULL;
    }
    lv_guards_install(L);
    lua_getglobal(L, "require");
    lua_pushliteral(L, "levee.config");
    if (lv_rt_pcall(L, 1, 1, false) != LV_RT_OK) {
        lv_buf_printf(errors, "%s: cannot load levee.config from %s: %s\n", label, lua_dir,
                      lua_tostring(L, -1));
        lv_rt_close(L);
        free(file);
        return NULL;
    }
    if (!lua_istable(L, -1) || lua_getfield(L, -1, fn) != LUA_TFUNCTION) {
        lv_buf_printf(errors, "%s: levee.config from %s has no function %s\n", label, lua_dir, fn);
        lv_rt_close(L);
        free(file);
        return NULL;
    }
    int nargs = push(L, push_arg);
    if (limited) {
        lua_createtable(L, 0, 2);
        lv_rt_push_budget_hit(L);
        lua_setfield(L, -2, "hit");
        lua_pushinteger(L, (lua_Integer)LV_CONFIG_LOAD_MEMORY);
        lua_setfield(L, -2, "memory");
        if (check_mode) {
            lua_createtable(L, 0, 2);
            lua_pushcfunction(L, l_tls_pair);
            lua_setfield(L, -2, "tls_pair");
            lua_pushcfunction(L, l_dir_writable);
            lua_setfield(L, -2, "dir_writable");
            lua_setfield(L, -2, "check");
        }
        nargs++;
        /* Set on the main thread, inherited by the coroutines levee.config runs code on. */
        lv_rt_budget_start(L, L, &load_budget);
    }
    enum lv_rt_status st = lv_rt_pcall(L, nargs, 2, false);
    if (limited)
        lv_rt_budget_stop(L, L);
    if (st != LV_RT_OK) {
        if (!limited || !limit_error(L, st, label, errors))
            lv_buf_printf(errors, "%s: internal error in levee.config: %s\n", label,
                          lua_tostring(L, -1));
        lv_rt_close(L);
        free(file);
        return NULL;
    }
    if (!lua_istable(L, -2)) {
        /* (nil, errors) */
        if (lua_istable(L, -1))
            put_lines(L, lua_absindex(L, -1), errors);
        if (!lua_istable(L, -1) || lua_rawlen(L, -1) == 0)
            lv_buf_printf(errors, "%s: the configuration was rejected without a reason\n", label);
        lv_rt_close(L);
        free(file);
        return NULL;
    }

    /* Warnings go with a config in `errors` (lv_config_job_finish logs them). */
    if (lua_getfield(L, -2, "warnings") == LUA_TTABLE)
        put_lines(L, lua_absindex(L, -1), errors);
    lua_pop(L, 1);
    struct lv_config *c = lv_config_new();
    c->file = file;
    struct lv_walk w = {.c = c};
    int cfg = lua_absindex(L, -2), files = lua_absindex(L, -1);
    lua_pushcfunction(L, lv_walk_config);
    lua_pushlightuserdata(L, &w);
    lua_pushvalue(L, cfg);
    lua_pushvalue(L, files);
    st = lv_rt_pcall(L, 3, 0, false);
    if (st != LV_RT_OK) {
        if (!limited || !limit_error(L, st, label, errors))
            lv_buf_printf(errors, "%s: %s\n", label, lua_tostring(L, -1));
        lv_rt_close(L);
        lv_config_unpin(c);
        return NULL;
    }
    lua_settop(L, 0);
    if (w.nrefs == 0) {
        lv_rt_close(L);
    } else {
        /* Only the hooks stay reachable (from the registry); drop the rest now. */
        lua_gc(L, LUA_GCCOLLECT);
        /* The hooks take the state over: their thread, the sealed sandbox (hooks.h). */
        if (lv_hooks_attach(L, c, errors) != 0) {
            lv_rt_close(L);
            lv_config_unpin(c);
            return NULL;
        }
    }
    c->router = lv_router_build(c->routes, c->nroutes); /* off the serving loop */
    c->router_free = lv_router_free;
    c->loaded_at = unix_now();
    return c;
}

struct str_args {
    const char *const *v;
    int n;
};

static int push_strings(lua_State *L, const void *arg)
{
    const struct str_args *a = arg;
    for (int i = 0; i < a->n; i++) {
        if (a->v[i])
            lua_pushstring(L, a->v[i]);
        else
            lua_pushnil(L);
    }
    return a->n;
}

/* Loads on the calling thread; bounded by the Lua-side limits only. */
static struct lv_config *load_here(const char *file, const char *lua_dir, struct lv_buf *errors)
{
    char *abs = realpath(file, NULL);
    const char *args[] = {file, lua_dir};
    struct str_args a = {args, 2};
    return run("compile", push_strings, &a, file, abs ? abs : lv_xstrdup(file), lua_dir, true,
               errors);
}

/* levee.config.dev(url, listen, opts) for `levee dev` (README "levee dev"). */
struct dev_args {
    const struct lv_dev_opts *o;
    const char *lua_dir;
};

static int push_dev(lua_State *L, const void *arg)
{
    const struct dev_args *a = arg;
    const struct lv_dev_opts *o = a->o;
    lua_pushstring(L, o->url ? o->url : "");
    if (o->listen)
        lua_pushstring(L, o->listen);
    else
        lua_pushnil(L);
    lua_createtable(L, 0, 5);
    if (o->admin) {
        lua_pushstring(L, o->admin);
        lua_setfield(L, -2, "admin");
    }
    if (o->policy) {
        lua_pushstring(L, o->policy);
        lua_setfield(L, -2, "policy");
    }
    lua_createtable(L, (int)o->nfaults, 0);
    for (size_t i = 0; i < o->nfaults; i++) {
        lua_pushstring(L, o->faults[i]);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "faults");
    lua_pushboolean(L, o->json);
    lua_setfield(L, -2, "json");
    lua_pushstring(L, a->lua_dir);
    lua_setfield(L, -2, "lua_dir");
    return 3;
}

static struct lv_config *dev_here(const struct lv_dev_opts *o, const char *lua_dir,
                                  struct lv_buf *errors)
{
    struct dev_args a = {o, lua_dir};
    char *name = NULL;
    if (o->policy) {
        name = realpath(o->policy, NULL);
        if (!name)
            name = lv_xstrdup(o->policy);
    } else {
        struct lv_buf b = LV_BUF_INIT;
        lv_buf_printf(&b, "dev:%s", o->url ? o->url : "");
        name = b.data;
    }
    /* The policy's code runs under the load's limits, as a levee.lua's does. */
    return run("dev", push_dev, &a, o->policy ? o->policy : "levee dev", name, lua_dir, true,
               errors);
}

/* ---- loading on a thread of its own */

struct lv_config_job {
    pthread_mutex_t mu;
    pthread_cond_t cv; /* CLOCK_MONOTONIC; signalled when done */
    int refs;          /* the owner's and the loader thread's */
    bool done, abandoned;
    void (*notify)(void *arg);
    void *arg;
    char *file, *lua_dir;
    struct lv_config *cfg; /* the result, until the owner takes it */
    struct lv_buf errors;
    unsigned copies;               /* per-worker copies of a configuration with hooks */
    const struct lv_dev_opts *dev; /* levee dev: its loader instead of the file's */
};

struct lv_config_job *lv_config_job_new(const char *file, const char *lua_dir,
                                        void (*notify)(void *arg), void *arg)
{
    struct lv_config_job *j = lv_xcalloc(1, sizeof(*j));
    pthread_mutex_init(&j->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 2;
    j->notify = notify;
    j->arg = arg;
    j->file = lv_xstrdup(file);
    j->lua_dir = lv_xstrdup(lua_dir_or_default(lua_dir));
    return j;
}

static void job_unref(struct lv_config_job *j)
{
    pthread_mutex_lock(&j->mu);
    bool last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (!last)
        return;
    if (j->cfg)
        lv_config_unpin(j->cfg);
    lv_buf_dispose(&j->errors);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j->file);
    free(j->lua_dir);
    free(j);
}

void lv_config_job_set_copies(struct lv_config_job *job, unsigned copies)
{
    job->copies = copies;
}

void lv_config_job_set_dev(struct lv_config_job *job, const struct lv_dev_opts *dev)
{
    job->dev = dev;
}

/* Two loads of one file must describe the same routes and upstreams, in the same order: the
 * workers' generations are read by route index. */
static bool same_shape(const struct lv_config *a, const struct lv_config *b)
{
    if (a->nroutes != b->nroutes || a->nupstreams != b->nupstreams)
        return false;
    for (size_t i = 0; i < a->nroutes; i++)
        if (strcmp(a->routes[i].name, b->routes[i].name) != 0)
            return false;
    for (size_t i = 0; i < a->nupstreams; i++)
        if (strcmp(a->upstreams[i].name, b->upstreams[i].name) != 0)
            return false;
    return true;
}

int lv_config_load_copies(struct lv_config *cfg, const char *file, const char *lua_dir,
                          unsigned copies, struct lv_buf *errors)
{
    if (!cfg->hooks || copies == 0)
        return 0; /* without hooks a configuration is read-only data every worker shares */
    cfg->worker_copies = lv_xcalloc(copies, sizeof(*cfg->worker_copies));
    for (unsigned k = 0; k < copies; k++) {
        struct lv_buf err = LV_BUF_INIT;
        struct lv_config *c = load_here(file, lua_dir_or_default(lua_dir), &err);
        if (!c || !same_shape(cfg, c)) {
            lv_buf_printf(errors, "%s:1: loading the configuration again for worker %u %s: %.*s\n",
                          file, k + 1,
                          c ? "gave other routes or upstreams (it must not depend on when it "
                              "runs)"
                            : "failed",
                          (int)(err.len ? err.len - 1 : 0), err.data ? err.data : "");
            lv_buf_dispose(&err);
            lv_config_unpin(c);
            return -1;
        }
        lv_buf_dispose(&err);
        cfg->worker_copies[k] = c;
        cfg->nworker_copies = k + 1;
    }
    return 0;
}

void lv_config_job_run(void *job)
{
    struct lv_config_job *j = job;
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg =
        j->dev ? dev_here(j->dev, j->lua_dir, &errors) : load_here(j->file, j->lua_dir, &errors);
    if (cfg && !j->dev &&
        lv_config_load_copies(cfg, j->file, j->lua_dir, j->copies, &errors) != 0) {
        lv_config_unpin(cfg);
        cfg = NULL;
    }
    pthread_mutex_lock(&j->mu);
    j->done = true;
    bool abandoned = j->abandoned;
    if (abandoned) {
        atomic_fetch_sub(&loaders_abandoned, 1);
    } else {
        j->cfg = cfg;
        j->errors = errors;
        if (j->notify)
            j->notify(j->arg);
        pthread_cond_broadcast(&j->cv);
    }
    pthread_mutex_unlock(&j->mu);
    if (abandoned) {
        lv_warn("an abandoned configuration loader of %s finished after all; its result is "
                "dropped",
                j->file);
        if (cfg)
            lv_config_unpin(cfg);
        lv_buf_dispose(&errors);
    }
    job_unref(j);
}

bool lv_config_job_done(struct lv_config_job *j)
{
    pthread_mutex_lock(&j->mu);
    bool done = j->done;
    pthread_mutex_unlock(&j->mu);
    return done;
}

bool lv_config_job_wait(struct lv_config_job *j, uint64_t ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += (time_t)(ms / 1000);
    until.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    while (!j->done && pthread_cond_timedwait(&j->cv, &j->mu, &until) != ETIMEDOUT)
        ;
    bool done = j->done;
    pthread_mutex_unlock(&j->mu);
    return done;
}

struct lv_config *lv_config_job_finish(struct lv_config_job *j, struct lv_buf *errors)
{
    pthread_mutex_lock(&j->mu);
    struct lv_config *cfg = j->cfg;
    j->cfg = NULL;
    if (cfg && !check_mode) {
        /* A config's warnings (README "Command line") are logged, never returned. */
        const char *p = j->errors.data, *end = p ? p + j->errors.len : NULL;
        while (p < end) {
            const char *nl = memchr(p, '\n', (size_t)(end - p));
            size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
            if (n)
                lv_warn("%.*s", (int)n, p);
            p += n + 1;
        }
    } else {
        lv_buf_append(errors, j->errors.data, j->errors.len);
    }
    pthread_mutex_unlock(&j->mu);
    job_unref(j);
    return cfg;
}

void lv_config_job_abandon(struct lv_config_job *j)
{
    pthread_mutex_lock(&j->mu);
    if (!j->done) {
        j->abandoned = true;
        atomic_fetch_add(&loaders_abandoned, 1);
    }
    pthread_mutex_unlock(&j->mu);
    job_unref(j); /* a result already there goes with the job */
}

void lv_config_job_discard(struct lv_config_job *j)
{
    job_unref(j); /* the thread's hold, */
    job_unref(j); /* then the owner's */
}

static void *job_thread(void *job)
{
    lv_config_job_run(job);
    return NULL;
}

struct lv_config *lv_config_load(const char *file, const char *lua_dir, struct lv_buf *errors)
{
    struct lv_config_job *j = lv_config_job_new(file, lua_dir, NULL, NULL);
    /* Joinable: once the job is done the thread is joined, so its thread-local state (the
     * OpenSSL error queue of `levee check`'s key checks, say) is gone before the process may
     * exit; only an abandoned loader is detached. */
    pthread_t t;
    int rc = pthread_create(&t, NULL, job_thread, j);
    if (rc != 0) {
        lv_buf_printf(errors, "%s:1: cannot start a thread to load the configuration: %s\n", file,
                      strerror(rc));
        lv_config_job_discard(j);
        return NULL;
    }
    if (!lv_config_job_wait(j, LV_CONFIG_LOAD_WAIT_MS)) {
        pthread_detach(t);
        lv_config_job_abandon(j);
        lv_buf_printf(errors,
                      "%s:1: the configuration ran too long (its loader did not finish within "
                      "%d ms and was abandoned)\n",
                      file, LV_CONFIG_LOAD_WAIT_MS);
        return NULL;
    }
    pthread_join(t, NULL);
    return lv_config_job_finish(j, errors);
}

struct lv_config *lv_config_dev(const struct lv_dev_opts *o, const char *lua_dir,
                                struct lv_buf *errors)
{
    return dev_here(o, lua_dir_or_default(lua_dir), errors);
}
