-- Hold one seat for ARGV[1] (owner) for ARGV[3] ms, creating hold id ARGV[2] if free.
-- The owner holding again renews the TTL and keeps the first hold id (idempotent).
-- Returns {1, holdId, expiresAtMs} when the caller holds it, {0, '', expiresAtMs} when
-- someone else does. Times come from Redis's own clock.
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
local ttl = tonumber(ARGV[3])
local current = redis.call('GET', KEYS[1])
if not current then
  redis.call('SET', KEYS[1], ARGV[1] .. ' ' .. ARGV[2], 'PX', ttl)
  return {1, ARGV[2], now_ms + ttl}
end
local sep = string.find(current, ' ', 1, true)
local owner = sep and string.sub(current, 1, sep - 1) or current
if owner == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ttl)
  return {1, sep and string.sub(current, sep + 1) or '', now_ms + ttl}
end
return {0, '', now_ms + math.max(redis.call('PTTL', KEYS[1]), 0)}
