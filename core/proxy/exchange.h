/*
 * exchange: the response side of one HTTP/1 exchange with an upstream. Bytes read from the
 * upstream connection go in; the response comes out as callbacks: interim heads, the final
 * head, de-framed body bytes, then the end. No sockets and no timers here, so every split of
 * a response and every error can be tested byte by byte.
 *
 * The first read usually holds the whole head: it is scanned in place and only the head is
 * copied, so the body bytes after it reach the client without a copy (the data callback gets
 * pointers into the read block, valid until lv_exchange_feed returns).
 */
#ifndef LV_PROXY_EXCHANGE_H
#define LV_PROXY_EXCHANGE_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"
#include "http/body.h"
#include "http/headscan.h"
#include "http/resphead.h"

/* Largest response head accepted from an upstream. */
#define LV_EXCHANGE_MAX_HEAD (64 * 1024)

struct lv_exchange_sink {
    /* A 1xx head other than 101 (the final head follows). */
    void (*interim)(void *arg, const struct lv_resphead *h);
    /* The final head. Returns true to take its body; false when the caller let the exchange
     * go (a retry drops this response): lv_exchange_feed then returns LV_EXCHANGE_LET_GO. */
    bool (*head)(void *arg, const struct lv_resphead *h);
    /* Body bytes, de-framed. */
    void (*data)(void *arg, const char *p, size_t n);
};

enum lv_exchange_rc {
    LV_EXCHANGE_MORE,     /* more bytes wanted */
    LV_EXCHANGE_DONE,     /* the response is complete (see `reusable`) */
    LV_EXCHANGE_LET_GO,   /* the head callback declined the response */
    LV_EXCHANGE_BAD_HEAD, /* no usable head: `reason` says why (a protocol error) */
    LV_EXCHANGE_BAD_BODY, /* the body's framing broke after the head: `reason` */
    LV_EXCHANGE_UPGRADE,  /* a 101 to an upgrade request was taken: tail_p/tail_n follow it */
};

struct lv_exchange {
    struct lv_buf head; /* the head's bytes (and what followed, when a read split it) */
    struct lv_headscan hs;
    struct lv_body dec;
    const char *after_p; /* bytes of this read after the head, not copied into `head` */
    size_t after_n;
    const char *reason; /* static text, for BAD_HEAD / BAD_BODY */
    bool head_request;  /* the request was HEAD: no body whatever the headers say */
    bool started;       /* the final head was taken: body bytes follow */
    bool until_eof;     /* the body ends when the upstream closes */
    bool reusable;      /* on DONE: the connection may serve another request */
    bool upgrade;       /* the request asked to upgrade: a 101 is its final head (else 502) */
    const char *tail_p; /* on UPGRADE: the bytes after the 101 head (the other protocol's), */
    size_t tail_n;      /* valid until lv_exchange_feed returns */
};

/** Ready for a new response (a new attempt); keeps the head buffer's memory. Clears
 *  `upgrade` (the caller sets it after). */
void lv_exchange_start(struct lv_exchange *ex, bool head_request);
/** Bytes read from the upstream. */
enum lv_exchange_rc lv_exchange_feed(struct lv_exchange *ex, const char *data, size_t n,
                                     const struct lv_exchange_sink *sink, void *arg);
/** The upstream closed its side after the final head: DONE for a body that ends at close,
 *  else BAD_BODY (truncated). */
enum lv_exchange_rc lv_exchange_eof(struct lv_exchange *ex);
/** Frees the head buffer. */
void lv_exchange_dispose(struct lv_exchange *ex);

#endif
