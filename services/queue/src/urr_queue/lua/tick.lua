-- One admission tick of one event, atomic: drop expired sessions, then admit up to
-- min(free slots, rate budget) waiters in queue order, dropping waiters whose heartbeat
-- went quiet, and record the admissions (expired and dropped stays spend their Tier-1
-- places: _common.lua's end_stay). Its cost grows with what it admits, expires and
-- drops (each ZPOPMIN is O(log N)), never with the number waiting.
-- Events behind a Tier-1 room also keep admissions in Tier-1 number order (order_gate below),
-- for two O(log N) look-ups and a bitmap scan from a cursor that only moves forward.
-- The 'waived' and 'admitted' records the admission log needs go into the event's outbox
-- stream in this same script (issue 19): no admission without its record. A full outbox (the
-- relay cannot reach Kafka) stops admission and waivers until it drains.
-- ARGV: seen prefix, max admitted, max scanned, max expired, Tier-1 order grace ms (0: off),
--       record id prefix (unique per call), outbox cap (0: no outbox).
-- Reply: {now, active_after, waiting_after, {admitted}, {numbers}, {expired}, {dropped},
--         {dropped numbers}, held (1 when a missing lower number kept free slots empty),
--         waived (missing numbers given up this tick), {waived numbers},
--         outbox_full (1 when the outbox at its cap kept admission stopped)}
--        or {-1} when the event has no configuration.
local max_admit, max_scan, max_expire = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local grace_ms = tonumber(ARGV[5])
local record_prefix, outbox_cap = ARGV[6] or '', tonumber(ARGV[7] or '0')
-- Waived numbers per 'waived' record (about 80 KB of JSON at most).
local WAIVERS_PER_RECORD = 10000
-- Tier-1 positions start at 1: nothing below it is ever waited for.
local FIRST_TIER1_NUMBER = 1

-- The lowest Tier-1 number at or above `cursor` that has not arrived (past the bitmap's end
-- when every number from the cursor on has). Scans only from the cursor to that number.
local function first_missing(cursor)
  local length = redis.call('STRLEN', K_ARRIVED) * 8
  if cursor >= length then return cursor end
  local missing = redis.call('BITPOS', K_ARRIVED, 0, cursor, -1, 'BIT')
  if missing < 0 then return length end
  return missing
end

-- The numbers in [from, to) that have not arrived, in order (those past the bitmap's end
-- included): what a hold that gives up waives, listed so the admission log can show why a
-- late one is admitted behind higher numbers.
local function missing_between(from, to)
  local found = {}
  local length = redis.call('STRLEN', K_ARRIVED) * 8
  local pos = from
  while pos < to do
    if pos >= length then
      for n = pos, to - 1 do found[#found + 1] = n end
      break
    end
    local hit = redis.call('BITPOS', K_ARRIVED, 0, pos, math.min(to, length) - 1, 'BIT')
    if hit < 0 then
      pos = length
    else
      found[#found + 1] = hit
      pos = hit + 1
    end
  end
  return found
end

-- Tier-1 users learn of their release at their next poll, so they reach this queue shuffled.
-- A free slot is held for a lower number still on its way: only numbers below the first
-- missing one may be admitted. Every number below `order_cursor` is settled (arrived, or
-- waived). A gap below the head holds admission for at most the grace; then every number
-- still missing below the highest one that was waiting when the hold began is waived (each
-- is then late by more than the grace behind a higher number, and one hold per missing
-- number would stall admission when many released users never come). A waived number that
-- arrives later sorts to the front and goes next.
-- A pre-queue event's scores are `base` + Tier-1 number (after sale start) or roster ranks
-- below `base` (owed first, never held for a number).
-- Returns how many waiters may be popped, whether it holds and the numbers it waived.
local function order_gate(now, base)
  local state = redis.call('HMGET', K_STATS, 'order_cursor', 'hold_since_ms', 'hold_mark')
  local cursor = tonumber(state[1]) or FIRST_TIER1_NUMBER
  local hold_since, hold_mark = tonumber(state[2]), tonumber(state[3])
  local missing = first_missing(cursor)
  local head = redis.call('ZRANGE', K_QUEUE, 0, 0, 'WITHSCORES')
  local held, waived = 0, {}
  if #head > 0 and missing < tonumber(head[2]) - base then
    if not hold_since then
      hold_since = now
      hold_mark = tonumber(redis.call('ZRANGE', K_QUEUE, -1, -1, 'WITHSCORES')[2]) - base
    end
    if now - hold_since >= grace_ms then
      local waive_to = math.max(tonumber(head[2]) - base, hold_mark or 0)
      waived = missing_between(missing, waive_to)
      missing = first_missing(waive_to)
      hold_since = nil
    else
      held = 1
    end
  else
    hold_since = nil
  end
  if hold_since then
    redis.call('HSET', K_STATS, 'order_cursor', missing, 'hold_since_ms', hold_since,
      'hold_mark', hold_mark)
  else
    redis.call('HSET', K_STATS, 'order_cursor', missing)
    redis.call('HDEL', K_STATS, 'hold_since_ms', 'hold_mark')
  end
  -- Waived numbers as the admissions report them (their queue scores).
  for i = 1, #waived do waived[i] = base + waived[i] end
  return redis.call('ZCOUNT', K_QUEUE, '-inf', '(' .. (base + missing)), held, waived
end

local cfg = load_config()
if not cfg then return {-1} end
local now = now_ms()

local expired = redis.call('ZRANGEBYSCORE', K_ACTIVE, '-inf', now, 'LIMIT', 0, max_expire)
if #expired > 0 then
  redis.call('ZREM', K_ACTIVE, unpack(expired))
  redis.call('HDEL', K_TOKENS, unpack(expired))
  for i = 1, #expired do end_stay(expired[i], now) end
end
local active = redis.call('ZCARD', K_ACTIVE)

local admitted, numbers, dropped, dropped_numbers = {}, {}, {}, {}
-- Ordered by key (the random method without a Tier-1 room, or passthrough/reject after it):
-- the score popped is the admission's order key (QueueStore.random_order_seed's rule).
local keyed = cfg.by_key and not cfg.tier1 and cfg.method ~= 'fifo'
local keys = {}
local held, waived = 0, {}
-- Checked before any write of the admission: a failing outbox fails the tick with nothing done.
local outbox_full = not outbox_open(outbox_cap)
-- The method 'reject' admits nobody from the queue (its waiters are turned away at their poll).
-- A pre-queue event admits nobody until the reveal has placed its shuffled roster in line.
local held_for_roster = cfg.prequeue and not prequeue_revealed()
if (cfg.mode == 'queue' or cfg.mode == 'closed') and cfg.method ~= 'reject'
    and not held_for_roster and not outbox_full then
  -- Token bucket shared by every replica: the rate holds however many loops run.
  local bucket = redis.call('HMGET', K_RATE, 'tokens', 'ts')
  local tokens, ts = tonumber(bucket[1]), tonumber(bucket[2])
  if not tokens or not ts then tokens, ts = 0, now end
  local burst = math.max(1, cfg.aps)
  tokens = math.min(burst, tokens + math.max(0, now - ts) * cfg.aps / 1000)
  local budget = math.min(cfg.capacity - active, math.floor(tokens), max_admit)
  local scan_limit = max_scan
  if cfg.tier1 and grace_ms > 0 then
    local eligible
    eligible, held, waived = order_gate(now, cfg.prequeue and AFTER_ROSTER or 0)
    scan_limit = math.min(max_scan, eligible)
    -- A hold counts only when it kept a slot empty that the budget would have filled.
    if budget <= 0 then held = 0 end
  end
  local scanned = 0
  while #admitted < budget and scanned < scan_limit do
    local popped = redis.call('ZPOPMIN', K_QUEUE, math.min(budget - #admitted, scan_limit - scanned))
    if #popped == 0 then break end
    for i = 1, #popped, 2 do
      scanned = scanned + 1
      local member = popped[i]
      local number = waiter_number(cfg, member, popped[i + 1])
      if cfg.by_key then redis.call('HDEL', K_ORDINALS, member) end
      if is_live(cfg, number, now) then
        admitted[#admitted + 1] = member
        -- A pre-queue event reports the owed place: the roster rank (or the later arrival's
        -- score), which is what its admission log is audited against.
        numbers[#numbers + 1] = cfg.prequeue and popped[i + 1] or number
        keys[#keys + 1] = keyed and tonumber(popped[i + 1]) or false
      else
        dropped[#dropped + 1] = member
        dropped_numbers[#dropped_numbers + 1] = number
      end
    end
  end
  for i = 1, #dropped do end_stay(dropped[i], now) end
  if outbox_cap > 0 then
    -- Before this tick's admissions: the log must show a waiver before a late number is
    -- admitted behind higher ones. Chunked, so no record nears Kafka's message size limit.
    local record = 0
    for first = 1, #waived, WAIVERS_PER_RECORD do
      record = record + 1
      local last = math.min(#waived, first + WAIVERS_PER_RECORD - 1)
      local chunk = {}
      -- '%d': a pre-queue event's numbers are 2^40 + n, past Lua's 14 printed digits soon.
      for k = first, last do chunk[#chunk + 1] = string.format('%d', waived[k]) end
      outbox_add({'id', record_prefix .. '-' .. record, 'type', 'waived',
        'numbers', table.concat(chunk, ','), 'at', now})
    end
    for i = 1, #admitted do
      record = record + 1
      outbox_admitted(record_prefix .. '-' .. record, admitted[i], numbers[i], i, now, nil,
        keys[i])
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
  dropped_numbers, held, #waived, waived, outbox_full and 1 or 0}
