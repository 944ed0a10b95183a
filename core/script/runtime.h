/*
 * runtime: the Lua runtime every configuration state runs on, shared by the loader
 * (script/config.h) and the hooks (script/hooks.h). It owns what both need from Lua:
 *
 *  - the capped allocator: each state has a memory cap (an allocation over it fails with a
 *    Lua memory error instead of growing the process), an optional tighter cap for one call,
 *    and process-wide counts of the states alive and the bytes they hold (README "Reload":
 *    /status `lua`);
 *  - the sandbox's C side: the state's `require` finds text modules in one folder only (no C
 *    modules), the shared string metatable is out of the file's reach, and lv_rt_seal closes
 *    the environments hooks run in (README "Writing hooks": read-only globals and library
 *    tables, no `require`, no __gc). The file's environment itself (which globals and
 *    libraries it sees) is built by lua/levee/config.lua from this state's libraries;
 *  - the budget: an instruction count and an optional CPU-time limit checked by a count
 *    hook (README "Load limits" for a load, "Writing hooks" for one hook call);
 *  - protected calls that say why they failed (error, memory, budget) and error messages
 *    turned into one bounded line.
 *
 * Everything here is per state, and a state is used by one thread at a time; only the
 * process-wide counters are shared (atomics).
 */
#ifndef LV_RUNTIME_H
#define LV_RUNTIME_H

#include <lua.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"

/* Longest message the lv_rt_error_* functions produce. */
#define LV_RT_ERROR_MAX 1024

/**
 * A state with the standard libraries, at most `cap` bytes of Lua memory, a panic handler
 * that logs, `package.path` limited to `lua_dir` (lua_dir/?.lua, lua_dir/?/init.lua), no C
 * modules, and the string metatable hidden from getmetatable. NULL when Lua cannot make one.
 */
lua_State *lv_rt_new(const char *lua_dir, size_t cap);
/** Closes a state of lv_rt_new and frees its allocator. */
void lv_rt_close(lua_State *L);
/** States of lv_rt_new alive in the process and the bytes their allocators hold. */
void lv_rt_stats(size_t *bytes, unsigned *states);

/** Sets the state-wide memory cap (an allocation that would pass it fails). */
void lv_rt_set_cap(lua_State *L, size_t cap);
/** `extra` > 0: for one call, at most `extra` bytes more than the state holds now (never above
 * the state-wide cap); 0 puts the state-wide cap back. */
void lv_rt_cap_call(lua_State *L, size_t extra);
/** Bytes the state's allocator holds. */
size_t lv_rt_used(lua_State *L);
/** True once an allocation of this state has been refused at a cap. */
bool lv_rt_memory_refused(lua_State *L);

/* An instruction budget (and optionally a clock limit) for Lua code, checked by a count hook
 * every `tick` instructions. Once over, the hook raises `message` (after the position of the
 * running Lua function) and re-arms itself for every instruction, so code that catches the
 * error with pcall cannot run on. */
struct lv_rt_budget {
    uint64_t instructions; /* stops once about this many have run (a multiple of tick) */
    int tick;              /* instructions between two checks */
    uint64_t time_ms;    /* CPU time of the calling thread allowed from lv_rt_budget_start (checked
                            on that thread); 0: no clock limit */
    uint64_t wall_ms;    /* and wall-clock time; 0: none */
    bool skip_main;      /* code on the state's main thread (levee's own) is not counted */
    bool guard_c_calls;  /* guards.h's checks of looping C library calls apply */
    const char *message; /* the error raised; static storage */
};

/** Starts `b` (copied) for `L`'s state, its count hook set on thread `on` (coroutines created
 * from it inherit the hook). Clears the hit flag. */
void lv_rt_budget_start(lua_State *L, lua_State *on, const struct lv_rt_budget *b);
/** Removes the hook from `on`; the hit flag stays readable. */
void lv_rt_budget_stop(lua_State *L, lua_State *on);
/** True once the budget running (or the last one) ran out. */
bool lv_rt_budget_hit(lua_State *L);
/** Pushes a C function returning lv_rt_budget_hit, for Lua code that must know (xpcall
 * wrappers skip message handlers once the budget ran out: Lua runs the handler of an error
 * raised by a count hook with hooks off, so nothing could stop a looping one). */
void lv_rt_push_budget_hit(lua_State *L);
/** For guards.h: a budget with guard_c_calls runs, and `L` is not the main thread. */
bool lv_rt_guarding(lua_State *L);
/** For guards.h: raises the budget's message when it ran out or its clock passed. */
void lv_rt_check_time(lua_State *L);

enum lv_rt_status {
    LV_RT_OK = 0,
    LV_RT_ERROR,  /* an error was raised (not one of the two below) */
    LV_RT_MEMORY, /* an allocation failed: the cap */
    LV_RT_BUDGET, /* the budget ran out */
};

/**
 * lua_pcall of the function below `nargs` arguments on `L`'s stack. With `traceback`, an
 * error message (a string or number; another value is described) gets a traceback
 * (luaL_traceback; no metamethod of the error object runs). On failure the error value is
 * on top, as with lua_pcall. Returns why it failed. Allocates nothing outside the call.
 */
enum lv_rt_status lv_rt_pcall(lua_State *L, int nargs, int nresults, bool traceback);

/** Appends `s` to `err` as part of one line: control bytes become spaces, and nothing past
 * LV_RT_ERROR_MAX bytes. */
void lv_rt_error_put(struct lv_buf *err, const char *s, size_t n);
/** Ends the line: "..." when it was cut, then a NUL (not counted in err->len). */
void lv_rt_error_end(struct lv_buf *err);
/** Appends an error message with a traceback (lv_rt_pcall's) as one line: the message, then,
 * when more than one Lua frame is listed, "(traceback: f1; f2...)" with the Lua frames only (C
 * frames dropped, at most 8); then lv_rt_error_end. */
void lv_rt_error_traced(struct lv_buf *err, const char *m, size_t n);

/**
 * Seals the environments of the functions in the list on top of the stack (popped), and of
 * everything they reach through upvalues and tables (levee's own functions, whose _ENV is the
 * real global table, excepted): `require` becomes a function that fails (modules load with the
 * file, not per call), `rawset` refuses sealed tables, `setmetatable` refuses __gc (a finalizer
 * runs outside every limit), `xpcall` skips its handler once the budget ran out; each such
 * environment and its string, table, math, utf8 and os tables become read-only. Raises a Lua
 * error on failure: call it inside a protected call.
 */
void lv_rt_seal(lua_State *L);

#endif
