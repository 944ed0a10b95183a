/*
 * config.c: runs lua/levee/config.lua in a fresh Lua state and copies the normalized table it
 * returns into the structs of config.h. The Lua side does all validation and defaulting; this
 * file only walks a table whose shape it knows, so a mismatch here is a bug in one of the two
 * sides and is reported as an internal error rather than trusted.
 */
#include "script/config.h"

#include <errno.h>
#include <lauxlib.h>
#include <limits.h>
#include <lua.h>
#include <lualib.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "base/log.h"
#include "base/method.h"
#include "conf/router.h"
#include "script/hooks.h"
#include "script/patcost.h"

#ifndef LEVEE_LUA_DIR
#define LEVEE_LUA_DIR "/usr/local/share/levee/lua"
#endif

/* The state outlives loading: it holds the route hooks for the whole generation, so its
 * allocator is capped and a runaway hook fails with a Lua memory error instead of growing the
 * process. */
#define LV__CONFIG_LUA_MEM_LIMIT ((size_t)256 << 20)

/* Loading (README "Reload"): the file's code, the key-line scan and validation run on Lua
 * coroutines under a count hook that every LV__LOAD_TICK instructions checks the instruction
 * budget and the wall clock; levee's glue code on the main thread is not counted. */
#define LV__LOAD_TICK      100
#define LV__LOAD_MAX_TICKS 2000000 /* 2e8 instructions */
/* A pattern call whose worst case (patcost.h) is over this many steps, plus a linear allowance
 * per byte of subject and pattern, is refused while loading: a few tenths of a second. */
#define LV__PATTERN_MAX_COST 2e7
#define LV__PATTERN_LINEAR   16.0
/* More repetitions of an empty string than this are refused: string.rep copies nothing then,
 * but still loops once per repetition inside one C call. */
#define LV__REP_EMPTY_MAX ((lua_Integer)1 << 24)
/* table.move over more elements than this is refused while loading (it loops in C). */
#define LV__MOVE_MAX ((lua_Integer)1 << 24)

struct lv__lalloc {
    size_t used;
    size_t limit;
    lua_State *main; /* the main thread: levee's own code */
    /* While `loading`: the load-time limits and the C guards apply to the other threads. */
    bool loading;
    bool hit;     /* the load ran over its instructions or its time */
    bool mem_hit; /* an allocation was refused at the cap */
    uint64_t ticks;
    uint64_t deadline_ns; /* CLOCK_MONOTONIC */
};

/* Every configuration state alive in the process and the bytes they hold, for /status and the
 * reload leak spec: old generations must give everything back. States are made on loader
 * threads and freed on the loop (or on a loader thread), so the counters are atomic. */
static atomic_size_t lua_bytes_total;
static atomic_uint lua_states_live;
/* Loaders given up on (lv_config_job_abandon) that have not finished yet. */
static atomic_uint loaders_abandoned;

void lv_config_lua_stats(size_t *bytes, unsigned *states)
{
    *bytes = atomic_load_explicit(&lua_bytes_total, memory_order_relaxed);
    *states = atomic_load_explicit(&lua_states_live, memory_order_relaxed);
}

unsigned lv_config_loaders_abandoned(void)
{
    return atomic_load(&loaders_abandoned);
}

static void *lalloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct lv__lalloc *a = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        a->used -= old;
        atomic_fetch_sub_explicit(&lua_bytes_total, old, memory_order_relaxed);
        return NULL;
    }
    if (nsize > old && a->used - old + nsize > a->limit) {
        a->mem_hit = true;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p) {
        a->used = a->used - old + nsize;
        if (nsize >= old)
            atomic_fetch_add_explicit(&lua_bytes_total, nsize - old, memory_order_relaxed);
        else
            atomic_fetch_sub_explicit(&lua_bytes_total, old - nsize, memory_order_relaxed);
    }
    return p;
}

static struct lv__lalloc *alloc_of(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    return ud;
}

static uint64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* For hooks.c (declared in hooks.h): a per-call memory cap. `extra` > 0 lowers the limit to
 * what the state holds now plus `extra` (never above the state-wide cap), so one hook call
 * cannot grow the state by more; 0 puts the state-wide cap back. */
void lv__config_lua_cap(lua_State *L, size_t extra)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    struct lv__lalloc *a = ud;
    a->limit = LV__CONFIG_LUA_MEM_LIMIT;
    if (extra > 0 && a->used < LV__CONFIG_LUA_MEM_LIMIT - extra)
        a->limit = a->used + extra;
}

static void state_close(lua_State *L)
{
    void *ud = NULL;
    lua_getallocf(L, &ud);
    lua_close(L);
    free(ud);
    atomic_fetch_sub(&lua_states_live, 1);
}

/* ---- limits while loading (README "Reload") */

#define RAN_TOO_LONG "the configuration ran too long (an endless loop?)"

/* Guards and the hook act on the file's threads only, while loading. */
static bool guarded(lua_State *L, struct lv__lalloc *a)
{
    return a->loading && L != a->main;
}

/* Raises RAN_TOO_LONG (at the caller's line) once the load is over its time. */
static void check_time(lua_State *L, struct lv__lalloc *a)
{
    if (!a->hit && mono_ns() < a->deadline_ns)
        return;
    a->hit = true;
    luaL_error(L, RAN_TOO_LONG);
}

/* The count hook. Once over a limit it fires at every instruction, so a pcall in a loop cannot
 * outlast it (levee.config's xpcall skips message handlers then: Lua runs the handler of an
 * error raised in a hook with hooks off). */
static void load_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct lv__lalloc *a = alloc_of(L);
    if (!guarded(L, a))
        return;
    if (!a->hit && ++a->ticks <= LV__LOAD_MAX_TICKS && mono_ns() < a->deadline_ns)
        return;
    a->hit = true;
    lua_sethook(L, load_hook, LUA_MASKCOUNT, 1);
    luaL_where(L, 0); /* level 0 is the Lua function that was running (a hook has no frame) */
    lua_pushliteral(L, RAN_TOO_LONG);
    lua_concat(L, 2);
    lua_error(L);
}

/* For levee.config: has the load hit its instruction or time limit? */
static int l_limit_hit(lua_State *L)
{
    lua_pushboolean(L, alloc_of(L)->hit);
    return 1;
}

/* Calls the original function (upvalue 1) with the guard's arguments. */
static int call_original(lua_State *L)
{
    int n = lua_gettop(L);
    lua_pushvalue(L, lua_upvalueindex(1));
    lua_insert(L, 1);
    lua_call(L, n, LUA_MULTRET);
    return lua_gettop(L);
}

/* string.rep of an empty string (and separator) copies nothing but loops once per repetition
 * in C: a huge count is refused. A result over the memory cap needs no guard: the one
 * allocation it asks for fails at once. Always on (hooks too). */
static int guard_rep(lua_State *L)
{
    size_t l, lsep = 0;
    luaL_checklstring(L, 1, &l);
    lua_Integer n = luaL_checkinteger(L, 2);
    luaL_optlstring(L, 3, "", &lsep);
    if (l + lsep == 0 && n > LV__REP_EMPTY_MAX)
        luaL_error(L, "string.rep: too many repetitions of an empty string (%I; at most %I)", n,
                   LV__REP_EMPTY_MAX);
    return call_original(L);
}

/* 1-based init as string.find reads it, to a 0-based offset (n + 1 when past the end). */
static size_t pattern_init(lua_Integer pos, size_t n)
{
    if (pos > 0)
        return (size_t)pos - 1 > n ? n + 1 : (size_t)pos - 1;
    if (pos == 0 || pos < -(lua_Integer)n)
        return 0;
    return n + (size_t)pos;
}

static int guard_pattern(lua_State *L, enum lv_patcost_fn fn, const char *name)
{
    /* Checked here so that a bad argument is reported as "string.find", not as the original
     * called from C (which Lua can no longer name). */
    size_t n, m, init = 0;
    const char *s = luaL_checklstring(L, 1, &n);
    const char *p = luaL_checklstring(L, 2, &m);
    struct lv__lalloc *a = alloc_of(L);
    if (!guarded(L, a))
        return call_original(L);
    check_time(L, a);
    if (fn != LV_PATCOST_GSUB && !lua_isnoneornil(L, 3)) {
        int isint = 0;
        lua_Integer pos = lua_tointegerx(L, 3, &isint);
        if (!isint)
            return call_original(L); /* Lua reports the bad argument */
        init = pattern_init(pos, n);
    }
    if (init > n)
        return call_original(L); /* fails at once */
    bool plain = fn == LV_PATCOST_FIND && lua_toboolean(L, 4);
    double limit = LV__PATTERN_MAX_COST + LV__PATTERN_LINEAR * ((double)(n - init) + (double)m);
    if (lv_pattern_cost(fn, s, n, init, p, m, plain, limit) > limit) {
        char msg[200];
        snprintf(msg, sizeof(msg),
                 "string.%s: pattern too costly for a %zu-byte subject (its backtracking could "
                 "take more than %.2g steps; the limit while loading the configuration)",
                 name, n - init, limit);
        luaL_error(L, "%s", msg);
    }
    return call_original(L);
}

static int guard_find(lua_State *L)
{
    return guard_pattern(L, LV_PATCOST_FIND, "find");
}

static int guard_match(lua_State *L)
{
    return guard_pattern(L, LV_PATCOST_MATCH, "match");
}

static int guard_gmatch(lua_State *L)
{
    return guard_pattern(L, LV_PATCOST_GMATCH, "gmatch");
}

static int guard_gsub(lua_State *L)
{
    return guard_pattern(L, LV_PATCOST_GSUB, "gsub");
}

/* table.insert, remove, sort, concat and unpack loop in C up to #t: with a __len metamethod
 * that lies, for ever. Such tables are refused while loading. */
static int guard_len(lua_State *L)
{
    struct lv__lalloc *a = alloc_of(L);
    if (guarded(L, a)) {
        check_time(L, a);
        if (lua_type(L, 1) == LUA_TTABLE && lua_getmetatable(L, 1)) {
            lua_pushliteral(L, "__len");
            bool has_len = lua_rawget(L, -2) != LUA_TNIL;
            lua_pop(L, 2);
            if (has_len)
                luaL_error(L, "table functions cannot take a table with a __len metamethod "
                              "while loading the configuration");
        }
    }
    return call_original(L);
}

/* table.move(a, f, e, t) loops e - f + 1 times in C, even over nothing. */
static int guard_move(lua_State *L)
{
    struct lv__lalloc *a = alloc_of(L);
    if (guarded(L, a)) {
        check_time(L, a);
        int isf = 0, ise = 0;
        lua_Integer f = lua_tointegerx(L, 2, &isf), e = lua_tointegerx(L, 3, &ise);
        if (isf && ise && e >= f && (lua_Unsigned)e - (lua_Unsigned)f >= (lua_Unsigned)LV__MOVE_MAX)
            luaL_error(L,
                       "table.move: too many elements (at most %I while loading the "
                       "configuration)",
                       LV__MOVE_MAX);
    }
    return call_original(L);
}

/* Replaces lib[name] by the C closure fn(original). */
static void wrap(lua_State *L, const char *lib, const char *name, lua_CFunction fn)
{
    lua_getglobal(L, lib);
    lua_getfield(L, -1, name);
    lua_pushcclosure(L, fn, 1);
    lua_setfield(L, -2, name);
    lua_pop(L, 1);
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    lv_error("lua: unprotected error in the configuration state: %s", msg ? msg : "?");
    return 0; /* Lua aborts */
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

/* A state with the standard libraries (the sandbox for the file is built in Lua from them),
 * package.path limited to lua_dir, and no C modules. */
static lua_State *state_new(const char *lua_dir)
{
    struct lv__lalloc *a = lv_xcalloc(1, sizeof(*a));
    a->limit = LV__CONFIG_LUA_MEM_LIMIT;
    lua_State *L = lua_newstate(lalloc, a);
    if (!L) {
        free(a);
        return NULL;
    }
    a->main = L;
    atomic_fetch_add(&lua_states_live, 1);
    lua_atpanic(L, panic);
    luaL_openlibs(L);
    /* C functions that can run for ever inside one call, where no count hook fires. The
     * entries of the real tables are replaced, so methods through the string metatable
     * (("x"):rep(n)) and the sandbox's copies get the guards too. */
    wrap(L, "string", "rep", guard_rep);
    wrap(L, "string", "find", guard_find);
    wrap(L, "string", "match", guard_match);
    wrap(L, "string", "gmatch", guard_gmatch);
    wrap(L, "string", "gsub", guard_gsub);
    static const char *const by_len[] = {"insert", "remove", "sort", "concat", "unpack"};
    for (size_t i = 0; i < sizeof(by_len) / sizeof(by_len[0]); i++)
        wrap(L, "table", by_len[i], guard_len);
    wrap(L, "table", "move", guard_move);
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua", lua_dir, lua_dir);
    lua_setfield(L, -2, "path");
    lua_pushliteral(L, "");
    lua_setfield(L, -2, "cpath");
    lua_pop(L, 1);
    /* The sandbox exposes getmetatable; this keeps it from reaching the shared string
     * metatable (whose __index every string method goes through). */
    lua_pushliteral(L, "");
    if (lua_getmetatable(L, -1)) {
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return L;
}

/* ---- freeing */

static void upstream_free(struct lv_upstream_cfg *u)
{
    free(u->name);
    for (size_t i = 0; i < u->nservers; i++)
        free(u->servers[i].host);
    free(u->servers);
    free(u->tls_sni);
    free(u->tls_ca);
    free(u->health.path);
    free(u->health.host);
}

static void route_free(struct lv_route_cfg *r)
{
    free(r->name);
    free(r->match_prefix);
    free(r->match_path);
    free(r->match_host);
    free(r->idempotency.header);
    free(r->idempotency.redis.host);
    free(r->idempotency.redis_prefix);
}

static void config_free(struct lv_config *c)
{
    free(c->file);
    if (c->files) {
        for (char **f = c->files; *f; f++)
            free(*f);
        free(c->files);
    }
    for (size_t i = 0; i < c->nlistens; i++) {
        free(c->listens[i].addr.host);
        free(c->listens[i].tls_cert);
        free(c->listens[i].tls_key);
    }
    free(c->listens);
    free(c->admin.host);
    free(c->access_log_path);
    free(c->error_log_path);
    for (size_t i = 0; i < c->nupstreams; i++)
        upstream_free(&c->upstreams[i]);
    free(c->upstreams);
    lv_router_free(c->router); /* before the routes: it points into their strings */
    for (size_t i = 0; i < c->nroutes; i++)
        route_free(&c->routes[i]);
    free(c->routes);
    if (c->L)
        state_close(c->L);
    free(c);
}

/* ---- walking the normalized table. Runs inside lua_pcall (walk_main), so a Lua error midway
 * unwinds to a config that config_free can release: every allocation is stored in the config
 * before the next Lua call. */

struct walk {
    struct lv_config *c;
    int nrefs; /* registry references taken (hooks) */
};

static void bad(lua_State *L, struct walk *w, const char *key)
{
    luaL_error(L, "internal: normalized config key '%s' has type %s", key, luaL_typename(L, -1));
}

/* Pushes t[key]; returns its type. */
static int get(lua_State *L, int t, const char *key)
{
    return lua_getfield(L, t, key);
}

static uint64_t w_uint(lua_State *L, struct walk *w, int t, const char *key)
{
    get(L, t, key);
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || lua_type(L, -1) != LUA_TNUMBER)
        bad(L, w, key);
    lua_pop(L, 1);
    return (uint64_t)v;
}

static uint32_t w_u32(lua_State *L, struct walk *w, int t, const char *key)
{
    uint64_t v = w_uint(L, w, t, key);
    if (v > UINT32_MAX)
        luaL_error(L, "internal: normalized config key '%s' is out of range", key);
    return (uint32_t)v;
}

static double w_num(lua_State *L, struct walk *w, int t, const char *key)
{
    if (get(L, t, key) != LUA_TNUMBER)
        bad(L, w, key);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static bool w_bool(lua_State *L, struct walk *w, int t, const char *key)
{
    if (get(L, t, key) != LUA_TBOOLEAN)
        bad(L, w, key);
    bool v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A copy of t[key], or NULL when it is nil and `optional`. */
static char *w_str(lua_State *L, struct walk *w, int t, const char *key, bool optional)
{
    int ty = get(L, t, key);
    char *s = NULL;
    if (ty == LUA_TSTRING)
        s = lv_xstrdup(lua_tostring(L, -1));
    else if (!(ty == LUA_TNIL && optional))
        bad(L, w, key);
    lua_pop(L, 1);
    return s;
}

/* Index of names[] equal to t[key]. */
static int w_enum(lua_State *L, struct walk *w, int t, const char *key, const char *const *names,
                  int n)
{
    if (get(L, t, key) != LUA_TSTRING)
        bad(L, w, key);
    const char *s = lua_tostring(L, -1);
    for (int i = 0; i < n; i++) {
        if (strcmp(s, names[i]) == 0) {
            lua_pop(L, 1);
            return i;
        }
    }
    luaL_error(L, "internal: normalized config key '%s' has unknown value '%s'", key, s);
    return 0;
}

/* Pushes t[key], which must be a table (or nil if `optional`); returns its absolute index,
 * or 0 after popping a nil. */
static int w_table(lua_State *L, struct walk *w, int t, const char *key, bool optional)
{
    int ty = get(L, t, key);
    if (ty == LUA_TNIL && optional) {
        lua_pop(L, 1);
        return 0;
    }
    if (ty != LUA_TTABLE)
        bad(L, w, key);
    return lua_gettop(L);
}

/* A registry reference to the function t[key], or -1 when absent. */
static int w_ref(lua_State *L, struct walk *w, int t, const char *key)
{
    int ty = get(L, t, key);
    if (ty == LUA_TNIL) {
        lua_pop(L, 1);
        return -1;
    }
    if (ty != LUA_TFUNCTION)
        bad(L, w, key);
    w->nrefs++;
    return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void w_hostport(lua_State *L, struct walk *w, int t, struct lv_hostport *hp)
{
    hp->port = (uint16_t)w_uint(L, w, t, "port");
    hp->host = w_str(L, w, t, "host", false);
}

/* A list of method names as LV_METHOD_BIT set. */
static uint64_t w_methods(lua_State *L, struct walk *w, int t, const char *key)
{
    int lt = w_table(L, w, t, key, false);
    uint64_t bits = 0;
    lua_Integer n = (lua_Integer)lua_rawlen(L, lt);
    for (lua_Integer i = 1; i <= n; i++) {
        size_t len;
        lua_rawgeti(L, lt, i);
        const char *s = lua_tolstring(L, -1, &len);
        int m = s ? lv_method_from_name(s, len) : -1;
        if (m < 0 || m >= 64)
            luaL_error(L, "internal: unknown method in '%s'", key);
        bits |= LV_METHOD_BIT(m);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return bits;
}

static const char *const balance_names[] = {"round_robin", "least_request"};
static const char *const jitter_names[] = {"full", "equal", "decorrelated", "none"};
static const char *const access_log_names[] = {"off", "stdout", "stderr", "file"};
static const char *const store_names[] = {"memory", "redis"};
static const char *const conflict_names[] = {"reject", "wait"};
static const char *const store_error_names[] = {"fail_closed", "fail_open"};
static const char *const retry_error_names[] = {"connect-failure", "reset", "timeout",
                                                "protocol-error"};

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* t[key], a list of status codes 100..599, as a bit set: bit s of bits[s / 64] per status. */
static void w_statuses(lua_State *L, struct walk *w, int t, const char *key, uint64_t bits[10])
{
    int lt = w_table(L, w, t, key, false);
    lua_Integer n = (lua_Integer)lua_rawlen(L, lt);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, lt, i);
        int isint = 0;
        lua_Integer code = lua_tointegerx(L, -1, &isint);
        if (!isint || code < 100 || code > 599)
            bad(L, w, key);
        bits[code / 64] |= (uint64_t)1 << (code % 64);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void walk_limits(lua_State *L, struct walk *w, int t, struct lv_limits_cfg *l)
{
    l->header_size = w_uint(L, w, t, "header_size");
    l->request_line = w_uint(L, w, t, "request_line");
    l->header_count = w_u32(L, w, t, "header_count");
    l->body_size = w_uint(L, w, t, "body_size");
    l->header_timeout_ms = w_uint(L, w, t, "header_timeout_ms");
    l->idle_timeout_ms = w_uint(L, w, t, "idle_timeout_ms");
    l->send_timeout_ms = w_uint(L, w, t, "send_timeout_ms");
    l->body_timeout_ms = w_uint(L, w, t, "body_timeout_ms");
    l->body_rate = w_uint(L, w, t, "body_rate");
    l->max_connections = w_u32(L, w, t, "max_connections");
}

static void walk_upstream(lua_State *L, struct walk *w, int t, struct lv_upstream_cfg *u)
{
    u->name = w_str(L, w, t, "name", false);
    int st = w_table(L, w, t, "servers", false);
    size_t n = lua_rawlen(L, st);
    u->servers = lv_xcalloc(n ? n : 1, sizeof(*u->servers));
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, st, (lua_Integer)i + 1);
        if (!lua_istable(L, -1))
            bad(L, w, "servers[]");
        w_hostport(L, w, lua_gettop(L), &u->servers[i]);
        u->nservers = i + 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    u->balance = (enum lv_balance)w_enum(L, w, t, "balance", balance_names, NELEM(balance_names));
    u->connect_timeout_ms = w_uint(L, w, t, "connect_timeout_ms");
    int pt = w_table(L, w, t, "pool", false);
    u->pool.max_idle = w_u32(L, w, pt, "max_idle");
    u->pool.idle_timeout_ms = w_uint(L, w, pt, "idle_timeout_ms");
    u->pool.max_lifetime_ms = w_uint(L, w, pt, "max_lifetime_ms");
    u->pool.max_connections = w_u32(L, w, pt, "max_connections");
    u->pool.queue_size = w_u32(L, w, pt, "queue_size");
    u->pool.queue_timeout_ms = w_uint(L, w, pt, "queue_timeout_ms");
    lua_pop(L, 1);
    u->tls = w_bool(L, w, t, "tls");
    u->tls_sni = w_str(L, w, t, "tls_sni", true);
    u->tls_verify = w_bool(L, w, t, "tls_verify");
    u->tls_ca = w_str(L, w, t, "tls_ca", true);
    u->slow_start_ms = w_uint(L, w, t, "slow_start_ms");
    int ot = w_table(L, w, t, "outlier", false);
    u->outlier.enabled = w_bool(L, w, ot, "enabled");
    u->outlier.consecutive_failures = w_u32(L, w, ot, "consecutive_failures");
    u->outlier.eject_for_ms = w_uint(L, w, ot, "eject_for_ms");
    u->outlier.max_eject_for_ms = w_uint(L, w, ot, "max_eject_for_ms");
    u->outlier.max_ejected = w_num(L, w, ot, "max_ejected");
    u->outlier.enforce = w_bool(L, w, ot, "enforce");
    lua_pop(L, 1);
    int ht = w_table(L, w, t, "health", true);
    if (ht) {
        u->health.enabled = true;
        u->health.path = w_str(L, w, ht, "path", false);
        u->health.interval_ms = w_uint(L, w, ht, "interval_ms");
        u->health.timeout_ms = w_uint(L, w, ht, "timeout_ms");
        u->health.healthy = w_u32(L, w, ht, "healthy");
        u->health.unhealthy = w_u32(L, w, ht, "unhealthy");
        u->health.host = w_str(L, w, ht, "host", true);
        w_statuses(L, w, ht, "expect", u->health.expect);
        lua_pop(L, 1);
    }
}

static void walk_retry(lua_State *L, struct walk *w, int t, struct lv_retry_cfg *r)
{
    r->attempts = w_u32(L, w, t, "attempts");
    int on = w_table(L, w, t, "on", false);
    int et = w_table(L, w, on, "errors", false);
    lua_Integer n = (lua_Integer)lua_rawlen(L, et);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, et, i);
        const char *s = lua_tostring(L, -1);
        int k = 0;
        while (k < NELEM(retry_error_names) && !(s && strcmp(s, retry_error_names[k]) == 0))
            k++;
        if (k == NELEM(retry_error_names))
            luaL_error(L, "internal: unknown retry.on error '%s'", s ? s : "?");
        r->on_errors |= 1u << k;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    w_statuses(L, w, on, "statuses", r->on_status);
    lua_pop(L, 1);
    r->backoff_base_ms = w_uint(L, w, t, "backoff_base_ms");
    r->backoff_max_ms = w_uint(L, w, t, "backoff_max_ms");
    r->jitter = (enum lv_jitter)w_enum(L, w, t, "jitter", jitter_names, NELEM(jitter_names));
    r->budget_ratio = w_num(L, w, t, "budget_ratio");
    r->budget_min_per_second = w_num(L, w, t, "budget_min_per_second");
    r->budget_window_ms = w_uint(L, w, t, "budget_window_ms");
    r->non_idempotent = w_bool(L, w, t, "non_idempotent");
    r->buffer = w_uint(L, w, t, "buffer");
}

static void walk_breaker(lua_State *L, struct walk *w, int t, struct lv_breaker_cfg *b)
{
    b->enabled = w_bool(L, w, t, "enabled");
    if (!b->enabled)
        return;
    b->failure_ratio = w_num(L, w, t, "failure_ratio");
    b->min_requests = w_u32(L, w, t, "min_requests");
    b->window_ms = w_uint(L, w, t, "window_ms");
    b->consecutive_failures = w_u32(L, w, t, "consecutive_failures");
    b->open_for_ms = w_uint(L, w, t, "open_for_ms");
    b->max_open_for_ms = w_uint(L, w, t, "max_open_for_ms");
    b->half_open_requests = w_u32(L, w, t, "half_open_requests");
    b->slow_call_ms = w_uint(L, w, t, "slow_call_ms");
    b->slow_call_ratio = w_num(L, w, t, "slow_call_ratio");
}

static void walk_idempotency(lua_State *L, struct walk *w, int t, struct lv_idem_cfg *d)
{
    d->key_ref = -1;
    d->enabled = w_bool(L, w, t, "enabled");
    if (!d->enabled)
        return;
    d->header = w_str(L, w, t, "header", false);
    d->ttl_ms = w_uint(L, w, t, "ttl_ms");
    d->methods = w_methods(L, w, t, "methods");
    d->required = w_bool(L, w, t, "required");
    d->store = (enum lv_idem_store)w_enum(L, w, t, "store", store_names, NELEM(store_names));
    if (d->store == LV_IDEM_STORE_REDIS) {
        int rt = w_table(L, w, t, "redis", false);
        w_hostport(L, w, rt, &d->redis);
        lua_pop(L, 1);
    }
    d->redis_prefix = w_str(L, w, t, "redis_prefix", false);
    d->max_body = w_uint(L, w, t, "max_body");
    d->max_memory = w_uint(L, w, t, "max_memory");
    d->on_conflict = (enum lv_idem_on_conflict)w_enum(L, w, t, "on_conflict", conflict_names,
                                                      NELEM(conflict_names));
    d->on_store_error = (enum lv_idem_on_store_error)w_enum(
        L, w, t, "on_store_error", store_error_names, NELEM(store_error_names));
    d->key_ref = w_ref(L, w, t, "key");
}

static void walk_route(lua_State *L, struct walk *w, int t, struct lv_route_cfg *r)
{
    r->classify_ref = -1;
    r->fallback_ref = -1;
    r->idempotency.key_ref = -1;
    r->name = w_str(L, w, t, "name", false);
    r->line = (int)w_uint(L, w, t, "line");
    r->match_prefix = w_str(L, w, t, "match_prefix", true);
    r->match_path = w_str(L, w, t, "match_path", true);
    r->match_host = w_str(L, w, t, "match_host", true);
    r->match_methods = w_methods(L, w, t, "match_methods");
    char *up = w_str(L, w, t, "upstream", false);
    r->upstream = lv_config_upstream(w->c, up);
    free(up);
    if (!r->upstream)
        luaL_error(L, "internal: route '%s' names an unknown upstream", r->name);
    r->timeout_ms = w_uint(L, w, t, "timeout_ms");
    r->try_timeout_ms = w_uint(L, w, t, "try_timeout_ms");
    r->request_buffer = w_uint(L, w, t, "request_buffer");
    int st = w_table(L, w, t, "retry", false);
    walk_retry(L, w, st, &r->retry);
    lua_pop(L, 1);
    st = w_table(L, w, t, "breaker", false);
    walk_breaker(L, w, st, &r->breaker);
    lua_pop(L, 1);
    st = w_table(L, w, t, "idempotency", false);
    walk_idempotency(L, w, st, &r->idempotency);
    lua_pop(L, 1);
    r->classify_ref = w_ref(L, w, t, "classify");
    r->fallback_ref = w_ref(L, w, t, "fallback");
}

/* Stack: 1 = struct walk (light userdata), 2 = normalized config, 3 = files list (or nil). */
static int walk_main(lua_State *L)
{
    struct walk *w = lua_touserdata(L, 1);
    struct lv_config *c = w->c;
    const int t = 2;

    if (lua_istable(L, 3)) {
        size_t n = lua_rawlen(L, 3);
        c->files = lv_xcalloc(n + 1, sizeof(*c->files));
        for (size_t i = 0; i < n; i++) {
            lua_rawgeti(L, 3, (lua_Integer)i + 1);
            const char *f = lua_tostring(L, -1);
            if (!f)
                bad(L, w, "files[]");
            char *abs = realpath(f, NULL);
            c->files[i] = abs ? abs : lv_xstrdup(f);
            lua_pop(L, 1);
        }
    } else {
        c->files = lv_xcalloc(1, sizeof(*c->files));
    }

    int lt = w_table(L, w, t, "listen", false);
    size_t n = lua_rawlen(L, lt);
    c->listens = lv_xcalloc(n ? n : 1, sizeof(*c->listens));
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, lt, (lua_Integer)i + 1);
        int et = lua_gettop(L);
        if (!lua_istable(L, et))
            bad(L, w, "listen[]");
        c->nlistens = i + 1;
        int at = w_table(L, w, et, "addr", false);
        w_hostport(L, w, at, &c->listens[i].addr);
        lua_pop(L, 1);
        c->listens[i].tls_cert = w_str(L, w, et, "tls_cert", true);
        c->listens[i].tls_key = w_str(L, w, et, "tls_key", true);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    int at = w_table(L, w, t, "admin", true);
    if (at) {
        c->admin_enabled = true;
        w_hostport(L, w, at, &c->admin);
        lua_pop(L, 1);
    }

    int lim = w_table(L, w, t, "limits", false);
    walk_limits(L, w, lim, &c->limits);
    lua_pop(L, 1);

    c->access_log = (enum lv_access_log)w_enum(L, w, t, "access_log", access_log_names,
                                               NELEM(access_log_names));
    c->access_log_path = w_str(L, w, t, "access_log_path", c->access_log != LV_ACCESS_LOG_FILE);
    c->error_log_path = w_str(L, w, t, "error_log_path", true);
    c->watch = w_bool(L, w, t, "watch");
    c->drain_timeout_ms = w_uint(L, w, t, "drain_timeout_ms");

    int ut = w_table(L, w, t, "upstreams", false);
    n = lua_rawlen(L, ut);
    c->upstreams = lv_xcalloc(n ? n : 1, sizeof(*c->upstreams));
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, ut, (lua_Integer)i + 1);
        if (!lua_istable(L, -1))
            bad(L, w, "upstreams[]");
        c->nupstreams = i + 1;
        walk_upstream(L, w, lua_gettop(L), &c->upstreams[i]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);

    int rt = w_table(L, w, t, "routes", false);
    n = lua_rawlen(L, rt);
    c->routes = lv_xcalloc(n ? n : 1, sizeof(*c->routes));
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, rt, (lua_Integer)i + 1);
        if (!lua_istable(L, -1))
            bad(L, w, "routes[]");
        c->nroutes = i + 1;
        walk_route(L, w, lua_gettop(L), &c->routes[i]);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    return 0;
}

/* ---- loading */

static double unix_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The error for a load that failed on one of its limits, or false. */
static bool limit_error(struct lv__lalloc *a, int status, const char *label, struct lv_buf *errors)
{
    if (status == LUA_ERRMEM || a->mem_hit)
        lv_buf_printf(errors,
                      "%s:1: the configuration used more than %zu MiB of Lua memory while "
                      "loading\n",
                      label, LV_CONFIG_LOAD_MEMORY >> 20);
    else if (a->hit)
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
static struct lv_config *run(const char *fn, const char *const *args, int nargs, const char *label,
                             char *file, const char *lua_dir, bool limited, struct lv_buf *errors)
{
    lua_State *L = state_new(lua_dir);
    if (!L) {
        lv_buf_printf(errors, "%s: cannot create a Lua state\n", label);
        free(file);
        return NULL;
    }
    struct lv__lalloc *a = alloc_of(L);
    if (limited)
        a->limit = LV_CONFIG_LOAD_MEMORY;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "levee.config");
    if (lua_pcall(L, 1, 1, 0) != LUA_OK) {
        lv_buf_printf(errors, "%s: cannot load levee.config from %s: %s\n", label, lua_dir,
                      lua_tostring(L, -1));
        state_close(L);
        free(file);
        return NULL;
    }
    if (!lua_istable(L, -1) || lua_getfield(L, -1, fn) != LUA_TFUNCTION) {
        lv_buf_printf(errors, "%s: levee.config from %s has no function %s\n", label, lua_dir, fn);
        state_close(L);
        free(file);
        return NULL;
    }
    for (int i = 0; i < nargs; i++) {
        if (args[i])
            lua_pushstring(L, args[i]);
        else
            lua_pushnil(L);
    }
    if (limited) {
        lua_createtable(L, 0, 2);
        lua_pushcfunction(L, l_limit_hit);
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
        a->loading = true;
        a->deadline_ns = mono_ns() + (uint64_t)LV_CONFIG_LOAD_SECONDS * 1000000000u;
        /* Set on the main thread, inherited by the coroutines levee.config runs code on. */
        lua_sethook(L, load_hook, LUA_MASKCOUNT, LV__LOAD_TICK);
    }
    int st = lua_pcall(L, nargs, 2, 0);
    lua_sethook(L, NULL, 0, 0);
    a->loading = false;
    if (st != LUA_OK) {
        if (!limited || !limit_error(a, st, label, errors))
            lv_buf_printf(errors, "%s: internal error in levee.config: %s\n", label,
                          lua_tostring(L, -1));
        state_close(L);
        free(file);
        return NULL;
    }
    if (!lua_istable(L, -2)) {
        /* (nil, errors) */
        if (lua_istable(L, -1))
            put_lines(L, lua_absindex(L, -1), errors);
        if (!lua_istable(L, -1) || lua_rawlen(L, -1) == 0)
            lv_buf_printf(errors, "%s: the configuration was rejected without a reason\n", label);
        state_close(L);
        free(file);
        return NULL;
    }

    /* Warnings go with a config in `errors` (lv_config_job_finish logs them). */
    if (lua_getfield(L, -2, "warnings") == LUA_TTABLE)
        put_lines(L, lua_absindex(L, -1), errors);
    lua_pop(L, 1);
    struct lv_config *c = lv_xcalloc(1, sizeof(*c));
    c->file = file;
    c->refs = 1;
    struct walk w = {.c = c};
    int cfg = lua_absindex(L, -2), files = lua_absindex(L, -1);
    lua_pushcfunction(L, walk_main);
    lua_pushlightuserdata(L, &w);
    lua_pushvalue(L, cfg);
    lua_pushvalue(L, files);
    st = lua_pcall(L, 3, 0, 0);
    if (st != LUA_OK) {
        if (!limited || !limit_error(a, st, label, errors))
            lv_buf_printf(errors, "%s: %s\n", label, lua_tostring(L, -1));
        state_close(L);
        config_free(c);
        return NULL;
    }
    lua_settop(L, 0);
    if (w.nrefs == 0) {
        state_close(L);
    } else {
        /* Only the hooks stay reachable (from the registry); drop the rest now. */
        lua_gc(L, LUA_GCCOLLECT);
        /* hooks.c seals the sandbox and makes the hook thread (hooks.h). */
        if (lv__hooks_init(L, c, errors) != 0) {
            state_close(L);
            config_free(c);
            return NULL;
        }
        c->L = L;
        a->limit = LV__CONFIG_LUA_MEM_LIMIT; /* the hooks' state-wide cap from now on */
    }
    c->router = lv_router_build(c->routes, c->nroutes); /* off the serving loop */
    c->loaded_at = unix_now();
    return c;
}

/* Loads on the calling thread; bounded by the Lua-side limits only. */
static struct lv_config *load_here(const char *file, const char *lua_dir, struct lv_buf *errors)
{
    char *abs = realpath(file, NULL);
    const char *args[] = {file, lua_dir};
    return run("compile", args, 2, file, abs ? abs : lv_xstrdup(file), lua_dir, true, errors);
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

void lv_config_job_run(void *job)
{
    struct lv_config_job *j = job;
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = load_here(j->file, j->lua_dir, &errors);
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

struct lv_config *lv_config_dev(const char *url, const char *listen, const char *lua_dir,
                                struct lv_buf *errors)
{
    lua_dir = lua_dir_or_default(lua_dir);
    const char *args[] = {url, listen};
    struct lv_buf name = LV_BUF_INIT;
    lv_buf_printf(&name, "dev:%s", url ? url : "");
    return run("dev", args, 2, "levee dev", name.data, lua_dir, false, errors);
}

void lv_config_pin(struct lv_config *c)
{
    c->refs++;
}

void lv_config_unpin(struct lv_config *c)
{
    if (c && --c->refs == 0)
        config_free(c);
}

struct lv_upstream_cfg *lv_config_upstream(struct lv_config *c, const char *name)
{
    if (!name)
        return NULL;
    for (size_t i = 0; i < c->nupstreams; i++)
        if (c->upstreams[i].name && strcmp(c->upstreams[i].name, name) == 0)
            return &c->upstreams[i];
    return NULL;
}
