#include "base/log.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Worker threads log too (README "Workers"): the level and fd are atomics, and one lock keeps
 * the repeat table and each line whole. */
static _Atomic int min_level = LV_LOG_INFO;
static atomic_int log_fd = 2; /* error_log (README "Operations"): stderr or a file */
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

int lv_log_set_fd(int fd)
{
    return atomic_exchange(&log_fd, fd < 0 ? 2 : fd);
}

void lv_log_set_level(enum lv_log_level level)
{
    atomic_store(&min_level, (int)level);
}

/*
 * Identical warnings and errors (a connect failure per request to a dead server) are
 * collapsed: the first goes out, repeats within the next second are counted, and the count
 * goes out once the second is over (README, "Upstream health"). A small table of recent
 * messages, keyed by a hash of their text, is all it takes.
 */
#define REPEAT_SLOTS  32
#define REPEAT_WINDOW 1000 /* ms */

struct repeat {
    uint64_t hash;
    uint64_t window_start; /* ms; 0: free */
    uint64_t last_seen;    /* ms, the last repeat counted */
    uint64_t suppressed;
    enum lv_log_level level;
    char text[240];
};

static struct repeat repeats[REPEAT_SLOTS];

static uint64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000 + 1;
}

static uint64_t text_hash(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ULL;
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ULL;
    return h;
}

static const char *const names[] = {"debug", "info", "warn", "error"};

static void emit(enum lv_log_level level, const char *text, size_t tlen, const char *suffix)
{
    char line[2300];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ levee[%s] ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     ts.tv_nsec / 1000000, names[level]);
    int m = snprintf(line + n, sizeof(line) - (size_t)n - 1, "%.*s%s", (int)tlen, text,
                     suffix ? suffix : "");
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2)
        len = sizeof(line) - 2;
    line[len++] = '\n';
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(atomic_load(&log_fd), line + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a full disk or a closed pipe: drop the line rather than block */
        off += (size_t)w;
    }
}

static void report(struct repeat *r)
{
    char suffix[96];
    snprintf(suffix, sizeof(suffix), " (repeated %llu more times in %.3fs)",
             (unsigned long long)r->suppressed, (double)(r->last_seen - r->window_start) / 1000.0);
    emit(r->level, r->text, strlen(r->text), suffix);
    r->suppressed = 0;
}

/* Returns true when the message is a repeat to count rather than print. */
static bool collapse(enum lv_log_level level, const char *text, size_t len)
{
    uint64_t now = mono_ms(), h = text_hash(text, len);
    struct repeat *slot = NULL, *oldest = &repeats[0];
    for (size_t i = 0; i < REPEAT_SLOTS; i++) {
        struct repeat *r = &repeats[i];
        if (r->window_start && r->hash == h) {
            slot = r;
            break;
        }
        if (r->window_start < oldest->window_start)
            oldest = r;
    }
    if (slot && now - slot->window_start < REPEAT_WINDOW) {
        slot->suppressed++;
        slot->last_seen = now;
        return true;
    }
    if (slot) {
        if (slot->suppressed)
            report(slot);
    } else {
        slot = oldest;
        if (slot->window_start && slot->suppressed)
            report(slot);
    }
    slot->hash = h;
    slot->window_start = now;
    slot->suppressed = 0;
    slot->level = level;
    snprintf(slot->text, sizeof(slot->text), "%.*s", (int)len, text);
    return false;
}

void lv_log_flush_repeats(bool all)
{
    uint64_t now = mono_ms();
    pthread_mutex_lock(&log_lock);
    for (size_t i = 0; i < REPEAT_SLOTS; i++) {
        struct repeat *r = &repeats[i];
        if (r->window_start && (all || now - r->window_start >= REPEAT_WINDOW)) {
            if (r->suppressed)
                report(r);
            r->window_start = 0;
        }
    }
    pthread_mutex_unlock(&log_lock);
}

static void vlog(enum lv_log_level level, bool may_collapse, const char *fmt, va_list ap)
{
    if ((int)level < atomic_load_explicit(&min_level, memory_order_relaxed))
        return;
    char text[2048];
    int m = vsnprintf(text, sizeof(text), fmt, ap);
    size_t len = m < 0 ? 0 : (size_t)m;
    if (len >= sizeof(text))
        len = sizeof(text) - 1;
    pthread_mutex_lock(&log_lock);
    if (!(may_collapse && level >= LV_LOG_WARN && collapse(level, text, len)))
        emit(level, text, len, NULL);
    pthread_mutex_unlock(&log_lock);
}

void lv_log(enum lv_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, true, fmt, ap);
    va_end(ap);
}

void lv_log_change(enum lv_log_level level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vlog(level, false, fmt, ap);
    va_end(ap);
}
