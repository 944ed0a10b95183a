/* respwrite: the one response-head writer. */
#include "http/respwrite.h"
#include "t.h"

static struct lv_buf out;

static const char *str(void)
{
    lv_buf_putc(&out, '\0');
    out.len--;
    return out.data;
}

T_TEST(status_line_and_reason)
{
    lv_buf_reset(&out);
    lv_respwrite_begin(&out, 503, NULL, 0);
    T_CHECK_STR(str(), "HTTP/1.1 503 Service Unavailable\r\n");
    lv_buf_reset(&out);
    lv_respwrite_begin(&out, 200, "Fine", 4);
    T_CHECK_STR(str(), "HTTP/1.1 200 Fine\r\n");
    lv_buf_reset(&out);
    lv_respwrite_begin(&out, 299, "", 0); /* no standard phrase: still a valid line */
    T_CHECK(strncmp(str(), "HTTP/1.1 299 ", 13) == 0);
}

T_TEST(tail_framing_and_connection)
{
    lv_buf_reset(&out);
    struct lv_resp_tail t = {.request_id = "abc", .framing = LV_FRAMING_LENGTH, .length = 12};
    lv_respwrite_end(&out, &t);
    T_CHECK_STR(str(), "X-Request-Id: abc\r\nContent-Length: 12\r\n\r\n");
    lv_buf_reset(&out);
    t = (struct lv_resp_tail){.framing = LV_FRAMING_CHUNKED, .connection = LV_CONNHDR_CLOSE};
    lv_respwrite_end(&out, &t);
    T_CHECK_STR(str(), "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n");
    lv_buf_reset(&out);
    t = (struct lv_resp_tail){.connection = LV_CONNHDR_KEEP_ALIVE};
    lv_respwrite_end(&out, &t);
    T_CHECK_STR(str(), "Connection: keep-alive\r\n\r\n");
}

T_TEST(end_to_end_fields_only)
{
    struct lv_field f[5];
    memset(f, 0, sizeof(f));
    const char *names[] = {"Content-Type", "Connection", "Content-Length", "X-Request-Id", "Foo"};
    const char *values[] = {"text/plain", "close", "5", "up-id", "bar"};
    for (int i = 0; i < 5; i++) {
        f[i].name = (struct lv_span){names[i], strlen(names[i])};
        f[i].value = (struct lv_span){values[i], strlen(values[i])};
        f[i].id = lv_field_classify(names[i], strlen(names[i]));
    }
    f[1].flags |= LV_FIELD_HOP;
    lv_buf_reset(&out);
    lv_respwrite_e2e(&out, f, 5);
    T_CHECK_STR(str(), "Content-Type: text/plain\r\nFoo: bar\r\n");
}

int main(void)
{
    T_RUN(status_line_and_reason);
    T_RUN(tail_framing_and_connection);
    T_RUN(end_to_end_fields_only);
    lv_buf_dispose(&out);
    T_DONE();
}
