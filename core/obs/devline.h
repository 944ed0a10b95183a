/*
 * devline: the console access-log line (access_log_format = "console", the default of
 * `levee dev`; README "levee dev"): one readable line per request, for a person at a
 * terminal rather than a log pipeline,
 *
 *   17:20:01.234 GET /v1/orders 200 12.3ms  503 (fault) 0.1ms → 200 5.2ms  [fault retried]
 *
 * the local time the request started, method, path, status sent ("-": none), total duration,
 * then each upstream attempt (its status or error, "(fault)" when levee injected it, its
 * duration) joined by arrows, then the flags in brackets, "retry_stop=WHY" when the attempts
 * ended for another reason than a success, and "error=TOKEN" when levee answered itself
 * (the Levee-Error token). Like accesslog.h, it formats into a buffer and does no I/O.
 */
#ifndef LV_OBS_DEVLINE_H
#define LV_OBS_DEVLINE_H

#include <stdbool.h>

#include "base/buf.h"
#include "obs/accesslog.h"

/* Longest path shown, in bytes of the request target; a longer one ends with "...". */
#define LV_DEVLINE_MAX_PATH 120

/**
 * Appends the console line of `e` and "\n" to `out`. With `color`, ANSI colours: the status
 * by class (2xx green, 3xx cyan, 4xx yellow, 5xx red), errors red, faults magenta, flags
 * yellow, the time and arrows dim. Bytes of the path and method outside printable ASCII, and
 * backslashes, are written as \xHH (\\), so a client cannot put terminal escape sequences on
 * the console.
 */
void lv_accesslog_format_console(const struct lv_access_entry *e, struct lv_buf *out, bool color);

/** The access-log line of `e`: the console line (`console`) or the JSON one. */
void lv_accesslog_format_as(bool console, bool color, const struct lv_access_entry *e,
                            struct lv_buf *out);

#endif
