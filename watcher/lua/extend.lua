-- Extend the leases a worker still holds.
-- KEYS: active
-- ARGV: prefix, lease ms, then id, token pairs.
-- Returns: {taken, vanished}: the ids whose lease was lost (the token no longer matches), and
-- those whose job hash is gone (Redis lost its data, or the job ran elsewhere and expired).
local active = KEYS[1]
local P, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local taken, vanished = {}, {}
for b = 3, #ARGV, 2 do
  local token = redis.call('HGET', P .. 'job:' .. ARGV[b], 'token')
  if token == ARGV[b + 1] then
    redis.call('ZADD', active, 'XX', now + lease, ARGV[b])
  elseif token then
    taken[#taken + 1] = ARGV[b]
  else
    vanished[#vanished + 1] = ARGV[b]
  end
end
return {taken, vanished}
