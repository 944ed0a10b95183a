/*
 * dlist: the one intrusive doubly linked list. A `struct lv_dlist` is both the head (a sentinel)
 * and the link embedded in each element; lists are circular, so no operation needs a NULL
 * check. An element is "linked" while it is on a list; lv_dlist_remove leaves it unlinked
 * (pointing at itself), so removing it twice is harmless and lv_dlist_linked tells.
 */
#ifndef LV_DLIST_H
#define LV_DLIST_H

#include <assert.h>
#include <stdbool.h>
#include <stddef.h>

struct lv_dlist {
    struct lv_dlist *next, *prev;
};

/** The element of type `type` whose member `member` is the link `l`. */
#define lv_dlist_entry(l, type, member) ((type *)(void *)((char *)(l)-offsetof(type, member)))

/** Empty head, or unlinked element. */
static inline void lv_dlist_init(struct lv_dlist *h)
{
    h->next = h->prev = h;
}

static inline bool lv_dlist_empty(const struct lv_dlist *h)
{
    return h->next == h;
}

/** True while `l` is on a list (after lv_dlist_init or lv_dlist_remove: false). */
static inline bool lv_dlist_linked(const struct lv_dlist *l)
{
    return l->next != l;
}

static inline void lv__dlist_insert(struct lv_dlist *l, struct lv_dlist *prev,
                                    struct lv_dlist *next)
{
    /* Linking an element that is on a list already would corrupt both lists. */
    assert(l->next == NULL || l->next == l);
    l->prev = prev;
    l->next = next;
    prev->next = l;
    next->prev = l;
}

/** Adds `l` at the end of `h` (FIFO order with lv_dlist_first). */
static inline void lv_dlist_append(struct lv_dlist *h, struct lv_dlist *l)
{
    lv__dlist_insert(l, h->prev, h);
}

/** Adds `l` at the front of `h` (LIFO order with lv_dlist_first). */
static inline void lv_dlist_push(struct lv_dlist *h, struct lv_dlist *l)
{
    lv__dlist_insert(l, h, h->next);
}

/** Unlinks `l` and leaves it unlinked; a no-op on an unlinked element. */
static inline void lv_dlist_remove(struct lv_dlist *l)
{
    l->prev->next = l->next;
    l->next->prev = l->prev;
    l->next = l->prev = l;
}

/** First link of `h`, or NULL when empty. */
static inline struct lv_dlist *lv_dlist_first(const struct lv_dlist *h)
{
    return h->next == h ? NULL : h->next;
}

/** Moves every element of `from` to the end of `to`, in order; `from` ends empty. */
static inline void lv_dlist_splice(struct lv_dlist *to, struct lv_dlist *from)
{
    if (lv_dlist_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    lv_dlist_init(from);
}

/** Walks `h` with `l` (a struct lv_dlist *); `n` keeps the next link, so `l` may be removed. */
#define lv_dlist_foreach_safe(l, n, h)                                                             \
    for ((l) = (h)->next, (n) = (l)->next; (l) != (h); (l) = (n), (n) = (l)->next)

#endif
