-- Publish a policy set unless a newer one is already there (two admin replicas may publish
-- out of order). KEYS[1]: the set's key. ARGV[1]: version, ARGV[2]: the set's JSON,
-- ARGV[3]: the change channel. Returns 1 when this set was published, 0 when it was older.
local current = redis.call('HGET', KEYS[1], 'version')
if current and tonumber(current) >= tonumber(ARGV[1]) then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'set', ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
