local function classify(a)
  if a.status == 503 then return "retry" end
  return nil
end
return {
  upstreams = { a = { servers = { "127.0.0.1:9000" } } },
  routes = {
    { name = "r", match = { path = "/x", host = "a.example", methods = { "GET", "PUT" } },
      upstream = "a", classify = classify,
      retry = { attempts = 2, on = { "5xx", 429, "retriable-4xx" },
                backoff = { base = 0.01, max = "2s", jitter = "decorrelated" } },
      idempotency = { key = function(req) return req.headers["x-key"] end, required = true } },
  },
}
