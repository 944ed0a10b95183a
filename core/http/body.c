#include "http/body.h"

#include <string.h>

/* C_SIZE0..C_EXT_AFTER_QS are the bytes of a chunk-size line before its CR (counted against
 * LV_CHUNK_LINE_MAX); C_EXT_PRE_NAME..C_EXT_AFTER_QS are extension bytes. */
enum {
    B_DONE,
    B_ERROR,
    B_TOO_LARGE,
    B_LENGTH,
    B_EOF,
    C_DATA,
    C_SIZE0, /* first hex digit */
    C_SIZE,
    C_EXT_PRE_NAME, /* after ';' */
    C_EXT_NAME,
    C_EXT_POST_NAME, /* BWS after a name */
    C_EXT_PRE_VAL,   /* after '=' */
    C_EXT_TOKVAL,
    C_EXT_POST_VAL, /* BWS after a value */
    C_EXT_QS,
    C_EXT_QP,
    C_EXT_AFTER_QS,
    C_SIZE_LF,
    C_DATA_CR,
    C_DATA_LF,
    T_START,
    T_NAME,
    T_VALUE,
    T_VALUE_LF,
    T_END_LF,
};

void lv_body_init(struct lv_body *b, enum lv_body_mode mode, uint64_t content_length,
                  uint64_t max_body)
{
    memset(b, 0, sizeof(*b));
    b->mode = (uint8_t)mode;
    b->max_body = max_body;
    switch (mode) {
    case LV_BODY_LENGTH:
        b->remaining = content_length;
        if (content_length > max_body) {
            b->state = B_TOO_LARGE;
            b->reason = "Content-Length exceeds the body size limit";
        } else {
            b->state = content_length ? B_LENGTH : B_DONE;
        }
        break;
    case LV_BODY_CHUNKED:
        b->state = C_SIZE0;
        break;
    case LV_BODY_EOF:
        b->state = B_EOF;
        break;
    default:
        b->state = B_DONE;
        break;
    }
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool is_ws(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static const char *line_end_error(unsigned char c, const char *otherwise)
{
    return c == '\n' ? "bare LF in chunk line" : otherwise;
}

static bool forbidden_trailer(const struct lv_body *b)
{
    return (b->tname_len == 14 && memcmp(b->tname, "content-length", 14) == 0) ||
           (b->tname_len == 17 && memcmp(b->tname, "transfer-encoding", 17) == 0) ||
           (b->tname_len == 4 && memcmp(b->tname, "host", 4) == 0);
}

enum lv_body_result lv_body_next(struct lv_body *b, const char *data, size_t len, size_t *used,
                                 struct lv_span *out)
{
    const unsigned char *d = (const unsigned char *)data;
    size_t i = 0;
    enum lv_body_result r;
    const char *why;
    out->p = NULL;
    out->len = 0;

    for (;;) {
        /* Data states hand out one span per call. */
        switch (b->state) {
        case B_DONE:
            r = LV_BODY_DONE;
            goto out;
        case B_ERROR:
            r = LV_BODY_ERROR;
            goto out;
        case B_TOO_LARGE:
            r = LV_BODY_TOO_LARGE;
            goto out;
        case B_LENGTH:
        case C_DATA: {
            if (i == len) {
                r = LV_BODY_MORE;
                goto out;
            }
            uint64_t n = len - i < b->remaining ? len - i : b->remaining;
            out->p = data + i;
            out->len = (size_t)n;
            i += (size_t)n;
            b->remaining -= n;
            b->received += n;
            if (b->remaining == 0)
                b->state = b->state == B_LENGTH ? B_DONE : C_DATA_CR;
            r = LV_BODY_DATA;
            goto out;
        }
        case B_EOF: {
            if (i == len) {
                r = LV_BODY_MORE;
                goto out;
            }
            /* Hand out what fits, then refuse: the result must not depend on the split. */
            uint64_t room = b->max_body - b->received;
            size_t n = len - i;
            if (room == 0) {
                b->state = B_TOO_LARGE;
                b->reason = "body exceeds the size limit";
                r = LV_BODY_TOO_LARGE;
                goto out;
            }
            if (n > room)
                n = (size_t)room;
            out->p = data + i;
            out->len = n;
            i += n;
            b->received += n;
            r = LV_BODY_DATA;
            goto out;
        }
        default:
            break;
        }
        if (i == len) {
            r = LV_BODY_MORE;
            goto out;
        }

        unsigned char c = d[i];
        if (b->state >= C_SIZE0 && b->state <= C_EXT_AFTER_QS && c != '\r') {
            if (++b->line_len > LV_CHUNK_LINE_MAX) {
                why = "chunk line too long";
                goto error;
            }
            if ((b->state >= C_EXT_PRE_NAME || c == ';') &&
                ++b->ext_total > LV_CHUNK_EXT_MESSAGE_MAX) {
                why = "too many chunk-extension bytes";
                goto error;
            }
        } else if (b->state >= T_START) {
            if (++b->trailer_bytes > LV_TRAILER_MAX) {
                why = "trailer section too large";
                goto error;
            }
        }

        switch (b->state) {
        case C_SIZE0: {
            int v = hexval(c);
            if (v < 0) {
                why = line_end_error(c, "invalid chunk size");
                goto error;
            }
            b->size = (uint64_t)v;
            b->state = C_SIZE;
            break;
        }
        case C_SIZE: {
            int v = hexval(c);
            if (v >= 0) {
                if (b->size > (LV_CONTENT_LENGTH_MAX - (uint64_t)v) / 16) {
                    why = "chunk size too large";
                    goto error;
                }
                b->size = b->size * 16 + (uint64_t)v;
            } else if (c == ';') {
                b->state = C_EXT_PRE_NAME;
            } else if (c == '\r') {
                b->state = C_SIZE_LF;
            } else {
                why = line_end_error(c, "invalid chunk size");
                goto error;
            }
            break;
        }
        case C_EXT_PRE_NAME:
            if (lv__is_tchar(c)) {
                b->state = C_EXT_NAME;
            } else if (!is_ws(c)) {
                why = line_end_error(c, "invalid chunk extension");
                goto error;
            }
            break;
        case C_EXT_NAME:
        case C_EXT_TOKVAL:
            if (lv__is_tchar(c))
                break;
            if (c == ';') {
                b->state = C_EXT_PRE_NAME;
            } else if (c == '\r') {
                b->state = C_SIZE_LF;
            } else if (is_ws(c)) {
                b->state = b->state == C_EXT_NAME ? C_EXT_POST_NAME : C_EXT_POST_VAL;
            } else if (c == '=' && b->state == C_EXT_NAME) {
                b->state = C_EXT_PRE_VAL;
            } else {
                why = line_end_error(c, "invalid chunk extension");
                goto error;
            }
            break;
        case C_EXT_POST_NAME:
        case C_EXT_POST_VAL:
            /* BWS is only allowed before ';' or '=' (RFC 9112 §7.1.1), never before CRLF. */
            if (c == ';') {
                b->state = C_EXT_PRE_NAME;
            } else if (c == '=' && b->state == C_EXT_POST_NAME) {
                b->state = C_EXT_PRE_VAL;
            } else if (!is_ws(c)) {
                why = line_end_error(c, "invalid chunk extension");
                goto error;
            }
            break;
        case C_EXT_PRE_VAL:
            if (c == '"') {
                b->state = C_EXT_QS;
            } else if (lv__is_tchar(c)) {
                b->state = C_EXT_TOKVAL;
            } else if (!is_ws(c)) {
                why = line_end_error(c, "invalid chunk extension");
                goto error;
            }
            break;
        case C_EXT_QS:
            if (c == '"') {
                b->state = C_EXT_AFTER_QS;
            } else if (c == '\\') {
                b->state = C_EXT_QP;
            } else if (!lv__is_value(c)) {
                why = line_end_error(c, "control character in chunk extension");
                goto error;
            }
            break;
        case C_EXT_QP:
            if (!lv__is_value(c)) {
                why = line_end_error(c, "control character in chunk extension");
                goto error;
            }
            b->state = C_EXT_QS;
            break;
        case C_EXT_AFTER_QS:
            if (c == ';') {
                b->state = C_EXT_PRE_NAME;
            } else if (c == '\r') {
                b->state = C_SIZE_LF;
            } else if (is_ws(c)) {
                b->state = C_EXT_POST_VAL;
            } else {
                why = line_end_error(c, "invalid chunk extension");
                goto error;
            }
            break;
        case C_SIZE_LF:
            if (c != '\n') {
                why = "bare CR in chunk line";
                goto error;
            }
            b->line_len = 0;
            if (b->size == 0) {
                b->state = T_START;
            } else if (b->size > b->max_body - b->received) {
                i++;
                b->state = B_TOO_LARGE;
                b->reason = "chunked body exceeds the size limit";
                r = LV_BODY_TOO_LARGE;
                goto out;
            } else {
                b->remaining = b->size;
                b->state = C_DATA;
            }
            break;
        case C_DATA_CR:
            if (c != '\r') {
                why = "chunk data not followed by CRLF";
                goto error;
            }
            b->state = C_DATA_LF;
            break;
        case C_DATA_LF:
            if (c != '\n') {
                why = "chunk data not followed by CRLF";
                goto error;
            }
            b->state = C_SIZE0;
            break;
        case T_START:
            if (c == '\r') {
                b->state = T_END_LF;
            } else if (lv__is_tchar(c)) {
                if (++b->trailer_fields > LV_TRAILER_FIELDS_MAX) {
                    why = "too many trailer fields";
                    goto error;
                }
                b->tname[0] = lv__lower((char)c);
                b->tname_len = 1;
                b->state = T_NAME;
            } else {
                why = c == '\n'  ? "bare LF in trailer section"
                      : is_ws(c) ? "obs-fold in trailer section"
                      : c == ':' ? "empty trailer field name"
                                 : "invalid byte in trailer field name";
                goto error;
            }
            break;
        case T_NAME:
            if (lv__is_tchar(c)) {
                /* Only short names can be forbidden ones; tname_len saturates past them. */
                if (b->tname_len < sizeof(b->tname))
                    b->tname[b->tname_len++] = lv__lower((char)c);
            } else if (c == ':') {
                if (forbidden_trailer(b)) {
                    why = "framing field in trailer section";
                    goto error;
                }
                b->state = T_VALUE;
            } else {
                why = is_ws(c) ? "whitespace before colon in trailer" : "invalid trailer field";
                goto error;
            }
            break;
        case T_VALUE:
            if (c == '\r') {
                b->state = T_VALUE_LF;
            } else if (!lv__is_value(c)) {
                why = c == '\n' ? "bare LF in trailer section" : "control character in trailer";
                goto error;
            }
            break;
        case T_VALUE_LF:
        case T_END_LF:
            if (c != '\n') {
                why = "bare CR in trailer section";
                goto error;
            }
            b->state = b->state == T_END_LF ? B_DONE : T_START;
            break;
        default:
            why = "internal body state";
            goto error;
        }
        i++;
    }

error:
    b->state = B_ERROR;
    b->reason = why;
    r = LV_BODY_ERROR;
out:
    *used = i;
    b->wire += i;
    return r;
}

enum lv_body_result lv_body_eof(struct lv_body *b)
{
    if (b->state == B_EOF || b->state == B_DONE) {
        b->state = B_DONE;
        return LV_BODY_DONE;
    }
    if (b->state != B_ERROR && b->state != B_TOO_LARGE) {
        b->state = B_ERROR;
        b->reason = "connection closed before the body was complete";
    }
    return LV_BODY_ERROR;
}

bool lv_body_done(const struct lv_body *b)
{
    return b->state == B_DONE;
}
