local n = 0
for i = 1, 1000 do n = n + i end
return { upstreams = { a = { servers = { "127.0.0.1:" .. (n % 60000 + 1) } } }, routes = { { name = "r", upstream = "a" } } }
