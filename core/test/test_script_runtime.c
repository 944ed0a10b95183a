/*
 * test_script_runtime: the Lua runtime shared by the loader and the hooks (runtime.h), on
 * states of its own: the allocator's caps and process-wide counts, the budget stopping endless
 * loops (by instructions and by the clock, also when the loop catches the error), the sandbox
 * (module path, no C modules, the string metatable, a sealed hook environment), and error
 * messages made into one bounded line.
 */
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "script/runtime.h"
#include "t.h"
#include "tmpconf.h"

static char tmpdir[64];

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Loads `code` as chunk "=t" and runs it under lv_rt_pcall with one result. */
static enum lv_rt_status run(lua_State *L, const char *code, bool traceback)
{
    if (luaL_loadbufferx(L, code, strlen(code), "=t", "t") != LUA_OK) {
        fprintf(stderr, "  does not compile: %s\n", lua_tostring(L, -1));
        lua_pop(L, 1);
        return LV_RT_ERROR;
    }
    return lv_rt_pcall(L, 0, 1, traceback);
}

/* The string on top (popped), copied to a static buffer; "" when not a string. */
static const char *pop_str(lua_State *L)
{
    static char s[2048];
    const char *v = lua_tostring(L, -1);
    snprintf(s, sizeof(s), "%s", v ? v : "");
    lua_pop(L, 1);
    return s;
}

static int new_userdata(lua_State *L)
{
    lua_newuserdatauv(L, (size_t)lua_tointeger(L, 1), 0);
    return 0;
}

/* Allocates a userdata of `n` bytes in a protected call. */
static enum lv_rt_status alloc_userdata(lua_State *L, size_t n)
{
    lua_pushcfunction(L, new_userdata);
    lua_pushinteger(L, (lua_Integer)n);
    enum lv_rt_status st = lv_rt_pcall(L, 1, 0, false);
    lua_settop(L, 0);
    return st;
}

T_TEST(test_allocator_cap)
{
    size_t bytes0;
    unsigned states0;
    lv_rt_stats(&bytes0, &states0);

    size_t cap = (size_t)16 << 20;
    lua_State *L = lv_rt_new(tmpdir, cap);
    T_CHECK(L != NULL);
    if (!L)
        return;
    size_t bytes, used = lv_rt_used(L);
    unsigned states;
    lv_rt_stats(&bytes, &states);
    T_CHECK_INT(states, states0 + 1);
    T_CHECK_INT(bytes, bytes0 + used);
    T_CHECK(used > 0 && used < cap);
    T_CHECK(!lv_rt_memory_refused(L));

    /* Over the state-wide cap: refused, the state still works. */
    T_CHECK_INT(run(L, "return #string.rep('x', 32 << 20)", false), LV_RT_MEMORY);
    lua_pop(L, 1);
    T_CHECK(lv_rt_memory_refused(L));
    T_CHECK(lv_rt_used(L) <= cap);
    T_CHECK_INT(run(L, "return #string.rep('x', 2 << 20)", false), LV_RT_OK);
    T_CHECK_INT(lua_tointeger(L, -1), 2 << 20);
    lua_pop(L, 1);
    lua_gc(L, LUA_GCCOLLECT);

    /* A call's tighter cap: 1 MiB more than the state holds now. */
    lv_rt_cap_call(L, (size_t)1 << 20);
    T_CHECK_INT(run(L, "return #string.rep('x', 300000)", false), LV_RT_OK);
    lua_pop(L, 1);
    T_CHECK_INT(run(L, "return #string.rep('x', 2 << 20)", false), LV_RT_MEMORY);
    lua_pop(L, 1);
    lv_rt_cap_call(L, 0); /* the state-wide cap again */
    T_CHECK_INT(run(L, "return #string.rep('x', 2 << 20)", false), LV_RT_OK);
    lua_pop(L, 1);

    /* At the limit: an allocation that would pass it is refused, one that fits is not. */
    lua_gc(L, LUA_GCCOLLECT);
    lua_gc(L, LUA_GCSTOP); /* nothing freed behind the test's back */
    lv_rt_set_cap(L, lv_rt_used(L) + 4096);
    T_CHECK_INT(alloc_userdata(L, 8192), LV_RT_MEMORY);
    T_CHECK_INT(alloc_userdata(L, 2048), LV_RT_OK);
    lua_gc(L, LUA_GCRESTART);
    lv_rt_set_cap(L, cap);

    lv_rt_close(L);
    lv_rt_stats(&bytes, &states);
    T_CHECK_INT(states, states0);
    T_CHECK_INT(bytes, bytes0);
}

static const struct lv_rt_budget budget = {
    .instructions = 1000000,
    .tick = 1000,
    .message = "ran too long",
};

/* Runs `code` under `b` on the main thread. */
static enum lv_rt_status run_budget(lua_State *L, const char *code, const struct lv_rt_budget *b)
{
    lv_rt_budget_start(L, L, b);
    enum lv_rt_status st = run(L, code, false);
    lv_rt_budget_stop(L, L);
    return st;
}

T_TEST(test_budget_stops_endless_loops)
{
    lua_State *L = lv_rt_new(tmpdir, (size_t)64 << 20);
    T_CHECK(L != NULL);
    if (!L)
        return;
    const char *loops[] = {
        "while true do end",
        /* the error is caught, again and again: each catch raises it anew */
        "while true do pcall(function() while true do end end) end",
        "local ok repeat ok = xpcall(function() while true do end end, debug.traceback) "
        "until false",
        "local t = {} for i = 1, 1e12 do t[i % 8] = i end",
    };
    for (size_t i = 0; i < sizeof(loops) / sizeof(loops[0]); i++) {
        double t0 = now_s();
        T_CHECK_INT(run_budget(L, loops[i], &budget), LV_RT_BUDGET);
        T_CHECK(now_s() - t0 < 5.0);
        T_CHECK(lv_rt_budget_hit(L));
        const char *m = pop_str(L);
        if (i == 0)
            T_CHECK_STR(m, "t:1: ran too long");
        else
            T_CHECK(strstr(m, "ran too long") != NULL);
    }
    /* Lua code can ask (levee's xpcall wrappers do, to skip handlers once it ran out). */
    lv_rt_push_budget_hit(L);
    lua_setglobal(L, "budget_hit");
    T_CHECK_INT(run_budget(L, "return budget_hit()", &budget), LV_RT_OK);
    T_CHECK(!lua_toboolean(L, -1)); /* start cleared it */
    lua_pop(L, 1);

    /* Under the budget, finite work runs; after stop, no limit at all. */
    T_CHECK_INT(run_budget(L, "local n = 0 for i = 1, 1000 do n = n + i end return n", &budget),
                LV_RT_OK);
    T_CHECK_INT(lua_tointeger(L, -1), 500500);
    lua_pop(L, 1);
    T_CHECK_INT(run(L, "local n = 0 for i = 1, 3e6 do n = n + 1 end return n", false), LV_RT_OK);
    T_CHECK_INT(lua_tointeger(L, -1), 3000000);
    lua_pop(L, 1);

    /* The clock: a budget of instructions too large to matter, 100 ms of time. */
    struct lv_rt_budget timed = budget;
    timed.instructions = UINT64_MAX;
    timed.time_ms = 100;
    double t0 = now_s();
    T_CHECK_INT(run_budget(L, "while true do end", &timed), LV_RT_BUDGET);
    double dt = now_s() - t0;
    T_CHECK(dt >= 0.09 && dt < 5.0);
    lua_pop(L, 1);

    /* skip_main: levee's own code on the main thread is not counted, what it runs on a
     * coroutine (inheriting the hook) is. */
    struct lv_rt_budget files = budget;
    files.skip_main = true;
    T_CHECK_INT(run_budget(L, "local n = 0 for i = 1, 3e6 do n = n + 1 end return n", &files),
                LV_RT_OK);
    lua_pop(L, 1);
    T_CHECK_INT(run_budget(L,
                           "return coroutine.wrap(function() local n = 0 "
                           "for i = 1, 3e6 do n = n + 1 end return n end)()",
                           &files),
                LV_RT_BUDGET);
    lua_pop(L, 1);
    lv_rt_close(L);
}

static int seal_main(lua_State *L)
{
    lv_rt_seal(L);
    return 0;
}

/* A hook environment as levee.config builds one (a few libraries, a `require` that is a Lua
 * function of levee's own), sealed. */
static const char hook_env[] =
    "local function file_require(name) return require(name) end\n"
    "local env = { require = file_require, pcall = pcall, error = error, rawset = rawset,\n"
    "  setmetatable = setmetatable, xpcall = xpcall, os = { time = os.time },\n"
    "  string = { rep = string.rep } }\n"
    "local hook = load([[\n"
    "  return function(what)\n"
    "    if what == 'require' then return require('mod') end\n"
    "    if what == 'global' then io = 1 end\n"
    "    if what == 'os' then os.execute = function() end end\n"
    "    if what == 'string' then string.dump = function() end end\n"
    "    if what == 'rawset' then rawset(_ENV, 'io', 1) end\n"
    "    if what == 'gc' then setmetatable({}, { __gc = function() end }) end\n"
    "    if what == 'reach' then return io, os.execute, load, debug, string.dump end\n"
    "    return os.time() > 0 and string.rep('ok', 1)\n"
    "  end]], '=hook', 't', env)()\n"
    "_G.hook = hook\n"
    "return { hook }\n";

/* Calls the sealed hook with `what`; returns its status, the message or first result on top. */
static enum lv_rt_status call_hook(lua_State *L, const char *what)
{
    lua_getglobal(L, "hook");
    lua_pushstring(L, what);
    return lv_rt_pcall(L, 1, 1, false);
}

T_TEST(test_sandbox)
{
    char mod[128];
    snprintf(mod, sizeof(mod), "%s/mod.lua", tmpdir);
    FILE *f = fopen(mod, "w");
    T_CHECK(f != NULL);
    if (!f)
        return;
    fputs("return 'mod loaded'\n", f);
    fclose(f);

    lua_State *L = lv_rt_new(tmpdir, (size_t)64 << 20);
    T_CHECK(L != NULL);
    if (!L)
        return;
    /* Modules: text files of lua_dir only, no C modules; the string metatable is hidden. */
    char want[256];
    snprintf(want, sizeof(want), "%s/?.lua;%s/?/init.lua", tmpdir, tmpdir);
    T_CHECK_INT(run(L, "return package.path", false), LV_RT_OK);
    T_CHECK_STR(pop_str(L), want);
    T_CHECK_INT(run(L, "return package.cpath", false), LV_RT_OK);
    T_CHECK_STR(pop_str(L), "");
    T_CHECK_INT(run(L, "return require('mod')", false), LV_RT_OK);
    T_CHECK_STR(pop_str(L), "mod loaded");
    T_CHECK_INT(run(L, "return require('lpeg')", false), LV_RT_ERROR);
    T_CHECK(strstr(pop_str(L), "module 'lpeg' not found") != NULL);
    T_CHECK_INT(run(L, "return getmetatable('') == false", false), LV_RT_OK);
    T_CHECK(lua_toboolean(L, -1));
    lua_pop(L, 1);

    T_CHECK_INT(run(L, hook_env, false), LV_RT_OK);
    T_CHECK(lua_istable(L, -1));
    lua_pushcfunction(L, seal_main);
    lua_insert(L, -2);
    T_CHECK_INT(lv_rt_pcall(L, 1, 0, false), LV_RT_OK);

    const struct {
        const char *what, *error;
    } refused[] = {
        {"require", "require is not available in hooks"},
        {"global", "hooks cannot change global io"},
        {"os", "hooks cannot change os.execute"},
        {"string", "hooks cannot change string.dump"},
        {"rawset", "hooks cannot change globals or library tables"},
        {"gc", "__gc metamethods are not allowed in hooks"},
    };
    for (size_t i = 0; i < sizeof(refused) / sizeof(refused[0]); i++) {
        T_CHECK_INT(call_hook(L, refused[i].what), LV_RT_ERROR);
        const char *m = pop_str(L);
        if (!strstr(m, refused[i].error))
            fprintf(stderr, "  %s: got \"%s\"\n", refused[i].what, m);
        T_CHECK(strstr(m, refused[i].error) != NULL);
    }
    /* Nothing was added by the refused writes: what the environment lacks stays out of reach. */
    lua_getglobal(L, "hook");
    lua_pushliteral(L, "reach");
    T_CHECK_INT(lv_rt_pcall(L, 1, 5, false), LV_RT_OK);
    for (int i = 1; i <= 5; i++)
        T_CHECK(lua_isnil(L, -i));
    lua_settop(L, 0);
    T_CHECK_INT(call_hook(L, "work"), LV_RT_OK);
    T_CHECK_STR(pop_str(L), "ok");
    /* levee's own globals are not sealed */
    T_CHECK_INT(run(L, "x_levee = 1 return require('mod')", false), LV_RT_OK);
    T_CHECK_STR(pop_str(L), "mod loaded");
    lv_rt_close(L);
}

T_TEST(test_errors_formatted)
{
    lua_State *L = lv_rt_new(tmpdir, (size_t)64 << 20);
    T_CHECK(L != NULL);
    if (!L)
        return;
    struct lv_buf err = LV_BUF_INIT;

    /* Two Lua frames: the message on one line (CR and LF made spaces), then the frames. */
    T_CHECK_INT(run(L,
                    "local function inner() error('boom\\r\\nsecond line') end\n"
                    "local function outer() inner() end\n"
                    "outer()\n",
                    true),
                LV_RT_ERROR);
    size_t n;
    const char *m = lua_tolstring(L, -1, &n);
    T_CHECK(m && strstr(m, "stack traceback:") != NULL);
    lv_rt_error_traced(&err, m, n);
    lua_pop(L, 1);
    T_CHECK(err.data && strncmp(err.data, "t:1: boom  second line (traceback: ", 35) == 0);
    T_CHECK(strstr(err.data, "t:1: in upvalue 'inner'") != NULL);
    T_CHECK(strstr(err.data, "t:2: in local 'outer'") != NULL);
    T_CHECK(strstr(err.data, "[C]") == NULL);
    T_CHECK(strchr(err.data, '\n') == NULL && strchr(err.data, '\t') == NULL);
    T_CHECK_INT(err.data[err.len], '\0');

    /* One Lua frame: its "file:line:" says where already; no traceback part. */
    lv_buf_reset(&err);
    T_CHECK_INT(run(L, "error('top')", true), LV_RT_ERROR);
    m = lua_tolstring(L, -1, &n);
    lv_rt_error_traced(&err, m, n);
    lua_pop(L, 1);
    T_CHECK_STR(err.data, "t:1: top");

    /* Not a string: described, no metamethod run. */
    lv_buf_reset(&err);
    T_CHECK_INT(
        run(L, "error(setmetatable({}, { __tostring = function() while true do end end }))", true),
        LV_RT_ERROR);
    m = lua_tolstring(L, -1, &n);
    lv_rt_error_traced(&err, m, n);
    lua_pop(L, 1);
    T_CHECK_STR(err.data, "(error object is a table value)");

    /* Bounded: a long message is cut with "...". */
    lv_buf_reset(&err);
    T_CHECK_INT(run(L, "error(string.rep('x', 5000))", true), LV_RT_ERROR);
    m = lua_tolstring(L, -1, &n);
    lv_rt_error_traced(&err, m, n);
    lua_pop(L, 1);
    T_CHECK_INT(err.len, LV_RT_ERROR_MAX);
    T_CHECK(memcmp(err.data + err.len - 3, "...", 3) == 0);
    T_CHECK_INT(err.data[err.len], '\0');

    /* Without a traceback the message is as raised. */
    T_CHECK_INT(run(L, "error('plain')", false), LV_RT_ERROR);
    T_CHECK_STR(pop_str(L), "t:1: plain");
    T_CHECK_INT(lua_gettop(L), 0);
    lv_buf_dispose(&err);
    lv_rt_close(L);
}

int main(void)
{
    tmpconf_dir(tmpdir, sizeof(tmpdir), "runtime");
    T_RUN(test_allocator_cap);
    T_RUN(test_budget_stops_endless_loops);
    T_RUN(test_sandbox);
    T_RUN(test_errors_formatted);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    T_DONE();
}
