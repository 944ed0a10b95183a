/*
 * retry_after: parses a Retry-After field value (RFC 9110 §10.2.3) into a delay. Both forms
 * are accepted: delay-seconds, and an HTTP-date in any of the three formats a recipient must
 * accept (§5.6.7: IMF-fixdate, the obsolete RFC 850 form and asctime). The current time is
 * an argument. Called by lv_retry_delay (retry.h); the request path passes it the raw value.
 */
#ifndef LV_RETRY_AFTER_H
#define LV_RETRY_AFTER_H

#include <stddef.h>
#include <stdint.h>

/* Longest delay reported (1 day): larger values, which no deadline can fit, are capped. */
#define LV_RETRY_AFTER_MAX_S 86400

/**
 * Parses `v` (`n` bytes, not NUL-terminated; leading and trailing spaces and tabs allowed).
 * On success stores the delay in ms in *delay_ms (0 for a date in the past, at most
 * LV_RETRY_AFTER_MAX_S seconds) and returns 0; returns -1, leaving *delay_ms alone, for
 * anything else (empty, negative, fractional, bad date, a date that does not exist).
 * `now_unix_s` is the current wall-clock time in seconds since the epoch; it is also the
 * reference for RFC 850's two-digit year (a year more than 50 years ahead is in the past).
 */
int lv_retry_after_parse(const char *v, size_t n, int64_t now_unix_s, uint64_t *delay_ms);

#endif
