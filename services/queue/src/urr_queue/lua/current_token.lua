-- The user's stored entry token for this event and Redis's time, in one round trip: ending a
-- session revokes that token for the rest of its life, counted on Redis's clock (before this
-- script, a HGET and a TIME of their own, two round trips per leave).
-- ARGV: seen prefix, member. Reply: {token or false, now (ms)}.
return {redis.call('HGET', K_TOKENS, ARGV[2]), now_ms()}
