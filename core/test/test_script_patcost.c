/*
 * test_script_patcost: the bound on Lua pattern work (script/patcost.h) is high for
 * backtracking bombs and low for the patterns configurations and levee's own loader use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "script/patcost.h"
#include "t.h"

#define BIG 1e300

static char *rep(const char *s, size_t times)
{
    size_t l = strlen(s);
    char *out = malloc(l * times + 1);
    for (size_t i = 0; i < times; i++)
        memcpy(out + i * l, s, l);
    out[l * times] = '\0';
    return out;
}

static double cost(enum lv_patcost_fn fn, const char *s, size_t init, const char *p, bool plain)
{
    return lv_pattern_cost(fn, s, strlen(s), init, p, strlen(p), plain, BIG);
}

T_TEST(test_backtracking_bomb)
{
    char *s = rep("a", 40), *q = rep("a?", 40), *a = rep("a", 40);
    char *p = malloc(strlen(q) + strlen(a) + 1);
    strcpy(p, q);
    strcat(p, a);
    /* 41 starts, 2^40 ways through the optional items */
    T_CHECK(cost(LV_PATCOST_FIND, s, 0, p, false) > 1e15);
    T_CHECK(cost(LV_PATCOST_MATCH, s, 0, p, false) > 1e15);
    T_CHECK(cost(LV_PATCOST_GSUB, s, 0, p, false) > 1e15);
    T_CHECK(cost(LV_PATCOST_GMATCH, s, 0, p, false) > 1e15);
    /* counting stops once over the caller's limit */
    double stopped = lv_pattern_cost(LV_PATCOST_FIND, s, 40, 0, p, strlen(p), false, 1e7);
    T_CHECK(stopped > 1e7 && stopped < 1e9);
    /* the same pattern on a subject without "a" fails at once */
    char *b = rep("b", 40);
    T_CHECK(cost(LV_PATCOST_MATCH, b, 0, p, false) < 1e5);
    free(s), free(q), free(a), free(p), free(b);
}

T_TEST(test_quadratic_and_linear)
{
    char *a = rep("a", 3000);
    /* find("a*b") on 3000 "a": about n^2 steps, not n^3 */
    double c = cost(LV_PATCOST_FIND, a, 0, "a*b", false);
    T_CHECK(c > 3000.0 * 3000 && c < 3.0 * 3001 * 3001);
    /* anchored: one start */
    c = cost(LV_PATCOST_FIND, a, 0, "^a*b", false);
    T_CHECK(c < 4 * 3001);
    /* a class that never matches in the subject gives no choices */
    T_CHECK(cost(LV_PATCOST_FIND, a, 0, "%d*x", false) < 4 * 3001);
    /* a single class, no quantifier: linear */
    T_CHECK(cost(LV_PATCOST_FIND, a, 0, "[\r\n]", false) < 3 * 3001);
    free(a);
}

T_TEST(test_duration_pattern)
{
    const char *dur = "^(%d+%.?%d*)(%a+)()";
    T_CHECK(cost(LV_PATCOST_MATCH, "250ms", 0, dur, false) < 500);
    T_CHECK(cost(LV_PATCOST_MATCH, "1h30m", 2, dur, false) < 500);
    char *digits = rep("1", 10000);
    /* Lua takes seconds on this one: refused at any useful limit */
    T_CHECK(cost(LV_PATCOST_MATCH, digits, 0, dur, false) > 1e8);
    free(digits);
}

/* The tokenizer of levee.keylines matches anchored patterns at each token of the whole file:
 * their bound must depend on the token, not on the file. */
T_TEST(test_anchored_at_a_position_of_a_large_text)
{
    size_t n = 1 << 20;
    char *src = malloc(n + 1);
    for (size_t i = 0; i < n; i++)
        src[i] = "local x = 12345 -- \"a\", [[b]]\n"[i % 31];
    src[n] = '\0';
    size_t at = 31 * 1000 + 10; /* the "12345" of line 1001 */
    T_CHECK(strncmp(src + at, "12345", 5) == 0);
    const char *num[] = {"^0[xX][%x%.]*[pP][%+%-]?%d+",
                         "^0[xX][%x%.]*",
                         "^[%d%.]*[eE][%+%-]?%d+",
                         "^[%d%.]+",
                         "^[%w_]+",
                         "^%s*",
                         "^%[(=*)%["};
    for (size_t i = 0; i < sizeof(num) / sizeof(num[0]); i++) {
        double c = cost(LV_PATCOST_MATCH, src, at, num[i], false);
        if (!(c < 1000))
            fprintf(stderr, "pattern %s: %g\n", num[i], c);
        T_CHECK(c < 1000);
    }
    /* unanchored single class over the rest of the text: linear */
    double c = cost(LV_PATCOST_FIND, src, at, "[\r\n]", false);
    T_CHECK(c < 3.0 * (double)n);
    free(src);
}

T_TEST(test_plain_find)
{
    char *hay = rep("a", 1000000);
    double c = cost(LV_PATCOST_FIND, hay, 0, "aaaaaaaaab", true);
    T_CHECK(c > 1e6 && c < 2e6);
    /* without specials find is plain too */
    T_CHECK(cost(LV_PATCOST_FIND, hay, 0, "aaaaaaaaab", false) == c);
    /* but match is not: it runs the matcher, one byte per item per start */
    double m = cost(LV_PATCOST_MATCH, hay, 0, "aaaaaaaaab", false);
    T_CHECK(m > 1e7);
    char *needle = rep("a", 300000);
    needle[299999] = 'b';
    T_CHECK(cost(LV_PATCOST_FIND, hay, 0, needle, true) > 1e9);
    T_CHECK(cost(LV_PATCOST_FIND, "abc", 5, "x", true) == 0); /* init past the end */
    free(hay), free(needle);
}

T_TEST(test_items)
{
    char *a = rep("(", 1000);
    /* %b scans to the end from every start */
    T_CHECK(cost(LV_PATCOST_FIND, a, 0, "%b()", false) > 1000.0 * 1000);
    /* back-references compare up to the rest of the subject */
    T_CHECK(cost(LV_PATCOST_FIND, a, 0, "(%()%1", false) > 1000.0 * 1000);
    /* gmatch: "^" is an ordinary byte, every position is a start */
    T_CHECK(cost(LV_PATCOST_GMATCH, a, 0, "^x", false) > 1000);
    T_CHECK(cost(LV_PATCOST_MATCH, a, 0, "^x", false) < 10);
    /* sets, negated sets, ranges and escapes: a run of 4 costs 1 + 5 steps, none 1 + 1 */
    T_CHECK(cost(LV_PATCOST_MATCH, "zzzz", 0, "^[^z]*", false) < 3);
    T_CHECK(cost(LV_PATCOST_MATCH, "zzzz", 0, "^[a-z]*", false) > 5);
    T_CHECK(cost(LV_PATCOST_MATCH, "]]]]", 0, "^[%]]*", false) > 5);
    T_CHECK(cost(LV_PATCOST_MATCH, "]]]]", 0, "^[]]*", false) > 5);
    T_CHECK(cost(LV_PATCOST_MATCH, "....", 0, "^%.*", false) > 5);
    T_CHECK(cost(LV_PATCOST_MATCH, "....", 0, "^%a*", false) < 3);
    T_CHECK(cost(LV_PATCOST_MATCH, "ABCD", 0, "^%L*", false) > 5);
    T_CHECK(cost(LV_PATCOST_MATCH, "abc", 0, "^%f[%a]%a+$", false) < 50);
    /* malformed patterns cost nothing: Lua refuses them itself */
    T_CHECK(cost(LV_PATCOST_MATCH, "abc", 0, "[a", false) == 0);
    T_CHECK(cost(LV_PATCOST_MATCH, "abc", 0, "a%", false) == 0);
    T_CHECK(cost(LV_PATCOST_MATCH, "abc", 0, "%b(", false) == 0);
    T_CHECK(cost(LV_PATCOST_MATCH, "abc", 0, "%fx", false) == 0);
    free(a);
}

int main(void)
{
    T_RUN(test_backtracking_bomb);
    T_RUN(test_quadratic_and_linear);
    T_RUN(test_duration_pattern);
    T_RUN(test_anchored_at_a_position_of_a_large_text);
    T_RUN(test_plain_find);
    T_RUN(test_items);
    T_DONE();
}
