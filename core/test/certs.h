/*
 * certs: a temporary folder for throwaway certificates that a test makes with the openssl
 * command line tool (test helpers only; included by one test file each).
 */
#ifndef LV_TEST_CERTS_H
#define LV_TEST_CERTS_H

#include <stdio.h>
#include <stdlib.h>

static char tmpdir[64];

/* Path of a file in the temporary folder (a few rotating buffers). */
static const char *P(const char *name)
{
    static char bufs[8][256];
    static int next;
    char *b = bufs[next++ % 8];
    snprintf(b, sizeof(bufs[0]), "%s/%s", tmpdir, name);
    return b;
}

/* Runs a setup command in the folder; any failure ends the test program. */
static void sh(const char *cmd)
{
    char full[2048];
    snprintf(full, sizeof(full), "cd %s && (%s) >>openssl.log 2>&1", tmpdir, cmd);
    if (system(full) != 0) {
        fprintf(stderr, "test setup failed: %s (see %s/openssl.log)\n", cmd, tmpdir);
        exit(1);
    }
}

/* Makes the folder (/tmp/PREFIX-XXXXXX), after checking that the openssl tool is there. */
static void certs_dir(const char *prefix)
{
    if (system("openssl version >/dev/null 2>&1") != 0) {
        fprintf(stderr, "test setup failed: the openssl command line tool is missing\n");
        exit(1);
    }
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/%s-XXXXXX", prefix);
    if (!mkdtemp(tmpdir)) {
        perror("mkdtemp");
        exit(1);
    }
}

/* Removes the folder and what is in it. */
static void certs_remove(void)
{
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf %s", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
}

#endif
