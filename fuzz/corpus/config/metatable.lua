local t = setmetatable({}, { __index = function(t, k) return nil end })
return t
