/*
 * tmpconf: a scratch folder and configuration files, for unit tests that load real
 * configurations through the loader. Failures to set up exit(2): the test cannot run.
 */
#ifndef LV_TEST_TMPCONF_H
#define LV_TEST_TMPCONF_H

#include <stdio.h>
#include <stdlib.h>

#include "script/config.h"

/** Makes /tmp/lv-test-NAME-XXXXXX into `dir`. */
static inline void tmpconf_dir(char *dir, size_t cap, const char *name)
{
    snprintf(dir, cap, "/tmp/lv-test-%s-XXXXXX", name);
    if (!mkdtemp(dir)) {
        perror("mkdtemp");
        exit(2);
    }
}

/** Writes `text` to DIR/levee.lua and loads it (the caller holds the reference). */
static inline struct lv_config *tmpconf_load(const char *dir, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/levee.lua", dir);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
    struct lv_buf errs = LV_BUF_INIT;
    struct lv_config *cfg = lv_config_load(path, NULL, &errs);
    if (!cfg) {
        fprintf(stderr, "%.*s\n", (int)errs.len, errs.data ? errs.data : "");
        exit(2);
    }
    lv_buf_dispose(&errs);
    return cfg;
}

#endif
