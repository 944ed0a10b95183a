/*
 * hookcall.c: building a hook's arguments and reading its results (hookcall.h). Everything
 * that can allocate in Lua runs inside the protected call of hooks.c.
 */
#include "script/hookcall.h"

#include <lauxlib.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/gwerr.h"
#include "http/respwrite.h"
#include "http/fields.h"

enum { KIND_ATTEMPT = 1, KIND_REQUEST = 2 };

/* Keys every attempt table uses, kept alive in one anchored table so that setting a field
 * finds the interned string instead of creating it again after a collection. */
static const char *const anchored_keys[] = {
    "status", "error",      "headers", "duration", "number", "route", "request", "method",
    "path",   "request_id", "body",    "ok",       "fail",   "retry", ", "};

/* Describes the value at idx for a "got ..." message, into c->bad. */
static void bad_value(struct lv_hook_call *c, lua_State *L, int idx, const char *expected)
{
    if (lua_type(L, idx) == LUA_TSTRING) {
        size_t n;
        const char *s = lua_tolstring(L, idx, &n);
        char shown[48];
        size_t k = 0;
        for (size_t i = 0; i < n && k < sizeof(shown) - 4; i++)
            shown[k++] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
        if (k < n)
            memcpy(shown + k, "...", 3), k += 3;
        shown[k] = '\0';
        snprintf(c->bad, sizeof(c->bad), "%s; got \"%s\"", expected, shown);
    } else if (lua_type(L, idx) == LUA_TNUMBER) {
        snprintf(c->bad, sizeof(c->bad), "%s; got %.14g", expected, lua_tonumber(L, idx));
    } else {
        snprintf(c->bad, sizeof(c->bad), "%s; got %s", expected, luaL_typename(L, idx));
    }
}

/* ---- building the tables a hook sees */

static void push_mt(lua_State *L, int ref)
{
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
}

/* A table name -> value with lower-case names; repeated names are joined with ", " (the
 * list form of RFC 9110 §5.3). */
static void push_headers(lua_State *L, const struct lv_hook_header *h, size_t n)
{
    lua_createtable(L, 0, n > 64 ? 64 : (int)n);
    int t = lua_gettop(L);
    for (size_t i = 0; i < n; i++) {
        luaL_Buffer b;
        char *p = luaL_buffinitsize(L, &b, h[i].name_len);
        for (size_t j = 0; j < h[i].name_len; j++)
            p[j] = lv__lower(h[i].name[j]);
        luaL_pushresultsize(&b, h[i].name_len);
        lua_pushvalue(L, -1);
        if (lua_rawget(L, t) == LUA_TNIL) {
            lua_pop(L, 1);
            lua_pushlstring(L, h[i].value, h[i].value_len);
        } else {
            lua_pushliteral(L, ", ");
            lua_pushlstring(L, h[i].value, h[i].value_len);
            lua_concat(L, 3);
        }
        lua_rawset(L, t);
    }
}

/* { method, path } with lazy headers; the fallback adds route and request_id. */
static void push_request(lua_State *L, struct lv_hook_call *c)
{
    lua_createtable(L, 0, 5);
    if (c->method) {
        lua_pushstring(L, c->method);
        lua_setfield(L, -2, "method");
    }
    lua_pushlstring(L, c->path ? c->path : "", c->path ? c->path_len : 0);
    lua_setfield(L, -2, "path");
    push_mt(L, c->views->mt_request);
    lua_setmetatable(L, -2);
    c->request_tab = lua_topointer(L, -1);
}

static bool key_is(const char *k, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(k, lit, n) == 0;
}

/* __index of attempt and request tables: builds `headers` (and the attempt's `request`) on
 * first use and stores it in the table, so it is built once. Upvalues: views, kind. */
static int lazy_index(lua_State *L)
{
    struct lv_hook_views *v = lua_touserdata(L, lua_upvalueindex(1));
    int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
    struct lv_hook_call *c = v->cur;
    if (!c || lua_type(L, 2) != LUA_TSTRING)
        return 0;
    size_t n;
    const char *k = lua_tolstring(L, 2, &n);
    const void *self = lua_topointer(L, 1);
    if (kind == KIND_ATTEMPT && self == c->attempt_tab) {
        if (key_is(k, n, "headers"))
            push_headers(L, c->rsp_h, c->n_rsp);
        else if (key_is(k, n, "request"))
            push_request(L, c);
        else
            return 0;
    } else if (kind == KIND_REQUEST && self == c->request_tab) {
        if (key_is(k, n, "headers"))
            push_headers(L, c->req_h, c->n_req);
        else
            return 0;
    } else {
        return 0;
    }
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 1);
    return 1;
}

/* ---- classify */

/* A delay string: bare seconds ("120", "1.5") or a duration, one or more number+unit
 * ("250ms", "2s", "1m30s", "1h"), optional spaces around. Returns false when malformed. */
static bool parse_delay(const char *s, size_t n, double *ms_out)
{
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t'))
        i++;
    while (n > i && (s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    if (i == n)
        return false;
    double total = 0;
    int parts = 0;
    while (i < n) {
        double v = 0;
        size_t digits = 0;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            v = v * 10 + (s[i++] - '0');
            digits++;
        }
        if (i < n && s[i] == '.') {
            i++;
            double scale = 0.1;
            size_t frac = 0;
            while (i < n && s[i] >= '0' && s[i] <= '9') {
                v += (s[i++] - '0') * scale;
                scale /= 10;
                frac++;
            }
            if (frac == 0)
                return false;
        }
        if (digits == 0)
            return false;
        double unit;
        if (i == n && parts == 0) {
            unit = 1000; /* bare seconds, as Retry-After */
        } else if (i + 1 < n && s[i] == 'm' && s[i + 1] == 's') {
            unit = 1, i += 2;
        } else if (i < n && s[i] == 's') {
            unit = 1000, i++;
        } else if (i < n && s[i] == 'm') {
            unit = 60000, i++;
        } else if (i < n && s[i] == 'h') {
            unit = 3600000, i++;
        } else {
            return false;
        }
        total += v * unit;
        parts++;
    }
    *ms_out = total;
    return true;
}

static void set_delay(struct lv_hook_call *c, double ms)
{
    c->has_delay = true;
    c->delay_ms = ms >= (double)LV_HOOK_MAX_DELAY_MS ? LV_HOOK_MAX_DELAY_MS : (uint64_t)(ms + 0.5);
}

static const char verdict_expected[] = "expected \"ok\", \"fail\", \"retry\" or nil";

int lv_hookcall_classify(lua_State *L)
{
    struct lv_hook_call *c = lua_touserdata(L, 1);
    const struct lv_hook_attempt *a = c->a;
    luaL_checkstack(L, 8, NULL);
    if (lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref) != LUA_TFUNCTION) {
        snprintf(c->bad, sizeof(c->bad), "the hook is not a function");
        return 0;
    }
    lua_createtable(L, 0, 6);
    if (a->status > 0) {
        lua_pushinteger(L, a->status);
        lua_setfield(L, -2, "status");
    }
    if (a->error) {
        lua_pushstring(L, a->error);
        lua_setfield(L, -2, "error");
    }
    lua_pushnumber(L, a->duration_s);
    lua_setfield(L, -2, "duration");
    lua_pushinteger(L, a->number);
    lua_setfield(L, -2, "number");
    if (a->route) {
        lua_pushstring(L, a->route);
        lua_setfield(L, -2, "route");
    }
    push_mt(L, c->views->mt_attempt);
    lua_setmetatable(L, -2);
    c->attempt_tab = lua_topointer(L, -1);

    lua_call(L, 1, 2);

    int vt = lua_type(L, -2);
    if (vt == LUA_TNIL)
        return 0; /* the hook defers to the default classification */
    if (vt != LUA_TSTRING) {
        bad_value(c, L, -2, verdict_expected);
        return 0;
    }
    size_t n;
    const char *v = lua_tolstring(L, -2, &n);
    if (key_is(v, n, "ok")) {
        c->verdict = LV_VERDICT_OK;
    } else if (key_is(v, n, "fail")) {
        c->verdict = LV_VERDICT_FAIL;
    } else if (key_is(v, n, "retry")) {
        c->verdict = LV_VERDICT_RETRY;
    } else {
        bad_value(c, L, -2, verdict_expected);
        return 0;
    }
    if (c->verdict != LV_VERDICT_RETRY)
        return 0; /* a delay only means something with "retry" */
    int dt = lua_type(L, -1);
    if (dt == LUA_TNUMBER) {
        double s = lua_tonumber(L, -1);
        if (!isfinite(s) || s < 0) {
            bad_value(c, L, -1, "the retry delay must be a number of seconds >= 0");
            c->verdict = LV_VERDICT_NONE;
            return 0;
        }
        set_delay(c, s * 1000);
    } else if (dt == LUA_TSTRING) {
        size_t dn;
        const char *d = lua_tolstring(L, -1, &dn);
        double ms;
        if (!parse_delay(d, dn, &ms)) {
            bad_value(c, L, -1, "the retry delay must be seconds or a duration like \"250ms\"");
            c->verdict = LV_VERDICT_NONE;
            return 0;
        }
        set_delay(c, ms);
    } else if (dt != LUA_TNIL) {
        bad_value(c, L, -1, "the retry delay must be a number of seconds or a duration string");
        c->verdict = LV_VERDICT_NONE;
    }
    return 0;
}

/* ---- fallback */

static bool head_room(struct lv_hook_call *c)
{
    if (c->resp.len > LV_HOOK_MAX_FALLBACK_HEAD) {
        snprintf(c->bad, sizeof(c->bad), "the response head is larger than %zu bytes",
                 (size_t)LV_HOOK_MAX_FALLBACK_HEAD);
        return false;
    }
    return true;
}

/* A header value as bytes: a string as is, an integer in decimal, another number with %.14g.
 * `num` is scratch space for numbers. Returns NULL for other types. */
static const char *value_bytes(lua_State *L, int idx, char num[32], size_t *n)
{
    if (lua_type(L, idx) == LUA_TSTRING)
        return lua_tolstring(L, idx, n);
    if (lua_type(L, idx) != LUA_TNUMBER)
        return NULL;
    int k;
    if (lua_isinteger(L, idx))
        k = snprintf(num, 32, "%lld", (long long)lua_tointeger(L, idx));
    else
        k = snprintf(num, 32, "%.14g", lua_tonumber(L, idx));
    *n = k > 0 ? (size_t)k : 0;
    return num;
}

/* Appends "Name: value\r\n" after checking both, or drops a header levee owns.
 * Returns false (c->bad set) on a bad name or value. */
static bool put_header(struct lv_hook_call *c, lua_State *L, int name_idx, int value_idx)
{
    size_t nn;
    const char *name = lua_tolstring(L, name_idx, &nn);
    bool ok = nn > 0;
    for (size_t i = 0; ok && i < nn; i++)
        ok = lv__is_tchar(name[i]);
    if (!ok) {
        bad_value(c, L, name_idx,
                  "a header name must be a token (letters, digits, !#$%&'*+-.^_`|~)");
        return false;
    }
    char num[32];
    size_t vn = 0;
    const char *v = value_bytes(L, value_idx, num, &vn);
    if (!v) {
        bad_value(c, L, value_idx, "a header value must be a string or a number");
        return false;
    }
    for (size_t i = 0; i < vn; i++) {
        if (!lv__is_value(v[i])) {
            snprintf(c->bad, sizeof(c->bad),
                     "the value of header \"%.*s\" has a control byte (CR, LF, NUL...) at %zu",
                     (int)(nn > 64 ? 64 : nn), name, i);
            return false;
        }
    }
    /* Framing, the connection and the request id are levee's: dropped, not an error, so a
     * fallback copied from elsewhere still serves while the breaker is open. */
    enum lv_field_id id = lv_field_classify(name, nn);
    if (id == LV_FID_CONTENT_LENGTH || lv_field_is_hop_by_hop(name, nn) ||
        (id == LV_FID_X_REQUEST_ID && c->req->request_id))
        return true;
    lv_respwrite_field(&c->resp, name, nn, v, vn);
    return head_room(c);
}

/* A map value: one value, or a list of values (one header line each). */
static bool put_map_entry(struct lv_hook_call *c, lua_State *L, int name_idx, int value_idx)
{
    if (lua_type(L, value_idx) != LUA_TTABLE)
        return put_header(c, L, name_idx, value_idx);
    lua_Integer n = (lua_Integer)lua_rawlen(L, value_idx);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, value_idx, i);
        bool ok = put_header(c, L, name_idx, lua_gettop(L));
        lua_pop(L, 1);
        if (!ok)
            return false;
    }
    return true;
}

static bool put_headers(struct lv_hook_call *c, lua_State *L, int t)
{
    lua_pushnil(L);
    while (lua_next(L, t)) {
        int k = lua_gettop(L) - 1, v = lua_gettop(L);
        bool ok;
        if (lua_type(L, k) == LUA_TSTRING) {
            ok = put_map_entry(c, L, k, v);
        } else if (lua_isinteger(L, k) && lua_type(L, v) == LUA_TTABLE) {
            /* { "Name", "value" } */
            lua_rawgeti(L, v, 1);
            lua_rawgeti(L, v, 2);
            if (lua_type(L, -2) != LUA_TSTRING) {
                bad_value(c, L, -2, "a header pair must be { \"Name\", \"value\" }");
                ok = false;
            } else {
                ok = put_header(c, L, lua_gettop(L) - 1, lua_gettop(L));
            }
            lua_pop(L, 2);
        } else {
            bad_value(c, L, v,
                      "headers must be { [\"Name\"] = \"value\" } or { { \"Name\", "
                      "\"value\" } }");
            ok = false;
        }
        if (!ok)
            return false;
        lua_pop(L, 1);
    }
    return true;
}

static bool head_request(const struct lv_hook_request *r)
{
    return r->method && strcmp(r->method, "HEAD") == 0;
}

/* The `req` table of fallback and idempotency key hooks:
 * { method, path, headers (lazy), route, request_id }. */
static void push_hook_request(lua_State *L, struct lv_hook_call *c)
{
    push_request(L, c);
    if (c->req->route) {
        lua_pushstring(L, c->req->route);
        lua_setfield(L, -2, "route");
    }
    if (c->req->request_id) {
        lua_pushstring(L, c->req->request_id);
        lua_setfield(L, -2, "request_id");
    }
}

int lv_hookcall_fallback(lua_State *L)
{
    struct lv_hook_call *c = lua_touserdata(L, 1);
    const struct lv_hook_request *r = c->req;
    luaL_checkstack(L, 16, NULL);
    if (lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref) != LUA_TFUNCTION) {
        snprintf(c->bad, sizeof(c->bad), "the hook is not a function");
        return 0;
    }
    push_hook_request(L, c);
    lua_pushstring(L, c->why ? c->why : "breaker-open");
    lua_call(L, 2, 1);

    int res = lua_gettop(L);
    if (lua_type(L, res) == LUA_TNIL)
        return 0; /* declined: the caller answers */
    if (lua_type(L, res) != LUA_TTABLE) {
        bad_value(c, L, res, "expected a table { status =, headers =, body = } or nil");
        return 0;
    }
    /* Unknown keys are typos ("stauts"): refuse them rather than serve a surprise. */
    lua_pushnil(L);
    while (lua_next(L, res)) {
        size_t kn = 0;
        const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tolstring(L, -2, &kn) : NULL;
        if (!k || !(key_is(k, kn, "status") || key_is(k, kn, "headers") || key_is(k, kn, "body"))) {
            bad_value(c, L, -2, "unknown key in the response (status, headers, body)");
            return 0;
        }
        lua_pop(L, 1);
    }

    int status = 503;
    int isint = 0;
    if (lua_getfield(L, res, "status") != LUA_TNIL) {
        lua_Integer s = lua_tointegerx(L, -1, &isint);
        if (lua_type(L, -1) != LUA_TNUMBER || !isint || s < 200 || s > 599) {
            bad_value(c, L, -1, "status must be an integer from 200 to 599");
            return 0;
        }
        status = (int)s;
    }
    lua_pop(L, 1);

    size_t blen = 0;
    const char *body = "";
    if (lua_getfield(L, res, "body") != LUA_TNIL) {
        if (lua_type(L, -1) != LUA_TSTRING) {
            bad_value(c, L, -1, "body must be a string");
            return 0;
        }
        body = lua_tolstring(L, -1, &blen);
    }
    /* The body string stays on the stack (alive) until the copy below. */
    bool no_body = status == 204 || status == 304;
    if (no_body && blen > 0) {
        snprintf(c->bad, sizeof(c->bad), "a %d response has no body", status);
        return 0;
    }

    lv_respwrite_begin(&c->resp, status, NULL, 0);
    int ht = lua_getfield(L, res, "headers");
    if (ht == LUA_TTABLE) {
        if (!put_headers(c, L, lua_gettop(L)))
            return 0;
    } else if (ht != LUA_TNIL) {
        bad_value(c, L, -1, "headers must be a table");
        return 0;
    }
    struct lv_resp_tail tail = {
        .request_id = r->request_id,
        .framing = no_body ? LV_FRAMING_NONE : LV_FRAMING_LENGTH,
        .length = blen,
        .connection = r->close ? LV_CONNHDR_CLOSE : LV_CONNHDR_NONE,
    };
    lv_respwrite_end(&c->resp, &tail);
    if (!head_room(c))
        return 0;
    if (!head_request(r))
        lv_buf_append(&c->resp, body, blen);
    c->status = status;
    return 0;
}

/* ---- idempotency key */

/* A key goes to c->resp with c->status = 1; nil leaves status 0. */
int lv_hookcall_idem_key(lua_State *L)
{
    struct lv_hook_call *c = lua_touserdata(L, 1);
    luaL_checkstack(L, 8, NULL);
    if (lua_rawgeti(L, LUA_REGISTRYINDEX, c->ref) != LUA_TFUNCTION) {
        snprintf(c->bad, sizeof(c->bad), "the hook is not a function");
        return 0;
    }
    push_hook_request(L, c);
    lua_call(L, 1, 1);

    if (lua_type(L, -1) == LUA_TNIL)
        return 0; /* the request is not keyed */
    if (lua_type(L, -1) != LUA_TSTRING) {
        bad_value(c, L, -1, "expected a string key or nil");
        return 0;
    }
    size_t n;
    const char *k = lua_tolstring(L, -1, &n);
    if (n > LV_HOOK_MAX_IDEM_KEY) {
        snprintf(c->bad, sizeof(c->bad), "the key is %zu bytes long; at most %zu are allowed", n,
                 (size_t)LV_HOOK_MAX_IDEM_KEY);
        return 0;
    }
    /* The key goes into store keys (a Redis key, log lines): no control bytes. */
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)k[i];
        if (ch < 0x20 || ch == 0x7f) {
            snprintf(c->bad, sizeof(c->bad), "the key has a control byte (0x%02x) at %zu", ch, i);
            return 0;
        }
    }
    lv_buf_append(&c->resp, k, n);
    c->status = 1;
    return 0;
}

/* ---- setup */

void lv_hookcall_init(lua_State *L, struct lv_hook_views *v)
{
    int kinds[2] = {KIND_ATTEMPT, KIND_REQUEST};
    int *refs[2] = {&v->mt_attempt, &v->mt_request};
    for (int i = 0; i < 2; i++) {
        lua_createtable(L, 0, 2);
        lua_pushlightuserdata(L, v);
        lua_pushinteger(L, kinds[i]);
        lua_pushcclosure(L, lazy_index, 2);
        lua_setfield(L, -2, "__index");
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "__metatable");
        *refs[i] = luaL_ref(L, LUA_REGISTRYINDEX);
    }
    int nkeys = (int)(sizeof(anchored_keys) / sizeof(anchored_keys[0]));
    lua_createtable(L, nkeys, 0);
    for (int i = 0; i < nkeys; i++) {
        lua_pushstring(L, anchored_keys[i]);
        lua_rawseti(L, -2, i + 1);
    }
    luaL_ref(L, LUA_REGISTRYINDEX);
}
