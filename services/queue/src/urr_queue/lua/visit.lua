-- Enter (ARGV[5] == '1') or poll the queue of one event, atomically, in one round trip.
-- ARGV: seen prefix, member, signed Tier-1 position ('' if none), Tier-1 place
-- ('<request id>#<position>', '' if none), enter, arrival id (the user id: the random
-- method's order key is drawn from it), the pass's pre-queue sale start ms ('' for a numbered
-- pass), the pass's signing time (epoch s), record id and '1' to write a passthrough
-- admission's record into the outbox (issue 19: the admission log's records; no cap here,
-- see outbox.py).
-- The queueing method 'reject' lets nobody wait: an entry, or a waiter's poll, is refused
-- ({'rejected'}, the place given up); admitted sessions run on.
-- A Tier-1 place admits once: it is bound to the first member entering with it, and once
-- that member's stay has ended (_common.lua's end_stay) it is spent for good.
-- Replies (first element says which):
--   {'no_event'} {'closed'} {'rejected'} {'tier1_required'} {'tier1_pass_bound'}
--   {'tier1_pass_spent'} {'tier1_pass_stale'} {'tier1_pass_mismatch'} {'prequeue_closed'}
--   {'not_queued'} {'prequeue_not_open', prequeue_start_ms, now_ms}
--   {'prequeue', hashed id, roster size, sale_start_ms, now_ms, entered, arrival number,
--    commitment}
--   {'admitted', session_end_ms, token_or_'', now_ms, how, queue_size, number, tier1_required}
--    where how is 0 (admitted before), 1 (admitted now from the queue) or 2 (entered and
--    admitted now: passthrough)
--   {'waiting', rank0, queue_size, rate_milli_or_'', now_ms, entered, number, mode,
--    capacity, admit_per_second, session_ms, idle_ms, tier1_required, queue_method,
--    logged_ticket}
local member, position, place, entering = ARGV[2], ARGV[3], ARGV[4], ARGV[5] == '1'
local arrival_id = ARGV[6]
local pass_sale, pass_signed = ARGV[7] or '', tonumber(ARGV[8] or '0') or 0
local record_id, to_outbox = ARGV[9] or '', ARGV[10] == '1'

local cfg = load_config()
if not cfg then return {'no_event'} end
local now = now_ms()
local tier1 = cfg.tier1 and 1 or 0

-- One Tier-1 place admits one user, once: bound to the first user entering with it, and
-- spent when that user's stay is over (so that user, here again, had it before).
-- Returns a refusal, or nil once the place is this member's (its number has arrived).
local function take_tier1_place()
  if position == '' then return 'tier1_required' end
  local owner = redis.call('HGET', K_RIDS, place)
  if owner and owner ~= member then return 'tier1_pass_bound' end
  if owner then
    spend(place, now)
    return 'tier1_pass_spent'
  end
  redis.call('HSET', K_RIDS, place, member)
  redis.call('HSET', K_PASSES, member, place)
  -- The tick holds free slots for lower Tier-1 numbers that have not arrived yet; this bit
  -- says this one has (passthrough too, so a later switch to queue sees no false gap).
  local number = tonumber(position)
  if number <= MAX_BIT then redis.call('SETBIT', K_ARRIVED, number, 1) end
  return nil
end

-- A pre-queue behind a Tier-1 room: a pass signed before the pre-queue opened is of another
-- run; until sale start only pre-queue passes naming this sale start come in (to the
-- roster), from then on only numbered ones (behind the roster, by number). A pre-queue pass
-- that reaches us after sale start missed the roster: its place is spent, so Tier 1 stops
-- handing it out and its holder takes a new place at the back.
local function prequeue_pass_refusal()
  if position == '' then return 'tier1_required' end
  if pass_signed < math.floor(cfg.prequeue_start / 1000) then return 'tier1_pass_stale' end
  if pass_sale == '' then
    if now < cfg.sale_start then return 'tier1_pass_mismatch' end
    return nil
  end
  if tonumber(pass_sale) ~= cfg.sale_start then return 'tier1_pass_mismatch' end
  if now >= cfg.sale_start then
    local owner = redis.call('HGET', K_RIDS, place)
    if owner and owner ~= member then return 'tier1_pass_bound' end
    spend(place, now)
    -- Its number is settled (it never waits): the order hold need not wait for it.
    local number = tonumber(position)
    if number <= MAX_BIT then redis.call('SETBIT', K_ARRIVED, number, 1) end
    return owner and 'tier1_pass_spent' or 'prequeue_closed'
  end
  return nil
end

local expiry = live_admission(member, now)
if expiry then
  local token = redis.call('HGET', K_TOKENS, member) or ''
  return {'admitted', expiry, token, now, 0, redis.call('ZCARD', K_QUEUE), -1, tier1}
end

local number = redis.call('ZSCORE', K_QUEUE, member)
local entered = 0
if number then
  number = waiter_number(cfg, member, number)
  if cfg.method == 'reject' then
    redis.call('ZREM', K_QUEUE, member)
    redis.call('HDEL', K_ORDINALS, member)
    end_stay(member, now)
    return {'rejected'}
  end
  if cfg.passthrough then
    redis.call('ZREM', K_QUEUE, member)
    redis.call('HDEL', K_ORDINALS, member)
    local session_end = admit_now(cfg, member, now)
    if to_outbox then outbox_admitted(record_id, member, number, 1, now, 'passthrough') end
    return {'admitted', session_end, '', now, 1, redis.call('ZCARD', K_QUEUE), number, tier1}
  end
else
  -- The pre-queue: a member of the roster waits for the shuffle outside the queue until the
  -- reveal places the whole roster in line at once.
  local in_prequeue = cfg.prequeue and not prequeue_revealed()
  local hashed = in_prequeue and roster_id(arrival_id) or nil
  if hashed and redis.call('HEXISTS', K_ROSTER_MEMBERS, hashed) == 1 then
    local ordinal = tonumber(redis.call('HGET', K_ORDINALS, member) or '-1')
    mark_seen(cfg, ordinal, now)
    return {'prequeue', hashed, redis.call('LLEN', K_ROSTER), cfg.sale_start, now, 0, ordinal,
      redis.call('HGET', K_CONFIG, 'prequeue_commitment')}
  end
  if not entering then return {'not_queued'} end
  -- The member neither waits nor is admitted: a stay not yet seen ending (an admission past
  -- its end that no tick has reaped yet) has ended now.
  end_stay(member, now)
  if cfg.method == 'reject' then return {'rejected'} end
  if cfg.mode == 'closed' then return {'closed'} end
  if cfg.prequeue and now < cfg.prequeue_start then
    return {'prequeue_not_open', cfg.prequeue_start, now}
  end
  if cfg.prequeue and cfg.tier1 then
    local refusal = prequeue_pass_refusal()
    if refusal then return {refusal} end
  end
  if hashed and now < cfg.sale_start then
    -- Joined between pre-queue start and sale start: on the roster, in join order. The
    -- Redis clock decides, so nobody joins the roster once the sale has started. Behind a
    -- Tier-1 room the pass's number names the member (its heartbeat bit; Tier-1 numbers
    -- are unique, and later arrivals' numbers follow them), never its turn.
    local ordinal
    if cfg.tier1 then
      local refusal = take_tier1_place()
      if refusal then return {refusal} end
      ordinal = tonumber(position)
    else
      ordinal = redis.call('INCR', K_SEQ)
    end
    redis.call('RPUSH', K_ROSTER, hashed)
    redis.call('HSET', K_ROSTER_MEMBERS, hashed, member)
    redis.call('HSET', K_ORDINALS, member, ordinal)
    mark_seen(cfg, ordinal, now)
    return {'prequeue', hashed, redis.call('LLEN', K_ROSTER), cfg.sale_start, now, 1, ordinal,
      redis.call('HGET', K_CONFIG, 'prequeue_commitment')}
  end
  if cfg.tier1 then
    local refusal = take_tier1_place()
    if refusal then return {refusal} end
    number = tonumber(position)
  else
    number = redis.call('INCR', K_SEQ)
  end
  entered = 1
  if cfg.passthrough then
    local session_end = admit_now(cfg, member, now)
    if to_outbox then outbox_admitted(record_id, member, number, 1, now, 'passthrough') end
    return {'admitted', session_end, '', now, 2, redis.call('ZCARD', K_QUEUE), number, tier1}
  end
  if cfg.prequeue then
    -- After sale start: behind the whole shuffled roster, in arrival order.
    redis.call('ZADD', K_QUEUE, AFTER_ROSTER + number, member)
    redis.call('HSET', K_ORDINALS, member, number)
  elseif cfg.by_key and not cfg.tier1 then
    -- The random method: the score is the order key drawn now from the event's seed; the
    -- arrival number stays with the member for its heartbeat bit and the published record.
    redis.call('ZADD', K_QUEUE, order_key(arrival_id), member)
    redis.call('HSET', K_ORDINALS, member, number)
  else
    redis.call('ZADD', K_QUEUE, number, member)
    -- Date the queue once a second: the head's entry time is read from the mark before it.
    local last_mark = tonumber(redis.call('HGET', K_STATS, 'last_mark_ms') or '0')
    if now - last_mark >= 1000 then
      redis.call('ZADD', K_MARKS, number, now)
      redis.call('HSET', K_STATS, 'last_mark_ms', now)
    end
  end
end

mark_seen(cfg, number, now)
local rank = redis.call('ZRANK', K_QUEUE, member)
-- Before the reveal the roster waits outside the queue, but ahead of everyone in it.
if cfg.prequeue and not prequeue_revealed() then rank = rank + redis.call('LLEN', K_ROSTER) end
return {
  'waiting', rank, redis.call('ZCARD', K_QUEUE), redis.call('HGET', K_STATS, 'rate_milli') or '',
  now, entered, number, cfg.mode, cfg.capacity, tostring(cfg.aps), cfg.session_ms, cfg.idle_ms, tier1,
  cfg.method,
  -- The number the admission will be logged under (a pre-queue logs the queue score: the
  -- roster rank, or the later arrival's place), which names the holder's receipt.
  cfg.prequeue and redis.call('ZSCORE', K_QUEUE, member) or number,
}
