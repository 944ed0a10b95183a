/*
 * tls: a TLS engine over memory BIOs (OpenSSL 3), for client listeners (server side) and
 * upstream connections (client side). It never does I/O and knows nothing of libuv: the caller
 * hands it the ciphertext it read (lv_tls_feed) and the plaintext it wants sent (lv_tls_write),
 * and sends whatever the engine appended to `net_out`. So it sits under any byte stream, and a
 * test can pump two ends against each other in memory.
 *
 * A context (struct lv_tls_ctx) owns an SSL_CTX built from a listener's or an upstream's `tls`
 * block: TLS 1.2+, AEAD ciphers with forward secrecy, ALPN "http/1.1", no renegotiation, a
 * session cache (server), and a small resumption cache keyed by name (client). Contexts are
 * refcounted: each connection holds a reference, so a reload can drop the old context while
 * its connections finish. A connection (struct lv_tls) owns its SSL, its two BIOs, the
 * plaintext queued before the handshake completes, and its last error text.
 *
 * Every call clears the OpenSSL error queue before and after its work (so one connection's
 * errors never show up in another's), drains the write BIO completely into `net_out`, and
 * never blocks. Use one `net_out` per connection and send its bytes in order. Single-threaded:
 * one connection is used from one thread at a time (contexts may be shared by one loop).
 */
#ifndef LV_TLS_H
#define LV_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"

struct lv_tls_ctx;
struct lv_tls;

/**
 * Server context from a PEM certificate chain (leaf first) and a PEM private key. Returns NULL
 * and appends "FILE: reason" to `err` on failure (missing file, no certificate, key does not
 * match, passphrase-protected key: never prompts). The caller owns the one reference.
 */
struct lv_tls_ctx *lv_tls_server_ctx(const char *cert_file, const char *key_file,
                                     struct lv_buf *err);

/**
 * Client (upstream) context. `verify`: check the peer's chain and name (see lv_tls_new).
 * `ca_file`: PEM CA bundle to trust, or NULL for the system store. Returns NULL and appends
 * "FILE: reason" to `err` on failure. The caller owns the one reference.
 */
struct lv_tls_ctx *lv_tls_client_ctx(bool verify, const char *ca_file, struct lv_buf *err);

/** Drops one reference; the SSL_CTX goes when the last connection using it is freed. */
void lv_tls_ctx_free(struct lv_tls_ctx *ctx);
/** One more reference to `ctx` (any thread: workers share a listener's context). */
struct lv_tls_ctx *lv_tls_ctx_ref(struct lv_tls_ctx *ctx);

/**
 * A new connection on `ctx` (takes a reference to it). Server side: `server` true, `sni` NULL.
 * Client side: `sni` is the upstream's tls.sni or else the server's host; it is sent as SNI
 * (unless it is an IP address, which RFC 6066 forbids) and, when the context verifies, the
 * certificate must match it (host name, or IP address for a literal). A verifying client with
 * no name fails at lv_tls_start rather than accept any certificate the CA signed.
 * Never returns NULL (aborts on out-of-memory like lv_xmalloc).
 */
struct lv_tls *lv_tls_new(struct lv_tls_ctx *ctx, bool server, const char *sni);

/** Frees the connection (no close_notify: call lv_tls_shutdown first for a clean close). */
void lv_tls_free(struct lv_tls *t);

/** Receives plaintext from lv_tls_feed; `p` is valid only during the call. */
typedef void (*lv_tls_plain_cb)(void *arg, const char *p, size_t n);

/** A plain_cb that appends to the struct lv_buf `arg`: collect first, act after lv_tls_feed
 * returns (acting inside the callback could free the connection under the engine). */
void lv_tls_collect(void *arg, const char *p, size_t n);

/**
 * Ciphertext read from the network. Advances the handshake; once it completes, sends the
 * plaintext queued by lv_tls_write; decrypted application bytes go to `plain_cb` (possibly
 * several calls, NULL discards them); bytes for the peer (handshake, alerts, session tickets,
 * queued data) are appended to `net_out`. `plain_cb` may call lv_tls_write or lv_tls_shutdown
 * on this connection but must not free it.
 * Returns 0 (more bytes needed, or all consumed), 1 when the peer sent close_notify (no more
 * plaintext will come; the connection may still write), or -EPROTO on a fatal error: the text is
 * in lv_tls_error(), `net_out` may hold an alert worth sending before closing, and every later
 * call fails. An incomplete record or handshake message just waits for more bytes.
 */
int lv_tls_feed(struct lv_tls *t, const char *cipher, size_t n, lv_tls_plain_cb plain_cb, void *arg,
                struct lv_buf *net_out);

/**
 * Encrypts `n` plaintext bytes into `net_out`. Before the handshake completes the bytes are
 * queued inside (the caller bounds what it writes) and go out from the lv_tls_feed call that
 * completes it; if the handshake fails they are never sent. Returns 0, -EPROTO after a fatal
 * error, or -EPIPE after lv_tls_shutdown.
 */
int lv_tls_write(struct lv_tls *t, const char *plain, size_t n, struct lv_buf *net_out);

/**
 * Client: starts the handshake (ClientHello into `net_out`). Server: nothing to do. Calling it
 * twice is harmless. Returns 0 or -EPROTO (lv_tls_error() says why).
 */
int lv_tls_start(struct lv_tls *t, struct lv_buf *net_out);

bool lv_tls_handshake_done(const struct lv_tls *t);

/**
 * Appends close_notify to `net_out` once the handshake has completed (nothing otherwise, or
 * after a fatal error). Later writes fail; lv_tls_feed still reads until the peer's reply.
 */
void lv_tls_shutdown(struct lv_tls *t, struct lv_buf *net_out);

/**
 * The last fatal error, e.g. "certificate verify failed: hostname mismatch (expected
 * \"api.internal\", certificate subject \"CN=other\")" or "wrong version number"; "" if none.
 * Valid until the next call on `t`. Peer-supplied text in it is sanitised (printable ASCII).
 */
const char *lv_tls_error(const struct lv_tls *t);

/** After the handshake: "TLSv1.3" etc. and the ALPN protocol agreed ("" if none). */
const char *lv_tls_version(const struct lv_tls *t);
const char *lv_tls_alpn(const struct lv_tls *t);

/** After the handshake: whether the session was resumed (no full handshake). */
bool lv_tls_resumed(const struct lv_tls *t);

#endif
