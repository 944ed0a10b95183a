-- wrk script: a POST with a 1-byte body and a new Idempotency-Key on every request. The tag
-- differs per wrk run (time and a table address), so no key repeats across rounds.
local n = 0
local tag = os.time() .. tostring({}):gsub("table: ", "")
request = function()
  n = n + 1
  return wrk.format("POST", nil, { ["Idempotency-Key"] = tag .. "-" .. n }, "x")
end
