/*
 * runtime.c: the allocator, the budget's count hook, protected calls and the seal of
 * runtime.h. The allocator's userdata (struct rt) is the state's per-state record: the count
 * hook and the guards find it with lua_getallocf, without touching the Lua stack.
 */
#include "script/runtime.h"

#include <assert.h>
#include <lauxlib.h>
#include <lualib.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "base/log.h"

struct rt {
    size_t used;
    size_t limit; /* what an allocation may not pass: cap, or a call's tighter limit */
    size_t cap;   /* the state-wide cap */
    bool refused; /* an allocation was refused at the limit */
    lua_State *main;

    /* the budget */
    bool running;
    bool hit;
    struct lv_rt_budget b;
    uint64_t ran;              /* instructions counted */
    uint64_t deadline_ns;      /* CLOCK_THREAD_CPUTIME_ID of the thread running it; 0: none */
    uint64_t wall_deadline_ns; /* CLOCK_MONOTONIC; 0: none */
};

/* Every state alive and the bytes they hold. States are made on loader threads and freed on
 * the loop (or on a loader thread), so the counters are atomic. */
static atomic_size_t bytes_total;
static atomic_uint states_live;

void lv_rt_stats(size_t *bytes, unsigned *states)
{
    *bytes = atomic_load_explicit(&bytes_total, memory_order_relaxed);
    *states = atomic_load_explicit(&states_live, memory_order_relaxed);
}

static void *lalloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    struct rt *a = ud;
    size_t old = ptr ? osize : 0;
    if (nsize == 0) {
        free(ptr);
        a->used -= old;
        atomic_fetch_sub_explicit(&bytes_total, old, memory_order_relaxed);
        return NULL;
    }
    if (nsize > old && a->used - old + nsize > a->limit) {
        a->refused = true;
        return NULL;
    }
    void *p = realloc(ptr, nsize);
    if (p) {
        a->used = a->used - old + nsize;
        if (nsize >= old)
            atomic_fetch_add_explicit(&bytes_total, nsize - old, memory_order_relaxed);
        else
            atomic_fetch_sub_explicit(&bytes_total, old - nsize, memory_order_relaxed);
    }
    return p;
}

static struct rt *rt_of(lua_State *L)
{
    void *ud = NULL;
    lua_Alloc f = lua_getallocf(L, &ud);
    (void)f;
    return ud;
}

static int panic(lua_State *L)
{
    const char *msg = lua_tostring(L, -1);
    lv_error("lua: unprotected error in the configuration state: %s", msg ? msg : "?");
    return 0; /* Lua aborts */
}

lua_State *lv_rt_new(const char *lua_dir, size_t cap)
{
    struct rt *a = lv_xcalloc(1, sizeof(*a));
    a->limit = a->cap = cap;
    lua_State *L = lua_newstate(lalloc, a);
    if (!L) {
        free(a);
        return NULL;
    }
    a->main = L;
    atomic_fetch_add(&states_live, 1);
    lua_atpanic(L, panic);
    luaL_openlibs(L);
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

void lv_rt_close(lua_State *L)
{
    struct rt *a = rt_of(L);
    lua_close(L);
    free(a);
    atomic_fetch_sub(&states_live, 1);
}

void lv_rt_set_cap(lua_State *L, size_t cap)
{
    struct rt *a = rt_of(L);
    a->cap = a->limit = cap;
}

void lv_rt_cap_call(lua_State *L, size_t extra)
{
    struct rt *a = rt_of(L);
    a->limit = a->cap;
    if (extra > 0 && a->used < a->cap - extra)
        a->limit = a->used + extra;
}

size_t lv_rt_used(lua_State *L)
{
    return rt_of(L)->used;
}

bool lv_rt_memory_refused(lua_State *L)
{
    return rt_of(L)->refused;
}

/* ---- the budget */

static uint64_t clock_ns(clockid_t id)
{
    struct timespec ts;
    clock_gettime(id, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The running thread's CPU time is the budget (the load's own work: a busy machine, or a
 * sanitizer's slowdown shared with other jobs, does not make an ordinary file "run too
 * long"); the wall clock bounds it too, so the answer comes before its owner gives up. */
static bool over_time(const struct rt *a)
{
    return (a->deadline_ns && clock_ns(CLOCK_THREAD_CPUTIME_ID) >= a->deadline_ns) ||
           (a->wall_deadline_ns && clock_ns(CLOCK_MONOTONIC) >= a->wall_deadline_ns);
}

/* Once over the budget it fires at every instruction, so a pcall in a loop cannot outlast
 * it. */
static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct rt *a = rt_of(L);
    if (!a->running || (a->b.skip_main && L == a->main))
        return;
    if (!a->hit) {
        /* The thread's own period: a coroutine made under another budget keeps its hook. */
        a->ran += (uint64_t)lua_gethookcount(L);
        if (a->ran < a->b.instructions && !over_time(a))
            return;
    }
    a->hit = true;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    luaL_where(L, 0); /* level 0 is the Lua function that was running (a hook has no frame) */
    lua_pushstring(L, a->b.message);
    lua_concat(L, 2);
    lua_error(L);
}

void lv_rt_budget_start(lua_State *L, lua_State *on, const struct lv_rt_budget *b)
{
    struct rt *a = rt_of(L);
    assert(b->tick > 0 && b->message);
    a->b = *b;
    a->running = true;
    a->hit = false;
    a->ran = 0;
    a->deadline_ns = b->time_ms ? clock_ns(CLOCK_THREAD_CPUTIME_ID) + b->time_ms * 1000000u : 0;
    a->wall_deadline_ns = b->wall_ms ? clock_ns(CLOCK_MONOTONIC) + b->wall_ms * 1000000u : 0;
    lua_sethook(on, count_hook, LUA_MASKCOUNT, b->tick);
}

void lv_rt_budget_stop(lua_State *L, lua_State *on)
{
    lua_sethook(on, NULL, 0, 0);
    rt_of(L)->running = false;
}

bool lv_rt_budget_hit(lua_State *L)
{
    return rt_of(L)->hit;
}

static int l_budget_hit(lua_State *L)
{
    lua_pushboolean(L, rt_of(L)->hit);
    return 1;
}

void lv_rt_push_budget_hit(lua_State *L)
{
    lua_pushcfunction(L, l_budget_hit);
}

bool lv_rt_guarding(lua_State *L)
{
    struct rt *a = rt_of(L);
    return a->running && a->b.guard_c_calls && L != a->main;
}

void lv_rt_check_time(lua_State *L)
{
    struct rt *a = rt_of(L);
    if (!a->hit && !over_time(a))
        return;
    a->hit = true;
    luaL_error(L, "%s", a->b.message);
}

/* ---- protected calls */

/* Message handler: the message (without calling any metamethod) and a traceback. */
static int msgh(lua_State *L)
{
    const char *msg = NULL;
    if (lua_type(L, 1) == LUA_TSTRING || lua_type(L, 1) == LUA_TNUMBER)
        msg = lua_tostring(L, 1);
    if (!msg)
        msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
    luaL_traceback(L, L, msg, 1);
    return 1;
}

enum lv_rt_status lv_rt_pcall(lua_State *L, int nargs, int nresults, bool traceback)
{
    int h = 0;
    if (traceback) {
        /* The caller's stack holds the function and its arguments; one more slot for the
         * handler is within the LUA_MINSTACK every C function and thread has. */
        h = lua_gettop(L) - nargs;
        lua_pushcfunction(L, msgh);
        lua_insert(L, h);
    }
    int st = lua_pcall(L, nargs, nresults, h);
    if (h)
        lua_remove(L, h);
    if (st == LUA_OK)
        return LV_RT_OK;
    if (st == LUA_ERRMEM)
        return LV_RT_MEMORY;
    return rt_of(L)->hit ? LV_RT_BUDGET : LV_RT_ERROR;
}

/* ---- error lines */

void lv_rt_error_put(struct lv_buf *err, const char *s, size_t n)
{
    for (size_t i = 0; i < n && err->len < LV_RT_ERROR_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];
        lv_buf_putc(err, ch < 0x20 || ch == 0x7f ? ' ' : (char)ch);
    }
}

void lv_rt_error_end(struct lv_buf *err)
{
    if (err->len >= LV_RT_ERROR_MAX) {
        err->len = LV_RT_ERROR_MAX - 3;
        lv_buf_append(err, "...", 3);
    }
    *lv_buf_reserve(err, 1) = '\0';
}

void lv_rt_error_traced(struct lv_buf *err, const char *m, size_t n)
{
    static const char tb[] = "\nstack traceback:\n\t";
    const char *end = m + n;
    const char *t = NULL;
    for (const char *p = m; p + sizeof(tb) - 1 <= end; p++) {
        if (memcmp(p, tb, sizeof(tb) - 1) == 0) {
            t = p;
            break;
        }
    }
    lv_rt_error_put(err, m, (size_t)((t ? t : end) - m));
    if (!t) {
        lv_rt_error_end(err);
        return;
    }
    /* Frames are "\n\t"-separated; keep the Lua ones. (With one, the message's own
     * "file:line:" already says where.) */
    const char *frames[8];
    size_t lens[8];
    int nf = 0, total = 0;
    const char *p = t + sizeof(tb) - 1;
    while (p < end) {
        const char *q = p;
        while (q + 1 < end && !(q[0] == '\n' && q[1] == '\t'))
            q++;
        if (q + 1 >= end)
            q = end;
        if (!(q - p >= 3 && memcmp(p, "[C]", 3) == 0)) {
            if (nf < 8) {
                frames[nf] = p;
                lens[nf] = (size_t)(q - p);
                nf++;
            }
            total++;
        }
        p = q < end ? q + 2 : end;
    }
    if (total > 1) {
        lv_buf_puts(err, " (traceback: ");
        for (int i = 0; i < nf; i++) {
            if (i)
                lv_buf_puts(err, "; ");
            lv_rt_error_put(err, frames[i], lens[i]);
        }
        if (total > nf)
            lv_buf_puts(err, "; ...");
        lv_buf_putc(err, ')');
    }
    lv_rt_error_end(err);
}

/* ---- the seal */

/* Runs once on the loaded state with the real globals (levee's code, not the file's).
 * Arguments: the list of hook functions, and lv_rt_push_budget_hit's function. It walks what the
 * hooks can reach (functions through their upvalues, tables through their keys and values; not
 * levee's own functions, whose _ENV is the real global table), then:
 *  - replaces, wherever it finds them (globals, upvalues, table fields, so a `local x = xpcall`
 *    taken when the file loaded is covered too): `require` (the sandbox's, the one function of
 *    levee's own the file is given) by a function that fails, since modules load with the
 *    file and not per request; `rawset` by one that refuses the sealed tables (it would go
 *    around __newindex); `setmetatable` by one that refuses __gc (a finalizer runs during
 *    some later collection, outside every limit); `xpcall` by one that skips the message
 *    handler once the budget ran out (Lua runs the handler of an error raised by
 *    a count hook with hooks off, so a looping handler would never be stopped);
 *  - makes each sandbox environment and its library tables read-only: their contents move
 *    to a hidden table read through __index, and __newindex refuses writes, so no hook can
 *    change what another hook or the next request sees. A metatable the file gave its own
 *    environment is kept, behind the hidden table. */
static const char seal_lua[] =
    "local hooks, limit_hit = ...\n"
    "local real_G = _G\n"
    "local type, next, rawget, rawset, error, tostring = type, next, rawget, rawset, error, "
    "tostring\n"
    "local setmetatable, xpcall = setmetatable, xpcall\n"
    "local getupvalue, setupvalue, getinfo = debug.getupvalue, debug.setupvalue, debug.getinfo\n"
    "local getmt, setmt = debug.getmetatable, debug.setmetatable\n"
    "\n"
    "local frozen = setmetatable({}, { __mode = 'k' })\n"
    "local function no_require(name)\n"
    "  error('require is not available in hooks (require ' .. tostring(name)\n"
    "    .. ' at the top of the configuration file and keep it in a local)', 2)\n"
    "end\n"
    "local function guarded_rawset(t, k, v)\n"
    "  if frozen[t] then error('hooks cannot change globals or library tables', 2) end\n"
    "  return rawset(t, k, v)\n"
    "end\n"
    "local function guarded_setmetatable(t, mt)\n"
    "  if type(mt) == 'table' and rawget(mt, '__gc') ~= nil then\n"
    "    error('__gc metamethods are not allowed in hooks', 2)\n"
    "  end\n"
    "  return setmetatable(t, mt)\n"
    "end\n"
    "local function guarded_xpcall(f, h, ...)\n"
    "  if type(h) ~= 'function' then return xpcall(f, h, ...) end\n"
    "  return xpcall(f, function(e)\n"
    "    if limit_hit() then return e end\n"
    "    return h(e)\n"
    "  end, ...)\n"
    "end\n"
    "local repl = { [rawset] = guarded_rawset, [setmetatable] = guarded_setmetatable,\n"
    "  [xpcall] = guarded_xpcall }\n"
    "\n"
    "local seen, funcs, tabs, envs = { [real_G] = true }, {}, {}, {}\n"
    "local todo, budget = {}, 200000\n"
    "for i = 1, #hooks do todo[#todo + 1] = hooks[i] end\n"
    "while #todo > 0 and budget > 0 do\n"
    "  local v = todo[#todo]\n"
    "  todo[#todo] = nil\n"
    "  if not seen[v] then\n"
    "    seen[v] = true\n"
    "    budget = budget - 1\n"
    "    local kids = {}\n"
    "    if type(v) == 'function' then\n"
    "      local lua, i = getinfo(v, 'S').what ~= 'C', 1\n"
    "      while true do\n"
    "        local name, uv = getupvalue(v, i)\n"
    "        if name == nil then break end\n"
    "        if name == '_ENV' and uv == real_G then\n"
    "          repl[v] = no_require\n"
    "          kids = nil\n"
    "          break\n"
    "        end\n"
    "        if name == '_ENV' and type(uv) == 'table' then envs[uv] = true end\n"
    "        kids[#kids + 1] = uv\n"
    "        i = i + 1\n"
    "      end\n"
    "      if kids and lua then funcs[#funcs + 1] = v end\n"
    "    else\n"
    "      tabs[#tabs + 1] = v\n"
    "      for k, x in next, v do\n"
    "        kids[#kids + 1] = k\n"
    "        kids[#kids + 1] = x\n"
    "      end\n"
    "    end\n"
    "    for _, x in next, kids or {} do\n"
    "      local t = type(x)\n"
    "      if t == 'function' or t == 'table' then todo[#todo + 1] = x end\n"
    "    end\n"
    "  end\n"
    "end\n"
    "\n"
    "for _, f in next, funcs do\n"
    "  local i = 1\n"
    "  while true do\n"
    "    local name, uv = getupvalue(f, i)\n"
    "    if name == nil then break end\n"
    "    local r = uv ~= nil and repl[uv]\n"
    "    if r then setupvalue(f, i, r) end\n"
    "    i = i + 1\n"
    "  end\n"
    "end\n"
    "for _, t in next, tabs do\n"
    "  for k, x in next, t do\n"
    "    local r = repl[x]\n"
    "    if r then rawset(t, k, r) end\n"
    "  end\n"
    "end\n"
    "\n"
    "local function readonly(t, what)\n"
    "  if frozen[t] then return end\n"
    "  local backing = {}\n"
    "  for k, v in next, t do backing[k] = v end\n"
    "  for k in next, backing do rawset(t, k, nil) end\n"
    "  local old = getmt(t)\n"
    "  if old ~= nil then setmt(backing, old) end\n"
    "  setmt(t, {\n"
    "    __index = backing,\n"
    "    __newindex = function(_, k)\n"
    "      error('hooks cannot change ' .. what .. tostring(k)\n"
    "        .. ': keep state in a local of the configuration file', 2)\n"
    "    end,\n"
    "    __pairs = function() return next, backing, nil end,\n"
    "    __metatable = false,\n"
    "  })\n"
    "  frozen[t] = true\n"
    "  for _, lib in next, { 'string', 'table', 'math', 'utf8', 'os' } do\n"
    "    local l = what == 'global ' and rawget(backing, lib)\n"
    "    if type(l) == 'table' then readonly(l, lib .. '.') end\n"
    "  end\n"
    "end\n"
    "local n = 0\n"
    "for env in next, envs do\n"
    "  if not frozen[env] then n = n + 1 end\n"
    "  readonly(env, 'global ')\n"
    "end\n"
    "return n\n";

void lv_rt_seal(lua_State *L)
{
    int list = lua_gettop(L);
    luaL_checktype(L, list, LUA_TTABLE);
    if (luaL_loadbufferx(L, seal_lua, sizeof(seal_lua) - 1, "=levee.seal", "t") != LUA_OK)
        lua_error(L);
    lua_pushvalue(L, list);
    lv_rt_push_budget_hit(L);
    lua_call(L, 2, 0);
    lua_pop(L, 1);
}
