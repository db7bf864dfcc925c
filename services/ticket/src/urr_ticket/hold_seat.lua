-- Hold one seat for its owner, within the event's cap and the owner's Tier-2 session.
-- KEYS[1] the seat's hold (seat-lock), KEYS[2] the owner's live holds (zset seat -> end ms),
-- KEYS[3] the owner's hold starts in this session (hash seat -> "startMs sessionEndMs").
-- ARGV[1] owner, ARGV[2] hold id for a new hold, ARGV[3] holdSeconds in ms, ARGV[4] end of
-- the owner's session in ms (0: unknown), ARGV[5] maxSeatsPerUser, ARGV[6] seat id,
-- ARGV[7..] seats the owner already has in reservations (pending, awaiting payment, sold).
-- A hold ends at the earlier of its first start in the session + holdSeconds and the session
-- end; holding again (also after a release) never moves that. Times are Redis's clock.
-- Returns {code, holdId, endsAtMs, seatsCounted}: 1 held by the owner (new or already),
-- 0 held by someone else, -1 over the cap, -2 the session is over, -3 the seat's hold time
-- in this session is used up.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local owner, seat = ARGV[1], ARGV[6]
local hold_ms, session_end, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])

local current = redis.call('GET', KEYS[1])
if current then
  local sep = string.find(current, ' ', 1, true)
  local holder = sep and string.sub(current, 1, sep - 1) or current
  local ends = now + math.max(redis.call('PTTL', KEYS[1]), 0)
  if holder == owner then
    return {1, sep and string.sub(current, sep + 1) or '', ends, 0}
  end
  return {0, '', ends, 0}
end
if session_end > 0 and session_end <= now then
  return {-2, '', session_end, 0}
end

-- The owner's seats: live holds (ended ones dropped; this seat is free, so any entry for it
-- is stale) plus reserved seats not also held, each seat once.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREM', KEYS[2], seat)
local counted = redis.call('ZCARD', KEYS[2])
for i = 7, #ARGV do
  if ARGV[i] ~= seat and not redis.call('ZSCORE', KEYS[2], ARGV[i]) then
    counted = counted + 1
  end
end
if counted >= limit then
  return {-1, '', 0, counted}
end

local started = now
local recorded = redis.call('HGET', KEYS[3], seat)
if recorded then
  local sep = string.find(recorded, ' ', 1, true)
  if sep and tonumber(string.sub(recorded, sep + 1)) == session_end then
    started = tonumber(string.sub(recorded, 1, sep - 1))
  end
end
local ends = started + hold_ms
if session_end > 0 and session_end < ends then
  ends = session_end
end
if ends <= now then
  return {-3, '', ends, counted}
end

local function keep_until(key, at_ms)
  local ttl = redis.call('PTTL', key)
  if ttl < 0 or now + ttl < at_ms then
    redis.call('PEXPIREAT', key, at_ms)
  end
end

redis.call('SET', KEYS[1], owner .. ' ' .. ARGV[2], 'PX', ends - now)
redis.call('ZADD', KEYS[2], ends, seat)
redis.call('HSET', KEYS[3], seat, started .. ' ' .. session_end)
-- Each index lives as long as what it describes: the live holds until the last one ends,
-- the start times until the session ends (with no session known, until the hold would).
keep_until(KEYS[2], ends)
keep_until(KEYS[3], math.max(session_end, ends))
return {1, ARGV[2], ends, counted + 1}
