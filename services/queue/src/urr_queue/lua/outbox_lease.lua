-- One event's admission outbox (issue 19): how deep and how old it is, and which replica relays
-- it. Loaded on its own (no _common.lua). Time is Redis's clock: an entry's id is the ms of
-- Redis's clock when the tick wrote it.
-- KEYS: the event's config, outbox and lease (one hash tag).
-- ARGV: owner (the relaying replica), lease ms, 'claim', 'measure' or 'release'.
-- claim: {owned (1: this owner relays the outbox now), depth, oldest entry's age ms, gone (1:
--   the event is deleted and its outbox empty, so the outbox and lease keys are deleted too)}.
--   An empty outbox is nobody's to claim; a held lease is renewed by its owner only.
-- measure: the same reply, the lease untouched (owned 0): a replica without a working Kafka
--   producer measures only, so its lease lapses and a replica that can relay takes over.
-- release: {1 when this owner's lease was given up (at shutdown), else 0}.
local K_CONFIG, K_OUTBOX, K_LEASE = KEYS[1], KEYS[2], KEYS[3]
local owner, lease_ms = ARGV[1], ARGV[2]

if ARGV[3] == 'release' then
  if redis.call('GET', K_LEASE) == owner then return {redis.call('DEL', K_LEASE)} end
  return {0}
end

local depth = redis.call('XLEN', K_OUTBOX)
if depth == 0 then
  -- Deleted with the key in one step, so a tick of a re-created event cannot write in between.
  if redis.call('EXISTS', K_CONFIG) == 0 then
    redis.call('DEL', K_OUTBOX, K_LEASE)
    return {0, 0, 0, 1}
  end
  return {0, 0, 0, 0}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local oldest = redis.call('XRANGE', K_OUTBOX, '-', '+', 'COUNT', 1)[1][1]
local age = math.max(0, now - tonumber(string.match(oldest, '^(%d+)')))

if ARGV[3] ~= 'claim' then return {0, depth, age, 0} end
local holder = redis.call('GET', K_LEASE)
local owned = 0
if holder == owner then
  redis.call('PEXPIRE', K_LEASE, lease_ms)
  owned = 1
elseif not holder then
  redis.call('SET', K_LEASE, owner, 'PX', lease_ms)
  owned = 1
end
return {owned, depth, age, 0}
