-- bench/idem.sh: the same POST through a plain route and through keyed routes (a new
-- Idempotency-Key per request) on the memory store and on a Redis store.
local port = os.getenv("EXTRA_PORT") or "18089"
local origin = os.getenv("ORIGIN_PORT") or "18080"
local redis = os.getenv("REDIS_ADDR") or "127.0.0.1:6379"
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  upstreams = { origin = { servers = { "127.0.0.1:" .. origin }, pool = { max_idle = 256 } } },
  routes = {
    { name = "memory", match = { prefix = "/memory" }, upstream = "origin",
      idempotency = { ttl = "1m", max_memory = "256MiB" } },
    { name = "redis", match = { prefix = "/redis" }, upstream = "origin",
      idempotency = { ttl = "1m", store = { redis = redis, prefix = "bench:" } } },
    { name = "plain", match = { prefix = "/" }, upstream = "origin" },
  },
}
