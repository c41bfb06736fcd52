-- Extend the leases a worker still holds (and their host slots, which expire with them).
-- KEYS: active
-- ARGV: prefix, lease ms, then id, token pairs.
-- Returns: {taken, vanished}: the ids whose lease was lost (the token no longer matches), and
-- those whose job hash is gone (Redis lost its data, or the job ran elsewhere and expired).
local active = KEYS[1]
local P, lease = ARGV[1], tonumber(ARGV[2])
local now = now_ms()
local taken, vanished = {}, {}
for b = 3, #ARGV, 2 do
  local j = redis.call('HMGET', P .. 'job:' .. ARGV[b], 'token', 'host')
  local token = j[1]
  if token == ARGV[b + 1] then
    redis.call('ZADD', active, 'XX', now + lease, ARGV[b])
    if j[2] and j[2] ~= '' then
      redis.call('ZADD', P .. 'host:' .. j[2] .. ':slots', 'XX', now + lease, ARGV[b])
    end
  elseif token then
    taken[#taken + 1] = ARGV[b]
  else
    vanished[#vanished + 1] = ARGV[b]
  end
end
return {taken, vanished}
