-- Release the holds in KEYS that belong to ARGV[1] (owner); others' holds stay.
-- Returns how many were released.
local released = 0
for _, key in ipairs(KEYS) do
  local current = redis.call('GET', key)
  if current then
    local sep = string.find(current, ' ', 1, true)
    local owner = sep and string.sub(current, 1, sep - 1) or current
    if owner == ARGV[1] then
      redis.call('DEL', key)
      released = released + 1
    end
  end
end
return released
