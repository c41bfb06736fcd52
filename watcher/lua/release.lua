-- Give back jobs a stopping worker did not finish: to the front of wait, the attempt undone,
-- their host slots freed.
-- KEYS: active wait marker
-- ARGV: prefix, then id, token pairs.
-- Returns: the number released (a job whose lease was lost meanwhile is not the caller's).
local active, wait, marker = KEYS[1], KEYS[2], KEYS[3]
local P = ARGV[1]
local released = 0
for b = 2, #ARGV, 2 do
  local jk = P .. 'job:' .. ARGV[b]
  local j = redis.call('HMGET', jk, 'token', 'host')
  if j[1] == ARGV[b + 1] then
    redis.call('ZREM', active, ARGV[b])
    if j[2] and j[2] ~= '' then free_slot(P, j[2], ARGV[b], wait, marker) end
    redis.call('HINCRBY', jk, 'att', -1)
    redis.call('HSET', jk, 'st', WAIT, 'token', '')
    redis.call('LPUSH', wait, ARGV[b])
    released = released + 1
  end
end
if released > 0 then wake(marker) end
return released
