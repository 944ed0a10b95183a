-- bench/slowbody.sh: levee in front of lv-testupstream with a small upstream pool (100
-- connections), so a slow request body that holds an upstream connection while it trickles
-- in shows up at once as a starved pool. request_buffer is left at its default (retry.buffer,
-- 64 KiB): the bench's bodies are 100000 bytes announced and 3 bytes sent, so they stay in
-- levee until limits.body_timeout (BODY_TIMEOUT, set by the script) answers them.
local port = os.getenv("EXTRA_PORT") or "18381"
local origin = os.getenv("ORIGIN_PORT") or "18380"
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  limits = { body_timeout = os.getenv("BODY_TIMEOUT") or "5s" },
  upstreams = {
    origin = { servers = { "127.0.0.1:" .. origin }, pool = { max_connections = 100 } },
  },
  routes = {
    { name = "all", match = { prefix = "/" }, upstream = "origin" },
  },
}
