#include "obs/accesslog.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

const char *lv_access_flag_name(unsigned flag)
{
    switch (flag) {
#define LV__ACCESS_FLAG_CASE(e, bit, name)                                                         \
    case LV_ACCESS_##e:                                                                            \
        return name;
        LV_ACCESS_FLAG_TABLE(LV__ACCESS_FLAG_CASE)
#undef LV__ACCESS_FLAG_CASE
    }
    return NULL;
}

static void put2(char *p, unsigned v)
{
    p[0] = (char)('0' + v / 10);
    p[1] = (char)('0' + v % 10);
}

size_t lv_accesslog_rfc3339(double unix_s, char out[LV_ACCESS_TIME_SIZE])
{
    /* Whole microseconds first, so 0.345 (really 0.34499999...) still reads as .345. */
    if (!(unix_s >= 0)) /* also NaN */
        unix_s = 0;
    if (unix_s > 253402300799.999) /* 9999-12-31T23:59:59.999Z */
        unix_s = 253402300799.999;
    long long us = llround(unix_s * 1e6);
    long long ms = us / 1000;
    long long secs = ms / 1000;
    unsigned msec = (unsigned)(ms % 1000);
    long long days = secs / 86400;
    unsigned sod = (unsigned)(secs % 86400);

    /* Civil date from days since 1970-01-01 (proleptic Gregorian, days >= 0), using 400-year
     * eras that start on March 1st so the leap day is the last day of a year. */
    days += 719468;
    long long era = days / 146097;
    unsigned doe = (unsigned)(days - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    unsigned day = doy - (153 * mp + 2) / 5 + 1;
    unsigned month = mp < 10 ? mp + 3 : mp - 9;
    unsigned year = (unsigned)(yoe + era * 400) + (month <= 2);

    memcpy(out, "0000-00-00T00:00:00.000Z", 25);
    put2(out, year / 100);
    put2(out + 2, year % 100);
    put2(out + 5, month);
    put2(out + 8, day);
    put2(out + 11, sod / 3600);
    put2(out + 14, sod / 60 % 60);
    put2(out + 17, sod % 60);
    out[20] = (char)('0' + msec / 100);
    put2(out + 21, msec % 100);
    return 24;
}

/*
 * The line is written through a raw cursor into the buffer's spare room rather than by one
 * lv_buf call per piece: a line has ~80 pieces and this runs once per request. room() is the
 * only bounds check; every write below is preceded by one covering it.
 */
struct lv__w {
    struct lv_buf *b;
    char *p, *end;
};

static void w_sync(struct lv__w *w)
{
    w->b->len = (size_t)(w->p - w->b->data);
}

static void w_load(struct lv__w *w)
{
    w->p = w->b->data + w->b->len;
    w->end = w->b->data + w->b->cap;
}

static inline void room(struct lv__w *w, size_t n)
{
    if ((size_t)(w->end - w->p) < n) {
        w_sync(w);
        lv_buf_reserve(w->b, n);
        w_load(w);
    }
}

/* Appends a string literal (only a literal: sizeof must see the array). */
#define LIT(w, lit)                                                                                \
    do {                                                                                           \
        room((w), sizeof(lit));                                                                    \
        memcpy((w)->p, "" lit, sizeof(lit) - 1);                                                   \
        (w)->p += sizeof(lit) - 1;                                                                 \
    } while (0)

static void put_u64(struct lv__w *w, unsigned long long v)
{
    char tmp[24];
    int i = (int)sizeof(tmp);
    do {
        tmp[--i] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    room(w, sizeof(tmp));
    memcpy(w->p, tmp + i, sizeof(tmp) - (size_t)i);
    w->p += sizeof(tmp) - (size_t)i;
}

static void put_int(struct lv__w *w, long long v)
{
    if (v < 0) {
        LIT(w, "-");
        put_u64(w, 0ull - (unsigned long long)v);
    } else {
        put_u64(w, (unsigned long long)v);
    }
}

/* 1 for the bytes a JSON string cannot carry as they are: controls, DEL and above (not trusted
 * to be UTF-8), quote, backslash. A table: this runs on every byte of path, host and id. */
static const unsigned char needs_escape[256] = {
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
    1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
};

/* A JSON string, or null. The clean prefix (usually all of it) is copied while it is scanned;
 * the rest goes through lv_buf_json_escape, so the gateway escapes the same way everywhere. */
static void put_str(struct lv__w *w, const char *s, size_t n)
{
    if (!s) {
        LIT(w, "null");
        return;
    }
    room(w, n + 2);
    char *p = w->p;
    *p++ = '"';
    size_t i = 0;
    while (i < n && !needs_escape[(unsigned char)s[i]]) {
        p[i] = s[i];
        i++;
    }
    w->p = p + i;
    if (i < n) {
        w_sync(w);
        lv_buf_json_escape(w->b, s + i, n - i);
        w_load(w);
    }
    LIT(w, "\"");
}

static void put_cstr(struct lv__w *w, const char *s)
{
    put_str(w, s, s ? strlen(s) : 0);
}

/* Milliseconds with at most 3 decimals, trailing zeros dropped: 12, 1.5, 0.001. */
static void put_ms(struct lv__w *w, double v)
{
    if (!isfinite(v)) {
        LIT(w, "null");
        return;
    }
    if (fabs(v) >= 1e15) { /* not a real duration, but still valid JSON */
        w_sync(w);
        lv_buf_printf(w->b, "%.0f", v);
        w_load(w);
        return;
    }
    long long us = llround(v * 1000); /* thousandths of a millisecond */
    if (us < 0) {
        LIT(w, "-");
        us = -us;
    }
    put_u64(w, (unsigned long long)(us / 1000));
    unsigned frac = (unsigned)(us % 1000);
    if (frac) {
        char d[4] = {'.', (char)('0' + frac / 100), (char)('0' + frac / 10 % 10),
                     (char)('0' + frac % 10)};
        size_t len = 4;
        while (d[len - 1] == '0')
            len--;
        room(w, len);
        memcpy(w->p, d, len);
        w->p += len;
    }
}

void lv_accesslog_format(const struct lv_access_entry *e, struct lv_buf *out)
{
    struct lv__w w = {out, NULL, NULL};
    lv_buf_reserve(out, 512); /* the usual line fits: the room() checks rarely grow it */
    w_load(&w);

    LIT(&w, "{\"time\":\"");
    room(&w, LV_ACCESS_TIME_SIZE);
    w.p += lv_accesslog_rfc3339(e->time, w.p);
    LIT(&w, "\",\"request_id\":");
    put_str(&w, e->request_id.ptr, e->request_id.len);
    LIT(&w, ",\"trace_id\":");
    put_cstr(&w, e->trace_id);
    LIT(&w, ",\"span_id\":");
    put_cstr(&w, e->span_id);
    LIT(&w, ",\"client\":");
    put_cstr(&w, e->client);
    LIT(&w, ",\"method\":");
    put_cstr(&w, e->method);
    LIT(&w, ",\"path\":");
    put_str(&w, e->path.ptr, e->path.len);
    LIT(&w, ",\"host\":");
    put_str(&w, e->host.ptr, e->host.len);
    LIT(&w, ",\"route\":");
    put_cstr(&w, e->route);
    LIT(&w, ",\"upstream\":");
    put_cstr(&w, e->upstream);
    LIT(&w, ",\"status\":");
    put_int(&w, e->status);
    LIT(&w, ",\"attempts\":");
    put_int(&w, e->attempts);

    LIT(&w, ",\"tries\":[");
    unsigned ntries = e->ntries < LV_ACCESS_MAX_TRIES ? e->ntries : LV_ACCESS_MAX_TRIES;
    for (unsigned i = 0; i < ntries; i++) {
        const struct lv_access_try *t = &e->tries[i];
        if (i)
            LIT(&w, ",");
        LIT(&w, "{\"outcome\":");
        if (t->status > 0) {
            LIT(&w, "\"");
            put_u64(&w, (unsigned long long)t->status);
            LIT(&w, "\"");
        } else {
            put_cstr(&w, t->error);
        }
        LIT(&w, ",\"server\":");
        put_cstr(&w, t->server);
        LIT(&w, ",\"ms\":");
        put_ms(&w, t->ms);
        if (t->fault) {
            LIT(&w, ",\"fault\":");
            put_cstr(&w, t->fault);
        }
        LIT(&w, "}");
    }
    LIT(&w, "],\"backoff_ms\":");
    put_ms(&w, e->backoff_ms);
    LIT(&w, ",\"bytes_in\":");
    put_u64(&w, e->bytes_in);
    LIT(&w, ",\"bytes_out\":");
    put_u64(&w, e->bytes_out);
    LIT(&w, ",\"duration_ms\":");
    put_ms(&w, e->duration_ms);
    LIT(&w, ",\"upstream_ms\":");
    if (e->upstream_ms < 0)
        LIT(&w, "null");
    else
        put_ms(&w, e->upstream_ms);
    LIT(&w, ",\"error\":");
    put_cstr(&w, e->error);
    LIT(&w, ",\"retry_stop\":");
    put_cstr(&w, e->retry_stop);

    LIT(&w, ",\"flags\":[");
    unsigned flags = e->flags;
    int first = 1;
    while (flags) {
        unsigned bit = flags & (0u - flags); /* lowest set bit first: table order */
        flags &= flags - 1;
        const char *name = lv_access_flag_name(bit);
        if (!name)
            continue;
        if (!first)
            LIT(&w, ",");
        first = 0;
        put_cstr(&w, name);
    }
    LIT(&w, "]}\n");
    w_sync(&w);
}
