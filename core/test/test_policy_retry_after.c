#include "policy/retry_after.h"
#include "t.h"

#include <stdint.h>
#include <time.h>

#define T1994  784111777  /* Sun, 06 Nov 1994 08:49:37 GMT */
#define T2026  1767225600 /* Thu, 01 Jan 2026 00:00:00 GMT */
#define CAP_MS ((uint64_t)LV_RETRY_AFTER_MAX_S * 1000)
#define BAD    UINT64_MAX

/* the delay, or BAD when the value is refused (then *delay must be untouched) */
static uint64_t parse(const char *v, int64_t now)
{
    uint64_t d = 0xdeadbeef;
    int rc = lv_retry_after_parse(v, strlen(v), now, &d);
    if (rc != 0) {
        T_CHECK_INT(rc, -1);
        T_CHECK(d == 0xdeadbeef);
        return BAD;
    }
    return d;
}

static const struct {
    const char *v;
    int64_t now;
    uint64_t want;
} cases[] = {
    /* delay-seconds */
    {"0", T1994, 0},
    {"1", T1994, 1000},
    {"120", T1994, 120000},
    {"  5\t", T1994, 5000},
    {"\t 007 ", T1994, 7000},
    {"86400", T1994, CAP_MS},
    {"86401", T1994, CAP_MS},
    {"99999999999999999999999999999999", T1994, CAP_MS},
    {"-1", T1994, BAD},
    {"+5", T1994, BAD},
    {"1.5", T1994, BAD},
    {"5 5", T1994, BAD},
    {"5s", T1994, BAD},
    {"0x10", T1994, BAD},
    {"", T1994, BAD},
    {"   ", T1994, BAD},
    {"\r\n5", T1994, BAD},
    /* the three HTTP-date forms of RFC 9110's example date, 30 s ahead */
    {"Sun, 06 Nov 1994 08:49:37 GMT", T1994 - 30, 30000},
    {"Sunday, 06-Nov-94 08:49:37 GMT", T1994 - 30, 30000},
    {"Sun Nov  6 08:49:37 1994", T1994 - 30, 30000},
    {" Sun, 06 Nov 1994 08:49:37 GMT ", T1994 - 1, 1000},
    /* now, and the past, mean no wait */
    {"Sun, 06 Nov 1994 08:49:37 GMT", T1994, 0},
    {"Sun, 06 Nov 1994 08:49:37 GMT", T1994 + 3600, 0},
    {"Thu, 01 Jan 1970 00:00:00 GMT", T1994, 0},
    {"Mon, 01 Jan 0001 00:00:00 GMT", T1994, 0},
    /* far future: capped */
    {"Fri, 31 Dec 9999 23:59:59 GMT", T1994, CAP_MS},
    /* calendar checks */
    {"Thu, 29 Feb 2024 00:00:00 GMT", 1709164800 - 10, 10000},
    {"Tue, 29 Feb 2000 00:00:00 GMT", 951782400 - 10, 10000},
    {"Thu, 29 Feb 2023 00:00:00 GMT", T1994, BAD},
    {"Thu, 29 Feb 1900 00:00:00 GMT", T1994, BAD},
    {"Thu, 31 Apr 2024 00:00:00 GMT", T1994, BAD},
    {"Thu, 00 Jan 2024 00:00:00 GMT", T1994, BAD},
    {"Thu, 32 Jan 2024 00:00:00 GMT", T1994, BAD},
    {"Sun, 06 Nov 1994 24:00:00 GMT", T1994, BAD},
    {"Sun, 06 Nov 1994 08:60:00 GMT", T1994, BAD},
    {"Sun, 06 Nov 1994 08:49:61 GMT", T1994, BAD},
    {"Sun, 06 Nov 1994 08:49:60 GMT", T1994 + 22, 1000}, /* leap second: :59 + 1 */
    /* form checks: case, zone, widths, separators, trailing bytes */
    {"sun, 06 Nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sun, 06 nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sun, 06 Nov 1994 08:49:37 UTC", T1994, BAD},
    {"Sun, 06 Nov 1994 08:49:37 gmt", T1994, BAD},
    {"Sun, 06 Nov 1994 08:49:37", T1994, BAD},
    {"Sun, 06 Nov 1994 08:49:37 GMTx", T1994, BAD},
    {"Sun, 6 Nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sun, 06 Nov 94 08:49:37 GMT", T1994, BAD},
    {"Sun,  06 Nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sun 06 Nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sun, 06 Nov 1994 8:49:37 GMT", T1994, BAD},
    {"Sun, 06-Nov-1994 08:49:37 GMT", T1994, BAD},
    {"Sunday, 06 Nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sunday, 06-Nov-1994 08:49:37 GMT", T1994, BAD},
    {"Sun, 06-Nov-94 08:49:37 GMT", T1994, BAD},
    {"Sun Nov 6 08:49:37 1994", T1994, BAD},
    {"Sun Nov 06 08:49:37 1994", T1994 - 2, 2000}, /* 2DIGIT day is allowed too */
    {"Sun Nov  6 08:49:37 1994 GMT", T1994, BAD},
    {"Sun Nov  6 08:49:37 94", T1994, BAD},
    {"Xyz, 06 Nov 1994 08:49:37 GMT", T1994, BAD},
    {"Sun, 06 Nox 1994 08:49:37 GMT", T1994, BAD},
    {"Sun", T1994, BAD},
    {"Sun,", T1994, BAD},
    {"Sunday", T1994, BAD},
    /* the day name is checked for form only, not against the date */
    {"Mon, 06 Nov 1994 08:49:37 GMT", T1994 - 4, 4000},
    /* RFC 850 two-digit years: more than 50 years ahead means the last century */
    {"Wednesday, 01-Jan-75 00:00:00 GMT", T2026, CAP_MS}, /* 2075: 49 years ahead */
    {"Wednesday, 01-Jan-76 00:00:00 GMT", T2026, CAP_MS}, /* 2076: exactly 50 */
    {"Friday, 01-Jan-77 00:00:00 GMT", T2026, 0},         /* 1977 */
    {"Thursday, 01-Jan-26 00:00:10 GMT", T2026, 10000},   /* 2026 */
    {"Thursday, 31-Dec-25 23:59:59 GMT", T2026, 0},
    {"Sunday, 01-Jan-00 00:00:00 GMT", T2026, 0}, /* 2000 */
};

T_TEST(table)
{
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint64_t got = parse(cases[i].v, cases[i].now);
        if (got != cases[i].want)
            fprintf(stderr, "case %zu \"%s\": got %llu\n", i, cases[i].v, (unsigned long long)got);
        T_CHECK(got == cases[i].want);
    }
}

T_TEST(length_is_honoured)
{
    uint64_t d = 0;
    /* only the first n bytes are the value: no NUL needed, nothing read past n */
    T_CHECK_INT(lv_retry_after_parse("12345", 2, T1994, &d), 0);
    T_CHECK_INT(d, 12000);
    T_CHECK_INT(lv_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMTjunk", 29, T1994 - 9, &d), 0);
    T_CHECK_INT(d, 9000);
    T_CHECK_INT(lv_retry_after_parse("Sun, 06 Nov 1994 08:49:37 GMT", 28, T1994, &d), -1);
    T_CHECK_INT(lv_retry_after_parse(NULL, 0, T1994, &d), -1);
    char no_nul[3] = {'4', '2', 'x'};
    T_CHECK_INT(lv_retry_after_parse(no_nul, 2, T1994, &d), 0);
    T_CHECK_INT(d, 42000);
}

static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Every form of many random dates, as the C library prints them, parses back to the same
 * second (checked through the delay from a `now` a few seconds earlier). */
T_TEST(random_dates_agree_with_libc)
{
    static const char *const fmts[] = {
        "%a, %d %b %Y %H:%M:%S GMT", /* IMF-fixdate */
        "%A, %d-%b-%y %H:%M:%S GMT", /* RFC 850 */
        "%a %b %e %H:%M:%S %Y",      /* asctime */
    };
    uint64_t seed = 2024;
    int bad = 0;
    for (int i = 0; i < 20000 && bad < 5; i++) {
        /* 1970 .. 2099 */
        time_t t = (time_t)(splitmix(&seed) % 4102444800ull);
        int64_t ahead = (int64_t)(splitmix(&seed) % 200000) - 100000; /* +- 27 h */
        struct tm tm;
        gmtime_r(&t, &tm);
        for (int f = 0; f < 3; f++) {
            char s[64];
            size_t n = strftime(s, sizeof(s), fmts[f], &tm);
            uint64_t d = BAD;
            int rc = lv_retry_after_parse(s, n, (int64_t)t - ahead, &d);
            uint64_t want = ahead <= 0                     ? 0
                            : ahead > LV_RETRY_AFTER_MAX_S ? CAP_MS
                                                           : (uint64_t)ahead * 1000;
            if (rc != 0 || d != want) {
                fprintf(stderr, "\"%s\" ahead %lld: rc %d, %llu\n", s, (long long)ahead, rc,
                        (unsigned long long)d);
                bad++;
            }
        }
    }
    T_CHECK_INT(bad, 0);
}

int main(void)
{
    T_RUN(table);
    T_RUN(length_is_honoured);
    T_RUN(random_dates_agree_with_libc);
    T_DONE();
}
