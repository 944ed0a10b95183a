/*
 * downstream: what a request sees of the client connection it serves. The connection (client.c)
 * owns the socket, TLS, its timers and the write queue; the request only reads the bytes the
 * connection buffered and hands response bytes back through these calls, so request code never
 * includes the connection's header and a test can serve a request over a fake downstream.
 */
#ifndef LV_PROXY_DOWNSTREAM_H
#define LV_PROXY_DOWNSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <uv.h>

#include "base/buf.h"
#include "base/gwerr.h"

struct lv_downstream;
struct lv_tunnel;

struct lv_downstream_ops {
    /* Queue bytes for the client; what the socket does not take now is copied. 0, or -1 when
     * the connection is gone. */
    int (*writev)(struct lv_downstream *d, const uv_buf_t *bufs, unsigned nbufs);
    /* Queue the bytes of `b` without copying: its memory goes with the write and `b` is left
     * empty. 0, or -1 when the connection is gone. */
    int (*write_buf)(struct lv_downstream *d, struct lv_buf *b);
    /* The request is finished; `close`: the connection must close after what is queued. */
    void (*done)(struct lv_downstream *d, bool close);
    /* The request consumed input: reading may resume. */
    void (*consumed)(struct lv_downstream *d);
    /* Close now, aborting the request (its lv_request_client_gone runs). */
    void (*abort)(struct lv_downstream *d);
    /* The head could not be parsed: answer `status`/`err` and close. */
    void (*refuse)(struct lv_downstream *d, int status, enum lv_gwerr err, const char *reason);
    /* Close now with a TCP reset (an injected `reset` fault at the client). */
    void (*reset)(struct lv_downstream *d);
    /* From now until the connection has written everything queued, output leaves at most
     * `rate` bytes a second (an injected `throttle` fault); 0 changes nothing. */
    void (*throttle)(struct lv_downstream *d, uint64_t rate);
    /* A tunnel (proxy/tunnel.h): the other side ended, so end ours (shutdown of the write side,
     * TLS close_notify first) once what is queued is out; reading goes on. */
    void (*shutdown)(struct lv_downstream *d);
};

/* Above this much queued output, producers stop reading their source; below a quarter of it
 * they resume. Small on purpose: the kernel's send buffer already keeps a fast client busy, and
 * what sits here is memory a slow reader holds (at most this plus one upstream read). */
#define LV_DOWNSTREAM_WRITE_HIGH (32 * 1024)

struct lv_downstream {
    const struct lv_downstream_ops *ops;
    struct lv_buf in;         /* bytes received and not consumed yet: the head, then the body */
    size_t write_queued;      /* bytes handed to the socket layer and not yet written */
    char peer[64];            /* client IP, for X-Forwarded-For and the log */
    bool tls;                 /* HTTPS: X-Forwarded-Proto */
    bool closed;              /* the connection is gone: writes fail */
    struct lv_tunnel *tunnel; /* set by a 101: the connection becomes a tunnel once the
                                 request ends (proxy/tunnel.h) */
};

static inline int lv_ds_write(struct lv_downstream *d, const char *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    return d->ops->writev(d, &b, 1);
}

#endif
