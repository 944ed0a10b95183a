/*
 * test_net_tls: the TLS engine (net/tls.h) with a client and a server end pumped against
 * each other in memory. Certificates come from a throwaway CA made with the openssl command
 * line in a temporary directory at start.
 */
#include <errno.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "net/tls.h"
#include "certs.h"
#include "t.h"

static void make_certs(void)
{
    certs_dir("lv-tls");
    sh("openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -noenc"
       " -keyout ca.key -out ca.pem -days 2 -subj '/CN=levee test CA'"
       " -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign");
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out srv.key");
    sh("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out other.key");
    sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' >localhost.ext");
    sh("printf 'subjectAltName=DNS:wrong.example\\n' >wrong.ext");
    sh("openssl req -new -key srv.key -subj /CN=localhost -out localhost.csr");
    sh("openssl req -new -key srv.key -subj /CN=wrong.example -out wrong.csr");
    sh("openssl x509 -req -in localhost.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
       " -extfile localhost.ext -out localhost.pem");
    sh("openssl x509 -req -in wrong.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
       " -extfile wrong.ext -out wrong.pem");
    /* The served file is a chain (leaf then CA), as deployments usually have. */
    sh("cat localhost.pem ca.pem >localhost-chain.pem");
    sh("openssl pkey -in srv.key -aes128 -passout pass:secret -out enc.key");
    sh("printf 'not a certificate\\n' >garbage.pem");
}

/* ---- two ends in memory */

struct end {
    struct lv_tls *t;
    struct lv_buf out; /* bytes for the peer */
    struct lv_buf got; /* plaintext received */
    int rc;            /* last lv_tls_feed result */
    int feeds;
};

static void on_plain(void *arg, const char *p, size_t n)
{
    struct end *e = arg;
    lv_buf_append(&e->got, p, n);
}

/* Moves bytes between the ends, at most `chunk` per feed, until neither has anything to send.
 * Returns 0, or -1 as soon as a feed fails. */
static int pump(struct end *a, struct end *b, size_t chunk)
{
    for (int guard = 0; guard < 1000000; guard++) {
        struct end *from = a->out.len ? a : b->out.len ? b : NULL;
        if (!from)
            return 0;
        struct end *to = from == a ? b : a;
        size_t n = from->out.len < chunk ? from->out.len : chunk;
        struct lv_buf piece = LV_BUF_INIT;
        lv_buf_append(&piece, from->out.data, n);
        lv_buf_consume(&from->out, n);
        to->rc = lv_tls_feed(to->t, piece.data, n, on_plain, to, &to->out);
        to->feeds++;
        lv_buf_dispose(&piece);
        if (to->rc < 0)
            return -1;
    }
    return -2;
}

static void end_dispose(struct end *e)
{
    lv_tls_free(e->t);
    lv_buf_dispose(&e->out);
    lv_buf_dispose(&e->got);
    memset(e, 0, sizeof(*e));
}

static struct lv_tls_ctx *server_ctx(const char *cert)
{
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *x = lv_tls_server_ctx(P(cert), P("srv.key"), &err);
    if (!x)
        fprintf(stderr, "server ctx: %.*s\n", (int)err.len, err.data);
    lv_buf_dispose(&err);
    return x;
}

static struct lv_tls_ctx *client_ctx(bool verify, const char *ca)
{
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *x = lv_tls_client_ctx(verify, ca ? P(ca) : NULL, &err);
    if (!x)
        fprintf(stderr, "client ctx: %.*s\n", (int)err.len, err.data);
    lv_buf_dispose(&err);
    return x;
}

static bool contains(const char *hay, const char *needle)
{
    return hay && strstr(hay, needle) != NULL;
}

static bool mem_contains(const char *hay, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(hay + i, needle, m) == 0)
            return true;
    return false;
}

/* Connects a client end (name `sni`) to a server end; returns the pump result. */
static int connect_pair(struct lv_tls_ctx *cc, struct lv_tls_ctx *sc, const char *sni,
                        struct end *c, struct end *s, size_t chunk)
{
    memset(c, 0, sizeof(*c));
    memset(s, 0, sizeof(*s));
    c->t = lv_tls_new(cc, false, sni);
    s->t = lv_tls_new(sc, true, NULL);
    if (lv_tls_start(c->t, &c->out) < 0)
        return -1;
    return pump(c, s, chunk);
}

/* ---- tests */

T_TEST(handshake_and_data_both_ways)
{
    struct lv_tls_ctx *sc = server_ctx("localhost-chain.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    T_CHECK(sc && cc);
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_handshake_done(c.t));
    T_CHECK(lv_tls_handshake_done(s.t));
    T_CHECK_STR(lv_tls_version(c.t), "TLSv1.3");
    T_CHECK_STR(lv_tls_alpn(c.t), "http/1.1");
    T_CHECK_STR(lv_tls_alpn(s.t), "http/1.1");
    T_CHECK_STR(lv_tls_error(c.t), "");
    T_CHECK_STR(lv_tls_error(s.t), "");

    const char *req = "GET /secret-marker HTTP/1.1\r\nHost: localhost\r\n\r\n";
    T_CHECK_INT(lv_tls_write(c.t, req, strlen(req), &c.out), 0);
    T_CHECK(c.out.len > strlen(req));
    T_CHECK(!mem_contains(c.out.data, c.out.len, "secret-marker")); /* encrypted on the wire */
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK_INT(s.got.len, strlen(req));
    T_CHECK(s.got.len == strlen(req) && memcmp(s.got.data, req, s.got.len) == 0);

    const char *resp = "HTTP/1.1 204 No Content\r\n\r\n";
    T_CHECK_INT(lv_tls_write(s.t, resp, strlen(resp), &s.out), 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK_INT(c.got.len, strlen(resp));
    T_CHECK(c.got.len == strlen(resp) && memcmp(c.got.data, resp, c.got.len) == 0);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(handshake_byte_at_a_time)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1), 0);
    T_CHECK(lv_tls_handshake_done(c.t) && lv_tls_handshake_done(s.t));
    T_CHECK(s.feeds > 100); /* really fed one byte at a time */
    T_CHECK_INT(lv_tls_write(c.t, "ping", 4, &c.out), 0);
    T_CHECK_INT(pump(&c, &s, 1), 0);
    T_CHECK(s.got.len == 4 && memcmp(s.got.data, "ping", 4) == 0);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

static void fill_pattern(char *p, size_t n, unsigned seed)
{
    for (size_t i = 0; i < n; i++) {
        seed = seed * 1103515245u + 12345u;
        p[i] = (char)(seed >> 16);
    }
}

T_TEST(one_mib_each_way_in_chunks)
{
    enum { MIB = 1 << 20, PIECE = 10000 };
    char *up = malloc(MIB), *down = malloc(MIB);
    fill_pattern(up, MIB, 1);
    fill_pattern(down, MIB, 2);
    struct lv_tls_ctx *sc = server_ctx("localhost-chain.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c = {0}, s = {0};
    c.t = lv_tls_new(cc, false, "localhost");
    s.t = lv_tls_new(sc, true, NULL);
    /* The first half is written before the handshake: queued, then flushed when it is done. */
    size_t off = 0;
    for (; off < MIB / 2; off += PIECE)
        T_CHECK_INT(
            lv_tls_write(c.t, up + off, MIB / 2 - off < PIECE ? MIB / 2 - off : PIECE, &c.out), 0);
    T_CHECK_INT(c.out.len, 0);
    T_CHECK_INT(lv_tls_start(c.t, &c.out), 0);
    T_CHECK(c.out.len > 0 && c.out.len < 4096); /* a ClientHello, not the queued data */
    T_CHECK_INT(pump(&c, &s, 4096), 0);
    T_CHECK(lv_tls_handshake_done(c.t));
    T_CHECK_INT(s.got.len, MIB / 2);
    for (off = MIB / 2; off < MIB; off += PIECE) {
        T_CHECK_INT(lv_tls_write(c.t, up + off, MIB - off < PIECE ? MIB - off : PIECE, &c.out), 0);
        T_CHECK_INT(pump(&c, &s, 7001), 0);
    }
    for (off = 0; off < MIB; off += PIECE)
        T_CHECK_INT(lv_tls_write(s.t, down + off, MIB - off < PIECE ? MIB - off : PIECE, &s.out),
                    0);
    T_CHECK_INT(pump(&c, &s, 65536), 0);
    T_CHECK_INT(s.got.len, MIB);
    T_CHECK_INT(c.got.len, MIB);
    T_CHECK(s.got.len == MIB && memcmp(s.got.data, up, MIB) == 0);
    T_CHECK(c.got.len == MIB && memcmp(c.got.data, down, MIB) == 0);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
    free(up);
    free(down);
}

T_TEST(verify_hostname_mismatch_fails_before_any_request_byte)
{
    struct lv_tls_ctx *sc = server_ctx("wrong.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c = {0}, s = {0};
    c.t = lv_tls_new(cc, false, "localhost");
    s.t = lv_tls_new(sc, true, NULL);
    T_CHECK_INT(lv_tls_write(c.t, "POST /pay HTTP/1.1\r\n\r\n", 22, &c.out), 0);
    T_CHECK_INT(lv_tls_start(c.t, &c.out), 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), -1);
    T_CHECK_INT(c.rc, -EPROTO);
    T_CHECK(!lv_tls_handshake_done(c.t));
    const char *e = lv_tls_error(c.t);
    T_CHECK(contains(e, "certificate verify failed"));
    T_CHECK(contains(e, "hostname mismatch"));
    T_CHECK(contains(e, "\"localhost\""));     /* the name we wanted */
    T_CHECK(contains(e, "\"wrong.example\"")); /* the name the certificate has */
    /* The client's alert reaches the server, which fails too; no request byte ever arrived. */
    T_CHECK(c.out.len > 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), -1);
    T_CHECK_INT(s.rc, -EPROTO);
    T_CHECK(contains(lv_tls_error(s.t), "alert"));
    T_CHECK_INT(s.got.len, 0);
    /* Failed is final. */
    T_CHECK_INT(lv_tls_feed(c.t, "x", 1, on_plain, &c, &c.out), -EPROTO);
    T_CHECK_INT(lv_tls_write(c.t, "x", 1, &c.out), -EPROTO);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(verify_without_the_ca_fails)
{
    struct lv_tls_ctx *sc = server_ctx("localhost-chain.pem");
    struct lv_tls_ctx *cc = client_ctx(true, NULL); /* system store: our CA is not in it */
    T_CHECK(cc != NULL);
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), -1);
    T_CHECK_INT(c.rc, -EPROTO);
    T_CHECK(contains(lv_tls_error(c.t), "certificate verify failed: "));
    T_CHECK(!contains(lv_tls_error(c.t), "hostname")); /* the chain, not the name, is at fault */
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(verify_off_accepts_any_certificate)
{
    struct lv_tls_ctx *sc = server_ctx("wrong.pem");
    struct lv_tls_ctx *cc = client_ctx(false, NULL);
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_handshake_done(c.t));
    T_CHECK_INT(lv_tls_write(c.t, "hi", 2, &c.out), 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK(s.got.len == 2 && memcmp(s.got.data, "hi", 2) == 0);
    end_dispose(&c);
    end_dispose(&s);
    /* verify off with no name at all is fine too (nothing to check). */
    T_CHECK_INT(connect_pair(cc, sc, NULL, &c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_handshake_done(c.t));
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(ip_address_names)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "127.0.0.1", &c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_handshake_done(c.t));
    end_dispose(&c);
    end_dispose(&s);
    T_CHECK_INT(connect_pair(cc, sc, "127.0.0.2", &c, &s, 1 << 20), -1);
    T_CHECK(contains(lv_tls_error(c.t), "IP address mismatch"));
    T_CHECK(contains(lv_tls_error(c.t), "127.0.0.2"));
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(verifying_client_without_a_name_refuses_to_start)
{
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct lv_tls *t = lv_tls_new(cc, false, NULL);
    struct lv_buf out = LV_BUF_INIT;
    T_CHECK_INT(lv_tls_start(t, &out), -EPROTO);
    T_CHECK_INT(out.len, 0);
    T_CHECK(contains(lv_tls_error(t), "no host name"));
    lv_tls_free(t);
    lv_buf_dispose(&out);
    lv_tls_ctx_free(cc);
}

T_TEST(close_notify_both_ways)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), 0);
    lv_tls_shutdown(c.t, &c.out);
    T_CHECK(c.out.len > 0);
    T_CHECK_INT(lv_tls_write(c.t, "late", 4, &c.out), -EPIPE);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK_INT(s.rc, 1);
    /* Half-close: the server may still answer, then closes too. */
    T_CHECK_INT(lv_tls_write(s.t, "bye", 3, &s.out), 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK(c.got.len == 3 && memcmp(c.got.data, "bye", 3) == 0);
    lv_tls_shutdown(s.t, &s.out);
    T_CHECK(s.out.len > 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK_INT(c.rc, 1);
    /* Bytes after close_notify are ignored, not buffered. */
    T_CHECK_INT(lv_tls_feed(s.t, "junk", 4, on_plain, &s, &s.out), 1);
    T_CHECK_INT(s.got.len, 0);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(shutdown_before_handshake_sends_nothing)
{
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct lv_tls *t = lv_tls_new(cc, false, "localhost");
    struct lv_buf out = LV_BUF_INIT;
    lv_tls_shutdown(t, &out);
    T_CHECK_INT(out.len, 0);
    lv_tls_free(t);
    lv_buf_dispose(&out);
    lv_tls_ctx_free(cc);
}

T_TEST(garbage_to_the_server_fails_cleanly)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_buf out = LV_BUF_INIT;

    /* Plain HTTP on the TLS port. */
    struct lv_tls *t = lv_tls_new(sc, true, NULL);
    const char *http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    T_CHECK_INT(lv_tls_feed(t, http, strlen(http), on_plain, NULL, &out), -EPROTO);
    T_CHECK(contains(lv_tls_error(t), "http request"));
    T_CHECK_INT(lv_tls_feed(t, http, strlen(http), on_plain, NULL, &out), -EPROTO);
    T_CHECK_INT(ERR_peek_error(), 0); /* nothing left behind for the next connection */
    lv_tls_free(t);

    /* A handshake record header claiming 65535 bytes: refused from the header alone. */
    t = lv_tls_new(sc, true, NULL);
    T_CHECK_INT(lv_tls_feed(t, "\x16\x03\x01\xff\xff", 5, on_plain, NULL, &out), -EPROTO);
    T_CHECK(lv_tls_error(t)[0] != '\0');
    lv_tls_free(t);

    /* Random bytes. */
    char junk[4096];
    fill_pattern(junk, sizeof(junk), 7);
    junk[0] = (char)0xff;
    t = lv_tls_new(sc, true, NULL);
    T_CHECK_INT(lv_tls_feed(t, junk, sizeof(junk), on_plain, NULL, &out), -EPROTO);
    T_CHECK(lv_tls_error(t)[0] != '\0');
    lv_tls_free(t);
    lv_buf_dispose(&out);

    /* A forged application-data record on an established connection. */
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), 0);
    char rec[5 + 32] = "\x17\x03\x03\x00\x20";
    fill_pattern(rec + 5, 32, 9);
    T_CHECK_INT(lv_tls_feed(s.t, rec, sizeof(rec), on_plain, &s, &s.out), -EPROTO);
    T_CHECK(lv_tls_error(s.t)[0] != '\0');
    T_CHECK_INT(s.got.len, 0);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(cc);
    lv_tls_ctx_free(sc);
}

T_TEST(truncated_handshake_waits)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c = {0}, s = {0};
    c.t = lv_tls_new(cc, false, "localhost");
    s.t = lv_tls_new(sc, true, NULL);
    T_CHECK_INT(lv_tls_start(c.t, &c.out), 0);
    T_CHECK_INT(lv_tls_start(c.t, &c.out), 0); /* twice is harmless: one ClientHello */
    size_t hello = c.out.len;
    T_CHECK(hello > 5);
    T_CHECK_INT((unsigned char)c.out.data[0], 0x16); /* a handshake record */
    T_CHECK_INT(lv_tls_feed(s.t, c.out.data, hello - 1, on_plain, &s, &s.out), 0);
    T_CHECK_INT(s.out.len, 0);
    T_CHECK(!lv_tls_handshake_done(s.t));
    T_CHECK_STR(lv_tls_error(s.t), "");
    T_CHECK_INT(lv_tls_feed(s.t, c.out.data + hello - 1, 1, on_plain, &s, &s.out), 0);
    T_CHECK(s.out.len > 0); /* ServerHello and the rest of its flight */
    lv_buf_reset(&c.out);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_handshake_done(c.t) && lv_tls_handshake_done(s.t));
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(stale_openssl_errors_do_not_leak_into_a_connection)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    /* Connection A fails; connection B, made right after, must not inherit anything. */
    struct lv_tls *a = lv_tls_new(sc, true, NULL);
    struct lv_buf out = LV_BUF_INIT;
    T_CHECK_INT(lv_tls_feed(a, "garbage!", 8, NULL, NULL, &out), -EPROTO);
    const char *a_err = lv_tls_error(a);
    T_CHECK(a_err[0] != '\0');
    /* Some other code left an error on the thread's queue: with it there, SSL_get_error would
     * report a fatal error for a plain "want read". */
    ERR_raise(ERR_LIB_SSL, SSL_R_HTTP_REQUEST);
    struct end c = {0}, s = {0};
    c.t = lv_tls_new(cc, false, "localhost");
    s.t = lv_tls_new(sc, true, NULL);
    ERR_raise(ERR_LIB_SSL, SSL_R_HTTP_REQUEST);
    T_CHECK_INT(lv_tls_start(c.t, &c.out), 0);
    ERR_raise(ERR_LIB_SSL, SSL_R_HTTP_REQUEST);
    T_CHECK_INT(pump(&c, &s, 100), 0);
    T_CHECK(lv_tls_handshake_done(c.t) && lv_tls_handshake_done(s.t));
    T_CHECK_STR(lv_tls_error(c.t), "");
    T_CHECK_STR(lv_tls_error(s.t), "");
    T_CHECK(contains(lv_tls_error(a), "wrong version number"));
    lv_tls_free(a);
    lv_buf_dispose(&out);
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

T_TEST(sessions_resume_per_name)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c, s;
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), 0);
    T_CHECK(!lv_tls_resumed(c.t));
    end_dispose(&c);
    end_dispose(&s);
    T_CHECK_INT(connect_pair(cc, sc, "localhost", &c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_resumed(c.t));
    T_CHECK(lv_tls_resumed(s.t));
    T_CHECK_STR(lv_tls_alpn(c.t), "http/1.1");
    end_dispose(&c);
    end_dispose(&s);
    /* Another name never picks up that session. */
    T_CHECK_INT(connect_pair(cc, sc, "127.0.0.1", &c, &s, 1 << 20), 0);
    T_CHECK(!lv_tls_resumed(c.t));
    end_dispose(&c);
    end_dispose(&s);
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
}

/* A client that is not ours: raw OpenSSL offering the given ALPN list, at most `max_version`
 * (0: any). Returns the server's last feed result and runs the handshake to its end if it
 * can; `selected` gets the ALPN protocol the client saw. */
static int raw_client(struct lv_tls_ctx *sc, const char *protos, size_t n, int max_version,
                      struct end *s, char *selected, size_t selsz)
{
    SSL_CTX *rc = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_alpn_protos(rc, (const unsigned char *)protos, (unsigned)n);
    if (max_version) {
        /* Override the distribution's floor so the client really offers old versions. */
        SSL_CTX_set_security_level(rc, 0);
        SSL_CTX_set_min_proto_version(rc, TLS1_VERSION);
        SSL_CTX_set_max_proto_version(rc, max_version);
    }
    SSL *ssl = SSL_new(rc);
    BIO *r = BIO_new(BIO_s_mem()), *w = BIO_new(BIO_s_mem());
    SSL_set_bio(ssl, r, w);
    SSL_set_connect_state(ssl);
    memset(s, 0, sizeof(*s));
    s->t = lv_tls_new(sc, true, NULL);
    int result = 0;
    selected[0] = '\0';
    for (int round = 0; round < 4; round++) {
        (void)SSL_do_handshake(ssl);
        char buf[16384];
        int got = BIO_read(w, buf, sizeof(buf));
        if (got <= 0)
            break;
        result = lv_tls_feed(s->t, buf, (size_t)got, on_plain, s, &s->out);
        if (result < 0)
            break;
        BIO_write(r, s->out.data, (int)s->out.len);
        lv_buf_reset(&s->out);
    }
    if (SSL_is_init_finished(ssl)) {
        const unsigned char *p;
        unsigned len;
        SSL_get0_alpn_selected(ssl, &p, &len);
        snprintf(selected, selsz, "%.*s", (int)len, (const char *)p);
    }
    SSL_free(ssl);
    SSL_CTX_free(rc);
    ERR_clear_error();
    return result;
}

T_TEST(alpn_http11_only)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct end s;
    char sel[32];
    /* h2 first, http/1.1 second: the server walks the list and picks http/1.1. */
    T_CHECK_INT(raw_client(sc, "\x02h2\x08http/1.1", 12, 0, &s, sel, sizeof(sel)), 0);
    T_CHECK_STR(sel, "http/1.1");
    T_CHECK_STR(lv_tls_alpn(s.t), "http/1.1");
    end_dispose(&s);
    /* Only h2: refused with no_application_protocol rather than speaking HTTP/1.1 to it. */
    T_CHECK_INT(raw_client(sc, "\x02h2", 3, 0, &s, sel, sizeof(sel)), -EPROTO);
    T_CHECK(contains(lv_tls_error(s.t), "application protocol"));
    end_dispose(&s);
    /* No ALPN at all: fine, HTTP/1.1 is assumed. */
    T_CHECK_INT(raw_client(sc, "", 0, 0, &s, sel, sizeof(sel)), 0);
    T_CHECK(lv_tls_handshake_done(s.t));
    T_CHECK_STR(lv_tls_alpn(s.t), "");
    end_dispose(&s);
    lv_tls_ctx_free(sc);
}

T_TEST(tls12_served_tls11_refused)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct end s;
    char sel[32];
    T_CHECK_INT(raw_client(sc, "\x08http/1.1", 9, TLS1_2_VERSION, &s, sel, sizeof(sel)), 0);
    T_CHECK(lv_tls_handshake_done(s.t));
    T_CHECK_STR(lv_tls_version(s.t), "TLSv1.2");
    T_CHECK_STR(sel, "http/1.1");
    end_dispose(&s);
    T_CHECK_INT(raw_client(sc, "", 0, TLS1_1_VERSION, &s, sel, sizeof(sel)), -EPROTO);
    T_CHECK(contains(lv_tls_error(s.t), "unsupported protocol"));
    end_dispose(&s);
    lv_tls_ctx_free(sc);
}

T_TEST(context_outlives_its_creator_reference)
{
    struct lv_tls_ctx *sc = server_ctx("localhost.pem");
    struct lv_tls_ctx *cc = client_ctx(true, "ca.pem");
    struct end c = {0}, s = {0};
    c.t = lv_tls_new(cc, false, "localhost");
    s.t = lv_tls_new(sc, true, NULL);
    /* A reload drops the old contexts while connections still use them. */
    lv_tls_ctx_free(sc);
    lv_tls_ctx_free(cc);
    T_CHECK_INT(lv_tls_start(c.t, &c.out), 0);
    T_CHECK_INT(pump(&c, &s, 1 << 20), 0);
    T_CHECK(lv_tls_handshake_done(c.t) && lv_tls_handshake_done(s.t));
    end_dispose(&c);
    end_dispose(&s);
}

static void check_server_ctx_error(const char *cert, const char *key, const char *want1,
                                   const char *want2)
{
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *x = lv_tls_server_ctx(P(cert), P(key), &err);
    T_CHECK(x == NULL);
    lv_buf_putc(&err, '\0');
    if (!contains(err.data, want1) || !contains(err.data, want2))
        fprintf(stderr, "  got: %s\n", err.data);
    T_CHECK(contains(err.data, want1));
    T_CHECK(contains(err.data, want2));
    lv_tls_ctx_free(x);
    lv_buf_dispose(&err);
}

static void check_client_ctx_error(const char *ca, const char *want1, const char *want2)
{
    struct lv_buf err = LV_BUF_INIT;
    struct lv_tls_ctx *x = lv_tls_client_ctx(true, P(ca), &err);
    T_CHECK(x == NULL);
    lv_buf_putc(&err, '\0');
    if (!contains(err.data, want1) || !contains(err.data, want2))
        fprintf(stderr, "  got: %s\n", err.data);
    T_CHECK(contains(err.data, want1));
    T_CHECK(contains(err.data, want2));
    lv_tls_ctx_free(x);
    lv_buf_dispose(&err);
}

T_TEST(context_errors_name_the_file)
{
    check_server_ctx_error("missing.pem", "srv.key", "missing.pem: ", "No such file");
    check_server_ctx_error("localhost.pem", "missing.key", "missing.key: ", "No such file");
    check_server_ctx_error("garbage.pem", "srv.key", "garbage.pem: ", "certificate");
    check_server_ctx_error("localhost.pem", "garbage.pem", "garbage.pem: ", "private key");
    check_server_ctx_error("localhost.pem", "other.key", "other.key: ", "does not match");
    check_server_ctx_error("localhost.pem", "enc.key", "enc.key: ", "passphrase");
    check_client_ctx_error("missing.pem", "missing.pem: ", "No such file");
    check_client_ctx_error("garbage.pem", "garbage.pem: ", "CA certificates");
    T_CHECK_INT(ERR_peek_error(), 0);
}

int main(void)
{
    make_certs();
    T_RUN(handshake_and_data_both_ways);
    T_RUN(handshake_byte_at_a_time);
    T_RUN(one_mib_each_way_in_chunks);
    T_RUN(verify_hostname_mismatch_fails_before_any_request_byte);
    T_RUN(verify_without_the_ca_fails);
    T_RUN(verify_off_accepts_any_certificate);
    T_RUN(ip_address_names);
    T_RUN(verifying_client_without_a_name_refuses_to_start);
    T_RUN(close_notify_both_ways);
    T_RUN(shutdown_before_handshake_sends_nothing);
    T_RUN(garbage_to_the_server_fails_cleanly);
    T_RUN(truncated_handshake_waits);
    T_RUN(stale_openssl_errors_do_not_leak_into_a_connection);
    T_RUN(sessions_resume_per_name);
    T_RUN(alpn_http11_only);
    T_RUN(tls12_served_tls11_refused);
    T_RUN(context_outlives_its_creator_reference);
    T_RUN(context_errors_name_the_file);
    certs_remove();
    T_DONE();
}
