/*
 * upstream: the runtime side of an upstream block. Owns its servers (resolved addresses,
 * re-resolved every pool.max_lifetime with uv_getaddrinfo), picks a server per attempt
 * (round robin, or least request by power of two choices), and keeps a pool of keep-alive
 * connections per server with max_idle / idle_timeout / max_lifetime / max_connections and a
 * bounded queue of requests waiting for a connection slot. A new connection races the
 * server's addresses, families interleaved (Happy Eyeballs, RFC 8305; see upconn.c).
 *
 * Runtime upstreams live in the server's registry keyed by name, so a reload that keeps an
 * upstream unchanged keeps its pools. The server creates and destroys them; attempts borrow
 * connections with lv_upstream_acquire and give them back with lv_upconn_release/discard.
 */
#ifndef LV_UPSTREAM_H
#define LV_UPSTREAM_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/list.h"
#include "policy/health.h"
#include "conf/config.h"

struct lv_upstream;
struct lv_upserver;
struct lv_upconn;
struct lv_race;
struct lv_tls;
struct lv_tls_ctx;
struct lv_healthcheck;
struct lv_metric;

enum lv_upconn_state { LV_UPCONN_CONNECTING, LV_UPCONN_IDLE, LV_UPCONN_BUSY, LV_UPCONN_CLOSING };

/* Why getting a connection failed; maps to an outcome and a gateway error. */
enum lv_acquire_error {
    LV_ACQUIRE_OK = 0,
    LV_ACQUIRE_CONNECT_FAILED, /* refused, unreachable, connect timeout, DNS */
    LV_ACQUIRE_OVERFLOW,       /* max_connections reached and the wait queue is full */
    LV_ACQUIRE_QUEUE_TIMEOUT,  /* waited queue_timeout for a slot */
    LV_ACQUIRE_NO_SERVER,      /* nothing resolvable */
    LV_ACQUIRE_CANCELLED,
};

/**
 * Called once per acquire, never from inside lv_upstream_acquire itself. On success `uc` is a
 * connected connection now owned by the caller (state BUSY). On failure `uc` is NULL and
 * `detail` says what was tried ("127.0.0.1:9000: connection refused; ...").
 */
typedef void (*lv_acquire_cb)(enum lv_acquire_error err, struct lv_upconn *uc, const char *detail,
                              void *arg);

struct lv_acquire {
    /* private */
    struct lv_dlist link; /* the upstream's wait queue, while queued */
    struct lv_upstream *up;
    struct lv_upserver *server;
    lv_acquire_cb cb;
    void *arg;
    uint64_t queued_at;
    struct lv_race *race; /* the connect race (Happy Eyeballs) opened for this acquire */
    bool fresh;           /* a new connection is required (the last one failed after reuse) */
    bool panic;           /* no server was in: picked among all of them (panic mode) */
    bool queued;
    bool active;
};

/* An upstream connection. The owner (an attempt) sets the read callbacks while BUSY. */
typedef void (*lv_upconn_read_cb)(struct lv_upconn *uc, ssize_t nread, const char *data, void *arg);

struct lv_upconn {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    uv_timer_t timer;
    struct lv_upserver *server;
    struct lv_dlist idle_link; /* the server's idle list, while IDLE */
    enum lv_upconn_state state;
    uint64_t created_ms;
    uint64_t idle_since_ms;
    /* Idle timeout, armed lazily (upconn.c lv_upconn_release): idle_due is when this idle
     * connection expires (0 while busy); idle_armed when the timer fires for it (0: not). */
    uint64_t idle_due, idle_armed;
    uint32_t requests; /* requests served on this connection, this one included */
    bool reused;       /* the current request is not the connection's first */
    char peer[64];     /* "127.0.0.1:9000" */
    /* connect bookkeeping: while CONNECTING, a connection is one attempt of a race */
    struct lv_race *race;
    int addr_index; /* in the race's address list */
    int connect_error;
    bool stagger; /* the timer starts the race's next attempt (otherwise: its deadline) */
    /* while BUSY */
    struct lv_tls *tls;    /* upstream tls: the engine between the socket and the owner */
    struct lv_buf tls_out; /* ciphertext to send */
    struct lv_buf tls_in;  /* plaintext collected from one read */
    bool handshaking;      /* TCP up, TLS handshake under way (still CONNECTING) */
    bool tls_plain_now;    /* on_conn_read is being given decrypted bytes */
    lv_upconn_read_cb on_read;
    void *read_arg;
    bool reading;
};

struct lv_upserver {
    struct lv_upstream *up;
    struct lv_hostport hp;
    char name[80]; /* "host:port" as configured */
    struct sockaddr_storage *addrs;
    int naddrs;
    uv_getaddrinfo_t gai;
    bool resolving;
    uint64_t resolved_at;
    uint32_t active; /* connect races (one each, however many attempts) + busy */
    uint32_t idle;
    uint32_t inflight;          /* requests being served (for least_request) */
    struct lv_dlist idle_conns; /* idle connections, LIFO (struct lv_upconn, by idle_link) */
    uint64_t connects, connect_failures;
    uint64_t tls_resumed; /* connects whose TLS handshake resumed a cached session */
    /* the last active check: "200", "503", "timeout", "connection refused"...; "" if none */
    char last_check[64];
    bool last_check_ok;
    double last_check_ms;   /* how long it took */
    double last_check_unix; /* when it finished */
    /* HTTP bytes (TLS excluded) requests wrote to / read from the server (README "Metrics") */
    uint64_t sent_bytes, received_bytes;
};

/* The health of an upstream's servers, one for every worker's runtime upstream of that
 * upstream (README "Workers"): outcomes any worker saw count together, active checks run in
 * the first worker only, and every worker picks by the same states. `lock` guards `g`. */
struct lv_upstream_health {
    pthread_mutex_t lock;
    struct lv_health_group g;
    atomic_uint refs;
    /* Hints kept under the lock (lv_upstream_health_sync) so the common case takes none:
     * every server up at full weight (a pick needs no health), and per server whether a run
     * of failures is being counted (a success that resets nothing needs no write). */
    atomic_bool all_up;
    atomic_bool *failing;
};

/** A group for `cfg`'s servers, all up, one reference. */
struct lv_upstream_health *lv_upstream_health_new(const struct lv_upstream_cfg *cfg);
struct lv_upstream_health *lv_upstream_health_ref(struct lv_upstream_health *h);
/** Refreshes the hints after a change of `h->g` (the caller holds the lock). */
void lv_upstream_health_sync(struct lv_upstream_health *h);
void lv_upstream_health_unref(struct lv_upstream_health *h);

struct lv_upstream {
    char *name;
    uv_loop_t *loop;
    struct lv_upstream_cfg cfg_copy; /* scalars of the current config (strings not owned) */
    const struct lv_upstream_cfg *cfg;
    struct lv_upserver *servers;
    size_t nservers;
    size_t rr;
    uint64_t rng;
    struct lv_dlist waitq; /* queued acquires, FIFO (struct lv_acquire, by link) */
    uint32_t nwaiting;
    uv_timer_t timer; /* queue timeouts, idle expiry, re-resolution: one periodic tick */
    bool closing;
    bool retired;   /* replaced by a reload: serves the requests that use it, pools nothing */
    uint32_t users; /* requests using this upstream now (a retired one goes when it reaches 0) */
    int open_handles;
    void (*on_closed)(struct lv_upstream *up);
    uint64_t fingerprint;              /* of the servers list, to decide reuse across reloads */
    struct lv_tls_ctx *tls_ctx;        /* tls = { ... }: client context; NULL: plain TCP */
    struct lv_upstream_health *health; /* state of each server (index = server index), shared */
    bool runs_checks;                  /* the worker whose upstream runs the active checks */
    struct lv_healthcheck *checker;    /* active checks (health = { ... }), or NULL */
    uint64_t panic_picks;              /* attempts sent while no server was in */
    /* levee_upstream_attempt_duration_seconds{upstream} (README "Metrics"), set lazily */
    struct lv_metric *attempt_duration;
    /* Called for every change of a server's state (the server logs and counts it). */
    void (*on_health_event)(struct lv_upstream *up, const struct lv_health_event *ev);
    void *owner; /* for on_health_event */
};

/* Its servers as net/healthcheck sees them: lv_healthcheck_start(loop,
 * &lv_upstream_check_servers, up, ...). */
struct lv_healthcheck_servers;
extern const struct lv_healthcheck_servers lv_upstream_check_servers;

/** Creates the runtime upstream for `cfg` (resolves literal addresses now; names async), with
 *  the server health `health` (a reference is taken; NULL: a group of its own). Only the
 *  upstream with `runs_checks` runs active checks (one per process). */
struct lv_upstream *lv_upstream_create(uv_loop_t *loop, const struct lv_upstream_cfg *cfg,
                                       struct lv_upstream_health *health, bool runs_checks);
static inline void lv_upstream_health_lock(const struct lv_upstream *up)
{
    pthread_mutex_lock(&up->health->lock);
}
static inline void lv_upstream_health_unlock(const struct lv_upstream *up)
{
    pthread_mutex_unlock(&up->health->lock);
}
/** True if `cfg` has the same servers and TLS as the running one (so pools can be kept). */
bool lv_upstream_same_servers(const struct lv_upstream *up, const struct lv_upstream_cfg *cfg);
/** Points the upstream at a new config block with the same servers (a reload). */
void lv_upstream_update(struct lv_upstream *up, const struct lv_upstream_cfg *cfg);
/** A reload replaced this upstream: close its idle connections, pool nothing more; requests
 *  that already use it finish on it. */
void lv_upstream_retire(struct lv_upstream *up);
/** Closes idle connections and handles; frees the upstream when the last handle closed.
 *  Busy connections are closed by their owners. */
void lv_upstream_destroy(struct lv_upstream *up);

/**
 * Picks a server and gets a connection to it: an idle pooled one unless `fresh`, or a new one.
 * A pooled connection, when nobody waits before this acquire, is handed over at once: the
 * callback runs before this returns. Otherwise it runs later, from the loop. Only servers that are
 * in (up or starting, README "Upstream health") are picked, by the upstream's balancer with
 * slow-start weights; with `last` set (a retry) one not in `tried` (bit i: server i was tried) is
 * preferred, starting after `last`; `fresh` with `last` re-sends on `last` itself (a stale pooled
 * connection). When no server is in, all are candidates (panic mode: acq->panic is set).
 */
void lv_upstream_acquire(struct lv_upstream *up, struct lv_acquire *acq,
                         const struct lv_upserver *last, uint64_t tried, bool fresh,
                         lv_acquire_cb cb, void *arg);

/** A live attempt on server `s` ended with `o`: feeds outlier ejection. */
void lv_upstream_report(struct lv_upstream *up, const struct lv_upserver *s,
                        enum lv_health_outcome o);
/** An active check of server index i finished (net/healthcheck.c's result). */
void lv_upstream_check_result(struct lv_upstream *up, size_t i, bool ok, const char *why,
                              double duration_ms);
/** Index of `s` in its upstream. */
size_t lv_upserver_index(const struct lv_upserver *s);
/** Cancels a pending acquire; its callback will not run. */
void lv_upstream_cancel(struct lv_acquire *acq);

/** Upstream TLS: encrypts `bufs` into uc->tls_out (the caller writes that out and empties
 *  it). Returns 0, or a negative errno from lv_tls_write (lv_tls_error says why). */
int lv_upconn_tls_wrap(struct lv_upconn *uc, const uv_buf_t *bufs, unsigned n);

/** Starts delivering bytes from the connection to `cb` (and EOF/errors as nread < 0). */
void lv_upconn_read_start(struct lv_upconn *uc, lv_upconn_read_cb cb, void *arg);
void lv_upconn_read_stop(struct lv_upconn *uc);
/** Returns a connection that finished a clean exchange to the idle pool (or closes it). */
void lv_upconn_release(struct lv_upconn *uc);
/** Closes a connection that cannot be reused (with an RST when `reset`). */
void lv_upconn_discard(struct lv_upconn *uc, bool reset);

/** Periodic upkeep (DNS re-resolution); the server calls it about once a second. */
void lv_upstream_tick(struct lv_upstream *up);
/** Frees an upstream after lv_upstream_destroy's on_closed callback ran. */
void lv_upstream_free(struct lv_upstream *up);

/** Server pool sizes, for /status and metrics. */
void lv_upstream_counts(const struct lv_upstream *up, uint32_t *active, uint32_t *idle);

/* ---- shared by net/upstream.c and net/upconn.c only (the names start with lv__) */

/** The upstream's clock (the loop's, in ms). */
static inline uint64_t lv__upstream_now(const struct lv_upstream *up)
{
    return uv_now(up->loop);
}

/** The most recently pooled idle connection of `s`, or NULL. */
static inline struct lv_upconn *lv__upserver_idle_first(struct lv_upserver *s)
{
    struct lv_dlist *l = lv_dlist_first(&s->idle_conns);
    return l ? lv_dlist_entry(l, struct lv_upconn, idle_link) : NULL;
}

/** Ends an acquire: it is no longer active, and its callback runs now. */
static inline void lv__acquire_done(struct lv_acquire *acq, enum lv_acquire_error err,
                                    struct lv_upconn *uc, const char *detail)
{
    acq->active = false;
    acq->cb(err, uc, detail, acq->arg);
}

/* upconn.c */

/** Closes a connection (with an RST when `reset`); a no-op for one already closing. */
void lv__upconn_close(struct lv_upconn *uc, bool reset);
/** Opens a new connection to `s` for `acq` (a race over its addresses, one pool slot). */
void lv__upconn_race_start(struct lv_upserver *s, struct lv_acquire *acq);

/** A cancelled acquire lets go of its race (which then pools its winner, if any). */
void lv__upconn_race_detach(struct lv_acquire *acq);

/* upstream.c */

/** Serves the wait queue: pooled connections, new races, queue timeouts and overflow. */
void lv__upstream_dispatch_waiters(struct lv_upstream *up);

#endif
