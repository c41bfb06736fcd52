-- Finish jobs: complete, fail, or schedule a retry, each only if the caller still holds the
-- job's lease token (a job whose lease expired and was taken again is not the caller's).
-- A completed scheduler run writes its state back fenced: only if the state epoch is unchanged
-- and no newer run wrote first; a fenced-off write is counted in stat:fenced.
-- A run's host (take.lua leased it a slot) gets the slot back; a host that pushed back (429,
-- or 503 with Retry-After) is paused for every worker: for its Retry-After, or after 429s
-- without one, for 1 s doubling with each in a row (a success ends the streak).
-- A successful run may hold its scheduler's next run (a server's word on freshness): its
-- next fire time moves to now + hold when that is later, never earlier.
-- A resource with alerts tells its notifiers (through the outbox) when it goes down (after
-- `after` runs in a row gave up; again every `remind` ms while down), when it recovers, and
-- when it has not changed for `stale` ms.
-- KEYS: active delayed events finished stat:completed stat:failed stat:fenced failing wait marker schedulers deadlines deliveries delivery_id hostnames
-- ARGV: prefix, keep ms, keep ms for a scheduler's successful run (its outcome lives on in the
-- scheduler's report), finished cap, then a JSON array with one array of 10 strings per job
-- (one argument: packing thousands costs a client most):
--   id, token, kind (ok|fail|retry), retry delay ms, result or error, state ("~" = none),
--   report ("~" = none), host pause ("" none, ms, or "x": back off), hold ms ("" = none),
--   alert ("" = none; JSON: after, remind, stale (ms), stale_words, notify (an array of
--   {name, ms to deliver within}), message (what every event says besides its own words))
-- Returns: one code per job: 1 done, 0 lease lost, 2 done but its state write was fenced off,
-- 3 vanished (its hash is gone: Redis lost its data, or it ran elsewhere and expired); plus 8
-- when this job started a pause of its host (the host was not paused before).
local active, delayed, events, finished = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local completed, failed, fenced, failing = KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local wait, marker, schedulers = KEYS[9], KEYS[10], KEYS[11]
local deadlines, counts, delivery_ids, hostnames = KEYS[12], KEYS[13], KEYS[14], KEYS[15]
local P, keep, keep_runs, cap = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local now = now_ms()

local function pause_host(h, pause)
  local hk = P .. 'host:' .. h
  redis.call('SADD', hostnames, h) -- status lists the hosts named there
  local ms
  if pause == 'x' then
    ms = 1000 * 2 ^ (redis.call('HINCRBY', hk, 'strikes', 1) - 1)
  else
    ms = tonumber(pause)
  end
  local until_ms = now + math.min(ms, MAX_PAUSE_MS)
  local was = tonumber(redis.call('HGET', hk, 'paused') or '0')
  if until_ms > was then redis.call('HSET', hk, 'paused', until_ms) end
  return was <= now and 8 or 0
end

local function tell(alert, resource, event, why)
  alert_event(P, deadlines, counts, delivery_ids, alert, resource, event, why, now)
end

local function alerts(sk, resource, ok, alert)
  local said = (alert.message or {}).summary or ''
  if ok then
    local s = redis.call('HMGET', sk, 'alerted', 'down_runs', 'last_change', 'since', 'stale',
      'created')
    if s[1] then
      tell(alert, resource, 'recovered', 'recovered after ' .. (s[2] or '?') .. ' failed runs: ' .. said)
    end
    if s[1] or s[2] then redis.call('HDEL', sk, 'alerted', 'down_runs') end
    local stale = tonumber(alert.stale or 0)
    -- no change yet: counted from the first successful run (schedulers made before that
    -- field stored `created`)
    local since = s[3] or s[4] or s[6]
    if stale > 0 and not since then redis.call('HSET', sk, 'since', now) end
    if stale > 0 and not s[5] and now - tonumber(since or now) >= stale then
      redis.call('HSET', sk, 'stale', 1)
      tell(alert, resource, 'stale', 'no change for ' .. (alert.stale_words or stale .. ' ms'))
    end
    return
  end
  local runs = redis.call('HINCRBY', sk, 'down_runs', 1)
  local after, remind = tonumber(alert.after or 0), tonumber(alert.remind or 0)
  if after > 0 and runs >= after then
    local alerted = tonumber(redis.call('HGET', sk, 'alerted') or '0')
    if alerted == 0 or (remind > 0 and now - alerted >= remind) then
      redis.call('HSET', sk, 'alerted', now)
      tell(alert, resource, 'down', 'down after ' .. runs .. ' failed runs: ' .. said)
    end
  end
end

local out = {}
local completed_n, failed_n = 0, 0
for _, row in ipairs(cjson.decode(ARGV[5])) do
  local jid, token, kind, delay, payload, state, report, pause, hold, alert =
    row[1], row[2], row[3], row[4], row[5], row[6], row[7], row[8], row[9], row[10]
  local jk = P .. 'job:' .. jid
  local j = redis.call('HMGET', jk, 'token', 'sched', 'att', 'max', 'seq', 'epoch', 'host',
    'created')
  if not j[3] then
    out[#out + 1] = 3
  elseif j[1] ~= token then
    out[#out + 1] = 0
  else
    local code = 1
    redis.call('ZREM', active, jid)
    local sk = j[2] ~= '' and (P .. 'scheduler:' .. j[2]) or nil
    local h = j[7]
    if h then
      free_slot(P, h, jid, wait, marker)
      if kind == 'ok' and pause == '' then redis.call('HDEL', P .. 'host:' .. h, 'strikes') end
    end
    if pause ~= '' then
      -- take.lua keeps the host on a run only when it needs it; a pause finds it anyway.
      h = h or (sk and host_of(redis.call('HGET', sk, 'data') or '')) or ''
      if h ~= '' then code = code + pause_host(h, pause) end
    end
    -- A run of an earlier epoch (the scheduler was reset, or removed and created again)
    -- leaves the scheduler's failures, report and state alone.
    local s = sk and redis.call('HMGET', sk, 'epoch', 'active', 'wseq', 'respec', 'fails', 'rev')
      or {}
    local current = sk ~= nil and s[1] == j[6]
    local write = {} -- the scheduler's fields this run sets, in one HSET
    if kind == 'retry' and tonumber(j[3]) < tonumber(j[4]) then
      redis.call('HSET', jk, 'st', DELAYED, 'token', '', 'err', payload)
      redis.call('ZADD', delayed, now + tonumber(delay), jid)
      event(events, 'event', 'retry', 'job', jid, 'scheduler', j[2], 'attempt', j[3],
        'delay', delay, 'error', payload)
      if current then fail_once(sk, failing, j[2]) end
    else
      if kind == 'ok' then
        redis.call('HSET', jk, 'st', DONE, 'token', '', 'res', payload, 'finished', now)
        completed_n = completed_n + 1
      else
        redis.call('HSET', jk, 'st', FAILED, 'token', '', 'err', payload, 'finished', now)
        failed_n = failed_n + 1
        event(events, 'event', 'failed', 'job', jid, 'scheduler', j[2], 'attempt', j[3],
          'error', payload)
      end
      -- kept a while, listed among the newest finished (the list is trimmed once, below)
      redis.call('PEXPIRE', jk, (kind == 'ok' and j[2] ~= '') and keep_runs or keep)
      redis.call('LPUSH', finished, jid)
      if s[2] == jid then append(write, 'active', '') end
      if current then
        if kind ~= 'ok' then
          fail_once(sk, failing, j[2])
        elseif s[5] then
          recovered(sk, failing, j[2])
        end
        -- a run fired before the schedule last changed holds nothing: the new one starts
        if kind == 'ok' and hold ~= '' and tonumber(j[8] or '0') >= tonumber(s[4] or '0') then
          local score = redis.call('ZSCORE', schedulers, j[2])
          local held = now + tonumber(hold)
          if score and tonumber(score) < held then redis.call('ZADD', schedulers, held, j[2]) end
        end
        if alert ~= '' then alerts(sk, j[2], kind == 'ok', cjson.decode(alert)) end
      end
      if kind == 'ok' and state ~= '~' then
        if current and tonumber(j[5]) >= tonumber(s[3] or '0') then
          append(write, 'state', state, 'wseq', j[5], 'rev', tonumber(s[6] or '0') + 1)
        else
          code = code + 1
          redis.call('INCR', fenced)
        end
      end
    end
    if current and report ~= '~' then append(write, 'report', report) end
    if #write > 0 then redis.call('HSET', sk, unpack(write)) end
    out[#out + 1] = code
  end
end
if completed_n + failed_n > 0 then redis.call('LTRIM', finished, 0, cap - 1) end
if completed_n > 0 then redis.call('INCRBY', completed, completed_n) end
if failed_n > 0 then redis.call('INCRBY', failed, failed_n) end
return out
