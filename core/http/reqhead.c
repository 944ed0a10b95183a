#include "http/reqhead.h"

#include <llhttp.h>
#include <string.h>

#include "base/method.h"
#include "http/fields.h"

/* ---- llhttp run shared with resphead ---------------------------------------------------- */

/* Spans arrive in one piece: the head is given to llhttp whole, or in pieces cut only where
 * no span is open (see feed_plan). Appending keeps that an assumption we check. */
static int span_add(struct lv_span *s, const char *at, size_t n)
{
    if (n == 0)
        return 0; /* a span resumed at a piece boundary and closed at once */
    if (!s->p) {
        s->p = at;
        s->len = n;
        return 0;
    }
    if (s->p + s->len != at)
        return -1;
    s->len += n;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    return span_add(&((struct lv__llhead *)p->data)->url, at, n);
}

static int on_status(llhttp_t *p, const char *at, size_t n)
{
    return span_add(&((struct lv__llhead *)p->data)->status, at, n);
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    struct lv__llhead *c = p->data;
    if (!c->in_name) {
        if (c->n == c->max) {
            c->overflow = true;
            return -1;
        }
        memset(&c->fields[c->n++], 0, sizeof(c->fields[0]));
        c->in_name = true;
    }
    return span_add(&c->fields[c->n - 1].name, at, n);
}

static int on_header_field_complete(llhttp_t *p)
{
    ((struct lv__llhead *)p->data)->in_name = false;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    struct lv__llhead *c = p->data;
    if (c->n == 0)
        return -1;
    return span_add(&c->fields[c->n - 1].value, at, n);
}

static int on_headers_complete(llhttp_t *p)
{
    /* The body is de-framed by body.c; stop here so llhttp never looks past the head. */
    return HPE_PAUSED;
}

static const llhttp_settings_t head_settings = {
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
};

/* Pieces of the head as llhttp sees it. */
struct piece {
    const char *p;
    size_t n;
};
#define MAX_PIECES 16

/*
 * Two things RFC 9110/9112 accept that llhttp 8.1's strict mode refuses, smoothed over without
 * lenient flags by cutting the head into pieces for llhttp (the bytes themselves never change):
 * - HTTP/1.x with x > 1 is HTTP/1.1 (RFC 9110 §2.5: a recipient treats a higher minor version
 *   as the highest it supports): the minor digit is given to llhttp as "1".
 * - Trailing whitespace of a Content-Length or Transfer-Encoding value is OWS, HTAB as much as
 *   SP: a trailing run that holds an HTAB is left out.
 * Returns the number of pieces; the last one always ends at the end of the head.
 */
static size_t feed_plan(bool response, const char *d, size_t len, struct piece *out)
{
    size_t n = 0, from = 0, ls0 = 0;
    /* A request may start with empty lines (RFC 9112 §2.2): the request line comes after. */
    while (!response && ls0 + 1 < len && d[ls0] == '\r' && d[ls0 + 1] == '\n')
        ls0 += 2;
    const char *eol = memchr(d + ls0, '\r', len - ls0);
    size_t line_end = eol ? (size_t)(eol - d) : len;
    size_t minor = 0; /* position of a minor digit to give as "1", or 0 */
    if (response) {
        if (len > 8 && memcmp(d, "HTTP/1.", 7) == 0 && d[7] >= '2' && d[7] <= '9')
            minor = 7;
    } else if (line_end >= ls0 + 9 && memcmp(d + line_end - 8, "HTTP/1.", 7) == 0 &&
               d[line_end - 1] >= '2' && d[line_end - 1] <= '9') {
        minor = line_end - 1;
    }
    if (minor) {
        out[n++] = (struct piece){d, minor};
        out[n++] = (struct piece){"1", 1};
        from = minor + 1;
    }
    if (memchr(d + line_end, '\t', len - line_end)) {
        size_t i = line_end;
        while (i < len && n + 2 < MAX_PIECES) {
            const char *lf = memchr(d + i, '\n', len - i);
            if (!lf)
                break;
            size_t ls = (size_t)(lf - d) + 1; /* start of the next line */
            const char *cr = memchr(d + ls, '\r', len - ls);
            const char *colon = memchr(d + ls, ':', len - ls);
            if (!cr || !colon || colon > cr)
                break;
            size_t nl = (size_t)(colon - (d + ls)), ce = (size_t)(cr - d);
            if (lv_field_name_eq(d + ls, nl, "content-length") ||
                lv_field_name_eq(d + ls, nl, "transfer-encoding")) {
                size_t ws = ce;
                bool tab = false;
                while (ws > ls + nl + 1 && (d[ws - 1] == ' ' || d[ws - 1] == '\t'))
                    tab |= d[--ws] == '\t';
                if (tab) {
                    out[n++] = (struct piece){d + from, ws - from};
                    from = ce;
                }
            }
            i = ce;
        }
    }
    out[n++] = (struct piece){d + from, len - from};
    return n;
}

int lv__llhead_run(struct lv__llhead *c, bool response, const char *data, size_t head_len)
{
    llhttp_t p;
    llhttp_init(&p, response ? HTTP_RESPONSE : HTTP_REQUEST, &head_settings);
    p.data = c;
    struct piece pieces[MAX_PIECES];
    size_t np = feed_plan(response, data, head_len, pieces);
    llhttp_errno_t e = HPE_OK;
    for (size_t i = 0; i < np && e == HPE_OK; i++)
        e = llhttp_execute(&p, pieces[i].p, pieces[i].n);
    c->major = p.http_major;
    c->minor = p.http_minor;
    c->method = p.method;
    c->upgrade = p.upgrade;
    c->status_code = p.status_code;
    c->flags = p.flags;
    c->content_length = p.content_length;
    for (uint32_t i = 0; i < c->n; i++) {
        struct lv_field *f = &c->fields[i];
        if (!f->value.p) /* llhttp reports no value span for an empty value */
            f->value.p = f->name.p + f->name.len;
        f->value = lv_span_trim_ows(f->value);
        f->id = (uint8_t)lv_field_classify(f->name.p, f->name.len);
    }
    if (e == HPE_PAUSED)
        return llhttp_get_error_pos(&p) == data + head_len ? 0 : -1;
    /* HPE_OK means llhttp saw no end of head where headscan did: a differential. */
    return e == HPE_OK ? -1 : (int)e;
}

/* ---- request head ------------------------------------------------------------------------ */

static int fail(struct lv_reqhead *h, int status, const char *reason)
{
    h->reason = reason;
    return status;
}

/* Framing guards (README, "How levee proxies"); they only look at fields that are present, so
 * they are meaningful even when llhttp stopped early on one of them. */
static int check_framing(struct lv_reqhead *h)
{
    const struct lv_field *cl = NULL, *te = NULL;
    unsigned ncl = 0, nte = 0;
    for (uint32_t i = 0; i < h->nfields; i++) {
        if (h->fields[i].id == LV_FID_CONTENT_LENGTH) {
            cl = &h->fields[i];
            ncl++;
        } else if (h->fields[i].id == LV_FID_TRANSFER_ENCODING) {
            te = &h->fields[i];
            nte++;
        }
    }
    if (nte && h->major == 1 && h->minor == 0)
        return fail(h, 400, "Transfer-Encoding in an HTTP/1.0 request");
    if (ncl > 1)
        return fail(h, 400, "duplicate Content-Length");
    if (ncl && nte)
        return fail(h, 400, "Content-Length with Transfer-Encoding");
    if (nte > 1)
        return fail(h, 400, "more than one Transfer-Encoding field");
    if (te) {
        int st = lv_te_check(te->value.p, te->value.len);
        if (st == 501)
            return fail(h, 501, "transfer coding not implemented");
        if (st)
            return fail(h, 400, "invalid Transfer-Encoding");
        h->chunked = true;
    }
    if (cl) {
        if (lv_content_length_parse(cl->value.p, cl->value.len, &h->content_length) != 0)
            return fail(h, 400, "invalid Content-Length");
        h->has_content_length = true;
    }
    return 0;
}

static int llhttp_status(struct lv_reqhead *h, const struct lv__llhead *c, int e)
{
    if (c->overflow)
        return fail(h, 431, "too many header fields");
    switch (e) {
    case HPE_INVALID_METHOD:
        return fail(h, 501, "unknown method");
    case HPE_INVALID_VERSION:
        return fail(h, 505, "unsupported HTTP version");
    case HPE_INVALID_CONTENT_LENGTH:
    case HPE_UNEXPECTED_CONTENT_LENGTH:
        return fail(h, 400, "invalid Content-Length");
    case HPE_INVALID_TRANSFER_ENCODING:
        return fail(h, 400, "invalid Transfer-Encoding");
    case HPE_INVALID_URL:
        return fail(h, 400, "invalid request target");
    default:
        return fail(h, 400, "malformed request head");
    }
}

/* Target forms were already checked by headscan (`*` only with OPTIONS, authority-form only
 * with CONNECT, which never gets here); split what routing needs. */
static int split_target(struct lv_reqhead *h)
{
    const char *t = h->target.p;
    size_t n = h->target.len;
    if (n == 0)
        return fail(h, 400, "empty request target");
    const char *rest = t, *end = t + n;
    if (t[0] != '/' && !(n == 1 && t[0] == '*')) {
        size_t slen = (n > 7 && lv_field_name_eq(t, 7, "http://"))    ? 4
                      : (n > 8 && lv_field_name_eq(t, 8, "https://")) ? 5
                                                                      : 0;
        if (!slen)
            return fail(h, 400, "invalid request target");
        h->absolute_form = true;
        h->scheme = (struct lv_span){t, slen};
        const char *a = t + slen + 3, *ae = a;
        while (ae < end && *ae != '/' && *ae != '?')
            ae++;
        h->authority = (struct lv_span){a, (size_t)(ae - a)};
        if (!lv_host_valid(a, (size_t)(ae - a)))
            return fail(h, 400, "invalid authority in absolute-form target");
        rest = ae;
    }
    const char *q = memchr(rest, '?', (size_t)(end - rest));
    const char *pe = q ? q : end;
    if (pe == rest)
        h->path = (struct lv_span){"/", 1};
    else
        h->path = (struct lv_span){rest, (size_t)(pe - rest)};
    if (q) {
        h->has_query = true;
        h->query = (struct lv_span){q + 1, (size_t)(end - q - 1)};
    }
    return 0;
}

int lv_reqhead_parse(struct lv_reqhead *h, const char *data, size_t head_len,
                     struct lv_field *fields, uint32_t max_fields)
{
    memset(h, 0, sizeof(*h));
    h->fields = fields;
    h->method = -1;

    /* Decide the method ourselves: llhttp's INVALID_METHOD cannot tell "not a token" (already
     * refused by headscan) from "a token we do not know", and it knows RTSP names we don't. */
    size_t i = 0;
    while (i + 1 < head_len && data[i] == '\r' && data[i + 1] == '\n')
        i += 2;
    const char *sp = memchr(data + i, ' ', head_len - i);
    if (!sp)
        return fail(h, 400, "malformed request line");
    size_t mlen = (size_t)(sp - (data + i));
    h->method = lv_method_from_name(data + i, mlen);
    if (h->method < 0) {
        if (mlen == 3 && memcmp(data + i, "PRI", 3) == 0)
            return fail(h, 505, "HTTP/2 connection preface (PRI) not supported");
        return fail(h, 501, "unknown method");
    }

    struct lv__llhead c = {.fields = fields, .max = max_fields};
    int e = lv__llhead_run(&c, false, data, head_len);
    h->nfields = c.n;
    h->major = c.major;
    h->minor = c.minor;
    h->target = c.url;

    unsigned nrid = 0, nhost = 0;
    const struct lv_field *rid = NULL, *host = NULL, *upgrade = NULL;
    for (uint32_t k = 0; k < h->nfields; k++) {
        const struct lv_field *f = &fields[k];
        switch (f->id) {
        case LV_FID_X_REQUEST_ID:
            rid = f;
            nrid++;
            break;
        case LV_FID_HOST:
            host = f;
            nhost++;
            break;
        case LV_FID_UPGRADE:
            upgrade = f;
            break;
        case LV_FID_TRACEPARENT:
            h->traceparent = lv_span_trim_ows(f->value);
            if (h->ntraceparent < UINT8_MAX)
                h->ntraceparent++;
            break;
        case LV_FID_TRACESTATE:
            h->tracestate = lv_span_trim_ows(f->value);
            if (h->ntracestate < UINT8_MAX)
                h->ntracestate++;
            break;
        case LV_FID_EXPECT:
            if (lv_field_name_eq(f->value.p, f->value.len, "100-continue"))
                h->expect_continue = true;
            else
                h->expect_other = true;
            break;
        default:
            break;
        }
    }
    if (nrid == 1 && lv_request_id_valid(rid->value.p, rid->value.len))
        h->request_id = rid->value;
    unsigned conn = lv_fields_mark_hop(fields, h->nfields);

    int st = check_framing(h);
    if (st)
        return st;
    if (e)
        return llhttp_status(h, &c, e);
    if (h->major != 1 || h->minor > 1)
        return fail(h, 505, "unsupported HTTP version");
    if (((c.flags & F_CHUNKED) != 0) != h->chunked ||
        ((c.flags & F_CONTENT_LENGTH) != 0) != h->has_content_length ||
        (h->has_content_length && c.content_length != h->content_length))
        return fail(h, 400, "ambiguous message framing");

    if (h->method == HTTP_CONNECT)
        return fail(h, 405, "CONNECT is not supported");
    if (h->method == HTTP_TRACE)
        return fail(h, 405, "TRACE is not allowed");

    if (nhost > 1)
        return fail(h, 400, "more than one Host field");
    if (nhost == 0 && h->minor == 1)
        return fail(h, 400, "missing Host");
    if (host && !lv_host_valid(host->value.p, host->value.len))
        return fail(h, 400, "invalid Host");
    st = split_target(h);
    if (st)
        return st;
    /* RFC 9112 §3.2.2: the target's authority wins over Host. */
    h->host = h->absolute_form ? h->authority : host ? host->value : (struct lv_span){"", 0};

    if (h->minor == 1) {
        h->keep_alive = !(conn & LV_CONN_CLOSE);
        if (upgrade && upgrade->value.len && (conn & LV_CONN_UPGRADE)) {
            h->upgrade_requested = true;
            h->upgrade = upgrade->value;
        }
    } else {
        /* HTTP/1.0 ignores Expect (RFC 9110 §10.1.1); keep-alive only when asked. */
        h->keep_alive = (conn & LV_CONN_KEEP_ALIVE) && !(conn & LV_CONN_CLOSE);
        h->expect_continue = h->expect_other = false;
    }
    return 0;
}
