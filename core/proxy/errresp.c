#include "proxy/errresp.h"

#include <string.h>

void lv_errresp_format(struct lv_buf *out, enum lv_gwerr err, int status, const char *route,
                       const char *request_id, const char *detail, int retry_after_s, bool close,
                       bool head_only)
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

    lv_buf_printf(out, "HTTP/1.1 %d %s\r\n", status, lv_http_reason(status));
    lv_buf_puts(out, "Content-Type: application/json\r\nLevee-Error: ");
    lv_buf_puts(out, e->token);
    lv_buf_puts(out, "\r\n");
    if (request_id) {
        lv_buf_puts(out, "X-Request-Id: ");
        lv_buf_puts(out, request_id);
        lv_buf_puts(out, "\r\n");
    }
    if (retry_after_s < 0 && e->retry_after)
        retry_after_s = 1;
    if (retry_after_s >= 0)
        lv_buf_printf(out, "Retry-After: %d\r\n", retry_after_s);
    if (close)
        lv_buf_puts(out, "Connection: close\r\n");
    lv_buf_printf(out, "Content-Length: %zu\r\n\r\n", body.len);
    if (!head_only)
        lv_buf_append(out, body.data, body.len);
    lv_buf_dispose(&body);
}
