/*
 * ratelimit: the memory store of a route's rate limit (README, "Resilience policies"), and the
 * rate-limit response header fields.
 *
 * The store maps keys to GCRA states (gcra.h), shared by every worker thread: the check and the
 * update of a key happen under one lock, so the limit is exact across workers (no per-worker
 * split). One store per route (the caller keeps it by route name, across reloads); the GCRA
 * parameters are an argument of each check, never kept, so a reload may change them.
 *
 * Keys: any byte string, of any length (the caller builds it, e.g. route name + key). The store
 * keeps a 128-bit keyed hash of it (SipHash-2-4-128, a random key per store), not the bytes: two
 * distinct keys share a state only if their hashes collide, which nobody can arrange without the
 * key and which happens by chance with probability about n^2 / 2^129 for n keys.
 *
 * Bounded: 64 shards (fewer for small stores, at least 64 keys each), each a mutex and an open-
 * addressing table (linear probing, deletion by backward shift, no tombstones) of 24-byte slots;
 * shard i holds at most its share of max_keys (the shares sum to max_keys), in a table of at
 * most 8/3 slots per key: at most 64 bytes per key, plus 128 bytes per shard. A key whose state
 * has expired (lv_gcra_expired) is a new key, so dropping it loses nothing: when a new key finds
 * its shard at its share, the shard's expired keys are dropped (one pass over the shard, done
 * again only once the earliest state it kept may have expired: no scan per request while
 * full); if none had, the answer is LV_RATEMEM_FULL and the key is not counted. A shard may fill
 * before the whole store (about 95% of max_keys at 64 shards of 1,500 keys). A sweeping hand
 * also drops a couple of expired states per check, so a store under churn stays mostly live.
 *
 * The clock: now_ns is uv_hrtime() (one monotonic clock for all threads). Threads' readings may
 * differ by the time a request takes to get here; GCRA takes max(TAT, now), so an older reading
 * never grants more than a newer one would, except when another thread's later reading has just
 * dropped the key as expired (a gain bounded by that skew).
 */
#ifndef LV_RATELIMIT_H
#define LV_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "policy/gcra.h"

struct lv_ratemem;

enum lv_ratemem_rc {
    LV_RATEMEM_OK,   /* *out holds the decision (allowed or not) */
    LV_RATEMEM_FULL, /* the key is new and its shard is full of live keys: apply on_store_error */
};

/** A store of at most max_keys keys (0 is taken as 1). Aborts on out-of-memory. */
struct lv_ratemem *lv_ratemem_new(size_t max_keys);
void lv_ratemem_free(struct lv_ratemem *m);

/**
 * Checks one request of `key` at now_ns under g (lv_gcra_check), atomically: concurrent checks
 * of one key from any threads behave as if made one after the other. Thread-safe.
 */
enum lv_ratemem_rc lv_ratemem_check(struct lv_ratemem *m, const char *key, size_t len,
                                    const struct lv_gcra *g, uint64_t now_ns,
                                    struct lv_gcra_result *out);

/** Keys held (live or expired but not yet dropped). Thread-safe; for /status and metrics. */
size_t lv_ratemem_keys(struct lv_ratemem *m);

/** The bound given at creation (after the 0 -> 1 rule). */
size_t lv_ratemem_max_keys(const struct lv_ratemem *m);

/**
 * Appends the response header fields of draft-ietf-httpapi-ratelimit-headers-08 (Structured
 * Field lists of one item, the policy "default"), each as "Name: value\r\n":
 *
 *   RateLimit-Policy: "default";q=<quota>;w=<window>
 *   RateLimit: "default";r=<remaining>;t=<reset>
 *
 * w is `per` in whole seconds, rounded up, at least 1 (the draft's window is whole seconds); q
 * is the most requests GCRA lets through in any w seconds: burst + ceil(w / I), which is
 * rate + burst when per is whole seconds (burst + 1 at once and the rest spaced by I: see
 * gcra.h). r is r->remaining, what would pass right now; t is r->reset_ns in whole seconds,
 * rounded up: when the whole quota is available again. A refused request has r=0 and t no
 * earlier than its Retry-After (lv_gcra_retry_after_s, the caller's field). Integers are capped
 * at 999999999999999 (the largest a Structured Field Integer holds).
 */
void lv_ratelimit_headers(struct lv_buf *out, const struct lv_gcra *g,
                          const struct lv_gcra_result *r);

#endif
