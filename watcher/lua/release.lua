-- Give back jobs a stopping worker did not finish: to the front of wait, the attempt undone.
-- KEYS[1] = active ZSET. ARGV: prefix, then id, token pairs. Returns the number released.
local P = ARGV[1]
local released = 0
for b = 2, #ARGV, 2 do
  local jk = P .. 'job:' .. ARGV[b]
  if redis.call('HGET', jk, 'token') == ARGV[b + 1] then
    redis.call('ZREM', P .. 'active', ARGV[b])
    redis.call('HINCRBY', jk, 'att', -1)
    redis.call('HSET', jk, 'st', 'wait', 'token', '')
    redis.call('LPUSH', P .. 'wait', ARGV[b])
    released = released + 1
  end
end
if released > 0 then
  redis.call('LPUSH', P .. 'marker', 1)
  redis.call('LTRIM', P .. 'marker', 0, 63)
end
return released
