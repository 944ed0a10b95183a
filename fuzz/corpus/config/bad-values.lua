return {
  listen = { "nope" },
  limits = { header_size = "1TiB", header_count = -1, body_size = "12 bananas" },
  upstreams = { a = { servers = {}, balance = "random", connect_timeout = "-1s" } },
  routes = { { name = "r", upstream = "missing", timeout = 0 } },
}
