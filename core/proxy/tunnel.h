/*
 * tunnel: a connection that switched protocols (README "WebSocket and other upgrades"). When an
 * upstream answers an upgrade request with 101, the 101 head goes to the client and the two
 * connections become a byte pipe both ways: what the client sent after its request head goes
 * upstream first, what the upstream sent after its 101 head goes to the client first.
 *
 * The tunnel owns the upstream connection (never pooled again) and, once the request has
 * ended, drives the client connection through its struct lv_downstream (client.c keeps the
 * socket, TLS and write queue and calls the lv_tunnel_client_* functions below). Backpressure
 * both ways: a side is not read while the other side's write queue is above its high mark.
 * An end of stream from one side shuts the other side's write half down and the other
 * direction goes on; once both directions ended, both connections close. A reset or error on
 * either side closes both; so does tunnel_idle_timeout without a byte either way. One access
 * log line (status 101, flag `tunnel`) is written when it closes.
 */
#ifndef LV_PROXY_TUNNEL_H
#define LV_PROXY_TUNNEL_H

#include <stddef.h>

struct lv_request;
struct lv_tunnel;

/** attempt.c, at a 101 answering an upgrade request (its head staged in the request's output):
 *  the tunnel takes the upstream connection, sends the head and `tail` (the upstream's bytes
 *  after it) to the client, and ends the request; the client connection is the tunnel's once
 *  its downstream's done runs (lv_tunnel_attached). */
void lv_tunnel_begin(struct lv_request *r, const char *tail, size_t ntail);

/* The client connection of a tunnel (client.c), its downstream's `tunnel` set: */
/** The request ended: the connection serves the tunnel from now on. */
void lv_tunnel_attached(struct lv_tunnel *t);
/** Bytes arrived in the downstream's input. */
void lv_tunnel_client_data(struct lv_tunnel *t);
/** The client ended its side (FIN or TLS close_notify). */
void lv_tunnel_client_eof(struct lv_tunnel *t);
/** The client's write queue went below the low mark. */
void lv_tunnel_client_drained(struct lv_tunnel *t);
/** The shutdown asked by the downstream's `shutdown` op is done. */
void lv_tunnel_client_shut(struct lv_tunnel *t);
/** The client connection is closing (reset, error, drain): the upstream closes too. The
 *  connection clears its downstream's `tunnel` before calling. */
void lv_tunnel_client_gone(struct lv_tunnel *t);

#endif
