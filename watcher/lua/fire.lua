-- Fire due schedulers: a compare-and-set on each one's next fire time, so a tick fires once
-- however many workers tick at once. With overlap off, a tick whose previous run is still
-- pending or active is skipped and counted. The job carries no data: the run reads the
-- scheduler's data when it starts. A row that says not to run only moves the scheduler (an
-- overdue run put off to a time spread over its interval).
-- KEYS: schedulers id wait marker orphans
-- ARGV: prefix, a JSON array with one array of 5 strings per scheduler: id, expected score,
-- next score ("" = ended), next slot, run ("1", or "0": only move it) (one argument: packing
-- thousands costs a client most).
-- Returns: {fired, skipped}.
local schedulers, id_key, wait, marker, orphans =
  KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local P = ARGV[1]
local now = now_ms()
local fired, skipped = 0, 0
local live = {[WAIT] = true, [ACTIVE] = true, [DELAYED] = true}
local rows = cjson.decode(ARGV[2])
-- Job ids are taken from the counter once per call, as many as there are rows: unique,
-- if not every one is used.
local next_id, last_id = 1, 0
local function new_id()
  if next_id > last_id then
    last_id = redis.call('INCRBY', id_key, #rows)
    next_id = last_id - #rows + 1
  end
  next_id = next_id + 1
  return tostring(next_id - 1)
end
for _, row in ipairs(rows) do
  local id, expected, nxt, slot, run = row[1], row[2], row[3], row[4], row[5]
  local score = redis.call('ZSCORE', schedulers, id)
  if score and tonumber(score) == tonumber(expected) and run == '0' then
    set_next(schedulers, P .. 'scheduler:' .. id, id, nxt, slot)
  elseif score and tonumber(score) == tonumber(expected) then
    local key = P .. 'scheduler:' .. id
    local s = redis.call('HMGET', key, 'spec', 'active', 'overlap', 'limit', 'count', 'attempts',
      'slot')
    if not s[1] then
      scheduler_missing(schedulers, orphans, id, now)
    else
      local limit, count = tonumber(s[4]) or 0, tonumber(s[5]) or 0
      local busy = false
      if s[2] and s[2] ~= '' and s[3] ~= '1' then
        busy = live[redis.call('HGET', P .. 'job:' .. s[2], 'st') or ''] == true
      end
      if busy then
        skipped = skipped + 1
        redis.call('HINCRBY', key, 'skipped', 1) -- counted, not streamed: overload would flood it
      else
        local jid = new_id()
        redis.call('HSET', P .. 'job:' .. jid, 'name', '', 'sched', id, 'at', expected,
          'st', WAIT, 'att', 0, 'max', s[6] or DEFAULT_ATTEMPTS, 'created', now)
        redis.call('RPUSH', wait, jid)
        count = count + 1
        redis.call('HSET', key, 'active', jid, 'count', count)
        fired = fired + 1
      end
      if nxt == '' or (limit > 0 and count >= limit) then
        redis.call('ZREM', schedulers, id)
      else
        set_next(schedulers, key, id, nxt, slot, s[7] ~= false)
      end
    end
  end
end
if fired > 0 then wake(marker) end
return {fired, skipped}
