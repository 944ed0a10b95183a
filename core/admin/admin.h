/*
 * admin: the admin listener (README, "Admin API"): GET /healthz, GET /status (JSON), GET /metrics
 * (Prometheus text), POST /reload, GET / (the dashboard page). One request per connection,
 * answered and closed: the admin API is for operators and scrapers, not for traffic.
 */
#ifndef LV_ADMIN_H
#define LV_ADMIN_H

#include "base/buf.h"
#include "script/config.h"

struct lv_server;
struct lv_admin;

/** Binds the admin listener at `addr`; NULL (logged) if it cannot. */
struct lv_admin *lv_admin_start(struct lv_server *s, const struct lv_hostport *addr);
/** Stops listening and closes admin connections. */
void lv_admin_stop(struct lv_admin *a);

/** Appends the /status JSON document. */
void lv_admin_status_json(struct lv_server *s, struct lv_buf *out);

#endif
