/*
 * redis.h: what store/redisstore.c (commands, scripts, replies, operations) and
 * store/redisconn.c (the connection: resolve, connect, reconnect with backoff, the socket
 * watcher) share, and store/ratelimit_redis.c uses for its connection; nothing else
 * includes it.
 */
#ifndef LV_STORE_REDIS_H
#define LV_STORE_REDIS_H

#include <hiredis/async.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/list.h"
#include "store/idem.h"

enum rstate { R_DOWN, R_RESOLVING, R_CONNECTING, R_UP };

#define MAX_ADDRS 8

struct lv__redisconn;

/* What a store using a connection (redisconn.c) is told, and asked. */
struct lv__redisconn_hooks {
    /** Connected: send what waited for the connection. */
    void (*up)(struct lv__redisconn *c);
    /** The attempt or the connection failed: what waited for it fails. */
    void (*down)(struct lv__redisconn *c);
    /** conn_timer fired while the owner is closing. */
    void (*closing_timer)(struct lv__redisconn *c);
    /** The name lookup the connection started (counted in *handles) has finished. */
    void (*handle_closed)(struct lv__redisconn *c);
};

/* One Redis connection on a libuv loop: resolve, connect (every address in turn, with a
 * deadline), reconnect with jittered exponential backoff. Embedded in its store, which sets
 * the fields above the line before lv__redis_conn_init. */
struct lv__redisconn {
    uv_loop_t *loop;
    const struct lv__redisconn_hooks *hooks;
    const char *what;            /* for the log: "idempotency", "rate limit" */
    const bool *dying, *closing; /* the owner's: nothing is started or called back */
    unsigned *handles;           /* the owner's count of open handles and requests */
    uint64_t connect_timeout_ms, backoff_min_ms, backoff_max_ms;
    /* ---- */
    char *host;
    uint16_t port;
    bool numeric; /* host is an IP literal: no resolving */
    enum rstate state;
    redisAsyncContext *ac; /* while connecting or up; ac->data is this connection */
    char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
    int naddrs, addr_idx;  /* the addresses of this attempt, tried in turn */
    uv_timer_t conn_timer; /* connect deadline while connecting, backoff while down */
    uv_getaddrinfo_t gai;
    bool gai_busy;
    unsigned failures; /* consecutive, for the backoff */
    bool down_logged;
    uint64_t rng;
};

struct rstore {
    struct lv_idem base;
    struct lv_idem_redis_opts o;
    struct lv__redisconn c;
    char *prefix;
    size_t plen;
    uv_timer_t tick; /* command deadlines and polls, while anything is pending */
    char id[17];     /* this store's random part of lock tokens */
    uint64_t token_seq;
    struct lv_dlist pending; /* begin ops: queued until connected, or awaiting a reply */
    struct lv_dlist waiters; /* wait ops */
    unsigned outstanding;    /* commands handed to hiredis and not yet called back */
    uint64_t close_deadline; /* closing: the last command sent gets until then */
};

struct rcmd;

struct rop {
    struct lv_idem_op base;
    struct rcmd *cmd;      /* outstanding command, or (unsent) queued until connected */
    bool unsent;           /* cmd is still ours, not hiredis' */
    uint64_t cmd_deadline; /* of cmd */
    uint64_t deadline;     /* wait: the waiter's timeout */
    uint64_t next_poll;    /* wait */
    size_t rklen;
    char rkey[]; /* wait: prefixed key */
};

static inline uint64_t lv__redis_now(struct rstore *s)
{
    return uv_now(s->base.loop);
}

static inline struct rstore *lv__rstore_of(struct lv__redisconn *c)
{
    return (struct rstore *)(void *)((char *)c - offsetof(struct rstore, c));
}

static inline struct rop *lv__rop_of(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct rop, base.link);
}

/* redisconn.c */

/** Sets up the connection (the fields above the line are set) and its conn_timer (unref'd,
 *  counted in *handles); call lv__redis_connect to start. conn_timer.data is `c`. */
void lv__redis_conn_init(struct lv__redisconn *c, const char *host, uint16_t port, uint64_t seed);
/** Connected, and the connection takes commands. */
bool lv__redis_can_send(struct lv__redisconn *c);
/** A connection attempt is under way: new work waits for it rather than failing. */
bool lv__redis_connecting(struct lv__redisconn *c);
/** Starts a connection attempt (resolving first unless the host is an IP literal). */
void lv__redis_connect(struct lv__redisconn *c);
/** Frees the connection from outside hiredis' callbacks and goes down (or tries the next
 *  address); its pending commands are called back with NULL. */
void lv__redis_drop(struct lv__redisconn *c, const char *why);
/** conn_timer: connect deadline, backoff, next address; while closing, the drain. */
void lv__redis_on_conn_timer(uv_timer_t *t);
/** The owner closes: frees a connection still connecting (nothing was sent on it), cancels a
 *  lookup, stops conn_timer. A connection that is up stays for the replies. */
void lv__redis_conn_stop(struct lv__redisconn *c);
/** The owner is destroyed: frees the connection (its pending commands are called back with
 *  NULL), cancels a lookup, closes conn_timer with `closed` (whose data is conn_timer.data). */
void lv__redis_conn_destroy(struct lv__redisconn *c, uv_close_cb closed);

/* redisstore.c */

/** Answers a pending op UNAVAILABLE and lets go of its command. */
void lv__redis_fail_op(struct rop *op);

#endif
