/*
 * The remote store: a store on one worker's loop that forwards every operation to a store that
 * lives on another loop (the owner's: the memory store is single-threaded), through the loops'
 * inboxes (base/inbox.h). The real lv_idem_begin / lv_idem_wait / complete / release run on the
 * owner loop against the target; their answers travel back and are delivered here like any
 * store's (lv__idem_post), so a key is executed at most once across workers.
 *
 * Threads. Each forwarded operation is one `struct fwd`, handed back and forth by posting it:
 * the remote thread fills the request and posts it to the owner; the owner runs it, fills the
 * answer and posts it back. Besides that hand-over, a fwd has fields only the remote thread
 * touches (`rs`, `rop`, `cancel_sent`) and fields only the owner touches (`top`, `o_pending`).
 * Everything of the remote store is touched on its loop only, everything of the target on the
 * owner's only; the inbox's lock orders each hand-over.
 *
 * Cancel. A cancelled begin or wait is unlinked here at once (its callback never runs) and a
 * second message of the same fwd, `cancel`, asks the owner to lv_idem_cancel the target's op if
 * it is still pending. The owner always posts the cancel back (its acknowledgement), after the
 * answer if there is one (the owner posts the answer before the acknowledgement, and an inbox
 * keeps a poster's order), so the fwd is freed when the acknowledgement comes home. An answer
 * that finds its op cancelled or the store closing gives an ACQUIRED lock back to the target at
 * once, so the key is not stuck until its lease ends.
 *
 * Lifetime. Every message whose answer will come back here counts as `outstanding`; while any
 * is, a referenced async handle keeps this loop alive (the inbox alone does not), so a thread
 * that runs its loop to the end before closing its inbox never closes it under an answer still
 * on its way. The store memory stays until the last answer is in, the handles are closed and
 * the last lock has ended (lv__idem_handle_closed, lv__idem_lock_ended). The owner side holds,
 * per remote store, a `link`: a referenced async handle on the owner loop, opened by the first
 * message and closed by the last, so the owner loop does not end while a remote store may
 * still post to its inbox; the last message also gives back the remote store's reference to
 * the target.
 */
#include <stdlib.h>
#include <string.h>

#include "base/buf.h"
#include "base/inbox.h"
#include "store/idem.h"

#define FWD_OF(m, member) ((struct fwd *)(void *)((char *)(m)-offsetof(struct fwd, member)))

enum fkind { F_BEGIN, F_WAIT, F_COMPLETE, F_RELEASE };

struct rstore;
struct rop;

struct fwd {
    struct lv_inbox_msg msg;    /* the request to the owner, then its answer back */
    struct lv_inbox_msg cancel; /* the cancel request, then its acknowledgement back */
    enum fkind kind;
    bool notify; /* complete / release: an answer is wanted */
    /* request: written here before posting, read on the owner */
    struct lv_idem *target;
    struct lv_inbox *reply_to;
    struct lv_idem_lock *tlock; /* complete / release: the target's lock; answer: ACQUIRED's */
    uint64_t ms;                /* lease, wait timeout or ttl */
    uint8_t fp[LV_IDEM_FP_LEN];
    struct lv_idem_response resp; /* complete: the response, its bytes in `data` */
    char *data;                   /* complete: the response; answer: REPLAY's stored bytes */
    /* answer: written on the owner before posting back */
    enum lv_idem_result result;
    bool changed;
    /* owner only */
    struct lv_idem_op *top; /* the target's op while it is pending */
    bool o_pending;
    /* remote only */
    struct rstore *rs;
    struct rop *rop; /* the op waiting for the answer; NULL once cancelled or answered */
    bool cancel_sent;
    size_t klen;
    char key[];
};

struct rop {
    struct lv_idem_op base; /* base.link: on rstore.pending until answered */
    struct fwd *f;
};

struct rlock {
    struct lv_idem_lock base;
    struct lv_idem_lock *tlock; /* touched on the owner loop only */
};

/* The owner side of one remote store (see the top). */
struct link {
    struct lv_inbox_msg hello, bye;
    uv_async_t alive;
    struct lv_idem *target;
};

struct rstore {
    struct lv_idem base;
    struct lv_inbox *own, *target_inbox;
    struct lv_idem *target;
    struct link *link;
    const char *kind;
    struct lv_dlist pending; /* struct rop by base.link: forwarded, not answered yet */
    uv_async_t alive;        /* referenced while outstanding > 0 */
    unsigned outstanding;    /* messages whose answer or acknowledgement will come back */
};

static const struct lv__idem_vt remote_vt;

static struct rop *rop_of(struct lv_dlist *l)
{
    return lv_dlist_entry(l, struct rop, base.link);
}

static void fwd_free(struct fwd *f)
{
    free(f->data);
    free(f);
}

/* ---- the owner side (runs on the target's loop) */

static void on_answer(struct lv_inbox_msg *m);
static void on_cancel_ack(struct lv_inbox_msg *m);

static void answer(struct fwd *f)
{
    f->msg.run = on_answer;
    lv_inbox_post(f->reply_to, &f->msg);
}

static void on_target_begin(enum lv_idem_result r, const struct lv_idem_response *st,
                            struct lv_idem_lock *lock, void *arg)
{
    struct fwd *f = arg;
    f->o_pending = false;
    f->top = NULL;
    f->result = r;
    f->tlock = lock;
    if (r == LV_IDEM_REPLAY) {
        /* The target frees its copy once we return. */
        size_t n = st->head_len + st->body_len;
        f->data = lv_xmalloc(n ? n : 1);
        if (st->head_len)
            memcpy(f->data, st->head, st->head_len);
        if (st->body_len)
            memcpy(f->data + st->head_len, st->body, st->body_len);
        f->resp = (struct lv_idem_response){st->status, f->data, st->head_len,
                                            f->data + st->head_len, st->body_len};
    }
    answer(f);
}

static void on_target_changed(bool changed, void *arg)
{
    struct fwd *f = arg;
    f->o_pending = false;
    f->top = NULL;
    f->changed = changed;
    answer(f);
}

static void owner_run(struct lv_inbox_msg *m)
{
    struct fwd *f = FWD_OF(m, msg);
    switch (f->kind) {
    case F_BEGIN:
        f->top = lv_idem_begin(f->target, f->key, f->klen, f->fp, f->ms, on_target_begin, f);
        break;
    case F_WAIT:
        f->top = lv_idem_wait(f->target, f->key, f->klen, f->ms, on_target_changed, f);
        break;
    case F_COMPLETE:
        if (!f->notify) {
            lv_idem_complete(f->tlock, &f->resp, f->ms);
            fwd_free(f);
            return;
        }
        f->top = lv_idem_complete_notify(f->tlock, &f->resp, f->ms, on_target_changed, f);
        break;
    case F_RELEASE:
        if (!f->notify) {
            lv_idem_release(f->tlock);
            fwd_free(f);
            return;
        }
        f->top = lv_idem_release_notify(f->tlock, on_target_changed, f);
        break;
    }
    f->tlock = NULL; /* complete / release: ended; begin: set again by the answer */
    if (f->top) {
        f->o_pending = true;
        return;
    }
    /* The target was destroyed: it will never answer. */
    f->result = LV_IDEM_UNAVAILABLE;
    f->changed = false;
    answer(f);
}

static void owner_cancel(struct lv_inbox_msg *m)
{
    struct fwd *f = FWD_OF(m, cancel);
    if (f->o_pending) {
        lv_idem_cancel(f->top);
        f->o_pending = false;
        f->top = NULL;
        f->result = LV_IDEM_UNAVAILABLE;
        f->changed = false;
        answer(f);
    }
    /* After the answer, in the same inbox: the remote side frees the fwd on this one. */
    f->cancel.run = on_cancel_ack;
    lv_inbox_post(f->reply_to, &f->cancel);
}

static void owner_release(void *lock)
{
    lv_idem_release(lock);
}

static void on_link_closed(uv_handle_t *h)
{
    free(h->data);
}

static void on_link_wake(uv_async_t *a)
{
    (void)a;
}

static void owner_hello(struct lv_inbox_msg *m)
{
    struct link *lk = (struct link *)(void *)((char *)m - offsetof(struct link, hello));
    uv_async_init(lk->target->loop, &lk->alive, on_link_wake);
    lk->alive.data = lk;
}

static void owner_bye(struct lv_inbox_msg *m)
{
    struct link *lk = (struct link *)(void *)((char *)m - offsetof(struct link, bye));
    lv_idem_unref(lk->target);
    uv_close((uv_handle_t *)&lk->alive, on_link_closed);
}

/* ---- the remote side (runs on the store's own loop) */

static void post_to_owner(struct rstore *rs, struct lv_inbox_msg *m)
{
    lv_inbox_post(rs->target_inbox, m);
}

static void outstanding_add(struct rstore *rs)
{
    if (rs->outstanding++ == 0)
        uv_ref((uv_handle_t *)&rs->alive);
}

static void on_alive_closed(uv_handle_t *h)
{
    lv__idem_handle_closed(h->data);
}

static void outstanding_done(struct rstore *rs)
{
    if (--rs->outstanding > 0)
        return;
    if (rs->base.dying)
        uv_close((uv_handle_t *)&rs->alive, on_alive_closed);
    else
        uv_unref((uv_handle_t *)&rs->alive);
}

/* A closing store is drained once no answer is awaited and no lock is held: a lock holder may
 * still end its lock with a notify form and hear back. */
static void maybe_drained(struct rstore *rs)
{
    if (rs->base.closing && !rs->base.dying && !rs->base.drained && lv_dlist_empty(&rs->pending) &&
        rs->base.locks == 0)
        lv__idem_drained(&rs->base);
}

/* Gives an answer's lock back to the target (its op was cancelled, or the store is going). */
static void give_back(struct rstore *rs, struct lv_idem_lock *tlock)
{
    lv_inbox_call(rs->target_inbox, owner_release, tlock);
}

static void on_answer(struct lv_inbox_msg *m)
{
    struct fwd *f = FWD_OF(m, msg);
    struct rstore *rs = f->rs;
    struct rop *op = f->rop;
    struct lv_idem_lock *tlock =
        f->kind == F_BEGIN && f->result == LV_IDEM_ACQUIRED ? f->tlock : NULL;
    if (op && !rs->base.dying) {
        f->rop = NULL;
        op->f = NULL;
        lv_dlist_remove(&op->base.link);
        if (f->kind != F_BEGIN) {
            op->base.changed = f->changed;
        } else if (rs->base.closing) {
            op->base.result = LV_IDEM_UNAVAILABLE; /* a closing store takes no new lock */
        } else {
            op->base.result = f->result;
            if (tlock) {
                struct rlock *lk = lv_xcalloc(1, sizeof(*lk));
                lk->base.store = &rs->base;
                lk->tlock = tlock;
                rs->base.locks++;
                op->base.lock = &lk->base;
                tlock = NULL;
            } else if (f->result == LV_IDEM_REPLAY) {
                op->base.owned = f->data;
                op->base.stored = f->resp;
                f->data = NULL;
            }
        }
        lv__idem_post(&op->base);
    }
    if (tlock)
        give_back(rs, tlock);
    if (!f->cancel_sent)
        fwd_free(f);
    maybe_drained(rs);
    outstanding_done(rs);
}

static void on_cancel_ack(struct lv_inbox_msg *m)
{
    struct fwd *f = FWD_OF(m, cancel);
    struct rstore *rs = f->rs;
    fwd_free(f);
    outstanding_done(rs);
}

static struct fwd *fwd_new(struct rstore *rs, enum fkind kind, size_t klen)
{
    struct fwd *f = lv_xcalloc(1, sizeof(*f) + klen + 1);
    f->kind = kind;
    f->target = rs->target;
    f->reply_to = rs->own;
    f->rs = rs;
    f->msg.run = owner_run;
    f->klen = klen;
    return f;
}

/* Posts `f`; with `op`, the answer is awaited for it. */
static struct lv_idem_op *forward(struct rstore *rs, struct fwd *f, struct rop *op)
{
    if (op) {
        op->base.store = &rs->base;
        op->f = f;
        f->rop = op;
        lv_dlist_append(&rs->pending, &op->base.link);
        outstanding_add(rs);
    }
    post_to_owner(rs, &f->msg);
    return op ? &op->base : NULL;
}

static struct lv_idem_op *r_begin(struct lv_idem *s, const char *key, size_t klen,
                                  const uint8_t fp[LV_IDEM_FP_LEN], uint64_t lease_ms)
{
    struct rstore *rs = (struct rstore *)s;
    struct fwd *f = fwd_new(rs, F_BEGIN, klen);
    memcpy(f->key, key, klen);
    memcpy(f->fp, fp, LV_IDEM_FP_LEN);
    f->ms = lease_ms;
    return forward(rs, f, lv_xcalloc(1, sizeof(struct rop)));
}

static struct lv_idem_op *r_wait(struct lv_idem *s, const char *key, size_t klen,
                                 uint64_t timeout_ms)
{
    struct rstore *rs = (struct rstore *)s;
    struct fwd *f = fwd_new(rs, F_WAIT, klen);
    memcpy(f->key, key, klen);
    f->ms = timeout_ms;
    return forward(rs, f, lv_xcalloc(1, sizeof(struct rop)));
}

/* Unlinks a pending op from its fwd; a begin or wait still pending on the owner is cancelled
 * there (the acknowledgement frees the fwd). */
static void r_detach(struct lv_idem_op *o)
{
    struct rop *op = (struct rop *)o;
    struct fwd *f = op->f;
    struct rstore *rs = (struct rstore *)o->store;
    lv_dlist_remove(&o->link);
    op->f = NULL;
    if (!f)
        return;
    f->rop = NULL;
    if (f->kind == F_BEGIN || f->kind == F_WAIT) {
        f->cancel_sent = true;
        f->cancel.run = owner_cancel;
        outstanding_add(rs);
        post_to_owner(rs, &f->cancel);
    }
}

/* Ends a remote lock here; the target's lock ends on the owner loop. */
static struct lv_idem_op *lock_forward(struct rlock *lk, struct fwd *f, bool notify)
{
    struct rstore *rs = (struct rstore *)lk->base.store;
    f->tlock = lk->tlock;
    f->notify = notify;
    struct lv_idem_op *op = forward(rs, f, notify ? lv_xcalloc(1, sizeof(struct rop)) : NULL);
    free(lk);
    bool dying = rs->base.dying;
    /* Destroyed with nothing else left, this frees the store (`f` is on its way already). */
    lv__idem_lock_ended(&rs->base);
    if (!dying)
        maybe_drained(rs);
    return op;
}

static struct lv_idem_op *r_complete(struct lv_idem_lock *l, const struct lv_idem_response *resp,
                                     uint64_t ttl_ms, bool notify)
{
    struct rlock *lk = (struct rlock *)l;
    struct fwd *f = fwd_new((struct rstore *)l->store, F_COMPLETE, 0);
    size_t n = resp->head_len + resp->body_len;
    f->data = lv_xmalloc(n ? n : 1);
    if (resp->head_len)
        memcpy(f->data, resp->head, resp->head_len);
    if (resp->body_len)
        memcpy(f->data + resp->head_len, resp->body, resp->body_len);
    f->resp = (struct lv_idem_response){resp->status, f->data, resp->head_len,
                                        f->data + resp->head_len, resp->body_len};
    f->ms = ttl_ms;
    return lock_forward(lk, f, notify);
}

static struct lv_idem_op *r_release(struct lv_idem_lock *l, bool notify)
{
    struct rlock *lk = (struct rlock *)l;
    return lock_forward(lk, fwd_new((struct rstore *)l->store, F_RELEASE, 0), notify);
}

static void r_stats(struct lv_idem *s, struct lv_idem_stats *out)
{
    struct rstore *rs = (struct rstore *)s;
    *out = (struct lv_idem_stats){rs->kind, s->locks, 0, 0, true};
}

/* The last reference went: begins and waits still forwarded are cancelled on the owner and
 * answered here (UNAVAILABLE, not changed); the notify forms get their answers. */
static void r_close(struct lv_idem *s)
{
    struct rstore *rs = (struct rstore *)s;
    struct lv_dlist *l = rs->pending.next;
    while (l != &rs->pending) {
        struct rop *op = rop_of(l);
        l = l->next;
        enum fkind kind = op->f->kind;
        if (kind != F_BEGIN && kind != F_WAIT)
            continue;
        r_detach(&op->base);
        op->base.result = LV_IDEM_UNAVAILABLE;
        op->base.changed = false;
        lv__idem_post(&op->base);
    }
    maybe_drained(rs);
}

static void r_destroy(struct lv_idem *s)
{
    struct rstore *rs = (struct rstore *)s;
    while (!lv_dlist_empty(&rs->pending)) {
        struct rop *op = rop_of(rs->pending.next);
        r_detach(&op->base);
        lv__idem_op_free(&op->base);
    }
    if (rs->outstanding == 0)
        uv_close((uv_handle_t *)&rs->alive, on_alive_closed);
}

/* Nothing refers to the store any more: the owner side gives the target reference back. */
static void r_free(struct lv_idem *s)
{
    struct rstore *rs = (struct rstore *)s;
    post_to_owner(rs, &rs->link->bye);
    free(rs);
}

static void on_alive(uv_async_t *a)
{
    (void)a;
}

static const struct lv__idem_vt remote_vt = {
    .kind = "remote",
    .begin = r_begin,
    .wait = r_wait,
    .resolve = NULL, /* answers are decided on the owner */
    .detach = r_detach,
    .complete = r_complete,
    .release = r_release,
    .stats = r_stats,
    .close = r_close,
    .destroy = r_destroy,
    .free = r_free,
};

struct lv_idem *lv_idem_remote_create(uv_loop_t *loop, struct lv_inbox *own_inbox,
                                      struct lv_idem *target, struct lv_inbox *target_inbox)
{
    struct rstore *rs = lv_xcalloc(1, sizeof(*rs));
    lv__idem_init(&rs->base, &remote_vt, loop);
    rs->own = own_inbox;
    rs->target_inbox = target_inbox;
    rs->target = target;
    /* Set when the target was made, before it was handed to this thread; never written
     * again. */
    rs->kind = target->vt->kind;
    lv_dlist_init(&rs->pending);
    uv_async_init(loop, &rs->alive, on_alive);
    uv_unref((uv_handle_t *)&rs->alive);
    rs->alive.data = rs;
    rs->base.handles++;
    rs->link = lv_xcalloc(1, sizeof(*rs->link));
    rs->link->target = target;
    rs->link->hello.run = owner_hello;
    rs->link->bye.run = owner_bye;
    post_to_owner(rs, &rs->link->hello);
    return &rs->base;
}
