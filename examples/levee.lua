-- levee.lua: an example configuration. Check it with `levee check examples/levee.lua`.
--
-- The file is Lua and returns one table. Durations are strings ("250ms", "2s", "5m", "24h")
-- or numbers of seconds; sizes are strings ("512B", "64KiB", "16MiB") or numbers of bytes.
-- Every key is checked: a typo or a wrong type is reported with its line, and the file is
-- not used until every error is fixed. Omitted keys take the defaults shown in comments.

return {
  -- Client-facing listeners: "host:port", or { addr = "host:port", tls = { cert = ..., key = ... } }.
  listen = { "127.0.0.1:8080" },

  -- Admin API: /metrics, /status, /healthz, POST /reload. Omit it (or false) to turn it off.
  admin = "127.0.0.1:9901",

  -- Limits on what clients send. These are the defaults.
  limits = {
    header_size = "32KiB",     -- whole request head; larger gets 431
    request_line = "8KiB",     -- larger gets 414
    header_count = 100,        -- more header fields get 431
    body_size = "16MiB",       -- larger gets 413
    header_timeout = "10s",    -- head not received in time gets 408
    idle_timeout = "60s",      -- idle keep-alive connections are closed after this
    send_timeout = "60s",      -- a client that reads nothing this long is closed
    max_connections = 10000,
  },

  access_log = "stdout",       -- "stdout", "stderr", a file path (relative to this file), or false
  watch = false,               -- true: reload when this file or a module it requires changes
  drain_timeout = "10s",       -- on SIGTERM, how long requests in flight may take to finish

  -- W3C trace context is on by default (a traceparent per attempt, trace ids in the access
  -- log). To export spans to an OpenTelemetry collector (OTLP/HTTP JSON), uncomment:
  -- tracing = { otlp = "http://127.0.0.1:4318/v1/traces", sample = 0.05, service = "levee" },

  upstreams = {
    demo = {
      servers = { "127.0.0.1:9000", "127.0.0.1:9001" },
      balance = "round_robin",          -- or "least_request"
      connect_timeout = "1s",
      pool = {
        max_idle = 64,                  -- idle keep-alive connections kept per server
        idle_timeout = "60s",
        max_lifetime = "10m",           -- also how often server names are re-resolved
        max_connections = 1024,         -- per server
        queue_size = 1024,              -- requests that may wait for a connection
        queue_timeout = "1s",           -- default: connect_timeout
      },
      -- tls = { sni = "api.internal", verify = true, ca = "ca.pem" },   -- TLS to the servers
    },
  },

  -- Routes are tried in order; the first whose match fits the request wins.
  routes = {
    {
      name = "api",                     -- required and unique: breaker and budget state keep it
      match = { prefix = "/api" },      -- also: path (exact), host, methods = { "GET", ... }
      upstream = "demo",
      timeout = "5s",                   -- whole request: every attempt and backoff included
      try_timeout = "1s",               -- one attempt, until the response head arrives
      retry = {
        attempts = 3,                   -- total, the first included
        on = { "connect-failure", "reset", "timeout", "gateway-error" },   -- 502, 503, 504
        backoff = { base = "25ms", max = "1s", jitter = "full" },
        budget = { ratio = 0.2, min_per_second = 10, window = "10s" },
        non_idempotent = false,         -- true: retry POST/PATCH without an idempotency key too
        buffer = "64KiB",               -- request bodies up to this size can be replayed
      },
      breaker = {
        failure_ratio = 0.5, min_requests = 20, window = "10s",
        consecutive_failures = 5,
        open_for = "5s", half_open_requests = 1,
      },
      idempotency = {
        header = "Idempotency-Key", ttl = "24h", methods = { "POST", "PATCH" },
        store = "memory",               -- or { redis = "127.0.0.1:6379", prefix = "levee:" }
      },
      -- Served while the breaker is open, instead of a 503 "breaker-open".
      fallback = function(req, why)
        return { status = 503, headers = { ["Retry-After"] = "5" },
                 body = '{"error":"the API is resting, try again shortly"}' }
      end,
    },
    {
      name = "default",
      match = { prefix = "/" },
      upstream = "demo",
      -- No retry table: 2 attempts on connect-failure and reset, budget 20% + 10/s.
    },
  },
}
