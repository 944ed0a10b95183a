/*
 * test_script_load: the limits of a configuration load (README "Reload"). Hostile files —
 * endless loops in Lua, in metamethods, in finalizers and message handlers, backtracking
 * patterns, allocation bombs, C functions that loop inside one call — are refused by
 * lv_config_load within a few seconds with a message that names the limit; a loader stuck in a
 * system call is abandoned; the guards of loading leave hooks alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "script/config.h"
#include "script/hooks.h"
#include "t.h"
#include "tmpconf.h"

static char tmpdir[64];

static const char *valid_return =
    "return { upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
    "  routes = { { name = 'r', upstream = 'api' } } }\n";

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *write_file(const char *name, const char *text)
{
    static char path[256];
    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    if (!f) {
        perror(path);
        exit(2);
    }
    fputs(text, f);
    fclose(f);
    return path;
}

/* Loads `text` (followed by a valid return when `tail`); returns the config or NULL, the
 * errors in *errs and the time it took in *took. */
static struct lv_config *load_text(const char *text, bool tail, struct lv_buf *errs, double *took)
{
    struct lv_buf src = LV_BUF_INIT;
    lv_buf_puts(&src, text);
    if (tail)
        lv_buf_puts(&src, valid_return);
    *lv_buf_reserve(&src, 1) = '\0';
    const char *path = write_file("levee.lua", src.data);
    lv_buf_dispose(&src);
    lv_buf_reset(errs);
    double t0 = now();
    struct lv_config *c = lv_config_load(path, NULL, errs);
    *took = now() - t0;
    *lv_buf_reserve(errs, 1) = '\0';
    return c;
}

static bool has(const struct lv_buf *b, const char *needle)
{
    return b->data && strstr(b->data, needle) != NULL;
}

/* Each case: the top of the file, and what the one error must contain. */
static const struct {
    const char *what, *code, *error;
} hostile[] = {
    {"finalizer", "setmetatable({}, { __gc = function() while true do end end })\n",
     "levee.lua:1: setmetatable: __gc metamethods are not allowed in the configuration"},
    {"finalizer set later", "local mt = { __gc = true }\nsetmetatable({}, mt)\n",
     "levee.lua:2: setmetatable: __gc metamethods are not allowed"},
    {"backtracking find",
     "string.find(string.rep('a', 40), string.rep('a?', 40) .. string.rep('a', 40))\n",
     "levee.lua:1: string.find: pattern too costly for a 40-byte subject"},
    {"backtracking match as a method",
     "local s = ('a'):rep(30)\nlocal x = s:match(('a?'):rep(30) .. s)\n",
     "levee.lua:2: string.match: pattern too costly"},
    {"backtracking gsub", "local s = ('a'):rep(30)\ns:gsub(('a?'):rep(30) .. s, '')\n",
     "levee.lua:2: string.gsub: pattern too costly"},
    {"backtracking gmatch",
     "local s = ('a'):rep(30)\nfor _ in s:gmatch(('a?'):rep(30) .. s) do end\n",
     "levee.lua:2: string.gmatch: pattern too costly"},
    {"endless loop", "while true do end\n", "levee.lua:1: the configuration ran too long"},
    {"endless loop behind pcall", "while true do pcall(function() while true do end end) end\n",
     "levee.lua:1: the configuration ran too long"},
    {"caught once", "pcall(function() while true do end end)\n",
     ": the configuration ran too long"},
    {"xpcall handler",
     "xpcall(function() while true do end end, function() while true do end end)\n",
     "levee.lua:1: the configuration ran too long"},
    {"__close handler",
     "pcall(function()\n  local x <close> = setmetatable({}, { __close = function() while true do "
     "end end })\n  error('x')\nend)\n",
     ": the configuration ran too long"},
    {"__index loop in the file",
     "local t = setmetatable({}, { __index = function(t, k) return t[k + 1] end })\nlocal x = "
     "t[1]\n",
     "levee.lua:1: "},
    {"allocation bomb",
     "local t, i = {}, 0\nwhile true do i = i + 1; t[i] = ('x'):rep(100000) .. i end\n",
     "levee.lua:1: the configuration used more than 64 MiB of Lua memory while loading"},
    {"one huge string", "local s = ('x'):rep(1e9)\n",
     "levee.lua:1: the configuration used more than 64 MiB of Lua memory while loading"},
    {"empty rep", "local s = string.rep('', 1e15)\n",
     "levee.lua:1: string.rep: too many repetitions of an empty string"},
    {"empty rep with empty separator", "local s = (''):rep(1e15, '')\n",
     "levee.lua:1: string.rep: too many repetitions"},
    {"table.move", "table.move({}, 1, 1e15, 2)\n", "levee.lua:1: table.move: too many elements"},
    {"table.remove with a lying __len",
     "table.remove(setmetatable({}, { __len = function() return math.maxinteger end }), 1)\n",
     "levee.lua:1: table functions cannot take a table with a __len metamethod"},
    {"table.sort with a lying __len",
     "table.sort(setmetatable({}, { __len = function() return 1 << 30 end, __index = type }))\n",
     "levee.lua:1: table functions cannot take a table with a __len metamethod"},
};

T_TEST(test_hostile_files)
{
    struct lv_buf errs = LV_BUF_INIT;
    for (size_t i = 0; i < sizeof(hostile) / sizeof(hostile[0]); i++) {
        double took;
        struct lv_config *c = load_text(hostile[i].code, true, &errs, &took);
        T_CHECK(c == NULL);
        if (c)
            lv_config_unpin(c);
        bool ok = has(&errs, hostile[i].error);
        T_CHECK(ok);
        T_CHECK(took < LV_CONFIG_LOAD_SECONDS + 1.5);
        fprintf(stderr, "  %-34s %.2fs  %s", hostile[i].what, took, errs.data ? errs.data : "\n");
    }
    lv_buf_dispose(&errs);
}

/* Metatables never reach validation: the table returned is searched raw first. */
T_TEST(test_metatables_refused)
{
    struct lv_buf errs = LV_BUF_INIT;
    double took;
    const char *endless =
        "return { upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
        "  routes = { { name = 'r', upstream = 'api',\n"
        "    match = { methods = setmetatable({}, { __index = function() return 'GET' end }) },\n"
        "  } } }\n";
    T_CHECK(load_text(endless, false, &errs, &took) == NULL);
    T_CHECK(has(&errs, "levee.lua:3: routes[1].match.methods: tables with metatables are not "
                       "allowed in the configuration"));
    T_CHECK(took < 1.0);
    /* also hidden behind __metatable, on the returned table itself, and used as a key */
    const char *hidden = "local mt = { __metatable = false, __pairs = function() while true do "
                         "end end }\n"
                         "return setmetatable({}, mt)\n";
    T_CHECK(load_text(hidden, false, &errs, &took) == NULL);
    T_CHECK(has(&errs, "levee.lua:2: tables with metatables are not allowed"));
    const char *key = "local k = setmetatable({}, { __tostring = function() while true do end "
                      "end })\n"
                      "return { upstreams = { [k] = 1 }, routes = {} }\n";
    T_CHECK(load_text(key, false, &errs, &took) == NULL);
    T_CHECK(has(&errs, "upstreams: tables with metatables are not allowed"));
    T_CHECK(took < 1.0);
    /* tables with metatables elsewhere (not returned) are fine, and so are hooks' upvalues */
    const char *fine = "local cache = setmetatable({}, { __mode = 'k' })\n"
                       "return { upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
                       "  routes = { { name = 'r', upstream = 'api',\n"
                       "    classify = function(a) cache[a] = true return nil end } } }\n";
    struct lv_config *c = load_text(fine, false, &errs, &took);
    T_CHECK(c != NULL);
    if (!c)
        fprintf(stderr, "%s", errs.data);
    lv_config_unpin(c);
    lv_buf_dispose(&errs);
}

/* The guards of loading do not refuse ordinary string and table work. */
T_TEST(test_ordinary_code_loads)
{
    struct lv_buf errs = LV_BUF_INIT;
    double took;
    const char *code =
        "local words = {}\n"
        "for w in ('a b  c'):gmatch('%S+') do words[#words + 1] = w end\n"
        "assert(#words == 3 and table.concat(words, ',') == 'a,b,c')\n"
        "assert(('x-y-z'):gsub('-', '+') == 'x+y+z')\n"
        "assert(('hello world'):find('o w', 1, true) == 5)\n"
        "assert(('key=value'):match('^(%w+)=(%w+)$') == 'key')\n"
        "assert(('abc'):find('b', -2) == 2 and ('abc'):find('a', 10) == nil)\n"
        "local big = ('line of text\\n'):rep(200000)\n"
        "local n = select(2, big:gsub('\\n', '\\n'))\n"
        "assert(n == 200000)\n"
        "assert(big:find('text\\nline', 1, true) == 9)\n"
        "assert(big:match('^(%a+)') == 'line')\n"
        "assert(string.rep('', 10) == '' and string.rep('ab', 3, ',') == 'ab,ab,ab')\n"
        "local t = {} for i = 1, 1000 do t[i] = 1001 - i end table.sort(t)\n"
        "table.insert(t, 1, 0) assert(table.remove(t, 1) == 0)\n"
        "assert(table.unpack(table.move({ 1, 2, 3 }, 1, 3, 2), 2, 2) == 1)\n";
    struct lv_config *c = load_text(code, true, &errs, &took);
    T_CHECK(c != NULL);
    if (!c)
        fprintf(stderr, "%s", errs.data);
    lv_config_unpin(c);
    /* a file that catches the memory error and lets go of what it held is not refused */
    c = load_text("local t = {}\n"
                  "pcall(function() while true do t[#t + 1] = ('y'):rep(1e5) .. #t end end)\n"
                  "t = nil\n",
                  true, &errs, &took);
    T_CHECK(c != NULL);
    if (!c)
        fprintf(stderr, "%s", errs.data);
    lv_config_unpin(c);
    lv_buf_dispose(&errs);
}

/* Hooks run with the normal string library: the pattern guard is for loading only. */
T_TEST(test_hooks_keep_patterns)
{
    struct lv_buf errs = LV_BUF_INIT;
    double took;
    /* about 2^18 * 36 steps at worst: refused while loading, fine in a hook */
    const char *costly = "local s = ('a'):rep(18)\n"
                         "local p = ('a?'):rep(18) .. s\n";
    struct lv_buf text = LV_BUF_INIT;
    lv_buf_puts(&text, costly);
    lv_buf_puts(&text, "assert(s:find(p))\n");
    *lv_buf_reserve(&text, 1) = '\0';
    T_CHECK(load_text(text.data, true, &errs, &took) == NULL);
    T_CHECK(has(&errs, "levee.lua:3: string.find: pattern too costly"));
    lv_buf_reset(&text);
    lv_buf_puts(&text, costly);
    lv_buf_puts(&text,
                "return { upstreams = { api = { servers = { '127.0.0.1:9000' } } },\n"
                "  routes = { { name = 'r', upstream = 'api',\n"
                "    classify = function(a) if s:find(p) then return 'fail' end end } } }\n");
    *lv_buf_reserve(&text, 1) = '\0';
    struct lv_config *c = load_text(text.data, false, &errs, &took);
    T_CHECK(c != NULL);
    if (c) {
        struct lv_hook_attempt a = {
            .status = 200, .number = 1, .route = "r", .method = "GET", .path = "/", .path_len = 1};
        struct lv_buf herr = LV_BUF_INIT;
        uint64_t delay = 0;
        bool has_delay = false;
        T_CHECK_INT(lv_hook_classify(c, c->routes[0].classify_ref, &a, &delay, &has_delay, &herr),
                    LV_VERDICT_FAIL);
        /* the empty-rep guard is always on */
        lv_buf_dispose(&herr);
        lv_config_unpin(c);
    }
    lv_buf_dispose(&text);
    lv_buf_dispose(&errs);
}

static int notified;
static void on_done(void *arg)
{
    (void)arg;
    __atomic_add_fetch(&notified, 1, __ATOMIC_SEQ_CST);
}

static void *run_job(void *job)
{
    lv_config_job_run(job);
    return NULL;
}

#include <pthread.h>

/* A loader stuck in a system call (a module that is a FIFO nobody writes) is abandoned; when
 * it ends after all, its result is dropped. A job that finishes notifies once. */
T_TEST(test_stuck_loader)
{
    char fifo[128];
    snprintf(fifo, sizeof(fifo), "%s/stuck.lua", tmpdir);
    T_CHECK(mkfifo(fifo, 0600) == 0);
    struct lv_buf errs = LV_BUF_INIT;
    double took;
    /* On a busy machine an earlier load may have been abandoned too: let it end first. */
    double t0 = now();
    while (lv_config_loaders_abandoned() != 0 && now() - t0 < 10)
        usleep(10000);
    unsigned before = lv_config_loaders_abandoned();
    T_CHECK_INT(before, 0);
    T_CHECK(load_text("require 'stuck'\n", true, &errs, &took) == NULL);
    T_CHECK(has(&errs, "levee.lua:1: the configuration ran too long (its loader did not finish"));
    T_CHECK(took >= LV_CONFIG_LOAD_WAIT_MS / 1000.0 - 0.1 &&
            took < LV_CONFIG_LOAD_WAIT_MS / 1000.0 + 1);
    T_CHECK_INT(lv_config_loaders_abandoned(), before + 1);
    /* unblock it: it reads an empty module, finishes, and drops what it made */
    int fd = open(fifo, O_WRONLY);
    T_CHECK(fd >= 0);
    if (fd >= 0)
        close(fd);
    t0 = now();
    while (lv_config_loaders_abandoned() != before && now() - t0 < 10)
        usleep(10000);
    T_CHECK_INT(lv_config_loaders_abandoned(), before);

    /* the job API with a notification, as the server uses it */
    const char *path = write_file("job.lua", valid_return);
    struct lv_config_job *j = lv_config_job_new(path, NULL, on_done, NULL);
    pthread_t t;
    T_CHECK(pthread_create(&t, NULL, run_job, j) == 0);
    T_CHECK(lv_config_job_wait(j, 5000));
    T_CHECK(lv_config_job_done(j));
    pthread_join(t, NULL);
    T_CHECK_INT(notified, 1);
    lv_buf_reset(&errs);
    struct lv_config *c = lv_config_job_finish(j, &errs);
    T_CHECK(c != NULL && errs.len == 0);
    lv_config_unpin(c);
    unlink(fifo);
    lv_buf_dispose(&errs);
}

/* Failed and successful loads give every Lua state back. */
T_TEST(test_states_freed)
{
    size_t bytes0;
    unsigned states0;
    lv_config_lua_stats(&bytes0, &states0);
    struct lv_buf errs = LV_BUF_INIT;
    double took;
    for (int i = 0; i < 3; i++) {
        T_CHECK(load_text("local s = ('x'):rep(1e9)\n", true, &errs, &took) == NULL);
        T_CHECK(load_text("setmetatable({}, { __gc = function() end })\n", true, &errs, &took) ==
                NULL);
        struct lv_config *c = load_text("", true, &errs, &took);
        T_CHECK(c != NULL);
        lv_config_unpin(c);
    }
    size_t bytes1;
    unsigned states1;
    lv_config_lua_stats(&bytes1, &states1);
    T_CHECK_INT(states1, states0);
    T_CHECK_INT(bytes1, bytes0);
    lv_buf_dispose(&errs);
}

int main(void)
{
    tmpconf_dir(tmpdir, sizeof(tmpdir), "load");
    T_RUN(test_hostile_files);
    T_RUN(test_metatables_refused);
    T_RUN(test_ordinary_code_loads);
    T_RUN(test_hooks_keep_patterns);
    T_RUN(test_stuck_loader);
    T_RUN(test_states_freed);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        fprintf(stderr, "could not remove %s\n", tmpdir);
    T_DONE();
}
