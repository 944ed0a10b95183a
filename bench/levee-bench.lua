-- levee in front of bench/run.sh's origin: one route, pooled keep-alive upstream connections.
-- run.sh exports EXTRA_PORT (where levee listens) and ORIGIN_PORT (the nginx origin).
local port = os.getenv("EXTRA_PORT") or "18089"
local origin = os.getenv("ORIGIN_PORT") or "18080"
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  upstreams = {
    origin = { servers = { "127.0.0.1:" .. origin }, pool = { max_idle = 256 } },
  },
  routes = {
    { name = "all", match = { prefix = "/" }, upstream = "origin" },
  },
}
