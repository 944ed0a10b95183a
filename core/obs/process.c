#include "obs/process.h"

#include <dirent.h>
#include <stdio.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *const L_BUILD[] = {"version", "libuv", "openssl", "lua", NULL};

static void set_value(struct lv_metrics *m, const char *name, double v)
{
    struct lv_metric_family *f = lv_metrics_find(m, name);
    if (f)
        lv_metric_set(lv_metric_series(f, NULL), v);
}

static double tv_seconds(struct timeval tv)
{
    return (double)tv.tv_sec + (double)tv.tv_usec / 1e6;
}

static void refresh(struct lv_metrics *m, void *arg)
{
    (void)arg;
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) == 0)
        set_value(m, "process_cpu_seconds_total",
                  tv_seconds(ru.ru_utime) + tv_seconds(ru.ru_stime));

    FILE *f = fopen("/proc/self/statm", "r");
    if (f) {
        unsigned long long vsize, rss;
        if (fscanf(f, "%llu %llu", &vsize, &rss) == 2) {
            double page = (double)sysconf(_SC_PAGESIZE);
            set_value(m, "process_virtual_memory_bytes", (double)vsize * page);
            set_value(m, "process_resident_memory_bytes", (double)rss * page);
        }
        fclose(f);
    }

    DIR *d = opendir("/proc/self/fd");
    if (d) {
        double n = 0;
        for (struct dirent *e; (e = readdir(d));)
            if (e->d_name[0] != '.')
                n++;
        closedir(d);
        set_value(m, "process_open_fds", n - 1); /* less the one opendir() holds */
    }

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0)
        set_value(m, "process_max_fds", rl.rlim_cur == RLIM_INFINITY ? -1.0 : (double)rl.rlim_cur);
}

void lv_process_metrics_register(struct lv_metrics *m, const struct lv_build_info *bi)
{
    struct lv_metric_family *b = lv_metrics_family(
        m, "levee_build_info", "Always 1; the labels give the versions levee was built with.",
        LV_METRIC_GAUGE, L_BUILD, NULL, 0);
    const char *lv[] = {bi->version, bi->libuv, bi->openssl, bi->lua, NULL};
    lv_metric_set(lv_metric_series(b, lv), 1);

    int had = lv_metrics_find(m, "process_start_time_seconds") != NULL;
    lv_metrics_family(m, "process_cpu_seconds_total", "Total user and system CPU time spent.",
                      LV_METRIC_COUNTER, NULL, NULL, 0);
    int proc = access("/proc/self/statm", R_OK) == 0;
    if (proc) {
        lv_metrics_family(m, "process_virtual_memory_bytes", "Virtual memory size in bytes.",
                          LV_METRIC_GAUGE, NULL, NULL, 0);
        lv_metrics_family(m, "process_resident_memory_bytes", "Resident memory size in bytes.",
                          LV_METRIC_GAUGE, NULL, NULL, 0);
        lv_metrics_family(m, "process_open_fds", "Number of open file descriptors.",
                          LV_METRIC_GAUGE, NULL, NULL, 0);
    }
    lv_metrics_family(m, "process_max_fds", "Maximum number of open file descriptors.",
                      LV_METRIC_GAUGE, NULL, NULL, 0);
    struct lv_metric_family *st = lv_metrics_family(
        m, "process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
        LV_METRIC_GAUGE, NULL, NULL, 0);
    if (!had) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        lv_metric_set(lv_metric_series(st, NULL), (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
        lv_metrics_on_render(m, refresh, NULL);
    }
}
