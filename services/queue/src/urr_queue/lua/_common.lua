-- Shared head of every queue script (prepended when the scripts are loaded).
-- KEYS are one event's keys, all under the event's hash tag, in EventKeys order.
-- ARGV[1] is the prefix of the heartbeat bitmaps (same hash tag, so same slot).
-- Time is always Redis's own clock, so every replica agrees on it.
local K_CONFIG, K_QUEUE, K_ACTIVE, K_TOKENS, K_SEQ = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local K_RIDS, K_MARKS, K_STATS, K_ADMITS, K_RATE = KEYS[6], KEYS[7], KEYS[8], KEYS[9], KEYS[10]
local K_ARRIVED = KEYS[11]
-- One admission per Tier-1 place (a place is '<request id>#<position>', see tier1.py):
-- passes: member -> the place its current stay came in with; spent: place -> ms it was spent;
-- unmarked: places spent here that the Tier-1 table has not been told about yet (outbox).
local K_PASSES, K_SPENT, K_UNMARKED = KEYS[12], KEYS[13], KEYS[14]
-- The random method (queue_order 'key'): member -> its arrival number, which names its
-- heartbeat bit while the queue's score is its order key.
local K_ORDINALS = KEYS[15]
-- The pre-queue (issue 19): roster (LIST of hashed ids, join order), hashed id -> member,
-- and the document published at the reveal.
local K_ROSTER, K_ROSTER_MEMBERS, K_PREQUEUE_DOC = KEYS[16], KEYS[17], KEYS[18]
-- The admission outbox (issue 19): a stream of the records the public admission log needs,
-- written by the same script as the admission or waiver it records (outbox.py relays it).
local K_OUTBOX = KEYS[19]
-- Queue scores of a pre-queue event: roster ranks 1..n, then later arrivals from here on.
local AFTER_ROSTER = 1099511627776
local SEEN_PREFIX = ARGV[1]
-- Redis bitmaps stop at 2^32 bits; a queue number above that has no heartbeat (or arrival) bit.
local MAX_BIT = 4294967295

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

local function load_config()
  local v = redis.call('HMGET', K_CONFIG, 'mode', 'capacity', 'admit_per_second', 'session_ms',
    'idle_ms', 'require_tier1', 'heartbeat_ms', 'queue_method', 'queue_order',
    'prequeue_start_ms', 'sale_start_ms')
  if not v[1] then return nil end
  local method = v[8] or 'fifo'
  local prequeue = v[10] and v[10] ~= '' and v[11] and v[11] ~= ''
  return {
    prequeue = prequeue, prequeue_start = tonumber(v[10]), sale_start = tonumber(v[11]),
    mode = v[1], capacity = tonumber(v[2]), aps = tonumber(v[3]), session_ms = tonumber(v[4]),
    idle_ms = tonumber(v[5]), tier1 = (v[6] == '1'), hb_ms = tonumber(v[7]),
    method = method, by_key = (v[9] == 'key'),
    -- Everyone straight in: the operator's mode, or the event's queueing method.
    passthrough = (v[1] == 'passthrough' or method == 'passthrough'),
  }
end

-- HMAC-SHA1 (RFC 2104) from Redis's SHA-1: the random method's order key must be drawn
-- inside the entry script (atomic with taking the place) and agree with Tier 1's Python
-- (urr_common.fairness.order_key).
local function from_hex(text)
  return (text:gsub('..', function(pair) return string.char(tonumber(pair, 16)) end))
end

local function hmac_sha1_hex(key, message)
  if #key > 64 then key = from_hex(redis.sha1hex(key)) end
  key = key .. string.rep('\0', 64 - #key)
  local inner, outer = {}, {}
  for i = 1, 64 do
    local byte = string.byte(key, i)
    inner[i] = string.char(bit.bxor(byte, 0x36))
    outer[i] = string.char(bit.bxor(byte, 0x5c))
  end
  local inner_digest = from_hex(redis.sha1hex(table.concat(inner) .. message))
  return redis.sha1hex(table.concat(outer) .. inner_digest)
end

-- The order key of an arrival: the HMAC's first 13 hex digits (52 bits, exact as a score).
local function order_key(arrival_id)
  local seed = redis.call('HGET', K_CONFIG, 'order_seed')
  return tonumber(string.sub(hmac_sha1_hex(from_hex(seed), arrival_id), 1, 13), 16)
end

-- The queue number naming a waiter's heartbeat bit: its score, or under the random method
-- its arrival number (the score is then its order key).
local function waiter_number(cfg, member, score)
  if cfg.by_key then
    local ordinal = redis.call('HGET', K_ORDINALS, member)
    if ordinal then return tonumber(ordinal) end
  end
  return tonumber(score)
end

-- Heartbeats: one bitmap per time bucket, bit = the waiter's queue number. Costs a bit per
-- waiter per live bucket instead of a per-waiter timestamp.
local function mark_seen(cfg, number, now)
  if number < 0 or number > MAX_BIT then return end
  local key = SEEN_PREFIX .. math.floor(now / cfg.hb_ms)
  redis.call('SETBIT', key, number, 1)
  redis.call('PEXPIRE', key, cfg.idle_ms + 2 * cfg.hb_ms)
end

local function is_live(cfg, number, now)
  if number < 0 or number > MAX_BIT then return true end
  local last = math.floor(now / cfg.hb_ms)
  local first = math.floor((now - cfg.idle_ms) / cfg.hb_ms)
  for bucket = last, first, -1 do
    if redis.call('GETBIT', SEEN_PREFIX .. bucket, number) == 1 then return true end
  end
  return false
end

local function record_admissions(now, count)
  if count > 0 then redis.call('HINCRBY', K_ADMITS, math.floor(now / 1000), count) end
end

-- The session end of a live admission, or nil (an expired one is left for the tick to report).
local function live_admission(member, now)
  local expiry = redis.call('ZSCORE', K_ACTIVE, member)
  if expiry and tonumber(expiry) > now then return tonumber(expiry) end
  return nil
end

-- A Tier-1 place admits once: spent when the stay it brought in ends (queued for Tier 1).
local function spend(place, now)
  if redis.call('HSETNX', K_SPENT, place, now) == 1 then
    redis.call('ZADD', K_UNMARKED, now, place)
  end
end

-- Call after anything that may have ended a member's stay (leave, completion, expiry, idle
-- drop, a new entry): when the member neither waits nor holds a live admission any more, the
-- place its stay came in with is spent.
local function end_stay(member, now)
  local place = redis.call('HGET', K_PASSES, member)
  if not place then return end
  if redis.call('ZSCORE', K_QUEUE, member) or live_admission(member, now) then return end
  redis.call('HDEL', K_PASSES, member)
  spend(place, now)
end

local function admit_now(cfg, member, now)
  local expiry = now + cfg.session_ms
  redis.call('HDEL', K_TOKENS, member)
  redis.call('ZADD', K_ACTIVE, expiry, member)
  record_admissions(now, 1)
  return expiry
end

-- The pre-queue's hashed id of a user: HMAC-SHA1 keyed by the event's secret salt (never the
-- e-mail or the id itself in anything published).
local function roster_id(arrival_id)
  local salt = redis.call('HGET', K_CONFIG, 'prequeue_salt')
  return hmac_sha1_hex(from_hex(salt), arrival_id)
end

local function prequeue_revealed()
  return redis.call('HGET', K_STATS, 'prequeue_revealed') == '1'
end

-- Whether the admission outbox can take another tick's records: `limit` 0 is no outbox (no
-- relay runs), else it holds fewer than `limit` entries. At the cap the tick admits nobody
-- rather than admit without a record (admission.py counts and logs it).
local function outbox_open(limit)
  return limit == 0 or redis.call('XLEN', K_OUTBOX) < limit
end

-- One outbox entry ('*': the id is Redis's clock, so the relay can tell its age).
local function outbox_add(fields)
  redis.call('XADD', K_OUTBOX, '*', unpack(fields))
end

-- The 'admitted' record of one admission (outbox.py's outbox_record turns it into JSON);
-- `id` is unique (a prefix the caller drew, and a counter), `path` nil or 'passthrough'.
local function outbox_admitted(id, member, number, position, now, path, key)
  local fields = {'id', id, 'type', 'admitted', 'member', member, 'number', number,
    'position', position, 'at', now}
  if path then
    fields[#fields + 1] = 'path'
    fields[#fields + 1] = path
  end
  if key then
    -- The random method's order key (the popped score): the log puts it in the leaf.
    fields[#fields + 1] = 'key'
    fields[#fields + 1] = string.format('%d', key)
  end
  outbox_add(fields)
end
