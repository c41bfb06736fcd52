-- Take up to n jobs for a worker: promote due delayed jobs, pop from wait, lease each one
-- (active ZSET: job -> deadline) under a fresh token. A scheduler's run reads the scheduler's
-- data and state now (the latest), and gets a run sequence number and the state epoch that
-- fence its write-back.
-- When the queue has host budgets (the `hosts` hash, written by sync), a run is admitted
-- only within its host's: not while the host is paused (then delayed until the pause ends),
-- not beyond its concurrency (then parked in the host's `waiting` list until a slot is
-- freed: see free_slot), not beyond its rate (then delayed to its reserved place in the
-- bucket, GCRA). A held run is not attempted: no attempt, failure or retry is counted.
-- A job id in wait whose hash is missing goes back to the end of wait for a while: during a
-- reshard this script runs where the queue's fixed keys are, and the job's hash (a key named
-- from data, so not declared) may still be on the node the slot is leaving. An id whose hash
-- stays missing for ORPHAN_MS (lost with Redis's memory) is dropped then.
-- A host whose budget state this writes is named in `hostnames` (status lists them from it).
-- KEYS: delayed wait active marker hosts parked orphans hostnames
-- ARGV: prefix, n, lease ms, worker id, token prefix.
-- Returns: the server time (ms) the jobs were taken, the runs held back as JSON
-- ({host: {reason: count}}, "" for none), then 12 fields per job: id, token, name, data,
-- state, scheduler, at, attempt, max, seq, epoch, the scheduler's failures in a row
-- (scheduler, at, seq, epoch and failures are "" for a one-off job).
local delayed, wait, active, marker, hosts, parked, orphans, hostnames =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local P, n, lease, worker, tp = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4], ARGV[5]
local now = now_ms()
local due = redis.call('ZRANGEBYSCORE', delayed, '-inf', now, 'LIMIT', 0, 1000)
for _, jid in ipairs(due) do
  redis.call('ZREM', delayed, jid)
  redis.call('RPUSH', wait, jid)
  redis.call('HSET', P .. 'job:' .. jid, 'st', WAIT)
end
-- Read, not popped: they leave wait once taken (the LTRIM after the loop).
local ids = redis.call('LRANGE', wait, 0, n - 1)
if #ids == 0 then return {now, ''} end

local limited = redis.call('EXISTS', hosts) == 1
local budgets, states, held, any_held = {}, {}, {}, false

local function budget_of(h)
  if budgets[h] == nil then budgets[h] = host_budget(hosts, h) end
  return budgets[h]
end

-- A host's pause and 429 streak, read once per call (nothing changes them meanwhile).
local function state_of(h)
  if states[h] == nil then
    local s = redis.call('HMGET', P .. 'host:' .. h, 'paused', 'strikes')
    states[h] = {paused = tonumber(s[1] or '0'), strikes = s[2] ~= false}
  end
  return states[h]
end

local named = {} -- hosts named in `hostnames` by this call
local function name(h)
  if not named[h] then
    redis.call('SADD', hostnames, h)
    named[h] = true
  end
end

local function hold(h, reason, hk)
  name(h)
  redis.call('HINCRBY', hk, 'held:' .. reason, 1)
  held[h] = held[h] or {}
  held[h][reason] = (held[h][reason] or 0) + 1
  any_held = true
  return reason
end

-- Nil when the run may start now (its slot and token taken), else why it is held.
local function admit(jid, jk, h, b, reserved)
  local hk = P .. 'host:' .. h
  if b.conc > 0 or b.interval > 0 then name(h) end
  local paused = state_of(h).paused
  if paused > now then
    redis.call('ZADD', delayed, paused, jid)
    redis.call('HSET', jk, 'st', DELAYED)
    return hold(h, 'paused', hk)
  end
  local slots = hk .. ':slots'
  if b.conc > 0 then
    redis.call('ZREMRANGEBYSCORE', slots, '-inf', now) -- slots of workers that died
    if redis.call('ZCARD', slots) >= b.conc then
      redis.call('RPUSH', hk .. ':waiting', jid)
      redis.call('SADD', parked, h)
      return hold(h, 'concurrency', hk)
    end
  end
  if b.interval > 0 and reserved ~= '1' then
    local tat = math.max(tonumber(redis.call('HGET', hk, 'tat') or '0'), now)
    redis.call('HSET', hk, 'tat', tat + b.interval)
    local allowed = tat - (b.burst - 1) * b.interval
    if allowed > now then
      redis.call('ZADD', delayed, allowed, jid)
      redis.call('HSET', jk, 'st', DELAYED, 'rsv', '1')
      return hold(h, 'rate', hk)
    end
  end
  if b.conc > 0 then redis.call('ZADD', slots, now + lease, jid) end
  return nil
end

local out = {now, ''}
local put_back = 0
local function take_one(i, jid)
  local jk = P .. 'job:' .. jid
  local j = redis.call('HMGET', jk, 'name', 'sched', 'at', 'data', 'att', 'max', 'rsv')
  if j[5] then
    local name, data, state, seq, epoch, fails = j[1], j[4] or '', '', '', '', ''
    local runnable = true
    local sk = nil
    if j[2] ~= '' then
      sk = P .. 'scheduler:' .. j[2]
      local s = redis.call('HMGET', sk, 'name', 'data', 'state', 'epoch', 'fails', 'seq')
      if not s[4] then
        runnable = false -- the scheduler was removed after this run fired
        redis.call('DEL', jk)
      else
        name, data, state, epoch = s[1] or DEFAULT_NAME, s[2] or '{}', s[3] or '', s[4]
        fails = s[5] or '0'
        seq = tonumber(s[6] or '0')
      end
    end
    local h = ''
    if runnable and limited then
      h = host_of(data)
      local b = h ~= '' and budget_of(h)
      if b and admit(jid, jk, h, b, j[7]) then runnable = false end
      -- Its host is kept on the run only when its end must tell the host something: a slot
      -- to free, a 429 streak that a success ends (finish.lua finds it for a new pause).
      if not b or (b.conc == 0 and not state_of(h).strikes) then h = '' end
    end
    if runnable then
      if sk then
        seq = seq + 1 -- atomic: nothing else runs meanwhile
        redis.call('HSET', sk, 'seq', seq, 'last_run', now)
      end
      local token = tp .. i
      local att = tonumber(j[5]) + 1
      redis.call('HSET', jk, 'st', ACTIVE, 'token', token, 'wk', worker, 'started', now,
        'att', att, 'seq', seq, 'epoch', epoch)
      if h ~= '' then redis.call('HSET', jk, 'host', h) end
      if j[7] then redis.call('HDEL', jk, 'rsv') end
      redis.call('ZADD', active, now + lease, jid)
      for _, v in ipairs({jid, token, name, data, state, j[2], j[3], att, j[6], seq, epoch, fails}) do
        out[#out + 1] = v
      end
    end
  else
    if may_arrive(orphans, jid, now) then
      redis.call('RPUSH', wait, jid)
      put_back = put_back + 1
    end
  end
end

-- If a job's keys cannot be read here (mid-reshard, on the node the slot is leaving, a key
-- that has already moved: "non local key"), that id and the ones after it stay at the front
-- of wait, untouched, rather than be lost with the error (a run lost so would keep its
-- scheduler busy for good); the jobs taken before it are returned. Any other error is
-- raised once the ids taken are out of wait.
local taken_n, failure = #ids, nil
for i, jid in ipairs(ids) do
  local ok, err = pcall(take_one, i, jid)
  if not ok then
    taken_n, failure = i - 1, err
    break
  end
end
redis.call('LTRIM', wait, taken_n, -1)
put_back = put_back + #ids - taken_n
if failure then
  local message = type(failure) == 'table' and failure.err or tostring(failure)
  if not string.find(message, 'non local key', 1, true) then error(failure) end
end
if any_held then out[2] = cjson.encode(held) end
-- Ids put back wake nobody: the workers' next look (within a second) tries them again.
if redis.call('LLEN', wait) > put_back then wake(marker) end
return out
