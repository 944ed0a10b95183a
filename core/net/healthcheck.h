/*
 * healthcheck: active health checks of an upstream's servers. One checker per upstream probes
 * every server with `GET PATH HTTP/1.1` on the loop's timers and reports each result to a
 * callback (which the server feeds to lv_health_check_result, the log and the metrics).
 *
 * Each check opens its own TCP connection (never one of the upstream's pooled connections, and
 * never counted in the pool's numbers) to the server's resolved addresses, tried in order,
 * speaks TLS when the upstream does (same context, same SNI rule as upstream connections),
 * sends the request with `Connection: close`, reads the response head only (headscan in
 * response mode, at most LV_HEALTHCHECK_MAX_HEAD bytes; interim 1xx heads are skipped), and
 * closes the connection. The whole check (connect, TLS, head) must fit in timeout_ms.
 *
 * Schedule: the first check of each server comes at a random offset in [0, interval) so a
 * group of servers is not probed in lockstep; after that a check starts one interval (±10%
 * jitter) after the previous one of the same server started, or as soon as that one ended if
 * it took longer. A server never has two checks at once.
 *
 * The checker knows the servers only through the lv_healthcheck_servers interface its owner
 * gives it (net/upstream gives lv_upstream_check_servers), so this module does not depend on
 * net/upstream. It reads a server (name, host, port, addresses, TLS context, SNI) only when it
 * starts a check, and copies what the check needs, so the owner may re-resolve addresses or be
 * updated by a reload between checks; a server whose slot changes (another name at that
 * index) starts afresh, and the result of a check still running on the old one is dropped.
 * The owner must outlive the checker's running state: call lv_healthcheck_stop before freeing
 * it. Nothing of the owner is touched after lv_healthcheck_stop returns.
 */
#ifndef LV_HEALTHCHECK_H
#define LV_HEALTHCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

struct lv_healthcheck;
struct lv_tls_ctx;
struct sockaddr_storage;

/* Longest server name a slot remembers (longer names compare on this prefix). */
#define LV_HEALTHCHECK_NAME_MAX 80

/* What a check needs of one server; borrowed for the duration of the `get` call only. */
struct lv_healthcheck_target {
    const char *name; /* identifies the server at this index ("host:port" as configured) */
    const char *host; /* for the Host field and, without `sni`, the TLS name; NULL: "" */
    uint16_t port;
    const struct sockaddr_storage *addrs; /* resolved addresses, tried in order */
    int naddrs;
    bool resolving;             /* the first resolution is under way: not a failure yet */
    struct lv_tls_ctx *tls_ctx; /* client TLS context, or NULL for plain TCP */
    const char *sni;            /* TLS name to use instead of host, or NULL */
};

/* The servers to check, as their owner shows them. */
struct lv_healthcheck_servers {
    size_t (*count)(void *owner);
    /* The owner is shutting down: checks are postponed, not started. */
    bool (*closing)(void *owner);
    void (*get)(void *owner, size_t i, struct lv_healthcheck_target *out);
};

/* Largest response head a check reads (status line and fields, interim heads included). */
#define LV_HEALTHCHECK_MAX_HEAD (16 * 1024)

struct lv_healthcheck_params {
    const char *path;     /* request target; NULL: "/". Must start with '/' */
    uint64_t interval_ms; /* between two checks of a server; 0: 2 s */
    uint64_t timeout_ms;  /* connect + TLS + response head; 0: 1 s */
    uint64_t expect[10];  /* bit s set: status s (100..599) passes; all zero: 200-399 */
    const char *host;     /* Host field; NULL: the server's "host:port" as configured */
};

/**
 * The result of one check of server `server` (its index in the upstream's servers).
 * `ok`: the server answered with an expected status. `why` says what happened, for the log
 * and lv_health_check_result: the status code ("200", "503") whenever a response head came
 * (whether or not it passed), else "timeout", "connection refused" (or another socket error
 * text), "connection closed" (closed before any response byte), "bad response" (not a valid
 * HTTP/1.x response head, too long, or cut short), "TLS: <reason>", "cannot resolve" (no
 * address yet). Valid during the call only. `duration_ms` is the check's time from its start,
 * on the loop's clock. The callback may call lv_healthcheck_update or lv_healthcheck_stop.
 */
typedef void (*lv_healthcheck_cb)(size_t server, bool ok, const char *why, uint64_t duration_ms,
                                  void *arg);

/** NULL if `p` can be used, else a static text saying what is wrong (for the config loader):
 *  a path that does not start with '/' or holds a space or control byte, a host with one. */
const char *lv_healthcheck_params_error(const struct lv_healthcheck_params *p);

/**
 * Starts checking the servers `servers` shows of `owner` (which must not be closing) on `loop`.
 * `servers` is borrowed for the checker's life; `p` is copied (strings included). Returns NULL
 * if lv_healthcheck_params_error(p) is not NULL. The callback is never called from inside this
 * function.
 */
struct lv_healthcheck *lv_healthcheck_start(uv_loop_t *loop,
                                            const struct lv_healthcheck_servers *servers,
                                            void *owner, const struct lv_healthcheck_params *p,
                                            lv_healthcheck_cb cb, void *arg);

/**
 * New parameters (a reload). Checks under way finish with their old timeout; a server's next
 * check is brought forward into the new interval if it was due later than that. Also picks up
 * servers added to or removed from the upstream. Returns 0, or -EINVAL (and keeps the old
 * parameters) when `p` is invalid (lv_healthcheck_params_error says why).
 */
int lv_healthcheck_update(struct lv_healthcheck *hc, const struct lv_healthcheck_params *p);

/**
 * Stops checking: checks under way are abandoned (their results are never reported), the
 * callback is not called any more, and the checker frees itself once its handles have closed
 * (the loop must run for that). NULL is accepted.
 */
void lv_healthcheck_stop(struct lv_healthcheck *hc);

/** Checks currently under way (for tests and /status). */
size_t lv_healthcheck_running(const struct lv_healthcheck *hc);

#endif
