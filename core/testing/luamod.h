/*
 * luamod: the Lua module `levee.testing` (README "Testing your policies"): testing.load(FILE)
 * returns a simulated gateway (testing/sim.h) whose :request{...} runs a route's policy
 * against a scripted list of attempt outcomes on a virtual clock.
 */
#ifndef LV_TESTING_LUAMOD_H
#define LV_TESTING_LUAMOD_H

#include <lua.h>

/** Opens the module (for package.preload["levee.testing"]); returns its table. */
int luaopen_levee_testing(lua_State *L);

/** The configuration testing.load() loads when called without a file (`levee test -c FILE`);
 * NULL: ./levee.lua. The string is borrowed and must outlive the module's use. */
void lv_testing_set_default_config(const char *path);

#endif
