/*
 * inbox: the one way threads talk to a loop that is not theirs (README "Workers"). Any thread
 * posts a message; the loop's thread runs it, in the order posted, on a later loop turn. Every
 * worker loop owns one inbox; a worker's state is touched only by its own thread, so anything
 * another thread wants done there (install a configuration, drain, collect statistics, answer
 * an idempotency lookup) travels as a message.
 *
 * The inbox does not keep its loop alive: a loop ends when its own work is done, and messages
 * posted after that run when the inbox is closed (lv_inbox_close), on the closing thread.
 */
#ifndef LV_INBOX_H
#define LV_INBOX_H

#include <stdbool.h>
#include <uv.h>

struct lv_inbox;

/* A message, owned by its poster until `run` starts; `run` may free it. */
struct lv_inbox_msg {
    struct lv_inbox_msg *next;
    void (*run)(struct lv_inbox_msg *m);
};

/** An inbox on `loop` (call on the loop's thread). */
struct lv_inbox *lv_inbox_open(uv_loop_t *loop);
/** Queues `m` (any thread): m->run(m) runs on the inbox's loop thread. Never blocks on the
 *  loop; one short lock. */
void lv_inbox_post(struct lv_inbox *ib, struct lv_inbox_msg *m);
/** Convenience: runs fn(arg) on the inbox's loop (the message is allocated and freed here). */
void lv_inbox_call(struct lv_inbox *ib, void (*fn)(void *arg), void *arg);
/** Runs what is queued now, on the calling thread (the loop's). For the end of a loop. */
void lv_inbox_run_pending(struct lv_inbox *ib);
/** Closes the inbox (the loop's thread, after its last turn or during it): queued messages run
 *  first; the inbox is freed once its handle closed (the loop must run once more). No post may
 *  follow. */
void lv_inbox_close(struct lv_inbox *ib);

#endif
