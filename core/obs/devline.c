#include "obs/devline.h"

#include <math.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define DIM     "\033[2m"
#define BOLD    "\033[1m"
#define RED     "\033[31m"
#define GREEN   "\033[32m"
#define YELLOW  "\033[33m"
#define MAGENTA "\033[35m"
#define CYAN    "\033[36m"
#define RESET   "\033[0m"

static void paint(struct lv_buf *b, bool color, const char *code)
{
    if (color)
        lv_buf_puts(b, code);
}

/* Printable ASCII as is, "\\" for a backslash, \xHH for anything else. */
static void put_safe(struct lv_buf *b, const char *p, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c == '\\') {
            lv_buf_putlit(b, "\\\\");
        } else if (c >= 0x20 && c < 0x7f) {
            lv_buf_putc(b, (char)c);
        } else {
            char esc[4] = {'\\', 'x', hex[c >> 4], hex[c & 15]};
            lv_buf_append(b, esc, 4);
        }
    }
}

/* 0.4ms, 12.3ms, 123ms, 1.23s, 12.3s; "?" when unknown. */
static void put_ms(struct lv_buf *b, double ms)
{
    if (!isfinite(ms) || ms < 0)
        lv_buf_putc(b, '?');
    else if (ms < 99.95)
        lv_buf_printf(b, "%.1fms", ms);
    else if (ms < 999.5)
        lv_buf_printf(b, "%.0fms", ms);
    else if (ms < 9995)
        lv_buf_printf(b, "%.2fs", ms / 1000);
    else
        lv_buf_printf(b, "%.1fs", ms / 1000);
}

static const char *status_color(int status)
{
    return status >= 500 ? RED : status >= 400 ? YELLOW : status >= 300 ? CYAN : GREEN;
}

static void put_status(struct lv_buf *b, bool color, int status)
{
    if (status < 100 || status > 999) {
        lv_buf_putc(b, '-');
        return;
    }
    paint(b, color, status_color(status));
    lv_buf_printf(b, "%d", status);
    paint(b, color, RESET);
}

/* HH:MM:SS.mmm, local time. */
static void put_time(struct lv_buf *b, double unix_s)
{
    if (!(unix_s >= 0) || unix_s > 253402300799.0)
        unix_s = 0;
    long long ms = llround(unix_s * 1e3);
    time_t secs = (time_t)(ms / 1000);
    struct tm tm;
    if (!localtime_r(&secs, &tm))
        memset(&tm, 0, sizeof(tm));
    lv_buf_printf(b, "%02d:%02d:%02d.%03d", tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(ms % 1000));
}

static void put_try(struct lv_buf *b, bool color, const struct lv_access_try *t)
{
    if (t->status)
        put_status(b, color, t->status);
    else {
        paint(b, color, RED);
        lv_buf_puts(b, t->error && *t->error ? t->error : "error");
        paint(b, color, RESET);
    }
    if (t->fault) {
        lv_buf_putc(b, ' ');
        paint(b, color, MAGENTA);
        /* abort and reset say what they did already; delay and throttle do not */
        bool said = strcmp(t->fault, "abort") == 0 || (t->error && strcmp(t->fault, t->error) == 0);
        lv_buf_puts(b, "(fault");
        if (!said) {
            lv_buf_putc(b, ' ');
            lv_buf_puts(b, t->fault);
        }
        lv_buf_putc(b, ')');
        paint(b, color, RESET);
    }
    lv_buf_putc(b, ' ');
    put_ms(b, t->ms);
}

void lv_accesslog_format_console(const struct lv_access_entry *e, struct lv_buf *b, bool color)
{
    paint(b, color, DIM);
    put_time(b, e->time);
    paint(b, color, RESET);
    lv_buf_putc(b, ' ');
    paint(b, color, BOLD);
    if (e->method)
        put_safe(b, e->method, strlen(e->method));
    else
        lv_buf_putc(b, '-');
    paint(b, color, RESET);
    lv_buf_putc(b, ' ');
    if (e->path.ptr && e->path.len) {
        size_t n = e->path.len > LV_DEVLINE_MAX_PATH ? LV_DEVLINE_MAX_PATH : e->path.len;
        put_safe(b, e->path.ptr, n);
        if (n < e->path.len)
            lv_buf_putlit(b, "...");
    } else {
        lv_buf_putc(b, '-');
    }
    lv_buf_putc(b, ' ');
    put_status(b, color, e->status);
    lv_buf_putc(b, ' ');
    put_ms(b, e->duration_ms);

    if (e->ntries) {
        lv_buf_putlit(b, "  ");
        for (unsigned i = 0; i < e->ntries && i < LV_ACCESS_MAX_TRIES; i++) {
            if (i) {
                paint(b, color, DIM);
                lv_buf_putlit(b, " \xe2\x86\x92 "); /* → */
                paint(b, color, RESET);
            }
            put_try(b, color, &e->tries[i]);
        }
        if (e->attempts > (int)e->ntries)
            lv_buf_printf(b, " \xe2\x86\x92 +%d more", e->attempts - (int)e->ntries);
    }

    if (e->flags) {
        lv_buf_putlit(b, "  [");
        bool first = true;
        for (unsigned bit = 0; bit < 32; bit++) {
            const char *name = lv_access_flag_name(e->flags & (1u << bit));
            if (!name)
                continue;
            if (!first)
                lv_buf_putc(b, ' ');
            first = false;
            paint(b, color, (1u << bit) == LV_ACCESS_FAULT ? MAGENTA : YELLOW);
            lv_buf_puts(b, name);
            paint(b, color, RESET);
        }
        lv_buf_putc(b, ']');
    }
    if (e->retry_stop && strcmp(e->retry_stop, "success") != 0) {
        lv_buf_putlit(b, "  retry_stop=");
        paint(b, color, YELLOW);
        lv_buf_puts(b, e->retry_stop);
        paint(b, color, RESET);
    }
    if (e->error) {
        lv_buf_putlit(b, "  error=");
        paint(b, color, RED);
        lv_buf_puts(b, e->error);
        paint(b, color, RESET);
    }
    lv_buf_putc(b, '\n');
}

void lv_accesslog_format_as(bool console, bool color, const struct lv_access_entry *e,
                            struct lv_buf *out)
{
    if (console)
        lv_accesslog_format_console(e, out, color);
    else
        lv_accesslog_format(e, out);
}
