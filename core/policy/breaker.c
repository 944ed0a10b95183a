#include "policy/breaker.h"

enum { REQUESTS, FAILURES, SLOW };

static uint64_t add_sat(uint64_t a, uint64_t b)
{
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}

static void set_params(struct lv_breaker *b, const struct lv_breaker_params *p)
{
    b->p = *p;
    if (b->p.half_open_requests == 0)
        b->p.half_open_requests = 1;
    if (b->p.max_open_for_ms < b->p.open_for_ms)
        b->p.max_open_for_ms = b->p.open_for_ms;
}

static bool slow_rule_on(const struct lv_breaker *b)
{
    return b->p.slow_call_ms > 0 && b->p.slow_call_ratio > 0;
}

/* a ratio reached, with a hair of tolerance so 0.5 x 20 = 10 failures counts as reaching it */
static bool ratio_reached(uint64_t part, uint64_t whole, double ratio)
{
    return (double)part >= ratio * (double)whole - 1e-9;
}

static bool trips(const struct lv_breaker *b, uint64_t now)
{
    if (b->p.consecutive_failures > 0 && b->consecutive >= b->p.consecutive_failures)
        return true;
    uint64_t req = lv_window_sum(&b->w, now, REQUESTS);
    if (req == 0 || req < b->p.min_requests)
        return false;
    if (b->p.failure_ratio > 0 &&
        ratio_reached(lv_window_sum(&b->w, now, FAILURES), req, b->p.failure_ratio))
        return true;
    return slow_rule_on(b) &&
           ratio_reached(lv_window_sum(&b->w, now, SLOW), req, b->p.slow_call_ratio);
}

static void to_open(struct lv_breaker *b, uint64_t now, uint64_t open_for)
{
    b->state = LV_BREAKER_OPEN;
    b->opened_at = now;
    b->open_for_ms = open_for;
    b->open_until = add_sat(now, open_for);
    b->probes_admitted = b->probes_ok = 0;
    b->to_open++;
}

/* a failed probe: the upstream is still unwell, so stay away twice as long */
static void reopen(struct lv_breaker *b, uint64_t now)
{
    uint64_t next =
        b->open_for_ms > b->p.max_open_for_ms / 2 ? b->p.max_open_for_ms : b->open_for_ms * 2;
    if (next < b->p.open_for_ms)
        next = b->p.open_for_ms;
    to_open(b, now, next);
}

static void to_closed(struct lv_breaker *b)
{
    b->state = LV_BREAKER_CLOSED;
    b->consecutive = 0;
    b->open_for_ms = b->p.open_for_ms;
    b->probes_admitted = b->probes_ok = 0;
    lv_window_clear(&b->w); /* judge the recovered upstream on fresh samples only */
    b->to_closed++;
}

static void to_half_open(struct lv_breaker *b)
{
    b->state = LV_BREAKER_HALF_OPEN;
    b->probes_admitted = b->probes_ok = 0;
    b->to_half_open++;
}

void lv_breaker_init(struct lv_breaker *b, const struct lv_breaker_params *p, uint64_t now)
{
    (void)now;
    *b = (struct lv_breaker){0};
    set_params(b, p);
    b->state = LV_BREAKER_CLOSED;
    b->open_for_ms = b->p.open_for_ms;
    lv_window_init(&b->w, b->p.window_ms);
}

void lv_breaker_configure(struct lv_breaker *b, const struct lv_breaker_params *p, uint64_t now)
{
    set_params(b, p);
    lv_window_resize(&b->w, b->p.window_ms, now);
    if (b->open_for_ms < b->p.open_for_ms)
        b->open_for_ms = b->p.open_for_ms;
    if (b->open_for_ms > b->p.max_open_for_ms)
        b->open_for_ms = b->p.max_open_for_ms;
    switch (b->state) {
    case LV_BREAKER_CLOSED:
        b->open_for_ms = b->p.open_for_ms;
        if (trips(b, now))
            to_open(b, now, b->p.open_for_ms);
        break;
    case LV_BREAKER_OPEN:
        b->open_until = add_sat(b->opened_at, b->open_for_ms);
        break;
    case LV_BREAKER_HALF_OPEN:
        if (b->probes_ok >= b->p.half_open_requests)
            to_closed(b);
        break;
    }
}

enum lv_breaker_admit lv_breaker_admit(struct lv_breaker *b, uint64_t now, uint64_t *retry_after_ms)
{
    if (b->state == LV_BREAKER_OPEN) {
        if (now < b->open_until) {
            if (retry_after_ms)
                *retry_after_ms = b->open_until - now;
            return LV_BREAKER_REJECT;
        }
        to_half_open(b);
    }
    if (b->state == LV_BREAKER_HALF_OPEN) {
        if (b->probes_admitted >= b->p.half_open_requests) {
            if (retry_after_ms)
                *retry_after_ms = LV_BREAKER_BUSY_RETRY_MS;
            return LV_BREAKER_REJECT;
        }
        b->probes_admitted++;
        return LV_BREAKER_PROBE;
    }
    return LV_BREAKER_ALLOW;
}

bool lv_breaker_is_slow(const struct lv_breaker *b, uint64_t duration_ms)
{
    return slow_rule_on(b) && duration_ms > b->p.slow_call_ms;
}

void lv_breaker_record(struct lv_breaker *b, uint64_t now, bool failure, bool slow, bool probe)
{
    if (!slow_rule_on(b))
        slow = false;
    switch (b->state) {
    case LV_BREAKER_CLOSED:
        lv_window_add(&b->w, now, REQUESTS, 1);
        if (failure)
            lv_window_add(&b->w, now, FAILURES, 1);
        if (slow)
            lv_window_add(&b->w, now, SLOW, 1);
        b->consecutive = failure ? b->consecutive + (b->consecutive < UINT32_MAX) : 0;
        if (trips(b, now))
            to_open(b, now, b->p.open_for_ms);
        break;
    case LV_BREAKER_HALF_OPEN:
        /* only the probes handed out this half-open period decide */
        if (!probe || b->probes_ok >= b->probes_admitted)
            break;
        if (failure || slow) {
            reopen(b, now);
            break;
        }
        if (++b->probes_ok >= b->p.half_open_requests)
            to_closed(b);
        break;
    case LV_BREAKER_OPEN:
        break; /* admitted before it opened: the decision is made */
    }
}

void lv_breaker_release_probe(struct lv_breaker *b)
{
    if (b->state == LV_BREAKER_HALF_OPEN && b->probes_admitted > b->probes_ok)
        b->probes_admitted--;
}

void lv_breaker_stats(const struct lv_breaker *b, uint64_t now, struct lv_breaker_stats *out)
{
    *out = (struct lv_breaker_stats){0};
    out->state = b->state;
    if (b->state == LV_BREAKER_OPEN) {
        if (now >= b->open_until)
            out->state = LV_BREAKER_HALF_OPEN;
        else
            out->open_left_ms = b->open_until - now;
    }
    out->open_for_ms = b->open_for_ms;
    out->requests = lv_window_sum(&b->w, now, REQUESTS);
    out->failures = lv_window_sum(&b->w, now, FAILURES);
    out->slow = lv_window_sum(&b->w, now, SLOW);
    out->consecutive = b->consecutive;
    if (b->state == LV_BREAKER_HALF_OPEN) {
        out->probes_in_flight = b->probes_admitted - b->probes_ok;
        out->probes_ok = b->probes_ok;
    }
    out->to_open = b->to_open;
    out->to_half_open = b->to_half_open;
    out->to_closed = b->to_closed;
}

const char *lv_breaker_state_name(enum lv_breaker_state s)
{
    switch (s) {
    case LV_BREAKER_CLOSED:
        return "closed";
    case LV_BREAKER_OPEN:
        return "open";
    case LV_BREAKER_HALF_OPEN:
        return "half-open";
    }
    return "?";
}
