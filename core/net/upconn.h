/*
 * upconn.h: what net/upstream.c and net/upconn.c share, and nothing else includes. The public
 * side of connections (lv_upconn_*) is in net/upstream.h.
 */
#ifndef LV_UPCONN_H
#define LV_UPCONN_H

#include <stdbool.h>
#include <stdint.h>

#include "net/upstream.h"

/** The upstream's clock (the loop's, in ms). */
static inline uint64_t lv__upstream_now(const struct lv_upstream *up)
{
    return uv_now(up->loop);
}

/** The most recently pooled idle connection of `s`, or NULL. */
static inline struct lv_upconn *lv__upserver_idle_first(struct lv_upserver *s)
{
    struct lv_dlist *l = lv_dlist_first(&s->idle_conns);
    return l ? lv_dlist_entry(l, struct lv_upconn, idle_link) : NULL;
}

/** Ends an acquire: it is no longer active, and its callback runs now. */
static inline void lv__acquire_done(struct lv_acquire *acq, enum lv_acquire_error err,
                                    struct lv_upconn *uc, const char *detail)
{
    acq->active = false;
    acq->cb(err, uc, detail, acq->arg);
}

/* upconn.c */

/** Closes a connection (with an RST when `reset`); a no-op for one already closing. */
void lv__upconn_close(struct lv_upconn *uc, bool reset);
/** Opens a new connection to `s` for `acq` (a race over its addresses, one pool slot). */
void lv__upconn_race_start(struct lv_upserver *s, struct lv_acquire *acq);

/** A cancelled acquire lets go of its race (which then pools its winner, if any). */
void lv__upconn_race_detach(struct lv_acquire *acq);

/* upstream.c */

/** Serves the wait queue: pooled connections, new races, queue timeouts and overflow. */
void lv__upstream_dispatch_waiters(struct lv_upstream *up);

#endif
