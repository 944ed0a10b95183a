/*
 * span: filling the fixed-size span record and encoding spans as an OTLP/HTTP JSON
 * ExportTraceServiceRequest (README "Tracing"). Nothing here allocates but the output buffer.
 */
#include <string.h>

#include "trace/span.h"

#ifndef LEVEE_VERSION
#define LEVEE_VERSION "0"
#endif

/* ---- filling */

void lv_tspan_init(struct lv_trace_span *sp, enum lv_span_kind kind,
                   const uint8_t trace_id[LV_TRACE_ID_LEN], const uint8_t span_id[LV_SPAN_ID_LEN],
                   const uint8_t *parent_id)
{
    /* Everything but the text area (which is only read where an offset points). */
    memset(sp, 0, offsetof(struct lv_trace_span, text));
    memcpy(sp->trace_id, trace_id, LV_TRACE_ID_LEN);
    memcpy(sp->span_id, span_id, LV_SPAN_ID_LEN);
    if (parent_id)
        memcpy(sp->parent_id, parent_id, LV_SPAN_ID_LEN);
    sp->kind = (uint8_t)kind;
    sp->status = LV_SPAN_UNSET;
}

/* Copies up to what is left of the text area; a cut falls on a UTF-8 character boundary (a
 * cut inside a character would only be replaced by U+FFFD when encoded). */
static void text_put(struct lv_trace_span *sp, const char *p, size_t n, uint16_t *off,
                     uint16_t *len)
{
    size_t used = sp->text_used <= LV_SPAN_TEXT ? sp->text_used : LV_SPAN_TEXT;
    size_t room = LV_SPAN_TEXT - used;
    if (!p)
        n = 0;
    if (n > room) {
        sp->truncated = true;
        n = room;
        while (n > 0 && ((unsigned char)p[n] & 0xC0) == 0x80)
            n--;
    }
    if (n)
        memcpy(sp->text + used, p, n);
    *off = (uint16_t)used;
    *len = (uint16_t)n;
    sp->text_used = (uint16_t)(used + n);
}

void lv_tspan_name(struct lv_trace_span *sp, const char *p, size_t n)
{
    text_put(sp, p, n, &sp->name_off, &sp->name_len);
}

void lv_tspan_set_status(struct lv_trace_span *sp, enum lv_span_status st, const char *msg)
{
    sp->status = (uint8_t)st;
    if (msg)
        text_put(sp, msg, strlen(msg), &sp->msg_off, &sp->msg_len);
    else
        sp->msg_len = 0;
}

static struct lv_tspan_attr *attr_add(struct lv_trace_span *sp, const char *key, uint8_t type)
{
    if (!key)
        return NULL;
    if (sp->nattrs >= LV_SPAN_MAX_ATTRS) {
        if (sp->dropped_attrs < UINT8_MAX)
            sp->dropped_attrs++;
        sp->truncated = true;
        return NULL;
    }
    struct lv_tspan_attr *a = &sp->attrs[sp->nattrs++];
    memset(a, 0, sizeof(*a));
    a->key = key;
    a->type = type;
    return a;
}

void lv_tspan_str(struct lv_trace_span *sp, const char *key, const char *p, size_t n)
{
    struct lv_tspan_attr *a = attr_add(sp, key, LV_SPAN_ATTR_STR);
    if (a)
        text_put(sp, p, n, &a->off, &a->len);
}

void lv_tspan_cstr(struct lv_trace_span *sp, const char *key, const char *s)
{
    if (s)
        lv_tspan_str(sp, key, s, strlen(s));
}

void lv_tspan_int(struct lv_trace_span *sp, const char *key, int64_t v)
{
    struct lv_tspan_attr *a = attr_add(sp, key, LV_SPAN_ATTR_INT);
    if (a)
        a->i = v;
}

void lv_tspan_bool(struct lv_trace_span *sp, const char *key, bool v)
{
    struct lv_tspan_attr *a = attr_add(sp, key, LV_SPAN_ATTR_BOOL);
    if (a)
        a->i = v ? 1 : 0;
}

/* ---- JSON */

/* Length of the valid UTF-8 sequence at s[0..n) (RFC 3629: no overlong forms, no surrogates,
 * nothing above U+10FFFF), or 0 when it is not one. s[0] >= 0x80. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF; /* range of the second byte */
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0; /* overlong */
        else if (c == 0xED)
            hi = 0x9F; /* surrogates */
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90; /* overlong */
        else if (c == 0xF4)
            hi = 0x8F; /* above U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80)
            return 0;
    return len;
}

void lv_tspan_json_escape(struct lv_buf *out, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    size_t i = 0;
    while (i < n) {
        /* A run of bytes that need nothing goes out in one append. */
        size_t j = i;
        while (j < n && s[j] >= 0x20 && s[j] < 0x7f && s[j] != '"' && s[j] != '\\')
            j++;
        if (j > i) {
            lv_buf_append(out, s + i, j - i);
            i = j;
            continue;
        }
        unsigned char c = s[i];
        if (c >= 0x80) {
            size_t len = utf8_seq(s + i, n - i);
            if (len) {
                lv_buf_append(out, s + i, len);
                i += len;
            } else {
                lv_buf_putlit(out, "\\ufffd");
                i++;
            }
            continue;
        }
        switch (c) {
        case '"':
            lv_buf_putlit(out, "\\\"");
            break;
        case '\\':
            lv_buf_putlit(out, "\\\\");
            break;
        case '\n':
            lv_buf_putlit(out, "\\n");
            break;
        case '\r':
            lv_buf_putlit(out, "\\r");
            break;
        case '\t':
            lv_buf_putlit(out, "\\t");
            break;
        default: { /* other control bytes and DEL */
            char e[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
            lv_buf_append(out, e, 6);
        }
        }
        i++;
    }
}

static void json_str(struct lv_buf *out, const char *s, size_t n)
{
    lv_buf_putc(out, '"');
    lv_tspan_json_escape(out, s, n);
    lv_buf_putc(out, '"');
}

/* Text of the span at [off, off+len), bounded by the text area whatever the fields say. */
static void span_text(struct lv_buf *out, const struct lv_trace_span *sp, uint16_t off,
                      uint16_t len)
{
    size_t o = off < LV_SPAN_TEXT ? off : LV_SPAN_TEXT;
    size_t l = len <= LV_SPAN_TEXT - o ? len : LV_SPAN_TEXT - o;
    json_str(out, sp->text + o, l);
}

static void hex_field(struct lv_buf *out, const char *name, const uint8_t *id, size_t n)
{
    char hex[2 * LV_TRACE_ID_LEN + 1];
    lv_trace_hex(id, n, hex);
    lv_buf_putlit(out, ",\"");
    lv_buf_puts(out, name);
    lv_buf_putlit(out, "\":\"");
    lv_buf_append(out, hex, 2 * n);
    lv_buf_putc(out, '"');
}

static bool all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (p[i])
            return false;
    return true;
}

void lv_tspan_encode_begin(struct lv_buf *out, const char *service)
{
    const char *svc = service ? service : "levee";
    lv_buf_putlit(out, "{\"resourceSpans\":[{\"resource\":{\"attributes\":["
                       "{\"key\":\"service.name\",\"value\":{\"stringValue\":");
    json_str(out, svc, strlen(svc));
    lv_buf_putlit(out, "}},{\"key\":\"service.version\",\"value\":{\"stringValue\":\"" LEVEE_VERSION
                       "\"}}]},\"scopeSpans\":[{\"scope\":{\"name\":\"levee\",\"version\":"
                       "\"" LEVEE_VERSION "\"},\"spans\":[");
}

void lv_tspan_encode_span(struct lv_buf *out, const struct lv_trace_span *sp, bool first)
{
    if (!first)
        lv_buf_putc(out, ',');
    lv_buf_putlit(out, "{\"traceId\":");
    /* hex_field puts a comma first: write the trace id by hand. */
    char hex[2 * LV_TRACE_ID_LEN + 1];
    lv_trace_hex(sp->trace_id, LV_TRACE_ID_LEN, hex);
    lv_buf_putc(out, '"');
    lv_buf_append(out, hex, 2 * LV_TRACE_ID_LEN);
    lv_buf_putc(out, '"');
    hex_field(out, "spanId", sp->span_id, LV_SPAN_ID_LEN);
    if (!all_zero(sp->parent_id, LV_SPAN_ID_LEN))
        hex_field(out, "parentSpanId", sp->parent_id, LV_SPAN_ID_LEN);
    lv_buf_putlit(out, ",\"name\":");
    span_text(out, sp, sp->name_off, sp->name_len);
    /* numbers by hand, not printf: this runs for every span exported */
    lv_buf_putlit(out, ",\"kind\":");
    lv_buf_putu(out, sp->kind);
    lv_buf_putlit(out, ",\"startTimeUnixNano\":\"");
    lv_buf_putu(out, sp->start_ns);
    lv_buf_putlit(out, "\",\"endTimeUnixNano\":\"");
    lv_buf_putu(out, sp->end_ns >= sp->start_ns ? sp->end_ns : sp->start_ns);
    lv_buf_putc(out, '"');
    lv_buf_putlit(out, ",\"attributes\":[");
    unsigned nattrs = sp->nattrs <= LV_SPAN_MAX_ATTRS ? sp->nattrs : LV_SPAN_MAX_ATTRS;
    for (unsigned i = 0; i < nattrs; i++) {
        const struct lv_tspan_attr *a = &sp->attrs[i];
        if (i)
            lv_buf_putc(out, ',');
        lv_buf_putlit(out, "{\"key\":");
        json_str(out, a->key ? a->key : "", a->key ? strlen(a->key) : 0);
        switch (a->type) {
        case LV_SPAN_ATTR_INT:
            lv_buf_putlit(out, ",\"value\":{\"intValue\":\"");
            if (a->i < 0)
                lv_buf_putc(out, '-');
            lv_buf_putu(out, a->i < 0 ? 0 - (unsigned long long)a->i : (unsigned long long)a->i);
            lv_buf_putlit(out, "\"}}");
            break;
        case LV_SPAN_ATTR_BOOL:
            if (a->i)
                lv_buf_putlit(out, ",\"value\":{\"boolValue\":true}}");
            else
                lv_buf_putlit(out, ",\"value\":{\"boolValue\":false}}");
            break;
        default:
            lv_buf_putlit(out, ",\"value\":{\"stringValue\":");
            span_text(out, sp, a->off, a->len);
            lv_buf_putlit(out, "}}");
        }
    }
    lv_buf_putc(out, ']');
    if (sp->dropped_attrs)
        lv_buf_printf(out, ",\"droppedAttributesCount\":%u", (unsigned)sp->dropped_attrs);
    if (sp->status != LV_SPAN_UNSET) {
        lv_buf_printf(out, ",\"status\":{\"code\":%u", (unsigned)sp->status);
        if (sp->msg_len) {
            lv_buf_putlit(out, ",\"message\":");
            span_text(out, sp, sp->msg_off, sp->msg_len);
        }
        lv_buf_putc(out, '}');
    }
    lv_buf_putc(out, '}');
}

void lv_tspan_encode_end(struct lv_buf *out)
{
    lv_buf_putlit(out, "]}]}]}");
}

void lv_tspan_encode(struct lv_buf *out, const char *service, const struct lv_trace_span *spans,
                     size_t n)
{
    lv_tspan_encode_begin(out, service);
    for (size_t i = 0; i < n; i++)
        lv_tspan_encode_span(out, &spans[i], i == 0);
    lv_tspan_encode_end(out);
}
