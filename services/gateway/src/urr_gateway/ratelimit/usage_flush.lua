-- Add a batch of in-memory usage counts of traffic without a tenant to the hourly usage
-- hashes the snapshot scheduler reads (urr_common.ratelimit_usage), in one atomic step.
--
-- KEYS[1]     any key with the anonymous hash tag ({rl:-}), so Redis Cluster routes the call
--             to the node that holds the usage hashes; it is not touched itself
-- ARGV[1]     usage hash prefix 'ratelimit:usage:{rl:-}:'
-- ARGV[2]     how long a usage hash outlives its hour, seconds (USAGE_TTL_S)
-- ARGV[3k], ARGV[3k+1], ARGV[3k+2]  (k >= 1) policy id, field, count to add
--
-- The hour comes from Redis's clock, like the decision scripts': counts made in the last
-- second of an hour and flushed after it land in the next hour.

local clock = redis.call('TIME')
local now_s = tonumber(clock[1])
local hour = string.format('%.0f', now_s - now_s % 3600)
local ttl = 3600 + tonumber(ARGV[2])
local touched = {}
for i = 3, #ARGV, 3 do
    local key = ARGV[1] .. ARGV[i] .. ':' .. hour
    redis.call('HINCRBY', key, ARGV[i + 1], tonumber(ARGV[i + 2]))
    if not touched[key] then
        touched[key] = true
        redis.call('EXPIRE', key, ttl)
    end
end
return math.floor((#ARGV - 2) / 3)
