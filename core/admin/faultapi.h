/*
 * faultapi: the admin API's fault endpoints (README "levee dev", "Scripted faults"), for a
 * test suite that drives levee as it would drive Toxiproxy:
 *
 *   POST   /faults      {"route":"api","abort":{"status":503},"times":2} -> 201 {"id":1,...}
 *   GET    /faults      -> 200 {"faults":[...]} with what is left of each
 *   DELETE /faults/ID   -> 200 {"deleted":ID}, 404 when there is no such fault
 *   DELETE /faults      -> 200 {"deleted":N}
 *
 * Bodies are parsed with jansson; anything wrong is 400 with the reason. The rules live in the
 * server's table (policy/faultrules.h), shared by every worker.
 */
#ifndef LV_ADMIN_FAULTAPI_H
#define LV_ADMIN_FAULTAPI_H

#include <stdbool.h>
#include <stddef.h>

#include "base/buf.h"
#include "conf/config.h"
#include "policy/faultrules.h"

/** True for the paths this module answers ("/faults", "/faults/..."). */
bool lv_faultapi_path(const char *path, size_t len);

/**
 * Answers one request: `method` "GET", "HEAD", "POST", "DELETE"...; `cfg` the configuration
 * in force (routes a fault may name). Writes the JSON body into `out` and returns the status;
 * `*allow` is set for a 405.
 */
int lv_faultapi_handle(struct lv_fault_rules *t, const struct lv_config *cfg, const char *method,
                       const char *path, size_t path_len, const char *body, size_t body_len,
                       struct lv_buf *out, const char **allow);

#endif
