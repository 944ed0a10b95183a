-- The bench route with admission control on: a rate limit per client address that never
-- refuses (memory store, or Redis with RATE_REDIS=host:port). bench/ratelimit.sh compares it
-- with bench/levee-bench.lua, the same route without it.
local port = os.getenv("EXTRA_PORT") or "18089"
local origin = os.getenv("ORIGIN_PORT") or "18080"
local redis = os.getenv("RATE_REDIS")
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
      rate_limit = {
        rate = 1000000000, per = "1s", burst = 1000, key = "client_ip",
        store = redis and { redis = redis } or "memory",
        timeout = "1s",
      },
    },
  },
}
