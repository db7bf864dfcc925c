-- Live figures of one event for the admin API and the Tier-1 capacity feed.
-- Reply: {'no_event'} | {'ok', waiting, admitted, admitted_last_minute, oldest_wait_ms (-1 if
-- nobody waits), rate_milli_or_'', now, {config field, value, ...}, order cursor or '',
-- order hold start ms or ''} (the last two only for events behind a Tier-1 room: tick.lua)
if redis.call('EXISTS', K_CONFIG) == 0 then return {'no_event'} end
local now = now_ms()
local admitted = redis.call('ZCOUNT', K_ACTIVE, '(' .. now, '+inf')

local current = math.floor(now / 1000)
local last_minute = 0
local buckets = redis.call('HGETALL', K_ADMITS)
for i = 1, #buckets, 2 do
  if tonumber(buckets[i]) > current - 60 then last_minute = last_minute + tonumber(buckets[i + 1]) end
end

local oldest = -1
local head = redis.call('ZRANGE', K_QUEUE, 0, 0, 'WITHSCORES')
if #head > 0 then
  local mark = redis.call('ZREVRANGEBYSCORE', K_MARKS, head[2], '-inf', 'LIMIT', 0, 1)
  if #mark > 0 then oldest = math.max(0, now - tonumber(mark[1])) end
end

local stats = redis.call('HMGET', K_STATS, 'rate_milli', 'order_cursor', 'hold_since_ms')
return {'ok', redis.call('ZCARD', K_QUEUE), admitted, last_minute, oldest, stats[1] or '', now,
  redis.call('HGETALL', K_CONFIG), stats[2] or '', stats[3] or ''}
