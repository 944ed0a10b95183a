/*
 * ratelimit_redis: the Redis store of a route's rate limit (README, "Resilience policies":
 * rate_limit.store = { redis = "host:port", prefix = ... }). One object per worker loop and
 * Redis address; several gateways sharing one Redis share each key's state, so together they
 * stay within the limit (plus one burst).
 *
 * Each check is one round trip: one script (EVALSHA, EVAL once the server answers NOSCRIPT)
 * that runs the Generic Cell Rate Algorithm atomically on the key's theoretical arrival time
 * (TAT, microseconds) with the server's own clock (TIME): gateways with skewed clocks agree,
 * as no local time is ever sent. With I = ceil(per / rate) and tau = burst x I, a request at
 * `now` passes when max(TAT, now) - now <= tau, and then TAT = max(TAT, now) + I, stored with
 * PX = TAT - now (a key that expires is in exactly the state of a new key). A new key passes
 * burst + 1 requests at once, then one every I.
 *
 * The key is prefix + route + ":" + key (binary-safe). The connection is the project's Redis
 * connection (store/redisconn.c, shared with the idempotency store): resolve, connect with a
 * deadline, reconnect with jittered exponential backoff; nothing blocks the loop.
 *
 * Errors: rc -1 ("store unavailable") when Redis is down or backing off (answered at once),
 * when the command is not answered within command_timeout_ms (the connection is then dropped,
 * as its pipeline is stuck, and reconnected with backoff), on an error reply, or when more
 * than max_pending checks are waiting. The caller applies on_store_error.
 *
 * Not thread-safe: every call on the loop's thread.
 */
#ifndef LV_STORE_RATELIMIT_REDIS_H
#define LV_STORE_RATELIMIT_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct lv_rate_redis;
struct lv_rate_op;

/* All 0 take the default. */
struct lv_rate_redis_opts {
    uint64_t command_timeout_ms; /* a check's deadline, queued or sent (default 100) */
    uint64_t connect_timeout_ms; /* default 1000 */
    uint64_t backoff_min_ms;     /* reconnect backoff (default 50 .. 2000, jittered) */
    uint64_t backoff_max_ms;
    unsigned max_pending; /* checks waiting at once; past it, rc -1 (default 10000) */
};

struct lv_rate_answer {
    int rc; /* 0: answered; -1: store unavailable (down, timeout, error reply, overload) */
    bool allowed;
    uint64_t retry_after_us; /* refused: until one request would pass (> 0); allowed: 0 */
    uint64_t reset_us;       /* until the key is back to a new key's state */
    uint32_t remaining;      /* requests that would pass right now, after this one */
};

typedef void (*lv_rate_cb)(void *arg, const struct lv_rate_answer *a);

/**
 * A store on `loop` for the Redis at host:port (a name is resolved with uv_getaddrinfo);
 * starts connecting at once. `prefix` may be NULL (""); `opts` may be NULL.
 */
struct lv_rate_redis *lv_rate_redis_new(uv_loop_t *loop, const char *host, uint16_t port,
                                        const char *prefix, const struct lv_rate_redis_opts *opts);

/**
 * Checks one request of `key` (key_len bytes, binary-safe) of `route` with the limit rate per
 * per_us (rate 0 and per_us 0 are taken as 1) plus burst. `cb` is called exactly once with the
 * answer, unless the op is cancelled or the store closed first, and ALWAYS later from the
 * loop, never from inside this call (a down store's rc -1 too). The op is freed after its
 * callback returns. Never NULL.
 */
struct lv_rate_op *lv_rate_redis_check(struct lv_rate_redis *s, const char *route, const char *key,
                                       size_t key_len, uint32_t rate, uint64_t per_us,
                                       uint32_t burst, lv_rate_cb cb, void *arg);

/** Cancels an op whose callback has not run: it never will. Frees the op. */
void lv_rate_redis_cancel(struct lv_rate_op *op);

/** True while connected. */
bool lv_rate_redis_connected(const struct lv_rate_redis *s);

/**
 * Closes the store: every op not yet called back is cancelled (its callback never runs; the
 * op handles become invalid), the connection is freed, and the store frees itself once its
 * handles have closed (run the loop). May be called from a check's callback.
 */
void lv_rate_redis_close(struct lv_rate_redis *s);

/** The script, for tests and documentation. */
extern const char lv_rate_redis_script[];

#endif
