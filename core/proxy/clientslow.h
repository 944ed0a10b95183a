/*
 * clientslow: a client connection's output throttle (an injected `throttle` fault, README
 * "levee dev"). While it is on, what the connection writes is held here and leaves on a tick,
 * from a token bucket filled at `rate` bytes a second (at most two ticks' worth saved up, so
 * idle time earns no burst). The held bytes beyond what the next 100 ms will let out count in
 * the downstream's write_queued, so the request's backpressure slows the upstream down to the
 * same rate while the queue stays fed.
 */
#ifndef LV_PROXY_CLIENTSLOW_H
#define LV_PROXY_CLIENTSLOW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "base/buf.h"
#include "proxy/downstream.h"

/* What the connection does for its throttle (`arg`: the connection). */
struct lv_client_slow_ops {
    /* Writes to the socket (try now, else queue a copy); -1 when the connection broke. */
    int (*wire)(void *arg, const uv_buf_t *bufs, unsigned nbufs);
    /* A tick is over (the queue may be empty now): release, close, resume producers. */
    void (*ticked)(void *arg);
};

struct lv_client_slow {
    uv_timer_t timer; /* its data is the connection's (`arg`), for the close callback */
    struct lv_downstream *ds;
    const struct lv_client_slow_ops *ops;
    void *arg;
    struct lv_buf q;
    struct lv_buf out; /* the slice of a tick */
    uint64_t rate;     /* bytes a second; 0: off once q is empty */
    double tokens;     /* bytes that may leave now */
    uint64_t last_ms;  /* loop ms the tokens were counted at */
    size_t counted;    /* bytes of q counted in ds->write_queued */
    bool ticking;
    bool close_after; /* the connection closes once q has gone out */
};

/** Output is held by the throttle (it is on, or still holds bytes). */
static inline bool lv_client_slowed(const struct lv_client_slow *s)
{
    return s && (s->rate || s->q.len);
}
/** A throttle for connection `arg` (off until lv_client_slow_rate); its timer is a handle
 *  the connection closes. */
struct lv_client_slow *lv_client_slow_new(uv_loop_t *loop, struct lv_downstream *ds,
                                          const struct lv_client_slow_ops *ops, void *arg);
/** Turns the throttle on at `rate` bytes a second (0 changes nothing). */
void lv_client_slow_rate(struct lv_client_slow *s, uint64_t rate);
/** Holds `n` bytes of output; they leave on the ticks. */
void lv_client_slow_hold(struct lv_client_slow *s, const char *p, size_t n);
/** Frees the throttle's memory once its timer is closed. */
void lv_client_slow_free(struct lv_client_slow *s);

#endif
