-- Add one-off jobs. KEYS[1] = wait LIST. ARGV: prefix, then 4 fields per job:
-- name, data (JSON), delay in ms, max attempts. Returns the job ids.
local P = ARGV[1]
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ids = {}
local waiting = 0
for b = 2, #ARGV, 4 do
  local jid = tostring(redis.call('INCR', P .. 'id'))
  local delay = tonumber(ARGV[b + 2])
  local key = P .. 'job:' .. jid
  redis.call('HSET', key, 'name', ARGV[b], 'data', ARGV[b + 1], 'sched', '', 'at', '',
    'att', 0, 'max', ARGV[b + 3], 'created', now, 'st', delay > 0 and 'delayed' or 'wait')
  if delay > 0 then
    redis.call('ZADD', P .. 'delayed', now + delay, jid)
  else
    redis.call('RPUSH', P .. 'wait', jid)
    waiting = waiting + 1
  end
  ids[#ids + 1] = jid
end
if waiting > 0 then
  redis.call('LPUSH', P .. 'marker', 1)
  redis.call('LTRIM', P .. 'marker', 0, 63)
end
return ids
