/*
 * client: one client connection. Reads bytes into its input buffer, finds and validates each
 * request head (headscan), hands it to a request (through struct lv_downstream: the request
 * never sees this struct), and writes responses back in order. Pipelined requests are served one
 * after another: the next head is parsed only when the current response is complete, so responses
 * can never be reordered.
 *
 * Timers: header_timeout while a head is incomplete (408, close), idle_timeout between
 * requests (silent close), send_timeout while the client does not read what we wrote.
 * After a 101 the connection belongs to a tunnel (proxy/tunnel.h) until it closes.
 * A connection with doubtful framing is closed after its response (lingering briefly so the
 * client gets to read the response before the RST of unread data could destroy it).
 */
#ifndef LV_CLIENT_H
#define LV_CLIENT_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "base/list.h"
#include "base/gwerr.h"
#include "http/headscan.h"
#include "proxy/downstream.h"

struct lv_server;
struct lv_request;
struct lv_tls;
struct lv_tls_ctx;

enum lv_client_state {
    LV_CLIENT_IDLE,    /* between requests */
    LV_CLIENT_HEAD,    /* some bytes of a head arrived */
    LV_CLIENT_REQUEST, /* a request is being served */
    LV_CLIENT_CLOSING, /* answering the last response / lingering / closing */
    LV_CLIENT_TUNNEL,  /* switched protocols: a tunnel (proxy/tunnel.h) drives it */
};

struct lv_client {
    struct lv_downstream ds; /* what its request sees: input, peer, write queue */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_shutdown_t shutdown_req;
    struct lv_server *server;
    struct lv_dlist link; /* in the server's clients */
    uint64_t id;
    enum lv_client_state state;
    struct lv_request *req; /* the request being served (a slot from the pool), else NULL */
    struct lv_headscan hs;  /* progress on the head being received */
    uint32_t requests;
    uint64_t last_write_ms;
    uint64_t due;     /* loop ms: the current state's timeout (see timer_due in client.c) */
    uint64_t armed;   /* loop ms the timer fires at for on_timer; 0: not armed for it */
    uint64_t head_at; /* loop ms: a head's first byte */
    bool head_timed;  /* header_timeout is set for the head being received */
    int open_handles;
    bool reading;
    bool read_paused; /* input buffer full: stop reading until the request consumes */
    bool eof;         /* the client half-closed */
    bool lingering;
    struct lv_tls *tls;          /* HTTPS: the TLS engine between the socket and `in` */
    struct lv_client_slow *slow; /* a throttle fault's held-back output (clientslow.c), or NULL */
    struct lv_buf tls_out;       /* ciphertext to send */
};

/** Accepts a connection from listener `ls` (closes it at once when over max_connections);
 *  `tls` (may be NULL) makes it an HTTPS connection. */
void lv_client_accept(struct lv_server *s, uv_stream_t *ls, struct lv_tls_ctx *tls);
/** The same for a connection another worker accepted and handed over (`fd` taken). */
void lv_client_adopt(struct lv_server *s, int fd, struct lv_tls_ctx *tls);
/** Client connections of every worker (each publishes its own count). */
uint32_t lv_client_count_all(const struct lv_server *s);

/** Once a second: reports how many refused requests the access log left out (see client.c). */
void lv_client_refused_log_tick(struct lv_server *s);

/** Server shutdown: close idle connections now; busy ones close after their response. */
void lv_client_drain_idle(struct lv_server *s);
/** Server shutdown past drain_timeout: close everything. */
void lv_client_close_all(struct lv_server *s);

#endif
