-- Record a detected change in the changes stream, fenced like a state write-back: a run whose
-- scheduler was reconfigured, or that a newer run has overtaken, records nothing.
-- KEYS: changes changed
-- ARGV: prefix, scheduler id, seq, epoch, max length, resource, change JSON.
-- Returns: the stream entry id, or false (nil) when fenced off.
local changes, changed = KEYS[1], KEYS[2]
local P = ARGV[1]
local sk = P .. 'scheduler:' .. ARGV[2]
local s = redis.call('HMGET', sk, 'epoch', 'wseq')
if not s[1] or s[1] ~= ARGV[4] or tonumber(ARGV[3]) < tonumber(s[2] or '0') then
  return false
end
local id = redis.call('XADD', changes, 'MAXLEN', ARGV[5], '*', 'resource', ARGV[6], 'change', ARGV[7])
local now = now_ms()
redis.call('HSET', sk, 'last_change', now)
redis.call('ZADD', changed, now, ARGV[2])
redis.call('ZREMRANGEBYRANK', changed, 0, -CHANGED_MAX - 1) -- the newest are what status shows
return id
