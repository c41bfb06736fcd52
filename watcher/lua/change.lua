-- Record a detected change in the changes stream, fenced like a state write-back: a run whose
-- scheduler was reconfigured, or that a newer run has overtaken, records nothing. The same
-- change seen twice (a run rerun after its worker died between recording the change and
-- writing back its state) is recorded once: its key (old and new, hashed) matches the last.
-- With the record, one delivery per notifier goes into the outbox, atomically.
-- KEYS: changes changed deadlines deliveries delivery_id
-- ARGV: prefix, scheduler id, seq, epoch, max length, resource, change JSON, change key,
-- notifiers (JSON array of {name, ms to deliver within}), alert (JSON, "" = none: its
-- notifiers hear "changing" when a resource called stale changes again), the change's
-- details as kept on the scheduler for status ("" = none).
-- Returns: {stream entry id, 1 new | 0 the same change again}, or false (nil) when fenced off.
local changes, changed, deadlines, counts, ids = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local P = ARGV[1]
local sk = P .. 'scheduler:' .. ARGV[2]
local s = redis.call('HMGET', sk, 'epoch', 'wseq', 'ckey', 'centry', 'stale')
if not s[1] or s[1] ~= ARGV[4] or tonumber(ARGV[3]) < tonumber(s[2] or '0') then
  return false
end
if s[3] == ARGV[8] and s[4] then return {s[4], 0} end
local now = now_ms()
local notify = cjson.decode(ARGV[9])
local names = {}
for _, target in ipairs(notify) do names[#names + 1] = target[1] end
local id = redis.call('XADD', changes, 'MAXLEN', ARGV[5], '*', 'resource', ARGV[6],
  'change', ARGV[7], 'notify', cjson.encode(names))
deliver(P, deadlines, counts, ids, notify, ARGV[6], 'change', ARGV[7], id, now)
redis.call('HSET', sk, 'last_change', now, 'ckey', ARGV[8], 'centry', id)
if ARGV[11] ~= '' then redis.call('HSET', sk, 'diff', ARGV[11]) else redis.call('HDEL', sk, 'diff') end
redis.call('ZADD', changed, now, ARGV[2])
redis.call('ZREMRANGEBYRANK', changed, 0, -CHANGED_MAX - 1) -- the newest are what status shows
if s[5] then
  redis.call('HDEL', sk, 'stale')
  if ARGV[10] ~= '' then
    alert_event(P, deadlines, counts, ids, cjson.decode(ARGV[10]), ARGV[6], 'changing',
      'changing again', now)
  end
end
return {id, 1}
