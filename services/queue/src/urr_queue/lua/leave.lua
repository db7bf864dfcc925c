-- Leave the queue or end an admitted session (ARGV[3] == '1': only an admitted session,
-- which is what a completed booking ends). Either ends the stay: its Tier-1 place is spent.
-- ARGV: seen prefix, member, only admitted.
-- Reply: {'no_event'} | {'none'} | {'waiting', rank0, number, now}
--        | {'admitted', session_end_ms, token_or_'', now}
local member, only_admitted = ARGV[2], ARGV[3] == '1'
if redis.call('EXISTS', K_CONFIG) == 0 then return {'no_event'} end
local now = now_ms()

local session_end = redis.call('ZSCORE', K_ACTIVE, member)
if session_end then
  local token = redis.call('HGET', K_TOKENS, member) or ''
  redis.call('ZREM', K_ACTIVE, member)
  redis.call('HDEL', K_TOKENS, member)
  end_stay(member, now)
  return {'admitted', tonumber(session_end), token, now}
end
if not only_admitted then
  local rank = redis.call('ZRANK', K_QUEUE, member)
  if rank then
    local cfg = load_config()
    local number = waiter_number(cfg, member, redis.call('ZSCORE', K_QUEUE, member))
    redis.call('ZREM', K_QUEUE, member)
    redis.call('HDEL', K_ORDINALS, member)
    end_stay(member, now)
    return {'waiting', rank, number, now}
  end
end
return {'none'}
