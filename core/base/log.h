/*
 * log: the error log (stderr or error_log's file), one line per event, with a level and a
 * timestamp. Identical warnings and errors repeated within a second are collapsed into one line
 * with a count. Access logs are a separate module (obs/accesslog.h).
 */
#ifndef LV_LOG_H
#define LV_LOG_H

#include <stdbool.h>

enum lv_log_level { LV_LOG_DEBUG, LV_LOG_INFO, LV_LOG_WARN, LV_LOG_ERROR };

void lv_log_set_level(enum lv_log_level level);
/** Error log lines go to `fd` from now on (-1: stderr again); returns the fd used before, which
 *  the caller closes when it owns it (error_log = "path", README "Operations"). */
int lv_log_set_fd(int fd);
void lv_log(enum lv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/** A change of state (a server ejected, a breaker opening): each one is its own line, never
 *  collapsed with an identical earlier one. */
void lv_log_change(enum lv_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/** Identical warnings and errors within a second are printed once; this prints the counts of
 *  repeats whose second is over (call it about once a second), or all of them (at exit). */
void lv_log_flush_repeats(bool all);

#define lv_debug(...) lv_log(LV_LOG_DEBUG, __VA_ARGS__)
#define lv_info(...)  lv_log(LV_LOG_INFO, __VA_ARGS__)
#define lv_warn(...)  lv_log(LV_LOG_WARN, __VA_ARGS__)
#define lv_error(...) lv_log(LV_LOG_ERROR, __VA_ARGS__)

#endif
