/*
 * client: one client connection. Reads bytes into its input buffer, finds and validates each
 * request head (headscan + reqhead), hands the request to request.c, and writes responses
 * back in order. Pipelined requests are served one after another: the next head is parsed
 * only when the current response is complete, so responses can never be reordered.
 *
 * Timers: header_timeout while a head is incomplete (408, close), idle_timeout between
 * requests (silent close), send_timeout while the client does not read what we wrote.
 * A connection with doubtful framing is closed after its response (lingering briefly so the
 * client gets to read the response before the RST of unread data could destroy it).
 */
#ifndef LV_CLIENT_H
#define LV_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/gwerr.h"
#include "http/headscan.h"
#include "proxy/request.h"

struct lv_server;
struct lv_request;
struct lv_tls;
struct lv_tls_ctx;

enum lv_client_state {
    LV_CLIENT_IDLE,    /* between requests */
    LV_CLIENT_HEAD,    /* some bytes of a head arrived */
    LV_CLIENT_REQUEST, /* a request is being served */
    LV_CLIENT_CLOSING, /* answering the last response / lingering / closing */
};

struct lv_client {
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct lv_server *server;
    struct lv_client *next, *prev;
    uint64_t id;
    char peer[64]; /* client IP, for X-Forwarded-For and the log */
    struct lv_buf in;
    enum lv_client_state state;
    struct lv_request *req; /* &rq while a request is active, else NULL */
    struct lv_request rq;   /* the request slot, reused from one request to the next */
    struct lv_headscan hs;  /* progress on the head being received */
    uint32_t requests;
    size_t write_queued; /* bytes handed to libuv and not yet written */
    uint64_t last_write_ms;
    int open_handles;
    bool reading;
    bool read_paused; /* input buffer full: stop reading until the request consumes */
    bool eof;         /* the client half-closed */
    bool closed;      /* uv_close called */
    bool lingering;
    struct lv_tls *tls;    /* HTTPS: the TLS engine between the socket and `in` */
    struct lv_buf tls_out; /* ciphertext to send */
};

/* Above this much queued output, producers stop reading their source; below a quarter of it
 * they resume. Small on purpose: the kernel's send buffer already keeps a fast client busy, and
 * what sits here is memory a slow reader holds (at most this plus one upstream read). */
#define LV_CLIENT_WRITE_HIGH (32 * 1024)

/** Accepts a connection from listener `ls` (closes it at once when over max_connections);
 *  `tls` (may be NULL) makes it an HTTPS connection. */
void lv_client_accept(struct lv_server *s, uv_stream_t *ls, struct lv_tls_ctx *tls);

/** Queues bytes for the client (copied). Returns 0, or -1 if the connection is gone. */
int lv_client_write(struct lv_client *c, const char *data, size_t len);
/** Queues the bytes of `b` without copying: its memory goes with the write, and `b` is left
 *  empty (LV_BUF_INIT). Returns 0, or -1 if the connection is gone. */
int lv_client_write_buf(struct lv_client *c, struct lv_buf *b);
/** Same as lv_client_write, for several pieces in one write. */
int lv_client_writev(struct lv_client *c, const uv_buf_t *bufs, unsigned nbufs);

/** request.c: the current request is finished; `close` means the connection must close. */
void lv_client_request_done(struct lv_client *c, bool close);
/** request.c: it consumed input; reading may resume if it was paused. */
void lv_client_input_consumed(struct lv_client *c);
/** Once a second: reports how many refused requests the access log left out (see client.c). */
void lv_client_refused_log_tick(struct lv_server *s);
/** Answers with a gateway error outside any request (bad head), then closes. */
void lv_client_error_close(struct lv_client *c, int status, enum lv_gwerr err, const char *reason);
/** Closes the connection now (RST when `reset`), aborting any request. */
void lv_client_abort(struct lv_client *c, bool reset);

/** Server shutdown: close idle connections now; busy ones close after their response. */
void lv_client_drain_idle(struct lv_server *s);
/** Server shutdown past drain_timeout: close everything. */
void lv_client_close_all(struct lv_server *s);

#endif
