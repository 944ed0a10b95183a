#include "http/respwrite.h"

#include <string.h>

#include "base/gwerr.h"

void lv_respwrite_begin(struct lv_buf *out, int status, const char *reason, size_t reason_len)
{
    if (!reason || reason_len == 0) {
        reason = lv_http_reason(status);
        reason_len = strlen(reason);
    }
    char line[16];
    line[0] = 'H', line[1] = 'T', line[2] = 'T', line[3] = 'P', line[4] = '/';
    line[5] = '1', line[6] = '.', line[7] = '1', line[8] = ' ';
    /* status is 100-999 (callers validate it); three digits and a space */
    line[9] = (char)('0' + status / 100 % 10);
    line[10] = (char)('0' + status / 10 % 10);
    line[11] = (char)('0' + status % 10);
    line[12] = ' ';
    lv_buf_append(out, line, 13);
    lv_buf_append(out, reason, reason_len);
    lv_buf_append(out, "\r\n", 2);
}

void lv_respwrite_field(struct lv_buf *out, const char *name, size_t name_len, const char *value,
                        size_t value_len)
{
    char *p = lv_buf_reserve(out, name_len + value_len + 4);
    memcpy(p, name, name_len);
    p += name_len;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value, value_len);
    p += value_len;
    *p++ = '\r';
    *p = '\n';
    out->len += name_len + value_len + 4;
}

void lv_respwrite_fieldz(struct lv_buf *out, const char *name, const char *value)
{
    lv_respwrite_field(out, name, strlen(name), value, strlen(value));
}

void lv_respwrite_e2e(struct lv_buf *out, const struct lv_field *fields, uint32_t nfields)
{
    for (uint32_t i = 0; i < nfields; i++) {
        const struct lv_field *f = &fields[i];
        if ((f->flags & LV_FIELD_HOP) || f->id == LV_FID_CONTENT_LENGTH ||
            f->id == LV_FID_TRANSFER_ENCODING || f->id == LV_FID_X_REQUEST_ID)
            continue;
        lv_respwrite_field(out, f->name.p, f->name.len, f->value.p, f->value.len);
    }
}

void lv_respwrite_end(struct lv_buf *out, const struct lv_resp_tail *t)
{
    if (t->request_id)
        lv_respwrite_fieldz(out, "X-Request-Id", t->request_id);
    switch (t->framing) {
    case LV_FRAMING_LENGTH:
        lv_buf_putlit(out, "Content-Length: ");
        lv_buf_putu(out, t->length);
        lv_buf_putlit(out, "\r\n");
        break;
    case LV_FRAMING_CHUNKED:
        lv_buf_putlit(out, "Transfer-Encoding: chunked\r\n");
        break;
    case LV_FRAMING_NONE:
        break;
    }
    if (t->connection == LV_CONNHDR_CLOSE)
        lv_buf_putlit(out, "Connection: close\r\n");
    else if (t->connection == LV_CONNHDR_KEEP_ALIVE)
        lv_buf_putlit(out, "Connection: keep-alive\r\n");
    lv_buf_putlit(out, "\r\n");
}
