-- Release the owner's holds among the seats in KEYS[3..] (ids in ARGV[3..], same order);
-- others' holds stay. KEYS[1] the owner's live holds, KEYS[2] the owner's hold starts.
-- ARGV[1] owner, ARGV[2] release only holds first started at or before this ms (0: all):
-- a session-end notice that arrives late must not release the holds of a newer session.
-- Returns how many were released.
local owner, not_after = ARGV[1], tonumber(ARGV[2])
local released = 0
for i = 3, #KEYS do
  local seat = ARGV[i]
  local current = redis.call('GET', KEYS[i])
  if current then
    local sep = string.find(current, ' ', 1, true)
    local holder = sep and string.sub(current, 1, sep - 1) or current
    local started = 0
    if not_after > 0 then
      local recorded = redis.call('HGET', KEYS[2], seat)
      if recorded then
        started = tonumber(string.sub(recorded, 1, (string.find(recorded, ' ', 1, true) or 0) - 1)) or 0
      end
    end
    if holder == owner and (not_after == 0 or started <= not_after) then
      redis.call('DEL', KEYS[i])
      redis.call('ZREM', KEYS[1], seat)
      released = released + 1
    end
  end
end
return released
