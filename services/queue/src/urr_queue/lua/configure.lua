-- Create or change an event's configuration atomically.
-- ARGV: seen prefix, heartbeat bucket ms (used only when the event is created), then
-- field, value pairs. Switching require_tier1 while people wait is refused: the two kinds
-- of queue numbers (arrival sequence, signed Tier-1 position) must not share one queue.
-- Likewise the queue's order ('seq' for fifo, 'key' for random: scores are arrival numbers
-- or order keys) changes only while nobody waits; passthrough and reject keep the order.
-- order_seed and prequeue_salt are written once (secrets; never replaced).
-- Reply: {'created'} | {'updated'} | {'queue_not_empty'} | {'order_seed_revealed'}
local heartbeat_ms = ARGV[2]
local fields = {}
local wanted_tier1, wanted_order, prequeue = nil, nil, false
local once = {}
for i = 3, #ARGV, 2 do
  if ARGV[i] == 'order_seed' or ARGV[i] == 'prequeue_salt' then
    once[#once + 1] = {ARGV[i], ARGV[i + 1]}
  else
    fields[#fields + 1] = ARGV[i]
    fields[#fields + 1] = ARGV[i + 1]
  end
  if ARGV[i] == 'require_tier1' then wanted_tier1 = ARGV[i + 1] end
  if ARGV[i] == 'queue_method' then
    if ARGV[i + 1] == 'random' then wanted_order = 'key' end
    if ARGV[i + 1] == 'fifo' then wanted_order = 'seq' end
  end
  if ARGV[i] == 'prequeue_start_ms' and ARGV[i + 1] ~= '' then prequeue = true end
end
-- A pre-queue orders by score (roster ranks, then later arrivals): like random, by key.
if prequeue then wanted_order = 'key' end

local exists = redis.call('EXISTS', K_CONFIG) == 1
-- Once the random method's seed is public (order_seed_reveal.lua) the event never takes
-- arrivals by it again: anyone could pick an arrival id with a small order key.
if exists and redis.call('HEXISTS', K_CONFIG, 'order_seed_revealed_ms') == 1 then
  local method, mode = nil, nil
  for i = 1, #fields, 2 do
    if fields[i] == 'queue_method' then method = fields[i + 1] end
    if fields[i] == 'mode' then mode = fields[i + 1] end
  end
  method = method or redis.call('HGET', K_CONFIG, 'queue_method')
  mode = mode or redis.call('HGET', K_CONFIG, 'mode')
  if method == 'random' and mode ~= 'closed' then return {'order_seed_revealed'} end
end
-- The pre-queue's roster waits too (outside the queue until the reveal).
local waiting = redis.call('ZCARD', K_QUEUE) > 0 or redis.call('LLEN', K_ROSTER) > 0
if exists and wanted_tier1 then
  local current = redis.call('HGET', K_CONFIG, 'require_tier1')
  if current ~= wanted_tier1 then
    if waiting then return {'queue_not_empty'} end
    -- A Tier-1 room switched on again may count from 1 again: old arrivals must not look
    -- like its numbers (tick.lua's order hold starts over).
    redis.call('UNLINK', K_ARRIVED)
    redis.call('HDEL', K_STATS, 'order_cursor', 'hold_since_ms', 'hold_mark')
  end
end
if wanted_order then
  local current_order = redis.call('HGET', K_CONFIG, 'queue_order') or 'seq'
  if current_order ~= wanted_order and waiting then return {'queue_not_empty'} end
  fields[#fields + 1] = 'queue_order'
  fields[#fields + 1] = wanted_order
end
redis.call('HSET', K_CONFIG, unpack(fields))
for _, pair in ipairs(once) do redis.call('HSETNX', K_CONFIG, pair[1], pair[2]) end
if not exists then
  redis.call('HSETNX', K_CONFIG, 'heartbeat_ms', heartbeat_ms)
  -- The rate bucket starts empty: no burst of a whole second's worth at the first tick.
  local t = redis.call('TIME')
  redis.call('HSET', K_RATE, 'tokens', '0', 'ts', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
  return {'created'}
end
return {'updated'}
