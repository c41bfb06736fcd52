-- Take up to n jobs for a worker: promote due delayed jobs, pop from wait, lease each one
-- (active ZSET: job -> deadline) under a fresh token. A scheduler's run reads the scheduler's
-- data and state now (the latest), and gets a run sequence number and the state epoch that
-- fence its write-back.
-- KEYS: delayed wait active marker
-- ARGV: prefix, n, lease ms, worker id, token prefix.
-- Returns: the server time (ms) the jobs were taken, then 12 fields per job: id, token, name,
-- data, state, scheduler, at, attempt, max, seq, epoch, the scheduler's failures in a row
-- (scheduler, at, seq, epoch and failures are "" for a one-off job).
local delayed, wait, active, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local P, n, lease, worker, tp = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
for _, jid in ipairs(due) do
  redis.call('ZREM', delayed, jid)
  redis.call('RPUSH', wait, jid)
  redis.call('HSET', P .. 'job:' .. jid, 'st', WAIT)
end
local ids = redis.call('LPOP', wait, n)
if not ids then return {now} end
local out = {now}
for i, jid in ipairs(ids) do
  local jk = P .. 'job:' .. jid
  local j = redis.call('HMGET', jk, 'name', 'sched', 'at', 'data', 'att', 'max')
  if j[5] then
    local name, data, state, seq, epoch, fails = j[1], j[4] or '', '', '', '', ''
    local runnable = true
    if j[2] ~= '' then
      local sk = P .. 'scheduler:' .. j[2]
      local s = redis.call('HMGET', sk, 'name', 'data', 'state', 'epoch', 'fails')
      if not s[1] then
        runnable = false -- the scheduler was removed after this run fired
        redis.call('DEL', jk)
      else
        name, data, state, epoch, fails = s[1], s[2] or '{}', s[3] or '', s[4], s[5] or '0'
        seq = redis.call('HINCRBY', sk, 'seq', 1)
        redis.call('HSET', sk, 'last_run', now)
      end
    end
    if runnable then
      local token = tp .. i
      local att = tonumber(j[5]) + 1
      redis.call('HSET', jk, 'st', ACTIVE, 'token', token, 'wk', worker, 'started', now,
        'att', att, 'seq', seq, 'epoch', epoch)
      redis.call('ZADD', active, now + lease, jid)
      for _, v in ipairs({jid, token, name, data, state, j[2], j[3], att, j[6], seq, epoch, fails}) do
        out[#out + 1] = v
      end
    end
  end
end
if redis.call('LLEN', wait) > 0 then wake(marker) end
return out
