/*
 * test_proxy_fixture: what a test of the request path needs around struct lv_request. A real
 * struct lv_server on a real uv loop (configuration from a file, as test_proxy_generation
 * does); a fake downstream (proxy/downstream.h) whose ops record everything the request hands
 * its client; and a real upstream: a TCP server on the same loop that records what each
 * connection received and whether levee closed it, and answers only when the test tells it to.
 * Nothing sleeps: RUN_UNTIL turns the loop until a condition holds or a deadline passes.
 */
#ifndef LV_TEST_PROXY_FIXTURE_H
#define LV_TEST_PROXY_FIXTURE_H

#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy/generation.h"
#include "proxy/request.h"
#include "proxy/server.h"
#include "script/config.h"
#include "t.h"
#include "tmpconf.h"

static char fx_dir[64];
static uv_loop_t fx_loop;
static struct lv_server fx_server;

/* ---- running the loop */

static uv_timer_t fx_guard; /* wakes UV_RUN_ONCE up, so a deadline is checked while idle */
static void fx_guard_tick(uv_timer_t *t)
{
    (void)t;
}

/* Turns the loop until `cond` holds, at most `ms` milliseconds; the check records a timeout. */
#define RUN_UNTIL_MS(cond, ms)                                                                     \
    do {                                                                                           \
        uint64_t fx__end = uv_hrtime() + (uint64_t)(ms)*1000000ULL;                                \
        uv_timer_start(&fx_guard, fx_guard_tick, 5, 5);                                            \
        while (!(cond) && uv_hrtime() < fx__end)                                                   \
            uv_run(&fx_loop, UV_RUN_ONCE);                                                         \
        uv_timer_stop(&fx_guard);                                                                  \
        T_CHECK(cond);                                                                             \
    } while (0)
#define RUN_UNTIL(cond) RUN_UNTIL_MS(cond, 3000)

/* Turns the loop for `ms` milliseconds: for checks that something does NOT happen. */
static void fx_run_for(uint64_t ms)
{
    uint64_t end = uv_hrtime() + ms * 1000000ULL;
    uv_timer_start(&fx_guard, fx_guard_tick, 5, 5);
    while (uv_hrtime() < end)
        uv_run(&fx_loop, UV_RUN_ONCE);
    uv_timer_stop(&fx_guard);
}

/* ---- the fake downstream */

struct fake_ds {
    struct lv_downstream ds;
    struct lv_request *r; /* the request served, until done (then its slot went back) */
    struct lv_buf out;    /* every byte the request wrote, in order */
    int done_calls;
    bool done_close;
    int consumed_calls, abort_calls, refuse_calls;
    int refuse_status;
    uint64_t throttle_rate; /* the last throttle asked for */
};

#define FDS_OF(d) ((struct fake_ds *)(void *)(d)) /* ds is the first member */

static int fds_writev(struct lv_downstream *d, const uv_buf_t *bufs, unsigned nbufs)
{
    if (d->closed)
        return -1;
    for (unsigned i = 0; i < nbufs; i++)
        lv_buf_append(&FDS_OF(d)->out, bufs[i].base, bufs[i].len);
    return 0;
}

static int fds_write_buf(struct lv_downstream *d, struct lv_buf *b)
{
    if (d->closed)
        return -1;
    lv_buf_append(&FDS_OF(d)->out, b->data, b->len);
    lv_buf_dispose(b); /* the write owns the memory: `b` is left empty */
    return 0;
}

/* As the client connection does: the finished request's slot goes back at once. */
static void fds_done(struct lv_downstream *d, bool close)
{
    struct fake_ds *f = FDS_OF(d);
    f->done_calls++;
    f->done_close = close;
    T_CHECK(f->r != NULL);
    if (f->r) {
        T_CHECK_INT(f->r->phase, LV_REQ_IDLE);
        lv_request_put(f->r);
        f->r = NULL;
    }
}

static void fds_consumed(struct lv_downstream *d)
{
    FDS_OF(d)->consumed_calls++;
}

static void fds_abort(struct lv_downstream *d)
{
    struct fake_ds *f = FDS_OF(d);
    f->abort_calls++;
    d->closed = true;
    if (f->r) {
        lv_request_client_gone(f->r);
        lv_request_put(f->r);
        f->r = NULL;
    }
}

static void fds_refuse(struct lv_downstream *d, int status, enum lv_gwerr err, const char *reason)
{
    struct fake_ds *f = FDS_OF(d);
    (void)err;
    (void)reason;
    f->refuse_calls++;
    f->refuse_status = status;
    if (f->r) {
        lv_request_put(f->r);
        f->r = NULL;
    }
}

static void fds_throttle(struct lv_downstream *d, uint64_t rate)
{
    FDS_OF(d)->throttle_rate = rate;
}

static const struct lv_downstream_ops fds_ops = {
    fds_writev,   fds_write_buf, fds_done,  fds_consumed,
    fds_abort,    fds_refuse,    fds_abort, /* reset: as an abort here */
    fds_throttle, NULL,                     /* shutdown: no tunnels here */
};

static void fds_init(struct fake_ds *f, const char *peer)
{
    memset(f, 0, sizeof(*f));
    f->ds.ops = &fds_ops;
    snprintf(f->ds.peer, sizeof(f->ds.peer), "%s", peer);
}

static void fds_dispose(struct fake_ds *f)
{
    T_CHECK(f->r == NULL); /* every test ends its requests */
    lv_buf_dispose(&f->out);
    lv_buf_dispose(&f->ds.in);
}

/* Appends `text` to the input and serves the head at its start, as the connection does with a
 * head the pre-validator accepted. Returns the slot (it may already be back in the pool: done ran).
 */
static struct lv_request *fds_send(struct fake_ds *f, const char *text)
{
    T_CHECK(f->r == NULL);
    lv_buf_append(&f->ds.in, text, strlen(text));
    size_t head_len = 0;
    for (size_t i = 0; i + 4 <= f->ds.in.len && !head_len; i++)
        if (memcmp(f->ds.in.data + i, "\r\n\r\n", 4) == 0)
            head_len = i + 4;
    T_CHECK(head_len > 0);
    struct lv_request *r = lv_request_get(&fx_server, &f->ds);
    f->r = r;
    lv_request_begin(r, head_len);
    return r;
}

/* More body bytes from the client. */
static void fds_more(struct fake_ds *f, const char *text)
{
    lv_buf_append(&f->ds.in, text, strlen(text));
    if (f->r)
        lv_request_client_data(f->r);
}

/* The client connection goes away, as client.c closes it. */
static void fds_gone(struct fake_ds *f)
{
    f->ds.closed = true;
    if (f->r) {
        lv_request_client_gone(f->r);
        lv_request_put(f->r);
        f->r = NULL;
    }
}

/* The output so far as a C string (for strstr). */
static const char *fds_text(struct fake_ds *f)
{
    lv_buf_putc(&f->out, '\0');
    f->out.len--;
    return f->out.data;
}

/* Bytes after the response head (0 when the head is not complete). */
static size_t fds_body_len(struct fake_ds *f)
{
    const char *t = fds_text(f);
    const char *e = strstr(t, "\r\n\r\n");
    return e ? f->out.len - (size_t)(e + 4 - t) : 0;
}

/* ---- the upstream */

struct up_conn {
    uv_tcp_t tcp;
    struct lv_buf got; /* every byte levee sent */
    bool peer_closed;  /* levee closed (EOF) or reset it */
    bool closing;      /* we closed it */
};

#define UP_MAX 16
static uv_tcp_t up_listener;
static int up_port;
static struct up_conn *upc[UP_MAX];
static int nupc;

static void up_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)h;
    (void)hint;
    static char block[65536];
    *b = uv_buf_init(block, sizeof(block));
}

static void up_closed(uv_handle_t *h)
{
    struct up_conn *c = h->data;
    lv_buf_dispose(&c->got);
    for (int i = 0; i < nupc; i++)
        if (upc[i] == c)
            upc[i] = NULL; /* tests only look at connections they still hold */
    free(c);
}

static void up_close(struct up_conn *c)
{
    if (!c->closing) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, up_closed);
    }
}

/* Closes with a TCP reset. */
static void up_reset(struct up_conn *c)
{
    if (!c->closing) {
        c->closing = true;
        uv_tcp_close_reset(&c->tcp, up_closed);
    }
}

static void up_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    struct up_conn *c = s->data;
    if (n < 0) {
        c->peer_closed = true;
        uv_read_stop(s);
        return;
    }
    lv_buf_append(&c->got, b->base, (size_t)n);
    lv_buf_putc(&c->got, '\0');
    c->got.len--;
}

static void up_accept(uv_stream_t *ls, int status)
{
    if (status < 0 || nupc >= UP_MAX)
        return;
    struct up_conn *c = lv_xcalloc(1, sizeof(*c));
    uv_tcp_init(&fx_loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(ls, (uv_stream_t *)&c->tcp) != 0) {
        up_close(c);
        return;
    }
    upc[nupc++] = c;
    uv_read_start((uv_stream_t *)&c->tcp, up_alloc, up_read);
}

struct up_write {
    uv_write_t req;
    char data[];
};

static void up_written(uv_write_t *w, int status)
{
    (void)status;
    free(w);
}

static void up_send(struct up_conn *c, const char *text)
{
    T_CHECK(c != NULL);
    if (!c)
        return; /* a connection the test waited for in vain (already counted as failed) */
    size_t n = strlen(text);
    struct up_write *w = lv_xmalloc(sizeof(*w) + n);
    memcpy(w->data, text, n);
    uv_buf_t b = uv_buf_init(w->data, (unsigned)n);
    T_CHECK_INT(uv_write(&w->req, (uv_stream_t *)&c->tcp, &b, 1, up_written), 0);
}

/* Connection i has a whole request head. */
static bool up_has_head(int i)
{
    return i < nupc && upc[i] && upc[i]->got.len && strstr(upc[i]->got.data, "\r\n\r\n");
}

static bool up_peer_closed(int i)
{
    return i < nupc && upc[i] && upc[i]->peer_closed;
}

static void up_start(void)
{
    nupc = 0;
    uv_tcp_init(&fx_loop, &up_listener);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    T_CHECK_INT(uv_tcp_bind(&up_listener, (const struct sockaddr *)&a, 0), 0);
    T_CHECK_INT(uv_listen((uv_stream_t *)&up_listener, 16, up_accept), 0);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    uv_tcp_getsockname(&up_listener, (struct sockaddr *)&ss, &len);
    up_port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void up_stop(void)
{
    uv_close((uv_handle_t *)&up_listener, NULL);
    for (int i = 0; i < nupc; i++)
        if (upc[i])
            up_close(upc[i]);
}

/* A local port nothing listens on (bound, then closed): connects to it are refused. */
static int fx_dead_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a;
    uv_ip4_addr("127.0.0.1", 0, &a);
    T_CHECK_INT(bind(fd, (const struct sockaddr *)&a, sizeof(a)), 0);
    socklen_t len = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &len);
    close(fd);
    return ntohs(a.sin_port);
}

/* ---- the server */

static char fx_access_path[128];

static struct lv_config *fx_load(const char *text)
{
    return tmpconf_load(fx_dir, text);
}

/* Puts `text` in force (a reload once a generation is in force); the access log appends to
 * fx_access_path. */
static void fx_install(const char *text)
{
    struct lv_log_files lf = {.access_fd = -1, .error_fd = -1};
    lf.access_fd = open(fx_access_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
    T_CHECK(lf.access_fd > STDERR_FILENO);
    lv_server_install(&fx_server, fx_load(text), &lf);
}

static void fx_start(void)
{
    uv_loop_init(&fx_loop);
    uv_timer_init(&fx_loop, &fx_guard);
    memset(&fx_server, 0, sizeof(fx_server));
    lv_server_init(&fx_server, &fx_loop, NULL);
    snprintf(fx_access_path, sizeof(fx_access_path), "%s/access.log", fx_dir);
    unlink(fx_access_path);
    up_start();
}

/* Stops everything, as main.c does after the last connection closed; the loop must end with
 * nothing left open (under ASan, nothing leaked). */
static void fx_stop(void)
{
    lv_request_pool_free(&fx_server);
    lv_server_stop(&fx_server);
    up_stop();
    uv_close((uv_handle_t *)&fx_guard, NULL);
    uint64_t end = uv_hrtime() + 3000000000ULL;
    while (uv_loop_alive(&fx_loop) && uv_hrtime() < end)
        uv_run(&fx_loop, UV_RUN_NOWAIT);
    lv_server_free(&fx_server);
    uv_run(&fx_loop, UV_RUN_NOWAIT);
    T_CHECK_INT(uv_loop_close(&fx_loop), 0);
}

/* Access-log lines that contain `needle` (the log is complete after fx_stop). */
static int fx_access_lines(const char *needle)
{
    FILE *f = fopen(fx_access_path, "r");
    if (!f)
        return 0;
    char line[8192];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* The metrics page has this exact line. */
static bool fx_metrics_has(const char *line)
{
    struct lv_buf b = LV_BUF_INIT;
    lv_metrics_render(fx_server.metrics, &b);
    lv_buf_putc(&b, '\0');
    bool found = false;
    for (const char *p = b.data; p && (p = strstr(p, line)) != NULL; p++) {
        size_t n = strlen(line);
        if ((p == b.data || p[-1] == '\n') && p[n] == '\n') {
            found = true;
            break;
        }
    }
    lv_buf_dispose(&b);
    return found;
}

/* A route's state in the server's registry (NULL: none by that name). */
static struct lv_route_state *fx_route(const char *name)
{
    for (size_t i = 0; i < fx_server.routes->n; i++)
        if (strcmp(fx_server.routes->all[i]->name, name) == 0)
            return fx_server.routes->all[i];
    return NULL;
}

#endif
