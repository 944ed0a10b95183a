-- payments.lua: levee in front of a payments-style API.
--
-- Check it with `levee check examples/payments.lua`; run it with `levee -c examples/payments.lua`.
--
-- What matters for payments:
--   * A charge must never happen twice. Clients send an Idempotency-Key with every POST;
--     levee stores the first final response per key and replays it to a client that
--     repeats the request, so the service sees each key once.
--   * levee retries only when the request certainly did not take effect, or the service
--     said so: the connection was refused (nothing reached the service), or the service
--     answered 503 / 429 ("not now, nothing done"). A reset or a timeout leaves the outcome
--     unknown, so it is NOT retried: the client gets the error and may repeat the request
--     with the same key, which is safe. (One exception, made for every safe request: a
--     pooled keep-alive connection found closed before any answer byte is the usual
--     stale-connection race, and levee sends the keyed request once more on a fresh
--     connection; the key lets the service recognise it.)
--   * Deadlines are tight: a client waiting for a payment prefers a fast, clear error to a
--     long hang. Every retry and backoff fits inside the route's timeout.
--   * When the service keeps failing, the circuit breaker opens and a fallback answers at
--     once with a clear "try again later" instead of piling more load on the service.
--
-- Durations are strings ("250ms", "2s", "24h") or numbers of seconds; sizes are strings
-- ("64KiB", "1MiB") or numbers of bytes.

-- The answer served while the breaker is open: a JSON error the client apps already handle.
-- `why` is "breaker-open". Kept small and static: it runs on every refused request.
local function payments_unavailable(req, why)
  return {
    status = 503,
    headers = {
      ["Content-Type"] = "application/json",
      ["Retry-After"] = "5",                      -- seconds; clients wait this long
    },
    body = '{"error":"payments_unavailable","reason":"' .. why .. '","retryable":true}',
  }
end

return {
  listen = { "127.0.0.1:8080" },
  admin = "127.0.0.1:9901",         -- /metrics, /status, /healthz, POST /reload

  limits = {
    body_size = "1MiB",             -- payment requests are small; anything bigger gets 413
    header_timeout = "5s",
  },

  access_log = "stdout",            -- one JSON line per request: attempts, tries, flags

  upstreams = {
    payments = {
      servers = { "127.0.0.1:9000", "127.0.0.1:9001" },
      balance = "round_robin",
      connect_timeout = "200ms",    -- same data centre: a connect slower than this is a failure
      pool = {
        max_idle = 32,
        idle_timeout = "30s",
        max_connections = 256,      -- per server: protects the service from a burst
        queue_size = 128,           -- requests waiting for a connection; more get 503 pool-overflow
        queue_timeout = "200ms",
      },
    },
  },

  routes = {
    -- Creating and capturing payments: POST with an Idempotency-Key.
    {
      name = "payments-write",
      match = { prefix = "/v1/payments", methods = { "POST" } },
      upstream = "payments",
      timeout = "3s",               -- whole request: every attempt and backoff included
      try_timeout = "2s",           -- one attempt, until the response head arrives

      retry = {
        attempts = 2,               -- one retry at most: a payment is not worth a retry storm
        -- Only outcomes where the charge certainly did not happen. No "reset", no "timeout":
        -- the service may have processed the payment before the connection broke.
        on = { "connect-failure", "503", "429" },
        -- 503/429 with Retry-After wait as told (if the deadline leaves room), else this backoff.
        backoff = { base = "100ms", max = "500ms", jitter = "full" },
        -- Retries may add at most 10% to the load (plus 1 per second when traffic is low).
        budget = { ratio = 0.1, min_per_second = 1, window = "10s" },
        -- A POST without a key is never replayed after it reached the service.
        non_idempotent = false,
        buffer = "64KiB",           -- bodies up to this size are kept so a retry can resend them
      },

      idempotency = {
        header = "Idempotency-Key",
        ttl = "24h",                -- a repeated key within a day gets the stored response
        methods = { "POST" },
        required = true,            -- a POST without a key gets 400 idempotency-key-required
        on_conflict = "reject",     -- the same key while the first is in flight: 409
        on_store_error = "fail_closed",   -- store trouble: 503 rather than risk a double charge
        max_body = "256KiB",        -- larger responses are not stored
        store = "memory",           -- several gateways: { redis = "127.0.0.1:6379", prefix = "levee:" }
      },

      breaker = {
        consecutive_failures = 5,   -- 5 failures in a row open it...
        failure_ratio = 0.5,        -- ...or half of the requests in the window failing,
        min_requests = 20,          --    once the window holds at least 20 requests
        window = "30s",
        open_for = "10s",           -- then one probe decides: success closes, failure reopens
        max_open_for = "1m",        -- each failed probe doubles open_for, up to this
        half_open_requests = 1,
      },
      fallback = payments_unavailable,
    },

    -- Reading payments: GET is safe to repeat, so retry more freely, still within a deadline.
    {
      name = "payments-read",
      match = { prefix = "/v1/payments", methods = { "GET" } },
      upstream = "payments",
      timeout = "2s",
      try_timeout = "700ms",
      retry = {
        attempts = 3,
        on = { "connect-failure", "reset", "timeout", "502", "503", "504" },
        backoff = { base = "25ms", max = "250ms", jitter = "full" },
        budget = { ratio = 0.2, min_per_second = 5, window = "10s" },
      },
      breaker = {
        consecutive_failures = 10,
        open_for = "5s",
      },
      fallback = payments_unavailable,
    },

    -- Everything else (health checks, refunds listing...): levee's defaults, which retry
    -- only on connect-failure and reset, and only for safe methods.
    {
      name = "default",
      match = { prefix = "/" },
      upstream = "payments",
      timeout = "5s",
    },
  },
}
