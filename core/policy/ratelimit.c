#include "policy/ratelimit.h"

#include <pthread.h>
#include <stdalign.h>
#include <stdlib.h>
#include <sys/random.h>
#include <time.h>

#include "base/siphash.h"

#define MAX_SHARDS     64
#define MIN_SHARE      64 /* keys per shard before there is more than one shard */
#define CLOCK_STEPS    2  /* slots the sweeping hand looks at per check */
#define SF_INTEGER_MAX 999999999999999ULL

/* A key's state; tat == 0 marks a free slot (a stored state always has tat > 0). */
struct slot {
    uint64_t h0, h1; /* 128-bit keyed hash of the key */
    uint64_t tat;
};

struct shard {
    alignas(64) pthread_mutex_t mu;
    struct slot *slots;
    size_t mask;          /* slots - 1 (a power of two) */
    size_t count;         /* slots in use */
    size_t cap;           /* this shard's share of max_keys */
    size_t hand;          /* the sweeping hand: next slot it looks at */
    uint64_t next_expiry; /* no stored state expires before this (a lower bound) */
};

struct lv_ratemem {
    uint64_t sip[2];
    size_t max_keys;
    unsigned nshards; /* a power of two */
    struct shard *shards;
};

/* ---- the table of one shard (called with its lock held) */

/* The slot holding (h0, h1), or the free slot where it would go. */
static size_t probe(const struct shard *s, uint64_t h0, uint64_t h1)
{
    size_t i = (size_t)h0 & s->mask;
    while (s->slots[i].tat && (s->slots[i].h0 != h0 || s->slots[i].h1 != h1))
        i = (i + 1) & s->mask;
    return i;
}

/* Frees slot i, shifting back the entries of its cluster that would then be unreachable. */
static void slot_delete(struct shard *s, size_t i)
{
    size_t j = i;
    for (;;) {
        j = (j + 1) & s->mask;
        if (!s->slots[j].tat)
            break;
        size_t home = (size_t)s->slots[j].h0 & s->mask;
        /* j's entry may move to i when its home is not in the circular range (i, j] */
        bool in_range = i <= j ? (home > i && home <= j) : (home > i || home <= j);
        if (!in_range) {
            s->slots[i] = s->slots[j];
            i = j;
        }
    }
    s->slots[i].tat = 0;
    s->count--;
}

/* The sweeping hand: a few slots per check, so expired states do not pile up in the steady
 * state. A deletion may shift another entry into the slot, so the hand stays on it. */
static void sweep_step(struct shard *s, uint64_t now)
{
    for (int n = 0; n < CLOCK_STEPS; n++) {
        struct slot *e = &s->slots[s->hand];
        if (e->tat && e->tat <= now)
            slot_delete(s, s->hand);
        else
            s->hand = (s->hand + 1) & s->mask;
    }
}

/* Drops every expired state of the shard; records the earliest remaining expiry. */
static void sweep_all(struct shard *s, uint64_t now)
{
    uint64_t earliest = UINT64_MAX;
    size_t i = 0, n = s->mask + 1;
    while (i < n) {
        uint64_t t = s->slots[i].tat;
        if (t && t <= now) {
            slot_delete(s, i); /* an entry may have moved into i: look again */
            continue;
        }
        if (t && t < earliest)
            earliest = t;
        i++;
    }
    /* entries moved from the start of the table to its end during the pass were seen twice,
     * never skipped: a shift only fills the slot being looked at or ones after it */
    s->next_expiry = earliest;
}

/* ---- the store */

struct lv_ratemem *lv_ratemem_new(size_t max_keys)
{
    struct lv_ratemem *m = lv_xcalloc(1, sizeof(*m));
    m->max_keys = max_keys ? max_keys : 1;
    m->nshards = 1;
    while (m->nshards < MAX_SHARDS && (size_t)m->nshards * 2 * MIN_SHARE <= m->max_keys)
        m->nshards *= 2;
    if (getrandom(m->sip, sizeof(m->sip), 0) != (ssize_t)sizeof(m->sip)) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        m->sip[0] = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uint64_t)(uintptr_t)m;
        m->sip[1] = m->sip[0] * 0x9E3779B97F4A7C15ULL;
    }
    void *mem = NULL;
    if (posix_memalign(&mem, 64, sizeof(struct shard) * m->nshards) != 0)
        abort();
    m->shards = mem;
    for (unsigned i = 0; i < m->nshards; i++) {
        struct shard *s = &m->shards[i];
        *s = (struct shard){0};
        pthread_mutex_init(&s->mu, NULL);
        s->cap = m->max_keys / m->nshards + (i < m->max_keys % m->nshards);
        size_t want = s->cap + (s->cap + 2) / 3; /* load at most 3/4 */
        size_t n = 2;
        while (n < want)
            n *= 2;
        s->slots = lv_xcalloc(n, sizeof(struct slot));
        s->mask = n - 1;
    }
    return m;
}

void lv_ratemem_free(struct lv_ratemem *m)
{
    if (!m)
        return;
    for (unsigned i = 0; i < m->nshards; i++) {
        pthread_mutex_destroy(&m->shards[i].mu);
        free(m->shards[i].slots);
    }
    free(m->shards);
    free(m);
}

enum lv_ratemem_rc lv_ratemem_check(struct lv_ratemem *m, const char *key, size_t len,
                                    const struct lv_gcra *g, uint64_t now_ns,
                                    struct lv_gcra_result *out)
{
    uint64_t h[2];
    lv_siphash128(m->sip, key, len, h);
    struct shard *s = &m->shards[h[1] >> 32 & (m->nshards - 1)];
    enum lv_ratemem_rc rc = LV_RATEMEM_OK;
    pthread_mutex_lock(&s->mu);
    sweep_step(s, now_ns);
    size_t i = probe(s, h[0], h[1]);
    if (s->slots[i].tat) {
        lv_gcra_check(g, &s->slots[i].tat, now_ns, out); /* an expired state acts as new */
        goto done;
    }
    uint64_t tat = 0;
    lv_gcra_check(g, &tat, now_ns, out); /* a new key always passes; refusals store nothing */
    if (!out->allowed)
        goto done;
    if (s->count >= s->cap) {
        if (now_ns < s->next_expiry) {
            rc = LV_RATEMEM_FULL;
            goto done;
        }
        sweep_all(s, now_ns);
        if (s->count >= s->cap) {
            rc = LV_RATEMEM_FULL;
            goto done;
        }
        i = probe(s, h[0], h[1]); /* the sweep moved entries */
    }
    s->slots[i] = (struct slot){h[0], h[1], tat};
    s->count++;
    if (tat < s->next_expiry)
        s->next_expiry = tat;
done:
    pthread_mutex_unlock(&s->mu);
    return rc;
}

size_t lv_ratemem_keys(struct lv_ratemem *m)
{
    size_t n = 0;
    for (unsigned i = 0; i < m->nshards; i++) {
        pthread_mutex_lock(&m->shards[i].mu);
        n += m->shards[i].count;
        pthread_mutex_unlock(&m->shards[i].mu);
    }
    return n;
}

size_t lv_ratemem_max_keys(const struct lv_ratemem *m)
{
    return m->max_keys;
}

/* ---- response header fields */

static void put_sf_int(struct lv_buf *out, uint64_t v)
{
    lv_buf_putu(out, v > SF_INTEGER_MAX ? SF_INTEGER_MAX : v);
}

void lv_ratelimit_headers(struct lv_buf *out, const struct lv_gcra *g,
                          const struct lv_gcra_result *r)
{
    uint64_t w = lv_gcra_ceil_s(g->per_ns);
    if (w == 0)
        w = 1;
    /* most requests passing in any w seconds: burst + ceil(w / I) (gcra.h) */
    uint64_t w_ns = w > UINT64_MAX / 1000000000ULL ? UINT64_MAX : w * 1000000000ULL;
    uint64_t per_w = w_ns / g->interval_ns + (w_ns % g->interval_ns != 0);
    uint64_t q = per_w > UINT64_MAX - g->burst ? UINT64_MAX : per_w + g->burst;
    lv_buf_putlit(out, "RateLimit-Policy: \"default\";q=");
    put_sf_int(out, q);
    lv_buf_putlit(out, ";w=");
    put_sf_int(out, w);
    lv_buf_putlit(out, "\r\nRateLimit: \"default\";r=");
    put_sf_int(out, r->allowed ? r->remaining : 0);
    lv_buf_putlit(out, ";t=");
    put_sf_int(out, lv_gcra_ceil_s(r->reset_ns));
    lv_buf_putlit(out, "\r\n");
}
