/*
 * walk: the second half of a load (script/config.h). lua/levee/config.lua validates the file
 * and returns a normalized table (durations in milliseconds, sizes in bytes, defaults filled
 * in); this module copies it into a struct lv_config. The Lua side does all validation, so a
 * table of another shape is a bug in one of the two sides, reported as an internal error
 * rather than trusted. Hooks become registry references of the state that walked them.
 */
#ifndef LV_WALK_H
#define LV_WALK_H

#include <lua.h>

#include "conf/config.h"

struct lv_walk {
    struct lv_config *c; /* filled in */
    int nrefs;           /* registry references taken (hooks) */
};

/**
 * A lua_CFunction, to be run with lua_pcall. Stack: 1 = struct lv_walk (light userdata),
 * 2 = the normalized configuration, 3 = the list of files it was loaded from (or nil). Raises
 * an error ("internal: ...") on a table it does not expect; what it filled in until then
 * stays in the config, which lv_config_unpin frees.
 */
int lv_walk_config(lua_State *L);

#endif
