/*
 * hooks: runs a route's Lua hooks (README, "Outcomes and classification" classify, §5 fallback and
 * idempotency key) for the request path, and turns what they return into C values: a verdict and an
 * optional delay, a complete HTTP response, or an idempotency key. It is the only code that calls
 * into the configuration's Lua state after loading.
 *
 * Every call runs on one Lua thread owned by the configuration (created at load by
 * lv_hooks_attach), under pcall with a traceback handler, an instruction limit and a memory
 * limit per call. A hook that raises an error, loops, allocates without bound or returns
 * something unexpected fails that call only: the caller gets LV_VERDICT_NONE (or -1) and a
 * one-line message for the log, and the state stays usable for the next call.
 *
 * Hooks see the configuration's sandbox (config.lua), sealed once the file has loaded (runtime.h):
 * globals and the library tables (string, table, math, utf8, os) become read-only, `require`
 * fails, and `setmetatable` refuses __gc (a finalizer would run outside every limit). State a
 * hook keeps on purpose lives in locals of the configuration file (upvalues), e.g. the module
 * returned by `require "levee.policy"` at the top of the file.
 *
 * The tables a hook receives are built per call and cheaply: `headers` and `request` are
 * filled in only when the hook reads them (one table and one string per header). They are
 * valid during the call only; a table a hook keeps past its call no longer fills them in.
 *
 * Owns nothing the caller sees: every argument is borrowed for the duration of the call.
 * Called by the request path (core/proxy) once per attempt when the route has a classify hook,
 * when the breaker rejects a request on a route with a fallback hook, and before the
 * idempotency lookup on a route with an idempotency key hook.
 */
#ifndef LV_HOOKS_H
#define LV_HOOKS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "base/buf.h"
#include "conf/config.h"
#include "policy/outcome.h"
#include "script/hooktypes.h"

/* The classify hook's verdict is policy's enum lv_verdict (policy/outcome.h): LV_VERDICT_NONE
 * when the hook returned nil, failed, or there is none. */

/* Why a hook call failed, for levee_hook_errors_total{kind}. */
enum lv_hook_failure {
    LV_HOOK_FAILED_ERROR = 0,    /* raised an error (or could not be called) */
    LV_HOOK_FAILED_INSTRUCTIONS, /* ran over LV_HOOK_MAX_INSTRUCTIONS */
    LV_HOOK_FAILED_MEMORY,       /* allocated over LV_HOOK_MAX_MEMORY */
    LV_HOOK_FAILED_VALUE,        /* returned something the hook's contract does not allow */
    LV_HOOK_FAILURE_KINDS
};

/** The metric label of `f`: "error", "instruction-limit", "memory-limit" or "bad-value". */
const char *lv_hook_failure_name(enum lv_hook_failure f);

/** Why the last hook call on `cfg`'s state that failed (returned its failure) failed. Read it
 * right after that call: the next failing call overwrites it. */
enum lv_hook_failure lv_hook_last_failure(struct lv_config *cfg);

/**
 * Runs the classify hook `ref` (a route's classify_ref) of `cfg` on attempt `a` (borrowed for
 * the call). Returns the verdict the hook named. On LV_VERDICT_RETRY with a second return value
 * (seconds as a number, or a string: a duration "250ms", "1.5s", "1m30s", or bare seconds
 * "120"), sets *delay_ms (capped at LV_HOOK_MAX_DELAY_MS) and *has_delay = true; otherwise
 * *has_delay = false.
 *
 * LV_VERDICT_NONE means "classify as if there were no hook". `err` is reset first; it stays empty
 * when there is no hook (ref < 0, no state) or the hook returned nil on purpose, and holds a
 * one-line NUL-terminated message to log when the hook failed: raised an error, ran over
 * LV_HOOK_MAX_INSTRUCTIONS or LV_HOOK_MAX_MEMORY, or returned something other than
 * "ok"/"fail"/"retry"/nil or a bad delay.
 */
enum lv_verdict lv_hook_classify(struct lv_config *cfg, int ref, const struct lv_hook_attempt *a,
                                 uint64_t *delay_ms, bool *has_delay, struct lv_buf *err);

/**
 * Runs the fallback hook `ref` (a route's fallback_ref) as fallback(req, why), `why` being the
 * reason the upstream is not asked ("breaker-open"). The hook returns
 *   { status = 503, headers = { ["Name"] = "value" | number | { list }, ... } or
 *     { { "Name", "value" }, ... }, body = "..." }
 * (status defaults to 503, headers and body to none). On success appends a complete HTTP/1.1
 * response to `out` (status line, the hook's headers, Content-Length computed, X-Request-Id,
 * Connection: close when req->close; the body unless req->method is HEAD), stores the status
 * in *status and returns 0. Headers levee owns (Content-Length, Transfer-Encoding, the
 * hop-by-hop ones such as Connection, and X-Request-Id when req->request_id is set) are
 * dropped, not sent.
 *
 * Returns -1 and leaves `out` untouched when the caller must answer by itself (503
 * breaker-open): `err` (reset first) is empty when there is no hook or it returned nil on
 * purpose, and holds a one-line message when it failed: an error, a limit, a wrong type, a
 * status outside 200-599, a header name that is not a token, a value with CR, LF or another
 * control byte, a body on 204/304, an unknown key, or a head over LV_HOOK_MAX_FALLBACK_HEAD.
 */
int lv_hook_fallback(struct lv_config *cfg, int ref, const struct lv_hook_request *req,
                     const char *why, struct lv_buf *out, int *status, struct lv_buf *err);

/**
 * Runs the idempotency key hook `ref` (a route's idempotency.key_ref) as key(req), req being
 * the same table a fallback sees ({ method, path, headers, route, request_id }; header names
 * in lower case, `req->close` unused). The hook returns the key to use, e.g. namespaced by
 * tenant: req.headers["x-tenant"] .. ":" .. req.headers["idempotency-key"], or nil for "this
 * request has no key".
 *
 * Returns 1 and appends the key's bytes to `key` when the hook returned a string (at most
 * LV_HOOK_MAX_IDEM_KEY bytes, none below 0x20 nor 0x7f; "" is returned as is: 1 with nothing
 * appended); 0 when it returned nil, and also when there is no hook (ref < 0, no state: the
 * caller checks ref >= 0 first and otherwise reads the configured header itself). Returns -1
 * with `key` untouched when the hook failed: an error, a limit, a value that is neither a
 * string nor nil, a key too long or with a control byte. `err` is reset first and holds a
 * one-line message ("idempotency key hook...") only for -1.
 */
int lv_hook_idem_key(struct lv_config *cfg, int ref, const struct lv_hook_request *req,
                     struct lv_buf *key, struct lv_buf *err);

/* ---- for the loader (config.c) and tests */

struct lua_State;

/**
 * Takes over `L` (a state of runtime.h that loaded `c` and holds its hooks as registry
 * references) for the hooks of `c`: creates the hook thread and the metatables, seals the
 * sandbox environments the hooks (and what they reach through upvalues) use (lv_rt_seal), and
 * sets the state's cap to LV_HOOK_STATE_MEMORY. On success `c` owns the state (freed with it)
 * and 0 is returned; on failure, -1 with a message appended to `errors`, and `L` stays the
 * caller's.
 */
int lv_hooks_attach(struct lua_State *L, struct lv_config *c, struct lv_buf *errors);

/** The Lua state holding `c`'s hooks, or NULL when it has none. */
struct lua_State *lv_hooks_state(const struct lv_config *c);

#endif
