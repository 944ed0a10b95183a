#include "base/inbox.h"

#include <pthread.h>
#include <stdlib.h>

#include "base/buf.h"

struct lv_inbox {
    uv_async_t async;
    pthread_mutex_t lock;
    struct lv_inbox_msg *head, *tail; /* FIFO, under lock */
};

void lv_inbox_run_pending(struct lv_inbox *ib)
{
    for (;;) {
        pthread_mutex_lock(&ib->lock);
        struct lv_inbox_msg *m = ib->head;
        ib->head = ib->tail = NULL;
        pthread_mutex_unlock(&ib->lock);
        if (!m)
            return;
        while (m) {
            struct lv_inbox_msg *next = m->next;
            m->run(m); /* may free m, may post more */
            m = next;
        }
    }
}

static void on_async(uv_async_t *a)
{
    lv_inbox_run_pending(a->data);
}

struct lv_inbox *lv_inbox_open(uv_loop_t *loop)
{
    struct lv_inbox *ib = lv_xcalloc(1, sizeof(*ib));
    pthread_mutex_init(&ib->lock, NULL);
    uv_async_init(loop, &ib->async, on_async);
    ib->async.data = ib;
    uv_unref((uv_handle_t *)&ib->async);
    return ib;
}

void lv_inbox_post(struct lv_inbox *ib, struct lv_inbox_msg *m)
{
    m->next = NULL;
    pthread_mutex_lock(&ib->lock);
    bool was_empty = ib->head == NULL;
    if (ib->tail)
        ib->tail->next = m;
    else
        ib->head = m;
    ib->tail = m;
    pthread_mutex_unlock(&ib->lock);
    /* One wake-up per batch: the loop takes the whole queue at once. */
    if (was_empty)
        uv_async_send(&ib->async);
}

struct call_msg {
    struct lv_inbox_msg base;
    void (*fn)(void *arg);
    void *arg;
};

static void run_call(struct lv_inbox_msg *m)
{
    struct call_msg *c = (struct call_msg *)m;
    void (*fn)(void *) = c->fn;
    void *arg = c->arg;
    free(c);
    fn(arg);
}

void lv_inbox_call(struct lv_inbox *ib, void (*fn)(void *arg), void *arg)
{
    struct call_msg *c = lv_xmalloc(sizeof(*c));
    c->base.run = run_call;
    c->fn = fn;
    c->arg = arg;
    lv_inbox_post(ib, &c->base);
}

static void on_close(uv_handle_t *h)
{
    struct lv_inbox *ib = h->data;
    lv_inbox_run_pending(ib);
    pthread_mutex_destroy(&ib->lock);
    free(ib);
}

void lv_inbox_close(struct lv_inbox *ib)
{
    lv_inbox_run_pending(ib);
    uv_close((uv_handle_t *)&ib->async, on_close);
}
