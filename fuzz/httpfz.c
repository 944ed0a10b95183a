#include "httpfz.h"

#include <string.h>

static const char *result_name(enum lv_body_result r)
{
    switch (r) {
    case LV_BODY_MORE:
        return "more";
    case LV_BODY_DATA:
        return "data";
    case LV_BODY_DONE:
        return "done";
    case LV_BODY_ERROR:
        return "error";
    case LV_BODY_TOO_LARGE:
        return "too-large";
    }
    return "?";
}

int fz_body_feed(struct lv_body *b, const char *data, size_t len, size_t *used_total,
                 struct fz_sink *k)
{
    size_t off = 0;
    for (;;) {
        size_t used = (size_t)-1;
        struct lv_span span = {(const char *)1, 1};
        uint64_t wire0 = b->wire, recv0 = b->received;
        enum lv_body_result res = lv_body_next(b, data + off, len - off, &used, &span);
        if (used > len - off)
            fz_fail("lv_body_next: used %zu of %zu bytes (%s)", used, len - off, result_name(res));
        if (b->wire != wire0 + used)
            fz_fail("lv_body_next: wire grew by %llu, used %zu",
                    (unsigned long long)(b->wire - wire0), used);
        if (res == LV_BODY_DATA) {
            if (span.len == 0 || used == 0)
                fz_fail("lv_body_next: data span of %zu bytes after using %zu", span.len, used);
            if (span.len > used || span.p != data + off + used - span.len)
                fz_fail("lv_body_next: data span is not the end of the bytes used");
            if (b->received != recv0 + span.len)
                fz_fail("lv_body_next: received grew by %llu for a span of %zu",
                        (unsigned long long)(b->received - recv0), span.len);
            if (b->received > b->max_body)
                fz_fail("lv_body_next: %llu body bytes handed out over the %llu limit",
                        (unsigned long long)b->received, (unsigned long long)b->max_body);
            k->hash = fz_hash(k->hash, span.p, span.len);
            k->n += span.len;
            off += used;
            continue;
        }
        if (span.p != NULL || span.len != 0)
            fz_fail("lv_body_next: %s with a data span", result_name(res));
        if (b->received != recv0)
            fz_fail("lv_body_next: %s changed received", result_name(res));
        off += used;
        *used_total = off;
        if (res == LV_BODY_MORE) {
            if (off != len)
                fz_fail("lv_body_next: more with %zu bytes left unread", len - off);
            if (lv_body_done(b))
                fz_fail("lv_body_next: more, yet lv_body_done");
            return 0;
        }
        if ((res == LV_BODY_DONE) != lv_body_done(b))
            fz_fail("lv_body_next: %s disagrees with lv_body_done", result_name(res));
        if (res != LV_BODY_DONE && !b->reason)
            fz_fail("lv_body_next: %s without a reason", result_name(res));
        /* Final results are sticky and consume nothing. */
        size_t again = (size_t)-1;
        struct lv_span s2;
        enum lv_body_result r2 = lv_body_next(b, data + off, len - off, &again, &s2);
        if (r2 != res || again != 0 || s2.len != 0)
            fz_fail("lv_body_next: %s not sticky (then %s, used %zu)", result_name(res),
                    result_name(r2), again);
        if (res == LV_BODY_DONE)
            return 1;
        return res == LV_BODY_TOO_LARGE ? -2 : -1;
    }
}

static void span_in(const char *what, struct lv_span s, const char *head, size_t head_len)
{
    if (s.len == 0)
        return;
    if (s.len == 1 && s.p[0] == '/')
        return; /* the static path of an absolute-form target without one */
    if (s.p < head || s.p + s.len > head + head_len)
        fz_fail("%s span (%zu bytes) is outside the head", what, s.len);
}

static void log_fields(struct fz_log *l, const struct lv_field *f, uint32_t n, const char *head,
                       size_t head_len)
{
    for (uint32_t i = 0; i < n; i++) {
        span_in("field name", f[i].name, head, head_len);
        span_in("field value", f[i].value, head, head_len);
        fz_logf(l, "  field %u id=%u flags=%u", i, f[i].id, f[i].flags);
        fz_log_span(l, "name", f[i].name.p, f[i].name.len);
        fz_log_span(l, "value", f[i].value.p, f[i].value.len);
        fz_logf(l, "\n");
    }
}

void fz_log_reqhead(struct fz_log *l, int st, const struct lv_reqhead *h, const char *head,
                    size_t head_len)
{
    if (st != 0 && (st < 400 || st > 599 || !h->reason))
        fz_fail("lv_reqhead_parse: status %d, reason %s", st, h->reason ? h->reason : "(none)");
    fz_logf(l, "reqhead st=%d reason=%s method=%d version=%u.%u nfields=%u\n", st,
            st ? h->reason : "-", h->method, h->major, h->minor, h->nfields);
    const struct {
        const char *name;
        struct lv_span s;
    } spans[] = {
        {"target", h->target},         {"path", h->path},       {"query", h->query},
        {"authority", h->authority},   {"host", h->host},       {"scheme", h->scheme},
        {"request_id", h->request_id}, {"upgrade", h->upgrade},
    };
    fz_logf(l, " ");
    for (size_t i = 0; i < sizeof(spans) / sizeof(spans[0]); i++) {
        span_in(spans[i].name, spans[i].s, head, head_len);
        fz_log_span(l, spans[i].name, spans[i].s.p, spans[i].s.len);
    }
    fz_logf(l,
            "\n cl=%d:%llu chunked=%d keep_alive=%d upgrade=%d continue=%d expect_other=%d "
            "absolute=%d query=%d\n",
            h->has_content_length, (unsigned long long)h->content_length, h->chunked, h->keep_alive,
            h->upgrade_requested, h->expect_continue, h->expect_other, h->absolute_form,
            h->has_query);
    log_fields(l, h->fields, h->nfields, head, head_len);
}

void fz_log_resphead(struct fz_log *l, int st, const struct lv_resphead *h, const char *head,
                     size_t head_len)
{
    if (st != 0 && (st != 502 || !h->reason))
        fz_fail("lv_resphead_parse: status %d, reason %s", st, h->reason ? h->reason : "(none)");
    fz_logf(l, "resphead st=%d reason=%s status=%d version=%u.%u nfields=%u", st,
            st ? h->reason : "-", h->status, h->major, h->minor, h->nfields);
    if (!h->reason_phrase.p)
        fz_fail("lv_resphead_parse: NULL reason phrase");
    span_in("reason phrase", h->reason_phrase, head, head_len);
    fz_log_span(l, "phrase", h->reason_phrase.p, h->reason_phrase.len);
    fz_logf(l, "\n body=%d cl=%d:%llu chunked=%d keep_alive=%d reusable=%d interim=%d upgrade=%d\n",
            (int)h->body, h->has_content_length, (unsigned long long)h->content_length, h->chunked,
            h->keep_alive, h->reusable, h->interim, h->upgrade);
    if (st == 0) {
        if (h->status < 100 || h->status > 599)
            fz_fail("lv_resphead_parse: accepted status %d", h->status);
        if (h->body == LV_BODY_LENGTH && !h->has_content_length)
            fz_fail("lv_resphead_parse: length framing without a Content-Length");
        if (h->body == LV_BODY_EOF && h->reusable)
            fz_fail("lv_resphead_parse: a body read until close on a reusable connection");
        if (h->status < 200 && h->body != LV_BODY_NONE)
            fz_fail("lv_resphead_parse: a body on a %d", h->status);
    }
    log_fields(l, h->fields, h->nfields, head, head_len);
}

void fz_check_head_end(const char *data, size_t len, size_t head_len)
{
    if (head_len < 4 || head_len > len || memcmp(data + head_len - 4, "\r\n\r\n", 4) != 0)
        fz_fail("headscan: done with head_len %zu of %zu bytes, not at a CRLFCRLF", head_len, len);
}
