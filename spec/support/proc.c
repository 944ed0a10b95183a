#include <lua.h>
#include <lauxlib.h>
int luaopen_lvproc(lua_State *L);
int luaopen_lvproc(lua_State *L)
{
    lua_newtable(L);
    return 1;
}
