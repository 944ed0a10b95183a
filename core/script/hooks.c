/*
 * hooks.c: a configuration's hook runtime (the state loading left, its hook thread, the
 * views' metatables) and the run of one call under the limits of README "Writing hooks". The
 * Lua side of a call (arguments, results) is hookcall.c; the limits are runtime.h's.
 */
#include "script/hooks.h"

#include <assert.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdlib.h>
#include <string.h>

#include "script/hookcall.h"
#include "script/runtime.h"

#define LV__STR(x)  #x
#define LV__XSTR(x) LV__STR(x)

/* One call's budget: the count hook fires once, after LV_HOOK_MAX_INSTRUCTIONS. */
static const struct lv_rt_budget call_budget = {
    .instructions = LV_HOOK_MAX_INSTRUCTIONS,
    .tick = LV_HOOK_MAX_INSTRUCTIONS,
    .message = "instruction limit reached (" LV__XSTR(LV_HOOK_MAX_INSTRUCTIONS) " per call)",
};

/* The hooks of one configuration (conf/config.h keeps it opaque). */
struct lv_config_hooks {
    lua_State *L;
    lua_State *T; /* the thread every hook call runs on */
    struct lv_hook_views views;
    enum lv_hook_failure last_failure; /* why the last failed call failed */
};

/* Runs main(c) on the hook thread under every limit. Returns 0, or -1 with `err` set. */
static int run(struct lv_config_hooks *rt, lua_CFunction main, struct lv_hook_call *c,
               struct lv_buf *err)
{
    lua_State *L = rt->L, *T = rt->T;
    if (rt->views.cur) {
        lv_buf_printf(err, "%s hook: called while another hook runs", c->what);
        lv_rt_error_end(err);
        rt->last_failure = LV_HOOK_FAILED_ERROR;
        return -1;
    }
    /* The thread's stack is empty between calls, so these slots are within the LUA_MINSTACK
     * every thread has: nothing here allocates outside the pcall. */
    lua_settop(T, 0);
    lua_pushcfunction(T, main);
    lua_pushlightuserdata(T, c);
    c->views = &rt->views;
    rt->views.cur = c;
    lv_rt_cap_call(L, LV_HOOK_MAX_MEMORY);
    lv_rt_budget_start(L, T, &call_budget);
    enum lv_rt_status st = lv_rt_pcall(T, 1, 0, true);
    lv_rt_budget_stop(L, T);
    lv_rt_cap_call(L, 0);
    rt->views.cur = NULL;

    if (st == LV_RT_OK && lv_rt_budget_hit(L)) {
        /* The hook caught the limit's error (pcall) and returned through tail calls without
         * running another instruction: whatever it returned, the call failed. */
        lv_buf_printf(err, "%s hook: instruction limit reached (%d per call; the error was caught)",
                      c->what, LV_HOOK_MAX_INSTRUCTIONS);
        lv_rt_error_end(err);
        st = LV_RT_BUDGET;
    } else if (st == LV_RT_OK) {
        lua_settop(T, 0);
        if (!c->bad[0])
            return 0;
        lv_buf_printf(err, "%s hook returned a bad value: ", c->what);
        lv_rt_error_put(err, c->bad, strlen(c->bad));
        lv_rt_error_end(err);
        rt->last_failure = LV_HOOK_FAILED_VALUE;
        return -1;
    }
    rt->last_failure = st == LV_RT_MEMORY   ? LV_HOOK_FAILED_MEMORY
                       : st == LV_RT_BUDGET ? LV_HOOK_FAILED_INSTRUCTIONS
                                            : LV_HOOK_FAILED_ERROR;
    if (st == LV_RT_MEMORY) {
        lv_buf_printf(err, "%s hook: out of memory (a call may use at most %zu MiB)", c->what,
                      LV_HOOK_MAX_MEMORY >> 20);
        lv_rt_error_end(err);
    } else if (err->len == 0) {
        size_t n = 0;
        const char *m = lua_type(T, -1) == LUA_TSTRING ? lua_tolstring(T, -1, &n) : NULL;
        lv_buf_printf(err, "%s hook: ", c->what);
        if (m) {
            lv_rt_error_traced(err, m, n);
        } else {
            lv_buf_printf(err, "error (status %d)", (int)st);
            lv_rt_error_end(err);
        }
    }
    /* Leave the thread and the heap as a fresh call expects them: an empty, shrunk stack,
     * and the failed call's garbage collected (all of it after a memory error, so the next
     * call starts well below the state-wide cap). */
    lua_settop(T, 0);
    lua_resetthread(T);
    if (st == LV_RT_MEMORY)
        lua_gc(L, LUA_GCCOLLECT);
    else
        lua_gc(L, LUA_GCSTEP, 0);
    return -1;
}

const char *lv_hook_failure_name(enum lv_hook_failure f)
{
    switch (f) {
    case LV_HOOK_FAILED_INSTRUCTIONS:
        return "instruction-limit";
    case LV_HOOK_FAILED_MEMORY:
        return "memory-limit";
    case LV_HOOK_FAILED_VALUE:
        return "bad-value";
    default:
        return "error";
    }
}

enum lv_hook_failure lv_hook_last_failure(struct lv_config *cfg)
{
    return cfg && cfg->hooks ? cfg->hooks->last_failure : LV_HOOK_FAILED_ERROR;
}

enum lv_verdict lv_hook_classify(struct lv_config *cfg, int ref, const struct lv_hook_attempt *a,
                                 uint64_t *delay_ms, bool *has_delay, struct lv_buf *err)
{
    lv_buf_reset(err);
    lv_rt_error_end(err);
    *has_delay = false;
    if (!cfg || !cfg->hooks || ref < 0 || !a)
        return LV_VERDICT_NONE;
    struct lv_config_hooks *rt = cfg->hooks;
    struct lv_hook_call c = {
        .ref = ref,
        .what = "classify",
        .a = a,
        .method = a->method,
        .path = a->path,
        .path_len = a->path_len,
        .rsp_h = a->headers,
        .n_rsp = a->nheaders,
        .req_h = a->req_headers,
        .n_req = a->nreq_headers,
    };
    if (run(rt, lv_hookcall_classify, &c, err) != 0)
        return LV_VERDICT_NONE;
    if (c.verdict == LV_VERDICT_RETRY && c.has_delay) {
        *delay_ms = c.delay_ms;
        *has_delay = true;
    }
    return c.verdict;
}

int lv_hook_fallback(struct lv_config *cfg, int ref, const struct lv_hook_request *req,
                     const char *why, struct lv_buf *out, int *status, struct lv_buf *err)
{
    lv_buf_reset(err);
    lv_rt_error_end(err);
    if (!cfg || !cfg->hooks || ref < 0 || !req)
        return -1;
    struct lv_config_hooks *rt = cfg->hooks;
    struct lv_hook_call c = {
        .ref = ref,
        .what = "fallback",
        .req = req,
        .why = why,
        .method = req->method,
        .path = req->path,
        .path_len = req->path_len,
        .req_h = req->headers,
        .n_req = req->nheaders,
    };
    int rc = run(rt, lv_hookcall_fallback, &c, err);
    if (rc == 0 && c.status == 0)
        rc = -1; /* the hook returned nil */
    if (rc == 0) {
        lv_buf_append(out, c.resp.data, c.resp.len);
        *status = c.status;
    }
    lv_buf_dispose(&c.resp);
    return rc;
}

int lv_hook_idem_key(struct lv_config *cfg, int ref, const struct lv_hook_request *req,
                     struct lv_buf *key, struct lv_buf *err)
{
    lv_buf_reset(err);
    lv_rt_error_end(err);
    if (!cfg || !cfg->hooks || ref < 0 || !req)
        return 0;
    struct lv_config_hooks *rt = cfg->hooks;
    struct lv_hook_call c = {
        .ref = ref,
        .what = "idempotency key",
        .req = req,
        .method = req->method,
        .path = req->path,
        .path_len = req->path_len,
        .req_h = req->headers,
        .n_req = req->nheaders,
    };
    int rc = run(rt, lv_hookcall_idem_key, &c, err);
    if (rc == 0 && c.status == 1) {
        lv_buf_append(key, c.resp.data, c.resp.len);
        rc = 1;
    }
    lv_buf_dispose(&c.resp);
    return rc;
}

/* ---- setting up a configuration's state */

static void hooks_free(struct lv_config_hooks *rt)
{
    lv_rt_close(rt->L);
    free(rt);
}

static void push_ref_fn(lua_State *L, int ref, int list)
{
    if (ref < 0)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

/* Stack: 1 = struct lv_config, 2 = struct lv_config_hooks. */
static int init_main(lua_State *L)
{
    struct lv_config *c = lua_touserdata(L, 1);
    struct lv_config_hooks *rt = lua_touserdata(L, 2);
    rt->T = lua_newthread(L);
    luaL_ref(L, LUA_REGISTRYINDEX); /* anchored for the life of the state */
    lv_hookcall_init(L, &rt->views);
    lua_newtable(L);
    int list = lua_gettop(L);
    for (size_t i = 0; i < c->nroutes; i++) {
        push_ref_fn(L, c->routes[i].classify_ref, list);
        push_ref_fn(L, c->routes[i].fallback_ref, list);
        push_ref_fn(L, c->routes[i].idempotency.key_ref, list);
    }
    lv_rt_seal(L);
    return 0;
}

int lv_hooks_attach(lua_State *L, struct lv_config *c, struct lv_buf *errors)
{
    assert(!c->hooks);
    struct lv_config_hooks *rt = lv_xcalloc(1, sizeof(*rt));
    rt->L = L;
    rt->views.mt_attempt = rt->views.mt_request = LUA_NOREF;
    lua_pushcfunction(L, init_main);
    lua_pushlightuserdata(L, c);
    lua_pushlightuserdata(L, rt);
    if (lv_rt_pcall(L, 2, 0, false) != LV_RT_OK) {
        const char *m = lua_tostring(L, -1);
        lv_buf_printf(errors, "%s: cannot prepare the hooks: %s\n", c->file ? c->file : "?",
                      m ? m : "?");
        lua_pop(L, 1);
        free(rt);
        return -1;
    }
    lv_rt_set_cap(L, LV_HOOK_STATE_MEMORY);
    c->hooks = rt;
    c->hooks_free = hooks_free;
    return 0;
}

lua_State *lv_hooks_state(const struct lv_config *c)
{
    return c && c->hooks ? c->hooks->L : NULL;
}
