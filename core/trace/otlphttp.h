/*
 * otlphttp: the exporter's HTTP side (README "Tracing"): the collector URL, and one POST at a
 * time of an already encoded body over the project's upstream client (net/upstream: one
 * server, a keep-alive pool, TLS with SNI and verification for https). The response head is
 * checked with http/headscan and http/resphead, its body skipped with http/body; sizes from
 * the network are bounded. Runs on one loop (the exporter's thread); nothing here is shared.
 */
#ifndef LV_TRACE_OTLPHTTP_H
#define LV_TRACE_OTLPHTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

/* The default path of OTLP/HTTP traces, used when the URL has none. */
#define LV_OTLP_DEFAULT_PATH "/v1/traces"

struct lv_otlp_url {
    char *host; /* as written, IPv6 without its brackets */
    uint16_t port;
    bool tls;   /* https */
    bool ipv6;  /* host is an IPv6 literal (bracketed in Host) */
    char *path; /* starts with '/', may carry a query */
};

/**
 * Parses "http://host[:port][/path]" or "https://..." (scheme case-insensitive): host a DNS
 * name, an IPv4 literal or a bracketed IPv6 literal; port 1..65535, default 80 / 443; path
 * default LV_OTLP_DEFAULT_PATH. No user info, no fragment, no whitespace or control bytes.
 * Returns NULL and fills `out` (free it with lv_otlp_url_free), or a static text saying what is
 * wrong (`out` then holds nothing to free).
 */
const char *lv_otlp_url_parse(const char *url, struct lv_otlp_url *out);
void lv_otlp_url_free(struct lv_otlp_url *u);

struct lv_otlp_client;

/**
 * The outcome of a POST: `status` is the final HTTP status (100-599) of a response that was
 * read whole, or 0 when there was none (connect failure, timeout, reset, a malformed
 * response), `why` then says what happened ("connection refused", "timeout", ...).
 */
typedef void (*lv_otlp_done_cb)(void *arg, int status, const char *why);

/** A client for `u` on `loop` (the URL is copied). `tls_ca`: for https, a PEM CA file to
 *  trust instead of the system store (NULL). `connect_timeout_ms` bounds a connect. */
struct lv_otlp_client *lv_otlp_client_new(uv_loop_t *loop, const struct lv_otlp_url *u,
                                          const char *tls_ca, uint64_t connect_timeout_ms);

/**
 * POSTs `body[0..n)` (copied) as application/json; `cb` runs once, from the loop, within
 * about `timeout_ms` (connect to end of response). One POST at a time per client. A pooled
 * connection the collector had closed is retried once on a new one (not reported).
 */
void lv_otlp_post(struct lv_otlp_client *c, const char *body, size_t n, uint64_t timeout_ms,
                  lv_otlp_done_cb cb, void *arg);

/** True while a POST is under way. */
bool lv_otlp_busy(const struct lv_otlp_client *c);

/** Aborts the POST under way, if any: its callback will not run. */
void lv_otlp_cancel(struct lv_otlp_client *c);

/** Aborts any POST, closes the connections and frees the client once its handles are closed
 *  (the loop must run on). NULL is accepted. */
void lv_otlp_client_free(struct lv_otlp_client *c);

/** Connections opened so far (for tests: keep-alive reuse shows as few connects). */
uint64_t lv_otlp_client_connects(const struct lv_otlp_client *c);

#endif
