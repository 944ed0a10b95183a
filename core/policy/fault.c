#include "policy/fault.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

static const char *const kind_names[LV_FAULT_KINDS] = {"abort", "delay", "reset", "throttle"};

const char *lv_fault_kind_name(enum lv_fault_kind k)
{
    return (unsigned)k < LV_FAULT_KINDS ? kind_names[k] : "?";
}

bool lv_faults_any(const struct lv_faults *f)
{
    for (int k = 0; k < LV_FAULT_KINDS; k++)
        if (f->k[k].on)
            return true;
    return false;
}

void lv_fault_hit_add(struct lv_fault_hit *hit, enum lv_fault_kind k, uint64_t value)
{
    if (hit->kinds & (1u << k))
        return;
    hit->kinds |= 1u << k;
    switch (k) {
    case LV_FAULT_ABORT:
        hit->abort_status = (int)value;
        break;
    case LV_FAULT_DELAY:
        hit->delay_ms = value;
        break;
    case LV_FAULT_THROTTLE:
        hit->throttle_rate = value;
        break;
    case LV_FAULT_RESET:
        break;
    }
}

void lv_faults_draw(const struct lv_faults *f, unsigned only, uint64_t (*rnd)(void *), void *arg,
                    struct lv_fault_hit *hit)
{
    for (int k = 0; k < LV_FAULT_KINDS; k++) {
        const struct lv_fault_one *o = &f->k[k];
        if (!o->on || !(only & (1u << k)) || (hit->kinds & (1u << k)) || !(o->percent > 0))
            continue;
        if (o->percent < 100) {
            /* A millionth of a percent is finer than anyone writes. */
            uint64_t draw = rnd(arg) % 100000000u;
            if ((double)draw >= o->percent * 1000000.0)
                continue;
        }
        lv_fault_hit_add(hit, (enum lv_fault_kind)k, o->value);
    }
}

/* ---- the header's syntax */

/* A decimal number (digits, an optional fraction) at the start of [p, p+n): its value and
 * length, or 0 when there is none. At most 15 digits: nothing valid needs more. */
static size_t number(const char *p, size_t n, double *v)
{
    size_t i = 0, digits = 0;
    double x = 0, scale = 1;
    bool frac = false;
    for (; i < n; i++) {
        if (p[i] >= '0' && p[i] <= '9') {
            if (++digits > 15)
                return 0;
            if (frac) {
                scale /= 10;
                x += (p[i] - '0') * scale;
            } else {
                x = x * 10 + (p[i] - '0');
            }
        } else if (p[i] == '.' && !frac && digits > 0) {
            frac = true;
        } else {
            break;
        }
    }
    if (digits == 0 || p[i - 1] == '.')
        return 0;
    *v = x;
    return i;
}

static bool unit_is(const char *p, size_t n, const char *unit)
{
    size_t ul = strlen(unit);
    if (n != ul)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (c >= 'A' && c <= 'Z')
            c = (char)(c - 'A' + 'a');
        char u = unit[i];
        if (u >= 'A' && u <= 'Z')
            u = (char)(u - 'A' + 'a');
        if (c != u)
            return false;
    }
    return true;
}

bool lv_fault_parse_duration(const char *p, size_t n, uint64_t *ms)
{
    double v;
    size_t i = number(p, n, &v);
    if (!i)
        return false;
    double scale;
    if (unit_is(p + i, n - i, "ms"))
        scale = 1;
    else if (unit_is(p + i, n - i, "s"))
        scale = 1000;
    else if (unit_is(p + i, n - i, "m"))
        scale = 60000;
    else
        return false;
    double x = ceil(v * scale);
    if (!(x >= 1) || x > 3600000)
        return false;
    *ms = (uint64_t)x;
    return true;
}

bool lv_fault_parse_size(const char *p, size_t n, uint64_t *bytes)
{
    double v;
    size_t i = number(p, n, &v);
    if (!i)
        return false;
    static const struct {
        const char *unit;
        double scale;
    } units[] = {{"", 1}, {"b", 1}, {"kb", 1000}, {"kib", 1024}, {"mb", 1.0e6}, {"mib", 1048576.0}};
    for (size_t u = 0; u < sizeof(units) / sizeof(units[0]); u++) {
        if (unit_is(p + i, n - i, units[u].unit)) {
            double x = floor(v * units[u].scale);
            if (!(x >= 1) || x > 1073741824.0)
                return false;
            *bytes = (uint64_t)x;
            return true;
        }
    }
    return false;
}

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* The reason, with the item quoted (printable ASCII only: it came from the network). */
static bool fail(char *why, size_t cap, const char *item, size_t len, const char *expected)
{
    char shown[48];
    size_t k = 0;
    for (size_t i = 0; i < len && k + 4 < sizeof(shown); i++)
        shown[k++] = (item[i] >= 0x20 && item[i] < 0x7f && item[i] != '"') ? item[i] : '?';
    if (len > 0 && k + 4 >= sizeof(shown) && k < len) {
        shown[k++] = '.';
        shown[k++] = '.';
        shown[k++] = '.';
    }
    shown[k] = 0;
    if (cap)
        snprintf(why, cap, "%s, got \"%s\"", expected, shown);
    return false;
}

static const char *const expected_item =
    "expected abort=STATUS, delay=DURATION, reset or throttle=SIZE, each with an optional :P%";

/* One item, without surrounding spaces. */
static bool parse_item(const char *p, size_t n, struct lv_faults *out, char *why, size_t cap)
{
    const char *item = p;
    size_t item_len = n;
    /* An optional ":P%" at the end. */
    double percent = 100;
    const char *colon = memchr(p, ':', n);
    if (colon) {
        size_t pl = n - (size_t)(colon + 1 - p);
        double v;
        size_t i = number(colon + 1, pl, &v);
        if (!i || i + 1 != pl || colon[1 + i] != '%' || v > 100)
            return fail(why, cap, item, item_len, "expected a percent from 0% to 100% after ':'");
        percent = v;
        n = (size_t)(colon - p);
    }
    const char *eq = memchr(p, '=', n);
    size_t kl = eq ? (size_t)(eq - p) : n;
    const char *val = eq ? eq + 1 : NULL;
    size_t vl = eq ? n - kl - 1 : 0;
    int kind = -1;
    for (int k = 0; k < LV_FAULT_KINDS; k++)
        if (unit_is(p, kl, kind_names[k]))
            kind = k;
    if (kind < 0)
        return fail(why, cap, item, item_len, expected_item);
    struct lv_fault_one *o = &out->k[kind];
    if (o->on)
        return fail(why, cap, item, item_len, "each kind may be given once");
    uint64_t value = 0;
    switch ((enum lv_fault_kind)kind) {
    case LV_FAULT_ABORT: {
        double s;
        if (!val || number(val, vl, &s) != vl || s != floor(s) || s < 200 || s > 599)
            return fail(why, cap, item, item_len, "expected abort=STATUS with STATUS 200-599");
        value = (uint64_t)s;
        break;
    }
    case LV_FAULT_DELAY:
        if (!val || !lv_fault_parse_duration(val, vl, &value))
            return fail(why, cap, item, item_len,
                        "expected delay=DURATION like 200ms, 1.5s or 1m (at most 1h)");
        break;
    case LV_FAULT_RESET:
        if (val)
            return fail(why, cap, item, item_len, "expected reset with no value");
        break;
    case LV_FAULT_THROTTLE:
        if (!val || !lv_fault_parse_size(val, vl, &value))
            return fail(why, cap, item, item_len,
                        "expected throttle=SIZE like 10KiB or 512 (bytes a second, at least 1)");
        break;
    }
    o->on = true;
    o->percent = percent;
    o->value = value;
    return true;
}

bool lv_fault_header_parse(const char *p, size_t n, struct lv_faults *out, char *why, size_t cap)
{
    memset(out, 0, sizeof(*out));
    size_t i = 0;
    bool any = false;
    while (i <= n) {
        size_t start = i;
        while (i < n && p[i] != ',')
            i++;
        size_t a = start, b = i;
        while (a < b && is_space(p[a]))
            a++;
        while (b > a && is_space(p[b - 1]))
            b--;
        if (a == b)
            return fail(why, cap, p, n, any || i < n ? "empty item in the list" : expected_item);
        for (size_t k = a; k < b; k++)
            if ((unsigned char)p[k] < 0x21 || (unsigned char)p[k] > 0x7e)
                return fail(why, cap, p + a, b - a, expected_item);
        if (!parse_item(p + a, b - a, out, why, cap))
            return false;
        any = true;
        i++; /* past the comma (or the end) */
    }
    return true;
}
