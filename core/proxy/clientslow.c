#include "proxy/clientslow.h"

#include <stdlib.h>

#define SLOW_TICK_MS 20

/* What of the held bytes counts as queued output (backpressure): all but what the next
 * 100 ms let out (at most 1 MiB held uncounted). */
static void slow_account(struct lv_client_slow *s)
{
    size_t ahead = (size_t)(s->rate / 10);
    if (ahead > 1024 * 1024)
        ahead = 1024 * 1024;
    size_t want = s->q.len > ahead ? s->q.len - ahead : 0;
    s->ds->write_queued = s->ds->write_queued - s->counted + want;
    s->counted = want;
}

static void on_slow_tick(uv_timer_t *t)
{
    struct lv_client_slow *s = (struct lv_client_slow *)t; /* the timer is its first member */
    s->ticking = false;
    if (s->ds->closed)
        return;
    uint64_t now = uv_now(t->loop);
    size_t n = s->q.len;
    if (s->rate) {
        double cap = (double)s->rate * (2 * SLOW_TICK_MS) / 1000.0;
        s->tokens += (double)s->rate * (double)(now - s->last_ms) / 1000.0;
        if (s->tokens > cap)
            s->tokens = cap < 1 ? 1 : cap;
        if ((double)n > s->tokens)
            n = (size_t)s->tokens;
        s->tokens -= (double)n;
    }
    s->last_ms = now;
    if (n) {
        lv_buf_reset(&s->out);
        lv_buf_append(&s->out, s->q.data, n);
        lv_buf_consume(&s->q, n);
        slow_account(s);
        uv_buf_t b = uv_buf_init(s->out.data, (unsigned)n);
        if (s->ops->wire(s->arg, &b, 1) < 0 || s->ds->closed)
            return;
    }
    if (s->q.len) {
        s->ticking = true;
        uv_timer_start(&s->timer, on_slow_tick, SLOW_TICK_MS, 0);
    }
    s->ops->ticked(s->arg);
}

struct lv_client_slow *lv_client_slow_new(uv_loop_t *loop, struct lv_downstream *ds,
                                          const struct lv_client_slow_ops *ops, void *arg)
{
    struct lv_client_slow *s = lv_xcalloc(1, sizeof(*s));
    uv_timer_init(loop, &s->timer);
    s->timer.data = arg;
    s->ds = ds;
    s->ops = ops;
    s->arg = arg;
    return s;
}

void lv_client_slow_rate(struct lv_client_slow *s, uint64_t rate)
{
    if (!rate)
        return;
    s->rate = rate;
    if (!s->ticking && !s->q.len) { /* a new throttled stretch: no savings */
        s->tokens = 0;
        s->last_ms = uv_now(s->timer.loop);
    }
}

void lv_client_slow_hold(struct lv_client_slow *s, const char *p, size_t n)
{
    lv_buf_append(&s->q, p, n);
    slow_account(s);
    if (!s->ticking) {
        s->ticking = true;
        uv_timer_start(&s->timer, on_slow_tick, SLOW_TICK_MS, 0);
    }
}

void lv_client_slow_free(struct lv_client_slow *s)
{
    lv_buf_dispose(&s->q);
    lv_buf_dispose(&s->out);
    free(s);
}
