/*
 * test_redis_server.h: a real redis-server for the Redis store tests (idempotency, rate
 * limits), on a free loopback port, killed with the test process; and a plain blocking client
 * for looking behind a store's back. Included by one test file each (its own globals).
 */
#ifndef LV_TEST_REDIS_SERVER_H
#define LV_TEST_REDIS_SERVER_H

#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

static int redis_port;
static pid_t redis_pid;
static int redis_out = -1;

static int free_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(a);
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
        perror("free_port");
        exit(1);
    }
    close(fd);
    return ntohs(a.sin_port);
}

/* Starts redis-server on redis_port and returns once it logged that it accepts connections. */
static void redis_start(void)
{
    int p[2];
    if (pipe(p) != 0) {
        perror("pipe");
        exit(1);
    }
    char port[16];
    snprintf(port, sizeof(port), "%d", redis_port);
    pid_t pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        dup2(p[1], 1);
        dup2(p[1], 2);
        close(p[0]);
        close(p[1]);
        execlp("redis-server", "redis-server", "--port", port, "--bind", "127.0.0.1", "--save", "",
               "--appendonly", "no", "--daemonize", "no", "--dir", "/tmp", (char *)NULL);
        _exit(127);
    }
    close(p[1]);
    redis_pid = pid;
    redis_out = p[0];
    char log[8192];
    size_t n = 0;
    for (;;) {
        struct pollfd pf = {.fd = redis_out, .events = POLLIN};
        if (poll(&pf, 1, 10000) <= 0)
            break;
        ssize_t r = read(redis_out, log + n, sizeof(log) - 1 - n);
        if (r <= 0)
            break;
        n += (size_t)r;
        log[n] = 0;
        if (strstr(log, "Ready to accept connections"))
            return;
        if (n == sizeof(log) - 1)
            break;
    }
    log[n] = 0;
    fprintf(stderr, "test setup failed: redis-server did not start:\n%s\n", log);
    kill(pid, SIGKILL);
    exit(1);
}

static void redis_kill(void)
{
    if (redis_pid <= 0)
        return;
    kill(redis_pid, SIGKILL);
    waitpid(redis_pid, NULL, 0);
    redis_pid = 0;
    close(redis_out);
    redis_out = -1;
}

/* A plain blocking client for looking behind the store's back. */
static redisContext *raw(void)
{
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    if (!c || c->err) {
        fprintf(stderr, "raw redis connect failed\n");
        exit(1);
    }
    return c;

#endif
