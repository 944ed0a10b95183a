/*
 * The Redis store: hiredis' async API on the libuv loop, one connection per store, commands
 * pipelined on it. Layout: one string per key, prefix + key, holding a blob:
 *
 *   in flight: "lv1 I " <fingerprint, 64 hex> " " <lock token, 32 hex>     (PX = the lease)
 *   done:      "lv1 D " <fingerprint, 64 hex> " " <status, 3 digits> " " <head length> "\n"
 *              <head> <body>                                             (PX = the ttl)
 *
 * begin is one script (GET, else SET NX PX: atomic, so several gateways sharing the Redis
 * never both acquire); complete and release are scripts that act only if the key still holds
 * our exact in-flight blob (our token), so a holder whose lease lapsed cannot overwrite or
 * delete the next holder's lock. Waiters poll their key with GETRANGE every poll_ms, which
 * needs nothing configured on the server (keyspace notifications do).
 *
 * Nothing here blocks the loop: names are resolved with uv_getaddrinfo and hiredis is given
 * an IP; the connect and every command have a deadline. A command past its deadline drops the
 * connection (its pipeline state is unknown) and the store reconnects with jittered
 * exponential backoff; while there is no connection, begin answers UNAVAILABLE at once.
 * hiredis 0.14 has no timeouts of its own, and must never be freed from inside one of its
 * callbacks: every free happens from our timers or destroy, and every user callback is
 * delivered from the ready queue, never from inside hiredis.

 * The connection itself (resolving, connecting, backoff, the socket watcher) is redisconn.c.
 */
#include <assert.h>
#include <hiredis/async.h>
#include <hiredis/hiredis.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/addr.h"
#include "base/buf.h"
#include "base/log.h"
#include "store/idem.h"
#include "store/redis.h"

#define TICK_MAX_MS 25

static const char SCRIPT_BEGIN[] = "local v = redis.call('GET', KEYS[1])\n"
                                   "if v then return v end\n"
                                   "redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])\n"
                                   "return 1\n";

static const char SCRIPT_COMPLETE[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                      "  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])\n"
                                      "  return 1\n"
                                      "end\n"
                                      "return 0\n";

static const char SCRIPT_RELEASE[] = "if redis.call('GET', KEYS[1]) == ARGV[1] then\n"
                                     "  return redis.call('DEL', KEYS[1])\n"
                                     "end\n"
                                     "return 0\n";

#define TAG_LEN      6 /* "lv1 I " */
#define FPHEX_LEN    (2 * LV_IDEM_FP_LEN)
#define TOKEN_LEN    32
#define INFLIGHT_LEN (TAG_LEN + FPHEX_LEN + 1 + TOKEN_LEN)

enum rkind { CMD_BEGIN, CMD_POLL, CMD_COMPLETE, CMD_RELEASE };

struct rop;

/* One command. Once handed to hiredis it lives until hiredis calls it back (with NULL if the
 * connection goes). */
struct rcmd {
    struct rstore *s;
    struct rop *op; /* who waits for the reply; NULL once cancelled or timed out */
    enum rkind kind;
    uint8_t fp[LV_IDEM_FP_LEN];
    uint64_t lease_ms;
    /* CMD_BEGIN: the lock it asks for, handed to the lock on ACQUIRED */
    char *rkey, *blob;
    size_t rklen, bloblen;
};

struct rlock {
    struct lv_idem_lock base;
    char *rkey, *blob; /* blob: our in-flight value, token included */
    size_t rklen, bloblen;
};

static const struct lv__idem_vt redis_vt;

static void on_tick(uv_timer_t *t);

static void hex(char *out, const uint8_t *p, size_t n)
{
    static const char d[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = d[p[i] >> 4];
        out[2 * i + 1] = d[p[i] & 15];
    }
}

static int unhex1(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static bool unhex(uint8_t *out, const char *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = unhex1(p[2 * i]), lo = unhex1(p[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return false;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return true;
}

static char *prefixed(struct rstore *s, const char *key, size_t klen, size_t *len)
{
    char *k = lv_xmalloc(s->plen + klen + 1);
    memcpy(k, s->prefix, s->plen);
    memcpy(k + s->plen, key, klen);
    k[s->plen + klen] = 0;
    *len = s->plen + klen;
    return k;
}

/* ---- parsing stored values; nothing in them is trusted */

struct blob {
    bool done;
    uint8_t fp[LV_IDEM_FP_LEN];
    struct lv_idem_response resp; /* done: points into the parsed bytes */
};

static bool parse_blob(const char *p, size_t n, struct blob *b)
{
    if (n < TAG_LEN + FPHEX_LEN + 1 || memcmp(p, "lv1 ", 4) != 0 || p[5] != ' ' ||
        p[TAG_LEN + FPHEX_LEN] != ' ' || !unhex(b->fp, p + TAG_LEN, LV_IDEM_FP_LEN))
        return false;
    if (p[4] == 'I') {
        b->done = false;
        return n == INFLIGHT_LEN;
    }
    if (p[4] != 'D')
        return false;
    b->done = true;
    size_t i = TAG_LEN + FPHEX_LEN + 1;
    if (n < i + 6)
        return false;
    int status = 0;
    for (int k = 0; k < 3; k++, i++) {
        if (p[i] < '0' || p[i] > '9')
            return false;
        status = status * 10 + (p[i] - '0');
    }
    if (status < 100 || p[i++] != ' ')
        return false;
    size_t head_len = 0, digits = 0;
    while (i < n && p[i] >= '0' && p[i] <= '9' && digits < 10) {
        head_len = head_len * 10 + (size_t)(p[i++] - '0');
        digits++;
    }
    if (digits == 0 || i >= n || p[i++] != '\n' || head_len > n - i)
        return false;
    b->resp.status = status;
    b->resp.head = p + i;
    b->resp.head_len = head_len;
    b->resp.body = p + i + head_len;
    b->resp.body_len = n - i - head_len;
    return true;
}

static void ensure_tick(struct rstore *s)
{
    if (!uv_is_active((uv_handle_t *)&s->tick)) {
        uint64_t period = s->o.poll_ms < TICK_MAX_MS ? s->o.poll_ms : TICK_MAX_MS;
        uv_timer_start(&s->tick, on_tick, period, period);
    }
}

static void cmd_free(struct rcmd *cmd)
{
    free(cmd->rkey);
    free(cmd->blob);
    free(cmd);
}

void lv__redis_fail_op(struct rop *op)
{
    if (op->cmd && op->unsent)
        cmd_free(op->cmd);
    else if (op->cmd)
        op->cmd->op = NULL;
    op->cmd = NULL;
    op->unsent = false;
    lv_dlist_remove(&op->base.link);
    op->base.result = LV_IDEM_UNAVAILABLE;
    lv__idem_post(&op->base);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata);

static bool send_cmd(struct rstore *s, struct rcmd *cmd, int argc, const char **argv,
                     const size_t *lens)
{
    if (!lv__redis_can_send(&s->c))
        return false;
    if (redisAsyncCommandArgv(s->c.ac, on_reply, cmd, argc, argv, lens) != REDIS_OK)
        return false;
    s->outstanding++;
    if (s->base.closing)
        s->close_deadline = lv__redis_now(s) + s->o.command_timeout_ms;
    return true;
}

static bool send_begin(struct rstore *s, struct rcmd *cmd)
{
    char lease[24];
    int ll = snprintf(lease, sizeof(lease), "%llu", (unsigned long long)cmd->lease_ms);
    const char *argv[] = {"EVAL", SCRIPT_BEGIN, "1", cmd->rkey, cmd->blob, lease};
    const size_t lens[] = {4, sizeof(SCRIPT_BEGIN) - 1, 1, cmd->rklen, cmd->bloblen, (size_t)ll};
    return send_cmd(s, cmd, 6, argv, lens);
}

/* Connected: hand the queued begins to hiredis. */
static void conn_up(struct lv__redisconn *c)
{
    struct rstore *s = lv__rstore_of(c);
    struct lv_dlist *l = s->pending.next;
    while (l != &s->pending) {
        struct rop *op = lv__rop_of(l);
        l = l->next;
        if (!op->unsent)
            continue;
        op->unsent = false;
        if (!send_begin(s, op->cmd)) {
            op->unsent = true;
            lv__redis_fail_op(op);
        }
    }
}

/* ---- replies */

static bool send_release(struct rstore *s, const char *rkey, size_t rklen, const char *blob,
                         size_t bloblen, struct rop *op)
{
    struct rcmd *cmd = lv_xcalloc(1, sizeof(*cmd));
    cmd->s = s;
    cmd->kind = CMD_RELEASE;
    cmd->op = op;
    const char *argv[] = {"EVAL", SCRIPT_RELEASE, "1", rkey, blob};
    const size_t lens[] = {4, sizeof(SCRIPT_RELEASE) - 1, 1, rklen, bloblen};
    if (!send_cmd(s, cmd, 5, argv, lens)) {
        lv_warn("idempotency: redis down, a key stays locked until its lease ends");
        cmd_free(cmd);
        return false;
    }
    if (op)
        op->cmd = cmd;
    return true;
}

/* The result of the begin script for a caller with fingerprint `fp`. */
static enum lv_idem_result begin_result(struct rstore *s, const redisReply *r, const uint8_t *fp,
                                        struct blob *b)
{
    if (!r)
        return LV_IDEM_UNAVAILABLE;
    if (r->type == REDIS_REPLY_INTEGER && r->integer == 1)
        return LV_IDEM_ACQUIRED;
    if (r->type == REDIS_REPLY_STRING && r->str && parse_blob(r->str, r->len, b)) {
        if (memcmp(b->fp, fp, LV_IDEM_FP_LEN) != 0)
            return LV_IDEM_MISMATCH;
        return b->done ? LV_IDEM_REPLAY : LV_IDEM_IN_FLIGHT;
    }
    if (r->type == REDIS_REPLY_ERROR)
        lv_warn("idempotency: redis %s:%u: %.*s", s->c.host, s->c.port, (int)r->len,
                r->str ? r->str : "");
    else
        lv_warn("idempotency: redis %s:%u: unexpected value under a key (type %d)", s->c.host,
                s->c.port, r->type);
    return LV_IDEM_UNAVAILABLE;
}

static void reply_begin(struct rstore *s, struct rcmd *cmd, const redisReply *r)
{
    struct blob b;
    enum lv_idem_result res = begin_result(s, r, cmd->fp, &b);
    struct rop *op = cmd->op;
    if (!op) {
        /* Cancelled or timed out after the lock was taken: give it back now rather than
         * leave it until the lease ends. */
        if (res == LV_IDEM_ACQUIRED)
            send_release(s, cmd->rkey, cmd->rklen, cmd->blob, cmd->bloblen, NULL);
        return;
    }
    lv_dlist_remove(&op->base.link);
    op->cmd = NULL;
    op->base.result = res;
    if (res == LV_IDEM_ACQUIRED) {
        struct rlock *lk = lv_xcalloc(1, sizeof(*lk));
        lk->base.store = &s->base;
        lk->rkey = cmd->rkey;
        lk->rklen = cmd->rklen;
        lk->blob = cmd->blob;
        lk->bloblen = cmd->bloblen;
        cmd->rkey = cmd->blob = NULL;
        s->base.locks++;
        op->base.lock = &lk->base;
    } else if (res == LV_IDEM_REPLAY) {
        /* The reply is freed when we return; the callback runs later. */
        size_t n = b.resp.head_len + b.resp.body_len;
        op->base.owned = lv_xmalloc(n ? n : 1);
        memcpy(op->base.owned, b.resp.head, n);
        op->base.stored =
            (struct lv_idem_response){b.resp.status, op->base.owned, b.resp.head_len,
                                      op->base.owned + b.resp.head_len, b.resp.body_len};
    }
    lv__idem_post(&op->base);
}

static void reply_poll(struct rstore *s, struct rcmd *cmd, const redisReply *r)
{
    struct rop *op = cmd->op;
    if (!op)
        return;
    op->cmd = NULL;
    bool in_flight = r && r->type == REDIS_REPLY_STRING && r->str && r->len == TAG_LEN &&
                     memcmp(r->str, "lv1 I ", TAG_LEN) == 0;
    if (in_flight)
        return;
    /* Done, gone, or trouble: the caller asks again and learns which. */
    lv_dlist_remove(&op->base.link);
    op->base.changed = true;
    lv__idem_post(&op->base);
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata)
{
    struct rcmd *cmd = privdata;
    struct rstore *s = cmd->s;
    const redisReply *r = reply;
    if (!s->base.dying) {
        switch (cmd->kind) {
        case CMD_BEGIN:
            reply_begin(s, cmd, r);
            break;
        case CMD_POLL:
            reply_poll(s, cmd, r);
            break;
        case CMD_COMPLETE:
        case CMD_RELEASE:
            if (cmd->op) { /* the _notify forms: stored (1), or our lock is gone (any count) */
                struct rop *op = cmd->op;
                lv_dlist_remove(&op->base.link);
                op->cmd = NULL;
                op->base.changed = r && r->type == REDIS_REPLY_INTEGER &&
                                   (cmd->kind == CMD_RELEASE || r->integer == 1);
                lv__idem_post(&op->base);
            }
            if (r && r->type == REDIS_REPLY_ERROR)
                lv_warn("idempotency: redis %s:%u: %.*s", s->c.host, s->c.port, (int)r->len,
                        r->str ? r->str : "");
            else if (r && r->type == REDIS_REPLY_INTEGER && r->integer == 0)
                lv_debug("idempotency: lock lapsed before it was %s",
                         cmd->kind == CMD_COMPLETE ? "completed" : "released");
            break;
        }
    }
    cmd_free(cmd);
    assert(s->outstanding > 0);
    /* Closing: the last reply is in, finish from a timer (hiredis is inside a callback). */
    if (--s->outstanding == 0 && s->base.closing && !s->base.dying)
        uv_timer_start(&s->c.conn_timer, lv__redis_on_conn_timer, 0, 0);
}

/* ---- timers: command deadlines and polls */

static void on_tick(uv_timer_t *t)
{
    struct rstore *s = t->data;
    uint64_t now = lv__redis_now(s);
    bool timed_out = false;
    struct lv_dlist *l = s->pending.next;
    while (l != &s->pending) {
        struct rop *op = lv__rop_of(l);
        l = l->next;
        if (op->cmd_deadline > now)
            continue;
        /* A reply overdue means the connection is stuck; a queued op waited too long for a
         * connection attempt that has its own deadline. */
        timed_out = timed_out || !op->unsent;
        lv__redis_fail_op(op);
    }
    l = s->waiters.next;
    while (l != &s->waiters) {
        struct rop *op = lv__rop_of(l);
        l = l->next;
        bool stuck = op->cmd && op->cmd_deadline <= now;
        timed_out = timed_out || stuck;
        if (stuck || op->deadline <= now) {
            if (op->cmd)
                op->cmd->op = NULL;
            op->cmd = NULL;
            lv_dlist_remove(&op->base.link);
            op->base.changed = stuck; /* trouble: the caller asks again and hears it */
            lv__idem_post(&op->base);
        } else if (!op->cmd && op->next_poll <= now && !lv__redis_connecting(&s->c)) {
            struct rcmd *cmd = lv_xcalloc(1, sizeof(*cmd));
            cmd->s = s;
            cmd->op = op;
            cmd->kind = CMD_POLL;
            const char *argv[] = {"GETRANGE", op->rkey, "0", "5"};
            const size_t lens[] = {8, op->rklen, 1, 1};
            if (send_cmd(s, cmd, 4, argv, lens)) {
                op->cmd = cmd;
                op->cmd_deadline = now + s->o.command_timeout_ms;
                op->next_poll = now + s->o.poll_ms;
            } else {
                cmd_free(cmd);
                lv_dlist_remove(&op->base.link);
                op->base.changed = true;
                lv__idem_post(&op->base);
            }
        }
    }
    if (timed_out && s->c.ac && s->c.state == R_UP)
        lv__redis_drop(&s->c, "command timed out");
    if (lv_dlist_empty(&s->pending) && lv_dlist_empty(&s->waiters))
        uv_timer_stop(&s->tick);
}

/* ---- operations */

static struct rop *rop_new(struct rstore *s, size_t extra)
{
    struct rop *op = lv_xcalloc(1, sizeof(*op) + extra + 1);
    op->base.store = &s->base;
    lv_dlist_init(&op->base.link);
    return op;
}

static struct lv_idem_op *redis_begin(struct lv_idem *base, const char *key, size_t klen,
                                      const uint8_t fp[LV_IDEM_FP_LEN], uint64_t lease_ms)
{
    struct rstore *s = (struct rstore *)base;
    struct rop *op = rop_new(s, 0);
    if (!lv__redis_can_send(&s->c) && !lv__redis_connecting(&s->c)) {
        /* Down, backing off: answer now, the caller applies on_store_error. */
        op->base.result = LV_IDEM_UNAVAILABLE;
        lv__idem_post(&op->base);
        return &op->base;
    }
    struct rcmd *cmd = lv_xcalloc(1, sizeof(*cmd));
    cmd->s = s;
    cmd->op = op;
    cmd->kind = CMD_BEGIN;
    cmd->lease_ms = lease_ms;
    memcpy(cmd->fp, fp, LV_IDEM_FP_LEN);
    cmd->rkey = prefixed(s, key, klen, &cmd->rklen);
    cmd->blob = lv_xmalloc(INFLIGHT_LEN + 1);
    memcpy(cmd->blob, "lv1 I ", TAG_LEN);
    hex(cmd->blob + TAG_LEN, fp, LV_IDEM_FP_LEN);
    cmd->blob[TAG_LEN + FPHEX_LEN] = ' ';
    snprintf(cmd->blob + TAG_LEN + FPHEX_LEN + 1, TOKEN_LEN + 1, "%s%016llx", s->id,
             (unsigned long long)++s->token_seq);
    cmd->bloblen = INFLIGHT_LEN;
    op->cmd = cmd;
    op->cmd_deadline = lv__redis_now(s) + s->o.command_timeout_ms;
    lv_dlist_append(&s->pending, &op->base.link);
    if (!lv__redis_can_send(&s->c))
        op->unsent = true; /* sent once connected, see conn_up */
    else if (!send_begin(s, cmd))
        lv__redis_fail_op(op);
    ensure_tick(s);
    return &op->base;
}

static struct lv_idem_op *redis_wait(struct lv_idem *base, const char *key, size_t klen,
                                     uint64_t timeout_ms)
{
    struct rstore *s = (struct rstore *)base;
    struct rop *op = rop_new(s, s->plen + klen);
    memcpy(op->rkey, s->prefix, s->plen);
    memcpy(op->rkey + s->plen, key, klen);
    op->rklen = s->plen + klen;
    if (!lv__redis_can_send(&s->c) && !lv__redis_connecting(&s->c)) {
        op->base.changed = true; /* the caller's next begin answers UNAVAILABLE */
        lv__idem_post(&op->base);
        return &op->base;
    }
    uint64_t now = lv__redis_now(s);
    op->deadline = now + timeout_ms;
    /* The first look waits a poll period: the caller has just seen the key in flight. */
    op->next_poll = now + s->o.poll_ms;
    lv_dlist_append(&s->waiters, &op->base.link);
    ensure_tick(s);
    return &op->base;
}

static void redis_detach(struct lv_idem_op *o)
{
    struct rop *op = (struct rop *)o;
    if (op->cmd && op->unsent)
        cmd_free(op->cmd);
    else if (op->cmd)
        op->cmd->op = NULL;
    op->cmd = NULL;
    op->unsent = false;
    lv_dlist_remove(&op->base.link);
}

static void lock_end(struct rlock *lk)
{
    struct lv_idem *s = lk->base.store;
    free(lk->rkey);
    free(lk->blob);
    free(lk);
    lv__idem_lock_ended(s);
}

/* Posts a notify op's answer at once. */
static struct lv_idem_op *told(struct rop *op, bool yes)
{
    if (!op)
        return NULL;
    op->base.changed = yes;
    lv__idem_post(&op->base);
    return &op->base;
}

/* A notify op waits for its reply like a begin: same deadline, same list. */
static struct lv_idem_op *awaiting(struct rstore *s, struct rop *op)
{
    op->cmd_deadline = lv__redis_now(s) + s->o.command_timeout_ms;
    lv_dlist_append(&s->pending, &op->base.link);
    ensure_tick(s);
    return &op->base;
}

static struct lv_idem_op *redis_release(struct lv_idem_lock *l, bool notify)
{
    struct rlock *lk = (struct rlock *)l;
    struct rstore *s = (struct rstore *)l->store;
    struct rop *op = notify ? rop_new(s, 0) : NULL;
    bool sent = !s->base.dying && send_release(s, lk->rkey, lk->rklen, lk->blob, lk->bloblen, op);
    lock_end(lk);
    if (!op)
        return NULL;
    return sent ? awaiting(s, op) : told(op, false);
}

static struct lv_idem_op *redis_complete(struct lv_idem_lock *l,
                                         const struct lv_idem_response *resp, uint64_t ttl_ms,
                                         bool notify)
{
    struct rlock *lk = (struct rlock *)l;
    struct rstore *s = (struct rstore *)l->store;
    struct rop *op = notify ? rop_new(s, 0) : NULL;
    if (ttl_ms == 0) {
        redis_release(l, false);
        return told(op, false); /* nothing stored, as asked */
    }
    if (s->base.dying) {
        lock_end(lk);
        return told(op, false);
    }
    struct lv_buf v = LV_BUF_INIT;
    lv_buf_append(&v, "lv1 D ", TAG_LEN);
    lv_buf_append(&v, lk->blob + TAG_LEN, FPHEX_LEN); /* our fingerprint */
    int status = resp->status >= 100 && resp->status <= 999 ? resp->status : 500;
    lv_buf_printf(&v, " %03d %zu\n", status, resp->head_len);
    lv_buf_append(&v, resp->head, resp->head_len);
    lv_buf_append(&v, resp->body, resp->body_len);
    char ttl[24];
    int tl = snprintf(ttl, sizeof(ttl), "%llu", (unsigned long long)ttl_ms);
    struct rcmd *cmd = lv_xcalloc(1, sizeof(*cmd));
    cmd->s = s;
    cmd->kind = CMD_COMPLETE;
    cmd->op = op;
    const char *argv[] = {"EVAL", SCRIPT_COMPLETE, "1", lk->rkey, lk->blob, v.data, ttl};
    const size_t lens[] = {4,         sizeof(SCRIPT_COMPLETE) - 1, 1, lk->rklen, lk->bloblen, v.len,
                           (size_t)tl};
    bool sent = send_cmd(s, cmd, 7, argv, lens);
    lv_buf_dispose(&v);
    lock_end(lk);
    if (!sent) {
        lv_warn("idempotency: redis down, a response was not stored");
        cmd_free(cmd);
        return told(op, false);
    }
    if (!op)
        return NULL;
    op->cmd = cmd;
    return awaiting(s, op);
}

static void redis_stats(struct lv_idem *base, struct lv_idem_stats *out)
{
    struct rstore *s = (struct rstore *)base;
    *out = (struct lv_idem_stats){"redis", base->locks, 0, 0, s->c.state == R_UP};
}

/* The last reference went. Lookups are answered UNAVAILABLE (a lock one of them gets after
 * all is given back by reply_begin), waits "not changed"; the notify forms keep waiting for
 * their replies. With a connection, the commands sent get up to command_timeout_ms to be
 * answered; without one, nothing is outstanding. */
static void redis_close(struct lv_idem *base)
{
    struct rstore *s = (struct rstore *)base;
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->pending)
    {
        struct rop *op = lv__rop_of(l);
        if (!op->base.is_wait)
            lv__redis_fail_op(op);
    }
    lv_dlist_foreach_safe(l, n, &s->waiters)
    {
        struct rop *op = lv__rop_of(l);
        redis_detach(&op->base);
        op->base.changed = false;
        lv__idem_post(&op->base);
    }
    lv__redis_conn_stop(&s->c);
    s->close_deadline = lv__redis_now(s) + s->o.command_timeout_ms;
    if (s->outstanding == 0)
        lv__idem_drained(base);
    else
        uv_timer_start(&s->c.conn_timer, lv__redis_on_conn_timer, s->o.command_timeout_ms, 0);
}

/* While closing, conn_timer fires when the last reply came in, or at the deadline: then the
 * notify forms still waiting are answered "no" and destroy abandons the rest. */
static void conn_closing_timer(struct lv__redisconn *c)
{
    struct rstore *s = lv__rstore_of(c);
    if (s->base.dying || s->base.drained)
        return;
    uint64_t now = lv__redis_now(s);
    if (s->outstanding > 0 && now < s->close_deadline) {
        /* A lock ended after the close sent one more command: it gets its time too. */
        uv_timer_start(&s->c.conn_timer, lv__redis_on_conn_timer, s->close_deadline - now, 0);
        return;
    }
    struct lv_dlist *l, *n;
    lv_dlist_foreach_safe(l, n, &s->pending)
    {
        lv__redis_fail_op(lv__rop_of(l));
    }
    lv__idem_drained(&s->base);
}

static void on_handle_close(uv_handle_t *h)
{
    lv__idem_handle_closed(h->data);
}

static void on_conn_closed(uv_handle_t *h)
{
    lv__idem_handle_closed(&lv__rstore_of(h->data)->base);
}

static void redis_destroy(struct lv_idem *base)
{
    struct rstore *s = (struct rstore *)base;
    struct lv_dlist *lists[] = {&s->pending, &s->waiters};
    for (int i = 0; i < 2; i++) {
        while (!lv_dlist_empty(lists[i])) {
            struct rop *op = lv__rop_of(lists[i]->next);
            redis_detach(&op->base);
            lv__idem_op_free(&op->base);
        }
    }
    uv_close((uv_handle_t *)&s->tick, on_handle_close);
    lv__redis_conn_destroy(&s->c, on_conn_closed);
}

static void redis_free(struct lv_idem *base)
{
    struct rstore *s = (struct rstore *)base;
    free(s->c.host);
    free(s->prefix);
    free(s);
}

/* The connection attempt failed: the begins queued for it fail. */
static void conn_down(struct lv__redisconn *c)
{
    struct rstore *s = lv__rstore_of(c);
    struct lv_dlist *l = s->pending.next;
    while (l != &s->pending) {
        struct rop *op = lv__rop_of(l);
        l = l->next;
        if (op->unsent)
            lv__redis_fail_op(op);
    }
}

static void conn_handle_closed(struct lv__redisconn *c)
{
    lv__idem_handle_closed(&lv__rstore_of(c)->base);
}

static const struct lv__redisconn_hooks conn_hooks = {
    .up = conn_up,
    .down = conn_down,
    .closing_timer = conn_closing_timer,
    .handle_closed = conn_handle_closed,
};

static const struct lv__idem_vt redis_vt = {
    .kind = "redis",
    .begin = redis_begin,
    .wait = redis_wait,
    .resolve = NULL,
    .detach = redis_detach,
    .complete = redis_complete,
    .release = redis_release,
    .stats = redis_stats,
    .close = redis_close,
    .destroy = redis_destroy,
    .free = redis_free,
};

struct lv_idem *lv_idem_redis_create(uv_loop_t *loop, const char *host, uint16_t port,
                                     const char *prefix, const struct lv_idem_redis_opts *opts)
{
    struct rstore *s = lv_xcalloc(1, sizeof(*s));
    lv__idem_init(&s->base, &redis_vt, loop);
    if (opts)
        s->o = *opts;
    if (!s->o.connect_timeout_ms)
        s->o.connect_timeout_ms = 1000;
    if (!s->o.command_timeout_ms)
        s->o.command_timeout_ms = 1000;
    if (!s->o.poll_ms)
        s->o.poll_ms = 25;
    if (!s->o.backoff_min_ms)
        s->o.backoff_min_ms = 50;
    if (!s->o.backoff_max_ms)
        s->o.backoff_max_ms = 2000;
    if (s->o.backoff_max_ms < s->o.backoff_min_ms)
        s->o.backoff_max_ms = s->o.backoff_min_ms;
    s->prefix = lv_xstrdup(prefix ? prefix : "");
    s->plen = strlen(s->prefix);
    lv_dlist_init(&s->pending);
    lv_dlist_init(&s->waiters);
    uint8_t rnd[16];
    if (RAND_bytes(rnd, sizeof(rnd)) != 1) {
        uint64_t x = uv_hrtime() ^ (uint64_t)(uintptr_t)s ^ (uint64_t)uv_os_getpid() << 32;
        memcpy(rnd, &x, 8);
        x *= 0x9E3779B97F4A7C15ULL;
        memcpy(rnd + 8, &x, 8);
    }
    hex(s->id, rnd, 8);
    s->id[16] = 0;
    uint64_t seed;
    memcpy(&seed, rnd + 8, 8);
    s->c.loop = loop;
    s->c.hooks = &conn_hooks;
    s->c.what = "idempotency";
    s->c.dying = &s->base.dying;
    s->c.closing = &s->base.closing;
    s->c.handles = &s->base.handles;
    s->c.connect_timeout_ms = s->o.connect_timeout_ms;
    s->c.backoff_min_ms = s->o.backoff_min_ms;
    s->c.backoff_max_ms = s->o.backoff_max_ms;
    lv__redis_conn_init(&s->c, host, port, seed);
    uv_timer_init(loop, &s->tick);
    s->tick.data = s;
    s->base.handles++;
    lv__redis_connect(&s->c);
    return &s->base;
}
