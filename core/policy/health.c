#include "policy/health.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"

/* below this, a starting server would get almost nothing and never show it recovered */
#define SLOW_START_FLOOR 0.1

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static uint32_t inc_sat(uint32_t v)
{
    return v < UINT32_MAX ? v + 1 : v;
}

/* a threshold of 0 would trip on nothing at all: take it as 1 */
static uint32_t at_least_1(uint32_t v)
{
    return v ? v : 1;
}

static const char *plural(uint32_t n)
{
    return n == 1 ? "" : "s";
}

/* "250ms", "10s", "1.5s", "1m30s", "5m", "1h": the way durations are written in the
 * configuration */
static void fmt_dur(char *out, size_t cap, uint64_t ms)
{
    unsigned long long h = ms / 3600000, m = ms / 60000 % 60, s = ms / 1000 % 60;
    unsigned frac = (unsigned)(ms % 1000);
    if (ms < 1000) {
        snprintf(out, cap, "%ums", frac);
        return;
    }
    char hp[24] = "", mp[8] = "", sp[16] = "";
    if (h)
        snprintf(hp, sizeof hp, "%lluh", h);
    if (m)
        snprintf(mp, sizeof mp, "%llum", m);
    if (frac) {
        /* "1.500" -> "1.5s": drop trailing zeros of the fraction (frac > 0, so one digit stays) */
        char num[16];
        snprintf(num, sizeof num, "%03u", frac);
        size_t n = strlen(num);
        while (n > 1 && num[n - 1] == '0')
            n--;
        snprintf(sp, sizeof sp, "%llu.%.*ss", s, (int)n, num);
    } else if (s) {
        snprintf(sp, sizeof sp, "%llus", s);
    }
    snprintf(out, cap, "%s%s%s", hp, mp, sp);
}

static bool state_in(enum lv_server_state s)
{
    return s == LV_SERVER_UP || s == LV_SERVER_STARTING;
}

static size_t count_ejected(const struct lv_health_group *g)
{
    size_t c = 0;
    for (size_t i = 0; i < g->n; i++)
        c += g->servers[i].ejected;
    return c;
}

/* floor(max_ejected × n), with a hair of tolerance so 0.3 × 10 is 3; at least one when
 * max_ejected > 0, so a small share of a small group still lets the worst server go */
static size_t eject_cap(const struct lv_health_group *g)
{
    if (!(g->p.max_ejected > 0)) /* also NaN */
        return 0;
    double c = g->p.max_ejected * (double)g->n + 1e-9;
    size_t cap = c >= (double)g->n ? g->n : (size_t)c;
    return cap ? cap : 1;
}

/* eject_for × 2^(n-1), capped at max_eject_for (at least eject_for) */
static uint64_t eject_duration(const struct lv_health_params *p, uint32_t n)
{
    uint64_t d = p->eject_for_ms;
    uint64_t max = p->max_eject_for_ms < d ? d : p->max_eject_for_ms;
    for (uint32_t j = 1; j < n && d < max; j++)
        d = d > max / 2 ? max : d * 2;
    return d < max ? d : max;
}

static int emit(struct lv_health_event *ev, int k, enum lv_health_event_kind kind, int server,
                const char *reason)
{
    ev[k].kind = kind;
    ev[k].server = server;
    snprintf(ev[k].reason, sizeof ev[k].reason, "%s", reason);
    return k + 1;
}

static int set_state(struct lv_health_group *g, size_t i, enum lv_server_state st,
                     enum lv_health_event_kind kind, const char *reason, struct lv_health_event *ev,
                     int k)
{
    struct lv_server_health *s = &g->servers[i];
    s->state = st;
    snprintf(s->reason, sizeof s->reason, "%s", reason);
    return emit(ev, k, kind, (int)i, reason);
}

/* Neither DOWN nor ejected any more: in again, ramping up when slow start is on. `why` is ""
 * or a cause such as " after 2 passed checks". */
static int come_back(struct lv_health_group *g, size_t i, uint64_t now, const char *why,
                     struct lv_health_event *ev, int k)
{
    struct lv_server_health *s = &g->servers[i];
    char r[LV_HEALTH_REASON_MAX];
    s->consecutive_failures = 0; /* judge it on what it does from now on */
    if (g->p.slow_start_ms > 0) {
        char d[32];
        fmt_dur(d, sizeof d, g->p.slow_start_ms);
        s->starting_since = now;
        snprintf(r, sizeof r, "starting%s (slow start %s)", why, d);
        return set_state(g, i, LV_SERVER_STARTING, LV_HEALTH_EV_STARTING, r, ev, k);
    }
    snprintf(r, sizeof r, "back in%s", why);
    return set_state(g, i, LV_SERVER_UP, LV_HEALTH_EV_UP, r, ev, k);
}

/* Sets the panic flag from the servers; an entry or an exit is an event when `ev` is given. */
static int update_panic(struct lv_health_group *g, struct lv_health_event *ev, int k)
{
    size_t in = lv_health_count_in(g);
    bool panic = g->n > 0 && in == 0;
    if (panic == g->panic)
        return k;
    g->panic = panic;
    if (!ev)
        return k;
    char r[LV_HEALTH_REASON_MAX];
    if (panic) {
        g->panics++;
        snprintf(r, sizeof r, "no server in: sending to all %zu (panic mode)", g->n);
        return emit(ev, k, LV_HEALTH_EV_PANIC, -1, r);
    }
    snprintf(r, sizeof r, "panic mode over: %zu of %zu in", in, g->n);
    return emit(ev, k, LV_HEALTH_EV_PANIC_OVER, -1, r);
}

void lv_health_init(struct lv_health_group *g, const struct lv_health_params *p, size_t n,
                    bool start_down)
{
    *g = (struct lv_health_group){0};
    g->p = *p;
    g->n = n;
    g->servers = lv_xcalloc(n, sizeof(*g->servers));
    for (size_t i = 0; i < n; i++) {
        struct lv_server_health *s = &g->servers[i];
        s->state = LV_SERVER_UP;
        if (start_down) {
            s->state = LV_SERVER_DOWN;
            s->check_down = true;
            snprintf(s->reason, sizeof s->reason, "waiting for %u passed check%s",
                     (unsigned)at_least_1(p->healthy), plural(at_least_1(p->healthy)));
        }
    }
    update_panic(g, NULL, 0);
}

void lv_health_free(struct lv_health_group *g)
{
    free(g->servers);
    g->servers = NULL;
    g->n = 0;
}

void lv_health_configure(struct lv_health_group *g, const struct lv_health_params *p)
{
    g->p = *p;
}

void lv_health_carry(struct lv_health_group *g, size_t to, const struct lv_health_group *old,
                     size_t from)
{
    if (to >= g->n || from >= old->n)
        return;
    g->servers[to] = old->servers[from];
    update_panic(g, NULL, 0);
}

int lv_health_record(struct lv_health_group *g, size_t i, uint64_t now, enum lv_health_outcome o,
                     struct lv_health_event *ev)
{
    if (i >= g->n)
        return 0;
    struct lv_server_health *s = &g->servers[i];
    if (o == LV_HEALTH_SUCCESS) {
        s->consecutive_failures = 0;
        return 0;
    }
    /* out already (an attempt that began before, or panic traffic): it has its sentence */
    if (!state_in(s->state))
        return 0;
    s->consecutive_failures = inc_sat(s->consecutive_failures);
    s->last_failure = o;
    if (!g->p.outlier || s->consecutive_failures < at_least_1(g->p.consecutive_failures))
        return 0;

    uint32_t count = s->consecutive_failures;
    const char *what = lv_health_outcome_name(o);
    char r[LV_HEALTH_REASON_MAX];
    /* every outcome below resets the count, so a verdict is given once per run of failures */
    s->consecutive_failures = 0;
    if (!g->p.enforce) {
        s->ejections_dry++;
        snprintf(r, sizeof r, "would be ejected after %u consecutive %s (enforce = false)",
                 (unsigned)count, what);
        return emit(ev, 0, LV_HEALTH_EV_WOULD_EJECT, (int)i, r);
    }
    size_t ejected = count_ejected(g), cap = eject_cap(g), out = g->n - lv_health_count_in(g);
    if (cap == 0) {
        snprintf(r, sizeof r, "not ejected: max_ejected is 0");
        return emit(ev, 0, LV_HEALTH_EV_NOT_EJECTED, (int)i, r);
    }
    if (ejected >= cap) {
        snprintf(r, sizeof r, "not ejected: max_ejected reached (%zu of %zu ejected)", ejected,
                 g->n);
        return emit(ev, 0, LV_HEALTH_EV_NOT_EJECTED, (int)i, r);
    }
    if (out + 1 >= g->n) {
        snprintf(r, sizeof r, "not ejected: no other server is in (%zu of %zu out)", out, g->n);
        return emit(ev, 0, LV_HEALTH_EV_NOT_EJECTED, (int)i, r);
    }

    s->ejections = inc_sat(s->ejections);
    s->ejections_enforced++;
    uint64_t dur = eject_duration(&g->p, s->ejections);
    s->ejected = true;
    s->ejected_until = add_sat(now, dur);
    char d[32];
    fmt_dur(d, sizeof d, dur);
    if (s->ejections > 1)
        snprintf(r, sizeof r, "ejected for %s after %u consecutive %s (ejection %u)", d,
                 (unsigned)count, what, (unsigned)s->ejections);
    else
        snprintf(r, sizeof r, "ejected for %s after %u consecutive %s", d, (unsigned)count, what);
    int k = set_state(g, i, LV_SERVER_EJECTED, LV_HEALTH_EV_EJECTED, r, ev, 0);
    return update_panic(g, ev, k);
}

int lv_health_check_result(struct lv_health_group *g, size_t i, uint64_t now, bool ok,
                           const char *why, struct lv_health_event *ev)
{
    if (i >= g->n)
        return 0;
    struct lv_server_health *s = &g->servers[i];
    char r[LV_HEALTH_REASON_MAX];
    int k = 0;
    if (ok) {
        s->checks_ok++;
        s->check_ok_streak = inc_sat(s->check_ok_streak);
        s->check_fail_streak = 0;
        if (!s->check_down || s->check_ok_streak < at_least_1(g->p.healthy))
            return 0;
        s->check_down = false;
        if (s->ejected && now < s->ejected_until) {
            /* the checks are happy, but live traffic had it out: that sentence runs on */
            char d[32];
            fmt_dur(d, sizeof d, s->ejected_until - now);
            snprintf(r, sizeof r, "passed %u check%s, still ejected for %s",
                     (unsigned)s->check_ok_streak, plural(s->check_ok_streak), d);
            k = set_state(g, i, LV_SERVER_EJECTED, LV_HEALTH_EV_EJECTED, r, ev, k);
        } else {
            s->ejected = false;
            char c[48];
            snprintf(c, sizeof c, " after %u passed check%s", (unsigned)s->check_ok_streak,
                     plural(s->check_ok_streak));
            k = come_back(g, i, now, c, ev, k);
        }
    } else {
        s->checks_failed++;
        s->check_fail_streak = inc_sat(s->check_fail_streak);
        s->check_ok_streak = 0;
        if (s->check_down || s->check_fail_streak < at_least_1(g->p.unhealthy))
            return 0;
        s->check_down = true;
        s->consecutive_failures = 0;
        snprintf(r, sizeof r, "down after %u failed check%s%s%s", (unsigned)s->check_fail_streak,
                 plural(s->check_fail_streak), why && *why ? ": " : "", why ? why : "");
        k = set_state(g, i, LV_SERVER_DOWN, LV_HEALTH_EV_DOWN, r, ev, k);
    }
    return update_panic(g, ev, k);
}

int lv_health_tick(struct lv_health_group *g, uint64_t now, struct lv_health_event *ev, int max)
{
    /* time only brings servers in, so the one group event possible is the end of a panic:
     * keep a slot for it; a change without room waits for the next tick */
    int room = ev ? max - (g->panic ? 1 : 0) : 0;
    int k = 0;
    for (size_t i = 0; i < g->n; i++) {
        struct lv_server_health *s = &g->servers[i];
        if (s->ejected && now >= s->ejected_until) {
            if (s->check_down) {
                s->ejected = false; /* still DOWN: no change to report */
                continue;
            }
            if (k >= room)
                continue;
            s->ejected = false;
            k = come_back(g, i, now, "", ev, k);
        } else if (s->state == LV_SERVER_STARTING &&
                   now >= add_sat(s->starting_since, g->p.slow_start_ms)) {
            if (k >= room)
                continue;
            k = set_state(g, i, LV_SERVER_UP, LV_HEALTH_EV_UP, "slow start done", ev, k);
        }
    }
    if (!ev || max <= k)
        return k; /* full, so the panic slot was not needed: no panic can have ended */
    return update_panic(g, ev, k);
}

int lv_health_checks_off(struct lv_health_group *g, uint64_t now, struct lv_health_event *ev,
                         int max)
{
    int room = ev ? max - (g->panic ? 1 : 0) : 0;
    int k = 0;
    for (size_t i = 0; i < g->n; i++) {
        struct lv_server_health *s = &g->servers[i];
        s->check_ok_streak = s->check_fail_streak = 0;
        if (!s->check_down || k >= room)
            continue;
        s->check_down = false;
        if (s->ejected && now < s->ejected_until) {
            char d[32], r[LV_HEALTH_REASON_MAX];
            fmt_dur(d, sizeof d, s->ejected_until - now);
            snprintf(r, sizeof r, "active checks off, still ejected for %s", d);
            k = set_state(g, i, LV_SERVER_EJECTED, LV_HEALTH_EV_EJECTED, r, ev, k);
        } else {
            s->ejected = false;
            k = come_back(g, i, now, ": active checks off", ev, k);
        }
    }
    if (!ev || max <= k)
        return k;
    return update_panic(g, ev, k);
}

bool lv_health_in(const struct lv_health_group *g, size_t i)
{
    return i < g->n && state_in(g->servers[i].state);
}

double lv_health_weight(const struct lv_health_group *g, size_t i, uint64_t now)
{
    if (i >= g->n)
        return 0;
    const struct lv_server_health *s = &g->servers[i];
    if (s->state == LV_SERVER_UP)
        return 1;
    if (s->state != LV_SERVER_STARTING)
        return 0;
    uint64_t len = g->p.slow_start_ms;
    uint64_t elapsed = now > s->starting_since ? now - s->starting_since : 0;
    if (len == 0 || elapsed >= len)
        return 1; /* done; the next tick makes it UP */
    return SLOW_START_FLOOR + (1 - SLOW_START_FLOOR) * (double)elapsed / (double)len;
}

size_t lv_health_count_in(const struct lv_health_group *g)
{
    size_t c = 0;
    for (size_t i = 0; i < g->n; i++)
        c += state_in(g->servers[i].state);
    return c;
}

uint64_t lv_health_eject_left(const struct lv_health_group *g, size_t i, uint64_t now)
{
    if (i >= g->n)
        return 0;
    const struct lv_server_health *s = &g->servers[i];
    return s->ejected && now < s->ejected_until ? s->ejected_until - now : 0;
}

const char *lv_server_state_name(enum lv_server_state s)
{
    switch (s) {
    case LV_SERVER_UP:
        return "up";
    case LV_SERVER_DOWN:
        return "down";
    case LV_SERVER_EJECTED:
        return "ejected";
    case LV_SERVER_STARTING:
        return "starting";
    }
    return "?";
}

const char *lv_health_outcome_name(enum lv_health_outcome o)
{
    switch (o) {
    case LV_HEALTH_SUCCESS:
        return "success";
    case LV_HEALTH_CONNECT_FAILURE:
        return "connect-failure";
    case LV_HEALTH_RESET:
        return "reset";
    case LV_HEALTH_TIMEOUT:
        return "timeout";
    case LV_HEALTH_PROTOCOL_ERROR:
        return "protocol-error";
    case LV_HEALTH_5XX:
        return "5xx";
    }
    return "?";
}
