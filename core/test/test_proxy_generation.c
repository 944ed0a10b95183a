/*
 * test_proxy_generation: the lifetime rule of proxy/generation.h (README "Reload", "State that
 * outlives a configuration"). A server on a real loop installs configurations loaded from
 * files; a test pin plays the part of a request in flight. Upstreams are watched through their
 * on_closed callback, route states through the server's registry.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "net/upstream.h"
#include "proxy/generation.h"
#include "script/config.h"
#include "proxy/server.h"
#include "t.h"
#include "tmpconf.h"

static char tmpdir[64];
static uv_loop_t loop;
static struct lv_server server;

/* ---- upstreams closed */

static char closed_names[16][32];
static int nclosed;
static void (*real_on_closed)(struct lv_upstream *up);

static void counting_closed(struct lv_upstream *up)
{
    if (nclosed < 16)
        snprintf(closed_names[nclosed], sizeof(closed_names[0]), "%s", up->name);
    nclosed++;
    real_on_closed(up);
}

/* Counts the closing of each upstream `g` names. */
static void watch_upstreams(struct lv_generation *g)
{
    for (size_t i = 0; i < g->cfg->nupstreams; i++) {
        struct lv_upstream *up = g->upstreams[i];
        if (up->on_closed != counting_closed) {
            real_on_closed = up->on_closed;
            up->on_closed = counting_closed;
        }
    }
}

static bool was_closed(const char *name)
{
    for (int i = 0; i < nclosed && i < 16; i++)
        if (strcmp(closed_names[i], name) == 0)
            return true;
    return false;
}

/* Runs the loop until `n` upstreams closed in all, or 2 s passed. */
static void run_until_closed(int n)
{
    uint64_t deadline = uv_hrtime() + 2000000000ULL;
    while (nclosed < n && uv_hrtime() < deadline)
        uv_run(&loop, UV_RUN_NOWAIT);
    uv_run(&loop, UV_RUN_NOWAIT);
}

/* Runs what is ready on the loop: an upstream destroyed before closes its handles by then (the
 * positive checks above see it within these same turns). */
static void settle(void)
{
    for (int i = 0; i < 10; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
}

/* ---- route states */

static struct lv_route_state *registered(const char *name)
{
    for (size_t i = 0; i < server.routes->n; i++)
        if (strcmp(server.routes->all[i]->name, name) == 0)
            return server.routes->all[i];
    return NULL;
}

/* ---- configurations */

static struct lv_config *load(const char *text)
{
    return tmpconf_load(tmpdir, text);
}

static struct lv_generation *install(const char *text)
{
    struct lv_log_files lf = {.access_fd = -1, .error_fd = -1};
    lv_server_install(&server, load(text), &lf);
    struct lv_generation *g = lv_server_generation(&server);
    watch_upstreams(g);
    return g;
}

static void start(void)
{
    uv_loop_init(&loop);
    memset(&server, 0, sizeof(server));
    lv_server_init(&server, &loop, NULL);
    nclosed = 0;
}

/* Stops the server, as main.c does once the last connection closed: everything goes. */
static void stop(int upstreams_in_all)
{
    lv_server_stop(&server);
    run_until_closed(upstreams_in_all);
    T_CHECK_INT(nclosed, upstreams_in_all);
    lv_server_free(&server);
    uv_run(&loop, UV_RUN_NOWAIT);
    T_CHECK_INT(uv_loop_close(&loop), 0);
}

static const char *two_routes =
    "return {\n"
    "  upstreams = { a = { servers = { '127.0.0.1:1' } },\n"
    "                b = { servers = { '127.0.0.1:2' } } },\n"
    "  routes = { { name = 'ra', match = { prefix = '/a' }, upstream = 'a' },\n"
    "             { name = 'rb', match = { prefix = '/b' }, upstream = 'b' } },\n"
    "}\n";

/* ---- tests */

T_TEST(test_lookups_by_route_index)
{
    start();
    struct lv_generation *g =
        install("return {\n"
                "  upstreams = { a = { servers = { '127.0.0.1:1' } },\n"
                "                b = { servers = { '127.0.0.1:2' } } },\n"
                "  routes = { { name = 'r0', match = { prefix = '/0' }, upstream = 'b' },\n"
                "             { name = 'r1', match = { prefix = '/1' }, upstream = 'a',\n"
                "               idempotency = { ttl = '30s' } },\n"
                "             { name = 'r2', match = { prefix = '/2' }, upstream = 'b' } },\n"
                "}\n");
    T_CHECK_INT(g->number, 1);
    T_CHECK_STR(lv_generation_upstream(g, 0)->name, "b");
    T_CHECK_STR(lv_generation_upstream(g, 1)->name, "a");
    T_CHECK(lv_generation_upstream(g, 2) == lv_generation_upstream(g, 0));
    T_CHECK_STR(lv_generation_route_state(g, 0)->name, "r0");
    T_CHECK_STR(lv_generation_route_state(g, 2)->name, "r2");
    T_CHECK(lv_generation_route_state(g, 1) == registered("r1"));
    T_CHECK_INT(lv_generation_route_index(g, &g->cfg->routes[2]), 2);
    /* the store a route's requests use: the route state's, only where idempotency is on */
    T_CHECK(lv_generation_store(g, 0) == NULL);
    T_CHECK(lv_generation_store(g, 1) != NULL);
    T_CHECK(lv_generation_store(g, 1) == registered("r1")->idem);
    stop(2);
}

T_TEST(test_old_generation_keeps_what_it_names_while_pinned)
{
    start();
    struct lv_generation *g1 = install(two_routes);
    lv_generation_pin(g1); /* a request in flight */
    struct lv_upstream *up_a = lv_generation_upstream(g1, 0);
    struct lv_route_state *rs_a = lv_generation_route_state(g1, 0);

    /* b and rb leave; a keeps its servers; c and rc are new */
    struct lv_generation *g2 =
        install("return {\n"
                "  upstreams = { a = { servers = { '127.0.0.1:1' } },\n"
                "                c = { servers = { '127.0.0.1:3' } } },\n"
                "  routes = { { name = 'ra', match = { prefix = '/a' }, upstream = 'a' },\n"
                "             { name = 'rc', match = { prefix = '/c' }, upstream = 'c' } },\n"
                "}\n");
    T_CHECK(g2 != g1);
    T_CHECK_INT(g2->number, 2);
    T_CHECK_INT(server.nlive, 2);
    /* named by both: the same objects */
    T_CHECK(lv_generation_upstream(g2, 0) == up_a);
    T_CHECK(lv_generation_route_state(g2, 0) == rs_a);
    T_CHECK(!up_a->retired);
    /* named only by the pinned g1: still there, retired from the pools */
    settle();
    T_CHECK_INT(nclosed, 0);
    T_CHECK(lv_generation_upstream(g1, 1)->retired);
    T_CHECK(registered("rb") != NULL);
    T_CHECK(registered("rb") == lv_generation_route_state(g1, 1));

    /* the last pin on g1: what only it named goes */
    lv_generation_unpin(g1);
    T_CHECK_INT(server.nlive, 1);
    T_CHECK(registered("rb") == NULL);
    settle();
    T_CHECK_INT(nclosed, 1);
    T_CHECK(was_closed("b"));
    T_CHECK(!was_closed("a"));
    T_CHECK(registered("ra") == rs_a);
    T_CHECK(registered("rc") != NULL);
    /* up_a now belongs to g2 alone, and reads g2's configuration */
    T_CHECK(up_a->cfg == &g2->cfg->upstreams[0]);
    stop(3);
}

T_TEST(test_unpinned_generation_goes_at_the_reload)
{
    start();
    install(two_routes);
    install("return {\n"
            "  upstreams = { a = { servers = { '127.0.0.1:1', '127.0.0.1:4' } } },\n"
            "  routes = { { name = 'ra', match = { prefix = '/a' }, upstream = 'a' } },\n"
            "}\n");
    /* nothing pinned g1: its b, and its a (whose servers changed, so replaced), go now */
    T_CHECK_INT(server.nlive, 1);
    T_CHECK(registered("rb") == NULL);
    run_until_closed(2);
    T_CHECK_INT(nclosed, 2);
    T_CHECK(was_closed("a"));
    T_CHECK(was_closed("b"));
    stop(3);
}

T_TEST(test_route_state_kept_by_name)
{
    start();
    struct lv_generation *g1 = install(two_routes);
    lv_generation_pin(g1);
    struct lv_route_state *rs_b = lv_generation_route_state(g1, 1);
    lv_server_count_request(&server, rs_b, 200, 0.01);
    lv_server_count_request(&server, rs_b, 200, 0.01);

    /* rb leaves while g1 is pinned ... */
    install("return {\n"
            "  upstreams = { a = { servers = { '127.0.0.1:1' } },\n"
            "                b = { servers = { '127.0.0.1:2' } } },\n"
            "  routes = { { name = 'ra', match = { prefix = '/a' }, upstream = 'a' } },\n"
            "}\n");
    T_CHECK(registered("rb") == rs_b);
    T_CHECK(!rs_b->in_config);
    /* ... and comes back, under a new index: the same state, counts and all */
    struct lv_generation *g3 =
        install("return {\n"
                "  upstreams = { a = { servers = { '127.0.0.1:1' } },\n"
                "                b = { servers = { '127.0.0.1:2' } } },\n"
                "  routes = { { name = 'rb', match = { prefix = '/b' }, upstream = 'b' },\n"
                "             { name = 'ra', match = { prefix = '/a' }, upstream = 'a' } },\n"
                "}\n");
    T_CHECK(lv_generation_route_state(g3, 0) == rs_b);
    T_CHECK_INT(lv_route_state_requests(rs_b), 2);
    T_CHECK(rs_b->in_config);
    /* g1's last pin: rb is named by g3, so it stays */
    lv_generation_unpin(g1);
    T_CHECK_INT(server.nlive, 1);
    T_CHECK(registered("rb") == rs_b);
    T_CHECK_INT(lv_route_state_requests(rs_b), 2);
    settle();
    T_CHECK_INT(nclosed, 0); /* a and b kept their servers all along */
    stop(2);
}

/* An upstream kept by g2 reads g2's configuration; when g2 goes while the older g1 still names
 * it, it must read g1's again (g2's configuration is freed). */
T_TEST(test_upstream_outliving_a_newer_generation_reads_a_live_config)
{
    start();
    struct lv_generation *g1 = install(two_routes);
    lv_generation_pin(g1);
    struct lv_upstream *up_a = lv_generation_upstream(g1, 0);
    struct lv_generation *g2 = install(two_routes);
    T_CHECK(lv_generation_upstream(g2, 0) == up_a);
    T_CHECK(up_a->cfg == &g2->cfg->upstreams[0]);
    /* g3 drops a: nothing pins g2, so it goes now; g1 still names a */
    install("return {\n"
            "  upstreams = { b = { servers = { '127.0.0.1:2' } } },\n"
            "  routes = { { name = 'rb', match = { prefix = '/b' }, upstream = 'b' } },\n"
            "}\n");
    T_CHECK_INT(server.nlive, 2);
    T_CHECK(up_a->retired);
    T_CHECK(up_a->cfg == &g1->cfg->upstreams[0]);
    T_CHECK_STR(up_a->cfg->name, "a");
    settle();
    T_CHECK_INT(nclosed, 0);
    lv_generation_unpin(g1);
    settle();
    T_CHECK_INT(nclosed, 1);
    T_CHECK(was_closed("a"));
    stop(2);
}

int main(void)
{
    tmpconf_dir(tmpdir, sizeof(tmpdir), "gen");
    T_RUN(test_lookups_by_route_index);
    T_RUN(test_old_generation_keeps_what_it_names_while_pinned);
    T_RUN(test_unpinned_generation_goes_at_the_reload);
    T_RUN(test_route_state_kept_by_name);
    T_RUN(test_upstream_outliving_a_newer_generation_reads_a_live_config);
    char path[128];
    snprintf(path, sizeof(path), "%s/levee.lua", tmpdir);
    unlink(path);
    rmdir(tmpdir);
    T_DONE();
}
