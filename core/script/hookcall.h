/*
 * hookcall: the Lua side of one hook call (hooks.h runs it). It builds the tables a hook sees
 * (README "Writing hooks": the attempt of classify, the request of fallback and of the
 * idempotency key, with `headers` and `request` filled in only when read), calls the hook, and
 * turns what it returned into C values: a verdict and delay, a complete HTTP response, a key.
 *
 * Each *_main function is a lua_CFunction run under one protected call (runtime.h) with the
 * struct lv_hook_call as its only argument, so a memory error anywhere is caught; results go
 * into the struct, and C-heap output lives there too (resp), so a Lua error never leaks it.
 */
#ifndef LV_HOOKCALL_H
#define LV_HOOKCALL_H

#include <lua.h>
#include <stdbool.h>
#include <stdint.h>

#include "base/buf.h"
#include "policy/outcome.h"
#include "script/hooktypes.h"

/* Per configuration state: the metatables of the lazy tables, and the call in progress (the
 * lazy fields serve only that call's tables). */
struct lv_hook_views {
    int mt_attempt; /* registry refs */
    int mt_request;
    struct lv_hook_call *cur; /* NULL between calls */
};

/* One hook call: its inputs, what the lazy fields read, and its results. */
struct lv_hook_call {
    struct lv_hook_views *views;
    int ref;          /* the hook: a registry reference */
    const char *what; /* "classify", "fallback", "idempotency key": for messages */

    /* Tables of this call (lua_topointer): the lazy __index serves only these, so a table a
     * hook kept from an earlier call never reads the borrowed arrays of a later one. */
    const void *attempt_tab;
    const void *request_tab;

    const struct lv_hook_attempt *a;
    const struct lv_hook_request *req;
    const char *why;
    const char *method;
    const char *path;
    size_t path_len;
    const struct lv_hook_header *rsp_h, *req_h;
    size_t n_rsp, n_req;

    /* results */
    char bad[256]; /* a wrong return value, described; empty when fine */
    enum lv_verdict verdict;
    bool has_delay;
    uint64_t delay_ms;
    int status;         /* fallback: the response's; idempotency key: 1 when there is a key */
    struct lv_buf resp; /* fallback response or key, moved to the caller's buffer on success */
};

/** Creates the metatables of `v` in `L`'s registry and anchors the keys every table uses (so
 * setting a field finds the interned string). Raises a Lua error on failure. */
void lv_hookcall_init(lua_State *L, struct lv_hook_views *v);

/* Stack: 1 = struct lv_hook_call (light userdata). Each returns 0. */
int lv_hookcall_classify(lua_State *L);
int lv_hookcall_fallback(lua_State *L);
int lv_hookcall_idem_key(lua_State *L);

#endif
