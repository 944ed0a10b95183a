/*
 * The pure pieces of upgrades (README "WebSocket and other upgrades"): which Upgrade values a
 * route's list lets through, the forwarded head of an upgrade, and a 101 in the exchange (an
 * upgrade's final head, with the bytes after it handed over; a 502 when nobody asked). The
 * tunnel's sockets are covered end to end by spec/integration/websocket_spec.lua.
 */
#include <stdlib.h>
#include <string.h>

#include "http/reqhead.h"
#include "proxy/exchange.h"
#include "proxy/fwdhead.h"
#include "t.h"

static char *const WS[] = {"websocket"};
static char *const WS_FOO[] = {"websocket", "foo"};

/* Parses `head` and asks whether the route's `tokens` allow its upgrade. */
static bool allowed(const char *head, char *const *tokens, size_t n)
{
    struct lv_field f[32];
    struct lv_reqhead h;
    T_CHECK_INT(lv_reqhead_parse(&h, head, strlen(head), f, 32), 0);
    enum lv_req_body body = h.chunked                                      ? LV_REQ_BODY_CHUNKED
                            : h.has_content_length && h.content_length > 0 ? LV_REQ_BODY_LENGTH
                                                                           : LV_REQ_BODY_NONE;
    return lv_fwdhead_upgrade_allowed(&h, body, tokens, n);
}

#define GET "GET /ws HTTP/1.1\r\nHost: a\r\n"

T_TEST(upgrade_tokens)
{
    T_CHECK(allowed(GET "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", WS, 1));
    T_CHECK(allowed(GET "Connection: keep-alive, upgrade\r\nUpgrade: WebSocket\r\n\r\n", WS, 1));
    /* every protocol listed must be allowed; versions compare by name */
    T_CHECK(!allowed(GET "Connection: upgrade\r\nUpgrade: websocket, foo\r\n\r\n", WS, 1));
    T_CHECK(allowed(GET "Connection: upgrade\r\nUpgrade: websocket , foo/2\r\n\r\n", WS_FOO, 2));
    T_CHECK(!allowed(GET "Connection: upgrade\r\nUpgrade: h2c\r\n\r\n", WS, 1));
    /* no Connection: upgrade, an empty list, a body, HTTP/1.0: no upgrade */
    T_CHECK(!allowed(GET "Upgrade: websocket\r\n\r\n", WS, 1));
    T_CHECK(!allowed(GET "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n", WS, 0));
    T_CHECK(!allowed(GET "Connection: upgrade\r\nUpgrade: websocket\r\nContent-Length: 2\r\n\r\n",
                     WS, 1));
    T_CHECK(
        !allowed("GET /ws HTTP/1.0\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", WS, 1));
}

T_TEST(forwarded_head_of_an_upgrade)
{
    static const char head[] = GET "Connection: Upgrade\r\nUpgrade: websocket\r\n"
                                   "Sec-WebSocket-Key: k\r\n\r\n";
    struct lv_field f[32];
    struct lv_reqhead h;
    T_CHECK_INT(lv_reqhead_parse(&h, head, strlen(head), f, 32), 0);
    struct lv_fwdhead_in in = {.h = &h,
                               .method = "GET",
                               .host = "a",
                               .host_len = 1,
                               .client = "1.2.3.4",
                               .request_id = "rid"};
    struct lv_buf b = LV_BUF_INIT;
    lv_fwdhead_build(&b, &in); /* not allowed: both fields dropped */
    lv_buf_putc(&b, '\0');
    T_CHECK(strstr(b.data, "Sec-WebSocket-Key: k\r\n") != NULL);
    T_CHECK(strstr(b.data, "pgrade") == NULL);
    in.upgrade = h.upgrade;
    lv_fwdhead_build(&b, &in);
    lv_buf_putc(&b, '\0');
    T_CHECK(strstr(b.data, "\r\nConnection: upgrade\r\nUpgrade: websocket\r\n") != NULL);
    T_CHECK(strstr(b.data, "Connection: Upgrade") == NULL); /* the client's own is not copied */
    lv_buf_dispose(&b);
}

static int got_status;
static void on_interim(void *arg, const struct lv_resphead *h)
{
    (void)arg;
    (void)h;
}
static bool on_head(void *arg, const struct lv_resphead *h)
{
    (void)arg;
    got_status = h->status;
    return true;
}
static void on_data(void *arg, const char *p, size_t n)
{
    (void)arg;
    (void)p;
    (void)n;
    T_CHECK(0); /* a 101 has no body: what follows is the tunnel's */
}
static const struct lv_exchange_sink sink = {on_interim, on_head, on_data};

T_TEST(exchange_101)
{
    static const char resp[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                               "Connection: Upgrade\r\n\r\n\x81\x02hi";
    struct lv_exchange ex;
    memset(&ex, 0, sizeof(ex));
    /* asked for: the final head, and the bytes after it (whole, and after a split head) */
    for (size_t cut = 0; cut < sizeof(resp) - 5; cut += 7) {
        lv_exchange_start(&ex, false);
        ex.upgrade = true;
        got_status = 0;
        enum lv_exchange_rc rc = LV_EXCHANGE_MORE;
        if (cut)
            rc = lv_exchange_feed(&ex, resp, cut, &sink, NULL);
        if (rc == LV_EXCHANGE_MORE)
            rc = lv_exchange_feed(&ex, resp + cut, sizeof(resp) - 1 - cut, &sink, NULL);
        T_CHECK_INT(rc, LV_EXCHANGE_UPGRADE);
        T_CHECK_INT(got_status, 101);
        T_CHECK_INT((int)ex.tail_n, 4);
        T_CHECK(ex.tail_p && memcmp(ex.tail_p, "\x81\x02hi", 4) == 0);
        T_CHECK(!ex.reusable);
    }
    /* not asked for: a protocol error (502) */
    lv_exchange_start(&ex, false);
    T_CHECK_INT(lv_exchange_feed(&ex, resp, sizeof(resp) - 1, &sink, NULL), LV_EXCHANGE_BAD_HEAD);
    /* an upgrade request answered with 200 is an ordinary response */
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    lv_exchange_start(&ex, false);
    ex.upgrade = true;
    T_CHECK_INT(lv_exchange_feed(&ex, ok, sizeof(ok) - 1, &sink, NULL), LV_EXCHANGE_DONE);
    lv_exchange_dispose(&ex);
}

int main(void)
{
    T_RUN(upgrade_tokens);
    T_RUN(forwarded_head_of_an_upgrade);
    T_RUN(exchange_101);
    T_DONE();
}
