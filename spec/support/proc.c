/*
 * lvproc: the process toolkit levee's busted specs use to run real binaries (levee,
 * lv-testupstream) and watch them from plain lua5.4: spawn with redirected output in a new
 * process group, signal, wait with a deadline, monotonic time, RSS and fd counts from /proc,
 * and temporary directories. Children also get PR_SET_PDEATHSIG so a crashed or killed
 * busted run never leaves them behind. Loaded by spec/support/helpers.lua only; built
 * without sanitizers because the host interpreter is not instrumented.
 */
#include <lauxlib.h>
#include <lua.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int luaopen_lvproc(lua_State *L);

/* Statuses of children already reaped (by alive() or wait()), so later calls still answer. */
#define LVP_REAPED "lvproc.reaped"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
    if (s <= 0)
        return;
    struct timespec ts;
    ts.tv_sec = (time_t)s;
    ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

static void reaped_set(lua_State *L, pid_t pid, int status)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LVP_REAPED);
    lua_pushinteger(L, status);
    lua_rawseti(L, -2, pid);
    lua_pop(L, 1);
}

/* Returns 1 and the status if `pid` was reaped earlier. */
static int reaped_get(lua_State *L, pid_t pid, int *status)
{
    lua_getfield(L, LUA_REGISTRYINDEX, LVP_REAPED);
    int found = lua_rawgeti(L, -1, pid) == LUA_TNUMBER;
    if (found)
        *status = (int)lua_tointeger(L, -1);
    lua_pop(L, 2);
    return found;
}

/* 1: reaped now (status set), 0: still running, -1: not our child (errno set). */
static int try_reap(lua_State *L, pid_t pid, int *status)
{
    if (reaped_get(L, pid, status))
        return 1;
    pid_t r;
    do {
        r = waitpid(pid, status, WNOHANG);
    } while (r < 0 && errno == EINTR);
    if (r == pid) {
        reaped_set(L, pid, *status);
        return 1;
    }
    return r == 0 ? 0 : -1;
}

static const struct {
    const char *name;
    int num;
} signames[] = {
    {"HUP", SIGHUP},   {"INT", SIGINT},   {"QUIT", SIGQUIT}, {"KILL", SIGKILL}, {"TERM", SIGTERM},
    {"USR1", SIGUSR1}, {"USR2", SIGUSR2}, {"STOP", SIGSTOP}, {"CONT", SIGCONT}, {"ABRT", SIGABRT},
    {"SEGV", SIGSEGV}, {"PIPE", SIGPIPE}, {"ALRM", SIGALRM}, {"CHLD", SIGCHLD},
};

static int check_signal(lua_State *L, int idx)
{
    if (lua_type(L, idx) == LUA_TNUMBER)
        return (int)luaL_checkinteger(L, idx);
    const char *s = luaL_optstring(L, idx, "TERM");
    if (strncmp(s, "SIG", 3) == 0)
        s += 3;
    for (size_t i = 0; i < sizeof(signames) / sizeof(signames[0]); i++)
        if (strcmp(s, signames[i].name) == 0)
            return signames[i].num;
    return luaL_error(L, "lvproc: unknown signal '%s'", s);
}

static int open_out(const char *path)
{
    if (!path)
        return open("/dev/null", O_WRONLY);
    return open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
}

/* Child side of spawn: never returns. Failure is reported as errno through `errpipe`. */
static void child(char **argv, const char *out, const char *err, const char *cwd, int errpipe,
                  pid_t parent)
{
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent)
        _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    /* luasocket ignores SIGPIPE in this process; ignored dispositions survive exec. */
    for (int s = 1; s < NSIG; s++)
        if (s != SIGKILL && s != SIGSTOP)
            signal(s, SIG_DFL);
    int in = open("/dev/null", O_RDONLY);
    int o = open_out(out);
    int e = err && out && strcmp(err, out) == 0 ? dup(o) : open_out(err);
    if (in < 0 || o < 0 || e < 0 || dup2(in, 0) < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
        goto fail;
    if (cwd && chdir(cwd) != 0)
        goto fail;
    /* Sockets and files of the spec process must not live on in the child: a leaked client
     * socket would keep connections open that a spec expects to see closed. */
    DIR *d = opendir("/proc/self/fd");
    if (d) {
        int dfd = dirfd(d);
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            int fd = atoi(de->d_name);
            if (fd > 2 && fd != dfd && fd != errpipe)
                close(fd);
        }
        closedir(d);
    }
    execvp(argv[0], argv);
fail:;
    int code = errno;
    ssize_t w = write(errpipe, &code, sizeof(code));
    (void)w;
    _exit(127);
}

/* spawn(argv, {stdout=path, stderr=path, env={K=V|false}, cwd=dir}) -> pid | nil, err */
static int l_spawn(lua_State *L)
{
    luaL_checktype(L, 1, LUA_TTABLE);
    int opts = lua_istable(L, 2);
    lua_Integer argc = luaL_len(L, 1);
    luaL_argcheck(L, argc >= 1, 1, "argv must not be empty");
    char **argv = lua_newuserdatauv(L, sizeof(char *) * (size_t)(argc + 1), 0);
    for (lua_Integer i = 1; i <= argc; i++) {
        lua_rawgeti(L, 1, i);
        argv[i - 1] = (char *)luaL_checkstring(L, -1);
        lua_pop(L, 1); /* the table keeps the string alive */
    }
    argv[argc] = NULL;
    const char *out = NULL, *err = NULL, *cwd = NULL;
    if (opts) {
        lua_getfield(L, 2, "stdout");
        out = lua_tostring(L, -1);
        lua_getfield(L, 2, "stderr");
        err = lua_tostring(L, -1);
        lua_getfield(L, 2, "cwd");
        cwd = lua_tostring(L, -1);
        lua_pop(L, 3); /* the options table keeps the strings alive */
    }

    int pipefd[2];
    if (pipe(pipefd) != 0) {
        lua_pushnil(L);
        lua_pushfstring(L, "pipe: %s", strerror(errno));
        return 2;
    }
    /* close-on-exec: a successful exec closes the write end, so the read sees EOF */
    fcntl(pipefd[0], F_SETFD, FD_CLOEXEC);
    fcntl(pipefd[1], F_SETFD, FD_CLOEXEC);
    fflush(NULL);
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        int e = errno;
        close(pipefd[0]);
        close(pipefd[1]);
        lua_pushnil(L);
        lua_pushfstring(L, "fork: %s", strerror(e));
        return 2;
    }
    if (pid == 0) {
        close(pipefd[0]);
        /* Setting the environment here keeps the parent's untouched. The Lua table is only
         * read, and this process is a fresh single-threaded copy. */
        if (opts) {
            lua_getfield(L, 2, "env");
            if (lua_istable(L, -1)) {
                lua_pushnil(L);
                while (lua_next(L, -2)) {
                    const char *k = lua_tostring(L, -2);
                    if (k && lua_type(L, -2) == LUA_TSTRING) {
                        if (lua_toboolean(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
                            setenv(k, lua_tostring(L, -1), 1);
                        else if (!lua_toboolean(L, -1))
                            unsetenv(k);
                    }
                    lua_pop(L, 1);
                }
            }
        }
        child(argv, out, err, cwd, pipefd[1], parent);
    }
    close(pipefd[1]);
    setpgid(pid, pid); /* also in the parent, so a kill right after spawn reaches the group */
    int code = 0;
    ssize_t n;
    do {
        n = read(pipefd[0], &code, sizeof(code));
    } while (n < 0 && errno == EINTR);
    close(pipefd[0]);
    if (n == (ssize_t)sizeof(code)) {
        int status;
        while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
        }
        lua_pushnil(L);
        lua_pushfstring(L, "cannot run %s: %s", argv[0], strerror(code));
        return 2;
    }
    lua_pushinteger(L, pid);
    return 1;
}

/* kill(pid, sig = "TERM", group = false) -> true | nil, err */
static int l_kill(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int sig = check_signal(L, 2);
    int group = lua_toboolean(L, 3);
    luaL_argcheck(L, pid > 0, 1, "pid must be positive");
    if (kill(group ? -pid : pid, sig) != 0) {
        lua_pushnil(L);
        lua_pushstring(L, strerror(errno));
        return 2;
    }
    lua_pushboolean(L, 1);
    return 1;
}

static int push_status(lua_State *L, int status)
{
    if (WIFEXITED(status)) {
        lua_pushboolean(L, 1);
        lua_pushinteger(L, WEXITSTATUS(status));
    } else {
        lua_pushboolean(L, 0);
        lua_pushinteger(L, WIFSIGNALED(status) ? WTERMSIG(status) : -1);
    }
    return 2;
}

/* wait(pid, timeout = 10) -> true, exit_code | false, signal | nil, "timeout" | nil, err */
static int l_wait(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    double timeout = luaL_optnumber(L, 2, 10);
    double deadline = now_s() + timeout;
    for (;;) {
        int status = 0;
        int r = try_reap(L, pid, &status);
        if (r == 1)
            return push_status(L, status);
        if (r < 0) {
            lua_pushnil(L);
            lua_pushfstring(L, "waitpid %d: %s", (int)pid, strerror(errno));
            return 2;
        }
        double left = deadline - now_s();
        if (left <= 0) {
            lua_pushnil(L);
            lua_pushliteral(L, "timeout");
            return 2;
        }
        sleep_s(left < 0.005 ? left : 0.005);
    }
}

/* alive(pid) -> bool. Reaps our own exited children, so a zombie counts as dead. */
static int l_alive(lua_State *L)
{
    pid_t pid = (pid_t)luaL_checkinteger(L, 1);
    int status;
    int r = try_reap(L, pid, &status);
    if (r == 1) {
        lua_pushboolean(L, 0);
        return 1;
    }
    lua_pushboolean(L, kill(pid, 0) == 0 || errno == EPERM);
    return 1;
}

static int l_now(lua_State *L)
{
    lua_pushnumber(L, now_s());
    return 1;
}

static int l_sleep(lua_State *L)
{
    sleep_s(luaL_checknumber(L, 1));
    return 0;
}

/* rss_kb(pid) -> VmRSS in KiB | nil */
static int l_rss_kb(lua_State *L)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/status", (int)luaL_checkinteger(L, 1));
    FILE *f = fopen(path, "r");
    if (!f) {
        lua_pushnil(L);
        return 1;
    }
    char line[256];
    long kb = -1;
    while (fgets(line, sizeof(line), f))
        if (sscanf(line, "VmRSS: %ld kB", &kb) == 1)
            break;
    fclose(f);
    if (kb < 0)
        lua_pushnil(L);
    else
        lua_pushinteger(L, kb);
    return 1;
}

/* fd_count(pid) -> number of open descriptors | nil */
static int l_fd_count(lua_State *L)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)luaL_checkinteger(L, 1));
    DIR *d = opendir(path);
    if (!d) {
        lua_pushnil(L);
        return 1;
    }
    lua_Integer n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (de->d_name[0] != '.')
            n++;
    closedir(d);
    lua_pushinteger(L, n);
    return 1;
}

/* mkdtemp(prefix = "/tmp/lvspec-") -> path | nil, err */
static int l_mkdtemp(lua_State *L)
{
    const char *prefix = luaL_optstring(L, 1, "/tmp/lvspec-");
    luaL_Buffer b;
    luaL_buffinit(L, &b);
    luaL_addstring(&b, prefix);
    luaL_addstring(&b, "XXXXXX");
    luaL_pushresult(&b);
    char *tmpl = strdup(lua_tostring(L, -1));
    if (!tmpl)
        return luaL_error(L, "lvproc: out of memory");
    if (!mkdtemp(tmpl)) {
        int e = errno;
        free(tmpl);
        lua_pushnil(L);
        lua_pushstring(L, strerror(e));
        return 2;
    }
    lua_pushstring(L, tmpl);
    free(tmpl);
    return 1;
}

/* recv(fd, max, timeout = 0) -> data, status
 * Waits up to timeout seconds (poll, so any descriptor number works) for the socket to become
 * readable, then reads up to max bytes without blocking. status is nil when bytes came,
 * "closed" on EOF, "reset" on ECONNRESET, "timeout" when nothing arrived, else strerror.
 * luasocket reports a reset as "closed"; specs need to tell the two apart. */
static int l_recv(lua_State *L)
{
    int fd = (int)luaL_checkinteger(L, 1);
    lua_Integer max = luaL_checkinteger(L, 2);
    double timeout = luaL_optnumber(L, 3, 0);
    luaL_argcheck(L, max > 0, 2, "max must be positive");
    struct pollfd p = {.fd = fd, .events = POLLIN};
    double deadline = now_s() + timeout;
    for (;;) {
        double left = deadline - now_s();
        int ms = left > 0 ? (int)(left * 1000.0 + 0.999) : 0;
        int r = poll(&p, 1, ms);
        if (r > 0)
            break;
        if (r == 0 || (r < 0 && errno != EINTR) || now_s() >= deadline) {
            lua_pushliteral(L, "");
            lua_pushliteral(L, "timeout");
            return 2;
        }
    }
    luaL_Buffer b;
    char *dst = luaL_buffinitsize(L, &b, (size_t)max);
    ssize_t n;
    do {
        n = recv(fd, dst, (size_t)max, MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    if (n > 0) {
        luaL_pushresultsize(&b, (size_t)n);
        lua_pushnil(L);
        return 2;
    }
    int e = errno;
    luaL_pushresultsize(&b, 0);
    if (n == 0)
        lua_pushliteral(L, "closed");
    else if (e == ECONNRESET)
        lua_pushliteral(L, "reset");
    else if (e == EAGAIN || e == EWOULDBLOCK)
        lua_pushliteral(L, "timeout");
    else
        lua_pushstring(L, strerror(e));
    return 2;
}

static int l_getpid(lua_State *L)
{
    lua_pushinteger(L, getpid());
    return 1;
}

int luaopen_lvproc(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"spawn", l_spawn},   {"kill", l_kill},         {"wait", l_wait},
        {"alive", l_alive},   {"now", l_now},           {"sleep", l_sleep},
        {"rss_kb", l_rss_kb}, {"fd_count", l_fd_count}, {"mkdtemp", l_mkdtemp},
        {"getpid", l_getpid}, {"recv", l_recv},         {NULL, NULL},
    };
    lua_getfield(L, LUA_REGISTRYINDEX, LVP_REAPED);
    if (!lua_istable(L, -1)) {
        lua_newtable(L);
        lua_setfield(L, LUA_REGISTRYINDEX, LVP_REAPED);
    }
    lua_pop(L, 1);
    luaL_newlib(L, fns);
    return 1;
}
