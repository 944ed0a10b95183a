#include "obs/metrics.h"

#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double lv_metric_default_buckets[LV_METRIC_DEFAULT_NBUCKETS] = {
    .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10};

/*
 * Values live apart from the structure, in one arena per shard: fixed-size chunks, allocated
 * zeroed, cache-line aligned, never moved and freed only with the registry. A series owns
 * `width` consecutive slots (1 for a counter or gauge; a histogram's buckets, +Inf included,
 * then its sum), at the same registry-wide slot index in every shard and never across a chunk
 * boundary. Chunks of different shards are separate allocations, so two workers never write
 * the same cache line; series of one shard share lines, but they have one writer.
 *
 * Each slot is an _Atomic uint64_t: a count, or the bits of a double. Its shard's thread
 * updates it with a relaxed load and a relaxed store (a plain mov on x86-64, no lock prefix:
 * there is a single writer per shard), readers sum the shards with relaxed loads. A series
 * keeps a pointer to its first slot in each shard, so an update loads that pointer from the
 * series and then the slot: no chunk table on the way.
 */
#define CHUNK_BYTES 4096
#define CHUNK_SLOTS (CHUNK_BYTES / sizeof(uint64_t))
#define CACHE_LINE  64
/* Most shards a registry may have: far more workers than any machine has cores. */
#define MAX_SHARDS 4096

_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "metric slots need lock-free 64-bit atomics");
_Static_assert(sizeof(uint64_t) == sizeof(double), "a slot holds the bits of a double");
_Static_assert(LV_METRIC_MAX_BUCKETS + 2 <= CHUNK_SLOTS, "a series fits in one chunk");

/* The shard the calling thread writes (lv_metrics_bind_thread); 0 until bound. */
static _Thread_local unsigned thread_shard;

/* What lookups, lv_metric_set and renders use, kept off the line the updates read. */
struct series_meta {
    /* The value last given to lv_metric_set (bits of a double), added to the shards' sum. */
    _Atomic uint64_t base;
    uint64_t hash;
    int hidden;    /* under the registry lock */
    char **values; /* fam->nlabels copies (in the series' own block) */
    char *labels;  /* in the same block; pre-rendered `a="x",b="y"` with values escaped; "" without
                      labels */
    size_t labels_len;
};

/* One cache-line-aligned block: this header, the shard pointers, then the meta, the value
 * pointers, the values and the labels. Written only before the pointer is handed out. */
struct lv_metric {
    enum lv_metric_type type;
    unsigned nshards;
    struct lv_metric_family *fam;
    struct series_meta *meta;
    _Atomic uint64_t *cells[]; /* per shard: this series' first slot in that shard's arena */
};

struct lv_metric_family {
    struct lv_metrics *m;
    char *name;
    char *help;
    enum lv_metric_type type;
    size_t nlabels;
    char *label_names[LV_METRIC_MAX_LABELS];
    size_t nbuckets;
    double bounds[LV_METRIC_MAX_BUCKETS];
    char *le[LV_METRIC_MAX_BUCKETS]; /* bounds rendered once, as they appear in le="..." */
    struct lv_metric **series;       /* creation order */
    size_t nseries, series_cap;
    size_t nvisible;
    struct lv_metric **table; /* open addressing by label hash; never shrinks */
    size_t table_cap;         /* a power of two, or 0 */
};

struct lv__render_cb {
    void (*cb)(struct lv_metrics *, void *);
    void *arg;
};

struct lv_metrics {
    /* Families, series, the hidden flags and the slot allocator. Never held while running an
     * on-render callback, so a callback may look series up. */
    pthread_mutex_t lock;
    /* Recursive: the callback list and whole renders (a callback may register another). */
    pthread_mutex_t render_lock;
    unsigned nshards;
    struct lv_metric_family **fams; /* registration order */
    size_t nfams, fams_cap;
    struct lv__render_cb *cbs;
    size_t ncbs, cbs_cap;
    size_t next_slot;          /* registry-wide slot index of the next series */
    size_t nchunks;            /* chunks per shard */
    _Atomic uint64_t **chunks; /* chunk c of shard k at [c * nshards + k] */
    size_t chunks_cap;
};

__attribute__((noreturn, format(printf, 1, 2))) static void misuse(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("levee: metrics: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static int valid_name(const char *s, int colon_ok)
{
    if (!s || !*s)
        return 0;
    for (const char *p = s; *p; p++) {
        char c = *p;
        int alpha =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' || (colon_ok && c == ':');
        if (!alpha && !(p != s && c >= '0' && c <= '9'))
            return 0;
    }
    return 1;
}

/* Shortest text that reads back as the same double, in the form Prometheus parsers accept. */
static void put_double(struct lv_buf *b, double v)
{
    if (isnan(v)) {
        lv_buf_append(b, "NaN", 3);
        return;
    }
    if (isinf(v)) {
        lv_buf_puts(b, v > 0 ? "+Inf" : "-Inf");
        return;
    }
    if (fabs(v) < 9007199254740992.0 && v == floor(v)) {
        /* Integral values (every counter, most gauges) skip printf. */
        if (v < 0)
            lv_buf_putc(b, '-');
        lv_buf_putu(b, (unsigned long long)fabs(v));
        return;
    }
    char tmp[32];
    snprintf(tmp, sizeof(tmp), "%.15g", v);
    if (strtod(tmp, NULL) != v)
        snprintf(tmp, sizeof(tmp), "%.17g", v);
    lv_buf_puts(b, tmp);
}

/* Escapes for a label value (quote too) or for help text (quote kept as is). */
static void put_escaped(struct lv_buf *b, const char *s, int quote)
{
    const char *run = s;
    for (; *s; s++) {
        const char *e = NULL;
        if (*s == '\\')
            e = "\\\\";
        else if (*s == '\n')
            e = "\\n";
        else if (*s == '"' && quote)
            e = "\\\"";
        if (e) {
            lv_buf_append(b, run, (size_t)(s - run));
            lv_buf_append(b, e, 2);
            run = s + 1;
        }
    }
    lv_buf_append(b, run, (size_t)(s - run));
}

static uint64_t hash_values(size_t n, const char *const *values)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        const char *v = values && values[i] ? values[i] : "";
        for (; *v; v++)
            h = (h ^ (unsigned char)*v) * 1099511628211ull;
        h = (h ^ 0xff) * 1099511628211ull; /* separator: ("ab","") != ("a","b") */
    }
    return h;
}

static int same_values(const struct lv_metric *s, size_t n, const char *const *values)
{
    for (size_t i = 0; i < n; i++) {
        const char *v = values && values[i] ? values[i] : "";
        if (strcmp(s->meta->values[i], v) != 0)
            return 0;
    }
    return 1;
}

static void table_insert(struct lv_metric_family *f, struct lv_metric *s)
{
    size_t mask = f->table_cap - 1;
    size_t i = (size_t)s->meta->hash & mask;
    while (f->table[i])
        i = (i + 1) & mask;
    f->table[i] = s;
}

static void table_grow(struct lv_metric_family *f)
{
    size_t cap = f->table_cap ? f->table_cap * 2 : 16;
    free(f->table);
    f->table = lv_xcalloc(cap, sizeof(*f->table));
    f->table_cap = cap;
    for (size_t i = 0; i < f->nseries; i++)
        table_insert(f, f->series[i]);
}

static void lock(pthread_mutex_t *mu)
{
    if (pthread_mutex_lock(mu) != 0)
        abort();
}

static void unlock(pthread_mutex_t *mu)
{
    if (pthread_mutex_unlock(mu) != 0)
        abort();
}

static uint64_t load(const _Atomic uint64_t *p)
{
    return atomic_load_explicit(p, memory_order_relaxed);
}

static void store(_Atomic uint64_t *p, uint64_t v)
{
    atomic_store_explicit(p, v, memory_order_relaxed);
}

static double to_double(uint64_t u)
{
    double d;
    memcpy(&d, &u, sizeof(d));
    return d;
}

static uint64_t to_bits(double d)
{
    uint64_t u;
    memcpy(&u, &d, sizeof(u));
    return u;
}

/* Single writer: a load and a store, no read-modify-write instruction. */
static void add_double(_Atomic uint64_t *p, double v)
{
    store(p, to_bits(to_double(load(p)) + v));
}

static void add_count(_Atomic uint64_t *p)
{
    store(p, load(p) + 1);
}

__attribute__((noreturn, cold)) static void bad_shard(const struct lv_metric *s)
{
    misuse("%s: thread bound to shard %u of a registry with %u", s->fam->name, thread_shard,
           s->nshards);
}

/* The calling thread's slots of `s`. */
static inline _Atomic uint64_t *own_cells(const struct lv_metric *s)
{
    unsigned k = thread_shard;
    if (__builtin_expect(k >= s->nshards, 0))
        bad_shard(s);
    return s->cells[k];
}

/* `acc` plus slot `i` of every shard, read as doubles. Zero slots (never written, or zeroed by
 * lv_metric_set) are skipped, so a value set alone reads back bit for bit (-0.0 included). */
static double sum_doubles(const struct lv_metric *s, size_t i, double acc)
{
    for (unsigned k = 0; k < s->nshards; k++) {
        uint64_t b = load(&s->cells[k][i]);
        if (b)
            acc += to_double(b);
    }
    return acc;
}

static uint64_t sum_counts(const struct lv_metric *s, size_t i)
{
    uint64_t n = 0;
    for (unsigned k = 0; k < s->nshards; k++)
        n += load(&s->cells[k][i]);
    return n;
}

/* Slots per shard of a series of family `f`. */
static size_t series_width(const struct lv_metric_family *f)
{
    return f->type == LV_METRIC_HISTOGRAM ? f->nbuckets + 2 : 1;
}

/* Reserves `width` consecutive slots, all in one chunk, and returns the first one's index;
 * adds a chunk to every shard when the series starts a new one. Registry lock held. */
static size_t slots_alloc(struct lv_metrics *m, size_t width)
{
    size_t off = m->next_slot % CHUNK_SLOTS;
    if (off + width > CHUNK_SLOTS)
        m->next_slot += CHUNK_SLOTS - off;
    size_t first = m->next_slot;
    m->next_slot += width;
    size_t chunk = first / CHUNK_SLOTS;
    while (m->nchunks <= chunk) {
        size_t need = (m->nchunks + 1) * m->nshards;
        if (need > m->chunks_cap) {
            m->chunks_cap = m->chunks_cap ? m->chunks_cap * 2 : m->nshards * 4;
            if (m->chunks_cap < need)
                m->chunks_cap = need;
            m->chunks = lv_xrealloc(m->chunks, m->chunks_cap * sizeof(*m->chunks));
        }
        for (unsigned k = 0; k < m->nshards; k++) {
            _Atomic uint64_t *c = aligned_alloc(CACHE_LINE, CHUNK_BYTES);
            if (!c)
                misuse("out of memory");
            memset(c, 0, CHUNK_BYTES);
            m->chunks[m->nchunks * m->nshards + k] = c;
        }
        m->nchunks++;
    }
    return first;
}

/* One allocation per series (a route may have thousands): the struct, its per-shard slot
 * pointers, its meta, the value pointers, the values and the rendered labels. Registry lock
 * held. */
static struct lv_metric *series_create(struct lv_metric_family *f, const char *const *values,
                                       uint64_t hash)
{
    struct lv_metrics *m = f->m;
    struct lv_buf lb = LV_BUF_INIT;
    size_t vbytes = 0;
    for (size_t i = 0; i < f->nlabels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        vbytes += strlen(v) + 1;
        if (i)
            lv_buf_putc(&lb, ',');
        lv_buf_puts(&lb, f->label_names[i]);
        lv_buf_append(&lb, "=\"", 2);
        put_escaped(&lb, v, 1);
        lv_buf_putc(&lb, '"');
    }
    size_t head = sizeof(struct lv_metric) + m->nshards * sizeof(_Atomic uint64_t *);
    /* The meta on its own lines: lv_metric_set writes it, updates never read it. */
    head = (head + CACHE_LINE - 1) & ~(size_t)(CACHE_LINE - 1);
    size_t ptrs = f->nlabels * sizeof(char *);
    size_t size = head + sizeof(struct series_meta) + ptrs + vbytes + lb.len + 1;
    size = (size + CACHE_LINE - 1) & ~(size_t)(CACHE_LINE - 1);
    /* Aligned, so the header and the first shard pointers (5 of them) share one line. */
    struct lv_metric *s = aligned_alloc(CACHE_LINE, size);
    if (!s)
        misuse("out of memory");
    memset(s, 0, size);
    s->type = f->type;
    s->nshards = m->nshards;
    s->fam = f;
    s->meta = (struct series_meta *)((char *)s + head);
    s->meta->hash = hash;
    size_t first = slots_alloc(m, series_width(f));
    _Atomic uint64_t *const *chunk = &m->chunks[first / CHUNK_SLOTS * m->nshards];
    for (unsigned k = 0; k < m->nshards; k++)
        s->cells[k] = chunk[k] + first % CHUNK_SLOTS;
    s->meta->values = (char **)((char *)s->meta + sizeof(struct series_meta));
    char *text = (char *)s->meta->values + ptrs;
    for (size_t i = 0; i < f->nlabels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        size_t n = strlen(v) + 1;
        s->meta->values[i] = memcpy(text, v, n);
        text += n;
    }
    s->meta->labels = text;
    s->meta->labels_len = lb.len;
    if (lb.len)
        memcpy(text, lb.data, lb.len);
    lv_buf_dispose(&lb);

    if (f->nseries == f->series_cap) {
        f->series_cap = f->series_cap ? f->series_cap * 2 : 8;
        f->series = lv_xrealloc(f->series, f->series_cap * sizeof(*f->series));
    }
    f->series[f->nseries++] = s;
    f->nvisible++;
    if (f->nseries * 2 > f->table_cap)
        table_grow(f); /* re-inserts every series, this one included */
    else
        table_insert(f, s);
    return s;
}

struct lv_metrics *lv_metrics_create_sharded(unsigned nshards)
{
    if (nshards == 0 || nshards > MAX_SHARDS)
        misuse("%u shards (1 to %d)", nshards, MAX_SHARDS);
    struct lv_metrics *m = lv_xcalloc(1, sizeof(*m));
    m->nshards = nshards;
    pthread_mutexattr_t attr;
    if (pthread_mutex_init(&m->lock, NULL) != 0 || pthread_mutexattr_init(&attr) != 0 ||
        pthread_mutexattr_settype(&attr, PTHREAD_MUTEX_RECURSIVE) != 0 ||
        pthread_mutex_init(&m->render_lock, &attr) != 0)
        misuse("cannot create the registry locks");
    pthread_mutexattr_destroy(&attr);
    return m;
}

struct lv_metrics *lv_metrics_create(void)
{
    return lv_metrics_create_sharded(1);
}

void lv_metrics_bind_thread(unsigned shard)
{
    thread_shard = shard;
}

static void family_free(struct lv_metric_family *f)
{
    for (size_t i = 0; i < f->nseries; i++) {
        struct lv_metric *s = f->series[i];
        free(s); /* meta, values and labels live in the same block */
    }
    for (size_t i = 0; i < f->nlabels; i++)
        free(f->label_names[i]);
    for (size_t i = 0; i < f->nbuckets; i++)
        free(f->le[i]);
    free(f->series);
    free(f->table);
    free(f->name);
    free(f->help);
    free(f);
}

void lv_metrics_destroy(struct lv_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nfams; i++)
        family_free(m->fams[i]);
    for (size_t i = 0; i < m->nchunks * m->nshards; i++)
        free(m->chunks[i]);
    free(m->chunks);
    free(m->fams);
    free(m->cbs);
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->render_lock);
    free(m);
}

static struct lv_metric_family *find_locked(struct lv_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->nfams; i++)
        if (strcmp(m->fams[i]->name, name) == 0)
            return m->fams[i];
    return NULL;
}

struct lv_metric_family *lv_metrics_find(struct lv_metrics *m, const char *name)
{
    lock(&m->lock);
    struct lv_metric_family *f = find_locked(m, name);
    unlock(&m->lock);
    return f;
}

static const char *type_name(enum lv_metric_type t)
{
    switch (t) {
    case LV_METRIC_COUNTER:
        return "counter";
    case LV_METRIC_GAUGE:
        return "gauge";
    case LV_METRIC_HISTOGRAM:
        return "histogram";
    }
    return "untyped";
}

static struct lv_metric *series_locked(struct lv_metric_family *f, const char *const *label_values)
{
    uint64_t h = hash_values(f->nlabels, label_values);
    if (f->table_cap) {
        size_t mask = f->table_cap - 1;
        for (size_t i = (size_t)h & mask; f->table[i]; i = (i + 1) & mask) {
            struct lv_metric *s = f->table[i];
            if (s->meta->hash == h && same_values(s, f->nlabels, label_values)) {
                if (s->meta->hidden) {
                    s->meta->hidden = 0;
                    f->nvisible++;
                }
                return s;
            }
        }
    }
    return series_create(f, label_values, h);
}

struct lv_metric_family *lv_metrics_family(struct lv_metrics *m, const char *name, const char *help,
                                           enum lv_metric_type type, const char *const *label_names,
                                           const double *buckets, size_t nbuckets)
{
    if (!valid_name(name, 1))
        misuse("invalid metric name \"%s\"", name ? name : "(null)");
    if (type != LV_METRIC_COUNTER && type != LV_METRIC_GAUGE && type != LV_METRIC_HISTOGRAM)
        misuse("%s: invalid type %d", name, (int)type);

    size_t nlabels = 0;
    while (label_names && label_names[nlabels]) {
        const char *l = label_names[nlabels];
        if (!valid_name(l, 0) || strncmp(l, "__", 2) == 0 ||
            (type == LV_METRIC_HISTOGRAM && strcmp(l, "le") == 0))
            misuse("%s: invalid label name \"%s\"", name, l);
        for (size_t j = 0; j < nlabels; j++)
            if (strcmp(label_names[j], l) == 0)
                misuse("%s: duplicate label name \"%s\"", name, l);
        if (++nlabels > LV_METRIC_MAX_LABELS)
            misuse("%s: more than %d labels", name, LV_METRIC_MAX_LABELS);
    }

    if (type != LV_METRIC_HISTOGRAM) {
        if (buckets || nbuckets)
            misuse("%s: buckets given for a %s", name, type_name(type));
    } else if (!buckets) {
        if (nbuckets)
            misuse("%s: %zu buckets but no bounds", name, nbuckets);
        buckets = lv_metric_default_buckets;
        nbuckets = LV_METRIC_DEFAULT_NBUCKETS;
    }
    if (nbuckets && isinf(buckets[nbuckets - 1]) && buckets[nbuckets - 1] > 0)
        nbuckets--; /* +Inf is implicit */
    if (nbuckets > LV_METRIC_MAX_BUCKETS)
        misuse("%s: more than %d buckets", name, LV_METRIC_MAX_BUCKETS);
    for (size_t i = 0; i < nbuckets; i++)
        if (!isfinite(buckets[i]) || (i && !(buckets[i] > buckets[i - 1])))
            misuse("%s: buckets must be finite and strictly ascending", name);

    lock(&m->lock);
    struct lv_metric_family *f = find_locked(m, name);
    if (f) {
        /* Re-registration (e.g. after a reload) must describe the same family. */
        int same = f->type == type && f->nlabels == nlabels && f->nbuckets == nbuckets;
        for (size_t i = 0; same && i < nlabels; i++)
            same = strcmp(f->label_names[i], label_names[i]) == 0;
        for (size_t i = 0; same && i < nbuckets; i++)
            same = f->bounds[i] == buckets[i];
        if (!same)
            misuse("%s: registered twice with different type, labels or buckets", name);
        unlock(&m->lock);
        return f;
    }

    f = lv_xcalloc(1, sizeof(*f));
    f->m = m;
    f->name = lv_xstrdup(name);
    f->help = lv_xstrdup(help ? help : "");
    f->type = type;
    f->nlabels = nlabels;
    for (size_t i = 0; i < nlabels; i++)
        f->label_names[i] = lv_xstrdup(label_names[i]);
    f->nbuckets = nbuckets;
    struct lv_buf tmp = LV_BUF_INIT;
    for (size_t i = 0; i < nbuckets; i++) {
        f->bounds[i] = buckets[i];
        lv_buf_reset(&tmp);
        put_double(&tmp, buckets[i]);
        f->le[i] = lv_xstrndup(tmp.data, tmp.len);
    }
    lv_buf_dispose(&tmp);

    if (m->nfams == m->fams_cap) {
        m->fams_cap = m->fams_cap ? m->fams_cap * 2 : 16;
        m->fams = lv_xrealloc(m->fams, m->fams_cap * sizeof(*m->fams));
    }
    m->fams[m->nfams++] = f;
    if (nlabels == 0)
        series_locked(f, NULL);
    unlock(&m->lock);
    return f;
}

struct lv_metric *lv_metric_series(struct lv_metric_family *f, const char *const *label_values)
{
    if (f->nlabels && !label_values)
        misuse("%s: label values missing", f->name);
    lock(&f->m->lock);
    struct lv_metric *s = series_locked(f, label_values);
    unlock(&f->m->lock);
    return s;
}

void lv_metric_add(struct lv_metric *s, double v)
{
    switch (s->type) {
    case LV_METRIC_COUNTER:
        if (v > 0) /* also false for NaN */
            add_double(own_cells(s), v);
        return;
    case LV_METRIC_GAUGE:
        add_double(own_cells(s), v);
        return;
    case LV_METRIC_HISTOGRAM:
        break;
    }
    misuse("%s: add on a histogram", s->fam->name);
}

void lv_metric_set(struct lv_metric *s, double v)
{
    if (s->type == LV_METRIC_HISTOGRAM)
        misuse("%s: set on a histogram", s->fam->name);
    /* What this thread added before is replaced too; other shards are not touched. The check
     * keeps a render on another thread from writing a worker's cache line for nothing. */
    _Atomic uint64_t *own = own_cells(s);
    if (load(own) != 0)
        store(own, 0);
    store(&s->meta->base, to_bits(v));
}

void lv_metric_set_own(struct lv_metric *s, double v)
{
    if (s->type == LV_METRIC_HISTOGRAM)
        misuse("%s: set on a histogram", s->fam->name);
    store(own_cells(s), to_bits(v));
}

void lv_metric_observe(struct lv_metric *s, double v)
{
    const struct lv_metric_family *f = s->fam;
    if (s->type != LV_METRIC_HISTOGRAM)
        misuse("%s: observe on a %s", f->name, type_name(f->type));
    if (isnan(v))
        return;
    size_t i = 0;
    while (i < f->nbuckets && v > f->bounds[i])
        i++;
    _Atomic uint64_t *own = own_cells(s);
    add_count(&own[i]);
    add_double(&own[f->nbuckets + 1], v);
}

/* A histogram's count: every bucket of every shard. */
static uint64_t histogram_count(const struct lv_metric *s)
{
    uint64_t n = 0;
    for (size_t i = 0; i <= s->fam->nbuckets; i++)
        n += sum_counts(s, i);
    return n;
}

double lv_metric_value(const struct lv_metric *s)
{
    if (!s)
        return 0;
    if (s->type == LV_METRIC_HISTOGRAM)
        return (double)histogram_count(s);
    return sum_doubles(s, 0, to_double(load(&s->meta->base)));
}

double lv_metric_sum(const struct lv_metric *s)
{
    if (!s || s->type != LV_METRIC_HISTOGRAM)
        return 0;
    return sum_doubles(s, s->fam->nbuckets + 1, 0);
}

uint64_t lv_metric_bucket(const struct lv_metric *s, size_t i)
{
    if (!s || s->type != LV_METRIC_HISTOGRAM || i > s->fam->nbuckets)
        return 0;
    return sum_counts(s, i);
}

void lv_metric_family_remove(struct lv_metric_family *f, const char *label_name, const char *value)
{
    size_t li = 0;
    while (li < f->nlabels && strcmp(f->label_names[li], label_name) != 0)
        li++;
    if (li == f->nlabels)
        misuse("%s: no label \"%s\" to remove by", f->name, label_name);
    lock(&f->m->lock);
    for (size_t i = 0; i < f->nseries; i++) {
        struct lv_metric *s = f->series[i];
        if (!s->meta->hidden && strcmp(s->meta->values[li], value ? value : "") == 0) {
            s->meta->hidden = 1;
            f->nvisible--;
        }
    }
    unlock(&f->m->lock);
}

void lv_metrics_on_render(struct lv_metrics *m, void (*cb)(struct lv_metrics *, void *), void *arg)
{
    lock(&m->render_lock);
    if (m->ncbs == m->cbs_cap) {
        m->cbs_cap = m->cbs_cap ? m->cbs_cap * 2 : 4;
        m->cbs = lv_xrealloc(m->cbs, m->cbs_cap * sizeof(*m->cbs));
    }
    m->cbs[m->ncbs++] = (struct lv__render_cb){cb, arg};
    unlock(&m->render_lock);
}

void lv_metrics_off_render(struct lv_metrics *m, void (*cb)(struct lv_metrics *, void *), void *arg)
{
    lock(&m->render_lock);
    for (size_t i = 0; i < m->ncbs; i++) {
        if (m->cbs[i].cb == cb && m->cbs[i].arg == arg) {
            memmove(&m->cbs[i], &m->cbs[i + 1], (m->ncbs - i - 1) * sizeof(*m->cbs));
            m->ncbs--;
            break;
        }
    }
    unlock(&m->render_lock);
}

/* name + suffix + {labels[,extra]} */
static void put_sample_name(struct lv_buf *b, const struct lv_metric_family *f, const char *suffix,
                            const struct lv_metric *s, const char *le)
{
    lv_buf_puts(b, f->name);
    lv_buf_puts(b, suffix);
    if (!s->meta->labels_len && !le)
        return;
    lv_buf_putc(b, '{');
    lv_buf_append(b, s->meta->labels, s->meta->labels_len);
    if (le) {
        if (s->meta->labels_len)
            lv_buf_putc(b, ',');
        lv_buf_append(b, "le=\"", 4);
        lv_buf_puts(b, le);
        lv_buf_putc(b, '"');
    }
    lv_buf_putc(b, '}');
}

static void render_histogram(struct lv_buf *b, const struct lv_metric_family *f,
                             const struct lv_metric *s)
{
    /* Each bucket is read once, so _count always equals the +Inf bucket. */
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->nbuckets; i++) {
        cum += sum_counts(s, i);
        put_sample_name(b, f, "_bucket", s, i < f->nbuckets ? f->le[i] : "+Inf");
        lv_buf_putc(b, ' ');
        lv_buf_putu(b, cum);
        lv_buf_putc(b, '\n');
    }
    put_sample_name(b, f, "_sum", s, NULL);
    lv_buf_putc(b, ' ');
    put_double(b, sum_doubles(s, f->nbuckets + 1, 0));
    lv_buf_putc(b, '\n');
    put_sample_name(b, f, "_count", s, NULL);
    lv_buf_putc(b, ' ');
    lv_buf_putu(b, cum);
    lv_buf_putc(b, '\n');
}

void lv_metrics_render(struct lv_metrics *m, struct lv_buf *out)
{
    /* The render lock keeps callbacks from being unregistered while they run and orders whole
     * renders; the structure lock is taken only after the callbacks, which may look up or
     * create series (so may the workers meanwhile). By index: a callback may register another
     * one, moving the array. */
    lock(&m->render_lock);
    for (size_t i = 0; i < m->ncbs; i++)
        m->cbs[i].cb(m, m->cbs[i].arg);

    lock(&m->lock);
    for (size_t i = 0; i < m->nfams; i++) {
        const struct lv_metric_family *f = m->fams[i];
        if (!f->nvisible)
            continue;
        if (f->help[0]) {
            lv_buf_append(out, "# HELP ", 7);
            lv_buf_puts(out, f->name);
            lv_buf_putc(out, ' ');
            put_escaped(out, f->help, 0);
            lv_buf_putc(out, '\n');
        }
        lv_buf_append(out, "# TYPE ", 7);
        lv_buf_puts(out, f->name);
        lv_buf_putc(out, ' ');
        lv_buf_puts(out, type_name(f->type));
        lv_buf_putc(out, '\n');
        for (size_t j = 0; j < f->nseries; j++) {
            const struct lv_metric *s = f->series[j];
            if (s->meta->hidden)
                continue;
            if (f->type == LV_METRIC_HISTOGRAM) {
                render_histogram(out, f, s);
                continue;
            }
            put_sample_name(out, f, "", s, NULL);
            lv_buf_putc(out, ' ');
            put_double(out, lv_metric_value(s));
            lv_buf_putc(out, '\n');
        }
    }
    unlock(&m->lock);
    unlock(&m->render_lock);
}
