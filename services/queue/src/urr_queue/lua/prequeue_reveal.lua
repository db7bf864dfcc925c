-- Place one chunk of the shuffled roster in line (ranks first_rank, first_rank + 1, ...).
-- ARGV: seen prefix, first rank, final ('1' on the last chunk: the pre-queue is then
-- revealed and ticks start admitting), then hashed ids in admission order.
-- Once revealed nothing is placed again (an admitted member who left must not come back).
-- Reply: {'placed', count} | {'already'} | {'no_event'}
if redis.call('EXISTS', K_CONFIG) == 0 then return {'no_event'} end
if prequeue_revealed() then return {'already'} end
local rank, final = tonumber(ARGV[2]), ARGV[3] == '1'
local placed = 0
for i = 4, #ARGV do
  local member = redis.call('HGET', K_ROSTER_MEMBERS, ARGV[i])
  if member then
    placed = placed + redis.call('ZADD', K_QUEUE, 'NX', rank, member)
  end
  rank = rank + 1
end
if final then redis.call('HSET', K_STATS, 'prequeue_revealed', '1') end
return {'placed', placed}
