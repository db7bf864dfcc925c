-- Delete an event: every key of its slot goes (UNLINK frees big sets off the main thread).
-- Heartbeat bitmaps expire on their own. Reply: {admitted member, token, ...} so the caller
-- can revoke the tokens still out there, or {'no_event'}.
if redis.call('EXISTS', K_CONFIG) == 0 then return {'no_event'} end
local tokens = redis.call('HGETALL', K_TOKENS)
redis.call('UNLINK', K_CONFIG, K_QUEUE, K_ACTIVE, K_TOKENS, K_SEQ, K_RIDS, K_MARKS, K_STATS,
  K_ADMITS, K_RATE, K_ARRIVED, K_PASSES, K_SPENT, K_UNMARKED, K_ORDINALS,
  K_ROSTER, K_ROSTER_MEMBERS, K_PREQUEUE_DOC)
return {'ok', tokens}
