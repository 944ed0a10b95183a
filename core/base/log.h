/*
 * log: the error log (stderr), one line per event, with a level and a timestamp.
 * Access logs are a separate module (obs/accesslog.h).
 */
#ifndef LV_LOG_H
#define LV_LOG_H

enum lv_log_level { LV_LOG_DEBUG, LV_LOG_INFO, LV_LOG_WARN, LV_LOG_ERROR };

void lv_log_set_level(enum lv_log_level level);
void lv_log(enum lv_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define lv_debug(...) lv_log(LV_LOG_DEBUG, __VA_ARGS__)
#define lv_info(...)  lv_log(LV_LOG_INFO, __VA_ARGS__)
#define lv_warn(...)  lv_log(LV_LOG_WARN, __VA_ARGS__)
#define lv_error(...) lv_log(LV_LOG_ERROR, __VA_ARGS__)

#endif
