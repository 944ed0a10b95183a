-- levee.schema: every configuration key, once. levee.config takes from it the keys a table
-- may hold (unknown-key errors), each key's type, range and default; scripts/config-docs.lua
-- writes docs/configuration.md from it. Rules between keys (one value below another, routes
-- naming upstreams) stay in levee.config.
--
-- A row: { key, type, doc, ... }.
--   key      full path: "limits.body_size", "routes[].retry.attempts", "upstreams.<name>.pool",
--            "upstreams.<name>.servers[]" ("[]" is an entry of a list, "<name>" a key of a map)
--   type     size | duration | integer | number | string | boolean | enum | hostport | methods
--            | file | function | table (a table of named keys) | list | map; anything else is
--            read by a function of levee.config named after the key (listen, access_log, ...)
--   default  the value used when the key is absent, written as in a configuration file
--   default_ref  the default is the value of that key instead
--   min, max, gt  range (sizes and durations written with their unit); min_ref, max_ref:
--            the bound is the value of that key (a default is then kept within the bounds)
--   choices  the values of an enum
--   pattern, maxlen, what  a string's Lua pattern, longest length and description
--   required the key must be given
--   lower    a string is stored in lower case
--   out      the field of the normalized table (core/script/config.h) when it is not the key's
--            last part ("_ms" appended for a duration)
--   flat     for a table: its keys go into the enclosing normalized table, with this prefix
--   type_doc, range_doc, default_doc  what the docs say instead of what they would derive
--
-- Rows are in the order the docs read; the keys of one table keep that order in messages
-- ("expected one of: ...").

local M = {}

-- Names of routes and upstreams.
M.NAME_PATTERN = "^[%w_%.:%-]+$"
M.NAME_MAXLEN = 64
M.NAME_WHAT = 'a name of letters, digits, "_", "-", ".", ":" (at most 64)'
local TOKEN_PATTERN = "^[%w!#%$%%&'%*%+%-%.%^_`|~]+$"
local HOST_PATTERN = "^[%w%.%-_]+$"

M.intro = [[
A configuration is a Lua file that returns one table. `levee check FILE` validates it:
every error is printed as `FILE:LINE: key.path: message`, all of them at once, for example

```
levee.lua:14: routes[1].retry.attempts: expected integer >= 1, got "three"
levee.lua:19: routes[2].retyr: unknown key (did you mean "retry"?)
levee.lua:21: routes[3].upstream: no upstream named "apx" (did you mean "api"?)
```

**Values.**

- **Durations** are strings made of a number and a unit (`ms`, `s`, `m`, `h`): `"250ms"`, `"2s"`, `"1.5s"`, `"5m"`, `"24h"`, `"1h30m"`. A plain number is a number of seconds (`0.25` is 250 ms). They are rounded to whole milliseconds.
- **Sizes** are a number and a binary unit (`B`, `KiB`, `MiB`, `GiB`): `"512B"`, `"64KiB"`, `"16MiB"`. A plain number is a number of bytes. `"16MB"` is rejected, so it is never unclear whether 1000 or 1024 is meant.
- **Addresses** (`host:port`) are a name, an IPv4 address or a bracketed IPv6 address (`"[::1]:8080"`), a colon and a port between 1 and 65535.
- **Relative file paths** (TLS `cert`, `key`, `ca` and an `access_log` or `error_log` file) are resolved against the folder of the configuration file. TLS files must exist and be readable when the file is loaded.
- **Names** of routes and upstreams contain letters, digits and `_ - . :`, at most 64 characters.

**Where the file runs.** The file runs in a sandbox, as text only (bytecode is refused). It can use `string`, `table`, `math` and `utf8`, plus `pairs`, `ipairs`, `type`, `tostring`, `tonumber`, `select`, `error`, `assert`, `pcall`, `xpcall`, `setmetatable`, `getmetatable`, `next`, the `raw*` functions, `os.getenv`, `os.time` and `os.clock`. There is no `io`, no `load`/`dofile`, no `debug` and no `print`.

**Modules.** `require "name"` loads `name.lua` or `name/init.lua`, from the configuration file's folder first and then from levee's `lua/` folder. Dots in the name are folder separators. Each module is loaded once. With `watch = true`, every module loaded this way is also watched.

**Time limit.** A file that runs more than about 2×10⁸ Lua instructions fails with "the configuration ran too long".

**Reading the tables below.** A key is written as its full path: `routes[]` is any entry of
the `routes` list, `upstreams.<name>` any upstream. A range such as `1KiB – 1MiB` includes
both ends; a bound written as a key (`≤ limits.header_size`) is that key's value.]]

M.sections = {
    {
        title = "Top level",
        rows = {
            { key = "listen", type = "listen", type_doc = "host:port, `{ addr =, tls = }`, or a list of these",
                default = { "127.0.0.1:8080" },
                doc = "Client listeners. Listing the same address twice is an error." },
            { key = "listen[]", type = "listen_entry", type_doc = "host:port or table",
                doc = "One listener: its address, or `{ addr = ADDRESS, tls = { cert = FILE, key = FILE } }`." },
            { key = "listen[].addr", type = "hostport", required = true,
                doc = "Address to listen on." },
            { key = "listen[].tls", type = "table", flat = "tls_", default_doc = "plain HTTP",
                doc = "Serve HTTPS on this listener." },
            { key = "listen[].tls.cert", type = "file", required = true,
                doc = "Certificate chain (PEM)." },
            { key = "listen[].tls.key", type = "file", required = true,
                doc = "Private key (PEM); it must match `cert`." },
            { key = "admin", type = "admin", type_doc = "host:port or `false`", default_doc = "off",
                doc = "Admin API listener (`/metrics`, `/status`, `/healthz`, `POST /reload`, `/`). "
                    .. "It must differ from every `listen` address." },
            { key = "limits", type = "table", default_doc = "see [limits](#limits)",
                doc = "Limits on what clients send." },
            { key = "access_log", type = "access_log",
                type_doc = '`"stdout"`, `"stderr"`, a file path, or `false`', default = "stdout",
                doc = "One JSON line per request. `false` turns the log off." },
            { key = "access_log_format", type = "enum", choices = { "json", "console" }, default = "json",
                doc = "`json`: one JSON object a line (README \"Access log\"). `console`: one readable "
                    .. "line a request (time, method, path, status, duration, each attempt, flags; "
                    .. "see [levee dev](#levee-dev)), in colour when the log is `stdout` on a "
                    .. "terminal and `NO_COLOR` is not set. `levee dev` uses `console` unless `--json`." },
            { key = "error_log", type = "error_log", type_doc = '`"stderr"` or a file path',
                default = "stderr",
                doc = "Where levee's own log lines go. A file is opened again on SIGUSR1 "
                    .. "(README \"Operations\"); one that cannot be opened refuses the reload." },
            { key = "watch", type = "boolean", default = false,
                doc = "Reload when the file, or a module it required, changes." },
            { key = "drain_timeout", type = "duration", min = 0, default = "10s",
                doc = "On SIGTERM/SIGINT, how long requests in flight may take to finish." },
            { key = "workers", type = "workers", type_doc = '`"auto"` or an integer', range_doc = "1 – 256",
                default = 1, default_doc = "1",
                doc = 'Worker threads, each with its own event loop and upstream pools; `"auto"`: one '
                    .. "per CPU levee may run on. Breakers, budgets, idempotency keys and health stay "
                    .. "global (README \"Workers\"). Read at start: a reload keeps the number running." },
            { key = "trusted_proxies", type = "cidrs", type_doc = "list of CIDR", default = {},
                default_doc = "none",
                doc = "Proxies in front of levee (`\"10.0.0.0/8\"`, `\"::1\"`). A rate limit keyed by "
                    .. "`client_ip` uses the first address of X-Forwarded-For, from the right, that is "
                    .. "not one of these, when the peer is one (README \"Admission control\")." },
            { key = "accept", type = "enum", choices = { "shared", "reuseport" }, default = "shared",
                doc = "How workers share a listening port: `shared`, one socket every worker accepts "
                    .. "from (the least busy worker takes the connection); `reuseport`, a socket per "
                    .. "worker with SO_REUSEPORT (the kernel spreads connections by address hash; a "
                    .. "few connections may leave a worker idle). README \"Workers\" has the numbers." },
            { key = "tracing", type = "tracing", type_doc = "table or `false`",
                default_doc = "trace context on, no export",
                doc = "W3C trace context and OpenTelemetry export; see [tracing](#tracing) and the "
                    .. "README, \"Tracing\". `false` turns trace context off: `traceparent` then "
                    .. "passes through untouched and the access log has no trace ids." },
            { key = "upstreams", type = "map", type_doc = "table of name → upstream",
                doc = "The backends, keyed by name; see [upstreams](#upstreams)." },
            { key = "routes", type = "routes", type_doc = "list of routes, at least one",
                required = true,
                doc = "Tried in order; the first match wins. See [routes](#routes)." },
        },
    },
    {
        title = "limits",
        rows = {
            { key = "limits.header_size", type = "size", min = "1KiB", max = "1MiB", default = "32KiB",
                doc = "The whole request head, request line included. A larger head gets 431." },
            { key = "limits.request_line", type = "size", min = "256B", max_ref = "limits.header_size",
                default = "8KiB", default_doc = '`"8KiB"`, at most `header_size`',
                doc = "A longer request line gets 414." },
            { key = "limits.header_count", type = "integer", min = 1, max = 10000, default = 100,
                doc = "More header fields get 431." },
            { key = "limits.body_size", type = "size", default = "16MiB",
                doc = "A larger request body gets 413." },
            { key = "limits.header_timeout", type = "duration", gt = 0, default = "10s",
                doc = "A request head not complete within this time gets 408." },
            { key = "limits.idle_timeout", type = "duration", gt = 0, default = "60s",
                doc = "Idle keep-alive client connections are closed after this time." },
            { key = "limits.send_timeout", type = "duration", gt = 0, default = "60s",
                doc = "A client that reads nothing for this long is closed." },
            { key = "limits.max_connections", type = "integer", min = 1, default = 10000,
                doc = "Maximum number of client connections open at once." },
            { key = "limits.body_timeout", type = "duration", gt = 0, default = "10s",
                doc = "The buffered part of a request body (see `routes[].request_buffer`) must "
                    .. "arrive within this time, counted from the end of the head; else 408. It is "
                    .. "also the window of `body_rate`." },
            { key = "limits.body_rate", type = "size", max = "1GiB", default = "1KiB",
                type_doc = "size (bytes per second)",
                doc = "A body that streams must bring at least this many bytes per second over each "
                    .. "`body_timeout` window (at least one byte when 0); else 408, or a broken "
                    .. "response if the upstream already answered. A window in which levee itself "
                    .. "held the client back (upstream slow to read, no connection yet) is not judged." },
        },
    },
    {
        title = "upstreams",
        intro = "`upstreams = { NAME = { ... }, ... }`. A route refers to an upstream by its NAME.",
        rows = {
            { key = "upstreams.<name>", type = "upstream", type_doc = "table",
                doc = "One upstream; its key is its name." },
            { key = "upstreams.<name>.servers", type = "servers", required = true,
                type_doc = "list of host:port, at least one",
                doc = "The servers. Names are re-resolved every `pool.max_lifetime`." },
            { key = "upstreams.<name>.servers[]", type = "hostport", doc = "One server." },
            { key = "upstreams.<name>.balance", type = "enum",
                choices = { "round_robin", "least_request" }, default = "round_robin",
                doc = "How a server is picked. `least_request` uses power of two choices." },
            { key = "upstreams.<name>.connect_timeout", type = "duration", gt = 0, default = "1s",
                doc = "Time allowed for the TCP connect to a server, all its addresses raced "
                    .. "together (README, \"Happy Eyeballs\"); the TLS handshake then gets as long again." },
            { key = "upstreams.<name>.pool", type = "table",
                default_doc = "see [pool](#upstreamsnamepool)",
                doc = "The keep-alive connection pool, per server." },
            { key = "upstreams.<name>.tls", type = "tls", type_doc = "`true`, `false`, or a table",
                default = false, flat = "tls_",
                doc = "Use TLS to the servers. `true` means `{}`." },
            { key = "upstreams.<name>.health", type = "health", type_doc = "table, `true` or `false`",
                default_doc = "off",
                doc = "Active health checks, see [health](#upstreamsnamehealth). `true` means `{}`." },
            { key = "upstreams.<name>.outlier", type = "outlier", type_doc = "table, `true` or `false`",
                default_doc = "on",
                doc = "Passive outlier ejection from live traffic, see [outlier](#upstreamsnameoutlier). "
                    .. "`false` turns it off." },
            { key = "upstreams.<name>.slow_start", type = "duration", max = "1h", default = 0,
                default_doc = "`0` (off)",
                doc = "A server coming back (after an ejection or failed checks) takes a share of "
                    .. "traffic that grows linearly from 10% to 100% over this time." },
        },
    },
    {
        title = "upstreams.<name>.pool",
        rows = {
            { key = "upstreams.<name>.pool.max_idle", type = "integer", min = 0, default = 64,
                doc = "Idle keep-alive connections kept per server." },
            { key = "upstreams.<name>.pool.idle_timeout", type = "duration", gt = 0, default = "60s",
                doc = "An idle pooled connection is closed after this time." },
            { key = "upstreams.<name>.pool.max_lifetime", type = "duration", gt = 0, default = "10m",
                doc = "A connection is not reused after this age. This is also the DNS re-resolve period." },
            { key = "upstreams.<name>.pool.max_connections", type = "integer", min = 1, default = 1024,
                doc = "Connections in use per server (connecting or busy); idle pooled connections "
                    .. "come on top, up to `max_idle`. A connect under way counts once, however many "
                    .. "of the server's addresses it races." },
            { key = "upstreams.<name>.pool.queue_size", type = "integer", min = 0, default = 1024,
                doc = "Requests that may wait for a connection, per upstream. When the queue is "
                    .. "full: 503 `pool-overflow`." },
            { key = "upstreams.<name>.pool.queue_timeout", type = "duration", min = 0,
                default_ref = "upstreams.<name>.connect_timeout",
                doc = "Longest wait in the queue. After that: 503 `pool-overflow`." },
        },
    },
    {
        title = "upstreams.<name>.tls",
        rows = {
            { key = "upstreams.<name>.tls.sni", type = "string", pattern = HOST_PATTERN,
                what = "a host name", default_doc = "the server's host",
                doc = "SNI name, and the name the certificate is checked against." },
            { key = "upstreams.<name>.tls.verify", type = "boolean", default = true,
                doc = "Verify the server certificate." },
            { key = "upstreams.<name>.tls.ca", type = "file", default_doc = "the system store",
                doc = "CA bundle used to verify the certificate." },
        },
    },
    {
        title = "upstreams.<name>.health",
        intro = "An HTTP `GET` per server every `interval`, on a connection of its own (TLS when "
            .. "the upstream uses TLS). Checks are spread over the interval, not sent in "
            .. "lockstep, and are not client requests: they count in no request metric or budget.",
        rows = {
            { key = "upstreams.<name>.health.path", type = "string", default = "/",
                pattern = "^/[%w%-%._~!$&'()*+,;=:@/%%?]*$", maxlen = 1024,
                what = "a path starting with /", doc = "What the check asks for." },
            { key = "upstreams.<name>.health.interval", type = "duration", min = "10ms", default = "2s",
                doc = "Time between two checks of one server." },
            { key = "upstreams.<name>.health.timeout", type = "duration", min = "1ms",
                max_ref = "upstreams.<name>.health.interval", default = "1s",
                default_doc = '`"1s"`, at most `interval`',
                doc = "Connect, TLS and the response head must fit in it; else the check failed (`timeout`)." },
            { key = "upstreams.<name>.health.healthy", type = "integer", min = 1, max = 1000, default = 2,
                doc = "Consecutive passed checks that bring a `down` server back." },
            { key = "upstreams.<name>.health.unhealthy", type = "integer", min = 1, max = 1000,
                default = 3, doc = "Consecutive failed checks that take a server `down`." },
            { key = "upstreams.<name>.health.expect", type = "statuses",
                type_doc = 'list of status codes (`200`, `"204"`) or classes (`"2xx"`)',
                default = { "2xx", "3xx" },
                doc = "Statuses that pass. Anything else, a timeout or a connect error fails." },
            { key = "upstreams.<name>.health.host", type = "string", pattern = "^[%w%.%-_]+(:?%d*)$",
                maxlen = 255, what = "a host name (with an optional :port)",
                default_doc = "the server's `host:port`", doc = "`Host` header of the check." },
        },
    },
    {
        title = "upstreams.<name>.outlier",
        rows = {
            { key = "upstreams.<name>.outlier.consecutive_failures", type = "integer", min = 1,
                max = 1000000, default = 5,
                doc = "Failures of live traffic in a row (connect-failure, reset, timeout, "
                    .. "protocol-error, 5xx; a success resets the count) that eject a server." },
            { key = "upstreams.<name>.outlier.eject_for", type = "duration", gt = 0, default = "10s",
                doc = "First ejection time; each new ejection of the same server doubles it." },
            { key = "upstreams.<name>.outlier.max_eject_for", type = "duration",
                min_ref = "upstreams.<name>.outlier.eject_for", default = "5m",
                default_doc = '`"5m"`, at least `eject_for`', doc = "Cap of the doubling." },
            { key = "upstreams.<name>.outlier.max_ejected", type = "number", min = 0, max = 1,
                default = 0.5,
                doc = "Share of the upstream's servers that may be ejected at once (rounded down); "
                    .. "one server always stays in." },
            { key = "upstreams.<name>.outlier.enforce", type = "boolean", default = true,
                doc = "`false`: detect, log and count ejections "
                    .. "(`levee_upstream_ejections_total{enforced=\"false\"}`) without changing traffic." },
        },
    },
    {
        title = "routes",
        intro = "`routes = { { ... }, { ... } }`. The routes are tried in order.",
        rows = {
            { key = "routes[]", type = "route", type_doc = "table", doc = "One route." },
            { key = "routes[].name", type = "string", required = true, pattern = M.NAME_PATTERN,
                maxlen = M.NAME_MAXLEN, what = M.NAME_WHAT, type_doc = "name, unique",
                doc = "The route's stable identity. Breaker, budget and idempotency state survive "
                    .. "a reload for a route whose name is unchanged." },
            { key = "routes[].match", type = "table", flat = "match_", default_doc = "match everything",
                doc = "Which requests the route takes; see [match](#routesmatch)." },
            { key = "routes[].upstream", type = "string", required = true,
                what = "the name of an upstream", type_doc = "upstream name",
                doc = "Must be a key of `upstreams`." },
            { key = "routes[].timeout", type = "duration", gt = 0, default = "15s",
                doc = "Deadline for the whole request, with every attempt and backoff included. It "
                    .. "starts with the first attempt: receiving a buffered body is bounded by "
                    .. "`limits.body_timeout` instead." },
            { key = "routes[].try_timeout", type = "duration", gt = 0, default_ref = "routes[].timeout",
                range_doc = "> 0, ≤ `timeout`", doc = "One attempt, until the response head arrives." },
            { key = "routes[].retry", type = "table", default_doc = "see [retry](#routesretry)",
                doc = "Present even when omitted: 2 attempts on connect-failure and reset." },
            { key = "routes[].breaker", type = "breaker", type_doc = "table, `true` or `false`",
                default_doc = "off", doc = "Circuit breaker. `true` or `{}` turns it on with the defaults." },
            { key = "routes[].idempotency", type = "idempotency", type_doc = "table, `true` or `false`",
                default_doc = "off", doc = "Idempotency keys. `true` or `{}` turns them on with the defaults." },
            { key = "routes[].rate_limit", type = "rate_limit", type_doc = "table or `false`",
                default_doc = "off", doc = "A rate limit per key; see [rate_limit](#routesrate_limit)." },
            { key = "routes[].concurrency", type = "concurrency", type_doc = "table or `false`",
                default_doc = "off",
                doc = "A bulkhead: requests in flight at once, with a queue; see "
                    .. "[concurrency](#routesconcurrency)." },
            { key = "routes[].fault", type = "fault", type_doc = "table or `false`", default_doc = "off",
                doc = "Faults to inject, for testing how clients and policies cope; see "
                    .. "[fault](#routesfault) and the README, \"levee dev\"." },
            { key = "routes[].classify", type = "function", default_doc = "none",
                doc = "`classify(attempt)` returns `\"ok\"`, `\"fail\"` or `\"retry\"`, and optionally a delay." },
            { key = "routes[].fallback", type = "function", default_doc = "none",
                doc = "`fallback(req, why)` gives the response served while the breaker is open." },
            { key = "routes[].request_buffer", type = "request_buffer", type_doc = "size or `false`",
                max = "1GiB", default_ref = "routes[].retry.buffer",
                doc = "Request bodies up to this size are received whole before an upstream "
                    .. "connection is taken (a larger body: this much, then it streams). `false` "
                    .. "takes the connection at once and streams. See the README, \"Request buffering\"." },
            { key = "routes[].upgrade", type = "upgrade", type_doc = "list of protocol tokens",
                default = { "websocket" },
                doc = "Protocols a client may switch to with `Connection: upgrade` and `Upgrade` "
                    .. "(case-insensitive). On `101` the connection becomes a tunnel (README, "
                    .. "\"WebSocket and other upgrades\"). `{}`: `Upgrade` is removed and the "
                    .. "request is an ordinary one." },
            { key = "routes[].tunnel_idle_timeout", type = "duration", gt = 0, max = "24h",
                default = "1h", doc = "A tunnel with no byte either way for this long is closed." },
        },
    },
    {
        title = "routes[].match",
        intro = "All of the keys are optional. A request must satisfy every key that is given.",
        rows = {
            { key = "routes[].match.prefix", type = "string", pattern = "^/[%g]*$",
                what = 'a path prefix starting with "/"', default_doc = "any path",
                doc = "The path starts with this string." },
            { key = "routes[].match.path", type = "string", pattern = "^/[%g]*$",
                what = 'a path starting with "/"', default_doc = "any path",
                doc = "The path is exactly this string." },
            { key = "routes[].match.host", type = "string", pattern = HOST_PATTERN, lower = true,
                what = "a host name without port", default_doc = "any host",
                doc = "The Host header (port ignored) equals this name, compared without case. It "
                    .. "is stored in lower case." },
            { key = "routes[].match.methods", type = "methods", default = {}, default_doc = "any method",
                doc = "The method is one of these, e.g. `{ \"GET\", \"POST\" }`." },
        },
    },
    {
        title = "routes[].retry",
        rows = {
            { key = "routes[].retry.attempts", type = "integer", min = 1, default = 2,
                doc = "Total attempts, the first included." },
            { key = "routes[].retry.on", type = "retry_on", type_doc = "list of outcomes",
                default = { "connect-failure", "reset" },
                doc = "Outcomes that are retried when no `classify` hook is given. See below." },
            { key = "routes[].retry.backoff", type = "table", flat = "backoff_", default_doc = "see below",
                doc = "Delay between two attempts." },
            { key = "routes[].retry.backoff.base", type = "duration", min = 0, default = "25ms",
                doc = "First backoff step." },
            { key = "routes[].retry.backoff.max", type = "duration", min = 0, default = "1s",
                range_doc = "≥ `base`", doc = "Backoff cap." },
            { key = "routes[].retry.backoff.jitter", type = "enum", out = "jitter",
                choices = { "full", "equal", "decorrelated", "none" }, default = "full",
                doc = "Jitter kind." },
            { key = "routes[].retry.budget", type = "table", flat = "budget_", default_doc = "see below",
                doc = "How many retries the route may make, over all its requests." },
            { key = "routes[].retry.budget.ratio", type = "number", min = 0, max = 1, default = 0.2,
                doc = "Retries per request allowed over the window." },
            { key = "routes[].retry.budget.min_per_second", type = "number", min = 0, default = 10,
                doc = "Retries always allowed per second, in addition to the ratio." },
            { key = "routes[].retry.budget.window", type = "duration", gt = 0, default = "10s",
                doc = "Rolling window of the budget." },
            { key = "routes[].retry.non_idempotent", type = "boolean", default = false,
                doc = "Also retry POST, PATCH and similar methods when the request has no idempotency key." },
            { key = "routes[].retry.buffer", type = "size", max = "1GiB", default = "64KiB",
                doc = "Request bodies up to this size are kept for replay. A larger body is "
                    .. "streamed, and the request is not retried once its first byte has been sent." },
        },
        notes = [[
Entries of `retry.on`:

- `"connect-failure"`, `"reset"`, `"timeout"`, `"protocol-error"`;
- `"5xx"` (500–599), `"gateway-error"` (502, 503, 504), `"retriable-4xx"` (409, 425, 429);
- a status code from 100 to 599, written as a string (`"503"`) or an integer (`503`).]],
    },
    {
        title = "routes[].breaker",
        rows = {
            { key = "routes[].breaker.failure_ratio", type = "number", gt = 0, max = 1, default = 0.5,
                doc = "Opens when failures divided by requests in the window reaches this value..." },
            { key = "routes[].breaker.min_requests", type = "integer", min = 1, default = 20,
                doc = "...and the window holds at least this many requests." },
            { key = "routes[].breaker.window", type = "duration", gt = 0, default = "10s",
                doc = "Rolling window." },
            { key = "routes[].breaker.consecutive_failures", type = "integer", min = 0, default = 5,
                doc = "Opens after this many failures in a row. `0` turns this rule off." },
            { key = "routes[].breaker.open_for", type = "duration", gt = 0, default = "5s",
                doc = "Time spent open before going half-open." },
            { key = "routes[].breaker.max_open_for", type = "duration", min = 0,
                default_ref = "routes[].breaker.open_for", range_doc = "≥ `open_for`",
                doc = "Cap on `open_for` when it grows after failed probes. The default means no growth." },
            { key = "routes[].breaker.half_open_requests", type = "integer", min = 1, default = 1,
                doc = "Probes let through while half-open." },
            { key = "routes[].breaker.slow_call", type = "slow_call", type_doc = "table", flat = "",
                default_doc = "off", doc = "Slow calls open the breaker too." },
            { key = "routes[].breaker.slow_call.duration", type = "duration", gt = 0, required = true,
                default = 0, out = "slow_call_ms", default_doc = "— (required inside `slow_call`)",
                doc = "An attempt slower than this counts as slow." },
            { key = "routes[].breaker.slow_call.ratio", type = "number", gt = 0, max = 1, default = 1.0,
                out = "slow_call_ratio",
                doc = "Opens when this share of the calls in the window is slow. Without "
                    .. "`slow_call`, this rule is off." },
        },
    },
    {
        title = "routes[].idempotency",
        rows = {
            { key = "routes[].idempotency.header", type = "string", pattern = TOKEN_PATTERN,
                what = "a header name", default = "Idempotency-Key",
                doc = "Request header that carries the key." },
            { key = "routes[].idempotency.ttl", type = "duration", gt = 0, default = "24h",
                doc = "How long a stored response is kept." },
            { key = "routes[].idempotency.methods", type = "methods", default = { "POST", "PATCH" },
                doc = "Methods the key applies to." },
            { key = "routes[].idempotency.required", type = "boolean", default = false,
                doc = "A request without a key gets 400 `idempotency-key-required`." },
            { key = "routes[].idempotency.store", type = "store", flat = "",
                type_doc = '`"memory"` or `{ redis = ADDRESS, prefix = STRING }`', default = "memory",
                doc = "Where keys live. Redis lets several gateways share them." },
            { key = "routes[].idempotency.store.redis", type = "hostport", required = true,
                doc = "The Redis server." },
            { key = "routes[].idempotency.store.prefix", type = "string", default = "levee:",
                out = "redis_prefix", doc = "Prefix of every Redis key levee writes." },
            { key = "routes[].idempotency.max_body", type = "size", max = "1GiB", default = "1MiB",
                doc = "Largest response body that is stored." },
            { key = "routes[].idempotency.max_memory", type = "size", min = "1B", default = "64MiB",
                range_doc = "≥ `max_body`", doc = "Memory cap of the memory store." },
            { key = "routes[].idempotency.key", type = "function", default_doc = "header value",
                doc = "`key(req)` returns the key to use instead of the header's value." },
            { key = "routes[].idempotency.on_conflict", type = "enum", choices = { "reject", "wait" },
                default = "reject",
                doc = "What happens when the same key arrives while the first request is in "
                    .. "flight: `reject` answers 409; `wait` waits for the first response." },
            { key = "routes[].idempotency.on_store_error", type = "enum",
                choices = { "fail_closed", "fail_open" }, default = "fail_closed",
                doc = "When the store is unreachable: `fail_closed` answers 503; `fail_open` "
                    .. "forwards the request without protection." },
        },
    },
    {
        title = "routes[].rate_limit",
        intro = "GCRA: `rate` requests per `per` on average, and `burst` more at once. Over the "
            .. "limit: 429 `rate-limited` with `Retry-After` (README \"Admission control\").",
        rows = {
            { key = "routes[].rate_limit.rate", type = "integer", min = 1, max = 1000000000, required = true,
                default_doc = "— (required)", doc = "Requests per `per`." },
            { key = "routes[].rate_limit.per", type = "duration", gt = 0, max = "24h", default = "1s",
                doc = "The period of `rate`." },
            { key = "routes[].rate_limit.burst", type = "integer", min = 0, max = 1000000000, default = 0,
                doc = "Requests allowed at once above the steady rate." },
            { key = "routes[].rate_limit.key", type = "rate_key", type_doc = "string or function",
                default = "client_ip", out = "key_kind",
                doc = "`\"client_ip\"` (the peer, or with `trusted_proxies` the client it forwards "
                    .. "for), `\"header:NAME\"` (that header's value; no header: not limited), or "
                    .. "`key(req)`, a hook returning the key (nil: not limited; an error: counted, "
                    .. "not limited)." },
            { key = "routes[].rate_limit.store", type = "rate_store", flat = "",
                type_doc = '`"memory"` or `{ redis = ADDRESS, prefix = STRING }`', default = "memory",
                doc = "Where the per-key state lives. Redis lets several gateways share a limit." },
            { key = "routes[].rate_limit.store.redis", type = "hostport", required = true,
                doc = "The Redis server." },
            { key = "routes[].rate_limit.store.prefix", type = "string", default = "levee:rl:",
                out = "redis_prefix", doc = "Prefix of every Redis key levee writes." },
            { key = "routes[].rate_limit.max_keys", type = "integer", min = 1, max = 100000000,
                default = 100000,
                doc = "Keys the memory store holds (about 100 bytes each). Expired keys are "
                    .. "dropped first; full of live keys, `on_store_error` applies." },
            { key = "routes[].rate_limit.timeout", type = "duration", gt = 0, max = "10s", default = "50ms",
                doc = "Longest wait for Redis per request; past it, `on_store_error` applies." },
            { key = "routes[].rate_limit.on_store_error", type = "enum",
                choices = { "fail_open", "fail_closed" }, default = "fail_open",
                doc = "The store is unavailable (or full): `fail_open` lets the request through, "
                    .. "`fail_closed` answers 503 `rate-limit-store-unavailable`." },
            { key = "routes[].rate_limit.mode", type = "enum", choices = { "enforce", "shadow" },
                default = "enforce",
                doc = "`shadow`: forward everything, and count and flag what would have been refused." },
        },
    },
    {
        title = "routes[].concurrency",
        intro = "A bulkhead: at most `max` requests of the route in flight at once; the next ones "
            .. "wait in a queue (first come, first served) up to `queue_timeout`; beyond the queue, "
            .. "503 `concurrency-limit` with `Retry-After`.",
        rows = {
            { key = "routes[].concurrency.max", type = "concurrency_max", type_doc = 'integer or `"adaptive"`',
                required = true, default_doc = "— (required)",
                doc = '`"adaptive"`: the limit follows the upstream\'s latency, between `min` and '
                    .. "`max_limit` (a gradient limiter, README \"Admission control\")." },
            { key = "routes[].concurrency.queue", type = "integer", min = 0, max = 1000000, default = 0,
                doc = "Requests that may wait for a slot." },
            { key = "routes[].concurrency.queue_timeout", type = "duration", min = 0, max = "1h",
                default = "1s", doc = "Longest wait in the queue; then 503 `concurrency-limit`." },
            { key = "routes[].concurrency.min", type = "integer", min = 1, max = 1000000, default = 1,
                doc = "Adaptive: the lowest limit." },
            { key = "routes[].concurrency.max_limit", type = "integer", min = 1, max = 1000000,
                default = 1000, range_doc = "≥ `min`", doc = "Adaptive: the highest limit." },
            { key = "routes[].concurrency.initial", type = "integer", min = 1, max = 1000000, default = 20,
                doc = "Adaptive: the limit at start (kept across reloads)." },
        },
    },
    {
        title = "routes[].fault",
        intro = "Each kind is off unless its table is given; `percent` is drawn per attempt "
            .. "(`at = \"upstream\"`) or per request (`at = \"client\"`).",
        rows = {
            { key = "routes[].fault.abort", type = "faultkind", type_doc = "table", default_doc = "off",
                doc = "The attempt gets `status` without reaching the upstream." },
            { key = "routes[].fault.abort.status", type = "integer", min = 200, max = 599, required = true,
                default_doc = "— (required)", doc = "Status of the aborted attempt." },
            { key = "routes[].fault.abort.percent", type = "number", min = 0, max = 100, default = 100,
                doc = "Share of attempts aborted." },
            { key = "routes[].fault.delay", type = "faultkind", type_doc = "table", default_doc = "off",
                doc = "The attempt is held this long before it is sent." },
            { key = "routes[].fault.delay.time", type = "duration", gt = 0, max = "1h", required = true,
                default_doc = "— (required)", doc = "How long." },
            { key = "routes[].fault.delay.percent", type = "number", min = 0, max = 100, default = 100,
                doc = "Share of attempts delayed." },
            { key = "routes[].fault.reset", type = "faultkind", type_doc = "table", default_doc = "off",
                doc = "The attempt ends as `reset` without reaching the upstream." },
            { key = "routes[].fault.reset.percent", type = "number", min = 0, max = 100, default = 100,
                doc = "Share of attempts reset." },
            { key = "routes[].fault.throttle", type = "faultkind", type_doc = "table", default_doc = "off",
                doc = "The response body reaches the client at `rate` bytes per second." },
            { key = "routes[].fault.throttle.rate", type = "size", min = "1B", max = "1GiB", required = true,
                default_doc = "— (required)", doc = "Bytes per second." },
            { key = "routes[].fault.throttle.percent", type = "number", min = 0, max = 100, default = 100,
                doc = "Share of requests throttled." },
            { key = "routes[].fault.at", type = "enum", choices = { "upstream", "client" }, default = "upstream",
                doc = "`upstream`: a fault is an attempt's outcome, so classification, retries, the "
                    .. "budget and the breaker act on it as on a real failure. `client`: the client "
                    .. "gets the fault directly (an abort is the answer, a reset closes the "
                    .. "connection, a delay holds the request) and the policy never sees it." },
            { key = "routes[].fault.headers", type = "boolean", default = false,
                doc = "Honour the `Levee-Fault` request header (README, \"levee dev\")." },
        },
    },
    {
        title = "tracing",
        intro = "`tracing = { otlp = \"http://127.0.0.1:4318/v1/traces\", sample = 0.05 }`. Every "
            .. "request continues the trace of its `traceparent` or starts one; each attempt is a "
            .. "child span whose id goes upstream in `traceparent` (README, \"Tracing\").",
        rows = {
            { key = "tracing.otlp", type = "otlp_url", type_doc = "URL", default_doc = "no export",
                doc = "OTLP/HTTP endpoint spans are POSTed to as JSON (`http://` or `https://`; "
                    .. "without a path, `/v1/traces`)." },
            { key = "tracing.ca", type = "file", default_doc = "the system store", out = "tls_ca",
                doc = "CA certificates (PEM) to verify an `https` collector with." },
            { key = "tracing.sample", type = "number", min = 0, max = 1, default = 1,
                doc = "Share of new traces (requests without a valid `traceparent`) that are "
                    .. "sampled. A request with a `traceparent` follows its sampled flag." },
            { key = "tracing.service", type = "string", pattern = "^[%g ]+$", maxlen = 128,
                what = "printable text", default = "levee", doc = "`service.name` of the spans." },
            { key = "tracing.batch", type = "integer", min = 1, max = 10000, default = 512,
                doc = "Spans per export request." },
            { key = "tracing.queue", type = "integer", min = 1, max = 1000000, default = 2048,
                range_doc = "≥ `batch`",
                doc = "Spans waiting for export at most; more are dropped and counted "
                    .. "(`levee_trace_spans_dropped_total`), never waited for." },
            { key = "tracing.flush", type = "duration", gt = 0, max = "1m", default = "1s",
                doc = "Longest a span waits before a partial batch is sent." },
            { key = "tracing.timeout", type = "duration", gt = 0, max = "1m", default = "5s",
                doc = "One export request, connect to answer. A failed one is retried with backoff." },
        },
    },
}

M.outro = [[
## levee dev

`levee dev URL [--listen ADDR] [--admin ADDR|off] [--policy FILE] [--fault SPEC]... [--json]`
(README "levee dev") builds this configuration with no file:

- `URL` may be `http://host:port`, `https://host[:port]`, `host:port`, or a bare port (which means `127.0.0.1:PORT`);
- listen on `ADDR`, by default `127.0.0.1:8080`;
- `admin` on `--admin ADDR`, by default `127.0.0.1:9901`; `--admin off` turns it off;
- one upstream, `app`, for the URL (with TLS for `https`);
- one catch-all route, `dev`, with the default retry policy and a breaker with its defaults;
  the keys of the `--policy` file (a Lua file returning the keys of a `routes[]` entry but
  `name`, `match` and `upstream`) replace its own; its `fault` table holds the policy's
  `fault` table with each `--fault` kind over it (`abort=STATUS`, `delay=DURATION`, `reset`,
  `throttle=SIZE`, each with an optional `:P%`, 100% by default: `abort=503:10%` is
  `abort = { status = 503, percent = 10 }`) and `headers = true` (the `Levee-Fault` request
  header is always on) unless the policy sets `headers`;
- `watch = true` when there is a policy file: saving it (or a module it requires) reloads it;
  a broken save is refused and the policy in force keeps serving;
- access log on stdout, `access_log_format = "console"` (`"json"` with `--json`); the console
  line is in colour when stdout is a terminal and `NO_COLOR` is unset or empty.

Errors of the command line read `levee dev: URL: ...`, `levee dev: --listen: ...`,
`levee dev: --admin: ...`, `levee dev: --fault: ...` (exit 2); errors of the policy file read
`FILE:LINE: key.path: message` with the key paths as the file writes them
(`policy.lua:3: retry.attempts: expected integer >= 1, got 0`; exit 1 at start).]]

------------------------------------------------------------------------------------------
-- Index.

--- The table a key belongs to and its name there: "a.b" -> "a", "b"; "a[]" -> "a", "[]";
-- "a" -> "", "a".
function M.split(key)
    if key:sub(-2) == "[]" then
        return key:sub(1, -3), "[]"
    end
    local parent, name = key:match("^(.*)%.([^.]+)$")
    if parent then
        return parent, name
    end
    return "", key
end

M.rows = {}
local by_key, children = {}, {}
for _, s in ipairs(M.sections) do
    for _, row in ipairs(s.rows) do
        assert(not by_key[row.key], "levee.schema: duplicate key " .. row.key)
        local parent, name = M.split(row.key)
        row.parent, row.name = parent, name
        M.rows[#M.rows + 1] = row
        by_key[row.key] = row
        children[parent] = children[parent] or {}
        children[parent][#children[parent] + 1] = row
    end
end

--- The row of a key ("routes[].retry.attempts"); raises for a key the schema does not have.
function M.row(key)
    local row = by_key[key]
    if not row then
        error("levee.schema: no key " .. tostring(key), 2)
    end
    return row
end

-- Both lists below are built once per key (every table of every load asks) and shared:
-- callers do not change them.
local named_children, allowed = {}, {}

--- The rows directly inside a table, in order ("" is the top level). Entries of a list or map
-- ("[]", "<name>") are left out: they are not keys one writes.
function M.children(key)
    local out = named_children[key]
    if not out then
        out = {}
        for _, row in ipairs(children[key] or {}) do
            if row.name ~= "[]" and row.name ~= "<name>" then
                out[#out + 1] = row
            end
        end
        named_children[key] = out
    end
    return out
end

--- The key names a table may hold, in order.
function M.allowed(key)
    local out = allowed[key]
    if not out then
        out = {}
        for i, row in ipairs(M.children(key)) do
            out[i] = row.name
        end
        allowed[key] = out
    end
    return out
end

return M
