-- Extend the leases a worker still holds. KEYS[1] = active ZSET.
-- ARGV: prefix, lease ms, then id, token pairs. Returns the ids whose lease was lost.
local P, lease = ARGV[1], tonumber(ARGV[2])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local lost = {}
for b = 3, #ARGV, 2 do
  if redis.call('HGET', P .. 'job:' .. ARGV[b], 'token') == ARGV[b + 1] then
    redis.call('ZADD', P .. 'active', 'XX', now + lease, ARGV[b])
  else
    lost[#lost + 1] = ARGV[b]
  end
end
return lost
