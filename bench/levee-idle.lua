-- bench/idle.sh: levee in front of the nginx origin, one route, pooled upstream connections;
-- idle client connections are kept 300 s (the measurement must not race the idle timeout),
-- and max_connections leaves room for IDLE_CONNS of them.
local port = os.getenv("EXTRA_PORT") or "18981"
local origin = os.getenv("ORIGIN_PORT") or "18980"
local conns = tonumber(os.getenv("IDLE_CONNS") or "4000")
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  limits = { idle_timeout = "300s", max_connections = conns + 1000 },
  upstreams = {
    origin = { servers = { "127.0.0.1:" .. origin }, pool = { max_idle = 256 } },
  },
  routes = {
    { name = "all", match = { prefix = "/" }, upstream = "origin" },
  },
}
