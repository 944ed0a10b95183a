#include "proxy/errresp.h"

#include <stdio.h>
#include <string.h>

#include "http/respwrite.h"

void lv_errresp_format(struct lv_buf *out, enum lv_gwerr err, int status, const char *route,
                       const char *request_id, const char *detail, int retry_after_s,
                       const struct lv_buf *extra, bool close, bool head_only)
{
    const struct lv_gwerr_info *e = lv_gwerr_info(err);
    if (status == 0)
        status = e->status;
    struct lv_buf body = LV_BUF_INIT;
    lv_buf_puts(&body, "{\"error\":\"");
    lv_buf_puts(&body, e->token);
    lv_buf_puts(&body, "\",\"route\":");
    if (route) {
        lv_buf_putc(&body, '"');
        lv_buf_json_escape(&body, route, strlen(route));
        lv_buf_putc(&body, '"');
    } else {
        lv_buf_puts(&body, "null");
    }
    lv_buf_puts(&body, ",\"request_id\":");
    if (request_id) {
        lv_buf_putc(&body, '"');
        lv_buf_json_escape(&body, request_id, strlen(request_id));
        lv_buf_putc(&body, '"');
    } else {
        lv_buf_puts(&body, "null");
    }
    lv_buf_puts(&body, ",\"message\":\"");
    lv_buf_puts(&body, e->message);
    lv_buf_putc(&body, '"');
    if (detail) {
        lv_buf_puts(&body, ",\"detail\":\"");
        lv_buf_json_escape(&body, detail, strlen(detail));
        lv_buf_putc(&body, '"');
    }
    lv_buf_puts(&body, "}\n");

    lv_respwrite_begin(out, status, NULL, 0);
    lv_respwrite_fieldz(out, "Content-Type", "application/json");
    lv_respwrite_fieldz(out, "Levee-Error", e->token);
    if (retry_after_s < 0 && e->retry_after)
        retry_after_s = 1;
    if (retry_after_s >= 0) {
        char ra[16];
        snprintf(ra, sizeof(ra), "%d", retry_after_s);
        lv_respwrite_fieldz(out, "Retry-After", ra);
    }
    if (extra && extra->len)
        lv_buf_append(out, extra->data, extra->len);
    struct lv_resp_tail t = {
        .request_id = request_id,
        .framing = LV_FRAMING_LENGTH,
        .length = body.len,
        .connection = close ? LV_CONNHDR_CLOSE : LV_CONNHDR_NONE,
    };
    lv_respwrite_end(out, &t);
    if (!head_only)
        lv_buf_append(out, body.data, body.len);
    lv_buf_dispose(&body);
}
