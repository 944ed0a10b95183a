/*
 * guards.c: each guard checks its arguments, then calls the original function (its upvalue).
 */
#include "script/guards.h"

#include <lauxlib.h>
#include <stdio.h>

#include "script/patcost.h"
#include "script/runtime.h"

/* A pattern call whose worst case (patcost.h) is over this many steps, plus a linear allowance
 * per byte of subject and pattern, is refused while loading: a few tenths of a second. */
#define LV__PATTERN_MAX_COST 2e7
#define LV__PATTERN_LINEAR   16.0
/* More repetitions of an empty string than this are refused: string.rep copies nothing then,
 * but still loops once per repetition inside one C call. */
#define LV__REP_EMPTY_MAX ((lua_Integer)1 << 24)
/* table.move over more elements than this is refused while loading (it loops in C). */
#define LV__MOVE_MAX ((lua_Integer)1 << 24)

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
    if (!lv_rt_guarding(L))
        return call_original(L);
    lv_rt_check_time(L);
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
    if (lv_rt_guarding(L)) {
        lv_rt_check_time(L);
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
    if (lv_rt_guarding(L)) {
        lv_rt_check_time(L);
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

void lv_guards_install(lua_State *L)
{
    wrap(L, "string", "rep", guard_rep);
    wrap(L, "string", "find", guard_find);
    wrap(L, "string", "match", guard_match);
    wrap(L, "string", "gmatch", guard_gmatch);
    wrap(L, "string", "gsub", guard_gsub);
    static const char *const by_len[] = {"insert", "remove", "sort", "concat", "unpack"};
    for (size_t i = 0; i < sizeof(by_len) / sizeof(by_len[0]); i++)
        wrap(L, "table", by_len[i], guard_len);
    wrap(L, "table", "move", guard_move);
}
