/*
 * request: one proxied request, from a validated head to the last response byte. The request
 * path is a few stages, each in its own file, over this one struct and this one header:
 *
 *   request.c    the lifecycle: begin (parse, route, admit), the phase, one teardown, the log
 *   fwdhead.c    the head to forward (framing, hop-by-hop fields, X-Forwarded-*, Via, ids)
 *   reqbody.c    the request body: receive, buffer or stream, keep for replay, body timers
 *   idemfilter.c idempotency keys: a filter around the attempts (lookup, replay, store)
 *   attempt.c    attempts: connection, send, classify, retry decision, backoff, deadline
 *   exchange.c   one HTTP/1 response from an upstream connection, parsed and de-framed
 *   respout.c    what goes to the client: response heads, body pieces, errors
 *   breakergate.c the route's circuit breaker: admission, transitions, fallback answers
 *
 * The stages call each other (an attempt pumps the body; a finished body starts an attempt;
 * every stage may end the request), so they share this header instead of including one
 * another's; exchange (http/1 response parsing) and fwdhead sit below, with headers of their
 * own. The request talks to its client connection only through struct lv_downstream. It pins
 * its configuration generation for its whole life, so a reload never changes a request in
 * flight.
 */
#ifndef LV_REQUEST_H
#define LV_REQUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/gwerr.h"
#include "http/body.h"
#include "http/reqhead.h"
#include "http/resphead.h"
#include "net/upstream.h"
#include "policy/bulkhead.h"
#include "policy/fault.h"
#include "policy/retry.h"
#include "policy/outcome.h"
#include "proxy/downstream.h"
#include "proxy/exchange.h"
#include "proxy/fwdhead.h"
#include "script/hooktypes.h"

struct lv_server;
struct lv_generation;
struct lv_idem;
struct lv_config;
struct lv_route_cfg;
struct lv_route_state;
struct lv_hook_header;

#define LV_MAX_TRIES        16
#define LV_HOOK_MAX_HEADERS 64

/* Where a request is. Body receipt runs beside these (reqbody.c: body_done). */
enum lv_req_phase {
    LV_REQ_IDLE = 0,   /* the slot holds no request */
    LV_REQ_ADMISSION,  /* waiting for the rate limit's store or a bulkhead slot (admitreq.c) */
    LV_REQ_RECEIVING,  /* reading the body before the first attempt (buffering, keyed body) */
    LV_REQ_LOOKUP,     /* asking the idempotency store, or waiting for the request in flight */
    LV_REQ_CONNECTING, /* waiting for an upstream connection */
    LV_REQ_EXCHANGE,   /* the attempt is sent (or sending); no final response head yet */
    LV_REQ_BACKOFF,    /* between two attempts */
    LV_REQ_FAULT_HOLD, /* an injected delay holds the attempt (or, at the client, the request) */
    LV_REQ_RESPONDING, /* the final response streams to the client */
    LV_REQ_SETTLING,   /* the response is complete; the idempotency store is taking it */
};

struct lv_try {
    enum lv_outcome_kind kind;
    int status;
    const char *server; /* borrowed from the runtime upstream (lives as long as the server) */
    double ms;
    const char *fault; /* the injected fault kind that made this outcome, or NULL */
    /* for its span (tracing.c) */
    uint8_t span_id[8];
    uint64_t start_ns;   /* hrtime the attempt started */
    int8_t verdict;      /* enum lv_verdict, or -1: none was made */
    int8_t decision;     /* enum lv_retry_stop after it (LV_STOP_NONE: a retry followed), -1 */
    uint64_t backoff_ms; /* the backoff planned after it */
};

/* Zero-copy output: large response body pieces are referenced where they were read (the
 * upstream read block, or the exchange's head buffer) instead of copied into cout, and go out
 * with cout's bytes in one writev before the read callback returns. */
#define LV_CPIECES_MAX 8
struct lv_cpiece {
    const char *p; /* NULL: bytes [off, off + len) of cout */
    size_t off, len;
};

struct lv_idem_op;
struct lv_idem_lock;

/* idemfilter.c: idempotency keys as a filter around the attempts (see its section below). */
enum lv_idemf_state {
    LV_IDEMF_OFF,       /* no key: the filter is not in the way */
    LV_IDEMF_WAIT_BODY, /* keyed: reading the whole body before asking the store */
    LV_IDEMF_LOOKUP,    /* asking the store */
    LV_IDEMF_LOCKED,    /* the key is ours: attempts run, the response is stored */
    LV_IDEMF_OPEN,      /* store unavailable and on_store_error = fail_open: no protection */
};

struct lv_idem_filter {
    enum lv_idemf_state state;
    struct lv_buf key;
    struct lv_idem_op *op; /* a store operation in progress */
    struct lv_idem_lock *lock;
    struct lv_buf head; /* the response's end-to-end header lines, to store */
    struct lv_buf body;
    int status;
    bool capture; /* the response is being kept for the store */
};

/*
 * One request. A connection holds one slot while it serves a request (pipelined requests are
 * served in order); slots are reused from a per-server pool, so their buffers keep their
 * capacity and the steady state allocates nothing per request.
 */
struct lv_request {
    struct lv_downstream *ds;
    struct lv_server *s;
    enum lv_req_phase phase;
    struct lv_generation *gen; /* pinned while the request is not idle: all it names lives */
    struct lv_config *cfg;     /* gen->cfg */
    const struct lv_route_cfg *route;
    struct lv_route_state *rs; /* of the route, in this generation */
    struct lv_upstream *up;
    struct lv_idem *store; /* the route's idempotency store in this generation, or NULL */

    /* what the client asked (request.c) */
    int method;
    bool http10;
    bool client_keep_alive;
    bool expect_continue;
    bool upgrade; /* forwarded as an upgrade: a 101 makes a tunnel (proxy/tunnel.h) */
    char rid[204];
    struct lv_buf target; /* raw request target, NUL-terminated */
    struct lv_buf host;   /* Host (or absolute-form authority), NUL-terminated */
    uint64_t start_ns;
    uint64_t start_ms; /* loop clock, when the head was complete */

    /* the head we forward, without Levee-Attempt and the final CRLF (fwdhead.c) */
    struct lv_buf fwd;
    bool add_server_host; /* no Host to forward: each attempt names its server's authority */

    /* request body (reqbody.c) */
    enum lv_req_body body_kind;
    uint64_t body_cl;
    struct lv_body body_dec;
    uint64_t body_in;
    bool body_done;
    struct lv_buf replay;
    bool replay_valid;
    bool body_sent_any;   /* body bytes reached the current attempt */
    bool body_final_sent; /* the last chunk (or last byte) went to the current attempt */
    bool body_held;       /* we left client bytes unread in this window (our backpressure) */
    uint64_t body_mark;   /* body_in at the start of the current rate window */

    /* attempts (attempt.c) */
    int attempt;
    bool stale_resend_used;
    bool want_fresh;
    bool head_written; /* the forwarded head went to the current attempt's connection */
    bool upstream_paused;
    bool probe; /* the current attempt is a breaker probe */
    bool has_idem_key;
    struct lv_acquire acq;
    struct lv_upconn *uc;
    const struct lv_upserver *last_server;
    uint64_t tried_servers; /* bit i: server i of the upstream had an attempt */
    uint64_t attempt_start_ns;
    uint64_t deadline_at_ms; /* loop clock; the route timeout counts from the first attempt */
    bool deadline_started;
    uint64_t rng;
    uint64_t prev_delay_ms; /* last backoff planned (decorrelated jitter) */
    uint64_t backoff_next_ms;
    double backoff_ms; /* total slept in backoff */
    struct lv_try tries[LV_MAX_TRIES];
    int ntries;
    struct lv_exchange ex; /* the current attempt's response (exchange.c) */

    /* to the client (respout.c) */
    int status;
    bool head_sent; /* a response head (or a whole answer) went to the client */
    bool resp_rechunk;
    bool resp_close; /* close the client after this response */
    uint64_t bytes_out;
    double upstream_ms;
    struct lv_buf out;        /* scratch for upstream output and error answers */
    struct lv_buf cout;       /* client output staged during one upstream read, sent in one write */
    struct lv_buf resp_extra; /* header lines levee adds to its answer (RateLimit), or empty */
    struct lv_cpiece cpieces[LV_CPIECES_MAX];
    unsigned ncpieces;
    size_t cout_marked; /* cout bytes [0, cout_marked) are already in cpieces */

    /* hooks read request headers after the head left the input buffer: a copy, on routes
     * with a hook only */
    struct lv_buf hook_head;
    struct lv_hook_header *hook_req; /* LV_HOOK_MAX_HEADERS entries, allocated on first use */
    size_t nhook_req;

    struct lv_idem_filter idem; /* idemfilter.c */

    /* admission control (admitreq.c) */
    size_t head_len;             /* the head, still at the start of ds->in while admission waits */
    uint64_t serial;             /* this request, among the slot's: for messages that outlive it */
    struct lv_buf admit_key;     /* the rate limit's key */
    struct lv_rate_op *admit_op; /* a Redis check in flight */
    struct lv_bulkhead_waiter bh;
    bool bh_queued;       /* in the bulkhead's queue */
    bool bh_slot;         /* holds a bulkhead slot */
    uint32_t bh_inflight; /* the route's requests in flight when it got the slot */

    /* injected faults (faultinject.c, README "levee dev") */
    struct lv_faults fault_hdr;       /* from Levee-Fault, where the route honours it */
    struct lv_fault_hit fault_client; /* at = "client" (and throttle), drawn once */
    struct lv_fault_hit fault_try;    /* the current attempt's, drawn per attempt */
    bool fault_client_held;           /* the client-side delay was served */
    int error_status;                 /* a gateway error's status instead of the table's */

    /* One timer for the request's clocks (request.c, lv_request_clock_set): it fires at the
     * earliest due; a due moved later or cleared costs no timer call. Loop ms; 0: not set. */
    uv_timer_t timer;
    uint64_t armed;
    uint64_t due[3]; /* enum lv_req_clock */

    /* trace context (tracing.c, README "Tracing") */
    bool traced;          /* on for this request: traceparent per attempt, ids in the log */
    bool trace_continued; /* a valid incoming traceparent: its trace goes on */
    uint8_t trace_flags;  /* LV_TRACE_FLAG_SAMPLED: spans are exported */
    uint8_t trace_id[16];
    uint8_t span_id[8];   /* the request's (server) span */
    uint8_t parent_id[8]; /* the incoming parent span, when continued */
    uint8_t try_span[8];  /* the current attempt's span */

    /* log */
    unsigned flags;
    enum lv_retry_stop retry_stop; /* why the attempts ended (README "When levee retries") */
    bool error_held; /* r->out holds a gateway error waiting for the idempotency store */
    const char *error_token;
    uint64_t bytes_in;
};

/** A request slot for connection `ds` of server `s` (from the server's pool, or new). */
struct lv_request *lv_request_get(struct lv_server *s, struct lv_downstream *ds);
/** Gives an idle slot back to the server's pool (or frees it). */
void lv_request_put(struct lv_request *r);
/** Frees the pooled slots (server shutdown). */
void lv_request_pool_free(struct lv_server *s);

/** Starts serving the head at the start of ds->in (head_len bytes, pre-validated). The
 *  request may finish before this returns (an error answer): its downstream's done runs. */
void lv_request_begin(struct lv_request *r, size_t head_len);
/** More input arrived (body bytes). */
void lv_request_client_data(struct lv_request *r);
/** The client half-closed while the request runs. */
void lv_request_client_eof(struct lv_request *r);
/** The client's output queue drained below the low mark: resume reading the upstream. */
void lv_request_client_drained(struct lv_request *r);
/** The client connection is gone: abort (cancel, close the upstream connection). */
void lv_request_client_gone(struct lv_request *r);

/* ---- for the stages of the request path */

static inline bool lv_request_active(const struct lv_request *r)
{
    return r->phase != LV_REQ_IDLE;
}
/** The one teardown: ends the request (log, release everything it holds) and tells the
 *  downstream; `close` closes the client connection after what is queued. */
void lv_request_end(struct lv_request *r, bool close);
/** The response is complete (the upstream connection is let go, reusable when clean). */
void lv_request_finish(struct lv_request *r);
/** Something broke after response bytes went out: the client sees a broken message. */
void lv_request_abort_client(struct lv_request *r, unsigned log_flag);
/** The response went out whole (after the idempotency store took it): end. */
void lv_request_finish_end(struct lv_request *r);
/* The request's clocks. DEADLINE: the route timeout. TRY: the per-try timeout while waiting
 * for a head, the idle bound while the body streams, the backoff between attempts (attempt.c
 * tells them apart by the phase). BODY: limits.body_timeout / body_rate (reqbody.c). */
enum lv_req_clock { LV_CLOCK_DEADLINE, LV_CLOCK_TRY, LV_CLOCK_BODY };
/** Sets a clock to fire `timeout_ms` from now (replacing its due). */
void lv_request_clock_set(struct lv_request *r, enum lv_req_clock which, uint64_t timeout_ms);
/** Clears a clock. */
static inline void lv_request_clock_clear(struct lv_request *r, enum lv_req_clock which)
{
    r->due[which] = 0;
}
/** What the fallback and key hooks see of the request (borrowed from it). */
struct lv_hook_request lv_request_hook_view(const struct lv_request *r);
/** Which hook failed, for levee_hook_errors_total{hook}. */
enum lv_req_hook { LV_REQ_HOOK_CLASSIFY, LV_REQ_HOOK_FALLBACK, LV_REQ_HOOK_KEY };
/** A hook failed: counted as no hook, counted in the metrics, logged at most once a second
 *  per route. */
/** A retry decision: `stop` why not (LV_STOP_NONE: a retry goes). Kept for the access log,
 *  counted in levee_retry_decisions_total{route,decision}. */
void lv_request_retry_decided(struct lv_request *r, enum lv_retry_stop stop);
void lv_request_hook_failed(struct lv_request *r, enum lv_req_hook which, const struct lv_buf *err);
/** Answers with a gateway error and ends the request. */
void lv_request_fail(struct lv_request *r, enum lv_gwerr err, const char *detail, int retry_after,
                     bool close);

/* ---- attempt.c: the attempts of one request against its route's upstream. Takes a pooled
 * connection, sends the forwarded head and what is kept of the body, reads the response through
 * the exchange, classifies each outcome (the route's classify hook, else retry.on), asks the
 * retry rule (policy/retry.c) whether to go again, waits the backoff, and bounds it all with the
 * per-try timeout and the route deadline. A stale reused connection is re-sent once, safely.
 */

/** Starts the next attempt (takes an upstream connection). */
void lv_attempt_start(struct lv_request *r);
/** Starts the route deadline if it is not running: it counts from the first attempt (or the
 *  idempotency lookup). */
void lv_attempt_start_deadline(struct lv_request *r);
/** Milliseconds left before the deadline (at least 1). */
uint64_t lv_attempt_time_left(const struct lv_request *r);
/** Lets go of the current attempt's connection (pooled when `reusable`), cancels a pending
 *  acquire, stops the try timer. */
void lv_attempt_release(struct lv_request *r, bool reusable);
/** Writes to the current attempt's connection (try-write, then queue a copy). */
int lv_attempt_write(struct lv_request *r, const uv_buf_t *bufs, unsigned n);
/** Bytes queued on the current attempt's connection. */
size_t lv_attempt_queued(const struct lv_request *r);
/** Room for more request body on the current attempt's connection (its queue is not full). */
bool lv_attempt_body_room(const struct lv_request *r);
/** The client drained its output: read the upstream again. */
void lv_attempt_resume(struct lv_request *r);
/** The DEADLINE clock fired. */
void lv_attempt_deadline(struct lv_request *r);
/** The TRY clock fired: a try timeout, a stalled body, or the end of a backoff. */
void lv_attempt_clock(struct lv_request *r);

/** Admission control let the request through (admitreq.c): the breaker, idempotency, the body
 *  and the attempts follow. `h`: its parsed head, or NULL to parse it again from ds->in. */
void lv_request_admitted(struct lv_request *r, const struct lv_reqhead *h);

/** The budget counts the request and the breaker admits it; false: answered (breaker open,
 *  or its fallback). Right after admission control, or for a keyed request once the
 *  idempotency store let it through. */
bool lv_request_gate(struct lv_request *r);

/* ---- admitreq.c: admission control (README "Admission control"; proxy/admission.h) */

enum lv_admit { LV_ADMIT_GO, LV_ADMIT_WAIT, LV_ADMIT_REFUSED };
struct lv_rate_op;
/** The rate limit, then the bulkhead. GO: go on now; WAIT: lv_request_admitted follows (or an
 *  answer); REFUSED: answered (the head consumed). */
enum lv_admit lv_admitreq_begin(struct lv_request *r, const struct lv_reqhead *h);
/** The TRY clock fired while in LV_REQ_ADMISSION (the queue timeout). */
void lv_admitreq_clock(struct lv_request *r);
/** The request ends: a pending check is cancelled, a slot or a place in the queue let go. */
void lv_admitreq_end(struct lv_request *r);

/* ---- faultinject.c: faults injected on purpose (README "levee dev"). Route fault tables,
 * the Levee-Fault header and the admin API's rules (policy/faultrules.h) are drawn here; at
 * the upstream placement a fault is an attempt's outcome (attempt.c acts on it as on a real
 * one), at the client placement the client gets it and the policy never sees it.
 */

enum lv_fault_answer {
    LV_FAULT_GO,
    LV_FAULT_BAD_HEADER,
    LV_FAULT_ANSWER_ABORT,
    LV_FAULT_ANSWER_RESET
};
/** After routing: reads Levee-Fault where the route honours it, draws the client-side faults
 *  and starts the throttle. Anything but GO is answered by lv_fault_answer once the caller
 *  has let go of the head (`why`: what is wrong with the header). */
enum lv_fault_answer lv_fault_begin(struct lv_request *r, const struct lv_reqhead *h, char *why,
                                    size_t cap);
/** 400 bad-fault-header, the abort's status, or a TCP reset; ends the request. */
void lv_fault_answer(struct lv_request *r, enum lv_fault_answer a, const char *why);
/** Draws the upstream-side faults of the attempt starting now into r->fault_try. */
void lv_fault_draw_attempt(struct lv_request *r);
/** Counts one injected fault (levee_faults_injected_total) and flags the request. */
void lv_fault_injected(struct lv_request *r, enum lv_fault_kind k);
/** 64 random bits from the request's generator (attempt.c). */
uint64_t lv_attempt_rand(struct lv_request *r);

/* ---- tracing.c: W3C trace context and span export (README "Tracing"). */

/** At the head: continues the incoming traceparent or starts a trace (sampled by
 *  tracing.sample), counts an invalid header. */
void lv_trace_begin(struct lv_request *r, const struct lv_reqhead *h);
/** An attempt starts: its span id. */
void lv_trace_attempt(struct lv_request *r);
/** Writes "traceparent: 00-...\r\n" for the current attempt into out; returns its length, 0
 *  when trace context is off. */
#define LV_TRACE_HEADER_MAX 72
size_t lv_trace_header(const struct lv_request *r, char out[LV_TRACE_HEADER_MAX]);
/** The request ends (before its log line): a sampled request's spans go to the exporter. */
void lv_trace_end(struct lv_request *r);

/* ---- reqbody.c: the request body. Reads it from the downstream's input, de-frames it
 * (Content-Length or chunked, limits.body_size), keeps up to the replay cap for retries, and either
 * holds it before the first attempt (request buffering, keyed requests) or streams it to the
 * current attempt with backpressure both ways. limits.body_timeout / limits.body_rate judge a slow
 * body.
 */

/** At the head: set up the de-framer, answer Expect: 100-continue, decide buffering, and
 *  start the first attempt unless the body (or the idempotency store) comes first. */
void lv_reqbody_begin(struct lv_request *r);
/** Moves what the downstream buffered to where it goes (replay buffer, upstream). */
void lv_reqbody_pump(struct lv_request *r);
/** More body bytes arrived. */
void lv_reqbody_client_data(struct lv_request *r);
/** The BODY clock fired. */
void lv_reqbody_clock(struct lv_request *r);

/* ---- respout.c: what a request sends its client. Response heads (forwarded, interim) and gateway
 * errors are written with http/respwrite; body bytes are staged in the request's cout, large
 * pieces by reference (zero-copy), and go out in one write per upstream read.
 */

/** The final response head, as forwarded (framing re-decided for the client). */
void lv_respout_head(struct lv_request *r, const struct lv_resphead *h);
/** An interim (1xx) head: passed on to HTTP/1.1 clients, except 100 (Expect is ours). */
void lv_respout_interim(struct lv_request *r, const struct lv_resphead *h);
/** Response body bytes (re-chunked when the client gets chunked framing). */
void lv_respout_data(struct lv_request *r, const char *p, size_t n);
/** The body is complete: the last chunk when re-chunking. */
void lv_respout_end(struct lv_request *r);
/** Sends what is staged, in one write. Staged pieces that point into an upstream read must
 *  go before that read's callback returns. */
void lv_respout_flush(struct lv_request *r);
/** Copies pieces held by reference into cout: for output that must outlive this read. */
void lv_respout_materialize(struct lv_request *r);
/** Writes a gateway error answer (README, "Errors made by the gateway"). */
/** The gateway error's bytes into r->out (status, token, head_sent), not written yet. */
void lv_respout_error_format(struct lv_request *r, enum lv_gwerr err, const char *detail,
                             int retry_after);
void lv_respout_error(struct lv_request *r, enum lv_gwerr err, const char *detail, int retry_after);

/* ---- breakergate.c: a route's circuit breaker at the request path (README, "Circuit breaker"):
 * admits requests and retries, records outcomes, logs every transition once with its cause,
 * and answers a rejected request with the route's fallback hook or 503 breaker-open.
 */

/** At the head. Returns false when the breaker rejects the request (`left_ms`: until it may
 *  let requests through again); lv_breakergate_reject then answers it. */
bool lv_breakergate_admit(struct lv_request *r, uint64_t *left_ms); /* route state locked */
/** Answers a rejected request: the route's fallback hook, or 503 breaker-open. */
void lv_breakergate_reject(struct lv_request *r, uint64_t left_ms);
/** Before a retry. Returns false when the breaker rejects it (the client gets the last
 *  attempt's result). */
bool lv_breakergate_admit_retry(struct lv_request *r, uint64_t now); /* route state locked */
/** An attempt's verdict: a failure or not, slow or not. */
void lv_breakergate_record(struct lv_request *r, uint64_t now, bool failure, double attempt_ms);
/** A probe that ended with no outcome frees its slot (else the route stays shut). */
void lv_breakergate_drop_probe(struct lv_request *r);

/* ---- idemfilter.c: idempotency keys as a filter around a request's attempts (README, "Idempotency
 * keys"). At the head it finds the key (the header, or the route's key hook); once the whole
 * body is in it asks the route's store: a stored response is replayed, a request in flight
 * with the same key is a conflict (or waited for), otherwise the key is locked and the
 * attempts run. The final response is captured and stored before its last bytes go out; a
 * request that ends any other way gives the key back.
 */

/** At the head: is this a keyed request? Returns false when the request was answered. */
bool lv_idem_filter_begin(struct lv_request *r, const struct lv_reqhead *h);
/** The whole body is in: a keyed request asks the store now. */
void lv_idem_filter_body_done(struct lv_request *r);
/** The final response head of a locked request: keep what the store needs. */
void lv_idem_filter_capture_head(struct lv_request *r, const struct lv_resphead *h);
/** Response body bytes of a locked request. */
void lv_idem_filter_capture_body(struct lv_request *r, const char *p, size_t n);
/** The response is complete: store it (or give the key back). Returns true when the request
 *  waits for the store before its last bytes go out (it then ends by itself). */
bool lv_idem_filter_finish(struct lv_request *r);
/** The request ends: cancel a store operation, give back a lock not completed. */
void lv_idem_filter_end(struct lv_request *r);
/** Frees the filter's buffers. */
void lv_idem_filter_dispose(struct lv_idem_filter *f);

/* The key is locked: the response may have to wait for the store, so it is not referenced
 * in place (respout.c copies it). */
static inline bool lv_idem_filter_locked(const struct lv_idem_filter *f)
{
    return f->lock != NULL;
}
/* The store is taking the response: the last bytes wait. */
static inline bool lv_idem_filter_settling(const struct lv_idem_filter *f)
{
    return f->op != NULL;
}

#endif
