-- Add one-off jobs.
-- KEYS: id wait delayed marker
-- ARGV: prefix, then 4 fields per job: name, data (JSON), delay in ms, max attempts.
-- Returns: the new job ids, in order.
local id_key, wait, delayed, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local P = ARGV[1]
local now = now_ms()
local ids = {}
local waiting = 0
for b = 2, #ARGV, 4 do
  local jid = tostring(redis.call('INCR', id_key))
  local delay = tonumber(ARGV[b + 2])
  redis.call('HSET', P .. 'job:' .. jid, 'name', ARGV[b], 'data', ARGV[b + 1], 'sched', '',
    'at', '', 'att', 0, 'max', ARGV[b + 3], 'created', now, 'st', delay > 0 and DELAYED or WAIT)
  if delay > 0 then
    redis.call('ZADD', delayed, now + delay, jid)
  else
    redis.call('RPUSH', wait, jid)
    waiting = waiting + 1
  end
  ids[#ids + 1] = jid
end
if waiting > 0 then wake(marker) end
return ids
