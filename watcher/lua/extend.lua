-- Extend the leases a worker still holds.
-- KEYS: active
-- ARGV: prefix, lease ms, then id, token pairs.
-- Returns: the ids whose lease was lost (the token no longer matches).
local active = KEYS[1]
local P, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local lost = {}
for b = 3, #ARGV, 2 do
  if redis.call('HGET', P .. 'job:' .. ARGV[b], 'token') == ARGV[b + 1] then
    redis.call('ZADD', active, 'XX', now + lease, ARGV[b])
  else
    lost[#lost + 1] = ARGV[b]
  end
end
return lost
