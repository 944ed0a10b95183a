/*
 * fuzz_config: the configuration loader. Each input is written to one temporary file per
 * process (reused, in a folder of its own under /tmp) and loaded with lv_config_load, as `levee
 * check` and a reload do; the result is freed. A load that fails must say why. Run with -timeout
 * (scripts/fuzz.sh uses 10 s): a configuration that keeps the loader busy is a finding.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/buf.h"
#include "base/log.h"
#include "common.h"
#include "script/config.h"

/* A folder of its own, so `require` in a configuration finds no other file. */
static char dir[64], path[96];

static void remove_file(void)
{
    if (path[0])
        unlink(path);
    if (dir[0])
        rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    /* Errors come back in the buffer; nothing to log. */
    lv_log_set_level((enum lv_log_level)(LV_LOG_ERROR + 1));
    snprintf(dir, sizeof(dir), "/tmp/levee-fuzz-config.%ld", (long)getpid());
    if (mkdir(dir, 0700) != 0 && errno != EEXIST)
        fz_fail("cannot create %s", dir);
    snprintf(path, sizeof(path), "%s/levee.lua", dir);
    atexit(remove_file);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        fz_fail("cannot write %s", path);
    size_t off = 0;
    while (off < size) {
        ssize_t n = write(fd, data + off, size - off);
        if (n <= 0)
            fz_fail("cannot write %s", path);
        off += (size_t)n;
    }
    close(fd);

    struct lv_buf errors = LV_BUF_INIT;
    struct lv_config *c = lv_config_load(path, NULL, &errors);
    if (!c && errors.len == 0)
        fz_fail("lv_config_load failed without an error message");
    if (c)
        lv_config_unpin(c);
    lv_buf_dispose(&errors);
    return 0;
}
