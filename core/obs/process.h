/*
 * process: the standard process_* metrics of the Prometheus client libraries (CPU time,
 * memory, file descriptors, start time) and levee_build_info, added to a metrics registry
 * (README "Metrics"). The process values are read at render time from getrusage(),
 * /proc/self and getrlimit(); a host without /proc leaves the /proc-based ones out.
 */
#ifndef LV_OBS_PROCESS_H
#define LV_OBS_PROCESS_H

#include "obs/metrics.h"

/* Versions shown as labels of levee_build_info (NULL counts as ""). */
struct lv_build_info {
    const char *version, *libuv, *openssl, *lua;
};

/** Registers the families in `m` (levee_build_info set to 1 at once) and an on-render
 * callback that refreshes the process_* values. The registry keeps nothing of `bi`. */
void lv_process_metrics_register(struct lv_metrics *m, const struct lv_build_info *bi);

#endif
