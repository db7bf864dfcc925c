-- One admission tick of one event, atomic: drop expired sessions, then admit up to
-- min(free slots, rate budget) waiters in queue order, dropping waiters whose heartbeat
-- went quiet, and record the admissions. Its cost grows with what it admits, expires and
-- drops (each ZPOPMIN is O(log N)), never with the number waiting.
-- ARGV: seen prefix, max admitted, max scanned, max expired.
-- Reply: {now, active_after, waiting_after, {admitted}, {numbers}, {expired}, {dropped},
--         {dropped numbers}} or {-1} when the event has no configuration.
local max_admit, max_scan, max_expire = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])

local cfg = load_config()
if not cfg then return {-1} end
local now = now_ms()

local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now, 'LIMIT', 0, max_expire)
if #expired > 0 then
  redis.call('ZREM', K_ACTIVE, unpack(expired))
  redis.call('HDEL', K_TOKENS, unpack(expired))
end
local active = redis.call('ZCARD', K_ACTIVE)

local admitted, numbers, dropped, dropped_numbers = {}, {}, {}, {}
if cfg.mode == 'queue' or cfg.mode == 'closed' then
  -- Token bucket shared by every replica: the rate holds however many loops run.
  local bucket = redis.call('HMGET', K_RATE, 'tokens', 'ts')
  local tokens, ts = tonumber(bucket[1]), tonumber(bucket[2])
  if not tokens or not ts then tokens, ts = 0, now end
  local burst = math.max(1, cfg.aps)
  tokens = math.min(burst, tokens + math.max(0, now - ts) * cfg.aps / 1000)
  local budget = math.min(cfg.capacity - active, math.floor(tokens), max_admit)
  local scanned = 0
  while #admitted < budget and scanned < max_scan do
    local popped = redis.call('ZPOPMIN', K_QUEUE, math.min(budget - #admitted, max_scan - scanned))
    if #popped == 0 then break end
    for i = 1, #popped, 2 do
      scanned = scanned + 1
      local member, number = popped[i], popped[i + 1]
      if is_live(cfg, tonumber(number), now) then
        admitted[#admitted + 1] = member
        numbers[#numbers + 1] = number
      else
        dropped[#dropped + 1] = member
        dropped_numbers[#dropped_numbers + 1] = number
      end
    end
  end
  if #admitted > 0 then
    local args = {}
    local session_end = now + cfg.session_ms
    for i = 1, #admitted do
      args[#args + 1] = session_end
      args[#args + 1] = admitted[i]
    end
    redis.call('HDEL', K_TOKENS, unpack(admitted))
    redis.call('ZADD', K_ACTIVE, unpack(args))
    record_admissions(now, #admitted)
    tokens = tokens - #admitted
    active = active + #admitted
  end
  redis.call('HSET', K_RATE, 'tokens', string.format('%.6f', tokens), 'ts', now)
end

-- Measured admission rate, shared by all replicas through the stats hash: admissions over
-- the complete seconds of the last minute, leaving out the first second with admissions
-- (it is partial, and holds the rate bucket's initial burst). The hash holds <= ~61 fields.
local current = math.floor(now / 1000)
local buckets = redis.call('HGETALL', K_ADMITS)
local earliest, stale = nil, {}
for i = 1, #buckets, 2 do
  local second = tonumber(buckets[i])
  if second < current - 60 then
    stale[#stale + 1] = buckets[i]
  elseif not earliest or second < earliest then
    earliest = second
  end
end
if #stale > 0 then redis.call('HDEL', K_ADMITS, unpack(stale)) end
local complete = 0
for i = 1, #buckets, 2 do
  local second = tonumber(buckets[i])
  if earliest and second > earliest and second < current then
    complete = complete + tonumber(buckets[i + 1])
  end
end
if earliest and current - earliest >= 2 then
  redis.call('HSET', K_STATS, 'rate_milli', math.floor(complete * 1000 / (current - earliest - 1)))
else
  redis.call('HDEL', K_STATS, 'rate_milli')
end

-- Keep only the marks still needed to date the head of the queue.
local head = redis.call('ZRANGE', K_QUEUE, 0, 0, 'WITHSCORES')
if #head > 0 then
  local mark = redis.call('ZREVRANGEBYSCORE', K_MARKS, head[2], '-inf', 'WITHSCORES', 'LIMIT', 0, 1)
  if #mark > 0 then redis.call('ZREMRANGEBYSCORE', K_MARKS, '-inf', '(' .. mark[2]) end
else
  redis.call('ZREMRANGEBYRANK', K_MARKS, 0, -2)
end

return {now, active, redis.call('ZCARD', K_QUEUE), admitted, numbers, expired, dropped,
  dropped_numbers}
