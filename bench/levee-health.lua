-- bench/health.sh: levee in front of an upstream of two servers, one healthy origin
-- (ORIGIN_PORT) and one loopback port where nothing listens (BAD_PORT: every connect is
-- refused). Default route policy (2 attempts on connect-failure and reset, budget 20% + 10/s)
-- and default outlier ejection (5 consecutive failures eject for 10s). HEALTH=1 adds active
-- checks, GET / every second (unhealthy = 3 by default). The admin listener lets the script
-- read /status after each round.
local port = os.getenv("LEVEE_PORT") or "18581"
local origin = os.getenv("ORIGIN_PORT") or "18580"
local bad = os.getenv("BAD_PORT") or "18589"
local admin = os.getenv("ADMIN_PORT") or "18584"
local health = false
if os.getenv("HEALTH") == "1" then health = { path = "/", interval = "1s" } end
return {
  listen = { "127.0.0.1:" .. port },
  admin = "127.0.0.1:" .. admin,
  access_log = false,
  upstreams = {
    pair = {
      servers = { "127.0.0.1:" .. origin, "127.0.0.1:" .. bad },
      health = health,
    },
  },
  routes = {
    { name = "all", match = { prefix = "/" }, upstream = "pair" },
  },
}
