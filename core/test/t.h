/*
 * t.h: the unit-test harness. Each test file defines tests with T_TEST and lists them in main
 * with T_RUN; T_CHECK records a failure with file:line and goes on; the process exits 1 if any
 * check failed. Output ends with "N passed, N failed".
 */
#ifndef LV_T_H
#define LV_T_H

#include <stdio.h>
#include <string.h>

static int t__checks, t__failed, t__tests_failed, t__tests;
static int t__cur_failed;

#define T_CHECK(cond)                                                                              \
    do {                                                                                           \
        t__checks++;                                                                               \
        if (!(cond)) {                                                                             \
            t__failed++;                                                                           \
            t__cur_failed = 1;                                                                     \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define T_CHECK_INT(a, b)                                                                          \
    do {                                                                                           \
        long long t__a = (long long)(a), t__b = (long long)(b);                                    \
        t__checks++;                                                                               \
        if (t__a != t__b) {                                                                        \
            t__failed++;                                                                           \
            t__cur_failed = 1;                                                                     \
            fprintf(stderr, "%s:%d: %s == %s: got %lld, want %lld\n", __FILE__, __LINE__, #a, #b,  \
                    t__a, t__b);                                                                   \
        }                                                                                          \
    } while (0)

#define T_CHECK_STR(a, b)                                                                          \
    do {                                                                                           \
        const char *t__a = (a), *t__b = (b);                                                       \
        t__checks++;                                                                               \
        if (!t__a || !t__b || strcmp(t__a, t__b) != 0) {                                           \
            t__failed++;                                                                           \
            t__cur_failed = 1;                                                                     \
            fprintf(stderr, "%s:%d: %s: got \"%s\", want \"%s\"\n", __FILE__, __LINE__, #a,        \
                    t__a ? t__a : "(null)", t__b ? t__b : "(null)");                               \
        }                                                                                          \
    } while (0)

#define T_TEST(name) static void name(void)

#define T_RUN(name)                                                                                \
    do {                                                                                           \
        t__cur_failed = 0;                                                                         \
        t__tests++;                                                                                \
        name();                                                                                    \
        if (t__cur_failed)                                                                         \
            t__tests_failed++;                                                                     \
        fprintf(stderr, "%s %s\n", t__cur_failed ? "FAIL" : "ok  ", #name);                        \
    } while (0)

#define T_DONE()                                                                                   \
    do {                                                                                           \
        printf("%d passed, %d failed\n", t__tests - t__tests_failed, t__tests_failed);             \
        return t__tests_failed ? 1 : 0;                                                            \
    } while (0)

#endif
