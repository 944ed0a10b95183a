-- The bench route with the whole policy path on: retries, budget, breaker and a Lua classify
-- hook that runs on every attempt. bench/policy.sh compares it with bench/levee-bench.lua.
local policy = require "levee.policy"
local port = os.getenv("EXTRA_PORT") or "18089"
local origin = os.getenv("ORIGIN_PORT") or "18080"
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  upstreams = {
    origin = { servers = { "127.0.0.1:" .. origin }, pool = { max_idle = 256 } },
  },
  routes = {
    {
      name = "all",
      match = { prefix = "/" },
      upstream = "origin",
      timeout = "5s",
      try_timeout = "1s",
      retry = {
        attempts = 3,
        on = { "connect-failure", "reset", "timeout", "gateway-error" },
        backoff = { base = "25ms", max = "1s", jitter = "full" },
        budget = { ratio = 0.2, min_per_second = 10, window = "10s" },
      },
      breaker = { failure_ratio = 0.5, min_requests = 20, window = "10s",
                  consecutive_failures = 5, open_for = "5s" },
      classify = function(attempt)
        if attempt.status == 429 or attempt.status == 503 then
          return "retry", policy.retry_after(attempt)
        end
        if attempt.error or attempt.status >= 500 then return "fail" end
        return "ok"
      end,
    },
  },
}
