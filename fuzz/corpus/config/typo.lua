return {
  upstreams = { a = { servers = { "127.0.0.1:1" } } },
  routes = { { name = "r", upstream = "a", retyr = { attempts = 2 } } },
}
