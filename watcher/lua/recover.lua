-- Recover jobs whose lease expired (their worker died or lost Redis for too long): back to
-- the front of wait with a new token on the next take, or failed once attempts are used up;
-- their host slots are freed.
-- Parked runs (over a host's concurrency) whose host has free slots again, its runs having
-- ended without freeing them (workers that died, a budget raised), go back to wait.
-- KEYS: active wait marker events finished stat:failed failing hosts parked
-- ARGV: prefix, max jobs, keep ms, finished cap.
-- Returns: the number of expired leases handled (requeued or failed).
local active, wait, marker, events, finished, failed, failing, hosts, parked =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local P, limit, keep, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()
local expired = redis.call('ZRANGEBYSCORE', active, '-inf', now, 'LIMIT', 0, limit)
local requeued = 0
for _, jid in ipairs(expired) do
  redis.call('ZREM', active, jid)
  local jk = P .. 'job:' .. jid
  local j = redis.call('HMGET', jk, 'att', 'max', 'sched', 'wk', 'host')
  if j[5] and j[5] ~= '' then free_slot(P, j[5], jid, wait, marker) end
  if j[1] then
    if tonumber(j[1]) >= tonumber(j[2]) then
      redis.call('HSET', jk, 'st', FAILED, 'token', '', 'err', 'lease expired on every attempt',
        'finished', now)
      redis.call('INCR', failed)
      retire(jk, jid, keep, finished, cap)
      local sk = P .. 'scheduler:' .. j[3]
      if j[3] ~= '' and redis.call('HGET', sk, 'active') == jid then
        redis.call('HSET', sk, 'active', '')
        fail_once(sk, failing, j[3])
      end
    else
      redis.call('HSET', jk, 'st', WAIT, 'token', '')
      redis.call('LPUSH', wait, jid)
      requeued = requeued + 1
    end
    event(events, 'event', 'stalled', 'job', jid, 'scheduler', j[3], 'worker', j[4] or '')
  end
end
for _, h in ipairs(redis.call('SMEMBERS', parked)) do
  local hk = P .. 'host:' .. h
  local b = host_budget(hosts, h)
  redis.call('ZREMRANGEBYSCORE', hk .. ':slots', '-inf', now)
  local free = (b and b.conc > 0) and (b.conc - redis.call('ZCARD', hk .. ':slots')) or 1000
  if free > 0 then
    local go = redis.call('LPOP', hk .. ':waiting', free)
    if go then
      for _, jid in ipairs(go) do redis.call('LPUSH', wait, jid) end
      requeued = requeued + #go
    end
  end
  if redis.call('LLEN', hk .. ':waiting') == 0 then redis.call('SREM', parked, h) end
end
if requeued > 0 then wake(marker) end
return #expired
