return {
  limits = { header_size = 1024, request_line = 256, header_count = 1, body_size = "1KiB",
             header_timeout = 1, idle_timeout = "100ms", send_timeout = "1m", max_connections = 1 },
  upstreams = { a = { servers = { "127.0.0.1:80" }, pool = { max_idle = 0, queue_size = 0 } } },
  routes = { { name = "r", upstream = "a", breaker = { consecutive_failures = 1, open_for = "1s" } } },
}
