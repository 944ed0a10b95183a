-- levee.policy: helpers for the hooks of a configuration (README, "Outcomes and classification").
--
--   local policy = require "levee.policy"       -- at the top of levee.lua
--   routes = { { name = "api", upstream = "api", classify = policy.classify } }
--
-- or inside a hook of your own:
--
--   classify = function(a)
--       if a.status == 409 and policy.header(a, "x-retryable") == "yes" then
--           return "retry", policy.retry_after(a)
--       end
--       return nil                                -- nil: levee's default classification
--   end
--
-- An attempt is the table a classify hook receives: { status, error, headers, duration,
-- number, route, request = { method, path, headers } }; `status` is nil when the attempt
-- ended in an error and `error` is nil when it has a status; header names are lower case.
-- Every helper also takes a plain table built by hand (tests), with header names in any case.
--
-- Hooks run in the configuration's sandbox with read-only globals and no `require`, so
-- require this module when the file loads and keep it in a local: the functions below only
-- use what they captured then (string, math, os.time).

local type, pairs, tonumber = type, pairs, tonumber
local lower, match = string.lower, string.match
local floor = math.floor
local time = os.time

local M = {}

-- Longest delay returned (1 day), as levee caps a hook's delay anyway.
M.MAX_DELAY = 86400

local CLASSES = { "1xx", "2xx", "3xx", "4xx", "5xx" }

--- The value of header `name` in attempt.headers (any case), or nil. Repeated fields come
-- joined with ", ".
function M.header(a, name)
    local h = type(a) == "table" and a.headers
    if type(h) ~= "table" or type(name) ~= "string" then
        return nil
    end
    local key = lower(name)
    local v = h[key]
    if v ~= nil then
        return v
    end
    -- Tables levee builds have lower-case names; a hand-made one may not.
    for k, x in pairs(h) do
        if type(k) == "string" and k ~= key and lower(k) == key then
            return x
        end
    end
    return nil
end

local function status_of(a)
    local s = type(a) == "table" and a.status
    if type(s) == "number" then
        return s
    end
    return nil
end

--- "1xx" .. "5xx" for an attempt with a status, nil for one that ended in an error.
function M.status_class(a)
    local s = status_of(a)
    if not s then
        return nil
    end
    return CLASSES[floor(s / 100)]
end

--- True when the attempt has a 5xx status.
function M.is_5xx(a)
    local s = status_of(a)
    return s ~= nil and s >= 500 and s <= 599
end

--- True when the attempt has a 4xx status.
function M.is_4xx(a)
    local s = status_of(a)
    return s ~= nil and s >= 400 and s <= 499
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6, jul = 7, aug = 8,
    sep = 9, oct = 10, nov = 11, dec = 12 }
local WDAYS = { sun = true, mon = true, tue = true, wed = true, thu = true, fri = true,
    sat = true }
local LONG_WDAYS = { sunday = true, monday = true, tuesday = true, wednesday = true,
    thursday = true, friday = true, saturday = true }

local function leap(y)
    return y % 4 == 0 and (y % 100 ~= 0 or y % 400 == 0)
end

local MDAYS = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 }

-- Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Hinnant's algorithm):
-- plain arithmetic, so no time zone can get in the way as it does with os.time{...}.
local function days_from_civil(y, m, d)
    if m <= 2 then
        y = y - 1
    end
    local era = floor(y / 400)
    local yoe = y - era * 400
    local mp = (m + 9) % 12
    local doy = floor((153 * mp + 2) / 5) + d - 1
    local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
    return era * 146097 + doe - 719468
end

-- Seconds since the epoch of a valid date and time (GMT), or nil.
local function epoch(y, mon, d, hh, mm, ss)
    local m = MONTHS[lower(mon)]
    y, d, hh, mm, ss = tonumber(y), tonumber(d), tonumber(hh), tonumber(mm), tonumber(ss)
    if not m or not (y and d and hh and mm and ss) then
        return nil
    end
    local last = (m == 2 and leap(y)) and 29 or MDAYS[m]
    if d < 1 or d > last or hh > 23 or mm > 59 or ss > 60 then
        return nil
    end
    return days_from_civil(y, m, d) * 86400 + hh * 3600 + mm * 60 + ss
end

-- An HTTP-date (RFC 9110 §5.6.7) as seconds since the epoch, or nil. The three formats a
-- recipient must accept: IMF-fixdate, the obsolete RFC 850 form and asctime.
local function http_date(v, now)
    local wd, d, mon, y, hh, mm, ss =
        match(v, "^(%a%a%a), (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if wd then
        return WDAYS[lower(wd)] and epoch(y, mon, d, hh, mm, ss)
    end
    wd, d, mon, y, hh, mm, ss =
        match(v, "^(%a+), (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if wd then
        if not LONG_WDAYS[lower(wd)] then
            return nil
        end
        -- Two-digit year: the most recent year in the past with those digits when the
        -- plain reading is more than 50 years ahead (RFC 9110 §5.6.7).
        local cur = 1970 + floor(now / 31556952) -- mean Gregorian year; a day off is fine
        local yy = tonumber(y) + floor(cur / 100) * 100
        if yy > cur + 50 then
            yy = yy - 100
        end
        return epoch(yy, mon, d, hh, mm, ss)
    end
    local day
    wd, mon, day, hh, mm, ss, y =
        match(v, "^(%a%a%a) (%a%a%a) ([ %d]%d) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
    if wd then
        return WDAYS[lower(wd)] and epoch(y, mon, match(day, "%d+"), hh, mm, ss)
    end
    return nil
end

--- The delay the upstream asked for in Retry-After, in seconds (a number >= 0, at most
-- MAX_DELAY), or nil when there is no Retry-After or it is malformed. Accepts delay-seconds
-- ("120") and an HTTP-date (a date in the past gives 0). `now` (seconds since the epoch)
-- defaults to os.time().
function M.retry_after(a, now)
    local v = M.header(a, "retry-after")
    if type(v) ~= "string" then
        return nil
    end
    v = match(v, "^[ \t]*(.-)[ \t]*$")
    local secs = match(v, "^%d+$")
    if secs then
        local n = tonumber(secs)
        return n < M.MAX_DELAY and n or M.MAX_DELAY
    end
    now = now or time()
    local t = http_date(v, now)
    if not t then
        return nil
    end
    local d = t - now
    if d < 0 then
        return 0
    end
    return d < M.MAX_DELAY and d or M.MAX_DELAY
end

--- A ready-made classify hook: 503 and 429 are "retry", after the Retry-After delay when the
-- upstream sent one (else levee's backoff); anything else returns nil, which leaves the
-- attempt to levee's default classification (retry.on). levee still retries only what is
-- safe to replay, within attempts, budget and deadline.
function M.classify(a)
    local s = status_of(a)
    if s == 503 or s == 429 then
        return "retry", M.retry_after(a)
    end
    return nil
end

return M
