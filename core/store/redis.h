/*
 * redis.h: what store/redisstore.c (commands, scripts, replies, operations) and
 * store/redisconn.c (the connection: resolve, connect, reconnect with backoff, the socket
 * watcher) share, and nothing else includes.
 */
#ifndef LV_STORE_REDIS_H
#define LV_STORE_REDIS_H

#include <hiredis/async.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/list.h"
#include "store/idem.h"

enum rstate { R_DOWN, R_RESOLVING, R_CONNECTING, R_UP };

#define MAX_ADDRS 8

struct rstore {
    struct lv_idem base;
    struct lv_idem_redis_opts o;
    char *host;
    uint16_t port;
    bool numeric; /* host is an IP literal: no resolving */
    char *prefix;
    size_t plen;
    enum rstate state;
    redisAsyncContext *ac; /* while connecting or up */
    char addrs[MAX_ADDRS][INET6_ADDRSTRLEN];
    int naddrs, addr_idx;  /* the addresses of this attempt, tried in turn */
    uv_timer_t conn_timer; /* connect deadline while connecting, backoff while down */
    uv_timer_t tick;       /* command deadlines and polls, while anything is pending */
    uv_getaddrinfo_t gai;
    bool gai_busy;
    unsigned failures; /* consecutive, for the backoff */
    bool down_logged;
    uint64_t rng;
    char id[17]; /* this store's random part of lock tokens */
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

static inline struct rop *lv__rop_of(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct rop, base.link);
}

/* redisconn.c */

/** Connected, and the connection takes commands. */
bool lv__redis_can_send(struct rstore *s);
/** A connection attempt is under way: new work waits for it rather than failing. */
bool lv__redis_connecting(struct rstore *s);
/** Starts a connection attempt (resolving first unless the host is an IP literal). */
void lv__redis_connect(struct rstore *s);
/** Frees the connection from outside hiredis' callbacks and goes down (or tries the next
 *  address); its pending commands are called back with NULL. */
void lv__redis_drop(struct rstore *s, const char *why);
/** conn_timer: connect deadline, backoff, next address; while closing, the drain. */
void lv__redis_on_conn_timer(uv_timer_t *t);

/* redisstore.c */

/** Answers a pending op UNAVAILABLE and lets go of its command. */
void lv__redis_fail_op(struct rop *op);
/** Connected: sends the begins that waited for the connection. */
void lv__redis_flush_queued(struct rstore *s);
/** Closing: conn_timer fired (last reply in, or the deadline). */
void lv__redis_closing_timer(struct rstore *s);

#endif
