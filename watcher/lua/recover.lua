-- Recover jobs whose lease expired (their worker died or lost Redis for too long): back to
-- the front of wait with a new token on the next take, or failed once attempts are used up.
-- KEYS[1] = active ZSET. ARGV: prefix, max jobs, keep ms, finished cap. Returns the number
-- recovered.
local P, limit, keep, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', P .. 'active', '-inf', now, 'LIMIT', 0, limit)
local requeued = 0
for _, jid in ipairs(expired) do
  redis.call('ZREM', P .. 'active', jid)
  local jk = P .. 'job:' .. jid
  local j = redis.call('HMGET', jk, 'att', 'max', 'sched', 'wk')
  if j[1] then
    if tonumber(j[1]) >= tonumber(j[2]) then
      redis.call('HSET', jk, 'st', 'failed', 'token', '', 'err', 'lease expired on every attempt', 'finished', now)
      redis.call('INCR', P .. 'stat:failed')
      redis.call('PEXPIRE', jk, keep)
      redis.call('LPUSH', P .. 'finished', jid)
      redis.call('LTRIM', P .. 'finished', 0, cap - 1)
      local sk = P .. 'scheduler:' .. j[3]
      if j[3] ~= '' and redis.call('HGET', sk, 'active') == jid then
        redis.call('HSET', sk, 'active', '')
        redis.call('HINCRBY', sk, 'fails', 1)
      end
    else
      redis.call('HSET', jk, 'st', 'wait', 'token', '')
      redis.call('LPUSH', P .. 'wait', jid)
      requeued = requeued + 1
    end
    redis.call('XADD', P .. 'events', 'MAXLEN', '~', 10000, '*', 'event', 'stalled', 'job', jid,
      'scheduler', j[3], 'worker', j[4] or '')
  end
end
if requeued > 0 then
  redis.call('LPUSH', P .. 'marker', 1)
  redis.call('LTRIM', P .. 'marker', 0, 63)
end
return #expired
