/*
 * errresp: formats the responses the gateway makes itself (README, "Errors made by the gateway"):
 * the status from the gateway error table, `Levee-Error: <token>`, `X-Request-Id`, `Retry-After`
 * where the table says so, and a JSON body {"error":..,"route":..,"request_id":..,"message":..}.
 */
#ifndef LV_ERRRESP_H
#define LV_ERRRESP_H

#include <stdbool.h>

#include "base/buf.h"
#include "base/gwerr.h"

/**
 * Appends a whole response to `out`. `status` 0 takes the table's status. `route` may be NULL
 * (rendered null). `detail` (may be NULL) adds a "detail" field. `retry_after_s` < 0: the
 * table's default (1 s when the row has one). `extra` (may be NULL): header lines to add,
 * each "Name: value\r\n" (RateLimit). `close` adds Connection: close. `head_only` leaves out
 * the body bytes (HEAD requests) but keeps Content-Length.
 */
void lv_errresp_format(struct lv_buf *out, enum lv_gwerr err, int status, const char *route,
                       const char *request_id, const char *detail, int retry_after_s,
                       const struct lv_buf *extra, bool close, bool head_only);

#endif
