-- Exact sliding-log rate limit over one or more windows, in one atomic step.
--
-- KEYS[1..n]  the subject's sorted-set logs, one per window (same hash tag)
-- KEYS[n+1]   optional: a revoked entry-token jti flag to report on (same hash tag)
-- ARGV[1]     cost: units this request takes (>= 1)
-- ARGV[2]     n: number of windows
-- ARGV[3]     1 when KEYS[n+1] is a revoked-jti key to look up, else 0
-- ARGV[4+2(i-1)], ARGV[5+2(i-1)]  limit and length in microseconds of window i
--
-- Each log holds one member per admitted unit, scored by its admission time in microseconds
-- of Redis's own clock (TIME), so gateways with skewed clocks agree. A request is admitted
-- only when every window has room for its whole cost; a refused request records nothing.
--
-- Returns {allowed, revoked, count_1, reset_us_1, retry_us_1, ..., count_n, ...}: the count
-- inside each window before this request, the time until its oldest entry leaves (0 if empty)
-- and the time until the request would fit (0 if it fits). See window.py for the same maths.

local cost = tonumber(ARGV[1])
local n = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local allowed = 1
local reply = {0, 0}
for i = 1, n do
    local key = KEYS[i]
    local limit = tonumber(ARGV[2 + 2 * i])
    local window = tonumber(ARGV[3 + 2 * i])
    -- An entry exactly one window old no longer counts.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    local reset = 0
    local retry = 0
    if count > 0 then
        local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
        reset = tonumber(oldest[2]) + window - now
    end
    if count + cost > limit then
        allowed = 0
        if cost > limit then
            retry = window
        else
            -- Once the (count + cost - limit) oldest entries have left, the request fits.
            local index = count + cost - limit - 1
            local blocking = redis.call('ZRANGE', key, index, index, 'WITHSCORES')
            retry = tonumber(blocking[2]) + window - now
        end
    end
    reply[#reply + 1] = count
    reply[#reply + 1] = reset
    reply[#reply + 1] = retry
end

if allowed == 1 then
    local stamp = string.format('%.0f', now)
    for i = 1, n do
        local key = KEYS[i]
        -- One unique member per unit: the admission time, suffixed only when needed (a cost
        -- above 1, or another admission in the same microsecond).
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
        -- The newest entry is now, so the whole log is dead one window from now.
        redis.call('PEXPIRE', key, math.ceil(tonumber(ARGV[3 + 2 * i]) / 1000))
    end
end

if ARGV[3] == '1' then
    reply[2] = redis.call('EXISTS', KEYS[n + 1])
end
reply[1] = allowed
return reply
