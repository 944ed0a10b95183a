#include "admin/faultapi.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/method.h"

#define PREFIX "/faults"

bool lv_faultapi_path(const char *path, size_t len)
{
    size_t pl = sizeof(PREFIX) - 1;
    return len >= pl && memcmp(path, PREFIX, pl) == 0 && (len == pl || path[pl] == '/');
}

static int error(struct lv_buf *out, int status, const char *fmt, const char *arg)
{
    char msg[300];
    snprintf(msg, sizeof(msg), fmt, arg);
    lv_buf_puts(out, "{\"error\":\"");
    lv_buf_json_escape(out, msg, strlen(msg));
    lv_buf_puts(out, "\"}\n");
    return status;
}

/* ---- POST: a rule from JSON */

static const char *const top_keys[] = {"route", "abort",   "delay", "reset", "throttle",
                                       "times", "percent", "match", "at",    NULL};

static bool known(const char *key, const char *const *keys)
{
    for (size_t i = 0; keys[i]; i++)
        if (strcmp(key, keys[i]) == 0)
            return true;
    return false;
}

/* Checks that `o` is an object with only `keys`; the reason in `why`. */
static bool only_keys(json_t *o, const char *what, const char *const *keys, char *why, size_t cap)
{
    if (!json_is_object(o)) {
        snprintf(why, cap, "%s: expected an object", what);
        return false;
    }
    const char *k;
    json_t *v;
    json_object_foreach(o, k, v)
    {
        if (!known(k, keys)) {
            snprintf(why, cap, "%s: unknown key \"%.60s\"", what, k);
            return false;
        }
    }
    return true;
}

static bool read_kind(json_t *o, enum lv_fault_kind k, struct lv_fault_rule *r, char *why,
                      size_t cap)
{
    const char *name = lv_fault_kind_name(k);
    struct lv_fault_one *one = &r->f.k[k];
    one->on = true;
    one->percent = 100;
    switch (k) {
    case LV_FAULT_ABORT: {
        static const char *const keys[] = {"status", NULL};
        if (!only_keys(o, name, keys, why, cap))
            return false;
        json_t *s = json_object_get(o, "status");
        if (!json_is_integer(s) || json_integer_value(s) < 200 || json_integer_value(s) > 599) {
            snprintf(why, cap, "abort.status: expected an integer from 200 to 599");
            return false;
        }
        one->value = (uint64_t)json_integer_value(s);
        return true;
    }
    case LV_FAULT_DELAY: {
        static const char *const keys[] = {"time", "ms", NULL};
        if (!only_keys(o, name, keys, why, cap))
            return false;
        json_t *t = json_object_get(o, "time"), *ms = json_object_get(o, "ms");
        if (json_is_string(t) && !ms &&
            lv_fault_parse_duration(json_string_value(t), json_string_length(t), &one->value))
            return true;
        if (json_is_integer(ms) && !t && json_integer_value(ms) >= 1 &&
            json_integer_value(ms) <= 3600000) {
            one->value = (uint64_t)json_integer_value(ms);
            return true;
        }
        snprintf(
            why, cap,
            "delay: expected {\"time\": \"200ms\"} or {\"ms\": 200} (more than 0, at most 1h)");
        return false;
    }
    case LV_FAULT_RESET: {
        static const char *const keys[] = {NULL};
        if (json_is_true(o))
            return true;
        return only_keys(o, name, keys, why, cap);
    }
    case LV_FAULT_THROTTLE: {
        static const char *const keys[] = {"rate", NULL};
        if (!only_keys(o, name, keys, why, cap))
            return false;
        json_t *rate = json_object_get(o, "rate");
        if (json_is_string(rate) &&
            lv_fault_parse_size(json_string_value(rate), json_string_length(rate), &one->value))
            return true;
        if (json_is_integer(rate) && json_integer_value(rate) >= 1 &&
            json_integer_value(rate) <= 1073741824) {
            one->value = (uint64_t)json_integer_value(rate);
            return true;
        }
        snprintf(why, cap,
                 "throttle.rate: expected a size like \"10KiB\" or a number of bytes a second");
        return false;
    }
    }
    return false;
}

static bool read_match(json_t *m, struct lv_fault_rule *r, char *why, size_t cap)
{
    static const char *const keys[] = {"method", "prefix", NULL};
    if (!only_keys(m, "match", keys, why, cap))
        return false;
    json_t *meth = json_object_get(m, "method"), *pre = json_object_get(m, "prefix");
    if (meth) {
        int n = json_is_string(meth)
                    ? lv_method_from_name(json_string_value(meth), json_string_length(meth))
                    : -1;
        if (n < 0) {
            snprintf(why, cap, "match.method: expected a method name like \"POST\"");
            return false;
        }
        r->method = n;
    }
    if (pre) {
        if (!json_is_string(pre) || json_string_value(pre)[0] != '/' ||
            strlen(json_string_value(pre)) != json_string_length(pre)) {
            snprintf(why, cap, "match.prefix: expected a path prefix starting with \"/\"");
            return false;
        }
        r->prefix = (char *)json_string_value(pre); /* copied by lv_fault_rules_add */
    }
    return true;
}

/* Fills `r` from `o` (strings borrowed from `o`). */
static bool read_rule(json_t *o, const struct lv_config *cfg, struct lv_fault_rule *r, char *why,
                      size_t cap)
{
    memset(r, 0, sizeof(*r));
    r->percent = 100;
    r->times = -1;
    r->method = -1;
    if (!only_keys(o, "body", top_keys, why, cap))
        return false;
    json_t *route = json_object_get(o, "route");
    if (!json_is_string(route)) {
        snprintf(why, cap, "route: required, the name of a route");
        return false;
    }
    if (!lv_config_route((struct lv_config *)cfg, json_string_value(route))) {
        snprintf(why, cap, "route: no route named \"%.80s\"", json_string_value(route));
        return false;
    }
    r->route = (char *)json_string_value(route);
    bool any = false;
    for (int k = 0; k < LV_FAULT_KINDS; k++) {
        json_t *kv = json_object_get(o, lv_fault_kind_name((enum lv_fault_kind)k));
        if (!kv)
            continue;
        if (!read_kind(kv, (enum lv_fault_kind)k, r, why, cap))
            return false;
        any = true;
    }
    if (!any) {
        snprintf(why, cap, "expected at least one of abort, delay, reset, throttle");
        return false;
    }
    json_t *times = json_object_get(o, "times");
    if (times) {
        if (!json_is_integer(times) || json_integer_value(times) < 1) {
            snprintf(why, cap, "times: expected an integer of at least 1");
            return false;
        }
        r->times = json_integer_value(times);
    }
    json_t *pc = json_object_get(o, "percent");
    if (pc) {
        if (!json_is_number(pc) || !(json_number_value(pc) > 0) || json_number_value(pc) > 100) {
            snprintf(why, cap, "percent: expected a number more than 0 and at most 100");
            return false;
        }
        r->percent = json_number_value(pc);
    }
    json_t *m = json_object_get(o, "match");
    if (m && !read_match(m, r, why, cap))
        return false;
    json_t *at = json_object_get(o, "at");
    if (at) {
        const char *s = json_is_string(at) ? json_string_value(at) : "";
        if (strcmp(s, "client") != 0 && strcmp(s, "upstream") != 0) {
            snprintf(why, cap, "at: expected \"upstream\" or \"client\"");
            return false;
        }
        r->at_client = strcmp(s, "client") == 0;
    }
    return true;
}

/* ---- GET: rules as JSON */

static void put_str(struct lv_buf *b, const char *s)
{
    lv_buf_putc(b, '"');
    lv_buf_json_escape(b, s, strlen(s));
    lv_buf_putc(b, '"');
}

static void rule_json(const struct lv_fault_rule *r, void *arg)
{
    struct lv_buf *b = arg;
    if (b->len && b->data[b->len - 1] == '}')
        lv_buf_putc(b, ',');
    lv_buf_printf(b, "{\"id\":%" PRIu64 ",\"route\":", r->id);
    put_str(b, r->route);
    const struct lv_fault_one *k = r->f.k;
    if (k[LV_FAULT_ABORT].on)
        lv_buf_printf(b, ",\"abort\":{\"status\":%d}", (int)k[LV_FAULT_ABORT].value);
    if (k[LV_FAULT_DELAY].on)
        lv_buf_printf(b, ",\"delay\":{\"ms\":%" PRIu64 "}", k[LV_FAULT_DELAY].value);
    if (k[LV_FAULT_RESET].on)
        lv_buf_puts(b, ",\"reset\":{}");
    if (k[LV_FAULT_THROTTLE].on)
        lv_buf_printf(b, ",\"throttle\":{\"rate\":%" PRIu64 "}", k[LV_FAULT_THROTTLE].value);
    if (r->times >= 0)
        lv_buf_printf(b, ",\"times_left\":%" PRId64, r->times);
    else
        lv_buf_puts(b, ",\"times_left\":null");
    lv_buf_printf(b, ",\"percent\":%.10g,\"injected\":%" PRIu64 ",\"at\":\"%s\"", r->percent,
                  r->injected, r->at_client ? "client" : "upstream");
    if (r->method >= 0 || r->prefix) {
        lv_buf_puts(b, ",\"match\":{");
        if (r->method >= 0) {
            lv_buf_puts(b, "\"method\":");
            put_str(b, lv_method_name(r->method));
        }
        if (r->prefix) {
            lv_buf_puts(b, r->method >= 0 ? ",\"prefix\":" : "\"prefix\":");
            put_str(b, r->prefix);
        }
        lv_buf_putc(b, '}');
    }
    lv_buf_putc(b, '}');
}

struct find_one {
    uint64_t id;
    struct lv_buf *b;
};

static void rule_json_if(const struct lv_fault_rule *r, void *arg)
{
    struct find_one *f = arg;
    if (r->id == f->id)
        rule_json(r, f->b);
}

int lv_faultapi_handle(struct lv_fault_rules *t, const struct lv_config *cfg, const char *method,
                       const char *path, size_t path_len, const char *body, size_t body_len,
                       struct lv_buf *out, const char **allow)
{
    size_t pl = sizeof(PREFIX) - 1;
    bool get = strcmp(method, "GET") == 0 || strcmp(method, "HEAD") == 0;
    if (path_len == pl) {
        if (get) {
            lv_buf_puts(out, "{\"faults\":[");
            struct lv_buf list = LV_BUF_INIT;
            lv_fault_rules_each(t, rule_json, &list);
            lv_buf_append(out, list.data, list.len);
            lv_buf_dispose(&list);
            lv_buf_puts(out, "]}\n");
            return 200;
        }
        if (strcmp(method, "DELETE") == 0) {
            lv_buf_printf(out, "{\"deleted\":%zu}\n", lv_fault_rules_clear(t));
            return 200;
        }
        if (strcmp(method, "POST") == 0) {
            json_error_t jerr;
            json_t *o = json_loadb(body ? body : "", body_len, JSON_REJECT_DUPLICATES, &jerr);
            if (!o)
                return error(out, 400, "bad JSON: %s", jerr.text);
            struct lv_fault_rule r;
            char why[200];
            if (!read_rule(o, cfg, &r, why, sizeof(why))) {
                json_decref(o);
                return error(out, 400, "%s", why);
            }
            uint64_t id = lv_fault_rules_add(t, &r);
            json_decref(o);
            struct find_one f = {id, out};
            lv_fault_rules_each(t, rule_json_if, &f);
            if (!out->len) /* a concurrent request used it up already */
                lv_buf_printf(out, "{\"id\":%" PRIu64 "}", id);
            lv_buf_putc(out, '\n');
            return 201;
        }
        *allow = "GET, HEAD, POST, DELETE";
        return error(out, 405, "%s", "method not allowed");
    }
    /* /faults/ID */
    const char *idp = path + pl + 1;
    size_t idl = path_len - pl - 1;
    uint64_t id = 0;
    bool ok = idl > 0 && idl <= 19;
    for (size_t i = 0; ok && i < idl; i++) {
        ok = idp[i] >= '0' && idp[i] <= '9';
        id = id * 10 + (uint64_t)(idp[i] - '0');
    }
    char shown[24];
    snprintf(shown, sizeof(shown), "%.*s", (int)(idl < 20 ? idl : 20), idp);
    if (!ok)
        return error(out, 404, "no fault \"%s\"", shown);
    if (get) {
        struct find_one f = {id, out};
        lv_fault_rules_each(t, rule_json_if, &f);
        if (!out->len)
            return error(out, 404, "no fault %s", shown);
        lv_buf_putc(out, '\n');
        return 200;
    }
    if (strcmp(method, "DELETE") == 0) {
        if (!lv_fault_rules_remove(t, id))
            return error(out, 404, "no fault %s", shown);
        lv_buf_printf(out, "{\"deleted\":%" PRIu64 "}\n", id);
        return 200;
    }
    *allow = "GET, HEAD, DELETE";
    return error(out, 405, "%s", "method not allowed");
}
