/*
 * patcost.c: walks a Lua pattern item by item the way lstrlib.c's matcher reads it, keeping
 * the range of subject positions where the next item can start, and multiplies the choices
 * of the quantified items. A superset of the reachable positions is always kept, so the result
 * bounds the real work from above; it is exact enough that patterns anchored at a position of
 * a large text (levee's own key-line scanner does this for every token) cost next to nothing.
 */
#include "script/patcost.h"

#include <ctype.h>
#include <string.h>

/* Windows at most this wide are checked byte by byte for single items; wider ones are shifted
 * by one position, which keeps a superset. */
#define EXACT_WINDOW 64

/* The class letters of Lua patterns (%a, %d, ...), as lstrlib.c reads them: in the C locale,
 * an upper-case letter is the complement, any other byte is itself. */
static bool match_class(int c, int cl)
{
    bool res;
    switch (tolower(cl)) {
    case 'a':
        res = isalpha(c);
        break;
    case 'c':
        res = iscntrl(c);
        break;
    case 'd':
        res = isdigit(c);
        break;
    case 'g':
        res = isgraph(c);
        break;
    case 'l':
        res = islower(c);
        break;
    case 'p':
        res = ispunct(c);
        break;
    case 's':
        res = isspace(c);
        break;
    case 'u':
        res = isupper(c);
        break;
    case 'w':
        res = isalnum(c);
        break;
    case 'x':
        res = isxdigit(c);
        break;
    default:
        return cl == c;
    }
    return isupper(cl) ? !res : res;
}

/* [set] from p (at '[') to ec (at the closing ']'). */
static bool match_bracket(int c, const char *p, const char *ec)
{
    bool sig = true;
    if (p[1] == '^') {
        sig = false;
        p++;
    }
    while (++p < ec) {
        if (*p == '%') {
            p++;
            if (match_class(c, (unsigned char)*p))
                return sig;
        } else if (p[1] == '-' && p + 2 < ec) {
            p += 2;
            if ((unsigned char)p[-2] <= c && c <= (unsigned char)*p)
                return sig;
        } else if ((unsigned char)*p == c) {
            return sig;
        }
    }
    return !sig;
}

/* Does byte c match the single-character class [p, ep)? */
static bool single(unsigned char c, const char *p, const char *ep)
{
    switch (*p) {
    case '.':
        return true;
    case '%':
        return match_class(c, (unsigned char)p[1]);
    case '[':
        return match_bracket(c, p, ep - 1);
    default:
        return (unsigned char)*p == c;
    }
}

/* End of the class starting at p, or NULL when the pattern is malformed. */
static const char *class_end(const char *p, const char *pe)
{
    char c = *p++;
    if (c == '%')
        return p < pe ? p + 1 : NULL;
    if (c == '[') {
        if (p < pe && *p == '^')
            p++;
        do {
            if (p >= pe)
                return NULL;
            c = *p++;
            if (c == '%' && p < pe)
                p++;
        } while (p >= pe || *p != ']');
        return p + 1;
    }
    return p;
}

static bool no_specials(const char *p, size_t m)
{
    for (size_t i = 0; i < m; i++)
        if (strchr("^$*+?.([%-", p[i]) && p[i] != '\0')
            return false;
    return true;
}

double lv_pattern_cost(enum lv_patcost_fn fn, const char *s, size_t n, size_t init, const char *p,
                       size_t m, bool plain, double stop)
{
    if (init > n)
        return 0;
    size_t rest = n - init;
    if (fn == LV_PATCOST_FIND && (plain || no_specials(p, m))) {
        /* lmemfind: memchr for the first byte, then memcmp of the others at each hit. */
        if (m == 0 || m > rest)
            return 1;
        return (double)(rest - m + 1) * (1.0 + (double)m / 32.0);
    }
    const char *pe = p + m;
    bool anchor = fn != LV_PATCOST_GMATCH && m > 0 && *p == '^';
    if (anchor)
        p++;
    double starts = anchor ? 1.0 : (double)rest + 1.0;
    size_t lo = init, hi = anchor ? init : n; /* where the next item can start */
    /* work: steps of one start so far, each item's steps counted once per path reaching it;
     * paths: how many ways the items so far can match (the product of their choices). */
    double work = 1.0, paths = 1.0;
#define COST (starts * work)
    while (p < pe) {
        if (COST > stop)
            return COST;
        switch (*p) {
        case '(':
            p += p + 1 < pe && p[1] == ')' ? 2 : 1;
            work += paths;
            continue;
        case ')':
            p++;
            work += paths;
            continue;
        case '$':
            if (p + 1 == pe) {
                p++;
                work += paths;
                continue;
            }
            break; /* an ordinary byte */
        case '%':
            if (p + 1 >= pe)
                return 0;
            if (p[1] == 'b') {
                /* %bxy scans forward without backtracking; it may end anywhere. */
                if (p + 3 >= pe)
                    return 0;
                p += 4;
                work += paths * ((double)(n - lo) + 1);
                hi = n;
                continue;
            }
            if (p[1] == 'f') {
                p += 2;
                if (p >= pe || *p != '[')
                    return 0;
                const char *ep = class_end(p, pe);
                if (!ep)
                    return 0;
                p = ep;
                work += paths;
                continue;
            }
            if (p[1] >= '0' && p[1] <= '9') {
                /* A back-reference compares as many bytes as its capture holds. */
                p += 2;
                work += paths * ((double)(n - lo) + 1);
                hi = n;
                continue;
            }
            break;
        default:
            break;
        }
        const char *ep = class_end(p, pe);
        if (!ep)
            return 0;
        char q = ep < pe ? *ep : '\0';
        if (q == '*' || q == '+' || q == '-') {
            /* Choices: up to the longest run of matching bytes that starts in [lo, hi]. */
            size_t run = 0, best = 0, far = hi;
            for (size_t x = lo; x < n; x++) {
                if (single((unsigned char)s[x], p, ep)) {
                    run++;
                    if (run > best) {
                        best = run;
                        if (starts * (work + paths * (double)(best + 1)) > stop)
                            return starts * (work + paths * (double)(best + 1));
                    }
                    if (x + 1 > far)
                        far = x + 1;
                } else {
                    if (x >= hi)
                        break;
                    run = 0;
                }
            }
            if (q == '+' && best == 0)
                return COST;                      /* it cannot match: the match ends here */
            work += paths * (1.0 + (double)best); /* max_expand counts the run first */
            paths *= (double)best + 1.0;
            hi = far;
            p = ep + 1;
        } else if (q == '?') {
            bool any = hi - lo > EXACT_WINDOW;
            for (size_t x = lo; !any && x <= hi && x < n; x++)
                any = single((unsigned char)s[x], p, ep);
            work += paths;
            if (any) {
                paths *= 2;
                if (hi < n)
                    hi++;
            }
            p = ep + 1;
        } else {
            work += paths;
            if (hi - lo <= EXACT_WINDOW) {
                size_t first = n, last = 0;
                for (size_t x = lo; x <= hi && x < n; x++) {
                    if (single((unsigned char)s[x], p, ep)) {
                        if (first == n)
                            first = x;
                        last = x;
                    }
                }
                if (first == n)
                    return COST; /* no position matches: every path ends here */
                lo = first + 1;
                hi = last + 1;
            } else {
                lo++;
                if (hi < n)
                    hi++;
            }
            p = ep;
        }
    }
    return COST;
#undef COST
}
