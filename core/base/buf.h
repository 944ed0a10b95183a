/*
 * buf: a growable byte buffer. Owns its storage; lv_buf_dispose() frees it.
 * Appends abort on out-of-memory (control allocations only: anything sized by a peer is
 * bounded by the caller before it gets here).
 */
#ifndef LV_BUF_H
#define LV_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct lv_buf {
    char *data;
    size_t len;
    size_t cap;
};

#define LV_BUF_INIT                                                                                \
    {                                                                                              \
        NULL, 0, 0                                                                                 \
    }

/** Make room for at least `extra` more bytes; returns a pointer to data + len. */
char *lv_buf_reserve(struct lv_buf *b, size_t extra);
void lv_buf_append(struct lv_buf *b, const void *p, size_t n);
void lv_buf_puts(struct lv_buf *b, const char *s);
/* A string literal, its length known at compile time (no strlen on the hot path). */
#define lv_buf_putlit(b, lit) lv_buf_append((b), "" lit, sizeof(lit) - 1)
void lv_buf_putc(struct lv_buf *b, char c);
void lv_buf_printf(struct lv_buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void lv_buf_vprintf(struct lv_buf *b, const char *fmt, va_list ap);
/** Appends a decimal unsigned integer. */
void lv_buf_putu(struct lv_buf *b, unsigned long long v);
/** Appends `s` as the inside of a JSON string (no quotes): quotes, backslashes, control bytes
 *  and every byte >= 0x7f escaped (\u00XX), so the output is ASCII and each byte reads back
 *  exactly (a reader sees bytes >= 0x80 as Latin-1 code points; the access log relies on
 *  this). Text that must stay UTF-8 (OTLP spans) uses trace/span's escape instead. */
void lv_buf_json_escape(struct lv_buf *b, const char *s, size_t n);
/** Removes the first n bytes (memmove). */
void lv_buf_consume(struct lv_buf *b, size_t n);
void lv_buf_reset(struct lv_buf *b);
void lv_buf_dispose(struct lv_buf *b);

/** Allocation helpers that abort on OOM (small control structures only). */
void *lv_xmalloc(size_t n);
void *lv_xcalloc(size_t n, size_t size);
void *lv_xrealloc(void *p, size_t n);
char *lv_xstrdup(const char *s);
char *lv_xstrndup(const char *s, size_t n);

#endif
