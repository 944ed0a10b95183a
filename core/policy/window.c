#include "policy/window.h"

#include <string.h>

void lv_window_init(struct lv_window *w, uint64_t window_ms)
{
    memset(w, 0, sizeof(*w));
    w->window_ms = window_ms;
    w->bucket_ms = window_ms / LV_WINDOW_BUCKETS;
    if (w->bucket_ms == 0)
        w->bucket_ms = 1;
}

void lv_window_clear(struct lv_window *w)
{
    memset(w->epoch, 0, sizeof(w->epoch));
    memset(w->count, 0, sizeof(w->count));
}

void lv_window_add(struct lv_window *w, uint64_t now, unsigned c, uint64_t n)
{
    if (c >= LV_WINDOW_COUNTERS)
        return;
    uint64_t e = now / w->bucket_ms;
    unsigned s = (unsigned)(e % LV_WINDOW_BUCKETS);
    if (w->epoch[s] != e) {
        /* the slot still holds a bucket from a lap ago: it has left the window */
        memset(w->count[s], 0, sizeof(w->count[s]));
        w->epoch[s] = e;
    }
    uint64_t *v = &w->count[s][c];
    *v = *v > UINT64_MAX - n ? UINT64_MAX : *v + n;
}

uint64_t lv_window_sum(const struct lv_window *w, uint64_t now, unsigned c)
{
    if (c >= LV_WINDOW_COUNTERS)
        return 0;
    uint64_t e = now / w->bucket_ms, sum = 0;
    for (unsigned s = 0; s < LV_WINDOW_BUCKETS; s++) {
        /* a bucket from the future (clock went back) is not counted either */
        if (w->epoch[s] <= e && e - w->epoch[s] < LV_WINDOW_BUCKETS) {
            uint64_t v = w->count[s][c];
            sum = sum > UINT64_MAX - v ? UINT64_MAX : sum + v;
        }
    }
    return sum;
}

void lv_window_resize(struct lv_window *w, uint64_t window_ms, uint64_t now)
{
    if (window_ms == w->window_ms)
        return;
    uint64_t keep[LV_WINDOW_COUNTERS];
    for (unsigned c = 0; c < LV_WINDOW_COUNTERS; c++)
        keep[c] = lv_window_sum(w, now, c);
    lv_window_init(w, window_ms);
    for (unsigned c = 0; c < LV_WINDOW_COUNTERS; c++)
        if (keep[c])
            lv_window_add(w, now, c, keep[c]);
}
