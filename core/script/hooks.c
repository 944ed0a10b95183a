/*
 * hooks.c: the Lua side of a hook call. Everything that can allocate in Lua (building the
 * argument tables, calling the hook, reading what it returned) runs inside one lua_pcall of a
 * C "main" function, so a memory error anywhere is caught; results go into a struct call on
 * the C stack, and C-heap output lives there too, so a Lua error never leaks it.
 */
#include "script/hooks.h"

#include <lauxlib.h>
#include <lua.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include "base/gwerr.h"
#include "http/fields.h"

/* Longest message handed back in `err`. */
#define LV__HOOK_ERR_MAX 1024

enum { KIND_ATTEMPT = 1, KIND_REQUEST = 2 };

/* Per configuration state, a userdata anchored in the registry under &rt_key. */
struct lv__hookrt {
    lua_State *T;   /* the thread every hook call runs on */
    int mt_attempt; /* registry refs: metatables with the lazy __index */
    int mt_request;
    struct call *cur;                  /* the call in progress, NULL between calls */
    enum lv_hook_failure last_failure; /* why the last failed call failed */
};

static const char rt_key = 0;

/* One hook call: its inputs, what the lazy fields read, and its results. */
struct call {
    struct lv__hookrt *rt;
    int ref;
    const char *what; /* "classify" or "fallback", for messages */

    /* Tables of this call (lua_topointer): the lazy __index serves only these, so a table a
     * hook kept from an earlier call never reads the borrowed arrays of a later one. */
    const void *attempt_tab;
    const void *request_tab;

    const struct lv_hook_attempt *a;
    const struct lv_hook_request *req;
    const char *why;
    const char *method;
    const char *path;
    size_t path_len;
    const struct lv_hook_header *rsp_h, *req_h;
    size_t n_rsp, n_req;

    bool limit_hit; /* the instruction limit fired during this call */

    /* results */
    char bad[256]; /* a wrong return value, described; empty when fine */
    enum lv_hook_verdict verdict;
    bool has_delay;
    uint64_t delay_ms;
    int status;
    struct lv_buf resp; /* fallback response, moved to the caller's buffer on success */
};

/* Keys every attempt table uses, kept alive in one anchored table so that setting a field
 * finds the interned string instead of creating it again after a collection. */
static const char *const anchored_keys[] = {
    "status", "error",      "headers", "duration", "number", "route", "request", "method",
    "path",   "request_id", "body",    "ok",       "fail",   "retry", ", "};

/* ---- limits */

static struct lv__hookrt *rt_of(lua_State *L);

/* The count hook. Once it fires it re-arms itself for every instruction, so a hook that
 * catches the error with pcall cannot run one more Lua instruction: each raises again. The
 * one way around that, an xpcall message handler (Lua runs it with hooks off when the error
 * comes from a hook), is closed by the sealed xpcall, which reads limit_hit. */

static void count_hook(lua_State *L, lua_Debug *ar)
{
    (void)ar;
    struct lv__hookrt *rt = rt_of(L);
    if (rt && rt->cur)
        rt->cur->limit_hit = true;
    lua_sethook(L, count_hook, LUA_MASKCOUNT, 1);
    luaL_where(L, 0); /* level 0 is the Lua function that was running (a hook has no frame) */
    lua_pushfstring(L, "instruction limit reached (%d per call)", LV_HOOK_MAX_INSTRUCTIONS);
    lua_concat(L, 2);
    lua_error(L);
}

/* For the sealed xpcall (seal_lua): true once the current call hit the instruction limit.
 * Upvalue: rt. */
static int limit_hit(lua_State *L)
{
    struct lv__hookrt *rt = lua_touserdata(L, lua_upvalueindex(1));
    lua_pushboolean(L, rt->cur && rt->cur->limit_hit);
    return 1;
}

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

/* ---- err: one line, bounded, control bytes replaced */

static void err_put(struct lv_buf *err, const char *s, size_t n)
{
    for (size_t i = 0; i < n && err->len < LV__HOOK_ERR_MAX; i++) {
        unsigned char ch = (unsigned char)s[i];
        lv_buf_putc(err, ch < 0x20 || ch == 0x7f ? ' ' : (char)ch);
    }
}

static void err_end(struct lv_buf *err)
{
    if (err->len >= LV__HOOK_ERR_MAX) {
        err->len = LV__HOOK_ERR_MAX - 3;
        lv_buf_append(err, "...", 3);
    }
    *lv_buf_reserve(err, 1) = '\0';
}

/* "<what> hook: message", plus the Lua frames of the traceback when there are several
 * (with one, the message's own "file:line:" already says where). */
static void err_from_trace(struct lv_buf *err, const char *what, const char *m, size_t n)
{
    lv_buf_printf(err, "%s hook: ", what);
    static const char tb[] = "\nstack traceback:\n\t";
    const char *end = m + n;
    const char *t = NULL;
    for (const char *p = m; p + sizeof(tb) - 1 <= end; p++) {
        if (memcmp(p, tb, sizeof(tb) - 1) == 0) {
            t = p;
            break;
        }
    }
    err_put(err, m, (size_t)((t ? t : end) - m));
    if (!t) {
        err_end(err);
        return;
    }
    /* Frames are "\n\t"-separated; keep the Lua ones. */
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
            err_put(err, frames[i], lens[i]);
        }
        if (total > nf)
            lv_buf_puts(err, "; ...");
        lv_buf_putc(err, ')');
    }
    err_end(err);
}

/* Describes the value at idx for a "got ..." message, into c->bad. */
static void bad_value(struct call *c, lua_State *L, int idx, const char *expected)
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
static void push_request(lua_State *L, struct call *c)
{
    lua_createtable(L, 0, 5);
    if (c->method) {
        lua_pushstring(L, c->method);
        lua_setfield(L, -2, "method");
    }
    lua_pushlstring(L, c->path ? c->path : "", c->path ? c->path_len : 0);
    lua_setfield(L, -2, "path");
    push_mt(L, c->rt->mt_request);
    lua_setmetatable(L, -2);
    c->request_tab = lua_topointer(L, -1);
}

static bool key_is(const char *k, size_t n, const char *lit)
{
    return n == strlen(lit) && memcmp(k, lit, n) == 0;
}

/* __index of attempt and request tables: builds `headers` (and the attempt's `request`) on
 * first use and stores it in the table, so it is built once. Upvalues: rt, kind. */
static int lazy_index(lua_State *L)
{
    struct lv__hookrt *rt = lua_touserdata(L, lua_upvalueindex(1));
    int kind = (int)lua_tointeger(L, lua_upvalueindex(2));
    struct call *c = rt->cur;
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

static void set_delay(struct call *c, double ms)
{
    c->has_delay = true;
    c->delay_ms = ms >= (double)LV_HOOK_MAX_DELAY_MS ? LV_HOOK_MAX_DELAY_MS : (uint64_t)(ms + 0.5);
}

static const char verdict_expected[] = "expected \"ok\", \"fail\", \"retry\" or nil";

/* Stack: 1 = struct call. */
static int classify_main(lua_State *L)
{
    struct call *c = lua_touserdata(L, 1);
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
    push_mt(L, c->rt->mt_attempt);
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
        c->verdict = LV_HOOK_OK;
    } else if (key_is(v, n, "fail")) {
        c->verdict = LV_HOOK_FAIL;
    } else if (key_is(v, n, "retry")) {
        c->verdict = LV_HOOK_RETRY;
    } else {
        bad_value(c, L, -2, verdict_expected);
        return 0;
    }
    if (c->verdict != LV_HOOK_RETRY)
        return 0; /* a delay only means something with "retry" */
    int dt = lua_type(L, -1);
    if (dt == LUA_TNUMBER) {
        double s = lua_tonumber(L, -1);
        if (!isfinite(s) || s < 0) {
            bad_value(c, L, -1, "the retry delay must be a number of seconds >= 0");
            c->verdict = LV_HOOK_NONE;
            return 0;
        }
        set_delay(c, s * 1000);
    } else if (dt == LUA_TSTRING) {
        size_t dn;
        const char *d = lua_tolstring(L, -1, &dn);
        double ms;
        if (!parse_delay(d, dn, &ms)) {
            bad_value(c, L, -1, "the retry delay must be seconds or a duration like \"250ms\"");
            c->verdict = LV_HOOK_NONE;
            return 0;
        }
        set_delay(c, ms);
    } else if (dt != LUA_TNIL) {
        bad_value(c, L, -1, "the retry delay must be a number of seconds or a duration string");
        c->verdict = LV_HOOK_NONE;
    }
    return 0;
}

/* ---- fallback */

static bool head_room(struct call *c)
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
static bool put_header(struct call *c, lua_State *L, int name_idx, int value_idx)
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
    lv_buf_append(&c->resp, name, nn);
    lv_buf_append(&c->resp, ": ", 2);
    lv_buf_append(&c->resp, v, vn);
    lv_buf_append(&c->resp, "\r\n", 2);
    return head_room(c);
}

/* A map value: one value, or a list of values (one header line each). */
static bool put_map_entry(struct call *c, lua_State *L, int name_idx, int value_idx)
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

static bool put_headers(struct call *c, lua_State *L, int t)
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
static void push_hook_request(lua_State *L, struct call *c)
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

/* Stack: 1 = struct call. */
static int fallback_main(lua_State *L)
{
    struct call *c = lua_touserdata(L, 1);
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

    lv_buf_printf(&c->resp, "HTTP/1.1 %d %s\r\n", status, lv_http_reason(status));
    int ht = lua_getfield(L, res, "headers");
    if (ht == LUA_TTABLE) {
        if (!put_headers(c, L, lua_gettop(L)))
            return 0;
    } else if (ht != LUA_TNIL) {
        bad_value(c, L, -1, "headers must be a table");
        return 0;
    }
    if (!no_body) {
        lv_buf_puts(&c->resp, "Content-Length: ");
        lv_buf_putu(&c->resp, blen);
        lv_buf_puts(&c->resp, "\r\n");
    }
    if (r->request_id)
        lv_buf_printf(&c->resp, "X-Request-Id: %s\r\n", r->request_id);
    if (r->close)
        lv_buf_puts(&c->resp, "Connection: close\r\n");
    lv_buf_puts(&c->resp, "\r\n");
    if (!head_room(c))
        return 0;
    if (!head_request(r))
        lv_buf_append(&c->resp, body, blen);
    c->status = status;
    return 0;
}

/* ---- idempotency key */

/* Stack: 1 = struct call. A key goes to c->resp with c->status = 1; nil leaves status 0. */
static int idem_key_main(lua_State *L)
{
    struct call *c = lua_touserdata(L, 1);
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

/* ---- running a call */

static struct lv__hookrt *rt_of(lua_State *L)
{
    lua_rawgetp(L, LUA_REGISTRYINDEX, &rt_key);
    struct lv__hookrt *rt = lua_touserdata(L, -1);
    lua_pop(L, 1);
    return rt;
}

/* Runs main(c) on the hook thread under every limit. Returns 0, or -1 with `err` set. */
static int run(lua_State *L, struct lv__hookrt *rt, lua_CFunction main, struct call *c,
               struct lv_buf *err)
{
    lua_State *T = rt->T;
    if (rt->cur) {
        lv_buf_printf(err, "%s hook: called while another hook runs", c->what);
        err_end(err);
        rt->last_failure = LV_HOOK_FAILED_ERROR;
        return -1;
    }
    /* The thread's stack is empty between calls, so these three slots are within the
     * LUA_MINSTACK every thread has: nothing here allocates outside the pcall. */
    lua_settop(T, 0);
    lua_pushcfunction(T, msgh);
    lua_pushcfunction(T, main);
    lua_pushlightuserdata(T, c);
    c->rt = rt;
    rt->cur = c;
    lv__config_lua_cap(L, LV_HOOK_MAX_MEMORY);
    lua_sethook(T, count_hook, LUA_MASKCOUNT, LV_HOOK_MAX_INSTRUCTIONS);
    int st = lua_pcall(T, 1, 0, 1);
    lua_sethook(T, NULL, 0, 0);
    lv__config_lua_cap(L, 0);
    rt->cur = NULL;

    if (st == LUA_OK && c->limit_hit) {
        /* The hook caught the limit's error (pcall) and returned through tail calls without
         * running another instruction: whatever it returned, the call failed. */
        lv_buf_printf(err, "%s hook: instruction limit reached (%d per call; the error was caught)",
                      c->what, LV_HOOK_MAX_INSTRUCTIONS);
        err_end(err);
        st = LUA_ERRRUN;
    } else if (st == LUA_OK) {
        lua_settop(T, 0);
        if (!c->bad[0])
            return 0;
        lv_buf_printf(err, "%s hook returned a bad value: ", c->what);
        err_put(err, c->bad, strlen(c->bad));
        err_end(err);
        rt->last_failure = LV_HOOK_FAILED_VALUE;
        return -1;
    }
    rt->last_failure = st == LUA_ERRMEM ? LV_HOOK_FAILED_MEMORY
                       : c->limit_hit   ? LV_HOOK_FAILED_INSTRUCTIONS
                                        : LV_HOOK_FAILED_ERROR;
    if (st == LUA_ERRMEM) {
        lv_buf_printf(err, "%s hook: out of memory (a call may use at most %zu MiB)", c->what,
                      LV_HOOK_MAX_MEMORY >> 20);
        err_end(err);
    } else if (err->len == 0) {
        size_t n = 0;
        const char *m = lua_type(T, -1) == LUA_TSTRING ? lua_tolstring(T, -1, &n) : NULL;
        if (m)
            err_from_trace(err, c->what, m, n);
        else {
            lv_buf_printf(err, "%s hook: error (status %d)", c->what, st);
            err_end(err);
        }
    }
    /* Leave the thread and the heap as a fresh call expects them: an empty, shrunk stack,
     * and the failed call's garbage collected (all of it after a memory error, so the next
     * call starts well below the state-wide cap). */
    lua_settop(T, 0);
    lua_resetthread(T);
    if (st == LUA_ERRMEM)
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
    struct lv__hookrt *rt = cfg && cfg->L ? rt_of(cfg->L) : NULL;
    return rt ? rt->last_failure : LV_HOOK_FAILED_ERROR;
}

enum lv_hook_verdict lv_hook_classify(struct lv_config *cfg, int ref,
                                      const struct lv_hook_attempt *a, uint64_t *delay_ms,
                                      bool *has_delay, struct lv_buf *err)
{
    lv_buf_reset(err);
    err_end(err);
    *has_delay = false;
    if (!cfg || !cfg->L || ref < 0 || !a)
        return LV_HOOK_NONE;
    struct lv__hookrt *rt = rt_of(cfg->L);
    if (!rt) {
        lv_buf_puts(err, "classify hook: the Lua state has no hook runtime");
        err_end(err);
        return LV_HOOK_NONE;
    }
    struct call c = {
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
    if (run(cfg->L, rt, classify_main, &c, err) != 0)
        return LV_HOOK_NONE;
    if (c.verdict == LV_HOOK_RETRY && c.has_delay) {
        *delay_ms = c.delay_ms;
        *has_delay = true;
    }
    return c.verdict;
}

int lv_hook_fallback(struct lv_config *cfg, int ref, const struct lv_hook_request *req,
                     const char *why, struct lv_buf *out, int *status, struct lv_buf *err)
{
    lv_buf_reset(err);
    err_end(err);
    if (!cfg || !cfg->L || ref < 0 || !req)
        return -1;
    struct lv__hookrt *rt = rt_of(cfg->L);
    if (!rt) {
        lv_buf_puts(err, "fallback hook: the Lua state has no hook runtime");
        err_end(err);
        return -1;
    }
    struct call c = {
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
    int rc = run(cfg->L, rt, fallback_main, &c, err);
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
    err_end(err);
    if (!cfg || !cfg->L || ref < 0 || !req)
        return 0;
    struct lv__hookrt *rt = rt_of(cfg->L);
    if (!rt) {
        lv_buf_puts(err, "idempotency key hook: the Lua state has no hook runtime");
        err_end(err);
        return -1;
    }
    struct call c = {
        .ref = ref,
        .what = "idempotency key",
        .req = req,
        .method = req->method,
        .path = req->path,
        .path_len = req->path_len,
        .req_h = req->headers,
        .n_req = req->nheaders,
    };
    int rc = run(cfg->L, rt, idem_key_main, &c, err);
    if (rc == 0 && c.status == 1) {
        lv_buf_append(key, c.resp.data, c.resp.len);
        rc = 1;
    }
    lv_buf_dispose(&c.resp);
    return rc;
}

/* ---- setting up a configuration's state */

/* Runs once on the loaded state with the real globals (levee's code, not the file's).
 * Arguments: the list of hook functions, and limit_hit(). It walks what the hooks can reach
 * (functions through their upvalues, tables through their keys and values; not levee's own
 * functions, whose _ENV is the real global table), then:
 *  - replaces, wherever it finds them (globals, upvalues, table fields, so a `local x = xpcall`
 *    taken when the file loaded is covered too): `require` (the sandbox's, the one function of
 *    levee's own the file is given) by a function that fails, since modules load with the
 *    file and not per request; `rawset` by one that refuses the sealed tables (it would go
 *    around __newindex); `setmetatable` by one that refuses __gc (a finalizer runs during
 *    some later collection, outside every limit); `xpcall` by one that skips the message
 *    handler once the instruction limit is hit (Lua runs the handler of an error raised by
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

static void push_ref_fn(lua_State *L, int ref, int list)
{
    if (ref < 0)
        return;
    lua_rawgeti(L, LUA_REGISTRYINDEX, ref);
    lua_rawseti(L, list, (lua_Integer)lua_rawlen(L, list) + 1);
}

/* Stack: 1 = struct lv_config. */
static int init_main(lua_State *L)
{
    struct lv_config *c = lua_touserdata(L, 1);
    struct lv__hookrt *rt = lua_newuserdatauv(L, sizeof(*rt), 0);
    memset(rt, 0, sizeof(*rt));
    rt->mt_attempt = rt->mt_request = LUA_NOREF;
    lua_rawsetp(L, LUA_REGISTRYINDEX, &rt_key);

    rt->T = lua_newthread(L);
    luaL_ref(L, LUA_REGISTRYINDEX); /* anchored for the life of the state */

    int kinds[2] = {KIND_ATTEMPT, KIND_REQUEST};
    int *refs[2] = {&rt->mt_attempt, &rt->mt_request};
    for (int i = 0; i < 2; i++) {
        lua_createtable(L, 0, 2);
        lua_pushlightuserdata(L, rt);
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

    if (luaL_loadbufferx(L, seal_lua, sizeof(seal_lua) - 1, "=levee.hooks.seal", "t") != LUA_OK)
        return lua_error(L);
    lua_newtable(L);
    int list = lua_gettop(L);
    for (size_t i = 0; i < c->nroutes; i++) {
        push_ref_fn(L, c->routes[i].classify_ref, list);
        push_ref_fn(L, c->routes[i].fallback_ref, list);
        push_ref_fn(L, c->routes[i].idempotency.key_ref, list);
    }
    lua_pushlightuserdata(L, rt);
    lua_pushcclosure(L, limit_hit, 1);
    lua_call(L, 2, 0);
    return 0;
}

int lv__hooks_init(lua_State *L, struct lv_config *c, struct lv_buf *errors)
{
    lua_pushcfunction(L, init_main);
    lua_pushlightuserdata(L, c);
    if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
        const char *m = lua_tostring(L, -1);
        lv_buf_printf(errors, "%s: cannot prepare the hooks: %s\n", c->file ? c->file : "?",
                      m ? m : "?");
        lua_pop(L, 1);
        return -1;
    }
    return 0;
}
