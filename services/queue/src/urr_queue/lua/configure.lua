-- Create or change an event's configuration atomically.
-- ARGV: seen prefix, heartbeat bucket ms (used only when the event is created), then
-- field, value pairs. Switching require_tier1 while people wait is refused: the two kinds
-- of queue numbers (arrival sequence, signed Tier-1 position) must not share one queue.
-- Reply: {'created'} | {'updated'} | {'queue_not_empty'}
local heartbeat_ms = ARGV[2]
local fields = {}
local wanted_tier1 = nil
for i = 3, #ARGV, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'require_tier1' then wanted_tier1 = ARGV[i + 1] end
end

local exists = redis.call('EXISTS', K_CONFIG) == 1
if exists and wanted_tier1 then
  local current = redis.call('HGET', K_CONFIG, 'require_tier1')
  if current ~= wanted_tier1 then
    if redis.call('ZCARD', K_QUEUE) > 0 then return {'queue_not_empty'} end
    -- A Tier-1 room switched on again may count from 1 again: old arrivals must not look
    -- like its numbers (tick.lua's order hold starts over).
    redis.call('UNLINK', K_ARRIVED)
    redis.call('HDEL', K_STATS, 'order_cursor', 'hold_since_ms', 'hold_mark')
  end
end
redis.call('HSET', K_CONFIG, unpack(fields))
if not exists then
  redis.call('HSETNX', K_CONFIG, 'heartbeat_ms', heartbeat_ms)
  -- The rate bucket starts empty: no burst of a whole second's worth at the first tick.
  local t = redis.call('TIME')
  redis.call('HSET', K_RATE, 'tokens', '0', 'ts', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  return {'created'}
end
return {'updated'}
