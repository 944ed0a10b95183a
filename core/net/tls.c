#include "net/tls.h"

#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "base/addr.h"

/* TLS 1.2 suites: ECDHE only (forward secrecy), AEAD only. TLS 1.3 keeps OpenSSL's set. */
#define LV__TLS12_CIPHERS                                                                          \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"

#define LV__SESS_SLOTS    32    /* client resumption cache entries per context */
#define LV__READ_CHUNK    16384 /* one TLS record of plaintext */
#define LV__PEER_TEXT_MAX 120   /* cap on peer-supplied text copied into an error */

struct lv__tls_sess {
    char *name;
    SSL_SESSION *sess;
};

struct lv_tls_ctx {
    SSL_CTX *ctx;
    atomic_uint refs; /* connections of every worker share a listener's context */
    bool server;
    bool verify;
    unsigned sess_next;
    struct lv__tls_sess sess[LV__SESS_SLOTS];
};

struct lv_tls {
    struct lv_tls_ctx *ctx;
    SSL *ssl;
    BIO *rbio;           /* network -> OpenSSL (owned by ssl) */
    BIO *wbio;           /* OpenSSL -> network (owned by ssl) */
    struct lv_buf queue; /* plaintext written before the handshake completed */
    struct lv_buf err;   /* nul-terminated when len > 0 */
    char *name;          /* client: the name checked and used as the resumption key */
    char alpn[16];
    bool server;
    bool started;
    bool done;      /* handshake complete */
    bool failed;    /* fatal error seen: every later call fails */
    bool peer_shut; /* close_notify received */
    bool shut;      /* close_notify sent */
};

/* ---- small helpers */

/* Peer-controlled text goes into logs: keep printable ASCII only, bounded. */
static void put_sanitised(struct lv_buf *b, const char *s, size_t n)
{
    if (n > LV__PEER_TEXT_MAX)
        n = LV__PEER_TEXT_MAX;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        lv_buf_putc(b, (c >= 0x20 && c < 0x7f && c != '"' && c != '\\') ? (char)c : '?');
    }
}

/* Appends the reasons in the OpenSSL error queue (oldest first, distinct, at most 3) and
 * empties it. Returns how many were appended. */
static int put_err_queue(struct lv_buf *b, long verify_result, const struct lv_tls *t);

static void put_file_error(struct lv_buf *err, const char *file, const char *what)
{
    lv_buf_printf(err, "%s: %s", file, what);
    struct lv_buf why = LV_BUF_INIT;
    if (put_err_queue(&why, X509_V_OK, NULL) > 0)
        lv_buf_printf(err, " (%.*s)", (int)why.len, why.data);
    lv_buf_dispose(&why);
}

static bool file_readable(const char *file, struct lv_buf *err)
{
    FILE *f = fopen(file, "r");
    if (!f) {
        lv_buf_printf(err, "%s: %s", file, strerror(errno));
        return false;
    }
    fclose(f);
    return true;
}

/* A passphrase-protected key must fail, not prompt on the terminal (which would block). */
static int no_passphrase(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf, (void)size, (void)rwflag;
    *(bool *)userdata = true;
    return 0;
}

static SSL_CTX *new_ssl_ctx(bool server)
{
    SSL_CTX *c = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
    if (!c)
        return NULL;
    /* Do not rely on the distribution's openssl.cnf for the floor. */
    SSL_CTX_set_min_proto_version(c, TLS1_2_VERSION);
    SSL_CTX_set_options(c, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                               SSL_OP_CIPHER_SERVER_PREFERENCE);
    /* Idle pooled and keep-alive connections then hold no record buffers. */
    SSL_CTX_set_mode(c, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    if (SSL_CTX_set_cipher_list(c, LV__TLS12_CIPHERS) != 1) {
        SSL_CTX_free(c);
        return NULL;
    }
    return c;
}

static struct lv_tls_ctx *wrap_ctx(SSL_CTX *c, bool server, bool verify)
{
    struct lv_tls_ctx *x = lv_xcalloc(1, sizeof(*x));
    x->ctx = c;
    x->refs = 1;
    x->server = server;
    x->verify = verify;
    SSL_CTX_set_app_data(c, x);
    return x;
}

/* ---- server context */

/* ALPN: we speak HTTP/1.1 only. A client that offers ALPN without it cannot talk to us, and
 * RFC 7301 §3.2 says to refuse with no_application_protocol rather than guess. */
static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    unsigned i = 0;
    while (i < inlen) {
        unsigned l = in[i];
        if (l == 0 || l > inlen - i - 1)
            return SSL_TLSEXT_ERR_ALERT_FATAL;
        if (l == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + l;
    }
    return SSL_TLSEXT_ERR_ALERT_FATAL;
}

struct lv_tls_ctx *lv_tls_server_ctx(const char *cert_file, const char *key_file,
                                     struct lv_buf *err)
{
    ERR_clear_error();
    if (!file_readable(cert_file, err) || !file_readable(key_file, err))
        return NULL;
    SSL_CTX *c = new_ssl_ctx(true);
    if (!c) {
        put_file_error(err, cert_file, "cannot create a TLS context");
        return NULL;
    }
    bool asked = false;
    SSL_CTX_set_default_passwd_cb(c, no_passphrase);
    SSL_CTX_set_default_passwd_cb_userdata(c, &asked);
    if (SSL_CTX_use_certificate_chain_file(c, cert_file) != 1) {
        put_file_error(err, cert_file, "cannot load the PEM certificate chain");
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(c, key_file, SSL_FILETYPE_PEM) != 1) {
        unsigned long e = ERR_peek_last_error();
        if (asked) {
            ERR_clear_error();
            put_file_error(err, key_file, "the private key is passphrase-protected (unsupported)");
        } else if (ERR_GET_LIB(e) == ERR_LIB_X509 &&
                   ERR_GET_REASON(e) == X509_R_KEY_VALUES_MISMATCH) {
            ERR_clear_error();
            lv_buf_printf(err, "%s: the private key does not match the certificate in %s", key_file,
                          cert_file);
        } else {
            put_file_error(err, key_file, "cannot load the PEM private key");
        }
        goto fail;
    }
    if (SSL_CTX_check_private_key(c) != 1) {
        ERR_clear_error();
        lv_buf_printf(err, "%s: the private key does not match the certificate in %s", key_file,
                      cert_file);
        goto fail;
    }
    SSL_CTX_set_default_passwd_cb(c, NULL);
    SSL_CTX_set_default_passwd_cb_userdata(c, NULL);
    SSL_CTX_set_alpn_select_cb(c, alpn_select, NULL);
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_SERVER);
    SSL_CTX_set_session_id_context(c, (const unsigned char *)"levee", 5);
    SSL_CTX_sess_set_cache_size(c, 10240);
    ERR_clear_error();
    return wrap_ctx(c, true, false);
fail:
    SSL_CTX_free(c);
    ERR_clear_error();
    return NULL;
}

/* ---- client context */

static struct lv__tls_sess *find_session(struct lv_tls_ctx *x, const char *name)
{
    for (int i = 0; i < LV__SESS_SLOTS; i++)
        if (x->sess[i].name && strcmp(x->sess[i].name, name) == 0)
            return &x->sess[i];
    return NULL;
}

/*
 * Keeps the newest session per name so the next connection to that name can resume. We keep
 * a copy: OpenSSL marks a connection's own session unresumable when the connection is freed
 * without close_notify, a pre-TLS 1.1 rule (RFC 4346 dropped it) that would defeat
 * resumption for pooled upstream connections, which are usually just closed. A connection
 * that fails fatally drops its name's entry instead (see fail()).
 */
static int client_new_session(SSL *ssl, SSL_SESSION *sess)
{
    struct lv_tls *t = SSL_get_app_data(ssl);
    if (!t || !t->name)
        return 0;
    SSL_SESSION *copy = SSL_SESSION_dup(sess);
    if (!copy)
        return 0;
    struct lv_tls_ctx *x = t->ctx;
    struct lv__tls_sess *slot = find_session(x, t->name);
    if (!slot) {
        slot = &x->sess[x->sess_next];
        x->sess_next = (x->sess_next + 1) % LV__SESS_SLOTS;
        free(slot->name);
        slot->name = lv_xstrdup(t->name);
    }
    if (slot->sess)
        SSL_SESSION_free(slot->sess);
    slot->sess = copy;
    return 0; /* OpenSSL keeps its own reference to `sess` */
}

struct lv_tls_ctx *lv_tls_client_ctx(bool verify, const char *ca_file, struct lv_buf *err)
{
    ERR_clear_error();
    if (ca_file && !file_readable(ca_file, err))
        return NULL;
    SSL_CTX *c = new_ssl_ctx(false);
    if (!c) {
        put_file_error(err, ca_file ? ca_file : "tls", "cannot create a TLS context");
        return NULL;
    }
    if (verify) {
        SSL_CTX_set_verify(c, SSL_VERIFY_PEER, NULL);
        SSL_CTX_set_verify_depth(c, 10);
    } else {
        SSL_CTX_set_verify(c, SSL_VERIFY_NONE, NULL);
    }
    /* The CA file is loaded even with verify off, so a broken path is reported at load time. */
    if (ca_file) {
        if (SSL_CTX_load_verify_locations(c, ca_file, NULL) != 1) {
            put_file_error(err, ca_file, "cannot load CA certificates");
            SSL_CTX_free(c);
            ERR_clear_error();
            return NULL;
        }
    } else if (verify && SSL_CTX_set_default_verify_paths(c) != 1) {
        put_file_error(err, "system CA store", "cannot load");
        SSL_CTX_free(c);
        ERR_clear_error();
        return NULL;
    }
    /* set_alpn_protos returns 0 on success. */
    if (SSL_CTX_set_alpn_protos(c, (const unsigned char *)"\x08http/1.1", 9) != 0) {
        put_file_error(err, "tls", "cannot set ALPN");
        SSL_CTX_free(c);
        ERR_clear_error();
        return NULL;
    }
    SSL_CTX_set_session_cache_mode(c, SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
    SSL_CTX_sess_set_new_cb(c, client_new_session);
    ERR_clear_error();
    return wrap_ctx(c, false, verify);
}

struct lv_tls_ctx *lv_tls_ctx_ref(struct lv_tls_ctx *x)
{
    atomic_fetch_add(&x->refs, 1);
    return x;
}

void lv_tls_ctx_free(struct lv_tls_ctx *x)
{
    if (!x || atomic_fetch_sub(&x->refs, 1) > 1)
        return;
    for (int i = 0; i < LV__SESS_SLOTS; i++) {
        free(x->sess[i].name);
        if (x->sess[i].sess)
            SSL_SESSION_free(x->sess[i].sess);
    }
    SSL_CTX_free(x->ctx);
    free(x);
}

/* ---- errors */

/* Names the certificate the peer presented (SAN DNS names, else the subject), so a mismatch
 * says what was actually served. */
static void put_peer_names(struct lv_buf *b, SSL *ssl)
{
    /* After a failed verification the peer certificate is not recorded, but the chain is
     * (client side: leaf first). */
    X509 *cert = SSL_get0_peer_certificate(ssl);
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(ssl);
    if (!cert && chain && sk_X509_num(chain) > 0)
        cert = sk_X509_value(chain, 0);
    if (!cert)
        return;
    GENERAL_NAMES *sans = X509_get_ext_d2i(cert, NID_subject_alt_name, NULL, NULL);
    int shown = 0;
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans) && shown < 4; i++) {
        const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
        if (g->type != GEN_DNS)
            continue;
        lv_buf_puts(b, shown ? ", \"" : ", certificate names \"");
        put_sanitised(b, (const char *)ASN1_STRING_get0_data(g->d.dNSName),
                      (size_t)ASN1_STRING_length(g->d.dNSName));
        lv_buf_putc(b, '"');
        shown++;
    }
    GENERAL_NAMES_free(sans);
    if (shown == 0) {
        char subj[256];
        X509_NAME_oneline(X509_get_subject_name(cert), subj, sizeof(subj));
        lv_buf_puts(b, ", certificate subject \"");
        put_sanitised(b, subj, strlen(subj));
        lv_buf_putc(b, '"');
    }
}

static void put_verify_failure(struct lv_buf *b, long vr, const struct lv_tls *t)
{
    lv_buf_puts(b, "certificate verify failed: ");
    lv_buf_puts(b, X509_verify_cert_error_string(vr));
    if (t && t->name &&
        (vr == X509_V_ERR_HOSTNAME_MISMATCH || vr == X509_V_ERR_IP_ADDRESS_MISMATCH)) {
        lv_buf_puts(b, " (expected \"");
        put_sanitised(b, t->name, strlen(t->name));
        lv_buf_putc(b, '"');
        put_peer_names(b, t->ssl);
        lv_buf_putc(b, ')');
    }
}

static int put_err_queue(struct lv_buf *b, long verify_result, const struct lv_tls *t)
{
    unsigned long seen[3] = {0, 0, 0};
    int n = 0;
    unsigned long e;
    while ((e = ERR_get_error()) != 0) {
        if (n == 3)
            continue; /* keep draining */
        bool dup = false;
        for (int i = 0; i < n; i++)
            dup |= seen[i] == e;
        if (dup)
            continue;
        seen[n] = e;
        if (n++)
            lv_buf_puts(b, "; ");
        if (ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_CERTIFICATE_VERIFY_FAILED &&
            verify_result != X509_V_OK) {
            put_verify_failure(b, verify_result, t);
            continue;
        }
        const char *r = ERR_reason_error_string(e);
        if (r) {
            lv_buf_puts(b, r);
        } else {
            char tmp[256];
            ERR_error_string_n(e, tmp, sizeof(tmp));
            lv_buf_puts(b, tmp);
        }
    }
    return n;
}

static void set_error_text(struct lv_tls *t, const char *text)
{
    lv_buf_reset(&t->err);
    lv_buf_puts(&t->err, text);
    lv_buf_putc(&t->err, '\0');
    t->err.len--;
}

/* Records a fatal error from the OpenSSL call that returned `ssl_err`; always returns -EPROTO. */
static int fail(struct lv_tls *t, int ssl_err)
{
    t->failed = true;
    if (t->name && t->done) {
        /* Something went wrong mid-stream: do not resume that session elsewhere. */
        struct lv__tls_sess *s = find_session(t->ctx, t->name);
        if (s && s->sess) {
            SSL_SESSION_free(s->sess);
            s->sess = NULL;
        }
    }
    lv_buf_reset(&t->err);
    long vr = t->ctx->verify ? SSL_get_verify_result(t->ssl) : X509_V_OK;
    if (put_err_queue(&t->err, vr, t) == 0) {
        if (vr != X509_V_OK)
            put_verify_failure(&t->err, vr, t);
        else if (ssl_err == SSL_ERROR_SYSCALL)
            lv_buf_puts(&t->err, "unexpected end of the TLS stream");
        else
            lv_buf_printf(&t->err, "TLS error %d", ssl_err);
    }
    lv_buf_putc(&t->err, '\0');
    t->err.len--;
    return -EPROTO;
}

/* ---- connections */

struct lv_tls *lv_tls_new(struct lv_tls_ctx *x, bool server, const char *sni)
{
    struct lv_tls *t = lv_xcalloc(1, sizeof(*t));
    atomic_fetch_add(&x->refs, 1);
    t->ctx = x;
    t->server = server;
    ERR_clear_error();
    t->ssl = SSL_new(x->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (!t->ssl || !t->rbio || !t->wbio) {
        /* OpenSSL allocation failure: out of memory, same policy as lv_xmalloc. */
        fprintf(stderr, "levee: out of memory (TLS)\n");
        abort();
    }
    /* An empty read BIO means "wait for more", never end of stream. */
    BIO_set_mem_eof_return(t->rbio, -1);
    BIO_set_mem_eof_return(t->wbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_app_data(t->ssl, t);
    if (server != x->server) {
        set_error_text(t, "internal: TLS context used for the wrong side");
        t->failed = true;
        return t;
    }
    if (server) {
        SSL_set_accept_state(t->ssl);
        return t;
    }
    SSL_set_connect_state(t->ssl);
    if (sni && *sni) {
        /* "[::1]" -> "::1"; "host." -> "host" (SNI carries no trailing dot). */
        size_t n = strlen(sni);
        if (n >= 2 && sni[0] == '[' && sni[n - 1] == ']')
            sni++, n -= 2;
        else if (n >= 2 && sni[n - 1] == '.')
            n--;
        t->name = lv_xstrndup(sni, n);
    }
    if (!t->name) {
        if (x->verify) {
            set_error_text(t, "certificate verify: no host name to check the certificate against");
            t->failed = true;
        }
        return t;
    }
    bool is_ip = lv_addr_ip_family(t->name) != AF_UNSPEC;
    int ok = 1;
    if (!is_ip)
        ok = (int)SSL_set_tlsext_host_name(t->ssl, t->name);
    if (ok == 1 && x->verify) {
        X509_VERIFY_PARAM *vp = SSL_get0_param(t->ssl);
        if (is_ip) {
            ok = X509_VERIFY_PARAM_set1_ip_asc(vp, t->name);
        } else {
            X509_VERIFY_PARAM_set_hostflags(vp, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
            ok = X509_VERIFY_PARAM_set1_host(vp, t->name, 0);
        }
    }
    if (ok != 1) {
        ERR_clear_error();
        struct lv_buf msg = LV_BUF_INIT;
        lv_buf_puts(&msg, "invalid TLS server name \"");
        put_sanitised(&msg, t->name, strlen(t->name));
        lv_buf_puts(&msg, "\"");
        lv_buf_putc(&msg, '\0');
        set_error_text(t, msg.data);
        lv_buf_dispose(&msg);
        t->failed = true;
        return t;
    }
    struct lv__tls_sess *s = find_session(x, t->name);
    if (s && s->sess && SSL_SESSION_is_resumable(s->sess))
        SSL_set_session(t->ssl, s->sess);
    ERR_clear_error();
    return t;
}

void lv_tls_free(struct lv_tls *t)
{
    if (!t)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    lv_buf_dispose(&t->queue);
    lv_buf_dispose(&t->err);
    free(t->name);
    lv_tls_ctx_free(t->ctx);
    free(t);
    ERR_clear_error();
}

/* Moves everything OpenSSL produced into net_out. Returns the number of bytes moved. */
static size_t drain(struct lv_tls *t, struct lv_buf *net_out)
{
    size_t total = 0;
    size_t pending;
    while ((pending = BIO_ctrl_pending(t->wbio)) > 0) {
        char *dst = lv_buf_reserve(net_out, pending);
        size_t got = 0;
        if (BIO_read_ex(t->wbio, dst, pending, &got) != 1 || got == 0)
            break;
        net_out->len += got;
        total += got;
    }
    return total;
}

/* Sends the queued plaintext. Returns 0 (all sent, or OpenSSL wants input first) or -EPROTO. */
static int flush_queue(struct lv_tls *t, struct lv_buf *net_out)
{
    while (t->queue.len > 0) {
        size_t w = 0;
        int r = SSL_write_ex(t->ssl, t->queue.data, t->queue.len, &w);
        if (r == 1) {
            lv_buf_consume(&t->queue, w);
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return 0; /* retried from the next lv_tls_feed */
        /* A memory BIO never fills: WANT_WRITE only needs the output moved out. */
        if (e == SSL_ERROR_WANT_WRITE && drain(t, net_out) > 0)
            continue;
        return fail(t, e);
    }
    lv_buf_dispose(&t->queue);
    return 0;
}

static void on_handshake_done(struct lv_tls *t)
{
    t->done = true;
    const unsigned char *p = NULL;
    unsigned int n = 0;
    SSL_get0_alpn_selected(t->ssl, &p, &n);
    struct lv_buf a = LV_BUF_INIT;
    if (n > 0 && n < sizeof(t->alpn))
        put_sanitised(&a, (const char *)p, n);
    memcpy(t->alpn, a.data ? a.data : "", a.len);
    t->alpn[a.len] = '\0';
    lv_buf_dispose(&a);
}

/* Runs the handshake as far as the input allows. Returns 0 or -EPROTO. */
static int handshake(struct lv_tls *t, struct lv_buf *net_out)
{
    t->started = true;
    for (;;) {
        int r = SSL_do_handshake(t->ssl);
        if (r == 1) {
            on_handshake_done(t);
            return 0;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            return 0;
        if (e == SSL_ERROR_WANT_WRITE && drain(t, net_out) > 0)
            continue;
        return fail(t, e);
    }
}

void lv_tls_collect(void *arg, const char *p, size_t n)
{
    lv_buf_append(arg, p, n);
}

int lv_tls_feed(struct lv_tls *t, const char *cipher, size_t n, lv_tls_plain_cb plain_cb, void *arg,
                struct lv_buf *net_out)
{
    if (t->failed)
        return -EPROTO;
    /* After close_notify nothing more is read: do not let the input BIO grow. */
    if (t->peer_shut)
        return 1;
    ERR_clear_error();
    int rc = 0;
    if (n > 0) {
        size_t w = 0;
        if (BIO_write_ex(t->rbio, cipher, n, &w) != 1 || w != n) {
            rc = fail(t, SSL_ERROR_SSL);
            goto out;
        }
    }
    if (!t->done) {
        if (handshake(t, net_out) < 0 || !t->done) {
            rc = t->failed ? -EPROTO : 0;
            goto out;
        }
    }
    if (flush_queue(t, net_out) < 0) {
        rc = -EPROTO;
        goto out;
    }
    char plain[LV__READ_CHUNK];
    for (;;) {
        size_t got = 0;
        int r = SSL_read_ex(t->ssl, plain, sizeof(plain), &got);
        if (r == 1) {
            if (plain_cb)
                plain_cb(arg, plain, got);
            if (t->failed) { /* plain_cb wrote and that failed */
                rc = -EPROTO;
                break;
            }
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        if (e == SSL_ERROR_WANT_WRITE && drain(t, net_out) > 0)
            continue;
        if (e == SSL_ERROR_ZERO_RETURN) {
            t->peer_shut = true;
            rc = 1;
            break;
        }
        rc = fail(t, e);
        break;
    }
    /* A renegotiation refusal or key update may have left queued bytes unsent. */
    if (rc == 0 && t->queue.len > 0 && flush_queue(t, net_out) < 0)
        rc = -EPROTO;
out:
    drain(t, net_out);
    ERR_clear_error();
    return rc;
}

int lv_tls_write(struct lv_tls *t, const char *plain, size_t n, struct lv_buf *net_out)
{
    if (t->failed)
        return -EPROTO;
    if (t->shut) {
        set_error_text(t, "write after TLS shutdown");
        return -EPIPE;
    }
    lv_buf_append(&t->queue, plain, n);
    if (!t->done)
        return 0;
    ERR_clear_error();
    int rc = flush_queue(t, net_out);
    drain(t, net_out);
    ERR_clear_error();
    return rc;
}

int lv_tls_start(struct lv_tls *t, struct lv_buf *net_out)
{
    if (t->failed)
        return -EPROTO;
    if (t->server || t->started)
        return 0;
    ERR_clear_error();
    int rc = handshake(t, net_out);
    drain(t, net_out);
    ERR_clear_error();
    return rc;
}

bool lv_tls_handshake_done(const struct lv_tls *t)
{
    return t->done;
}

void lv_tls_shutdown(struct lv_tls *t, struct lv_buf *net_out)
{
    if (t->failed || !t->done || t->shut)
        return;
    t->shut = true;
    ERR_clear_error();
    /* 0 means "sent, the peer's has not arrived": fine, we do not wait for it here. */
    (void)SSL_shutdown(t->ssl);
    drain(t, net_out);
    ERR_clear_error();
}

const char *lv_tls_error(const struct lv_tls *t)
{
    return t->err.len ? t->err.data : "";
}

const char *lv_tls_version(const struct lv_tls *t)
{
    return t->done ? SSL_get_version(t->ssl) : "";
}

const char *lv_tls_alpn(const struct lv_tls *t)
{
    return t->alpn;
}

bool lv_tls_resumed(const struct lv_tls *t)
{
    return t->done && SSL_session_reused(t->ssl) == 1;
}
