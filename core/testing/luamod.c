#include "testing/luamod.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "obs/accesslog.h"
#include "script/config.h"
#include "testing/sim.h"

#define GW_MT "levee.testing.gateway"

static const char *default_config;

void lv_testing_set_default_config(const char *path)
{
    default_config = path;
}

struct gw {
    struct lv_sim *sim;
};

static struct lv_sim *check_gw(lua_State *L)
{
    struct gw *g = luaL_checkudata(L, 1, GW_MT);
    if (!g->sim)
        luaL_error(L, "levee.testing: this gateway is closed");
    return g->sim;
}

/* ---- durations: a number of seconds, or "250ms", "1.5s", "1m30s", "2h" (bare: seconds) */

static int parse_duration(const char *s, uint64_t *ms)
{
    double total = 0;
    const char *p = s;
    if (!*p)
        return -1;
    while (*p) {
        char *end;
        double v = strtod(p, &end);
        if (end == p || v < 0 || !isfinite(v))
            return -1;
        p = end;
        double unit = 1000;
        if (strncmp(p, "ms", 2) == 0) {
            unit = 1;
            p += 2;
        } else if (*p == 's') {
            p++;
        } else if (*p == 'm') {
            unit = 60000;
            p++;
        } else if (*p == 'h') {
            unit = 3600000;
            p++;
        } else if (*p || end != s + strlen(s)) {
            return -1;
        }
        total += v * unit;
    }
    if (total > 1e15)
        return -1;
    *ms = (uint64_t)llround(total);
    return 0;
}

static uint64_t check_duration(lua_State *L, int idx, const char *what)
{
    uint64_t ms = 0;
    if (lua_type(L, idx) == LUA_TNUMBER) {
        double v = lua_tonumber(L, idx);
        if (v < 0 || !isfinite(v) || v > 1e12)
            luaL_error(L, "%s: expected a duration, got %f", what, v);
        return (uint64_t)llround(v * 1000);
    }
    const char *s = lua_tostring(L, idx);
    if (!s || parse_duration(s, &ms) < 0)
        luaL_error(L, "%s: expected a duration (\"250ms\", \"5s\", \"1m30s\" or seconds), got %s",
                   what, s ? s : luaL_typename(L, idx));
    return ms;
}

/* ---- reading a request description */

/* Strings taken from Lua stay referenced by the anchor table (at `anchor`) for the call. */
static const char *anchored(lua_State *L, int anchor, int idx, size_t *len)
{
    idx = lua_absindex(L, idx);
    lua_pushvalue(L, idx);
    const char *s = lua_tolstring(L, -1, len);
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    return s;
}

static void *anchored_alloc(lua_State *L, int anchor, size_t n)
{
    void *p = lua_newuserdatauv(L, n ? n : 1, 0);
    memset(p, 0, n ? n : 1);
    lua_rawseti(L, anchor, (lua_Integer)lua_rawlen(L, anchor) + 1);
    return p;
}

/* A headers table { name = "v" | number | { "v1", "v2" } } at `idx` into an array. */
static void read_headers(lua_State *L, int anchor, int idx, const char *what,
                         const struct lv_hook_header **out, size_t *nout)
{
    *out = NULL;
    *nout = 0;
    if (lua_isnoneornil(L, idx))
        return;
    idx = lua_absindex(L, idx);
    if (!lua_istable(L, idx))
        luaL_error(L, "%s: expected a table of headers", what);
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        n += lua_istable(L, -1) ? lua_rawlen(L, -1) : 1;
        lua_pop(L, 1);
    }
    struct lv_hook_header *h = anchored_alloc(L, anchor, n * sizeof(*h));
    size_t i = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
        if (lua_type(L, -2) != LUA_TSTRING)
            luaL_error(L, "%s: header names are strings", what);
        size_t nl;
        const char *name = lua_tolstring(L, -2, &nl);
        size_t nv = lua_istable(L, -1) ? lua_rawlen(L, -1) : 1;
        for (size_t j = 1; j <= nv && i < n; j++) {
            if (lua_istable(L, -1))
                lua_rawgeti(L, -1, (lua_Integer)j);
            else
                lua_pushvalue(L, -1);
            int t = lua_type(L, -1);
            if (t != LUA_TSTRING && t != LUA_TNUMBER)
                luaL_error(L, "%s: header %s: expected a string or a number", what, name);
            h[i].name = name; /* a key of the table: referenced while the table is */
            h[i].name_len = nl;
            h[i].value = anchored(L, anchor, -1, &h[i].value_len);
            lua_pop(L, 1);
            i++;
        }
        lua_pop(L, 1);
    }
    *out = h;
    *nout = i;
}

static void outcome_from_value(lua_State *L, int idx, int number, struct lv_sim_outcome *o)
{
    if (lua_type(L, idx) == LUA_TNUMBER) {
        lua_Integer st = lua_tointeger(L, idx);
        if (!lua_isinteger(L, idx) || st < 100 || st > 599)
            luaL_error(L, "upstream[%d]: a status is an integer 100..599", number);
        o->kind = LV_OUT_STATUS;
        o->status = (int)st;
        return;
    }
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        o->kind = lv_outcome_from_name(s, n);
        if (o->kind == LV_OUT_NONE)
            luaL_error(L,
                       "upstream[%d]: unknown outcome \"%s\" (a status, \"reset\", \"timeout\", "
                       "\"connect-failure\", \"protocol-error\" or a table)",
                       number, s);
        return;
    }
    luaL_error(L, "upstream[%d]: expected a status, an error name or a table, got %s", number,
               luaL_typename(L, idx));
}

static void read_outcome(lua_State *L, int anchor, int idx, int number, struct lv_sim_outcome *o)
{
    idx = lua_absindex(L, idx);
    memset(o, 0, sizeof(*o));
    if (!lua_istable(L, idx)) {
        outcome_from_value(L, idx, number, o);
        return;
    }
    /* { status = N, headers, body, time } | { error = "reset", time } | { N or "reset", ... } */
    lua_getfield(L, idx, "status");
    lua_getfield(L, idx, "error");
    lua_rawgeti(L, idx, 1);
    int given = !lua_isnil(L, -3) + !lua_isnil(L, -2) + !lua_isnil(L, -1);
    if (given != 1)
        luaL_error(L,
                   "upstream[%d]: a table outcome has exactly one of status = N, "
                   "error = \"name\" or a first element",
                   number);
    int which = !lua_isnil(L, -3) ? -3 : !lua_isnil(L, -2) ? -2 : -1;
    if (which == -3 && lua_type(L, -3) != LUA_TNUMBER)
        luaL_error(L, "upstream[%d]: status must be a number", number);
    if (which == -2 && lua_type(L, -2) != LUA_TSTRING)
        luaL_error(L, "upstream[%d]: error must be an error name", number);
    outcome_from_value(L, which, number, o);
    lua_pop(L, 3);
    lua_getfield(L, idx, "time");
    if (!lua_isnil(L, -1)) {
        char what[48];
        snprintf(what, sizeof(what), "upstream[%d].time", number);
        o->time_ms = check_duration(L, -1, what);
        o->has_time = true;
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "headers");
    char what[48];
    snprintf(what, sizeof(what), "upstream[%d].headers", number);
    read_headers(L, anchor, -1, what, &o->headers, &o->nheaders);
    lua_pop(L, 1);
    lua_getfield(L, idx, "body");
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "upstream[%d].body must be a string", number);
        o->body = anchored(L, anchor, -1, &o->body_len);
    }
    lua_pop(L, 1);
}

static const char *opt_string(lua_State *L, int anchor, int t, const char *key, size_t *len)
{
    lua_getfield(L, t, key);
    const char *s = NULL;
    if (!lua_isnil(L, -1)) {
        if (lua_type(L, -1) != LUA_TSTRING)
            luaL_error(L, "request: %s must be a string", key);
        s = anchored(L, anchor, -1, len);
    }
    lua_pop(L, 1);
    return s;
}

/* ---- the result table */

static void push_headers(lua_State *L, const struct lv_buf *head)
{
    lua_newtable(L);
    const char *p = head->data, *end = head->data + head->len;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t len = eol ? (size_t)(eol - p) : (size_t)(end - p);
        if (len && p[len - 1] == '\r')
            len--;
        const char *colon = memchr(p, ':', len);
        if (colon) {
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            for (const char *c = p; c < colon; c++)
                luaL_addchar(&b, (char)(*c >= 'A' && *c <= 'Z' ? *c + 32 : *c));
            luaL_pushresult(&b);
            const char *v = colon + 1;
            while (v < p + len && (*v == ' ' || *v == '\t'))
                v++;
            lua_pushvalue(L, -1);
            lua_rawget(L, -3);
            if (lua_isstring(L, -1)) { /* repeated: joined as a list */
                lua_pushliteral(L, ", ");
                lua_pushlstring(L, v, (size_t)(p + len - v));
                lua_concat(L, 3);
            } else {
                lua_pop(L, 1);
                lua_pushlstring(L, v, (size_t)(p + len - v));
            }
            lua_rawset(L, -3);
        }
        p = eol ? eol + 1 : end;
    }
}

static void push_flags(lua_State *L, unsigned flags)
{
    lua_newtable(L);
    int n = 0;
    while (flags) {
        unsigned bit = flags & (0u - flags);
        flags &= flags - 1;
        const char *name = lv_access_flag_name(bit);
        if (!name)
            continue;
        lua_pushstring(L, name);
        lua_rawseti(L, -2, ++n);
        lua_pushboolean(L, 1);
        lua_setfield(L, -2, name);
    }
}

static void push_result(lua_State *L, const struct lv_sim_result *r)
{
    lua_newtable(L);
    lua_pushinteger(L, r->status);
    lua_setfield(L, -2, "status");
    if (r->route) {
        lua_pushstring(L, r->route);
        lua_setfield(L, -2, "route");
    }
    if (r->error) {
        lua_pushstring(L, r->error);
        lua_setfield(L, -2, "error");
    }
    if (r->retry_stop != LV_STOP_NONE) {
        lua_pushstring(L, lv_retry_stop_name(r->retry_stop));
        lua_setfield(L, -2, "retry_stop");
    }
    push_flags(L, r->flags);
    lua_setfield(L, -2, "flags");
    lua_createtable(L, (int)r->ntries, 0);
    for (size_t i = 0; i < r->ntries; i++) {
        const struct lv_sim_try *t = &r->tries[i];
        lua_createtable(L, 0, 6);
        if (t->kind == LV_OUT_STATUS) {
            lua_pushfstring(L, "%d", t->status);
            lua_setfield(L, -2, "outcome");
            lua_pushinteger(L, t->status);
            lua_setfield(L, -2, "status");
        } else {
            lua_pushstring(L, lv_outcome_name(t->kind));
            lua_setfield(L, -2, "outcome");
        }
        if (t->verdict != LV_VERDICT_NONE) {
            lua_pushstring(L, lv_verdict_name(t->verdict));
            lua_setfield(L, -2, "verdict");
        }
        if (t->retried) {
            lua_pushinteger(L, (lua_Integer)t->delay_ms);
            lua_setfield(L, -2, "delay");
        }
        lua_pushinteger(L, (lua_Integer)t->at_ms);
        lua_setfield(L, -2, "at");
        lua_pushinteger(L, (lua_Integer)t->time_ms);
        lua_setfield(L, -2, "time");
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    lua_setfield(L, -2, "attempts");
    push_headers(L, &r->head);
    lua_setfield(L, -2, "headers");
    lua_pushlstring(L, r->body.data ? r->body.data : "", r->body.len);
    lua_setfield(L, -2, "body");
    lua_pushinteger(L, (lua_Integer)(r->end_ms - r->start_ms));
    lua_setfield(L, -2, "duration");
    lua_newtable(L);
    const char *p = r->hook_errors.data, *end = p + r->hook_errors.len;
    int n = 0;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        size_t len = eol ? (size_t)(eol - p) : (size_t)(end - p);
        lua_pushlstring(L, p, len);
        lua_rawseti(L, -2, ++n);
        p = eol ? eol + 1 : end;
    }
    lua_setfield(L, -2, "hook_errors");
}

/* ---- gateway methods */

static int gw_request(lua_State *L)
{
    struct lv_sim *sim = check_gw(L);
    luaL_checktype(L, 2, LUA_TTABLE);
    lua_settop(L, 2);
    lua_newtable(L); /* 3: anchor */
    int anchor = 3;
    struct lv_sim_request rq = {0};
    size_t n;
    rq.method = opt_string(L, anchor, 2, "method", &n);
    rq.path = opt_string(L, anchor, 2, "path", &n);
    rq.host = opt_string(L, anchor, 2, "host", &n);
    rq.body = opt_string(L, anchor, 2, "body", &rq.body_len);
    lua_getfield(L, 2, "headers");
    read_headers(L, anchor, -1, "request.headers", &rq.headers, &rq.nheaders);
    lua_pop(L, 1);
    lua_getfield(L, 2, "upstream");
    if (!lua_isnil(L, -1)) {
        if (!lua_istable(L, -1))
            luaL_error(L, "request: upstream must be a list of outcomes");
        size_t ns = lua_rawlen(L, -1);
        struct lv_sim_outcome *sc = anchored_alloc(L, anchor, ns * sizeof(*sc));
        for (size_t i = 0; i < ns; i++) {
            lua_rawgeti(L, -1, (lua_Integer)i + 1);
            read_outcome(L, anchor, -1, (int)i + 1, &sc[i]);
            lua_pop(L, 1);
        }
        rq.script = sc;
        rq.nscript = ns;
    }
    lua_pop(L, 1);
    struct lv_sim_result res;
    struct lv_buf err = LV_BUF_INIT;
    int rc = lv_sim_request(sim, &rq, &res, &err);
    if (rc < 0) {
        lv_sim_result_dispose(&res);
        lua_pushlstring(L, err.data ? err.data : "?", err.len);
        lv_buf_dispose(&err);
        luaL_where(L, 1);
        lua_insert(L, -2);
        lua_concat(L, 2);
        return lua_error(L);
    }
    lv_buf_dispose(&err);
    push_result(L, &res);
    lv_sim_result_dispose(&res);
    return 1;
}

static int gw_advance(lua_State *L)
{
    struct lv_sim *sim = check_gw(L);
    lv_sim_advance(sim, check_duration(L, 2, "advance"));
    lua_pushinteger(L, (lua_Integer)lv_sim_now(sim));
    return 1;
}

static int gw_now(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)lv_sim_now(check_gw(L)));
    return 1;
}

static void set_int(lua_State *L, const char *k, uint64_t v)
{
    lua_pushinteger(L, (lua_Integer)v);
    lua_setfield(L, -2, k);
}

static int gw_route(lua_State *L)
{
    struct lv_sim *sim = check_gw(L);
    const char *name = luaL_checkstring(L, 2);
    struct lv_sim_route_info ri;
    if (lv_sim_route(sim, name, &ri) < 0)
        return luaL_error(L, "levee.testing: no route named \"%s\" in %s", name,
                          lv_sim_config(sim)->file);
    lua_newtable(L);
    lua_pushstring(L, ri.cfg->name);
    lua_setfield(L, -2, "name");
    lua_pushstring(L, ri.cfg->upstream ? ri.cfg->upstream->name : "");
    lua_setfield(L, -2, "upstream");
    if (ri.has_breaker) {
        lua_pushstring(L, lv_breaker_state_name(ri.breaker.state));
        lua_setfield(L, -2, "breaker");
        lua_newtable(L);
        set_int(L, "open_left", ri.breaker.open_left_ms);
        set_int(L, "open_for", ri.breaker.open_for_ms);
        set_int(L, "requests", ri.breaker.requests);
        set_int(L, "failures", ri.breaker.failures);
        set_int(L, "slow", ri.breaker.slow);
        set_int(L, "consecutive", ri.breaker.consecutive);
        set_int(L, "probes_in_flight", ri.breaker.probes_in_flight);
        set_int(L, "opened", ri.breaker.to_open);
        set_int(L, "half_opened", ri.breaker.to_half_open);
        set_int(L, "closed", ri.breaker.to_closed);
        lua_setfield(L, -2, "breaker_stats");
    }
    lua_newtable(L);
    set_int(L, "requests", ri.budget_requests);
    set_int(L, "retries", ri.budget_retries);
    set_int(L, "available", ri.budget_available);
    lua_pushboolean(L, ri.budget_available > 0);
    lua_setfield(L, -2, "allowed");
    lua_setfield(L, -2, "budget");
    set_int(L, "idempotency_keys", ri.idem_keys);
    return 1;
}

static int gw_routes(lua_State *L)
{
    struct lv_config *cfg = lv_sim_config(check_gw(L));
    lua_createtable(L, (int)cfg->nroutes, 0);
    for (size_t i = 0; i < cfg->nroutes; i++) {
        lua_pushstring(L, cfg->routes[i].name);
        lua_rawseti(L, -2, (lua_Integer)i + 1);
    }
    return 1;
}

static int gw_gc(lua_State *L)
{
    struct gw *g = luaL_checkudata(L, 1, GW_MT);
    lv_sim_free(g->sim);
    g->sim = NULL;
    return 0;
}

static int gw_tostring(lua_State *L)
{
    struct gw *g = luaL_checkudata(L, 1, GW_MT);
    lua_pushfstring(L, "levee.testing gateway (%s)",
                    g->sim ? lv_sim_config(g->sim)->file : "closed");
    return 1;
}

/* ---- testing.load */

static bool readable(const char *path)
{
    return access(path, R_OK) == 0;
}

/* A relative FILE is looked up in the current directory, then beside the calling spec. */
static const char *resolve(lua_State *L, const char *file)
{
    if (file[0] == '/' || readable(file))
        return file;
    lua_Debug ar;
    if (lua_getstack(L, 1, &ar) && lua_getinfo(L, "S", &ar) && ar.source[0] == '@') {
        const char *src = ar.source + 1;
        const char *slash = strrchr(src, '/');
        if (slash) {
            lua_pushfstring(L, "%s/%s", lua_pushlstring(L, src, (size_t)(slash - src)), file);
            const char *cand = lua_tostring(L, -1);
            if (readable(cand))
                return cand; /* stays on the stack for the call */
        }
    }
    return file;
}

static int t_load(lua_State *L)
{
    const char *file = luaL_optstring(L, 1, default_config ? default_config : "levee.lua");
    uint64_t seed = 1;
    if (lua_istable(L, 2)) {
        lua_getfield(L, 2, "seed");
        if (!lua_isnil(L, -1))
            seed = (uint64_t)luaL_checkinteger(L, -1);
        lua_pop(L, 1);
    }
    file = resolve(L, file);
    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_load(file, NULL, &errors);
    if (!cfg) {
        luaL_where(L, 1);
        lua_pushfstring(L, "testing.load: %s is not a valid configuration:\n", file);
        lua_pushlstring(L, errors.data ? errors.data : "", errors.len);
        lv_buf_dispose(&errors);
        lua_concat(L, 3);
        return lua_error(L);
    }
    lv_buf_dispose(&errors);
    struct gw *g = lua_newuserdatauv(L, sizeof(*g), 0);
    g->sim = NULL;
    luaL_setmetatable(L, GW_MT);
    g->sim = lv_sim_new(cfg, seed);
    lv_config_unpin(cfg); /* the simulation holds its own reference */
    return 1;
}

static int t_duration(lua_State *L)
{
    lua_pushinteger(L, (lua_Integer)check_duration(L, 1, "duration"));
    return 1;
}

int luaopen_levee_testing(lua_State *L)
{
    static const luaL_Reg methods[] = {
        {"request", gw_request}, {"advance", gw_advance}, {"now", gw_now},
        {"route", gw_route},     {"routes", gw_routes},   {NULL, NULL},
    };
    if (luaL_newmetatable(L, GW_MT)) {
        luaL_newlib(L, methods);
        lua_setfield(L, -2, "__index");
        lua_pushcfunction(L, gw_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushcfunction(L, gw_gc);
        lua_setfield(L, -2, "__close");
        lua_pushcfunction(L, gw_tostring);
        lua_setfield(L, -2, "__tostring");
    }
    lua_pop(L, 1);
    static const luaL_Reg funcs[] = {{"load", t_load}, {"duration", t_duration}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    return 1;
}
