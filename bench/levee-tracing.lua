-- The bench route with tracing: TRACE_SAMPLE = "off" (tracing = false), or a sample rate with
-- spans exported to the origin nginx (which answers the OTLP POSTs with 200).
-- bench/tracing.sh compares the four settings.
local port = os.getenv("EXTRA_PORT") or "18089"
local origin = os.getenv("ORIGIN_PORT") or "18080"
local sample = os.getenv("TRACE_SAMPLE") or "off"
return {
  listen = { "127.0.0.1:" .. port },
  access_log = false,
  tracing = sample ~= "off" and {
    otlp = "http://127.0.0.1:" .. origin .. "/v1/traces",
    sample = tonumber(sample),
    queue = 65536,
  } or false,
  upstreams = {
    origin = { servers = { "127.0.0.1:" .. origin }, pool = { max_idle = 256 } },
  },
  routes = {
    { name = "all", match = { prefix = "/" }, upstream = "origin" },
  },
}
