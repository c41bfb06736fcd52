-- Add one-off jobs.
-- KEYS: id wait delayed marker
-- ARGV: prefix, a JSON array with one array per job: name, data (JSON), delay in ms, max
-- attempts (one argument: packing thousands costs a client most).
-- Returns: the new job ids, in order.
local id_key, wait, delayed, marker = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local P = ARGV[1]
local now = now_ms()
local ids = {}
local waiting = 0
for _, row in ipairs(cjson.decode(ARGV[2])) do
  local jid = tostring(redis.call('INCR', id_key))
  local delay = tonumber(row[3])
  redis.call('HSET', P .. 'job:' .. jid, 'name', row[1], 'data', row[2], 'sched', '',
    'at', '', 'att', 0, 'max', row[4], 'created', now, 'st', delay > 0 and DELAYED or WAIT)
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
