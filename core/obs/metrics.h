/*
 * metrics: a registry of Prometheus metric families (counter, gauge, histogram) and their
 * labelled series, rendered on demand in the text exposition format 0.0.4.
 *
 * One registry is shared by all the worker threads (no global state but the calling thread's
 * shard number). Its values are split into shards, one per worker: each thread picks its
 * shard once with lv_metrics_bind_thread(), every update writes only that shard, and readers
 * (lv_metric_value() and the like, lv_metrics_render()) return the sum over all shards.
 * Shards never share a cache line, and as each has a single writer an update is a relaxed
 * atomic load and store (plain moves on x86-64): no lock, no read-modify-write instruction.
 * The rule this rests on: exactly one thread writes each shard at a time (threads that never
 * bound one write shard 0).
 *
 * The structure (families, series, their lookup tables, the on-render callbacks) is guarded
 * by a mutex inside the registry, so any thread may register families, look series up,
 * remove or render. Families and series are allocated when first asked for and freed only by
 * lv_metrics_destroy(), so the request path looks a series up once, caches the pointer, and
 * from then on updates it without allocation, lookup or lock. Removing a series (a route gone
 * after a reload) only hides it from the output; a request still running under the old
 * configuration may keep updating it, and asking for the same labels again brings it back
 * with its values.
 *
 * Values that other modules already keep (breaker state, pool sizes, config generation) are
 * copied in by an on-render callback just before each render, instead of being mirrored on
 * every change.
 *
 * Gauges: a gauge is either set (lv_metric_set(), from any thread: the last value set is the
 * value) or added to from any threads (lv_metric_add(), the shards are summed). Mixed on one
 * thread, set and add behave as they always did (a set replaces what that thread added);
 * what other threads add stays summed on top of the value set.
 */
#ifndef LV_OBS_METRICS_H
#define LV_OBS_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

struct lv_metrics;
struct lv_metric_family;
struct lv_metric;

enum lv_metric_type { LV_METRIC_COUNTER, LV_METRIC_GAUGE, LV_METRIC_HISTOGRAM };

/* Most labels a family may have; label names are few and fixed by the code, not by users. */
#define LV_METRIC_MAX_LABELS 8
/* Most finite buckets a histogram may have (the +Inf bucket is implicit). */
#define LV_METRIC_MAX_BUCKETS 32

/** Latency buckets in seconds used when a histogram is registered with no buckets:
 * .001 .0025 .005 .01 .025 .05 .1 .25 .5 1 2.5 5 10 (LV_METRIC_DEFAULT_NBUCKETS of them). */
extern const double lv_metric_default_buckets[];
#define LV_METRIC_DEFAULT_NBUCKETS 13

/** An empty registry with one shard (for a registry used by one thread).
 * Free it with lv_metrics_destroy(). */
struct lv_metrics *lv_metrics_create(void);

/** An empty registry with `nshards` value shards, 1 to 4096 (one per worker thread; aborts
 * outside that range). Free it with lv_metrics_destroy(). */
struct lv_metrics *lv_metrics_create_sharded(unsigned nshards);

/**
 * Makes the calling thread write shard `shard` of every registry from now on (the number is
 * kept per thread, not per registry; a thread that never calls this writes shard 0). Call it
 * once when a worker thread starts, with a number no other live thread uses. An update or
 * lv_metric_set() on a registry with `shard` or fewer shards aborts: a programming error,
 * like a shard shared by two threads (which would lose updates).
 */
void lv_metrics_bind_thread(unsigned shard);

/** Frees the registry with all its families and series; every pointer it handed out dies.
 * No other thread may use it any more. */
void lv_metrics_destroy(struct lv_metrics *m);

/**
 * Registers a family, or returns the one already registered under `name` (so a reload may
 * register again); the family lives as long as the registry.
 *
 * `name` must match [a-zA-Z_:][a-zA-Z0-9_:]*, each label name [a-zA-Z_][a-zA-Z0-9_]* without a
 * leading "__" ("le" is also reserved in a histogram); `label_names` is NULL-terminated (NULL =
 * no labels), at most LV_METRIC_MAX_LABELS. For a histogram, `buckets` holds `nbuckets` finite
 * upper bounds in strictly ascending order (a trailing +Inf is dropped: it is always there);
 * NULL selects lv_metric_default_buckets. Other types pass NULL, 0. All strings are copied.
 *
 * Aborts on an invalid name, label or bucket list, and on re-registering a name with another
 * type, label list or bucket list: these are programming errors, not runtime conditions.
 * A family without labels has its single series from the start, so it renders as 0.
 */
struct lv_metric_family *lv_metrics_family(struct lv_metrics *m, const char *name, const char *help,
                                           enum lv_metric_type type, const char *const *label_names,
                                           const double *buckets, size_t nbuckets);

/**
 * The series of `fam` with these label values, created on first use (values copied).
 * `label_values` holds one string per label name of the family, in the same order (NULL is
 * allowed for a family without labels; a NULL value counts as ""). The pointer stays valid
 * until lv_metrics_destroy(), even across lv_metric_family_remove(). Hash lookup: cheap, but
 * meant to be cached by the caller rather than repeated per request.
 */
struct lv_metric *lv_metric_series(struct lv_metric_family *fam, const char *const *label_values);

/* The updates below (add, set, observe) take no lock and write only the calling thread's
 * shard (lv_metrics_bind_thread()); any thread may call them on any series. */

/** Adds `v` to a counter or gauge (to the calling thread's shard). A counter ignores a
 * negative or NaN `v` (counters only go up). Aborts on a histogram. */
void lv_metric_add(struct lv_metric *s, double v);

/**
 * Sets a gauge, or a counter mirrored from a count kept elsewhere (from an on-render
 * callback). Aborts on a histogram. The value is kept once for the whole registry, not per
 * shard, and the calling thread's own shard of the series is zeroed (what it added before is
 * replaced, as on one thread); other shards are left alone and stay summed on top. So a gauge
 * that is only ever set reads exactly the last value set, whichever threads set it (renders,
 * and so the on-render callbacks, may run on any thread); see the header comment for mixing
 * set and add.
 */
void lv_metric_set(struct lv_metric *s, double v);
/** Sets only the calling thread's shard of a gauge: each worker publishes its own part of a
 *  total (its client connections, its pools) and a read sums the parts. A series takes either
 *  this or lv_metric_set, not both. */
void lv_metric_set_own(struct lv_metric *s, double v);

/** Records one observation in a histogram (NaN is ignored), in the calling thread's shard.
 * Aborts on another type. */
void lv_metric_observe(struct lv_metric *s, double v);

/* The readers below sum all the shards (each one read atomically; a series updated meanwhile
 * reads as some mix of before and after). They take NULL as a series not made yet (made on
 * first use) and read 0. */

/** The current value of a counter or gauge; for a histogram, the number of observations. */
double lv_metric_value(const struct lv_metric *s);

/** A histogram's sum of observations (0 for other types). */
double lv_metric_sum(const struct lv_metric *s);

/** A histogram's count in bucket `i` alone (not cumulative); i == nbuckets is the +Inf
 * overflow bucket. 0 when out of range or not a histogram. */
uint64_t lv_metric_bucket(const struct lv_metric *s, size_t i);

/**
 * Appends the whole registry to `out` in the Prometheus text format 0.0.4: per family, in
 * registration order, "# HELP" and "# TYPE" then its visible series in creation order.
 * Histograms render cumulative name_bucket{...,le="..."} lines ending with le="+Inf", then
 * name_sum and name_count. Label values are escaped (backslash, double quote, newline), as is
 * the help text (backslash, newline). A family whose series were all removed (or never
 * created) is left out. Runs the on-render callbacks first, in registration order, on the
 * calling thread. Renders from several threads run one after the other. A histogram's
 * _count is the sum of the buckets it printed, so it always equals the +Inf bucket.
 */
void lv_metrics_render(struct lv_metrics *m, struct lv_buf *out);

/**
 * Calls `cb(m, arg)` at the start of every lv_metrics_render(), so values kept elsewhere are
 * copied in with lv_metric_set(). `arg` is borrowed: keep it alive, or unregister it first.
 * Callbacks run under the registry's render lock but not its structure lock: they may look
 * series up, register families and (un)register callbacks, but must not wait for another
 * thread that is rendering or (un)registering a callback on the same registry.
 */
void lv_metrics_on_render(struct lv_metrics *m, void (*cb)(struct lv_metrics *, void *), void *arg);

/** Unregisters the callback registered with the same `cb` and `arg`; no-op if none. Once it
 * returns, no render calls it any more (a render under way on another thread finishes
 * first). */
void lv_metrics_off_render(struct lv_metrics *m, void (*cb)(struct lv_metrics *, void *),
                           void *arg);

/**
 * Hides from the output every series of `fam` whose label `label_name` equals `value`
 * (e.g. route="payments" after the route was removed by a reload). The series are kept, and
 * their pointers stay valid; lv_metric_series() with the same labels makes one visible again
 * with the values it had. Aborts if the family has no label `label_name`.
 */
void lv_metric_family_remove(struct lv_metric_family *fam, const char *label_name,
                             const char *value);

/** The family registered under `name`, or NULL. */
struct lv_metric_family *lv_metrics_find(struct lv_metrics *m, const char *name);

#endif
