return {
  listen = { { addr = "0.0.0.0:8443", tls = { cert = "c.pem", key = "k.pem" } }, "[::1]:8080" },
  admin = false,
  access_log = false,
  upstreams = { s = { servers = { "api.internal:443" }, tls = { sni = "api.internal", verify = false } } },
  routes = { { name = "s", upstream = "s" } },
}
