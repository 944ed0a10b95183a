#include "testing/testcmd.h"

#include <glob.h>
#include <lauxlib.h>
#include <limits.h>
#include <stdbool.h>
#include <lualib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/buf.h"
#include "testing/luamod.h"

#ifndef LEVEE_LUA_DIR
#define LEVEE_LUA_DIR "/usr/local/share/levee/lua"
#endif

static void usage(FILE *f)
{
    fputs("usage: levee test [-c FILE] [SPEC...] [-- BUSTED-OPTIONS]\n"
          "  runs policy specs (busted, require \"levee.testing\") offline, on a virtual clock;\n"
          "  default SPECs: every *_spec.lua beside the configuration (-c FILE, default\n"
          "  ./levee.lua). Exit code 0: all passed; 1: a spec failed; 2: usage error.\n",
          f);
}

static int usage_error(const char *fmt, const char *arg)
{
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    usage(stderr);
    return 2;
}

static bool dir_has_config_lua(const char *dir)
{
    char probe[PATH_MAX];
    int n = snprintf(probe, sizeof(probe), "%s/levee/config.lua", dir);
    return n > 0 && (size_t)n < sizeof(probe) && access(probe, R_OK) == 0;
}

/* The folder holding levee/config.lua, found as the configuration loader finds it (README
 * "Install"): $LEVEE_LUA_DIR, <prefix>/share/levee/lua beside the binary, the source tree. */
static void lua_dir(char *out, size_t cap)
{
    const char *env = getenv("LEVEE_LUA_DIR");
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return;
    }
    char exe[PATH_MAX];
    if (realpath("/proc/self/exe", exe)) {
        for (int up = 0; up < 2; up++) {
            char *slash = strrchr(exe, '/');
            if (slash)
                *slash = '\0';
        }
        char cand[PATH_MAX];
        int n = snprintf(cand, sizeof(cand), "%s/share/levee/lua", exe);
        if (n > 0 && (size_t)n < sizeof(cand) && dir_has_config_lua(cand)) {
            snprintf(out, cap, "%s", cand);
            return;
        }
    }
    snprintf(out, cap, "%s", LEVEE_LUA_DIR);
}

/* Every DIR/ *_spec.lua, sorted, appended to `files`; returns how many. */
static size_t discover(const char *dir, char ***files, size_t *n)
{
    char pat[PATH_MAX + 16];
    int len = snprintf(pat, sizeof(pat), "%s/*_spec.lua", dir);
    if (len < 0 || (size_t)len >= sizeof(pat))
        return 0;
    glob_t g;
    size_t found = 0;
    if (glob(pat, 0, NULL, &g) == 0) {
        for (size_t i = 0; i < g.gl_pathc; i++) {
            *files = lv_xrealloc(*files, (*n + 1) * sizeof(**files));
            const char *p = g.gl_pathv[i];
            (*files)[(*n)++] = lv_xstrdup(strncmp(p, "./", 2) == 0 ? p + 2 : p);
            found++;
        }
    }
    globfree(&g);
    return found;
}

static int run(const char *luadir, char **files, size_t nfiles, char **extra, int nextra)
{
    lua_State *L = luaL_newstate();
    if (!L) {
        fputs("levee test: cannot create a Lua state\n", stderr);
        return 1;
    }
    luaL_openlibs(L);
    /* package.preload["levee.testing"], and levee's Lua folder before the default path */
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "preload");
    lua_pushcfunction(L, luaopen_levee_testing);
    lua_setfield(L, -2, "levee.testing");
    lua_pop(L, 1);
    lua_getfield(L, -1, "path");
    lua_pushfstring(
        L, "%s/?.lua;%s/?/init.lua;%s;/usr/share/lua/5.4/?.lua;/usr/share/lua/5.4/?/init.lua",
        luadir, luadir, lua_tostring(L, -1));
    lua_setfield(L, -3, "path");
    lua_pop(L, 2);
    /* arg: what busted's command line would get */
    lua_createtable(L, (int)nfiles + nextra, 1);
    lua_pushliteral(L, "levee test");
    lua_rawseti(L, -2, 0);
    int i = 0;
    for (int k = 0; k < nextra; k++) {
        lua_pushstring(L, extra[k]);
        lua_rawseti(L, -2, ++i);
    }
    for (size_t k = 0; k < nfiles; k++) {
        lua_pushstring(L, files[k]);
        lua_rawseti(L, -2, ++i);
    }
    lua_setglobal(L, "arg");
    /* As /usr/bin/busted does. busted ends the process itself (exit code 1) when a spec
     * failed or errored; returning here means every spec passed. */
    static const char chunk[] = "require('busted.runner')({ standalone = false })";
    int rc = luaL_loadbuffer(L, chunk, sizeof(chunk) - 1, "=levee test");
    if (rc == LUA_OK)
        rc = lua_pcall(L, 0, 0, 0);
    int code = 0;
    if (rc != LUA_OK) {
        fprintf(stderr, "levee test: %s\n", lua_tostring(L, -1));
        code = 1;
    }
    lua_close(L);
    return code;
}

int lv_testcmd_main(int argc, char **argv)
{
    const char *config = NULL;
    char **files = NULL;
    size_t nfiles = 0;
    char **extra = NULL;
    int nextra = 0, code = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            extra = argv + i + 1;
            nextra = argc - i - 1;
            break;
        } else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
            config = argv[++i];
        } else if (strcmp(argv[i], "-c") == 0) {
            code = usage_error("levee test: -c needs a FILE%s", "");
            goto out;
        } else if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            usage(stdout);
            goto out;
        } else if (argv[i][0] == '-') {
            code = usage_error("levee test: unknown option %s", argv[i]);
            goto out;
        } else if (access(argv[i], R_OK) != 0) {
            code = usage_error("levee test: no such spec file %s", argv[i]);
            goto out;
        } else {
            files = lv_xrealloc(files, (nfiles + 1) * sizeof(*files));
            files[nfiles++] = lv_xstrdup(argv[i]);
        }
    }
    if (config && access(config, R_OK) != 0) {
        code = usage_error("levee test: no such configuration %s", config);
        goto out;
    }
    lv_testing_set_default_config(config);
    if (!nfiles) {
        char dir[PATH_MAX] = ".";
        if (config) {
            size_t cl = strlen(config);
            if (cl >= sizeof(dir)) {
                code = usage_error("levee test: configuration path too long: %s", config);
                goto out;
            }
            memcpy(dir, config, cl + 1);
            char *slash = strrchr(dir, '/');
            if (slash)
                *slash = '\0';
            else
                memcpy(dir, ".", 2);
        }
        if (!discover(dir, &files, &nfiles)) {
            code = usage_error("levee test: no *_spec.lua file in %s", dir);
            goto out;
        }
    }
    char luadir[PATH_MAX];
    lua_dir(luadir, sizeof(luadir));
    code = run(luadir, files, nfiles, extra, nextra);
out:
    for (size_t k = 0; k < nfiles; k++)
        free(files[k]);
    free(files);
    return code;
}
