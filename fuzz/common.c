#include "common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fz_fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("\n*** fuzz check failed: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    abort();
}

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

char *fz_dup(const void *data, size_t n)
{
    char *p = xmalloc(n);
    if (n)
        memcpy(p, data, n);
    return p;
}

void fz_bytes_append(struct fz_bytes *b, const void *data, size_t n)
{
    if (n == 0)
        return;
    char *p = xmalloc(b->len + n);
    if (b->len)
        memcpy(p, b->p, b->len);
    memcpy(p + b->len, data, n);
    free(b->p);
    b->p = p;
    b->len += n;
}

void fz_bytes_consume(struct fz_bytes *b, size_t n)
{
    if (n > b->len)
        fz_fail("consumed %zu bytes of %zu", n, b->len);
    if (n == 0)
        return;
    char *p = b->len - n ? fz_dup(b->p + n, b->len - n) : NULL;
    free(b->p);
    b->p = p;
    b->len -= n;
}

void fz_bytes_free(struct fz_bytes *b)
{
    free(b->p);
    b->p = NULL;
    b->len = 0;
}

static void log_reserve(struct fz_log *l, size_t extra)
{
    if (l->len + extra + 1 <= l->cap)
        return;
    size_t cap = l->cap ? l->cap : 1024;
    while (cap < l->len + extra + 1)
        cap *= 2;
    char *p = realloc(l->p, cap);
    if (!p)
        abort();
    l->p = p;
    l->cap = cap;
}

void fz_logf(struct fz_log *l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        abort();
    log_reserve(l, (size_t)n);
    va_start(ap, fmt);
    vsnprintf(l->p + l->len, l->cap - l->len, fmt, ap);
    va_end(ap);
    l->len += (size_t)n;
}

uint64_t fz_hash(uint64_t h, const void *p, size_t n)
{
    const unsigned char *s = p;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

void fz_log_span(struct fz_log *l, const char *tag, const char *p, size_t n)
{
    if (n && !p)
        fz_fail("span %s: NULL with length %zu", tag, n);
    char preview[4 * 24 + 1];
    size_t k = 0;
    for (size_t i = 0; i < n && i < 24; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c >= 0x20 && c < 0x7f && c != '\\' && c != '\'')
            preview[k++] = (char)c;
        else
            k += (size_t)snprintf(preview + k, sizeof(preview) - k, "\\x%02x", c);
    }
    preview[k] = '\0';
    fz_logf(l, " %s=%zu:%016llx'%s%s'", tag, n,
            (unsigned long long)(n ? fz_hash(FZ_HASH_INIT, p, n) : 0), preview,
            n > 24 ? "..." : "");
}

void fz_log_free(struct fz_log *l)
{
    free(l->p);
    l->p = NULL;
    l->len = l->cap = 0;
}

void fz_split_whole(struct fz_split *s, size_t size)
{
    memset(s, 0, sizeof(*s));
    s->n = 1;
    s->size = size;
    s->end[0] = size;
}

static uint64_t splitmix(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cmp_size(const void *a, const void *b)
{
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

void fz_split_random(struct fz_split *s, const uint8_t *data, size_t size, uint64_t salt)
{
    fz_split_whole(s, size);
    if (size < 2)
        return;
    uint64_t x = fz_hash(FZ_HASH_INIT ^ salt, data, size);
    size_t want = 1 + (size_t)(splitmix(&x) % (FZ_MAX_PIECES - 1));
    size_t cuts[FZ_MAX_PIECES];
    size_t nc = 0;
    for (size_t k = 0; k < want; k++) {
        size_t c;
        /* Half the cuts land anywhere, half a few bytes after the previous one, so short
         * pieces (one CR, half a CRLF) are common. */
        if (nc && splitmix(&x) % 2)
            c = cuts[nc - 1] + 1 + (size_t)(splitmix(&x) % 8);
        else
            c = 1 + (size_t)(splitmix(&x) % (size - 1));
        if (c < size)
            cuts[nc++] = c;
    }
    qsort(cuts, nc, sizeof(cuts[0]), cmp_size);
    s->n = 0;
    for (size_t k = 0; k < nc; k++)
        if (s->n == 0 || cuts[k] != s->end[s->n - 1])
            s->end[s->n++] = cuts[k];
    s->end[s->n++] = size;
}

void fz_split_bytewise(struct fz_split *s, size_t size)
{
    fz_split_whole(s, size);
    s->bytewise = true;
    s->n = size;
}

void fz_split_piece(const struct fz_split *s, size_t k, size_t *off, size_t *len)
{
    if (s->bytewise) {
        *off = k;
        *len = 1;
        return;
    }
    *off = k ? s->end[k - 1] : 0;
    *len = s->end[k] - *off;
}

void fz_split_print(const struct fz_split *s)
{
    if (s->bytewise) {
        fprintf(stderr, "split: one byte per piece (%zu bytes)\n", s->size);
        return;
    }
    fprintf(stderr, "split: %zu pieces ending at", s->n);
    for (size_t k = 0; k < s->n; k++)
        fprintf(stderr, " %zu", s->end[k]);
    fputc('\n', stderr);
}

static void print_log(const char *name, const struct fz_log *l)
{
    const size_t max = 6000;
    fprintf(stderr, "--- %s (%zu bytes)\n%.*s%s\n", name, l->len,
            (int)(l->len < max ? l->len : max), l->p ? l->p : "", l->len > max ? "\n[...]" : "");
}

void fz_compare(const char *target, const struct fz_log *whole, const struct fz_log *split,
                const struct fz_split *how)
{
    if (whole->len == split->len &&
        (whole->len == 0 || memcmp(whole->p, split->p, whole->len) == 0))
        return;
    size_t i = 0, line = 0;
    while (i < whole->len && i < split->len && whole->p[i] == split->p[i]) {
        if (whole->p[i] == '\n')
            line = i + 1;
        i++;
    }
    fprintf(stderr, "\n*** %s: whole and split input give different results\n", target);
    fz_split_print(how);
    const char *w = whole->p ? whole->p + line : "", *p = split->p ? split->p + line : "";
    fprintf(stderr, "first difference in the line at offset %zu:\n  whole: %.*s\n  split: %.*s\n",
            line, (int)strcspn(w, "\n"), w, (int)strcspn(p, "\n"), p);
    print_log("whole", whole);
    print_log("split", split);
    abort();
}
