-- The smallest useful configuration: listen on 127.0.0.1:8080 (the default) and send every
-- request to one server, with the default policy (2 attempts on connect-failure and reset,
-- a 20% retry budget, no breaker, no idempotency).
return {
  upstreams = { app = { servers = { "127.0.0.1:3000" } } },
  routes = { { name = "all", upstream = "app" } },
}
