-- Keep the entry token minted for one admission: the first one stored wins, so every status
-- call of that admission answers the same token. Nothing is stored when the admission has
-- ended or is another one (different session end) since the token was minted.
-- ARGV: seen prefix, member, session end (ms) the token was minted for, token.
-- Reply: the admission's token, or false when the admission is gone.
local member, session_end, token = ARGV[2], tonumber(ARGV[3]), ARGV[4]
local current = redis.call('ZSCORE', K_ACTIVE, member)
if not current or tonumber(current) ~= session_end then return false end
redis.call('HSETNX', K_TOKENS, member, token)
return redis.call('HGET', K_TOKENS, member)
