#include "proxy/fwdhead.h"

#include <string.h>

#include "http/tracectx.h"

static bool token_allowed(const char *p, size_t n, char *const *tokens, size_t ntokens)
{
    const char *slash = memchr(p, '/', n);
    if (slash)
        n = (size_t)(slash - p); /* "foo/2": the protocol's name */
    for (size_t i = 0; i < ntokens; i++)
        if (lv_field_name_eq(p, n, tokens[i]))
            return true;
    return false;
}

bool lv_fwdhead_upgrade_allowed(const struct lv_reqhead *h, enum lv_req_body body,
                                char *const *tokens, size_t ntokens)
{
    if (!h->upgrade_requested || body != LV_REQ_BODY_NONE || ntokens == 0)
        return false;
    const char *p = h->upgrade.p, *end = p + h->upgrade.len;
    size_t named = 0;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t' || *p == ','))
            p++;
        const char *s = p;
        while (p < end && *p != ',')
            p++;
        const char *e = p;
        while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
            e--;
        if (e == s)
            continue;
        if (!token_allowed(s, (size_t)(e - s), tokens, ntokens))
            return false;
        named++;
    }
    return named > 0;
}

bool lv_fwdhead_build(struct lv_buf *b, const struct lv_fwdhead_in *in)
{
    const struct lv_reqhead *h = in->h;
    lv_buf_reset(b);
    lv_buf_puts(b, in->method);
    lv_buf_putc(b, ' ');
    if (h->absolute_form) { /* forward the origin-form */
        lv_buf_append(b, h->path.p, h->path.len);
        if (h->has_query) {
            lv_buf_putc(b, '?');
            lv_buf_append(b, h->query.p, h->query.len);
        }
    } else {
        lv_buf_append(b, h->target.p, h->target.len);
    }
    lv_buf_putlit(b, " HTTP/1.1\r\n");
    bool have_host = false;
    struct lv_span xff = {NULL, 0}, via = {NULL, 0};
    for (uint32_t i = 0; i < h->nfields; i++) {
        const struct lv_field *f = &h->fields[i];
        if (f->flags & LV_FIELD_HOP)
            continue;
        switch (f->id) {
        case LV_FID_CONTENT_LENGTH:
        case LV_FID_TRANSFER_ENCODING:
        case LV_FID_X_REQUEST_ID:
        case LV_FID_X_FORWARDED_PROTO:
        case LV_FID_X_FORWARDED_HOST:
        case LV_FID_EXPECT:
        case LV_FID_LEVEE_FAULT:
            continue;
        case LV_FID_TRACEPARENT:
            if (in->trace)
                continue;
            break;
        case LV_FID_TRACESTATE:
            if (in->trace && !(in->tracestate && lv_tracestate_valid(f->value.p, f->value.len)))
                continue;
            break;
        case LV_FID_X_FORWARDED_FOR:
            xff = f->value;
            continue;
        case LV_FID_VIA:
            via = f->value;
            continue;
        case LV_FID_HOST:
            if (h->absolute_form)
                continue; /* the target's authority wins */
            have_host = true;
            break;
        default:
            break;
        }
        lv_buf_append(b, f->name.p, f->name.len);
        lv_buf_putlit(b, ": ");
        lv_buf_append(b, f->value.p, f->value.len);
        lv_buf_putlit(b, "\r\n");
    }
    /* HTTP/1.1 requires Host. An HTTP/1.0 request may come without one (and so matched no
     * route with match.host): it gets the authority of the server each attempt goes to. */
    bool add_server_host = false;
    if (!have_host && in->host_len) {
        lv_buf_putlit(b, "Host: ");
        lv_buf_append(b, in->host, in->host_len);
        lv_buf_putlit(b, "\r\n");
    } else if (!have_host) {
        add_server_host = true;
    }
    lv_buf_putlit(b, "X-Forwarded-For: ");
    if (xff.len) {
        lv_buf_append(b, xff.p, xff.len);
        lv_buf_putlit(b, ", ");
    }
    lv_buf_puts(b, in->client);
    lv_buf_puts(b,
                in->https ? "\r\nX-Forwarded-Proto: https\r\n" : "\r\nX-Forwarded-Proto: http\r\n");
    if (in->host_len) {
        lv_buf_putlit(b, "X-Forwarded-Host: ");
        lv_buf_append(b, in->host, in->host_len);
        lv_buf_putlit(b, "\r\n");
    }
    lv_buf_putlit(b, "Via: ");
    if (via.len) {
        lv_buf_append(b, via.p, via.len);
        lv_buf_putlit(b, ", ");
    }
    lv_buf_puts(b, in->http10 ? "1.0 levee\r\n" : "1.1 levee\r\n");
    lv_buf_putlit(b, "X-Request-Id: ");
    lv_buf_puts(b, in->request_id);
    lv_buf_putlit(b, "\r\n");
    if (in->body == LV_REQ_BODY_LENGTH) {
        lv_buf_putlit(b, "Content-Length: ");
        lv_buf_putu(b, in->content_length);
        lv_buf_putlit(b, "\r\n");
    } else if (in->body == LV_REQ_BODY_CHUNKED) {
        lv_buf_putlit(b, "Transfer-Encoding: chunked\r\n");
    }
    if (in->upgrade.len) {
        lv_buf_putlit(b, "Connection: upgrade\r\nUpgrade: ");
        lv_buf_append(b, in->upgrade.p, in->upgrade.len);
        lv_buf_putlit(b, "\r\n");
    }
    return add_server_host;
}
