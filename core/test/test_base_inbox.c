/* inbox: messages from other threads run on the loop's thread, each poster's in order. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "base/inbox.h"
#include "t.h"

#define POSTERS 3
#define PER     20000

struct numbered {
    struct lv_inbox_msg base;
    int poster, seq;
};

static uv_loop_t loop;
static struct lv_inbox *ib;
static pthread_t loop_thread;
static int last_seq[POSTERS];
static int received, out_of_order, wrong_thread;
static uv_timer_t stop_timer;

static void run_numbered(struct lv_inbox_msg *m)
{
    struct numbered *n = (struct numbered *)m;
    if (!pthread_equal(pthread_self(), loop_thread))
        wrong_thread++;
    if (n->seq != last_seq[n->poster] + 1)
        out_of_order++;
    last_seq[n->poster] = n->seq;
    received++;
    free(n);
}

static void *poster(void *arg)
{
    int p = (int)(intptr_t)arg;
    for (int i = 1; i <= PER; i++) {
        struct numbered *n = malloc(sizeof(*n));
        n->base.run = run_numbered;
        n->poster = p;
        n->seq = i;
        lv_inbox_post(ib, &n->base);
    }
    return NULL;
}

static void on_check_done(uv_timer_t *t)
{
    if (received == POSTERS * PER)
        uv_stop(t->loop);
}

T_TEST(posts_from_threads_run_on_the_loop_in_order)
{
    uv_loop_init(&loop);
    loop_thread = pthread_self();
    ib = lv_inbox_open(&loop);
    uv_timer_init(&loop, &stop_timer);
    uv_timer_start(&stop_timer, on_check_done, 1, 1); /* keeps the loop alive while polling */
    pthread_t t[POSTERS];
    for (int p = 0; p < POSTERS; p++)
        pthread_create(&t[p], NULL, poster, (void *)(intptr_t)p);
    uint64_t deadline = uv_hrtime() + 20 * 1000000000ULL;
    while (received < POSTERS * PER && uv_hrtime() < deadline)
        uv_run(&loop, UV_RUN_ONCE);
    for (int p = 0; p < POSTERS; p++)
        pthread_join(t[p], NULL);
    T_CHECK_INT(received, POSTERS * PER);
    T_CHECK_INT(out_of_order, 0);
    T_CHECK_INT(wrong_thread, 0);
    uv_close((uv_handle_t *)&stop_timer, NULL);
    lv_inbox_close(ib);
    uv_run(&loop, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(&loop), 0);
}

static int late_ran;
static void late(void *arg)
{
    (void)arg;
    late_ran++;
}

T_TEST(inbox_does_not_keep_the_loop_alive_and_close_runs_what_is_left)
{
    uv_loop_t l;
    uv_loop_init(&l);
    struct lv_inbox *b = lv_inbox_open(&l);
    uv_run(&l, UV_RUN_DEFAULT); /* returns at once: the inbox alone is not work */
    lv_inbox_call(b, late, NULL);
    lv_inbox_call(b, late, NULL);
    T_CHECK_INT(late_ran, 0);
    lv_inbox_close(b);
    T_CHECK_INT(late_ran, 2);
    uv_run(&l, UV_RUN_DEFAULT);
    T_CHECK_INT(uv_loop_close(&l), 0);
}

int main(void)
{
    T_RUN(posts_from_threads_run_on_the_loop_in_order);
    T_RUN(inbox_does_not_keep_the_loop_alive_and_close_runs_what_is_left);
    T_DONE();
}
