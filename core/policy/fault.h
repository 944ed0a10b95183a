/*
 * fault: the faults levee injects on purpose, to see how clients and policies cope (README
 * "levee dev"). Four kinds:
 *
 *   abort     an attempt gets a status without reaching the upstream
 *   delay     an attempt is held this long before it is sent
 *   reset     an attempt ends as `reset` without reaching the upstream
 *   throttle  the response body reaches the client at this many bytes a second
 *
 * A set of faults (struct lv_faults) comes from a route's `fault` table, a Levee-Fault request
 * header or a rule of the admin API; each kind has a percent. lv_faults_draw turns a set into
 * what one attempt (or request) gets. Pure: no clock, no I/O, the caller gives the random bits.
 */
#ifndef LV_POLICY_FAULT_H
#define LV_POLICY_FAULT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum lv_fault_kind { LV_FAULT_ABORT, LV_FAULT_DELAY, LV_FAULT_RESET, LV_FAULT_THROTTLE };
#define LV_FAULT_KINDS 4

struct lv_fault_one {
    bool on;
    double percent; /* 0..100: the share of draws that get it */
    uint64_t value; /* abort: the status; delay: ms; throttle: bytes a second; reset: 0 */
};

struct lv_faults {
    struct lv_fault_one k[LV_FAULT_KINDS]; /* by enum lv_fault_kind */
};

/* What one draw gave: `kinds` has bit (1 << kind) for each fault that applies. */
struct lv_fault_hit {
    unsigned kinds;
    int abort_status;
    uint64_t delay_ms;
    uint64_t throttle_rate;
};

/** "abort", "delay", "reset", "throttle". */
const char *lv_fault_kind_name(enum lv_fault_kind k);

/** True when some kind of `f` is on. */
bool lv_faults_any(const struct lv_faults *f);

/**
 * Draws each kind of `f` that is on and in `only` (bits 1 << kind) with its percent, adding
 * what is hit to `hit` (a kind already in `hit` is left as it is). `rnd` gives 64 random bits
 * per call; a percent of 100 always hits and 0 never does, without a call.
 */
void lv_faults_draw(const struct lv_faults *f, unsigned only, uint64_t (*rnd)(void *), void *arg,
                    struct lv_fault_hit *hit);

/** Adds one fault to `hit` unless that kind is there already. */
void lv_fault_hit_add(struct lv_fault_hit *hit, enum lv_fault_kind k, uint64_t value);

/**
 * Parses a Levee-Fault header value (README "levee dev"): items separated by commas, each
 * `abort=STATUS`, `delay=DURATION`, `reset` or `throttle=SIZE`, optionally followed by
 * `:PERCENT%` (default 100). STATUS is 200-599; DURATION is a number with ms, s or m (at most
 * 1 h, more than 0); SIZE a number of bytes with an optional B, KB, KiB, MB or MiB (at least 1
 * byte a second). Spaces around items are allowed; a kind given twice, an empty item or
 * anything else is an error. Returns true and fills `out`; on error returns false and writes
 * the reason into `why` (NUL-terminated, cut to `cap`).
 */
bool lv_fault_header_parse(const char *p, size_t n, struct lv_faults *out, char *why, size_t cap);

/** A duration as the header writes it ("200ms", "1.5s", "2m"), in ms; false if malformed. */
bool lv_fault_parse_duration(const char *p, size_t n, uint64_t *ms);
/** A size as the header writes it ("512", "10KiB", "2MB"), in bytes; false if malformed. */
bool lv_fault_parse_size(const char *p, size_t n, uint64_t *bytes);

#endif
