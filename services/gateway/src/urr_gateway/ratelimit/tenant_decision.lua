-- One tenant decision under its governing policy, in one atomic step: every window of the
-- policy, the tenant's monthly quota, shadow mode and whether the hit is near a limit. Usage
-- (allowed, blocked, shadow_blocked, near_limit) is counted by the caller from this reply and
-- added to the usage hashes once a second (usage_tally.py), not by a command per decision.
--
-- KEYS[1..n]  the tenant's sorted-set logs of this policy, one per window ({rl:<tenant>} tag)
-- ARGV[1]     cost (>= 1)
-- ARGV[2]     n: number of windows
-- ARGV[3]     1: enforce, 0: shadow (count would-be refusals, never refuse)
-- ARGV[4]     the tenant's monthly quota in cost units; 0: none
-- ARGV[5]     the quota counter of the caller's current UTC month,
--             'ratelimit:quota:{rl:<tenant>}:YYYY-MM'
-- ARGV[6]     how long a quota counter outlives its month, seconds (USAGE_TTL_S)
-- ARGV[7]     '' in production: Redis TIME. A fixed time in microseconds only from the
--             stores' evaluate_tenant(now_us=...), used by the tests; the gateway and the check
--             API have no way to pass one.
-- ARGV[8], ARGV[9]  that month's first second and the first second after it (epoch seconds)
-- ARGV[10+2(i-1)], ARGV[11+2(i-1)]  limit and length in microseconds of window i
--
-- The quota counter is named after the month of Redis's clock. The caller names the month its
-- own clock is in, which spares the calendar arithmetic on almost every call; when Redis's
-- time falls outside it (a skewed caller, the first moments of a month) the script works the
-- month out itself. The counter is not passed in KEYS but carries the windows' hash tag (same
-- Redis Cluster slot), which Redis 7 allows for scripts without the no-cluster flags.
--
-- Returns {allowed, would_allow, quota_refused, quota_remaining, quota_reset_us, near,
--          count_1, reset_us_1, retry_us_1, ..., count_n, ...}
-- counts as before this request; quota_remaining after it (-1: no quota); near 1 when an
-- admitted hit went above 80 % of a window's limit.

local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local enforce = ARGV[3] == '1'
local quota = tonumber(ARGV[4])
local now
if ARGV[7] ~= '' then
    now = tonumber(ARGV[7])
else
    local clock = redis.call('TIME')
    now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])
end
local now_s = math.floor(now / 1000000)

local allowed_windows = true
local near = false
local reply = {0, 0, 0, -1, 0, 0}
for i = 1, n do
    local key = KEYS[i]
    local limit = tonumber(ARGV[8 + 2 * i])
    local window = tonumber(ARGV[9 + 2 * i])
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    local reset = 0
    local retry = 0
    if count > 0 then
        local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        reset = tonumber(oldest[2]) + window - now
    end
    if count + cost > limit then
        allowed_windows = false
        if cost > limit then
            retry = window
        else
            local index = count + cost - limit - 1
            local blocking = redis.call('ZRANGE', key, index, index, 'WITHSCORES')
            retry = tonumber(blocking[2]) + window - now
        end
    elseif count + cost > math.floor(limit * 0.8) then
        -- envoy's convention: a hit above 80% of a limit it still fits under is near it.
        near = true
    end
    reply[#reply + 1] = count
    reply[#reply + 1] = reset
    reply[#reply + 1] = retry
end

-- The quota is counted first and given back when it refuses: one command on the common
-- (allowed) path instead of a read and a write.
local quota_ok = true
local used = 0
if quota > 0 then
    local quota_key = ARGV[5]
    local month_end_s = tonumber(ARGV[9])
    if now_s < tonumber(ARGV[8]) or now_s >= month_end_s then
        -- Redis's time is outside the caller's month (rare): work the month out here, with
        -- the proleptic Gregorian calendar from days since 1970-01-01 and back (H. Hinnant's
        -- algorithm). Defined only here: two closures made on every call cost for nothing.
        local function civil_from_days(days)
            local z = days + 719468
            local era = math.floor(z / 146097)
            local doe = z - era * 146097
            local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)
                - math.floor(doe / 146096)) / 365)
            local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))
            local mp = math.floor((5 * doy + 2) / 153)
            local month = mp < 10 and mp + 3 or mp - 9
            local year = yoe + era * 400
            if month <= 2 then year = year + 1 end
            return year, month
        end
        local function days_from_civil(year, month)
            if month <= 2 then year = year - 1 end
            local era = math.floor(year / 400)
            local yoe = year - era * 400
            local mp = (month + 9) % 12
            local doy = math.floor((153 * mp + 2) / 5)
            local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy
            return era * 146097 + doe - 719468
        end
        local year, month = civil_from_days(math.floor(now_s / 86400))
        local next_year, next_month = year, month + 1
        if next_month == 13 then next_year, next_month = year + 1, 1 end
        month_end_s = days_from_civil(next_year, next_month) * 86400
        quota_key = string.sub(ARGV[5], 1, -8) .. string.format('%04d-%02d', year, month)
    end
    reply[5] = (month_end_s - now_s) * 1000000 - (now % 1000000)
    if enforce and not allowed_windows then
        -- Refused by a window anyway: only report what is left.
        used = tonumber(redis.call('GET', quota_key) or '0')
        quota_ok = used + cost <= quota
    else
        used = redis.call('INCRBY', quota_key, cost)
        if used == cost then
            -- New this month. Kept past its end for the usage snapshots, like usage hashes.
            redis.call('EXPIRE', quota_key, month_end_s - now_s + tonumber(ARGV[6]))
        end
        quota_ok = used <= quota
        if enforce and not quota_ok then
            used = redis.call('DECRBY', quota_key, cost)
        end
    end
end

local would_allow = allowed_windows and quota_ok
local allowed = would_allow or not enforce

if allowed then
    local stamp = string.format('%.0f', now)
    for i = 1, n do
        local key = KEYS[i]
        local added = 0
        local suffix = 0
        while added < cost do
            local member = stamp
            if suffix > 0 then
                member = stamp .. ':' .. suffix
            end
            added = added + redis.call('ZADD', key, 'NX', now, member)
            suffix = suffix + 1
        end
        redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[9 + 2 * i]) / 1000))
    end
end

reply[1] = allowed and 1 or 0
reply[2] = would_allow and 1 or 0
reply[3] = quota_ok and 0 or 1
if near and would_allow then
    reply[6] = 1
end
if quota > 0 then
    reply[4] = math.max(quota - used, 0)
end
return reply
