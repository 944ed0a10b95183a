#include "policy/retry_after.h"

#include <stdbool.h>
#include <string.h>

static const char *const months[12] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                       "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
static const char *const days_short[7] = {"Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"};
static const char *const days_long[7] = {"Monday", "Tuesday",  "Wednesday", "Thursday",
                                         "Friday", "Saturday", "Sunday"};

/* A cursor over the value; every reader fails (returns false) without moving on a mismatch. */
struct cur {
    const char *p, *end;
};

static bool lit(struct cur *c, const char *s)
{
    size_t n = strlen(s);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, s, n) != 0)
        return false;
    c->p += n;
    return true;
}

/* Exactly `n` digits. */
static bool digits(struct cur *c, int n, int *out)
{
    if (c->end - c->p < n)
        return false;
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (c->p[i] < '0' || c->p[i] > '9')
            return false;
        v = v * 10 + (c->p[i] - '0');
    }
    c->p += n;
    *out = v;
    return true;
}

static bool one_of(struct cur *c, const char *const *names, int count, int *out)
{
    for (int i = 0; i < count; i++)
        if (lit(c, names[i])) {
            *out = i;
            return true;
        }
    return false;
}

/* time-of-day = hour ":" minute ":" second; second may be 60 (a leap second). */
static bool time_of_day(struct cur *c, int *h, int *m, int *s)
{
    return digits(c, 2, h) && lit(c, ":") && digits(c, 2, m) && lit(c, ":") && digits(c, 2, s) &&
           *h <= 23 && *m <= 59 && *s <= 60;
}

static bool leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t civil_year_of(int64_t unix_s)
{
    int64_t z = (unix_s >= 0 ? unix_s : unix_s - 86399) / 86400 + 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int64_t m = mp < 10 ? mp + 3 : mp - 9;
    return yoe + era * 400 + (m <= 2);
}

static bool valid_date(int64_t y, int mon /* 0-11 */, int d)
{
    static const int mdays[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int max = mdays[mon] + (mon == 1 && leap(y));
    return d >= 1 && d <= max;
}

/* Parses the three HTTP-date forms into seconds since the epoch. */
static bool http_date(struct cur *c, int64_t now_unix_s, int64_t *out)
{
    int wd, d, mon, y, h, mi, s;
    int64_t year;
    struct cur save = *c;
    if (one_of(c, days_long, 7, &wd) && lit(c, ", ")) {
        /* rfc850-date: Sunday, 06-Nov-94 08:49:37 GMT */
        if (!(digits(c, 2, &d) && lit(c, "-") && one_of(c, months, 12, &mon) && lit(c, "-") &&
              digits(c, 2, &y) && lit(c, " ") && time_of_day(c, &h, &mi, &s) && lit(c, " GMT")))
            return false;
        /* RFC 9110 §5.6.7: a two-digit year more than 50 years ahead is in the past. */
        int64_t now_y = civil_year_of(now_unix_s);
        year = now_y - (now_y % 100 + 100) % 100 + y;
        if (year > now_y + 50)
            year -= 100;
    } else {
        *c = save;
        if (!one_of(c, days_short, 7, &wd))
            return false;
        if (lit(c, ", ")) {
            /* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
            if (!(digits(c, 2, &d) && lit(c, " ") && one_of(c, months, 12, &mon) && lit(c, " ") &&
                  digits(c, 4, &y) && lit(c, " ") && time_of_day(c, &h, &mi, &s) && lit(c, " GMT")))
                return false;
        } else {
            /* asctime-date: Sun Nov  6 08:49:37 1994 (day is 2DIGIT or SP DIGIT) */
            if (!(lit(c, " ") && one_of(c, months, 12, &mon) && lit(c, " ")))
                return false;
            if (!(lit(c, " ") ? digits(c, 1, &d) : digits(c, 2, &d)))
                return false;
            if (!(lit(c, " ") && time_of_day(c, &h, &mi, &s) && lit(c, " ") && digits(c, 4, &y)))
                return false;
        }
        year = y;
    }
    (void)wd; /* the day name is checked for form, not against the date (as browsers do) */
    if (!valid_date(year, mon, d))
        return false;
    *out = days_from_civil(year, mon + 1, d) * 86400 + h * 3600 + mi * 60 + s;
    return true;
}

static bool ows(char ch)
{
    return ch == ' ' || ch == '\t';
}

int lv_retry_after_parse(const char *v, size_t n, int64_t now_unix_s, uint64_t *delay_ms)
{
    if (!v)
        return -1;
    const char *p = v, *end = v + n;
    while (p < end && ows(*p))
        p++;
    while (end > p && ows(end[-1]))
        end--;
    if (p == end)
        return -1;

    if (*p >= '0' && *p <= '9') {
        /* delay-seconds = 1*DIGIT; saturate long runs of digits at the cap */
        uint64_t secs = 0;
        for (const char *q = p; q < end; q++) {
            if (*q < '0' || *q > '9')
                return -1;
            if (secs <= LV_RETRY_AFTER_MAX_S)
                secs = secs * 10 + (uint64_t)(*q - '0');
        }
        if (secs > LV_RETRY_AFTER_MAX_S)
            secs = LV_RETRY_AFTER_MAX_S;
        *delay_ms = secs * 1000;
        return 0;
    }

    struct cur c = {p, end};
    int64_t t;
    if (!http_date(&c, now_unix_s, &t) || c.p != c.end)
        return -1;
    if (t <= now_unix_s) {
        *delay_ms = 0;
        return 0;
    }
    uint64_t secs = (uint64_t)(t - now_unix_s);
    if (secs > LV_RETRY_AFTER_MAX_S)
        secs = LV_RETRY_AFTER_MAX_S;
    *delay_ms = secs * 1000;
    return 0;
}
