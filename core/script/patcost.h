/*
 * patcost: an upper bound on the work one call of Lua's pattern functions (string.find, match,
 * gmatch, gsub) can do on a given subject. Lua's matcher backtracks: a pattern such as
 * ("a?"):rep(40) .. ("a"):rep(40) on 40 "a" runs for hours inside one C call, where no
 * instruction limit can stop it. While a configuration loads (README "Reload"), guards.c asks
 * this module first and refuses a call whose bound is over a limit.
 *
 * The bound is start positions x the steps of one start, where each item costs its steps once
 * per way the items before it can match: the product of their choices, (longest run of
 * matching bytes + 1) for *, + and -, 2 for ?. Runs are measured on the subject, only where
 * an item can start, so the common anchored patterns on large texts cost little to check.
 * Pure: no Lua, no allocation.
 */
#ifndef LV_PATCOST_H
#define LV_PATCOST_H

#include <stdbool.h>
#include <stddef.h>

enum lv_patcost_fn {
    LV_PATCOST_FIND,   /* string.find: anchored by "^", plain when asked or without specials */
    LV_PATCOST_MATCH,  /* string.match: anchored by "^" */
    LV_PATCOST_GMATCH, /* string.gmatch: "^" is an ordinary byte */
    LV_PATCOST_GSUB,   /* string.gsub: anchored by "^" */
};

/**
 * Steps (a step is one byte compared or one matcher call, a few nanoseconds) the call
 * fn(s, p, init[, plain]) may take at worst; `init` is the 0-based start, already clamped to
 * [0, n]. Counting stops once the bound is over `stop` (the caller's limit): the value
 * returned is then only known to be above it. A malformed pattern costs 0 (Lua rejects it).
 */
double lv_pattern_cost(enum lv_patcost_fn fn, const char *s, size_t n, size_t init, const char *p,
                       size_t m, bool plain, double stop);

#endif
