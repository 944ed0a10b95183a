/*
 * walk.c: copies the normalized table levee.config returns into the structs of conf/config.h.
 * Runs inside lua_pcall (lv_walk_config), so a Lua error midway unwinds to a config that
 * lv_config_unpin can release: every allocation is stored in the config before the next Lua
 * call.
 */
#include "script/walk.h"

#include <arpa/inet.h>
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/method.h"

static void bad(lua_State *L, struct lv_walk *w, const char *key)
{
    luaL_error(L, "internal: normalized config key '%s' has type %s", key, luaL_typename(L, -1));
}

/* Pushes t[key]; returns its type. */
static int get(lua_State *L, int t, const char *key)
{
    return lua_getfield(L, t, key);
}

static uint64_t w_uint(lua_State *L, struct lv_walk *w, int t, const char *key)
{
    get(L, t, key);
    int isint = 0;
    lua_Integer v = lua_tointegerx(L, -1, &isint);
    if (!isint || v < 0 || lua_type(L, -1) != LUA_TNUMBER)
        bad(L, w, key);
    lua_pop(L, 1);
    return (uint64_t)v;
}

static uint32_t w_u32(lua_State *L, struct lv_walk *w, int t, const char *key)
{
    uint64_t v = w_uint(L, w, t, key);
    if (v > UINT32_MAX)
        luaL_error(L, "internal: normalized config key '%s' is out of range", key);
    return (uint32_t)v;
}

static double w_num(lua_State *L, struct lv_walk *w, int t, const char *key)
{
    if (get(L, t, key) != LUA_TNUMBER)
        bad(L, w, key);
    double v = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return v;
}

static bool w_bool(lua_State *L, struct lv_walk *w, int t, const char *key)
{
    if (get(L, t, key) != LUA_TBOOLEAN)
        bad(L, w, key);
    bool v = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return v;
}

/* A copy of t[key], or NULL when it is nil and `optional`. */
static char *w_str(lua_State *L, struct lv_walk *w, int t, const char *key, bool optional)
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
static int w_enum(lua_State *L, struct lv_walk *w, int t, const char *key, const char *const *names,
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
static int w_table(lua_State *L, struct lv_walk *w, int t, const char *key, bool optional)
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
static int w_ref(lua_State *L, struct lv_walk *w, int t, const char *key)
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

static void w_hostport(lua_State *L, struct lv_walk *w, int t, struct lv_hostport *hp)
{
    hp->port = (uint16_t)w_uint(L, w, t, "port");
    hp->host = w_str(L, w, t, "host", false);
}

/* A list of method names as LV_METHOD_BIT set. */
static uint64_t w_methods(lua_State *L, struct lv_walk *w, int t, const char *key)
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
static const char *const access_format_names[] = {"json", "console"};
static const char *const accept_names[] = {"shared", "reuseport"};
static const char *const store_names[] = {"memory", "redis"};
static const char *const conflict_names[] = {"reject", "wait"};
static const char *const store_error_names[] = {"fail_closed", "fail_open"};
static const char *const retry_error_names[] = {"connect-failure", "reset", "timeout",
                                                "protocol-error"};

#define NELEM(a) ((int)(sizeof(a) / sizeof((a)[0])))

/* t[key], a list of status codes 100..599, as a bit set: bit s of bits[s / 64] per status. */
static void w_statuses(lua_State *L, struct lv_walk *w, int t, const char *key, uint64_t bits[10])
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

static void walk_limits(lua_State *L, struct lv_walk *w, int t, struct lv_limits_cfg *l)
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

static void walk_upstream(lua_State *L, struct lv_walk *w, int t, struct lv_upstream_cfg *u)
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

static void walk_retry(lua_State *L, struct lv_walk *w, int t, struct lv_retry_cfg *r)
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

static void walk_breaker(lua_State *L, struct lv_walk *w, int t, struct lv_breaker_cfg *b)
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

static void walk_idempotency(lua_State *L, struct lv_walk *w, int t, struct lv_idem_cfg *d)
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

/* trusted_proxies: {addr = "10.0.0.0", bits = 8} entries, validated by the Lua side. */
static void walk_trusted(lua_State *L, struct lv_walk *w, int t, struct lv_config *c)
{
    int tt = w_table(L, w, t, "trusted_proxies", true);
    size_t n = tt ? lua_rawlen(L, tt) : 0;
    c->trusted_proxies = n ? lv_xcalloc(n, sizeof(*c->trusted_proxies)) : NULL;
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, tt, (lua_Integer)i + 1);
        int e = lua_gettop(L);
        if (!lua_istable(L, e))
            bad(L, w, "trusted_proxies[]");
        char *addr = w_str(L, w, e, "addr", false);
        uint32_t bits = w_u32(L, w, e, "bits");
        struct lv_cidr *cd = &c->trusted_proxies[i];
        struct in_addr a4;
        int ok = 0;
        if (inet_pton(AF_INET, addr, &a4) == 1) {
            memset(cd->addr, 0, 10);
            cd->addr[10] = cd->addr[11] = 0xff;
            memcpy(cd->addr + 12, &a4, 4);
            cd->bits = (uint8_t)(96 + (bits > 32 ? 32 : bits));
            ok = 1;
        } else if (inet_pton(AF_INET6, addr, cd->addr) == 1) {
            cd->bits = (uint8_t)(bits > 128 ? 128 : bits);
            ok = 1;
        }
        free(addr);
        if (!ok)
            bad(L, w, "trusted_proxies[].addr");
        c->ntrusted_proxies = i + 1;
        lua_pop(L, 1);
    }
    if (tt)
        lua_pop(L, 1);
}

static const char *const rate_key_names[] = {"client_ip", "header", "hook"};

static void walk_rate(lua_State *L, struct lv_walk *w, int t, struct lv_rate_cfg *r)
{
    r->key_ref = -1;
    r->enabled = w_bool(L, w, t, "enabled");
    if (!r->enabled)
        return;
    r->rate = w_u32(L, w, t, "rate");
    r->per_ms = w_uint(L, w, t, "per_ms");
    r->burst = w_u32(L, w, t, "burst");
    r->key = (enum lv_rate_key)w_enum(L, w, t, "key_kind", rate_key_names, NELEM(rate_key_names));
    if (r->key == LV_RATE_KEY_HEADER)
        r->key_header = w_str(L, w, t, "key_header", false);
    if (r->key == LV_RATE_KEY_HOOK)
        r->key_ref = w_ref(L, w, t, "key");
    r->redis = w_enum(L, w, t, "store", store_names, NELEM(store_names)) == LV_IDEM_STORE_REDIS;
    if (r->redis) {
        int rt = w_table(L, w, t, "redis", false);
        w_hostport(L, w, rt, &r->redis_addr);
        lua_pop(L, 1);
    }
    r->redis_prefix = w_str(L, w, t, "redis_prefix", false);
    r->max_keys = w_u32(L, w, t, "max_keys");
    r->timeout_ms = w_uint(L, w, t, "timeout_ms");
    r->fail_closed = w_enum(L, w, t, "on_store_error", store_error_names,
                            NELEM(store_error_names)) == LV_IDEM_FAIL_CLOSED;
    static const char *const modes[] = {"enforce", "shadow"};
    r->shadow = w_enum(L, w, t, "mode", modes, NELEM(modes)) == 1;
}

static void walk_concurrency(lua_State *L, struct lv_walk *w, int t, struct lv_concurrency_cfg *c)
{
    c->enabled = w_bool(L, w, t, "enabled");
    if (!c->enabled)
        return;
    c->adaptive = w_bool(L, w, t, "adaptive");
    c->max = w_u32(L, w, t, "max");
    c->queue = w_u32(L, w, t, "queue");
    c->queue_timeout_ms = w_uint(L, w, t, "queue_timeout_ms");
    c->min = w_u32(L, w, t, "min");
    c->max_limit = w_u32(L, w, t, "max_limit");
    c->initial = w_u32(L, w, t, "initial");
}

static const char *const fault_at_names[] = {"upstream", "client"};

static void walk_fault(lua_State *L, struct lv_walk *w, int t, struct lv_fault_cfg *f)
{
    f->enabled = w_bool(L, w, t, "enabled");
    if (!f->enabled)
        return;
    static const char *const value_keys[LV_FAULT_KINDS] = {"status", "time_ms", NULL, "rate"};
    for (int k = 0; k < LV_FAULT_KINDS; k++) {
        int kt = w_table(L, w, t, lv_fault_kind_name((enum lv_fault_kind)k), false);
        struct lv_fault_one *o = &f->f.k[k];
        o->on = w_bool(L, w, kt, "enabled");
        if (o->on) {
            o->percent = w_num(L, w, kt, "percent");
            o->value = value_keys[k] ? w_uint(L, w, kt, value_keys[k]) : 0;
        }
        lua_pop(L, 1);
    }
    f->at_client = w_enum(L, w, t, "at", fault_at_names, NELEM(fault_at_names)) == 1;
    f->headers = w_bool(L, w, t, "headers");
}

static void walk_route(lua_State *L, struct lv_walk *w, int t, struct lv_route_cfg *r)
{
    r->classify_ref = -1;
    r->fallback_ref = -1;
    r->idempotency.key_ref = -1;
    r->rate_limit.key_ref = -1;
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
    st = w_table(L, w, t, "fault", false);
    walk_fault(L, w, st, &r->fault);
    lua_pop(L, 1);
    st = w_table(L, w, t, "rate_limit", false);
    walk_rate(L, w, st, &r->rate_limit);
    lua_pop(L, 1);
    st = w_table(L, w, t, "concurrency", false);
    walk_concurrency(L, w, st, &r->concurrency);
    lua_pop(L, 1);
    r->classify_ref = w_ref(L, w, t, "classify");
    r->fallback_ref = w_ref(L, w, t, "fallback");
    r->tunnel_idle_timeout_ms = w_uint(L, w, t, "tunnel_idle_timeout_ms");
    int ut = w_table(L, w, t, "upgrade", false);
    size_t n = lua_rawlen(L, ut);
    r->upgrade = lv_xcalloc(n ? n : 1, sizeof(*r->upgrade));
    for (size_t i = 0; i < n; i++) {
        lua_rawgeti(L, ut, (lua_Integer)i + 1);
        if (lua_type(L, -1) != LUA_TSTRING)
            bad(L, w, "upgrade[]");
        r->upgrade[i] = lv_xstrdup(lua_tostring(L, -1));
        r->nupgrade = i + 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* tracing: {enabled = false} or the table with every default filled in. */
static void walk_tracing(lua_State *L, struct lv_walk *w, int t, struct lv_tracing_cfg *tc)
{
    int tt = w_table(L, w, t, "tracing", false);
    tc->enabled = w_bool(L, w, tt, "enabled");
    if (tc->enabled) {
        tc->otlp = w_str(L, w, tt, "otlp", true);
        tc->tls_ca = w_str(L, w, tt, "tls_ca", true);
        tc->sample = w_num(L, w, tt, "sample");
        tc->service = w_str(L, w, tt, "service", false);
        tc->batch = w_u32(L, w, tt, "batch");
        tc->queue = w_u32(L, w, tt, "queue");
        tc->flush_ms = w_uint(L, w, tt, "flush_ms");
        tc->timeout_ms = w_uint(L, w, tt, "timeout_ms");
    }
    lua_pop(L, 1);
}

/* Stack: 1 = struct lv_walk (light userdata), 2 = normalized config, 3 = files list (or nil). */
int lv_walk_config(lua_State *L)
{
    struct lv_walk *w = lua_touserdata(L, 1);
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
    if (get(L, t, "access_log_format") != LUA_TNIL) {
        lua_pop(L, 1);
        c->access_format = (enum lv_access_format)w_enum(
            L, w, t, "access_log_format", access_format_names, NELEM(access_format_names));
    } else {
        lua_pop(L, 1);
    }
    /* Colours (README "levee dev") only where a person reads them: a terminal on stdout,
     * unless NO_COLOR is set to something. */
    const char *no_color = getenv("NO_COLOR");
    c->access_color = c->access_format == LV_ACCESS_FORMAT_CONSOLE &&
                      c->access_log == LV_ACCESS_LOG_STDOUT && isatty(STDOUT_FILENO) &&
                      !(no_color && *no_color);
    c->watch = w_bool(L, w, t, "watch");
    c->drain_timeout_ms = w_uint(L, w, t, "drain_timeout_ms");
    c->workers = w_u32(L, w, t, "workers");
    c->accept = (enum lv_accept_mode)w_enum(L, w, t, "accept", accept_names, NELEM(accept_names));
    walk_trusted(L, w, t, c);
    walk_tracing(L, w, t, &c->tracing);

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
