#include "obs/metrics.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const double lv_metric_default_buckets[LV_METRIC_DEFAULT_NBUCKETS] = {
    .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10};

struct lv_metric {
    /* Hot fields first: an update touches only this cache line (and the bucket array). */
    double value;   /* counter or gauge value; a histogram's sum */
    uint64_t count; /* histogram: observations */
    struct lv_metric_family *fam;
    uint64_t hash;
    int hidden;
    char **values; /* fam->nlabels copies (in the series' own block) */
    char *labels;  /* in the same block; pre-rendered `a="x",b="y"` with values escaped; "" without
                      labels */
    size_t labels_len;
    uint64_t buckets[]; /* histogram: fam->nbuckets finite buckets, then the +Inf overflow */
};

struct lv_metric_family {
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
    struct lv_metric_family **fams; /* registration order */
    size_t nfams, fams_cap;
    struct lv__render_cb *cbs;
    size_t ncbs, cbs_cap;
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
        if (strcmp(s->values[i], v) != 0)
            return 0;
    }
    return 1;
}

static void table_insert(struct lv_metric_family *f, struct lv_metric *s)
{
    size_t mask = f->table_cap - 1;
    size_t i = (size_t)s->hash & mask;
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

/* One allocation per series (a route may have thousands): the struct, its buckets, the value
 * pointers, the values and the rendered labels. */
static struct lv_metric *series_create(struct lv_metric_family *f, const char *const *values,
                                       uint64_t hash)
{
    size_t nb = f->type == LV_METRIC_HISTOGRAM ? f->nbuckets + 1 : 0;
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
    size_t head = sizeof(struct lv_metric) + nb * sizeof(uint64_t);
    size_t ptrs = f->nlabels * sizeof(char *);
    struct lv_metric *s = lv_xcalloc(1, head + ptrs + vbytes + lb.len + 1);
    s->fam = f;
    s->hash = hash;
    s->values = (char **)((char *)s + head);
    char *text = (char *)s + head + ptrs;
    for (size_t i = 0; i < f->nlabels; i++) {
        const char *v = values && values[i] ? values[i] : "";
        size_t n = strlen(v) + 1;
        s->values[i] = memcpy(text, v, n);
        text += n;
    }
    s->labels = text;
    s->labels_len = lb.len;
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

struct lv_metrics *lv_metrics_create(void)
{
    return lv_xcalloc(1, sizeof(struct lv_metrics));
}

static void family_free(struct lv_metric_family *f)
{
    for (size_t i = 0; i < f->nseries; i++) {
        struct lv_metric *s = f->series[i];
        free(s); /* values and labels live in the same block */
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
    free(m->fams);
    free(m->cbs);
    free(m);
}

struct lv_metric_family *lv_metrics_find(struct lv_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->nfams; i++)
        if (strcmp(m->fams[i]->name, name) == 0)
            return m->fams[i];
    return NULL;
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

    struct lv_metric_family *f = lv_metrics_find(m, name);
    if (f) {
        /* Re-registration (e.g. after a reload) must describe the same family. */
        int same = f->type == type && f->nlabels == nlabels && f->nbuckets == nbuckets;
        for (size_t i = 0; same && i < nlabels; i++)
            same = strcmp(f->label_names[i], label_names[i]) == 0;
        for (size_t i = 0; same && i < nbuckets; i++)
            same = f->bounds[i] == buckets[i];
        if (!same)
            misuse("%s: registered twice with different type, labels or buckets", name);
        return f;
    }

    f = lv_xcalloc(1, sizeof(*f));
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
        lv_metric_series(f, NULL);
    return f;
}

struct lv_metric *lv_metric_series(struct lv_metric_family *f, const char *const *label_values)
{
    if (f->nlabels && !label_values)
        misuse("%s: label values missing", f->name);
    uint64_t h = hash_values(f->nlabels, label_values);
    if (f->table_cap) {
        size_t mask = f->table_cap - 1;
        for (size_t i = (size_t)h & mask; f->table[i]; i = (i + 1) & mask) {
            struct lv_metric *s = f->table[i];
            if (s->hash == h && same_values(s, f->nlabels, label_values)) {
                if (s->hidden) {
                    s->hidden = 0;
                    f->nvisible++;
                }
                return s;
            }
        }
    }
    return series_create(f, label_values, h);
}

void lv_metric_add(struct lv_metric *s, double v)
{
    switch (s->fam->type) {
    case LV_METRIC_COUNTER:
        if (v > 0) /* also false for NaN */
            s->value += v;
        return;
    case LV_METRIC_GAUGE:
        s->value += v;
        return;
    case LV_METRIC_HISTOGRAM:
        break;
    }
    misuse("%s: add on a histogram", s->fam->name);
}

void lv_metric_set(struct lv_metric *s, double v)
{
    if (s->fam->type == LV_METRIC_HISTOGRAM)
        misuse("%s: set on a histogram", s->fam->name);
    s->value = v;
}

void lv_metric_observe(struct lv_metric *s, double v)
{
    const struct lv_metric_family *f = s->fam;
    if (f->type != LV_METRIC_HISTOGRAM)
        misuse("%s: observe on a %s", f->name, type_name(f->type));
    if (isnan(v))
        return;
    size_t i = 0;
    while (i < f->nbuckets && v > f->bounds[i])
        i++;
    s->buckets[i]++;
    s->count++;
    s->value += v;
}

double lv_metric_value(const struct lv_metric *s)
{
    if (!s)
        return 0;
    return s->fam->type == LV_METRIC_HISTOGRAM ? (double)s->count : s->value;
}

double lv_metric_sum(const struct lv_metric *s)
{
    if (!s)
        return 0;
    return s->fam->type == LV_METRIC_HISTOGRAM ? s->value : 0;
}

uint64_t lv_metric_bucket(const struct lv_metric *s, size_t i)
{
    if (!s || s->fam->type != LV_METRIC_HISTOGRAM || i > s->fam->nbuckets)
        return 0;
    return s->buckets[i];
}

void lv_metric_family_remove(struct lv_metric_family *f, const char *label_name, const char *value)
{
    size_t li = 0;
    while (li < f->nlabels && strcmp(f->label_names[li], label_name) != 0)
        li++;
    if (li == f->nlabels)
        misuse("%s: no label \"%s\" to remove by", f->name, label_name);
    for (size_t i = 0; i < f->nseries; i++) {
        struct lv_metric *s = f->series[i];
        if (!s->hidden && strcmp(s->values[li], value ? value : "") == 0) {
            s->hidden = 1;
            f->nvisible--;
        }
    }
}

void lv_metrics_on_render(struct lv_metrics *m, void (*cb)(struct lv_metrics *, void *), void *arg)
{
    if (m->ncbs == m->cbs_cap) {
        m->cbs_cap = m->cbs_cap ? m->cbs_cap * 2 : 4;
        m->cbs = lv_xrealloc(m->cbs, m->cbs_cap * sizeof(*m->cbs));
    }
    m->cbs[m->ncbs++] = (struct lv__render_cb){cb, arg};
}

void lv_metrics_off_render(struct lv_metrics *m, void (*cb)(struct lv_metrics *, void *), void *arg)
{
    for (size_t i = 0; i < m->ncbs; i++) {
        if (m->cbs[i].cb == cb && m->cbs[i].arg == arg) {
            memmove(&m->cbs[i], &m->cbs[i + 1], (m->ncbs - i - 1) * sizeof(*m->cbs));
            m->ncbs--;
            return;
        }
    }
}

/* name + suffix + {labels[,extra]} */
static void put_sample_name(struct lv_buf *b, const struct lv_metric_family *f, const char *suffix,
                            const struct lv_metric *s, const char *le)
{
    lv_buf_puts(b, f->name);
    lv_buf_puts(b, suffix);
    if (!s->labels_len && !le)
        return;
    lv_buf_putc(b, '{');
    lv_buf_append(b, s->labels, s->labels_len);
    if (le) {
        if (s->labels_len)
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
    uint64_t cum = 0;
    for (size_t i = 0; i <= f->nbuckets; i++) {
        cum += s->buckets[i];
        put_sample_name(b, f, "_bucket", s, i < f->nbuckets ? f->le[i] : "+Inf");
        lv_buf_putc(b, ' ');
        lv_buf_putu(b, cum);
        lv_buf_putc(b, '\n');
    }
    put_sample_name(b, f, "_sum", s, NULL);
    lv_buf_putc(b, ' ');
    put_double(b, s->value);
    lv_buf_putc(b, '\n');
    put_sample_name(b, f, "_count", s, NULL);
    lv_buf_putc(b, ' ');
    lv_buf_putu(b, s->count);
    lv_buf_putc(b, '\n');
}

void lv_metrics_render(struct lv_metrics *m, struct lv_buf *out)
{
    /* By index: a callback may register another one, moving the array. */
    for (size_t i = 0; i < m->ncbs; i++)
        m->cbs[i].cb(m, m->cbs[i].arg);

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
            if (s->hidden)
                continue;
            if (f->type == LV_METRIC_HISTOGRAM) {
                render_histogram(out, f, s);
                continue;
            }
            put_sample_name(out, f, "", s, NULL);
            lv_buf_putc(out, ' ');
            put_double(out, s->value);
            lv_buf_putc(out, '\n');
        }
    }
}
