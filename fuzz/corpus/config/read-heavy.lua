-- read-heavy.lua: levee in front of a read-heavy API (catalogue, search, profiles).
--
-- Check it with `levee check examples/read-heavy.lua`; run it with `levee -c examples/read-heavy.lua`.
--
-- What matters for reads:
--   * GET is safe to repeat, so a failed read is retried: on 5xx answers, resets and
--     timeouts, with exponential backoff and jitter so retries do not arrive in lockstep.
--   * A retry budget caps the extra load: when the service is really down, retries stop
--     at about 20% of the traffic instead of tripling it.
--   * least_request sends each request to the less busy of two servers picked at random,
--     so a slow server gets fewer requests.
--   * The breaker also watches latency: when most calls become slow, it opens before the
--     service falls over, and clients fail fast instead of queueing.
--   * A classify hook honours the service's Retry-After, but gives up at once when the
--     service asks for a wait longer than a reader would accept.

-- Modules are loaded at the top of the file, never inside a hook.
local policy = require "levee.policy"

-- Longest Retry-After (seconds) worth waiting for inside a request. Longer: no retry.
local MAX_WAIT = 1

-- classify(attempt) is called after every attempt. It returns a verdict:
--   "retry" [, delay]  a failure, retried if attempts, budget and deadline allow
--   "fail"             a failure for the breaker, not retried
--   "ok"               a success for the breaker
--   nil                no opinion: the route's retry.on decides
local function classify(a)
  if a.status == 503 or a.status == 429 then
    local wait = policy.retry_after(a)    -- seconds, or nil when there is no valid Retry-After
    if wait and wait > MAX_WAIT then
      return "fail"                       -- the client gets this answer now, Retry-After included
    end
    return "retry", wait                  -- wait as told; nil means the route's backoff
  end
  if a.status == 404 and policy.header(a, "X-Cache-Status") == "warming" then
    return "retry", "50ms"                -- a cache node still warming up: ask again shortly
  end
  return nil
end

return {
  listen = { "127.0.0.1:8080" },
  admin = "127.0.0.1:9901",

  access_log = "stdout",

  upstreams = {
    catalogue = {
      servers = { "127.0.0.1:9000", "127.0.0.1:9001" },
      balance = "least_request",          -- power of two choices: the less busy of two servers
      connect_timeout = "250ms",
      pool = {
        max_idle = 128,                   -- reads come in bursts: keep connections warm
        idle_timeout = "60s",
        max_lifetime = "10m",
        max_connections = 1024,
      },
    },
  },

  routes = {
    {
      name = "reads",
      match = { prefix = "/api", methods = { "GET", "HEAD" } },
      upstream = "catalogue",
      timeout = "3s",                     -- whole request: every attempt and backoff included
      try_timeout = "800ms",              -- one attempt; a hung server costs at most this

      retry = {
        attempts = 3,                     -- the first and up to two retries
        on = { "connect-failure", "reset", "timeout", "5xx" },
        backoff = {
          base = "50ms",                  -- first retry waits up to 50ms, the second up to 100ms...
          max = "400ms",
          jitter = "full",                -- a random wait in [0, step]: spreads the retries
        },
        -- In any 10 s window, retries may not exceed 20% of the requests plus 5 per second.
        -- When it is spent, the client gets the last attempt's answer (flag "budget-exhausted").
        budget = { ratio = 0.2, min_per_second = 5, window = "10s" },
      },

      breaker = {
        failure_ratio = 0.5,              -- half of the requests failing...
        min_requests = 50,                -- ...over at least 50 requests in the window
        window = "10s",
        consecutive_failures = 20,        -- or 20 failures in a row
        -- Slow calls: when 80% of the calls in the window take longer than 500ms, open too.
        slow_call = { duration = "500ms", ratio = 0.8 },
        open_for = "5s",                  -- fail fast for 5 s, then let probes through
        max_open_for = "30s",             -- failed probes double open_for up to 30 s
        half_open_requests = 3,           -- 3 probes must all succeed to close it
      },

      classify = classify,

      -- While the breaker is open, answer with a small "degraded" document, so pages can
      -- render without this data instead of waiting.
      fallback = function(req, why)
        return {
          status = 503,
          headers = { ["Content-Type"] = "application/json", ["Retry-After"] = "5" },
          body = '{"degraded":true,"reason":"' .. why .. '"}',
        }
      end,
    },

    -- Writes go through without the read policy: levee's defaults retry only what is safe.
    {
      name = "writes",
      match = { prefix = "/api" },
      upstream = "catalogue",
      timeout = "5s",
    },
  },
}
