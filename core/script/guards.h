/*
 * guards: C library functions that can loop for ever inside one call, where no count hook
 * fires (README "Load limits", "one C call"), replaced in a state's string and table
 * libraries by wrappers that refuse the costly calls: string.rep of an empty string too many
 * times (always, hooks too), and while a budget with guard_c_calls runs (a load, runtime.h):
 * pattern calls whose backtracking could be too long (patcost.h), table functions on a table
 * with a __len metamethod, table.move over too many elements; those also check the load's
 * clock first. The real tables are changed, so methods through the string metatable
 * (("x"):rep(n)) and the sandbox's copies get the guards too.
 */
#ifndef LV_GUARDS_H
#define LV_GUARDS_H

#include <lua.h>

/** Wraps the guarded functions of `L`'s string and table libraries (a state of lv_rt_new). */
void lv_guards_install(lua_State *L);

#endif
