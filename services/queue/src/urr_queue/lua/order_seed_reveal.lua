-- Reveal the random method's seed once the line is over (issue 19), atomically with the check.
-- Revealing while anyone may still arrive would let them pick an arrival id with a small
-- order key, so the seed comes out only when the event takes nobody new (mode 'closed' or
-- method 'reject') and nobody waits any more. Once revealed, the event never queues by
-- that seed again (admin.py refuses to open a revealed event with the random method).
-- ARGV: seen prefix.
-- Reply: {'no_event'} | {'too_early', mode, method, waiting} | {'revealed', seed, first}
--        (first: 1 when this call revealed it, 0 when it was revealed before)
local cfg = load_config()
if not cfg then return {'no_event'} end
local seed = redis.call('HGET', K_CONFIG, 'order_seed')
if not seed then return {'no_event'} end
if redis.call('HEXISTS', K_CONFIG, 'order_seed_revealed_ms') == 1 then
  return {'revealed', seed, 0}
end
local waiting = redis.call('ZCARD', K_QUEUE)
local takes_arrivals = cfg.mode ~= 'closed' and cfg.method ~= 'reject'
if takes_arrivals or waiting > 0 then
  return {'too_early', cfg.mode, cfg.method, waiting}
end
redis.call('HSET', K_CONFIG, 'order_seed_revealed_ms', now_ms())
return {'revealed', seed, 1}
