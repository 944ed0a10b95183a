#include "policy/gradient.h"

#include <math.h>

/*
 * Constants of the algorithm (gradient.h describes it).
 *
 * GRADIENT_FLOOR: one update may at most halve the raw estimate (before smoothing), so an
 *   outlier window costs at most smoothing x 50% of the limit (10% at the default 0.2).
 * DROP_RATIO: the share of dropped requests that makes a window a "drop" window; 1% with at
 *   least one, so a lone timeout among hundreds of requests does not cut the limit, but a
 *   window of 10 with one timeout does.
 * DECAY_RATIO, DECAY: when the baseline is more than twice the recent RTT (latency came back
 *   down after a long spell), the baseline shrinks 5% per window on top of its averaging, so
 *   the limit recovers in tens of windows instead of long_window ones (Gradient2's rule).
 * APP_LIMITED: a window whose highest inflight stayed under this share of the limit says
 *   nothing about the limit (Gradient2's rule).
 * DOWN_RATE: a window faster than the baseline moves it this share of the way down (about ten
 *   windows), much faster than the 2 / (long_window + 1) of the way up: the baseline stands
 *   for the no-load RTT, and a lower latency is direct evidence of it.
 * PROBE_SHARE: a probe runs at this share of the limit: deep enough that a limit above the
 *   knee sees a clearly lower latency (and the probes that follow walk it down to the knee),
 *   shallow enough that one window in probe_interval at half costs ~0.5% of the throughput.
 * PROBE_SOON, PROBE_MOVED: the baseline is re-probed after PROBE_SOON windows instead of
 *   probe_interval when it looks stale: at once after the warm-up (which may have averaged a
 *   queue: a cold start under load learns its baseline at whatever concurrency it starts
 *   with, so the warm-up never raises the limit, and the first probe follows it), after a
 *   probe that moved it down by 3% or more (halving the concurrency
 *   helped that much: the limit may still sit above the knee, so probe again, which finds the
 *   knee in a few halvings), and when a window ran faster than baseline / tolerance (the
 *   upstream got faster, e.g. after a latency spike it was re-based on).
 * PROBE_GIVE_UP: a probe window that has seen this many times window_min_samples samples
 *   without enough of them started inside the probe limit (the caller did not apply it) closes
 *   without a measurement.
 * The queue term, sqrt(limit): the growth per update while latency is fine (before smoothing),
 *   so the limit climbs by about 0.2 x sqrt(limit) per window: ~1 per window at 20, ~3 at 200;
 *   a fixed term (Gradient2's default is 4) is either slow for large limits or jumpy for small.
 * WIN_SAMPLES_CAP: a window closes at this many samples whatever its age (a clock that stands
 *   still must not let the count wrap).
 * RTT_FLOOR_NS: a sample RTT below 1 us is timing noise; taken as 1 us, which also keeps every
 *   ratio finite.
 */
#define GRADIENT_FLOOR  0.5
#define DROP_RATIO      0.01
#define DECAY_RATIO     2.0
#define DECAY           0.95
#define APP_LIMITED     0.5
#define DOWN_RATE       0.1
#define PROBE_SHARE     0.5
#define PROBE_GIVE_UP   10
#define PROBE_SOON      10
#define PROBE_MOVED     0.97
#define RTT_FLOOR_NS    1000.0
#define WIN_SAMPLES_CAP (1u << 30)

/* Defaults (gradient.h). */
#define DEF_MIN            1
#define DEF_MAX            1000
#define DEF_INITIAL        20
#define DEF_SMOOTHING      0.2
#define DEF_TOLERANCE      1.5
#define DEF_LONG_WINDOW    600
#define DEF_WINDOW_SAMPLES 10
#define DEF_WINDOW_MIN_NS  100000000ull
#define DEF_WINDOW_MAX_NS  1000000000ull
#define DEF_DROP_BACKOFF   0.9
#define DEF_PROBE_INTERVAL 100

void lv_gradient_cfg_default(struct lv_gradient_cfg *c)
{
    c->min_limit = DEF_MIN;
    c->max_limit = DEF_MAX;
    c->initial_limit = DEF_INITIAL;
    c->smoothing = DEF_SMOOTHING;
    c->tolerance = DEF_TOLERANCE;
    c->long_window = DEF_LONG_WINDOW;
    c->window_min_samples = DEF_WINDOW_SAMPLES;
    c->window_min_ns = DEF_WINDOW_MIN_NS;
    c->window_max_ns = DEF_WINDOW_MAX_NS;
    c->drop_backoff = DEF_DROP_BACKOFF;
    c->probe_interval = DEF_PROBE_INTERVAL;
}

static double clampd(double v, double lo, double hi)
{
    if (!(v >= lo)) /* also NaN */
        return lo;
    return v > hi ? hi : v;
}

static void sanitise(struct lv_gradient_cfg *out, const struct lv_gradient_cfg *c)
{
    *out = *c;
    if (out->min_limit == 0)
        out->min_limit = 1;
    if (out->max_limit < out->min_limit)
        out->max_limit = out->min_limit;
    if (out->initial_limit == 0)
        out->initial_limit = out->min_limit;
    if (out->initial_limit < out->min_limit)
        out->initial_limit = out->min_limit;
    if (out->initial_limit > out->max_limit)
        out->initial_limit = out->max_limit;
    if (!(out->smoothing > 0 && out->smoothing <= 1))
        out->smoothing = DEF_SMOOTHING;
    if (!(out->tolerance >= 1 && out->tolerance <= 100))
        out->tolerance = DEF_TOLERANCE;
    if (out->long_window == 0)
        out->long_window = DEF_LONG_WINDOW;
    if (out->window_min_samples == 0)
        out->window_min_samples = 1;
    if (out->window_min_samples > WIN_SAMPLES_CAP / PROBE_GIVE_UP)
        out->window_min_samples = WIN_SAMPLES_CAP / PROBE_GIVE_UP;
    if (out->window_max_ns < out->window_min_ns)
        out->window_max_ns = out->window_min_ns;
    if (!(out->drop_backoff > 0 && out->drop_backoff < 1))
        out->drop_backoff = DEF_DROP_BACKOFF;
    if (out->probe_interval == 0)
        out->probe_interval = DEF_PROBE_INTERVAL;
}

static void window_reset(struct lv_gradient *g, uint64_t now_ns)
{
    g->win_start = now_ns;
    g->win_samples = 0;
    g->win_drops = 0;
    g->win_inflight = 0;
    g->win_rtt_sum = 0;
    g->win_rtt_min = 0;
    g->probe_n = 0;
    g->probe_sum = 0;
}

void lv_gradient_init(struct lv_gradient *g, const struct lv_gradient_cfg *c)
{
    sanitise(&g->c, c);
    g->limit = g->c.initial_limit;
    g->short_rtt = 0;
    g->long_rtt = 0;
    g->baseline_windows = 0;
    g->updates = 0;
    g->win_len = g->c.window_min_ns;
    window_reset(g, 0);
    g->probing = false;
    g->next_probe = 0;
    g->last_probe = 0;
}

void lv_gradient_configure(struct lv_gradient *g, const struct lv_gradient_cfg *c)
{
    sanitise(&g->c, c);
    g->limit = clampd(g->limit, g->c.min_limit, g->c.max_limit);
    if (g->win_len < g->c.window_min_ns || g->win_len > g->c.window_max_ns)
        g->win_len = g->c.window_min_ns;
}

/* Averages one window's short RTT into the baseline (warm-up: plain mean). */
static void baseline_add(struct lv_gradient *g, double rtt)
{
    if (g->baseline_windows < LV_GRADIENT_WARMUP) {
        g->baseline_windows++;
        g->long_rtt += (rtt - g->long_rtt) / g->baseline_windows;
        if (g->baseline_windows == LV_GRADIENT_WARMUP)
            g->next_probe = g->updates;
    } else if (rtt < g->long_rtt) {
        g->long_rtt += (rtt - g->long_rtt) * DOWN_RATE;
    } else {
        double alpha = 2.0 / ((double)g->c.long_window + 1.0);
        g->long_rtt += (rtt - g->long_rtt) * alpha;
    }
}

static void set_limit(struct lv_gradient *g, double v)
{
    g->limit = clampd(v, g->c.min_limit, g->c.max_limit);
}

static double probe_limit(const struct lv_gradient *g)
{
    return clampd(floor(g->limit * PROBE_SHARE), g->c.min_limit, g->c.max_limit);
}

/* The probe window is over: its measurement, if any, is the baseline. The limit is kept. */
static void probe_close(struct lv_gradient *g)
{
    g->probing = false;
    g->last_probe = g->updates;
    g->next_probe = g->updates + g->c.probe_interval;
    if (g->probe_n == 0)
        return;
    double rtt = g->probe_sum / g->probe_n;
    if (rtt < PROBE_MOVED * g->long_rtt)
        g->next_probe = g->updates + PROBE_SOON;
    g->short_rtt = rtt;
    g->long_rtt = rtt;
}

/* The window is complete: one update of the baseline and the limit. */
static void window_close(struct lv_gradient *g)
{
    const struct lv_gradient_cfg *c = &g->c;
    uint32_t n = g->win_samples, drops = g->win_drops, inflight = g->win_inflight;
    uint32_t ok = n - drops;
    g->updates++;
    bool drop_window = drops > 0 && (double)drops >= DROP_RATIO * n;
    if (g->probing) {
        probe_close(g);
        if (drop_window)
            set_limit(g, g->limit * c->drop_backoff);
        return;
    }

    if (drop_window) {
        /* A drop window: back off; its RTTs (cut short or inflated by the failures) teach the
         * baseline nothing. */
        if (ok > 0)
            g->short_rtt = g->win_rtt_sum / ok;
        set_limit(g, g->limit * c->drop_backoff);
        return;
    }
    double shrt = g->win_rtt_sum / ok; /* ok >= 1 here: n >= 1 and drops < n */
    g->short_rtt = shrt;

    if (g->baseline_windows >= LV_GRADIENT_WARMUP && shrt * c->tolerance < g->long_rtt &&
        g->next_probe > g->last_probe + PROBE_SOON)
        g->next_probe = g->last_probe + PROBE_SOON; /* faster than the baseline: re-probe */
    if (g->baseline_windows < LV_GRADIENT_WARMUP || shrt <= c->tolerance * g->long_rtt)
        baseline_add(g, shrt);
    if (g->long_rtt > DECAY_RATIO * shrt)
        g->long_rtt *= DECAY;

    if ((double)inflight < APP_LIMITED * g->limit)
        return;

    double gradient = clampd(c->tolerance * g->long_rtt / shrt, GRADIENT_FLOOR, 1.0);
    double queue = sqrt(g->limit);
    double target = g->limit * gradient + queue;
    /* No growth on a baseline still being learnt (see PROBE_SOON). */
    if (g->baseline_windows >= LV_GRADIENT_WARMUP || target < g->limit)
        set_limit(g, g->limit * (1 - c->smoothing) + target * c->smoothing);

    /* Time for a probe? Only under load: an app-limited route already varies its concurrency. */
    if (g->baseline_windows >= LV_GRADIENT_WARMUP && g->updates >= g->next_probe)
        g->probing = true;
}

void lv_gradient_sample(struct lv_gradient *g, uint64_t now_ns, uint64_t rtt_ns, uint32_t inflight,
                        bool dropped)
{
    if (g->win_samples == 0 || now_ns < g->win_start)
        g->win_start = now_ns;
    g->win_samples++;
    if (inflight > g->win_inflight)
        g->win_inflight = inflight;
    double rtt = (double)rtt_ns;
    if (rtt < RTT_FLOOR_NS)
        rtt = RTT_FLOOR_NS;
    if (dropped) {
        g->win_drops++;
    } else {
        g->win_rtt_sum += rtt;
        if (g->win_rtt_min == 0 || rtt < g->win_rtt_min)
            g->win_rtt_min = rtt;
    }
    bool long_enough = now_ns - g->win_start >= g->win_len || g->win_samples >= WIN_SAMPLES_CAP;
    if (g->probing) {
        if (!dropped && inflight <= probe_limit(g)) {
            g->probe_n++;
            g->probe_sum += rtt;
        }
        if (!long_enough || (g->probe_n < g->c.window_min_samples &&
                             g->win_samples < PROBE_GIVE_UP * g->c.window_min_samples))
            return;
    } else if (g->win_samples < g->c.window_min_samples || !long_enough) {
        return;
    }
    double next =
        clampd(2 * g->win_rtt_min, (double)g->c.window_min_ns, (double)g->c.window_max_ns);
    window_close(g);
    g->win_len = (uint64_t)next;
    window_reset(g, now_ns);
}

uint32_t lv_gradient_limit(const struct lv_gradient *g)
{
    double v = g->probing ? probe_limit(g) : clampd(g->limit, g->c.min_limit, g->c.max_limit);
    return (uint32_t)v;
}

void lv_gradient_stats(const struct lv_gradient *g, double *limit, double *short_rtt_ns,
                       double *long_rtt_ns, uint64_t *updates)
{
    if (limit)
        *limit = g->limit;
    if (short_rtt_ns)
        *short_rtt_ns = g->short_rtt;
    if (long_rtt_ns)
        *long_rtt_ns = g->long_rtt;
    if (updates)
        *updates = g->updates;
}
