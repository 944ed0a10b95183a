/*
 * request: the life of one proxied request, from a validated head to the last response
 * byte. It routes the request, rebuilds the head to forward (one canonical framing header,
 * hop-by-hop fields dropped, X-Forwarded-*, Via, X-Request-Id), streams the body upstream
 * with backpressure, runs attempts against the route's upstream (pooled connection, per-try
 * timeout, deadline, safe re-send on a stale reused connection, the retry policy), validates
 * and streams the response back, and logs it.
 *
 * Owned by its client connection (client->req). Pins its configuration generation for its
 * whole life, so a reload never changes a request in flight.
 */
#ifndef LV_REQUEST_H
#define LV_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "http/headscan.h"
#include "net/upstream.h"
#include "policy/outcome.h"
#include "script/hooks.h"
#include "store/idem.h"

struct lv_client;
struct lv_server;
struct lv_config;
struct lv_route_cfg;
struct lv_route_state;

#define LV_MAX_TRIES        16
#define LV_HOOK_MAX_HEADERS 64

struct lv_try {
    enum lv_outcome_kind kind;
    int status;
    const char *server; /* borrowed from the runtime upstream (lives as long as the server) */
    double ms;
};

/*
 * One request. It lives inside its client connection (one request at a time per connection:
 * pipelined requests are served in order), so its buffers keep their capacity from one
 * request to the next and the steady state allocates nothing per request.
 */
struct lv_request {
    struct lv_client *c;
    struct lv_server *s;
    struct lv_config *cfg; /* pinned while active */
    const struct lv_route_cfg *route;
    struct lv_route_state *rs;
    struct lv_upstream *up;
    bool active;

    /* what the client asked */
    int method;
    bool http10;
    bool client_keep_alive;
    bool expect_continue;
    char rid[204];
    struct lv_buf target; /* raw request target, NUL-terminated */
    struct lv_buf host;   /* Host (or absolute-form authority), NUL-terminated */
    uint64_t start_ns;
    double start_unix;

    /* the head we forward (without Levee-Attempt and the final CRLF) */
    struct lv_buf fwd;
    bool add_server_host; /* no Host to forward: each attempt names its server's authority */

    /* request body */
    int body_kind; /* 0 none, 1 content-length, 2 chunked */
    uint64_t body_cl;
    void *body_dec; /* struct lv_body (http/body.h), allocated with the slot */
    uint64_t body_in;
    bool body_done;
    struct lv_buf replay;
    bool replay_valid;
    bool body_sent_any;    /* body bytes reached the current attempt */
    bool body_final_sent;  /* the last chunk (or last byte) went to the current attempt */
    bool buffering;        /* receiving the body before taking an upstream connection */
    bool body_held;        /* we left client bytes unread in this window (our backpressure) */
    uint64_t body_mark;    /* body_in at the start of the current rate window */
    uv_timer_t body_timer; /* limits.body_timeout / limits.body_rate while the body arrives */

    /* attempts */
    int attempt;
    bool stale_resend_used;
    bool want_fresh;
    struct lv_acquire acq;
    bool acquiring;
    struct lv_upconn *uc;
    const struct lv_upserver *last_server;
    uint64_t tried_servers; /* bit i: server i of the upstream had an attempt */
    size_t up_queued;
    bool head_written;
    uint64_t attempt_start_ns;
    uv_timer_t deadline_timer;
    uv_timer_t try_timer;
    struct lv_try tries[LV_MAX_TRIES];
    int ntries;

    /* response */
    struct lv_buf rhead;
    struct lv_headscan rhs;
    void *resp_dec; /* struct lv_body for the response */
    bool resp_started;
    bool head_sent;
    bool resp_no_body;
    bool resp_until_eof;
    bool resp_rechunk; /* re-frame as chunked for the client */
    bool resp_close;   /* close the client after this response */
    bool up_reusable;
    bool upstream_paused;
    int status;
    uint64_t bytes_out;
    double upstream_ms;
    struct lv_buf out;  /* scratch for building upstream output */
    struct lv_buf cout; /* client output staged during one upstream read, sent in one write */
#define LV_CPIECES_MAX 8
    /* Zero-copy body: large body pieces are referenced where they were read (the upstream
     * read block, or rhead) instead of copied into cout, and go out with cout's bytes in one
     * writev before the read callback returns. Each piece is a cout range or a pointer. */
    struct lv_cpiece {
        const char *p; /* NULL: bytes [off, off + len) of cout */
        size_t off, len;
    } cpieces[LV_CPIECES_MAX];
    unsigned ncpieces;
    size_t cout_marked;  /* cout bytes [0, cout_marked) are already in cpieces */
    const char *after_p; /* bytes read after the head, not copied into rhead */
    size_t after_n;

    /* resilience */
    uint64_t start_ms;       /* loop clock, when the head was complete */
    uint64_t deadline_at_ms; /* loop clock; the route timeout counts from the first attempt */
    bool deadline_started;
    uint64_t rng;
    uint64_t prev_delay_ms; /* last backoff planned (decorrelated jitter) */
    double backoff_ms;      /* total slept in backoff */
    bool probe;             /* the current attempt is a breaker probe */
    bool in_backoff;
    uint64_t backoff_next_ms;
    bool has_idem_key;       /* carries an idempotency key on a route with idempotency on */
    struct lv_buf hook_head; /* copy of the head, for hooks that read request headers */
    struct lv_hook_header hook_req[LV_HOOK_MAX_HEADERS];
    size_t nhook_req;

    /* idempotency (README, "Resilience policies") */
    int idem_state; /* enum in request.c: none, waiting for the body, looking up, locked, open */
    struct lv_buf idem_key;
    struct lv_idem_op *idem_op;
    struct lv_idem_lock *idem_lock;
    struct lv_buf idem_head; /* the response's end-to-end header lines, to store */
    struct lv_buf idem_body;
    int idem_status;
    bool idem_capture; /* the response is being kept for the store */

    /* log */
    unsigned flags;
    const char *error_token;
    uint64_t bytes_in;
};

/** Sets up the request slot of a new client connection (its timers). */
void lv_request_init(struct lv_request *r, struct lv_client *c);
/** Closes the slot's handles (`close_cb` once per handle, data = the client) and frees its
 *  buffers; the request must not be active. Returns the number of handles closing. */
int lv_request_dispose(struct lv_request *r, uv_close_cb close_cb);

/** Starts serving the head at the start of client->in (head_len bytes, pre-validated). The
 *  request may finish before this returns (an error answer); client state tells. */
void lv_request_begin(struct lv_client *c, size_t head_len);
/** More input arrived (body bytes). */
void lv_request_client_data(struct lv_request *r);
/** The client half-closed while the request runs. */
void lv_request_client_eof(struct lv_request *r);
/** The client's output queue drained below the low mark: resume reading the upstream. */
void lv_request_client_drained(struct lv_request *r);
/** The client connection is gone: abort (cancel, close the upstream connection) and free. */
void lv_request_client_gone(struct lv_request *r);

#endif
