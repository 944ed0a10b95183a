/*
 * idem: the idempotency-key stores (README, "Resilience policies") behind one asynchronous
 * interface, and the request fingerprint they compare.
 *
 * A store maps a key (already namespaced by the caller: route, credential, client key) to
 * either an in-flight lock, held by one request for a lease, or a completed response kept for
 * a ttl. Two kinds: the memory store (hash table with a byte cap, one process) and the Redis
 * store (hiredis on the libuv loop; several gateways sharing one Redis act as one). The
 * request path (proxy/request.c) asks with lv_idem_begin, and the request that got the lock
 * ends it exactly once with lv_idem_complete or lv_idem_release.
 *
 * Lifetime: a store is reference counted. lv_idem_*_create returns it with one reference;
 * every owner (a configuration generation, a request that starts an operation or holds a lock)
 * holds one with lv_idem_ref and gives it back with lv_idem_unref. Rule: only a holder of a
 * reference may call lv_idem_begin or lv_idem_wait. When the last reference goes the store
 * closes: lookups still pending are answered UNAVAILABLE and waits are answered `changed =
 * false` (as if they had run out), on later loop turns as always; locks ended while it closes
 * are still carried out; the Redis store lets the commands already sent (complete, release, a
 * begin's lock given back) get their replies, up to command_timeout_ms, and the notify forms
 * are answered from those replies. Then it closes its handles and frees itself once the last
 * lock has ended. Nothing ever runs on freed memory: hiredis is freed from a timer, never from
 * inside one of its callbacks, and every callback of ours finds the store still allocated.
 *
 * Every callback runs later from the loop, never inside the call that started it, and never
 * after lv_idem_cancel. Everything here runs on the loop thread.
 */
#ifndef LV_IDEM_H
#define LV_IDEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/list.h"

/* ---- fingerprint: SHA-256 over method, target and the body, streamed */

#define LV_IDEM_FP_LEN 32

struct evp_md_ctx_st;

/* Streams the body digest; init, update per body chunk, final. */
struct lv_idem_fp {
    struct evp_md_ctx_st *md;     /* body digest in progress; NULL once final or disposed */
    uint8_t head[LV_IDEM_FP_LEN]; /* digest of method and target, framed */
};

/** Starts a fingerprint of `method` and `target` (the request target, query included). */
void lv_idem_fp_init(struct lv_idem_fp *fp, const char *method, size_t mlen, const char *target,
                     size_t tlen);
/** Feeds the next body chunk (any split gives the same result). */
void lv_idem_fp_update(struct lv_idem_fp *fp, const void *chunk, size_t n);
/**
 * Writes the fingerprint: SHA-256("levee-idem-1" 0 head 0 SHA-256(body)), where head is
 * SHA-256 of the length-framed method and target. Frees the digest state.
 */
void lv_idem_fp_final(struct lv_idem_fp *fp, uint8_t out[LV_IDEM_FP_LEN]);
/** Frees the digest state of a fingerprint abandoned before final (no-op after final). */
void lv_idem_fp_dispose(struct lv_idem_fp *fp);
/** One-shot form of init + update(body) + final. */
void lv_idem_fingerprint(const char *method, size_t mlen, const char *target, size_t tlen,
                         const void *body, size_t blen, uint8_t out[LV_IDEM_FP_LEN]);

/* ---- stores */

/*
 * The store handle is `struct lv_idem` (not lv_idem_store: script/config.h has an
 * `enum lv_idem_store`, and C puts struct and enum tags in one namespace).
 */
struct lv_idem;
struct lv_idem_op;
struct lv_idem_lock;

enum lv_idem_result {
    LV_IDEM_ACQUIRED,    /* the caller holds the lock: forward, then complete or release */
    LV_IDEM_REPLAY,      /* completed with the same fingerprint: `stored` is the response */
    LV_IDEM_IN_FLIGHT,   /* locked by another request with the same fingerprint: 409 or wait */
    LV_IDEM_MISMATCH,    /* stored or in flight with another fingerprint: 422 */
    LV_IDEM_FULL,        /* memory store at max_memory: 503 idempotency-store-full */
    LV_IDEM_UNAVAILABLE, /* Redis down, timed out or answering garbage: on_store_error */
};

/** "acquired", "replay", "in-flight", "mismatch", "full", "unavailable". */
const char *lv_idem_result_name(enum lv_idem_result r);

/* A stored response. `head` holds the end-to-end header lines, "Name: value\r\n" each. */
struct lv_idem_response {
    int status;
    const char *head;
    size_t head_len;
    const char *body;
    size_t body_len;
};

/**
 * Result of lv_idem_begin. `stored` is non-NULL for REPLAY only and valid during the call.
 * `lock` is non-NULL for ACQUIRED only: the callee now owns it and must end it exactly once
 * with lv_idem_complete or lv_idem_release.
 */
typedef void (*lv_idem_cb)(enum lv_idem_result r, const struct lv_idem_response *stored,
                           struct lv_idem_lock *lock, void *arg);
/** Result of lv_idem_wait: `changed` when the key left the in-flight state, false on timeout. */
typedef void (*lv_idem_wait_cb)(bool changed, void *arg);

/** Memory store default cap when max_memory is 0. */
#define LV_IDEM_DEFAULT_MAX_MEMORY (64u * 1024 * 1024)

/**
 * Creates a memory store on `loop` that holds at most `max_memory` bytes of keys, responses
 * and per-entry overhead (0: LV_IDEM_DEFAULT_MAX_MEMORY). Its timers do not keep the loop
 * alive.
 */
struct lv_idem *lv_idem_memory_create(uv_loop_t *loop, size_t max_memory);

/**
 * Replaces the memory store's clock (milliseconds, default uv_now) for tests; `now` must never
 * go backwards. After moving a fake clock, call lv_idem_memory_sweep.
 */
void lv_idem_memory_set_clock(struct lv_idem *s, uint64_t (*now)(void *arg), void *arg);

/**
 * Drops the expired entries (waking their waiters) and times out the waits that are due, as of
 * the store's clock. The store's own timer calls it; tests with a fake clock call it directly.
 */
void lv_idem_memory_sweep(struct lv_idem *s);

/* Redis store tuning; zero fields take the defaults shown. */
struct lv_idem_redis_opts {
    uint64_t connect_timeout_ms; /* 1000: DNS + TCP connect */
    uint64_t command_timeout_ms; /* 1000: a reply later than this drops the connection */
    uint64_t poll_ms;            /* 25: how often a waiter looks at its key */
    uint64_t backoff_min_ms;     /* 50: first reconnect delay, doubled per failure, jittered */
    uint64_t backoff_max_ms;     /* 2000 */
};

/**
 * Creates a Redis store that keeps keys under `prefix` (copied) on host:port (a name is
 * resolved with uv_getaddrinfo, never blocking). It connects at once and reconnects with
 * backoff whenever the connection drops; while it has no connection, begin answers
 * UNAVAILABLE at once. `opts` may be NULL. Its timers do not keep the loop alive.
 */
struct lv_idem *lv_idem_redis_create(uv_loop_t *loop, const char *host, uint16_t port,
                                     const char *prefix, const struct lv_idem_redis_opts *opts);

struct lv_inbox;

/**
 * Creates a store on `loop` (the calling thread's) that forwards every operation to `target`, a
 * store living on another loop, through that loop's inbox `target_inbox`; answers come back
 * through `own_inbox` (this loop's) and are delivered here as from any store. Its stats say the
 * target's kind, entries = locks held through this store, connected = true.
 *
 * The caller hands over one reference to `target`, taken with lv_idem_ref on target's loop
 * (before sending this thread the store): the remote store gives it back on target's loop once
 * it has closed and its last lock has ended. While a remote store exists, target's loop stays
 * alive; while one of its operations awaits an answer, `loop` stays alive. So each thread
 * runs its loop until it ends before closing its inbox, and nobody destroys `target` while a
 * remote store still uses it (unref it instead).
 */
struct lv_idem *lv_idem_remote_create(uv_loop_t *loop, struct lv_inbox *own_inbox,
                                      struct lv_idem *target, struct lv_inbox *target_inbox);

/** Adds a reference to `s` (which must still have one) and returns `s`. */
struct lv_idem *lv_idem_ref(struct lv_idem *s);

/**
 * Gives back a reference; the last one closes the store as described at the top (pending
 * lookups UNAVAILABLE, waits `false`, commands already sent finish, then the store frees
 * itself). NULL is a no-op.
 */
void lv_idem_unref(struct lv_idem *s);

/**
 * Destroys a store at once, whatever its references (for process shutdown): operations not yet
 * called back are dropped (their callbacks never run, their handles become invalid), Redis
 * commands not yet answered are abandoned, and begin or wait from then on (say, from a
 * callback) return NULL and never call back. Locks still held stay valid: ending them after
 * destroy does nothing in the store and frees them. The memory is freed once the loop has
 * closed the store's handles and the last lock has ended. It ends every reference: nobody may
 * call lv_idem_unref on the store afterwards. NULL is a no-op.
 */
void lv_idem_destroy(struct lv_idem *s);

/**
 * Asks for `key` (borrowed, any bytes) with fingerprint `fp`. On ACQUIRED the key is locked as
 * in flight for `lease_ms` (the request's remaining deadline): if the lock is not ended by
 * then, the key frees itself. `cb` runs later from the loop. Returns a handle for
 * lv_idem_cancel, valid until the callback starts.
 */
struct lv_idem_op *lv_idem_begin(struct lv_idem *s, const char *key, size_t klen,
                                 const uint8_t fp[LV_IDEM_FP_LEN], uint64_t lease_ms, lv_idem_cb cb,
                                 void *arg);

/**
 * on_conflict = "wait": `cb(true)` once `key` is no longer in flight (completed, released,
 * lease over, or store trouble; then call lv_idem_begin again), or `cb(false)` after
 * `timeout_ms`. Memory: a waiter list on the entry. Redis: each waiter polls its key with
 * GETRANGE every poll_ms (no keyspace notifications to configure on the server).
 */
struct lv_idem_op *lv_idem_wait(struct lv_idem *s, const char *key, size_t klen,
                                uint64_t timeout_ms, lv_idem_wait_cb cb, void *arg);

/** Cancels a pending begin or wait: its callback will not run. NULL is a no-op. */
void lv_idem_cancel(struct lv_idem_op *op);

/**
 * Lock holder's success: stores `resp` (copied) under the key for `ttl_ms`, replacing the lock,
 * and wakes the waiters. Nothing is stored if the lock is no longer ours (lease over and
 * taken by another), if ttl_ms is 0, or if the memory store is full (the key is released).
 * Ends the lock. NULL is a no-op.
 */
void lv_idem_complete(struct lv_idem_lock *lock, const struct lv_idem_response *resp,
                      uint64_t ttl_ms);

/**
 * lv_idem_complete, then `cb(true, arg)` once the store holds the response, so that a duplicate
 * asking any gateway now gets the replay; `cb(false, arg)` if it could not be stored (lock
 * lapsed, store full, Redis down or past command_timeout_ms). Lets the caller hold the end of
 * its response until then: with Redis, complete is otherwise not ordered with another
 * gateway's begin. Returns a handle for lv_idem_cancel (which drops only the callback), or
 * NULL if `lock` is NULL or its store was destroyed (cb never runs).
 */
struct lv_idem_op *lv_idem_complete_notify(struct lv_idem_lock *lock,
                                           const struct lv_idem_response *resp, uint64_t ttl_ms,
                                           lv_idem_wait_cb cb, void *arg);

/**
 * Lock holder's failure (upstream 5xx, gateway error, response over max_body, client gone):
 * deletes the key if the lock is still ours, so the client may retry with it. Ends the lock.
 * NULL is a no-op.
 */
void lv_idem_release(struct lv_idem_lock *lock);

/**
 * lv_idem_release, then `cb(true, arg)` once the store has confirmed that the lock is gone, so
 * that a retry on any gateway can take the key; `cb(false, arg)` if the store could not be
 * reached (the key then frees itself when the lease ends). With Redis, release is otherwise
 * not ordered with another gateway's begin. Returns a handle for lv_idem_cancel (which drops
 * only the callback), or NULL if `lock` is NULL or its store was destroyed (cb never runs).
 */
struct lv_idem_op *lv_idem_release_notify(struct lv_idem_lock *lock, lv_idem_wait_cb cb, void *arg);

struct lv_idem_stats {
    const char *kind; /* "memory" or "redis" */
    uint64_t entries; /* memory: keys held; redis: locks held by this process */
    uint64_t bytes;   /* memory: accounted bytes; redis: 0 */
    uint64_t max_bytes;
    bool connected; /* memory: always true */
};

void lv_idem_stats(struct lv_idem *s, struct lv_idem_stats *out);

/* ---- implementation interface: for memstore.c and redisstore.c only */

struct lv__idem_vt {
    const char *kind;
    struct lv_idem_op *(*begin)(struct lv_idem *s, const char *key, size_t klen,
                                const uint8_t fp[LV_IDEM_FP_LEN], uint64_t lease_ms);
    struct lv_idem_op *(*wait)(struct lv_idem *s, const char *key, size_t klen,
                               uint64_t timeout_ms);
    /* Called right before a begin op's callback, to decide the result then (optional). */
    void (*resolve)(struct lv_idem_op *op);
    /* Unlinks a pending op from the store's own structures (not from the ready list). */
    void (*detach)(struct lv_idem_op *op);
    /* Ends the lock; with `notify`, returns an op whose `changed` says "stored". */
    struct lv_idem_op *(*complete)(struct lv_idem_lock *lock, const struct lv_idem_response *resp,
                                   uint64_t ttl_ms, bool notify);
    /* Ends the lock; with `notify`, returns an op whose `changed` says "confirmed". */
    struct lv_idem_op *(*release)(struct lv_idem_lock *lock, bool notify);
    void (*stats)(struct lv_idem *s, struct lv_idem_stats *out);
    /* The last reference went: answer the pending begins (UNAVAILABLE) and waits (false), let
     * what was sent finish, and call lv__idem_drained once nothing is outstanding. */
    void (*close)(struct lv_idem *s);
    /* Drops the store's own pending ops and starts closing its handles. */
    void (*destroy)(struct lv_idem *s);
    /* Frees the store once nothing refers to it. */
    void (*free)(struct lv_idem *s);
};

struct lv_idem {
    const struct lv__idem_vt *vt;
    uv_loop_t *loop;
    uv_timer_t kick;       /* delivers ready ops on the next loop turn */
    struct lv_dlist ready; /* ops whose callback is due */
    unsigned handles;      /* open handles and requests; freed at 0 with no locks */
    unsigned locks;
    unsigned refs;   /* owners (lv_idem_ref/unref); the store closes at 0 */
    bool closing;    /* refs reached 0: draining, then destroyed */
    bool drained;    /* closing, and the store reported nothing outstanding */
    bool delivering; /* on_kick is calling back */
    bool dying;      /* destroyed: handles closing, nothing is called back any more */
};

struct lv_idem_op {
    struct lv_dlist link; /* ready list, or the store's pending or waiter list */
    struct lv_idem *store;
    bool is_wait;
    bool in_ready;
    lv_idem_cb cb;
    lv_idem_wait_cb wait_cb;
    void *arg;
    enum lv_idem_result result;
    bool changed;
    struct lv_idem_response stored; /* REPLAY */
    struct lv_idem_lock *lock;      /* ACQUIRED, handed over on delivery */
    char *owned;                    /* storage behind `stored`, freed after delivery */
};

struct lv_idem_lock {
    struct lv_idem *store;
};

/** Sets up the common part; the store counts kick as one handle. */
void lv__idem_init(struct lv_idem *s, const struct lv__idem_vt *vt, uv_loop_t *loop);
/** Queues `op` (result already set, or resolved by vt->resolve) for delivery. */
void lv__idem_post(struct lv_idem_op *op);
/** Frees an op and whatever it owns (an undelivered lock is released). */
void lv__idem_op_free(struct lv_idem_op *op);
/** A handle or request of the store finished closing; frees the store when nothing is left. */
void lv__idem_handle_closed(struct lv_idem *s);
/** A closing store has nothing outstanding: it is destroyed once its answers are delivered. */
void lv__idem_drained(struct lv_idem *s);
/** Ends a lock's count on its store (after the store's own bookkeeping). */
void lv__idem_lock_ended(struct lv_idem *s);

#endif
