#include "base/buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void oom(void)
{
    fputs("levee: out of memory\n", stderr);
    abort();
}

void *lv_xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        oom();
    return p;
}

void *lv_xcalloc(size_t n, size_t size)
{
    void *p = calloc(n ? n : 1, size ? size : 1);
    if (!p)
        oom();
    return p;
}

void *lv_xrealloc(void *p, size_t n)
{
    p = realloc(p, n ? n : 1);
    if (!p)
        oom();
    return p;
}

char *lv_xstrdup(const char *s)
{
    return lv_xstrndup(s, strlen(s));
}

char *lv_xstrndup(const char *s, size_t n)
{
    char *p = lv_xmalloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

char *lv_buf_reserve(struct lv_buf *b, size_t extra)
{
    if (b->cap - b->len < extra) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap - b->len < extra)
            cap *= 2;
        b->data = lv_xrealloc(b->data, cap);
        b->cap = cap;
    }
    return b->data + b->len;
}

void lv_buf_append(struct lv_buf *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    memcpy(lv_buf_reserve(b, n), p, n);
    b->len += n;
}

void lv_buf_puts(struct lv_buf *b, const char *s)
{
    lv_buf_append(b, s, strlen(s));
}

void lv_buf_putc(struct lv_buf *b, char c)
{
    *lv_buf_reserve(b, 1) = c;
    b->len++;
}

void lv_buf_vprintf(struct lv_buf *b, const char *fmt, va_list ap)
{
    va_list cp;
    va_copy(cp, ap);
    char *dst = lv_buf_reserve(b, 64); /* before reading cap: reserve may grow it */
    int n = vsnprintf(dst, b->cap - b->len, fmt, cp);
    va_end(cp);
    if (n < 0)
        return;
    if ((size_t)n >= b->cap - b->len) {
        lv_buf_reserve(b, (size_t)n + 1);
        vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
    }
    b->len += (size_t)n;
}

void lv_buf_printf(struct lv_buf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    lv_buf_vprintf(b, fmt, ap);
    va_end(ap);
}

void lv_buf_putu(struct lv_buf *b, unsigned long long v)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    lv_buf_append(b, tmp + i, sizeof(tmp) - (size_t)i);
}

void lv_buf_json_escape(struct lv_buf *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        switch (c) {
        case '"':
            lv_buf_append(b, "\\\"", 2);
            break;
        case '\\':
            lv_buf_append(b, "\\\\", 2);
            break;
        case '\n':
            lv_buf_append(b, "\\n", 2);
            break;
        case '\r':
            lv_buf_append(b, "\\r", 2);
            break;
        case '\t':
            lv_buf_append(b, "\\t", 2);
            break;
        default:
            if (c < 0x20 || c == 0x7f || c >= 0x80) {
                /* Bytes from the network are not trusted to be UTF-8: escape them. */
                char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
                lv_buf_append(b, e, 6);
            } else {
                lv_buf_putc(b, (char)c);
            }
        }
    }
}

void lv_buf_consume(struct lv_buf *b, size_t n)
{
    if (n >= b->len) {
        b->len = 0;
        return;
    }
    memmove(b->data, b->data + n, b->len - n);
    b->len -= n;
}

void lv_buf_reset(struct lv_buf *b)
{
    b->len = 0;
}

void lv_buf_dispose(struct lv_buf *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}
