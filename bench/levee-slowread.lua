-- bench/slowread.sh: levee in front of lv-testupstream, one route, defaults everywhere else,
-- so the memory a client that reads nothing costs is what levee's streaming backpressure
-- (stop reading upstream above 256 KiB queued to the client) gives out of the box.
local port = os.getenv("EXTRA_PORT") or "18481"
local origin = os.getenv("ORIGIN_PORT") or "18480"
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  upstreams = { origin = { servers = { "127.0.0.1:" .. origin } } },
  routes = {
    { name = "all", match = { prefix = "/" }, upstream = "origin" },
  },
}
