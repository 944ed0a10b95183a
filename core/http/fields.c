#include "http/fields.h"

#include <arpa/inet.h>
#include <string.h>

/* Byte classes, 16 bytes per row (0x00-0x0f first). Generated from the RFC 9110/3986 sets:
 * tchar, field-value bytes, VCHAR, HEXDIG, reg-name bytes without '%', VCHAR without '#'. */
/* clang-format off */
const uint8_t lv__http_cls[256] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x02, 0x37, 0x26, 0x07, 0x37, 0x27, 0x37, 0x37, 0x36, 0x36, 0x37, 0x37, 0x36, 0x37, 0x37, 0x26,
    0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x26, 0x36, 0x26, 0x36, 0x26, 0x26,
    0x26, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x26, 0x26, 0x27, 0x37,
    0x27, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x3f, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37,
    0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x37, 0x26, 0x27, 0x26, 0x37, 0x00,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
    0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02, 0x02,
};
/* clang-format on */

bool lv_field_name_eq(const char *name, size_t len, const char *lower_literal)
{
    for (size_t i = 0; i < len; i++) {
        if (lower_literal[i] == '\0' || lv__lower(name[i]) != lower_literal[i])
            return false;
    }
    return lower_literal[len] == '\0';
}

enum lv_field_id lv_field_classify(const char *name, size_t len)
{
    /* Switch on the length first: most names are rejected by one comparison or none. */
    switch (len) {
    case 2:
        return lv_field_name_eq(name, len, "te") ? LV_FID_TE : LV_FID_OTHER;
    case 3:
        return lv_field_name_eq(name, len, "via") ? LV_FID_VIA : LV_FID_OTHER;
    case 4:
        return lv_field_name_eq(name, len, "host") ? LV_FID_HOST : LV_FID_OTHER;
    case 6:
        return lv_field_name_eq(name, len, "expect") ? LV_FID_EXPECT : LV_FID_OTHER;
    case 7:
        if (lv_field_name_eq(name, len, "upgrade"))
            return LV_FID_UPGRADE;
        if (lv_field_name_eq(name, len, "trailer"))
            return LV_FID_TRAILER;
        break; /* "Proxy-X" is 7 long too */
    case 9:
        if (lv_field_name_eq(name, len, "forwarded"))
            return LV_FID_FORWARDED;
        break; /* "Proxy-Foo" */
    case 10:
        if (lv_field_name_eq(name, len, "connection"))
            return LV_FID_CONNECTION;
        if (lv_field_name_eq(name, len, "keep-alive"))
            return LV_FID_KEEP_ALIVE;
        if (lv_field_name_eq(name, len, "tracestate"))
            return LV_FID_TRACESTATE;
        break; /* "Proxy-Abcd" */
    case 11:
        if (lv_field_name_eq(name, len, "levee-fault"))
            return LV_FID_LEVEE_FAULT;
        if (lv_field_name_eq(name, len, "traceparent"))
            return LV_FID_TRACEPARENT;
        break;
    case 12:
        if (lv_field_name_eq(name, len, "x-request-id"))
            return LV_FID_X_REQUEST_ID;
        break;
    case 14:
        if (lv_field_name_eq(name, len, "content-length"))
            return LV_FID_CONTENT_LENGTH;
        break;
    case 15:
        if (lv_field_name_eq(name, len, "x-forwarded-for"))
            return LV_FID_X_FORWARDED_FOR;
        break;
    case 16:
        if (lv_field_name_eq(name, len, "x-forwarded-host"))
            return LV_FID_X_FORWARDED_HOST;
        break;
    case 17:
        if (lv_field_name_eq(name, len, "transfer-encoding"))
            return LV_FID_TRANSFER_ENCODING;
        if (lv_field_name_eq(name, len, "x-forwarded-proto"))
            return LV_FID_X_FORWARDED_PROTO;
        break;
    default:
        break;
    }
    if (len > 6 && lv_field_name_eq(name, 6, "proxy-"))
        return LV_FID_PROXY;
    return LV_FID_OTHER;
}

void lv_list_init(struct lv_list_iter *it, const char *v, size_t n)
{
    it->p = v;
    it->end = v + n;
}

static bool is_ows(char c)
{
    return c == ' ' || c == '\t';
}

bool lv_list_next(struct lv_list_iter *it, struct lv_span *elem)
{
    while (it->p < it->end) {
        const char *s = it->p;
        const char *comma = memchr(s, ',', (size_t)(it->end - s));
        const char *e = comma ? comma : it->end;
        it->p = comma ? comma + 1 : it->end;
        while (s < e && is_ows(*s))
            s++;
        while (e > s && is_ows(e[-1]))
            e--;
        if (s < e) {
            elem->p = s;
            elem->len = (size_t)(e - s);
            return true;
        }
    }
    return false;
}

unsigned lv_connection_option(const char *tok, size_t len)
{
    switch (len) {
    case 5:
        return lv_field_name_eq(tok, len, "close") ? LV_CONN_CLOSE : 0;
    case 7:
        return lv_field_name_eq(tok, len, "upgrade") ? LV_CONN_UPGRADE : 0;
    case 10:
        return lv_field_name_eq(tok, len, "keep-alive") ? LV_CONN_KEEP_ALIVE : 0;
    default:
        return 0;
    }
}

unsigned lv_connection_flags(const char *v, size_t n)
{
    struct lv_list_iter it;
    struct lv_span tok;
    unsigned flags = 0;
    lv_list_init(&it, v, n);
    while (lv_list_next(&it, &tok))
        flags |= lv_connection_option(tok.p, tok.len);
    return flags;
}

bool lv_te_parse(const char *v, size_t n, struct lv_te_info *out)
{
    /* Stricter than the generic list rule on purpose: an empty element (",chunked") is a
     * known parser-differential shape, so it is malformed here rather than skipped. */
    size_t i = 0;
    out->ncodings = 0;
    out->nchunked = 0;
    out->chunked_last = false;
    for (;;) {
        while (i < n && is_ows(v[i]))
            i++;
        size_t start = i;
        while (i < n && lv__is_tchar(v[i]))
            i++;
        if (i == start)
            return false;
        bool chunked = lv_field_name_eq(v + start, i - start, "chunked");
        out->ncodings++;
        out->nchunked += chunked;
        out->chunked_last = chunked;
        while (i < n && is_ows(v[i]))
            i++;
        if (i == n)
            return true;
        if (v[i] != ',')
            return false;
        i++;
    }
}

int lv_te_check(const char *v, size_t n)
{
    struct lv_te_info te;
    if (!lv_te_parse(v, n, &te) || te.nchunked != 1 || !te.chunked_last)
        return 400;
    return te.ncodings == 1 ? 0 : 501;
}

/* Parses uri-host [":" port]; on success sets the host length and the port (-1 if absent). */
static bool host_parse(const char *v, size_t n, size_t *host_len, int *port)
{
    size_t i = 0;
    if (n == 0)
        return false;
    if (v[0] == '[') {
        const char *close = memchr(v, ']', n);
        if (!close)
            return false;
        size_t alen = (size_t)(close - v) - 1;
        char tmp[INET6_ADDRSTRLEN + 1];
        unsigned char addr[16];
        /* inet_pton alone decides IPv6 syntax; zone ids and IPvFuture are not accepted. */
        if (alen < 2 || alen >= sizeof(tmp))
            return false;
        memcpy(tmp, v + 1, alen);
        tmp[alen] = '\0';
        for (size_t k = 0; k < alen; k++)
            if (!lv__is_hex(tmp[k]) && tmp[k] != ':' && tmp[k] != '.')
                return false;
        if (inet_pton(AF_INET6, tmp, addr) != 1)
            return false;
        i = alen + 2;
    } else {
        while (i < n && v[i] != ':') {
            unsigned char c = (unsigned char)v[i];
            if (c == '%') {
                if (i + 2 >= n || !lv__is_hex(v[i + 1]) || !lv__is_hex(v[i + 2]))
                    return false;
                i += 3;
            } else if (lv__http_cls[c] & LV__C_HOST) {
                i++;
            } else {
                return false;
            }
        }
        if (i == 0)
            return false;
    }
    *host_len = i;
    *port = -1;
    if (i == n)
        return true;
    if (v[i] != ':')
        return false;
    i++;
    size_t digits = n - i;
    if (digits < 1 || digits > 5)
        return false;
    unsigned p = 0;
    for (; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        p = p * 10 + (unsigned)(v[i] - '0');
    }
    if (p > 65535)
        return false;
    *port = (int)p;
    return true;
}

bool lv_host_valid(const char *v, size_t n)
{
    size_t hl;
    int port;
    return host_parse(v, n, &hl, &port);
}

bool lv_host_split(const char *v, size_t n, char *out, size_t cap, size_t *host_len, int *port)
{
    size_t hl;
    if (!host_parse(v, n, &hl, port) || hl >= cap)
        return false;
    for (size_t i = 0; i < hl; i++)
        out[i] = lv__lower(v[i]);
    out[hl] = '\0';
    *host_len = hl;
    return true;
}

int lv_content_length_parse(const char *v, size_t n, uint64_t *out)
{
    uint64_t x = 0;
    if (n == 0)
        return -1;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return -1;
        /* x <= 2^53 here, so x * 10 + 9 cannot wrap. */
        x = x * 10 + (uint64_t)(v[i] - '0');
        if (x > LV_CONTENT_LENGTH_MAX)
            return -1;
    }
    *out = x;
    return 0;
}

bool lv_request_id_valid(const char *v, size_t n)
{
    if (n < 1 || n > 200)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!lv__is_vchar(v[i]))
            return false;
    return true;
}

struct lv_span lv_span_trim_ows(struct lv_span s)
{
    while (s.len > 0 && is_ows(s.p[0])) {
        s.p++;
        s.len--;
    }
    while (s.len > 0 && is_ows(s.p[s.len - 1]))
        s.len--;
    return s;
}

static bool eq_ci(const char *a, const char *b, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (lv__lower(a[i]) != lv__lower(b[i]))
            return false;
    return true;
}

static bool id_is_hop(uint8_t id)
{
    switch (id) {
    case LV_FID_CONNECTION:
    case LV_FID_KEEP_ALIVE:
    case LV_FID_TE:
    case LV_FID_TRAILER:
    case LV_FID_TRANSFER_ENCODING:
    case LV_FID_UPGRADE:
    case LV_FID_PROXY:
        return true;
    default:
        return false;
    }
}

bool lv_field_is_hop_by_hop(const char *name, size_t len)
{
    return id_is_hop((uint8_t)lv_field_classify(name, len));
}

unsigned lv_fields_mark_hop(struct lv_field *fields, uint32_t n)
{
    unsigned conn = 0;
    for (uint32_t i = 0; i < n; i++)
        if (id_is_hop(fields[i].id))
            fields[i].flags |= LV_FIELD_HOP;
    for (uint32_t i = 0; i < n; i++) {
        if (fields[i].id != LV_FID_CONNECTION)
            continue;
        struct lv_list_iter it;
        struct lv_span tok;
        lv_list_init(&it, fields[i].value.p, fields[i].value.len);
        while (lv_list_next(&it, &tok)) {
            conn |= lv_connection_option(tok.p, tok.len);
            for (uint32_t j = 0; j < n; j++) {
                struct lv_field *f = &fields[j];
                if (f->id != LV_FID_HOST && f->id != LV_FID_CONTENT_LENGTH &&
                    f->name.len == tok.len && eq_ci(f->name.p, tok.p, tok.len))
                    f->flags |= LV_FIELD_HOP;
            }
        }
    }
    return conn;
}

/* One '.' of a path segment, literal or percent-encoded; returns its length or 0. */
static size_t dot_at(const char *p, const char *end)
{
    if (p < end && *p == '.')
        return 1;
    if (end - p >= 3 && p[0] == '%' && p[1] == '2' && (p[2] == 'e' || p[2] == 'E'))
        return 3;
    return 0;
}

bool lv_path_safe(const char *p, size_t n)
{
    const char *end = p + n;
    for (const char *q = p; q + 2 < end; q++)
        if (q[0] == '%' && q[1] == '0' && q[2] == '0')
            return false;
    /* Dot segments: "/." or "/.." followed by "/" or the end, dots possibly encoded. */
    for (const char *q = p; q < end; q++) {
        if (*q != '/')
            continue;
        const char *s = q + 1;
        size_t d1 = dot_at(s, end);
        if (!d1)
            continue;
        s += d1;
        if (s == end || *s == '/')
            return false;
        size_t d2 = dot_at(s, end);
        if (d2 && (s + d2 == end || s[d2] == '/'))
            return false;
    }
    return true;
}
