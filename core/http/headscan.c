#include "http/headscan.h"

#include <stdint.h>
#include <string.h>

#include "http/fields.h"

/* The start-line states S_METHOD..S_REASON are contiguous: the request-line length limit
 * applies to exactly those. */
enum {
    S_REQ_START,    /* request: first method byte, or an empty line to skip */
    S_REQ_START_LF, /* request: LF of a skipped empty line */
    S_METHOD,
    S_TARGET0, /* first target byte */
    S_TARGET,
    S_VERSION,
    S_SVER,  /* response: "HTTP/1.x " byte s->idx */
    S_SCODE, /* response: status digit s->idx */
    S_SAFTER,
    S_REASON,
    S_START_LF, /* LF ending the start line */
    S_LINE,     /* start of a field line, or CR of the empty line */
    S_NAME,
    S_VALUE,
    S_VALUE_LF,
    S_END_LF,
    S_DONE,
    S_ERROR,
};

void lv_headscan_init(struct lv_headscan *s, bool response, size_t max_head,
                      size_t max_request_line, uint32_t max_fields)
{
    memset(s, 0, sizeof(*s));
    s->response = response;
    s->max_head = max_head;
    s->max_line = max_request_line;
    s->max_fields = max_fields;
    s->state = response ? S_SVER : S_REQ_START;
}

static enum lv_headscan_result fail(struct lv_headscan *s, size_t pos, int status,
                                    const char *reason)
{
    s->state = S_ERROR;
    s->pos = pos;
    /* Whatever an upstream got wrong, the client sees a bad gateway. */
    s->status = s->response ? 502 : status;
    s->reason = reason;
    return LV_HEADSCAN_ERROR;
}

/* `_` twins of framing/routing fields (Content_Length, Transfer_Encoding, Host_): some
 * servers fold '_' into '-', so forwarding them would smuggle a second framing header. */
static bool underscore_twin(const unsigned char *n, size_t len)
{
    static const char *const framing[] = {"content-length", "transfer-encoding", "host"};
    if (!memchr(n, '_', len))
        return false;
    while (len > 0 && (n[0] == '_' || n[0] == '-')) {
        n++;
        len--;
    }
    while (len > 0 && (n[len - 1] == '_' || n[len - 1] == '-'))
        len--;
    for (size_t k = 0; k < sizeof(framing) / sizeof(framing[0]); k++) {
        const char *f = framing[k];
        size_t i = 0;
        for (; i < len && f[i]; i++) {
            char c = lv__lower((char)n[i]);
            if ((c == '_' ? '-' : c) != f[i])
                break;
        }
        if (i == len && f[i] == '\0')
            return true;
    }
    return false;
}

static bool prefix_ci(const unsigned char *p, size_t n, const char *lower)
{
    size_t l = strlen(lower);
    return n >= l && lv_field_name_eq((const char *)p, l, lower);
}

/* The whole request line is there (its CR is at `cr`): check the version, then the target
 * form against the method. The version goes first so `PRI * HTTP/2.0` is a 505. */
static enum lv_headscan_result check_request_line(struct lv_headscan *s, const unsigned char *d,
                                                  size_t cr)
{
    const unsigned char *v = d + s->mark;
    size_t vlen = cr - s->mark;
    /* HTTP/1.x for any digit x: a minor version above 1 is treated as 1.1 (RFC 9110 §2.5). */
    if (!(vlen == 8 && memcmp(v, "HTTP/1.", 7) == 0 && v[7] >= '0' && v[7] <= '9')) {
        if (vlen == 8 && memcmp(v, "HTTP/", 5) == 0 && v[5] >= '0' && v[5] <= '9' && v[6] == '.' &&
            v[7] >= '0' && v[7] <= '9') {
            if (v[5] == '2' && v[7] == '0')
                return fail(s, cr, 505, "HTTP/2.0 request line (no h2c, no prior knowledge)");
            return fail(s, cr, 505, "unsupported HTTP version");
        }
        return fail(s, cr, 400, "malformed HTTP version");
    }
    const unsigned char *t = d + s->target;
    size_t tlen = s->target_end - s->target;
    const unsigned char *m = d + s->start;
    size_t mlen = s->method_end - s->start;
    if (t[0] == '/')
        return LV_HEADSCAN_MORE;
    if (mlen == 7 && memcmp(m, "CONNECT", 7) == 0)
        return LV_HEADSCAN_MORE; /* authority-form; reqhead answers CONNECT itself */
    if (tlen == 1 && t[0] == '*') {
        if (mlen == 7 && memcmp(m, "OPTIONS", 7) == 0)
            return LV_HEADSCAN_MORE;
        return fail(s, cr, 400, "asterisk-form target is only allowed with OPTIONS");
    }
    if ((prefix_ci(t, tlen, "http://") && tlen > 7) || (prefix_ci(t, tlen, "https://") && tlen > 8))
        return LV_HEADSCAN_MORE;
    return fail(s, cr, 400, "request target is not origin-form or absolute-form");
}

static size_t line_stop(const struct lv_headscan *s, size_t end)
{
    size_t lim = s->max_line > SIZE_MAX - s->start ? SIZE_MAX : s->start + s->max_line;
    return lim < end ? lim : end;
}

static size_t head_end(const struct lv_headscan *s, size_t len)
{
    size_t lim = s->max_head > SIZE_MAX - s->start ? SIZE_MAX : s->start + s->max_head;
    return len < lim ? len : lim;
}

enum lv_headscan_result lv_headscan_feed(struct lv_headscan *s, const char *data, size_t len)
{
    if (s->state == S_DONE)
        return LV_HEADSCAN_DONE;
    if (s->state == S_ERROR)
        return LV_HEADSCAN_ERROR;
    const unsigned char *d = (const unsigned char *)data;
    /* The head limit counts from the start line: empty lines before it (which the client
     * loop may or may not have dropped already, depending on how the bytes arrived) do not
     * count, so the verdict never depends on the split. */
    size_t end = head_end(s, len);
    size_t i = s->pos;

    /* One byte per switch turn; the long runs (target, names, values) are eaten by tight
     * table loops. Every decision depends only on bytes before it, so splits cannot matter. */
    while (i < end) {
        unsigned char c = d[i];
        if (s->state >= S_METHOD && s->state <= S_REASON && i - s->start >= s->max_line &&
            c != '\r')
            return fail(s, i, 414, "request line too long");
        switch (s->state) {
        case S_REQ_START:
            if (c == '\r') {
                s->state = S_REQ_START_LF;
                i++;
                break;
            }
            if (!lv__is_tchar(c))
                return fail(s, i, 400,
                            c == '\n' ? "bare LF in request line" : "malformed request line");
            s->start = i;
            s->state = S_METHOD;
            i++;
            break;
        case S_REQ_START_LF:
            if (c != '\n')
                return fail(s, i, 400, "bare CR in request line");
            i++;
            s->start = i;
            s->state = S_REQ_START;
            end = head_end(s, len);
            break;
        case S_METHOD:
            if (lv__is_tchar(c)) {
                size_t stop = line_stop(s, end);
                for (i++; i < stop && lv__is_tchar(d[i]); i++)
                    ;
                break;
            }
            if (c != ' ')
                return fail(s, i, 400,
                            c == '\n' ? "bare LF in request line" : "malformed request line");
            s->method_end = i;
            s->state = S_TARGET0;
            i++;
            break;
        case S_TARGET0:
            if (c == ' ' || c == '\r' || c == '\n')
                return fail(s, i, 400, "malformed request line");
            s->target = i;
            s->state = S_TARGET;
            /* fall through */
        case S_TARGET:
            if (lv__is_target(c)) {
                size_t stop = line_stop(s, end);
                for (i++; i < stop && lv__is_target(d[i]); i++)
                    ;
                break;
            }
            if (c == ' ') {
                s->target_end = i;
                s->mark = i + 1;
                s->state = S_VERSION;
                i++;
                break;
            }
            if (c == '#')
                return fail(s, i, 400, "fragment in request target");
            if (c == '\r')
                return fail(s, i, 400, "HTTP/0.9 request line (no version)");
            if (c == '\n')
                return fail(s, i, 400, "bare LF in request line");
            return fail(s, i, 400, "invalid byte in request target");
        case S_VERSION:
            if (lv__is_vchar(c)) {
                size_t stop = line_stop(s, end);
                for (i++; i < stop && lv__is_vchar(d[i]); i++)
                    ;
                break;
            }
            if (c == '\r') {
                if (check_request_line(s, d, i) == LV_HEADSCAN_ERROR)
                    return LV_HEADSCAN_ERROR;
                s->state = S_START_LF;
                i++;
                break;
            }
            return fail(s, i, 400,
                        c == '\n' ? "bare LF in request line" : "malformed request line");
        case S_SVER:
            if (s->idx < 7    ? c == (unsigned char)"HTTP/1."[s->idx]
                : s->idx == 7 ? (c >= '0' && c <= '9')
                              : c == ' ') {
                i++;
                if (++s->idx == 9) {
                    s->idx = 0;
                    s->state = S_SCODE;
                }
                break;
            }
            return fail(s, i, 502, "malformed status line");
        case S_SCODE:
            if (c < '0' || c > '9')
                return fail(s, i, 502, "status code is not 3 digits");
            s->code = (uint16_t)(s->code * 10 + (c - '0'));
            i++;
            if (++s->idx == 3) {
                if (s->code < 100 || s->code > 599)
                    return fail(s, i, 502, "status code out of range");
                s->state = S_SAFTER;
            }
            break;
        case S_SAFTER:
            if (c == ' ') {
                s->state = S_REASON;
            } else if (c == '\r') {
                s->state = S_START_LF;
            } else {
                return fail(s, i, 502,
                            c >= '0' && c <= '9' ? "status code is not 3 digits"
                                                 : "malformed status line");
            }
            i++;
            break;
        case S_REASON:
            if (lv__is_value(c)) {
                size_t stop = line_stop(s, end);
                for (i++; i < stop && lv__is_value(d[i]); i++)
                    ;
                break;
            }
            if (c == '\r') {
                s->state = S_START_LF;
                i++;
                break;
            }
            return fail(s, i, 502,
                        c == '\n' ? "bare LF in status line" : "control character in reason");
        case S_START_LF:
            if (c != '\n')
                return fail(s, i, 400, "bare CR in start line");
            s->state = S_LINE;
            i++;
            break;
        case S_LINE:
            if (c == '\r') {
                s->state = S_END_LF;
                i++;
                break;
            }
            if (lv__is_tchar(c)) {
                if (++s->fields > s->max_fields)
                    return fail(s, i, 431, "too many header fields");
                s->mark = i;
                s->state = S_NAME;
                for (i++; i < end && lv__is_tchar(d[i]); i++)
                    ;
                break;
            }
            if (c == ' ' || c == '\t')
                return fail(s, i, 400, "obs-fold or whitespace at the start of a field line");
            if (c == ':')
                return fail(s, i, 400, "empty field name");
            if (c == '\n')
                return fail(s, i, 400, "bare LF in header section");
            return fail(s, i, 400, "invalid byte in field name");
        case S_NAME:
            if (lv__is_tchar(c)) {
                for (i++; i < end && lv__is_tchar(d[i]); i++)
                    ;
                break;
            }
            if (c == ':') {
                if (underscore_twin(d + s->mark, i - s->mark))
                    return fail(s, i, 400, "underscore twin of a framing header");
                s->state = S_VALUE;
                for (i++; i < end && lv__is_value(d[i]); i++)
                    ;
                break;
            }
            if (c == ' ' || c == '\t')
                return fail(s, i, 400, "whitespace before colon");
            if (c == '\r' || c == '\n')
                return fail(s, i, 400, "field line without colon");
            return fail(s, i, 400, "invalid byte in field name");
        case S_VALUE:
            if (lv__is_value(c)) {
                for (i++; i < end && lv__is_value(d[i]); i++)
                    ;
                break;
            }
            if (c == '\r') {
                s->state = S_VALUE_LF;
                i++;
                break;
            }
            if (c == '\n')
                return fail(s, i, 400, "bare LF in header section");
            return fail(s, i, 400, "control character in field value");
        case S_VALUE_LF:
            if (c != '\n')
                return fail(s, i, 400, "bare CR in header section");
            s->state = S_LINE;
            i++;
            break;
        case S_END_LF:
            if (c != '\n')
                return fail(s, i, 400, "bare CR in header section");
            s->state = S_DONE;
            s->pos = i + 1;
            s->head_len = i + 1;
            return LV_HEADSCAN_DONE;
        default:
            return fail(s, i, 400, "internal scanner state");
        }
    }
    s->pos = i;
    if (i - s->start >= s->max_head)
        return fail(s, i, 431, "header section too large");
    return LV_HEADSCAN_MORE;
}
